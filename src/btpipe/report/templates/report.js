/* btpipe report: lightbox for thumbnails, sortable tables and a self-check.
   No external resources; runs from file://. */
(function () {
  "use strict";

  function openLightbox(img) {
    var box = document.getElementById("lightbox");
    var big = document.getElementById("lightbox-img");
    var cap = document.getElementById("lightbox-cap");
    big.src = img.getAttribute("src");   /* the same data URI, shown larger */
    big.alt = img.alt || "";
    cap.textContent = img.getAttribute("data-caption") || img.alt || "";
    box.classList.add("open");
  }

  function closeLightbox() {
    document.getElementById("lightbox").classList.remove("open");
  }

  function cellValue(row, index) {
    var cell = row.cells[index];
    if (!cell) { return ""; }
    var key = cell.getAttribute("data-sort");
    return key !== null ? key : cell.textContent.trim();
  }

  function sortTable(table, index, th) {
    var body = table.tBodies[0];
    if (!body) { return; }
    var asc = th.getAttribute("data-dir") !== "asc";
    Array.prototype.forEach.call(table.tHead.rows[0].cells, function (c) { c.removeAttribute("data-dir"); });
    th.setAttribute("data-dir", asc ? "asc" : "desc");
    var rows = Array.prototype.slice.call(body.rows);
    rows.sort(function (a, b) {
      var x = cellValue(a, index), y = cellValue(b, index);
      var nx = parseFloat(x), ny = parseFloat(y);
      var cmp = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
      return asc ? cmp : -cmp;
    });
    rows.forEach(function (r) { body.appendChild(r); });
  }

  function wire() {
    document.addEventListener("click", function (ev) {
      var t = ev.target;
      if (t && t.tagName === "IMG" && t.classList.contains("zoomable")) {
        openLightbox(t);
      } else if (t && t.closest && t.closest("#lightbox")) {
        closeLightbox();
      } else if (t && t.tagName === "TH" && t.closest("table.sortable")) {
        sortTable(t.closest("table"), t.cellIndex, t);
      }
    });
    document.addEventListener("keydown", function (ev) {
      if (ev.key === "Escape") { closeLightbox(); }
    });
  }

  /* Self-check, read by the browser test: every image decoded, no errors. */
  function selfCheck() {
    var images = Array.prototype.slice.call(document.images);
    var broken = images.filter(function (im) {
      return im.id !== "lightbox-img" && !(im.complete && im.naturalWidth > 0);
    }).map(function (im) { return im.alt || im.src.slice(0, 40); });
    var result = {
      images: images.filter(function (im) { return im.id !== "lightbox-img"; }).length,
      broken: broken,
      errors: (window.__reportErrors || []).slice()
    };
    var out = document.getElementById("report-selfcheck");
    if (out) { out.textContent = JSON.stringify(result); }
    document.documentElement.setAttribute("data-selfcheck",
      broken.length === 0 && result.errors.length === 0 ? "ok" : "problems");
  }

  wire();
  window.addEventListener("load", selfCheck);
})();
