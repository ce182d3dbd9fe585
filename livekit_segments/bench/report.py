"""Results of the benchmarks: the printed table and the JSON document."""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = [
    "BenchReport",
    "BenchResult",
    "Row",
    "Status",
    "fmt",
    "fmt_ratio",
    "judge",
]

Status = Literal["pass", "miss", "n/a"]


def judge(ok: bool | None) -> Status:
    """``pass`` or ``miss``; ``n/a`` when the target cannot be evaluated in this mode."""
    if ok is None:
        return "n/a"
    return "pass" if ok else "miss"


def fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    """A number with ``digits`` significant digits and its unit, or ``-`` when missing."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    text = f"{value:.{digits}g}" if abs(value) < 10**digits else f"{value:.0f}"
    return f"{text} {unit}".rstrip()


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


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

    def to_json(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "target": self.target,
            "status": self.status,
            "wall_s": round(self.wall_s, 3),
            "notes": list(self.notes),
            **self.data,
        }


@dataclass
class BenchReport:
    meta: dict[str, Any]
    results: list[BenchResult]
    wall_s: float = 0.0

    @property
    def missed(self) -> list[str]:
        return [r.id for r in self.results if r.status == "miss"]

    def to_json(self) -> dict[str, Any]:
        """The whole report as JSON-ready data (non-finite numbers become null)."""
        doc: dict[str, Any] = _clean(
            {
                **self.meta,
                "wall_s": round(self.wall_s, 3),
                "missed": self.missed,
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
            str(self.meta.get("subject", "patch")),
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
        missed = self.missed
        out.append("targets: all met" if not missed else f"targets missed: {', '.join(missed)}")
        return "\n".join(out)


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
