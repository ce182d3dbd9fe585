"""An offline `AgentSession` for agents that override ``llm_node`` and ``tts_node``.

`AgentSession` needs an LLM to run a reply, and a TTS for ``say()`` and to declare the output
format, even when the agent produces text and audio itself. The demo, the benchmarks and the
tests all run sessions like that, with no microphone, through `offline_session`.
"""

from __future__ import annotations

from typing import Any

from livekit.agents import NOT_GIVEN, AgentSession, NotGivenOr, llm, tts
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, APIConnectOptions

__all__ = ["NodeOnlyLLM", "NodeOnlyTTS", "offline_session"]


class NodeOnlyLLM(llm.LLM[Any]):
    """An LLM that is never called: the agent's ``llm_node`` answers."""

    def chat(
        self,
        *,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[llm.ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> llm.LLMStream:
        """Never called: raises, since the agent's ``llm_node`` should have answered."""
        raise RuntimeError("NodeOnlyLLM is a placeholder: override the agent's llm_node")


class NodeOnlyTTS(tts.TTS[Any]):
    """Declares the audio format (mono, ``sample_rate``); the agent's ``tts_node`` speaks."""

    def __init__(self, sample_rate: int) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=False),
            sample_rate=sample_rate,
            num_channels=1,
        )

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        """Never called: raises, since the agent's ``tts_node`` should have synthesized."""
        raise RuntimeError("NodeOnlyTTS is a placeholder: override the agent's tts_node")


def offline_session(*, sample_rate: int) -> AgentSession[None]:
    """A session with the placeholders, no turn detection and nothing that needs a microphone."""
    return AgentSession(
        llm=NodeOnlyLLM(),
        tts=NodeOnlyTTS(sample_rate),
        turn_handling={
            "turn_detection": None,
            # no microphone: no false interruption to resume (and test sinks cannot pause)
            "interruption": {"resume_false_interruption": False},
        },
        # no echo-cancellation warm-up either: it would delay interruptions
        aec_warmup_duration=None,
    )
