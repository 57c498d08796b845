"""Engines: start commands where there is room, each with its output in a log file, and say how each ended.

  local  subprocesses on this machine: K per GPU (CUDA_VISIBLE_DEVICES set per command, each on the least loaded
         GPU), or N at once on CPU; SIGTERM, SIGINT or SIGHUP starts nothing more and goes on to every running command
  ray    one Ray actor per command on a running Ray cluster (fractional GPUs pack K per GPU), or on a local Ray;
         a stop goes on to every running command as on the local engine

An engine knows commands, logs and devices, nothing about what the commands do (src/study.py plans them).
"""
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

# Logs are files, not terminals: every line there as soon as it is printed, progress bars redrawn at most each minute.
LOG_ENV = {"PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "60"}


@dataclass
class Job:
    name: str
    command: list  # argv; a leading "python" means the interpreter of whichever process starts it
    log: Path


@dataclass
class Result:
    job: Job
    returncode: int
    seconds: float
    error: str = ""  # why the engine could not get an exit code (a Ray worker or node lost), else ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    def tail(self, lines: int = 12) -> list:
        """The last lines of the job's log: what a failed run said before it stopped."""
        text = Path(self.job.log).read_text(errors="replace") if Path(self.job.log).exists() else ""
        shown = [line for line in re.split(r"[\r\n]", text) if line.strip()]  # a progress bar's last state
        return shown[-lines:] + ([self.error] if self.error else [])


class EngineError(Exception):
    """The engine cannot start (no Ray cluster at the address given): one line with the fix."""


def run_command(command: list, log: str, cwd: str, env: dict, started=None) -> tuple:
    """Run one command to its end with stdout and stderr appended to log: (exit code, seconds).

    The command writes to the log itself, in a session of its own: it never waits on this process (which may die),
    and a Ctrl-C to this process's group reaches it only as the engine forwards it. started(process) is told of it."""
    argv = [sys.executable if command[0] == "python" else command[0], *command[1:]]
    Path(log).parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    with open(log, "ab") as out:
        begins = {"LOG_START": str(out.seek(0, os.SEEK_END))}  # train.py --overwrite moves what lies before aside
        out.write(f"\n== {time.strftime('%Y-%m-%d %H:%M:%S')} {shlex.join(command)}\n".encode())
        out.flush()
        with subprocess.Popen(argv, cwd=cwd, env={**os.environ, **LOG_ENV, **begins, **env}, stdin=subprocess.DEVNULL,
                              stdout=out, stderr=subprocess.STDOUT, start_new_session=True) as process:
            if started:
                started(process)
    return process.returncode, time.time() - start


class Stop:
    """SIGTERM, SIGINT or SIGHUP to this process (alone, or to its group): no new command starts, and the signal is
    forwarded to every running one (train.py then finishes its epoch, saves and exits)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self):
        self.signum, self.running = None, set()

    def __enter__(self):
        self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def handle(self, signum, frame):
        self.signum = signum
        for process in list(self.running):
            process.send_signal(signum)

    def started(self, process) -> None:
        self.running.add(process)
        if self.signum:  # the signal came while it was starting
            process.send_signal(self.signum)

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


class Progress:
    """One bar over the whole set: commands done, running (Ray: submitted) and failed, with tqdm's ETA."""

    def __init__(self, total: int, active: str = "running"):
        self.bar = tqdm(total=total, desc="study", unit="run")
        self.active, self.running, self.failed = active, 0, 0
        self.lock = threading.Lock()

    def started(self) -> None:
        with self.lock:
            self.running += 1
            self.bar.set_postfix({self.active: self.running, "failed": self.failed})

    def finished(self, result: Result, stopping: bool = False) -> None:
        with self.lock:
            self.running -= 1
            self.failed += not (result.ok or stopping)
            if not (result.ok or stopping):
                self.bar.write(f"failed: {result.job.name} (exit {result.returncode}), log {result.job.log}")
            self.bar.set_postfix({self.active: self.running, "failed": self.failed})
            self.bar.update()

    def close(self) -> None:
        self.bar.close()


def visible_gpus() -> list:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES where set, else every GPU nvidia-smi lists."""
    if "CUDA_VISIBLE_DEVICES" in os.environ:
        return [g for g in os.environ["CUDA_VISIBLE_DEVICES"].split(",") if g.strip()]
    if not shutil.which("nvidia-smi"):
        return []
    listed = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                            text=True)
    return listed.stdout.split() if listed.returncode == 0 else []


def slots(gpus: str, runs_per_gpu: int, parallel: int) -> list:
    """The environment of each place a command can run: K places per GPU, or `parallel` places on the CPU.

    gpus: 'all' (every visible GPU, the CPU when there is none), 'none' (CPU), or ids such as '0,1'.
    """
    ids = visible_gpus() if gpus == "all" else [] if gpus == "none" else gpus.split(",")
    if ids:
        return [{"CUDA_VISIBLE_DEVICES": g} for g in ids for _ in range(runs_per_gpu)]
    # CPU runs side by side share the cores instead of each starting one thread per core.
    threads = {} if parallel == 1 or "OMP_NUM_THREADS" in os.environ else {
        "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // parallel))}
    return [{"CUDA_VISIBLE_DEVICES": "", **threads} for _ in range(parallel)]


def run_local(jobs: list, places: list, cwd: str = ".", stop: Stop | None = None) -> list:
    """Every job as a subprocess, each on the least loaded device (places lists one environment per run a device
    takes at once); results of the jobs started, in the order they finish. Each command's environment tells it how
    many runs share its device, itself included (RUNS_SHARING_DEVICE), when it starts."""
    capacity = {}
    for env in places:
        key = tuple(sorted(env.items()))
        capacity[key] = capacity.get(key, 0) + 1
    load, room = dict.fromkeys(capacity, 0), threading.Condition()
    stop = stop or Stop()
    progress = Progress(len(jobs))

    def one(job: Job) -> Result | None:
        with room:
            while not stop.signum and all(load[k] == capacity[k] for k in load):
                room.wait(0.2)
            if stop.signum:
                return None
            device = min((k for k in load if load[k] < capacity[k]), key=load.get)  # the first of the least loaded
            load[device] += 1
            env = {**dict(device), "RUNS_SHARING_DEVICE": str(load[device])}
        progress.started()
        try:
            result = Result(job, *run_command(job.command, str(job.log), cwd, env, stop.started))
            progress.finished(result, stopping=stop.signum is not None)  # before its place is free (see Progress)
            return result
        finally:
            with room:
                load[device] -= 1
                room.notify()

    results = []
    with ThreadPoolExecutor(len(places)) as pool:
        for future in as_completed([pool.submit(one, job) for job in jobs]):
            if future.result():
                results.append(future.result())
    progress.close()
    return results


def connect_ray(address: str | None) -> None:
    """Connect to the Ray cluster at address (None: RAY_ADDRESS, a `ray start` of this machine, else a new local Ray),
    or raise EngineError within seconds: Ray itself retries a wrong address for minutes."""
    import ray  # here only: the local engine works without Ray's 80 MB wheel
    if address and address != "auto":
        host, _, port = address.removeprefix("ray://").rpartition(":")
        try:
            socket.create_connection((host, int(port)), timeout=5).close()
        except (OSError, ValueError):
            raise EngineError(f"no Ray cluster answers at --address {address}: start one there with `ray start "
                              f"--head` (it prints the address), or drop --address to run on a Ray of this machine "
                              f"alone") from None
    try:
        ray.init(address=address, include_dashboard=False)
    except ConnectionError:  # --address auto with no cluster running here
        raise EngineError(f"no Ray cluster found for --address {address}: start one with `ray start --head`, "
                          f"or drop --address to run on a Ray of this machine alone") from None


class RayCommand:
    """One command as a Ray actor, which holds its place (1/K GPU or one CPU) while the command runs and takes a
    stop as the local engine does: signal(signum) is forwarded to the command, or it never starts."""

    def __init__(self):
        self.stop = Stop()  # its bookkeeping only: no handler is installed in the actor

    def run(self, command: list, log: str, cwd: str) -> tuple | None:
        if self.stop.signum:
            return None
        # Ray's worker threads block these signals, and a child inherits the mask: it would never see the stop.
        signal.pthread_sigmask(signal.SIG_UNBLOCK, Stop.SIGNALS)
        return run_command(command, log, cwd, {}, self.stop.started)

    def signal(self, signum: int) -> None:
        self.stop.handle(signum, None)


@dataclass(eq=False)  # one per actor, in Stop's set
class RayProcess:
    """A running RayCommand as engine.Stop sees a local process: something to send a signal to."""
    actor: object

    def send_signal(self, signum: int) -> None:
        self.actor.signal.remote(signum)


def run_on_ray(jobs: list, address: str | None, runs_per_gpu: int, cwd: str = ".", stop: Stop | None = None) -> list:
    """Every job as a Ray actor: 1/K of a GPU each where the cluster has GPUs, else one CPU each. A stop (the
    study's SIGTERM, SIGINT or SIGHUP) is forwarded to every command, which then saves and exits, and starts no
    other; results of the jobs started.

    Without an address Ray takes RAY_ADDRESS or a cluster that `ray start` runs on this machine, else starts one for
    these jobs alone; a caller that has connected (connect_ray, ray.init) keeps its Ray.
    cwd and the paths in the commands must mean the same on every node: storage that every node sees.
    """
    import ray  # here only: the local engine works without Ray's 80 MB wheel
    from ray import cloudpickle

    connected_here = not ray.is_initialized()
    if connected_here:
        connect_ray(address)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not find src/ on their path
    on_gpus = ray.cluster_resources().get("GPU", 0) > 0
    stop = stop or Stop()
    # No restarts: a restarted command would start again with the flags it was planned with (a new run without
    # --resume); the next call of the study plans it again from its folder instead. Two threads: run, and signal.
    actor = ray.remote(max_restarts=0, max_concurrency=2,
                       **({"num_gpus": 1 / runs_per_gpu} if on_gpus else {"num_cpus": 1}))(RayCommand)
    progress = Progress(len(jobs))
    # Each actor starts where the cluster finds room; only then, and only if no stop came, does its command start.
    ready = {command.__ray_ready__.remote(): (job, command) for job, command in ((j, actor.remote()) for j in jobs)}
    running, results = {}, []
    while ready or running:
        if stop.signum and ready:
            for _, command in ready.values():
                ray.kill(command)
            ready.clear()
        if not (ready or running):
            break
        done, _ = ray.wait([*ready, *running], num_returns=1, timeout=0.5)  # not blocking: a signal's handler runs
        for ref in done:
            if ref in ready:
                job, command = ready.pop(ref)
                running[command.run.remote(job.command, str(job.log), str(Path(cwd).resolve()))] = job, command
                stop.started(RayProcess(command))
                progress.started()
                continue
            job, command = running.pop(ref)
            try:
                outcome = ray.get(ref)
                result = Result(job, *outcome) if outcome else None
            except ray.exceptions.RayError as error:  # the worker or its node died: no exit code to report
                result = Result(job, -1, 0.0, error=f"ray: {str(error).strip().splitlines()[0]}")
            ray.kill(command)  # its place goes to the next one
            if result:
                results.append(result)
                progress.finished(result, stopping=stop.signum is not None)
    progress.close()
    if connected_here:
        ray.shutdown()  # disconnects; a cluster started by `ray start` keeps running
    return results


class GpuUtilisation:
    """Mean utilisation of some GPUs while a block runs, sampled every second with nvidia-ml-py.

    `mean` stays None on CPU, or where nvidia-ml-py or the NVIDIA driver is missing.
    """

    def __init__(self, places: list):
        self.ids = sorted({int(env["CUDA_VISIBLE_DEVICES"]) for env in places
                           if env.get("CUDA_VISIBLE_DEVICES", "").isdigit()})  # not GPU UUIDs or MIG names
        self.samples, self.stop, self.mean = [], threading.Event(), None

    def __enter__(self):
        if not self.ids:
            return self
        try:
            import pynvml  # nvidia-ml-py; optional
            pynvml.nvmlInit()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in self.ids]
        except Exception:  # ImportError, or NVMLError without a driver: utilisation is simply not reported
            return self

        def sample():
            while not self.stop.wait(1.0):
                self.samples.append(sum(pynvml.nvmlDeviceGetUtilizationRates(h).gpu for h in handles) / len(handles))

        self.thread = threading.Thread(target=sample, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        if self.samples:
            self.mean = sum(self.samples) / len(self.samples)
