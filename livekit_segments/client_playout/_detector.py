"""The onset detector the agent, the companion and the e2e harness share (docs/client-playout.md).

A sample is audible when its amplitude (largest ``|x|`` over channels, ``x`` in [-1, 1]) is at
least ``thr``; an onset is an audible sample that follows at least ``gap`` seconds without one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

DEFAULT_THRESHOLD = 0.01  # -40 dBFS, the demo's onset threshold too
DEFAULT_GAP = 0.2
MAX_GAP = 60.0  # the gap of an onset with nothing audible before it


@dataclass(frozen=True)
class Onset:
    """An onset on some clock: when its first audible sample plays, and the silence before it."""

    at: float
    gap: float


def amplitudes(data: npt.ArrayLike, num_channels: int) -> npt.NDArray[np.float64]:
    """Per-sample amplitude in [0, 1] of interleaved int16 PCM (an ``rtc.AudioFrame``'s data)."""
    pcm = np.frombuffer(memoryview(data).cast("B"), dtype=np.int16).astype(np.float64)  # type: ignore[arg-type]
    if num_channels > 1:
        pcm = pcm[: len(pcm) - len(pcm) % num_channels].reshape(-1, num_channels)
        amp: npt.NDArray[np.float64] = np.abs(pcm).max(axis=1)
    else:
        amp = np.abs(pcm)
    return amp / 32768.0


class OnsetDetector:
    """Finds onsets in a stream of samples whose times the caller supplies block by block."""

    def __init__(self, *, threshold: float = DEFAULT_THRESHOLD, gap: float = DEFAULT_GAP) -> None:
        self.threshold = threshold
        self.gap = gap
        self.last_audible: float | None = None

    def first_audible(
        self, amp: npt.NDArray[np.float64], start: float, sample_rate: int
    ) -> float | None:
        """Time of the first audible sample of a block, or None (does not change state)."""
        idx = np.flatnonzero(amp >= self.threshold)
        return None if idx.size == 0 else start + float(idx[0]) / sample_rate

    def feed(self, amp: npt.NDArray[np.float64], start: float, sample_rate: int) -> list[Onset]:
        """Consume one block whose sample 0 plays at ``start``; return the onsets in it."""
        idx = np.flatnonzero(amp >= self.threshold)
        if idx.size == 0:
            return []
        times = start + idx.astype(np.float64) / sample_rate
        prev = np.empty_like(times)
        prev[0] = times[0] - MAX_GAP if self.last_audible is None else self.last_audible
        prev[1:] = times[:-1]
        gaps = np.minimum(times - prev, MAX_GAP)
        # a tiny epsilon: a gap of exactly `gap` seconds counts, as in the companion
        hits = np.flatnonzero(gaps >= self.gap - 1e-9)
        self.last_audible = float(times[-1])
        return [Onset(at=float(times[i]), gap=float(gaps[i])) for i in hits]


# -- the onset's envelope (docs/client-playout.md, "Envelopes") --

ENVELOPE_BINS = 64  # 1 ms bins from the onset's first audible sample: fewer lock on a pitch period
ENVELOPE_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
_DB_FLOOR = -96.0
_DB_STEP = 1.5
MUTE_SEARCH = (-0.002, 0.03)  # seconds of the onset's sound the device may have left out
MIN_ENVELOPE_SCORE = 0.9  # cosine of the two envelopes: below, the onset is taken as it is


def _bin_edges(sample_rate: int, bins: int, width_ms: int = 1) -> npt.NDArray[np.int64]:
    # sample i (from the onset) is in 1 ms bin floor(i * 1000 / rate): bin k starts at
    # ceil(k * rate / 1000); a level `width_ms` wide spans whole 1 ms bins
    return np.array(
        [-(-k * width_ms * sample_rate // 1000) for k in range(bins + 1)], dtype=np.int64
    )


def encode_envelope(
    amp: npt.NDArray[np.float64], sample_rate: int, bins: int, width_ms: int = 1
) -> str:
    """The envelope of ``amp`` (amplitudes from an onset's first audible sample on): one
    character per bin of ``width_ms``, the bin's RMS amplitude in 1.5 dB steps above -96 dBFS
    (the companion's levels are encoded so too)."""
    edges = _bin_edges(sample_rate, bins, width_ms)
    out = []
    for k in range(bins):
        part = amp[edges[k] : edges[k + 1]]
        if part.size == 0:
            break
        rms = float(np.sqrt(np.mean(part * part)))
        # floor(x + 0.5), as the companion rounds (Python rounds ties to even)
        level = 0 if rms <= 0 else math.floor((20 * math.log10(rms) - _DB_FLOOR) / _DB_STEP + 0.5)
        out.append(ENVELOPE_ALPHABET[min(max(level, 0), 63)])
    return "".join(out)


def decode_envelope(text: str) -> npt.NDArray[np.float64]:
    """RMS amplitudes of an encoded envelope (level 0 decodes to 0)."""
    levels = np.array([ENVELOPE_ALPHABET.index(c) for c in text], dtype=np.float64)
    rms: npt.NDArray[np.float64] = np.where(
        levels > 0, 10 ** ((levels * _DB_STEP + _DB_FLOOR) / 20), 0.0
    )
    return rms


def _scores(
    amp: npt.NDArray[np.float64],
    edges: npt.NDArray[np.int64],
    device: npt.NDArray[np.float64],
    lo: int,
    hi: int,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """The cosine of the device's RMS levels and the agent's, for the agent's bins starting at
    each sample index from ``lo`` to ``hi`` (bin k: ``amp[i + edges[k] : i + edges[k + 1]]``)."""
    csum = np.concatenate(([0.0], np.cumsum(amp * amp)))
    shifts = np.arange(lo, hi + 1)
    starts = shifts[:, None] + edges[None, :]  # (shifts, bins + 1)
    sums = csum[starts[:, 1:]] - csum[starts[:, :-1]]
    agent = np.sqrt(sums / np.diff(edges)[None, :])
    norm = np.sqrt((agent * agent).sum(axis=1) * float(device @ device))
    score: npt.NDArray[np.float64] = (agent @ device) / np.maximum(norm, 1e-18)
    return shifts, score


def envelope_shift(
    amp: npt.NDArray[np.float64], lead: int, sample_rate: int, envelope: str
) -> tuple[float, float] | None:
    """Where in the agent's audio the device's envelope starts, in seconds after the agent's
    onset: how much of the onset's sound the device left out (WebRTC can mute the first
    milliseconds after silence). ``amp`` holds the agent's amplitudes with the onset at index
    ``lead``. Returns (shift, score) for the best shift in `MUTE_SEARCH` by the cosine of the
    two RMS envelopes, or None when the audio is too short or silent."""
    device = decode_envelope(envelope)
    bins = len(device)
    edges = _bin_edges(sample_rate, bins)
    lo = max(-lead, round(MUTE_SEARCH[0] * sample_rate))
    hi = min(round(MUTE_SEARCH[1] * sample_rate), len(amp) - lead - int(edges[-1]))
    if bins == 0 or hi < lo or not np.any(device):
        return None
    shifts, score = _scores(amp, edges, device, lead + lo, lead + hi)
    best = int(np.argmax(score))
    return float(shifts[best] - lead) / sample_rate, float(score[best])


# -- levels around a back-to-back response's start (docs/client-playout.md, "Levels") --

LEVELS_PRE = 0.02  # seconds of the agent's audio before the response's start it compares
LEVELS_POST = 0.16  # and after it (100 ms left a pitch period ambiguous)
LEVELS_SEARCH = 0.025  # how far the device time may be from the agent's estimate, either way
# ms per level: 2 ms levels blur the pitch pulses that 1 ms levels resolve, so a fit a pitch
# period off scores lower, at half the bytes (offline, on recorded sessions: 0 of 108 placed
# wrong, 2 refused, where 1 ms levels over 140 ms refused 4 to 9)
LEVELS_WIDTH_MS = 2
LEVELS_MARGIN = 0.005  # the best must beat every alignment 5 ms or more away by this much
_APART = 0.005


@dataclass(frozen=True)
class LevelsFit:
    """Where the device's levels line up with the agent's audio."""

    index: int  # the agent sample at which the device's first bin starts
    score: float  # cosine of the two RMS level sequences
    runner_up: float  # the best cosine 5 ms or more away from it


def levels_fit(
    amp: npt.NDArray[np.float64],
    sample_rate: int,
    levels: str,
    lo: int,
    hi: int,
    width_ms: int,
) -> LevelsFit | None:
    """Slide the device's levels of ``width_ms`` each (``levels``, the envelope encoding)
    over the agent's amplitudes ``amp``, their first bin starting at each sample index from
    ``lo`` to ``hi``; the best fit, or None when the audio is too short or the levels silent."""
    device = decode_envelope(levels)
    edges = _bin_edges(sample_rate, len(device), width_ms)
    lo, hi = max(lo, 0), min(hi, len(amp) - int(edges[-1]))
    if len(device) == 0 or hi < lo or not np.any(device):
        return None
    shifts, score = _scores(amp, edges, device, lo, hi)
    best = int(np.argmax(score))
    far = np.abs(shifts - shifts[best]) >= round(_APART * sample_rate)
    runner = float(np.max(score[far])) if np.any(far) else 0.0
    return LevelsFit(index=int(shifts[best]), score=float(score[best]), runner_up=runner)
