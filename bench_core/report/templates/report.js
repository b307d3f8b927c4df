(function () {
  "use strict";
  // Click (or Enter on) any header of a .sortable table to sort by that column. Numeric columns
  // sort by each cell's data-value; the first click puts the best first (descending for
  // higher-is-better, ascending for lower-is-better), the next click reverses. Rows without a
  // value always go last. Only the first body sorts: a leaderboard's baselines stay below it.
  function numberOf(cell) {
    var v = cell.getAttribute("data-value");
    if (v === null || v === "") { return null; }
    var x = parseFloat(v);
    return isNaN(x) ? null : x;
  }
  function textOf(cell) {
    var v = cell.getAttribute("data-value");
    return (v === null ? cell.textContent : v).trim();
  }
  Array.prototype.forEach.call(document.querySelectorAll("table.sortable"), function (table) {
    var heads = table.tHead.rows[0].cells;
    Array.prototype.forEach.call(heads, function (th, col) {
      th.tabIndex = 0;
      function sort() {
        var body = table.tBodies[0];
        var rows = Array.prototype.slice.call(body.rows);
        var numeric = th.getAttribute("data-type") !== "text";
        var first = !numeric || th.getAttribute("data-higher") === "false" ? 1 : -1;
        var previous = th.getAttribute("data-dir");
        var dir = previous ? -parseInt(previous, 10) : first;
        Array.prototype.forEach.call(heads, function (h) {
          h.removeAttribute("data-dir");
          h.removeAttribute("aria-sort");
        });
        th.setAttribute("data-dir", String(dir));
        th.setAttribute("aria-sort", dir === 1 ? "ascending" : "descending");
        rows.sort(function (a, b) {
          if (!numeric) { return dir * textOf(a.cells[col]).localeCompare(textOf(b.cells[col])); }
          var x = numberOf(a.cells[col]), y = numberOf(b.cells[col]);
          if (x === null || y === null) { return (x === null) - (y === null); }
          return dir * (x - y);
        });
        rows.forEach(function (r) { body.appendChild(r); });
      }
      th.addEventListener("click", sort);
      th.addEventListener("keydown", function (e) {
        if (e.key === "Enter" || e.key === " ") { e.preventDefault(); sort(); }
      });
    });
  });
  // Select (click, or Enter on) an image link with class "zoom" to see it large in a modal dialog;
  // Escape, the close button or a click outside closes it. Without script the link opens the file.
  var view = document.querySelector("dialog.zoom-view");
  if (view && typeof view.showModal === "function") {
    var big = view.querySelector("img"), caption = view.querySelector(".caption");
    Array.prototype.forEach.call(document.querySelectorAll("a.zoom"), function (link) {
      link.addEventListener("click", function (e) {
        e.preventDefault();
        big.src = link.getAttribute("href");
        big.alt = link.title;
        caption.textContent = link.title.replace(/^enlarge: /, "");
        view.showModal();
      });
    });
    view.addEventListener("click", function (e) { if (e.target === view) { view.close(); } });
  }
})();
