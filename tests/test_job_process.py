"""install() reaches the job processes that AgentServer starts, without a LiveKit server.

Each case runs a user-style app (tests/job_apps) in a fresh interpreter: the user's main
module and multiprocessing's forkserver belong to one interpreter, so they cannot be shared
with pytest's. The job runs a real AgentSession whose llm_node yields a SegmentBreak.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from livekit_segments import activation, installer, job_process

APPS = Path(__file__).resolve().parent / "job_apps"
ROOT = APPS.parents[1]


def run_app(*argv: str, start_method: str) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(APPS), str(ROOT)]),
        "JOBPROC_START_METHOD": start_method,
        "JOBPROC_TIMEOUT": "90",
    }
    cp = subprocess.run(
        [sys.executable, *argv], cwd=APPS, env=env, capture_output=True, text=True, timeout=300
    )
    lines = [ln for ln in cp.stdout.splitlines() if ln.startswith("JOBPROC_RESULT ")]
    assert cp.returncode == 0 and len(lines) == 1, (
        f"app failed (rc={cp.returncode})\nstdout:\n{cp.stdout[-3000:]}\n"
        f"stderr:\n{cp.stderr[-6000:]}"
    )
    result: dict[str, Any] = json.loads(lines[0].split(" ", 1)[1])
    return result


@pytest.mark.parametrize(
    ("app", "start_method"),
    [
        ("agent_toplevel.py", "forkserver"),
        ("agent_mainguard.py", "forkserver"),
        ("agent_mainguard.py", "spawn"),
    ],
)
def test_job_process_opens_segment_handles(app: str, start_method: str) -> None:
    result = run_app(app, start_method=start_method)
    job = result["job"]
    assert result["parent_active"] is True
    assert job["process_name"] == "job_proc" and job["pid"] != result["parent_pid"]
    assert job["start_method"] == start_method
    assert job["active"] is True
    assert job["segment_indexes"] == [0, 1]  # the break opened a handle in the job process
    assert job["started"] == [True, True]
    assert [r for r in result["records"] if r["level"] in ("WARNING", "ERROR")] == []


@pytest.mark.runtime_only
def test_unsupported_style_warns_once_in_the_job_process() -> None:
    # `lk agent` imports the module by name: a __main__ block never runs, in any process
    result = run_app("-m", "lkcli", "agent_mainguard", start_method="forkserver")
    job = result["job"]
    assert result["parent_active"] is False and job["active"] is False
    assert job["segment_indexes"] == [None]  # no patch: a plain FlushSentinel, no attributes
    warnings = [r for r in result["records"] if r["level"] == "WARNING"]
    assert len(warnings) == 1 and warnings[0]["pid"] == job["pid"], result["records"]
    assert "install() was never called" in warnings[0]["msg"]
    assert "module top level" in warnings[0]["msg"]


def _prewarm(proc: object) -> str:
    return f"prewarmed {proc}"


def _refuse() -> None:
    raise RuntimeError("no")


def test_the_setup_function_installs_first_once_and_survives_a_failure(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """What a job process runs: the install it was handed (pickled by reference, so the
    process imports livekit_segments), then the user's prewarm, even when install fails."""
    monkeypatch.setattr(activation, "install_failed", False)
    setup = pickle.loads(pickle.dumps(job_process.InstallingSetupFnc(_prewarm, installer.install)))
    assert setup.install is installer.install and setup.fnc is _prewarm

    failing = job_process.InstallingSetupFnc(_prewarm, _refuse)
    assert failing("proc") == "prewarmed proc"
    assert activation.install_failed
    assert [r.levelname for r in caplog.records] == ["ERROR"]
    assert "install() failed in the job process" in caplog.records[0].getMessage()
    assert failing("proc") == "prewarmed proc"  # not tried again, not logged again
    assert len(caplog.records) == 1
