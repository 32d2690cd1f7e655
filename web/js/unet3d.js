// UNet3D memory estimate in the graph: "≈ 5.3 GB peak of 7.6 GB free — fits" on this pack's nodes.
//
// For every "Empty UNet3D Video Latent", the extension follows the graph as wired (latent -> sampler -> model
// chain) and sends the widget values of those nodes, by name, to the server (POST /unet3d/estimate). The server reads
// them with the nodes' own input definitions (nodes/estimate_request.py), so nothing here knows what an input means.
// The answer is shown as a text widget on the latent node and on every node of this pack in its model chain; the
// latent node also shows the duration of its frames at its "fps" property (default 8).
//
// Driven by events, not polling: a widget change, a link change, a node added or removed, or a graph loaded
// schedules one refresh (coalesced), and only a changed request is sent. This pack's nodes are recognised by their
// category ("video/unet3d..."), so a new node needs no change here. Works with the March 2024 frontend and with
// comfyui-frontend-package (both serve /scripts/app.js; this file is served at /extensions/<pack>/js/).
import { app } from "../../../scripts/app.js";
import { api } from "../../../scripts/api.js";

const CATEGORY = "video/unet3d";
const LATENT = "UNet3DEmptyLatentVideo";
const WIDGET = "unet3d_estimate";
const DEFAULT_FPS = 8;
const SETTLE_MS = 150;
const MUTED = 2, BYPASSED = 4;
const ours = new Set();            // node types of this pack, from their category
const lastRequest = new Map();     // latent node id -> JSON of its last request
let pending = null;

function widgetValues(node) {
  const values = {};
  for (const widget of node?.widgets || []) {
    if (widget.name !== WIDGET && widget.type !== "button" && widget.value !== undefined) values[widget.name] = widget.value;
  }
  return values;
}

function inputNode(node, name) {
  const slot = node?.inputs?.findIndex((i) => i.name === name) ?? -1;
  return slot < 0 ? null : node.getInputNode(slot);
}

function outputNodes(node) {
  return (node.outputs || []).flatMap((_, i) => node.getOutputNodes(i) || []);
}

// The sampler a latent feeds: the first downstream node with a "model" input and a "latent_image" input.
function samplerOf(latent) {
  return outputNodes(latent).find((n) => n.mode !== MUTED && inputNode(n, "model") && (n.inputs || []).some((i) => i.name === "latent_image"));
}

// Every node on the MODEL path upstream of the sampler, nearest first (muted / bypassed nodes are stepped over).
function modelChain(sampler) {
  const chain = [];
  for (let node = inputNode(sampler, "model"), steps = 0; node && steps < 64; steps++) {
    if (node.mode !== MUTED && node.mode !== BYPASSED) chain.push(node);
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

function durationText(latent) {
  const frames = widgetValues(latent).frames || 0;
  const fps = Number(latent.properties?.fps) || DEFAULT_FPS;
  return `${frames} frames = ${(frames / fps).toFixed(1)} s at ${fps} fps`;
}

function show(nodes, text, ok) {
  for (const node of nodes) {
    const widget = estimateWidget(node);
    widget.value = node.type === LATENT ? `${durationText(node)}\n${text}` : text;
    widget.color = ok === false ? "#e88" : ok ? "#8c8" : "#bbb";
    const size = node.computeSize();
    if (size[1] > node.size[1]) node.setSize([Math.max(node.size[0], size[0]), size[1]]);
  }
  app.graph.setDirtyCanvas(true, true);
}

async function refreshLatent(latent) {
  const sampler = samplerOf(latent);
  const chain = sampler ? modelChain(sampler) : [];
  const request = { latent: widgetValues(latent), chain: chain.map((n) => ({ type: n.type, inputs: widgetValues(n) })) };
  const samplerValues = widgetValues(sampler);
  if (typeof samplerValues.cfg === "number") request.cfg = samplerValues.cfg;
  const shown = [latent, ...chain.filter((n) => ours.has(n.type))];
  const key = JSON.stringify(request);
  if (lastRequest.get(latent.id) === key) return;
  lastRequest.set(latent.id, key);
  if (!chain.some((n) => n.type === "UNet3DLoader")) { show(shown, "memory: connect a sampler and a Load UNet3D Model", null); return; }
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
  pending = null;
  for (const latent of app.graph?.findNodesByType?.(LATENT) || []) {
    if (latent.mode !== MUTED && latent.mode !== BYPASSED) refreshLatent(latent);
  }
}

function scheduleRefresh() {
  if (pending === null) pending = setTimeout(refreshAll, SETTLE_MS);
}

// Any widget change or link change on any node can change an estimate (a sampler's cfg, a patch node's setting).
function watch(node) {
  for (const widget of node.widgets || []) {
    if (widget.name === WIDGET || widget.unet3dWatched) continue;
    const callback = widget.callback;
    widget.callback = function () { const out = callback?.apply(this, arguments); scheduleRefresh(); return out; };
    widget.unet3dWatched = true;
  }
  const onConnectionsChange = node.onConnectionsChange;
  node.onConnectionsChange = function () { const out = onConnectionsChange?.apply(this, arguments); scheduleRefresh(); return out; };
  const onWidgetChanged = node.onWidgetChanged;
  node.onWidgetChanged = function () { const out = onWidgetChanged?.apply(this, arguments); scheduleRefresh(); return out; };
}

app.registerExtension({
  name: "unet3d.memoryEstimate",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (String(nodeData?.category || "").startsWith(CATEGORY)) ours.add(nodeData.name);
  },
  async setup() {
    const graph = app.graph;
    for (const hook of ["onNodeAdded", "onNodeRemoved"]) {
      const previous = graph[hook];
      graph[hook] = function (node) { const out = previous?.apply(this, arguments); if (hook === "onNodeAdded") watch(node); scheduleRefresh(); return out; };
    }
    scheduleRefresh();
  },
  async nodeCreated(node) {
    if (node.type === LATENT) {
      node.properties = node.properties || {};
      if (node.properties.fps === undefined) node.properties.fps = DEFAULT_FPS;
    }
    watch(node);
    scheduleRefresh();
  },
  async loadedGraphNode(node) {
    watch(node);
    scheduleRefresh();
  },
  async afterConfigureGraph() {
    lastRequest.clear();
    scheduleRefresh();
  },
});
