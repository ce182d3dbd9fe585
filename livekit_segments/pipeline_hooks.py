"""Wrappers around the livekit-agents calls where a reply is generated, split and played.

Each factory takes the original function and returns a wrapper that calls it unchanged and
only observes or routes around it:

- `perform_llm_inference`: watches what `llm_node` puts into the reply's text channel, so
  the segment boundaries upstream draws are known, with the break that opened each one.
- `forward_generation`: called once per segment; picks the handle the segment plays under,
  opens and announces a new one after a `SegmentBreak`, and ends it when it has played.
- `perform_audio_forwarding` / `perform_text_forwarding`: tie the segment's first frame (or
  first text) to the handle's `playout_started`. Upstream's own first-frame future records
  when the sink reported it; a stand-in future signals it as it comes only once someone
  waits on `playout_started` (or the agent state waits for it), and otherwise it is read
  when asked, at the latest when the segment returns.
"""

from __future__ import annotations

import asyncio
import bisect
import contextvars
import functools
import logging
import sys
from collections.abc import Callable
from typing import Any, TypeVar

from livekit.agents import FlushSentinel
from livekit.agents.voice import agent_activity as _activity_mod, generation as _generation_mod
from livekit.agents.voice.speech_handle import SpeechHandle

from . import state_label
from .handle_state import (
    HandleState,
    SegmentSpeechHandle,
    cancel_playout,
    finish_segment,
    peek_state,
    resolve_playout,
    signal_first_frame,
    state_of,
    sync_playout,
    watch_done,
)
from .segment_break import SegmentBreak
from .segment_events import SegmentCreatedEvent

logger = logging.getLogger("livekit.segments")

# asyncio.current_task is Python code before 3.12 (a frame per call, several per reply); the
# loop -> task map it reads is the C module's, so read that map directly there
_running_loop = asyncio.get_running_loop
_tasks_by_loop: Any = getattr(asyncio.tasks, "_current_tasks", None)
_task_of_loop: Callable[[asyncio.AbstractEventLoop], asyncio.Task[Any] | None] = (
    _tasks_by_loop.get
    if sys.version_info < (3, 12) and isinstance(_tasks_by_loop, dict)
    else asyncio.current_task
)

F = TypeVar("F", bound=Callable[..., Any])


class GenerationTracker:
    """Mirrors how the reply task splits one generation's text into segments.

    Upstream ends a segment at every `FlushSentinel` and starts the next only when non-empty
    text arrives. This sees the same items in the same order (the channel is FIFO with one
    reader), so segment ``j`` here is the ``j``-th `forward_generation` call of the reply.

    Until the model yields its first `SegmentBreak` nothing here reacts: a reply without
    breaks only counts its segments (`has_breaks` gates every update).
    """

    send_nowait: Callable[[Any], None]  # the text channel's own

    def __init__(
        self,
        task: asyncio.Task[Any] | None,
        llm_task: asyncio.Task[Any] | None = None,
    ) -> None:
        self.task = task
        self.llm_task = llm_task  # the model's task: its end closes the last response
        # every field set here, none left to a class-level default: these are read per
        # segment, and CPython 3.11 specializes no read of a class attribute through an
        # instance (each is a full lookup, about three times a specialized read)
        self.segments = 0  # segments started so far
        self.in_segment = False
        self.pending: SegmentBreak | None = None
        self.ended = False
        self.forwarded = 0  # forward_generation calls so far
        self.returned = -1  # the last segment whose forward_generation returned
        self.cut: int | None = None  # a failed TTS: no segment after this one is forwarded
        self.turn: SpeechHandle | None = None  # set by the first forward_generation call
        self.turn_st: HandleState | None = None  # its state, set with it
        self.has_breaks = False
        self.first_break_at = 0  # segments started when the first break came
        self.breaks: dict[int, SegmentBreak] | None = None  # segment -> the break opening it
        # segment counts at which a response was closed (a break, or the model's end)
        self.bounds: list[int] | tuple[()] = ()
        self.held: list[str] | None = None  # whitespace after a break, until more is said
        self.end_bound = -1  # the bound the model's end added, if it added one

    def receive(self, value: Any) -> None:
        """The text channel's ``send_nowait`` while `llm_node` runs: pass each item on, and
        observe those that may change the segments."""
        if value.__class__ is str:
            if self.in_segment:
                # most items are more text of the segment already started: nothing to see
                self.send_nowait(value)
                return
            if self.pending is None:
                # text with no break before it (then nothing is held): at most a segment
                # starts
                self.send_nowait(value)
                if value:
                    self.in_segment = True
                    self.segments += 1
                return
        held = self.held
        if isinstance(value, str):
            if value and self.pending is not None and value.isspace():
                if held is None:
                    held = self.held = []
                held.append(value)
                return
            if value and held:
                for h in held:
                    self.send_nowait(h)
                    self.observe(h)
                held.clear()
        elif held:
            held.clear()  # a response of nothing but whitespace: nothing to say
        self.send_nowait(value)
        self.observe(value)

    def observe(self, value: object) -> None:
        if isinstance(value, FlushSentinel):
            self.in_segment = False
            if isinstance(value, SegmentBreak):
                self.pending = value  # the last break before the text labels it
                if not self.has_breaks:
                    self.has_breaks = True
                    self.first_break_at = self.segments
                    if self.llm_task is not None:
                        self.llm_task.add_done_callback(self._on_llm_done)
                # a response that has played out ends here; otherwise its last segment's
                # return from forward_generation ends it
                if self._close() and self.returned >= self.segments - 1:
                    self._wake()
        elif value and not self.in_segment:
            # a segment starting ends nothing and starts no wait: nothing to update
            self.in_segment = True
            if self.pending is not None:
                if self.breaks is None:
                    self.breaks = {}
                self.breaks[self.segments] = self.pending
                self.pending = None
            self.segments += 1

    def _on_llm_done(self, _: object) -> None:
        self.end()

    def end(self) -> None:
        self.ended = True
        if self._close():
            self.end_bound = self.segments  # this response was closed by the model's end
        self._wake()

    def _close(self) -> bool:
        # no later text can join the response that has started: it ends at this point
        bounds = self.bounds
        if self.segments and (not bounds or bounds[-1] < self.segments):
            if bounds:
                bounds.append(self.segments)
            else:
                self.bounds = [self.segments]  # only with breaks
            return True
        return False

    def last_of_response(self, j: int) -> int | None:
        """The last segment of the response that segment ``j`` belongs to; None while open."""
        i = bisect.bisect_right(self.bounds, j)
        last = self.bounds[i] - 1 if i < len(self.bounds) else None
        if self.cut is not None and self.cut >= j and (last is None or self.cut < last):
            return self.cut
        return last

    def read_a_break(self) -> bool:
        """Whether upstream read a break of this generation. After a failed synthesis it
        stops reading at the next segment's start (`_produce_segments` raises there): a break
        seen after that was read by nobody."""
        return self.has_breaks and (self.cut is None or self.first_break_at <= self.cut + 1)

    def _wake(self) -> None:
        # only a break, or the model's end once a break was seen, gets here
        if self.turn is not None:
            _update(self.turn, self, self.turn_st)


_generation: contextvars.ContextVar[GenerationTracker | None] = contextvars.ContextVar(
    "livekit_segments_generation", default=None
)


class _Forwarding:
    """The segment `forward_generation` is starting, and the state of the handle it plays
    under. Upstream calls `perform_audio_forwarding` and `perform_text_forwarding` from that
    coroutine before its first await, in its task, so no other task's segment can have
    replaced this in between. The task, not the caller's frame, says whether a call
    belongs to it: `sys._getframe` and ``cr_frame`` make CPython build frame objects it
    otherwise never creates, which cost more than the task look-up (measured)."""

    __slots__ = ("task", "st")

    def __init__(self) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.st: HandleState | None = None


_forwarding = _Forwarding()
# what forward_generation returns for a segment of which nothing was forwarded
_SKIPPED_OUTPUT: Callable[[], Any] | None = getattr(_generation_mod, "_ForwardOutput", None)


def _say_target() -> HandleState | None:
    """The target of a forwarding call outside a segment `forward_generation` started: say()
    forwards directly, inside the speech task upstream tags with its handle."""
    handle = _activity_mod._SpeechHandleContextVar.get(None)
    return None if handle is None else state_of(handle)


def wrap_perform_llm_inference(original: F) -> F:
    @functools.wraps(original)
    def perform_llm_inference(*args: Any, **kwargs: Any) -> Any:
        llm_task, gen_data = original(*args, **kwargs)
        tracker = GenerationTracker(_task_of_loop(_running_loop()), llm_task)
        text_ch = gen_data.text_ch
        tracker.send_nowait = text_ch.send_nowait
        # the producer task reads the channel when it starts, after this returns
        text_ch.send_nowait = tracker.receive
        _generation.set(tracker)
        return llm_task, gen_data

    return perform_llm_inference  # type: ignore[return-value]


def _announce(turn: SpeechHandle, handle: SpeechHandle, ts: HandleState, index: int) -> None:
    session = ts.session
    if session is None:
        activity = _activity_mod._AgentActivityContextVar.get(None)
        if activity is None:
            logger.warning(
                "segment handle opened outside an agent activity; speech_created not emitted",
                extra={"speech_id": handle.id, "turn_speech_id": turn.id},
            )
            return
        session = ts.session = activity.session
    # segments only come from pipeline replies, whose handles are all "generate_reply"
    session.emit(
        "speech_created",
        SegmentCreatedEvent(
            speech_handle=handle,
            user_initiated=False,
            source="generate_reply",
            segment_index=index,
            reply_id=turn._id,
        ),
    )


def _settle(turn: SpeechHandle, ts: HandleState | None) -> None:
    """End the turn's open segment handle once nothing more of it can play.

    That is when the turn is interrupted, or when its response is closed (the model yielded
    the next `SegmentBreak`, or ended) and its last segment has played out.
    """
    seg = None if ts is None else ts.open_handle
    if ts is None or seg is None:
        return
    if turn.interrupted:
        finish_segment(seg, interrupted=True)
        return
    tracker: GenerationTracker = ts.open_tracker
    last = tracker.last_of_response(ts.open_first)
    if last is not None and tracker.returned >= last:
        finish_segment(seg, interrupted=False)


def wrap_speech_handle_cancel(original: F) -> F:
    """`SpeechHandle._cancel`, which every interruption goes through: the turn's open segment
    handle ends within the call (``interrupt()`` or ``session.interrupt()`` has returned with
    it done), not one event-loop step later in a done callback."""

    @functools.wraps(original)
    def _cancel(self: SpeechHandle, *args: Any, **kwargs: Any) -> Any:
        result = original(self, *args, **kwargs)
        st = peek_state(self)
        if st is not None and st.open_handle is not None:
            _settle(self, st)
        return result

    return _cancel  # type: ignore[return-value]


def wrap_speech_handle_mark_done(original: F) -> F:
    """`SpeechHandle._mark_done`: settle what the handle's end settles (its open segment
    handle, its `playout_started`) before the handle is done, so that whoever waits on the
    handle, or registered a done callback on it, finds them settled."""

    @functools.wraps(original)
    def _mark_done(self: SpeechHandle, *args: Any, **kwargs: Any) -> Any:
        st = peek_state(self)
        if st is not None and not self._done_fut.done():
            open_handle = st.open_handle
            if open_handle is not None:
                finish_segment(open_handle, interrupted=self._interrupt_fut.done())
            if st.frame_out is not None or not st.settled:
                cancel_playout(st)
        return original(self, *args, **kwargs)

    return _mark_done  # type: ignore[return-value]


def _watch(turn: SpeechHandle, ts: HandleState, tracker: GenerationTracker) -> None:
    """Ends the generation's open segment handle at the end of the generation (registered
    once per generation, at its first segment handle; the turn's interruption ends it in
    the `SpeechHandle._cancel` wrapper)."""
    generations = getattr(turn, "_generations", None)
    if generations:

        def on_generation_done(_: object) -> None:
            # the reply loop of this generation is over: none of its segments plays any more
            seg = ts.open_handle
            if seg is not None and ts.open_tracker is tracker:
                finish_segment(seg, interrupted=turn.interrupted)

        generations[-1].add_done_callback(on_generation_done)


def _route(
    turn: SpeechHandle,
    ts: HandleState,
    tracker: GenerationTracker,
    j: int,
    brk: SegmentBreak | None,
) -> HandleState:
    """The state of the handle a segment plays under; opens and announces a new handle
    after a break."""
    if brk is None:
        open_handle = ts.open_handle
        if open_handle is None:
            target_st = ts
        elif ts.open_tracker is not tracker:
            # a generation's responses end with it: a tool step's text plays under the turn
            finish_segment(open_handle, interrupted=False)
            target_st = ts
        else:
            target_st = open_handle._lk_segment_state
    elif not ts.forwarded_any:
        ts.segment_break = brk  # a leading break labels segment 0
        target_st = ts
    else:
        if ts.open_handle is not None:  # ended by the break already, unless it never played
            finish_segment(ts.open_handle, interrupted=False)
        # only the newest handle may still start playing: results strictly increase
        newest_st = ts.newest or state_of(turn)
        if newest_st.frame_out is not None or not newest_st.settled:
            cancel_playout(newest_st)
        # the response before this one has played out
        ts.response_over = True
        seg = SegmentSpeechHandle(turn=turn, index=ts.next_index, segment_break=brk)
        ts.next_index += 1
        if ts.watched is not tracker:
            ts.watched = tracker
            _watch(turn, ts, tracker)
        if ts.speak is None:
            ts.speak = functools.partial(_speak, turn, ts)
            watch_done(turn, ts)  # the turn's end ends its open segment handle
        ts.open_handle = seg
        ts.open_tracker = tracker
        ts.open_first = j
        target_st = ts.newest = seg._lk_segment_state
        if ts.thinking:
            # only a response that opens while the turn shows "thinking" changes the state
            # when it starts: the turn starts thinking only once every segment it started
            # has returned, and this one has not
            target_st.on_playout = ts.speak
        _announce(turn, seg, ts, ts.next_index - 1)
    ts.forwarded_any = True
    return target_st


def _update(turn: SpeechHandle, tracker: GenerationTracker, ts: HandleState | None) -> None:
    """Something changed in the reply (a response closed, a segment played out); ``ts`` is
    the turn's state."""
    _settle(turn, ts)
    if ts is None:
        return
    if ts.session is None:
        # called in the reply's context (its task, or callbacks registered from it)
        activity = _activity_mod._AgentActivityContextVar.get(None)
        if activity is None:
            return
        ts.session = activity.session
    if ts.next_index == 1 and (not ts.response_over or not ts.settled):
        # the reply handle's first response is over once a break closed it and it has played
        # out (the model's end closes the whole reply, which is the handle's own meaning)
        j = tracker.returned
        if (
            j >= 0
            and tracker.last_of_response(j) == j
            and tracker.end_bound != j + 1
            and tracker.read_a_break()
        ):
            if not turn.interrupted:
                ts.response_over = True
            # its response is over: the reply handle can no longer start playing
            if ts.frame_out is not None or not ts.settled:
                cancel_playout(ts)
    if ts.thinking:
        if state_label.is_on(ts.session):
            return  # still between two responses
        ts.thinking = False  # upstream changed the state meanwhile: the label is over
    j = tracker.returned
    # segment j played out, its response is closed by a break, and the model has not yet
    # started the next one: nothing plays until it does
    if j < 0 or tracker.segments != j + 1 or tracker.ended or tracker.cut is not None:
        return
    if turn.interrupted or tracker.last_of_response(j) != j:
        return
    session = ts.session
    if session.agent_state != "speaking":
        return
    ts.thinking = True
    state_label.enter(session)


def _speak(turn: SpeechHandle, ts: HandleState, started_at: float) -> None:
    """The first frame of the response that follows: the agent speaks again."""
    if not ts.thinking:
        return
    ts.thinking = False
    state_label.leave(
        ts.session,
        start_time=started_at,
        otel_context=getattr(turn, "_agent_turn_context", None),
    )


def _after_segment(turn: SpeechHandle, ts: HandleState, tracker: GenerationTracker) -> None:
    """A segment returned: update only where a break made anything depend on it."""
    if tracker.has_breaks or ts.open_handle is not None or ts.thinking:
        _update(turn, tracker, ts)


def wrap_forward_generation(original: F) -> F:
    @functools.wraps(original)
    async def forward_generation(*args: Any, **kwargs: Any) -> Any:
        turn: SpeechHandle | None = kwargs.get("speech_handle")
        task = _task_of_loop(_running_loop())
        if turn is None:
            return await original(*args, **kwargs)

        tracker = _generation.get()
        if tracker is not None and tracker.task is not task:
            tracker = None  # inherited from another task's context: not this reply's

        ts = tracker.turn_st if tracker is not None and tracker.turn is turn else None
        if ts is None:
            ts = state_of(turn, watch=False)
            if tracker is not None and tracker.turn is None:
                tracker.turn, tracker.turn_st = turn, ts
        target_st = ts
        j = -1
        # the property's own body (checked by install()): a Python call less per segment
        interrupted = turn._interrupt_fut.done()
        if tracker is not None:
            j = tracker.forwarded
            tracker.forwarded += 1
            if not interrupted:
                brk = tracker.breaks.pop(j, None) if tracker.breaks else None
                if brk is None and ts.open_handle is None:
                    ts.forwarded_any = True  # the common case of _route: the turn plays it
                else:
                    target_st = _route(turn, ts, tracker, j, brk)
                    # announcing the segment may have run an app callback that interrupted it
                    interrupted = turn._interrupt_fut.done()

        if interrupted and _SKIPPED_OUTPUT is not None:
            # interrupted before anything of this segment was forwarded (from speech_created,
            # or while it was prepared): none of its audio or text may reach the outputs
            if tracker is not None:
                tracker.returned = j
                _after_segment(turn, ts, tracker)
            return _SKIPPED_OUTPUT()

        coro = original(*args, **kwargs)
        fwd = _forwarding
        fwd.task, fwd.st = task, target_st
        try:
            return await coro
        finally:
            if fwd.task is task:
                fwd.task = fwd.st = None
            if target_st.frame_out is not None:
                # a first frame reported from now on is not this segment's
                sync_playout(target_st)
                target_st.frame_out = None
            if tracker is not None:
                tracker.returned = j
                if getattr(kwargs.get("tts_data"), "error", None) is not None:
                    # upstream starts no segment after a failed synthesis (1.8 on; before, the
                    # end of the generation ends the handle)
                    tracker.cut = j
                # _after_segment, inlined: this runs once per segment of every reply
                if tracker.has_breaks or ts.open_handle is not None or ts.thinking:
                    _update(turn, tracker, ts)

    return forward_generation  # type: ignore[return-value]


def wrap_perform_audio_forwarding(original: F) -> F:
    @functools.wraps(original)
    def perform_audio_forwarding(*args: Any, **kwargs: Any) -> Any:
        task, out = original(*args, **kwargs)
        # the segment forward_generation is starting (inlined: once per segment)
        fwd = _forwarding
        st = fwd.st
        if st is not None and fwd.task is _task_of_loop(_running_loop()):
            st.audio_seen = True
            if not st.settled:
                if st.views is None and st.on_playout is None:
                    # nobody waits yet: the sink's report is read from out when asked, at
                    # the latest when the segment returns (forward_generation's wrapper)
                    st.frame_out = out
                else:
                    signal_first_frame(st, out)
            return task, out
        st = _say_target()  # no return of the segment to wait for: signal at once
        if st is not None:
            st.audio_seen = True
            if not st.settled:
                signal_first_frame(st, out)
        return task, out

    return perform_audio_forwarding  # type: ignore[return-value]


def wrap_perform_text_forwarding(original: F) -> F:
    @functools.wraps(original)
    def perform_text_forwarding(*args: Any, **kwargs: Any) -> Any:
        task, out = original(*args, **kwargs)
        fwd = _forwarding
        st = fwd.st
        if st is None or fwd.task is not _task_of_loop(_running_loop()):
            st = _say_target()
        if st is not None:
            if not st.audio_seen and not st.settled:

                def on_first_text(fut: asyncio.Future[None]) -> None:
                    if not fut.cancelled() and not st.audio_seen:
                        resolve_playout(st, None)

                out.first_text_fut.add_done_callback(on_first_text)
        return task, out

    return perform_text_forwarding  # type: ignore[return-value]
