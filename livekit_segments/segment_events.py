"""The ``speech_created`` event of a segment handle."""

from __future__ import annotations

from typing import TYPE_CHECKING

from livekit.agents.voice import events as _events
from livekit.agents.voice.events import SpeechCreatedEvent

__all__ = ["SegmentCreatedEvent"]


class SegmentCreatedEvent(SpeechCreatedEvent):
    """``speech_created`` for a handle opened by a `SegmentBreak` (``segment_index >= 1``).

    It is upstream's `SpeechCreatedEvent` (``type`` "speech_created", ``source``
    "generate_reply", ``user_initiated`` False) with two more fields, which `model_dump()`
    and so the session report keep: code that reads ``source`` works as before, and code
    that waits for the next reply can skip segments (``isinstance`` or ``segment_index``).
    """

    segment_index: int
    """Which response of the reply the handle plays (1 for the first break's)."""
    reply_id: str
    """The id of the reply's own handle (``handle.reply_handle.id``)."""


if not TYPE_CHECKING and hasattr(_events, "SegmentCreatedEvent"):
    # the upstream form: livekit-agents defines it, and its pipeline emits that class
    SegmentCreatedEvent = _events.SegmentCreatedEvent  # noqa: F811
