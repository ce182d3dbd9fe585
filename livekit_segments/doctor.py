"""``livekit-segments doctor``: can `install()` patch the livekit-agents installed here?

It reports the version, whether it is in `SUPPORTED_VERSIONS`, native support, and every
internal `install()` checks, without patching anything. Exit 0 when `install()` would
succeed without ``force``, 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, TextIO

from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version

from . import installer
from .version import __version__

__all__ = ["Diagnosis", "add_parser", "diagnose", "report"]

EXIT_OK = 0
EXIT_NOT_INSTALLABLE = 1

# plain text: --help prints it as it is (the module docstring is for the API docs)
_DESCRIPTION = """\
Checks whether livekit_segments.install() can patch the livekit-agents installed here,
without patching anything. Prints the livekit-agents version, whether it is in
SUPPORTED_VERSIONS, whether it has native segment support, and every internal install()
checks, OK or MISSING. Exits 0 when install() would succeed without force, 1 otherwise.
"""


@dataclasses.dataclass(frozen=True)
class Diagnosis:
    """What `install()` would find in this process."""

    agents_version: str
    supported_versions: str
    in_range: bool
    """The version is in `SUPPORTED_VERSIONS`."""
    native: bool
    """livekit-agents implements segment handles itself: `install()` does nothing."""
    already_installed: bool
    """The runtime patch is active in this process: `install()` does nothing."""
    seams: list[tuple[str, bool]]
    """Every internal `install()` checks, with whether it holds (empty when not checked)."""

    @property
    def missing(self) -> list[str]:
        """The seams that do not hold."""
        return [what for what, ok in self.seams if not ok]

    @property
    def installable(self) -> bool:
        """`install()` without ``force`` would succeed."""
        if self.native or self.already_installed:
            return True
        return self.in_range and not self.missing

    @property
    def installable_with_force(self) -> bool:
        """`install(force=True)` would succeed."""
        return self.native or self.already_installed or not self.missing


def diagnose() -> Diagnosis:
    """Look at the installed livekit-agents the way `install()` does, changing nothing."""
    version = installer.installed_agents_version()
    supported = installer.SUPPORTED_VERSIONS
    try:
        in_range = Version(version) in SpecifierSet(supported)
    except (InvalidVersion, InvalidSpecifier):
        in_range = False
    native = installer.has_native_support()
    already = installer.is_installed()
    # with the patch applied (or native code present) the seams are not what install() checks
    seams = [] if native or already else installer.seam_report()
    return Diagnosis(version, supported, in_range, native, already, seams)


def report(diagnosis: Diagnosis, out: TextIO) -> int:
    """Print ``diagnosis`` to ``out``; return the exit code (0: `install()` would succeed)."""
    d = diagnosis

    def say(line: str = "") -> None:
        print(line, file=out)

    say(f"livekit-segments {__version__}")
    where = "in" if d.in_range else "NOT in"
    say(f"livekit-agents {d.agents_version}: {where} SUPPORTED_VERSIONS ({d.supported_versions})")
    if d.native:
        say("native support: yes (livekit-agents has segment handles; install() does nothing)")
    else:
        say("native support: no (install() patches livekit-agents at runtime)")
    if d.already_installed:
        say("runtime patch: already installed in this process (install() does nothing)")
    if d.seams:
        say(f"seams install() checks ({len(d.seams)}):")
        width = max(len("MISSING"), len("OK"))
        for what, ok in d.seams:
            say(f"  {('OK' if ok else 'MISSING').ljust(width)}  {what}")
    elif not d.native and not d.already_installed:
        say("seams install() checks: none reported")
    say()
    if d.installable:
        say("result: install() would succeed")
        return EXIT_OK
    if d.missing:
        say(
            f"result: install() would fail, with or without force: {len(d.missing)} missing "
            f"({', '.join(d.missing)}). Install a supported livekit-agents "
            f"(pip install 'livekit-agents{d.supported_versions}') or a livekit-segments "
            f"release that supports {d.agents_version}."
        )
    else:
        say(
            f"result: install() would refuse {d.agents_version} (not in {d.supported_versions}); "
            f"every seam holds, so install(force=True) (--force for the demo) would "
            f"patch it. Run the test suite against it first (CONTRIBUTING.md)."
        )
    return EXIT_NOT_INSTALLABLE


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``doctor`` subcommand on an ``add_subparsers()`` object."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        help="check whether install() can patch the installed livekit-agents (patches nothing)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=_DESCRIPTION,
    )
    parser.set_defaults(func=_command)
    return parser


def _command(args: argparse.Namespace) -> int:
    return report(diagnose(), sys.stdout)
