"""The real-LiveKit example and its token script: importable, correct, and runnable as far as
this machine allows (no LiveKit server, no audio devices)."""

from __future__ import annotations

import asyncio
import datetime
import importlib.util
import io
import os
import signal
import socket
import sys
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from types import ModuleType

import jwt
import pytest

import livekit_segments
from livekit.agents import AgentServer, llm

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
FAKE_KEY, FAKE_SECRET = "APIfake", "fake-secret-that-is-long-enough-for-hs256!"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"segments_example_{name}", EXAMPLES / name)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def test_agent_example_imports_and_yields_two_responses() -> None:
    agent_mod = load("agent.py")
    assert isinstance(agent_mod.server, AgentServer)
    # it calls install() at module top level
    assert livekit_segments.is_installed() or livekit_segments.has_native_support()

    agent = agent_mod.AckThenAnswer()
    stream = agent.llm_node(llm.ChatContext.empty(), [], None)
    assert await anext(stream) == "Good question, one moment."
    brk = await anext(stream)
    assert isinstance(brk, livekit_segments.SegmentBreak) and brk.id == "answer"
    await stream.aclose()


def test_token_script_mints_a_valid_join_token() -> None:
    token_mod = load("token.py")
    token = token_mod.mint_token(
        api_key=FAKE_KEY,
        api_secret=FAKE_SECRET,
        room="segments-test",
        identity="tester",
        ttl=datetime.timedelta(minutes=5),
    )
    claims = jwt.decode(token, FAKE_SECRET, algorithms=["HS256"])
    assert claims["iss"] == FAKE_KEY and claims["sub"] == "tester"
    assert claims["video"]["roomJoin"] is True and claims["video"]["room"] == "segments-test"
    assert claims["exp"] - claims["nbf"] == 300

    out = io.StringIO()
    env = {"LIVEKIT_API_KEY": FAKE_KEY, "LIVEKIT_API_SECRET": FAKE_SECRET, "LIVEKIT_URL": "ws://x"}
    with redirect_stdout(out):
        assert token_mod.main(["--room", "r1", "--identity", "me"], env=env) == 0
    printed = dict(line.split(":", 1) for line in out.getvalue().splitlines())
    assert printed["url"].strip() == "ws://x"
    minted = jwt.decode(printed["token"].strip(), FAKE_SECRET, algorithms=["HS256"])
    assert minted["video"]["room"] == "r1" and minted["sub"] == "me"

    err = io.StringIO()
    with redirect_stderr(err):
        assert token_mod.main([], env={"LIVEKIT_URL": "ws://x"}) == 2
    assert "LIVEKIT_API_KEY, LIVEKIT_API_SECRET" in err.getvalue()


@pytest.mark.parametrize("ttl", ["0", "-5", "abc", "1.5"])
def test_token_script_rejects_a_ttl_that_is_not_a_positive_whole_number(
    ttl: str, capsys: pytest.CaptureFixture[str]
) -> None:
    token_mod = load("token.py")
    env = {"LIVEKIT_API_KEY": FAKE_KEY, "LIVEKIT_API_SECRET": FAKE_SECRET, "LIVEKIT_URL": "ws://x"}
    with pytest.raises(SystemExit) as exc:
        token_mod.main(["--ttl-minutes", ttl], env=env)
    assert exc.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""  # no token printed
    assert f"argument --ttl-minutes: {ttl!r} is not a whole number of minutes > 0" in captured.err

    with pytest.raises(ValueError, match="ttl must be positive"):
        token_mod.mint_token(
            api_key=FAKE_KEY,
            api_secret=FAKE_SECRET,
            room="r",
            identity="me",
            ttl=datetime.timedelta(0),
        )


async def test_agent_example_starts_with_the_cli_and_fails_only_for_lack_of_a_server() -> None:
    with socket.socket() as s:  # a local port with nothing listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {
        **os.environ,
        "LIVEKIT_URL": f"ws://127.0.0.1:{port}",
        "LIVEKIT_API_KEY": FAKE_KEY,
        "LIVEKIT_API_SECRET": FAKE_SECRET,
        # any free port for the health check: the default 8081 may be taken on this host
        "AGENT_HTTP_PORT": "0",
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLES / "agent.py"),
        "start",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,  # its own process group: the job processes go with it
    )
    assert proc.stdout is not None
    seen: list[str] = []
    # a bound on the whole wait: the agent logs a retry now and then, forever
    deadline = asyncio.get_running_loop().time() + 240
    try:
        while True:
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, "no job process initialized within 240 s:\n" + "".join(seen[-30:])
            line = (await asyncio.wait_for(proc.stdout.readline(), left)).decode()
            assert line, "the agent exited before trying to connect:\n" + "".join(seen[-30:])
            seen.append(line)
            text = "".join(seen)
            # job processes come up (with install() in them) while the server connection fails
            if "failed to connect to livekit" in text and "process initialized" in text:
                break
    finally:
        # how it shuts down is not under test: a worker that never connected drains for up
        # to 30 min on SIGTERM in livekit-agents 1.6.x, so end the whole group at once
        os.killpg(proc.pid, signal.SIGKILL)
        await proc.communicate()
    # upstream logs its own tracebacks when a loaded machine makes process start-up time out
    # (it retries); none may come from this package
    ours = [line for line in seen if "Traceback" in line and "livekit_segments" in line]
    assert not ours, text
