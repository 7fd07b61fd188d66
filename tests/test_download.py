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


@pytest.fixture
def served(monkeypatch):
    """Bytes the local hub sends, per request path (summed over requests): what a resume saves shows here."""
    import hub_server

    sent: dict[str, int] = {}
    write = hub_server._write

    def counting_write(handler, content, start, count=None):
        path = handler.path.split("?", 1)[0]
        sent[path] = sent.get(path, 0) + (hub_server._size(content) - start if count is None else count)
        write(handler, content, start, count)

    monkeypatch.setattr(hub_server, "_write", counting_write)
    return sent


MOTION = "/Pscgylotti/RAIN-v0.1/resolve/main/motion_unet.pth"


def _motion_gets(hub) -> list[str | None]:
    """The Range headers of the GETs of motion_unet.pth, in order (None: from the start)."""
    return [r for m, p, r in hub.requests if m == "GET" and p == MOTION]


def _hidden(folder) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*"))


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
    assert _hidden(models) == [], "no partial file, version record or cache is left beside complete files"
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


def test_a_dropped_connection_resumes_with_a_range_request(hub, served, tmp_path, monkeypatch):
    import rain_core.loading.download

    # chunks of 256 bytes (not 10 MB) let a 3.5 kB file be cut mid-way
    monkeypatch.setattr(rain_core.loading.download, "CHUNK_BYTES", 256)
    hub.drop_after["motion_unet.pth"] = 1024
    download_models("rain", tmp_path)
    content = _release()[("Pscgylotti/RAIN-v0.1", "motion_unet.pth")]
    assert _motion_gets(hub) == [None, "bytes=1024-"], "the retry resumes, not restarts"
    assert served[MOTION] == len(content), "no byte is sent twice"
    assert (tmp_path / "rain/RAIN-v0.1/motion_unet.pth").read_bytes() == content


def test_a_lost_network_mid_file_is_hub_unreachable_and_the_next_run_resumes(hub, served, tmp_path, monkeypatch):
    import rain_core.loading.download

    class NetworkLostMidFile(dict):  # the GET of motion_unet.pth sends 1024 bytes, and then the hub is gone
        def pop(self, key, default=None):
            if key == "motion_unet.pth":
                hub.server.shutdown()
                hub.server.server_close()  # from now on: connection refused
                return 1024
            return default

    monkeypatch.setattr(rain_core.loading.download, "CHUNK_BYTES", 256)
    monkeypatch.setattr(rain_core.loading.download, "RETRY_PAUSE_S", 0.0)
    hub.drop_after = NetworkLostMidFile()
    with pytest.raises(HubUnreachable, match=f"{hub.url}: the connection failed while downloading "
                                             "Pscgylotti/RAIN-v0.1/motion_unet.pth"):
        download_models("rain", tmp_path)
    folder = tmp_path / "rain/RAIN-v0.1"
    content = _release()[("Pscgylotti/RAIN-v0.1", "motion_unet.pth")]
    assert not (folder / "motion_unet.pth").exists()
    assert (folder / ".motion_unet.pth.incomplete").read_bytes() == content[:1024]
    with LocalHub(_release()) as back:  # the network is back (the hub serves the same version)
        monkeypatch.setenv("HF_ENDPOINT", back.url)
        served.clear()
        result = download_models("rain", tmp_path)
    assert _motion_gets(back) == ["bytes=1024-"] and served[MOTION] == len(content) - 1024
    assert (folder / "motion_unet.pth").read_bytes() == content
    assert result["files"]["rain/RAIN-v0.1/motion_unet.pth"] == "downloaded" and _hidden(tmp_path) == []


def test_a_size_mismatch_leaves_nothing_under_the_final_name(hub, tmp_path):
    hub.announce_size["reference_unet.pth"] = 10_000
    with pytest.raises(DownloadError, match="do not match the size"):
        download_models("rain", tmp_path)
    assert not (tmp_path / "rain/RAIN-v0.1/reference_unet.pth").exists()
    assert _hidden(tmp_path) == [], "the bytes that do not match are not kept for a resume either"


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


def _leave_partial(folder, name: str, content: bytes, etag: str | None) -> None:
    """What an interrupted run leaves beside the final name: the bytes, and the hub version they are of."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f".{name}.incomplete").write_bytes(content)
    if etag is not None:
        (folder / f".{name}.incomplete.etag").write_text(etag)


def _hub_etag(content: bytes) -> str:
    import hashlib

    return hashlib.sha256(content).hexdigest()  # hub_server's ETag, without the quotes (get_hf_file_metadata's form)


def test_a_run_resumes_the_partial_file_an_interrupted_run_left(hub, served, tmp_path):
    content = _release()[("Pscgylotti/RAIN-v0.1", "motion_unet.pth")]
    folder = tmp_path / "rain/RAIN-v0.1"
    _leave_partial(folder, "motion_unet.pth", content[:1000], _hub_etag(content))
    download_models("rain", tmp_path)
    assert _motion_gets(hub) == ["bytes=1000-"]
    assert served[MOTION] == len(content) - 1000, "the kept 1000 bytes are not fetched again"
    assert (folder / "motion_unet.pth").read_bytes() == content
    assert _hidden(tmp_path) == []


@pytest.mark.parametrize("etag", ["an older version", None], ids=["changed_etag", "no_version_record"])
def test_a_partial_file_of_another_version_is_started_again(hub, served, tmp_path, etag):
    content = _release()[("Pscgylotti/RAIN-v0.1", "motion_unet.pth")]
    folder = tmp_path / "rain/RAIN-v0.1"
    _leave_partial(folder, "motion_unet.pth", b"x" * 1000, etag)
    download_models("rain", tmp_path)
    assert _motion_gets(hub) == [None]
    assert served[MOTION] == len(content)
    assert (folder / "motion_unet.pth").read_bytes() == content
    assert _hidden(tmp_path) == []


def test_a_partial_file_already_complete_is_renamed_without_a_request(hub, tmp_path):
    # a run stopped between its last byte and the rename
    content = _release()[("Pscgylotti/RAIN-v0.1", "motion_unet.pth")]
    folder = tmp_path / "rain/RAIN-v0.1"
    _leave_partial(folder, "motion_unet.pth", content, _hub_etag(content))
    download_models("rain", tmp_path)
    assert _motion_gets(hub) == []
    assert (folder / "motion_unet.pth").read_bytes() == content
    assert _hidden(tmp_path) == []


def test_ctrl_c_mid_file_keeps_the_partial_bytes_and_the_next_run_resumes_them(hub, served, tmp_path, monkeypatch):
    import rain_core.loading.download

    monkeypatch.setattr(rain_core.loading.download, "CHUNK_BYTES", 512)
    chunks = []

    def ctrl_c_after_a_kilobyte(done, total, name):
        chunks.append(name)
        if chunks.count("motion_unet.pth") == 2:  # called after each chunk written: two of 512 bytes are
            raise KeyboardInterrupt  # what Ctrl-C raises in the middle of the read loop

    with pytest.raises(KeyboardInterrupt):
        download_models("rain", tmp_path, progress=ctrl_c_after_a_kilobyte)
    folder = tmp_path / "rain/RAIN-v0.1"
    content = _release()[("Pscgylotti/RAIN-v0.1", "motion_unet.pth")]
    assert not (folder / "motion_unet.pth").exists(), "never a partial file under the final name"
    assert (folder / ".motion_unet.pth.incomplete").read_bytes() == content[:1024]
    assert (folder / ".motion_unet.pth.incomplete.etag").read_text() == _hub_etag(content)
    hub.requests.clear()
    served.clear()
    download_models("rain", tmp_path)
    assert _motion_gets(hub) == ["bytes=1024-"]
    assert served[MOTION] == len(content) - 1024, "the next run fetches only the missing bytes"
    assert (folder / "motion_unet.pth").read_bytes() == content
    assert _hidden(tmp_path) == []


def test_only_public_huggingface_hub_names_are_used():
    """Issue 31: rain_core.loading.download imports nothing private of huggingface_hub (no file_download.http_get)."""
    import ast
    import importlib
    from pathlib import Path

    import rain_core.loading.download

    tree = ast.parse(Path(rain_core.loading.download.__file__).read_text())
    imported = [(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
                and (node.module or "").startswith("huggingface_hub") for alias in node.names]
    assert imported, "the module does use huggingface_hub"
    for module, name in imported:
        if (module, name) == ("huggingface_hub", "constants"):  # the documented settings (HF_HUB_DOWNLOAD_TIMEOUT)
            continue
        assert module in ("huggingface_hub", "huggingface_hub.utils"), (module, name)
        exported = getattr(importlib.import_module(module), "__all__", None) or dir(importlib.import_module(module))
        assert name in exported and not name.startswith("_"), (module, name)
