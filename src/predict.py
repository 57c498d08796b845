"""infer.py's model side: a run's weights (best.pt or last.pt, as its --select-on rule scores), its model rebuilt from
config.json with no network, and images taken through it by src/portable/predictor.py's loop (the one an exported
package runs) into one file per image at the model's size (src/runs.py reads and writes them; the layout of preds/
is in docs/infer.md). infer.py predicts again every file not made by the model it is predicting with.
"""
import sys
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from src.config import load_run_config
from src.cache import input_channels
from src.models import create_model
from src.portable.models import ModelError, outputs, ready
from src.portable.predictor import Batch, image_files, predict
from src.runs import check_set_name, is_finished, save_pred

WRITE_AHEAD = 64  # maps being compressed and written while the model predicts the next images


class UnfinishedRun(FileNotFoundError):
    """A run folder whose training has not yet written the weights asked for: infer.py skips it."""


def checkpoint_file(run_dir: Path, checkpoint: str) -> Path:
    """run_dir/best.pt (the best validation epoch), run_dir/last.pt (the final epoch, written when training ends), or
    selected: the one the run's --select-on rule scores (last.pt under final, best.pt under inner and fold)."""
    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir)[0]
    checkpoint = cfg.selected_checkpoint if checkpoint == "selected" else checkpoint
    if checkpoint == "best" and cfg.select_on == "final":
        raise FileNotFoundError(f"{run_dir} was trained with --select-on final, which keeps no best.pt; use "
                                f"--checkpoint selected or last")
    first_epoch = run_dir / ("metrics.json" if cfg.select_on == "final" else "best.pt")  # written by epoch 1
    if not first_epoch.exists():
        raise UnfinishedRun(f"{run_dir}: no finished epoch (no {first_epoch.name})")
    weights = run_dir / f"{checkpoint}.pt"
    if weights.exists():
        return weights
    if not is_finished(run_dir):  # train.py adds epochs_run to metrics.json when training ends, with last.pt
        raise UnfinishedRun(f"{run_dir}: training not finished (no {weights.name} yet)")
    raise FileNotFoundError(f"{weights} not found, though the run finished (deleted?); train it again with "
                            f"train.py --overwrite")


def load_trained_model(run_dir: Path, weights: Path, device: torch.device) -> tuple:
    """(model in eval mode, Config, dataset meta), rebuilt from run_dir/config.json and weights, with no network."""
    cfg, meta = load_run_config(run_dir)
    try:
        model = create_model(cfg.arch, cfg.encoder, input_channels(meta, cfg.context),
                             outputs(meta["task"], meta["classes"]), "none", cfg.decoder_channels)
    except ModelError as error:
        raise ModelError(f"{Path(run_dir) / 'config.json'}: {error}") from error
    return ready(model, torch.load(weights, map_location="cpu", weights_only=True), device), cfg, meta


def cache_batches(images: np.ndarray, todo: pd.DataFrame, size: int, batch_size: int):
    """Batches of the cached images (uint8, at the run's size) of index rows `todo` (their labels are cache rows):
    keys their ids, sizes their originals' (index.csv's height and width)."""
    for start in range(0, len(todo), batch_size):
        part = todo.iloc[start:start + batch_size]
        array = images[part.index.to_numpy()]
        inputs = array[:, None] if array.ndim == 3 else array.transpose(0, 3, 1, 2)
        yield Batch(part["id"].tolist(), list(zip(part["height"], part["width"])),
                    {size: np.ascontiguousarray(inputs)})


def write_predictions(model, batches, out_dir: Path, model_id: dict, desc: str) -> None:
    """Each image's map through one model (src/portable/predictor.py's Model), written as out_dir/<key>.npz with
    model_id (the fold, weights, split and TTA that made it). Compressing and writing overlap the model's next
    images; memory stays flat."""
    with ThreadPoolExecutor(2) as writer:
        writing = deque()
        for key, size, (prob,) in predict([model], batches, desc):
            writing.append(writer.submit(save_pred, out_dir / f"{key}.npz", prob, size, **model_id))
            if len(writing) > WRITE_AHEAD:
                writing.popleft().result()  # a failed write raises here
        for done in writing:
            done.result()


def image_set(images: Path | None, name: str | None) -> tuple:
    """infer.py's (name, image paths) of the prediction set --images DIR [--name NAME], or (None, None) for the
    dataset's test split; a folder that cannot be one stops infer.py with one line."""
    if images is None:
        if name:
            sys.exit("infer: --name names the prediction set of --images DIR; pass --images too")
        return None, None
    try:
        paths = image_files(images)
    except ValueError as error:
        sys.exit(f"infer: {error}")
    name = name or images.resolve().name
    try:
        check_set_name(name)
    except ValueError as error:
        sys.exit(f"infer: --name: {error}")
    return name, paths


def check_set_source(predictions, name: str, images_dir: str) -> None:
    """infer.py: a prediction set (src/runs.py's PredictionSet) holds one folder's images: another folder of the same
    name is refused, not mixed in."""
    recorded = predictions.provenance.get("sets", {}).get(name, {}).get("images")
    if recorded not in (None, images_dir):
        sys.exit(f"infer: prediction set '{name}' of {predictions.run} in {predictions.part(name)} holds the images "
                 f"of {recorded}, not {images_dir}; name this one with --name NAME, or pass --overwrite to replace it")
