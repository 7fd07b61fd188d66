"""Load RAIN Model: the RAIN networks from models/rain, with the VAE and image encoder they need."""

from __future__ import annotations

import weakref
from pathlib import Path

from . import host
from .convert import RainModelHandle
from .registry import default_registry

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
  vae/                         the SD VAE: a single file such as vae-ft-mse-840000-ema-pruned.safetensors, or the
                               sd-vae-ft-mse folder (config.json + diffusion_pytorch_model.safetensors;
                               huggingface.co/stabilityai/sd-vae-ft-mse); or connect core Load VAE to the vae input
  clip_vision/                 the image encoder, CLIP ViT-L/14: a single file (clip_vision_vit_l.safetensors, the
                               model.safetensors of openai/clip-vit-large-patch14) or the image_encoder folder of
                               huggingface.co/lambdalabs/sd-image-variations-diffusers (as sd-image-variations/);
                               or connect core Load CLIP Vision to the clip_vision input
  vae_approx/taesdv.pth        optional fast decoder (github.com/madebyollin/taesdv)
The built-in tiny-rain model needs none of them (it is a small demo model, not the released weights)."""
_file_problems: dict[tuple, str | None] = {}  # (path, size, mtime) -> why it is not offered (None: offered)


def usable_files(kind: str) -> list[str]:
    """The entries of models/<kind> ("vae" or "clip_vision") that RAIN can load, decided from each safetensors
    header alone (folders need a config.json); each one left out is logged once with the reason."""
    from ..rain_core.loading.single_file import clip_file_problem, vae_file_problem

    problem_of = vae_file_problem if kind == "vae" else clip_file_problem
    names = []
    for name in host.list_models(kind):
        path = host.find_model(kind, name)
        try:
            stat = path.stat()
        except OSError:
            continue
        key = (str(path), stat.st_size, stat.st_mtime_ns)
        if key not in _file_problems:
            _file_problems[key] = problem_of(path)
            if _file_problems[key] is not None:
                host.logger.info("RAIN: models/%s/%s is not offered to Load RAIN Model: %s", kind, name,
                                 _file_problems[key])
        if _file_problems[key] is None:
            names.append(name)
    return names


def _taken_over(kind: str, weights: dict) -> dict:
    """The tensors of a model connected from ComfyUI's own loader, or a RainLoadError saying what it is instead."""
    from ..rain_core.loading import RainLoadError
    from ..rain_core.loading.single_file import clip_problem, vae_problem

    problem = (vae_problem if kind == "vae" else clip_problem)({k: tuple(t.shape) for k, t in weights.items()})
    if problem is not None:
        raise RainLoadError(f"{kind} input: the connected model is {problem}.")
    return weights



def builtin_model_dir() -> Path:
    from ..rain_core.loading.layout import builtin_model_dir as engine_builtin_model_dir  # the one path to it

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
    from ..rain_core.stream.config import resolve_precision

    if precision == "auto":
        return host.auto_dtype(device)  # inside ComfyUI its own unet dtype rule; standalone resolve_precision's
    return resolve_precision(precision, device)


def _close_streams_of(token: str) -> None:
    """The handle `token` is gone (ComfyUI dropped the loader's output: /free, another model chosen, another
    workflow run): its streams go too, so nothing keeps the networks in memory."""
    closed = default_registry().close_streams(lambda entry: entry.extra.get("model_token") == token)
    host.logger.info("RAIN: a loaded model was released (%d stream(s) built on it closed)", len(closed))
    host.give_memory_back(delay_s=0.5)  # the last references are still being dropped


class LoadRainModel:
    CATEGORY = "RAIN"
    DESCRIPTION = ("Loads the RAIN networks (reference UNet, denoising UNet with motion modules, pose guider) from "
                   "models/rain, with the SD VAE from models/vae and the image encoder from models/clip_vision (single "
                   "files as ComfyUI keeps them, or diffusers/transformers folders), or from ComfyUI's Load VAE and "
                   "Load CLIP Vision connected to its inputs. 'tiny-rain (built-in)' is a small demo model that needs "
                   "no downloads.")
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
            "vae_name": ([AUTO] + usable_files("vae"), {
                "tooltip": "The SD VAE from models/vae: a single file (vae-ft-mse-840000-ema-pruned.safetensors; LDM "
                           "or diffusers keys) or the sd-vae-ft-mse folder. Only VAEs RAIN can use are listed (image "
                           "VAEs with 4 latent channels, .safetensors). auto: the one next to the RAIN weights, or "
                           "none for models with their own codec (tiny-rain). A VAE connected to the vae input wins."}),
            "image_encoder": ([AUTO] + usable_files("clip_vision"), {
                "tooltip": "The CLIP image encoder (ViT-L/14 for RAIN-v0.1) from models/clip_vision: a single file "
                           "(clip_vision_vit_l.safetensors, openai/clip-vit-large-patch14; transformers or open_clip "
                           "keys) or the sd-image-variations image_encoder folder. auto: the one next to the RAIN "
                           "weights, or the model's own (tiny-rain). A model connected to clip_vision wins."}),
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
        }, "optional": {
            "vae": ("VAE", {
                "tooltip": "Optional: a VAE from ComfyUI's Load VAE (any file it reads, .ckpt included); its weights "
                           "are taken over instead of vae_name. RAIN needs the SD VAE (sd-vae-ft-mse)."}),
            "clip_vision": ("CLIP_VISION", {
                "tooltip": "Optional: a CLIP vision model from ComfyUI's Load CLIP Vision (clip_vision_vit_l / "
                           "clip-vit-large-patch14 for RAIN-v0.1); its weights are taken over instead of "
                           "image_encoder."}),
        }, "hidden": {"unique_id": "UNIQUE_ID"}}

    def load(self, model, vae_name, image_encoder, decoder, precision, device, keep_loaded, vae=None,
             clip_vision=None, unique_id=None):
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
        vae_path = None if vae_name == AUTO else host.find_model("vae", vae_name)
        encoder_path = None if image_encoder == AUTO else host.find_model("clip_vision", image_encoder)
        if vae is not None:  # ComfyUI's own VAE / CLIP vision, from its core loaders
            vae_path = _taken_over("vae", host.vae_weights(vae))
        if clip_vision is not None:
            encoder_path = _taken_over("clip_vision", host.clip_vision_weights(clip_vision))
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
        if vae is not None and models.config.codec != "vae":
            host.logger.warning("RAIN: %s has its own codec (%s); the connected VAE is not used", model,
                                models.config.codec)
        # The decoder the streams really use: "auto" is TAESDV when one is loaded (its file, or the model's own),
        # else the full codec. The handle says which, so "auto" and "vae" are never confused.
        effective_decoder = "taesdv" if decoder != "vae" and models.fast_decoder is not None else "vae"
        handle = RainModelHandle(models=models, source=str(folder), decoder=effective_decoder,
                                 keep_loaded=keep_loaded, device=torch_device, dtype=dtype,
                                 patcher=host.manage_model(models, torch_device, offload_to))
        weakref.finalize(handle, _close_streams_of, handle.token)
        return (handle,)
