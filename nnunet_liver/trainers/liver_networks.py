"""Network factories: the Iterative Fusion Module (IFM, LIDIA) as the first layer of nnU-Net's U-Nets, and tiny plans.

The IFM replaces the network's first layer (the first conv-norm-nonlin of the encoder: ``encoder.stages[0]``'s first
conv for ``PlainConvUNet``, ``encoder.stem``'s conv for ``ResidualEncoderUNet``). It outputs that layer's channel
count, so everything after it -- the rest of the first stage, the deeper stages, the decoder and its deep
supervision switch (``network.decoder.deep_supervision``) -- is nnU-Net's network built from the plans, unchanged.

Phases are the input channels, in time order (NC, A, V, D or any subsequence; the trainer checks dataset.json).
Each phase ``p`` has its own block ``F_p`` (two 3D conv + InstanceNorm + LeakyReLU, 1 -> k -> C channels); the
fusion follows time order::

    h = F_first(x_first);   for each later phase p:   h = F_conv(concat(h, F_p(x_p)))

``F_conv`` is one shared conv block (2C -> C, kernel 1 by default: a channel mixer, cheap at full resolution).
A missing phase is skipped per sample; the first *present* phase starts the fusion. The module runs one group of
samples with the same present phases at a time (exact, as InstanceNorm is per sample), so a sample only pays for
its present phases, its output cannot depend on the other samples, and a missing phase's block gets no gradient
from it. Blocks that no sample of the batch used are tied into the output with a zero weight, so every parameter
is in the graph (nnU-Net's DDP runs without ``find_unused_parameters``). The forward is excluded from
``torch.compile`` (data-dependent control flow); the rest of the network compiles as usual.

Presence is read from the data (:func:`phase_presence`): a missing phase arrives as a constant channel
(possibly with nnU-Net's zero padding around it), i.e. a channel with at most two distinct values in a sample. No
real CT channel is like that except a patch of pure air, where every channel is absent and the module falls back to
treating all of them as present.

Papers: Huang et al., "LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative Fusion
and Asymmetric Contrastive Learning" (MICCAI).
"""
from __future__ import annotations

import copy
from typing import Optional, Sequence

import torch
from torch import nn

__all__ = ["phase_presence", "PhaseBlock", "IterativeFusionModule", "insert_ifm", "first_layer",
           "tiny_configuration", "TINY_FEATURES", "TINY_PATCH_SIZE"]

TINY_FEATURES = (4, 8, 16)
TINY_PATCH_SIZE = (16, 32, 32)


def phase_presence(x: torch.Tensor, rtol: float = 1e-5) -> torch.Tensor:
    """Which phases (channels) each sample has.

    Parameters
    ----------
    x : tensor (B, C, *spatial)
        Network input; channel = phase.
    rtol : float
        Tolerance relative to the channel's value range for "strictly between min and max".

    Returns
    -------
    tensor (B, C) bool
        True where the channel holds at least one value strictly between its minimum and maximum (a real image);
        False for a constant channel or a constant channel padded with another constant (a missing phase).
        A sample with no present channel gets all True (a pure-air patch: nothing to decide from).
    """
    flat = x.detach().flatten(2)
    lo = flat.amin(dim=2, keepdim=True)
    hi = flat.amax(dim=2, keepdim=True)
    tol = rtol * (hi - lo) + 1e-6 * (1.0 + torch.maximum(lo.abs(), hi.abs()))
    inner = (flat > lo + tol) & (flat < hi - tol)
    present = inner.any(dim=2)
    none = ~present.any(dim=1, keepdim=True)
    return present | none


class PhaseBlock(nn.Module):
    """Two conv -> InstanceNorm -> LeakyReLU blocks (``F_p`` of LIDIA, or ``F_conv`` with ``num_convs=1``)."""

    def __init__(self, conv_op, channels: Sequence[int], kernel_size, stride=1, norm_op=nn.InstanceNorm3d,
                 norm_op_kwargs: Optional[dict] = None, nonlin=nn.LeakyReLU, nonlin_kwargs: Optional[dict] = None,
                 conv_bias: bool = True):
        super().__init__()
        norm_op_kwargs = {"eps": 1e-5, "affine": True} if norm_op_kwargs is None else norm_op_kwargs
        nonlin_kwargs = {"inplace": True} if nonlin_kwargs is None else nonlin_kwargs
        ks = [kernel_size] * conv_op_dims(conv_op) if isinstance(kernel_size, int) else list(kernel_size)
        layers = []
        for i, (cin, cout) in enumerate(zip(channels[:-1], channels[1:])):
            layers += [conv_op(cin, cout, ks, stride if i == 0 else 1, [(k - 1) // 2 for k in ks], bias=conv_bias),
                       norm_op(cout, **norm_op_kwargs), nonlin(**nonlin_kwargs)]
        self.layers = nn.Sequential(*layers)

    def forward(self, x):
        return self.layers(x)


def conv_op_dims(conv_op) -> int:
    return {nn.Conv1d: 1, nn.Conv2d: 2, nn.Conv3d: 3}[conv_op]


class IterativeFusionModule(nn.Module):
    """LIDIA's iterative fusion module for 1..4 phases given as channels in time order.

    Parameters
    ----------
    num_phases : int
        Input channels (phases, time order).
    out_channels : int
        C, channels of every phase feature and of the fused output.
    conv_op, kernel_size, stride, norm_op, norm_op_kwargs, nonlin, nonlin_kwargs, conv_bias
        As nnU-Net's first layer (taken from it by :func:`insert_ifm`); ``stride`` is applied by each phase block.
    phase_channels : int, optional
        Channels of the phase blocks' first conv (default ``max(4, C // 8)``).
    fusion_kernel_size : int
        Kernel of ``F_conv`` (default 1).

    Input (B, num_phases, *spatial); output (B, C, *spatial / stride).
    """

    def __init__(self, num_phases: int, out_channels: int, conv_op=nn.Conv3d, kernel_size=3, stride=1,
                 norm_op=nn.InstanceNorm3d, norm_op_kwargs=None, nonlin=nn.LeakyReLU, nonlin_kwargs=None,
                 conv_bias: bool = True, phase_channels: Optional[int] = None, fusion_kernel_size: int = 1):
        super().__init__()
        if not 1 <= num_phases <= 4:
            raise ValueError(f"the IFM takes 1 to 4 phases (NC, A, V, D), got {num_phases}")
        k = phase_channels or max(4, out_channels // 8)
        common = dict(norm_op=norm_op, norm_op_kwargs=norm_op_kwargs, nonlin=nonlin, nonlin_kwargs=nonlin_kwargs,
                      conv_bias=conv_bias)
        self.num_phases = num_phases
        self.out_channels = out_channels
        self.phase_blocks = nn.ModuleList(
            PhaseBlock(conv_op, (1, k, out_channels), kernel_size, stride, **common) for _ in range(num_phases))
        self.fusion = PhaseBlock(conv_op, (2 * out_channels, out_channels), fusion_kernel_size, 1, **common)

    @torch.compiler.disable  # a data-dependent loop: run eagerly inside a compiled nnU-Net network
    def forward(self, x: torch.Tensor, presence: Optional[torch.Tensor] = None) -> torch.Tensor:
        if x.shape[1] != self.num_phases:
            raise ValueError(f"IFM built for {self.num_phases} phases got an input with {x.shape[1]} channels")
        present = phase_presence(x) if presence is None else presence.to(dtype=torch.bool)
        present = present.tolist()
        used = [False] * self.num_phases
        fusion_used = False
        # samples are grouped by their set of present phases; each group runs only its phases' blocks and fusions,
        # in time order (InstanceNorm is per sample, so grouping is exact and samples never mix)
        groups: dict = {}
        for b, row in enumerate(present):
            groups.setdefault(tuple(bool(v) for v in row), []).append(b)
        outs, order = [], []
        for pattern, idx in groups.items():
            xg = x if len(groups) == 1 else x[idx]
            h = None
            for p in range(self.num_phases):
                if not pattern[p]:
                    continue
                used[p] = True
                f = self.phase_blocks[p](xg[:, p:p + 1])
                if h is None:
                    h = f
                else:
                    h = self.fusion(torch.cat((h, f), dim=1))
                    fusion_used = True
            outs.append(h)
            order += idx
        if len(outs) == 1:
            out = outs[0]
        else:
            inverse = torch.empty(len(order), dtype=torch.long)
            inverse[torch.tensor(order)] = torch.arange(len(order))
            out = torch.cat(outs, dim=0)[inverse.to(x.device)]
        # blocks no sample used stay in the graph with a zero gradient: nnU-Net's DDP (-num_gpus) runs without
        # find_unused_parameters
        unused = [q for p, block in enumerate(self.phase_blocks) if not used[p] for q in block.parameters()]
        if not fusion_used and self.num_phases > 1:
            unused += list(self.fusion.parameters())
        if unused and torch.is_grad_enabled():
            out = out + 0.0 * sum(q.sum() for q in unused)
        return out


def first_layer(network: nn.Module):
    """The encoder's first conv-norm-nonlin layer of an nnU-Net network: ``(parent module, attribute, layer)``."""
    encoder = getattr(network, "encoder", None)
    if encoder is None:
        raise ValueError(f"{type(network).__name__} has no .encoder; the IFM needs nnU-Net's PlainConvUNet or "
                         "ResidualEncoderUNet")
    stacked = getattr(encoder, "stem", None)
    if stacked is None:
        stage0 = encoder.stages[0]
        stacked = stage0[-1] if isinstance(stage0, nn.Sequential) else stage0
    convs = getattr(stacked, "convs", None)
    if convs is None or not hasattr(convs[0], "conv"):
        raise ValueError(f"cannot find the first conv layer of {type(network).__name__}'s encoder")
    return convs, "0", convs[0]


def insert_ifm(network: nn.Module, num_phases: int, **ifm_kwargs) -> nn.Module:
    """Replace the first layer of an nnU-Net network by an :class:`IterativeFusionModule` (in place; returned).

    The IFM copies the layer's conv op, kernel, stride, norm and nonlinearity and outputs its channel count, so the
    rest of the network (and ``network.decoder.deep_supervision``) is untouched.
    """
    parent, attr, layer = first_layer(network)
    conv = layer.conv
    if conv.in_channels != num_phases:
        raise ValueError(f"network's first layer takes {conv.in_channels} channels, expected {num_phases} phases")
    norm = getattr(layer, "norm", None)
    nonlin = getattr(layer, "nonlin", None)
    ifm = IterativeFusionModule(
        num_phases, conv.out_channels, conv_op=type(conv), kernel_size=conv.kernel_size, stride=conv.stride,
        norm_op=type(norm) if norm is not None else nn.InstanceNorm3d,
        norm_op_kwargs={"eps": norm.eps, "affine": norm.affine} if norm is not None else None,
        nonlin=type(nonlin) if nonlin is not None else nn.LeakyReLU,
        nonlin_kwargs=_nonlin_kwargs(nonlin), conv_bias=conv.bias is not None, **ifm_kwargs)
    if hasattr(network, "initialize"):
        ifm.apply(network.initialize)
    ifm.to(next(layer.parameters()).device)
    setattr(parent, attr, ifm)
    return network


def _nonlin_kwargs(nonlin) -> Optional[dict]:
    if isinstance(nonlin, nn.LeakyReLU):
        return {"negative_slope": nonlin.negative_slope, "inplace": nonlin.inplace}
    return None if nonlin is None else {"inplace": getattr(nonlin, "inplace", False)}


def tiny_configuration(configuration_manager, features: Sequence[int] = TINY_FEATURES,
                       patch_size: Sequence[int] = TINY_PATCH_SIZE, transpose_forward: Sequence[int] = None,
                       batch_size: Optional[int] = None):
    """A copy of an nnU-Net ConfigurationManager with a tiny U-Net (``len(features)`` stages) for CPU tests.

    Idempotent (a tiny configuration stays as it is), pure (the predictor rebuilds the same network from the
    saved plans). The patch size is ``min(plan, patch_size)`` per axis, rounded down to a multiple of the
    network's total stride. Strides and kernels are the plan's first stages. ``patch_size`` is (z, y, x); give the
    plans' ``transpose_forward`` to have it in nnU-Net's (transposed) axis order. The batch size is ``batch_size``,
    or ``min(plan, 2)`` when None.
    """
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    cfg = copy.deepcopy(configuration_manager.configuration)
    arch = cfg["architecture"]["arch_kwargs"]
    n = len(features)
    if arch.get("n_stages") != n or list(arch["features_per_stage"]) != list(features):
        arch["n_stages"] = n
        arch["features_per_stage"] = list(features)
        arch["kernel_sizes"] = [list(k) for k in arch["kernel_sizes"][:n]]
        arch["strides"] = [list(s) for s in arch["strides"][:n]]
        for key in ("n_conv_per_stage", "n_blocks_per_stage"):
            if key in arch:
                arch[key] = [2] + [1] * (n - 1)
        if "n_conv_per_stage_decoder" in arch:
            arch["n_conv_per_stage_decoder"] = [1] * (n - 1)
    if transpose_forward is not None:
        patch_size = [patch_size[i] for i in transpose_forward]
    total = [1] * len(arch["strides"][0])
    for s in arch["strides"]:
        total = [t * int(si) for t, si in zip(total, s)]
    ps = [max(t, (min(int(p), int(q)) // t) * t) for p, q, t in zip(cfg["patch_size"], patch_size, total)]
    cfg["patch_size"] = ps
    cfg["batch_size"] = min(int(cfg.get("batch_size", 2)), 2) if batch_size is None else int(batch_size)
    return ConfigurationManager(cfg)
