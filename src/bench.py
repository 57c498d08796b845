"""Throughput benchmark: is the GPU (or CPU), not the data pipeline, setting the pace?

  python -m src.bench --arch unet --encoder resnet34 --size 256 --batch-size 64        # on a GPU
  python -m src.bench --arch unet --encoder tu-resnet10t --size 64 --batch-size 8 --steps 5   # anyone, on CPU

Reports (1) the model ceiling: synthetic tensors, forward + backward + optimiser step; (2) the data pipeline alone:
batches from the resized cache with the chosen augmentation and workers; (3) train.py end to end (its own
train_images_per_s on a demo dataset); (4) inference with TTA none / flip / d4; (5) peak GPU and host memory;
(6) with --original-size N: infer.py and ensemble.py end to end on a demo dataset whose originals are N x N px;
(7) --packed-runs K: K short train.py runs packed on one GPU (or sharing the CPU), then one after another, and the
ratio of their wall times, which is what study.py --runs-per-gpu K gains; (8) with --patch P below --size: sliding-
window inference (--overlap, --sw-batch-size) against a plain forward of the whole --size image, in images/s. (3) also gives an epoch's fixed cost: the
seconds it spends saving (best.pt, metrics.json, the full state) and on the rest (loader start, logging).
(9) --package DIR --package-images DIR: an exported package (export.py) run as a user runs it, python -I predict.py
from another folder, and the images/s it reports (reading, every model with its TTA, averaging, post-processing,
RLE; not the interpreter's start); only (9) is measured then. (10) --volume-context K: a volume set's prediction as
infer.py runs it (slices from the cache with K neighbours as channels, maps stacked back into volumes) against a plain
forward over the same slices, in slices/s.

  python -m src.bench --newcomer    # the README's two commands on a fresh clone, against their limits (src/limits.py)

--newcomer measures none of the above: on a fresh clone of the current commit in a temp folder it times the README's
test command (limit 300 s) and ./demo.sh (limit 120 s), prints a PASS or FAIL line for each with its wall and CPU
seconds and the demo's training share, and exits 1 on a FAIL.
"""
import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.contrib.concurrent import thread_map
import torch

from src.augment import build_augmentation
from src.cache import cache_dir, open_cache
from src.canonical import load_index
from src.config import Config
from src.data import CachedSegmentation, default_workers, make_loader
from src.folds import load_folds
from src.portable.images import HOST_THREADS, read_image, sides, size_text, write_png
from src.losses import SegmentationLoss
from src.models import create_model
from src.portable.models import normalize
from src.optim import build_optimizer
from src.portable.torch_model import with_tta
from src.runs import prediction_sets


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(step, steps: int, device, repeats: int = 3) -> float:
    """Seconds per call of step(): two warm-up calls, then the fastest of `repeats` blocks of `steps` calls.

    The fastest block, like timeit, so that a noisy neighbour on a shared machine does not set the figure.
    """
    for _ in range(2):
        step()
    best = float("inf")
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(steps):
            step()
        synchronize(device)
        best = min(best, (time.perf_counter() - start) / steps)
    return best


def model_ceiling(cfg: Config, channels: int, device, steps: int) -> float:
    model = create_model(cfg.arch, cfg.encoder, channels, 1, "none", cfg.decoder_channels).to(device)
    model = model.to(memory_format=torch.channels_last).train()
    if cfg.compile:
        model = torch.compile(model)
    optimizer = build_optimizer(model, cfg)
    x = torch.randint(0, 256, (cfg.batch_size, channels, *sides(cfg.size)), dtype=torch.uint8, device=device)
    y = torch.randint(0, 2, (cfg.batch_size, *sides(cfg.size)), dtype=torch.uint8, device=device)
    loss_fn = SegmentationLoss("binary")  # the step train.py takes, less the data loading
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def step():
        with autocast:
            loss = loss_fn(model(normalize(x)), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return cfg.batch_size / timed(step, steps, device)


def data_pipeline(cfg: Config, dataset_dir: Path, workers: int, batches: int) -> float:
    images, masks = open_cache(dataset_dir, cfg.size)
    train = CachedSegmentation(images, masks, range(len(load_index(dataset_dir))), build_augmentation(cfg.aug))
    loader = make_loader(train, cfg.batch_size, shuffle=True, workers=workers)
    start, seen = time.perf_counter(), 0
    while seen < batches * cfg.batch_size:
        for batch in loader:
            seen += len(batch[0])
            if seen >= batches * cfg.batch_size:
                break
    return seen / (time.perf_counter() - start)


def forward_speed(cfg: Config, channels: int, device, steps: int, predictors: dict) -> dict:
    """{name: images/s} of each predictor (made from one --arch/--encoder model: {name: model -> predictor}) on a
    random uint8 batch at --size, in bfloat16 on a GPU, as infer.py runs it."""
    model = create_model(cfg.arch, cfg.encoder, channels, 1, "none", cfg.decoder_channels).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    x = torch.randint(0, 256, (cfg.batch_size, channels, *sides(cfg.size)), dtype=torch.uint8, device=device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")

    def speed(predictor) -> float:
        def step():
            with torch.no_grad(), autocast:
                predictor(x)
        return cfg.batch_size / timed(step, steps, device)
    return {name: speed(make(model)) for name, make in predictors.items()}


def inference(cfg: Config, channels: int, device, steps: int) -> dict:
    """(4) the model with each TTA mode, in images/s."""
    return forward_speed(cfg, channels, device, steps, {mode: lambda model, mode=mode: with_tta(model, "binary", mode)
                                                        for mode in ("none", "flip", "d4")})


def sliding_inference(cfg: Config, channels: int, device, steps: int) -> dict:
    """(8) a --patch run's prediction: the sliding window over --size images (no TTA), against a plain forward of the
    whole --size image by the same model, in images/s."""
    from src.sliding import windowed, windows_per_image
    speed = forward_speed(cfg, channels, device, steps, {
        "plain": lambda model: with_tta(model, "binary", "none"),
        "sliding": lambda model: windowed(with_tta(model, "binary", "none"), cfg)})
    return {"patch": cfg.patch, "overlap": cfg.overlap, "sw_batch_size": cfg.sw_batch_size,
            "windows_per_image": windows_per_image(cfg.size, cfg.patch, cfg.overlap),
            "plain_images_per_s": speed["plain"], "sliding_images_per_s": speed["sliding"],
            "sliding_fraction_of_plain": speed["sliding"] / speed["plain"]}


def volume_prediction(cfg: Config, device, context: int, cases: int = 8, depth: int = 40) -> dict:
    """(10) a volume set's prediction as infer.py runs it: the slices of `cases` volumes read from the cache (with
    `context` neighbours as channels), through the model with no TTA, their maps stacked back into volumes; against
    a plain forward over the same slices already in memory, in slices/s."""
    from src.portable.predictor import Model, predict
    from src.portable.torch_model import torch_predictor
    from src.predict import cache_batches
    from src.portable.volumes import ContextImages, neighbour_rows, stack
    height, width = sides(cfg.size)
    rng = np.random.default_rng(0)
    cache = rng.integers(0, 255, (cases * depth, height, width), dtype=np.uint8)
    index = pd.DataFrame({"id": [f"c{c}_{k:04d}" for c in range(cases) for k in range(depth)],
                          "case": [f"c{c}" for c in range(cases) for _ in range(depth)],
                          "slice": [k for _ in range(cases) for k in range(depth)], "height": height, "width": width})
    images = ContextImages(cache, neighbour_rows(index["case"], index["slice"], context)) if context > 1 else cache
    model = create_model(cfg.arch, cfg.encoder, context, 1, "none", cfg.decoder_channels).to(device).eval()
    model = model.to(memory_format=torch.channels_last)
    forward = torch_predictor(model, "binary", "none", None, cfg.sw_batch_size, device)
    inputs = np.ascontiguousarray(images[np.arange(len(index))].reshape(len(index), height, width, -1)
                                  .transpose(0, 3, 1, 2))
    forward(inputs[:cfg.batch_size])  # warm-up: the first call allocates
    start = time.perf_counter()
    for first in range(0, len(index), cfg.batch_size):
        forward(inputs[first:first + cfg.batch_size])
    synchronize(device)
    plain = time.perf_counter() - start
    start = time.perf_counter()
    maps = {key: m[0] for key, _, m in predict([Model("bench", cfg.size, 1.0, forward)], cache_batches(
        images, index, cfg.size, cfg.batch_size), "volume slices")}
    for c in range(cases):
        stack([maps[f"c{c}_{k:04d}"] for k in range(depth)], 2, (height, width, depth))
    whole = time.perf_counter() - start
    return {"context": context, "slices": len(index), "plain_slices_per_s": len(index) / plain,
            "volume_slices_per_s": len(index) / whole, "volume_fraction_of_plain": plain / whole}


def train_command(cfg: Config, workdir: Path, dataset_dir: Path, runs_dir: Path, epochs: int, fold: int = 0) -> list:
    return ["--dataset", dataset_dir.name, "--data-dir", str(dataset_dir.parent), "--folds-dir", str(workdir / "folds"),
            "--runs-dir", str(runs_dir), "--size", size_text(cfg.size), "--arch", cfg.arch, "--encoder", cfg.encoder,
            "--encoder-weights", "none", "--batch-size", str(cfg.batch_size), "--epochs", str(epochs), "--aug", cfg.aug,
            "--tracker", "none", "--workers", str(cfg.workers), "--fold", str(fold), "--save-minutes", "0",
            *(["--decoder-channels", cfg.decoder_channels] if cfg.decoder_channels else []),
            *(["--compile"] if cfg.compile else [])]


def end_to_end(cfg: Config, workdir: Path, dataset_dir: Path) -> dict:
    """train.py's own figures over 4 epochs, each saving its full state: speed, and an epoch's fixed cost."""
    import train
    train.main(train_command(cfg, workdir, dataset_dir, workdir / "runs", epochs=4))
    history = pd.read_csv(next((workdir / "runs").glob("*/*/fold0/history.csv"))).iloc[1:]  # warm (and compiled)
    return {"train_py_images_per_s": float(history["train_images_per_s"].max()),
            "epoch_train_seconds": float(history["train_seconds"].median()),
            "epoch_save_seconds": float(history["save_seconds"].median()),  # best.pt, metrics.json, full state
            "epoch_other_seconds": float(history["other_seconds"].median()),  # loader start, Lookahead sync, logs
            "epoch_fixed_seconds": float((history["save_seconds"] + history["other_seconds"]).median())}


def packed_vs_sequential(cfg: Config, workdir: Path, dataset_dir: Path, runs: int, epochs: int) -> dict:
    """What study.py gains by packing: `runs` short train.py runs side by side (all on the first GPU, or sharing the
    CPU's cores), then the same runs one after another, each through the study's local engine."""
    from src.engine import Job, run_local, slots
    gpus = "0" if torch.cuda.is_available() else "none"
    walls = {}
    for mode, places in (("packed", slots(gpus, runs, runs)), ("sequential", slots(gpus, 1, 1))):
        jobs = [Job(f"{mode}{k}", ["python", "train.py", *train_command(cfg, workdir, dataset_dir, workdir / mode / str(k),
                                                                       epochs, fold=k % 5)],
                    workdir / mode / f"{k}.log") for k in range(runs)]
        start = time.perf_counter()
        failed = [r for r in run_local(jobs, places, cwd=str(Path(__file__).resolve().parents[1])) if not r.ok]
        if failed:
            raise RuntimeError(f"bench: {failed[0].job.name} failed:\n" + "\n".join(failed[0].tail()))
        walls[mode] = time.perf_counter() - start
    images = sum(int((h["train_images"] + h["train_repeats"]).sum())
                 for h in map(pd.read_csv, (workdir / "packed").glob("*/*/*/fold*/history.csv")))
    return {"packed_runs": runs, "packed_epochs": epochs, "packed_wall_s": walls["packed"],
            "sequential_wall_s": walls["sequential"], "packed_over_sequential": walls["sequential"] / walls["packed"],
            "packed_train_images_per_s": images / walls["packed"]}


def large_originals(workdir: Path, side: int, count: int, size: int) -> Path:
    """A demo dataset (count labelled + count / 4 test images, 2 folds) whose originals are side x side px.

    The generated images and masks are enlarged (bilinear; masks thresholded at 0.5, so outlines stay smooth) and
    the index says so; the cache is rebuilt from the enlarged files, as prepare would build it.
    """
    from src import prepare
    prepare.main(["demo", "--count", str(count), "--test-count", str(count // 4), "--size", str(size), "--k", "2",
                  "--data-dir", str(workdir / "data"), "--folds-dir", str(workdir / "folds")])
    dataset_dir = workdir / "data" / "demo"
    index = load_index(dataset_dir)

    def enlarge(row):
        for folder in ("images", "masks") if row.split == "train" else ("images",):
            path = dataset_dir / folder / f"{row.id}.png"
            large = cv2.resize(read_image(path).astype(np.float32), (side, side), interpolation=cv2.INTER_LINEAR)
            write_png(path, (large >= 0.5 if folder == "masks" else large.round()).astype(np.uint8))

    thread_map(enlarge, list(index.itertuples()), max_workers=HOST_THREADS, desc=f"originals to {side} px",
               unit="img")
    index["height"], index["width"] = side, side
    index.to_csv(dataset_dir / "index.csv", index=False)
    shutil.rmtree(cache_dir(dataset_dir, size))
    open_cache(dataset_dir, size)
    return dataset_dir


def infer_and_ensemble(cfg: Config, runs_dir: Path, workdir: Path, side: int, count: int, device) -> dict:
    """infer.py (fold 0's model, no TTA) and ensemble.py end to end, in images/s, the fastest of two runs each.

    Predicting = infer.py --overwrite (predict and score) less infer.py with fresh predictions (scoring alone).
    """
    import ensemble
    import infer
    dataset_dir = large_originals(workdir, side, count, cfg.size)
    paths = ["--dataset", "demo", "--data-dir", str(workdir / "data"), "--folds-dir", str(workdir / "folds"),
             "--preds-dir", str(workdir / "preds"), "--tracker", "none"]
    infer_args = [*paths, "--runs-dir", str(runs_dir), "--folds", "0", "--tta", "none",
                  "--batch-size", str(cfg.batch_size)]
    folds, index = load_folds(workdir / "folds", "demo"), load_index(dataset_dir)
    oof, test = int((folds["fold"] == 0).sum()), int((index["split"] == "test").sum())
    predict_and_score = timed(lambda: infer.main([*infer_args, "--overwrite"]), 1, device, repeats=2)

    def score_only():
        for modes in prediction_sets(workdir / "preds", "demo").values():
            (modes["none"].folder / "oof_scores.csv").unlink(missing_ok=True)
        infer.main(infer_args)

    score = timed(score_only, 1, device, repeats=2)
    ensemble_s = timed(lambda: ensemble.main([*paths, "--out-dir", str(workdir / "ensemble")]), 1, device, repeats=2)
    return {"original_px": side, "predict_images_per_s": (oof + test) / (predict_and_score - score),
            "score_oof_images_per_s": oof / score, "ensemble_py_images_per_s": (oof + test) / ensemble_s,
            "oof_images": oof, "test_images": test}


def package_speed(package: Path, images: Path, device: str | None = None, repeats: int = 2) -> dict:
    """(9) An exported package on a folder of images, in images/s, the fastest of `repeats` runs (each a fresh
    process)."""
    from src import packaging
    speeds = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as work:
            speeds.append(packaging.run_package(Path(package), Path(images), Path(work), device)[1])
    return {"package": str(package), "package_images": sum(1 for _ in Path(images).iterdir()),
            "package_images_per_s": max(speeds)}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for name in ("arch", "encoder", "size", "batch_size", "aug", "workers", "decoder_channels", "patch", "overlap",
                 "sw_batch_size"):
        default = getattr(Config(), name)
        parser.add_argument("--" + name.replace("_", "-"), type=type(default), default=default)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--images", type=int, default=512, help="demo images generated for (2) and (3)")
    parser.add_argument("--original-size", type=int, default=2000, help="(6): side of the originals; 0 skips (6)")
    parser.add_argument("--original-images", type=int, default=128, help="(6): labelled images (+ a quarter as many test)")
    parser.add_argument("--packed-runs", type=int, default=2,
                        help="(7): runs trained side by side, then one after another; 0 skips (7)")
    parser.add_argument("--packed-epochs", type=int, default=3, help="(7): epochs of each of those runs")
    parser.add_argument("--package", type=Path, help="(9) alone: an exported package's images/s (export.py)")
    parser.add_argument("--package-images", type=Path, help="(9): the folder of images it predicts")
    parser.add_argument("--volume-context", type=int, default=0,
                        help="(10): a volume set's prediction (slices read with this --context, maps stacked into "
                             "volumes) against a plain forward over the same slices; 0 skips (10)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--newcomer", action="store_true",
                        help="instead: time `python -m pytest -q` (limit 300 s) and ./demo.sh (limit 120 s) on a fresh "
                             "clone of the current commit; exit 1 on a FAIL")
    args = parser.parse_args(argv)
    if args.package:
        if not args.package_images:
            parser.error("--package needs --package-images DIR, the images it predicts")
        return report(package_speed(args.package, args.package_images), args.json)
    if args.newcomer:
        from src import limits
        sys.exit(0 if limits.newcomer() else 1)
    cfg = Config(arch=args.arch, encoder=args.encoder, size=args.size, batch_size=args.batch_size, aug=args.aug,
                 workers=default_workers(args.workers), decoder_channels=args.decoder_channels, compile=args.compile,
                 patch=args.patch, overlap=args.overlap, sw_batch_size=args.sw_batch_size)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    from src import prepare
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        prepare.main(["demo", "--count", str(args.images), "--test-count", "0", "--size", str(args.size), "--k", "5",
                      "--data-dir", str(workdir / "data"), "--folds-dir", str(workdir / "folds")])
        dataset_dir = workdir / "data" / "demo"
        results = {"device": torch.cuda.get_device_name() if device.type == "cuda" else f"CPU x{torch.get_num_threads()}",
                   "arch": cfg.arch, "encoder": cfg.encoder, "size": cfg.size, "batch_size": cfg.batch_size,
                   "workers": cfg.workers, "compile": cfg.compile}
        results["ceiling_images_per_s"] = model_ceiling(cfg, 1, device, args.steps)
        results["data_images_per_s"] = data_pipeline(cfg, dataset_dir, cfg.workers, args.steps)
        results.update(end_to_end(cfg, workdir, dataset_dir))
        results["end_to_end_fraction_of_ceiling"] = results["train_py_images_per_s"] / results["ceiling_images_per_s"]
        results.update({f"infer_{k}_images_per_s": v for k, v in inference(cfg, 1, device, args.steps).items()})
        results["d4_fraction_of_ceiling_over_8"] = results["infer_d4_images_per_s"] / (results["infer_none_images_per_s"] / 8)
        if cfg.tiles:
            results.update({f"window_{k}": v for k, v in sliding_inference(cfg, 1, device, args.steps).items()})
        if args.volume_context:
            results.update({f"volume_{k}": v for k, v in volume_prediction(cfg, device, args.volume_context).items()})
        if args.packed_runs:
            results.update(packed_vs_sequential(cfg, workdir, dataset_dir, args.packed_runs, args.packed_epochs))
        if args.original_size:
            results.update(infer_and_ensemble(cfg, workdir / "runs", workdir / "large", args.original_size,
                                              args.original_images, device))
            results["predict_fraction_of_forward"] = results["predict_images_per_s"] / results["infer_none_images_per_s"]
    results["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else 0.0
    results["peak_host_memory_gib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    report(results, args.json)


def report(results: dict, json_path: Path | None) -> None:
    print("\n| measure | value |\n|---|---|")
    for key, value in results.items():
        print(f"| {key} | {value:.3f} |" if isinstance(value, float) else f"| {key} | {value} |")
    if json_path:
        json_path.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
