"""Patient-level rules: classifyPatient and the two-sensitivity consensus (Wang et al.), LiverMax (Huang et al.,
LIDIA).

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans"; Huang et al., "LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative
Fusion and Asymmetric Contrastive Learning" (MICCAI).
"""
from __future__ import annotations

from typing import Dict, Iterable

import numpy as np

from nnunet_liver.labels import LESION_IDS, LESION_PRIORITY, LIVER_REGION_IDS, NORMAL, NUM_CLASSES, UNCERTAIN, id_of, \
    is_malignant, name_of, priority_rank

__all__ = ["classify_patient", "consensus", "liver_max", "is_malignant_class", "NORMAL", "UNCERTAIN",
           "PATIENT_CLASSES"]
# NORMAL and UNCERTAIN are defined in nnunet_liver.labels and re-exported here

#: patient classes, highest priority first
PATIENT_CLASSES = tuple(name_of(i) for i in LESION_PRIORITY) + (NORMAL,)


def classify_patient(lesions: Iterable, min_volume_cm3: float = 0.0) -> str:
    """The highest-priority lesion type present (HCC > ICC > Meta > Hem > Other > Cyst), else ``"normal"``.

    Parameters
    ----------
    lesions : iterable of Lesion (or anything with ``label`` or ``type``, and ``volume_cm3`` when a floor is set)
    min_volume_cm3 : lesions smaller than this are not counted (0: all)
    """
    best = None
    for les in lesions:
        if min_volume_cm3 > 0 and les.volume_cm3 < min_volume_cm3:
            continue
        label = getattr(les, "label", None)
        label = id_of(les.type) if label is None else int(label)
        if label not in LESION_IDS:
            raise ValueError(f"lesion label {label} is not a lesion type")
        if best is None or priority_rank(label) < priority_rank(best):
            best = label
    return NORMAL if best is None else name_of(best)


def consensus(a: str, b: str) -> str:
    """The class when both sensitivities agree, else ``"uncertain"`` (Wang et al., Fig. 10)."""
    return a if a == b else UNCERTAIN


#: a patient class's malignancy: True for HCC/ICC/Meta, False for benign types and "normal", None for "uncertain"
#: (the one accessor, :func:`nnunet_liver.labels.is_malignant`, under the name the detector's API has used)
is_malignant_class = is_malignant


def liver_max(probabilities, label_map=None) -> Dict[str, float]:
    """LiverMax: per lesion type, the maximum softmax probability over voxels inside the predicted liver.

    Parameters
    ----------
    probabilities : (14, Z, Y, X) numpy array or torch tensor (any device)
    label_map : (Z, Y, X) predicted labels; default ``argmax(probabilities)``. The predicted liver is labels 1..8
        (lesions, parenchyma, hepatic vessels).

    Returns
    -------
    {type name: probability}; 0.0 for every type when the predicted liver is empty.
    """
    if tuple(probabilities.shape)[:1] != (NUM_CLASSES,) or len(probabilities.shape) != 4:
        raise ValueError(f"probabilities must have shape ({NUM_CLASSES}, Z, Y, X), got {tuple(probabilities.shape)}")
    lo, hi = LIVER_REGION_IDS[0], LIVER_REGION_IDS[-1]
    if list(LIVER_REGION_IDS) != list(range(lo, hi + 1)):
        raise RuntimeError("LIVER_REGION_IDS must be a contiguous range")
    if hasattr(probabilities, "detach"):
        import torch

        lm = torch.argmax(probabilities, dim=0) if label_map is None else torch.as_tensor(label_map)
        lm = lm.to(probabilities.device)
        if tuple(lm.shape) != tuple(probabilities.shape[1:]):
            raise ValueError(f"label_map has shape {tuple(lm.shape)}, probabilities {tuple(probabilities.shape)}")
        liver = (lm >= lo) & (lm <= hi)
        if not bool(liver.any()):
            return {name_of(i): 0.0 for i in LESION_IDS}
        return {name_of(i): float(probabilities[i][liver].max()) for i in LESION_IDS}
    p = np.asarray(probabilities)
    lm = np.argmax(p, axis=0) if label_map is None else np.asarray(label_map)
    if lm.shape != p.shape[1:]:
        raise ValueError(f"label_map has shape {lm.shape}, probabilities {p.shape}")
    liver = (lm >= lo) & (lm <= hi)
    if not liver.any():
        return {name_of(i): 0.0 for i in LESION_IDS}
    idx = np.nonzero(liver)
    return {name_of(i): float(p[i][idx].max()) for i in LESION_IDS}
