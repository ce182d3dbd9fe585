"""Results of the benchmarks: the printed table and the JSON document."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from .stats import Estimate, Verdict

__all__ = [
    "BenchReport",
    "BenchResult",
    "Judged",
    "Row",
    "Status",
    "combine",
    "fmt",
    "fmt_estimate",
    "fmt_ratio",
    "judge",
]

Status = Verdict  # "met", "missed", "inconclusive" or "n/a"


def judge(ok: bool | None) -> Status:
    """An exact check (a count, an equality): ``met`` or ``missed``; ``n/a`` when the target
    cannot be evaluated in this mode. Noisy measurements are judged by `stats.verdict`."""
    if ok is None:
        return "n/a"
    return "met" if ok else "missed"


def combine(statuses: list[Status]) -> Status:
    """A benchmark's verdict from its targets': any missed, else any inconclusive, else met."""
    order: tuple[Status, ...] = ("missed", "inconclusive", "met")
    return next((s for s in order if s in statuses), "n/a")


@dataclass(frozen=True)
class Judged:
    """One target of a benchmark and its verdict; ``estimate`` when it was measured with an
    interval (a noisy figure), None for an exact check; ``value`` is the figure as shown."""

    name: str
    target: str
    verdict: Status
    estimate: Estimate | None = None
    value: str = ""

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "target": self.target, "verdict": self.verdict}
        if self.value:
            doc["value"] = self.value
        if self.estimate is not None:
            doc.update(self.estimate.to_json())
        return doc


def fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    """A number with ``digits`` significant digits and its unit, or ``-`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return f"{text} {unit}".rstrip()


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def fmt_estimate(
    estimate: Estimate | None, digits: int = 3, unit: str = "", *, few: bool = True
) -> str:
    """``point [low, high]``, the 95% interval in brackets; ``n/a`` without an estimate.
    With ``few``, says so when there were too few samples for a verdict."""
    if estimate is None:
        return "n/a"

    def f(v: float) -> str:
        if v == math.inf:
            return "inf"  # an interval with no upper end (a ratio whose resamples divide by 0)
        return "-" if not math.isfinite(v) else f"{v:.{digits}f}"

    text = f"{f(estimate.point)} [{f(estimate.low)}, {f(estimate.high)}] {unit}".rstrip()
    # too few samples for any 95% interval: said where the verdict is
    return f"{text} (n={estimate.n}, too few)" if few and estimate.too_few else text


@dataclass
class Row:
    """One line of the table: a figure for upstream and for the patch, and their ratio."""

    metric: str
    upstream: str
    patch: str
    ratio: str = ""
    target: str = ""
    status: Status | None = None


@dataclass
class BenchResult:
    id: str
    title: str
    target: str
    status: Status
    rows: list[Row]
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    wall_s: float = 0.0
    judged: list[Judged] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "target": self.target,
            "status": self.status,
            "wall_s": round(self.wall_s, 3),
            "notes": list(self.notes),
            "targets": [j.to_json() for j in self.judged],
            **self.data,
        }


@dataclass
class BenchReport:
    meta: dict[str, Any]
    results: list[BenchResult]
    wall_s: float = 0.0

    @property
    def missed(self) -> list[str]:
        """Benchmarks with a target whose whole interval is beyond it (``--check`` fails)."""
        return [r.id for r in self.results if r.status == "missed"]

    @property
    def inconclusive(self) -> list[str]:
        """Benchmarks with a target whose interval straddles it: neither met nor missed."""
        return [r.id for r in self.results if r.status == "inconclusive"]

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-ready data (non-finite numbers become null)."""
        doc: dict[str, Any] = _clean(
            {
                **self.meta,
                "wall_s": round(self.wall_s, 3),
                "missed": self.missed,
                "inconclusive": self.inconclusive,
                "benchmarks": {r.id: r.to_json() for r in self.results},
            }
        )
        return doc

    def write_json(self, path: str | os.PathLike[str]) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_json(), f, indent=2, allow_nan=False)
            f.write("\n")

    def render_table(self) -> str:
        header = (
            "metric",
            "upstream",
            # "patched / native" when B1n, B2n (cross_process) follow the in-process figures
            str(self.meta.get("subject_column", self.meta.get("subject", "patch"))),
            "ratio",
            "target",
            "",
        )
        cells = [
            (
                "  " + row.metric,
                row.upstream,
                row.patch,
                row.ratio,
                row.target,
                "" if row.status is None else row.status.upper(),
            )
            for r in self.results
            for row in r.rows
        ]
        widths = [max(len(c[i]) for c in [header, *cells]) for i in range(len(header))]
        out = [_line(header, widths), "-" * (sum(widths) + 2 * (len(widths) - 1))]
        n = 0
        for r in self.results:
            out.append(f"{r.id} {r.title}: {r.status.upper()} ({r.wall_s:.1f} s)")
            for _ in r.rows:
                out.append(_line(cells[n], widths))
                n += 1
        out.append("")
        out.extend(f"{r.id}: {note}" for r in self.results for note in r.notes)
        out.append(f"mode: {self.meta.get('mode_description', '')}")
        out.append(
            f"preset {self.meta.get('preset')}, livekit-agents {self.meta.get('livekit_agents')}, "
            f"livekit-segments {self.meta.get('livekit_segments')}, "
            f"python {self.meta.get('python')}, {self.meta.get('cpu_count')} CPUs, "
            f"wall {self.wall_s:.1f} s"
        )
        out.append(
            "ratios: median of per-pair ratios (or as noted) [95% bootstrap interval]; a target "
            "is met when the whole interval is within it, missed when it is wholly beyond"
        )
        out.append(self.summary())
        return "\n".join(out)

    def summary(self) -> str:
        """One line: every benchmark met, or which missed and which were inconclusive."""
        missed, unsure = self.missed, self.inconclusive
        if not missed and not unsure:
            return "targets: all met"
        parts = []
        if missed:
            parts.append(f"missed: {', '.join(missed)}")
        if unsure:
            parts.append(f"inconclusive: {', '.join(unsure)}")
        return "targets " + "; ".join(parts)


def _line(cells: tuple[str, ...], widths: list[int]) -> str:
    parts = [
        c.ljust(w) if i == 0 or i == len(cells) - 1 else c.rjust(w)
        for i, (c, w) in enumerate(zip(cells, widths, strict=True))
    ]
    return "  ".join(parts).rstrip()


def _clean(value: Any) -> Any:
    """JSON-safe: non-finite floats become null, tuples become lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_clean(v) for v in value]
    return value
