"""The ``livekit-segments`` command (also ``python -m livekit_segments``)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from . import doctor
from ._cli import EXIT_USAGE, ArgumentParser, run_command
from .demo import cli as demo_cli
from .version import __version__

__all__ = ["BENCH_MOVED", "build_parser", "main"]

BENCH_MOVED = (
    "livekit-segments: error: 'bench' is not part of the installed package: the benchmarks "
    "are developer tooling; from a clone of livekit-segments run 'python -m benchmarks' "
    "(BENCHMARKS.md has their figures)"
)


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
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: the command line), run the subcommand, return its exit code."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:  # where the benchmarks were, until they left the package
        print(BENCH_MOVED, file=sys.stderr)
        return EXIT_USAGE
    args = build_parser().parse_args(argv)
    return run_command(args.func, args)


if __name__ == "__main__":
    raise SystemExit(main())
