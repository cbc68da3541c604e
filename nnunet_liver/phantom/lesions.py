"""Liver lesions of the phantoms: sizes, placement inside the liver, and textbook enhancement over four phases.

Patterns (HU in NC / A / V / D against liver about 55 / 70 / 110 / 90 and blood pool 40 / 300 / 160 / 120):

- HCC: arterial hyper-enhancement, washout in V and D, an enhancing capsule in V and D; large ones mosaic.
- ICC: arterial rim, then progressive (delayed) enhancement of the centre; lobulated margin.
- Meta: arterial rim, hypo-attenuating centre in V (necrotic core when large).
- Hem: peripheral nodular enhancement following the blood pool, filling in centripetally over V and D.
- Other (FNH-like): strong homogeneous arterial enhancement, iso in V and D, central scar (delayed enhancing).
- Cyst: water density (0-10 HU), no enhancement, smooth sharp margin.

Each lesion is painted on its bounding box (numpy on the box only). Positions are voxel indices (z, y, x) and
sizes physical (mm, cm3) from ``spacing``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import numpy as np
from scipy import ndimage

from nnunet_liver import labels as L
from nnunet_liver.phantom.anatomy import BLOOD_POOL_HU
from nnunet_liver.phantom.shapes import smooth_noise

__all__ = ["MIN_LESION_CM3", "MAX_LESION_CM3", "Lesion", "sample_volume_cm3", "place_lesions",
           "lesion_hu", "major_features", "CAPSULE_MIN_RADIUS_MM"]

#: (core, rim/capsule/scar) HU in (NC, A, V, D); rim = capsule for HCC, rim for ICC/Meta, scar for Other
_PATTERN = {
    "HCC": ((45, 118, 75, 62), (45, 80, 125, 118)),
    "ICC": ((38, 50, 78, 110), (40, 100, 100, 95)),
    "Meta": ((35, 48, 60, 58), (40, 98, 88, 78)),
    "Hem": ((40, 42, 45, 48), None),
    "Other": ((50, 150, 112, 92), (35, 45, 75, 105)),
    "Cyst": ((6, 6, 7, 7), None),
}
#: margin softness (mm): cysts are sharp, ICC infiltrative
_EDGE_MM = {"HCC": 0.8, "ICC": 1.6, "Meta": 1.0, "Hem": 0.8, "Other": 0.8, "Cyst": 0.15}
_ROUGH = {"HCC": 0.10, "ICC": 0.25, "Meta": 0.15, "Hem": 0.15, "Other": 0.10, "Cyst": 0.03}
#: an HCC gets its enhancing capsule (V and D) above this radius (mm); :func:`lesion_hu` paints it
CAPSULE_MIN_RADIUS_MM = 10.0
#: the LI-RADS major features each pattern of ``_PATTERN`` shows (nonrim APHE, nonperipheral washout): only the HCC
#: core is brighter than the liver in A and darker in V and D; FNH-like "Other" enhances in A without washing out;
#: ICC and Meta enhance as a rim (rim APHE is an LR-M feature, not APHE); hemangiomas fill in from the periphery
_APHE_WASHOUT = {"HCC": (True, True), "ICC": (False, False), "Meta": (False, False), "Hem": (False, False),
                 "Other": (True, False), "Cyst": (False, False)}


def major_features(lesion_type: str, radius_mm: float) -> dict:
    """The LI-RADS major features a phantom lesion is painted with: ``{"aphe", "washout", "capsule"}`` (bools).

    Nonrim arterial phase hyper-enhancement, nonperipheral washout and an enhancing capsule (HCC above
    :data:`CAPSULE_MIN_RADIUS_MM`), as :func:`lesion_hu` draws them.
    """
    aphe, washout = _APHE_WASHOUT[lesion_type]
    return {"aphe": aphe, "washout": washout,
            "capsule": lesion_type == "HCC" and float(radius_mm) > CAPSULE_MIN_RADIUS_MM}


@dataclass
class Lesion:
    """One painted lesion: its box, mask and shape fields (on the box), and what the truth file records."""
    id: int
    type: str
    box: tuple
    mask: np.ndarray  # bool, box shape
    rho: np.ndarray  # normalised radius on the box (0 centre, 1 surface)
    radius_mm: float
    aux: np.ndarray = field(repr=False, default=None)  # smooth noise in [-1, 1] on the box
    gain: float = 1.0  # per-lesion enhancement jitter
    offset_hu: float = 0.0

    @property
    def label(self) -> int:
        return L.id_of(self.type)

    def truth(self, spacing, origin) -> dict:
        idx = np.argwhere(self.mask).mean(axis=0) + [s.start for s in self.box]
        n = int(self.mask.sum())
        return {"id": self.id, "type": self.type, "label": self.label,
                "center_voxel": [round(float(v), 2) for v in idx],
                "center_mm": [round(float(o + v * s), 2) for o, v, s in zip(origin, idx, spacing)],
                "num_voxels": n, "volume_cm3": round(n * float(np.prod(spacing)) / 1000.0, 4),
                "radius_mm": round(self.radius_mm, 2), **major_features(self.type, self.radius_mm)}


#: default range of random lesion volumes (cm3): 0.5 cm3 is a sphere of 9.8 mm diameter, 120 cm3 one of 6.1 cm
MIN_LESION_CM3, MAX_LESION_CM3 = 0.5, 120.0


def sample_volume_cm3(rng: np.random.Generator, low: float = MIN_LESION_CM3,
                      high: float = MAX_LESION_CM3) -> float:
    """Lesion volume, log-distributed between ``low`` and ``high`` cm3 and skewed towards small lesions."""
    u = rng.random() ** 1.7
    return float(low * (high / low) ** u)


def _render(rng, center, volume_cm3, spacing, kind):
    """Mask of one lesion around ``center`` (voxel) with ``volume_cm3``: (box, mask, rho, radius_mm) or None."""
    radius = (3.0 * volume_cm3 * 1000.0 / (4.0 * np.pi)) ** (1.0 / 3.0)
    ratios = rng.uniform(0.8, 1.25, 3)
    radii = radius * ratios / np.prod(ratios) ** (1.0 / 3.0)
    rough = _ROUGH[kind]
    reach = np.ceil(radii * (1 + rough) / np.asarray(spacing)).astype(int) + 1
    lo = np.asarray(center) - reach
    hi = np.asarray(center) + reach + 1
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    d = [((np.arange(s.start, s.stop) - c) * sp / r).astype(np.float32)
         for s, c, sp, r in zip(box, center, spacing, radii)]
    rho = np.sqrt(d[0][:, None, None] ** 2 + d[1][None, :, None] ** 2 + d[2][None, None, :] ** 2)
    cells = (2, 3, 3) if kind != "ICC" else (3, 4, 4)
    rho /= 1.0 + rough * smooth_noise(rng, rho.shape, cells)
    return box, rho <= 1.0, rho, radius


def place_lesions(rng: np.random.Generator, label: np.ndarray, spacing: Sequence[float], types: Sequence[str],
                  volumes_cm3: Sequence[float], max_tries: int = 60) -> List[Lesion]:
    """Place lesions inside the liver (labels 7/8), one voxel apart from each other; paint them into ``label``.

    A lesion that does not fit shrinks (x0.7 every 8 failed tries) and is dropped after ``max_tries``. Modifies
    ``label`` in place and returns the placed lesions (ids 1.. in placement order).
    """
    allowed = (label == L.LIVER) | (label == L.HEPATIC_VESSELS)
    liver = label == L.LIVER
    liver_cm3 = int(liver.sum()) * float(np.prod(spacing)) / 1000.0
    deep = ndimage.binary_erosion(liver, np.ones((1, 5, 5), bool))  # centres away from the liver surface
    candidates = np.flatnonzero(deep if deep.any() else liver)
    if candidates.size == 0:
        return []
    placed: List[Lesion] = []
    for kind, vol in zip(types, volumes_cm3):
        vol = min(float(vol), 0.15 * liver_cm3)
        vol = max(vol, 6 * float(np.prod(spacing)) / 1000.0)  # at least a few voxels
        for attempt in range(max_tries):
            if attempt and attempt % 8 == 0:
                vol *= 0.7
            center = np.unravel_index(candidates[rng.integers(candidates.size)], label.shape)
            box, mask, rho, radius = _render(rng, center, vol, spacing, kind)
            if any(s.start < 0 or s.stop > n for s, n in zip(box, label.shape)) or not mask.any():
                continue
            if not allowed[box][mask].all():
                continue
            lesion = Lesion(len(placed) + 1, kind, box, mask, rho, radius, smooth_noise(rng, rho.shape, (2, 4, 4)),
                            float(rng.uniform(0.85, 1.15)), float(rng.uniform(-4, 4)))
            label[box][mask] = lesion.label
            grown = ndimage.binary_dilation(np.pad(mask, 1), np.ones((3, 3, 3), bool))
            sub = tuple(slice(s.start - 1, s.stop + 1) for s in box)
            clip = tuple(slice(max(0, s.start), min(n, s.stop)) for s, n in zip(sub, label.shape))
            inner = tuple(slice(c.start - s.start, c.stop - s.start) for c, s in zip(clip, sub))
            allowed[clip][grown[inner]] = False
            placed.append(lesion)
            break
    return placed


def lesion_hu(lesion: Lesion, phase_index: int, enhancement: float = 1.0) -> np.ndarray:
    """HU of a lesion's box in one phase (``phase_index`` 0..3 = NC, A, V, D), before the margin blend."""
    kind, rho, aux = lesion.type, lesion.rho, lesion.aux
    depth_mm = np.clip(1.0 - rho, 0.0, 1.0) * lesion.radius_mm  # distance inside the surface, roughly

    def hu(table):
        t = np.asarray(table, np.float32)
        return t[0] + lesion.offset_hu + enhancement * lesion.gain * (t[phase_index] - t[0])

    core, rim = _PATTERN[kind]
    out = np.full(rho.shape, hu(core), np.float32)
    if kind == "HCC":
        if lesion.radius_mm > 12:  # mosaic
            out += 14.0 * aux * (phase_index > 0)
        capsule = (depth_mm < max(1.2, 0.06 * lesion.radius_mm)) & (lesion.radius_mm > CAPSULE_MIN_RADIUS_MM)
        out = np.where(capsule & (phase_index >= 2), hu(rim), out)
    elif kind in ("ICC", "Meta"):
        rim_mm = max(2.5, 0.22 * lesion.radius_mm) if kind == "ICC" else max(1.5, 0.18 * lesion.radius_mm)
        out = np.where(depth_mm < rim_mm, hu(rim), out)
        if kind == "Meta" and lesion.radius_mm > 14:
            out = np.where((1 - rho) > 0.6, np.float32(22 + lesion.offset_hu), out)  # necrosis
    elif kind == "Hem":
        blood = BLOOD_POOL_HU[0] + enhancement * (BLOOD_POOL_HU[phase_index] - BLOOD_POOL_HU[0])
        t = np.clip(1.0 - rho, 0.0, 1.0)  # 0 at the surface, 1 at the centre
        front = (0.0, 0.3, 0.65, 0.97)[phase_index] + 0.12 * aux
        nodular = aux > (0.15 if phase_index == 1 else -0.6)
        filled = (t < front) & (nodular | (phase_index >= 3))
        out = np.where(filled & (phase_index > 0), np.float32(0.92 * blood), out)
    elif kind == "Other":
        if lesion.radius_mm > 9:
            scar = ((1 - rho) > 0.72 + 0.12 * aux)
            out = np.where(scar, hu(rim), out)
    return out.astype(np.float32, copy=False)


def margin_weight(lesion: Lesion, spacing: Optional[Sequence[float]] = None) -> np.ndarray:
    """Blend weight of the lesion over the background on its box: a logistic step at the surface."""
    edge = _EDGE_MM[lesion.type]
    x = (1.0 - lesion.rho) * lesion.radius_mm / edge
    w = 1.0 / (1.0 + np.exp(-np.clip(x, -30, 30)))
    return np.where(lesion.mask, np.maximum(w, 0.75), w).astype(np.float32)
