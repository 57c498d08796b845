"""A run's sliding window in the project: which runs predict by window (windowed), how many windows an image takes,
and the lines that describe it. The window itself (MONAI's sliding_window_inference, Gaussian weights) is
src/portable/sliding.py, which an exported package runs too.
"""
import functools

import torch

from src.portable.images import sides, size_text
from src.portable.sliding import maybe_windowed, window_of

STRIDE_DEPTH = 5  # smp's encoders at their default depth: the input must divide by their output stride


@functools.lru_cache
def encoder_stride(encoder: str) -> int:
    """The factor smp's encoder reduces its input by (32 for most; what smp's check_input_shape divides by)."""
    from segmentation_models_pytorch.encoders import get_encoder
    return int(get_encoder(encoder, in_channels=3, depth=STRIDE_DEPTH, weights=None).output_stride)


def windowed(predictor: torch.nn.Module, cfg) -> torch.nn.Module:
    """What a run predicts with: its predictor (src/predict.py's with_tta: uint8 images -> probabilities) on the whole
    --size image, or, for a run trained on patches, the same predictor by sliding window. cfg: the run's Config,
    with --overlap and --sw-batch-size as the prediction asks (they change predictions, not weights)."""
    return maybe_windowed(predictor, window(cfg), cfg.sw_batch_size)


def window(cfg) -> dict | None:
    """The run's window record as a prediction keeps it ({"patch", "overlap"}), None for a whole-image run."""
    return window_of(cfg.size, cfg.patch, cfg.overlap)


def windows_per_image(size, patch: int, overlap: float) -> int:
    """How many windows cover an image of the working size, N x N or H x W (MONAI's own scan): for infer's summary
    line."""
    from monai.data.utils import dense_patch_slices
    shape = sides(size)
    steps = [patch if patch >= side else max(1, int(patch * (1 - overlap))) for side in shape]
    return len(dense_patch_slices(shape, [min(patch, side) for side in shape], steps))


def describe(cfg) -> str:
    """'sliding window 128 px, overlap 0.5, 9 windows an image' for a patched run, else ''."""
    if not cfg.tiles:
        return ""
    return (f"sliding window {cfg.patch} px, overlap {cfg.overlap:g}, "
            f"{windows_per_image(cfg.size, cfg.patch, cfg.overlap)} windows an image")


def training_line(cfg) -> str:
    """train.py's announcement of a patched run's rule."""
    return (f"patches: {cfg.patch} px of the {size_text(cfg.size)} px images (each resized to --size), "
            f"{cfg.foreground_patches:.0%} drawn around a foreground pixel and the rest anywhere, "
            f"{cfg.patches_per_image} per image an epoch; validated by {describe(cfg)}")
