"""The built-in synthesizer: a voiced, formant-shaped buzz per word, so the demo needs no TTS.

It is not speech, but it has what makes a playout timeline readable: a syllable rhythm, a
falling (or, for a question, rising) pitch, short gaps between words and longer ones at
punctuation. It starts sounding at its first sample, so a response's onset in the recording
is where its audio begins.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Protocol

import numpy as np
import numpy.typing as npt

from livekit import rtc

__all__ = ["BuiltinSynth", "Synthesizer", "frames_from_pcm"]

FloatArray = npt.NDArray[np.float64]

# formants (F1, F2, F3) in Hz of a few vowels, picked per syllable from the spelling
_VOWEL_FORMANTS: dict[str, tuple[float, float, float]] = {
    "a": (730.0, 1090.0, 2440.0),
    "e": (530.0, 1840.0, 2480.0),
    "i": (300.0, 2200.0, 2960.0),
    "o": (570.0, 840.0, 2410.0),
    "u": (320.0, 900.0, 2240.0),
    "y": (400.0, 1900.0, 2600.0),
}
_BANDWIDTHS = (90.0, 110.0, 170.0)
_WORD = re.compile(r"[A-Za-z0-9']+[^\sA-Za-z0-9']*")


class Synthesizer(Protocol):
    """What the demo agent's ``tts_node`` needs from a synthesizer."""

    @property
    def name(self) -> str:
        """A short human-readable name, such as ``"built-in"``."""
        ...

    def synthesize(self, text: str) -> AsyncIterator[rtc.AudioFrame]:
        """The audio for one piece of text, as 16-bit frames."""
        ...


def frames_from_pcm(
    pcm: bytes, *, sample_rate: int, num_channels: int = 1, frame_ms: int = 20
) -> Iterator[rtc.AudioFrame]:
    """Cut interleaved 16-bit PCM into frames of ``frame_ms`` (the last one may be shorter)."""
    bytes_per_frame = sample_rate * frame_ms // 1000 * num_channels * 2
    for start in range(0, len(pcm), bytes_per_frame):
        chunk = pcm[start : start + bytes_per_frame]
        samples = len(chunk) // (2 * num_channels)
        if samples:
            yield rtc.AudioFrame(
                chunk[: samples * 2 * num_channels], sample_rate, num_channels, samples
            )


class BuiltinSynth:
    """Synthesizes each word as a short voiced buzz (24 kHz mono by default).

    Args:
        sample_rate: output rate in Hz.
        words_per_minute: speaking rate; it scales word and gap lengths.
    """

    def __init__(self, *, sample_rate: int = 24000, words_per_minute: float = 190.0) -> None:
        self._sample_rate = sample_rate
        self._pace = 190.0 / words_per_minute

    @property
    def name(self) -> str:
        """``"built-in"``."""
        return "built-in"

    @property
    def sample_rate(self) -> int:
        """The rate of the frames it yields."""
        return self._sample_rate

    async def synthesize(self, text: str) -> AsyncIterator[rtc.AudioFrame]:
        """Yield 20 ms frames for ``text``, one word at a time."""
        words = _WORD.findall(text)
        for n, word in enumerate(words):
            pitch = _pitch_range(n, len(words), question=text.rstrip().endswith("?"))
            audio = self._word(word, pitch)
            audio = np.concatenate(
                [audio, np.zeros(self._gap_after(word, last=n == len(words) - 1))]
            )
            pcm = (np.clip(audio, -1.0, 1.0) * 32767.0).astype("<i2").tobytes()
            for frame in frames_from_pcm(pcm, sample_rate=self._sample_rate):
                yield frame
            # a word is a few ms of numpy work; let the event loop (and the playout) breathe
            await asyncio.sleep(0)

    # -- internals

    def _gap_after(self, word: str, *, last: bool) -> int:
        if last:
            seconds = 0.08
        elif word[-1] in ".!?":
            seconds = 0.28
        elif word[-1] in ",;:":
            seconds = 0.16
        else:
            seconds = 0.045
        return int(seconds * self._pace * self._sample_rate)

    def _word(self, word: str, pitch: tuple[float, float]) -> FloatArray:
        sr = self._sample_rate
        letters = word.lower()
        vowels: list[str] = re.findall(r"[aeiouy]+", letters) or ["e"]
        n_syl = len(vowels)
        seconds = min(0.06 + 0.1 * n_syl + 0.01 * len(letters), 0.6) * self._pace
        n = max(int(seconds * sr), 1)
        t = np.arange(n) / sr
        pos = np.linspace(0.0, 1.0, n)

        # pitch glides across the word; a small accent on its first syllable
        f0 = pitch[0] + (pitch[1] - pitch[0]) * pos + 12.0 * np.exp(-(((pos - 0.15) / 0.2) ** 2))
        phase = 2.0 * np.pi * np.cumsum(f0) / sr

        # formant tracks: one vowel target per syllable, interpolated between them
        targets = np.array([_VOWEL_FORMANTS[v[0]] for v in vowels])
        anchors = (np.arange(n_syl) + 0.5) / n_syl
        formants = [np.interp(pos, anchors, targets[:, k]) for k in range(3)]

        voiced = np.zeros(n)
        for k in range(1, int(3800.0 / max(pitch)) + 1):
            fk = k * f0
            gain = sum(
                1.0 / (1.0 + ((fk - formants[i]) / _BANDWIDTHS[i]) ** 2) * (0.9**i)
                for i in range(3)
            )
            voiced += gain * np.sin(k * phase) / np.sqrt(k)

        # syllable rhythm: each syllable swells and dips, the word fades in and out
        rhythm = 0.55 + 0.45 * np.sin(np.pi * (pos * n_syl % 1.0)) ** 0.7
        attack = np.minimum(t / 0.012, 1.0)
        release = np.minimum((seconds - t) / 0.04, 1.0)
        envelope = rhythm * attack * np.clip(release, 0.0, 1.0)
        audio = voiced * envelope

        # a consonant at the start of the word: a short breathy burst under the voicing
        if letters[0] not in "aeiouy":
            rng = np.random.default_rng(zlib.crc32(letters.encode()))
            burst_n = min(int(0.025 * sr), n)
            noise = np.diff(rng.standard_normal(burst_n + 1))
            audio[:burst_n] += 0.25 * noise * np.linspace(1.0, 0.0, burst_n)

        peak = float(np.max(np.abs(audio))) or 1.0
        scaled: FloatArray = 0.5 * audio / peak  # about -6 dBFS
        return scaled


def _pitch_range(n: int, count: int, *, question: bool) -> tuple[float, float]:
    """Start and end f0 of word ``n`` of ``count``: declination, with a rise on a question."""
    top, bottom = 165.0, 115.0
    step = (top - bottom) / max(count, 1)
    start = top - step * n
    end = start - step
    if question and n == count - 1:
        end = start + 45.0
    return start, end
