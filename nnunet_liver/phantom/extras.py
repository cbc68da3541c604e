"""Optional findings of the phantoms that challenge contrast-phase identification: organ detail (kidney cortex,
medulla and collecting system; an arciform spleen), positive oral contrast, lipiodol deposits after TACE.

None of them is drawn unless asked for, and they draw their random numbers from a stream of their own
(``SeedSequence([seed, EXTRAS_STREAM])``), so the default phantoms stay bit for bit what they were.

- **Organ detail**: each kidney becomes a cortex (the outer 6 mm), medulla and a collecting system (the core of
  the kidney, at least 0.6 of its largest depth) whose excreted contrast reaches about 520 HU in the delayed phase;
  the spleen becomes bright and dark bands in the arterial phase (about 175 and 75 HU) that are alike from the
  portal-venous phase on (tissues ``kidney_cortex`` ... ``spleen_white`` of :data:`.anatomy.TISSUES`).
- **Oral contrast**: the stomach's fluid holds positive oral contrast of 300 to 600 HU and the bowel loops 60 % of
  that, in every phase (non-contrast included): dense, bright and close to the aorta.
- **Lipiodol**: the treated lesion (the largest HCC, else the largest lesion) holds dense deposits of 800 to 2000 HU
  (at least 600 HU by construction) in every phase, in lumps that fill part of it (at least its inner 40 %); its
  label stays the lesion's.
"""
from __future__ import annotations

from typing import List, Optional, Tuple

import numpy as np
from scipy import ndimage

from nnunet_liver import labels as L
from nnunet_liver.phantom.anatomy import TISSUE_IDS
from nnunet_liver.phantom.shapes import smooth_noise

__all__ = ["EXTRAS_STREAM", "LIPIODOL_MIN_HU", "extras_rng", "add_organ_detail", "oral_contrast", "lipiodol"]

EXTRAS_STREAM = 27
LIPIODOL_MIN_HU = 600.0
_CORTEX_MM = 6.0

#: an override: (box, mask on the box, HU in every phase)
Override = Tuple[tuple, np.ndarray, float]


def extras_rng(seed: int) -> np.random.Generator:
    """The extras' own random stream for a case seed (independent of the case's main stream)."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), EXTRAS_STREAM]))


def add_organ_detail(rng: np.random.Generator, label: np.ndarray, tissue: np.ndarray, spacing) -> dict:
    """Kidneys into cortex, medulla and collecting system, the spleen into arciform bands (``tissue`` in place);
    returns the truth entry (voxel counts)."""
    T = TISSUE_IDS
    kidneys, n = ndimage.label(tissue == T["kidney"])
    counts = {"kidney_cortex": 0, "kidney_medulla": 0, "renal_pelvis": 0, "spleen_red": 0, "spleen_white": 0}
    for i, box in enumerate(ndimage.find_objects(kidneys), start=1):
        mask = kidneys[box] == i
        depth = ndimage.distance_transform_edt(np.pad(mask, 1), sampling=spacing)[1:-1, 1:-1, 1:-1]
        parts = {"kidney_cortex": mask & (depth < _CORTEX_MM),
                 "renal_pelvis": mask & (depth >= max(_CORTEX_MM + 1.0, 0.6 * depth.max()))}
        parts["kidney_medulla"] = mask & ~parts["kidney_cortex"] & ~parts["renal_pelvis"]
        for name, part in parts.items():
            tissue[box][part] = T[name]
            counts[name] += int(part.sum())
    spleen = label == L.SPLEEN
    if spleen.any():
        box = ndimage.find_objects(spleen.astype(np.uint8))[0]
        bands = smooth_noise(rng, tuple(s.stop - s.start for s in box), (3, 6, 6)) > 0.0
        mask = spleen[box]
        tissue[box][mask & bands] = T["spleen_red"]
        tissue[box][mask & ~bands] = T["spleen_white"]
        counts["spleen_red"], counts["spleen_white"] = int((mask & bands).sum()), int((mask & ~bands).sum())
    return {"voxels": counts}


def oral_contrast(rng: np.random.Generator, tissue: np.ndarray) -> Tuple[List[Override], dict]:
    """Positive oral contrast in the stomach's fluid and the bowel loops; (overrides, truth entry)."""
    stomach_hu = float(rng.uniform(300.0, 600.0))
    bowel_hu = 0.6 * stomach_hu
    full = tuple(slice(0, n) for n in tissue.shape)
    stomach = tissue == TISSUE_IDS["stomach_fluid"]
    bowel = tissue == TISSUE_IDS["bowel"]
    overrides = [(full, stomach, stomach_hu), (full, bowel, bowel_hu)]
    return overrides, {"stomach_hu": round(stomach_hu, 1), "bowel_hu": round(bowel_hu, 1),
                       "stomach_voxels": int(stomach.sum()), "bowel_voxels": int(bowel.sum())}


def lipiodol(rng: np.random.Generator, lesions) -> Tuple[List[Override], Optional[dict]]:
    """Dense deposits in the treated lesion; (overrides, truth entry or None when the liver has no lesion)."""
    if not lesions:
        return [], None
    hcc = [les for les in lesions if les.type == "HCC"]
    treated = max(hcc or lesions, key=lambda les: int(les.mask.sum()))
    hu = float(rng.uniform(800.0, 2000.0))
    lumps = smooth_noise(rng, treated.rho.shape, (2, 3, 3)) > -0.2
    deposit = treated.mask & (treated.rho < 0.85) & lumps
    if deposit.sum() < 0.25 * treated.mask.sum():  # a small lesion or a thin lump: the lesion's core
        inside = treated.rho[treated.mask]
        deposit = treated.mask & (treated.rho <= np.quantile(inside, 0.4))
    return [(treated.box, deposit, hu)], {"lesion_id": treated.id, "hu": round(hu, 1),
                                          "voxels": int(deposit.sum())}
