"""Unet++ with deep supervision (Zhou et al. 2018, 2019) on smp's UnetPlusPlus, and its pruned levels L1..L4.

smp's decoder reverses the encoder's features (deepest first) and names its nodes x_{depth_idx}_{layer_idx}; its row
at stride 2 (x_3_3, x_2_3, x_1_3, x_0_3 for a 5-stage encoder) is the paper's top row X^{0,1} ... X^{0,4}. Each node
gets what smp gives x_0_3: a final upsampling block and a 3x3 head; x_0_3's are smp's own, so level L4 is smp's
forward. The nodes up to X^{0,j} form a Unet++ of depth j on the encoder's first j + 1 stages, so a pruned level is
built as smp's own decoder of that depth, on an encoder rebuilt at that depth.
"""
import copy
import math

import segmentation_models_pytorch as smp
import torch
from segmentation_models_pytorch.base import SegmentationHead, initialization
from segmentation_models_pytorch.decoders.unetplusplus.decoder import DecoderBlock, UnetPlusPlusDecoder
from segmentation_models_pytorch.encoders import get_encoder

LEVELS = ["L1", "L2", "L3", "L4"]  # the heads of a 5-stage encoder's Unet++, as src.models builds it


class UnetPlusPlusDS(smp.UnetPlusPlus):
    """smp's UnetPlusPlus plus a head on every top-row node. Training: forward returns every head's logits, L1
    first. Eval: smp's forward, the L4 head alone."""

    def __init__(self, encoder_name: str = "resnet34", encoder_depth: int = 5,
                 decoder_channels=(256, 128, 64, 32, 16), decoder_use_norm="batchnorm", decoder_attention_type=None,
                 decoder_interpolation: str = "nearest", in_channels: int = 3, classes: int = 1, **kwargs):
        super().__init__(encoder_name=encoder_name, encoder_depth=encoder_depth, decoder_channels=decoder_channels,
                         decoder_use_norm=decoder_use_norm, decoder_attention_type=decoder_attention_type,
                         decoder_interpolation=decoder_interpolation, in_channels=in_channels, classes=classes,
                         **kwargs)
        if 0 in self.encoder.out_channels[1:]:  # smp gives these encoders a 0-channel stride-2 feature map
            raise ValueError(f"encoder {encoder_name} has no stride-2 features, so smp's Unet++ top-row nodes below "
                             "the last are empty and cannot be supervised; use unetpp, or an encoder with stride-2 "
                             "features (resnet, efficientnet, mobilenet, ...)")
        self.block_args = {"use_norm": decoder_use_norm, "attention_type": decoder_attention_type,
                           "interpolation_mode": decoder_interpolation}
        self.encoder_args = {"name": encoder_name, "in_channels": in_channels, **kwargs}
        depth = self.decoder.depth
        self.top_row = [f"x_{d}_{depth - 1}" for d in reversed(range(depth))]  # X^{0,1} ... X^{0,depth}
        self.levels = [f"L{j}" for j in range(1, depth + 1)]
        width = decoder_channels[-1]
        self.deep_heads = torch.nn.ModuleList()
        for node in self.top_row[:-1]:
            block = DecoderBlock(self.decoder.blocks[node].out_channels, 0, width, **self.block_args)
            head = SegmentationHead(width, classes, kernel_size=3)
            initialization.initialize_decoder(block)
            initialization.initialize_head(head)
            self.deep_heads.append(torch.nn.ModuleDict({"block": block, "head": head}))

    def forward(self, x: torch.Tensor):
        return self.head_logits(x) if self.training else super().forward(x)

    def head_logits(self, x: torch.Tensor) -> list:
        """Every head's logits, L1 first; the top-row nodes are read from smp's decoder as it runs."""
        nodes = {}
        hooks = [self.decoder.blocks[node].register_forward_hook(
                 lambda module, inputs, output, node=node: nodes.__setitem__(node, output))
                 for node in self.top_row[:-1]]
        try:
            last = super().forward(x)
        finally:
            for hook in hooks:
                hook.remove()
        return [deep["head"](deep["block"](nodes[node])) for node, deep in zip(self.top_row, self.deep_heads)] + [last]


class HeadMean(torch.nn.Module):
    """The papers' accurate mode: the heads' probabilities averaged, returned as logits (log-odds for one class and
    for each of a multilabel model's sigmoids, log-probabilities for a softmax's classes) so that whatever reads
    logits reads it unchanged."""

    def __init__(self, model: UnetPlusPlusDS, task: str):
        super().__init__()
        self.model, self.sigmoids = model, task != "multiclass"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = torch.stack(self.model.head_logits(x)).float()
        if self.sigmoids:  # each channel: log(mean p) - log(mean (1 - p)), stable however sure the heads are
            log_sigmoid = torch.nn.functional.logsigmoid
            return torch.logsumexp(log_sigmoid(logits), 0) - torch.logsumexp(log_sigmoid(-logits), 0)
        return torch.logsumexp(logits.log_softmax(2), 0) - math.log(len(logits))


class PrunedUnetPlusPlus(torch.nn.Module):
    """The sub-network up to one top-row node: an encoder cut to the stages it needs, smp's Unet++ decoder of that
    depth, and the node's head. encoder_fallback: the encoder could not be cut and runs all its stages."""

    def __init__(self, encoder: torch.nn.Module, decoder: torch.nn.Module, head: torch.nn.Module,
                 encoder_fallback: bool):
        super().__init__()
        self.encoder, self.decoder, self.segmentation_head = encoder, decoder, head
        self.encoder_fallback = encoder_fallback

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.segmentation_head(self.decoder(self.encoder(x)))


class FirstFeatures(torch.nn.Module):
    """An encoder that cannot be cut: it runs in full and only its first features are passed on."""

    def __init__(self, encoder: torch.nn.Module, count: int):
        super().__init__()
        self.encoder, self.count = encoder, count

    def forward(self, x: torch.Tensor) -> list:
        return self.encoder(x)[:self.count]


def level_model(model: UnetPlusPlusDS, level: str, task: str) -> torch.nn.Module:
    """An eval-mode copy of the model that predicts at one level: 'L1' ... 'L4' (the sub-network up to that top-row
    node, running only what it needs; L4 is the full Unet++ without the other heads) or 'mean' (all heads, averaged
    as the task's probabilities: a sigmoid per channel, or multiclass's softmax)."""
    if level == "mean":
        return HeadMean(copy.deepcopy(model), task).eval()
    if level not in model.levels:
        raise ValueError(f"unknown level '{level}'; choose one of {', '.join(model.levels)}, mean")
    j = model.levels.index(level) + 1
    shift = len(model.levels) - j  # its nodes are x_{d}_{l} with d >= shift, renamed x_{d-shift}_{l-shift}
    features = j + 2  # the input and the encoder's first j + 1 stages
    if j == len(model.levels):
        final, head = model.decoder.blocks[f"x_0_{j}"], model.segmentation_head
    else:
        final, head = model.deep_heads[j - 1]["block"], model.deep_heads[j - 1]["head"]
    widths = [model.decoder.blocks[f"x_{shift}_{shift + l}"].out_channels for l in range(j)] + [final.out_channels]
    decoder = UnetPlusPlusDecoder(encoder_channels=model.encoder.out_channels[:features], decoder_channels=widths,
                                  n_blocks=j + 1, **model.block_args)
    blocks = {f"x_{d - shift}_{l - shift}": model.decoder.blocks[f"x_{d}_{l}"]
              for d in range(shift, len(model.levels)) for l in range(d, len(model.levels))}
    decoder.blocks.load_state_dict({**_prefixed(blocks), **_prefixed({f"x_0_{j}": final})})
    encoder, fallback = _cut_encoder(model, j + 1, features)
    device = next(model.parameters()).device
    return PrunedUnetPlusPlus(encoder, decoder, copy.deepcopy(head), fallback).to(device).eval()


def _prefixed(modules: dict) -> dict:
    return {f"{name}.{key}": value for name, module in modules.items() for key, value in module.state_dict().items()}


def _cut_encoder(model: UnetPlusPlusDS, depth: int, features: int) -> tuple:
    """(encoder, fallback): smp's encoder rebuilt at this depth with the model's weights (timm's feature extractors then
    build only the stages asked for; smp's own keep the rest unrun, and those are dropped; its sequential ones are
    cut after the last stage read), checked against the model's own on a probe image; an encoder that cannot be
    rebuilt so runs in full (the fallback)."""
    full = copy.deepcopy(model.encoder).eval()
    if depth == len(model.encoder.out_channels) - 1:
        return full, False
    probe = torch.rand(1, model.encoder_args["in_channels"], 32, 32, device=next(full.parameters()).device)
    ran_full, expected = _run(full, probe)
    try:
        encoder = get_encoder(**model.encoder_args, depth=depth).to(probe.device).eval()
        wanted = encoder.state_dict().keys()
        encoder.load_state_dict({k: v for k, v in full.state_dict().items() if k in wanted})
        _cut_stage_list(encoder, features)
        ran, _ = _run(encoder, probe)
        _drop_unrun(encoder, ran)
        with torch.no_grad():
            got = encoder(probe)
        if len(got) == features and len(ran) < len(ran_full) \
                and all(torch.allclose(a, b, atol=1e-5) for a, b in zip(got, expected)):
            return encoder, False
    except (RuntimeError, ValueError, KeyError, AttributeError, TypeError):
        pass
    return FirstFeatures(full, features), True


def _cut_stage_list(encoder: torch.nn.Module, features: int) -> None:
    """Cut the module list of smp's sequential encoders (mobilenet_v2, efficientnet-b*, vgg, inceptionv4: those with
    `_out_indexes`) after the stage of their last feature wanted: their forward breaks only after the next stage
    has run, and at depth 4 not at all, so the stage after would run (and be kept) though nothing reads it."""
    stage_ends = getattr(encoder, "_out_indexes", None)
    if stage_ends is None:
        return
    name = "features" if hasattr(encoder, "features") else "_blocks"  # efficientnet-b*'s list is _blocks
    before_loop = len(encoder._out_channels) - len(stage_ends)  # the input, and efficientnet's stem
    setattr(encoder, name, getattr(encoder, name)[:stage_ends[features - before_loop - 1] + 1])


def _run(module: torch.nn.Module, x: torch.Tensor) -> tuple:
    """(the submodules, itself included, that the module's forward calls on x; its output)."""
    ran = set()
    hooks = [m.register_forward_pre_hook(lambda m, args: ran.add(m)) for m in module.modules()]
    try:
        with torch.no_grad():
            output = module(x)
    finally:
        for hook in hooks:
            hook.remove()
    return ran, output


def _drop_unrun(encoder: torch.nn.Module, ran: set) -> None:
    """Replace the submodules a forward never reaches with nn.Identity: smp's own encoders keep every stage at a
    lower depth and skip the deeper ones in forward, so they would still count (and hold) their parameters."""
    for name, child in encoder.named_children():
        if ran.isdisjoint(child.modules()):
            setattr(encoder, name, torch.nn.Identity())
        else:
            _drop_unrun(child, ran)


def level_sizes(model: UnetPlusPlusDS, task: str, size: int = 32) -> list:
    """Per level: parameters, modules its forward runs on one size x size image, and whether its encoder runs in
    full for want of a cut."""
    probe = torch.rand(1, model.encoder_args["in_channels"], size, size, device=next(model.parameters()).device)
    rows = []
    for level in [*model.levels, "mean"]:
        pruned = level_model(model, level, task)
        rows.append({"level": level, "parameters": sum(p.numel() for p in pruned.parameters()),
                     "modules_run": len(_run(pruned, probe)[0]),
                     "encoder_fallback": getattr(pruned, "encoder_fallback", False)})
    return rows
