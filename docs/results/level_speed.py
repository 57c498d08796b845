"""Parameters, modules run and inference images/s of each trained run of a dataset's fold, and of every level of its
Unet++ with deep supervision, measured alone on this machine (infer.py records images/s too, in inference.json,
but while it shares the cores with whatever else runs).

  python docs/results/level_speed.py dsb96 0            # runs/dsb96/*/fold0, batches of 16 cached images, no TTA
  python docs/results/level_speed.py --untrained mobilenet_v2 64,32,16,16,8 96    # Unet, Unet++, Unet++ DS levels

Each model predicts the fold's first 128 cached images in batches of 16 (no TTA), once to warm up; then the models take
turns, ROUNDS times over, so that a slow spell of a shared machine hits them all alike; the figure is each model's best
round (images / seconds), with torch's default threads (every core). --untrained ENCODER DECODER SIZE measures the
same on untrained models (3 channels, 1 class) and 128 random SIZE x SIZE images: sizes, modules run and speed do not
depend on the weights, so no training is needed to measure them.
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from src.cache import open_cache  # noqa: E402
from infer import level_models  # noqa: E402
from src.config import Config  # noqa: E402
from src.portable.deep_supervision import UnetPlusPlusDS, level_sizes  # noqa: E402
from src.models import create_model  # noqa: E402
from src.portable.models import normalize  # noqa: E402
from src.predict import checkpoint_file, load_trained_model  # noqa: E402
from src.runs import LEVELS  # noqa: E402

BATCH, ROUNDS, IMAGES = 16, 5, 128


def _seconds(model, batches) -> float:
    started = time.perf_counter()
    for x in batches:
        model(x)
    return time.perf_counter() - started


def _nets(model, cfg: Config, size: int, task: str) -> dict:
    """{name: (model, modules run or '-')}: the run's model, or each level of a unetpp_ds, built as infer.py --level
    builds them for the task."""
    if not isinstance(model, UnetPlusPlusDS):
        return {cfg.run_name: (model, "-")}
    sizes = {row["level"]: row for row in level_sizes(model, task, size)}
    return {f"{cfg.run_name} {level}": (net, sizes[level]["modules_run"])
            for level, net in level_models(model, cfg, list(LEVELS), set(), task)}


def trained(dataset: str, fold: str = "0", runs_dir: str = "runs") -> dict:
    """{name: (model, batches, modules run)} of the fold's trained runs, on its first cached images."""
    models = {}
    for run_dir in sorted(Path(runs_dir, dataset).glob(f"*/fold{fold}")):
        model, cfg, meta = load_trained_model(run_dir, checkpoint_file(run_dir, "selected"), torch.device("cpu"))
        images, _ = open_cache(Path("data") / dataset, cfg.size)
        stack = torch.from_numpy(np.array(images[:IMAGES]))  # uint8, as the loader hands it over
        stack = stack.permute(0, 3, 1, 2) if stack.ndim == 4 else stack[:, None]
        batches = [normalize(stack[i:i + BATCH]) for i in range(0, len(stack), BATCH)]
        models.update({name: (net, batches, modules) for name, (net, modules) in _nets(model, cfg, cfg.size, meta["task"]).items()})
    return models


def untrained(encoder: str, decoder_channels: str, size: str) -> dict:
    """{name: (model, batches, modules run)} of untrained Unet, Unet++ and Unet++ DS on random images."""
    side = int(size)
    torch.manual_seed(0)
    stack = torch.randint(0, 256, (IMAGES, 3, side, side), dtype=torch.uint8)
    batches = [normalize(stack[i:i + BATCH]) for i in range(0, IMAGES, BATCH)]
    models = {}
    for arch in ("unet", "unetpp", "unetpp_ds"):
        cfg = Config(arch=arch, encoder=encoder, encoder_weights="none", decoder_channels=decoder_channels, size=side)
        model = create_model(arch, encoder, 3, 1, "none", decoder_channels).eval()
        model = model.to(memory_format=torch.channels_last)  # as load_trained_model hands it over
        models.update({name: (net, batches, modules) for name, (net, modules) in _nets(model, cfg, side, "binary").items()})  # one class
    return models


def main(models: dict):
    print(f"| model | parameters (M) | modules run | images/s ({torch.get_num_threads()} threads, batch {BATCH}) |"
          f"\n|---|---|---|---|")
    best = {name: float("inf") for name in models}
    with torch.inference_mode():
        for net, batches, _ in models.values():
            net(batches[0])
        for _ in range(ROUNDS):
            for name, (net, batches, _) in models.items():
                best[name] = min(best[name], _seconds(net, batches))
    for name, (net, batches, modules) in models.items():
        print(f"| {name} | {sum(p.numel() for p in net.parameters()) / 1e6:.2f} | {modules} | "
              f"{sum(len(x) for x in batches) / best[name]:.0f} |")


if __name__ == "__main__":
    arguments = sys.argv[1:]
    main(untrained(*arguments[1:]) if arguments[:1] == ["--untrained"] else trained(*arguments))
