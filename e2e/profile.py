"""Network profiles: ``DELAY_MS:JITTER_MS:LOSS_PCT``, later entries taking over ``@SECONDS``."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["ProfileError", "Stage", "parse_profile", "stage_at"]

_ENTRY = re.compile(
    r"^\s*(?P<delay>\d+(?:\.\d+)?):(?P<jitter>\d+(?:\.\d+)?):(?P<loss>\d+(?:\.\d+)?)"
    r"(?:@(?P<at>\d+(?:\.\d+)?))?\s*$"
)


class ProfileError(ValueError):
    """A profile spec that cannot be read; the message says what to write instead."""


@dataclass(frozen=True)
class Stage:
    """One entry of a profile: the path's one-way delay, jitter and loss from ``at`` on."""

    delay_ms: float
    jitter_ms: float
    """Each packet's delay is uniform in ``delay_ms ± jitter_ms`` (never below zero)."""
    loss_pct: float
    at_s: float
    """Seconds after the session's start when this stage takes over."""

    def label(self) -> str:
        """The stage as written in a spec."""
        spec = f"{self.delay_ms:g}:{self.jitter_ms:g}:{self.loss_pct:g}"
        return spec if self.at_s == 0 else f"{spec}@{self.at_s:g}"


def parse_profile(spec: str) -> tuple[Stage, ...]:
    """Read ``DELAY_MS:JITTER_MS:LOSS_PCT[,DELAY:JITTER:LOSS@SECONDS...]``.

    The first entry starts at 0 and carries no ``@``; each later one needs ``@SECONDS``,
    strictly after the one before it.
    """
    stages: list[Stage] = []
    for i, entry in enumerate(spec.split(",")):
        m = _ENTRY.match(entry)
        if m is None:
            raise ProfileError(
                f"profile entry {entry!r} is not DELAY_MS:JITTER_MS:LOSS_PCT[@SECONDS] "
                "(example: 60:10:0,200:10:0@20)"
            )
        at = m.group("at")
        if i == 0 and at is not None and float(at) != 0:
            raise ProfileError(f"the first profile entry starts at 0; drop '@{at}' from {entry!r}")
        if i > 0 and at is None:
            raise ProfileError(
                f"profile entry {entry!r} needs '@SECONDS', the moment it takes over"
            )
        stage = Stage(
            delay_ms=float(m.group("delay")),
            jitter_ms=float(m.group("jitter")),
            loss_pct=float(m.group("loss")),
            at_s=float(at) if at is not None else 0.0,
        )
        if stage.loss_pct > 100:
            raise ProfileError(f"loss {stage.loss_pct:g}% in {entry!r} is over 100")
        if stages and stage.at_s <= stages[-1].at_s:
            raise ProfileError(
                f"profile entry {entry!r} must start after {stages[-1].at_s:g} s, "
                "the start of the entry before it"
            )
        stages.append(stage)
    return tuple(stages)


def stage_at(stages: tuple[Stage, ...], t: float) -> Stage:
    """The stage in force ``t`` seconds after the session's start."""
    current = stages[0]
    for stage in stages[1:]:
        if t >= stage.at_s:
            current = stage
    return current
