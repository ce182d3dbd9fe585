"""B1n and B2n: the native form against pristine upstream, each form in its own process.

A livekit-agents with the series implements segment handles itself, so upstream cannot run in
the same process (`forms`: native mode measures the native form alone). ``python -m benchmarks
--native-python PYTHON``, run from a pristine venv, starts two workers instead: this python
running upstream (plain `FlushSentinel`) and PYTHON running the native form (`SegmentBreak`).
Each lives for the whole run (B1: one long-lived session each) and is driven over a pipe, one
JSON line per request and per answer. The parent alternates which worker goes first round by
round, as B1 and B2 pair the forms in one process, so each round gives one ratio; the
measuring code (`install_cost`, `segment_cost`) and the verdicts are B1's and B2's own.

B7n is B7 for the native form: B1n and B2n once more, on a pair of workers that each run under
valgrind's callgrind and read instructions where the others read CPU time (`cpu_meter`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import platform
import select
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from pathlib import Path
from typing import IO, Any

import livekit_segments
from livekit_segments import installer
from livekit_segments._cli import UsageError, plural

from . import cpu_meter, install_cost, instructions, segment_cost, stats
from .fakes import close_session, reply, trim_history
from .forms import Form, Forms, activate, native_support
from .process_setup import quiet_livekit_logs, worker_env
from .report import BenchReport, BenchResult
from .runner import BenchConfig

__all__ = [
    "BENCHMARKS",
    "OPTION",
    "Callgrind",
    "CrossProcessForms",
    "Pair",
    "Worker",
    "WorkerError",
    "description",
    "extend",
    "run",
    "serve",
]

BENCHMARKS = ("B1n", "B2n", "B7n")
"""What the cross-process comparison measures: B1 and B2 of the native form, and both again
in instructions."""
OPTION = "--native-python"
FIX = "e.g. .venv-native/bin/python, which 'bash scripts/setup' builds"
PRISTINE = (
    f"{OPTION} compares with upstream, and this python's livekit-agents has segment handles "
    f"itself: run the bench from a pristine venv (.venv/bin/python)"
)
# one hash seed for both workers: with a random one per process, each process has its own
# dict layouts and a cost offset of a percent or two that no pairing of rounds cancels (an
# upstream-against-upstream run of B1n measured 0.972 and 0.987 with random seeds)
HASH_SEED = "0"
HELLO_TIMEOUT_S = 120.0  # importing livekit-agents on a loaded 2-core machine
CALLGRIND_SLOWDOWN = 10  # the same import under callgrind took about a minute
COUNT_OPTION = "--count-instructions"  # the worker's: LIBRARY OUT, as B7's worker gets them
# B1n splits its rounds over this many pairs of worker processes, one after another: even
# with one hash seed, each pair of processes keeps a cost offset of its own of about half a
# percent (two runs of 400 rounds: 1.011 [1.005, 1.016] and 1.002 [0.999, 1.005]), as large as
# what B1n measures, and pooling pairs averages it out
PROCESS_PAIRS = 4
# the worker's entry point (`-m` would import this module twice, as __main__ and by name):
# its answers go to a copy of stdout taken first, and stdout itself becomes stderr, so that
# nothing printed while importing or measuring can get into the answers
_ENTRY = (
    "import os, sys; answers = os.dup(1); os.dup2(2, 1); "
    "from benchmarks.cross_process import serve; "
    "sys.exit(serve(answers, sys.argv[1:]))"
)


def description(native_python: str) -> str:
    """The mode line of the cross-process figures."""
    return (
        f"B1n, B2n, B7n: the native form ({native_python}, livekit-agents with the series, "
        f"SegmentBreak) versus upstream (this python, plain FlushSentinel), each in its own "
        f"worker process, alternating round by round as B1 and B2 do in one process"
    )


class CrossProcessForms(Forms):
    """Native against upstream: both measured, each by its own worker."""

    def __init__(self) -> None:
        super().__init__(native=True, was_installed=False)

    @property
    def baseline(self) -> Form | None:
        return Form.UPSTREAM


class WorkerError(RuntimeError):
    """A worker failed a request, or exited."""


class Callgrind:
    """Workers started under valgrind's callgrind, each counting its main thread's
    instructions (B7n); their dumps go to ``directory``, one file name per worker."""

    def __init__(self, library: Path, directory: Path) -> None:
        self.library = library
        self.directory = directory
        self._started = 0

    def command(self, form: Form) -> tuple[list[str], list[str]]:
        """(what goes before the python, what goes after the worker's form) for one more
        worker of ``form``."""
        self._started += 1
        name = self.directory / f"cg-{form.value}-{self._started}"
        valgrind = instructions.callgrind_prefix(name, Path(f"{name}.log"))
        return valgrind, [COUNT_OPTION, str(self.library), str(name)]


class Worker:
    """One worker process running ``form`` in ``python``, and its pipe."""

    def __init__(
        self,
        form: Form,
        python: str,
        *,
        verbose: bool = False,
        callgrind: Callgrind | None = None,
    ) -> None:
        self.form = form
        self.python = python
        self.hello: dict[str, Any] = {}
        self.hello_timeout_s = HELLO_TIMEOUT_S
        # its stderr goes to a file: a pipe nobody reads could fill up and block it
        self._log: IO[bytes] | None = None if verbose else tempfile.TemporaryFile()
        before: list[str] = []
        after = ["--verbose"] if verbose else []
        env = worker_env(PYTHONHASHSEED=HASH_SEED)
        if callgrind is not None:
            before, counting = callgrind.command(form)
            after += counting
            env.update(instructions.callgrind_env())
            self.hello_timeout_s *= CALLGRIND_SLOWDOWN
        args = [*before, python, "-c", _ENTRY, form.value, *after]
        try:
            self._proc = subprocess.Popen(
                args,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=self._log,
                text=True,
                encoding="utf-8",
                env=env,
            )
        except OSError as e:
            if self._log is not None:
                self._log.close()
            raise WorkerError(f"{form.value} worker ({python}) did not start: {e}") from None

    def _last_words(self) -> str:
        """The last line the worker wrote to stderr (its exception, when it failed)."""
        if self._log is None:
            return "see its output above"
        self._log.seek(0)
        lines = [x.strip() for x in self._log.read().decode(errors="replace").splitlines()]
        return next((x for x in reversed(lines) if x), "no output")

    def _read(self, timeout: float | None = None) -> dict[str, Any]:
        out = self._proc.stdout
        assert out is not None
        if timeout is not None and not select.select([out], [], [], timeout)[0]:
            raise WorkerError(f"{self.form.value} worker ({self.python}) did not answer")
        line = out.readline()
        if not line:
            self._proc.wait()
            raise WorkerError(
                f"{self.form.value} worker ({self.python}) exited with "
                f"{self._proc.returncode}: {self._last_words()}"
            )
        doc: dict[str, Any] = json.loads(line)
        return doc

    def greet(self) -> dict[str, Any]:
        """Wait for the worker's first line: what it runs."""
        self.hello = self._read(self.hello_timeout_s)["hello"]
        return self.hello

    def call(self, op: str, **args: Any) -> Any:
        """Send one request and wait for its answer."""
        stdin = self._proc.stdin
        assert stdin is not None
        try:
            stdin.write(json.dumps({"op": op, **args}) + "\n")
            stdin.flush()
        except BrokenPipeError:
            pass  # it exited: the read below says why
        doc = self._read()
        if "error" in doc:
            raise WorkerError(f"{self.form.value} worker, {op}: {doc['error']}")
        return doc["ok"]

    def close(self) -> None:
        """Ask the worker to exit (closing its session), killing it if it does not."""
        if self._proc.stdin is not None:
            with contextlib.suppress(OSError):
                self._proc.stdin.close()  # end of input: the worker closes up and exits
        try:
            self._proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        if self._proc.stdout is not None:
            self._proc.stdout.close()
        if self._log is not None:
            self._log.close()


class Pair:
    """The upstream worker and the native worker."""

    def __init__(self, upstream: Worker, native: Worker, *, verbose: bool, check: bool) -> None:
        self.workers = {Form.UPSTREAM: upstream, Form.NATIVE: native}
        self._verbose = verbose
        self._check = check

    def fresh(
        self, *, callgrind: Callgrind | None = None
    ) -> contextlib.AbstractContextManager[Pair]:
        """Another pair of workers running the same two pythons (closed on exit); with
        ``callgrind``, both count instructions."""
        return Pair.started(
            self[Form.NATIVE].python,
            upstream_python=self[Form.UPSTREAM].python,
            verbose=self._verbose,
            check=self._check,
            callgrind=callgrind,
        )

    def __getitem__(self, form: Form) -> Worker:
        return self.workers[form]

    def call_each(self, op: str) -> None:
        for worker in self.workers.values():
            worker.call(op)

    def describe(self) -> dict[str, dict[str, Any]]:
        return {form.value: w.hello for form, w in self.workers.items()}

    @classmethod
    @contextlib.contextmanager
    def started(
        cls,
        native_python: str,
        *,
        upstream_python: str = sys.executable,
        verbose: bool = False,
        check: bool = True,
        callgrind: Callgrind | None = None,
    ) -> Iterator[Pair]:
        """Start both workers and check what they run; closed on exit.

        Raises `UsageError` (one line) when ``native_python`` cannot be run or has no native
        segment handles, when this python has them (it must be upstream), or when the two
        differ in anything but the form: Python, livekit-agents release or this package's
        code. ``check=False`` skips the checks on what they run (the tests drive the
        protocol with one python on both sides).
        """
        found = shutil.which(native_python)
        if found is None:
            raise UsageError(
                f"{OPTION} {native_python}: no such executable; give the python of a venv "
                f"with the series installed, {FIX}"
            )
        if check and upstream_python == sys.executable and native_support():
            raise UsageError(PRISTINE)  # known before any worker starts
        workers: list[Worker] = []
        try:
            for form, python in ((Form.UPSTREAM, upstream_python), (Form.NATIVE, native_python)):
                try:
                    workers.append(Worker(form, python, verbose=verbose, callgrind=callgrind))
                except WorkerError as e:
                    raise UsageError(_cannot_run(python, e)) from None
            for worker in workers:  # both start at once; then wait for each
                try:
                    worker.greet()
                except WorkerError as e:
                    raise UsageError(_cannot_run(worker.python, e)) from None
            upstream, native = workers
            if check:
                _check(upstream.hello, native.hello, native_python)
            yield cls(upstream, native, verbose=verbose, check=check)
        finally:
            for worker in workers:
                worker.close()


def _cannot_run(python: str, error: WorkerError) -> str:
    return (
        f"{OPTION} {python} cannot run the bench worker ({error}); give a python with "
        f"livekit-agents installed (the workers import this clone's code), {FIX}"
    )


def _check(upstream: dict[str, Any], native: dict[str, Any], native_python: str) -> None:
    where = f"{OPTION} {native_python}"
    if upstream["native"] or upstream["installed"]:
        raise UsageError(PRISTINE)
    if not native["native"]:
        raise UsageError(
            f"{where}: its livekit-agents {native['livekit_agents']} lacks native segment "
            f"handles; give a python with the series installed, {FIX}"
        )
    for key, what in [
        ("python_version", "Python"),
        ("livekit_agents", "livekit-agents"),
        ("livekit_segments", "livekit_segments from"),
    ]:
        if native[key] != upstream[key]:
            raise UsageError(
                f"{where} has {what} {native[key]}, this python {upstream[key]}: the two "
                f"forms must differ in nothing else (install the same releases in both venvs)"
            )


# -- the parent: B1n and B2n ------------------------------------------------------------------


def _split_rounds(batches: int, parts: int) -> list[int]:
    """``batches`` rounds over at most ``parts`` pairs of processes, an even number each (two
    rounds in opposite orders make one value), the odd one out with the last."""
    parts = max(1, min(parts, batches // 2))
    sizes = [batches // parts // 2 * 2] * parts
    sizes[-1] += batches - sum(sizes)
    return sizes


def _b1n_rounds(
    cfg: install_cost.InstallCostConfig,
    pair: Pair,
    rounds: int,
    per_reply: dict[Form, list[float]],
    pairs: list[float],
) -> None:
    """``rounds`` rounds on one pair of workers, each with a session opened for them."""
    forms = CrossProcessForms()
    opened: list[Form] = []
    try:
        for form in forms.all:
            pair[form].call("b1_open", cfg=dataclasses.asdict(cfg))
            opened.append(form)
        for i in range(rounds):
            for form in forms.all:
                pair[form].call("b1_trim")
            batch: dict[Form, float] = {}
            for form in forms.order(i):
                batch[form] = float(pair[form].call("b1_batch"))
                per_reply[form].append(batch[form])
            pairs.append(batch[Form.NATIVE] / batch[Form.UPSTREAM])
    finally:
        for form in opened:
            with contextlib.suppress(WorkerError):  # a failure above is the one to report
                pair[form].call("b1_close")


async def _b1n(
    cfg: install_cost.InstallCostConfig, pair: Pair, *, process_pairs: int = PROCESS_PAIRS
) -> BenchResult:
    forms = CrossProcessForms()
    per_reply: dict[Form, list[float]] = {f: [] for f in forms.all}
    pairs: list[float] = []
    sizes = _split_rounds(cfg.batches, process_pairs)
    by_process: list[dict[str, Any]] = []
    for k, rounds in enumerate(sizes):
        start = len(pairs)
        if k == 0:
            _b1n_rounds(cfg, pair, rounds, per_reply, pairs)
        else:
            with pair.fresh() as other:
                other.call_each("begin")  # as `run` does for the first pair
                try:
                    _b1n_rounds(cfg, other, rounds, per_reply, pairs)
                finally:
                    other.call_each("end")
        balanced = stats.counterbalanced_ratios(pairs[start:])
        by_process.append(
            {"rounds": rounds, "median": stats.median(balanced) if balanced else None}
        )
    result = install_cost.summarize(cfg, forms, per_reply, pairs)
    result.data["process_pairs"] = by_process
    medians = ", ".join("-" if p["median"] is None else f"{p['median']:.3f}" for p in by_process)
    result.notes = [
        f"replies without breaks, {cfg.batches * cfg.replies_per_batch} per form; thread CPU "
        f"time (time.thread_time) in each worker; one long-lived session per form, each in "
        f"its own worker process, driven batch by batch in alternating order, history "
        f"trimmed to {cfg.history_items} items between rounds; CPU columns are means over all "
        f"batches, the ratio is the median over pairs of rounds in opposite orders of the "
        f"geometric mean of their two ratios (native batch / upstream batch of the same round)",
        f"the rounds ran on {plural(len(sizes), 'pair')} of worker processes one after "
        f"another ({'/'.join(map(str, sizes))} rounds), pooled: each pair of processes has a "
        f"cost offset of its own; median per pair: {medians}",
    ]
    return result


async def _b2n(cfg: segment_cost.SegmentCostConfig, pair: Pair) -> BenchResult:
    async def measure(
        n: int, form: Form, *, memory: bool, handles: bool = False
    ) -> tuple[float, float]:
        wall, cpu = pair[form].call("b2_measure", n=n, memory=memory, handles=handles)
        return float(wall), float(cpu)

    result = await segment_cost.run(cfg, CrossProcessForms(), measure)
    result.notes.append(
        "each form in its own worker process, B2's measuring code and pairing (native "
        "reply / upstream reply of the same repetition)"
    )
    return result


# B7's summary says how B7n's workers counted
_B7N_NOTES = (
    "B1n's and B2n's measuring code and pairing, run again on one more pair of worker "
    "processes, each under valgrind's callgrind and reading the instructions its main "
    "thread executed where B1n and B2n read its CPU time (cpu_meter); same statistics, "
    "intervals and targets; hash seed 0 in both; B2 without memory points",
    "the two forms come from two venvs: a count also holds what differs between the "
    "venvs (their paths), not only the form",
)


async def _b7n(cfg: instructions.InstructionsConfig | None, pair: Pair) -> BenchResult:
    """B1n and B2n with B7's sizes, on a pair of workers of ``pair``'s pythons that count
    instructions, judged as B7 judges B1 and B2."""
    if cfg is None:
        return instructions.unavailable("not run in this preset (callgrind needs minutes)")
    runs: dict[str, Callable[[Pair], Awaitable[BenchResult]]] = {
        # one pair of processes, as B7 is one process: each pair more would cost another
        # start under callgrind (about a minute)
        "B1": lambda counted: _b1n(cfg.install_cost, counted, process_pairs=1),
        "B2": lambda counted: _b2n(cfg.segment_cost, counted),
    }

    async def measure(workdir: Path, library: Path) -> BenchResult:
        doc: dict[str, Any] = {}
        with pair.fresh(callgrind=Callgrind(library, workdir)) as counted:
            for name, bench in runs.items():
                counted.call_each("begin")
                try:
                    doc[name] = instructions.result_json(await bench(counted))
                finally:
                    counted.call_each("end")
        return instructions.summarize(cfg, CrossProcessForms(), doc, notes=_B7N_NOTES)

    return await instructions.with_client("lkseg-b7n-", measure)


async def run(
    config: BenchConfig,
    pair: Pair,
    *,
    only: Collection[str] | None = None,
    progress: Callable[[str], None] | None = None,
) -> list[BenchResult]:
    """B1n, B2n and B7n (or those in ``only``) with ``config``'s B1, B2 and B7 sizes."""
    runners: dict[str, Callable[[], Awaitable[BenchResult]]] = {
        "B1n": lambda: _b1n(config.install_cost, pair),
        "B2n": lambda: _b2n(config.segment_cost, pair),
        "B7n": lambda: _b7n(config.instructions, pair),
    }
    results: list[BenchResult] = []
    for bench_id in BENCHMARKS:
        if only is not None and bench_id not in only:
            continue
        if progress is not None:
            progress(f"{bench_id} running")
        t = time.perf_counter()
        pair.call_each("begin")  # what `run_bench` does before each benchmark, in each worker
        try:
            result = await runners[bench_id]()
        finally:
            pair.call_each("end")
        result.id = bench_id
        result.title = f"native form, {result.title}"
        result.data["workers"] = pair.describe()
        result.wall_s = time.perf_counter() - t
        results.append(result)
        if progress is not None:
            progress(f"{bench_id} {result.status} in {result.wall_s:.1f} s")
    return results


def extend(report: BenchReport, results: list[BenchResult], pair: Pair, wall_s: float) -> None:
    """Add B1n and B2n to ``report``: their rows, the workers, and a mode line saying so."""
    native = pair[Form.NATIVE]
    mode = description(native.python)
    report.meta["native_workers"] = pair.describe()
    subject = str(report.meta.get("subject", Form.PATCHED.value))
    if report.results:
        report.meta["mode_description"] = f"{report.meta.get('mode_description', '')}; {mode}"
        if subject != Form.NATIVE.value:
            report.meta["subject_column"] = f"{subject} / {Form.NATIVE.value}"
    else:
        report.meta["mode_description"] = mode
        report.meta["subject_column"] = Form.NATIVE.value
    report.results.extend(results)
    report.wall_s += wall_s


# -- the worker -------------------------------------------------------------------------------


class _Worker:
    """A worker's state between requests: its form and B1's session."""

    def __init__(self, form: Form) -> None:
        self.form = form
        self.b1: tuple[Any, Any, Any] | None = None
        self.b1_cfg: install_cost.InstallCostConfig | None = None

    async def handle(self, op: str, args: dict[str, Any]) -> Any:
        if op == "begin":
            gc.collect()
            gc.freeze()
        elif op == "end":
            gc.unfreeze()
        elif op == "b1_open":
            self.b1_cfg = install_cost.InstallCostConfig(**args["cfg"])
            self.b1 = await install_cost.start()
            activate(self.form)
            for _ in range(self.b1_cfg.warmup_replies):
                await reply(self.b1[0])
        elif op in ("b1_trim", "b1_batch"):
            if self.b1 is None or self.b1_cfg is None:
                raise RuntimeError(f"{op} before b1_open")
            session, agent, _ = self.b1
            if op == "b1_trim":
                await trim_history(session, agent, self.b1_cfg.history_items)
            else:
                return await install_cost._batch(session, self.form, self.b1_cfg)
        elif op == "b1_close":
            await self.close()
        elif op == "b2_measure":
            return list(
                await segment_cost._measure(
                    args["n"], self.form, memory=args["memory"], handles=args["handles"]
                )
            )
        else:
            raise ValueError(f"unknown request {op!r}")
        return None

    async def close(self) -> None:
        if self.b1 is not None:
            session, _, sink = self.b1
            self.b1 = None
            await close_session(session, sink)


def _hello(form: Form) -> dict[str, Any]:
    return {
        "form": form.value,
        "pid": os.getpid(),
        "hash_seed": os.environ.get("PYTHONHASHSEED"),
        "python": sys.executable,
        "python_version": platform.python_version(),
        "livekit_agents": installer.installed_agents_version(),
        "livekit_segments": str(Path(livekit_segments.__file__).resolve().parent),
        "native": installer.has_native_support(),
        "installed": installer.is_installed(),
    }


async def _serve(form: Form, out: IO[str], verbose: bool) -> int:
    if not verbose:
        quiet_livekit_logs()

    def send(doc: dict[str, Any]) -> None:
        out.write(json.dumps(doc) + "\n")
        out.flush()

    send({"hello": _hello(form)})
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    # read without blocking the loop: between requests the session's own tasks keep running,
    # as they do in one process while the other form is measured
    transport, _ = await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), sys.stdin
    )
    state = _Worker(form)
    try:
        while line := await reader.readline():
            request = json.loads(line)
            try:
                result = await state.handle(request.pop("op"), request)
            except Exception as e:
                send({"error": f"{type(e).__name__}: {e}"})
            else:
                send({"ok": result})
    finally:
        await state.close()
        transport.close()
    return 0


def serve(answers: int, argv: list[str]) -> int:
    """A worker's main: ``FORM [--verbose] [--count-instructions LIBRARY OUT]``; requests on
    stdin, answers on the file descriptor ``answers`` (the original stdout), one JSON line
    each. Counting, it runs under callgrind and its CPU readings are instructions (B7n)."""
    form, options = Form(argv[0]), argv[1:]
    if COUNT_OPTION in options:
        i = options.index(COUNT_OPTION)
        library, out_file = options[i + 1 : i + 3]
        cpu_meter.count_instructions(cpu_meter.CallgrindCounter(Path(library), out_file))
    with os.fdopen(answers, "w", encoding="utf-8") as out:
        return asyncio.run(_serve(form, out, "--verbose" in options))
