"""Hard cases for UNet-patch: UNet-whole's false positives and false negatives on its training data (seed 003, III-B).

The paper adds "shuffling Det_FP^pred and Det_FN^pred" to UNet-patch's training patches: the lesion proposals of
UNet-whole that match no reference lesion (FP: liver texture that looks like a lesion, to be learnt as liver) and
the reference lesions UNet-whole misses (FN: lesions to be learnt as lesions). :func:`hard_cases` finds both with
:func:`~nnunet_liver.postprocessing.match.match` (the evaluation's rules and volume floors) and paints them into
one instance map; ``nnunet-liver-convert patches --hard-cases`` writes that map beside each case of the UNet-patch
dataset, and ``LesionShufflePatchTrainer`` draws a share of its patches around them
(:func:`~nnunet_liver.training.shuffle.sample_hard_case_patch`). The labels of a hard case's patch are always
the reference's: an FP region stays liver, an FN lesion keeps its type.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["HardCase", "hard_cases"]


@dataclass
class HardCase:
    """One hard case: its value in the hard-case map, FN or FP, the lesion type (the reference's for an FN,
    UNet-whole's for an FP), its volume in the map and the id of the lesion it comes from."""
    id: int
    kind: str
    type: str
    volume_cm3: float
    source_id: int

    def to_json(self) -> dict:
        return asdict(self)


def hard_cases(reference: Sequence, prediction: Sequence, shape: Sequence[int], spacing: Sequence[float],
               region: Optional[np.ndarray] = None, min_ref_volume_cm3: float = 0.5,
               min_pred_volume_cm3: float = 0.5, overlap: str = "any") -> Tuple[np.ndarray, List[HardCase]]:
    """UNet-whole's FN and FP lesions of one case as an instance map.

    Parameters
    ----------
    reference, prediction : lesions (``seg2det`` / ``lesions_from_instance_map``) on the same grid
    shape : (Z, Y, X) of that grid
    spacing : (z, y, x) mm
    region : (Z, Y, X) bool, optional
        Where hard cases may lie (the liver region of the UNet-patch dataset); FP voxels outside it are dropped and
        an FP with none inside is left out.
    min_ref_volume_cm3, min_pred_volume_cm3, overlap : ``match``'s options (smaller lesions are not hard cases)

    Returns
    -------
    map : (Z, Y, X) uint16, 0 elsewhere, hard case ``i`` painted with ``i`` (FN lesions first, by reference id, then
        FP, by prediction id; an FP voxel on an FN lesion stays the FN's)
    cases : the :class:`HardCase` entries, ids 1..n
    """
    from nnunet_liver.postprocessing.match import match

    shape = tuple(int(s) for s in shape)
    if region is not None and tuple(region.shape) != shape:
        raise ValueError(f"region shape {tuple(region.shape)} differs from the grid {shape}")
    m = match(reference, prediction, min_ref_volume_cm3=min_ref_volume_cm3, min_pred_volume_cm3=min_pred_volume_cm3,
              overlap=overlap)
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    out = np.zeros(shape, np.uint16)
    cases: List[HardCase] = []
    ref = {les.id: les for les in reference}
    pred = {les.id: les for les in prediction}
    todo = [("FN", ref[i]) for i in sorted(m.unmatched_reference)]
    todo += [("FP", pred[i]) for i in sorted(m.unmatched_prediction)]
    for kind, les in todo:
        sub = out[les.slices]
        paint = les.mask & (sub == 0)
        if region is not None:
            paint &= region[les.slices]
        n = int(np.count_nonzero(paint))
        if n == 0:
            continue
        hid = len(cases) + 1
        sub[paint] = hid
        cases.append(HardCase(hid, kind, les.type, n * voxel_cm3, int(les.id)))
    return out, cases
