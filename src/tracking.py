"""Weights & Biases through Accelerate's trackers: offline unless the user is logged in, never a login prompt."""
import netrc
import os
from pathlib import Path

import numpy as np


def wandb_logged_in() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError):
        return False


def prepare_wandb_env() -> str:
    """Set WANDB_MODE=offline when no key is known (an explicit WANDB_MODE wins); return the mode."""
    if "WANDB_MODE" not in os.environ and not wandb_logged_in():
        os.environ["WANDB_MODE"] = "offline"
    os.environ.setdefault("WANDB_SILENT", "true")
    return os.environ.get("WANDB_MODE", "online")


def start(accelerator, project: str, group: str, name: str, job_type: str, config: dict, folder: Path,
          run_id: str | None = None, tags: str = "") -> str | None:
    """Runs are grouped by arch+encoder, one run per fold: project=dataset, group=<arch>-<encoder>, name=fold<k>.

    Returns the W&B run id (main process), which a resumed training passes back to continue the same run.
    """
    mode = prepare_wandb_env()
    folder.mkdir(parents=True, exist_ok=True)
    resume = {"id": run_id, "resume": "allow"} if run_id else {}
    accelerator.init_trackers(project, config=config, init_kwargs={"wandb": {
        "group": group, "name": name, "job_type": job_type, "dir": str(folder), "tags": split_tags(tags), **resume}})
    if accelerator.is_main_process:
        run = accelerator.get_tracker("wandb", unwrap=True)
        folder = Path(run.dir).parent
        where = f"offline run in {folder}; upload later with `wandb sync {folder}`" if mode == "offline" else run.url
        print(f"W&B: {where}")
        return run.id
    return None


def summarize_best(accelerator, values: dict) -> None:
    """Overwrite the run's summary (by default the last logged values) with the best epoch's scores."""
    accelerator.get_tracker("wandb", unwrap=True).summary.update(values)


def mask_overlays(images: np.ndarray, preds: np.ndarray, truths: np.ndarray, class_names: list) -> list:
    """wandb.Image objects with predicted and true masks as overlays (the W&B mask viewer)."""
    import wandb

    labels = dict(enumerate(class_names))
    return [wandb.Image(image.squeeze(-1) if image.shape[-1] == 1 else image, masks={"prediction": {"mask_data": pred, "class_labels": labels},
                                      "ground_truth": {"mask_data": truth, "class_labels": labels}})
            for image, pred, truth in zip(images, preds, truths)]


def split_tags(tags: str) -> list:
    return [tag for tag in tags.split(",") if tag]


def log_tables(project: str, group: str, name: str, job_type: str, folder: Path, tables: dict, summary: dict,
               tags: str = "", config: dict | None = None) -> None:
    """One W&B run holding score tables (pandas DataFrames) and summary numbers, e.g. infer's OOF scores; its tags
    and config (arch, encoder, fold) are those a study's training runs carry, so one dashboard filter finds them all."""
    import wandb

    mode = prepare_wandb_env()
    folder.mkdir(parents=True, exist_ok=True)
    run = wandb.init(project=project, group=group, name=name, job_type=job_type, dir=str(folder), tags=split_tags(tags),
                     config=config, reinit="create_new")
    run.log({key: wandb.Table(dataframe=table) for key, table in tables.items()})
    run.summary.update(summary)
    run.finish()
    print(f"W&B: {'offline run in ' + str(folder / 'wandb') if mode == 'offline' else run.url}")
