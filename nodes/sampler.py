"""RAIN Sampler: pushes pose frames into a RAIN stream that lives on between runs, keyed by stream id."""

from __future__ import annotations

import copy

from . import host
from .convert import PoseBatch, RainModelHandle, empty_images, image_batch, tensor_fingerprint, to_pil


def _snapshot(stream):
    # A deep copy: state_dict tensors may share storage with the live stream, which the next tick overwrites.
    return copy.deepcopy(stream.state_dict())


class RainSampler:
    CATEGORY = "RAIN"
    DESCRIPTION = ("Animates the reference image with the pose frames, tick by tick, with RAIN's stepped noise "
                   "ladder. The stream lives on between runs under its stream_id: a long video fed in chunks, or a "
                   "live source under Auto Queue, continues where the last run stopped. Outputs the frames this run "
                   "emitted (none during the first warm-up ticks unless flush is on). A cancelled or failed run "
                   "leaves the stream exactly as it was before the run.")
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("frames",)
    OUTPUT_TOOLTIPS = ("The frames this run emitted, (N, H, W, 3). N may be 0 while the stream warms up.",)
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
                "width": ("INT", {"default": 512, "min": 16, "max": 2048, "step": 16,
                                  "tooltip": "Output frame width in pixels: a multiple of 64 for the released "
                                             "model (the sampler names the right multiple for others)."}),
                "height": ("INT", {"default": 512, "min": 16, "max": 2048, "step": 16,
                                   "tooltip": "Output frame height in pixels: a multiple of 64 for the released "
                                              "model (the sampler names the right multiple for others)."}),
                "levels": ("INT", {"default": 4, "min": 1, "max": 16,
                                   "tooltip": "Noise levels p in the window: more levels, smoother motion, longer "
                                              "warm-up (the window holds levels x frames_per_cohort frames)."}),
                "frames_per_cohort": ("INT", {"default": 4, "min": 1, "max": 16,
                                              "tooltip": "Frames m that share a noise level; each tick emits m "
                                                         "frames."}),
                "steps": ("INT", {"default": 4, "min": 1, "max": 50,
                                  "tooltip": "Denoising steps per level (the LCM-distilled weights use 4)."}),
                "guidance": ("FLOAT", {"default": 3.5, "min": 0.0, "max": 20.0, "step": 0.1,
                                       "tooltip": "Guidance scale w fed to the LCM guidance embedding."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": False,
                                 "tooltip": "Noise seed of the stream. Fixed for the life of a stream."}),
                "stream_id": ("STRING", {"default": "rain",
                                         "tooltip": "Name of the stream kept between runs. Two samplers with the "
                                                    "same id share one stream."}),
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
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sample(self, rain_model, reference, poses, width, height, levels, frames_per_cohort, steps, guidance, seed,
               stream_id, reset, flush, unique_id=None):
        from ..rain_core.registry import default_registry
        from ..rain_core.stream import RainStream, StreamConfig

        if not isinstance(rain_model, RainModelHandle):
            raise ValueError(f"rain_model: expected the output of Load RAIN Model, found {type(rain_model).__name__}.")
        if not isinstance(poses, PoseBatch):
            raise ValueError(f"poses: expected the output of Pose Stream, found {type(poses).__name__}.")
        reference = image_batch(reference, "reference")[:1]
        models = rain_model.models
        settings = {"model": rain_model.key, "width": width, "height": height, "levels": levels,
                    "frames_per_cohort": frames_per_cohort, "steps": steps, "guidance": float(guidance),
                    "seed": int(seed), "reference": tensor_fingerprint(reference)}
        registry = default_registry()
        if reset:
            registry.close_stream(stream_id)
        if not rain_model.keep_loaded:
            models.to(rain_model.device, rain_model.dtype)

        def create_stream():
            config = StreamConfig(levels=levels, frames_per_cohort=frames_per_cohort, steps=steps,
                                  guidance=float(guidance), height=height, width=width, seed=int(seed),
                                  decoder=rain_model.decoder)
            stream = RainStream(models, config)
            stream.set_reference(reference)
            return stream

        try:
            entry, created = registry.open_stream(stream_id, settings, create_stream)
            stream = entry.stream
            pose_images = poses.render(height, width)
            before = None if created else _snapshot(stream)
            chunks = [pose_images[i:i + frames_per_cohort] for i in range(0, len(pose_images), frames_per_cohort)]
            progress = host.Progress(len(chunks) + int(flush), node_id=unique_id)
            emitted = []
            try:
                for index, chunk in enumerate(chunks):
                    frames = stream.push(chunk)
                    if len(frames):
                        emitted.append(frames)
                    # An interrupt point: a cancel here restores `before` below.
                    progress.update(index + 1, to_pil(frames[-1], 512) if len(frames) else None)
                if flush:
                    frames = stream.flush()
                    if len(frames):
                        emitted.append(frames)
                    progress.update(len(chunks) + 1, to_pil(frames[-1], 512) if len(frames) else None)
            except BaseException:
                if created:
                    registry.close_stream(stream_id)
                else:
                    stream.load_state_dict(before)
                raise
            entry.runs += 1
            entry.frames_in += len(pose_images)
            if flush:
                registry.close_stream(stream_id)
        finally:
            if not rain_model.keep_loaded:
                models.to("cpu", rain_model.dtype)
        if not emitted:
            return (empty_images(height, width),)
        import torch

        output = torch.cat([frames.to("cpu", torch.float32) for frames in emitted])
        entry.frames_out += output.shape[0]
        return (output,)
