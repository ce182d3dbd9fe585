"""The agent side of the client-playout protocol (docs/client-playout.md), on fakes.

A fake room and session with the same surface as LiveKit's; a virtual wall clock whose timers
run when the test advances it; a simulated device that hears the agent's onsets `d` later and
reports them in a client clock hours away from the agent's.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from livekit import rtc
from livekit.agents.voice import io
from livekit_segments import client_playout
from livekit_segments.client_playout import Heard
from livekit_segments.client_playout._clock import ClockOffset
from livekit_segments.client_playout._detector import (
    MAX_GAP,
    OnsetDetector,
    amplitudes,
    decode_envelope,
    encode_envelope,
    envelope_shift,
    levels_fit,
)
from livekit_segments.client_playout._service import CODEC_DELAY

SR = 48000
T_START = 1_800_000_000.0
CLIENT_SKEW = -3 * 3600 + 0.1234  # client clock = agent clock + skew (hours off)


class VirtualClock:
    def __init__(self) -> None:
        self.now = T_START
        self._timers: list[tuple[float, int, Callable[[], None]]] = []
        self._n = 0

    def __call__(self) -> float:
        return self.now

    def call_at(self, wall: float, cb: Callable[[], None]) -> Callable[[], None]:
        self._n += 1
        entry = (wall, self._n, cb)
        self._timers.append(entry)

        def cancel() -> None:
            if entry in self._timers:
                self._timers.remove(entry)

        return cancel

    async def advance_to(self, t: float) -> None:
        while True:
            due = sorted(e for e in self._timers if e[0] <= t)
            if not due:
                break
            entry = due[0]
            self._timers.remove(entry)
            self.now = max(self.now, entry[0])
            entry[2]()
            await asyncio.sleep(0)
        self.now = max(self.now, t)
        await asyncio.sleep(0)

    async def advance(self, dt: float) -> None:
        await self.advance_to(self.now + dt)


class FakeLocalParticipant:
    def __init__(self) -> None:
        self.methods: dict[str, Callable[[rtc.RpcInvocationData], str]] = {}
        # the companion's side of agent-to-client calls: (method, payload) -> reply
        self.remote: Callable[[str, str], Awaitable[str]] | None = None
        self.performed: list[tuple[str, str, str]] = []

    async def perform_rpc(
        self,
        *,
        destination_identity: str,
        method: str,
        payload: str,
        response_timeout: float | None = None,
    ) -> str:
        self.performed.append((destination_identity, method, payload))
        if self.remote is None:
            raise rtc.RpcError(1400, "Method not supported at destination")
        return await self.remote(method, payload)

    def register_rpc_method(self, name: str, handler: Any) -> None:
        self.methods[name] = handler

    def unregister_rpc_method(self, name: str) -> None:
        self.methods.pop(name, None)


class FakeRoom(rtc.EventEmitter[str]):
    def __init__(self) -> None:
        super().__init__()
        self.local_participant = FakeLocalParticipant()


class FakeSink(io.AudioOutput):
    """Like RoomIO's output: playback_started as a segment's first frame enters the queue."""

    def __init__(self, clock: VirtualClock) -> None:
        super().__init__(
            label="FakeSink", capabilities=io.AudioOutputCapabilities(pause=True), sample_rate=SR
        )
        self.clock = clock
        self.frames = 0
        self.cleared = 0
        self._started = False

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await super().capture_frame(frame)
        self.frames += 1
        if not self._started:
            self._started = True
            self.on_playback_started(created_at=self.clock.now)

    def flush(self) -> None:
        super().flush()
        self._started = False

    def clear_buffer(self) -> None:
        self.cleared += 1
        self._started = False


class FakeSession(rtc.EventEmitter[str]):
    def __init__(self, sink: io.AudioOutput, linked: str | None = "user") -> None:
        super().__init__()
        self.output = SimpleNamespace(audio=sink)
        participant = None if linked is None else SimpleNamespace(identity=linked)
        self.room_io = SimpleNamespace(linked_participant=participant)


class FakeHandle:
    """The public surface the module reads: per-read playout_started views."""

    def __init__(self) -> None:
        self._views: list[asyncio.Future[float | None]] = []
        self._result: tuple[bool, float | None] | None = None

    @property
    def playout_started(self) -> asyncio.Future[float | None]:
        fut: asyncio.Future[float | None] = asyncio.get_running_loop().create_future()
        if self._result is not None:
            fut.set_result(self._result[1])
        else:
            self._views.append(fut)
        return fut

    def started(self, at: float | None) -> None:
        self._result = (True, at)
        for v in self._views:
            if not v.done():
                v.set_result(at)


def frames(amplitude: float, seconds: float) -> list[rtc.AudioFrame]:
    """20 ms frames: a 300 Hz tone of `amplitude` (0 = digital silence)."""
    out = []
    n = int(round(seconds * 50))
    for k in range(n):
        t = (np.arange(960) + k * 960) / SR
        pcm = (amplitude * 32767 * np.sin(2 * np.pi * 300 * t)).astype(np.int16)
        if amplitude:
            pcm[0] = int(amplitude * 32767)  # audible from its very first sample
        out.append(rtc.AudioFrame(pcm.tobytes(), SR, 1, 960))
    return out


class Rig:
    """A session with the module enabled, a companion, and a device `d` seconds behind."""

    def __init__(
        self,
        *,
        linked: str | None = "user",
        identity: str | None = None,
        sink: type[FakeSink] | None = None,
    ) -> None:
        self.clock = VirtualClock()
        self.sink = (sink or FakeSink)(self.clock)
        self.session = FakeSession(self.sink, linked)
        self.room = FakeRoom()
        self.cp = client_playout.enable(
            self.session,
            self.room,
            participant_identity=identity,
            _clock=self.clock,
            _timer=self.clock.call_at,
        )
        self.tap = self.session.output.audio
        self.q = 0
        self.delay = 0.08
        self.sent_onsets: list[float] = []

    def handle(self) -> FakeHandle:
        h = FakeHandle()
        self.session.emit("speech_created", SimpleNamespace(speech_handle=h))
        return h

    def call(self, method: str, payload: Any, caller: str = "user") -> str:
        text = payload if isinstance(payload, str) else json.dumps(payload)
        data = rtc.RpcInvocationData("req", caller, text, 5.0)
        return self.room.local_participant.methods[method](data)

    def client_ms(self, agent_time: float) -> float:
        return (agent_time + CLIENT_SKEW) * 1000

    def hello(
        self, sid: str = "sid-0001", path: str = "plugin", levels: bool = False
    ) -> dict[str, Any]:
        req = {"v": 1, "sid": sid, "client": "test", "path": path, **({"lv": 1} if levels else {})}
        reply = self.call(client_playout.HELLO, req)
        self.q = 0
        return dict(json.loads(reply))

    def sync(self, rtt: float = 0.02, rx: float | None = 40.0) -> None:
        """Two exchanges with a symmetric path of `rtt`: the agent then knows the offset."""
        prev = None
        for _ in range(2):
            self.q += 1
            t0 = self.clock.now
            self.clock.now += rtt / 2
            req: dict[str, Any] = {"v": 1, "q": self.q, "t0": self.client_ms(t0)}
            if prev is not None:
                req["prev"] = prev
            if rx is not None:
                req["rx"] = rx
            reply = json.loads(self.call(client_playout.SYNC, req))
            self.clock.now += rtt / 2
            prev = [self.q, self.client_ms(self.clock.now)]
            # the agent keeps its own t1 and t2: the reply says only how long it held the call
            assert reply.keys() == {"q", "dt"} and reply["q"] == self.q and reply["dt"] >= 0
        self.q += 1
        req = {"v": 1, "q": self.q, "t0": self.client_ms(self.clock.now), "prev": prev}
        self.call(client_playout.SYNC, req)

    async def speak(self, handle: FakeHandle, *chunks: tuple[float, float]) -> float:
        """Send one response's audio as `(amplitude, seconds)` chunks, paced in real time.

        Returns its playout_started time. Records the agent onsets the device will hear.
        """
        start = self.clock.now
        t = start
        for amp, secs in chunks:
            for f in frames(amp, secs):
                await self.tap.capture_frame(f)
                if handle._result is None:
                    handle.started(start)
                await asyncio.sleep(0)
                t += 0.02
                await self.clock.advance_to(t)
        self.tap.flush()
        return start

    async def speak_pcm(self, handle: FakeHandle, pcm: np.ndarray) -> float:
        """Send one response's audio (int16 samples at SR) in 20 ms frames, paced in real time."""
        start = t = self.clock.now
        for k in range(0, len(pcm), 960):
            chunk = np.ascontiguousarray(pcm[k : k + 960])
            await self.tap.capture_frame(rtc.AudioFrame(chunk.tobytes(), SR, 1, len(chunk)))
            if handle._result is None:
                handle.started(start)
            await asyncio.sleep(0)
            t += len(chunk) / SR
            await self.clock.advance_to(t)
        self.tap.flush()
        return start

    def report(
        self,
        device_times: list[tuple[float, float]] | list[tuple[float, float, str]],
        caller: str = "user",
    ) -> str:
        self.q += 1
        onsets = [
            [round(self.client_ms(t), 1), round(g * 1000, 1), *rest] for t, g, *rest in device_times
        ]
        return self.call(client_playout.REPORT, {"v": 1, "q": self.q, "o": onsets}, caller)

    def device_onsets(self) -> list[tuple[float, float]]:
        """What the device hears: the agent's onsets `delay` later (same gaps)."""
        return [(o.onset.at + self.delay, o.onset.gap) for o in self.cp.log.onsets]

    async def close(self) -> None:
        self.cp.close()


@pytest.fixture
async def rig() -> Any:
    r = Rig()
    yield r
    await r.close()


# -- the shared detector --


def test_detector_onsets_need_the_gap_and_survive_block_boundaries() -> None:
    det = OnsetDetector(threshold=0.01, gap=0.2)
    amp = np.zeros(SR)  # 1 s
    amp[100] = 0.5  # first ever: an onset with the maximal gap
    amp[100 + int(0.1 * SR)] = 0.5  # 100 ms later: no onset
    amp[100 + int(0.4 * SR)] = 0.5  # 300 ms after the previous audible sample: onset
    amp[100 + int(0.4 * SR) + 1] = 0.005  # under the threshold: silent
    found = det.feed(amp[:30000], 10.0, SR) + det.feed(amp[30000:], 10.0 + 30000 / SR, SR)
    assert [round(o.at - 10.0, 6) for o in found] == [round(100 / SR, 6), round(0.4 + 100 / SR, 6)]
    assert found[0].gap == MAX_GAP
    assert math.isclose(found[1].gap, 0.3, abs_tol=1e-9)


def test_amplitudes_take_the_loudest_channel() -> None:
    pcm = np.array([[100, -16384], [0, 0]], dtype=np.int16)
    amp = amplitudes(memoryview(pcm.tobytes()), 2)
    assert list(amp) == [0.5, 0.0]


# -- the clock offset --


def test_clock_offset_uses_the_minimum_round_trip() -> None:
    clock = ClockOffset()
    # agent = client + 3600; a slow exchange whose asymmetry skews its offset
    clock.add(ClockOffset.exchange(0.0, 3600.3, 3600.3, 0.4))  # rtt 0.4, offset +3600.1
    clock.add(ClockOffset.exchange(10.0, 3610.01, 3610.01, 10.02))  # rtt 0.02, exact
    clock.add(ClockOffset.exchange(20.0, 3620.2, 3620.2, 20.3))  # rtt 0.3
    assert clock.best is not None and math.isclose(clock.best.offset, 3600.0, abs_tol=1e-9)
    assert clock.to_agent(100.0) == pytest.approx(3700.0, abs=2e-4)
    assert clock.uncertainty == pytest.approx(0.01, abs=2e-4)


def test_a_client_clock_running_at_another_rate_is_followed() -> None:
    """The page's clock runs 400 ppm fast against the agent's: 12 ms within 30 s. The
    offset follows the fitted rate, so a time 30 s after the first exchange converts
    within 1 ms."""
    clock = ClockOffset()
    rate = 400e-6
    for k in range(6):
        agent = 1000.0 + 10.0 * k
        client = (agent - 1000.0) * (1 + rate) + 50.0  # client = 50 s + elapsed * (1 + rate)
        rtt = 0.001 if k != 2 else 0.0005  # the best exchange is an early one
        clock.add(ClockOffset.exchange(client, agent + rtt / 2, agent + rtt / 2, client + rtt))
    later_agent = 1000.0 + 80.0
    later_client = 80.0 * (1 + rate) + 50.0
    assert clock.to_agent(later_client) == pytest.approx(later_agent, abs=1e-3)


def test_clock_jump_replaces_the_window() -> None:
    clock = ClockOffset()
    clock.add(ClockOffset.exchange(0.0, 100.01, 100.01, 0.02))
    assert not clock.add(ClockOffset.exchange(1.0, 101.01, 101.01, 1.02))
    # the client clock jumps 2 hours ahead
    assert clock.add(ClockOffset.exchange(7202.0, 102.01, 102.01, 7202.02))
    assert clock.to_agent(7300.0) == pytest.approx(200.0, abs=2e-4)


# -- the signals --


async def test_prediction_fires_at_the_predicted_device_start_and_measurement_follows(
    rig: Rig,
) -> None:
    hello = rig.hello()
    assert hello == {
        "v": 1,
        "thr": 0.01,
        "gap_ms": 200.0,
        "sync_s": 10.0,
        "max_onsets": 8,
        "env_bins": 64,
    }
    rig.sync()

    # response 1: 100 ms of leading silence, then speech; the device reports its onset
    h1 = rig.handle()
    v1 = client_playout.heard(h1)
    m1 = client_playout.heard_measured(h1)
    s1 = await rig.speak(h1, (0.0, 0.1), (0.3, 0.5))
    assert len(rig.cp.log.onsets) == 1
    onset1 = rig.cp.log.onsets[0].onset.at
    assert onset1 == pytest.approx(s1 + 0.1, abs=2e-4)
    await rig.clock.advance_to(onset1 + rig.delay + 0.01)
    assert rig.report(rig.device_onsets()) == ""
    await asyncio.sleep(0)
    got1 = m1.result()
    assert got1.how == "measured"
    assert got1.at == pytest.approx(s1 + rig.delay, abs=2e-4)
    assert got1.path_delay == pytest.approx(rig.delay, abs=2e-4)
    assert got1.first_audible_offset == pytest.approx(0.1, abs=2e-4)
    assert got1.measured_from == pytest.approx(0.1, abs=2e-4)
    # the first response fired on the prior (rtt/2 + rx + Opus's framing and look-ahead),
    # before its report came
    assert v1.result().how == "predicted"
    assert v1.result().at == pytest.approx(s1 + 0.01 + 0.04 + CODEC_DELAY, abs=2e-4)

    # response 2, after a pause: the prediction now uses the measured path delay and fires
    # exactly then (virtual clock), before the device's report
    await rig.clock.advance(1.0)
    h2 = rig.handle()
    v2 = client_playout.heard(h2)
    m2 = client_playout.heard_measured(h2)
    fired_at: list[float] = []
    v2.add_done_callback(lambda _f: fired_at.append(rig.clock.now))
    s2 = await rig.speak(h2, (0.0, 0.02), (0.3, 0.3))
    assert fired_at == [pytest.approx(s2 + rig.delay, abs=2e-4)]
    assert v2.result() == Heard(
        at=pytest.approx(s2 + rig.delay, abs=2e-4),  # type: ignore[arg-type]
        how="predicted",
        path_delay=pytest.approx(rig.delay, abs=2e-4),  # type: ignore[arg-type]
        first_audible_offset=pytest.approx(0.02, abs=2e-4),  # type: ignore[arg-type]
    )
    assert not m2.done()
    rig.report(rig.device_onsets()[1:])
    await asyncio.sleep(0)
    assert m2.result().how == "measured" and m2.result().at == pytest.approx(
        s2 + rig.delay, abs=2e-4
    )
    # reading after the fact: an already-done view with the same value
    assert client_playout.heard(h2).result() == v2.result()


async def test_back_to_back_responses_are_each_placed_by_the_path_delay(rig: Rig) -> None:
    rig.hello()
    rig.sync()
    rig.delay = 0.15
    h1, h2 = rig.handle(), rig.handle()
    m1, m2 = client_playout.heard_measured(h1), client_playout.heard_measured(h2)
    v2 = client_playout.heard(h2)
    s1 = await rig.speak(h1, (0.0, 0.04), (0.3, 0.6))
    rig.report(rig.device_onsets())  # the device heard response 1 start meanwhile
    s2 = await rig.speak(h2, (0.3, 0.6))  # no silence between: no onset of its own
    assert len(rig.cp.log.onsets) == 1
    assert m1.result().at == pytest.approx(s1 + 0.15, abs=2e-4)
    # response 2 was predicted from the delay response 1's audio measured
    assert v2.result().how == "predicted" and v2.result().at == pytest.approx(s2 + 0.15, abs=2e-4)
    assert not m2.done()
    await rig.clock.advance_to(s2 + 7.6)
    got = m2.result()
    assert got.how == "measured" and got.at == pytest.approx(s2 + 0.15, abs=2e-4)
    assert got.measured_from == pytest.approx(s1 + 0.04 - s2, abs=2e-4)


async def test_a_step_change_of_the_path_delay_is_followed(rig: Rig) -> None:
    rig.hello()
    rig.sync()
    rig.delay = 0.06
    for _ in range(3):
        h = rig.handle()
        await rig.speak(h, (0.0, 0.3), (0.3, 0.2))
        rig.report(rig.device_onsets()[-1:])
    assert rig.cp.path_delay() == pytest.approx(0.06, abs=2e-4)
    rig.delay = 0.2
    for _ in range(2):
        h = rig.handle()
        await rig.speak(h, (0.0, 0.3), (0.3, 0.2))
        rig.report(rig.device_onsets()[-1:])
    assert rig.cp.path_delay() == pytest.approx(0.2, abs=2e-4)


async def _predicted_at(rig: Rig, delay: float) -> None:
    """The next response, over a path of ``delay``, fires predicted at its start + ``delay``."""
    rig.delay = delay
    h = rig.handle()
    v = client_playout.heard(h)
    start = await rig.speak(h, (0.0, 0.3), (0.3, 0.2))
    assert v.result().how == "predicted"
    assert v.result().at == pytest.approx(start + delay, abs=2e-4)


def _jb(rig: Rig, ms: float) -> None:
    """A sync with a jitter buffer reading: its mean over the second before now."""
    rig.q += 1
    rig.call(
        client_playout.SYNC, {"v": 1, "q": rig.q, "t0": rig.client_ms(rig.clock.now), "jb": ms}
    )


async def test_the_prediction_follows_the_jitter_buffer_between_onsets(rig: Rig) -> None:
    # NetEq raised its delay by 100 ms during a silence: no onset shows it, the companion's
    # jitter buffer reading does, and the next response is predicted with it
    rig.hello()
    rig.sync()

    def jb(ms: float) -> None:
        _jb(rig, ms)

    jb(40.0)
    rig.delay = 0.25
    h = rig.handle()
    s1 = await rig.speak(h, (0.0, 0.3), (0.3, 0.2))
    await rig.clock.advance_to(rig.clock.now + 0.5)  # the device has played it
    rig.report(rig.device_onsets()[-1:])
    assert rig.cp.path_delay() == pytest.approx(0.25, abs=2e-4)
    await rig.clock.advance_to(s1 + 0.25 + 2.0)
    jb(42.0)  # within the noise of a reading: moves it by as much, no more
    assert rig.cp.path_delay() == pytest.approx(0.252, abs=2e-4)
    jb(140.0)
    await _predicted_at(rig, 0.35)
    # its own onset then matches at the new delay, which the old one had missed by 100 ms
    await rig.clock.advance_to(rig.clock.now + 0.5)  # the device has played it
    rig.report(rig.device_onsets()[-1:])
    assert rig.cp.path_delay() == pytest.approx(0.35, abs=2e-4)


async def test_the_jitter_buffer_at_a_match_is_read_between_the_readings_around_it(
    rig: Rig,
) -> None:
    """After a step of the network delay NetEq's delay rises fast: the reading at hand when an
    onset matched still averaged the second before; the one after it shows the rise. The
    delay at the match is read between the two, so the prediction does not count the rise
    since the first reading twice (B8's step sessions: 22-27 ms late)."""
    rig.hello()
    rig.sync()
    _jb(rig, 40.0)  # dated 0.5 s before now
    rig.delay = 0.33
    h = rig.handle()
    await rig.speak(h, (0.0, 0.3), (0.3, 0.2))
    await rig.clock.advance_to(rig.clock.now + 0.5)  # the device has played it
    rig.report(rig.device_onsets()[-1:])
    assert rig.cp.path_delay() == pytest.approx(0.33, abs=2e-4)
    comp = rig.cp._companion
    assert comp is not None
    at = comp.matches[-1].at  # the onset's device time
    mid_before = comp.jb.points[-1][0]
    await rig.clock.advance_to(at + 0.9)
    _jb(rig, 100.0)  # dated 0.4 s after the onset's device time
    mid_after = comp.jb.points[-1][0]
    assert mid_before < mid_after - 1.0 < at < mid_after
    # the poll a second before it had read within 10 ms of 40 (else it had sent it): from
    # there the delay rose to 100 at the reading's own time
    then = 40.0 + 60.0 * (at - (mid_after - 1.0))
    await rig.clock.advance_to(rig.clock.now + 1.0)
    _jb(rig, 170.0)
    assert rig.cp.path_delay() == pytest.approx(0.33 + (170.0 - then) / 1000, abs=2e-4)


def test_between_sparse_readings_the_jitter_buffer_held_until_a_second_before_the_later() -> None:
    """The companion sends a reading only when it moved 10 ms or more: 20 s without one means
    the delay held, and a delay matched 1.5 s before the next reading is moved by the whole
    change, not by a line drawn across the 20 s. Before the first reading kept: unknown."""
    jb = client_playout._service._Readings()
    jb.add(0.040, 5.0)
    jb.add(0.160, 25.5)
    assert jb.at(4.0) is None
    assert jb.at(24.0) == pytest.approx(0.040)
    assert jb.at(24.5) == pytest.approx(0.040)
    assert jb.at(25.0) == pytest.approx(0.100)
    assert jb.at(26.0) == pytest.approx(0.160)
    jb.add(0.100, 26.0)  # the next poll: half a second apart, a line between them
    assert jb.at(25.75) == pytest.approx(0.130)
    assert jb.latest == pytest.approx(0.100)


def _ad(rig: Rig, ms: float, missed: int, jb: float | None = None) -> None:
    """A sync with the audio the jitter buffer added so far (and packets missed), at now."""
    rig.q += 1
    payload: dict[str, object] = {
        "v": 1,
        "q": rig.q,
        "t0": rig.client_ms(rig.clock.now),
        "ad": [ms, missed],
    }
    if jb is not None:
        payload["jb"] = jb
    rig.call(client_playout.SYNC, payload)


async def _played_and_matched(rig: Rig, delay: float) -> float:
    """A response over a path of ``delay``, played by the device, its onset reported and
    matched; its start."""
    rig.delay = delay
    h = rig.handle()
    start = await rig.speak(h, (0.0, 0.3), (0.3, 0.2))
    await rig.clock.advance_to(rig.clock.now + 0.5)  # the device has played it
    rig.report(rig.device_onsets()[-1:])
    return start


async def test_the_prediction_follows_the_audio_the_jitter_buffer_added(rig: Rig) -> None:
    """A step of the network delay: the packets come 140 ms later, NetEq conceals and
    stretches until they come, and the device plays on with 140 ms more delay. Its buffer's
    delay (`jb`) is back where it was; the audio it added (`ad`) shows all of it, and the
    next response is predicted with it (B8's step sessions: 5-20 ms early with `jb`)."""
    rig.hello()
    rig.sync()
    _ad(rig, 54.0, 3, jb=40.0)
    await _played_and_matched(rig, 0.18)
    assert rig.cp.path_delay() == pytest.approx(0.18, abs=2e-4)
    await rig.clock.advance_to(rig.clock.now + 3.0)
    _ad(rig, 194.0, 3, jb=45.0)  # 140 ms made up, no packet missed; jb 5 ms more
    assert rig.cp.path_delay() == pytest.approx(0.32, abs=2e-4)
    await _predicted_at(rig, 0.32)


async def test_with_packets_missed_the_prediction_follows_the_jitter_buffer_delay(
    rig: Rig,
) -> None:
    """Concealment that stands in for a lost packet moves no delay: across readings whose
    missed packets differ, `ad` is not used, `jb` is."""
    rig.hello()
    rig.sync()
    _ad(rig, 54.0, 3, jb=40.0)
    await _played_and_matched(rig, 0.18)
    await rig.clock.advance_to(rig.clock.now + 3.0)
    _ad(rig, 94.0, 7, jb=52.0)  # four packets lost: 40 ms concealed for them
    assert rig.cp.path_delay() == pytest.approx(0.192, abs=2e-4)
    # a match after the losses: ad counts again from there
    await _played_and_matched(rig, 0.192)
    await rig.clock.advance_to(rig.clock.now + 3.0)
    _ad(rig, 114.0, 7)  # 20 ms added with none missed
    comp = rig.cp._companion
    assert comp is not None
    # the older match still crosses the losses (jb: +12 ms); the newer one moves by ad
    assert sorted(round(d, 4) for d in comp.delays) == [0.18, 0.192]
    assert rig.cp.path_delay() == pytest.approx(0.202, abs=2e-4)


async def test_a_companion_that_sends_no_jitter_buffer_reading_is_predicted_as_before(
    rig: Rig,
) -> None:
    rig.hello()
    rig.sync(rx=40.0)
    rig.delay = 0.25
    h = rig.handle()
    await rig.speak(h, (0.0, 0.3), (0.3, 0.2))
    await rig.clock.advance_to(rig.clock.now + 0.5)  # the device has played it
    rig.report(rig.device_onsets()[-1:])
    rig.sync(rx=140.0)  # rx serves the prior only
    assert rig.cp.path_delay() == pytest.approx(0.25, abs=2e-4)


async def test_without_a_companion_it_is_unavailable_when_playout_starts(rig: Rig) -> None:
    h = rig.handle()
    v = client_playout.heard(h)
    m = client_playout.heard_measured(h)
    await rig.speak(h, (0.3, 0.1))
    assert v.result() is client_playout.UNAVAILABLE
    assert m.result() is client_playout.UNAVAILABLE
    # and the tap measured nothing
    assert rig.cp.log.onsets == []


async def test_a_response_that_never_played_is_unavailable(rig: Rig) -> None:
    rig.hello()
    rig.sync()
    h = rig.handle()
    v, m = client_playout.heard(h), client_playout.heard_measured(h)
    h.started(None)
    await asyncio.sleep(0)
    assert v.result() == m.result() == client_playout.UNAVAILABLE


async def test_a_companion_that_leaves_settles_what_waits(rig: Rig) -> None:
    rig.hello()
    rig.sync()
    h = rig.handle()
    v, m = client_playout.heard(h), client_playout.heard_measured(h)
    h.started(rig.clock.now)
    await asyncio.sleep(0)
    assert not v.done()
    rig.room.emit("participant_disconnected", SimpleNamespace(identity="user"))
    assert v.result() == m.result() == client_playout.UNAVAILABLE


async def test_close_unregisters_restores_the_chain_and_settles(rig: Rig) -> None:
    rig.hello()
    rig.sync()
    h = rig.handle()
    v = client_playout.heard_measured(h)
    h.started(rig.clock.now)
    await asyncio.sleep(0)
    assert set(rig.room.local_participant.methods) == set(client_playout.METHODS)
    rig.session.emit("close", None)
    assert v.result() == client_playout.UNAVAILABLE
    assert rig.room.local_participant.methods == {}
    assert rig.session.output.audio is rig.sink


async def test_a_cancelled_view_affects_no_other_reader(rig: Rig) -> None:
    rig.hello()
    rig.sync()
    h = rig.handle()
    a, b = client_playout.heard(h), client_playout.heard(h)
    a.cancel()
    await rig.speak(h, (0.3, 0.2))
    assert b.result().how == "predicted"


async def test_enable_twice_is_the_same_object(rig: Rig) -> None:
    assert client_playout.enable(rig.session, rig.room) is rig.cp


async def test_clear_buffer_drops_onsets_that_never_left(rig: Rig) -> None:
    rig.hello()
    rig.sync()
    h = rig.handle()
    # frames pushed faster than real time: their send times lie ahead of the clock
    for f in frames(0.0, 0.3) + frames(0.3, 0.1):
        await rig.tap.capture_frame(f)
        h.started(T_START)
    assert rig.cp.log.onsets and rig.cp.log.onsets[0].onset.at > rig.clock.now
    rig.tap.clear_buffer()
    assert rig.cp.log.onsets[0].dropped
    assert rig.sink.cleared == 1


# -- security and bad input: each one logs once and changes nothing --


def _state(r: Rig) -> tuple[Any, ...]:
    comp = r.cp._companion
    if comp is None:
        return (None,)
    return (comp.sid, comp.last_q, comp.clock.best, tuple(comp.delays), len(comp.pending))


def _rejected(r: Rig, method: str, payload: Any, caller: str = "user") -> int:
    with pytest.raises(rtc.RpcError) as err:
        r.call(method, payload, caller)
    return err.value.code


async def test_calls_from_another_participant_are_refused(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.hello()
    rig.sync()
    before = _state(rig)
    with caplog.at_level(logging.WARNING, "livekit_segments.client_playout"):
        for _ in range(3):
            assert (
                _rejected(
                    rig,
                    client_playout.HELLO,
                    {"v": 1, "sid": "evil-0001", "path": "plugin"},
                    "mallory",
                )
                == 2002
            )
    assert _state(rig) == before
    lines = [r for r in caplog.records if "mallory" in r.getMessage()]
    assert len(lines) == 1 and "not the participant" in lines[0].getMessage()


async def test_without_a_linked_participant_nobody_is_accepted() -> None:
    r = Rig(linked=None)
    assert _rejected(r, client_playout.HELLO, {"v": 1, "sid": "abcdefgh", "path": "plugin"}) == 2002
    r2 = Rig(linked=None, identity="user")
    assert r2.hello()["v"] == 1
    r.cp.close()
    r2.cp.close()


@pytest.mark.parametrize(
    ("method", "payload", "kind"),
    [
        ("report", "x" * 1025, "size"),
        ("report", "{not json", "malformed"),
        ("report", "[1, 2]", "malformed"),
        ("report", {"v": 1, "q": 99, "o": [[1, 2, 3]]}, "malformed"),
        ("report", {"v": 1, "q": 99, "o": [[1, 2, "no spaces"]]}, "malformed"),
        ("report", {"v": 1, "q": 99, "o": [[1, 2, "A" * 65]]}, "malformed"),
        ("report", {"v": 1, "q": 99, "o": [[1, 2, "AB", 4]]}, "malformed"),
        ("report", {"v": 1, "q": 99, "o": [[float("nan"), 2]]}, "malformed"),
        ("report", '{"v": 1, "q": 99, "o": [[NaN, 2]]}', "malformed"),
        ("report", {"v": 1, "q": 99, "o": [[1, 70000]]}, "malformed"),
        ("report", {"v": 1, "q": 99, "o": [[1, 2]] * 9}, "malformed"),
        ("report", {"v": 1, "q": True, "o": [[1, 2]]}, "malformed"),
        ("sync", {"v": 1, "q": 99, "t0": "soon"}, "malformed"),
        ("sync", {"v": 1, "q": 99, "t0": 1, "prev": [1]}, "malformed"),
        ("sync", {"v": 1, "q": 99, "t0": 1, "ad": 12.5}, "malformed"),
        ("sync", {"v": 1, "q": 99, "t0": 1, "ad": [12.5]}, "malformed"),
        ("sync", {"v": 1, "q": 99, "t0": 1, "ad": [12.5, 1.5]}, "malformed"),
        ("sync", {"v": 1, "q": 99, "t0": 1, "ad": [12.5, True]}, "malformed"),
        ("sync", {"v": 1, "q": 99, "t0": 1, "ad": [2e7, 1]}, "malformed"),
        ("sync", {"v": 1, "q": 99, "t0": 1, "ad": ["12", 1]}, "malformed"),
        ("hello", {"v": 1, "sid": "short", "path": "plugin"}, "malformed"),
        ("hello", {"v": 1, "sid": "abcdefghij", "path": "ears"}, "malformed"),
        ("hello", {"v": 1, "sid": "abcdefghij", "path": "plugin", "lv": 2}, "malformed"),
        ("hello", {"v": 1, "sid": "abcdefghij", "path": "plugin", "lv": True}, "malformed"),
    ],
)
async def test_malformed_payloads_are_refused(
    rig: Rig, caplog: pytest.LogCaptureFixture, method: str, payload: Any, kind: str
) -> None:
    rig.hello()
    rig.sync()
    before = _state(rig)
    name = f"lkseg.playout.{method}"
    with caplog.at_level(logging.WARNING, "livekit_segments.client_playout"):
        assert _rejected(rig, name, payload) == 2002
        assert _rejected(rig, name, payload) == 2002
    assert _state(rig) == before
    lines = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(lines) == 1 and f"({kind})" in lines[0].getMessage()


async def test_an_unsupported_version_is_named(rig: Rig) -> None:
    assert _rejected(rig, client_playout.HELLO, {"v": 2, "sid": "abcdefghij"}) == 2001
    assert _state(rig) == (None,)


async def test_replays_are_refused(rig: Rig, caplog: pytest.LogCaptureFixture) -> None:
    rig.hello("sid-aaaa")
    rig.sync()
    before = _state(rig)
    with caplog.at_level(logging.WARNING, "livekit_segments.client_playout"):
        # the same sequence number again, and an older one
        assert _rejected(rig, client_playout.SYNC, {"v": 1, "q": rig.q, "t0": 1.0}) == 2002
        assert _rejected(rig, client_playout.REPORT, {"v": 1, "q": 1, "o": [[1.0, 300]]}) == 2002
        # hello again with the current sid
        assert (
            _rejected(rig, client_playout.HELLO, {"v": 1, "sid": "sid-aaaa", "path": "plugin"})
            == 2002
        )
    assert _state(rig) == before
    assert [r.getMessage().count("(replay)") for r in caplog.records] == [1]


async def test_future_dated_and_stale_reports_are_refused(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.hello()
    rig.sync()
    h = rig.handle()
    m = client_playout.heard_measured(h)
    await rig.speak(h, (0.0, 0.1), (0.3, 0.3))
    before = _state(rig)
    onset = rig.cp.log.onsets[0]
    with caplog.at_level(logging.WARNING, "livekit_segments.client_playout"):
        with pytest.raises(rtc.RpcError):
            rig.report([(rig.clock.now + 1.0, onset.onset.gap)])
        with pytest.raises(rtc.RpcError):
            rig.report([(rig.clock.now - 31.0, onset.onset.gap)])
    assert _state(rig)[:3] == before[:3]  # q unchanged too: the next report may use q+1
    assert onset.device is None and not m.done()
    kinds = sorted(re.search(r"\((\w+)\):", r.getMessage()).group(1) for r in caplog.records)  # type: ignore[union-attr]
    assert kinds == ["future", "stale"]


async def test_a_flooding_client_is_rate_limited_with_one_line(
    rig: Rig, caplog: pytest.LogCaptureFixture
) -> None:
    rig.hello()
    rig.sync()
    with caplog.at_level(logging.WARNING, "livekit_segments.client_playout"):
        codes = []
        for _ in range(100):
            try:
                rig.report([(rig.clock.now - 1.0, 0.3)])
            except rtc.RpcError as e:
                codes.append(e.code)
    # the bucket let the burst through (no onset to match: nothing changed), then refused
    assert codes and set(codes) == {2002}
    rate_lines = [r for r in caplog.records if "(rate)" in r.getMessage()]
    assert len(rate_lines) == 1
    assert rig.cp.path_delay() == pytest.approx(0.05 + CODEC_DELAY, abs=2e-4)  # still the prior


async def test_a_client_clock_hours_off_that_jumps_is_followed(rig: Rig) -> None:
    global CLIENT_SKEW
    rig.hello()
    rig.sync()
    h = rig.handle()
    m = client_playout.heard_measured(h)
    old = CLIENT_SKEW
    try:
        CLIENT_SKEW = old + 7200.0  # the client's wall clock jumps two hours
        rig.sync()
        await rig.speak(h, (0.0, 0.1), (0.3, 0.3))
        rig.report(rig.device_onsets())
        await asyncio.sleep(0)
    finally:
        CLIENT_SKEW = old
    assert m.result().how == "measured"
    assert m.result().path_delay == pytest.approx(rig.delay, abs=2e-4)


def test_detector_matches_the_shared_cases() -> None:
    """The companion's unit tests check its detector against the same file."""
    from pathlib import Path

    cases = json.loads((Path(__file__).parent / "fixtures" / "onset_cases.json").read_text())
    for case in cases["cases"]:
        det = OnsetDetector(threshold=case["threshold"], gap=case["gap"])
        found = []
        for k, block in enumerate(case["blocks"]):
            amp = np.abs(np.array(block, dtype=np.float64)).max(axis=0)
            start = case["start"] + k * case["block"] / case["sample_rate"]
            found += [[o.at, o.gap] for o in det.feed(amp, start, case["sample_rate"])]
        flat = [x for pair in found for x in pair]
        want = [x for pair in case["onsets"] for x in pair]
        assert flat == pytest.approx(want, abs=1e-9), case["name"]


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """A 140 Hz buzz whose loudness changes every few ms, after a slow attack: an envelope
    with features, as speech has (a steady tone has none to place)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SR)
    t = np.arange(n) / SR
    steps = np.repeat(rng.uniform(0.05, 0.6, n // 240 + 1), 240)[:n]
    attack = np.minimum(t / 0.015, 1.0)
    x = steps * attack * np.sign(np.sin(2 * np.pi * 140 * t)) * np.abs(np.sin(2 * np.pi * 140 * t))
    return np.asarray(x, dtype=np.float64)


def test_an_envelope_is_found_where_the_device_left_out_the_start() -> None:
    x = np.abs(_speechlike(0.2, 3))
    onset = int(np.flatnonzero(x >= 0.01)[0])
    for left_out_ms in (0.0, 4.0, 9.0, 17.5):
        k = onset + int(left_out_ms * SR / 1000)
        env = encode_envelope(x[k:], SR, 32)
        assert len(env) == 32
        lead = 96
        found = envelope_shift(np.concatenate([np.zeros(lead), x[onset:]]), lead, SR, env)
        assert found is not None
        shift, score = found
        assert shift * 1000 == pytest.approx(left_out_ms, abs=0.1)
        assert score > 0.99
    # one character per 1 ms bin, 1.5 dB steps: full scale is level 64 (clamped to 63)
    assert encode_envelope(np.full(480, 0.5), SR, 4) == "8888"
    assert decode_envelope("8A") == pytest.approx([10 ** ((60 * 1.5 - 96) / 20), 0.0])


def test_the_envelope_matches_the_shared_cases() -> None:
    """The companion's unit tests encode the same cases (client/test/detector.test.ts)."""
    from pathlib import Path

    cases = json.loads((Path(__file__).parent / "fixtures" / "envelope_cases.json").read_text())
    for case in cases["cases"]:
        blocks = [np.abs(np.array(b, dtype=np.float64)).max(axis=0) for b in case["blocks"]]
        amp = np.concatenate(blocks)[case["onset_index"] :]
        assert encode_envelope(amp, case["sample_rate"], case["bins"]) == case["envelope"]


async def test_the_devices_envelope_corrects_an_onset_whose_start_was_left_out(
    rig: Rig,
) -> None:
    """WebRTC can mute the first milliseconds of sound after silence: the device's first
    audible sample is then later audio. With its envelope, the agent still measures the path
    from its own first audible sample; an older companion's bare onset is taken as it is."""
    rig.hello()
    rig.sync()
    x = _speechlike(0.4, 7)
    pcm = (np.concatenate([np.zeros(SR // 10), x]) * 32767).astype(np.int16)
    left_out = 0.009
    for with_envelope in (True, False):
        h = rig.handle()
        m = client_playout.heard_measured(h)
        s = await rig.speak_pcm(h, pcm)
        sent = rig.cp.log.onsets[-1]
        first = SR // 10 + int(np.flatnonzero(np.abs(pcm[SR // 10 :]) >= 328)[0])
        assert sent.onset.at == pytest.approx(s + first / SR, abs=1e-4)
        i = first + int(left_out * SR)
        amp = np.abs(pcm[i:].astype(np.float64)) / 32768
        device = sent.onset.at + rig.delay + left_out
        await rig.clock.advance_to(device + 0.5)
        if with_envelope:
            rig.report([(device, sent.onset.gap, encode_envelope(amp, SR, 32))])
        else:
            rig.report([(device, sent.onset.gap)])
        await asyncio.sleep(0)
        got = m.result()
        assert got.how == "measured"
        if with_envelope:
            assert sent.mute == pytest.approx(left_out, abs=1e-4)
            assert got.path_delay == pytest.approx(rig.delay, abs=2e-4)
        else:
            assert sent.mute is None
            assert got.path_delay == pytest.approx(rig.delay + left_out, abs=2e-4)
        await rig.clock.advance(1.0)


async def test_an_envelope_that_does_not_fit_leaves_the_onset_as_it_is(rig: Rig) -> None:
    rig.hello()
    rig.sync()
    h = rig.handle()
    m = client_playout.heard_measured(h)
    pcm = (np.concatenate([np.zeros(SR // 10), _speechlike(0.4, 7)]) * 32767).astype(np.int16)
    await rig.speak_pcm(h, pcm)
    sent = rig.cp.log.onsets[-1]
    device = sent.onset.at + rig.delay
    await rig.clock.advance_to(device + 0.5)
    # another sound's envelope (a steady loud start, then silence): nothing fits it
    rig.report([(device, sent.onset.gap, "8" * 4 + "A" * 28)])
    await asyncio.sleep(0)
    assert sent.mute is None
    assert m.result().path_delay == pytest.approx(rig.delay, abs=2e-4)


async def test_the_prior_takes_the_media_transports_one_way_delay(rig: Rig) -> None:
    rig.hello()
    rig.sync(rtt=0.02, rx=30.0)
    # a frame's first sample travels 10 ms more than the stats show, plus 6.5 ms look-ahead
    assert CODEC_DELAY == pytest.approx(0.0165)
    assert rig.cp.path_delay() == pytest.approx(0.01 + 0.03 + CODEC_DELAY, abs=1e-6)
    rig.q += 1
    rig.call(
        client_playout.SYNC, {"v": 1, "q": rig.q, "t0": rig.client_ms(rig.clock.now), "net": 45}
    )
    assert rig.cp.path_delay() == pytest.approx(0.045 + 0.03 + CODEC_DELAY, abs=1e-6)


# -- the sink is the device (console) --


class DeviceRig:
    def __init__(self, latency: Callable[[], float | None]) -> None:
        self.clock = VirtualClock()
        self.session = FakeSession(FakeSink(self.clock))
        self.out = client_playout.enable_device_output(
            self.session, latency, _clock=self.clock, _timer=self.clock.call_at
        )

    def handle(self) -> FakeHandle:
        h = FakeHandle()
        self.session.emit("speech_created", SimpleNamespace(speech_handle=h))
        return h


async def test_a_device_sink_adds_the_latency_its_audio_api_reports() -> None:
    rig = DeviceRig(lambda: 0.045)
    h = rig.handle()
    v, m = client_playout.heard(h), client_playout.heard_measured(h)
    h.started(rig.clock.now)
    await asyncio.sleep(0)
    expected = Heard(at=T_START + 0.045, how="measured", path_delay=0.045, measured_from=0.0)
    assert m.result() == expected
    assert not v.done()  # fires when the device plays it
    await rig.clock.advance(0.044)
    assert not v.done()
    await rig.clock.advance(0.002)
    assert v.result() == expected
    rig.out.close()


async def test_a_device_sink_without_a_latency_is_unavailable() -> None:
    rig = DeviceRig(lambda: None)
    h, never = rig.handle(), rig.handle()
    views = [client_playout.heard(h), client_playout.heard_measured(h)]
    views += [client_playout.heard(never), client_playout.heard_measured(never)]
    h.started(rig.clock.now)
    never.started(None)
    await asyncio.sleep(0)
    assert [v.result() for v in views] == [client_playout.UNAVAILABLE] * 4
    with pytest.raises(RuntimeError, match="enable_device_output"):
        client_playout.enable(rig.session, FakeRoom())
    rig.session.emit("close", None)
    assert rig.out.closed


def test_console_output_latency_reads_the_consoles_portaudio_delay(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    legacy = pytest.importorskip("livekit.agents.cli._legacy")
    monkeypatch.setattr(legacy.AgentsConsole, "_instance", None, raising=False)
    assert client_playout.console_output_latency() is None
    monkeypatch.setattr(
        legacy.AgentsConsole, "_instance", SimpleNamespace(_output_delay=0.0213), raising=False
    )
    assert client_playout.console_output_latency() == 0.0213


async def test_the_linked_participant_is_read_at_each_call() -> None:
    r = Rig(linked="alice")
    assert _rejected(r, client_playout.HELLO, {"v": 1, "sid": "abcdefgh", "path": "plugin"}) == 2002
    r.session.room_io.linked_participant = SimpleNamespace(identity="user")
    assert r.hello()["v"] == 1
    r.cp.close()


async def test_an_instant_round_trip_rounded_below_zero_still_counts(rig: Rig) -> None:
    rig.hello()
    t0 = rig.client_ms(rig.clock.now)
    rig.call(client_playout.SYNC, {"v": 1, "q": 1, "t0": t0})
    # t3 is t0 rounded down by the client's 0.1 ms rounding
    rig.call(client_playout.SYNC, {"v": 1, "q": 2, "t0": t0, "prev": [1, t0 - 0.05]})
    assert rig.cp._companion is not None and rig.cp._companion.clock.uncertainty == 0.0


@pytest.mark.parametrize(
    ("seed", "unseen", "after"),
    [(1, 0.0, 0.2), (2, 0.0, 0.2), (3, 0.2, 0.2), (4, 0.2, 0.2)]
    + [(s, u, 0.6) for s in (5, 6, 7) for u in (0.0, 0.2)]
    + [(8, 0.2, 0.45), (9, 0.0, 0.45)]
    + [(10, 0.0, 1.0), (11, 0.2, 1.0)],
)
async def test_matching_is_never_wrong_over_speech_like_audio_with_a_step(
    seed: int, unseen: float, after: float
) -> None:
    """Many onsets per response, pauses shorter and longer than the gap, back-to-back
    responses, device jitter, gaps stretched by the jitter buffer, a step of the path delay
    from 60 ms to `after` (0.45 s and more: beyond the matcher's window, re-acquired), and
    (`unseen`) onsets the device reports that the agent has no record of: every match is the
    right onset, and the estimate follows the step."""
    rng = np.random.default_rng(seed)
    rig = Rig()
    rig.hello()
    rig.sync()
    step_at = T_START + 20.0

    def d(t: float) -> float:
        return 0.06 if t < step_at else after

    truth: dict[int, float] = {}  # id(sent onset) -> its true device time
    sent: list[Any] = []  # every onset the agent sent (its log keeps only 30 s)
    prev_d = 0.06
    while rig.clock.now < T_START + 40.0:
        h = rig.handle()
        chunks: list[tuple[float, float]] = [(0.0, float(rng.uniform(0.02, 0.15)))]
        for _ in range(int(rng.integers(2, 6))):
            chunks.append((0.3, float(rng.uniform(0.1, 0.6))))
            chunks.append((0.0, float(rng.choice([0.06, 0.1, 0.24, 0.3, 0.5]))))
        await rig.speak(h, *chunks)
        if rng.random() < 0.7:
            await rig.clock.advance(float(rng.uniform(0.3, 1.5)))  # else back to back
        await rig.clock.advance(d(rig.clock.now) + 0.05)  # the device played what was sent
        batch = []
        new = [o for o in rig.cp.log.onsets if id(o) not in truth]
        sent += new
        for o in new:
            if rng.random() < unseen:
                o.dropped = True  # as if the agent had not analyzed it (e.g. a paused output)
            dev = o.onset.at + d(o.onset.at) + float(rng.normal(0, 0.002))
            gap = o.onset.gap + (d(o.onset.at) - prev_d) + float(rng.normal(0, 0.008))
            prev_d = d(o.onset.at)
            truth[id(o)] = dev
            batch.append((dev, min(max(gap, 0.0), 60.0)))  # the companion caps it too
        for k in range(0, len(batch), 8):
            rig.report(batch[k : k + 8])
            await rig.clock.advance(0.3)  # the companion's report rate; refills the bucket
    matched = [o for o in sent if o.device is not None]
    wrong = [o for o in matched if abs(o.device - truth[id(o)]) > 1e-3]  # type: ignore[operator]
    assert wrong == []
    assert len(matched) >= 0.75 * (1 - unseen) * len(truth)
    assert rig.cp.path_delay() == pytest.approx(after, abs=0.01)
    rig.cp.close()


async def test_a_step_is_matched_by_a_long_silence_alone(rig: Rig) -> None:
    """After a step of 80 ms, the gap before a turn grows by those 80 ms too (more than the
    tight 30 ms), but it is still the only onset whose long gap agrees."""
    rig.hello()
    rig.sync()
    rig.delay = 0.06
    h = rig.handle()
    await rig.speak(h, (0.0, 0.1), (0.3, 0.3), (0.0, 0.3), (0.3, 0.3))
    rig.report(rig.device_onsets())
    assert rig.cp.path_delay() == pytest.approx(0.06, abs=1e-3)
    await rig.clock.advance(2.5)
    h2 = rig.handle()
    m2 = client_playout.heard_measured(h2)
    start2 = await rig.speak(h2, (0.0, 0.05), (0.3, 0.3))
    onset = rig.cp.log.onsets[-1]
    rig.report([(onset.onset.at + 0.14, onset.onset.gap + 0.08)])
    await asyncio.sleep(0)
    assert onset.device is not None
    assert m2.result().at == pytest.approx(start2 + 0.14, abs=2e-4)
    # the next response is placed by the new delay at once (one onset per response)
    assert rig.cp.path_delay() == pytest.approx(0.14, abs=2e-4)


async def test_enable_before_the_audio_output_exists_says_so(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = VirtualClock()
    session = FakeSession(FakeSink(clock))
    session.output.audio = None
    with caplog.at_level(logging.WARNING, "livekit_segments.client_playout"):
        cp = client_playout.enable(session, FakeRoom(), _clock=clock, _timer=clock.call_at)
    assert "after `await session.start" in caplog.text
    cp.close()


@pytest.mark.parametrize("new_delay", [0.55, 0.62])
async def test_a_jump_beyond_the_matchers_window_is_reacquired_within_two_responses(
    rig: Rig, new_delay: float
) -> None:
    """The path moves by more than the 60 ms window and more than a match by gap alone may
    reveal (e.g. the jitter buffer jumping by 380 ms): the onsets of the first response after
    it line up at the new lag, so the second response is predicted with the new delay and
    every match is the right onset."""
    rig.hello()
    rig.sync()
    rig.delay = 0.2
    for _ in range(3):
        h = rig.handle()
        await rig.speak(h, (0.0, 0.05), (0.3, 0.3), (0.0, 0.3), (0.3, 0.4), (0.0, 0.25), (0.3, 0.2))
        rig.report(rig.device_onsets()[-3:])
        await rig.clock.advance(1.0)
    assert rig.cp.path_delay() == pytest.approx(0.2, abs=2e-4)
    rig.delay = new_delay
    before = len(rig.cp.log.onsets)
    h1 = rig.handle()
    m1 = client_playout.heard_measured(h1)
    await rig.speak(h1, (0.0, 0.05), (0.3, 0.3), (0.0, 0.3), (0.3, 0.4), (0.0, 0.25), (0.3, 0.2))
    await rig.clock.advance(max(new_delay, 0.2) + 0.05)
    # one report per onset, as they become due on the device
    for t, gap in rig.device_onsets()[before:]:
        rig.report([(t, gap + (new_delay - 0.2 if t == rig.device_onsets()[before][0] else 0))])
    assert rig.cp.path_delay() == pytest.approx(new_delay, abs=2e-4)
    got = m1.result()
    assert got.how == "measured" and got.path_delay == pytest.approx(new_delay, abs=2e-4)
    matched = [o for o in rig.cp.log.onsets if o.device is not None]
    assert all(
        o.device == pytest.approx(o.onset.at + d, abs=2e-4)
        for o, d in _delays(rig, matched, before, new_delay)
    )
    await rig.clock.advance(1.0)
    h2 = rig.handle()
    v2 = client_playout.heard(h2)
    start2 = await rig.speak(h2, (0.0, 0.05), (0.3, 0.3))
    await rig.clock.advance(new_delay + 0.05)
    assert v2.result().how == "predicted"
    assert v2.result().at == pytest.approx(start2 + new_delay, abs=2e-4)


def _delays(rig: Rig, matched: list[Any], before: int, new_delay: float) -> list[tuple[Any, float]]:
    index = {id(o): k for k, o in enumerate(rig.cp.log.onsets)}
    return [(o, new_delay if index[id(o)] >= before else 0.2) for o in matched]


class BufferingSink(FakeSink):
    """Like RoomIO's output with its forwarding channel: a segment may be captured and
    flushed whole while the previous one still plays; its playback_started comes when its
    first frame reaches the source (the test says when)."""

    async def capture_frame(self, frame: rtc.AudioFrame) -> None:
        await io.AudioOutput.capture_frame(self, frame)
        self.frames += 1


async def _speak_now(rig: Rig, h: FakeHandle, *chunks: tuple[float, float]) -> float:
    """A segment into an idle BufferingSink: it starts playing at once."""
    start = rig.clock.now
    first = True
    for amp, secs in chunks:
        for f in frames(amp, secs):
            await rig.tap.capture_frame(f)
            if first:
                first = False
                rig.sink.on_playback_started(created_at=start)
                h.started(start)
            await rig.clock.advance(0.02)
    rig.tap.flush()
    return start


async def test_a_segment_flushed_before_its_playback_started_is_still_analyzed() -> None:
    """Back to back with a buffering sink: response 2 is captured and flushed while response
    1 plays. Its onsets are on the send clock, and its audio counts for the gap of the
    next onset (the device hears it: a gap spanning it would never match)."""
    rig = Rig(sink=BufferingSink)
    rig.hello()
    rig.sync()
    h1, h2, h3 = rig.handle(), rig.handle(), rig.handle()
    s1 = rig.clock.now
    for f in frames(0.3, 0.5):
        await rig.tap.capture_frame(f)
    rig.tap.flush()
    rig.sink.on_playback_started(created_at=s1)
    h1.started(s1)
    # response 2 (silence, speech, a pause, speech) captured and flushed at once
    for amp, secs in ((0.0, 0.1), (0.3, 0.3), (0.0, 0.3), (0.3, 0.3)):
        for f in frames(amp, secs):
            await rig.tap.capture_frame(f)
    rig.tap.flush()
    await rig.clock.advance_to(s1 + 0.5)
    rig.sink.on_playback_started(created_at=s1 + 0.5)
    h2.started(s1 + 0.5)
    await rig.clock.advance_to(s1 + 1.5)
    await rig.clock.advance(1.0)
    s3 = await _speak_now(rig, h3, (0.3, 0.2))
    ats = [o.onset.at for o in rig.cp.log.onsets]
    gaps = [o.onset.gap for o in rig.cp.log.onsets]
    # response 2's start follows response 1 after 0.1 s: no onset; its pause makes one
    assert ats == pytest.approx([s1, s1 + 1.2, s3], abs=1e-3)
    assert gaps[1:] == pytest.approx([0.3, s3 - (s1 + 1.5)], abs=1e-3)
    seg2 = rig.cp.log.segment_at(s1 + 0.5)
    assert seg2 is not None and seg2.first_audible == pytest.approx(s1 + 0.6, abs=1e-3)
    rig.cp.close()


async def test_a_clear_drops_segments_that_waited_in_the_sinks_queue() -> None:
    rig = Rig(sink=BufferingSink)
    rig.hello()
    rig.sync()
    s1 = rig.clock.now
    for f in frames(0.3, 0.3):
        await rig.tap.capture_frame(f)
    rig.tap.flush()
    rig.sink.on_playback_started(created_at=s1)
    for amp, secs in ((0.0, 0.3), (0.3, 0.3)):  # never plays: cleared while queued
        for f in frames(amp, secs):
            await rig.tap.capture_frame(f)
    rig.tap.flush()
    await rig.clock.advance(0.2)
    rig.tap.clear_buffer()
    await rig.clock.advance(1.0)
    h3 = rig.handle()
    s3 = await _speak_now(rig, h3, (0.0, 0.06), (0.3, 0.2))  # its playback_started is its own
    assert rig.cp.log.segment_at(s3) is not None
    assert [o.onset.at for o in rig.cp.log.onsets] == pytest.approx([s1, s3 + 0.06], abs=1e-3)
    rig.cp.close()


async def test_a_back_to_back_response_is_measured_once_the_device_played_it(rig: Rig) -> None:
    """No onset of its own: measured from the previous response's audio as soon as its own
    audio has played out on the device (and its earlier onsets were reported), not only at
    start + 7.5 s, which a session that ends soon after never reaches."""
    rig.hello()
    rig.sync()
    rig.delay = 0.15
    h1, h2 = rig.handle(), rig.handle()
    m2 = client_playout.heard_measured(h2)
    s1 = await rig.speak(h1, (0.0, 0.04), (0.3, 0.6))
    rig.report(rig.device_onsets())
    s2 = await rig.speak(h2, (0.3, 0.6))
    await rig.clock.advance_to(s2 + 0.6 + 0.15 + 1.0 + 0.01)
    got = m2.result()
    assert got.how == "measured" and got.at == pytest.approx(s2 + 0.15, abs=2e-4)
    assert got.measured_from == pytest.approx(s1 + 0.04 - s2, abs=2e-4)


# -- levels: a back-to-back response measured at its own start


def test_levels_line_up_with_the_agents_audio_to_the_sample() -> None:
    x = np.abs(_speechlike(0.6, 11))
    for i0, width, n in [(2400, 2, 115), (2411, 2, 115), (3000, 2, 115), (2411, 1, 210)]:
        levels = encode_envelope(x[i0:], SR, n, width)
        fit = levels_fit(x, SR, levels, i0 - 1200, i0 + 1200, width)
        assert fit is not None
        assert fit.index == pytest.approx(i0, abs=2)
        assert fit.score > 0.99 and fit.score - fit.runner_up > 0.005
    assert levels_fit(x, SR, "A" * 115, 0, 1000, 2) is None  # silence places nothing


class _Device:
    """The companion's levels of what the device played: the agent's audio `delay` later,
    plus `stretch` seconds that NetEq inserted (concealment) from `stretch_at` on."""

    def __init__(self, rig: Rig, stretch: float, stretch_at: float) -> None:
        self.rig, self.stretch, self.stretch_at = rig, stretch, stretch_at
        self.sent: list[tuple[float, np.ndarray]] = []
        self.asked: list[dict[str, Any]] = []

    def agent_time(self, device: float) -> float:
        t = device - self.rig.delay
        return t - self.stretch if t - self.stretch >= self.stretch_at else t

    async def levels(self, method: str, payload: str) -> str:
        assert method == client_playout.LEVELS
        req = json.loads(payload)
        self.asked.append(req)
        device = req["t"] / 1000 - CLIENT_SKEW
        s0, pcm = self.sent[0]
        amp = np.abs(np.concatenate([p for _, p in self.sent]).astype(np.float64)) / 32768
        i = math.ceil((self.agent_time(device) - s0) * SR)
        first = s0 + i / SR + (device - self.agent_time(device))  # the bin's own device time
        w = req.get("w", 1)
        env = encode_envelope(amp[i:], SR, req["n"], w)
        t = round((first + CLIENT_SKEW) * 1000, 1)
        return json.dumps({"v": 1, "t": t, "w": w, "lv": env})


def _levels_rig(rig: Rig, *, levels: bool, stretch: float = 0.0) -> _Device:
    """A companion that does (or, an older one, does not) serve levels, a path of 150 ms, and a
    device that answers levels requests (stretched by `stretch` from 0.5 s on)."""
    reply = rig.hello(levels=levels)
    assert reply.get("lv") == (1 if levels else None)
    rig.sync()
    rig.delay = 0.15
    device = _Device(rig, stretch=stretch, stretch_at=T_START + 0.5)
    rig.room.local_participant.remote = device.levels
    return device


async def _two_back_to_back(
    rig: Rig, device: _Device, first: float = 1.2
) -> tuple[Any, Any, float, float]:
    """A response whose onset is `first` seconds before the next one, which follows with no
    pause."""
    h1, h2 = rig.handle(), rig.handle()
    m1, m2 = client_playout.heard_measured(h1), client_playout.heard_measured(h2)
    pcm1 = (np.concatenate([np.zeros(SR // 25), _speechlike(first, 5)]) * 32767).astype(np.int16)
    pcm2 = (_speechlike(0.8, 6) * 32767).astype(np.int16)
    device.sent.append((rig.clock.now, pcm1))
    s1 = await rig.speak_pcm(h1, pcm1)
    rig.report(rig.device_onsets())
    device.sent.append((rig.clock.now, pcm2))
    s2 = await rig.speak_pcm(h2, pcm2)
    assert [s for s, _ in device.sent] == [s1, s2]
    return m1, m2, s1, s2


@pytest.mark.parametrize("first", [1.2, 0.4])
async def test_a_back_to_back_response_is_placed_by_the_devices_levels(
    rig: Rig, first: float
) -> None:
    """NetEq stretched the audio between the last onset and a back-to-back response (12 ms of
    concealment): measured from that onset it is 12 ms early; the device's levels around its
    own start place it where it played, be that onset 1.2 s or 0.4 s back."""
    device = _levels_rig(rig, levels=True, stretch=0.012)
    device.stretch_at = T_START + first / 2
    m1, m2, s1, s2 = await _two_back_to_back(rig, device, first)
    await rig.clock.advance_to(s2 + 3.0)
    got = m2.result()
    assert got.how == "measured" and got.measured_from == 0.0
    assert got.at == pytest.approx(s2 + 0.15 + 0.012, abs=2e-4)
    assert m1.result().at == pytest.approx(s1 + 0.15, abs=2e-4)
    (req,) = device.asked  # one request, for the back-to-back response only
    assert (req["n"], req["w"]) == (115, 2)  # 2 ms levels over 230 ms
    # it asked from 45 ms before where the earlier audio put the start
    assert req["t"] / 1000 - CLIENT_SKEW == pytest.approx(s2 + 0.15 - 0.045, abs=2e-4)


async def test_levels_are_asked_where_the_jitter_buffer_moved_the_response(rig: Rig) -> None:
    """NetEq made up 80 ms between the last onset and a back-to-back response (after a step
    of the network delay): the levels are asked where `ad` says the response played, not
    where the earlier onset puts it, 80 ms off (the search spans 25 ms either way: the levels
    would fit nowhere, and the response would be measured from that onset, 80 ms early)."""
    device = _levels_rig(rig, levels=True, stretch=0.08)
    device.stretch_at = T_START + 0.6
    _ad(rig, 54.0, 3)
    s1 = rig.clock.now
    rig.clock.call_at(s1 + 1.24, lambda: _ad(rig, 134.0, 3))  # read after the concealment
    _m1, m2, s1b, s2 = await _two_back_to_back(rig, device, 1.2)
    assert s1b == s1 and s2 == pytest.approx(s1 + 1.24)
    await rig.clock.advance_to(s2 + 3.0)
    got = m2.result()
    assert got.how == "measured" and got.measured_from == 0.0
    assert got.at == pytest.approx(s2 + 0.15 + 0.08, abs=2e-4)
    (req,) = device.asked
    assert req["t"] / 1000 - CLIENT_SKEW == pytest.approx(s2 + 0.15 + 0.08 - 0.045, abs=2e-4)


async def test_without_levels_a_back_to_back_response_is_measured_from_earlier_audio(
    rig: Rig,
) -> None:
    device = _levels_rig(rig, levels=False, stretch=0.012)  # an older companion: no "lv"
    _m1, m2, s1, s2 = await _two_back_to_back(rig, device)
    await rig.clock.advance_to(s2 + 3.0)
    assert rig.room.local_participant.performed == []
    got = m2.result()
    assert got.how == "measured" and got.measured_from is not None and got.measured_from < -1.0
    assert got.at == pytest.approx(s2 + 0.15, abs=2e-4)  # 12 ms early: the stretch unseen


@pytest.mark.parametrize("answer", ["error", "malformed", "width", "elsewhere", "nothing"])
async def test_a_levels_request_that_fails_falls_back_to_earlier_audio(
    rig: Rig, caplog: pytest.LogCaptureFixture, answer: str
) -> None:
    """An RPC error, a malformed reply, levels of other audio, or none: the response is
    measured from earlier audio as before, the malformed reply is logged, nothing hangs."""
    device = _levels_rig(rig, levels=True)

    async def remote(method: str, payload: str) -> str:
        if answer == "error":
            raise rtc.RpcError(1502, "Response timeout")
        if answer == "malformed":
            return json.dumps({"v": 1, "t": 5.0, "lv": "not levels!"})
        if answer == "nothing":
            return json.dumps({"v": 1, "t": None, "w": 2, "lv": ""})
        req = json.loads(payload)
        if answer == "width":  # a companion that ignored "w": its 1 ms levels cannot be placed
            return json.dumps({"v": 1, "t": req["t"], "lv": "8" * 115})
        return json.dumps({"v": 1, "t": req["t"], "w": 2, "lv": "8" * 10 + "A" * 105})

    rig.room.local_participant.remote = remote
    with caplog.at_level(logging.WARNING, logger="livekit_segments.client_playout"):
        _m1, m2, s1, s2 = await _two_back_to_back(rig, device)
        await rig.clock.advance_to(s2 + 8.0)
    assert len(rig.room.local_participant.performed) == 1
    got = m2.result()
    assert got.how == "measured" and got.measured_from is not None and got.measured_from < -1.0
    assert got.at == pytest.approx(s2 + 0.15, abs=2e-4)
    malformed = [r for r in caplog.records if "levels reply" in r.getMessage()]
    assert len(malformed) == (1 if answer in ("malformed", "width") else 0)


async def test_a_companion_that_leaves_during_a_levels_request_settles_it(rig: Rig) -> None:
    device = _levels_rig(rig, levels=True)
    never: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def remote(method: str, payload: str) -> str:
        return await never

    rig.room.local_participant.remote = remote
    _m1, m2, _s1, s2 = await _two_back_to_back(rig, device)
    await rig.clock.advance_to(s2 + 0.5)
    assert len(rig.room.local_participant.performed) == 1 and not m2.done()
    rig.room.emit("participant_disconnected", SimpleNamespace(identity="user"))
    await asyncio.sleep(0)
    assert m2.result().how == "unavailable"
    assert not rig.cp._tasks  # the request was cancelled, not left running
