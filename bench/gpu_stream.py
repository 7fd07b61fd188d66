"""Real-time RAIN on one GPU: check the fast path against eager fp32, then time every optimisation, in one run.

Builds the full-size networks (`RainModelConfig.sd15()`, every parameter random, zero-initialised ones too,
so no path is blind) on the device, and in sections, each under a time budget and each writing what it has
to JSON before the next starts:

  environment  card, versions, optional packages
  ceiling      bf16 / fp16 / tf32 / fp32 matmul TFLOP/s and copy GB/s measured here (the "achieved" reference)
  build        random full-size networks, the reference pass (reference UNet once)
  cost         FLOPs per tick (per stage; reference K/V cached and recomputed), bytes, host syncs in a tick
  engine       RainStream.push, eager (fast_path="off") and its own fast path ("auto": static tick + CUDA graph on
               CUDA; "static" elsewhere), fp32 and half, frames compared; the static tick checked against the eager tick
  check        optimised tick (half, channels_last, CUDA graph) vs eager fp32 tick: relative error, 1 and 8 ticks
  rows         eager fp32 → SDPA → reference K/V cache → tf32 → fused LCM step → bf16/fp16 → channels_last →
               CUDA graph of the whole tick; each: fps, ms per tick split guider/UNet/step/decode, latency at
               30 fps input, peak memory, TFLOP/s against the measured ceiling
  memory       the working set once the reference is fused (reference UNet and fp32 master freed)
  compile      torch.compile of the UNet, with and without the CUDA graph; TensorRT only if importable
  authors      (--authors PATH) the authors' UNet3D with random weights on the same card, for a ratio

The parts live in bench/gpu/ (one module per job); this file is the one-call entry point.
GPU timing uses CUDA events and never reads a device value inside a timed region. Prints a table last;
figures go to $OUT/gpu_stream.json (default ./out). On CPU, `--tiny` runs every section on a tiny model in
well under a minute (that is how the script is tested without a GPU).

    python bench/gpu_stream.py --out $OUT --budget-s 540          # GPU machine, one call
    .venv/bin/python bench/gpu_stream.py --tiny --out /tmp/gs       # CPU smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a plain checkout (no pip install)

import torch  # noqa: E402

try:  # the networks are built from diffusers blocks; a bare GPU image may lack it
    import diffusers  # noqa: F401, E402
except ImportError as error:  # pragma: no cover - depends on the machine
    sys.exit(
        f"gpu_stream: cannot import diffusers ({error}). Install it first, e.g. from wheels carried with the call: "
        "python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site"
    )

from bench.gpu.authors import section_authors  # noqa: E402
from bench.gpu.build import build_master, half_copy, make_reference, stream_config  # noqa: E402
from bench.gpu.rows import COMPILE_ROWS, ROWS, section_memory, section_rows, section_tensorrt  # noqa: E402
from bench.gpu.run import Run, free_memory  # noqa: E402
from bench.gpu.sections import (  # noqa: E402
    section_ceiling,
    section_check,
    section_cost,
    section_engine,
    section_environment,
)
from bench.gpu.table import print_table  # noqa: E402
from rain_core.stream.accel import FastPath  # noqa: E402

# ---------------------------------------------------------------------- main


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=os.environ.get("OUT", "./out"), help="folder for gpu_stream.json ($OUT)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="stop starting sections after this many seconds")
    parser.add_argument("--tiny", action="store_true", help="tiny networks, 16-px frames (CPU smoke run)")
    parser.add_argument("--device", default=None, help="default: cuda if available (cpu with --tiny)")
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--levels", type=int, default=4)
    parser.add_argument("--frames-per-cohort", type=int, default=None, help="default 4 (2 with --tiny)")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--ticks", type=int, default=None, help="timed ticks per row (default 20 on a GPU, 2 tiny)")
    parser.add_argument("--warmup", type=int, default=None, help="untimed ticks per row (default 3, 1 tiny)")
    parser.add_argument("--split-ticks", type=int, default=None, help="ticks timed stage by stage (default 5, 1 tiny)")
    parser.add_argument("--engine-ticks", type=int, default=None, help="RainStream ticks timed (default 3, 1 tiny)")
    parser.add_argument("--check-ticks", type=int, default=None, help="ticks compared in the check (8; 2 tiny)")
    parser.add_argument("--row-cap-s", type=float, default=10.0, help="stop timing a row after this many seconds")
    parser.add_argument("--row-min-s", type=float, default=15.0, help="skip a row with less budget than this left")
    parser.add_argument("--rows", default="", help="comma-separated row ids to run (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip (e.g. compile,authors)")
    parser.add_argument("--compile-min-s", type=float, default=150.0, help="budget needed to try torch.compile")
    parser.add_argument("--cpu-compile-backend", default="eager", help="torch.compile backend off CUDA (tests)")
    parser.add_argument("--authors", default=None, help="path of the authors' RAIN checkout (never committed here)")
    parser.add_argument("--authors-python", default=None, help="python for the authors' code (default: this one)")
    parser.add_argument("--authors-pythonpath", default=None, help="prepended to PYTHONPATH for the authors' code")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    gpu = not args.tiny and (args.device or ("cuda" if torch.cuda.is_available() else "cpu")).startswith("cuda")
    args.device = args.device or ("cuda" if torch.cuda.is_available() and not args.tiny else "cpu")
    args.ticks = args.ticks or (20 if gpu else 2)
    args.warmup = args.warmup if args.warmup is not None else (3 if gpu else 1)
    args.split_ticks = args.split_ticks or (5 if gpu else 1)
    args.engine_ticks = args.engine_ticks or (3 if gpu else 1)
    args.check_ticks = args.check_ticks or (8 if gpu else 2)
    args.frames_per_cohort = args.frames_per_cohort or (2 if args.tiny else 4)
    args.rows = {r for r in args.rows.split(",") if r}
    args.skip = {s for s in args.skip.split(",") if s}
    if args.tiny:
        args.row_min_s = min(args.row_min_s, 1.0)
        args.compile_min_s = min(args.compile_min_s, 5.0)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    run = Run(args)
    run.results["args"] = {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()}
    stream_cfg = stream_config(args)
    print(f"gpu_stream: device {device}, budget {args.budget_s:.0f} s, stream {stream_cfg.to_dict()}", flush=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # static shapes: pick the fastest conv algorithms once
    state: dict = {}

    def build():
        state["fp32"] = build_master(run, args, device)
        state["clip_tokens"], state["reference"], _ = make_reference(state["fp32"], stream_cfg, args.seed)

    def copies():
        state["bf16"] = half_copy(state["fp32"], half_dtype)
        if device.type == "cuda":
            state["fp16"] = half_copy(state["fp32"], torch.float16)

    def wanted(name: str) -> bool:
        return name not in args.skip

    run.section("environment", lambda: section_environment(run, device), 1)
    if wanted("ceiling"):
        run.section("ceiling", lambda: section_ceiling(run, device, args.tiny), 10, limit_s=60)
    if not run.section("build", build, 20, limit_s=150):
        print_table(run)
        return run.results
    half_dtype = torch.bfloat16 if device.type != "cuda" or torch.cuda.is_bf16_supported() else torch.float16
    run.section("copies", copies, 5, limit_s=60)
    master, clip_tokens, reference = state["fp32"], state["clip_tokens"], state["reference"]
    fast = FastPath.for_device(device).replace(dtype=state.get("bf16", master).dtype)
    if wanted("cost"):
        run.section(
            "cost", lambda: section_cost(run, master, stream_cfg, clip_tokens, reference, device), 20, limit_s=90
        )
    if wanted("engine"):
        run.section(
            "engine", lambda: section_engine(run, master, state.get("bf16"), stream_cfg, args, device), 30, limit_s=90
        )
    if wanted("check") and "bf16" in state:
        run.section(
            "check",
            lambda: section_check(
                run, master, state["bf16"], stream_cfg, clip_tokens, reference, device, fast, args.check_ticks
            ),
            20,
            limit_s=60,
        )
    variants = {key: state[key] for key in ("fp32", "bf16", "fp16") if key in state}
    if wanted("rows"):
        run.section(
            "rows", lambda: section_rows(run, ROWS, variants, stream_cfg, clip_tokens, reference, device, args), 30
        )
    # from here on the fp32 master and the fp16 copy are gone: only what a running stream keeps stays resident
    for key in ("fp32", "fp16"):
        variants.pop(key, None)
        state.pop(key, None)
    master = None  # noqa: F841 - drop the last reference to the fp32 networks
    free_memory(device)
    if wanted("memory") and "bf16" in variants:
        run.section(
            "memory",
            lambda: section_memory(run, variants["bf16"], stream_cfg, clip_tokens, reference, device, args),
            15,
            limit_s=60,
        )
    if wanted("compile") and (device.type == "cuda" or args.tiny):
        run.section(
            "compile",
            lambda: section_rows(run, COMPILE_ROWS, variants, stream_cfg, clip_tokens, reference, device, args),
            args.compile_min_s,
        )
    run.section("tensorrt", lambda: section_tensorrt(run), 1)
    if args.authors and wanted("authors"):
        variants.clear()
        state.clear()
        free_memory(device)
        unet_ms = {
            row["id"]: row["stage_ms"]["unet"]
            for row in run.results["rows"]
            if "stage_ms" in row
            and row["id"] in ("bf16", "fp16", "bf16_cl_graph", "fp16_cl_graph", "bf16_cl_compile_graph")
        }
        run.section("authors", lambda: section_authors(run, args, stream_cfg, device, unet_ms), 30)
    run.results["total_seconds"] = round(time.perf_counter() - run.started, 1)
    run.save()
    print_table(run)
    return run.results


if __name__ == "__main__":
    main()
