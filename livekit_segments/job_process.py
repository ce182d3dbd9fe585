"""Carry `install()` into the job processes that `AgentServer` starts."""

from __future__ import annotations


def on_install() -> None:
    """Called by `install()` once the patch is applied."""


def on_uninstall() -> None:
    """Called by `uninstall()` once the originals are back."""
