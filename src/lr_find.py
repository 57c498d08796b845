"""--lr auto: a learning-rate range test (Leslie Smith 2017, fastai's lr_find) on a run's own training images.

The rate rises exponentially from START to END over STEPS optimiser steps of the run's own model, loss (its
--ds-weights too), optimiser (both parameter groups, the encoder at its multiple), augmentation and effective batch
(each step accumulates processes x --grad-accum batches, as the run's steps average them), from the run's seed; the
loss is smoothed (a debiased moving average, as fastai's), the sweep stops once it diverges, and the run trains at a
tenth of the rate where the smoothed loss was lowest (fastai's "minimum / 10": the steepest part of the curve sits
about there, and the minimum is the more stable of the two to read off a noisy curve). Only the rows given are read, the run's training
images, never the fold it is scored on. The result is cached in data/<dataset>/lr/<key>.json, one per dataset, fold,
arch, encoder, size and batch (and a digest of everything else that shapes the curve or reads the rate off it: the
loss, the processes, the sweep and its rule's constants), so a resumed or repeated run reuses it.

torch-lr-finder would do the sweep, but it is neither among the requirements nor installed, and it would need
wrappers for this project's (image, mask, row) batches, on-device normalisation and per-group encoder rate: the loop
is 20 lines.
"""
import hashlib
import itertools
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from src.augment import training_augmentation
from src.data import CachedSegmentation, default_workers, make_loader
from src.portable.files import atomic_path, write_atomic
from src.portable.images import size_text
from src.losses import SegmentationLoss, class_weights
from src.cache import input_channels
from src.models import create_model, head_weights
from src.portable.models import normalize, outputs
from src.optim import build_optimizer
from src.plotting import pyplot

CURVE = "lr_find.png"  # in the run folder
START, END, STEPS = 1e-6, 1.0, 100  # fastai: 1e-7 to 10 over 100 steps; the demo and DSB curves are flat below 1e-4
SMOOTHING, DIVERGED = 0.9, 4.0  # an exponential moving average of about 10 steps; stop at 4x its minimum (fastai)
BELOW_MINIMUM = 10  # the rate chosen is the minimum's over this (fastai's minimum / 10)
RULE = "a tenth of the rate at the smoothed loss's minimum (fastai's minimum / 10), at least the sweep's start"
# What shapes the curve besides the key's named parts (dataset, fold, arch, encoder, size, batch) and the sweep itself.
CURVE_SETTINGS = ("encoder_weights", "decoder_channels", "ds_weights", "encoder_lr_mult", "weight_decay",
                  "encoder_weight_decay", "lookahead_k", "lookahead_alpha", "dice_weight", "ce_weight", "focal",
                  "class_weights", "aug", "grad_accum", "seed")


def cache_key(cfg, train_rows, steps: int, start: float, end: float, processes: int = 1) -> str:
    """<arch>-<encoder>-fold<k>-<size>px-b<batch>[x<batches a step>]-<digest of the other settings, the processes,
    the sweep, its rule's constants and the training rows>."""
    settings = {k: getattr(cfg, k) for k in CURVE_SETTINGS}
    if cfg.loss != "auto":  # in the digest only when chosen: the default loss keeps the keys cached before --loss
        settings["loss"] = cfg.loss
    if cfg.tiles:  # patches shape the curve too; a run without them keeps the key it always had
        settings |= {"patch": cfg.patch, "foreground_patches": cfg.foreground_patches}
    rule = {"smoothing": SMOOTHING, "diverged": DIVERGED, "below_minimum": BELOW_MINIMUM}
    blob = json.dumps([settings, processes, steps, start, end, rule, np.sort(np.asarray(train_rows)).tolist()],
                      sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:10]
    per_step = processes * cfg.grad_accum
    batch = f"b{cfg.batch_size}" + (f"x{per_step}" if per_step > 1 else "")
    return f"{cfg.arch}-{cfg.encoder}-fold{cfg.fold}-{size_text(cfg.size)}px-{batch}-{digest}".replace("/", "_")


def endless(loader, dataset):
    """Batches over as many passes as the sweep needs, each pass with the next epoch's augmentation."""
    for epoch in itertools.count():
        dataset.epoch = epoch
        yield from loader


def range_test(cfg, meta, train_rows, images, masks, device, steps: int, start: float, end: float,
               processes: int = 1) -> dict:
    """The sweep on a model of its own, with the global random state left as it was: the run trains the same either way.
    Each step averages the gradients of processes x --grad-accum batches, as the run's optimiser steps do."""
    device = torch.device(device)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        n_classes = len(meta["classes"])
        model = create_model(cfg.arch, cfg.encoder, input_channels(meta, cfg.context),
                             outputs(meta["task"], meta["classes"]), cfg.encoder_weights, cfg.decoder_channels)
        model = model.to(device, memory_format=torch.channels_last).train()
        weights = class_weights(cfg.class_weights, masks[train_rows], n_classes, meta["task"])
        loss_fn = SegmentationLoss(meta["task"], cfg.dice_weight, cfg.ce_weight, cfg.focal, weights,
                                   head_weights(cfg.ds_weights, cfg.arch), cfg.loss).to(device)
        per_step = processes * cfg.grad_accum
        optimizer = build_optimizer(model, replace(cfg, lr=start))
        ratios = [group["lr"] / start for group in optimizer.param_groups]  # the encoder's multiple stays
        dataset = CachedSegmentation(images, masks, train_rows,
                                     training_augmentation(cfg, meta), cfg.seed)
        batches = endless(make_loader(dataset, cfg.batch_size, True, default_workers(cfg.workers), cfg.seed), dataset)
        rates, losses, smoothed, average = [], [], [], 0.0
        for step, rate in enumerate(np.geomspace(start, end, steps)):
            for group, ratio in zip(optimizer.param_groups, ratios):
                group["lr"] = rate * ratio
            optimizer.zero_grad(set_to_none=True)
            value = 0.0
            for _ in range(per_step):  # one process accumulates what the run's processes and --grad-accum average
                image_batch, mask_batch, _ = next(batches)
                loss = loss_fn(model(normalize(image_batch.to(device))), mask_batch.to(device)) / per_step
                loss.backward()
                value += loss.item()
            optimizer.step()
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            rates.append(float(rate))
            losses.append(value)
            smoothed.append(average / (1 - SMOOTHING ** (step + 1)))
            if not math.isfinite(value) or smoothed[-1] > DIVERGED * min(smoothed):
                break
    lowest = int(np.nanargmin(smoothed))
    return {"lr": max(start, rates[lowest] / BELOW_MINIMUM), "rule": RULE, "min_loss_lr": rates[lowest],
            "sweep": {"start": start, "end": end, "steps": steps, "steps_run": len(rates)},
            "batch": {"per_process": cfg.batch_size, "processes": processes, "grad_accum": cfg.grad_accum,
                      "a_step": cfg.batch_size * per_step},
            "train_images": len(train_rows), "rates": rates, "losses": losses, "smoothed": smoothed}


def plot_curve(record: dict, path: Path) -> None:
    plt = pyplot()
    fig, axis = plt.subplots(figsize=(6, 4))
    axis.semilogx(record["rates"], record["losses"], color="0.75", label="loss")
    axis.semilogx(record["rates"], record["smoothed"], color="C0", label="smoothed")
    axis.axvline(record["min_loss_lr"], color="0.4", linestyle="--", label=f"minimum {record['min_loss_lr']:.2g}")
    axis.axvline(record["lr"], color="C3", label=f"chosen {record['lr']:.2g}")
    low, high = np.nanmin(record["losses"]), record["smoothed"][0]  # the diverging tail would flatten the rest
    axis.set_ylim(low - 0.05 * (high - low), high + 0.5 * (high - low) + 1e-6)
    axis.set_xlabel("learning rate (decoder; encoder at its multiple)")
    axis.set_ylabel("training loss")
    axis.set_title(f"range test {record['key']}\non {record['train_images']} training images", fontsize=9)
    axis.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")  # named: matplotlib would read the format from the .tmp suffix
    plt.close(fig)


def find_lr(cfg, meta, train_rows, images, masks, device, curve: Path | None = None,
            steps: int | None = None, start: float = START, end: float = END, processes: int = 1) -> tuple:
    """(the rate, its record) from the cache or a new sweep of `steps` (STEPS unless given) at the effective batch of
    `processes` processes; the curve drawn to `curve` (the run folder's PNG)."""
    steps = steps or STEPS
    key = cache_key(cfg, train_rows, steps, start, end, processes)
    path = Path(cfg.dataset_dir) / "lr" / f"{key}.json"
    if path.exists():
        record = json.loads(path.read_text()) | {"cached": True}
    else:
        began = time.time()
        record = range_test(cfg, meta, train_rows, images, masks, device, steps, start, end, processes)
        record |= {"key": key, "seconds": round(time.time() - began, 1)}
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(record) + "\n")
        record["cached"] = False
    record["file"] = str(path)
    if curve is not None:
        plot_curve(record, curve)
    return record["lr"], record


def run_rate(cfg, meta, train_rows, images, masks, accelerator) -> tuple:
    """(cfg at --lr auto's rate, the record config.json keeps) for a training run: the main process sweeps (or reads
    the cache) first and draws the curve into the run folder; the other processes then read its cache."""
    with accelerator.main_process_first():
        lr, record = find_lr(cfg, meta, train_rows, images, masks, accelerator.device,
                             cfg.run_dir / CURVE if accelerator.is_main_process else None,
                             processes=accelerator.num_processes)
    accelerator.print(f"--lr auto: {lr:.3g}, {record['rule']} ({'read from' if record['cached'] else 'cached in'} "
                      f"{record['file']}; curve {cfg.run_dir / CURVE})")
    return replace(cfg, lr=lr), {k: v for k, v in record.items() if k not in ("rates", "losses", "smoothed")}
