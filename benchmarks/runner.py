"""Presets and the run of all seven benchmarks (B7's own worker aside) in one process."""

from __future__ import annotations

import dataclasses
import gc
import logging
import os
import platform
import time
from collections.abc import Awaitable, Callable, Collection
from dataclasses import dataclass
from typing import Any

import livekit.agents
from livekit_segments import __version__

from . import forms as forms_mod
from .concurrent_sessions import ConcurrentSessionsConfig, run as run_concurrent_sessions
from .install_cost import InstallCostConfig, run as run_install_cost
from .instructions import InstructionsConfig, run as run_instructions
from .leaks import LeaksConfig, run as run_leaks
from .process_setup import quiet_livekit_logs
from .report import BenchReport, BenchResult
from .segment_cost import SegmentCostConfig, run as run_segment_cost
from .segment_gap import SegmentGapConfig, run as run_segment_gap
from .signal_latency import SignalLatencyConfig, run as run_signal_latency

__all__ = ["BENCHMARKS", "BenchConfig", "run_bench"]

BENCHMARKS = ("B1", "B2", "B3", "B4", "B5", "B6", "B7")


@dataclass(frozen=True)
class BenchConfig:
    preset: str
    install_cost: InstallCostConfig
    segment_cost: SegmentCostConfig
    signal_latency: SignalLatencyConfig
    segment_gap: SegmentGapConfig
    leaks: LeaksConfig
    concurrent_sessions: ConcurrentSessionsConfig
    instructions: InstructionsConfig | None  # None: B7 is not run (it takes minutes)

    @classmethod
    def default(cls) -> BenchConfig:
        """The full run: about 15 minutes on a 2-core machine (B6 plays in real time: 4 to 5;
        B7 runs B1 and B2 again under callgrind: about 3.5)."""
        return cls(
            preset="default",
            install_cost=InstallCostConfig(batches=400, replies_per_batch=20),
            segment_cost=SegmentCostConfig(ns=(1, 10, 100, 1000), repeats=25),
            signal_latency=SignalLatencyConfig(
                single_segments=1000,
                single_segments_per_reply=100,
                sessions=50,
                segments_per_session=20,
            ),
            segment_gap=SegmentGapConfig(segments_per_reply=25, replies=2),
            leaks=LeaksConfig(turns=10_000),
            concurrent_sessions=ConcurrentSessionsConfig(sessions=100, rounds=32),
            # counts barely vary: 6 counterbalanced B1 values and 6 B2 repetitions are the
            # fewest a 95% interval of a median needs; the warm-up fills B1's history to its
            # cut, so that the first round measures what the others do
            instructions=InstructionsConfig(
                install_cost=InstallCostConfig(batches=12, replies_per_batch=8, warmup_replies=12),
                segment_cost=SegmentCostConfig(
                    ns=(1, 10, 40), repeats=6, memory=False, floor_handles=20
                ),
            ),
        )

    @classmethod
    def quick(cls) -> BenchConfig:
        """A smoke run for CI (under 30 s): same code, smaller counts, noisy numbers."""
        return cls(
            preset="quick",
            install_cost=InstallCostConfig(batches=6, replies_per_batch=20),
            segment_cost=SegmentCostConfig(ns=(1, 10, 100, 1000), repeats=1, memory_max_n=100),
            signal_latency=SignalLatencyConfig(
                single_segments=300,  # p99 needs 299 samples for any 95% interval
                single_segments_per_reply=50,
                sessions=50,
                segments_per_session=4,
            ),
            segment_gap=SegmentGapConfig(segments_per_reply=10, replies=1),
            leaks=LeaksConfig(turns=500, trim_every=50, warmup_turns=200),
            concurrent_sessions=ConcurrentSessionsConfig(
                sessions=100, rounds=6, responses=(2, 2), stagger_ms=100, warmup_replies=0
            ),
            instructions=InstructionsConfig(
                install_cost=InstallCostConfig(batches=2, replies_per_batch=2, warmup_replies=1),
                segment_cost=SegmentCostConfig(ns=(1, 5), repeats=1, memory=False, floor_handles=5),
            ),
        )

    @classmethod
    def tiny(cls) -> BenchConfig:
        """For the test suite: every code path, a few seconds, numbers meaningless."""
        return cls(
            preset="tiny",
            install_cost=InstallCostConfig(batches=2, replies_per_batch=3, warmup_replies=1),
            segment_cost=SegmentCostConfig(ns=(1, 3, 10), repeats=1),
            signal_latency=SignalLatencyConfig(
                single_segments=12,
                single_segments_per_reply=6,
                sessions=3,
                segments_per_session=3,
            ),
            segment_gap=SegmentGapConfig(segments_per_reply=3, replies=1, frames_per_segment=3),
            leaks=LeaksConfig(turns=30, trim_every=10, warmup_turns=10),
            concurrent_sessions=ConcurrentSessionsConfig(
                sessions=3, rounds=2, responses=(1, 2), stagger_ms=20, warmup_replies=0
            ),
            instructions=None,
        )

    @classmethod
    def preset_named(cls, name: str) -> BenchConfig:
        presets: dict[str, Callable[[], BenchConfig]] = {
            "default": cls.default,
            "quick": cls.quick,
            "tiny": cls.tiny,
        }
        return presets[name]()


async def run_bench(
    config: BenchConfig,
    *,
    only: Collection[str] | None = None,
    progress: Callable[[str], None] | None = None,
    quiet_logs: bool = True,
) -> BenchReport:
    """Run the benchmarks (all, or those in ``only``) in this process and event loop.

    The runtime patch is switched on and off as the comparison needs, and left as found.
    """
    selected = [b for b in BENCHMARKS if only is None or b in only]
    forms = forms_mod.detect()
    meta: dict[str, Any] = {
        "preset": config.preset,
        "mode": "native" if forms.native else "runtime",
        "mode_description": forms.description,
        "subject": forms.subject.value,
        "livekit_agents": livekit.agents.__version__,
        "livekit_segments": __version__,
        "python": platform.python_version(),
        "cpu_count": os.cpu_count(),
        "config": _config_json(config),
    }
    runners: dict[str, Callable[[], Awaitable[BenchResult]]] = {
        "B1": lambda: run_install_cost(config.install_cost, forms),
        "B2": lambda: run_segment_cost(config.segment_cost, forms),
        "B3": lambda: run_signal_latency(config.signal_latency, forms),
        "B4": lambda: run_segment_gap(config.segment_gap, forms),
        "B5": lambda: run_leaks(config.leaks, forms),
        "B6": lambda: run_concurrent_sessions(config.concurrent_sessions, forms),
        "B7": lambda: run_instructions(config.instructions, forms),
    }
    results: list[BenchResult] = []
    levels = quiet_livekit_logs() if quiet_logs else {}
    t0 = time.perf_counter()
    try:
        for bench_id in selected:
            if progress is not None:
                progress(f"{bench_id} running")
            # what was alive before is not what is measured: freezing it keeps full
            # collections (the bench's own and the periodic ones) from walking it
            gc.collect()
            gc.freeze()
            t = time.perf_counter()
            try:
                result = await runners[bench_id]()
            finally:
                gc.unfreeze()
            result.wall_s = time.perf_counter() - t
            results.append(result)
            if progress is not None:
                progress(f"{bench_id} {result.status} in {result.wall_s:.1f} s")
    finally:
        forms.restore()
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    return BenchReport(meta=meta, results=results, wall_s=time.perf_counter() - t0)


def _config_json(config: BenchConfig) -> dict[str, Any]:
    return dataclasses.asdict(config)
