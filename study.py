"""Train every (architecture, encoder, fold) of a study, then infer and ensemble them: the whole experiment in one command.

  python study.py --dataset cxr --archs unet,unetpp --encoders resnet34,efficientnet-b0 --folds all --epochs 40
  python study.py ... --archs unet,unetpp,unetpp_ds  # and Unet++ with deep supervision, inferred at every level
  python study.py ... --gpus all --runs-per-gpu 4    # 4 runs side by side on each GPU
  python study.py ... --parallel 2                   # CPU only: 2 runs side by side, sharing the cores
  python study.py ... --engine ray --address auto    # each run a task on a running Ray cluster
  python study.py ... --dry-run                      # each run's state and train.py command, for any scheduler

Every flag that is not the study's own is a train.py flag, given to every run. A stopped study continues where it
stopped: finished runs are skipped and interrupted ones resumed (src/study.py has the rules). Each run writes its
output to train.log in its folder; a run that fails is reported with the end of that log and the others go on.
SIGTERM, SIGINT (Ctrl-C) or SIGHUP stops the study: no run starts, each running one saves after its epoch and exits.
"""
import argparse
import contextlib
import json
import shlex
import signal
import sys
import time
from collections import defaultdict
from pathlib import Path

from src import engine, study
from src import runs as ledger
from src.estimate import StudyEstimate


def parse_args(argv=None) -> tuple:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     allow_abbrev=False, epilog="Any other flag: see python train.py --help.")
    parser.add_argument("--archs", default="unet,unetpp",
                        help="architectures, comma-separated (default: unet,unetpp; unetpp_ds: with deep supervision)")
    parser.add_argument("--encoders", default="resnet34", help="encoders, comma-separated (default: resnet34)")
    parser.add_argument("--folds", default="all", help="all (every fold in folds/<dataset>.csv) or a list, e.g. 0,2")
    parser.add_argument("--engine", choices=["local", "ray"], default="local", help="where the runs run")
    parser.add_argument("--gpus", default="all", help="local: all (the CPU when there is no GPU), none, or ids: 0,1")
    parser.add_argument("--runs-per-gpu", type=int, default=1, help="runs side by side on each GPU (ray: 1/K GPU each)")
    parser.add_argument("--parallel", type=int, default=1, help="local, on CPU: runs side by side, sharing the cores")
    parser.add_argument("--address", help="ray: the cluster, e.g. auto (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--contexts", help="volumes: several train.py --context values, e.g. 1,3: every run is "
                                           "trained with each, side by side (<arch>-<encoder>-c3), and the "
                                           "leaderboard compares each context with single slices")
    parser.add_argument("--name", help="the study's name: its ensemble/<dataset>/<name>/ folder and W&B tag "
                                       "(default: <dataset>-<archs>-<encoders>)")
    parser.add_argument("--dry-run", action="store_true", help="print each run's state and command, run nothing")
    stale = parser.add_mutually_exclusive_group()
    stale.add_argument("--retrain-stale", action="store_true",
                       help="train again the finished runs made with other settings (the old ones are moved aside)")
    stale.add_argument("--accept-stale", action="store_true",
                       help="keep the finished runs made with other settings (the leaderboard marks them)")
    parser.add_argument("--tta", nargs="?", const="flip", default="none",
                        help="infer.py's test-time augmentation, one mode or several, e.g. none,flip: each is inferred "
                             "and the ensemble chooses by fold among them (ensemble.py --tta best); --tta alone means "
                             "flip")
    parser.add_argument("--checkpoint", choices=["selected", "best", "last"], default="selected",
                        help="the weights inferred and ensembled (selected: what each run's --select-on rule scores)")
    parser.add_argument("--preds-dir", default="preds", help="where infer.py writes")
    parser.add_argument("--out-dir", default="ensemble", help="where ensemble.py writes")
    parser.add_argument("--sample-submission", help="the competition's sample_submission.csv (ensemble.py's flag)")
    parser.add_argument("--export", nargs="?", const="torch", choices=["torch", "onnx"], help="package the study's "
                        "ensemble at the end (export.py --format) into export/<dataset>/<name>/ beside --out-dir; "
                        "alone: torch")
    args, train_flags = parser.parse_known_args(argv)
    if min(args.runs_per_gpu, args.parallel) < 1:
        parser.error("--runs-per-gpu and --parallel count runs at once: 1 or more")
    if args.address and args.engine != "ray":
        parser.error("--address is for --engine ray")
    args.tta = list(dict.fromkeys(args.tta.split(",")))
    if not set(args.tta) <= set(ledger.TTA_MODES):
        parser.error(f"--tta {','.join(args.tta)}: give none, flip or d4, or several comma-separated, e.g. none,flip")
    try:
        cfg = study.train_config(train_flags)
    except ValueError as error:
        parser.error(str(error))
    try:
        args.contexts = study.contexts(args.contexts, cfg, train_flags, args.export)
    except ValueError as error:
        parser.error(str(error))
    args.name = args.name or "-".join([cfg.dataset, args.archs.replace(",", "+"), args.encoders.replace(",", "+")])
    if cfg.tracker == "wandb":  # each run keeps its group (arch-encoder) and gets the study's name as a tag
        train_flags = [*train_flags, "--tags", ",".join(filter(None, [cfg.tags, args.name]))]
        cfg = study.train_config(train_flags)
    return args, train_flags, cfg


def infer_arguments(args, cfg, runs: list) -> dict:
    """infer.py's arguments for each (arch-encoder, TTA mode), with the folds of these runs, so that only they are
    predicted; every level of a unetpp_ds run (ensemble.py chooses its level by fold)."""
    folds = defaultdict(list)
    for run in runs:
        folds[run.name].append(str(run.fold))
    return {(name, tta): ["--dataset", cfg.dataset, "--runs", name, "--folds", ",".join(f), "--tta", tta,
                          "--checkpoint", args.checkpoint, *(["--level", "all"] if name.startswith("unetpp_ds-") else []),
                          "--runs-dir", cfg.runs_dir, "--data-dir", cfg.data_dir,
                          "--folds-dir", cfg.folds_dir, "--preds-dir", args.preds_dir]
            for name, f in folds.items() for tta in args.tta}


def ensemble_arguments(args, cfg, names: list) -> list:
    tta = args.tta[0] if len(args.tta) == 1 else "best"  # several: chosen for each fold on the others' OOF Dice
    return ["--dataset", cfg.dataset, "--runs", ",".join(names), "--tta", tta, "--checkpoint", args.checkpoint,
            "--name", args.name, "--data-dir", cfg.data_dir, "--folds-dir", cfg.folds_dir, "--preds-dir",
            args.preds_dir, "--out-dir", args.out_dir,
            *(["--sample-submission", args.sample_submission] if args.sample_submission else [])]


def check_before_training(args, cfg, archs, encoders, runs) -> None:
    """Stop before any run starts for what every run would fail on, or for stale runs nobody decided about."""
    started = {run.encoder for run in runs if run.state in ("done", "resumable")}  # train.py built these already
    todo = {run.encoder for run in runs if run.state not in ("done", "running")} - started
    checked = dict.fromkeys([archs[0], *(a for a in archs if a == "unetpp_ds")])  # it refuses encoders others take
    wanted = [e for e in encoders if e in todo]  # sizes once the encoders are known to exist
    problems = study.encoder_problems(list(checked), wanted, cfg.encoder_weights) or \
        study.size_problems(archs, wanted, cfg)
    if problems:
        sys.exit("study: " + "; ".join(problems) + " (checked before any run; fix --encoders or --encoder-weights)")
    foreign = list(filter(None, (ledger.foreign_predictions(args.preds_dir, cfg.dataset, name, cfg.runs_dir)
                                 for name in dict.fromkeys(run.name for run in runs))))
    if foreign:  # said before the training, not after it, when infer.py would refuse
        sys.exit(f"study: {foreign[0]}")
    stale = [run for run in runs if run.state == "stale"]
    if stale and not (args.retrain_stale or args.accept_stale or args.dry_run):
        sys.exit(f"study: {len(stale)} finished run(s) were trained with other settings ({stale[0].why}; "
                 f"--dry-run lists them): pass --retrain-stale to train them again (the old ones are moved to "
                 f"replaced/) or --accept-stale to keep them")


def print_plan(args, cfg, runs: list) -> None:
    """A shell script as it stands: `grep -v '^#'` keeps the commands that are left to run."""
    for run in runs:
        if run.state == "done":
            print(f"# done: {run.run_dir}")
        elif run.state == "running":
            print(f"# running ({run.why}): {run.run_dir}")
        elif run.state == "stale" and not args.retrain_stale:
            print(f"# stale ({run.why}): {run.run_dir}; --retrain-stale trains it again, --accept-stale keeps it")
        else:
            print(f"{shlex.join(run.command)}  # {run.state}" + (f" ({run.why})" if run.why else ""))
    for argv in infer_arguments(args, cfg, runs).values():
        print(f"# then: python {study.script('infer.py')} {shlex.join(argv)}")
    names, folds = list(dict.fromkeys(run.name for run in runs)), sorted({run.fold for run in runs})
    print(f"# then: {study.ensemble_skipped(folds)}" if len(folds) < 2 else
          f"# then: python {study.script('ensemble.py')} {shlex.join(ensemble_arguments(args, cfg, names))}")


def train(args, todo: list, epochs: int | None = None, epochs_left: int = 0) -> tuple:
    """The runs on the engine: (the engine's results, mean GPU utilisation or None, the signal that stopped the study
    or None). Failed and stale runs are moved aside by their train.py --overwrite, under its lock. Once a run has
    timed an epoch, the local engine says how long all of `todo` will take (`epochs_left` epochs in all, of runs of
    `epochs`; None: not said)."""
    jobs = [engine.Job(f"{run.name} fold{run.fold} ({run.state})", run.command, run.log) for run in todo]
    if not jobs:
        return [], None, None
    if args.engine == "ray":
        with engine.Stop() as stop:
            results = engine.run_on_ray(jobs, args.address, args.runs_per_gpu, stop=stop)
        return results, None, stop.signum
    places = engine.slots(args.gpus, args.runs_per_gpu, args.parallel)
    devices = sorted({p["CUDA_VISIBLE_DEVICES"] for p in places}) if places[0]["CUDA_VISIBLE_DEVICES"] else []
    print(f"# local engine: {len(places)} run(s) at a time on " +
          (f"GPU {','.join(devices)}" if devices else "the CPU") + "; progress of each in its train.log")
    timed = StudyEstimate([run.run_dir for run in todo], epochs, epochs_left, len(places),
                          f"GPU {','.join(devices)}" if devices else "CPU") if epochs else contextlib.nullcontext()
    with engine.Stop() as stop, engine.GpuUtilisation(places) as gpu, timed:
        results = engine.run_local(jobs, places, stop=stop)
    return results, gpu.mean, stop.signum


def stopped(runs_after: list, signum: int, argv) -> None:
    """A signal stopped the study: one line per run it left, and the command that continues."""
    for run in runs_after:
        if run.state not in ("done", "stale"):
            print(f"{run.name} fold{run.fold}: {'stopped (resumable)' if run.state == 'resumable' else run.state}")
    again = shlex.join(["python", "study.py", *(sys.argv[1:] if argv is None else argv)])
    print(f"study: stopped by {signal.Signals(signum).name}; the same command continues: {again}")
    sys.exit(128 + signum)


def main(argv=None):
    args, train_flags, cfg = parse_args(argv)
    if args.engine == "ray" and not args.dry_run:  # first: a wrong address is said at once, not after the plan
        try:
            engine.connect_ray(args.address)
        except engine.EngineError as error:
            sys.exit(f"study: {error}")
    archs, encoders = study.canonical_archs(args.archs.split(",")), args.encoders.split(",")
    try:
        folds = study.fold_numbers(cfg, args.folds)
        runs = study.plan(cfg, archs, encoders, folds, train_flags, args.contexts)
        states = ", ".join(f"{sum(r.state == s for r in runs)} {s}" for s in study.STATES
                           if any(r.state == s for r in runs))
        contexts = f" x {len(args.contexts)} contexts" if len(args.contexts) > 1 else ""
        print(f"# {cfg.dataset}: {len(archs)} archs x {len(encoders)} encoders{contexts} x {len(folds)} folds = "
              f"{len(runs)} runs, {states}")
        settings = study.settings_line(cfg, train_flags)
        if settings:  # prepare printed the plan as planned; the study's flags may override it
            print(settings)
        check_before_training(args, cfg, archs, encoders, runs)
    except (FileNotFoundError, ValueError) as error:
        sys.exit(f"study: {error}")
    except KeyboardInterrupt:
        print("study: stopped by SIGINT before any run started")
        sys.exit(128 + signal.SIGINT)
    if args.dry_run:
        print_plan(args, cfg, runs)
        return

    # 1. Train what is not done where the engine finds room; each run's output goes to its train.log.
    todo = [run for run in runs if run.state in ("new", "failed", "resumable")
            or (run.state == "stale" and args.retrain_stale)]
    saved = {run.run_dir: ledger.epochs_saved(run.run_dir) if run.state == "resumable" else 0 for run in todo}
    start = time.time()
    results, utilisation, signum = train(args, todo, cfg.epochs, sum(cfg.epochs - saved[run.run_dir] for run in todo))
    after = study.plan(cfg, archs, encoders, folds, train_flags, args.contexts)
    if signum:
        stopped(after, signum, argv)

    # 2. What the training cost, over all runs together: the figures that packing runs on a device should raise.
    wall, cost = time.time() - start, ""
    if results:
        trained = sum(result.ok for result in results)
        images = sum(study.images_trained(run, saved[run.run_dir]) for run in todo)
        cost = (f"trained {trained} of {len(results)} runs in {wall / 60:.1f} min: {trained * 3600 / wall:.1f} runs/h, "
                f"{images / wall:.1f} training images/s over all runs"
                + (f", mean GPU utilisation {utilisation:.0f}%" if utilisation is not None else ""))
    failed = [result for result in results if not result.ok]

    # 3. Infer the finished runs (predictions newer than their weights are kept), then rank and ensemble them.
    for run in after:  # the leaderboard marks a kept stale run; a run done with these settings loses the mark
        if run.state == "stale" and args.accept_stale:
            ledger.accept_stale(run.run_dir, run.why, args.name)
        elif run.state == "done":
            ledger.clear_accepted_stale(run.run_dir)
    finished = [run for run in after if run.state == "done" or (run.state == "stale" and args.accept_stale)]
    problems, leaderboard = [], None
    try:
        problems, leaderboard = infer_and_ensemble(args, cfg, finished, folds)
    except KeyboardInterrupt:
        stopped(after, signal.SIGINT, argv)

    # 4. The summary, last, where the terminal shows it: each problem with its own fix.
    if cost:
        print(f"\n{cost}")
    if leaderboard:
        from src.ensembling import report  # here, not at the top: matplotlib, which ensemble.py has loaded by now
        print(f"leaderboard: {leaderboard}")
        print("\n".join(report.headline(json.loads((leaderboard.parent / "scores.json").read_text()))))
    for result in failed:
        print(f"\nfailed: {result.job.name}, exit code {result.returncode}; {result.job.log} ends with:")
        print("\n".join(f"  | {line}" for line in result.tail()))
    if failed:
        problems.append(f"{len(failed)} of {len(results)} runs failed: fix what their logs say, then run the same "
                        f"command again (finished runs are kept)")
    elsewhere = [run for run in after if run.state == "running"]
    if elsewhere:
        problems.append(f"{len(elsewhere)} run(s) are being trained by another process ({elsewhere[0].why}): run the "
                        f"same command again once they end to infer and ensemble them")
    if problems:
        sys.exit("study: " + "\nstudy: ".join(problems))


def infer_and_ensemble(args, cfg, finished: list, folds: list) -> tuple:
    """(problems, the leaderboard ensemble.py wrote in this call or None); a run whose infer fails is left out."""
    import ensemble  # not before: they load torch, which the plan and the engines do not need
    import infer
    problems, failed = [], set()
    for (name, tta), argv in infer_arguments(args, cfg, finished).items():
        problem = study.call(infer.main, argv)
        if problem:
            problems.append(f"infer.py {name} --tta {tta} failed: {problem} (python {study.script('infer.py')} "
                            f"{shlex.join(argv)})")
            failed.add(name)
    inferred = [name for name in dict.fromkeys(run.name for run in finished) if name not in failed]
    if not inferred:
        return problems, None
    if len(folds) < 2:
        print(study.ensemble_skipped(folds))
        return problems, None
    leaderboard = Path(args.out_dir) / cfg.dataset / args.name / "leaderboard.md"
    before = leaderboard.stat().st_mtime_ns if leaderboard.exists() else None
    problem = study.call(ensemble.main, ensemble_arguments(args, cfg, inferred))
    if problem:
        problems.append(f"ensemble.py failed: {problem}")
    wrote = leaderboard.exists() and leaderboard.stat().st_mtime_ns != before
    if args.export and wrote and not problem:
        import export
        failure = study.call(export.main, study.export_arguments(args.name, args.export, args.out_dir, cfg))
        problems += [f"export.py failed: {failure}"] if failure else []
    return problems, leaderboard if wrote and not problem else None


if __name__ == "__main__":
    main()
