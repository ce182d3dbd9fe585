"""The agent's send clock: when each sample of a response leaves the sink's queue.

`PlayoutTap` is an `AudioOutput` wrapper (upstream's extension point: the transcript
synchronizer is one too) put on top of the session's audio chain. It forwards everything and,
while a companion listens, runs the shared onset detector over the frames on the send clock:
a segment's sample 0 leaves at its `playback_started` time (RoomIO stamps it as the first frame
enters an empty `rtc.AudioSource`), each later sample 1/sr after the previous one, or when its
frame arrived if the TTS fell behind (the queue ran dry).
"""

from __future__ import annotations

import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from livekit import rtc
from livekit.agents.voice import io

from ._detector import ENVELOPE_BINS, MUTE_SEARCH, Onset, OnsetDetector, amplitudes

logger = logging.getLogger("livekit_segments.client_playout")

KEEP = 30.0  # seconds of send history kept for matching
AUDIO_KEEP = 3.0  # seconds of sent audio kept, for placing the device's levels


@dataclass
class SentSegment:
    """One capture segment (flush to flush) of the sink: one response's audio."""

    start: float | None = None  # playback_started created_at: sample 0 leaves then
    end: float | None = None  # send time after its last sample
    first_audible: float | None = None  # send time of its first audible sample
    clocked: bool = True  # False: analysis stopped (joined late, paused, or failed)
    captured: float = 0.0  # when its first frame reached the tap
    finished: bool = False
    onsets: list[SentOnset] = field(default_factory=list)
    _pending: list[tuple[float, npt.NDArray[np.float64], int]] = field(default_factory=list)
    _next: float = 0.0
    _tails: list[_Tail] = field(default_factory=list)  # onsets whose audio is being collected

    def finish_tails(self) -> None:
        """No more of this segment's audio comes: what follows its onsets is silence."""
        tails, self._tails = self._tails, []
        for tail in tails:
            tail.finish()


@dataclass
class SentOnset:
    """An onset in the agent's frames, dated on the send clock."""

    onset: Onset
    segment: SentSegment
    device: float | None = None  # the matched device time (agent clock), once matched
    dropped: bool = False  # cleared before it left the queue: never reached the device
    # the amplitudes that follow it (from `lead` samples before it), to place the device's
    # envelope; None until enough was sent
    amp: npt.NDArray[np.float64] | None = None
    lead: int = 0
    rate: int = 0
    mute: float | None = None  # how much of its sound the device left out (seconds), if known


class _Tail:
    """Collects the amplitudes that follow one onset on the send clock."""

    def __init__(self, sent: SentOnset, rate: int) -> None:
        self.sent = sent
        self.rate = rate
        self.lead = round(-MUTE_SEARCH[0] * rate)  # silence before it: below the threshold
        self.need = self.lead + int((MUTE_SEARCH[1] + ENVELOPE_BINS / 1000) * rate) + 1
        self.parts: list[npt.NDArray[np.float64]] = [np.zeros(self.lead)]
        self.have = self.lead

    def add(self, amp: npt.NDArray[np.float64]) -> bool:
        """Append; True once complete."""
        self.parts.append(amp[: self.need - self.have])
        self.have += len(self.parts[-1])
        if self.have >= self.need:
            self.finish()
            return True
        return False

    def finish(self) -> None:
        """Complete with silence: nothing more is sent after a segment's end."""
        amp = np.concatenate(self.parts)
        self.sent.amp = np.pad(amp, (0, max(self.need - len(amp), 0)))
        self.sent.lead = self.lead
        self.sent.rate = self.rate
        self.parts = []


class SendLog:
    """Segments and onsets of the last `KEEP` seconds, fed by the tap."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.detector = OnsetDetector()
        self.segments: list[SentSegment] = []
        self.onsets: list[SentOnset] = []
        # what left the queue, on the send clock: (send time of sample 0, amplitudes, rate)
        self.audio: deque[tuple[float, npt.NDArray[np.float64], int]] = deque()
        self.on_segment_started: Callable[[SentSegment], None] | None = None
        self.on_segment_finished: Callable[[SentSegment], None] | None = None

    def prune(self) -> None:
        now = self.clock()
        horizon = now - KEEP
        self.onsets = [o for o in self.onsets if o.onset.at >= horizon]
        # a segment not anchored yet (it waits in the sink's queue) is kept
        self.segments = [
            s for s in self.segments if not s.finished or (s.end or s.start or now) >= horizon
        ]

    def add_audio(self, at: float, amp: npt.NDArray[np.float64], rate: int) -> None:
        self.audio.append((at, amp, rate))
        while self.audio and self.audio[0][0] < at - AUDIO_KEEP:
            self.audio.popleft()

    def audio_between(self, t0: float, t1: float) -> tuple[npt.NDArray[np.float64], int] | None:
        """The amplitudes sent from ``t0`` to ``t1`` (index 0 at ``t0``; silence where nothing
        was sent), and their rate; None when none of it is kept or the rate changed."""
        chunks = [c for c in self.audio if c[0] < t1 and c[0] + len(c[1]) / c[2] > t0]
        if not chunks or chunks[0][0] > t0 or any(c[2] != chunks[0][2] for c in chunks):
            return None
        rate = chunks[0][2]
        out = np.zeros(round((t1 - t0) * rate))
        for at, amp, _ in chunks:
            i = round((at - t0) * rate)
            lo, hi = max(i, 0), min(i + len(amp), len(out))
            if hi > lo:
                out[lo:hi] = amp[lo - i : hi - i]
        return out, rate

    def segment_at(self, start: float, tolerance: float = 0.005) -> SentSegment | None:
        """The segment whose first frame left at `start` (a handle's playout_started)."""
        best = None
        for s in self.segments:
            if s.start is not None and abs(s.start - start) <= tolerance:
                if best is None or abs(s.start - start) < abs((best.start or 0) - start):
                    best = s
        return best


class PlayoutTap(io.AudioOutput):
    """Pass-through wrapper that dates the agent's audible onsets on the send clock."""

    def __init__(self, next_in_chain: io.AudioOutput, log: SendLog) -> None:
        super().__init__(
            label="ClientPlayoutTap",
            capabilities=io.AudioOutputCapabilities(pause=True),
            next_in_chain=next_in_chain,
        )
        self.original = next_in_chain  # what to put back when the tap is removed
        self.log = log
        self.measuring = False
        self._seg: SentSegment | None = None
        # segments captured whose playback_started has not come yet, oldest first: a sink
        # that buffers (RoomIO's forwarding channel) may take a whole segment, flush
        # included, while the previous one still plays, so the event comes later
        self._waiting: deque[SentSegment] = deque()
        self._failed = False

    @property
    def sample_rate(self) -> int | None:
        return self.next_in_chain.sample_rate if self.next_in_chain else None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        if self.measuring and not self._failed:
            self._guard(self._on_frame, frame)
        elif self._seg is None:
            # a segment that starts unmeasured stays unmeasured
            self._seg = SentSegment(clocked=False, captured=self.log.clock())
            self._waiting.append(self._seg)
        if self.next_in_chain:
            await self.next_in_chain.capture_frame(frame)
        await super().capture_frame(frame)

    def flush(self) -> None:
        super().flush()
        self._end_segment(cleared_at=None)
        if self.next_in_chain:
            self.next_in_chain.flush()

    def clear_buffer(self) -> None:
        self._end_segment(cleared_at=self.log.clock())
        if self.next_in_chain:
            self.next_in_chain.clear_buffer()

    def pause(self) -> None:
        # the forwarding stops while queued audio drains: the send clock is unknown from here
        if self._seg is not None:
            self._guard(self._unclock, self._seg, self.log.clock())
        super().pause()

    def on_playback_started(self, *, created_at: float) -> None:
        # one event per segment that plays, in capture order; an event for audio captured
        # before the tap was there (enable() during a reply) belongs to none of ours
        seg = None
        if self._waiting and self._waiting[0].captured <= created_at + 0.005:
            seg = self._waiting.popleft()
        if seg is not None and seg.clocked and seg.start is None:
            self._guard(self._anchor, seg, created_at)
        super().on_playback_started(created_at=created_at)

    # -- send clock --

    def _guard(self, fn: Callable[..., None], *args: object) -> None:
        try:
            fn(*args)
        except Exception:
            # measuring must never break the audio path: stop measuring, keep forwarding
            self._failed = True
            logger.exception("client playout: the audio tap failed and stopped measuring")

    def _on_frame(self, frame: rtc.AudioFrame) -> None:
        if self._seg is None:
            self._seg = SentSegment(captured=self.log.clock())
            self.log.segments.append(self._seg)
            self._waiting.append(self._seg)
        seg = self._seg
        if not seg.clocked:
            return
        amp = amplitudes(frame.data, frame.num_channels)
        item = (self.log.clock(), amp, frame.sample_rate)
        if seg.start is None:
            seg._pending.append(item)
        else:
            self._place(seg, *item)

    def _anchor(self, seg: SentSegment, created_at: float) -> None:
        seg.start = created_at
        seg._next = created_at
        pending, seg._pending = seg._pending, []
        for item in pending:
            self._place(seg, *item)
        if seg.finished:
            seg.finish_tails()
        if self.log.on_segment_started:
            self.log.on_segment_started(seg)
        if seg.finished and self.log.on_segment_finished:
            self.log.on_segment_finished(seg)

    def _place(
        self, seg: SentSegment, arrival: float, amp: npt.NDArray[np.float64], sr: int
    ) -> None:
        at = max(seg._next, arrival)
        if seg._tails:
            dry = round((at - seg._next) * sr)
            if dry > 0:  # the queue ran dry before this frame: silence went out meanwhile
                seg._tails = [t for t in seg._tails if not t.add(np.zeros(dry))]
            seg._tails = [t for t in seg._tails if not t.add(amp)]
        if seg.first_audible is None:
            seg.first_audible = self.log.detector.first_audible(amp, at, sr)
        for onset in self.log.detector.feed(amp, at, sr):
            sent = SentOnset(onset=onset, segment=seg)
            seg.onsets.append(sent)
            self.log.onsets.append(sent)
            tail = _Tail(sent, sr)
            if not tail.add(amp[max(round((onset.at - at) * sr), 0) :]):
                seg._tails.append(tail)
        self.log.add_audio(at, amp, sr)
        seg._next = at + len(amp) / sr
        seg.end = seg._next

    def _unclock(self, seg: SentSegment, at: float) -> None:
        seg.clocked = False
        seg._pending = []
        for o in seg.onsets:
            if o.onset.at > at:
                o.dropped = True

    def _end_segment(self, *, cleared_at: float | None) -> None:
        seg, self._seg = self._seg, None
        if cleared_at is not None:
            # what waited in the sink's queue never plays: no playback_started comes for it
            for waiting in self._waiting:
                self._guard(self._unclock, waiting, cleared_at)
                waiting.finished = True
            self._waiting.clear()
        if seg is None:
            return
        if cleared_at is not None:
            self._guard(self._unclock, seg, cleared_at)
            if seg.end is not None:
                seg.end = min(seg.end, cleared_at)
        seg.finished = True
        if seg.start is not None:
            seg._pending = []  # else kept: placed when its playback_started comes
            self._guard(seg.finish_tails)
        if seg.start is not None and self.log.on_segment_finished:
            self.log.on_segment_finished(seg)
        self.log.prune()
