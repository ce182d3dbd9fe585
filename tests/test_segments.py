"""The behaviour contract: one SpeechHandle per response, with a playout signal each.

Runs unchanged against the runtime patch and against the native (patched upstream) form.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

import livekit_segments
from livekit.agents import AgentSession, FlushSentinel, function_tool, llm
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments import SegmentBreak
from livekit_segments.testing import (
    RecordingTextOutput,
    RunningTurn,
    VirtualAudioOutput,
    VirtualClock,
    start_turn,
)

from .fakes import (
    Fail,
    Recorder,
    ScriptedAgent,
    ScriptItem,
    ToolCall,
    TTSConfig,
    Wait,
    start_session,
)


class Turn:
    """One session and one reply, with everything it emitted."""

    def __init__(
        self,
        scripts: list[list[ScriptItem]],
        *,
        start: str = "auto",
        finish: str = "auto",
        audio: bool = True,
        tts_config: TTSConfig | None = None,
        tools: list[llm.Tool] | None = None,
    ) -> None:
        self.clock = VirtualClock()
        self.sink = (
            VirtualAudioOutput(clock=self.clock, start=start, finish=finish) if audio else None
        )
        self.text_sink = RecordingTextOutput()
        self.rec = Recorder()
        self.agent = ScriptedAgent(scripts, tts_config=tts_config, tools=tools)
        self.session: AgentSession | None = None
        self.handle: SpeechHandle | None = None
        self.turn: RunningTurn | None = None

    async def start(self, **reply_kwargs: Any) -> SpeechHandle:
        self.session = await start_session(
            self.agent, sink=self.sink, text_sink=self.text_sink, recorder=self.rec
        )
        self.turn = start_turn(self.session, **reply_kwargs)
        self.handle = self.turn.handle
        return self.handle

    async def run(self, **reply_kwargs: Any) -> SpeechHandle:
        """Start the reply and wait until it and every handle it opened are done."""
        handle = await self.start(**reply_kwargs)
        assert self.turn is not None
        if livekit_segments.is_installed() or livekit_segments.has_native_support():
            # also checks that every handle's playout_started is settled once it is done
            await self.turn.result()
        else:  # test_install compares with upstream, where handles have no signal
            await handle
        return handle

    async def close(self) -> None:
        assert self.session is not None
        await self.session.aclose()

    def handle_created(self, n: int) -> asyncio.Future[SpeechHandle]:
        """The reply's n-th handle, once announced."""
        assert self.turn is not None
        return self.turn.handle_created(n)

    async def turn_result(self) -> Any:
        """Wait until the reply and every handle it opened are done."""
        assert self.turn is not None
        return await self.turn.result()

    async def play_until(self, k: int) -> None:
        """Play segments 0..k-1 out in full (manual finish), then wait for segment k to start."""
        assert self.sink is not None
        for n in range(k):
            await self.sink.segment_started(n)
            self.sink.finish_playback()
        await self.sink.segment_started(k)

    @property
    def handles(self) -> list[SpeechHandle]:
        return list(self.rec.handles)

    def assistant_texts(self) -> list[tuple[str, bool]]:
        return [
            (item.text_content or "", item.interrupted)
            for item in self.agent.chat_ctx.items
            if item.type == "message" and item.role == "assistant"
        ]


def normalized_events(rec: Recorder) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for name, ev in rec.events:
        if name == "speech_created":
            out.append((name, ev.source, ev.user_initiated))
        elif name == "agent_state_changed":
            out.append((name, ev.old_state, ev.new_state))
        elif name == "conversation_item_added":
            item = ev.item
            if item.type == "message":
                out.append((name, item.role, item.text_content, item.interrupted))
            else:
                out.append((name, item.type))
        elif name == "function_tools_executed":
            out.append((name, tuple(c.name for c in ev.function_calls)))
        elif name == "error":
            out.append((name, type(ev.error).__name__))
    return out


def assert_strictly_increasing(values: list[float]) -> None:
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values


async def settled(handles: list[SpeechHandle]) -> None:
    for h in handles:
        await h


# ------------------------------------------------------------------ no breaks


async def test_no_break_reply_is_upstream_behaviour() -> None:
    t = Turn([["Hello ", "there. ", "How can I help?"]])
    handle = await t.run()
    await t.close()

    assert t.handles == [handle]
    assert handle.segment_index == 0
    assert handle.segment_break is None
    assert handle.playout_started.result() == t.sink.segments[0].started_at
    assert t.assistant_texts() == [("Hello there. How can I help?", False)]
    assert normalized_events(t.rec)[:6] == [
        ("conversation_item_added", "agent_handoff"),
        ("agent_state_changed", "initializing", "listening"),
        ("speech_created", "generate_reply", True),
        ("agent_state_changed", "listening", "thinking"),
        ("agent_state_changed", "thinking", "speaking"),
        ("conversation_item_added", "assistant", "Hello there. How can I help?", False),
    ]


async def test_plain_flush_sentinel_keeps_one_handle_and_one_message() -> None:
    t = Turn([["First part.", FlushSentinel(), "Second part.", FlushSentinel(), "Third."]])
    handle = await t.run()
    await t.close()

    assert t.handles == [handle]
    assert len(t.sink.segments) == 3  # upstream still splits playout
    assert handle.playout_started.result() == t.sink.segments[0].started_at
    assert t.assistant_texts() == [("First part.Second part.Third.", False)]
    states = [e for e in normalized_events(t.rec) if e[0] == "agent_state_changed"]
    assert [s[2] for s in states].count("speaking") == 1


# ------------------------------------------------------------------ breaks


async def test_one_break_opens_and_announces_a_handle() -> None:
    brk = SegmentBreak(id="answer", userdata={"source": "rag"})
    t = Turn([["One moment.", brk, "The answer is 42."]])
    created_at_sink_segments: list[int] = []

    turn = await t.start()
    assert t.session is not None
    t.session.on("speech_created", lambda ev: created_at_sink_segments.append(len(t.sink.segments)))
    await turn
    await t.close()

    first, second = t.handles
    assert first is turn
    assert (first.segment_index, first.segment_break) == (0, None)
    assert (second.segment_index, second.segment_break) == (1, brk)
    assert second.segment_break.id == "answer"
    assert second.segment_break.userdata == {"source": "rag"}
    assert isinstance(second, SpeechHandle) and second is not first
    assert second.id == f"{first.id}_seg1"  # traceable to its turn
    # announced before its audio reached the sink
    assert created_at_sink_segments == [1]
    ev = t.rec.of("speech_created")[1]
    assert (ev.source, ev.user_initiated) == ("generate_reply", False)
    # each resolves with exactly the sink's timestamp for that segment's first frame
    assert first.playout_started.result() == t.sink.segments[0].started_at
    assert second.playout_started.result() == t.sink.segments[1].started_at
    assert second.done() and not second.interrupted
    # one joined assistant message, as upstream
    assert t.assistant_texts() == [("One moment.The answer is 42.", False)]
    assert second.chat_items == []


async def test_playout_started_resolves_inside_the_sinks_callback() -> None:
    t = Turn([["A.", SegmentBreak(), "B.", SegmentBreak(), "C."]])
    seen: list[tuple[int, bool]] = []

    def after_started(n: int) -> None:
        seen.append((n, t.rec.handles[n].playout_started.done()))

    t.sink.after_started = after_started
    await t.run()
    await t.close()
    assert seen == [(0, True), (1, True), (2, True)]


async def test_playout_started_first_read_while_its_audio_waits_to_start() -> None:
    # asked for the first time only once the segment's audio is queued: it still resolves
    # inside the sink's callback, with its timestamp, after upstream's own first-frame
    # callback has made the agent speak
    t = Turn([["A.", SegmentBreak(id="b"), "B."]], start="manual")
    await t.start()
    assert t.sink is not None and t.session is not None
    session = t.session
    in_callback: list[tuple[int, bool]] = []
    t.sink.after_started = lambda n: in_callback.append((n, futs[n].done()))
    futs: list[asyncio.Future[float]] = []
    states: list[str] = []
    starts: list[float] = []
    for n in range(2):
        await t.sink.segment_captured(n)
        futs.append(t.handles[n].playout_started)
        assert not futs[n].done()
        futs[n].add_done_callback(lambda _: states.append(session.agent_state))
        starts.append(t.sink.start_playback())
        await futs[n]
    assert t.turn is not None
    await t.turn.result()
    await t.close()
    assert in_callback == [(0, True), (1, True)]
    assert [f.result() for f in futs] == starts == t.sink.started_times
    assert states == ["speaking", "speaking"]


async def test_awaiting_playout_started_wakes_per_segment() -> None:
    t = Turn([["A.", SegmentBreak(id="b"), "B.", SegmentBreak(id="c"), "C."]])
    woke: list[tuple[int, float, int]] = []
    watchers: list[asyncio.Task[None]] = []

    async def watch(handle: SpeechHandle) -> None:
        started_at = await handle.playout_started
        woke.append((handle.segment_index, started_at, len(t.sink.segments)))

    turn = await t.start()
    assert t.session is not None
    watchers.append(asyncio.create_task(watch(turn)))
    t.session.on(
        "speech_created", lambda ev: watchers.append(asyncio.create_task(watch(ev.speech_handle)))
    )
    await turn
    await asyncio.gather(*watchers)
    await t.close()
    assert [(i, ts) for i, ts, _ in woke] == [
        (i, s.started_at) for i, s in enumerate(t.sink.segments)
    ]
    # each watcher woke while its own segment was the newest at the sink
    assert [n for _, _, n in woke] == [1, 2, 3]


async def test_many_breaks() -> None:
    n = 120
    script: list[ScriptItem] = ["Segment 0."]
    for i in range(1, n + 1):
        script += [SegmentBreak(id=f"s{i}"), f"Segment {i}."]
    t = Turn([script])
    await t.run()
    await t.close()

    handles = t.handles
    assert [h.segment_index for h in handles] == list(range(n + 1))
    assert [h.segment_break.id if h.segment_break else None for h in handles] == [None] + [
        f"s{i}" for i in range(1, n + 1)
    ]
    started = [h.playout_started.result() for h in handles]
    assert started == t.sink.started_times
    assert_strictly_increasing(started)
    assert all(h.done() and not h.interrupted for h in handles)
    assert t.assistant_texts() == [("".join(f"Segment {i}." for i in range(n + 1)), False)]


async def test_leading_break_labels_segment_zero() -> None:
    lead = SegmentBreak(id="ack")
    t = Turn([[lead, "Sure.", SegmentBreak(id="answer"), "It is 42."]])
    turn = await t.run()
    await t.close()
    assert [h.segment_index for h in t.handles] == [0, 1]
    assert turn.segment_break is lead
    assert t.handles[1].segment_break.id == "answer"


async def test_trailing_and_repeated_breaks_open_one_handle_at_most() -> None:
    last = SegmentBreak(id="third")
    script: list[ScriptItem] = [
        "One.",
        SegmentBreak(id="first"),
        SegmentBreak(id="second"),
        FlushSentinel(),
        last,
        "Two.",
        SegmentBreak(id="trailing"),
        SegmentBreak(id="trailing2"),
    ]
    t = Turn([script])
    await t.run()
    await t.close()
    assert [h.segment_index for h in t.handles] == [0, 1]
    assert t.handles[1].segment_break is last
    assert all(h.done() for h in t.handles)
    assert t.assistant_texts() == [("One.Two.", False)]


async def test_break_then_plain_flush_keeps_segment_on_the_same_handle() -> None:
    t = Turn([["One.", SegmentBreak(id="b"), "Two.", FlushSentinel(), "Three."]])
    await t.run()
    await t.close()
    assert [h.segment_index for h in t.handles] == [0, 1]
    assert len(t.sink.segments) == 3
    second = t.handles[1]
    assert second.playout_started.result() == t.sink.segments[1].started_at
    assert second.done()


async def test_empty_text_does_not_open_a_handle() -> None:
    t = Turn([["One.", SegmentBreak(id="x"), "", SegmentBreak(id="y"), "Two."]])
    await t.run()
    await t.close()
    assert [h.segment_break.id if h.segment_break else None for h in t.handles] == [None, "y"]


async def test_break_only_reply() -> None:
    t = Turn([[SegmentBreak(id="nothing")]])
    turn = await t.run()
    await t.close()
    assert t.handles == [turn]
    assert turn.playout_started.result() is None
    assert t.assistant_texts() == []


# ------------------------------------------------------------------ interruptions


async def test_interrupt_before_the_first_frame() -> None:
    t = Turn([["One.", SegmentBreak(id="b"), "Two."]], start="manual")
    turn = await t.start()
    await t.sink.segment_captured(0)
    turn.interrupt()
    await turn
    await t.close()

    assert t.handles == [turn]
    assert turn.interrupted
    assert turn.playout_started.result() is None


async def test_interrupt_during_segment_zero() -> None:
    t = Turn([["One.", SegmentBreak(id="b"), "Two."]], finish="manual")
    turn = await t.start()
    await t.sink.segment_started(0)
    turn.interrupt()
    await turn
    await t.close()

    assert t.handles == [turn]
    assert turn.interrupted
    assert turn.playout_started.result() == t.sink.segments[0].started_at
    assert t.assistant_texts() == [("One.", True)]


async def test_interrupt_between_segments_creates_no_later_handle() -> None:
    llm_gate: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    t = Turn([["One.", SegmentBreak(id="b"), Wait(llm_gate), "Two."]])
    turn = await t.start()
    await t.sink.when(lambda: bool(t.sink.segments) and t.sink.segments[0].finished)
    turn.interrupt()
    llm_gate.set_result(None)
    await turn
    await t.close()

    assert t.handles == [turn]
    assert turn.interrupted
    assert len(t.sink.segments) == 1


@pytest.mark.parametrize("via", ["segment_handle", "turn_handle", "session"])
async def test_interrupt_during_a_later_segment(via: str) -> None:
    t = Turn(
        [["One.", SegmentBreak(id="b"), "Two.", SegmentBreak(id="c"), "Three."]],
        finish="manual",
    )
    turn = await t.start()
    await t.play_until(1)
    second = t.handles[1]
    if via == "segment_handle":
        assert second.interrupt() is second
    elif via == "turn_handle":
        turn.interrupt()
    else:
        assert t.session is not None
        t.session.interrupt()
    await turn
    await second
    await t.close()

    assert [h.segment_index for h in t.handles] == [0, 1]  # no handle for "Three."
    assert second.interrupted and second.done()
    assert turn.interrupted and turn.done()
    assert second.playout_started.result() == t.sink.segments[1].started_at
    assert t.assistant_texts() == [("One.Two.", True)]


async def test_finished_segment_handle_is_not_interrupted_later() -> None:
    t = Turn(
        [["One.", SegmentBreak(id="b"), "Two.", SegmentBreak(id="c"), "Three."]],
        finish="manual",
    )
    turn = await t.start()
    await t.play_until(2)
    second, third = t.handles[1], t.handles[2]
    assert second.done() and not second.interrupted
    assert second.interrupt() is second  # done: nothing to interrupt, turn untouched
    assert not turn.interrupted
    third.interrupt()
    await turn
    await t.close()
    assert not second.interrupted
    assert third.interrupted and turn.interrupted


async def test_allow_interruptions_false_is_honoured_by_segment_handles() -> None:
    t = Turn([["One.", SegmentBreak(id="b"), "Two."]], finish="manual")
    turn = await t.start(allow_interruptions=False)
    await t.play_until(1)
    second = t.handles[1]
    assert second.allow_interruptions is False
    with pytest.raises(RuntimeError, match="does not allow interruptions"):
        second.interrupt()
    assert not second.interrupted and not turn.interrupted
    second.interrupt(force=True)
    await turn
    await t.close()
    assert second.interrupted and turn.interrupted


# ------------------------------------------------------------------ other outputs and paths


async def test_text_only_output() -> None:
    t = Turn([["One.", SegmentBreak(id="b"), "Two.", SegmentBreak(id="c"), "Three."]], audio=False)
    await t.run()
    await t.close()
    handles = t.handles
    assert [h.segment_index for h in handles] == [0, 1, 2]
    started = [h.playout_started.result() for h in handles]
    assert all(isinstance(s, float) for s in started)
    assert_strictly_increasing(started)
    assert t.text_sink.text == "One.Two.Three."
    assert t.assistant_texts() == [("One.Two.Three.", False)]


async def test_say_gets_playout_started() -> None:
    t = Turn([])
    session = await start_session(t.agent, sink=t.sink, text_sink=t.text_sink, recorder=t.rec)
    handle = session.say("Hello from say.")
    await handle
    await session.aclose()
    assert t.handles == [handle]
    assert handle.segment_index == 0 and handle.segment_break is None
    assert handle.playout_started.result() == t.sink.segments[0].started_at


async def test_tool_follow_up_with_its_own_breaks() -> None:
    @function_tool
    async def lookup() -> str:
        """Look the answer up."""
        return "42"

    t = Turn(
        [
            ["Let me check.", SegmentBreak(id="ack2"), "One moment.", ToolCall("lookup")],
            [SegmentBreak(id="answer"), "Found it.", SegmentBreak(id="detail"), "It is 42."],
        ],
        tools=[lookup],
    )
    turn = await t.run()
    await t.close()

    assert [h.segment_index for h in t.handles] == [0, 1, 2, 3]
    assert [h.segment_break.id if h.segment_break else None for h in t.handles] == [
        None,
        "ack2",
        "answer",
        "detail",
    ]
    started = [h.playout_started.result() for h in t.handles]
    assert started == t.sink.started_times
    assert_strictly_increasing(started)
    assert all(h.done() and not h.interrupted for h in t.handles)
    assert turn.num_steps == 2
    # chat history exactly as upstream: message, call, output, message
    kinds = [
        (i.type, getattr(i, "role", None), getattr(i, "text_content", None))
        for i in t.agent.chat_ctx.items
        if i.type in ("message", "function_call", "function_call_output")
        and getattr(i, "role", None) != "system"
    ]
    assert kinds == [
        ("message", "assistant", "Let me check.One moment."),
        ("function_call", None, None),
        ("function_call_output", None, None),
        ("message", "assistant", "Found it.It is 42."),
    ]


async def test_follow_up_text_without_a_break_plays_under_the_turn_handle() -> None:
    @function_tool
    async def lookup() -> str:
        """Look the answer up."""
        return "42"

    t = Turn(
        [
            ["Checking.", SegmentBreak(id="b"), "Hold on.", ToolCall("lookup")],
            ["It is 42."],
        ],
        tools=[lookup],
    )
    turn = await t.run()
    await t.close()
    assert [h.segment_index for h in t.handles] == [0, 1]
    assert len(t.sink.segments) == 3
    assert t.handles[1].done()
    assert turn.playout_started.result() == t.sink.segments[0].started_at


# ------------------------------------------------------------------ failures


async def test_llm_error_mid_reply() -> None:
    boom = RuntimeError("llm failed")
    t = Turn([["One.", SegmentBreak(id="b"), "Two.", SegmentBreak(id="c"), Fail(boom)]])
    await t.run()
    await t.close()
    assert [h.segment_index for h in t.handles] == [0, 1]
    assert all(h.done() for h in t.handles)
    assert [h.playout_started.result() for h in t.handles] == t.sink.started_times


@pytest.mark.skipif(
    not hasattr(SpeechHandle, "exception"),
    reason="SpeechHandle.exception() appeared in livekit-agents 1.6.5; 1.6.0-1.6.4 do not "
    "record a reply's error on its handle",
)
async def test_llm_error_is_the_turns_exception() -> None:
    boom = RuntimeError("llm failed")
    t = Turn([["One.", SegmentBreak(id="b"), "Two.", SegmentBreak(id="c"), Fail(boom)]])
    turn = await t.run()
    await t.close()
    assert turn.exception() is boom
    assert t.handles[1].exception() is None  # the segment played; the turn failed


async def test_llm_error_before_the_segment_text_opens_nothing() -> None:
    t = Turn([["One.", SegmentBreak(id="b"), Fail(RuntimeError("llm failed"))]])
    turn = await t.run()
    await t.close()
    assert t.handles == [turn]
    assert turn.playout_started.result() == t.sink.segments[0].started_at


async def test_tts_error_cancels_the_unplayed_segment() -> None:
    cfg = TTSConfig(fail_on={"Two"})
    t = Turn(
        [["One.", SegmentBreak(id="b"), "Two.", SegmentBreak(id="c"), "Three."]], tts_config=cfg
    )
    turn = await t.run()
    await t.close()
    assert turn.done()
    handles = t.handles
    assert handles[0].playout_started.result() == t.sink.segments[0].started_at
    # no handle ever plays after the failure; any opened for it is cancelled and done
    for h in handles[1:]:
        assert h.done()
        assert h.playout_started.result() is None
    assert len(handles) <= 2
    assert t.assistant_texts()[0][0].startswith("One.")


async def test_silent_segment_is_cancelled_and_the_next_still_signals() -> None:
    cfg = TTSConfig(silent_on={"Two", "."})
    t = Turn(
        [["One.", SegmentBreak(id="b"), "Two.", SegmentBreak(id="c"), "Three."]], tts_config=cfg
    )
    await t.run()
    await t.close()
    first, second, third = t.handles
    assert second.playout_started.result() is None
    assert second.done()
    assert third.playout_started.result() == t.sink.segments[1].started_at
    assert_strictly_increasing([first.playout_started.result(), third.playout_started.result()])


async def test_session_close_mid_turn_leaves_nothing_pending() -> None:
    t = Turn(
        [["One.", SegmentBreak(id="b"), "Two.", SegmentBreak(id="c"), "Three."]],
        finish="manual",
    )
    turn = await t.start()
    await t.play_until(1)
    await t.close()
    await settled(t.handles)
    for h in t.handles:
        assert h.done()
        assert h.playout_started.done()
    assert turn.interrupted
    assert [h.segment_index for h in t.handles] == [0, 1]
    pending = [
        task
        for task in asyncio.all_tasks()
        if task is not asyncio.current_task() and not task.done()
    ]
    assert pending == [], pending


# ------------------------------------------------------------------ the public type


def test_segment_break_validates_its_id() -> None:
    assert isinstance(SegmentBreak(), FlushSentinel)
    assert SegmentBreak(id="x").id == "x"
    assert SegmentBreak().id is None and SegmentBreak().userdata is None
    with pytest.raises(TypeError, match="id must be a str"):
        SegmentBreak(id=3)  # type: ignore[arg-type]


async def test_handles_without_segments_have_the_defaults() -> None:
    handle = SpeechHandle.create()
    assert handle.segment_index == 0
    assert handle.segment_break is None
    assert not handle.playout_started.done()
    handle._mark_done()
    await handle
    assert handle.playout_started.result() is None


async def test_user_barge_in_during_a_later_segment() -> None:
    # what the VAD path calls when the user starts talking over the agent
    t = Turn(
        [["One.", SegmentBreak(id="b"), "Two.", SegmentBreak(id="c"), "Three."]], finish="manual"
    )
    turn = await t.start()
    await t.play_until(1)
    assert t.session is not None
    activity = t.session._activity
    assert activity is not None
    activity._interrupt_by_audio_activity()
    await turn
    await t.close()
    second = t.handles[1]
    assert [h.segment_index for h in t.handles] == [0, 1]
    assert second.interrupted and second.done()
    assert turn.interrupted
