"""The local web side of the harness: serves the page and carries one WebSocket to it.

The WebSocket carries the agent's audio frames to the page (binary, s16 mono) and JSON
messages both ways (the page's readiness, and the stand-in for LiveKit RPC).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
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
        self._runner: web.AppRunner | None = None
        self.sent_bytes = 0

    async def start(self) -> None:
        """Listen on a free port of 127.0.0.1."""
        self.ready = asyncio.get_running_loop().create_future()
        app = web.Application()
        app.router.add_get("/ws", self._websocket)
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
        ws = web.WebSocketResponse(max_msg_size=1 << 20)
        await ws.prepare(request)
        if self._ws is not None:
            await ws.close(message=b"one page at a time")
            return ws
        self._ws = ws
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            data = json.loads(msg.data)
            if data.get("type") == "ready" and self.ready is not None and not self.ready.done():
                self.ready.set_result(data)
            elif self.on_message is not None:
                self.on_message(data)
        return ws

    def send_pcm(self, pcm: bytes) -> None:
        """Send audio to the page now (it plays as soon as it arrives)."""
        if self._ws is None or self._ws.closed:
            return
        self.sent_bytes += len(pcm)
        asyncio.get_running_loop().create_task(self._ws.send_bytes(pcm))

    async def send_json(self, data: dict[str, Any]) -> None:
        """Send a JSON message to the page."""
        if self._ws is None or self._ws.closed:
            raise RuntimeError("the page is not connected")
        await self._ws.send_str(json.dumps(data))

    async def stop(self) -> None:
        """Close the WebSocket and the server."""
        if self._ws is not None:
            await self._ws.close()
        if self._runner is not None:
            await self._runner.cleanup()
