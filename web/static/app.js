// dff-web: the search page. Plain JS, no build step, no network beyond this app's own /api.
// State lives in the URL (?q=&box=&k=&qe=&loc=), so a search can be shared or reloaded.
"use strict";

const COLOURS = ["#e6194b", "#3cb44b", "#4363d8", "#f58231", "#911eb4", "#00a7a7", "#f032e6", "#9a6324",
                 "#808000", "#000075", "#aa6e28", "#469990"];
const $ = (id) => document.getElementById(id);

const state = {
  query: null,        // "u-<hash>" (an upload) or "id-<n>" (an indexed image)
  width: 0, height: 0, // query size in image pixels
  box: null,          // [x0, y0, x1, y1] in image pixels, or null
  topK: 12, qe: 0, localize: true,
  rerank: null,       // re-rank depth (null: the server's default, 0: off)
  last: null,         // the last search answer
  chosen: null,       // id of the result shown in "why did this match"
  maxTopK: 100,
};
let searchSerial = 0;

// ------------------------------------------------------------------------------------------
// errors and small helpers

function showError(message, code) {
  const box = $("error");
  box.textContent = message;
  box.dataset.code = code || "";
  box.hidden = false;
}
function clearError() { $("error").hidden = true; $("error").textContent = ""; }

async function api(path, options) {
  let response;
  try {
    response = await fetch(path, options);
  } catch (err) {
    throw {code: "page-unreachable", message: "The page's server is unreachable (is dff-web still running?)."};
  }
  if (!response.ok) {
    let body = null;
    try { body = await response.json(); } catch (err) { /* not JSON */ }
    const error = body && body.error ? body.error : {code: "http", message: `HTTP ${response.status}`};
    throw error;
  }
  return response;
}

function percentBox(element, box, width, height) {
  element.style.left = (100 * box[0] / width) + "%";
  element.style.top = (100 * box[1] / height) + "%";
  element.style.width = (100 * (box[2] - box[0]) / width) + "%";
  element.style.height = (100 * (box[3] - box[1]) / height) + "%";
  element.hidden = false;
}

// A heatmap {height, width, values} as a tinted, alpha-weighted layer scaled onto a canvas.
function drawHeatmap(ctx, heatmap, colour, width, height) {
  if (!heatmap) return;
  const layer = document.createElement("canvas");
  layer.width = heatmap.width; layer.height = heatmap.height;
  const lctx = layer.getContext("2d");
  const pixels = lctx.createImageData(heatmap.width, heatmap.height);
  const r = parseInt(colour.slice(1, 3), 16), g = parseInt(colour.slice(3, 5), 16), b = parseInt(colour.slice(5, 7), 16);
  heatmap.values.forEach((v, i) => {
    pixels.data[4 * i] = r; pixels.data[4 * i + 1] = g; pixels.data[4 * i + 2] = b;
    pixels.data[4 * i + 3] = Math.round(255 * 0.75 * Math.max(0, Math.min(1, v)));
  });
  lctx.putImageData(pixels, 0, 0);
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(layer, 0, 0, width, height);
}

function colourOf(concept) { return COLOURS[concept % COLOURS.length]; }

// ------------------------------------------------------------------------------------------
// URL state

function writeUrl(push) {
  const params = new URLSearchParams();
  if (state.query) params.set("q", state.query);
  if (state.box) params.set("box", state.box.map((v) => Math.round(v)).join(","));
  params.set("k", state.topK);
  if (state.qe) params.set("qe", state.qe);
  if (state.rerank !== null) params.set("rr", state.rerank);
  params.set("loc", state.localize ? "1" : "0");
  const url = "?" + params.toString();
  if (url !== location.search) history[push ? "pushState" : "replaceState"](null, "", url);
}

function readUrl() {
  const params = new URLSearchParams(location.search);
  state.topK = Math.max(1, parseInt(params.get("k") || state.topK, 10) || 12);
  state.qe = Math.max(0, parseInt(params.get("qe") || "0", 10) || 0);
  state.localize = params.get("loc") !== "0";
  const rerank = parseInt(params.get("rr") || "", 10);
  state.rerank = Number.isFinite(rerank) && rerank >= 0 ? rerank : null;
  $("rerank").value = state.rerank === null ? "" : state.rerank;
  const box = (params.get("box") || "").split(",").map(Number);
  state.box = box.length === 4 && box.every(Number.isFinite) ? box : null;
  $("top-k").value = state.topK; $("qe").value = state.qe; $("localize").checked = state.localize;
  return params.get("q");
}

// ------------------------------------------------------------------------------------------
// the query image and its box

function showQueryImage(src, width, height) {
  return new Promise((resolve) => {
    const img = $("query-img");
    img.onload = () => resolve();
    img.onerror = () => resolve();
    state.width = width; state.height = height;
    img.src = src;
    $("query-stage").hidden = false;
    $("drop-hint").classList.add("small");
  });
}

function renderBox() {
  const element = $("query-box");
  if (!state.box || !state.width) { element.hidden = true; $("box-readout").textContent = "Drag on the image to draw a box around the object; drag the box to move it."; return; }
  percentBox(element, state.box, state.width, state.height);
  $("box-readout").textContent = "box " + state.box.map((v) => Math.round(v)).join(", ") + " (image pixels)";
}

function toImagePoint(event) {
  const rect = $("query-img").getBoundingClientRect();
  const x = (event.clientX - rect.left) * state.width / rect.width;
  const y = (event.clientY - rect.top) * state.height / rect.height;
  return [Math.max(0, Math.min(state.width, x)), Math.max(0, Math.min(state.height, y))];
}

function setupBoxDrawing() {
  const stage = $("query-stage");
  let drag = null;
  stage.addEventListener("pointerdown", (event) => {
    if (!state.query || event.button > 0) return;
    event.preventDefault();
    stage.setPointerCapture(event.pointerId);
    const [x, y] = toImagePoint(event);
    const b = state.box;
    if (b && x >= b[0] && x <= b[2] && y >= b[1] && y <= b[3]) {
      drag = {mode: "move", dx: x - b[0], dy: y - b[1], w: b[2] - b[0], h: b[3] - b[1], before: b};
    } else {
      drag = {mode: "draw", x, y, before: b};
    }
  });
  stage.addEventListener("pointermove", (event) => {
    if (!drag) return;
    const [x, y] = toImagePoint(event);
    if (drag.mode === "draw") {
      state.box = [Math.min(drag.x, x), Math.min(drag.y, y), Math.max(drag.x, x), Math.max(drag.y, y)];
    } else {
      const x0 = Math.max(0, Math.min(state.width - drag.w, x - drag.dx));
      const y0 = Math.max(0, Math.min(state.height - drag.h, y - drag.dy));
      state.box = [x0, y0, x0 + drag.w, y0 + drag.h];
    }
    renderBox();
  });
  const finish = (event) => {
    if (!drag) return;
    const before = drag.before;
    drag = null;
    const minimum = Math.max(4, 0.02 * Math.min(state.width, state.height));
    if (state.box && (state.box[2] - state.box[0] < minimum || state.box[3] - state.box[1] < minimum)) {
      state.box = before;  // a click, not a drag: keep what was there
    }
    renderBox();
    if (state.box !== before) search(false);
  };
  stage.addEventListener("pointerup", finish);
  stage.addEventListener("pointercancel", finish);
}

// ------------------------------------------------------------------------------------------
// uploading and choosing a query

async function uploadFile(file) {
  if (!file) return;
  clearError();
  const form = new FormData();
  form.append("file", file, file.name || "pasted-image");
  $("status").textContent = "Uploading " + (file.name || "the image") + "…";
  let answer;
  try {
    answer = await (await api("/api/queries", {method: "POST", body: form})).json();
  } catch (error) {
    showError(error.message, error.code);
    $("status").textContent = state.last ? statusLine(state.last) : "No search yet.";
    return;
  }
  state.query = answer.query;
  state.box = null;
  await showQueryImage(URL.createObjectURL(file), answer.width, answer.height);
  renderBox();
  search(true);
}

async function useQuery(queryId, box) {
  clearError();
  let blob;
  try {
    blob = await (await api("/api/queries/" + encodeURIComponent(queryId))).blob();
  } catch (error) {
    showError(error.message, error.code);
    return false;
  }
  const url = URL.createObjectURL(blob);
  const size = await new Promise((resolve) => {
    const probe = new Image();
    probe.onload = () => resolve([probe.naturalWidth, probe.naturalHeight]);
    probe.onerror = () => resolve([0, 0]);
    probe.src = url;
  });
  state.query = queryId;
  state.box = box || null;
  await showQueryImage(url, size[0], size[1]);
  renderBox();
  return true;
}

async function moreLikeThis(id) {
  if (await useQuery("id-" + id, null)) search(true);
  window.scrollTo({top: 0, behavior: "smooth"});
}

function setupInputs() {
  for (const id of ["file-input", "file-input-2"]) {
    $(id).addEventListener("change", (event) => { uploadFile(event.target.files[0]); event.target.value = ""; });
  }
  const zone = $("drop-zone");
  ["dragenter", "dragover"].forEach((name) => document.addEventListener(name, (event) => {
    event.preventDefault(); zone.classList.add("dragging");
  }));
  ["dragleave", "drop"].forEach((name) => document.addEventListener(name, (event) => {
    event.preventDefault(); zone.classList.remove("dragging");
  }));
  document.addEventListener("drop", (event) => {
    const file = event.dataTransfer && event.dataTransfer.files[0];
    if (file) uploadFile(file);
  });
  document.addEventListener("paste", (event) => {
    const items = event.clipboardData ? Array.from(event.clipboardData.items) : [];
    const item = items.find((i) => i.kind === "file");
    if (item) { event.preventDefault(); uploadFile(item.getAsFile()); }
  });
  $("search-button").addEventListener("click", () => search(false));
  $("clear-box").addEventListener("click", () => { state.box = null; renderBox(); if (state.query) search(false); });
  $("top-k").addEventListener("change", () => { if (state.query) search(false); });
  $("qe").addEventListener("change", () => { if (state.query) search(false); });
  $("rerank").addEventListener("change", () => { if (state.query) search(false); });
  $("localize").addEventListener("change", () => { if (state.query) search(false); });
  $("show-concepts").addEventListener("change", () => renderQueryOverlay());
  $("viewer-close").addEventListener("click", closeViewer);
  $("viewer").addEventListener("click", (event) => { if (event.target.id === "viewer") closeViewer(); });
  document.addEventListener("keydown", (event) => { if (event.key === "Escape") closeViewer(); });
  window.addEventListener("popstate", async () => {
    const query = readUrl();
    if (query && (await useQuery(query, state.box))) search(false, false);
  });
  window.addEventListener("resize", () => renderQueryOverlay());
}

// ------------------------------------------------------------------------------------------
// searching and showing results

function statusLine(answer) {
  const n = answer.results.length;
  return `${n} result${n === 1 ? "" : "s"} in ${Math.round(answer.elapsed_ms)} ms` +
         (answer.query.box ? " (query box)" : " (whole image)") +
         (answer.reranked ? `, top ${answer.reranked} re-ranked by factors` : "") +
         (answer.notes && answer.notes.length ? ` — ${answer.notes.join("; ")}` : "");
}

async function search(push, updateUrl = true) {
  if (!state.query) { showError("Choose a query image first.", "no-query"); return; }
  clearError();
  state.topK = Math.max(1, Math.min(state.maxTopK, parseInt($("top-k").value, 10) || 12));
  state.qe = Math.max(0, parseInt($("qe").value, 10) || 0);
  state.localize = $("localize").checked;
  const rerank = parseInt($("rerank").value, 10);
  state.rerank = Number.isFinite(rerank) && rerank >= 0 ? rerank : null;
  if (updateUrl) writeUrl(push);
  const serial = ++searchSerial;
  $("grid").setAttribute("aria-busy", "true");
  $("status").textContent = "Searching…";
  try {
    const body = {query: state.query, box: state.box, top_k: state.topK, qe: state.qe, localize: state.localize};
    if (state.rerank !== null) body.rerank = state.rerank;
    const answer = await (await api("/api/search", {
      method: "POST", headers: {"Content-Type": "application/json"}, body: JSON.stringify(body),
    })).json();
    if (serial !== searchSerial) return;  // a newer search was started meanwhile
    state.last = answer;
    state.chosen = null;
    renderResults(answer);
    renderWhy(answer);
    $("status").textContent = statusLine(answer);
  } catch (error) {
    if (serial !== searchSerial) return;
    showError(error.message, error.code);
    $("status").textContent = "The search failed.";
  } finally {
    if (serial === searchSerial) $("grid").removeAttribute("aria-busy");
  }
}

function renderResults(answer) {
  const grid = $("grid");
  grid.replaceChildren();
  for (const result of answer.results) {
    const card = document.createElement("figure");
    card.className = "card";
    card.dataset.id = result.id;
    card.dataset.rank = result.rank;
    const thumb = document.createElement("div");
    thumb.className = "thumb";
    const img = document.createElement("img");
    img.alt = result.name;
    img.src = "/api/thumbs/" + result.id;
    img.addEventListener("error", () => {  // its file is gone or unreadable: say so, keep the card
      thumb.classList.add("missing");
      thumb.textContent = "image unavailable";
    });
    thumb.append(img);
    if (result.box && result.width) {
      const box = document.createElement("div");
      box.className = "box result-box";
      percentBox(box, result.box, result.width, result.height);
      thumb.append(box);
    }
    thumb.addEventListener("click", () => openViewer(result));
    const caption = document.createElement("figcaption");
    caption.innerHTML = `<span class="rank">#${result.rank}</span><span class="score">${result.score.toFixed(3)}</span>`;
    const name = document.createElement("span");
    name.className = "name"; name.textContent = result.name; name.title = result.name;
    caption.append(name);
    const actions = document.createElement("div");
    actions.className = "actions";
    const more = document.createElement("button");
    more.type = "button"; more.className = "more"; more.textContent = "More like this";
    more.addEventListener("click", () => moreLikeThis(result.id));
    actions.append(more);
    if (result.shared_concept !== null && result.shared_concept !== undefined) {
      const why = document.createElement("button");
      why.type = "button"; why.className = "why"; why.textContent = "Why?";
      why.addEventListener("click", () => chooseResult(result));
      actions.append(why);
    }
    card.append(thumb, caption, actions);
    grid.append(card);
  }
}

function openViewer(result) {
  const img = $("viewer-img");
  img.src = "/api/images/" + result.id;
  const box = $("viewer-box");
  if (result.box && result.width) percentBox(box, result.box, result.width, result.height); else box.hidden = true;
  $("viewer-caption").textContent = `#${result.rank} · ${result.score.toFixed(3)} · ${result.name}`;
  $("viewer").hidden = false;
}
function closeViewer() { $("viewer").hidden = true; $("viewer-img").removeAttribute("src"); }

// ------------------------------------------------------------------------------------------
// "why did this match"

function conceptCanvas(imageElement, heatmap, colour, width) {
  const canvas = document.createElement("canvas");
  const w = imageElement.naturalWidth || 1, h = imageElement.naturalHeight || 1;
  canvas.width = width; canvas.height = Math.round(width * h / w);
  const ctx = canvas.getContext("2d");
  try { ctx.drawImage(imageElement, 0, 0, canvas.width, canvas.height); } catch (err) { /* not loaded */ }
  ctx.fillStyle = "rgba(255,255,255,0.25)";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  drawHeatmap(ctx, heatmap, colour, canvas.width, canvas.height);
  return canvas;
}

function renderWhy(answer) {
  const concepts = answer.query.concepts || [];
  $("why").hidden = concepts.length === 0;
  const list = $("concepts");
  list.replaceChildren();
  for (const concept of concepts) {
    const figure = document.createElement("figure");
    figure.className = "concept" + (concept.kept ? " kept" : "");
    figure.dataset.index = concept.index;
    figure.style.setProperty("--concept", colourOf(concept.index));
    figure.append(conceptCanvas($("query-img"), concept.heatmap, colourOf(concept.index), 220));
    const label = document.createElement("figcaption");
    label.innerHTML = `<span class="swatch"></span>concept ${concept.index + 1} · ${Math.round(100 * concept.weight)}%` +
                      (concept.kept ? " · <b>kept by the box</b>" : "");
    figure.append(label);
    list.append(figure);
  }
  $("why-result").replaceChildren();
  renderQueryOverlay();
}

function renderQueryOverlay() {
  const canvas = $("query-overlay");
  const img = $("query-img");
  canvas.width = img.clientWidth; canvas.height = img.clientHeight;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (!$("show-concepts").checked || !state.last) return;
  for (const concept of state.last.query.concepts || []) {
    if (concept.kept) drawHeatmap(ctx, concept.heatmap, colourOf(concept.index), canvas.width, canvas.height);
  }
}

function chooseResult(result) {
  state.chosen = result.id;
  document.querySelectorAll(".card").forEach((card) => card.classList.toggle("chosen", card.dataset.id === String(result.id)));
  const panel = $("why-result");
  panel.replaceChildren();
  const colour = colourOf(result.shared_concept);
  const title = document.createElement("p");
  title.innerHTML = `<b>#${result.rank} ${result.name}</b> shares <span style="color:${colour}">concept ${result.shared_concept + 1}</span> with the query; here is where it is:`;
  const img = new Image();
  img.onload = () => {
    const canvas = conceptCanvas(img, result.shared_concept_heatmap, colour, Math.min(400, img.naturalWidth * 2));
    canvas.className = "shared-concept";
    canvas.dataset.concept = result.shared_concept;
    panel.append(canvas);
  };
  img.src = "/api/images/" + result.id;
  panel.append(title);
  $("why").hidden = false;
}

// ------------------------------------------------------------------------------------------
// the index panel and start-up

async function loadInfo() {
  const panel = $("index-panel");
  try {
    const info = await (await api("/api/info")).json();
    state.maxTopK = info.max_top_k || 100;
    $("top-k").max = state.maxTopK;
    const updated = info.updated_at ? new Date(info.updated_at * 1000).toLocaleString() : "unknown";
    panel.innerHTML = "";
    const parts = [
      ["images", info.count.toLocaleString()], ["backbone", info.backbone], ["descriptor", info.descriptor],
      ["FAISS", `${info.faiss || "?"} (${info.dimension}-d)`], ["last update", updated],
    ];
    for (const [label, value] of parts) {
      const item = document.createElement("span");
      item.className = "info-item";
      item.dataset.field = label;
      item.innerHTML = `${label} <b></b> &nbsp;`;
      item.querySelector("b").textContent = value;
      panel.append(item);
    }
    return info;
  } catch (error) {
    panel.textContent = "index unavailable";
    showError(error.message, error.code);
    return null;
  }
}

async function start() {
  setupInputs();
  setupBoxDrawing();
  const info = await loadInfo();
  const query = readUrl();
  if (info && !new URLSearchParams(location.search).has("k")) {
    state.topK = info.default_top_k || state.topK;
    $("top-k").value = state.topK;
  }
  // an empty box: the server's default depth (dff-serve --rerank; 0 when its index stores no rows)
  if (info && Number.isFinite(info.rerank)) $("rerank").placeholder = `auto: ${info.rerank}`;
  if (query && (await useQuery(query, state.box))) search(false, false);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", start);
