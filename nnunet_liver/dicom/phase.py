"""Which contrast phase (NC, A, V, D) each CT acquisition of a study is, with a confidence and the reasons.

Evidence:

1. **The image.** :func:`measure_enhancement` locates, crudely but without a model, the liver (the commonest soft-tissue
   value in the patient's right half of the body, away from the body wall and bone) and the aorta (the brightest
   homogeneous blood-sized spot in front of the spine near the midline, bone excluded) on a few slices, and reads their
   HU. Prototypes (liver, aorta) in HU: NC (50, 40), A (70, 280), V (105, 170), D (90, 120); with 15 HU of spread for
   the liver and 50 HU for the aorta (patients and protocols differ), each acquisition gets a squared distance to each
   phase. The real portal-venous series of HCC-TACE-Seg case HCC_048 (measured: liver about 114 HU, aorta about 235) lands on V.
2. **Acquisition order.** When every acquisition has a time (AcquisitionTime, else ContentTime, else SeriesTime, with
   the date), phases must follow time order (NC before A before V before D): assignments breaking it are excluded.
   The gap after the arterial acquisition separates V from D, which the image alone often cannot (a real equilibrium
   phase can keep an aorta near 200 HU): V comes 15-100 s after A, D more than 100 s after A (or more than 60 s after
   V); a gap on the wrong side costs :data:`TIME_GAP_COST`.
3. **Contrast tags.** An acquisition with ``ContrastBolusAgent`` empty while others of the study have it is pushed
   towards NC (and one with it away from NC).
4. **Series descriptions.** Keywords (``arterial``, ``portal``, ``venous``, ``delayed``, ``non-contrast`` ...) only
   nudge the score: descriptions are often misleading (HCC_048's portal-venous series is called
   "Recon 3: LIVER 2 PHASE (C/A/P)").

All acquisitions of a study are assigned distinct phases jointly (every one-to-one assignment is scored; the lowest
total wins). The confidence is ``1 - exp(-margin / 2)`` where the margin is the score gap to the best assignment that
differs; below :data:`MIN_CONFIDENCE` the study is refused as ambiguous unless ``--phase-map`` decides.
"""
from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_liver.labels import PHASES
from nnunet_liver.utils.io import InputError

__all__ = ["PROTOTYPES_HU", "MIN_CONFIDENCE", "SKIP", "Acquisition", "measure_enhancement", "assign_phases",
           "parse_phase_map"]

#: (liver, aorta) HU per phase, and their spreads
PROTOTYPES_HU: Dict[str, tuple] = {"NC": (50.0, 40.0), "A": (70.0, 280.0), "V": (105.0, 170.0), "D": (90.0, 120.0)}
SPREAD_HU = (15.0, 50.0)
MIN_CONFIDENCE = 0.5
TIME_GAP_COST = 6.0
_KEYWORDS = {
    "NC": r"\b(non[- ]?contrast|noncon|unenhanced|pre[- ]?contrast|native|plain|w/?o|without)\b|\bnc\b",
    "A": r"\b(arterial|art|hepatic arterial|late arterial|early)\b",
    "V": r"\b(portal|venous|pv|portovenous|porto[- ]?venous)\b",
    "D": r"\b(delayed|delay|equilibrium|late|eq|\d+\s*min)\b",
}
_BONE_HU, _BODY_HU = 420.0, -400.0


@dataclass
class Acquisition:
    """One acquisition (one or more reconstructions of it) and the evidence on its phase."""
    key: str  # the chosen series' UID
    series_number: Optional[int]
    description: str
    time: Optional[float]  # seconds since the study's first acquisition (None when absent)
    contrast_agent: Optional[bool]  # ContrastBolusAgent present (None when no series of the study says)
    liver_hu: float
    aorta_hu: float

    def image_cost(self, phase: str) -> float:
        lp, ap = PROTOTYPES_HU[phase]
        return ((self.liver_hu - lp) / SPREAD_HU[0]) ** 2 + ((self.aorta_hu - ap) / SPREAD_HU[1]) ** 2

    def tag_cost(self, phase: str) -> float:
        cost = 0.0
        if self.contrast_agent is not None:
            cost += 3.0 if (phase == "NC") == self.contrast_agent else 0.0
        words = description_phases(self.description)
        if words:
            cost += 0.0 if phase in words else 1.0
        return cost


def description_phases(text: str) -> List[str]:
    """Phases named by keywords in a series description (``[]`` when none or several conflicting)."""
    text = str(text or "").lower()
    return [p for p, pattern in _KEYWORDS.items() if re.search(pattern, text)]


def measure_enhancement(image, max_slices: int = 24) -> Dict[str, float]:
    """Liver and aorta HU of an axial CT image (SimpleITK, LPS), from up to ``max_slices`` slices.

    Returns ``{"liver_hu", "aorta_hu"}`` (NaN when the body or the region is not found).
    """
    import SimpleITK as sitk
    from scipy import ndimage

    arr = sitk.GetArrayFromImage(image).astype(np.float32)  # (z, y, x)
    sx, sy = image.GetSpacing()[:2]
    d = np.asarray(image.GetDirection()).reshape(3, 3)
    o = np.asarray(image.GetOrigin())
    k = max(1, int(round(2.5 / min(sx, sy))))  # about 2.5 mm in-plane
    z_idx = np.unique(np.linspace(0, arr.shape[0] - 1, min(max_slices, arr.shape[0])).round().astype(int))
    arr = arr[z_idx][:, ::k, ::k]
    px, py = sx * k, sy * k
    jj, ii = np.mgrid[0:arr.shape[1], 0:arr.shape[2]]
    wx = o[0] + d[0, 0] * ii * px + d[0, 1] * jj * py  # patient x (right -> left) of each pixel
    wy = o[1] + d[1, 0] * ii * px + d[1, 1] * jj * py  # patient y (anterior -> posterior)
    smooth = ndimage.uniform_filter(arr, (1, 3, 3))
    local_sq = ndimage.uniform_filter(arr * arr, (1, 3, 3))
    local_sd = np.sqrt(np.maximum(local_sq - smooth * smooth, 0))
    liver_vals, aorta_vals = [], []
    for z in range(arr.shape[0]):
        body = smooth[z] > _BODY_HU
        lab, n = ndimage.label(body)
        if n == 0:
            continue
        body = lab == (1 + int(np.argmax(ndimage.sum(body, lab, range(1, n + 1)))))
        body = ndimage.binary_fill_holes(body)
        if body.sum() * px * py < 100 * 100:  # less than 1 dm2 of body: not an abdominal slice
            continue
        depth = ndimage.distance_transform_edt(body, sampling=(py, px))
        bone = ndimage.binary_fill_holes(arr[z] > _BONE_HU)
        bone = ndimage.binary_dilation(bone, iterations=2)
        cx, cy = float(wx[body].mean()), float(wy[body].mean())
        half_ap = float(np.ptp(wy[body])) / 2
        right = body & (depth > 20) & ~bone & (wx < cx - 10) & (smooth[z] > -20) & (smooth[z] < 250)
        liver_vals.append(smooth[z][right])
        region = (body & (depth > 15) & ~bone & (np.abs(wx - cx) < 40) & (wy > cy - 0.3 * half_ap)
                  & (wy < cy + 0.7 * half_ap) & (local_sd[z] < 40) & (smooth[z] < _BONE_HU))
        if region.any():
            aorta_vals.append(float(smooth[z][region].max()))
    out = {"liver_hu": float("nan"), "aorta_hu": float("nan")}
    values = np.concatenate(liver_vals) if liver_vals else np.zeros(0)
    if values.size:
        hist, edges = np.histogram(values, bins=np.arange(-20, 252, 4))
        hist = np.convolve(hist, np.ones(3) / 3, mode="same")
        out["liver_hu"] = float(edges[int(np.argmax(hist))] + 2)
    if aorta_vals:
        out["aorta_hu"] = float(np.median(aorta_vals))
    return out


def assign_phases(acquisitions: Sequence[Acquisition], phases: Sequence[str] = PHASES,
                  phase_map: Optional[Dict[str, str]] = None) -> Dict[str, dict]:
    """Assign each acquisition a distinct phase; ``{key: {"phase", "confidence", "reasons", "cost"}}``.

    ``phase_map`` ({acquisition key or series number as text: phase}) fixes those acquisitions' phases.

    Raises
    ------
    InputError
        more acquisitions than phases, or no assignment consistent with the fixed phases and the time order.
    """
    acquisitions = list(acquisitions)
    phase_map = dict(phase_map or {})
    fixed = {}
    for a in acquisitions:
        for key in (a.key, str(a.series_number)):
            if key in phase_map:
                fixed[a.key] = phase_map[key]
    if len(acquisitions) > len(phases):
        raise InputError(f"{len(acquisitions)} contrast acquisitions but only {len(phases)} phases "
                         f"({', '.join(phases)}); leave some out with --phase-map SERIES=skip")
    timed = all(a.time is not None for a in acquisitions) and len(acquisitions) > 1
    scored = []
    for perm in itertools.permutations(phases, len(acquisitions)):
        if any(fixed.get(a.key, p) != p for a, p in zip(acquisitions, perm)):
            continue
        if timed:
            order = sorted(range(len(acquisitions)), key=lambda i: acquisitions[i].time)
            ranks = [PHASES.index(perm[i]) for i in order]
            if ranks != sorted(ranks):
                continue
        cost = sum(0.0 if a.key in fixed else a.image_cost(p) + a.tag_cost(p) for a, p in zip(acquisitions, perm))
        if timed:
            cost += _time_gap_cost(acquisitions, perm)
        scored.append((cost, perm))
    if not scored:
        raise InputError("no phase assignment agrees with the acquisition times and --phase-map")
    scored.sort(key=lambda t: t[0])
    best_cost, best = scored[0]
    out = {}
    for i, (a, p) in enumerate(zip(acquisitions, best)):
        if a.key in fixed:
            out[a.key] = {"phase": p, "confidence": 1.0, "reasons": ["--phase-map"], "cost": 0.0}
            continue
        others = [c for c, perm in scored[1:] if perm[i] != p]
        margin = (others[0] - best_cost) if others else float("inf")
        confidence = 1.0 if not np.isfinite(margin) else float(1.0 - np.exp(-margin / 2.0))
        reasons = [f"image: liver {a.liver_hu:.0f} HU, aorta {a.aorta_hu:.0f} HU (closest to {p}: "
                   + ", ".join(f"{q} {a.image_cost(q):.1f}" for q in phases) + ")"]
        if timed:
            reasons.append(f"acquired {a.time:.0f} s after the first acquisition (time order enforced)")
        if a.contrast_agent is not None:
            reasons.append("contrast agent tag " + ("set" if a.contrast_agent else "empty"))
        words = description_phases(a.description)
        if words:
            reasons.append(f"description {a.description!r} suggests {'/'.join(words)}")
        out[a.key] = {"phase": p, "confidence": round(confidence, 4), "reasons": reasons,
                      "cost": round(float(a.image_cost(p) + a.tag_cost(p)), 4)}
    return out


def _time_gap_cost(acquisitions: Sequence[Acquisition], perm: Sequence[str]) -> float:
    """:data:`TIME_GAP_COST` per V or D whose delay after A (or D's after V) is on the wrong side of its range."""
    times = {p: a.time for a, p in zip(acquisitions, perm)}
    cost = 0.0
    if "A" in times:
        if "V" in times and not 15.0 <= times["V"] - times["A"] <= 100.0:
            cost += TIME_GAP_COST
        if "D" in times and times["D"] - times["A"] <= 100.0:
            cost += TIME_GAP_COST
    if "V" in times and "D" in times and times["D"] - times["V"] < 60.0:
        cost += TIME_GAP_COST
    return cost


#: the --phase-map value that leaves a series out
SKIP = "skip"


def parse_phase_map(items: Optional[Sequence[str]]) -> Dict[str, str]:
    """``["4=A", "1.2.3=V", "9=skip"]`` -> ``{"4": "A", "1.2.3": "V", "9": "skip"}`` (series number or
    SeriesInstanceUID = phase, or ``skip`` to leave that series out)."""
    out = {}
    for item in items or []:
        key, sep, phase = str(item).partition("=")
        phase = phase.strip()
        phase = SKIP if phase.lower() == SKIP else phase.upper()
        if not sep or not key.strip() or (phase not in PHASES and phase != SKIP):
            raise InputError(f"--phase-map {item!r}: use SERIES=PHASE with SERIES a series number or "
                             f"SeriesInstanceUID and PHASE one of {', '.join(PHASES)} or {SKIP}")
        out[key.strip()] = phase
    return out
