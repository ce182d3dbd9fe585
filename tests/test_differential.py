"""The form-against-form recorder (tests/differential.py) and comparer (scripts/differential.py).

The harness itself runs both forms (`scripts/differential.py`, a step of scripts/test); these
tests check, in whichever form is installed, that the recorder sees what it claims to see
and that the comparer reports a difference where one is, and nothing where none is.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from .differential import parse_case, record
from .gen_cases import Brk, Case, Interrupt, LLMError, Text, TurnSpec

ROOT = Path(__file__).resolve().parent.parent


def _comparer() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "differential_script", ROOT / "scripts/differential.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("differential_script", module)
    spec.loader.exec_module(module)
    return module


def _case(*items: Any, interrupt: Interrupt | None = None, audio: bool = True) -> Case:
    return Case(
        audio=audio,
        start="auto",
        finish="auto",
        turns=(TurnSpec(steps=(tuple(items),), interrupt=interrupt),),
        choices=(),
    )


def _kinds(obs: list[list[Any]]) -> list[str]:
    return [e[0] if e[0] != "event" else f"event {e[1]}" for e in obs]


def test_records_events_flags_settling_sink_and_history() -> None:
    case = _case(Text("Hello. "), Brk(id="answer"), Text("the answer "))
    rec = record(case)
    kinds = _kinds(rec["obs"])
    # every kind of observable is there, in the order it happened
    for kind in (
        "event speech_created",
        "event agent_state_changed",
        "event conversation_item_added",
        "flags",
        "sink.frames",
        "sink.playback_started",
        "sink.playback_finished",
        "text.capture",
        "playout_started",
        "done",
    ):
        assert kind in kinds, kind
    announced = [e for e in rec["obs"] if e[:2] == ["event", "speech_created"]]
    assert [e[-1] for e in announced] == [["handle", 0, 0], ["handle", 1, 1]]
    # ids are named by first appearance, wall-clock times replaced
    assert "'item_#1'" in str(rec) and "'created_at': 'time'" in str(rec)
    assert rec["end"]["history"][-1] == ["message", "assistant", "Hello. the answer ", False]
    assert rec["end"]["api"]["interrupt"].startswith("(*, force")
    # the playout of handle 1 settles at the sink's (virtual) time of its first frame
    starts = [e[2] for e in rec["obs"] if e[0] == "sink.playback_started"]
    settled = {e[1]: e[2] for e in rec["obs"] if e[0] == "playout_started"}
    assert settled == {0: starts[0], 1: starts[1]}


def test_flags_right_after_each_interrupt_call() -> None:
    case = _case(
        Text("Hello. "),
        Brk(),
        Text("the answer "),
        interrupt=Interrupt(kind="speech_created", at=1),
    )
    rec = record(case)
    calls = [i for i, e in enumerate(rec["obs"]) if e[:2] == ["call", "interrupt"]]
    assert calls, "the interruption was not made"
    after = rec["obs"][calls[0] + 1]
    assert after[:2] == ["flags", "interrupt:speech_created"]
    segment = after[3][1]
    assert segment[1:3] == [1, True]  # segment 1, interrupted


def test_log_records_at_warning_and_above() -> None:
    rec = record(_case(Text("Hello. "), LLMError()))
    logs = [e for e in rec["obs"] if e[0] == "log"]
    assert ["log", "livekit.agents", "ERROR", "Error in _llm_inference_task"] in logs


def test_lazy_mode_reads_no_playout_until_the_end() -> None:
    rec = record(_case(Text("Hello. "), Brk(), Text("is 42. ")), eager=False)
    assert "playout_started" not in _kinds(rec["obs"])
    assert all(len(flags) == 5 for e in rec["obs"] if e[0] == "flags" for flags in e[3])
    assert [h[-1] for h in rec["end"]["handles"]] != ["pending", "pending"]


def test_case_lines_round_trip() -> None:
    case = _case(Brk(id="follow_up", userdata={"source": "rag"}), Text("Sure, "), audio=False)
    assert parse_case(repr(case)) == case
    with pytest.raises(ValueError, match="not a Case"):
        parse_case("Text(text='x')")


def test_comparer_reports_the_first_difference_and_nothing_else() -> None:
    differential = _comparer()
    rec = record(_case(Text("Hello. "), Brk(), Text("is 42. ")))
    same = differential.compare(rec, rec)
    assert same is None
    other = {"obs": [list(e) for e in rec["obs"]], "end": dict(rec["end"])}
    i = next(i for i, e in enumerate(other["obs"]) if e[0] == "flags")
    other["obs"][i] = ["flags", "generate_reply", 0, [[0, 0, True, False, "<missing>", "x"]]]
    group, description = differential.compare(rec, other)
    assert group == "flags after generate_reply | flags after generate_reply"
    assert f"at entry {i}" in description
    api = {**rec["end"]["api"], "interrupt": "(*, other)"}
    group, _ = differential.compare(rec, {"obs": rec["obs"], "end": {**rec["end"], "api": api}})
    assert group == "end api interrupt"


def test_every_allowed_difference_names_its_reason_and_an_existing_test() -> None:
    differential = _comparer()
    contributing = (ROOT / "CONTRIBUTING.md").read_text()
    for allowed in differential.ALLOWED:
        assert allowed.reason and allowed.name in contributing, allowed.name
        path, _, name = allowed.pinned_by.partition("::")
        assert f"def {name}(" in (ROOT / path).read_text(), allowed.pinned_by
