"""A folder of images and masks laid out as a Kaggle code competition ships one, to check the submission format end
to end: train/ with a train.csv of row-major runs (ImageId with the .png extension, one row per image, -1 for an empty
mask; masks binarised at 128), test/ (the first `test` images of a seeded shuffle), and a sample_submission.csv that
lists the test images in reverse order plus one id that has no image.

  python docs/results/kaggle_layout.py ../shared/data/dsb2018-nuclei-96 competition 100
"""
import csv
import random
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from src.portable.images import read_image  # noqa: E402
from src.portable.rle import rle_encode  # noqa: E402


def main(source: str, out: str, test: str = "100"):
    source, out = Path(source), Path(out)
    shutil.rmtree(out, ignore_errors=True)
    for sub in ("train", "test"):
        (out / sub).mkdir(parents=True)
    names = sorted(p.name for p in (source / "images").iterdir())
    random.Random(0).shuffle(names)
    held, train = names[:int(test)], names[int(test):]
    with open(out / "train.csv", "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["ImageId", "EncodedPixels"])
        for name in sorted(train):
            shutil.copy(source / "images" / name, out / "train" / name)
            mask = read_image(source / "masks" / name)
            writer.writerow([name, rle_encode((mask if mask.ndim == 2 else mask[..., 0]) >= 128, "row") or "-1"])
    for name in held:
        shutil.copy(source / "images" / name, out / "test" / name)
    listed = held[::-1] + ["0000000000ghost.png"]
    (out / "sample_submission.csv").write_text("ImageId,EncodedPixels\n" + "".join(f"{n},-1\n" for n in listed))
    print(f"{len(train)} train, {len(held)} test images: {out}")


if __name__ == "__main__":
    main(*sys.argv[1:])
