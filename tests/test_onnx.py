"""ONNX export (src/onnx_export.py) and its torch-free runner (src/portable/onnx_model.py) against PyTorch and ttach."""
import shutil
import subprocess
import sys

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import ROOT
from src.portable.deep_supervision import level_model
from src.models import create_model
from src.onnx_export import check_onnx, export_onnx
from src.portable.onnx_model import OnnxModel
from src.portable.torch_model import with_tta

DECODER = "32,16,16,8,8"
MODELS = {"unet": lambda classes: create_model("unet", "tu-test_resnet", 3, classes, "none", DECODER),
          "unetpp": lambda classes: create_model("unetpp", "mobilenet_v2", 3, classes, "none", DECODER),
          "unetpp_ds-L2": lambda classes: level_model(create_model("unetpp_ds", "resnet18", 3, classes, "none",
                                                                   DECODER), "L2", "binary")}
TASKS = {"binary": 1, "multiclass": 3}


def images(*shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(model, path) per architecture and task, each exported once (untrained weights, seeded)."""
    folder, made = tmp_path_factory.mktemp("onnx"), {}

    def get(arch: str, task: str):
        if (arch, task) not in made:
            torch.manual_seed(0)
            model = MODELS[arch](TASKS[task]).eval()
            made[arch, task] = model, export_onnx(model, task, 3, folder / f"{arch}-{task}.onnx")
        return made[arch, task]
    return get


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("arch", MODELS)
def test_onnxruntime_predicts_what_pytorch_does_at_other_batches_and_sizes(exported, arch, task):
    model, path = exported(arch, task)
    # exported on one 64 x 64 image: other batch sizes, a larger and a non-square size prove the dynamic axes
    report = check_onnx(model, task, path, [images(2, 3, 64, 64), images(3, 3, 96, 64, seed=1)])
    assert report["ok"], report
    assert report["max_abs"] < 1e-5
    assert OnnxModel(path).predict(images(1, 3, 64, 64)).shape == (1, TASKS[task], 64, 64)


def test_a_multilabel_model_exports_a_sigmoid_per_label(tmp_path):
    torch.manual_seed(0)
    model = MODELS["unet"](2).eval()  # two labels that may overlap: no background channel, no softmax
    path = export_onnx(model, "multilabel", 3, tmp_path / "multilabel.onnx")
    batch = images(2, 3, 64, 64)
    assert check_onnx(model, "multilabel", path, [batch])["ok"]  # against the model's own sigmoids
    probabilities = OnnxModel(path).predict(batch)
    assert probabilities.shape == (2, 2, 64, 64) and not np.allclose(probabilities.sum(axis=1), 1, atol=1e-3)


def test_check_onnx_tells_when_the_file_is_not_the_model(exported):
    _, path = exported("unet", "binary")
    torch.manual_seed(1)
    other = MODELS["unet"](1).eval()
    report = check_onnx(other, "binary", path, [images(1, 3, 64, 64)])
    assert not report["ok"] and report["max_abs"] > 1e-3


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_numpy_tta_equals_ttach_on_the_pytorch_model(exported, tta, task):
    model, path = exported("unet", task)
    batch = images(2, 3, 64, 96, seed=2)  # non-square: d4's turns change the shape the session sees
    with torch.no_grad():
        expected = with_tta(model, task, tta)(torch.from_numpy(batch)).numpy()
    got = OnnxModel(path).predict(batch, tta)
    np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-5)
    plain = OnnxModel(path).predict(batch)
    assert np.abs(plain - expected).max() > 1e-4  # the views differ, so the comparison above tests the TTA


def test_the_runner_refuses_an_unknown_tta_and_images_of_the_wrong_shape(exported):
    _, path = exported("unet", "binary")
    session = OnnxModel(path)
    with pytest.raises(ValueError, match="choose none, flip or d4"):
        session.predict(images(1, 3, 64, 64), "d8")
    with pytest.raises(ValueError, match="N x 3 x H x W"):
        session.predict(images(1, 1, 64, 64))


def test_cuda_without_a_cuda_onnxruntime_is_refused_in_one_sentence(exported, monkeypatch):
    _, path = exported("unet", "binary")
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(ValueError, match="no CUDA provider; install onnxruntime-gpu"):
        OnnxModel(path, device="cuda")
    with pytest.raises(ValueError, match="choose cpu or cuda"):
        OnnxModel(path, device="tpu")


def test_the_portable_runner_predicts_without_torch_or_the_project(exported, tmp_path):
    """As the exported package holds it: portable/ alone on sys.path, run in isolated mode."""
    _, path = exported("unet", "binary")
    shutil.copytree(ROOT / "src" / "portable", tmp_path / "portable")
    probe = (f"import sys; sys.path.insert(0, {str(tmp_path)!r}); import numpy as np; "
             "from portable.onnx_model import OnnxModel; "
             f"probs = OnnxModel({str(path)!r}).predict(np.zeros((1, 3, 64, 64), np.uint8), 'd4'); "
             "print(probs.shape, sorted(m for m in ('torch', 'src', 'sklearn', 'pandas') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-I", "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "(1, 1, 64, 64) []"
