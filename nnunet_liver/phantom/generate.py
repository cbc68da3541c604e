"""One synthetic multi-phase liver CT: :func:`generate_case`.

A case is a random cartoon body (:mod:`.anatomy`), 0-6 lesions of the six types (:mod:`.lesions`), and one HU
image per phase with the case's contrast timing, smooth parenchymal texture, image noise and a partial-volume
blur matching the slice thickness. Optionally the delayed phase is missing (a constant ``MISSING_PHASE_VALUE``
channel), the non-reference phases are shifted by a random rigid translation (the label stays on the reference
phase, V when present), and :mod:`.extras` adds organ detail, oral contrast or lipiodol deposits. Everything follows
from ``seed``: the same seed gives the same arrays.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from nnunet_liver import labels as L
from nnunet_liver.phantom import extras
from nnunet_liver.phantom.anatomy import STANDARD_FOV_MM, build_anatomy, tissue_hu
from nnunet_liver.phantom.lesions import (MAX_LESION_CM3, MIN_LESION_CM3, lesion_hu,
                                         margin_weight, place_lesions, sample_volume_cm3)
from nnunet_liver.phantom.shapes import smooth_noise

__all__ = ["PhantomCase", "generate_case", "check_case_arguments", "default_spacing", "reference_phase"]

DEFAULT_SHAPE = (64, 256, 256)


@dataclass
class PhantomCase:
    """A generated case.

    Attributes
    ----------
    images : {phase: float32 (Z, Y, X) HU}, only the requested phases, in time order; a missing phase is the
        constant ``MISSING_PHASE_VALUE``.
    label : uint8 (Z, Y, X), our 13 ids, on the reference phase's grid.
    lesions : list of dicts (id, type, label, center_voxel (z, y, x), center_mm (z, y, x world), num_voxels,
        volume_cm3, radius_mm); ``volume_cm3`` equals the lesion's voxel count in ``label`` times the voxel volume.
    spacing : (z, y, x) mm; origin : (z, y, x) mm world position of voxel (0, 0, 0) (identity direction, LPS).
    shifts_mm : {phase: (z, y, x) mm} rigid shift applied to that phase's content (zeros for the reference).
    missing_phases : phases written as the constant channel.
    """
    images: Dict[str, np.ndarray]
    label: np.ndarray
    lesions: List[dict]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    seed: int
    reference_phase: str
    shifts_mm: Dict[str, List[float]] = field(default_factory=dict)
    missing_phases: List[str] = field(default_factory=list)
    lesion_free: bool = False
    enhancement: float = 1.0
    noise_hu: float = 0.0
    extras: dict = field(default_factory=dict)  # organ_detail / oral_contrast / lipiodol: what was added

    def truth(self) -> dict:
        """The case's entry in the truth file (JSON-ready); the extras' keys only when some were asked for."""
        return {"seed": self.seed, "shape": list(self.label.shape), "spacing": list(self.spacing),
                "origin": list(self.origin), "reference_phase": self.reference_phase,
                "phases": list(self.images), "missing_phases": list(self.missing_phases),
                "shifts_mm": {k: [round(float(v), 3) for v in s] for k, s in self.shifts_mm.items()},
                "lesion_free": self.lesion_free, "enhancement": round(self.enhancement, 4),
                "noise_hu": round(self.noise_hu, 3), "lesions": self.lesions, **self.extras}


def default_spacing(shape: Sequence[int]) -> Tuple[float, float, float]:
    """5 mm slices, and the in-plane spacing that fits the standard 384 mm axial field of view."""
    return (5.0, STANDARD_FOV_MM[1] / shape[1], STANDARD_FOV_MM[2] / shape[2])


def reference_phase(phases: Sequence[str]) -> str:
    """The phase the label is drawn on: V when present, else D, A, NC."""
    for p in ("V", "D", "A", "NC"):
        if p in phases:
            return p
    raise ValueError(f"no known phase in {list(phases)}; use a subset of {list(L.PHASES)}")


def _check_phases(phases) -> Tuple[str, ...]:
    phases = tuple(phases)
    bad = [p for p in phases if p not in L.PHASES]
    if bad or not phases or len(set(phases)) != len(phases):
        raise ValueError(f"phases must be distinct names from {list(L.PHASES)}, got {list(phases)}")
    return tuple(p for p in L.PHASES if p in phases)


def _check_min_lesion_cm3(min_lesion_cm3) -> float:
    """The lesion volume floor as a float in (0, MAX_LESION_CM3) cm3."""
    if not 0.0 < float(min_lesion_cm3) < MAX_LESION_CM3:
        raise ValueError(f"min_lesion_cm3 must be in (0, {MAX_LESION_CM3:g}) cm3, got {min_lesion_cm3}")
    return float(min_lesion_cm3)


def _draw_lesions(rng, lesion_types, lesion_volumes_cm3=None, min_lesion_cm3=MIN_LESION_CM3):
    """Types and volumes of a lesion-bearing liver: a dominant type, plus incidental cysts/hemangiomas."""
    if lesion_types is not None:
        types = list(lesion_types)
    else:
        main = L.LESION_NAMES[int(rng.integers(len(L.LESION_NAMES)))]
        n = int(rng.integers(1, 6 if main in ("Meta", "Cyst") else 4))
        types = [main] * n
        if rng.random() < 0.35:
            types += [("Cyst", "Hem")[int(rng.integers(2))] for _ in range(int(rng.integers(1, 3)))]
    if lesion_volumes_cm3 is not None:
        if len(lesion_volumes_cm3) != len(types):
            raise ValueError(f"{len(lesion_volumes_cm3)} lesion volumes for {len(types)} lesion types")
        order = np.argsort(-np.asarray(lesion_volumes_cm3, float), kind="stable")  # big ones placed first
        return [types[i] for i in order], [float(lesion_volumes_cm3[i]) for i in order]
    # big ones placed first
    volumes = sorted((sample_volume_cm3(rng, low=min_lesion_cm3) for _ in types), reverse=True)
    order = rng.permutation(len(types))
    return [types[i] for i in order], volumes


def generate_case(seed: int, shape: Sequence[int] = DEFAULT_SHAPE, spacing: Optional[Sequence[float]] = None,
                  phases: Sequence[str] = L.PHASES, missing_delayed: bool = False, misalign_mm: float = 0.0,
                  lesion_free: Optional[bool] = None, lesion_types: Optional[Sequence[str]] = None,
                  lesion_volumes_cm3: Optional[Sequence[float]] = None, noise: bool = True,
                  min_lesion_cm3: float = MIN_LESION_CM3, organ_detail: bool = False, oral_contrast: bool = False,
                  lipiodol: bool = False) -> PhantomCase:
    """Generate one multi-phase phantom.

    Parameters
    ----------
    seed : int; the same seed (and arguments) gives identical arrays.
    shape : (Z, Y, X) voxels; spacing : (z, y, x) mm, default 5 mm slices and a 384 mm axial field of view.
    phases : subset of ("NC", "A", "V", "D") to produce (returned in time order).
    missing_delayed : D (when requested) is the constant ``MISSING_PHASE_VALUE`` channel.
    misalign_mm : every non-reference phase is shifted by a random translation of length up to this (mm).
    lesion_free : True for a liver without lesions, False for at least one, None for random (20 % free).
    lesion_types : exact lesion types to place (names of ``labels.LESION_NAMES``), overriding the random draw and
        ``lesion_free``; a lesion that cannot fit the liver after many tries is left out.
    lesion_volumes_cm3 : target volumes of ``lesion_types`` (default: random, many small); capped to fit.
    noise : add image noise (off for pattern checks without noise).
    min_lesion_cm3 : smallest random lesion volume (default 0.5 cm3); random volumes are log-distributed from it
        up to 120 cm3, skewed towards the small end. The same seed draws the same random numbers whatever it is.
    organ_detail : kidneys with cortex, medulla and a collecting system that fills with excreted contrast in D, and
        an arciform (banded) spleen in A (:func:`.extras.add_organ_detail`).
    oral_contrast : positive oral contrast (300-600 HU) in the stomach and bowel in every phase
        (:func:`.extras.oral_contrast`).
    lipiodol : dense lipiodol deposits (800-2000 HU) in the treated lesion (the largest HCC, else the largest
        lesion) in every phase (:func:`.extras.lipiodol`).

    The three extras draw from their own random stream: the same seed gives the same anatomy and lesions with or
    without them, and without them exactly the arrays it gave before they existed.
    """
    shape, spacing, phases, min_lesion_cm3 = check_case_arguments(shape, spacing, phases, lesion_types,
                                                                  min_lesion_cm3)
    rng = np.random.default_rng(np.random.SeedSequence(int(seed)))
    ref = reference_phase(phases)
    origin = tuple(-(n - 1) / 2.0 * s for n, s in zip(shape, spacing))

    label, tissue = build_anatomy(rng, shape, spacing)
    if lesion_types is not None:
        free = len(lesion_types) == 0
    else:
        free = bool(rng.random() < 0.2) if lesion_free is None else bool(lesion_free)
    lesions = [] if free else place_lesions(rng, label, spacing,
                                                 *_draw_lesions(rng, lesion_types, lesion_volumes_cm3,
                                                                min_lesion_cm3))
    look = _Look.draw(rng, label, spacing, noise)
    added = {}
    if organ_detail or oral_contrast or lipiodol:
        more = extras.extras_rng(seed)
        if organ_detail:
            added["organ_detail"] = extras.add_organ_detail(more, label, tissue, spacing)
        if oral_contrast:
            overrides, added["oral_contrast"] = extras.oral_contrast(more, tissue)
            look.overrides += overrides
        if lipiodol:
            overrides, added["lipiodol"] = extras.lipiodol(more, lesions)
            look.overrides += overrides

    images: Dict[str, np.ndarray] = {}
    missing = ["D"] if (missing_delayed and "D" in phases) else []
    shifts: Dict[str, List[float]] = {}
    for phase in phases:
        if phase in missing:
            images[phase] = np.full(shape, L.MISSING_PHASE_VALUE, np.float32)
            continue
        images[phase], shifts[phase] = _phase_image(rng, phase, tissue, lesions, look, spacing,
                                                    misalign_mm if phase != ref else 0.0)
    truth = [les.truth(spacing, origin) for les in lesions]
    return PhantomCase(images, label, truth, spacing, origin, int(seed), ref, shifts, missing, free,
                       look.enhancement, look.noise_hu, added)


def check_case_arguments(shape, spacing, phases, lesion_types=None, min_lesion_cm3=MIN_LESION_CM3):
    """:func:`generate_case`'s arguments checked and normalised: ``(shape, spacing, phases in time order,
    min_lesion_cm3)``; ValueError naming the argument otherwise."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 4:
        raise ValueError(f"shape must be (Z, Y, X) with every size >= 4, got {shape}")
    spacing = tuple(float(s) for s in (default_spacing(shape) if spacing is None else spacing))
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm values (z, y, x), got {spacing}")
    phases = _check_phases(phases)
    if lesion_types is not None:
        unknown = [t for t in lesion_types if t not in L.LESION_NAMES]
        if unknown:
            raise ValueError(f"unknown lesion types {unknown}; known: {list(L.LESION_NAMES)}")
    return shape, spacing, phases, _check_min_lesion_cm3(min_lesion_cm3)


@dataclass
class _Look:
    """What every phase image of a case shares: contrast timing, noise level, parenchymal texture, blur."""
    enhancement: float
    noise_hu: float
    texture: np.ndarray
    liver_region: np.ndarray
    organs: np.ndarray
    sigma: Tuple[float, float, float]
    noise_gain: float
    overrides: list = field(default_factory=list)  # (box, mask, HU): the extras' dense contents, every phase

    @classmethod
    def draw(cls, rng, label: np.ndarray, spacing, noise: bool) -> "_Look":
        enhancement = float(rng.uniform(0.85, 1.15))
        noise_hu = float(rng.uniform(8.0, 14.0)) if noise else 0.0
        texture = smooth_noise(rng, label.shape, (4, 8, 8))
        sigma = (0.42 * 5.0 / spacing[0] if spacing[0] >= 2.5 else 0.42, 0.7, 0.7)  # partial volume + noise grain
        noise_gain = float(np.sqrt(np.prod([2.0 * np.sqrt(np.pi) * s for s in sigma])))
        return cls(enhancement, noise_hu, texture, np.isin(label, L.LIVER_REGION_IDS), label > 0, sigma, noise_gain)


def _phase_image(rng, phase: str, tissue, lesions, look: _Look, spacing, misalign_mm: float):
    """One phase's HU image (tissue, texture, lesions, noise, blur, optional random shift) and its shift (mm)."""
    pi = L.PHASES.index(phase)
    img = tissue_hu(tissue, pi, look.enhancement)
    img += np.where(look.liver_region, 6.0, np.where(look.organs, 4.0, 2.0)).astype(np.float32) * look.texture
    for lesion in lesions:
        w = margin_weight(lesion)
        sub = img[lesion.box]
        sub += w * (lesion_hu(lesion, pi, look.enhancement) - sub)
    for box, mask, hu in look.overrides:
        img[box][mask] = np.float32(hu)
    if look.noise_hu:
        img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(look.noise_hu * look.noise_gain)
    img = ndimage.gaussian_filter(img, look.sigma, mode="nearest", truncate=3.0)
    shift = np.zeros(3)
    if misalign_mm > 0:
        direction = rng.standard_normal(3)
        shift = direction / np.linalg.norm(direction) * misalign_mm * rng.uniform(0.5, 1.0)
        img = ndimage.shift(img, shift / np.asarray(spacing), order=1, mode="nearest")
    return np.clip(img, -1024.0, 3071.0).astype(np.float32), [float(v) for v in shift]
