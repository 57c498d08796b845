"""Write a new k-fold split, folds/<name>.csv, and plan the training recipe again on it.

Re-write alone: python -m src.split <name> --k 5 --strategy auto --seed 42 --overwrite
One hold-out split instead: python -m src.split dsb96ref --holdout 0.2 --seed 41 --overwrite
  fold 0 is the 20% that sklearn's train_test_split(sorted ids, test_size=0.2, random_state=41) returns second, as
  the UNet++ reference (4uiiurz1/pytorch-nested-unet) holds out on DSB 2018; fold 1 is the rest. The ids are sorted:
  the reference splits them in the order of an unsorted glob, which cannot be recovered, so its split is matched only
  where its file system listed them sorted. Train and score fold 0 alone (--folds 0).
"""
import argparse
import sys
from pathlib import Path

from src import plan  # a command of its own: src/plan.py reads fold files through src/folds.py, which plans nothing
from src.folds import STRATEGIES, write_folds


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("name", help="dataset under data/")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--holdout", type=float, metavar="FRACTION",
                        help="one hold-out split instead of --k folds: fold 0 = this fraction of the sorted ids, drawn "
                             "by sklearn's train_test_split with --seed; fold 1 = the rest (--k and --strategy unused)")
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--folds-dir", type=Path, default=Path("folds"))
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"),
                        help="where runs live: --overwrite counts those trained on the old split")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folds/<name>.csv")
    args = parser.parse_args(argv)
    try:
        path = write_folds(args.data_dir / args.name, args.folds_dir, args.k, args.strategy, args.seed, args.overwrite,
                           args.runs_dir, args.holdout)
    except (ValueError, OSError) as error:  # FileNotFoundError and FileExistsError are OSErrors
        sys.exit(f"folds: {error}")
    print(f"wrote {path}")
    dataset_dir = args.data_dir / args.name
    planned = plan.load_plan(dataset_dir)
    if planned:  # a fold's number of training images sets the batch and the epochs: the plan follows the new split
        print("\n".join(plan.describe(plan.write_plan(dataset_dir, args.folds_dir, planned["steps"]), dataset_dir)))
    else:
        print(f"no {plan.plan_path(dataset_dir)}: python -m src.plan {args.name} plans the training recipe")


if __name__ == "__main__":
    main()
