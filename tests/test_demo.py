"""``livekit-segments demo``: runs in-process on the real-time playout clock, short script."""

from __future__ import annotations

import asyncio
import io
import os
import struct
import subprocess
import sys
import wave
from pathlib import Path
from typing import Any

import pytest

import livekit_segments
from livekit import rtc
from livekit_segments.__main__ import build_parser, main
from livekit_segments.demo.cli import DemoOptions, DemoOutcome, pick_synth, run_demo
from livekit_segments.demo.espeak import EspeakSynth, find_espeak, parse_wav
from livekit_segments.demo.realtime_sink import RealtimeAudioSink
from livekit_segments.demo.synth import BuiltinSynth

FALLBACK_LINE = "espeak-ng is not on PATH, using the built-in synthesizer"


async def demo(**options: Any) -> tuple[DemoOutcome, str, str]:
    """Run the demo with the short script; returns the outcome, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    outcome = await run_demo(DemoOptions(short=True, **options), out=out, err=err)
    return outcome, out.getvalue(), err.getvalue()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert data[12:16] == b"IHDR"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


# ------------------------------------------------------------------ whole runs


async def test_builtin_run_is_consistent_and_writes_wav_and_png(tmp_path: Path) -> None:
    wav_path, png_path = tmp_path / "turn.wav", tmp_path / "timeline.png"
    outcome, out, err = await demo(builtin_synth=True, wav=wav_path, plot=png_path)

    assert outcome.exit_code == 0, err
    assert err == ""
    assert "built-in (--builtin-synth)" in out
    assert out.rstrip().endswith("ok: 3 handles, signals consistent")
    result, report = outcome.result, outcome.report
    assert result is not None and report is not None
    # every response played under its own handle, announced and signalled in order
    handles = [r.handle for r in result.handles]
    assert [livekit_segments.segment_index(h) for h in handles] == [0, 1, 2]
    ids = [livekit_segments.segment_break(h) for h in handles]
    assert [b.id if b else None for b in ids] == ["ack", "answer", "follow_up"]
    started = [livekit_segments.playout_started(h).result() for h in handles]
    assert started == [seg.started_at for seg in result.sink.segments]
    assert all(a < b for a, b in zip(started, started[1:], strict=False))
    assert all(r.created_at <= s for r, s in zip(result.handles, started, strict=True))
    for row in report.rows:
        assert row.status == "played"
        assert row.onset_lag is not None and 0.0 <= row.onset_lag < 0.05
        assert f"  {row.response.text}  " in out

    with wave.open(str(wav_path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 24000)
        frames = w.getnframes()
        pcm = w.readframes(frames)
    assert frames == len(report.audio)
    # silence until the first response, then the responses as heard
    first = int((report.rows[0].sink_started or 0.0) * 24000)
    samples = memoryview(pcm).cast("h")
    assert max(abs(s) for s in samples[: max(first - 48, 0)]) == 0
    assert max(abs(s) for s in samples[first:]) > 8000

    width, height = png_size(png_path)
    assert width > 400 and height > 200
    assert png_path.stat().st_size > 10_000


async def test_interrupt_reports_the_interrupted_handle_and_no_later_one() -> None:
    # the short script's answer plays from about 0.5 s to 1.7 s: 1.0 s lands inside it
    outcome, out, err = await demo(builtin_synth=True, interrupt_at=1.0)

    assert outcome.exit_code == 0, err
    report, result = outcome.report, outcome.result
    assert report is not None and result is not None
    assert report.interrupted is not None
    interrupted = report.interrupted
    assert interrupted.handle is not None and interrupted.handle.interrupted
    assert interrupted.status.startswith("interrupted")
    # it is the newest handle: nothing opened after it, nothing played after the interrupt
    assert result.handles[-1].handle is interrupted.handle
    later = report.rows[interrupted.position + 1 :]
    assert later and all(row.handle is None and row.status == "never opened" for row in later)
    assert len(result.sink.segments) == interrupted.position + 1
    assert report.interrupt_at is not None and report.audio_stopped_at is not None
    assert report.audio_stopped_at <= report.interrupt_at + 0.1
    assert "was interrupted" in out and "no later handle exists" in out
    assert "never opened" in out


async def test_quiet_prints_nothing_when_consistent() -> None:
    outcome, out, err = await demo(builtin_synth=True, quiet=True, interrupt_at=0.0)
    assert outcome.exit_code == 0, err
    assert out == "" and err == ""
    assert outcome.report is not None and outcome.report.interrupted is not None
    assert outcome.report.interrupted.status == "interrupted before audio"


# ------------------------------------------------------------------ synthesizers


async def test_espeak_adapter_or_fallback() -> None:
    """With espeak-ng: its adapter makes real audio and the demo uses it. Without: fallback."""
    path = find_espeak()
    if path is not None:
        synth = EspeakSynth(path)
        frames = [f async for f in synth.synthesize("Hello there.")]
        assert frames and all(isinstance(f, rtc.AudioFrame) for f in frames)
        assert {(f.sample_rate, f.num_channels) for f in frames} == {(frames[0].sample_rate, 1)}
        assert frames[0].sample_rate >= 8000
        duration = sum(f.duration for f in frames)
        assert 0.3 < duration < 5.0
        assert max(max(abs(s) for s in f.data) for f in frames) > 1000
        assert (await synth.version()).startswith("espeak-ng ")

    outcome, out, err = await demo()
    assert outcome.exit_code == 0, err
    first_line = out.splitlines()[0]
    if path is not None:
        assert first_line.startswith("synthesizer: espeak-ng ")
        assert outcome.result is not None and outcome.result.synth_name == "espeak-ng"
    else:
        assert FALLBACK_LINE in first_line
        assert outcome.result is not None and outcome.result.synth_name == "built-in"


async def test_without_espeak_the_demo_says_it_falls_back(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    synth, line = await pick_synth(builtin=False)
    assert isinstance(synth, BuiltinSynth)
    assert FALLBACK_LINE in line


async def test_builtin_synth_makes_voiced_24k_frames() -> None:
    frames = [f async for f in BuiltinSynth().synthesize("Hello, world?")]
    assert {(f.sample_rate, f.num_channels) for f in frames} == {(24000, 1)}
    assert 0.4 < sum(f.duration for f in frames) < 2.0
    assert max(abs(s) for s in frames[0].data) > 1000  # sounds from its first frame


def test_parse_wav_ignores_placeholder_sizes() -> None:
    # what `espeak-ng --stdout` writes: RIFF and data sizes it could not patch
    pcm = struct.pack("<4h", 1, -2, 3, -4)
    fmt = struct.pack("<HHIIHH", 1, 1, 22050, 44100, 2, 16)
    data = (
        b"RIFF" + struct.pack("<I", 0x7FFFF024) + b"WAVE"
        + b"fmt " + struct.pack("<I", len(fmt)) + fmt
        + b"data" + struct.pack("<I", 0x7FFFF000) + pcm + b"\x00"
    )  # fmt: skip
    audio = parse_wav(data)
    assert (audio.sample_rate, audio.num_channels, audio.pcm) == (22050, 1, pcm)


# ------------------------------------------------------------------ the sink


async def test_sink_finishes_each_segment_exactly_once() -> None:
    sink = RealtimeAudioSink(sample_rate=24000)
    events: list[tuple[str, object]] = []
    sink.on("playback_started", lambda ev: events.append(("started", ev.created_at)))
    sink.on("playback_finished", lambda ev: events.append(("finished", ev.interrupted)))
    tone = rtc.AudioFrame(struct.pack("<h", 9000) * 480, 24000, 1, 480)  # 20 ms
    try:
        # a 400 ms segment, interrupted once it plays (upstream clears twice)
        for _ in range(20):
            await sink.capture_frame(tone)
        sink.flush()
        await sink.when(lambda: sink.segments[0].started_at is not None)
        sink.clear_buffer()
        sink.clear_buffer()
        first = await sink.wait_for_playout()
        assert first.interrupted and first.playback_position < 0.4

        # a short one that plays out
        for _ in range(2):
            await sink.capture_frame(tone)
        sink.flush()
        second = await sink.wait_for_playout()
        assert not second.interrupted and second.playback_position == pytest.approx(0.04)
    finally:
        await sink.aclose()

    assert [name for name, _ in events] == ["started", "finished", "started", "finished"]
    assert [seg.interrupted for seg in sink.segments] == [True, False]
    assert sink.finished_events == len(sink.segments) == 2
    # the recording holds what played: part of the first, all of the second, in order
    runs = sink.recording.runs
    assert len(runs) == 2 and runs[0].start == events[0][1] and runs[1].start == events[2][1]
    assert len(runs[0].pcm) < 20 * 960 and len(runs[1].pcm) == 2 * 960


async def test_the_first_frame_is_in_the_source_before_playback_started_listeners_run() -> None:
    """Listeners run synchronously: work in them must not hold the first frame back from the
    native source, which would start it later than `created_at` says (and leave a gap after
    it, the next frame being placed by the source's queue)."""
    sink = RealtimeAudioSink(sample_rate=24000)
    queued: list[float] = []

    def listener(_ev: object) -> None:
        assert sink.source is not None
        queued.append(sink.source.queued_duration)

    sink.on("playback_started", listener)
    tone = rtc.AudioFrame(struct.pack("<h", 9000) * 480, 24000, 1, 480)
    try:
        for _ in range(3):
            await sink.capture_frame(tone)
        sink.flush()
        await sink.wait_for_playout()
    finally:
        await sink.aclose()
    assert len(queued) == 1 and queued[0] > 0


async def test_sink_clear_before_any_audio_still_finishes_the_segment() -> None:
    sink = RealtimeAudioSink(sample_rate=24000)
    tone = rtc.AudioFrame(struct.pack("<h", 9000) * 480, 24000, 1, 480)
    try:
        await sink.capture_frame(tone)
        sink.clear_buffer()  # before the forwarder ran: nothing reached the source
        await sink.capture_frame(tone)  # the rest of the cleared segment is dropped
        sink.flush()
        ev = await asyncio.wait_for(sink.wait_for_playout(), 5)
    finally:
        await sink.aclose()
    assert ev.interrupted and ev.playback_position == 0.0
    assert sink.finished_events == len(sink.segments) == 1
    assert sink.segments[0].started_at is None and sink.recording.runs == []


# ------------------------------------------------------------------ the command line


def test_cli_registers_demo(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["demo", "--builtin-synth", "--interrupt-at", "1.5", "--short"])
    assert args.builtin_synth and args.short and args.interrupt_at == 1.5 and callable(args.func)
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--help"])
    assert exc.value.code == 0
    assert "--interrupt-at SECONDS" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:
        main(["demo", "--interrupt-at", "-1"])
    assert exc.value.code == 2


async def test_closing_mid_capture_lets_the_native_capture_finish(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A capture the source accepted completes before the source is released.

    Cancelling it abandons only the Python side: the native capture completes later, and
    once the FFI server is disposed at exit livekit logs ``ERROR ... [AUDIO_CAPTURE] Failed
    to send callback`` on a run that succeeded (``demo --interrupt-at 1.0``).
    """
    original = rtc.AudioSource.capture_frame
    outcomes: list[str] = []
    twelfth: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def capture_frame(self: rtc.AudioSource, frame: rtc.AudioFrame) -> None:
        if len(outcomes) == 11 and not twelfth.done():
            twelfth.set_result(None)
        outcomes.append("pending")
        n = len(outcomes) - 1
        try:
            await original(self, frame)
        except asyncio.CancelledError:
            outcomes[n] = "cancelled"
            raise
        outcomes[n] = "done"

    monkeypatch.setattr(rtc.AudioSource, "capture_frame", capture_frame)
    sink = RealtimeAudioSink(sample_rate=24000, queue_size_ms=200)
    tone = rtc.AudioFrame(struct.pack("<h", 9000) * 480, 24000, 1, 480)  # 20 ms
    try:
        for _ in range(30):  # 600 ms: more than the source's queue takes at once
            await sink.capture_frame(tone)
        sink.flush()
        await twelfth  # the forwarder is inside a capture from now until the 30th is done
    finally:
        await sink.aclose()

    assert 12 <= len(outcomes) < 30
    assert set(outcomes) == {"done"}, outcomes


def test_an_interrupted_run_prints_no_error_line() -> None:
    """``demo --interrupt-at`` as a user runs it: the process's whole output has no ERROR."""
    # the livekit_segments under test, wherever this process found it
    package_root = str(Path(livekit_segments.__file__).resolve().parent.parent)
    pythonpath = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
    env = {**os.environ, "PYTHONPATH": pythonpath}
    argv = ["demo", "--short", "--builtin-synth", "--interrupt-at", "1.0"]
    done = subprocess.run(
        [sys.executable, "-m", "livekit_segments", *argv],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, output
    assert done.stdout.rstrip().endswith("signals consistent")
    assert [line for line in output.splitlines() if "ERROR" in line] == []
