"""B1, the cost of being installed: replies without breaks, patch installed versus not."""

from __future__ import annotations

import gc
from dataclasses import dataclass

from livekit.agents import AgentSession
from livekit_segments._cli import plural

from . import cpu_meter, stats
from .fakes import (
    ScriptedAgent,
    ZeroLatencySink,
    close_session,
    reply,
    silence,
    start_session,
    trim_history,
)
from .forms import Form, Forms, activate
from .report import BenchResult, Judged, Row, fmt, fmt_estimate

__all__ = ["InstallCostConfig", "run", "start", "summarize"]

TARGET_RATIO = 1.01

# a short reply: seven text chunks, one 20 ms frame each; the patch's cost is per reply, so a
# short reply is the least flattering case
SCRIPT = ["Sure, ", "here is ", "the answer ", "to your ", "question: ", "it is ", "forty-two."]


@dataclass(frozen=True)
class InstallCostConfig:
    batches: int  # rounds; each runs every form once, in alternating order
    replies_per_batch: int
    warmup_replies: int = 2
    # run, unmeasured, after each switch of forms (not where activating changed nothing, as
    # in B1n's workers): installing or uninstalling invalidates CPython's specialized
    # bytecode for what it touches, and the first reply after the switch specializes it
    # again, which a process that installs once never pays
    settle_replies: int = 1
    history_items: int = 40  # the history is cut back to this before every batch


async def _batch(session: AgentSession[None], form: Form, cfg: InstallCostConfig) -> float:
    """CPU seconds (this thread) per reply, over one batch of replies under ``form``."""
    # takes effect at the next reply: the patch wraps call sites, not sessions
    if activate(form):
        for _ in range(cfg.settle_replies):
            await reply(session)
    # as timeit does: a collection landing in one batch and not the other is pure noise
    gc.collect()
    gc.disable()
    try:
        t0 = cpu_meter.cpu()
        for _ in range(cfg.replies_per_batch):
            await reply(session)
        return (cpu_meter.cpu() - t0) / cfg.replies_per_batch
    finally:
        gc.enable()


async def start() -> tuple[AgentSession[None], ScriptedAgent, ZeroLatencySink]:
    """The session B1 measures, with its agent and sink."""
    sink = ZeroLatencySink()
    agent = ScriptedAgent(SCRIPT, frames=[silence(20)])
    return await start_session(agent, sink), agent, sink


async def run(cfg: InstallCostConfig, forms: Forms) -> BenchResult:
    # one long-lived session for both forms, switched batch by batch: both measure the same
    # session state, so the comparison is paired rather than across fresh sessions
    session, agent, sink = await start()
    per_reply: dict[Form, list[float]] = {f: [] for f in forms.all}
    pairs: list[float] = []
    try:
        for form in forms.all:
            activate(form)
            for _ in range(cfg.warmup_replies):
                await reply(session)
        for i in range(cfg.batches):
            batch: dict[Form, float] = {}
            for form in forms.order(i):
                # per batch, not per round: a reply costs more the longer the history, and
                # the form that ran second in a round would pay for the first one's replies
                await trim_history(session, agent, cfg.history_items)
                batch[form] = await _batch(session, form, cfg)
                per_reply[form].append(batch[form])
            if forms.baseline is not None:
                pairs.append(batch[forms.subject] / batch[forms.baseline])
    finally:
        await close_session(session, sink)
    return summarize(cfg, forms, per_reply, pairs)


def summarize(
    cfg: InstallCostConfig, forms: Forms, per_reply: dict[Form, list[float]], pairs: list[float]
) -> BenchResult:
    """B1's result from the CPU per reply of every batch and the per-round ratios."""
    subject = stats.mean(per_reply[forms.subject])
    base = stats.mean(per_reply[forms.baseline]) if forms.baseline is not None else None
    # judged on the median of per-pair ratios: each pair ran back to back, so slow phases of
    # the shared machine hit both sides; an outlier batch moves a mean, not a median. Two
    # rounds in opposite orders make one value, so running first or second cancels out.
    estimate = stats.counterbalanced_estimate(pairs) if forms.baseline is not None else None
    status = stats.verdict(estimate, TARGET_RATIO)
    judged = Judged("CPU per reply ratio", f"<= {TARGET_RATIO}", status, estimate)
    replies = cfg.batches * cfg.replies_per_batch

    def ms(v: float | None) -> str:
        return fmt(None if v is None else v * 1e3, "ms")

    spread = {
        f.value: [stats.percentile(v, 25) * 1e3, stats.percentile(v, 75) * 1e3]
        for f, v in per_reply.items()
    }
    rows = [
        Row(
            f"CPU per reply, {plural(cfg.batches, 'round')} x {cfg.replies_per_batch} per form",
            ms(base),
            ms(subject),
            fmt_estimate(estimate),
            f"<= {TARGET_RATIO}",
            status,
        ),
    ]
    notes = [
        f"replies without breaks, {replies} per form; thread CPU time (time.thread_time); "
        f"one session, forms switched batch by batch in alternating order, each switch "
        f"followed by {plural(cfg.settle_replies, 'unmeasured reply', 'unmeasured replies')}, "
        f"history trimmed to {cfg.history_items} items before every batch; CPU columns are "
        f"means over all batches, the ratio is the median over pairs of rounds in opposite "
        f"orders of the geometric mean of their two ratios (patch batch / upstream batch of "
        f"the same round)"
    ]
    return BenchResult(
        id="B1",
        title="cost of being installed",
        target=f"CPU per reply ratio <= {TARGET_RATIO}",
        status=status,
        rows=rows,
        notes=notes,
        judged=[judged],
        data={
            "replies_per_form": replies,
            "batches": cfg.batches,
            "replies_per_batch": cfg.replies_per_batch,
            "cpu_per_reply_ms": {f.value: stats.mean(v) * 1e3 for f, v in per_reply.items()},
            "ratio": None if estimate is None else estimate.point,
            "ratio_of_means": stats.ratio(subject, base),
            "pair_ratios": pairs,
            "batch_cpu_per_reply_ms": {f.value: [x * 1e3 for x in v] for f, v in per_reply.items()},
            "interquartile_ms": spread,
        },
    )
