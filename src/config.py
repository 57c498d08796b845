"""The one configuration shape shared by train.py, infer.py and ensemble.py.

train.py saves a run's full Config as runs/<dataset>/<arch>-<encoder>/fold<k>/config.json; later stages read it back.
"""
import argparse
import json
import shlex
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from src.portable.images import as_size, sides, size_text

# The --select-on rules' own learning rate and schedule, used where --lr or --scheduler is not given: the fixed
# schedule is the one of the project's real-data runs (docs/results.md); fold keeps the settings it always had.
RULE_DEFAULTS = {"final": {"lr": 1e-3, "scheduler": "cosine"}, "inner": {"lr": 3e-4, "scheduler": "plateau"},
                 "fold": {"lr": 3e-4, "scheduler": "plateau"}}
LOSSES = ["auto", "dice_bce", "dice_ce", "lovasz"]  # src/losses.py builds them; auto: dice_bce or dice_ce by the task


def learning_rate(text: str):
    """--lr: a number, or auto (a range test on the run's training images sets it, src/lr_find.py)."""
    if text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a number (1e-3) or auto") from None


def working_size(text: str):
    """--size: N (a square) or HxW (height x width), as images.as_size keeps it."""
    try:
        return as_size(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def overlap_share(text: str) -> float:
    """--overlap: the share of a window its neighbour covers, in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is outside [0, 1): give the share of a window its neighbour "
                                         f"covers, e.g. 0.5")
    return value


def positive(text: str) -> int:
    """A count of at least 1 (--sw-batch-size)."""
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number of at least 1")
    return int(text)


def knob(default, help, **kwargs):
    return field(default=default, metadata={"help": help, **kwargs})


def run_name(arch: str, encoder: str, context: int = 1) -> str:
    """A run's folder name: <arch>-<encoder>, and -c<K> for slices seen with K-slice context (2.5D), so that one
    study's runs of several contexts sit side by side."""
    return f"{arch}-{encoder}" + (f"-c{context}" if context > 1 else "")


def name_parts(name: str) -> tuple:
    """(arch, encoder, context) of a run's folder name (run_name's inverse)."""
    arch, _, rest = name.partition("-")
    encoder, _, context = rest.rpartition("-c")
    if encoder and context.isdigit():
        return arch, encoder, int(context)
    return arch, rest, 1


@dataclass
class Config:
    # data
    dataset: str = knob("demo", "dataset name under data/ (prepared with python -m src.prepare)")
    fold: int = knob(0, "the fold held out for validation")
    size: int | tuple = knob(256, "working size in pixels: N (a square) or HxW (height x width, both multiples of the "
                                  "encoder's stride: a 256 x 1600 strip keeps its aspect as 256x1600); read from "
                                  "data/<dataset>/cache/<size> (built if missing)", parse=working_size)
    patch: int = knob(0, "model input side in pixels, at most --size's shorter side: training draws random square "
                         "patches of this side from the --size images, validation and prediction slide a window of "
                         "it over them (MONAI, Gaussian weights); 0 or a square --size: the whole image, as without it")
    foreground_patches: float = knob(0.33, "--patch: the share of patches drawn around a foreground pixel (albumentations' "
                                           "CropNonEmptyMaskIfExists), the rest anywhere (nnU-Net's 1/3); a volume "
                                           "dataset's slices: the least share drawn that shows foreground")
    patches_per_image: int = knob(1, "--patch: patches drawn from each training image an epoch")
    overlap: float = knob(0.5, "--patch: sliding-window overlap of neighbouring windows, in [0, 1); changes predictions, "
                               "not weights")
    sw_batch_size: int = knob(16, "--patch: windows per forward pass of the sliding window, which bounds its memory; "
                                  "changes nothing but speed and memory")
    aug: str = knob("medium", "albumentations preset", choices=["none", "light", "medium", "heavy"])
    context: int = knob(1, "volumes: an odd number of neighbouring slices of the case stacked as input channels "
                           "(2.5D: 3 is the slice and one on each side; edge slices repeated); 1: the slice alone (2D)")
    # model
    arch: str = knob("unet", "any segmentation-models-pytorch architecture: unet, unetpp, fpn, deeplabv3plus, ...")
    encoder: str = knob("resnet34", "any smp encoder, or a timm one as tu-<name>")
    encoder_weights: str = knob("imagenet", "imagenet (download or Hugging Face cache), none, or PATH to a state dict")
    decoder_channels: str = knob("", "decoder widths: one per stage for unet/unetpp/manet (64,32,16,16,8), one number "
                                     "for deeplabv3(plus)/pan/upernet", shown="smp's, 256,128,64,32,16 for unet")
    ds_weights: str = knob("", "unetpp_ds: each head's loss weight, L1 to L4 (e.g. 0.25,0.5,0.75,1)",
                           shown="equal: the heads' mean")
    ema: float = knob(0.0, "an exponential moving average of the weights (timm's ModelEmaV3) with this largest decay, "
                           "warmed up by timm's rule (1 - (1 + step)^-2/3), validated, saved, scored and exported in "
                           "place of the trained weights; 0: none", shown="0: none")
    # optimisation
    epochs: int = knob(40, "maximum number of epochs")
    batch_size: int = knob(16, "images per step per process")
    grad_accum: int = knob(1, "gradient accumulation steps")
    select_on: str = knob("final", "which weights are scored, and what may read validation scores: final (a fixed "
                                   "schedule, the final weights; nothing reads the scored fold), inner (best.pt, "
                                   "plateau and early stopping read an inner split of the training folds), fold (they "
                                   "read the scored fold itself: optimistic)", choices=list(RULE_DEFAULTS))
    lr: float = knob(None, "decoder/head learning rate (RAdam inside Lookahead), or auto: a range test on the run's "
                           "training images chooses it (src/lr_find.py; cached per dataset, fold, arch, encoder, size "
                           "and batch)", parse=learning_rate,
                     shown="the plan's (data/<dataset>/plan.json), else 1e-3 under --select-on final, 3e-4 under "
                           "inner; 3e-4 under fold whatever the plan")
    encoder_lr_mult: float = knob(None, "encoder learning rate = lr * this",
                                  shown="0.1 with pretrained weights, 1 with --encoder-weights none")
    weight_decay: float = knob(1e-4, "decoder/head weight decay")
    encoder_weight_decay: float = knob(1e-5, "encoder weight decay")
    lookahead_k: int = knob(6, "Lookahead: fast steps per slow update")
    lookahead_alpha: float = knob(0.5, "Lookahead: slow weights step size")
    scheduler: str = knob(None, "learning-rate schedule, stepped per epoch", choices=["plateau", "cosine"],
                          shown="cosine under --select-on final, plateau under inner and fold")
    warmup_epochs: int = knob(1, "cosine: linear warm-up epochs")
    plateau_patience: int = knob(3, "plateau: epochs without improvement before lr is halved")
    patience: int = knob(10, "early stopping (--select-on inner, fold): epochs without improvement of validation Dice")
    # loss
    loss: str = knob("auto", "dice_bce (binary), dice_ce (multiclass: cross-entropy, or focal with --focal), or "
                             "lovasz: smp's LovaszLoss per image alone (the UNet++ reference's Lovász hinge)",
                     choices=LOSSES, shown="auto: dice_bce for binary masks, dice_ce for multiclass")
    dice_weight: float = knob(1.0, "weight of the Dice loss")
    ce_weight: float = knob(0.8, "weight of BCE (binary) or cross-entropy/focal (multiclass)")
    focal: bool = knob(False, "multiclass: focal loss instead of cross-entropy")
    class_weights: str = knob("auto", "multiclass cross-entropy weights (multilabel: each channel's BCE): auto "
                                      "(inverse sqrt frequency), none, or a list")
    # run
    precision: str = knob("auto", "mixed precision: auto (bf16/fp16 on GPU, none on CPU)", choices=["auto", "no", "fp16", "bf16"])
    compile: bool = knob(False, "torch.compile the model")
    workers: int = knob(-1, "data loader workers per process (-1: from the CPU count)")
    seed: int = knob(42, "seed for everything")
    save_minutes: float = knob(2.0, "full training state (for --resume) saved once this many minutes have passed since "
                                    "the last save, after the final epoch, and on SIGTERM/SIGINT; 0: after every epoch")
    tracker: str = knob("wandb", "experiment tracker (offline unless logged in)", choices=["wandb", "none"])
    tags: str = knob("", "W&B tags, comma-separated (study.py adds the study's name)")
    data_dir: str = knob("data", "where prepared datasets live")
    folds_dir: str = knob("folds", "where fold files live")
    runs_dir: str = knob("runs", "where training runs are written")

    def __post_init__(self):
        self.size = as_size(self.size)  # N or (H, W), however given (JSON gives a rectangle back as a list)
        if self.encoder_lr_mult is None:  # a lower encoder rate protects pretrained features; from scratch there are none
            self.encoder_lr_mult = 1.0 if self.encoder_weights == "none" else 0.1
        for name, default in RULE_DEFAULTS[self.select_on].items():  # saved resolved, so --resume compares values
            if getattr(self, name) is None:
                setattr(self, name, default)
        if self.select_on == "final" and self.scheduler == "plateau":
            raise ValueError("--scheduler plateau reads validation scores, which --select-on final keeps from "
                             "training; drop --scheduler or choose --select-on inner or fold")

    @property
    def selected_checkpoint(self) -> str:
        """The weights this run is scored with: the final ones under a fixed schedule, else the best epoch's."""
        return "last" if self.select_on == "final" else "best"

    @property
    def tiles(self) -> bool:
        """Patches in training and a sliding window in prediction: a --patch below a side of --size."""
        return 0 < self.patch < max(sides(self.size))

    @property
    def run_name(self) -> str:
        return run_name(self.arch, self.encoder, self.context)

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.dataset / self.run_name / f"fold{self.fold}"

    @property
    def dataset_dir(self) -> Path:
        return Path(self.data_dir) / self.dataset

    def save(self, path: Path, **extra) -> None:
        Path(path).write_text(json.dumps({**asdict(self), **extra}, indent=2) + "\n")


RECORDED = ("meta", "folds")  # what train.py saves beside the settings: the dataset's meta and the fold file's record


class OldRunFormat(ValueError):
    """A config.json that lacks a setting or record this train.py saves: its run is trained again, never read with
    a default put in the gap."""


def load_run_config(run_dir: Path) -> tuple:
    """(Config, dataset meta) saved by train.py in run_dir/config.json (also infer.py's copy in preds/); one written
    by an older train.py, which lacks a setting, is refused (OldRunFormat) with the command that trains it again."""
    path = Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: not a training run folder")
    saved = json.loads(path.read_text())
    missing = [name for name in (*(f.name for f in fields(Config)), *RECORDED) if name not in saved]
    if missing:
        raise OldRunFormat(f"{path} was written by an older train.py (it has no {', '.join(missing)}); train the run "
                           f"again: `{train_command(saved)}`")
    return Config(**{f.name: saved[f.name] for f in fields(Config)}), saved["meta"]


def train_command(saved: dict) -> str:
    """The command that trains a run again with the settings its config.json records (each one it has that is not
    the default), replacing it."""
    flags = []
    for f in fields(Config):
        value = saved.get(f.name, f.default)
        if value is not None and value != f.default:
            flag = "--" + f.name.replace("_", "-")
            flags += [flag] if f.type is bool else [flag, flag_value(f.name, value)]
    return shlex.join(["accelerate", "launch", "train.py", *flags, "--overwrite"])


def flag_value(name: str, value) -> str:
    """A setting's value as its flag takes it: --size 256x1600, not a list."""
    return size_text(as_size(value)) if name == "size" else str(value)


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    for f in fields(Config):
        flag = "--" + f.name.replace("_", "-")
        if f.type is bool:
            parser.add_argument(flag, action="store_true", help=f.metadata["help"])
        else:
            parser.add_argument(flag, type=f.metadata.get("parse", f.type), default=f.default,
                                choices=f.metadata.get("choices"),
                                help=f"{f.metadata['help']} (default: {f.metadata.get('shown', f.default)})")


def config_from_args(args: argparse.Namespace) -> Config:
    return Config(**{f.name: getattr(args, f.name) for f in fields(Config)})


def patch_problem(cfg: Config, stride: int | None = None) -> str | None:
    """What is wrong with the run's --patch, --overlap or window settings (one sentence with the fix), or None.
    stride: the encoder's (src/sliding.py's encoder_stride), which a patch must be a multiple of; None leaves it to
    train.py (study.py plans without torch)."""
    if cfg.patch < 0 or cfg.patch > min(sides(cfg.size)):
        bound = f"--size {cfg.size}" if isinstance(cfg.size, int) else f"--size {size_text(cfg.size)}'s shorter side"
        return (f"--patch {cfg.patch} is not between 0 and {bound}: a patch is cut from the --size image; raise --size "
                f"or lower --patch")
    if not 0 <= cfg.overlap < 1:
        return f"--overlap {cfg.overlap:g} is outside [0, 1): give the share of a window its neighbour covers, e.g. 0.5"
    if cfg.sw_batch_size < 1:
        return f"--sw-batch-size {cfg.sw_batch_size}: give at least 1 window per forward pass"
    if not 0 <= cfg.foreground_patches <= 1:
        return f"--foreground-patches {cfg.foreground_patches:g} is a share of the patches: give it in [0, 1]"
    if not cfg.tiles:
        slices = (cfg.dataset_dir / "volumes.json").exists()  # a volume dataset's slices: drawn by the same share
        if cfg.patches_per_image != 1 or (cfg.foreground_patches != 0.33 and not slices):
            return ("--patches-per-image and --foreground-patches choose patches, which only a --patch below --size "
                    "draws (--foreground-patches also a volume dataset's slices); drop them or give --patch")
        return None
    if stride and cfg.patch % stride:
        below, above = cfg.patch // stride * stride, (cfg.patch // stride + 1) * stride
        return (f"--patch {cfg.patch} is not a multiple of {stride}, the factor encoder {cfg.encoder} reduces its input "
                f"by; use {f'{below} or ' if below else ''}{above}")
    if cfg.patches_per_image < 1:
        return f"--patches-per-image {cfg.patches_per_image}: give at least 1"
    return None


def settled_lr(cfg: Config, run_dir: Path) -> tuple:
    """(cfg, the range test's record or None): --lr auto asked of a run that ran its range test gets the rate it
    chose, so that a resume continues at it and the study's stale check compares it."""
    path = Path(run_dir) / "config.json"
    saved = json.loads(path.read_text()) if cfg.lr == "auto" and path.exists() else {}
    return (replace(cfg, lr=saved["lr"]), saved["lr_find"]) if saved.get("lr_find") else (cfg, None)
