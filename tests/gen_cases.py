"""Generated cases for the property suite (tests/test_generated.py): the model and strategies.

A case is plain data: what each `llm_node` call yields, how the session is set up, when the
driver interrupts, and the driver's picks among the actions it can take at each idle point.
The same case runs twice, with `SegmentBreak`s and with plain `FlushSentinel`s in their place.

Seed: every run draws its cases from one seed, printed in the pytest header. Replay a run
with ``LKSEG_SEED=<seed>``; ``LKSEG_EXAMPLES=<n>`` changes how many cases run (default 1000).
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

# ---------------------------------------------------------------- seed and size


def _seed_from_env() -> int:
    raw = os.environ.get("LKSEG_SEED", "").strip()
    if not raw:
        return secrets.randbelow(2**32)
    try:
        return int(raw, 0)
    except ValueError:
        raise SystemExit(f"LKSEG_SEED must be an integer, not {raw!r}") from None


SEED = _seed_from_env()
EXAMPLES = int(os.environ.get("LKSEG_EXAMPLES", "1000"))


def replay_hint() -> str:
    return f"replay: LKSEG_SEED={SEED} LKSEG_EXAMPLES={EXAMPLES} pytest tests/test_generated.py"


# ---------------------------------------------------------------- script items


@dataclass(frozen=True)
class Text:
    """A text chunk. ``""`` and whitespace are kept as they are; "Boom" makes the TTS fail."""

    text: str


@dataclass(frozen=True)
class Brk:
    """A `SegmentBreak` in the patched run, a plain `FlushSentinel` in the upstream run."""

    id: str | None = None
    userdata: Any = None


@dataclass(frozen=True)
class Flush:
    """A plain `FlushSentinel` in both runs."""


@dataclass(frozen=True)
class Delay:
    """The model waits here until the driver releases it (a future, never a sleep)."""


@dataclass(frozen=True)
class LLMError:
    """`llm_node` raises here."""


@dataclass(frozen=True)
class Tool:
    """A call to the agent's ``lookup`` tool; the next step of the turn is the follow-up."""


Item = Text | Brk | Flush | Delay | LLMError | Tool

# ---------------------------------------------------------------- session


INTERRUPT_KINDS = ("session", "turn", "segment", "barge_in", "speech_created", "playback_started")


@dataclass(frozen=True)
class Interrupt:
    """Interrupt the turn.

    ``kind`` "speech_created": from inside ``speech_created`` of the turn's ``at``-th segment
    handle (1-based), calling ``interrupt()`` on that handle; the upstream run interrupts the
    turn at the same moment (when that segment's ``transcription_node`` is called).
    "playback_started": the turn, from inside the sink's playback-started event of the turn's
    ``at``-th sink segment (0-based), right after the patch resolved ``playout_started`` there.
    Other kinds: at the turn's ``at``-th idle point (0 = before anything ran).
    """

    kind: str
    at: int


@dataclass(frozen=True)
class TurnSpec:
    """One user turn: one script per LLM call (step 0, then the follow-up after each tool)."""

    steps: tuple[tuple[Item, ...], ...]
    interrupt: Interrupt | None = None


@dataclass(frozen=True)
class Case:
    audio: bool
    start: str  # sink start mode: "auto" or "manual"
    finish: str  # sink finish mode
    turns: tuple[TurnSpec, ...]
    # the driver's pick (modulo the number of enabled actions) at each idle point, then
    # ``fallback`` (0 favours the model, releasing it first; 1 favours the sink's playout)
    choices: tuple[int, ...]
    fallback: int = 0


# ---------------------------------------------------------------- strategies

_WORDS = ["Hello. ", "Sure, ", "the answer ", "is 42. ", "Anything else? "]
_RAG = {"source": "rag"}
# one draw per item (cheap to generate, shrinks towards "Hello. "); repeats weigh the kinds
_ITEMS: list[Item] = [
    *[Text(w) for w in _WORDS * 3],
    *[Text(w) for w in ("", " ", "   ", "\n")],
    Brk(),
    Brk(),
    Brk(id="answer"),
    Brk(id="follow_up", userdata=_RAG),
    Brk(id="", userdata=0),
    Brk(userdata=_RAG),
    Flush(),
    Flush(),
    Delay(),
    Delay(),
    Delay(),
    Delay(),
]
_ERRORS: list[Item] = [LLMError(), Text("Boom ")]  # Boom: TTS failure


# a script is a list of fragments: single items, or a break with the start of its response
# (the shape that opens a handle, rarer when every item is drawn on its own)
_RESPONSES: list[tuple[Item, ...]] = [
    (Brk(id="answer"), Text("the answer ")),
    (Brk(), Text("Sure, ")),
    (Brk(id="follow_up", userdata=_RAG), Delay(), Text("Anything else? ")),
    (Brk(), Flush(), Text("is 42. ")),
]
_FRAGMENTS = [*[(i,) for i in _ITEMS], *_RESPONSES * 3]
_FRAGMENTS_WITH_TOOL = [*_FRAGMENTS, (Tool(),)]


def _flat(fragments: list[tuple[Item, ...]]) -> tuple[Item, ...]:
    return tuple(item for fragment in fragments for item in fragment)


# built once: a strategy made inside a draw is a new object (and cache entry) every time
_SCRIPT_LAST = st.lists(st.sampled_from(_FRAGMENTS), max_size=8).map(_flat)
# a step that is not the last of its turn calls the tool at its end, as models do
_SCRIPT_MID = st.lists(st.sampled_from(_FRAGMENTS_WITH_TOOL), max_size=8).map(
    lambda fragments: (*_flat(fragments), Tool())
)
# an error in about one turn in ten, at any position of one of its steps (hypothesis favours
# the ends of a range, so the rare value sits in the middle; shrinking goes to "no error")
_HAS_ERROR = st.sampled_from([False] * 5 + [True] + [False] * 4)
_ERROR = st.tuples(st.integers(0, 2), st.integers(0, 10), st.sampled_from(_ERRORS))
_INTERRUPT = st.one_of(
    st.none(),
    st.builds(Interrupt, kind=st.sampled_from(INTERRUPT_KINDS), at=st.integers(0, 4)),
    st.builds(Interrupt, kind=st.sampled_from(INTERRUPT_KINDS), at=st.integers(1, 3)),
)
_STEPS = st.sampled_from([1, 1, 1, 2, 2, 3])
_AUDIO = st.sampled_from([True, True, True, False])  # 3 in 4 with audio
_MODE = st.sampled_from(["manual", "auto"])
_CHOICES = st.lists(st.integers(0, 5), max_size=20).map(tuple)
_FALLBACK = st.integers(0, 1)


@st.composite
def _turn(draw: st.DrawFn) -> TurnSpec:
    n_steps = draw(_STEPS)
    steps = [draw(_SCRIPT_MID) for _ in range(n_steps - 1)] + [draw(_SCRIPT_LAST)]
    if draw(_HAS_ERROR):
        step, pos, item = draw(_ERROR)
        script = steps[min(step, n_steps - 1)]
        pos = min(pos, len(script))
        steps[min(step, n_steps - 1)] = (*script[:pos], item, *script[pos:])
    return TurnSpec(steps=tuple(steps), interrupt=draw(_INTERRUPT))


_TURNS = st.lists(_turn(), min_size=1, max_size=3).map(tuple)


@st.composite
def _cases(draw: st.DrawFn) -> Case:
    audio = draw(_AUDIO)
    return Case(
        audio=audio,
        start=draw(_MODE) if audio else "auto",
        finish=draw(_MODE) if audio else "auto",
        turns=draw(_TURNS),
        choices=draw(_CHOICES),
        fallback=draw(_FALLBACK),
    )


def cases() -> st.SearchStrategy[Case]:
    """Generated cases (see the module docstring)."""
    return _CASES


_CASES = _cases()
