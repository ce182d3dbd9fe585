"""Heard on the user's device: each response's real playout start, from a client companion.

The companion (npm package in ``client/``) measures, in the browser's playback path, when the
agent's audio becomes audible and reports it over LiveKit RPC (protocol: docs/client-playout.md).
This module is the agent side::

    cp = client_playout.enable(session, room)      # after `await session.start(room=room)`
    heard = await client_playout.heard(handle)     # fires at the predicted device start
    exact = await client_playout.heard_measured(handle)  # the device's measurement, later

It reads only the public handle API (``playout_started`` through the package's accessor) and
session events, so it works the same on the runtime patch and on the native series.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

from livekit.agents.voice.speech_handle import SpeechHandle

from ._guard import MAX_PAYLOAD, PROTOCOL_VERSION
from ._service import (
    HELLO,
    LEVELS,
    METHODS,
    REPORT,
    SYNC,
    UNAVAILABLE,
    ClientPlayout,
    DeviceOutput,
    Heard,
    How,
    Timer,
    _Response,
    console_output_latency,
)

__all__ = [
    "HELLO",
    "LEVELS",
    "MAX_PAYLOAD",
    "METHODS",
    "PROTOCOL_VERSION",
    "REPORT",
    "SYNC",
    "UNAVAILABLE",
    "ClientPlayout",
    "DeviceOutput",
    "Heard",
    "How",
    "console_output_latency",
    "enable",
    "enable_device_output",
    "heard",
    "heard_measured",
]

_enabled: dict[int, ClientPlayout | DeviceOutput] = {}  # id(session) -> its tracker, while open
_responses: weakref.WeakKeyDictionary[SpeechHandle, _Response] = weakref.WeakKeyDictionary()


def enable(
    session: Any,
    room: Any,
    *,
    participant_identity: str | None = None,
    _clock: Any = None,
    _timer: Timer | None = None,
) -> ClientPlayout:
    """Accept a client companion's playout reports for this session.

    Call it once, right after ``await session.start(room=room, ...)`` and before the first
    reply: it registers the RPC methods ``lkseg.playout.hello/sync/report`` on
    ``room.local_participant`` and puts a pass-through tap on top of
    ``session.output.audio`` (it measures only while a companion is connected).

    Args:
        session: the started ``AgentSession``.
        room: the ``rtc.Room`` the session runs in.
        participant_identity: accept reports only from this identity. Default: the
            participant RoomIO is linked to (``session.room_io.linked_participant``), read at
            each call.

    Returns the `ClientPlayout`; it closes with the session (or call ``close()``), which
    unregisters the methods, removes the tap and settles every pending signal. Calling
    ``enable`` again for the same open session returns the same object.
    """
    existing = _enabled.get(id(session))
    if existing is not None and not existing.closed:
        if not isinstance(existing, ClientPlayout):
            raise RuntimeError("enable_device_output() is already on for this session")
        return existing
    if not hasattr(session, "output") or not hasattr(room, "local_participant"):
        raise TypeError(
            "client_playout.enable(session, room) takes the AgentSession and the rtc.Room it "
            "was started with"
        )
    kwargs: dict[str, Any] = {"participant_identity": participant_identity, "timer": _timer}
    if _clock is not None:
        kwargs["clock"] = _clock
    cp = ClientPlayout(session, room, **kwargs)
    cp.start()
    _enabled[id(session)] = cp
    return cp


def enable_device_output(
    session: Any,
    latency: Callable[[], float | None] = console_output_latency,
    *,
    _clock: Any = None,
    _timer: Timer | None = None,
) -> DeviceOutput:
    """For sinks that are themselves the device (``python agent.py console``).

    `heard` and `heard_measured` then resolve with ``playout_started`` plus ``latency()``, the
    output latency the audio API reports, read when the response starts (``how="measured"``;
    `heard` resolves at that moment). ``latency()`` returning None (or a value outside
    [0, 10) s) makes the response `UNAVAILABLE`. The default reads the console's PortAudio
    latency (`console_output_latency`).
    """
    existing = _enabled.get(id(session))
    if existing is not None and not existing.closed:
        if not isinstance(existing, DeviceOutput):
            raise RuntimeError("client_playout.enable() is already on for this session")
        return existing
    kwargs: dict[str, Any] = {"timer": _timer}
    if _clock is not None:
        kwargs["clock"] = _clock
    out = DeviceOutput(session, latency, **kwargs)
    out.start()
    _enabled[id(session)] = out
    return out


def _owner(handle: SpeechHandle) -> ClientPlayout | DeviceOutput | None:
    for key, cp in list(_enabled.items()):
        if cp.closed:
            del _enabled[key]
        elif handle in cp.handles:
            return cp
    return None


def _record(handle: SpeechHandle) -> _Response:
    rec = _responses.get(handle)
    if rec is not None:
        return rec
    from .. import playout_started  # the package's accessor: both forms, install() checked

    view = playout_started(handle)
    rec = _Response()
    _responses[handle] = rec

    def on_playout(fut: asyncio.Future[Any]) -> None:
        start = None if fut.cancelled() or fut.exception() is not None else fut.result()
        cp = _owner(handle)
        if cp is None:
            rec.settle_all()
        else:
            cp.track(rec, start)

    view.add_done_callback(on_playout)
    return rec


def heard(handle: SpeechHandle) -> asyncio.Future[Heard]:
    """When this response starts playing on the user's device: fires at that moment.

    Returns a new future per call, owned by the caller (cancelling it affects nobody). It
    resolves at the predicted device start (``how="predicted"``: ``playout_started`` plus the
    path delay measured on earlier audio), or earlier with ``how="measured"`` if the device's
    report came first, or with `UNAVAILABLE` when there is no companion (then use
    ``playout_started``), no estimate yet, the companion left, or the response never played.
    The package never cancels it and never leaves it pending past session close.
    """
    return _record(handle).view(measured=False)


def heard_measured(handle: SpeechHandle) -> asyncio.Future[Heard]:
    """The device's measurement of this response's start, once its report arrived.

    ``how="measured"``: ``at`` is ``playout_started`` plus the path delay measured at the first
    matched onset in the 5 s from the response's start (its own first audible sample when it
    has a silence before it), else the last one in the 5 s before. `UNAVAILABLE` when no
    onset matched by 7.5 s after the start, the companion left, or the response never played.
    A new future per call, as `heard`.
    """
    return _record(handle).view(measured=True)
