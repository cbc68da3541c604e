"""Metric formulas: lesion-level tables (Wang et al. Tables I, II, V), patient-level malignancy (Table IV), AUC
(Mann-Whitney, Huang et al., LIDIA, Table 3), FROC and average precision, Dice.

Lesion-level conventions (they reproduce Wang et al. Table V exactly): for a type T,
``recall = TP / (TP + FN + FL)`` with FL the reference lesions of type T matched to another type,
``precision = TP / (TP + FP + FL_pred)`` with FL_pred the predictions of type T matched to a reference of another
type, and ``recall_rough = (TP + FL) / (TP + FL + FN)`` (detection regardless of type). For "All", FL_pred = FL.
For "Malign" the group is one class: a malignant reference matched to any malignant prediction is a TP.

Type names and malignancy come from :mod:`nnunet_liver.labels` (``LESION_NAMES``, ``is_malignant``). Results are
dataclasses with ``to_dict()`` (the JSON of ``summary.json``), as picai_eval's ``Metrics``: :class:`LesionRow`,
:class:`PatientTable`, :class:`AUCTable`, :class:`FROCResult`, :class:`DiceSummary`.

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans"; Huang et al., "LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative
Fusion and Asymmetric Contrastive Learning" (MICCAI).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.labels import LESION_NAMES, UNCERTAIN, is_malignant

__all__ = ["SIZE_BINS_CM3", "FROC_RATES", "LesionRow", "PatientTable", "TypeAUC", "AUCTable", "FROCResult",
           "DiceSummary", "lesion_row", "lesion_table", "size_bin", "strata_table", "reference_counts_table",
           "patient_table", "auc_mann_whitney", "auc_table", "lesion_type_auc_table", "froc", "average_precision", "dice_from_counts",
           "dice_summary", "confusion_counts"]

#: the lesion types whose rows make up "Malign", in id order
_MALIGNANT_TYPES: Tuple[str, ...] = tuple(t for t in LESION_NAMES if is_malignant(t))
#: lesion-size strata of Wang et al. Table I, in cm3: [0.5, 2), [2, 4), [4, 8), [8, 16), [16, 64), [64, inf)
SIZE_BINS_CM3: Tuple[float, ...] = (0.5, 2.0, 4.0, 8.0, 16.0, 64.0)
#: false positives per case at which FROC sensitivities are reported
FROC_RATES: Tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


def _ratio(num: float, den: float) -> Optional[float]:
    return None if den == 0 else float(num) / float(den)


@dataclass(frozen=True)
class LesionRow:
    """One row of a lesion-level table (a type, "All", "Malign" or a size stratum).

    ``fn_merged`` is the part of ``fn`` that overlaps a prediction matched to another reference lesion (see
    ``match``); the ratios are None where their denominator is 0.
    """
    fn: int
    fp: int
    fl: int
    tp: int
    fl_pred: int
    fn_merged: int
    precision: Optional[float]
    recall: Optional[float]
    recall_rough: Optional[float]

    def to_dict(self) -> Dict[str, object]:
        """The row with the paper's column names: FN, FP, FL, TP, FL_pred, FN_merged, precision, recall,
        recall_rough."""
        return {"FN": self.fn, "FP": self.fp, "FL": self.fl, "TP": self.tp, "FL_pred": self.fl_pred,
                "FN_merged": self.fn_merged, "precision": self.precision, "recall": self.recall,
                "recall_rough": self.recall_rough}


def lesion_row(tp: int, fl: int, fp: int, fn: int, fl_pred: Optional[int] = None, fn_merged: int = 0) -> LesionRow:
    """One table row: the counts plus precision, recall and recall-rough (module docstring); ``fl_pred`` defaults to
    ``fl`` (the "All" row)."""
    fl_pred = fl if fl_pred is None else fl_pred
    return LesionRow(fn=int(fn), fp=int(fp), fl=int(fl), tp=int(tp), fl_pred=int(fl_pred), fn_merged=int(fn_merged),
                     precision=_ratio(tp, tp + fp + fl_pred), recall=_ratio(tp, tp + fn + fl),
                     recall_rough=_ratio(tp + fl, tp + fl + fn))


def lesion_table(matches: Iterable) -> Dict[str, LesionRow]:
    """Rows per type, "All" and "Malign" from MatchResults (one per case)."""
    per = {t: {"tp": 0, "fl": 0, "fp": 0, "fn": 0, "fl_pred": 0, "fn_merged": 0} for t in LESION_NAMES}
    mal = {"tp": 0, "fl": 0, "fp": 0, "fn": 0, "fl_pred": 0, "fn_merged": 0}
    for m in matches:
        for t in LESION_NAMES:
            for k in per[t]:
                per[t][k] += m.per_type[t][k]
        for rt, pt in m.pair_types:
            r_mal, p_mal = is_malignant(rt), is_malignant(pt)
            if r_mal and p_mal:
                mal["tp"] += 1
            elif r_mal:
                mal["fl"] += 1
            elif p_mal:
                mal["fl_pred"] += 1
    for t in _MALIGNANT_TYPES:
        mal["fn"] += per[t]["fn"]
        mal["fn_merged"] += per[t]["fn_merged"]
        mal["fp"] += per[t]["fp"]
    rows = {t: lesion_row(**per[t]) for t in LESION_NAMES}
    tot = {k: sum(per[t][k] for t in LESION_NAMES) for k in ("tp", "fl", "fp", "fn", "fn_merged")}
    rows["All"] = lesion_row(**tot)
    rows["Malign"] = lesion_row(**mal)
    return rows


def size_bin(volume_cm3: float, edges: Sequence[float] = SIZE_BINS_CM3) -> str:
    """Name of a volume's stratum: "<0.5", "0.5-2", ..., "16-64", ">64"."""
    if volume_cm3 < edges[0]:
        return f"<{edges[0]:g}"
    for lo, hi in zip(edges[:-1], edges[1:]):
        if volume_cm3 < hi:
            return f"{lo:g}-{hi:g}"
    return f">{edges[-1]:g}"


def _bin_names(edges=SIZE_BINS_CM3, with_small=False) -> List[str]:
    names = [f"{lo:g}-{hi:g}" for lo, hi in zip(edges[:-1], edges[1:])] + [f">{edges[-1]:g}"]
    return ([f"<{edges[0]:g}"] if with_small else []) + names


def strata_table(cases: Iterable[Tuple[object, Dict[int, float], Dict[int, float]]],
                 with_small: bool = False) -> Dict[str, LesionRow]:
    """Lesion-level rows per size stratum (all types together).

    ``cases`` yields ``(MatchResult, {ref id: volume_cm3}, {pred id: volume_cm3})``. TP, FL and FN go to the
    reference lesion's stratum, FP to the prediction's.
    """
    def zero():
        return {"tp": 0, "fl": 0, "fp": 0, "fn": 0, "fn_merged": 0}

    acc = {b: zero() for b in _bin_names(with_small=with_small)}
    for m, ref_vol, pred_vol in cases:
        merged = set(m.merged_reference)
        for (rid, _), (rt, pt) in zip(m.pairs, m.pair_types):
            acc.setdefault(size_bin(ref_vol[rid]), zero())["tp" if rt == pt else "fl"] += 1
        for rid in m.unmatched_reference:
            row = acc.setdefault(size_bin(ref_vol[rid]), zero())
            row["fn"] += 1
            row["fn_merged"] += rid in merged
        for pid in m.unmatched_prediction:
            acc.setdefault(size_bin(pred_vol[pid]), zero())["fp"] += 1
    return {b: lesion_row(**c) for b, c in acc.items()}


def reference_counts_table(lesion_lists: Iterable[Sequence], min_volume_cm3: float = 0.5) -> Dict[str, Dict[str, int]]:
    """Wang et al.'s Table I: reference lesions per type x size stratum (+ Total), with "All" and "Malign" rows."""
    bins = _bin_names(with_small=min_volume_cm3 < SIZE_BINS_CM3[0])
    rows = {t: {b: 0 for b in bins + ["Total"]} for t in LESION_NAMES + ("All", "Malign")}
    for lesions in lesion_lists:
        for les in lesions:
            if les.volume_cm3 < min_volume_cm3:
                continue
            b = size_bin(les.volume_cm3)
            for row in (les.type, "All") + (("Malign",) if is_malignant(les.type) else ()):
                rows[row][b] += 1
                rows[row]["Total"] += 1
    return rows


@dataclass(frozen=True)
class PatientTable:
    """Patient-level figures (Wang et al. Table IV): ``cases``, of which ``uncertain`` (the predicted class is
    ``labels.UNCERTAIN``, left out of the rest) and ``certain``; ``correct_class`` and its ratios to the certain and to
    all cases; the malignancy confusion counts and sensitivity/specificity (None where undefined)."""
    cases: int
    uncertain: int
    certain: int
    correct_class: int
    class_accuracy: Optional[float]
    class_accuracy_all: Optional[float]
    malignant_tp: int
    malignant_fn: int
    malignant_tn: int
    malignant_fp: int
    malignancy_sensitivity: Optional[float]
    malignancy_specificity: Optional[float]

    def to_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


def patient_table(pairs: Iterable[Tuple[str, str]]) -> PatientTable:
    """Patient-level malignancy sensitivity/specificity and patient-class accuracy (Wang et al. Table IV, eq. 12).

    ``pairs`` yields ``(reference class, predicted class)``; a predicted "uncertain" is counted apart and left out
    of sensitivity, specificity and accuracy (as the paper's consensus rows count only the agreeing cases).
    """
    n = n_unc = correct = tp = fn = tn = fp = 0
    for ref, pred in pairs:
        n += 1
        if pred == UNCERTAIN:
            n_unc += 1
            continue
        correct += ref == pred
        r_mal, p_mal = bool(is_malignant(ref)), bool(is_malignant(pred))
        tp += r_mal and p_mal
        fn += r_mal and not p_mal
        tn += (not r_mal) and (not p_mal)
        fp += (not r_mal) and p_mal
    return PatientTable(cases=n, uncertain=n_unc, certain=n - n_unc, correct_class=correct,
                        class_accuracy=_ratio(correct, n - n_unc), class_accuracy_all=_ratio(correct, n),
                        malignant_tp=tp, malignant_fn=fn, malignant_tn=tn, malignant_fp=fp,
                        malignancy_sensitivity=_ratio(tp, tp + fn), malignancy_specificity=_ratio(tn, tn + fp))


def auc_mann_whitney(scores: Sequence[float], labels: Sequence[bool]) -> Optional[float]:
    """Area under the ROC curve as the Mann-Whitney U statistic / (n_pos n_neg); ties count one half.

    None when either class is empty.
    """
    from scipy.stats import rankdata

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return None
    ranks = rankdata(s)  # average ranks for ties
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


@dataclass(frozen=True)
class TypeAUC:
    """One lesion type's patient AUC (None when a class is empty) and its positive and negative cases."""
    auc: Optional[float]
    positives: int
    negatives: int

    def to_dict(self) -> Dict[str, object]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class AUCTable:
    """LiverMax's per-type AUC (Huang et al., LIDIA, Table 3): ``per_type`` in id order, the ``mean`` over the
    ``types`` whose AUC is defined, and the number of ``cases``."""
    per_type: Dict[str, TypeAUC]
    mean: Optional[float]
    types: int
    cases: int

    def to_dict(self) -> Dict[str, object]:
        """{type: {"auc", "positives", "negatives"}, ..., "mean": {"auc", "types"}, "cases": n}."""
        return {**{t: a.to_dict() for t, a in self.per_type.items()}, "mean": {"auc": self.mean, "types": self.types},
                "cases": self.cases}


def auc_table(cases: Iterable[Tuple[Dict[str, float], Sequence[str]]]) -> AUCTable:
    """Per-type patient AUC from LiverMax scores. ``cases`` yields ``(livermax {type: score}, reference types)``.

    A case is positive for a type when its reference holds at least one lesion of that type.
    """
    cases = list(cases)
    per_type = {}
    for t in LESION_NAMES:
        s = [lm.get(t, 0.0) for lm, _ in cases]
        y = [t in types for _, types in cases]
        per_type[t] = TypeAUC(auc=auc_mann_whitney(s, y), positives=int(sum(y)), negatives=len(y) - int(sum(y)))
    vals = [v.auc for v in per_type.values() if v.auc is not None]
    return AUCTable(per_type=per_type, mean=float(np.mean(vals)) if vals else None, types=len(vals), cases=len(cases))


def lesion_type_auc_table(lesions: Iterable[Tuple[Dict[str, float], str]]) -> AUCTable:
    """LIDIA's per-type one-vs-rest AUC of lesion-level type probabilities (the lesion head's). ``lesions`` yields
    ``(probabilities {type: p}, reference type)`` for every detected lesion matched to a reference lesion; for each
    type, a lesion is positive when its reference type is that type, its score the probability of that type.
    ``cases`` of the returned table counts the lesions."""
    lesions = list(lesions)
    per_type = {}
    for t in LESION_NAMES:
        s = [probs.get(t, 0.0) for probs, _ in lesions]
        y = [ref == t for _, ref in lesions]
        per_type[t] = TypeAUC(auc=auc_mann_whitney(s, y), positives=int(sum(y)), negatives=len(y) - int(sum(y)))
    vals = [v.auc for v in per_type.values() if v.auc is not None]
    return AUCTable(per_type=per_type, mean=float(np.mean(vals)) if vals else None, types=len(vals),
                    cases=len(lesions))


def _sweep(scores: Sequence[float], hits: Sequence[bool]):
    """Cumulative hits and false positives at every distinct score threshold (descending)."""
    s = np.asarray(scores, dtype=np.float64)
    h = np.asarray(hits, dtype=bool)
    order = np.argsort(-s, kind="mergesort")
    s, h = s[order], h[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1] if s.size else np.array([], int)
    return np.cumsum(h)[last], np.cumsum(~h)[last], s[last]


@dataclass(frozen=True)
class FROCResult:
    """FROC: the sensitivity reached at each rate of false positives per case (``sensitivity_at``, keys ``f"{r:g}"``)
    and their mean; the curve at every distinct score threshold (descending): ``fp_per_case``, ``sensitivity``,
    ``threshold``."""
    rates: List[float]
    sensitivity_at: Dict[str, float]
    mean_sensitivity: Optional[float]
    fp_per_case: List[float]
    sensitivity: List[float]
    threshold: List[float]
    num_references: int
    num_cases: int

    def to_dict(self) -> Dict[str, object]:
        return {"rates": list(self.rates), "sensitivity_at": dict(self.sensitivity_at),
                "mean_sensitivity": self.mean_sensitivity,
                "curve": {"fp_per_case": list(self.fp_per_case), "sensitivity": list(self.sensitivity),
                          "threshold": list(self.threshold)},
                "num_references": self.num_references, "num_cases": self.num_cases}


def froc(scores: Sequence[float], hits: Sequence[bool], num_references: int, num_cases: int,
         rates: Sequence[float] = FROC_RATES) -> FROCResult:
    """FROC: the best sensitivity reachable with at most ``r`` false positives per case, for each rate ``r``.

    Every prediction counts once, matched (hit, whatever its type) or not (false positive); matching is done once,
    before thresholding. Sensitivity = hits / ``num_references``.
    """
    tps, fps, thr = _sweep(scores, hits)
    sens = tps / num_references if num_references else np.zeros_like(tps, dtype=float)
    fpc = fps / max(num_cases, 1)
    at = {}
    for r in rates:
        ok = fpc <= r
        at[f"{r:g}"] = float(sens[ok].max()) if ok.any() and num_references else 0.0
    return FROCResult(rates=[float(r) for r in rates], sensitivity_at=at,
                      mean_sensitivity=float(np.mean(list(at.values()))) if at else None,
                      fp_per_case=fpc.tolist(), sensitivity=np.asarray(sens, float).tolist(), threshold=thr.tolist(),
                      num_references=int(num_references), num_cases=int(num_cases))


def average_precision(scores: Sequence[float], hits: Sequence[bool], num_references: int) -> Optional[float]:
    """AP = sum over thresholds of (recall step) x precision, recall relative to all reference lesions
    (lesions never detected cap the reachable recall below 1). None without reference lesions."""
    if num_references == 0:
        return None
    tps, fps, _ = _sweep(scores, hits)
    if tps.size == 0:
        return 0.0
    recall = tps / num_references
    precision = tps / (tps + fps)
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def confusion_counts(ref_mask: np.ndarray, pred_mask: np.ndarray) -> Tuple[int, int, int, int]:
    """(tp, fp, fn, tn) voxel counts of two bool masks."""
    r, p = np.asarray(ref_mask, bool), np.asarray(pred_mask, bool)
    tp = int(np.count_nonzero(r & p))
    fp = int(np.count_nonzero(p)) - tp
    fn = int(np.count_nonzero(r)) - tp
    return tp, fp, fn, int(r.size - tp - fp - fn)


def dice_from_counts(tp: int, fp: int, fn: int) -> Optional[float]:
    """2 TP / (2 TP + FP + FN); None when both masks are empty (nnU-Net reports NaN there)."""
    den = 2 * tp + fp + fn
    return None if den == 0 else 2.0 * tp / den


@dataclass(frozen=True)
class DiceSummary:
    """Dice of one structure over the cases: the ``mean`` of the per-case Dice over the ``cases`` where it is defined,
    and the ``pooled`` Dice of the summed voxel counts (``"global"`` in the JSON)."""
    mean: Optional[float]
    cases: int
    pooled: Optional[float]

    def to_dict(self) -> Dict[str, object]:
        return {"mean": self.mean, "cases": self.cases, "global": self.pooled}


def dice_summary(counts: Sequence[Tuple[int, int, int]]) -> DiceSummary:
    """:class:`DiceSummary` of per-case ``(tp, fp, fn)`` voxel counts."""
    per = [dice_from_counts(*c) for c in counts]
    vals = [v for v in per if v is not None]
    tot = np.sum(counts, axis=0)
    return DiceSummary(mean=float(np.mean(vals)) if vals else None, cases=len(vals),
                       pooled=dice_from_counts(*[int(v) for v in tot]))
