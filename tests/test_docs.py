"""Docs that stay true: what they list is checked against the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_scripts_readme_lists_every_script_in_scripts() -> None:
    readme = (ROOT / "scripts" / "README.md").read_text()
    table = readme.split("\n\n## ", 1)[0]  # the first section: one row per file
    listed = set(re.findall(r"^\| `([^`]+)` \|", table, flags=re.MULTILINE))
    present = {p.name for p in (ROOT / "scripts").iterdir() if p.is_file()}
    assert present - listed == set(), "add a row to the table at the top of scripts/README.md"


# Every document whose commands a new user runs (issue 9: they must work as written).
DOCS = [
    "README.md",
    "CONTRIBUTING.md",
    "BENCHMARKS.md",
    "docs/demo.md",
    "docs/deployment.md",
    "scripts/README.md",
    "patches/README.md",
    "patches/PR.md",
]


def _doc_texts() -> dict[str, str]:
    return {name: (ROOT / name).read_text() for name in DOCS}


def _code(text: str) -> list[str]:
    """The command-like text of a Markdown file: inline code, fenced and indented blocks."""
    fenced = re.findall(r"^```[^\n]*\n(.*?)^```", text, flags=re.MULTILINE | re.DOTALL)
    indented = re.findall(r"^(?: {4}|\t)(.+)$", text, flags=re.MULTILINE)
    prose = re.sub(r"^```[^\n]*\n.*?^```", "", text, flags=re.MULTILINE | re.DOTALL)
    inline = re.findall(r"`([^`\n]+)`", prose)
    return fenced + indented + inline


# the repository's scripts/, not another folder's (client/scripts/...)
_SCRIPT = re.compile(r"(bash |python3? )?(?<![\w/.-])scripts/([\w.-]*\w)")


def test_every_script_the_docs_name_exists_and_runs_as_written() -> None:
    problems = []
    for doc, text in _doc_texts().items():
        for code in _code(text):
            for prefix, name in _SCRIPT.findall(code):
                path = ROOT / "scripts" / name
                if not path.is_file():
                    problems.append(f"{doc}: scripts/{name} does not exist")
                elif not prefix and "." not in name and not path.stat().st_mode & 0o111:
                    problems.append(f"{doc}: scripts/{name} is run directly but not executable")
    assert problems == []


_CLI = re.compile(r"(?:python3? -m livekit_segments|livekit-segments)((?: +[^\s`#&|;)]+)*)")
_BENCH = re.compile(r"(?:python3? -m benchmarks|scripts/bench)((?: +[^\s`#&|;)]+)*)")


def _commands(pattern: re.Pattern[str]) -> set[tuple[str, tuple[str, ...]]]:
    commands = set()
    for doc, text in _doc_texts().items():
        for code in _code(text):
            for tail in pattern.findall(code):
                commands.add((doc, tuple(tail.split())))
    return commands


def test_every_cli_command_in_the_docs_parses() -> None:
    from livekit_segments.__main__ import build_parser

    commands = {
        (doc, argv)
        for doc, argv in _commands(_CLI)
        if argv and re.fullmatch(r"[a-z][a-z-]*", argv[0])  # not "livekit-segments 0.1.0"
    }
    assert {argv[0] for _, argv in commands} >= {"demo", "doctor"}
    for doc, argv in sorted(commands):
        command = "livekit-segments " + " ".join(argv)
        assert argv[0] != "bench", f"{doc}: `{command}`: the benchmarks are python -m benchmarks"
        try:
            build_parser().parse_args(list(argv))  # parse only: nothing runs
        except SystemExit as exit_:
            raise AssertionError(f"{doc}: `{command}` is refused") from exit_


def test_every_benchmarks_command_in_the_docs_parses() -> None:
    from benchmarks.cli import build_parser

    commands = _commands(_BENCH)
    assert {doc for doc, _ in commands} >= {"CONTRIBUTING.md", "BENCHMARKS.md"}
    for doc, argv in sorted(commands):
        try:
            build_parser().parse_args(list(argv))  # parse only: nothing runs
        except SystemExit as exit_:
            raise AssertionError(
                f"{doc}: `python -m benchmarks {' '.join(argv)}` is refused"
            ) from exit_


def test_demo_md_lists_exactly_the_demo_options() -> None:
    from livekit_segments.__main__ import build_parser

    text = (ROOT / "docs" / "demo.md").read_text()
    table = text.split("## Options", 1)[1]
    listed = set(re.findall(r"^\| `(--[a-z-]+)", table, flags=re.MULTILINE))
    commands = next(a for a in build_parser()._actions if a.dest == "command")
    assert isinstance(commands.choices, dict)
    demo = commands.choices["demo"]
    options = {s for a in demo._actions for s in a.option_strings if s.startswith("--")}
    assert listed == options - {"--help"}


def test_every_relative_link_in_the_docs_points_at_a_file_in_the_repository() -> None:
    broken = []
    for doc, text in _doc_texts().items():
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a URL, or an anchor in the same file
            path = (ROOT / doc).parent / target.split("#", 1)[0]
            if not path.exists():
                broken.append(f"{doc}: {target}")
    assert broken == []
