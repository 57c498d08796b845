"""python -m src.bench --newcomer: the README's two commands, timed on a fresh clone of the commit, against limits."""
import re
import subprocess

from src import limits

HISTORY = "epoch,seconds,train_seconds\n1,2.0,1.5\n2,2.5,2.0\n"


def project(root):
    """A git project with the README's two commands: one test (it needs ../shared/data) and a demo.sh whose two runs
    write history.csv; an uncommitted failing test beside them, which a fresh clone does not have."""
    (root / "tests").mkdir(parents=True)
    (root / "tests" / "test_a.py").write_text("from pathlib import Path\n\ndef test_shared():\n"
                                              "    assert (Path.cwd().parent / 'shared' / 'data' / 'x.txt').exists()\n")
    (root / "demo.sh").write_text("#!/usr/bin/env bash\nfor k in 0 1; do mkdir -p runs/demo/unet-x/fold$k\n"
                                  f"printf '{HISTORY}' > runs/demo/unet-x/fold$k/history.csv; done\n")
    (root / "demo.sh").chmod(0o755)
    git = ["git", "-C", str(root), "-c", "user.name=t", "-c", "user.email=t@t"]
    for command in (["init", "--quiet"], ["add", "-A"], ["commit", "--quiet", "-m", "one test, one demo"]):
        subprocess.run([*git, *command], check=True)
    (root / "tests" / "test_b.py").write_text("def test_uncommitted():\n    assert False\n")
    (root.parent / "shared" / "data").mkdir(parents=True)
    (root.parent / "shared" / "data" / "x.txt").write_text("real data")


def test_newcomer_times_both_commands_on_a_clone_of_the_commit_and_says_pass_or_fail(tmp_path, capsys):
    project(tmp_path / "proj")
    assert limits.newcomer(tmp_path / "proj", tests_seconds=120, demo_seconds=120)
    tests, demo = capsys.readouterr().out.splitlines()[-2:]
    assert re.fullmatch(r"PASS tests: `python -m pytest -q` took \d+ s of wall time \(limit 120 s\), \d+ s of CPU; "
                        r"1 passed in .*", tests), tests  # the clone's test only, ../shared/data linked beside it
    assert re.fullmatch(r"PASS demo: `\./demo\.sh` took \d+ s of wall time \(limit 120 s\), \d+ s of CPU; 2 runs' "
                        r"history\.csv hold 7 s of training \(9 s with validation\), \d+% of the wall time", demo), demo
    assert not limits.newcomer(tmp_path / "proj", tests_seconds=0, demo_seconds=120)
    assert capsys.readouterr().out.splitlines()[-2].startswith("FAIL tests: `python -m pytest -q` took ")
