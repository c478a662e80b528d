// masterocr page: send dropped / picked / pasted images to /v1/read and show, per image, the text, its
// confidence, each character coloured by its probability and, on hover, where the model looked.
"use strict";

const state = { maxFiles: 64, maxBytes: 10 * 2 ** 20, apiKey: sessionStorage.getItem("masterocr-key") || "" };
const $ = (id) => document.getElementById(id);

function headers() {
  return state.apiKey ? { "X-API-Key": state.apiKey } : {};
}

function setStatus(text) {
  $("status").textContent = text;
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.detail}`;
  } catch (e) {
    return `${response.status} ${response.statusText}`;
  }
}

async function loadModelInfo() {
  const response = await fetch("v1/models", { headers: headers() });
  if (response.status === 401) {
    $("key-box").hidden = false;
    $("model-info").textContent = "API key needed";
    return;
  }
  if (!response.ok) {
    $("model-info").textContent = await errorText(response);
    return;
  }
  const model = (await response.json()).models[0];
  state.maxFiles = model.max_files;
  state.maxBytes = model.max_upload_bytes;
  const size = model.img_size ? `, input ${model.img_size[0]}x${model.img_size[1]}` : "";
  const aspect = model.keep_aspect ? " keep-aspect" : "";
  $("model-info").textContent = model.ready
    ? `model ${model.name} (${model.backend}${size}${aspect})`
    : `model ${model.name} is loading…`;
  if (!model.ready) setTimeout(loadModelInfo, 1000);
}

// ---- colours -------------------------------------------------------------------------------------------

// Probability -> background: red (0) through amber (0.5) to green (1).
function probColor(p) {
  const clamped = Math.max(0, Math.min(1, p));
  return `hsl(${Math.round(120 * clamped)}, ${clamped > 0.5 ? 55 : 85}%, ${80 + 2 * clamped}%)`;
}

// Same blue-cyan-yellow-red scale as masterocr.recognizer.heat_colors.
function heatColor(v) {
  const c = (x) => Math.round(255 * Math.max(0, Math.min(1, 1.5 - Math.abs(4 * v - x))));
  return [c(3), c(2), c(1)];
}

// ---- the heat-map -------------------------------------------------------------------------------------

// Draw character k's (Hf, Wf) attention over the displayed image. With a keep-aspect model only the left
// `valid_fraction` of the map covers the image (the rest is padding): that part is stretched over the image,
// as masterocr.recognizer._attention_on_image does.
function drawHeat(card, k) {
  const canvas = card.querySelector("canvas.heat");
  const img = card.querySelector("img");
  const att = card.attention;
  if (!att || !att.maps[k]) return;
  const map = att.maps[k];
  const rows = map.length;
  const cols = map[0].length;
  const validCols = Math.max(1e-3, Math.min(cols, att.valid_fraction * cols));
  let top = 0;
  for (const row of map) for (let x = 0; x < Math.ceil(validCols); x++) top = Math.max(top, row[x]);

  const small = document.createElement("canvas");
  small.width = cols;
  small.height = rows;
  const smallCtx = small.getContext("2d");
  const pixels = smallCtx.createImageData(cols, rows);
  for (let y = 0; y < rows; y++) {
    for (let x = 0; x < cols; x++) {
      const v = top > 0 ? map[y][x] / top : 0;
      const [r, g, b] = heatColor(v);
      const i = 4 * (y * cols + x);
      pixels.data.set([r, g, b, Math.round(255 * (0.35 + 0.5 * v))], i);
    }
  }
  smallCtx.putImageData(pixels, 0, 0);

  const ratio = window.devicePixelRatio || 1;
  canvas.style.width = `${img.clientWidth}px`;
  canvas.style.height = `${img.clientHeight}px`;
  canvas.width = Math.max(1, Math.round(img.clientWidth * ratio));
  canvas.height = Math.max(1, Math.round(img.clientHeight * ratio));
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  // The map belongs to the turn that was read: turn it back (clockwise) over the image as displayed.
  const turn = card.orientation || 0;
  const sideways = turn % 180 !== 0;
  const w = sideways ? canvas.height : canvas.width;
  const h = sideways ? canvas.width : canvas.height;
  ctx.save();
  ctx.translate(canvas.width / 2, canvas.height / 2);
  ctx.rotate((turn * Math.PI) / 180);
  ctx.drawImage(small, 0, 0, validCols, rows, -w / 2, -h / 2, w, h);
  ctx.restore();
  canvas.dataset.char = String(k);
  canvas.hidden = false;
}

function clearHeat(card) {
  const canvas = card.querySelector("canvas.heat");
  canvas.hidden = true;
  delete canvas.dataset.char;
}

// ---- cards --------------------------------------------------------------------------------------------

function newCard(file) {
  const card = $("card-template").content.firstElementChild.cloneNode(true);
  const img = card.querySelector("img");
  img.src = URL.createObjectURL(file);
  img.alt = file.name || "pasted image";
  card.querySelector(".name").textContent = file.name || "pasted image";
  const text = card.querySelector(".text");
  text.textContent = "reading…";
  text.classList.add("pending");
  card.querySelector("canvas.heat").hidden = true;
  $("results").prepend(card);
  $("toolbar").hidden = false;
  return card;
}

function showError(card, message) {
  card.classList.add("failed");
  const text = card.querySelector(".text");
  text.className = "text empty";
  text.textContent = "not read";
  const meta = card.querySelector(".meta");
  meta.textContent = "";
  const error = document.createElement("div");
  error.className = "error";
  error.textContent = message;
  meta.appendChild(error);
}

function showResult(card, result) {
  if (result.error) {
    showError(card, result.error);
    return;
  }
  card.attention = result.attention || null;
  card.orientation = result.orientation || 0;  // degrees the image was turned (counter-clockwise) to be read
  card.dataset.text = result.text;
  const text = card.querySelector(".text");
  text.className = "text";
  text.textContent = "";
  if (!result.text) {
    text.classList.add("empty");
    text.textContent = "(no text)";
  }
  [...result.text].forEach((ch, k) => {
    const span = document.createElement("span");
    const p = result.char_probs[k];
    span.className = "char";
    span.textContent = ch;
    span.tabIndex = 0;
    span.style.background = probColor(p);
    span.title = `'${ch}'  p = ${p.toFixed(3)}`;
    span.dataset.index = String(k);
    const show = () => drawHeat(card, k);
    const hide = () => clearHeat(card);
    span.addEventListener("mouseenter", show);
    span.addEventListener("focus", show);
    span.addEventListener("mouseleave", hide);
    span.addEventListener("blur", hide);
    text.appendChild(span);
  });
  card.querySelector(".meta").textContent =
    `confidence ${(100 * result.confidence).toFixed(1)}%` + (card.attention ? "" : " · no attention maps");
  card.classList.add("done");
}

// ---- sending ------------------------------------------------------------------------------------------

async function send(files) {
  const cards = files.map(newCard);
  const form = new FormData();
  files.forEach((file, i) => form.append("files", file, file.name || `pasted-${i}.png`));
  setStatus(`reading ${files.length} image${files.length > 1 ? "s" : ""}…`);
  let response;
  try {
    response = await fetch("v1/read?attention=true", { method: "POST", body: form, headers: headers() });
  } catch (e) {
    cards.forEach((card) => showError(card, `the server could not be reached (${e.message})`));
    setStatus("");
    return;
  }
  if (!response.ok) {
    const message = await errorText(response);
    if (response.status === 401) $("key-box").hidden = false;
    cards.forEach((card) => showError(card, message));
    setStatus("");
    return;
  }
  const body = await response.json();
  body.results.forEach((result, i) => showResult(cards[i], result));
  setStatus("");
}

function accept(fileList) {
  const files = [...fileList].filter((f) => f.type.startsWith("image/") || f.type === "");
  if (!files.length) {
    setStatus("no image among the dropped items");
    return;
  }
  // Respect the server's limits: at most max_files per request, and split by size.
  let batch = [];
  let bytes = 0;
  for (const file of files) {
    if (batch.length && (batch.length >= state.maxFiles || bytes + file.size > state.maxBytes * 0.9)) {
      send(batch);
      batch = [];
      bytes = 0;
    }
    batch.push(file);
    bytes += file.size;
  }
  if (batch.length) send(batch);
}

function setup() {
  const zone = $("drop-zone");
  const input = $("file-input");
  input.addEventListener("change", () => {
    accept(input.files);
    input.value = "";
  });
  zone.addEventListener("keydown", (e) => {
    if (e.key === "Enter" || e.key === " ") {
      e.preventDefault();
      input.click();
    }
  });
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (e) => {
    e.preventDefault();
    zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("over")));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    accept(e.dataTransfer.files);
  });
  document.addEventListener("paste", (e) => {
    const files = [...(e.clipboardData ? e.clipboardData.items : [])]
      .filter((item) => item.kind === "file")
      .map((item) => item.getAsFile())
      .filter(Boolean);
    if (files.length) {
      e.preventDefault();
      accept(files);
    }
  });
  $("clear").addEventListener("click", () => {
    $("results").querySelectorAll("img").forEach((img) => URL.revokeObjectURL(img.src));
    $("results").textContent = "";
    $("toolbar").hidden = true;
  });
  $("key-save").addEventListener("click", () => {
    state.apiKey = $("api-key").value.trim();
    sessionStorage.setItem("masterocr-key", state.apiKey);
    $("key-box").hidden = true;
    loadModelInfo();
  });
  loadModelInfo().catch((e) => { $("model-info").textContent = `server unreachable (${e.message})`; });
}

setup();
