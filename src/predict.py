"""Trained runs -> probability maps at each image's original size, with ttach test-time augmentation.

preds/<dataset>/<arch>-<encoder>/tta-<mode>/oof/<id>.npz          one per training image (its fold's model)
preds/<dataset>/<arch>-<encoder>/tta-<mode>/test/fold<k>/<id>.npz  every fold's model on every test image
Each .npz holds `prob`: uint8 C x H x W, probability * 255 (C = 1 for binary, one channel per class otherwise).
"""
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import ttach as tta

from src.config import load_run_config
from src.models import ModelError, create_model, normalize

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


def load_trained_model(run_dir: Path, device: torch.device) -> tuple:
    """(model in eval mode, Config, dataset meta), rebuilt from config.json and best.pt with no network access."""
    cfg, meta = load_run_config(run_dir)
    weights = Path(run_dir) / "best.pt"
    if not weights.exists():
        raise FileNotFoundError(f"{weights} not found: the run has no finished epoch; train it (or --resume) first")
    try:
        model = create_model(cfg.arch, cfg.encoder, meta["channels"], 1 if meta["task"] == "binary" else
                             len(meta["classes"]), "none", cfg.decoder_channels)
    except ModelError as error:
        raise ModelError(f"{Path(run_dir) / 'config.json'}: {error}") from error
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.to(device).eval().to(memory_format=torch.channels_last), cfg, meta


def to_original_size(probs: torch.Tensor, sizes: list) -> list:
    """Each C x S x S probability map resized (bilinear, on the device) to its H x W and quantised to uint8."""
    return [(F.interpolate(p[None], size=(int(h), int(w)), mode="bilinear", align_corners=False)[0] * 255)
            .round().to(torch.uint8).cpu().numpy() for p, (h, w) in zip(probs, sizes)]


def save_pred(path: Path, prob: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.stem + ".tmp.npz")  # never a half-written file that a re-run would skip
    np.savez_compressed(tmp, prob=prob)
    tmp.rename(path)


def load_pred(path: Path) -> np.ndarray:
    """uint8 C x H x W; divide by 255 for probabilities."""
    with np.load(path) as data:
        return data["prob"]


def pred_dir(preds_dir: Path, dataset: str, run_name: str, tta_mode: str) -> Path:
    return Path(preds_dir) / dataset / run_name / f"tta-{tta_mode}"
