"""The docs stay true to the code: every relative link resolves, every `--flag` a page names exists in that script's
--help, each stage page holds every flag of its stage, and the README stays short enough to read in five minutes."""
import contextlib
import importlib
import io
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250

# The project's commands a page can name, each with the module whose main(argv) parses its flags.
COMMANDS = {"train.py": "train", "infer.py": "infer", "ensemble.py": "ensemble", "study.py": "study",
            "src.prepare": "src.prepare", "src.split": "src.split", "src.plan": "src.plan", "src.bench": "src.bench",
            "export.py": "export", "predict.py": "src.portable.package"}  # predict.py: an exported package's
# study.py gives every flag that is not its own to each train.py run, except these, which it sets for each run.
STUDY_SETS = {"--arch", "--encoder", "--fold", "--resume", "--overwrite"}
# A stage page documents these commands: a flag it names outside another command's line is one of theirs.
STAGES = {"prepare.md": ["src.prepare", "src.split", "src.plan"], "train.md": ["train.py"], "infer.md": ["infer.py"],
          "ensemble.md": ["ensemble.py"], "study.md": ["study.py"], "export.md": ["export.py", "predict.py"]}
# Other tools' command lines (their flags are theirs to check), and the few of their flags the pages name in prose.
FOREIGN_COMMANDS = (r"accelerate launch|ray start|sbatch|#SBATCH|srun|wandb sync|pip install|pytest|python -X"
                    r"|docs/results/\w+\.py")  # the results pages' own scripts: their flags are in their docstrings
FOREIGN_FLAGS = {"--multi_gpu", "--num_processes", "--num_machines", "--machine_rank", "--main_process_ip",
                 "--main_process_port", "--cpu", "--signal", "--array", "--gpus", "--dry-run",
                 "--durations"}  # pytest's

COMMAND = re.compile(r"(?:python\s+(?:-m\s+)?)?(?<![\w/.-])(" + "|".join(map(re.escape, COMMANDS)) + r")\b|(" + FOREIGN_COMMANDS
                     + r")|\||;|&&|\s#")
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@cache
def help_flags(command: str) -> frozenset:
    """The long flags `command --help` lists (run once per command, in this process)."""
    text = io.StringIO()
    with contextlib.redirect_stdout(text), pytest.raises(SystemExit):
        importlib.import_module(COMMANDS[command]).main(["--help"])
    flags = set(re.findall(r"^  (?:-\w, )?(--[\w-]+)", text.getvalue(), re.MULTILINE))
    if command == "study.py":
        flags |= help_flags("train.py") - STUDY_SETS
    return frozenset(flags)


def code_lines(text: str) -> tuple:
    """The lines of fenced blocks (backslash continuations joined), and the rest: inline `code` spans and prose."""
    blocks, rest = [], []
    for i, part in enumerate(re.split(r"^```.*$", text, flags=re.MULTILINE)):
        (blocks if i % 2 else rest).extend(re.sub(r"\\\n\s*", " ", part).splitlines() if i % 2 else part.split("`"))
    return blocks, rest


def named_flags(text: str) -> list:
    """(command, flag) for every flag the page names: a flag on a project command's line (in a block or a `span`) is
    that command's; one on another tool's line is skipped; one elsewhere in a block (a program's output, a shell
    variable) has "code"; one in prose or in another span has None."""
    blocks, rest = code_lines(text)
    found = []
    for line, outside in [(line, "code") for line in blocks] + [(line, None) for line in rest]:
        command, start = outside, 0
        for match in [*COMMAND.finditer(line), None]:
            end = match.start() if match else len(line)
            if command != "foreign":
                found += [(command, flag) for flag in FLAG.findall(line[start:end])]
            if match:
                command = match.group(1) or ("foreign" if match.group(2) else outside)
                start = match.end()
    return found


def test_readme_is_short():
    lines = len((ROOT / "README.md").read_text().splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines, at most {README_MAX_LINES}: move detail to docs/"


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set:
    prose = re.split(r"^```.*$", page.read_text(), flags=re.MULTILINE)[::2]
    return {slug(heading) for part in prose for heading in re.findall(r"^#+ (.+)$", part, re.MULTILINE)}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_relative_links_resolve(page):
    broken = []
    for target in LINK.findall(page.read_text()):
        if re.match(r"[a-z]+:", target):
            continue
        path, _, anchor = target.partition("#")
        linked = (page.parent / path).resolve() if path else page
        if not linked.exists() or (anchor and linked.suffix == ".md" and anchor not in anchors(linked)):
            broken.append(target)
    assert not broken, f"{page.relative_to(ROOT)}: links that resolve to nothing: {broken}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_named_flags_exist(page):
    own = STAGES.get(page.name, [])
    anywhere = frozenset().union(*map(help_flags, COMMANDS)) | FOREIGN_FLAGS
    unknown = set()
    for command, flag in named_flags(page.read_text()):
        if command in COMMANDS:
            known = help_flags(command)
        elif command is None and own:
            known = frozenset().union(*map(help_flags, own)) | FOREIGN_FLAGS
        else:
            known = anywhere
        if flag not in known:
            unknown.add(f"{command if command in COMMANDS else ' / '.join(own) or 'any command'} {flag}")
    assert not unknown, f"{page.relative_to(ROOT)} names flags no --help lists: {sorted(unknown)}"


@pytest.mark.parametrize("page", STAGES)
def test_stage_page_holds_every_flag(page):
    named = {flag for _, flag in named_flags((ROOT / "docs" / page).read_text())}
    own = set().union(*map(help_flags, STAGES[page])) - {"--help"} - (help_flags("train.py") if page == "study.md" else set())
    assert own <= named, f"docs/{page} does not document {sorted(own - named)}, which --help lists"
