"""Load RAIN Model: the RAIN networks from models/rain, with the VAE and image encoder they need."""

from __future__ import annotations

import weakref
from pathlib import Path

from . import host
from .convert import RainModelHandle

BUILTIN_MODEL = "tiny-rain (built-in)"
DOWNLOAD_MODEL = "RAIN-v0.1 (download from Hugging Face)"
DOWNLOADED_FOLDER = "RAIN-v0.1"
AUTO = "auto"
PRECISIONS = ("auto", "fp32", "fp16", "bf16")
DEVICES = ("auto", "cpu", "cuda")
DECODERS = ("auto", "taesdv", "vae")

WHERE_FILES_GO = """RAIN looks for these files in ComfyUI/models:
  rain/<name>/                 the RAIN networks, either the official release
                               (reference_unet.pth, motion_unet.pth, pose_guider.pth; huggingface.co/Pscgylotti/RAIN-v0.1)
                               or our safetensors layout (rain_config.json + one .safetensors per part; `rain convert`)
  vae/sd-vae-ft-mse/           the SD VAE (config.json + diffusion_pytorch_model.safetensors; huggingface.co/stabilityai/sd-vae-ft-mse)
  clip_vision/sd-image-variations/  the image encoder (config.json + pytorch_model.bin or model.safetensors; the image_encoder folder of
                               huggingface.co/lambdalabs/sd-image-variations-diffusers)
  vae_approx/taesdv.pth        optional fast decoder (github.com/madebyollin/taesdv)
The built-in tiny-rain model needs none of them (it is a small demo model, not the released weights)."""



def builtin_model_dir() -> Path:
    from ..rain_core.layout import builtin_model_dir as engine_builtin_model_dir  # the one path to it

    return engine_builtin_model_dir()


def rain_model_choices() -> list[str]:
    """Model folders under models/rain, then the built-in tiny model (the default when nothing else is there)."""
    return host.list_models(host.RAIN_FOLDER, files=False) + [BUILTIN_MODEL, DOWNLOAD_MODEL]


def _download(decoder: str, node_id=None) -> tuple[Path, Path, Path]:
    """Fetch what is missing of the released RAIN (+ SD VAE, image encoder, and TAESDV unless decoder is "vae") into
    ComfyUI's models/ in the README layout, with ComfyUI's progress bar (Cancel stops it; the next run resumes).
    Returns (RAIN folder, VAE folder, image encoder folder)."""
    paths = host.download_into_models(["rain", "vae", "image-encoder"] + ([] if decoder == "vae" else ["taesdv"]),
                                      node_id)
    return paths["rain"], paths["vae"], paths["image_encoder"]


def _taesdv_path() -> Path | None:
    for name in host.list_models("vae_approx"):
        if name.lower().startswith("taesdv"):
            return host.find_model("vae_approx", name)
    return None


def _dtype(precision: str, device):
    import torch

    if precision == "auto":
        return host.auto_dtype(device)
    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def _close_streams_of(token: str) -> None:
    """The handle `token` is gone (ComfyUI dropped the loader's output: /free, another model chosen, another
    workflow run): its streams go too, so nothing keeps the networks in memory."""
    from ..rain_core.registry import default_registry

    closed = default_registry().close_streams(lambda entry: entry.extra.get("model_token") == token)
    host.logger.info("RAIN: a loaded model was released (%d stream(s) built on it closed)", len(closed))
    host.give_memory_back()


class LoadRainModel:
    CATEGORY = "RAIN"
    DESCRIPTION = ("Loads the RAIN networks (reference UNet, denoising UNet with motion modules, pose guider) from "
                   "models/rain, with the SD VAE from models/vae and the image encoder from models/clip_vision. "
                   "'tiny-rain (built-in)' is a small demo model that needs no downloads.")
    RETURN_TYPES = ("RAIN_MODEL",)
    RETURN_NAMES = ("rain_model",)
    OUTPUT_TOOLTIPS = ("The loaded RAIN networks; connect to RAIN Sampler.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (rain_model_choices(), {
                "tooltip": "A folder in models/rain holding the RAIN weights (official .pth files or our "
                           "safetensors layout). 'tiny-rain (built-in)' ships with the pack. 'RAIN-v0.1 (download "
                           "from Hugging Face)' fetches the released weights, the SD VAE, the image encoder and "
                           "TAESDV into models/ on first use (about 10 GB; resumable), then loads them."}),
            "vae": ([AUTO] + host.list_models("vae"), {
                "tooltip": "The SD VAE (sd-vae-ft-mse) in models/vae. auto: the one next to the RAIN weights, or "
                           "none for models with their own codec (tiny-rain)."}),
            "image_encoder": ([AUTO] + host.list_models("clip_vision"), {
                "tooltip": "The CLIP image encoder of sd-image-variations in models/clip_vision. auto: the one next "
                           "to the RAIN weights, or the model's own (tiny-rain)."}),
            "decoder": (list(DECODERS), {
                "default": "auto",
                "tooltip": "How latents become frames. taesdv: the fast temporal decoder (models/vae_approx/"
                           "taesdv.pth), vae: the full SD VAE (slower, sharper), auto: taesdv when present."}),
            "precision": (list(PRECISIONS), {
                "default": "auto", "tooltip": "Weight precision. auto: fp16 on a GPU, fp32 on the CPU."}),
            "device": (list(DEVICES), {
                "default": "auto", "tooltip": "Where the networks run. auto: ComfyUI's device."}),
            "keep_loaded": ("BOOLEAN", {
                "default": True,
                "tooltip": "Keep the networks on the device between runs (needed for smooth live streams); "
                           "ComfyUI may still evict them when another model needs the memory. Off: they go back "
                           "to the offload device after each RAIN Sampler run."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def load(self, model, vae, image_encoder, decoder, precision, device, keep_loaded, unique_id=None):
        downloaded = None
        if model == BUILTIN_MODEL:
            folder = builtin_model_dir()
        elif model == DOWNLOAD_MODEL:
            folder, *downloaded = _download(decoder, unique_id)
        else:
            folder = host.find_model(host.RAIN_FOLDER, model)
        if folder is None or not folder.is_dir():
            searched = ", ".join(str(p) for p in host.model_folders(host.RAIN_FOLDER))
            raise FileNotFoundError(f"model: no folder named {model!r} in {searched}.\n{WHERE_FILES_GO}")
        torch_device = host.torch_device(device)
        dtype = _dtype(precision, torch_device)
        vae_path = None if vae == AUTO else host.find_model("vae", vae)
        encoder_path = None if image_encoder == AUTO else host.find_model("clip_vision", image_encoder)
        if downloaded is not None:  # the layout the download wrote, unless chosen otherwise
            vae_path = vae_path or downloaded[0]
            encoder_path = encoder_path or downloaded[1]
        taesdv_path = _taesdv_path() if decoder in ("auto", "taesdv") else None
        if decoder == "taesdv" and taesdv_path is None:
            raise FileNotFoundError("decoder: 'taesdv' needs taesdv.pth in "
                                    f"{', '.join(str(p) for p in host.model_folders('vae_approx'))} "
                                    "(from github.com/madebyollin/taesdv), or choose decoder 'vae' or 'auto'.")
        from ..rain_core.loading import RainLoadError, load_rain

        # Loaded onto the offload device; ComfyUI moves them to `torch_device` when a sampler runs (and evicts
        # them when another model needs the memory, or on POST /free).
        offload_to = host.offload_device(torch_device)
        try:
            models = load_rain(folder, vae=vae_path, image_encoder=encoder_path, taesdv=taesdv_path,
                               device=offload_to, dtype=dtype)
        except RainLoadError as error:
            raise RainLoadError(f"{error}\n{WHERE_FILES_GO}") from error
        # The decoder the streams really use: "auto" is TAESDV when one is loaded (its file, or the model's own),
        # else the full codec. The handle says which, so "auto" and "vae" are never confused.
        effective_decoder = "taesdv" if decoder != "vae" and models.fast_decoder is not None else "vae"
        handle = RainModelHandle(models=models, source=str(folder), decoder=effective_decoder,
                                 keep_loaded=keep_loaded, device=torch_device, dtype=dtype,
                                 patcher=host.manage_model(models, torch_device, offload_to))
        weakref.finalize(handle, _close_streams_of, handle.token)
        return (handle,)
