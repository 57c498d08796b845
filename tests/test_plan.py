"""The plan from a dataset's fingerprint: each value by its stated rule, flags over the plan, config sources."""
import argparse
import json
import math
import re
import shutil
from dataclasses import replace

import numpy as np
import pandas as pd
import pytest
from conftest import ROOT, TINY, paths, prepare

import train
from src import folds, plan, split, study
from src import runs as ledger
from src.config import RULE_DEFAULTS, Config, add_config_arguments, config_from_args
from src.portable.images import read_image, write_png


def planned_copy(workdir, tmp_path, dataset):
    """Plan a copy of a session dataset: the shared fixture stays without a plan.json for the other tests."""
    shutil.copytree(workdir / "data" / dataset, tmp_path / "data" / dataset)
    shutil.copytree(workdir / "folds", tmp_path / "folds")
    return plan.main([dataset, "--data-dir", str(tmp_path / "data"), "--folds-dir", str(tmp_path / "folds")])


@pytest.fixture(scope="module")
def planned_demo(tmp_path_factory):
    """(the data folder of the demo prepared as conftest's demo_dir, with the plan prepare writes, its plan)."""
    workdir = tmp_path_factory.mktemp("plan")
    prepare(workdir, "demo", "--count", "36", "--test-count", "4", "--k", "3", plan=True)  # no --size: the rule's
    return workdir / "data", plan.load_plan(workdir / "data" / "demo")


@pytest.fixture(scope="module")
def demo_plan(planned_demo):
    return planned_demo[1]


def test_demo_plan_gives_the_values_its_rules_state(planned_demo):
    data_dir, demo_plan = planned_demo
    fp, values = demo_plan["fingerprint"], demo_plan["values"]
    assert (fp["labelled_images"], fp["test_images"], fp["folds"], fp["train_images"]) == (36, 4, 3, 24)
    assert fp["channels"] == 1 and 0.3 < fp["median_object_all"] < 0.6  # two lungs of about a third of the image
    # size: the smallest multiple of 32 (at least 64) at which the median object spans 48 px
    size = values["size"]
    assert size % 32 == 0 and fp["median_object_all"] * size >= 48 > fp["median_object_all"] * (size - 32)
    assert size <= fp["median_short_side"]
    # batch: 16 at most, and at least 4 steps an epoch of a fold's 24 training images
    assert values["batch_size"] == 6
    assert values["epochs"] == round(1000 / math.ceil(24 / 6))
    assert (values["lr"], values["scheduler"]) == (1e-3, "cosine")
    assert values["warmup_epochs"] == round(0.05 * values["epochs"])
    assert values["aug"] == "heavy" and values["class_weights"] == "none"  # 36 images; binary
    assert values["ema"] == 0.9999 and "reaches 0.9900 by the 1000 optimiser steps, an average over about the last " \
        "100" in demo_plan["rules"]["ema"]  # the figures of docs/results.md: EMA of the weights never lost
    assert set(demo_plan["rules"]) == set(values) and all(demo_plan["rules"].values())
    printed = plan.describe(json.loads((data_dir / "demo" / "plan.json").read_text()), data_dir / "demo")
    assert f"size: {size} (the smallest multiple of 32, at least 64, at which the median object" in printed[1]
    assert printed[2].startswith("patch: 0 (the largest multiple of 32 at which a batch of 6") and \
        printed[2].endswith("the working size 128 px fits: the whole image, no patch)")  # the demo keeps resizing
    assert printed[4].startswith(f"epochs: {values['epochs']} (1000 optimiser steps")
    # A user has no tracker: the lines cite pages they can open, never an issue number.
    assert not re.search(r"\bissues? \d", "\n".join(printed), re.I)
    assert all((ROOT / page).is_file() for page in re.findall(r"docs/[\w./-]+\.md", "\n".join(printed)))
    assert "lr: 0.001 (RAdam in Lookahead at batch <= 16: 1e-3 beat the former 3e-4 on four real sets " \
           "(docs/results.md, fold 0 under each recipe)" in printed[5]


def test_multiclass_plan_weights_the_rare_class_without_reading_the_scored_fold(multiclass_dir, tmp_path):
    """The rare class is found in each fold's training folds' masks; the weights come from the run's own training
    masks (--class-weights auto): rewriting a fold's masks changes nothing that fold trains with."""
    result = planned_copy(multiclass_dir, tmp_path, "demo-multiclass")
    fp, rule = result["fingerprint"], result["rules"]["class_weights"]
    assert rule.startswith("dead under") and "never the fold it scores" in rule  # 5% of the nuclei: the rare class
    assert result["values"]["class_weights"] == "auto" and len(fp["fold_class_shares"]) == fp["folds"]
    assert json.loads((tmp_path / "data" / "demo-multiclass" / "plan.json").read_text())["values"] == result["values"]
    data = tmp_path / "data" / "demo-multiclass"
    split = folds.load_folds(tmp_path / "folds", "demo-multiclass")
    dead = result["fingerprint"]["classes"].index("dead")
    for image_id in split.loc[split["fold"] == 0, "id"]:  # fold 0's masks now all "dead": no longer rare there
        mask = read_image(data / "masks" / f"{image_id}.png")
        write_png(data / "masks" / f"{image_id}.png", np.full_like(mask, dead))
    rewritten = plan.fingerprint(data, tmp_path / "folds")
    assert rewritten["fold_class_shares"][0] == fp["fold_class_shares"][0]
    assert rewritten["fold_class_shares"][1] != fp["fold_class_shares"][1]
    assert plan.plan_from(rewritten, fold=0)[0]["class_weights"] == plan.plan_from(fp, fold=0)[0]["class_weights"]
    cfg, sources = plan.apply_plan(*parse(["--data-dir", str(tmp_path / "data"), "--dataset", "demo-multiclass"]))
    assert (cfg.class_weights, sources["class_weights"]) == ("auto", "plan")


def test_larger_objects_give_a_smaller_size_never_above_the_images(demo_plan):
    fp = demo_plan["fingerprint"]
    small, large = ({**fp, "median_short_side": 1000, "median_object_all": r} for r in (0.1, 0.4))
    assert plan.plan_from(large)[0]["size"] < plan.plan_from(small)[0]["size"] == 480
    tiny_images = {**small, "median_short_side": 100}
    assert plan.plan_from(tiny_images)[0]["size"] == 96
    assert "capped by the median image's shorter side" in plan.plan_from(tiny_images)[1]["size"]


def test_tiles_only_where_the_working_size_exceeds_the_patch_a_batch_fits(demo_plan):
    """Small objects in large images: the object rule's size, uncapped by the model, and patches that fit a batch of
    16. Chest X-rays (median 1051 px short side, lungs 0.49 of it, 273 training images) and the demo keep resizing."""
    fp = demo_plan["fingerprint"]
    xrays = {**fp, "median_short_side": 1051, "median_object_all": 0.491, "train_images": 273, "labelled_images": 341}
    values, rules = plan.plan_from(xrays)
    assert (values["size"], values["patch"], values["batch_size"]) == (128, 0, 16)
    assert rules["patch"].endswith("256 px; the working size 128 px fits: the whole image, no patch")
    assert plan.plan_from(fp)[0]["patch"] == 0  # the demo
    nuclei = {**xrays, "median_short_side": 1000, "median_object_all": 0.065}  # 12 px nuclei in 1000 px tiles
    values, rules = plan.plan_from(nuclei)
    assert (values["size"], values["patch"], values["batch_size"]) == (768, 256, 16)
    assert "at which the median object (0.065 of the image side) spans 48 px: 50 px" in rules["size"]
    assert "256 px, below the working size 768 px: random patches in training, a sliding window" in rules["patch"]
    few = plan.plan_from({**nuclei, "train_images": 24})[0]  # a batch of 6 fits 352 px patches
    assert (few["patch"], few["batch_size"]) == (352, 6)
    capped = plan.plan_from({**nuclei, "labelled_images": 20000})[1]["size"]  # the cache's bytes cap the size
    assert "capped by the cache of 20004 images and masks, at most 8 GiB" in capped
    # A flag wins: a size set by a flag (or prepare) resizes the whole image; a --patch given tiles at it.
    assert plan.plan_from(nuclei, given={"size": 512})[0]["patch"] == 0
    given_patch = plan.plan_from(nuclei, given={"patch": 128})
    assert (given_patch[0]["size"], given_patch[0]["patch"], given_patch[1]["patch"]) == (768, 128, "set by a flag")


def test_a_tiny_dataset_gets_more_epochs_per_image(demo_plan):
    fp = demo_plan["fingerprint"]
    tiny, large = (plan.plan_from({**fp, "train_images": n, "labelled_images": n * 3 // 2})[0] for n in (40, 4000))
    assert tiny["epochs"] > large["epochs"]
    assert tiny["aug"] == "heavy" and large["aug"] == "medium"


def test_slices_of_volumes_get_the_budget_that_gave_20_epochs_on_the_hippocampus(demo_plan):
    fp = {**demo_plan["fingerprint"], "train_images": 5727, "labelled_images": 7161, "folds": 5,
          "slice_size": [64, 64], "slice_rule": "padded"}
    sliced = plan.plan_from(fp, steps=plan.budget(fp))[0]
    flat = {k: v for k, v in fp.items() if k not in ("slice_size", "slice_rule")}
    assert (sliced["epochs"], sliced["batch_size"]) == (20, 16)  # 358 steps an epoch: the measured 20, not the floor
    assert sliced["context"] == 3  # 2.5D: ahead of single slices for Unet and Unet++ on the hippocampus
    assert plan.plan_from(flat, steps=plan.budget(flat))[0]["epochs"] == 10  # 2D images keep 1000 steps (the floor)


def parse(argv):
    parser = argparse.ArgumentParser()  # as train.py's
    add_config_arguments(parser)
    parser.add_argument("--resume", action="store_true")
    return config_from_args(parser.parse_args(argv)), plan.given_flags(parser, argv)


def test_a_flag_overrides_the_plan_and_sources_say_so(planned_demo):
    planned_dir, demo_plan = planned_demo
    cfg, given = parse(["--data-dir", str(planned_dir), "--epochs", "3", "--lr=0.01", "--aug", "medium", "--resume"])
    assert "resume" in given  # train.py's own flags are no Config field: apply_plan passes them by
    cfg, sources = plan.apply_plan(cfg, given)
    assert (cfg.epochs, cfg.lr, cfg.aug) == (3, 0.01, "medium")
    assert (cfg.size, cfg.scheduler) == (demo_plan["values"]["size"], "cosine")
    assert cfg.batch_size == 4  # 3 epochs of 24 images: the smallest batch the rule allows, for the most steps
    assert cfg.warmup_epochs == 1  # the warm-up rule on the user's 3 epochs, not the plan's 12 of 250
    assert sources["epochs"] == sources["lr"] == sources["aug"] == sources["data_dir"] == "user"
    assert sources["size"] == sources["scheduler"] == sources["warmup_epochs"] == "plan" and sources["seed"] == "default"
    # A flag given with the built-in default's value is still the user's, and the epochs follow the batch it sets.
    cfg, sources = plan.apply_plan(*parse(["--data-dir", str(planned_dir), "--batch-size", "12"]))
    assert (cfg.batch_size, sources["batch_size"]) == (12, "user")
    assert (cfg.epochs, sources["epochs"]) == (500, "plan")  # 1000 steps at 2 an epoch
    # --select-on fold keeps today's schedule.
    fold_cfg, sources = plan.apply_plan(*parse(["--data-dir", str(planned_dir), "--select-on", "fold"]))
    assert (fold_cfg.lr, fold_cfg.scheduler, fold_cfg.epochs) == (3e-4, "plateau", Config.epochs)
    assert RULE_DEFAULTS["fold"] == {"lr": 3e-4, "scheduler": "plateau"} and sources["lr"] == "default"
    assert sources["size"] == "plan"


def test_without_a_plan_every_value_is_the_default(demo_dir):
    cfg, sources = plan.apply_plan(*parse(["--data-dir", str(demo_dir / "data")]))
    assert cfg == Config(data_dir=str(demo_dir / "data")) and set(sources.values()) == {"user", "default"}



def test_train_takes_the_plan_a_flag_overrides_it_and_a_study_rerun_is_not_stale(planned_demo, tmp_path, capsys):
    """The planned values a run trains on are those the study's stale check compares: the same command again is done."""
    data_dir, demo_plan = planned_demo
    workdir = data_dir.parent
    flags = [*TINY[:TINY.index("--aug")], *TINY[TINY.index("--aug") + 2:], *paths(workdir),
             "--runs-dir", str(tmp_path / "runs"), "--epochs", "1"]  # TINY without --aug: the plan's heavy
    train.main(flags)
    run_dir = tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "fold0"
    saved = json.loads((run_dir / "config.json").read_text())
    assert (saved["aug"], saved["epochs"], saved["size"], saved["class_weights"]) == ("heavy", 1, 64, "none")
    assert saved["sources"]["aug"] == saved["sources"]["class_weights"] == saved["sources"]["warmup_epochs"] == "plan"
    assert saved["sources"]["epochs"] == saved["sources"]["size"] == "user" and saved["sources"]["seed"] == "default"
    assert saved["lr_find"] is None
    assert "planned (" in capsys.readouterr().out
    study_flags = flags[:flags.index("--encoder")] + flags[flags.index("--encoder") + 2:]  # --encoders is the study's
    requested = study.train_config(study_flags)
    [run] = study.plan(requested, ["unet"], ["tu-test_resnet"], [0], study_flags)
    assert (run.run_dir, run.state) == (run_dir, "done")
    said = study.settings_line(requested, study_flags)  # what the study prints its runs train with, plan or flag
    assert said.startswith("# every run trains with size 64 (flag), ") and "epochs 1 (flag)" in said \
        and "aug heavy (plan)" in said
    unplanned = replace(requested, encoder="tu-test_resnet", aug=Config.aug)  # what the study asked before it planned
    assert "aug heavy -> medium" in ledger.stale_settings(run_dir, unplanned)


def test_a_new_split_replans(demo_dir, tmp_path, capsys):
    first = planned_copy(demo_dir, tmp_path, "demo")
    split.main(["demo", "--k", "2", "--overwrite", *paths(tmp_path), "--runs-dir", str(tmp_path / "runs")])
    replanned = plan.load_plan(tmp_path / "data" / "demo")
    assert (first["fingerprint"]["folds"], replanned["fingerprint"]["folds"]) == (3, 2)
    folds = pd.read_csv(tmp_path / "folds" / "demo.csv")
    assert replanned["fingerprint"]["train_images"] == int((folds["fold"] != 0).sum())  # fold 0's: 16 of 36 here
    assert replanned["values"]["batch_size"] == 4 and "batch_size: 4 (" in capsys.readouterr().out
    # A hold-out split (fold 0 the 20%, fold 1 the rest, never scored): fold 0's 80% train, not a mean over folds.
    folds["fold"] = (folds.index >= 7).astype(int)  # as src.split --holdout 0.2 writes it (the demo has groups)
    folds.to_csv(tmp_path / "folds" / "demo.csv", index=False)
    assert plan.fingerprint(tmp_path / "data" / "demo", tmp_path / "folds")["train_images"] == 36 - 7


def test_a_size_given_to_prepare_is_the_plans_and_a_train_flag_still_overrides_it(tmp_path, capsys):
    """prepare --size 64 trains at 64 px (one cache): flag > plan (what prepare was given) > rule, after a new split
    too."""
    prepare(tmp_path, "demo", "--count", "36", "--test-count", "0", "--size", "64", "--k", "3", plan=True)
    saved = plan.load_plan(tmp_path / "data" / "demo")
    assert plan.plan_from(saved["fingerprint"])[0]["size"] > 64  # the rule alone would choose more
    assert saved["values"]["size"] == 64 and "size: 64 (given to prepare: --size 64)" in capsys.readouterr().out
    cfg, sources = plan.apply_plan(*parse(["--data-dir", str(tmp_path / "data")]))
    assert (cfg.size, sources["size"]) == (64, "plan")
    assert cfg.batch_size == plan.plan_batch(saved["fingerprint"], 64)[0]  # the batch follows the given size
    cfg, sources = plan.apply_plan(*parse(["--data-dir", str(tmp_path / "data"), "--size", "96"]))
    assert (cfg.size, sources["size"]) == (96, "user")
    split.main(["demo", "--k", "2", "--overwrite", *paths(tmp_path), "--runs-dir", str(tmp_path / "runs")])
    assert plan.load_plan(tmp_path / "data" / "demo")["values"]["size"] == 64
    prepare(tmp_path, "demo", "--count", "36", "--test-count", "0", "--k", "3", "--overwrite", plan=True)
    assert plan.load_plan(tmp_path / "data" / "demo")["given"] == {}  # prepared again without --size: the rule's


def test_the_step_budget_counts_processes_and_accumulation(planned_demo, monkeypatch):
    """4 processes of 16 make a quarter of the steps an epoch: the plan trains 4x the epochs to keep its 1000."""
    planned_dir, demo_plan = planned_demo
    fp = {**demo_plan["fingerprint"], "train_images": 400, "labelled_images": 500}
    single, rules = plan.plan_from(fp)
    assert (single["batch_size"], single["epochs"]) == (16, 40)  # 25 steps an epoch
    assert "batch 16 x 1 process(es) x --grad-accum 1 a step" in rules["epochs"]
    four, rules = plan.plan_from(fp, processes=4)
    assert (four["batch_size"], four["epochs"]) == (16, round(1000 / 7))  # 400 / 64: 7 steps an epoch
    assert "7 an epoch" in rules["epochs"] and "x 4 process(es)" in rules["epochs"]
    assert plan.plan_from(fp, processes=2, grad_accum=2)[0]["epochs"] == four["epochs"]
    # train.py under accelerate launch: WORLD_SIZE and --grad-accum plan the epochs it trains.
    flags = ["--data-dir", str(planned_dir), "--batch-size", "6"]  # 24 training images: 4 steps an epoch
    assert plan.apply_plan(*parse(flags))[0].epochs == 250
    assert plan.apply_plan(*parse([*flags, "--grad-accum", "2"]))[0].epochs == 500
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert plan.apply_plan(*parse(flags))[0].epochs == 500


def test_a_shortened_run_keeps_the_step_budget_with_a_smaller_batch(demo_plan):
    """--epochs shorter than the plan's: the batch shrinks until the epochs make the budgeted steps (at least 4), so
    the planned run at the hand recipe's epochs takes at least the hand recipe's steps (batch 8, or 16)."""
    for train_images, size, epochs in ((273, 128, 12), (536, 96, 20), (400, 256, 5)):  # X-rays, nuclei, a large size
        fp = {**demo_plan["fingerprint"], "train_images": train_images, "labelled_images": train_images * 5 // 4,
              "median_object_all": 48 / size, "median_short_side": 1000}
        own = plan.plan_from(fp)[0]
        assert own["size"] == size and own["epochs"] > epochs
        values, rules = plan.plan_from(fp, given={"epochs": epochs})
        steps = plan.steps_per_epoch(fp, values["batch_size"], 1) * epochs
        hand = math.ceil(train_images / 8) * epochs
        assert values["batch_size"] < own["batch_size"] and values["batch_size"] >= plan.MIN_FITTED_BATCH
        assert steps >= min(1000, hand)
        assert steps >= 1000 or values["batch_size"] == plan.MIN_FITTED_BATCH
        assert rules["batch_size"].endswith(f"at least 4 (--epochs {epochs}: {steps} steps)")
        assert values["epochs"] == epochs and rules["epochs"] == "set by a flag"
    # A longer run than planned keeps the planned batch; a given batch is kept and the epochs follow it.
    assert plan.plan_from(fp, given={"epochs": 500})[0]["batch_size"] == own["batch_size"]
    assert plan.plan_from(fp, given={"epochs": 5, "batch_size": 16})[0]["batch_size"] == 16
