"""The engines start commands where there is room, keep each one's output in its log, and report each failure."""
import os
import sys

from src import engine

# A command that says where it ran and when; it sleeps long enough for runs started together to overlap.
WHERE = "import os, sys, time; a = time.time(); time.sleep(1.5); print(os.environ['CUDA_VISIBLE_DEVICES'], a, time.time())"


def test_local_engine_packs_k_runs_on_each_gpu(tmp_path):
    jobs = [engine.Job(f"job{i}", ["python", "-c", WHERE], tmp_path / f"job{i}" / "train.log") for i in range(6)]
    results = engine.run_local(jobs, engine.slots("0,1", runs_per_gpu=2, parallel=1))
    assert sorted(r.job.name for r in results) == [f"job{i}" for i in range(6)] and all(r.ok for r in results)
    spans = [r.tail(1)[0].split() for r in results]  # [gpu, start, end] from each log
    assert {gpu for gpu, _, _ in spans} == {"0", "1"}

    def running_at(t, gpu=None):
        return sum(float(a) <= t < float(b) for g, a, b in spans if gpu in (None, g))

    starts = [float(a) for _, a, _ in spans]
    assert max(running_at(t, g) for t in starts for g in "01") == 2  # never a third run on one GPU
    assert max(running_at(t) for t in starts) > 2  # and both GPUs busy at once


def test_each_run_starts_on_the_least_loaded_gpu_and_knows_how_many_share_it(tmp_path):
    # Each run lasts long enough for the next to start beside it: a run that has ended leaves its GPU the least loaded.
    say = "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES'], os.environ['RUNS_SHARING_DEVICE']); time.sleep(1)"
    jobs = [engine.Job(f"job{i}", ["python", "-c", say], tmp_path / f"job{i}.log") for i in range(4)]
    results = engine.run_local(jobs, engine.slots("0,1,2,3", runs_per_gpu=2, parallel=1))
    placed = sorted(tuple(r.tail(1)[0].split()) for r in results)
    assert placed == [("0", "1"), ("1", "1"), ("2", "1"), ("3", "1")]  # not 0,0,1,1: four GPUs, each run alone


def test_slots_follow_visible_gpus_and_share_cpu_cores(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    assert engine.slots("all", 2, 1) == [{"CUDA_VISIBLE_DEVICES": g} for g in ("3", "3", "5", "5")]
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    assert engine.slots("none", 1, 2) == [{"CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "4"}] * 2


def test_a_failing_command_is_reported_with_its_last_lines_and_the_others_finish(tmp_path):
    fail = "import sys; print('epoch 1 done'); sys.exit('CUDA out of memory')"
    jobs = [engine.Job("fails", ["python", "-c", fail], tmp_path / "a" / "train.log"),
            engine.Job("ok", [sys.executable, "-c", "print('fine')"], tmp_path / "c" / "train.log")]
    results = {r.job.name: r for r in engine.run_local(jobs, engine.slots("none", 1, 1))}
    assert not results["fails"].ok and results["fails"].tail(2) == ["epoch 1 done", "CUDA out of memory"]
    assert results["ok"].ok and (tmp_path / "c" / "train.log").read_text().startswith("\n== ")  # command, time


def test_a_commands_output_goes_to_its_log_without_the_engine(tmp_path):
    """A run writes its log itself, in a session of its own: a driver that dies (or stops reading) never stalls it."""
    log = tmp_path / "train.log"
    seen = []
    code, _ = engine.run_command(["python", "-c", "import os; print(os.getsid(0) == os.getpid(), flush=True)"],
                                 str(log), ".", {}, started=seen.append)
    assert code == 0 and log.read_text().splitlines()[-1] == "True" and seen[0].stdout is None
