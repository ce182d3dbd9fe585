"""The bench runs end to end in a tiny mode. Only its structure is asserted, never timings."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import livekit_segments
from livekit_segments import bench
from livekit_segments.bench import cli as bench_cli, forms as bench_forms
from livekit_segments.bench.report import BenchReport, BenchResult, Row
from livekit_segments.bench.runner import BENCHMARKS, BenchConfig, run_bench

NATIVE = livekit_segments.has_native_support()


def numbers(value: Any, path: str = "") -> Iterator[tuple[str, float]]:
    """Every number in a JSON document, with where it is."""
    if isinstance(value, bool):
        return
    if isinstance(value, int | float):
        yield path, float(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from numbers(v, f"{path}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from numbers(v, f"{path}[{i}]")


def check_report(doc: dict[str, Any], *, native: bool) -> None:
    """What every run must produce, whatever the timings."""
    benches = doc["benchmarks"]
    assert list(benches) == list(BENCHMARKS)
    assert doc["mode"] == ("native" if native else "runtime")
    subject = "native" if native else "patched"
    assert doc["subject"] == subject
    forms = [subject] if native else ["upstream", subject]
    for bench_id, b in benches.items():
        assert b["status"] in ("pass", "miss", "n/a"), bench_id
        assert b["target"] and b["title"], bench_id
    for where, x in numbers(doc):
        assert math.isfinite(x), where

    b1 = benches["B1"]
    assert sorted(b1["cpu_per_reply_ms"]) == sorted(forms)
    assert all(v > 0 for v in b1["cpu_per_reply_ms"].values())

    b2 = benches["B2"]
    assert b2["memory_ns"] == b2["ns"]  # the tiny preset measures memory at every N
    for table in ("cpu_ms", "wall_ms", "peak_kib"):
        assert sorted(b2[table]) == sorted(forms), table
        for form in forms:
            assert list(b2[table][form]) == [str(n) for n in b2["ns"]]
            assert all(v > 0 for v in b2[table][form].values()), (table, form)
    assert b2["linear"] in (True, False)

    b3 = benches["B3"]
    assert b3["value_equal"] is True
    assert b3["missing"] == 0 and b3["cancelled"] == 0
    for scenario in b3["latency"].values():
        assert sorted(scenario) == sorted(forms)
        for lat in scenario.values():
            assert lat["count"] > 0
            assert 0 < lat["p50_ms"] <= lat["p99_ms"] <= lat["max_ms"]

    b4 = benches["B4"]
    assert sorted(b4["median_gap_ms"]) == sorted(forms)
    assert all(n > 0 for n in b4["gaps"].values())
    assert all(v >= 0 for v in b4["median_gap_ms"].values())

    b5 = benches["B5"]
    for point in ("baseline", "warm", "end", "closed"):
        assert b5[point]["rss_bytes"] > 0 and b5[point]["allocated_blocks"] > 0
    assert b5["closed"]["speech_handles"] == b5["baseline"]["speech_handles"]
    assert b5["segments"] == b5["turns"] * 3

    ratios = [b1["ratio"], b2["per_segment_ratio"], b4["ratio"]]
    if native:
        assert ratios == [None, None, None]
        assert b1["status"] == "n/a" and b4["status"] == "n/a"
    else:
        assert all(r is not None and r > 0 for r in ratios)


async def test_tiny_run_reports_all_five(tmp_path: Path) -> None:
    installed = livekit_segments.is_installed()
    report = await run_bench(BenchConfig.tiny())
    # the comparison switched the patch on and off; it is left as it was found
    assert livekit_segments.is_installed() == installed

    path = tmp_path / "bench.json"
    report.write_json(path)
    doc = json.loads(path.read_text())
    check_report(doc, native=NATIVE)
    assert doc["preset"] == "tiny"
    assert doc["missed"] == report.missed

    table = report.render_table()
    for bench_id in BENCHMARKS:
        assert f"\n{bench_id} " in table


async def test_native_mode_measures_the_native_form_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # in the runtime form, stand in for a natively patched livekit-agents: the patch is
    # installed (by the suite's fixture) and the bench must not try to compare
    monkeypatch.setattr(bench_forms, "native_support", lambda: True)
    installed = livekit_segments.is_installed()
    report = await run_bench(BenchConfig.tiny())
    assert livekit_segments.is_installed() == installed
    doc = report.to_json()
    check_report(json.loads(json.dumps(doc)), native=True)
    assert "native" in doc["mode_description"]
    table = report.render_table()
    assert "n/a" in table


async def test_one_benchmark_alone() -> None:
    report = await run_bench(BenchConfig.tiny(), only=["B3"])
    assert [r.id for r in report.results] == ["B3"]
    assert report.results[0].data["value_equal"] is True


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="livekit-segments")
    bench.add_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


def test_cli_runs_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out.json"
    args = parse(["bench", "--tiny", "--only", "b3,B5", "--json", str(path)])
    assert args.only == ["B3", "B5"]
    assert args.func(args) == 0
    doc = json.loads(path.read_text())
    assert list(doc["benchmarks"]) == ["B3", "B5"]
    out = capsys.readouterr().out
    assert "B3 signal latency" in out and "B5 no leaks" in out


def test_cli_rejects_unknown_benchmarks() -> None:
    with pytest.raises(SystemExit):
        parse(["bench", "--only", "B9"])
    with pytest.raises(SystemExit):
        parse(["bench", "--quick", "--tiny"])


@pytest.mark.parametrize(
    ("status", "check", "code"),
    [
        ("miss", False, 0),
        ("miss", True, 1),
        ("pass", True, 0),
        ("n/a", True, 0),
    ],
)
def test_exit_code(monkeypatch: pytest.MonkeyPatch, status: str, check: bool, code: int) -> None:
    """A miss is a measurement: exit 0, unless --check asks for 1."""

    async def fake_run_bench(config: BenchConfig, **_: Any) -> BenchReport:
        result = BenchResult(
            id="B1",
            title="cost of being installed",
            target="t",
            status=status,  # type: ignore[arg-type]
            rows=[Row("m", "1 ms", "1 ms", "1.000", "<= 1.02", status)],  # type: ignore[arg-type]
            data={},
        )
        return BenchReport(meta={"preset": config.preset}, results=[result])

    monkeypatch.setattr(bench_cli, "run_bench", fake_run_bench)
    args = parse(["bench", "--tiny", *(["--check"] if check else [])])
    assert args.func(args) == code


def test_presets_keep_the_required_sizes() -> None:
    """The defaults measure what the spec asks for; quick and tiny are smaller."""
    default, quick, tiny = BenchConfig.default(), BenchConfig.quick(), BenchConfig.tiny()
    b1 = default.install_cost
    assert b1.batches * b1.replies_per_batch >= 1000
    assert default.segment_cost.ns == (1, 10, 100, 1000)
    b3 = default.signal_latency
    assert b3.single_segments >= 1000
    assert b3.sessions == 50 and b3.sessions * b3.segments_per_session >= 1000
    assert default.leaks.turns == 10_000
    for small in (quick, tiny):
        assert small.leaks.turns < default.leaks.turns
        assert small.install_cost.batches <= b1.batches
