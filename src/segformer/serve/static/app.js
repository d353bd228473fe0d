// SegFormer web page: uploads an image to the API, draws the label map over it in a canvas.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { model: null, labels: null, width: 0, height: 0, hidden: new Set() };
window.segformer = state; // for debugging and tests

// Class ids of an 8-bit palette PNG (the API's label map): the PNG's own pixel values, not its colours.
async function decodeLabelPng(buffer) {
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
  if (type !== 3 || depth !== 8 || interlace !== 0) throw new Error("expected an 8-bit palette PNG");
  const stream = new Blob(idat).stream().pipeThrough(new DecompressionStream("deflate"));
  const raw = new Uint8Array(await new Response(stream).arrayBuffer());
  const labels = new Uint8Array(width * height);
  let prev = new Uint8Array(width);
  for (let y = 0; y < height; y++) {
    const filter = raw[y * (width + 1)];
    const line = raw.subarray(y * (width + 1) + 1, (y + 1) * (width + 1));
    const out = labels.subarray(y * width, (y + 1) * width);
    for (let x = 0; x < width; x++) {
      const a = x > 0 ? out[x - 1] : 0, b = prev[x], c = x > 0 ? prev[x - 1] : 0;
      let p = 0;
      if (filter === 1) p = a;
      else if (filter === 2) p = b;
      else if (filter === 3) p = (a + b) >> 1;
      else if (filter === 4) {
        const pa = Math.abs(b - c), pb = Math.abs(a - c), pc = Math.abs(a + b - 2 * c);
        p = pa <= pb && pa <= pc ? a : pb <= pc ? b : c;
      }
      out[x] = (line[x] + p) & 255;
    }
    prev = out;
  }
  return { labels, width, height };
}

function drawOverlay() {
  const canvas = $("overlay");
  const ctx = canvas.getContext("2d");
  const image = ctx.createImageData(state.width, state.height);
  const palette = state.model.palette;
  for (let i = 0; i < state.labels.length; i++) {
    const id = state.labels[i];
    if (state.hidden.has(id) || id >= palette.length) continue;
    image.data.set(palette[id], 4 * i);
    image.data[4 * i + 3] = 255;
  }
  ctx.putImageData(image, 0, 0);
  canvas.style.opacity = $("opacity").value;
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
      drawOverlay();
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

async function segment(file) {
  document.body.dataset.state = "busy";
  $("status").className = "";
  $("status").textContent = `segmenting ${file.name}…`;
  try {
    const [png, json] = await Promise.all([post(file, "format=png"), post(file, "format=json&scores=true")]);
    const buffer = await png.arrayBuffer();
    const summary = await json.json();
    Object.assign(state, await decodeLabelPng(buffer), { hidden: new Set() });
    const bitmap = await createImageBitmap(file, { imageOrientation: "from-image" });
    for (const canvas of [$("photo"), $("overlay")]) [canvas.width, canvas.height] = [state.width, state.height];
    $("photo").getContext("2d").drawImage(bitmap, 0, 0, state.width, state.height);
    buildLegend(summary.classes);
    drawOverlay();
    const link = $("download");
    URL.revokeObjectURL(link.href);
    link.href = URL.createObjectURL(new Blob([buffer], { type: "image/png" }));
    link.download = `${file.name.replace(/\.[^.]*$/, "")}_label.png`;
    $("timing").textContent = `${summary.width}×${summary.height}, ${summary.mode}, ${summary.timing.total_ms.toFixed(0)} ms`;
    $("status").textContent = file.name;
    $("result").hidden = false;
    document.body.dataset.state = "ready";
  } catch (error) {
    $("status").className = "error";
    $("status").textContent = error.message;
    document.body.dataset.state = "error";
  }
}

function hover(event) {
  if (!state.labels) return;
  const rect = event.target.getBoundingClientRect();
  const x = Math.min(state.width - 1, Math.floor(((event.clientX - rect.left) * state.width) / rect.width));
  const y = Math.min(state.height - 1, Math.floor(((event.clientY - rect.top) * state.height) / rect.height));
  const id = state.labels[y * state.width + x];
  $("hover").textContent = `${state.model.class_names[id]} (x ${x}, y ${y})`;
  $("hover").dataset.classId = id;
}

async function init() {
  state.model = await (await fetch("/v1/model")).json();
  $("model").textContent = `SegFormer-${state.model.variant.toUpperCase()}, ${state.model.num_classes} classes, ${state.model.engine}`;
  $("file").addEventListener("change", (e) => e.target.files[0] && segment(e.target.files[0]));
  $("opacity").addEventListener("input", () => ($("overlay").style.opacity = $("opacity").value));
  $("overlay").addEventListener("mousemove", hover);
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
