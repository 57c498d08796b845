"""train.py end to end on tiny models and generated data (CPU)."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

import train
from conftest import ROOT, TINY, paths, wandb_records
from src.checkpoint import StopRequest


def run_train(workdir, tmp_path, *args):
    train.main([*TINY, *paths(workdir), "--runs-dir", str(tmp_path / "runs"), *args])
    return tmp_path / "runs" / "demo"


def test_tiny_model_learns_the_demo_lungs(demo_dir, tmp_path):
    runs = run_train(demo_dir, tmp_path, "--epochs", "14", "--aug", "none", "--select-on", "fold", "--scheduler", "plateau",
                     "--patience", "14")  # Dice 0.90 at epoch 10, 0.94 at 14
    run = runs / "unet-tu-test_resnet" / "fold0"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["dice"] > 0.9, metrics
    history = pd.read_csv(run / "history.csv")
    assert list(history["epoch"]) == list(range(1, 15))
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0] / 2
    assert set(history["train_images"]) == {24} and set(history["train_repeats"]) == {0}  # 2 of 3 folds, each once
    config = json.loads((run / "config.json").read_text())
    assert config["arch"] == "unet" and config["meta"]["task"] == "binary"
    assert set(torch.load(run / "last.pt")) and (run / "state" / "trainer.json").exists()


def test_saved_weights_are_lookaheads_slow_weights(demo_dir, tmp_path):
    """With 6 steps an epoch and k = 5, every epoch ends mid-cycle: what is validated and saved must be the slow
    weights (timm syncs them before evaluating), not the fast copy."""
    from src.config import load_run_config
    from src.models import create_model
    from src.optim import build_optimizer
    run = run_train(demo_dir, tmp_path, "--epochs", "2", "--lookahead-k", "5") / "unet-tu-test_resnet" / "fold0"
    cfg, meta = load_run_config(run)
    model = create_model(cfg.arch, cfg.encoder, meta["channels"], 1, "none", cfg.decoder_channels)
    model.load_state_dict(torch.load(run / "last.pt"))
    params = [p for group in build_optimizer(model, cfg).param_groups for p in group["params"]]
    state = torch.load(run / "state" / "optimizer.bin", weights_only=False)["state"]
    slow = [state[i]["lookahead_slow_buff"] for i in range(len(params)) if "lookahead_slow_buff" in state.get(i, {})]
    assert len(slow) == len(params)
    for param, buffer in zip(params, slow):
        torch.testing.assert_close(param.detach(), buffer, rtol=0, atol=0)


def test_a_run_records_its_folds_and_resume_refuses_a_changed_split(demo_dir, tmp_path):
    import shutil
    folds = tmp_path / "folds"
    shutil.copytree(demo_dir / "folds", folds)
    args = [*TINY, "--data-dir", str(demo_dir / "data"), "--folds-dir", str(folds), "--runs-dir", str(tmp_path / "runs")]
    train.main([*args, "--epochs", "1"])
    config = json.loads((tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "fold0" / "config.json").read_text())
    assert config["folds"]["file"] == str(folds / "demo.csv") and len(config["folds"]["sha256"]) == 64
    table = pd.read_csv(folds / "demo.csv")
    table.assign(fold=(table["fold"] + 1) % 3).to_csv(folds / "demo.csv", index=False)  # re-prepared with another split
    with pytest.raises(SystemExit, match="changed since .* started; the run cannot be continued or scored on another"):
        train.main([*args, "--epochs", "2", "--resume"])


def test_existing_run_is_not_overwritten_by_accident(demo_dir, tmp_path, capsys):
    run_train(demo_dir, tmp_path, "--epochs", "1")
    with pytest.raises(SystemExit, match="already holds a run; pass --resume"):
        run_train(demo_dir, tmp_path, "--epochs", "1")
    first = (tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "fold0" / "last.pt").read_bytes()
    run_train(demo_dir, tmp_path, "--epochs", "1", "--overwrite")
    # where --help says the replaced run goes
    with pytest.raises(SystemExit):
        train.parse_args(["--help"])
    assert "moved, never deleted, to <run>/replaced/fold<k>-<time>/" in " ".join(capsys.readouterr().out.split())
    [aside] = (tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "replaced").glob("fold0-*")
    assert (aside / "last.pt").read_bytes() == first
    with pytest.raises(SystemExit, match="nothing to resume"):
        run_train(demo_dir, tmp_path, "--epochs", "1", "--resume", "--fold", "2")


@pytest.mark.parametrize("args, message", [
    (["--arch", "unetx"], "unknown architecture 'unetx'; choose one of: unetpp"),
    (["--encoder", "resnet999"], "unknown encoder 'resnet999'; list smp's with"),
    (["--encoder", "tu-notamodel"], "unknown timm encoder 'tu-notamodel'"),
    (["--fold", "7"], "fold 7 is not in"),
    (["--encoder-weights", "/no/such.pt"], "no such file"),
    (["--arch", "fpn"], "--decoder-channels 32,16,16,8,8: fpn has no decoder width to set; drop it"),  # TINY sets it
    (["--decoder-channels", "32,16"], "--decoder-channels 32,16: unet takes 5 positive whole number"),
    (["--patch", "96"], "--patch 96 is not between 0 and --size 64"),
    (["--patch", "48"], "--patch 48 is not a multiple of 32, the factor encoder tu-test_resnet reduces its input by"),
    (["--patch", "32", "--overlap", "1"], r"--overlap 1 is outside \[0, 1\)"),
    (["--patches-per-image", "2"], "only a --patch below --size draws"),
    (["--arch", "unetpp", "--size", "50"], "--size 50: unetpp takes sides that are multiples of 32, the factor encoder "
                                           "tu-test_resnet reduces its input by .*; use 32 or 64$"),  # unet pads them
])
def test_clear_errors(demo_dir, tmp_path, args, message):
    with pytest.raises(SystemExit, match=message):
        run_train(demo_dir, tmp_path, "--epochs", "1", *args)
    assert not (tmp_path / "runs").exists()  # refused before any work


def test_a_patch_the_size_of_the_image_is_no_patch_bit_for_bit(demo_dir, tmp_path):
    """No crop is built, so the augmentations draw what they drew before patches existed: the same weights."""
    whole = run_train(demo_dir, tmp_path / "whole", "--epochs", "1") / "unet-tu-test_resnet" / "fold0"
    patch = run_train(demo_dir, tmp_path / "patch", "--epochs", "1", "--patch", "64") / "unet-tu-test_resnet" / "fold0"
    a, b = torch.load(whole / "last.pt"), torch.load(patch / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert json.loads((patch / "config.json").read_text())["patch"] == 0  # the whole image, recorded as such
    assert json.loads((whole / "metrics.json").read_text()) == json.loads((patch / "metrics.json").read_text()) | {
        "run_dir": str(whole)}


def test_a_patched_run_trains_on_patches_and_its_val_dice_is_the_sliding_windows(demo_dir, tmp_path, capsys):
    from src.cache import open_cache
    from src.canonical import load_index
    from src.data import CachedSegmentation, make_loader
    from src.folds import fold_rows, load_folds
    from src.metrics import confusion, predicted_classes, summarize
    from src.portable.torch_model import with_tta
    from src.predict import load_trained_model
    from src.sliding import windowed
    run = run_train(demo_dir, tmp_path, "--epochs", "1", "--patch", "32", "--patches-per-image", "2") / \
        "unet-tu-test_resnet" / "fold0"
    out = " ".join(capsys.readouterr().out.split())
    assert ("patches: 32 px of the 64 px images (each resized to --size), 33% drawn around a foreground pixel "
            "and the rest anywhere, 2 per image an epoch; validated by sliding window 32 px, overlap 0.5, 9 windows "
            "an image") in out
    config = json.loads((run / "config.json").read_text())
    assert (config["size"], config["patch"], config["foreground_patches"]) == (64, 32, 0.33)
    history = pd.read_csv(run / "history.csv")
    assert (history["train_images"][0], history["train_repeats"][0]) == (24, 24)  # 2 patches of each image
    # What infer's OOF would score at the working size: the run's weights, no TTA, by sliding window.
    model, cfg, meta = load_trained_model(run, run / "last.pt", torch.device("cpu"))
    data = demo_dir / "data" / "demo"
    index = load_index(data)
    valid = fold_rows(index, load_folds(demo_dir / "folds", "demo", index), 0)[1]
    counts = []
    with torch.no_grad():
        for images, masks, _ in make_loader(CachedSegmentation(*open_cache(data, 64), valid), 5, False, 0):
            probs = windowed(with_tta(model, "binary", "none"), cfg)(images)
            counts.append(confusion(predicted_classes(probs, "binary", threshold=0.5), masks, 2))
    scores = summarize(*(torch.cat(c) for c in zip(*counts)), meta["classes"])
    assert abs(scores["dice"] - json.loads((run / "metrics.json").read_text())["dice"]) < 1e-6


def test_offline_imagenet_request_fails_fast_with_one_sentence(demo_dir, tmp_path, monkeypatch):
    import huggingface_hub.constants as hub
    from src import models
    monkeypatch.setattr(models, "_hub_reachable", lambda timeout=3.0: False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(SystemExit, match="cannot get imagenet weights for encoder 'resnet18': no internet") as error:
        run_train(demo_dir, tmp_path, "--epochs", "1", "--encoder", "resnet18", "--encoder-weights", "imagenet")
    assert "--encoder-weights PATH" in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "runs").exists()  # the failed start leaves no run folder holding only its train.lock


def test_the_hub_check_goes_through_the_proxy_the_environment_names(monkeypatch):
    """Behind a proxy, the hub is asked through it (HTTPS_PROXY), not by a raw connection that never gets out."""
    import socket
    import threading
    from src import models
    server, asked = socket.create_server(("127.0.0.1", 0)), []

    def proxy():  # answers the tunnel request it is sent with a refusal
        connection, _ = server.accept()
        asked.append(connection.recv(1024).decode(errors="replace"))
        connection.sendall(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
        connection.close()
    threading.Thread(target=proxy, daemon=True).start()
    for name in ("NO_PROXY", "no_proxy", "https_proxy", "HF_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.getsockname()[1]}")
    assert models._hub_reachable(timeout=10) is False  # the proxy would not connect
    assert asked and asked[0].startswith("CONNECT huggingface.co:443 ")


def encoder_file(tmp_path, kind: str):
    """A tiny Unet and its weights saved as a user would bring them: (the model, the file)."""
    from safetensors.torch import save_file
    from src.models import create_model
    donor = create_model("unet", "tu-test_resnet", 1, 1, "none")
    if kind == "whole model, encoder. keys":
        path, state = tmp_path / "model.pth", {"state_dict": donor.state_dict()}
    else:
        path, state = tmp_path / f"encoder.{kind}", donor.encoder.state_dict()
    if kind == "safetensors":
        save_file({k: v.contiguous() for k, v in state.items()}, path)
    else:
        torch.save(state, path)
    return donor, path


@pytest.mark.parametrize("kind", ["pt", "pth", "safetensors", "whole model, encoder. keys"])
def test_local_encoder_weights_file_is_loaded(tmp_path, kind):
    from src.models import create_model
    donor, path = encoder_file(tmp_path, kind)
    model = create_model("unet", "tu-test_resnet", 1, 1, str(path))
    for key, value in donor.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[key], value), key


@pytest.mark.parametrize("state, problem", [
    ("resnet18", r"key model.conv1.weight is none of its own"),  # another encoder's own form
    ({"head.weight": torch.zeros(1)}, r"key head.weight is none of timm's test_resnet"),  # no timm model's either
    ("shapes", r"\d+ tensors of another shape, e.g. model.bn1.weight: \(16,\) in the file, \(32,\) here"),
])
def test_encoder_weights_that_do_not_fit_are_refused_in_one_line(tmp_path, state, problem):
    from src.models import ModelError, create_model
    if state == "resnet18":
        state = create_model("unet", "tu-resnet18", 1, 1, "none").encoder.state_dict()
    elif state == "shapes":  # every key of the encoder, some of another width
        state = {k: torch.zeros(16) if k == "model.bn1.weight" else v
                 for k, v in create_model("unet", "tu-test_resnet", 1, 1, "none").encoder.state_dict().items()}
    torch.save(state, tmp_path / "weights.pt")
    with pytest.raises(ModelError, match=f"weights.pt: does not fit encoder 'tu-test_resnet' \\({problem}\\)") as error:
        create_model("unet", "tu-test_resnet", 1, 1, str(tmp_path / "weights.pt"))
    assert "\n" not in str(error.value)


def test_published_weights_load_as_torchvision_and_timm_ship_them(tmp_path, capsys):
    """A torchvision resnet34 state dict (its fc head included) into smp's resnet34 encoder, and a timm resnet18
    checkpoint (model.safetensors, head included) into tu-resnet18: the encoder's deepest features are the source
    model's; the heads are dropped and said; a grey model takes the first convolution summed over RGB, as smp adapts
    the hub's weights."""
    import timm
    import torchvision
    from safetensors.torch import save_file
    from src.models import create_model
    x = torch.randn(2, 3, 64, 64)
    source = torchvision.models.resnet34().eval()
    torch.save(source.state_dict(), tmp_path / "resnet34.pth")
    with torch.no_grad():
        deepest = torch.nn.Sequential(*list(source.children())[:-2])(x)
        assert torch.allclose(create_model("unet", "resnet34", 3, 1, str(tmp_path / "resnet34.pth")).eval().encoder(x)[-1],
                              deepest, atol=1e-6)
    grey = create_model("unet", "resnet34", 1, 1, str(tmp_path / "resnet34.pth")).encoder.conv1.weight
    assert torch.allclose(grey, source.conv1.weight.sum(1, keepdim=True))
    source = timm.create_model("resnet18").eval()
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, tmp_path / "model.safetensors")
    with torch.no_grad():
        model = create_model("unet", "tu-resnet18", 3, 1, str(tmp_path / "model.safetensors")).eval()
        assert torch.allclose(model.encoder(x)[-1], source.forward_features(x), atol=1e-6)
    grey = create_model("unet", "tu-resnet18", 1, 1, str(tmp_path / "model.safetensors")).encoder.model.conv1.weight
    assert torch.allclose(grey, source.conv1.weight.sum(1, keepdim=True))
    said = capsys.readouterr().out.splitlines()
    assert said[0] == f"encoder weights {tmp_path / 'resnet34.pth'}: dropped 2 keys the encoder does not use: " \
                      "fc.weight, fc.bias" and len(said) == 4


def test_train_starts_from_an_encoder_weights_file(demo_dir, tmp_path):
    """At learning rate 0 the trained encoder's parameters are still the file's: train.py loaded it."""
    donor, path = encoder_file(tmp_path, "safetensors")
    run = run_train(demo_dir, tmp_path, "--epochs", "1", "--encoder-weights", str(path), "--lr", "0")
    trained = torch.load(run / "unet-tu-test_resnet" / "fold0" / "last.pt")
    for name, value in donor.encoder.named_parameters():
        assert torch.equal(trained[f"encoder.{name}"], value), name


def test_wandb_is_offline_unless_logged_in_and_names_the_run_by_dataset_model_and_fold(demo_dir, tmp_path, monkeypatch):
    """No WANDB_MODE (conftest sets it), no key, no ~/.netrc: the run goes offline by the project's own rule, into
    project = dataset, group = <arch>-<encoder>, name = fold<k>, with every logged key and the best epoch's summary."""
    from src import tracking
    for name in ("WANDB_MODE", "WANDB_API_KEY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert not tracking.wandb_logged_in()
    (tmp_path / ".netrc").write_text("machine api.wandb.ai login user password secret\n")
    (tmp_path / ".netrc").chmod(0o600)  # netrc refuses a file with a password that others may read
    assert tracking.wandb_logged_in()
    (tmp_path / ".netrc").unlink()
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert tracking.prepare_wandb_env() == "online" and "WANDB_MODE" not in os.environ
    monkeypatch.delenv("WANDB_API_KEY")
    run_train(demo_dir, tmp_path, "--epochs", "1", "--fold", "2", "--tracker", "wandb", "--tags", "encoders-v1",
              "--select-on", "fold")
    import wandb
    wandb.teardown()  # the .wandb file is written by wandb's own process: wait for it, as a user's process exit does
    assert os.environ["WANDB_MODE"] == "offline"
    run = tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "fold2"
    offline = list((run / "wandb").glob("offline-run-*"))
    assert len(offline) == 1
    records = list(wandb_records(next(offline[0].glob("run-*.wandb"))))
    started = next(r.run for r in records if r.HasField("run"))
    assert (started.project, started.run_group, started.display_name) == ("demo", "unet-tu-test_resnet", "fold2")
    assert list(started.tags) == ["encoders-v1"]
    logged = {item.key or item.nested_key[0] for r in records if r.HasField("history") for item in r.history.item}
    assert {"train_loss", "val_dice", "val_iou", "lr", "val_examples", "save_seconds"} <= logged
    config = {item.key or item.nested_key[0] for r in records if r.HasField("config") for item in r.config.update}
    assert {"arch", "encoder", "fold", "encoder_lr_mult"} <= config
    # The summary holds the best epoch's scores (the runs table compares folds by them), not only the last epoch's.
    summary = {item.key or item.nested_key[0]: json.loads(item.value_json)
               for r in records if r.HasField("summary") for item in r.summary.update}
    best = json.loads((run / "metrics.json").read_text())
    assert summary["best_val_dice"] == best["dice"] and summary["best_epoch"] == 1


def test_from_scratch_the_encoder_learns_at_the_decoder_rate_unless_told(demo_dir, tmp_path, capsys):
    from src.config import Config
    from src.optim import build_optimizer
    from src.models import create_model
    model = create_model("unet", "tu-test_resnet", 1, 1, "none", "16,16,8,8,8")
    for weights, mult, expected in (("none", None, 1.0), ("imagenet", None, 0.1), ("none", 0.1, 0.1)):
        cfg = Config(encoder_weights=weights, encoder_lr_mult=mult, lr=1e-2)
        assert [g["lr"] for g in build_optimizer(model, cfg).param_groups] == [1e-2 * expected, 1e-2]
    run_train(demo_dir, tmp_path, "--epochs", "1")
    run = tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "fold0"
    assert json.loads((run / "config.json").read_text())["encoder_lr_mult"] == 1.0  # saved resolved, for --resume
    assert "lr 0.01 (encoder x1, from scratch)" in capsys.readouterr().out


def test_two_processes_give_the_single_process_metrics(demo_dir, tmp_path, capsys):
    """Two CPU processes: each training image drawn once per epoch, every validation image counted once, same scores.

    `accelerate launch --cpu --num_processes 2` starts ONE process (Accelerate runs several CPU processes only under
    mpirun), so the test launches the torchrun path; train.py makes its processes CPU ones when no GPU is visible.
    Batch 5 leaves both loaders uneven: 24 training images fill 2 x 3 batches of 5 with 6 repeats, and the 12
    validation images need padding that gather_for_metrics must drop.
    """
    import socket
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    args = [*TINY, *paths(demo_dir), "--runs-dir", str(tmp_path / "runs"), "--epochs", "2", "--arch", "unet",
            "--batch-size", "5"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    launched = subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes",
                               "2", "--num_machines", "1", "--main_process_port", str(port), "--mixed_precision", "no",
                               "--dynamo_backend", "no", str(ROOT / "train.py"), *args],
                              env=env, capture_output=True, text=True, timeout=600)
    failed = [line for line in launched.stderr.splitlines() if "[rank1]" in line] or [launched.stderr[-3000:]]
    assert launched.returncode == 0, "\n".join(failed[-40:])  # the root cause, not only rank 0's broken pipe
    assert "2 process(es) on cpu" in launched.stdout, launched.stdout[-2000:]
    run = tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "fold0"
    # Both processes' random states are in state/ before it is renamed: none is left behind in state.tmp.
    assert sorted(p.name for p in run.glob("state*/random_states_*")) == ["random_states_0.pkl", "random_states_1.pkl"]
    folds = pd.read_csv(demo_dir / "folds" / "demo.csv")
    n_train, n_valid = (folds["fold"] != 0).sum(), (folds["fold"] == 0).sum()
    history = pd.read_csv(run / "history.csv")
    assert list(history["train_images"]) == [n_train] * 2
    assert list(history["train_repeats"]) == [2 * 3 * 5 - n_train] * 2  # Accelerate's padding, nothing else
    two = json.loads((run / "metrics.json").read_text())
    capsys.readouterr()
    train.main([*args, "--validate-only"])  # the single process in this one: no second interpreter to start
    single = capsys.readouterr().out
    assert "1 process(es)" in single
    one = json.loads(single.strip().splitlines()[-1])
    assert two["images"] == one["images"] == n_valid
    for key in ("dice", "iou", "dice_std"):
        assert two[key] == pytest.approx(one[key], abs=1e-9), key


def train_command(demo_dir, runs, *args) -> list:
    return [sys.executable, str(ROOT / "train.py"), *TINY, *paths(demo_dir), "--runs-dir", str(runs), *args]


def wait_for(condition, seconds=300):
    deadline = time.time() + seconds
    while time.time() < deadline and not condition():
        time.sleep(0.05)


def history_rows(path) -> int:
    return len(pd.read_csv(path)) if path.exists() else 0


def test_a_killed_run_resumes_from_its_last_finished_epoch_to_the_weights_of_straight_training(demo_dir, tmp_path,
                                                                                                capsys):
    """SIGKILL mid-training loses at most the epoch in progress; --resume trains only the epochs after the last
    finished one and ends with last.pt and history.csv exactly those of a run never interrupted, the weights' moving
    average (--ema) restored with the rest: last.pt holds the average, not the trained weights."""
    common = ["--aug", "medium", "--fold", "1", "--epochs", "4", "--select-on", "fold", "--scheduler", "plateau",
              "--patience", "10", "--ema", "0.9"]
    train.main([*TINY, *paths(demo_dir), "--runs-dir", str(tmp_path / "straight"), *common])
    straight = tmp_path / "straight" / "demo" / "unet-tu-test_resnet" / "fold1"
    run = tmp_path / "killed" / "demo" / "unet-tu-test_resnet" / "fold1"
    command = train_command(demo_dir, tmp_path / "killed", *common)
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: history_rows(run / "history.csv") >= 2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    before = pd.read_csv(run / "history.csv")
    finished = len(before)
    assert 2 <= finished < 4
    with pytest.raises(SystemExit, match=r"trained with other settings \(lr 0.01 -> 0.001\)"):
        train.main([*TINY, *paths(demo_dir), "--runs-dir", str(tmp_path / "killed"), *common, "--resume", "--lr", "1e-3"])
    capsys.readouterr()
    train.main([*command[2:], "--resume"])  # the kill is what needs a process of its own, not the resume
    trained = [int(epoch) for epoch in re.findall(r"^epoch (\d+):", capsys.readouterr().out, re.MULTILINE)]
    assert trained == list(range(finished + 1, 5))  # a restart from scratch would train 1..4 again
    after = pd.read_csv(run / "history.csv")
    pd.testing.assert_frame_equal(after.iloc[:finished], before, check_exact=True)  # the killed run's rows, timings too
    timings = ["seconds", "train_seconds", "val_seconds", "save_seconds", "other_seconds", "train_images_per_s"]
    pd.testing.assert_frame_equal(after.drop(columns=timings), pd.read_csv(straight / "history.csv").drop(columns=timings),
                                  check_exact=True)
    a, b = torch.load(straight / "last.pt"), torch.load(run / "last.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)
    own = load_file(run / "state" / "model.safetensors")  # the model's own weights, in the state --resume reads
    assert own.keys() == b.keys() and not torch.equal(own["encoder.model.conv1.0.weight"],
                                                       b["encoder.model.conv1.0.weight"])


def test_a_second_ctrl_c_stops_at_once(demo_dir, tmp_path):
    """The first Ctrl-C asks for the epoch to be finished and saved; a second one ends the process in that epoch."""
    run = tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "fold2"
    errors = tmp_path / "stderr.txt"
    with errors.open("w") as stderr:  # SIGINT at its default, as a terminal starts it (a script's background job,
        # such as a CI runner's, starts with it ignored, and then a second Ctrl-C could not interrupt); epochs of seconds
        process = subprocess.Popen(train_command(demo_dir, tmp_path / "runs", "--epochs", "6", "--fold", "2",
                                                 "--save-minutes", "60", "--batch-size", "1",
                                                 "--decoder-channels", "256,128,64,32,16"),
                                   stdout=subprocess.PIPE, stderr=stderr, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
        wait_for(lambda: (run / "history.csv").exists())
        process.send_signal(signal.SIGINT)
        wait_for(lambda: "finishing this epoch" in errors.read_text())
        time.sleep(StopRequest.SAME_STOP_SECONDS + 0.1)  # sooner, it counts as the same stop delivered twice
        process.send_signal(signal.SIGINT)
        out, _ = process.communicate(timeout=120)
    assert process.returncode == -signal.SIGINT, errors.read_text()[-2000:]
    assert "KeyboardInterrupt" in errors.read_text() and "stopped by" not in out
    assert history_rows(run / "history.csv") == 1 and not (run / "state").exists()  # the epoch was not finished


def test_cosine_schedule_warms_up_then_decays_and_grad_accum_steps_every_second_batch(demo_dir, tmp_path):
    run = run_train(demo_dir, tmp_path, "--epochs", "4", "--select-on", "fold", "--scheduler", "cosine",
                    "--warmup-epochs", "1", "--patience", "10", "--grad-accum", "2") / "unet-tu-test_resnet" / "fold0"
    history = pd.read_csv(run / "history.csv")
    # warm-up (e + 1) / (warmup + 1), then 0.5 (1 + cos(pi (e - warmup) / (epochs - warmup))): 1/2, 1, 3/4, 1/4
    assert history["lr"].tolist() == pytest.approx([0.5e-2, 1e-2, 0.75e-2, 0.25e-2], rel=1e-9)
    # 24 training images in batches of 4, an optimiser step every second batch: 3 steps an epoch
    state = torch.load(run / "state" / "optimizer.bin", weights_only=False)["state"]
    assert {int(param_state["step"]) for param_state in state.values()} == {4 * 3}


def test_patience_stops_after_that_many_epochs_without_improvement(demo_dir, tmp_path):
    run = run_train(demo_dir, tmp_path, "--epochs", "8", "--select-on", "fold", "--scheduler", "plateau", "--patience", "2",
                    "--lr", "10") / "unet-tu-test_resnet" / "fold0"
    dice = pd.read_csv(run / "history.csv")["val_dice"].tolist()
    best, bad, expected = -1.0, 0, None
    for epoch, value in enumerate(dice, 1):
        best, bad = (value, 0) if value > best else (best, bad + 1)
        if bad == 2:
            expected = epoch
            break
    assert expected is not None and len(dice) == expected < 8, dice
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == expected


def test_an_epochs_seconds_include_its_saves_and_the_state_waits_for_save_minutes(demo_dir, tmp_path, monkeypatch):
    """The state save is part of the epoch it follows (here made to take 0.5 s); with --save-minutes 60 it is written
    only after the final epoch, and the epochs' seconds add up to the training's wall time."""
    saves = []

    def slow_save(*args):
        time.sleep(0.5)
        saves.append(args[2]["epoch"])
        return save_state(*args)

    from src.checkpoint import save_state
    monkeypatch.setattr(train, "save_state", slow_save)
    start = time.time()
    run = run_train(demo_dir, tmp_path, "--epochs", "3", "--save-minutes", "60") / "unet-tu-test_resnet" / "fold0"
    wall = time.time() - start
    history = pd.read_csv(run / "history.csv")
    assert saves == [3] and list(history["state_saved"]) == [0, 0, 1]
    assert json.loads((run / "state" / "trainer.json").read_text())["epoch"] == 3
    parts = history[["train_seconds", "val_seconds", "save_seconds", "other_seconds"]]
    assert (parts >= 0).all().all()
    assert history["seconds"].to_numpy() == pytest.approx(parts.sum(axis=1).to_numpy())
    assert history["save_seconds"].iloc[2] >= 0.5 > history["save_seconds"].iloc[:2].max()
    assert history["seconds"].sum() <= wall


@pytest.mark.parametrize("name, workers", [("SIGTERM", "0"), ("SIGINT", "1")])
def test_a_signal_ends_the_run_after_its_epoch_with_the_state_saved(demo_dir, tmp_path, capsys, name, workers):
    """A scheduler's SIGTERM, or Ctrl-C (SIGINT to the whole process group, loader workers too): the epoch in progress
    is finished and saved although --save-minutes is not due, and --resume continues from it."""
    args = train_command(demo_dir, tmp_path / "runs", "--epochs", "4", "--fold", "2", "--save-minutes", "60",
                         "--workers", workers)
    run = tmp_path / "runs" / "demo" / "unet-tu-test_resnet" / "fold2"
    process = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    wait_for(lambda: (run / "history.csv").exists())
    os.killpg(process.pid, getattr(signal, name))
    out, err = process.communicate(timeout=300)
    stopped = len(pd.read_csv(run / "history.csv"))
    assert process.returncode == 128 + getattr(signal, name), err[-2000:]
    assert f"{name}: finishing this epoch" in err and f"stopped by {name} after epoch {stopped}" in out
    assert stopped < 4 and json.loads((run / "state" / "trainer.json").read_text())["epoch"] == stopped
    train.main([*args[2:], "--resume"])  # in this process: the signal was the part that needed one of its own
    assert f"resuming {run} after epoch {stopped}" in capsys.readouterr().out
    assert list(pd.read_csv(run / "history.csv")["epoch"]) == [1, 2, 3, 4]


def test_resume_records_new_epochs_and_validate_only_rebuilds_the_saved_model(demo_dir, tmp_path, capsys):
    run = run_train(demo_dir, tmp_path, "--epochs", "1", "--fold", "1") / "unet-tu-test_resnet" / "fold1"
    run_train(demo_dir, tmp_path, "--epochs", "2", "--fold", "1", "--resume")
    assert json.loads((run / "config.json").read_text())["epochs"] == 2
    capsys.readouterr()
    # no --size, no --decoder-channels: the run's config.json says 64 px and 32,16,16,8,8
    train.main([*paths(demo_dir), "--runs-dir", str(tmp_path / "runs"), "--encoder", "tu-test_resnet", "--fold", "1",
                "--workers", "0", "--validate-only"])
    scores = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert scores["dice"] == pytest.approx(json.loads((run / "metrics.json").read_text())["dice"], abs=1e-6)
    assert not (demo_dir / "data" / "demo" / "cache" / "256").exists()


def test_a_finished_run_resumed_for_more_epochs_is_unfinished_until_they_end(demo_dir, tmp_path, monkeypatch):
    """Under --select-on fold metrics.json is rewritten only when an epoch improves: stopped before one does, a
    resumed finished run must be planned resumable with its saved epochs, not done with its old epochs_run."""
    from src import runs
    run = run_train(demo_dir, tmp_path, "--epochs", "1", "--select-on", "fold") / "unet-tu-test_resnet" / "fold0"
    assert runs.is_finished(run)
    end_epoch = train.end_epoch
    monkeypatch.setattr(train, "end_epoch", lambda *args: end_epoch(*args) and False)  # no epoch improves
    monkeypatch.setattr(train, "state_due", lambda *args: (True, True))  # a signal came during epoch 2
    with pytest.raises(SystemExit):
        run_train(demo_dir, tmp_path, "--epochs", "3", "--select-on", "fold", "--resume")
    assert not runs.is_finished(run) and runs.epochs_saved(run) == 2
    assert "epochs_run" not in json.loads((run / "metrics.json").read_text())
    monkeypatch.undo()
    run_train(demo_dir, tmp_path, "--epochs", "3", "--select-on", "fold", "--resume")
    assert json.loads((run / "metrics.json").read_text())["epochs_run"] == 3


def perturbed_copy(demo_dir, tmp_path, fold: int):
    """The demo dataset and split copied, with the masks of one fold's images inverted in the training cache."""
    import shutil
    import numpy as np
    shutil.copytree(demo_dir / "data", tmp_path / "data")
    shutil.copytree(demo_dir / "folds", tmp_path / "folds")
    index = pd.read_csv(tmp_path / "data" / "demo" / "index.csv", dtype={"id": str})
    folds = pd.read_csv(tmp_path / "folds" / "demo.csv", dtype={"id": str})
    rows = np.flatnonzero(index["id"].isin(folds.loc[folds["fold"] == fold, "id"]))
    masks = np.load(tmp_path / "data" / "demo" / "cache" / "64" / "masks.npy", mmap_mode="r+")
    masks[rows] = 1 - masks[rows]
    masks.flush()
    return tmp_path


@pytest.mark.parametrize("rule", ["final", "inner"])
def test_the_scored_folds_masks_steer_nothing_by_default_nor_under_inner(demo_dir, tmp_path, rule):
    """Inverting the scored fold's masks changes its validation scores and nothing else: not a weight, not the lr
    (plateau halving at once under inner), not the early stop (patience 1) nor the checkpoint chosen."""
    args = ["--epochs", "3", "--select-on", rule, "--plateau-patience", "0", "--patience", "1"]
    if rule == "final":  # no plateau, no early stop: two epochs show it all
        args = ["--epochs", "2", "--select-on", rule]
    run_train(demo_dir, tmp_path / "plain", *args)
    perturbed = perturbed_copy(demo_dir, tmp_path / "perturbed", fold=0)
    train.main([*TINY, *paths(perturbed), "--runs-dir", str(perturbed / "runs"), *args])
    plain, changed = (tmp_path / name / "runs" / "demo" / "unet-tu-test_resnet" / "fold0" for name in ("plain", "perturbed"))
    a, b = (pd.read_csv(run / "history.csv") for run in (plain, changed))
    assert (a["val_dice"] != b["val_dice"]).all()  # the perturbation reached the scored fold's scores
    steering = ["epoch", "lr", "train_loss"] + [c for c in a if c.startswith("inner_")]
    pd.testing.assert_frame_equal(a[steering], b[steering])
    for weights in ("last.pt", "best.pt") if rule == "inner" else ("last.pt",):
        wa, wb = torch.load(plain / weights), torch.load(changed / weights)
        assert all(torch.equal(wa[k], wb[k]) for k in wa), weights
    ma, mb = (json.loads((run / "metrics.json").read_text()) for run in (plain, changed))
    assert ma["select_on"] == mb["select_on"] == rule and ma["selected_epoch"] == mb["selected_epoch"]
    if rule == "final":
        assert not (plain / "best.pt").exists() and ma["selected_epoch"] == ma["epochs_run"] == 2
        assert ma["dice"] == a["val_dice"].iloc[-1]  # metrics.json holds the final epoch's scores
        config = json.loads((plain / "config.json").read_text())
        assert (config["lr"], config["scheduler"], config["select_on"]) == (1e-2, "cosine", "final")  # TINY's lr
    else:
        config = json.loads((plain / "config.json").read_text())
        assert config["inner_split"]["images"] == a["inner_images"].iloc[0] > 0
        assert a["train_images"].iloc[0] + a["inner_images"].iloc[0] == 24  # the training folds, split in two


def test_under_inner_the_epoch_line_stars_the_inner_dice_that_chose(demo_dir, tmp_path, capsys):
    run = run_train(demo_dir, tmp_path, "--epochs", "3", "--select-on", "inner") / "unet-tu-test_resnet" / "fold0"
    lines = re.findall(r"^epoch \d+: .*$", capsys.readouterr().out, re.M)
    history = pd.read_csv(run / "history.csv")
    best = json.loads((run / "metrics.json").read_text())["best_epoch"]
    for line, inner, epoch in zip(lines, history["inner_dice"], history["epoch"]):
        improved = epoch == 1 or inner > history["inner_dice"][: epoch - 1].max()
        assert re.fullmatch(rf"epoch {epoch}: train loss \S+, val Dice [0-9.]+, IoU [0-9.]+, inner Dice {inner:.4f}"
                            rf"{' [*]' if improved else ''} \(\S+s\)", line), line
    assert f"inner Dice {history['inner_dice'][best - 1]:.4f} *" in lines[best - 1]


def test_select_on_fold_is_the_old_default_lr_plateau_and_best_pt(demo_dir, tmp_path, capsys):
    """Without --lr and --scheduler, --select-on fold trains exactly as the defaults did before the rule existed."""
    tiny = [a for i, a in enumerate(TINY) if "--lr" not in TINY[max(i - 1, 0):i + 1]]
    common = [*tiny, *paths(demo_dir), "--epochs", "2"]
    train.main([*common, "--runs-dir", str(tmp_path / "rule"), "--select-on", "fold"])
    assert "lr 0.0003 " in capsys.readouterr().out
    train.main([*common, "--runs-dir", str(tmp_path / "old"), "--select-on", "fold", "--lr", "3e-4", "--scheduler",
                "plateau", "--plateau-patience", "3", "--patience", "10"])
    rule, old = (tmp_path / name / "demo" / "unet-tu-test_resnet" / "fold0" for name in ("rule", "old"))
    timings = ["seconds", "train_seconds", "val_seconds", "save_seconds", "other_seconds", "train_images_per_s"]
    pd.testing.assert_frame_equal(*(pd.read_csv(r / "history.csv").drop(columns=timings) for r in (rule, old)))
    metrics = json.loads((rule / "metrics.json").read_text())
    assert metrics["select_on"] == "fold" and metrics["selected_epoch"] == metrics["best_epoch"] == metrics["epoch"]
    assert (rule / "best.pt").exists() and json.loads((rule / "config.json").read_text())["scheduler"] == "plateau"
    from src.predict import checkpoint_file
    assert checkpoint_file(rule, "selected") == rule / "best.pt"
    with pytest.raises(SystemExit, match="--scheduler plateau reads validation scores, which --select-on final"):
        run_train(demo_dir, tmp_path, "--epochs", "1", "--scheduler", "plateau")


def test_loss_lovasz_is_the_loss_the_run_trains_and_a_loss_of_the_other_task_is_refused(demo_dir, tmp_path,
                                                                                          monkeypatch):
    import src.fit
    built = []

    class Recorded(src.fit.SegmentationLoss):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)
    monkeypatch.setattr(src.fit, "SegmentationLoss", Recorded)
    runs = run_train(demo_dir, tmp_path, "--epochs", "1", "--loss", "lovasz")
    assert [loss.loss for loss in built] == ["lovasz"]
    assert json.loads((runs / "unet-tu-test_resnet" / "fold0" / "config.json").read_text())["loss"] == "lovasz"
    with pytest.raises(SystemExit, match="train: --loss dice_ce is for the other task: binary masks take dice_bce"):
        run_train(demo_dir, tmp_path, "--epochs", "1", "--loss", "dice_ce", "--fold", "1")
