"""A trained model -> an .onnx file predicting probabilities as src/predict.py does, checked with onnxruntime.

Exporter: torch's TorchScript one (dynamo=False): it traces smp's Unet, Unet++ and the unetpp_ds levels in ~1 s with
errors ~1e-6, where torch.export's (dynamo=True, needs onnxscript) took 10-60 s per tiny model for the same graph.
The graph: Probabilities (src/predict.py: normalize, then sigmoid or softmax) on float32 N x C x H x W input holding
0..255 (what normalize makes of the uint8 batches infer.py feeds it), batch, height and width dynamic as in smp's
examples/convert_to_onnx.ipynb; src/portable/onnx_model.py runs it, with TTA, without torch.
"""
import warnings
from pathlib import Path

import numpy as np
import torch

from src.portable.onnx_model import OnnxModel
from src.portable.torch_model import Probabilities

EXAMPLE_SIZE = 64  # the traced example's height and width; check_onnx() proves other sizes
DYNAMIC = {0: "batch", 2: "height", 3: "width"}


def export_onnx(model: torch.nn.Module, task: str, channels: int, path, opset: int = 17) -> Path:
    """Write the model (put in eval mode) with its sigmoid (binary) or softmax (multiclass) to path; returns path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    wrapped = Probabilities(model.eval(), task).eval()
    device = next(model.parameters()).device
    example = torch.randint(0, 256, (1, channels, EXAMPLE_SIZE, EXAMPLE_SIZE), device=device).float()
    with warnings.catch_warnings():
        # normalize's ImageNet statistics depend only on the channel count, a constant of the model: the trace may
        # keep them as constants, which is what these warnings are about
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module=r"src\.(portable\.)?models")
        torch.onnx.export(wrapped, (example,), str(path), input_names=["images"], output_names=["probabilities"],
                          opset_version=opset, dynamic_axes={"images": DYNAMIC, "probabilities": DYNAMIC},
                          dynamo=False)
    return path


@torch.no_grad()
def check_onnx(model: torch.nn.Module, task: str, path, images: list, rtol: float = 1e-3, atol: float = 1e-5) -> dict:
    """onnxruntime (CPU) against PyTorch on uint8 batches N x C x H x W (any sizes the model takes): the largest
    absolute and relative difference (relative to PyTorch's nonzero values, as numpy.testing reports it) and `ok`:
    every value within atol + rtol * |PyTorch's|."""
    wrapped = Probabilities(model.eval(), task).eval()
    device = next(model.parameters()).device
    session = OnnxModel(path)
    max_abs, max_rel, ok = 0.0, 0.0, True
    for batch in images:
        batch = np.asarray(batch)
        expected = wrapped(torch.from_numpy(batch).to(device)).cpu().numpy()
        got = session.predict(batch)
        if got.shape != expected.shape:
            return {"max_abs": float("inf"), "max_rel": float("inf"), "ok": False}
        difference = np.abs(got.astype(np.float64) - expected)
        nonzero = expected != 0
        max_abs = max(max_abs, float(difference.max()))
        max_rel = max(max_rel, float((difference[nonzero] / np.abs(expected[nonzero])).max(initial=0.0)))
        ok = ok and bool(np.all(difference <= atol + rtol * np.abs(expected)))
    return {"max_abs": max_abs, "max_rel": max_rel, "ok": ok}
