"""Runs one reply of the demo agent in a real, offline `AgentSession`, and records it."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field

import livekit_segments
from livekit.agents.voice.events import SpeechCreatedEvent
from livekit.agents.voice.speech_handle import SpeechHandle

from ..offline_models import offline_session
from ..release_compat import speech_error
from .agent import QUESTION, DemoAgent, Response, TranscriptCollector
from .realtime_sink import RealtimeAudioSink
from .synth import Synthesizer

__all__ = ["HandleRecord", "TurnResult", "run_turn"]

logger = logging.getLogger("livekit.segments.demo")

SAMPLE_RATE = 24000
QUEUE_SIZE_MS = 200  # what RoomIO gives its rtc.AudioSource
_TURN_TIMEOUT = 60.0  # a stuck turn fails the demo instead of hanging it


@dataclass
class HandleRecord:
    """A `SpeechHandle` announced through ``speech_created``, and when that happened."""

    handle: SpeechHandle
    created_at: float
    """``time.time()`` when ``speech_created`` fired for it."""


@dataclass
class TurnResult:
    """Everything one reply produced, on the ``time.time()`` clock."""

    responses: tuple[Response, ...]
    synth_name: str
    started_at: float
    """When ``generate_reply`` was called: the turn's zero."""
    ended_at: float
    handles: list[HandleRecord]
    sink: RealtimeAudioSink
    transcript: str
    interrupt_after: float | None = None
    """``--interrupt-at``: seconds after the turn's start."""
    interrupted_at: float | None = None
    """When the interrupt actually ran, if it did."""
    errors: list[str] = field(default_factory=list)


async def run_turn(
    responses: tuple[Response, ...],
    synth: Synthesizer,
    *,
    interrupt_after: float | None = None,
    question: str = QUESTION,
) -> TurnResult:
    """Start a session, ask ``question``, let the agent answer, and close the session.

    Args:
        responses: what the agent says, one segment (and handle) per response.
        synth: what turns the text into audio.
        interrupt_after: interrupt the reply this many seconds after it was requested.
        question: the user's turn that the reply answers.
    """
    livekit_segments.install()
    loop = asyncio.get_running_loop()
    sink = RealtimeAudioSink(sample_rate=SAMPLE_RATE, queue_size_ms=QUEUE_SIZE_MS)
    transcript = TranscriptCollector()
    handles: list[HandleRecord] = []
    errors: list[str] = []

    def on_speech_created(ev: SpeechCreatedEvent) -> None:
        handles.append(HandleRecord(ev.speech_handle, time.time()))

    session = offline_session(sample_rate=SAMPLE_RATE)
    session.on("speech_created", on_speech_created)
    session.output.audio = sink
    session.output.transcription = transcript
    interrupted_at: float | None = None
    interrupt_fut: asyncio.Future[None] | None = None
    timer: asyncio.TimerHandle | None = None
    try:
        await session.start(DemoAgent(responses, synth))

        def interrupt() -> None:
            nonlocal interrupted_at, interrupt_fut
            interrupted_at = time.time()
            try:
                interrupt_fut = session.interrupt()
            except RuntimeError as e:  # e.g. the reply does not allow interruptions
                errors.append(f"session.interrupt() refused: {e}")

        started_at = time.time()
        turn = session.generate_reply(user_input=question)
        if interrupt_after is not None:
            timer = loop.call_later(interrupt_after, interrupt)
        try:
            await asyncio.wait_for(_settled(turn, handles), _TURN_TIMEOUT)
        except asyncio.TimeoutError:
            errors.append(f"the turn did not finish within {_TURN_TIMEOUT:.0f} s")
        if interrupt_fut is not None:
            await interrupt_fut
        ended_at = time.time()
        error = speech_error(turn)
        if error is not None:
            errors.append(f"the turn failed: {error!r}")
    finally:
        if timer is not None:
            timer.cancel()
        await session.aclose()
        await sink.aclose()
    return TurnResult(
        responses=responses,
        synth_name=synth.name,
        started_at=started_at,
        ended_at=ended_at,
        handles=handles,
        sink=sink,
        transcript=transcript.text,
        interrupt_after=interrupt_after,
        interrupted_at=interrupted_at,
        errors=errors,
    )


async def _settled(turn: SpeechHandle, handles: list[HandleRecord]) -> None:
    await turn
    # segment handles end with their segment, at the latest when the turn does
    for record in list(handles):
        await record.handle
