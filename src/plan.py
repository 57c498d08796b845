"""A training recipe planned from the prepared dataset, written to data/<dataset>/plan.json.

  python -m src.plan cxr [--data-dir data] [--folds-dir folds] [--steps 1000]

As nnU-Net plans from its dataset fingerprint, this reads the labelled images once (their number and groups, image
sizes, channels, foreground fraction, object sizes and pixel share per class) and derives every value by a stated
rule, printed and stored beside the value. The plan is a dataset-level rule: it reads labels, never a fold's scores,
and gives every fold and every run of the dataset the same values, but for the class weights: whether a class is rare
is read per fold from its training folds' masks, and the weights (--class-weights auto) from the run's own training
masks, so that no fold's masks weight the loss it is scored by. prepare writes it as its last step, and
python -m src.split --overwrite plans again. train.py takes them as its defaults (and study.py, whose stale check
compares a finished run with the planned values); a flag overrides any of them, and the run's config.json says where
each value came from (apply_plan).
"""
import argparse
import json
import math
import os
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields, replace
from pathlib import Path

import cv2
import numpy as np

from src.canonical import load_index, load_meta
from src.portable.files import write_atomic
from src.config import Config, flag_value
from src.folds import group_labels, load_folds
from src.portable.images import as_size, read_image, sides, size_text
from src.portable.labels import class_pixels, label_mask

STEPS = 1000  # optimiser steps a run of 2D images should make, whatever the dataset's size
# Volumes: several thousand slices of 200 cases, where 1000 steps are 3 epochs and the epochs' floor of 10 gives 3580;
# 20 epochs (7180 steps) gained more than Unet++ or 2.5D on the hippocampus, on each of two folds (docs/results.md)
VOLUME_STEPS = 7200
MIN_OBJECT_PX = 48  # a one-pixel error all along an object's edge costs it about 2 / diameter of Dice: 4% at 48 px
SIZE_STEP, MIN_SIZE = 32, 64  # smp encoders halve the input five times
EMA_DECAY = 0.9999  # the plan's --ema: timm's warm-up keeps it below 1 - (1 + step)^-2/3 (0.990 at 1000 steps)
ASPECT_KEPT = 1.5  # a median image further from square than this gets a rectangular working size of its aspect
CACHE_BYTES = 8 * 2 ** 30  # the working size's bound: the uint8 cache of every image and mask at it, on disk and mapped
PIXELS_PER_STEP, MAX_BATCH = 256 * 256 * 16, 16  # 16 images of 256 px: the batch the planned lr was measured at
MIN_FITTED_BATCH = 4  # the smallest batch a shortened --epochs gets to keep the step budget: batch norm needs a few
EPOCHS_RANGE = (10, 500)
LR = 1e-3
HEAVY_AUG_BELOW = 100  # labelled images
RARE_SHARE = 0.1  # of the most frequent foreground class's pixels
MASKS_READ = 1000  # at most, evenly spaced over index.csv: the object sizes of a large set from a sample
FOLDS_ASSUMED = 5
TODAYS_SCHEDULE = ("lr", "scheduler", "warmup_epochs", "epochs")  # what --select-on fold keeps as it was


def plan_path(dataset_dir: Path) -> Path:
    return Path(dataset_dir) / "plan.json"


def mask_census(path: Path, n_classes: int, task: str) -> tuple:
    """(each class's objects' equivalent diameters over the geometric mean of the image's sides, its pixel share):
    a multilabel mask's classes by their own pixels, where they overlap too."""
    mask = read_image(path)
    side = math.sqrt(mask.shape[0] * mask.shape[1])
    counts = class_pixels(mask, task, n_classes)[:n_classes]
    diameters = []
    for cls in range(1, n_classes):
        _, _, stats, _ = cv2.connectedComponentsWithStats(label_mask(mask, cls, task).astype(np.uint8), connectivity=8)
        diameters.append(2 * np.sqrt(stats[1:, cv2.CC_STAT_AREA] / np.pi) / side)
    return diameters, counts / mask.size


def fingerprint(dataset_dir: Path, folds_dir: Path) -> dict:
    """What the plan's rules read: images, groups, sizes, channels, foreground, objects and pixel share per class."""
    dataset_dir = Path(dataset_dir)
    meta, index = load_meta(dataset_dir), load_index(dataset_dir)
    labelled = index[index["split"] == "train"]
    if labelled.empty:
        raise ValueError(f"{dataset_dir}/index.csv lists no labelled image: there is nothing to plan from")
    classes = meta["classes"]
    rows = labelled.iloc[np.unique(np.linspace(0, len(labelled) - 1, min(len(labelled), MASKS_READ)).astype(int))]
    with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:  # OpenCV decodes outside the GIL
        census = list(pool.map(lambda i: mask_census(dataset_dir / "masks" / f"{i}.png", len(classes), meta["task"]),
                               rows["id"]))
    diameters = [np.concatenate([c[0][k] for c in census]) for k in range(len(classes) - 1)]
    image_shares = np.array([c[1] for c in census])
    shares = image_shares.mean(axis=0)  # each image counts once, as at training size
    try:
        split = load_folds(folds_dir, meta["name"])
        folds = split["fold"].nunique()
        fold_of = rows["id"].map(dict(zip(split["id"], split["fold"]))).to_numpy()
        # Per fold, the masks of its training folds only: the class-weight rule never reads a fold it scores.
        fold_shares = [[round(float(s), 5) for s in image_shares[fold_of != f].mean(axis=0)] for f in range(folds)]
        # Fold 0's training images: those of every fold of a k-fold split, and the 80% of a hold-out split
        # (src.split --holdout), whose fold 1 is the rest and is never scored.
        train_images = len(labelled) - int((split["fold"] == 0).sum())
    except FileNotFoundError:
        folds, fold_shares = None, None
        train_images = round(len(labelled) * (1 - 1 / FOLDS_ASSUMED))
    groups = group_labels(labelled["group"], labelled["id"])  # as the split counts them: a blank group is its own
    pooled = np.concatenate(diameters)
    return {
        "task": meta["task"], "classes": classes, "channels": meta["channels"],
        "labelled_images": len(labelled), "test_images": int((index["split"] == "test").sum()),
        "groups": int(groups.nunique()), "folds": folds,
        "train_images": train_images,
        "median_height": int(labelled["height"].median()), "median_width": int(labelled["width"].median()),
        "median_short_side": int(np.minimum(labelled["height"], labelled["width"]).median()),
        "foreground": round(float(1 - shares[0]), 4),
        "class_shares": [round(float(s), 5) for s in shares], "fold_class_shares": fold_shares,
        "objects": [int(len(d)) for d in diameters],
        "median_object": [round(float(np.median(d)), 4) if len(d) else None for d in diameters],
        "median_object_all": round(float(np.median(pooled)), 4) if len(pooled) else None,
        "masks_read": len(rows),
        **({"slice_size": meta["volumes"]["slice_size"], "slice_rule": meta["volumes"]["size_rule"]}
           if "volumes" in meta else {}),
    }


def plan_size(fp: dict) -> tuple:
    """The working size the images are cached at: the object rule, capped by the median image and the cache's bytes
    (the model's input is the patch, planned next: a step's compute no longer caps the size). A median image further
    from square than ASPECT_KEPT:1 (Severstal's 256 x 1600 strips) gets a rectangle of its aspect: the rule gives the
    shorter side, the longer follows it, capped by the median image's longer side and the cache."""
    images = fp["labelled_images"] + fp["test_images"]
    height, width = fp["median_height"], fp["median_width"]
    ratio = max(height, width) / min(height, width)
    kept = ratio > ASPECT_KEPT
    pixels = CACHE_BYTES / (images * (fp["channels"] + 1))  # the most a working size may hold for the cache's bytes
    short, rule = short_side(fp, int(math.sqrt(pixels / (ratio if kept else 1))) // SIZE_STEP * SIZE_STEP, images)
    if not kept:
        return short, rule
    caps = {"the median image's aspect": round(short * ratio / SIZE_STEP) * SIZE_STEP,
            f"the median image's longer side ({max(height, width)} px)": max(height, width) // SIZE_STEP * SIZE_STEP,
            f"the cache of {images} images and masks, at most {CACHE_BYTES / 2 ** 30:g} GiB":
                int(pixels / short) // SIZE_STEP * SIZE_STEP}
    limit, long = min(caps.items(), key=lambda item: item[1])
    long = max(short, long)
    size = (short, long) if width > height else (long, short)
    return size, (f"{rule}; the median image, {height} x {width} px, is {ratio:.2f}:1, beyond {ASPECT_KEPT:g}:1, so "
                  f"the size keeps its aspect: {size_text(size)}, the longer side the shorter x {ratio:.2f} to a "
                  f"multiple of {SIZE_STEP}" + ("" if limit.endswith("aspect") else f", capped by {limit}"))


def short_side(fp: dict, by_cache: int, images: int) -> tuple:
    """(the working size's side, or a rectangle's shorter side; its rule): the smallest multiple of 32 at which the
    median object spans MIN_OBJECT_PX, capped by the median image's shorter side and by_cache."""
    by_image = max(SIZE_STEP, fp["median_short_side"] // SIZE_STEP * SIZE_STEP)
    cap = min(by_image, by_cache)
    limit = (f"the median image's shorter side ({fp['median_short_side']} px)" if by_image <= by_cache else
             f"the cache of {images} images and masks, at most {CACHE_BYTES / 2 ** 30:g} GiB")
    relative = fp["median_object_all"]
    if not relative:
        return min(cap, 256), f"no objects in the masks: 256 px, at most {cap} px ({limit})"
    needed = max(MIN_SIZE, math.ceil(MIN_OBJECT_PX / relative / SIZE_STEP) * SIZE_STEP)
    rule = (f"the smallest multiple of {SIZE_STEP}, at least {MIN_SIZE}, at which the median object "
            f"({relative:.3f} of the image side) spans {MIN_OBJECT_PX} px")
    if needed <= cap:
        return needed, f"{rule}: {relative * needed:.0f} px"
    return cap, f"{rule} would be {needed}; capped by {limit}, where it spans {relative * cap:.0f} px"


def by_pixels(size) -> int:
    """The batch a step's pixels allow at this working size (N or (H, W)): 16 images up to 256 x 256 px, halved for
    each doubling of pixels."""
    height, width = sides(size)
    return 2 ** int(math.log2(PIXELS_PER_STEP / (height * width)))


def plan_patch(fp: dict, size, size_given: bool, per_step: int = 1) -> tuple:
    """The model's input: the largest multiple of 32 at which the batch the training images call for fits a step's
    pixels, at most the working size's shorter side; 0 (the whole image) where the working size fits, or where a
    flag chose the size."""
    if size_given:
        return 0, "--size set by a flag or by prepare: the whole image, resized to it (give --patch to tile)"
    wanted = max(2, min(MAX_BATCH, fp["train_images"] // (4 * per_step)))
    patch = SIZE_STEP
    while by_pixels(patch + SIZE_STEP) >= wanted:
        patch += SIZE_STEP
    rule = (f"the largest multiple of {SIZE_STEP} at which a batch of {wanted} ({MAX_BATCH} at most, at least 4 "
            f"optimiser steps an epoch of a fold's {fp['train_images']} training images, at least 2) fits "
            f"{MAX_BATCH} images of 256 px of pixels a step: {patch} px")
    if max(sides(size)) <= patch:
        return 0, f"{rule}; the working size {size_text(size)} px fits: the whole image, no patch"
    if patch > min(sides(size)):
        patch, rule = min(sides(size)), f"{rule}, lowered to the working size's shorter side"
    return patch, (f"{rule}, below the working size {size_text(size)} px: random patches in training, a sliding window "
                   f"in prediction (docs/train.md)")


def steps_per_epoch(fp: dict, batch: int, per_step: int) -> int:
    """Optimiser steps an epoch of a fold's training images makes, each step taking `per_step` batches (processes x
    --grad-accum)."""
    return math.ceil(fp["train_images"] / (batch * per_step))


def plan_batch(fp: dict, size: int, steps: int = STEPS, epochs: int | None = None, per_step: int = 1) -> tuple:
    """The batch per process; given --epochs (`epochs`), smaller where that keeps the step budget: a shortened run
    still makes the steps the plan budgets, rather than fewer ones of a larger batch."""
    largest = max(2, min(MAX_BATCH, by_pixels(size), fp["train_images"] // (4 * per_step)))
    rule = (f"{MAX_BATCH} images up to 256 px, halved for each doubling of their pixels; at least 4 optimiser steps an "
            f"epoch of a fold's {fp['train_images']} training images; at least 2; given --epochs, the largest batch up "
            f"to that at which they still make the {steps} optimiser steps (--steps), at least {MIN_FITTED_BATCH}")
    if epochs is None:
        return largest, rule
    keeping = fp["train_images"] * epochs // (steps * per_step)  # the largest batch whose epochs make `steps` steps
    batch = max(min(largest, MIN_FITTED_BATCH), min(largest, keeping))
    return batch, f"{rule} (--epochs {epochs}: {steps_per_epoch(fp, batch, per_step) * epochs} steps)"


def plan_epochs(fp: dict, batch: int, steps: int, processes: int = 1, grad_accum: int = 1) -> tuple:
    per_epoch = steps_per_epoch(fp, batch, processes * grad_accum)
    epochs = min(EPOCHS_RANGE[1], max(EPOCHS_RANGE[0], round(steps / per_epoch)))
    folds = f"{fp['folds']} folds" if fp["folds"] else f"{FOLDS_ASSUMED} folds assumed (no fold file)"
    why = (f", the budget for slices of volumes: 20 epochs of the hippocampus's 358 steps beat 10 on two folds, "
           f"+0.0066 Dice per case in 3D"
           if steps == VOLUME_STEPS and "slice_size" in fp else "")
    return epochs, (f"{steps} optimiser steps (--steps{why}) at {per_epoch} an epoch ({fp['train_images']} training images "
                    f"a fold of {fp['labelled_images']}, {folds}; batch {batch} x {processes} process(es) x "
                    f"--grad-accum {grad_accum} a step; train.py plans again for its own), "
                    f"within {EPOCHS_RANGE[0]}..{EPOCHS_RANGE[1]}")


def rare_classes(fp: dict, shares: list) -> list:
    shares = np.asarray(shares)
    return [fp["classes"][k] for k in range(1, len(shares)) if shares[k] < RARE_SHARE * shares[1:].max()]


def plan_class_weights(fp: dict, fold: int | None = None) -> tuple:
    """Whether to weight, from the pixel shares of the training folds' masks of `fold` (of each fold when None);
    the weights themselves train.py computes from the run's own training masks (--class-weights auto)."""
    if fp["task"] == "binary":
        return "none", "binary masks: Dice + BCE, no class weights"
    if fp["task"] == "multilabel":
        return "none", "labels that overlap: a sigmoid per class, Dice + BCE (smp's multilabel mode), no class weights"
    by_fold = fp.get("fold_class_shares")
    if not by_fold:  # no split yet: no fold is scored, so every labelled mask may be read
        by_fold, fold = [fp["class_shares"]], 0
    folds = range(len(by_fold)) if fold is None else [fold]
    rare = {f: rare_classes(fp, by_fold[f]) for f in folds}
    read = "the training folds' masks" + (f" of fold {fold}" if fold is not None else " of each fold")
    if not any(rare.values()):
        return "none", (f"no class under {RARE_SHARE:g} of the most frequent one's pixels in {read}: cross-entropy "
                        "unweighted")
    names = [c for c in fp["classes"] if any(c in r for r in rare.values())]
    unweighted = [str(f) for f in folds if not rare[f]]
    return "auto", (f"{', '.join(names)} under {RARE_SHARE:g} of the most frequent class's pixels in {read}, never "
                    "the fold it scores: --class-weights auto, every class weighted by the inverse square root of its "
                    "pixel share over the run's own training masks, mean 1"
                    + (f" (fold {', '.join(unweighted)}: none rare, unweighted)" if unweighted else ""))


def plan_ema(steps: int) -> tuple:
    """An exponential moving average of the weights: EMA_DECAY under timm's warm-up, which a run's steps decide."""
    reached = min(EMA_DECAY, 1 - (1 + steps) ** (-2 / 3))
    return EMA_DECAY, (f"timm's ModelEmaV3 of the weights, validated, scored and exported in their place: the decay "
                       f"min({EMA_DECAY}, 1 - (1 + step)^-2/3) reaches {reached:.4f} by the {steps} optimiser steps, an "
                       f"average over about the last {1 / (1 - reached):.0f}; +0.0029 Dice [+0.0014, +0.0044] on the "
                       f"nuclei's reference split, +0.0002 [-0.0001, +0.0006] on the X-rays (docs/results.md)")


def plan_from(fp: dict, steps: int = STEPS, given: dict | None = None, processes: int = 1, grad_accum: int = 1,
              fold: int | None = None) -> tuple:
    """(values named as Config's fields, the rule of each in one line) from a fingerprint, in order: a value in
    `given` (set by a flag) is kept, and the values planned after it follow from it (the batch from the size and
    given epochs, the epochs from the batch, the warm-up from the epochs). `steps` counts optimiser steps, each of
    `processes` x `grad_accum` batches. `fold`: the run's, whose masks the class-weight rule does not read."""
    given = {**(given or {}), **({"size": as_size(given["size"])} if given and "size" in given else {})}
    values, rules = {}, {}
    steps_in_order = {
        "size": lambda: plan_size(fp) if "slice_size" not in fp else (
            as_size(fp["slice_size"]), f"the volumes' slices at their own voxels: {fp['slice_rule']}"),
        "patch": lambda: plan_patch(fp, values["size"], "size" in given, processes * grad_accum),
        "batch_size": lambda: plan_batch(fp, values["patch"] or values["size"], steps, given.get("epochs"),
                                         processes * grad_accum),
        "epochs": lambda: plan_epochs(fp, values["batch_size"], steps, processes, grad_accum),
        "lr": lambda: (LR, f"RAdam in Lookahead at batch <= {MAX_BATCH}: 1e-3 beat the former 3e-4 on four real sets "
                           "(docs/results.md, fold 0 under each recipe); --lr auto runs a range test instead"),
        "scheduler": lambda: ("cosine", "a fixed schedule that reads no validation score: --select-on final "
                                        "(docs/results.md, the epoch rule)"),
        "warmup_epochs": lambda: (max(1, round(0.05 * values["epochs"])),
                                  "linear warm-up over 5% of the epochs, at least 1, then cosine to zero"),
        "aug": lambda: ("heavy" if fp["labelled_images"] < HEAVY_AUG_BELOW else "medium",
                        f"heavy under {HEAVY_AUG_BELOW} labelled images, else medium ({fp['labelled_images']} here)"),
        "class_weights": lambda: plan_class_weights(fp, fold),
        "ema": lambda: plan_ema(steps),
        **({"context": lambda: (3, "a neighbouring slice on each side as channels (2.5D): on the hippocampus it beat "
                                   "single slices for Unet (+0.0031 Dice per case over two folds) and Unet++ (+0.0050, "
                                   "fold 0) at no cost but the first convolution's; --context 1 is nnU-Net's 2D "
                                   "configuration (docs/results.md)")} if "slice_size" in fp else {}),
    }
    for name, rule in steps_in_order.items():
        values[name], rules[name] = (given[name], "set by a flag") if name in given else rule()
    return values, rules


def budget(fp: dict) -> int:
    """The optimiser steps the plan budgets when --steps is not given: VOLUME_STEPS for slices of volumes, else STEPS."""
    return VOLUME_STEPS if "slice_size" in fp else STEPS


def write_plan(dataset_dir: Path, folds_dir: Path, steps: int | None = None, given: dict | None = None) -> dict:
    """given: values the user chose when preparing ({"size": 64} from prepare --size), kept as given and followed by
    the values planned after them; None keeps those of the plan it replaces (a new split plans again). steps: the
    budget, budget()'s by default."""
    fp = fingerprint(dataset_dir, folds_dir)
    steps = steps or budget(fp)
    if given is None:
        given = (load_plan(dataset_dir) or {}).get("given", {})
    values, rules = plan_from(fp, steps, given)
    rules |= {name: f"given to prepare: --{name.replace('_', '-')} {flag_value(name, value)}"
              for name, value in given.items()}
    plan = {"values": values, "rules": rules, "steps": steps, "given": given, "fingerprint": fp}
    write_atomic(plan_path(dataset_dir), json.dumps(plan, indent=2) + "\n")
    return plan


def describe(plan: dict, dataset_dir: Path) -> list:
    """The lines prepare and python -m src.plan print: the fingerprint, then each value and its rule."""
    fp = plan["fingerprint"]
    objects = ", ".join(f"{name} {n} (median {m:.3f} of the side)" for name, n, m in
                        zip(fp["classes"][1:], fp["objects"], fp["median_object"]) if m is not None)
    lines = [f"fingerprint: {fp['labelled_images']} labelled + {fp['test_images']} test images, {fp['groups']} groups, "
             f"{fp['channels']} channel(s), median {fp['median_height']} x {fp['median_width']} px, foreground "
             f"{100 * fp['foreground']:.1f}%; objects in {fp['masks_read']} masks: {objects or 'none'}"]
    lines += [f"{name}: {flag_value(name, value)} ({plan['rules'][name]})" for name, value in plan["values"].items()]
    return lines + [f"planned {plan_path(dataset_dir)}: train.py takes these as defaults; any flag overrides them"]


def load_plan(dataset_dir: Path) -> dict | None:
    path = plan_path(dataset_dir)
    return json.loads(path.read_text()) if path.exists() else None


def given_flags(parser: argparse.ArgumentParser, argv=None) -> set:
    """The destinations the command line set: argparse fills in a default only where the namespace lacks a value."""
    unset = object()
    namespace = argparse.Namespace(**{a.dest: unset for a in parser._actions if a.dest != "help"})
    return {name for name, value in vars(parser.parse_args(argv, namespace)).items() if value is not unset}


def apply_plan(cfg: Config, given: set) -> tuple:
    """(cfg with the plan's values where no flag set them, {field: 'user' | 'plan' | 'default'} for config.json).

    Precedence: a flag, then the plan (a value given to prepare, as prepare --size, or a planned one), then the
    rule. The rules run again with those values in place, so a planned value follows one it depends on (--size 512
    gets the batch of 512 px). --select-on fold trains today's schedule: lr, scheduler, warm-up and epochs stay."""
    saved = load_plan(cfg.dataset_dir)
    kept = given | set(TODAYS_SCHEDULE if getattr(cfg, "select_on", "final") == "fold" else ())
    planned = {}
    if saved:  # only the user's --epochs fits the batch: --select-on fold's kept 40 are nobody's choice
        flags = {k: getattr(cfg, k) for k in given if hasattr(cfg, k)}
        processes = int(os.environ.get("WORLD_SIZE", "1"))  # as accelerate launch (or torchrun) starts this one
        values, _ = plan_from(saved["fingerprint"], saved["steps"], {**saved.get("given", {}), **flags}, processes,
                              cfg.grad_accum, cfg.fold)
        planned = {k: v for k, v in values.items() if k not in kept}
    sources = {f.name: "user" if f.name in given else "plan" if f.name in planned else "default" for f in fields(Config)}
    cfg = replace(cfg, **planned)
    if cfg.patch == cfg.size:  # a patch the size of the image is the whole image: recorded as no patch, never stale
        cfg = replace(cfg, patch=0)
    return cfg, sources


def planned_line(cfg: Config, sources: dict) -> str:
    """train.py's line naming the values it took from the plan."""
    planned = [f"{name} {flag_value(name, getattr(cfg, name))}" for name, source in sources.items() if source == "plan"]
    if planned:
        return f"planned ({plan_path(cfg.dataset_dir)}; a flag overrides any): {', '.join(planned)}"
    if load_plan(cfg.dataset_dir):
        return f"every planned value set by a flag ({plan_path(cfg.dataset_dir)})"
    return f"no {plan_path(cfg.dataset_dir)}: built-in defaults (python -m src.plan {cfg.dataset} plans them)"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset", help="a dataset prepared under --data-dir")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--folds-dir", type=Path, default=Path("folds"))
    parser.add_argument("--steps", type=int, help=f"optimiser steps a run should make (sets the epochs; default "
                                                  f"{STEPS}, {VOLUME_STEPS} for slices of volumes)")
    args = parser.parse_args(argv)
    dataset_dir = args.data_dir / args.dataset
    try:
        plan = write_plan(dataset_dir, args.folds_dir, args.steps)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"plan: {error}")
    print("\n".join(describe(plan, dataset_dir)))
    return plan


if __name__ == "__main__":
    main()
