"""Drive one user turn and collect what it produced: every handle, its signal, the states.

`run_turn` asks the agent for a reply, waits (on futures only) until the reply and every
segment handle it opened are done, and returns a `TurnResult`. `start_turn` does the same in
two steps, for tests that act while the turn runs (interrupt it, drive a manual output).
"""

from __future__ import annotations

import asyncio
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

from livekit.agents import NOT_GIVEN, AgentSession
from livekit.agents.voice.events import AgentState, AgentStateChangedEvent, SpeechCreatedEvent
from livekit.agents.voice.speech_handle import SpeechHandle

from .. import playout_started, response_interrupted, segment_break, segment_index
from ..release_compat import speech_error
from ..segment_break import SegmentBreak
from .audio import VirtualAudioOutput
from .states import StateChange, StateRecorder

__all__ = ["HandleResult", "RunningTurn", "TurnResult", "run_turn", "start_turn"]


@dataclass(frozen=True)
class HandleResult:
    """One `SpeechHandle` of a turn, once it is done."""

    handle: SpeechHandle
    segment_index: int
    """``0`` for the reply's own handle, ``k`` for the handle the k-th break opened."""
    segment_break: SegmentBreak | None
    """The break that opened the handle (for segment 0, a leading break, if any)."""
    playout_started: float | None
    """What ``handle.playout_started`` resolved with (the output's ``playback_started``
    timestamp), or None if the segment never played."""
    interrupted: bool
    """``handle.interrupted`` (for the reply's own handle: the whole reply was cut)."""
    response_interrupted: bool
    """``handle.response_interrupted``: this handle's own response was cut."""

    @property
    def played(self) -> bool:
        """True if the segment's audio (or text, without audio) started playing."""
        return self.playout_started is not None

    @property
    def break_id(self) -> str | None:
        """``segment_break.id``, or None without a break."""
        return self.segment_break.id if self.segment_break is not None else None


@dataclass(frozen=True)
class TurnResult:
    """Everything one user turn produced, once every handle is done."""

    handle: SpeechHandle
    """The handle ``generate_reply()`` returned (the turn handle, segment 0)."""
    handles: list[HandleResult]
    """The turn's handles in the order ``speech_created`` announced them."""
    agent_states: list[AgentState]
    """Every ``agent_state_changed`` new state from the request until the turn settled."""
    state_changes: list[StateChange] = field(default_factory=list)
    """The same changes with their old and new states (`StateChange`), oldest first."""

    @property
    def break_ids(self) -> list[str | None]:
        """``break_id`` of each handle."""
        return [h.break_id for h in self.handles]

    @property
    def playout_started(self) -> list[float | None]:
        """``playout_started`` of each handle (None where it never played)."""
        return [h.playout_started for h in self.handles]

    @property
    def interrupted(self) -> bool:
        """True if the turn was interrupted."""
        return self.handle.interrupted

    @property
    def error(self) -> BaseException | None:
        """The turn's failure (``handle.exception()``), e.g. an error raised in ``llm_node``.

        Always None on livekit-agents before 1.6.5, which does not record it.
        """
        return speech_error(self.handle)


class RunningTurn:
    """A turn in progress, as `start_turn` returns it; ``await turn.result()`` settles it.

    It listens to the session's ``speech_created`` and ``agent_state_changed`` from before
    the reply is requested until `result` returns. `state_entered` is a future for a state
    change during the turn (e.g. "thinking" between two responses).
    """

    def __init__(self, session: AgentSession[Any]) -> None:
        self._session = session
        self._announced: list[SpeechHandle] = []
        self._states: list[AgentState] = []
        self._waiters: list[tuple[int, asyncio.Future[SpeechHandle]]] = []
        self._handle: SpeechHandle | None = None
        self._result: TurnResult | None = None
        session.on("speech_created", self._on_speech_created)
        session.on("agent_state_changed", self._on_agent_state_changed)
        self._recorder = StateRecorder(session)

    @property
    def handle(self) -> SpeechHandle:
        """The turn handle, as ``generate_reply()`` returned it."""
        assert self._handle is not None
        return self._handle

    @property
    def handles(self) -> list[SpeechHandle]:
        """The turn's handles announced so far (turn handle first, then one per break)."""
        turn = self.handle
        prefix = f"{turn.id}_seg"
        return [h for h in self._announced if h is turn or h.id.startswith(prefix)]

    @property
    def agent_states(self) -> list[AgentState]:
        """The agent states entered so far during the turn."""
        return list(self._states)

    @property
    def state_changes(self) -> list[StateChange]:
        """The agent-state changes so far during the turn, with old and new states."""
        return self._recorder.changes

    def state_entered(
        self, state: AgentState, *, old_state: AgentState | None = None
    ) -> asyncio.Future[StateChange]:
        """A future for the turn's first change into ``state`` (from ``old_state``, if
        given), counting changes since the reply was requested, so it can be created late.

        It fails with `RuntimeError` if the turn settles (`result` returns) or the session
        closes without that change::

            turn = start_turn(session, "Hi")
            await turn.state_entered("thinking", old_state="speaking")
        """
        return self._recorder.entered(state, old_state=old_state)

    def handle_created(self, n: int) -> asyncio.Future[SpeechHandle]:
        """A future for the turn's ``n``-th handle (0 = the turn handle) once announced.

        It stays pending if the turn never opens that many handles; await it only for a
        handle the agent will open, or race it against ``turn.handle`` with
        ``asyncio.wait``.
        """
        fut: asyncio.Future[SpeechHandle] = asyncio.get_running_loop().create_future()
        self._waiters.append((n, fut))
        self._notify()
        return fut

    async def result(self) -> TurnResult:
        """Waits until the turn and every segment handle it opened are done; then returns
        what they produced and stops listening to the session.

        Raises:
            RuntimeError: segment handles are not available (the runtime patch is not
                installed), or a handle is done while its ``playout_started`` is still pending
                (the contract says it is settled by then).
        """
        if self._result is not None:
            return self._result
        turn = self.handle
        try:
            await turn
            # segment handles are done with their segment, at the latest when the turn is
            for h in self.handles:
                await h
            results = [self._settled(h) for h in self.handles]
        finally:
            self._stop()
        self._result = TurnResult(
            handle=turn,
            handles=results,
            agent_states=list(self._states),
            state_changes=self._recorder.changes,
        )
        return self._result

    def __await__(self) -> Generator[Any, None, TurnResult]:
        return self.result().__await__()

    # -- internals

    @staticmethod
    def _settled(h: SpeechHandle) -> HandleResult:
        fut = playout_started(h)
        if not fut.done():
            raise RuntimeError(f"handle {h.id} is done but its playout_started is still pending")
        return HandleResult(
            handle=h,
            segment_index=segment_index(h),
            segment_break=segment_break(h),
            playout_started=fut.result(),
            interrupted=h.interrupted,
            response_interrupted=response_interrupted(h),
        )

    def _on_speech_created(self, ev: SpeechCreatedEvent) -> None:
        self._announced.append(ev.speech_handle)
        self._notify()

    def _on_agent_state_changed(self, ev: AgentStateChangedEvent) -> None:
        self._states.append(ev.new_state)

    def _notify(self) -> None:
        if self._handle is None:
            return
        handles = self.handles
        still = []
        for n, fut in self._waiters:
            if fut.done():
                continue
            if n < len(handles):
                fut.set_result(handles[n])
            else:
                still.append((n, fut))
        self._waiters = still

    def _stop(self) -> None:
        self._session.off("speech_created", self._on_speech_created)
        self._session.off("agent_state_changed", self._on_agent_state_changed)
        self._recorder._finish("the turn ended")
        for _, fut in self._waiters:
            fut.cancel()
        self._waiters = []


def start_turn(
    session: AgentSession[Any],
    user_input: str | None = None,
    *,
    instructions: str | None = None,
    allow_interruptions: bool | None = None,
) -> RunningTurn:
    """Requests a reply (``session.generate_reply(user_input=...)``) and starts recording it.

    Call it from a running event loop, on a started session. Then act on the turn (drive a
    manual `VirtualAudioOutput`, interrupt ``turn.handle``, ...) and ``await turn.result()``.

    Args:
        session: a started session, e.g. from `started_session`.
        user_input: what the user said; None replies without a new user message.
        instructions: extra instructions for this reply.
        allow_interruptions: overrides the session's setting for this reply.
    """
    turn = RunningTurn(session)
    try:
        handle = session.generate_reply(
            user_input=user_input if user_input is not None else NOT_GIVEN,
            instructions=instructions if instructions is not None else NOT_GIVEN,
            allow_interruptions=(
                allow_interruptions if allow_interruptions is not None else NOT_GIVEN
            ),
        )
    except BaseException:
        turn._stop()
        raise
    turn._handle = handle
    turn._notify()
    return turn


async def run_turn(
    session: AgentSession[Any],
    user_input: str | None = None,
    *,
    instructions: str | None = None,
    allow_interruptions: bool | None = None,
) -> TurnResult:
    """Runs one user turn to the end and returns what it produced.

    The same as ``await start_turn(...).result()``. With a `VirtualAudioOutput` in manual
    mode nothing would play, so it raises `ValueError`: use `start_turn` and drive the output.

    ::

        result = await run_turn(session, "What is six times seven?")
        assert result.break_ids == [None, "answer"]
        assert result.agent_states == ["thinking", "speaking", "listening"]
    """
    output = session.output.audio
    while output is not None:
        if isinstance(output, VirtualAudioOutput) and "manual" in (
            output.start_mode,
            output.finish_mode,
        ):
            raise ValueError(
                "run_turn() would wait forever: the VirtualAudioOutput plays only when the test "
                "says so (start or finish='manual'); use start_turn() and drive the output"
            )
        output = output.next_in_chain
    return await start_turn(
        session, user_input, instructions=instructions, allow_interruptions=allow_interruptions
    ).result()
