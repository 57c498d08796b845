"""Saving and checking the full training state that --resume continues from."""
import json
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
    """Full state (model, optimiser, scheduler, RNGs, counters) into state/, replaced atomically."""
    tmp, final = run_dir / "state.tmp", run_dir / "state"
    accelerator.save_state(str(tmp))
    if accelerator.is_main_process:
        (tmp / "trainer.json").write_text(json.dumps(trainer))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
    accelerator.wait_for_everyone()
