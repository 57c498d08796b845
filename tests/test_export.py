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
from src.portable.images import read_image, write_png

PORTABLE = ROOT / "src" / "portable"
# What a package may import: its own portable/ (relatively), the standard library, and its requirements.txt.
ALLOWED = {"cv2", "numpy", "PIL", "torch", "ttach", "segmentation_models_pytorch", "timm", "safetensors",
           "tqdm", "pydicom", "tifffile", "onnxruntime", "monai", "nibabel", "scipy"}


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
    assert [(m["run"], m["fold"]) for m in models] == [(r, f) for r in ("unet-tu-test_resnet", "unetpp-tu-test_resnet")
                                                      for f in range(3)]
    assert {m["tta"] for m in models} == {"flip"} and {m["weight"] for m in models} == {1 / 3}  # each run's, by fold
    scores = json.loads((work / "ensemble" / "demo" / "scores.json").read_text())
    assert manifest["postprocess"] == scores["postprocess"] and manifest["task"] == "binary"
    assert manifest["parity"] == f"4 of 4 test masks identical to {work / 'ensemble' / 'demo' / 'masks'}"
    assert manifest["images_per_s"] > 0 and manifest["versions"]["torch"] and len(manifest["commit"]) >= 40
    assert sorted(p.name for p in (package / "weights").iterdir()) == sorted(
        f"{m['run']}-fold{m['fold']}.safetensors" for m in models)
    assert "torch==" in (package / "requirements.txt").read_text() and "Kaggle" in (package / "README.md").read_text()
    # Unzipped elsewhere and run with -I from a third folder: the project is nowhere on its path.
    with zipfile.ZipFile(work / "export" / "demo.zip") as archive:
        archive.extractall(tmp_path / "elsewhere")
    copy = tmp_path / "elsewhere" / "demo"
    index = pd.read_csv(workdir / "data" / "demo" / "index.csv", dtype={"id": str})
    images = tmp_path / "test_images"
    images.mkdir()
    for row in index[index["split"] == "test"].itertuples():
        shutil.copy(workdir / "data" / "demo" / row.file, images / Path(row.file).name)
    ours = dict(line.split(",") for line in (work / "ensemble" / "demo" / "submission.csv").read_text().splitlines()[1:])
    sample = tmp_path / "sample_submission.csv"  # the competition's rows: another order, ids with their extension
    sample.write_text("id,rle\n" + "".join(f"{i}.png,1 1\n" for i in sorted(ours, reverse=True)))
    done = run_package(copy, tmp_path / "cwd", "--images", images, "--out", tmp_path / "cwd" / "sub.csv",
                       "--sample-submission", sample)
    assert done.returncode == 0, done.stderr
    assert "images/s" in done.stdout and "10,000 images: about" in done.stdout
    assert (tmp_path / "cwd" / "sub.csv").read_text() == "id,rle\n" + "".join(
        f"{i}.png,{ours[i]}\n" for i in sorted(ours, reverse=True))
    assert not (tmp_path / "cwd" / "masks").exists() and sorted(p.name for p in (tmp_path / "cwd").iterdir()) == ["sub.csv"]


def test_a_dataset_without_test_images_is_said_and_exported_with_parity_on_training_images(ensembled, tmp_path,
                                                                                            capsys):
    """prepare without --test: ensemble.py says its submission.csv holds its header alone, and export.py holds the
    package to the runs' own prediction of training images, made in its process, naming them."""
    workdir, work = ensembled
    shutil.copytree(workdir / "data", tmp_path / "data", ignore=shutil.ignore_patterns("cache"))
    index = pd.read_csv(tmp_path / "data" / "demo" / "index.csv", dtype=str, keep_default_na=False)
    index[index["split"] != "test"].to_csv(tmp_path / "data" / "demo" / "index.csv", index=False)
    where = ["--data-dir", str(tmp_path / "data"), "--folds-dir", str(workdir / "folds")]
    ensemble.main(["--dataset", "demo", *where, "--preds-dir", str(work / "preds"), "--out-dir",
                   str(tmp_path / "ensemble"), "--tta", "flip", "--figures", "0"])
    assert "ensemble: no test images, so submission.csv holds its header alone" in capsys.readouterr().out
    export.main(["--dataset", "demo", *where, "--ensemble-dir", str(tmp_path / "ensemble"), "--out-dir",
                 str(tmp_path / "export")])
    said = capsys.readouterr().out
    first = sorted(index.loc[index["split"] == "train", "id"])[:8]
    assert f"parity on 8 training images, predicted here with the runs' weights: {', '.join(first)}" in said
    assert "parity: 8 of 8 training images' masks identical to this project's own prediction of them" in said
    assert (tmp_path / "export" / "demo" / "manifest.json").exists()


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
    """ensemble.py's masks and infer.py's maps come from the very functions a package runs: one prediction loop, one
    model wrapper, one averaging, one submission writer."""
    from src import predict
    from src.portable import maps, models, package, predictor, submission, torch_model
    assert predict.predict is predictor.predict is package.predict
    assert infer.torch_predictor is torch_model.torch_predictor and infer.at_level is models.at_level
    assert predict.ready is models.ready and package.final_mask is maps.final_mask is ensemble.final_mask
    assert ensemble.mask_codes is submission.mask_codes is package.mask_codes
    assert ensemble.submission_text is submission.submission_text is package.submission_text


def test_the_zip_holds_the_package_as_it_is(exported, tmp_path):
    """It runs the same: the first test runs the unzipped copy."""
    workdir, work, package = exported
    with zipfile.ZipFile(work / "export" / "demo.zip") as archive:
        archive.extractall(tmp_path / "unzipped")
    unpacked = tmp_path / "unzipped" / "demo"
    assert filecmp.dircmp(package, unpacked).diff_files == []
    assert sorted(p.relative_to(unpacked) for p in unpacked.rglob("*")) == sorted(
        p.relative_to(package) for p in package.rglob("*"))


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
    good = shutil.copytree(package, tmp_path / "good")  # run elsewhere: the shared package stays as exported
    checks = {"differs from the file exported": broken, "is missing from the package": broken, "broken.png": good}
    for expected, folder in checks.items():
        done = run_package(folder, tmp_path / "cwd", "--images", images, "--out", tmp_path / "cwd" / "sub.csv")
        lines = [line for line in done.stderr.replace("\r", "\n").splitlines()
                 if line.strip() and "batch/s" not in line]  # tqdm's bar
        assert done.returncode == 1 and len(lines) == 1 and expected in lines[0] and "Traceback" not in done.stderr, \
            done.stderr
        assert not (tmp_path / "cwd" / "sub.csv").exists()
        if folder is broken:
            shutil.copyfile(package / "weights" / weights[0].name, weights[0])  # then the missing one is found


def test_the_onnx_package_runs_without_torch_within_the_tolerances(ensembled, tmp_path, capsys):
    workdir, work = ensembled
    export.main(export_args(workdir, work, "--format", "onnx", "--out-dir", str(tmp_path / "export")))
    printed = capsys.readouterr().out
    package = tmp_path / "export" / "demo"
    manifest = json.loads((package / "manifest.json").read_text())
    assert manifest["format"] == "onnx" and all(m["onnx_check"]["ok"] for m in manifest["models"])
    assert "parity: 4 of 4 test masks agree with" in printed and "within rtol 1e-3, atol 1e-5" in printed
    requirements = (package / "requirements.txt").read_text()
    assert "onnxruntime==" in requirements and "torch" not in requirements
    index = pd.read_csv(workdir / "data" / "demo" / "index.csv", dtype={"id": str})
    images = workdir / "data" / "demo" / "images"
    test_ids = set(index.loc[index["split"] == "test", "id"])
    # torch made unimportable: the ONNX package must not need it
    block = (f"import sys, runpy; sys.modules['torch'] = None; sys.argv = ['predict.py', '--images', {str(images)!r}, "
             f"'--out', 'sub.csv']; runpy.run_path({str(package / 'predict.py')!r}, run_name='__main__')")
    (tmp_path / "cwd").mkdir()
    done = subprocess.run([sys.executable, "-I", "-c", block], cwd=tmp_path / "cwd", capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    rows = pd.read_csv(tmp_path / "cwd" / "sub.csv", dtype=str, keep_default_na=False)
    assert test_ids <= set(rows["id"])


def test_other_versions_warn_and_an_empty_folder_or_a_missing_gpu_end_in_one_line(exported, tmp_path):
    import torch
    package = shutil.copytree(exported[2], tmp_path / "pkg")
    manifest = json.loads((package / "manifest.json").read_text())
    manifest["versions"]["torch"] = "0.0.1"
    (package / "manifest.json").write_text(json.dumps(manifest))
    (tmp_path / "empty").mkdir()
    done = run_package(package, tmp_path / "cwd", "--images", tmp_path / "empty", "--out", tmp_path / "sub.csv")
    assert f"predict: warning: torch {torch.__version__.split('+')[0]}" in done.stdout and "0.0.1 when exported" \
        in done.stdout
    assert done.returncode == 1 and done.stderr.strip() == (f"predict: --images {tmp_path / 'empty'} holds no images "
                                                            f"(.bmp, .dcm, .jpeg, .jpg, .png, .tif, .tiff)")
    if not torch.cuda.is_available():
        done = run_package(package, tmp_path / "cwd", "--images", tmp_path / "empty", "--device", "cuda")
        assert done.returncode == 1 and done.stderr.strip().startswith("predict: --images")  # the folder comes first
        (tmp_path / "one").mkdir()
        shutil.copy(next((exported[0] / "data" / "demo" / "images").iterdir()), tmp_path / "one")
        done = run_package(package, tmp_path / "cwd", "--images", tmp_path / "one", "--device", "cuda")
        assert done.returncode == 1 and done.stderr.strip() == \
            "predict: --device cuda: no GPU found here (or no CUDA build installed); use --device cpu"


def test_export_refuses_stale_predictions_and_a_failed_parity(ensembled, tmp_path, capsys):
    workdir, work = ensembled
    copy = tmp_path / "copy"
    shutil.copytree(work / "ensemble", copy / "ensemble")
    shutil.copytree(work / "preds", copy / "preds")
    source = copy / "ensemble" / "demo"
    selection = json.loads((source / "selection.json").read_text())
    (source / "selection.json").write_text(json.dumps({**selection, "preds_dir": str(copy / "preds")}))
    args = ["--dataset", "demo", *paths(workdir), "--ensemble-dir", str(copy / "ensemble"),
            "--out-dir", str(tmp_path / "export")]
    # One of the ensemble's masks changed by hand: the package's differs, and nothing is written.
    first = sorted((source / "masks").glob("*.png"))[0]
    mask = read_image(first)
    write_png(first, 255 - mask)
    with pytest.raises(SystemExit, match=r"^export: parity failed \(3 of 4 test masks identical to .*\); the package "
                                         r"was not written$"):
        export.main(args)
    assert not (tmp_path / "export" / "demo").exists() and list((tmp_path / "export").iterdir()) == []
    # Retrained weights since the predictions: stale, refused before anything is built.
    record_path = copy / "preds" / "demo" / "unetpp-tu-test_resnet" / "tta-flip" / "prediction.json"
    record = json.loads(record_path.read_text())
    record["test"]["weights"]["1"] = "0" * 64
    record_path.write_text(json.dumps(record))
    with pytest.raises(SystemExit, match=r"^export: .*unetpp-tu-test_resnet/tta-flip \(unetpp-tu-test_resnet, fold 1\): "
                                         r"its test predictions were not made by the run's current weights, so the "
                                         r"ensemble's masks are stale; renew them \(`python infer.py --dataset demo "
                                         r".*--runs unetpp-tu-test_resnet --folds 1 --tta flip"):
        export.main(args)


def test_the_benchmark_measures_a_package_as_a_user_runs_it(exported, tmp_path):
    from src import bench
    workdir, work, package = exported
    measured = bench.package_speed(package, workdir / "data" / "demo" / "images", repeats=1)  # main's: 2 runs
    assert measured["package_images_per_s"] > 0 and measured["package_images"] == 40
    with pytest.raises(SystemExit):  # the command line: --package needs its images
        bench.main(["--package", str(package)])


def test_the_parity_run_gets_absolute_paths_from_a_relative_package(tmp_path, monkeypatch):
    """export.py is run with relative folders (export/<dataset>/...), but the package runs from another folder."""
    import subprocess
    from src import packaging
    seen = {}

    def fake_run(command, cwd, **kwargs):
        seen["command"] = command
        return subprocess.CompletedProcess(command, 0, "predict: 1.0 images/s\n", "")
    monkeypatch.setattr(packaging.subprocess, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    packaging.run_package(Path("export/demo"), Path("images"), Path("work"), None)
    paths = [Path(a) for a in seen["command"][3:] if "/" in a or a in ("images", "work")]
    assert paths and all(p.is_absolute() for p in paths), seen["command"]
