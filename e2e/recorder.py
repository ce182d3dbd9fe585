"""The ground truth: a PulseAudio null sink the browser plays into, recorded by ``parec``.

`PulseServer` runs a private PulseAudio daemon (its own runtime directory, so runs do not
share a server) with one null sink, ``rec``, as the default output. `Recorder` reads the
sink's monitor with ``parec`` and places every sample on the ``time.time()`` clock.

Placing samples: a null sink has no hardware clock; it consumes what clients wrote on a
system-clock timer and copies it to its monitor at that moment, which is the moment the
"device" plays it. ``parec`` delivers the monitor in small fragments (``--latency-msec``).
Each fragment is stamped on arrival, which is never before its last sample was consumed.
So ``arrival - samples_so_far / rate`` is an upper bound of the recording's start for
every fragment, and the smallest of these bounds is the tightest. What remains is how
soon a fragment can reach us after its last sample: at least zero, at most the fragment
latency plus scheduling; `Recorder.clock_bound_ms` reports the spread as an error bound.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["RATE", "PulseServer", "Recorder", "Recording"]

RATE = 48000
_FRAGMENT_MS = 5


class PulseServer:
    """A private PulseAudio daemon with a null sink ``rec`` as its default output."""

    def __init__(self) -> None:
        self.runtime_dir = Path(tempfile.mkdtemp(prefix="heard-e2e-pulse-"))
        self.socket = self.runtime_dir / "pulse" / "native"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def env(self) -> dict[str, str]:
        """Environment for clients (the browser, parec) of this server."""
        return {
            **os.environ,
            "XDG_RUNTIME_DIR": str(self.runtime_dir),
            "PULSE_SERVER": f"unix:{self.socket}",
        }

    def start(self, timeout: float = 10.0) -> None:
        """Start the daemon and wait until its socket answers."""
        exe = shutil.which("pulseaudio")
        if exe is None:
            raise RuntimeError(
                "pulseaudio is not installed: run scripts/setup (it apt-installs it)"
            )
        self._proc = subprocess.Popen(
            [
                exe,
                "-n",
                "--daemonize=no",
                "--exit-idle-time=-1",
                "--disallow-exit",
                f"--load=module-null-sink sink_name=rec rate={RATE} channels=1",
                f"--load=module-native-protocol-unix socket={self.socket}",
                "--log-target=stderr",
                "--log-level=error",
            ],
            env=self.env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                err = self._proc.stderr.read().decode() if self._proc.stderr else ""
                raise RuntimeError(f"pulseaudio exited at start: {err.strip()}")
            ok = subprocess.run(
                ["pactl", "set-default-sink", "rec"], env=self.env, capture_output=True
            )
            if ok.returncode == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("pulseaudio did not answer within {timeout:.0f} s")

    def stop(self) -> None:
        """Stop the daemon and remove its runtime directory."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)


@dataclass
class Recording:
    """Mono 16-bit samples at `RATE`, sample ``n`` played at ``start + n / RATE``."""

    pcm: bytes
    start: float
    """``time.time()`` of sample 0 (the tightest upper bound, see the module doc)."""
    clock_bound_ms: float
    """How far ``start`` may be late: the spread of the per-fragment bounds near the best."""
    fragments: int

    def time_of(self, sample: float) -> float:
        """The ``time.time()`` at which ``sample`` played."""
        return self.start + sample / RATE


@dataclass
class Recorder:
    """Records the null sink's monitor with ``parec`` while the run goes on."""

    server: PulseServer
    _proc: subprocess.Popen[bytes] | None = None
    _thread: threading.Thread | None = None
    _chunks: list[bytes] = field(default_factory=list)
    _bounds: list[float] = field(default_factory=list)

    def start(self) -> None:
        """Start ``parec`` on ``rec.monitor``."""
        self._proc = subprocess.Popen(
            [
                "parec",
                "-d",
                "rec.monitor",
                "--raw",
                "--format=s16le",
                f"--rate={RATE}",
                "--channels=1",
                f"--latency-msec={_FRAGMENT_MS}",
            ],
            env=self.server.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            bufsize=0,
        )
        self._thread = threading.Thread(target=self._read, name="heard-e2e-parec", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        fd = self._proc.stdout.fileno()
        total = 0
        while True:
            data = os.read(fd, 65536)
            now = time.time()
            if not data:
                return
            self._chunks.append(data)
            total += len(data)
            # the last sample in hand was consumed no later than now
            self._bounds.append(now - (total // 2) / RATE)

    def stop(self) -> Recording:
        """Stop recording and return what was recorded."""
        if self._proc is None:
            raise RuntimeError("the recorder was never started")
        self._proc.terminate()
        self._proc.wait(5)
        if self._thread is not None:
            self._thread.join(5)
        pcm = b"".join(self._chunks)
        if len(pcm) % 2:
            pcm = pcm[:-1]
        if not self._bounds:
            err = self._proc.stderr.read().decode() if self._proc.stderr else ""
            raise RuntimeError(f"parec recorded nothing: {err.strip()}")
        bounds = sorted(self._bounds)
        # the bound that the best tenth of fragments reach: how much the fit could move
        spread = bounds[max(len(bounds) // 10, 0)] - bounds[0]
        return Recording(
            pcm=pcm, start=bounds[0], clock_bound_ms=spread * 1000, fragments=len(bounds)
        )
