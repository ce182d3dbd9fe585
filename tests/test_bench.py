"""The bench runs end to end in a tiny mode. Only its structure is asserted, never timings."""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import re
import shutil
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import livekit_segments
from benchmarks import (
    cli as bench_cli,
    concurrent_sessions,
    cpu_meter,
    forms as bench_forms,
    install_cost,
    record as bench_record,
    report as bench_report,
    segment_cost,
    signal_latency,
    stats,
)
from benchmarks.report import BenchReport, BenchResult, Row
from benchmarks.runner import BENCHMARKS, BenchConfig, run_bench

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
        assert b["status"] in ("met", "missed", "inconclusive", "n/a"), bench_id
        assert b["target"] and b["title"], bench_id
        if bench_id == "B7" and b["status"] == "n/a":
            assert b["reason"] and not b["targets"]  # not run (the tiny preset): says why
            continue
        verdicts = [t["verdict"] for t in b["targets"]]
        assert verdicts, bench_id
        # a benchmark's verdict is its worst target's
        assert b["status"] == bench_report.combine(verdicts), bench_id
        for t in b["targets"]:
            if "point" in t:  # a noisy figure: judged from its interval
                assert t["ci95"][0] <= t["ci95"][1], (bench_id, t)
                assert t["n"] >= 1 and t["statistic"], (bench_id, t)
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
    names = [t["name"] for t in b2["targets"]]
    if native:
        assert names == [
            "CPU per segment ratio (slope)",
            "growth exponent, CPU time",
            "growth exponent, memory",
        ]
    else:
        assert names == [
            "CPU per segment ratio (slope)",
            "patch cost per segment / handle floor",
            "memory per segment above FlushSentinel",
            "growth exponent, CPU time",
            "growth exponent, memory",
        ]
        assert len(b2["repetition_overheads_us"]) == b2["repeats"]
    # the floor is measured in every mode, once per repetition
    assert len(b2["handle_alone_us"]) == b2["repeats"]
    assert all(x > 0 for x in b2["handle_alone_us"]) and b2["handle_floor_kib"] > 0
    if not native:
        assert len(b2["handle_floor_us"]) == b2["repeats"]
    assert len(b2["repetition_time_exponents"]) == b2["repeats"]

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

    check_b6(benches["B6"], forms, native=native)

    ratios = [b1["ratio"], b2["per_segment_ratio"], b4["ratio"]]
    compared = [b1["targets"][0], b2["targets"][0], b4["targets"][0]]
    if native:
        assert ratios == [None, None, None]
        assert b1["status"] == "n/a" and b4["status"] == "n/a"
        assert [t["verdict"] for t in compared] == ["n/a"] * 3
        assert not any("point" in t for t in compared)
    else:
        assert all(r is not None and r > 0 for r in ratios)
        assert all("ci95" in t for t in compared)
        assert len(b1["pair_ratios"]) == b1["batches"]
        assert 2 * b1["targets"][0]["n"] == b1["batches"]  # rounds in opposite orders


B6_FIGURES = [
    "event-loop lag p50",
    "event-loop lag p99",
    "event-loop CPU per second of audio",
    "peak RSS",
]


def check_b6(b6: dict[str, Any], forms: list[str], *, native: bool) -> None:
    """Every session played every segment of every round, every handle it announced was done
    when its reply returned, and the audio the CPU is divided by is the audio captured."""
    cfg = BenchConfig.tiny().concurrent_sessions
    assert b6["sessions"] == cfg.sessions and b6["rounds"] == cfg.rounds
    assert b6["short_rounds"] == []
    replies = cfg.sessions * cfg.replies_per_round * cfg.rounds
    frame_s = cfg.frame_ms / 1000
    for form in forms:
        t = b6["totals"][form]
        assert t["segments"] == t["expected_segments"] == replies * len(cfg.responses), form
        # upstream announces one handle per reply; the segment forms one per response
        per_reply = 1 if form == "upstream" else len(cfg.responses)
        assert t["handles"] == t["handles_done"] == t["expected_handles"] == replies * per_reply
        assert t["frames"] == replies * sum(cfg.responses), form
        assert t["audio_s"] == pytest.approx(t["frames"] * frame_s)
        assert t["audio_s"] == pytest.approx(t["expected_audio_s"])
        rounds = b6["rounds_data"][form]
        assert len(rounds) == cfg.rounds
        for r in rounds:
            assert r["ticks"] >= 1 and 0 <= r["lag_p50_ms"] <= r["lag_p99_ms"]
            assert r["cpu_s"] > 0 and r["rss_peak_mib"] > 0 and r["rss_growth_mib"] >= 0
            assert r["loop_cpu_s"] > 0
            assert r["audio_s"] == pytest.approx(t["audio_s"] / cfg.rounds)
    names = [t["name"] for t in b6["targets"]]
    assert names == [f"{f} ratio" for f in B6_FIGURES] + ["every segment played, every handle done"]
    assert b6["targets"][-1]["verdict"] == "met"
    for t in b6["targets"][:-1]:
        if native:
            assert t["verdict"] == "n/a" and "point" not in t
        else:
            # one pair of rounds is fewer than any interval of a median needs
            assert t["verdict"] == "inconclusive" and t["n"] == cfg.rounds // 2
    if not native:
        assert all(len(v) == cfg.rounds for v in b6["per_round_ratios"].values())


async def test_tiny_run_reports_every_benchmark(tmp_path: Path) -> None:
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
    # the tiny preset runs one reply where the others run several: "1 reply", not "1 replies"
    assert re.search(r"\b1 reply\b", table), table
    assert not re.search(r"\b1 (replies|rounds|segments)\b", table), table


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
    return bench_cli.build_parser().parse_args(argv)


def test_cli_runs_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "out.json"
    args = parse(["--tiny", "--only", "b3,B5", "--json", str(path)])
    assert args.only == ["B3", "B5"]
    assert args.func(args) == 0
    doc = json.loads(path.read_text())
    assert list(doc["benchmarks"]) == ["B3", "B5"]
    out = capsys.readouterr().out
    assert "B3 signal latency" in out and "B5 no leaks" in out


def test_cli_rejects_unknown_benchmarks() -> None:
    with pytest.raises(SystemExit):
        parse(["--only", "B9"])
    with pytest.raises(SystemExit):
        parse(["--quick", "--tiny"])


@pytest.mark.parametrize(
    ("status", "check", "code"),
    [
        ("missed", False, 0),
        ("missed", True, 1),
        ("inconclusive", True, 0),
        ("inconclusive", False, 0),
        ("met", True, 0),
        ("n/a", True, 0),
    ],
)
def test_exit_code(monkeypatch: pytest.MonkeyPatch, status: str, check: bool, code: int) -> None:
    """A miss is a measurement: exit 0, unless --check asks for 1; only a miss fails it, an
    inconclusive verdict (the interval straddles the target) does not."""

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
    args = parse(["--tiny", *(["--check"] if check else [])])
    assert args.func(args) == code


def test_presets_keep_the_required_sizes() -> None:
    """The defaults measure what the spec asks for; quick and tiny are smaller."""
    default, quick, tiny = BenchConfig.default(), BenchConfig.quick(), BenchConfig.tiny()
    b1 = default.install_cost
    assert b1.batches * b1.replies_per_batch >= 1000
    # enough pairs for the interval to decide: fewer than MIN_SAMPLES is always inconclusive
    assert b1.batches >= stats.MIN_SAMPLES
    assert default.segment_cost.repeats >= stats.MIN_SAMPLES
    assert default.segment_cost.ns == (1, 10, 100, 1000)
    b3 = default.signal_latency
    assert b3.single_segments >= 1000
    assert b3.sessions == 50 and b3.sessions * b3.segments_per_session >= 1000
    assert default.leaks.turns == 10_000
    b6 = default.concurrent_sessions
    assert b6.sessions == quick.concurrent_sessions.sessions == 100
    assert b6.rounds >= stats.MIN_SAMPLES
    # multi-response replies of short responses: 4 to 6 of 0.2 to 0.5 s each
    assert 4 <= len(b6.responses) <= 6
    assert all(200 <= n * b6.frame_ms <= 500 for n in b6.responses)
    for small in (quick, tiny):
        assert small.leaks.turns < default.leaks.turns
        assert small.install_cost.batches <= b1.batches
        assert small.concurrent_sessions.rounds <= b6.rounds


# -- the statistics behind the verdicts, on synthetic samples (no timing involved)


def spread(center: float, width: float, n: int) -> list[float]:
    """``n`` samples evenly spread over ``center +- width`` (a deterministic stand-in for noise)."""
    return [center - width + 2 * width * i / (n - 1) for i in range(n)]


@pytest.mark.parametrize(
    ("samples", "verdict"),
    [
        (spread(0.98, 0.03, 40), "met"),  # the whole interval below 1.02
        (spread(1.10, 0.03, 40), "missed"),  # the whole interval above 1.02
        (spread(1.02, 0.05, 40), "inconclusive"),  # straddles 1.02
        (spread(1.01, 0.30, 40), "inconclusive"),  # below 1.02, but too noisy to tell
        (spread(0.90, 0.01, 5), "inconclusive"),  # far below, but 5 samples are too few
        (spread(0.90, 0.01, 6), "met"),
        (spread(1.20, 0.01, 6), "missed"),
    ],
)
def test_verdict_is_decided_by_the_whole_interval(samples: list[float], verdict: str) -> None:
    est = stats.median_estimate(samples, "median of synthetic ratios")
    assert est.low <= est.point <= est.high
    assert est.n == len(samples)
    assert stats.verdict(est, 1.02) == verdict


def test_verdict_edges() -> None:
    at_limit = stats.Estimate(0.9, 0.8, 1.0, 30, "x")
    assert stats.verdict(at_limit, 1.0) == "met"  # <= 1.0: the upper end may touch it
    assert stats.verdict(at_limit, 1.0, strict=True) == "inconclusive"  # < 1.0: it may not
    above = stats.Estimate(1.1, 1.0, 1.2, 30, "x")
    assert stats.verdict(above, 1.0) == "inconclusive"
    assert stats.verdict(above, 1.0, strict=True) == "missed"
    assert stats.verdict(None, 1.0) == "n/a"  # nothing to compare (native mode)
    assert stats.verdict(stats.median_estimate([], "x"), 1.0) == "inconclusive"


def test_bootstrap_is_deterministic_for_given_samples() -> None:
    rng = random.Random(7)
    samples = [rng.lognormvariate(0, 0.1) for _ in range(50)]
    state = random.getstate()
    first = stats.bootstrap_interval(samples, stats.median)
    assert random.getstate() == state  # its own generator: the global one is left alone
    random.random()
    assert stats.bootstrap_interval(list(samples), stats.median) == first
    assert stats.median_estimate(samples, "x") == stats.median_estimate(samples, "x")
    # the seed is what fixes it (a mean: the median's interval ends sit on order statistics,
    # which a neighbouring seed may well reproduce)
    seeded = [stats.bootstrap_interval(samples, stats.mean, seed=s) for s in (0, 0, 1)]
    assert seeded[0] == seeded[1] != seeded[2]
    lo, hi = first
    assert min(samples) <= lo < stats.median(samples) < hi <= max(samples)


def test_too_few_samples_for_any_interval_is_inconclusive() -> None:
    # [min, max] of n samples covers the q-th percentile with probability 1 - p**n - (1-p)**n
    assert stats.min_samples(50) == stats.MIN_SAMPLES == 6
    assert stats.min_samples(99) == 299
    latencies = spread(0.3, 0.1, 298)  # every one far below a 1 ms bound, but 298 of them
    p99 = stats.quantile_estimate(latencies, 99, "p99 (ms)")
    assert p99.high < 1.0 and p99.too_few
    assert stats.verdict(p99, 1.0) == "inconclusive"
    p99 = stats.quantile_estimate([*latencies, 0.3], 99, "p99 (ms)")
    assert stats.verdict(p99, 1.0) == "met"
    assert stats.verdict(stats.quantile_estimate([x + 1 for x in latencies] * 2, 99, ""), 1.0) == (
        "missed"
    )


def test_median_difference_interval() -> None:
    base = spread(2.0, 0.5, 48)
    est = stats.median_difference_estimate([x + 0.1 for x in base], base, "gap difference")
    assert est.point == pytest.approx(0.1)
    assert est.low < 0.1 < est.high
    assert stats.verdict(est, 1.0, strict=True) == "met"
    far = stats.median_difference_estimate([x + 3.0 for x in base], base, "gap difference")
    assert stats.verdict(far, 1.0, strict=True) == "missed"


@pytest.mark.parametrize(
    ("samples", "verdict"),
    [
        (spread(1.00, 0.30, 40), "met"),  # noisy, but the interval includes 1.0
        (spread(1.01, 0.004, 40), "met"),  # wholly above 1.0, but within 1.02
        (spread(0.90, 0.01, 40), "met"),  # wholly below 1.0: faster is no regression
        (spread(1.02, 0.03, 40), "inconclusive"),  # above 1.0, straddling 1.02
        (spread(1.10, 0.03, 40), "missed"),  # wholly above 1.02
        (spread(1.00, 0.01, 5), "inconclusive"),  # too few for any interval
    ],
)
def test_no_difference_verdict_on_synthetic_ratios(samples: list[float], verdict: str) -> None:
    est = stats.median_estimate(samples, "median of synthetic per-round ratios")
    assert stats.no_difference_verdict(est, 1.02) == verdict


def test_counterbalanced_estimate_leaves_out_a_pair_with_a_missing_round() -> None:
    # order effect: the second form in a round reads 10% high; round 2 has no ratio
    ratios: list[float | None] = [1.1, 1 / 1.1, None, 1 / 1.1, 1.1, 1 / 1.1] * 2
    est = stats.counterbalanced_estimate(ratios)
    assert est.n == 4
    assert est.point == pytest.approx(1.0) and est.low == pytest.approx(1.0)
    assert est.high == pytest.approx(1.0) and "counterbalanced" in est.statistic


def test_ratio_of_medians_resamples_pairs_together() -> None:
    nums = [50.0 + i for i in range(-10, 11)]
    dens = [100.0 + 2 * i for i in range(-10, 11)]  # each pair moves together: ratio 0.5
    est = stats.ratio_of_medians_estimate(nums, dens, "x")
    assert est is not None and est.n == 21 and est.point == pytest.approx(0.5)
    assert 0.45 < est.low <= 0.5 <= est.high < 0.55
    # denominators around 0: a resample can divide by nothing, so no finite upper end
    noisy = stats.ratio_of_medians_estimate([1.0] * 9, [-1.0, 0.1, 0.2] * 3, "x")
    assert noisy is not None and noisy.high == math.inf
    assert stats.verdict(noisy, 1.5) == "inconclusive"
    assert bench_report.fmt_estimate(noisy).endswith(", inf]")
    assert stats.ratio_of_medians_estimate([1.0, 1.0], [-1.0, 0.0], "x") is None
    with pytest.raises(ValueError, match="2 numerators for 1 denominators"):
        stats.ratio_of_medians_estimate([1.0, 2.0], [1.0], "x")


def test_no_difference_verdict_edges() -> None:
    def est(low: float, high: float) -> stats.Estimate:
        return stats.Estimate((low + high) / 2, low, high, 30, "x")

    assert stats.no_difference_verdict(est(1.0, 1.5), 1.02) == "met"  # 1.0 at its low end
    assert stats.no_difference_verdict(est(0.5, 1.0), 1.02) == "met"  # and at its high end
    assert stats.no_difference_verdict(est(1.001, 1.02), 1.02) == "met"  # upper end == 1.02
    assert stats.no_difference_verdict(est(1.001, 1.0201), 1.02) == "inconclusive"
    assert stats.no_difference_verdict(est(1.02, 1.05), 1.02) == "inconclusive"
    assert stats.no_difference_verdict(est(1.0201, 1.05), 1.02) == "missed"
    assert stats.no_difference_verdict(None, 1.02) == "n/a"
    assert stats.no_difference_verdict(stats.median_estimate([], "x"), 1.02) == "inconclusive"


def test_combine_takes_the_worst_verdict() -> None:
    assert bench_report.combine(["met", "inconclusive", "missed"]) == "missed"
    assert bench_report.combine(["met", "inconclusive", "n/a"]) == "inconclusive"
    assert bench_report.combine(["met", "n/a"]) == "met"
    assert bench_report.combine(["n/a"]) == "n/a"


def test_table_shows_estimate_interval_and_verdict() -> None:
    est = stats.median_estimate(spread(1.10, 0.03, 40), "median of 40 per-pair ratios")
    verdict = stats.verdict(est, 1.02)
    result = BenchResult(
        id="B1",
        title="cost of being installed",
        target="t",
        status=verdict,
        rows=[Row("m", "1 ms", "1.1 ms", bench_report.fmt_estimate(est), "<= 1.02", verdict)],
        data={},
        judged=[bench_report.Judged("CPU per reply ratio", "<= 1.02", verdict, est)],
    )
    rep = BenchReport(meta={}, results=[result])
    table = rep.render_table()
    assert f"{est.point:.3f} [{est.low:.3f}, {est.high:.3f}]" in table
    assert "MISSED" in table and "targets missed: B1" in table
    target = rep.to_json()["benchmarks"]["B1"]["targets"][0]
    assert target["verdict"] == "missed"
    assert target["point"] == est.point and target["ci95"] == [est.low, est.high]
    assert target["n"] == 40
    few = stats.median_estimate([1.0, 1.1], "x")
    assert bench_report.fmt_estimate(few).endswith("(n=2, too few)")


# -- B1 and B2 judge synthetic measurements (the measuring function replaced; no timing)

RUNTIME_FORMS = bench_forms.Forms(native=False, was_installed=True)


async def run_b2_faked(
    monkeypatch: pytest.MonkeyPatch,
    measure: segment_cost.Measure,
    cfg: segment_cost.SegmentCostConfig,
    *,
    alone_s: float = 20e-6,
) -> BenchResult:
    """B2 on a faked machine: ``measure`` gives each reply's figures; the handle alone in a
    tight loop (reported, not judged) takes ``alone_s`` and keeps 4 KiB."""

    async def fake_floor(count: int) -> tuple[float, float]:
        return alone_s, 4096.0

    monkeypatch.setattr(segment_cost, "_measure", measure)
    monkeypatch.setattr(segment_cost, "_measure_floor", fake_floor)
    return await segment_cost.run(cfg, RUNTIME_FORMS)


@pytest.mark.parametrize(
    ("repeats", "patch_factor", "verdict"),
    [(8, 1.0, "met"), (8, 1.5, "missed"), (8, 1.15, "inconclusive"), (3, 1.0, "inconclusive")],
)
async def test_b2_judges_the_slope_ratio_over_paired_repetitions(
    monkeypatch: pytest.MonkeyPatch, repeats: int, patch_factor: float, verdict: str
) -> None:
    rng = random.Random(3)

    async def fake_measure(
        n: int, form: bench_forms.Form, *, memory: bool, handles: bool = False
    ) -> tuple[float, float]:
        if memory:
            return 8000.0 * n, 0.0
        per_segment = 500e-6 * (patch_factor if form is bench_forms.Form.PATCHED else 1.0)
        per_segment += 100e-6 if handles else 0.0
        cpu = (2e-3 + per_segment * n) * rng.uniform(0.97, 1.03)
        return cpu, cpu

    cfg = segment_cost.SegmentCostConfig(ns=(1, 10, 100, 1000), repeats=repeats)
    result = await run_b2_faked(monkeypatch, fake_measure, cfg, alone_s=100e-6)
    judged = {j.name: j for j in result.judged}
    slope = result.judged[0]
    assert slope.name == "CPU per segment ratio (slope)"
    assert slope.estimate is not None and slope.estimate.n == repeats
    assert slope.estimate.low <= patch_factor <= slope.estimate.high
    assert slope.verdict == verdict
    assert len(result.data["repetition_slope_ratios"]) == repeats
    growth = judged["growth exponent, CPU time"]
    assert growth.estimate is not None
    assert growth.verdict == ("met" if repeats >= stats.MIN_SAMPLES else "inconclusive")
    assert result.status == bench_report.combine([j.verdict for j in result.judged])


@pytest.mark.parametrize(
    ("patch_factor", "verdict"),
    # 500 us per upstream segment, a 100 us floor: 1.1 is 50 us (0.5 floors), 1.5 is 2.5 floors
    [(1.1, "met"), (1.5, "missed"), (1.3, "inconclusive")],
)
async def test_b2_judges_the_patch_cost_per_segment_in_handle_floors(
    monkeypatch: pytest.MonkeyPatch, patch_factor: float, verdict: str
) -> None:
    rng = random.Random(4)

    async def fake_measure(
        n: int, form: bench_forms.Form, *, memory: bool, handles: bool = False
    ) -> tuple[float, float]:
        per_segment = 500e-6 * (patch_factor if form is bench_forms.Form.PATCHED else 1.0)
        if handles:  # upstream plus one handle per segment: the floor is 100 us
            per_segment += 100e-6
        if memory:
            # the patch keeps 1 KiB more per segment; one handle and its event keep 4 KiB
            return (8000.0 + (1024.0 if form is bench_forms.Form.PATCHED else 0.0)) * n, 0.0
        cpu = (2e-3 + per_segment * n) * rng.uniform(0.995, 1.005)
        return cpu, cpu

    cfg = segment_cost.SegmentCostConfig(ns=(1, 10, 100, 1000), repeats=8)
    result = await run_b2_faked(monkeypatch, fake_measure, cfg)
    judged = {j.name: j for j in result.judged}
    floor = judged["patch cost per segment / handle floor"]
    assert floor.estimate is not None and floor.estimate.n == 8
    assert floor.estimate.low <= (patch_factor - 1) * 5 <= floor.estimate.high
    assert floor.verdict == verdict
    memory = judged["memory per segment above FlushSentinel"]
    assert memory.verdict == "met" and memory.value == "1.00 KiB"
    assert result.data["handle_floor_kib"] == 4.0


@pytest.mark.parametrize(("patch_factor", "verdict"), [(1.0, "met"), (1.2, "missed")])
async def test_b1_judges_the_median_of_per_pair_ratios(
    monkeypatch: pytest.MonkeyPatch, patch_factor: float, verdict: str
) -> None:
    rng = random.Random(5)
    outliers = iter([10.0, 10.0])  # two batches hit by the machine: a mean would move

    async def fake_batch(session: Any, form: bench_forms.Form, cfg: Any) -> float:
        factor = patch_factor if form is bench_forms.Form.PATCHED else 1.0
        spike = next(outliers, 1.0) if form is bench_forms.Form.PATCHED else 1.0
        return 3e-3 * factor * spike * rng.uniform(0.995, 1.005)

    monkeypatch.setattr(install_cost, "_batch", fake_batch)
    cfg = install_cost.InstallCostConfig(batches=20, replies_per_batch=1, warmup_replies=0)
    result = await install_cost.run(cfg, RUNTIME_FORMS)
    (judged,) = result.judged
    # one value per two rounds in opposite orders
    assert judged.estimate is not None and judged.estimate.n == 10
    assert judged.estimate.low <= patch_factor <= judged.estimate.high
    assert judged.verdict == verdict == result.status
    assert result.data["ratio_of_means"] > 1.5  # what the old verdict used


async def test_b1_cancels_what_running_first_or_second_does(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a worker that runs second in its round is 3% slower (seen across processes in B1n):
    # per-round ratios fall into two modes, 1.03 and 1/1.03, and a median lands anywhere
    # between them; rounds in opposite orders, taken together, cancel the order
    rng = random.Random(7)
    position = [0]

    async def fake_batch(session: Any, form: bench_forms.Form, cfg: Any) -> float:
        position[0] += 1
        second = position[0] % 2 == 0
        return 3e-3 * (1.03 if second else 1.0) * rng.uniform(0.998, 1.002)

    monkeypatch.setattr(install_cost, "_batch", fake_batch)
    cfg = install_cost.InstallCostConfig(batches=40, replies_per_batch=1, warmup_replies=0)
    result = await install_cost.run(cfg, RUNTIME_FORMS)
    (judged,) = result.judged
    assert judged.estimate is not None
    assert judged.estimate.low <= 1.0 <= judged.estimate.high
    assert judged.estimate.high - judged.estimate.low < 0.01


async def test_b1_measures_every_batch_from_the_same_history(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # a reply costs more the longer the history: trimmed only once per round, the form that
    # ran second paid for the first one's replies, and the per-round ratios split in two
    history = [0]

    async def fake_trim(session: Any, agent: Any, items: int) -> None:
        history[0] = 0

    async def fake_batch(session: Any, form: bench_forms.Form, cfg: Any) -> float:
        cost = 3e-3 * (1 + 0.01 * history[0])
        history[0] += cfg.replies_per_batch
        return cost

    monkeypatch.setattr(install_cost, "trim_history", fake_trim)
    monkeypatch.setattr(install_cost, "_batch", fake_batch)
    cfg = install_cost.InstallCostConfig(batches=20, replies_per_batch=20, warmup_replies=0)
    result = await install_cost.run(cfg, RUNTIME_FORMS)
    assert result.data["pair_ratios"] == [1.0] * 20


@pytest.mark.runtime_only
def test_activate_says_whether_it_switched_forms() -> None:
    livekit_segments.uninstall()
    assert bench_forms.activate(bench_forms.Form.PATCHED) is True
    assert bench_forms.activate(bench_forms.Form.PATCHED) is False
    assert bench_forms.activate(bench_forms.Form.NATIVE) is False
    assert bench_forms.activate(bench_forms.Form.UPSTREAM) is True
    assert bench_forms.activate(bench_forms.Form.UPSTREAM) is False


def fake_round(
    cfg: concurrent_sessions.ConcurrentSessionsConfig, form: bench_forms.Form, factor: float
) -> concurrent_sessions.Sample:
    """One round as B6 would measure it, everything played, each figure times ``factor``."""
    replies = cfg.sessions * cfg.replies_per_round
    frames = replies * sum(cfg.responses)
    per_reply = 1 if form is bench_forms.Form.UPSTREAM else len(cfg.responses)
    return concurrent_sessions.Sample(
        lag_p50=1e-3 * factor,
        lag_p99=20e-3 * factor,
        cpu=2.0 * factor,
        loop_cpu=1.2 * factor,
        wall=2.0,
        audio=frames * cfg.frame_ms / 1000,
        frames=frames,
        rss_start=100 * 2**20,
        rss_peak=int(150 * 2**20 * factor),
        segments=replies * len(cfg.responses),
        handles=replies * per_reply,
        handles_done=replies * per_reply,
        lags=200,
    )


@pytest.mark.parametrize(
    ("patch_factor", "verdict"), [(1.0, "met"), (1.01, "met"), (1.2, "missed")]
)
async def test_b6_judges_each_figure_over_paired_rounds(
    monkeypatch: pytest.MonkeyPatch, patch_factor: float, verdict: str
) -> None:
    rng = random.Random(11)
    outliers = iter([3.0, 3.0])  # two upstream rounds hit by the machine: a mean would move

    async def fake(
        form: bench_forms.Form, fleet: Any, cfg: concurrent_sessions.ConcurrentSessionsConfig
    ) -> concurrent_sessions.Sample:
        assert len(fleet) == cfg.sessions
        if form is bench_forms.Form.PATCHED:
            factor = patch_factor * rng.uniform(0.999, 1.001)
        else:
            factor = next(outliers, 1.0) * rng.uniform(0.999, 1.001)
        return fake_round(cfg, form, factor)

    monkeypatch.setattr(concurrent_sessions, "_round", fake)
    cfg = concurrent_sessions.ConcurrentSessionsConfig(sessions=2, rounds=24, warmup_replies=0)
    result = await concurrent_sessions.run(cfg, RUNTIME_FORMS)
    *ratios, played = result.judged
    assert [j.name for j in ratios] == [f"{f} ratio" for f in B6_FIGURES]
    for j in ratios:
        assert j.estimate is not None and j.estimate.n == cfg.rounds // 2
        assert j.estimate.point == pytest.approx(patch_factor, rel=0.01)
        assert j.verdict == verdict, j
    assert played.verdict == "met"
    assert result.status == verdict


async def test_b6_misses_when_a_round_falls_short(monkeypatch: pytest.MonkeyPatch) -> None:
    async def fake(
        form: bench_forms.Form, fleet: Any, cfg: concurrent_sessions.ConcurrentSessionsConfig
    ) -> concurrent_sessions.Sample:
        sample = fake_round(cfg, form, 1.0)
        if form is bench_forms.Form.PATCHED:
            sample.handles_done -= 1  # one handle still pending when its reply returned
        return sample

    monkeypatch.setattr(concurrent_sessions, "_round", fake)
    cfg = concurrent_sessions.ConcurrentSessionsConfig(sessions=2, rounds=6, warmup_replies=0)
    result = await concurrent_sessions.run(cfg, RUNTIME_FORMS)
    assert result.judged[-1].verdict == "missed" == result.status
    assert len(result.data["short_rounds"]) == cfg.rounds
    assert all(r.startswith("patched round") for r in result.data["short_rounds"])


async def test_b6_pairs_rounds_in_opposite_orders(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whichever form runs second in a round pays 10% more on every figure, and the patch
    costs nothing: per-round ratios split into 1.1 and 1/1.1, their pairs are all 1.0."""
    calls = [0]

    async def fake(
        form: bench_forms.Form, fleet: Any, cfg: concurrent_sessions.ConcurrentSessionsConfig
    ) -> concurrent_sessions.Sample:
        second = calls[0] % 2 == 1
        calls[0] += 1
        return fake_round(cfg, form, 1.1 if second else 1.0)

    monkeypatch.setattr(concurrent_sessions, "_round", fake)
    cfg = concurrent_sessions.ConcurrentSessionsConfig(sessions=2, rounds=12, warmup_replies=0)
    result = await concurrent_sessions.run(cfg, RUNTIME_FORMS)
    for name in B6_FIGURES:
        per_round = result.data["per_round_ratios"][name]
        assert sorted({round(r, 6) for r in per_round}) == [round(1 / 1.1, 6), 1.1]
    for j in result.judged[:-1]:
        assert j.estimate is not None and j.estimate.n == cfg.rounds // 2
        assert j.estimate.low == pytest.approx(1.0) and j.estimate.high == pytest.approx(1.0)
        assert j.verdict == "met"


async def test_b6_judges_cpu_on_the_event_loop_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The patched rounds take longer on the machine's clock, so the native threads that pace
    the audio sources burn 30% more: the process total says so, unjudged; the loop thread,
    where the patch runs, did the same work."""

    async def fake(
        form: bench_forms.Form, fleet: Any, cfg: concurrent_sessions.ConcurrentSessionsConfig
    ) -> concurrent_sessions.Sample:
        sample = fake_round(cfg, form, 1.0)
        if form is bench_forms.Form.PATCHED:
            sample.cpu *= 1.3
        return sample

    monkeypatch.setattr(concurrent_sessions, "_round", fake)
    cfg = concurrent_sessions.ConcurrentSessionsConfig(sessions=2, rounds=12, warmup_replies=0)
    result = await concurrent_sessions.run(cfg, RUNTIME_FORMS)
    cpu = next(j for j in result.judged if "CPU" in j.name)
    assert cpu.name == "event-loop CPU per second of audio ratio"
    assert cpu.estimate is not None and cpu.estimate.point == pytest.approx(1.0)
    assert cpu.verdict == "met" == result.status
    shown = next(r for r in result.rows if r.metric.startswith("process CPU"))
    assert shown.ratio.startswith("1.300") and shown.status is None
    assert shown.target == "(not judged)"


def test_b6_script_splits_replies_with_the_form_break() -> None:
    upstream = concurrent_sessions.script((2, 3), bench_forms.Form.UPSTREAM)
    patched = concurrent_sessions.script((2, 3), bench_forms.Form.PATCHED)
    assert [type(x).__name__ for x in upstream] == ["str", "FlushSentinel", "str"]
    assert isinstance(patched[1], livekit_segments.SegmentBreak)
    # one frame per word, however upstream re-chunks the text
    assert [len(x.split()) for x in patched if isinstance(x, str)] == [2, 3]


class FakeWatch:
    """What B3 reads from one session's watch: its latencies (s) and its sink's segments."""

    def __init__(self, latencies: list[float]) -> None:
        self._latencies = latencies
        self.sink = types.SimpleNamespace(segments=latencies)
        self.cancelled = 0

    def latencies(self) -> list[float]:
        return self._latencies

    def values_equal(self) -> bool:
        return True


@pytest.mark.parametrize(
    ("patch_ms", "upstream_ms", "verdict"),
    [
        (0.3, 0.3, "met"),
        (4.0, 0.3, "missed"),  # upstream's wake-up is fast on this machine: the patch is slow
        (4.0, 4.0, "inconclusive"),  # both slow: the machine decides the p99
        (1.0, 0.3, "inconclusive"),  # the interval straddles the bound
    ],
)
async def test_b3_judges_the_p99_from_its_interval_against_a_control(
    monkeypatch: pytest.MonkeyPatch, patch_ms: float, upstream_ms: float, verdict: str
) -> None:
    async def fake_run(form: bench_forms.Form, **_: Any) -> list[FakeWatch]:
        center = patch_ms if form is bench_forms.Form.PATCHED else upstream_ms
        # 300 latencies, 5% of them in a tail around the center: the p99 lands in the tail
        body = [0.1e-3] * 285
        tail = [x * 1e-3 for x in spread(center, 0.1 * center, 15)]
        return [FakeWatch(body + tail)]

    monkeypatch.setattr(signal_latency, "_run", fake_run)
    cfg = signal_latency.SignalLatencyConfig(
        single_segments=300, single_segments_per_reply=300, sessions=2, segments_per_session=3
    )
    result = await signal_latency.run(cfg, RUNTIME_FORMS)
    p99 = result.judged[0]
    assert p99.name == "p99 with 1 session" and p99.estimate is not None
    assert p99.verdict == verdict
    assert result.data["p99_machine_bound"] is (verdict == "inconclusive" and upstream_ms > 1)


# -- BENCHMARKS.md: one command writes it, naming the commit; CI checks it is fresh

ROOT = Path(__file__).resolve().parents[1]
FRESH = ROOT / "scripts" / "check-benchmarks-fresh"


def fake_report() -> BenchReport:
    """A report as a full run would give, without running one."""
    est = stats.median_estimate(spread(0.99, 0.02, 60), "median of 60 per-pair ratios")
    b1 = BenchResult(
        id="B1",
        title="cost of being installed",
        target="CPU per reply ratio <= 1.02",
        status="met",
        rows=[
            Row("CPU per reply", "3 ms", "3 ms", bench_report.fmt_estimate(est), "<= 1.02", "met")
        ],
        data={},
        judged=[bench_report.Judged("CPU per reply ratio", "<= 1.02", "met", est)],
    )
    b5 = BenchResult(
        id="B5",
        title="no leaks",
        target="t",
        status="missed",
        rows=[Row("live SpeechHandles", "", "0 -> 3", "", "equal", "missed")],
        data={},
        judged=[bench_report.Judged("live SpeechHandles", "equal", "missed", value="0 -> 3")],
    )
    meta = {"preset": "default", "mode_description": "runtime: a test"}
    return BenchReport(meta=meta, results=[b1, b5], wall_s=123.4)


def git(repo: Path, *args: str) -> str:
    env = {
        "GIT_CONFIG_GLOBAL": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.com",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.com",
        "PATH": os.environ["PATH"],
    }
    done = subprocess.run(
        ["git", "-C", str(repo), *args], env=env, capture_output=True, text=True, check=True
    )
    return done.stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A git checkout shaped like this project: the runtime package with its demo, the
    benchmarks, the series, and the freshness script."""
    root = tmp_path / "repo"
    for path in (
        "livekit_segments/code.py",
        "livekit_segments/demo/cli.py",
        "livekit_segments/doctor.py",
        "benchmarks/segment_cost.py",
        "patches/0001-fix.patch",
    ):
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text("x = 1\n")
    (root / "scripts").mkdir()
    shutil.copy2(FRESH, root / "scripts" / FRESH.name)
    shutil.copy2(FRESH.parent / "check-fresh", root / "scripts" / "check-fresh")
    (root / "README.md").write_text("readme\n")
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", "the measured code")
    return root


def commit_all(repo: Path, message: str) -> None:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", message)


def fresh(repo: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(repo / "scripts" / FRESH.name)], capture_output=True, text=True, check=False
    )


def test_record_names_the_commit_machine_and_every_verdict(repo: Path) -> None:
    prov = bench_record.prepare("default", None, root=repo)
    assert prov.commit == git(repo, "rev-parse", "HEAD")
    assert prov.subject == "the measured code"
    report = fake_report()
    text = bench_record.render(report, prov)

    assert text.splitlines()[0].startswith(f"<!-- bench-record commit={prov.commit} ")
    assert bench_record.recorded_commit(text) == prov.commit
    assert f"| commit | `{prov.commit}` (the measured code) |" in text
    for fact in ("CPUs", "python", "livekit-agents", "livekit-segments", "date", "wall time"):
        assert f"| {fact} |" in text, fact
    assert bench_record.COMMAND in text
    # every target with its figure and verdict; the printed table verbatim; the prose per figure
    assert "| B1 | CPU per reply ratio | <= 1.02 | " in text
    est = report.results[0].judged[0].estimate
    assert est is not None and f"[{est.low:.3f}, {est.high:.3f}]" in text
    assert "| B5 | live SpeechHandles | equal | 0 -> 3 | **missed** |" in text
    assert "Summary: targets missed: B5." in text
    assert report.render_table() in text
    assert bench_record.FIGURES["B1"] in text and bench_record.FIGURES["B5"] in text
    assert bench_record.FIGURES["B2"] not in text  # only the figures that ran


def test_record_refuses_what_would_not_name_the_code_measured(repo: Path, tmp_path: Path) -> None:
    with pytest.raises(bench_record.RecordError, match="drop --quick and --only"):
        bench_record.prepare("quick", None, root=repo)
    with pytest.raises(bench_record.RecordError, match="drop --quick and --only"):
        bench_record.prepare("default", ["B1"], root=repo)
    (repo / "livekit_segments" / "code.py").write_text("x = 2\n")
    with pytest.raises(bench_record.RecordError, match="uncommitted changes .*code.py.*commit"):
        bench_record.prepare("default", None, root=repo)
    git(repo, "checkout", "-q", "--", "livekit_segments")
    (repo / "livekit_segments" / "new.py").write_text("")
    with pytest.raises(bench_record.RecordError, match="uncommitted changes"):
        bench_record.prepare("default", None, root=repo)
    (repo / "livekit_segments" / "new.py").unlink()
    (repo / "benchmarks" / "segment_cost.py").write_text("x = 2\n")  # the measuring code
    with pytest.raises(bench_record.RecordError, match="uncommitted changes .*segment_cost.py"):
        bench_record.prepare("default", None, root=repo)
    git(repo, "checkout", "-q", "--", "benchmarks")
    (repo / "livekit_segments" / "demo" / "cli.py").write_text("x = 2\n")  # not measured
    (repo / "README.md").write_text("changed outside the measured code\n")
    prov = bench_record.prepare("default", None, root=repo)
    bench_record.confirm(prov, root=repo)
    commit_all(repo, "moved on during the run")
    with pytest.raises(bench_record.RecordError, match="changed during the run"):
        bench_record.confirm(prov, root=repo)
    with pytest.raises(bench_record.RecordError, match="is a directory"):
        bench_record.prepare("default", None, path=tmp_path, root=repo)
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(bench_record.RecordError, match="not a writable folder"):
        bench_record.prepare("default", None, path=blocker / "BENCHMARKS.md", root=repo)
    # a missing folder is fine: it is created when the record is written
    bench_record.prepare("default", None, path=tmp_path / "new" / "B.md", root=repo)
    bench_record.write(tmp_path / "new" / "B.md", "text\n")
    assert (tmp_path / "new" / "B.md").read_text() == "text\n"
    plain = tmp_path / "not-a-checkout"
    plain.mkdir()
    with pytest.raises(bench_record.RecordError, match="git checkout"):
        bench_record.prepare("default", None, root=plain)


def test_the_freshness_check_and_the_record_name_the_same_measured_paths() -> None:
    done = subprocess.run(["bash", str(FRESH), "--paths"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert tuple(done.stdout.split()) == bench_record.MEASURED_PATHS


def test_freshness_check_fails_once_the_measured_code_changed(repo: Path) -> None:
    record = repo / "BENCHMARKS.md"
    record.write_text("# Benchmarks\n\nwritten by hand\n")
    commit_all(repo, "a hand-written record")
    done = fresh(repo)
    assert done.returncode == 1 and "names no commit" in done.stderr

    prov = bench_record.prepare("default", None, root=repo)
    record.write_text(bench_record.render(fake_report(), prov))
    commit_all(repo, "record the benchmarks")
    done = fresh(repo)
    assert done.returncode == 0, done.stderr
    assert prov.commit[:12] in done.stdout

    (repo / "README.md").write_text("docs move on\n")
    commit_all(repo, "docs only")
    assert fresh(repo).returncode == 0

    # the demo and doctor ship, but no benchmark runs them
    (repo / "livekit_segments" / "demo" / "cli.py").write_text("x = 3\n")
    (repo / "livekit_segments" / "doctor.py").write_text("x = 3\n")
    commit_all(repo, "the demo and doctor move on")
    assert fresh(repo).returncode == 0

    head = git(repo, "rev-parse", "HEAD")
    for path in ("benchmarks/segment_cost.py", "patches/0001-fix.patch"):
        (repo / path).write_text("x = 3\n")
        commit_all(repo, f"change {path}")
        done = fresh(repo)
        assert done.returncode == 1 and "stale" in done.stderr and path in done.stderr
        git(repo, "reset", "-q", "--hard", head)

    (repo / "livekit_segments" / "code.py").write_text("x = 3\n")
    commit_all(repo, "change the measured code")
    done = fresh(repo)
    assert done.returncode == 1
    assert "stale" in done.stderr and "livekit_segments/code.py" in done.stderr
    assert "python -m benchmarks --record BENCHMARKS.md" in done.stderr

    record.write_text(record.read_text().replace(prov.commit, "f" * 40))
    commit_all(repo, "a record of a commit this clone lacks")
    done = fresh(repo)
    assert done.returncode == 1 and "not in this clone" in done.stderr


def test_cli_record_checks_first_then_writes(
    repo: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    runs: list[str] = []

    async def fake_run_bench(config: BenchConfig, **_: Any) -> BenchReport:
        runs.append(config.preset)
        return fake_report()

    monkeypatch.setattr(bench_cli, "run_bench", fake_run_bench)
    monkeypatch.setattr(bench_record, "repo_root", lambda: repo)
    out = repo / "BENCHMARKS.md"

    # refused before any work: a smaller preset, or uncommitted measured code
    args = parse(["--quick", "--record", str(out)])
    assert args.func(args) == 2
    (repo / "livekit_segments" / "code.py").write_text("x = 2\n")
    args = parse(["--record", str(out)])
    assert args.func(args) == 2
    err = capsys.readouterr().err
    assert "drop --quick" in err and "uncommitted changes" in err
    assert len(err.strip().splitlines()) == 2  # one line each, no traceback
    assert runs == [] and not out.exists()

    git(repo, "checkout", "-q", "--", "livekit_segments")
    args = parse(["--record", str(out), "--check"])
    assert args.func(args) == 1  # the fake report misses B5: --check still says so
    assert runs == ["default"]
    assert bench_record.recorded_commit(out.read_text()) == git(repo, "rev-parse", "HEAD")


async def test_b2_floor_multiple_keeps_repetitions_whose_own_floor_is_noise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A busy machine: the handle adds 100 us per segment, but in one repetition of four the
    slope of the reply with handles comes out 150 us low (floor -50 us), and in another 90 us
    low (floor 10 us, a per-repetition ratio of 25). The cost in floors is still 0.5."""
    slow = {3: -150e-6, 7: -90e-6, 11: -150e-6, 15: -90e-6}  # per repetition, handles only
    calls = {"rep": -1}

    async def fake_measure(
        n: int, form: bench_forms.Form, *, memory: bool, handles: bool = False
    ) -> tuple[float, float]:
        if memory:
            return 8000.0 * n, 0.0
        if n == 1 and form is bench_forms.Form.UPSTREAM and not handles:
            calls["rep"] += 1  # every repetition starts with N=1 (both orders include it)
        per_segment = 500e-6 * (1.1 if form is bench_forms.Form.PATCHED else 1.0)
        if handles:
            per_segment += 100e-6 + slow.get(calls["rep"], 0.0)
        cpu = 2e-3 + per_segment * n
        return cpu, cpu

    cfg = segment_cost.SegmentCostConfig(ns=(1, 10, 100, 1000), repeats=16)
    result = await run_b2_faked(monkeypatch, fake_measure, cfg)
    floor = {j.name: j for j in result.judged}["patch cost per segment / handle floor"]
    assert floor.estimate is not None and floor.estimate.n == 16  # none dropped
    assert floor.estimate.point == pytest.approx(0.5)
    assert floor.estimate.high < 1.5 and floor.verdict == "met"


async def test_b2_without_a_positive_floor_is_inconclusive_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tiny N on a busy machine: the handle's cost drowns in noise and the floor comes out
    <= 0; no ratio exists, so nothing is judged (and no NaN interval reaches the JSON)."""

    async def fake_measure(
        n: int, form: bench_forms.Form, *, memory: bool, handles: bool = False
    ) -> tuple[float, float]:
        if memory:
            return 8000.0 * n, 0.0
        cpu = 2e-3 + (480e-6 if handles else 500e-6) * n  # "faster" with the handle: noise
        return cpu, cpu

    cfg = segment_cost.SegmentCostConfig(ns=(1, 3, 10), repeats=2)
    result = await run_b2_faked(monkeypatch, fake_measure, cfg)
    floor = {j.name: j for j in result.judged}["patch cost per segment / handle floor"]
    assert floor.estimate is None and floor.verdict == "inconclusive"
    assert "ci95" not in floor.to_json() and floor.value
    assert len(result.data["repetition_overheads_us"]) == 2


async def test_b2_overhead_per_segment_is_the_judged_median(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The JSON's overhead per segment is the numerator the floor multiple judges (the median
    of per-repetition overheads), not the difference of the two forms' median slopes, which
    pairs different repetitions (here 10 us against a judged 100 us)."""
    upstream_us = [500.0, 600.0, 700.0]
    patched_us = [600.0, 800.0, 610.0]  # overheads 100, 200, -90 us
    calls = {"n": 0}

    async def fake_measure(
        n: int, form: bench_forms.Form, *, memory: bool, handles: bool = False
    ) -> tuple[float, float]:
        if memory:
            return 8000.0 * n, 0.0
        r = calls["n"] // 9  # a repetition: 3 N x (2 forms + upstream with handles)
        calls["n"] += 1
        per_segment = (patched_us if form is bench_forms.Form.PATCHED else upstream_us)[r]
        cpu = 2e-3 + (per_segment + (40.0 if handles else 0.0)) * 1e-6 * n
        return cpu, cpu

    # no settling replies: every call here is a measured one
    cfg = segment_cost.SegmentCostConfig(ns=(1, 10, 100), repeats=3, settle_segments=0)
    result = await run_b2_faked(monkeypatch, fake_measure, cfg)
    assert sorted(result.data["repetition_overheads_us"]) == pytest.approx([-90.0, 100.0, 200.0])
    assert result.data["overhead_per_segment_us"] == pytest.approx(100.0)
    assert result.data["slope_of_medians_difference_us"] == pytest.approx(10.0)


async def test_b1_measures_no_reply_that_follows_a_switch_of_forms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Installing or uninstalling invalidates specialized bytecode; the reply after the
    switch pays to specialize it again, which production never does: B1 runs it unmeasured.
    Where activating changes nothing (B1n's workers) nothing runs unmeasured."""
    events: list[str] = []
    switches = iter([True, False])

    def fake_activate(form: bench_forms.Form) -> bool:
        events.append("activate")
        return next(switches)

    async def fake_reply(session: Any) -> None:
        events.append("reply")

    def fake_cpu() -> float:
        events.append("read")
        return float(len(events))

    monkeypatch.setattr(install_cost, "reply", fake_reply)
    monkeypatch.setattr(install_cost, "activate", fake_activate)
    monkeypatch.setattr(cpu_meter, "_read", fake_cpu)
    cfg = install_cost.InstallCostConfig(batches=1, replies_per_batch=3)
    await install_cost._batch(None, bench_forms.Form.PATCHED, cfg)  # type: ignore[arg-type]
    assert events == ["activate", "reply", "read", "reply", "reply", "reply", "read"]
    events.clear()
    await install_cost._batch(None, bench_forms.Form.PATCHED, cfg)  # type: ignore[arg-type]
    assert events == ["activate", "read", "reply", "reply", "reply", "read"]


async def test_b2_measures_no_reply_that_follows_a_switch_of_forms(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As in B1: a switch of forms invalidates specialized bytecode, and CPython 3.11
    specializes an instruction again only after 53 misses. B2 measures one form at a time and
    runs an unmeasured reply of `settle_segments` segments after each switch (the
    baseline's with handles, so the floor's code settles too); where activating changes
    nothing (B2n's parent), nothing runs unmeasured."""
    live: list[bench_forms.Form] = [bench_forms.Form.PATCHED]
    calls: list[tuple[int, str, bool]] = []

    def fake_activate(form: bench_forms.Form) -> bool:
        switched = live[0] is not form
        live[0] = form
        return switched

    async def fake_measure(
        n: int, form: bench_forms.Form, *, memory: bool, handles: bool = False
    ) -> tuple[float, float]:
        if not memory:
            calls.append((n, form.value, handles))
        cpu = 2e-3 + 500e-6 * n
        return cpu, cpu

    monkeypatch.setattr(segment_cost, "activate", fake_activate)
    cfg = segment_cost.SegmentCostConfig(ns=(1, 10), repeats=2, memory=False, settle_segments=64)
    result = await run_b2_faked(monkeypatch, fake_measure, cfg)
    u, p = "upstream", "patched"
    assert calls == [
        # repetition 0, upstream first: a switch from the patch, so a settling reply first
        (64, u, True),
        (1, u, False),
        (1, u, True),
        (10, u, False),
        (10, u, True),
        (64, p, False),
        (1, p, False),
        (10, p, False),
        (64, u, True),  # the floor is measured with upstream live
        # repetition 1, the patch first
        (64, p, False),
        (1, p, False),
        (10, p, False),
        (64, u, True),
        (1, u, False),
        (1, u, True),
        (10, u, False),
        (10, u, True),
    ]
    assert len(result.data["repetition_slope_ratios"]) == 2  # the settling replies not in it

    calls.clear()
    monkeypatch.setattr(segment_cost, "activate", lambda form: False)  # B2n's parent
    await run_b2_faked(monkeypatch, fake_measure, cfg)
    assert all(n != 64 for n, _, _ in calls) and len(calls) == 12
