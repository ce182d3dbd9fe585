#!/usr/bin/env python3
"""The runtime form against the native form, case by case (issue 21, item 4).

usage: scripts/differential.py [--cases N] [--seed S] [--jobs J]
                               [--runtime-python PY] [--native-python PY] [--keep DIR]

Draws N generated cases (tests/gen_cases.py) from one seed, once, in this process; runs the
same case list in each form, each form in its own processes (`python -m tests.differential`:
the runtime form calls install(), the native form has the patched livekit-agents), and
compares everything each case recorded, entry by entry: session events with their fields,
agent-state changes, each handle's flags after every call the app makes, the settling of
every awaitable, chat history, sink and transcript calls, WARNING+ log records.

Zero differences pass, except those in ALLOWED below (each listed in CONTRIBUTING.md, with its
reason and the test that pins it). Every other difference is printed with its case (the Case
repr, which `tests.differential.parse_case` reads back) and the first entry where the forms
part; groups of cases that part the same way show their smallest case.

Defaults: N from LKSEG_DIFF_CASES (500), the seed from LKSEG_SEED (random, printed), J = 2
processes (the cases are split into J/2 shards per form). Run with the runtime venv's python
from the repository root; both venvs come from scripts/setup.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


@dataclass(frozen=True)
class Allowed:
    """A difference the forms may keep: CONTRIBUTING.md lists it with its reason."""

    name: str
    reason: str
    pinned_by: str  # the test (path::name) that pins each form's side
    # rewrites one form's record (form name, record) so that the allowed difference vanishes
    normalize: Callable[[str, dict[str, Any]], None]


ALLOWED: list[Allowed] = []


# ---------------------------------------------------------------- masks for exploring
# Not allowed differences: `--ignore NAME,...` hides a difference already known (and being
# fixed), to see what else differs behind it. CI never passes --ignore.


def _mask_settle_order(form: str, rec: dict[str, Any]) -> None:
    """When the handles and awaitables settle, relative to everything else: only the
    values are compared (sorted, at the end)."""
    settles = ("done", "playout_started", "session.interrupt()")
    rec["end"]["settled"] = sorted(json.dumps(e) for e in rec["obs"] if e[0] in settles)
    rec["obs"] = [e for e in rec["obs"] if e[0] not in settles]


def _mask_interrupt_finish(form: str, rec: dict[str, Any]) -> None:
    """Whether interrupt() finished the open segment handle within the call (D6): an
    interrupted segment handle's done and playout_started in every snapshot but at idle."""
    for e in rec["obs"]:
        if e[0] == "flags" and e[1] != "idle":
            for flags in e[3]:
                if flags[1] >= 1 and flags[2]:
                    flags[3:4] = ["*"]
                    if len(flags) > 5:  # an eager run's playout_started
                        flags[5] = "*"


def _mask_interrupt_signature(form: str, rec: dict[str, Any]) -> None:
    """A segment handle's interrupt() signature (D5)."""
    rec["end"].get("api", {}).pop("interrupt", None)


MASKS: dict[str, Callable[[str, dict[str, Any]], None]] = {
    "settle-order": _mask_settle_order,
    "interrupt-finish": _mask_interrupt_finish,
    "interrupt-signature": _mask_interrupt_signature,
}


# ---------------------------------------------------------------- the cases


def draw_cases(n: int, seed: int) -> list[str]:
    """N cases from one seed, as worker lines: the modes, then the Case repr. Every other
    case reads no playout_started until the end ("lazy"), the others all along ("eager");
    every other pair makes its playback_started interruption from an app listener that runs
    before the session's ("listener"), the others from the sink after it ("after")."""
    from hypothesis import HealthCheck, Phase, given, seed as hseed, settings

    from tests.gen_cases import cases

    out: list[str] = []

    @settings(
        max_examples=n,
        database=None,
        phases=[Phase.generate],
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @hseed(seed)
    @given(cases())
    def collect(case: Any) -> None:
        out.append(repr(case))

    collect()
    return [
        f"{'lazy' if i % 2 else 'eager'},{'listener' if i % 4 >= 2 else 'after'} {c}"
        for i, c in enumerate(out)
    ]


def run_form(python: str, cases: list[str], jobs: int, tmp: Path, form: str) -> list[Any]:
    """Runs the cases in one form, in ``jobs`` processes; returns (header, records)."""
    shards = [cases[i::jobs] for i in range(jobs)]
    paths = []
    procs = []
    for k, shard in enumerate(shards):
        cpath, opath = tmp / f"{form}-{k}.cases", tmp / f"{form}-{k}.jsonl"
        cpath.write_text("".join(c + "\n" for c in shard))
        env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
        procs.append(
            subprocess.Popen(
                [python, "-m", "tests.differential", str(cpath), str(opath)], cwd=ROOT, env=env
            )
        )
        paths.append(opath)
    for p in procs:
        if p.wait() != 0:
            raise SystemExit(f"differential: the {form} worker ({python}) failed: {p.returncode}")
    header = None
    records: list[Any] = [None] * len(cases)
    for k, opath in enumerate(paths):
        with opath.open() as f:
            header = json.loads(f.readline())
            for line in f:
                rec = json.loads(line)
                records[rec["i"] * jobs + k] = rec
    return [header, records]


# ---------------------------------------------------------------- comparing


def first_difference(a: list[Any], b: list[Any]) -> int | None:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return i
    return None if len(a) == len(b) else min(len(a), len(b))


def kind_of(entry: Any) -> str:
    """A short name for an entry, to group cases that part the same way."""
    if entry is None:
        return "(nothing)"
    if entry[0] == "event":
        return f"event {entry[1]}"
    if entry[0] == "flags":
        return f"flags after {entry[1]}"
    if entry[0] == "log":
        return f"log {entry[2]} {entry[3][:60]}"
    return str(entry[0])


def compare(rt: dict[str, Any], nt: dict[str, Any]) -> tuple[str, str] | None:
    """(group, description) of the first difference of one case, or None."""
    for key in ("harness_error", "crash"):
        if rt["end"].get(key) != nt["end"].get(key):
            return f"end {key}", f"runtime: {rt['end'].get(key)}\n    native:  {nt['end'].get(key)}"
    i = first_difference(rt["obs"], nt["obs"])
    if i is not None:
        a = rt["obs"][i] if i < len(rt["obs"]) else None
        b = nt["obs"][i] if i < len(nt["obs"]) else None
        before = rt["obs"][max(0, i - 3) : i]
        lines = [f"at entry {i}; before it (both):"]
        lines += [f"      {json.dumps(e)}" for e in before]
        lines += [f"    runtime: {json.dumps(a)}", f"    native:  {json.dumps(b)}"]
        return f"{kind_of(a)} | {kind_of(b)}", "\n".join(lines)
    for key in sorted(set(rt["end"]) | set(nt["end"])):
        a, b = rt["end"].get(key), nt["end"].get(key)
        if a != b:
            if isinstance(a, dict) and isinstance(b, dict):  # only the parts that differ
                sub = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
                a, b = {k: a.get(k) for k in sub}, {k: b.get(k) for k in sub}
                key = f"{key} {','.join(sub)}"
            return f"end {key}", f"runtime: {json.dumps(a)}\n    native:  {json.dumps(b)}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cases", type=int, default=int(os.environ.get("LKSEG_DIFF_CASES", 500)))
    parser.add_argument("--seed", type=lambda s: int(s, 0), default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--runtime-python", default=str(ROOT / ".venv/bin/python"))
    parser.add_argument("--native-python", default=str(ROOT / ".venv-native/bin/python"))
    parser.add_argument("--keep", type=Path, help="keep the cases and records in this directory")
    parser.add_argument(
        "--case",
        action="append",
        help="run this case alone (repeatable): 'MODES Case(...)' as printed, e.g. "
        "'eager,after Case(audio=True, ...)'; prints both records in full",
    )
    parser.add_argument("--show", type=int, default=3, help="cases shown per group")
    parser.add_argument(
        "--ignore",
        default="",
        help=f"hide known differences to explore (never in CI): {', '.join(MASKS)}",
    )
    args = parser.parse_args()
    for flag, python in (
        ("--runtime-python", args.runtime_python),
        ("--native-python", args.native_python),
    ):
        if not Path(python).exists():
            raise SystemExit(
                f"differential: {python} does not exist: run scripts/setup (it makes .venv and "
                f".venv-native), or pass {flag}"
            )
    unknown = [name for name in args.ignore.split(",") if name and name not in MASKS]
    if unknown:
        raise SystemExit(f"differential: --ignore knows {', '.join(MASKS)}, not {unknown}")
    masks = [MASKS[name] for name in args.ignore.split(",") if name]
    seed = args.seed
    if seed is None:
        raw = os.environ.get("LKSEG_SEED", "").strip()
        seed = int(raw, 0) if raw else secrets.randbelow(2**32)
    began = time.monotonic()
    cases = args.case or draw_cases(args.cases, seed)
    print(
        f"differential: {len(cases)} cases, seed {seed} "
        f"(replay: scripts/differential.py --seed {seed} --cases {args.cases})"
    )
    per_form = max(1, args.jobs // 2)
    with tempfile.TemporaryDirectory() as t:
        tmp = args.keep or Path(t)
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "cases.txt").write_text("".join(c + "\n" for c in cases))
        with ThreadPoolExecutor(2) as pool:
            rt_f = pool.submit(run_form, args.runtime_python, cases, per_form, tmp, "runtime")
            nt_f = pool.submit(run_form, args.native_python, cases, per_form, tmp, "native")
            (rt_head, rt), (nt_head, nt) = rt_f.result(), nt_f.result()
    if rt_head["form"] != "runtime" or nt_head["form"] != "native":
        raise SystemExit(f"differential: expected runtime and native, got {rt_head}, {nt_head}")
    if args.case:
        for i, (a, b) in enumerate(zip(rt, nt, strict=True)):
            print(f"case {i}: {cases[i]}")
            for n, (x, y) in enumerate(itertools.zip_longest(a["obs"], b["obs"])):
                mark = "  " if x == y else "!="
                print(f"{mark} {n:3} runtime: {json.dumps(x)}")
                if x != y:
                    print(f"{mark} {n:3} native:  {json.dumps(y)}")
    groups: dict[str, list[tuple[int, str]]] = {}
    for i, (a, b) in enumerate(zip(rt, nt, strict=True)):
        for normalize in [*(x.normalize for x in ALLOWED), *masks]:
            normalize("runtime", a)
            normalize("native", b)
        diff = compare(a, b)
        if diff is not None:
            groups.setdefault(diff[0], []).append((i, diff[1]))
    elapsed = time.monotonic() - began
    print(f"differential: runtime {rt_head}, native {nt_head}; {elapsed:.1f} s")
    for name, members in sorted(groups.items(), key=lambda g: -len(g[1])):
        members.sort(key=lambda m: len(cases[m[0]]))
        print(f"\n== {len(members)} case(s) part at: {name}")
        for i, desc in members[: args.show]:
            print(f"  case {i}: {cases[i]}\n    {desc}")
    n_bad = sum(len(m) for m in groups.values())
    print(
        f"\ndifferential: {n_bad} of {len(cases)} cases differ ({len(groups)} group(s)), "
        f"{len(ALLOWED)} allowed difference(s) applied"
        + (f", ignoring {args.ignore}" if masks else "")
        + f"; seed {seed}"
    )
    return 1 if n_bad else 0


if __name__ == "__main__":
    sys.exit(main())
