"""Fetch the released files into the models/ layout the README documents, with huggingface_hub.

    models/rain/RAIN-v0.1/{reference_unet,motion_unet,pose_guider}.pth   Pscgylotti/RAIN-v0.1
    models/vae_approx/taesdv.pth                                          github.com/madebyollin/taesdv
    models/vae/sd-vae-ft-mse/                                             stabilityai/sd-vae-ft-mse
    models/clip_vision/sd-image-variations/                               lambdalabs/sd-image-variations-diffusers,
                                                                          folder image_encoder
    models/rain/dwpose/{yolox_l,dw-ll_ucoco_384}.onnx                     yzd-v/DWPose

`download_models(what, models_dir, progress=callback)` is the engine entry point (the `rain download` command and
the Load RAIN Model node call it). What it guarantees:
- never a partial file under a final name: bytes go to `.NAME.incomplete` beside it, renamed when complete;
- sizes checked: huggingface_hub's download compares the bytes received with the size the hub announced, and a
  file already on disk is kept only when its size equals the hub's;
- resumable: a dropped connection resumes within the run (the hub client's Range retry), and a run stopped by
  Ctrl-C or a network loss leaves its `.incomplete` file, which the next run resumes when the hub still serves the
  same version (its ETag); files already complete are skipped;
- `HF_HUB_OFFLINE=1` is honoured: nothing is requested, and what is missing is named;
- an unreachable hub raises `HubUnreachable` naming the endpoint (the CLI exits 2 with it).
`HF_ENDPOINT` (a mirror, or the local hub of the tests) is read when the function runs, not at import.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import get_hf_file_metadata, hf_hub_url
from huggingface_hub.utils import EntryNotFoundError, HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import tqdm as hub_tqdm
from torch.hub import download_url_to_file

from . import convert_official
from .layout import layout_paths

ProgressCallback = Callable[[int, int, str], None]  # (done_bytes, total_bytes, file name)

TAESDV_URL = "https://github.com/madebyollin/taesdv/raw/main/taesdv.pth"


class DownloadError(ValueError):
    """A download that cannot happen as asked (unknown item, missing file on the hub, offline mode)."""


class HubUnreachable(DownloadError):
    """The hub (or the mirror in HF_ENDPOINT) could not be reached."""


@dataclass(frozen=True)
class RemoteFile:
    """One file of a release: where it comes from and where it goes under models_dir."""

    target: str  # path under models_dir
    repo_id: str | None = None  # Hugging Face repository …
    path_in_repo: str | None = None  # … and the file in it
    alternatives: tuple[str, ...] = ()  # other names in the repo, tried in order when path_in_repo is absent
    url: str | None = None  # a plain URL instead of a hub repository (taesdv lives on GitHub)


ITEMS: dict[str, tuple[str, list[RemoteFile]]] = {
    "rain": ("the RAIN-v0.1 checkpoints (reference UNet, denoising UNet with motion modules, pose guider)", [
        RemoteFile(f"rain/RAIN-v0.1/{name}", "Pscgylotti/RAIN-v0.1", name)
        for name in ("reference_unet.pth", "motion_unet.pth", "pose_guider.pth")
    ]),
    "taesdv": ("the TAESDV fast decoder", [RemoteFile("vae_approx/taesdv.pth", url=TAESDV_URL)]),
    "vae": ("the SD VAE sd-vae-ft-mse", [
        RemoteFile("vae/sd-vae-ft-mse/config.json", "stabilityai/sd-vae-ft-mse", "config.json"),
        RemoteFile("vae/sd-vae-ft-mse/diffusion_pytorch_model.safetensors", "stabilityai/sd-vae-ft-mse",
                   "diffusion_pytorch_model.safetensors"),
    ]),
    "image-encoder": ("the CLIP image encoder of sd-image-variations", [
        RemoteFile("clip_vision/sd-image-variations/config.json", "lambdalabs/sd-image-variations-diffusers",
                   "image_encoder/config.json"),
        RemoteFile("clip_vision/sd-image-variations/model.safetensors", "lambdalabs/sd-image-variations-diffusers",
                   "image_encoder/model.safetensors", alternatives=("image_encoder/pytorch_model.bin",)),
    ]),
    "dwpose": ("the DWPose detector ONNX files", [
        RemoteFile(f"rain/dwpose/{name}", "yzd-v/DWPose", name) for name in ("yolox_l.onnx", "dw-ll_ucoco_384.onnx")
    ]),
}
DEFAULT_WHAT = ("rain", "taesdv", "vae", "image-encoder")  # what `rain animate` needs for the released model


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")


def offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def parse_what(what: str | Iterable[str] | None) -> list[str]:
    """'rain,vae' or ['rain', 'vae'] or None (the default set) → validated item names, in order, no repeats."""
    if what is None:
        return list(DEFAULT_WHAT)
    names = [w.strip().lower() for part in ([what] if isinstance(what, str) else what) for w in str(part).split(",")]
    names = [n for n in names if n]
    if "all" in names:
        return list(ITEMS)
    unknown = [n for n in names if n not in ITEMS]
    if unknown or not names:
        raise DownloadError(f"--what {','.join(names) or '(empty)'}: unknown item {', '.join(unknown) or '(none)'}; "
                            f"choose from {', '.join(ITEMS)} or all (comma-separated).")
    return list(dict.fromkeys(names))


def _umask_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _describe_network_error(error: BaseException) -> str:
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


def _is_network_error(error: BaseException) -> bool:
    module = type(error).__module__ or ""
    if module.split(".")[0] in ("httpx", "httpx2", "requests", "urllib3", "socket", "ssl"):
        return True
    return isinstance(error, (ConnectionError, TimeoutError))


@dataclass
class _Plan:
    remote: RemoteFile
    final: Path
    path_in_repo: str | None = None
    size: int | None = None
    etag: str | None = None
    skip: bool = False


def _head(remote: RemoteFile, path_in_repo: str, endpoint: str):
    return get_hf_file_metadata(hf_hub_url(remote.repo_id, path_in_repo, endpoint=endpoint))


def _plan(remote: RemoteFile, models_dir: Path, endpoint: str) -> _Plan:
    """Ask the hub for the file's size (trying the alternatives in turn); decide whether it is already complete."""
    plan = _Plan(remote, models_dir / remote.target)
    if remote.url is not None:
        plan.skip = plan.final.is_file() and plan.final.stat().st_size > 0
        return plan
    names = (remote.path_in_repo, *remote.alternatives)
    for index, name in enumerate(names):
        try:
            meta = _head(remote, name, endpoint)
        except EntryNotFoundError:
            if index + 1 < len(names):
                continue
            raise DownloadError(f"{remote.repo_id}: none of {', '.join(names)} is on the hub at {endpoint}.") from None
        except RepositoryNotFoundError:
            raise DownloadError(f"{remote.repo_id}: repository not found at {endpoint} (gated or renamed?). "
                                "Download the files by hand into " + str(plan.final.parent)) from None
        except HfHubHTTPError as error:
            raise HubUnreachable(f"{endpoint}: the hub answered {_describe_network_error(error)} for "
                                 f"{remote.repo_id}/{name}. Try again later, or set HF_ENDPOINT to a mirror.") from None
        except Exception as error:  # connection refused, DNS, TLS, timeout: the client library's own types
            if not _is_network_error(error):
                raise
            raise HubUnreachable(f"cannot reach the hub at {endpoint} ({_describe_network_error(error)}). Check the "
                                 "network or proxy, set HF_ENDPOINT to a mirror, or place the files by hand under "
                                 f"{models_dir} (see the README's model table).") from None
        plan.path_in_repo, plan.size, plan.etag = name, meta.size, meta.etag
        if index:  # an alternative keeps its own name (a .bin is not a .safetensors)
            plan.final = plan.final.with_name(Path(name).name)
        break
    if plan.final.is_file() and (plan.size is None or plan.final.stat().st_size == plan.size):
        plan.skip = True
    return plan


def _on_disk(remote: RemoteFile, models_dir: Path) -> bool:
    return _present_name(remote, models_dir).is_file()


def _present_name(remote: RemoteFile, models_dir: Path) -> Path:
    """Where `remote` is on disk: its target, or the first alternative name present (else the target)."""
    final = models_dir / remote.target
    names = (final.name, *(Path(name).name for name in remote.alternatives))
    return next((final.with_name(name) for name in names if final.with_name(name).is_file()), final)


def _progress_class(callback: ProgressCallback | None, state: dict, name: str, quiet: bool):
    """A tqdm class for the hub that also reports bytes to `callback` (ComfyUI's progress bar in the nodes)."""
    class _Bar(hub_tqdm):
        def __init__(self, *args, **kwargs):
            if quiet:
                kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            state["done"] += n or 0
            if callback is not None:
                callback(state["done"], state["total"], name)
            return super().update(n)

    return _Bar


def _fetch_url(plan: _Plan, callback, state: dict) -> None:
    """A plain HTTPS file (taesdv.pth, 10 MB) through torch's downloader: temporary file, then rename."""
    url = os.environ.get("RAIN_TAESDV_URL", plan.remote.url)
    if offline():
        raise DownloadError(f"HF_HUB_OFFLINE=1: not downloading {url}")
    try:
        download_url_to_file(url, str(plan.final), progress=False)
    except Exception as error:
        if isinstance(error, OSError) or _is_network_error(error) or type(error).__module__.startswith("urllib"):
            raise HubUnreachable(f"cannot download {url} ({_describe_network_error(error)}); fetch it by hand "
                                 f"into {plan.final}.") from None
        raise
    os.chmod(plan.final, _umask_mode())  # torch writes through a 0600 temporary file
    state["done"] += plan.final.stat().st_size
    state["total"] = max(state["total"], state["done"])
    if callback is not None:
        callback(state["done"], state["total"], plan.final.name)


def _fetch_hub(plan: _Plan, endpoint: str, callback, state: dict, quiet: bool) -> None:
    """One hub file through huggingface_hub's own HTTP download (Range resume, size check, progress), into
    `.NAME.incomplete` beside the final name, renamed when complete. The partial file outlives an interrupted run
    (Ctrl-C, a lost network) and the next run resumes it when the hub still serves the same version (ETag)."""
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers

    url = hf_hub_url(plan.remote.repo_id, plan.path_in_repo, endpoint=endpoint)
    part = plan.final.with_name(f".{plan.final.name}.incomplete")
    version = part.with_name(part.name + ".etag")  # which version of the file the partial bytes are
    if part.exists() and (not version.is_file() or version.read_text() != (plan.etag or "")
                          or (plan.size is not None and part.stat().st_size > plan.size)):
        part.unlink()
    version.write_text(plan.etag or "")
    kwargs = {}
    parameters = inspect.signature(http_get).parameters
    if "tqdm_class" in parameters:
        kwargs["tqdm_class"] = _progress_class(callback, state, plan.final.name, quiet)
    if "displayed_filename" in parameters:
        kwargs["displayed_filename"] = plan.final.name
    try:
        with open(part, "ab") as file:
            resume = file.tell()
            state["done"] += resume
            http_get(url, file, resume_size=resume, headers=build_hf_headers(), expected_size=plan.size, **kwargs)
    except Exception as error:
        if _is_network_error(error):
            raise HubUnreachable(f"{endpoint}: the connection failed while downloading {plan.remote.repo_id}/"
                                 f"{plan.path_in_repo} ({_describe_network_error(error)}); run the same command "
                                 "again: complete files are skipped and this one resumes.") from None
        if isinstance(error, OSError) and "Consistency check failed" in str(error):
            part.unlink(missing_ok=True)
            raise DownloadError(f"{plan.remote.repo_id}/{plan.path_in_repo}: the bytes received do not match the "
                                "size the hub announced (nothing was kept under the final name); run again.") from None
        raise
    size = part.stat().st_size
    if plan.size is not None and size != plan.size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{plan.remote.repo_id}/{plan.path_in_repo}: received {size} bytes, the hub announced "
                            f"{plan.size}; run the download again.")
    os.chmod(part, _umask_mode())
    os.replace(part, plan.final)  # same folder: atomic, the final name only ever holds a complete file
    version.unlink(missing_ok=True)
    if "tqdm_class" not in kwargs:
        state["done"] += size - resume
    if callback is not None:
        callback(state["done"], state["total"], plan.final.name)


def download_models(
    what: str | Iterable[str] | None = None,
    models_dir: str | os.PathLike = "models",
    progress: ProgressCallback | None = None,
    convert: bool = False,
    quiet: bool = False,
) -> dict:
    """Download `what` (names of ITEMS, comma-separated or a list; None: rain, taesdv, vae, image-encoder)
    into `models_dir` in the README layout. Returns {"files": {target: "downloaded" | "present"}, "bytes": n,
    "converted": folder or None}. `progress(done_bytes, total_bytes, name)` is called as bytes arrive."""
    names = parse_what(what)
    models_dir = Path(models_dir)
    remotes = [remote for name in names for remote in ITEMS[name][1]]
    if offline():
        missing = [str(models_dir / r.target) for r in remotes if not _on_disk(r, models_dir)]
        if missing:
            raise DownloadError("HF_HUB_OFFLINE=1 is set, so nothing is downloaded, and these files are missing: "
                                + ", ".join(missing) + ". Unset HF_HUB_OFFLINE (or set it to 0) to download them, "
                                "or copy them there by hand.")
        plans = [_Plan(r, _present_name(r, models_dir), skip=True) for r in remotes]
        endpoint = None
    else:
        endpoint = hub_endpoint()
        plans = [_plan(r, models_dir, endpoint) for r in remotes]
    state = {"done": 0, "total": sum(p.size or 0 for p in plans if not p.skip)}
    result = {"files": {}, "bytes": 0, "converted": None}
    for plan in plans:
        if not plan.skip:
            plan.final.parent.mkdir(parents=True, exist_ok=True)
            if plan.remote.url is not None:
                _fetch_url(plan, progress, state)
            else:
                _fetch_hub(plan, endpoint, progress, state, quiet)
        # the name the file has on disk (an alternative keeps its own: pytorch_model.bin, not model.safetensors)
        result["files"][plan.final.relative_to(models_dir).as_posix()] = "present" if plan.skip else "downloaded"
    result["bytes"] = state["done"]
    if convert:
        result["converted"] = str(convert_downloaded(models_dir))
    return result


def convert_downloaded(models_dir: str | os.PathLike) -> Path:
    """Convert models/rain/RAIN-v0.1 (+ VAE, image encoder, taesdv) to safetensors in models/rain/RAIN-v0.1-st."""
    paths = layout_paths(models_dir)
    if not paths["image_encoder"].exists():
        raise DownloadError(f"--convert needs the image encoder ({paths['image_encoder']}); add image-encoder (and "
                            "vae, taesdv) to --what and run again.")
    vae = paths["vae"] if paths["vae"].exists() else None  # the loader says so if the model needs it
    taesdv = paths["taesdv"] if paths["taesdv"].is_file() else None
    return convert_official(paths["rain"], paths["rain"].parent / "RAIN-v0.1-st", vae=vae,
                            image_encoder=paths["image_encoder"], taesdv=taesdv)


def item_status(models_dir: str | os.PathLike) -> dict[str, list[str]]:
    """For each item: the files of the README layout still missing under `models_dir` (empty: complete)."""
    root = Path(models_dir)
    return {name: [remote.target for remote in remotes if not _on_disk(remote, root)]
            for name, (_, remotes) in ITEMS.items()}
