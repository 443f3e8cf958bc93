"""The documentation names only what exists.

README.md and docs/*.md are checked for:

- links: every relative markdown link ``[text](path)`` or ``[text](path#anchor)`` names a file
  that exists, and an anchor into a markdown file names one of its headings (GitHub's slugs);
- commands, in fenced code blocks and in inline code that starts like a command
  (``python -m pipeline.X``, ``meld-fusion X``, ``python bench/x.py``, ``scripts/x.sh``,
  ``torchrun ... -m pipeline.train``, ``make target``): the module, script or make target
  exists; every ``--flag`` appears in that command's ``--help``; a ``--config FILE`` exists;
  and the ``key=value`` overrides resolve with that config (``load_config`` raises no
  ``ConfigError``). ``meld-fusion X`` is checked as ``python -m pipeline.X`` once the console
  command exists (``pipeline/cli.py``), and skipped before.

Line continuations (``\\``), shell comments, ``&&``/``;``/``|`` chains, leading ``VAR=value``
assignments and ``time`` are understood; variables assigned in the same code block
(``M="k=v ..."``) are expanded. Placeholders (``configs/X.yaml``, ``RUN/best.pt``,
``pipeline.<stage>``) are not checked.
"""
from __future__ import annotations

import functools
import importlib.util
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^\s*(```|~~~)\s*([\w+-]*)")
SHELL_LANGUAGES = {"", "bash", "sh", "shell", "console", "zsh"}
LINK = re.compile(r"!?\[(?:[^\]\\]|\\.)*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
OVERRIDE = re.compile(r"^(?:output_dir|(?:[a-z_][a-z0-9_]*\.)+[a-z_][a-z0-9_]*)=")
PYTHONS = {"python", "python3", ".venv/bin/python", "$PYTHON", '"$PYTHON"'}
CHAIN = {"&&", "||", ";", "|"}
REPO_DIRS = ("configs/", "scripts/", "bench/", "docs/")
# scripts that pass their arguments on to a stage: check the flags against that stage's help
SCRIPT_STAGES = {"scripts/preprocess_meld.sh": ("pipeline.preprocess", 0),
                 "scripts/train_ddp.sh": ("pipeline.train", 1)}  # (stage, leading positional args)
SCRIPTS_WITH_HELP = {"scripts/download_meld.sh"}


# ----------------------------------------------------------------------------- reading markdown
@dataclass
class Command:
    doc: Path
    line: int
    text: str
    tokens: list[str]

    @property
    def where(self) -> str:
        return f"{self.doc.relative_to(REPO)}:{self.line}"


@dataclass
class Markdown:
    path: Path
    prose: list[tuple[int, str]] = field(default_factory=list)  # lines outside code blocks
    blocks: list[tuple[int, str, list[tuple[int, str]]]] = field(default_factory=list)  # (line, language, lines)


def read_markdown(path: Path) -> Markdown:
    doc = Markdown(path)
    block: list[tuple[int, str]] | None = None
    fence = ""
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line)
        if block is None and match:
            fence, block = match.group(1), []
            doc.blocks.append((number, match.group(2).lower(), block))
        elif block is not None and line.strip().startswith(fence) and not line.strip()[len(fence):].strip():
            block = None
        elif block is not None:
            block.append((number, line))
        else:
            doc.prose.append((number, line))
    return doc


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


@functools.cache
def anchors(path: Path) -> frozenset[str]:
    seen: dict[str, int] = {}
    for _, line in read_markdown(path).prose:
        match = HEADING.match(line)
        if match:
            base = slug(match.group(2))
            count = seen.get(base, 0)
            seen[base] = count + 1
            seen.setdefault(base if count == 0 else f"{base}-{count}", 1)
    return frozenset(seen)


def links(doc: Markdown) -> list[tuple[int, str]]:
    found = []
    for number, line in doc.prose:
        for target in LINK.findall(CODE_SPAN.sub("", line)):
            found.append((number, target))
    return found


def logical_lines(lines: list[tuple[int, str]]) -> list[tuple[int, str]]:
    """Lines joined at a trailing backslash, with the number of their first line."""
    joined: list[tuple[int, str]] = []
    start, parts = 0, []
    for number, line in lines:
        if not parts:
            start = number
        if line.rstrip().endswith("\\"):
            parts.append(line.rstrip()[:-1])
            continue
        parts.append(line)
        joined.append((start, " ".join(parts)))
        parts = []
    if parts:
        joined.append((start, " ".join(parts)))
    return joined


def split_shell(text: str) -> list[list[str]]:
    """The simple commands of a shell line, comments dropped; [] when it does not parse."""
    lexer = shlex.shlex(text, posix=True, punctuation_chars=";&|")
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:  # an unbalanced quote: prose, not a command
        return []
    commands, current = [], []
    for token in tokens:
        if token in CHAIN:
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return [command for command in commands if command]


def expand(tokens: list[str], variables: dict[str, str]) -> list[str]:
    out: list[str] = []
    for token in tokens:
        name = re.fullmatch(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?", token)
        if name and name.group(1) in variables:
            out.extend(shlex.split(variables[name.group(1)]))
        else:
            out.append(re.sub(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)\}?",
                              lambda m: variables.get(m.group(1), m.group(0)), token))
    return out


def strip_prefix(tokens: list[str]) -> list[str]:
    """Drop leading ``VAR=value`` assignments, ``time``, ``env`` and ``export``."""
    index = 0
    while index < len(tokens) and (ASSIGNMENT.match(tokens[index]) or tokens[index] in {"time", "env", "export"}):
        index += 1
    return tokens[index:]


def is_command(tokens: list[str]) -> bool:
    if not tokens:
        return False
    head = tokens[0]
    if head in PYTHONS:
        return len(tokens) > 1 and (tokens[1] == "-m" or tokens[1].endswith(".py"))
    if head == "bash":
        return len(tokens) > 1 and is_command(tokens[1:])
    return head in {"meld-fusion", "torchrun", "make"} or bool(re.fullmatch(r"scripts/[\w.-]+\.(sh|py)", head))


def commands_of(path: Path) -> list[Command]:
    doc = read_markdown(path)
    found: list[Command] = []
    for _, language, lines in doc.blocks:
        if language not in SHELL_LANGUAGES:
            continue
        variables: dict[str, str] = {}
        for number, text in logical_lines(lines):
            for tokens in split_shell(text):
                if tokens[0] == "export":
                    tokens = tokens[1:]
                if tokens and all(ASSIGNMENT.match(token) for token in tokens):
                    for token in tokens:  # NAME=value lines define variables for later lines
                        name, value = token.split("=", 1)
                        variables[name] = value
                    continue
                tokens = strip_prefix(expand(tokens, variables))
                if is_command(tokens):
                    found.append(Command(path, number, text.strip(), tokens))
    for number, line in doc.prose:
        for _, span in CODE_SPAN.findall(line):
            for tokens in split_shell(span):
                tokens = strip_prefix(tokens)
                if is_command(tokens):
                    found.append(Command(path, number, span, tokens))
    return found


# ----------------------------------------------------------------------------- what exists
def placeholder(value: str) -> bool:
    """``configs/X.yaml``, ``RUN/best.pt``, ``pipeline.<stage>``, ``$VAR``: not a real name."""
    if re.search(r"[<>*$\[\]{}]|\.\.\.", value):
        return True
    stem = Path(value).name.split(".")[0]
    return bool(re.fullmatch(r"[A-Z][A-Z_]*", stem))


def cli_exists() -> bool:
    return importlib.util.find_spec("pipeline.cli") is not None


_EXECUTOR = ThreadPoolExecutor(max_workers=3)
_HELP: dict[tuple[str, ...], Future] = {}


def run_help(argv: tuple[str, ...]) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    result = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = result.stdout + result.stderr
    assert result.returncode == 0, f"{' '.join(argv)} failed ({result.returncode}):\n{output[-3000:]}"
    return output


def request_help(argv: tuple[str, ...]) -> Future:
    """Start ``argv`` (a ``--help`` run) once; the help of every command is fetched in parallel."""
    if argv not in _HELP:
        _HELP[argv] = _EXECUTOR.submit(run_help, argv)
    return _HELP[argv]


def module_help(module: str) -> tuple[str, ...]:
    if module == "pipeline" and importlib.util.find_spec("pipeline.__main__") is None:
        # the console command's entry point, called as it would be
        return (sys.executable, "-c", "import sys; from pipeline.cli import main; sys.exit(main())", "--help")
    return (sys.executable, "-m", module, "--help")


def default_config(help_output: str) -> str | None:
    match = re.search(r"--config CONFIG\s+[^()]*?\(default:\s*(\S+?)\)", help_output, re.S)
    return match.group(1) if match else None


@functools.cache
def make_targets() -> frozenset[str]:
    text = (REPO / "Makefile").read_text()
    return frozenset(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))


@dataclass
class Resolved:
    """What a command runs: the ``--help`` run to check flags against (None: flags unchecked),
    its arguments, whether its help names its default config (the benches), whether it takes
    config overrides."""

    help: tuple[str, ...] | None
    args: list[str]
    bench: bool = False
    overrides: bool = True


def resolve(tokens: list[str]) -> Resolved | str | None:
    """The command's :class:`Resolved`, an error message, or None when it is not checked."""
    head = tokens[0]
    if head in PYTHONS and tokens[1] == "-m":
        if len(tokens) < 3:
            return "python -m without a module"
        module, args = tokens[2], tokens[3:]
        if module == "torch.distributed.run":
            return resolve(["torchrun", *args])
        if not module.startswith("pipeline") or placeholder(module):
            return None
        if importlib.util.find_spec(module) is None:
            return f"no module {module}"
        return Resolved(module_help(module), args)
    if head in PYTHONS:
        script, args = tokens[1], tokens[2:]
        if not (REPO / script).is_file():
            return f"no file {script}"
        if not script.startswith("bench/"):
            return Resolved(None, args)
        return Resolved((sys.executable, script, "--help"), args, bench=True)
    if head == "meld-fusion":
        if not cli_exists():
            pytest.skip("the meld-fusion console command (pipeline/cli.py) does not exist yet")
        if len(tokens) < 2 or tokens[1].startswith("-"):
            return Resolved(module_help("pipeline"), tokens[1:], overrides=False)
        return resolve(["python", "-m", f"pipeline.{tokens[1]}", *tokens[2:]])
    if head == "torchrun":
        if "-m" not in tokens:  # `torchrun` named in prose
            return None
        return resolve(["python", *tokens[tokens.index("-m"):]])
    if head == "make":
        missing = [t for t in tokens[1:] if not t.startswith("-") and "=" not in t and t not in make_targets()]
        return f"no make target {', '.join(missing)} in the Makefile" if missing else None
    if head == "bash":
        tokens = tokens[1:]
    script, args = tokens[0], tokens[1:]
    if not (REPO / script).is_file():
        return f"no file {script}"
    if script in SCRIPT_STAGES:
        stage, positional = SCRIPT_STAGES[script]
        return Resolved(module_help(stage), args[positional:])
    if script in SCRIPTS_WITH_HELP:
        return Resolved(("bash", script, "--help"), args, overrides=False)
    return Resolved(None, args, overrides=False)


def problems(tokens: list[str]) -> list[str]:
    resolved = resolve(tokens)
    if resolved is None:
        return []
    if isinstance(resolved, str):
        return [resolved]
    found: list[str] = []
    args = [arg.strip("[]") for arg in resolved.args]
    help_output = request_help(resolved.help).result() if resolved.help else None
    config = default_config(help_output) if resolved.bench and help_output else None
    for index, arg in enumerate(args):
        name, _, inline = arg.partition("=")
        if arg.startswith("--") and help_output is not None:
            if not re.search(rf"(?<![\w-]){re.escape(name)}(?![\w-])", help_output):
                found.append(f"{name} is not an option of this command (not in its --help)")
        if name == "--config":
            value = inline or (args[index + 1] if index + 1 < len(args) else "")
            if value and not placeholder(value):
                if not (REPO / value).is_file():
                    found.append(f"--config {value}: no such file")
                else:
                    config = value
        if arg.startswith(REPO_DIRS) and not placeholder(arg) and not (REPO / arg).exists():
            found.append(f"{arg}: no such file")
    overrides = [arg for arg in args if OVERRIDE.match(arg) and not placeholder(arg.split("=", 1)[1])]
    if resolved.overrides and overrides:
        from pipeline.config import ConfigError, load_config
        try:
            load_config(config, overrides)
        except ConfigError as err:
            found.append(f"overrides {' '.join(overrides)} with {config or 'the defaults'}: {err}")
    return found


# ----------------------------------------------------------------------------- the tests
COMMANDS = [command for doc in DOCS for command in commands_of(doc)]


@pytest.fixture(scope="module", autouse=True)
def _start_help_runs():
    """Every command's ``--help`` starts at once, a few at a time, instead of one per test."""
    for command in COMMANDS:
        try:
            resolved = resolve(command.tokens)
        except pytest.skip.Exception:
            continue
        if isinstance(resolved, Resolved) and resolved.help:
            request_help(resolved.help)
    yield
    _EXECUTOR.shutdown(wait=False, cancel_futures=True)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_relative_links_name_files_and_headings_that_exist(doc: Path) -> None:
    broken = []
    for number, target in links(read_markdown(doc)):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        path = (doc.parent / path_part).resolve() if path_part else doc
        if not path.exists():
            broken.append(f"{doc.name}:{number}: {target}: no such file")
        elif anchor and path.suffix == ".md" and anchor not in anchors(path):
            broken.append(f"{doc.name}:{number}: {target}: no heading #{anchor} in {path.name}")
    assert not broken, "\n".join(broken)


@pytest.mark.parametrize("command", COMMANDS, ids=lambda command: command.where)
def test_commands_name_what_exists(command: Command) -> None:
    found = problems(command.tokens)
    assert not found, f"{command.where}: {command.text}\n  " + "\n  ".join(found)


@pytest.mark.parametrize("doc", DOCS, ids=lambda path: str(path.relative_to(REPO)))
def test_repository_paths_in_inline_code_exist(doc: Path) -> None:
    """`configs/meld_text.yaml`, `scripts/demo.sh`, `tests/reliability/...` named in prose exist."""
    missing = []
    for number, line in read_markdown(doc).prose:
        for _, span in CODE_SPAN.findall(line):
            span = span.strip()
            if (span.startswith((*REPO_DIRS, "tests/", "pipeline/", "encoders/", "fusion/")) and " " not in span
                    and not placeholder(span) and not (REPO / span.split("#")[0]).exists()):
                missing.append(f"{doc.name}:{number}: {span}")
    assert not missing, "no such file:\n" + "\n".join(missing)


def test_commands_are_found() -> None:
    """The parser sees the README's commands (a parser that finds none would check nothing)."""
    readme = [command for command in COMMANDS if command.doc.name == "README.md"]
    assert any(command.tokens[:2] == ["make", "test"] for command in readme)
    assert sum(command.tokens[:3] == ["python", "-m", "pipeline.infer"] for command in COMMANDS) >= 3


def test_readme_states_the_two_setup_commands() -> None:
    """CI (.ci/run) runs the README's test command; the set-up block names exactly two."""
    doc = read_markdown(REPO / "README.md")
    setup = [[line.split("#")[0].strip() for _, line in lines] for _, language, lines in doc.blocks
             if language in SHELL_LANGUAGES and any(line.startswith("make demo") for _, line in lines)]
    assert setup, "README.md has no code block starting with make demo"
    assert [line for line in setup[0] if line] == ["make demo", "make test"]
    assert "make test" in (REPO / ".ci" / "run").read_text()


def test_readme_is_short() -> None:
    assert len((REPO / "README.md").read_text().splitlines()) < 200
