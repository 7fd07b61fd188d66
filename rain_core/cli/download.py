"""`rain download`: the released files into the README's models/ layout, with huggingface_hub."""

from __future__ import annotations

from .common import EXIT_OK, Interrupted, emit, interrupt_signal


def add_parser(sub) -> None:
    from ..loading.download import DEFAULT_WHAT, ITEMS

    items = "; ".join(f"{name}: {description}" for name, (description, _) in ITEMS.items())
    p = sub.add_parser("download", help="download the released weights into the models/ layout (Hugging Face)",
                       description=f"Items: {items}. Default: {','.join(DEFAULT_WHAT)}. HF_ENDPOINT picks a mirror; "
                       "HF_HUB_OFFLINE=1 downloads nothing. Complete files are skipped on a second run.")
    p.add_argument("--what", action="append", default=None, metavar="ITEMS",
                   help=f"comma-separated: {','.join(ITEMS)} or all (default: {','.join(DEFAULT_WHAT)})")
    p.add_argument("--models-dir", default="models", help="the models/ folder (ComfyUI's, or any; default: ./models)")
    p.add_argument("--convert", action="store_true",
                   help="then convert RAIN-v0.1 to safetensors in models/rain/RAIN-v0.1-st (the loader prefers it)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=run)


def run(args) -> int:
    from ..loading.download import download_models

    try:
        result = download_models(args.what, args.models_dir, convert=args.convert, quiet=args.json)
    except KeyboardInterrupt as stop:
        raise Interrupted("interrupted; complete files are kept, and the file in progress resumes when the same "
                          "command runs again.", interrupt_signal(stop)) from None
    lines = [f"{status:>10}  {args.models_dir}/{target}" for target, status in result["files"].items()]
    lines.append(f"{result['bytes'] / 1e6:.1f} MB downloaded")
    if result["converted"]:
        lines.append(f"converted to safetensors: {result['converted']}")
    emit(args, result, lines)
    return EXIT_OK
