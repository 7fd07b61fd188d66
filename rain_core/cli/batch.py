"""`rain batch JOBS`: many `rain animate` jobs from a CSV / JSON-lines file, on Ray (this machine or a cluster)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path

from .common import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    Interrupted,
    UsageError,
    add_model_flags,
    add_stream_flags,
    emit,
    interrupt_signal,
    positive_int,
    signal_name,
)

# The command's flags that are also job settings (a column of the same name overrides them per job).
DEFAULT_KEYS = ("model", "vae", "image_encoder", "taesdv", "levels", "frames_per_cohort", "steps", "guidance",
                "height", "width", "seed", "noise", "decoder", "dtype", "fps", "fast_path", "max_frames", "pose_check",
                "overwrite_frames")


def add_parser(sub) -> None:
    p = sub.add_parser("batch", help="render many jobs (reference, poses, output) from a CSV / JSONL on Ray",
                       description="Each line of JOBS is one `rain animate` run. Columns: reference, poses, output "
                       "(paths relative to the jobs file), optional id and settings (model, levels, "
                       "frames_per_cohort, steps, guidance, seed, noise, height, width, max_frames, fps, decoder, "
                       "pose_check) that override the flags below. Needs Ray: pip install \"comfyui-rain[cluster]\".")
    p.add_argument("jobs", metavar="JOBS", help="jobs file: .csv with a header row, or .jsonl (one object a line)")
    p.add_argument("--address", default=None,
                   help="join this Ray cluster (e.g. ray://head:10001 or auto); default: start Ray on this machine")
    p.add_argument("--workers", type=positive_int, default=None,
                   help="worker processes, each holding the model once (default: one per GPU, else CPUs // threads)")
    p.add_argument("--threads", type=positive_int, default=1, help="torch threads of each CPU worker (default 1)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="auto: one worker per GPU when Ray has GPUs, else CPU workers")
    p.add_argument("--results", default=None,
                   help="per-job results (JSON lines; default: JOBS.results.jsonl beside the jobs file)")
    p.add_argument("--retries", type=int, default=2, help="attempts more for a job whose worker died (default 2)")
    p.add_argument("--force", action="store_true", help="render every job, also those already complete")
    p.add_argument("--max-frames", type=positive_int, default=None, help="stop each job after this many pose frames")
    p.add_argument("--no-pose-check", dest="pose_check", action="store_false",
                   help="do not refuse pose videos that do not look like rendered skeletons")
    p.add_argument("--overwrite-frames", action="store_true",
                   help="a job whose output is a frame folder replaces the frames of an earlier run there (a folder "
                   "holding frame_NNNNNN.png files only; a folder holding anything else is never emptied)")
    p.add_argument("--verbose", action="store_true", help="show Ray's log lines and the workers' output")
    p.add_argument("--json", action="store_true")
    add_model_flags(p)
    add_stream_flags(p, exclude=("threads", "device"))
    p.set_defaults(handler=run)


def _check_models(jobs, default_model) -> None:
    """Refuse a model folder that does not exist before Ray starts (every job of it would fail alike)."""
    from ..loading.layout import resolve_model_folder

    for job in jobs:
        model = job.settings.get("model", default_model)
        if not resolve_model_folder(model).is_dir():
            where = f"line {job.line}, column 'model'" if "model" in job.settings else "--model"
            raise UsageError(f"{where}: {model}: no such model folder; pass a folder holding the RAIN files, or "
                             "'tiny' for the built-in model.")


def run(args) -> int:
    from ..batch.driver import Options, RayMissing, import_ray, run_jobs
    from ..batch.jobs import ResultsFile, default_results_path, is_complete, read_jobs, read_results

    try:
        import_ray()  # before anything else: without Ray nothing here can run
    except RayMissing as error:
        raise UsageError(str(error)) from None
    jobs = read_jobs(args.jobs)
    defaults = {key: getattr(args, key) for key in DEFAULT_KEYS}
    _check_models(jobs, args.model)
    results_path = Path(args.results) if args.results else default_results_path(args.jobs)
    fingerprints = {job.id: job.fingerprint(defaults) for job in jobs}
    previous = {} if args.force else read_results(results_path)
    todo = [job for job in jobs if not is_complete(job, previous.get(job.id), fingerprints[job.id])]
    skipped = len(jobs) - len(todo)
    summary = {"jobs": len(jobs), "skipped": skipped, "done": 0, "failed": [], "results": str(results_path)}
    if not todo:
        emit(args, summary, [f"all {len(jobs)} jobs are already complete (results: {results_path}); --force "
                             "renders them again"])
        return EXIT_OK

    from tqdm import tqdm

    options = Options(address=args.address, workers=args.workers, threads=args.threads, device=args.device,
                      retries=args.retries, verbose=args.verbose)
    results = ResultsFile(results_path)
    with tqdm(total=len(jobs), initial=skipped, desc="rain batch", unit="job", disable=args.json) as bar:
        def report(line: str) -> None:
            bar.write(line, file=sys.stderr) if not args.json else print(line, file=sys.stderr)

        outcome = None
        try:
            outcome = run_jobs(todo, defaults, options, results, fingerprints, progress=bar, report=report)
        except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM / SIGHUP (the command raises those alike)
            recorded = read_results(results_path)
            done = sum(is_complete(job, recorded.get(job.id), fingerprints[job.id]) for job in jobs)
            by = "" if interrupt_signal(stop) == signal.SIGINT else f" by {signal_name(interrupt_signal(stop))}"
            raise Interrupted(f"stopped{by}; {done} of {len(jobs)} jobs are complete (recorded in {results_path}), "
                              "no partial output left; run the same command again to render the rest.",
                              interrupt_signal(stop)) from None
        finally:
            results.close()
    failed = outcome.failed
    summary.update(done=len(outcome.records) - len(failed), workers=outcome.workers, device=outcome.device,
                   failed=[{key: r[key] for key in ("id", "line", "kind", "error")} for r in failed])
    lines = [f"{summary['done']} of {len(todo)} jobs rendered on {outcome.workers} {outcome.device} worker(s)"
             + (f", {skipped} already complete" if skipped else "") + f"; results in {results_path}"]
    lines += [f"failed: {r['id']} (line {r['line']}): {r['error']}" for r in failed]
    emit(args, summary, lines)
    if any(r["kind"] != "input" for r in failed):
        return EXIT_INTERNAL
    return EXIT_BAD_INPUT if failed else EXIT_OK
