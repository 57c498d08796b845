"""A newcomer's first ten minutes, measured (python -m src.bench --newcomer): the README's two commands on a fresh
clone of the current commit, each against its limit.

The clone is a temp folder; `../shared/data` beside this checkout, where it exists, is linked beside the clone too, so
the tests that read it run as they do here. Wall time depends on what else the cores run: the lines give the CPU
seconds too (all processes of the command) and the load average at the start.
"""
import os
import resource
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
TESTS = ["python", "-m", "pytest", "-q"]  # the README's test command, as typed; its options live in pytest.ini
DEMO = ["./demo.sh"]
TESTS_SECONDS, DEMO_SECONDS = 300, 120


def children_cpu() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def timed(command: list, cwd: Path) -> tuple:
    """(wall s, CPU s, exit code, last lines) of `command` in cwd, its output shown as it runs."""
    cpu, start, tail = children_cpu(), time.perf_counter(), deque(maxlen=20)
    with subprocess.Popen(command, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        for line in process.stdout:
            print(line, end="", flush=True)
            tail.append(line.rstrip("\n"))
    return time.perf_counter() - start, children_cpu() - cpu, process.returncode, list(tail)


def verdict(name: str, command: list, wall: float, cpu: float, limit: float, code: int, said: str) -> str:
    ok = code == 0 and wall <= limit
    status = f"exit code {code}; " if code else ""
    return (f"{'PASS' if ok else 'FAIL'} {name}: `{' '.join(command)}` took {wall:.0f} s of wall time (limit {limit:.0f} s), "
            f"{cpu:.0f} s of CPU; {status}{said}")


def training_seconds(clone: Path) -> tuple:
    """The demo's runs' own time, from their history.csv: (training, training with validation) seconds."""
    histories = [pd.read_csv(path) for path in sorted(clone.glob("runs/*/*/fold*/history.csv"))]
    return (sum(h["train_seconds"].sum() for h in histories), sum(h["seconds"].sum() for h in histories),
            len(histories))


def newcomer(root: Path = ROOT, tests_seconds: float = TESTS_SECONDS, demo_seconds: float = DEMO_SECONDS) -> bool:
    """Clone root's current commit, run the README's test command and ./demo.sh there, print a PASS or FAIL line for
    each (and the demo's training share); True when both pass."""
    commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=True)
    with tempfile.TemporaryDirectory() as tmp:
        clone = Path(tmp) / root.name
        subprocess.run(["git", "clone", "--quiet", "--no-checkout", str(root), str(clone)], check=True)
        subprocess.run(["git", "-C", str(clone), "checkout", "--quiet", "--detach", commit.stdout.strip()], check=True)
        shared = root.parent / "shared" / "data"
        if shared.is_dir():
            (Path(tmp) / "shared").mkdir()
            (Path(tmp) / "shared" / "data").symlink_to(shared)
        load = os.getloadavg()[0]
        print(f"newcomer: a fresh clone of {commit.stdout.strip()[:12]} in {clone}; {os.cpu_count()} cores, load "
              f"average {load:.1f} at the start; ../shared/data {'linked' if shared.is_dir() else 'absent'}",
              flush=True)
        wall, cpu, code, tail = timed(TESTS, clone)
        tests = verdict("tests", TESTS, wall, cpu, tests_seconds, code, tail[-1] if tail else "no output")
        wall, cpu, code, tail = timed(DEMO, clone)
        trained, with_validation, runs = training_seconds(clone)
        demo = verdict("demo", DEMO, wall, cpu, demo_seconds, code,
                       f"{runs} runs' history.csv hold {trained:.0f} s of training ({with_validation:.0f} s with "
                       f"validation), {trained / wall:.0%} of the wall time")
    print(f"\n{tests}\n{demo}")
    return tests.startswith("PASS") and demo.startswith("PASS")
