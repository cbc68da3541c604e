"""The handcrafted LI-RADS features of Sarfati et al. exactly as their Eq. (1) writes them, and the size feature.

*Guiding the classification of hepatocellular carcinoma on 3D CT-scans using deep and handcrafted radiological
features* (Sarfati et al.), with L the lesion, P the liver parenchyma and B the lesion's border::

    f_APHE = median(L on the arterial phase) - median(P on the arterial phase)       (HU)
    f_EC   = energy(L on the arterial phase) - energy(B on the arterial phase)       (HU^2 x voxels)
    f_NPW  = median(L on the portal venous phase) - median(P on the portal venous phase)   (HU)
    s      = the lesion diameter (mm)

Definitions where the paper is silent (CHARACTERIZE.md, "Features"):

* energy is the first-order *Energy* of radiomics (IBSI; pyradiomics with ``voxelArrayShift`` 0): the sum of the
  squared HU values over the region. The paper computed it on images resampled to 0.76 x 0.76 x 2 mm; a sum over
  voxels depends on the voxel size, so the sum on the scan's own grid is multiplied by (its voxel volume / the voxel
  volume of ``energy_spacing``, default that grid): the value the sum would take on the paper's grid.
* B, the lesion's inner border, is the lesion voxels within ``border_mm`` (default 2 mm) of its outline in the axial
  plane (:func:`nnunet_liver.postprocessing.features.border_ring`). Since B lies inside L, f_EC = energy(L \\ B).
* P = the liver (labels 1..8: lesions, parenchyma, hepatic vessels) minus every lesion voxel of the case.
* s = the largest axial diameter (seg2det's ``diameter_mm``, edge to edge).
* the portal venous phase is V; ``washout_phase="D"`` reads f_NPW on the delayed phase instead (LI-RADS reads
  washout on either), recorded with the table. A feature whose phase is missing, or whose region is empty, is None.

How they differ from the detector's features (:mod:`nnunet_liver.postprocessing.features`, in CASE.json's
``features``): the detector's EC is the *mean* of the squared HU over L \\ B minus the mean over B (a contrast between
the rim and the inside, independent of the lesion's size), where Eq. (1) subtracts *sums* (which grows with the
volume); the detector's NPW falls back to D when V is missing, Eq. (1) has no fallback. APHE is the same.
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence

import numpy as np

from nnunet_liver.postprocessing.features import border_ring

__all__ = ["SARFATI_SPACING_ZYX", "HANDCRAFTED", "energy", "sarfati_features"]

#: the voxel grid of Sarfati et al. (z, y, x mm): their CT resampled to 0.76 x 0.76 x 2 mm
SARFATI_SPACING_ZYX = (2.0, 0.76, 0.76)
#: the columns of the handcrafted feature vector, in the order of Eq. (1), then the size s
HANDCRAFTED = ("f_APHE", "f_EC", "f_NPW", "s")


def energy(values: np.ndarray) -> Optional[float]:
    """Radiomics first-order energy: the sum of squared values (HU^2 x voxels); None for an empty region."""
    v = np.asarray(values, dtype=np.float64)
    return None if v.size == 0 else float(np.dot(v.ravel(), v.ravel()))


def _median(values: np.ndarray) -> Optional[float]:
    return None if values.size == 0 else float(np.median(values))


def sarfati_features(mask: np.ndarray, box: Sequence[slice], images: Mapping[str, np.ndarray],
                     parenchyma: np.ndarray, spacing: Sequence[float], diameter_mm: float,
                     parenchyma_medians: Optional[Dict[str, Optional[float]]] = None, washout_phase: str = "V",
                     border_mm: float = 2.0, energy_spacing: Sequence[float] = SARFATI_SPACING_ZYX
                     ) -> Dict[str, Optional[float]]:
    """f_APHE, f_EC, f_NPW (Eq. (1) of Sarfati et al.) and s of one lesion.

    Parameters
    ----------
    mask : bool (z, y, x), the lesion's voxels inside ``box``
    box : three slices (z, y, x) placing ``mask`` in the case's arrays
    images : {phase: (Z, Y, X) HU} of the phases present (absent phases are left out, not filled)
    parenchyma : bool (Z, Y, X), the liver without any lesion
    spacing : (z, y, x) mm of the case's grid
    diameter_mm : the lesion's largest axial diameter (mm), returned as ``s``
    parenchyma_medians : cache {phase: median HU of the parenchyma}, filled on first use
    washout_phase : "V" (Eq. (1)) or "D"
    border_mm : width of the inner border B (mm, in-plane)
    energy_spacing : the grid (z, y, x mm) whose voxel the energy sums are expressed in

    Returns
    -------
    {"f_APHE", "f_EC", "f_NPW", "s"}; None where a phase is missing or a region empty.
    """
    if washout_phase not in ("V", "D"):
        raise ValueError(f"washout_phase must be 'V' (Eq. (1): portal venous) or 'D', got {washout_phase!r}")
    cache = {} if parenchyma_medians is None else parenchyma_medians
    mask = np.asarray(mask, dtype=bool)
    box = tuple(box)

    def contrast(phase):
        if phase not in images:
            return None
        if phase not in cache:
            cache[phase] = _median(np.asarray(images[phase])[parenchyma])
        lesion, liver = _median(np.asarray(images[phase])[box][mask]), cache[phase]
        return None if lesion is None or liver is None else lesion - liver

    f_ec = None
    if "A" in images:
        a = np.asarray(images["A"])[box]
        ring = border_ring(mask, spacing, border_mm)
        e_lesion, e_border = energy(a[mask]), energy(a[ring])
        if e_lesion is not None and e_border is not None:
            scale = float(np.prod(spacing)) / float(np.prod(energy_spacing))
            f_ec = (e_lesion - e_border) * scale
    return {"f_APHE": contrast("A"), "f_EC": f_ec, "f_NPW": contrast(washout_phase), "s": float(diameter_mm)}
