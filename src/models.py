"""Model factory: any smp architecture and encoder by name, pretrained weights from the hub, its cache or a file."""
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

import torch

from src.portable.deep_supervision import LEVELS
from src.portable.models import DEEP_SUPERVISED, ModelError, build_model, canonical_arch


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
    """smp.create_model by name (src/portable/models.py); weights: 'imagenet', 'none' or a path to a state dict."""
    pretrained = None
    if weights == "imagenet":
        pretrained = True if encoder.startswith("tu-") else "imagenet"  # timm picks its default pretrained tag

    def build():
        return build_model(arch, encoder, in_channels, classes, decoder_channels, pretrained)

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
