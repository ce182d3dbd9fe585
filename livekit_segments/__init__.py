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
from .segment_events import SegmentCreatedEvent
from .version import __version__

__all__ = [
    "SUPPORTED_VERSIONS",
    "SegmentBreak",
    "SegmentCreatedEvent",
    "UnsupportedVersionError",
    "__version__",
    "has_native_support",
    "install",
    "is_installed",
    "playout_started",
    "reply_handle",
    "response_interrupted",
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


def playout_started(handle: SpeechHandle) -> asyncio.Future[float | None]:
    """Typed access to ``handle.playout_started`` (upstream's type stubs do not know it): a
    new future of the caller's own, resolving with the start time, or None if the response
    never played."""
    fut = _require(handle, "playout_started")
    assert isinstance(fut, asyncio.Future)
    return fut


def response_interrupted(handle: SpeechHandle) -> bool:
    """Typed access to ``handle.response_interrupted``: whether this handle's own response
    was cut (for the reply handle, its first response only)."""
    value = _require(handle, "response_interrupted")
    assert isinstance(value, bool)
    return value


def reply_handle(handle: SpeechHandle) -> SpeechHandle:
    """Typed access to ``handle.reply_handle``: the handle the whole reply was scheduled
    with (the handle itself for segment 0)."""
    value = _require(handle, "reply_handle")
    assert isinstance(value, SpeechHandle)
    return value


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
