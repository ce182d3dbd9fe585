"""Runs one job through livekit-agents' own process machinery, without a LiveKit server.

The user-style apps in this folder call `run_app(server)` where a real app calls
``cli.run_app(server)``. It starts ``AgentServer.run(devmode=True, unregistered=True)`` and
``simulate_job(fake_job=True)``: the same process pool and executor `cli.run_app` uses. The
job entrypoint runs a real AgentSession whose llm_node yields a SegmentBreak, and reports
what it saw through livekit's job-process log forwarding. Prints one ``JOBPROC_RESULT`` JSON
line. Every wait is a future or queue with a timeout.

Environment: JOBPROC_START_METHOD (forkserver|spawn), JOBPROC_TIMEOUT (seconds).
"""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing as mp
import os
from collections.abc import AsyncIterator
from typing import Any

START_METHOD = os.environ.get("JOBPROC_START_METHOD", "forkserver")
TIMEOUT = float(os.environ.get("JOBPROC_TIMEOUT", "60"))
REPORT_LOGGER = "jobproc.report"
WATCHED_LOGGERS = (REPORT_LOGGER, "livekit.segments")


def server_kwargs() -> dict[str, Any]:
    from livekit.agents import JobExecutorType

    return {
        "job_executor_type": JobExecutorType.PROCESS,
        "multiprocessing_context": START_METHOD,
        "num_idle_processes": 0,
        "initialize_process_timeout": TIMEOUT,
        "port": 0,
    }


# ---------------------------------------------------------------- in the job process


async def report_job(ctx: Any) -> None:
    """The entrypoint's body: one reply with a break, text-only output."""
    import livekit_segments
    from livekit.agents import Agent, AgentSession, llm
    from livekit.agents.llm import ChatContext
    from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS
    from livekit_segments import SegmentBreak

    class NoopLLM(llm.LLM):
        def chat(self, *, chat_ctx: ChatContext, **kwargs: Any) -> llm.LLMStream:
            raise AssertionError(DEFAULT_API_CONNECT_OPTIONS)

    class TwoAnswers(Agent):
        async def llm_node(self, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
            yield "One moment."
            yield SegmentBreak(id="answer")
            yield "The answer."

    session: AgentSession = AgentSession(llm=NoopLLM())
    handles: list[Any] = []
    session.on("speech_created", lambda ev: handles.append(ev.speech_handle))
    await session.start(TwoAnswers(instructions="probe"))
    await session.generate_reply()
    for h in handles:
        await h
    data = {
        "pid": os.getpid(),
        "process_name": mp.current_process().name,
        "start_method": mp.get_start_method(allow_none=True),
        "active": livekit_segments.is_installed() or livekit_segments.has_native_support(),
        "segment_indexes": [getattr(h, "segment_index", None) for h in handles],
        "started": [
            bool(getattr(h, "playout_started", None) and h.playout_started.done()) for h in handles
        ],
    }
    await session.aclose()
    logging.getLogger(REPORT_LOGGER).info("report %s", json.dumps(data))
    ctx.shutdown("reported")


# ---------------------------------------------------------------- in the server process


class _Collector(logging.Handler):
    """Thread-safe: livekit re-emits job-process records from its log listener thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(logging.INFO)
        self._loop = loop
        self.reports: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.records: list[dict[str, Any]] = []

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage()
        if record.name == REPORT_LOGGER:
            data = json.loads(msg.split(" ", 1)[1])
            self._loop.call_soon_threadsafe(self.reports.put_nowait, data)
        else:
            self.records.append({"level": record.levelname, "pid": record.process, "msg": msg})


async def _run_server(server: Any) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    col = _Collector(loop)
    for name in WATCHED_LOGGERS:
        lg = logging.getLogger(name)
        lg.setLevel(logging.INFO)  # job processes copy these levels at start
        lg.addHandler(col)
    started = loop.create_future()
    server.on("worker_started", lambda: started.done() or started.set_result(None))
    run_task = asyncio.create_task(server.run(devmode=True, unregistered=True))
    await asyncio.wait({started, run_task}, timeout=TIMEOUT, return_when=asyncio.FIRST_COMPLETED)
    if not started.done():
        if run_task.done():
            run_task.result()
        raise TimeoutError("worker did not start")
    try:
        await asyncio.wait_for(server.simulate_job("room-0", fake_job=True), TIMEOUT)
        report = await asyncio.wait_for(col.reports.get(), TIMEOUT)
    finally:
        await asyncio.wait_for(server.aclose(), TIMEOUT)
        await asyncio.wait_for(run_task, TIMEOUT)
    return {"job": report, "records": col.records}


def run_app(server: Any) -> None:
    """Stand-in for ``cli.run_app(server)``."""
    import livekit_segments

    result = asyncio.run(_run_server(server))
    result.update(
        parent_pid=os.getpid(),
        parent_active=livekit_segments.is_installed() or livekit_segments.has_native_support(),
    )
    print("JOBPROC_RESULT " + json.dumps(result), flush=True)
