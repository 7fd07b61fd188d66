"""The released model's path on the CPU, as a user runs it: stand-in hub → `rain download` → `rain animate`.

Builds (once) the stand-in hub of `bench/standin_hub.py` (the published RAIN-v0.1 layout at full size, random
weights), serves it on 127.0.0.1, runs the real `rain download --models-dir ROOT/models` through HF_ENDPOINT, then
`rain animate --model ROOT/models/rain/RAIN-v0.1` on the example reference and pose video, one subprocess per
precision and size. Each row: load time, seconds per steady tick (the median after the p − 1 warm-up ticks),
peak resident memory of the child (getrusage of the waited child: the kernel's high-water mark), and what the
CLI reports about itself (RSS after loading, after the reference, at the end). Then `precision_errors` (the
half-precision table, `bench/precision_errors.py`) on the same downloaded weights. Everything goes to
`bench/results/fullsize_cpu.json` with the machine's description.

    nice -n 10 .venv/bin/python bench/fullsize_cpu.py --root runs/fullsize            # ~1-2 h on 2 cores
    .venv/bin/python bench/fullsize_cpu.py --tiny --root /tmp/fs --out /tmp/fs.json    # smoke run, seconds

A row waits (up to --wait-memory-s) until the machine has the memory it needs available, and is recorded as
skipped with the reason when it never does. `--tiny` builds tiny networks in the same file layout and places the
sizes they need (`rain_config.json`) beside the downloaded files, since the released layout carries none.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a plain checkout (no pip install)
sys.path.insert(0, str(ROOT / "bench"))

import standin_hub  # noqa: E402

EXAMPLES = ROOT / "examples"
REFERENCE = EXAMPLES / "anyone-1.png"
POSES = EXAMPLES / "anyone-video-1_kps.mp4"
GIB = 2**30
DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# resident memory a row needs (GiB): weights at that precision + activations (measured at 256, 512 estimated);
# checked before each row starts
NEEDS_GIB = {("fp32", 256): 8.0, ("fp32", 512): 11.0, ("bf16", 256): 6.0, ("bf16", 512): 8.0}


def machine() -> dict:
    import psutil
    import torch

    flags = set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
        model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), platform.processor())
    except OSError:
        model = platform.processor()
    return {"cpu": model, "cores": os.cpu_count(), "memory_gib": round(psutil.virtual_memory().total / GIB, 1),
            "isa": sorted(f for f in flags if f.startswith(("avx512", "amx")) or f in ("avx2", "fma", "avx_vnni")),
            "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
            "load_average": [round(x, 2) for x in os.getloadavg()]}


def available_gib() -> float:
    import psutil

    return psutil.virtual_memory().available / GIB


def wait_for_memory(need_gib: float, wait_s: float, log) -> str | None:
    """None once `need_gib` is available, else the reason it never was within `wait_s`."""
    deadline = time.time() + wait_s
    while True:
        have = available_gib()
        if have >= need_gib:
            return None
        if time.time() >= deadline:
            return f"{have:.1f} GiB available, the row needs ~{need_gib:.0f} GiB (waited {wait_s:.0f} s)"
        log(f"  waiting for memory: {have:.1f} GiB available, need {need_gib:.0f}")
        time.sleep(30)


# The peak resident memory of a process (ru_maxrss from wait4) starts from its parent's at the fork: Linux folds
# the forked image's high-water mark in at exec. So each command runs under this small wrapper (~10 MB, not the
# bench's hundreds), which waits for it and reports its figure.
WRAPPER = """
import json, os, subprocess, sys
process = subprocess.Popen(sys.argv[1:])
_, status, usage = os.wait4(process.pid, 0)
code = os.waitstatus_to_exitcode(status)
sys.stderr.write("FULLSIZE_CHILD " + json.dumps({"code": code, "maxrss_kib": usage.ru_maxrss}) + "\\n")
sys.exit(code if code >= 0 else 1)
"""


def measured(command: list[str], env: dict, log_path: Path, timeout_s: float, cwd: Path = ROOT) -> dict:
    """Run `command` (stderr to `log_path`, stdout beside it as .out): exit code, wall seconds, stdout, and the
    peak resident memory of that process alone (GiB). After `timeout_s` it is killed with its wrapper."""
    started = time.perf_counter()
    out_path = log_path.with_suffix(".out")
    with open(out_path, "w") as out, open(log_path, "w") as err:
        process = subprocess.Popen([sys.executable, "-c", WRAPPER, *command], env=env, stdout=out, stderr=err,
                                   cwd=cwd, start_new_session=True)
        try:
            process.wait(timeout=timeout_s)
            timed_out = False
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)  # its own session: the wrapper and the command, nothing else
            process.wait()
            timed_out = True
    child = next((json.loads(line.split(" ", 1)[1]) for line in log_path.read_text().splitlines()
                  if line.startswith("FULLSIZE_CHILD ")), None)
    return {"code": child["code"] if child else process.returncode, "seconds": time.perf_counter() - started,
            "stdout": out_path.read_text(), "timed_out": timed_out,
            "peak_rss_gib": child["maxrss_kib"] / 2**20 if child else None}  # ru_maxrss: KiB on Linux


def last_json(text: str) -> dict | None:
    start = text.rfind("\n{")
    start = 0 if start < 0 and text.startswith("{") else start + 1
    try:
        return json.loads(text[start:])
    except ValueError:
        return None


def download(root: Path, env: dict, log) -> dict:
    models = root / "models"
    log(f"rain download --models-dir {models}")
    result = measured([str(Path(sys.executable).with_name("rain")), "download", "--models-dir", str(models), "--json"],
                      env, root / "logs" / "download.log", 3600)
    summary = last_json(result["stdout"] or "")
    if result["code"] != 0 or summary is None:
        raise SystemExit(f"rain download failed (exit {result['code']}); see {root / 'logs' / 'download.log'}")
    log(f"  {summary['bytes'] / 1e9:.2f} GB in {result['seconds']:.0f} s")
    return {"seconds": round(result["seconds"], 1), "bytes": summary["bytes"], "files": summary["files"],
            "peak_rss_gib": round(result["peak_rss_gib"], 2)}


def rain_command(source: str | None) -> list[str]:
    """The `rain` command of this install, or of another checkout's rain_core (`--source`, for before/after)."""
    return [sys.executable, "-m", "rain_core"] if source else [str(Path(sys.executable).with_name("rain"))]


def animate_row(root: Path, env: dict, precision: str, size: int, frames: int, timeout_s: float, log,
                source: str | None = None) -> dict:
    out = root / "out" / f"anim_{precision}_{size}.mp4"
    if source:
        env = {**env, "PYTHONPATH": os.pathsep.join([str(Path(source).resolve()), env.get("PYTHONPATH", "")])}
    command = [*rain_command(source), "animate", "--model", str(root / "models/rain/RAIN-v0.1"),
               "--reference", str(REFERENCE), "--poses", str(POSES), "--out", str(out), "--height", str(size),
               "--width", str(size), "--max-frames", str(frames), "--dtype", DTYPES[precision], "--device", "cpu",
               "--json"]
    log(f"rain animate {precision} {size}x{size}, {frames} frames")
    # from another checkout, start there: `python -m` puts the working folder first on the module path
    result = measured(command, env, root / "logs" / f"animate_{precision}_{size}.log", timeout_s,
                      Path(source).resolve() if source else ROOT)
    summary = last_json(result["stdout"] or "") if result["code"] == 0 else None
    row = {"precision": precision, "size": size, "frames": frames, "exit_code": result["code"],
           "wall_s": round(result["seconds"], 1), "peak_rss_gib": _round(result["peak_rss_gib"], 2)}
    if summary is None:
        row["error"] = "timed out" if result["timed_out"] else f"exit {result['code']}: see logs/animate_{precision}_{size}.log"
        log(f"  failed: {row['error']}")
        return row
    ticks = summary["tick_seconds"]
    row.update({
        "load_s": round(summary["load_seconds"], 1), "reference_s": round(summary["reference_seconds"], 1),
        "s_per_tick": _round(summary["steady_seconds_per_tick"], 2),
        "cpu_s_per_tick": _round(summary.get("steady_cpu_seconds_per_tick"), 2), "threads": summary.get("threads"),
        "frames_out": summary["frames"], "ticks_s": [round(t, 2) for t in ticks],
        "ticks_cpu_s": [round(t, 2) for t in summary.get("tick_cpu_seconds", [])],
        "steady_ticks": max(0, len(ticks) - (4 - 1)),
        "rss_gib": {phase: _round(values["rss_gib"], 2) for phase, values in summary["memory_gib"].items()},
        "dtype": summary["dtype"],
    })
    log(f"  load {row['load_s']} s, {row['s_per_tick']} s per steady tick ({row['steady_ticks']} steady), "
        f"peak RSS {row['peak_rss_gib']} GiB")
    return row


def _portable(arg: str) -> str:
    """A command-line argument as recorded: absolute paths (this machine's) shortened to their last part."""
    return Path(arg).name if os.path.isabs(arg) else arg


def _round(value, digits):
    return None if value is None else round(value, digits)


def save(path: Path, results: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(results, indent=1) + "\n")
    os.replace(temporary, path)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", default=str(ROOT / "runs" / "fullsize"), help="hub, downloads, outputs, logs")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "fullsize_cpu.json"))
    parser.add_argument("--tiny", action="store_true", help="tiny networks in the released layout (seconds)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--sizes", default=None, help="comma-separated (default 256,512; 32 with --tiny)")
    parser.add_argument("--frames", type=int, default=24, help="pose frames per row (24 = 3 warm-up + 3 steady ticks)")
    parser.add_argument("--timeout-s", type=float, default=7200.0, help="per row")
    parser.add_argument("--wait-memory-s", type=float, default=1800.0)
    parser.add_argument("--skip", default="", help="comma-separated: rows, errors")
    parser.add_argument("--error-size", type=int, default=None, help="frame size of the precision table (256; 32 tiny)")
    parser.add_argument("--error-frames", type=int, default=32, help="frames of the whole-stream comparison (8 tiny)")
    parser.add_argument("--error-sections", default="networks,stream",
                        help="of the precision table; with --keep, what is not measured is kept from the last run")
    parser.add_argument("--keep", action="store_true", help="keep what a previous run of rows measured (resume)")
    parser.add_argument("--redo", default="", help="with --keep: rows to measure again, e.g. bf16:256,fp32:512")
    parser.add_argument("--source", default=None,
                        help="run `rain animate` from this checkout's rain_core instead (e.g. a `git archive` of an "
                        "earlier commit, for before/after figures)")
    args = parser.parse_args(argv)
    args.sizes = [int(s) for s in (args.sizes or ("32" if args.tiny else "256,512")).split(",")]
    args.precisions = [p for p in args.precisions.split(",") if p]
    args.skip = {s for s in args.skip.split(",") if s}
    args.redo = {(p, int(z)) for p, z in (item.split(":") for item in args.redo.split(",") if item)}
    args.error_size = args.error_size or (32 if args.tiny else 256)
    if args.tiny and args.error_frames == 32:
        args.error_frames = 8
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    root, out = Path(args.root).resolve(), Path(args.out)
    (root / "logs").mkdir(parents=True, exist_ok=True)
    (root / "out").mkdir(parents=True, exist_ok=True)

    def log(message):
        print(message, flush=True)

    previous = json.loads(out.read_text()) if args.keep and out.is_file() else {}
    results = {"bench": "fullsize_cpu", "via_download": True, "tiny": args.tiny, "machine": machine(),
               "command": "bench/fullsize_cpu.py " + " ".join(_portable(a) for a in (argv if argv is not None
                                                                                   else sys.argv[1:])),
               "stream": {"levels": 4, "frames_per_cohort": 4, "steps": 4, "decoder": "taesdv (auto)"},
               "rows": [], "precision_errors": previous.get("precision_errors")}
    standin_hub.build(root / "hub", tiny=args.tiny, log=log)
    env = {**os.environ, "HF_HUB_DISABLE_PROGRESS_BARS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("HF_HUB_OFFLINE", None)
    if args.tiny:  # seconds, not a background compile of a tiny UNet
        env.setdefault("RAIN_BACKGROUND_COMPILE", "0")
    with standin_hub.serve(root / "hub") as hub:
        env.update(standin_hub.environment(hub))
        if (root / "models").exists() and not args.keep:
            shutil.rmtree(root / "models")  # a user's first download, every time
        results["download"] = download(root, env, log)
        if previous.get("download") and not results["download"]["bytes"]:  # resumed: keep the first download's
            results["download"] = {**previous["download"], "rechecked_s": results["download"]["seconds"]}
    if args.tiny:
        shutil.copy(root / "hub" / standin_hub.TINY_CONFIG, root / "models/rain/RAIN-v0.1/rain_config.json")
    save(out, results)

    done = {(row["precision"], row["size"]): row for row in previous.get("rows", [])
            if "s_per_tick" in row and (row["precision"], row["size"]) not in args.redo}
    if "rows" not in args.skip:
        for size in args.sizes:
            for precision in args.precisions:
                if (precision, size) in done:
                    results["rows"].append(done[(precision, size)])
                    continue
                need = 0.5 if args.tiny else NEEDS_GIB.get((precision, size), 16.0)
                reason = wait_for_memory(need, args.wait_memory_s, log)
                if reason:
                    results["rows"].append({"precision": precision, "size": size, "frames": args.frames,
                                            "skipped": reason})
                    log(f"  skipped: {reason}")
                else:
                    results["rows"].append(animate_row(root, env, precision, size, args.frames, args.timeout_s, log,
                                                       args.source))
                save(out, results)
    # --keep resumes: rows measured before for precisions or sizes this run does not measure stay in the file
    grid = {(precision, size) for size in args.sizes for precision in args.precisions} if "rows" not in args.skip else set()
    results["rows"] += [row for key, row in done.items() if key not in grid]
    save(out, results)
    if "errors" not in args.skip:
        import precision_errors
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))  # as `rain` does on the CPU

        folder = root / "models"
        results["precision_errors"] = precision_errors.measure(
            folder / "rain/RAIN-v0.1", size=args.error_size, frames=args.error_frames, log=log,
            save=lambda table: save(out, {**results, "precision_errors": table}),
            sections=[s for s in args.error_sections.split(",") if s], previous=previous.get("precision_errors"))
    results["machine"]["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    save(out, results)
    log(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
