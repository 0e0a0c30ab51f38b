// The search page's map: each indexed scene's overview (GET /scenes) as the offline
// background, the hits' footprints over it, a click highlights one, a dragged rectangle sets
// the area filter. Leaflet comes from the set-up script's npm install; without it, no map.
"use strict";

window.rsirMap = (() => {
  const el = document.getElementById("map");
  const note = document.getElementById("map-note");
  const drawButton = document.getElementById("draw-area");
  const clearButton = document.getElementById("clear-area");
  const areaText = document.getElementById("area-text");
  const api = {
    area: null, // "west,south,east,north" or null
    showHits: () => {},
    highlight: () => {},
    onArea: (callback) => { areaListeners.push(callback); },
    onHighlight: (callback) => { highlightListeners.push(callback); },
  };
  const areaListeners = [];
  const highlightListeners = [];
  if (!el) return api;
  if (typeof L === "undefined") {
    el.hidden = true;
    drawButton.disabled = true;
    note.textContent = "No map: Leaflet is not installed (run scripts/setup.sh).";
    note.hidden = false;
    return api;
  }

  const map = L.map(el, { attributionControl: false, worldCopyJump: true }).setView([20, 0], 2);
  const scenes = L.layerGroup().addTo(map);
  const hits = L.featureGroup().addTo(map);
  const footprints = new Map(); // hit id -> Leaflet layer
  const BASE = { color: "#1f6f5c", weight: 2, fillOpacity: 0.12, className: "hit-footprint" };
  const HIGHLIGHT = { color: "#e8a33d", weight: 4, fillOpacity: 0.3 };
  let sceneBounds = null;

  function fmt(v) { return Number(v).toFixed(4); }

  // Offline background: the scenes themselves, warped to the map's Web Mercator.
  fetch(`${RSIR_BASE}/scenes`, { headers: { Accept: "application/json" } })
    .then((response) => (response.ok ? response.json() : { scenes: [] }))
    .then((body) => {
      const list = Array.isArray(body.scenes) ? body.scenes : [];
      for (const scene of list) {
        if (!scene.overview_url || !scene.overview_bbox) continue;
        const [w, s, e, n] = scene.overview_bbox;
        const bounds = L.latLngBounds([s, w], [n, e]);
        L.imageOverlay(scene.overview_url, bounds, { className: "scene-overview", alt: scene.name })
          .addTo(scenes);
        sceneBounds = sceneBounds ? sceneBounds.extend(bounds) : L.latLngBounds(bounds.getSouthWest(), bounds.getNorthEast());
      }
      el.dataset.scenes = String(list.length);
      if (sceneBounds && footprints.size === 0) map.fitBounds(sceneBounds);
    })
    .catch(() => { el.dataset.scenes = "0"; });

  api.showHits = (list) => {
    hits.clearLayers();
    footprints.clear();
    list.forEach((hit, i) => {
      if (!hit.footprint) return;
      const layer = L.geoJSON(hit.footprint, { style: () => ({ ...BASE }) });
      layer.bindTooltip(`#${i + 1} ${hit.label || ""} ${Number(hit.score).toFixed(3)}`);
      layer.on("click", () => api.highlight(hit.id));
      layer.addTo(hits);
      footprints.set(hit.id, layer);
      layer.eachLayer((path) => {
        const node = path.getElement && path.getElement();
        if (node) node.dataset.id = String(hit.id);
      });
    });
    el.dataset.hits = String(footprints.size);
    if (footprints.size) map.fitBounds(hits.getBounds(), { padding: [24, 24], maxZoom: 18 });
  };

  api.highlight = (id) => {
    for (const [hitId, layer] of footprints) {
      const on = hitId === id;
      layer.setStyle(on ? { ...BASE, ...HIGHLIGHT } : { ...BASE });
      layer.eachLayer((path) => {
        const node = path.getElement && path.getElement();
        if (node) node.classList.toggle("highlighted", on);
      });
      if (on) layer.bringToFront();
    }
    el.dataset.highlighted = String(id);
    highlightListeners.forEach((callback) => callback(id));
  };

  // Drawing the area: press "Draw area", then drag a rectangle.
  let drawing = false;
  let start = null;
  let rect = null;

  function setArea(bounds) {
    const clamp = (v, lim) => Math.max(-lim, Math.min(lim, v));
    api.area = bounds
      ? [clamp(bounds.getWest(), 180), clamp(bounds.getSouth(), 90),
         clamp(bounds.getEast(), 180), clamp(bounds.getNorth(), 90)].join(",")
      : null;
    areaText.textContent = bounds
      ? `Area: ${api.area.split(",").map(fmt).join(", ")} (west, south, east, north)`
      : "Area: anywhere";
    clearButton.hidden = !bounds;
    el.dataset.area = api.area || "";
    areaListeners.forEach((callback) => callback(api.area));
  }

  drawButton.addEventListener("click", () => {
    drawing = true;
    map.dragging.disable();
    el.classList.add("drawing");
  });
  clearButton.addEventListener("click", () => {
    if (rect) rect.remove();
    rect = null;
    setArea(null);
  });
  map.on("mousedown", (event) => {
    if (!drawing) return;
    event.originalEvent.preventDefault(); // no text selection while dragging
    start = event.latlng;
    if (rect) rect.remove();
    rect = L.rectangle(L.latLngBounds(start, start), {
      color: "#e8a33d", weight: 2, dashArray: "6 4", fill: false, interactive: false,
      className: "area-rectangle",
    }).addTo(map);
  });
  map.on("mousemove", (event) => {
    if (drawing && start && rect) rect.setBounds(L.latLngBounds(start, event.latlng));
  });
  map.on("mouseup", (event) => {
    if (!drawing || !start) return;
    const bounds = L.latLngBounds(start, event.latlng);
    drawing = false;
    start = null;
    map.dragging.enable();
    el.classList.remove("drawing");
    rect.setBounds(bounds);
    setArea(bounds);
  });
  return api;
})();
