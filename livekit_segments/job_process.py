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

from . import activation

logger = logging.getLogger("livekit.segments")

F = TypeVar("F", bound=Callable[..., Any])


def _ensure_installed(install: Callable[[], None]) -> None:
    if activation.install_failed:
        return
    try:
        install()  # does nothing when installed already, or with native support
    except Exception:
        activation.install_failed = True
        logger.exception(
            "livekit_segments.install() failed in the job process; SegmentBreak will act as "
            "a plain FlushSentinel here",
            extra={"pid": os.getpid()},
        )


class InstallingSetupFnc:
    """The job process's setup (prewarm) function, with ``install`` run before it.

    ``install`` is `livekit_segments.install`, handed over by the installer: pickled by
    reference, it brings the package into the job process without this module importing it.
    """

    __slots__ = ("fnc", "install")

    def __init__(self, fnc: Callable[[Any], Any], install: Callable[[], None]) -> None:
        self.fnc = fnc
        self.install = install

    def __reduce__(self) -> tuple[Any, ...]:
        return (InstallingSetupFnc, (self.fnc, self.install))

    def __call__(self, proc: Any) -> Any:
        _ensure_installed(self.install)
        return self.fnc(proc)


def wrap_proc_job_executor_init(original: F, install: Callable[[], None]) -> F:
    """Wrap ``ProcJobExecutor.__init__`` so that its setup function calls ``install`` first."""

    @functools.wraps(original)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        setup = kwargs.get("initialize_process_fnc")
        if setup is not None and not isinstance(setup, InstallingSetupFnc):
            kwargs["initialize_process_fnc"] = InstallingSetupFnc(setup, install)
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
