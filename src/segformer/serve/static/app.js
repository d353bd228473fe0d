// SegFormer web page: uploads an image to the API, draws the label map over it in a canvas, and on request the
// confidence map (each pixel's largest softmax probability, format=confidence) as a second view.
"use strict";

const $ = (id) => document.getElementById(id);
const SCALE = 65535; // the confidence PNG holds round(probability × 65535)
const state = {
  model: null, labels: null, confidence: null, width: 0, height: 0, hidden: new Set(),
  view: "classes", file: null, upload: 0, pngs: {},
};
window.segformer = state; // for debugging and tests

// The pixel values of a non-interlaced PNG: an 8-bit palette PNG (the API's label map: class ids, not colours)
// as a Uint8Array, a 16-bit grayscale PNG (the confidence map) as a Uint16Array.
async function decodePng(buffer) {
  const bytes = new Uint8Array(buffer);
  const view = new DataView(buffer);
  let pos = 8, width = 0, height = 0, depth = 0, type = 0, interlace = 0;
  const idat = [];
  while (pos + 8 <= bytes.length) {
    const length = view.getUint32(pos);
    const kind = String.fromCharCode(...bytes.subarray(pos + 4, pos + 8));
    if (kind === "IHDR") {
      [width, height] = [view.getUint32(pos + 8), view.getUint32(pos + 12)];
      [depth, type, interlace] = [bytes[pos + 16], bytes[pos + 17], bytes[pos + 20]];
    } else if (kind === "IDAT") {
      idat.push(bytes.subarray(pos + 8, pos + 8 + length));
    } else if (kind === "IEND") {
      break;
    }
    pos += 12 + length;
  }
  const palette8 = type === 3 && depth === 8, gray16 = type === 0 && depth === 16;
  if (!(palette8 || gray16) || interlace !== 0) throw new Error("expected an 8-bit palette or 16-bit gray PNG");
  const stream = new Blob(idat).stream().pipeThrough(new DecompressionStream("deflate"));
  const raw = new Uint8Array(await new Response(stream).arrayBuffer());
  const data = unfilter(raw, width * (palette8 ? 1 : 2), height, palette8 ? 1 : 2);
  if (palette8) return { samples: data, width, height };
  const samples = new Uint16Array(width * height);
  for (let i = 0; i < samples.length; i++) samples[i] = (data[2 * i] << 8) | data[2 * i + 1]; // big-endian
  return { samples, width, height };
}

// The scanlines' bytes with the PNG filters undone (bpp: bytes per pixel, the filters' left neighbour).
function unfilter(raw, stride, height, bpp) {
  const out = new Uint8Array(stride * height);
  let prev = new Uint8Array(stride);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (stride + 1)];
    const line = raw.subarray(y * (stride + 1) + 1, (y + 1) * (stride + 1));
    const row = out.subarray(y * stride, (y + 1) * stride);
    for (let x = 0; x < stride; x++) {
      const a = x >= bpp ? row[x - bpp] : 0, b = prev[x], c = x >= bpp ? prev[x - bpp] : 0;
      let p = 0;
      if (filter === 1) p = a;
      else if (filter === 2) p = b;
      else if (filter === 3) p = (a + b) >> 1;
      else if (filter === 4) {
        const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c);
        p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      row[x] = (line[x] + p) & 255;
    }
    prev = row;
  }
  return out;
}

// One view's canvas: each pixel's RGB from rgbOf(i), transparent where its class is unticked in the legend.
function paint(canvas, rgbOf) {
  const image = canvas.getContext("2d").createImageData(state.width, state.height);
  for (let i = 0; i < state.labels.length; i++) {
    const rgb = state.hidden.has(state.labels[i]) ? null : rgbOf(i);
    if (!rgb) continue;
    image.data.set(rgb, 4 * i);
    image.data[4 * i + 3] = 255;
  }
  canvas.getContext("2d").putImageData(image, 0, 0);
}

// Gray level of a confidence value: black = probability 0 (uncertain), white = 1 (certain).
const grayOf = (value) => Math.round((255 * value) / SCALE);
const GRAYS = Array.from({ length: 256 }, (_, level) => [level, level, level]);

function draw() {
  const palette = state.model.palette;
  paint($("overlay"), (i) => palette[state.labels[i]]);
  if (state.confidence) paint($("confidence"), (i) => GRAYS[grayOf(state.confidence[i])]);
  for (const canvas of [$("overlay"), $("confidence")]) canvas.style.opacity = $("opacity").value;
}

function buildLegend(classes) {
  const legend = $("legend");
  legend.replaceChildren();
  for (const entry of classes) {
    const item = document.createElement("li");
    const box = Object.assign(document.createElement("input"), { type: "checkbox", checked: true });
    box.dataset.classId = entry.id;
    box.addEventListener("change", () => {
      box.checked ? state.hidden.delete(entry.id) : state.hidden.add(entry.id);
      draw();
    });
    const swatch = Object.assign(document.createElement("span"), { className: "swatch" });
    swatch.style.background = `rgb(${state.model.palette[entry.id].join(",")})`;
    const score = entry.score === undefined ? "" : `, confidence ${(100 * entry.score).toFixed(0)}%`;
    const text = document.createElement("span");
    text.textContent = `${entry.name} ${(100 * entry.share).toFixed(1)}%${score}`;
    const label = document.createElement("label");
    label.append(box, swatch, text);
    item.append(label);
    legend.append(item);
  }
}

async function post(file, query) {
  const form = new FormData();
  form.append("image", file);
  const response = await fetch(`/v1/segment?${query}`, { method: "POST", body: form });
  if (!response.ok) {
    const answer = await response.json().catch(() => ({ error: response.statusText }));
    throw new Error(`${response.status}: ${answer.error}`);
  }
  return response;
}

function busy(message) {
  document.body.dataset.state = "busy";
  $("status").className = "";
  $("status").textContent = message;
}

function failed(error) {
  $("status").className = "error";
  $("status").textContent = error.message;
  document.body.dataset.state = "error";
}

async function segment(file) {
  const upload = ++state.upload;
  busy(`segmenting ${file.name}…`);
  try {
    const [png, json] = await Promise.all([post(file, "format=png"), post(file, "format=json&scores=true")]);
    const buffer = await png.arrayBuffer();
    const summary = await json.json();
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    const { samples, width, height } = await decodePng(buffer);
    if (upload !== state.upload) return; // a newer upload took over
    Object.assign(state, { labels: samples, width, height, confidence: null, hidden: new Set(), file });
    state.pngs = { classes: buffer };
    for (const canvas of $("stage").querySelectorAll("canvas")) [canvas.width, canvas.height] = [width, height];
    $("photo").getContext("2d").drawImage(bitmap, 0, 0, width, height);
    buildLegend(summary.classes);
    $("timing").textContent = `${summary.width}×${summary.height}, ${summary.mode}, ${summary.timing.total_ms.toFixed(0)} ms`;
    $("result").hidden = false;
    await show(state.view);
  } catch (error) {
    if (upload === state.upload) failed(error);
  }
}

// The confidence map of the current upload, asked for the first time its view is shown.
async function loadConfidence() {
  const upload = state.upload;
  busy(`computing the confidence of ${state.file.name}…`);
  const buffer = await (await post(state.file, "format=confidence")).arrayBuffer();
  const { samples, width, height } = await decodePng(buffer);
  if (upload !== state.upload) return false;
  if (width !== state.width || height !== state.height) throw new Error("the confidence map's size is not the image's");
  Object.assign(state, { confidence: samples });
  state.pngs.confidence = buffer;
  return true;
}

// Show the view "classes" (the label overlay) or "confidence" (the gray confidence map) of the current upload.
async function show(view) {
  const upload = state.upload;
  try {
    if (view === "confidence" && !state.confidence && !(await loadConfidence())) return;
    if (!$(`view-${view}`).checked) return; // another view was picked meanwhile
  } catch (error) {
    if (upload !== state.upload) return;
    $("view-classes").checked = true;
    await show("classes");
    failed(error);
    return;
  }
  state.view = view;
  document.body.dataset.view = view;
  $(`view-${view}`).checked = true;
  $("overlay").hidden = view !== "classes";
  $("confidence").hidden = view !== "confidence";
  $("scale").hidden = view !== "confidence";
  draw();
  const link = $("download");
  URL.revokeObjectURL(link.href);
  link.href = URL.createObjectURL(new Blob([state.pngs[view]], { type: "image/png" }));
  const kind = view === "classes" ? "label" : "confidence";
  link.download = `${state.file.name.replace(/\.[^.]*$/, "")}_${kind}.png`;
  link.textContent = `Download ${kind} PNG`;
  $("status").textContent = state.file.name;
  document.body.dataset.state = "ready";
}

function hover(event) {
  if (!state.labels) return;
  const rect = $("photo").getBoundingClientRect();
  const x = Math.min(state.width - 1, Math.floor(((event.clientX - rect.left) * state.width) / rect.width));
  const y = Math.min(state.height - 1, Math.floor(((event.clientY - rect.top) * state.height) / rect.height));
  if (x < 0 || y < 0) return;
  const id = state.labels[y * state.width + x];
  const value = state.confidence ? state.confidence[y * state.width + x] : null;
  const confidence = value === null ? "" : `, confidence ${((100 * value) / SCALE).toFixed(1)}%`;
  $("hover").textContent = `${state.model.class_names[id]}${confidence} (x ${x}, y ${y})`;
  $("hover").dataset.classId = id;
}

async function init() {
  state.model = await (await fetch("/v1/model")).json();
  $("model").textContent = `SegFormer-${state.model.variant.toUpperCase()}, ${state.model.num_classes} classes, ${state.model.engine}`;
  $("file").addEventListener("change", (e) => e.target.files[0] && segment(e.target.files[0]));
  $("opacity").addEventListener("input", () => {
    for (const canvas of [$("overlay"), $("confidence")]) canvas.style.opacity = $("opacity").value;
  });
  for (const radio of document.querySelectorAll("input[name=view]")) {
    radio.addEventListener("change", () => {
      if (radio.checked && state.labels) show(radio.value);
      else if (radio.checked) state.view = radio.value; // the first upload opens in this view
    });
  }
  $("stage").addEventListener("mousemove", hover);
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => (e.preventDefault(), drop.classList.add("over")));
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    if (e.dataTransfer.files[0]) segment(e.dataTransfer.files[0]);
  });
}

init();
