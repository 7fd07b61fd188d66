"""The `rain` command: demo, animate, batch, live, bench, info, convert, download, train, queue; one module each.

Exit codes: 0 ok, 2 bad input (the message says what to change), 1 internal error, 130 interrupted.
"""

from __future__ import annotations

import argparse
import sys
import traceback

from . import animate, batch, bench, convert, demo, download, info, live, queue, train
from .common import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_INTERRUPTED,
    EXIT_OK,
    Interrupted,
    UsageError,
    builtin_model_dir,
    is_input_error,
)

__all__ = ["main", "build_parser", "UsageError", "builtin_model_dir", "EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT"]

SUBCOMMANDS = (demo, animate, batch, live, bench, info, convert, download, train, queue)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rain", description="RAIN: animate a character from one reference "
                                     "image and an endless pose stream, in real time.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
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
    try:
        if args.command == "train":
            return train.run(args, rest)
        return args.handler(args)
    except Interrupted as interrupted:
        print(f"rain {args.command}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print(f"rain {args.command}: interrupted; nothing written.", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # `rain info | head`: the reader left, nothing to report
        return EXIT_OK
    except Exception as error:  # the one place that turns exceptions into exit codes
        if is_input_error(error):
            print(f"rain {args.command}: {error}", file=sys.stderr)
            return EXIT_BAD_INPUT
        traceback.print_exc()
        print(f"rain {args.command}: internal error: {error}. Please report it with the traceback above.",
              file=sys.stderr)
        return EXIT_INTERNAL
