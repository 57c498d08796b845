"""Problems found in an input, told to a person: one line per kind, with its count, examples and fix.

A thousand masks with the same fault make one line, not a thousand; the full list goes to a file that the message
names (prepare writes it), so that nothing is lost.
"""
from collections import defaultdict
from pathlib import Path

from src.portable.problems import InputError, Problem

EXAMPLES = 3


def as_problem(item) -> Problem:
    """A plain sentence (a one-off problem) is its own kind."""
    if isinstance(item, InputError):
        return item.problem
    return item if isinstance(item, Problem) else Problem("", str(item))


def grouped(problems: list) -> list:
    """One line per kind, the largest first: a problem alone as it is, else its count, three examples and the fix."""
    kinds = defaultdict(list)
    for problem in map(as_problem, problems):
        kinds[(problem.what, problem.fix)].append(problem)
    lines = []
    for (what, fix), members in sorted(kinds.items(), key=lambda kind: -len(kind[1])):
        if len(members) == 1:
            lines.append(str(members[0]))
            continue
        examples = ", ".join(p.where + (f" ({p.detail})" if p.detail else "") for p in members[:EXAMPLES])
        more = f" and {len(members) - EXAMPLES} more" if len(members) > EXAMPLES else ""
        lines.append(f"{len(members)} x {what}: {examples}{more}" + (f"; {fix}" if fix else ""))
    return lines


def report(problems: list, list_file: Path | None = None) -> str:
    """The grouped message; where grouping left some out, every problem is written to list_file, which it names."""
    lines = grouped(problems)
    head = f"{len(problems)} problem(s) in the input, nothing was written"
    if list_file and len(lines) < len(problems):
        Path(list_file).write_text("\n".join(str(as_problem(p)) for p in problems) + "\n")
        head += f" (all {len(problems)} listed in {list_file})"
    return head + ":\n  " + "\n  ".join(lines)
