"""RAIN Sampler: pushes pose frames into a RAIN stream that lives on between runs, keyed by stream id."""

from __future__ import annotations

from ..rain_core.stream.config import NOISE_MODES, StreamConfig
from . import host
from .convert import PoseBatch, RainModelHandle, TensorMemo, frame_origins, image_batch, tensor_fingerprint, to_pil

PREVIEW_MAX = 512
DEFAULT = StreamConfig()  # the one home of the stream's defaults  # longest side of the progress preview; smaller frames are shown at their own size

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
                   "emitted (none during the first warm-up ticks unless flush is on). A cancelled or failed run "
                   "leaves the stream exactly as it was before the run.")
    RETURN_TYPES = ("IMAGE", "FLOAT")
    RETURN_NAMES = ("frames", "fps")
    OUTPUT_TOOLTIPS = (
        "The frames this run emitted, (N, H, W, 3). On a run that emits none (the first warm-up runs) the nodes "
        "fed from here do not run (ComfyUI's execution blocker), so Save Image never sees an empty batch.",
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
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sample(self, rain_model, reference, poses, width, height, levels, frames_per_cohort, steps, guidance, seed,
               stream_id, reset, flush, noise="fresh", unique_id=None):
        from ..rain_core.registry import default_registry
        from ..rain_core.stream import RainStream

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

        try:
            entry, created = registry.open_stream(key, settings, create_stream)
            entry.extra["model_token"] = rain_model.token
            stream = entry.stream
            pose_images = poses.render(height, width)
            # state_dict() already holds copies of the state tensors: restoring it undoes this run exactly.
            before = None if created else stream.state_dict()
            chunks = [pose_images[i:i + frames_per_cohort] for i in range(0, len(pose_images), frames_per_cohort)]
            progress = host.Progress(len(chunks) + int(flush), node_id=unique_id)
            emitted = []
            try:
                for index, chunk in enumerate(chunks):
                    frames = stream.push(chunk)
                    if len(frames):
                        emitted.append(frames)
                    # An interrupt point: a cancel here restores `before` below. The preview is the last frame
                    # of the run only (one JPEG per run, not per chunk).
                    last = index == len(chunks) - 1 and not flush
                    progress.update(index + 1, to_pil(frames[-1], PREVIEW_MAX) if last and len(frames) else None)
                if flush:
                    frames = stream.flush()
                    if len(frames):
                        emitted.append(frames)
                    progress.update(len(chunks) + 1, to_pil(frames[-1], PREVIEW_MAX) if len(frames) else None)
            except BaseException:
                if created:
                    registry.close_stream(key)
                else:
                    stream.load_state_dict(before)
                raise
            entry.runs += 1
            entry.frames_in += len(pose_images)
            pose_times = entry.extra.setdefault("pose_times", [])
            pose_times.extend([poses.arrived] * len(pose_images))
            emitted_count = sum(len(frames) for frames in emitted)
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
        if not emitted:
            # Nothing to hand on (warm-up): the nodes fed from `frames` do not run at all this time.
            return (host.ExecutionBlocker(None), fps)
        import torch

        output = torch.cat([frames.to("cpu", torch.float32) for frames in emitted])
        entry.frames_out += output.shape[0]
        frame_origins.set(output, origins)
        return (output, fps)
