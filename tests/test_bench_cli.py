"""``python -m benchmarks`` fails fast as the package's commands do: one line and exit 2,
before any work; and ``livekit-segments bench`` says where the benchmarks went."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import livekit.agents
import livekit_segments
from benchmarks.cli import PROG, main as bench_main
from livekit.agents.voice import agent_activity
from livekit_segments.__main__ import BENCH_MOVED, main as package_main

BENCH = ["--tiny", "--only", "B3"]
ROOT = Path(__file__).resolve().parents[1]


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``python -m benchmarks ARGV`` in-process: exit code (SystemExit too), stdout, stderr."""
    try:
        code = bench_main(argv)
    except SystemExit as e:
        code = int(e.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def one_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def test_the_package_command_says_where_the_benchmarks_went(
    capsys: pytest.CaptureFixture[str],
) -> None:
    for argv in (["bench"], ["bench", "--quick"], ["bench", "--help"]):
        assert package_main(argv) == 2
        captured = capsys.readouterr()
        assert captured.out == ""
        assert one_line(captured.err) == BENCH_MOVED
    assert "python -m benchmarks" in BENCH_MOVED and "clone" in BENCH_MOVED
    with pytest.raises(SystemExit):
        package_main(["--help"])
    assert "bench" not in capsys.readouterr().out  # not offered as a command


def test_python_m_benchmarks_runs_from_the_clone(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--help"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"usage: {PROG} ")


def test_argument_errors_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["--only", "B9"], capsys)
    assert code == 2 and out == ""
    assert one_line(err).startswith(f"{PROG}: error: argument --only: unknown benchmark 'B9'")

    code, out, err = run(["--quick", "--tiny"], capsys)
    assert code == 2 and "not allowed with argument --quick" in one_line(err)


def test_a_directory_is_refused_before_measuring(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run([*BENCH, "--json", str(tmp_path)], capsys)

    assert code == 2 and out == ""
    assert "[bench]" not in err
    assert one_line(err) == f"{PROG}: error: --json {tmp_path}: is a directory; " + (
        "give a file name inside it"
    )


def test_an_unwritable_path_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if os.geteuid() == 0:
        # root writes through permission bits; sysfs still refuses to create files
        target = Path("/sys/livekit-segments-test.json")
        assert Path("/sys").is_dir()
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "b.json"

    code, out, err = run([*BENCH, "--json", str(target)], capsys)

    assert code == 2 and out == ""
    assert f"--json {target}: cannot write there: " in one_line(err)
    assert not target.exists()


def test_missing_folders_are_created_and_an_existing_file_overwritten(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    report = tmp_path / "d" / "e" / "b.json"
    code, out, err = run([*BENCH, "--json", str(report)], capsys)
    assert code == 0, err
    assert report.read_text().startswith("{")

    report.write_text("old")
    code, _, err = run([*BENCH, "--json", str(report)], capsys)
    assert code == 0, err
    assert report.read_text().startswith("{")


@pytest.mark.runtime_only
def test_an_unsupported_release_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(livekit.agents, "__version__", "9.0.0")

    code, out, err = run(BENCH, capsys)

    assert code == 2 and out == ""
    line = one_line(err)
    assert "livekit-agents 9.0.0 is not in the supported range" in line
    assert f"pip install 'livekit-agents{livekit_segments.SUPPORTED_VERSIONS}'" in line
    assert "--force" in line
    assert not livekit_segments.is_installed()


@pytest.mark.runtime_only
def test_force_runs_on_an_unsupported_release(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(livekit.agents, "__version__", "9.0.0")
    installs: list[bool] = []
    original = livekit_segments.installer.install

    def spy(*, force: bool = False) -> None:
        installs.append(force)
        original(force=force)

    monkeypatch.setattr(livekit_segments.installer, "install", spy)

    with warnings.catch_warnings(record=True) as warned:
        warnings.simplefilter("always")
        code, out, err = run([*BENCH, "--force", "--json", str(tmp_path / "b.json")], capsys)

    assert code == 0, err
    assert "B3 signal latency" in out
    assert installs and all(installs)  # the bench installed the patch, always forced
    warnings_lines = [line for line in err.splitlines() if "warning" in line.lower()]
    assert warnings_lines == [
        "warning: livekit-agents 9.0.0 is not in the supported range "
        f"{livekit_segments.SUPPORTED_VERSIONS}; running anyway (--force)"
    ]
    assert not [w for w in warned if issubclass(w.category, RuntimeWarning)]
    assert livekit_segments.installer.install is spy  # put back as found
    assert not livekit_segments.is_installed()


@pytest.mark.runtime_only
def test_a_missing_internal_is_refused_even_with_force(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(agent_activity, "perform_llm_inference")

    code, out, err = run([*BENCH, "--force"], capsys)

    assert code == 2 and out == ""
    line = one_line(err)
    assert "lacks 1 internal that livekit-segments wraps" in line
    assert "agent_activity.perform_llm_inference" in line
    assert "livekit-segments doctor" in line
    assert not livekit_segments.is_installed()
