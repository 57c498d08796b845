"""Model factory: any smp architecture and encoder by name, pretrained weights from the hub, its cache or a file."""
import functools
import inspect
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import segmentation_models_pytorch as smp
import timm
import torch

from src.deep_supervision import LEVELS, UnetPlusPlusDS

# Our short names for smp's architectures; every other smp name is accepted as it is.
ARCH_ALIASES = {"unetpp": "unetplusplus", "unet++": "unetplusplus"}
DEEP_SUPERVISED = "unetpp_ds"  # Unet++ with a head per top-row node (src/deep_supervision.py); not an smp name
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


class ModelError(ValueError):
    """A model that cannot be built as asked; the message says what to do."""


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


def _hub_reachable(timeout: float = 3.0) -> bool:
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _with_pretrained_weights(build, encoder: str):
    """Build with hub weights; offline, use only the Hugging Face cache instead of retrying for a minute."""
    import huggingface_hub.constants as hub

    offline_before = hub.HF_HUB_OFFLINE
    if not _hub_reachable():
        hub.HF_HUB_OFFLINE = True
    try:
        return build()
    except OSError as error:  # huggingface_hub's LocalEntryNotFoundError is an OSError
        raise ModelError(f"cannot get imagenet weights for encoder '{encoder}': no internet and not in the Hugging Face "
                         f"cache ({hub.HF_HUB_CACHE}); run once with internet, or pass --encoder-weights PATH "
                         "(a local state dict) or --encoder-weights none") from error
    finally:
        hub.HF_HUB_OFFLINE = offline_before


def load_encoder_weights(model: torch.nn.Module, path: str) -> None:
    """A local encoder state dict (.pt/.pth/.safetensors), or a whole-model one whose keys start with 'encoder.'."""
    if not Path(path).is_file():
        raise ModelError(f"--encoder-weights {path}: no such file; use imagenet, none, or a path to a state dict")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = state.get("state_dict", state)
    if any(k.startswith("encoder.") for k in state):
        state = {k[len("encoder."):]: v for k, v in state.items() if k.startswith("encoder.")}
    try:
        missing, unexpected = model.encoder.load_state_dict(state, strict=False)
    except RuntimeError as error:  # tensors of another shape: torch's message takes a line for each
        mismatches = [line.strip() for line in str(error).splitlines() if "size mismatch" in line]
        raise ModelError(f"{path}: does not fit encoder ({len(mismatches)} tensors of another shape, e.g. "
                         f"{mismatches[0]}); it holds the weights of another encoder") from None
    if missing or unexpected:
        raise ModelError(f"{path}: does not fit encoder (missing {len(missing)} keys e.g. {missing[:2]}, "
                         f"unexpected {len(unexpected)} e.g. {unexpected[:2]})")


def create_model(arch: str, encoder: str, in_channels: int, classes: int, weights: str = "none",
                 decoder_channels: str = "") -> torch.nn.Module:
    """smp.create_model by name (unetpp_ds: src/deep_supervision.py); weights: 'imagenet', 'none' or a path to a
    state dict."""
    name = canonical_arch(arch)
    smp_arch = "unetplusplus" if name == DEEP_SUPERVISED else ARCH_ALIASES.get(name, name)
    check_encoder(encoder)
    kwargs = _decoder_channels(smp_arch, decoder_channels) if decoder_channels else {}
    pretrained = None
    if weights == "imagenet":
        pretrained = True if encoder.startswith("tu-") else "imagenet"  # timm picks its default pretrained tag

    def build():
        settings = dict(encoder_name=encoder, encoder_weights=pretrained, in_channels=in_channels, classes=classes)
        try:
            if name == DEEP_SUPERVISED:
                return UnetPlusPlusDS(**settings, **kwargs)
            return smp.create_model(smp_arch, **settings, **kwargs)
        except ValueError as error:  # smp's refusals, such as Unet++ on the mit_b* encoders
            raise ModelError(f"{name} cannot be built on encoder '{encoder}': {error}") from error

    model = _with_pretrained_weights(build, encoder) if pretrained else build()
    if weights not in ("imagenet", "none"):
        load_encoder_weights(model, weights)
    return model


def head_weights(spec: str, arch: str) -> list | None:
    """--ds-weights as one number per unetpp_ds head, L1 first; None (the heads' plain mean) when not given."""
    if not spec:
        return None
    if canonical_arch(arch) != DEEP_SUPERVISED:
        raise ModelError(f"--ds-weights {spec}: only {DEEP_SUPERVISED} has several heads to weight; drop it")
    try:
        weights = [float(w) for w in spec.split(",")]
    except ValueError:
        weights = []
    if len(weights) != len(LEVELS) or min(weights) < 0 or sum(weights) <= 0:
        raise ModelError(f"--ds-weights {spec}: give {len(LEVELS)} non-negative numbers, one per head from "
                         f"{LEVELS[0]} to {LEVELS[-1]}, like 0.25,0.5,0.75,1")
    return weights


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
