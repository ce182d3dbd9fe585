"""The bench's own doubles: a scripted agent, a no-op LLM, and two audio sinks.

`ZeroLatencySink` plays every segment at once, so what the bench measures is the pipeline
itself. `AudioSourceSink` plays through livekit's native `rtc.AudioSource`, the queue that
feeds WebRTC in production, so its clock is real time.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import (
    Agent,
    AgentSession,
    FlushSentinel,
    ModelSettings,
    llm,
)
from livekit.agents.voice import io
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments.testing import offline_session

__all__ = [
    "SAMPLE_RATE",
    "AudioSourceSink",
    "ScriptItem",
    "ScriptedAgent",
    "SinkSegment",
    "SourceSegment",
    "TextSink",
    "ZeroLatencySink",
    "close_session",
    "reply",
    "silence",
    "start_session",
    "trim_history",
]

SAMPLE_RATE = 24000

ScriptItem = str | FlushSentinel


def silence(duration_ms: int) -> rtc.AudioFrame:
    """One mono 16-bit frame of silence (the sinks time frames; they never read samples)."""
    return rtc.AudioFrame.create(SAMPLE_RATE, 1, SAMPLE_RATE * duration_ms // 1000)


class ScriptedAgent(Agent):
    """Every LLM call yields the same script; every text chunk becomes ``frames`` frames.

    Both nodes are zero-latency: the LLM yields its whole script and the TTS yields its
    frames as soon as text arrives, so the next segment is always ready in time.
    """

    def __init__(self, script: Sequence[ScriptItem], *, frames: Sequence[rtc.AudioFrame]) -> None:
        super().__init__(instructions="bench agent")
        self.script = list(script)
        self.frames = list(frames)

    async def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncIterator[str | FlushSentinel]:
        for item in self.script:
            yield item

    async def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings
    ) -> AsyncIterator[rtc.AudioFrame]:
        async for _ in text:
            for frame in self.frames:
                yield frame


@dataclass
class SinkSegment:
    """One segment as the zero-latency sink saw it."""

    created_at: float  # the playback_started timestamp (time.time() clock)
    emitted_at: float  # perf_counter() just before playback_started was emitted


class ZeroLatencySink(io.AudioOutput):
    """Plays each segment at once: started on its first frame, played out on flush.

    With ``record=True`` it keeps one `SinkSegment` per segment; otherwise only counts.
    Timestamps strictly increase, so each one names exactly one segment.
    """

    def __init__(self, *, record: bool = False) -> None:
        super().__init__(
            label="BenchZeroLatencySink",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=SAMPLE_RATE,
        )
        self.record = record
        self.segments: list[SinkSegment] = []
        self.count = 0
        self._open = False
        self._duration = 0.0
        self._last_created_at = 0.0

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self._duration += frame.duration
        if self._open:
            return
        self._open = True
        self.count += 1
        created_at = time.time()
        if created_at <= self._last_created_at:
            created_at = math.nextafter(self._last_created_at, math.inf)
        self._last_created_at = created_at
        if self.record:
            self.segments.append(SinkSegment(created_at, time.perf_counter()))
        self.on_playback_started(created_at=created_at)

    def flush(self) -> None:
        super().flush()
        self._finish(interrupted=False)

    def clear_buffer(self) -> None:
        self._finish(interrupted=True)

    def _finish(self, *, interrupted: bool) -> None:
        if not self._open:
            return
        played = 0.0 if interrupted else self._duration
        self._open = False
        self._duration = 0.0
        self.on_playback_finished(playback_position=played, interrupted=interrupted)


@dataclass
class SourceSegment:
    """One segment as it went through the `rtc.AudioSource` (``time.monotonic()`` clock)."""

    first_in: float  # the first frame was handed to the source
    drained_at: float | None = None  # the source ran dry after the last frame
    released_at: float | None = None  # source.wait_for_playout() returned
    duration: float = 0.0


class AudioSourceSink(io.AudioOutput):
    """A sink that plays through livekit's native `rtc.AudioSource`, as RoomIO does.

    It emits ``playback_started`` as a segment's first frame goes into the source (RoomIO's
    meaning of the timestamp) and ``playback_finished`` once ``wait_for_playout()`` of the
    source returns. The source's queue drains in real time, without a room.
    """

    def __init__(self, *, queue_size_ms: int = 200) -> None:
        super().__init__(
            label="BenchAudioSourceSink",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=SAMPLE_RATE,
        )
        self.source = rtc.AudioSource(SAMPLE_RATE, 1, queue_size_ms=queue_size_ms)
        self.segments: list[SourceSegment] = []
        self.frames = 0  # frames handed to the source
        self._current: SourceSegment | None = None
        self._playout: asyncio.Task[None] | None = None

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        seg = self._current
        if seg is None:
            seg = self._current = SourceSegment(first_in=time.monotonic())
            self.segments.append(seg)
            self.on_playback_started(created_at=time.time())
        await self.source.capture_frame(frame)
        self.frames += 1
        seg.duration += frame.duration
        # when the queue runs dry if nothing follows: the last sample leaves then
        seg.drained_at = time.monotonic() + self.source.queued_duration

    def flush(self) -> None:
        super().flush()
        seg, self._current = self._current, None
        if seg is not None:
            self._playout = asyncio.create_task(self._wait_for_playout(seg))

    async def _wait_for_playout(self, seg: SourceSegment) -> None:
        await self.source.wait_for_playout()
        seg.released_at = time.monotonic()
        self.on_playback_finished(playback_position=seg.duration, interrupted=False)

    def clear_buffer(self) -> None:
        self.source.clear_queue()
        seg, self._current = self._current, None
        playout, self._playout = self._playout, None
        if playout is not None and not playout.done():
            playout.cancel()
            self.on_playback_finished(playback_position=0.0, interrupted=True)
        elif seg is not None:
            self.on_playback_finished(playback_position=0.0, interrupted=True)

    async def aclose(self) -> None:
        if self._playout is not None and not self._playout.done():
            self._playout.cancel()
            try:
                await self._playout
            except asyncio.CancelledError:
                pass
        await self.source.aclose()


class TextSink(io.TextOutput):
    """Discards the transcript (the bench measures audio)."""

    def __init__(self) -> None:
        super().__init__(label="BenchTextSink", next_in_chain=None)

    async def capture_text(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass


async def start_session(
    agent: Agent,
    sink: io.AudioOutput,
    *,
    on_speech_created: Callable[[Any], None] | None = None,
) -> AgentSession[None]:
    """A session with the bench's LLM, TTS and sinks, no turn detection and no VAD."""
    session = offline_session(sample_rate=SAMPLE_RATE, audio=sink, transcription=TextSink())
    if on_speech_created is not None:
        session.on("speech_created", on_speech_created)
    await session.start(agent)
    return session


async def close_session(session: AgentSession[None], sink: io.AudioOutput | None = None) -> None:
    await session.aclose()
    if isinstance(sink, AudioSourceSink):
        await sink.aclose()


async def trim_history(session: AgentSession[None], agent: Agent, items: int) -> None:
    """Keep the per-reply cost stationary: it grows with the history and the event record."""
    ctx = agent.chat_ctx.copy()
    ctx.truncate(max_items=items)
    await agent.update_chat_ctx(ctx)
    session.history.truncate(max_items=items)
    events = getattr(session, "_recorded_events", None)
    if isinstance(events, list):
        events.clear()


async def reply(session: AgentSession[None]) -> SpeechHandle:
    """One reply from the scripted agent, awaited until it has played out."""
    handle = session.generate_reply()
    await handle
    return handle
