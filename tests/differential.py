"""The form-against-form recorder: runs generated cases and records every observable.

`scripts/differential.py` runs the same cases (tests/gen_cases.py, drawn once from one seed)
in each form, each in its own process: ``python -m tests.differential CASES OUT`` reads one
line per case, its modes (``eager`` or ``lazy``, and ``listener`` or ``after``: see
`DiffRun`) and a `Case` repr, and writes one JSON line per case with what the app could observe, in
the order it happened:

- every session event (``session.emit``): its class, its fields (``model_dump``), and for
  ``speech_created`` the announced handle's number and segment index;
- each handle's flags (segment index, interrupted, done, response_interrupted when the form
  has it, playout_started's state) right after every call the driver makes as the app
  (generate_reply, every kind of interrupt, also from inside callbacks; the sink's and the
  model's steps) and at every idle point where they changed;
- the settling of every awaitable: a ``playout_started`` read at announcement, the handle
  itself, the futures ``session.interrupt()`` returns (value, None or cancelled);
- the sink's calls (frames per segment, flush, clear, playback started and finished with
  their virtual-clock times and positions) and the transcript sink's;
- log records at WARNING and above (logger, level, message);
- at the end: chat history, session history, the turn handles' errors, unretrieved loop
  exceptions, leftover tasks, and the API a segment handle offers (its ``interrupt``
  signature, its public names).

Only what must differ is normalized: random ids (named by first appearance), wall-clock
times (the sink's clock is virtual and kept; text-only playout times and ``created_at``
become markers), object addresses. Comparing the two files is `scripts/differential.py`'s job.
"""

from __future__ import annotations

import asyncio
import gc
import inspect
import json
import sys
import traceback
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession
from livekit.agents.voice.speech_handle import SpeechHandle

from .gen_cases import Brk, Case, Delay, Flush, Interrupt, LLMError, Text, Tool, TurnSpec
from .gen_driver import GenSink, GenTextSink, Run, error_of, history

# the names a Case repr uses (eval'd by the worker)
CASE_NAMES: dict[str, Any] = {
    c.__name__: c for c in (Case, TurnSpec, Interrupt, Text, Brk, Flush, Delay, LLMError, Tool)
}

# fields that hold wall-clock times or per-process values: replaced by a marker
WALL_CLOCK_FIELDS = {"created_at", "timestamp", "started_at", "last_speaking_time"}
MISSING = "<missing>"


def _no_floats(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _no_floats(v) for k, v in value.items()}
    return "number" if isinstance(value, float) else value


def parse_case(line: str) -> Case:
    case = eval(line, {"__builtins__": {}}, CASE_NAMES)  # noqa: S307 - our own repr
    if not isinstance(case, Case):
        raise ValueError(f"not a Case: {line[:80]!r}")
    return case


class DiffSink(GenSink):
    """The generated suite's sink, also writing its calls into the run's observation."""

    run: DiffRun

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self.run.obs_frame(len(self.segments) - 1)

    def flush(self) -> None:
        self.run.observe("sink.flush")
        super().flush()

    def clear_buffer(self) -> None:
        self.run.observe("sink.clear")
        super().clear_buffer()

    def _start(self, seg: Any) -> None:
        self.run.observe("sink.playback_started", self.segments.index(seg), self.clock.now())
        super()._start(seg)

    def _finish(self, seg: Any, *, interrupted: bool) -> None:
        super()._finish(seg, interrupted=interrupted)
        self.run.observe(
            "sink.playback_finished",
            self.segments.index(seg),
            interrupted,
            round(seg.playback_position, 9),
        )


class DiffTextSink(GenTextSink):
    def __init__(self, run: DiffRun) -> None:
        super().__init__()
        self.run = run

    async def capture_text(self, text: str) -> None:
        await super().capture_text(text)
        self.run.observe("text.capture", text)

    def flush(self) -> None:
        super().flush()
        self.run.observe("text.flush")


class DiffRun(Run):
    """One case, patched flavour, recording every observable into ``self.obs``."""

    def __init__(self, case: Case, *, eager: bool = True, listener: bool = False) -> None:
        super().__init__(case, patched=True)
        # listener: the app's own playback_started listener, registered on the sink before
        # the session starts, makes the case's "playback_started" interruption; it runs
        # before the session's listener (instead of after it, from the sink)
        self.interrupt_before_session = listener
        # eager: read every handle's playout_started at its announcement and at every
        # snapshot, as a watching app does; lazy: never, until the end (the package may take
        # another path when nobody asked; the sink callback's own check still reads it)
        self.eager = eager
        self.obs: list[list[Any]] = []
        self.numbers: dict[int, int] = {}  # id(handle) -> its number (order of announcement)
        self.known: list[SpeechHandle] = []
        self.last_flags: Any = None
        self.api: dict[str, Any] = {}
        if case.audio:
            self.sink = DiffSink(self, self.clock, start=case.start, finish=case.finish)
        self.text_sink = DiffTextSink(self)
        self.recorder = self  # tests.fakes.start_session calls attach() before start
        self.logs = _LogsInOrder(self)  # WARNING+ records, in order with everything else

    # -- recording

    def observe(self, *entry: Any) -> None:
        self.obs.append(list(entry))

    def obs_frame(self, n: int) -> None:
        last = self.obs[-1] if self.obs else None
        if last is not None and last[0] == "sink.frames" and last[1] == n:
            last[2] += 1
        else:
            self.observe("sink.frames", n, 1)

    def number(self, h: SpeechHandle) -> int:
        if id(h) not in self.numbers:
            self.numbers[id(h)] = len(self.numbers)
            self.known.append(h)
            self.watch(h)
        return self.numbers[id(h)]

    def settled(self, fut: asyncio.Future[Any]) -> Any:
        if fut.cancelled():
            return "cancelled"
        exc = fut.exception()
        if exc is not None:
            return f"raised {type(exc).__name__}"
        value = fut.result()
        if isinstance(value, float):
            # the sink's virtual clock when there is audio; text-only is a wall-clock time
            return value if self.sink is not None else "time"
        if isinstance(value, SpeechHandle):
            return f"handle {self.number(value)}"
        return self.norm(value)

    def watch(self, h: SpeechHandle) -> None:
        """Records when the handle and a playout_started read at announcement settle."""
        n = self.numbers[id(h)]
        # with its playout_started as the handle's awaiters find it when they wake
        h.add_done_callback(lambda _h: self.observe("done", self.flags(h)))
        if self.eager:
            view = h.playout_started
            view.add_done_callback(lambda f: self.observe("playout_started", n, self.settled(f)))

    def flags(self, h: SpeechHandle, *, playout: bool | None = None) -> list[Any]:
        if not (self.eager if playout is None else playout):
            return [self.number(h), h.segment_index, h.interrupted, h.done(), *self._ri(h)]
        fut = h.playout_started
        return [
            self.number(h),
            h.segment_index,
            h.interrupted,
            h.done(),
            *self._ri(h),
            "pending" if not fut.done() else self.settled(fut),
        ]

    @staticmethod
    def _ri(h: SpeechHandle) -> list[Any]:
        return [getattr(h, "response_interrupted", MISSING)]

    def snapshot(self, why: str, t: int, *, dedupe: bool = False) -> None:
        flags = [self.flags(h) for h in self.handles_of(t)] if t < len(self.turn_handles) else []
        if dedupe and flags == self.last_flags:
            return
        self.last_flags = flags
        self.observe("flags", why, t, flags)

    def norm(self, value: Any) -> Any:
        """JSON-able, ids named, wall-clock times replaced."""
        if isinstance(value, dict):
            return {
                k: (
                    "time"
                    if k in WALL_CLOCK_FIELDS and v is not None
                    else self.norm(_no_floats(v))
                    if k == "metrics"  # wall-clock times and durations: keep their names
                    else self.norm(v)
                )
                for k, v in value.items()
            }
        if isinstance(value, list | tuple):
            return [self.norm(v) for v in value]
        if isinstance(value, str):
            return self.ids(value)
        if isinstance(value, int | float | bool) or value is None:
            return value
        return self.ids(repr(value))

    def event(self, name: str, ev: Any) -> None:
        try:
            fields = ev.model_dump(mode="json")
        except Exception as e:  # an event that cannot dump is an observable difference too
            fields = f"model_dump failed: {type(e).__name__}"
        entry: list[Any] = ["event", name, type(ev).__name__]
        if name == "metrics_collected":
            # durations are measured on the wall clock: keep what was measured, not how long
            metrics = getattr(ev, "metrics", None)
            entry.append([type(metrics).__name__, self.ids(str(getattr(metrics, "speech_id", "")))])
        else:
            entry.append(self.norm(fields))
        if name == "speech_created":
            h = ev.speech_handle
            entry.append(["handle", self.number(h), h.segment_index])
            if h.segment_index > 0 and not self.api:
                self.api = {
                    "interrupt": str(inspect.signature(h.interrupt)),
                    "segment_handle": sorted(n for n in dir(h) if not n.startswith("_")),
                    "event": sorted(n for n in dir(ev) if not n.startswith("_")),
                }
        self.obs.append(entry)

    # -- hooks (tests.gen_driver.Run)

    def attach(self, session: AgentSession) -> None:
        emit = session.emit

        def recording_emit(name: str, *args: Any) -> None:
            self.event(name, args[0] if args else None)
            emit(name, *args)

        session.emit = recording_emit  # type: ignore[method-assign]
        if self.sink is not None and self.interrupt_before_session:
            self.sink.on("playback_started", self.on_sink_playback_started)

    def on_sink_playback_started(self, ev: Any) -> None:
        if self.in_start is not None:
            self.playback_interrupt(self.in_start[0])

    def after_call(self, call: str, t: int) -> None:
        self.snapshot(call, t)

    def interrupt(self, t: int, kind: str, seg: SpeechHandle | None) -> None:
        futs = len(self.interrupt_futs)
        self.observe("call", "interrupt", t, kind)
        super().interrupt(t, kind, seg)
        for fut in self.interrupt_futs[futs:]:
            fut.add_done_callback(lambda f: self.observe("session.interrupt()", self.settled(f)))
        where = " in playback_started" if self.in_start is not None else ""
        self.snapshot(f"interrupt:{kind}{where}", t)

    def apply(self, act: str) -> None:
        self.observe("call", act)
        super().apply(act)
        self.snapshot(act, self.cur_turn)

    def record_state(self, t: int, point: int) -> None:
        if self.eager:  # the LKSEG_DUMP timeline reads playout_started
            super().record_state(t, point)
        self.snapshot("idle", t, dedupe=True)

    # -- the whole case

    async def main(self) -> None:
        self.final: Any = None
        await super().main()
        # each handle as the app finds it at the end, read inside the loop (a lazy run's
        # first read of playout_started)
        self.final = [self.flags(h, playout=True) for h in self.known]

    def record(self) -> dict[str, Any]:
        crash = None
        try:
            self.run()
        except (Exception, asyncio.CancelledError) as e:  # a crash is an observable too
            crash = f"{type(e).__name__}: {self.ids(str(e))}"
        end: dict[str, Any] = {
            "crash": crash,
            "history": self.norm(history(self.agent)),
            "session_history": self.norm(
                [item.model_dump(mode="json") for item in self.session.history.items]
                if self.session is not None
                else None
            ),
            "turns": [
                [h.interrupted, type(error_of(h)).__name__ if error_of(h) else None]
                for h in self.turn_handles
            ],
            "handles": self.final,
            "loop_errors": sorted(
                self.ids(f"{c.get('message')} {c.get('exception')!r}") for c in self.loop_errors
            ),
            "leftover": len(self.leftover),
            "api": self.api,
        }
        return {"obs": self.obs, "end": end}


class _LogsInOrder(list):  # type: ignore[type-arg]
    """Run.logs that also writes each record into the run's observation, in order."""

    def __init__(self, run: DiffRun) -> None:
        super().__init__()
        self.run = run

    def append(self, entry: Any) -> None:
        super().append(entry)
        self.run.obs.append(list(entry))


def record(case: Case, *, eager: bool = True, listener: bool = False) -> dict[str, Any]:
    run = DiffRun(case, eager=eager, listener=listener)
    gc.collect()
    gc.freeze()
    return run.record()


def main(argv: list[str]) -> int:
    import livekit.agents
    import livekit_segments

    if len(argv) != 2:
        print("usage: python -m tests.differential CASES_FILE OUT_JSONL", file=sys.stderr)
        return 2
    native = livekit_segments.has_native_support()
    if not native:
        livekit_segments.install()
    form = "native" if native else "runtime"
    cases_path, out_path = argv
    with open(cases_path) as f, open(out_path, "w") as out:
        out.write(json.dumps({"form": form, "livekit_agents": livekit.agents.__version__}) + "\n")
        for i, line in enumerate(f):
            mode, _, text = line.partition(" ")
            try:
                modes = mode.split(",")
                result = record(
                    parse_case(text), eager="eager" in modes, listener="listener" in modes
                )
            except (Exception, asyncio.CancelledError):
                result = {"obs": [], "end": {"harness_error": traceback.format_exc()}}
            out.write(json.dumps({"i": i, **result}, default=repr) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
