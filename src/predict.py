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
`weights` (sha256 of its checkpoint file), `split` (sha256 of its fold file) and `tta`. Maps go to that size once,
where a step needs it (scoring, final masks), through resize_prob(). Files of the older format (`prob` at full size,
no `size`) are refused with OldPredictionFormat; infer.py predicts again every file not made by the model it is
predicting with.
"""
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
import torch
import ttach as tta
from torch.utils.data import Dataset
from tqdm import tqdm

from src.config import load_run_config
from src.data import channels_first, make_loader
from src.files import atomic_path
from src.folds import load_folds
from src.images import read_image, resize, to_channels
from src.models import ModelError, create_model, normalize
from src.runs import file_sha256, is_finished

TTA_MODES = {"none": None, "flip": lambda: tta.Compose([tta.HorizontalFlip()]), "d4": tta.aliases.d4_transform}


class Probabilities(torch.nn.Module):
    """Logits -> probabilities (sigmoid or softmax), so that TTA averages probabilities, not logits."""

    def __init__(self, model: torch.nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(normalize(images)).float()
        return logits.sigmoid() if self.task == "binary" else logits.softmax(dim=1)


def with_tta(model: torch.nn.Module, task: str, mode: str) -> torch.nn.Module:
    """uint8 images -> mean probabilities over the TTA transforms (ttach undoes each on the mask)."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown --tta '{mode}'; choose none, flip or d4")
    probabilities = Probabilities(model, task)
    if mode == "none":
        return probabilities
    return tta.SegmentationTTAWrapper(probabilities, TTA_MODES[mode](), merge_mode="mean")


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
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.to(device).eval().to(memory_format=torch.channels_last), cfg, meta


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


def to_uint8(probs: torch.Tensor) -> np.ndarray:
    """N x C x S x S probabilities -> uint8 maps (probability * 255) on the host, as the files store them."""
    return (probs * 255).round().to(torch.uint8).cpu().numpy()


def resize_prob(prob: np.ndarray, size: tuple) -> np.ndarray:
    """uint8 C x S x S map -> float32 C x H x W probabilities at size (H, W), bilinear.

    cv2's INTER_LINEAR samples at pixel centres like torch's bilinear with align_corners=False (equal to 1e-5), is
    ~10x faster than torch on the host (0.3 vs 2.8 ms, 128 -> 2000 px) and releases the GIL, so threads scale.
    """
    height, width = (int(n) for n in size)
    channels_last = np.ascontiguousarray(prob.transpose(1, 2, 0), dtype=np.float32) / 255
    resized = cv2.resize(channels_last, (width, height), interpolation=cv2.INTER_LINEAR)
    return resized.reshape(height, width, -1).transpose(2, 0, 1)  # cv2 drops a single channel's axis


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
    """The fold, weights, split and TTA of the model that wrote the file (those recorded when it was written); reads
    only these small entries, not the map."""
    with np.load(path) as data:
        return {key: data[key].item() for key in ("fold", "weights", "split", "tta") if key in data.files}


def needs_prediction(path: Path, model_id: dict, overwrite: bool) -> bool:
    """Missing, made by another model (another fold, retrained weights, an older format) or --overwrite."""
    return overwrite or not path.exists() or made_by(path) != model_id


class FolderImages(Dataset):
    """Images from any folder, decoded and resized on the fly: (uint8 C x S x S, original (H, W), position).

    The same rules as prepare (src/images.py): any colour mode, 16-bit or DICOM becomes the run's channel count."""

    def __init__(self, paths: list, size: int, channels: int):
        self.paths, self.size, self.channels = paths, size, channels

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        original = to_channels(read_image(self.paths[i]), self.channels, str(self.paths[i]))
        return channels_first(resize(original, self.size, is_mask=False)), torch.tensor(original.shape[:2]), i


@torch.no_grad()
def write_predictions(model, dataset: Dataset, ids: dict, sizes: dict | None, out_dir: Path, model_id: dict,
                      batch_size: int, workers: int, device, desc: str) -> None:
    """Stream batches through the model and write one file per image at the model's size; memory stays flat.

    The dataset's last item is a key into ids (and sizes; without sizes its second item is the original size).
    Each file records model_id: the model's fold, weights, split and TTA.
    """
    loader = make_loader(dataset, batch_size, shuffle=False, workers=workers)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    writing = []
    with ThreadPoolExecutor(2) as writer:  # compressing and writing a batch overlaps the model's next one
        for batch in tqdm(loader, desc=desc, unit="batch"):
            images, keys = batch[0], batch[-1].tolist()
            originals = [sizes[k] for k in keys] if sizes is not None else batch[1].tolist()
            with autocast:
                probs = model(images.to(device, non_blocking=True)).float()
            maps = to_uint8(probs)
            for done in writing:  # at most one batch waits to be written; a failed write raises here
                done.result()
            writing = [writer.submit(save_pred, out_dir / f"{ids[key]}.npz", prob, original, **model_id)
                       for key, prob, original in zip(keys, maps, originals)]
        for done in writing:
            done.result()


def read_mean(paths: list, weights: list) -> tuple:
    """Weighted mean of prediction files of one image, kept at the models' resolution: ([(map, weight)], (H, W)).

    One uint8 mean map per model size, with the summed weight of its files: runs trained at different sizes are
    combined by mean_at() after resizing, which equals resizing every file first (bilinear resizing is linear).
    """
    sums, size = {}, None
    for path, weight in zip(paths, weights):
        prob, size = load_pred(path)
        total, total_weight = sums.get(prob.shape, (0.0, 0.0))
        sums[prob.shape] = (total + weight * prob.astype(np.float32), total_weight + weight)
    return [((total / w).round().astype(np.uint8), w) for total, w in sums.values()], size


def mean_at(maps: list, size: tuple) -> np.ndarray:
    """read_mean()'s maps -> float32 C x H x W mean probabilities at size (H, W)."""
    total = sum(w for _, w in maps)
    return sum(w / total * resize_prob(prob, size) for prob, w in maps)


def check_set_name(name: str) -> None:
    """A prediction set is one folder under sets/: its name cannot hold a path."""
    if not name or name in (".", "..") or Path(name).name != name:
        raise ValueError(f"'{name}' cannot name a prediction set: use a plain folder name such as new_xrays")
