// relay console: the little behaviour the pages need, kept out of the HTML so the CSP
// can forbid inline script. No eval, no inline handlers.
(function () {
  "use strict";
  // htmx sends the session's CSRF token with every request it makes.
  document.addEventListener("htmx:configRequest", function (event) {
    var meta = document.querySelector('meta[name="csrf-token"]');
    if (meta) { event.detail.headers["X-CSRF-Token"] = meta.content; }
  });
  document.addEventListener("click", function (event) {
    var target = event.target;
    if (!(target instanceof Element)) { return; }
    // Copy the new key (shown once) to the clipboard.
    var copy = target.closest("[data-copy]");
    if (copy) {
      var source = document.getElementById(copy.getAttribute("data-copy"));
      if (source && navigator.clipboard) {
        navigator.clipboard.writeText(source.textContent.trim()).then(function () {
          copy.textContent = "Copied";
        }, function () { copy.textContent = "Copy failed: select the key"; });
      }
      return;
    }
    // Select (or clear) every dead letter's checkbox of the table.
    var all = target.closest("[data-select-all]");
    if (all) {
      var boxes = document.querySelectorAll('input[type="checkbox"][name="pick"]');
      var any = Array.prototype.some.call(boxes, function (b) { return !b.checked; });
      boxes.forEach(function (b) { b.checked = any; });
    }
  });
  // Forms that ask first (Revoke, Delete): a confirm dialog; Cancel sends nothing.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var ask = form instanceof HTMLFormElement ? form.getAttribute("data-confirm") : null;
    if (ask && !window.confirm(ask)) { event.preventDefault(); }
  });
})();
