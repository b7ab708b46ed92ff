// artwatch: the little script the pages need (no framework).
// 1. [data-poll] elements reload their inner HTML from the URL until the job ends.
// 2. buttons with [data-confirm] ask before submitting.
// 3. the menu button shows the menu on narrow screens.
(function () {
  "use strict";
  function poll(el) {
    var url = el.getAttribute("data-poll");
    var timer = setInterval(function () {
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (r) { return r.ok ? r.text() : Promise.reject(r.status); })
        .then(function (html) {
          el.innerHTML = html;
          var box = el.querySelector("[data-state]");
          var state = box ? box.getAttribute("data-state") : "";
          if (state === "done" || state === "failed") { clearInterval(timer); }
        })
        .catch(function () { clearInterval(timer); });
    }, 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-poll]").forEach(function (el) {
      var box = el.querySelector("[data-state]");
      var state = box ? box.getAttribute("data-state") : "";
      if (state !== "done" && state !== "failed") { poll(el); }
    });
    // 3. the menu button (narrow screens) opens and closes the menu.
    var toggle = document.querySelector(".menu-toggle");
    if (toggle) {
      toggle.addEventListener("click", function () {
        var open = toggle.getAttribute("aria-expanded") !== "true";
        toggle.setAttribute("aria-expanded", open ? "true" : "false");
        document.body.classList.toggle("menu-open", open);
      });
    }
    document.addEventListener("click", function (ev) {
      var btn = ev.target.closest ? ev.target.closest("[data-confirm]") : null;
      if (btn && !window.confirm(btn.getAttribute("data-confirm"))) { ev.preventDefault(); }
    });
  });
})();
