"""An audio output whose playout clock is a real `rtc.AudioSource`, and a recording of it.

`RealtimeAudioSink` is what RoomIO's participant audio output is without the room: frames go
into a standalone ``rtc.AudioSource``, whose native queue drains in real time. It emits
``playback_started`` as a segment's first frame goes into the source and
``playback_finished`` once the source has played the segment out (or it was cleared), which
is what the agent pipeline sees in production, up to the WebRTC track.

`PlayoutRecording` keeps every frame at the time it leaves the source, so the turn can be
written out (and measured) as it was heard.
"""

from __future__ import annotations

import asyncio
import logging
import time
import wave
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from livekit import rtc
from livekit.agents.voice import io

from ..predicate_waiters import PredicateWaiters
from ..release_compat import report_playback_progress

__all__ = ["PlayoutRecording", "PlayoutRun", "RealtimeAudioSink", "SinkSegment"]

logger = logging.getLogger("livekit.segments.demo")

# a frame that starts within this of the previous one's end continues the same run: the
# two clocks involved (time.time() and the source's monotonic model) differ by microseconds
_RUN_TOLERANCE = 0.001


@dataclass
class PlayoutRun:
    """A stretch of audio that left the source without a break."""

    start: float
    """When its first sample started playing (``time.time()`` clock)."""
    pcm: bytearray = field(default_factory=bytearray)
    """Interleaved 16-bit samples."""


class PlayoutRecording:
    """What left an audio source, placed on the wall clock; silence is implied between runs."""

    def __init__(self, sample_rate: int, num_channels: int) -> None:
        self.sample_rate = sample_rate
        self.num_channels = num_channels
        self.runs: list[PlayoutRun] = []
        self._cut = False

    @property
    def _bytes_per_second(self) -> int:
        return self.sample_rate * self.num_channels * 2

    def run_end(self, run: PlayoutRun) -> float:
        """When ``run`` stops playing."""
        return run.start + len(run.pcm) / self._bytes_per_second

    @property
    def end(self) -> float | None:
        """When the last recorded audio stops playing, or None if nothing was recorded."""
        return self.run_end(self.runs[-1]) if self.runs else None

    def add(self, start: float, frame: rtc.AudioFrame) -> float:
        """Record ``frame`` as starting to play at ``start``; returns where it was placed.

        The source plays its queue in order, so a frame never starts before the previous
        one ends: one that would is placed right after it.
        """
        if self.runs and not self._cut and start <= self.run_end(self.runs[-1]) + _RUN_TOLERANCE:
            run = self.runs[-1]
            start = self.run_end(run)
        else:
            run = PlayoutRun(start=start)
            self.runs.append(run)
            self._cut = False
        run.pcm += frame.data.tobytes()
        return start

    def cut(self, at: float) -> None:
        """Forget audio that would have played after ``at`` (the queue was cleared then)."""
        while self.runs and self.runs[-1].start >= at:
            self.runs.pop()
        if self.runs:
            run = self.runs[-1]
            keep = int((at - run.start) * self.sample_rate) * self.num_channels * 2
            if keep < len(run.pcm):
                del run.pcm[keep:]
            if not run.pcm:
                self.runs.pop()
        # whatever plays next starts a run of its own, however soon
        self._cut = True

    def render(self, start: float, end: float | None = None) -> bytes:
        """The audio between ``start`` and ``end`` (default: the end), gaps as silence."""
        stop = end if end is not None else (self.end or start)
        frame_bytes = self.num_channels * 2
        n_samples = max(int(round((stop - start) * self.sample_rate)), 0)
        out = bytearray(n_samples * frame_bytes)
        for run in self.runs:
            offset = int(round((run.start - start) * self.sample_rate)) * frame_bytes
            pcm = run.pcm
            if offset < 0:
                pcm = pcm[-offset:]
                offset = 0
            pcm = pcm[: max(len(out) - offset, 0)]
            out[offset : offset + len(pcm)] = pcm
        return bytes(out)

    def write_wav(self, path: str | Path, start: float, end: float | None = None) -> None:
        """Write the audio between ``start`` and ``end`` as a 16-bit WAV file."""
        with wave.open(str(path), "wb") as w:
            w.setnchannels(self.num_channels)
            w.setsampwidth(2)
            w.setframerate(self.sample_rate)
            w.writeframes(self.render(start, end))


@dataclass
class SinkSegment:
    """One playback segment as the sink saw it: the audio between two flushes."""

    index: int
    captured_at: float
    """When its first frame reached the sink (``time.time()`` clock)."""
    started_at: float | None = None
    """When its first frame started to play; the ``created_at`` of ``playback_started``."""
    pushed: float = 0.0
    """Seconds of audio that went into the source."""
    played: float = 0.0
    """Seconds of audio that played (the ``playback_position`` reported)."""
    finished_at: float | None = None
    """When ``playback_finished`` was emitted."""
    ended_at: float | None = None
    """When its last sample stopped playing (drained, or cut by ``clear_buffer``)."""
    underruns: int = 0
    """Times the source ran dry in the middle of it (an audible gap each)."""
    interrupted: bool = False
    flushed: bool = False
    announced: bool = False  # playback_started was emitted for it

    @property
    def finished(self) -> bool:
        """Whether ``playback_finished`` was emitted for it."""
        return self.finished_at is not None


class RealtimeAudioSink(io.AudioOutput):
    """An `io.AudioOutput` that plays into a standalone `rtc.AudioSource`.

    It mirrors the semantics of RoomIO's participant audio output, without a room:

    - ``capture_frame`` only buffers, and a forwarding task pushes frames into the source,
      which accepts ``queue_size_ms`` ahead and then paces the pushes in real time;
    - ``playback_started`` fires as a segment's first frame goes into the source, with
      ``created_at`` the time that frame starts to play (the source is empty then, since
      upstream plays segments one after another, so it is "now");
    - ``playback_finished`` fires once per captured segment: after ``flush()`` when the
      source has played it out, or at once on ``clear_buffer()`` with what had played.

    A real room adds the WebRTC track, the network and the listener's jitter buffer after
    the source; the agent cannot observe those.

    Args:
        sample_rate: the source's rate; the pipeline resamples TTS audio to it.
        num_channels: the source's channel count.
        queue_size_ms: how much audio the source accepts ahead of playout (RoomIO: 200).
    """

    def __init__(
        self, *, sample_rate: int = 24000, num_channels: int = 1, queue_size_ms: int = 200
    ) -> None:
        super().__init__(
            label="RealtimeAudioSink",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=sample_rate,
        )
        self.num_channels = num_channels
        self.queue_size_ms = queue_size_ms
        self.segments: list[SinkSegment] = []
        self.recording = PlayoutRecording(sample_rate, num_channels)
        self.finished_events = 0
        self._source: rtc.AudioSource | None = None
        self._queue: asyncio.Queue[tuple[SinkSegment, rtc.AudioFrame]] | None = None
        self._outstanding: dict[int, int] = {}  # segment index -> frames not yet pushed
        self._capturing: SinkSegment | None = None  # between first frame and flush
        self._forward_task: asyncio.Task[None] | None = None
        self._capture: asyncio.Future[None] | None = None  # the frame going into the source
        self._playout_tasks: set[asyncio.Task[None]] = set()
        self._waiters = PredicateWaiters()

    @property
    def source(self) -> rtc.AudioSource | None:
        """The audio source, once the first frame arrived."""
        return self._source

    # -- what the pipeline calls

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        """Buffer a frame of the current segment (a new one starts after a flush)."""
        await super().capture_frame(frame)
        if frame.sample_rate != self.sample_rate or frame.num_channels != self.num_channels:
            raise ValueError(
                f"RealtimeAudioSink plays {self.sample_rate} Hz/{self.num_channels} ch, "
                f"got {frame.sample_rate} Hz/{frame.num_channels} ch"
            )
        queue = self._ensure_started()
        seg = self._capturing
        if seg is None:
            seg = SinkSegment(index=len(self.segments), captured_at=time.time())
            self.segments.append(seg)
            self._capturing = seg
        if seg.finished:
            return  # cleared before its flush: the rest of it never plays
        self._outstanding[seg.index] = self._outstanding.get(seg.index, 0) + 1
        queue.put_nowait((seg, frame))

    def flush(self) -> None:
        """End the current segment; ``playback_finished`` follows once it has played out."""
        super().flush()
        seg, self._capturing = self._capturing, None
        if seg is None or seg.finished:
            return
        seg.flushed = True
        task = asyncio.get_running_loop().create_task(self._play_out(seg))
        self._playout_tasks.add(task)
        task.add_done_callback(self._playout_tasks.discard)

    def clear_buffer(self) -> None:
        """Stop at once: drop what is buffered and queued, and finish the segment."""
        unfinished = [seg for seg in self.segments if not seg.finished]
        if not unfinished:
            return
        now = time.time()
        queued = 0.0
        if self._source is not None:
            queued = self._source.queued_duration
            self._source.clear_queue()
        self.recording.cut(now)
        # what was still queued belongs to the newest audio; upstream plays one segment at
        # a time, so this is normally a single segment
        played: dict[int, float] = {}
        for seg in reversed(unfinished):
            unplayed = min(seg.pushed, queued)
            queued -= unplayed
            played[seg.index] = seg.pushed - unplayed if seg.started_at is not None else 0.0
        for seg in unfinished:
            self._finish(seg, played=played[seg.index], interrupted=True, at=now)

    async def aclose(self) -> None:
        """Stop forwarding and release the source.

        A frame the source is still taking in is let finish first (the queue is cleared, so
        that is at once): the native capture outlives a cancelled ``capture_frame`` call, and
        its completion, sent after the FFI server was disposed at exit, is logged as an ERROR
        by livekit's native library (``[AUDIO_CAPTURE] Failed to send callback``).
        """
        tasks = [t for t in (self._forward_task, *self._playout_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for outcome in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(outcome, Exception):  # a task died before it was stopped
                logger.error("RealtimeAudioSink stopped playing: %r", outcome)
        self._forward_task = None
        capture, self._capture = self._capture, None
        if capture is not None:
            if self._source is not None:
                self._source.clear_queue()
            (error,) = await asyncio.gather(capture, return_exceptions=True)
            if isinstance(error, Exception):
                # the frame was being thrown away with the rest of the queue
                logger.warning("RealtimeAudioSink: a frame's capture failed at close: %r", error)
        if self._source is not None:
            await self._source.aclose()
            self._source = None

    # -- for callers that want to wait on the sink (tests, the benchmark)

    def when(self, predicate: Callable[[], bool]) -> asyncio.Future[None]:
        """A future that resolves once ``predicate()`` holds (checked on every sink change)."""
        return self._waiters.when(predicate)

    # -- internals

    def _ensure_started(self) -> asyncio.Queue[tuple[SinkSegment, rtc.AudioFrame]]:
        if self._queue is None:
            # the source binds to the running loop, so it is made on first use
            self._queue = asyncio.Queue()
            self._source = rtc.AudioSource(
                self.sample_rate or 24000, self.num_channels, queue_size_ms=self.queue_size_ms
            )
            self._forward_task = asyncio.get_running_loop().create_task(
                self._forward(self._source, self._queue), name="RealtimeAudioSink._forward"
            )
        return self._queue

    async def _forward(
        self, source: rtc.AudioSource, queue: asyncio.Queue[tuple[SinkSegment, rtc.AudioFrame]]
    ) -> None:
        while True:
            seg, frame = await queue.get()
            try:
                if seg.finished:
                    continue  # cleared: never reaches the source
                # the frame plays once the audio queued ahead of it has played
                runs = len(self.recording.runs)
                start = self.recording.add(time.time() + source.queued_duration, frame)
                if seg.started_at is not None and len(self.recording.runs) > runs:
                    seg.underruns += 1  # the frame came too late: the listener heard a gap
                seg.pushed += frame.duration
                announce = seg.started_at is None
                if announce:
                    seg.started_at = start
                capture = self._capture = asyncio.ensure_future(source.capture_frame(frame))
                if announce:
                    # once the capture's first step has put the frame into the native queue:
                    # the listeners run synchronously, and a few ms of their work before it
                    # would start the source that much after `start` (and the next frame,
                    # placed by the queue, a gap after the first)
                    asyncio.get_running_loop().call_soon(self._announce, seg)
                try:
                    # shielded: cancelling this task (aclose) must not abandon the native
                    # capture; aclose waits for it
                    await asyncio.shield(capture)
                finally:
                    if capture.done():
                        self._capture = None
                if seg.finished:
                    # cleared while the native capture was in flight: it must not play
                    source.clear_queue()
            finally:
                self._outstanding[seg.index] -= 1
                self._waiters.notify()

    async def _play_out(self, seg: SinkSegment) -> None:
        await self.when(lambda: seg.finished or self._outstanding.get(seg.index, 0) == 0)
        if seg.finished:
            return
        if self._source is not None:
            await self._source.wait_for_playout()
        if not seg.finished:
            self._finish(seg, played=seg.pushed, interrupted=False, at=time.time())

    def _announce(self, seg: SinkSegment) -> None:
        if seg.announced or seg.started_at is None:
            return
        seg.announced = True
        self.on_playback_started(created_at=seg.started_at)

    def _finish(self, seg: SinkSegment, *, played: float, interrupted: bool, at: float) -> None:
        self._announce(seg)  # a segment cleared right after its first frame started
        seg.finished_at = at
        end = self.recording.end
        seg.ended_at = at if interrupted or end is None else min(end, at)
        seg.played = played
        seg.interrupted = interrupted
        self.finished_events += 1
        if seg.started_at is not None and played > 0:
            report_playback_progress(self, started_at=seg.started_at, offset=0.0, duration=played)
        self.on_playback_finished(playback_position=played, interrupted=interrupted)
        self._waiters.notify()
