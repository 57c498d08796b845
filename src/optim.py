"""RAdam inside Lookahead (timm's), the encoder at a lower learning rate, and an epoch-wise schedule."""
import math

import torch
from timm.optim import Lookahead

from src.config import Config


def build_optimizer(model: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    encoder = list(model.encoder.parameters())
    encoder_ids = {id(p) for p in encoder}
    rest = [p for p in model.parameters() if id(p) not in encoder_ids]
    groups = [{"params": encoder, "lr": cfg.lr * cfg.encoder_lr_mult, "weight_decay": cfg.encoder_weight_decay},
              {"params": rest, "lr": cfg.lr, "weight_decay": cfg.weight_decay}]
    # foreach: one fused update over all tensors; torch picks it by itself on CUDA only, and on the CPU the
    # per-tensor loop took 0.050 s a step against 0.030 s (a 5 M-parameter Unet), a third of a tiny step.
    return Lookahead(torch.optim.RAdam(groups, foreach=True), alpha=cfg.lookahead_alpha, k=cfg.lookahead_k)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: Config):
    """Stepped once per epoch: plateau on validation Dice, or linear warm-up then cosine to zero."""
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="max", factor=0.5,
                                                          patience=cfg.plateau_patience)

    def factor(epoch):
        if epoch < cfg.warmup_epochs:
            return (epoch + 1) / (cfg.warmup_epochs + 1)
        progress = (epoch - cfg.warmup_epochs) / max(1, cfg.epochs - cfg.warmup_epochs)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def sync_lookahead(optimizer: torch.optim.Optimizer) -> None:
    """Move every parameter to its slow weights, as timm does before validating, so that validation and the saved
    weights are Lookahead's, not a mid-cycle fast copy. timm's own sync_lookahead skips parameters whose gradient is
    None, which is all of them after zero_grad(set_to_none=True), so this walks the slow buffers instead."""
    lookahead = getattr(optimizer, "optimizer", optimizer)  # unwrap Accelerate's AcceleratedOptimizer
    base = lookahead._base_optimizer
    for group in base.param_groups:
        for param in group["params"]:
            slow = base.state[param].get("lookahead_slow_buff")
            if slow is not None:
                slow.add_(param - slow, alpha=group["lookahead_alpha"])
                param.copy_(slow)
