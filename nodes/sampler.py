"""RAIN Sampler: pushes pose frames into a RAIN stream that lives on between runs, keyed by stream id."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from ..rain_core.stream.config import NOISE_MODES, StreamConfig
from . import host
from .convert import PoseBatch, RainModelHandle, TensorMemo, frame_origins, image_batch, tensor_fingerprint, to_pil
from .registry import default_registry

PREVIEW_MAX = 512  # longest side of the progress preview; smaller frames are shown at their own size
PREVIEW_EVERY_S = 2.0  # a long run shows its newest frame this often (a short run only its last)
DEFAULT = StreamConfig()  # the one home of the stream's defaults

# Reference image tensor -> its fingerprint. ComfyUI hands the same cached tensor to every run of a live workflow,
# so the content hash is computed once, not per run.
_fingerprints = TensorMemo()


def _fingerprint(reference, prepared) -> str:
    try:
        counter = reference._version  # changed in place: hash again
    except RuntimeError:  # inference-mode tensors (ComfyUI runs nodes in inference mode) keep no version counter
        counter = None
    version = (reference.data_ptr(), tuple(reference.shape), counter)
    cached = _fingerprints.get(reference)
    if cached is not None and cached[0] == version:
        return cached[1]
    value = tensor_fingerprint(prepared)
    _fingerprints.set(reference, (version, value))
    return value


class RainSampler:
    CATEGORY = "RAIN"
    DESCRIPTION = ("Animates the reference image with the pose frames, tick by tick, with RAIN's stepped noise "
                   "ladder. The stream lives on between runs under its stream_id: a long video fed in chunks, or a "
                   "live source under Auto Queue, continues where the last run stopped. Outputs the frames this run "
                   "emitted (none during the first warm-up ticks unless flush is on). With a filename_prefix the "
                   "frames go straight into an H.264 video file as they are made instead (long videos in flat "
                   "memory). A cancelled or failed run leaves the stream exactly as it was before the run, and no "
                   "file.")
    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("frames", "fps")
    OUTPUT_TOOLTIPS = (
        "The frames this run emitted, (N, H, W, 3); with a filename_prefix only the last of them (they are in the "
        "video file). On a run that emits none (the first warm-up runs) the nodes fed from here do not run "
        "(ComfyUI's execution blocker), so Save Image never sees an empty batch.",
        "The frame rate of the pose source (e.g. 30 for a 30 fps pose video), for Create Video / Video Combine "
        "/ Frame Queue, so the output plays at the input's speed.")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "rain_model": ("RAIN_MODEL", {"tooltip": "From Load RAIN Model."}),
                "reference": ("IMAGE", {
                    "tooltip": "The character to animate (the first image of the batch). Any size: it is "
                               "letterboxed to width x height; transparency becomes white."}),
                "poses": ("RAIN_POSES", {"tooltip": "Pose frames from Pose Stream."}),
                "width": ("INT", {"default": DEFAULT.width, "min": 0, "max": 2048, "step": 16,
                                  "tooltip": "Output frame width in pixels; 0 = the model's own size (64 for the "
                                             "built-in tiny-rain, 512 for the released RAIN). A multiple of 64 for "
                                             "the released model (the sampler names the right multiple for "
                                             "others)."}),
                "height": ("INT", {"default": DEFAULT.height, "min": 0, "max": 2048, "step": 16,
                                   "tooltip": "Output frame height in pixels; 0 = the model's own size (64 for the "
                                              "built-in tiny-rain, 512 for the released RAIN)."}),
                "levels": ("INT", {"default": DEFAULT.levels, "min": 1, "max": 16,
                                   "tooltip": "Noise levels p in the window: more levels, smoother motion, longer "
                                              "warm-up (the window holds levels x frames_per_cohort frames)."}),
                "frames_per_cohort": ("INT", {"default": DEFAULT.frames_per_cohort, "min": 1, "max": 16,
                                              "tooltip": "Frames m that share a noise level; each tick emits m "
                                                         "frames."}),
                "steps": ("INT", {"default": DEFAULT.steps, "min": 1, "max": 50,
                                  "tooltip": "Denoising steps per level (the LCM-distilled weights use 4)."}),
                "guidance": ("FLOAT", {"default": DEFAULT.guidance, "min": 0.0, "max": 20.0, "step": 0.1,
                                       "tooltip": "Guidance scale w fed to the LCM guidance embedding."}),
                "seed": ("INT", {"default": DEFAULT.seed, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False,
                                 "tooltip": "Noise seed of the stream. Fixed for the life of a stream."}),
                "stream_id": ("STRING", {"default": "rain",
                                         "tooltip": "Name of the stream kept between runs. Each client (browser "
                                                    "tab, API client id) has its own streams; two samplers of one "
                                                    "client with the same id share one stream. A name starting "
                                                    "with 'shared:' is one stream for every client."}),
                "reset": ("BOOLEAN", {"default": False,
                                      "tooltip": "Start the stream afresh on this run (also needed after changing "
                                                 "a setting of a running stream). Turn it off again to continue "
                                                 "streaming on later runs."}),
                "flush": ("BOOLEAN", {"default": False,
                                      "tooltip": "End of input: after these poses, drain the stream so every pose "
                                                 "frame yields its frame, then close the stream (the next run "
                                                 "starts afresh). On for a whole video in one run; off for chunked "
                                                 "or live input."}),
            },
            "optional": {
                "noise": (list(NOISE_MODES), {
                    "default": DEFAULT.noise,
                    "tooltip": "fresh: every frame draws its own noise (the RAIN method). shared: one noise for "
                               "every frame (StreamDiffusion's fixed noise), so still parts of the picture stay "
                               "still; with the built-in model the frame-to-frame flicker fell by about three "
                               "quarters at the same accuracy. A setting of the stream: change it with reset."}),
                "filename_prefix": ("STRING", {
                    "default": "",
                    "tooltip": "Empty: hand the frames on (frames output). A prefix such as rain/long: write the "
                               "frames this run emits straight into output/rain/long_00001_.mp4 (H.264, at the pose "
                               "source's frame rate) while they are made, and hand on only the last frame, so a "
                               "video of any length renders in the same memory. The file appears when the run "
                               "ends; a cancelled run leaves none. Use flush on for a whole video in one file."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sample(self, rain_model, reference, poses, width, height, levels, frames_per_cohort, steps, guidance, seed,
               stream_id, reset, flush, noise="fresh", filename_prefix="", unique_id=None):
        from ..rain_core.stream import RainStream
        from ..rain_core.stream.feed import push_frames

        if not isinstance(rain_model, RainModelHandle):
            raise ValueError(f"rain_model: expected the output of Load RAIN Model, found {type(rain_model).__name__}.")
        if not isinstance(poses, PoseBatch):
            raise ValueError(f"poses: expected the output of Pose Stream, found {type(poses).__name__}.")
        prepared = image_batch(reference, "reference")[:1]
        models = rain_model.models
        config = StreamConfig(levels=levels, frames_per_cohort=frames_per_cohort, steps=steps,
                              guidance=float(guidance), height=int(height), width=int(width), seed=int(seed),
                              decoder=rain_model.decoder, noise=noise).for_models(models)  # 0 = the model's own size
        width, height = config.width, config.height
        settings = {"model": rain_model.key, "width": width, "height": height, "levels": levels,
                    "frames_per_cohort": frames_per_cohort, "steps": steps, "guidance": float(guidance),
                    "seed": int(seed), "noise": noise, "reference": _fingerprint(reference, prepared)}
        registry = default_registry()
        key = host.state_key("stream", stream_id) if isinstance(stream_id, str) and stream_id.strip() else stream_id
        if reset:
            registry.close_stream(key)
        if rain_model.patcher is not None:
            host.load_model(rain_model.patcher)  # ComfyUI moves the networks in (evicting others if needed)
        elif not rain_model.keep_loaded:
            models.to(rain_model.device, rain_model.dtype)

        def create_stream():
            stream = RainStream(models, config)
            stream.set_reference(prepared)
            return stream

        saving = bool(str(filename_prefix or "").strip())
        try:
            entry, created = registry.open_stream(key, settings, create_stream)
            entry.extra["model_token"] = rain_model.token
            stream = entry.stream
            pose_count = len(poses)
            # state_dict() already holds copies of the state tensors: restoring it undoes this run exactly.
            before = None if created else stream.state_dict()
            ticks = -(-pose_count // frames_per_cohort)
            progress = host.Progress(ticks + int(flush), node_id=unique_id)
            # The output file: a temporary file beside its final name, renamed into place when the run succeeded.
            sink = _video_sink(filename_prefix, poses.fps) if saving else None
            emitted, last, emitted_count = [], None, 0
            shown = time.monotonic()

            def hand_on(frames, value, final):
                nonlocal last, emitted_count, shown
                if len(frames):
                    if sink is not None:
                        sink.write(frames)  # encoded now: nothing of this run's output stays in memory
                        last = frames[-1:]
                    else:
                        emitted.append(frames)
                    emitted_count += len(frames)
                # An interrupt point: a cancel here restores `before` below. The preview: the last frame of the
                # run, and on a long run the newest frame every PREVIEW_EVERY_S.
                now = time.monotonic()
                preview = len(frames) and (final or now - shown >= PREVIEW_EVERY_S)
                if preview:
                    shown = now
                progress.update(value, to_pil(frames[-1], PREVIEW_MAX) if preview else None)

            try:
                # THE push loop, fed frame by frame from the pose chunks (a clip is decoded as it goes).
                frames = (frame for chunk in poses.chunks(frames_per_cohort, height, width) for frame in chunk)
                for index, (_, out) in enumerate(push_frames(stream, frames, flush, frames_per_cohort), 1):
                    hand_on(out, index, index == ticks + int(flush))
                written = sink.close() if sink is not None else None
            except BaseException:
                if sink is not None:
                    sink.abort()  # the partial file goes; whatever was at the path before stays
                if created:
                    registry.close_stream(key)
                else:
                    stream.load_state_dict(before)
                raise
            entry.runs += 1
            entry.frames_in += pose_count
            pose_times = entry.extra.setdefault("pose_times", [])
            pose_times.extend([poses.arrived] * pose_count)
            origins, entry.extra["pose_times"] = pose_times[:emitted_count], pose_times[emitted_count:]
            if flush:
                registry.close_stream(key)
            # The run succeeded: the pose source may now move past the poses it gave (a cancelled run re-reads
            # them, so an interrupted then resumed live stream equals an uninterrupted one).
            poses.commit()
        finally:
            if rain_model.patcher is not None:
                if not rain_model.keep_loaded:
                    host.unload_model(rain_model.patcher)
            elif not rain_model.keep_loaded:
                models.to("cpu", rain_model.dtype)
        fps = float(poses.fps)
        if not emitted_count:
            # Nothing to hand on (warm-up): the nodes fed from `frames` do not run at all this time.
            return (host.ExecutionBlocker(None), fps)

        output = torch.cat([frames.to("cpu", torch.float32) for frames in (emitted or [last])])
        entry.frames_out += emitted_count
        frame_origins.set(output, origins[-output.shape[0]:])
        if written is None:
            return (output, fps)
        # The file shows on the node as Save Video's does (and is listed in the prompt's history).
        return {"ui": _saved_video(written), "result": (output, fps)}


def _video_sink(filename_prefix: str, fps: float):
    """A VideoSink on the next free output/<prefix>_NNNNN_.mp4, numbered as ComfyUI's Save Video numbers."""
    from ..rain_core.io.video import VideoSink

    return VideoSink(host.output_file(filename_prefix.strip(), ".mp4"), fps=fps if fps > 0 else 16.0)


def _saved_video(path) -> dict:
    """The UI output of a written file (ComfyUI's PreviewVideo format); a PNG folder (no H.264 here) has none."""
    if not path.is_file():
        return {}
    subfolder = Path(os.path.relpath(path.parent, host.output_directory())).as_posix()
    return {"images": [{"filename": path.name, "subfolder": "" if subfolder == "." else subfolder,
                        "type": "output"}], "animated": (True,)}
