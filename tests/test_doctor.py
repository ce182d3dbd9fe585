"""``livekit-segments doctor``: what install() would find, without patching anything."""

from __future__ import annotations

import pytest

import livekit.agents
import livekit_segments
from livekit.agents.voice import agent_activity
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments import installer
from livekit_segments.__main__ import main

from .conftest import MODE


def doctor(capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["doctor"])
    captured = capsys.readouterr()
    assert captured.err == ""
    return code, captured.out


def assert_nothing_patched() -> None:
    assert not livekit_segments.is_installed()
    assert not hasattr(SpeechHandle, "playout_started")


@pytest.mark.runtime_only
def test_doctor_on_the_installed_release(capsys: pytest.CaptureFixture[str]) -> None:
    code, out = doctor(capsys)

    assert code == 0
    lines = out.splitlines()
    assert f"livekit-agents {livekit.agents.__version__}: in SUPPORTED_VERSIONS" in out
    assert installer.SUPPORTED_VERSIONS in out
    assert "native support: no" in out
    seams = installer.seam_report()
    assert seams and all(ok for _, ok in seams)
    for what, _ in seams:
        assert f"  OK       {what}" in lines
    assert "MISSING" not in out
    assert lines[-1] == "result: install() would succeed"
    assert_nothing_patched()


@pytest.mark.runtime_only
def test_doctor_on_a_release_outside_the_range(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(livekit.agents, "__version__", "9.0.0")

    code, out = doctor(capsys)

    assert code == 1
    assert "livekit-agents 9.0.0: NOT in SUPPORTED_VERSIONS" in out
    assert "MISSING" not in out
    assert "install() would refuse 9.0.0" in out and "install(force=True)" in out
    assert_nothing_patched()
    # the verdict is install()'s: refused without force, patched with it
    with pytest.raises(livekit_segments.UnsupportedVersionError):
        livekit_segments.install()
    with pytest.warns(RuntimeWarning, match="9.0.0"):
        livekit_segments.install(force=True)
    assert livekit_segments.is_installed()


@pytest.mark.runtime_only
def test_doctor_names_a_missing_seam(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delattr(agent_activity, "perform_llm_inference")

    code, out = doctor(capsys)

    assert code == 1
    assert "  MISSING  agent_activity.perform_llm_inference" in out.splitlines()
    assert "OK       agent_activity.forward_generation" in out  # the others still listed
    assert "1 missing (agent_activity.perform_llm_inference)" in out
    assert_nothing_patched()
    with pytest.raises(livekit_segments.UnsupportedVersionError, match="perform_llm_inference"):
        livekit_segments.install(force=True)


def test_doctor_in_the_active_form(capsys: pytest.CaptureFixture[str]) -> None:
    """With the change active (installed, or native), install() is a no-op: exit 0."""
    code, out = doctor(capsys)

    assert code == 0
    if MODE == "native":
        assert "native support: yes" in out
    else:
        assert "runtime patch: already installed in this process" in out
    assert out.splitlines()[-1] == "result: install() would succeed"


@pytest.mark.parametrize("command", [[], ["demo"], ["doctor"]], ids=["top", "demo", "doctor"])
def test_help_is_plain_text(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    """``--help`` shows no docstring markup (backticks, ``double backticks``)."""
    with pytest.raises(SystemExit) as exc:
        main([*command, "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: livekit-segments")
    assert "`" not in out


def test_doctor_help_says_what_it_checks(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["doctor", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "livekit_segments.install() can patch the livekit-agents installed here" in out
    assert "Exits 0 when install() would succeed without force, 1 otherwise." in out
