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
                    {"type": "keypoints", "name", "data"}    a keypoint file (OpenPose / POSE_KEYPOINT /
                                                             {"fps", "frames"}), read by rain_core.pose.parse_keypoints
                                                             and streamed by the server at its fps, looping, as pose
                                                             frames (instead of image frames; t is null)
  server → browser  binary {"seq", "t", "server_ms"}                    an animated frame (JPEG)
                    {"type": "status", "state": "loading" | "ready" | "stopped", ...}
                    {"type": "stats", ...LiveSession.stats()}           twice a second while streaming
                    {"type": "error", "message": ...}                   a bad frame or setting; the stream goes on
                    {"type": "recorded", "filename", "subfolder", "url"}

Each socket holds at most one live session, with its own stream, and its frames go back to that socket only. A
server holds up to `max_sessions()` sessions at once (RAIN_LIVE_MAX_SESSIONS, default DEFAULT_MAX_SESSIONS); a Start
beyond that, or one asking for more than the LIMITS below (frame size, window, steps), is refused with a message that
names the field or the limit. Sessions on the same model share its loaded networks and take turns per frame through
`rain_core.live.networks_lock`. A session whose source cannot feed it (frames that are not pose renders, no detector)
ends with an error and status "stopped" with the reason; a closed socket (Stop, reload, a closed tab) frees its
stream at once. GET /rain/live/status lists the open sessions and the limits.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
import threading
import time
import uuid
import weakref
from pathlib import Path

import numpy as np
from PIL import Image

from ..rain_core.stream.config import StreamConfig
from . import host
from .live_admission import (
    DEFAULTS,
    KEYPOINT_FPS,
    MAX_AREA_FACTOR,
    MAX_SESSIONS_ENV,
    MAX_SIDE,
    MAX_STEPS,
    MAX_WINDOW,
    STREAM_FIELDS,
    check_area,
    limits,
    max_sessions,
    read_settings,
)
from .model_loader import LoadRainModel
from .pose_stream import _detector

log = logging.getLogger("rain")

ROUTE = "/rain/live"
PACK_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_POSE_VIDEO = PACK_ROOT / "examples" / "anyone-video-1_kps.mp4"
EXAMPLE_REFERENCE = PACK_ROOT / "examples" / "anyone-1.png"
MAX_MESSAGE_BYTES = 16 * 1024 * 1024  # larger frames get a clear message, not a dropped socket (≤ 4 MB accepted)
STATS_PERIOD_S = 0.5
OUTBOX_LIMIT = 8  # animated frames waiting for a slow socket: the oldest go first

_connections: dict[str, LiveConnection] = {}  # every open socket, by connection id
# (load arguments) -> RainModelHandle, while a live session holds it: a second tab or a restart reuses the loaded
# networks; once the last session closes they are freed (or left to ComfyUI's memory manager, which /free empties).
_model_cache: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_model_cache_lock = threading.Lock()


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


def _reference_image(name: str):
    """The reference as uint8 RGB: a file of ComfyUI's input folder (as a Load Image node names it), or the
    pack's example character when no name is given. Transparency becomes white."""
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
    key = tuple(str(settings[k]) for k in ("model", "precision", "device", "decoder"))
    with _model_cache_lock:  # Starts arrive together: one load, shared (and one networks lock for all of them)
        handle = _model_cache.get(key)
        if handle is None:
            (handle,) = LoadRainModel().load(settings["model"], "auto", "auto", settings["decoder"],
                                             settings["precision"], settings["device"], True)
            _model_cache[key] = handle
    if getattr(handle, "patcher", None) is not None and hasattr(host, "load_model"):
        host.load_model(handle.patcher)  # onto its device through ComfyUI's memory manager
    return handle


def _models_folder_detector():
    """The detector Pose Stream uses: files in ComfyUI's models/rain/dwpose, fetched there on first use. A failed
    fetch (no network) is a missing detector too: the session ends with the message instead of retrying per frame."""
    from ..rain_core.pose import DetectorUnavailable

    try:
        return _detector()
    except DetectorUnavailable:
        raise
    except Exception as error:
        raise DetectorUnavailable(f"the DWPose files could not be fetched ({type(error).__name__}: {error}).") from error


def _open_session(settings: dict):
    """Load the model (cached between sessions) and start a stream on the reference. Runs in a worker thread."""
    from ..rain_core.live import LiveSession, LiveSettings

    handle = _load_model(settings)
    config = StreamConfig(**{name: settings[name] for name in STREAM_FIELDS},
                          decoder=getattr(handle, "decoder", "auto"))  # RainStream resolves a size of 0
    check_area(config.for_models(handle.models), handle.models)
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
        self.keypoint_task = None

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
        elif kind == "keypoints":
            await self.play_keypoints(message)
        else:
            raise LiveInputError(f"message type {kind!r}: expected start, stop, face_morph, record or keypoints")

    async def play_keypoints(self, message: dict) -> None:
        """Stream a keypoint file (parsed by the one reader) into the session as pose frames, at its frame rate,
        looping until the session ends or another file comes."""
        from ..rain_core.live import LiveInputError
        from ..rain_core.pose import parse_keypoints

        if self.session is None:
            raise LiveInputError("keypoints: no live stream yet; press Start first")
        name = str(message.get("name") or "keypoints")
        sequence = await self.loop.run_in_executor(None, parse_keypoints, message.get("data"), name)
        if not sequence.frames:
            raise LiveInputError(f"{name}: no frames")
        self._stop_keypoints()
        fps = float(sequence.fps or KEYPOINT_FPS)
        self.keypoint_task = asyncio.ensure_future(self._pace_keypoints(self.session, sequence.frames, fps))
        self.send_json({"type": "status", "state": "keypoints", "name": name, "frames": len(sequence.frames),
                        "fps": fps})

    async def _pace_keypoints(self, session, frames, fps: float) -> None:
        started = time.monotonic()
        index = 0
        while self.session is session and not session.closed:
            delay = started + index / fps - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            elif delay < -1.0:  # the loop was busy: skip ahead rather than burst
                started, index = time.monotonic(), 0
                continue
            if self.session is not session or session.closed:
                return
            session.submit(frames[index % len(frames)], seq=index, capture_ms=None)
            index += 1

    def _stop_keypoints(self) -> None:
        task, self.keypoint_task = self.keypoint_task, None
        if task is not None:
            task.cancel()

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
        settings = read_settings(message)
        await self.close_session(None)
        limit = max_sessions()
        held = sum(1 for other in _connections.values()
                   if other is not self and (other.session is not None or other.starting))
        if held >= limit:  # counted and reserved (self.starting) with no await between: no two Starts race past it
            its_limit = "its limit" if held == limit else f"its limit is {limit}"
            raise LiveInputError(f"the server holds {held} live sessions ({its_limit}); try again later or raise "
                                 f"{MAX_SESSIONS_ENV}")
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
        self._stop_keypoints()
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
    connection.send_json({"type": "hello", "id": connection.id, "defaults": DEFAULTS, "limits": {
        "max_side": MAX_SIDE, "max_area_factor": MAX_AREA_FACTOR, "max_window": MAX_WINDOW, "max_steps": MAX_STEPS}})
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

    try:
        bounds = limits()
    except ValueError as error:
        bounds = {"error": str(error)}
    return web.json_response({"sessions": live_sessions(), "connections": len(_connections),
                              "defaults": DEFAULTS, "limits": bounds})


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
