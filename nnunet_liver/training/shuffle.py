"""Lesion shuffle: UNet-patch's training patches (Wang et al., the cascade, Sec. III-B).

Four training schemes (:data:`SCHEMES`), drawn per patch at configurable rates:

- ``original_positive``: a crop around a lesion, at a random offset that keeps the lesion's box inside the patch;
- ``original_negative``: a crop of liver that holds no lesion voxel;
- ``shuffled_positive``: a lesion (its voxels, all channels, and its labels) transplanted into a negative crop, onto
  lesion-free liver;
- ``shuffled_negative``: a positive crop whose lesion voxels are replaced by lesion-free liver texture of the same
  case (the image moved by a random shift that lands on liver only; labels become liver).

Images and labels are shuffled together; voxels outside the liver are then masked (image = ``masked_value``,
label 0). Label maps use the patch scheme: 0 outside liver, 1..6 lesion types, 7 liver. Arrays are (C, Z, Y, X)
images (normalised intensities) and (Z, Y, X) labels; patch sizes are (z, y, x) voxels. Inputs are never modified.

The primitives (crop, placement, transplant) live in :mod:`nnunet_liver.postprocessing.lesion_shuffle`, with the
patches reclassification cuts of one lesion proposal (:func:`make_reclassification_patches`, re-exported here), so
that UNet-patch is applied on patches made the way it is trained on. Hard cases (UNet-whole's FP and FN on the
training data, Wang et al. Sec. III-B) are cut by :func:`sample_hard_case_patch`, original or shuffled, with their
reference labels.

A lesion here is what detection calls a lesion: a slice-overlap component of the lesion voxels
(:func:`nnunet_liver.postprocessing.seg2det.lesion_components`, the rule seg2det applies to UNet-whole's output),
typed by the majority vote of its voxels (:func:`nnunet_liver.labels.majority_type`, the package's one vote), so
UNet-patch is trained on the units it reclassifies.

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans".
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.labels import LESION_IDS, PATCH_LIVER, PATCH_MASKED, majority_type
from nnunet_liver.postprocessing.lesion_shuffle import (PLACEMENT_TRIES, crop, make_reclassification_patches,
                                                        negative_start, start_around, transplant_lesion)
from nnunet_liver.postprocessing.seg2det import lesion_components, lesion_foreground

__all__ = ["SCHEMES", "DEFAULT_SCHEME_RATES", "crop", "case_lesions", "component_type", "sample_training_patch",
           "transplant_lesion", "erase_lesions", "make_reclassification_patches", "sample_hard_case_patch"]

SCHEMES: Tuple[str, ...] = ("original_positive", "original_negative", "shuffled_positive", "shuffled_negative")
DEFAULT_SCHEME_RATES: Dict[str, float] = {s: 0.25 for s in SCHEMES}


def case_lesions(label: np.ndarray) -> List[Tuple[Tuple[slice, ...], np.ndarray]]:
    """The lesions of a patch label map as ``(bbox slices, bool mask of the bbox)``, in raster order of their boxes:
    the slice-overlap components of the voxels labelled 1..6 (seg2det's rule, any mix of types)."""
    comps = lesion_components(lesion_foreground(label))
    return sorted(comps, key=lambda c: tuple((sl.start, sl.stop) for sl in c[0]))


def component_type(label: np.ndarray, box: Tuple[slice, ...], mask: np.ndarray) -> int:
    """The lesion type of one :func:`case_lesions` entry: the majority lesion label under its mask
    (:func:`~nnunet_liver.labels.majority_type`: ties go to the higher-priority type)."""
    counts = np.bincount(label[box][mask].astype(np.int64), minlength=max(LESION_IDS) + 1)
    return majority_type({c: int(counts[c]) for c in LESION_IDS if counts[c] > 0})


def erase_lesions(case_image: np.ndarray, case_label: np.ndarray, start: Sequence[int], patch_size, rng,
                  masked_value: float = 0.0, tries: int = PLACEMENT_TRIES):
    """Crop a patch at ``start`` and replace its lesion voxels by lesion-free liver texture of the same case.

    The texture is the case image shifted by a random vector under which the lesion voxels land on liver (label 7)
    voxels (the shift with the most such voxels among ``tries``); voxels left over take random liver voxels' values.
    Returns ``(image patch, label patch)``; the label patch holds no lesion label.
    """
    image = crop(case_image, start, patch_size, masked_value)
    label = crop(case_label, start, patch_size, PATCH_MASKED)
    lesion = np.isin(label, LESION_IDS)
    if not lesion.any():
        return image, label
    liver_vox = np.argwhere(case_label == PATCH_LIVER)
    pts = np.argwhere(lesion) + np.asarray(start)
    if len(liver_vox) == 0:  # no texture available: flat mean of the patch's lesion-free region
        image[:, lesion] = image[:, ~lesion].mean(axis=1, keepdims=True) if (~lesion).any() else masked_value
        label[lesion] = PATCH_LIVER
        return image, label
    best_ok, best_src = None, None
    for _ in range(tries):
        shift = liver_vox[rng.integers(len(liver_vox))] - pts[rng.integers(len(pts))]
        src = pts + shift
        inside = np.all((src >= 0) & (src < case_label.shape), axis=1)
        ok = inside.copy()
        ok[inside] = case_label[tuple(src[inside].T)] == PATCH_LIVER
        if best_ok is None or ok.sum() > best_ok.sum():
            best_ok, best_src = ok, src
        if ok.all():
            break
    values = np.empty((case_image.shape[0], len(pts)), case_image.dtype)
    values[:, best_ok] = case_image[(slice(None),) + tuple(best_src[best_ok].T)]
    fill = liver_vox[rng.integers(len(liver_vox), size=int((~best_ok).sum()))]
    values[:, ~best_ok] = case_image[(slice(None),) + tuple(fill.T)]
    image[:, lesion] = values
    label[lesion] = PATCH_LIVER
    return image, label


def _mask_outside(image: np.ndarray, label: np.ndarray, masked_value: float) -> np.ndarray:
    image[:, label == PATCH_MASKED] = masked_value
    return image


def sample_training_patch(case_image: np.ndarray, case_label: np.ndarray, patch_size: Sequence[int], rng,
                          rates: Optional[Dict[str, float]] = None, masked_value: float = 0.0,
                          components=None, lesion_class: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, str]:
    """One UNet-patch training patch by lesion shuffle.

    Parameters
    ----------
    case_image : (C, Z, Y, X) float
        Normalised case (liver-cropped in practice).
    case_label : (Z, Y, X) int
        Patch labels: 0 outside the liver, 1..6 lesion types, 7 liver.
    patch_size : (pz, py, px)
    rng : numpy Generator
    rates : {scheme: weight}, optional
        Relative rates of :data:`SCHEMES` (default equal).
    components : list, optional
        :func:`case_lesions` of ``case_label`` (computed when not given).
    lesion_class : int, optional
        The positive schemes (and ``shuffled_negative``) pick among the lesions of this type (the majority label
        of the component) when the case has one, else among all its lesions (class-balanced sampling).

    Returns
    -------
    image (C, pz, py, px) float32, label (pz, py, px) int16, scheme actually used. A positive scheme falls back to
    ``original_negative`` in a case without lesions; ``original_negative`` falls back to ``shuffled_negative``
    when no lesion-free crop is found.
    """
    rates = DEFAULT_SCHEME_RATES if rates is None else rates
    unknown = set(rates) - set(SCHEMES)
    if unknown:
        raise ValueError(f"unknown lesion-shuffle schemes {sorted(unknown)}; known: {SCHEMES}")
    weights = np.array([float(rates.get(s, 0.0)) for s in SCHEMES])
    if weights.sum() <= 0 or (weights < 0).any():
        raise ValueError(f"lesion-shuffle rates must be >= 0 with a positive sum, got {rates}")
    scheme = SCHEMES[rng.choice(len(SCHEMES), p=weights / weights.sum())]
    comps = case_lesions(case_label) if components is None else components
    if lesion_class is not None:
        comps = [c for c in comps if component_type(case_label, *c) == lesion_class] or comps
    if not comps and scheme != "original_negative":
        scheme = "original_negative"
    patch_size = tuple(int(p) for p in patch_size)
    if scheme == "original_negative":
        start = negative_start(case_label, patch_size, rng)
        if start is None:
            scheme = "shuffled_negative"
            start = [int(rng.integers(min(0, d - p), max(0, d - p) + 1)) for d, p in zip(case_label.shape, patch_size)]
            image, label = erase_lesions(case_image, case_label, start, patch_size, rng, masked_value)
        else:
            image = crop(case_image, start, patch_size, masked_value)
            label = crop(case_label, start, patch_size, PATCH_MASKED)
    elif scheme in ("original_positive", "shuffled_negative"):
        box, _ = comps[rng.integers(len(comps))]
        start = start_around(box, patch_size, rng)
        if scheme == "original_positive":
            image = crop(case_image, start, patch_size, masked_value)
            label = crop(case_label, start, patch_size, PATCH_MASKED)
        else:
            image, label = erase_lesions(case_image, case_label, start, patch_size, rng, masked_value)
    else:  # shuffled_positive
        image, label = _negative_crop(case_image, case_label, patch_size, rng, masked_value)
        box, mask = comps[rng.integers(len(comps))]
        image, label, _ = transplant_lesion(image, label, case_image[(slice(None),) + box], case_label[box], mask,
                                            rng)
    image = _mask_outside(image.astype(np.float32, copy=True), label, masked_value)
    return image, label.astype(np.int16), scheme


def _negative_crop(case_image: np.ndarray, case_label: np.ndarray, patch_size, rng, masked_value: float):
    """A lesion-free liver crop (image, label); where the case has none, a random crop with its lesions erased."""
    start = negative_start(case_label, patch_size, rng)
    if start is None:
        start = [int(rng.integers(min(0, d - p), max(0, d - p) + 1)) for d, p in zip(case_label.shape, patch_size)]
        return erase_lesions(case_image, case_label, start, patch_size, rng, masked_value)
    return crop(case_image, start, patch_size, masked_value), crop(case_label, start, patch_size, PATCH_MASKED)


def sample_hard_case_patch(case_image: np.ndarray, case_label: np.ndarray, patch_size: Sequence[int], rng,
                           box: Tuple[slice, ...], mask: np.ndarray, shuffled: bool, masked_value: float = 0.0
                           ) -> Tuple[np.ndarray, np.ndarray]:
    """One UNet-patch training patch around a hard case (UNet-whole's FP or FN, see ``training.hard_cases``).

    Parameters
    ----------
    case_image, case_label : as in :func:`sample_training_patch` (the reference labels of the case)
    box, mask : the hard case's bounding box (slices of the case grid) and its voxels in that box
    shuffled : False: a crop at a random offset that keeps the box inside (``original``); True: the hard case's
        voxels, image and reference labels together, transplanted onto lesion-free liver of a negative crop of the
        same case (``shuffled``), as :func:`transplant_lesion` does for lesions

    Returns
    -------
    image (C, pz, py, px) float32 and label (pz, py, px) int16, outside-liver voxels masked. The labels are the
    reference's: an FP region is liver (7), an FN lesion keeps its type.
    """
    patch_size = tuple(int(p) for p in patch_size)
    if not shuffled:
        start = start_around(box, patch_size, rng)
        image = crop(case_image, start, patch_size, masked_value)
        label = crop(case_label, start, patch_size, PATCH_MASKED)
    else:
        image, label = _negative_crop(case_image, case_label, patch_size, rng, masked_value)
        image, label, _ = transplant_lesion(image, label, case_image[(slice(None),) + tuple(box)],
                                            case_label[tuple(box)], np.asarray(mask, bool), rng)
    image = _mask_outside(image.astype(np.float32, copy=True), label, masked_value)
    return image, label.astype(np.int16)
