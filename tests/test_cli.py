"""The command line fails fast: every expected failure is one line and exit 2, before any work.

Each command runs in-process through ``main()``; "before any work" shows as nothing on stdout
(the demo prints its synthesizer first) and no patch. The benchmarks' command line, which
left the package, has its own: tests/test_bench_cli.py.
"""

from __future__ import annotations

import argparse
import io
import sys
from pathlib import Path

import pytest

import livekit.agents
import livekit_segments
from livekit.agents.voice import agent_activity
from livekit_segments.__main__ import main
from livekit_segments._cli import plural, run_command
from livekit_segments.demo.cli import DemoOptions, run_demo

DEMO = ["demo", "--short", "--builtin-synth"]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``main(argv)``: its exit code (argparse's SystemExit included), stdout and stderr."""
    try:
        code = main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ------------------------------------------------------------------ arguments


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf", ""])
def test_a_bad_number_names_the_option(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([*DEMO, "--interrupt-at", value], capsys)

    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith("livekit-segments demo: error: argument --interrupt-at: ")
    assert f"{value!r} is not a number of seconds >= 0" in line
    assert "_non_negative" not in line and "invalid" not in line
    assert line.endswith("(see livekit-segments demo --help)")


@pytest.mark.parametrize("command", ["demo", "doctor"])
def test_an_unknown_option_points_at_the_subcommand_help(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([command, "--bogus"], capsys)

    assert code == 2 and out == ""
    assert one_line(err) == (
        f"livekit-segments {command}: error: unrecognized arguments: --bogus "
        f"(see livekit-segments {command} --help)"
    )


def test_no_command_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run([], capsys)
    assert code == 2 and "required: COMMAND" in one_line(err)


# ------------------------------------------------------------------ output paths


@pytest.mark.parametrize("option", ["--wav", "--plot"])
def test_demo_refuses_a_directory_before_running(
    option: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([*DEMO, option, str(tmp_path)], capsys)

    assert code == 2 and out == ""
    assert one_line(err) == (
        f"livekit-segments demo: error: {option} {tmp_path}: is a directory; "
        f"give a file name inside it"
    )


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("x.txt", "matplotlib cannot write .txt files; use .png, .svg or .pdf (formats: "),
        ("noext", "no extension to pick the format from; name the file e.g. {dir}/noext.png"),
    ],
    ids=["txt", "no-extension"],
)
def test_demo_refuses_a_plot_name_matplotlib_cannot_write_before_running(
    name: str, says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "out"
    code, out, err = run([*DEMO, "--plot", str(folder / name)], capsys)

    assert code == 2 and out == ""
    line = one_line(err)
    assert line.startswith(f"livekit-segments demo: error: --plot {folder / name}: ")
    assert says.format(dir=folder) in line
    assert "png, ps, raw, rgba, svg" in line  # matplotlib's own list
    assert not folder.exists()  # refused before anything was made


@pytest.mark.parametrize("name", ["turn.mp3", "turn"])
def test_demo_refuses_a_wav_name_that_is_not_wav_before_running(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "out"
    code, out, err = run([*DEMO, "--wav", str(folder / name)], capsys)

    assert code == 2 and out == ""
    assert one_line(err) == (
        f"livekit-segments demo: error: --wav {folder / name}: the demo writes WAV only; "
        f"give a name ending in .wav (e.g. {folder / 'turn.wav'})"
    )
    assert not folder.exists()


def test_a_parent_that_is_a_file_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("x")

    code, out, err = run([*DEMO, "--plot", str(blocker / "sub" / "t.png")], capsys)

    assert code == 2 and out == ""
    assert f"{blocker} is a file, not a folder" in one_line(err)
    assert blocker.read_text() == "x"


def test_missing_folders_are_created_and_the_files_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # upper case, and a format other than PNG: the extension picks it, as matplotlib does
    wav, svg = tmp_path / "a" / "b" / "turn.WAV", tmp_path / "c" / "timeline.svg"

    code, out, err = run([*DEMO, "--wav", str(wav), "--plot", str(svg)], capsys)

    assert code == 0, err
    assert f"wrote {wav} (" in out and f"wrote {svg}\n" in out
    assert wav.read_bytes()[:4] == b"RIFF" and wav.stat().st_size > 1000
    assert svg.read_text().startswith("<?xml") and "<svg" in svg.read_text()


# ------------------------------------------------------------------ optional dependencies


def test_plot_without_matplotlib_is_refused_before_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what an absent package looks like
    png = tmp_path / "out" / "t.png"

    code, out, err = run([*DEMO, "--plot", str(png)], capsys)

    assert code == 2 and out == ""
    assert one_line(err) == (
        "livekit-segments demo: error: --plot needs matplotlib: "
        "pip install 'livekit-segments[demo]' (from a clone: pip install '.[demo]')"
    )
    assert not png.exists()


def test_the_demo_without_its_extra_names_both_installs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "numpy", None)

    code, out, err = run(DEMO, capsys)

    assert code == 2 and out == ""
    assert one_line(err) == (
        "livekit-segments demo: error: the demo needs numpy: "
        "pip install 'livekit-segments[demo]' (from a clone: pip install '.[demo]')"
    )


# ------------------------------------------------------------------ livekit-agents releases


@pytest.mark.runtime_only
def test_an_unsupported_release_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(livekit.agents, "__version__", "9.0.0")

    code, out, err = run(DEMO, capsys)

    assert code == 2 and out == ""
    line = one_line(err)
    assert "livekit-agents 9.0.0 is not in the supported range" in line
    assert f"pip install 'livekit-agents{livekit_segments.SUPPORTED_VERSIONS}'" in line
    assert "--force" in line
    assert not livekit_segments.is_installed()


@pytest.mark.runtime_only
def test_demo_force_runs_on_an_unsupported_release(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(livekit.agents, "__version__", "9.0.0")

    code, out, err = run([*DEMO, "--force"], capsys)

    assert code == 0, err
    assert out.rstrip().endswith("ok: 3 handles, signals consistent")
    assert one_line(err).startswith("warning: livekit-agents 9.0.0 is not in the supported range")
    assert livekit_segments.is_installed()


@pytest.mark.runtime_only
def test_a_missing_internal_is_refused_even_with_force(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(agent_activity, "perform_llm_inference")

    code, out, err = run([*DEMO, "--force"], capsys)

    assert code == 2 and out == ""
    line = one_line(err)
    assert "lacks 1 internal that livekit-segments wraps" in line
    assert "agent_activity.perform_llm_inference" in line
    assert "livekit-segments doctor" in line
    assert not livekit_segments.is_installed()


def test_ctrl_c_is_one_line_and_a_bug_keeps_its_traceback(
    capsys: pytest.CaptureFixture[str],
) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    def buggy(args: argparse.Namespace) -> int:
        raise ZeroDivisionError

    args = argparse.Namespace(command="demo")
    assert run_command(interrupted, args) == 130
    assert one_line(capsys.readouterr().err) == "livekit-segments demo: interrupted"
    with pytest.raises(ZeroDivisionError):
        run_command(buggy, args)


# ------------------------------------------------------------------ wording


def test_plural() -> None:
    assert [plural(n, "handle") for n in (0, 1, 2)] == ["0 handles", "1 handle", "2 handles"]
    assert plural(1, "reply", "replies") == "1 reply"
    assert plural(3, "reply", "replies") == "3 replies"


async def test_one_handle_reads_as_one_handle() -> None:
    out, err = io.StringIO(), io.StringIO()
    outcome = await run_demo(
        DemoOptions(short=True, builtin_synth=True, interrupt_at=0.0), out=out, err=err
    )
    assert outcome.exit_code == 0, err.getvalue()
    assert out.getvalue().rstrip().endswith("ok: 1 handle, signals consistent")
