"""match: one-to-one lesion correspondence between two detection sets (Wang et al., eq. 6-7).

Candidate pairs overlap by the chosen criterion: ``"any"`` (at least one shared voxel, as in Wang et al.),
``"iou:X"`` (IoU > X; picai_eval and nnDetection use 0.1, LiTS 0.5) or ``"dice:X"`` (Dice > X). The one-to-one
assignment (Hungarian, ``scipy.optimize.linear_sum_assignment``) maximises the total of the criterion's own measure:
shared voxels for ``"any"``, IoU or Dice otherwise. Matched pairs are TP when the types agree, FL (false label)
otherwise; unmatched reference lesions are FN, unmatched predictions FP. An FN that overlaps a prediction is
"merged" (``merged_reference``, ``per_type[T]["fn_merged"]``): the prediction went to another reference lesion,
typically a neighbour whose detection swallowed it (one detection for two lesions). The count is a diagnosis of
the FN, not another kind of error: every merged FN is also counted in ``fn``.

Size floor (Wang et al., Table I): reference lesions below ``min_ref_volume_cm3`` take no part in the assignment;
a prediction left unmatched that overlaps such a small reference lesion is ignored (it found a real, if tiny,
lesion), and so is an unmatched prediction below ``min_pred_volume_cm3``.

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Sequence, Tuple

import numpy as np

from nnunet_liver.labels import LESION_NAMES

__all__ = ["MatchResult", "match", "parse_overlap", "overlap_matrix"]


def parse_overlap(overlap: str) -> Tuple[str, float]:
    """``"any"`` -> ("any", 0); ``"iou:0.1"`` -> ("iou", 0.1); ``"dice:0.5"`` -> ("dice", 0.5)."""
    s = str(overlap).strip().lower()
    if s == "any":
        return "any", 0.0
    kind, _, value = s.partition(":")
    try:
        thr = float(value)
    except ValueError:
        thr = -1.0
    if kind not in ("iou", "dice") or not 0.0 <= thr < 1.0:
        raise ValueError(f"overlap must be 'any', 'iou:X' or 'dice:X' with 0 <= X < 1, got {overlap!r}")
    return kind, thr


@dataclass
class MatchResult:
    """Counts over all types plus per type; ids are the lesions' ``id``.

    ``per_type[name]`` holds ``tp``, ``fl``, ``fn`` and ``fn_merged`` (FN overlapping a prediction that was matched
    to another reference lesion) counted by the reference lesion's type, ``fp`` and ``fl_pred`` (predictions of this
    type matched to a reference of another type) by the predicted type.
    """
    tp: int = 0
    fl: int = 0
    fp: int = 0
    fn: int = 0
    per_type: Dict[str, Dict[str, int]] = field(default_factory=dict)
    pairs: List[Tuple[int, int]] = field(default_factory=list)
    pair_types: List[Tuple[str, str]] = field(default_factory=list)
    pair_overlap: List[float] = field(default_factory=list)
    unmatched_reference: List[int] = field(default_factory=list)
    merged_reference: List[int] = field(default_factory=list)  # the unmatched references that overlap a prediction
    unmatched_prediction: List[int] = field(default_factory=list)
    ignored_reference: List[int] = field(default_factory=list)
    ignored_prediction: List[int] = field(default_factory=list)
    overlap: str = "any"

    @property
    def recall(self) -> float:
        n = self.tp + self.fl + self.fn
        return float("nan") if n == 0 else self.tp / n

    @property
    def precision(self) -> float:
        n = self.tp + self.fl + self.fp
        return float("nan") if n == 0 else self.tp / n

    def to_dict(self) -> dict:
        return {"tp": self.tp, "fl": self.fl, "fp": self.fp, "fn": self.fn, "overlap": self.overlap,
                "per_type": {k: dict(v) for k, v in self.per_type.items()},
                "pairs": [list(p) for p in self.pairs], "pair_types": [list(p) for p in self.pair_types],
                "pair_overlap": list(self.pair_overlap),
                "unmatched_reference": list(self.unmatched_reference),
                "merged_reference": list(self.merged_reference),
                "unmatched_prediction": list(self.unmatched_prediction),
                "ignored_reference": list(self.ignored_reference),
                "ignored_prediction": list(self.ignored_prediction)}

    def __str__(self) -> str:
        return f"MatchResult(tp={self.tp}, fl={self.fl}, fp={self.fp}, fn={self.fn}, overlap={self.overlap})"


def _box_intersection(a, b):
    out = []
    for (a0, a1), (b0, b1) in zip(a.bbox, b.bbox):
        lo, hi = max(a0, b0), min(a1, b1)
        if lo >= hi:
            return None
        out.append((lo, hi))
    return out


def overlap_matrix(reference: Sequence, prediction: Sequence) -> np.ndarray:
    """Shared voxel counts, shape (len(reference), len(prediction)); uses the lesions' bbox masks.

    Pairs whose bounding boxes are disjoint are ruled out at once (vectorised), so only touching pairs cost a mask
    comparison: thousands of noise proposals against a few reference lesions stay cheap.
    """
    out = np.zeros((len(reference), len(prediction)), dtype=np.int64)
    if not len(reference) or not len(prediction):
        return out
    rb = np.array([r.bbox for r in reference], dtype=np.int64)  # (n, 3, 2) half-open
    pb = np.array([p.bbox for p in prediction], dtype=np.int64)  # (m, 3, 2)
    touching = ((np.maximum(rb[:, None, :, 0], pb[None, :, :, 0]) <
                 np.minimum(rb[:, None, :, 1], pb[None, :, :, 1])).all(axis=2))
    for i, j in zip(*np.nonzero(touching)):
        r, p = reference[i], prediction[j]
        box = _box_intersection(r, p)
        rs = tuple(slice(lo - r0, hi - r0) for (lo, hi), (r0, _) in zip(box, r.bbox))
        ps = tuple(slice(lo - p0, hi - p0) for (lo, hi), (p0, _) in zip(box, p.bbox))
        out[i, j] = int(np.count_nonzero(r.mask[rs] & p.mask[ps]))
    return out


def _measure(kind: str, inter: np.ndarray, nr: np.ndarray, np_: np.ndarray) -> np.ndarray:
    inter = inter.astype(float)
    if kind == "any":
        return inter
    if kind == "iou":
        return inter / np.maximum(nr[:, None] + np_[None, :] - inter, 1)
    return 2 * inter / np.maximum(nr[:, None] + np_[None, :], 1)


def _candidates(kind, thr, inter, measure):
    return inter > 0 if kind == "any" else (inter > 0) & (measure > thr)


def match(reference: Sequence, prediction: Sequence, min_ref_volume_cm3: float = 0.5,
          min_pred_volume_cm3: float = 0.5, overlap: str = "any") -> MatchResult:
    """Match two lesion lists on the same grid (see the module docstring).

    Parameters
    ----------
    reference, prediction : sequences of Lesion (``id``, ``type``, ``volume_cm3``, ``bbox``, ``mask``)
    min_ref_volume_cm3, min_pred_volume_cm3 : size floors in cm3 (0 keeps everything)
    overlap : "any" | "iou:X" | "dice:X"
    """
    from scipy.optimize import linear_sum_assignment

    kind, thr = parse_overlap(overlap)
    for what, lesions in (("reference", reference), ("prediction", prediction)):
        ids = [l.id for l in lesions]
        if len(set(ids)) != len(ids):
            raise ValueError(f"{what} lesion ids are not unique: {ids}")
    kept = [r for r in reference if r.volume_cm3 >= min_ref_volume_cm3]
    small = [r for r in reference if r.volume_cm3 < min_ref_volume_cm3]
    res = MatchResult(overlap=str(overlap))
    res.per_type = {t: {"tp": 0, "fl": 0, "fp": 0, "fn": 0, "fl_pred": 0, "fn_merged": 0} for t in LESION_NAMES}
    res.ignored_reference = [r.id for r in small]

    pred = list(prediction)
    inter = overlap_matrix(kept, pred)
    nr = np.array([r.num_voxels for r in kept], dtype=float)
    npv = np.array([p.num_voxels for p in pred], dtype=float)
    measure = _measure(kind, inter, nr, npv)
    cand = _candidates(kind, thr, inter, measure)
    matched_pred = set()
    matched_ref = set()
    if cand.any():
        weight = np.where(cand, measure, 0.0)
        rows, cols = linear_sum_assignment(weight, maximize=True)
        for i, j in sorted(zip(rows, cols), key=lambda t: (kept[t[0]].id, pred[t[1]].id)):
            if not cand[i, j]:
                continue
            r, p = kept[i], pred[j]
            matched_ref.add(i)
            matched_pred.add(j)
            res.pairs.append((r.id, p.id))
            res.pair_types.append((r.type, p.type))
            res.pair_overlap.append(float(measure[i, j]))
            if r.type == p.type:
                res.tp += 1
                res.per_type[r.type]["tp"] += 1
            else:
                res.fl += 1
                res.per_type[r.type]["fl"] += 1
                res.per_type[p.type]["fl_pred"] += 1
    for i, r in enumerate(kept):
        if i not in matched_ref:
            res.fn += 1
            res.per_type[r.type]["fn"] += 1
            res.unmatched_reference.append(r.id)
            if cand[i].any():  # its prediction went to another reference lesion (the assignment is maximal)
                res.per_type[r.type]["fn_merged"] += 1
                res.merged_reference.append(r.id)
    left = [j for j in range(len(pred)) if j not in matched_pred]
    if small and left:  # an unmatched prediction on a too-small reference lesion is not a false positive
        s_inter = overlap_matrix(small, [pred[j] for j in left])
        s_meas = _measure(kind, s_inter, np.array([r.num_voxels for r in small], float),
                          np.array([pred[j].num_voxels for j in left], float))
        on_small = _candidates(kind, thr, s_inter, s_meas).any(axis=0)
    else:
        on_small = np.zeros(len(left), dtype=bool)
    for j, hit_small in zip(left, on_small):
        p = pred[j]
        if hit_small or p.volume_cm3 < min_pred_volume_cm3:
            res.ignored_prediction.append(p.id)
            continue
        res.fp += 1
        res.per_type[p.type]["fp"] += 1
        res.unmatched_prediction.append(p.id)
    return res
