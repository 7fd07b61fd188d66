"""The `rain` command: demo, animate, batch, live, bench, info, convert, download, train, queue, cache; one module
each.

Exit codes: 0 ok, 2 bad input (the message says what to change), 1 internal error, 130 interrupted (Ctrl-C),
143 / 129 stopped by SIGTERM / SIGHUP (handled as Ctrl-C is). With --json a failure prints
{"error", "exit_code", "message"} on stdout as well.

Imports of torch and the engine sit inside each command's `run`: `rain --help` and a refused flag answer at once
instead of after torch and diffusers load (about 2 s).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import signal
import sys
import traceback

from . import animate, batch, bench, cache, convert, demo, download, info, live, queue, train
from .common import (
    EXIT_BAD_INPUT,
    EXIT_INTERNAL,
    EXIT_OK,
    Interrupted,
    UsageError,
    builtin_model_dir,
    interrupt_signal,
    is_input_error,
    signal_name,
    stop_signals,
)

__all__ = ["main", "build_parser", "UsageError", "builtin_model_dir", "EXIT_OK", "EXIT_INTERNAL", "EXIT_BAD_INPUT"]

SUBCOMMANDS = (demo, animate, batch, live, bench, info, convert, download, train, queue, cache)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rain", description="RAIN: animate a character from one reference "
                                     "image and an endless pose stream, in real time.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def _failure(command: str, wants_json: bool, code: int, kind: str, message: str) -> int:
    """The one way a command reports failure: one line on stderr, and with --json an object on stdout."""
    print(f"rain {command}: {message}", file=sys.stderr)
    if wants_json:
        print(json.dumps({"error": kind, "exit_code": code, "message": message}, indent=2))
    return code


def _parse(parser: argparse.ArgumentParser, argv: list[str], wants_json: bool):
    """argparse's own errors exit 2 after printing usage; with --json they are reported as every failure is."""
    if not wants_json:
        return parser.parse_args(argv)
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            return parser.parse_args(argv)
    except SystemExit as exit_:
        text = captured.getvalue()
        sys.stderr.write(text)
        if exit_.code in (0, None):
            raise
        lines = [line for line in text.splitlines() if line.strip()]
        message = lines[-1].split(": error: ", 1)[-1] if lines else "bad arguments"
        print(json.dumps({"error": "bad_input", "exit_code": EXIT_BAD_INPUT, "message": message}, indent=2))
        raise


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    wants_json = "--json" in argv
    parser = build_parser()
    if argv and argv[0] == "train":
        args, rest = argparse.Namespace(command="train"), argv[1:]
    else:
        args, rest = _parse(parser, argv, wants_json), []
    if not args.command:
        parser.print_help()
        return EXIT_BAD_INPUT
    command = args.command
    try:
        with stop_signals():
            if command == "train":
                return train.run(args, rest)
            return args.handler(args)
    except Interrupted as interrupted:
        return _failure(command, wants_json, 128 + interrupted.signum, "interrupted", str(interrupted))
    except KeyboardInterrupt as stop:
        signum = interrupt_signal(stop)
        by = "" if signum == signal.SIGINT else f" by {signal_name(signum)}"
        return _failure(command, wants_json, 128 + signum, "interrupted", f"interrupted{by}; nothing written.")
    except BrokenPipeError:  # `rain info | head`: the reader left, nothing to report
        return EXIT_OK
    except Exception as error:  # the one place that turns exceptions into exit codes
        if is_input_error(error):
            return _failure(command, wants_json, EXIT_BAD_INPUT, "bad_input", str(error))
        traceback.print_exc()
        return _failure(command, wants_json, EXIT_INTERNAL, "internal_error",
                        f"internal error: {error}. Please report it with the traceback above.")
