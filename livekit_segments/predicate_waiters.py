"""Futures that resolve once a predicate holds, re-checked when the owner says it changed.

The demo's real-time sink and the testing kit's virtual-clock output both let a caller await
"segment 2 has started" without polling or sleeping: the output calls `notify()` after every
change it makes.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

__all__ = ["PredicateWaiters"]


class PredicateWaiters:
    """Pending ``(predicate, future)`` pairs; `notify` resolves those whose predicate holds."""

    __slots__ = ("_pending",)

    def __init__(self) -> None:
        self._pending: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []

    def when(self, predicate: Callable[[], bool]) -> asyncio.Future[None]:
        """A future that resolves once ``predicate()`` holds (now, or at a later `notify`)."""
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if predicate():
            fut.set_result(None)
        else:
            self._pending.append((predicate, fut))
        return fut

    def notify(self) -> None:
        """Re-check every pending predicate; drop futures that are done or were cancelled."""
        still = []
        for predicate, fut in self._pending:
            if fut.done():
                continue
            if predicate():
                fut.set_result(None)
            else:
                still.append((predicate, fut))
        self._pending = still
