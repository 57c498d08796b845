"""NIfTI volumes (MRI, CT) as slices: a folder of volumes and one of label volumes, or a Decathlon / nnU-Net v2
dataset folder read through its dataset.json. Each case becomes its slices across the dataset's axis, every slice
an image of the canonical layout (`<case>_<slice>`), the case its fold group; data/<name>/volumes.json keeps each
case's shape, spacing and header, which infer.py's volumes and ensemble.py's NIfTI masks are rebuilt with.
The rules (axis, intensities, padding) are src/portable/volumes.py's, each printed.
"""
import json
import math
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.masks import regions_mask
from src.portable import volumes
from src.portable.problems import Problem
from src.sources.sample import Sample, Source

SIZE_STEP = 32  # smp encoders halve the input five times: slices are padded to a multiple of it


@dataclass(frozen=True)
class Case:
    id: str
    images: tuple  # one file per channel (nnU-Net v2's _0000, _0001 ...), or one (3D, or 4D with the channels last)
    label: Path | None
    split: str


def folder_cases(images: Path, masks: Path | None, test: Path | None, allow_unmasked: bool) -> tuple:
    """(cases, problems) of image volumes matched to label volumes by case id."""
    problems, labels = [], {volumes.volume_id(p): p for p in volumes.volume_files(masks)} if masks else {}
    cases = []
    for path in volumes.volume_files(images):
        case = volumes.volume_id(path)
        if case in labels:
            cases.append(Case(case, (path,), labels[case], "train"))
        elif allow_unmasked:
            cases.append(Case(case, (path,), None, "test"))
        else:
            problems.append(Problem(str(path), "volume without a label volume", f"looked for {case}.nii(.gz) in {masks}",
                                    "pass --allow-unmasked to make it a test case"))
    cases += [Case(volumes.volume_id(p), (p,), None, "test") for p in volumes.volume_files(test)] if test else []
    return cases, problems


def decathlon_cases(root: Path) -> tuple:
    """(cases, classes, modality, problems, regions, region_order) of a Decathlon or nnU-Net v2 folder, read through
    its dataset.json; regions ({name: label values}, or None): nnU-Net v2's labels given as lists of values, every
    label then a region of its own, the classes their names (a multilabel dataset); region_order: its
    regions_class_order (the value each region takes in a label map), None where it gives none."""
    description = json.loads((root / "dataset.json").read_text())
    if "channel_names" in description:  # nnU-Net v2: labels {name: value}, a list of values is a region
        modalities = list(description["channel_names"].values())
        labels = description["labels"]
        if any(isinstance(value, list) for value in labels.values()):  # regions: every label one, nnU-Net's way
            regions = {name: [int(v) for v in (value if isinstance(value, list) else [value])]
                       for name, value in labels.items() if value != 0}
            classes = ["background", *regions]
            values = list(range(max(v for vs in regions.values() for v in vs) + 1))
            region_order = description.get("regions_class_order")
            if region_order is not None and (len(region_order) != len(regions)
                                             or not set(region_order) <= set(values[1:])):
                raise ValueError(f"{root / 'dataset.json'}: regions_class_order {region_order} does not give each of "
                                 f"its {len(regions)} regions ({', '.join(regions)}) one label value of {values[1:]}")
        else:
            regions = region_order = None
            classes = [name for name, _ in sorted(labels.items(), key=lambda item: int(item[1]))]
            values = sorted(int(v) for v in labels.values())
        ending = description.get("file_ending", ".nii.gz")

        def files(folder, case):  # the case's channel files, <case>_0000 ...
            return tuple(root / folder / f"{case}_{k:04d}{ending}" for k in range(len(modalities)))
        cases = [Case(p.name[:-len(ending)], files("imagesTr", p.name[:-len(ending)]), p, "train")
                 for p in sorted((root / "labelsTr").glob(f"*{ending}"))]
        cases += [Case(p.name[:-len(f"_0000{ending}")], files("imagesTs", p.name[:-len(f"_0000{ending}")]), None, "test")
                  for p in sorted((root / "imagesTs").glob(f"*_0000{ending}"))]
    else:  # the Decathlon's: modality and labels as {value: name}, the pairs listed
        regions = region_order = None
        modalities = [description["modality"][k] for k in sorted(description["modality"], key=int)]
        classes = [description["labels"][k] for k in sorted(description["labels"], key=int)]
        values = sorted(int(k) for k in description["labels"])
        cases = [Case(volumes.volume_id(Path(pair["image"])), (root / pair["image"],), root / pair["label"], "train")
                 for pair in description["training"]]
        cases += [Case(volumes.volume_id(Path(path)), (root / path,), None, "test") for path in description.get("test", [])]
    if values != list(range(len(values))):
        raise ValueError(f"{root / 'dataset.json'}: label values {values} are not 0..{len(values) - 1}")
    problems = [Problem(str(p), "file listed in dataset.json not found" if len(c.images) == 1 or p == c.label else
                        f"channel file of case {c.id} not found ({len(modalities)} channels: "
                        f"{', '.join(modalities)})") for c in cases for p in (*c.images, c.label)
                if p is not None and not p.exists()]
    return ([c for c in cases if all(p.exists() for p in (*c.images, c.label) if p is not None)], classes,
            modalities if len(modalities) > 1 else modalities[0], problems, regions, region_order)


def volume_source(cases: list, task: str, classes: list, modality: str | list, regions: dict | None = None,
                  region_order: list | None = None) -> Source:
    """The slices of every readable case, with a problem for each case that cannot be used (nothing is written
    while any is found: src/canonical.py). modality: the channel's, or a list of one per channel (their order in
    the files), each a channel of the slices. regions ({name: label values}): the label volumes' values become one
    bit per region (masks.regions_mask), the classes the regions' names."""
    names = modality if isinstance(modality, list) else [modality]
    ct_channels = [c for c, name in enumerate(names) if name.upper() == "CT"]
    problems, records, foreground = [], {}, []
    for case in tqdm(cases, desc="read volumes", unit="case"):
        try:
            values = max(v for vs in regions.values() for v in vs) + 1 if regions else len(classes)
            records[case.id], sample = read_case(case, values, len(names), ct_channels)
        except ValueError as error:
            problems.append(Problem(*str(error).split(": ", 1)) if ": " in str(error) else Problem(case.id, str(error)))
            continue
        if sample is not None and ct_channels:
            foreground.append(sample)
    if not records:
        return Source(task, classes, len(names), [], problems or ["no NIfTI volumes found"])
    if ct_channels and not foreground and not problems:
        problems.append("CT is normalised by the training cases' foreground intensities, and no labelled case has "
                        "any foreground; give labelled cases, or --modality MRI to z-score each volume")
    axis, axis_rule = volumes.slice_axis([r["spacing"] for r in records.values()])
    in_plane = np.array([[s for a, s in enumerate(r["shape"]) if a != axis] for r in records.values()])
    size = tuple(int(math.ceil(n / SIZE_STEP) * SIZE_STEP) for n in in_plane.max(axis=0))
    ct = volumes.ct_statistics(foreground) if foreground else None
    description = {"axis": axis, "axis_rule": axis_rule, "normalisation": volumes.normalisation_rule(ct, names), "ct": ct,
                   "modality": modality, "slice_size": list(size),
                   "size_rule": f"slices padded, not resized, to {size[0]} x {size[1]}: the largest slice "
                                f"({in_plane[:, 0].max()} x {in_plane[:, 1].max()}) to a multiple of {SIZE_STEP}, "
                                f"centred, images with z = 0 and labels with 0 (as nnU-Net pads)"}
    for key in ("axis_rule", "size_rule", "normalisation"):
        print(f"volumes: {description[key]}")

    @lru_cache(maxsize=16)  # slices of one case are converted one after another
    def case_slices(case: Case) -> tuple:
        cut = volumes.model_slices(volumes.read_channels(list(case.images), len(names))[1], names, ct, axis, size)
        labels = None if case.label is None else volumes.slices(label_values(case), axis, size, 0)
        if labels is not None and regions:
            labels = regions_mask(labels, list(regions.values()))
        return cut, labels

    samples = []
    for case in cases:
        if case.id not in records:
            continue
        record = records[case.id]
        row_mm, col_mm = (s for a, s in enumerate(record["spacing"]) if a != axis)
        for k in range(record["shape"][axis]):
            samples.append(Sample(f"{case.id}_{k:04d}", lambda c=case, k=k: tuple(
                None if part is None else part[k] for part in case_slices(c)), split=case.split, group=case.id,
                extra={"case": case.id, "slice": k, "spacing_row_mm": row_mm, "spacing_col_mm": col_mm}))
    source = Source(task, classes, len(names), samples, problems, regions=regions, region_order=region_order)
    source.volumes = {**description, "cases": records}
    return source


def label_values(case: Case) -> np.ndarray:
    return np.rint(volumes.data(volumes.load(case.label))).astype(np.uint8)


def read_case(case: Case, n_classes: int, channels: int, ct_channels: list) -> tuple:
    """(the case's record for volumes.json, a sample of its CT channels' foreground intensities or None), or
    ValueError naming the file and what is wrong with it. The record's file is the case's first (the package
    finds a <case>_0000's siblings by name: volumes.channel_files)."""
    image, voxels = volumes.read_channels(list(case.images), channels)
    shape, first = voxels.shape[:3], case.images[0]
    record = {"shape": list(shape), "spacing": list(volumes.spacing(image)), "header": volumes.header_text(image),
              "split": case.split, "file": str(first.resolve())}
    if case.label is None:
        return record, None
    label = volumes.load(case.label)
    if len(label.shape) != 3:
        raise ValueError(f"{case.label}: a {len(label.shape)}D label file; labels are one 3D volume of values")
    if label.shape != shape:
        raise ValueError(f"{case.label}: label shape {label.shape} differs from its image's {shape} "
                         f"({first.name})")
    if not np.allclose(label.affine, image.affine, atol=1e-3):
        raise ValueError(f"{case.label}: its affine differs from its image's ({first.name}), so the voxels do "
                         f"not line up")
    values = volumes.data(label)
    whole = np.rint(values)
    if not np.array_equal(whole, values):
        raise ValueError(f"{case.label}: labels are not whole numbers (e.g. {values[whole != values].flat[0]:g})")
    if whole.min() < 0 or whole.max() >= n_classes:
        raise ValueError(f"{case.label}: label value {int(whole.max() if whole.max() >= n_classes else whole.min())} "
                         f"is not one of the {n_classes} classes named (0..{n_classes - 1})")
    if not ct_channels:
        return record, None
    return record, volumes.foreground_sample(voxels[..., ct_channels], whole[..., None].repeat(len(ct_channels), -1),
                                             seed=zlib.crc32(case.id.encode()))
