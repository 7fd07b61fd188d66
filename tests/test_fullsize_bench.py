"""bench/fullsize_cpu.py --tiny: the released model's path (stand-in hub → rain download → rain animate) and the
half-precision table, on tiny networks in the released file layout, in seconds."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_fullsize_bench_smoke_run_goes_through_download_and_writes_rows_and_errors(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("fullsize_cpu", ROOT / "bench" / "fullsize_cpu.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the bench's own children ask the stand-in, whatever the caller says
    out = tmp_path / "fullsize_cpu.json"
    bench.main(["--tiny", "--root", str(tmp_path / "run"), "--out", str(out), "--wait-memory-s", "0"])
    results = json.loads(out.read_text())
    assert results["via_download"] is True and results["tiny"] is True
    assert results["download"]["files"]["clip_vision/sd-image-variations/pytorch_model.bin"] == "downloaded"
    assert {"cpu", "cores", "memory_gib", "torch"} <= set(results["machine"])
    rows = {(row["precision"], row["size"]): row for row in results["rows"]}
    assert set(rows) == {("fp32", 32), ("bf16", 32)}
    for (precision, _), row in rows.items():
        assert row["exit_code"] == 0 and row["dtype"] == {"fp32": "float32", "bf16": "bfloat16"}[precision]
        assert row["frames"] == row["frames_out"] == 24 and row["steady_ticks"] == 3
        assert row["load_s"] > 0 and row["s_per_tick"] > 0 and row["cpu_s_per_tick"] > 0
        assert row["peak_rss_gib"] >= row["rss_gib"]["loaded"] > 0
    errors = results["precision_errors"]["networks"]
    assert set(errors) == {"image_encoder", "reference_unet", "pose_guider", "denoising_unet", "vae_decode",
                           "taesdv_decode", "stream"}
    for name, entry in errors.items():
        for variant in ("bf16", "fp16") + (() if name == "stream" else ("bf16_emulated",)):
            assert entry[variant]["finite"] and 0 < entry[variant]["relative_error"] < 0.2, (name, variant)
    assert errors["stream"]["frames_compared"] == 8 and errors["stream"]["bf16"]["frames_psnr_db"] > 20
    assert "frames_psnr_db" in errors["denoising_unet"]["bf16"] and "frames_psnr_db" in errors["vae_decode"]["fp16"]
    assert "fp16_kernels" in errors["pose_guider"]

    # a resumed run that measures another size (--keep) keeps every row measured before, and the precision table
    bench.main(["--tiny", "--root", str(tmp_path / "run"), "--out", str(out), "--wait-memory-s", "0", "--keep",
                "--sizes", "16", "--precisions", "bf16", "--skip", "errors"])
    resumed = json.loads(out.read_text())
    kept = {(row["precision"], row["size"]): row for row in resumed["rows"]}
    assert set(kept) == {("fp32", 32), ("bf16", 32), ("bf16", 16)}
    assert kept[("fp32", 32)] == rows[("fp32", 32)] and kept[("bf16", 16)]["exit_code"] == 0
    assert resumed["precision_errors"] == results["precision_errors"]
