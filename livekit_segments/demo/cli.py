"""``livekit-segments demo``: run one reply offline and show each response's signals."""

from __future__ import annotations

import argparse
import asyncio
import logging
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .._cli import (
    EXIT_USAGE,
    UsageError,
    check_livekit_agents,
    install_extra_hint,
    install_quietly,
    output_path,
    plural,
    require_module,
)

if TYPE_CHECKING:
    from .analysis import Report
    from .synth import Synthesizer
    from .turn import TurnResult

__all__ = [
    "DemoOptions",
    "DemoOutcome",
    "add_parser",
    "format_table",
    "pick_synth",
    "plot_formats",
    "preflight",
    "run_demo",
]

EXIT_OK = 0
EXIT_INCONSISTENT = 1
EXIT_MISSING_EXTRA = EXIT_USAGE

_DESCRIPTION = """\
Runs one reply of a scripted agent in a real AgentSession, offline: no API keys, no server,
no room. The agent answers with three responses separated by SegmentBreaks; each opens its own
SpeechHandle. Audio plays in real time through a standalone rtc.AudioSource, the playout
clock RoomIO uses. Prints, per response, when speech_created fired, when playout_started says
it started, when the sink started it, and when it becomes audible in the recording.
Exits 1 if any signal is missing or inconsistent.
"""


@dataclass
class DemoOptions:
    """What ``livekit-segments demo`` was asked to do."""

    wav: Path | None = None
    plot: Path | None = None
    builtin_synth: bool = False
    interrupt_at: float | None = None
    short: bool = False
    quiet: bool = False


@dataclass
class DemoOutcome:
    """The exit code, and what was run and found (for callers that run it in-process)."""

    exit_code: int
    result: TurnResult | None = None
    report: Report | None = None


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``demo`` subcommand on an ``add_subparsers()`` object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run one multi-response reply offline and check every segment's signals",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--wav", type=Path, metavar="PATH", help="write the turn as heard (a .wav file)"
    )
    parser.add_argument(
        "--plot",
        type=Path,
        metavar="PATH",
        help="draw the timeline; the extension picks the format: .png, .svg, .pdf, ... "
        "(needs matplotlib)",
    )
    parser.add_argument(
        "--builtin-synth",
        action="store_true",
        help="use the built-in synthesizer even if espeak-ng is installed",
    )
    parser.add_argument(
        "--interrupt-at",
        type=_non_negative_seconds,
        metavar="SECONDS",
        help="interrupt the reply this long after it was requested",
    )
    parser.add_argument(
        "--short", action="store_true", help="say short responses (about 1.5 s of audio)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="print nothing but problems; the exit code tells"
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="run on a livekit-agents release outside SUPPORTED_VERSIONS (install(force=True))",
    )
    parser.set_defaults(func=_command)
    return parser


def _non_negative_seconds(value: str) -> float:
    # ArgumentTypeError, never ValueError: argparse would name this function in the message
    try:
        seconds = float(value)
    except ValueError:
        seconds = math.nan
    if not (seconds >= 0.0 and math.isfinite(seconds)):
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds >= 0")
    return seconds


def preflight(options: DemoOptions, *, force: bool) -> None:
    """Everything that can fail before the demo runs, checked before it runs.

    Creates missing parent folders of ``--wav`` and ``--plot``; raises `UsageError` for an
    unusable path or file name, a missing optional dependency, or a livekit-agents
    `install()` refuses.
    """
    require_module("numpy", "the demo")
    if options.plot is not None:
        require_module("matplotlib", "--plot")
    # the file names first: a refused name must not leave new folders behind
    if options.wav is not None and not options.wav.is_dir():
        check_wav_name(options.wav)
    if options.plot is not None and not options.plot.is_dir():
        check_plot_name(options.plot)
    if options.wav is not None:
        output_path(options.wav, "--wav")
    if options.plot is not None:
        output_path(options.plot, "--plot")
    check_livekit_agents(force=force)
    install_quietly(force=force)


def check_wav_name(path: Path) -> None:
    """Refuse a ``--wav`` name that does not end in ``.wav``: the demo writes WAV only."""
    if path.suffix.lower() != ".wav":
        example = path.with_suffix(".wav") if path.suffix else path.with_name(path.name + ".wav")
        raise UsageError(
            f"--wav {path}: the demo writes WAV only; give a name ending in .wav (e.g. {example})"
        )


def plot_formats() -> dict[str, str]:
    """The file formats matplotlib can save a figure in: extension -> description."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats: dict[str, str] = FigureCanvasBase.get_supported_filetypes()
    return formats


def check_plot_name(path: Path) -> None:
    """Refuse a ``--plot`` name whose extension matplotlib cannot write.

    The extension picks the format. A name without one is refused rather than written
    with ``.png`` appended, which is what matplotlib would do.
    """
    formats = plot_formats()
    listed = ", ".join(sorted(formats))
    ext = path.suffix[1:].lower()
    if not ext:
        raise UsageError(
            f"--plot {path}: no extension to pick the format from; name the file e.g. "
            f"{path.with_name(path.name + '.png')} (formats: {listed})"
        )
    if ext not in formats:
        raise UsageError(
            f"--plot {path}: matplotlib cannot write .{ext} files; use .png, .svg or .pdf "
            f"(formats: {listed})"
        )
    if ext == "pgf":
        import shutil

        import matplotlib

        texsystem = str(matplotlib.rcParams["pgf.texsystem"])
        if shutil.which(texsystem) is None:
            raise UsageError(
                f"--plot {path}: matplotlib writes .pgf with {texsystem}, which is not on "
                f"PATH; use .png, .svg or .pdf"
            )


def _command(args: argparse.Namespace) -> int:
    options = DemoOptions(
        wav=args.wav,
        plot=args.plot,
        builtin_synth=args.builtin_synth,
        interrupt_at=args.interrupt_at,
        short=args.short,
        quiet=args.quiet,
    )
    logging.basicConfig(
        level=logging.ERROR if options.quiet else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    preflight(options, force=args.force)
    return asyncio.run(run_demo(options)).exit_code


async def run_demo(
    options: DemoOptions, *, out: TextIO | None = None, err: TextIO | None = None
) -> DemoOutcome:
    """Run the demo in the running event loop; prints to ``out`` (problems to ``err``)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        from .agent import FULL_SCRIPT, SHORT_SCRIPT
        from .analysis import analyse
        from .turn import QUEUE_SIZE_MS, SAMPLE_RATE, run_turn
    except ModuleNotFoundError as e:
        print(f"error: the demo needs {e.name}: {install_extra_hint()}", file=err)
        return DemoOutcome(EXIT_MISSING_EXTRA)

    def say(line: str = "") -> None:
        if not options.quiet:
            print(line, file=out)

    synth, synth_line = await pick_synth(options.builtin_synth)
    say(f"synthesizer: {synth_line}")
    say(
        f"playout clock: rtc.AudioSource({SAMPLE_RATE} Hz, mono, queue {QUEUE_SIZE_MS} ms), no room"
    )
    responses = SHORT_SCRIPT if options.short else FULL_SCRIPT
    result = await run_turn(responses, synth, interrupt_after=options.interrupt_at)
    report = analyse(result)

    say()
    say(format_table(report))
    say()
    for note in report.notes:
        say(note)
    if options.wav is not None:
        result.sink.recording.write_wav(
            options.wav, result.started_at, result.started_at + len(report.audio) / SAMPLE_RATE
        )
        say(f"wrote {options.wav} ({len(report.audio) / SAMPLE_RATE:.2f} s)")
    if options.plot is not None:
        try:
            from .timeline import plot_timeline
        except ModuleNotFoundError as e:
            print(f"error: --plot needs {e.name}: {install_extra_hint()}", file=err)
            return DemoOutcome(EXIT_MISSING_EXTRA, result, report)
        plot_timeline(result, report, options.plot)
        say(f"wrote {options.plot}")
    if report.ok:
        opened = sum(r.handle is not None for r in report.rows)
        say(f"ok: {plural(opened, 'handle')}, signals consistent")
        return DemoOutcome(EXIT_OK, result, report)
    for problem in report.problems:
        print(f"FAIL: {problem}", file=err)
    return DemoOutcome(EXIT_INCONSISTENT, result, report)


async def pick_synth(builtin: bool) -> tuple[Synthesizer, str]:
    """espeak-ng when it is on PATH (unless ``builtin``), else the built-in synthesizer.

    Returns the synthesizer and a line that says which one it is, and why.
    """
    from .espeak import EspeakSynth, find_espeak
    from .synth import BuiltinSynth

    if builtin:
        return BuiltinSynth(), "built-in (--builtin-synth)"
    path = find_espeak()
    if path is None:
        return BuiltinSynth(), "built-in: espeak-ng is not on PATH, using the built-in synthesizer"
    espeak = EspeakSynth(path)
    return espeak, f"{await espeak.version()} ({path}), resampled to the sink's rate"


def _ms(seconds: float | None, *, signed: bool = False) -> str:
    if seconds is None:
        return "-"
    return f"{seconds * 1000:+.1f}" if signed else f"{seconds * 1000:.1f}"


def format_table(report: Report) -> str:
    """One row per response: its handle's signals and the measured onset, in ms."""
    header = ("#", "id", "text", "created", "playout", "sink", "onset", "lag", "status")
    lines: list[tuple[str, ...]] = [header]
    for row in report.rows:
        playout = _ms(row.playout_started) if row.playout_state == "resolved" else row.playout_state
        lines.append(
            (
                str(row.position),
                row.response.id,
                row.response.text,
                _ms(row.speech_created),
                playout,
                _ms(row.sink_started),
                _ms(row.onset),
                _ms(row.onset_lag, signed=True),
                row.status,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    numeric = {3, 4, 5, 6, 7}
    rendered = []
    for n, line in enumerate(lines):
        cells = [
            cell.rjust(widths[i]) if i in numeric else cell.ljust(widths[i])
            for i, cell in enumerate(line)
        ]
        rendered.append("  ".join(cells).rstrip())
        if n == 0:
            rendered.append("  ".join("-" * w for w in widths))
    rendered += [
        "",
        "ms after generate_reply().  created: speech_created fired.  playout: the handle's",
        "playout_started.  sink: the sink started playing the segment's first frame.  onset:",
        "first sample above -40 dBFS in the recording.  lag: onset - playout.",
    ]
    return "\n".join(rendered)
