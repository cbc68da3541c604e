"""Training and applying a characterizer: features, patches, deep sub-models, logistic regressions, LI-RADS.

:func:`collect` reads cases once into the features table and (for deep sub-models) the lesion patches;
:func:`train_characterizer` fits everything; :func:`characterize` gives each lesion its probabilities and, for a
patient at risk, its LI-RADS suggestion. The command line (:mod:`~nnunet_liver.characterize.cli`) and the detector
hook (:mod:`~nnunet_liver.characterize.hook`) are thin layers over these.
"""
from __future__ import annotations

import csv
import os
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.characterize.characterizer import Characterizer, deep_probabilities, library_versions
from nnunet_liver.characterize.deep import SUBMODELS, DeepSettings
from nnunet_liver.characterize.lirads import CALL_THRESHOLD, lirads_category
from nnunet_liver.characterize.models import CRITERION_MODELS, MODEL_NAMES, cv_splits, fit_models, predict_models
from nnunet_liver.characterize.table import CRITERIA, FeatureSettings, lesion_rows
from nnunet_liver.utils.io import InputError

__all__ = ["AtRisk", "collect", "train_characterizer", "characterize", "OUTPUT_COLUMNS"]

#: what :func:`characterize` adds to the table
OUTPUT_COLUMNS = ("hcc_probability", "prob_APHE", "prob_NPW", "prob_EC", "criteria_source", "lirads_category",
                  "lirads_category_if_growth", "lirads_applies", "reason")


class AtRisk:
    """Which patients are at risk of HCC (LI-RADS applies to them only): everyone (``--at-risk``), the cases of a
    CSV (columns ``case``, ``at_risk`` = 1/0, yes/no, true/false), or nobody (the default)."""

    def __init__(self, everyone: bool = False, cases: Optional[Dict[str, bool]] = None, source: str = "none"):
        self.everyone, self.cases, self.source = bool(everyone), dict(cases or {}), source

    @classmethod
    def from_option(cls, value: Optional[str]) -> "AtRisk":
        """``None``: nobody; ``"all"``: everyone; else a CSV path."""
        if value is None:
            return cls()
        if value == "all":
            return cls(everyone=True, source="--at-risk (every patient)")
        if not os.path.isfile(value):
            raise InputError(f"{value}: at-risk CSV not found (columns case, at_risk)")
        out = {}
        with open(value, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not reader.fieldnames or not {"case", "at_risk"} <= set(reader.fieldnames):
                raise InputError(f"{value}: needs the columns case and at_risk")
            for row in reader:
                v = str(row["at_risk"]).strip().lower()
                if v not in ("1", "0", "yes", "no", "true", "false"):
                    raise InputError(f"{value}: at_risk of case {row['case']} is {row['at_risk']!r}; use 1/0, "
                                     f"yes/no or true/false")
                out[str(row["case"]).strip()] = v in ("1", "yes", "true")
        return cls(cases=out, source=os.path.basename(value))

    def __call__(self, case_id: str) -> bool:
        return self.everyone or self.cases.get(case_id, False)


def collect(cases: Iterable, settings: FeatureSettings, deep: Optional[DeepSettings] = None,
            truth: Optional[dict] = None, reference: bool = True, initial: bool = True, progress: bool = False):
    """(features table, {sub-model: normalised patches (N, C, Z, Y, X)} or {}) of every lesion of ``cases``.

    Patches are cut at nnU-Net's initial (larger) patch size for training (``initial``), else at the patch size.
    """
    import pandas as pd
    from tqdm import tqdm

    from nnunet_liver.characterize.patches import augmentation_params, extract_patch, normalize

    extractor = None
    if settings.radiomics:
        from nnunet_liver.characterize.radiomics import RadiomicsExtractor

        extractor = RadiomicsExtractor()
    rows: List[dict] = []
    patches: Dict[str, list] = {name: [] for name in (deep.phases if deep else {})}
    size = (augmentation_params(deep.patch_size)[2] if initial else deep.patch_size) if deep else None
    for case in tqdm(cases, desc="lesions", unit="case", disable=not progress):
        rows += lesion_rows(case, settings, extractor, (truth or {}).get(case.case_id), reference)
        for les in case.lesions:
            for name in patches:
                patches[name].append(normalize(extract_patch(case.images, les.mask, les.slices, case.spacing,
                                                             deep.phases[name], size, deep.spacing)))
    from nnunet_liver.characterize.table import features_table

    table = pd.DataFrame(rows) if rows else features_table([], FeatureSettings(radiomics=False))
    for column in ("hcc",) + tuple(CRITERIA):
        if column in table.columns:
            table[column] = table[column].astype("Int64")
    return table, {k: np.stack(v) if v else np.zeros((0,)) for k, v in patches.items()}


def train_characterizer(table, patches: Dict[str, np.ndarray], settings: FeatureSettings,
                        deep: Optional[DeepSettings] = None, primary: Optional[str] = None, seed: int = 0,
                        folds: int = 5, device: str = "cpu", source: Optional[dict] = None,
                        progress: bool = False) -> Tuple[Characterizer, object]:
    """Fit a characterizer on a labelled table (and patches for the deep sub-models).

    Returns ``(characterizer, training table with the fold of each lesion and the out-of-fold deep probabilities)``.
    """
    from nnunet_liver.characterize.deep import oof_and_folds

    table = table.copy()
    labelled = table["hcc"].notna()
    if not labelled.all():
        table = table[labelled].reset_index(drop=True)
        patches = {k: v[labelled.to_numpy()] for k, v in patches.items()}
    y = table["hcc"].astype(int).to_numpy()
    try:
        splits = cv_splits(y, table["case"].astype(str).tolist(), deep.folds if deep else folds, seed)
    except ValueError as e:
        raise InputError(f"training lesions: {e}") from None
    table["fold"] = -1
    for k, (_, te) in enumerate(splits):
        table.loc[te, "fold"] = k
    states = {}
    if deep is not None:
        labels = {name: table[col].astype("float64").to_numpy() if col in table.columns else
                  np.full(len(table), np.nan) for name, col in SUBMODELS.items()}
        oof, states = oof_and_folds(patches, labels, splits, deep, device, progress)
        for name, p in oof.items():
            table[f"p_{name}"] = p
    names = [n for n in MODEL_NAMES if deep is not None or "DLF" not in n] + list(CRITERION_MODELS)
    try:
        models = fit_models(table, names, settings.radiomics_phases, seed, len(splits))
    except ValueError as e:
        raise InputError(f"training lesions: {e}") from None
    if primary is None:
        primary = next(n for n in ("DLF+HF", "HF", "DLF", "RAD") if n in models)
    if primary not in models:
        raise InputError(f"--primary {primary}: not trained (the table lacks its features); trained: "
                         f"{', '.join(sorted(models))}")
    types = table["type"].value_counts().to_dict() if "type" in table.columns else {}
    summary = {"lesions": int(len(table)), "cases": int(table["case"].nunique()), "hcc": int(y.sum()),
               "non_hcc": int((1 - y).sum()), "types": {str(k): int(v) for k, v in types.items()},
               "criteria_labelled": {c: int(table[c].notna().sum()) for c in CRITERIA if c in table.columns}}
    training = {"summary": summary, "source": source or {}, "folds": len(splits), "seed": int(seed),
                "table_description": {"source": source or {}, "feature_settings": settings.to_dict()}}
    return Characterizer(models, primary, settings, deep, states, training, library_versions()), table


def characterize(characterizer: Characterizer, table, patches: Optional[Dict[str, np.ndarray]] = None,
                 at_risk: Optional[AtRisk] = None, device: str = "cpu"):
    """``table`` with the characterizer's outputs (:data:`OUTPUT_COLUMNS`, and ``hcc_probability_NAME`` per model).

    ``patches``: {sub-model: normalised patches} in the table's row order (needed for the deep probabilities).
    A lesion whose case lacks a phase a model needs gets no probability from it (``reason`` says which).
    """
    at_risk = at_risk or AtRisk()
    out = table.copy()
    if characterizer.deep_states:
        if patches is None:
            raise InputError("the characterizer has deep sub-models: give the images (a dataset), not only a table")
        for column, p in deep_probabilities(characterizer, patches, device).items():
            out[column] = p
    characterizer.check_columns(list(out.columns), "features table")
    columns = set(out.columns)
    probs = predict_models({n: m for n, m in characterizer.models.items() if set(m.features) <= columns}, out)
    for name, p in probs.items():
        if name not in CRITERION_MODELS:
            out[f"hcc_probability_{name}"] = p
    out["hcc_probability"] = probs[characterizer.primary]
    source = characterizer.criteria_source
    for crit in CRITERIA:
        column = f"p_{crit}" if source == "deep" else None
        p = out[column] if column in out.columns else probs.get(f"crit_{crit}")
        out[f"prob_{crit}"] = np.nan if p is None else p
    out["criteria_source"] = source
    reasons, cats, if_growth, applies = [], [], [], []
    for _, row in out.iterrows():
        present = set(str(row.get("phases", "")).split())
        gone = [p for p in characterizer.phases if p not in present]
        reasons.append(f"phase {', '.join(gone)} missing" if gone else "")
        calls = [row[f"prob_{c}"] for c in ("APHE", "NPW", "EC")]
        ok = at_risk(str(row["case"])) and np.isfinite(row.get("s", np.nan)) and all(np.isfinite(calls))
        applies.append(bool(at_risk(str(row["case"]))))
        if ok:
            r = lirads_category(float(row["s"]), calls[0] >= CALL_THRESHOLD, calls[1] >= CALL_THRESHOLD,
                                calls[2] >= CALL_THRESHOLD)
            cats.append(r.category)
            if_growth.append(r.category_if_growth)
        else:
            cats.append(None)
            if_growth.append(None)
    out["lirads_category"], out["lirads_category_if_growth"] = cats, if_growth
    out["lirads_applies"], out["reason"] = applies, reasons
    return out
