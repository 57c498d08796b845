"""An exported .onnx model (src/onnx_export.py) in onnxruntime, predicting like src/predict.py's with_tta.

numpy and onnxruntime only (no torch): the exported package runs it offline. TTA is ttach's, written in numpy around
the session because ttach works on torch tensors: the same transforms in the same order (flip: identity, horizontal
flip; d4: horizontal flip off then on, each with 0, 90, 180, 270 degree turns), each undone on the output, and
their mean. tests/test_onnx.py holds it equal to ttach's wrapper on the PyTorch model.
"""
import numpy as np
import onnxruntime as ort

# (horizontal flip, quarter turns) per view, in ttach's order (itertools.product of HorizontalFlip, Rotate90 params)
TTA_VIEWS = {"none": [(False, 0)], "flip": [(False, 0), (True, 0)],
             "d4": [(flip, turns) for flip in (False, True) for turns in range(4)]}
PROVIDERS = {"cpu": ["CPUExecutionProvider"], "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"]}


class OnnxModel:
    """float32 N x C x H x W images holding 0..255 -> probabilities N x classes x H x W (sigmoid or softmax), any
    batch and size the model takes (multiples of 32 for smp's encoders). threads: onnxruntime's intra-op threads
    (0: its default, one per core)."""

    def __init__(self, path, device: str = "cpu", threads: int = 0):
        if device not in PROVIDERS:
            raise ValueError(f"unknown device '{device}'; choose cpu or cuda")
        if device == "cuda" and "CUDAExecutionProvider" not in ort.get_available_providers():
            raise ValueError(f"--device cuda: this onnxruntime ({ort.__version__}) has no CUDA provider; install "
                             "onnxruntime-gpu in place of onnxruntime, or use --device cpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(path), options, providers=PROVIDERS[device])
        if self.session.get_providers()[0] != PROVIDERS[device][0]:  # onnxruntime falls back to the CPU with a log line
            raise ValueError(f"--device {device}: onnxruntime could not start {PROVIDERS[device][0]} for {path} (its "
                             "log above says why); fix the CUDA install or use --device cpu")
        self.input = self.session.get_inputs()[0]
        self.channels = self.input.shape[1]

    def predict(self, images: np.ndarray, tta: str = "none") -> np.ndarray:
        """Mean probabilities over the TTA views (none, flip or d4) of a uint8 or float batch N x C x H x W."""
        if tta not in TTA_VIEWS:
            raise ValueError(f"unknown --tta '{tta}'; choose none, flip or d4")
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[1] != self.channels:
            raise ValueError(f"images of shape {images.shape}: the model takes N x {self.channels} x H x W")
        images = images.astype(np.float32, copy=False)
        total = None
        for flip, turns in TTA_VIEWS[tta]:
            view = np.rot90(images[..., ::-1] if flip else images, turns, axes=(2, 3))
            probs = self.session.run(None, {self.input.name: np.ascontiguousarray(view)})[0]
            probs = np.rot90(probs, -turns, axes=(2, 3))
            probs = probs[..., ::-1] if flip else probs
            total = probs if total is None else total + probs
        return np.ascontiguousarray(total / len(TTA_VIEWS[tta]))
