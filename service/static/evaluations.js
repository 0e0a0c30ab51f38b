// The evaluations page: GET /evaluations, one card per job with its status, figures and PR
// curve; polls while any job is queued or running.
"use strict";

(() => {
  const list = document.getElementById("evaluations");
  const statusText = document.getElementById("eval-status");
  const refresh = document.getElementById("refresh-button");
  const POLL_MS = 3000;
  let timer = null;

  function el(tag, attrs = {}, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs)) {
      if (value === undefined || value === null) continue;
      if (key === "class") node.className = value;
      else node.setAttribute(key, value);
    }
    for (const child of children) {
      if (child === null || child === undefined) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function num(value, digits = 3) {
    return typeof value === "number" && Number.isFinite(value) ? value.toFixed(digits) : "—";
  }

  function text(value) {
    if (value === null || value === undefined || value === "") return "—";
    if (typeof value === "object") {
      return value.name || value.checkpoint || value.fingerprint || JSON.stringify(value);
    }
    return String(value);
  }

  function when(value) {
    if (!value) return "—";
    const date = new Date(value);
    return Number.isNaN(date.getTime()) ? String(value) : date.toLocaleString();
  }

  /** A two-row table of a {k: value} figure, e.g. P@k. */
  function atK(title, values) {
    if (!values || typeof values !== "object") return null;
    const keys = Object.keys(values).sort((a, b) => Number(a) - Number(b));
    if (!keys.length) return null;
    return el(
      "table",
      { class: "atk" },
      el("tr", {}, el("th", {}, title), ...keys.map((k) => el("th", {}, `@${k}`))),
      el("tr", {}, el("td", {}, ""), ...keys.map((k) => el("td", {}, num(values[k])))),
    );
  }

  function perClass(values) {
    if (!values || typeof values !== "object") return null;
    const entries = Object.entries(values).sort((a, b) => b[1] - a[1]);
    if (!entries.length) return null;
    const rows = entries.map(([name, ap]) =>
      el(
        "div",
        { class: "bar-row" },
        el("span", { class: "bar-name" }, name),
        el("span", { class: "bar" }, el("span", { style: `width:${Math.max(0, Math.min(1, ap)) * 100}%` })),
        el("span", { class: "bar-value" }, num(ap)),
      ),
    );
    return el("details", { class: "per-class" }, el("summary", {}, `Per-class AP (${entries.length} classes)`), ...rows);
  }

  function figures(results) {
    if (!results) return null;
    const facts = [];
    if (results.n_queries != null) facts.push(`${results.n_queries} queries`);
    if (results.n_gallery != null) facts.push(`${results.n_gallery} gallery images`);
    const init = results.init || (results.model && results.model.init);
    if (init) facts.push(`init ${init}`);
    if (results.machine) facts.push(`on ${text(results.machine.gpu || results.machine.cpu || results.machine)}`);
    return el(
      "div",
      { class: "figures" },
      el("div", { class: "map" }, el("span", {}, "mAP"), el("strong", {}, num(results.map))),
      atK("mAP", results.map_at_k),
      atK("P", results.precision_at_k),
      facts.length ? el("p", { class: "facts" }, facts.join(" · ")) : null,
      perClass(results.per_class_ap),
    );
  }

  /** "ucm", or "folder · my-archive" when a layout name alone does not say which images. */
  function datasetName(job) {
    const root = job.root ? String(job.root).replace(/\/+$/, "").split("/").pop() : "";
    const name = text(job.dataset);
    return root && root !== name ? `${name} · ${root}` : name;
  }

  /** The requested model, else the one the results name, else the served one. */
  function modelName(job) {
    if (job.model) return text(job.model);
    const model = job.results && job.results.model;
    if (model && model.checkpoint) {
      const file = String(model.checkpoint).split("/").pop();
      return model.fingerprint ? `${file} (${String(model.fingerprint).slice(0, 12)})` : file;
    }
    return "served embedder";
  }

  function card(job) {
    const statusName = String(job.status || "unknown");
    const progress = Math.max(0, Math.min(100, Number(job.progress) || 0));
    const pr = job.pr_curve_url
      ? el("a", { href: job.pr_curve_url, target: "_blank", rel: "noopener", class: "pr" },
          el("img", { src: job.pr_curve_url, alt: `PR curve of evaluation ${job.id}`, loading: "lazy" }))
      : null;
    return el(
      "article",
      { class: `job job-${statusName}`, "data-id": job.id },
      el(
        "header",
        {},
        el("h2", {}, `#${job.id} `, el("span", { class: "dataset" }, datasetName(job))),
        el("span", { class: `badge badge-${statusName}` }, statusName),
      ),
      el(
        "dl",
        { class: "meta" },
        el("dt", {}, "Protocol"), el("dd", {}, text(job.protocol)),
        el("dt", {}, "Model"), el("dd", {}, modelName(job)),
        el("dt", {}, "Created"), el("dd", {}, when(job.created_at)),
        el("dt", {}, "Finished"), el("dd", {}, when(job.finished_at)),
      ),
      statusName === "queued" || statusName === "running"
        ? el("div", { class: "progress", role: "progressbar", "aria-valuenow": progress.toFixed(0), "aria-valuemin": "0", "aria-valuemax": "100" },
            el("span", { style: `width:${progress}%` }), el("em", {}, `${progress.toFixed(0)} %`))
        : null,
      job.error ? el("p", { class: "job-error" }, String(job.error)) : null,
      job.results || pr ? el("div", { class: "job-body" }, figures(job.results), pr) : null,
    );
  }

  async function load() {
    clearTimeout(timer);
    try {
      const response = await rsirCheck(await fetch(`${RSIR_BASE}/evaluations`, { headers: { Accept: "application/json" } }));
      const body = await response.json();
      const items = Array.isArray(body.items) ? body.items : Array.isArray(body) ? body : [];
      rsirClearError();
      list.replaceChildren(...(items.length ? items.map(card) : [el("p", { class: "empty" }, "No evaluation job yet.")]));
      const active = items.filter((j) => j.status === "queued" || j.status === "running").length;
      statusText.textContent = `${items.length} job${items.length === 1 ? "" : "s"}` +
        (active ? `, ${active} in progress (refreshing)` : "") + ` · updated ${new Date().toLocaleTimeString()}`;
      if (active) timer = setTimeout(load, POLL_MS);
    } catch (err) {
      statusText.textContent = "Could not load the jobs.";
      rsirShowError(err.message);
    }
  }

  refresh.addEventListener("click", load);
  load();
})();
