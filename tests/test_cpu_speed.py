"""CPU speed (docs/cpu-speed.md): the compiled steady-state tick (rain_core/stream/compiled.py) equals the eager one, a
second start loads it from the package on disk instead of compiling, the package's key covers what the compiled code
depends on, the fallback where no compiler exists (or compiling fails) runs the eager tick exactly; the background
builder (stream/background_build.py) and the package cache (stream/compile_cache.py); and the OpenMP wait policy
(rain_core/cpu.py) is set only where it can take effect."""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import rain_core.stream.tick as tick_module
from rain_core import RainStream, StreamConfig, cpu
from rain_core.cpu import cpu_summary, prefer_passive_wait
from rain_core.stream import background_build, compile_cache, compiled
from rain_core.stream.compiled import NO_COMPILE_ENV, SteadyPackage, compiler_problem

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


def _steady_package(models, reference_seed: int = 0):
    """The steady call's package description and inputs of a 2-level stream (what Tick.compile_steady_unet builds)."""
    poses, reference = _inputs(reference_seed)
    config = StreamConfig(levels=2, frames_per_cohort=2, steps=2, height=32, width=32, fast_path="eager")
    stream = RainStream(models, config)
    stream.set_reference(reference)
    tick = stream._tick()
    kv = models.denoising_unet.reference_kv(tick.reference)
    package = SteadyPackage(models.denoising_unet, tick.clip_tokens, tick.guidance, kv)
    channels, h, w = tick.latent_shape
    sample = torch.zeros(1, channels, tick.window, h, w)
    features = torch.zeros(1, models.config.pose_channels, tick.window, h, w)
    return package, (sample, tick.timesteps[0], features)


def test_the_package_key_follows_weights_threads_and_shapes_but_not_the_reference_values(tiny_models):
    from conftest import build_tiny_models

    package, inputs = _steady_package(tiny_models)
    key = package.key(*inputs)
    assert key == package.key(*inputs)
    other_reference, _ = _steady_package(tiny_models, reference_seed=5)  # K/V are inputs, not constants
    assert [t.shape for t in other_reference.reference] == [t.shape for t in package.reference]
    assert not all(torch.equal(a, b) for a, b in zip(other_reference.reference, package.reference))
    assert other_reference.key(*inputs) == key
    sample, timesteps, features = inputs
    assert package.key(sample[:, :, :2], timesteps[:, :2], features[:, :, :2]) != key
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(threads + 1)
        assert package.key(*inputs) != key  # inductor's kernels fix their thread count
    finally:
        torch.set_num_threads(threads)
    changed = build_tiny_models(seed=99)
    changed_package, _ = _steady_package(changed)
    changed_key = changed_package.key(*inputs)
    assert changed_key != key
    with torch.no_grad():  # weights changed in place (training): the remembered digest is not reused
        next(changed.denoising_unet.parameters()).add_(1.0)
    assert changed_package.key(*inputs) not in (changed_key, key)


def test_the_package_key_covers_rains_model_code(monkeypatch):
    monkeypatch.setattr(compiled, "_MODEL_CODE", None)  # read again, from where the module looks
    assert compiled._model_code_digest() != hashlib.sha256().digest()  # rain_core/models/*.py found and hashed


def test_auto_looks_for_a_package_with_weights_loaded_under_inference_mode_as_comfyui_does(monkeypatch, tmp_path):
    """ComfyUI runs nodes under torch.inference_mode, so the networks' tensors keep no version counter: looking for a
    saved package (the key hashes the weights) must still work, and with nothing saved the tick runs eagerly."""
    from conftest import build_tiny_models

    monkeypatch.delenv(NO_COMPILE_ENV, raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    if compiler_problem() is not None:
        pytest.skip(f"torch.compile cannot build here: {compiler_problem()}")
    poses, reference = _inputs(4)
    with torch.inference_mode():
        models = build_tiny_models()
        assert next(models.denoising_unet.parameters()).is_inference()
        eager, _ = _stream_frames(models, "eager", poses, reference)
        frames, stream = _stream_frames(models, "auto", poses, reference)
    assert torch.equal(frames, eager) and stream.stats["fast_path"] == "eager"
    assert compiled._WEIGHTS.get(models.denoising_unet) is not None  # the key was computed (and remembered)


def test_a_package_that_cannot_be_built_falls_back_to_the_eager_tick(tiny_models, monkeypatch, caplog, tmp_path):
    monkeypatch.delenv(NO_COMPILE_ENV, raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    if compiler_problem() is not None:
        pytest.skip(f"torch.compile cannot build here: {compiler_problem()}")
    monkeypatch.setattr(compiled, "_LOADED", {})
    monkeypatch.setattr(cpu, "_warned", set())

    def refuse(package, inputs, path):
        raise RuntimeError("export refused")

    monkeypatch.setattr(compiled, "compile_package", refuse)
    package, inputs = _steady_package(tiny_models)
    damaged = tmp_path / "aoti" / f"{package.key(*inputs)}.pt2"
    damaged.parent.mkdir(parents=True)
    damaged.write_bytes(b"not a package")
    poses, reference = _inputs(0)
    eager, _ = _stream_frames(tiny_models, "eager", poses, reference)
    with caplog.at_level(logging.WARNING, logger="rain.cpu"):
        frames, stream = _stream_frames(tiny_models, "compile", poses, reference)
    assert torch.equal(frames, eager)
    unet = stream._tick()._unet
    assert not unet.active and "export refused" in unet.problem and unet.compiled_calls == 0
    assert not damaged.exists()  # a file that does not load is removed (and built again), not kept
    messages = [r.getMessage() for r in caplog.records if r.name == "rain.cpu"]
    assert any("could not load" in m for m in messages) and any("torch.compile failed" in m for m in messages)


def test_auto_loads_a_compiled_tick_already_on_disk_and_never_compiles(tiny_models, monkeypatch, tmp_path):
    monkeypatch.delenv(NO_COMPILE_ENV, raising=False)
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    if compiler_problem() is not None:
        pytest.skip(f"torch.compile cannot build here: {compiler_problem()}")
    monkeypatch.setattr(compiled, "_LOADED", {})

    def never(*args):
        raise AssertionError("fast_path auto compiled")

    monkeypatch.setattr(compiled, "compile_package", never)
    monkeypatch.setenv(cpu.BACKGROUND_ENV, "0")  # and no background build either
    poses, reference = _inputs(4)
    eager, _ = _stream_frames(tiny_models, "eager", poses, reference)
    frames, stream = _stream_frames(tiny_models, "auto", poses, reference)  # nothing on disk: eager, nothing built
    assert torch.equal(frames, eager) and stream.stats["fast_path"] == "eager"
    assert not isinstance(stream._tick()._unet, compiled.CompiledUNet)

    package, inputs = _steady_package(tiny_models, reference_seed=4)
    path = tmp_path / "aoti" / f"{package.key(*inputs)}.pt2"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"stands for a package")
    loaded = []
    streams = []

    def load(where):  # a "package" that runs the eager call, so the frames must equal the eager ones exactly
        loaded.append(where)
        return lambda sample, timesteps, features, *extra: streams[-1]._tick()._unet_eager(sample, timesteps, features)

    monkeypatch.setattr(compiled, "_load_package", load)
    config = StreamConfig(levels=2, frames_per_cohort=2, steps=2, height=32, width=32)
    stream = RainStream(tiny_models, config)
    streams.append(stream)
    stream.set_reference(reference)
    out = [stream.push(poses[i : i + 3]) for i in range(0, poses.shape[0], 3)]
    out = torch.cat([*out, stream.flush()])
    assert stream.stats["fast_path"] == "compile" and loaded == [path]
    unet = stream._tick()._unet
    assert unet.active and unet.source == "cache" and unet.compiled_calls >= 4 and not unet.compile_missing
    assert torch.equal(out, eager)


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
    script = "import os, rain_core, torch; print(os.environ.get('OMP_WAIT_POLICY'), os.environ.get('GOMP_SPINCOUNT'))"
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "RAIN_CPU_TUNING", "GOMP_SPINCOUNT")}
    base["PYTHONPATH"] = str(ROOT)
    for extra, expected in (({}, "PASSIVE 10000"), ({"OMP_WAIT_POLICY": "ACTIVE"}, "ACTIVE None"),
                            ({"GOMP_SPINCOUNT": "0"}, "PASSIVE 0"), ({"RAIN_CPU_TUNING": "0"}, "None None")):
        result = subprocess.run([sys.executable, "-c", script], env={**base, **extra}, capture_output=True, text=True,
                                cwd=ROOT, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == expected, (extra, result.stdout, result.stderr)


def test_importing_rain_core_loads_no_torch():
    """rain_core/__init__.py imports rain_core.cpu to set the wait policy: neither may load torch (OpenMP reads the
    policy when torch loads)."""
    script = "import sys, rain_core, rain_core.cpu; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": str(ROOT)},
                            capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", (result.stdout, result.stderr)


def test_a_host_that_loaded_torch_first_is_told_how_to_stop_spinning(monkeypatch, caplog):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("RAIN_CPU_TUNING", raising=False)
    monkeypatch.setattr(cpu, "_WAIT_POLICY_TOO_LATE", False)
    monkeypatch.setattr(cpu, "_warned", set())
    cpu.prefer_passive_wait()  # torch is loaded in this process: too late, remembered
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with caplog.at_level(logging.WARNING, logger="rain.cpu"):
            cpu.note_wait_policy()
            cpu.note_wait_policy()
    finally:
        torch.set_num_threads(threads)
    messages = [r.getMessage() for r in caplog.records if r.name == "rain.cpu"]
    assert len(messages) == 1 and "OMP_WAIT_POLICY=PASSIVE" in messages[0]


def test_compiled_code_is_cached_under_rain_unless_the_user_chose_a_folder(monkeypatch, tmp_path):
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    from rain_core.stream.compile_cache import CACHE_ENV, cache_dir

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
    monkeypatch.setattr(compiled, "_LOADED", {})
    frames, stream = _stream_frames(tiny_models, "compile", poses, reference)
    unet = stream._tick()._unet
    assert unet.active, unet.problem
    assert unet.source in ("compiled", "cache")  # "cache": an earlier run filled TORCHINDUCTOR_CACHE_DIR
    assert unet.compiled_calls >= 4  # every steady tick (2 levels × 2 frames: 6 cohorts, 2 UNet calls… once each)
    assert frames.shape == eager.shape
    assert (frames - eager).abs().max().item() <= 1e-4

    # a second start (nothing loaded in this process) and another reference image: the package comes from disk
    monkeypatch.setattr(compiled, "_LOADED", {})
    other_poses, other_reference = _inputs(3)
    eager_other, _ = _stream_frames(tiny_models, "eager", other_poses, other_reference)
    loaded, stream = _stream_frames(tiny_models, "compile", other_poses, other_reference)
    unet = stream._tick()._unet
    assert unet.active and unet.source == "cache" and unet.compiled_calls >= 4, unet.problem
    assert (loaded - eager_other).abs().max().item() <= 1e-4
    # fast_path "auto" finds it too (the key it predicts before the first tick is the one the tick used)
    monkeypatch.setattr(compiled, "_LOADED", {})
    auto, stream = _stream_frames(tiny_models, "auto", other_poses, other_reference)
    unet = stream._tick()._unet
    assert stream.stats["fast_path"] == "compile" and unet.source == "cache" and unet.compiled_calls >= 4
    assert torch.equal(auto, loaded)


def test_a_background_job_rebuilds_the_same_steady_call_with_the_same_key(tiny_models, tmp_path):
    """What the background child gets (a job folder) is enough to rebuild the exact call: same key, same output."""
    package, inputs = _steady_package(tiny_models)
    generator = torch.Generator().manual_seed(7)
    inputs = (torch.randn(inputs[0].shape, generator=generator), inputs[1], torch.randn(inputs[2].shape, generator=generator))
    path = tmp_path / "aoti" / f"{package.key(*inputs)}.pt2"
    background_build._write_job(package, inputs, path, tmp_path / "job")
    rebuilt, rebuilt_inputs, rebuilt_path = background_build.read_job(tmp_path / "job")
    assert rebuilt_path == path and rebuilt.key(*rebuilt_inputs) == path.stem
    assert rebuilt.unet is not package.unet and rebuilt.names == package.names
    with torch.no_grad():
        expected = package.module()(*inputs, *package.extra_inputs())
        got = rebuilt.module()(*rebuilt_inputs, *rebuilt.extra_inputs())
    assert torch.equal(got, expected)


def test_auto_builds_no_background_tick_when_told_not_to_or_without_a_compiler(tiny_models, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(NO_COMPILE_ENV, raising=False)
    monkeypatch.setenv(cpu.BACKGROUND_ENV, "0")
    poses, reference = _inputs(2)
    _, stream = _stream_frames(tiny_models, "auto", poses, reference)
    assert not isinstance(stream._tick()._unet, compiled.CompiledUNet) and not (tmp_path / "aoti").exists()
    monkeypatch.delenv(cpu.BACKGROUND_ENV)
    monkeypatch.setenv(NO_COMPILE_ENV, "1")
    _, stream = _stream_frames(tiny_models, "auto", poses, reference)
    assert not isinstance(stream._tick()._unet, compiled.CompiledUNet) and not (tmp_path / "aoti").exists()


def test_a_library_stream_starts_no_background_build_unless_the_process_allows_it(tiny_models, monkeypatch, tmp_path):
    """RainStream from plain Python (a short script) with a compiler present: "auto" runs eagerly and starts no
    child; a long-lived host's `allow_background_compile()` (or RAIN_BACKGROUND_COMPILE=1) would allow one."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(cpu.BACKGROUND_ENV, raising=False)
    monkeypatch.setattr(cpu, "_HOST_ALLOWS_BACKGROUND", False)
    monkeypatch.setattr(tick_module, "compiler_problem", lambda: None)  # as on a machine with g++ (the tick asks)
    started = []
    monkeypatch.setattr(background_build.BackgroundBuild, "start", classmethod(lambda cls, *a: started.append(a)))
    poses, reference = _inputs(2)
    _, stream = _stream_frames(tiny_models, "auto", poses, reference)
    assert stream.stats["fast_path"] == "eager" and not started
    assert not cpu.background_compile_allowed()
    monkeypatch.setenv(cpu.BACKGROUND_ENV, "1")
    assert cpu.background_compile_allowed()
    monkeypatch.delenv(cpu.BACKGROUND_ENV)
    cpu.allow_background_compile()
    assert cpu.background_compile_allowed()
    monkeypatch.setenv(cpu.BACKGROUND_ENV, "0")  # the user's 0 wins over the host
    assert not cpu.background_compile_allowed()


@pytest.mark.slow
def test_auto_builds_the_compiled_tick_in_the_background_and_switches_to_it(tiny_models, tmp_path, monkeypatch):
    """A stream with fast_path "auto" and no package starts eagerly at once; a child process compiles the steady
    call; the stream switches when it is ready, with frames equal to the eager ones; the next start loads it."""
    import time

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv(NO_COMPILE_ENV, raising=False)
    monkeypatch.delenv(cpu.BACKGROUND_ENV, raising=False)
    monkeypatch.setattr(cpu, "_HOST_ALLOWS_BACKGROUND", True)  # what a long-lived host says
    if compiler_problem() is not None:
        pytest.skip(f"torch.compile cannot build here: {compiler_problem()}")
    monkeypatch.setattr(compiled, "_LOADED", {})
    poses, reference = _inputs(6)
    config = StreamConfig(levels=2, frames_per_cohort=2, steps=2, height=32, width=32)
    stream, eager = RainStream(tiny_models, config), RainStream(tiny_models, dataclasses.replace(config, fast_path="eager"))
    for each in (stream, eager):
        each.set_reference(reference)
    started, seen, difference = time.monotonic(), [], 0.0
    while time.monotonic() - started < 900:
        chunk = poses[len(seen) % 12 :][:2]
        frames, expected = stream.push(chunk), eager.push(chunk)
        assert frames.shape == expected.shape
        if frames.numel():
            difference = max(difference, (frames - expected).abs().max().item())
        seen.append(stream.stats["fast_path"])
        if seen[-1] == "compile" and seen.count("compile") >= 3:
            break
        time.sleep(0.2)  # paced like a live source: the child gets the CPU between ticks
    assert seen[0] == "eager" and seen[-1] == "compile", seen[-5:]
    unet = stream._tick()._unet
    assert unet.source == "background" and unet.compiled_calls >= 3 and unet.problem is None
    assert difference <= 1e-4
    assert list((tmp_path / "aoti").glob("*.pt2")) and not list((tmp_path / "aoti").glob("jobs/*/job.json"))
    monkeypatch.setattr(compiled, "_LOADED", {})
    _, again = _stream_frames(tiny_models, "auto", poses, reference)  # the next start loads what the child built
    assert again.stats["fast_path"] == "compile" and again._tick()._unet.source == "cache"


def test_a_background_build_that_fails_leaves_a_marker_and_is_not_retried_at_every_start(tiny_models, tmp_path):
    """A real child run on a job whose package name does not match what it rebuilds: it refuses, says why, cleans
    up, and the next start does not spawn another child for the same package."""
    import json
    import subprocess

    package, inputs = _steady_package(tiny_models)
    path = tmp_path / "aoti" / ("0" * 32 + ".pt2")  # not this call's key
    job = tmp_path / "aoti" / "jobs" / path.stem
    background_build._write_job(package, inputs, path, job)
    spec = json.loads((job / "job.json").read_text())
    spec["threads"] = torch.get_num_threads()
    (job / "job.json").write_text(json.dumps(spec))
    assert background_build.PACKAGE_ROOT == ROOT  # the child's cwd and PYTHONPATH: where `import rain_core` works
    script = f"import sys; from {background_build.CHILD_MODULE} import build_job; build_job(sys.argv[1])"
    result = subprocess.run([sys.executable, "-c", script, str(job)], cwd=ROOT, capture_output=True, text=True,
                            timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert result.returncode != 0 and "rebuilt call has key" in result.stderr
    assert "rebuilt call has key" in path.with_suffix(".failed").read_text()
    assert not job.exists() and not path.with_suffix(".building").exists() and not path.exists()
    build = background_build.BackgroundBuild.start(package, inputs, path)
    assert build.process is None and build.finished() and "to retry" in build.failure()


# ---- the builder's lifetime, stale leftovers, the cache bound ---------------------------------------------------

_PARENT = """
import sys, time
from pathlib import Path
from rain_core.stream.background_build import BackgroundBuild, read_job
package, inputs, path = read_job(Path(sys.argv[1]))
build = BackgroundBuild.start(package, inputs, path)
print(build.process.pid, flush=True)
time.sleep(600)
"""


def _process_gone(pid: int, timeout: float) -> bool:
    from rain_core.io.files import pid_running

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_running(pid):  # a zombie (ended, not reaped: its parent was killed) counts as gone
            return True
        time.sleep(0.2)
    return False


def test_a_background_builder_ends_with_its_parent_and_cleans_up(tiny_models, tmp_path):
    """A host that starts a background build and is then killed outright (SIGKILL: no atexit, no cleanup of its
    own) takes its builder with it: the kernel's parent-death signal / the pid watch stop the child, which removes
    its job folder, its marker and any half-written package, and leaves no failure marker."""
    import signal

    if os.name != "posix":
        pytest.skip("POSIX signals")
    package, inputs = _steady_package(tiny_models)
    cache = tmp_path / "aoti"
    path = cache / f"{package.key(*inputs)}.pt2"
    background_build._write_job(package, inputs, path, tmp_path / "seed-job")  # what the parent rebuilds the call from
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    parent = subprocess.Popen([sys.executable, "-c", _PARENT, str(tmp_path / "seed-job")], cwd=ROOT, env=env,
                              stdout=subprocess.PIPE, text=True)
    try:
        child = int(parent.stdout.readline())
        assert path.with_suffix(".building").read_text() == str(child)
        time.sleep(1.0)  # the child is importing torch / exporting the UNet
        assert not _process_gone(child, 0), "the builder should still be running while its parent runs"
        parent.send_signal(signal.SIGKILL)
        parent.wait(timeout=30)
        assert _process_gone(child, 20), "the builder outlived its parent"
    finally:
        parent.kill()
    deadline = time.monotonic() + 10
    while path.with_suffix(".building").exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*"))
    assert left == sorted(["jobs", path.with_suffix(".log").name]), left  # no marker, job, package, temporary or .failed
    assert "stopped" in path.with_suffix(".log").read_text()


def test_stale_builder_leftovers_are_recovered_and_live_ones_kept(tmp_path, monkeypatch):
    """What a builder killed by SIGKILL leaves (marker with its dead pid, job folder, half-written package) is
    removed by the next start (`recover_stale_builds`, run by BackgroundBuild.start and `rain cache`); a marker
    whose builder still runs blocks nothing of its own and is kept."""
    dead = subprocess.Popen(["true"])
    dead.wait()
    cache = tmp_path / "aoti"
    (cache / "jobs" / ("a" * 32)).mkdir(parents=True)
    (cache / "jobs" / ("a" * 32) / "job.json").write_text("{}")
    (cache / f"{'a' * 32}.building").write_text(str(dead.pid))
    (cache / f".{'a' * 32}.pt2.rain-tmp-{dead.pid}-xyz.pt2").write_bytes(b"half a package")
    (cache / f"{'b' * 32}.building").write_text(str(os.getpid()))  # a build that runs (this process)
    (cache / "jobs" / ("b" * 32)).mkdir()
    assert compile_cache.recover_stale_builds(cache) == ["a" * 32]
    left = sorted(p.relative_to(cache).as_posix() for p in cache.rglob("*"))
    assert left == ["b" * 32 + ".building", "jobs", "jobs/" + "b" * 32]


def test_the_package_cache_keeps_the_most_recently_used_within_its_bound(tmp_path, monkeypatch):
    cache = tmp_path / "aoti"
    cache.mkdir()
    now = time.time()
    for age, name in enumerate("dcba"):  # a is the oldest use
        package = cache / f"{name * 32}.pt2"
        package.write_bytes(b"x" * 400_000)
        package.with_suffix(".log").write_text("compiled")
        os.utime(package, (now - age * 100, now - age * 100))
    monkeypatch.setenv(compile_cache.CACHE_MAX_ENV, "1")  # 1 MB: two packages of 0.4 MB fit
    removed = compile_cache.evict_packages(keep=cache / f"{'a' * 32}.pt2")  # just loaded: kept although oldest
    assert sorted(p.name[0] for p in removed) == ["b", "c"]
    assert sorted(p.name for p in cache.iterdir()) == [f"{'a' * 32}.log", f"{'a' * 32}.pt2", f"{'d' * 32}.log",
                                                      f"{'d' * 32}.pt2"]
    monkeypatch.setenv(compile_cache.CACHE_MAX_ENV, "0")  # no bound
    assert compile_cache.evict_packages() == []


def test_rain_cache_shows_and_clears_the_compiled_tick_cache(tmp_path, monkeypatch, capsys):
    import json

    from rain_core.cli import main

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path))
    cache = tmp_path / "aoti"
    cache.mkdir()
    (cache / f"{'e' * 32}.pt2").write_bytes(b"x" * 1234)
    (cache / f"{'f' * 32}.pt2").write_bytes(b"x" * 766)
    (cache / f"{'f' * 32}.failed").write_text("RuntimeError")
    assert main(["cache", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["path"] == str(cache) and shown["total_bytes"] == 2000 and len(shown["packages"]) == 2
    assert main(["cache"]) == 0
    text = capsys.readouterr().out
    assert str(cache) in text and "2 package(s), 0.0 MB in all" in text and "e" * 32 in text
    assert main(["cache", "--clear", "--json"]) == 0
    cleared = json.loads(capsys.readouterr().out)
    assert cleared["cleared"]["removed"] == 3 and cleared["total_bytes"] == 0 and list(cache.iterdir()) == []
