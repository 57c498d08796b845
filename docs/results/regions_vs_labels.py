"""nnU-Net's regions against plain labels, case by case in 3D: a model trained on the regions (a multilabel dataset
prepared with --regions, or nnU-Net v2's dataset.json regions) against one trained on the label map, whose argmax
is turned into the same regions (masks.regions_mask). Both read raw (threshold 0.5 or argmax, no post-processing),
over the cases both predicted, against the regions dataset's masks; Dice per region and per case (the mean over
regions), HD95 in mm, and the paired difference with a bootstrap 95% interval over cases and a Wilcoxon p.

  python docs/results/regions_vs_labels.py hippo preds/hippo/unet-resnet34/tta-flip \
      hippo-regions preds/hippo-regions/unet-resnet34/tta-flip ["whole=1,2 posterior=2"]

The regions come from the regions dataset's meta.json (prepare records them), or from the last argument.
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from src.canonical import load_index, load_meta  # noqa: E402
from src.masks import parse_regions, regions_mask  # noqa: E402
from src.portable import postprocess  # noqa: E402
from src.portable.images import read_image  # noqa: E402
from src.portable.maps import resize_prob  # noqa: E402
from src.runs import load_pred, prediction_files  # noqa: E402
from src.stats import paired_comparison  # noqa: E402
from src.volume_scores import case_slices, read_records, volume_table  # noqa: E402


def main(labels_dataset: str, labels_folder: str, regions_dataset: str, regions_folder: str, regions: str = ""):
    data = Path("data") / regions_dataset
    meta, index = load_meta(data), load_index(data)
    definition = list((meta.get("regions") or parse_regions(regions)).values())
    labels_files = prediction_files(Path(labels_folder) / "oof")
    regions_files = prediction_files(Path(regions_folder) / "oof")
    cases = case_slices(index, set(labels_files) & set(regions_files))
    plain = postprocess.PLAIN[load_meta(Path("data") / labels_dataset)["task"]]  # threshold 0.5 or argmax

    def from_labels(image_id):
        return regions_mask(postprocess.apply(resize_prob(*load_pred(labels_files[image_id])), plain), definition)

    def from_regions(image_id):
        return postprocess.apply(resize_prob(*load_pred(regions_files[image_id])), postprocess.PLAIN["multilabel"])

    def truth(image_id):
        return read_image(data / "masks" / f"{image_id}.png")

    tables = {}
    for name, mask_of in ((f"{labels_folder} (labels, as regions)", from_labels), (regions_folder, from_regions)):
        tables[name] = volume_table(mask_of, truth, cases, read_records(data), meta["volumes"]["axis"],
                                    meta["classes"], task="multilabel")
        table = tables[name]
        per_region = ", ".join(f"{r} {rows['dice'].mean():.4f} (HD95 {rows['hd95_mm'].mean():.2f} mm)"
                               for r, rows in table.groupby("class", sort=False))
        print(f"{name}: {table['case'].nunique()} cases, Dice {table.groupby('case')['dice'].mean().mean():.4f} "
              f"per case; {per_region}")
    (first, a), (second, b) = tables.items()
    for region in [None, *meta["classes"][1:]]:
        pick = (lambda t: t) if region is None else (lambda t: t[t["class"] == region])
        x, y = (pick(t).groupby("case")["dice"].mean() for t in (a, b))
        c = paired_comparison(x.to_numpy(), y.loc[x.index].to_numpy())
        print(f"regions - labels, {region or 'per case'}: {c['mean_difference']:+.4f} Dice, 95% CI "
              f"[{c['ci95'][0]:+.4f}, {c['ci95'][1]:+.4f}] over {c['units']} cases, Wilcoxon p = {c['wilcoxon_p']:.2g}")


if __name__ == "__main__":
    main(*sys.argv[1:])
