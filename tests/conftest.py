"""Runs the behaviour suite against whichever form is installed.

Runtime form: livekit-agents from PyPI, patched by `livekit_segments.install()`.
Native form: a livekit-agents with the upstream series applied; `install()` is a no-op.
Tests marked ``runtime_only`` are about the patch itself and are deselected (not skipped) in
the native form, so both forms report the same set of behaviour tests.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import pytest_asyncio

import livekit_segments

MODE = "native" if livekit_segments.has_native_support() else "runtime"


def pytest_report_header(config: pytest.Config) -> list[str]:
    import livekit.agents

    from .gen_cases import EXAMPLES, SEED, replay_hint

    return [
        f"livekit-segments mode: {MODE} (livekit-agents {livekit.agents.__version__})",
        f"generated cases (tests/test_generated.py): {EXAMPLES}, seed {SEED} ({replay_hint()})",
    ]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if MODE != "native":
        return
    keep, drop = [], []
    for item in items:
        (drop if item.get_closest_marker("runtime_only") else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def segments_installed(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every behaviour test runs with the change active; runtime-only tests manage it."""
    if request.node.get_closest_marker("runtime_only"):
        yield
        livekit_segments.uninstall()
        return
    livekit_segments.install()
    yield
    livekit_segments.uninstall()


@pytest_asyncio.fixture(autouse=True)
async def no_unretrieved_errors() -> AsyncIterator[list[dict[str, Any]]]:
    """Fails a test that leaves an exception nobody retrieved on the loop."""
    loop = asyncio.get_running_loop()
    seen: list[dict[str, Any]] = []
    previous = loop.get_exception_handler()
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    yield seen
    gc.collect()  # unretrieved futures and tasks report from __del__, synchronously
    loop.set_exception_handler(previous)
    messages = [str(c.get("message")) + " " + repr(c.get("exception")) for c in seen]
    assert not messages, f"unretrieved errors on the loop: {messages}"
