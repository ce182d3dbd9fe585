"""The demo's agent: a scripted ``llm_node`` with three responses, and a ``tts_node``.

The session around it is a real `AgentSession`; only the models are local. The LLM is a
placeholder that is never called (the agent overrides ``llm_node``), and the TTS declares the
output format while the agent's ``tts_node`` does the synthesis.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterable, AsyncIterator
from dataclasses import dataclass

from livekit import rtc
from livekit.agents import Agent, FlushSentinel, ModelSettings, llm
from livekit.agents.voice import io

from ..segment_break import SegmentBreak
from .synth import Synthesizer

__all__ = [
    "DemoAgent",
    "FULL_SCRIPT",
    "QUESTION",
    "Response",
    "SHORT_SCRIPT",
    "TranscriptCollector",
]

QUESTION = "How long does sunlight take to reach the Earth?"


@dataclass(frozen=True)
class Response:
    """One response of the reply: a segment with its own `SpeechHandle`."""

    id: str
    text: str
    think: float
    """Seconds the scripted LLM waits before this response's first token."""


FULL_SCRIPT: tuple[Response, ...] = (
    Response("ack", "Good question, let me check.", think=0.15),
    Response("answer", "Sunlight takes about eight minutes to reach us.", think=0.4),
    Response("follow_up", "Shall I explain why?", think=0.1),
)
"""The three responses the demo agent gives: about five seconds of audio."""

SHORT_SCRIPT: tuple[Response, ...] = (
    Response("ack", "Sure.", think=0.05),
    Response("answer", "Eight minutes, roughly.", think=0.05),
    Response("follow_up", "More?", think=0.02),
)
"""Shorter responses (about 1.5 s of audio) for quick checks and tests."""

_TOKEN_DELAY = 0.012  # between streamed words, like an LLM's output rate
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class DemoAgent(Agent):
    """Answers with each `Response` in turn, a `SegmentBreak` before every one of them.

    The break before the first response labels segment 0; each later one opens a new
    `SpeechHandle`. The break's ``userdata`` is the `Response`, so a handle finds its text.
    """

    def __init__(self, responses: tuple[Response, ...], synth: Synthesizer) -> None:
        super().__init__(instructions="Answer briefly, in short separate responses.")
        self.responses = responses
        self.synth = synth

    async def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncIterator[str | FlushSentinel | llm.ChatChunk]:
        """Stream the scripted responses word by word, separated by `SegmentBreak`s."""
        for response in self.responses:
            yield SegmentBreak(id=response.id, userdata=response)
            await asyncio.sleep(response.think)
            for word in response.text.split(" "):
                yield word + " "
                await asyncio.sleep(_TOKEN_DELAY)

    async def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings
    ) -> AsyncIterator[rtc.AudioFrame]:
        """Synthesize sentence by sentence, as a non-streaming TTS behind a tokenizer does."""
        pending = ""
        async for chunk in text:
            pending += chunk
            *sentences, pending = _SENTENCE_END.split(pending)
            for sentence in sentences:
                async for frame in self.synth.synthesize(sentence):
                    yield frame
        if pending.strip():
            async for frame in self.synth.synthesize(pending.strip()):
                yield frame


class TranscriptCollector(io.TextOutput):
    """A transcription output that keeps the agent's text (what a room would publish)."""

    def __init__(self) -> None:
        super().__init__(label="TranscriptCollector", next_in_chain=None)
        self.text = ""

    async def capture_text(self, text: str) -> None:
        """Append a piece of the transcript."""
        self.text += text

    def flush(self) -> None:
        """Segments end here; nothing is buffered."""
