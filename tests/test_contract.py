"""Safe to depend on (issue 21): a playout signal no consumer can break, agent-state events a
frontend can trust, per-response outcomes, and segment announcements told apart.

Runs unchanged against the runtime patch and against the native (patched upstream) form.
"""

from __future__ import annotations

import asyncio
import inspect
from typing import Any

import pytest

import livekit_segments
from livekit.agents import FlushSentinel, function_tool
from livekit.agents.voice.events import SpeechCreatedEvent
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments import SegmentBreak, SegmentCreatedEvent

from .fakes import ToolCall, Wait
from .test_exact import gate, play_out_segment_1, run_ready, states
from .test_segments import Turn

# ------------------------------------------------------------------ 1. playout_started


def two_responses(**kwargs: Any) -> Turn:
    return Turn([["Hello there. ", SegmentBreak(id="answer"), "The answer."]], **kwargs)


async def play_the_rest(t: Turn) -> None:
    """With a manual start: start each of two_responses' segments not started yet, and wait
    for the reply and its handles to end."""
    assert t.sink is not None and t.handle is not None
    for k in range(2):
        if t.handle.interrupted:
            break
        await t.sink.segment_captured(k)
        if t.sink.segments[k].started_at is None:
            t.sink.start_playback()
    await t.turn_result()


async def test_playout_started_gives_each_read_a_future_of_its_own() -> None:
    t = two_responses()
    await t.run()
    await t.close()
    for h in t.handles:
        a, b = h.playout_started, h.playout_started
        assert isinstance(a, asyncio.Future) and a is not b
        assert a.result() == b.result()


@pytest.mark.parametrize("which", [0, 1])
async def test_a_timing_out_watcher_does_not_cancel_a_patient_one(which: int) -> None:
    t = two_responses(start="manual")
    await t.start()
    assert t.sink is not None
    if which == 1:
        await t.sink.segment_captured(0)
        t.sink.start_playback()
        await t.handle_created(1)
    handle = t.handles[which]
    patient = asyncio.ensure_future(handle.playout_started)
    # a watcher that gives up: wait_for cancels the future it was given on timeout
    impatient = handle.playout_started
    impatient.cancel()
    assert impatient.cancelled()
    await t.sink.segment_captured(which)
    started = t.sink.start_playback()
    assert await patient == started  # the patient watcher still gets the time
    assert await handle.playout_started == started  # and so does a later reader
    await play_the_rest(t)
    await t.close()


async def test_wait_for_timeout_around_playout_started_reaches_nobody_else() -> None:
    t = two_responses(start="manual")
    handle = await t.start()
    assert t.sink is not None
    patient = asyncio.ensure_future(handle.playout_started)
    with pytest.raises(asyncio.TimeoutError):
        # a zero timeout: wait_for cancels the future it was given before it resolves
        await asyncio.wait_for(handle.playout_started, timeout=0)
    await t.sink.segment_captured(0)
    started = t.sink.start_playback()
    assert await patient == started
    await play_the_rest(t)
    await t.close()


async def test_a_cancelled_watcher_task_is_cancelled_and_others_are_not() -> None:
    t = two_responses(start="manual")
    handle = await t.start()
    assert t.sink is not None
    woke: list[float | None] = []

    async def watch() -> None:
        woke.append(await handle.playout_started)

    doomed, kept = asyncio.ensure_future(watch()), asyncio.ensure_future(watch())
    await run_ready(3)
    doomed.cancel()
    with pytest.raises(asyncio.CancelledError):
        await doomed  # the watcher's own cancellation is a CancelledError, and only that
    await t.sink.segment_captured(0)
    started = t.sink.start_playback()
    await kept
    assert woke == [started]
    await play_the_rest(t)
    await t.close()


async def test_many_awaiters_all_get_the_time() -> None:
    t = two_responses(start="manual")
    handle = await t.start()
    assert t.sink is not None
    waiters = [asyncio.ensure_future(handle.playout_started) for _ in range(50)]
    for w in waiters[::2]:
        w.cancel()  # half give up; the rest are unaffected
    await t.sink.segment_captured(0)
    started = t.sink.start_playback()
    results = await asyncio.gather(*waiters[1::2])
    assert results == [started] * 25
    await play_the_rest(t)
    await t.close()


async def test_awaiting_after_the_fact_gives_the_same_time_at_once() -> None:
    t = two_responses()
    await t.run()
    await t.close()
    assert t.sink is not None
    for h, seg in zip(t.handles, t.sink.segments, strict=True):
        fut = h.playout_started
        assert fut.done() and fut.result() == seg.started_at
        assert await h.playout_started == seg.started_at


async def test_never_played_is_none_never_cancelled_error() -> None:
    t = two_responses(start="manual")
    handle = await t.start()
    assert t.sink is not None
    before = handle.playout_started  # read before it is known
    await t.sink.segment_captured(0)
    handle.interrupt()  # before its first frame played
    assert await before is None
    assert await handle.playout_started is None  # after the fact too
    await play_the_rest(t)
    await t.close()


async def test_typed_accessor_returns_a_new_future_of_float_or_none() -> None:
    t = two_responses()
    await t.run()
    await t.close()
    fut = livekit_segments.playout_started(t.handles[1])
    assert fut is not livekit_segments.playout_started(t.handles[1])
    assert isinstance(fut.result(), float)


# ------------------------------------------------------------------ 2. agent states


def assert_state_events_chain(t: Turn) -> None:
    evs = t.rec.of("agent_state_changed")
    for prev, ev in zip(evs, evs[1:], strict=False):
        assert ev.old_state == prev.new_state, [(e.old_state, e.new_state) for e in evs]
    assert all(ev.old_state != ev.new_state for ev in evs)


@pytest.mark.parametrize("end", ["model_ends", "interrupted"])
async def test_state_events_chain_when_no_response_follows_the_gap(end: str) -> None:
    more = gate()
    t = Turn([["Ack.", SegmentBreak(id="x"), Wait(more)]])
    turn = await t.start()
    assert t.sink is not None and t.session is not None
    await t.sink.when(lambda: bool(t.sink.segments) and t.sink.segments[0].finished)
    await run_ready()
    assert states(t)[-1] == "thinking"
    # the session reacts as upstream with a plain FlushSentinel: still its speaking turn
    assert t.session.agent_state == "speaking"
    if end == "interrupted":
        turn.interrupt()
    more.set_result(None)
    await turn
    await run_ready()
    await t.close()
    assert_state_events_chain(t)
    evs = [(e.old_state, e.new_state) for e in t.rec.of("agent_state_changed")]
    assert ("thinking", "listening") in evs  # straight from the label to upstream's end


async def test_state_events_chain_with_thinking_then_speaking_again() -> None:
    more = gate()
    t = Turn([["Ack.", SegmentBreak(id="a"), Wait(more), "The answer."]])
    turn = await t.start()
    assert t.sink is not None
    await t.sink.when(lambda: bool(t.sink.segments) and t.sink.segments[0].finished)
    await run_ready()
    more.set_result(None)
    await turn
    await t.close()
    assert_state_events_chain(t)
    assert states(t) == ["listening", "thinking", "speaking", "thinking", "speaking", "listening"]


async def test_tool_step_after_a_break_runs_upstreams_end_of_speech_step() -> None:
    @function_tool
    async def lookup() -> str:
        """Look the answer up."""
        return "42"

    more = gate()
    tool_running = gate()
    seen: list[bool] = []

    @function_tool
    async def slow_lookup() -> str:
        """Look the answer up slowly."""
        assert t.session is not None
        activity: Any = t.session._activity
        # upstream's end-of-speech step re-armed interruption by audio activity
        seen.append(bool(getattr(activity, "_interruption_by_audio_activity_enabled", True)))
        tool_running.set_result(None)
        return "42"

    t = Turn(
        [
            ["Let me check.", SegmentBreak(id="x"), Wait(more), ToolCall("slow_lookup")],
            ["It is 42."],
        ],
        tools=[lookup, slow_lookup],
    )
    turn = await t.start()
    assert t.sink is not None
    await t.sink.when(lambda: bool(t.sink.segments) and t.sink.segments[0].finished)
    await run_ready()
    more.set_result(None)
    await tool_running
    await turn
    await t.close()
    assert seen == [True]
    assert_state_events_chain(t)


# ------------------------------------------------------------------ 3. outcomes, announcements


async def test_each_response_says_whether_it_was_cut() -> None:
    more = gate()
    t = Turn(
        [["A.", SegmentBreak(id="b"), "B.", FlushSentinel(), Wait(more), "B, continued."]],
        finish="manual",
    )
    turn, b = await play_out_segment_1(t)
    b.interrupt()
    await turn
    await t.close()
    # the turn handle keeps upstream's meaning: the reply was interrupted
    assert turn.interrupted and b.interrupted
    # but its own response (segment 0) played to its end; response 1 was cut
    assert turn.response_interrupted is False  # type: ignore[attr-defined]
    assert b.response_interrupted is True  # type: ignore[attr-defined]
    assert livekit_segments.response_interrupted(turn) is False


async def test_response_0_cut_says_so() -> None:
    t = two_responses(start="manual")
    handle = await t.start()
    assert t.sink is not None
    await t.sink.segment_captured(0)
    t.sink.start_playback()
    handle.interrupt()
    await play_the_rest(t)
    await t.close()
    assert livekit_segments.response_interrupted(handle) is True
    assert len(t.handles) == 1


async def test_response_0_played_before_an_interruption_in_the_gap() -> None:
    more = gate()
    t = Turn([["Ack.", SegmentBreak(id="x"), Wait(more), "Never said."]])
    turn = await t.start()
    assert t.sink is not None
    await t.sink.when(lambda: bool(t.sink.segments) and t.sink.segments[0].finished)
    await run_ready()
    turn.interrupt()  # in the gap: response 0 was complete and played
    more.set_result(None)
    await turn
    await t.close()
    assert turn.interrupted and not livekit_segments.response_interrupted(turn)


async def test_without_breaks_response_interrupted_is_interrupted() -> None:
    t = Turn([["Hello there, this is long."]], start="manual")
    handle = await t.start()
    assert t.sink is not None
    await t.sink.segment_captured(0)
    t.sink.start_playback()
    handle.interrupt()
    await play_the_rest(t)
    await t.close()
    assert livekit_segments.response_interrupted(handle) is handle.interrupted is True


async def test_segment_announcements_are_told_apart_in_event_and_report() -> None:
    t = Turn([["A.", SegmentBreak(id="b"), "B.", SegmentBreak(id="c"), "C."]])
    turn = await t.run()
    assert t.session is not None
    report = [
        ev.model_dump()
        for ev in t.session._recorded_events
        if getattr(ev, "type", None) == "speech_created"
    ]
    await t.close()
    evs = t.rec.of("speech_created")
    assert type(evs[0]) is SpeechCreatedEvent  # the reply's own: exactly upstream's
    for k, ev in enumerate(evs[1:], start=1):
        assert isinstance(ev, SegmentCreatedEvent) and isinstance(ev, SpeechCreatedEvent)
        assert (ev.source, ev.user_initiated) == ("generate_reply", False)  # as before
        assert (ev.segment_index, ev.reply_id) == (k, turn.id)
    assert "segment_index" not in report[0]
    assert [(r["segment_index"], r["reply_id"]) for r in report[1:]] == [
        (1, turn.id),
        (2, turn.id),
    ]


async def test_reply_handle_names_the_reply() -> None:
    t = two_responses()
    turn = await t.run()
    await t.close()
    assert [h.reply_handle for h in t.handles] == [turn, turn]  # type: ignore[attr-defined]
    assert livekit_segments.reply_handle(t.handles[1]) is turn


# ------------------------------------------------------------------ 4. one behaviour


def test_segment_interrupt_has_the_releases_own_signature() -> None:
    t_cls: Any = SpeechHandle
    sig = inspect.signature(t_cls.interrupt)
    # whatever class a segment handle is, interrupt() takes exactly upstream's arguments
    seg_cls = getattr(livekit_segments.handle_state, "SegmentSpeechHandle", SpeechHandle)
    if livekit_segments.has_native_support():
        seg_cls = SpeechHandle
    assert inspect.signature(seg_cls.interrupt) == sig


@pytest.mark.parametrize("via", ["segment_handle", "turn_handle", "session"])
async def test_interrupt_finishes_the_open_segment_handle_within_the_call(via: str) -> None:
    more = gate()
    t = Turn(
        [["A.", SegmentBreak(id="b"), "B.", FlushSentinel(), Wait(more), "B, continued."]],
        finish="manual",
    )
    turn, b = await play_out_segment_1(t)
    assert t.session is not None
    if via == "segment_handle":
        b.interrupt()
    elif via == "turn_handle":
        turn.interrupt()
    else:
        t.session.interrupt()
    assert (b.segment_index, b.interrupted, b.done()) == (1, True, True)  # type: ignore[attr-defined]
    await turn
    await t.close()


async def test_interrupt_from_speech_created_finishes_it_within_the_call() -> None:
    t = two_responses()
    seen: list[tuple[int, bool, bool]] = []
    never: list[asyncio.Future[float | None]] = []

    def on_created(ev: Any) -> None:
        h = ev.speech_handle
        if h.segment_index == 1:
            h.interrupt()
            seen.append((h.segment_index, h.interrupted, h.done()))
            fut = h.playout_started
            assert fut.done()  # settled within the call too
            never.append(fut)

    await t.start()
    assert t.session is not None
    t.session.on("speech_created", on_created)
    await t.turn_result()
    await t.close()
    assert seen == [(1, True, True)]
    assert never[0].result() is None


@pytest.mark.parametrize("app_listener", ["before_upstreams", "after_upstreams"])
async def test_interrupt_inside_the_first_frames_playback_started_resolves_it(
    app_listener: str,
) -> None:
    t = two_responses(start="manual")
    await t.start()
    assert t.sink is not None
    sink = t.sink
    seg_box: list[SpeechHandle] = []

    def on_started(ev: Any) -> None:
        if seg_box and len(sink.segments) == 2:
            seg_box[0].interrupt()  # inside the sink's report of the segment's first frame

    if app_listener == "before_upstreams":
        # registered before upstream registers its own for segment 1: with ordered emitters
        # (livekit rtc 1.1.20 on) the app's runs first
        sink.on("playback_started", on_started)
    await sink.segment_captured(0)
    sink.start_playback()
    seg = await t.handle_created(1)
    seg_box.append(seg)
    watcher = asyncio.ensure_future(seg.playout_started)
    if app_listener == "after_upstreams":
        sink.on("playback_started", on_started)
    await sink.segment_captured(1)
    started = sink.start_playback()
    assert seg.interrupted and seg.done()
    # the sink reported playback: the response did start playing, whatever the order
    assert await watcher == started
    assert await seg.playout_started == started
    await t.turn_result()
    await t.close()
