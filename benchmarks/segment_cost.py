"""B2, the cost per segment: one reply with N segments, `SegmentBreak` versus `FlushSentinel`."""

from __future__ import annotations

import asyncio
import gc
import math
import time
import tracemalloc
from collections.abc import AsyncIterable, AsyncIterator, Awaitable
from dataclasses import dataclass
from typing import Protocol

from livekit import rtc
from livekit.agents import AgentSession, ModelSettings
from livekit.agents.voice.events import SpeechCreatedEvent
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments._cli import plural

from . import cpu_meter, stats
from .fakes import (
    ScriptedAgent,
    ScriptItem,
    ZeroLatencySink,
    close_session,
    reply,
    silence,
    start_session,
)
from .forms import Form, Forms, activate, break_factory
from .report import (
    BenchResult,
    Judged,
    Row,
    Status,
    combine,
    fmt,
    fmt_estimate,
    fmt_ratio,
    judge,
)

__all__ = ["Measure", "SegmentCostConfig", "handle_floor", "run", "script"]

TARGET_RATIO = 1.15
# the patch's own cost per segment, in units of what a new announced SpeechHandle costs
TARGET_FLOOR_MULTIPLE = 1.5
# y ~ N**k between the two largest N: 1 is linear; fixed per-reply costs pull it below 1
TARGET_EXPONENT = 1.10


@dataclass(frozen=True)
class SegmentCostConfig:
    ns: tuple[int, ...]
    repeats: int  # timed replies per (N, form); the median is reported
    memory: bool = True  # one more reply per (N, form) under tracemalloc
    memory_max_n: int | None = None  # tracemalloc slows replies ~3x: skip larger N
    floor_handles: int = 200  # handles per floor measurement (one per repetition)
    # an unmeasured reply of this many segments after each switch of forms (not where
    # activating changes nothing, as in B2n's workers): installing or uninstalling
    # invalidates CPython's specialized bytecode for what it touches, and CPython 3.11
    # specializes an instruction again only after 53 misses, so for up to 53 segments the
    # reply after a switch runs slower code than a process that installs once ever does
    settle_segments: int = 64


def script(n: int, form: Form) -> list[ScriptItem]:
    """A reply of ``n`` segments: text, then (break, text) ``n - 1`` times."""
    brk = break_factory(form)
    items: list[ScriptItem] = ["Segment 0."]
    for i in range(1, n):
        items += [brk(), f"Segment {i}."]
    return items


class _HandlePerSegmentAgent(ScriptedAgent):
    """Upstream's reply, plus one new announced `SpeechHandle` per segment (made as the
    segment's synthesis starts): the handle floor, paid inside a real reply."""

    def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings
    ) -> AsyncIterator[rtc.AudioFrame]:
        _one_handle(self.session)
        return super().tts_node(text, model_settings)


async def _measure(
    n: int, form: Form, *, memory: bool, handles: bool = False
) -> tuple[float, float]:
    """(wall s, thread CPU s) of one reply; with ``memory``, (peak bytes, 0) instead.

    ``handles``: the reply also makes one announced `SpeechHandle` per segment (the floor).
    """
    activate(form)
    if memory:
        tracemalloc.start()
    sink = ZeroLatencySink()
    agent_cls = _HandlePerSegmentAgent if handles else ScriptedAgent
    try:
        session = await start_session(agent_cls(script(n, form), frames=[silence(10)]), sink)
        try:
            gc.collect()
            if memory:
                tracemalloc.reset_peak()
                base = tracemalloc.get_traced_memory()[0]
            # as timeit does: a collection landing in one form's reply and not the other's is
            # noise; what the patch keeps alive (and so costs the collector) is measured in B5
            if not memory:
                gc.disable()
            try:
                t0, c0 = time.perf_counter(), cpu_meter.cpu()
                await reply(session)
                wall, cpu = time.perf_counter() - t0, cpu_meter.cpu() - c0
            finally:
                gc.enable()
            if memory:
                return float(tracemalloc.get_traced_memory()[1] - base), 0.0
        finally:
            await close_session(session, sink)
    finally:
        if memory:
            tracemalloc.stop()
    if sink.count != n:
        raise RuntimeError(f"expected {plural(n, 'segment')} at the sink, saw {sink.count}")
    return wall, cpu


def _one_handle(session: AgentSession[None]) -> SpeechHandle:
    """What any new, announced segment handle costs at least: create, schedule, announce
    through ``speech_created`` (event validated, recorded and emitted), finish."""
    handle = SpeechHandle.create()
    handle._mark_scheduled()
    session.emit(
        "speech_created",
        SpeechCreatedEvent(speech_handle=handle, user_initiated=False, source="generate_reply"),
    )
    handle._mark_done()
    return handle


async def handle_floor(session: AgentSession[None], count: int) -> tuple[float, float]:
    """(thread CPU s, retained bytes) per handle for `count` handles made by `_one_handle`.

    CPU includes the loop turns that run the handles' done callbacks. Bytes are what stays
    allocated while the handles and their recorded events are kept, as a reply keeps them.
    """
    gc.collect()
    gc.disable()
    try:
        c0 = cpu_meter.cpu()
        for _ in range(count):
            _one_handle(session)
        for _ in range(3):  # the done callbacks _mark_done scheduled
            await asyncio.sleep(0)
        cpu = (cpu_meter.cpu() - c0) / count
    finally:
        gc.enable()
    tracemalloc.start()
    try:
        gc.collect()
        base = tracemalloc.get_traced_memory()[0]
        kept = [_one_handle(session) for _ in range(count)]
        for _ in range(3):
            await asyncio.sleep(0)
        gc.collect()
        retained = (tracemalloc.get_traced_memory()[0] - base) / count
    finally:
        tracemalloc.stop()
    del kept
    return cpu, retained


async def _measure_floor(count: int) -> tuple[float, float]:
    sink = ZeroLatencySink()
    session = await start_session(ScriptedAgent(["Hello."], frames=[silence(10)]), sink)
    try:
        await reply(session)  # a warm session, as the replies measure
        return await handle_floor(session, count)
    finally:
        await close_session(session, sink)


def _span(ns: list[int]) -> str:
    return f"N={ns[-2]}..{ns[-1]}" if len(ns) >= 2 else "-"


class Measure(Protocol):
    """What `run` times one reply with: `_measure` in this process, or a worker's."""

    def __call__(
        self, n: int, form: Form, *, memory: bool, handles: bool = False
    ) -> Awaitable[tuple[float, float]]: ...


async def run(cfg: SegmentCostConfig, forms: Forms, measure: Measure | None = None) -> BenchResult:
    measure = _measure if measure is None else measure  # looked up late: tests replace it
    ns = list(cfg.ns)
    mem_ns = [n for n in ns if cfg.memory and (cfg.memory_max_n is None or n <= cfg.memory_max_n)]
    wall: dict[tuple[int, Form], list[float]] = {}
    cpu: dict[tuple[int, Form], list[float]] = {}
    peak: dict[tuple[int, Form], float] = {}
    floor_cpu: list[float] = []  # a handle alone, in a tight loop
    floor_mem = math.nan
    # upstream's reply with one handle per segment added: the floor inside a reply
    with_handles: dict[int, list[float]] = {}

    async def switch_to(form: Form) -> None:
        # the baseline's settling reply makes handles too: the floor's code settles with it
        if activate(form) and cfg.settle_segments:
            handles = form is forms.baseline
            await measure(cfg.settle_segments, form, memory=False, handles=handles)

    for rep in range(cfg.repeats):
        # one form at a time (a switch per form, not per N), the order alternating
        for form in forms.order(rep):
            await switch_to(form)
            for n in ns:
                w, c = await measure(n, form, memory=False)
                wall.setdefault((n, form), []).append(w)
                cpu.setdefault((n, form), []).append(c)
                if form is forms.baseline:
                    c = (await measure(n, form, memory=False, handles=True))[1]
                    with_handles.setdefault(n, []).append(c)
        # the floor, measured with the baseline live (upstream's handle, nothing patched)
        await switch_to(forms.baseline or forms.subject)
        f_cpu, floor_mem = await _measure_floor(cfg.floor_handles)
        floor_cpu.append(f_cpu)
    for i, n in enumerate(mem_ns):
        for form in forms.order(i):
            peak[(n, form)] = (await measure(n, form, memory=True))[0]

    cpu_med = {k: stats.median(v) for k, v in cpu.items()}
    wall_med = {k: stats.median(v) for k, v in wall.items()}
    subject, base = forms.subject, forms.baseline

    def per_segment(values: dict[tuple[int, Form], float], at: list[int], form: Form) -> float:
        return stats.linear_fit([float(n) for n in at], [values[(n, form)] for n in at])[0]

    def exponent(values: dict[tuple[int, Form], float], at: list[int]) -> float:
        if len(at) < 2:
            return math.nan
        a, b = at[-2], at[-1]
        return stats.growth_exponent(a, values[(a, subject)], b, values[(b, subject)])

    seg_cpu = {f: per_segment(cpu_med, ns, f) for f in forms.all}
    seg_mem = {f: per_segment(peak, mem_ns, f) for f in forms.all} if mem_ns else {}
    mem_ratio = stats.ratio(seg_mem[subject], seg_mem[base]) if base and mem_ns else None
    # tracemalloc counts bytes allocated, which the machine's load does not change: one reply
    # per point is exact enough to judge without an interval
    mem_exp = exponent(peak, mem_ns)

    # CPU is judged per repetition: repetition r ran every N under both forms back to back, so
    # its two slopes (and the subject's growth between the two largest N) form one pair
    reps = range(cfg.repeats)
    rep_cpu = [{k: v[r] for k, v in cpu.items()} for r in reps]
    slope_pairs = (
        [stats.ratio(per_segment(c, ns, subject), per_segment(c, ns, base)) for c in rep_cpu]
        if base
        else []
    )
    ratios = [x for x in slope_pairs if x is not None]
    seg_est = (
        stats.median_estimate(ratios, f"median of {len(ratios)} per-repetition slope ratios")
        if base
        else None
    )

    # the patch's own cost per segment (its slope above upstream's), in handle floors (what
    # one announced handle per segment adds to upstream's slope), both per repetition
    def handle_slope(r: int) -> float:
        return stats.linear_fit([float(n) for n in ns], [with_handles[n][r] for n in ns])[0]

    floor_in_reply = (
        [handle_slope(r) - per_segment(rep_cpu[r], ns, base) for r in reps] if base else []
    )
    overheads = (
        [per_segment(c, ns, subject) - per_segment(c, ns, base) for c in rep_cpu] if base else []
    )
    # a ratio of medians, not a median of per-repetition ratios: one repetition's floor is a
    # difference of two noisy slopes and lands near 0 (or below) on a busy machine, where its
    # ratio explodes; None when the median floor is not above 0 (nothing to judge in)
    floor_est = (
        stats.ratio_of_medians_estimate(
            overheads,
            floor_in_reply,
            f"median overhead / median floor over {plural(len(overheads), 'repetition')}, "
            f"resampled together",
        )
        if base
        else None
    )
    floor_status: Status = (
        stats.verdict(floor_est, TARGET_FLOOR_MULTIPLE)
        if floor_est is not None
        else ("inconclusive" if base else "n/a")
    )
    mem_over = seg_mem[subject] - seg_mem[base] if base and mem_ns else None
    mem_floor_status = judge(mem_over <= floor_mem) if mem_over is not None and cfg.memory else None
    time_exps = [exponent(c, ns) for c in rep_cpu]
    exps = [x for x in time_exps if math.isfinite(x)]
    exp_est = (
        stats.median_estimate(exps, f"median of {len(exps)} per-repetition exponents")
        if len(ns) >= 2
        else None
    )
    time_exp = exp_est.point if exp_est is not None else math.nan
    ratio_status = stats.verdict(seg_est, TARGET_RATIO)
    time_status = stats.verdict(exp_est, TARGET_EXPONENT)
    # NaN (too few points) compares False: not evidence of superlinear growth
    mem_status = judge(not mem_exp > TARGET_EXPONENT)
    judged = [
        Judged("CPU per segment ratio (slope)", f"<= {TARGET_RATIO}", ratio_status, seg_est),
        Judged("growth exponent, CPU time", f"<= {TARGET_EXPONENT}", time_status, exp_est),
        Judged(
            "growth exponent, memory", f"<= {TARGET_EXPONENT}", mem_status, value=f"{mem_exp:.2f}"
        ),
    ]
    if base:
        judged.insert(
            1,
            Judged(
                "patch cost per segment / handle floor",
                f"<= {TARGET_FLOOR_MULTIPLE}",
                floor_status,
                floor_est,
                value="" if floor_est is not None else "the median floor is not above 0",
            ),
        )
    if mem_floor_status is not None and mem_over is not None:
        judged.insert(
            2,
            Judged(
                "memory per segment above FlushSentinel",
                f"<= floor {floor_mem / 1024:.2f} KiB",
                mem_floor_status,
                value=f"{mem_over / 1024:.2f} KiB",
            ),
        )
    status = combine([j.verdict for j in judged])

    def row(metric: str, values: dict[tuple[int, Form], float], n: int, unit: str) -> Row:
        scale = 1e3 if unit == "ms" else 1 / 1024

        def cell(form: Form | None) -> str:
            return "-" if form is None else fmt(values[(n, form)] * scale, unit)

        r = stats.ratio(values[(n, subject)], values[(n, base)]) if base else None
        return Row(metric, cell(base), cell(subject), fmt_ratio(r))

    rows = [row(f"N={n}: CPU time", cpu_med, n, "ms") for n in ns]
    rows += [row(f"N={n}: peak memory", peak, n, "KiB") for n in mem_ns]
    rows.append(
        Row(
            "CPU per segment (least-squares slope)",
            fmt(seg_cpu[base] * 1e6, "us") if base else "-",
            fmt(seg_cpu[subject] * 1e6, "us"),
            fmt_estimate(seg_est),
            f"<= {TARGET_RATIO}",
            ratio_status,
        )
    )
    floor_med = stats.median(floor_cpu)
    rows.append(
        Row(
            "a SpeechHandle created, announced, finished, alone (tight loop)",
            fmt(floor_med * 1e6, "us"),
            "",
            "",
        )
    )
    if base:
        rows.append(
            Row(
                "handle floor: one such handle per segment added to upstream's reply (slope)",
                fmt(stats.median(floor_in_reply) * 1e6, "us"),
                "",
                "",
            )
        )
        rows.append(
            Row(
                "patch cost per segment (slope above upstream) / floor",
                "",
                fmt(stats.median(overheads) * 1e6, "us"),
                fmt_estimate(floor_est),
                f"<= {TARGET_FLOOR_MULTIPLE}",
                floor_status,
            )
        )
    if mem_ns:
        rows.append(
            Row(
                "memory per segment (least-squares slope)",
                fmt(seg_mem[base] / 1024, "KiB") if base else "-",
                fmt(seg_mem[subject] / 1024, "KiB"),
                fmt_ratio(mem_ratio),
            )
        )
        if mem_over is not None and mem_floor_status is not None:
            rows.append(
                Row(
                    "memory per segment above FlushSentinel, against one retained handle "
                    "and its event",
                    fmt(floor_mem / 1024, "KiB"),
                    fmt(mem_over / 1024, "KiB"),
                    "",
                    "<= floor",
                    mem_floor_status,
                )
            )
    rows.append(
        Row(
            f"growth exponent, CPU time ({_span(ns)})",
            "",
            "",
            fmt_estimate(exp_est, digits=2),
            f"<= {TARGET_EXPONENT}",
            time_status,
        )
    )
    rows.append(
        Row(
            f"growth exponent, memory ({_span(mem_ns)})",
            "",
            "",
            f"{mem_exp:.2f}",
            f"<= {TARGET_EXPONENT}",
            mem_status,
        )
    )

    def table(
        values: dict[tuple[int, Form], float], at: list[int], scale: float
    ) -> dict[str, dict[str, float]]:
        return {f.value: {str(n): values[(n, f)] * scale for n in at} for f in forms.all}

    return BenchResult(
        id="B2",
        title="cost per segment",
        target=(
            f"linear growth (exponent <= {TARGET_EXPONENT}), per-segment CPU ratio "
            f"<= {TARGET_RATIO}, patch cost per segment <= {TARGET_FLOOR_MULTIPLE}x the "
            f"handle floor"
        ),
        status=status,
        rows=rows,
        judged=judged,
        notes=[
            f"one reply of N segments per fresh session, zero-latency TTS and sink; CPU is "
            f"the median of {plural(cfg.repeats, 'reply', 'replies')} (thread time, GC paused); "
            "memory is the "
            f"tracemalloc peak above the pre-reply heap, from one more reply under tracemalloc; "
            f"the slope ratio and the CPU growth exponent (patch form, between the two largest "
            f"N) are medians over repetitions, each repetition running every N under one form "
            f"and then the other, in alternating order; after each switch of forms an "
            f"unmeasured reply of {plural(cfg.settle_segments, 'segment')} lets CPython "
            f"specialize again what the switch invalidated",
            "handle floor: what a new announced SpeechHandle costs (create, "
            "_mark_scheduled, a validated SpeechCreatedEvent through the session's emit, "
            "_mark_done, and the loop turns of its done callbacks), paid inside a real "
            "reply: upstream's reply of N segments run once more per repetition with one "
            "such handle made per segment, its slope minus upstream's; the patch's cost per "
            "segment is its slope minus upstream's; both are taken per repetition, and the "
            "judged multiple is the median cost over the median floor (a repetition's own "
            "floor can land near 0 on a busy machine), its interval resampling repetitions; "
            f"'alone' is the same handle in a tight loop ({cfg.floor_handles} handles in a "
            "warm session, caches hot), for reference; the memory floor is what one such "
            "handle and its recorded event keep allocated",
        ],
        data={
            "ns": ns,
            "memory_ns": mem_ns,
            "repeats": cfg.repeats,
            "cpu_ms": table(cpu_med, ns, 1e3),
            "wall_ms": table(wall_med, ns, 1e3),
            "peak_kib": table(peak, mem_ns, 1 / 1024),
            "cpu_per_segment_us": {f.value: v * 1e6 for f, v in seg_cpu.items()},
            "per_segment_ratio": None if seg_est is None else seg_est.point,
            "slope_of_medians_ratio": stats.ratio(seg_cpu[subject], seg_cpu[base])
            if base
            else None,
            "repetition_slope_ratios": slope_pairs,
            "repetition_time_exponents": time_exps,
            "memory_per_segment_kib": {f.value: v / 1024 for f, v in seg_mem.items()},
            "memory_per_segment_ratio": mem_ratio,
            "growth_exponent": {"time": time_exp, "memory": mem_exp},
            "handle_alone_us": [x * 1e6 for x in floor_cpu],
            "handle_floor_us": [x * 1e6 for x in floor_in_reply],
            "handle_floor_kib": floor_mem / 1024,
            # the judged numerator: the median of per-repetition overheads
            "overhead_per_segment_us": stats.median(overheads) * 1e6 if overheads else None,
            # the difference of the forms' slopes fitted to per-N medians (across repetitions)
            "slope_of_medians_difference_us": (seg_cpu[subject] - seg_cpu[base]) * 1e6
            if base
            else None,
            "repetition_overheads_us": [x * 1e6 for x in overheads],
            "memory_above_flush_kib": None if mem_over is None else mem_over / 1024,
        },
    )
