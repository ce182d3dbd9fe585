"""pytest plugin for scripts/upstream-suite: run upstream's tests with the runtime patch active.

Loaded with ``-p upstream_suite_plugin`` (scripts/ on PYTHONPATH), so upstream's files stay
untouched. It installs the patch before collection, fails the run at once if that does not
take, and records whether the patch was still installed when the session ended (a test that
uninstalled it would make the "with" run meaningless) in the JSON file named by
``LKSEG_UPSTREAM_REPORT``. ``LKSEG_UPSTREAM_FORCE=1`` calls ``install(force=True)`` (a release
outside ``SUPPORTED_VERSIONS``; missing internals still refuse).
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest

_state: dict[str, Any] = {}


def pytest_configure(config: pytest.Config) -> None:
    import livekit_segments

    force = os.environ.get("LKSEG_UPSTREAM_FORCE") == "1"
    livekit_segments.install(force=force)
    assert livekit_segments.is_installed(), "livekit_segments.install() left the patch inactive"
    _state["installed_at_configure"] = True
    _state["livekit_segments"] = livekit_segments.__version__
    _state["force"] = force


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    import livekit_segments

    _state["installed_at_finish"] = livekit_segments.is_installed()
    path = os.environ.get("LKSEG_UPSTREAM_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(_state, f)
