"""LI-RADS handcrafted lesion features of Sarfati et al.: APHE, NPW and EC.

With L the lesion, P the liver parenchyma and B the lesion's border ring::

    APHE = median(L on A) - median(P on A)         arterial phase hyper-enhancement (HU; > 0: brighter)
    NPW  = median(L on V) - median(P on V)         non-peripheral washout (HU; < 0: washout)
    EC   = energy(L \\ B on A) - energy(B on A)     enhancing capsule (HU^2; < 0: brighter rim)

Choices where the paper is silent (documented in the README):

* P = the liver mask minus every lesion voxel (all lesions of the case, any type), over the whole liver.
* NPW uses the venous phase V; when V is missing (absent or constant, e.g. the missing-phase fill value) it uses the
  delayed phase D, as LI-RADS reads washout on either; ``feature_phases`` records which phase served.
* energy = the mean of squared HU values over the region (pyradiomics' first-order Energy divided by the voxel
  count, so the inner region and the thinner ring compare regardless of their sizes).
* B = the lesion voxels within ``ring_mm`` (default 2 mm, a capsule's typical thickness) of the lesion's outline in
  the axial plane: in-plane erosion, slice by slice, by ``max(1, round(ring_mm / in-plane spacing))`` pixels.
  Slices are thick (often 5 mm), so the through-plane direction does not define the ring.
* A feature whose phase is missing, or whose region is empty (e.g. a lesion too small to have an inner region),
  is ``None``.

Papers: Sarfati et al., "Guiding the classification of hepatocellular carcinoma on 3D CT-scans using deep and
handcrafted radiological features".
"""
from __future__ import annotations

from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.labels import LIVER_REGION_IDS

__all__ = ["lesion_features", "parenchyma_mask", "present_phases", "border_ring", "energy"]


def present_phases(images: Mapping[str, np.ndarray]) -> Tuple[str, ...]:
    """Phases in ``images`` that are really there: not None and not a constant image (the missing-phase fill)."""
    out = []
    for ph, im in images.items():
        if im is None:
            continue
        a = np.asarray(im)
        if a.size and a.min() != a.max():
            out.append(ph)
    return tuple(out)


def parenchyma_mask(label_map: np.ndarray, liver_mask: Optional[np.ndarray], lesion_fg: np.ndarray) -> np.ndarray:
    """Bool (Z, Y, X): liver parenchyma = liver mask (default: labels 1..8 of ``label_map``) minus all lesions."""
    if liver_mask is None:
        liver = np.isin(label_map, LIVER_REGION_IDS)
    else:
        liver = np.asarray(liver_mask, dtype=bool)
        if liver.shape != label_map.shape:
            raise ValueError(f"liver_mask has shape {liver.shape}, label map {label_map.shape}")
    return liver & ~lesion_fg


def border_ring(mask: np.ndarray, spacing: Sequence[float], ring_mm: float = 2.0) -> np.ndarray:
    """Bool, same shape as ``mask`` (z, y, x): lesion voxels within ``ring_mm`` of the in-plane outline."""
    from scipy import ndimage

    width = max(1, int(round(ring_mm / min(float(spacing[1]), float(spacing[2])))))
    struct = np.zeros((3, 3, 3), dtype=bool)
    struct[1] = ndimage.generate_binary_structure(2, 1)  # in-plane only
    inner = ndimage.binary_erosion(mask, struct, iterations=width, border_value=0)
    return mask & ~inner


def energy(values: np.ndarray) -> Optional[float]:
    """Mean of squared values (HU^2); None for an empty region."""
    v = np.asarray(values, dtype=np.float64)
    return None if v.size == 0 else float(np.mean(v * v))


def _median(values) -> Optional[float]:
    return None if values.size == 0 else float(np.median(values))


def lesion_features(lesion, images: Mapping[str, np.ndarray], parenchyma: np.ndarray, spacing: Sequence[float],
                    ring_mm: float = 2.0, parenchyma_medians: Optional[Dict[str, float]] = None,
                    phases: Optional[Sequence[str]] = None
                    ) -> Tuple[Dict[str, Optional[float]], Dict[str, Optional[str]]]:
    """APHE, NPW and EC of one lesion (see the module docstring for the definitions).

    Parameters
    ----------
    lesion : Lesion with ``mask`` and ``bbox``
    images : {phase: (Z, Y, X) HU}
    parenchyma : bool (Z, Y, X), liver parenchyma without lesions
    parenchyma_medians : cache {phase: median HU of the parenchyma}, filled on first use
    phases : the phases really present (default: :func:`present_phases` of ``images``)

    Returns
    -------
    (features {"APHE", "NPW", "EC"}, phases used {"APHE", "NPW", "EC"}); missing values are None.
    """
    phases = present_phases(images) if phases is None else tuple(phases)
    cache = {} if parenchyma_medians is None else parenchyma_medians
    box, m = lesion.slices, lesion.mask

    def p_median(ph):
        if ph not in cache:
            cache[ph] = _median(np.asarray(images[ph])[parenchyma])
        return cache[ph]

    def contrast(ph):
        lv = _median(np.asarray(images[ph])[box][m])
        pv = p_median(ph)
        return None if lv is None or pv is None else lv - pv

    feats: Dict[str, Optional[float]] = {"APHE": None, "NPW": None, "EC": None}
    used: Dict[str, Optional[str]] = {"APHE": None, "NPW": None, "EC": None}
    if "A" in phases:
        feats["APHE"], used["APHE"] = contrast("A"), "A"
        ring = border_ring(m, spacing, ring_mm)
        a = np.asarray(images["A"])[box]
        e_in, e_ring = energy(a[m & ~ring]), energy(a[ring])
        if e_in is not None and e_ring is not None:
            feats["EC"], used["EC"] = e_in - e_ring, "A"
    for ph in ("V", "D"):
        if ph in phases:
            feats["NPW"], used["NPW"] = contrast(ph), ph
            break
    return feats, used
