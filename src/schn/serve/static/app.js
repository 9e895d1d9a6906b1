// The page of `schn serve`: search by an uploaded image or by a stored item (API: docs/serve-api.md).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const fileInput = $("file-input"), dropZone = $("drop-zone"), preview = $("query-preview"),
    queryEmpty = $("query-empty"), caption = $("query-caption"), kSelect = $("k-select"),
    radiusInput = $("radius-input"), results = $("results"), statusEl = $("status"), statsEl = $("stats");
  let seq = 0, last = null, objectUrl = null;

  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  }

  function setStatus(text, kind) {
    statusEl.textContent = text;
    statusEl.className = kind || "";
  }

  function showQuery(src, text, empty = "no image") {
    if (src) preview.src = src; else preview.removeAttribute("src");
    preview.hidden = !src;
    queryEmpty.hidden = !!src;
    queryEmpty.textContent = empty;
    caption.textContent = text;
  }
  preview.addEventListener("error", () => showQuery(null, caption.textContent, "cannot show this image"));

  function searchUrl() {
    const params = new URLSearchParams({ k: kSelect.value });
    const radius = radiusInput.value.trim();
    if (!radiusInput.validity.valid || (radius !== "" && !/^\d+$/.test(radius))) return null;
    if (radius !== "") params.set("radius", radius);
    return "/search?" + params;
  }

  function thumb(url) {
    if (!url) return el("div", "thumb placeholder", "no image");
    const img = el("img", "thumb");
    img.alt = "";
    img.addEventListener("error", () => img.replaceWith(el("div", "thumb placeholder", "no image")));
    img.src = url;
    return img;
  }

  function card(r) {
    const c = Object.assign(el("div", "result"), { tabIndex: 0, title: `Search from item ${r.id}` });
    c.dataset.id = String(r.id);
    c.setAttribute("role", "button");
    const meta = el("div", "meta");
    meta.append(el("span", "rank", `#${r.rank ?? ""}`), el("span", "distance", `d = ${r.distance}`));
    const label = el("span", "label", r.label || "no label");
    if (!r.label) label.classList.add("none");
    const idLink = Object.assign(el("a", "item-id", r.id), {
      href: "/items/" + encodeURIComponent(String(r.id)), target: "_blank", rel: "noopener", title: "the item as JSON" });
    idLink.addEventListener("click", (e) => e.stopPropagation());
    c.append(thumb(r.image_url), meta, label, idLink);
    const go = () => search({ id: r.id, name: `item ${r.id}`, image: r.image_url });
    c.addEventListener("click", go);
    c.addEventListener("keydown", (e) => {
      if (e.target === c && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); go(); }
    });
    return c;
  }

  async function search(query) {
    const url = searchUrl();
    if (!url) { setStatus("The radius must be a whole number ≥ 0 (or empty for k-NN).", "error"); return; }
    last = query;
    const mine = ++seq;
    if (query.file) {
      if (objectUrl) URL.revokeObjectURL(objectUrl);
      objectUrl = URL.createObjectURL(query.file);
      showQuery(objectUrl, query.name);
    } else {
      showQuery(query.image, query.name);
    }
    setStatus(`Searching (query: ${query.name})…`, "busy");
    document.body.classList.add("busy");
    try {
      const init = { method: "POST" };
      if (query.file) {
        init.body = new FormData();
        init.body.append("image", query.file, query.name);
      } else {
        init.headers = { "Content-Type": "application/json" };
        init.body = JSON.stringify({ id: query.id });
      }
      const resp = await fetch(url, init);
      const body = await resp.json().catch(() => null);
      if (mine !== seq) return;
      if (!resp.ok || !body || !Array.isArray(body.results)) {
        results.replaceChildren();
        setStatus((body && body.error) || `Search failed (HTTP ${resp.status}).`, "error");
        return;
      }
      results.replaceChildren(...body.results.map(card));
      const n = body.count ?? body.results.length;
      const took = typeof body.took_ms === "number" ? ` in ${body.took_ms.toFixed(1)} ms` : "";
      const more = body.truncated ? " — more within the radius, not shown" : "";
      setStatus(`${n} result${n === 1 ? "" : "s"}${took} (query: ${query.name})${more}`, n ? "ok" : "");
    } catch (err) {
      if (mine === seq) setStatus(`Search failed: ${err && err.message ? err.message : err}`, "error");
    } finally {
      if (mine === seq) document.body.classList.remove("busy");
      loadStats();
    }
  }

  function ms(v) {
    return typeof v === "number" ? `${v.toFixed(v < 10 ? 2 : 1)} ms` : "—";
  }

  function renderStats(s) {
    const route = (s.requests || {})["POST /search"] || {};
    const rows = [
      ["items", "Items", s.items],
      ["bits", "Bits", s.bits],
      ["method", "Method", s.method],
      ["dataset", "Data set", s.dataset],
      ["searches", "Searches served", route.count ?? 0],
      ["latency", "Search p50 / p99", `${ms(route.p50_ms)} / ${ms(route.p99_ms)}`],
    ];
    const dl = el("dl");
    for (const [field, name, value] of rows) {
      const dd = el("dd", "", value ?? "—");
      dd.dataset.field = field;
      dl.append(el("dt", "", name), dd);
    }
    statsEl.replaceChildren(dl);
  }

  async function loadStats() {
    try {
      const resp = await fetch("/stats");
      const body = await resp.json().catch(() => null);
      if (!resp.ok || !body) throw new Error((body && body.error) || `HTTP ${resp.status}`);
      renderStats(body);
    } catch (err) {
      statsEl.replaceChildren(el("p", "muted", `Stats unavailable: ${err && err.message ? err.message : err}`));
    }
  }

  function searchFile(file) {
    if (!file) return;
    if (file.type && !file.type.startsWith("image/")) {
      setStatus(`${file.name} is not an image; choose a PNG, JPEG or other image file.`, "error");
      return;
    }
    search({ file, name: file.name || "image" });
  }

  fileInput.addEventListener("change", () => {
    searchFile(fileInput.files[0]);
    fileInput.value = ""; // choosing the same file again searches again
  });
  for (const type of ["dragenter", "dragover"]) {
    dropZone.addEventListener(type, (e) => { e.preventDefault(); dropZone.classList.add("over"); });
  }
  for (const type of ["dragleave", "dragend"]) dropZone.addEventListener(type, () => dropZone.classList.remove("over"));
  dropZone.addEventListener("drop", (e) => {
    e.preventDefault();
    dropZone.classList.remove("over");
    searchFile(e.dataTransfer && e.dataTransfer.files[0]);
  });
  // A drop that misses the zone must not navigate away from the page.
  window.addEventListener("dragover", (e) => e.preventDefault());
  window.addEventListener("drop", (e) => e.preventDefault());
  kSelect.addEventListener("change", () => { if (last) search(last); });
  radiusInput.addEventListener("change", () => { if (last) search(last); });

  loadStats();
})();
