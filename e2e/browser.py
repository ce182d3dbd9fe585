"""Runs the page in headless Chromium through `driver.mjs` (playwright-core)."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

from .recorder import die_with_parent

__all__ = ["Browser", "cpu_by_thread_name", "thread_cpu"]

HERE = Path(__file__).parent


class Browser:
    """A Node process driving Chromium; its console goes to ``log_path``."""

    def __init__(self, url: str, env: dict[str, str], log_path: Path) -> None:
        self.url = url
        self.env = env
        self.log_path = log_path
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        """Start the driver; it opens the page and keeps it open."""
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node is not installed: run scripts/setup")
        if not (HERE / "node_modules" / "playwright-core").is_dir():
            raise RuntimeError("playwright-core is missing: run scripts/setup (npm ci in e2e/)")
        log = self.log_path.open("wb")
        self._proc = await asyncio.create_subprocess_exec(
            node,
            str(HERE / "driver.mjs"),
            self.url,
            env=self.env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
            preexec_fn=die_with_parent,
        )
        log.close()

    @property
    def pid(self) -> int | None:
        """The driver's process id (Chromium runs below it)."""
        return None if self._proc is None else self._proc.pid

    def boost(self, niceness: int) -> int:
        """Give every thread of the browser at least ``niceness`` (where allowed): Chromium
        puts its renderer's threads back at 0 (and some at 5), below everything else on a
        loaded machine, and the WebRTC send and receive threads live there. Its realtime
        audio threads (SCHED_RR) are left alone. Returns how many threads were raised."""
        if self._proc is None:
            return 0
        raised = 0
        for _pid, tid in thread_cpu(self._proc.pid):
            try:
                if os.sched_getscheduler(tid) != os.SCHED_OTHER:
                    continue
                if os.getpriority(os.PRIO_PROCESS, tid) > niceness:
                    os.setpriority(os.PRIO_PROCESS, tid, niceness)
                    raised += 1
            except (PermissionError, ProcessLookupError):
                continue
        return raised

    @property
    def exited(self) -> int | None:
        """The driver's exit code, or None while it runs."""
        return None if self._proc is None else self._proc.returncode

    async def stop(self) -> None:
        """Close the page and the browser (the driver cleans its profile directory)."""
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            await asyncio.wait_for(proc.wait(), 15)
        except asyncio.TimeoutError:
            proc.kill()
            await proc.wait()


def _children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            continue
    return out


def thread_cpu(root: int) -> dict[tuple[int, int], tuple[str, float]]:
    """CPU seconds so far of every thread of ``root`` and its descendants, by (pid, tid),
    with the thread's name (Chromium names its threads: ``AudioWorklet``, ``AudioOutputDevice``,
    ``CrRendererMain``...)."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[int, int], tuple[str, float]] = {}
    todo = [root]
    while todo:
        pid = todo.pop()
        todo += _children(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                stat = (task / "stat").read_text()
            except OSError:
                continue
            name = stat[stat.index("(") + 1 : stat.rindex(")")]
            fields = stat[stat.rindex(")") + 2 :].split()
            out[(pid, int(task.name))] = (name, (int(fields[11]) + int(fields[12])) / tick)
    return out


def cpu_by_thread_name(
    before: dict[tuple[int, int], tuple[str, float]],
    after: dict[tuple[int, int], tuple[str, float]],
    seconds: float,
) -> dict[str, float]:
    """Percent of one core per thread name between two `thread_cpu` snapshots; threads
    that share a name are summed, the name then carries their count (``name x2``)."""
    used: dict[str, float] = {}
    count: dict[str, int] = {}
    for key, (name, cpu) in after.items():
        used[name] = used.get(name, 0.0) + cpu - before.get(key, (name, 0.0))[1]
        count[name] = count.get(name, 0) + 1
    return {
        (name if count[name] == 1 else f"{name} x{count[name]}"): round(100 * u / seconds, 2)
        for name, u in sorted(used.items(), key=lambda kv: -kv[1])
        if u > 0
    }
