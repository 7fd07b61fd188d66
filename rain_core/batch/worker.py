"""The `rain batch` worker: a plain class the driver turns into a Ray actor (so this module imports without Ray).

One worker holds one loaded model (loaded at its first job, kept for the next ones; a job naming another model
replaces it, one model in memory at a time) and renders jobs one at a time through `rain animate`'s own path
(`rain_core.cli.render`). A job's failure comes back as its result, with the message `rain animate` would print;
only the worker's death (killed, out of memory) reaches the driver as an exception, and the driver retries the job.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import time
import traceback
from pathlib import Path

from ..cli.common import Interrupted, is_input_error, load_models
from ..cli.render import prepare_job, render_job
from ..io.files import MARKER

# Per-job argument names the worker fills in when the driver leaves them out (the rest come from the job).
FIXED = {"keep_partial": False, "json": True, "pose_check": True, "max_frames": None, "fps": None,
         "overwrite_frames": False}


def partial_files(output) -> list[Path]:
    """The temporaries beside `output` (`.NAME.rain-tmp-PID-….partial…`, `rain_core.io.files`), whoever writes them."""
    output = Path(output)
    return sorted(output.parent.glob(f".{output.name}.{MARKER}-*")) if output.parent.is_dir() else []


def remove_partial_files(output) -> list[Path]:
    """Remove `partial_files(output)`: for a job whose worker the driver saw die or killed itself, whose pid may not
    have gone yet (`fileio.remove_stale_temporaries` keeps a temporary while its writer runs). Outputs are one per
    job and locked by their writer, so no other writer's temporary has this name."""
    removed = partial_files(output)
    for path in removed:
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
    return removed


class Renderer:
    """Renders jobs with one loaded model. `device`: "cpu" or "cuda" (the GPU Ray gave this worker)."""

    def __init__(self, name: str, device: str = "cpu", threads: int | None = 1):
        self.name = name
        self.device = device
        self.threads = threads
        self._models = None
        self._model_key = None
        self._folder = None
        self.jobs_done = 0

    def describe(self) -> str:
        """Who I am, for the results file: name@host:pid."""
        return f"{self.name}@{socket.gethostname()}:{os.getpid()}"

    def _load(self, args) -> tuple[object, float]:
        key = (args.model, args.vae, args.image_encoder, args.taesdv, args.dtype)
        if key == self._model_key:
            return self._models, 0.0
        self._models = self._model_key = None  # one model in memory: free the old one before the new loads
        start = time.perf_counter()
        # a reference per job: keep the reference networks rather than read them from their files for every job
        self._models, self._folder = load_models(args, release_reference=False)
        self._model_key = key
        return self._models, time.perf_counter() - start

    def _arguments(self, arguments: dict) -> argparse.Namespace:
        return argparse.Namespace(**{**FIXED, **arguments, "device": self.device, "threads": self.threads})

    def warm(self, arguments: dict) -> str | None:
        """Import the engine and load the batch's model before the first job (so a job's seconds are its own).
        Never raises: a model that fails to load fails each job that needs it, with the loader's message."""
        try:
            self._load(self._arguments(arguments))
        except Exception as error:  # noqa: BLE001 (reported by the jobs)
            return str(error)
        return None

    def render(self, arguments: dict) -> dict:
        """Render one job (`rain animate`'s arguments as a dict); returns its result, never raises for a job's own
        problem: {"status": "done", output, frames, fps, seconds, ...} or {"status": "failed", "kind":
        "input" | "internal", "error": message}."""
        args = self._arguments(arguments)
        start, cpu_start = time.perf_counter(), time.process_time()
        result = {"worker": self.describe(), "started_at": round(time.time(), 3)}
        try:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            with prepare_job(args) as job:  # bad inputs refused, the output claimed, as `rain animate` does
                models, load_seconds = self._load(args)
                summary = render_job(models, args, job)
            result.update(status="done", load_seconds=round(load_seconds, 3), **summary)
            self.jobs_done += 1
        except (KeyboardInterrupt, Interrupted):
            result.update(status="failed", kind="interrupted", error="interrupted")
        except Exception as error:  # a job's failure is its result; the worker takes the next job
            if is_input_error(error):
                result.update(status="failed", kind="input", error=str(error))
            else:
                result.update(status="failed", kind="internal", error=f"internal error: {error}",
                              traceback=traceback.format_exc())
        result["seconds"] = round(time.perf_counter() - start, 3)
        result["cpu_seconds"] = round(time.process_time() - cpu_start, 3)  # this worker's CPU time (all threads)
        return result
