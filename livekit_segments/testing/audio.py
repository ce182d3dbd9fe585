"""Outputs for tests: an audio output that plays on a virtual clock, and a text recorder.

Nothing here waits on wall-clock time. `VirtualAudioOutput` reports ``playback_started`` and
``playback_finished`` with timestamps from a `VirtualClock` that moves only when audio plays
out (or when the test moves it), so every timestamp a test sees is exact and reproducible.
A test decides when a segment starts and when it has played out, can hold (pause) the output, and
waits for what the output saw through futures (`VirtualAudioOutput.segment_started` ...).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from livekit import rtc
from livekit.agents.voice import io

from ..predicate_waiters import PredicateWaiters
from .session import DEFAULT_SAMPLE_RATE

__all__ = [
    "PlayedSegment",
    "RecordingTextOutput",
    "VirtualAudioOutput",
    "VirtualClock",
]

Mode = Literal["auto", "manual"]


class VirtualClock:
    """A ``time.time()``-like clock that moves only when told to.

    `VirtualAudioOutput` moves it forward by each segment's duration as the segment plays
    out; a test may move it too (`advance`). It starts at the wall clock by default, since
    livekit-agents mixes ``time.time()`` into its own metrics.
    """

    def __init__(self, start: float | None = None) -> None:
        self._t = time.time() if start is None else start

    def now(self) -> float:
        """The current virtual time, in seconds (``time.time()`` scale)."""
        return self._t

    def advance(self, seconds: float) -> None:
        """Move the clock forward by ``seconds`` (>= 0)."""
        if seconds < 0:
            raise ValueError(f"a clock cannot go back: advance({seconds!r})")
        self._t += seconds

    def advance_to(self, t: float) -> None:
        """Move the clock forward to ``t``; does nothing if it is already there or later."""
        self._t = max(self._t, t)


@dataclass
class PlayedSegment:
    """One playback segment (the audio between two flushes) as the output saw it."""

    frames: int = 0
    """Frames captured."""
    duration: float = 0.0
    """Seconds of audio captured."""
    started_at: float | None = None
    """Virtual time reported in ``playback_started``; None if it never started."""
    finished_at: float | None = None
    """Virtual time ``playback_finished`` was reported; None while pending or playing."""
    flushed: bool = False
    """All of the segment's audio has arrived (upstream called ``flush()``)."""
    interrupted: bool = False
    """Playback was cleared (``clear_buffer()``) before the segment played out."""
    playback_position: float = 0.0
    """Seconds played, as reported in ``playback_finished``."""
    held_for: float = 0.0
    """Virtual seconds the test held the output while this segment was playing."""
    finish_requested: bool = False
    """The test called ``finish_playback()``; it plays out once flushed and not held."""

    @property
    def finished(self) -> bool:
        """``playback_finished`` was reported (played out or interrupted)."""
        return self.finished_at is not None


class VirtualAudioOutput(io.AudioOutput):
    """An `AudioOutput` that plays on a `VirtualClock`, under the test's control.

    A segment starts playing at its first frame (``start="auto"``) or when the test calls
    `start_playback` (``start="manual"``): the output then reports ``playback_started`` with
    ``created_at=clock.now()``, the value a handle's ``playout_started`` resolves with. It has
    played out as soon as all its audio arrived (``finish="auto"``) or when the test calls
    `finish_playback` (``finish="manual"``); the clock then moves to the segment's start plus
    its duration (plus any time held), and the output reports ``playback_finished``.
    Segments play one after another, in the order they were captured.

    `hold` pauses the output: nothing starts or finishes until `release`. To interrupt a
    segment, interrupt its handle (``handle.interrupt()``) or the session
    (``session.interrupt()``), as a barge-in does: livekit-agents then clears this output,
    which records the segment as interrupted at the virtual time it had reached.

    Wait for what happened with the futures `segment_captured`, `segment_started`,
    `segment_finished` or `when`; each resolves from the event loop as the output changes,
    never from a timer.
    """

    def __init__(
        self,
        *,
        clock: VirtualClock | None = None,
        start: Mode = "auto",
        finish: Mode = "auto",
        sample_rate: int = DEFAULT_SAMPLE_RATE,
    ) -> None:
        if start not in ("auto", "manual") or finish not in ("auto", "manual"):
            raise ValueError(
                f"start and finish must be 'auto' or 'manual', got start={start!r}, "
                f"finish={finish!r}"
            )
        super().__init__(
            label="VirtualAudioOutput",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=sample_rate,
        )
        self.clock = clock if clock is not None else VirtualClock()
        """The clock every timestamp of this output comes from."""
        self.start_mode: Mode = start
        self.finish_mode: Mode = finish
        self.segments: list[PlayedSegment] = []
        """Every segment captured so far, in order."""
        self.after_started: Callable[[int], None] | None = None
        """Called with the segment's index right after each ``playback_started`` emit."""
        self._capturing: PlayedSegment | None = None
        self._held_at: float | None = None
        self._waiters = PredicateWaiters()

    # -- what livekit-agents calls

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        """Queues ``frame`` in the current segment (a new one after a flush)."""
        await super().capture_frame(frame)
        seg = self._capturing
        if seg is None:
            seg = self._capturing = PlayedSegment()
            self.segments.append(seg)
        seg.frames += 1
        seg.duration += frame.duration
        self._pump()

    def flush(self) -> None:
        """Marks the current segment complete: it plays out (``finish="auto"``) when it may."""
        super().flush()
        seg, self._capturing = self._capturing, None
        if seg is not None:
            seg.flushed = True
        self._pump()

    def clear_buffer(self) -> None:
        """Stops playback: every segment not yet played out is finished as interrupted."""
        self._capturing = None
        for seg in self.segments:
            if not seg.finished:
                seg.flushed = True
                self._finish(seg, interrupted=True)
        self._pump()

    # -- what the test calls

    def hold(self) -> None:
        """Holds playback: no segment starts or finishes until `release`.

        A held segment that has not started keeps its handle's ``playout_started`` pending;
        time the clock moves while a segment plays held is added to when it ends.
        (livekit-agents' own ``pause()``/``resume()``, used for false interruptions, are not
        supported by this output, as by many real outputs.)
        """
        if self._held_at is None:
            self._held_at = self.clock.now()
        self._waiters.notify()

    def release(self) -> None:
        """Ends a `hold`; what was held proceeds as the modes say."""
        if self._held_at is None:
            return
        playing = self.playing
        if playing is not None:
            playing.held_for += self.clock.now() - self._held_at
        self._held_at = None
        self._pump()

    @property
    def held(self) -> bool:
        """True between `hold` and `release`."""
        return self._held_at is not None

    @property
    def playing(self) -> PlayedSegment | None:
        """The segment that has started and not finished, if any."""
        seg = self._head()
        return seg if seg is not None and seg.started_at is not None else None

    @property
    def started_times(self) -> list[float]:
        """``playback_started`` timestamps, one per segment that started."""
        return [s.started_at for s in self.segments if s.started_at is not None]

    def start_playback(self) -> float:
        """Starts the next captured segment now (``start="manual"``); returns its timestamp."""
        seg = self._head()
        if seg is None or seg.started_at is not None:
            raise RuntimeError(
                "start_playback(): no captured segment is waiting to start; "
                "await segment_captured(n) first"
            )
        if self.held:
            raise RuntimeError("start_playback(): the output is held; call release() first")
        self._start(seg)
        self._pump()
        assert seg.started_at is not None
        return seg.started_at

    def finish_playback(self) -> None:
        """The playing segment plays out (``finish="manual"``), once all its audio arrived."""
        seg = self.playing
        if seg is None:
            raise RuntimeError(
                "finish_playback(): no segment is playing; await segment_started(n) first"
            )
        seg.finish_requested = True
        self._pump()

    def when(self, predicate: Callable[[], bool]) -> asyncio.Future[None]:
        """A future that resolves once ``predicate()`` holds (checked on every change)."""
        return self._waiters.when(predicate)

    def segment_captured(self, n: int) -> asyncio.Future[None]:
        """Resolves when segment ``n`` (0-based) has its first frame."""
        return self.when(lambda: len(self.segments) > n)

    def segment_started(self, n: int) -> asyncio.Future[None]:
        """Resolves when segment ``n`` has started playing."""
        return self.when(lambda: len(self.segments) > n and self.segments[n].started_at is not None)

    def segment_finished(self, n: int) -> asyncio.Future[None]:
        """Resolves when segment ``n`` has played out or was interrupted."""
        return self.when(lambda: len(self.segments) > n and self.segments[n].finished)

    # -- internals

    def _head(self) -> PlayedSegment | None:
        return next((s for s in self.segments if not s.finished), None)

    def _pump(self) -> None:
        # move the head segment along as far as the modes and the test allow
        while not self.held:
            seg = self._head()
            if seg is None:
                break
            if seg.started_at is None:
                if self.start_mode != "auto":
                    break
                self._start(seg)
                continue
            if seg.flushed and (self.finish_mode == "auto" or seg.finish_requested):
                self._finish(seg, interrupted=False)
                continue
            break
        self._waiters.notify()

    def _start(self, seg: PlayedSegment) -> None:
        seg.started_at = self.clock.now()
        self.on_playback_started(created_at=seg.started_at)
        if self.after_started is not None:
            self.after_started(self.segments.index(seg))

    def _finish(self, seg: PlayedSegment, *, interrupted: bool) -> None:
        if seg.started_at is None:
            position = 0.0
        elif interrupted:
            held_now = self.clock.now() - self._held_at if self._held_at is not None else 0
            elapsed = self.clock.now() - seg.started_at - seg.held_for - held_now
            position = min(max(elapsed, 0.0), seg.duration)
        else:
            self.clock.advance_to(seg.started_at + seg.held_for + seg.duration)
            position = seg.duration
        seg.playback_position = position
        seg.interrupted = interrupted
        seg.finished_at = self.clock.now()
        self.on_playback_finished(playback_position=position, interrupted=interrupted)


class RecordingTextOutput(io.TextOutput):
    """A transcription output that keeps what it was given."""

    def __init__(self) -> None:
        super().__init__(label="RecordingTextOutput", next_in_chain=None)
        self.text = ""
        """Everything captured, joined."""
        self.flushes = 0
        """How many times upstream flushed it."""

    async def capture_text(self, text: str) -> None:
        """Appends ``text``."""
        self.text += text

    def flush(self) -> None:
        """Counts the flush."""
        self.flushes += 1
