"""Lesion shuffle's primitives (Wang et al., the cascade, Sec. III-B) and the reclassification patches of one lesion.

Lesion shuffle cuts liver patches around a lesion or transplants the lesion (its voxels, all channels) onto
lesion-free liver of the same case. Reclassification applies UNet-patch on such patches of each lesion proposal
(:func:`make_reclassification_patches`, used by :mod:`nnunet_liver.postprocessing.reclassify`); UNet-patch's
training patches are cut by the four schemes of :mod:`nnunet_liver.training.shuffle`, built on the same primitives
(:func:`crop`, :func:`start_around`, :func:`negative_start`, :func:`transplant_lesion`), so that UNet-patch is applied
on patches made the way it was trained on.

Arrays are (C, Z, Y, X) images (normalised intensities) and (Z, Y, X) labels or masks; patch sizes are (z, y, x)
voxels. Label maps use the patch scheme: 0 outside the liver, 1..6 lesion types, 7 liver. Inputs are never modified.

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans".
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from nnunet_liver.labels import LESION_IDS, PATCH_LIVER, PATCH_MASKED

__all__ = ["PLACEMENT_TRIES", "crop", "start_around", "negative_start", "transplant_lesion",
           "make_reclassification_patches"]

#: random placements tried before the best one is taken (lesion-free crops, transplant offsets, texture shifts)
PLACEMENT_TRIES = 30


def crop(array: np.ndarray, start: Sequence[int], size: Sequence[int], pad_value=0) -> np.ndarray:
    """Crop the last ``len(size)`` axes of ``array`` at ``start`` (may lie outside), padding with ``pad_value``."""
    nd = len(size)
    lead = array.shape[:-nd]
    out = np.full(lead + tuple(size), pad_value, dtype=array.dtype)
    src, dst = [], []
    for s, n, dim in zip(start, size, array.shape[-nd:]):
        lo, hi = max(s, 0), min(s + n, dim)
        if hi <= lo:
            return out
        src.append(slice(lo, hi))
        dst.append(slice(lo - s, hi - s))
    out[(Ellipsis, *dst)] = array[(Ellipsis, *src)]
    return out


def start_around(box: Tuple[slice, ...], patch_size, rng) -> List[int]:
    """Random patch start keeping ``box`` inside the patch (centred on the box where it does not fit)."""
    start = []
    for sl, p in zip(box, patch_size):
        lo, hi = sl.start, sl.stop
        if hi - lo <= p:
            start.append(int(rng.integers(hi - p, lo + 1)))
        else:
            start.append((lo + hi) // 2 - p // 2)
    return start


def negative_start(label: np.ndarray, patch_size, rng, tries: int = PLACEMENT_TRIES) -> Optional[List[int]]:
    """Start of a patch centred on a random liver voxel that holds no lesion voxel, or None."""
    liver = np.argwhere(label == PATCH_LIVER)
    if len(liver) == 0:
        return None
    lesion = np.isin(label, LESION_IDS)
    for _ in range(tries):
        c = liver[rng.integers(len(liver))]
        start = [int(ci) - p // 2 + int(rng.integers(-(p // 4), p // 4 + 1)) for ci, p in zip(c, patch_size)]
        if not crop(lesion, start, patch_size, False).any():
            return start
    return None


def transplant_lesion(image: np.ndarray, label: np.ndarray, src_image: np.ndarray, src_label: np.ndarray,
                      src_mask: np.ndarray, rng, target: Optional[np.ndarray] = None, tries: int = PLACEMENT_TRIES):
    """Paste a lesion into a patch, onto target voxels where possible.

    Parameters
    ----------
    image, label : (C, Z, Y, X) float, (Z, Y, X) int
        The patch (not modified).
    src_image, src_label, src_mask : (C, z, y, x), (z, y, x), (z, y, x) bool
        The lesion's box: intensities, labels and its voxels. Cropped centrally where larger than the patch.
    target : (Z, Y, X) bool, optional
        Where the lesion should land (default: liver voxels of ``label``). The offset with most lesion voxels on
        the target among ``tries`` random offsets is used (the first with all of them wins).

    Returns
    -------
    image, label, lesion_mask (Z, Y, X) bool : the patch with the lesion's voxels and labels copied in, and where.
    """
    shape = label.shape
    sizes = [min(a, b) for a, b in zip(src_mask.shape, shape)]
    cut = tuple(slice((a - s) // 2, (a - s) // 2 + s) for a, s in zip(src_mask.shape, sizes))
    src_image, src_label, src_mask = src_image[(slice(None),) + cut], src_label[cut], src_mask[cut]
    target = (label == PATCH_LIVER) if target is None else target
    best, best_hit = None, -1
    for _ in range(tries):
        off = [int(rng.integers(0, n - s + 1)) for n, s in zip(shape, sizes)]
        region = tuple(slice(o, o + s) for o, s in zip(off, sizes))
        hit = int(np.count_nonzero(target[region] & src_mask))
        if hit > best_hit:
            best, best_hit = region, hit
        if hit == np.count_nonzero(src_mask):
            break
    image, label = image.copy(), label.copy()
    where = np.zeros(shape, bool)
    where[best] = src_mask
    image[:, where] = src_image[:, src_mask]
    label[where] = src_label[src_mask]
    return image, label, where


def make_reclassification_patches(image: np.ndarray, liver_mask: np.ndarray, lesion_mask: np.ndarray, n: int = 10,
                                  patch_size: Sequence[int] = (16, 128, 128), rng=None, masked_value: float = 0.0
                                  ) -> Tuple[np.ndarray, np.ndarray]:
    """N patches of one lesion proposal for UNet-patch: half original positives, half shuffled positives.

    Parameters
    ----------
    image : (C, Z, Y, X) float32
        Normalised case image (the patch model's input normalisation).
    liver_mask : (Z, Y, X) bool
        Predicted liver (lesions included, e.g. labels 1..8 of the whole-CT model).
    lesion_mask : (Z, Y, X) bool
        The lesion proposal's voxels (non-empty).
    n : int
        Number of patches; ``ceil(n / 2)`` original positives (random offsets keeping the lesion's box inside the
        patch), the rest shuffled positives (the lesion's voxels transplanted onto lesion-free liver of the same
        case, ``liver_mask & ~lesion_mask``, in a crop that avoids the original lesion where possible).
    patch_size : (pz, py, px)
    rng : numpy Generator or int seed, optional
    masked_value : float
        Image value outside the liver (and outside the transplanted lesion).

    Returns
    -------
    patches : (N, C, pz, py, px) float32
    lesion_masks : (N, pz, py, px) bool
        Where the lesion (original or transplanted) lies in each patch.
    """
    rng = np.random.default_rng(rng)
    image = np.asarray(image)
    liver_mask = np.asarray(liver_mask, bool)
    lesion_mask = np.asarray(lesion_mask, bool)
    if image.ndim != 4 or image.shape[1:] != liver_mask.shape or liver_mask.shape != lesion_mask.shape:
        raise ValueError(f"image must be (C, Z, Y, X) and masks (Z, Y, X) of the same grid; got image {image.shape}, "
                         f"liver_mask {liver_mask.shape}, lesion_mask {lesion_mask.shape}")
    if not lesion_mask.any():
        raise ValueError("lesion_mask is empty: nothing to reclassify")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    patch_size = tuple(int(p) for p in patch_size)
    box = ndimage.find_objects(lesion_mask.astype(np.uint8))[0]
    region = liver_mask | lesion_mask
    free = liver_mask & ~lesion_mask
    patches = np.empty((n, image.shape[0]) + patch_size, np.float32)
    masks = np.empty((n,) + patch_size, bool)
    n_orig = (n + 1) // 2
    for i in range(n):
        if i < n_orig or not free.any():
            start = start_around(box, patch_size, rng)
            img = crop(image, start, patch_size, masked_value).astype(np.float32)
            keep = crop(region, start, patch_size, False)
            les = crop(lesion_mask, start, patch_size, False)
        else:
            free_label = np.where(free, PATCH_LIVER, np.where(lesion_mask, LESION_IDS[0], PATCH_MASKED))
            start = negative_start(free_label, patch_size, rng) or start_around(
                ndimage.find_objects(free.astype(np.uint8))[0], patch_size, rng)
            img = crop(image, start, patch_size, masked_value).astype(np.float32)
            tgt = crop(free, start, patch_size, False)
            keep = crop(region, start, patch_size, False)
            lab = np.where(tgt, PATCH_LIVER, PATCH_MASKED).astype(np.int16)
            src_lab = np.where(lesion_mask[box], LESION_IDS[0], PATCH_MASKED).astype(np.int16)
            img, _, les = transplant_lesion(img, lab, image[(slice(None),) + box], src_lab, lesion_mask[box], rng,
                                            target=tgt)
            keep = keep | les  # (a crop that could not avoid the original lesion keeps it; it is not in `les`)
        img[:, ~keep] = masked_value
        patches[i], masks[i] = img, les
    return patches, masks
