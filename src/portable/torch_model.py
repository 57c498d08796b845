"""A torch model's probabilities: test-time augmentation with ttach (averaged over flipped and rotated copies), and
the uint8 maps infer.py stores and a package averages (torch_predictor: a model as predictor.py runs it)."""
import numpy as np
import torch
import ttach as tta

from .maps import uint8_maps
from .models import normalize
from .sliding import maybe_windowed

TTA_MODES = {"none": None, "flip": lambda: tta.Compose([tta.HorizontalFlip()]), "d4": tta.aliases.d4_transform}


class Probabilities(torch.nn.Module):
    """Logits -> probabilities (sigmoid or softmax), so that TTA averages probabilities, not logits."""

    def __init__(self, model: torch.nn.Module, task: str):
        super().__init__()
        self.model, self.task = model, task

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        logits = self.model(normalize(images)).float()
        return logits.softmax(dim=1) if self.task == "multiclass" else logits.sigmoid()  # multilabel: one per class


def with_tta(model: torch.nn.Module, task: str, mode: str) -> torch.nn.Module:
    """uint8 images -> mean probabilities over the TTA transforms (ttach undoes each on the mask)."""
    if mode not in TTA_MODES:
        raise ValueError(f"unknown --tta '{mode}'; choose none, flip or d4")
    probabilities = Probabilities(model, task)
    if mode == "none":
        return probabilities
    return tta.SegmentationTTAWrapper(probabilities, TTA_MODES[mode](), merge_mode="mean")


def to_uint8(probs: torch.Tensor) -> np.ndarray:
    """N x C x S x S probabilities -> uint8 maps (probability * 255) on the host, as the files store them."""
    return uint8_maps(probs.float().cpu().numpy())


@torch.no_grad()
def predict_uint8(model: torch.nn.Module, images: torch.Tensor, device: torch.device) -> np.ndarray:
    """A batch of uint8 images through a model that returns probabilities (tta.with_tta), in bfloat16 on a GPU, as
    uint8 maps: rounding 1."""
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")
    with autocast:
        probs = model(images.to(device, non_blocking=True)).float()
    return to_uint8(probs)


def torch_predictor(net: torch.nn.Module, task: str, tta: str, window: dict | None, sw_batch_size: int,
                    device: torch.device):
    """A trained model (at its level) as predictor.Model's predict: uint8 N x C x S x S arrays -> uint8 maps, through
    its TTA, by sliding window where it was trained on patches (window: sliding.window_of's record, or None)."""
    predictor = maybe_windowed(with_tta(net, task, tta), window, sw_batch_size)
    return lambda batch: predict_uint8(predictor, torch.from_numpy(batch), device)
