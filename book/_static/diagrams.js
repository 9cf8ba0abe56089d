// Keep diagram labels readable: a Graphviz SVG may shrink to fit the column, but not so
// far that its smallest label falls below MIN_LABEL_PX; beyond that it scrolls sideways
// inside its figure (see book.css). Without JavaScript diagrams simply fit the column.
(function () {
  "use strict";
  const MIN_LABEL_PX = 10;

  function smallestFontSize(svg) {
    let smallest = Infinity;
    for (const text of svg.querySelectorAll("text")) {
      const size = parseFloat(text.getAttribute("font-size"));
      if (size > 0) smallest = Math.min(smallest, size);
    }
    return smallest;
  }

  function setReadableMinWidth(object) {
    const svg = object.contentDocument && object.contentDocument.querySelector("svg");
    if (!svg || !svg.viewBox.baseVal || !svg.viewBox.baseVal.width) return;
    const viewBox = svg.viewBox.baseVal;
    const natural = svg.width.baseVal.value || viewBox.width * 4 / 3;
    const smallest = smallestFontSize(svg);
    // The SVG scales uniformly: a label of `smallest` viewBox units is drawn at
    // smallest * (rendered width / viewBox width) CSS pixels.
    const readable = Number.isFinite(smallest) ? (MIN_LABEL_PX / smallest) * viewBox.width : 0;
    object.style.minWidth = Math.ceil(Math.min(natural, readable)) + "px";
    object.style.aspectRatio = viewBox.width + " / " + viewBox.height;
  }

  function watch(object) {
    if (object.contentDocument && object.contentDocument.readyState === "complete") {
      setReadableMinWidth(object);
    }
    object.addEventListener("load", () => setReadableMinWidth(object));
  }

  function start() {
    document.querySelectorAll("div.graphviz > object.graphviz").forEach(watch);
  }

  if (document.readyState === "loading") {
    document.addEventListener("DOMContentLoaded", start);
  } else {
    start();
  }
})();
