"""The CPU fast path (rain_core/cpu_fast.py): the compiled steady-state tick equals the eager one, the fallback where
no compiler exists runs the eager tick exactly, and the OpenMP wait policy is set only where it can take effect."""

from __future__ import annotations

import dataclasses
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from rain_core import RainStream, StreamConfig
from rain_core.cpu_fast import NO_COMPILE_ENV, compiler_problem, cpu_summary, prefer_passive_wait

ROOT = Path(__file__).resolve().parents[1]


def _stream_frames(models, fast_path: str, poses: torch.Tensor, reference: torch.Tensor) -> tuple[torch.Tensor, RainStream]:
    """Warm-up, steady ticks and flush of a 2-level stream, every frame it returns."""
    config = StreamConfig(levels=2, frames_per_cohort=2, steps=2, height=32, width=32, fast_path=fast_path)
    stream = RainStream(models, config)
    stream.set_reference(reference)
    frames = [stream.push(poses[i : i + 3]) for i in range(0, poses.shape[0], 3)]  # chunks across cohorts
    frames.append(stream.flush())
    return torch.cat(frames), stream


def _inputs(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    poses = torch.rand(13, 32, 32, 3, generator=generator)
    reference = torch.rand(32, 32, 3, generator=generator)
    return poses, reference


def test_compile_without_a_compiler_runs_the_eager_tick_exactly(tiny_models, monkeypatch, caplog):
    monkeypatch.setenv(NO_COMPILE_ENV, "1")
    poses, reference = _inputs()
    eager, _ = _stream_frames(tiny_models, "eager", poses, reference)
    with caplog.at_level(logging.WARNING, logger="rain.cpu"):
        fallback, stream = _stream_frames(tiny_models, "compile", poses, reference)
    assert torch.equal(fallback, eager)
    assert fallback.shape[0] == poses.shape[0]
    unet = stream._tick()._unet
    assert not unet.active and NO_COMPILE_ENV in unet.problem and unet.compiled_calls == 0
    assert stream.stats["fast_path"] == "compile"
    warnings = [r.getMessage() for r in caplog.records if r.name == "rain.cpu"]
    assert len(warnings) <= 1 and all("eagerly" in message for message in warnings)


def test_auto_runs_eagerly_on_the_cpu_and_compile_is_opt_in(tiny_models, monkeypatch):
    config = StreamConfig(levels=2, frames_per_cohort=2, steps=2, height=32, width=32)
    monkeypatch.delenv(NO_COMPILE_ENV, raising=False)
    assert RainStream(tiny_models, config).stats["fast_path"] == "eager"  # a compiler here or not: start promptly
    asked = dataclasses.replace(config, fast_path="compile")
    assert RainStream(tiny_models, asked).stats["fast_path"] == "compile"  # nothing compiles before a tick


def test_a_compile_that_fails_falls_back_to_the_eager_tick_for_good(tiny_models, monkeypatch, caplog):
    monkeypatch.delenv(NO_COMPILE_ENV, raising=False)
    if compiler_problem() is not None:
        pytest.skip(f"torch.compile cannot build here: {compiler_problem()}")
    poses, reference = _inputs(2)
    eager, _ = _stream_frames(tiny_models, "eager", poses, reference)
    config = StreamConfig(levels=2, frames_per_cohort=2, steps=2, height=32, width=32, fast_path="eager")
    stream = RainStream(tiny_models, config)
    stream.set_reference(reference)
    unet = stream._tick().compile_steady_unet(mode="no-such-mode")  # torch.compile refuses it on the first steady call
    with caplog.at_level(logging.WARNING, logger="rain.cpu"):
        frames = [stream.push(poses[i : i + 3]) for i in range(0, poses.shape[0], 3)]
    frames = torch.cat([*frames, stream.flush()])
    assert torch.equal(frames, eager)  # the failed call was repeated eagerly, and every later one ran eagerly
    assert not unet.active and "no-such-mode" in unet.problem and unet.compiled_calls == 0
    assert any("torch.compile failed" in r.getMessage() for r in caplog.records if r.name == "rain.cpu")


def test_compiler_problem_names_the_switch_and_a_missing_compiler(monkeypatch):
    monkeypatch.setenv(NO_COMPILE_ENV, "1")
    assert NO_COMPILE_ENV in compiler_problem()
    monkeypatch.setenv(NO_COMPILE_ENV, "0")
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.delenv("CXX", raising=False)
    problem = compiler_problem()
    assert problem is not None and "no C++ compiler" in problem and "g++" in problem


def test_passive_wait_is_set_only_before_torch_and_never_over_the_users_choice():
    assert "torch" in sys.modules
    environ = {}
    assert prefer_passive_wait(environ) is None and environ == {}  # too late in this process: nothing changes
    script = "import os, rain_core, torch; print(os.environ.get('OMP_WAIT_POLICY'))"
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "RAIN_CPU_TUNING")}
    base["PYTHONPATH"] = str(ROOT)
    for extra, expected in (({}, "PASSIVE"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE"), ({"RAIN_CPU_TUNING": "0"}, "None")):
        result = subprocess.run([sys.executable, "-c", script], env={**base, **extra}, capture_output=True, text=True,
                                cwd=ROOT, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected, (extra, result.stdout, result.stderr)


def test_a_host_that_loaded_torch_first_is_told_how_to_stop_spinning(monkeypatch, caplog):
    import rain_core.cpu_fast as cpu_fast

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("RAIN_CPU_TUNING", raising=False)
    monkeypatch.setattr(cpu_fast, "_WAIT_POLICY_TOO_LATE", False)
    monkeypatch.setattr(cpu_fast, "_warned", set())
    cpu_fast.prefer_passive_wait()  # torch is loaded in this process: too late, remembered
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with caplog.at_level(logging.WARNING, logger="rain.cpu"):
            cpu_fast.note_wait_policy()
            cpu_fast.note_wait_policy()
    finally:
        torch.set_num_threads(threads)
    messages = [r.getMessage() for r in caplog.records if r.name == "rain.cpu"]
    assert len(messages) == 1 and "OMP_WAIT_POLICY=PASSIVE" in messages[0]


def test_compiled_code_is_cached_under_rain_unless_the_user_chose_a_folder(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from rain_core.cpu_fast import CACHE_ENV, cache_dir

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv(CACHE_ENV, default_cache_dir())  # what importing inductor puts there: not a choice
    assert cache_dir() == tmp_path / "xdg" / "rain" / "inductor"
    assert os.environ[CACHE_ENV] == str(tmp_path / "xdg" / "rain" / "inductor")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"


def test_cpu_summary_reports_the_cpu():
    summary = cpu_summary()
    assert summary["capability"] == torch.backends.cpu.get_cpu_capability()
    assert isinstance(summary["native_bf16"], bool) and summary["threads"] == torch.get_num_threads()


@pytest.mark.slow
def test_compiled_stream_equals_eager_over_warmup_steady_ticks_and_flush(tiny_models, tmp_path, monkeypatch):
    """Minutes the first time on a busy 2-core machine (inductor builds C++), seconds from the cache."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", os.environ.get("TORCHINDUCTOR_CACHE_DIR") or str(tmp_path))
    monkeypatch.delenv(NO_COMPILE_ENV, raising=False)
    if compiler_problem() is not None:
        pytest.skip(f"torch.compile cannot build here: {compiler_problem()}")
    poses, reference = _inputs(1)
    eager, _ = _stream_frames(tiny_models, "eager", poses, reference)
    compiled, stream = _stream_frames(tiny_models, "compile", poses, reference)
    unet = stream._tick()._unet
    assert unet.active, unet.problem
    assert unet.compiled_calls >= 4  # every steady tick (2 levels × 2 frames: 6 cohorts, 2 UNet calls… once each)
    assert compiled.shape == eager.shape
    assert (compiled - eager).abs().max().item() <= 1e-4
