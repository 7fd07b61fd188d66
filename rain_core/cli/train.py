"""`rain train`: stages 1–3 of training; its flags belong to rain_core.train (`rain train --help`)."""

from __future__ import annotations


def add_parser(sub) -> None:
    sub.add_parser("train", help="train or fine-tune (stages 1–3); `rain train --help` for its flags", add_help=False)


def run(args, rest: list[str]) -> int:
    from ..train import train_main

    return int(train_main(rest) or 0)
