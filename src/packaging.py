"""The pieces of an exported package (export.py tells the story): which models an ensemble's test masks used, their
weights as safetensors, the copied code (src/portable/), manifest.json, requirements.txt and README.md, and the
parity of the package's submission with ensemble.py's."""
import json
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

from src import runs as ledger
from src.config import load_run_config
from src.portable.images import read_image
from src.portable.package import file_sha256
from src.portable.volumes import SUFFIXES

PORTABLE = Path(__file__).resolve().parent / "portable"
TEMPLATE = "predict_main.py"  # copied as the package's predict.py, not into portable/
ROOT = PORTABLE.parents[1]
# What a package needs installed, by format (names as pip knows them); OpenCV is whichever wheel is installed here.
NEEDS = {"torch": ["torch", "segmentation-models-pytorch", "timm", "ttach", "safetensors"],
         "onnx": ["onnxruntime"]}
COMMON = ["numpy", "pillow", "tqdm", "pydicom"]
OPENCV = ("opencv-python-headless", "opencv-python", "opencv-contrib-python-headless", "opencv-contrib-python")
PIXEL_AGREEMENT = 0.999  # --half and onnx: the least share of each image's pixels on which the masks agree


class ExportError(ValueError):
    """An ensemble that cannot be packaged as it is; one sentence with the fix."""


def version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def requirements(kind: str, window: bool = False, volumes: bool = False) -> list:
    """Exact versions of what the package imports, as installed here (where its parity was checked); MONAI where a
    model predicts by sliding window (portable/sliding.py), nibabel and scipy (its 3D post-processing) where it reads
    volumes (portable/volumes.py)."""
    opencv = next((name for name in OPENCV if version(name)), OPENCV[0])
    return [f"{name}=={version(name)}" for name in [*NEEDS[kind], *(["monai"] if window else []),
                                                     *(["nibabel", "scipy"] if volumes else []), *COMMON, opencv]
            if version(name)]


def commit() -> str:
    done = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT, capture_output=True,
                           text=True).stdout.strip()
    return (done.stdout.strip() + ("+uncommitted changes" if dirty else "")) if done.returncode == 0 else "unknown"


def models_of(scores: dict, selection: dict, dataset: str, part: str, dir_flags: dict) -> list:
    """Every model whose predictions made the masks of `part` (test, or sets/<name>), in ensemble.py's order: each run
    of scores.json at its TTA and level, each fold of its split, with its weights file and blend weight (its run's,
    shared out among the run's folds, as ensemble.py weighs them). Refused, with
    the infer.py command that renews them, where a run's weights changed since they predicted."""
    models = []
    for run, summary in scores["runs"].items():
        predictions, level = test_set(run, summary, selection, dataset), summary.get("level")
        record = predictions.provenance
        if not record:
            raise ExportError(f"{predictions.folder / ledger.PROVENANCE} not found: the predictions ensemble.py read "
                              f"for {run} are gone; run infer.py and ensemble.py again")
        name = part.split("/", 1)[1] if part.startswith("sets/") else None
        folds = [f for f in sorted(predictions.weights(part)) if f < record["split"]["k"]]  # infer.py recorded them
        stale = predictions.stale_folds(part, folds)
        if stale or not folds:
            images = record.get("sets", {}).get(name, {}).get("images") if name else None
            renew = predictions.renew_command(dataset, stale or [0], dir_flags, images, name)
            raise ExportError(f"{predictions.folder} ({run}, fold {(stale or ['?'])[0]}): its {part} predictions were "
                              f"not made by the run's current weights, so the ensemble's masks are stale; renew them "
                              f"(`{renew}`), run ensemble.py again, then export")
        run_dir = Path(record["run_dir"])
        for fold in folds:
            cfg, meta = load_run_config(run_dir / f"fold{fold}")
            models.append({"run": run, "fold": fold, "arch": cfg.arch, "encoder": cfg.encoder,
                           "decoder_channels": cfg.decoder_channels, "size": cfg.size, "tta": summary["tta"],
                           "level": level, "weight": scores["weights"][run] / len(folds), "meta": meta,
                           "context": cfg.context,
                           "window": predictions.windows(part).get(fold), "sw_batch_size": cfg.sw_batch_size,
                           "weights_file": ledger.weights_file(run_dir, fold, selection["checkpoint"])})
    contexts = sorted({m["context"] for m in models})
    if len(contexts) > 1:  # the package reads each volume once, with one view of its slices
        raise ExportError(f"the ensemble's runs read slices with --context {' and '.join(map(str, contexts))}; a "
                          f"package takes one: ensemble runs of one context (ensemble.py --runs), then export")
    return models


def test_set(run: str, summary: dict, selection: dict, dataset: str) -> ledger.PredictionSet:
    """The prediction set of a run (scores.json's summary of it) whose test or --set masks the ensemble wrote: its TTA
    and, for unetpp_ds, its level chosen for them (other runs have none)."""
    level = summary.get("level")
    return ledger.PredictionSet(run, selection["checkpoint"], summary["tta"], level, ledger.set_folder(
        selection["preds_dir"], dataset, run, summary["tta"], selection["checkpoint"], level))


def copy_code(package: Path) -> None:
    """src/portable/ as the package's portable/, its template as predict.py: the project's own code, byte for byte."""
    (package / "portable").mkdir(parents=True)
    for path in sorted(PORTABLE.glob("*.py")):
        shutil.copyfile(path, package / ("predict.py" if path.name == TEMPLATE else f"portable/{path.name}"))


def write_weights(package: Path, models: list, half: bool) -> None:
    """Each model's state dict as weights/<run>-fold<k>.safetensors (no pickle: loading runs no code); --half
    stores floats as float16 (the model computes in float32 as trained)."""
    (package / "weights").mkdir(parents=True, exist_ok=True)
    for model in models:
        state = torch.load(model["weights_file"], map_location="cpu", weights_only=True)
        state = {k: (v.half() if half and v.is_floating_point() else v).contiguous() for k, v in state.items()}
        model["file"] = f"weights/{model['run']}-fold{model['fold']}.safetensors"
        save_file(state, package / model["file"])


def write_onnx(package: Path, models: list, images: list) -> None:
    """Each model (at its level) with its sigmoid or softmax as weights/<run>-fold<k>.onnx (opset 17, dynamic batch,
    height and width: src/onnx_export.py), checked against PyTorch on the parity images at the model's size within
    rtol 1e-3 / atol 1e-5 (smp's example); the check goes into the manifest, and a model outside it stops the export."""
    from src.onnx_export import check_onnx, export_onnx
    from src.portable.images import read_as
    from src.portable.maps import model_input
    from src.portable.models import at_level
    from src.predict import load_trained_model

    (package / "weights").mkdir(parents=True, exist_ok=True)
    for model in models:
        run_dir = model["weights_file"].parent
        net = at_level(load_trained_model(run_dir, model["weights_file"], torch.device("cpu"))[0], model["level"],
                       model["meta"]["task"])
        model["file"] = f"weights/{model['run']}-fold{model['fold']}.onnx"
        export_onnx(net, model["meta"]["task"], model["meta"]["channels"], package / model["file"])
        batch = np.stack([model_input(read_as(p, model["meta"]["channels"]), model["size"]) for p in images])
        model["onnx_check"] = check_onnx(net, model["meta"]["task"], package / model["file"], [batch])
        if not model["onnx_check"]["ok"]:
            raise ExportError(f"{model['run']} fold {model['fold']}: onnxruntime differs from PyTorch by up to "
                              f"{model['onnx_check']['max_abs']:.2e} (rtol 1e-3, atol 1e-5 allowed); export "
                              f"--format torch")


def manifest_of(package: Path, models: list, scores: dict, meta: dict, kind: str, half: bool, source: Path) -> dict:
    """manifest.json: the ensemble's models, TTA, levels, weights and post-processing, the input rules, the versions,
    and each file's SHA-256 (predict.py refuses a file that differs). kind: torch or onnx; half: float16 weights."""
    versions = {name: version(name.replace("_", "-")) for name in
                ("torch", "segmentation_models_pytorch", "timm", "ttach", "onnxruntime", "numpy", "opencv-python-headless",
                 *(["monai"] if any(m["window"] for m in models) else []))}
    return {"format": kind, "half": half, "dataset": scores["dataset"], "ensemble": str(source),
            "commit": commit(), "task": meta["task"], "classes": meta["classes"], "channels": meta["channels"],
            "submission": meta["submission"],
            "input": {"channels": meta["channels"], "colour_rule": "8-bit files as they are; 16-bit and DICOM windowed "
                      "to 8 bits between their 0.5th and 99.5th percentiles; RGB to grey by luminance, alpha dropped, "
                      "grey replicated to RGB (portable/images.py)",
                      "resize": "cv2 INTER_AREA to each model's size; maps back to the image's size bilinear",
                      "normalisation": "ImageNet mean and std on 0-255 (their averages for grey)"},
            "postprocess": scores["postprocess"],
            **{k: meta[k] for k in ("regions", "regions_class_order") if k in meta},
            **({"volumes": {k: meta["volumes"][k] for k in ("axis", "ct", "slice_size", "modality", "normalisation",
                                                            "axis_rule", "size_rule")}} if "volumes" in meta else {}),
            "models": [{k: v for k, v in m.items() if k not in ("meta", "weights_file")} for m in models],
            "versions": {k: v for k, v in versions.items() if v}, "python": sys.version.split()[0],
            "files": {str(p.relative_to(package)): file_sha256(p) for p in sorted(package.rglob("*"))
                      if p.is_file() and p.name != "manifest.json"}}


def write_readme(package: Path, manifest: dict) -> None:
    models = manifest["models"]
    runs = sorted({m["run"] for m in models})
    (package / "README.md").write_text(f"""# {manifest['dataset']} ensemble: {len(models)} models ({', '.join(runs)})

Writes `submission.csv` for a folder of images, offline, with the models, test-time augmentation and post-processing
that ensemble.py chose (all listed in `manifest.json`; format {manifest['format']}).

    pip install -r requirements.txt   # exact versions; a differing torch/smp is warned about, then used
    python -I predict.py --images path/to/test_images --out submission.csv [--masks-dir masks] [--device cpu|cuda]

The rows are in the competition's format as the train CSV gave the labels (manifest.json's "submission"); with
`--sample-submission sample_submission.csv` they follow its rows and columns exactly.

On Kaggle with internet off: upload this folder (or its zip) as a dataset, add it to the notebook (Add Input), then

    !python -I /kaggle/input/<this-dataset>/predict.py --images /kaggle/input/<competition>/test \\
        --sample-submission /kaggle/input/<competition>/sample_submission.csv --out /kaggle/working/submission.csv

The notebook's preinstalled torch, segmentation-models-pytorch and timm are used; predict.py warns where their
versions differ from those the package was checked with. manifest.json records the parity with ensemble.py's
submission checked at export, and the images/s measured then.
""")


def predict_here(models: list, scores: dict, meta: dict, images: Path, work: Path, device: str | None) -> tuple:
    """The masks folder of a folder of images predicted in this process by the ensemble's models from
    their runs' own .pt files (not the package's copies), through the prediction loop and averaging a package runs:
    what the package's masks are held to where the ensemble wrote none to compare them with."""
    from src.portable.models import at_level
    from src.portable.package import choose_device, predict_all
    from src.portable.predictor import Model, image_files
    from src.portable.torch_model import torch_predictor
    from src.predict import load_trained_model
    device = torch.device(choose_device("torch", device))
    built = [Model(f"{m['run']} fold{m['fold']}", m["size"], m["weight"], torch_predictor(
        at_level(load_trained_model(m["weights_file"].parent, m["weights_file"], device)[0], m["level"], meta["task"]),
        meta["task"], m["tta"], m["window"], m["sw_batch_size"], device)) for m in models]
    predict_all(built, {**meta, "postprocess": scores["postprocess"]}, image_files(images), 32, work / "masks")
    return work / "masks"


def image_folder(folder: Path, files: dict) -> Path:
    """A folder of links named <id><suffix> to the images whose masks the ensemble wrote (files: {id: path}; a
    volume's id is its case)."""
    folder.mkdir(parents=True)
    for image_id, path in files.items():
        suffix = next((s for s in SUFFIXES if Path(path).name.lower().endswith(s)), Path(path).suffix)  # .nii.gz
        (folder / f"{image_id}{suffix}").symlink_to(Path(path).resolve())
    return folder


def run_package(package: Path, images: Path, work: Path, device: str | None) -> tuple:
    """Run the package as a new user would, from another folder with `python -I` (-B: no __pycache__ left in it):
    (its masks folder, the images/s it printed). A failed run is an ExportError with its last line."""
    package, images, work = (Path(p).resolve() for p in (package, images, work))  # the run's cwd is work
    command = [sys.executable, "-I", "-B", str(package / "predict.py"), "--images", str(images), "--out",
               str(work / "submission.csv"), "--masks-dir", str(work / "masks"), *(["--device", device] if device else [])]
    done = subprocess.run(command, cwd=work, capture_output=True, text=True)
    last = (done.stdout + done.stderr).strip().splitlines()[-1:] or ["no output"]
    if done.returncode != 0:
        raise ExportError(f"the package failed on the ensemble's images ({last[0]}); nothing was written")
    speed = next((float(w) for line in done.stdout.splitlines() if line.startswith("predict: ")
                  for w, unit in zip(line.split(), line.split()[1:]) if unit.startswith("images/s")), None)
    return work / "masks", speed


def parity(ensemble_masks: Path, package_masks: Path, exact: bool, what: str = "test",
           against: str | None = None) -> tuple:
    """(passed, the line to print): masks identical to the reference's (exact), else masks that agree on at least
    PIXEL_AGREEMENT of each image's pixels; the submission rows are written from them by the same code in any
    format. against: what the line calls the reference (its folder by default)."""
    ids = sorted(p.stem for p in Path(ensemble_masks).glob("*.png"))
    agreement = {i: float(np.mean(read_image(ensemble_masks / f"{i}.png") == read_image(package_masks / f"{i}.png")))
                 if (package_masks / f"{i}.png").exists() else 0.0 for i in ids}
    if exact:
        same = [i for i, share in agreement.items() if share == 1]
        return len(same) == len(ids), f"{len(same)} of {len(ids)} {what} masks identical to {against or ensemble_masks}"
    close = [i for i, share in agreement.items() if share >= PIXEL_AGREEMENT]
    worst = min(agreement.values())
    return len(close) == len(ids), (f"{len(close)} of {len(ids)} {what} masks agree with {against or ensemble_masks} on >= "
                                    f"{PIXEL_AGREEMENT:.1%} of their pixels (the least: {worst:.4%})")


def manifest_text(manifest: dict) -> str:
    return json.dumps(manifest, indent=2, default=str) + "\n"
