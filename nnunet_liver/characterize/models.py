"""The second-stage classifiers: standardise + regularised logistic regression, C by stratified five-fold CV.

Models (CHARACTERIZE.md, "Models"), each a scikit-learn ``Pipeline`` (``VarianceThreshold`` for radiomics, as Nolte
removes constant and quasi-constant features, then ``StandardScaler`` and ``LogisticRegressionCV``):

=========  =====================================================  =======  ===========================
model      features                                               penalty  paper
=========  =====================================================  =======  ===========================
HF         f_APHE, f_EC, f_NPW, s                                 L2       Sarfati et al., HF
DLF        p_HCC, p_APHE, p_EC, p_NPW, s                          L2       Sarfati et al., DLF
DLF+HF     the eight of Eq. (1)                                   L2       Sarfati et al., Eq. (1)
RAD        radiomics (shape + per phase first-order, GLCM, GLRLM) L1       Nolte, baseline radiomic model
RAD+DLF    radiomics and the deep probabilities                   L1       Nolte, combined
=========  =====================================================  =======  ===========================

and, for the LI-RADS calls when there are no deep sub-models, one criterion model per major feature on the
handcrafted features that define it (``crit_APHE`` on f_APHE; ``crit_NPW`` on f_APHE and f_NPW, since washout is a
reduction relative to the arterial phase; ``crit_EC`` on f_EC and s, since Eq. (1)'s EC is a sum; L2).

C is chosen among 10^-4 .. 10^4 (17 values) by the log-loss of a stratified five-fold cross-validation whose folds
keep each case's lesions together (``StratifiedGroupKFold``): the probability is the product, so C is chosen for
calibration (both papers tune C by cross-validation; Nolte by accuracy, which like the AUC cannot tell the C of a
one-feature model apart). A fitted model is stored as JSON (its feature list, the
kept features, the scaler's mean and scale, the coefficients and intercept, C, the CV scores), not as a pickle: it
loads in any scikit-learn version and carries no code; :meth:`FittedModel.pipeline` rebuilds the scikit-learn
pipeline.

Papers: Sarfati et al., "Guiding the classification of hepatocellular carcinoma on 3D CT-scans using deep and handcrafted
radiological features"; Nolte, "Detecting HCC in NAFLD patients using deep learning based radiomics".
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_liver.characterize.features import HANDCRAFTED

__all__ = ["DEEP_COLUMNS", "MODEL_NAMES", "CRITERION_MODELS", "PENALTY", "FittedModel", "model_features",
           "cv_splits", "fit_model", "fit_models", "predict_models", "C_GRID", "CV_SCORING"]

#: the deep sub-models' probabilities as table columns (Sarfati et al.'s p_HCC, p_APHE, p_EC, p_NPW)
DEEP_COLUMNS = ("p_HCC", "p_APHE", "p_EC", "p_NPW")
MODEL_NAMES = ("HF", "DLF", "DLF+HF", "RAD", "RAD+DLF")
#: criterion model -> (its handcrafted features, its label column). Washout is LI-RADS's "temporal reduction in
#: enhancement relative to liver from an earlier to a later phase": it needs the arterial contrast beside the portal
#: one; Eq. (1)'s EC is a sum over the lesion, so its model sees the size too
CRITERION_MODELS = {"crit_APHE": (("f_APHE",), "APHE"), "crit_NPW": (("f_APHE", "f_NPW"), "NPW"),
                    "crit_EC": (("f_EC", "s"), "EC")}
PENALTY = {"HF": "l2", "DLF": "l2", "DLF+HF": "l2", "RAD": "l1", "RAD+DLF": "l1",
           **{k: "l2" for k in CRITERION_MODELS}}
C_GRID = tuple(float(c) for c in np.logspace(-4, 4, 17))
#: C is chosen by the CV's log-loss: it rewards calibrated probabilities (an AUC is blind to C with one feature)
CV_SCORING = "neg_log_loss"
#: Nolte's quasi-constant threshold: features with a standard deviation <= 0.001 are removed (variance 1e-6)
_QUASI_CONSTANT_VAR = 1e-6


def model_features(name: str, columns: Sequence[str], radiomics_phases: Sequence[str] = ("NC", "A", "V", "D")
                   ) -> List[str]:
    """The feature columns of model ``name`` among a table's ``columns`` (radiomics: shape and the given phases)."""
    rad = [c for c in columns if c.startswith("rad_shape_")
           or any(c.startswith(f"rad_{p}_") for p in radiomics_phases)]
    deep = list(DEEP_COLUMNS)
    table = {"HF": list(HANDCRAFTED), "DLF": deep + ["s"],
             "DLF+HF": deep + ["f_APHE", "f_EC", "f_NPW", "s"], "RAD": rad, "RAD+DLF": rad + deep}
    if name in CRITERION_MODELS:
        return list(CRITERION_MODELS[name][0])
    if name not in table:
        raise ValueError(f"unknown model {name!r}; known: {', '.join(MODEL_NAMES + tuple(CRITERION_MODELS))}")
    return table[name]


def cv_splits(y: np.ndarray, groups: Sequence[str], n_splits: int = 5, seed: int = 0) -> List[tuple]:
    """Stratified K-fold splits keeping each group (case) in one fold; K = min(n_splits, lesions of the rarer
    class). ValueError when a class has fewer than two lesions."""
    from sklearn.model_selection import StratifiedGroupKFold

    y = np.asarray(y, dtype=int)
    k = min(int(n_splits), int(y.sum()), int((1 - y).sum()), len(set(groups)))
    if k < 2:
        raise ValueError(f"cross-validation needs at least two positive and two negative lesions in two cases; got "
                         f"{int(y.sum())} positive, {int((1 - y).sum())} negative in {len(set(groups))} cases")
    splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=seed)
    return [(tr, te) for tr, te in splitter.split(np.zeros(len(y)), y, groups)]


@dataclass
class FittedModel:
    """A fitted standardise + logistic regression model, as stored in ``models/NAME.json``.

    ``features``: input columns in order; ``kept``: bool per feature, False for the (quasi-)constant ones removed;
    ``mean``, ``scale``: the scaler's, over the kept features; ``coef``, ``intercept``: the regression's, on the
    standardised kept features; ``C`` and ``penalty``: the regularisation; ``cv``: the CV's folds and mean score per C;
    ``label``: the column it predicts (``hcc`` or a criterion).
    """
    name: str
    label: str
    features: List[str]
    kept: List[bool]
    mean: List[float]
    scale: List[float]
    coef: List[float]
    intercept: float
    C: float
    penalty: str
    cv: dict = field(default_factory=dict)
    training: dict = field(default_factory=dict)

    def decision(self, X: np.ndarray) -> np.ndarray:
        """The linear score (log-odds) of rows ``X`` (N, len(features))."""
        X = np.asarray(X, dtype=np.float64)[:, np.asarray(self.kept, dtype=bool)]
        z = (X - np.asarray(self.mean)) / np.asarray(self.scale)
        return z @ np.asarray(self.coef) + self.intercept

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(label = 1) of rows ``X`` (N, len(features)); NaN for a row with a missing feature."""
        X = np.asarray(X, dtype=np.float64)
        out = np.full(X.shape[0], np.nan)
        ok = np.isfinite(X).all(axis=1)
        if ok.any():
            from scipy.special import expit

            out[ok] = expit(self.decision(X[ok]))
        return out

    def pipeline(self):
        """The scikit-learn ``Pipeline`` with these parameters (``predict_proba`` gives the same probabilities)."""
        from sklearn.feature_selection import VarianceThreshold
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        kept = np.asarray(self.kept, dtype=bool)
        vt = VarianceThreshold()
        vt.variances_ = np.where(kept, 1.0, 0.0)
        vt.n_features_in_ = len(kept)
        sc = StandardScaler()
        sc.mean_, sc.scale_ = np.asarray(self.mean), np.asarray(self.scale)
        sc.var_, sc.n_features_in_ = sc.scale_ ** 2, int(kept.sum())
        lr = LogisticRegression(C=self.C)
        lr.coef_, lr.intercept_ = np.asarray([self.coef]), np.asarray([self.intercept])
        lr.classes_, lr.n_features_in_ = np.array([0, 1]), int(kept.sum())
        return Pipeline([("variance", vt), ("scale", sc), ("logistic", lr)])

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, d: dict) -> "FittedModel":
        return cls(**{k: d[k] for k in cls.__dataclass_fields__ if k in d})


def _logistic_cv(penalty: str, splits, seed: int):
    """``LogisticRegressionCV`` with an L1 or L2 penalty across scikit-learn versions (``l1_ratios`` from 1.8)."""
    import sklearn
    from sklearn.linear_model import LogisticRegressionCV

    kw = dict(Cs=list(C_GRID), cv=splits, scoring=CV_SCORING, max_iter=10000, random_state=seed, refit=True)
    if tuple(int(v) for v in sklearn.__version__.split(".")[:2]) >= (1, 8):
        kw.update(l1_ratios=(1.0 if penalty == "l1" else 0.0,), use_legacy_attributes=False,
                  solver="liblinear" if penalty == "l1" else "lbfgs")  # liblinear: ~20x saga on a few hundred rows
    else:
        kw.update(penalty=penalty, solver="liblinear")
    return LogisticRegressionCV(**kw)


def fit_model(name: str, table, features: Sequence[str], label: str = "hcc", seed: int = 0,
              n_splits: int = 5) -> FittedModel:
    """Fit model ``name`` on the rows of ``table`` (a DataFrame) with every feature and the label present.

    Raises ValueError when too few labelled rows are left for the cross-validation.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.feature_selection import VarianceThreshold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    from nnunet_liver.characterize.table import numeric

    features = list(features)
    if not features:
        raise ValueError(f"model {name}: no feature columns in the table")
    X = numeric(table, features)
    y = table[label].astype("float64").to_numpy()
    rows = np.isfinite(X).all(axis=1) & np.isfinite(y)
    X, y, groups = X[rows], y[rows].astype(int), table["case"].astype(str).to_numpy()[rows]
    splits = cv_splits(y, groups, n_splits, seed)
    penalty = PENALTY.get(name, "l2")
    pipe = Pipeline([("variance", VarianceThreshold(_QUASI_CONSTANT_VAR)), ("scale", StandardScaler()),
                     ("logistic", _logistic_cv(penalty, splits, seed))])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            pipe.fit(X, y)
        except ValueError as e:  # e.g. every feature constant
            raise ValueError(f"model {name}: {e}") from None
    vt, sc, lr = pipe.named_steps["variance"], pipe.named_steps["scale"], pipe.named_steps["logistic"]
    scores = np.asarray(lr.scores_[1] if isinstance(lr.scores_, dict) else lr.scores_).reshape(len(splits), -1)
    return FittedModel(
        name=name, label=label, features=features, kept=[bool(k) for k in vt.get_support()],
        mean=[float(v) for v in sc.mean_], scale=[float(v) for v in sc.scale_],
        coef=[float(v) for v in np.ravel(lr.coef_)], intercept=float(np.ravel(lr.intercept_)[0]),
        C=float(np.ravel(lr.C_)[0]), penalty=penalty,
        cv={"folds": len(splits), "C_grid": list(C_GRID), "scoring": CV_SCORING,
            "mean_score_per_C": [float(v) for v in scores.mean(0)],
            "grouped_by": "case"},
        training={"lesions": int(len(y)), "positives": int(y.sum()), "negatives": int((1 - y).sum()),
                  "cases": int(len(set(groups))), "rows_left_out_incomplete": int((~rows).sum())})


def fit_models(table, names: Sequence[str], radiomics_phases: Sequence[str], seed: int = 0,
               n_splits: int = 5) -> Dict[str, FittedModel]:
    """Every model of ``names`` whose features the table has (criterion models: where their labels exist)."""
    out: Dict[str, FittedModel] = {}
    for name in names:
        label = CRITERION_MODELS[name][1] if name in CRITERION_MODELS else "hcc"
        features = model_features(name, list(table.columns), radiomics_phases)
        if label not in table.columns or any(f not in table.columns for f in features) or not features:
            continue
        out[name] = fit_model(name, table, features, label, seed, n_splits)
    return out


def predict_models(models: Dict[str, FittedModel], table) -> Dict[str, np.ndarray]:
    """{model name: P (N,)} on ``table``'s rows (NaN where a feature is missing)."""
    from nnunet_liver.characterize.table import numeric

    return {name: m.predict_proba(numeric(table, m.features)) for name, m in models.items()}


def missing_features(model: FittedModel, columns: Sequence[str]) -> Optional[List[str]]:
    """The model's features absent from ``columns`` (None when all are there)."""
    gone = [f for f in model.features if f not in set(columns)]
    return gone or None
