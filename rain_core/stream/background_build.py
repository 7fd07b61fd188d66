"""The background builder of the compiled steady tick: a low-priority child process that compiles one package into
the cache while a stream with fast_path "auto" runs eagerly in a long-lived host (`rain_core.cpu.
allow_background_compile`), and ends with its parent.

The parent side is `BackgroundBuild` (start, watch, stop); the child's entry point is `build_job`, run as
`python -c "from rain_core.stream.background_build import build_job; ..."` on a job folder (`_write_job`,
`read_job`). The files a build leaves in the cache are `rain_core.stream.compile_cache`'s.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from ..cpu import BACKGROUND_ENV, warn_once
from ..models import RainModelConfig
from ..models.unet import DenoisingUNet
from .compile_cache import build_marker, builder_running, job_folder, recover_stale_builds, remove_build_leftovers
from .compiled import SteadyPackage, compile_package

# the child runs `CHILD_MODULE.build_job` with PACKAGE_ROOT (the folder that holds rain_core) as its cwd and on its
# PYTHONPATH; keep both in step with this file's place (tests/test_cpu_speed.py runs the child)
CHILD_MODULE = "rain_core.stream.background_build"
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


class BackgroundBuild:
    """A low-priority child process that exports and compiles one steady package into the cache, so that a stream
    with fast_path "auto" in a long-lived host starts at once on the eager tick and switches to the compiled one
    when it is ready (and every later start loads it in a second). The child gets the UNet and the call's inputs
    through a job folder (safetensors + JSON, beside the package), rebuilds the same UNet and checks that its
    package key is the one asked for before compiling. One build per package: other streams, in this process or
    another, watch the same file (`<key>.building` holds the builder's pid). Its output goes to `<key>.log`.

    The child ends with its parent: on Linux the kernel sends it SIGTERM when the parent dies
    (`prctl(PR_SET_PDEATHSIG)`), it watches its parent's pid once a second as well (other systems, and a parent
    thread that ends: the death signal follows the thread that started the child), and the parent terminates its
    builders when it exits. A stopped builder removes its job folder, marker and half-written package; one killed
    outright leaves them, and `recover_stale_builds` (run at every start) removes them once its pid is gone."""

    _mine: dict[str, BackgroundBuild] = {}

    def __init__(self, path: Path, process=None):
        self.path, self.process = path, process

    @property
    def lock(self) -> Path:
        return build_marker(self.path)

    @property
    def log_path(self) -> Path:
        return self.path.with_suffix(".log")

    @property
    def failed(self) -> Path:
        """Written by a child whose compile failed; delete it to try again."""
        return self.path.with_suffix(".failed")

    @property
    def job(self) -> Path:
        return job_folder(self.path)

    @classmethod
    def start(cls, package: SteadyPackage, inputs: tuple, path: Path) -> BackgroundBuild:
        known = cls._mine.get(str(path))
        if known is not None and not known.finished():
            return known
        build = cls(path)
        recover_stale_builds(path.parent)
        if builder_running(path) or build.failed.exists():  # a build that failed is not retried each start
            return build
        path.parent.mkdir(parents=True, exist_ok=True)
        build.lock.write_text(str(os.getpid()))  # ours while the job is written (a cleaner must not take it)
        _write_job(package, inputs, path, build.job)
        root = str(PACKAGE_ROOT)
        environ = {**os.environ, "PYTHONPATH": os.pathsep.join([root, *filter(None, [os.environ.get("PYTHONPATH")])])}
        # the kernel's parent-death signal follows the *thread* that forks: only the main thread lives as long as
        # the process, so from any other thread (ComfyUI runs nodes in a worker thread) the child relies on its
        # parent-pid watch alone
        death_signal = int(threading.current_thread() is threading.main_thread())
        script = f"import sys; from {CHILD_MODULE} import build_job; build_job(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))"
        with open(build.log_path, "w") as output:
            build.process = subprocess.Popen([sys.executable, "-c", script, str(build.job), str(os.getpid()),
                                              str(death_signal)], env=environ, cwd=root, stdin=subprocess.DEVNULL,
                                             stdout=output, stderr=subprocess.STDOUT)
        build.lock.write_text(str(build.process.pid))
        cls._mine[str(path)] = build
        _stop_builders_at_exit()
        warn_once(f"RAIN: building a compiled tick for this CPU in the background (low priority, a minute or more; "
                  f"it ends with this process); the stream runs eagerly until it is ready, later starts load it in "
                  f"a second ({BACKGROUND_ENV}=0 turns this off)")
        return build

    def clean_up(self) -> None:
        """Remove the marker, the job folder and half-written packages of this key (its builder is gone)."""
        remove_build_leftovers(self.path)

    def finished(self) -> bool:
        if self.process is not None:
            return self.process.poll() is not None
        return self.path.exists() or self.failed.exists() or not builder_running(self.path)

    def stop(self) -> None:
        """Ask our child to end (it cleans up after itself)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()

    def failure(self) -> str:
        """The last line of the child's output (why it failed), or its exit code."""
        try:
            lines = [line for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        code = None if self.process is None else self.process.returncode
        return (lines[-1][:300] if lines else f"exit code {code}") + f"; see {self.log_path}, delete {self.failed} to retry"


_AT_EXIT = False


def _stop_builders_at_exit() -> None:
    """Once per process: at exit, terminate the builders this process started (the death signal and the pid watch
    cover a parent that is killed; this covers a normal exit at once, not a second later)."""
    global _AT_EXIT
    if _AT_EXIT:
        return
    atexit.register(lambda: [build.stop() for build in list(BackgroundBuild._mine.values())])
    _AT_EXIT = True


# ---------------------------------------------------------------------- the child


class BuilderStopped(BaseException):
    """SIGTERM (the parent ended, or someone stopped the builder): clean up, write no failure marker."""


def _end_with_parent(parent: int, death_signal: bool) -> None:
    """In the builder: SIGTERM raises BuilderStopped; the kernel sends it when the parent dies (Linux,
    PR_SET_PDEATHSIG) and a watcher thread sends it when the parent pid changes (every system)."""

    def stopped(signum, frame):
        raise BuilderStopped(f"signal {signum}")

    signal.signal(signal.SIGTERM, stopped)
    if death_signal and sys.platform.startswith("linux"):
        try:
            import ctypes  # Linux only: prctl

            PR_SET_PDEATHSIG = 1
            ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        except (OSError, AttributeError):
            pass  # the watcher below still ends the builder
    if os.getppid() != parent:  # the parent died before the death signal was armed
        raise BuilderStopped("the parent process is gone")

    def watch():
        while os.getppid() == parent:
            time.sleep(1.0)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="rain-parent-watch", daemon=True).start()


def _write_job(package: SteadyPackage, inputs: tuple, path: Path, job: Path) -> None:
    """What the child needs to rebuild the steady call exactly: UNet config, weights, inputs, reference K/V."""
    job.mkdir(parents=True, exist_ok=True)
    sample, timesteps, features = inputs
    state = package.unet.state_dict()
    tensors = {f"unet.{name}": t.detach().to("cpu").contiguous().clone() for name, t in state.items()}
    named = {"sample": sample, "timesteps": timesteps, "features": features, "clip_tokens": package.clip_tokens}
    if package.guidance is not None:
        named["guidance"] = package.guidance
    for i, tensor in enumerate(package.reference):
        named[f"reference.{i}"] = tensor
    tensors.update({name: t.detach().contiguous().clone() for name, t in named.items()})
    save_file(tensors, str(job / "job.safetensors"))
    dtype = next(iter(state.values())).dtype
    spec = {"path": str(path), "threads": torch.get_num_threads(), "names": package.names,
            "config": package.unet.config.to_dict(), "dtype": str(dtype).removeprefix("torch.")}
    (job / "job.json").write_text(json.dumps(spec))


def read_job(folder: Path) -> tuple[SteadyPackage, tuple, Path]:
    """The steady call a job folder describes, rebuilt: (package, (sample, timesteps, features), package path)."""
    spec = json.loads((folder / "job.json").read_text())
    tensors = load_file(str(folder / "job.safetensors"))
    unet = DenoisingUNet(RainModelConfig.from_dict(spec["config"]))
    if spec["dtype"] != "float32":
        unet.to(getattr(torch, spec["dtype"]))
    unet.load_state_dict({name[5:]: t for name, t in tensors.items() if name.startswith("unet.")})
    unet.eval().requires_grad_(False)
    names = spec["names"]
    kv = None if names is None else {
        name: (tensors[f"reference.{2 * i}"], tensors[f"reference.{2 * i + 1}"]) for i, name in enumerate(names)
    }
    package = SteadyPackage(unet, tensors["clip_tokens"], tensors.get("guidance"), kv)
    return package, (tensors["sample"], tensors["timesteps"], tensors["features"]), Path(spec["path"])


def build_job(folder: str, parent: int | None = None, death_signal: int = 1) -> None:
    """The background child (`BackgroundBuild`): rebuild the steady call from its job folder, check the key, compile
    the package. Runs at lower priority (nice 5) and ends with its parent (`parent`: its pid); removes the job
    folder and the marker whatever happens, and writes `<key>.failed` only when the compile itself failed. The
    child imports this module (torch, the networks) before it runs: a parent that dies meanwhile is noticed when
    the imports end (`_end_with_parent`), and the builder stops then, cleaning up as always."""
    folder = Path(folder)
    spec = json.loads((folder / "job.json").read_text())
    build = BackgroundBuild(Path(spec["path"]))
    path = build.path
    try:
        if parent is not None:
            _end_with_parent(parent, bool(death_signal))
        if hasattr(os, "nice"):
            os.nice(5)  # below the stream, not so far that a stream running flat out starves it
        torch.set_num_threads(spec["threads"])  # inductor fixes the thread count in the code it writes
        package, inputs, _ = read_job(folder)
        key = package.key(*inputs)
        if key != path.stem:
            raise RuntimeError(f"the rebuilt call has key {key}, not {path.stem} (rain's code changed meanwhile?)")
        started = time.perf_counter()
        compile_package(package, (*inputs, *package.extra_inputs()), path)
        print(f"compiled {path.name} in {time.perf_counter() - started:.1f} s", flush=True)
    except (BuilderStopped, KeyboardInterrupt) as stop:
        print(f"stopped ({stop}); nothing kept", flush=True)
        raise SystemExit(143) from None
    except BaseException as error:
        build.failed.write_text(f"{type(error).__name__}: {error}\n")
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        build.lock.unlink(missing_ok=True)


__all__ = ["CHILD_MODULE", "PACKAGE_ROOT", "BackgroundBuild", "BuilderStopped", "build_job", "read_job"]
