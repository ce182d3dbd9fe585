"""The "thinking" label an agent shows between two responses of one reply.

When a response has played out and the model has not yet started the next one, the agent
shows "thinking" (an `agent_state_changed` event, and so the ``lk.agent.state`` participant
attribute). The label changes what the frontend sees, never how the session reacts:

- it is entered and left with upstream's own ``AgentSession._update_agent_state`` (its event
  and its ``agent_speaking`` span), never by writing the state field;
- while it is on, ``AgentSession.agent_state`` (the property every upstream decision reads:
  interruptions, false-interruption pause and resume, the end-of-speech step, the tool step)
  reads "speaking", as it would with a plain `FlushSentinel`;
- any state update upstream makes itself drops the label first, so upstream's own end of the
  reply ("listening", or "thinking" for a tool step) follows the label's event directly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["enter", "is_on", "leave", "wrap_agent_state", "wrap_update_agent_state"]

F = TypeVar("F", bound=Callable[..., Any])

# AgentSession._update_agent_state as upstream defines it (set by install())
_update_original: Callable[..., None] | None = None

# the session attribute that says the label is on (a class-level False while installed)
LABEL_ATTR = "_lk_between_responses"


def is_on(session: Any) -> bool:
    """Whether ``session`` shows the label now."""
    return bool(getattr(session, LABEL_ATTR, False))


def enter(session: Any) -> None:
    """Show "thinking" between two responses (the session keeps reacting as if speaking)."""
    update = _update_original
    if update is None or is_on(session):
        return
    update(session, "thinking")
    setattr(session, LABEL_ATTR, True)


def leave(session: Any, *, start_time: float, otel_context: Any) -> None:
    """The next response's first frame: "speaking" again, with a new span. Nothing if the
    label is no longer on (upstream changed the state in between)."""
    update = _update_original
    if update is None or not is_on(session):
        return
    setattr(session, LABEL_ATTR, False)
    update(session, "speaking", start_time=start_time, otel_context=otel_context)


def wrap_update_agent_state(original: F) -> F:
    """Every state update upstream makes drops the label first."""
    global _update_original
    _update_original = original

    @functools.wraps(original)
    def _update_agent_state(self: Any, state: Any, *args: Any, **kwargs: Any) -> None:
        if self._lk_between_responses:
            self._lk_between_responses = False
        original(self, state, *args, **kwargs)

    return _update_agent_state  # type: ignore[return-value]


def wrap_agent_state(original: property) -> property:
    """``AgentSession.agent_state``: "speaking" while the label is on, so that upstream's
    decisions are those it makes with a plain `FlushSentinel` (checked by install(): the
    original only returns ``self._agent_state``)."""

    def agent_state(self: Any) -> Any:
        return "speaking" if self._lk_between_responses else self._agent_state

    agent_state.__doc__ = original.__doc__
    return property(agent_state)
