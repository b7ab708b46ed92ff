// artwatch: the little script the pages need (no framework).
// 1. [data-poll] elements reload their inner HTML from the URL until the job ends.
// 2. buttons with [data-confirm] ask before submitting.
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
    document.addEventListener("click", function (ev) {
      var btn = ev.target.closest ? ev.target.closest("[data-confirm]") : null;
      if (btn && !window.confirm(btn.getAttribute("data-confirm"))) { ev.preventDefault(); }
    });
  });
})();
