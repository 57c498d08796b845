"""Convert a dataset into data/<name>/ (canonical layout + resized cache) and write folds/<name>.csv.

  python -m src.prepare demo                       # generated lungs, offline
  python -m src.prepare demo --multiclass          # generated nuclei (5 classes + background)
  python -m src.prepare chest-xray --src DIR       # Montgomery / Shenzhen / Kaggle masks-and-labels
  python -m src.prepare pannuke --src DIR          # the official PanNuke fold files
  python -m src.prepare folder --images DIR --masks DIR [--test DIR] [--task multiclass --classes a,b]
"""
import argparse
import sys
import time
from pathlib import Path

from src import sources
from src.canonical import PrepareError, write_dataset
from src.folds import STRATEGIES, write_folds


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", choices=["demo", "chest-xray", "pannuke", "folder"])
    parser.add_argument("--name", help="dataset name (default: the source's: demo, demo-multiclass, chest-xray, ...)")
    parser.add_argument("--src", type=Path, help="the downloaded dataset's folder (chest-xray, pannuke)")
    parser.add_argument("--images", type=Path, help="folder: the images")
    parser.add_argument("--masks", type=Path, help="folder: the masks, matched by file stem (x.png, x_mask.png)")
    parser.add_argument("--test", type=Path, help="folder: unlabelled test images")
    parser.add_argument("--task", choices=["binary", "multiclass"], default="binary", help="folder: mask kind")
    parser.add_argument("--classes", help="folder: comma-separated class names, background first")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=0, help="folder: 1 grey, 3 RGB (default: first image's)")
    parser.add_argument("--allow-unmasked", action="store_true", help="images without a mask become test images")
    parser.add_argument("--rotation-invariant", action="store_true",
                        help="folder: images have no up or down (histology); augment with vertical flips and 90° turns")
    parser.add_argument("--multiclass", action="store_true", help="demo: generated nuclei instead of lungs")
    parser.add_argument("--count", type=int, default=240, help="demo: number of labelled images")
    parser.add_argument("--test-count", type=int, default=24, help="demo: number of unlabelled test images")
    parser.add_argument("--size", type=int, default=256, help="side of the resized cache in pixels")
    parser.add_argument("--k", type=int, default=5, help="number of folds")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="auto: official folds if any, else grouped by patient if known, else stratified")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--folds-dir", type=Path, default=Path("folds"))
    parser.add_argument("--overwrite", action="store_true")
    parser.add_argument("--workers", type=int, default=None, help="threads decoding images (default: min(8, CPUs))")
    return parser.parse_args(argv)


def build_source(args) -> tuple:
    if args.source == "demo":
        name = "demo-multiclass" if args.multiclass else "demo"
        return name, sources.demo_source(args.count, args.seed, args.multiclass, args.test_count)
    if args.source == "chest-xray":
        if args.src is None:
            raise PrepareError(["chest-xray needs --src pointing at the downloaded folder"])
        return "chest-xray", sources.chest_xray(args.src, args.allow_unmasked)
    if args.source == "pannuke":
        if args.src is None:
            raise PrepareError(["pannuke needs --src pointing at the folder holding 'Fold 1', 'Fold 2', 'Fold 3'"])
        return "pannuke", sources.pannuke(args.src)
    if args.images is None or args.masks is None:
        raise PrepareError(["folder needs --images DIR and --masks DIR"])
    classes = args.classes.split(",") if args.classes else None
    if args.task == "multiclass" and not classes:
        raise PrepareError(["--task multiclass needs --classes background,class1,class2,..."])
    source = sources.folder(args.images, args.masks, args.test, args.allow_unmasked, args.task, classes, args.channels)
    source.rotation_invariant = args.rotation_invariant
    return "folder", source


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    try:
        default_name, source = build_source(args)
        name = args.name or default_name
        index = write_dataset(source, args.data_dir / name, args.size, args.source, args.overwrite, args.workers)
    except PrepareError as error:
        sys.exit(f"prepare: {error}")
    folds_path = write_folds(args.data_dir / name, args.folds_dir, args.k, args.strategy, args.seed)
    counts = index["split"].value_counts().to_dict()
    cache_mb = sum(f.stat().st_size for f in (args.data_dir / name / "cache").rglob("*.npy")) / 2**20
    print(f"prepared {args.data_dir / name}: {counts.get('train', 0)} labelled + {counts.get('test', 0)} test images, "
          f"{args.size}px cache {cache_mb:.1f} MiB, folds in {folds_path}, {time.time() - start:.1f}s")


if __name__ == "__main__":
    main()
