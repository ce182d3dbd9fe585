"""``python -m benchmarks``: the command line of the benchmarks (run from a clone)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
from pathlib import Path

from livekit_segments._cli import (
    ArgumentParser,
    UsageError,
    check_livekit_agents,
    output_path,
    run_command as run_with_usage_errors,
)

from . import cross_process, record
from .process_setup import forcing_install
from .runner import BENCHMARKS, BenchConfig, run_bench

__all__ = ["PROG", "build_parser", "main", "run_command"]

PROG = "python -m benchmarks"

DESCRIPTION = """\
Measure the runtime patch against upstream livekit-agents doing the same work with plain
FlushSentinel, in one process and one run, and print each figure with its ratio:
B1 cost of being installed, B2 cost per segment, B3 signal latency, B4 silence between
segments (on livekit's native AudioSource clock), B5 no leaks, B6 100 concurrent sessions in
real time (event-loop lag, CPU per second of audio, RSS). With a livekit-agents that
implements segment handles natively, only the native form is measured (ratios n/a);
from a pristine venv, --native-python PYTHON measures the native form against upstream too,
each in its own worker process (B1n, B2n).
Exits 0 even when a target is missed, unless --check is given.
"""


def build_parser() -> argparse.ArgumentParser:
    """The parser of ``python -m benchmarks``; its ``func`` runs them."""
    parser = ArgumentParser(
        prog=PROG,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    configure(parser)
    return parser


def configure(parser: argparse.ArgumentParser) -> None:
    size = parser.add_mutually_exclusive_group()
    size.add_argument(
        "--quick",
        action="store_true",
        help="smaller counts, under 30 s; numbers are noisy (for CI, without --check)",
    )
    # the test suite's size: every code path in a few seconds
    size.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--json", type=Path, metavar="PATH", help="also write the results as JSON to PATH"
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="exit 1 if a target is missed (its whole 95%% interval beyond it); "
        "inconclusive is not a failure",
    )
    parser.add_argument(
        "--record",
        metavar="PATH",
        help="write BENCHMARKS.md-style Markdown naming the commit measured (full run only; "
        "refuses uncommitted changes under livekit_segments/)",
    )
    parser.add_argument(
        "--only",
        metavar="B1,B2,...",
        type=_bench_list,
        help="run only these benchmarks (comma-separated)",
    )
    parser.add_argument(
        cross_process.OPTION,
        metavar="PYTHON",
        help="also measure B1 and B2 of the native form (PYTHON: a venv's python with the "
        "series installed, e.g. .venv-native/bin/python) against this venv's upstream, each "
        "form in its own worker process (B1n, B2n); run from a pristine venv",
    )
    parser.add_argument(
        "--verbose", action="store_true", help="keep livekit's log output (quiet by default)"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="run on a livekit-agents release outside SUPPORTED_VERSIONS (install(force=True))",
    )
    parser.set_defaults(func=run_command)


def _bench_list(text: str) -> list[str]:
    known = {b.upper(): b for b in (*BENCHMARKS, *cross_process.BENCHMARKS)}
    given = [x.strip() for x in text.split(",") if x.strip()]
    unknown = [x for x in given if x.upper() not in known]
    if unknown or not given:
        choices = ", ".join(known.values())
        raise argparse.ArgumentTypeError(
            f"unknown benchmark {', '.join(unknown) or text!r}; choose from {choices}"
        )
    return [known[x.upper()] for x in given]


def _split_only(args: argparse.Namespace) -> tuple[list[str] | None, list[str] | None]:
    """``--only`` as (in-process benchmarks, cross-process ones); None is all of them."""
    native = args.native_python is not None
    if args.only is None:
        return None, (None if native else [])
    crossed = [b for b in args.only if b in cross_process.BENCHMARKS]
    if crossed and not native:
        raise UsageError(
            f"{', '.join(crossed)} run the native form in its own python: add "
            f"{cross_process.OPTION} PYTHON (e.g. .venv-native/bin/python)"
        )
    if native and not crossed:
        raise UsageError(
            f"{cross_process.OPTION} measures {', '.join(cross_process.BENCHMARKS)}, which "
            f"--only leaves out: add them, or drop {cross_process.OPTION}"
        )
    return [b for b in args.only if b in BENCHMARKS], crossed


def run_command(args: argparse.Namespace) -> int:
    """Run the benchmarks as ``args`` say; print the table; 1 on a miss with ``--check``.

    Raises `UsageError` before measuring anything for an unusable ``--json`` path or a
    livekit-agents that `install()` refuses (unless ``--force`` lets it).
    """
    preset = "tiny" if args.tiny else "quick" if args.quick else "default"
    config = BenchConfig.preset_named(preset)
    in_process, crossed = _split_only(args)
    if args.json is not None:
        output_path(args.json, "--json")
    check_livekit_agents(force=args.force)
    provenance = None
    if args.record:
        try:
            provenance = record.prepare(preset, args.only, path=args.record)
        except record.RecordError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2

    def progress(message: str) -> None:
        print(f"[bench] {message}", file=sys.stderr, flush=True)

    with contextlib.ExitStack() as stack:
        pair = None
        if args.native_python is not None:  # started first: a bad PYTHON fails at once
            pair = stack.enter_context(
                cross_process.Pair.started(args.native_python, verbose=args.verbose)
            )
        with forcing_install(args.force):
            report = asyncio.run(
                run_bench(config, only=in_process, progress=progress, quiet_logs=not args.verbose)
            )
        if pair is not None:
            t0 = time.perf_counter()
            results = asyncio.run(cross_process.run(config, pair, only=crossed, progress=progress))
            cross_process.extend(report, results, pair, time.perf_counter() - t0)
    print(report.render_table())
    if args.json is not None:
        report.write_json(args.json)
        print(f"results written to {args.json}", file=sys.stderr)
    if provenance is not None:
        try:
            record.confirm(provenance)
        except record.RecordError as e:
            print(f"{PROG}: error: {e}", file=sys.stderr)
            return 2
        command = record.COMMAND
        if args.native_python is not None:
            command += f" {cross_process.OPTION} {args.native_python}"
        record.write(args.record, record.render(report, provenance, command=command))
        print(
            f"record of commit {provenance.commit[:12]} written to {args.record}", file=sys.stderr
        )
    return 1 if args.check and report.missed else 0


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks as ``python -m benchmarks`` does, with ``argv`` (default: the
    command line); a bad argument or a refusal is one line and exit 2."""
    args = build_parser().parse_args(argv)
    return run_with_usage_errors(run_command, args, PROG)
