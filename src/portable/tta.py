"""Test-time augmentation with ttach: a model's probabilities averaged over flipped (and rotated) copies."""
import torch
import ttach as tta

from .models import normalize

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
