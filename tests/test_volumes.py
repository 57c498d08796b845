"""NIfTI volumes: read with nibabel, cut into slices that the 2D models train on, stacked back into each case's grid,
scored in 3D with the voxel spacing and written as NIfTI masks with the source's header. Tiny volumes throughout."""
import json
import subprocess
import sys
import warnings
from pathlib import Path

import nibabel
import numpy as np
import pandas as pd
import pytest
import torch
from monai.metrics import compute_dice, compute_hausdorff_distance

import ensemble
import export
import infer
import train
from conftest import TINY, infer_args, paths, prepare
from src.portable import volumes
from src.cache import context_problem, open_cache
from src.data import CachedSegmentation, foreground_draws
from src.volume_scores import case_scores, case_slices, largest_candidates, read_records, volume_table

SPACING = (0.8, 0.7, 3.0)  # anisotropic: slices are cut across axis 2, the lowest resolution


def affine(spacing=SPACING, shift=(10.0, -5.0, 2.0)) -> np.ndarray:
    return np.diag([*spacing, 1.0]) + np.pad(np.array(shift)[:, None], ((0, 1), (3, 0)))


def write(path, array, spacing=SPACING, shift=(10.0, -5.0, 2.0)):
    image = nibabel.Nifti1Image(array, affine(spacing, shift))
    image.header.set_zooms((*spacing, 1.0)[:array.ndim])
    nibabel.save(image, str(path))
    return path


def case(rng, shape=(20, 14, 5)) -> tuple:
    """An MRI-like volume and its labels: an ellipsoid blob (label 1) with a smaller one inside (label 2)."""
    x, y, z = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    centre = rng.uniform(6, 9), rng.uniform(5, 8), 2
    r = ((x - centre[0]) / 5) ** 2 + ((y - centre[1]) / 4) ** 2 + ((z - centre[2]) / 2.5) ** 2
    labels = np.where(r < 0.3, 2, np.where(r < 1, 1, 0)).astype(np.uint8)
    image = (rng.normal(300, 20, shape) + 200.0 * labels).astype(np.float32)
    return image, labels


def volume_set(root, cases=6, tests=2, modalities=("MRI",), layout="decathlon") -> dict:
    """A Decathlon folder of tiny cases (a 4D image, channels last, for several modalities), or nnU-Net v2's layout
    (one <case>_000k file per channel)."""
    rng = np.random.default_rng(0)
    for sub in ("imagesTr", "labelsTr", "imagesTs"):
        (root / sub).mkdir(parents=True)
    for k in range(cases + tests):
        image, labels = case(rng, (20 + k % 3, 14, 5))
        channels = [image, *[(rng.normal(50, 5, image.shape) + 40.0 * (labels == 2)).astype(np.float32)
                             for _ in modalities[1:]]]  # another contrast: the inner label brighter
        split = "Tr" if k < cases else "Ts"
        if layout == "nnunet":
            for c in range(len(modalities)):
                write(root / f"images{split}" / f"vol_{k:03d}_{c:04d}.nii.gz", channels[c])
        else:
            write(root / f"images{split}" / f"vol_{k:03d}.nii.gz",
                  image if len(modalities) == 1 else np.stack(channels, axis=-1))
        if k < cases:
            write(root / "labelsTr" / f"vol_{k:03d}.nii.gz", labels)
    if layout == "nnunet":
        description = {"channel_names": dict(enumerate(modalities)), "file_ending": ".nii.gz",
                       "labels": {"background": 0, "outer": 1, "inner": 2}, "numTraining": cases}
    else:
        description = {"name": "tiny", "modality": {str(c): m for c, m in enumerate(modalities)},
                       "labels": {"0": "background", "1": "outer", "2": "inner"},
                       "training": [{"image": f"./imagesTr/vol_{k:03d}.nii.gz", "label": f"./labelsTr/vol_{k:03d}.nii.gz"}
                                    for k in range(cases)],
                       "test": [f"./imagesTs/vol_{k:03d}.nii.gz" for k in range(cases, cases + tests)]}
    (root / "dataset.json").write_text(json.dumps(description))
    return description


def test_slices_padded_and_stacked_back_are_the_identity_and_the_axis_is_the_lowest_resolution():
    volume = np.random.default_rng(1).integers(0, 255, (21, 14, 5)).astype(np.uint8)
    axis, rule = volumes.slice_axis([SPACING, (0.8, 0.8, 2.5)])
    assert axis == 2 and "across the lowest resolution" in rule
    assert volumes.slice_axis([(1, 1, 1)])[0] == 2  # isotropic: the last stored axis, nnU-Net's SimpleITK z
    assert volumes.slice_axis([(3.0, 0.9, 0.9)])[0] == 0
    for axis in range(3):
        cut = volumes.slices(volume, axis, (32, 32), fill=7)
        assert cut.shape == (volume.shape[axis], 32, 32) and (cut == 7).any()
        assert np.array_equal(volumes.stack(list(cut), axis, volume.shape), volume)
        maps = np.stack([cut, cut // 2], axis=1)  # class maps: the leading axis kept
        assert np.array_equal(volumes.stack(list(maps), axis, volume.shape)[1], volume // 2)


def test_empty_slices_are_swapped_for_foreground_ones_up_to_the_share_asked():
    """nnU-Net's oversample_foreground_percent for 2D: at least --foreground-patches of the slices drawn show some
    foreground; a set already above it is drawn as it is. Seeded by (seed, epoch, row): a resumed run draws alike."""
    masks = np.zeros((100, 4, 4), np.uint8)
    masks[:10, 1, 1] = 1  # 10% of the slices show foreground
    images = np.zeros((100, 4, 4), np.uint8)
    rows = np.arange(100)
    foreground, rule = foreground_draws(masks, rows, 0.5)
    assert foreground[1] == pytest.approx(4 / 9) and "10% of the training slices" in rule and "50% show it" in rule
    data = CachedSegmentation(images, masks, rows, foreground=foreground)
    shares = []
    for epoch in range(20):
        data.epoch = epoch
        shares.append(np.mean([data[i][1].any().item() for i in range(100)]))
    assert 0.45 < np.mean(shares) < 0.55
    assert [data[i][2] for i in range(100)] == [data[i][2] for i in range(100)]  # the same draw each time asked
    assert foreground_draws(masks, rows, 0.05)[0][1] == 0 and "drawn as they are" in foreground_draws(masks, rows, 0.05)[1]


def test_the_3d_step_keeps_each_chosen_labels_largest_component_and_the_slices_follow_the_volume():
    """nnU-Net's post-processing: a chosen label's components in 3D (6-connected), the largest kept; the slice masks
    the submission encodes are cut back from that volume, so a stray blob on another slice goes from both."""
    labels = np.zeros((6, 5, 4), np.uint8)
    labels[0:3, 0:3, 0:2] = 1  # 18 voxels across slices 0 and 1 of axis 2
    labels[5, 4, 3] = 1  # a stray voxel of label 1 on slice 3: its own component
    labels[4:6, 0:2, 2] = 2  # label 2: two components, of 4 and 1 voxels
    labels[5, 4, 0] = 2
    cut = list(volumes.slices(labels, 2, (8, 8), 0))  # as the models see the slices: padded to 8 x 8
    cut[1][0, 0] = 1  # a prediction in the padding, outside the volume: cropped away
    volume, masks = volumes.finish_case(cut, 2, labels.shape, [1])
    expected = labels.copy()
    expected[5, 4, 3] = 0
    assert np.array_equal(volume, expected)  # label 2, not chosen, keeps both of its components
    assert np.array_equal(np.stack(masks), volumes.slices(expected, 2, (8, 8), 0))
    assert np.array_equal(volumes.finish_case(cut, 2, labels.shape, [])[0], labels)  # nothing chosen: as stacked
    # What the ensemble chooses on: against a truth without the stray voxel, only label 1 gains from the step.
    truth = list(volumes.slices(expected, 2, (8, 8), 0))
    table = largest_candidates(cut.__getitem__, truth.__getitem__, {"c": [0, 1, 2, 3]}, {"c": {"shape": labels.shape}},
                               2, ["bg", "one", "two"]).set_index("label")
    assert table.loc[1, "largest"] == 1 > table.loc[1, "plain"] and table.loc[2, "largest"] < table.loc[2, "plain"] == 1


@pytest.mark.parametrize("kind", [nibabel.Nifti1Image, nibabel.Nifti2Image])
def test_a_written_mask_has_the_source_affine_and_header(tmp_path, kind):
    nibabel.save(kind(np.zeros((6, 5, 4), np.float32), affine()), str(tmp_path / "ct.nii.gz"))
    source = nibabel.load(str(tmp_path / "ct.nii.gz"))
    labels = np.random.default_rng(0).integers(0, 3, (6, 5, 4)).astype(np.uint8)
    volumes.write_mask(tmp_path / "out" / "ct.nii.gz", labels, volumes.header_text(source))
    written = nibabel.load(str(tmp_path / "out" / "ct.nii.gz"))
    assert type(written) is kind and np.array_equal(written.affine, source.affine)
    assert written.header.get_zooms() == source.header.get_zooms()
    assert written.get_data_dtype() == np.uint8 and np.array_equal(np.asanyarray(written.dataobj), labels)


def test_3d_dice_and_hd95_in_mm_of_stacked_slices_agree_with_monai_on_anisotropic_volumes():
    rng = np.random.default_rng(3)
    _, target = case(rng, (20, 14, 5))
    pred = np.roll(target, 2, axis=0)
    pred[3:5, 2:4, 4] = 1  # a stray blob on another slice
    cut = {f"c_{k}": s for k, s in enumerate(volumes.slices(pred, 2, (32, 32), 0))}
    truth = {f"c_{k}": s for k, s in enumerate(volumes.slices(target, 2, (32, 32), 0))}
    record = {"c": {"shape": [20, 14, 5], "spacing": list(SPACING)}}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        table = volume_table(cut.__getitem__, truth.__getitem__, {"c": list(cut)}, record, 2, ["bg", "outer", "inner"])
    assert not [w for w in caught if "always_return_as_numpy" in str(w.message)]  # MONAI's own, on every case: hushed
    onehot = [torch.from_numpy(np.stack([v == c for c in range(3)])[None]) for v in (pred, target)]
    dice = compute_dice(*onehot, include_background=False)[0]
    hd95 = compute_hausdorff_distance(*onehot, include_background=False, percentile=95, spacing=list(SPACING))[0]
    assert np.allclose(table["dice"], dice.numpy()) and np.allclose(table["hd95_mm"], hd95.numpy())
    assert hd95[0] != compute_hausdorff_distance(*onehot, include_background=False, percentile=95)[0, 0]  # mm, not voxels
    empty = case_scores(np.zeros_like(target), target, ["bg", "outer", "inner"], SPACING)
    assert empty[0]["dice"] == 0 and empty[0]["hd95_mm"] == pytest.approx(np.sqrt(16 ** 2 + 9.8 ** 2 + 15 ** 2))


def test_a_decathlon_set_is_prepared_as_slices_grouped_by_case(tmp_path):
    volume_set(tmp_path / "Task99_Tiny")
    prepare(tmp_path, "decathlon", "--src", str(tmp_path / "Task99_Tiny"), "--name", "tiny", "--k", "3")
    data = tmp_path / "data" / "tiny"
    meta, index = json.loads((data / "meta.json").read_text()), pd.read_csv(data / "index.csv")
    assert meta["task"] == "multiclass" and meta["classes"] == ["background", "outer", "inner"]
    assert meta["volumes"]["axis"] == 2 and meta["volumes"]["slice_size"] == [32, 32]
    assert len(index) == 8 * 5 and set(index[index.split == "test"]["case"]) == {"vol_006", "vol_007"}
    assert np.allclose(index["spacing_row_mm"], 0.8) and np.allclose(index["spacing_col_mm"], 0.7)
    folds = pd.read_csv(tmp_path / "folds" / "tiny.csv")
    assert folds.merge(index, on="id").groupby("case")["fold"].nunique().max() == 1  # no case split across folds
    assert np.load(data / "cache" / "32" / "images.npy").shape == (40, 32, 32)  # padded, never resized
    records = read_records(data)
    source = nibabel.load(str(tmp_path / "Task99_Tiny" / "labelsTr" / "vol_001.nii.gz"))
    ids = case_slices(index)["vol_001"]
    masks = [np.array(__import__("PIL.Image").Image.open(data / "masks" / f"{i}.png")) for i in ids]
    assert np.array_equal(volumes.stack(masks, 2, records["vol_001"]["shape"]), np.asanyarray(source.dataobj))
    image = np.asanyarray(nibabel.load(str(tmp_path / "Task99_Tiny" / "imagesTr" / "vol_001.nii.gz")).dataobj)
    z = (image - image.mean()) / image.std()
    slices = [np.array(__import__("PIL.Image").Image.open(data / "images" / f"{i}.png")) for i in ids]
    stored = volumes.stack(slices, 2, image.shape).astype(float)
    assert np.abs((stored - volumes.Z_ZERO) / volumes.LEVELS_PER_SD - np.clip(z, -2.6, 7.9)).max() <= 0.5 / 24 + 1e-9


@pytest.mark.parametrize("defect, words", [
    ("shape", "label shape (21, 14, 4) differs from its image's (21, 14, 5)"),
    ("affine", "its affine differs from its image's"),
    ("fraction", "labels are not whole numbers (e.g. 1.5)"),
    ("4d", "a 4D label file"),
    ("unnamed", "label value 3 is not one of the 3 classes named (0..2)"),
    ("missing", "file listed in dataset.json not found"),
])
def test_a_bad_volume_stops_prepare_in_one_line_and_writes_nothing(tmp_path, capsys, defect, words):
    root = tmp_path / "Task99_Tiny"
    volume_set(root, cases=3, tests=0)
    label = root / "labelsTr" / "vol_001.nii.gz"
    labels = np.asanyarray(nibabel.load(str(label)).dataobj).copy()
    if defect == "shape":
        write(label, labels[..., :4])
    elif defect == "affine":
        write(label, labels, shift=(0.0, 0.0, 0.0))
    elif defect == "fraction":
        write(label, labels.astype(np.float32) + np.float32(0.5) * (labels == 1))
    elif defect == "4d":
        write(label, labels[..., None].repeat(2, axis=3))
    elif defect == "unnamed":
        write(label, np.where(labels == 2, 3, labels).astype(np.uint8))
    else:
        label.unlink()
    with pytest.raises(SystemExit) as stop:
        prepare(tmp_path, "decathlon", "--src", str(root), "--name", "tiny", "--k", "2")
    assert words in str(stop.value) and "vol_001" in str(stop.value)
    assert not (tmp_path / "data" / "tiny").exists()


def test_nnunet_v2_regions_are_read_as_nested_labels_of_a_multilabel_set(tmp_path):
    from src.portable.labels import label_order, to_labels, unpack
    root = tmp_path / "Dataset001_Tiny"
    volume_set(root, cases=2, tests=0, layout="nnunet")
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "whole": [1, 2], "core": 2},
                                                   "regions_class_order": [1, 2]}))
    prepare(tmp_path, "decathlon", "--src", str(root), "--name", "tiny", "--k", "2", plan=True)
    meta = json.loads((tmp_path / "data" / "tiny" / "meta.json").read_text())
    assert meta["task"] == "multilabel" and meta["classes"] == ["background", "whole", "core"]
    planned = json.loads((tmp_path / "data" / "tiny" / "plan.json").read_text())  # slices: the volumes' budget
    assert planned["steps"] == 7200 and "the budget for slices of volumes" in planned["rules"]["epochs"]
    labels = np.asanyarray(nibabel.load(str(root / "labelsTr" / "vol_000.nii.gz")).dataobj)
    cut = volumes.slices(labels, 2, tuple(meta["volumes"]["slice_size"]), 0)
    masks = np.load(tmp_path / "data" / "tiny" / "cache" / "32" / "masks.npy")[:len(cut)]
    whole, core = unpack(masks, 2)  # per region, slice by slice
    assert np.array_equal(whole, cut > 0) and np.array_equal(core, cut == 2) and core.any()
    assert meta["regions"] == {"whole": [1, 2], "core": [2]} and meta["regions_class_order"] == [1, 2]  # kept, and
    # the NIfTI masks go back to these labels:
    assert np.array_equal(to_labels(masks, label_order(meta)), cut)
    assert label_order({**meta, "regions_class_order": [2, 1]}) == [2, 1]  # nnU-Net's own order, where given
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T2"}, "labels": {"background": 0, "whole":
                                                   [1, 2], "core": 2}, "regions_class_order": [1]}))
    with pytest.raises(SystemExit, match=r"regions_class_order \[1\] does not give each of its 2 regions"):
        prepare(tmp_path, "decathlon", "--src", str(root), "--name", "ordered", "--k", "2")
    assert not (tmp_path / "data" / "ordered").exists()
    with pytest.raises(SystemExit, match="label volumes become labels that overlap through --regions"):
        prepare(tmp_path, "folder", "--images", str(root / "imagesTr"), "--masks", str(root / "labelsTr"), "--task",
                "multilabel", "--classes", "whole,core", "--name", "bits")  # values are not bits


def test_a_volume_set_trains_on_slices_and_the_ensemble_scores_cases_in_3d_and_writes_nifti(tmp_path, capsys):
    root = tmp_path / "Dataset003_Tiny"  # two modalities in nnU-Net v2's channel files: 2 channels per slice
    volume_set(root, modalities=("T2", "ADC"), layout="nnunet")
    prepare(tmp_path, "decathlon", "--src", str(root), "--name", "tiny", "--k", "2")
    tiny = [*TINY[:TINY.index("--size")], *TINY[TINY.index("--size") + 2:], "--size", "32", "--epochs", "1",
            "--context", "3"]  # 2.5D: a slice and its two neighbours, 2 x 3 channels, through training, infer, ensemble
    for fold in (0, 1):
        train.main([*tiny, "--dataset", "tiny", *paths(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--fold",
                    str(fold)])
    assert "of the training slices show foreground" in capsys.readouterr().out  # the slices' rule, stated
    infer.main([*infer_args(tmp_path, "tiny"), "--tta", "none"])
    assert "in 3D over 6 cases (slices stacked back, raw): Dice" in capsys.readouterr().out
    out = tmp_path / "ensemble"
    ensemble.main(["--dataset", "tiny", *paths(tmp_path), "--preds-dir", str(tmp_path / "preds"), "--out-dir",
                   str(out), "--figures", "0"])
    scores = json.loads((out / "tiny" / "scores.json").read_text())
    assert scores["volumes"]["models"]["ensemble"]["cases"] == 6 and set(
        scores["volumes"]["models"]["ensemble"]["per_class"]) == {"outer", "inner"}
    assert scores["volumes"]["rules"]["context"] == {"unet-tu-test_resnet-c3": 3}  # its run folder names it
    assert scores["best_interval"]["unit"] == "case" and scores["best_interval"]["units"] == 6  # bootstrap over cases
    # nnU-Net's 3D step chosen per fold on the other fold's cases, and on all of them for the test volumes
    assert all(isinstance(t["postprocess"]["largest_3d"], list) for t in scores["tuning_by_fold"].values())
    assert set(scores["postprocess"]["largest_3d"]) <= {1, 2}
    board = (out / "tiny" / "leaderboard.md").read_text()
    assert "; in 3D, " in board
    assert "In 3D over 6 cases" in board and "across the lowest resolution" in board and "context 3." in board
    run_dir = tmp_path / "runs" / "tiny" / "unet-tu-test_resnet-c3" / "fold0"
    assert json.loads((run_dir / "config.json").read_text())["context"] == 3
    first_conv = next(w for w in torch.load(next(run_dir.glob("*.pt")), weights_only=True).values() if w.ndim == 4)
    assert first_conv.shape[1] == 6  # 2 modalities x 3 slices
    export.main(["--dataset", "tiny", *paths(tmp_path), "--ensemble-dir", str(out), "--out-dir", str(tmp_path / "export")])
    assert "parity: 10 of 10 test masks identical" in capsys.readouterr().out  # the 2 test cases' 10 slices
    package = tmp_path / "export" / "tiny"
    assert "nibabel==" in (package / "requirements.txt").read_text()
    assert json.loads((package / "manifest.json").read_text())["volumes"]["modality"] == ["T2", "ADC"]
    cases = tmp_path / "new-cases"
    cases.mkdir()
    for k, c in ((6, 0), (6, 1), (7, 0), (7, 1)):
        (cases / f"vol_{k:03d}_{c:04d}.nii.gz").symlink_to(root / "imagesTs" / f"vol_{k:03d}_{c:04d}.nii.gz")
    done = subprocess.run([sys.executable, "-I", str(package / "predict.py"), "--images", str(cases), "--out",
                           str(tmp_path / "run" / "submission.csv")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "run" / "submission.csv").read_text() == (out / "tiny" / "submission.csv").read_text()
    for k in (6, 7):
        source = nibabel.load(str(root / "imagesTs" / f"vol_{k:03d}_0000.nii.gz"))
        written = nibabel.load(str(out / "tiny" / "volumes" / f"vol_{k:03d}.nii.gz"))
        assert written.shape == source.shape and np.array_equal(written.affine, source.affine)
        packaged = nibabel.load(str(tmp_path / "run" / "volumes" / f"vol_{k:03d}.nii.gz"))
        assert np.array_equal(np.asanyarray(packaged.dataobj), np.asanyarray(written.dataobj))
        assert np.array_equal(packaged.affine, source.affine)
        assert set(np.unique(np.asanyarray(written.dataobj))) <= {0, 1, 2}


def test_a_study_plans_each_context_side_by_side_and_the_ensemble_compares_it_with_single_slices(tmp_path, capsys):
    import study
    from src.ensembling.report import comparison_markdown
    from src.ensembling.scores import compare_architectures
    volume_set(tmp_path / "Task99_Tiny", cases=4, tests=0)
    prepare(tmp_path, "decathlon", "--src", str(tmp_path / "Task99_Tiny"), "--name", "tiny", "--k", "2")
    tiny = [f for k, f in enumerate(TINY) if not {f, TINY[k - 1]} & {"--size", "--encoder"}]
    flags = [*tiny, "--encoders", "tu-test_resnet", "--size", "32", "--epochs", "1", "--dataset", "tiny",
             *paths(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--archs", "unet", "--dry-run"]
    for wrong, words in ((["--contexts", "1,2"], "--contexts 1,2: odd numbers"),
                         (["--contexts", "1,3", "--context", "3"], "give --contexts"),
                         (["--contexts", "1,3", "--export"], "--export packs runs of one context")):
        with pytest.raises(SystemExit):
            study.main([*flags, *wrong])
        assert words in capsys.readouterr().err
    study.main([*flags, "--contexts", "1,3"])
    out = capsys.readouterr().out
    assert "1 archs x 1 encoders x 2 contexts x 2 folds = 4 runs" in out
    commands = [line for line in out.splitlines() if line.startswith("python")]
    assert [c.split("--context ")[1][0] for c in commands] == ["1", "3", "1", "3"]  # fold by fold, side by side
    assert "--runs unet-tu-test_resnet-c3 --folds 0,1" in out  # inferred, ensembled under its own name
    cases = [f"c{k}" for k in range(8)]
    single = pd.Series(np.linspace(0.7, 0.8, 8), index=cases)
    [versus] = compare_architectures(cases, {"unet-x": {"flip": single}, "unet-x-c3": {"flip": single + 0.02}},
                                     cases, None, "case")
    assert versus["context"] == 3 and versus["baseline"] == versus["challenger"] == "unet" and versus["encoder"] == "x"
    assert versus["mean_difference"] == pytest.approx(0.02) and versus["unit"] == "case"
    assert "- x, Unet at context 3 vs Unet on single slices (TTA flip, 8 cases" in comparison_markdown([
        {**versus, "p_holm": versus["wilcoxon_p"]}])


def test_a_folder_of_volumes_with_ct_intensities_is_normalised_by_the_training_foreground(tmp_path, capsys):
    root = tmp_path / "ct"
    volume_set(root, cases=4, tests=1)
    for path in (root / "labelsTr").glob("*.nii.gz"):  # binary: the two labels as one
        write(path, (np.asanyarray(nibabel.load(str(path)).dataobj) > 0).astype(np.uint8))
    prepare(tmp_path, "folder", "--images", str(root / "imagesTr"), "--masks", str(root / "labelsTr"), "--test",
            str(root / "imagesTs"), "--modality", "CT", "--name", "ct", "--k", "2")
    meta = json.loads((tmp_path / "data" / "ct" / "meta.json").read_text())
    assert meta["task"] == "binary" and meta["volumes"]["modality"] == "CT"
    assert "CT intensities clipped to the training foreground's 0.5 and 99.5 percentiles" in capsys.readouterr().out
    ct = meta["volumes"]["ct"]
    assert 500 < ct["mean"] < 700 and ct["low"] < ct["mean"] < ct["high"]  # the foreground: 500 outer, 700 inner
    index = pd.read_csv(tmp_path / "data" / "ct" / "index.csv")
    assert set(index[index.split == "test"]["case"]) == {"vol_004"}


def test_context_gives_each_slice_its_neighbours_in_its_case_with_the_edges_repeated(tmp_path):
    index = pd.DataFrame({"case": ["a"] * 4 + ["b"] * 3, "slice": [0, 1, 2, 3, 0, 1, 2]})
    assert volumes.neighbour_rows(index["case"], index["slice"], 3).tolist() == [[0, 0, 1], [0, 1, 2], [1, 2, 3], [2, 3, 3], [4, 4, 5],
                                                         [4, 5, 6], [5, 6, 6]]
    assert volumes.neighbour_rows(index["case"], index["slice"], 5)[4].tolist() == [4, 4, 4, 5, 6]  # never a slice of another case
    images = np.arange(7)[:, None, None] * np.ones((7, 2, 2), np.uint8)
    seen = volumes.ContextImages(images, volumes.neighbour_rows(index["case"], index["slice"], 3))
    assert seen[3].shape == (2, 2, 3) and seen[3][0, 0].tolist() == [2, 3, 3]
    assert seen[np.array([0, 6])].shape == (2, 2, 2, 3) and seen.shape == (7, 2, 2, 3)
    assert context_problem({"name": "demo", "channels": 1}, 3).startswith("--context 3: demo holds 2D images")
    assert context_problem({"name": "v", "volumes": {}}, 2).startswith("--context 2: choose an odd number")


def test_a_run_is_stale_once_the_volumes_are_prepared_by_other_rules(tmp_path):
    from src.config import Config
    from src.runs import stale_settings
    volume_set(tmp_path / "Task99_Tiny", cases=4, tests=0)
    prepare(tmp_path, "decathlon", "--src", str(tmp_path / "Task99_Tiny"), "--name", "tiny", "--k", "2")
    flags = [*TINY[:TINY.index("--size")], *TINY[TINY.index("--size") + 2:], "--size", "32", "--epochs", "1"]
    run = ["--dataset", "tiny", *paths(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--fold", "0"]
    train.main([*flags, *run])
    cfg = Config(dataset="tiny", data_dir=str(tmp_path / "data"), folds_dir=str(tmp_path / "folds"),
                 runs_dir=str(tmp_path / "runs"), size=32, encoder="tu-test_resnet", encoder_weights="none",
                 decoder_channels="32,16,16,8,8", batch_size=4, lr=1e-2, aug="light", epochs=1)
    run_dir = tmp_path / "runs" / "tiny" / "unet-tu-test_resnet" / "fold0"
    meta_path = tmp_path / "data" / "tiny" / "meta.json"
    assert "volumes'" not in stale_settings(run_dir, cfg)
    meta = json.loads(meta_path.read_text())
    meta["volumes"]["normalisation"] = "CT intensities clipped ..."
    meta_path.write_text(json.dumps(meta))
    assert "the volumes' normalisation (prepare's rules)" in stale_settings(run_dir, cfg)


def test_the_benchmark_times_a_volumes_prediction_against_a_plain_forward_of_its_slices():
    from src.bench import volume_prediction
    from src.config import Config
    cfg = Config(arch="unet", encoder="tu-test_resnet", decoder_channels="32,16,16,8,8", size=32, batch_size=8)
    measured = volume_prediction(cfg, torch.device("cpu"), context=3, cases=2, depth=6)
    assert measured["slices"] == 12 and measured["context"] == 3
    assert measured["volume_slices_per_s"] > 0 and measured["plain_slices_per_s"] > 0


def test_an_nnunet_v2_dataset_is_read_through_its_channel_files(tmp_path):
    root = tmp_path / "Dataset002_Tiny"
    volume_set(root, cases=3, tests=1)
    for path in [*(root / "imagesTr").glob("*.nii.gz"), *(root / "imagesTs").glob("*.nii.gz")]:
        path.rename(path.with_name(path.name.replace(".nii.gz", "_0000.nii.gz")))
    (root / "dataset.json").write_text(json.dumps({"channel_names": {"0": "T1"}, "file_ending": ".nii.gz",
                                                   "labels": {"background": 0, "outer": 1, "inner": 2},
                                                   "numTraining": 3}))
    prepare(tmp_path, "decathlon", "--src", str(root), "--k", "3")
    index = pd.read_csv(tmp_path / "data" / "Dataset002_Tiny" / "index.csv")
    assert sorted(index["case"].unique()) == ["vol_000", "vol_001", "vol_002", "vol_003"]
    assert set(index[index.split == "test"]["case"]) == {"vol_003"}
    assert json.loads((tmp_path / "data" / "Dataset002_Tiny" / "meta.json").read_text())["classes"] == [
        "background", "outer", "inner"]


def test_modalities_become_channels_alike_from_a_4d_image_and_from_channel_files(tmp_path, capsys):
    for layout, root in (("decathlon", tmp_path / "Task05_Two"), ("nnunet", tmp_path / "Dataset005_Two")):
        volume_set(root, cases=3, tests=1, modalities=("T2", "ADC"), layout=layout)
        prepare(tmp_path, "decathlon", "--src", str(root), "--name", layout, "--k", "3")
    assert "channel 1 (ADC) z-scored per volume" in capsys.readouterr().out
    meta = json.loads((tmp_path / "data" / "nnunet" / "meta.json").read_text())
    assert meta["channels"] == 2 and meta["volumes"]["modality"] == ["T2", "ADC"]
    caches = [np.load(next((tmp_path / "data" / name / "cache").glob("*/images.npy"))) for name in ("decathlon", "nnunet")]
    assert caches[0].shape[-1] == 2 and np.array_equal(*caches)  # the same slices from either layout
    assert not np.array_equal(caches[0][..., 0], caches[0][..., 1])  # two contrasts, each z-scored on its own
    index = pd.read_csv(tmp_path / "data" / "nnunet" / "index.csv")
    assert index["file"].str.endswith(".npy").all() and np.array_equal(
        np.load(tmp_path / "data" / "nnunet" / index["file"][0]), caches[1][0])
    seen = volumes.ContextImages(caches[1], volumes.neighbour_rows(index["case"], index["slice"], 3))
    assert seen.shape[-1] == 6 and np.array_equal(seen[1][..., 2:4], caches[1][1])  # slice by slice, its channels
    (tmp_path / "Dataset005_Two" / "imagesTr" / "vol_001_0001.nii.gz").unlink()  # a missing channel file
    with pytest.raises(SystemExit, match="vol_001_0001.nii.gz: channel file of case vol_001 not found"):
        prepare(tmp_path, "decathlon", "--src", str(tmp_path / "Dataset005_Two"), "--name", "gone", "--k", "3")
    assert not (tmp_path / "data" / "gone").exists()
    files = [Path(f"vol_{k}_{c:04d}.nii.gz") for k, c in ((1, 0), (1, 1), (2, 0))]
    assert volumes.case_files(files[:2], 2) == {"vol_1": files[:2]}
    with pytest.raises(ValueError, match="vol_2: channel file vol_2_0001 missing"):
        volumes.case_files(files, 2)


def test_cases_of_one_patient_share_a_fold_through_the_metadata(tmp_path):
    volume_set(tmp_path / "Task99_Tiny", cases=6, tests=0)
    pd.DataFrame({"id": [f"vol_{k:03d}" for k in range(6)], "patient": ["p0", "p0", "p1", "p1", "p2", "p2"],
                  "side": ["left", "right"] * 3}).to_csv(tmp_path / "metadata.csv", index=False)
    prepare(tmp_path, "decathlon", "--src", str(tmp_path / "Task99_Tiny"), "--name", "tiny", "--k", "3", "--meta",
            str(tmp_path / "metadata.csv"), "--group-column", "patient")
    index = pd.read_csv(tmp_path / "data" / "tiny" / "index.csv")
    folds = pd.read_csv(tmp_path / "folds" / "tiny.csv").merge(index[["id", "case", "side"]], on="id")
    assert set(folds["group"]) == {"p0", "p1", "p2"} and set(folds["side"]) == {"left", "right"}
    assert folds.groupby("group")["fold"].nunique().max() == 1  # both hemispheres of a patient in one fold
