"""Segment state kept on each `SpeechHandle`, and the handle class for segments 1, 2, ...

A turn is the reply that a `SpeechHandle` was scheduled with (segment 0). Every
`SegmentBreak` followed by text opens a segment handle for the rest of that response. The
state here is plain data plus futures; the pipeline hooks decide when it changes.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from typing import Any

from livekit.agents.voice.speech_handle import SpeechHandle

from .segment_break import SegmentBreak

__all__ = [
    "HandleState",
    "SegmentSpeechHandle",
    "cancel_playout",
    "finish_segment",
    "peek_state",
    "playout_view",
    "resolve_playout",
    "signal_first_frame",
    "state_of",
    "sync_playout",
    "watch_done",
]

_STATE_ATTR = "_lk_segment_state"


class HandleState:
    """What one handle knows about its own playout, plus turn bookkeeping for segment 0.

    Every field has a class-level default and is set on an instance only when it changes:
    a reply without breaks creates one of these per turn, and upstream's reply is what it
    is measured against. The outcome is kept in `settled` and `started`; each read of
    `playout_started` gets a future of its own (`playout_view`), settled with that outcome.
    """

    # the outcome is known; started is the start time, None if it never played
    settled = False
    started: float | None = None
    # the unsettled futures handed out by playout_started, each owned by its reader: a
    # reader that cancels its own (a timeout) changes nothing here or for anyone else
    views: list[asyncio.Future[float | None]] | None = None
    # upstream's _AudioOutput of the segment now playing under this handle, while no signal
    # stands in for its first_frame_fut (nobody waits on playout_started yet): that
    # future's result is the start time, read when someone asks (`sync_playout`)
    frame_out: Any = None
    # called once playout_started resolves (segment handles: the agent speaks again)
    on_playout: Callable[[float], None] | None = None
    # on_playout of a segment interrupted inside its first frame's report, for upstream's
    # own listener of that report to run (the first-frame signal calls it)
    on_playout_deferred: Callable[[float], None] | None = None
    # set once audio forwarding started for this handle: text then no longer counts
    audio_seen = False
    # False while no done callback cancels playout (and ends the open segment handle)
    done_watched = True
    # the handle while that is so, until its playout resolves
    unwatched: SpeechHandle | None = None
    # turn bookkeeping, used on segment 0 only
    next_index = 1
    # the reply handle's own response (segment 0) was closed and played out before any
    # interruption: response_interrupted then stays False
    response_over = False
    open_handle: SegmentSpeechHandle | None = None
    open_tracker: Any = None  # the generation that opened it
    open_first = -1  # its first segment, numbered within that generation
    newest: HandleState | None = None  # the state of the newest segment handle
    forwarded_any = False
    # turn only: the session, and whether its state shows "thinking" between responses
    session: Any = None
    thinking = False
    watched: Any = None  # the generation whose end is watched (its segment handles)
    speak: Callable[[float], None] | None = None  # on_playout of its segment handles

    index = 0  # the segment number of the handle
    segment_break: SegmentBreak | None = None  # the break that opened (or labelled) it


def peek_state(handle: SpeechHandle) -> HandleState | None:
    """The handle's state if it has any yet."""
    # getattr, never handle.__dict__: reading __dict__ turns the instance's inline
    # attribute values into a dict, and every later attribute read on the handle (upstream
    # reads it all through a reply) gets slower
    st: HandleState | None = getattr(handle, _STATE_ATTR, None)
    return st


def state_of(handle: SpeechHandle, *, watch: bool = True) -> HandleState:
    """The handle's state, created on first use (segment 0 unless set up by the hooks);
    its `playout_started` is cancelled when the handle ends without playing.

    ``watch=False`` is for a reply's own handle, from the hooks: no done callback until
    someone can wait on its `playout_started` (a later `state_of`) or a segment handle opens
    (`watch_done`); `resolve_playout` checks the handle itself until then.
    """
    st: HandleState | None = getattr(handle, _STATE_ATTR, None)
    if st is None:
        st = HandleState()
        setattr(handle, _STATE_ATTR, st)
        if handle.done():
            # a handle that finished before anyone asked can no longer start playing
            st.settled = True
        elif watch:
            handle.add_done_callback(_on_handle_done)
        else:
            st.done_watched = False
            st.unwatched = handle
    elif watch and not st.done_watched:
        watch_done(handle, st)
    return st


def watch_done(handle: SpeechHandle, st: HandleState) -> None:
    """Register the done callback ``state_of(..., watch=False)`` left out, if it did."""
    if not st.done_watched:
        st.done_watched = True
        st.unwatched = None
        if handle._done_fut.done():
            # what the callback would do, now: no running loop is needed after the fact
            _on_handle_done(handle)
        else:
            handle.add_done_callback(_on_handle_done)


def _on_handle_done(handle: SpeechHandle) -> None:
    st = peek_state(handle)
    if st is None:
        return
    if st.open_handle is not None:
        finish_segment(st.open_handle, interrupted=handle.interrupted)
    cancel_playout(st)


def resolve_playout(st: HandleState, started_at: float | None) -> None:
    """Resolve a handle's `playout_started`, once; `None` means "now" (text-only output)."""
    if st.settled:
        return
    handle = st.unwatched
    if handle is not None:
        st.unwatched = None  # (handle and state refer to each other)
        if handle.done():
            # what the done callback would have done: an ended handle does not start
            cancel_playout(st)
            return
    started = time.time() if started_at is None else started_at
    st.settled = True
    st.started = started
    views = st.views
    if views is not None:
        st.views = None
        for view in views:
            if not view.done():  # its reader may have cancelled it
                view.set_result(started)
    if st.on_playout is not None:
        st.on_playout(started)


def sync_playout(st: HandleState) -> None:
    """Take in the first frame upstream reported for the segment playing under the handle,
    where no signal stood in for it; called before anything reads or ends the outcome."""
    out = st.frame_out
    if out is not None:
        frame: asyncio.Future[float] = out.first_frame_fut
        if frame.done():
            st.frame_out = None
            if not frame.cancelled():
                resolve_playout(st, frame.result())


def cancel_playout(st: HandleState) -> None:
    """The handle can no longer start playing (unless its first frame was reported): its
    `playout_started` readers get None."""
    if st.frame_out is not None:
        sync_playout(st)
        st.frame_out = None
    if not st.settled:
        st.settled = True
        views = st.views
        if views is not None:
            st.views = None
            for view in views:
                if not view.done():
                    view.set_result(None)


def playout_view(st: HandleState) -> asyncio.Future[float | None]:
    """A new future for one reader of `playout_started`, with the outcome so far: the
    reader owns it, so its cancellation (a timeout) reaches nobody else."""
    if st.frame_out is not None:
        sync_playout(st)
    # made in the loop that reads it, as upstream's own futures are made in the loop
    # that creates the handle
    view: asyncio.Future[float | None] = asyncio.Future()
    if st.settled:
        view.set_result(st.started)
        return view
    views = st.views
    if views is None:
        st.views = [view]
        if st.frame_out is not None:
            # from now on someone waits: the sink's report resolves it as it comes
            signal_first_frame(st, st.frame_out)
    else:
        if len(views) >= 16:
            # readers that gave up (cancelled their own) need not be kept
            views[:] = [v for v in views if not v.done()]
        views.append(view)
    return view


def signal_first_frame(st: HandleState, out: Any) -> None:
    """Let the first frame reported for ``out`` (upstream's `_AudioOutput`) resolve the
    handle's `playout_started` in the same call.

    Upstream reads ``out.first_frame_fut`` at each use (its playback-started listener, its
    forwarding task, `forward_generation`), so the stand-in takes effect from its next use.
    """
    signal = _FirstFrameSignal()
    signal._replaced = out.first_frame_fut
    signal._st = st
    out.first_frame_fut = signal
    st.frame_out = None


# the base methods, looked up once (zero-argument super() builds a proxy per call before 3.12)
_future_set_result = asyncio.Future.set_result
_future_set_exception = asyncio.Future.set_exception
_future_cancel = asyncio.Future.cancel


class _FirstFrameSignal(asyncio.Future):  # type: ignore[type-arg]
    """Stands in for a segment's ``first_frame_fut``: resolving it resolves the handle's
    `playout_started` in the same call, inside the sink's playback-started emit.

    Upstream's own listener decides whether the event belongs to this segment and calls
    ``set_result``; hooking that call, rather than adding a second listener, does not depend
    on the order in which the emitter runs listeners (a set before livekit rtc 1.1.20).
    Every outcome is passed on to the future it replaces, whose done callback unregisters
    upstream's listener; the future it replaces is resolved first, so upstream's callbacks
    on either future run before those of whoever waits on `playout_started`.
    """

    # one per segment with audio and someone waiting: no instance dict, and no Python
    # __init__ (the creator sets both fields before anyone else sees it)
    __slots__ = ("_replaced", "_st")
    _replaced: asyncio.Future[float]
    _st: HandleState

    def set_result(self, result: float) -> None:
        _future_set_result(self, result)
        self._replaced.set_result(result)
        st = self._st
        resolve_playout(st, result)
        deferred = st.on_playout_deferred
        if deferred is not None:
            st.on_playout_deferred = None
            deferred(result)

    def set_exception(self, exception: type | BaseException) -> None:
        _future_set_exception(self, exception)
        self._replaced.cancel()

    def cancel(self, msg: Any = None) -> bool:
        if not _future_cancel(self, msg):
            return False
        self._replaced.cancel(msg)
        return True


# SpeechHandle.interrupt's source= parameter (1.8.2 on), None before
_INTERRUPT_SOURCE = inspect.signature(SpeechHandle.interrupt).parameters.get("source")


def _interrupt(self: SegmentSpeechHandle, *, force: bool = False) -> SpeechHandle:
    """Interrupt the turn this segment belongs to, as `SpeechHandle.interrupt` does; the
    segment handle is done when this returns.

    Raises:
        RuntimeError: if the turn does not allow interruptions and `force` is False.
    """
    if self.interrupted or self.done():
        return self
    self._lk_turn.interrupt(force=force)
    self._cancel()
    return self


def _interrupt_with_source(
    self: SegmentSpeechHandle,
    *,
    force: bool = False,
    source: Any = None if _INTERRUPT_SOURCE is None else _INTERRUPT_SOURCE.default,
) -> SpeechHandle:
    """Interrupt the turn this segment belongs to, as `SpeechHandle.interrupt` does; the
    segment handle is done when this returns.

    Raises:
        RuntimeError: if the turn does not allow interruptions and `force` is False.
    """
    if self.interrupted or self.done():
        return self
    self._lk_turn.interrupt(force=force, source=source)
    self._cancel()
    return self


# the same annotations as upstream's, so that inspect.signature() shows the same method
(_interrupt if _INTERRUPT_SOURCE is None else _interrupt_with_source).__annotations__ = dict(
    SpeechHandle.interrupt.__annotations__
)


class SegmentSpeechHandle(SpeechHandle):
    """The `SpeechHandle` of one response after a `SegmentBreak` (``segment_index >= 1``).

    It plays inside its turn: interrupting it interrupts the turn, and it takes the turn's
    `allow_interruptions`, so it behaves exactly as the turn's own handle would.
    """

    # always set (by __init__): read directly where a segment handle is known
    _lk_segment_state: HandleState

    def __init__(self, *, turn: SpeechHandle, index: int, segment_break: SegmentBreak) -> None:
        # the turn's fields are read directly, where its properties return them (checked by
        # install()): three Python calls less per segment; zero-argument super() would build
        # a proxy per call before 3.12
        SpeechHandle.__init__(
            self,
            # traceable to its turn in logs and traces
            speech_id=f"{turn._id}_seg{index}",
            allow_interruptions=turn._allow_interruptions,
            input_details=turn._input_details,
        )
        self._lk_turn = turn
        # no done callback: finish_segment ends it, and cancels its playout_started there
        st = HandleState()
        st.index = index
        st.segment_break = segment_break
        self._lk_segment_state = st
        # it only exists once its segment is about to play
        self._mark_scheduled()

    @property
    def reply_handle(self) -> SpeechHandle:
        """The handle the whole reply was scheduled with (segment 0)."""
        return self._lk_turn

    @property
    def response_interrupted(self) -> bool:
        """Whether this response was cut: the same as `interrupted` for a segment handle."""
        return self.interrupted

    @property
    def interrupted(self) -> bool:
        # the turn's interruption cuts the open response at once; the hooks end it just after
        return SpeechHandle.interrupted.fget(self) or (  # type: ignore[attr-defined]
            not self.done() and self._lk_turn.interrupted
        )

    @property
    def allow_interruptions(self) -> bool:
        return self._lk_turn.allow_interruptions

    @allow_interruptions.setter
    def allow_interruptions(self, value: bool) -> None:
        self._lk_turn.allow_interruptions = value

    # the installed release's own signature (release_compat): source= from 1.8.2 on
    interrupt = (
        _interrupt_with_source if _INTERRUPT_SOURCE is not None else _interrupt  # type: ignore[assignment]
    )


# the created_at of each playback-started report a sink is emitting right now (innermost
# last): an interruption from inside that emit comes after the first frame was reported,
# whether or not upstream's own listener has run yet (listener order is arbitrary before
# livekit rtc 1.1.20)
reporting_playback: list[float] = []


def wrap_on_playback_started(original: Callable[..., None]) -> Callable[..., None]:
    """`AudioOutput.on_playback_started`, which sinks call for a segment's first frame."""

    def on_playback_started(self: Any, *args: Any, created_at: float, **kwargs: Any) -> None:
        reporting_playback.append(created_at)
        try:
            original(self, *args, created_at=created_at, **kwargs)
        finally:
            reporting_playback.pop()

    on_playback_started.__doc__ = original.__doc__
    on_playback_started.__name__ = original.__name__
    on_playback_started.__qualname__ = original.__qualname__
    on_playback_started.__wrapped__ = original  # type: ignore[attr-defined]
    return on_playback_started


def finish_segment(handle: SegmentSpeechHandle, *, interrupted: bool) -> None:
    """End a segment handle: interrupted or played out, then done; its turn's open no more."""
    turn_st: HandleState | None = getattr(handle._lk_turn, _STATE_ATTR, None)
    if turn_st is not None and turn_st.open_handle is handle:
        turn_st.open_handle = None
    # cancelled first, so nobody who awaits the handle sees it pending; also when the
    # handle was already marked done elsewhere (upstream's interruption timeout)
    st = handle._lk_segment_state
    if interrupted and reporting_playback and st.audio_seen and not st.settled:
        # interrupted from inside the sink's report of this segment's first frame (its audio
        # is the only audio the sink can be starting): it did start playing. What its start
        # does besides (the agent speaks again) waits for upstream's own listener, later in
        # the same report, as it would without the interruption
        st.on_playout_deferred, st.on_playout = st.on_playout, None
        sync_playout(st)
        resolve_playout(st, reporting_playback[-1])
    if st.frame_out is not None or not st.settled:  # (cancel_playout's checks, inlined)
        cancel_playout(st)
    if handle._done_fut.done():  # handle.done()'s own body, a Python call less
        return
    if interrupted:
        handle._cancel()
    handle._mark_done()


def handle_properties() -> dict[str, Any]:
    """The read-only properties the runtime patch adds to `SpeechHandle`."""

    def playout_started(self: SpeechHandle) -> asyncio.Future[float | None]:
        """When this handle's audio started playing: a new future for each read.

        It resolves with the ``created_at`` (``time.time()`` clock) of the sink's
        playback-started event for the first frame of this handle's first segment (the time
        its first text was forwarded when audio output is disabled), or with None once that
        segment can no longer play. Each read returns a future of the reader's own:
        cancelling it, or a timeout around it, affects no other reader.
        """
        st = state_of(self)
        if not st.settled and self.done():
            # the done callback that settles it may not have run yet
            cancel_playout(st)
        return playout_view(st)

    def response_interrupted(self: SpeechHandle) -> bool:
        """Whether this handle's own response was cut: a segment handle's `interrupted`;
        for the reply handle, True only if the interruption came before its first response
        (segment 0) was over, that is closed by a `SegmentBreak` and played out, or followed
        by a segment handle (the model's end does not end it; once over, it stays over)."""
        if not self.interrupted:
            return False
        st = peek_state(self)
        return st is None or not st.response_over

    def segment_index(self: SpeechHandle) -> int:
        """0 for the handle a reply was scheduled with, k for the k-th break's handle."""
        st = peek_state(self)
        return 0 if st is None else st.index

    def segment_break(self: SpeechHandle) -> SegmentBreak | None:
        """The `SegmentBreak` that opened (or, for segment 0, labelled) this handle."""
        st = peek_state(self)
        return None if st is None else st.segment_break

    def reply_handle(self: SpeechHandle) -> SpeechHandle:
        """The handle the whole reply was scheduled with: this handle itself for segment 0."""
        return self

    return {
        "reply_handle": property(reply_handle),
        "playout_started": property(playout_started),
        "response_interrupted": property(response_interrupted),
        "segment_index": property(segment_index),
        "segment_break": property(segment_break),
    }
