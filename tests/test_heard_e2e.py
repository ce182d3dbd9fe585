"""The analysis side of ``scripts/heard-e2e`` (e2e/): profiles, the impaired path, finding
responses in a recording. The browser run itself is CI's short profile (scripts/test)."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from e2e import truth
from e2e.profile import ProfileError, Stage, parse_profile, stage_at
from e2e.relay import PathModel, RelayProcess, UdpRelay, is_rtp_or_rtcp
from e2e.run import after_change

RTP = bytes([0x80, 111]) + bytes(30)
STUN = bytes([0x00, 0x01]) + bytes(30)


# -- profiles


def test_profile_single_and_steps() -> None:
    assert parse_profile("60:10:0") == (Stage(60, 10, 0, 0),)
    stages = parse_profile("60:10:0,200:10:0.5@20")
    assert stages == (Stage(60, 10, 0, 0), Stage(200, 10, 0.5, 20))
    assert stage_at(stages, 19.99).delay_ms == 60
    assert stage_at(stages, 20).delay_ms == 200
    assert [s.label() for s in stages] == ["60:10:0", "200:10:0.5@20"]


@pytest.mark.parametrize(
    ("spec", "needle"),
    [
        ("60:10", "DELAY_MS:JITTER_MS:LOSS_PCT"),
        ("60:10:0,200:10:0", "needs '@SECONDS'"),
        ("60:10:0@5", "first profile entry starts at 0"),
        ("60:10:0,200:10:0@20,100:0:0@10", "must start after 20"),
        ("60:10:101", "over 100"),
        ("", "DELAY_MS"),
    ],
)
def test_profile_errors_name_the_fix(spec: str, needle: str) -> None:
    with pytest.raises(ProfileError, match=needle):
        parse_profile(spec)


def test_after_change_counts_responses_since_the_last_change() -> None:
    stages = parse_profile("60:10:0,200:10:0@10,100:0:0@20")
    starts = [0.5, 5.0, 9.9, 10.0, None, 12.0, 15.0, 21.0, 22.0]
    assert after_change(stages, starts) == [None, None, None, 1, None, 2, 3, 1, 2]


# -- the impaired path, on a virtual clock


def test_path_delays_jitters_and_reorders_deterministically() -> None:
    stages = parse_profile("60:10:0")
    a = PathModel(stages, start=0.0, seed=7)
    b = PathModel(stages, start=0.0, seed=7)
    times_a = [a.release_at(i * 0.02, RTP, forward=True) for i in range(500)]
    times_a += [a.release_at(10 + i * 0.005, RTP, forward=True) for i in range(100)]
    times_b = [b.release_at(i * 0.02, RTP, forward=True) for i in range(500)]
    times_b += [b.release_at(10 + i * 0.005, RTP, forward=True) for i in range(100)]
    assert times_a == times_b  # the seed decides everything
    delays = [t - i * 0.02 for i, t in enumerate(times_a[:500]) if t is not None]
    assert min(delays) >= 0.050 and max(delays) <= 0.070
    assert abs(np.mean(delays) - 0.060) < 0.002
    assert a.forward.reordered > 0  # ±10 ms on packets 5 ms apart: some overtake


def test_path_loss_hits_media_only_and_back_path_has_base_delay() -> None:
    m = PathModel(parse_profile("20:0:50"), start=0.0, seed=3)
    media = [m.release_at(0.0, RTP, forward=True) for _ in range(1000)]
    control = [m.release_at(0.0, STUN, forward=True) for _ in range(100)]
    assert 400 < media.count(None) < 600
    assert None not in control  # ICE and DTLS are never dropped
    assert m.release_at(1.0, RTP, forward=False) == pytest.approx(1.02)
    assert m.back.dropped == 0


def test_path_follows_a_step_change() -> None:
    m = PathModel(parse_profile("60:0:0,200:0:0@20"), start=100.0)
    assert m.release_at(119.0, RTP, forward=True) == pytest.approx(119.06)
    assert m.release_at(120.0, RTP, forward=True) == pytest.approx(120.2)


def test_rtp_demultiplexing() -> None:
    assert is_rtp_or_rtcp(RTP)
    assert not is_rtp_or_rtcp(STUN)
    assert not is_rtp_or_rtcp(bytes([22, 0xFE]))  # DTLS
    assert not is_rtp_or_rtcp(b"")


async def test_relay_forwards_both_ways_between_learned_peers() -> None:
    loop = asyncio.get_running_loop()
    relay = UdpRelay(PathModel(parse_profile("0:0:0"), start=0.0), clock=loop.time)
    await relay.start()
    got: dict[str, asyncio.Future[bytes]] = {"a": loop.create_future(), "b": loop.create_future()}

    class Peer(asyncio.DatagramProtocol):
        def __init__(self, name: str) -> None:
            self.name = name

        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            if not got[self.name].done():
                got[self.name].set_result(data)

    ta, _ = await loop.create_datagram_endpoint(lambda: Peer("a"), local_addr=("127.0.0.1", 0))
    tb, _ = await loop.create_datagram_endpoint(lambda: Peer("b"), local_addr=("127.0.0.1", 0))
    try:
        # a peer's address is learned from what it sends: pcA's first packet finds nobody
        # on the other side yet (ICE retransmits), pcB's then reaches pcA, and pcA's next
        # one reaches pcB
        ta.sendto(STUN + b"lost", ("127.0.0.1", relay.port_a))
        while relay._a.peer is None:  # the relay has taken it (yields to the loop only)
            await asyncio.sleep(0)
        tb.sendto(STUN + b"from-b", ("127.0.0.1", relay.port_b))
        assert (await asyncio.wait_for(got["a"], 5)).endswith(b"from-b")
        ta.sendto(RTP + b"from-a", ("127.0.0.1", relay.port_a))
        assert (await asyncio.wait_for(got["b"], 5)).endswith(b"from-a")
        # the first packet found nobody to deliver to: not counted as forwarded
        assert relay.model.forward.forwarded == 1 and relay.model.back.forwarded == 1
    finally:
        ta.close()
        tb.close()
        relay.close()


def test_the_relay_process_forwards_while_this_process_runs_no_event_loop() -> None:
    # the harness's relay lives in its own process: packets keep moving while the agent's
    # process is busy (here: blocked in recv, with no event loop at all)
    relay = RelayProcess("0:0:0", start=time.time(), seed=1)
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert relay.pid != os.getpid()
        for s in (a, b):
            s.bind(("127.0.0.1", 0))
            s.settimeout(10)
        b.sendto(STUN + b"hello-from-b", ("127.0.0.1", relay.port_b))  # nobody at A yet
        a.sendto(STUN + b"from-a", ("127.0.0.1", relay.port_a))
        assert b.recv(2048).endswith(b"from-a")
        relay.set_start(time.time())
        b.sendto(RTP + b"from-b", ("127.0.0.1", relay.port_b))
        assert a.recv(2048).endswith(b"from-b")
    finally:
        a.close()
        b.close()
        stats = relay.close()
    assert stats == {
        "forward": {"forwarded": 1, "dropped": 0, "reordered": 0},
        "back": {"forwarded": 1, "dropped": 0, "reordered": 0},
    }


def test_a_relay_process_that_cannot_start_says_so() -> None:
    with pytest.raises(RuntimeError, match="relay process exited"):
        RelayProcess("not-a-profile", start=0.0)


def test_relay_ports_are_loopback() -> None:
    async def ports() -> tuple[int, int]:
        relay = UdpRelay(PathModel(parse_profile("0:0:0"), start=0.0), clock=lambda: 0.0)
        await relay.start()
        try:
            assert relay._a.transport is not None
            assert relay._a.transport.get_extra_info("sockname")[0] == "127.0.0.1"
            return relay.port_a, relay.port_b
        finally:
            relay.close()

    a, b = asyncio.run(ports())
    assert a != b
    for port in (a, b):  # closed again
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.bind(("127.0.0.1", port))


# -- finding a response in a recording (synthetic audio)

RATE = 48000


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """A voiced buzz with a wandering pitch and a syllable envelope, like espeak's output."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * RATE)) / RATE
    f0 = 120 + 20 * np.sin(2 * np.pi * 1.3 * t + rng.uniform(0, 6))
    phase = 2 * np.pi * np.cumsum(f0) / RATE
    x = sum(np.sin(k * phase) / k for k in range(1, 12))
    env = 0.3 + 0.25 * np.sin(2 * np.pi * 4 * t + rng.uniform(0, 6))
    return np.asarray(x * env / 3, dtype=np.float64)


async def test_frames_go_to_the_pages_audio_socket_and_its_reports_come_back() -> None:
    import struct

    import aiohttp

    from e2e.server import PageServer

    server = PageServer()
    await server.start()
    try:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(f"http://127.0.0.1:{server.port}/audio") as audio:
                # the socket is the server's once its handler runs: its first report says so
                await audio.send_json({"type": "margin", "minMs": 12.5})
                while server.lead_margin_ms is None:
                    await asyncio.sleep(0)
                server.send_frame(1234.5, b"\x01\x00\x02\x00")
                msg = await audio.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.BINARY
                assert struct.unpack("<d", msg.data[:8])[0] == 1234.5
                assert msg.data[8:] == b"\x01\x00\x02\x00"
                server.send_clear(1240.0)
                assert (await audio.receive_json(timeout=10)) == {"type": "clear", "at": 1240.0}
                await audio.send_json({"type": "reanchor", "driftMs": 25.0, "at": 1250.0})
                while not server.reanchors:
                    await asyncio.sleep(0)
        assert server.lead_margin_ms == 12.5
        assert server.reanchors == [(1250.0, 25.0)]
        assert server.sent_bytes == 4
    finally:
        await server.stop()


def test_first_audible_and_onset() -> None:
    x = np.zeros(RATE)
    x[1000] = 0.005  # below the -40 dBFS threshold
    x[2000:2100] = 0.5
    x[2300:2400] = 0.5  # 200 samples after: not a new onset at 200 ms gaps
    x[30000:30100] = 0.5  # after 0.58 s of silence: an onset
    assert truth.first_audible(x) == 2000
    assert truth.first_audible(np.zeros(10)) is None
    assert truth.onset_after(x, 0, RATE) == 2000
    assert truth.onset_after(x, 2200, RATE) == 30000
    assert truth.onset_after(x, 30001, RATE) is None


@pytest.mark.parametrize("lag_ms", [17.0, 66.0, 180.25, 420.0])
def test_locate_finds_the_lag_through_noise_and_gain(lag_ms: float) -> None:
    ref = _speechlike(0.5, seed=1)
    lag = int(round(lag_ms * RATE / 1000))
    rec = np.random.default_rng(2).normal(0, 0.002, 2 * RATE)
    pos = 10000 + lag
    rec[pos : pos + len(ref)] += 0.6 * ref  # the codec and the mixer change the level
    found = truth.locate(ref[: int(0.3 * RATE)], rec, 10000, RATE, rate=RATE)
    assert found is not None
    assert found.lag_samples == lag
    assert found.score > 0.9


def test_locate_finds_a_response_that_follows_another_with_no_silence() -> None:
    first, second = _speechlike(1.0, seed=3), _speechlike(1.0, seed=4)
    sent = np.concatenate([first, second])
    lag = 8123
    rec = np.zeros(len(sent) + RATE)
    rec[lag : lag + len(sent)] = sent
    found = truth.locate(second[: int(0.3 * RATE)], rec, len(first), RATE // 2, rate=RATE)
    assert found is not None and found.lag_samples == lag
    # no onset marks the second one: the energy never drops between them
    assert truth.onset_after(rec, lag + len(first) - 100, RATE) is None


def test_locate_refuses_silence_and_short_recordings() -> None:
    assert truth.locate(np.zeros(100), np.ones(1000), 0, 500, rate=RATE) is None
    assert truth.locate(np.ones(2000), np.ones(1000), 0, 500, rate=RATE) is None


def test_resample_keeps_timing() -> None:
    x = np.zeros(24000)
    x[12000] = 1.0
    y = truth.resample(x, 24000, 48000)
    assert len(y) == 48000
    assert int(np.argmax(y)) == 24000


def test_recording_start_from_block_sized_reads() -> None:
    from e2e.recorder import RATE as REC_RATE, block_bounds

    start, block = 1000.0, 240
    reads = []
    for k in range(50):  # block k renders at start + k*5 ms and reaches us 0..3 ms later
        delay = 0.003 * ((k * 7) % 4) / 3
        reads.append((start + k * block / REC_RATE + delay, k * block, (k + 1) * block))
    reads.append((start + 0.5, 12000, 12013))  # an odd piece: not a block, not used
    found, bounds = block_bounds(reads)
    assert found == block and len(bounds) == 50
    assert min(bounds) == pytest.approx(start)  # the promptest block gives the start
    assert all(b >= start - 1e-9 for b in bounds)  # each is an upper bound


def test_a_sink_off_its_nominal_rate_is_placed_by_the_blocks_near_each_sample() -> None:
    from e2e.recorder import RATE as REC_RATE, Recording, local_starts

    # a sink that renders 300 ppm more samples than time passes, for 60 s, each block
    # reaching the reader 0..3 ms after it was rendered
    start, block, fast = 1000.0, 240, 300e-6
    reads = []
    for k in range(60 * REC_RATE // block):
        rendered = start + k * block / REC_RATE * (1 - fast)
        reads.append((rendered + 0.001 * ((k * 7) % 4), k * block, (k + 1) * block))
    anchors, spread = local_starts(reads, block)
    rec = Recording(
        pcm=b"",
        start=anchors[0][1],
        clock_bound_ms=spread * 1000,
        fragments=0,
        anchors=tuple(anchors),
    )
    for n in (0, 10 * REC_RATE + 77, 30 * REC_RATE, 59 * REC_RATE + 3):
        true = start + n / REC_RATE * (1 - fast)
        assert rec.time_of(n) == pytest.approx(true, abs=0.3e-3)  # one start was 18 ms off
        assert rec.sample_of(true) == pytest.approx(n, abs=0.3e-3 * REC_RATE)
    assert spread < 0.004
    assert rec.fast_ppm == pytest.approx(300, abs=5)


def test_a_sparse_stretch_of_block_sized_reads_still_places_the_recording() -> None:
    from e2e.recorder import RATE as REC_RATE, Recording, local_starts

    # the same fast sink, but after the first 2 s its renders mostly reach the reader two at a
    # time: one read in eight is a single block (about 27 per 2 s). Windows of 2 s needing 50
    # blocks each found only the first, so one start dated the whole recording (11 ms off).
    start, block, fast = 1000.0, 240, 300e-6
    reads = []
    k = 0
    while k < 40 * REC_RATE // block:
        size = 1 if k < 400 or len(reads) % 8 == 0 else 2
        rendered = start + (k + size - 1) * block / REC_RATE * (1 - fast)
        reads.append((rendered + 0.001 * (len(reads) % 3), k * block, (k + size) * block))
        k += size
    anchors, _spread = local_starts(reads, block)
    assert len(anchors) >= 10
    rec = Recording(
        pcm=b"", start=anchors[0][1], clock_bound_ms=0, fragments=0, anchors=tuple(anchors)
    )
    for n in (REC_RATE, 20 * REC_RATE + 11, 39 * REC_RATE):
        true = start + n / REC_RATE * (1 - fast)
        assert rec.time_of(n) == pytest.approx(true, abs=0.5e-3)
    assert rec.fast_ppm == pytest.approx(300, abs=10)


# -- B8 from the runs' JSON


def _run(errors: list[tuple[float | None, float | None]], *, companion: bool = True) -> dict:
    responses = [
        {
            "first_of_session": i == 0,
            "after_change": None,
            "measured_error_ms": m,
            "fired_error_ms": f,
            "how": "predicted" if f is not None else "unavailable",
        }
        for i, (m, f) in enumerate(errors)
    ]
    return {
        "profile": "60:10:0",
        "companion": companion,
        "completed": True,
        "responses": responses,
        "companion_stats": {"rpc_bytes": {"hello": 150, "sync": 600, "report": 200}},
        "chromium_cpu_pct_of_core": {
            "Realtime AudioW x2" if companion else "Realtime AudioW": 3.0 if companion else 2.5
        },
    }


def test_b8_judges_p95_with_the_bench_statistics() -> None:
    from e2e.bench import judge

    good = [
        _run([(1.0, -40.0)] + [(((-1) ** k) * 2.0, ((-1) ** k) * 8.0) for k in range(11)])
        for _ in range(6)
    ]
    base = [_run([], companion=False) for _ in range(6)]
    b8 = judge(good + base)
    verdicts = {row["figure"]: row["verdict"] for row in b8["targets"]}
    assert verdicts["measured device time vs recording"] == "met"  # |2| ms, n=72
    assert verdicts["fired-at time vs recording, after the first response"] == "met"
    # six sessions cannot bound a p95 of first responses (59 needed), and 40 ms is over
    assert verdicts["fired-at time vs recording, first response of a session"] == "inconclusive"
    assert verdicts["companion's audio processing in Chromium"] == "met"  # 0.5 % of a core
    assert (
        verdicts["RPC payload bytes per response (requests + replies, incl. clock sync)"] == "met"
    )

    bad = [_run([(9.0, 30.0)] * 12) for _ in range(6)]
    verdicts = {row["figure"]: row["verdict"] for row in judge(bad + base)["targets"]}
    assert verdicts["measured device time vs recording"] == "missed"
    assert verdicts["fired-at time vs recording, after the first response"] == "missed"


def test_b8_judges_the_companions_processing_by_its_worklet_alone() -> None:
    """The render thread's difference counts the track's own-graph rendering (which the
    element does elsewhere without the companion): given beside, the worklet's own cost
    judged."""
    from e2e.bench import judge

    heavy = [_run([(1.0, 2.0)] * 12) for _ in range(6)]
    for r in heavy:
        r["chromium_cpu_pct_of_core"] = {"Realtime AudioW x2": 8.0}
    base = [_run([], companion=False) for _ in range(6)]

    def cpu_row(cost: dict[str, object] | None) -> dict[str, object]:
        rows = judge(heavy + base, cost)["targets"]
        return next(r for r in rows if r["figure"] == "companion's audio processing in Chromium")

    assert cpu_row(None)["verdict"] == "missed"  # 5.5 % of a core, rendering included
    row = cpu_row({"cpu_pct_of_core": [0.03, 0.02, 0.025] * 5, "audio_s": 15.0})
    assert row["verdict"] == "met"
    assert str(row["text"]).startswith("0.025 [") and "rendering included" in str(row["text"])


def test_the_worklet_cost_runs_the_companions_worklet_in_chromium() -> None:
    """The real measurement: the built worklet over espeak speech in headless Chromium."""
    from e2e.worklet_cost import RATE, measure, speech

    x = speech()
    assert len(x) > 5 * RATE and 0.05 < float(abs(x).max()) <= 1.0
    got = measure(2)
    assert len(got["runs_ms"]) == 2 and got["audio_s"] == pytest.approx(len(x) / RATE, abs=0.01)
    assert all(0 < pct < 100 for pct in got["cpu_pct_of_core"])


# -- the whole analysis on a synthetic session: known path, known agent-side errors


@pytest.mark.parametrize(("left_out_ms", "stretch_ms"), [(0.0, 0.0), (9.0, 0.0), (0.0, 40.0)])
def test_analyse_maps_the_recording_to_the_agent_clock(
    left_out_ms: float, stretch_ms: float
) -> None:
    """The truth is where the agent's audio plays, also when the path left out the first
    milliseconds of sound after silence (WebRTC does: the recording's onset is then later
    audio than the agent's first audible sample), and when the device stretched the start
    (NetEq after a change of the path: then the correlation over the first 300 ms lands
    later than where the response started)."""
    from types import SimpleNamespace

    from e2e.agent_session import SAMPLE_RATE, AgentRun, ResponseRecord
    from e2e.plugin import AgentResult
    from e2e.recorder import RATE as REC_RATE, Recording
    from e2e.run import Options, analyse
    from livekit import rtc
    from livekit_segments.demo.agent import Response
    from livekit_segments.demo.realtime_sink import PlayoutRecording

    t0 = 1_000_000.0
    path = 0.1834  # what the "network + jitter buffer + device" took
    sent = PlayoutRecording(SAMPLE_RATE, 1)

    def speech(seconds: float, seed: int, lead_ms: float) -> np.ndarray:
        x = np.concatenate([np.zeros(int(lead_ms * REC_RATE / 1000)), _speechlike(seconds, seed)])
        return np.asarray(truth.resample(x, REC_RATE, SAMPLE_RATE) * 32767 * 0.8, dtype=np.int16)

    def play(at: float, pcm: np.ndarray) -> None:
        for k in range(0, len(pcm), 480):  # 20 ms frames, back to back
            chunk = pcm[k : k + 480]
            frame = rtc.AudioFrame(chunk.tobytes(), SAMPLE_RATE, 1, len(chunk))
            sent.add(at + k / SAMPLE_RATE, frame)

    a = speech(1.0, 5, lead_ms=7.0)  # response 0: after silence, 7 ms of leading TTS silence
    b = speech(0.8, 6, lead_ms=0.0)  # response 1: right after response 0, no silence
    starts = [t0 + 0.5, t0 + 0.5 + len(a) / SAMPLE_RATE]
    play(starts[0], a)
    play(starts[1], b)
    # the device: the same audio, later by `path`, quieter, with noise, at 48 kHz
    rec_start = t0 + 0.1
    agent48 = truth.resample(
        np.frombuffer(sent.render(rec_start), "<i2").astype(np.float64), SAMPLE_RATE, REC_RATE
    )
    shift = int(round(path * REC_RATE))
    rec = np.random.default_rng(9).normal(0, 20, len(agent48) + shift + REC_RATE)
    rec[shift : shift + len(agent48)] += 0.7 * agent48
    first = shift + int(np.flatnonzero(np.abs(0.7 * agent48) >= 0.01 * 32768)[0])
    rec[first : first + int(left_out_ms * REC_RATE / 1000)] = 0.0
    if stretch_ms:  # 15 ms into the response, the device played `stretch_ms` it made up
        at, n = first + int(0.015 * REC_RATE), int(stretch_ms * REC_RATE / 1000)
        rec = np.concatenate([rec[:at], rec[at - n : at], rec[at:]])
    recording = Recording(
        pcm=np.clip(rec, -32768, 32767).astype("<i2").tobytes(),
        start=rec_start,
        clock_bound_ms=0.1,
        fragments=100,
    )
    responses = [
        ResponseRecord(i, Response(f"r{i}", "x", 0.0), handle=None, created_at=s - t0)  # type: ignore[arg-type]
        for i, s in enumerate(starts)
    ]
    for r, s in zip(responses, starts, strict=True):
        r.sink_started = r.playout_started = s
    run = AgentRun(t0, t0 + 5, responses, SimpleNamespace(recording=sent), [])  # type: ignore[arg-type]

    class Side:  # the agent side said: measured 2 ms late, fired 9 ms early
        def result(self, rec: ResponseRecord) -> AgentResult:
            assert rec.sink_started is not None
            at = rec.sink_started + path
            return AgentResult("predicted", fired_at=at - 0.009, measured_at=at + 0.002)

        def stats(self) -> dict[str, object]:
            return {}

    opts = Options(profile=parse_profile("60:10:0,200:10:0@1"), spec="x", json_path=None)  # type: ignore[arg-type]
    server = SimpleNamespace(sent_bytes=0, feeder_late_ms=0.0, reanchors=[], lead_margin_ms=20.0)
    model = PathModel(opts.profile, start=t0)
    out = analyse(opts, run, recording, t0, model, server, Side())  # type: ignore[arg-type]
    r0, r1 = out["responses"]
    assert out["completed"], out["problems"]
    assert r0["truth_by"] == "waveform-at-onset" and r1["truth_by"] in ("fine", "coarse")
    # a stretch inside the 60 ms placed at the onset pulls the placement by a fraction of a ms
    close = 0.2 if not stretch_ms else 1.0
    assert r0["audible_after_ms"] == pytest.approx(left_out_ms, abs=close)
    # 7 ms of leading silence, and the buzz needs 4 samples (48 kHz) to reach -40 dBFS
    assert r0["first_audible_offset_ms"] == pytest.approx(7.0 + 4 / 48, abs=0.1)
    for r in (r0, r1):  # the truth is the path, to a sample or two
        if r is r1 and stretch_ms:
            assert r["truth_path_ms"] == pytest.approx(path * 1000 + stretch_ms, abs=0.1)
            continue
        assert r["truth_path_ms"] == pytest.approx(path * 1000, abs=0.1 if r is r1 else close)
        assert r["measured_error_ms"] == pytest.approx(2.0, abs=0.1 if r is r1 else close)
        assert r["fired_error_ms"] == pytest.approx(-9.0, abs=0.1 if r is r1 else close)
    assert r0["first_of_session"] and not r1["first_of_session"]
    assert (r0["after_change"], r1["after_change"]) == (None, 1)  # r1 starts after 1 s


def test_b8_section_replaces_itself_in_benchmarks_md(tmp_path: Path) -> None:
    from e2e.bench import write_record

    doc = tmp_path / "BENCHMARKS.md"
    doc.write_text("# Benchmarks\n\nB1 ...\n")
    first = "<!-- b8-record commit=a -->\nold\n<!-- /b8-record -->\n"
    write_record(doc, first)
    assert doc.read_text() == "# Benchmarks\n\nB1 ...\n\n" + first
    second = "<!-- b8-record commit=b -->\nnew\n<!-- /b8-record -->\n"
    write_record(doc, second)
    assert doc.read_text() == "# Benchmarks\n\nB1 ...\n\n" + second


def test_b8_section_names_the_sessions_commit_time_and_load() -> None:
    # judged again later (--from), the section still says what the sessions ran on and when
    from e2e.bench import judge, record_section

    runs = [
        {
            **_run([(1.0, 2.0)] * 3),
            "commit": "d51c7931b9e8" + "0" * 28,
            "load_average": [load, 1.0, 1.0],
            "recording": {"start": start},
        }
        for load, start in ((2.5, 1796619846.6), (6.0, 1796619700.0))
    ]
    section = record_section(judge(runs), "python -m e2e.bench --from out")
    assert "commit=d51c7931b9e8" in section.splitlines()[0]
    assert "Commit `d51c7931b9e8`, 2026-12-07 05:01 UTC" in section
    assert "load average during the sessions 2.5-6.0 on" in section


def test_the_recording_server_runs_at_the_sinks_rate() -> None:
    # Chromium opens its stream at the server's default rate: at 44.1 kHz against the 48 kHz
    # sink the server resamples, and the AudioContext's clock drifted ~400 ppm from
    # performance.now() (measured); at the sink's own rate nothing is resampled
    from e2e.recorder import RATE, PulseServer

    server = PulseServer()
    server.start()
    try:
        info = subprocess.run(
            ["pactl", "info"], env=server.env, capture_output=True, text=True, check=True
        ).stdout
    finally:
        server.stop()
    spec = next(line for line in info.splitlines() if line.startswith("Default Sample Spec"))
    assert spec.endswith(f" {RATE}Hz"), spec


@pytest.mark.parametrize("completed", [True, False])
def test_the_default_log_dir_goes_once_a_run_completed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, completed: bool
) -> None:
    from e2e import run as e2e_run

    seen: list[Path] = []

    async def fake_run(opts: Any) -> dict[str, Any]:
        (opts.log_dir / "browser.log").write_text("log\n")
        seen.append(opts.log_dir)
        problems = [] if completed else ["response 0 never played"]
        return {
            "completed": completed,
            "problems": problems,
            "responses": [],
            "recording": {"clock_bound_ms": 0.1},
        }

    monkeypatch.setattr(e2e_run, "_run", fake_run)
    monkeypatch.setattr(e2e_run, "_raise_priority", lambda: 0)
    out = tmp_path / "out.json"
    assert e2e_run.main(["--profile", "20:0:0", "--json", str(out)]) == (0 if completed else 1)
    assert seen[0].exists() is not completed  # a failed run keeps its browser log
    mine = tmp_path / "logs"
    assert e2e_run.main(["--profile", "20:0:0", "--json", str(out), "--log-dir", str(mine)]) in (
        0,
        1,
    )
    assert (mine / "browser.log").exists()  # one the caller named is always kept


def test_b8_runs_more_sessions_of_the_profiles_a_verdict_needs() -> None:
    """A p95 needs 59 samples: one first response a session, three from the 2nd after the
    step; `--runs-of` gives a profile its own count, and the profiles still take turns."""
    from e2e.bench import sessions

    plan = sessions(2, ["step-60-200=3", "baseline-20=1"])
    assert [(k, name) for k, name, _, _ in plan] == [
        (0, "flat-20"),
        (0, "jitter-60"),
        (0, "lossy-150"),
        (0, "step-60-200"),
        (0, "baseline-20"),
        (1, "flat-20"),
        (1, "jitter-60"),
        (1, "lossy-150"),
        (1, "step-60-200"),
        (2, "step-60-200"),
    ]
    assert [c for _, name, _, c in plan if name == "baseline-20"] == [False]
    assert len(sessions(3, [])) == 15
    for bad in (["step=3"], ["flat-20"], ["flat-20=x"]):
        with pytest.raises(ValueError, match="NAME=N"):
            sessions(3, bad)


def test_b8_does_not_run_into_a_directory_of_earlier_runs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from e2e.bench import main

    (tmp_path / "flat-20-7.json").write_text("{}")
    with pytest.raises(SystemExit):
        main(["--out", str(tmp_path), "--runs", "1"])
    assert "already holds runs' JSON" in capsys.readouterr().err


class _Page:
    """The stand-in's page side: what it sent, at which loop time."""

    connected = True

    def __init__(self) -> None:
        self.sent: list[tuple[float, dict[str, Any]]] = []
        self._waits: list[tuple[int, asyncio.Future[None]]] = []

    async def send_json(self, data: dict[str, Any]) -> None:
        self.sent.append((asyncio.get_running_loop().time(), data))
        for n, fut in self._waits:
            if len(self.sent) >= n and not fut.done():
                fut.set_result(None)

    def until(self, n: int) -> asyncio.Future[None]:
        """Done once ``n`` messages were sent."""
        fut = asyncio.get_running_loop().create_future()
        self._waits.append((n, fut))
        if len(self.sent) >= n:
            fut.set_result(None)
        return fut


def test_rpc_crosses_the_path_each_way_in_order() -> None:
    """The RPC stand-in delays each message by the path's one-way delay, as LiveKit's RPC
    crosses the agent's leg and the SFU's like the media: a sync's round trip is the path's.
    A message never overtakes one sent before it the same way, even when the delay falls."""
    from e2e.plugin import FakeRoom, RpcStandIn
    from tests.gen_driver import VirtualTimeLoop

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        room, page = FakeRoom(), _Page()
        handled: list[float] = []

        def handler(data: Any) -> str:
            handled.append(loop.time())
            return f"re:{data.payload}"

        room.local_participant.register_rpc_method("m", handler)
        delay = [0.25]
        rpc = RpcStandIn(room, page, lambda: delay[0])  # type: ignore[arg-type]
        t0 = loop.time()
        rpc.on_message({"type": "rpc", "id": 1, "method": "m", "payload": "a"})
        delay[0] = 0.05  # the path got shorter: the next one still arrives after it
        rpc.on_message({"type": "rpc", "id": 2, "method": "m", "payload": "b"})
        call = asyncio.ensure_future(rpc.perform("x", "lv", 5.0))
        await page.until(3)
        assert handled == [pytest.approx(t0 + 0.25), pytest.approx(t0 + 0.25)]
        down = {m.get("id"): (at - t0, m) for at, m in page.sent if m["type"] == "rpc-reply"}
        assert down[1][0] == pytest.approx(0.30) and down[1][1]["payload"] == "re:a"
        assert down[2][0] == pytest.approx(0.30) and down[2][1]["payload"] == "re:b"
        sent_call = next((at, m) for at, m in page.sent if m["type"] == "rpc-call")
        assert sent_call[0] - t0 == pytest.approx(0.05)
        t1 = loop.time()
        rpc.on_message({"type": "rpc-call-reply", "id": sent_call[1]["id"], "payload": "ok"})
        assert await call == "ok"
        assert loop.time() - t1 == pytest.approx(0.05)
        await rpc.aclose()

    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()


def test_a_closed_rpc_stand_in_fails_calls_on_the_way_and_carries_nothing_more() -> None:
    from e2e.plugin import FakeRoom, RpcStandIn
    from livekit import rtc
    from tests.gen_driver import VirtualTimeLoop

    async def scenario() -> None:
        room, page = FakeRoom(), _Page()
        handled: list[str] = []
        room.local_participant.register_rpc_method("m", lambda d: handled.append(d.payload))
        rpc = RpcStandIn(room, page, lambda: 0.1)  # type: ignore[arg-type]
        call = asyncio.ensure_future(rpc.perform("x", "lv", 5.0))
        await page.until(1)  # the call reached the page; its reply will not come back
        rpc.on_message({"type": "rpc", "id": 1, "method": "m", "payload": "late"})
        await rpc.aclose()
        with pytest.raises(rtc.RpcError) as err:
            await call
        assert err.value.code == 1503
        rpc.on_message({"type": "rpc", "id": 2, "method": "m", "payload": "after"})
        with pytest.raises(rtc.RpcError):
            await rpc.perform("x", "lv", 5.0)
        await asyncio.sleep(1.0)  # virtual: past every delay
        assert handled == [] and len(page.sent) == 1

    loop = VirtualTimeLoop()
    try:
        loop.run_until_complete(scenario())
    finally:
        loop.close()
