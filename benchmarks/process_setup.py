"""What every bench process sets up: quiet livekit logs, forced installs, its workers' path.

A leaf of the package (it imports no other bench module), so that the command line, the
runner and the worker processes (`instructions.serve`, `cross_process.serve`) share it
without importing one another.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

from livekit_segments import installer
from livekit_segments._cli import quiet_install_warnings

__all__ = ["FORCE_ENV", "REPO_ROOT", "forcing_install", "quiet_livekit_logs", "worker_env"]

# set while `--force` runs: B7's worker then installs the patch with force=True too
FORCE_ENV = "LKSEG_BENCH_FORCE_INSTALL"
REPO_ROOT = Path(__file__).resolve().parents[1]
"""The clone this package lives in: its workers import `benchmarks` and livekit_segments
from there."""


def worker_env(**extra: str) -> dict[str, str]:
    """The environment of a worker process: this one's, with the clone first on the path,
    so that the worker imports this `benchmarks` and the checkout's livekit_segments
    whatever its working directory (the parent imports them from the clone too)."""
    path = [str(REPO_ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path), **extra}


def quiet_livekit_logs() -> dict[str, int]:
    """Upstream logs on every session start and close; keep the table readable, but let
    this package's own warnings through. Returns the levels to put back."""
    levels: dict[str, int] = {}
    for name in ("livekit", "livekit.agents"):
        logger = logging.getLogger(name)
        levels[name] = logger.level
        if logger.getEffectiveLevel() < logging.ERROR:
            logger.setLevel(logging.ERROR)
    own = logging.getLogger("livekit.segments")
    levels[own.name] = own.level
    if own.level == logging.NOTSET:
        own.setLevel(logging.WARNING)  # not silenced through its "livekit" parent
    return levels


@contextlib.contextmanager
def forcing_install(force: bool) -> Iterator[None]:
    """With ``--force``, every `install()` the bench makes is ``install(force=True)``.

    The bench switches the patch on and off many times (`forms.activate`); the version
    warning was printed once already, so the repeated installs stay quiet. B7's worker, a
    process of its own, learns it from the environment (`FORCE_ENV`).
    """
    if not force:
        yield
        return
    original = installer.install
    inherited = os.environ.get(FORCE_ENV)

    def forced(*, force: bool = True) -> None:
        with quiet_install_warnings():
            original(force=True)

    installer.install = forced
    os.environ[FORCE_ENV] = "1"  # B7's worker process installs the patch too
    try:
        yield
    finally:
        installer.install = original
        if inherited is None:
            del os.environ[FORCE_ENV]
        else:
            os.environ[FORCE_ENV] = inherited
