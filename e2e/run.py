"""``scripts/heard-e2e``: one session of the end-to-end harness, and its JSON.

    scripts/heard-e2e --profile SPEC --json OUT [--wav PATH] [--seed N] ...

Starts a private PulseAudio server (null sink ``rec``) and records its monitor, serves the
page on 127.0.0.1, relays the page's WebRTC packets through the impaired path of the
profile, opens the page in headless Chromium, runs the agent session into it, and then
finds every response in the recording (`truth`). Prints one line per response and writes
OUT. Exit 0 only when the run completed (every response was found in the recording);
the errors themselves are judged by the benchmark (B8), not here.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import truth
from .agent_session import SAMPLE_RATE, AgentRun, ResponseRecord, run_agent
from .browser import Browser, cpu_by_thread_name, thread_cpu
from .plugin import AgentSide, load_agent_side
from .profile import ProfileError, Stage, parse_profile, stage_at
from .recorder import ANCHOR_S, RATE, PulseServer, Recorder, Recording
from .relay import RelayProcess
from .server import PageServer

__all__ = ["main"]

logger = logging.getLogger("heard-e2e")
_ONSET_SEARCH = int(0.03 * RATE)  # how far after the correlation's lag an onset may lie
# and how far before it: after a change of the path, NetEq stretches a response's first
# hundreds of ms (36 ms inserted in its first 300 ms after a step from 60 to 200 ms), so the
# correlation over them lands that much after where the response started
_ONSET_EARLY = int(0.1 * RATE)
_TAIL_S = 2.0  # after the last response: its audio plays out and reports arrive
_WARMUP_S = 1.5  # between the page being ready and the session starting (see run())
_NICE = -10  # the harness raises its own priority to this where allowed (_raise_priority)


@dataclass
class Options:
    """What the command line asked for."""

    profile: tuple[Stage, ...]
    spec: str
    json_path: Path
    wav: Path | None = None
    seed: int = 1
    min_responses: int = 8
    after_change: int = 4
    companion: bool = True
    niceness: int = 0
    log_dir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="heard-e2e-")))
    keep_log: bool = False  # True with --log-dir; a temp dir goes once a run completed


def _parse(argv: list[str]) -> Options:
    p = argparse.ArgumentParser(
        prog="scripts/heard-e2e", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    p.add_argument("--profile", required=True, metavar="SPEC", help="e.g. 60:10:0,200:10:0@20")
    p.add_argument("--json", required=True, type=Path, metavar="OUT")
    p.add_argument("--wav", type=Path, help="also write the recording (48 kHz mono)")
    p.add_argument("--seed", type=int, default=1, help="the path's random seed (default 1)")
    p.add_argument(
        "--min-responses", type=int, default=8, help="responses in the session at least (8)"
    )
    p.add_argument(
        "--after-change",
        type=int,
        default=4,
        help="responses that must follow the last profile change (4)",
    )
    p.add_argument(
        "--no-companion",
        action="store_true",
        help="run without the client companion and the agent side (every response unavailable)",
    )
    p.add_argument(
        "--log-dir",
        type=Path,
        help="where the browser log goes (default: a temp dir, removed once the run completed)",
    )
    a = p.parse_args(argv)
    try:
        stages = parse_profile(a.profile)
    except ProfileError as e:
        p.error(str(e))
    opts = Options(
        profile=stages,
        spec=a.profile,
        json_path=a.json,
        wav=a.wav,
        seed=a.seed,
        min_responses=a.min_responses,
        after_change=a.after_change,
        companion=not a.no_companion,
    )
    if a.log_dir is not None:
        a.log_dir.mkdir(parents=True, exist_ok=True)
        opts.log_dir = a.log_dir
        opts.keep_log = True
    return opts


def after_change(stages: tuple[Stage, ...], starts: list[float | None]) -> list[int | None]:
    """Per response (its start in seconds from the session's start, None: never played):
    how many responses have started since the last profile change, itself included
    (1: the first response after it), or None before any change."""
    out: list[int | None] = []
    count = 0
    current = stages[0]
    for t in starts:
        if t is None:
            out.append(None)
            continue
        stage = stage_at(stages, t)
        if stage is not current:
            current, count = stage, 0
        if current is stages[0]:
            out.append(None)
        else:
            count += 1
            out.append(count)
    return out


async def _run(opts: Options) -> dict[str, Any]:
    # SIGTERM (a CI timeout, `kill`) cancels the run, so everything below is cleaned up
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    pulse = PulseServer()
    recorder: Recorder | None = None
    server: PageServer | None = None
    relay: RelayProcess | None = None
    browser: Browser | None = None
    agent_side: AgentSide | None = None
    recording: Recording | None = None
    origin = time.time()
    boosted = 0
    try:
        pulse.start()
        recorder = Recorder(pulse)
        recorder.start()
        if opts.companion:
            agent_side = load_agent_side()
        server = PageServer(static=agent_side.static if agent_side else None)
        await server.start()
        relay = RelayProcess(opts.spec, start=origin, seed=opts.seed)
        query = f"relayA={relay.port_a}&relayB={relay.port_b}"
        if agent_side is not None:
            query += "&companion=1"
        browser = Browser(
            f"http://127.0.0.1:{server.port}/?{query}", pulse.env, opts.log_dir / "browser.log"
        )
        await browser.start()
        assert server.ready is not None
        try:
            page = await asyncio.wait_for(server.ready, 60)
        except asyncio.TimeoutError:
            raise RuntimeError(
                f"the page did not get ready within 60 s; see {opts.log_dir / 'browser.log'}"
            ) from None
        logger.info("page ready: %s", page)
        # the browser's audio output opens some time after the page is ready (measured: a
        # response that starts at once lost its start without the companion at 48 kHz), as a
        # user's has by the time an agent first speaks in a room
        await asyncio.sleep(_WARMUP_S)
        boosted = browser.boost(opts.niceness)
        if agent_side is not None:
            # RPC crosses the path as the media does: the page's sender lead (it stands for
            # the agent's leg to the SFU) and the stage's delay (jitter and loss left out)
            lead = float(page.get("leadS") or 0.0)
            agent_side.connect(
                server,
                lambda: lead + stage_at(opts.profile, time.time() - origin).delay_ms / 1000,
            )

        last_change = opts.profile[-1].at_s if len(opts.profile) > 1 else None

        def keep_going(t: float, responses: list[ResponseRecord]) -> bool:
            if len(responses) < opts.min_responses:
                return True
            if last_change is None:
                return False
            after = [r for r in responses if r.created_at >= last_change]
            return t < last_change or len(after) < opts.after_change

        async def started(session: Any) -> None:
            nonlocal boosted, origin
            if agent_side is not None:
                await agent_side.on_session_started(session)
            boosted += browser.boost(opts.niceness)  # the companion's threads too
            # the profile's clock starts with the agent's first turn, as the agent's does:
            # the companion's start-up takes longer on a slower path (its RPC crosses it),
            # and would move the profile's changes against the responses
            origin = time.time()
            relay.set_start(origin)

        # the agent's modules and the page's setup stay alive for the whole run: frozen, a
        # full collection skips them (measured: ~115 ms otherwise, 30 s in, longer than the
        # page's lead for the frames of a response that starts after silence)
        gc.collect()
        gc.freeze()
        origin = time.time()
        relay.set_start(origin)
        assert browser.pid is not None
        cpu_from = time.time()
        cpu_before = thread_cpu(browser.pid)
        run = await run_agent(
            server,
            keep_going=keep_going,
            on_started=started,
            on_response=agent_side.on_response if agent_side else None,
        )
        await asyncio.sleep(_TAIL_S)
        cpu = cpu_by_thread_name(cpu_before, thread_cpu(browser.pid), time.time() - cpu_from)
        if agent_side is not None:
            await agent_side.finish(run)
    finally:
        if browser is not None:
            await browser.stop()
        if agent_side is not None:
            await agent_side.aclose()
        if server is not None:
            await server.stop()
        if relay is not None:
            relay.close()
        if recorder is not None:
            with contextlib.suppress(RuntimeError):
                recording = recorder.stop()
        pulse.stop()
    if recording is None:
        raise RuntimeError("nothing was recorded")
    if opts.wav is not None:
        with wave.open(str(opts.wav), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(RATE)
            w.writeframes(recording.pcm)
    path_stats = relay.stats if relay is not None else None
    result = analyse(opts, run, recording, origin, path_stats, server, agent_side)
    result["chromium_cpu_pct_of_core"] = cpu
    result["threads_raised_to_niceness"] = boosted
    return result


def analyse(
    opts: Options,
    run: AgentRun,
    recording: Recording,
    origin: float,
    path_stats: dict[str, dict[str, int]] | None,
    server: PageServer,
    agent_side: AgentSide | None,
) -> dict[str, Any]:
    """Locate every response in the recording and compare the agent side's times with it."""
    sent = run.sink.recording
    t0 = sent.runs[0].start if sent.runs else origin
    pcm = sent.render(t0)
    if opts.wav is not None:  # what the agent sent, beside what the device played
        with wave.open(str(opts.wav.with_suffix(".sent.wav")), "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(SAMPLE_RATE)
            w.writeframes(pcm)
    agent = np.frombuffer(pcm, "<i2").astype(np.float64) / 32768
    agent48 = truth.resample(agent, SAMPLE_RATE, RATE)
    rec = np.frombuffer(recording.pcm, "<i2").astype(np.float64) / 32768
    window = int(truth.WINDOW_S * RATE)
    fine_window = int(truth.FINE_WINDOW_S * RATE)
    starts = [r.sink_started for r in run.responses]
    rel = [None if s is None else s - origin for s in starts]
    changes = after_change(opts.profile, rel)
    rows: list[dict[str, Any]] = []
    problems = list(run.errors)
    if len(recording.anchors) < 2 and len(rec) > 4 * ANCHOR_S * RATE:
        # one start for a whole recording dates it at the nominal rate: off by ~10 ms in 40 s
        problems.append(
            f"the recording has too few block-sized reads to place it ({recording.fragments})"
        )
    for i, r in enumerate(run.responses):
        t_rel = rel[i]
        row: dict[str, Any] = {
            "index": i,
            "id": r.response.id,
            "first_of_session": i == 0,
            "after_change": changes[i],
            "stage": stage_at(opts.profile, t_rel).label() if t_rel is not None else None,
            "start_s": rel[i],
            "measured_error_ms": None,
            "fired_error_ms": None,
            "how": "unavailable",
        }
        rows.append(row)
        s = starts[i]
        if s is None:
            problems.append(f"response {i} never played")
            continue
        # the response's own audio: from its start to the next response's start
        a0 = int(round((s - t0) * SAMPLE_RATE))
        nxt = starts[i + 1] if i + 1 < len(starts) else None
        a1 = int(round((nxt - t0) * SAMPLE_RATE)) if nxt is not None else len(agent)
        fa = truth.first_audible(agent[a0:a1])
        if fa is None:
            problems.append(f"response {i} has no audible sample")
            continue
        offset = fa / SAMPLE_RATE
        row["first_audible_offset_ms"] = round(offset * 1000, 2)
        ref0 = int(round((s + offset - t0) * RATE))
        expected = int(round(recording.sample_of(s + offset)))
        max_lag = int(truth.MAX_LAG_S * RATE)
        coarse = truth.locate(agent48[ref0 : ref0 + window], rec, expected, max_lag, rate=RATE)
        if coarse is None or coarse.score < 0.5:
            problems.append(
                f"response {i} not found in the recording"
                + (f" (best score {coarse.score:.2f})" if coarse else "")
            )
            continue
        span = int(truth.FINE_RANGE_S * RATE)
        fine = truth.locate(
            agent48[ref0 : ref0 + fine_window],
            rec,
            expected,
            coarse.lag_samples + span,
            rate=RATE,
            min_lag=coarse.lag_samples - span,
        )
        # the short window gives the lag at the onset itself; a fricative start (noise, which
        # Opus does not keep as a waveform) correlates poorly, and then the long one is used
        use_fine = fine is not None and fine.score >= 0.6
        lag = (fine.lag_samples if use_fine and fine is not None else coarse.lag_samples) / RATE
        row.update(
            truth_by="fine" if use_fine else "coarse",
            truth_path_ms=round(lag * 1000, 2),
            truth_score=round(coarse.score, 3),
            truth_runner_up=round(coarse.runner_up, 3),
            truth_fine_score=round(fine.score, 3) if fine is not None else None,
        )
        t_truth = s + lag
        # where the response starts after silence, the path may leave out its first sound
        # (WebRTC mutes up to ~20 ms of it after silence), so the recording's onset can be
        # later audio than the agent's first audible sample: the truth is where the waveform
        # from that sample lines up, searched only where the onset allows it
        if truth.onset_after(agent, a0 + fa, SAMPLE_RATE) == a0 + fa:
            near = expected + int(round(lag * RATE))
            onset = truth.onset_after(rec, max(near - _ONSET_EARLY, 0), RATE)
            if onset is not None and -_ONSET_EARLY <= onset - near <= _ONSET_SEARCH:
                t_onset = recording.time_of(onset) - offset
                left_out = [int(round(x * RATE)) for x in truth.LEFT_OUT_S]
                placed = truth.locate(
                    agent48[ref0 : ref0 + fine_window],
                    rec,
                    expected,
                    onset - expected - left_out[0],
                    rate=RATE,
                    min_lag=onset - expected - left_out[1],
                )
                if placed is not None and placed.score >= 0.6:
                    t_truth = recording.time_of(expected + placed.lag_samples) - offset
                    row["truth_by"] = "waveform-at-onset"
                    row["truth_fine_score"] = round(placed.score, 3)
                else:  # the waveform is no help (a fricative): the onset itself
                    t_truth = t_onset
                    row["truth_by"] = "onset"
                row["truth_path_ms"] = round((t_truth - s) * 1000, 2)
                row["audible_after_ms"] = round((t_onset - t_truth) * 1000, 2)
            else:
                problems.append(f"response {i} starts after silence but has no onset near it")
        if agent_side is not None:
            got = agent_side.result(r)
            row["how"] = got.how
            if got.fired_at is not None:
                row["fired_error_ms"] = round((got.fired_at - t_truth) * 1000, 2)
            if got.measured_at is not None:
                row["measured_error_ms"] = round((got.measured_at - t_truth) * 1000, 2)
            row.update(got.extra)
    out: dict[str, Any] = {
        "profile": opts.spec,
        "stages": [st.label() for st in opts.profile],
        "seed": opts.seed,
        "companion": agent_side is not None,
        "completed": not problems,
        "problems": problems,
        "responses": rows,
        "recording": {
            "start": recording.start,
            "sent_start": t0,
            "seconds": round(len(rec) / RATE, 2),
            "clock_bound_ms": round(recording.clock_bound_ms, 3),
            "sink_fast_ppm": round(recording.fast_ppm, 1),
            "blocks_used": recording.fragments,
            "anchors": len(recording.anchors),
            "sink_block_ms": recording.block_ms,
        },
        "path": path_stats,
        "audio_bytes_to_page": server.sent_bytes,
        "feeder_late_ms": server.feeder_late_ms,
        "lead_margin_ms": server.lead_margin_ms,
        "feeder_reanchors": [
            {"at_s": round(at - origin, 3), "drift_ms": round(ms, 2)} for at, ms in server.reanchors
        ],
        "load_average": list(os.getloadavg()),
        "commit": _commit(),
        "niceness": opts.niceness,
    }
    if agent_side is not None:
        out["companion_stats"] = agent_side.stats()
    return out


def _commit() -> str | None:
    """The checked-out commit (with ``+dirty`` when files differ from it), if in git."""
    root = Path(__file__).resolve().parent.parent
    head = subprocess.run(
        ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, check=False
    )
    if head.returncode != 0:
        return None
    dirty = subprocess.run(["git", "diff", "--quiet", "HEAD"], cwd=root, check=False).returncode
    return head.stdout.strip() + ("+dirty" if dirty else "")


def _raise_priority() -> int:
    """Raise this process's priority (nice -10) where allowed; the niceness in force."""
    try:
        return os.nice(_NICE - os.nice(0)) if os.nice(0) > _NICE else os.nice(0)
    except PermissionError:
        return os.nice(0)


def _fmt(v: float | None) -> str:
    return "     -" if v is None else f"{v:+6.1f}"


def main(argv: list[str] | None = None) -> int:
    """Run the harness; see the module doc."""
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    opts = _parse(sys.argv[1:] if argv is None else argv)
    # audio is real time: on a shared, loaded machine a starved audio thread adds delay that
    # no device would (a stall's backlog then plays late for seconds). Everything the run
    # starts (PulseAudio, parec, Chromium) inherits this priority.
    opts.niceness = _raise_priority()
    try:
        result = asyncio.run(_run(opts))
    except RuntimeError as e:
        print(f"heard-e2e: {e} (browser log: {opts.log_dir})", file=sys.stderr)
        return 1
    except asyncio.CancelledError:
        print(f"heard-e2e: stopped (SIGTERM; browser log: {opts.log_dir})", file=sys.stderr)
        return 143
    if result["completed"] and not opts.keep_log:
        shutil.rmtree(opts.log_dir, ignore_errors=True)
    elif not result["completed"]:
        print(f"heard-e2e: browser log: {opts.log_dir}", file=sys.stderr)
    opts.json_path.parent.mkdir(parents=True, exist_ok=True)
    opts.json_path.write_text(json.dumps(result, indent=1) + "\n")
    print(f"heard-e2e: profile {opts.spec}, {len(result['responses'])} responses")
    print("  #  id          stage          after  path ms  measured  fired   how")
    for r in result["responses"]:
        ac = "-" if r["after_change"] is None else str(r["after_change"])
        path = r.get("truth_path_ms")
        print(
            f"{r['index']:>3}  {r['id']:<11} {str(r['stage']):<14} {ac:>5}  "
            f"{_fmt(path)}   {_fmt(r['measured_error_ms'])}  {_fmt(r['fired_error_ms'])}  "
            f"{r['how']}"
        )
    for p in result["problems"]:
        print(f"  problem: {p}")
    bound = result["recording"]["clock_bound_ms"]
    print(f"  recording clock bound: {bound} ms; JSON: {opts.json_path}")
    return 0 if result["completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
