"""Long strips (Severstal's 256 x 1600 steel) at their own aspect: planned, cached, trained, predicted and brought
back to the original size as rectangles, never squeezed to squares."""
import json

import numpy as np
import pytest

import infer
import train
from conftest import TINY, infer_args, paths, prepare
from src.cache import open_cache
from src.config import Config
from src.models import size_problem
from src.plan import fingerprint, plan_size
from src.portable.images import read_image, resize, write_png
from src.runs import load_pred


def strip_set(tmp_path, count=12, shape=(96, 384)):
    """Grey strips, 4:1, each with a bright horizontal bar as its mask: a square cache would squeeze it 4x."""
    rng = np.random.default_rng(0)
    for sub in ("images", "masks"):
        (tmp_path / "strips" / sub).mkdir(parents=True)
    for k in range(count):
        image = rng.integers(0, 60, shape, dtype=np.uint8)
        mask = np.zeros(shape, np.uint8)
        top, left = rng.integers(10, 70), rng.integers(0, 200)
        mask[top:top + 12, left:left + 160] = 255
        image[mask > 0] = 200
        write_png(tmp_path / "strips" / "images" / f"s{k:02d}.png", image)
        write_png(tmp_path / "strips" / "masks" / f"s{k:02d}.png", mask)
    return tmp_path / "strips"


def test_a_strip_set_is_planned_trained_and_predicted_at_its_aspect(tmp_path):
    strips = strip_set(tmp_path)
    prepare(tmp_path, "folder", "--images", str(strips / "images"), "--masks", str(strips / "masks"), "--size", "64x256",
            "--k", "2", "--strategy", "kfold")
    size, rule = plan_size(fingerprint(tmp_path / "data" / "strips", tmp_path / "folds"))
    assert size == (96, 384) and "the median image, 96 x 384 px, is 4.00:1, beyond 1.5:1, so the size keeps its " \
        "aspect: 96x384" in rule
    images, masks = open_cache(tmp_path / "data" / "strips", (64, 256))
    assert images.shape == (12, 64, 256) and masks.shape == (12, 64, 256)
    original = read_image(strips / "masks" / "s03.png") > 0
    back = resize(masks[3], (96, 384), is_mask=True) > 0  # the cache's mask at full size lies on the original
    assert (back & original).sum() / (back | original).sum() > 0.9
    run = ["--dataset", "strips", *paths(tmp_path), "--runs-dir", str(tmp_path / "runs"), "--fold", "0"]
    train.main([*TINY, "--size", "64x256", "--epochs", "1", *run])
    config = json.loads((tmp_path / "runs" / "strips" / "unet-tu-test_resnet" / "fold0" / "config.json").read_text())
    assert config["size"] == [64, 256] and Config(size=config["size"]).size == (64, 256)
    infer.main([*infer_args(tmp_path, "strips"), "--folds", "0", "--tta", "flip"])
    oof = sorted((tmp_path / "preds" / "strips" / "unet-tu-test_resnet" / "tta-flip" / "oof").glob("*.npz"))
    prob, size = load_pred(oof[0])
    assert prob.shape[-2:] == (64, 256) and size == (96, 384)  # at the working size, its original's recorded


@pytest.mark.parametrize("arch", ["unet", "unetpp"])
def test_a_rectangle_needs_both_sides_on_the_encoders_stride(arch):
    assert size_problem(arch, "resnet18", (64, 256)) is None
    assert size_problem(arch, "resnet18", (64, 250)) == ("--size 64x250: a rectangle's sides must both be multiples "
                                                         "of 32, the factor encoder resnet18 reduces its input by; use "
                                                         "64x256")
