"""Trained runs -> probability maps at the model's resolution, with ttach test-time augmentation.

preds/<dataset>/<arch>-<encoder>/ (found through src/runs.py, the one reader of preds/)
  config.json, training.json             the run's config, dataset meta and fold file; its training time and speed
  tta-<mode>/                            predictions of the selected weights (last.pt under --select-on final, else best.pt)
    prediction.json                      provenance: the run folder, fold file (sha256, k), and per part and fold
                                         the sha256 of the weights its files were made with
    oof/<id>.npz                         one per training image, by the model of its fold
    oof_scores.csv                       their Dice, IoU and HD95 at original size
    test/fold<k>/<id>.npz                every fold's model on every image of the dataset's test split
    sets/<name>/fold<k>/<stem>.npz       every fold's model on a folder of images (infer.py --images DIR [--name])
  last/                                  the same for last.pt (the final epoch; infer.py --checkpoint last)
Each .npz holds `prob`: uint8 C x S x S, probability * 255 at the run's training size S (C = 1 for binary, one
channel per class otherwise), `size`: the image's original (height, width), and the model that made it: `fold`,
`weights` (sha256 of its checkpoint file), `split` (sha256 of its fold file), `tta` and, for a run trained on
patches, `window` ("<patch>:<overlap>" of its sliding window). Maps go to that size once,
where a step needs it (scoring, final masks), through resize_prob(). Files of the older format (`prob` at full size,
no `size`) are refused with OldPredictionFormat; infer.py predicts again every file not made by the model it is
predicting with.
"""
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset
from tqdm import tqdm

from src.config import load_run_config
from src.data import make_loader
from src.folds import load_folds
from src.models import create_model
from src.portable.models import ModelError
from src.portable.files import atomic_path
from src.portable.images import IMAGE_SUFFIXES, read_as
from src.portable.maps import final_mask, mean_at, mean_maps, model_input, resize_prob  # noqa: F401 (imported from here)
from src.portable.models import ready
from src.portable.torch_model import TTA_MODES, Probabilities, predict_uint8, to_uint8, with_tta  # noqa: F401
from src.runs import file_sha256, is_finished

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
    raise FileNotFoundError(f"{weights} not found: the run was trained before runs saved their final epoch; "
                            f"retrain it or use --checkpoint best")


def load_trained_model(run_dir: Path, weights: Path, device: torch.device) -> tuple:
    """(model in eval mode, Config, dataset meta), rebuilt from run_dir/config.json and weights, with no network."""
    cfg, meta = load_run_config(run_dir)
    try:
        model = create_model(cfg.arch, cfg.encoder, meta["channels"], 1 if meta["task"] == "binary" else
                             len(meta["classes"]), "none", cfg.decoder_channels)
    except ModelError as error:
        raise ModelError(f"{Path(run_dir) / 'config.json'}: {error}") from error
    return ready(model, torch.load(weights, map_location="cpu", weights_only=True), device), cfg, meta


class SplitChanged(ValueError):
    """The fold file that a run was trained on is gone or holds another split now."""


def read_split(recorded: dict, made: str, index: pd.DataFrame) -> pd.DataFrame:
    """The folds of the file a run recorded ({"file", "sha256"} from train.py), refused if it changed since `made`
    or does not describe the dataset's index (FoldFileError, what a hand edit broke comes first)."""
    path = Path(recorded["file"])
    if not path.exists():
        raise SplitChanged(f"{path} not found, but {made} on it; restore the file or retrain the run")
    folds = load_folds(path.parent, path.stem, index)
    if file_sha256(path) != recorded["sha256"]:
        raise SplitChanged(f"{path} changed since {made} (re-prepared?); retrain the run or restore the file")
    return folds


class OldPredictionFormat(ValueError):
    """A prediction file written before maps were kept at the model's resolution."""


def save_pred(path: Path, prob: np.ndarray, size: tuple, **model_id) -> None:
    """prob: uint8 C x S x S; size: the image's original (H, W); model_id: the fold, weights, split and TTA that made
    it. Written as name.npz.tmp, then renamed: a kill leaves no half file, and no *.npz that is not a prediction."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:  # a file object: np.savez would append .npz to a name
        np.savez_compressed(f, prob=prob, size=np.asarray(size, dtype=np.int64), **model_id)


def load_pred(path: Path) -> tuple:
    """(uint8 C x S x S map, original (H, W)); divide the map by 255 for probabilities, or use resize_prob()."""
    with np.load(path) as data:
        if "size" not in data.files:
            raise OldPredictionFormat(f"{path}: prediction in the old full-size format; predict again with "
                                      f"`python infer.py --tta <mode> --overwrite` (and your --dataset, --runs)")
        return data["prob"], tuple(int(n) for n in data["size"])


def made_by(path: Path) -> dict:
    """The fold, weights, split, TTA and window of the model that wrote the file (those recorded when it was
    written); reads only these small entries, not the map."""
    with np.load(path) as data:
        return {key: data[key].item() for key in ("fold", "weights", "split", "tta", "window") if key in data.files}


def needs_prediction(path: Path, model_id: dict, overwrite: bool) -> bool:
    """Missing, made by another model (another fold, retrained weights, an older format) or --overwrite."""
    return overwrite or not path.exists() or made_by(path) != model_id


class FolderImages(Dataset):
    """Images from any folder, decoded and resized on the fly: (uint8 C x S x S, original (H, W), position).

    The same rules as prepare (src/portable/images.py): any colour mode, 16-bit or DICOM becomes the run's channel count."""

    def __init__(self, paths: list, size: int, channels: int):
        self.paths, self.size, self.channels = paths, size, channels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        original = read_as(self.paths[i], self.channels)
        return torch.from_numpy(model_input(original, self.size)), torch.tensor(original.shape[:2]), i


@torch.no_grad()
def write_predictions(model, dataset: Dataset, ids: dict, sizes: dict | None, out_dir: Path, model_id: dict,
                      batch_size: int, workers: int, device, desc: str) -> None:
    """Stream batches through the model and write one file per image at the model's size; memory stays flat.

    The dataset's last item is a key into ids (and sizes; without sizes its second item is the original size).
    Each file records model_id: the model's fold, weights, split and TTA.
    """
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers)
    writing = []
    with ThreadPoolExecutor(2) as writer:  # compressing and writing a batch overlaps the model's next one
        for batch in tqdm(loader, desc=desc, unit="batch"):
            images, keys = batch[0], batch[-1].tolist()
            originals = [sizes[k] for k in keys] if sizes is not None else batch[1].tolist()
            maps = predict_uint8(model, images, device)
            for done in writing:  # at most one batch waits to be written; a failed write raises here
                done.result()
            writing = [writer.submit(save_pred, out_dir / f"{ids[key]}.npz", prob, original, **model_id)
                       for key, prob, original in zip(keys, maps, originals)]
        for done in writing:
            done.result()


def read_weighted(paths: list, weights: list) -> tuple:
    """Prediction files of one image with their weights: ([(uint8 map, weight)], original (H, W))."""
    weighted, size = [], None
    for path, weight in zip(paths, weights):
        prob, size = load_pred(path)
        weighted.append((prob, weight))
    return weighted, size


def read_mean(paths: list, weights: list) -> tuple:
    """Weighted mean of prediction files of one image, kept at the models' resolution: ([(map, weight)], (H, W)),
    rounded by src/portable/maps.py's mean_maps() (mean_at() then resizes it)."""
    weighted, size = read_weighted(paths, weights)
    return mean_maps(weighted), size


def check_set_name(name: str) -> None:
    """A prediction set is one folder under sets/: its name cannot hold a path."""
    if not name or name in (".", "..") or Path(name).name != name:
        raise ValueError(f"'{name}' cannot name a prediction set: use a plain folder name such as new_xrays")


def image_set(args) -> tuple:
    """infer.py's (name, image paths) of the prediction set --images DIR, or (None, None) for the dataset's test
    split; a folder that cannot be one stops infer.py with one line."""
    if args.images is None:
        if args.name:
            sys.exit("infer: --name names the prediction set of --images DIR; pass --images too")
        return None, None
    if not args.images.is_dir():
        sys.exit(f"infer: --images {args.images}: no such folder")
    paths = sorted(p for p in args.images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        sys.exit(f"infer: --images {args.images} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    by_stem = {}
    for path in paths:
        by_stem.setdefault(path.stem, []).append(path.name)
    twins = next((names for names in by_stem.values() if len(names) > 1), None)
    if twins:  # caught before any prediction: one would silently replace the other's
        sys.exit(f"infer: --images {args.images} holds {' and '.join(twins)}, whose predictions would share one "
                 f"file name; rename one of them")
    name = args.name or args.images.resolve().name
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
