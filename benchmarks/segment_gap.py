"""B4, silence between segments, played through livekit's native `rtc.AudioSource` clock.

The gap is from the last sample of segment k leaving the source (the moment its queue runs
dry) to the first frame of segment k+1 entering it. The TTS is zero-latency, so the next
segment is always ready in time: the gap is what the pipeline adds between segments. It has
two parts: the source's release lateness (its ``wait_for_playout()`` is a loop timer, with
the loop's millisecond resolution) and the pipeline's own time from that release to the next
frame, which is the part the patch can change.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from livekit_segments._cli import plural

from . import stats
from .fakes import AudioSourceSink, ScriptedAgent, close_session, reply, silence, start_session
from .forms import Form, Forms, activate
from .report import BenchResult, Judged, Row, fmt, fmt_estimate, fmt_ratio
from .segment_cost import script

__all__ = ["SegmentGapConfig", "run"]

TARGET_ADDED_MS = 1.0


@dataclass(frozen=True)
class SegmentGapConfig:
    segments_per_reply: int
    replies: int  # per form, interleaved
    frame_ms: int = 10
    frames_per_segment: int = 12  # 120 ms of audio per segment
    queue_size_ms: int = 200  # as RoomIO's audio output


@dataclass
class _Gaps:
    total: list[float] = field(default_factory=list)  # dry -> next frame in
    late: list[float] = field(default_factory=list)  # dry -> wait_for_playout() returned
    pipeline: list[float] = field(default_factory=list)  # returned -> next frame in


async def _reply_gaps(form: Form, cfg: SegmentGapConfig, into: _Gaps) -> None:
    """Add the gaps between consecutive segments of one reply to ``into``."""
    activate(form)
    sink = AudioSourceSink(queue_size_ms=cfg.queue_size_ms)
    frames = [silence(cfg.frame_ms)] * cfg.frames_per_segment
    session = await start_session(
        ScriptedAgent(script(cfg.segments_per_reply, form), frames=frames), sink
    )
    try:
        await reply(session)
    finally:
        await close_session(session, sink)
    segs = sink.segments
    if len(segs) != cfg.segments_per_reply:
        raise RuntimeError(f"expected {plural(cfg.segments_per_reply, 'segment')}, saw {len(segs)}")
    for prev, nxt in zip(segs, segs[1:], strict=False):
        if prev.drained_at is None or prev.released_at is None:
            raise RuntimeError("a segment was not played out before the next one started")
        # not below 0: the next segment cannot enter before the previous one's playout ended
        into.total.append(max(0.0, nxt.first_in - prev.drained_at))
        into.late.append(prev.released_at - prev.drained_at)
        into.pipeline.append(nxt.first_in - prev.released_at)


async def run(cfg: SegmentGapConfig, forms: Forms) -> BenchResult:
    gaps = {f: _Gaps() for f in forms.all}
    for i in range(cfg.replies):
        for form in forms.order(i):
            await _reply_gaps(form, cfg, gaps[form])

    subject, base = forms.subject, forms.baseline

    def ms(values: list[float], q: float = 50) -> float:
        return stats.percentile(values, q) * 1e3

    med = {f: ms(g.total) for f, g in gaps.items()}
    p90 = {f: ms(g.total, 90) for f, g in gaps.items()}
    late = {f: ms(g.late) for f, g in gaps.items()}
    pipe = {f: ms(g.pipeline) for f, g in gaps.items()}
    # the gaps of the two forms are not paired one to one: each form's gaps are resampled
    # by themselves for the interval of the difference of medians
    estimate = (
        stats.median_difference_estimate(
            [x * 1e3 for x in gaps[subject].total],
            [x * 1e3 for x in gaps[base].total],
            "difference of median gaps (ms)",
        )
        if base
        else None
    )
    added = None if estimate is None else estimate.point
    status = stats.verdict(estimate, TARGET_ADDED_MS, strict=True)

    def row(metric: str, values: dict[Form, float]) -> Row:
        return Row(
            metric,
            fmt(values[base], "ms") if base else "-",
            fmt(values[subject], "ms"),
            fmt_ratio(stats.ratio(values[subject], values[base]) if base else None),
        )

    rows = [
        row(f"median gap ({len(gaps[subject].total)} gaps)", med),
        Row(
            "added by the patch to the median gap",
            "",
            "",
            fmt_estimate(estimate, unit="ms"),
            f"< {TARGET_ADDED_MS} ms",
            status,
        ),
        row("p90 gap", p90),
        row("  of the median: source release lateness", late),
        row("  of the median: pipeline, release to next frame", pipe),
    ]
    seg_ms = cfg.frame_ms * cfg.frames_per_segment
    return BenchResult(
        id="B4",
        title="silence between segments",
        target=f"the patch adds < {TARGET_ADDED_MS} ms to the median gap",
        status=status,
        rows=rows,
        judged=[Judged("added to the median gap", f"< {TARGET_ADDED_MS} ms", status, estimate)],
        notes=[
            f"rtc.AudioSource(queue_size_ms={cfg.queue_size_ms}) sink, {seg_ms} ms segments, "
            f"{cfg.segments_per_reply} per reply, "
            f"{plural(cfg.replies, 'reply', 'replies')} per form, interleaved; "
            f"gap = segment k+1's first frame into the source - the source running dry after "
            f"segment k; it splits into the source's release lateness (a loop timer) and the "
            f"pipeline's time from that release to the next frame"
        ],
        data={
            "segment_ms": seg_ms,
            "gaps": {f.value: len(g.total) for f, g in gaps.items()},
            "median_gap_ms": {f.value: v for f, v in med.items()},
            "p90_gap_ms": {f.value: v for f, v in p90.items()},
            "added_ms": added,
            "ratio": stats.ratio(med[subject], med[base]) if base else None,
            "release_lateness_ms": {f.value: v for f, v in late.items()},
            "pipeline_ms": {f.value: v for f, v in pipe.items()},
        },
    )
