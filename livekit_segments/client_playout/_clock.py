"""Client-to-agent clock offset from NTP-style exchanges, minimum-RTT filtered, with the
rate difference of the two clocks followed (two machines' clocks differ in rate, and NTP may
slew one by up to 500 ppm: 15 ms within 30 s)."""

from __future__ import annotations

from dataclasses import dataclass

WINDOW = 8
JUMP_MARGIN = 0.05
DRIFT_SPAN = 8.0  # seconds the good exchanges must span before a rate is fitted
MAX_DRIFT = 1e-3  # a larger fitted rate difference is not a clock's: none is used


@dataclass(frozen=True)
class Exchange:
    """One completed exchange: offset (agent minus client) and round trip, in seconds."""

    offset: float
    rtt: float
    at: float = 0.0  # agent time of the exchange (its t1), for the rate fit


class ClockOffset:
    """Keeps the last `WINDOW` exchanges and trusts the one with the smallest round trip."""

    def __init__(self) -> None:
        self._window: list[Exchange] = []

    @staticmethod
    def exchange(t0: float, t1: float, t2: float, t3: float) -> Exchange:
        """NTP's formulas; all four times in seconds (t0, t3 client; t1, t2 agent)."""
        return Exchange(offset=((t1 - t0) + (t2 - t3)) / 2, rtt=(t3 - t0) - (t2 - t1), at=t1)

    @property
    def best(self) -> Exchange | None:
        return min(self._window, key=lambda e: e.rtt) if self._window else None

    @property
    def uncertainty(self) -> float | None:
        """Half the best round trip: how far the offset can be off."""
        best = self.best
        return None if best is None else best.rtt / 2

    def _good(self) -> list[Exchange]:
        best = self.best
        if best is None:
            return []
        return [e for e in self._window if e.rtt <= 2 * best.rtt + 0.002]

    def drift(self) -> float:
        """Fitted rate of the offset (seconds per second) over the good exchanges; 0 when
        they span less than DRIFT_SPAN or the fit is not a clock's."""
        good = self._good()
        if len(good) < 3 or max(e.at for e in good) - min(e.at for e in good) < DRIFT_SPAN:
            return 0.0
        mt = sum(e.at for e in good) / len(good)
        mo = sum(e.offset for e in good) / len(good)
        var = sum((e.at - mt) ** 2 for e in good)
        rate = sum((e.at - mt) * (e.offset - mo) for e in good) / var
        return rate if abs(rate) <= MAX_DRIFT else 0.0

    def offset_at(self, agent_time: float) -> float | None:
        """The offset (agent minus client) at an agent time: the best exchange's, moved by
        the fitted rate from the mean of the good exchanges."""
        good = self._good()
        if not good:
            return None
        rate = self.drift()
        if rate == 0.0:
            best = self.best
            assert best is not None
            return best.offset
        mt = sum(e.at for e in good) / len(good)
        mo = sum(e.offset for e in good) / len(good)
        return mo + rate * (agent_time - mt)

    def add(self, ex: Exchange) -> bool:
        """Add an exchange; True when it revealed a clock jump and replaced the window."""
        best = self.best
        if best is not None and ex.rtt <= 2 * best.rtt + 0.002:
            expected = self.offset_at(ex.at)
            assert expected is not None
            if abs(ex.offset - expected) > JUMP_MARGIN + ex.rtt / 2 + best.rtt / 2:
                self._window = [ex]
                return True
        self._window.append(ex)
        del self._window[:-WINDOW]
        return False

    def to_agent(self, client_time: float) -> float | None:
        """A client-clock time (seconds) on the agent's clock, or None before any exchange."""
        best = self.best
        if best is None:
            return None
        offset = self.offset_at(client_time + best.offset)
        assert offset is not None
        return client_time + offset

    def to_client(self, agent_time: float) -> float | None:
        """An agent-clock time on the client's clock (seconds), or None before any exchange."""
        offset = self.offset_at(agent_time)
        return None if offset is None else agent_time - offset
