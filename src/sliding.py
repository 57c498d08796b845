"""Sliding-window prediction for runs trained on patches (--patch below --size): MONAI's sliding_window_inference,
the medical-imaging library's maintained implementation (Gaussian importance weights, sigma 1/8 of the window, as
nnU-Net; the last window flush with the border; zero weights never divided by; images smaller than the window padded).

The window slides over the image at the working size (--size) the run was trained at; the map is then resized to
the original size as for any run. Test-time augmentation runs inside the predictor, on each batch of windows: the
windows are P x P squares, so ttach's flips and 90-degree turns undo exactly, and the TTA wrapper is the one a
whole-image run uses. Memory grows with --sw-batch-size windows, not with the image (the output map excepted).
MONAI is imported here only, where a window is used.
"""
import functools

import torch

STRIDE_DEPTH = 5  # smp's encoders at their default depth: the input must divide by their output stride


@functools.lru_cache
def encoder_stride(encoder: str) -> int:
    """The factor smp's encoder reduces its input by (32 for most; what smp's check_input_shape divides by)."""
    from segmentation_models_pytorch.encoders import get_encoder
    return int(get_encoder(encoder, in_channels=3, depth=STRIDE_DEPTH, weights=None).output_stride)


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


def windowed(predictor: torch.nn.Module, cfg) -> torch.nn.Module:
    """What a run predicts with: its predictor (src/predict.py's with_tta: uint8 images -> probabilities) on the whole
    --size image, or, for a run trained on patches, the same predictor by sliding window. cfg: the run's Config,
    with --overlap and --sw-batch-size as the prediction asks (they change predictions, not weights)."""
    return SlidingWindow(predictor, cfg.patch, cfg.overlap, cfg.sw_batch_size) if cfg.tiles else predictor


def windows_per_image(size: int, patch: int, overlap: float) -> int:
    """How many windows cover a size x size image (MONAI's own scan): for infer's summary line."""
    from monai.data.utils import dense_patch_slices
    step = patch if patch >= size else max(1, int(patch * (1 - overlap)))
    return len(dense_patch_slices((size, size), (min(patch, size),) * 2, (step, step)))


def describe(cfg) -> str:
    """'sliding window 128 px, overlap 0.5, 9 windows an image' for a patched run, else ''."""
    if not cfg.tiles:
        return ""
    return (f"sliding window {cfg.patch} px, overlap {cfg.overlap:g}, "
            f"{windows_per_image(cfg.size, cfg.patch, cfg.overlap)} windows an image")


def training_line(cfg) -> str:
    """train.py's announcement of a patched run's rule."""
    return (f"patches: {cfg.patch} px of the {cfg.size} px images (each resized square to --size), "
            f"{cfg.foreground_patches:.0%} drawn around a foreground pixel and the rest anywhere, "
            f"{cfg.patches_per_image} per image an epoch; validated by {describe(cfg)}")
