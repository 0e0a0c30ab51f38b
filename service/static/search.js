// The search page: choose or drop a query image, POST /search, lay out the hits;
// with the box ticked, POST /explain for the query's attention heat-map. Hits can be liked or
// disliked; "Refine" searches again with them as relevance feedback (relevant, not_relevant).
"use strict";

(() => {
  const form = document.getElementById("search-form");
  const input = document.getElementById("image-input");
  const dropzone = document.getElementById("dropzone");
  const preview = document.getElementById("query-preview");
  const hint = document.getElementById("drop-hint");
  const previewNote = document.getElementById("preview-note");
  const kInput = document.getElementById("k-input");
  const labelInput = document.getElementById("label-input");
  const explainInput = document.getElementById("explain-input");
  const button = document.getElementById("search-button");
  const status = document.getElementById("status");
  const results = document.getElementById("results");
  const resultsTitle = document.getElementById("results-title");
  const heatmapBox = document.getElementById("heatmap-box");
  const heatmap = document.getElementById("heatmap");
  const template = document.getElementById("hit-template");
  const refineButton = document.getElementById("refine-button");
  // Relevance feedback of the current query: hit id -> "relevant" | "not_relevant".
  const marks = new Map();

  let queryFile = null;
  let previewUrl = null;
  let heatmapUrl = null;
  let searchSeq = 0;
  let explainSeq = 0;

  function setQuery(file) {
    if (!file) return;
    queryFile = file;
    marks.clear();
    refineButton.disabled = true;
    if (previewUrl) URL.revokeObjectURL(previewUrl);
    previewUrl = URL.createObjectURL(file);
    previewNote.hidden = true;
    preview.hidden = false;
    hint.hidden = true;
    preview.src = previewUrl;
    button.disabled = false;
    search();
  }

  // Browsers cannot show TIFF: keep the query, say so instead of a broken image.
  preview.addEventListener("error", () => {
    if (!queryFile) return;
    preview.hidden = true;
    previewNote.textContent = `${queryFile.name} (no preview in this browser)`;
    previewNote.hidden = false;
  });

  input.addEventListener("change", () => setQuery(input.files && input.files[0]));

  for (const type of ["dragenter", "dragover"]) {
    dropzone.addEventListener(type, (event) => {
      event.preventDefault();
      dropzone.classList.add("dragging");
    });
  }
  for (const type of ["dragleave", "dragend"]) {
    dropzone.addEventListener(type, () => dropzone.classList.remove("dragging"));
  }
  dropzone.addEventListener("drop", (event) => {
    event.preventDefault();
    dropzone.classList.remove("dragging");
    const files = event.dataTransfer && event.dataTransfer.files;
    if (files && files.length) setQuery(files[0]);
  });

  form.addEventListener("submit", (event) => {
    event.preventDefault();
    search();
  });

  // Suggestions for the label filter: the classes of the served embedder (GET /models).
  // Only a convenience, so a failure here stays silent and any label can still be typed.
  async function loadLabelOptions() {
    try {
      const response = await fetch(`${RSIR_BASE}/models`, { headers: { Accept: "application/json" } });
      if (!response.ok) return;
      const body = await response.json();
      const models = Array.isArray(body.models) ? body.models : [];
      const embedder = models.find((m) => m.kind === "embedder") || models[0];
      const classes = embedder && Array.isArray(embedder.classes) ? embedder.classes : [];
      document.getElementById("label-options").replaceChildren(
        ...classes.map((name) => Object.assign(document.createElement("option"), { value: name })),
      );
    } catch (_) {
      // no suggestions
    }
  }
  loadLabelOptions();

  // The map: a drawn rectangle re-runs the search inside it; a highlighted footprint marks
  // its card.
  rsirMap.onArea(() => search());
  rsirMap.onHighlight((id) => {
    for (const node of results.querySelectorAll(".hit")) {
      node.classList.toggle("highlighted", node.dataset.id === String(id));
    }
  });

  refineButton.addEventListener("click", () => search());

  function mark(node, id, kind) {
    if (marks.get(id) === kind) marks.delete(id);
    else marks.set(id, kind);
    showMarks(node, id);
    refineButton.disabled = marks.size === 0;
  }

  function showMarks(node, id) {
    node.querySelector(".like").setAttribute("aria-pressed", String(marks.get(id) === "relevant"));
    node
      .querySelector(".dislike")
      .setAttribute("aria-pressed", String(marks.get(id) === "not_relevant"));
  }

  function markedIds(kind) {
    return [...marks].filter(([, value]) => value === kind).map(([id]) => id);
  }

  explainInput.addEventListener("change", () => {
    if (explainInput.checked) explain();
    else heatmapBox.hidden = true;
  });

  function clampK() {
    const k = Math.round(Number(kInput.value));
    const safe = Number.isFinite(k) && k >= 1 ? Math.min(k, 100) : 12;
    kInput.value = String(safe);
    return safe;
  }

  async function search() {
    if (!queryFile) return;
    const seq = ++searchSeq;
    rsirClearError();
    const data = new FormData();
    data.append("image", queryFile, queryFile.name || "query");
    data.append("k", String(clampK()));
    const label = labelInput.value.trim();
    if (label) data.append("label", label);
    if (rsirMap.area) data.append("bbox", rsirMap.area);
    for (const kind of ["relevant", "not_relevant"]) {
      const ids = markedIds(kind);
      if (ids.length) data.append(kind, ids.join(","));
    }
    button.disabled = true;
    status.textContent = "Searching…";
    document.body.classList.add("busy");
    if (explainInput.checked) explain();
    try {
      const response = await rsirCheck(
        await fetch(`${RSIR_BASE}/search`, { method: "POST", body: data }),
      );
      const body = await response.json();
      if (seq !== searchSeq) return; // a newer query has started
      render(body);
    } catch (err) {
      if (seq !== searchSeq) return;
      results.replaceChildren();
      rsirMap.showHits([]);
      resultsTitle.hidden = true;
      status.textContent = "Search failed.";
      rsirShowError(err.message);
    } finally {
      if (seq === searchSeq) {
        button.disabled = false;
        document.body.classList.remove("busy");
      }
    }
  }

  function render(body) {
    const hits = Array.isArray(body.hits) ? body.hits : [];
    const items = hits.map((hit, i) => {
      const node = template.content.firstElementChild.cloneNode(true);
      const link = node.querySelector(".hit-link");
      const img = node.querySelector(".thumb");
      link.href = hit.file_url || hit.thumbnail_url || "#";
      img.src = hit.thumbnail_url;
      img.alt = `${hit.label || "image"} ${hit.id}`;
      img.addEventListener("error", () => node.classList.add("broken"));
      node.dataset.id = String(hit.id);
      node.querySelector(".like").addEventListener("click", () => mark(node, hit.id, "relevant"));
      node
        .querySelector(".dislike")
        .addEventListener("click", () => mark(node, hit.id, "not_relevant"));
      showMarks(node, hit.id);
      node.addEventListener("click", (event) => {
        if (event.target.closest(".hit-link, .hit-feedback")) return; // their own actions
        rsirMap.highlight(hit.id);
      });
      if (hit.bbox) {
        const place = document.createElement("div");
        place.className = "hit-place";
        const lat = (hit.bbox[1] + hit.bbox[3]) / 2;
        const lon = (hit.bbox[0] + hit.bbox[2]) / 2;
        place.textContent = `${lat.toFixed(5)}, ${lon.toFixed(5)}`;
        place.title = `${hit.crs || ""} window ${(hit.window || []).join(", ")}`;
        node.appendChild(place);
      }
      node.querySelector(".rank").textContent = `#${i + 1}`;
      const labelNode = node.querySelector(".label");
      labelNode.textContent = hit.label || "—";
      labelNode.title = hit.label || "";
      node.querySelector(".score").textContent = Number(hit.score).toFixed(3);
      const source = node.querySelector(".hit-source");
      source.textContent = hit.path || hit.source || "";
      source.title = [hit.source, hit.path].filter(Boolean).join(" : ");
      return node;
    });
    results.replaceChildren(...items);
    rsirMap.showHits(hits);
    resultsTitle.hidden = false;
    resultsTitle.textContent = items.length ? "Most similar images" : "No match";
    const fp = body.model_fingerprint ? ` · model ${String(body.model_fingerprint).slice(0, 12)}` : "";
    const took = body.took_ms != null ? ` in ${Number(body.took_ms).toFixed(0)} ms` : "";
    status.textContent = `${items.length} result${items.length === 1 ? "" : "s"}${took}${fp}`;
  }

  async function explain() {
    if (!queryFile) return;
    const seq = ++explainSeq;
    const data = new FormData();
    data.append("image", queryFile, queryFile.name || "query");
    heatmapBox.hidden = false;
    heatmapBox.classList.add("loading");
    try {
      const response = await rsirCheck(
        await fetch(`${RSIR_BASE}/explain`, { method: "POST", body: data }),
      );
      const blob = await response.blob();
      if (seq !== explainSeq) return;
      if (heatmapUrl) URL.revokeObjectURL(heatmapUrl);
      heatmapUrl = URL.createObjectURL(blob);
      heatmap.src = heatmapUrl;
    } catch (err) {
      if (seq !== explainSeq) return;
      heatmapBox.hidden = true;
      rsirShowError(`Heat-map: ${err.message}`);
    } finally {
      if (seq === explainSeq) heatmapBox.classList.remove("loading");
    }
  }
})();
