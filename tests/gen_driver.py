"""Runs one generated case (tests/gen_cases.py) in one flavour and records what it did.

Flavours: ``patched`` (the script's breaks are `SegmentBreak`s) and upstream (plain
`FlushSentinel`s in their place). Each run gets its own event loop (`VirtualTimeLoop`). The
driver starts each turn with ``generate_reply``, then, whenever the loop is idle (nothing ready
to run), takes one action: interrupt (at the planned point), release the model's pending
delay, or start or finish the sink's playout (manual modes), picking among the enabled ones
as the case says; the next turn starts once the turn's handle is done. Nothing waits on wall
time; the sink plays on a virtual clock.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
from collections import defaultdict
from collections.abc import AsyncIterable, AsyncIterator
from typing import Any

from livekit import rtc
from livekit.agents import Agent, AgentSession, FlushSentinel, ModelSettings, function_tool, llm
from livekit.agents.llm import ChatChunk, ChoiceDelta, FunctionToolCall
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments import SegmentBreak
from livekit_segments.testing import (
    PlayedSegment as SinkSegment,
    RecordingTextOutput as FakeTextSink,
    VirtualAudioOutput,
    VirtualClock,
)

from .fakes import SAMPLE_RATE, ScriptedAgent, silence_frame, start_session
from .gen_cases import Brk, Case, Delay, Flush, Item, LLMError, Text, Tool

CLOCK0 = 1_800_000_000.0  # the virtual clock's start: the same in both runs of a case
MAX_IDLE_POINTS = 400  # per turn; a case needs far fewer


class Stuck(AssertionError):
    """The session stopped making progress: nothing left to do, yet the turn is not done."""


@function_tool
async def lookup() -> str:
    """Look the answer up."""
    return "42"


def turn_of(handle: SpeechHandle) -> SpeechHandle:
    """The handle a segment handle's reply was scheduled with (public in both forms)."""
    t = handle.reply_handle  # type: ignore[attr-defined]
    assert isinstance(t, SpeechHandle)
    return t


async def until_idle() -> None:
    """Returns once nothing else on the loop is ready to run (timers due later stay)."""
    loop = asyncio.get_running_loop()
    for _ in range(10_000):
        await asyncio.sleep(0)
        ready = loop._ready  # type: ignore[attr-defined]
        timers = loop._scheduled  # type: ignore[attr-defined]
        if not ready and not (timers and timers[0].when() <= loop.time()):
            return
    raise Stuck("the event loop never went idle")


class _VirtualTimeSelector:
    """Wraps the loop's selector: where the loop would sleep until its next timer, the
    virtual time jumps there instead. I/O (another thread's call_soon_threadsafe) still wakes
    it."""

    def __init__(self, selector: Any, loop: VirtualTimeLoop) -> None:
        self._selector = selector
        self._loop = loop

    def select(self, timeout: float | None = None) -> Any:
        events = self._selector.select(0)
        if events or timeout == 0:
            return events
        if timeout is None:
            return self._selector.select(None)
        self._loop.virtual_time += timeout
        return []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._selector, name)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose time moves only when nothing is ready to run.

    The driver always has something ready (it polls for idleness), so upstream's timers (the
    backchannel boundary, the away timer) never fire while it drives a case, however slow the
    machine: a case cannot depend on wall time. While it awaits the session (start, close),
    timers fire at once, in order.
    """

    def __init__(self) -> None:
        super().__init__()
        self.virtual_time = 0.0
        self._selector = _VirtualTimeSelector(self._selector, self)  # type: ignore[has-type]

    def time(self) -> float:
        return self.virtual_time


# ---------------------------------------------------------------- fakes with a log


class DrivenSink(VirtualAudioOutput):
    """The virtual-clock sink as a case driver sees it: what it may do next."""

    # what the driver may do (the only places that read the fake's internals)

    def can_start(self) -> bool:
        head = self._head()
        return (
            self.start_mode == "manual"
            and head is not None
            and head.started_at is None
            and not self.held
        )

    def can_finish(self) -> bool:
        seg = self.playing
        return (
            self.finish_mode == "manual"
            and seg is not None
            and seg.flushed
            and not seg.finish_requested
        )

    @property
    def idle(self) -> bool:
        """Every segment captured so far has played out (or was cleared)."""
        return all(s.finished for s in self.segments)


class GenSink(DrivenSink):
    """The virtual-clock sink, logging every call it gets."""

    def __init__(self, run: Run, clock: VirtualClock, *, start: str, finish: str) -> None:
        super().__init__(clock=clock, start=start, finish=finish, sample_rate=SAMPLE_RATE)
        self.run = run
        self.log: list[tuple[Any, ...]] = []

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        n = len(self.segments) - 1
        last = self.log[-1] if self.log else None
        if last is not None and last[0] == "frames" and last[1] == n:
            self.log[-1] = ("frames", n, last[2] + 1)
        else:
            self.log.append(("frames", n, 1))

    def flush(self) -> None:
        self.log.append(("flush",))
        super().flush()

    def clear_buffer(self) -> None:
        self.log.append(("clear",))
        super().clear_buffer()

    def _start(self, seg: SinkSegment) -> None:
        n = self.segments.index(seg)
        self.log.append(("start", n, self.clock.now()))
        self.run.in_start = (n, self.clock.now())
        try:
            super()._start(seg)
        finally:
            self.run.in_start = None

    def _finish(self, seg: SinkSegment, *, interrupted: bool) -> None:
        super()._finish(seg, interrupted=interrupted)
        self.log.append(("finish", self.segments.index(seg), interrupted))


class GenTextSink(FakeTextSink):
    def __init__(self) -> None:
        super().__init__()
        self.log: list[tuple[Any, ...]] = []

    async def capture_text(self, text: str) -> None:
        await super().capture_text(text)
        last = self.log[-1] if self.log else None
        if last is not None and last[0] == "text":
            self.log[-1] = ("text", last[1] + text)
        else:
            self.log.append(("text", text))

    def flush(self) -> None:
        super().flush()
        self.log.append(("flush",))


class GenAgent(ScriptedAgent):
    """Plays the case's scripts: one per (turn, LLM call); tells the run what it yielded."""

    def __init__(self, run: Run) -> None:
        super().__init__([], tools=[lookup])
        self.run = run
        self.turn = 0
        self.step_calls: dict[int, int] = defaultdict(int)
        self.blocked: asyncio.Future[None] | None = None

    async def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncIterator[str | FlushSentinel | ChatChunk]:
        run, t = self.run, self.turn
        step = self.step_calls[t]
        self.step_calls[t] += 1
        steps = run.case.turns[t].steps
        script: tuple[Item, ...] = steps[step] if step < len(steps) else ()
        key = (t, step)
        # upstream flavour: the documented whitespace rule (README Semantics, "break followed
        # only by whitespace"), so that both flavours say the same: after a break, whitespace
        # waits for the response's first word; a flush, a break or the end drops it
        pending = False
        held: list[str] = []
        try:
            for n, item in enumerate(script):
                if isinstance(item, Delay):
                    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                    self.blocked = fut
                    try:
                        await fut
                    finally:
                        self.blocked = None
                    continue
                if isinstance(item, LLMError):
                    raise RuntimeError("generated llm failure")
                run.yielded[key] = n
                if isinstance(item, Tool):
                    yield ChatChunk(
                        id=f"chunk_{t}_{step}_{n}",
                        delta=ChoiceDelta(
                            role="assistant",
                            tool_calls=[
                                FunctionToolCall(
                                    name="lookup", arguments="{}", call_id=f"call_{t}_{step}_{n}"
                                )
                            ],
                        ),
                    )
                elif isinstance(item, Text):
                    if not run.patched and item.text:
                        if pending and item.text.isspace():
                            held.append(item.text)
                            continue
                        pending = False
                        for chunk in held:
                            yield chunk
                        held.clear()
                    yield item.text
                elif isinstance(item, Flush):
                    held.clear()
                    yield FlushSentinel()
                elif isinstance(item, Brk):
                    held.clear()
                    pending = True
                    yield run.break_for(key, n, item)
        finally:
            run.ended.add(key)

    async def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings
    ) -> AsyncIterator[rtc.AudioFrame]:
        async for chunk in text:
            if "Boom" in chunk:
                raise RuntimeError("generated tts failure")
            if not chunk.strip():
                continue  # a real TTS says nothing for whitespace
            for _ in range(2):
                yield silence_frame()

    def transcription_node(self, text: AsyncIterable[Any], model_settings: ModelSettings) -> Any:
        # called right before each segment is forwarded, in both forms and both flavours
        self.run.on_transcription_node()
        return Agent.default.transcription_node(self, text, model_settings)


# ---------------------------------------------------------------- log records (behaviour too)

_ID = re.compile(r"\b([a-z]+_)([0-9a-f]{12})\b")  # upstream's shortuuid(prefix) ids
_ADDR = re.compile(r" at 0x[0-9a-f]+")


class IdNames:
    """Names random ids (``speech_5ae1637242b7``) by order of first appearance, so that two
    runs of one case read alike: ``speech_#1``, ``item_#3``."""

    def __init__(self) -> None:
        self.names: dict[str, str] = {}

    def _name(self, m: re.Match[str]) -> str:
        key = m.group(0)
        if key not in self.names:
            self.names[key] = f"{m.group(1)}#{len(self.names) + 1}"
        return self.names[key]

    def __call__(self, text: str) -> str:
        return _ADDR.sub(" at 0x?", _ID.sub(self._name, text))


class LogCapture(logging.Handler):
    """Records (logger, level, message) of every WARNING and above, ids named by `IdNames`.

    While active it is the root logger's only handler (pytest's capture would keep every
    record's traceback, and with it a whole session, per case)."""

    def __init__(self, names: IdNames, sink: list[tuple[Any, ...]]) -> None:
        super().__init__(logging.WARNING)
        self.ids = names
        self.sink = sink

    def emit(self, record: logging.LogRecord) -> None:
        self.sink.append(("log", record.name, record.levelname, self.ids(record.getMessage())))

    def __enter__(self) -> LogCapture:
        root = logging.getLogger()
        self._saved = (root.handlers[:], root.level, logging.root.manager.disable)
        root.handlers[:] = [self]
        root.setLevel(logging.WARNING)
        logging.disable(logging.INFO)
        return self

    def __exit__(self, *exc: object) -> None:
        root = logging.getLogger()
        handlers, level, disabled = self._saved
        root.handlers[:] = handlers
        root.setLevel(level)
        logging.disable(disabled)


# ---------------------------------------------------------------- one run


def error_of(handle: SpeechHandle) -> BaseException | None:
    """The turn's failure (`SpeechHandle.exception()` is 1.7+; None before)."""
    exception = getattr(handle, "exception", None)
    return None if exception is None else exception()  # type: ignore[no-any-return]


def history(agent: Agent) -> list[tuple[Any, ...]]:
    out: list[tuple[Any, ...]] = []
    for item in agent.chat_ctx.items:
        if item.type == "message":
            out.append(("message", item.role, item.text_content, item.interrupted))
        elif item.type == "function_call":
            out.append(("function_call", item.name, item.arguments))
        elif item.type == "function_call_output":
            out.append(("function_call_output", item.output, item.is_error))
        else:
            out.append((item.type,))
    return out


class Run:
    """One case in one flavour, with everything the properties look at."""

    def __init__(
        self, case: Case, *, patched: bool, sc_points: dict[int, int] | None = None
    ) -> None:
        self.case = case
        self.patched = patched
        self.clock = VirtualClock(CLOCK0)
        self.sink = (
            GenSink(self, self.clock, start=case.start, finish=case.finish) if case.audio else None
        )
        self.text_sink = GenTextSink()
        self.agent = GenAgent(self)
        self.session: AgentSession | None = None
        # what the model did: last item index yielded, and ended, per (turn, step)
        self.yielded: dict[tuple[int, int], int] = {}
        self.ended: set[tuple[int, int]] = set()
        self.breaks: dict[tuple[int, int, int], Any] = {}
        self.break_pos: dict[int, tuple[int, int, int]] = {}  # id(break) -> (turn, step, n)
        # handles
        self.turn_handles: list[SpeechHandle] = []
        self.segments: dict[int, list[SpeechHandle]] = defaultdict(list)  # turn -> handles
        self.created: list[SpeechHandle] = []  # every speech_created handle, in order
        self.cur_turn = -1
        self.turn_first_segment = 0  # the sink's first segment of the current turn
        self.in_start: tuple[int, float] | None = None
        self.resolved_at_start: dict[int, tuple[int, float]] = {}  # id(handle) -> (seg, ts)
        # interruptions
        self.tr_calls = 0
        self.sc_points = sc_points or {}  # upstream flavour: tr call -> turn to interrupt
        self.sc_recorded: dict[int, int] = {}  # patched flavour: turn -> tr call
        self.interrupt_futs: list[asyncio.Future[Any]] = []
        self.done_before_interrupt: list[SpeechHandle] = []
        self.lagging: list[str] = []  # not interrupted right after interrupt() returned
        self.late: list[str] = []  # segment handles not done on time
        self.after_interrupt: list[str] = []  # handles announced in an interrupted turn
        self.whitespace: list[str] = []  # handles announced for whitespace-only responses
        self.turn_done_first: list[str] = []  # turn handle done before one of its segments
        # the driver's trace, compared between the flavours
        self.trace: list[tuple[Any, ...]] = []
        self.effective: list[str] = []  # interruptions that interrupted a turn
        # the handles' state at each idle point where it changed (for comparing the forms)
        self.timeline: list[tuple[Any, ...]] = []
        self.picks = 0
        # WARNING and above, in order (compared between the flavours, like the sink calls)
        self.ids = IdNames()
        self.logs: list[tuple[Any, ...]] = []
        # tests/differential.py's hooks: attached to the session before it starts, and
        # told of each call the driver makes as the app (None: nothing recorded)
        self.recorder: Any = None
        # the "playback_started" interruption from the sink's event, before the session's
        # own listener sees it (a recorder registers that listener), not after
        self.interrupt_before_session = False
        self.loop_errors: list[dict[str, Any]] = []
        self.leftover: list[str] = []

    # -- script bookkeeping

    def break_for(self, key: tuple[int, int], n: int, item: Brk) -> FlushSentinel:
        obj: FlushSentinel = (
            SegmentBreak(id=item.id, userdata=item.userdata) if self.patched else FlushSentinel()
        )
        self.breaks[(*key, n)] = obj
        self.break_pos[id(obj)] = (*key, n)
        return obj

    def response_text(self, brk: Any) -> str | None:
        """The text the script gives the response a break labels (up to the next break)."""
        pos = self.break_pos.get(id(brk))
        if pos is None:
            return None
        t, step, n = pos
        out = []
        for item in self.case.turns[t].steps[step][n + 1 :]:
            if isinstance(item, Brk):
                break
            if isinstance(item, Text):
                out.append(item.text)
        return "".join(out)

    def response_complete(self, brk: Any) -> bool:
        """The model yielded the next break after this one, or its step ended."""
        pos = self.break_pos.get(id(brk))
        if pos is None:
            return False
        t, step, n = pos
        if (t, step) in self.ended:
            return True
        upto = self.yielded.get((t, step), -1)
        script = self.case.turns[t].steps[step]
        return any(isinstance(script[m], Brk) for m in range(n + 1, upto + 1))

    # -- hooks

    def handles_of(self, t: int) -> list[SpeechHandle]:
        return [self.turn_handles[t], *self.segments[t]]

    def all_handles(self) -> list[SpeechHandle]:
        return [h for t in range(len(self.turn_handles)) for h in self.handles_of(t)]

    def on_speech_created(self, ev: Any) -> None:
        h: SpeechHandle = ev.speech_handle
        self.created.append(h)
        if h.segment_index == 0:
            return  # the turn's own handle (generate_reply)
        t = self.cur_turn
        turn = self.turn_handles[t]
        if turn.interrupted:
            self.after_interrupt.append(f"turn {t}: segment {h.segment_index} ({h.id})")
        self.segments[t].append(h)
        text = self.response_text(h.segment_break)
        if text is not None and text.strip() == "":
            self.whitespace.append(f"turn {t}: segment {h.segment_index} for {text!r}")
        spec = self.case.turns[t].interrupt
        if (
            self.patched
            and spec is not None
            and spec.kind == "speech_created"
            and len(self.segments[t]) == spec.at
        ):
            self.sc_recorded[t] = self.tr_calls
            self.interrupt(t, "speech_created", h)
            self.effective.append("speech_created")

    def on_transcription_node(self) -> None:
        self.tr_calls += 1
        t = self.sc_points.get(self.tr_calls)
        if not self.patched and t is not None:
            self.interrupt(t, "speech_created", None)

    def after_started(self, n: int) -> None:
        assert self.in_start is not None
        for h in self.all_handles():
            fut = h.playout_started
            if id(h) not in self.resolved_at_start and fut.done() and fut.result() is not None:
                self.resolved_at_start[id(h)] = self.in_start
        if not self.interrupt_before_session:
            self.playback_interrupt(n)

    def playback_interrupt(self, n: int) -> None:
        """The case's "playback_started" interruption, if sink segment ``n`` is its point."""
        t = self.cur_turn
        spec = self.case.turns[t].interrupt
        turn = self.turn_handles[t]
        if (
            spec is not None
            and spec.kind == "playback_started"
            and n - self.turn_first_segment == spec.at
            and not turn.done()
        ):
            self.interrupt(t, "turn", None)
            self.trace.append(("interrupt", t, spec.kind, turn.interrupted))
            if turn.interrupted:
                self.effective.append(spec.kind)

    # -- interruptions

    def interrupt(self, t: int, kind: str, seg: SpeechHandle | None) -> None:
        assert self.session is not None
        turn = self.turn_handles[t]
        handles = self.handles_of(t)
        self.done_before_interrupt += [h for h in handles if h.done() and not h.interrupted]
        if kind == "session":
            self.interrupt_futs.append(self.session.interrupt())
        elif kind == "turn":
            turn.interrupt()
        elif kind == "segment":
            live = [h for h in handles if not h.done()]
            (live[-1] if live else turn).interrupt()
        elif kind == "barge_in":
            activity = self.session._activity
            assert activity is not None
            activity._interrupt_by_audio_activity()
        elif kind == "speech_created":
            self.mark(("mark", t))  # the segment about to start: see test_generated.EXACT_TIMING
            (seg if seg is not None else turn).interrupt()
        if turn.interrupted:
            self.lagging += [
                f"turn {t}: {h.id} (segment {h.segment_index}) after {kind} interrupt"
                for h in handles
                if not h.done() and not h.interrupted
            ]

    def after_call(self, call: str, t: int) -> None:
        """Called right after each call the driver makes as the app (a recorder's hook)."""

    def mark(self, marker: tuple[Any, ...]) -> None:
        """Put a marker into every compared log (stripped before comparing)."""
        for log in (self.sink.log if self.sink else None, self.text_sink.log, self.trace):
            if log is not None:
                log.append(marker)

    # -- the driver

    def enabled(self) -> list[str]:
        acts = []
        if self.agent.blocked is not None and not self.agent.blocked.done():
            acts.append("release")
        if self.sink is not None and self.sink.can_start():
            acts.append("start")
        if self.sink is not None and self.sink.can_finish():
            acts.append("finish")
        return acts

    def apply(self, act: str) -> None:
        if act == "release":
            assert self.agent.blocked is not None
            self.agent.blocked.set_result(None)
        elif act == "start":
            assert self.sink is not None
            self.sink.start_playback()
        elif act == "finish":
            assert self.sink is not None
            self.sink.finish_playback()

    def pick(self) -> int:
        i, self.picks = self.picks, self.picks + 1
        return self.case.choices[i] if i < len(self.case.choices) else self.case.fallback

    async def idle(self) -> None:
        await until_idle()

    def record_state(self, t: int, point: int) -> None:
        state = tuple(
            (
                h.segment_index,
                h.done(),
                h.interrupted,
                "pending"
                if not h.playout_started.done()
                else "cancelled"
                if h.playout_started.result() is None
                else h.playout_started.result()
                if self.sink is not None
                else "resolved",  # text only: a wall-clock time
            )
            for h in self.handles_of(t)
        )
        last = next((e for e in reversed(self.timeline) if e[0] == t), None)
        if last is None or last[2] != state:
            self.timeline.append((t, point, state))

    def check_on_time(self, t: int) -> None:
        """Every segment handle whose response is complete and played out is done."""
        if not self.patched:
            return
        for h in self.segments[t]:
            if h.done():
                continue
            played = self.sink is None or self.sink.idle
            if played and self.response_complete(h.segment_break):
                self.late.append(
                    f"turn {t}: {h.id} (segment {h.segment_index}) not done although its "
                    f"response is complete and {'played out' if self.sink else 'forwarded'}"
                )

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        session = await start_session(
            self.agent, sink=self.sink, text_sink=self.text_sink, recorder=self.recorder
        )
        self.session = session
        session.on("speech_created", self.on_speech_created)
        if self.sink is not None:
            self.sink.after_started = self.after_started
        for t, spec in enumerate(self.case.turns):
            self.cur_turn = t
            self.agent.turn = t
            self.mark(("turn", t))
            self.turn_first_segment = len(self.sink.segments) if self.sink else 0
            turn = session.generate_reply(user_input=f"question {t}")
            self.turn_handles.append(turn)
            self.after_call("generate_reply", t)
            points = 0
            while True:
                await self.idle()
                self.record_state(t, points)
                self.check_on_time(t)
                if turn.done():
                    self.turn_done_first += [
                        f"turn {t} done, {h.id} not" for h in self.segments[t] if not h.done()
                    ]
                ip = spec.interrupt
                at_idle = ip is not None and ip.kind not in ("speech_created", "playback_started")
                if ip is not None and at_idle and ip.at == points:
                    points += 1
                    if not turn.done():
                        self.interrupt(t, ip.kind, None)
                        self.trace.append(("interrupt", t, ip.kind, turn.interrupted))
                        if turn.interrupted:
                            self.effective.append(ip.kind)
                        continue
                if turn.done():
                    break
                acts = self.enabled()
                if not acts:
                    raise Stuck(f"turn {t}: nothing to do, yet the turn is not done")
                act = acts[self.pick() % len(acts)]
                self.trace.append((t, tuple(acts), act))
                self.apply(act)
                points += 1
                if points > MAX_IDLE_POINTS:
                    raise Stuck(f"turn {t}: still running after {MAX_IDLE_POINTS} actions")
        await session.aclose()
        for fut in self.interrupt_futs:
            await fut
        await self.idle()
        me = asyncio.current_task()
        self.leftover = [repr(t) for t in asyncio.all_tasks() if t is not me and not t.done()]

    def run(self) -> Run:
        loop = VirtualTimeLoop()
        try:
            with LogCapture(self.ids, self.logs):
                loop.run_until_complete(self.main())
        finally:
            # cancel whatever is left (reported in self.leftover) so the loop closes cleanly
            rest = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in rest:
                task.cancel()
            if rest:
                loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            gc.collect()  # unretrieved futures report from __del__ (cheap after gc.freeze())
        return self

    # -- what the two flavours must agree on

    def observed(self) -> dict[str, Any]:
        return {
            "sink": list(self.sink.log) if self.sink is not None else None,
            "text": list(self.text_sink.log),
            "history": history(self.agent),
            "trace": list(self.trace),
            "logs": list(self.logs),
            "turns": [
                (h.interrupted, type(error_of(h)).__name__ if error_of(h) else None)
                for h in self.turn_handles
            ],
        }
