"""The local web side of the harness: serves the page and carries two WebSockets to it.

`/audio` carries the agent's audio frames (binary, s16 mono) to the page's audio worker, and
its reports back (JSON). `/ws` carries JSON both ways on the page's main thread: its
readiness, and the stand-in for LiveKit RPC.
"""

from __future__ import annotations

import asyncio
import json
import logging
import struct
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from aiohttp import WSMsgType, web

__all__ = ["PageServer"]

logger = logging.getLogger("heard-e2e")
PAGE_DIR = Path(__file__).parent / "page"


class PageServer:
    """An HTTP server on 127.0.0.1 for the page, plus extra static roots (the companion)."""

    def __init__(self, static: dict[str, Path] | None = None) -> None:
        self.static = {"/": PAGE_DIR, **(static or {})}
        self.port = 0
        self.ready: asyncio.Future[dict[str, Any]] | None = None
        self.on_message: Callable[[dict[str, Any]], None] | None = None
        self._ws: web.WebSocketResponse | None = None
        self._audio: web.WebSocketResponse | None = None
        self._runner: web.AppRunner | None = None
        self.sent_bytes = 0
        self.feeder_late_ms = 0.0
        """Audio that reached the page's feeder after its time (main thread too late)."""
        self._sends: set[asyncio.Task[None]] = set()
        self.reanchors: list[tuple[float, float]] = []
        """(agent time, ms): where the page re-took its context/wall anchor, and the drift."""
        self.lead_margin_ms: float | None = None
        """The least time any frame reached the page's audio worker before its lead ran out
        (negative: a frame came too late, and its start was lost)."""

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self.ready = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
        app.router.add_get("/audio", self._audio_socket)
        for prefix, root in sorted(self.static.items(), key=lambda kv: -len(kv[0])):
            if prefix == "/":
                app.router.add_get("/", self._index)
            app.router.add_static(prefix, root, follow_symlinks=False)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = int(server.sockets[0].getsockname()[1])  # type: ignore[attr-defined]

    async def _index(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(PAGE_DIR / "index.html")

    async def _websocket(self, request: web.Request) -> web.WebSocketResponse:
        return await self._socket(request, "_ws", self._page_message)

    async def _audio_socket(self, request: web.Request) -> web.WebSocketResponse:
        return await self._socket(request, "_audio", self._audio_message)

    async def _socket(
        self, request: web.Request, slot: str, on_json: Callable[[dict[str, Any]], None]
    ) -> web.WebSocketResponse:
        # one page at a time: the socket is kept in `slot`, and its JSON messages handled
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        if getattr(self, slot) is not None:
            await ws.close(message=b"one page at a time")
            return ws
        setattr(self, slot, ws)
        async for msg in ws:
            if msg.type == WSMsgType.TEXT:
                on_json(json.loads(msg.data))
        return ws

    def _page_message(self, data: dict[str, Any]) -> None:
        if data.get("type") == "ready" and self.ready is not None and not self.ready.done():
            self.ready.set_result(data)
        elif data.get("type") == "feeder":
            self.feeder_late_ms = float(data["lateMs"])
        elif self.on_message is not None:
            self.on_message(data)

    def _audio_message(self, data: dict[str, Any]) -> None:
        if data.get("type") == "reanchor":
            self.reanchors.append((float(data["at"]), float(data["driftMs"])))
        elif data.get("type") == "margin":
            self.lead_margin_ms = float(data["minMs"])

    def send_frame(self, start: float, pcm: bytes) -> None:
        """Send a frame of s16 mono audio that starts playing at ``start`` (``time.time()``)."""
        if self._audio is None or self._audio.closed:
            return
        self.sent_bytes += len(pcm)
        self._spawn(self._audio.send_bytes(struct.pack("<d", start) + pcm))

    def send_clear(self, at: float) -> None:
        """Recall the audio from ``at`` on."""
        if self._audio is not None and not self._audio.closed:
            self._spawn(self._audio.send_str(json.dumps({"type": "clear", "at": at})))

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        # sends keep their order: aiohttp writes each message whole, in call order
        task = asyncio.get_running_loop().create_task(coro)
        self._sends.add(task)
        task.add_done_callback(self._sends.discard)

    @property
    def connected(self) -> bool:
        """Whether the page's main WebSocket is open."""
        return self._ws is not None and not self._ws.closed

    async def send_json(self, data: dict[str, Any]) -> None:
        """Send a JSON message to the page."""
        if self._ws is None or self._ws.closed:
            raise RuntimeError("the page is not connected")
        await self._ws.send_str(json.dumps(data))

    async def stop(self) -> None:
        """Close the WebSocket and the server."""
        for ws in (self._ws, self._audio):
            if ws is not None:
                await ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
