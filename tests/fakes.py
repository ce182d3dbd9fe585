"""Test doubles: a scripted `llm_node`, a TTS node that makes real audio frames, and sinks.

Nothing here waits on wall-clock time. The audio sink plays on a virtual clock and finishes
a segment either at once (``auto``) or when the test says so, through futures.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from livekit import rtc
from livekit.agents import (
    Agent,
    AgentSession,
    FlushSentinel,
    ModelSettings,
    llm,
)
from livekit.agents.llm import ChatChunk, ChoiceDelta, FunctionToolCall
from livekit.agents.voice import io
from livekit_segments.offline_models import offline_session

SAMPLE_RATE = 24000
FRAME_MS = 10


class VirtualClock:
    """A `time.time()`-like clock that moves only when the sink plays audio."""

    def __init__(self, start: float | None = None) -> None:
        # starts at the wall clock so upstream's metrics (which mix in time.time()) stay sane
        self.t = time.time() if start is None else start

    def now(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


# ---------------------------------------------------------------- the scripted llm_node


@dataclass
class ToolCall:
    """A tool call the scripted LLM makes (the agent must define the tool)."""

    name: str
    arguments: str = "{}"


@dataclass
class Fail:
    """Raise this error from llm_node at this point."""

    error: BaseException


@dataclass
class Wait:
    """Pause llm_node until the future resolves (the test decides when)."""

    fut: asyncio.Future[None]


ScriptItem = str | FlushSentinel | ToolCall | Fail | Wait


def tone(duration: float, *, freq: float = 440.0) -> list[rtc.AudioFrame]:
    """Real 16-bit mono frames of a sine tone, FRAME_MS each."""
    samples_per_frame = SAMPLE_RATE * FRAME_MS // 1000
    n_frames = max(1, round(duration * 1000 / FRAME_MS))
    frames = []
    for i in range(n_frames):
        frame = rtc.AudioFrame.create(SAMPLE_RATE, 1, samples_per_frame)
        data = frame.data
        for s in range(samples_per_frame):
            t = (i * samples_per_frame + s) / SAMPLE_RATE
            data[s] = int(8000 * math.sin(2 * math.pi * freq * t))
        frames.append(frame)
    return frames


_FRAME_CACHE: dict[int, rtc.AudioFrame] = {}


def silence_frame() -> rtc.AudioFrame:
    n = SAMPLE_RATE * FRAME_MS // 1000
    if n not in _FRAME_CACHE:
        _FRAME_CACHE[n] = tone(FRAME_MS / 1000)[0]
    return _FRAME_CACHE[n]


@dataclass
class TTSConfig:
    """How the fake TTS behaves: frames per text chunk, and texts that make it fail."""

    frames_per_chunk: int = 2
    fail_on: set[str] = field(default_factory=set)
    silent_on: set[str] = field(default_factory=set)
    texts: list[str] = field(default_factory=list)


class ScriptedAgent(Agent):
    """An agent whose llm_node plays back one script per LLM call (tool steps included)."""

    def __init__(
        self,
        scripts: list[list[ScriptItem]],
        *,
        tts_config: TTSConfig | None = None,
        tools: list[llm.Tool] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(instructions="test agent", tools=tools or [], **kwargs)
        self.scripts = list(scripts)
        self.calls = 0
        self.tts_config = tts_config or TTSConfig()

    async def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncIterator[str | FlushSentinel | ChatChunk]:
        script = self.scripts[self.calls] if self.calls < len(self.scripts) else []
        self.calls += 1
        for n, item in enumerate(script):
            if isinstance(item, Wait):
                await item.fut
            elif isinstance(item, Fail):
                raise item.error
            elif isinstance(item, ToolCall):
                yield ChatChunk(
                    id=f"chunk_{n}",
                    delta=ChoiceDelta(
                        role="assistant",
                        tool_calls=[
                            FunctionToolCall(
                                name=item.name,
                                arguments=item.arguments,
                                call_id=f"call_{self.calls}_{n}",
                            )
                        ],
                    ),
                )
            else:
                yield item

    async def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings
    ) -> AsyncIterator[rtc.AudioFrame]:
        cfg = self.tts_config
        async for chunk in text:
            cfg.texts.append(chunk)
            if chunk in cfg.fail_on:
                raise RuntimeError(f"fake TTS failure on {chunk!r}")
            if chunk in cfg.silent_on:
                continue
            for _ in range(cfg.frames_per_chunk):
                yield silence_frame()


# ---------------------------------------------------------------- sinks


@dataclass
class SinkSegment:
    frames: int = 0
    duration: float = 0.0
    started_at: float | None = None
    finished: bool = False
    interrupted: bool = False


class FakeAudioSink(io.AudioOutput):
    """An audio sink on a virtual clock.

    A segment is the audio between two flushes. Its first frame "starts playing" at once
    (``start="auto"``) or when the test calls `start_playback()` (``"manual"``). It has
    played out at once after flush (``finish="auto"``) or when the test calls
    `finish_playback()` (``"manual"``).
    """

    def __init__(
        self,
        clock: VirtualClock,
        *,
        start: str = "auto",
        finish: str = "auto",
    ) -> None:
        super().__init__(
            label="FakeAudioSink",
            capabilities=io.AudioOutputCapabilities(pause=False),
            sample_rate=SAMPLE_RATE,
        )
        self.clock = clock
        self.start_mode = start
        self.finish_mode = finish
        self.segments: list[SinkSegment] = []
        self._current: SinkSegment | None = None  # capturing or playing
        self._flushed = False
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        # called right after each playback_started emit returns, before any other callback
        self.after_started: Callable[[int], None] | None = None

    # -- what upstream calls

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        if self._current is None or self._current.finished:
            self._current = SinkSegment()
            self._flushed = False
            self.segments.append(self._current)
        seg = self._current
        seg.frames += 1
        seg.duration += frame.duration
        if seg.started_at is None and self.start_mode == "auto":
            self._start(seg)
        self._notify()

    def flush(self) -> None:
        super().flush()
        if self._current is None or self._current.finished:
            return
        self._flushed = True
        if self.finish_mode == "auto" and self._current.started_at is not None:
            self._finish(self._current, interrupted=False)
        self._notify()

    def clear_buffer(self) -> None:
        seg = self._current
        if seg is not None and not seg.finished:
            self._finish(seg, interrupted=True)
        self._notify()

    # -- what the test calls

    def start_playback(self) -> float:
        """Start the pending segment's playout now; returns its created_at."""
        seg = self._current
        assert seg is not None and seg.started_at is None and not seg.finished
        self._start(seg)
        if self.finish_mode == "auto" and self._flushed:
            self._finish(seg, interrupted=False)
        self._notify()
        assert seg.started_at is not None
        return seg.started_at

    def finish_playback(self) -> None:
        """The playing segment has played out (manual finish)."""
        seg = self._current
        assert seg is not None and seg.started_at is not None and not seg.finished
        self._finish(seg, interrupted=False)
        self._notify()

    def when(self, predicate: Callable[[], bool]) -> asyncio.Future[None]:
        """A future that resolves once ``predicate()`` holds (checked on every sink change)."""
        fut = asyncio.get_running_loop().create_future()
        if predicate():
            fut.set_result(None)
        else:
            self._waiters.append((predicate, fut))
        return fut

    def segment_started(self, n: int) -> asyncio.Future[None]:
        """Resolves when segment ``n`` (0-based) has started playing."""
        return self.when(lambda: len(self.segments) > n and self.segments[n].started_at is not None)

    def segment_captured(self, n: int) -> asyncio.Future[None]:
        """Resolves when segment ``n`` has its first frame captured."""
        return self.when(lambda: len(self.segments) > n)

    @property
    def started_times(self) -> list[float]:
        return [s.started_at for s in self.segments if s.started_at is not None]

    # -- internals

    def _start(self, seg: SinkSegment) -> None:
        seg.started_at = self.clock.now()
        self.on_playback_started(created_at=seg.started_at)
        if self.after_started is not None:
            self.after_started(self.segments.index(seg))

    def _finish(self, seg: SinkSegment, *, interrupted: bool) -> None:
        seg.finished = True
        seg.interrupted = interrupted
        played = seg.duration if not interrupted else 0.0
        if seg.started_at is not None:
            self.clock.advance(max(played, 0.001))
        self.on_playback_finished(playback_position=played, interrupted=interrupted)

    def _notify(self) -> None:
        still = []
        for predicate, fut in self._waiters:
            if fut.done():
                continue
            if predicate():
                fut.set_result(None)
            else:
                still.append((predicate, fut))
        self._waiters = still


class FakeTextSink(io.TextOutput):
    def __init__(self) -> None:
        super().__init__(label="FakeTextSink", next_in_chain=None)
        self.text = ""
        self.flushes = 0

    async def capture_text(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        self.flushes += 1


# ---------------------------------------------------------------- session harness


@dataclass
class Recorder:
    """Everything the session emitted, in order."""

    events: list[tuple[str, Any]] = field(default_factory=list)
    handles: list[Any] = field(default_factory=list)

    def attach(self, session: AgentSession) -> None:
        for name in (
            "speech_created",
            "agent_state_changed",
            "conversation_item_added",
            "function_tools_executed",
            "metrics_collected",
            "error",
        ):
            session.on(name, self._make(name))

    def _make(self, name: str) -> Callable[[Any], None]:
        def on_event(ev: Any) -> None:
            self.events.append((name, ev))
            if name == "speech_created":
                self.handles.append(ev.speech_handle)

        return on_event

    def of(self, name: str) -> list[Any]:
        return [ev for n, ev in self.events if n == name]


async def start_session(
    agent: Agent,
    *,
    sink: FakeAudioSink | None,
    text_sink: FakeTextSink | None = None,
    recorder: Recorder | None = None,
) -> AgentSession:
    session = offline_session(sample_rate=SAMPLE_RATE)
    if recorder is not None:
        recorder.attach(session)
    if sink is not None:
        session.output.audio = sink
    session.output.transcription = text_sink or FakeTextSink()
    await session.start(agent)
    return session
