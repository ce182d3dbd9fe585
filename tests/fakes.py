"""What only this suite needs: a scripted `llm_node` (tool calls, failures and pauses at
chosen points), a TTS node that makes real audio frames and can fail or stay silent on chosen
text, and a recorder of every session event.

The generic doubles (offline session, virtual-clock audio output, text output) are the public
kit in `livekit_segments.testing`; the suite uses them as a user would.
"""

from __future__ import annotations

import asyncio
import math
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
from livekit_segments.testing import RecordingTextOutput, VirtualAudioOutput, offline_session

SAMPLE_RATE = 24000
FRAME_MS = 10


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
    sink: VirtualAudioOutput | None,
    text_sink: RecordingTextOutput | None = None,
    recorder: Recorder | None = None,
) -> AgentSession:
    session = offline_session(
        sample_rate=SAMPLE_RATE, audio=sink, transcription=text_sink or RecordingTextOutput()
    )
    if recorder is not None:
        recorder.attach(session)
    await session.start(agent)
    return session
