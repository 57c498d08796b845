"""Convert a dataset into data/<name>/ (canonical layout + resized cache) and write folds/<name>.csv.

  python -m src.prepare demo                       # generated lungs, offline
  python -m src.prepare demo --multiclass          # generated nuclei (5 classes + background)
  python -m src.prepare demo --multilabel          # generated lungs and the heart over them (labels that overlap)
  python -m src.prepare chest-xray --src DIR       # Montgomery / Shenzhen / Kaggle masks-and-labels
  python -m src.prepare pannuke --src DIR          # the official PanNuke fold files
  python -m src.prepare folder --images DIR --masks DIR [--test DIR] [--task multiclass --classes background,a,b]
                                                   # layouts and mask rules: README, src/sources/folder.py, src/masks.py
  python -m src.prepare rle --images DIR --csv train.csv [--rle-order row] [--rle-relative]   # Kaggle RLE masks
  python -m src.prepare decathlon --src Task04_Hippocampus   # NIfTI volumes through dataset.json (Decathlon, nnU-Net v2)
  python -m src.prepare folder --images imagesTr --masks labelsTr --test imagesTs --modality CT   # NIfTI volumes
  any source: --meta metadata.csv --group-column patient    # patient groups for the folds, columns into index.csv

Images may be PNG, JPEG, TIFF, BMP or DICOM, grey, RGB(A) or palette, 8- or 16-bit: see src/portable/images.py.
Volumes (.nii, .nii.gz) become slices, their case the fold group: see src/portable/volumes.py for the rules.
Last, the dataset's training recipe is planned from its fingerprint into data/<name>/plan.json (src/plan.py), each
value printed with its rule.
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

from src import sources
from src.canonical import PrepareError, write_dataset
from src.config import working_size
from src.folds import NO_GROUP, STRATEGIES, kept_folds_problem, load_folds, write_folds
from src.masks import parse_colors, parse_regions
from src.portable.images import size_text
from src.plan import describe, given_flags, write_plan
from src.problems import report


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", choices=["demo", "chest-xray", "pannuke", "folder", "rle", "decathlon"])
    parser.add_argument("--name", help="dataset name (default: the source's: demo, demo-multiclass, chest-xray, ...; "
                        "folder: the images folder's parent, dsb for dsb/images)")
    parser.add_argument("--src", type=Path, help="the downloaded dataset's folder (chest-xray, pannuke, decathlon)")
    parser.add_argument("--images", type=Path, help="folder, rle: the images")
    parser.add_argument("--masks", type=Path, help="folder: the masks, matched by file stem (x.png, x_mask.png, "
                        "x_mask_1.png, x_segmentation.png) or by folder (masks/<id>/*.png); may be --images itself")
    parser.add_argument("--test", type=Path, help="folder, rle: unlabelled test images")
    parser.add_argument("--task", choices=["binary", "multiclass", "multilabel"], default="binary",
                        help="folder, rle: mask kind; multilabel keeps every class of a pixel (classes that overlap: "
                             "per-class mask folders, an RLE CSV's class rows, --regions of label maps)")
    parser.add_argument("--classes", help="folder, rle: comma-separated class names, background first (multilabel: "
                                          "the labels alone)")
    parser.add_argument("--regions", help="folder: label maps (or volumes) as nnU-Net's regions, each one label of "
                                          "a multilabel dataset, the union of its values: 'whole=1,2 core=2'")
    parser.add_argument("--class-colors", help="colour-coded masks: one hex colour per class, in class order "
                        "(000000,ff0000,00ff00)")
    parser.add_argument("--mask-threshold", type=int,
                        help="binary: binarise every non-binary mask at this value (>= T is foreground); by default "
                             "only almost-binary masks are, at 128")
    parser.add_argument("--modality", default="MRI", help="folder of volumes: CT is normalised by the dataset's "
                        "foreground statistics, anything else z-scored per volume (nnU-Net's rules)")
    parser.add_argument("--channels", type=int, choices=[1, 3], default=0,
                        help="1 grey, 3 RGB; every image is converted (default: the source's, else the majority's)")
    parser.add_argument("--csv", type=Path, help="rle: the CSV of run-length encoded masks")
    parser.add_argument("--id-column", help="rle: image id column (default: ImageId, id, ...); --meta: default id")
    parser.add_argument("--rle-column", help="rle: encoded mask column (default: EncodedPixels, rle, annotation, ...)")
    parser.add_argument("--class-column", help="rle: class column (default: ClassId, class, ... if present)")
    parser.add_argument("--rle-order", choices=["column", "row"], default="column",
                        help="rle: pixel numbering, column-major (Kaggle's usual) or row-major")
    parser.add_argument("--rle-relative", action="store_true",
                        help="rle: each start counts from the end of the previous run (SIIM-ACR pneumothorax)")
    parser.add_argument("--absent-empty", action="store_true",
                        help="rle: images with no CSV row get an empty mask (Severstal lists only defects)")
    parser.add_argument("--meta", type=Path, help="metadata CSV with a row for every labelled image (any source)")
    parser.add_argument("--group-column", help="--meta: column whose value keeps images together in one fold (patient)")
    parser.add_argument("--allow-unmasked", action="store_true", help="images without a mask become test images")
    parser.add_argument("--rotation-invariant", action="store_true",
                        help="folder: images have no up or down (histology); augment with vertical flips and 90° turns")
    parser.add_argument("--multiclass", action="store_true", help="demo: generated nuclei instead of lungs")
    parser.add_argument("--multilabel", action="store_true", help="demo: the lungs and the heart over them, labels "
                                                                  "that overlap")
    parser.add_argument("--count", type=int, default=240, help="demo: number of labelled images")
    parser.add_argument("--test-count", type=int, default=24, help="demo: number of unlabelled test images")
    parser.add_argument("--size", type=working_size, default=256, help="the resized cache's size in pixels: N (a square) "
                        "or HxW (height x width: 256x1600 for strips); when given, also the training size the plan "
                        "records (else its rule chooses one)")
    parser.add_argument("--k", type=int, default=5, help="number of folds")
    parser.add_argument("--strategy", choices=STRATEGIES, default="auto",
                        help="auto: official folds if any, else grouped by patient if known, else stratified")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--data-dir", type=Path, default=Path("data"))
    parser.add_argument("--folds-dir", type=Path, default=Path("folds"))
    parser.add_argument("--runs-dir", type=Path, default=Path("runs"),
                        help="where runs live: --overwrite counts those a new split leaves behind")
    parser.add_argument("--overwrite", action="store_true", help="replace data/<name> and folds/<name>.csv")
    parser.add_argument("--workers", type=int, default=None, help="threads decoding images (default: min(8, CPUs))")
    args = parser.parse_args(argv)
    args.given = given_flags(parser, argv)
    return args


def build_source(args) -> tuple:
    if args.source == "demo":
        name = "demo-multiclass" if args.multiclass else "demo-multilabel" if args.multilabel else "demo"
        return name, sources.demo_source(args.count, args.seed, args.multiclass, args.test_count, args.multilabel)
    if args.source == "chest-xray":
        if args.src is None:
            raise PrepareError(["chest-xray needs --src pointing at the downloaded folder"])
        return "chest-xray", sources.chest_xray(args.src, args.allow_unmasked, args.channels)
    if args.source == "pannuke":
        if args.src is None:
            raise PrepareError(["pannuke needs --src pointing at the folder holding 'Fold 1', 'Fold 2', 'Fold 3'"])
        return "pannuke", sources.pannuke(args.src)
    if args.source == "decathlon":
        if args.src is None or not (args.src / "dataset.json").exists():
            raise PrepareError([f"decathlon needs --src pointing at a folder holding dataset.json (given: {args.src})"])
        try:
            cases, classes, modality, problems, regions, region_order = sources.decathlon_cases(args.src)
        except (ValueError, KeyError) as error:
            raise PrepareError([str(error)]) from None
        task = "multilabel" if regions else "binary" if len(classes) == 2 else "multiclass"
        source = sources.volume_source(cases, task, classes, modality, regions, region_order)
        source.problems += problems
        return args.src.resolve().name, source
    classes = args.classes.split(",") if args.classes else None
    if args.task == "multilabel" and classes:  # the labels alone: background first, as every task lists them
        classes = ["background", *[c for c in classes if c != "background"]]
    regions = None
    if args.regions:
        try:
            regions = parse_regions(args.regions)
        except ValueError as error:
            raise PrepareError([str(error)]) from None
        if args.task != "multilabel" or args.source != "folder":
            raise PrepareError(["--regions makes a multilabel dataset of a folder's label maps: prepare folder "
                                "--task multilabel --regions ..."])
    if args.source == "rle":
        if args.images is None or args.csv is None:
            raise PrepareError(["rle needs --images DIR and --csv FILE"])
        return "rle", sources.rle_csv(args.images, args.csv, args.id_column, args.rle_column, args.class_column,
                                      classes, args.rle_order, args.rle_relative, args.allow_unmasked,
                                      args.absent_empty, args.test, args.channels, args.task == "multilabel")
    if args.images is None or args.masks is None:
        raise PrepareError(["folder needs --images DIR and --masks DIR"])
    if args.task == "multiclass" and not classes:
        raise PrepareError(["--task multiclass needs --classes background,class1,class2,..."])
    if args.task == "multilabel" and not (classes or regions):
        raise PrepareError(["--task multilabel needs --classes a,b,... (masks/<class>/ folders) or --regions"])
    name = folder_name(args.images, args.name)
    if sources.volume_files(args.images):
        if args.task == "multilabel" and not regions:  # a label volume holds values, not bits
            raise PrepareError(["label volumes become labels that overlap through --regions 'name=value,... ...'"])
        cases, problems = sources.folder_cases(args.images, args.masks, args.test, args.allow_unmasked)
        source = sources.volume_source(cases, args.task, ["background", *regions] if regions else classes or [
            "background", "foreground"], args.modality, regions)
        source.problems += problems
        return name, source
    if regions:  # label maps, read as a multiclass set's, then one bit per region
        source = sources.as_regions(sources.folder(args.images, args.masks, args.test, args.allow_unmasked,
                                                   "multiclass", None, args.channels), regions)
    else:
        source = sources.folder(args.images, args.masks, args.test, args.allow_unmasked, args.task, classes,
                                args.channels)
    source.rotation_invariant = args.rotation_invariant
    return name, source


def folder_name(images: Path, given: str | None) -> str:
    """folder's dataset: --name, else the images folder's parent's name (dsb for dsb/images), said as it is chosen."""
    if given:
        return given
    name = images.resolve().parent.name
    if not name:
        raise PrepareError([f"--images {images}: no parent folder to name the dataset after; pass --name NAME"])
    print(f"dataset name: {name} (the images folder's parent; --name NAME to choose another)")
    return name


def mask_rules(args, source) -> None:
    """--class-colors and --mask-threshold, for any source whose masks are image files."""
    if args.class_colors:
        try:
            source.class_colors = parse_colors(args.class_colors)
        except ValueError as error:
            raise PrepareError([str(error)]) from None
        if len(source.class_colors) != len(source.classes):
            more = "; more classes than two need --task multiclass --classes background,a,b" if (
                source.task == "binary" and len(source.class_colors) > 2) else ""
            raise PrepareError([f"--class-colors lists {len(source.class_colors)} colours for {len(source.classes)} "
                                f"classes ({', '.join(source.classes)}): one per class, background first{more}"])
    if args.mask_threshold is not None and not 1 <= args.mask_threshold <= 255:
        raise PrepareError([f"--mask-threshold {args.mask_threshold}: choose a value from 1 to 255"])
    source.mask_threshold = args.mask_threshold


def main(argv=None):
    args = parse_args(argv)
    start = time.time()
    name = args.name or args.source
    try:
        default_name, source = build_source(args)
        name = args.name or default_name
        mask_rules(args, source)
        if source.volumes and "size" not in args.given:  # the cache at the padded slices' own size: nothing resized
            height, width = source.volumes["slice_size"]
            args.size = height if height == width else (height, width)
        if args.channels and args.source in ("demo", "pannuke") and args.channels != source.channels:
            raise PrepareError([f"--channels {args.channels}: the {args.source} source is {source.channels}-channel"])
        if args.group_column and not args.meta:
            raise PrepareError(["--group-column needs --meta CSV"])
        if args.meta:
            for note in sources.attach_metadata(source, args.meta, args.id_column or "id", args.group_column):
                print(note)
        folds_file = args.folds_dir / f"{name}.csv"
        keep_folds = folds_file.exists() and not args.overwrite
        # A committed split (folds/cxr.csv) is kept: runs trained on it stay comparable. It is compared only with a
        # source that found its images: after a wrong path, "lists other images" would invite --overwrite.
        if keep_folds and not source.problems:
            problem = kept_folds_problem(folds_file, {s.id for s in source.samples if s.split == "train"})
            source.problems += [problem] if problem else []
        index = write_dataset(source, args.data_dir / name, args.size, args.source, args.overwrite, args.workers)
    except PrepareError as error:
        sys.exit(f"prepare: {report(error.problems, Path(tempfile.gettempdir()) / f'prepare-{name}-problems.txt')}")
    if keep_folds:
        folds_path = folds_file
        print(f"kept {folds_file}: it exists and lists these images (--overwrite writes a new split)")
    else:
        try:
            folds_path = write_folds(args.data_dir / name, args.folds_dir, args.k, args.strategy, args.seed,
                                     overwrite=True, runs_dir=args.runs_dir)
        except ValueError as error:
            sys.exit(f"prepare: {args.data_dir / name} was written, but its folds were not: {error} "
                     f"(then: python -m src.split {name} --k K --strategy S)")
    counts = index["split"].value_counts().to_dict()
    mib = {sub: sum(f.stat().st_size for f in (args.data_dir / name / sub).rglob("*") if f.is_file()) / 2**20
           for sub in ("images", "masks", "cache")}
    folds = load_folds(folds_path.parent, name)  # group labels as text: patient ids are often numbers
    print(f"prepared {args.data_dir / name}: {counts.get('train', 0)} labelled + {counts.get('test', 0)} test images "
          f"(images {mib['images']:.1f} MiB, masks {mib['masks']:.1f} MiB, {size_text(args.size)}px cache {mib['cache']:.1f} MiB); "
          f"{folds['fold'].nunique()} folds in {folds_path}"
          + (f" grouped by {folds['group'].nunique()} groups ({folds['group'].str.startswith(NO_GROUP).sum()} of them "
             f"an image without a group label)" if "group" in folds else "")
          + f"; {time.time() - start:.1f}s")
    given = {"size": args.size} if "size" in args.given else {}  # the user's size is the plan's, not the rule's
    print("\n".join(describe(write_plan(args.data_dir / name, args.folds_dir, given=given), args.data_dir / name)))


if __name__ == "__main__":
    main()
