"""Checks a recorded turn: one row per response, its signals, and what the audio says."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

import livekit_segments
from livekit.agents.voice.speech_handle import SpeechHandle

from .._cli import plural
from .agent import Response
from .realtime_sink import SinkSegment
from .turn import HandleRecord, TurnResult

__all__ = ["MAX_ONSET_LAG", "ONSET_THRESHOLD", "Report", "SegmentRow", "analyse"]

ONSET_THRESHOLD = 328
"""A sample above this magnitude (-40 dBFS) is sound: the onset is the first one."""
MAX_ONSET_LAG = 0.25
"""The most a response's audible onset may trail its ``playout_started`` (TTS lead-in)."""
_TAIL = 0.25  # seconds of silence kept after the last audio, so the end is visible
_STOP_TOLERANCE = 0.1  # how long after an interrupt the source may still be playing


@dataclass
class SegmentRow:
    """One response of the script, with its handle's signals (seconds from the turn start)."""

    position: int
    response: Response
    handle: SpeechHandle | None
    speech_created: float | None = None
    playout_started: float | None = None
    """None when it did not resolve; see `playout_state`."""
    playout_state: str = "no handle"
    """``"resolved"``, ``"never played"``, ``"pending"``, ``"cancelled"`` or ``"no handle"``."""
    sink_started: float | None = None
    """When the sink started playing the segment's first frame."""
    sink_ended: float | None = None
    onset: float | None = None
    """First sample above `ONSET_THRESHOLD` in the recording, from the segment's start."""
    status: str = "no handle"

    @property
    def onset_lag(self) -> float | None:
        """How long after ``playout_started`` the response becomes audible."""
        if self.onset is None or self.playout_started is None:
            return None
        return self.onset - self.playout_started


@dataclass
class Report:
    """The rows, what is wrong (if anything), and the audio of the whole turn."""

    rows: list[SegmentRow]
    problems: list[str]
    notes: list[str]
    audio: npt.NDArray[np.int16]
    """The turn as heard, from its start (mono 16-bit)."""
    sample_rate: int
    interrupted: SegmentRow | None = None
    """The row of the handle that was interrupted, if one was."""
    interrupt_at: float | None = None
    """When the interrupt ran, from the turn start."""
    audio_stopped_at: float | None = None
    """When the last audio stopped, from the turn start (interrupted turns only)."""

    @property
    def ok(self) -> bool:
        """True when every signal is present and consistent."""
        return not self.problems


def analyse(result: TurnResult) -> Report:
    """Build the per-response rows of ``result`` and check every signal against the sink."""
    t0 = result.started_at
    sink = result.sink
    rec = sink.recording
    audio_end = max(rec.end or t0, result.interrupted_at or t0) + _TAIL
    audio = np.frombuffer(rec.render(t0, audio_end), dtype="<i2").astype(np.int16)
    report = Report(
        rows=[], problems=list(result.errors), notes=[], audio=audio, sample_rate=rec.sample_rate
    )
    problems = report.problems
    handles, responses = result.handles, result.responses
    turn_interrupted = bool(handles) and handles[0].handle.interrupted

    # the sink: one playback_finished per captured segment, one segment per response
    if sink.finished_events != len(sink.segments):
        problems.append(
            f"sink: {plural(len(sink.segments), 'segment')} captured but "
            f"{plural(sink.finished_events, 'playback_finished event')}"
        )
    if len(sink.segments) > len(responses):
        problems.append(
            f"sink: {plural(len(sink.segments), 'segment')} for "
            f"{plural(len(responses), 'response')}"
        )
    # the handles: one per response, fewer only when the turn was cut short
    if len(handles) > len(responses) or (not turn_interrupted and len(handles) < len(responses)):
        problems.append(
            f"{plural(len(handles), 'handle')} for {plural(len(responses), 'response')}"
        )

    for k, response in enumerate(responses):
        row = SegmentRow(position=k, response=response, handle=None)
        report.rows.append(row)
        if k < len(handles):
            _check_handle(row, handles[k], result, report, is_last=k == len(handles) - 1)
        else:
            row.status = "never opened" if turn_interrupted else "missing"

    resolved = [r for r in report.rows if r.playout_started is not None]
    for a, b in zip(resolved, resolved[1:], strict=False):
        assert a.playout_started is not None and b.playout_started is not None
        if not a.playout_started < b.playout_started:
            problems.append(f"segment {b.position}: playout_started does not increase")

    if result.interrupted_at is not None:
        report.interrupt_at = result.interrupted_at - t0
        _check_interrupt(result, report, turn_interrupted)
    elif result.interrupt_after is not None:
        report.notes.append(
            f"interrupt at {result.interrupt_after * 1000:.0f} ms: not run, the turn had ended "
            f"at {(result.ended_at - t0) * 1000:.0f} ms"
        )
    return report


def _check_handle(
    row: SegmentRow, record: HandleRecord, result: TurnResult, report: Report, *, is_last: bool
) -> None:
    """Fill ``row`` from its handle and its sink segment; add what is wrong to ``report``."""
    t0 = result.started_at
    k, response, handle = row.position, row.response, record.handle
    sink = result.sink
    problems = report.problems
    label = f"segment {k} ({response.id})"
    row.handle = handle
    row.speech_created = record.created_at - t0

    index = livekit_segments.segment_index(handle)
    if index != k:
        problems.append(f"{label}: handle has segment_index {index}")
    brk = livekit_segments.segment_break(handle)
    # a turn interrupted before its first segment was forwarded never saw its label
    unlabelled_ok = k == 0 and handle.interrupted and not sink.segments
    if (brk is None and not unlabelled_ok) or (
        brk is not None and (brk.id != response.id or brk.userdata is not response)
    ):
        problems.append(f"{label}: handle has segment_break {brk!r}")
    if not handle.done():
        problems.append(f"{label}: handle still pending after the turn")

    seg = sink.segments[k] if k < len(sink.segments) else None
    played = seg is not None and seg.started_at is not None
    if seg is not None:
        row.sink_started = None if seg.started_at is None else seg.started_at - t0
        row.sink_ended = None if seg.ended_at is None else seg.ended_at - t0
        if seg.underruns:
            report.notes.append(
                f"{label}: the source ran dry {seg.underruns} time(s) mid-segment "
                f"(audible gaps: frames arrived late)"
            )

    # playout_started: resolved with exactly the sink's timestamp, or None if unplayed
    fut: asyncio.Future[float | None] = livekit_segments.playout_started(handle)
    started = fut.result() if fut.done() and not fut.cancelled() else None
    if not fut.done():
        row.playout_state = "pending"
        problems.append(f"{label}: playout_started still pending")
    elif fut.cancelled():
        row.playout_state = "cancelled"
        problems.append(f"{label}: playout_started was cancelled (it never should be)")
    elif started is None:
        row.playout_state = "never played"
        if played:
            problems.append(f"{label}: playout_started says never played, but the sink played it")
    else:
        row.playout_state = "resolved"
        row.playout_started = started - t0
        if seg is None or seg.started_at is None:
            problems.append(f"{label}: playout_started resolved but the sink never played it")
        elif started != seg.started_at:
            problems.append(f"{label}: playout_started {started!r} != sink {seg.started_at!r}")
        if record.created_at > started:
            problems.append(f"{label}: speech_created came after its audio started")

    # interrupted: only the newest handle may be (segment 0 reports its turn's state)
    if handle.interrupted and is_last:
        row.status = (
            f"interrupted after {seg.played * 1000:.0f} ms"
            if played and seg is not None
            else "interrupted before audio"
        )
    elif handle.interrupted and k == 0:
        row.status = "played (turn interrupted later)"
    elif handle.interrupted:
        row.status = "interrupted"
        problems.append(f"{label}: interrupted, but a later handle exists")
    else:
        row.status = "played"
        if row.playout_state != "resolved":
            problems.append(f"{label}: not interrupted, but playout_started {row.playout_state}")
        if seg is not None and seg.interrupted:
            problems.append(f"{label}: the sink cut it, but the handle is not interrupted")

    # the onset, measured in what was heard
    if seg is not None and seg.started_at is not None:
        row.onset = _onset(report.audio, report.sample_rate, seg, sink.segments, t0)
        lag = row.onset_lag
        if row.onset is None:
            if not seg.interrupted:
                problems.append(f"{label}: no audio above the threshold in its segment")
        elif lag is not None and not 0.0 <= lag <= MAX_ONSET_LAG:
            problems.append(f"{label}: audible {lag * 1000:.1f} ms after playout_started")


def _check_interrupt(result: TurnResult, report: Report, turn_interrupted: bool) -> None:
    """Say what the interrupt hit, and check that nothing started or played after it."""
    assert report.interrupt_at is not None
    at = report.interrupt_at
    if not turn_interrupted:
        report.notes.append(f"interrupt at {at * 1000:.0f} ms: the turn had already finished")
        return
    last = [r for r in report.rows if r.handle is not None][-1]
    end = result.sink.recording.end
    report.audio_stopped_at = None if end is None else end - result.started_at
    if last.handle is not None and last.handle.interrupted:
        report.interrupted = last
        where = "during its playout" if last.sink_started is not None else "before its first frame"
        report.notes.append(
            f"interrupt at {at * 1000:.0f} ms: handle #{last.position} ({last.response.id}) was "
            f"interrupted {where}; no later handle exists"
        )
    else:
        report.notes.append(
            f"interrupt at {at * 1000:.0f} ms: between segments, after #{last.position} "
            f"({last.response.id}) had played; no later handle exists"
        )
    never = [r.response.id for r in report.rows if r.handle is None]
    if never:
        report.notes.append(f"never opened: {', '.join(never)}")

    stopped = report.audio_stopped_at
    if stopped is not None and report.interrupted is not None and last.sink_started is not None:
        report.notes.append(
            f"audio stopped {(stopped - at) * 1000:+.1f} ms from the interrupt call"
        )
    if stopped is not None and stopped > at + _STOP_TOLERANCE:
        report.problems.append(f"audio kept playing {(stopped - at) * 1000:.0f} ms after it")
    for row in report.rows:
        if row.sink_started is not None and row.sink_started > at:
            report.problems.append(f"segment {row.position}: started after the interrupt")


def _onset(
    audio: npt.NDArray[np.int16],
    sr: int,
    seg: SinkSegment,
    segments: list[SinkSegment],
    t0: float,
) -> float | None:
    """Seconds from the turn start to the first sample above the threshold in ``seg``."""
    assert seg.started_at is not None
    begin = int(round((seg.started_at - t0) * sr))
    later = [s.started_at for s in segments[seg.index + 1 :] if s.started_at is not None]
    stop = int(round((later[0] - t0) * sr)) if later else len(audio)
    above = np.flatnonzero(np.abs(audio[begin:stop].astype(np.int32)) > ONSET_THRESHOLD)
    if above.size == 0:
        return None
    # counted from the segment's own start, so rendering's rounding to samples cancels out
    return seg.started_at - t0 + int(above[0]) / sr
