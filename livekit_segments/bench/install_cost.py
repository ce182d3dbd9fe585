"""B1, the cost of being installed: replies without breaks, patch installed versus not."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass

from . import stats
from .fakes import ScriptedAgent, ZeroLatencySink, close_session, reply, silence, start_session
from .forms import Form, Forms, activate
from .report import BenchResult, Row, fmt, fmt_ratio, judge

__all__ = ["InstallCostConfig", "run"]

TARGET_RATIO = 1.02

# a short reply: seven text chunks, one 20 ms frame each; the patch's cost is per reply, so a
# short reply is the least flattering case
SCRIPT = ["Sure, ", "here is ", "the answer ", "to your ", "question: ", "it is ", "forty-two."]


@dataclass(frozen=True)
class InstallCostConfig:
    batches: int  # per form
    replies_per_batch: int
    warmup_replies: int = 2


async def _batch(form: Form, cfg: InstallCostConfig) -> float:
    """CPU seconds (this thread) per reply, over one batch in one fresh session."""
    activate(form)
    sink = ZeroLatencySink()
    session = await start_session(ScriptedAgent(SCRIPT, frames=[silence(20)]), sink)
    try:
        for _ in range(cfg.warmup_replies):
            await reply(session)
        gc.collect()
        t0 = time.thread_time()
        for _ in range(cfg.replies_per_batch):
            await reply(session)
        cpu = time.thread_time() - t0
    finally:
        await close_session(session, sink)
    return cpu / cfg.replies_per_batch


async def run(cfg: InstallCostConfig, forms: Forms) -> BenchResult:
    per_reply: dict[Form, list[float]] = {f: [] for f in forms.all}
    pairs: list[float] = []
    for i in range(cfg.batches):
        batch: dict[Form, float] = {}
        for form in forms.order(i):
            batch[form] = await _batch(form, cfg)
            per_reply[form].append(batch[form])
        if forms.baseline is not None:
            pairs.append(batch[forms.subject] / batch[forms.baseline])

    subject = stats.median(per_reply[forms.subject])
    base = stats.median(per_reply[forms.baseline]) if forms.baseline is not None else None
    ratio = stats.ratio(subject, base)
    status = judge(None if ratio is None else ratio <= TARGET_RATIO)
    replies = cfg.batches * cfg.replies_per_batch

    def ms(v: float | None) -> str:
        return fmt(None if v is None else v * 1e3, "ms")

    spread = {
        f.value: [stats.percentile(v, 25) * 1e3, stats.percentile(v, 75) * 1e3]
        for f, v in per_reply.items()
    }
    rows = [
        Row(
            f"CPU per reply, median of {cfg.batches} batches x {cfg.replies_per_batch}",
            ms(base),
            ms(subject),
            fmt_ratio(ratio),
            f"<= {TARGET_RATIO}",
            status,
        ),
    ]
    notes = [
        f"replies without breaks, {replies} per form; thread CPU time (time.thread_time), "
        f"one fresh session per batch, batches interleaved"
    ]
    if pairs:
        notes.append(
            f"median of per-pair ratios {stats.median(pairs):.3f} "
            f"(interquartile {stats.percentile(pairs, 25):.3f}-{stats.percentile(pairs, 75):.3f})"
        )
    return BenchResult(
        id="B1",
        title="cost of being installed",
        target=f"CPU per reply ratio <= {TARGET_RATIO}",
        status=status,
        rows=rows,
        notes=notes,
        data={
            "replies_per_form": replies,
            "batches": cfg.batches,
            "replies_per_batch": cfg.replies_per_batch,
            "cpu_per_reply_ms": {f.value: stats.median(v) * 1e3 for f, v in per_reply.items()},
            "ratio": ratio,
            "pair_ratio_median": stats.median(pairs) if pairs else None,
            "batch_cpu_per_reply_ms": {f.value: [x * 1e3 for x in v] for f, v in per_reply.items()},
            "interquartile_ms": spread,
        },
    )
