"""The agent side of the client-playout protocol: RPC handlers, path delay, per-response signals."""

from __future__ import annotations

import asyncio
import json
import math
import statistics
import time
import weakref
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any, Literal, NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from livekit import rtc
from livekit.agents.voice.speech_handle import SpeechHandle

from ._clock import ClockOffset, Exchange
from ._detector import (
    DEFAULT_GAP,
    DEFAULT_THRESHOLD,
    ENVELOPE_BINS,
    LEVELS_MARGIN,
    LEVELS_POST,
    LEVELS_PRE,
    LEVELS_SEARCH,
    LEVELS_WIDTH_MS,
    MIN_ENVELOPE_SCORE,
    envelope_shift,
    levels_fit,
)
from ._guard import (
    MAX_ONSETS,
    Levels,
    LogLimiter,
    RateLimiter,
    Rejected,
    UnsupportedVersion,
    logger,
    parse_hello,
    parse_levels,
    parse_report,
    parse_sync,
)
from ._tap import PlayoutTap, SendLog, SentOnset, SentSegment

HELLO = "lkseg.playout.hello"
SYNC = "lkseg.playout.sync"
REPORT = "lkseg.playout.report"
METHODS = (HELLO, SYNC, REPORT)
LEVELS = "lkseg.playout.levels"  # served by the companion: the agent calls it

SYNC_PERIOD = 10.0
DEFAULT_RX = 0.05  # receive-side delay assumed when the companion sent no estimate
# What the receiver's stats cannot show of a sample's way through Opus at 20 ms frames: the
# sender fills a frame before it sends it, and jitterBufferDelay averages over a frame's
# samples, so a frame's first sample travels 20 - 10 = 10 ms longer than net + jb; plus
# Opus's 6.5 ms look-ahead. For the prior only: matched delays include it.
CODEC_DELAY = 0.0165
JB_WINDOW = 1.0  # seconds a sync's jitter buffer reading averages, up to its t0
POLL = 1.0  # seconds between the companion's reads of its receiver's stats
MEASURE_WINDOW = 5.0  # seconds around a response's start where a matched onset measures it
REPORT_SLACK = 2.5  # how long after that window a report may still arrive
REPORT_SOON = 1.0  # after the device played a response, its earlier onsets were reported
DELAY_MEDIAN_OF = 3
MAX_STEP = 0.3  # the largest change of the path delay a match by gap alone may reveal
# Re-acquisition after the path moved beyond the matcher's window: a lag search over the
# recent unmatched device onsets. A lag is taken when at least REACQUIRE_SUPPORT device onsets
# agree on it (within REACQUIRE_TOL, gaps agreeing) and no other lag has as much support.
REACQUIRE_TOL = 0.015
REACQUIRE_SUPPORT = 2
REACQUIRE_KEEP = 15.0  # seconds of unmatched device onsets kept for the search
SEARCH_BACK = 2.0  # the longest path delay considered
SUSPECT = 3.0  # seconds after an unmatched device onset in which single matches are not taken
STALE = 30.0
# A response with no onset of its own is measured from earlier audio; NetEq stretches the audio
# in between (concealment, acceleration: up to 19 ms over 1.7 s measured, and 9-13 ms over
# 0.4 s in 4 of 24 such responses), so when that audio is this long or longer the agent asks
# the companion for the levels around the start instead.
LEVELS_AFTER = 0.2
LEVELS_WAIT = 0.05  # after the device played the levels' last bin: time to have it ready
LEVELS_TIMEOUT = 2.0
LEVELS_MIN = 0.1  # seconds: fewer levels in a reply are too short to place

How = Literal["measured", "predicted", "unavailable"]


@dataclass(frozen=True)
class Heard:
    """When a response started playing on the user's device, and how that is known.

    Attributes:
        at: the device start (``time.time()`` clock): the response's first frame, leading
            silence included, at the device output. None when unavailable.
        how: "measured" (from the device's report), "predicted" (``playout_started`` plus the
            path delay measured on earlier audio) or "unavailable".
        path_delay: seconds from the agent's send to the device output used for ``at``.
        first_audible_offset: seconds from the response's first frame to its first audible
            sample (the detector's threshold), on the agent's frames; None if unknown.
        measured_from: for "measured": seconds from the response's start to the send time of
            the onset whose device time measured it (0 <= x: its own audio; < 0: earlier audio).
    """

    at: float | None
    how: How
    path_delay: float | None = None
    first_audible_offset: float | None = None
    measured_from: float | None = None


UNAVAILABLE = Heard(at=None, how="unavailable")


class _Participant(Protocol):
    def register_rpc_method(self, method_name: str, handler: Any = ...) -> Any: ...
    def unregister_rpc_method(self, method: str) -> None: ...


class _Room(Protocol):
    @property
    def local_participant(self) -> Any: ...
    def on(self, event: str, callback: Any = ...) -> Any: ...
    def off(self, event: str, callback: Any) -> None: ...


Timer = Callable[[float, Callable[[], None]], Callable[[], None]]


def _loop_timer(clock: Callable[[], float]) -> Timer:
    def call_at(wall: float, cb: Callable[[], None]) -> Callable[[], None]:
        loop = asyncio.get_running_loop()
        handle = loop.call_at(loop.time() + (wall - clock()), cb)
        return handle.cancel

    return call_at


class _Match(NamedTuple):
    """A matched path delay."""

    delay: float
    at: float  # the device time at which it was measured
    jb: float | None  # the readings at hand then
    ad: float | None
    missed: float | None


@dataclass
class _Readings:
    """A figure the companion's poll reads and sends only when it moved (by agent time)."""

    points: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=64))

    @property
    def latest(self) -> float | None:
        return self.points[-1][1] if self.points else None

    def add(self, value: float, at: float) -> None:
        self.points.append((at, value))

    def at(self, t: float) -> float | None:
        """The figure at agent time ``t`` from the readings around it; None before the first
        one kept."""
        r = sorted(self.points)
        if not r or t < r[0][0]:
            return None
        for (t0, v0), (t1, v1) in pairwise(r):
            if t <= t1:
                # sent only when it moved: it held until the poll before the later reading
                # (that poll's reading unsent), then moved
                ramp = max(t0, t1 - POLL)
                if t <= ramp:
                    return v0
                return v0 + (v1 - v0) * (t - ramp) / (t1 - ramp)
        return r[-1][1]


@dataclass
class _Companion:
    identity: str
    sid: str
    path: str
    limiter: RateLimiter
    last_q: int = -1
    clock: ClockOffset = field(default_factory=ClockOffset)
    pending: dict[int, tuple[float, float, float]] = field(default_factory=dict)
    rx: float | None = None
    net: float | None = None
    # the jitter buffer's delay, each reading at the middle of the second it averages
    jb: _Readings = field(default_factory=_Readings)
    # the audio it added to its playout (`ad`) and the packets missed, each at its instant
    ad: _Readings = field(default_factory=_Readings)
    missed: _Readings = field(default_factory=_Readings)
    levels: bool = False  # it serves LEVELS
    matches: deque[_Match] = field(default_factory=lambda: deque(maxlen=DELAY_MEDIAN_OF))

    @property
    def delays(self) -> list[float]:
        """The last matched path delays, oldest first."""
        return [m.delay for m in self.matches]

    def add_delay(self, delay: float, at: float) -> None:
        self.matches.append(_Match(delay, at, self.jb.latest, self.ad.latest, self.missed.latest))

    def clear_delays(self) -> None:
        self.matches.clear()

    def moved(self, a: float, b: float, held: _Match | None = None) -> float:
        """How much NetEq moved the path delay from device time ``a`` to ``b`` (agent clock;
        ``math.inf``: the latest readings). The device plays without a break, so while no
        packet is missed the delay moves by exactly the audio NetEq made up or dropped
        (`ad`); otherwise by the change of its buffer's delay (`jb`): a one-second average
        that trailed the device by about 0.2 s after a step, and blind to the network's
        part of one. Without either, 0. Each figure is read between the readings around
        its time once they came; ``held`` has the ones at hand at ``a``, for readings from
        before those kept."""

        def at(series: _Readings, t: float, fallback: float | None) -> float | None:
            v = series.at(t)
            return fallback if v is None else v

        ma, mb = at(self.missed, a, held and held.missed), at(self.missed, b, None)
        ad_a, ad_b = at(self.ad, a, held and held.ad), at(self.ad, b, None)
        if ma is not None and ma == mb and ad_a is not None and ad_b is not None:
            return ad_b - ad_a
        jb_a, jb_b = at(self.jb, a, held and held.jb), at(self.jb, b, None)
        if jb_a is not None and jb_b is not None:
            return jb_b - jb_a
        return 0.0

    # device onsets no agent onset matched yet: (device time, gap, envelope), for re-acquisition
    unmatched: deque[tuple[float, float, str | None]] = field(
        default_factory=lambda: deque(maxlen=16)
    )


class _Response:
    """One handle's two signals; views are the callers' futures, settled once each."""

    def __init__(self) -> None:
        self.heard: Heard | None = None
        self.measured: Heard | None = None
        self.heard_views: list[asyncio.Future[Heard]] = []
        self.measured_views: list[asyncio.Future[Heard]] = []
        self.start: float | None = None
        self.segment: SentSegment | None = None
        self.delay: float | None = None
        self.cancel_timers: list[Callable[[], None]] = []
        self.asking = False  # a levels request is out: the deadline waits for it
        self.deadline_due = False

    @property
    def first_audible_offset(self) -> float | None:
        seg = self.segment
        if seg is None or seg.first_audible is None or self.start is None:
            return None
        return seg.first_audible - self.start

    def view(self, measured: bool) -> asyncio.Future[Heard]:
        fut: asyncio.Future[Heard] = asyncio.get_running_loop().create_future()
        value = self.measured if measured else self.heard
        if value is not None:
            fut.set_result(value)
        else:
            (self.measured_views if measured else self.heard_views).append(fut)
        return fut

    def settle_heard(self, value: Heard) -> None:
        if self.heard is not None:
            return
        self.heard = value
        views, self.heard_views = self.heard_views, []
        for fut in views:
            if not fut.done():
                fut.set_result(value)

    def settle_measured(self, value: Heard) -> None:
        if self.measured is not None:
            return
        self.measured = value
        views, self.measured_views = self.measured_views, []
        for fut in views:
            if not fut.done():
                fut.set_result(value)
        for cancel in self.cancel_timers:
            cancel()
        self.cancel_timers = []

    def settle_all(self) -> None:
        self.settle_heard(UNAVAILABLE)
        self.settle_measured(UNAVAILABLE)


class _SessionFollower:
    """Follows one session: the handles it announces, until it (or this) closes."""

    _session: Any
    _closed: bool
    handles: weakref.WeakSet[SpeechHandle]

    def _follow(self) -> None:
        self._session.on("speech_created", self._on_speech_created)
        self._session.on("close", self._on_session_close)

    @property
    def closed(self) -> bool:
        return self._closed

    def close(self) -> None:
        """Stop following the session and release what this holds; settle what waits."""
        if self._closed:
            return
        self._closed = True
        self._session.off("speech_created", self._on_speech_created)
        self._session.off("close", self._on_session_close)
        self._release()

    def _release(self) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        self.close()

    def _on_session_close(self, _ev: object) -> None:
        self.close()

    def _on_speech_created(self, ev: Any) -> None:
        self.handles.add(ev.speech_handle)


class ClientPlayout(_SessionFollower):
    """The agent side for one session: see `livekit_segments.client_playout.enable`."""

    def __init__(
        self,
        session: Any,
        room: _Room,
        *,
        participant_identity: str | None,
        clock: Callable[[], float] = time.time,
        timer: Timer | None = None,
    ) -> None:
        self._session = session
        self._room = room
        self._identity = participant_identity
        self._clock = clock
        self._timer = timer or _loop_timer(clock)
        self._logs = LogLimiter(clock)
        self._companion: _Companion | None = None
        self._closed = False
        self._open: list[_Response] = []
        self.log = SendLog(clock)
        self.log.on_segment_started = self._on_segment_started
        self.log.on_segment_finished = self._on_segment_finished
        self._tap: PlayoutTap | None = None
        self.handles: weakref.WeakSet[SpeechHandle] = weakref.WeakSet()
        self._tasks: set[asyncio.Task[None]] = set()

    # -- lifecycle --

    def start(self) -> None:
        local = self._room.local_participant
        local.register_rpc_method(HELLO, self._rpc_hello)
        local.register_rpc_method(SYNC, self._rpc_sync)
        local.register_rpc_method(REPORT, self._rpc_report)
        self._room.on("participant_disconnected", self._on_participant_disconnected)
        output = self._session.output
        if output.audio is not None:
            self._tap = PlayoutTap(output.audio, self.log)
            output.audio = self._tap
        else:
            logger.warning(
                "client playout: the session has no audio output (yet): heard() will be "
                "unavailable; call client_playout.enable() after `await session.start(...)`"
            )
        self._follow()

    def _release(self) -> None:
        # unregister the RPC methods, take the tap out, settle every pending signal
        local = self._room.local_participant
        for name in METHODS:
            local.unregister_rpc_method(name)
        self._room.off("participant_disconnected", self._on_participant_disconnected)
        if self._tap is not None and self._session.output.audio is self._tap:
            self._session.output.audio = self._tap.original
        self._tap = None
        self._forget_companion()

    def _on_participant_disconnected(self, participant: Any) -> None:
        comp = self._companion
        if comp is not None and getattr(participant, "identity", None) == comp.identity:
            logger.info("client playout: the companion left", extra={"identity": comp.identity})
            self._forget_companion()

    def _forget_companion(self) -> None:
        self._companion = None
        tasks, self._tasks = self._tasks, set()
        for task in tasks:
            task.cancel()
        if self._tap is not None:
            self._tap.measuring = False
        open_, self._open = self._open, []
        for rec in open_:
            rec.settle_all()

    # -- estimates --

    def path_delay(self) -> float | None:
        """Current path delay (seconds): median of the last matches, else the prior."""
        comp = self._companion
        if comp is None or comp.path == "none":
            return None
        if comp.delays:
            # each matched delay, moved by how much NetEq moved the delay since: it raises
            # and lowers it between onsets (after a step of the network delay, by 250 ms
            # over the 6 s that followed)
            return statistics.median(m.delay + comp.moved(m.at, math.inf, m) for m in comp.matches)
        unc = comp.clock.uncertainty
        if unc is None:
            return None
        # RPC goes agent-SFU-client, like the media; `net` covers a path RPC does not take
        one_way = max(unc, comp.net or 0.0)
        return one_way + (comp.rx if comp.rx is not None else DEFAULT_RX) + CODEC_DELAY

    # -- per response --

    def track(self, rec: _Response, start: float | None) -> None:
        """Called once the response's playout_started settled (None: it never played)."""
        comp = self._companion
        if start is None or self._closed or comp is None or comp.path == "none":
            rec.settle_all()
            return
        rec.start = start
        rec.segment = self.log.segment_at(start)
        self._open.append(rec)
        d = self.path_delay()
        if d is None:
            rec.settle_heard(UNAVAILABLE)
        else:

            def fire() -> None:
                # built now: the first audible sample may have been sent since the start
                rec.settle_heard(
                    Heard(
                        at=start + d,
                        how="predicted",
                        path_delay=d,
                        first_audible_offset=rec.first_audible_offset,
                    )
                )

            if start + d <= self._clock():
                fire()
            else:
                rec.cancel_timers.append(self._timer(start + d, fire))
        rec.cancel_timers.append(
            self._timer(start + MEASURE_WINDOW + REPORT_SLACK, lambda: self._deadline(rec))
        )
        if comp.levels and d is not None:
            # once the device has played the levels the agent would ask for
            at = start + d + LEVELS_POST + LEVELS_SEARCH + LEVELS_WAIT
            rec.cancel_timers.append(self._timer(at, lambda: self._ask_levels(rec)))
        self._try_measure(rec)
        if rec.segment is not None and rec.segment.finished:
            self._early_deadline(rec)

    def _on_segment_finished(self, seg: SentSegment) -> None:
        for rec in self._open:
            if rec.segment is seg:
                self._early_deadline(rec)

    def _early_deadline(self, rec: _Response) -> None:
        """A response whose own audio has no onset (back to back after the previous one)
        is measured from earlier audio as soon as the device has played it, not only at
        the 7.5 s deadline."""
        seg = rec.segment
        if rec.measured is not None or rec.start is None or seg is None or seg.end is None:
            return
        start = rec.start
        if not seg.clocked or any(
            not o.dropped and start - 1e-6 <= o.onset.at <= start + MEASURE_WINDOW
            for o in self.log.onsets
        ):
            return  # its own onset measures it (or the 7.5 s deadline says it did not)
        at = seg.end + (self.path_delay() or 0.0) + REPORT_SOON
        if at <= self._clock():
            self._deadline(rec)
        else:
            rec.cancel_timers.append(self._timer(at, lambda: self._deadline(rec)))

    def _on_segment_started(self, seg: SentSegment) -> None:
        # a handle may be tracked before its segment was anchored (listener order)
        for rec in self._open:
            if rec.segment is None and rec.start is not None and seg.start is not None:
                if abs(rec.start - seg.start) <= 0.005:
                    rec.segment = seg

    def _measured(self, rec: _Response, onset: SentOnset) -> Heard:
        assert rec.start is not None and onset.device is not None
        d = onset.device - onset.onset.at
        return Heard(
            at=rec.start + d,
            how="measured",
            path_delay=d,
            first_audible_offset=rec.first_audible_offset,
            measured_from=onset.onset.at - rec.start,
        )

    def _settle(self, rec: _Response, value: Heard) -> None:
        """The measurement is known: both signals settle (`heard` only if it has not fired)."""
        rec.settle_heard(value)  # no-op once the prediction fired
        rec.settle_measured(value)
        self._open = [r for r in self._open if r is not rec]

    def _earlier_onset(self, start: float) -> SentOnset | None:
        """The latest matched onset sent in the `MEASURE_WINDOW` before ``start``."""
        before = [
            o
            for o in self.log.onsets
            if o.device is not None and start - MEASURE_WINDOW <= o.onset.at < start
        ]
        return max(before, key=lambda o: o.onset.at) if before else None

    def _try_measure(self, rec: _Response) -> None:
        assert rec.start is not None
        after = [
            o
            for o in self.log.onsets
            if o.device is not None and rec.start - 1e-6 <= o.onset.at <= rec.start + MEASURE_WINDOW
        ]
        if after:
            self._settle(rec, self._measured(rec, min(after, key=lambda o: o.onset.at)))

    def _deadline(self, rec: _Response) -> None:
        if rec.measured is not None or rec.start is None:
            return
        if rec.asking:
            rec.deadline_due = True  # the levels' answer decides, then this runs
            return
        anchor = self._earlier_onset(rec.start)
        if anchor is not None:
            self._settle(rec, self._measured(rec, anchor))
        else:
            rec.settle_all()
            self._open = [r for r in self._open if r is not rec]

    # -- levels: a back-to-back response's own measurement --

    def _ask_levels(self, rec: _Response) -> None:
        """Ask the companion for the device's levels around a response that has no onset of
        its own, when the audio since the latest measured onset is `LEVELS_AFTER` or longer."""
        comp, seg, start = self._companion, rec.segment, rec.start
        if rec.measured is not None or comp is None or not comp.levels or start is None:
            return
        if seg is None or not seg.clocked or self._closed:
            return
        if any(
            not o.dropped and start - 1e-6 <= o.onset.at <= start + LEVELS_POST
            for o in self.log.onsets
        ):
            return  # its own onset measures it
        anchor = self._earlier_onset(start)
        if anchor is not None:
            if start - anchor.onset.at < LEVELS_AFTER:
                return  # so little audio in between that NetEq had no room to stretch it
            assert anchor.device is not None
            est = anchor.device + (start - anchor.onset.at)
            # NetEq may have moved the delay since by more than the search (82 ms in 2.7 s
            # once after a step): the levels would then hold no fit
            est += comp.moved(anchor.device, est)
        else:
            d = self.path_delay()
            if d is None:
                return
            est = start + d
        # the agent's audio for every alignment in the search: bins of the device's first
        # bin at est - PRE - SEARCH may start up to SEARCH earlier or later in it
        g0 = start - LEVELS_PRE - 2 * LEVELS_SEARCH - 0.002
        audio = self.log.audio_between(g0, start + LEVELS_POST + 2 * LEVELS_SEARCH + 0.002)
        t_client = comp.clock.to_client(est - LEVELS_PRE - LEVELS_SEARCH)
        if audio is None or t_client is None:
            return
        n = round((LEVELS_PRE + LEVELS_POST + 2 * LEVELS_SEARCH) * 1000 / LEVELS_WIDTH_MS)
        payload = json.dumps(
            {"v": 1, "t": round(t_client * 1000, 1), "n": n, "w": LEVELS_WIDTH_MS},
            separators=(",", ":"),
        )
        rec.asking = True
        task = asyncio.ensure_future(self._levels(comp, rec, payload, n, est, g0, audio))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _levels(
        self,
        comp: _Companion,
        rec: _Response,
        payload: str,
        n: int,
        est: float,
        g0: float,
        audio: tuple[npt.NDArray[np.float64], int],
    ) -> None:
        at: float | None = None
        try:
            reply = await self._room.local_participant.perform_rpc(
                destination_identity=comp.identity,
                method=LEVELS,
                payload=payload,
                response_timeout=LEVELS_TIMEOUT,
            )
            levels = parse_levels(reply, n, LEVELS_WIDTH_MS)
            at = self._place_levels(comp, rec, levels, est, g0, *audio)
        except Rejected as err:
            self._logs.warn(comp.identity, err.kind, f"levels reply: {err}")
        except rtc.RpcError as err:
            # a departed companion, a timeout: measured from earlier audio instead
            logger.debug("client playout: levels request failed: %s", err.message)
        except Exception:
            logger.warning("client playout: levels request failed", exc_info=True)
        finally:
            rec.asking = False
        if comp is not self._companion or rec.measured is not None or rec.start is None:
            return
        if at is not None:
            comp.add_delay(at - rec.start, at)
            measured = Heard(
                at=at,
                how="measured",
                path_delay=at - rec.start,
                first_audible_offset=rec.first_audible_offset,
                measured_from=0.0,
            )
            self._settle(rec, measured)
        elif rec.deadline_due:
            self._deadline(rec)

    def _place_levels(
        self,
        comp: _Companion,
        rec: _Response,
        levels: Levels,
        est: float,
        g0: float,
        amp: npt.NDArray[np.float64],
        rate: int,
    ) -> float | None:
        """The device time of the response's first frame from the device's levels: where
        they line up with the agent's audio around it."""
        assert rec.start is not None
        a_d = None if levels.t is None else comp.clock.to_agent(levels.t)
        if a_d is None or len(levels.levels) * LEVELS_WIDTH_MS < LEVELS_MIN * 1000:
            logger.debug(
                "client playout: the device kept %d of the levels around the response at %.3f",
                len(levels.levels),
                rec.start,
            )
            return None
        # the device's first bin plays the agent's audio at index i when the response's start
        # plays at a_d + (start - g0 - i / rate)
        i_est = round((a_d - est + rec.start - g0) * rate)
        span = round(LEVELS_SEARCH * rate)
        fit = levels_fit(amp, rate, levels.levels, i_est - span, i_est + span, LEVELS_WIDTH_MS)
        if (
            fit is None
            or fit.score < MIN_ENVELOPE_SCORE
            or fit.score - fit.runner_up < LEVELS_MARGIN
        ):
            logger.debug(
                "client playout: the device's levels do not place the response at %.3f (%s)",
                rec.start,
                "no audio" if fit is None else f"score {fit.score:.3f}, next {fit.runner_up:.3f}",
            )
            return None
        return a_d + rec.start - g0 - fit.index / rate

    # -- RPC --

    def _allowed(self, caller: str) -> bool:
        if self._identity is not None:
            return caller == self._identity
        try:
            room_io = self._session.room_io
        except (AttributeError, RuntimeError):
            # releases without the public property keep it here; no room: nobody is linked
            room_io = getattr(self._session, "_room_io", None)
        linked = getattr(room_io, "linked_participant", None)
        return linked is not None and getattr(linked, "identity", None) == caller

    def _admit(self, data: rtc.RpcInvocationData) -> _Companion | None:
        caller = data.caller_identity
        if self._closed:
            raise rtc.RpcError(2002, "rejected")
        if not self._allowed(caller):
            self._logs.warn(caller, "identity", "not the participant this session talks to")
            raise rtc.RpcError(2002, "rejected")
        comp = self._companion
        if comp is not None and comp.identity == caller and not comp.limiter.allow():
            self._logs.warn(caller, "rate", "more than 20 calls a second")
            raise rtc.RpcError(2002, "rejected")
        return comp if comp is not None and comp.identity == caller else None

    def _reject(self, caller: str, err: Rejected) -> rtc.RpcError:
        self._logs.warn(caller, err.kind, str(err))
        if isinstance(err, UnsupportedVersion):
            return rtc.RpcError(2001, "unsupported protocol version")
        return rtc.RpcError(2002, "rejected")

    def _rpc_hello(self, data: rtc.RpcInvocationData) -> str:
        caller = data.caller_identity
        comp = self._admit(data)
        try:
            hello = parse_hello(data.payload)
            if comp is not None and comp.sid == hello.sid:
                raise Rejected("replay", "hello repeats the current sid")
        except Rejected as err:
            raise self._reject(caller, err) from None
        limiter = comp.limiter if comp is not None else RateLimiter(self._clock)
        if comp is not None:
            self._forget_companion()
        self._companion = _Companion(
            identity=caller, sid=hello.sid, path=hello.path, limiter=limiter, levels=hello.levels
        )
        if self._tap is not None:
            self._tap.measuring = hello.path != "none"
        logger.info(
            "client playout: companion %r says hello (path %s)",
            hello.client,
            hello.path,
            extra={"identity": caller},
        )
        return json.dumps(
            {
                "v": 1,
                "thr": DEFAULT_THRESHOLD,
                "gap_ms": DEFAULT_GAP * 1000,
                "sync_s": SYNC_PERIOD,
                "max_onsets": MAX_ONSETS,
                "env_bins": ENVELOPE_BINS,
                **({"lv": 1} if hello.levels else {}),
            },
            separators=(",", ":"),
        )

    def _rpc_sync(self, data: rtc.RpcInvocationData) -> str:
        t1 = self._clock()
        caller = data.caller_identity
        comp = self._admit(data)
        try:
            if comp is None:
                raise Rejected("order", "sync before hello")
            sync = parse_sync(data.payload)
            if sync.q <= comp.last_q:
                raise Rejected("replay", f"sequence number {sync.q} already used")
            ex = None
            if sync.prev is not None and sync.prev[0] in comp.pending:
                t0p, t1p, t2p = comp.pending[sync.prev[0]]
                ex = ClockOffset.exchange(t0p, t1p, t2p, sync.prev[1])
                # the client rounds to 0.1 ms: an instant round trip may come out a hair < 0
                if not -0.001 <= ex.rtt <= 10.0:
                    raise Rejected("malformed", "t3 does not fit its exchange")
                ex = Exchange(offset=ex.offset, rtt=max(ex.rtt, 0.0), at=ex.at)
        except Rejected as err:
            raise self._reject(caller, err) from None
        comp.last_q = sync.q
        if sync.prev is not None:
            comp.pending.pop(sync.prev[0], None)
        if ex is not None:
            logger.debug(
                "client playout: clock exchange offset %.1f ms, round trip %.1f ms",
                ex.offset * 1000,
                ex.rtt * 1000,
            )
        if ex is not None and comp.clock.add(ex):
            self._logs.warn(caller, "clock-jump", "the client's clock jumped; re-synced")
        if sync.rx is not None:
            comp.rx = sync.rx
        if sync.net is not None:
            comp.net = sync.net
        sent = comp.clock.to_agent(sync.t0)
        sent = t1 if sent is None else min(sent, t1)
        if sync.jb is not None:
            # the mean over the second before t0 (docs/client-playout.md, "jb")
            comp.jb.add(sync.jb, sent - JB_WINDOW / 2)
        if sync.ad is not None:
            comp.ad.add(sync.ad[0], sent)
            comp.missed.add(sync.ad[1], sent)
        t2 = self._clock()
        comp.pending[sync.q] = (sync.t0, t1, t2)
        while len(comp.pending) > 4:
            del comp.pending[min(comp.pending)]
        return json.dumps(
            # the agent keeps t1 and t2 and completes the exchange itself: the companion
            # needs only how long the agent held the request, for its round trip
            {"q": sync.q, "dt": round((t2 - t1) * 1000, 1)},
            separators=(",", ":"),
        )

    def _rpc_report(self, data: rtc.RpcInvocationData) -> str:
        caller = data.caller_identity
        comp = self._admit(data)
        try:
            if comp is None:
                raise Rejected("order", "report before hello")
            report = parse_report(data.payload)
            if report.q <= comp.last_q:
                raise Rejected("replay", f"sequence number {report.q} already used")
            unc = comp.clock.uncertainty
            if unc is None:
                raise Rejected("order", "report before the first clock exchange")
            now = self._clock()
            onsets = []
            for t, gap, env in report.onsets:
                at = comp.clock.to_agent(t)
                assert at is not None
                if at > now + max(0.05, 2 * unc):
                    raise Rejected("future", f"onset {at - now:.3f} s in the future")
                if at < now - STALE:
                    raise Rejected("stale", f"onset {now - at:.1f} s old")
                onsets.append((at, gap, env))
        except Rejected as err:
            raise self._reject(caller, err) from None
        comp.last_q = report.q
        for at, gap, env in onsets:
            self._match(comp, at, gap, env)
        return ""

    @staticmethod
    def _place(sent: SentOnset, device: float, env: str | None) -> float:
        """The device time of the agent's onset sample, from the device's onset: WebRTC can
        leave out the first milliseconds of sound after silence (up to 20 ms measured), so the
        device's first audible sample may be later audio; its envelope says how much later."""
        if env is None or sent.amp is None:
            return device
        found = envelope_shift(sent.amp, sent.lead, sent.rate, env)
        if found is None or found[1] < MIN_ENVELOPE_SCORE:
            logger.debug(
                "client playout: the device's envelope does not fit the onset at %.3f (%s)",
                sent.onset.at,
                "no audio" if found is None else f"score {found[1]:.2f}",
            )
            return device
        sent.mute = found[0]
        return device - found[0]

    def _match(self, comp: _Companion, device: float, gap: float, env: str | None) -> None:
        cands = [
            o
            for o in self.log.onsets
            if o.device is None
            and not o.dropped
            and device - SEARCH_BACK <= o.onset.at <= device - 0.005
        ]
        d_ref = self.path_delay()
        first = not comp.delays
        if d_ref is None:
            d_ref = 0.1

        chosen: SentOnset | None = None
        step = False
        near = [o for o in cands if _gap_ok(gap, o.onset.gap)]
        if comp.unmatched and device - comp.unmatched[-1][0] <= SUSPECT:
            # the path just did something unexplained: one onset near the old estimate may
            # be a coincidence, so only a lag several onsets agree on is taken
            near = []
        if near:
            best = min(near, key=lambda o: abs(device - o.onset.at - d_ref))
            if abs(device - best.onset.at - d_ref) <= (0.25 if first else 0.06):
                chosen = best
        if chosen is None and near:
            # a step of the path delay: the onset whose gap alone identifies it
            tight = [o for o in cands if _gap_diff(gap, o.onset.gap) <= 0.03]
            if len(near) == 1:
                chosen = near[0]
            elif len(tight) == 1:
                chosen = tight[0]
            if chosen is not None and abs(device - chosen.onset.at - d_ref) > MAX_STEP:
                chosen = None
            step = chosen is not None
        if chosen is None:
            logger.debug(
                "client playout: device onset %.3f (gap %.0f ms) unmatched; d_ref %.1f ms; "
                "candidates (send, gap ms): %s",
                device,
                gap * 1000,
                d_ref * 1000,
                [(round(o.onset.at, 3), round(o.onset.gap * 1000)) for o in cands],
            )
            comp.unmatched.append((device, gap, env))
            if self._reacquire(comp):
                self._measure_open()
            return
        chosen.device = self._place(chosen, device, env)
        if step:
            # the gap alone identified it: the path moved, and the next response (often
            # the next onset at all) is placed by the new delay, not a median with the old
            comp.clear_delays()
        comp.add_delay(chosen.device - chosen.onset.at, chosen.device)
        logger.debug(
            "client playout: device onset %.3f (gap %.0f ms) matched at %.1f ms (sound left "
            "out at the start: %s)",
            device,
            gap * 1000,
            (chosen.device - chosen.onset.at) * 1000,
            "unknown" if chosen.mute is None else f"{chosen.mute * 1000:.1f} ms",
        )
        comp.unmatched.clear()
        self._measure_open()

    def _measure_open(self) -> None:
        for rec in list(self._open):
            self._try_measure(rec)

    def _reacquire(self, comp: _Companion) -> bool:
        """After the path moved beyond the matcher's window (a step, a jump of the jitter
        buffer), find the new delay from the sequence of recent unmatched device onsets: the
        lag at which the most of them line up with the agent's onsets (gaps agreeing).
        Taken only when at least REACQUIRE_SUPPORT distinct onsets agree, two more than still
        fit the current estimate, and no other lag has as much support, so a repeating
        rhythm does not pick a wrong lag."""
        if not comp.unmatched:
            return False
        latest = comp.unmatched[-1][0]
        while comp.unmatched and comp.unmatched[0][0] < latest - REACQUIRE_KEEP:
            comp.unmatched.popleft()
        pairs: list[tuple[float, int, SentOnset]] = []  # (lag, device onset index, agent onset)
        for i, (device, gap, _env) in enumerate(comp.unmatched):
            for o in self.log.onsets:
                if (
                    o.device is None
                    and not o.dropped
                    and device - SEARCH_BACK <= o.onset.at <= device - 0.005
                    and _gap_ok(gap, o.onset.gap)
                ):
                    pairs.append((device - o.onset.at, i, o))
        if len(pairs) < REACQUIRE_SUPPORT:
            return False

        def support(lag: float, tol: float = REACQUIRE_TOL) -> list[tuple[float, int, SentOnset]]:
            # one agent onset per device onset, and each agent onset once: closest lag first
            near = sorted(
                (p for p in pairs if abs(p[0] - lag) <= tol),
                key=lambda p: abs(p[0] - lag),
            )
            used_dev: set[int] = set()
            used_sent: set[int] = set()
            out = []
            for p in near:
                if p[1] in used_dev or id(p[2]) in used_sent:
                    continue
                used_dev.add(p[1])
                used_sent.add(id(p[2]))
                out.append(p)
            return out

        scored = sorted(((len(support(p[0])), p[0]) for p in pairs), key=lambda x: (-x[0], x[1]))
        best_n, best_lag = scored[0]
        need = REACQUIRE_SUPPORT
        d_ref = statistics.median(comp.delays) if comp.delays else None
        if d_ref is not None and abs(best_lag - d_ref) > 0.06:
            # leaving the current estimate takes more than the onsets that still fit it
            need = max(need, len(support(d_ref, 0.06)) + 2)
        if best_n < need:
            return False
        for n, lag in scored[1:]:
            if n < best_n:
                break
            if abs(lag - best_lag) > 2 * REACQUIRE_TOL:
                return False  # two different lags explain the onsets equally well: wait
        chosen = support(statistics.median(p[0] for p in support(best_lag)))
        if len(chosen) < REACQUIRE_SUPPORT:
            return False
        chosen.sort(key=lambda p: p[2].onset.at)
        comp.clear_delays()
        for lag, i, o in chosen:
            o.device = self._place(o, o.onset.at + lag, comp.unmatched[i][2])
            comp.add_delay(o.device - o.onset.at, o.device)
        comp.unmatched.clear()
        logger.info(
            "client playout: the path delay moved to %.0f ms; re-acquired on %d onsets",
            statistics.median(comp.delays) * 1000,
            len(chosen),
        )
        return True


def _gap_diff(device_gap: float, sent_gap: float) -> float:
    return abs(min(device_gap, 5.0) - min(sent_gap, 5.0))


def _gap_ok(device_gap: float, sent_gap: float) -> bool:
    # gaps are a fingerprint: speech after 2.3 s of silence does not match speech after 250 ms
    return _gap_diff(device_gap, sent_gap) <= max(0.05, 0.25 * min(device_gap, sent_gap, 5.0))


class DeviceOutput(_SessionFollower):
    """The sink is the device (console): device start = playout_started + the output latency
    the audio API reports, read when the response starts. See `enable_device_output`."""

    def __init__(
        self,
        session: Any,
        latency: Callable[[], float | None],
        *,
        timer: Timer | None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._session = session
        self._latency = latency
        self._clock = clock
        self._timer = timer or _loop_timer(clock)
        self._closed = False
        self.handles: weakref.WeakSet[SpeechHandle] = weakref.WeakSet()
        self._open: list[_Response] = []

    def start(self) -> None:
        self._follow()

    def _release(self) -> None:
        open_, self._open = self._open, []
        for rec in open_:
            rec.settle_all()

    def track(self, rec: _Response, start: float | None) -> None:
        latency = None if start is None or self._closed else self._latency()
        if start is None or latency is None or not 0 <= latency < 10:
            rec.settle_all()
            return
        rec.start = start
        value = Heard(at=start + latency, how="measured", path_delay=latency, measured_from=0.0)
        rec.settle_measured(value)
        if value.at is not None and value.at > self._clock():
            self._open.append(rec)

            def fire() -> None:
                rec.settle_heard(value)
                self._open = [r for r in self._open if r is not rec]

            self._timer(value.at, fire)
        else:
            rec.settle_heard(value)


def console_output_latency() -> float | None:
    """The console's output latency: PortAudio's ``outputBufferDacTime - currentTime`` of its
    last output callback, which livekit-agents' console keeps (``AgentsConsole._output_delay``,
    a private field of ``livekit.agents.cli._legacy`` in 1.8.x). None when no console runs or
    the release keeps it elsewhere."""
    import importlib

    for name in ("livekit.agents.cli._legacy", "livekit.agents.cli.cli"):
        try:
            mod = importlib.import_module(name)
        except ImportError:
            continue
        inst = getattr(getattr(mod, "AgentsConsole", None), "_instance", None)
        value = getattr(inst, "_output_delay", None)
        if isinstance(value, (int, float)) and value >= 0:
            return float(value)
    return None
