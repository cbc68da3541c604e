"""seg2det: individual lesions from a label map (Wang et al., eq. 4-5), with their measurements.

Connectivity (the slice-overlap rule): inside an axial slice, lesion voxels (labels 1..6, any mix of types) are
8-connected; components in neighbouring slices that share at least one (y, x) pixel are the same lesion. This is
3D labelling with a structuring element holding the full 3 x 3 in-plane block plus only the two through-plane face
neighbours. It is computed with cc3d on an interleaved volume: between slices z and z+1 we insert the slice
``fg[z] & fg[z+1]``; 26-connected labelling of that volume joins slice z to slice z+1 exactly through shared
pixels (a diagonal step into an inserted slice lands on a pixel that is already an in-plane neighbour in slice z or
z+1), so the original slices carry the slice-overlap components. Before labelling, the volume is cut recursively along
empty slices and between separate in-plane footprints, so only small boxes around the lesions are labelled
(seg2det then costs about as much as one plain ``cc3d.connected_components`` pass over the whole volume).

Other choices: lesion ids follow each lesion's first voxel in (z, y, x) raster order; ``diameter_mm`` is the
largest in-plane Feret diameter over the lesion's slices, measured between pixel corners (edge to edge).

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.labels import LESION_IDS, LESION_NAMES, majority_type, name_of

__all__ = ["Lesion", "seg2det", "instance_map", "lesion_mask", "lesions_from_instance_map", "lesion_foreground",
           "SLICE_OVERLAP_FOOTPRINT", "slice_overlap_components", "lesion_components",
           "max_axial_diameter_mm"]

@dataclass
class Lesion:
    """One 3D lesion. Coordinates are (z, y, x) voxel indices; lengths in mm, volumes in cm3.

    ``label`` is the lesion type's id (1..6); its name, :attr:`type`, is derived from it, so the two never disagree.
    ``mask`` is a bool array of the bounding-box shape holding the lesion's voxels; ``bbox`` is half-open
    ``((z0, z1), (y0, y1), (x0, x1))``. ``centroid_mm`` is (z, y, x) in mm: world coordinates (the SimpleITK
    physical point, reversed to z, y, x) when the image origin/direction are given, else ``index * spacing``.
    """
    id: int
    label: int
    volumes_cm3_by_type: Dict[str, float]
    volume_cm3: float
    num_voxels: int
    centroid_voxel: Tuple[float, float, float]
    centroid_mm: Tuple[float, float, float]
    bbox: Tuple[Tuple[int, int], Tuple[int, int], Tuple[int, int]]
    diameter_mm: float
    hu_median: Optional[Dict[str, float]] = None
    features: Optional[Dict[str, Optional[float]]] = None
    feature_phases: Optional[Dict[str, Optional[str]]] = None
    score: Optional[float] = None
    mean_probability: Optional[Dict[str, float]] = None
    mask: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    @property
    def type(self) -> str:
        """The lesion type's name (``"HCC"`` ... ``"Cyst"``), from :attr:`label`."""
        return name_of(self.label)

    @property
    def slices(self) -> Tuple[slice, slice, slice]:
        return tuple(slice(a, b) for a, b in self.bbox)

    @property
    def malignant(self) -> bool:
        from nnunet_liver.labels import is_malignant
        return is_malignant(self.label)

    def global_mask(self, shape: Sequence[int]) -> np.ndarray:
        """The lesion's voxels as a bool array of the full image ``shape`` (Z, Y, X)."""
        return lesion_mask(self, shape)

    def to_dict(self) -> dict:
        """JSON-ready dict of every field except ``mask``, with ``type`` after ``label``."""
        d = {}
        for k in self.__dataclass_fields__:
            if k != "mask":
                d[k] = getattr(self, k)
            if k == "label":
                d["type"] = self.type
        for k in ("volumes_cm3_by_type", "hu_median", "features", "feature_phases", "mean_probability"):
            d[k] = None if d[k] is None else dict(d[k])
        d["centroid_voxel"] = [float(v) for v in self.centroid_voxel]
        d["centroid_mm"] = [float(v) for v in self.centroid_mm]
        d["bbox"] = [[int(a), int(b)] for a, b in self.bbox]
        return d


def lesion_mask(lesion: Lesion, shape: Sequence[int]) -> np.ndarray:
    """Bool array of ``shape`` (Z, Y, X) that is True on ``lesion``'s voxels."""
    out = np.zeros(tuple(shape), dtype=bool)
    out[lesion.slices] = lesion.mask
    return out


def instance_map(lesions: Sequence[Lesion], shape: Sequence[int]) -> np.ndarray:
    """Paint lesions into a uint16 (Z, Y, X) instance map; voxel value = ``lesion.id`` (0 = no lesion)."""
    out = np.zeros(tuple(shape), dtype=np.uint16)
    for les in lesions:
        if not 0 < les.id < 65536:
            raise ValueError(f"lesion id {les.id} does not fit a uint16 instance map (1..65535)")
        np.putmask(out[les.slices], les.mask, np.uint16(les.id))
    return out


def lesion_foreground(label_map: np.ndarray) -> np.ndarray:
    """Bool (Z, Y, X): voxels labelled 1..6 (any lesion type)."""
    lm = np.asarray(label_map)
    if lm.dtype == np.uint8:
        return (lm - np.uint8(LESION_IDS[0])) < np.uint8(len(LESION_IDS))  # wraps 0 to 255: one compare
    return (lm >= LESION_IDS[0]) & (lm <= LESION_IDS[-1])


#: the slice-overlap rule as a structuring element (8-connected in-plane, face neighbours through-plane): the same
#: components as :func:`slice_overlap_components`, for flood fills such as the split's watershed
SLICE_OVERLAP_FOOTPRINT = np.zeros((3, 3, 3), dtype=bool)
SLICE_OVERLAP_FOOTPRINT[1] = True
SLICE_OVERLAP_FOOTPRINT[0, 1, 1] = SLICE_OVERLAP_FOOTPRINT[2, 1, 1] = True


def slice_overlap_components(fg: np.ndarray) -> Tuple[np.ndarray, int]:
    """Label the slice-overlap components of a bool (Z, Y, X) mask; returns (labels uint32, count).

    Labels are cc3d's (raster order of the interleaved volume); seg2det renumbers them.
    """
    import cc3d

    fg = np.asarray(fg, dtype=bool)
    Z = fg.shape[0]
    if Z == 1:
        labels, n = cc3d.connected_components(fg.view(np.uint8), connectivity=26,  # one slice: in-plane 8
                                              return_N=True)
        return labels, int(n)
    inter = np.empty((2 * Z - 1,) + fg.shape[1:], dtype=bool)
    inter[0::2] = fg
    np.logical_and(fg[:-1], fg[1:], out=inter[1::2])
    labels, n = cc3d.connected_components(inter.view(np.uint8), connectivity=26, return_N=True)
    return labels[0::2], int(n)


def lesion_components(fg: np.ndarray) -> List[Tuple[Tuple[slice, slice, slice], np.ndarray]]:
    """Slice-overlap components of a bool (Z, Y, X) mask as ``(bbox slices, bool mask of the bbox)``, unordered.

    Fast path for sparse lesions (a recursive XY-cut): voxels separated by an empty slice, or with separate
    8-connected in-plane footprints (projections along z), can never join, so the volume is split along both until
    no split is left, and only those small boxes are labelled.
    """
    out: List[Tuple[Tuple[slice, slice, slice], np.ndarray]] = []
    if fg.any():
        _split(np.asarray(fg, dtype=bool), (0, 0, 0), out)
    return out


def _runs(flags: np.ndarray) -> List[Tuple[int, int]]:
    d = np.diff(np.concatenate([[0], flags.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def _split(sub: np.ndarray, off, out) -> None:
    import cc3d
    from scipy import ndimage

    runs = _runs(sub.any(axis=(1, 2)))
    for a, b in runs:
        s = sub[a:b]
        footprint = s.any(axis=0)
        plab, n = cc3d.connected_components(footprint.view(np.uint8), connectivity=8, return_N=True)
        boxes = ndimage.find_objects(plab)
        whole = len(runs) == 1 and n == 1  # nothing left to split: label this box
        for k, (ys, xs) in enumerate(boxes, start=1):
            piece = s[:, ys, xs]
            if n > 1:
                piece = piece & (plab[ys, xs] == k)
            poff = (off[0] + a, off[1] + ys.start, off[2] + xs.start)
            if whole:
                _label_box(piece, poff, out)
            else:
                _split(piece, poff, out)


def _label_box(sub: np.ndarray, off, out) -> None:
    from scipy import ndimage

    labels, n = slice_overlap_components(sub)
    if n == 1:
        out.append((tuple(slice(o, o + d) for o, d in zip(off, sub.shape)), sub))
        return
    for j, box in enumerate(ndimage.find_objects(labels), start=1):
        if box is not None:
            out.append((tuple(slice(o + b.start, o + b.stop) for o, b in zip(off, box)), labels[box] == j))


def _centroid(m: np.ndarray, box) -> Tuple[float, float, float]:
    n = float(np.count_nonzero(m))
    out = []
    for axis, sl in enumerate(box):
        other = tuple(a for a in range(3) if a != axis)
        prof = np.count_nonzero(m, axis=other)
        out.append(float((prof * np.arange(m.shape[axis])).sum() / n + sl.start))
    return tuple(out)


def max_axial_diameter_mm(mask: np.ndarray, spacing: Sequence[float]) -> float:
    """Largest in-plane (axial) Feret diameter of a bool (z, y, x) mask, in mm, over all its slices.

    Pixels are squares: the distance between two pixels is taken between their farthest corners
    (``sqrt(((|dy|+1) sy)^2 + ((|dx|+1) sx)^2)``), so a single pixel measures its diagonal. For two rows the
    farthest pair uses each row's leftmost or rightmost pixel, so only those enter the pairwise search.
    """
    sy, sx = float(spacing[1]), float(spacing[2])
    m = np.asarray(mask, dtype=bool)
    nz, ny, nx = m.shape
    has = m.any(axis=2)
    if not has.any():
        return 0.0
    xmin = m.argmax(axis=2)
    xmax = nx - 1 - m[:, :, ::-1].argmax(axis=2)
    ys = np.concatenate([np.arange(ny), np.arange(ny)]).astype(np.float64)
    xs = np.concatenate([xmin, xmax], axis=1).astype(np.float64)  # (nz, 2ny)
    valid = np.concatenate([has, has], axis=1)
    dy2 = ((np.abs(ys[:, None] - ys[None, :]) + 1) * sy) ** 2  # (2ny, 2ny), same for every slice
    step = max(1, 2_000_000 // (4 * ny * ny))
    best = 0.0
    for z0 in range(0, nz, step):
        x = xs[z0:z0 + step]
        v = valid[z0:z0 + step]
        d2 = ((np.abs(x[:, :, None] - x[:, None, :]) + 1) * sx) ** 2 + dy2[None]
        d2 *= v[:, :, None] & v[:, None, :]
        best = max(best, float(d2.max()))
    return float(np.sqrt(best))


def _world(centroid_voxel, spacing, origin, direction):
    if origin is None:
        return tuple(float(c * s) for c, s in zip(centroid_voxel, spacing))
    idx_xyz = np.asarray(centroid_voxel[::-1], dtype=float) * np.asarray(spacing[::-1], dtype=float)
    d = np.eye(3) if direction is None else np.asarray(direction, dtype=float).reshape(3, 3)
    p = np.asarray(origin, dtype=float) + d @ idx_xyz
    return tuple(float(v) for v in p[::-1])


def _check_spacing(spacing) -> Tuple[float, float, float]:
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(np.isfinite(sp)) or min(sp) <= 0:
        raise ValueError(f"spacing must be three positive numbers (z, y, x) in mm, got {spacing}")
    return sp


def seg2det(label_map, spacing: Sequence[float], images: Optional[Mapping[str, np.ndarray]] = None,
            liver_mask: Optional[np.ndarray] = None, probabilities=None, origin=None, direction=None,
            ring_mm: float = 2.0, instances=None) -> List[Lesion]:
    """Individual lesions of a label map, by the slice-overlap rule, with a volume vote for the type.

    Parameters
    ----------
    label_map : array (Z, Y, X), integer, our 13-class ids (numpy or torch); organ labels are ignored
    spacing : (z, y, x) voxel size in mm
    images : {phase: (Z, Y, X) HU array}, optional
        phases "NC", "A", "V", "D" (any subset) on the label map's grid; gives per-phase median HU and, with the
        liver, the LI-RADS features (see :mod:`nnunet_liver.postprocessing.features`).
    liver_mask : bool (Z, Y, X), optional
        the liver (lesions included or not); default: labels 1..8 of ``label_map`` when images are given.
    probabilities : (14, Z, Y, X) numpy or torch, or a ``LesionProbabilities``, optional
        gives ``score`` (max probability of the lesion's own type inside it) and ``mean_probability`` per type;
        a :class:`nnunet_liver.postprocessing.sensitivity.LesionProbabilities` holds only the lesion voxels' values
        (the detector's clinical-size path) and gives the same numbers.
    origin, direction : SimpleITK-style (x, y, z) origin and 9-element direction, optional (world centroids).
    ring_mm : width of the border ring for the EC feature (mm).
    instances : integer (Z, Y, X), optional
        the lesions as an instance map (0 = none), used instead of the slice-overlap rule: every nonzero id is one
        lesion (e.g. :func:`nnunet_liver.postprocessing.split.split_instances`); its voxels must be lesion voxels
        of ``label_map``. Types, measurements and features are computed as for any lesion.

    Returns
    -------
    list of Lesion, ids 1..n ordered by each lesion's first voxel in (z, y, x) raster order.
    """
    from nnunet_liver.postprocessing.features import lesion_features, parenchyma_mask, present_phases

    lm = label_map.detach().cpu().numpy() if hasattr(label_map, "detach") else np.asarray(label_map)
    if lm.ndim != 3:
        raise ValueError(f"label_map must be 3D (Z, Y, X), got shape {lm.shape}")
    if not np.issubdtype(lm.dtype, np.integer):
        if not np.all(np.mod(lm, 1) == 0):
            raise ValueError("label_map must hold integer label ids")
        lm = lm.astype(np.int16)
    sp = _check_spacing(spacing)
    voxel_cm3 = sp[0] * sp[1] * sp[2] / 1000.0
    fg = lesion_foreground(lm)
    components = lesion_components(fg) if instances is None else _instance_components(instances, fg)
    if not components:
        return []

    if images is not None:
        for ph, im in images.items():
            if tuple(np.shape(im)) != lm.shape:
                raise ValueError(f"image of phase {ph} has shape {np.shape(im)}, label map {lm.shape}")
        phases = present_phases(images)
        parenchyma = parenchyma_mask(lm, liver_mask, fg)
        p_cache: Dict[str, float] = {}
    if probabilities is not None:
        if tuple(probabilities.shape[1:]) != lm.shape:
            raise ValueError(f"probabilities have shape {tuple(probabilities.shape)}, expected (14,) + {lm.shape}")

    lesions = []
    for gbox, m in components:
        types = lm[gbox][m]
        counts = np.bincount(types.astype(np.intp), minlength=LESION_IDS[-1] + 1)[LESION_IDS[0]:LESION_IDS[-1] + 1]
        first = np.unravel_index(int(np.argmax(m.ravel())), m.shape)
        order_key = tuple(int(f + b.start) for f, b in zip(first, gbox))
        lesions.append((order_key, gbox, m, counts))
    lesions.sort(key=lambda t: t[0])

    out: List[Lesion] = []
    for new_id, (_, gbox, m, counts) in enumerate(lesions, start=1):
        label = majority_type(dict(zip(LESION_IDS, counts.tolist())))
        nvox = int(counts.sum())
        cvox = _centroid(m, gbox)
        les = Lesion(
            id=new_id, label=int(label),
            volumes_cm3_by_type={nm: float(c * voxel_cm3) for nm, c in zip(LESION_NAMES, counts)},
            volume_cm3=float(nvox * voxel_cm3), num_voxels=nvox, centroid_voxel=cvox,
            centroid_mm=_world(cvox, sp, origin, direction),
            bbox=tuple((int(s.start), int(s.stop)) for s in gbox),
            diameter_mm=max_axial_diameter_mm(m, sp), mask=m)
        if images is not None:
            les.hu_median = {ph: float(np.median(np.asarray(images[ph])[gbox][m])) for ph in phases}
            les.features, les.feature_phases = lesion_features(
                les, images, parenchyma, sp, ring_mm=ring_mm, parenchyma_medians=p_cache, phases=phases)
        if probabilities is not None:
            _add_probabilities(les, probabilities)
        out.append(les)
    return out


def _instance_components(instances, fg: np.ndarray) -> List[Tuple[Tuple[slice, slice, slice], np.ndarray]]:
    """``(bbox slices, bool mask of the bbox)`` per nonzero id of an instance map whose ids lie on ``fg``."""
    from scipy import ndimage

    inst = np.asarray(instances)
    if inst.shape != fg.shape or not np.issubdtype(inst.dtype, np.integer):
        raise ValueError(f"instances must be an integer array of the label map's shape {fg.shape}, got "
                         f"{inst.dtype} {inst.shape}")
    if inst.size and inst.min() < 0:
        raise ValueError("instances must be >= 0 (0 = no lesion)")
    if np.any((inst > 0) & ~fg):
        raise ValueError("instances cover voxels that are not lesion voxels (labels 1..6) of the label map")
    return [(box, inst[box] == i) for i, box in enumerate(ndimage.find_objects(inst), start=1) if box is not None]


def _add_probabilities(les: Lesion, probabilities) -> None:
    if hasattr(probabilities, "lesion_values"):  # LesionProbabilities: only the lesion voxels were kept
        inside = probabilities.lesion_values(les.slices, les.mask)  # (6, n), the dense array's values and order
    else:
        sub = probabilities[(slice(LESION_IDS[0], LESION_IDS[-1] + 1),) + les.slices]
        sub = sub.detach().float().cpu().numpy() if hasattr(sub, "detach") else np.asarray(sub, dtype=np.float32)
        inside = sub[:, les.mask]  # (6, n)
    les.mean_probability = {nm: float(v) for nm, v in zip(LESION_NAMES, inside.mean(axis=1))}
    les.score = float(inside[LESION_IDS.index(les.label)].max())


def lesions_from_instance_map(instances, spacing: Sequence[float], types: Mapping[int, object],
                              scores: Optional[Mapping[int, Optional[float]]] = None, origin=None,
                              direction=None) -> List[Lesion]:
    """Lesions from an instance map (the detector's ``CASE_lesions.nii.gz``) and a type per instance id.

    Parameters
    ----------
    instances : integer (Z, Y, X); 0 = no lesion, every other value one lesion (not re-split by connectivity)
    types : {instance id: type name or label id}; every id present in ``instances`` must be listed
    scores : {instance id: score}, optional
    """
    inst = np.asarray(instances)
    sp = _check_spacing(spacing)
    voxel_cm3 = sp[0] * sp[1] * sp[2] / 1000.0
    from scipy import ndimage
    from nnunet_liver.labels import id_of

    boxes = ndimage.find_objects(inst.astype(np.int64, copy=False) if inst.dtype.kind != "u" else inst)
    out = []
    for i, box in enumerate(boxes, start=1):
        if box is None:
            continue
        if i not in types:
            raise ValueError(f"instance id {i} is in the lesion map but has no type in the JSON")
        t = types[i]
        label = int(t) if isinstance(t, (int, np.integer)) else id_of(t)
        if label not in LESION_IDS:
            raise ValueError(f"instance id {i}: type {t!r} is not a lesion type")
        m = inst[box] == i
        nvox = int(m.sum())
        cvox = _centroid(m, box)
        out.append(Lesion(
            id=i, label=label,
            volumes_cm3_by_type={nm: (float(nvox * voxel_cm3) if nm == name_of(label) else 0.0)
                                 for nm in LESION_NAMES},
            volume_cm3=float(nvox * voxel_cm3), num_voxels=nvox, centroid_voxel=cvox,
            centroid_mm=_world(cvox, sp, origin, direction), bbox=tuple((int(s.start), int(s.stop)) for s in box),
            diameter_mm=max_axial_diameter_mm(m, sp),
            score=None if scores is None or scores.get(i) is None else float(scores[i]), mask=m))
    return out
