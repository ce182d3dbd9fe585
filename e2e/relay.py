"""A user-space impaired path between the page's two peer connections, on loopback.

This kernel has no netem, so the harness impairs in user space. It relays UDP: each peer
connection is told (by a munged ICE candidate) that the other one lives at a relay socket.
Packets from the sender (pcA) to the receiver (pcB) get the profile's delay, jitter
(per-packet uniform, so they reorder when jitter exceeds the packet spacing) and loss (RTP
and RTCP only, so ICE and DTLS set up as on a real path; their retransmissions would cope,
but the run would start later). The way back gets the base delay, so RTCP feedback sees
a round trip of twice the one-way delay.

`PathModel` decides each packet's fate from a seeded RNG and an injected clock, so tests
drive it deterministically; `UdpRelay` only moves bytes.

The harness runs the relay in a process of its own (`RelayProcess`, `python -m e2e.relay`):
a network does not stop when the agent does. In the agent's process, every pause of its
event loop held the packets in flight; a full garbage collection of about 115 ms, some 30 s
into companion sessions, became a 115 ms network stall (NetEq concealed, then raised its
delay and sped back up over 3 s) that no real path between agent and user would add.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from random import Random
from typing import IO, Any

from .profile import Stage, stage_at

__all__ = ["PathModel", "PathStats", "RelayProcess", "UdpRelay", "is_rtp_or_rtcp"]


def is_rtp_or_rtcp(packet: bytes) -> bool:
    """Whether a datagram is SRTP/SRTCP (RFC 7983 demultiplexing: first byte 128..191)."""
    return bool(packet) and 128 <= packet[0] <= 191


@dataclass
class PathStats:
    """What the path did, per direction."""

    forwarded: int = 0
    dropped: int = 0
    reordered: int = 0
    """Packets released before one that arrived earlier."""


@dataclass
class PathModel:
    """The fate of each packet: dropped, or released at a time (seconds, the caller's clock)."""

    stages: tuple[Stage, ...]
    start: float
    """The session's start on the caller's clock: stages' ``at_s`` count from it."""
    seed: int = 0
    forward: PathStats = field(default_factory=PathStats)
    back: PathStats = field(default_factory=PathStats)

    def __post_init__(self) -> None:
        self._rng = Random(self.seed)
        self._last_release = {True: float("-inf"), False: float("-inf")}

    def release_at(self, now: float, packet: bytes, *, forward: bool) -> float | None:
        """When to deliver ``packet`` that arrived ``now``, or None to drop it."""
        stage = stage_at(self.stages, now - self.start)
        stats = self.forward if forward else self.back
        if not forward:
            delay = stage.delay_ms
        else:
            if is_rtp_or_rtcp(packet) and self._rng.random() * 100 < stage.loss_pct:
                stats.dropped += 1
                return None
            delay = stage.delay_ms + self._rng.uniform(-stage.jitter_ms, stage.jitter_ms)
        at = now + max(delay, 0.0) / 1000
        if at < self._last_release[forward]:
            stats.reordered += 1
        self._last_release[forward] = max(self._last_release[forward], at)
        stats.forwarded += 1
        return at


class _Side(asyncio.DatagramProtocol):
    def __init__(self, relay: UdpRelay, forward: bool) -> None:
        self.relay = relay
        self.forward = forward
        self.transport: asyncio.DatagramTransport | None = None
        self.peer: tuple[str, int] | None = None
        """Who last sent to this socket: the peer connection on this side."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.peer = addr
        self.relay._received(data, forward=self.forward)


class UdpRelay:
    """Two loopback sockets: ``port_a`` is where pcA sends, ``port_b`` where pcB sends.

    A peer's address is learned from the first packet it sends; ICE retransmits the checks
    that arrive before the other side is known.
    """

    def __init__(self, model: PathModel, clock: Callable[[], float]) -> None:
        self.model = model
        self.clock = clock
        self._a = _Side(self, forward=True)
        self._b = _Side(self, forward=False)

    async def start(self) -> None:
        """Bind both sockets on 127.0.0.1 (ports chosen by the system)."""
        loop = asyncio.get_running_loop()
        await loop.create_datagram_endpoint(lambda: self._a, local_addr=("127.0.0.1", 0))
        await loop.create_datagram_endpoint(lambda: self._b, local_addr=("127.0.0.1", 0))

    @property
    def port_a(self) -> int:
        """The port pcA is told pcB is at."""
        assert self._a.transport is not None
        return int(self._a.transport.get_extra_info("sockname")[1])

    @property
    def port_b(self) -> int:
        """The port pcB is told pcA is at."""
        assert self._b.transport is not None
        return int(self._b.transport.get_extra_info("sockname")[1])

    def close(self) -> None:
        """Close both sockets; packets still in flight are lost."""
        for side in (self._a, self._b):
            if side.transport is not None:
                side.transport.close()

    def _received(self, data: bytes, *, forward: bool) -> None:
        out = self._b if forward else self._a  # pcA's packets leave from pcB's side
        if out.peer is None:
            return  # the other side has not spoken yet: nowhere to deliver (ICE retries)
        now = self.clock()
        at = self.model.release_at(now, data, forward=forward)
        if at is None:
            return
        loop = asyncio.get_running_loop()
        loop.call_later(max(at - now, 0.0), self._send, out, out.peer, data)

    @staticmethod
    def _send(out: _Side, peer: tuple[str, int], data: bytes) -> None:
        if out.transport is not None and not out.transport.is_closing():
            out.transport.sendto(data, peer)


class RelayProcess:
    """A `UdpRelay` in a child process (`python -m e2e.relay`), driven over its stdin/stdout.

    The child prints its two ports as one JSON line once bound, takes ``{"start": t}`` lines
    (the session's start on the ``time.time()`` clock, from which the stages count) and, at
    the end of its stdin, prints the path's statistics as one JSON line and exits.
    """

    def __init__(self, spec: str, *, start: float, seed: int = 0) -> None:
        root = Path(__file__).resolve().parent.parent
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "e2e.relay", spec, "--start", repr(start), "--seed", str(seed)],
            cwd=root,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        hello = self._read()
        self.port_a = int(hello["port_a"])
        """The port pcA is told pcB is at."""
        self.port_b = int(hello["port_b"])
        """The port pcB is told pcA is at."""
        self.stats: dict[str, dict[str, int]] | None = None
        """Per direction (``forward``, ``back``), once `close` returned."""

    def _read(self) -> dict[str, Any]:
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline()
        if not line:
            self._proc.wait()
            raise RuntimeError(f"the relay process exited (code {self._proc.returncode})")
        out: dict[str, Any] = json.loads(line)
        return out

    @property
    def pid(self) -> int:
        """The child's process id."""
        return self._proc.pid

    def set_start(self, start: float) -> None:
        """The session starts now: the profile's stages count from ``start``."""
        assert self._proc.stdin is not None
        self._proc.stdin.write(json.dumps({"start": start}) + "\n")
        self._proc.stdin.flush()

    def close(self) -> dict[str, dict[str, int]] | None:
        """Stop the relay (packets in flight are lost); its statistics, if it reported them."""
        if self._proc.poll() is None:
            assert self._proc.stdin is not None
            try:
                self._proc.stdin.close()
                self.stats = self._read()
            except (RuntimeError, ValueError, OSError):
                self._proc.kill()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
        return self.stats


async def _serve(model: PathModel, stdin: IO[str], stdout: IO[str]) -> None:
    loop = asyncio.get_running_loop()
    relay = UdpRelay(model, time.time)
    await relay.start()
    stdout.write(json.dumps({"port_a": relay.port_a, "port_b": relay.port_b}) + "\n")
    stdout.flush()
    try:
        while line := await loop.run_in_executor(None, stdin.readline):
            model.start = float(json.loads(line)["start"])
    finally:
        relay.close()
    stdout.write(json.dumps({"forward": vars(model.forward), "back": vars(model.back)}) + "\n")
    stdout.flush()


def main(argv: list[str] | None = None) -> int:
    """The relay process of `RelayProcess`."""
    from .profile import parse_profile

    ap = argparse.ArgumentParser(prog="python -m e2e.relay", description=RelayProcess.__doc__)
    ap.add_argument("profile", help="DELAY_MS:JITTER_MS:LOSS_PCT[,...@SECONDS]")
    ap.add_argument("--start", type=float, required=True, help="time.time() the stages count from")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    # what the relay allocates is freed by reference counting: no collector pauses at all
    gc.disable()
    model = PathModel(parse_profile(args.profile), start=args.start, seed=args.seed)
    asyncio.run(_serve(model, sys.stdin, sys.stdout))
    return 0


if __name__ == "__main__":
    sys.exit(main())
