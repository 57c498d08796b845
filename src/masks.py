"""Reading mask files, and the one place that decides how a mask becomes class indices (or is refused, and why).

Binary task: 0/1 and 0/255 masks are used as they are. A mask with other values is binarised at half the range
(128 and above is foreground) when it is almost binary, as resized masks (mid-grey on the edges between 0 and 255)
and JPEG masks (noise near 0 and 255) are: most of its mid-grey pixels (32-223) lie within 3 px of both a dark
(< 32) and a bright (>= 224) pixel. Values all below 128 are a class map, and a mask mostly mid-grey away from such
edges a probability map: both are refused, naming the flag that fits; --mask-threshold T binarises every non-binary
mask at T instead.
Multiclass task: never thresholded. A palette PNG gives its indices, a grey mask must hold class indices, a
colour-coded mask is mapped by --class-colors (one colour per class, in class order).
"""
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from src.portable.images import apply_orientation, decode, exif_orientation
from src.portable.labels import MAX_LABELS, pack
from src.portable.problems import InputError

HALF = 128
MID_GREY = (32, 224)  # values in [32, 224) are neither noise near 0 nor near 255
EDGE_REACH = 3  # pixels: resizing (up to about 4x) and JPEG leave their mid-grey this close to both sides of an edge
JPEG_SUFFIXES = {".jpg", ".jpeg"}


def read_mask(path: Path) -> np.ndarray:
    """H x W uint8 values as stored (never windowed), or H x W x 3 for a colour-coded mask.

    A palette PNG with coloured entries gives its indices (a class map drawn in colours); RGB(A) with equal channels
    is grey; 16-bit masks must hold class ids (0-255) or reach 65535 (binary: scaled to 8 bits)."""
    path = Path(path)
    palette = _palette_indices(path)
    if palette is not None:
        return palette
    mask = decode(path)
    if mask.ndim == 3:
        mask = mask[..., :3]
        if (mask == mask[..., :1]).all():
            mask = mask[..., 0]
    if mask.dtype == np.uint16:
        top = int(mask.max())
        if top == 65535:  # a 16-bit binary mask, exact or resized: the same rules at 8 bits
            return (mask >> 8).astype(np.uint8)
        if top > 255:
            raise InputError(path, "16-bit mask value is not a class id (0-255) nor a binary mask up to 65535",
                             str(top))
    return mask.astype(np.uint8)


def _palette_indices(path: Path) -> np.ndarray | None:
    """The indices of a palette image whose used entries are coloured; None for anything else (a grey palette shows
    the values it means)."""
    try:
        with Image.open(path) as image:
            if image.mode != "P":
                return None
            indices = np.asarray(image)
            palette = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)
    except OSError:
        return None
    used = palette[[i for i in np.unique(indices) if i < len(palette)]]
    if (used == used[:, :1]).all():
        return None
    return apply_orientation(indices.astype(np.uint8), exif_orientation(path))


def parse_colors(text: str) -> list:
    """'000000,ff0000,#00ff00' -> [(0, 0, 0), (255, 0, 0), (0, 255, 0)]. Raises ValueError."""
    colors = []
    for item in text.split(","):
        code = item.strip().lstrip("#")
        if len(code) != 6 or any(c not in "0123456789abcdefABCDEF" for c in code):
            raise ValueError(f"--class-colors: '{item}' is not a hex colour like ff0000")
        colors.append(tuple(int(code[i:i + 2], 16) for i in (0, 2, 4)))
    return colors


def _from_colors(mask: np.ndarray, colors: list, where: str) -> np.ndarray:
    rgb = mask if mask.ndim == 3 else np.repeat(mask[..., None], 3, axis=2)
    codes = (rgb[..., 0].astype(np.int32) << 16) | (rgb[..., 1].astype(np.int32) << 8) | rgb[..., 2]
    wanted = np.array([(r << 16) | (g << 8) | b for r, g, b in colors])
    order = np.argsort(wanted)
    found = np.searchsorted(wanted[order], codes).clip(0, len(wanted) - 1)
    known = wanted[order][found] == codes
    if not known.all():
        unknown = Counter(codes[~known].tolist()).most_common(3)
        listed = ", ".join(f"{code:06x} x {n}" for code, n in unknown)
        raise InputError(where, "mask has colours that are not in --class-colors",
                         f"{int((~known).sum())} pixels: {listed}", "list every class's colour, in class order")
    return order[found].astype(np.uint8)


def _near(pixels: np.ndarray) -> np.ndarray:
    kernel = np.ones((2 * EDGE_REACH + 1, 2 * EDGE_REACH + 1), np.uint8)
    return cv2.dilate(pixels.astype(np.uint8), kernel) > 0


@dataclass
class Binarised:
    """How one mask was made binary, for the one sentence per dataset."""
    reason: str  # "resizing", "JPEG compression" or "--mask-threshold"
    threshold: int
    off_pixels: int  # pixels that were neither background nor the top value
    pixels: int


def binary(mask: np.ndarray, where: str, threshold: int | None = None,
           jpeg: bool = False) -> tuple[np.ndarray, Binarised | None]:
    """0/1 mask, and how it was binarised (None: it was binary). Raises InputError for class and probability maps."""
    values = np.unique(mask)
    if set(values.tolist()) <= {0, 1} or set(values.tolist()) <= {0, 255}:
        return (mask > 0).astype(np.uint8), None
    off = int(((mask > 0) & (mask < 255)).sum())
    if threshold is not None:
        return (mask >= threshold).astype(np.uint8), Binarised("--mask-threshold", threshold, off, mask.size)
    if values.max() < HALF:
        raise InputError(where, "mask values all lie below 128, like a class map, not a binary mask",
                         ", ".join(map(str, values[:6].tolist())) + ("..." if len(values) > 6 else ""),
                         "a class map needs --task multiclass --classes background,...; --mask-threshold T "
                         "binarises at T")
    mid = (mask >= MID_GREY[0]) & (mask < MID_GREY[1])
    on_edges = int((mid & _near(mask < MID_GREY[0]) & _near(mask >= MID_GREY[1])).sum())
    if int(mid.sum()) > 2 * on_edges:
        raise InputError(where, "mask is mostly mid-grey away from edges, like a probability map, not a binary mask",
                         f"{1 - on_edges / mid.sum():.0%} of its {int(mid.sum())} pixels between 32 and 223",
                         "--mask-threshold T binarises at T")
    return (mask >= HALF).astype(np.uint8), Binarised("JPEG compression" if jpeg else "resizing", HALF, off,
                                                      mask.size)


def class_indices(mask: np.ndarray, task: str, classes: list, where: str, colors: list | None = None,
                  threshold: int | None = None, jpeg: bool = False) -> tuple[np.ndarray, Binarised | None]:
    """Any mask as read by read_mask -> H x W class indices, and how it was binarised (binary task only)."""
    if colors:
        mask = _from_colors(mask, colors, where)
    elif mask.ndim == 3:
        raise InputError(where, "mask is colour-coded (its channels differ)", "",
                         "pass --class-colors with one hex colour per class, in class order (000000,ff0000,...)")
    if task == "binary":
        return binary(mask, where, threshold, jpeg)
    if task == "multilabel":  # one bit per class, as the source packed them (src/portable/labels.py)
        if int(mask.max()) >= 1 << (len(classes) - 1):
            raise InputError(where, f"mask value sets a bit beyond the {len(classes) - 1} labels", str(int(mask.max())))
        return mask.astype(np.uint8), None
    if mask.max() >= len(classes):
        raise InputError(where, f"mask value is not a class id (0..{len(classes) - 1})", str(int(mask.max())),
                         "list every class in --classes, background first")
    return mask.astype(np.uint8), None


def binarised_sentences(done: list) -> list:
    """One sentence per reason: how many masks were binarised, at what, and what their values were."""
    sentences = []
    for reason in sorted({d.reason for d in done}):
        group = [d for d in done if d.reason == reason]
        share = sum(d.off_pixels for d in group) / sum(d.pixels for d in group)
        why = {"resizing": "as resizing leaves", "JPEG compression": "as JPEG compression leaves",
               "--mask-threshold": "thresholded as --mask-threshold asks"}[reason]
        sentences.append(f"binarised {len(group)} masks at {group[0].threshold}: {share:.1%} of their pixels lay "
                         f"between 0 and 255, {why}"
                         + ("" if reason == "--mask-threshold" else " (--mask-threshold T to choose the threshold)"))
    return sentences


OVERLAP_FIX = ("a multiclass mask holds one class per pixel, and keeping either class would drop the other's pixels "
               "from the training masks and the scores without a word: --task multilabel keeps every class of a pixel")


def paint_class(mask: np.ndarray, drawn: np.ndarray, c: int, multilabel: bool) -> tuple | None:
    """Draws class c's pixels (drawn) into a mask being merged from several files or rows: its bit (multilabel,
    src/portable/labels.py), else its index. Returns None, or (pixels, the class there before) where a multiclass
    mask already held another class on some of them, which the caller refuses (overlap_error)."""
    if multilabel:
        mask[drawn] |= np.uint8(1 << (c - 1))
        return None
    clash = drawn & (mask > 0) & (mask != c)
    before = (int(clash.sum()), int(mask[clash].flat[0])) if clash.any() else None
    mask[drawn] = c
    return before


def overlap_error(where, pixels: int, first: str, second: str) -> InputError:
    """Labels of two classes on the same pixels of a multiclass mask (RLE rows, per-class mask files): refused, and
    grouped into one line over the images (src/problems.py), each image's pixels in its detail."""
    return InputError(where, "labels of different classes overlap", f"{pixels} pixels of {first} and {second}",
                      OVERLAP_FIX)


def parse_regions(text: str) -> dict:
    """--regions 'whole=1,2 core=2' -> {'whole': [1, 2], 'core': [2]}: each region a label of its own, the union of
    the listed label values, as nnU-Net's region-based training defines them. ValueError for any other form."""
    regions = {}
    for part in text.split():
        name, _, values = part.partition("=")
        numbers = values.split(",")
        if not name or not all(v.strip().isdigit() and int(v) > 0 for v in numbers) or name in regions:
            raise ValueError(f"--regions {text!r}: give name=value[,value...] per region, e.g. 'whole=1,2 core=2' "
                             f"(label values above 0, each name once)")
        regions[name] = [int(v) for v in numbers]
    if not regions or len(regions) > MAX_LABELS:
        raise ValueError(f"--regions {text!r}: give 1 to {MAX_LABELS} regions")
    return regions


def regions_mask(label_map: np.ndarray, regions: list) -> np.ndarray:
    """A label map (values 0..) -> one bit per region (src/portable/labels.py): the pixels of any of its values."""
    return pack(np.stack([np.isin(label_map, values) for values in regions]))
