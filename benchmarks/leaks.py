"""B5, no leaks: many turns with breaks in one session, then back to baseline.

A session keeps some things for its whole life by design: the chat history, and every event
it emits (``AgentSession._recorded_events``, for the session report), including each
``speech_created`` event and so each `SpeechHandle`. A long-running app trims the history;
the bench also clears the recorded events at the same points, so that what remains
is what nobody owns. Measured at three points: after a warm-up, after the last turn (both
after trimming and a full collection), and after the session closed.
"""

from __future__ import annotations

import gc
import importlib
import sys
from dataclasses import dataclass
from typing import Any

from livekit.agents import AgentSession
from livekit.agents.voice.speech_handle import SpeechHandle

from .fakes import ScriptedAgent, ZeroLatencySink, close_session, reply, silence, start_session
from .forms import Form, Forms, activate
from .report import BenchResult, Judged, Row, combine, judge
from .segment_cost import script

__all__ = ["LeaksConfig", "run"]

# resident memory is page-granular and the allocator keeps freed arenas: allow this much
RSS_NOISE_BYTES = 4 * 1024 * 1024
# live Python memory blocks may drift by a few caches' worth, not per turn
BLOCKS_NOISE = 2000


@dataclass(frozen=True)
class LeaksConfig:
    turns: int
    segments_per_turn: int = 3  # two breaks per turn
    trim_every: int = 100
    history_items: int = 20
    warmup_turns: int = 500  # the first few hundred turns of a process still grow its caches


@dataclass
class Snapshot:
    rss: int
    blocks: int
    handles: int

    def to_json(self) -> dict[str, int]:
        return {
            "rss_bytes": self.rss,
            "allocated_blocks": self.blocks,
            "speech_handles": self.handles,
        }


def _rss() -> int:
    # psutil comes with livekit-agents; imported by name because it ships no type stubs
    psutil = importlib.import_module("psutil")
    return int(psutil.Process().memory_info().rss)


def _snapshot() -> Snapshot:
    gc.collect()
    # type(), not isinstance(): some modules keep lazy proxies whose __class__ imports things
    handles = sum(1 for o in gc.get_objects() if issubclass(type(o), SpeechHandle))
    # read after that list of every object is freed: each reading sees the heap in the same
    # state (the first list, a few MiB, can move the allocator's mmap threshold for good)
    return Snapshot(rss=_rss(), blocks=sys.getallocatedblocks(), handles=handles)


class _Session:
    """One session running turns, trimming what a session keeps by design."""

    def __init__(self, cfg: LeaksConfig, form: Form) -> None:
        self.cfg = cfg
        self.form = form
        self.agent = ScriptedAgent(script(cfg.segments_per_turn, form), frames=[silence(10)])
        self.sink = ZeroLatencySink()
        self.session: AgentSession[None] | None = None
        self.turns = 0
        self.created = 0  # speech_created events
        self.recorded = 0  # events the session recorded (and was made to drop)

    def _on_created(self, _: Any) -> None:
        self.created += 1

    async def start(self) -> None:
        self.session = await start_session(
            self.agent, self.sink, on_speech_created=self._on_created
        )

    async def run_turns(self, n: int) -> None:
        assert self.session is not None
        for _ in range(n):
            await reply(self.session)
            self.turns += 1
            if self.turns % self.cfg.trim_every == 0:
                await self.trim()

    async def trim(self) -> None:
        assert self.session is not None
        self.session.history.truncate(max_items=self.cfg.history_items)
        ctx = self.agent.chat_ctx.copy()
        ctx.truncate(max_items=self.cfg.history_items)
        await self.agent.update_chat_ctx(ctx)
        events = getattr(self.session, "_recorded_events", None)
        if isinstance(events, list):
            self.recorded += len(events)
            events.clear()

    async def close(self) -> None:
        if self.session is not None:
            await close_session(self.session, self.sink)
            self.session = None


async def run(cfg: LeaksConfig, forms: Forms) -> BenchResult:
    form = forms.subject
    activate(form)
    warmup = min(cfg.warmup_turns, max(cfg.turns // 2, 1))
    _snapshot()  # once to prime the heap for the list it builds, then the baseline
    base = _snapshot()
    s = _Session(cfg, form)
    try:
        await s.start()
        await s.run_turns(warmup)
        await s.trim()
        warm = _snapshot()
        await s.run_turns(cfg.turns - warmup)
        await s.trim()
        end = _snapshot()
        segments = s.sink.count
        created, recorded, turns = s.created, s.recorded, s.turns
    finally:
        await s.close()
    del s
    closed = _snapshot()

    measured = max(turns - warmup, 1)
    rss_growth = end.rss - warm.rss
    blocks_growth = end.blocks - warm.blocks
    closed_ok = closed.handles == base.handles
    judged = [
        Judged(
            "live SpeechHandles warm -> end",
            "equal",
            judge(end.handles == warm.handles),
            value=f"{warm.handles} -> {end.handles}",
        ),
        Judged(
            "live SpeechHandles baseline -> closed",
            "equal",
            judge(closed_ok),
            value=f"{base.handles} -> {closed.handles}",
        ),
        Judged(
            "resident memory growth",
            f"<= {RSS_NOISE_BYTES / 2**20:.0f} MiB",
            judge(rss_growth <= RSS_NOISE_BYTES),
            value=f"{rss_growth / 2**20:+.2f} MiB",
        ),
        Judged(
            "live Python blocks growth",
            f"<= {BLOCKS_NOISE}",
            judge(blocks_growth <= BLOCKS_NOISE),
            value=f"{blocks_growth:+d}",
        ),
    ]
    status = combine([j.verdict for j in judged])

    def mib(v: float) -> str:
        return f"{v / 2**20:.1f}"

    rows = [
        Row(
            "resident memory (MiB): warm -> end",
            "",
            f"{mib(warm.rss)} -> {mib(end.rss)}",
        ),
        Row(
            f"  growth over {measured} turns",
            "",
            f"{rss_growth / 2**20:+.2f} MiB",
            "",
            f"<= {RSS_NOISE_BYTES / 2**20:.0f} MiB",
            judge(rss_growth <= RSS_NOISE_BYTES),
        ),
        Row(
            "resident memory (MiB): baseline -> closed",
            "",
            f"{mib(base.rss)} -> {mib(closed.rss)}",
        ),
        Row(
            "live Python blocks: warm -> end",
            "",
            f"{blocks_growth:+d}",
            "",
            f"<= {BLOCKS_NOISE}",
            judge(blocks_growth <= BLOCKS_NOISE),
        ),
        Row(
            "live SpeechHandles: warm -> end",
            "",
            f"{warm.handles} -> {end.handles}",
            "",
            "equal",
            judge(end.handles == warm.handles),
        ),
        Row(
            "live SpeechHandles: baseline -> closed",
            "",
            f"{base.handles} -> {closed.handles}",
            "",
            "equal",
            judge(closed_ok),
        ),
    ]
    per_turn = recorded / turns if turns else 0.0
    return BenchResult(
        id="B5",
        title="no leaks",
        target="handles and memory back to baseline within noise",
        status=status,
        rows=rows,
        judged=judged,
        notes=[
            f"{turns} turns of {cfg.segments_per_turn} segments ({segments} segments, "
            f"{created} speech_created) in one session; every {cfg.trim_every} turns the "
            f"history is truncated to {cfg.history_items} items and the session's recorded "
            f"events are cleared ({per_turn:.1f} per turn, each speech_created holding its "
            f"handle until the session ends)",
        ],
        data={
            "turns": turns,
            "warmup_turns": warmup,
            "segments": segments,
            "speech_created": created,
            "recorded_events_per_turn": per_turn,
            "baseline": base.to_json(),
            "warm": warm.to_json(),
            "end": end.to_json(),
            "closed": closed.to_json(),
            "rss_growth_bytes": rss_growth,
            "blocks_growth": blocks_growth,
        },
    )
