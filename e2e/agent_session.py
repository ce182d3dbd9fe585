"""The agent of the harness: a real, offline `AgentSession` speaking with espeak-ng into an
`rtc.AudioSource` paced like RoomIO's (200 ms queue), whose output is forwarded to the page.

The forwarded audio is what leaves the source: each frame is sent to the page at the moment
the source starts playing it (`TappedRecording`), as the native queue would hand it to
WebRTC. The page feeds it into the sending peer connection at once.

Turns: several replies, each with several responses (one `SpeechHandle` per response, by
`SegmentBreak`): responses back to back (no model wait between them) and one after a slow
second model call (as after a tool call), with a pause between turns.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

import livekit_segments
from livekit import rtc
from livekit.agents.voice.events import SpeechCreatedEvent
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments.demo.agent import DemoAgent, Response
from livekit_segments.demo.espeak import EspeakSynth, find_espeak
from livekit_segments.demo.realtime_sink import PlayoutRecording, RealtimeAudioSink
from livekit_segments.demo.synth import frames_from_pcm
from livekit_segments.testing import offline_session

__all__ = ["SAMPLE_RATE", "TURNS", "AgentRun", "ResponseRecord", "TappedRecording", "run_agent"]

SAMPLE_RATE = 24000
QUEUE_SIZE_MS = 200  # RoomIO's rtc.AudioSource queue

TURNS: tuple[tuple[Response, ...], ...] = (
    (
        Response("ack", "Good question, let me check.", think=0.15),
        Response("answer", "Sunlight takes about eight minutes to reach us.", think=0.0),
    ),
    (
        Response("hold", "One moment, I am looking that up.", think=0.1),
        # a slow second model call, as after a tool call
        Response("after-tool", "The light you see left the Sun a while ago.", think=3.0),
    ),
    (
        Response("yes", "Yes.", think=0.05),
        Response("detail", "About eight minutes and twenty seconds.", think=0.0),
        Response("more", "Anything else?", think=0.0),
    ),
)
"""The replies the agent gives, in turn (cycled): back-to-back and slow-second-call cases."""
_PAUSE_BETWEEN_TURNS = 1.5  # the user's side of the conversation
_TRIM_LEVEL = 33  # -60 dBFS: below this, espeak's tail is silence
_KEEP_TAIL_MS = 10


class TrimmedEspeak(EspeakSynth):
    """espeak-ng without the ~0.3 s of silence it puts after every sentence.

    With it, a response that follows another with no model wait starts right where the
    previous one's sound ends: back to back, with no silence for an onset to show.
    The leading silence (a few ms) is kept: it is part of the response's first frame.
    """

    async def synthesize(self, text: str) -> AsyncIterator[rtc.AudioFrame]:
        audio = await self.synthesize_wav(text)
        x = np.frombuffer(audio.pcm, "<i2")
        loud = np.flatnonzero(np.abs(x.astype(np.int32)) >= _TRIM_LEVEL)
        keep = int(loud[-1]) + 1 + audio.sample_rate * _KEEP_TAIL_MS // 1000 if loud.size else 0
        pcm = x[: keep * audio.num_channels].tobytes()
        for frame in frames_from_pcm(
            pcm, sample_rate=audio.sample_rate, num_channels=audio.num_channels
        ):
            yield frame


class TappedRecording(PlayoutRecording):
    """A `PlayoutRecording` that also hands each frame on, with the time it starts playing.

    The frame goes out at once (the source accepts it up to 200 ms ahead); the page plays
    it at its time, plus a constant lead. Audio cut by ``clear_buffer`` is recalled.
    """

    def __init__(self, sample_rate: int, num_channels: int, out: FrameOut) -> None:
        super().__init__(sample_rate, num_channels)
        self._out = out

    def add(self, start: float, frame: rtc.AudioFrame) -> float:
        placed = super().add(start, frame)
        self._out.send_frame(placed, frame.data.tobytes())
        return placed

    def cut(self, at: float) -> None:
        super().cut(at)
        self._out.send_clear(at)


@dataclass
class ResponseRecord:
    """One response: its handle and what the sink did with it (``time.time()`` clock)."""

    index: int
    response: Response
    handle: SpeechHandle
    created_at: float
    """Seconds after the session's start."""
    playout_started: float | None = None
    sink_started: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """What the agent-side plug-in recorded for it (fired/measured times)."""


@dataclass
class AgentRun:
    """What the session did."""

    started_at: float
    ended_at: float
    responses: list[ResponseRecord]
    sink: RealtimeAudioSink
    errors: list[str]


class FrameOut(Protocol):
    """Where the agent's audio goes (the page server)."""

    def send_frame(self, start: float, pcm: bytes) -> None:
        """A frame that starts playing at ``start`` (``time.time()`` clock)."""

    def send_clear(self, at: float) -> None:
        """Audio from ``at`` on was cleared from the source: it never plays."""


OnResponse = Callable[[ResponseRecord], None]
"""Called for each response as it is created (the agent-side plug-in hooks in here)."""


async def run_agent(
    out: FrameOut,
    *,
    keep_going: Callable[[float, list[ResponseRecord]], bool],
    on_started: Callable[[Any], Any] | None = None,
    on_response: OnResponse | None = None,
) -> AgentRun:
    """Run turns until ``keep_going(seconds_since_start, responses)`` says stop.

    Args:
        out: receives each frame, with the time the source starts playing it.
        keep_going: asked before each turn.
        on_started: called with the started session (the agent side plugs in here); may
            return an awaitable.
        on_response: called for each response as ``speech_created`` announces it.
    """
    livekit_segments.install()
    espeak = find_espeak()
    if espeak is None:
        raise RuntimeError("espeak-ng is not installed: run scripts/setup (it apt-installs it)")
    sink = RealtimeAudioSink(sample_rate=SAMPLE_RATE, queue_size_ms=QUEUE_SIZE_MS)
    sink.recording = TappedRecording(SAMPLE_RATE, 1, out)
    responses: list[ResponseRecord] = []
    errors: list[str] = []
    session = offline_session(sample_rate=SAMPLE_RATE, audio=sink)
    started_at = time.time()

    def on_speech_created(ev: SpeechCreatedEvent) -> None:
        turn = TURNS[(len(responses_by_turn) - 1) % len(TURNS)]
        k = sum(1 for r in responses if r.extra.get("turn") == len(responses_by_turn) - 1)
        rec = ResponseRecord(
            index=len(responses),
            response=turn[min(k, len(turn) - 1)],
            handle=ev.speech_handle,
            created_at=time.time() - started_at,
            extra={"turn": len(responses_by_turn) - 1},
        )
        responses.append(rec)
        fut = livekit_segments.playout_started(ev.speech_handle)

        def on_playout(f: asyncio.Future[float | None]) -> None:
            if not f.cancelled() and f.exception() is None:
                rec.playout_started = f.result()

        fut.add_done_callback(on_playout)
        if on_response is not None:
            on_response(rec)

    responses_by_turn: list[int] = []
    session.on("speech_created", on_speech_created)
    agent = DemoAgent(TURNS[0], TrimmedEspeak(espeak))
    try:
        await session.start(agent)
        if on_started is not None:
            res = on_started(session)
            if asyncio.iscoroutine(res):
                await res
        started_at = time.time()
        while keep_going(time.time() - started_at, responses):
            agent.responses = TURNS[len(responses_by_turn) % len(TURNS)]
            responses_by_turn.append(len(responses))
            turn = session.generate_reply(user_input="Tell me about sunlight.")
            try:
                await asyncio.wait_for(_settled(turn, responses), 60)
            except asyncio.TimeoutError:
                errors.append("a turn did not finish within 60 s")
                break
            await asyncio.sleep(_PAUSE_BETWEEN_TURNS)
    finally:
        ended_at = time.time()
        await session.aclose()
        await sink.aclose()
    for rec, seg in zip(responses, sink.segments, strict=False):
        rec.sink_started = seg.started_at
    if len(responses) != len(sink.segments):
        errors.append(
            f"{len(responses)} handles but {len(sink.segments)} sink segments: "
            "responses cannot be paired with their audio"
        )
    return AgentRun(started_at, ended_at, responses, sink, errors)


async def _settled(turn: SpeechHandle, responses: list[ResponseRecord]) -> None:
    await turn
    for rec in list(responses):
        await rec.handle
