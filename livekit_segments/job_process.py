"""Carry `install()` into the job processes that `AgentServer` starts.

livekit-agents pickles the server's process-setup function (``initialize_process_fnc``, the
user's prewarm) into every job process, with ``forkserver`` and with ``spawn``, and calls it
once when the process warms up, before any job. `install()` wraps `ProcJobExecutor.__init__`
so that function travels inside `InstallingSetupFnc`, a picklable object of this package:
the job process imports livekit_segments and calls `install()` before the user's prewarm.
A thread executor runs jobs in the server process, which is already patched.

Without this, only an `install()` at module top level reaches the job process (the child
re-runs the user's main script as ``__mp_main__``, where an ``if __name__ == "__main__":``
block does not run).
"""

from __future__ import annotations

import functools
import logging
import multiprocessing
import os
from collections.abc import Callable
from typing import Any, TypeVar

logger = logging.getLogger("livekit.segments")

F = TypeVar("F", bound=Callable[..., Any])

_install_failed = False  # install() raised in this (job) process
_warned_inactive = False


def _ensure_installed() -> None:
    global _install_failed
    from . import installer

    if installer.is_installed() or installer.has_native_support() or _install_failed:
        return
    try:
        installer.install()
    except Exception:
        _install_failed = True
        logger.exception(
            "livekit_segments.install() failed in the job process; SegmentBreak will act as "
            "a plain FlushSentinel here",
            extra={"pid": os.getpid()},
        )


class InstallingSetupFnc:
    """The job process's setup (prewarm) function, with `install()` run before it."""

    __slots__ = ("fnc",)

    def __init__(self, fnc: Callable[[Any], Any]) -> None:
        self.fnc = fnc

    def __reduce__(self) -> tuple[Any, ...]:
        return (InstallingSetupFnc, (self.fnc,))

    def __call__(self, proc: Any) -> Any:
        _ensure_installed()
        return self.fnc(proc)


def wrap_proc_job_executor_init(original: F) -> F:
    """Wrap ``ProcJobExecutor.__init__`` so that its setup function installs first."""

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        setup = kwargs.get("initialize_process_fnc")
        if setup is not None and not isinstance(setup, InstallingSetupFnc):
            kwargs["initialize_process_fnc"] = InstallingSetupFnc(setup)
        original(self, *args, **kwargs)

    return __init__  # type: ignore[return-value]


def on_install() -> None:
    """Warn when job processes already run: they were started unpatched."""
    if multiprocessing.parent_process() is not None:
        return
    late = [p.pid for p in multiprocessing.active_children() if p.name == "job_proc"]
    if late:
        logger.warning(
            "livekit_segments.install() was called after %d job process(es) had started; "
            "sessions in those processes run unpatched. Call install() before "
            "cli.run_app() / AgentServer.run()",
            len(late),
            extra={"pids": late},
        )


def on_uninstall() -> None:
    """Nothing to undo here: the wrapped `__init__` is restored with the other patches."""


def warn_if_inactive() -> None:
    """Log once per process when a SegmentBreak is used in a session without the change."""
    global _warned_inactive
    if _warned_inactive:
        return
    from livekit.agents.voice import agent_activity

    from . import installer

    if agent_activity._AgentActivityContextVar.get(None) is None:
        return  # not inside a running agent: nothing can have been lost yet
    if installer.is_installed() or installer.has_native_support():
        return
    _warned_inactive = True
    proc = multiprocessing.current_process()
    cause = (
        "install() failed in this job process (see the error logged when it started)"
        if _install_failed
        else "install() was never called in this process. Call livekit_segments.install() at "
        'module top level: an `if __name__ == "__main__":` block does not run when the agent '
        "is started by `lk agent` or `python -m livekit.agents`"
    )
    logger.warning(
        "SegmentBreak used but livekit-segments is not active in this process (%s); it acts as "
        "a plain FlushSentinel: %s",
        proc.name,
        cause,
        extra={"pid": proc.pid},
    )
