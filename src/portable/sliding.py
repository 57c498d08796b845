"""Sliding-window prediction for runs trained on patches (--patch below --size): MONAI's sliding_window_inference,
the medical-imaging library's maintained implementation (Gaussian importance weights, sigma 1/8 of the window, as
nnU-Net; the last window flush with the border; zero weights never divided by; images smaller than the window padded).

The window slides over the image at the working size (--size) the run was trained at; the map is then resized to
the original size as for any run. Test-time augmentation runs inside the predictor, on each batch of windows: the
windows are P x P squares, so ttach's flips and 90-degree turns undo exactly, and the TTA wrapper is the one a
whole-image run uses. Memory grows with --sw-batch-size windows, not with the image (the output map excepted).
MONAI is imported here only, where a window is used; an exported package runs this same file (torch packages only:
MONAI's window is torch code, so an ONNX package cannot hold a patched run).
"""
import torch

from .images import sides


def sliding_window(predictor, images: torch.Tensor, patch: int, overlap: float, sw_batch_size: int) -> torch.Tensor:
    """N x C x H x W images (any size, uint8 or float) -> N x K x H x W float32 probabilities: predictor (images ->
    probabilities, TTA inside it) on P x P windows, sw_batch_size at a time, merged with Gaussian weights."""
    from monai.inferers import sliding_window_inference
    # A float input: MONAI sums the windows into a map of the input's dtype (uint8 would overflow); the predictor
    # normalises uint8 and float 0..255 alike.
    return sliding_window_inference(images.float(), roi_size=(patch, patch), sw_batch_size=sw_batch_size,
                                    predictor=lambda windows: predictor(windows).float(), overlap=overlap,
                                    mode="gaussian", sigma_scale=0.125, padding_mode="constant", cval=0.0)


class SlidingWindow(torch.nn.Module):
    """A predictor (images -> probabilities) applied by sliding window: a drop-in for the predictor itself."""

    def __init__(self, predictor: torch.nn.Module, patch: int, overlap: float, sw_batch_size: int):
        super().__init__()
        self.predictor, self.patch, self.overlap, self.sw_batch_size = predictor, patch, overlap, sw_batch_size

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return sliding_window(self.predictor, images, self.patch, self.overlap, self.sw_batch_size)


def window_of(size, patch: int, overlap: float) -> dict | None:
    """The record of a prediction's window ({"patch", "overlap"}), or None for a run that predicts the whole image:
    what a prediction file, prediction.json and a package's manifest say of it. size: N or (H, W)."""
    return {"patch": int(patch), "overlap": float(overlap)} if 0 < patch < max(sides(size)) else None


def maybe_windowed(predictor: torch.nn.Module, window: dict | None, sw_batch_size: int) -> torch.nn.Module:
    """The predictor by sliding window where the record names one, else the predictor itself."""
    if not window:
        return predictor
    return SlidingWindow(predictor, window["patch"], window["overlap"], sw_batch_size)
