"""What every subcommand shares: one-line errors, checks made before any work, wording.

An expected failure (a bad argument, an unusable output path, a missing optional dependency,
an unsupported livekit-agents) is a `UsageError`: the command prints its one line and exits
with `EXIT_USAGE`, like argparse does for bad arguments. A traceback means a bug.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import sys
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn, TypeVar, overload

__all__ = [
    "EXIT_INTERRUPTED",
    "EXIT_USAGE",
    "ArgumentParser",
    "UsageError",
    "check_livekit_agents",
    "install_extra_hint",
    "install_quietly",
    "output_path",
    "plural",
    "quiet_install_warnings",
    "require_module",
    "run_command",
]

_N = TypeVar("_N")

EXIT_USAGE = 2
"""Exit code of an expected failure (argparse uses it for bad arguments too)."""
EXIT_INTERRUPTED = 130
"""Exit code after Ctrl-C, as a shell reports SIGINT."""


class UsageError(Exception):
    """An expected failure; its message is one line that says what to do."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line naming the option and where help is.

    An unknown option after a subcommand is reported by that subcommand's parser, so the
    line points at its help (``livekit-segments demo --help``), not the top-level one.
    """

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    @overload
    def parse_args(
        self, args: Iterable[str] | None = None, namespace: None = None
    ) -> argparse.Namespace: ...
    @overload
    def parse_args(self, args: Iterable[str] | None, namespace: _N) -> _N: ...
    @overload
    def parse_args(self, *, namespace: _N) -> _N: ...
    def parse_args(self, args: Iterable[str] | None = None, namespace: Any = None) -> Any:
        """`argparse.ArgumentParser.parse_args`; unknown arguments go to the subcommand's
        `error`."""
        parsed, extras = self.parse_known_args(args, namespace)
        if extras:
            # argparse's own wording; it would come from the top-level parser
            self._innermost(parsed).error(f"unrecognized arguments: {' '.join(extras)}")
        return parsed

    def _innermost(self, parsed: argparse.Namespace) -> argparse.ArgumentParser:
        """The parser of the subcommand ``parsed`` chose (this one without a subcommand)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction) and action.dest != argparse.SUPPRESS:
                chosen = getattr(parsed, action.dest, None)
                sub = action.choices.get(chosen) if isinstance(chosen, str) else None
                if isinstance(sub, ArgumentParser):
                    return sub._innermost(parsed)
                if isinstance(sub, argparse.ArgumentParser):
                    return sub
        return self


def plural(n: int, singular: str, plural_form: str | None = None) -> str:
    """``1 handle``, ``2 handles``."""
    return f"{n} {singular if n == 1 else (plural_form or singular + 's')}"


def output_path(path: Path, option: str) -> Path:
    """Check that ``path`` can be written, creating its missing parent folders.

    Raises `UsageError` for a directory, a parent that is a file, or a path that cannot be
    written; the probe leaves no file behind.
    """
    if path.is_dir():
        raise UsageError(f"{option} {path}: is a directory; give a file name inside it")
    parent = path.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise UsageError(
            f"{option} {path}: {_first_file(parent)} is a file, not a folder"
        ) from None
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot create {parent}: {e.strerror}") from None
    existed = path.exists()
    try:
        with open(path, "ab"):
            pass
    except OSError as e:
        raise UsageError(f"{option} {path}: cannot write there: {e.strerror}") from None
    finally:
        if not existed:
            with contextlib.suppress(OSError):
                path.unlink()
    return path


def _first_file(folder: Path) -> Path:
    """The ancestor of ``folder`` (or itself) that exists but is not a directory."""
    for p in (folder, *folder.parents):
        if p.exists():
            return folder if p.is_dir() else p
    return folder


def install_extra_hint(extra: str = "demo") -> str:
    """How to install an extra, both ways: from PyPI, and from a clone (not on PyPI yet)."""
    return f"pip install 'livekit-segments[{extra}]' (from a clone: pip install '.[{extra}]')"


def require_module(module: str, why: str, extra: str = "demo") -> None:
    """Raise `UsageError` unless ``module`` can be imported (an optional dependency)."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise UsageError(f"{why} needs {module}: {install_extra_hint(extra)}")


def check_livekit_agents(*, force: bool) -> None:
    """Refuse, in one line, a livekit-agents that `install()` would refuse.

    With ``force``, a release outside `SUPPORTED_VERSIONS` is accepted with a one-line
    warning on stderr; missing internals are refused either way, as `install()` does.
    """
    from . import doctor, installer

    d = doctor.diagnose()
    if d.installable:
        return
    supported = installer.SUPPORTED_VERSIONS
    pip = f"pip install 'livekit-agents{supported}'"
    if d.missing:
        raise UsageError(
            f"livekit-agents {d.agents_version} lacks {plural(len(d.missing), 'internal')} "
            f"that livekit-segments wraps ({d.missing[0]}"
            f"{', ...' if len(d.missing) > 1 else ''}); install a supported release ({pip}); "
            f"'livekit-segments doctor' lists what is missing"
        )
    if not force:
        raise UsageError(
            f"livekit-agents {d.agents_version} is not in the supported range {supported}: "
            f"install a supported release ({pip}), or pass --force to run on it anyway "
            f"('livekit-segments doctor' checks it)"
        )
    print(
        f"warning: livekit-agents {d.agents_version} is not in the supported range "
        f"{supported}; running anyway (--force)",
        file=sys.stderr,
    )


@contextlib.contextmanager
def quiet_install_warnings() -> Iterator[None]:
    """Silence `install()`'s force warning (and log record) when the CLI already said it."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            yield
    finally:
        logging.disable(previous)


def install_quietly(*, force: bool) -> None:
    """`install(force=force)` after `check_livekit_agents` warned once: no second warning.

    A refusal that the check did not foresee is still a `UsageError`, not a traceback.
    """
    from . import installer

    try:
        with quiet_install_warnings():
            installer.install(force=force)
    except installer.UnsupportedVersionError as e:
        raise UsageError(str(e)) from None


def run_command(
    func: Callable[[argparse.Namespace], int], args: argparse.Namespace, prog: str | None = None
) -> int:
    """Run a subcommand's ``func(args)``; a `UsageError` becomes one line and exit 2.

    Ctrl-C becomes one line and exit 130; anything else is a bug and keeps its traceback.
    """
    if prog is None:
        command = getattr(args, "command", None)
        prog = f"livekit-segments {command}" if command else "livekit-segments"
    try:
        return int(func(args))
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # Ctrl-C is the user's choice, not a bug
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
