import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
# One torch thread in every test process and the processes they start: the tiny models gain nothing from more, and
# the suite's workers (pytest.ini: -n auto) and their child processes already share the cores; two threads each made
# the suite 10% slower on one worker and 1.8x slower on two.
os.environ.setdefault("OMP_NUM_THREADS", "1")
SHARED_DATA = ROOT.parent / "shared" / "data"

# Tiny and fast: trains in seconds on one CPU core at 64 px; the full state saved after every epoch. The encoder is
# timm's test_resnet (a ResNet of one block a stage, 0.5 M parameters with this decoder): an epoch of the demo's 24
# training images takes 0.3 s, and a run's files 12 MB. tu-resnet10t (5.2 M) took 1.1 s and 120 MB; the suite took
# 380-393 s with it, 283 s with test_resnet (2 cores, the same day). It learns the demo's lungs in 10 epochs,
# test_resnet in 14 (Dice 0.94).
TINY = ["--size", "64", "--encoder", "tu-test_resnet", "--encoder-weights", "none", "--decoder-channels", "32,16,16,8,8",
        "--batch-size", "4", "--lr", "1e-2", "--aug", "light", "--tracker", "none", "--workers", "0",
        "--save-minutes", "0"]


def prepare(workdir: Path, *args, plan: bool = False) -> None:
    """python -m src.prepare into workdir, without the plan.json it writes unless `plan`: the tests train on the values
    they pass (TINY), and a planned value they leave out (the demo's 250 epochs, heavy augmentation) would change what
    they check. tests/test_plan.py plans where the plan is the point."""
    from src import prepare as prepare_module
    prepare_module.main([*args, "--data-dir", str(workdir / "data"), "--folds-dir", str(workdir / "folds")])
    if not plan:
        for planned in (workdir / "data").glob("*/plan.json"):
            planned.unlink()


@pytest.fixture(scope="session")
def demo_dir(tmp_path_factory) -> Path:
    """A prepared 36-image demo dataset (3 folds, 64 px cache), shared read-only by the tests."""
    workdir = tmp_path_factory.mktemp("demo")
    prepare(workdir, "demo", "--count", "36", "--test-count", "4", "--size", "64", "--k", "3")
    return workdir


@pytest.fixture(scope="session")
def multiclass_dir(tmp_path_factory) -> Path:
    workdir = tmp_path_factory.mktemp("demo_multiclass")
    prepare(workdir, "demo", "--multiclass", "--count", "36", "--test-count", "4", "--size", "64", "--k", "3")
    return workdir


def paths(workdir: Path) -> list:
    return ["--data-dir", str(workdir / "data"), "--folds-dir", str(workdir / "folds")]


@pytest.fixture(scope="session")
def trained_dir(demo_dir, multiclass_dir, tmp_path_factory) -> Path:
    """Tiny Unet and Unet++ on every fold of the demo (2 epochs each, best.pt chosen on the fold: the tests read both
    checkpoints), plus one multiclass Unet fold set (the default --select-on final).

    Under pytest-xdist the first worker to ask trains them and the others copy its run folders into their own demo
    folders, which hold the same bytes (prepare is seeded), the paths the runs record made theirs: 19 s of CPU once a
    suite, not once a worker."""
    import fcntl
    import shutil
    if "PYTEST_XDIST_WORKER" not in os.environ:
        train_demo_runs(demo_dir, multiclass_dir)
        return demo_dir
    shared = tmp_path_factory.getbasetemp().parent / "trained"  # the workers' base folders share this parent
    trained = [demo_dir / "runs", multiclass_dir / "runs"]  # train_demo_runs alone writes them
    with open(f"{shared}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, or the process ends
        if (shared / "done").exists():
            here, there = str(tmp_path_factory.getbasetemp()), (shared / "done").read_text()
            for k, run in enumerate(trained):
                shutil.copytree(shared / str(k), run)
                for record in run.rglob("*.json"):  # as if trained here: its folds file, data and runs folders
                    record.write_text(record.read_text().replace(there, here))
        else:
            train_demo_runs(demo_dir, multiclass_dir)
            for k, run in enumerate(trained):
                shutil.copytree(run, shared / str(k))
            (shared / "done").write_text(str(tmp_path_factory.getbasetemp()))
    return demo_dir


def train_demo_runs(demo_dir: Path, multiclass_dir: Path) -> None:
    import train
    for arch in ("unet", "unetpp"):
        for fold in range(3):
            train.main([*TINY, *paths(demo_dir), "--runs-dir", str(demo_dir / "runs"), "--arch", arch,
                        "--fold", str(fold), "--epochs", "2", "--select-on", "fold"])
    for fold in range(3):
        train.main([*TINY, *paths(multiclass_dir), "--runs-dir", str(multiclass_dir / "runs"), "--dataset",
                    "demo-multiclass", "--fold", str(fold), "--epochs", "1"])


def infer_args(workdir: Path, dataset: str = "demo") -> list:
    return ["--dataset", dataset, "--runs-dir", str(workdir / "runs"), *paths(workdir),
            "--preds-dir", str(workdir / "preds")]


def wandb_records(path):
    """The protobuf records of a .wandb file: wandb 0.31 has no Python reader for its own log format (LevelDB's: 32 KiB
    blocks of chunks, each with a 7-byte header: checksum, length, type FULL 1 / FIRST 2 / MIDDLE 3 / LAST 4)."""
    from wandb.proto.wandb_internal_pb2 import Record
    data, position, chunks = path.read_bytes(), 7, b""  # the file starts with a 7-byte W&B header
    while position + 7 <= len(data):
        if 32768 - position % 32768 < 7:  # a block's tail too short for a header is padding
            position += 32768 - position % 32768
            continue
        length, kind = int.from_bytes(data[position + 4:position + 6], "little"), data[position + 6]
        chunks += data[position + 7:position + 7 + length]
        position += 7 + length
        if kind in (1, 4):
            record = Record()
            record.ParseFromString(chunks)
            yield record
            chunks = b""
