"""Volumes (NIfTI, through nibabel) as 2D models see them: normalised by nnU-Net's rules, stored as uint8, cut into
slices across one axis, padded to one slice size, and stacked back into the source's grid and header.

Rules, each printed by prepare where it applies:
- the axis: nnU-Net's 2D configuration cuts across the lowest-resolution axis (the largest spacing); where spacings
  tie (isotropic data), the last stored axis, which is the first of SimpleITK's z, y, x that nnU-Net cuts along;
- intensities: CT clipped to the 0.5 and 99.5 percentiles of the training cases' foreground voxels, then z-scored
  with their mean and standard deviation; any other modality z-scored per volume (nnU-Net's ZScoreNormalization);
- storage: uint8 = Z_ZERO + LEVELS_PER_SD * z, rounded and clipped, so the uint8 cache, the augmentations and the
  models' ImageNet normalisation stay as they are for 2D images (a fixed affine map of z for the model);
- slices are padded, never resized, to the dataset's slice size (images with z = 0, as nnU-Net pads, labels with 0),
  the slice centred; predictions are cropped back before stacking;
- post-processing in 3D, as nnU-Net's: for each label the ensemble chose on OOF cases, only its largest connected
  component in the case is kept (6-connected, scipy.ndimage.label's default, as nnU-Net labels).
"""
import io
from pathlib import Path
from typing import Iterator

import numpy as np

from .images import as_size
from .labels import label_mask
from .predictor import Batch

SUFFIXES = (".nii.gz", ".nii")
Z_ZERO, LEVELS_PER_SD = 64, 24  # z from -2.67 to +7.96 in 1/24 of a standard deviation: MRI's bright tail fits
CT_PERCENTILES = (0.5, 99.5)
FOREGROUND_SAMPLES = 10_000  # foreground voxels drawn per training case for the CT statistics, as nnU-Net draws


def is_volume(path: Path) -> bool:
    return Path(path).name.lower().endswith(SUFFIXES)


def volume_id(path: Path) -> str:
    """The case id: the file name less its whole suffix (hippocampus_003 for hippocampus_003.nii.gz)."""
    name = Path(path).name
    return next(name[:-len(s)] for s in SUFFIXES if name.lower().endswith(s))


def volume_files(folder: Path) -> list:
    return sorted(p for p in Path(folder).rglob("*") if p.is_file() and is_volume(p) and not p.name.startswith("."))


def case_files(paths: list, channels: int) -> dict:
    """{case: its files, one per channel or one 4D file} of a folder's volumes. With several channels, files named
    <case>_0000 ... (nnU-Net v2's channel files) are one case's, in that order; any other file is a case of its own
    (a 4D image, channels last, as the Decathlon stores them); with one, a folder of <case>_0000 files (nnU-Net v2's)
    names its cases <case>, as prepare does. ValueError names a case missing a channel file."""
    cases, numbered = {}, {}
    v2 = all(volume_id(p).endswith("_0000") for p in paths)  # nnU-Net v2's one channel: <case>_0000, case <case>
    for path in paths:
        name = volume_id(path)
        case, _, number = name.rpartition("_")
        if (channels > 1 or v2) and case and len(number) == 4 and number.isdigit():
            numbered.setdefault(case, {})[int(number)] = path
        else:
            cases[name] = [path]
    for case, files in numbered.items():
        if sorted(files) != list(range(channels)):
            missing = [f"{case}_{k:04d}" for k in range(channels) if k not in files]
            raise ValueError(f"{case}: channel file {', '.join(missing) or sorted(files)[-1]} "
                             f"{'missing' if missing else 'unexpected'}; the models read {channels} channels, "
                             f"{case}_0000 to {case}_{channels - 1:04d}")
        cases[case] = [files[k] for k in range(channels)]
    return dict(sorted(cases.items()))


def channel_files(first: Path, channels: int) -> list:
    """A case's files from the first one prepare recorded: nnU-Net v2's <case>_0000 and its siblings, else the one
    file (3D, or 4D with the channels last)."""
    name = volume_id(first)
    if channels == 1 or not name.endswith("_0000"):
        return [Path(first)]
    return [Path(first).with_name(Path(first).name.replace(name, f"{name[:-4]}{k:04d}", 1)) for k in range(channels)]


def read_channels(paths: list, channels: int) -> tuple:
    """(the first file's nibabel image, the case's voxels as X x Y x Z x channels): one 4D file with its channels
    last, or one 3D file per channel whose shapes and affines agree. ValueError names the file at fault."""
    images = [load(p) for p in paths]
    first = images[0]
    if len(paths) == 1 and len(first.shape) == 4 and first.shape[3] == channels:
        return first, np.asarray(data(first))
    for path, image in zip(paths, images):
        if len(image.shape) != 3:
            shape = "x".join(map(str, image.shape))
            raise ValueError(f"{path}: a {len(image.shape)}D image ({shape}); the models read {channels} channel"
                             f"{'s' if channels > 1 else ''}: " + ("3D volumes" if channels == 1 else
                             f"a 4D image with them last, or one 3D file each (<case>_0000 ...)"))
        if image.shape != first.shape or not np.allclose(image.affine, first.affine, atol=1e-3):
            raise ValueError(f"{path}: its shape or affine differs from {paths[0]}'s, so the channels' voxels do not "
                             f"line up")
    if len(paths) != channels:
        raise ValueError(f"{paths[0]}: {len(paths)} channel file(s); the models read {channels}")
    return first, np.stack([np.asarray(data(image)) for image in images], axis=-1)


def channel_names(rules: dict) -> list:
    """The modality of each channel (meta.json's volumes: one name, or a list of them for several channels)."""
    return rules["modality"] if isinstance(rules["modality"], list) else [rules["modality"]]


def model_slices(voxels: np.ndarray, names: list, ct: dict | None, axis: int, size: tuple) -> np.ndarray:
    """A case's voxels (X x Y x Z x channels) as the models read them: each channel normalised by its modality's rule
    (normalise: CT by the dataset's statistics), stored as uint8, cut across axis and padded; (n, H, W) for one
    channel, (n, H, W, channels) for several, channels last as the cache's colour images."""
    stored = np.stack([to_uint8(normalise(voxels[..., c], ct if name.upper() == "CT" else None))
                       for c, name in enumerate(names)], axis=-1)
    cut = slices(stored, axis, size, Z_ZERO)
    return cut[..., 0] if len(names) == 1 else cut


def load(path: Path):
    """The nibabel image of a NIfTI file (data read lazily), or ValueError naming the file."""
    import nibabel  # here: 2D datasets never need it
    try:
        return nibabel.load(str(path))
    except Exception as error:  # nibabel raises its own ImageFileError, OSError, EOFError, gzip errors
        raise ValueError(f"{path}: not a readable NIfTI file ({type(error).__name__}: {error})") from None


def data(image) -> np.ndarray:
    return np.asanyarray(image.dataobj)


def spacing(image) -> tuple:
    return tuple(float(s) for s in image.header.get_zooms()[:3])


def slice_axis(spacings: list) -> tuple:
    """(axis, rule) for a dataset: across the largest median spacing; ties (isotropic data): the last axis."""
    median = np.median(np.asarray(spacings, dtype=float), axis=0)
    largest = np.flatnonzero(np.isclose(median, median.max()))
    axis = int(largest[-1])
    spacing_text = " x ".join(f"{s:g}" for s in median)
    if len(largest) == 3:
        return axis, (f"axis {axis}: the median spacing {spacing_text} mm is isotropic, so the last stored axis, "
                      f"the first of SimpleITK's z, y, x that nnU-Net's 2D configuration cuts along")
    return axis, (f"axis {axis}: across the lowest resolution of the median spacing {spacing_text} mm, as nnU-Net's 2D "
                  f"configuration cuts")


def ct_statistics(foreground: list) -> dict:
    """nnU-Net's CT statistics from the training cases' sampled foreground intensities."""
    values = np.concatenate(foreground).astype(np.float64)
    low, high = np.percentile(values, CT_PERCENTILES)
    return {"low": float(low), "high": float(high), "mean": float(values.mean()), "std": float(values.std())}


def foreground_sample(volume: np.ndarray, labels: np.ndarray, seed: int) -> np.ndarray:
    values = volume[labels > 0]
    if len(values) > FOREGROUND_SAMPLES:
        values = np.random.default_rng(seed).choice(values, FOREGROUND_SAMPLES, replace=False)
    return values


def normalise(volume: np.ndarray, ct: dict | None = None) -> np.ndarray:
    """z-scores: CT by the dataset's statistics (clipped first), anything else by the volume's own."""
    volume = volume.astype(np.float64)
    if ct is not None:
        return (np.clip(volume, ct["low"], ct["high"]) - ct["mean"]) / max(ct["std"], 1e-8)
    return (volume - volume.mean()) / max(volume.std(), 1e-8)


def to_uint8(z: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(Z_ZERO + LEVELS_PER_SD * z), 0, 255).astype(np.uint8)


def normalisation_rule(ct: dict | None, names: tuple = ()) -> str:
    """The rule prepare prints and meta.json keeps; names: the channels' modalities where there are several."""
    stored = (f"stored as uint8 = {Z_ZERO} + {LEVELS_PER_SD} z (z from {-Z_ZERO / LEVELS_PER_SD:.2f} to "
              f"{(255 - Z_ZERO) / LEVELS_PER_SD:.2f})")
    per_volume = "z-scored per volume (nnU-Net's rule for MRI and any modality but CT)"
    ct_rule = None if ct is None else (
        f"clipped to the training foreground's {CT_PERCENTILES[0]:g} and {CT_PERCENTILES[1]:g} percentiles "
        f"({ct['low']:.1f}, {ct['high']:.1f}), z-scored with its mean {ct['mean']:.1f} and standard deviation "
        f"{ct['std']:.1f} (nnU-Net's CT rule)")
    if len(names) > 1:
        each = "; ".join(f"channel {c} ({name}) " + (ct_rule if name.upper() == "CT" else per_volume)
                         for c, name in enumerate(names))
        return f"{len(names)} channels, each normalised by its modality: {each}; each {stored}"
    if ct_rule is None:
        return f"intensities {per_volume}, {stored}"
    return f"CT intensities {ct_rule}, {stored}"


def padding(shape: tuple, size: tuple) -> tuple:
    """(top, left) of a slice of shape (h, w) centred in size (H, W)."""
    return (size[0] - shape[0]) // 2, (size[1] - shape[1]) // 2


def slices(volume: np.ndarray, axis: int, size: tuple, fill: int) -> np.ndarray:
    """(n, H, W) slices across axis (0-2), each centred in size and padded with fill; a channel axis after the three
    (X x Y x Z x C) stays last: (n, H, W, C)."""
    moved = np.moveaxis(volume, axis, 0)
    top, left = padding(moved.shape[1:3], size)
    out = np.full((moved.shape[0], *size, *moved.shape[3:]), fill, dtype=volume.dtype)
    out[:, top:top + moved.shape[1], left:left + moved.shape[2]] = moved
    return out


def stack(slice_maps: list, axis: int, shape: tuple) -> np.ndarray:
    """The inverse of slices(): padded slice maps (their leading axes kept, e.g. classes) cropped and stacked into a
    volume of the source's shape."""
    in_plane = tuple(s for a, s in enumerate(shape) if a != axis)
    top, left = padding(in_plane, slice_maps[0].shape[-2:])
    cropped = [m[..., top:top + in_plane[0], left:left + in_plane[1]] for m in slice_maps]
    return np.stack(cropped, axis=axis + cropped[0].ndim - 2)


def keep_largest(labels: np.ndarray, which: list, task: str = "") -> np.ndarray:
    """A label volume with only the largest 3D component of each label in which; the others become background
    (multilabel: lose that label's bit alone, labels.py)."""
    if not which:
        return labels
    from scipy import ndimage  # here: 2D datasets and packages never need it
    kept = labels.copy()
    for label in which:
        components, count = ndimage.label(label_mask(labels, label, task))
        if count > 1:
            largest = np.bincount(components.ravel())[1:].argmax() + 1
            dropped = (components > 0) & (components != largest)
            kept[dropped] = kept[dropped] & np.uint8(~(1 << (label - 1)) & 0xFF) if task == "multilabel" else 0
    return kept


def finish_case(slice_masks: list, axis: int, shape: tuple, largest: list, task: str = "") -> tuple:
    """A case's post-processed slice masks (class indices, at the padded slice size) -> (its label volume after the 3D
    step, the slice masks cut back from that volume): the NIfTI mask and the submission's slices agree."""
    labels = keep_largest(stack(slice_masks, axis, shape), largest, task)
    return labels, list(slices(labels, axis, slice_masks[0].shape, 0))


def header_text(image) -> str:
    """The source's NIfTI header as hex: written back with the predicted mask, byte for byte but its data type."""
    return image.header.binaryblock.hex()


def write_mask(path: Path, labels: np.ndarray, header_hex: str) -> None:
    """A label volume as NIfTI with the source's header (so its affine, qform and sform), uint8."""
    import nibabel
    block = bytes.fromhex(header_hex)
    kind = nibabel.Nifti2Image if len(block) == nibabel.Nifti2Header.template_dtype.itemsize else nibabel.Nifti1Image
    header = kind.header_class.from_fileobj(io.BytesIO(block))
    header.set_data_dtype(np.uint8)
    header.set_slope_inter(1, 0)
    image = kind(labels.astype(np.uint8), None, header=header)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    nibabel.save(image, str(path))


def neighbour_rows(cases, slice_numbers, context: int) -> np.ndarray:
    """(N, context) rows of each row's slice and its neighbours in its case (rows given by their case and slice
    number, as index.csv's columns), in slice order; past the case's first or last slice the edge slice is repeated
    (2.5D input, as the UW-Madison GI tract solutions stack it)."""
    half = context // 2
    cases, slice_numbers = list(cases), [int(k) for k in slice_numbers]
    position = {(case, k): row for row, (case, k) in enumerate(zip(cases, slice_numbers))}
    last = {}
    for case, k in zip(cases, slice_numbers):
        last[case] = max(last.get(case, 0), k)
    return np.array([[position[(case, min(max(k + o, 0), last[case]))] for o in range(-half, half + 1)]
                     for case, k in zip(cases, slice_numbers)], dtype=np.int64).reshape(len(cases), context)


class ContextImages:
    """The cache's images seen with context: indexing rows gives each row's neighbouring slices as channels
    (H x W x context, channels last as the cache's colour images; with several channels per slice, H x W x
    (context x channels), slice by slice), so datasets and batches read it as the cache."""

    def __init__(self, images: np.ndarray, neighbours: np.ndarray):
        self.images, self.neighbours = images, neighbours
        self.channels = images.shape[3] if images.ndim == 4 else 1
        self.ndim, self.shape = 4, (len(images), *images.shape[1:3], neighbours.shape[1] * self.channels)

    def __len__(self):
        return len(self.images)

    def __getitem__(self, rows) -> np.ndarray:
        seen = self.images[self.neighbours[rows]]  # (..., context, H, W[, C])
        if self.channels == 1:
            return np.moveaxis(seen, -3, -1)
        seen = np.moveaxis(seen, -4, -2)  # (..., H, W, context, C)
        return seen.reshape(*seen.shape[:-2], -1)


def volume_batches(cases: dict, rules: dict, context: int, batch_size: int, geometry: dict) -> Iterator[Batch]:
    """Batches of the slices of NIfTI cases ({case: its files}, case_files), each case read, normalised, cut and
    padded by the rules prepare recorded (meta.json's volumes) and seen with `context` slices as channels; keys
    <case>_<slice> as prepare names them. geometry gets each case's (shape, header) as it is read, for write_mask."""
    size, axis, names = tuple(rules["slice_size"]), rules["axis"], channel_names(rules)
    for case, paths in cases.items():
        image, voxels = read_channels(paths, len(names))
        geometry[case] = (voxels.shape[:3], header_text(image))
        cut = model_slices(voxels, names, rules["ct"], axis, size)
        view = ContextImages(cut, neighbour_rows([case] * len(cut), range(len(cut)), context))
        for first in range(0, len(cut), batch_size):
            rows = np.arange(first, min(first + batch_size, len(cut)))
            yield Batch([f"{case}_{k:04d}" for k in rows], [size] * len(rows),
                        {as_size(size): np.ascontiguousarray(view[rows].transpose(0, 3, 1, 2))})

