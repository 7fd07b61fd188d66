// RAIN live panel: the browser's webcam, a local video, a keypoint file or the example pose video animates the
// character in real time. Frames go to the pack's websocket route (/rain/live, nodes/live_route.py) as JPEG with
// their capture time; animated frames come back as soon as they leave the RAIN stream and are shown beside the
// input, with the measured fps and latency (capture -> display). A keypoint file (.json: OpenPose, POSE_KEYPOINT or
// {"fps", "frames"}) goes up once and the server plays it. The model and settings come from the nodes linked to the
// graph's RAIN Sampler (its own widgets, its Load RAIN Model and its Load Image), or from the panel's fields; an
// empty field takes the server's default (width/height 0 = the model's own size). The source never changes the
// mode: a camera in "pose video as is" mode is stopped by the server's pose check with its message. Imports are
// relative because registry installs rename the pack folder (served under /extensions/<folder>/).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const ROUTE = "/rain/live";
const SOURCE_FPS = 30;
const MAX_SIDE = 512; // frames are scaled to at most this many px on a side before sending
const MAX_FRAME_BYTES = 4 * 1024 * 1024;
const MAX_BUFFERED = 2 * 1024 * 1024; // a slow link: skip capturing rather than queue frames in the socket
const FACE_SLIDERS = [ // name, default, min, max (the authors' live-demo defaults, as in Pose Stream)
  ["face_length", 0.75, 0.1, 3.0], ["eye_height", 3.0, 0.1, 6.0], ["eye_width", 1.6, 0.1, 4.0],
  ["mouth_height", 1.2, 0.1, 4.0], ["mouth_width", 0.67, 0.1, 4.0], ["jaw_width", 0.9, 0.1, 3.0],
];
const SAMPLER = "RainSampler";
const FIELDS = [ // panel field, where in the graph (the sampler itself, or the node on one of its inputs), widget
  ["model", "rain_model", "model"], ["precision", "rain_model", "precision"],
  ["device", "rain_model", "device"], ["decoder", "rain_model", "decoder"],
  ["width", SAMPLER, "width"], ["height", SAMPLER, "height"], ["levels", SAMPLER, "levels"],
  ["frames_per_cohort", SAMPLER, "frames_per_cohort"], ["steps", SAMPLER, "steps"],
  ["guidance", SAMPLER, "guidance"], ["seed", SAMPLER, "seed"], ["noise", SAMPLER, "noise"],
  ["reference", "reference", "image"],
];
const SOURCE_NODE = { rain_model: "LoadRainModel", reference: "LoadImage" }; // the node type read on each input
const NUMERIC = new Set(["width", "height", "levels", "frames_per_cohort", "steps", "guidance", "seed"]);

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (key === "style") node.style.cssText = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value);
  }
  node.append(...children);
  return node;
}

function percentile(values, q) {
  if (!values.length) return null;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))];
}

function socketUrl() {
  const url = new URL(api.apiURL(ROUTE), window.location.href);
  url.protocol = url.protocol === "https:" ? "wss:" : "ws:";
  return url.href;
}

const nodeClass = (node) => node?.comfyClass ?? node?.constructor?.comfyClass ?? node?.type;

// The node feeding `input` of `node` (through Reroute nodes), or null.
function inputNode(node, input) {
  for (let hops = 0; node && hops < 16; hops++) {
    const slot = node.inputs?.findIndex((i) => i.name === input) ?? -1;
    const from = slot >= 0 && node.inputs[slot].link != null ? node.getInputNode?.(slot) : null;
    if (!from || nodeClass(from) !== "Reroute") return from ?? null;
    node = from;
    input = from.inputs?.[0]?.name;
  }
  return null;
}

// Settings of the current graph: the RAIN Sampler (the first one whose model input is linked, else the first one),
// the Load RAIN Model on its rain_model input and the Load Image on its reference input. Another node on an input
// (or none) leaves those fields to the server's defaults. No sampler: nothing from the graph.
function graphSettings() {
  const samplers = (app.graph?._nodes ?? []).filter((n) => nodeClass(n) === SAMPLER);
  const sampler = samplers.find((n) => inputNode(n, "rain_model")) ?? samplers[0];
  const settings = {};
  if (!sampler) return settings;
  for (const [field, where, widget] of FIELDS) {
    let node = sampler;
    if (where !== SAMPLER) {
      node = inputNode(sampler, where);
      if (nodeClass(node) !== SOURCE_NODE[where]) continue;
    }
    const value = node?.widgets?.find((w) => w.name === widget)?.value;
    if (value !== undefined && value !== null && value !== "") settings[field] = value;
  }
  return settings;
}

// Send only on an open socket: a closing one makes the browser log "WebSocket is already in CLOSING or CLOSED state".
function send(socket, data) {
  if (!socket || socket.readyState !== WebSocket.OPEN) return false;
  socket.send(data);
  return true;
}

const isKeypointFile = (file) => /\.json$/i.test(file?.name ?? "") || file?.type === "application/json";

function cameraMessage(error) {
  if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
    return "The camera needs a secure page: open ComfyUI at http://localhost or http://127.0.0.1, or over https.";
  }
  if (error?.name === "NotAllowedError" || error?.name === "SecurityError") {
    return "Camera refused: allow camera access for this page in the browser's site settings, or choose a video.";
  }
  if (error?.name === "NotFoundError" || error?.name === "OverconstrainedError") {
    return "No camera found: connect one, or choose a video file or the example pose video.";
  }
  if (error?.name === "NotReadableError") {
    return "The camera is busy in another program or tab: close it there, or choose a video.";
  }
  return `Camera unavailable (${error?.name ?? "error"}: ${error?.message ?? error}); choose a video instead.`;
}

class LivePanel {
  constructor() {
    this.socket = null;
    this.stream = null; // the camera's MediaStream
    this.timer = null;
    this.seq = 0;
    this.latencies = [];
    this.shown = [];
    this.sent = 0;
    this.clientDropped = 0;
    this.serverStats = null;
    this.recording = false;
    this.facePending = null;
    this.build();
  }

  build() {
    const input = "background:#222;color:#ddd;border:1px solid #555;border-radius:3px;padding:2px 4px;";
    this.source = el("select", { id: "rain-live-source", style: input, onchange: () => this.sourceChanged() },
      el("option", { value: "example" }, "example pose video"),
      el("option", { value: "webcam" }, "webcam"),
      el("option", { value: "file" }, "video or keypoint file…"));
    this.mode = el("select", { id: "rain-live-mode", style: input, onchange: () => this.modeChanged() },
      el("option", { value: "pose" }, "pose video as is"),
      el("option", { value: "detect" }, "DWPose detection"),
      el("option", { value: "face_morph" }, "face morph"));
    this.file = el("input", { type: "file", accept: "video/*,.json,application/json", style: "display:none",
      onchange: () => this.openFile() });
    this.poseCheck = el("input", { type: "checkbox", id: "rain-live-pose-check", checked: "" });
    this.poseCheck.checked = true;
    const poseCheck = el("label", { style: "color:#aaa;display:flex;align-items:center;gap:2px;",
      title: "Pose video mode: stop with a message when the first frames are not rendered skeletons (camera footage)" },
    this.poseCheck, "pose check");
    this.startButton = el("button", { id: "rain-live-start", style: input, onclick: () => this.start() }, "Start");
    this.stopButton = el("button", { id: "rain-live-stop", style: input, onclick: () => this.stop("stopped") }, "Stop");
    this.recordButton = el("button", { id: "rain-live-record", style: input, onclick: () => this.toggleRecord() },
      "Record");
    this.fields = {};
    const grid = el("div", { style: "display:grid;grid-template-columns:repeat(4,auto 1fr);gap:3px 6px;" });
    for (const [field] of FIELDS) {
      const box = el("input", { id: `rain-live-${field}`, style: `${input}width:100%;box-sizing:border-box;`,
        type: NUMERIC.has(field) ? "number" : "text", step: field === "guidance" ? "0.1" : "1" });
      this.fields[field] = box;
      grid.append(el("label", { style: "color:#aaa;" }, field.replace(/_/g, " ")), box);
    }
    const settings = el("details", { id: "rain-live-settings", style: "color:#ccc;" },
      el("summary", { style: "cursor:pointer;" }, "settings (from the graph; edit to override) ",
        el("button", { style: input, onclick: (e) => { e.preventDefault(); this.readGraph(); } }, "read graph")),
      grid);
    this.sliders = el("div", { id: "rain-live-face", style: "display:none;grid-template-columns:auto 1fr auto;gap:2px 6px;" });
    for (const [name, value, min, max] of FACE_SLIDERS) {
      const label = el("span", { style: "color:#aaa;width:3em;" }, String(value));
      const slider = el("input", { type: "range", min, max, step: "0.01", value, "data-param": name,
        oninput: () => { label.textContent = slider.value; this.faceChanged(name, Number(slider.value)); } });
      this.sliders.append(el("span", { style: "color:#aaa;" }, name.replace(/_/g, " ")), slider, label);
    }
    const view = "width:100%;aspect-ratio:1;object-fit:contain;background:#111;border-radius:3px;";
    this.video = el("video", { id: "rain-live-input", muted: "", playsinline: "", style: view });
    this.video.muted = true;
    this.output = el("canvas", { id: "rain-live-output", width: 64, height: 64, style: view });
    this.capture = document.createElement("canvas");
    this.statsLine = el("div", { id: "rain-live-stats", style: "font:12px monospace;color:#ccc;min-height:1.2em;" });
    this.message = el("div", { id: "rain-live-message", style: "font:12px sans-serif;color:#f88;min-height:1.2em;" });
    this.link = el("div", { id: "rain-live-recorded", style: "font:12px sans-serif;" });
    this.panel = el("div", {
      id: "rain-live-panel",
      style: "position:fixed;right:12px;bottom:56px;width:560px;max-width:calc(100vw - 24px);z-index:1000;" +
        "display:none;flex-direction:column;gap:6px;padding:10px;background:#1b1b1b;border:1px solid #444;" +
        "border-radius:6px;box-shadow:0 4px 16px #000a;font:13px sans-serif;color:#ddd;",
    },
    el("div", { style: "display:flex;gap:6px;align-items:center;flex-wrap:wrap;" },
      el("b", {}, "RAIN live"), this.source, this.mode, poseCheck, this.file, this.startButton, this.stopButton,
      this.recordButton),
    settings, this.sliders,
    el("div", { style: "display:grid;grid-template-columns:1fr 1fr;gap:6px;" },
      el("div", {}, el("div", { style: "color:#aaa;" }, "input"), this.video),
      el("div", {}, el("div", { style: "color:#aaa;" }, "animated"), this.output)),
    this.statsLine, this.message, this.link);
    this.toggle = el("button", {
      id: "rain-live-toggle", title: "RAIN live: animate the character from your webcam or a video",
      style: "position:fixed;right:12px;bottom:12px;z-index:1000;padding:6px 12px;background:#2d4a7a;color:#fff;" +
        "border:none;border-radius:16px;cursor:pointer;font:13px sans-serif;box-shadow:0 2px 8px #0008;",
      onclick: () => this.togglePanel(),
    }, "RAIN live");
    document.body.append(this.panel, this.toggle);
    this.setRunning(false);
  }

  togglePanel() {
    const open = this.panel.style.display === "none";
    this.panel.style.display = open ? "flex" : "none";
    if (open) this.readGraph();
  }

  readGraph() {
    const settings = graphSettings();
    for (const [field, box] of Object.entries(this.fields)) box.value = settings[field] ?? box.value ?? "";
  }

  settings() {
    const settings = { type: "start", mode: this.mode.value, face_morph: this.faceValues(),
      pose_check: this.poseCheck.checked };
    for (const [field, box] of Object.entries(this.fields)) {
      if (box.value === "") continue;
      settings[field] = NUMERIC.has(field) ? Number(box.value) : box.value;
    }
    return settings;
  }

  faceValues() {
    const values = {};
    for (const slider of this.sliders.querySelectorAll("input[type=range]")) values[slider.dataset.param] = Number(slider.value);
    return values;
  }

  say(text, color = "#f88") {
    this.message.style.color = color;
    this.message.textContent = text;
  }

  setRunning(running) {
    this.startButton.disabled = running;
    this.stopButton.disabled = !running;
    this.recordButton.disabled = !running;
  }

  sourceChanged() { // the mode stays the user's: a camera in pose mode is stopped by the pose check, with its message
    if (this.source.value === "file") this.file.click();
  }

  modeChanged() {
    this.sliders.style.display = this.mode.value === "face_morph" ? "grid" : "none";
  }

  openFile() {
    const file = this.file.files?.[0];
    if (file) this.say(`${isKeypointFile(file) ? "keypoints" : "video"}: ${file.name}`, "#8c8");
  }

  // ------------------------------------------------------------------ the source
  async openSource() {
    this.closeSource();
    this.keypoints = null;
    const video = this.video;
    video.loop = true;
    if (this.source.value === "file" && isKeypointFile(this.file.files?.[0])) {
      const file = this.file.files[0];
      try {
        this.keypoints = { name: file.name, data: JSON.parse(await file.text()) };
      } catch (error) {
        throw new Error(`${file.name}: not a JSON file (${error.message}); expected OpenPose, POSE_KEYPOINT or ` +
          "{fps, frames} keypoints.");
      }
      return; // the server plays the keypoints; nothing to capture here
    }
    if (this.source.value === "webcam") {
      if (!navigator.mediaDevices?.getUserMedia) throw new Error(cameraMessage(null));
      try {
        this.stream = await navigator.mediaDevices.getUserMedia({ video: { frameRate: SOURCE_FPS }, audio: false });
      } catch (error) {
        throw new Error(cameraMessage(error));
      }
      video.srcObject = this.stream;
    } else if (this.source.value === "file") {
      const file = this.file.files?.[0];
      if (!file) throw new Error("Choose a video or keypoint file first (Source: video or keypoint file…).");
      video.src = URL.createObjectURL(file);
    } else {
      video.src = api.apiURL(`${ROUTE}/example_pose.mp4`);
    }
    try {
      await video.play();
    } catch (error) {
      throw new Error(`The video does not play (${error.name}): choose another file or source.`);
    }
  }

  closeSource() {
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    this.stream = null;
    this.video.pause();
    if (this.video.src?.startsWith("blob:")) URL.revokeObjectURL(this.video.src);
    this.video.removeAttribute("src");
    this.video.srcObject = null;
  }

  // ------------------------------------------------------------------ start / stop
  async start() {
    this.say("");
    this.link.textContent = "";
    this.setRunning(true);
    try {
      await this.openSource();
    } catch (error) {
      this.say(error.message);
      this.setRunning(false);
      this.closeSource();
      return;
    }
    this.latencies = [];
    this.shown = [];
    this.sent = 0;
    this.clientDropped = 0;
    this.serverStats = null;
    const socket = new WebSocket(socketUrl());
    socket.binaryType = "arraybuffer";
    this.socket = socket;
    socket.onopen = () => {
      if (this.socket !== socket) { socket.close(1000); return; } // stopped while connecting
      send(socket, JSON.stringify(this.settings()));
      this.say("loading the model…", "#cc8");
    };
    socket.onmessage = (event) => this.onMessage(event);
    socket.onclose = (event) => {
      if (this.socket !== socket) return;
      this.say(`Connection to the server closed${event.code !== 1000 ? ` (code ${event.code})` : ""}; press Start.`);
      this.stop(null);
    };
    socket.onerror = () => this.say("Cannot reach the live route on the server (is the RAIN pack loaded?).");
  }

  // Stop sending, release the camera and the video, close the socket (the server frees the session). `reason`:
  // shown in grey for the user's own Stop, in red (`failed`) when the server ended or refused the session.
  stop(reason, failed = false) {
    this.ready = false;
    clearInterval(this.timer);
    this.timer = null;
    const socket = this.socket;
    this.socket = null;
    if (socket?.readyState === WebSocket.OPEN) socket.close(1000); // CONNECTING: onopen closes it
    this.closeSource();
    this.keypoints = null;
    this.recording = false;
    this.recordButton.textContent = "Record";
    this.setRunning(false);
    if (reason) this.say(reason, failed ? "#f88" : "#ccc");
  }

  toggleRecord() {
    if (!send(this.socket, JSON.stringify({ type: "record", on: !this.recording }))) return;
    this.recording = !this.recording;
    this.recordButton.textContent = this.recording ? "Stop recording" : "Record";
  }

  faceChanged(name, value) {
    if (!this.socket || this.socket.readyState !== 1) return;
    // Coalesce slider moves: one message per animation frame, applied by the server from the next tick.
    this.facePending = { ...(this.facePending ?? {}), [name]: value };
    if (this.faceTimer) return;
    this.faceTimer = requestAnimationFrame(() => {
      this.faceTimer = null;
      send(this.socket, JSON.stringify({ type: "face_morph", params: this.facePending }));
      this.facePending = null;
    });
  }

  // ------------------------------------------------------------------ frames out
  beginCapture() {
    clearInterval(this.timer);
    this.timer = setInterval(() => this.captureFrame(), 1000 / SOURCE_FPS);
  }

  captureFrame() {
    const socket = this.socket;
    const video = this.video;
    if (!socket || socket.readyState !== 1 || video.readyState < 2 || !video.videoWidth) return;
    if (socket.bufferedAmount > MAX_BUFFERED) { this.clientDropped += 1; return; }
    const scale = Math.min(1, MAX_SIDE / Math.max(video.videoWidth, video.videoHeight));
    const width = Math.round(video.videoWidth * scale), height = Math.round(video.videoHeight * scale);
    if (this.capture.width !== width || this.capture.height !== height) {
      this.capture.width = width;
      this.capture.height = height;
    }
    this.capture.getContext("2d").drawImage(video, 0, 0, width, height);
    const captured = performance.now();
    const seq = this.seq++;
    this.capture.toBlob(async (blob) => {
      if (!blob || this.socket !== socket || socket.readyState !== WebSocket.OPEN) return;
      if (blob.size > MAX_FRAME_BYTES) { this.say("A frame is over 4 MB; use a smaller video."); return; }
      const header = new TextEncoder().encode(JSON.stringify({ seq, t: captured }));
      const message = new Uint8Array(4 + header.length + blob.size);
      new DataView(message.buffer).setUint32(0, header.length);
      message.set(header, 4);
      message.set(new Uint8Array(await blob.arrayBuffer()), 4 + header.length);
      // the socket may have closed (Stop, a fatal error) while the frame was being read
      if (this.socket === socket && send(socket, message)) this.sent += 1;
    }, "image/jpeg", 0.85);
  }

  // ------------------------------------------------------------------ frames and messages in
  onMessage(event) {
    if (typeof event.data !== "string") { this.showFrame(event.data); return; }
    const message = JSON.parse(event.data);
    if (message.type === "error") {
      // before "ready" the stream could not start (model, reference, settings, the server's limits): say why and
      // stop sending; after it, a bad frame: the stream goes on (a fatal one is followed by status "stopped")
      if (!this.ready) this.stop(message.message, true);
      else this.say(message.message);
    }
    else if (message.type === "stats") { this.serverStats = message; this.showStats(); }
    else if (message.type === "recorded") {
      const href = api.apiURL(message.url);
      this.link.replaceChildren("recorded: ", el("a", { href, target: "_blank", style: "color:#8af;" }, message.filename),
        " (ComfyUI output folder)");
    } else if (message.type === "status") {
      if (message.state === "ready") {
        this.ready = true;
        this.output.width = message.width;
        this.output.height = message.height;
        this.say(`streaming: ${message.model}, ${message.width}×${message.height}, window ${message.window} ` +
          `(look-ahead ${message.lookahead_frames} frames)`, "#8c8");
        if (this.keypoints) send(this.socket, JSON.stringify({ type: "keypoints", ...this.keypoints }));
        else this.beginCapture();
      } else if (message.state === "stopped") {
        this.stop(message.reason, message.reason !== "stopped"); // the server ended it: the reason, in red
      } else if (message.state === "keypoints") {
        this.say(`streaming keypoints: ${message.name}, ${message.frames} frames at ${message.fps} fps`, "#8c8");
      } else if (message.state === "loading") {
        this.say(`loading ${message.model}…`, "#cc8");
      }
    }
  }

  async showFrame(buffer) {
    const length = new DataView(buffer).getUint32(0);
    const header = JSON.parse(new TextDecoder().decode(new Uint8Array(buffer, 4, length)));
    const blob = new Blob([new Uint8Array(buffer, 4 + length)], { type: "image/jpeg" });
    const bitmap = await createImageBitmap(blob);
    this.output.getContext("2d").drawImage(bitmap, 0, 0, this.output.width, this.output.height);
    bitmap.close();
    const now = performance.now();
    if (typeof header.t === "number") this.latencies.push(now - header.t);
    if (this.latencies.length > 300) this.latencies.shift();
    this.shown.push(now);
    while (this.shown.length && now - this.shown[0] > 3000) this.shown.shift();
    this.output.dataset.frames = String(Number(this.output.dataset.frames ?? 0) + 1);
    this.showStats();
  }

  showStats() {
    const span = this.shown.length > 1 ? (this.shown[this.shown.length - 1] - this.shown[0]) / 1000 : 0;
    const fps = span > 0 ? (this.shown.length - 1) / span : 0;
    const p50 = percentile(this.latencies, 0.5), p95 = percentile(this.latencies, 0.95);
    const server = this.serverStats;
    const parts = [`out ${fps.toFixed(1)} fps`,
      `latency p50 ${p50 === null ? "–" : Math.round(p50)} ms, p95 ${p95 === null ? "–" : Math.round(p95)} ms`];
    if (server) {
      if (p50 === null && server.latency_ms?.p50 != null) parts.push(`server p50 ${Math.round(server.latency_ms.p50)} ms`);
      parts.push(`dropped ${Math.round(100 * server.dropped_share)}% of ${server.received}`);
      if (server.floor_ms) parts.push(`floor ${Math.round(server.floor_ms)} ms`);
      if (server.mean_ms_per_tick) parts.push(`tick ${Math.round(server.mean_ms_per_tick)} ms`);
    }
    this.statsLine.textContent = parts.join(" · ");
    this.statsLine.dataset.latencyP50 = p50 === null ? "" : String(p50);
  }
}

app.registerExtension({
  name: "rain.live_panel",
  async setup() {
    window.rainLive = new LivePanel();
  },
});
