"""Every benchmark script still starts: `--help` for each entry point of bench/ (and bench/gpu/), and a small run
of those that have a small mode and need nothing outside this repository, so no bench silently rots.

Benches that need a ComfyUI, the authors' checkout or a second environment (compare_training's reference side)
run `--help` only; those whose small run is tested elsewhere say where. The scripts run in this process (their
imports are shared, so the file takes seconds, not a subprocess's torch import per script); the torch thread
count and the working folder are put back after each. Also here: compare_training's gradient comparison, on
synthetic gradients (the reference side needs its own environment).
"""

from __future__ import annotations

import contextlib
import io
import os
import runpy
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
BUILTIN = ROOT / "rain_core" / "assets" / "tiny-rain"


# What bench/ holds beside its scripts: modules the scripts (and tests) import, never run on their own.
MODULES = {"measure.py": "the measuring helpers (trace_ops, count_flops, ...) of the benches and tests",
           "random_weights.py": "randomize_parameters: random values for every parameter (benches and tests)"}


def entry_points() -> list[Path]:
    """bench/*.py (less MODULES), the bench/gpu/*.py files that run as scripts, and a study's tools beside its page
    (docs/*/*.py)."""
    scripts = [p for p in sorted(BENCH.glob("*.py")) if p.name not in MODULES]
    scripts += [p for p in sorted((BENCH / "gpu").glob("*.py")) if 'if __name__ == "__main__"' in p.read_text()]
    scripts += sorted(ROOT.glob("docs/*/*.py"))
    return scripts


# A small run where the script has one and it needs only this repository; TMP is replaced by a temporary folder.
SMALL = {
    "stream_cpu.py": ["--frames", "24", "--size", "16", "--interleaved-ticks", "2"],
    "cpu_profile.py": ["--threads", "1", "--ticks", "1", "--no-ops", "--top", "3"],
    "denoise_levels.py": [str(BUILTIN), "--clips", "1", "--frames", "4"],
    "temporal_claim.py": ["--out", "TMP/claim.png"],
    "standin_hub.py": ["build", "--root", "TMP/hub", "--tiny"],
}
HELP_ONLY = {  # why no small run here
    "comfy_overhead.py": "needs a ComfyUI checkout and its venv (COMFYUI_DIR, COMFY_PYTHON)",
    "comfy_long_video.py": "needs a ComfyUI checkout and its venv; its --smoke runs in tests/test_comfyui_long_video.py",
    "compare_authors.py": "needs a run folder of the authors' side",
    "compare_training.py": "needs the reference environment (Moore-AnimateAnyone, diffusers 0.24)",
    "compare_training_reference.py": "runs in the reference environment only",
    "cpu_live.py": "starts worker processes per round (minutes); bench/results/cpu_live.json is its last run",
    "live_latency.py": "serves a route and plays a source for seconds; bench/results/live_latency.json",
    "live_load.py": "its --smoke run (a server and clients, ~1 min) is tests/test_live_load.py",
    "quality.py": "small run tested in tests/test_train_shipped.py",
    "batch_scale.py": "--smoke tested in tests/test_batch.py (slow tier: it starts Ray workers, ~60 s here)",
    "gpu_stream.py": "tiny run tested in tests/test_accel.py",
    "fullsize_cpu.py": "tiny run (hub, download, two rows, the precision table) tested in tests/test_fullsize_bench.py",
    "precision_errors.py": "tiny run tested in tests/test_fullsize_bench.py (through fullsize_cpu.py)",
    "tick_profile_cpu.py": "full-size networks (tens of seconds even at 64 px)",
    "model_flops.py": "builds the full-size networks on meta tensors (~25 s on the 2-core machine)",
    "authors_unet.py": "needs the authors' checkout (bench/gpu/authors.py runs it)",
}


def _run_script(path: Path, argv: list[str], cwd: Path) -> tuple[int, str]:
    """Run a script as `python path argv...` would, in this process; (exit code, stdout + stderr)."""
    threads, old_argv, old_cwd, old_path = torch.get_num_threads(), sys.argv, os.getcwd(), list(sys.path)
    output = io.StringIO()
    code = 0
    try:
        sys.argv = [str(path), *argv]
        sys.path.insert(0, str(path.parent))
        os.chdir(cwd)
        with contextlib.redirect_stdout(output), contextlib.redirect_stderr(output):
            runpy.run_path(str(path), run_name="__main__")
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else (0 if exit_.code is None else 1)
    finally:
        sys.argv, sys.path[:] = old_argv, old_path
        os.chdir(old_cwd)
        torch.set_num_threads(threads)
    return code, output.getvalue()


@pytest.mark.parametrize("script", entry_points(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_bench_script_starts_and_its_small_mode_runs(script, tmp_path):
    name = script.name
    assert name in SMALL or name in HELP_ONLY, f"{script.relative_to(ROOT)} is new: give it a small run in SMALL or a reason in HELP_ONLY"
    code, text = _run_script(script, ["--help"], tmp_path)
    assert code == 0 and ("usage" in text.lower() or len(text) > 200), f"{name} --help:\n{text[-2000:]}"
    if name in SMALL:
        argv = [arg.replace("TMP", str(tmp_path)) for arg in SMALL[name]]
        code, text = _run_script(script, argv, tmp_path)
        assert code == 0, f"{name} {' '.join(argv)} exited {code}:\n{text[-3000:]}"
        assert text.strip(), f"{name} printed nothing"
    assert not [p for p in tmp_path.rglob("*") if "rain-tmp" in p.name]


def _compare_module():
    return runpy.run_path(str(BENCH / "compare_training.py"), run_name="compare_training")


def test_compare_training_compares_one_sided_gradients_against_zero_with_the_same_tolerance():
    """compare_training's comparison on synthetic gradients: a tensor only the reference produces (our
    single-token cross-attention skips to_q/to_k/norm2, whose reference gradient is ~0) passes when it is ~0 and
    fails when it is not; a tensor only we produce likewise; a plain difference is found as the worst tensor."""
    compare = _compare_module()["compare_gradients"]
    generator = torch.Generator().manual_seed(0)
    shared = {f"unet.block{i}.weight": torch.randn(64, generator=generator) for i in range(4)}
    roundoff = 1e-9 * torch.randn(32, generator=generator)  # what the reference computes for to_q's gradient

    result = compare(dict(shared), {**shared, "attn2.to_q.weight": roundoff})
    assert result["one_sided"] == ["attn2.to_q.weight"] and "attn2.to_q.weight" in result["zeros"]
    assert max(result["all"], result["worst_error"], result["zero_error"]) <= 1e-5

    real = 0.05 * torch.randn(32, generator=generator)  # a gradient that is really there and we do not produce
    result = compare(dict(shared), {**shared, "attn2.to_q.weight": real})
    assert result["zero_error"] > 1e-5 or result["all"] > 1e-5, "a missing real gradient must fail"

    result = compare({**shared, "extra.weight": real}, dict(shared))  # only ours: compared against zero as well
    assert result["one_sided"] == ["extra.weight"] and max(result["all"], result["zero_error"]) > 1e-5

    changed = {**shared, "unet.block2.weight": shared["unet.block2.weight"] * 1.001}
    result = compare(changed, dict(shared))
    assert result["worst"] == "unet.block2.weight" and result["worst_error"] == pytest.approx(1e-3, rel=1e-3)
    assert result["one_sided"] == [] and result["zero_error"] == 0.0
