"""The runtime patch's per-handle state: when a reply's own handle gets its done callback."""

from __future__ import annotations

import asyncio

import pytest

import livekit_segments
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments.handle_state import resolve_playout, state_of

pytestmark = pytest.mark.runtime_only


@pytest.fixture(autouse=True)
def installed() -> None:
    livekit_segments.install()


async def test_a_first_frame_after_the_turn_ended_does_not_resolve_playout_started() -> None:
    # a reply without breaks registers no done callback on its handle; the first frame
    # then checks the handle itself, as the callback would have
    turn = SpeechHandle.create()
    st = state_of(turn, watch=False)
    turn._mark_done()
    resolve_playout(st, 123.0)
    assert st.settled and st.started is None
    assert turn.playout_started.result() is None


async def test_waiting_on_playout_started_cancels_it_when_the_turn_ends_unplayed() -> None:
    turn = SpeechHandle.create()
    state_of(turn, watch=False)
    fut = turn.playout_started  # someone can wait on it now: the done callback is registered
    turn._mark_done()  # schedules the handle's done callbacks
    after: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    asyncio.get_running_loop().call_soon(after.set_result, None)  # runs after them (FIFO)
    await after
    assert fut.result() is None


async def test_a_turn_that_resolved_first_keeps_its_time() -> None:
    turn = SpeechHandle.create()
    st = state_of(turn, watch=False)
    resolve_playout(st, 123.0)
    turn._mark_done()
    assert await turn.playout_started == 123.0
