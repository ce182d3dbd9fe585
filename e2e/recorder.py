"""The ground truth: a PulseAudio null sink the browser plays into, recorded by ``parec``.

`PulseServer` runs a private PulseAudio daemon (its own runtime directory, so runs do not
share a server) with one null sink, ``rec``, as the default output. `Recorder` reads the
sink's monitor with ``parec`` and places every sample on the ``time.time()`` clock.

Placing samples: a null sink has no hardware clock. On a system-clock timer it renders one
block (its configured latency: here 5 ms, the latency parec asks for) of what its clients
wrote and copies it to its monitor at that moment. PulseAudio's own latency accounting, which
is what Chromium's output timestamps are built on, counts the block's first sample as playing
at the render time and the rest one by one after it (the sink's latency is the rendered part
not yet played). The harness uses that same model: ``parec`` is read in block-sized pieces,
each stamped on arrival, which is never before its block was rendered. So for every piece
that is exactly one block, ``arrival - (samples before it) / rate`` is an upper bound of the
recording's start, and the smallest of these bounds is the tightest. What remains is how
soon a block reaches us after it was rendered (scheduling), at least zero;
`Recording.clock_bound_ms` reports the spread of the best bounds as its size.

The bounds are taken per window (at least `ANCHOR_S` and `MIN_BLOCKS` blocks), not once for
the whole recording, because the sink's rate is not exactly its nominal one. With Chromium
playing into it, the sink rendered 220-340 ppm more samples than time passed in every B8
session so far (with and without the companion): in one, its bounds fell by 11 ms over 40 s,
and the companion's AudioContext clock ran fast against ``performance.now()`` by the same
amount. With no client the bounds stay within 0.1 ms. Real devices are off their nominal rate
too, by tens of ppm. With one start for the whole recording, every sample was dated by the
samples rendered after it: up to 25 ms early at the start of an 85 s session. So sample
``n`` is placed by the bounds of the blocks near it (`Recording.time_of`). Renders often
reach parec two or more at a time (then a read is not one block): in some sessions only
10-20 reads a second were exactly one block, so the windows grow until they hold enough.
"""

from __future__ import annotations

import bisect
import ctypes
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "RATE",
    "PulseServer",
    "Recorder",
    "Recording",
    "block_bounds",
    "die_with_parent",
    "local_starts",
]

RATE = 48000
_FRAGMENT_MS = 5
_PR_SET_PDEATHSIG = 1
ANCHOR_S = 2.0  # the shortest window of blocks each local start is taken from
MIN_BLOCKS = 50  # the fewest block-sized reads in a window: it grows until it has them


def die_with_parent() -> None:
    """For ``preexec_fn``: the child gets SIGTERM when the harness dies, however it dies."""
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


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
        # the daemon's own rate is the sink's: a client (Chromium) opens its stream at the
        # daemon's default rate, and a stream resampled by the server drifts against its
        # timing reports (measured: ~400 ppm with the default 44.1 kHz against a 48 kHz sink)
        conf = self.runtime_dir / "config" / "pulse"
        conf.mkdir(parents=True, exist_ok=True)
        (conf / "daemon.conf").write_text(
            f"default-sample-rate = {RATE}\nalternate-sample-rate = {RATE}\n"
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
            env={**self.env, "PULSE_CONFIG_PATH": str(conf)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            preexec_fn=die_with_parent,
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
    """How many block-sized reads the start was estimated from."""
    block_ms: float = 0.0
    """The null sink's block: a real device would play it out over this long."""
    anchors: tuple[tuple[float, float], ...] = ()
    """(sample, start) pairs in sample order: the recording's start as the blocks near that
    sample place it (`local_starts`); empty: ``start`` holds everywhere."""

    def _start_near(self, sample: float) -> float:
        a = self.anchors
        if not a:
            return self.start
        if len(a) == 1:
            return a[0][1]
        # between the two nearest anchors, or extrapolated from the first or last two
        i = min(max(bisect.bisect_right([n for n, _ in a], sample), 1), len(a) - 1)
        (n0, s0), (n1, s1) = a[i - 1], a[i]
        return s0 + (s1 - s0) * (sample - n0) / (n1 - n0)

    @property
    def fast_ppm(self) -> float:
        """How much faster than its nominal rate the sink rendered, in ppm (a fit through
        the local starts; 0 with fewer than two)."""
        a = self.anchors
        if len(a) < 2:
            return 0.0
        xs = [n / RATE for n, _ in a]
        ys = [st for _, st in a]
        mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
        var = sum((x - mx) ** 2 for x in xs)
        slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / var
        return -slope * 1e6

    def time_of(self, sample: float) -> float:
        """The ``time.time()`` at which ``sample`` played."""
        return self._start_near(sample) + sample / RATE

    def sample_of(self, at: float) -> float:
        """The sample that played at ``time.time()`` ``at`` (the inverse of `time_of`)."""
        n = (at - self.start) * RATE
        for _ in range(3):  # the local start moves by ppm: this converges at once
            n = (at - self._start_near(n)) * RATE
        return n


@dataclass
class Recorder:
    """Records the null sink's monitor with ``parec`` while the run goes on."""

    server: PulseServer
    _proc: subprocess.Popen[bytes] | None = None
    _thread: threading.Thread | None = None
    _chunks: list[bytes] = field(default_factory=list)
    _reads: list[tuple[float, int, int]] = field(default_factory=list)
    """(arrival, first sample, end sample) of every read."""

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
            preexec_fn=die_with_parent,
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
            self._reads.append((now, total // 2, (total + len(data)) // 2))
            total += len(data)

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
        block, bounds = block_bounds(self._reads)
        if not bounds:
            err = self._proc.stderr.read().decode() if self._proc.stderr else ""
            raise RuntimeError(f"parec recorded nothing usable: {err.strip()}")
        anchors, spread = local_starts(self._reads, block)
        return Recording(
            pcm=pcm,
            start=anchors[0][1],
            clock_bound_ms=spread * 1000,
            fragments=len(bounds),
            block_ms=block * 1000 / RATE,
            anchors=tuple(anchors),
        )


def block_bounds(reads: list[tuple[float, int, int]]) -> tuple[int, list[float]]:
    """The sink's block (the most common read size, in samples) and, for every read of
    exactly one block, the upper bound ``arrival - first_sample / RATE`` of the start."""
    sizes = Counter(end - first for _, first, end in reads if end > first)
    if not sizes:
        return 0, []
    block = sizes.most_common(1)[0][0]
    return block, [t - first / RATE for t, first, end in reads if end - first == block]


def local_starts(
    reads: list[tuple[float, int, int]], block: int, window_s: float = ANCHOR_S
) -> tuple[list[tuple[float, float]], float]:
    """The recording's start as each window of block-sized reads places it: (first sample of
    the window's promptest block, its bound), in order; and the median over the windows of
    the spread of their best tenth of bounds (how much a local start could move).

    A window spans at least `window_s` and holds at least `MIN_BLOCKS` blocks: where few reads
    are exactly one block (the sink's renders coalesce into larger reads), it grows until it
    has them, so a sparse stretch still gives anchors instead of none. What is left at the end
    joins the window before it: a poor bound there would tilt the extrapolation past the last
    anchor.
    """
    blocks = sorted((first, t - first / RATE) for t, first, end in reads if end - first == block)
    windows: list[list[tuple[int, float]]] = []
    cur: list[tuple[int, float]] = []
    for first, bound in blocks:
        if len(cur) >= MIN_BLOCKS and first - cur[0][0] >= window_s * RATE:
            windows.append(cur)
            cur = []
        cur.append((first, bound))
    if cur:
        if windows and len(cur) < MIN_BLOCKS:
            windows[-1].extend(cur)
        else:
            windows.append(cur)
    anchors: list[tuple[float, float]] = []
    spreads: list[float] = []
    for items in windows:
        first, best = min(items, key=lambda it: it[1])
        anchors.append((float(first), best))
        bounds = sorted(b for _, b in items)
        spreads.append(bounds[len(bounds) // 10] - best)
    spreads.sort()
    return anchors, spreads[len(spreads) // 2] if spreads else 0.0
