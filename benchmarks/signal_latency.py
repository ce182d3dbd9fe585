"""B3, signal latency: from the sink's playback-started callback to the awaiting task resuming.

The patch (or native) form awaits ``handle.playout_started`` of every handle announced through
``speech_created``. Upstream has no per-segment signal, so its figure is what an app would do
without the patch: a listener on the sink's ``playback_started`` that resolves a future a task
awaits. Both run the same replies; only the segment marker and the waiting differ.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

from livekit.agents import AgentSession
from livekit.agents.voice import io
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments import playout_started

from . import stats
from .fakes import ScriptedAgent, ZeroLatencySink, close_session, reply, silence, start_session
from .forms import Form, Forms, activate
from .report import BenchResult, Judged, Row, combine, fmt, fmt_estimate, fmt_ratio, judge
from .segment_cost import script

__all__ = ["SignalLatencyConfig", "run"]

TARGET_P99_MS = 1.0


@dataclass(frozen=True)
class SignalLatencyConfig:
    single_segments: int  # at least this many segments with one session
    single_segments_per_reply: int
    sessions: int  # concurrent sessions on one loop
    segments_per_session: int  # one reply each


@dataclass
class _Watch:
    """One session's sink and what its watchers saw: (resolved value, perf_counter at wake)."""

    sink: ZeroLatencySink
    handles: list[SpeechHandle] = field(default_factory=list)
    woke: dict[int, tuple[float, float]] = field(default_factory=dict)  # handle index -> ...
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    cancelled: int = 0
    listener_fut: asyncio.Future[float] | None = None
    listener_woke: list[tuple[float, float]] = field(default_factory=list)

    # -- subject form: one task per handle awaits its playout_started

    def on_speech_created(self, ev: Any) -> None:
        handle: SpeechHandle = ev.speech_handle
        self.handles.append(handle)
        self.tasks.append(asyncio.create_task(self._await_handle(len(self.handles) - 1, handle)))

    async def _await_handle(self, index: int, handle: SpeechHandle) -> None:
        value = await playout_started(handle)
        if value is None:
            self.cancelled += 1
            return
        self.woke[index] = (value, time.perf_counter())

    # -- upstream form: one task per session awaits futures a sink listener resolves

    def attach_listener(self, sink: io.AudioOutput) -> None:
        sink.on("playback_started", self._on_playback_started)
        self.tasks.append(asyncio.create_task(self._await_listener()))

    def _on_playback_started(self, ev: io.PlaybackStartedEvent) -> None:
        fut = self.listener_fut
        if fut is not None and not fut.done():
            fut.set_result(ev.created_at)

    async def _await_listener(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self.listener_fut = fut = loop.create_future()
            value = await fut
            self.listener_woke.append((value, time.perf_counter()))

    # -- results

    def latencies(self) -> list[float]:
        emitted = {s.created_at: s.emitted_at for s in self.sink.segments}
        woke = list(self.woke.values()) if self.handles else self.listener_woke
        return [t - emitted[v] for v, t in woke if v in emitted]

    def values_equal(self) -> bool:
        """Handle k resolved with exactly the sink's timestamp for segment k, for every k."""
        values = [self.woke[i][0] if i in self.woke else None for i in range(len(self.handles))]
        return values == [s.created_at for s in self.sink.segments]


async def _run(form: Form, *, sessions: int, replies: int, segments: int) -> list[_Watch]:
    activate(form)
    watches: list[_Watch] = []
    started: list[AgentSession[None]] = []
    try:
        for _ in range(sessions):
            sink = ZeroLatencySink(record=True)
            watch = _Watch(sink)
            watches.append(watch)
            agent = ScriptedAgent(script(segments, form), frames=[silence(10)])
            if form is Form.UPSTREAM:
                watch.attach_listener(sink)
                session = await start_session(agent, sink)
            else:
                session = await start_session(
                    agent, sink, on_speech_created=watch.on_speech_created
                )
            started.append(session)

        async def replies_of(session: AgentSession[None]) -> None:
            for _ in range(replies):
                await reply(session)

        await asyncio.gather(*(replies_of(s) for s in started))
    finally:
        # watches[i] belongs to started[i]; a last watch may have no session if start failed
        for session, watch in zip(started, watches, strict=False):
            await close_session(session, watch.sink)
        tasks = [t for w in watches for t in w.tasks]
        if tasks:
            # every handle's watcher ends once its playout_started resolved or was cancelled;
            # the listener loops of the upstream form never end by themselves
            _, pending = await asyncio.wait(tasks, timeout=0 if form is Form.UPSTREAM else 5)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
    return watches


async def run(cfg: SignalLatencyConfig, forms: Forms) -> BenchResult:
    per_reply = max(1, cfg.single_segments_per_reply)
    replies = -(-cfg.single_segments // per_reply)
    # name -> (sessions, replies per session, segments per reply)
    scenarios = {
        "1 session": (1, replies, per_reply),
        f"{cfg.sessions} sessions": (cfg.sessions, 1, cfg.segments_per_session),
    }
    lat: dict[tuple[str, Form], list[float]] = {}
    equal = True
    cancelled = 0
    missing = 0
    for i, (name, (sessions, n_replies, segments)) in enumerate(scenarios.items()):
        for form in forms.order(i):
            watches = await _run(form, sessions=sessions, replies=n_replies, segments=segments)
            lat[(name, form)] = [x for w in watches for x in w.latencies()]
            expected = sum(len(w.sink.segments) for w in watches)
            missing += expected - len(lat[(name, form)])
            if form is not Form.UPSTREAM:
                equal = equal and all(w.values_equal() for w in watches)
                cancelled += sum(w.cancelled for w in watches)

    subject, base = forms.subject, forms.baseline
    single = "1 session"
    # p99 of one run depends on what else the machine did meanwhile: judged from its interval
    p99_est = stats.quantile_estimate(
        [x * 1e3 for x in lat[(single, subject)]], 99, "p99 of the latencies (ms)"
    )
    p99_single = p99_est.point
    p99_status = stats.verdict(p99_est, TARGET_P99_MS)
    base_p99 = (
        stats.quantile_estimate([x * 1e3 for x in lat[(single, base)]], 99, "p99 (ms)")
        if base
        else None
    )
    # the control: upstream's listener, the same wake-up without the patch, missing the bound
    # too means the machine's scheduling decides this p99 (a loaded 2-core machine preempts
    # the loop for whole 4 ms ticks), so the run cannot tell whether the patch would meet it
    machine_bound = (
        p99_status == "missed"
        and base_p99 is not None
        and stats.verdict(base_p99, TARGET_P99_MS) == "missed"
    )
    if machine_bound:
        p99_status = "inconclusive"
    judged = [
        # an absolute bound on the patch's own latency, not a comparison with upstream
        Judged("p99 with 1 session", f"<= {TARGET_P99_MS} ms", p99_status, p99_est),
        Judged("resolved value == sink timestamp", "every handle", judge(equal), value=str(equal)),
        Judged(
            "every segment woke its waiter", "0 missing", judge(missing == 0), value=f"{missing}"
        ),
    ]
    status = combine([j.verdict for j in judged])

    rows: list[Row] = []
    data_lat: dict[str, Any] = {}
    for name in scenarios:
        for q in (50, 99):
            sv = stats.percentile(lat[(name, subject)], q) * 1e3
            bv = stats.percentile(lat[(name, base)], q) * 1e3 if base else None
            is_target = name == single and q == 99
            rows.append(
                Row(
                    f"{name}: p{q} ({len(lat[(name, subject)])} segments)",
                    fmt(bv, "ms"),
                    fmt(sv, "ms"),
                    fmt_ratio(stats.ratio(sv, bv)),
                    f"<= {TARGET_P99_MS} ms" if is_target else "",
                    p99_status if is_target else None,
                )
            )
            if is_target:
                rows.append(
                    Row(
                        "  p99, 95% interval",
                        fmt_estimate(base_p99, unit="ms") if base_p99 else "-",
                        fmt_estimate(p99_est, unit="ms"),
                    )
                )
        data_lat[name] = {
            f.value: {
                "count": len(lat[(name, f)]),
                "p50_ms": stats.percentile(lat[(name, f)], 50) * 1e3,
                "p99_ms": stats.percentile(lat[(name, f)], 99) * 1e3,
                "max_ms": max(lat[(name, f)]) * 1e3,
            }
            for f in forms.all
        }
    rows.append(
        Row(
            "resolved value == sink timestamp, every handle",
            "",
            str(equal),
            "",
            "True",
            judge(equal),
        )
    )
    notes = [
        "upstream column: a listener on the sink's playback_started resolving a future that a "
        "task awaits (what an app does without the patch); ratio = patch / that",
    ]
    if cancelled or missing:
        notes.append(f"{cancelled} playout_started cancelled, {missing} segments without a wake")
    if machine_bound:
        notes.append(
            f"p99 inconclusive, not missed: upstream's listener (the same wake-up without the "
            f"patch) also has a p99 above {TARGET_P99_MS} ms in this run, so the machine's "
            f"scheduling decides it"
        )
    return BenchResult(
        id="B3",
        title="signal latency",
        target=f"p99 <= {TARGET_P99_MS} ms with 1 session; value equals the sink's timestamp",
        status=status,
        rows=rows,
        notes=notes,
        judged=judged,
        data={
            "latency": data_lat,
            "value_equal": equal,
            "cancelled": cancelled,
            "missing": missing,
            "p99_single_ms": p99_single,
            "p99_machine_bound": machine_bound,
        },
    )
