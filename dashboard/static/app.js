// Frontdesk dashboard behaviour. The pages carry none of their own (the Content-Security-Policy
// refuses inline scripts and event handlers); they mark elements with data- attributes instead:
//   <form data-confirm="Delete this?">   asks before submitting (plain and htmx forms alike)
//   <select data-submit-on-change>        submits its form when the choice changes
//   <input data-select-on-focus>          selects its whole text on click or focus (to copy it)
//   <form data-reset-on-success>          is cleared after a successful htmx request
(function () {
  "use strict";

  // Capture phase: runs before htmx's own submit listener, so a "Cancel" stops both.
  document.addEventListener("submit", function (event) {
    var form = event.target;
    var question = form instanceof HTMLFormElement ? form.getAttribute("data-confirm") : null;
    if (question && !window.confirm(question)) {
      event.preventDefault();
      event.stopImmediatePropagation();
    }
  }, true);

  document.addEventListener("change", function (event) {
    var field = event.target;
    if (field instanceof HTMLElement && field.hasAttribute("data-submit-on-change") && field.form) {
      field.form.submit();
    }
  });

  function selectAll(event) {
    var field = event.target;
    if (field instanceof HTMLInputElement && field.hasAttribute("data-select-on-focus")) {
      field.select();
    }
  }
  document.addEventListener("focusin", selectAll);
  document.addEventListener("click", selectAll);

  document.addEventListener("htmx:afterRequest", function (event) {
    var form = event.detail && event.detail.elt;
    if (form instanceof HTMLFormElement && form.hasAttribute("data-reset-on-success")
        && event.detail.successful) {
      form.reset();
    }
  });
})();
