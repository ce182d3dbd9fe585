"""`install()` and `uninstall()`: check every seam first, patch, and restore exactly.

Modelled on OpenTelemetry's instrumentors (a dependency-range check before any patching) and
gevent.monkey (the originals are saved and put back as the very same objects).
"""

from __future__ import annotations

import contextvars
import dataclasses
import functools
import inspect
import logging
import threading
import warnings
from collections.abc import Callable
from types import ModuleType
from typing import Any

from packaging.specifiers import SpecifierSet
from packaging.version import InvalidVersion, Version

import livekit.agents as agents
from livekit.agents.ipc import job_proc_executor
from livekit.agents.utils import aio
from livekit.agents.voice import (
    agent_activity,
    agent_session,
    events,
    generation,
    io,
    speech_handle,
)

from . import activation, handle_state, job_process, pipeline_hooks, segment_break, state_label

__all__ = [
    "SUPPORTED_VERSIONS",
    "UnsupportedVersionError",
    "has_native_support",
    "install",
    "is_installed",
    "uninstall",
]

logger = logging.getLogger("livekit.segments")

SUPPORTED_VERSIONS = ">=1.6.0,<1.9"
"""The livekit-agents releases this runtime patch is tested against (a PEP 440 specifier)."""

_MISSING = object()


class UnsupportedVersionError(RuntimeError):
    """The installed livekit-agents cannot be patched: wrong version or missing internals."""


@dataclasses.dataclass(frozen=True)
class _Patch:
    owner: ModuleType | type
    name: str
    replacement: Any


@dataclasses.dataclass(frozen=True)
class _Applied:
    owner: ModuleType | type
    name: str
    original: Any  # _MISSING when the attribute did not exist
    replacement: Any


_lock = threading.Lock()
_applied: list[_Applied] = []


def is_installed() -> bool:
    """True while the runtime patch is applied in this process."""
    return bool(_applied)


def has_native_support() -> bool:
    """True when livekit-agents itself implements segment handles (the upstream series)."""
    return not is_installed() and activation.native_support()


def installed_agents_version() -> str:
    """The version of the livekit-agents package actually imported."""
    return str(agents.__version__)


def install(*, force: bool = False) -> None:
    """Patch livekit-agents so that every `SegmentBreak` opens its own `SpeechHandle`.

    Call it once at startup, before sessions start; calling it again does nothing. It
    checks the livekit-agents version against `SUPPORTED_VERSIONS` and checks that every
    internal it wraps exists before it changes anything. On a livekit-agents that
    implements segment handles natively it does nothing.

    Args:
        force: patch a version outside `SUPPORTED_VERSIONS`, with a warning. Missing
            internals still refuse.

    Raises:
        UnsupportedVersionError: the version is not supported (and `force` is False), or
            an internal the patch needs is missing. Nothing was changed.
    """
    with _lock:
        if _applied:
            return
        if has_native_support():
            logger.debug("livekit-agents implements segment handles natively; not patching")
            return
        _check_version(force=force)
        problems = _check_seams()
        if problems:
            raise UnsupportedVersionError(
                f"livekit-agents {installed_agents_version()} lacks internals that "
                f"livekit-segments wraps: {'; '.join(problems)}. Nothing was patched. "
                f"Install a supported livekit-agents ({SUPPORTED_VERSIONS}) or a "
                f"livekit-segments release that supports this one."
            )
        _apply(_plan())
        segment_break._patch_active = True
        job_process.on_install()


def uninstall() -> None:
    """Put back every original attribute, the very same objects; a no-op if not installed.

    Sessions already running keep the handles they have; new replies behave as upstream.
    """
    with _lock:
        if not _applied:
            return
        for applied in reversed(_applied):
            current = applied.owner.__dict__.get(applied.name, _MISSING)
            if current is not applied.replacement:
                logger.warning(
                    "%s.%s was replaced by someone else after install(); restoring the original",
                    _owner_name(applied.owner),
                    applied.name,
                )
            _restore(applied)
        _applied.clear()
        segment_break._patch_active = False
        job_process.on_uninstall()


def _owner_name(owner: ModuleType | type) -> str:
    return owner.__name__ if isinstance(owner, ModuleType) else owner.__qualname__


def _check_version(*, force: bool) -> None:
    raw = installed_agents_version()
    try:
        ok = Version(raw) in SpecifierSet(SUPPORTED_VERSIONS)
    except InvalidVersion:
        ok = False
    if ok:
        return
    message = (
        f"livekit-segments supports livekit-agents {SUPPORTED_VERSIONS}, but {raw} is "
        f"installed. Install a supported release (pip install "
        f"'livekit-agents{SUPPORTED_VERSIONS}'), upgrade livekit-segments, or call "
        f"install(force=True) to patch this version at your own risk."
    )
    if not force:
        raise UnsupportedVersionError(message)
    warnings.warn(message, RuntimeWarning, stacklevel=3)
    logger.warning("patching an untested livekit-agents version", extra={"version": raw})


def _plan() -> list[_Patch]:
    hooks = pipeline_hooks
    patches = [
        _Patch(agent_activity, "perform_llm_inference", hooks.wrap_perform_llm_inference),
        _Patch(agent_activity, "forward_generation", hooks.wrap_forward_generation),
        # say() looks these up in agent_activity, forward_generation in generation
        _Patch(agent_activity, "perform_audio_forwarding", hooks.wrap_perform_audio_forwarding),
        _Patch(agent_activity, "perform_text_forwarding", hooks.wrap_perform_text_forwarding),
        _Patch(generation, "perform_audio_forwarding", hooks.wrap_perform_audio_forwarding),
        _Patch(generation, "perform_text_forwarding", hooks.wrap_perform_text_forwarding),
        # every interruption: the open segment handle ends within the call
        _Patch(speech_handle.SpeechHandle, "_cancel", hooks.wrap_speech_handle_cancel),
        # an interruption inside a sink's first-frame report: that segment did start
        _Patch(io.AudioOutput, "on_playback_started", handle_state.wrap_on_playback_started),
        # the "thinking" label between responses (state_label)
        _Patch(
            agent_session.AgentSession,
            "_update_agent_state",
            state_label.wrap_update_agent_state,
        ),
        _Patch(agent_session.AgentSession, "agent_state", state_label.wrap_agent_state),
        # job processes import this package and install() before the user's prewarm
        _Patch(
            job_proc_executor.ProcJobExecutor,
            "__init__",
            # install() itself: pickled into each job process, run before the user's prewarm
            functools.partial(job_process.wrap_proc_job_executor_init, install=install),
        ),
    ]
    wrapped = [_Patch(p.owner, p.name, p.replacement(getattr(p.owner, p.name))) for p in patches]
    props = [
        _Patch(speech_handle.SpeechHandle, name, prop)
        for name, prop in handle_state.handle_properties().items()
    ]
    label = [_Patch(agent_session.AgentSession, state_label.LABEL_ATTR, False)]
    return wrapped + props + label


def _apply(plan: list[_Patch]) -> None:
    try:
        for p in plan:
            original = p.owner.__dict__.get(p.name, _MISSING)
            setattr(p.owner, p.name, p.replacement)
            _applied.append(_Applied(p.owner, p.name, original, p.replacement))
    except BaseException:
        # setattr on a module or class does not fail in practice; never leave half a patch
        for applied in reversed(_applied):
            _restore(applied)
        _applied.clear()
        raise


def _restore(applied: _Applied) -> None:
    """Put the original object back, or remove an attribute the patch added."""
    if applied.original is _MISSING:
        delattr(applied.owner, applied.name)
    else:
        setattr(applied.owner, applied.name, applied.original)


def _has_params(fn: Callable[..., Any], *names: str) -> bool:
    params = inspect.signature(fn).parameters
    return all(n in params and params[n].kind is inspect.Parameter.KEYWORD_ONLY for n in names)


def _returns_only(owner: type, name: str, reads: tuple[str, ...]) -> bool:
    """Whether ``owner.name`` (a property or method) only reads ``reads`` off ``self`` in
    that order: the hooks then read those directly, a Python call less each."""
    attr = inspect.getattr_static(owner, name)
    fn: Any = attr.fget if isinstance(attr, property) else attr
    return tuple(fn.__code__.co_names) == reads


def _check_seams() -> list[str]:
    """The seams that are missing, each described so that a failure names what moved."""
    return [what for what, ok in seam_report() if not ok]


def seam_report() -> list[tuple[str, bool]]:
    """Every internal `install()` relies on, in check order, with whether it holds here."""
    report: list[tuple[str, bool]] = []

    def need(what: str, check: Callable[..., object], *args: Any) -> None:
        try:
            good = bool(check(*args))
        except Exception:
            good = False
        report.append((what, good))

    def has_callable(owner: object, name: str) -> bool:
        return callable(getattr(owner, name))

    for mod in (agent_activity, generation):
        for fn in ("perform_audio_forwarding", "perform_text_forwarding"):
            need(f"{mod.__name__}.{fn}", has_callable, mod, fn)
    need(
        "perform_audio_forwarding(*, audio_output=...)",
        _has_params,
        generation.perform_audio_forwarding,
        "audio_output",
    )
    forward = getattr(agent_activity, "forward_generation", None)
    need(
        "agent_activity.forward_generation(*, speech_handle=...)",
        lambda: inspect.iscoroutinefunction(forward) and _has_params(forward, "speech_handle"),
    )
    need(
        "agent_activity.perform_llm_inference",
        has_callable,
        agent_activity,
        "perform_llm_inference",
    )
    need(
        "_AudioOutput.first_frame_fut (a settable dataclass field)",
        lambda: (
            "first_frame_fut" in {x.name for x in dataclasses.fields(generation._AudioOutput)}
            and not generation._AudioOutput.__dataclass_params__.frozen  # type: ignore[attr-defined]
        ),
    )
    for cls, field in (
        (generation._LLMGenerationData, "text_ch"),
        (generation._TextOutput, "first_text_fut"),
    ):
        need(
            f"{cls.__name__}.{field}",
            lambda c, f: f in {x.name for x in dataclasses.fields(c)},
            cls,
            field,
        )
    need(
        "utils.aio.Chan.send_nowait (settable per channel)",
        lambda: "__slots__" not in vars(aio.Chan) and callable(aio.Chan.send_nowait),
    )
    for var in ("_AgentActivityContextVar", "_SpeechHandleContextVar"):
        need(
            f"agent_activity.{var}",
            lambda v: isinstance(getattr(agent_activity, v), contextvars.ContextVar),
            var,
        )
    need(
        "AgentActivity.session",
        lambda: isinstance(
            inspect.getattr_static(agent_activity.AgentActivity, "session"), property
        ),
    )
    sh = speech_handle.SpeechHandle
    for attr in ("_cancel", "_mark_done", "_mark_scheduled", "add_done_callback", "interrupt"):
        need(f"SpeechHandle.{attr}", has_callable, sh, attr)
    # read per segment: the hooks take the value where the property or method finds it
    for name, reads in (
        ("interrupted", ("_interrupt_fut", "done")),
        ("done", ("_done_fut", "done")),
        ("id", ("_id",)),
        ("allow_interruptions", ("_allow_interruptions",)),
        ("input_details", ("_input_details",)),
    ):
        need(
            f"SpeechHandle.{name} returns self.{reads[0]}{'.done()' if len(reads) > 1 else ''}",
            _returns_only,
            sh,
            name,
            reads,
        )
    for attr in handle_state.handle_properties():
        need(f"SpeechHandle.{attr} not already defined", lambda a: not hasattr(sh, a), attr)
    session_cls = agent_session.AgentSession
    need(
        "AgentSession.agent_state returns self._agent_state",
        lambda: (
            isinstance(inspect.getattr_static(session_cls, "agent_state"), property)
            and _returns_only(session_cls, "agent_state", ("_agent_state",))
        ),
    )
    need(
        "AgentSession._update_agent_state(state, *, otel_context=..., start_time=...)",
        _has_params,
        getattr(session_cls, "_update_agent_state", None),
        "otel_context",
        "start_time",
    )
    need(
        f"AgentSession.{state_label.LABEL_ATTR} not already defined",
        lambda: not hasattr(session_cls, state_label.LABEL_ATTR),
    )
    need(
        "AudioOutput.on_playback_started(*, created_at=...)",
        _has_params,
        getattr(io.AudioOutput, "on_playback_started", None),
        "created_at",
    )
    need(
        "ProcJobExecutor(*, initialize_process_fnc=...)",
        _has_params,
        job_proc_executor.ProcJobExecutor.__init__,
        "initialize_process_fnc",
    )
    need(
        "SpeechCreatedEvent(speech_handle, user_initiated, source)",
        lambda: (
            {"speech_handle", "user_initiated", "source"}
            <= set(events.SpeechCreatedEvent.model_fields)
        ),
    )
    need("livekit.agents.FlushSentinel", lambda: isinstance(agents.FlushSentinel, type))
    return report
