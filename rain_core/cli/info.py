"""`rain info`: which model files were found where, the device, and library versions."""

from __future__ import annotations

import os
from pathlib import Path

from ..loading.layout import builtin_model_dir
from .common import EXIT_OK, emit


def add_parser(sub) -> None:
    p = sub.add_parser("info", help="which model files were found where, device, versions")
    p.add_argument("--models", action="append", help="extra folder to search for checkpoints (repeatable)")
    p.add_argument("--models-dir", default="models", help="the models/ folder of the README layout: says which "
                   "`rain download` items are there (default: ./models)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    import platform

    import torch

    from .. import __version__

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
    from ..loading.download import item_status

    downloads = item_status(args.models_dir)
    summary = {"versions": versions, "device": device, "model_folders": found,
               "downloads": {name: "complete" if not missing else {"missing": missing}
                             for name, missing in downloads.items()}}
    lines = [f"rain {__version__} — device: {device}"]
    lines += [f"  {k}: {v}" for k, v in versions.items()]
    lines.append("model folders found:" if found else "model folders found: none")
    for folder, files in found.items():
        lines.append(f"  {folder}: {', '.join(files)}")
    lines.append(f"released files under {args.models_dir} (`rain download --what ITEM` fetches an item):")
    for name, missing in downloads.items():
        lines.append(f"  {name}: " + ("complete" if not missing else f"missing {', '.join(missing)}"))
    emit(args, summary, lines)
    return EXIT_OK
