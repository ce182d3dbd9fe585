"""The "thinking" label between responses changes what the frontend sees, never how the session
reacts (issue 21, item 2; design D8), checked differentially.

Each case (tests/label_driver.py) runs twice in this process, on a virtual clock: with
`SegmentBreak`s, and with a plain `FlushSentinel` in their place. The driver takes the same
actions in both at the same points: the model goes on after a gap, the sink plays, the user
starts, keeps (a VAD inference long enough to interrupt) and stops speaking or is transcribed,
upstream's false-interruption timer fires, the app interrupts or queues a ``say()``. Asserted:

- the session's reactions are identical: every sink call (frames, flush, clear, pause, resume,
  start, finish, with virtual times), every interruption and its moment, upstream's
  end-of-speech and start-of-speech steps, tool executions, false-interruption events, user
  states, chat items and history, and at every idle point what upstream's decisions read
  (``session.agent_state``, ``interruption_by_audio_activity_enabled``, the paused speech and
  its timer, the current speech, each reply's flags);
- the patched run's ``agent_state_changed`` events, with the label's own taken out, are the
  plain run's (`label_alignment`: same points, same states);
- in both runs every event's ``old_state`` is the previous event's ``new_state``, and no event
  repeats the state it leaves.

Seed: the one of tests/test_generated.py (``LKSEG_SEED``, printed in the pytest header);
``LKSEG_LABEL_EXAMPLES=<n>`` sets the number of generated cases (default 100). A failure prints
the shrunk `LabelCase`; ``check(<that case>)`` replays it alone.
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, Phase, event, given, seed, settings, strategies as st
from packaging.version import Version

from .gen_cases import SEED
from .label_driver import (
    ELAPSE_ACT,
    FINISH,
    GAP_PREFIX,
    INTERRUPT,
    RELEASE,
    SAY,
    START,
    USER_ACTIVE,
    USER_END,
    USER_FINAL,
    USER_START,
    Break,
    Call,
    Gap,
    Item,
    LabelCase,
    LabelRun,
    Say,
    chain_errors,
    label_alignment,
    reactions_differ,
)

EXAMPLES = int(os.environ.get("LKSEG_LABEL_EXAMPLES", "100"))


def _replay() -> str:
    return (
        f"replay: LKSEG_SEED={SEED} LKSEG_LABEL_EXAMPLES={EXAMPLES} "
        "pytest tests/test_state_label_differential.py"
    )


def run_both(case: LabelCase) -> tuple[LabelRun, LabelRun]:
    previous = logging.root.manager.disable
    logging.disable(logging.CRITICAL)  # pytest would keep every record (and session) alive
    try:
        return LabelRun(case, patched=True).run(), LabelRun(case, patched=False).run()
    finally:
        logging.disable(previous)


def check(
    case: LabelCase,
    note: Callable[[str], None] = lambda _: None,
    runs: tuple[LabelRun, LabelRun] | None = None,
) -> list[str]:
    """Every property of one case (or of its two ``runs``, patched and plain, if given);
    returns what failed (empty: all hold)."""
    p, u = runs if runs is not None else run_both(case)
    bad: list[str] = []
    first = reactions_differ(p.log, u.log)
    if first is not None:
        n, a, b = first
        context = "\n    ".join(map(repr, u.log[max(0, n - 8) : n]))
        bad.append(
            f"reactions differ at entry {n}:\n  patched:  {a}\n  plain:    {b}\n"
            f"  after (plain):\n    {context}"
        )
    if p.history() != u.history():
        bad.append(f"chat history differs:\n  patched: {p.history()}\n  plain:   {u.history()}")
    for run, name in ((p, "patched"), (u, "plain")):
        bad += [f"{name}: {m}" for m in chain_errors(run.states)]
        if run.leftover:
            bad.append(f"{name}: tasks left running: {run.leftover}")
    errors_p = sorted(str(c.get("message")) for c in p.loop_errors)
    errors_u = sorted(str(c.get("message")) for c in u.loop_errors)
    if errors_p != errors_u:
        bad.append(f"unretrieved errors differ: patched {errors_p}, plain {errors_u}")
    label = label_alignment(p.states, u.states)
    if label is None:
        bad.append(
            "the patched run's state events are not the plain run's plus the label's:\n"
            f"  patched: {p.states}\n  plain:   {u.states}"
        )
    elif case.audio:
        # the label leaves ("speaking" again) at the next response's first frame
        started = {e[-1][0] for e in p.log if e[0] == "start"}
        for point, _, new in label:
            if new == "speaking" and point not in started:
                bad.append(f"the label left at point {point}, where no segment started playing")
    if u.segment_handles:
        bad.append("the plain run announced segment handles")

    # what the case covered (--hypothesis-show-statistics)
    if label:
        note("label shown")
    for act, on in p.acts:
        if on:
            note(f"{act} while the label is on")
    if any(isinstance(i, Break) for turn in case.turns for s in turn for i in s):
        note("with breaks")
    else:
        note("without breaks")
    if not case.audio:
        note("text only")
    if any(e[0] == "pause" for e in p.log):
        note("false-interruption pause")
    if any(e[0] == "false_interruption" and e[1] for e in p.log):
        note("false-interruption resume")
    if any(e[0] == "tool_ran" for e in p.log):
        note("tool ran")
    return bad


# ---------------------------------------------------------------- generated cases

_WORDS = ["Hello. ", "the answer ", "is 42. "]
_FRAGMENTS: list[tuple[Item, ...]] = [
    *[(Say(w),) for w in _WORDS],
    (Break(), Say("Sure, ")),  # a response right after the break
    # a gap: the model waits after a break
    *[(Break(), Gap(), Say("the answer ")), (Break(), Gap(), Say("is 42. "))] * 2,
    (Break(),),  # a break on its own (trailing at the end of a step)
    (Break(), Gap()),  # a trailing break the model waits after
    (Gap(),),
]
_SCRIPT = st.lists(st.sampled_from(_FRAGMENTS), min_size=1, max_size=6).map(
    lambda fs: tuple(i for f in fs for i in f)
)
# a step followed by a tool step ends with a call, often right after a break (and a gap)
_TOOL_TAIL = st.sampled_from(
    [(Call(),), (Break(), Call()), (Break(), Gap(), Call()), (Gap(), Call())]
)


@st.composite
def _turn(draw: st.DrawFn) -> tuple[tuple[Item, ...], ...]:
    n_steps = draw(st.sampled_from([1, 1, 1, 2]))
    steps = [draw(_SCRIPT) + draw(_TOOL_TAIL) for _ in range(n_steps - 1)]
    return (*steps, draw(_SCRIPT))


# an index among the enabled actions, or an action by name (in a gap, or when it can be taken);
# the names weigh the cases towards what the user and the app do between two responses
_CHOICE = st.sampled_from(
    [
        *range(6),
        *(GAP_PREFIX + a for a in (USER_START,) * 2 + (USER_FINAL, ELAPSE_ACT, INTERRUPT) * 2),
        # a barge-in in the gap (paused, or interrupting when the case does not pause)
        *[f"{GAP_PREFIX}{USER_START}+{USER_ACTIVE}"] * 2,
        f"{GAP_PREFIX}{USER_START}+{USER_ACTIVE}+{USER_END}+{ELAPSE_ACT}",  # resumed
        f"{GAP_PREFIX}{USER_START}+{USER_ACTIVE}+{USER_FINAL}",  # a real interruption
        GAP_PREFIX + SAY,  # the app queues a say() in the gap
        USER_ACTIVE,
        USER_ACTIVE,
        USER_END,
        USER_FINAL,
        ELAPSE_ACT,
    ]
)


@st.composite
def label_cases(draw: st.DrawFn) -> LabelCase:
    return LabelCase(
        start=draw(st.sampled_from(["auto", "manual"])),
        finish=draw(st.sampled_from(["auto", "manual"])),
        pause=draw(st.sampled_from([True, True, False])),
        turns=tuple(draw(st.lists(_turn(), min_size=1, max_size=2))),
        choices=tuple(draw(st.lists(_CHOICE, max_size=24))),
        interrupt_kind=draw(st.sampled_from(["turn", "session"])),
        audio=draw(st.sampled_from([True] * 7 + [False])),
    )


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,  # the seed alone decides the cases
    print_blob=False,
    phases=[Phase.generate, Phase.shrink],
    suppress_health_check=list(HealthCheck),
)
@seed(SEED)
@given(case=label_cases())
def test_label_changes_no_reaction(case: LabelCase) -> None:
    try:
        bad = check(case, note=event)
    except Exception as e:  # a stuck session or a crash: same replay
        raise AssertionError(f"seed {SEED} ({_replay()})\n{case!r}\n{e!r}") from e
    assert not bad, "\n".join([f"seed {SEED} ({_replay()})", repr(case), *bad])


# ---------------------------------------------------------------- the named flows
#
# Each is one fixed case: its actions, and the reactions upstream shows in the plain run, are
# checked to be what its name says (so the generated suite's coverage of these never depends
# on the seed); then it is checked like every other case.


def _acts_on_label(run: LabelRun) -> list[str]:
    return [act for act, on in run.acts if on]


A, B = Say("Hello. "), Say("the answer ")
GAP_REPLY = ((A, Break(), Gap(), B),)  # one response, a break, the model waits, the next one

NAMED: dict[str, tuple[LabelCase, list[str], list[str]]] = {
    # the user speaks in the gap, keeps speaking (a barge-in would pause), stops, and the
    # false-interruption timer resumes
    "user speech in the gap, false interruption resumed": (
        LabelCase("auto", "auto", True, (GAP_REPLY,), (USER_START, USER_ACTIVE, USER_END)),
        [USER_START, USER_ACTIVE],
        ["pause", "false_interruption"],
    ),
    # a barge-in in the gap with pausing off: upstream interrupts the reply
    "barge-in in the gap, no pause": (
        LabelCase("auto", "auto", False, (GAP_REPLY,), (USER_START, USER_ACTIVE)),
        [USER_START, USER_ACTIVE],
        ["interrupted"],
    ),
    # a pause in the gap, then a final transcript: the paused reply is interrupted
    "false interruption in the gap, then transcribed": (
        LabelCase("auto", "auto", True, (GAP_REPLY,), (USER_START, USER_ACTIVE, USER_FINAL)),
        [USER_START, USER_ACTIVE],
        ["pause", "interrupted"],
    ),
    # a pause in the gap, the user stops, the model goes on while paused, the timer resumes
    "false interruption in the gap, next response while paused": (
        LabelCase("auto", "auto", True, (GAP_REPLY,), (USER_START, USER_ACTIVE, USER_END, RELEASE)),
        [USER_START, USER_ACTIVE],
        ["pause", "false_interruption"],
    ),
    # the app interrupts while the label is on
    "interruption while thinking": (
        LabelCase("auto", "auto", True, (GAP_REPLY,), (INTERRUPT,)),
        [INTERRUPT],
        ["interrupted"],
    ),
    # the app queues a say() in the gap: it plays once the reply is over
    "say queued while thinking": (
        LabelCase("auto", "auto", True, (GAP_REPLY,), (GAP_PREFIX + SAY,)),
        [SAY],
        [],
    ),
    "session interruption while thinking": (
        LabelCase("auto", "auto", True, (GAP_REPLY,), (INTERRUPT,), interrupt_kind="session"),
        [INTERRUPT],
        ["interrupted"],
    ),
    # a tool call after a break: the reply's end-of-speech step, the tool, the follow-up
    "tool call after a break": (
        LabelCase(
            "auto",
            "auto",
            True,
            (((A, Break(), Gap(), Call()), (B,)),),
            (ELAPSE_ACT, RELEASE),
        ),
        [ELAPSE_ACT],
        ["tool_ran", "tools_executed"],
    ),
    # a trailing break with nothing after it: the model ends while the label is on
    "trailing break with nothing after it": (
        LabelCase("auto", "auto", True, (((A, Break(), Gap()),),), (ELAPSE_ACT, RELEASE)),
        [ELAPSE_ACT, RELEASE],
        [],
    ),
    # manual playout: the next response is held before it starts, the user speaks meanwhile
    "user speech while the next response waits to start": (
        LabelCase("manual", "manual", True, (GAP_REPLY,), (START, FINISH, USER_START, RELEASE)),
        [USER_START],
        [],
    ),
    # the user starts in the gap and is still speaking when the next response forwards
    # (upstream reconciles the playout pause before forwarding)
    "user still speaking when the next response starts": (
        LabelCase("auto", "auto", True, (GAP_REPLY,), (USER_START, RELEASE, USER_END)),
        [USER_START],
        [],
    ),
}


_AGENTS_VERSION = Version(importlib.metadata.version("livekit-agents"))
# the release whose upstream reactions the named flows were written against
_FLOWS_CHECKED_ON = Version("1.8.9")


@pytest.mark.parametrize("name", list(NAMED))
def test_named_flow(name: str) -> None:
    case, on_label, reactions = NAMED[name]
    runs = run_both(case)
    acted = _acts_on_label(runs[0])
    missing = [a for a in on_label if a not in acted]
    assert not missing, f"{name}: {missing} not taken while the label was on ({runs[0].acts})"
    bad = check(case, runs=runs)
    assert not bad, "\n".join([name, repr(case), *bad])
    kinds = {entry[0] for entry in runs[1].log}
    absent = [r for r in reactions if r not in kinds]
    if absent and _AGENTS_VERSION < _FLOWS_CHECKED_ON:
        # the flow's reaction is upstream's own, and some older releases do not make it: the
        # runs were still compared above; the newest release (the main suite) must show it
        pytest.skip(
            f"livekit-agents {_AGENTS_VERSION} does not react with {absent} in this flow "
            f"(upstream's behaviour in that release; required from {_FLOWS_CHECKED_ON}); "
            "both runs still matched"
        )
    assert not absent, f"{name}: the session never reacted with {absent}: {runs[1].log}"


def test_without_breaks_there_is_no_label() -> None:
    """A reply without breaks runs alike in both flavours, and shows no label."""
    case = LabelCase("auto", "auto", True, (((A, Gap(), B),),), (USER_START, USER_ACTIVE, USER_END))
    p, u = runs = run_both(case)
    assert p.states == u.states
    assert not check(case, runs=runs)


def test_alignment_rejects_what_the_label_may_not_do() -> None:
    """The comparison itself: label events are only speaking->thinking, then thinking->X."""
    plain = [
        (1, "listening", "thinking"),
        (2, "thinking", "speaking"),
        (5, "speaking", "listening"),
    ]
    label = [
        (1, "listening", "thinking"),
        (2, "thinking", "speaking"),
        (3, "speaking", "thinking"),
        (4, "thinking", "speaking"),
        (5, "speaking", "thinking"),
        (5, "thinking", "listening"),
    ]
    # enter at 3, leave at 4, enter at 5, upstream's "listening" at 5
    assert label_alignment(label, plain) is not None
    # upstream's own "listening" moved to another point: a reaction changed
    moved = [*label[:-1], (6, "thinking", "listening")]
    assert label_alignment(moved, plain) is None
    # a silent return to "speaking" (no event) is not the label's
    silent = [*plain[:2], (3, "speaking", "thinking"), (5, "speaking", "listening")]
    assert label_alignment(silent, plain) is None
    # a tool step while the label is on: upstream's "thinking" makes no event
    tool_plain = [
        (1, "thinking", "speaking"),
        (4, "speaking", "thinking"),
        (6, "thinking", "speaking"),
    ]
    tool_label = [
        (1, "thinking", "speaking"),
        (2, "speaking", "thinking"),
        (6, "thinking", "speaking"),
    ]
    assert label_alignment(tool_label, tool_plain) == [(2, "speaking", "thinking")]
    # ... but not after the label's next event
    late = [(1, "thinking", "speaking"), (2, "speaking", "thinking"), (3, "thinking", "speaking")]
    assert label_alignment(late, tool_plain) is None
    assert chain_errors(silent, first_old="listening") == [
        "event 3 at point 5: speaking->listening, but the state was thinking"
    ]
