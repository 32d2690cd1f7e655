// UNet3D memory estimate in the graph: "≈ 5.3 GB peak of 7.6 GB free — fits" on this pack's nodes.
//
// For every "Empty UNet3D Video Latent", the extension follows the graph as wired (latent -> sampler -> model
// chain -> loader), collects the settings that change memory (size, frames, batch, cfg, weight dtype, slicing,
// chunking, frame batching), asks the server (POST /unet3d/estimate) and shows the answer as a small text widget
// on the latent node and on every UNet3D node of its model chain. The latent node also shows the duration of its
// frames at the node's "fps" property (default 8). The graph is re-read twice a second and only a changed request
// is sent. Works with the March 2024 frontend and with comfyui-frontend-package (both serve /scripts/app.js; this file is served at /extensions/<pack>/js/).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const OURS = new Set(["UNet3DLoader", "UNet3DEmptyLatentVideo", "UNet3DFrameBatching", "UNet3DFreeU",
  "UNet3DAttentionSlicing", "UNet3DForwardChunking"]);
const SAMPLERS = new Set(["KSampler", "KSamplerAdvanced", "SamplerCustom"]);
const WIDGET = "unet3d_estimate";
const POLL_MS = 500;
const DEFAULT_FPS = 8;
const lastRequest = new Map();   // latent node id -> JSON of its last request

function value(node, name, fallback) {
  const widget = node?.widgets?.find((w) => w.name === name);
  return widget === undefined ? fallback : widget.value;
}

function inputNode(node, name) {
  const slot = node?.inputs?.findIndex((i) => i.name === name) ?? -1;
  return slot < 0 ? null : node.getInputNode(slot);
}

function outputNodes(node) {
  return (node.outputs || []).flatMap((_, i) => node.getOutputNodes(i) || []);
}

// The loader and patch nodes upstream of a MODEL input (any node with a "model" input is walked through).
function modelChain(start) {
  const chain = [];
  for (let node = start, steps = 0; node && steps < 64; steps++) {
    if (node.mode === 2 || node.mode === 4) { node = inputNode(node, "model"); continue; }  // muted / bypassed
    chain.push(node);
    if (node.type === "UNet3DLoader") break;
    node = inputNode(node, "model");
  }
  return chain;
}

function wrap(text, width = 46) {
  const lines = [];
  for (const paragraph of String(text).split("\n")) {
    let line = "";
    for (const word of paragraph.split(" ")) {
      if (line && (line + " " + word).length > width) { lines.push(line); line = word; } else line = line ? line + " " + word : word;
    }
    lines.push(line);
  }
  return lines;
}

function estimateWidget(node) {
  let widget = node.widgets?.find((w) => w.name === WIDGET);
  if (widget) return widget;
  widget = {
    name: WIDGET, type: "unet3d_text", value: "", serialize: false, options: { serialize: false },
    color: "#8c8",
    draw(ctx, _node, width, y) {
      ctx.save();
      ctx.fillStyle = this.color;
      ctx.font = "12px sans-serif";
      wrap(this.value).forEach((line, i) => ctx.fillText(line, 12, y + 14 + i * 15, width - 24));
      ctx.restore();
    },
    computeSize(width) { return [width, 15 * Math.max(1, wrap(this.value).length) + 6]; },
  };
  node.addCustomWidget(widget);
  return widget;
}

function show(nodes, text, ok) {
  for (const node of nodes) {
    const widget = estimateWidget(node);
    widget.value = node.type === "UNet3DEmptyLatentVideo" ? `${durationText(node)}\n${text}` : text;
    widget.color = ok === false ? "#e88" : ok ? "#8c8" : "#bbb";
    const size = node.computeSize();
    if (size[1] > node.size[1]) node.setSize([Math.max(node.size[0], size[0]), size[1]]);
  }
  app.graph.setDirtyCanvas(true, true);
}

function durationText(latent) {
  const frames = value(latent, "frames", 0);
  const fps = Number(latent.properties?.fps) || DEFAULT_FPS;
  return `${frames} frames = ${(frames / fps).toFixed(1)} s at ${fps} fps`;
}

// The request for one latent node, and the UNet3D nodes that show its answer.
function requestFor(latent) {
  const sampler = outputNodes(latent).find((n) => SAMPLERS.has(n.type));
  const chain = sampler ? modelChain(inputNode(sampler, "model")) : [];
  const loader = chain.find((n) => n.type === "UNet3DLoader")
    || app.graph._nodes.find((n) => n.type === "UNet3DLoader");
  const find = (type) => chain.find((n) => n.type === type);
  const request = {
    model: value(loader, "unet_name", null), weight_dtype: value(loader, "weight_dtype", "default"),
    frames: value(latent, "frames", 24), width: value(latent, "width", 576), height: value(latent, "height", 320),
    batch: value(latent, "batch_size", 1), cfg: sampler ? value(sampler, "cfg", 7.5) : 7.5,
    attention_slice: null, ff_chunk: null, frame_batching: null,
  };
  const slicing = find("UNet3DAttentionSlicing");
  if (slicing) request.attention_slice = value(slicing, "slice_size", "auto");
  const chunking = find("UNet3DForwardChunking");
  if (chunking) request.ff_chunk = { chunk_size: value(chunking, "chunk_size", 1), dim: value(chunking, "dim", "sequence") };
  const batching = find("UNet3DFrameBatching");
  if (batching) {
    request.frame_batching = {};
    for (const key of ["context_length", "context_overlap", "context_stride", "closed_loop", "max_batch_rows"]) {
      request.frame_batching[key] = value(batching, key, undefined);
    }
  }
  const shown = [latent, ...chain.filter((n) => OURS.has(n.type))];
  if (loader && !shown.includes(loader)) shown.push(loader);
  return { request, shown, loader };
}

async function refreshLatent(latent) {
  const { request, shown, loader } = requestFor(latent);
  const key = JSON.stringify(request);
  if (lastRequest.get(latent.id) === key) return;
  lastRequest.set(latent.id, key);
  if (!loader || !request.model) { show(shown, "memory: connect a Load UNet3D Model", null); return; }
  try {
    const response = await api.fetchApi("/unet3d/estimate", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: key,
    });
    const answer = await response.json();
    if (lastRequest.get(latent.id) !== key) return;   // a newer request is on its way
    if (!response.ok || !answer.ok) show(shown, `memory estimate: ${answer.error || response.status}`, null);
    else show(shown, answer.text, answer.fits);
  } catch (error) {
    lastRequest.delete(latent.id);
    show(shown, `memory estimate unavailable (${error})`, null);
  }
}

function refreshAll() {
  const graph = app.graph;
  if (!graph?._nodes) return;
  for (const node of graph._nodes) {
    if (node.type === "UNet3DEmptyLatentVideo" && node.mode !== 2 && node.mode !== 4) refreshLatent(node);
  }
}

app.registerExtension({
  name: "unet3d.memoryEstimate",
  async setup() {
    setInterval(refreshAll, POLL_MS);
  },
  async nodeCreated(node) {
    if (node.type === "UNet3DEmptyLatentVideo") {
      node.properties = node.properties || {};
      if (node.properties.fps === undefined) node.properties.fps = DEFAULT_FPS;
    }
  },
});
