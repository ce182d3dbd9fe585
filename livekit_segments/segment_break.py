"""`SegmentBreak`: the marker an `llm_node` yields to start a new response."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import livekit.agents as _agents
from livekit.agents import FlushSentinel

from . import activation

__all__ = ["SegmentBreak"]


# set by install() and uninstall(): a plain flag keeps SegmentBreak() as cheap as the
# FlushSentinel() it stands in for
_patch_active = False


class SegmentBreak(FlushSentinel):
    """Ends the current response and starts a new one with its own `SpeechHandle`.

    Yield it from `llm_node` between two responses. It is a `FlushSentinel`, so the reply is
    split exactly where upstream splits it; with `livekit_segments.install()` the text after
    it also plays under a new `SpeechHandle`, announced through `speech_created`.

    A break is immutable and compares (and hashes) by identity.

    Args:
        id: an optional label for the response that follows, such as ``"answer"``.
        userdata: anything the app wants to find again on ``handle.segment_break``.
    """

    __slots__ = ("_id", "_userdata")
    _id: str | None
    _userdata: Any

    def __init__(self, id: str | None = None, userdata: Any = None) -> None:
        if id is not None and not isinstance(id, str):
            raise TypeError(
                f"SegmentBreak id must be a str or None, not {type(id).__name__}; "
                f"pass str(...) for a non-string label, or put the object in userdata"
            )
        object.__setattr__(self, "_id", id)
        object.__setattr__(self, "_userdata", userdata)
        if not _patch_active:
            activation.warn_if_inactive()

    @property
    def id(self) -> str | None:
        """The label given to the response that follows the break."""
        return self._id

    @property
    def userdata(self) -> Any:
        """The app's own data, carried unchanged to ``handle.segment_break``."""
        return self._userdata

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"SegmentBreak is immutable: create a new one to change {name}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"SegmentBreak is immutable: cannot delete {name}")

    def __repr__(self) -> str:
        # never the userdata: it may hold the app's data, which must not reach logs
        return f"SegmentBreak(id={self._id!r})"


if not TYPE_CHECKING and hasattr(_agents, "SegmentBreak"):
    # a livekit-agents with the upstream series applied defines the class itself: use it,
    # so that both forms share one type and `isinstance` agrees everywhere
    SegmentBreak = _agents.SegmentBreak  # noqa: F811
