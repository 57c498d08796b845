"""unetpp_ds: Unet++ with deep supervision, its pruned levels, and training it with train.py (tiny, CPU)."""
import json
import socket

import pandas as pd
import pytest
import segmentation_models_pytorch as smp
import torch

import train
from conftest import TINY, paths
from src.config import Config
from src.portable.deep_supervision import level_model, level_sizes
from src.losses import SegmentationLoss
from src.models import ModelError, create_model


def tiny(encoder="tu-test_resnet", classes=1):
    torch.manual_seed(0)
    return create_model("unetpp_ds", encoder, 1, classes, "none", "16,16,8,8,8")


def modules_run(model, x) -> int:
    ran = set()
    hooks = [m.register_forward_hook(lambda m, args, out: ran.add(m)) for m in model.modules()]
    with torch.no_grad():
        model(x)
    for hook in hooks:
        hook.remove()
    return len(ran)


def test_every_head_learns_from_the_loss():
    model = tiny().train()
    images, masks = torch.rand(2, 1, 32, 32), (torch.rand(2, 32, 32) > 0.5).long()
    logits = model(images)
    assert len(logits) == 4 and all(head.shape == (2, 1, 32, 32) for head in logits)
    loss_fn = SegmentationLoss("binary")
    loss = loss_fn(logits, masks)
    torch.testing.assert_close(loss, loss_fn.head_losses.mean())
    loss.backward()
    heads = [*(deep["head"] for deep in model.deep_heads), model.segmentation_head]
    assert all(head[0].weight.grad.abs().sum() > 0 for head in heads)

    model.zero_grad()
    SegmentationLoss("binary", head_weights=[0, 0, 1, 3])(model(images), masks).backward()  # --ds-weights 0,0,1,3
    assert [head[0].weight.grad.abs().sum() > 0 for head in heads] == [False, False, True, True]


def test_pruned_levels_are_smaller_run_less_and_predict_as_their_heads():
    model = tiny().eval()
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        heads = model.head_logits(images)
    levels = [level_model(model, level, "binary") for level in ("L1", "L2", "L3", "L4")]
    sizes = [sum(p.numel() for p in level.parameters()) for level in levels]
    runs = [modules_run(level, images) for level in levels]
    assert sizes == sorted(sizes) and len(set(sizes)) == 4, sizes  # each level strictly smaller than the next
    assert runs == sorted(runs) and len(set(runs)) == 4, runs
    assert runs[-1] == modules_run(model, images)  # L4 runs what the model's own eval forward runs
    assert not any(level.encoder_fallback for level in levels)  # a timm resnet is cut by out_indices
    stages = dict(levels[0].encoder.model.named_children())  # L1: the stem and the first stage (strides 2 and 4)
    assert "layer1" in stages and "layer2" not in stages
    with torch.no_grad():
        for level, head in zip(levels, heads):
            torch.testing.assert_close(level(images), head)
        mean = level_model(model, "mean", "binary")(images).sigmoid()
    torch.testing.assert_close(mean, torch.stack(heads).sigmoid().mean(0))  # accurate mode: mean probability
    two = tiny(classes=2).eval()  # two channels: a sigmoid each (multilabel), or a softmax over them (multiclass)
    with torch.no_grad():
        heads = torch.stack(two.head_logits(images))
        torch.testing.assert_close(level_model(two, "mean", "multilabel")(images).sigmoid(), heads.sigmoid().mean(0))
        torch.testing.assert_close(level_model(two, "mean", "multiclass")(images).exp(), heads.softmax(2).mean(0))


def test_l4_is_the_models_eval_forward_which_is_smps_own():
    model = tiny().eval()
    images = torch.rand(2, 1, 32, 32)
    plain = smp.UnetPlusPlus("tu-test_resnet", encoder_weights=None, in_channels=1, classes=1,
                             decoder_channels=(16, 16, 8, 8, 8)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.startswith("deep_heads.")})
    with torch.no_grad():
        torch.testing.assert_close(level_model(model, "L4", "binary")(images), model(images), rtol=0, atol=0)
        torch.testing.assert_close(model(images), plain(images), rtol=0, atol=0)


@pytest.mark.parametrize("encoder", ["mobilenet_v2", "efficientnet-b0", "resnet18", "tu-test_resnet"])
def test_every_level_is_cut_and_predicts_as_the_full_models_head(encoder):
    """smp's sequential encoders (mobilenet_v2, efficientnet-b*) are cut too, with their output unchanged."""
    model = tiny(encoder).eval()
    images = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        heads = model.head_logits(images)
        for level, head in zip(model.levels, heads):
            net = level_model(model, level, "binary")
            assert not net.encoder_fallback, level
            assert torch.allclose(net(images), head, atol=1e-5), level


def test_a_mobilenet_level_holds_only_the_stages_it_reads():
    """L2 reads mobilenet_v2's stride-2, 4 and 8 features: the stride-16 stage (0.49 M) is not kept."""
    torch.manual_seed(0)
    model = create_model("unetpp_ds", "mobilenet_v2", 3, 1, "none", "64,32,16,16,8").eval()
    sizes = {row["level"]: row for row in level_sizes(model, "binary")}
    assert sizes["L2"]["parameters"] < 0.2e6
    assert not any(row["encoder_fallback"] for row in sizes.values())
    assert sizes["L3"]["parameters"] < 1e6  # the stride-32 stage's 1.7 M are not kept either


def test_an_encoder_that_cannot_be_cut_runs_in_full_but_skips_decoder_nodes(capsys):
    """timm's EfficientNet-family feature extractors run every block whatever out_indices asks for; infer says so."""
    import infer
    model = tiny("tu-mobilenetv3_small_050", classes=3).eval()
    images = torch.rand(1, 1, 32, 32)
    cfg = Config(arch="unetpp_ds", encoder="tu-mobilenetv3_small_050", encoder_weights="none")
    (_, l1), (_, l4) = infer.level_models(model, cfg, ["L1", "L4"], set(), "multiclass")
    assert l1.encoder_fallback and not l4.encoder_fallback
    assert capsys.readouterr().out == ("infer: unetpp_ds-tu-mobilenetv3_small_050 L1: encoder "
                                       "tu-mobilenetv3_small_050 cannot be cut to this level's stages, so it runs all "
                                       "of them (the decoder nodes past L1 are still skipped)\n")
    assert modules_run(l1, images) < modules_run(l4, images)
    with torch.no_grad():
        torch.testing.assert_close(l1(images), model.head_logits(images)[0])


@pytest.mark.parametrize("encoder, message", [
    ("mit_b0", "unetpp_ds cannot be built on encoder 'mit_b0': UnetPlusPlus is not support"),  # smp's refusal
    ("tu-convnext_atto", "has no stride-2 features"),
])
def test_encoders_unetpp_cannot_supervise_are_refused_in_one_sentence(encoder, message):
    with pytest.raises(ModelError, match=message):
        create_model("unetpp_ds", encoder, 3, 1, "none")


def run_train(workdir, tmp_path, *args):
    train.main([*TINY, *paths(workdir), "--runs-dir", str(tmp_path / "runs"), "--arch", "unetpp_ds",
                "--aug", "none", *args])
    return tmp_path / "runs" / "demo" / "unetpp_ds-tu-test_resnet" / "fold0"


def test_train_logs_each_head_resumes_and_rebuilds_offline(demo_dir, tmp_path, monkeypatch):
    from src.predict import load_trained_model
    run = run_train(demo_dir, tmp_path, "--epochs", "1")
    run_train(demo_dir, tmp_path, "--epochs", "2", "--resume")  # loads the saved state: model with its heads, optimiser
    history = pd.read_csv(run / "history.csv")
    assert history["epoch"].tolist() == [1, 2]
    heads = history[[f"train_loss_L{j}" for j in range(1, 5)]]
    assert history["train_loss"].tolist() == pytest.approx(heads.mean(axis=1).tolist())
    saved = torch.load(run / "last.pt")

    def no_network(*args, **kwargs):
        raise OSError("no network in this test")
    monkeypatch.setattr(socket, "create_connection", no_network)
    model, cfg, _ = load_trained_model(run, run / "last.pt", torch.device("cpu"))
    assert cfg.arch == "unetpp_ds" and any(k.startswith("deep_heads.") for k in model.state_dict())
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0)


@pytest.mark.parametrize("args, message", [
    (["--ds-weights", "1,1"], "--ds-weights 1,1: give 4 non-negative numbers, one per head from L1 to L4"),
    (["--arch", "unet", "--ds-weights", "1,1,1,1"], "only unetpp_ds has several heads to weight; drop it"),
])
def test_ds_weights_errors(demo_dir, tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        run_train(demo_dir, tmp_path, "--epochs", "1", *args)


@pytest.fixture(scope="module")
def levelled(demo_dir, tmp_path_factory):
    """A tiny unetpp_ds trained 1 epoch on each fold of the 3-fold demo, inferred at every level."""
    import infer
    from conftest import infer_args
    workdir = tmp_path_factory.mktemp("levels")
    for name in ("data", "folds"):
        (workdir / name).symlink_to(demo_dir / name)
    for fold in range(3):
        run_train(workdir, workdir, "--epochs", "1", "--fold", str(fold))
    infer.main([*infer_args(workdir), "--tta", "none", "--level", "all"])
    return workdir


def test_infer_predicts_every_level_as_its_own_set_ensemble_chooses_one_per_fold_and_export_packs_it(levelled,
                                                                                                     tmp_path):
    import ensemble
    import export
    from src import runs as ledger
    from src.metrics import per_image
    preds = levelled / "preds" / "demo" / "unetpp_ds-tu-test_resnet"
    folders = {level: preds / f"tta-none{'' if level == 'L4' else '-' + level}" for level in ledger.LEVELS}
    inference = {level: json.loads((folder / "inference.json").read_text()) for level, folder in folders.items()}
    for level, folder in folders.items():  # the level is recorded, not read from the folder's name
        assert json.loads((folder / "prediction.json").read_text())["level"] == level
        assert len(list((folder / "oof").glob("*.npz"))) == 36 and inference[level]["images_per_s"] > 0
    parameters = [inference[level]["parameters_m"] for level in ledger.LEVELS]
    assert parameters[:4] == sorted(parameters[:4]) and len(set(parameters[:4])) == 4  # L1 < L2 < L3 < L4 < mean
    assert parameters[4] > parameters[3]

    ensemble.main(["--dataset", "demo", *paths(levelled), "--preds-dir", str(levelled / "preds"), "--out-dir",
                   str(tmp_path)])
    scores = json.loads((tmp_path / "demo" / "scores.json").read_text())
    run = scores["runs"]["unetpp_ds-tu-test_resnet"]
    dice = pd.DataFrame({level: per_image(pd.read_csv(folder / "oof_scores.csv", dtype={"id": str})).set_index("id")[
        "dice"] for level, folder in folders.items()})
    fold = pd.read_csv(levelled / "folds" / "demo.csv", dtype={"id": str}).set_index("id")["fold"].reindex(dice.index)
    # Each fold at the level of highest Dice on the other folds (the cheaper on a tie); the test masks' on all images.
    assert run["level_by_fold"] == {str(f): dice[fold != f].mean().idxmax() for f in range(3)}
    assert run["level"] == dice.mean().idxmax() and set(run["levels"]) == set(ledger.LEVELS)
    per_fold = pd.Series([dice.loc[i, run["level_by_fold"][str(fold[i])]] for i in dice.index])
    assert run["dice"] == pytest.approx(per_fold.mean())
    assert run["levels"]["L1"]["parameters_m"] == inference["L1"]["parameters_m"]
    board = (tmp_path / "demo" / "leaderboard.md").read_text()
    assert f"| unetpp_ds-tu-test_resnet (level" in board and len(list((tmp_path / "demo" / "masks").glob("*.png"))) == 4
    # The package holds each fold at the level the test masks used, and writes the same masks.
    export.main(["--dataset", "demo", *paths(levelled), "--ensemble-dir", str(tmp_path), "--out-dir",
                 str(tmp_path / "export")])
    manifest = json.loads((tmp_path / "export" / "demo" / "manifest.json").read_text())
    assert [(m["fold"], m["level"]) for m in manifest["models"]] == [(f, run["level"]) for f in range(3)]
    assert manifest["parity"].startswith("4 of 4 test masks identical to")
