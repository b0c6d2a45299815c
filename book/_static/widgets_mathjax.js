// ipywidgets' HTML manager typesets widget text through MathJax 2's API,
// MathJax.Hub.Queue(["Typeset", MathJax.Hub, element]); the book runs MathJax 3.
// This gives MathJax 3 that one call: it typesets the element once MathJax is ready.
(function () {
  function install() {
    var mathjax = window.MathJax;
    if (!mathjax || mathjax.Hub) {
      return;
    }
    mathjax.Hub = {
      Queue: function () {
        var elements = [];
        for (var i = 0; i < arguments.length; i++) {
          var job = arguments[i];
          if (Array.isArray(job) && job[0] === "Typeset" && job[2]) {
            elements.push(job[2]);
          }
        }
        var ready = mathjax.startup && mathjax.startup.promise
          ? mathjax.startup.promise : Promise.resolve();
        ready.then(function () {
          return mathjax.typesetPromise ? mathjax.typesetPromise(elements) : null;
        }).catch(function (error) {
          console.warn("MathJax could not typeset a widget:", error);
        });
      }
    };
  }
  // MathJax 3 (a deferred script) has replaced the configuration object by then,
  // and the widget manager draws on "load", which comes later.
  document.addEventListener("DOMContentLoaded", install);
})();
