"""export.py and its package: the demo ensemble (2 archs x 3 folds, flip TTA) packaged, then run with python -I from
another folder, as on a machine that has never seen the repo."""
import ast
import filecmp
import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pandas as pd
import pytest

import ensemble
import export
import infer
from conftest import ROOT, infer_args, paths
from src import packaging

PORTABLE = ROOT / "src" / "portable"
# What a package may import: its own portable/ (relatively), the standard library, and its requirements.txt.
ALLOWED = {"cv2", "numpy", "PIL", "scipy", "torch", "ttach", "segmentation_models_pytorch", "timm", "safetensors",
           "tqdm", "pydicom", "tifffile", "onnxruntime"}


def run_package(package: Path, cwd: Path, *flags) -> subprocess.CompletedProcess:
    cwd.mkdir(parents=True, exist_ok=True)
    return subprocess.run([sys.executable, "-I", str(package / "predict.py"), *map(str, flags)], cwd=cwd,
                          capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def ensembled(trained_dir, tmp_path_factory):
    """The demo ensemble of flip TTA, in a folder of this module's own (preds and ensemble)."""
    work = tmp_path_factory.mktemp("export")
    infer.main([*infer_args(trained_dir), "--preds-dir", str(work / "preds"), "--tta", "flip"])
    ensemble.main(["--dataset", "demo", *paths(trained_dir), "--preds-dir", str(work / "preds"),
                   "--out-dir", str(work / "ensemble"), "--tta", "flip", "--figures", "0"])
    return trained_dir, work


def export_args(workdir: Path, work: Path, *flags) -> list:
    return ["--dataset", "demo", *paths(workdir), "--ensemble-dir", str(work / "ensemble"),
            "--out-dir", str(work / "export"), *flags]


@pytest.fixture(scope="module")
def exported(ensembled):
    workdir, work = ensembled
    export.main(export_args(workdir, work, "--zip"))
    return workdir, work, work / "export" / "demo"


def test_the_package_writes_ensemble_pys_submission_from_any_folder(exported, tmp_path, capsys):
    workdir, work, package = exported
    manifest = json.loads((package / "manifest.json").read_text())
    models = manifest["models"]
    assert [(m["run"], m["fold"]) for m in models] == [(r, f) for r in ("unet-tu-resnet10t", "unetpp-tu-resnet10t")
                                                      for f in range(3)]
    assert {m["tta"] for m in models} == {"flip"} and {m["weight"] for m in models} == {1.0}
    scores = json.loads((work / "ensemble" / "demo" / "scores.json").read_text())
    assert manifest["postprocess"] == scores["postprocess"] and manifest["task"] == "binary"
    assert manifest["parity"] == f"4 of 4 test masks identical to {work / 'ensemble' / 'demo' / 'submission.csv'}"
    assert manifest["images_per_s"] > 0 and manifest["versions"]["torch"] and len(manifest["commit"]) >= 40
    assert sorted(p.name for p in (package / "weights").iterdir()) == sorted(
        f"{m['run']}-fold{m['fold']}.safetensors" for m in models)
    assert "torch==" in (package / "requirements.txt").read_text() and "Kaggle" in (package / "README.md").read_text()
    # Copied elsewhere and run with -I from a third folder: the project is nowhere on its path.
    copy = shutil.copytree(package, tmp_path / "elsewhere" / "pkg")
    index = pd.read_csv(workdir / "data" / "demo" / "index.csv", dtype={"id": str})
    images = tmp_path / "test_images"
    images.mkdir()
    for row in index[index["split"] == "test"].itertuples():
        shutil.copy(workdir / "data" / "demo" / row.file, images / Path(row.file).name)
    done = run_package(copy, tmp_path / "cwd", "--images", images, "--out", tmp_path / "cwd" / "sub.csv")
    assert done.returncode == 0, done.stderr
    assert "images/s" in done.stdout and "10,000 images: about" in done.stdout
    assert (tmp_path / "cwd" / "sub.csv").read_text() == (work / "ensemble" / "demo" / "submission.csv").read_text()
    assert not (tmp_path / "cwd" / "masks").exists() and sorted(p.name for p in (tmp_path / "cwd").iterdir()) == ["sub.csv"]


def test_the_package_holds_the_projects_own_modules_byte_for_byte(exported):
    package = exported[2]
    for path in PORTABLE.glob("*.py"):
        copied = package / ("predict.py" if path.name == packaging.TEMPLATE else f"portable/{path.name}")
        assert filecmp.cmp(path, copied, shallow=False), f"{copied} drifted from {path}"
    assert sorted(p.name for p in (package / "portable").glob("*.py")) == sorted(
        p.name for p in PORTABLE.glob("*.py") if p.name != packaging.TEMPLATE)


def test_the_portable_modules_import_only_each_other_and_the_packages_requirements():
    for path in PORTABLE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level:
                assert (PORTABLE / f"{node.module}.py").exists(), f"{path.name}: from .{node.module}"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [node.module] if isinstance(node, ast.ImportFrom) else [a.name for a in node.names]
                for name in names:
                    top = name.split(".")[0]
                    assert top in ALLOWED or top in sys.stdlib_module_names or \
                        (path.name == packaging.TEMPLATE and top == "portable"), f"{path.name} imports {name}"


def test_the_project_runs_the_portable_functions():
    """ensemble.py's masks and infer.py's maps come from the very functions a package runs."""
    from src import predict
    from src.portable import maps, models, torch_model
    assert ensemble.final_mask is maps.final_mask and predict.read_mean.__globals__["mean_maps"] is maps.mean_maps
    assert predict.with_tta is torch_model.with_tta and predict.predict_uint8 is torch_model.predict_uint8
    assert predict.ready is models.ready and infer.at_level is models.at_level


def test_the_zip_unpacked_anywhere_runs_the_same(exported, tmp_path):
    workdir, work, package = exported
    with zipfile.ZipFile(work / "export" / "demo.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    unpacked = tmp_path / "unzipped" / "demo"
    assert filecmp.dircmp(package, unpacked).diff_files == []
    assert sorted(p.relative_to(unpacked) for p in unpacked.rglob("*")) == sorted(
        p.relative_to(package) for p in package.rglob("*") if "__pycache__" not in p.parts)


def test_bad_packages_and_inputs_end_in_one_line(exported, tmp_path):
    workdir, work, package = exported
    broken = shutil.copytree(package, tmp_path / "broken")
    weights = sorted((broken / "weights").iterdir())
    with open(weights[0], "r+b") as f:  # one byte of the first model changed
        f.seek(200)
        byte = f.read(1)
        f.seek(200)
        f.write(bytes([byte[0] ^ 1]))
    weights[1].unlink()
    images = tmp_path / "images"
    images.mkdir()
    (images / "broken.png").write_bytes(b"not a png")
    checks = {"differs from the file exported": broken, "is missing from the package": broken, "broken.png": package}
    for expected, folder in checks.items():
        done = run_package(folder, tmp_path / "cwd", "--images", images, "--out", tmp_path / "cwd" / "sub.csv")
        lines = done.stderr.strip().splitlines()
        assert done.returncode == 1 and len(lines) == 1 and expected in lines[0] and "Traceback" not in done.stderr, \
            done.stderr
        assert not (tmp_path / "cwd" / "sub.csv").exists()
        if folder is broken:
            shutil.copyfile(package / "weights" / weights[0].name, weights[0])  # then the missing one is found
