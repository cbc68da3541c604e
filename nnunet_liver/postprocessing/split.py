"""Instance-preserving high sensitivity: split a higher factor's lesion regions among the lowest factor's lesions.

The cascade of Wang et al. runs seg2det on each sensitivity factor's label map independently. Raising the factor
(f = 4) grows every lesion, and two neighbouring lesions that f = 1 separates can grow into one slice-overlap region:
seg2det then returns one lesion for both, the one-to-one match counts the second as missed, and the high sensitivity
finds fewer lesions than the low one. This module departs from the paper to prevent that: a higher factor's region
that holds two or more of the lowest factor's lesions is cut among them by a marker-controlled watershed
(scikit-image's ``segmentation.watershed``; markers = the lowest factor's lesions, mask = the region), so every voxel
the higher factor adds goes to the lesion it grew from. A region holding one or none of them is left as it is
(growth, or a lesion only the high sensitivity finds). Types are then voted per piece by seg2det, as for any lesion.

Choices:

- The watershed floods the Euclidean distance (in mm, the voxel spacing applied) to the nearest marker, not the
  lesion probability: the voxels the high factor adds between two lesions are those whose lesion probability is
  just below the f = 1 threshold, a flat valley where the probability would place the cut by noise; the distance
  puts it halfway, gives every added voxel to the nearest lesion, and needs only label maps.
- The flood uses seg2det's connectivity (the full 3 x 3 in-plane block and the two through-plane face
  neighbours), so every piece is one lesion by the slice-overlap rule and every voxel of the region is reached.
- Ties (a voxel at equal distance from two markers) go to the marker whose flood queued it first: scikit-image's
  flooding order is (value, then insertion order), markers are seeded in raster order, so the same input always
  gives the same pieces.
- A marker is the part of a lowest-factor lesion inside the region (with the usual factors the lowest factor's
  lesions lie inside the higher factor's regions; other label maps are accepted).
- The detector applies the same split one level lower too: the lowest reported factor's regions (f = 1) are cut among
  the lesions of a lower marker factor (0.25 by default), which keeps apart neighbours that f = 1 already joins
  (``LiverDetector(marker_factor=)``, ``--marker-factor``; DETECT.md).

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans".
"""
from __future__ import annotations

from typing import List, NamedTuple, Sequence, Tuple

import numpy as np

from nnunet_liver.postprocessing.seg2det import SLICE_OVERLAP_FOOTPRINT

__all__ = ["split_instances", "split_lesions", "SplitResult", "SLICE_OVERLAP_FOOTPRINT"]



def _check(high_map, markers, spacing) -> Tuple[np.ndarray, np.ndarray, Tuple[float, float, float]]:
    from nnunet_liver.postprocessing.seg2det import _check_spacing, lesion_foreground

    hm = np.asarray(high_map)
    mk = np.asarray(markers)
    if hm.ndim != 3:
        raise ValueError(f"high-factor label map must be 3D (Z, Y, X), got shape {hm.shape}")
    if mk.shape != hm.shape:
        raise ValueError(f"markers have shape {mk.shape}, the high-factor label map {hm.shape}")
    if not np.issubdtype(mk.dtype, np.integer):
        raise ValueError(f"markers must be an integer instance map (0 = none), got dtype {mk.dtype}")
    if mk.size and mk.min() < 0:
        raise ValueError("markers must be >= 0 (0 = no lesion, k > 0 = one low-factor lesion)")
    fg = hm if hm.dtype == bool else lesion_foreground(hm)
    return fg, mk, _check_spacing(spacing)


class SplitResult(NamedTuple):
    """``instances``: int32 (Z, Y, X), ids 1..``count``; ``regions_split``: how many regions were cut."""
    instances: np.ndarray
    count: int
    regions_split: int


def split_instances(high_map, markers, spacing: Sequence[float]) -> SplitResult:
    """The higher factor's lesions as an instance map, its regions split among the low-factor lesions they hold.

    Parameters
    ----------
    high_map : (Z, Y, X) label map of the higher factor (lesion ids 1..6) or a bool lesion mask
    markers : (Z, Y, X) integer instance map of the lowest factor's lesions (0 = none; e.g.
        ``seg2det.instance_map(lesions_f1, shape)``)
    spacing : (z, y, x) voxel size in mm (the watershed's distance)

    Returns
    -------
    SplitResult(instances int32 (Z, Y, X), count n, regions_split): ids 1..n, one per lesion; a slice-overlap region
    of the high map holding k >= 2 markers becomes k ids (one per marker, each piece holding its marker), any other
    region one id. The union of the instances is the high map's lesion foreground.
    """
    from scipy import ndimage
    from skimage.segmentation import watershed

    from nnunet_liver.postprocessing.seg2det import lesion_components

    fg, mk, sp = _check(high_map, markers, spacing)
    out = np.zeros(fg.shape, dtype=np.int32)
    n = cut = 0
    for box, m in lesion_components(fg):
        region_markers = np.where(m, mk[box], 0)
        ids = np.unique(region_markers)
        ids = ids[ids > 0]
        view = out[box]
        if len(ids) < 2:
            n += 1
            view[m] = n
            continue
        seeds = np.searchsorted(ids, region_markers).astype(np.int32) + 1  # 1..k in marker-id order
        seeds[region_markers == 0] = 0
        distance = ndimage.distance_transform_edt(seeds == 0, sampling=sp)
        pieces = watershed(distance, markers=seeds, mask=m, connectivity=SLICE_OVERLAP_FOOTPRINT)
        if np.any(pieces[m] == 0):  # cannot happen for a slice-overlap component; guards the invariant
            raise RuntimeError("watershed left voxels of a lesion region unassigned")
        view[m] = pieces[m] + n
        n += len(ids)
        cut += 1
    return SplitResult(out, n, cut)


def split_lesions(high_map, low_lesions: Sequence, spacing: Sequence[float], **seg2det_kwargs) -> List:
    """seg2det of ``high_map`` with its regions split among ``low_lesions`` (the lowest factor's seg2det lesions).

    ``seg2det_kwargs`` go to :func:`nnunet_liver.postprocessing.seg2det.seg2det` (images, probabilities, origin,
    direction, ...). When no region holds two or more low-factor lesions, the result is plain seg2det's.
    """
    from nnunet_liver.postprocessing.seg2det import instance_map, seg2det

    hm = high_map.detach().cpu().numpy() if hasattr(high_map, "detach") else np.asarray(high_map)
    markers = instance_map(low_lesions, hm.shape)
    split = split_instances(hm, markers, spacing)
    return seg2det(hm, spacing, instances=split.instances if split.regions_split else None, **seg2det_kwargs)
