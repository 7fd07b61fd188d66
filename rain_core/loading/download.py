"""Fetch the released files into the models/ layout the README documents, with huggingface_hub.

    models/rain/RAIN-v0.1/{reference_unet,motion_unet,pose_guider}.pth   Pscgylotti/RAIN-v0.1
    models/vae_approx/taesdv.pth                                          github.com/madebyollin/taesdv
    models/vae/sd-vae-ft-mse/                                             stabilityai/sd-vae-ft-mse
    models/clip_vision/sd-image-variations/                               lambdalabs/sd-image-variations-diffusers,
                                                                          folder image_encoder
    models/rain/dwpose/{yolox_l,dw-ll_ucoco_384}.onnx                     yzd-v/DWPose

`download_models(what, models_dir, progress=callback)` is the engine entry point (the `rain download` command and
the Load RAIN Model node call it). It uses huggingface_hub's public API only: `get_hf_file_metadata` + `hf_hub_url`
ask the size and version (ETag) of each file, and the bytes come through `get_session()` (the HTTP client
huggingface_hub configures: proxies, offline guard, headers from `build_hf_headers`, errors from
`hf_raise_for_status`). Not `hf_hub_download`: since huggingface/huggingface_hub#4306 (2.4.0, installed in
development, has it) it writes each attempt to a fresh temporary file and deletes it on failure, so no later run
could resume an interrupted one; and it would lay files out under their repository paths, not the README's. The
calls used here all exist at the declared lower bound (0.23.2: `requests` session; 1.x: `httpx`; 2.x: `httpx2`).
What it guarantees:
- never a partial file under a final name: the bytes of NAME go to `.NAME.incomplete` in the same folder (hidden,
  not a model extension: ComfyUI's model lists skip it), renamed onto NAME (atomic: same folder, same disk, even
  where a models/ sub-folder is a link to another disk) only when complete;
- sizes checked: the file is renamed only when its size equals the size the hub announced (else it is deleted and
  `DownloadError` says so), and a file already on disk is kept only when its size equals the hub's;
- resumable: the version of the partial bytes (the hub's ETag) is recorded in `.NAME.incomplete.etag`; a dropped
  connection resumes within the run with a Range request (up to RETRIES reconnections in a row that bring nothing),
  and a run stopped by Ctrl-C or a network loss leaves both files, which the next run resumes with a Range request
  when the hub still serves the same ETag, or starts again when it does not; files already complete are skipped,
  and nothing is left beside them;
- `HF_HUB_OFFLINE=1` is honoured: nothing is requested, and what is missing is named;
- an unreachable hub raises `HubUnreachable` naming the endpoint (the CLI exits 2 with it), before the first byte
  or during a file (its partial bytes are kept for the next run);
- progress: `progress(done_bytes, total_bytes, name)` after each chunk (ComfyUI's progress bar in the nodes), and a
  console bar unless `quiet`, both under the file's name on disk.
`HF_ENDPOINT` (a mirror, or the local hub of the tests) is read when the function runs, not at import.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from huggingface_hub import constants, get_hf_file_metadata, get_session, hf_hub_url
from huggingface_hub.utils import (
    EntryNotFoundError,
    HfHubHTTPError,
    RepositoryNotFoundError,
    build_hf_headers,
    hf_raise_for_status,
)
from huggingface_hub.utils import tqdm as hub_tqdm
from torch.hub import download_url_to_file

from .layout import layout_paths

ProgressCallback = Callable[[int, int, str], None]  # (done_bytes, total_bytes, file name)

TAESDV_URL = "https://github.com/madebyollin/taesdv/raw/main/taesdv.pth"
CHUNK_BYTES = 10 * 2**20  # read and written at a time (progress is reported per chunk)
RETRIES = 5  # reconnections in a row that bring no byte before a download gives up (HubUnreachable)
RETRY_PAUSE_S = 1.0  # the pause before such a reconnection


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


def _partial_names(final: Path) -> tuple[Path, Path]:
    """Where the bytes of `final` wait until complete, and the hub version (ETag) they are bytes of."""
    part = final.with_name(f".{final.name}.incomplete")
    return part, part.with_name(part.name + ".etag")


@contextmanager
def _get(url: str, headers: dict):
    """GET `url` as a stream through huggingface_hub's configured HTTP session (its proxies, its offline guard,
    its User-Agent): yields (status, chunk iterator). The session is `requests` before huggingface_hub 1.0 and
    `httpx` (`httpx2`) after it; both are public (`get_session`), only their streaming calls differ."""
    session = get_session()
    timeout = constants.HF_HUB_DOWNLOAD_TIMEOUT
    if callable(getattr(session, "stream", None)):  # httpx.Client (requests.Session.stream is a bool)
        with session.stream("GET", url, headers=headers, timeout=timeout, follow_redirects=True) as response:
            if response.status_code != 416:
                hf_raise_for_status(response)
            yield response.status_code, response.iter_bytes(CHUNK_BYTES)
    else:
        with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
            if response.status_code != 416:
                hf_raise_for_status(response)
            yield response.status_code, response.iter_content(CHUNK_BYTES)


def _fetch_hub(plan: _Plan, endpoint: str, callback, state: dict, quiet: bool) -> None:
    """One hub file, through public huggingface_hub calls only (`hf_hub_url`, `get_session`, `build_hf_headers`,
    `hf_raise_for_status`): bytes are appended to `.NAME.incomplete` beside the final name, whose hub version
    (ETag) is recorded in `.NAME.incomplete.etag`, and renamed onto the final name when the size is the hub's.
    A partial file of the same version is resumed with a Range request, within the run after a dropped
    connection and by the next run after Ctrl-C or a lost network; one of another version is started again."""
    name = f"{plan.remote.repo_id}/{plan.path_in_repo}"
    url = hf_hub_url(plan.remote.repo_id, plan.path_in_repo, endpoint=endpoint)
    part, version = _partial_names(plan.final)
    if part.exists() and (not plan.etag or not version.is_file() or version.read_text() != plan.etag
                          or (plan.size is not None and part.stat().st_size > plan.size)):
        part.unlink()
    version.write_text(plan.etag or "")
    headers = build_hf_headers()

    with open(part, "ab") as file, hub_tqdm(total=plan.size, initial=file.tell(), unit="B", unit_scale=True,
                                            unit_divisor=1024, desc=plan.final.name, disable=quiet) as bar:
        state["done"] += file.tell()
        retries = RETRIES
        while plan.size is None or file.tell() < plan.size:
            start, received = file.tell(), 0
            try:
                with _get(url, {**headers, "Range": f"bytes={start}-"} if start else headers) as (status, chunks):
                    if status == 416:  # nothing to send from `start`: the hub's file is shorter than announced
                        break
                    if start and status == 200:  # the Range was ignored: the whole file comes again
                        file.seek(0)
                        file.truncate()
                        state["done"] -= start
                        bar.reset(total=plan.size)
                    for chunk in chunks:
                        if chunk:
                            file.write(chunk)
                            received += len(chunk)
                            state["done"] += len(chunk)
                            bar.update(len(chunk))
                            if callback is not None:
                                callback(state["done"], state["total"], plan.final.name)
            except HfHubHTTPError as error:
                raise HubUnreachable(f"{endpoint}: the hub answered {_describe_network_error(error)} while "
                                     f"downloading {name}; run the same command again (this file resumes).") from None
            except Exception as error:  # a dropped connection, a timeout: go on from what is written
                if not _is_network_error(error):
                    raise
                retries = RETRIES if received else retries - 1
                if retries < 0:
                    raise HubUnreachable(f"{endpoint}: the connection failed while downloading {name} "
                                         f"({_describe_network_error(error)}); run the same command again: complete "
                                         "files are skipped and this one resumes.") from None
                if not received:
                    time.sleep(RETRY_PAUSE_S)
                continue
            if plan.size is None or not received:  # the response ended: all there is (checked below)
                break
    size = part.stat().st_size
    if plan.size is not None and size != plan.size:
        part.unlink()
        version.unlink(missing_ok=True)
        raise DownloadError(f"{name}: received {size} bytes, which do not match the size the hub announced "
                            f"({plan.size}); nothing was kept under the final name. Run the download again.")
    os.chmod(part, _umask_mode())
    os.replace(part, plan.final)  # same folder: atomic, the final name only ever holds a complete file
    version.unlink(missing_ok=True)
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
    from .saving import convert_official  # import time: torch and diffusers, needed only with --convert

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
