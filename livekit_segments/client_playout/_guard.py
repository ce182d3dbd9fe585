"""What the agent accepts from a companion: size, shape, rate; and one log line per kind."""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

logger = logging.getLogger("livekit_segments.client_playout")

PROTOCOL_VERSION = 1
MAX_PAYLOAD = 1024
MAX_ONSETS = 8
RATE_PER_S = 20.0
RATE_BURST = 20.0
LOG_EVERY = 10.0
_SID = re.compile(r"[A-Za-z0-9_-]{8,32}")
_ENVELOPE = re.compile(r"[A-Za-z0-9_-]{1,64}")
MAX_LEVEL_BINS = 256
_LEVELS = re.compile(rf"[A-Za-z0-9_-]{{0,{MAX_LEVEL_BINS}}}")
_PATHS = ("plugin", "own-graph", "none")
NOTICES = frozenset({"clock-jump"})  # logged, but the call was accepted


class Rejected(Exception):
    """A call the agent refuses; `kind` names the log line, the text says why."""

    def __init__(self, kind: str, why: str) -> None:
        super().__init__(why)
        self.kind = kind


class UnsupportedVersion(Rejected):
    def __init__(self, version: object) -> None:
        super().__init__("version", f"unsupported protocol version {version!r}")


@dataclass(frozen=True)
class Hello:
    sid: str
    client: str
    path: str
    levels: bool = False  # the companion serves lkseg.playout.levels


@dataclass(frozen=True)
class Levels:
    """A companion's reply to a levels request."""

    t: float | None  # client seconds at which the first bin starts; None: it had none
    levels: str  # one character per level (of the width asked for), the envelope encoding


@dataclass(frozen=True)
class Sync:
    q: int
    t0: float  # client seconds
    prev: tuple[int, float] | None  # (q, t3 in client seconds)
    rx: float | None  # receive-side delay estimate, seconds
    net: float | None  # network one-way estimate from the media transport, seconds
    jb: float | None = None  # jitter buffer delay over the last interval, seconds
    # (seconds of audio the jitter buffer added to its playout so far, packets missed so far)
    ad: tuple[float, int] | None = None


@dataclass(frozen=True)
class Report:
    q: int
    # (client seconds, gap seconds, envelope or None): docs/client-playout.md
    onsets: tuple[tuple[float, float, str | None], ...]


def _obj(payload: str) -> dict[str, Any]:
    if len(payload.encode("utf-8", "surrogatepass")) > MAX_PAYLOAD:
        raise Rejected("size", f"payload over {MAX_PAYLOAD} bytes")
    try:
        obj = json.loads(payload, parse_constant=_no_constant)
    except (ValueError, RecursionError):
        raise Rejected("malformed", "payload is not JSON") from None
    if not isinstance(obj, dict):
        raise Rejected("malformed", "payload is not a JSON object")
    if obj.get("v") != PROTOCOL_VERSION:
        raise UnsupportedVersion(obj.get("v"))
    return obj


def _no_constant(name: str) -> None:
    raise ValueError(name)


def _num(obj: dict[str, Any], key: str, lo: float, hi: float) -> float:
    v = obj.get(key)
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
        raise Rejected("malformed", f"{key!r} is not a finite number")
    if not lo <= v <= hi:
        raise Rejected("malformed", f"{key!r} out of range")
    return float(v)


def _seq(obj: dict[str, Any]) -> int:
    q = obj.get("q")
    if isinstance(q, bool) or not isinstance(q, int) or not 0 <= q < 2**53:
        raise Rejected("malformed", "'q' is not a sequence number")
    return q


# client clock: any origin (the companion counts ms from its own start); any clock that fits
_T_MAX = 1e15
_AD_MAX = 1e7  # ms: a cumulative figure with any origin, bounded like the client clamps it


def parse_hello(payload: str) -> Hello:
    obj = _obj(payload)
    sid, client, path = obj.get("sid"), obj.get("client", ""), obj.get("path")
    if not isinstance(sid, str) or not _SID.fullmatch(sid):
        raise Rejected("malformed", "'sid' must be 8-32 characters [A-Za-z0-9_-]")
    if not isinstance(client, str) or len(client) > 64:
        raise Rejected("malformed", "'client' must be a string of at most 64 characters")
    if path not in _PATHS:
        raise Rejected("malformed", f"'path' must be one of {_PATHS}")
    assert isinstance(path, str)
    lv = obj.get("lv", 0)
    if lv not in (0, 1) or isinstance(lv, bool):
        raise Rejected("malformed", "'lv' must be 0 or 1")
    return Hello(sid=sid, client=client, path=path, levels=lv == 1)


def parse_sync(payload: str) -> Sync:
    obj = _obj(payload)
    q = _seq(obj)
    t0 = _num(obj, "t0", -_T_MAX, _T_MAX) / 1000
    prev: tuple[int, float] | None = None
    if "prev" in obj:
        p = obj["prev"]
        if not isinstance(p, list) or len(p) != 2:
            raise Rejected("malformed", "'prev' must be [q, t3]")
        pq = _seq({"q": p[0]})
        prev = (pq, _num({"t3": p[1]}, "t3", -_T_MAX, _T_MAX) / 1000)
    rx = _num(obj, "rx", 0, 5000) / 1000 if "rx" in obj else None
    net = _num(obj, "net", 0, 5000) / 1000 if "net" in obj else None
    jb = _num(obj, "jb", 0, 5000) / 1000 if "jb" in obj else None
    ad: tuple[float, int] | None = None
    if "ad" in obj:
        a = obj["ad"]
        if not isinstance(a, list) or len(a) != 2:
            raise Rejected("malformed", "'ad' must be [ms, missed packets]")
        n = a[1]
        if isinstance(n, bool) or not isinstance(n, int) or not -(2**53) < n < 2**53:
            raise Rejected("malformed", "'ad' missed packets must be an integer")
        ad = (_num({"ad": a[0]}, "ad", -_AD_MAX, _AD_MAX) / 1000, n)
    return Sync(q=q, t0=t0, prev=prev, rx=rx, net=net, jb=jb, ad=ad)


def parse_report(payload: str) -> Report:
    obj = _obj(payload)
    q = _seq(obj)
    raw = obj.get("o")
    if not isinstance(raw, list) or not 1 <= len(raw) <= MAX_ONSETS:
        raise Rejected("malformed", f"'o' must hold 1 to {MAX_ONSETS} onsets")
    onsets = []
    for item in raw:
        if not isinstance(item, list) or len(item) not in (2, 3):
            raise Rejected("malformed", "an onset must be [t_ms, gap_ms] or [t_ms, gap_ms, env]")
        t = _num({"t": item[0]}, "t", -_T_MAX, _T_MAX) / 1000
        gap = _num({"gap_ms": item[1]}, "gap_ms", 0, 60000) / 1000
        env = item[2] if len(item) == 3 else None
        if env is not None and not (isinstance(env, str) and _ENVELOPE.fullmatch(env)):
            raise Rejected("malformed", "an onset's envelope must be 1-64 characters [A-Za-z0-9_-]")
        onsets.append((t, gap, env))
    return Report(q=q, onsets=tuple(onsets))


def parse_levels(payload: str, asked: int, width_ms: int) -> Levels:
    """The companion's reply to a levels request for ``asked`` levels of ``width_ms`` each."""
    obj = _obj(payload)
    if obj.get("w", 1) != width_ms:
        # a companion that ignored the width sends levels of another width: unplaceable
        raise Rejected("malformed", f"'w' must be the width asked for, {width_ms}")
    lv = obj.get("lv")
    if not isinstance(lv, str) or len(lv) > asked or not _LEVELS.fullmatch(lv):
        raise Rejected("malformed", f"'lv' must be at most {asked} characters [A-Za-z0-9_-]")
    if obj.get("t") is None:
        return Levels(t=None, levels="")
    return Levels(t=_num(obj, "t", -_T_MAX, _T_MAX) / 1000, levels=lv)


class RateLimiter:
    """Token bucket: `RATE_PER_S` calls a second, bursts of `RATE_BURST`."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._tokens = RATE_BURST
        self._at = clock()

    def allow(self) -> bool:
        now = self._clock()
        self._tokens = min(RATE_BURST, self._tokens + (now - self._at) * RATE_PER_S)
        self._at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True


class LogLimiter:
    """One warning per (caller, kind) every `LOG_EVERY` seconds, then how many were quiet."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._last: dict[tuple[str, str], float] = {}
        self._quiet: dict[tuple[str, str], int] = {}

    def warn(self, caller: str, kind: str, why: str) -> None:
        key = (caller, kind)
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < LOG_EVERY:
            self._quiet[key] = self._quiet.get(key, 0) + 1
            return
        quiet = self._quiet.pop(key, 0)
        self._last[key] = now
        more = f" ({quiet} more like it not logged)" if quiet else ""
        what = "noticed about" if kind in NOTICES else "ignored a call from"
        logger.warning(
            "client playout: %s %r (%s): %s%s",
            what,
            caller,
            kind,
            why,
            more,
            extra={"caller_identity": caller, "rejection": kind},
        )
