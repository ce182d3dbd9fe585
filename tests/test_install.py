"""The runtime patch itself: version gate, seam checks, idempotence, exact restoration."""

from __future__ import annotations

import functools
import logging
from typing import Any

import pytest

import livekit.agents as agents
import livekit_segments
from livekit.agents.ipc.job_proc_executor import ProcJobExecutor
from livekit.agents.voice import agent_activity, generation
from livekit.agents.voice.speech_handle import SpeechHandle
from livekit_segments import SegmentBreak, UnsupportedVersionError

from .test_segments import Turn, normalized_events

pytestmark = pytest.mark.runtime_only

PATCHED = [
    (agent_activity, "perform_llm_inference"),
    (agent_activity, "forward_generation"),
    (agent_activity, "perform_audio_forwarding"),
    (agent_activity, "perform_text_forwarding"),
    (generation, "perform_audio_forwarding"),
    (generation, "perform_text_forwarding"),
    (ProcJobExecutor, "__init__"),
]
ADDED = ["playout_started", "segment_index", "segment_break"]


def snapshot() -> dict[str, Any]:
    snap: dict[str, Any] = {f"{o.__name__}.{n}": o.__dict__[n] for o, n in PATCHED}
    for name in ADDED:
        snap[f"SpeechHandle.{name}"] = SpeechHandle.__dict__.get(name, "<absent>")
    return snap


def test_install_and_uninstall_restore_the_exact_objects() -> None:
    before = snapshot()
    assert not livekit_segments.is_installed()
    livekit_segments.install()
    installed = snapshot()
    assert livekit_segments.is_installed()
    assert all(installed[k] is not before[k] for k in before)
    assert all(
        getattr(installed[k], "__wrapped__", None) is before[k]
        for k in before
        if "." in k and not k.startswith("SpeechHandle")
    )

    livekit_segments.install()  # idempotent: nothing wrapped twice
    assert snapshot() == installed
    assert all(snapshot()[k] is installed[k] for k in installed)

    livekit_segments.uninstall()
    after = snapshot()
    assert all(after[k] is before[k] for k in before)
    assert not any(hasattr(SpeechHandle, n) for n in ADDED)
    assert not livekit_segments.is_installed()
    livekit_segments.uninstall()  # idempotent too
    assert all(snapshot()[k] is before[k] for k in before)


def test_version_gate_refuses_and_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agents, "__version__", "1.5.9")
    before = snapshot()
    with pytest.raises(UnsupportedVersionError) as info:
        livekit_segments.install()
    message = str(info.value)
    assert "1.5.9" in message
    assert livekit_segments.SUPPORTED_VERSIONS in message
    assert "force=True" in message and "pip install" in message
    assert isinstance(info.value, RuntimeError)
    assert not livekit_segments.is_installed()
    assert all(snapshot()[k] is before[k] for k in before)


def test_force_patches_an_unsupported_version_with_a_warning(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(agents, "__version__", "1.9.0")
    with pytest.warns(RuntimeWarning, match="1.9.0"):
        livekit_segments.install(force=True)
    assert livekit_segments.is_installed()


def test_missing_seam_refuses_even_with_force(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agents, "__version__", "1.9.0")
    monkeypatch.delattr(agent_activity, "_SpeechHandleContextVar")
    monkeypatch.delattr(generation._TextOutput, "__dataclass_fields__")
    before = snapshot()
    with pytest.raises(UnsupportedVersionError) as info, pytest.warns(RuntimeWarning):
        livekit_segments.install(force=True)
    assert "_SpeechHandleContextVar" in str(info.value)
    assert "_TextOutput.first_text_fut" in str(info.value)
    assert "Nothing was patched" in str(info.value)
    assert not livekit_segments.is_installed()
    assert all(snapshot()[k] is before[k] for k in before)


def test_a_handle_property_that_no_longer_returns_its_field_refuses(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # the hooks read _interrupt_fut directly, where the property would be a call per segment
    monkeypatch.setattr(SpeechHandle, "interrupted", property(lambda self: self._cancelled))
    before = snapshot()
    with pytest.raises(UnsupportedVersionError) as info:
        livekit_segments.install()
    assert "SpeechHandle.interrupted returns self._interrupt_fut.done()" in str(info.value)
    assert not livekit_segments.is_installed()
    assert all(snapshot()[k] is before[k] for k in before)


def test_uninstall_restores_even_over_a_later_patch(caplog: pytest.LogCaptureFixture) -> None:
    original = agent_activity.forward_generation
    livekit_segments.install()
    monkeyed = object()
    agent_activity.forward_generation = monkeyed  # type: ignore[attr-defined]
    with caplog.at_level(logging.WARNING, logger="livekit.segments"):
        livekit_segments.uninstall()
    assert agent_activity.forward_generation is original  # type: ignore[attr-defined]
    assert "forward_generation was replaced" in caplog.text


def test_native_support_makes_install_a_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(agents, "SegmentBreak", SegmentBreak, raising=False)
    monkeypatch.setattr(SpeechHandle, "playout_started", property(lambda self: None), raising=False)
    before = snapshot()
    assert livekit_segments.has_native_support()
    livekit_segments.install()
    assert not livekit_segments.is_installed()
    assert all(snapshot()[k] is before[k] for k in before)


async def test_no_break_reply_is_identical_with_and_without_the_patch() -> None:
    script: list[Any] = ["Hello ", "there.", agents.FlushSentinel(), "Second part."]

    async def run() -> tuple[list[Any], list[Any], list[set[str]]]:
        t = Turn([list(script)])
        await t.run()
        await t.close()
        metrics_keys = [
            set(item.metrics)
            for item in t.agent.chat_ctx.items
            if item.type == "message" and item.role == "assistant"
        ]
        return normalized_events(t.rec), t.assistant_texts(), metrics_keys

    livekit_segments.install()
    patched = await run()
    livekit_segments.uninstall()
    unpatched = await run()
    assert patched == unpatched


async def test_segments_signal_through_a_forward_generation_wrapped_before_install() -> None:
    """Another instrumentation that wrapped forward_generation first: the forwarding calls
    then come from upstream's frame under that wrapper's coroutine, and the patch still tells
    which handle each segment plays under (by the reply's task)."""
    from livekit_segments.testing import VirtualAudioOutput, run_turn, started_session

    from .test_testing_kit import three

    upstream = agent_activity.forward_generation

    @functools.wraps(upstream)  # as instrumentors do: the signature stays upstream's
    async def instrumented(*args: Any, **kwargs: Any) -> Any:
        return await upstream(*args, **kwargs)

    agent_activity.forward_generation = instrumented
    try:
        livekit_segments.install()
        audio = VirtualAudioOutput()
        async with started_session(three(), audio=audio) as session:
            result = await run_turn(session, "What is six times seven?")
    finally:
        livekit_segments.uninstall()
        agent_activity.forward_generation = upstream
    assert [h.segment_index for h in result.handles] == [0, 1, 2]
    assert len(audio.started_times) == 3
    assert result.playout_started == audio.started_times
