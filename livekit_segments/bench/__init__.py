"""Benchmarks: the runtime patch against upstream livekit-agents, in one process.

``python -m livekit_segments bench`` runs them (the CLI calls `add_parser`); `run_bench` runs
them from code. Modules: `install_cost` (B1), `segment_cost` (B2), `signal_latency` (B3),
`segment_gap` (B4), `leaks` (B5), `concurrent_sessions` (B6); `fakes` holds the scripted
agent and sinks, `forms` switches between upstream and the patch, `report` renders the table
and the JSON.
"""

from __future__ import annotations

from .cli import add_parser, main, run_command
from .report import BenchReport, BenchResult, Row
from .runner import BENCHMARKS, BenchConfig, run_bench

__all__ = [
    "BENCHMARKS",
    "BenchConfig",
    "BenchReport",
    "BenchResult",
    "Row",
    "add_parser",
    "main",
    "run_bench",
    "run_command",
]
