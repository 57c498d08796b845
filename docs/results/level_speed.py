"""Parameters, modules run and inference images/s of each trained run of a dataset's fold, and of every level of its
Unet++ with deep supervision, measured alone on this machine (infer.py records images/s too, in inference.json,
but while it shares the cores with whatever else runs).

  python docs/results/level_speed.py dsb96 0            # runs/dsb96/*/fold0, batches of 16 cached images, no TTA

Each model predicts the fold's first 128 cached images in batches of 16 (no TTA), once to warm up; then the models take
turns, ROUNDS times over, so that a slow spell of a shared machine hits them all alike; the figure is each model's best
round (images / seconds), with torch's default threads (every core).
"""
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from src.cache import open_cache  # noqa: E402
from infer import level_models  # noqa: E402
from src.deep_supervision import UnetPlusPlusDS, level_sizes  # noqa: E402
from src.models import normalize  # noqa: E402
from src.predict import checkpoint_file, load_trained_model  # noqa: E402
from src.runs import LEVELS  # noqa: E402

BATCH, ROUNDS = 16, 5


def _seconds(model, batches) -> float:
    started = time.perf_counter()
    for x in batches:
        model(x)
    return time.perf_counter() - started


def main(dataset: str, fold: str = "0", runs_dir: str = "runs"):
    print(f"| model | parameters (M) | modules run | images/s ({torch.get_num_threads()} threads, batch {BATCH}) |"
          f"\n|---|---|---|---|")
    models = {}
    for run_dir in sorted(Path(runs_dir, dataset).glob(f"*/fold{fold}")):
        model, cfg, _ = load_trained_model(run_dir, checkpoint_file(run_dir, "selected"), torch.device("cpu"))
        images, _ = open_cache(Path("data") / dataset, cfg.size)
        stack = torch.from_numpy(np.array(images[:128]))  # uint8, as the loader hands it over
        stack = stack.permute(0, 3, 1, 2) if stack.ndim == 4 else stack[:, None]
        batches = [normalize(stack[i:i + BATCH]) for i in range(0, len(stack), BATCH)]
        nets = {run_dir.parent.name: model}
        if isinstance(model, UnetPlusPlusDS):
            sizes = {row["level"]: row for row in level_sizes(model, cfg.size)}
            nets = {f"{run_dir.parent.name} {level}": net  # built as infer.py --level builds them
                    for level, net in level_models(model, cfg, list(LEVELS), set())}
        models.update({name: (net, batches, sizes[name.split()[-1]]["modules_run"] if " " in name else "-")
                       for name, net in nets.items()})
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
    main(*sys.argv[1:])
