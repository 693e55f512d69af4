"""The user documentation against the code: every relative link and anchor of README.md and
docs/ leads somewhere, and every command line in their shell blocks names a real console script,
module, example or make target and only flags that its ``--help`` lists."""

from __future__ import annotations

import functools
import re
import shlex
import subprocess
import sys
import tomllib
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PAGES = sorted([ROOT / "README.md", *(ROOT / "docs").rglob("*.md")])
FENCE = re.compile(r"^(```|~~~)(\S*)[^\n]*\n(.*?)^\1[ \t]*$", re.M | re.S)
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
SHELL_BLOCKS = {"", "bash", "sh", "shell", "console"}  # unlabelled blocks too
OPERATORS = {"&&", "||", ";", "|", "&"}
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def relative(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


# -- links ------------------------------------------------------------------------------------


def prose(text: str) -> str:
    """The page without its fenced code blocks and inline code (links there are not links)."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to dashes."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = "".join(
        c for c in text.strip().lower() if c in " -_" or unicodedata.category(c)[0] in "LN"
    )
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    """The anchors of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    seen: dict[str, int] = {}
    found = set()
    for match in re.finditer(r"^#{1,6}\s+(.+?)\s*#*\s*$", FENCE.sub("", path.read_text()), re.M):
        base = slug(match.group(1))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f"{base}-{count}")
    return frozenset(found)


def broken_links(page: Path) -> list[str]:
    problems = []
    for target in LINK.findall(prose(page.read_text())):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # https:, mailto:, ...
            continue
        file_part, _, anchor = target.partition("#")
        path = (page.parent / file_part).resolve() if file_part else page
        if not path.exists():
            problems.append(f"{target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            problems.append(f"{target}: no heading with that anchor in {path.name}")
    return problems


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_links_lead_somewhere(page):
    assert broken_links(page) == []


# -- command lines ----------------------------------------------------------------------------


def command_lines(text: str) -> list[str]:
    """The lines of the page's shell blocks, continuation lines joined."""
    lines = []
    for block in FENCE.finditer(text):
        if block.group(2) in SHELL_BLOCKS:
            lines += block.group(3).replace("\\\n", " ").splitlines()
    return lines


def invocations(line: str) -> list[tuple[tuple[str, ...], list[str]]]:
    """``(the command whose --help to read, its arguments)`` for each command of the line that
    is this project's; other programs (curl, docker, ...) are left alone."""
    try:
        tokens = shlex.split(line, comments=True)
    except ValueError:  # not shell: a heredoc's body, or quotes that span lines
        return []
    found = []
    segment: list[str] = []
    for token in [*tokens, ";"]:
        if token not in OPERATORS:
            segment.append(token)
            continue
        while segment and re.match(r"^\w+=", segment[0]):  # VAR=value before the program
            segment.pop(0)
        if command := project_command(segment):
            found.append(command)
        segment = []
    return found


def project_command(words: list[str]) -> tuple[tuple[str, ...], list[str]] | None:
    if not words:
        return None
    program, args = Path(words[0]).name, words[1:]
    if program == "torchrun" and "-m" in args:
        program, args = "python", args[args.index("-m") :]
    python = program in {"python", "python3"}
    if program in SCRIPTS or program.startswith("omniopd-"):
        return (str(Path(sys.executable).parent / program),), args
    if python and args[:1] == ["-m"] and len(args) > 1 and args[1].startswith("omniopd"):
        return (sys.executable, "-m", args[1]), args[2:]
    if python and args and re.match(r"(examples|bench)/\S+\.py$", args[0]):
        return (sys.executable, str(ROOT / args[0])), args[1:]
    if program == "make":
        return ("make",), args
    return None


@functools.cache
def help_text(command: tuple[str, ...]) -> str:
    done = subprocess.run(
        [*command, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT
    )
    return done.stdout if done.returncode == 0 else ""


def flag_problems(base: tuple[str, ...], args: list[str]) -> list[str]:
    if base == ("make",):
        makefile = (ROOT / "Makefile").read_text()
        return [
            f"make {target}: no such target"
            for target in args
            if not target.startswith("-")
            and "=" not in target
            and not re.search(rf"^{re.escape(target)}\s*:", makefile, re.M)
        ]
    if base[-1].endswith(".py") and (
        not Path(base[-1]).is_file() or "argparse" not in Path(base[-1]).read_text()
    ):
        return [f"{relative(Path(base[-1]))}: no such script, or no --help to ask"]
    # A subcommand (`omniopd-stack up`) has a help of its own.
    if args and not args[0].startswith("-") and help_text((*base, args[0])):
        base, args = (*base, args[0]), args[1:]
    text = help_text(base)
    if not text:
        return [f"`{' '.join(base)} --help` failed"]
    flags = [a.split("=", 1)[0] for a in args if a.startswith("--")]
    return [
        f"{Path(base[-1]).name}: {flag} is not in its --help"
        for flag in flags
        if not re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text)
    ]


def command_problems(text: str) -> list[str]:
    problems = []
    for line in command_lines(text):
        for base, args in invocations(line):
            problems += [f"{p}  ({line.strip()[:80]})" for p in flag_problems(base, args)]
    return problems


@pytest.mark.parametrize("page", PAGES, ids=relative)
def test_commands_use_real_flags(page):
    assert command_problems(page.read_text()) == []


def test_the_checks_catch_what_they_should(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# A page\n\n## Two `words`, here\n\n[ok](#two-words-here) [bad](#nowhere) "
        "[gone](missing.md) `[code](nowhere.md)`\n\n"
        "```bash\nX=1 omniopd-gateway --config t.yaml --no-such-flag &\n"
        "omniopd-stack up --gateway-port 1 && make no-such-target  # --not-a-flag\n"
        "curl --anything http://127.0.0.1:8100/readyz\n```\n"
    )
    assert broken_links(page) == [
        "#nowhere: no heading with that anchor in page.md",
        "missing.md: no such file",
    ]
    assert [p.split("  (")[0] for p in command_problems(page.read_text())] == [
        "omniopd-gateway: --no-such-flag is not in its --help",
        "make no-such-target: no such target",
    ]
