"""Sarfati et al.'s deep sub-models: small 3D CNN classifiers of HCC, APHE, EC and NPW on lesion-centred patches.

Each sub-model is a ``dynamic_network_architectures`` encoder (``PlainConvEncoder``: Sarfati et al.'s "Tiny" backbone
is five convolution stages of 8 to 128 channels; ``ResidualEncoder`` on request), global average pooling and two
dense layers giving one logit. Its input is the patch of :mod:`~nnunet_liver.characterize.patches`: the sub-model's
phases (A, V, D for HCC, EC and NPW; A, V for APHE, as in the paper) and the lesion mask. Training: AdamW on the
binary cross-entropy, batches half positive and half negative, every sample through nnU-Net's augmentations. The
sub-models are trained in K folds (the characterizer's stratified folds grouped by case): each fold's model predicts
the lesions it did not see, so the logistic regression on the probabilities (DLF) learns from out-of-fold values,
and a new lesion gets the mean of the K folds' probabilities.

Papers: Sarfati et al., "Guiding the classification of hepatocellular carcinoma on 3D CT-scans using deep and handcrafted
radiological features".
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_liver.utils.io import InputError

__all__ = ["SUBMODELS", "DeepSettings", "LesionClassifier", "build_network", "train_submodel", "predict_submodel",
           "save_state", "load_state"]

#: sub-model -> its label column; each sees its phases (DeepSettings.phases) and the mask
SUBMODELS = {"HCC": "hcc", "APHE": "APHE", "EC": "EC", "NPW": "NPW"}


@dataclass
class DeepSettings:
    """Patch, network and training settings of the deep sub-models (stored with them; CHARACTERIZE.md).

    The defaults are the paper's patch (24 x 96 x 96 voxels of 2 x 0.76 x 0.76 mm, z y x) and "Tiny" backbone; the
    training length is for a GPU. Tests use a few voxels and iterations.
    """
    patch_size: tuple = (24, 96, 96)
    spacing: tuple = (2.0, 0.76, 0.76)
    phases: Dict[str, tuple] = field(default_factory=lambda: {"HCC": ("A", "V", "D"), "APHE": ("A", "V"),
                                                               "EC": ("A", "V", "D"), "NPW": ("A", "V", "D")})
    encoder: str = "plain"
    features_per_stage: tuple = (8, 16, 32, 64, 128)
    strides: tuple = ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2), (2, 2, 2))
    hidden: int = 64
    iterations: int = 2000
    batch_size: int = 16
    learning_rate: float = 1e-3
    weight_decay: float = 1e-3
    folds: int = 5
    seed: int = 0
    augment: bool = True

    def to_dict(self) -> dict:
        d = asdict(self)
        d["phases"] = {k: list(v) for k, v in self.phases.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "DeepSettings":
        d = dict(d)
        d["phases"] = {k: tuple(v) for k, v in d.get("phases", {}).items()} or cls().phases
        for k in ("patch_size", "spacing", "features_per_stage"):
            if k in d:
                d[k] = tuple(d[k])
        if "strides" in d:
            d["strides"] = tuple(tuple(s) for s in d["strides"])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def channels(self, submodel: str) -> List[str]:
        """The input channels of a sub-model: its phases, then "mask"."""
        return list(self.phases[submodel]) + ["mask"]


def build_network(settings: DeepSettings, in_channels: int):
    """A :class:`LesionClassifier` for ``in_channels`` inputs."""
    return LesionClassifier(in_channels, settings.features_per_stage, settings.strides, settings.hidden,
                            settings.encoder)


def _classifier_class():
    import torch
    from torch import nn

    class _LesionClassifier(nn.Module):
        """Encoder (dynamic_network_architectures) -> global average pooling -> dense -> ReLU -> dense (1 logit)."""

        def __init__(self, in_channels, features_per_stage, strides, hidden=64, encoder="plain"):
            super().__init__()
            kw = dict(input_channels=int(in_channels), n_stages=len(features_per_stage),
                      features_per_stage=list(features_per_stage), conv_op=nn.Conv3d, kernel_sizes=3,
                      strides=[list(s) for s in strides], conv_bias=True, norm_op=nn.InstanceNorm3d,
                      norm_op_kwargs={"eps": 1e-5, "affine": True}, nonlin=nn.LeakyReLU,
                      nonlin_kwargs={"inplace": True}, return_skips=False)
            if encoder == "plain":
                from dynamic_network_architectures.building_blocks.plain_conv_encoder import PlainConvEncoder

                self.encoder = PlainConvEncoder(n_conv_per_stage=1, **kw)
            elif encoder == "residual":
                from dynamic_network_architectures.building_blocks.residual_encoders import ResidualEncoder

                self.encoder = ResidualEncoder(n_blocks_per_stage=1, **kw)
            else:
                raise ValueError(f"encoder must be 'plain' or 'residual', got {encoder!r}")
            self.head = nn.Sequential(nn.Linear(int(features_per_stage[-1]), int(hidden)), nn.ReLU(inplace=True),
                                      nn.Linear(int(hidden), 1))

        def forward(self, x: "torch.Tensor") -> "torch.Tensor":
            h = self.encoder(x)
            return self.head(h.mean(dim=(2, 3, 4)))[:, 0]

    return _LesionClassifier


def LesionClassifier(in_channels, features_per_stage, strides, hidden=64, encoder="plain"):  # noqa: N802
    """A 3D CNN lesion classifier (torch ``nn.Module``): input (B, C, Z, Y, X), output (B,) logits."""
    return _classifier_class()(in_channels, features_per_stage, strides, hidden, encoder)


def train_submodel(patches: np.ndarray, labels: np.ndarray, settings: DeepSettings, seed: int = 0,
                   device: str = "cpu", progress: bool = False, desc: str = "sub-model") -> dict:
    """Train one sub-model on normalised initial-size patches (N, C, Z, Y, X) with labels (N,) in {0, 1}.

    Returns the network's state dict (on the CPU) and its loss curve: ``{"state", "losses"}``.
    """
    import torch
    from tqdm import tqdm

    from nnunet_liver.characterize.patches import augment_batch, center_crop, training_transforms

    y = np.asarray(labels, dtype=np.float32)
    if y.min() == y.max():
        raise ValueError(f"{desc}: training needs both classes, got only {int(y[0])}")
    rng = np.random.default_rng(seed)
    torch.manual_seed(seed)
    net = build_network(settings, patches.shape[1]).to(device)
    opt = torch.optim.AdamW(net.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    loss_fn = torch.nn.BCEWithLogitsLoss()
    transforms = training_transforms(settings.patch_size) if settings.augment else None
    pos, neg = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    half = max(1, settings.batch_size // 2)
    losses = []
    net.train()
    for _ in tqdm(range(settings.iterations), desc=desc, unit="it", disable=not progress):
        idx = np.concatenate([rng.choice(pos, half), rng.choice(neg, settings.batch_size - half)])
        batch = patches[idx]
        batch = augment_batch(transforms, batch) if transforms is not None else \
            np.stack([center_crop(p, settings.patch_size) for p in batch])
        x = torch.from_numpy(batch).to(device)
        loss = loss_fn(net(x), torch.from_numpy(y[idx]).to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach().cpu()))
    return {"state": {k: v.detach().cpu() for k, v in net.state_dict().items()}, "losses": losses}


def predict_submodel(states: Sequence[dict], patches: np.ndarray, settings: DeepSettings, device: str = "cpu",
                     batch_size: int = 32) -> np.ndarray:
    """Mean sigmoid probability (N,) of the fold models ``states`` on normalised patches (N, C, Z, Y, X) of at least
    the patch size (centre-cropped to it)."""
    import torch

    from nnunet_liver.characterize.patches import center_crop

    if len(patches) == 0:
        return np.zeros(0)
    x_all = np.stack([center_crop(p, settings.patch_size) for p in patches])
    total = np.zeros(len(patches))
    for state in states:
        net = build_network(settings, patches.shape[1])
        net.load_state_dict(state)
        net.to(device).eval()
        with torch.no_grad():
            for i in range(0, len(x_all), batch_size):
                x = torch.from_numpy(np.ascontiguousarray(x_all[i:i + batch_size])).to(device)
                total[i:i + batch_size] += torch.sigmoid(net(x)).cpu().numpy()
    return total / len(states)


def save_state(state: dict, path: str) -> None:
    """Write a state dict atomically (``torch.save``)."""
    import torch

    from nnunet_liver.utils.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_state(path: str, settings: DeepSettings, submodel: str) -> dict:
    """A sub-model's state dict; InputError (one line) when missing or not of the network ``settings`` build."""
    import torch

    if not os.path.isfile(path):
        raise InputError(f"{path}: deep sub-model weights not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        build_network(settings, len(settings.channels(submodel))).load_state_dict(state)
    except (RuntimeError, KeyError, ValueError, OSError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: does not fit the {submodel} sub-model of {len(settings.channels(submodel))} "
                         f"channels ({', '.join(settings.channels(submodel))}): {first[:160]}") from None
    return state


def oof_and_folds(patches: Dict[str, np.ndarray], labels: Dict[str, np.ndarray], splits: List[tuple],
                  settings: DeepSettings, device: str = "cpu", progress: bool = False):
    """Train every sub-model in every fold: ``(out-of-fold probabilities {sub-model: (N,)}, states
    {sub-model: [fold states]})``. A sub-model without both classes among a fold's labelled training lesions is
    skipped (its probabilities stay NaN)."""
    oof: Dict[str, np.ndarray] = {}
    states: Dict[str, List[dict]] = {}
    for name, y in labels.items():
        known = np.isfinite(y)
        if known.sum() < 4 or len(set(y[known].astype(int))) < 2:
            continue
        oof[name] = np.full(len(y), np.nan)
        states[name] = []
        for k, (tr, te) in enumerate(splits):
            tr = tr[known[tr]]
            if len(set(y[tr].astype(int))) < 2:
                states.pop(name)
                oof.pop(name)
                break
            fit = train_submodel(patches[name][tr], y[tr], settings, seed=settings.seed + k, device=device,
                                 progress=progress, desc=f"{name} fold {k}")
            states[name].append(fit["state"])
            oof[name][te] = predict_submodel([fit["state"]], patches[name][te], settings, device)
    return oof, states
