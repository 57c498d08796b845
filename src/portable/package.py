"""An exported ensemble's predictor: a folder of images -> submission.csv (and masks), with the models, TTA and
post-processing that manifest.json lists, averaged in memory; no file per model.

Runs inside an exported package (its predict.py calls main) as portable/package.py, with only the packages of its
requirements.txt: the project's own modules, copied at export, so the masks are those ensemble.py writes.
"""
import argparse
import hashlib
import json
import sys
import time
from importlib import metadata
from pathlib import Path

from .files import write_atomic
from .images import as_size
from .labels import label_order, to_labels
from .maps import final_mask, uint8_maps
from .predictor import Model, file_batches, image_files, predict
from .submission import mask_codes, read_sample, staged, submission_text
from .volumes import case_files, channel_names, finish_case, volume_batches, volume_files, write_mask

CHECKED_VERSIONS = {"torch": ("torch", "segmentation_models_pytorch", "timm"), "onnx": ("onnxruntime",)}


class PackageError(ValueError):
    """A package or an input that cannot be used; one sentence naming the file and what to do."""


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Write submission.csv for a folder of images with the ensemble "
                                                 "this folder holds (manifest.json): python -I predict.py --images "
                                                 "DIR --out submission.csv")
    parser.add_argument("--images", type=Path, required=True, help="the folder of images to segment")
    parser.add_argument("--out", type=Path, default=Path("submission.csv"), help="the submission file to write")
    parser.add_argument("--masks-dir", type=Path, help="also write each mask as <image>.png here (0/255 for binary, "
                                                       "the class index for multiclass)")
    parser.add_argument("--sample-submission", type=Path,
                        help="the competition's sample_submission.csv: follow its rows and columns exactly (default: "
                             "the format manifest.json records, that of the train CSV)")
    parser.add_argument("--volumes-dir", type=Path, help="a package of volumes: where each case's mask is written as "
                                                         "<case>.nii.gz (default: volumes/ beside --out)")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda where a GPU is found, else cpu")
    parser.add_argument("--batch-size", type=int, default=32)
    return parser.parse_args(argv)


def main(argv=None, folder: Path | None = None) -> None:
    """predict.py's command line; folder: the package's (predict.py's own)."""
    try:
        run(Path(folder or Path(__file__).resolve().parents[1]), parse_args(argv))
    except (PackageError, ValueError, OSError) as error:  # image files name themselves (images.InputError)
        lines = str(error).strip().splitlines()
        sys.exit(f"predict: {lines[-1] if lines else repr(error)}")


def run(folder: Path, args) -> None:
    manifest = check_package(folder)
    warn_versions(manifest)
    paths = volume_files(args.images) if "volumes" in manifest else image_files(args.images)
    if not paths:
        raise PackageError(f"--images {args.images} holds no NIfTI volumes (.nii, .nii.gz), which this package reads")
    if "volumes" in manifest:  # {case: its files}: one per channel, or one
        paths = case_files(paths, len(channel_names(manifest["volumes"])))
    if args.sample_submission:  # its problems before the work
        read_sample(args.sample_submission, manifest["classes"], manifest["submission"])
    device = choose_device(manifest["format"], args.device)
    models = load_models(manifest, folder, device)
    started = time.perf_counter()
    codes = predict_all(models, manifest, paths, args.batch_size, args.masks_dir,
                        args.volumes_dir or args.out.parent / "volumes")
    seconds = time.perf_counter() - started
    text, said = submission_text(codes, manifest["classes"], manifest["submission"], args.sample_submission)
    if said:
        print(f"predict: {said}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)  # --out in a folder not made yet
    write_atomic(args.out, text)
    speed = len(codes) / seconds
    volumes_note = f" ({len(paths)} volumes, in {args.volumes_dir or args.out.parent / 'volumes'}/)" if (
        "volumes" in manifest) else ""
    print(f"predict: {len(codes)} images{volumes_note} in {seconds:.1f} s on {device}: {speed:.2f} images/s (10,000 "
          f"images: about {10_000 / speed / 60:.0f} min); wrote {args.out}"
          + (f" and {args.masks_dir}/" if args.masks_dir else ""))


def file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_package(folder: Path) -> dict:
    """The manifest, once every file it lists is there with the SHA-256 it records."""
    path = folder / "manifest.json"
    if not path.exists():
        raise PackageError(f"{path} not found: this folder is not a complete package; copy or unzip it again")
    manifest = json.loads(path.read_text())
    for name, sha256 in manifest["files"].items():
        if not (folder / name).exists():
            raise PackageError(f"{folder / name} is missing from the package (manifest.json lists it); copy or "
                               f"unzip the package again")
        if file_sha256(folder / name) != sha256:
            raise PackageError(f"{folder / name} differs from the file exported (its SHA-256 is not manifest.json's);"
                               f" copy or unzip the package again")
    return manifest


def warn_versions(manifest: dict) -> None:
    """A warning naming both versions where an installed library is not the one the package was checked with."""
    for name in CHECKED_VERSIONS[manifest["format"]]:
        wanted = manifest["versions"].get(name)
        try:
            installed = metadata.version(name.replace("_", "-"))
        except metadata.PackageNotFoundError:
            installed = None
        if installed != wanted:
            print(f"predict: warning: {name} {installed or 'not installed'} here, {wanted} when exported (parity was "
                  f"checked with {wanted}); masks may differ slightly: pip install -r requirements.txt")


def choose_device(kind: str, asked: str | None) -> str:
    if kind == "onnx":
        import onnxruntime
        gpu = "CUDAExecutionProvider" in onnxruntime.get_available_providers()
    else:
        import torch
        gpu = torch.cuda.is_available()
    if asked == "cuda" and not gpu:
        raise PackageError("--device cuda: no GPU found here (or no CUDA build installed); use --device cpu")
    return asked or ("cuda" if gpu else "cpu")


def load_models(manifest: dict, folder: Path, device: str) -> list:
    """Every model of the ensemble, in the manifest's order (that of ensemble.py's mean), ready to predict."""
    if manifest["format"] == "onnx":
        from .onnx_model import OnnxModel
        return [Model(f"{spec['run']} fold{spec['fold']}", as_size(spec["size"]), spec["weight"],
                      lambda batch, model=OnnxModel(folder / spec["file"], device), tta=spec["tta"]:
                      uint8_maps(model.predict(batch, tta)))
                for spec in manifest["models"]]
    import torch
    from safetensors.torch import load_file

    from .models import at_level, build_model, outputs, ready
    from .torch_model import torch_predictor

    torch_device, models = torch.device(device), []
    for spec in manifest["models"]:
        built = build_model(spec["arch"], spec["encoder"], manifest["channels"] * spec["context"],
                            outputs(manifest["task"], manifest["classes"]),
                            spec["decoder_channels"])
        net = at_level(ready(built, load_file(folder / spec["file"]), torch_device), spec["level"], manifest["task"])
        models.append(Model(f"{spec['run']} fold{spec['fold']}", as_size(spec["size"]), spec["weight"], torch_predictor(
            net, manifest["task"], spec["tta"], spec["window"], spec["sw_batch_size"], torch_device)))
    return models


def predict_all(models: list, manifest: dict, paths: list | dict, batch_size: int, masks_dir: Path | None,
                volumes_dir: Path | None = None) -> dict:
    """{image id: its masks' run-length encodings (submission.mask_codes)}, each mask written to masks_dir where
    given: every image through every model (predictor.predict), its maps averaged and post-processed as ensemble.py
    does (maps.final_mask). A package of volumes reads NIfTI cases (paths: {case: its files}, volumes.case_files)
    as prepare cut them (volumes.volume_batches): its images are their slices, and each case's slice masks are
    stacked into volumes_dir/<case>.nii.gz after the 3D step (volumes.finish_case), which its slices' masks and codes
    then follow."""
    codes, geometry, case_masks = {}, {}, {}
    if "volumes" in manifest:
        batches = volume_batches(paths, manifest["volumes"], manifest["models"][0]["context"], batch_size, geometry)
    else:
        batches = file_batches(paths, manifest["channels"], [model.size for model in models], batch_size)
    with staged(masks_dir) as masks:
        for image_id, size, maps in predict(models, batches, "predict"):
            final = final_mask([(prob, model.weight) for prob, model in zip(maps, models)], size,
                               manifest["postprocess"])
            if not geometry:
                codes[image_id] = mask_codes(image_id, final, manifest["classes"], manifest["submission"], masks,
                                             manifest["task"])
                continue
            case = image_id.rsplit("_", 1)[0]
            case_masks.setdefault(case, []).append((image_id, final))
            shape, header = geometry[case]
            if len(case_masks[case]) == shape[manifest["volumes"]["axis"]]:  # its last slice: the 3D step, write
                ids, finals = zip(*case_masks.pop(case))
                labels, slice_masks = finish_case(list(finals), manifest["volumes"]["axis"], shape,
                                                  manifest["postprocess"].get("largest_3d", []), manifest["task"])
                write_mask(volumes_dir / f"{case}.nii.gz", to_labels(labels, label_order(manifest))
                           if "regions" in manifest else labels, header)  # regions: as nnU-Net writes them
                for i, mask in zip(ids, slice_masks):
                    codes[i] = mask_codes(i, mask, manifest["classes"], manifest["submission"], masks, manifest["task"])
    return codes
