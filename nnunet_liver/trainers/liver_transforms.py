"""Training transforms for variable phase sets: presence detection before augmentation, phase dropout, and the
re-imposition of absent phases after nnU-Net's augmentations.

nnU-Net's intensity augmentations (noise, blur, brightness, contrast, gamma, low resolution) touch every channel,
and its spatial transform pads with zeros, so a missing phase (a constant channel) is no longer constant after them.
The IFM trainers therefore wrap nnU-Net's own pipeline::

    DetectPhasePresence -> PhaseDropout -> nnU-Net's training transforms -> ImposeAbsentPhases

Presence is established on the raw crop (:func:`~liver_networks.phase_presence`: a channel with at most two distinct
values is absent), carried through the pipeline under the key ``"phase_presence"`` (a (C,) bool tensor), and at the
end every absent channel is set to the constant 0. The network sees exactly what it sees at inference (a constant
channel) and detects presence from the data itself; no extra input is needed.
"""
from __future__ import annotations

from itertools import combinations
from typing import List, Sequence, Tuple

import numpy as np
import torch
from batchgeneratorsv2.transforms.base.basic_transform import BasicTransform

from nnunet_liver.trainers.liver_networks import phase_presence

__all__ = ["PRESENCE_KEY", "DetectPhasePresenceTransform", "PhaseDropoutTransform", "ImposeAbsentPhasesTransform",
           "dropout_subsets"]

PRESENCE_KEY = "phase_presence"


class DetectPhasePresenceTransform(BasicTransform):
    """Store the (C,) bool presence of each channel of ``image`` under ``data_dict["phase_presence"]``."""

    def apply(self, data_dict, **params):
        image = data_dict["image"]
        data_dict[PRESENCE_KEY] = phase_presence(torch.as_tensor(image)[None])[0].cpu()
        return data_dict


def dropout_subsets(present: Sequence[bool]) -> List[Tuple[int, ...]]:
    """Every non-empty subset of the present channels (channel indices, ascending): what dropout can keep."""
    idx = [i for i, p in enumerate(present) if p]
    return [c for r in range(1, len(idx) + 1) for c in combinations(idx, r)]


class PhaseDropoutTransform(BasicTransform):
    """With probability ``p``, keep a random non-empty subset of the present phases (uniform over subsets).

    Dropped channels are marked absent in ``data_dict["phase_presence"]`` and set to 0 (they become exactly constant
    again in :class:`ImposeAbsentPhasesTransform`). With 4 phases the 15 subsets include the diagnosis setting
    (all four), a missing delayed phase (NC, A, V) and screening (NC only); every subset is reachable.
    """

    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p <= 1.0:
            raise ValueError(f"phase dropout probability must be in [0, 1], got {p}")
        self.p = p

    def get_parameters(self, **data_dict) -> dict:
        present = data_dict[PRESENCE_KEY]
        if np.random.uniform() >= self.p:
            return {"keep": None}
        subsets = dropout_subsets(present.tolist())
        return {"keep": subsets[np.random.randint(len(subsets))]}

    def apply(self, data_dict, keep=None):
        if keep is None:
            return data_dict
        present = torch.zeros_like(data_dict[PRESENCE_KEY])
        present[list(keep)] = True
        data_dict[PRESENCE_KEY] = present
        image = data_dict["image"]
        image[~present] = 0
        return data_dict


class ImposeAbsentPhasesTransform(BasicTransform):
    """Set absent channels (``data_dict["phase_presence"]``) to the constant 0 and drop the key."""

    def apply(self, data_dict, **params):
        present = data_dict.pop(PRESENCE_KEY, None)
        if present is not None and not bool(present.all()):
            data_dict["image"][~present] = 0
        return data_dict
