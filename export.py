"""Package an ensemble into one folder that writes its submission offline, on a machine that has never seen this repo.

  python export.py --dataset demo                      # ensemble/demo/ -> export/demo/
  python export.py --dataset cxr --name unets --zip    # ensemble/cxr/unets/ -> export/cxr/unets/ and its .zip
  python export.py --dataset cxr --set new_xrays       # parity on the prediction set ensemble.py --set made

Reads the ensemble folder ensemble.py wrote (selection.json, scores.json: runs, TTA, levels, weights and the test
masks' post-processing), the prediction sets it read (their provenance in preds/) and each run's weights. Writes
export/<dataset>/[<name>/]:
  predict.py      python -I predict.py --images DIR --out submission.csv [--masks-dir DIR] [--device cpu|cuda]
  portable/       the project's own src/portable/ modules (image rules, resizing, TTA, post-processing, RLE)
  weights/        one safetensors state dict per run and fold (or one .onnx each with --format onnx)
  manifest.json   models, TTA, levels, blend weights, post-processing, input rules, versions, SHA-256s, parity, speed
  requirements.txt (exact versions) and README.md (the Kaggle notebook cell)
Parity: the package runs with python -I from another folder on the images whose masks the ensemble wrote (the test
split, or --set); its masks must equal ensemble.py's pixel for pixel, so its submission equals it row for row in
the dataset's format (--half, onnx: masks that agree on 99.9% of each image's pixels). A package that fails is not written; one that passes replaces the folder's old one whole.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

from src import packaging
from src.canonical import image_file, load_index, load_meta
from src.portable.predictor import image_files
from src.portable.volumes import channel_files
from src.volume_scores import read_records


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--name", help="the ensemble of ensemble.py --name NAME (ensemble/<dataset>/NAME/)")
    parser.add_argument("--format", choices=["torch", "onnx"], default="torch",
                        help="torch: safetensors state dicts run by PyTorch; onnx: .onnx files run by onnxruntime")
    parser.add_argument("--half", action="store_true", help="store the weights as float16 (half the size)")
    parser.add_argument("--zip", action="store_true", help="also write export/<dataset>[/<name>].zip")
    parser.add_argument("--set", help="check parity on this prediction set of the ensemble (ensemble.py --set NAME) "
                                      "instead of the dataset's test split")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="where the parity run predicts (default: cuda where "
                                                                  "a GPU is found, as infer.py)")
    parser.add_argument("--ensemble-dir", default="ensemble", help="where ensemble.py wrote (its --out-dir)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--folds-dir", default="folds")
    parser.add_argument("--out-dir", default="export")
    return parser.parse_args(argv)


def main(argv=None):
    try:
        run(parse_args(argv))
    except packaging.ExportError as error:
        sys.exit(f"export: {error}")


def run(args):
    """The story: the ensemble and its models, checked; the package written aside; its parity; then put in place."""
    if args.half and args.format == "onnx":
        raise packaging.ExportError("--half stores safetensors weights as float16: use it with --format torch")
    source = Path(args.ensemble_dir) / args.dataset / (args.name or "")
    selection, scores = read_ensemble(source)
    part, written = masks_of(source, args)
    dirs = {"--data-dir": args.data_dir, "--folds-dir": args.folds_dir, "--preds-dir": selection["preds_dir"]}
    models = packaging.models_of(scores, selection, args.dataset, part, dirs)
    meta = {**models[0]["meta"], "submission": dataset_format(Path(args.data_dir) / args.dataset)}
    if "volumes" in meta and args.format == "onnx":  # its ONNX check reads 2D image files
        raise packaging.ExportError("a volume ensemble is exported with --format torch (the ONNX check reads 2D image "
                                    "files)")
    windowed = [m for m in models if m["window"]]
    if windowed and args.format == "onnx":  # MONAI's window is torch code; an ONNX package runs without torch
        raise packaging.ExportError(f"{windowed[0]['run']} predicts by sliding window (trained on patches), which the "
                                    f"torch-free ONNX package cannot run (MONAI's window is torch code); export "
                                    f"--format torch")
    target = Path(args.out_dir) / args.dataset / (args.name or "")
    target.parent.mkdir(parents=True, exist_ok=True)
    files, what, here = images_of(written, part, selection, scores, args), f"set '{args.set}'" if args.set else "test", False
    if not files and "volumes" in meta:
        raise packaging.ExportError("the ensemble holds no test cases, which the package's parity is checked on; "
                                    "prepare the volumes with their test cases (imagesTs, --test DIR)")
    if not files:  # no test images: the package is held to this project's own prediction of training images
        files, what, here = training_images(Path(args.data_dir) / args.dataset), "training images'", True
        print(f"export: the ensemble holds no test masks; parity on {len(files)} training images, predicted here "
              f"with the runs' weights: {', '.join(files)}")
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.tmp-", dir=target.parent) as work:
        package = Path(work) / target.name
        write_package(package, models, scores, meta, args, source, list(files.values()))
        manifest = json.loads((package / "manifest.json").read_text())
        images = packaging.image_folder(Path(work) / "images", files)
        run_dir = Path(work) / "run"
        run_dir.mkdir()
        masks, speed = packaging.run_package(package, images, run_dir, args.device)
        reference = packaging.predict_here(models, scores, meta, images, Path(work) / "here", args.device) if here else \
            written / "masks"
        exact = args.format == "torch" and not args.half
        passed, line = packaging.parity(reference, masks, exact, what,
                                        "this project's own prediction of them" if here else None)
        if args.format == "onnx":  # write_onnx stopped on any model outside the tolerance
            line += (f"; onnxruntime's maps within rtol 1e-3, atol 1e-5 of PyTorch's for all {len(models)} models "
                     f"(largest difference {max(m['onnx_check']['max_abs'] for m in models):.1e})")
        print(f"parity: {line}")
        if not passed:
            raise packaging.ExportError(f"parity failed ({line}); the package was not written")
        manifest.update(parity=line, images_per_s=speed)
        (package / "manifest.json").write_text(packaging.manifest_text(manifest))
        put_in_place(package, target)
    size = sum(p.stat().st_size for p in target.rglob("*") if p.is_file()) / 2 ** 20
    print(f"export: wrote {target}/ ({len(models)} models, {size:.1f} MiB, {speed:.2f} images/s); run it with "
          f"`python -I {target / 'predict.py'} --images DIR --out submission.csv`")
    if args.zip:
        print(f"export: wrote {write_zip(target)}")


def dataset_format(dataset_dir: Path) -> dict:
    """The submission format of the dataset (meta.json), which the ensemble's submission.csv was written in."""
    try:
        return load_meta(dataset_dir)["submission"]
    except (FileNotFoundError, ValueError) as error:
        raise packaging.ExportError(str(error)) from None


def read_ensemble(source: Path) -> tuple:
    """(selection.json, scores.json) of an ensemble folder."""
    if not (source / "selection.json").exists():
        raise packaging.ExportError(f"{source / 'selection.json'} not found: no ensemble there; run ensemble.py "
                                    f"(with --name for a named one) first")
    if not (source / "scores.json").exists():
        raise packaging.ExportError(f"{source / 'scores.json'} not found: the ensemble in {source} never finished; "
                                    f"run ensemble.py again")
    return tuple(json.loads((source / f).read_text()) for f in ("selection.json", "scores.json"))


def masks_of(source: Path, args) -> tuple:
    """(the prediction part, the folder of its masks and submission.csv): the test split's, or those of --set."""
    part, written = ("test", source) if not args.set else (f"sets/{args.set}", source / "sets" / args.set)
    if not (written / "submission.csv").exists():
        there = sorted(p.name for p in (source / "sets").glob("*") if (p / "submission.csv").exists())
        hint = f"; its prediction sets: --set {', --set '.join(there)}" if there else ""
        raise packaging.ExportError(f"{written / 'submission.csv'} not found: ensemble.py wrote no masks of "
                                    f"{args.set or 'the test split'} there{hint}")
    return part, written


def images_of(written: Path, part: str, selection: dict, scores: dict, args) -> dict:
    """{id: image file} of the images whose masks the ensemble wrote: the test split's canonical images, or the files
    of the folder infer.py --images predicted for the set (prediction.json records it)."""
    ids = sorted(p.stem for p in (written / "masks").glob("*.png"))
    if part == "test":
        dataset_dir = Path(args.data_dir) / args.dataset
        index = load_index(dataset_dir).set_index("id", drop=False)
        if "case" in index:  # slices of volumes: the package reads the source volumes, as a user would
            records = read_records(dataset_dir)
            if any("file" not in record for record in records.values()):
                raise packaging.ExportError(f"{dataset_dir / 'volumes.json'} was written by an older prepare, without "
                                            f"each case's source file that parity is checked on: prepare the dataset "
                                            f"again (python -m src.prepare ... --overwrite; the same seed writes the same "
                                            f"folds)")
            channels = load_meta(dataset_dir)["channels"]  # several: nnU-Net v2's <case>_0000 ... each linked
            files = {case: channel_files(Path(records[case]["file"]), channels)
                     for case in sorted(set(index.loc[ids, "case"]))}
            return {case if len(paths) == 1 else f"{case}_{k:04d}": path
                    for case, paths in files.items() for k, path in enumerate(paths)}
        return {i: image_file(dataset_dir, index.loc[i]) for i in ids}
    run, summary = next(iter(scores["runs"].items()))
    folder = Path(packaging.test_set(run, summary, selection, args.dataset).provenance["sets"][args.set]["images"])
    try:
        files = {p.stem: p for p in image_files(folder) if p.stem in ids}
    except ValueError:  # the folder, or every image of it, is gone
        files = {}
    missing = sorted(set(ids) - set(files))
    if missing:
        raise packaging.ExportError(f"{folder}: {len(missing)} of the set's images are gone (e.g. {missing[0]}), so "
                                    f"parity cannot be checked; restore them")
    return files


def training_images(dataset_dir: Path, count: int = 8) -> dict:
    """{id: image file} of the dataset's first training images by id, for the parity check of an ensemble that
    wrote no test masks."""
    index = load_index(dataset_dir)
    rows = index[index["split"] == "train"].sort_values("id").head(count)
    return {row.id: image_file(dataset_dir, row) for row in rows.itertuples()}


def write_package(package: Path, models: list, scores: dict, meta: dict, args, source: Path, images: list) -> None:
    """Code, weights (each ONNX model checked against PyTorch on the images), README and requirements, then
    manifest.json with every file's SHA-256."""
    packaging.copy_code(package)
    if args.format == "onnx":
        packaging.write_onnx(package, models, images)
    else:
        packaging.write_weights(package, models, args.half)
    window = any(m["window"] for m in models)  # MONAI too, for a run trained on patches
    (package / "requirements.txt").write_text("\n".join(packaging.requirements(args.format, window, "volumes" in meta))
                                              + "\n")
    manifest = packaging.manifest_of(package, models, scores, meta, args.format, args.half, source)
    packaging.write_readme(package, manifest)
    manifest = packaging.manifest_of(package, models, scores, meta, args.format, args.half, source)  # README's hash
    (package / "manifest.json").write_text(packaging.manifest_text(manifest))


def put_in_place(package: Path, target: Path) -> None:
    """The new package in target's place in one rename; an old one is moved aside first and then removed, so a
    failure leaves the old package or the new one, never half of either."""
    old = target.with_name(f".{target.name}.old-{os.getpid()}")
    if target.exists():
        nested = [p.name for p in target.iterdir() if p.is_dir() and (p / "manifest.json").exists()]
        if nested:  # export/<dataset>/ also holds export/<dataset>/<name>/ packages: keep them
            for name in nested:
                os.replace(target / name, package / name)
        os.replace(target, old)
    os.replace(package, target)
    shutil.rmtree(old, ignore_errors=True)


def write_zip(target: Path) -> Path:
    """export/<dataset>[/<name>].zip, written aside and renamed; its files sit in a folder named like the package,
    nested packages of other names left out."""
    zip_path = target.with_suffix(".zip")
    nested = {p for p in target.iterdir() if p.is_dir() and (p / "manifest.json").exists()}
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        staged = Path(work) / target.name
        shutil.copytree(target, staged, ignore=lambda folder, names: [n for n in names if Path(folder, n) in nested])
        archive = shutil.make_archive(str(Path(work) / "package"), "zip", root_dir=work, base_dir=target.name)
        os.replace(archive, zip_path)
    return zip_path


if __name__ == "__main__":
    main()
