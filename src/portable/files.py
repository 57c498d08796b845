"""Writing files so that a reader, or a resume after a crash, sees the old file or the new one, never half of one.

A leaf: it imports nothing of the project, so every module may use it without an import circle.
"""
import os
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: Path):
    """A temporary name (path + '.tmp') to write path under, renamed into place when the block ends."""
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    yield tmp
    os.replace(tmp, path)


def write_atomic(path: Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
