"""Whether this process runs with segment handles, and the warning when it does not.

A leaf of the package (it imports no other module of it): `SegmentBreak` calls
`warn_if_inactive` when the runtime patch is off, and the job-process setup records here that
`install()` failed, without either importing the installer.
"""

from __future__ import annotations

import logging
import multiprocessing

import livekit.agents as agents
from livekit.agents.voice import agent_activity
from livekit.agents.voice.speech_handle import SpeechHandle

__all__ = ["install_failed", "native_support", "warn_if_inactive"]

logger = logging.getLogger("livekit.segments")

install_failed = False
"""Set when `install()` raised in this (job) process; the warning then says so."""
_warned_inactive = False


def native_support() -> bool:
    """True when livekit-agents itself defines segment handles (the upstream series): its
    own ``SegmentBreak``, and ``playout_started`` as a property of `SpeechHandle`."""
    return hasattr(agents, "SegmentBreak") and isinstance(
        getattr(SpeechHandle, "playout_started", None), property
    )


def warn_if_inactive() -> None:
    """Log once per process that a `SegmentBreak` acts as a plain `FlushSentinel`.

    `SegmentBreak` calls it only while the runtime patch is off; outside a running agent, or
    on a livekit-agents with native support, nothing is lost and nothing is logged.
    """
    global _warned_inactive
    if _warned_inactive:
        return
    if agent_activity._AgentActivityContextVar.get(None) is None:
        return  # not inside a running agent: nothing can have been lost yet
    if native_support():
        return
    _warned_inactive = True
    proc = multiprocessing.current_process()
    cause = (
        "install() failed in this job process (see the error logged when it started)"
        if install_failed
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
