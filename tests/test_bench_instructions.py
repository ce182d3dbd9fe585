"""B7: B1 and B2 counted in instructions under callgrind (bench/instructions.py, cpu_meter)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from benchmarks import cpu_meter, forms as bench_forms, instructions, process_setup
from benchmarks.install_cost import InstallCostConfig
from benchmarks.segment_cost import SegmentCostConfig

pytestmark = pytest.mark.runtime_only  # B7 compares the runtime patch with upstream

RUNTIME_FORMS = bench_forms.Forms(native=False, was_installed=False)


def test_cpu_is_thread_time_unless_counting() -> None:
    assert cpu_meter._read is time.thread_time


def test_parse_totals() -> None:
    dump = "version: 1\ncreator: callgrind-3.19.0\nthread: 1\nsummary: 156651\ntotals: 156651\n"
    assert cpu_meter.parse_totals(dump) == 156651
    with pytest.raises(ValueError, match="not a callgrind dump"):
        cpu_meter.parse_totals("events: Ir\n")


def test_without_valgrind_b7_names_the_fix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    real_which = shutil.which
    monkeypatch.setattr(
        instructions.shutil,
        "which",
        lambda name: None if name == "valgrind" else real_which(name),
    )
    with pytest.raises(instructions.Unavailable, match="apt-get install valgrind"):
        instructions.build_client(tmp_path)


def test_without_a_compiler_b7_names_the_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_which = shutil.which
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.setattr(
        instructions.shutil,
        "which",
        lambda name: None if name in ("cc", "gcc") else real_which(name),
    )
    with pytest.raises(instructions.Unavailable, match="apt-get install gcc"):
        instructions.build_client(tmp_path)


async def test_b7_without_valgrind_is_not_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    def unavailable(directory: Path) -> Path:
        raise instructions.Unavailable(f"valgrind is not on PATH: {instructions.FIX}")

    monkeypatch.setattr(instructions, "build_client", unavailable)
    cfg = instructions.InstructionsConfig(
        InstallCostConfig(batches=2, replies_per_batch=1), SegmentCostConfig(ns=(1, 2), repeats=1)
    )
    result = await instructions.run(cfg, RUNTIME_FORMS)
    assert result.status == "n/a" and not result.judged
    assert "apt-get install valgrind" in result.data["reason"]


def test_counter_refuses_to_count_outside_valgrind(tmp_path: Path) -> None:
    library = instructions.build_client(tmp_path)
    with pytest.raises(RuntimeError, match="not running under valgrind"):
        cpu_meter.CallgrindCounter(library, str(tmp_path / "cg"))


# the meter module alone, by its path: importing the package would import livekit-agents,
# which takes a minute under callgrind
COUNTED = """\
import importlib.util, json, sys
from pathlib import Path
spec = importlib.util.spec_from_file_location("cpu_meter", sys.argv[3])
cpu_meter = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cpu_meter)
counter = cpu_meter.CallgrindCounter(Path(sys.argv[1]), sys.argv[2])
cpu_meter.count_instructions(counter)
readings = [cpu_meter.cpu()]
for n in (1_000, 100_000):
    sum(range(n))
    readings.append(cpu_meter.cpu())
print(json.dumps(readings))
"""


def test_counter_counts_the_main_threads_instructions(tmp_path: Path) -> None:
    """Under callgrind, `cpu` counts instructions: monotonic, and in proportion to work."""
    library = instructions.build_client(tmp_path)
    out = tmp_path / "cg"
    done = subprocess.run(
        [
            "valgrind",
            "--tool=callgrind",
            "--separate-threads=yes",
            f"--callgrind-out-file={out}",
            f"--log-file={tmp_path / 'valgrind.log'}",
            sys.executable,
            "-c",
            COUNTED,
            str(library),
            str(out),
            cpu_meter.__file__,
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    start, small, large = json.loads(done.stdout)
    assert 0 < start < small < large
    # summing 100x the numbers costs far more than 10x the instructions (not time: exact)
    assert large - small > 10 * (small - start)
    # every dump it read is gone (callgrind's own end-of-run dump is cg-01)
    assert sorted(p.name for p in tmp_path.glob("cg.*")) == []


def _judged(point: float, low: float, high: float, n: int, verdict: str) -> dict[str, Any]:
    estimate = {
        "point": point,
        "low": low,
        "high": high,
        "n": n,
        "statistic": "median",
        "min_n": 6,
    }
    return {"verdict": verdict, "estimate": estimate}


def test_b7_reports_b1_and_b2_in_instructions() -> None:
    cfg = instructions.InstructionsConfig(
        InstallCostConfig(batches=12, replies_per_batch=5),
        SegmentCostConfig(ns=(1, 10, 40), repeats=6, memory=False),
    )
    doc = {
        "B1": {
            "judged": {"CPU per reply ratio": _judged(1.004, 1.003, 1.006, 6, "met")},
            "data": {
                "cpu_per_reply_ms": {"upstream": 8.5e9, "patched": 8.534e9},
                "pair_ratios": [1.004] * 12,
            },
        },
        "B2": {
            "judged": {
                "CPU per segment ratio (slope)": _judged(1.07, 1.06, 1.08, 6, "met"),
                "patch cost per segment / handle floor": _judged(1.7, 1.6, 1.8, 6, "missed"),
                "growth exponent, CPU time": _judged(1.0, 1.0, 1.0, 6, "met"),
            },
            "data": {
                "cpu_per_segment_us": {"upstream": 1.9e12, "patched": 2.03e12},
                "handle_floor_us": [8e10] * 6,
                "overhead_per_segment_us": 1.36e11,
                "repetition_overheads_us": [1.36e11] * 6,
                "repetition_slope_ratios": [1.07] * 6,
            },
        },
    }
    result = instructions.summarize(cfg, RUNTIME_FORMS, doc)
    assert result.id == "B7" and result.status == "missed"  # the worst target's verdict
    assert [j.name for j in result.judged] == [
        "instructions: CPU per reply ratio",
        "instructions: CPU per segment ratio (slope)",
        "instructions: patch cost per segment / handle floor",
    ]
    assert [j.verdict for j in result.judged] == ["met", "met", "missed"]
    # counts in place of seconds: B1's "ms" and B2's "us" are scaled back to instructions
    assert result.data["instructions_per_reply"] == {"upstream": 8.5e6, "patched": 8.534e6}
    assert result.data["instructions_per_segment"]["patched"] == pytest.approx(2.03e6)
    assert result.rows[0].upstream == "8,500,000" and result.rows[0].patch == "8,534,000"
    assert result.rows[3].patch == "136,000"
    assert result.rows[3].ratio.startswith("1.7")


def test_bench_force_reaches_b7s_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    """B7's worker is a process of its own: `--force` tells it through the environment
    (it installs the patch too), and the parent's environment is left as found."""
    monkeypatch.delenv(process_setup.FORCE_ENV, raising=False)
    with process_setup.forcing_install(True):
        assert os.environ[process_setup.FORCE_ENV] == "1"
    assert process_setup.FORCE_ENV not in os.environ
    with process_setup.forcing_install(False):
        assert process_setup.FORCE_ENV not in os.environ
    monkeypatch.setenv(process_setup.FORCE_ENV, "0")
    with process_setup.forcing_install(True):
        assert os.environ[process_setup.FORCE_ENV] == "1"
    assert os.environ[process_setup.FORCE_ENV] == "0"
