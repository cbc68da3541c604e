"""The lesion-level head (LIDIA's lesion classification and embedding) on an nnU-Net U-Net.

LIDIA (Huang et al., *LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative Fusion
and Asymmetric Contrastive Learning*) classifies each lesion as a whole: Mask2Former queries on an nnU-Net encoder
give one embedding per lesion, a classifier trained with focal loss types it, and a non-linear projection ``z(x)``
of it feeds the asymmetric contrastive loss. Ours has no queries: a lesion's embedding is the decoder's
full-resolution features (the output of the decoder's last stage, the input of nnU-Net's final 1x1x1 segmentation
conv) averaged over the lesion's mask, then

    e = LeakyReLU(W_e f)         (embedding)
    logits = W_c e               (the six lesion types HCC, ICC, Meta, Hem, Other, Cyst)
    z = normalise(W_2 ReLU(W_1 e))   (the projection z(x) of Eq. (4)-(5))

:func:`attach_lesion_head` adds the head to a built network as ``network.lesion_head`` (its weights are part of the
network's state dict, so the checkpoint and nnU-Net's predictor carry them) and a forward hook on the decoder's last
stage that keeps the features only while ``capture_features`` is on. The network's forward is unchanged: it returns
nnU-Net's segmentation logits (a list with deep supervision), which nnU-Net's loss and predictor take as always.

Lesion instances of a training patch are the reference lesions (labels 1..6, any mix of types) joined by the
project's one connectivity rule (:func:`nnunet_liver.postprocessing.seg2det.lesion_components`); an instance's type
is the majority of its voxels (:func:`nnunet_liver.labels.majority_type`).
"""
from __future__ import annotations

import contextlib
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nnunet_liver.labels import LESION_IDS, majority_type
from nnunet_liver.postprocessing.seg2det import lesion_components

__all__ = ["LesionHead", "attach_lesion_head", "lesion_head_of", "capture_features", "lesion_instances",
           "pool_lesion_features", "EMBED_DIM", "PROJECTION_DIM"]

#: the lesion embedding's width and the projection's (LIDIA does not state them)
EMBED_DIM = 128
PROJECTION_DIM = 128


class LesionHead(nn.Module):
    """Classifier and projection on pooled lesion features (see the module docstring).

    Parameters
    ----------
    in_channels : channels of the pooled decoder features.
    num_types : lesion types (6: ``LESION_IDS``).
    """

    def __init__(self, in_channels: int, num_types: int = len(LESION_IDS), embed_dim: int = EMBED_DIM,
                 projection_dim: int = PROJECTION_DIM):
        super().__init__()
        self.in_channels, self.num_types = int(in_channels), int(num_types)
        self.embed = nn.Sequential(nn.Linear(in_channels, embed_dim), nn.LeakyReLU(0.01))
        self.classifier = nn.Linear(embed_dim, num_types)
        self.projection = nn.Sequential(nn.Linear(embed_dim, embed_dim), nn.ReLU(),
                                        nn.Linear(embed_dim, projection_dim))
        #: while True, the decoder hook keeps its last stage's output in :attr:`features`
        self.capture = False
        self.features: Optional[torch.Tensor] = None

    def forward(self, pooled: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``pooled`` (N, in_channels) -> (type logits (N, num_types), unit-norm projections (N, projection_dim))."""
        e = self.embed(pooled)
        return self.classifier(e), F.normalize(self.projection(e), dim=1)

    def keep_features(self, module, inputs, output) -> None:  # forward hook of the decoder's last stage
        if self.capture:
            self.features = output


def attach_lesion_head(network: nn.Module, **head_kwargs) -> nn.Module:
    """Add a :class:`LesionHead` to an nnU-Net U-Net (in place; returned), fed by its decoder's last stage."""
    decoder = getattr(network, "decoder", None)
    if decoder is None or not hasattr(decoder, "stages") or not hasattr(decoder, "seg_layers"):
        raise ValueError(f"{type(network).__name__} has no nnU-Net decoder (decoder.stages, decoder.seg_layers); the "
                         "lesion head needs nnU-Net's PlainConvUNet or ResidualEncoderUNet")
    head = LesionHead(decoder.seg_layers[-1].in_channels, **head_kwargs)
    head.to(next(decoder.seg_layers[-1].parameters()).device)
    network.lesion_head = head
    decoder.stages[-1].register_forward_hook(head.keep_features)
    return network


def lesion_head_of(network: nn.Module) -> Optional[LesionHead]:
    """The network's lesion head (through DDP's ``.module`` and torch.compile's ``._orig_mod``), or None."""
    mod = getattr(network, "module", network)
    mod = getattr(mod, "_orig_mod", mod)
    head = getattr(mod, "lesion_head", None)
    return head if isinstance(head, LesionHead) else None


@contextlib.contextmanager
def capture_features(head: LesionHead):
    """Keep the decoder features of the forward passes inside the block (``head.features``); dropped after it."""
    head.capture, head.features = True, None
    try:
        yield head
    finally:
        head.capture, head.features = False, None


def lesion_instances(labels: np.ndarray, min_voxels: int = 1) -> Tuple[np.ndarray, List[int]]:
    """Lesion instances of a batch of label maps.

    Parameters
    ----------
    labels : (B, z, y, x) int label maps (lesion types 1..6; anything else is not lesion).
    min_voxels : smaller instances are left out.

    Returns
    -------
    (instances (B, z, y, x) int64: 0 none, 1..N the batch's instances numbered across the batch;
     their types [N] as lesion label ids 1..6, the majority of their voxels)
    """
    labels = np.asarray(labels)
    out = np.zeros(labels.shape, dtype=np.int64)
    types: List[int] = []
    for b in range(labels.shape[0]):
        lab = labels[b]
        for box, mask in lesion_components(np.isin(lab, LESION_IDS)):
            if int(mask.sum()) < min_voxels:
                continue
            values, counts = np.unique(lab[box][mask], return_counts=True)
            types.append(int(majority_type({int(v): int(c) for v, c in zip(values, counts)})))
            out[b][box][mask] = len(types)
    return out, types


def pool_lesion_features(features: torch.Tensor, instances: torch.Tensor, num_instances: int) -> torch.Tensor:
    """Mean of ``features`` (B, C, *spatial) over each instance's voxels (``instances`` (B, *spatial), ids 1..N
    across the batch): (N, C) float32."""
    b, c = features.shape[:2]
    flat = features.float().permute(0, *range(2, features.ndim), 1).reshape(-1, c)
    ids = instances.reshape(-1).to(features.device, torch.long)
    sums = torch.zeros(num_instances + 1, c, device=features.device, dtype=torch.float32).index_add_(0, ids, flat)
    counts = torch.bincount(ids, minlength=num_instances + 1).to(torch.float32).clamp_min(1)
    return (sums / counts[:, None])[1:]
