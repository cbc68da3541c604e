"""Evaluate a folder of predictions against a folder of reference label maps.

Reference: ``REF_DIR/CASE.nii.gz``, 13-class label maps. Prediction, per case, either a label map
``PRED_DIR/CASE.nii.gz`` or the detector's output ``PRED_DIR/CASE_lesions.nii.gz`` (instance map) +
``PRED_DIR/CASE.json`` (lesion types and scores, patient class, LiverMax, and the lesion head's type probabilities
when UNet-patch has one). Spacing comes from the image headers.

Patient classes: reference = ``classify_patient`` of the reference lesions of at least ``min_ref_volume_cm3``
(the same floor as the lesion-level tables, so a patient whose only lesion is too small to count is "normal");
prediction = the detector JSON's ``patient.class`` when given (its own decision, "uncertain" included), else
``classify_patient`` of the predicted lesions of at least ``min_pred_volume_cm3``.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np

from nnunet_liver.labels import LESION_IDS, LIVER_REGION_IDS, NUM_CLASSES, id_of, name_of
from nnunet_liver.utils.io import InputError, read_image
from nnunet_liver.evaluation import metrics as M

__all__ = ["CaseEvaluation", "EvaluationResult", "Prediction", "evaluate_case", "evaluate_folders", "list_cases",
           "has_prediction", "read_prediction", "read_reference", "SCHEMA_VERSION"]

SCHEMA_VERSION = "1.0"
_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")


@dataclass
class CaseEvaluation:
    """The evaluation of one case: the lesion matching against the reference and both patient classes.

    (The detector's result for one case is :class:`nnunet_liver.inference.CaseResult`.)
    """
    case: str
    mode: str  # "labelmap" or "detector"
    match: object
    ref_lesions: list
    pred_lesions: list
    ref_class: str
    pred_class: str
    livermax: Optional[Dict[str, float]]
    dice_counts: Dict[str, Tuple[int, int, int]]
    #: the lesion head's type probabilities per predicted lesion id (detector outputs of a model with the head)
    type_probabilities: Optional[Dict[int, Dict[str, float]]] = None

    def head_scored_pairs(self) -> List[Tuple[Dict[str, float], str]]:
        """(the lesion head's probabilities, reference type) of every matched pair (TP and FL) whose prediction has
        them."""
        if not self.type_probabilities:
            return []
        ref = {l.id: l for l in self.ref_lesions}
        return [(self.type_probabilities[p], ref[r].type) for r, p in self.match.pairs
                if self.type_probabilities.get(p) is not None]

    def lesion_rows(self) -> List[dict]:
        """One row per reference lesion and per unpaired prediction: outcome TP, FL, FN, FP or ignored; ``fn_merged``
        marks an FN that overlaps a prediction matched to another reference lesion (see ``match``)."""
        m = self.match
        ref = {l.id: l for l in self.ref_lesions}
        pred = {l.id: l for l in self.pred_lesions}
        paired = dict(m.pairs)
        merged = set(m.merged_reference)
        rows = []

        def row(r, p, outcome):
            return {"case": self.case, "outcome": outcome, "fn_merged": outcome == "FN" and r.id in merged,
                    "ref_id": r.id if r else None,
                    "ref_type": r.type if r else None, "ref_volume_cm3": r.volume_cm3 if r else None,
                    "ref_diameter_mm": r.diameter_mm if r else None, "pred_id": p.id if p else None,
                    "pred_type": p.type if p else None, "pred_volume_cm3": p.volume_cm3 if p else None,
                    "score": p.score if p else None}
        for rid, r in ref.items():
            if rid in paired:
                p = pred[paired[rid]]
                rows.append(row(r, p, "TP" if r.type == p.type else "FL"))
            else:
                rows.append(row(r, None, "ignored" if rid in m.ignored_reference else "FN"))
        for pid in m.unmatched_prediction:
            rows.append(row(None, pred[pid], "FP"))
        for pid in m.ignored_prediction:
            rows.append(row(None, pred[pid], "ignored"))
        return rows

    def row(self) -> dict:
        m = self.match
        d = {"case": self.case, "mode": self.mode, "ref_lesions": len(self.ref_lesions),
             "pred_lesions": len(self.pred_lesions), "TP": m.tp, "FL": m.fl, "FP": m.fp, "FN": m.fn,
             "FN_merged": len(m.merged_reference), "ref_class": self.ref_class, "pred_class": self.pred_class}
        for k, (tp, fp, fn) in self.dice_counts.items():
            d[f"dice_{k}"] = M.dice_from_counts(tp, fp, fn)
        return d


@dataclass
class EvaluationResult:
    """The evaluation of a folder: the settings, every case, and the tables of the papers (``summary.json`` is
    :meth:`to_dict`).

    ``lesion``: Wang et al.'s lesion table, rows per type, "All" and "Malign"; ``reference_counts``: reference lesions
    per type and size stratum (Table I); ``strata``: lesion rows per size stratum (``--strata``); ``patient``:
    patient-level malignancy and class accuracy; ``auc``: LiverMax's per-type AUC (detector outputs only); ``froc``
    and ``average_precision``: from the detections' scores, when every detection has one; ``dice``: per structure.
    """
    settings: dict
    cases: List[CaseEvaluation] = field(default_factory=list)
    lesion: Dict[str, M.LesionRow] = field(default_factory=dict)
    reference_counts: Dict[str, Dict[str, int]] = field(default_factory=dict)
    strata: Optional[Dict[str, M.LesionRow]] = None
    patient: Optional[M.PatientTable] = None
    auc: Optional[M.AUCTable] = None
    #: LIDIA's per-type one-vs-rest AUC of the lesion head's probabilities over the matched lesions (detector outputs
    #: of a UNet-patch with the lesion head only; absent from summary.json otherwise)
    lesion_head_auc: Optional[M.AUCTable] = None
    froc: Optional[M.FROCResult] = None
    average_precision: Optional[float] = None
    dice: Dict[str, M.DiceSummary] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = self._to_dict()
        if self.lesion_head_auc is not None:
            out["lesion_head_auc"] = self.lesion_head_auc.to_dict()
        return out

    def _to_dict(self) -> dict:
        return {"schema_version": SCHEMA_VERSION, "settings": self.settings,
                "lesion": {k: r.to_dict() for k, r in self.lesion.items()},
                "reference_counts": self.reference_counts,
                "strata": None if self.strata is None else {k: r.to_dict() for k, r in self.strata.items()},
                "patient": {} if self.patient is None else self.patient.to_dict(),
                "auc": None if self.auc is None else self.auc.to_dict(),
                "froc": None if self.froc is None else self.froc.to_dict(),
                "average_precision": self.average_precision, "dice": {k: d.to_dict() for k, d in self.dice.items()},
                "per_case": [c.row() for c in self.cases]}

    def __str__(self) -> str:
        a = self.lesion.get("All")
        counts = "" if a is None else f", TP={a.tp}, FL={a.fl}, FP={a.fp}, FN={a.fn}"
        return f"EvaluationResult({len(self.cases)} cases{counts})"


def _case_id(name: str) -> Optional[str]:
    for s in _SUFFIXES:
        if name.endswith(s):
            return name[: -len(s)]
    return None


def list_cases(ref_dir: str) -> List[Tuple[str, str]]:
    """Sorted ``(case id, path)`` of the reference label maps in ``ref_dir``."""
    if not os.path.isdir(ref_dir):
        raise InputError(f"{ref_dir}: reference folder not found")
    out = []
    for name in sorted(os.listdir(ref_dir)):
        cid = _case_id(name)
        if cid and not name.startswith("."):
            out.append((cid, os.path.join(ref_dir, name)))
    if not out:
        raise InputError(f"{ref_dir}: no reference label maps (CASE.nii.gz) found")
    return out


def has_prediction(pred_dir: str, case: str) -> bool:
    """Whether ``pred_dir`` holds a prediction of ``case`` that :func:`read_prediction` would read."""
    try:
        _find_prediction(pred_dir, case)
    except InputError:
        return False
    return True


def _find_prediction(pred_dir: str, case: str) -> Tuple[str, str, Optional[str]]:
    for s in _SUFFIXES:
        inst, js = os.path.join(pred_dir, case + "_lesions" + s), os.path.join(pred_dir, case + ".json")
        if os.path.isfile(inst) and os.path.isfile(js):
            return "detector", inst, js
    for s in _SUFFIXES:
        p = os.path.join(pred_dir, case + s)
        if os.path.isfile(p):
            return "labelmap", p, None
    raise InputError(f"{os.path.join(pred_dir, case + '.nii.gz')}: no prediction for case {case} "
                     f"(expected CASE.nii.gz or CASE_lesions.nii.gz + CASE.json)")


def _check_geometry(ref_img, pred_img, ref_path, pred_path) -> None:
    problems = []
    if ref_img.GetSize() != pred_img.GetSize():
        problems.append(f"size {pred_img.GetSize()} vs {ref_img.GetSize()}")
    if not np.allclose(ref_img.GetSpacing(), pred_img.GetSpacing(), rtol=1e-4, atol=1e-4):
        problems.append(f"spacing {tuple(round(v, 4) for v in pred_img.GetSpacing())} vs "
                        f"{tuple(round(v, 4) for v in ref_img.GetSpacing())}")
    if not np.allclose(ref_img.GetOrigin(), pred_img.GetOrigin(), atol=1e-2):
        problems.append(f"origin {tuple(round(v, 2) for v in pred_img.GetOrigin())} vs "
                        f"{tuple(round(v, 2) for v in ref_img.GetOrigin())}")
    if not np.allclose(ref_img.GetDirection(), pred_img.GetDirection(), atol=1e-4):
        problems.append("direction differs")
    if problems:
        raise InputError(f"{pred_path}: geometry does not match the reference {os.path.basename(ref_path)} "
                         f"({'; '.join(problems)})")


def _labels(arr: np.ndarray, path: str, allowed=range(NUM_CLASSES)) -> np.ndarray:
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.all(np.mod(arr, 1) == 0):
            raise InputError(f"{path}: label map holds non-integer values")
        arr = arr.astype(np.int32)
    vals = np.unique(arr)
    bad = sorted(set(vals.tolist()) - set(allowed))
    if bad:
        raise InputError(f"{path}: label values {bad[:8]} are outside the 13-class scheme 0..{NUM_CLASSES - 1}")
    return arr


def _read_json(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: cannot read detector JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(d, dict) or not isinstance(d.get("lesions"), list):
        raise InputError(f"{path}: detector JSON needs a 'lesions' list")
    return d


def _dice_counts(ref: np.ndarray, pred_types: np.ndarray, pred_full: Optional[np.ndarray]):
    from nnunet_liver.postprocessing.seg2det import lesion_foreground
    out = {"lesion": M.confusion_counts(lesion_foreground(ref), lesion_foreground(pred_types))[:3]}
    for i in LESION_IDS:
        out[name_of(i)] = M.confusion_counts(ref == i, pred_types == i)[:3]
    if pred_full is not None:
        lo, hi = LIVER_REGION_IDS[0], LIVER_REGION_IDS[-1]
        out["liver_region"] = M.confusion_counts((ref >= lo) & (ref <= hi), (pred_full >= lo) & (pred_full <= hi))[:3]
    return out


@dataclass
class Prediction:
    """One case's prediction read by :func:`read_prediction`, on the reference's grid."""
    mode: str  # "labelmap" or "detector"
    path: str
    lesions: list
    patient_class: str
    livermax: Optional[Dict[str, float]]
    types: np.ndarray  # lesion type per voxel (0 elsewhere)
    full: Optional[np.ndarray]  # the whole 13-class label map (label-map mode only)
    type_probabilities: Optional[Dict[int, Dict[str, float]]] = None  # the lesion head's, per lesion id


def read_prediction(case: str, pred_dir: str, ref_path: str, ref_img, spacing, min_pred_volume_cm3: float = 0.5
                    ) -> Prediction:
    """Read ``case``'s prediction from ``pred_dir`` (label map, or the detector's instance map + JSON), check its
    geometry against the reference image ``ref_img`` (read from ``ref_path``) and make its lesions.

    Raises InputError naming the file for a missing, malformed or misaligned prediction.
    """
    from nnunet_liver.postprocessing import classify_patient, lesions_from_instance_map, seg2det
    from nnunet_liver.postprocessing.patient import PATIENT_CLASSES, UNCERTAIN

    mode, pred_path, json_path = _find_prediction(pred_dir, case)
    pred, _, pred_img = read_image(pred_path, "label")
    _check_geometry(ref_img, pred_img, ref_path, pred_path)
    origin, direction = ref_img.GetOrigin(), ref_img.GetDirection()
    if mode == "labelmap":
        pred = _labels(pred, pred_path)
        pred_les = seg2det(pred, spacing, origin=origin, direction=direction)
        pred_class = classify_patient(pred_les, min_volume_cm3=min_pred_volume_cm3)
        return Prediction(mode, pred_path, pred_les, pred_class, None, pred, pred)
    d = _read_json(json_path)
    try:
        types = {int(l["id"]): l["type"] for l in d["lesions"]}
        scores = {int(l["id"]): l.get("score") for l in d["lesions"]}
        for t in types.values():
            id_of(t)
    except (KeyError, TypeError, ValueError) as e:
        raise InputError(f"{json_path}: malformed lesions entry ({e})") from None
    if not np.issubdtype(pred.dtype, np.integer) or pred.min() < 0:
        raise InputError(f"{pred_path}: lesion instance map must hold non-negative integers")
    try:
        pred_les = lesions_from_instance_map(pred, spacing, types, scores, origin=origin, direction=direction)
    except ValueError as e:
        raise InputError(f"{json_path}: {e}") from None
    patient = d.get("patient") or {}
    pred_class = patient.get("class") or classify_patient(pred_les, min_volume_cm3=min_pred_volume_cm3)
    if pred_class not in PATIENT_CLASSES + (UNCERTAIN,):
        raise InputError(f"{json_path}: patient.class {pred_class!r} is not one of "
                         f"{', '.join(PATIENT_CLASSES + (UNCERTAIN,))}")
    livermax = patient.get("livermax")
    if livermax is not None:
        try:
            livermax = {str(k): float(v) for k, v in livermax.items()}
        except (AttributeError, TypeError, ValueError):
            raise InputError(f"{json_path}: patient.livermax must map type names to numbers") from None
    pred_types = np.zeros(pred.shape, np.uint8)
    for les in pred_les:
        np.putmask(pred_types[les.slices], les.mask, np.uint8(les.label))
    probabilities = None
    if any("type_probabilities" in l for l in d["lesions"]):  # a UNet-patch with the lesion head
        try:
            probabilities = {int(l["id"]): None if l.get("type_probabilities") is None else
                             {str(k): float(v) for k, v in l["type_probabilities"].items()} for l in d["lesions"]}
        except (AttributeError, TypeError, ValueError):
            raise InputError(f"{json_path}: lesions' type_probabilities must map type names to numbers") from None
    return Prediction(mode, pred_path, pred_les, pred_class, livermax, pred_types, None, probabilities)


def read_reference(ref_path: str):
    """``(label map, spacing, image, lesions)`` of a reference 13-class label map (InputError for a bad file)."""
    from nnunet_liver.postprocessing import seg2det

    ref, spacing, ref_img = read_image(ref_path, "label")
    ref = _labels(ref, ref_path)
    return ref, spacing, ref_img, seg2det(ref, spacing, origin=ref_img.GetOrigin(), direction=ref_img.GetDirection())


def evaluate_case(case: str, ref_path: str, pred_dir: str, overlap: str = "any", min_ref_volume_cm3: float = 0.5,
                  min_pred_volume_cm3: float = 0.5) -> CaseEvaluation:
    """Evaluate one case (see the module docstring)."""
    from nnunet_liver.postprocessing import classify_patient, match

    ref, spacing, ref_img, ref_les = read_reference(ref_path)
    pred = read_prediction(case, pred_dir, ref_path, ref_img, spacing, min_pred_volume_cm3)
    m = match(ref_les, pred.lesions, min_ref_volume_cm3=min_ref_volume_cm3, min_pred_volume_cm3=min_pred_volume_cm3,
              overlap=overlap)
    ref_class = classify_patient(ref_les, min_volume_cm3=min_ref_volume_cm3)
    return CaseEvaluation(case, pred.mode, m, ref_les, pred.lesions, ref_class, pred.patient_class, pred.livermax,
                          _dice_counts(ref, pred.types, pred.full), pred.type_probabilities)


def evaluate_folders(ref_dir: str, pred_dir: str, overlap: str = "any", min_ref_volume_cm3: float = 0.5,
                     min_pred_volume_cm3: float = 0.5, strata: bool = False, progress: bool = False
                     ) -> EvaluationResult:
    """Evaluate every reference case in ``ref_dir`` against ``pred_dir``; returns the tables of the papers."""
    from nnunet_liver.postprocessing import parse_overlap

    try:
        parse_overlap(overlap)
    except ValueError as e:
        raise InputError(f"--overlap: {e}") from None
    if not os.path.isdir(pred_dir):
        raise InputError(f"{pred_dir}: prediction folder not found")
    cases = list_cases(ref_dir)
    settings = {"ref_dir": os.path.abspath(ref_dir), "pred_dir": os.path.abspath(pred_dir), "overlap": overlap,
                "min_ref_volume_cm3": min_ref_volume_cm3, "min_pred_volume_cm3": min_pred_volume_cm3}
    res = EvaluationResult(settings=settings)
    it = cases
    if progress:
        from tqdm import tqdm
        it = tqdm(cases, desc="evaluating", unit="case")
    for cid, path in it:
        res.cases.append(evaluate_case(cid, path, pred_dir, overlap, min_ref_volume_cm3, min_pred_volume_cm3))
    _aggregate(res, min_ref_volume_cm3, strata)
    return res


def _aggregate(res: EvaluationResult, min_ref: float, strata: bool) -> None:
    cs = res.cases
    res.lesion = M.lesion_table(c.match for c in cs)
    res.reference_counts = M.reference_counts_table((c.ref_lesions for c in cs), min_ref)
    if strata:
        res.strata = M.strata_table(((c.match, {l.id: l.volume_cm3 for l in c.ref_lesions},
                                      {l.id: l.volume_cm3 for l in c.pred_lesions}) for c in cs),
                                    with_small=min_ref < M.SIZE_BINS_CM3[0])
    res.patient = M.patient_table((c.ref_class, c.pred_class) for c in cs)
    with_lm = [c for c in cs if c.livermax]
    if with_lm:
        res.auc = M.auc_table((c.livermax, {l.type for l in c.ref_lesions if l.volume_cm3 >= min_ref})
                              for c in with_lm)
    if any(c.type_probabilities for c in cs):
        res.lesion_head_auc = M.lesion_type_auc_table(pair for c in cs for pair in c.head_scored_pairs())
    scores, hits = [], []
    scored = all(l.score is not None for c in cs for l in c.pred_lesions) and any(c.pred_lesions for c in cs)
    if scored:
        for c in cs:
            matched = {p for _, p in c.match.pairs}
            ignored = set(c.match.ignored_prediction)
            for l in c.pred_lesions:
                if l.id not in ignored:
                    scores.append(l.score)
                    hits.append(l.id in matched)
        n_ref = sum(c.match.tp + c.match.fl + c.match.fn for c in cs)
        res.froc = M.froc(scores, hits, n_ref, len(cs))
        res.average_precision = M.average_precision(scores, hits, n_ref)
    for k in sorted({k for c in cs for k in c.dice_counts}):
        res.dice[k] = M.dice_summary([c.dice_counts[k] for c in cs if k in c.dice_counts])
