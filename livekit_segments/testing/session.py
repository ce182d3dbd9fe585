"""An offline `AgentSession`: no API keys, no LiveKit server, no microphone.

`AgentSession` needs an LLM to run a reply and a TTS to speak it, even when the agent's own
``llm_node`` writes the text. `offline_session` gives it stand-ins: `NodeOnlyLLM`, which is
never called because the agent's ``llm_node`` answers, and `OfflineTTS`, which turns text
into silent audio of a length that follows the text, so an agent that keeps upstream's
``tts_node`` plays through an audio output like any other.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from livekit.agents import (
    NOT_GIVEN,
    Agent,
    AgentSession,
    NotGivenOr,
    llm as lk_llm,
    tts as lk_tts,
    utils,
)
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions
from livekit.agents.voice import io

__all__ = [
    "DEFAULT_SAMPLE_RATE",
    "NodeOnlyLLM",
    "OfflineTTS",
    "offline_session",
    "started_session",
]

DEFAULT_SAMPLE_RATE = 24000


class NodeOnlyLLM(lk_llm.LLM[Any]):
    """An LLM that is never called: the agent's ``llm_node`` answers."""

    def chat(
        self,
        *,
        chat_ctx: lk_llm.ChatContext,
        tools: list[lk_llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[lk_llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> lk_llm.LLMStream:
        """Never called: raises, since the agent's ``llm_node`` should have answered."""
        raise RuntimeError(
            "the offline session has no LLM: override the agent's llm_node, "
            "or pass llm=<your fake LLM> to offline_session()"
        )


class OfflineTTS(lk_tts.TTS[Any]):
    """A TTS that synthesizes silence: ``seconds_per_char`` seconds of mono audio per character.

    Deterministic and instant, so the length of each segment's audio depends only on its text.
    """

    def __init__(
        self, *, sample_rate: int = DEFAULT_SAMPLE_RATE, seconds_per_char: float = 0.01
    ) -> None:
        if seconds_per_char <= 0:
            raise ValueError(f"seconds_per_char must be > 0, got {seconds_per_char!r}")
        super().__init__(
            capabilities=lk_tts.TTSCapabilities(streaming=False),
            sample_rate=sample_rate,
            num_channels=1,
        )
        self.seconds_per_char = seconds_per_char

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> lk_tts.ChunkedStream:
        """Silent audio for ``text`` (at least one sample)."""
        return _SilentStream(tts=self, input_text=text, conn_options=conn_options)


class _SilentStream(lk_tts.ChunkedStream):
    async def _run(self, output_emitter: lk_tts.AudioEmitter) -> None:
        offline = self._tts
        assert isinstance(offline, OfflineTTS)
        seconds = len(self._input_text) * offline.seconds_per_char
        samples = max(1, round(seconds * offline.sample_rate))
        output_emitter.initialize(
            request_id=utils.shortuuid(),
            sample_rate=offline.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
        )
        output_emitter.push(bytes(2 * samples))
        output_emitter.flush()


def offline_session(
    *,
    sample_rate: int | None = None,
    audio: io.AudioOutput | None = None,
    transcription: io.TextOutput | None = None,
    llm: lk_llm.LLM[Any] | None = None,
    tts: lk_tts.TTS[Any] | None = None,
) -> AgentSession[None]:
    """An `AgentSession` that runs without keys, server or microphone (not started yet).

    It has no turn detection and no audio input: drive it with ``generate_reply()``,
    ``say()`` or `run_turn`. Start it with ``await session.start(agent)`` and close it with
    ``await session.aclose()``, or use `started_session`, which does both.

    Args:
        sample_rate: the audio format the TTS declares; defaults to ``audio.sample_rate`` or
            24000 Hz.
        audio: the audio output (e.g. a `VirtualAudioOutput`); ``None`` leaves the session
            without one (text-only replies).
        transcription: the transcription output (e.g. a `RecordingTextOutput`).
        llm: the LLM behind upstream's default ``llm_node``; by default `NodeOnlyLLM`,
            for agents whose own ``llm_node`` answers.
        tts: the TTS behind upstream's default ``tts_node``; by default `OfflineTTS`.
    """
    if sample_rate is None:
        sample_rate = (audio.sample_rate if audio is not None else None) or DEFAULT_SAMPLE_RATE
    session: AgentSession[None] = AgentSession(
        llm=llm if llm is not None else NodeOnlyLLM(),
        tts=tts if tts is not None else OfflineTTS(sample_rate=sample_rate),
        turn_handling={
            "turn_detection": None,
            # no microphone: no false interruption to resume
            "interruption": {"resume_false_interruption": False},
        },
        # no echo-cancellation warm-up either: it would delay interruptions
        aec_warmup_duration=None,
    )
    if audio is not None:
        session.output.audio = audio
    if transcription is not None:
        session.output.transcription = transcription
    return session


@asynccontextmanager
async def started_session(
    agent: Agent,
    *,
    audio: io.AudioOutput | None = None,
    transcription: io.TextOutput | None = None,
    llm: lk_llm.LLM[Any] | None = None,
    tts: lk_tts.TTS[Any] | None = None,
) -> AsyncIterator[AgentSession[None]]:
    """`offline_session` started with ``agent``; closed (``aclose()``) when the block exits.

    ::

        async with started_session(MyAgent(), audio=VirtualAudioOutput()) as session:
            result = await run_turn(session, "Hi")
    """
    session = offline_session(audio=audio, transcription=transcription, llm=llm, tts=tts)
    try:
        await session.start(agent)
        yield session
    finally:
        await session.aclose()
