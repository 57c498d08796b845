"""Saving and checking the full training state that --resume continues from."""
import json
import os
import shutil
from dataclasses import fields
from pathlib import Path

from src.config import Config

RESUMABLE = ("--epochs", "--patience", "--workers", "--tracker")


def settings_changed(saved: Config, requested: Config) -> str:
    """What a resumed run would silently change about the run it continues, e.g. 'lr 0.001 -> 0.01'."""
    free = {flag[2:].replace("-", "_") for flag in RESUMABLE}
    return ", ".join(f"{f.name} {getattr(saved, f.name)} -> {getattr(requested, f.name)}" for f in fields(Config)
                     if f.name not in free and getattr(saved, f.name) != getattr(requested, f.name))


def save_state(accelerator, run_dir: Path, trainer: dict) -> None:
    """Full state (model, optimiser, scheduler, RNGs, counters) into state/; a crash at any moment leaves one whole."""
    tmp, final, old = run_dir / "state.tmp", run_dir / "state", run_dir / "state.old"
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "trainer.json").write_text(json.dumps(trainer))
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def write_atomic(path: Path, text: str) -> None:
    """Readers (and a resume after a crash) see the old file or the new one, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def last_state(run_dir: Path) -> Path | None:
    """The newest complete state folder: state/, or state.old/ if a crash hit between the two renames."""
    for folder in (run_dir / "state", run_dir / "state.old"):
        if (folder / "trainer.json").exists():
            return folder
    return None
