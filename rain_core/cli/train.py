"""`rain train`: stages 1–3 of training; its flags belong to rain_core.train (`rain train --help`)."""

from __future__ import annotations

import contextlib
import json
import sys


def add_parser(sub) -> None:
    sub.add_parser("train", help="train or fine-tune (stages 1–3); `rain train --help` for its flags; --json prints "
                   "a JSON summary", add_help=False)


def run(args, rest: list[str]) -> int:
    """Hand the flags to the trainer's own parser; `--json` (ours) prints {"model": folder} on stdout and sends the
    trainer's own printing to stderr."""
    from ..train import train_main

    if "--json" not in rest:
        return int(train_main(rest) or 0)
    from ..train.cli import TrainConfig, build_parser, claim_output_folder
    from ..train.trainer import train

    options = build_parser().parse_args([a for a in rest if a != "--json"])
    config = TrainConfig(**vars(options))
    with claim_output_folder(config), contextlib.redirect_stdout(sys.stderr):
        final = train(config)
    print(json.dumps({"model": str(final), "stage": options.stage, "output": str(options.output)}, indent=2))
    return 0
