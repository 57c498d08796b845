"""Model factory: any smp architecture and encoder by name, pretrained weights from the hub, its cache or a file."""
import urllib.error
import urllib.request
from pathlib import Path

import torch

from src.portable.deep_supervision import LEVELS
from src.portable.images import sides, size_text
from src.portable.models import DEEP_SUPERVISED, ModelError, build_model, canonical_arch
from src.sliding import encoder_stride


def _hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the hub answers an HTTP request, through the proxy the environment names (HTTPS_PROXY) if any."""
    import huggingface_hub.constants as hub
    try:
        urllib.request.build_opener().open(urllib.request.Request(hub.ENDPOINT, method="HEAD"), timeout=timeout)
    except urllib.error.HTTPError:  # an answer, whatever it says
        return True
    except OSError:  # no route, no name, a proxy that would not connect, a timeout
        return False
    return True


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


def read_state(path: str) -> dict:
    """A state dict from a .safetensors file or a torch one (.pt, .pth, .bin), unwrapped from a checkpoint's
    state_dict or model entry, a whole smp model's encoder. prefix or DataParallel's module. prefix."""
    if not Path(path).is_file():
        raise ModelError(f"--encoder-weights {path}: no such file; use imagenet, none, or a path to a state dict")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        state = load_file(path)
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
    state = next((state[k] for k in ("state_dict", "model") if isinstance(state.get(k), dict)), state)
    for prefix in ("module.", "encoder."):
        if any(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
    return state


def refuse(path: str, encoder: str, why: str) -> ModelError:
    return ModelError(f"{path}: does not fit encoder '{encoder}' ({why}); give the weights of that very model")


def adapted_first_conv(weight: torch.Tensor, channels: int) -> torch.Tensor:
    """A first convolution's weight for another input channel count, as smp adapts the hub's (its own rule: summed
    to one channel, else repeated and scaled)."""
    from segmentation_models_pytorch.encoders._utils import patch_first_conv
    conv = torch.nn.Conv2d(weight.shape[1], weight.shape[0], tuple(weight.shape[2:]), bias=False)
    conv.weight.data.copy_(weight)
    patch_first_conv(conv, channels, default_in_channels=weight.shape[1], pretrained=True)
    return conv.weight.detach()


def load_own_keys(encoder: torch.nn.Module, state: dict, path: str, name: str) -> list:
    """Load a state dict whose keys are the encoder's own (smp's saved form, or a torchvision model's for smp's
    encoders of it), every key and shape checked here, since smp's encoders override load_state_dict and hide what
    did not fit. Keys under a module the encoder does not hold (its classifier) are dropped: returned. The first
    convolution is adapted to the encoder's input channels."""
    own, modules = encoder.state_dict(), dict(encoder.named_children())
    dropped = [k for k in state if k not in own and k.split(".")[0] not in modules]
    state = {k: v for k, v in state.items() if k not in dropped}
    unexpected = [k for k in state if k not in own]
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        raise refuse(path, name, f"key {unexpected[0]} is none of its own" if unexpected else
                     f"it lacks {missing[0]} and {len(missing) - 1} more of the encoder's keys")
    first = next(k for k, v in own.items() if v.ndim == 4)
    if state[first].shape[1] != own[first].shape[1] and state[first].shape[2:] == own[first].shape[2:]:
        state[first] = adapted_first_conv(state[first], own[first].shape[1])
    wrong = [k for k in state if state[k].shape != own[k].shape]
    if wrong:
        raise refuse(path, name, f"{len(wrong)} tensors of another shape, e.g. {wrong[0]}: "
                                 f"{tuple(state[wrong[0]].shape)} in the file, {tuple(own[wrong[0]].shape)} here")
    torch.nn.Module.load_state_dict(encoder, {**own, **state})  # strict; a BatchNorm's missing counter stays 0
    return dropped


def timm_checkpoint_keys(state: dict, encoder: torch.nn.Module, path: str, name: str) -> list:
    """The keys of a timm model's checkpoint (head included, as timm and the hub ship it) that the encoder's
    features-only model does not use (dropped: returned), every other key checked against the timm model: timm loads
    a file into a features-only model without saying what did not fit."""
    import timm
    with torch.device("meta"):
        full = timm.create_model(name[3:])
    expected, children = full.state_dict(), {n for n, _ in full.named_children()}
    used = {n if n in children else n.rsplit("_", 1)[0] for n, _ in encoder.model.named_children()}  # stages_0
    dropped = [k for k in state if k.split(".")[0] not in used]
    unexpected = [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state and k.split(".")[0] in used
               and not k.endswith("num_batches_tracked")]
    if unexpected or missing:
        raise refuse(path, name, f"key {unexpected[0]} is none of timm's {name[3:]}" if unexpected else
                     f"it lacks {missing[0]} and {len(missing) - 1} more of timm's {name[3:]} keys")
    return dropped


def create_model(arch: str, encoder: str, in_channels: int, classes: int, weights: str = "none",
                 decoder_channels: str = "") -> torch.nn.Module:
    """smp.create_model by name (src/portable/models.py); weights: 'imagenet', 'none' or a file in any form
    published: the encoder's own state dict (what smp saves), a torchvision model's (smp's encoders of torchvision
    models), or a timm model's checkpoint with its head (tu- encoders; timm loads it, adapting the first
    convolution). Keys the encoder's feature extractor does not use are dropped and said in one line."""
    pretrained = None
    if weights == "imagenet":
        pretrained = True if encoder.startswith("tu-") else "imagenet"  # timm picks its default pretrained tag

    def build():
        return build_model(arch, encoder, in_channels, classes, decoder_channels, pretrained)

    model = _with_pretrained_weights(build, encoder) if pretrained else build()
    if weights in ("imagenet", "none"):
        return model
    state = read_state(weights)
    if encoder.startswith("tu-") and not set(state) & set(model.encoder.state_dict()):  # a timm model's checkpoint
        dropped = timm_checkpoint_keys(state, model.encoder, weights, encoder)
        model = build_model(arch, encoder, in_channels, classes, decoder_channels, True,
                            pretrained_cfg_overlay={"file": str(weights)}, num_classes=0)
    else:
        dropped = load_own_keys(model.encoder, state, weights, encoder)
    if dropped:
        print(f"encoder weights {weights}: dropped {len(dropped)} keys the encoder does not use: "
              f"{', '.join(dropped[:4])}" + (", ..." if len(dropped) > 4 else ""))
    return model


def size_problem(arch: str, encoder: str, size) -> str | None:
    """Why arch on encoder cannot take inputs of the working size, N x N or H x W (one sentence with the fix), or
    None: a rectangle's sides must both be multiples of the encoder's stride; a square's too, except for Unet, which
    smp pads."""
    import segmentation_models_pytorch as smp
    name = canonical_arch(arch)
    smp_class = smp.MODEL_ARCHITECTURES_MAPPING["unetplusplus" if name in ("unetpp", DEEP_SUPERVISED) else name]
    stride, shape = encoder_stride(encoder), sides(size)
    if (isinstance(size, int) and not smp_class.requires_divisible_input_shape) or all(s % stride == 0 for s in shape):
        return None
    if isinstance(size, int):
        below, above = size // stride * stride, (size // stride + 1) * stride
        return (f"--size {size}: {name} takes sides that are multiples of {stride}, the factor encoder {encoder} "
                f"reduces its input by (smp pads other sides for unet alone); use {f'{below} or ' if below else ''}"
                f"{above}")
    fixed = "x".join(str(max(stride, round(side / stride) * stride)) for side in shape)
    return (f"--size {size_text(size)}: a rectangle's sides must both be multiples of {stride}, the factor encoder "
            f"{encoder} reduces its input by; use {fixed}")


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
