"""The ``livekit-segments`` command (also ``python -m livekit_segments``)."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
from collections.abc import Callable, Sequence
from typing import Any

from . import doctor
from ._cli import ArgumentParser, run_command
from .demo import cli as demo_cli
from .version import __version__

__all__ = ["build_parser", "main"]


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser, with every available subcommand registered."""
    parser = ArgumentParser(
        prog="livekit-segments",
        description="One SpeechHandle per response for LiveKit Agents: demo and tools.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    # subcommands: each module has add_parser(subparsers), which sets `func` (args -> exit code)
    demo_cli.add_parser(subparsers)
    doctor.add_parser(subparsers)
    bench = _optional_subcommand("bench")
    if bench is not None:
        bench(subparsers)
    return parser


def _optional_subcommand(name: str) -> Callable[[Any], Any] | None:
    """``livekit_segments.<name>.add_parser``, if that module is part of this build."""
    module_name = f"{__package__}.{name}"
    if importlib.util.find_spec(module_name) is None:
        return None
    add_parser: Callable[[Any], Any] | None = getattr(
        importlib.import_module(module_name), "add_parser", None
    )
    return add_parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run the subcommand, return its exit code."""
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    raise SystemExit(main())
