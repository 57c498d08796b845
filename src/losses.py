"""Dice + BCE (binary; multilabel: a sigmoid per class, smp's multilabel mode) or Dice + cross-entropy/focal
(multiclass), or the Lovász hinge/softmax per image, from smp's losses; for a deep-supervised model, the weighted mean
over its heads."""
import numpy as np
import torch
from segmentation_models_pytorch import losses

from src.metrics import unpack_labels
from src.portable.labels import class_pixels

TASK_LOSSES = {"binary": ("dice_bce", "lovasz"), "multiclass": ("dice_ce", "lovasz"),
               "multilabel": ("dice_bce", "lovasz")}


def loss_name(loss: str, task: str) -> str:
    """--loss resolved for the task (auto: dice_bce or dice_ce); a loss of the other task is a ValueError."""
    name = {"binary": "dice_bce", "multiclass": "dice_ce", "multilabel": "dice_bce"}[task] if loss == "auto" else loss
    if name not in TASK_LOSSES[task]:
        raise ValueError(f"--loss {loss} is for the other task: {task} masks take {' or '.join(TASK_LOSSES[task])}")
    return name


def class_weights(spec: str, masks: np.ndarray, n_classes: int, task: str = "multiclass") -> torch.Tensor | None:
    """none, auto (inverse square root of the training pixels' class frequency, mean 1), or 'w0,w1,...'. Multiclass:
    one per class, background first (cross-entropy's); multilabel: one per label channel, no background (each
    channel's BCE), the frequency of its bit among the pixels. Binary masks take none (None)."""
    if spec == "none" or task == "binary":
        return None
    channels = n_classes - 1 if task == "multilabel" else n_classes
    if spec == "auto":
        masks = np.asarray(masks)
        counts = class_pixels(masks, task, n_classes).astype(np.float64)
        counts = counts[1:] + 1 if task == "multilabel" else counts + 1  # a label's own pixels, overlaps included
        weights = 1 / np.sqrt(counts / (masks.size if task == "multilabel" else counts.sum()))
        return torch.tensor(weights / weights.mean(), dtype=torch.float32)
    weights = [float(w) for w in spec.split(",")]
    if len(weights) != channels:
        raise ValueError(f"--class-weights has {len(weights)} values for {channels} "
                         + ("labels (a BCE channel each)" if task == "multilabel" else "classes (background included)"))
    return torch.tensor(weights, dtype=torch.float32)


class SegmentationLoss(torch.nn.Module):
    """Logits, or a list of them (one per head, as unetpp_ds trains): their losses' mean, weighted by head_weights
    if given. head_losses keeps the last call's loss per head, for the record. loss lovasz is smp's LovaszLoss per
    image (the hinge for binary masks, as the UNet++ reference 4uiiurz1/pytorch-nested-unet trains; smp's default
    pools the batch), alone: dice_weight, ce_weight, focal and weights are the Dice losses' own."""

    def __init__(self, task: str, dice_weight: float = 1.0, ce_weight: float = 0.8, focal: bool = False,
                 weights: torch.Tensor | None = None, head_weights: list | None = None, loss: str = "auto"):
        super().__init__()
        self.task, self.dice_weight, self.ce_weight = task, dice_weight, ce_weight
        self.head_weights, self.head_losses = head_weights, None
        self.loss = loss_name(loss, task)
        if self.loss == "lovasz":
            self.lovasz = losses.LovaszLoss(mode=task, per_image=True)
            return
        self.dice = losses.DiceLoss(mode=task, from_logits=True)
        if task == "multilabel":  # weights: one per channel, broadcast over the pixels
            self.ce = losses.SoftBCEWithLogitsLoss(weight=None if weights is None else weights[None, :, None, None])
        elif task == "binary":
            self.ce = losses.SoftBCEWithLogitsLoss()
        elif focal:
            self.ce = losses.FocalLoss(mode="multiclass")
        else:
            self.ce = torch.nn.CrossEntropyLoss(weight=weights)

    def forward(self, logits: torch.Tensor | list, target: torch.Tensor) -> torch.Tensor:
        heads = torch.stack([self.single(head, target) for head in (logits if isinstance(logits, list) else [logits])])
        self.head_losses = heads.detach()
        weights = torch.tensor(self.head_weights or [1.0] * len(heads), device=heads.device)
        return (heads * weights).sum() / weights.sum()

    def single(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        logits = logits.float()
        if self.task == "binary":
            target = target[:, None].float()
        elif self.task == "multilabel":  # bits -> one channel per class (src/portable/labels.py)
            target = unpack_labels(target, logits.shape[1]).float()
        if self.loss == "lovasz":
            return self.lovasz(logits, target)
        return self.dice_weight * self.dice(logits, target) + self.ce_weight * self.ce(logits, target)
