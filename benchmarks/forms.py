"""The forms the bench compares, and switching between them inside one process.

Runtime mode (livekit-agents from PyPI): ``upstream`` is livekit-agents with the patch not
installed, splitting replies with plain `FlushSentinel`; ``patched`` is the same process after
`livekit_segments.install()`, splitting with `SegmentBreak`. Native mode (a livekit-agents
that implements segment handles itself): `install()` and `uninstall()` do nothing, so there
is no upstream to compare against in this process; only ``native`` is measured.
"""

from __future__ import annotations

import enum
from collections.abc import Callable

from livekit.agents import FlushSentinel
from livekit_segments import installer
from livekit_segments.segment_break import SegmentBreak

__all__ = ["Form", "Forms", "activate", "break_factory", "detect"]


class Form(str, enum.Enum):
    UPSTREAM = "upstream"
    """livekit-agents without the patch; replies split with plain `FlushSentinel`."""
    PATCHED = "patched"
    """After `livekit_segments.install()`; replies split with `SegmentBreak`."""
    NATIVE = "native"
    """A livekit-agents that implements segment handles; replies split with `SegmentBreak`."""


class Forms:
    """What this process can measure, and how to put the patch back as it was found."""

    def __init__(self, *, native: bool, was_installed: bool) -> None:
        self.native = native
        self.was_installed = was_installed

    @property
    def subject(self) -> Form:
        """The form that has segment handles."""
        return Form.NATIVE if self.native else Form.PATCHED

    @property
    def baseline(self) -> Form | None:
        """Upstream, when it can be measured in this process."""
        return None if self.native else Form.UPSTREAM

    @property
    def all(self) -> list[Form]:
        return [self.subject] if self.baseline is None else [self.baseline, self.subject]

    def order(self, i: int) -> list[Form]:
        """The forms in alternating order (baseline first on even ``i``), to cancel drift."""
        forms = self.all
        return forms if i % 2 == 0 else forms[::-1]

    def restore(self) -> None:
        if self.native:
            return
        if self.was_installed:
            installer.install()
        else:
            installer.uninstall()

    @property
    def description(self) -> str:
        if self.native:
            return (
                "native: livekit-agents implements segment handles itself, so upstream cannot "
                "be measured in this process; the native form is measured alone (ratios n/a)"
            )
        return (
            "runtime: upstream (patch not installed, plain FlushSentinel) versus the runtime "
            "patch (installed, SegmentBreak), alternating in one process"
        )


def native_support() -> bool:
    """Whether livekit-agents implements segment handles itself (the upstream series)."""
    return not installer.is_installed() and installer.has_native_support()


def detect() -> Forms:
    return Forms(native=native_support(), was_installed=installer.is_installed())


def activate(form: Form) -> bool:
    """Make ``form`` the live one (install or uninstall the runtime patch); True if that
    changed what is installed."""
    was_installed = installer.is_installed()
    if form is Form.UPSTREAM:
        installer.uninstall()
    elif form is Form.PATCHED:
        installer.install()
    return installer.is_installed() != was_installed


def break_factory(form: Form) -> Callable[[], FlushSentinel]:
    """What the form's ``llm_node`` yields between segments."""
    return FlushSentinel if form is Form.UPSTREAM else SegmentBreak
