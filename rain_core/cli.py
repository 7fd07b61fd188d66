"""The `rain` command: demo, animate, live, convert, bench, train, info, queue.

Exit codes: 0 ok, 2 bad input (the message says what to change), 1 internal error.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time
import traceback
from pathlib import Path

EXIT_OK, EXIT_INTERNAL, EXIT_BAD_INPUT = 0, 1, 2


class UsageError(ValueError):
    """Bad arguments or inputs detected by the command line itself."""


def _is_input_error(error: BaseException) -> bool:
    """Errors a user can fix: our own ValueError subclasses, missing files, bad arguments."""
    if isinstance(error, (UsageError, FileNotFoundError, NotADirectoryError, IsADirectoryError)):
        return True
    if isinstance(error, ValueError):
        module = type(error).__module__ or ""
        return module.startswith("rain_core")
    return False


def _emit(args, summary: dict, lines: list[str]) -> None:
    if getattr(args, "json", False):
        print(json.dumps(summary, indent=2, default=float))
    else:
        for line in lines:
            print(line)


def _check_output_path(path: str) -> Path:
    out = Path(path)
    folder = out if out.suffix == "" else out.parent
    parent = folder.parent if out.suffix == "" else folder
    if not parent.exists():
        raise UsageError(f"--out {path}: the folder {parent} does not exist. Create it first or choose another path.")
    return out


# --------------------------------------------------------------------------- model / stream helpers


def _add_stream_flags(parser: argparse.ArgumentParser, defaults: dict) -> None:
    group = parser.add_argument_group("stream settings")
    group.add_argument("--levels", type=int, default=defaults.get("levels", 4), help="p: noise levels (cohorts) in flight")
    group.add_argument("--frames-per-cohort", type=int, default=defaults.get("frames_per_cohort", 4),
                       help="m: frames sharing one noise level")
    group.add_argument("--steps", type=int, default=defaults.get("steps", 4), help="LCM steps per frame (multiple of --levels)")
    group.add_argument("--guidance", type=float, default=defaults.get("guidance", 3.5), help="LCM w-embedding value")
    group.add_argument("--height", type=int, default=defaults.get("height", 512))
    group.add_argument("--width", type=int, default=defaults.get("width", 512))
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--decoder", choices=["auto", "taesdv", "vae"], default="auto",
                       help="auto: TAESDV when the model has it, else the full decoder")
    group.add_argument("--device", default="auto", help="cpu, cuda, cuda:1 … (auto: cuda when available)")
    group.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto")
    group.add_argument("--fps", type=float, default=None, help="output video fps (default: the input's, or 16)")


def _resolve_device(name: str):
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _resolve_dtype(name: str, device):
    import torch

    if name == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    return getattr(torch, name)


def _stream_config(args):
    from .stream import StreamConfig

    return StreamConfig(levels=args.levels, frames_per_cohort=args.frames_per_cohort, steps=args.steps,
                        guidance=args.guidance, height=args.height, width=args.width, seed=args.seed,
                        decoder=args.decoder)


def builtin_model_dir() -> Path:
    return Path(__file__).resolve().parent / "assets" / "tiny-rain"


# --------------------------------------------------------------------------- subcommands


def cmd_info(args) -> int:
    import platform

    import torch

    from . import __version__

    found = {}
    roots = [Path(p) for p in (args.models or [])] + [builtin_model_dir().parent]
    comfy = os.environ.get("COMFYUI_DIR")
    if comfy:
        roots.append(Path(comfy) / "models" / "rain")
    for root in roots:
        if not root.exists():
            continue
        for candidate in sorted({p.parent for pattern in ("**/*.pth", "**/*.safetensors", "**/rain_config.json")
                                 for p in root.glob(pattern)}):
            found[str(candidate)] = sorted(p.name for p in candidate.iterdir() if p.is_file())
    versions = {"rain": __version__, "python": platform.python_version(), "torch": torch.__version__}
    for module in ("diffusers", "transformers", "safetensors", "cv2", "onnxruntime", "accelerate"):
        try:
            versions[module] = __import__(module).__version__
        except Exception:  # optional packages
            versions[module] = "not installed"
    device = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    summary = {"versions": versions, "device": device, "model_folders": found}
    lines = [f"rain {__version__} — device: {device}"]
    lines += [f"  {k}: {v}" for k, v in versions.items()]
    lines.append("model folders found:" if found else "model folders found: none")
    for folder, files in found.items():
        lines.append(f"  {folder}: {', '.join(files)}")
    _emit(args, summary, lines)
    return EXIT_OK


def cmd_convert(args) -> int:
    from .loading import convert_official

    source, target = Path(args.source), Path(args.target)
    if not source.is_dir():
        raise UsageError(f"SOURCE {source}: expected a folder holding reference_unet.pth, motion_unet.pth and "
                         "pose_guider.pth (the authors' RAIN-v0.1 files); it does not exist or is not a folder.")
    written = convert_official(source, target)
    files = [str(p) for p in written] if written else sorted(str(p) for p in target.iterdir())
    _emit(args, {"written": files}, [f"wrote {f}" for f in files])
    return EXIT_OK


def cmd_train(args, rest: list[str]) -> int:
    from .train import train_main

    return int(train_main(rest) or 0)


def cmd_queue(args) -> int:
    from .comfy_client import (
        ComfyClient,
        JobResult,
        WorkflowError,
        apply_overrides,
        error_messages,
        parse_value,
        ui_to_api,
    )

    workflow_path = Path(args.workflow)
    if not workflow_path.is_file():
        raise UsageError(f"WORKFLOW {workflow_path}: file not found. Pass a workflow saved from ComfyUI (.json).")
    try:
        workflow = json.loads(workflow_path.read_text())
    except json.JSONDecodeError as error:
        raise UsageError(f"WORKFLOW {workflow_path}: not valid JSON ({error}).") from None
    overrides = {}
    for item in args.set or []:
        if "=" not in item:
            raise UsageError(f"--set {item}: expected NODE.INPUT=VALUE")
        key, value = item.split("=", 1)
        overrides[key] = parse_value(value)
    sweeps = []
    for item in args.sweep or []:
        if "=" not in item:
            raise UsageError(f"--sweep {item}: expected INPUT=GLOB or NODE.INPUT=GLOB, e.g. reference=refs/*.png")
        key, pattern = item.split("=", 1)
        files = sorted(glob.glob(pattern))
        if not files:
            raise UsageError(f"--sweep {item}: the pattern matches no file")
        sweeps.append((key, [Path(f) for f in files]))

    client = ComfyClient(args.server, timeout=args.timeout)
    object_info = client.object_info()
    base_prompt = apply_overrides(ui_to_api(workflow, object_info), overrides)

    def sweep_targets(key):
        if "." in key:
            return [key]
        # bare input name: every node having that input (e.g. 'image' of LoadImage nodes, 'reference' …)
        hits = [f"{nid}.{key}" for nid, node in base_prompt.items() if key in node["inputs"]]
        if not hits:
            raise UsageError(f"--sweep {key}=…: no node in the workflow has an input named '{key}'")
        return hits

    jobs = [({}, "job")]
    for key, files in sweeps:
        targets = sweep_targets(key)
        jobs = [({**o, **{t: f for t in targets}}, f"{name}-{f.stem}") for o, name in jobs for f in files]

    out = Path(args.out)
    results: list[JobResult] = []
    for index, (sweep_values, name) in enumerate(jobs, 1):
        start = time.monotonic()
        result = JobResult(name=name, status="error")
        try:
            uploads = {key: client.upload_image(path) for key, path in sweep_values.items()}
            prompt = apply_overrides(base_prompt, uploads)
            result.prompt_id = client.queue(prompt)
            print(f"[{index}/{len(jobs)}] {name}: queued {result.prompt_id}", file=sys.stderr)
            entry = client.wait(result.prompt_id, timeout=args.job_timeout)
            if entry["status"]["status_str"] == "success":
                result.files = client.download_outputs(entry, out, prefix=f"{name}_" if len(jobs) > 1 else "")
                result.status = "success"
            else:
                result.error = error_messages(entry)
        except (WorkflowError, RuntimeError, OSError) as error:
            result.error = str(error)
        result.seconds = round(time.monotonic() - start, 2)
        print(f"[{index}/{len(jobs)}] {name}: {result.status}" + (f" — {result.error}" if result.error else
                                                                    f" — {len(result.files)} file(s)"), file=sys.stderr)
        results.append(result)
    failed = [r for r in results if r.status != "success"]
    summary = {"jobs": [r.__dict__ for r in results], "failed": len(failed)}
    _emit(args, summary, [f"{r.name}: {r.status} {r.files or r.error}" for r in results])
    return EXIT_OK if not failed else EXIT_INTERNAL


# --------------------------------------------------------------------------- parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rain", description="RAIN: animate a character from one reference "
                                     "image and an endless pose stream, in real time.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("info", help="which model files were found where, device, versions")
    p.add_argument("--models", action="append", help="extra folder to search for checkpoints (repeatable)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("convert", help="convert the authors' .pth files to safetensors (+ rain_config.json)")
    p.add_argument("source", help="folder with reference_unet.pth, motion_unet.pth, pose_guider.pth")
    p.add_argument("target", help="output folder")
    p.add_argument("--json", action="store_true")

    sub.add_parser("train", help="train or fine-tune (stages 1–3); `rain train --help` for its flags", add_help=False)

    p = sub.add_parser("queue", help="batch-render a workflow through a running ComfyUI")
    p.add_argument("workflow", help="workflow .json (UI format or API format)")
    p.add_argument("--server", default="http://127.0.0.1:8188")
    p.add_argument("--set", action="append", metavar="NODE.INPUT=VALUE", help="override an input (repeatable)")
    p.add_argument("--sweep", action="append", metavar="INPUT=GLOB", help="one job per matching file (repeatable)")
    p.add_argument("--out", default="out/queue", help="folder for downloaded outputs")
    p.add_argument("--timeout", type=float, default=30.0, help="HTTP timeout per request (s)")
    p.add_argument("--job-timeout", type=float, default=3600.0, help="max seconds per job")
    p.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if argv and argv[0] == "train":
        args, rest = argparse.Namespace(command="train"), argv[1:]
    else:
        args, rest = parser.parse_args(argv), []
    if not args.command:
        parser.print_help()
        return EXIT_BAD_INPUT
    handlers = {"info": cmd_info, "convert": cmd_convert, "queue": cmd_queue}
    try:
        if args.command == "train":
            return cmd_train(args, rest)
        return handlers[args.command](args)
    except KeyboardInterrupt:
        print("rain: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # the one place that turns exceptions into exit codes
        if _is_input_error(error):
            print(f"rain {args.command}: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        traceback.print_exc()
        print(f"rain {args.command}: internal error: {error}. Please report it with the traceback above.",
              file=sys.stderr)
        return EXIT_INTERNAL


if __name__ == "__main__":
    raise SystemExit(main())
