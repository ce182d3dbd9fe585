"""One `SpeechHandle` per response for LiveKit Agents.

Call `install()` once at startup. An `llm_node` may then yield `SegmentBreak(...)` between
responses: each break opens a new `SpeechHandle`, announced through the session's
``speech_created`` event, whose ``playout_started`` future resolves when that response's
first audio frame starts playing.
"""

from __future__ import annotations

import asyncio

from livekit.agents.voice.speech_handle import SpeechHandle

from .installer import (
    SUPPORTED_VERSIONS,
    UnsupportedVersionError,
    has_native_support,
    install,
    is_installed,
    uninstall,
)
from .segment_break import SegmentBreak
from .version import __version__

__all__ = [
    "SUPPORTED_VERSIONS",
    "SegmentBreak",
    "UnsupportedVersionError",
    "__version__",
    "has_native_support",
    "install",
    "is_installed",
    "playout_started",
    "segment_break",
    "segment_index",
    "uninstall",
]


def _require(handle: SpeechHandle, name: str) -> object:
    try:
        return getattr(handle, name)
    except AttributeError:
        raise RuntimeError(
            f"SpeechHandle.{name} is not available: call livekit_segments.install() at "
            f"startup, before the session starts"
        ) from None


def playout_started(handle: SpeechHandle) -> asyncio.Future[float]:
    """Typed access to ``handle.playout_started`` (upstream's type stubs do not know it)."""
    fut = _require(handle, "playout_started")
    assert isinstance(fut, asyncio.Future)
    return fut


def segment_index(handle: SpeechHandle) -> int:
    """Typed access to ``handle.segment_index``."""
    value = _require(handle, "segment_index")
    assert isinstance(value, int)
    return value


def segment_break(handle: SpeechHandle) -> SegmentBreak | None:
    """Typed access to ``handle.segment_break``."""
    value = _require(handle, "segment_break")
    assert value is None or isinstance(value, SegmentBreak)
    return value
