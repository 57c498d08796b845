"""Building a trained model from its names and a state dict, with no network, and the ImageNet normalisation it was
trained with. The project's src/models.py adds pretrained encoder weights and the training options."""
import functools
import inspect

import segmentation_models_pytorch as smp
import timm
import torch

from .deep_supervision import UnetPlusPlusDS, level_model

# Our short names for smp's architectures; every other smp name is accepted as it is.
ARCH_ALIASES = {"unetpp": "unetplusplus", "unet++": "unetplusplus"}
DEEP_SUPERVISED = "unetpp_ds"  # Unet++ with a head per top-row node (deep_supervision.py); not an smp name
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """A model that cannot be built as asked; the message says what to do."""


def outputs(task: str, classes: list) -> int:
    """The model's output channels: one foreground map (binary), one per class with background (multiclass,
    softmax), one per label without it (multilabel, a sigmoid each)."""
    return {"binary": 1, "multiclass": len(classes), "multilabel": len(classes) - 1}[task]


def canonical_arch(arch: str) -> str:
    """'unetplusplus', 'Unet++' and 'unetpp' are all 'unetpp'; run folders use this name."""
    name = arch.lower()
    if name == DEEP_SUPERVISED:
        return name
    smp_name = ARCH_ALIASES.get(name, name)
    if smp_name not in smp.MODEL_ARCHITECTURES_MAPPING:
        raise ModelError(f"unknown architecture '{arch}'; choose one of: unetpp, {DEEP_SUPERVISED}, "
                         + ", ".join(sorted(smp.MODEL_ARCHITECTURES_MAPPING)))
    return "unetpp" if smp_name == "unetplusplus" else smp_name


def check_encoder(encoder: str) -> None:
    if encoder.startswith("tu-"):
        if not timm.list_models(encoder[3:].split(".")[0]):
            raise ModelError(f"unknown timm encoder '{encoder}'; list them with python -c \"import timm; "
                             f"print(timm.list_models('*{encoder[3:8]}*'))\"")
    elif encoder not in smp.encoders.get_encoder_names():
        raise ModelError(f"unknown encoder '{encoder}'; list smp's with python -c \"import segmentation_models_pytorch "
                         "as smp; print(smp.encoders.get_encoder_names())\", or use any timm model as tu-<name>")


def build_model(arch: str, encoder: str, in_channels: int, classes: int, decoder_channels: str = "",
                pretrained=None, **encoder_kwargs) -> torch.nn.Module:
    """smp.create_model by name (unetpp_ds: deep_supervision.py); pretrained: smp's encoder_weights (None: random
    weights, which a state dict then replaces); encoder_kwargs: to timm.create_model, for tu- encoders."""
    name = canonical_arch(arch)
    smp_arch = "unetplusplus" if name == DEEP_SUPERVISED else ARCH_ALIASES.get(name, name)
    check_encoder(encoder)
    kwargs = {**(_decoder_channels(smp_arch, decoder_channels) if decoder_channels else {}), **encoder_kwargs}
    settings = dict(encoder_name=encoder, encoder_weights=pretrained, in_channels=in_channels, classes=classes)
    try:
        if name == DEEP_SUPERVISED:
            return UnetPlusPlusDS(**settings, **kwargs)
        return smp.create_model(smp_arch, **settings, **kwargs)
    except ValueError as error:  # smp's refusals, such as Unet++ on the mit_b* encoders
        raise ModelError(f"{name} cannot be built on encoder '{encoder}': {error}") from error


def ready(model: torch.nn.Module, state: dict, device) -> torch.nn.Module:
    """The model with its trained weights, in eval mode and channels-last on the device, as every prediction runs it."""
    model.load_state_dict(state)
    return model.to(device).eval().to(memory_format=torch.channels_last)


def at_level(model: torch.nn.Module, level: str | None, task: str) -> torch.nn.Module:
    """A unetpp_ds model's sub-network at a level (L1 ... L4, mean: its heads averaged as the task's probabilities),
    channels-last; any other model (level None) itself."""
    return model if level is None else level_model(model, level, task).to(memory_format=torch.channels_last)


def _decoder_channels(smp_arch: str, text: str) -> dict:
    """--decoder-channels in the form the architecture takes: one width per stage (unet, unetpp, manet) or one
    number (deeplabv3, deeplabv3plus, pan, upernet)."""
    parameter = inspect.signature(smp.MODEL_ARCHITECTURES_MAPPING[smp_arch]).parameters.get("decoder_channels")
    if parameter is None:
        raise ModelError(f"--decoder-channels {text}: {smp_arch} has no decoder width to set; drop it")
    default = parameter.default
    count = len(default) if isinstance(default, (list, tuple)) else 1
    widths = text.split(",")
    if len(widths) != count or not all(w.strip().isdigit() and int(w) > 0 for w in widths):
        raise ModelError(f"--decoder-channels {text}: {smp_arch} takes {count} positive whole number(s), like its "
                         f"default {','.join(map(str, default)) if count > 1 else default}")
    return {"decoder_channels": [int(w) for w in widths] if count > 1 else int(widths[0])}


@functools.cache
def _statistics(channels: int, device: torch.device) -> tuple:
    """ImageNet mean and std (their averages for grey images) as C x 1 x 1 tensors, made once per device."""
    mean = IMAGENET_MEAN if channels == 3 else [sum(IMAGENET_MEAN) / 3] * channels
    std = IMAGENET_STD if channels == 3 else [sum(IMAGENET_STD) / 3] * channels
    return (torch.tensor(mean, device=device)[:, None, None] * 255, torch.tensor(std, device=device)[:, None, None] * 255)


def normalize(images: torch.Tensor) -> torch.Tensor:
    """uint8 N x C x H x W on the device -> float normalised with ImageNet statistics, channels-last like the model."""
    mean, std = _statistics(images.shape[1], images.device)
    return ((images.float() - mean) / std).contiguous(memory_format=torch.channels_last)
