"""B6, many concurrent sessions in real time: what the patch costs a loaded process.

Many sessions share one process and one event loop, each playing replies of several short
responses through its own livekit native `rtc.AudioSource` (`fakes.AudioSourceSink`), so the
work is paced by the real audio clock. Each round runs the whole fleet once under every form,
in alternating order; the same sessions serve both forms (only the agent's script and the
installed patch change), so the two sides of a round measure the same state.

Per form and round: the event loop's lag (how late a timer that re-arms itself every
``tick_ms`` fires), the CPU time per second of audio played, and the peak resident memory
sampled during the round.

CPU is judged on the event loop's thread, where all of the patch's code runs. The process
total is reported beside it, not judged: livekit's native threads pace every
`rtc.AudioSource` in real time, so they burn CPU per second of wall time, the same in both
forms (measured: 1.046 and 1.047 cores per wall second over 24 rounds), and the total then
follows how long the shared machine made a round take (rounds of 3.0-4.2 s for the same
1.6 s of audio per session) more than the work done.
"""

from __future__ import annotations

import asyncio
import gc
import importlib
import math
import time
from collections.abc import AsyncIterable, AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

from livekit import rtc
from livekit.agents import AgentSession, ModelSettings
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments._cli import plural

from . import stats
from .fakes import (
    AudioSourceSink,
    ScriptedAgent,
    ScriptItem,
    close_session,
    silence,
    start_session,
    trim_history,
)
from .forms import Form, Forms, activate, break_factory
from .report import BenchResult, Judged, Row, Status, combine, fmt, fmt_estimate, judge

__all__ = ["ConcurrentSessionsConfig", "LagProbe", "WordsAgent", "run", "script"]

# "no measurable difference": the ratio's interval includes 1.0, or its upper end is within this
TOLERANCE = 1.02


@dataclass(frozen=True)
class ConcurrentSessionsConfig:
    sessions: int
    rounds: int  # each runs the whole fleet once under every form, in alternating order
    # the responses of one reply, in frames each: (2, 3, 5, 4, 2) x 100 ms is 0.2-0.5 s each
    responses: tuple[int, ...] = (2, 3, 5, 4, 2)
    frame_ms: int = 100
    replies_per_round: int = 1  # per session
    stagger_ms: int = 500  # session i starts its reply i/sessions of this after the round's start
    tick_ms: int = 10  # the lag probe's period
    rss_every: int = 10  # ticks between resident-memory samples
    queue_size_ms: int = 200  # as RoomIO's audio output
    warmup_replies: int = 1  # per session and form, before the first round
    history_items: int = 20  # the history is cut back to this between rounds


def script(responses: tuple[int, ...], form: Form) -> list[ScriptItem]:
    """A reply of ``len(responses)`` responses, split by the form's break; response k has
    ``responses[k]`` words, each of which `WordsAgent`'s TTS turns into one frame."""
    brk = break_factory(form)
    items: list[ScriptItem] = []
    for k, words in enumerate(responses):
        if k:
            items.append(brk())
        items.append(" ".join(["word"] * words) + ". ")
    return items


class WordsAgent(ScriptedAgent):
    """Yields one frame per word of text, as soon as the word arrives.

    Per word, not per chunk: upstream's text transforms re-split chunks at whitespace, so the
    audio of a response does not depend on how its text reached the TTS.
    """

    async def tts_node(
        self, text: AsyncIterable[str], model_settings: ModelSettings
    ) -> AsyncIterator[rtc.AudioFrame]:
        async for chunk in text:
            for _ in chunk.split():
                yield self.frames[0]


def _rss() -> int:
    # psutil comes with livekit-agents; imported by name because it ships no type stubs
    psutil = importlib.import_module("psutil")
    return int(psutil.Process().memory_info().rss)


class LagProbe:
    """The event loop's lag: how late a timer re-armed every ``interval`` seconds fires.

    Resident memory is sampled every ``rss_every`` ticks too (and at start and stop).
    """

    def __init__(self, interval: float, rss_every: int) -> None:
        self.interval = interval
        self.rss_every = rss_every
        self.lags: list[float] = []  # seconds late, one per tick
        self.rss: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._due = 0.0
        self._handle: asyncio.TimerHandle | None = None

    def start(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self.lags, self.rss = [], [_rss()]
        self._due = loop.time() + self.interval
        self._handle = loop.call_at(self._due, self._tick)

    def _tick(self) -> None:
        assert self._loop is not None
        now = self._loop.time()
        self.lags.append(max(0.0, now - self._due))
        if len(self.lags) % self.rss_every == 0:
            self.rss.append(_rss())
        self._due = now + self.interval
        self._handle = self._loop.call_at(self._due, self._tick)

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self.rss.append(_rss())


class _Member:
    """One session of the fleet, with its sink and the handles it announced."""

    def __init__(self, cfg: ConcurrentSessionsConfig) -> None:
        self.sink = AudioSourceSink(queue_size_ms=cfg.queue_size_ms)
        self.agent = WordsAgent([], frames=[silence(cfg.frame_ms)])
        self.session: AgentSession[None] | None = None
        self.handles: list[SpeechHandle] = []

    def _on_created(self, ev: Any) -> None:
        self.handles.append(ev.speech_handle)

    async def start(self) -> None:
        self.session = await start_session(
            self.agent, self.sink, on_speech_created=self._on_created
        )

    async def play(self, delay: float, replies: int) -> None:
        assert self.session is not None
        if delay > 0:
            await asyncio.sleep(delay)
        for _ in range(replies):
            await self.session.generate_reply()

    async def close(self) -> None:
        if self.session is not None:
            await close_session(self.session, self.sink)
            self.session = None


@dataclass
class Sample:
    """One form's measurements in one round."""

    lag_p50: float  # seconds
    lag_p99: float
    cpu: float  # process CPU seconds during the round
    loop_cpu: float  # CPU seconds of the event loop's thread during the round
    wall: float
    audio: float  # seconds of audio the sinks handed to their sources
    frames: int  # frames handed to the sources
    rss_start: int
    rss_peak: int
    segments: int  # segments the sinks played (playback_started .. playback_finished)
    handles: int  # handles announced through speech_created
    handles_done: int  # of those, done once every reply returned
    lags: int = 0  # ticks observed

    @property
    def cpu_per_audio_s(self) -> float:
        return self.cpu / self.audio if self.audio > 0 else math.nan

    @property
    def loop_cpu_per_audio_s(self) -> float:
        return self.loop_cpu / self.audio if self.audio > 0 else math.nan


@dataclass
class _Expected:
    segments: int
    handles: int
    audio: float
    frames: int


def _expected(cfg: ConcurrentSessionsConfig, form: Form) -> _Expected:
    replies = cfg.sessions * cfg.replies_per_round
    frames = replies * sum(cfg.responses)
    # upstream announces the reply's handle only; the segment forms one handle per response
    per_reply = 1 if form is Form.UPSTREAM else len(cfg.responses)
    return _Expected(
        segments=replies * len(cfg.responses),
        handles=replies * per_reply,
        audio=frames * cfg.frame_ms / 1000,
        frames=frames,
    )


async def _round(form: Form, fleet: list[_Member], cfg: ConcurrentSessionsConfig) -> Sample:
    """Every session plays ``cfg.replies_per_round`` replies under ``form``; measured."""
    activate(form)  # takes effect at the next reply: the patch wraps call sites, not sessions
    items = script(cfg.responses, form)
    for m in fleet:
        assert m.session is not None
        m.agent.script = items
        await trim_history(m.session, m.agent, cfg.history_items)
        m.handles.clear()
    marks = [(len(m.sink.segments), m.sink.frames) for m in fleet]
    gc.collect()
    probe = LagProbe(cfg.tick_ms / 1000, cfg.rss_every)
    probe.start()
    # _round runs on the loop's thread: its thread time is the loop's
    t0, c0, l0 = time.perf_counter(), time.process_time(), time.thread_time()
    stagger = cfg.stagger_ms / 1000
    try:
        await asyncio.gather(
            *(m.play(stagger * i / len(fleet), cfg.replies_per_round) for i, m in enumerate(fleet))
        )
        cpu, wall = time.process_time() - c0, time.perf_counter() - t0
        loop_cpu = time.thread_time() - l0
    finally:
        probe.stop()
    segs = [s for m, (n, _) in zip(fleet, marks, strict=True) for s in m.sink.segments[n:]]
    handles = [h for m in fleet for h in m.handles]
    return Sample(
        lag_p50=stats.percentile(probe.lags, 50),
        lag_p99=stats.percentile(probe.lags, 99),
        cpu=cpu,
        loop_cpu=loop_cpu,
        wall=wall,
        audio=sum(s.duration for s in segs),
        frames=sum(m.sink.frames - f for m, (_, f) in zip(fleet, marks, strict=True)),
        rss_start=probe.rss[0],
        rss_peak=max(probe.rss),
        # played out: playback_finished reported after the source's wait_for_playout()
        segments=sum(1 for s in segs if s.released_at is not None),
        handles=len(handles),
        handles_done=sum(1 for h in handles if h.done()),
        lags=len(probe.lags),
    )


# name -> (unit shown, what a sample says, scaled to that unit); each is judged
FIGURES: dict[str, tuple[str, Callable[[Sample], float]]] = {
    "event-loop lag p50": ("ms", lambda s: s.lag_p50 * 1e3),
    "event-loop lag p99": ("ms", lambda s: s.lag_p99 * 1e3),
    "event-loop CPU per second of audio": ("ms", lambda s: s.loop_cpu_per_audio_s * 1e3),
    "peak RSS": ("MiB", lambda s: s.rss_peak / 2**20),
}
# shown with their ratios, not judged (the module's docstring says why)
REPORTED: dict[str, tuple[str, Callable[[Sample], float]]] = {
    "process CPU per second of audio": ("ms", lambda s: s.cpu_per_audio_s * 1e3),
}


async def run(cfg: ConcurrentSessionsConfig, forms: Forms) -> BenchResult:
    fleet = [_Member(cfg) for _ in range(cfg.sessions)]
    samples: dict[Form, list[Sample]] = {f: [] for f in forms.all}
    try:
        for m in fleet:
            await m.start()
        for form in forms.all:
            for _ in range(cfg.warmup_replies):
                activate(form)
                for m in fleet:
                    m.agent.script = script(cfg.responses, form)
                await asyncio.gather(*(m.play(0, 1) for m in fleet))
        for i in range(cfg.rounds):
            for form in forms.order(i):
                samples[form].append(await _round(form, fleet, cfg))
    finally:
        for m in fleet:
            await m.close()
    return _result(cfg, forms, samples)


def _result(
    cfg: ConcurrentSessionsConfig, forms: Forms, samples: dict[Form, list[Sample]]
) -> BenchResult:
    subject, base = forms.subject, forms.baseline
    rows: list[Row] = []
    judged: list[Judged] = []
    per_form: dict[str, dict[str, float]] = {f.value: {} for f in forms.all}
    round_ratios: dict[str, list[float | None]] = {}
    for name, (unit, read) in {**FIGURES, **REPORTED}.items():
        med = {f: stats.median([read(s) for s in v]) for f, v in samples.items()}
        for f, m in med.items():
            per_form[f.value][f"{name} ({unit})"] = m
        estimate = None
        if base is not None:
            # per round: the two forms ran back to back, so a slow moment hits both
            pairs = [
                stats.ratio(read(s), read(b))
                for s, b in zip(samples[subject], samples[base], strict=True)
            ]
            round_ratios[name] = pairs
            # rounds 2k and 2k + 1 ran the forms in opposite orders: whichever runs second
            # meets the first one's garbage and the fleet's state (measured: CPU ratio medians
            # 1.085 and 1.045 by order)
            estimate = stats.counterbalanced_estimate(pairs)
        target = f"1.0 in interval or <= {TOLERANCE}"
        verdict: Status | None = None
        if name in FIGURES:
            verdict = stats.no_difference_verdict(estimate, TOLERANCE)
            judged.append(Judged(f"{name} ratio", target, verdict, estimate))
        rows.append(
            Row(
                f"{name}, median of {plural(cfg.rounds, 'round')}",
                fmt(med[base], unit) if base else "-",
                fmt(med[subject], unit),
                fmt_estimate(estimate),
                target if verdict is not None else "(not judged)",
                verdict,
            )
        )

    # exact checks: every segment played out, every handle done, the audio accounted for
    bad: list[str] = []
    totals: dict[str, dict[str, float]] = {}
    for f, taken in samples.items():
        want = _expected(cfg, f)
        for r, s in enumerate(taken):
            got = (s.segments, s.handles, s.handles_done, s.frames)
            if got != (want.segments, want.handles, want.handles, want.frames) or not (
                math.isclose(s.audio, want.audio, rel_tol=1e-9)
            ):
                bad.append(f"{f.value} round {r}: {got} != {want}")
        totals[f.value] = {
            "segments": sum(s.segments for s in taken),
            "handles": sum(s.handles for s in taken),
            "handles_done": sum(s.handles_done for s in taken),
            "frames": sum(s.frames for s in taken),
            "audio_s": sum(s.audio for s in taken),
            "expected_segments": want.segments * len(taken),
            "expected_handles": want.handles * len(taken),
            "expected_audio_s": want.audio * len(taken),
        }
    played = judge(not bad)
    judged.append(
        Judged(
            "every segment played, every handle done",
            "all",
            played,
            value=f"{len(bad)} rounds short",
        )
    )
    rows.append(
        Row(
            "segments played / expected",
            _played(totals, base),
            _played(totals, subject),
            "",
            "all",
            played,
        )
    )
    rows.append(
        Row(
            "  peak RSS growth during a round, median",
            fmt(_growth(samples[base]), "MiB") if base else "-",
            fmt(_growth(samples[subject]), "MiB"),
        )
    )
    rows.append(
        Row(
            "  wall per round, median",
            fmt(stats.median([s.wall for s in samples[base]]), "s") if base else "-",
            fmt(stats.median([s.wall for s in samples[subject]]), "s"),
        )
    )
    reply_s = sum(cfg.responses) * cfg.frame_ms / 1000
    lengths = ", ".join(str(n * cfg.frame_ms) for n in cfg.responses)
    replies = plural(cfg.replies_per_round, "reply", "replies")
    notes = [
        f"{cfg.sessions} sessions on one loop, each with its own rtc.AudioSource(queue_size_ms="
        f"{cfg.queue_size_ms}) sink; per round every session plays {replies} of "
        f"{len(cfg.responses)} responses ({lengths} ms in {cfg.frame_ms} ms frames, {reply_s:.1f} "
        f"s of audio), starts staggered over {cfg.stagger_ms} ms; the same sessions run both "
        f"forms, in alternating order per round",
        f"lag: lateness of a {cfg.tick_ms} ms loop.call_at timer, p50/p99 per round; "
        f"event-loop CPU: the loop thread's CPU time (time.thread_time; all of the patch runs "
        f"there) over the round / audio seconds played; process CPU (all threads, livekit's "
        f"native ones included, which pace each audio source per wall-clock second) is shown, "
        f"not judged; RSS: the peak of samples every {cfg.rss_every * cfg.tick_ms} ms during "
        f"the round (absolute, not growth); ratios: median over pairs of rounds in opposite "
        f"orders of the geometric mean of their two ratios, target met when the interval "
        f"includes 1.0 or ends at or below {TOLERANCE}",
    ]
    if bad:
        notes.append("short rounds: " + "; ".join(bad[:3]))
    status = combine([j.verdict for j in judged])
    return BenchResult(
        id="B6",
        title=f"{cfg.sessions} concurrent sessions in real time",
        target=f"no measurable difference (ratio interval includes 1.0 or <= {TOLERANCE})",
        status=status,
        rows=rows,
        notes=notes,
        judged=judged,
        data={
            "sessions": cfg.sessions,
            "rounds": cfg.rounds,
            "responses_ms": [n * cfg.frame_ms for n in cfg.responses],
            "medians": per_form,
            "per_round_ratios": round_ratios,
            "totals": totals,
            "short_rounds": bad,
            "rounds_data": {
                f.value: [
                    {
                        "lag_p50_ms": s.lag_p50 * 1e3,
                        "lag_p99_ms": s.lag_p99 * 1e3,
                        "cpu_s": s.cpu,
                        "loop_cpu_s": s.loop_cpu,
                        "wall_s": s.wall,
                        "audio_s": s.audio,
                        "rss_peak_mib": s.rss_peak / 2**20,
                        "rss_growth_mib": (s.rss_peak - s.rss_start) / 2**20,
                        "ticks": s.lags,
                    }
                    for s in v
                ]
                for f, v in samples.items()
            },
        },
    )


def _played(totals: dict[str, dict[str, float]], form: Form | None) -> str:
    if form is None:
        return "-"
    t = totals[form.value]
    return f"{t['segments']:.0f} / {t['expected_segments']:.0f}"


def _growth(samples: list[Sample]) -> float:
    return stats.median([(s.rss_peak - s.rss_start) / 2**20 for s in samples])
