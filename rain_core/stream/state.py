"""Saving and resuming a stream bit-exactly: `state_dict` / `load_state_dict` (a JSON-able dict of metadata and a
dict of tensors) and `save` / `load` (one .safetensors file, written atomically).

Kept as a mixin of `RainStream` so that the list of what a stream holds sits next to the code that restores it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..io.files import temporary_beside, user_file_mode
from .config import StreamConfig, StreamConfigError, StreamStateError
from .timing import TickClock
from .window import Window, is_consecutive

STATE_FORMAT = "rain-stream/1"


class StreamStateMixin:
    """state_dict / load_state_dict / save / load of `RainStream` (see the module docstring)."""

    def state_dict(self) -> dict:
        """Everything needed to resume bit-exactly: {"meta": JSON-able dict, "tensors": {name: tensor}}."""
        clock = self._clock.settled()
        tensors: dict[str, torch.Tensor] = {"pending_poses": self._pending}
        window = self._window
        if window.latents is not None:
            tensors["window_latents"] = window.latents
            tensors["window_pose_features"] = window.pose_features
        if self._last_pose is not None:
            tensors["last_pose"] = self._last_pose
        if self._reference is not None:
            tensors["reference_clip_tokens"] = self._reference["clip_tokens"]
            tensors["reference_latent"] = self._reference["latent"]
        memory_layout = _flatten_memory(self._decoder_memory, tensors)
        noise_state = self.noise.state_dict() if hasattr(self.noise, "state_dict") else None
        meta = {
            "format": STATE_FORMAT,
            "config": self.config.to_dict(),
            "model_config": _jsonable(self.models.config.to_dict()),
            "cohorts": list(window.cohorts),
            "ticks_done": list(window.ticks_done),
            "real_frames": list(window.real_frames),
            "decoder_memory": memory_layout,
            "next_cohort": self._next_cohort,
            "frames_in": self._frames_in,
            "frames_out": self._frames_out,
            "ticks": self._ticks,
            "finished": self._finished,
            "seconds": clock.seconds,
            "last_tick_ms": clock.last_ms,
            "mean_tick_ms": clock.mean_ms,
            "noise": noise_state,
        }
        return {"meta": meta, "tensors": {name: t.detach().clone() for name, t in tensors.items()}}

    def load_state_dict(self, state: dict) -> None:
        """Resume from `state_dict()` output (same networks). Checked completely before anything changes."""
        meta, tensors = _check_state(state)
        try:
            config = StreamConfig.from_dict(meta["config"])
            config.validate(self.models)
        except StreamConfigError as error:
            raise StreamStateError(f"stream state: its config does not fit these networks: {error}") from None
        if _network_shape(meta["model_config"]) != _network_shape(_jsonable(self.models.config.to_dict())):
            raise StreamStateError(
                "stream state: it was saved with networks of another shape (model_config differs); "
                "load the same RAIN weights the stream was saved with"
            )
        downscale = self.models.codec.downscale
        latent_shape = (self.models.config.latent_channels, config.height // downscale, config.width // downscale)
        n = len(meta["cohorts"])
        m = config.frames_per_cohort
        expected = {"pending_poses": (None, config.height, config.width, 3)}
        if n:
            expected["window_latents"] = (1, latent_shape[0], n * m, *latent_shape[1:])
            expected["window_pose_features"] = (1, self.models.config.pose_channels, n * m, *latent_shape[1:])
        for name, shape in expected.items():
            found = tensors.get(name)
            if (
                found is None
                or found.dim() != len(shape)
                or any(e is not None and e != f for e, f in zip(shape, found.shape))
            ):
                raise StreamStateError(
                    f"stream state: tensor {name!r} expected shape {shape}, found {None if found is None else tuple(found.shape)}"
                )
        if not (len(meta["ticks_done"]) == len(meta["real_frames"]) == n <= config.levels):
            raise StreamStateError("stream state: cohort lists disagree in length or exceed the levels")
        if not is_consecutive(list(meta["ticks_done"]), config.levels):
            raise StreamStateError(
                f"stream state: ticks_done {meta['ticks_done']} is not a window a stream can hold "
                f"(one cohort per tick, each between 1 and levels − 1 = {config.levels - 1})"
            )
        memory = _unflatten_memory(meta["decoder_memory"], tensors)
        # Nothing can fail below except the reference UNet run, which is kept local until it succeeds.
        reference = None
        if "reference_latent" in tensors:
            device, dtype = self.models.device, self.models.dtype
            clip_tokens = tensors["reference_clip_tokens"].to(device, dtype)
            latent = tensors["reference_latent"].to(device, dtype)
            with torch.no_grad(), self.models.reference_networks():  # loaded again if released
                reference = {
                    "clip_tokens": clip_tokens,
                    "latent": latent,
                    "cache": self.models.reference_unet(latent, clip_tokens),
                }
        self._configure(config)
        if (
            self._custom_noise is not None
            and hasattr(self._custom_noise, "load_state_dict")
            and meta["noise"] is not None
        ):
            self._custom_noise.load_state_dict(meta["noise"])
        device, dtype = self.models.device, self.models.dtype
        self._reference = reference
        self._window = Window(
            tensors["window_latents"].to(device, dtype) if n else None,
            tensors["window_pose_features"].to(device, dtype) if n else None,
            list(meta["cohorts"]),
            list(meta["ticks_done"]),
            list(meta["real_frames"]),
        )
        self._pending = tensors["pending_poses"].to("cpu", torch.float32)
        self._last_pose = tensors["last_pose"].to("cpu", torch.float32) if "last_pose" in tensors else None
        self._decoder_memory = _to_device(memory, device, dtype)
        self._next_cohort = int(meta["next_cohort"])
        self._frames_in = int(meta["frames_in"])
        self._frames_out = int(meta["frames_out"])
        self._ticks = int(meta["ticks"])
        self._finished = bool(meta["finished"])
        self._clock = TickClock(float(meta["seconds"]), meta["last_tick_ms"], meta["mean_tick_ms"])
        self._outputs_ready = None
        self._tick_holds = None

    def save(self, path: str | os.PathLike) -> None:
        """Write the stream state to one .safetensors file (tensors + JSON metadata), atomically."""
        state = self.state_dict()
        path = Path(path)
        tensors = {name: t.contiguous().cpu() for name, t in state["tensors"].items()}
        metadata = {"rain_stream": json.dumps(_jsonable(state["meta"]))}
        handle, temporary = temporary_beside(path)
        os.close(handle)
        try:
            save_file(tensors, temporary, metadata=metadata)
            os.chmod(temporary, user_file_mode())  # safetensors recreates the file 0600
            os.replace(temporary, path)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise

    def load(self, path: str | os.PathLike) -> None:
        """Resume from a file written by `save(path)`."""
        path = Path(path)
        if not path.is_file():
            raise StreamStateError(f"stream state file {path}: not found")
        try:
            with safe_open(str(path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                # Fresh allocations: a tensor viewing the file buffer may be unaligned, and CPU kernels (MKL) can
                # round differently on unaligned data, which would break bit-exact resumption.
                tensors = {name: handle.get_tensor(name).clone() for name in handle.keys()}
        except Exception as error:  # safetensors raises its own error types for damaged files
            raise StreamStateError(f"stream state file {path}: not a readable safetensors file ({error})") from None
        if "rain_stream" not in metadata:
            raise StreamStateError(
                f"stream state file {path}: no 'rain_stream' metadata; was it written by RainStream.save?"
            )
        self.load_state_dict({"meta": json.loads(metadata["rain_stream"]), "tensors": tensors})


def _flatten_memory(memory, tensors: dict) -> Any:
    """Store the decoder memory's tensors under decoder_memory.* and return its JSON-able layout."""
    if memory is None:
        return None
    if isinstance(memory, torch.Tensor):
        name = f"decoder_memory.{len([k for k in tensors if k.startswith('decoder_memory.')])}"
        tensors[name] = memory
        return {"tensor": name}
    if isinstance(memory, (list, tuple)):
        return {"list": [_flatten_memory(item, tensors) for item in memory]}
    if isinstance(memory, dict):
        return {"dict": {str(key): _flatten_memory(item, tensors) for key, item in memory.items()}}
    raise StreamStateError(f"decoder memory of type {type(memory).__name__} cannot be saved")


def _unflatten_memory(layout, tensors: dict):
    if layout is None:
        return None
    if not isinstance(layout, dict) or len(layout) != 1:
        raise StreamStateError(f"stream state: malformed decoder memory layout {layout!r}")
    ((kind, content),) = layout.items()
    if kind == "tensor":
        if content not in tensors:
            raise StreamStateError(f"stream state: decoder memory tensor {content!r} is missing")
        return tensors[content]
    if kind == "list":
        return [_unflatten_memory(item, tensors) for item in content]
    if kind == "dict":
        return {key: _unflatten_memory(item, tensors) for key, item in content.items()}
    raise StreamStateError(f"stream state: unknown decoder memory entry {kind!r}")


def _to_device(memory, device, dtype):
    if memory is None:
        return None
    if isinstance(memory, torch.Tensor):
        return memory.to(device, dtype).contiguous()
    if isinstance(memory, (list, tuple)):
        return [_to_device(item, device, dtype) for item in memory]
    return {key: _to_device(item, device, dtype) for key, item in memory.items()}


def _jsonable(value):
    """What JSON round-trips to: tuples become lists (so saved and live configs compare equal)."""
    return json.loads(json.dumps(value))


def _check_state(state) -> tuple[dict, dict]:
    if (
        not isinstance(state, dict)
        or not isinstance(state.get("meta"), dict)
        or not isinstance(state.get("tensors"), dict)
    ):
        raise StreamStateError(
            "stream state: expected the dict returned by RainStream.state_dict() ({'meta', 'tensors'})"
        )
    meta, tensors = state["meta"], state["tensors"]
    if meta.get("format") != STATE_FORMAT:
        raise StreamStateError(f"stream state: expected format {STATE_FORMAT!r}, found {meta.get('format')!r}")
    required = (
        "config",
        "model_config",
        "cohorts",
        "ticks_done",
        "real_frames",
        "next_cohort",
        "frames_in",
        "frames_out",
    )
    missing = [key for key in required if key not in meta]
    if missing:
        raise StreamStateError(f"stream state: missing entries {missing}")
    if not all(isinstance(t, torch.Tensor) for t in tensors.values()):
        raise StreamStateError("stream state: every entry of 'tensors' must be a torch.Tensor")
    return meta, tensors


def _network_shape(model_config: dict) -> dict:
    """The fields of a model config that shape its networks (`frame_size` only names the model's own size and
    was added after states were first saved)."""
    return {key: value for key, value in model_config.items() if key != "frame_size"}
