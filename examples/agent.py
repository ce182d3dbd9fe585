"""A voice agent that acknowledges, then answers, with a SpeechHandle for each.

For a real LiveKit deployment. The llm_node says a short acknowledgement, yields a
SegmentBreak, then streams the model's answer: the answer plays under its own SpeechHandle,
announced through ``speech_created``. A background task starts the moment each response's
audio starts playing (``await handle.playout_started``), not after a guessed delay.

Run it with livekit-agents' own CLI (needs LIVEKIT_URL, LIVEKIT_API_KEY, LIVEKIT_API_SECRET;
STT, LLM and TTS go through LiveKit Inference with the same credentials):

    python examples/agent.py start     # join rooms on your LiveKit server
    python examples/agent.py console   # talk to it in the terminal (needs audio devices)

``dev`` still exists but no longer reloads (since livekit-agents 1.6.0), and later releases
deprecate ``dev`` and ``console``: for development with hot reload use the LiveKit CLI,
``lk agent dev``.

Mint a token to join the test room from a client with ``python examples/token.py``.
"""

from __future__ import annotations

import os
import sys

# this folder holds token.py, which as sys.path[0] would shadow the standard library's
# `token` module (imported by logging through tokenize): take the folder off the path
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _HERE]

import asyncio
import logging
import time
from collections.abc import AsyncIterable
from typing import Any

import livekit_segments
from livekit.agents import (
    Agent,
    AgentServer,
    AgentSession,
    FlushSentinel,
    JobContext,
    ModelSettings,
    cli,
    inference,
    llm,
)
from livekit.agents.voice import SpeechHandle
from livekit.agents.voice.events import SpeechCreatedEvent
from livekit_segments import SegmentBreak

# at module top level: this also runs in every job process AgentServer starts
livekit_segments.install()

logger = logging.getLogger("segments-example")


class AckThenAnswer(Agent):
    def __init__(self) -> None:
        super().__init__(
            instructions=(
                "You are a friendly voice assistant. Answer in one or two short sentences, "
                "in plain words, with no markdown or emojis."
            )
        )

    async def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncIterable[llm.ChatChunk | str | FlushSentinel]:
        # response 1: plays at once while the model is still thinking
        yield "Good question, one moment."
        # response 2: the model's answer, under a SpeechHandle of its own
        yield SegmentBreak(id="answer", userdata={"model": "openai/gpt-4.1-mini"})
        async for chunk in Agent.default.llm_node(self, chat_ctx, tools, model_settings):
            yield chunk


async def on_response_playing(handle: SpeechHandle) -> None:
    """The app's background work, started exactly when a response becomes audible."""
    started_at = await livekit_segments.playout_started(handle)
    if started_at is None:
        return  # this response never played (interrupted before its first frame)
    brk = livekit_segments.segment_break(handle)
    logger.info(
        "response started playing",
        extra={
            "speech_id": handle.id,
            "segment_index": livekit_segments.segment_index(handle),
            "segment_id": brk.id if brk else None,
            "delay_ms": round((time.time() - started_at) * 1000, 1),
        },
    )


# the worker's health-check HTTP port (upstream's default for `start` is 8081); set
# AGENT_HTTP_PORT to run several workers on one host, or 0 for any free port
server = AgentServer(port=int(os.environ.get("AGENT_HTTP_PORT", "8081")))


@server.rtc_session()
async def entrypoint(ctx: JobContext) -> None:
    session: AgentSession[Any] = AgentSession(
        stt=inference.STT("deepgram/nova-3"),
        llm=inference.LLM("openai/gpt-4.1-mini"),
        tts=inference.TTS("cartesia/sonic-2"),
    )
    watchers: set[asyncio.Task[None]] = set()

    @session.on("speech_created")
    def _on_speech_created(ev: SpeechCreatedEvent) -> None:
        task = asyncio.create_task(on_response_playing(ev.speech_handle))
        watchers.add(task)  # keep a reference until it is done
        task.add_done_callback(watchers.discard)

    await session.start(agent=AckThenAnswer(), room=ctx.room)
    session.generate_reply(instructions="Greet the user and ask how you can help.")


if __name__ == "__main__":
    cli.run_app(server)
