// Live preview on the Frame Queue node: the newest frames and the measured fps / latency, pushed by the
// server as the custom websocket event "rain.frame" (nodes/frame_queue.py). Imports are relative because
// registry installs rename the pack folder (served under /extensions/<folder>/).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const NODE_TYPE = "RainFrameQueue";
const EVENT = "rain.frame";

function formatStats(detail) {
  const fps = Number(detail.output_fps ?? 0).toFixed(1);
  const target = Number(detail.target_fps ?? 0).toFixed(1);
  const latency = Math.round(Number(detail.latency_ms ?? 0));
  return `${fps} / ${target} fps · latency ${latency} ms · queued ${detail.queued ?? 0}` +
    (detail.dropped ? ` · dropped ${detail.dropped}` : "");
}

function addPreviewWidget(node) {
  const container = document.createElement("div");
  container.style.cssText = "display:flex;flex-direction:column;gap:4px;width:100%;height:100%;";
  const image = document.createElement("img");
  image.style.cssText = "width:100%;flex:1;min-height:0;object-fit:contain;background:#111;";
  const label = document.createElement("div");
  label.style.cssText = "font:12px monospace;color:#ccc;text-align:center;";
  label.textContent = "waiting for frames…";
  container.append(image, label);
  node.addDOMWidget("rain_preview", "rain_preview", container, { serialize: false, hideOnZoom: false });
  node.rainPreview = { image, label, frames: [], timer: null };
  node.setSize([Math.max(node.size[0], 280), Math.max(node.size[1], 360)]);
}

function showFrames(node, detail) {
  const preview = node.rainPreview;
  if (!preview) return;
  preview.label.textContent = formatStats(detail);
  const frames = detail.images ?? [];
  if (!frames.length) return;
  // Play the frames of this run at the target pace, ending on the newest.
  clearInterval(preview.timer);
  let index = 0;
  preview.image.src = frames[index];
  const period = 1000 / Math.max(1, Number(detail.target_fps) || 16);
  preview.timer = setInterval(() => {
    index += 1;
    if (index >= frames.length) { clearInterval(preview.timer); return; }
    preview.image.src = frames[index];
  }, period);
}

app.registerExtension({
  name: "rain.frame_queue_preview",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== NODE_TYPE) return;
    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const result = onNodeCreated?.apply(this, arguments);
      addPreviewWidget(this);
      return result;
    };
    const onRemoved = nodeType.prototype.onRemoved;
    nodeType.prototype.onRemoved = function () {
      clearInterval(this.rainPreview?.timer);
      return onRemoved?.apply(this, arguments);
    };
  },
  async setup() {
    api.addEventListener(EVENT, (event) => {
      const detail = event.detail ?? {};
      const node = app.graph?.getNodeById?.(Number(detail.node)) ?? app.graph?.getNodeById?.(detail.node);
      if (node) showFrames(node, detail);
    });
  },
});
