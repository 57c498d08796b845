"""One fold's training pieces, placed by Accelerate: the data and model (set_up), one epoch (train_one_epoch) and
the fold's scores (validate). train.py reads as the story of a run; these are its chapters."""
import sys
import time
from dataclasses import dataclass

import torch
from timm.utils import ModelEmaV3
from tqdm import tqdm

from src.augment import training_augmentation
from src.cache import input_channels, open_cache
from src.data import CachedSegmentation, default_workers, foreground_draws, make_loader
from src.losses import SegmentationLoss, class_weights
from src.metrics import confusion, predicted_classes, summarize
from src.models import create_model, head_weights
from src.portable.models import ModelError, normalize, outputs
from src.optim import build_optimizer, build_scheduler, sync_lookahead
from src.portable.torch_model import Probabilities
from src.sliding import windowed


def mixed_precision(requested: str) -> str:
    if requested != "auto":
        return requested
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


@torch.no_grad()
def validate(model, loader, accelerator, meta, tissue_of_row=None, cfg=None) -> tuple:
    """Scores over the whole fold, each image counted once whatever the number of processes. cfg: the run's, whose
    patched runs (cfg.tiles) are scored by sliding window, on the probabilities infer.py predicts (no TTA)."""
    model.eval()
    n_classes = len(meta["classes"])
    counts, rows, example = [], [], None
    window = windowed(Probabilities(model, meta["task"]), cfg) if cfg is not None and cfg.tiles else None
    for images, masks, batch_rows in loader:
        if window is None:  # the whole image: the model's logits, as before patches existed
            pred = predicted_classes(model(normalize(images)), meta["task"])
        else:
            pred = predicted_classes(window(images), meta["task"], threshold=0.5)
        stats = accelerator.gather_for_metrics((*confusion(pred, masks, n_classes, meta["task"]), batch_rows))
        counts.append([s.cpu() for s in stats[:3]])
        rows.append(stats[3].cpu())
        if example is None:
            example = (images[:4].cpu().numpy(), pred[:4].cpu().numpy(), masks[:4].cpu().numpy())
    rows = torch.cat(rows)
    order = rows.argsort()  # a fixed order makes the means identical for any number of processes
    tp, fp, fn = (torch.cat([c[k] for c in counts])[order] for k in range(3))
    tissues = None if tissue_of_row is None else tissue_of_row[rows[order].numpy()]
    return summarize(tp, fp, fn, meta["classes"], tissues), example


@dataclass
class Parts:
    """What one fold's training is made of, placed by Accelerate."""
    cache_rows: int
    train_set: CachedSegmentation
    train_loader: object
    valid_loader: object
    inner_loader: object  # --select-on inner's validation split of the training folds, else None
    model: torch.nn.Module
    bare_model: torch.nn.Module  # the same weights, unwrapped: plain key names for best.pt
    loss_fn: torch.nn.Module
    optimizer: object
    scheduler: object
    ema: object = None  # timm's ModelEmaV3 of bare_model under --ema, else None

    @property
    def scored(self) -> torch.nn.Module:
        """The weights validated and saved: their moving average under --ema, else the model's own."""
        return self.model if self.ema is None else self.ema.module

    @property
    def kept(self) -> torch.nn.Module:
        """scored, unwrapped: plain key names for best.pt and last.pt."""
        return self.bare_model if self.ema is None else self.ema.module


def open_arrays(cfg, accelerator) -> tuple:
    """The dataset's uint8 images and masks at the run's size, from the memory-mapped cache (the main process builds
    a missing one first)."""
    with accelerator.main_process_first():
        try:
            return open_cache(cfg.dataset_dir, cfg.size, cfg.context)
        except ValueError as error:  # a prepared file damaged since: the cache at a new size reads every one
            sys.exit(f"train: {error}; prepare the dataset again (python -m src.prepare ... --overwrite)")


def set_up(cfg, meta, accelerator, train_rows, valid_rows, inner_rows, pretrained: bool = True) -> Parts:
    """The run's loaders, model, loss, optimiser and schedule, prepared by Accelerate; pretrained: False builds the
    encoder without its --encoder-weights (--validate-only loads the trained weights over it)."""
    # Data: uint8 arrays from the memory-mapped cache; augmentation on the CPU workers, normalisation on the device.
    images, masks = open_arrays(cfg, accelerator)
    workers = default_workers(cfg.workers, accelerator.num_processes)
    augmentation = training_augmentation(cfg, meta)  # a patch of each image first, for a run trained on patches
    foreground = None
    if "volumes" in meta and not cfg.tiles:  # slices drawn as nnU-Net draws 2D patches; patches crop by the same share
        foreground, rule = foreground_draws(masks, train_rows, cfg.foreground_patches)
        accelerator.print(rule)
    train_set = CachedSegmentation(images, masks, train_rows, augmentation, seed=cfg.seed,
                                   draws=cfg.patches_per_image if cfg.tiles else 1, foreground=foreground)
    train_loader = make_loader(train_set, cfg.batch_size, shuffle=True, workers=workers)
    valid_loader, inner_loader = (make_loader(CachedSegmentation(images, masks, rows), cfg.batch_size, False, workers)
                                  if len(rows) else None for rows in (valid_rows, inner_rows))

    # Model, loss, optimiser, schedule.
    n_classes = len(meta["classes"])
    try:
        with accelerator.main_process_first():  # one download into the cache, which the other processes then read
            model = create_model(cfg.arch, cfg.encoder, input_channels(meta, cfg.context),
                                 outputs(meta["task"], meta["classes"]),
                                 cfg.encoder_weights if pretrained else "none", cfg.decoder_channels)
        ds_weights = head_weights(cfg.ds_weights, cfg.arch)
    except ModelError as error:
        sys.exit(f"train: {error}")
    model = model.to(memory_format=torch.channels_last)
    weights = class_weights(cfg.class_weights, masks[train_rows], n_classes, meta["task"])
    loss_fn = SegmentationLoss(meta["task"], cfg.dice_weight, cfg.ce_weight, cfg.focal, weights, ds_weights, cfg.loss)
    optimizer = build_optimizer(model, cfg)
    scheduler = build_scheduler(optimizer, cfg)  # stepped per epoch, so not wrapped by accelerate.prepare
    if cfg.compile:
        model = torch.compile(model)
    model, optimizer, train_loader, valid_loader, inner_loader = accelerator.prepare(
        model, optimizer, train_loader, valid_loader, inner_loader)
    loss_fn = loss_fn.to(accelerator.device)  # not prepared: a module without parameters cannot be wrapped in DDP
    accelerator.register_for_checkpointing(scheduler)
    bare = accelerator.unwrap_model(model, keep_torch_compile=False)
    ema = ModelEmaV3(bare, decay=cfg.ema, use_warmup=True) if cfg.ema else None  # on the model's device
    if ema is not None:
        accelerator.register_for_checkpointing(ema)  # --resume restores the average too
    return Parts(len(images), train_set, train_loader, valid_loader, inner_loader, model, bare, loss_fn, optimizer,
                 scheduler, ema)


def ema_line(cfg, steps_per_epoch: int) -> str:
    """train.py's announcement of --ema's rule, with the decay it reaches at the run's last step."""
    last = cfg.epochs * steps_per_epoch
    decay = min(cfg.ema, 1 - (1 + last) ** (-2 / 3))
    return (f"EMA: the weights' moving average (timm's ModelEmaV3) is validated, saved and scored in their place; "
            f"decay min({cfg.ema:g}, 1 - (1 + step)^-2/3) (timm's warm-up): {decay:.4f} at step {last}, the run's "
            f"last, an average over about its last {1 / (1 - decay):.0f} steps")


def train_one_epoch(parts: Parts, accelerator, epoch: int, cfg, n_train: int, steps: int) -> dict:
    """One pass over the fold's training images, each drawn once over all processes; steps: the optimiser steps
    before it (--ema's warm-up counts them), returned with the epoch's added."""
    model, optimizer = parts.model, parts.optimizer
    model.train()
    parts.train_set.epoch = epoch
    parts.train_loader.set_epoch(epoch)
    loss_sum = torch.zeros((), device=accelerator.device)
    head_sum = 0  # each head's loss too, for a deep-supervised model (unetpp_ds trains every head)
    draws = torch.zeros(parts.cache_rows, device=accelerator.device)  # per cache row: checks the process sharding
    progress = tqdm(parts.train_loader, desc=f"epoch {epoch + 1}/{cfg.epochs}", unit="batch", leave=False,
                    disable=not accelerator.is_local_main_process)
    start = None
    for images_batch, masks_batch, rows_batch in progress:
        start = start or time.time()  # from the first batch: the loader's start-up is bookkeeping, not training
        with accelerator.accumulate(model):
            logits = model(normalize(images_batch))
            loss = parts.loss_fn(logits, masks_batch)
            accelerator.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if accelerator.sync_gradients:  # an optimiser step was taken
            steps += 1
            if parts.ema is not None:
                parts.ema.update(parts.bare_model, step=steps)
        loss_sum += loss.detach() * len(images_batch)  # no .item() here: no host sync per step
        head_sum = head_sum + parts.loss_fn.head_losses * len(images_batch)
        draws.index_add_(0, rows_batch, torch.ones_like(rows_batch, dtype=draws.dtype))
    draws = accelerator.reduce(draws, "sum")
    train_loss = (accelerator.reduce(loss_sum, "sum") / draws.sum()).item()
    head_losses = (accelerator.reduce(head_sum, "sum") / draws.sum()).tolist()
    seconds = time.time() - start
    sync_lookahead(optimizer)  # validate and save the slow weights, not mid-cycle fast ones (as timm)
    images_seen, train_images = int(draws.sum()), int((draws > 0).sum())
    if train_images != n_train:
        accelerator.print(f"warning: epoch {epoch + 1} drew {train_images} of {n_train} training images")
    heads = {f"train_loss_L{i}": loss for i, loss in enumerate(head_losses, 1)} if len(head_losses) > 1 else {}
    # Accelerate pads the last batches with repeats so that every process steps together.
    return {"train_loss": train_loss, **heads, "train_images": train_images,
            "train_repeats": images_seen - train_images,
            "train_images_per_s": images_seen / seconds, "train_seconds": seconds, "steps": steps}
