"""Sliding-window prediction (MONAI) for runs trained on patches: equal to a plain forward where one window covers the
image, no seams, every pixel covered, memory bounded by the window batch; bad settings refused in one line."""
import re

import pytest
import torch

from src.config import Config, patch_problem
from src.models import create_model
from src.portable.torch_model import with_tta
from src.portable.sliding import sliding_window
from src.sliding import describe, encoder_stride, windowed, windows_per_image


def tiny_model(seed=0):
    torch.manual_seed(seed)
    return create_model("unet", "tu-test_resnet", 1, 1, "none", "32,16,16,8,8").eval()


class Constant(torch.nn.Module):
    """A predictor whose every output pixel is `value`; it records the windows it is given."""

    def __init__(self, value=0.7, channels=2):
        super().__init__()
        self.value, self.channels, self.windows = value, channels, []

    def forward(self, windows):
        self.windows.append(tuple(windows.shape))
        return torch.full((len(windows), self.channels, *windows.shape[2:]), self.value)


@pytest.mark.parametrize("tta", ["none", "flip", "d4"])
def test_a_window_the_size_of_the_image_equals_a_plain_forward(tta):
    predictor = with_tta(tiny_model(), "binary", tta)
    images = torch.randint(0, 256, (3, 1, 64, 64), dtype=torch.uint8)
    with torch.no_grad():
        plain, windowed_ = predictor(images), sliding_window(predictor, images, 64, 0.5, 2)
    torch.testing.assert_close(windowed_, plain, rtol=0, atol=1e-6)


def test_a_constant_model_gives_a_constant_map_over_a_3_3_patch_image():
    """No seams where windows meet, no pixel divided by a zero weight (nnU-Net's and MONAI's known pitfalls)."""
    images = torch.zeros(2, 3, 106, 106, dtype=torch.uint8)  # 3.3 patches of 32 a side
    out = sliding_window(Constant(0.7), images, 32, 0.5, 4)
    assert out.shape == (2, 2, 106, 106) and torch.isfinite(out).all()
    torch.testing.assert_close(out, torch.full_like(out, 0.7), rtol=0, atol=1e-6)


@pytest.mark.parametrize("height, width", [(97, 131), (33, 65), (20, 45)])
def test_every_pixel_of_odd_sized_images_is_covered(height, width):
    """An uncovered pixel would stay 0 (or 0/0); images smaller than the window are padded, then cropped back."""
    out = sliding_window(Constant(1.0, channels=1), torch.zeros(1, 1, height, width), 32, 0.5, 3)
    assert out.shape == (1, 1, height, width)
    torch.testing.assert_close(out, torch.ones_like(out), rtol=0, atol=1e-6)


def test_memory_is_bounded_by_the_window_batch_not_the_image():
    predictor = Constant()
    sliding_window(predictor, torch.zeros(3, 1, 224, 224), 64, 0.5, 5)
    assert {shape[2:] for shape in predictor.windows} == {(64, 64)}  # the model never sees more than a window
    assert max(shape[0] for shape in predictor.windows) <= 5
    assert sum(shape[0] for shape in predictor.windows) == 3 * windows_per_image(224, 64, 0.5) == 3 * 36


def test_a_run_without_patches_predicts_with_its_predictor_itself():
    predictor = Constant()
    assert windowed(predictor, Config(size=64)) is predictor
    assert windowed(predictor, Config(size=64, patch=64)) is predictor
    window = windowed(predictor, Config(size=128, patch=64, overlap=0.25, sw_batch_size=3))
    assert window(torch.zeros(1, 1, 128, 128)).shape == (1, 2, 128, 128) and max(s[0] for s in predictor.windows) <= 3
    assert describe(Config(size=128, patch=64)) == "sliding window 64 px, overlap 0.5, 9 windows an image"
    assert describe(Config(size=128)) == ""


@pytest.mark.parametrize("settings, message", [
    ({"size": 64, "patch": 96}, "--patch 96 is not between 0 and --size 64"),
    ({"size": 128, "patch": 48}, "--patch 48 is not a multiple of 32, the factor encoder resnet34 reduces its input by; "
                                 "use 32 or 64"),
    ({"size": 128, "patch": 16}, "--patch 16 is not a multiple of 32.*; use 32$"),
    ({"size": 128, "patch": 64, "overlap": 1.0}, r"--overlap 1 is outside \[0, 1\)"),
    ({"size": 128, "patch": 64, "overlap": -0.1}, r"--overlap -0.1 is outside \[0, 1\)"),
    ({"size": 128, "patch": 64, "sw_batch_size": 0}, "--sw-batch-size 0"),
    ({"size": 128, "patch": 64, "foreground_patches": 1.5}, r"--foreground-patches 1.5 is a share .* \[0, 1\]"),
    ({"size": 128, "patch": 64, "patches_per_image": 0}, "--patches-per-image 0: give at least 1"),
    ({"size": 128, "foreground_patches": 0.5}, "only a --patch below --size draws"),
])
def test_bad_patch_settings_are_refused_in_one_line(settings, message):
    problem = patch_problem(Config(**settings), encoder_stride("resnet34"))
    assert problem and "\n" not in problem
    assert re.search(message, problem), problem


def test_good_patch_settings_pass_and_the_stride_is_smps():
    assert encoder_stride("resnet34") == encoder_stride("tu-test_resnet") == 32
    for settings in ({"size": 64}, {"size": 64, "patch": 64}, {"size": 256, "patch": 128, "overlap": 0.0}):
        assert patch_problem(Config(**settings), 32) is None


@pytest.mark.parametrize("tta", ["flip", "d4"])
def test_tta_runs_inside_each_window_batch_on_square_windows_of_any_image(tta):
    """TTA wraps the predictor, so each window batch is flipped and turned as a P x P square and turned back: a
    non-square image never reaches ttach, and the merged map keeps the image's shape."""
    seen = Constant(0.25, channels=1)
    out = sliding_window(with_tta_of(seen, tta), torch.zeros(2, 1, 97, 131), 64, 0.5, 4)
    assert out.shape == (2, 1, 97, 131)
    torch.testing.assert_close(out, torch.full_like(out, 0.25), rtol=0, atol=1e-6)
    assert {shape[2:] for shape in seen.windows} == {(64, 64)}
    real = sliding_window(with_tta(tiny_model(), "binary", tta), torch.randint(0, 256, (1, 1, 97, 131)), 64, 0.5, 4)
    assert real.shape == (1, 1, 97, 131) and ((real >= 0) & (real <= 1)).all()


def with_tta_of(predictor, mode):
    """torch_model.with_tta's ttach wrapper around a predictor that returns probabilities already."""
    import ttach
    from src.portable.torch_model import TTA_MODES
    return ttach.SegmentationTTAWrapper(predictor, TTA_MODES[mode](), merge_mode="mean")


def test_a_patched_run_is_predicted_recorded_ensembled_and_exported_by_its_window(demo_dir, tmp_path, capsys):
    """infer.py slides the run's window (its OOF Dice at the working size is the validation Dice train.py logged),
    records it in every file and in prediction.json, names it in its summary and the leaderboard, a set predicted with
    another --overlap is stale for the ensemble, and the package slides the same window (identical masks)."""
    import json

    import numpy as np

    import ensemble
    import export
    import infer
    import train
    from conftest import TINY, infer_args, paths
    from src.cache import open_cache
    from src.canonical import load_index
    from src.folds import fold_rows, load_folds
    from src.metrics import confusion, summarize
    from src.runs import PredictionSet, set_folder
    for fold in (0, 1):
        train.main([*TINY, *paths(demo_dir), "--runs-dir", str(tmp_path / "runs"), "--fold", str(fold), "--epochs", "1",
                    "--patch", "32"])
    flags = infer_args(tmp_path)[:2] + paths(demo_dir) + ["--runs-dir", str(tmp_path / "runs"), "--preds-dir",
                                                          str(tmp_path / "preds")]
    capsys.readouterr()
    infer.main(flags)
    assert "unet-tu-test_resnet (tta none, last.pt, sliding window 32 px, overlap 0.5, 9 windows an image)" in \
        " ".join(capsys.readouterr().out.split())
    folder = set_folder(tmp_path / "preds", "demo", "unet-tu-test_resnet", "none")
    predictions = PredictionSet("unet-tu-test_resnet", "selected", "none", None, folder)
    assert predictions.windows("oof") == predictions.windows("test") == {f: {"patch": 32, "overlap": 0.5} for f in (0, 1)}
    assert json.loads((folder / "inference.json").read_text())["window"] == \
        "sliding window 32 px, overlap 0.5, 9 windows an image"
    # Fold 0's OOF maps at the working size score what train.py logged for those weights (TTA none).
    data = demo_dir / "data" / "demo"
    index = load_index(data)
    valid = fold_rows(index, load_folds(demo_dir / "folds", "demo", index), 0)[1]
    masks = open_cache(data, 64)[1]
    counts = []
    for row in valid:
        with np.load(folder / "oof" / f"{index['id'][row]}.npz") as saved:
            assert saved["window"].item() == "32:0.5"
            pred = torch.from_numpy(saved["prob"][0] >= 128).long()[None]  # probability >= 0.5, as stored (* 255)
        counts.append(confusion(pred, torch.from_numpy(np.array(masks[row]))[None], 2))
    oof = summarize(*(torch.cat(c) for c in zip(*counts)), ["background", "lung"])["dice"]
    logged = json.loads((tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "fold0" / "metrics.json").read_text())["dice"]
    assert abs(oof - logged) < 1e-6, (oof, logged)
    # The ensemble's leaderboard names the window; the package slides it, with MONAI in its requirements.
    out = [*paths(demo_dir), "--preds-dir", str(tmp_path / "preds"), "--out-dir", str(tmp_path / "ensemble")]
    ensemble.main(["--dataset", "demo", *out, "--figures", "0"])
    board = (tmp_path / "ensemble" / "demo" / "leaderboard.md").read_text()
    assert "| unet-tu-test_resnet (sliding window 32 px, overlap 0.5, 9 windows an image) |" in board
    exported = ["--dataset", "demo", *paths(demo_dir), "--ensemble-dir", str(tmp_path / "ensemble")]
    export.main([*exported, "--out-dir", str(tmp_path / "export")])
    manifest = json.loads((tmp_path / "export" / "demo" / "manifest.json").read_text())
    assert [m["window"] for m in manifest["models"]] == [{"patch": 32, "overlap": 0.5}] * 2
    assert manifest["parity"].startswith("4 of 4 test masks identical to")
    assert "monai==" in (tmp_path / "export" / "demo" / "requirements.txt").read_text()
    with pytest.raises(SystemExit, match=r"^export: unet-tu-test_resnet predicts by sliding window .*; export "
                                         r"--format torch$"):
        export.main([*exported, "--out-dir", str(tmp_path / "export-onnx"), "--format", "onnx"])
    # Another --overlap predicts the set's OOF files again with it (tuning reads them), so the test files made with
    # the former one no longer go with them: the ensemble refuses them with the command that predicts them again.
    images = tmp_path / "new"
    images.mkdir()
    for path in sorted((data / "images").iterdir())[:2]:
        (images / path.name).write_bytes(path.read_bytes())
    infer.main([*flags, "--images", str(images), "--overlap", "0.25"])
    assert predictions.windows("sets/new") == predictions.windows("oof") == {f: {"patch": 32, "overlap": 0.25}
                                                                             for f in (0, 1)}
    assert predictions.stale_folds("test", [0, 1]) == [0, 1] and predictions.stale_folds("sets/new", [0, 1]) == []
    with pytest.raises(SystemExit, match=r"^ensemble: .* \(unet-tu-test_resnet, fold 0\) was predicted with overlap "
                                         r"0.5, its OOF files with overlap 0.25; predict it again with theirs: `python "
                                         r"infer.py .*--overlap 0.25"):
        ensemble.main(["--dataset", "demo", *out[:-1], str(tmp_path / "ensemble-new"), "--figures", "0"])
    ensemble.main(["--dataset", "demo", *out[:-1], str(tmp_path / "ensemble-new"), "--set", "new", "--figures", "0"])
    with pytest.raises(SystemExit):
        infer.parse_args(["--overlap", "1"])
