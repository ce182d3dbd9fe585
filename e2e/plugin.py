"""Where the companion (client/) and the agent side (`livekit_segments.client_playout`) plug
into the harness, with a stand-in for LiveKit RPC between them.

The stand-in: the page's fake Room sends ``{"type": "rpc", "id", "method", "payload"}`` over
the harness WebSocket; `RpcStandIn` calls the handler that ``client_playout.enable``
registered on the fake ``room.local_participant`` with an ``rtc.RpcInvocationData`` (caller
identity ``user``, the participant the session talks to) and sends back
``{"type": "rpc-reply", "id", "payload"}`` or ``{..., "error": {"code", "message"}}``.
The other way (the agent's ``perform_rpc``, for the companion's levels): ``{"type":
"rpc-call", "id", "method", "payload"}`` to the page, whose fake Room calls the handler the
companion registered and answers ``{"type": "rpc-call-reply", "id", "payload"}`` or with
``"error"``.
The payloads are exactly the protocol's; only the carrier differs (see docs/heard-e2e.md).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import statistics
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livekit import rtc

if TYPE_CHECKING:
    from .agent_session import AgentRun, ResponseRecord
    from .server import PageServer

__all__ = ["AgentResult", "AgentSide", "FakeRoom", "RpcStandIn", "load_agent_side"]

logger = logging.getLogger("heard-e2e")
ROOT = Path(__file__).resolve().parent.parent
USER_IDENTITY = "user"
AGENT_IDENTITY = "agent"
_MEASURED_WAIT_S = 8.0  # for the last reports after the session ended
_START_TIMEOUT_S = 20.0
_SYNC = "lkseg.playout.sync"
_STARTUP_SYNCS = 4  # the companion's start-up exchanges (docs/client-playout.md)


class _LocalParticipant:
    def __init__(self) -> None:
        self.identity = AGENT_IDENTITY
        self.handlers: dict[str, Callable[[rtc.RpcInvocationData], Any]] = {}
        # (method, payload, timeout) -> reply: the stand-in's way to the page, once it runs
        self.remote: Callable[[str, str, float], Awaitable[str]] | None = None

    async def perform_rpc(
        self,
        *,
        destination_identity: str,
        method: str,
        payload: str,
        response_timeout: float | None = None,
    ) -> str:
        if destination_identity != USER_IDENTITY or self.remote is None:
            raise rtc.RpcError(1401, "Recipient not found")
        return await self.remote(method, payload, response_timeout or 10.0)

    def register_rpc_method(self, method_name: str, handler: Any = None) -> Any:
        if handler is None:

            def deco(fn: Any) -> Any:
                self.handlers[method_name] = fn
                return fn

            return deco
        self.handlers[method_name] = handler
        return handler

    def unregister_rpc_method(self, method: str) -> None:
        self.handlers.pop(method, None)


class FakeRoom(rtc.EventEmitter[str]):
    """What ``client_playout.enable`` needs of an ``rtc.Room``: its local participant and
    its events (none fire here: the user never leaves during a run)."""

    def __init__(self) -> None:
        super().__init__()
        self.local_participant = _LocalParticipant()
        self.name = "heard-e2e"


@dataclass
class RpcStandIn:
    """Carries RPC calls from the page to the registered handlers; counts their bytes.

    Each message takes ``one_way()`` seconds, in order per direction: LiveKit's RPC crosses
    the same legs as the media (the agent's leg to the SFU, the SFU's to the user), so its
    round trip is the path's, as the clock sync measures it in a room.
    """

    room: FakeRoom
    server: PageServer
    one_way: Callable[[], float] = lambda: 0.0
    bytes_by_method: dict[str, int] = field(default_factory=dict)
    calls_by_method: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    _tasks: set[asyncio.Task[None]] = field(default_factory=set)
    _calls: dict[int, tuple[str, str, asyncio.Future[str]]] = field(default_factory=dict)
    _next_call: int = 1
    # when the last message each way arrives: a later one never overtakes it
    _arrives: dict[str, float] = field(default_factory=lambda: {"up": 0.0, "down": 0.0})
    _in_flight: set[asyncio.TimerHandle] = field(default_factory=set)
    _closed: bool = False

    def _after_path(self, way: str, deliver: Callable[[], None]) -> None:
        if self._closed:
            return  # the room is gone: nothing more arrives
        loop = asyncio.get_running_loop()
        at = max(loop.time() + self.one_way(), self._arrives[way])
        self._arrives[way] = at

        def arrive() -> None:
            self._in_flight.discard(handle)
            deliver()

        handle = loop.call_at(at, arrive)
        self._in_flight.add(handle)

    def _send_down(self, msg: dict[str, Any]) -> None:
        async def send() -> None:
            try:
                await self.server.send_json(msg)
            except RuntimeError:
                pass  # the page has gone: the caller's call times out, as over LiveKit

        self._after_path("down", lambda: self._spawn(send()))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def __post_init__(self) -> None:
        self.room.local_participant.remote = self.perform

    async def perform(self, method: str, payload: str, timeout: float) -> str:
        """The agent's call to the page's registered handler (LiveKit's ``perform_rpc``)."""
        call_id, self._next_call = self._next_call, self._next_call + 1
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._calls[call_id] = (method, payload, fut)
        try:
            if self._closed or not self.server.connected:
                raise RuntimeError("the page is not connected")
            self._send_down(
                {"type": "rpc-call", "id": call_id, "method": method, "payload": payload}
            )
            return await asyncio.wait_for(fut, timeout)
        except RuntimeError:
            raise rtc.RpcError(1503, "Recipient disconnected") from None
        except asyncio.TimeoutError:
            raise rtc.RpcError(1502, "Response timeout") from None
        finally:
            self._calls.pop(call_id, None)

    def _reply(self, msg: dict[str, Any]) -> None:
        entry = self._calls.get(msg.get("id", -1))
        if entry is None or entry[2].done():
            return
        method, payload, fut = entry
        reply = str(msg.get("payload", ""))
        self._count(method, payload, reply)
        err = msg.get("error")
        if isinstance(err, dict):
            fut.set_exception(rtc.RpcError(int(err.get("code", 1500)), str(err.get("message"))))
        else:
            fut.set_result(reply)

    def _count(self, method: str, payload: str, reply: str) -> None:
        size = len(payload.encode()) + len(reply.encode())
        self.bytes_by_method[method] = self.bytes_by_method.get(method, 0) + size
        self.calls_by_method[method] = self.calls_by_method.get(method, 0) + 1

    def on_message(self, msg: dict[str, Any]) -> None:
        if msg.get("type") == "rpc-call-reply":
            self._after_path("up", lambda: self._reply(msg))
        elif msg.get("type") == "rpc":
            self._after_path("up", lambda: self._spawn(self._call(msg)))

    async def _call(self, msg: dict[str, Any]) -> None:
        method, payload = str(msg["method"]), str(msg["payload"])
        handler = self.room.local_participant.handlers.get(method)
        reply: dict[str, Any] = {"type": "rpc-reply", "id": msg["id"]}
        if handler is None:
            reply["error"] = {"code": 1400, "message": "Method not supported at destination"}
        else:
            data = rtc.RpcInvocationData(
                request_id=str(msg["id"]),
                caller_identity=USER_IDENTITY,
                payload=payload,
                response_timeout=10.0,
                method=method,
            )
            try:
                res = handler(data)
                if inspect.isawaitable(res):
                    res = await res
                reply["payload"] = res if isinstance(res, str) else ""
            except rtc.RpcError as e:
                reply["error"] = {"code": e.code, "message": e.message}
            except Exception as e:  # an RPC handler's crash is an application error in LiveKit
                self.errors.append(f"{method}: {e!r}")
                reply["error"] = {"code": 1500, "message": "Application error in method handler"}
        self._count(method, payload, str(reply.get("payload", "")))
        self._send_down(reply)

    async def aclose(self) -> None:
        self._closed = True
        for _method, _payload, fut in self._calls.values():
            if not fut.done():  # its reply was still on the way
                fut.set_exception(rtc.RpcError(1503, "Recipient disconnected"))
        for handle in self._in_flight:
            handle.cancel()
        self._in_flight.clear()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


@dataclass
class AgentResult:
    """What the agent side said about one response (``time.time()`` clock)."""

    how: str
    fired_at: float | None
    """When ``heard()`` actually resolved (the moment the app's task would start)."""
    measured_at: float | None
    extra: dict[str, Any] = field(default_factory=dict)


class AgentSide:
    """The agent-side module and the companion, wired through the stand-in."""

    def __init__(self, client_dist: Path, client_playout: Any) -> None:
        self.client_dist = client_dist
        self.cp_module = client_playout
        self.room = FakeRoom()
        self.rpc: RpcStandIn | None = None
        self.cp: Any = None
        self._fired: dict[int, asyncio.Future[Any]] = {}
        self._fired_at: dict[int, float] = {}
        self._measured: dict[int, asyncio.Future[Any]] = {}
        self.page_stats: dict[str, Any] = {}
        self._drift: dict[int, float] = {}
        self._plain: dict[int, float] = {}
        self.server: PageServer | None = None
        self.failed: str | None = None

    @property
    def static(self) -> dict[str, Path]:
        """Extra static roots for the page server."""
        return {
            "/client/": self.client_dist,
            "/node_modules/": Path(__file__).parent / "node_modules",
        }

    def connect(self, server: PageServer, one_way: Callable[[], float] = lambda: 0.0) -> None:
        """Take RPC calls from the page, each way taking ``one_way()`` seconds."""
        self.rpc = RpcStandIn(self.room, server, one_way)
        self.server = server

        def on_message(msg: dict[str, Any]) -> None:
            if msg.get("type") == "stats":
                self.page_stats = msg.get("stats", {})
            elif msg.get("type") == "companion-failed":
                self.failed = str(msg.get("error"))
            elif self.rpc is not None:
                self.rpc.on_message(msg)

        server.on_message = on_message

    async def on_session_started(self, session: Any) -> None:
        """``client_playout.enable`` on the started session, then start the companion and
        wait until it has said hello and done its start-up clock exchanges."""
        self.cp = self.cp_module.enable(session, self.room, participant_identity=USER_IDENTITY)
        assert self.server is not None and self.rpc is not None
        await self.server.send_json({"type": "start-companion"})
        loop = asyncio.get_running_loop()
        deadline = loop.time() + _START_TIMEOUT_S
        while self.rpc.calls_by_method.get(_SYNC, 0) < _STARTUP_SYNCS:
            if self.failed is not None:
                raise RuntimeError(f"the companion failed to start in the page: {self.failed}")
            if loop.time() > deadline:
                raise RuntimeError(
                    f"the companion did not say hello and sync within {_START_TIMEOUT_S:.0f} s "
                    f"(calls so far: {self.rpc.calls_by_method}; errors: {self.rpc.errors})"
                )
            await asyncio.sleep(0.05)

    def on_response(self, rec: ResponseRecord) -> None:
        """Ask for both signals of a response as soon as it exists."""
        fired = self.cp_module.heard(rec.handle)
        self._fired[rec.index] = fired

        def stamp(_: asyncio.Future[Any], i: int = rec.index) -> None:
            self._fired_at[i] = time.time()

        fired.add_done_callback(stamp)
        self._measured[rec.index] = self.cp_module.heard_measured(rec.handle)
        comp = getattr(self.cp, "_companion", None)
        if comp is not None:  # the clock model's fitted rate as the response starts
            self._drift[rec.index] = round(comp.clock.drift() * 1e6, 1)
            if comp.delays:  # the path delay before the jitter buffer's change moves it
                self._plain[rec.index] = round(statistics.median(comp.delays) * 1000, 2)

    async def finish(self, run: AgentRun) -> None:
        """Wait (bounded) for the measurements still on their way."""
        pending = [f for f in self._measured.values() if not f.done()]
        if pending:
            await asyncio.wait(pending, timeout=_MEASURED_WAIT_S)

    def result(self, rec: ResponseRecord) -> AgentResult:
        """Both signals of ``rec``, as far as they resolved."""
        fired = self._fired.get(rec.index)
        measured = self._measured.get(rec.index)
        how = "unavailable"
        fired_at = None
        extra: dict[str, Any] = {}
        if fired is not None and fired.done() and not fired.cancelled() and not fired.exception():
            heard = fired.result()
            how = heard.how
            if heard.at is not None:
                fired_at = self._fired_at.get(rec.index)
                extra["predicted_at_error_ms"] = None  # filled by the caller with truth
                extra["predicted_at"] = heard.at
            if heard.path_delay is not None:
                extra["predicted_path_ms"] = round(heard.path_delay * 1000, 2)
        if rec.index in self._drift:
            extra["clock_drift_ppm"] = self._drift[rec.index]
        if rec.index in self._plain:
            extra["path_without_jb_ms"] = self._plain[rec.index]
        measured_at = None
        if (
            measured is not None
            and measured.done()
            and not measured.cancelled()
            and not measured.exception()
        ):
            m = measured.result()
            extra["measured_how"] = m.how
            if m.how == "measured" and m.at is not None:
                measured_at = m.at
                extra["measured_from_s"] = m.measured_from
                extra["measured_left_out_ms"] = self._left_out(m)
        else:
            extra["measured_how"] = "pending"
        return AgentResult(how=how, fired_at=fired_at, measured_at=measured_at, extra=extra)

    def _left_out(self, m: Any) -> float | None:
        """How much of the measuring onset's sound the agent found the device left out."""
        if self.cp is None or m.measured_from is None or m.path_delay is None:
            return None
        sent_at = m.at - m.path_delay + m.measured_from
        for o in self.cp.log.onsets:
            if abs(o.onset.at - sent_at) < 1e-4:  # float error at epoch seconds
                return None if o.mute is None else round(o.mute * 1000, 2)
        return None

    def stats(self) -> dict[str, Any]:
        """RPC bytes and calls per method, and what the page measured of the companion."""
        rpc = self.rpc
        return {
            "rpc_bytes": dict(rpc.bytes_by_method) if rpc else {},
            "rpc_calls": dict(rpc.calls_by_method) if rpc else {},
            "rpc_handler_errors": list(rpc.errors) if rpc else [],
            "page": self.page_stats,
        }

    async def aclose(self) -> None:
        """Close the agent side and the stand-in."""
        if self.cp is not None:
            res = self.cp.aclose()
            if inspect.isawaitable(res):
                await res
        if self.rpc is not None:
            await self.rpc.aclose()


def load_agent_side() -> AgentSide:
    """The built companion and the agent-side module, or an error naming what is missing."""
    # HEARD_E2E_CLIENT_DIST: try a companion built elsewhere (e.g. a work in progress)
    dist = Path(os.environ.get("HEARD_E2E_CLIENT_DIST", ROOT / "client" / "dist"))
    if not dist.is_dir():
        raise RuntimeError(
            "the client companion is not built (client/dist is missing): run scripts/setup, "
            "or pass --no-companion to run the path without it"
        )
    try:
        from livekit_segments import client_playout
    except ImportError as e:
        raise RuntimeError(
            f"livekit_segments.client_playout is missing ({e}); pass --no-companion"
        ) from e
    return AgentSide(dist, client_playout)
