"""The public testing kit (`livekit_segments.testing`), used as a user would use it.

The agents here override only ``llm_node``; their audio comes from upstream's default
``tts_node`` and the kit's `OfflineTTS`, as it would for a user's own agent.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

import livekit_segments
from livekit.agents import Agent, FlushSentinel, ModelSettings, llm
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments import SegmentBreak
from livekit_segments.testing import (
    OfflineTTS,
    RecordingTextOutput,
    StateChange,
    StateRecorder,
    VirtualAudioOutput,
    VirtualClock,
    run_turn,
    start_turn,
    started_session,
    wait_for_state,
)

needs_exception = pytest.mark.skipif(
    not hasattr(SpeechHandle, "exception"),
    reason="SpeechHandle.exception() appeared in livekit-agents 1.6.5; 1.6.0-1.6.4 do not "
    "record a reply's error on its handle",
)

T0 = 1024.0  # a start time with an exact binary value, so sums below are exact too


class ScriptAgent(Agent):
    """Yields one fixed script per reply; raises ``error`` at the end if given."""

    def __init__(self, *script: str | FlushSentinel, error: Exception | None = None) -> None:
        super().__init__(instructions="kit test agent")
        self.script = script
        self.error = error
        self.chat_ctxs: list[llm.ChatContext] = []

    async def llm_node(
        self, chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: ModelSettings
    ) -> AsyncIterator[str | FlushSentinel]:
        self.chat_ctxs.append(chat_ctx.copy())
        for item in self.script:
            yield item
        if self.error is not None:
            raise self.error


THREE = ScriptAgent(
    "One moment.",
    SegmentBreak(id="answer", userdata={"source": "rag"}),
    "The answer is 42.",
    SegmentBreak(id="follow_up"),
    "Anything else?",
)


def three() -> ScriptAgent:
    return ScriptAgent(*THREE.script)


# ------------------------------------------------------------------ run_turn


async def test_run_turn_collects_every_handle_with_its_signal_and_the_states() -> None:
    audio = VirtualAudioOutput(clock=VirtualClock(T0))
    text = RecordingTextOutput()
    agent = three()
    async with started_session(agent, audio=audio, transcription=text) as session:
        result = await run_turn(session, "What is six times seven?")

    assert result.handle is result.handles[0].handle
    assert [h.segment_index for h in result.handles] == [0, 1, 2]
    assert result.break_ids == [None, "answer", "follow_up"]
    assert result.handles[1].segment_break is THREE.script[1]
    assert result.playout_started == audio.started_times
    assert len(audio.started_times) == 3
    assert all(h.played and not h.interrupted and h.handle.done() for h in result.handles)
    assert result.agent_states == ["thinking", "speaking", "listening"]
    assert result.error is None and not result.interrupted
    # the user's text reached the agent, and every response was spoken
    last = agent.chat_ctxs[0].items[-1]
    assert last.type == "message" and last.text_content == "What is six times seven?"
    assert text.text == "One moment.The answer is 42.Anything else?"


async def test_start_turn_lets_the_test_act_while_the_turn_runs() -> None:
    audio = VirtualAudioOutput(clock=VirtualClock(T0), finish="manual")
    async with started_session(three(), audio=audio) as session:
        turn = start_turn(session, "Hi")
        await audio.segment_started(0)
        assert turn.agent_states == ["thinking", "speaking"]
        assert turn.handles == [turn.handle]
        audio.finish_playback()
        # the next segment's handle is announced once the previous segment has played out
        second = await turn.handle_created(1)
        assert second.id == f"{turn.handle.id}_seg1"
        await audio.segment_started(1)
        await audio.when(lambda: audio.segments[1].flushed)
        audio.clock.advance(0.0625)
        second.interrupt()
        never = turn.handle_created(2)  # the turn is interrupted: no third handle
        result = await turn.result()

    assert never.cancelled()
    assert [h.segment_index for h in result.handles] == [0, 1]
    assert [h.interrupted for h in result.handles] == [True, True]  # the turn ends with it
    assert result.interrupted
    assert result.playout_started == audio.started_times
    assert audio.segments[1].interrupted
    assert audio.segments[1].playback_position == 0.0625
    assert result.agent_states[-1] == "listening"
    assert await turn.result() is result  # settled once


async def test_a_segment_that_never_played_is_reported_cancelled() -> None:
    audio = VirtualAudioOutput(clock=VirtualClock(T0), start="manual")
    async with started_session(three(), audio=audio) as session:
        turn = start_turn(session, "Hi")
        await audio.segment_captured(0)
        turn.handle.interrupt()
        result = await turn.result()

    (only,) = result.handles
    assert only.playout_started is None and not only.played
    assert only.interrupted and result.interrupted
    assert audio.segments[0].started_at is None and audio.segments[0].interrupted
    assert "speaking" not in result.agent_states


async def test_an_llm_node_error_ends_the_turn() -> None:
    agent = ScriptAgent("One.", SegmentBreak(id="b"), "Two.", error=RuntimeError("model failed"))
    audio = VirtualAudioOutput()
    async with started_session(agent, audio=audio) as session:
        result = await run_turn(session, "Hi")
    assert result.break_ids == [None, "b"]
    assert result.playout_started == audio.started_times
    assert all(h.handle.done() for h in result.handles)


@needs_exception
async def test_an_llm_node_error_is_the_turns_error() -> None:
    boom = RuntimeError("model failed")
    agent = ScriptAgent("One.", SegmentBreak(id="b"), "Two.", error=boom)
    async with started_session(agent, audio=VirtualAudioOutput()) as session:
        result = await run_turn(session, "Hi")
    assert result.error is boom


@needs_exception
async def test_without_an_llm_node_the_error_names_the_fix() -> None:
    async with started_session(Agent(instructions="plain"), audio=VirtualAudioOutput()) as s:
        result = await run_turn(s, "Hi")
    assert isinstance(result.error, RuntimeError)
    assert "override the agent's llm_node" in str(result.error)


async def test_text_only_session() -> None:
    text = RecordingTextOutput()
    async with started_session(three(), transcription=text) as session:
        result = await run_turn(session, "Hi")
    started = [s for s in result.playout_started if s is not None]
    assert [h.segment_index for h in result.handles] == [0, 1, 2]
    assert len(started) == 3 and all(isinstance(s, float) for s in started)
    assert started == sorted(started) and len(set(started)) == 3
    assert text.text == "One moment.The answer is 42.Anything else?"


# ------------------------------------------------------------------ the virtual clock output


async def test_timestamps_are_exact_on_the_virtual_clock() -> None:
    audio = VirtualAudioOutput(clock=VirtualClock(T0))
    async with started_session(three(), audio=audio, tts=OfflineTTS(seconds_per_char=0.01)) as s:
        result = await run_turn(s, "Hi")

    segs = audio.segments
    assert segs[0].started_at == T0  # auto start: the clock has not moved yet
    for prev, nxt in zip(segs, segs[1:], strict=False):
        # each segment starts the moment the previous one has played out
        assert prev.started_at is not None
        assert prev.finished_at == prev.started_at + prev.duration
        assert nxt.started_at == prev.finished_at
    assert audio.clock.now() == segs[-1].finished_at
    # the TTS made 10 ms of audio per character (upstream may add a 10 ms end marker)
    texts = ["One moment.", "The answer is 42.", "Anything else?"]
    for seg, text in zip(segs, texts, strict=True):
        assert len(text) / 100 - 1e-9 <= seg.duration < len(text) / 100 + 0.05
    assert [s.playback_position for s in segs] == [s.duration for s in segs]
    assert result.playout_started == [s.started_at for s in segs]


async def test_manual_start_reports_the_time_the_test_chose() -> None:
    audio = VirtualAudioOutput(clock=VirtualClock(T0), start="manual")
    async with started_session(three(), audio=audio) as session:
        turn = start_turn(session, "Hi")
        await audio.segment_captured(0)
        assert not turn.handle.done() and audio.segments[0].started_at is None
        audio.clock.advance(0.25)
        assert audio.start_playback() == T0 + 0.25
        for n in (1, 2):
            await audio.segment_captured(n)
            audio.clock.advance(0.5)
            audio.start_playback()
        result = await turn.result()
    assert result.playout_started[0] == T0 + 0.25
    assert result.playout_started == audio.started_times


async def test_manual_finish_holds_the_next_segment() -> None:
    audio = VirtualAudioOutput(clock=VirtualClock(T0), finish="manual")
    async with started_session(three(), audio=audio) as session:
        turn = start_turn(session, "Hi")
        await audio.segment_started(0)
        await audio.when(lambda: audio.segments[0].flushed)
        assert audio.playing is audio.segments[0] and not audio.segments[0].finished
        assert len(audio.segments) == 1  # the next segment waits for this one to play out
        audio.finish_playback()
        assert audio.segments[0].finished_at == T0 + audio.segments[0].duration
        await audio.segment_started(1)
        assert audio.segments[1].started_at == audio.segments[0].finished_at
        audio.finish_playback()
        await audio.segment_started(2)
        audio.finish_playback()
        result = await turn.result()
    assert result.playout_started == audio.started_times
    assert not any(h.interrupted for h in result.handles)


async def test_hold_delays_the_start_and_the_end_of_a_segment() -> None:
    audio = VirtualAudioOutput(clock=VirtualClock(T0), finish="manual")
    async with started_session(three(), audio=audio) as session:
        audio.hold()
        turn = start_turn(session, "Hi")
        await audio.segment_captured(0)
        assert audio.held and audio.segments[0].started_at is None
        audio.clock.advance(0.5)
        audio.release()
        assert audio.segments[0].started_at == T0 + 0.5
        await audio.when(lambda: audio.segments[0].flushed)
        # held while playing: the segment ends that much later
        audio.hold()
        audio.clock.advance(0.25)
        audio.finish_playback()  # requested, but held
        assert not audio.segments[0].finished
        audio.release()
        seg = audio.segments[0]
        assert seg.held_for == 0.25
        assert seg.finished_at == T0 + 0.5 + 0.25 + seg.duration
        for n in (1, 2):
            await audio.segment_started(n)
            audio.finish_playback()
        result = await turn.result()
    assert result.playout_started[0] == T0 + 0.5
    assert result.playout_started == audio.started_times


async def test_interrupt_during_the_first_segment_reports_the_position() -> None:
    audio = VirtualAudioOutput(clock=VirtualClock(T0), finish="manual")
    async with started_session(three(), audio=audio) as session:
        turn = start_turn(session, "Hi")
        await audio.segment_started(0)
        # all of it captured (0.11 s), so the position is the clock's, not the audio's end
        await audio.when(lambda: audio.segments[0].flushed)
        audio.clock.advance(0.0625)
        turn.handle.interrupt()
        result = await turn.result()
    seg = audio.segments[0]
    assert (seg.started_at, seg.interrupted, seg.playback_position) == (T0, True, 0.0625)
    assert seg.finished_at == T0 + 0.0625
    assert [h.playout_started for h in result.handles] == [T0]
    assert result.interrupted


# ------------------------------------------------------------------ bad input


def test_bad_arguments_fail_with_a_clear_message() -> None:
    with pytest.raises(ValueError, match="'auto' or 'manual'"):
        VirtualAudioOutput(start="later")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="cannot go back"):
        VirtualClock(T0).advance(-1)
    with pytest.raises(ValueError, match="seconds_per_char must be > 0"):
        OfflineTTS(seconds_per_char=0)


async def test_driving_the_output_out_of_order_says_what_to_await() -> None:
    audio = VirtualAudioOutput()
    with pytest.raises(RuntimeError, match=r"await segment_captured\(n\) first"):
        audio.start_playback()
    with pytest.raises(RuntimeError, match=r"await segment_started\(n\) first"):
        audio.finish_playback()


async def test_run_turn_refuses_an_output_that_would_never_play() -> None:
    audio = VirtualAudioOutput(finish="manual")
    async with started_session(three(), audio=audio) as session:
        with pytest.raises(ValueError, match=r"use start_turn\(\) and drive the output"):
            await run_turn(session, "Hi")
        assert audio.segments == []  # refused before asking for a reply


@pytest.mark.runtime_only
async def test_without_install_the_result_says_to_call_it() -> None:
    async with started_session(three(), audio=VirtualAudioOutput()) as session:
        with pytest.raises(RuntimeError, match=r"call livekit_segments.install\(\) at startup"):
            await run_turn(session, "Hi")


# ------------------------------------------------------------------ the README example


def readme_section() -> str:
    readme = (Path(__file__).parent.parent / "README.md").read_text()
    return readme.split("\n## Test your own agent\n", 1)[1].split("\n## ", 1)[0]


def readme_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", readme_section(), flags=re.S)
    assert len(blocks) == 1, "the section has exactly one python example"
    return str(blocks[0])


LOOP_SCOPE_UNSET = 'The configuration option "asyncio_default_fixture_loop_scope" is unset'


def pytest_configs() -> dict[str, str]:
    """The pytest configuration the docs give for the example, by where it is shown."""
    import livekit_segments.testing as kit

    # a literal block of the docstring: indented lines after the "::" paragraph
    blocks = re.findall(r"^( +\[tool\.pytest.*\n(?: +\S.*\n)*)", kit.__doc__ or "", re.M)
    configs = {"the kit's docstring": "".join(textwrap.dedent(b) for b in blocks)}
    readme = re.findall(r"```toml\n(.*?)```", readme_section(), flags=re.S)
    assert readme, "the README's testing section shows no pytest configuration"
    configs["README.md"] = "".join(readme)
    return configs


def run_pytest(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # the example imports the livekit_segments under test, wherever this process found it
    package_root = str(Path(livekit_segments.__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
        cwd=project,
        env={**os.environ, "PYTHONPATH": pythonpath},
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("shown_in", list(pytest_configs()))
def test_the_readme_example_passes_without_warnings(shown_in: str, tmp_path: Path) -> None:
    """The example, in a project configured as the docs say, passes with warnings as errors."""
    config = pytest_configs()[shown_in]
    assert "asyncio_default_fixture_loop_scope" in config
    (tmp_path / "pyproject.toml").write_text(config)
    (tmp_path / "test_my_agent.py").write_text(readme_example())

    proc = run_pytest(tmp_path, "-W", "error", "test_my_agent.py")

    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert re.search(r"\b[1-9]\d* passed\b", proc.stdout), proc.stdout
    assert "failed" not in proc.stdout and "skipped" not in proc.stdout
    assert "warning" not in output.lower()


def test_without_the_configuration_the_example_warns(tmp_path: Path) -> None:
    """What the configuration is for: pytest-asyncio's warning in an unconfigured project."""
    (tmp_path / "test_my_agent.py").write_text(readme_example())
    proc = run_pytest(tmp_path, "test_my_agent.py")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert LOOP_SCOPE_UNSET in proc.stdout + proc.stderr


def test_this_repository_sets_the_loop_scope(pytestconfig: pytest.Config) -> None:
    assert pytestconfig.getini("asyncio_default_fixture_loop_scope") == "function"


# ------------------------------------------------------------------ agent states


class GatedAgent(Agent):
    """Says an acknowledgement, then waits for ``gate`` before the answer: a slow model call."""

    def __init__(self) -> None:
        super().__init__(instructions="kit test agent")
        self.gate = asyncio.Event()

    async def llm_node(
        self, chat_ctx: llm.ChatContext, tools: list[llm.Tool], model_settings: ModelSettings
    ) -> AsyncIterator[str | FlushSentinel]:
        yield "One moment."
        yield SegmentBreak(id="answer")
        await self.gate.wait()
        yield "The answer is 42."


def pairs(changes: list[StateChange]) -> list[tuple[str, str]]:
    return [(c.old_state, c.new_state) for c in changes]


THINK_BETWEEN = [
    ("listening", "thinking"),
    ("thinking", "speaking"),
    ("speaking", "thinking"),  # the acknowledgement played; the answer is not ready yet
    ("thinking", "speaking"),
    ("speaking", "listening"),
]


async def test_wait_for_state_sees_thinking_between_responses() -> None:
    agent = GatedAgent()
    audio = VirtualAudioOutput(clock=VirtualClock(T0))
    async with started_session(agent, audio=audio) as session:
        with StateRecorder(session) as recorder:
            thinking = wait_for_state(session, "thinking", old_state="speaking")
            speaking = wait_for_state(session, "speaking")
            turn = start_turn(session, "Hi")

            first = await speaking  # the acknowledgement's first frame
            assert (first.old_state, first.new_state) == ("thinking", "speaking")
            between = await thinking
            assert audio.segments[0].finished and len(audio.segments) == 1
            assert (between.old_state, between.new_state) == ("speaking", "thinking")
            assert first.created_at <= between.created_at
            # a later waiter sees only later changes; the turn's own future sees all of them
            again = wait_for_state(session, "speaking")
            assert turn.state_entered("thinking", old_state="speaking").result() == between
            assert not again.done()
            agent.gate.set()
            assert (await again).old_state == "thinking"
            result = await turn.result()

    assert pairs(result.state_changes) == THINK_BETWEEN
    assert result.agent_states == [new for _, new in THINK_BETWEEN]
    assert recorder.changes == result.state_changes
    assert recorder.states == result.agent_states
    assert result.break_ids == [None, "answer"]


async def test_a_state_future_fails_once_it_cannot_come() -> None:
    async with started_session(three(), audio=VirtualAudioOutput()) as session:
        recorder = StateRecorder(session)
        never = wait_for_state(session, "initializing")
        turn = start_turn(session, "Hi")
        in_turn = turn.state_entered("thinking", old_state="speaking")  # no gap in this turn
        from_record = recorder.entered("listening")
        result = await turn.result()
        assert (await from_record).old_state == "speaking"
        # the turn settled without it: its future fails, naming what did happen
        with pytest.raises(
            RuntimeError,
            match=r"the turn ended before the agent state became "
            r"'thinking' from 'speaking' \(changes: listening->thinking, ",
        ):
            await in_turn
        after = recorder.entered("speaking", old_state="listening")
        assert not never.done() and not after.done()
    # closing the session ends the waits that were still open
    with pytest.raises(RuntimeError, match="the session closed before the agent state became"):
        await never
    with pytest.raises(RuntimeError, match="the session closed before"):
        await after
    assert result.agent_states == ["thinking", "speaking", "listening"]
    stopped = StateRecorder(session)
    stopped.stop()
    with pytest.raises(RuntimeError, match="the recorder was stopped before"):
        await stopped.entered("speaking")


async def test_a_cancelled_state_wait_stops_listening(monkeypatch: pytest.MonkeyPatch) -> None:
    async with started_session(three(), audio=VirtualAudioOutput()) as session:
        removed: list[str] = []
        off = session.off

        def spy(event: str, callback: Any) -> None:
            removed.append(event)
            off(event, callback)

        monkeypatch.setattr(session, "off", spy)
        waiter = wait_for_state(session, "speaking")
        waiter.cancel()
        await asyncio.gather(waiter, return_exceptions=True)  # its done callbacks ran
        assert sorted(removed) == ["agent_state_changed", "close"]
        result = await run_turn(session, "Hi")
    assert waiter.cancelled() and result.agent_states[-1] == "listening"
