"""The agent's state changes, as futures and as a record: what ``agent_state_changed`` says.

`wait_for_state` is a future for the session's next change into a state (e.g. "thinking"
between two responses); `StateRecorder` keeps every change with its old and new state and
gives futures over the record, so a change that already happened still counts. Neither
waits on wall-clock time.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from livekit.agents import AgentSession
from livekit.agents.voice.events import AgentState, AgentStateChangedEvent, CloseEvent

__all__ = ["StateChange", "StateRecorder", "wait_for_state"]


@dataclass(frozen=True)
class StateChange:
    """One ``agent_state_changed`` event."""

    old_state: AgentState
    new_state: AgentState
    created_at: float
    """When the session emitted it (``time.time()`` clock, the event's ``created_at``)."""

    @classmethod
    def from_event(cls, ev: AgentStateChangedEvent) -> StateChange:
        """The change an ``agent_state_changed`` event reports."""
        return cls(old_state=ev.old_state, new_state=ev.new_state, created_at=ev.created_at)

    def matches(self, state: AgentState, old_state: AgentState | None = None) -> bool:
        """True if it enters ``state`` (from ``old_state``, when given)."""
        return self.new_state == state and (old_state is None or self.old_state == old_state)


def _fail(fut: asyncio.Future[StateChange], message: str) -> None:
    if fut.done():
        return
    fut.set_exception(RuntimeError(message))
    # a waiter the test no longer awaits must not be logged as "exception never retrieved";
    # one it awaits still raises
    fut.exception()


def _wanted(state: AgentState, old_state: AgentState | None) -> str:
    return f"{state!r}" if old_state is None else f"{state!r} from {old_state!r}"


def wait_for_state(
    session: AgentSession[Any], state: AgentState, *, old_state: AgentState | None = None
) -> asyncio.Future[StateChange]:
    """A future for the session's next ``agent_state_changed`` into ``state``.

    It resolves with that change (a `StateChange`, with ``old_state`` and ``new_state``).
    Only changes after the call count, so create it before what makes the change (it does
    not look at ``session.agent_state``); to catch a change that may already have happened,
    use a `StateRecorder` started earlier. It fails with `RuntimeError` if the session
    closes first; cancelling it stops listening. Like any event, it stays pending while the
    change does not come and the session is open.

    ::

        thinking = wait_for_state(session, "thinking", old_state="speaking")
        turn = start_turn(session, "What is six times seven?")
        change = await thinking  # the first response played, the next one is not ready
        gate.set()  # let the agent's llm_node go on

    Args:
        session: the session to watch (started or not).
        state: the agent state to wait for ("initializing", "listening", "thinking",
            "speaking", ...).
        old_state: also require the state it changes from.
    """
    loop = asyncio.get_running_loop()
    fut: asyncio.Future[StateChange] = loop.create_future()

    def on_state(ev: AgentStateChangedEvent) -> None:
        change = StateChange.from_event(ev)
        if not fut.done() and change.matches(state, old_state):
            fut.set_result(change)

    def on_close(ev: CloseEvent) -> None:
        _fail(fut, f"the session closed before the agent state became {_wanted(state, old_state)}")

    def stop(_: asyncio.Future[StateChange]) -> None:
        session.off("agent_state_changed", on_state)
        session.off("close", on_close)

    session.on("agent_state_changed", on_state)
    session.on("close", on_close)
    fut.add_done_callback(stop)
    return fut


class StateRecorder:
    """Records a session's ``agent_state_changed`` events, from creation until `stop`.

    ``changes`` holds each `StateChange` (old and new state) in order; ``states`` the new
    states. `entered` is a future over the whole record. Use it as a context manager, or
    call `stop`::

        with StateRecorder(session) as states:
            result = await run_turn(session, "Hi")
        assert [(c.old_state, c.new_state) for c in states.changes] == [
            ("listening", "thinking"), ("thinking", "speaking"), ("speaking", "listening")
        ]

    Args:
        session: the session to record (started or not).
    """

    def __init__(self, session: AgentSession[Any]) -> None:
        self._session = session
        self._changes: list[StateChange] = []
        self._waiters: list[tuple[AgentState, AgentState | None, asyncio.Future[StateChange]]] = []
        self._stopped = False
        session.on("agent_state_changed", self._on_state)
        session.on("close", self._on_close)

    @property
    def changes(self) -> list[StateChange]:
        """Every change recorded so far, oldest first."""
        return list(self._changes)

    @property
    def states(self) -> list[AgentState]:
        """The state each recorded change entered, oldest first."""
        return [c.new_state for c in self._changes]

    def entered(
        self, state: AgentState, *, old_state: AgentState | None = None
    ) -> asyncio.Future[StateChange]:
        """A future for the first recorded change into ``state`` (from ``old_state``, if
        given), whether it is already in the record or still to come.

        It fails with `RuntimeError` if the recorder stops, or the session closes, first.
        """
        fut: asyncio.Future[StateChange] = asyncio.get_running_loop().create_future()
        for change in self._changes:
            if change.matches(state, old_state):
                fut.set_result(change)
                return fut
        if self._stopped:
            _fail(fut, self._unmet(state, old_state, "the recorder was stopped"))
        else:
            self._waiters.append((state, old_state, fut))
        return fut

    def stop(self) -> None:
        """Stop recording; a pending `entered` future fails with `RuntimeError`."""
        self._finish("the recorder was stopped")

    def __enter__(self) -> StateRecorder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # -- internals

    def _unmet(self, state: AgentState, old_state: AgentState | None, why: str) -> str:
        seen = ", ".join(f"{c.old_state}->{c.new_state}" for c in self._changes) or "none"
        return f"{why} before the agent state became {_wanted(state, old_state)} (changes: {seen})"

    def _on_state(self, ev: AgentStateChangedEvent) -> None:
        change = StateChange.from_event(ev)
        self._changes.append(change)
        still = []
        for state, old_state, fut in self._waiters:
            if fut.done():
                continue
            if change.matches(state, old_state):
                fut.set_result(change)
            else:
                still.append((state, old_state, fut))
        self._waiters = still

    def _on_close(self, ev: CloseEvent) -> None:
        self._finish("the session closed")

    def _finish(self, why: str) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._session.off("agent_state_changed", self._on_state)
        self._session.off("close", self._on_close)
        for state, old_state, fut in self._waiters:
            _fail(fut, self._unmet(state, old_state, why))
        self._waiters = []
