"""The `rain batch` driver: starts or joins Ray, keeps a pool of worker actors busy, retries a job whose worker died.

Ray does the distribution (processes, placement on a cluster's nodes and GPUs, noticing a dead worker); this module
only hands each idle worker the next job. Retries are ours rather than Ray's `max_task_retries` because a job that
dies with its worker also leaves a temporary file beside its output, which must go before the job runs again, and
the results file counts the attempts. A worker's own death replaces it with a new one (its model loads again).
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from .jobs import Job, ResultsFile, output_stamp
from .worker import Renderer, remove_partial_files

INSTALL_HINT = 'pip install "comfyui-rain[cluster]" (or: pip install ray)'


class RayMissing(ImportError):
    """Ray is not installed: `rain batch` says how to install it."""


class BatchError(ValueError):
    """A batch that cannot start as asked (no GPU for --device cuda, a cluster that does not answer)."""


def import_ray():
    try:
        import ray  # optional extra [cluster]
    except ImportError as error:
        raise RayMissing(f"rain batch runs on Ray, which is not installed here ({error}). Install it with "
                         f"{INSTALL_HINT}; the ComfyUI pack itself never needs it.") from None
    return ray


@dataclass
class Options:
    address: str | None = None  # None: a local Ray on this machine's cores
    workers: int | None = None  # None: one per GPU, else the CPUs // threads
    threads: int = 1  # torch threads of each CPU worker
    device: str = "auto"  # auto: GPU workers when Ray has GPUs; cpu; cuda
    retries: int = 2  # extra attempts for a job whose worker died
    verbose: bool = False  # Ray's own log lines and the workers' output


@dataclass
class Outcome:
    records: list[dict] = field(default_factory=list)  # one per job run now, in finishing order
    workers: int = 0
    device: str = "cpu"

    @property
    def failed(self) -> list[dict]:
        return [r for r in self.records if r["status"] != "done"]


class Pool:
    """The worker actors: created, replaced when one dies, killed at the end."""

    def __init__(self, ray, count: int, device: str, threads: int, defaults: dict):
        self.ray = ray
        self.defaults = defaults
        resources = {"num_gpus": 1} if device == "cuda" else {"num_cpus": threads}
        self.actor_class = ray.remote(Renderer).options(max_restarts=0, **resources)
        self.device, self.threads = device, threads
        self.created = 0
        self.idle = deque(self.new() for _ in range(count))
        self.all = list(self.idle)

    def new(self):
        self.created += 1
        actor = self.actor_class.remote(f"w{self.created}", self.device, None if self.device == "cuda" else self.threads)
        actor.warm.remote(self.defaults)  # loads the model while the driver hands out jobs (tasks run in order)
        return actor

    def replace(self, dead):
        self.ray.kill(dead, no_restart=True)
        fresh = self.new()
        self.all = [a for a in self.all if a is not dead] + [fresh]
        self.idle.append(fresh)

    def shutdown(self, wait_s: float = 10.0):
        """Kill every worker and wait (bounded) until they are gone, so none writes after the driver cleans up."""
        for actor in self.all:
            self.ray.kill(actor, no_restart=True)
        deadline = time.monotonic() + wait_s
        for actor in self.all:
            try:
                self.ray.get(actor.describe.remote(), timeout=max(0.1, deadline - time.monotonic()))
            except Exception:  # dead, as wanted  # noqa: BLE001
                pass


def _init_keeping_sigterm(ray, **kwargs) -> None:
    """ray.init, then SIGTERM back to what it was: Ray's driver handler exits at once (sys.exit), where the `rain`
    command stops on SIGTERM as on Ctrl-C (workers killed, temporaries removed, exit 143)."""
    main = threading.current_thread() is threading.main_thread()
    previous = signal.getsignal(signal.SIGTERM) if main else None
    ray.init(**kwargs)
    if previous is not None:
        signal.signal(signal.SIGTERM, previous)


def start_ray(ray, options: Options) -> bool:
    """Join `options.address`, or start Ray on this machine; returns whether we started it (and so stop it)."""
    if ray.is_initialized():  # a caller (a test, a notebook) runs Ray already: use it
        return False
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage-stats banner on each start
    quiet = {"logging_level": logging.INFO if options.verbose else logging.ERROR, "log_to_driver": options.verbose}
    if options.address:
        try:
            _init_keeping_sigterm(ray, address=options.address, **quiet)
        except ConnectionError as error:
            raise BatchError(f"--address {options.address}: no Ray cluster answers there ({error}). Start one with "
                             "`ray start --head` and pass the address it prints, or leave --address out.") from None
        return True
    cpus = os.cpu_count() or 1
    wanted = (options.workers or 0) * (options.threads if options.device != "cuda" else 0)
    # A local Ray only: no dashboard, a small object store (jobs and results are a few hundred bytes each).
    _init_keeping_sigterm(ray, address="local", num_cpus=max(cpus, wanted), include_dashboard=False,
                          object_store_memory=100 * 1024 * 1024, **quiet)
    return True


def plan_workers(ray, options: Options) -> tuple[int, str, str | None]:
    """(workers, device, note): one worker per GPU when Ray has GPUs (unless --device cpu), else CPUs // threads;
    never more than the cluster can place (a worker Ray cannot place would hold its job forever)."""
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    if options.device == "cuda" and not gpus:
        raise BatchError("--device cuda: the Ray cluster has no GPU; leave --device out to render on the CPUs.")
    device = "cuda" if gpus and options.device != "cpu" else "cpu"
    capacity = gpus if device == "cuda" else max(1, int(resources.get("CPU", 1)) // max(1, options.threads))
    if options.workers and options.workers > capacity:
        room = f"{gpus} GPU(s)" if device == "cuda" else f"{int(resources.get('CPU', 1))} CPU(s) at " \
                                                          f"{options.threads} thread(s) a worker"
        return capacity, device, f"--workers {options.workers}: the cluster has room for {capacity} ({room})"
    return options.workers or capacity, device, None


RECORD_KEYS = ("status", "frames", "fps", "output_fps", "seconds", "cpu_seconds", "started_at", "ms_per_tick", "worker",
               "error", "kind")


def result_record(job: Job, result: dict, attempts: int, fingerprint: str) -> dict:
    """The results-file line of a finished job (done: with its output's size and modification time)."""
    entry = {"id": job.id, "line": job.line, "output": result.get("output") or job.output,
             **{key: result.get(key) for key in RECORD_KEYS}, "attempts": attempts, "job_hash": fingerprint}
    if entry["status"] == "done":
        entry.update(output_stamp(entry["output"]) or {})
    return entry


def run_jobs(jobs: list[Job], defaults: dict, options: Options, results: ResultsFile, fingerprints: dict,
             progress=None, report=print) -> Outcome:
    """Render `jobs` on Ray; appends each job's record to `results` as it finishes. Ctrl-C kills the workers,
    removes their temporary files and re-raises KeyboardInterrupt (the jobs already finished stay recorded)."""
    ray = import_ray()
    from ray.exceptions import RayActorError, RayError  # optional extra [cluster]

    started = start_ray(ray, options)
    pool = None
    running: dict = {}  # object ref → (actor, job)
    try:
        count, device, note = plan_workers(ray, options)
        if note:
            report(note)
        count = min(count, len(jobs))
        outcome = Outcome(workers=count, device=device)
        pool = Pool(ray, count, device, options.threads, defaults)
        pending = deque(jobs)
        attempts = {job.id: 0 for job in jobs}

        def record(job: Job, result: dict) -> None:
            entry = result_record(job, result, attempts[job.id], fingerprints[job.id])
            results.append(entry)
            outcome.records.append(entry)
            if progress is not None:
                progress.update(1)
            if result.get("traceback"):
                report(result["traceback"].rstrip())
            if result["status"] != "done":
                report(f"job {job.id} (line {job.line}): {result['error']}")

        while pending or running:
            while pending and pool.idle:
                actor, job = pool.idle.popleft(), pending.popleft()
                attempts[job.id] += 1
                running[actor.render.remote(job.arguments(defaults))] = (actor, job)
            ready, _ = ray.wait(list(running), num_returns=1, timeout=0.5)  # short: Ctrl-C is seen between waits
            for ref in ready:
                actor, job = running.pop(ref)
                try:
                    result = ray.get(ref)
                except RayActorError as error:  # the worker died (killed, out of memory): not the job's fault
                    remove_partial_files(job.output)  # the dead worker's temporary output
                    pool.replace(actor)
                    reason = str(error).strip().splitlines()[0]
                    if attempts[job.id] <= options.retries:
                        report(f"job {job.id} (line {job.line}): its worker died ({reason}); retrying on another")
                        pending.appendleft(job)
                    else:
                        record(job, {"status": "failed", "kind": "internal", "error": f"its worker died "
                                     f"{attempts[job.id]} times while rendering it; last: {reason}"})
                    continue
                except RayError as error:  # Ray could not run or return the task (the worker lives on)
                    result = {"status": "failed", "kind": "internal", "error": f"internal error: {error}"}
                pool.idle.append(actor)
                if result.get("kind") == "interrupted":  # Ctrl-C reached the worker too (the terminal's group)
                    raise KeyboardInterrupt
                record(job, result)
        return outcome
    finally:
        if pool is not None:
            pool.shutdown()
        for _, job in running.values():  # interrupted or failed mid-job: no temporary file stays behind
            remove_partial_files(job.output)
        if started:
            ray.shutdown()
