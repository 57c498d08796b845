"""A problem with one input file, told to a person: where, what, its particulars and the fix (src/problems.py groups
many of them into one line per kind)."""
from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    where: str  # a file, an id, or 'train.csv line 4'
    what: str  # the same words for every input with this problem: problems are grouped by what and fix
    detail: str = ""  # this input's particulars (its values, its size)
    fix: str = ""  # what to do: the flag or step that fixes it

    def __str__(self) -> str:
        return ((f"{self.where}: " if self.where else "") + self.what + (f" ({self.detail})" if self.detail else "")
                + (f"; {self.fix}" if self.fix else ""))


class InputError(ValueError):
    """A file that cannot be used as it is; carries its Problem so that identical ones are grouped."""

    def __init__(self, where, what: str, detail: str = "", fix: str = ""):
        self.problem = Problem(str(where), what, detail, fix)
        super().__init__(str(self.problem))
