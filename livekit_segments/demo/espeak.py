"""A small TTS adapter around the ``espeak-ng`` command line, used when it is on PATH."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import struct
from collections.abc import AsyncIterator
from dataclasses import dataclass

from livekit import rtc

from .synth import frames_from_pcm

__all__ = ["EspeakError", "EspeakSynth", "WavAudio", "find_espeak", "parse_wav"]

logger = logging.getLogger("livekit.segments.demo")

EXECUTABLE = "espeak-ng"


class EspeakError(RuntimeError):
    """espeak-ng failed or wrote something that is not 16-bit PCM WAV."""


@dataclass(frozen=True)
class WavAudio:
    """Interleaved 16-bit PCM and its format."""

    sample_rate: int
    num_channels: int
    pcm: bytes


def find_espeak() -> str | None:
    """The path of ``espeak-ng`` on PATH, or None."""
    return shutil.which(EXECUTABLE)


def parse_wav(data: bytes) -> WavAudio:
    """Read a 16-bit PCM RIFF/WAVE file from memory.

    ``espeak-ng --stdout`` cannot seek back to patch the header, so it writes placeholder
    sizes (0x7ffff000): the `wave` module would believe them. The data chunk's size is
    therefore capped at what is actually there.

    Raises:
        EspeakError: not a WAV file, or not 16-bit PCM.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise EspeakError("espeak-ng did not write a RIFF/WAVE file")
    fmt: tuple[int, int, int, int] | None = None
    pos = 12
    while pos + 8 <= len(data):
        chunk_id = data[pos : pos + 4]
        (size,) = struct.unpack_from("<I", data, pos + 4)
        body = pos + 8
        if chunk_id == b"fmt ":
            audio_format, channels, rate = struct.unpack_from("<HHI", data, body)
            (bits,) = struct.unpack_from("<H", data, body + 14)
            fmt = (audio_format, channels, rate, bits)
        elif chunk_id == b"data":
            if fmt is None:
                raise EspeakError("WAV data chunk before its fmt chunk")
            audio_format, channels, rate, bits = fmt
            if audio_format != 1 or bits != 16 or channels < 1:
                raise EspeakError(f"unsupported WAV format {audio_format}/{bits}-bit/{channels}ch")
            end = min(body + size, len(data))
            usable = (end - body) // (2 * channels) * (2 * channels)
            return WavAudio(rate, channels, data[body : body + usable])
        pos = body + size + (size & 1)
    raise EspeakError("WAV file without a data chunk")


class EspeakSynth:
    """Synthesizes each piece of text with ``espeak-ng --stdout``.

    The frames keep espeak's own rate (22050 Hz for its stock voices); the agent pipeline
    resamples them to the audio output's rate, as it does for any TTS.

    Args:
        executable: path of the ``espeak-ng`` binary (see `find_espeak`).
        voice: an espeak voice name.
        words_per_minute: speaking rate.
    """

    def __init__(
        self, executable: str, *, voice: str = "en-us", words_per_minute: int = 175
    ) -> None:
        self._executable = executable
        self._voice = voice
        self._wpm = words_per_minute

    @property
    def name(self) -> str:
        """``"espeak-ng"``."""
        return EXECUTABLE

    async def version(self) -> str:
        """The first line of ``espeak-ng --version``."""
        proc = await asyncio.create_subprocess_exec(
            self._executable,
            "--version",
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
        )
        out, _ = await proc.communicate()
        # "eSpeak NG text-to-speech: 1.51  Data at: ..." -> "espeak-ng 1.51"
        words = out.decode(errors="replace").split("Data at:")[0].split()
        return f"{EXECUTABLE} {words[-1]}" if words else EXECUTABLE

    async def synthesize_wav(self, text: str) -> WavAudio:
        """Run espeak-ng once for ``text`` and return its audio.

        Raises:
            EspeakError: espeak-ng exited with an error or wrote no usable audio.
        """
        # the text goes through stdin: no quoting, and a leading "-" is not an option
        proc = await asyncio.create_subprocess_exec(
            self._executable,
            "--stdout",
            "--stdin",
            "-v",
            self._voice,
            "-s",
            str(self._wpm),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await proc.communicate(text.encode())
        except asyncio.CancelledError:
            # interrupted mid-synthesis: do not leave the process behind
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()
            raise
        if proc.returncode != 0:
            raise EspeakError(
                f"espeak-ng exited with {proc.returncode}: {err.decode(errors='replace').strip()}"
            )
        audio = parse_wav(out)
        if not audio.pcm:
            raise EspeakError("espeak-ng produced no audio")
        logger.debug(
            "espeak-ng synthesized",
            extra={
                "sample_rate": audio.sample_rate,
                "duration": len(audio.pcm) / (2 * audio.num_channels * audio.sample_rate),
                "lk.pii.text": text,
            },
        )
        return audio

    async def synthesize(self, text: str) -> AsyncIterator[rtc.AudioFrame]:
        """Yield 20 ms frames of espeak's audio for ``text``."""
        audio = await self.synthesize_wav(text)
        for frame in frames_from_pcm(
            audio.pcm, sample_rate=audio.sample_rate, num_channels=audio.num_channels
        ):
            yield frame
