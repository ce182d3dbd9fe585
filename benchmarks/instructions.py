"""B7: B1 and B2 counted in instructions, the figures a busy machine cannot move.

On a shared 2-core machine B1's and B2's CPU-time ratios move by about a percent from run to
run, as much as B1's whole target. An instruction count does not depend on the machine's
load. B7 runs B1's and B2's own measuring code (`install_cost.run`, `segment_cost.run`) once
more, in a worker process under valgrind's callgrind, with `cpu_meter` reading the
instructions the main thread executed instead of its CPU time, and judges the same ratios
against the same targets. Instructions are not time (a cache miss costs none), so B7 stands
beside B1 and B2 and replaces neither.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from livekit_segments._cli import plural

from . import cpu_meter, forms as forms_mod, install_cost, segment_cost, stats
from .forms import Forms
from .install_cost import InstallCostConfig
from .process_setup import FORCE_ENV, forcing_install, quiet_livekit_logs, worker_env
from .report import BenchResult, Judged, Row, Status, combine, fmt_estimate
from .segment_cost import SegmentCostConfig

__all__ = [
    "InstructionsConfig",
    "Unavailable",
    "build_client",
    "callgrind_env",
    "callgrind_prefix",
    "result_json",
    "run",
    "serve",
    "summarize",
    "unavailable",
    "with_client",
]

FIX = "install valgrind (Debian: apt-get install valgrind; it brings valgrind/callgrind.h)"
# the worker's entry point: `-m` would import this module twice (as __main__ and by name)
_ENTRY = "import sys; from benchmarks.instructions import serve; sys.exit(serve(sys.argv[1]))"
# B1 and B2 judged entries B7 repeats, by the name their own results give them
_B1_RATIO = "CPU per reply ratio"
_B2_RATIO = "CPU per segment ratio (slope)"
_B2_FLOOR = "patch cost per segment / handle floor"
_NOTE = (
    "B1's and B2's own measuring code, run again in a worker under valgrind's "
    "callgrind, reading the instructions its main thread executed where B1 and B2 "
    "read its CPU time (cpu_meter); same statistics, intervals and targets; "
    "hash seed 0; B2 without memory points; a handful of rounds, since counts "
    "barely vary"
)


@dataclass(frozen=True)
class InstructionsConfig:
    """B1's and B2's configurations for the counted run (about 40x slower under callgrind;
    counts barely vary, so few rounds suffice). B2 runs without its memory points."""

    install_cost: InstallCostConfig
    segment_cost: SegmentCostConfig


class Unavailable(RuntimeError):
    """valgrind or a C compiler is missing; the message names the fix."""


def build_client(directory: Path) -> Path:
    """Compile `cpu_meter.CLIENT_SOURCE` into ``directory``; the shared library's path."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if shutil.which("valgrind") is None:
        raise Unavailable(f"valgrind is not on PATH: {FIX}")
    if cc is None:
        raise Unavailable(
            "no C compiler (cc or gcc) to build callgrind's client requests; "
            "install one (Debian: apt-get install gcc)"
        )
    source, library = directory / "lkseg_callgrind.c", directory / "lkseg_callgrind.so"
    source.write_text(cpu_meter.CLIENT_SOURCE)
    done = subprocess.run(
        [cc, "-O1", "-shared", "-fPIC", "-o", str(library), str(source)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no output"])[-1]
        raise Unavailable(f"building callgrind's client requests failed ({last}): {FIX}")
    return library


def callgrind_prefix(out: Path, log: Path) -> list[str]:
    """valgrind's command line up to the program it runs, counting instructions thread by
    thread: callgrind dumps its counts to ``out`` and writes its own messages to ``log``."""
    return [
        "valgrind",
        "--tool=callgrind",
        "--separate-threads=yes",  # the main thread's own count, as time.thread_time is
        f"--callgrind-out-file={out}",
        f"--log-file={log}",
    ]


def callgrind_env() -> dict[str, str]:
    """What a process run under `callgrind_prefix` adds to its environment."""
    # one BLAS thread: numpy's pool would only add threads that callgrind serializes
    return {"OPENBLAS_NUM_THREADS": "1"}


async def with_client(
    prefix: str, measure: Callable[[Path, Path], Awaitable[BenchResult]]
) -> BenchResult:
    """``measure(workdir, library)``, with callgrind's client requests built into
    ``library`` in a temporary directory ``workdir`` named after ``prefix``; `unavailable`
    when they cannot be built."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        workdir = Path(tmp)
        try:
            library = build_client(workdir)
        except Unavailable as e:
            return unavailable(str(e))
        return await measure(workdir, library)


def _estimate(doc: dict[str, Any] | None) -> stats.Estimate | None:
    if doc is None:
        return None
    return stats.Estimate(
        doc["point"], doc["low"], doc["high"], doc["n"], doc["statistic"], doc["min_n"]
    )


def result_json(result: BenchResult) -> dict[str, Any]:
    """What `summarize` needs of a B1 or B2 result (it crosses a process boundary)."""
    judged = {
        j.name: {
            "verdict": j.verdict,
            "estimate": None if j.estimate is None else dataclasses.asdict(j.estimate),
        }
        for j in result.judged
    }
    return {"judged": judged, "data": result.data}


def serve(args_json: str) -> int:
    """The worker (under callgrind): run B1 and B2 counting instructions; write their
    results where the parent said."""
    import gc

    args = json.loads(args_json)
    cpu_meter.count_instructions(cpu_meter.CallgrindCounter(Path(args["library"]), args["out"]))
    b1_cfg = InstallCostConfig(**args["install_cost"])
    b2_cfg = SegmentCostConfig(**{**args["segment_cost"], "ns": tuple(args["segment_cost"]["ns"])})

    async def main() -> dict[str, Any]:
        quiet_livekit_logs()
        forms = forms_mod.detect()
        out: dict[str, Any] = {}
        runs: dict[str, Callable[[], Awaitable[BenchResult]]] = {
            "B1": lambda: install_cost.run(b1_cfg, forms),
            "B2": lambda: segment_cost.run(b2_cfg, forms),
        }
        try:
            for name, bench in runs.items():
                gc.collect()
                gc.freeze()  # as run_bench does: what was alive before is not measured
                try:
                    out[name] = result_json(await bench())
                finally:
                    gc.unfreeze()
        finally:
            forms.restore()
        return out

    with forcing_install(os.environ.get(FORCE_ENV) == "1"):
        doc = asyncio.run(main())
    Path(args["result"]).write_text(json.dumps(doc))
    return 0


def _launch(cfg: InstructionsConfig, workdir: Path, library: Path) -> dict[str, Any]:
    result = workdir / "result.json"
    args = {
        "library": str(library),
        "out": str(workdir / "cg"),
        "result": str(result),
        "install_cost": dataclasses.asdict(cfg.install_cost),
        "segment_cost": dataclasses.asdict(cfg.segment_cost),
    }
    command = [
        *callgrind_prefix(workdir / "cg", workdir / "valgrind.log"),
        sys.executable,
        "-c",
        _ENTRY,
        json.dumps(args),
    ]
    # one hash seed: dict layouts, and so lookups, are the same in every run
    env = worker_env(PYTHONHASHSEED="0", **callgrind_env())
    done = subprocess.run(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if done.returncode != 0 or not result.exists():
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
        raise RuntimeError(f"B7's worker under callgrind exited {done.returncode}: {lines[-1]}")
    doc: dict[str, Any] = json.loads(result.read_text())
    return doc


async def run(cfg: InstructionsConfig | None, forms: Forms) -> BenchResult:
    """B7: its worker runs for a few minutes, in a thread of its own (None: not run)."""
    if cfg is None:
        return unavailable("not run in this preset (callgrind needs minutes)")
    if forms.baseline is None:
        return unavailable(
            "needs the runtime patch and upstream in one process: run the bench from the "
            "runtime venv (.venv/bin/python)"
        )

    async def measure(workdir: Path, library: Path) -> BenchResult:
        doc = await asyncio.to_thread(_launch, cfg, workdir, library)
        return summarize(cfg, forms, doc)

    return await with_client("lkseg-b7-", measure)


def unavailable(reason: str) -> BenchResult:
    """B7 not run, and why (``reason`` names the fix where there is one)."""
    return BenchResult(
        id="B7",
        title="B1 and B2 in instructions",
        target="as B1 and B2",
        status="n/a",
        rows=[Row(f"not run: {reason}", "", "", "", "", "n/a")],
        data={"reason": reason},
        notes=[f"not run: {reason}"],
    )


def summarize(
    cfg: InstructionsConfig,
    forms: Forms,
    doc: dict[str, Any],
    *,
    notes: Sequence[str] = (_NOTE,),
) -> BenchResult:
    """B7's result from the worker's B1 and B2 results (counts in place of seconds);
    ``notes`` say how they were counted (B7n's workers say it their own way)."""
    base, subject = forms.baseline, forms.subject
    assert base is not None
    b1, b2 = doc["B1"], doc["B2"]

    def judged(part: dict[str, Any], name: str, target: str) -> Judged:
        entry = part["judged"][name]
        status: Status = entry["verdict"]
        return Judged(f"instructions: {name}", target, status, _estimate(entry["estimate"]))

    def count(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f}"

    # B1 reads milliseconds and B2 microseconds where a count of instructions stands for
    # seconds: scaled back once, for the rows and the data alike
    per_reply = {k: v / 1e3 for k, v in b1["data"]["cpu_per_reply_ms"].items()}
    per_segment = {k: v / 1e6 for k, v in b2["data"]["cpu_per_segment_us"].items()}
    floors = [x / 1e6 for x in b2["data"]["handle_floor_us"]]
    overhead_us = b2["data"].get("overhead_per_segment_us")
    overhead = None if overhead_us is None else overhead_us / 1e6

    def ratio_row(label: str, table: dict[str, float], j: Judged) -> Row:
        return Row(
            label,
            count(table.get(base.value)),
            count(table.get(subject.value)),
            fmt_estimate(j.estimate),
            j.target,
            j.verdict,
        )

    j1 = judged(b1, _B1_RATIO, f"<= {install_cost.TARGET_RATIO}")
    j2 = judged(b2, _B2_RATIO, f"<= {segment_cost.TARGET_RATIO}")
    j3 = judged(b2, _B2_FLOOR, f"<= {segment_cost.TARGET_FLOOR_MULTIPLE}")
    rounds = cfg.install_cost.batches
    ns = cfg.segment_cost.ns
    rows = [
        ratio_row(
            f"B1: instructions per reply, {plural(rounds, 'round')} x "
            f"{cfg.install_cost.replies_per_batch} per form",
            per_reply,
            j1,
        ),
        ratio_row(
            f"B2: instructions per segment (slope, N={ns[0]}..{ns[-1]}, "
            f"{plural(cfg.segment_cost.repeats, 'repetition')})",
            per_segment,
            j2,
        ),
        Row(
            "B2: handle floor per segment",
            count(stats.median(floors) if floors else None),
            "",
            "",
        ),
        Row(
            "B2: patch cost per segment / floor",
            "",
            count(overhead),
            fmt_estimate(j3.estimate),
            j3.target,
            j3.verdict,
        ),
    ]
    items = [j1, j2, j3]
    return BenchResult(
        id="B7",
        title="B1 and B2 in instructions",
        target="B1, B2's slope and B2's floor multiple, as for CPU time",
        status=combine([j.verdict for j in items]),
        rows=rows,
        judged=items,
        notes=list(notes),
        data={
            "install_cost": dataclasses.asdict(cfg.install_cost),
            "segment_cost": dataclasses.asdict(cfg.segment_cost),
            "instructions_per_reply": per_reply,
            "instructions_per_segment": per_segment,
            "handle_floor_instructions": floors,
            "repetition_overhead_instructions": [
                x / 1e6 for x in b2["data"]["repetition_overheads_us"]
            ],
            "pair_ratios": b1["data"]["pair_ratios"],
            "repetition_slope_ratios": b2["data"]["repetition_slope_ratios"],
        },
    )
