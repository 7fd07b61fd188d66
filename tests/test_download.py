"""`rain_core.loading.download` and `rain download` against a local hub on 127.0.0.1: the real huggingface_hub client
code runs, the files sit in the real repositories' layout, and no test touches the internet."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest
from hub_server import LocalHub

from rain_core.cli import main
from rain_core.loading.download import ITEMS, DownloadError, HubUnreachable, download_models

TAESDV_PATH = "/madebyollin/taesdv/raw/main/taesdv.pth"


def _content(name: str, size: int) -> bytes:
    seed = name.encode()
    return (seed * (size // len(seed) + 1))[:size]


def _release() -> dict[tuple[str, str], bytes]:
    """Small stand-ins for every hub file of ITEMS, under their real repository and path."""
    files = {}
    for _, remotes in ITEMS.values():
        for remote in remotes:
            if remote.repo_id:
                files[(remote.repo_id, remote.path_in_repo)] = _content(remote.path_in_repo, 3000 + len(files) * 517)
    return files


@pytest.fixture
def hub(monkeypatch):
    with LocalHub(_release(), plain={TAESDV_PATH: _content("taesdv", 2048)}) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("RAIN_TAESDV_URL", server.url + TAESDV_PATH)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        yield server


def _files_under(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())


def test_every_item_lands_in_the_readme_layout_with_progress_and_the_users_umask(hub, tmp_path):
    calls = []
    result = download_models("all", tmp_path / "models", progress=lambda d, t, n: calls.append((d, t, n)))
    models = tmp_path / "models"
    assert _files_under(models) == sorted([
        "clip_vision/sd-image-variations/config.json", "clip_vision/sd-image-variations/model.safetensors",
        "rain/RAIN-v0.1/motion_unet.pth", "rain/RAIN-v0.1/pose_guider.pth", "rain/RAIN-v0.1/reference_unet.pth",
        "rain/dwpose/dw-ll_ucoco_384.onnx", "rain/dwpose/yolox_l.onnx", "vae/sd-vae-ft-mse/config.json",
        "vae/sd-vae-ft-mse/diffusion_pytorch_model.safetensors", "vae_approx/taesdv.pth"])
    release = _release()
    for (repo, path), content in release.items():
        remote = next(r for _, rs in ITEMS.values() for r in rs if (r.repo_id, r.path_in_repo) == (repo, path))
        assert (models / remote.target).read_bytes() == content, remote.target
    assert (models / "vae_approx/taesdv.pth").read_bytes() == _content("taesdv", 2048)
    assert set(result["files"].values()) == {"downloaded"}
    hub_bytes = sum(len(c) for c in release.values())
    assert calls and calls[-1][0] == result["bytes"] == hub_bytes + 2048
    assert all(d2 >= d1 for (d1, _, _), (d2, _, _) in zip(calls, calls[1:])), "progress never goes back"
    umask = os.umask(0)
    os.umask(umask)
    for name in ("rain/RAIN-v0.1/motion_unet.pth", "vae_approx/taesdv.pth"):
        assert stat.S_IMODE((models / name).stat().st_mode) == 0o666 & ~umask, name


def test_a_second_run_requests_no_file_and_a_wrong_size_file_is_fetched_again(hub, tmp_path):
    download_models("rain", tmp_path)
    target = tmp_path / "rain/RAIN-v0.1/pose_guider.pth"
    target.write_bytes(b"truncated")
    hub.requests.clear()
    result = download_models("rain", tmp_path)
    assert result["files"] == {"rain/RAIN-v0.1/reference_unet.pth": "present",
                               "rain/RAIN-v0.1/motion_unet.pth": "present",
                               "rain/RAIN-v0.1/pose_guider.pth": "downloaded"}
    assert [p for m, p, _ in hub.requests if m == "GET"] == ["/Pscgylotti/RAIN-v0.1/resolve/main/pose_guider.pth"]
    assert target.read_bytes() == _release()[("Pscgylotti/RAIN-v0.1", "pose_guider.pth")]


def test_a_dropped_connection_resumes_with_a_range_request(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants

    # The client writes in chunks of DOWNLOAD_CHUNK_SIZE (10 MB): smaller ones let a 3.5 kB file be cut mid-way.
    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 256)
    hub.drop_after["motion_unet.pth"] = 1024
    download_models("rain", tmp_path)
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith("motion_unet.pth")]
    assert len(ranges) == 2 and ranges[0] is None, ranges
    assert ranges[1].startswith("bytes=") and int(ranges[1][6:].rstrip("-")) > 0, "the retry resumes, not restarts"
    assert (tmp_path / "rain/RAIN-v0.1/motion_unet.pth").read_bytes() == _release()[("Pscgylotti/RAIN-v0.1",
                                                                                     "motion_unet.pth")]


def test_a_size_mismatch_leaves_nothing_under_the_final_name(hub, tmp_path):
    hub.announce_size["reference_unet.pth"] = 10_000
    with pytest.raises(DownloadError, match="do not match the size"):
        download_models("rain", tmp_path)
    assert not (tmp_path / "rain/RAIN-v0.1/reference_unet.pth").exists()
    assert not [p for p in tmp_path.rglob("*.incomplete")]


def test_an_alternative_file_keeps_its_own_name(tmp_path, monkeypatch):
    files = {k: v for k, v in _release().items() if k[1] != "image_encoder/model.safetensors"}
    files[("lambdalabs/sd-image-variations-diffusers", "image_encoder/pytorch_model.bin")] = b"pickled weights"
    with LocalHub(files) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        result = download_models("image-encoder", tmp_path)
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        offline = download_models("image-encoder", tmp_path)
    assert _files_under(tmp_path) == ["clip_vision/sd-image-variations/config.json",
                                      "clip_vision/sd-image-variations/pytorch_model.bin"]
    assert list(result["files"]) == _files_under(tmp_path), "the report names the file as it is on disk"
    assert offline["files"] == dict.fromkeys(_files_under(tmp_path), "present")


def test_offline_mode_requests_nothing_and_names_what_is_missing(hub, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE=1") as error:
        download_models("vae", tmp_path)
    assert "diffusion_pytorch_model.safetensors" in str(error.value)
    assert hub.requests == []


def test_offline_mode_with_everything_present_succeeds(hub, tmp_path, monkeypatch):
    download_models("dwpose", tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub.requests.clear()
    assert set(download_models("dwpose", tmp_path)["files"].values()) == {"present"}
    assert hub.requests == []


def test_an_unreachable_hub_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    with pytest.raises(HubUnreachable, match="cannot reach the hub at http://127.0.0.1:9"):
        download_models("rain", tmp_path)
    assert not any(tmp_path.rglob("*.pth"))


def test_rain_download_command(hub, tmp_path, capsys):
    code = main(["download", "--what", "vae,dwpose", "--models-dir", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    summary = json.loads(out)
    assert summary["files"]["vae/sd-vae-ft-mse/config.json"] == "downloaded"
    assert (tmp_path / "rain/dwpose/yolox_l.onnx").is_file()


@pytest.mark.parametrize("case", ["unreachable", "unknown_item", "offline"])
def test_rain_download_bad_cases_exit_2_with_a_message(case, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    what, expected = "rain", "cannot reach the hub"
    if case == "unknown_item":
        what, expected = "rain,weights", "unknown item weights"
    elif case == "offline":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        expected = "HF_HUB_OFFLINE=1"
    code = main(["download", "--what", what, "--models-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2, err
    assert expected in err and "Traceback" not in err


def test_download_then_convert_gives_a_loadable_safetensors_model(tmp_path, tiny_models, monkeypatch):
    import torch
    from conftest import write_official_checkpoint

    from rain_core.loading import load_rain

    # the tiny stand-in of the release, served in the real repositories' layout
    official = write_official_checkpoint(tiny_models, tmp_path / "official")
    files = {("Pscgylotti/RAIN-v0.1", name): (official / name).read_bytes()
             for name in ("reference_unet.pth", "motion_unet.pth", "pose_guider.pth")}
    for file in (official / "image_encoder").iterdir():
        files[("lambdalabs/sd-image-variations-diffusers", f"image_encoder/{file.name}")] = file.read_bytes()
    models = tmp_path / "models"
    folder = models / "rain" / "RAIN-v0.1"
    folder.mkdir(parents=True)
    # the released model is SD-1.5 sized and needs no config; the tiny stand-in brings its own
    shutil.copy(official / "rain_config.json", folder / "rain_config.json")
    with LocalHub(files) as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        result = download_models(["rain", "image-encoder"], models, convert=True)
    converted = load_rain(result["converted"])
    for (name, x), (_, y) in zip(tiny_models.state_dict().items(), converted.state_dict().items()):
        assert torch.equal(x, y), name


def test_rain_info_says_which_items_are_downloaded(hub, tmp_path, capsys):
    download_models("dwpose", tmp_path)
    code = main(["info", "--models-dir", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    downloads = json.loads(out)["downloads"]
    assert downloads["dwpose"] == "complete"
    assert downloads["taesdv"] == {"missing": ["vae_approx/taesdv.pth"]}


def _leave_partial(folder, name: str, content: bytes, etag: str) -> None:
    """What an interrupted run leaves beside the final name."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".{name}.incomplete").write_bytes(content)
    (folder / f".{name}.incomplete.etag").write_text(etag)


def test_a_run_resumes_the_partial_file_an_interrupted_run_left(hub, tmp_path):
    import hashlib

    content = _release()[("Pscgylotti/RAIN-v0.1", "motion_unet.pth")]
    folder = tmp_path / "rain/RAIN-v0.1"
    _leave_partial(folder, "motion_unet.pth", content[:1000], hashlib.sha256(content).hexdigest())
    download_models("rain", tmp_path)
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith("motion_unet.pth")]
    assert ranges == ["bytes=1000-"], ranges
    assert (folder / "motion_unet.pth").read_bytes() == content
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


def test_a_partial_file_of_another_version_is_started_again(hub, tmp_path):
    content = _release()[("Pscgylotti/RAIN-v0.1", "motion_unet.pth")]
    folder = tmp_path / "rain/RAIN-v0.1"
    _leave_partial(folder, "motion_unet.pth", b"x" * 1000, "an older version")
    download_models("rain", tmp_path)
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith("motion_unet.pth")]
    assert ranges == [None], ranges
    assert (folder / "motion_unet.pth").read_bytes() == content


def test_ctrl_c_mid_file_keeps_the_partial_bytes_and_the_next_run_resumes_them(hub, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "DOWNLOAD_CHUNK_SIZE", 512)

    chunks = []

    def ctrl_c_after_a_kilobyte(done, total, name):
        chunks.append(name)
        if chunks.count("motion_unet.pth") == 3:  # two 512-byte chunks of it are written
            raise KeyboardInterrupt  # what Ctrl-C raises in the middle of the read loop

    with pytest.raises(KeyboardInterrupt):
        download_models("rain", tmp_path, progress=ctrl_c_after_a_kilobyte)
    folder = tmp_path / "rain/RAIN-v0.1"
    assert not (folder / "motion_unet.pth").exists(), "never a partial file under the final name"
    kept = (folder / ".motion_unet.pth.incomplete").stat().st_size
    assert kept == 1024
    hub.requests.clear()
    download_models("rain", tmp_path)
    ranges = [r for m, p, r in hub.requests if m == "GET" and p.endswith("motion_unet.pth")]
    assert ranges == [f"bytes={kept}-"], ranges
    assert (folder / "motion_unet.pth").read_bytes() == _release()[("Pscgylotti/RAIN-v0.1", "motion_unet.pth")]
