"""The companion's audio processing alone (B8's CPU figure): the worklet's code over the
harness's speech in headless Chromium (e2e/worklet_cost.mjs), as % of a core.

The sessions' thread figures count the companion's whole render thread: in the own-graph path
that is the rendering of the track itself, which the page's audio element does elsewhere
without the companion. This times only what the companion adds to the audio thread.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from livekit_segments.demo.espeak import find_espeak

from .agent_session import TURNS, TrimmedEspeak
from .truth import resample

__all__ = ["RATE", "measure", "speech"]

HERE = Path(__file__).resolve().parent
WORKLET = HERE.parent / "client" / "dist" / "onset-worklet.js"
RATE = 48000
_PAUSE_S = 0.5  # silence after each response: onsets after silence, as in a session


async def _speech() -> np.ndarray:
    espeak = find_espeak()
    if espeak is None:
        raise RuntimeError("espeak-ng is not installed: run scripts/setup")
    synth = TrimmedEspeak(espeak)
    parts: list[np.ndarray] = []
    for turn in TURNS:
        for response in turn:
            frames = [f async for f in synth.synthesize(response.text)]
            pcm = b"".join(bytes(f.data) for f in frames)
            x = np.frombuffer(pcm, "<i2").astype(np.float64) / 32768
            parts += [resample(x, frames[0].sample_rate, RATE), np.zeros(int(_PAUSE_S * RATE))]
    return np.concatenate(parts)


def speech() -> np.ndarray:
    """The harness's responses, one after another with pauses, at `RATE` (mono, [-1, 1])."""
    return asyncio.run(_speech())


def measure(repeats: int = 15) -> dict[str, Any]:
    """Time the worklet's ``process()`` over `speech()` `repeats` times in Chromium."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: run scripts/setup")
    if not WORKLET.exists():
        raise RuntimeError(f"{WORKLET} is missing: cd client && npm run build")
    with tempfile.TemporaryDirectory() as tmp:
        audio = Path(tmp) / "speech.f32"
        audio.write_bytes(speech().astype("<f4").tobytes())
        out = subprocess.run(
            [
                node,
                str(HERE / "worklet_cost.mjs"),
                str(WORKLET),
                str(audio),
                str(RATE),
                str(repeats),
            ],
            cwd=HERE,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
    result: dict[str, Any] = json.loads(out.stdout)
    result["cpu_pct_of_core"] = [ms / (result["audio_s"] * 1000) * 100 for ms in result["runs_ms"]]
    return result
