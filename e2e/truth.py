"""Ground truth from the recording: where each response starts at the device.

Definitions follow docs/client-playout.md ("The moment, defined once"): a response's device
start is its first frame at the output, leading TTS silence included; a recording shows only
where sound becomes audible, so it is mapped through the response's first audible sample:
``truth = (device time of the first audible sample) - first_audible_offset``, where
``first_audible_offset`` is measured on the agent's own frames with the same detector
(a sample is audible at amplitude >= `THRESHOLD`).

Where in the recording a response's first audible sample is: the harness cross-correlates
the agent's own audio from that sample on with the recording, searching lags in
``[0, MAX_LAG_S]``: the waveform over `WINDOW_S`, then over `FINE_WINDOW_S` within
`FINE_RANGE_S` of that. Where the response starts after silence (>= `GAP_S`), the onset in
the recording near that lag (the first audible sample after the silence) bounds the search:
the path can leave out the first milliseconds of sound after silence (`LEFT_OUT_S`), so the
truth is where the waveform from the agent's first audible sample lines up within that
range, and the onset itself where the waveform does not correlate. Where the response
follows the previous one with no silence between them, no onset exists, and the
correlation's lag at the start of the response is the truth.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "GAP_S",
    "LEFT_OUT_S",
    "MAX_LAG_S",
    "THRESHOLD",
    "WINDOW_S",
    "Located",
    "first_audible",
    "locate",
    "onset_after",
    "resample",
]

THRESHOLD = 0.01
"""Audible: amplitude >= 1 % of full scale (-40 dBFS), the detector of the protocol."""
GAP_S = 0.2
"""An onset follows at least this much inaudible audio (the protocol's ``gap_ms``)."""
WINDOW_S = 0.3
"""How much of a response, from its first audible sample, is matched in the recording."""
FINE_WINDOW_S = 0.06
"""The second pass: this much from the first audible sample, near the first pass's lag, so
the lag is the one at the onset (NetEq may stretch the audio later in the window)."""
FINE_RANGE_S = 0.005
"""How far from the first pass's lag the second pass looks: less than half a pitch period
of the voice, so the waveform cannot lock one period off."""
MAX_LAG_S = 1.0
"""The longest path (network + jitter buffer + output) the search allows."""
LEFT_OUT_S = (-0.002, 0.03)
"""How much of a response's first sound after silence the path may leave out: the truth at
an onset is searched this far before the recording's onset (2-20 ms measured: WebRTC mutes
the start of sound after silence; plain Opus does not), and 2 ms after it."""

Floats = npt.NDArray[np.float64]


def first_audible(x: Floats, threshold: float = THRESHOLD) -> int | None:
    """Index of the first sample with ``|x| >= threshold`` (``x`` in [-1, 1]), or None."""
    idx = np.flatnonzero(np.abs(x) >= threshold)
    return int(idx[0]) if idx.size else None


def onset_after(
    x: Floats, start: int, rate: int, *, threshold: float = THRESHOLD, gap_s: float = GAP_S
) -> int | None:
    """The first onset at or after ``start``: an audible sample after ``gap_s`` of silence.

    Samples before ``start`` count for the gap, so an onset right at ``start`` needs the
    silence before it.
    """
    loud = np.abs(x) >= threshold
    gap = int(gap_s * rate)
    idx = np.flatnonzero(loud[start:]) + start
    prev_loud = np.flatnonzero(loud[:start])
    last = int(prev_loud[-1]) if prev_loud.size else -(10**12)
    for i in idx:
        if i - last > gap:
            return int(i)
        last = int(i)
    return None


def resample(x: Floats, src: int, dst: int) -> Floats:
    """Linear resampling (enough for locating speech by correlation)."""
    if src == dst:
        return x
    n = int(round(len(x) * dst / src))
    out: Floats = np.interp(np.arange(n) * (src / dst), np.arange(len(x)), x)
    return out


@dataclass(frozen=True)
class Located:
    """Where a stretch of the agent's audio was found in the recording."""

    lag_samples: int
    """Recording index minus the expected index (recording rate)."""
    score: float
    """Normalized correlation at the peak, 0..1 (1: the same waveform)."""
    runner_up: float
    """The best score more than 2 ms away from the peak: close to ``score`` is ambiguous."""


def locate(
    ref: Floats, rec: Floats, expected: int, max_lag: int, *, rate: int, min_lag: int = 0
) -> Located | None:
    """Find ``ref`` in ``rec`` at ``expected + lag`` for a lag in ``[min_lag, max_lag]``.

    Normalized cross-correlation: the score of each lag is the cosine between ``ref`` and
    the stretch of the recording at that lag.
    """
    lo = max(expected + min_lag, 0)
    hi = min(expected + max_lag + len(ref), len(rec))
    seg = rec[lo:hi]
    if len(seg) < len(ref) or not np.any(ref):
        return None
    n = len(seg) + len(ref)
    nfft = 1 << (n - 1).bit_length()
    corr = np.fft.irfft(np.fft.rfft(seg, nfft) * np.conj(np.fft.rfft(ref, nfft)), nfft)
    corr = corr[: len(seg) - len(ref) + 1]
    energy = np.concatenate(([0.0], np.cumsum(seg * seg)))
    win = energy[len(ref) :] - energy[: -len(ref)]
    norm = np.sqrt(np.maximum(win, 1e-12) * float(np.dot(ref, ref)))
    score = corr / norm
    best = int(np.argmax(score))
    far = np.abs(np.arange(len(score)) - best) > max(rate // 500, 1)  # 2 ms
    runner = float(np.max(score[far])) if np.any(far) else 0.0
    return Located(lag_samples=lo + best - expected, score=float(score[best]), runner_up=runner)
