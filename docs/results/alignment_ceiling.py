"""The score of a perfect model at cache size, as infer.py scores OOF: each mask resized to the cache (old and new
sampling), back to the original size (bilinear, threshold 0.5), and scored against itself.

  python docs/results/alignment_ceiling.py data/cxr 128 256
"""
import sys
from pathlib import Path

import cv2
import numpy as np
import pandas as pd
from tqdm.contrib.concurrent import thread_map

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from src.portable import postprocess  # noqa: E402
from src.canonical import load_index  # noqa: E402
from src.portable.images import HOST_THREADS, read_image, resize  # noqa: E402
from src.metrics import image_scores  # noqa: E402
from src.portable.maps import resize_prob  # noqa: E402

SAMPLING = {"INTER_NEAREST (before)": lambda m, s: cv2.resize(m, (s, s), interpolation=cv2.INTER_NEAREST),
            "INTER_NEAREST_EXACT (now)": lambda m, s: resize(m, s, is_mask=True)}


def main(dataset_dir: str, *sizes: str):
    dataset_dir = Path(dataset_dir)
    ids = load_index(dataset_dir).query("split == 'train'")["id"].tolist()

    def score(image_id):
        truth = read_image(dataset_dir / "masks" / f"{image_id}.png")
        rows = []
        for size in map(int, sizes):
            for name, sample in SAMPLING.items():
                prob = sample(truth, size)[None] * np.uint8(255)
                pred = postprocess.apply(resize_prob(prob, truth.shape), postprocess.PLAIN["binary"])
                rows.append({"size": size, "sampling": name, **image_scores(pred, truth, ["bg", "fg"])[0]})
        return rows

    table = pd.DataFrame([r for rows in thread_map(score, ids, max_workers=HOST_THREADS, desc="ceiling") for r in rows])
    print(table.groupby(["size", "sampling"])[["dice", "hd95", "hd95_pct"]].mean().round(4).to_string())


if __name__ == "__main__":
    main(*sys.argv[1:])
