"""Average fold x architecture predictions into final masks, tune TTA and post-processing on OOF data, write scores.

  python ensemble.py                         # every run with predictions for the dataset
  python ensemble.py --runs 'unet*' --weights unet-resnet34=1,unetpp-resnet34=2 --name unets
  python ensemble.py --checkpoint last --name last --set new_xrays   # last.pt's masks of infer.py --images new_xrays/

Reads preds/<dataset>/ (infer.py, through src/runs.py) and data/<dataset>/masks; writes ensemble/<dataset>/ (or
ensemble/<dataset>/<NAME>/ with --name): masks/<id>.png (final masks at original size: 0/255 for binary, class index
for multiclass), submission.csv (Kaggle RLE in the format of the train CSV that prepare read, or row for row as
--sample-submission lists them), scores.json, leaderboard.md, comparison.png, scores.png and, where Unet and Unet++
share encoders, study.png; for a dataset of volumes, also volumes/<case>.nii.gz (the test cases' masks in their
source's grid and header) and 3D scores per case; with --set NAME the masks and submission.csv of that prediction set go to
sets/NAME/ inside it instead. The folder records its selection (runs, checkpoint, TTA) in selection.json and is not
replaced by another selection without --overwrite. Only predictions made by each run's current weights on the split
it was trained on are used; any other stops the ensemble with the infer.py command that renews it. The scores are
cross-validated: each fold is scored with the TTA and post-processing chosen on the other folds; the test masks use
the choices made on all OOF images. Each single run is post-processed the same way (an ensemble of one), so the
ensemble's gain compares post-processed with post-processed and raw with raw; the leaderboard states each run's
epoch rule (--select-on) and labels `fold` optimistic.
"""
import argparse
from pathlib import Path

from tqdm.contrib.concurrent import thread_map

from src import runs as ledger, volume_scores
from src.portable import volumes
from src.canonical import load_index
from src.ensembling import choices, inputs, report, scores as scoring
from src.portable.files import write_atomic
from src.portable.labels import label_order, to_labels
from src.portable.images import HOST_THREADS
from src.portable.maps import final_mask
from src.portable.submission import mask_codes, staged, submission_text


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="demo")
    parser.add_argument("--tta", choices=["best", "none", "flip", "d4"],
                        help="which TTA predictions to use per run (default best: the highest OOF Dice of those "
                             "predicted; with --set, the folder's own)")
    parser.add_argument("--compare-tta", choices=ledger.TTA_MODES,
                        help="TTA of both runs in the Unet++ vs Unet comparison (default: the most augmented mode "
                             "both were predicted with: d4, else flip, else none)")
    parser.add_argument("--runs", help="only these runs: names or globs, comma-separated, e.g. 'unet*-resnet34'")
    parser.add_argument("--checkpoint", choices=["selected", "best", "last"],
                        help="the predictions of the selected weights (the default), best.pt or last.pt (infer.py "
                             "--checkpoint; with --set, the folder's own)")
    parser.add_argument("--name", help="write to ensemble/<dataset>/NAME/ (default: ensemble/<dataset>/)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an output folder made from another selection of runs, checkpoint or TTA")
    parser.add_argument("--set", help="write the masks of this prediction set (infer.py --images DIR --name NAME) "
                                      "instead of the dataset's test split, with the output folder's runs, checkpoint "
                                      "and TTA where --runs, --checkpoint, --tta are not given")
    parser.add_argument("--weights", help="test-time run weights, positive numbers, e.g. "
                                          "unet-resnet34=1,unetpp-resnet34=2 (default 1)")
    parser.add_argument("--sample-submission", type=Path,
                        help="the competition's sample_submission.csv: submission.csv follows its rows and columns "
                             "exactly (default: the format of the train CSV prepare read, else id,rle / id,class,rle)")
    parser.add_argument("--figures", type=int, default=4,
                        help="OOF images in comparison.png: where the first two runs disagree most, and the worst one")
    parser.add_argument("--by", help="also score subgroups: any index.csv column, e.g. view, sex (default: tissue "
                                     "where the dataset has one)")
    parser.add_argument("--tune-size", type=int, default=512,
                        help="tune post-processing on OOF maps shrunk to this longer side (scores stay at full size)")
    parser.add_argument("--tracker", choices=["wandb", "none"], help="log the leaderboard (default: as the runs were trained)")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--folds-dir", default="folds")
    parser.add_argument("--preds-dir", default="preds")
    parser.add_argument("--out-dir", default="ensemble")
    return parser.parse_args(argv)


def main(argv=None):
    """The story: the prediction sets, checked; each fold's choices made on the other folds; every run and the
    ensemble scored; the reports; the masks and the submission."""
    args = parse_args(argv)
    out = inputs.output_folder(args.out_dir, args.dataset, args.name)
    dirs = {"--data-dir": args.data_dir, "--folds-dir": args.folds_dir, "--preds-dir": args.preds_dir}
    selection = inputs.selection(args.dataset, args.runs, args.checkpoint, args.tta, args.preds_dir, args.set,
                                 None if args.overwrite else out / "selection.json", dirs)
    found = inputs.find(selection)
    checked = inputs.check(found, selection, Path(args.data_dir) / args.dataset, args.by, args.weights, out,
                           args.overwrite, args.sample_submission)
    chosen = choices.choose(checked, args.tune_size)
    scores, tables = scoring.score(checked, chosen, args.compare_tta)
    report.write(out, scores, tables, checked, chosen, args.figures, args.tracker)
    written = out / "sets" / args.set if args.set else out
    cases = write_masks(written, chosen.test, chosen.postprocess["ensemble"].for_test, checked.meta,
                        args.sample_submission, checked.dataset_dir)
    print(f"wrote {out}/: scores.json, leaderboard.md, figures; {written}/: {len(chosen.test)} masks, submission.csv"
          + (f", {cases} NIfTI volumes in volumes/" if "volumes" in checked.meta else ""))
    print("\n".join(report.headline(scores)))


def write_masks(folder: Path, test: dict, settings: dict, meta: dict, sample: Path | None, dataset_dir: Path) -> int:
    """Each test image's (or --set image's) weighted mean over every run and fold, post-processed with the settings
    chosen on all OOF images, as an exported package computes it: masks/<id>.png (0/255 for binary, the class index
    for multiclass) and submission.csv in the dataset's format, or row for row as the sample submission lists them.
    A volume dataset's test cases are stacked back and post-processed in 3D first (volumes.finish_case), and written
    as volumes/<case>.nii.gz with the source's header (so its affine). Masks of images no longer predicted are
    removed. Returns the number of volumes written."""
    def final(image_id: str):
        return final_mask(*ledger.read_maps(*zip(*test[image_id])), settings)

    cases = test_cases(dataset_dir, meta, test)
    records = volume_scores.read_records(dataset_dir) if cases else {}

    def case_codes(case: str, masks: Path) -> dict:
        ids, record = cases[case], records[case]
        labels, slice_masks = volumes.finish_case([final(i) for i in ids], meta["volumes"]["axis"], record["shape"],
                                                  settings.get("largest_3d", []), meta["task"])
        volumes.write_mask(folder / "volumes" / f"{case}.nii.gz", to_labels(labels, label_order(meta))
                           if "regions" in meta else labels, record["header"])  # regions: as nnU-Net writes them
        return {i: mask_codes(i, m, meta["classes"], meta["submission"], masks, meta["task"])
                for i, m in zip(ids, slice_masks)}

    if not test:
        print("ensemble: no test images, so submission.csv holds its header alone (prepare --test DIR adds them to the "
              "dataset; infer.py --images DIR and ensemble.py --set NAME write the masks of any folder)")
    alone = [i for i in test if i not in {i for ids in cases.values() for i in ids}]  # images, or slices of no case
    with staged(folder / "masks") as masks:
        def codes(i: str) -> dict:
            return mask_codes(i, final(i), meta["classes"], meta["submission"], masks, meta["task"])
        found = dict(zip(alone, thread_map(codes, alone, max_workers=HOST_THREADS, desc="test masks",
                                           unit="img"))) if alone else {}
        for codes in thread_map(lambda c: case_codes(c, masks), list(cases), max_workers=HOST_THREADS,
                                desc="test volumes", unit="case"):
            found.update(codes)
    for old in {p.stem for p in (folder / "masks").glob("*.png")} - set(test):
        (folder / "masks" / f"{old}.png").unlink()
    text, said = submission_text({i: found[i] for i in test}, meta["classes"], meta["submission"], sample)
    if said:
        print(f"ensemble: {said}")
    write_atomic(folder / "submission.csv", text)
    return len(cases)


def test_cases(dataset_dir: Path, meta: dict, test: dict) -> dict:
    """{case: its slice ids in order} of a volume dataset's cases whose every slice is among the test images; {}
    for images."""
    if "volumes" not in meta:
        return {}
    return volume_scores.case_slices(load_index(dataset_dir), test)


if __name__ == "__main__":
    main()
