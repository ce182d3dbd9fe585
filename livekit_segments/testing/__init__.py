"""Test your own agent's segments, offline and deterministically.

- `offline_session` / `started_session`: an `AgentSession` that needs no API keys, no LiveKit
  server and no microphone.
- `VirtualAudioOutput`: an audio output that plays on a `VirtualClock` and reports
  ``playback_started``/``playback_finished`` with exact timestamps; the test can hold a
  segment before it starts, decide when it has played out, and hold (pause) the output.
- `run_turn` / `start_turn`: drive one user turn and get every `SpeechHandle` it opened, with
  its ``playout_started`` result, segment index and break, plus the agent-state sequence
  (`TurnResult`: ``agent_states``, and ``state_changes`` with old and new states).
- `wait_for_state` / `StateRecorder`: the agent's state changes as futures (e.g. "thinking"
  between two responses, then "speaking" again) and as a record of `StateChange` events;
  ``turn.state_entered(...)`` is the same for one running turn.

Everything is futures: nothing waits on wall-clock time.

Works with the runtime patch (``livekit_segments.install()``) and with a livekit-agents that
supports segments natively. For pytest with pytest-asyncio (0.24 or later), set the event
loop scope of async fixtures in your ``pyproject.toml``; without it pytest-asyncio warns
that ``asyncio_default_fixture_loop_scope`` is unset::

    [tool.pytest.ini_options]
    asyncio_default_fixture_loop_scope = "function"

Example::

    livekit_segments.install()

    @pytest.mark.asyncio
    async def test_answer_gets_its_own_handle() -> None:
        audio = VirtualAudioOutput()
        async with started_session(MyAgent(), audio=audio) as session:
            result = await run_turn(session, "What is six times seven?")
        assert result.break_ids == [None, "answer"]
        assert result.playout_started == audio.started_times
"""

from .audio import PlayedSegment, RecordingTextOutput, VirtualAudioOutput, VirtualClock
from .session import (
    DEFAULT_SAMPLE_RATE,
    NodeOnlyLLM,
    OfflineTTS,
    offline_session,
    started_session,
)
from .states import StateChange, StateRecorder, wait_for_state
from .turn import HandleResult, RunningTurn, TurnResult, run_turn, start_turn

__all__ = [
    "DEFAULT_SAMPLE_RATE",
    "HandleResult",
    "NodeOnlyLLM",
    "OfflineTTS",
    "PlayedSegment",
    "RecordingTextOutput",
    "RunningTurn",
    "StateChange",
    "StateRecorder",
    "TurnResult",
    "VirtualAudioOutput",
    "VirtualClock",
    "offline_session",
    "run_turn",
    "start_turn",
    "started_session",
    "wait_for_state",
]
