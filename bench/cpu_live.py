"""The built-in model live on the CPU: today's default path and the optimised one side by side. Prints figures and
writes bench/results/cpu_live.json; asserts nothing.

Each path runs in its own process (the OpenMP wait policy is fixed when a process imports torch, so it cannot be
switched inside one): "default" is the path before the CPU work — the eager tick, the environment untouched
(`RAIN_CPU_TUNING=0`); "optimised" is what a stream does now — `fast_path` (default "auto", with no background
compile while timing) and the OpenMP wait (`OMP_WAIT_POLICY=PASSIVE`, `GOMP_SPINCOUNT=10000`) set by `import rain_core`. Both stream the example pose video through `RainStream.push` (64 px, 4 levels × 4 frames,
4 steps, the shipped model) with the same reference and seed; the parent asks them for one steady tick each in turn
(never both at once, so both see the same machine load) and takes medians. Frames of the whole stream (warm-up,
steady ticks, flush) are compared: max_abs_diff. first_frame_s is the time from starting the process to its first
frame (imports, model load, reference, warm-up and, for a compiled path, the compile or the load of the compiled
package); the optimised path's start-up is measured twice more at 2 threads, with an empty compile cache (cold) and
then with the cache it filled (warm). With `fast_path` "auto" the optimised path compiles nothing (the bench turns the
background compile off): it runs the
compiled tick only where its package is already in the cache (`--cache`, default rain's), else eagerly; `--fast-path
compile` builds it (once per model, size and thread count). `compile_source` says which: "compiled" or "cache".

The built-in model was retrained smaller for speed (issue 17). `--before-model git:REV` makes "default" the path of
the time before that: the built-in model at git revision REV on its eager, untuned tick; a third worker, "eager",
then runs today's built-in model eagerly, untuned, and the optimised frames are compared with it. Every timed tick
starts after `--settle` seconds of rest, so no worker's spinning OpenMP threads slow the next one, and the workers
take their turns in a new random order every round. A turn is `--burst` ticks back to back, as a stream fed
continuously runs them; the first tick of a turn, straight after the rest, pays for waking the sleeping thread pool
and refilling caches, so it is reported apart (`after_rest_ms_per_tick`) and the others make the fps figures
(`--burst 1`: one tick per turn, the method of sessions 4–6). `paired_ratio_median` is the median of the per-round ratios
(default ÷ optimised tick time) with a bootstrap 95 % interval: rounds are a second or two apart, so it holds up
better than the ratio of medians when the machine's speed drifts during a run.

    nice -n 19 .venv/bin/python bench/cpu_live.py --no-cold --ticks 16 --before-model git:45de38a  # issue 17's ratio
    nice -n 19 .venv/bin/python bench/cpu_live.py --fast-path compile   # cold/warm start in a fresh cache, 1 and 2 threads
    nice -n 19 .venv/bin/python bench/cpu_live.py --ticks 16 --no-cold  # "auto": the packages in rain's cache, if any
    .venv/bin/python bench/cpu_live.py --threads 2 --ticks 8 --no-cold
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rain_core.io.files import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "bench" / "results" / "cpu_live.json"
EXAMPLES = ROOT / "examples"
MODEL = ROOT / "rain_core" / "assets" / "tiny-rain"


def load_inputs(size: int, frames: int):
    """(reference (H, W, 3), poses (N, size, size, 3), seconds per pose frame for decode + letterbox)."""
    from rain_core.io.inputs import fit_frames, read_image, uint8_frames
    from rain_core.io.video import read_video_frames

    reference = read_image(EXAMPLES / "anyone-1.png")
    started = time.perf_counter()
    raw, _, _ = read_video_frames(EXAMPLES / "anyone-video-1_kps.mp4", 0, frames)
    poses = fit_frames(uint8_frames(raw), size, size)
    io_seconds = (time.perf_counter() - started) / frames
    return reference, poses, io_seconds


# ---------------------------------------------------------------------- worker (one stream in its own process)


def worker(args) -> None:
    import rain_core  # noqa: F401, I001  (first: it sets the OpenMP wait policy, which only applies before torch loads)

    import numpy as np
    import torch

    from rain_core import RainStream, StreamConfig, load_rain

    torch.set_num_threads(args.threads)
    models = load_rain(args.model or MODEL)
    reference, poses, _ = load_inputs(64, 64)
    config = StreamConfig(levels=4, frames_per_cohort=4, steps=4, height=64, width=64, fast_path=args.fast_path)
    stream = RainStream(models, config)
    stream.set_reference(reference)
    frames = [stream.push(poses[: config.window])]  # warm-up; its 4th tick (the first steady one) is the first frame
    reply({"ready": True, "fast_path": stream.stats["fast_path"], "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY")})
    m, index = 4, 4
    for line in sys.stdin:
        command = line.strip()
        if command.startswith("tick"):
            seconds = []
            for _ in range(int(command.split()[1])):  # back to back, as a stream fed faster than it runs
                chunk = poses[(index * m) % poses.shape[0] :][:m]
                index += 1
                started = time.perf_counter()
                frames.append(stream.push(chunk))
                seconds.append(time.perf_counter() - started)
            reply({"seconds": seconds})
        elif command.startswith("end"):
            frames.append(stream.flush())
            np.save(command.split(" ", 1)[1], torch.cat(frames).numpy())
            unet = getattr(stream._tick(), "_unet", None)
            reply({"done": True, "compiled_calls": getattr(unet, "compiled_calls", None),
                   "compile_problem": getattr(unet, "problem", None), "compile_source": getattr(unet, "source", None),
                   "compile_s": getattr(unet, "build_seconds", None)})
            return


def reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


# ---------------------------------------------------------------------- parent


class Worker:
    def __init__(self, name: str, threads: int, fast_path: str, environ: dict, model: Path | None = None):
        self.name = name
        self.started = time.perf_counter()
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", "--threads", str(threads),
                   "--fast-path", fast_path] + (["--model", str(model)] if model else [])
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                        env=environ, cwd=ROOT)
        self.info = self.read()
        self.first_frame_s = time.perf_counter() - self.started

    def read(self) -> dict:
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"worker {self.name} ended early (exit code {self.process.wait()})")
        return json.loads(line)

    def ticks(self, count: int) -> list[float]:
        self.process.stdin.write(f"tick {count}\n")
        self.process.stdin.flush()
        return self.read()["seconds"]

    def end(self, path: str) -> dict:
        self.process.stdin.write(f"end {path}\n")
        self.process.stdin.flush()
        done = self.read()
        self.process.wait(timeout=120)
        return done


def environments(cache: str) -> tuple[dict, dict]:
    base = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "RAIN_CPU_TUNING", "RAIN_NO_COMPILE")}
    base["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])
    base["RAIN_BACKGROUND_COMPILE"] = "0"  # no compile in a child process while ticks are timed
    default = {**base, "RAIN_CPU_TUNING": "0"}
    optimised = {**base, "TORCHINDUCTOR_CACHE_DIR": cache}
    return default, optimised


def side_by_side(args, threads: int, cache: str, scratch: Path) -> dict:
    """One row. Workers: "default" = today's default path (the eager, untuned tick of the built-in model, or of
    `--before-model`, the built-in model before it was retrained for speed); "optimised" = the built-in model as a
    stream runs it now; with `--before-model` also "eager" = the built-in model's own eager, untuned tick, which the
    optimised frames are compared with (frames of two different models are not comparable)."""
    import numpy as np

    from rain_core.metrics import bootstrap_ci

    default_env, optimised_env = environments(cache)
    workers = [
        Worker("default", threads, "eager", default_env, args.before_model),
        Worker("optimised", threads, args.fast_path, optimised_env, args.candidate),
    ]
    if args.before_model:
        workers.append(Worker("eager", threads, "eager", default_env, args.candidate))
    default, optimised = workers[:2]
    reference = workers[-1] if args.before_model else default
    times = {worker_.name: [] for worker_ in workers}  # per round: the median of the burst's steady ticks
    after_rest = {worker_.name: [] for worker_ in workers}  # per round: the burst's first tick, straight after rest
    order = random.Random(0)
    rounds = max(1, args.ticks // (args.burst - 1)) if args.burst > 1 else args.ticks
    for _ in range(rounds):
        # a new order every round: no path always follows the same one (the machine's state after a tick differs)
        for worker_ in order.sample(workers, len(workers)):
            # let the previous worker's OpenMP threads stop spinning (an untuned worker spins after each parallel
            # region and would steal this worker's cores)
            time.sleep(args.settle)
            burst = worker_.ticks(args.burst)
            after_rest[worker_.name].append(burst[0])
            # the first tick after a rest pays for waking the thread pool and refilling caches, which a stream fed
            # continuously does not; with --burst 1 it is the only tick (the method of sessions 4-6)
            times[worker_.name].append(statistics.median(burst[1:] or burst))
    ends = {}
    for worker_ in workers:
        ends[worker_.name] = worker_.end(str(scratch / f"{worker_.name}-{threads}.npy"))
    a = np.load(scratch / f"{reference.name}-{threads}.npy")
    b = np.load(scratch / f"optimised-{threads}.npy")
    fps = {name: 4 / statistics.median(seconds) for name, seconds in times.items()}
    # the same ratio per round (each round times every path within a second or two), robust to the machine's drift
    paired = [d / o for d, o in zip(times["default"], times["optimised"])]
    paired_ci = bootstrap_ci(paired, statistic=np.median)
    default_fps, optimised_fps = fps["default"], fps["optimised"]
    row = {
        "threads": threads,
        "default_fps": round(default_fps, 2),
        "optimised_fps": round(optimised_fps, 2),
        "ratio": round(optimised_fps / default_fps, 2),
        "paired_ratio_median": round(statistics.median(paired), 2),
        "paired_ratio_ci95": [round(x, 2) for x in paired_ci],
        "max_abs_diff": float(np.abs(a - b).max()) if a.shape == b.shape else None,
        "first_frame_s": round(optimised.first_frame_s, 2),
        "default_model": args.before_label or "built-in",
        "model": str(args.candidate) if args.candidate else "built-in",
        "default_first_frame_s": round(default.first_frame_s, 2),
        "frames_compared": int(a.shape[0]),
        "frames_compared_with": f"{reference.name} path of the {'candidate' if args.candidate else 'built-in'} model",
        "default_ms_per_tick": round(1000 * statistics.median(times["default"]), 1),
        "optimised_ms_per_tick": round(1000 * statistics.median(times["optimised"]), 1),
        "optimised_fast_path": optimised.info.get("fast_path"),
        "optimised_omp_wait_policy": optimised.info.get("omp_wait_policy"),
        "compiled_calls": ends["optimised"].get("compiled_calls"),
        "compile_problem": ends["optimised"].get("compile_problem"),
        "compile_source": ends["optimised"].get("compile_source"),
        "load_average": round(os.getloadavg()[0], 1),
        "burst": args.burst,
        "rounds": len(times["default"]),
        "after_rest_ms_per_tick": {name: round(1000 * statistics.median(seconds), 1)
                                   for name, seconds in after_rest.items()},
        "after_rest_ratio": round(statistics.median(after_rest["default"]) / statistics.median(after_rest["optimised"]),
                                  2),
    }
    if args.before_model:
        row.update(
            eager_fps=round(fps["eager"], 2),
            eager_ms_per_tick=round(1000 * statistics.median(times["eager"]), 1),
            optimised_to_eager=round(optimised_fps / fps["eager"], 2),
            eager_to_default=round(fps["eager"] / default_fps, 2),
        )
    summary = (
        f"{threads} thread{'s' if threads > 1 else ''}{' (' + str(args.candidate) + ')' if args.candidate else ''}: default ({row['default_model']}, eager) {row['default_fps']} "
        f"fps ({row['default_ms_per_tick']} ms/tick), optimised {row['optimised_fps']} fps "
        f"({row['optimised_ms_per_tick']} ms/tick), ratio {row['ratio']} (per round: median {row['paired_ratio_median']}, "
        f"95 % {row['paired_ratio_ci95']})"
    )
    if args.before_model:
        summary += (
            f"; the built-in model's eager path {row['eager_fps']} fps ({row['eager_ms_per_tick']} ms/tick, "
            f"×{row['eager_to_default']}; optimised ×{row['optimised_to_eager']} of it)"
        )
    summary += (f"; first tick after rest: {row['after_rest_ms_per_tick']['default']} → "
                f"{row['after_rest_ms_per_tick']['optimised']} ms (×{row['after_rest_ratio']})")
    summary += (
        f"; max |Δ| optimised vs {reference.name} {row['max_abs_diff']:.2e} over {row['frames_compared']} frames; "
        f"first frame {row['default_first_frame_s']} s (default) / {row['first_frame_s']} s (optimised)"
    )
    print(f"{summary}; load {os.getloadavg()[0]:.1f}", flush=True)
    return row


def built_in_model_at(revision: str, scratch: Path) -> Path:
    """The built-in model folder as it was at a git revision of this repository (for "before" rows)."""
    folder = scratch / f"tiny-rain-{revision}"
    folder.mkdir(parents=True, exist_ok=True)
    asset = "rain_core/assets/tiny-rain"
    try:
        names = subprocess.run(["git", "ls-tree", "--name-only", f"{revision}:{asset}"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split()
        for name in names:
            blob = subprocess.run(["git", "show", f"{revision}:{asset}/{name}"], cwd=ROOT, check=True,
                                  capture_output=True).stdout
            (folder / name).write_bytes(blob)
    except (subprocess.CalledProcessError, FileNotFoundError) as error:
        raise SystemExit(f"--before-model git:{revision}: cannot read {asset} at that revision from this clone's git "
                         f"history ({error}); use a full clone or pass a model folder instead") from error
    return folder


def start_up(args, cache: str, threads: int) -> float:
    _, optimised_env = environments(cache)
    worker_ = Worker("optimised", threads, args.fast_path, optimised_env, args.candidate)
    worker_.process.stdin.close()  # no ticks: the worker ends after its first frame
    worker_.process.wait(timeout=3600)
    return round(worker_.first_frame_s, 2)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=lambda s: [int(x) for x in s.split(",")], default=[1, 2])
    parser.add_argument("--ticks", type=int, default=24,
                        help="timed steady ticks per path and thread count (rounds × (burst − 1), or rounds with --burst 1)")
    parser.add_argument("--fast-path", default="auto", help="StreamConfig.fast_path of the optimised path")
    parser.add_argument("--cache", default=None, help="inductor cache of the side-by-side runs (default: rain's)")
    parser.add_argument("--no-cold", action="store_true", help="skip the cold/warm start-up measurement")
    parser.add_argument("--before-model", default=None,
                        help="also time an earlier built-in model on its eager path, interleaved: a model folder or "
                        "git:REV (the built-in model at that revision of this repository)")
    parser.add_argument("--settle", type=float, default=0.3, help="seconds of rest before each worker's turn")
    parser.add_argument("--burst", type=int, default=4,
                        help="ticks per worker's turn, back to back; the first (straight after the rest) is reported "
                        "apart, the others are the steady figure (1: one tick per turn, the old method)")
    parser.add_argument("--candidate", type=Path, default=None,
                        help="a model folder the optimised (and eager) paths run instead of the built-in model: "
                        "a retrained model measured before it is shipped")
    parser.add_argument("--out", type=Path, default=RESULT)
    parser.add_argument("--model", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.burst < 1:
        parser.error(f"--burst: expected at least 1 tick per turn, found {args.burst}")
    if args.candidate is not None and not (args.candidate / "rain_config.json").is_file():
        parser.error(f"--candidate {args.candidate}: expected a RAIN model folder holding rain_config.json "
                     "(a trained model's OUTPUT/final)")
    if args.worker:
        args.threads = args.threads[0]
        worker(args)
        return

    from rain_core.cpu import cpu_summary
    from rain_core.stream.compile_cache import cache_dir

    machine = {**cpu_summary(), "load_average_start": round(os.getloadavg()[0], 1)}
    machine.pop("threads")
    machine.pop("omp_wait_policy")
    print(f"machine: {machine}", flush=True)
    result = {"command": "bench/cpu_live.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "config": "tiny-rain, 64 px, 4 levels × 4 frames, 4 steps, seed 0, examples/anyone-video-1_kps.mp4",
              "machine": machine, "rows": []}
    with tempfile.TemporaryDirectory(prefix="rain-cpu-live-") as scratch:
        if not args.no_cold:
            cold_cache = str(Path(scratch) / "cold-cache")
            args.cache = args.cache or cold_cache
            cold = start_up(args, cold_cache, args.threads[-1])
            warm = start_up(args, cold_cache, args.threads[-1])
            result["start_up"] = {"threads": args.threads[-1], "cold_cache_first_frame_s": cold,
                                  "warm_cache_first_frame_s": warm}
            print(f"start-up to the first frame ({args.threads[-1]} threads, optimised): cold cache {cold} s, "
                  f"warm cache {warm} s", flush=True)
        cache = args.cache or str(cache_dir())  # the cache the start-up runs filled, if they ran
        args.before_label = args.before_model  # as typed (a folder or git:REV)
        if args.before_model and args.before_model.startswith("git:"):
            args.before_model = built_in_model_at(args.before_model[4:], Path(scratch))
        for threads in args.threads:
            result["rows"].append(side_by_side(args, threads, cache, Path(scratch)))
    result["machine"]["load_average_end"] = round(os.getloadavg()[0], 1)
    write_json_atomic(args.out, result, ensure_ascii=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
