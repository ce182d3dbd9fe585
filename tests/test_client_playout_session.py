"""client_playout on a real AgentSession (offline, virtual-clock audio output), both forms.

Three responses play back to back (the fake TTS is audible from its first sample), so only
the first has an onset of its own; each response's device start is still placed by the path
delay: playout_started + d.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from livekit import rtc
from livekit_segments import SegmentBreak, client_playout, playout_started
from livekit_segments.client_playout._service import CODEC_DELAY
from livekit_segments.testing import VirtualAudioOutput, VirtualClock

from .fakes import SAMPLE_RATE, ScriptedAgent, start_session

DELAY = 0.12  # the simulated path from the agent's send to the device's output
SKEW = 5400.0  # the client's clock, 90 minutes off


class Timers:
    def __init__(self, clock: VirtualClock) -> None:
        self.clock = clock
        self.pending: list[tuple[float, Callable[[], None]]] = []

    def call_at(self, wall: float, cb: Callable[[], None]) -> Callable[[], None]:
        entry = (wall, cb)
        self.pending.append(entry)
        return lambda: self.pending.remove(entry) if entry in self.pending else None

    def run_until(self, t: float) -> None:
        while due := sorted((e for e in self.pending if e[0] <= t), key=lambda e: e[0]):
            self.pending.remove(due[0])
            self.clock.advance_to(due[0][0])
            due[0][1]()
        self.clock.advance_to(t)


class Participant:
    def __init__(self) -> None:
        self.methods: dict[str, Any] = {}

    def register_rpc_method(self, name: str, handler: Any) -> None:
        self.methods[name] = handler

    def unregister_rpc_method(self, name: str) -> None:
        self.methods.pop(name, None)


class Room(rtc.EventEmitter[str]):
    def __init__(self) -> None:
        super().__init__()
        self.local_participant = Participant()


async def test_each_response_of_a_real_session_is_heard() -> None:
    clock = VirtualClock(start=1_800_000_000.0)
    sink = VirtualAudioOutput(clock=clock, sample_rate=SAMPLE_RATE)
    agent = ScriptedAgent([["A.", SegmentBreak(), "B.", SegmentBreak(), "C."]])
    session = await start_session(agent, sink=sink)
    room = Room()
    timers = Timers(clock)
    cp = client_playout.enable(
        session, room, participant_identity="user", _clock=clock.now, _timer=timers.call_at
    )
    methods = room.local_participant.methods

    def call(name: str, body: dict[str, Any]) -> str:
        out = methods[name](rtc.RpcInvocationData("r", "user", json.dumps(body), 5.0))
        assert isinstance(out, str)
        return out

    call(client_playout.HELLO, {"v": 1, "sid": "session-1", "path": "own-graph"})
    t0 = (clock.now() + SKEW) * 1000
    call(client_playout.SYNC, {"v": 1, "q": 1, "t0": t0, "rx": 60})
    call(client_playout.SYNC, {"v": 1, "q": 2, "t0": t0, "prev": [1, t0]})

    views: list[tuple[Any, Any, Any]] = []
    session.on(
        "speech_created",
        lambda ev: views.append(
            (
                ev.speech_handle,
                client_playout.heard(ev.speech_handle),
                client_playout.heard_measured(ev.speech_handle),
            )
        ),
    )
    reply = session.generate_reply()  # its speech_created too
    await reply
    starts = [playout_started(h).result() for h, _, _ in views]
    assert len(views) == 3 and all(s is not None for s in starts)
    timers.run_until(max(starts) + 0.1)
    # fired on the prior before any report: rtt/2 (0 here) + rx + Opus's framing, look-ahead
    for (_, heard, _), start in zip(views, sorted(starts), strict=True):
        assert heard.result().how == "predicted"
        assert heard.result().at == pytest.approx(start + 0.06 + CODEC_DELAY, abs=1e-6)

    # the device heard the first (and only) onset DELAY after it left
    assert len(cp.log.onsets) == 1
    onset = cp.log.onsets[0].onset
    # the tone's sample 0 is sin(0) = 0: audible from sample 1
    assert onset.at == pytest.approx(min(starts) + 1 / SAMPLE_RATE, abs=1e-7)
    device = (onset.at + DELAY + SKEW) * 1000
    call(client_playout.REPORT, {"v": 1, "q": 3, "o": [[device, onset.gap * 1000]]})
    timers.run_until(max(starts) + 8.0)
    for (_, _, measured), start in zip(views, sorted(starts), strict=True):
        got = measured.result()
        assert got.how == "measured"
        assert got.at == pytest.approx(start + DELAY, abs=2e-4)
        assert got.first_audible_offset == pytest.approx(1 / SAMPLE_RATE, abs=1e-7)
    await session.aclose()
    assert cp.closed and methods == {}
