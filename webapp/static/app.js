// artwatch: the little script the pages need (no framework).
// 1. [data-poll] elements reload their inner HTML from the URL until the job ends.
// 2. buttons with [data-confirm] ask before submitting.
// 3. the menu button shows the menu on narrow screens.
// 4. [data-check-all] checkboxes check every box of their form.
// 5. keyboard shortcuts on lists whose rows carry [data-row] (the review queue, matches):
//    j/k next/previous row, a/r/e act on the current row (a [data-key] button or link in it,
//    or its data-go-a/-r/-e address), ? toggles the help overlay (#shortcut-help), Esc closes it.
//    Nothing fires while typing in a field or with Ctrl/Alt/Meta held.
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
      var close = ev.target.closest ? ev.target.closest("[data-close-help]") : null;
      if (close) { toggleHelp(false); }
    });
    document.querySelectorAll("[data-check-all]").forEach(function (all) {
      all.addEventListener("change", function () {
        var form = all.getAttribute("data-check-all");
        document.querySelectorAll('input[type=checkbox][form="' + form + '"]').forEach(function (box) {
          box.checked = all.checked;
        });
      });
    });
    if (document.querySelector("[data-row]")) { document.addEventListener("keydown", onKey); }
  });

  var current = -1;
  function rows() { return Array.prototype.slice.call(document.querySelectorAll("[data-row]")); }
  function typing(el) {
    if (!el || !el.tagName) { return false; }
    var tag = el.tagName.toLowerCase();
    return tag === "input" || tag === "textarea" || tag === "select" || el.isContentEditable;
  }
  function select(i) {
    var all = rows();
    if (!all.length) { return; }
    current = Math.max(0, Math.min(all.length - 1, i));
    all.forEach(function (r, n) { r.classList.toggle("current", n === current); });
    all[current].focus({ preventScroll: true });
    all[current].scrollIntoView({ block: "nearest" });
  }
  function toggleHelp(show) {
    var help = document.getElementById("shortcut-help");
    if (!help) { return; }
    help.hidden = show === undefined ? !help.hidden : !show;
    if (!help.hidden) {
      var btn = help.querySelector("[data-close-help]");
      if (btn) { btn.focus(); }
    }
  }
  function act(key) {
    var row = rows()[current];
    if (!row) { return; }
    var target = row.querySelector('[data-key="' + key + '"]');
    if (target) { target.click(); return; }
    var go = row.getAttribute("data-go-" + key);
    if (go) { window.location.href = go; }
  }
  function onKey(ev) {
    if (ev.ctrlKey || ev.altKey || ev.metaKey || typing(ev.target)) { return; }
    var help = document.getElementById("shortcut-help");
    if (ev.key === "Escape") { toggleHelp(false); return; }
    if (ev.key === "?") { toggleHelp(); ev.preventDefault(); return; }
    if (help && !help.hidden) { return; }
    if (ev.key === "j") { select(current + 1); }
    else if (ev.key === "k") { select(current < 0 ? 0 : current - 1); }
    else if (ev.key === "a" || ev.key === "r" || ev.key === "e") {
      if (current < 0) { return; }
      act(ev.key);
    } else { return; }
    ev.preventDefault();
  }
})();
