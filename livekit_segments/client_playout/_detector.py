"""The onset detector the agent, the companion and the e2e harness share (docs/client-playout.md).

A sample is audible when its amplitude (largest ``|x|`` over channels, ``x`` in [-1, 1]) is at
least ``thr``; an onset is an audible sample that follows at least ``gap`` seconds without one.
"""

from __future__ import annotations

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
