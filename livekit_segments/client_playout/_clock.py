"""Client-to-agent clock offset from NTP-style exchanges, minimum-RTT filtered."""

from __future__ import annotations

from dataclasses import dataclass

WINDOW = 8
JUMP_MARGIN = 0.05


@dataclass(frozen=True)
class Exchange:
    """One completed exchange: offset (agent minus client) and round trip, in seconds."""

    offset: float
    rtt: float


class ClockOffset:
    """Keeps the last `WINDOW` exchanges and trusts the one with the smallest round trip."""

    def __init__(self) -> None:
        self._window: list[Exchange] = []

    @staticmethod
    def exchange(t0: float, t1: float, t2: float, t3: float) -> Exchange:
        """NTP's formulas; all four times in seconds (t0, t3 client; t1, t2 agent)."""
        return Exchange(offset=((t1 - t0) + (t2 - t3)) / 2, rtt=(t3 - t0) - (t2 - t1))

    @property
    def best(self) -> Exchange | None:
        return min(self._window, key=lambda e: e.rtt) if self._window else None

    @property
    def uncertainty(self) -> float | None:
        """Half the best round trip: how far the offset can be off."""
        best = self.best
        return None if best is None else best.rtt / 2

    def add(self, ex: Exchange) -> bool:
        """Add an exchange; True when it revealed a clock jump and replaced the window."""
        best = self.best
        if best is not None and ex.rtt <= 2 * best.rtt + 0.002:
            if abs(ex.offset - best.offset) > JUMP_MARGIN + ex.rtt / 2 + best.rtt / 2:
                self._window = [ex]
                return True
        self._window.append(ex)
        del self._window[:-WINDOW]
        return False

    def to_agent(self, client_time: float) -> float | None:
        """A client-clock time (seconds) on the agent's clock, or None before any exchange."""
        best = self.best
        return None if best is None else client_time + best.offset
