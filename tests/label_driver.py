"""Runs one reply script twice, to check that the "thinking" label between responses changes
what the frontend sees and never how the session reacts (issue 21, item 2; design D8).

A case (`LabelCase`) is plain data: what each ``llm_node`` call yields (text, breaks, gaps where
the model waits, tool calls), how the sink plays, whether the session pauses on a false
interruption, and the driver's picks among the actions it can take at each idle point: the
model goes on, the sink starts or finishes a segment, the user starts speaking, keeps speaking
(a VAD inference with enough speech to interrupt), stops, or is transcribed (a final
transcript), the virtual time moves on to upstream's next timer (the false-interruption
timeout), or the app interrupts or queues a ``say()``. A case may run without an audio
output (text only).

`LabelRun` runs it once with `SegmentBreak`s and once with a plain `FlushSentinel` in their
place, each on its own virtual-time loop, driving upstream's own entry points (the activity's
``on_start_of_speech``, ``on_vad_inference_done``, ``on_end_of_speech``,
``on_final_transcript``, as its audio recognition calls them). It records the session's
reactions (`LabelRun.log`) and the ``agent_state_changed`` events separately (`LabelRun.states`):
the reactions must be identical, and the events equal once the label's own are taken out
(`label_alignment`).
"""

from __future__ import annotations

import asyncio
import functools
import gc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import (
    AgentSession,
    FlushSentinel,
    ModelSettings,
    function_tool,
    llm,
    stt,
    vad,
)
from livekit.agents.llm import ChatChunk, ChoiceDelta, FunctionToolCall
from livekit.agents.voice import agent_activity as _activity_mod, io
from livekit.agents.voice.audio_recognition import AudioRecognition
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments import SegmentBreak
from livekit_segments.testing import (
    NodeOnlyLLM,
    OfflineTTS,
    PlayedSegment,
    RecordingTextOutput,
    VirtualClock,
)

from .fakes import SAMPLE_RATE, ScriptedAgent
from .gen_driver import DrivenSink, Stuck, VirtualTimeLoop, until_idle

CLOCK0 = 1_800_000_000.0
MAX_POINTS = 300  # actions per case; a case needs far fewer
FALSE_INTERRUPTION_TIMEOUT = 1.0
ELAPSE = 1.5  # one "elapse" action: past the false-interruption timeout
MIN_INTERRUPTION = 0.5  # seconds of user speech that interrupt (upstream's min_duration)


# ---------------------------------------------------------------- the case


@dataclass(frozen=True)
class Say:
    """A text chunk (one TTS chunk: ``frames`` frames of audio)."""

    text: str


@dataclass(frozen=True)
class Break:
    """A `SegmentBreak` in the patched run, a plain `FlushSentinel` in the other."""


@dataclass(frozen=True)
class Gap:
    """The model waits here until the driver lets it go on (a future, never a sleep)."""


@dataclass(frozen=True)
class Call:
    """A call to the agent's ``lookup`` tool; the follow-up step is the turn's next script."""


Item = Say | Break | Gap | Call

# the driver's actions
RELEASE, START, FINISH = "release", "start", "finish"
USER_START, USER_ACTIVE, USER_END, USER_FINAL = "user_start", "user_active", "user_end", "final"
ELAPSE_ACT, INTERRUPT, SAY = "elapse", "interrupt", "say"
# a pick "gap:<action>" waits for a gap (`LabelRun.in_gap`) before it takes the action
GAP_PREFIX = "gap:"
# when the case's picks are used up: progress first (the user stops, the sink plays, then the
# model goes on, timers fire), never a new disturbance
_FALLBACK_ORDER = (USER_END, START, FINISH, RELEASE, ELAPSE_ACT)


@dataclass(frozen=True)
class LabelCase:
    start: str  # the sink's start mode: "auto" or "manual"
    finish: str  # its finish mode
    pause: bool  # resume_false_interruption: a barge-in pauses (True) or interrupts
    turns: tuple[tuple[tuple[Item, ...], ...], ...]  # per user turn, one script per LLM call
    # the driver's pick at each point: an index (modulo the enabled actions), or an action's
    # name, taken at the first point it is enabled (progress actions until then); "a+b" is a,
    # then b
    choices: tuple[int | str, ...]
    interrupt_kind: str = "turn"  # the app's interrupt: "turn" handle or "session"
    audio: bool = True  # False: the session has no audio output (text only)


# ---------------------------------------------------------------- fakes


class PausableSink(DrivenSink):
    """The virtual-clock sink, pausable as upstream's false-interruption handling needs, with
    a log of every call upstream makes on it (into the run's reaction log)."""

    def __init__(self, run: LabelRun, clock: VirtualClock, *, start: str, finish: str) -> None:
        super().__init__(clock=clock, start=start, finish=finish, sample_rate=SAMPLE_RATE)  # type: ignore[arg-type]
        self._capabilities = io.AudioOutputCapabilities(pause=True)
        self.run = run
        self.paused = False

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        n = len(self.segments) - 1
        log = self.run.log
        last = log[-1] if log else None
        if last is not None and last[0] == "frames" and last[1] == n:
            log[-1] = ("frames", n, last[2] + 1, last[3])
        else:
            self.run.record("frames", n, 1)

    def flush(self) -> None:
        self.run.record("flush")
        super().flush()

    def clear_buffer(self) -> None:
        self.run.record("clear")
        super().clear_buffer()

    def pause(self) -> None:
        self.run.record("pause", self.paused)
        self.paused = True
        self.hold()

    def resume(self) -> None:
        self.run.record("resume", self.paused)
        self.paused = False
        self.release()

    def _start(self, seg: PlayedSegment) -> None:
        self.run.record("start", self.segments.index(seg), self.clock.now())
        super()._start(seg)

    def _finish(self, seg: PlayedSegment, *, interrupted: bool) -> None:
        super()._finish(seg, interrupted=interrupted)
        self.run.record("finish", self.segments.index(seg), interrupted, seg.playback_position)

    @property
    def idle(self) -> bool:
        """Every segment captured so far has played out (or was cleared), and no capture is
        under way."""
        return DrivenSink.idle.fget(self) and self._capturing is None  # type: ignore[attr-defined]


class LabelAgent(ScriptedAgent):
    """Plays the case's scripts, one per (turn, LLM call)."""

    def __init__(self, run: LabelRun) -> None:
        super().__init__([])
        self.run = run
        self.turn = 0
        self.step = 0
        self.blocked: asyncio.Future[None] | None = None
        self.after_break = False  # the last item yielded was a break
        self.spoke = False  # this LLM call yielded text

    @function_tool
    async def lookup(self) -> str:
        """Look the answer up."""
        self.run.record("tool_ran")
        return "42"

    async def llm_node(
        self,
        chat_ctx: llm.ChatContext,
        tools: list[llm.Tool],
        model_settings: ModelSettings,
    ) -> AsyncIterator[str | FlushSentinel | ChatChunk]:
        run = self.run
        steps = run.case.turns[self.turn]
        step, self.step = self.step, self.step + 1
        script = steps[step] if step < len(steps) else ()
        self.after_break = self.spoke = False
        for n, item in enumerate(script):
            if isinstance(item, Gap):
                fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self.blocked = fut
                try:
                    await fut
                finally:
                    self.blocked = None
            elif isinstance(item, Break):
                self.after_break = True
                yield SegmentBreak() if run.patched else FlushSentinel()
                continue
            elif isinstance(item, Call):
                yield ChatChunk(
                    id=f"chunk_{self.turn}_{step}_{n}",
                    delta=ChoiceDelta(
                        role="assistant",
                        tool_calls=[
                            FunctionToolCall(
                                name="lookup",
                                arguments="{}",
                                call_id=f"call_{self.turn}_{step}_{n}",
                            )
                        ],
                    ),
                )
            else:
                self.spoke = True
                yield item.text
            self.after_break = False


# ---------------------------------------------------------------- recording seams


@contextmanager
def _observed_steps(runs: Callable[[], LabelRun | None]) -> Iterator[None]:
    """Records upstream's end-of-speech and start-of-speech bookkeeping of the agent (the
    activity's ``_on_end_of_agent_speech``, the recognition's ``_on_start_of_agent_speech``)
    into the current run's log; the originals are restored on exit."""
    # (releases before these steps existed record nothing for them)
    end_orig = getattr(_activity_mod.AgentActivity, "_on_end_of_agent_speech", None)
    start_orig = getattr(AudioRecognition, "_on_start_of_agent_speech", None)
    if end_orig is None or start_orig is None:
        yield
        return

    @functools.wraps(end_orig)
    def on_end(self: Any, *args: Any, **kwargs: Any) -> Any:
        run = runs()
        if run is not None:
            run.record("end_of_agent_speech")
        return end_orig(self, *args, **kwargs)

    @functools.wraps(start_orig)
    def on_start(self: Any, *args: Any, **kwargs: Any) -> Any:
        run = runs()
        if run is not None:
            run.record("start_of_agent_speech")
        return start_orig(self, *args, **kwargs)

    _activity_mod.AgentActivity._on_end_of_agent_speech = on_end  # type: ignore[method-assign]
    AudioRecognition._on_start_of_agent_speech = on_start  # type: ignore[method-assign]
    try:
        yield
    finally:
        _activity_mod.AgentActivity._on_end_of_agent_speech = end_orig  # type: ignore[method-assign]
        AudioRecognition._on_start_of_agent_speech = start_orig  # type: ignore[method-assign]


_current: list[LabelRun] = []


def _vad_event(kind: vad.VADEventType, *, speech: float, speaking: bool) -> vad.VADEvent:
    return vad.VADEvent(
        type=kind,
        samples_index=0,
        timestamp=0.0,
        speech_duration=speech,
        silence_duration=0.0,
        speaking=speaking,
    )


def _split(choice: int | str) -> list[int | str]:
    if isinstance(choice, int):
        return [choice]
    first, *rest = choice.split("+")
    return [first, *rest]


# ---------------------------------------------------------------- the run


class LabelRun:
    """One case in one flavour: everything the session did, in order."""

    def __init__(self, case: LabelCase, *, patched: bool) -> None:
        self.case = case
        self.patched = patched
        self.clock = VirtualClock(CLOCK0)
        self.sink = PausableSink(self, self.clock, start=case.start, finish=case.finish)
        self.agent = LabelAgent(self)
        self.session: AgentSession | None = None
        self.loop: asyncio.AbstractEventLoop | None = None
        # the session's reactions, in order, each with the driver's point and the loop time
        self.log: list[tuple[Any, ...]] = []
        # agent_state_changed events: (point, old, new)
        self.states: list[tuple[int, str, str]] = []
        self.replies: list[SpeechHandle] = []  # every handle that is not a segment handle
        self.segment_handles = 0
        self.point = 0
        self.picks = 0
        # "a+b": a, then b at the next point it can be taken
        self.choices = [c for choice in case.choices for c in _split(choice)]
        self.user_speaking = False
        self.interrupted_turns: set[int] = set()
        self.said: set[int] = set()  # turns in which the app queued a say()
        self.cur_turn = 0
        self.loop_errors: list[dict[str, Any]] = []
        self.leftover: list[str] = []
        # what the case did, for coverage notes: (action, label on in the patched run)
        self.acts: list[tuple[str, bool]] = []

    # -- recording

    def now(self) -> float:
        return round(self.loop.time(), 6) if self.loop is not None else 0.0

    def record(self, *entry: Any) -> None:
        self.log.append((*entry, (self.point, self.now())))

    def hidx(self, h: SpeechHandle | None) -> int | None:
        if h is None:
            return None
        for i, r in enumerate(self.replies):
            if r is h:
                return i
        return -1  # a segment handle (patched run only): upstream never sees those

    def _attach(self, session: AgentSession) -> None:
        session.on("agent_state_changed", self._on_state)
        session.on("speech_created", self._on_created)
        session.on("user_state_changed", lambda ev: self.record("user", ev.old_state, ev.new_state))
        session.on(
            "agent_false_interruption", lambda ev: self.record("false_interruption", ev.resumed)
        )
        session.on(
            "function_tools_executed",
            lambda ev: self.record("tools_executed", [c.name for c in ev.function_calls]),
        )
        session.on(
            "conversation_item_added",
            lambda ev: self.record(
                "item",
                ev.item.type,
                getattr(ev.item, "role", None),
                getattr(ev.item, "text_content", None),
                getattr(ev.item, "interrupted", None),
            ),
        )

    def _on_state(self, ev: Any) -> None:
        self.states.append((self.point, ev.old_state, ev.new_state))

    def _on_created(self, ev: Any) -> None:
        h: SpeechHandle = ev.speech_handle
        if getattr(h, "segment_index", 0) >= 1:
            self.segment_handles += 1
            return
        self.replies.append(h)
        i = len(self.replies) - 1
        self.record("created", i, ev.source, ev.user_initiated)
        h._interrupt_fut.add_done_callback(lambda _: self.record("interrupted", i))
        h.add_done_callback(lambda _: self.record("done", i, h.interrupted))

    def snapshot(self) -> tuple[Any, ...]:
        """What upstream's decisions read, at an idle point (a release without one of these
        internals reads "n/a" in both runs)."""
        session = self.session
        assert session is not None
        act = session._activity

        def read(name: str) -> Any:
            return None if act is None else getattr(act, name, "n/a")

        paused = read("_paused_speech")
        timer = read("_false_interruption_timer")
        return (
            "snap",
            session.agent_state,  # the property upstream reads: equal in both runs
            session.user_state,
            read("_interruption_by_audio_activity_enabled"),
            paused
            if paused is None or paused == "n/a"
            else (
                self.hidx(paused.handle),
                getattr(paused, "agent_state", "n/a"),
                getattr(paused, "timeout", "n/a"),
            ),
            timer if timer in (None, "n/a") else True,
            read("_false_interruption_pending"),
            None if act is None else self.hidx(act._current_speech),
            tuple((h.interrupted, h.done(), h.allow_interruptions) for h in self.replies),
            self.sink.held,
            self.user_speaking,
        )

    # -- the driver

    def enabled(self, turn: SpeechHandle) -> list[str]:
        acts = []
        if self.agent.blocked is not None and not self.agent.blocked.done():
            acts.append(RELEASE)
        if self.sink.can_start():
            acts.append(START)
        if self.sink.can_finish():
            acts.append(FINISH)
        if self.user_speaking:
            acts += [USER_ACTIVE, USER_END, USER_FINAL]
        else:
            acts += [USER_START, USER_FINAL]
        loop = self.loop
        if loop is not None and any(not t.cancelled() for t in loop._scheduled):  # type: ignore[attr-defined]
            acts.append(ELAPSE_ACT)
        if self.cur_turn not in self.interrupted_turns and not turn.done():
            acts.append(INTERRUPT)
        if self.cur_turn not in self.said:
            acts.append(SAY)
        return acts

    def pick(self, acts: list[str]) -> str:
        i = self.picks
        if i < len(self.choices):
            choice = self.choices[i]
            if isinstance(choice, int):
                self.picks += 1
                return acts[choice % len(acts)]
            name = choice.removeprefix(GAP_PREFIX)
            if name in acts and (name == choice or self.in_gap()):
                self.picks += 1
                return name
            # a named action waits until it is enabled (and, with the prefix, for a gap);
            # meanwhile the session progresses, without letting the model go on past a gap
            for act in _FALLBACK_ORDER:
                if act in acts and (name == choice or act != RELEASE):
                    return act
            self.picks += 1  # it can never be taken: dropped
        for act in _FALLBACK_ORDER:
            if act in acts:
                return act
        raise Stuck(f"nothing that makes progress among {acts}")

    async def apply(self, act: str, turn: SpeechHandle) -> None:
        session = self.session
        assert session is not None
        activity = session._activity
        if act == RELEASE:
            assert self.agent.blocked is not None
            self.agent.blocked.set_result(None)
        elif act == START:
            self.sink.start_playback()
        elif act == FINISH:
            self.sink.finish_playback()
        elif act == USER_START:
            assert activity is not None
            self.user_speaking = True
            ev = _vad_event(vad.VADEventType.START_OF_SPEECH, speech=0.1, speaking=True)
            activity.on_start_of_speech(ev, self.clock.now())
        elif act == USER_ACTIVE:
            assert activity is not None
            ev = _vad_event(
                vad.VADEventType.INFERENCE_DONE, speech=MIN_INTERRUPTION + 0.5, speaking=True
            )
            activity.on_vad_inference_done(ev)
        elif act == USER_END:
            assert activity is not None
            self.user_speaking = False
            activity.on_end_of_speech(
                _vad_event(vad.VADEventType.END_OF_SPEECH, speech=1.0, speaking=False)
            )
        elif act == USER_FINAL:
            assert activity is not None
            activity.on_final_transcript(
                stt.SpeechEvent(
                    type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                    alternatives=[stt.SpeechData(language="en", text="wait a moment")],
                ),
                speaking=self.user_speaking,
            )
        elif act == ELAPSE_ACT:
            await asyncio.sleep(ELAPSE)
        elif act == SAY:
            # the app queues a say() behind the reply (it plays once the reply is over)
            self.said.add(self.cur_turn)
            session.say(f"by the way {self.cur_turn}. ")
        elif act == INTERRUPT:
            self.interrupted_turns.add(self.cur_turn)
            if self.case.interrupt_kind == "session":
                fut = session.interrupt()
                fut.add_done_callback(lambda f: f.cancelled() or f.exception())
            else:
                turn.interrupt()

    async def idle(self) -> None:
        await until_idle()

    def in_gap(self) -> bool:
        """The model waits after a break that followed some text, and all it said so far has
        played out (the patched run shows the label then, unless something else changed the
        state)."""
        blocked = self.agent.blocked
        return (
            blocked is not None
            and not blocked.done()
            and self.agent.after_break
            and self.agent.spoke
            and self.sink.idle
        )

    def label_on(self) -> bool:
        """The patched run shows the label now (its last event entered "thinking" while
        upstream's decisions read "speaking")."""
        session = self.session
        return (
            session is not None
            and bool(self.states)
            and self.states[-1][2] == "thinking"
            and session.agent_state == "speaking"
        )

    async def main(self) -> None:
        loop = asyncio.get_running_loop()
        self.loop = loop
        loop.set_exception_handler(lambda _loop, ctx: self.loop_errors.append(ctx))
        session = AgentSession(
            llm=NodeOnlyLLM(),
            tts=OfflineTTS(sample_rate=SAMPLE_RATE),
            turn_handling={
                "turn_detection": None,
                "interruption": {
                    "resume_false_interruption": self.case.pause,
                    "false_interruption_timeout": FALSE_INTERRUPTION_TIMEOUT,
                    "min_duration": MIN_INTERRUPTION,
                },
            },
            aec_warmup_duration=None,
        )
        if self.case.audio:
            session.output.audio = self.sink
        session.output.transcription = RecordingTextOutput()
        self.session = session
        self._attach(session)
        await session.start(self.agent)
        for t in range(len(self.case.turns)):
            self.cur_turn = t
            self.agent.turn, self.agent.step = t, 0
            self.record("turn", t)
            turn = session.generate_reply(user_input=f"question {t}")
            while True:
                await self.idle()
                self.log.append(self.snapshot())
                if turn.done():
                    break
                acts = self.enabled(turn)
                act = self.pick(acts)
                self.acts.append((act, self.label_on()))
                self.record("act", act, tuple(acts))
                self.point += 1
                await self.apply(act, turn)
                if self.point > MAX_POINTS:
                    raise Stuck(f"turn {t}: still running after {MAX_POINTS} actions")
        if self.user_speaking:
            self.user_speaking = False
            assert session._activity is not None
            session._activity.on_end_of_speech(
                _vad_event(vad.VADEventType.END_OF_SPEECH, speech=1.0, speaking=False)
            )
        self.point += 1
        await session.aclose()
        await self.idle()
        self.log.append(("closed", self.now()))
        me = asyncio.current_task()
        self.leftover = [repr(t) for t in asyncio.all_tasks() if t is not me and not t.done()]

    def run(self) -> LabelRun:
        loop = VirtualTimeLoop()
        _current.append(self)
        try:
            with _observed_steps(lambda: _current[-1] if _current else None):
                loop.run_until_complete(self.main())
        finally:
            _current.pop()
            rest = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in rest:
                task.cancel()
            if rest:
                loop.run_until_complete(asyncio.gather(*rest, return_exceptions=True))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            gc.collect()
        return self

    def history(self) -> list[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        for item in self.agent.chat_ctx.items:
            if item.type == "message":
                out.append(("message", item.role, item.text_content, item.interrupted))
            elif item.type == "function_call":
                out.append(("function_call", item.name, item.arguments))
            elif item.type == "function_call_output":
                out.append(("function_call_output", item.output, item.is_error))
            else:
                out.append((item.type,))
        return out


# ---------------------------------------------------------------- comparing the events


def chain_errors(states: list[tuple[int, str, str]], first_old: str = "initializing") -> list[str]:
    """Each event's old state is the previous event's new state; none repeats its state."""
    bad = []
    prev = first_old
    for n, (point, old, new) in enumerate(states):
        if old != prev:
            bad.append(f"event {n} at point {point}: {old}->{new}, but the state was {prev}")
        if old == new:
            bad.append(f"event {n} at point {point}: {old}->{new} repeats its state")
        prev = new
    return bad


def label_alignment(
    patched: list[tuple[int, str, str]], plain: list[tuple[int, str, str]]
) -> list[tuple[int, str, str]] | None:
    """The patched run's events that are the label's own, if taking them out leaves the plain
    run's events (same points, same states); None if no choice of label events does.

    The label (D8): entered speaking->thinking, with no event in the plain run; while it is on,
    the state upstream's decisions read is "speaking", so its thinking->speaking has no event
    in the plain run either, and its thinking->X (X upstream's own new state) is the plain
    run's speaking->X at the same point; upstream's own "thinking" (a tool step) then makes no
    event, so the plain run's speaking->thinking has none in the patched run.
    """
    n_p, n_u = len(patched), len(plain)

    @functools.cache
    def solve(i: int, j: int, on: bool) -> tuple[int, ...] | None:
        if i == n_p:
            return () if j == n_u else None
        point, old, new = patched[i]
        options: list[tuple[int, ...] | None] = []
        if on:
            if old != "thinking":
                return None
            if new == "speaking":
                # the label left, or upstream's own "speaking" (already so in the plain run)
                rest = solve(i + 1, j, False)
                options.append(None if rest is None else (i, *rest))
            if j < n_u and plain[j] == (point, "speaking", new):
                options.append(solve(i + 1, j + 1, False))
            if j < n_u and plain[j][1:] == ("speaking", "thinking") and plain[j][0] <= point:
                # upstream's own "thinking" (a tool step) while the label shows it: no event
                # in the patched run, which goes on from upstream's "thinking"
                options.append(solve(i, j + 1, False))
        else:
            if j < n_u and plain[j] == patched[i]:
                options.append(solve(i + 1, j + 1, False))
            if (old, new) == ("speaking", "thinking"):
                rest = solve(i + 1, j, True)
                options.append(None if rest is None else (i, *rest))
        found = [o for o in options if o is not None]
        # prefer the explanation with the fewest label events
        return min(found, key=len) if found else None

    try:
        picked = solve(0, 0, False)
    finally:
        solve.cache_clear()
    return None if picked is None else [patched[i] for i in picked]


def reactions_differ(
    p: list[tuple[Any, ...]], u: list[tuple[Any, ...]]
) -> tuple[int, Any, Any] | None:
    """The first entry where two reaction logs differ: (index, patched, plain)."""
    for n in range(max(len(p), len(u))):
        a = p[n] if n < len(p) else None
        b = u[n] if n < len(u) else None
        if a != b:
            return n, a, b
    return None
