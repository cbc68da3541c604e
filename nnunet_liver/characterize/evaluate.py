"""AUC of HCC vs non-HCC per model, in the layout of Sarfati et al.'s Tables 2 and 3 and of Nolte's comparison.

* **Table 2** (cross-validation on the training lesions): for each of the characterizer's folds, every model is
  refitted on the other folds (C by an inner cross-validation) and scored on the held-out fold; the deep
  probabilities are the out-of-fold ones of training. Mean +- std of the folds' AUC, and the pooled out-of-fold AUC
  with a bootstrap 95 % CI. "DL baseline" is the HCC sub-model's probability alone.
* **Table 3** (trained on the training set, tested on a held-out set): each fold's models (logistic regressions fitted
  on that fold's training part, that fold's deep sub-models) score the whole test set: mean +- std over folds, as the
  paper; and the final characterizer (fitted on everything) with a bootstrap 95 % CI.
* **Nolte's comparison** (test set, final models): handcrafted radiomics (RAD), deep (DLF) and combined (RAD+DLF):
  AUC, accuracy, precision, recall and F1 at probability 0.5, each with a bootstrap 95 % CI.
* **Same lesions as the detector**: the test lesions the detector found, with its own per-lesion scores: UNet-patch's
  HCC vote share, its final type (HCC or not), UNet-whole's mean HCC probability in the lesion, the patient's
  LiverMax for HCC, beside the characterizer's probability on the reference mask and on the detected mask.

Bootstrap: 1000 resamples of the lesions (seeded), percentiles 2.5 and 97.5; resamples holding one class only, or
where the metric is undefined (a precision without a positive call), are redrawn, up to 20 draws per resample, else
the CI is None.

Papers: Sarfati et al., "Guiding the classification of hepatocellular carcinoma on 3D CT-scans using deep and handcrafted
radiological features"; Nolte, "Detecting HCC in NAFLD patients using deep learning based radiomics".
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_liver.characterize.models import CRITERION_MODELS, fit_model, predict_models
from nnunet_liver.evaluation.metrics import auc_mann_whitney

__all__ = ["bootstrap_ci", "auc_with_ci", "binary_metrics", "table2", "table3", "nolte_table", "TABLE_COLUMNS"]

#: Sarfati et al.'s columns, then Nolte's radiomics and combined models
TABLE_COLUMNS = ("DL baseline", "DLF", "HF", "DLF+HF", "RAD", "RAD+DLF")


def bootstrap_ci(scores: Sequence[float], labels: Sequence[int], metric, n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> Optional[List[float]]:
    """Percentile bootstrap CI of ``metric(scores, labels)`` over lesion resamples (both classes in each)."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    if len(y) < 2 or y.min() == y.max():
        return None
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(20 * n):  # a metric undefined on most resamples (no positive call: no precision) gives up
        if len(values) == n:
            break
        idx = rng.integers(0, len(y), len(y))
        if y[idx].min() == y[idx].max():
            continue
        v = metric(s[idx], y[idx])
        if v is not None and np.isfinite(v):
            values.append(v)
    if len(values) < n:
        return None
    lo, hi = np.percentile(values, [50 * (1 - level), 100 - 50 * (1 - level)])
    return [float(lo), float(hi)]


def _auc(s, y):
    return auc_mann_whitney(s, np.asarray(y, bool))


def auc_with_ci(scores, labels, n_boot: int = 1000, seed: int = 0) -> dict:
    """{"auc", "ci95", "lesions", "hcc"} on the rows with a finite score."""
    s, y = np.asarray(scores, float), np.asarray(labels, int)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    return {"auc": _auc(s, y), "ci95": bootstrap_ci(s, y, _auc, n_boot, seed), "lesions": int(len(y)),
            "hcc": int(y.sum())}


def binary_metrics(scores, labels, threshold: float = 0.5, n_boot: int = 1000, seed: int = 0) -> dict:
    """AUC, accuracy, precision, recall and F1 at ``threshold``, each with a bootstrap 95 % CI (Nolte's Table 1)."""
    def acc(s, y):
        return float(np.mean((s >= threshold) == (y == 1)))

    def prec(s, y):
        p = s >= threshold
        return float(np.mean(y[p] == 1)) if p.any() else None

    def rec(s, y):
        return float(np.mean(s[y == 1] >= threshold)) if (y == 1).any() else None

    def f1(s, y):
        p, r = prec(s, y), rec(s, y)
        return None if p is None or r is None or p + r == 0 else 2 * p * r / (p + r)

    s, y = np.asarray(scores, float), np.asarray(labels, int)
    ok = np.isfinite(s)
    s, y = s[ok], y[ok]
    out = {"lesions": int(len(y)), "hcc": int(y.sum())}
    for name, fn in (("auc", _auc), ("accuracy", acc), ("precision", prec), ("recall", rec), ("f1", f1)):
        out[name] = fn(s, y) if len(y) else None
        out[f"{name}_ci95"] = bootstrap_ci(s, y, fn, n_boot, seed)
    return out


def _summary(per_fold: List[Optional[float]]) -> dict:
    vals = [v for v in per_fold if v is not None]
    return {"mean": float(np.mean(vals)) if vals else None, "std": float(np.std(vals)) if vals else None,
            "per_fold": per_fold}


def _fit_fold(characterizer, train, name):
    m = characterizer.models[name]
    label = CRITERION_MODELS[name][1] if name in CRITERION_MODELS else "hcc"
    return fit_model(name, train, m.features, label, seed=characterizer.training.get("seed", 0),
                     n_splits=characterizer.training.get("folds", 5))


def table2(characterizer, training_table, n_boot: int = 1000, seed: int = 0) -> dict:
    """Sarfati et al.'s Table 2 on the training lesions (see the module docstring)."""
    folds = sorted(int(k) for k in training_table["fold"].unique() if int(k) >= 0)
    y = training_table["hcc"].astype(int).to_numpy()
    out = {}
    for column in TABLE_COLUMNS:
        name = "p_HCC" if column == "DL baseline" else column
        if (name == "p_HCC" and name not in training_table.columns) or \
                (name != "p_HCC" and name not in characterizer.models):
            continue
        pooled = np.full(len(y), np.nan)
        per_fold = []
        for k in folds:
            test = (training_table["fold"] == k).to_numpy()
            if name == "p_HCC":
                p = training_table.loc[test, "p_HCC"].to_numpy(float)
            else:
                try:
                    model = _fit_fold(characterizer, training_table[~test].reset_index(drop=True), name)
                except ValueError:  # a fold without both classes for the inner CV
                    per_fold.append(None)
                    continue
                p = predict_models({name: model}, training_table[test])[name]
            pooled[test] = p
            per_fold.append(_auc(p[np.isfinite(p)], y[test][np.isfinite(p)]))
        out[column] = {**_summary(per_fold), "pooled": auc_with_ci(pooled, y, n_boot, seed)}
    return out


def table3(characterizer, training_table, test_table, test_patches=None, n_boot: int = 1000, seed: int = 0,
           device: str = "cpu") -> dict:
    """Sarfati et al.'s Table 3: the training folds' models on the whole test set, and the final characterizer."""
    from nnunet_liver.characterize.deep import predict_submodel

    y = test_table["hcc"].astype(int).to_numpy()
    folds = sorted(int(k) for k in training_table["fold"].unique() if int(k) >= 0)
    out = {}
    fold_tables = []
    for k in folds:
        t = test_table.copy()
        for sub, states in characterizer.deep_states.items():
            if test_patches is not None and k < len(states):
                t[f"p_{sub}"] = predict_submodel([states[k]], test_patches[sub], characterizer.deep_settings, device)
        fold_tables.append(t)
    final = test_table.copy()
    if characterizer.deep_states and test_patches is not None:
        from nnunet_liver.characterize.characterizer import deep_probabilities

        for column, p in deep_probabilities(characterizer, test_patches, device).items():
            final[column] = p
    for column in TABLE_COLUMNS:
        name = "p_HCC" if column == "DL baseline" else column
        if name == "p_HCC":
            if "p_HCC" not in final.columns:
                continue
            per_fold = [_auc(t["p_HCC"].to_numpy(float), y) for t in fold_tables]
            out[column] = {**_summary(per_fold), "final": auc_with_ci(final["p_HCC"].to_numpy(float), y, n_boot,
                                                                      seed)}
            continue
        if name not in characterizer.models or any(f not in final.columns for f in characterizer.models[name].features):
            continue
        per_fold = []
        for k, t in zip(folds, fold_tables):
            train = training_table[training_table["fold"] != k].reset_index(drop=True)
            try:
                model = _fit_fold(characterizer, train, name)
            except ValueError:
                per_fold.append(None)
                continue
            p = predict_models({name: model}, t)[name]
            per_fold.append(_auc(p[np.isfinite(p)], y[np.isfinite(p)]))
        p_final = predict_models({name: characterizer.models[name]}, final)[name]
        out[column] = {**_summary(per_fold), "final": auc_with_ci(p_final, y, n_boot, seed)}
    return out, final


def nolte_table(characterizer, final_table, n_boot: int = 1000, seed: int = 0) -> dict:
    """Nolte's comparison on the test set: RAD, DLF and RAD+DLF (those the characterizer has), and HF."""
    y = final_table["hcc"].astype(int).to_numpy()
    out = {}
    for name in ("RAD", "DLF", "RAD+DLF", "HF"):
        if name in characterizer.models and all(f in final_table.columns
                                                for f in characterizer.models[name].features):
            p = predict_models({name: characterizer.models[name]}, final_table)[name]
            out[name] = binary_metrics(p, y, 0.5, n_boot, seed)
    return out
