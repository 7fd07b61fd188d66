"""The live panel's server side: a websocket route on ComfyUI's server, `/rain/live`.

The browser (js/rain_live.js) opens the socket, sends a `start` message with the model and settings (read from
the Load RAIN Model / RAIN Sampler / Load Image nodes of the current graph, or chosen in the panel), then
streams frames; animated frames come back as soon as they leave the stream. The engine runs in a worker thread
(`rain_core.live.LiveSession`), so ComfyUI's event loop never waits for a tick.

Protocol (every binary message is a 4-byte big-endian header length, a UTF-8 JSON header, then a JPEG):
  browser → server  binary {"seq": n, "t": capture_ms}                  a frame (JPEG/PNG/WebP, ≤ 4 MB, ≤ 2048 px)
                    {"type": "start", "model", "precision", "device", "decoder", "width", "height", "levels",
                     "frames_per_cohort", "steps", "guidance", "seed", "noise", "reference", "mode",
                     "face_morph", "capacity", "pose_check"}            (missing keys take DEFAULTS;
                                                                        width/height 0 = the model's own size)
                    {"type": "stop"} · {"type": "face_morph", "params": {...}} · {"type": "record", "on": bool}
  server → browser  binary {"seq", "t", "server_ms"}                    an animated frame (JPEG)
                    {"type": "status", "state": "loading" | "ready" | "stopped", ...}
                    {"type": "stats", ...LiveSession.stats()}           twice a second while streaming
                    {"type": "error", "message": ...}                   a bad frame or setting; the stream goes on
                    {"type": "recorded", "filename", "subfolder", "url"}

One live stream per server: a Start from another tab stops the first (its panel says so), and a closed socket
(Stop, reload, a closed tab) frees its stream at once. GET /rain/live/status lists the open sessions.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import time
import uuid
import weakref
from pathlib import Path

from ..rain_core.stream.config import StreamConfig
from . import host
from .model_loader import BUILTIN_MODEL

log = logging.getLogger("rain")

ROUTE = "/rain/live"
PACK_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_POSE_VIDEO = PACK_ROOT / "examples" / "anyone-video-1_kps.mp4"
EXAMPLE_REFERENCE = PACK_ROOT / "examples" / "anyone-1.png"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # larger frames get a clear message, not a dropped socket (≤ 4 MB accepted)
STATS_PERIOD_S = 0.5
OUTBOX_LIMIT = 8  # animated frames waiting for a slow socket: the oldest go first

STREAM_FIELDS = ("width", "height", "levels", "frames_per_cohort", "steps", "guidance", "seed", "noise")
# The stream's defaults are StreamConfig's own (width/height 0 = the model's own size, as in RAIN Sampler).
DEFAULTS = {
    "model": BUILTIN_MODEL, "precision": "auto", "device": "auto", "decoder": "auto",
    **{name: getattr(StreamConfig(), name) for name in STREAM_FIELDS},
    "reference": "", "mode": "pose", "face_morph": {}, "capacity": None, "pose_check": True,
}
INT_FIELDS = ("width", "height", "levels", "frames_per_cohort", "steps", "seed")

_connections: dict[str, LiveConnection] = {}  # every open socket, by connection id
# (load arguments) -> RainModelHandle, while a live session holds it: a second tab or a restart reuses the loaded
# networks; once the last session closes they are freed (or left to ComfyUI's memory manager, which /free empties).
_model_cache: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def pack_message(header: dict, body: bytes) -> bytes:
    data = json.dumps(header).encode()
    return struct.pack(">I", len(data)) + data + body


def unpack_message(message: bytes) -> tuple[dict, bytes]:
    from ..rain_core.live import LiveInputError

    if len(message) < 4:
        raise LiveInputError("frame: a binary message must start with a 4-byte header length")
    (length,) = struct.unpack(">I", message[:4])
    if length > 4096 or 4 + length > len(message):
        raise LiveInputError(f"frame: header length {length} does not fit a message of {len(message)} bytes")
    try:
        header = json.loads(message[4:4 + length])
    except ValueError as error:
        raise LiveInputError(f"frame: the header is not JSON ({error})") from error
    if not isinstance(header, dict):
        raise LiveInputError("frame: the header must be a JSON object like {\"seq\": 0, \"t\": 1234.5}")
    return header, message[4 + length:]


def live_sessions() -> list[str]:
    """Ids of the connections that hold a live stream now."""
    return sorted(cid for cid, connection in _connections.items() if connection.session is not None)


def _output_directory() -> Path:
    return host.output_directory()  # ComfyUI imports stay in host.py


def _settings(message: dict) -> dict:
    """The start message's settings over DEFAULTS, with types checked (each error names the field)."""
    from ..rain_core.live import LiveInputError

    settings = dict(DEFAULTS)
    for key, value in message.items():
        if key in DEFAULTS and value is not None and value != "":
            settings[key] = value
    for key in INT_FIELDS:
        try:
            settings[key] = int(settings[key])
        except (TypeError, ValueError) as error:
            raise LiveInputError(f"{key}: expected a whole number, found {settings[key]!r}") from error
    try:
        settings["guidance"] = float(settings["guidance"])
    except (TypeError, ValueError) as error:
        raise LiveInputError(f"guidance: expected a number, found {settings['guidance']!r}") from error
    if not isinstance(settings["face_morph"], dict):
        raise LiveInputError("face_morph: expected an object of face-morph parameters")
    return settings


def _reference_image(name: str):
    """The reference as uint8 RGB: a file of ComfyUI's input folder (as a Load Image node names it), or the
    pack's example character when no name is given. Transparency becomes white."""
    import numpy as np
    from PIL import Image

    from ..rain_core.live import LiveInputError

    name = str(name or "").strip()
    if name.endswith(" [input]"):
        name = name[: -len(" [input]")]
    if not name:
        path = EXAMPLE_REFERENCE
    else:
        root = host.input_directory().resolve()
        path = (root / name).resolve()
        if root not in path.parents or not path.is_file():
            raise LiveInputError(
                f"reference: no image {name!r} in ComfyUI's input folder ({root}); upload it with a Load Image "
                "node, or leave the reference empty for the example character")
    with Image.open(path) as image:
        image = image.convert("RGBA")
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(background, image).convert("RGB"))


def _load_model(settings: dict):
    from .model_loader import LoadRainModel

    key = tuple(str(settings[k]) for k in ("model", "precision", "device", "decoder"))
    handle = _model_cache.get(key)
    if handle is None:
        (handle,) = LoadRainModel().load(settings["model"], "auto", "auto", settings["decoder"],
                                         settings["precision"], settings["device"], True)
        _model_cache[key] = handle
    if getattr(handle, "patcher", None) is not None and hasattr(host, "load_model"):
        host.load_model(handle.patcher)  # onto its device through ComfyUI's memory manager
    return handle


def _models_folder_detector():
    """The detector Pose Stream uses: files in ComfyUI's models/rain/dwpose, fetched there on first use."""
    from .pose_stream import _detector

    return _detector()


def _open_session(settings: dict):
    """Load the model (cached between sessions) and start a stream on the reference. Runs in a worker thread."""
    from ..rain_core.live import LiveSession, LiveSettings

    handle = _load_model(settings)
    config = StreamConfig(**{name: settings[name] for name in STREAM_FIELDS},
                          decoder=getattr(handle, "decoder", "auto"))  # RainStream resolves a size of 0
    live = LiveSettings(mode=settings["mode"], face_morph=dict(settings["face_morph"]),
                        capacity=settings["capacity"], pose_check=bool(settings["pose_check"]),
                        warm_up=True)  # no stall (compile, capture) on live frames
    session = LiveSession(handle.models, config, _reference_image(settings["reference"]), live,
                          make_detector=_models_folder_detector)
    session.model_handle = handle  # keeps the networks (and their cache entry) while the session lives
    return session


class LiveConnection:
    """One browser socket: at most one live session, its outgoing frames and its stats."""

    def __init__(self, socket, loop):
        self.id = uuid.uuid4().hex[:12]
        self.socket = socket
        self.loop = loop
        self.session = None
        self.starting = False
        self.outbox: list[bytes] = []
        self.wakeup = asyncio.Event()
        self.told_not_ready = False
        self.dropped_out = 0

    # ------------------------------------------------------------------ sending
    def send_json(self, message: dict) -> None:
        self.outbox.append(json.dumps(message, default=str))
        self.wakeup.set()

    def _queue_frames(self, messages: list[bytes]) -> None:  # on the loop
        self.outbox.extend(messages)
        frames = [m for m in self.outbox if isinstance(m, bytes)]
        while len(frames) > OUTBOX_LIMIT:  # a slow socket: the oldest animated frames go first
            self.outbox.remove(frames.pop(0))
            self.dropped_out += 1
        self.wakeup.set()

    async def sender(self) -> None:
        while not self.socket.closed:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.outbox and not self.socket.closed:
                message = self.outbox.pop(0)
                if isinstance(message, bytes):
                    await self.socket.send_bytes(message)
                else:
                    await self.socket.send_str(message)

    async def stats_loop(self) -> None:
        while not self.socket.closed:
            await asyncio.sleep(STATS_PERIOD_S)
            if self.session is not None:
                self.send_json({"type": "stats", **self.session.stats(), "dropped_out": self.dropped_out})

    # ------------------------------------------------------------------ worker callbacks (worker thread)
    def _on_outputs(self, outputs) -> None:
        from ..rain_core.live import encode_jpeg

        messages = [pack_message({"seq": o.seq, "t": o.capture_ms, "server_ms": round(o.server_ms, 1)},
                                 encode_jpeg(o.image)) for o in outputs]
        self.loop.call_soon_threadsafe(self._queue_frames, messages)

    def _on_error(self, message: str) -> None:
        self.loop.call_soon_threadsafe(self.send_json, {"type": "error", "message": message})

    def _on_fatal(self, message: str) -> None:
        """The source cannot feed the session (not pose renders, no detector): say why and free the stream."""
        def end():
            self.send_json({"type": "error", "message": message})
            asyncio.ensure_future(self.close_session(message))

        self.loop.call_soon_threadsafe(end)

    # ------------------------------------------------------------------ messages
    async def on_text(self, text: str) -> None:
        from ..rain_core.live import LiveInputError

        try:
            message = json.loads(text)
            if not isinstance(message, dict):
                raise ValueError("expected a JSON object")
        except ValueError as error:
            raise LiveInputError(f"message: not a JSON object ({error})") from error
        kind = message.get("type")
        if kind == "start":
            await self.start(message)
        elif kind == "stop":
            await self.close_session("stopped")
        elif kind == "face_morph":
            if self.session is None:
                raise LiveInputError("face_morph: no live stream yet; press Start first")
            self.session.set_face_morph(dict(message.get("params") or {}))
        elif kind == "record":
            await self.record(bool(message.get("on")))
        else:
            raise LiveInputError(f"message type {kind!r}: expected start, stop, face_morph or record")

    async def on_frame(self, data: bytes) -> None:
        from ..rain_core.live import LiveInputError

        header, body = unpack_message(data)
        if self.session is None:
            if not self.told_not_ready:  # once per start, not once per frame
                self.told_not_ready = True
                state = "is still loading" if self.starting else "is not loaded yet: press Start"
                raise LiveInputError(f"frames arrived but the model {state}; they are dropped until it is ready")
            return
        seq = header.get("seq")
        capture = header.get("t")
        self.session.submit(body, seq=int(seq) if isinstance(seq, (int, float)) else None,
                            capture_ms=float(capture) if isinstance(capture, (int, float)) else None)

    async def start(self, message: dict) -> None:
        from ..rain_core.live import LiveInputError

        if self.starting:
            raise LiveInputError("start: a stream is already starting; wait for it")
        settings = _settings(message)
        await self.close_session(None)
        for other in list(_connections.values()):  # one live stream per server: the newest Start wins
            if other is not self and (other.session is not None or other.starting):
                await other.close_session("another tab started a live stream; press Start here to take it back")
        self.starting, self.told_not_ready = True, False
        self.send_json({"type": "status", "state": "loading", "model": settings["model"]})
        started = time.monotonic()
        try:
            session = await self.loop.run_in_executor(None, _open_session, settings)
        finally:
            self.starting = False
        if self.socket.closed:
            session.close()
            return
        self.session = session
        session.start(self._on_outputs, self._on_error, on_fatal=self._on_fatal)
        config = session.config
        self.send_json({"type": "status", "state": "ready", "model": settings["model"],
                        "width": config.width, "height": config.height, "window": config.window,
                        "frames_per_cohort": config.frames_per_cohort, "lookahead_frames": config.window - 1,
                        "mode": settings["mode"], "face_morph": session.face_morph,
                        "load_s": round(time.monotonic() - started, 2), "warm_up_s": session.warm_up_s})

    async def record(self, on: bool) -> None:
        from ..rain_core.live import LiveInputError

        if self.session is None:
            raise LiveInputError("record: no live stream; press Start first")
        if on:
            name = time.strftime("rain_live_%Y%m%d-%H%M%S") + f"_{self.id[:4]}.mp4"
            self.session.start_recording(_output_directory() / name)
            self.send_json({"type": "status", "state": "recording", "filename": name})
            return
        path = await self.loop.run_in_executor(None, self.session.stop_recording)
        if path is None:
            raise LiveInputError("record: no animated frame was recorded; keep recording a little longer")
        self.send_json({"type": "recorded", "filename": path.name, "subfolder": "", "folder_type": "output",
                        "url": f"/view?filename={path.name}&type=output"})

    async def close_session(self, reason: str | None) -> None:
        session, self.session = self.session, None
        if session is not None:
            recorded = None
            if session.recording:
                recorded = await self.loop.run_in_executor(None, session.stop_recording)
            await self.loop.run_in_executor(None, session.close)
            del session
            host.give_memory_back()
            if recorded is not None and not self.socket.closed:
                self.send_json({"type": "recorded", "filename": recorded.name, "subfolder": "",
                                "folder_type": "output", "url": f"/view?filename={recorded.name}&type=output"})
        if reason and not self.socket.closed:
            self.send_json({"type": "status", "state": "stopped", "reason": reason})


async def live_socket(request):
    from aiohttp import WSMsgType, web

    from ..rain_core.live import LiveInputError
    from ..rain_core.stream import StreamError

    socket = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=30)
    await socket.prepare(request)
    connection = LiveConnection(socket, asyncio.get_running_loop())
    _connections[connection.id] = connection
    tasks = [asyncio.ensure_future(connection.sender()), asyncio.ensure_future(connection.stats_loop())]
    connection.send_json({"type": "hello", "id": connection.id, "defaults": DEFAULTS})
    try:
        async for message in socket:
            try:
                if message.type == WSMsgType.BINARY:
                    await connection.on_frame(message.data)
                elif message.type == WSMsgType.TEXT:
                    await connection.on_text(message.data)
                elif message.type == WSMsgType.ERROR:
                    break
            except (LiveInputError, StreamError, FileNotFoundError, ValueError) as error:
                connection.send_json({"type": "error", "message": str(error)})
            except Exception as error:  # the server keeps serving whatever one socket sends
                log.exception("rain live: unexpected error")
                connection.send_json({"type": "error", "message": f"{type(error).__name__}: {error}"})
    finally:
        _connections.pop(connection.id, None)
        await connection.close_session(None)
        for task in tasks:
            task.cancel()
    return socket


async def live_status(request):
    from aiohttp import web

    return web.json_response({"sessions": live_sessions(), "connections": len(_connections),
                              "defaults": DEFAULTS})


async def example_pose_video(request):
    from aiohttp import web

    return web.FileResponse(EXAMPLE_POSE_VIDEO, headers={"Content-Type": "video/mp4"})


def register(routes) -> None:
    """Add the live routes to an aiohttp RouteTableDef (ComfyUI's `PromptServer.instance.routes`)."""
    routes.get(ROUTE)(live_socket)
    routes.get(ROUTE + "/status")(live_status)
    routes.get(ROUTE + "/example_pose.mp4")(example_pose_video)


def _register_with_comfyui() -> bool:
    routes = host.server_routes()  # ComfyUI's server; absent in plain Python
    if routes is None:
        return False
    try:
        register(routes)
    except Exception:  # never let the live panel stop the nodes from loading
        log.exception("rain live: could not register %s; the live panel is off", ROUTE)
        return False
    return True


REGISTERED = _register_with_comfyui()
