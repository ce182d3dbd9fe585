"""bench --native-python: B1n, B2n and B7n, each form in its own worker process.

The workers are spawned for real. The tests run this python on both sides, which exercises
the protocol and the pairing but measures no native form (``check=False`` says so); what a
real comparison refuses is checked separately. Only structure is asserted, never timings.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import livekit_segments
from benchmarks import cli as bench_cli, cross_process, instructions, record as bench_record
from benchmarks.forms import Form
from benchmarks.report import BenchReport
from benchmarks.runner import BenchConfig
from livekit_segments import _cli

NATIVE = livekit_segments.has_native_support()


def parse(argv: list[str]) -> argparse.Namespace:
    return bench_cli.build_parser().parse_args(argv)


def run_cli(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    args = parse(argv)
    code = _cli.run_command(args.func, args, bench_cli.PROG)
    return code, capsys.readouterr().err


async def test_workers_run_b1n_and_b2n_over_the_pipe() -> None:
    config = BenchConfig.tiny()
    with cross_process.Pair.started(sys.executable, check=False) as pair:
        hellos = pair.describe()
        # two processes, neither of them this one, each running its own form
        assert {h["form"] for h in hellos.values()} == {"upstream", "native"}
        pids = {h["pid"] for h in hellos.values()}
        assert len(pids) == 2 and os.getpid() not in pids
        # one hash seed for both: a random one per process is a cost offset no pairing cancels
        assert [h["hash_seed"] for h in hellos.values()] == [cross_process.HASH_SEED] * 2
        # a request that fails is answered with its error; the worker carries on
        with pytest.raises(cross_process.WorkerError, match="b1_batch before b1_open"):
            pair[Form.UPSTREAM].call("b1_batch")
        results = await cross_process.run(config, pair)
        report = BenchReport(meta={"subject": "patched", "mode_description": "runtime"}, results=[])
        cross_process.extend(report, results, pair, 1.0)

    assert [r.id for r in results] == ["B1n", "B2n", "B7n"]
    # the tiny preset has no B7 sizes: B7n says so and is not judged
    assert results[2].status == "n/a" and not results[2].judged
    assert "not run in this preset" in results[2].data["reason"]
    doc = json.loads(json.dumps(report.to_json()))
    b1, b2 = doc["benchmarks"]["B1n"], doc["benchmarks"]["B2n"]
    b1_cfg, b2_cfg = config.install_cost, config.segment_cost
    # B1n: one ratio per round, native batch over upstream batch of that round
    assert len(b1["pair_ratios"]) == b1_cfg.batches == 2 * b1["targets"][0]["n"]
    for form in ("upstream", "native"):
        assert len(b1["batch_cpu_per_reply_ms"][form]) == b1_cfg.batches
    for i, r in enumerate(b1["pair_ratios"]):
        native, upstream = (b1["batch_cpu_per_reply_ms"][f][i] for f in ("native", "upstream"))
        assert r == pytest.approx(native / upstream)
    # B2n: every N under both forms, one slope ratio per repetition
    for table in ("cpu_ms", "wall_ms", "peak_kib"):
        assert sorted(b2[table]) == ["native", "upstream"]
        for values in b2[table].values():
            assert list(values) == [str(n) for n in b2_cfg.ns] and all(
                v > 0 for v in values.values()
            )
    assert len(b2["repetition_slope_ratios"]) == b2_cfg.repeats
    for b in (b1, b2):
        assert b["workers"] == hellos
        assert all(t["verdict"] in ("met", "missed", "inconclusive") for t in b["targets"])
        assert "ci95" in b["targets"][0]  # judged by its interval, not n/a
    assert doc["native_workers"] == hellos
    table = report.render_table()
    assert "B1n native form, cost of being installed" in table
    assert "B2n native form, cost per segment" in table
    assert re.search(r"upstream\s+native\s+ratio", table)  # no in-process figures: "native"
    assert "each in its own worker process" in table


@pytest.mark.parametrize(
    ("batches", "sizes"),
    [(400, [100, 100, 100, 100]), (10, [2, 2, 2, 4]), (7, [2, 2, 3]), (2, [2]), (1, [1])],
)
def test_b1n_rounds_split_evenly_over_process_pairs(batches: int, sizes: list[int]) -> None:
    assert cross_process._split_rounds(batches, 4) == sizes


async def test_b1n_pools_rounds_from_several_pairs_of_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each pair of processes has a cost offset of its own: B1n's rounds come from several
    pairs, started one after another, and are pooled."""
    started: list[set[int]] = []
    fresh = cross_process.Pair.fresh

    @contextlib.contextmanager
    def recording_fresh(self: cross_process.Pair) -> Iterator[cross_process.Pair]:
        with fresh(self) as other:
            started.append({h["pid"] for h in other.describe().values()})
            yield other

    monkeypatch.setattr(cross_process.Pair, "fresh", recording_fresh)
    config = BenchConfig.tiny()
    config = dataclasses.replace(
        config, install_cost=dataclasses.replace(config.install_cost, batches=4)
    )
    with cross_process.Pair.started(sys.executable, check=False) as pair:
        first = {h["pid"] for h in pair.describe().values()}
        (b1n,) = await cross_process.run(config, pair, only=["B1n"])
        # the pair the run was given still serves what comes next
        assert pair[Form.UPSTREAM].call("begin") is None
    # one more pair of processes, neither of them the first pair's
    assert len(started) == 1 and len(started[0]) == 2 and started[0].isdisjoint(first)
    assert [p["rounds"] for p in b1n.data["process_pairs"]] == [2, 2]
    assert all(p["median"] > 0 for p in b1n.data["process_pairs"])
    assert len(b1n.data["pair_ratios"]) == 4 and b1n.judged[0].estimate.n == 2
    assert "2 pairs of worker processes" in " ".join(b1n.notes)


def test_cli_adds_b1n_after_the_in_process_figures(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    started = cross_process.Pair.started

    def unchecked(native_python: str, **kwargs: Any) -> Any:
        return started(native_python, check=False, **kwargs)  # this python on both sides

    monkeypatch.setattr(cross_process.Pair, "started", unchecked)
    path = tmp_path / "out.json"
    argv = ["--only", "B3,B1n", "--native-python", sys.executable, "--json", str(path)]
    args = parse(["--tiny", *argv])
    assert args.func(args) == 0
    doc = json.loads(path.read_text())
    assert list(doc["benchmarks"]) == ["B3", "B1n"]
    assert set(doc["native_workers"]) == {"upstream", "native"}
    assert "; B1n, B2n, B7n: the native form" in doc["mode_description"]
    out = capsys.readouterr().out
    column = "native" if NATIVE else "patched / native"  # the subject column's heading
    assert re.search(rf"upstream\s+{column}\s+ratio", out)
    assert "B3 signal latency" in out and "B1n native form, cost of being installed" in out


def test_a_python_without_native_support_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    """This python as the native side: the runtime form lacks native segment handles (its
    worker says so); the native form cannot be upstream (refused before any worker starts)."""
    with pytest.raises(_cli.UsageError) as refused:
        with cross_process.Pair.started(sys.executable):
            pytest.fail("started a comparison that measures no native form")
    message = str(refused.value)
    if NATIVE:
        assert "run the bench from a pristine venv (.venv/bin/python)" in message
    else:
        assert f"{sys.executable}: its livekit-agents" in message
        assert "lacks native segment handles" in message
        assert "e.g. .venv-native/bin/python" in message
    assert "\n" not in message


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (["--only", "B1n"], "B1n run the native form in its own python: add --native-python"),
        (["--only", "B1", "--native-python", "python3"], "which --only leaves out"),
        (["--native-python", "no/such/python"], "no/such/python: no such executable"),
    ],
)
def test_cli_refuses_in_one_line_before_measuring(
    argv: list[str], says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, err = run_cli(["--tiny", *argv], capsys)
    assert code == 2
    assert says in err and len(err.strip().splitlines()) == 1
    assert "running" not in err  # nothing was measured


def test_cli_names_the_cross_process_benchmarks_in_any_case() -> None:
    assert parse(["--only", "b2N,b1"]).only == ["B2n", "B1"]
    with pytest.raises(SystemExit):
        parse(["--only", "B3n"])


@pytest.mark.parametrize(
    ("script", "says"),
    [
        ("#!/bin/sh\necho 'no bench here' >&2\nexit 3\n", "exited with 3: no bench here"),
        ("not a program\n", "did not start: [Errno 8] Exec format error"),
    ],
    ids=["exits", "cannot-exec"],
)
def test_a_worker_that_cannot_start_is_one_line(tmp_path: Path, script: str, says: str) -> None:
    fake = tmp_path / "python"
    fake.write_text(script)
    fake.chmod(0o755)
    with pytest.raises(_cli.UsageError) as refused:
        with cross_process.Pair.started(str(fake), check=False):
            pytest.fail("started without a worker")
    message = str(refused.value)
    assert f"{fake} cannot run the bench worker" in message and "\n" not in message
    assert says in message


def test_the_record_names_the_native_python(tmp_path: Path) -> None:
    hello: dict[str, Any] = {"python": "/venvs/native/bin/python", "livekit_agents": "1.8.9"}
    report = BenchReport(meta={"mode_description": "runtime: a test"}, results=[])
    report.meta["native_workers"] = {"upstream": {}, "native": hello}
    prov = bench_record.Provenance(commit="a" * 40, subject="s", date="d", facts={})
    command = f"{bench_record.COMMAND} --native-python .venv-native/bin/python"
    text = bench_record.render(report, prov, command=command)
    row = "| native form (B1n, B2n, B7n) | `/venvs/native/bin/python`, livekit-agents 1.8.9"
    assert row in text
    assert f".venv/bin/{command}" in text
    assert "bash scripts/setup\n" in text  # the native venv is needed: not --runtime-only


def test_b7n_starts_each_worker_under_callgrind_with_a_dump_of_its_own(tmp_path: Path) -> None:
    callgrind = cross_process.Callgrind(tmp_path / "lib.so", tmp_path)
    commands = [callgrind.command(form) for form in (Form.UPSTREAM, Form.NATIVE, Form.UPSTREAM)]
    outs = [after[-1] for _, after in commands]
    assert len(set(outs)) == 3 and all(o.startswith(str(tmp_path / "cg-")) for o in outs)
    for before, after in commands:
        assert before[:3] == ["valgrind", "--tool=callgrind", "--separate-threads=yes"]
        # callgrind writes where the worker's counter reads
        assert f"--callgrind-out-file={after[-1]}" in before
        assert after == [cross_process.COUNT_OPTION, str(tmp_path / "lib.so"), after[-1]]


def test_a_counting_worker_outside_valgrind_says_so(tmp_path: Path) -> None:
    """A worker told to count instructions refuses to run without callgrind around it."""
    library = instructions.build_client(tmp_path)

    class Bare(cross_process.Callgrind):
        def command(self, form: Form) -> tuple[list[str], list[str]]:
            return [], super().command(form)[1]  # the counting options, no valgrind

    worker = cross_process.Worker(Form.UPSTREAM, sys.executable, callgrind=Bare(library, tmp_path))
    try:
        with pytest.raises(cross_process.WorkerError, match="not running under valgrind"):
            worker.greet()
    finally:
        worker.close()


async def test_b7n_without_valgrind_is_not_judged(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(directory: Path) -> Path:
        raise instructions.Unavailable(f"valgrind is not on PATH: {instructions.FIX}")

    monkeypatch.setattr(instructions, "build_client", missing)
    config = dataclasses.replace(BenchConfig.tiny(), instructions=BenchConfig.quick().instructions)
    with cross_process.Pair.started(sys.executable, check=False) as pair:
        (b7n,) = await cross_process.run(config, pair, only=["B7n"])
    assert b7n.id == "B7n" and b7n.status == "n/a" and not b7n.judged
    assert "apt-get install valgrind" in b7n.data["reason"]


def test_b7n_judges_the_native_form_against_upstream_in_instructions() -> None:
    """B7's summary of what B1n's and B2n's counting workers measured: the upstream and
    native columns, in instructions, with B7's targets."""
    cfg = BenchConfig.default().instructions
    assert cfg is not None
    estimate = {"point": 1.0, "low": 0.99, "high": 1.01, "n": 6, "statistic": "median"}
    judged = {"verdict": "met", "estimate": {**estimate, "min_n": 6}}
    doc = {
        "B1": {
            "judged": {"CPU per reply ratio": judged},
            "data": {
                "cpu_per_reply_ms": {"upstream": 8.3e9, "native": 8.35e9},
                "pair_ratios": [1.006] * 12,
            },
        },
        "B2": {
            "judged": {
                "CPU per segment ratio (slope)": judged,
                "patch cost per segment / handle floor": judged,
            },
            "data": {
                "cpu_per_segment_us": {"upstream": 1.9e12, "native": 1.98e12},
                "handle_floor_us": [7.7e10] * 6,
                "overhead_per_segment_us": 8.4e10,
                "repetition_overheads_us": [8.4e10] * 6,
                "repetition_slope_ratios": [1.04] * 6,
            },
        },
    }
    result = instructions.summarize(cfg, cross_process.CrossProcessForms(), doc)
    assert result.data["instructions_per_reply"] == {"upstream": 8.3e6, "native": 8.35e6}
    assert result.rows[0].upstream == "8,300,000" and result.rows[0].patch == "8,350,000"
    assert result.rows[3].patch == "84,000"
    assert [j.verdict for j in result.judged] == ["met"] * 3


def test_workers_import_this_clone_from_any_folder(tmp_path: Path) -> None:
    """A worker (B7's, or B1n's pair) runs ``python -c``: whatever its working directory, it
    imports the benchmarks and livekit_segments of the clone the parent runs from."""
    from benchmarks import process_setup

    env = process_setup.worker_env(PYTHONHASHSEED="0")
    assert env["PYTHONHASHSEED"] == "0"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(process_setup.REPO_ROOT)
    code = (
        "import benchmarks, livekit_segments; print(benchmarks.__file__, livekit_segments.__file__)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    root = process_setup.REPO_ROOT
    assert done.stdout.split() == [
        str(root / "benchmarks" / "__init__.py"),
        str(root / "livekit_segments" / "__init__.py"),
    ]
