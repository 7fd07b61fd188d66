"""`rain batch` throughput with 1 and 2 workers on this machine, and on paper what N GPUs would render.

Writes bench/results/batch_scale.json (`rows`: workers, jobs_per_min, speedup) and prints it; asserts nothing.

One local Ray for the whole run; the two configurations take turns (1, 2, 1, 2 … workers, `--rounds` each), each
turn a full `rain batch` of the same jobs (the built-in model, the example references and pose videos, 32–48 frames
each, a fresh output folder) through the command itself. A turn's time runs from its first job's start to its last
job's end as the workers recorded them, so the workers' start (process, imports, model load: the same for any
batch size) is left out; `wall_s` keeps the whole turn. The tick is the eager one (`--fast-path eager`): the compiled
tick's one-off background build would fall inside one turn and not the other. `cpu_s_per_job` is the workers' own
CPU time per job: where other work keeps the cores busy, the wall-clock speedup measures the CPU left over, and
`speedup_on_idle_cores_estimate` = 2 × (CPU per job, 1 worker) / (CPU per job, 2 workers) says what two idle cores
would give (an estimate: labelled so).

On paper (`on_paper: true`): a full-size job has the measured ticks per job (pose frames / m, plus the flush); a
full-size tick is 20.4 TFLOP at 512², 4×4, 4 steps (NOTES, `bench/tick_profile_cpu.py`); a GPU is assumed to
sustain `--gpu-tflops` (default 396 = 40 % of the H100 SXM's 989 TFLOP/s dense-BF16 datasheet peak); one worker
per GPU, nothing shared between them, so N GPUs render N times one. No GPU was measured.

    nice -n 10 .venv/bin/python bench/batch_scale.py                 # → bench/results/batch_scale.json
    .venv/bin/python bench/batch_scale.py --smoke --out /tmp/bs.json  # seconds: 2 tiny jobs, one turn each
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
EXAMPLES = ROOT / "examples"
FULL_TICK_TFLOP = 20.4  # per full-size tick at 512², 4 levels × 4 frames, 4 steps (NOTES; bench/tick_profile_cpu.py)
H100_BF16_PEAK_TFLOPS = 989.0  # NVIDIA's dense BF16 datasheet figure for the H100 SXM


def write_jobs(folder: Path, count: int, frames: list[int]) -> Path:
    """`count` jobs alternating the example references and pose videos, `frames` pose frames each (cycled)."""
    references = ["anyone-1.png", "anyone-2.png"]
    poses = ["anyone-video-1_kps.mp4", "anyone-video-2_kps.mp4"]  # 64 and 48 frames
    lines = ["id,reference,poses,output,max_frames,seed"]
    for index in range(count):
        lines.append(f"job{index},{EXAMPLES / references[index % 2]},{EXAMPLES / poses[(index // 2) % 2]},"
                     f"out/job{index}.mp4,{frames[index % len(frames)]},{index}")
    path = folder / "jobs.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


def run_turn(jobs: Path, workers: int, args) -> dict:
    """One `rain batch` of every job with `workers` workers; its records and timings."""
    from rain_core.cli import main

    results = jobs.parent / f"results-{time.monotonic_ns()}.jsonl"
    argv = ["batch", str(jobs), "--model", args.model, "--workers", str(workers), "--threads", str(args.threads),
            "--fast-path", "eager", "--results", str(results), "--force", "--json"]
    start = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        code = main(argv)
    wall = time.perf_counter() - start
    if code != 0:
        raise SystemExit(f"rain batch exited {code}: {results.read_text() if results.exists() else ''}")
    records = [json.loads(line) for line in results.read_text().splitlines()]
    first = min(r["started_at"] for r in records)
    last = max(r["started_at"] + r["seconds"] for r in records)
    return {"workers": workers, "seconds": round(last - first, 3), "wall_s": round(wall, 3),
            "jobs_per_min": round(60 * len(records) / (last - first), 3),
            "ms_per_tick": round(statistics.median(r["ms_per_tick"] for r in records), 2),
            "cpu_s_per_job": round(statistics.mean(r["cpu_seconds"] for r in records), 3),
            "frames": sum(r["frames"] for r in records), "workers_used": len({r["worker"] for r in records})}


def on_paper(ticks_per_job: float, gpu_tflops: float, frames_per_cohort: int, counts=(1, 2, 4, 8, 16, 64)) -> dict:
    tick_s = FULL_TICK_TFLOP / gpu_tflops
    per_gpu = 60 / (ticks_per_job * tick_s)
    return {
        "on_paper": True,
        "assumptions": {
            "tick_tflop_at_512": FULL_TICK_TFLOP,
            "gpu_tflops_sustained": gpu_tflops,
            "as_share_of_h100_sxm_bf16_peak": round(gpu_tflops / H100_BF16_PEAK_TFLOPS, 3),
            "ticks_per_job": round(ticks_per_job, 2),
            "scaling": "one worker per GPU, nothing shared: N GPUs render N times one GPU",
            "not_counted": "decoding poses, encoding video, the reference pass per job (small beside the ticks at "
                           "512², not measured on a GPU)",
        },
        "tick_ms": round(1000 * tick_s, 1),
        "rows": [{"gpus": n, "jobs_per_min": round(n * per_gpu, 1),
                  "frames_per_s": round(n * frames_per_cohort / tick_s, 1)} for n in counts],
    }


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--frames", default="32,40,48", help="pose frames per job, cycled over the jobs")
    parser.add_argument("--rounds", type=int, default=2, help="turns per configuration (interleaved)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--model", default="tiny")
    parser.add_argument("--gpu-tflops", type=float, default=0.4 * H100_BF16_PEAK_TFLOPS,
                        help="sustained TFLOP/s assumed per GPU for the on-paper table")
    parser.add_argument("--smoke", action="store_true", help="2 jobs of 8 frames, one turn each (seconds)")
    parser.add_argument("--out", default=None, help="JSON output (default bench/results/batch_scale.json; "
                        "none with --smoke)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.jobs, args.frames, args.rounds = 2, "8", 1
    frames = [int(f) for f in args.frames.split(",")]
    out = Path(args.out) if args.out else (None if args.smoke else ROOT / "bench" / "results" / "batch_scale.json")

    import ray

    load_before = [round(x, 2) for x in os.getloadavg()]
    started = not ray.is_initialized()
    if started:  # one local Ray for every turn (the command would start and stop one per batch)
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        ray.init(address="local", num_cpus=max(2 * args.threads, os.cpu_count() or 1), include_dashboard=False,
                 logging_level=logging.ERROR, log_to_driver=False, object_store_memory=100 * 1024 * 1024)
    turns = []
    try:
        with tempfile.TemporaryDirectory(prefix="batch_scale.") as folder:
            jobs = write_jobs(Path(folder), args.jobs, frames)
            for round_index in range(args.rounds):
                for workers in (1, 2):
                    turn = run_turn(jobs, workers, args)
                    turns.append({"round": round_index, **turn})
                    print(f"round {round_index} workers {workers}: {turn['jobs_per_min']:.2f} jobs/min "
                          f"({turn['seconds']:.1f} s, wall {turn['wall_s']:.1f} s, {turn['ms_per_tick']} ms/tick)",
                          file=sys.stderr)
    finally:
        if started:
            ray.shutdown()

    rows = []
    for workers in (1, 2):
        mine = [t for t in turns if t["workers"] == workers]
        rows.append({"workers": workers, "jobs_per_min": round(statistics.median(t["jobs_per_min"] for t in mine), 3),
                     "ms_per_tick": statistics.median(t["ms_per_tick"] for t in mine),
                     "cpu_s_per_job": round(statistics.median(t["cpu_s_per_job"] for t in mine), 3),
                     "turns_jobs_per_min": [t["jobs_per_min"] for t in mine]})
    for row in rows:
        row["speedup"] = round(row["jobs_per_min"] / rows[0]["jobs_per_min"], 3)
    # On a machine whose cores are busy with other work the wall-clock speedup measures the spare CPU, not the
    # batch: each job's own CPU time says what two idle cores would give (no more than 2, less when the two
    # workers slow each other down through memory bandwidth or caches).
    rows[1]["speedup_on_idle_cores_estimate"] = round(2 * rows[0]["cpu_s_per_job"] / rows[1]["cpu_s_per_job"], 3)
    levels, frames_per_cohort = 4, 4  # the defaults the jobs run with
    ticks_per_job = statistics.mean(frames[i % len(frames)] / frames_per_cohort for i in range(args.jobs)) + levels - 1
    result = {
        "bench": "batch_scale",
        "command": " ".join(["bench/batch_scale.py", *(f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                                                       for k, v in vars(args).items()
                                                       if k != "out" and v != parser.get_default(k))]),
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "load_avg_1_5_15_before": load_before,
                    "load_avg_1_5_15_after": [round(x, 2) for x in os.getloadavg()]},
        "setup": {"jobs": args.jobs, "frames_per_job": frames, "model": args.model, "threads_per_worker": args.threads,
                  "size": "the model's own (64 px for the built-in)", "window": "4 levels x 4 frames, 4 steps",
                  "fast_path": "eager", "rounds": args.rounds},
        "rows": rows,
        "turns": turns,
        "goal": "2 workers >= 1.5x one on 2 cores",
        "goal_met": rows[1]["speedup"] >= 1.5,
        "gpus_on_paper": on_paper(ticks_per_job, args.gpu_tflops, frames_per_cohort),
    }
    text = json.dumps(result, indent=1)
    print(text)
    if out is not None:
        out.write_text(text + "\n")
    return result


if __name__ == "__main__":
    main()
