"""A characterizer folder: the fitted models, the deep sub-models and what they need, saved and loaded as one.

Layout of ``MODEL_DIR``::

    characterizer.json        schema version, primary model, criteria source, feature and deep settings, every
                              model's feature list and required phases, library versions, training-data summary
    models/NAME.json          each fitted logistic regression (models.FittedModel)
    deep/SUBMODEL_foldK.pt    the deep sub-models' weights, K = 0 .. folds-1 (with deep sub-models only)
    training_table.csv/.json  the training lesions with their features, out-of-fold deep probabilities and folds

Loading checks everything against ``characterizer.json`` and refuses with one line what does not match: a model
whose features differ, weights of another network, a schema it does not know. Using it checks the input: a table
without a model's features, or a case source without the phases the primary model needs, is refused with one line.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_liver.characterize.deep import SUBMODELS, DeepSettings, load_state
from nnunet_liver.characterize.models import CRITERION_MODELS, DEEP_COLUMNS, FittedModel
from nnunet_liver.characterize.table import CRITERIA, FeatureSettings
from nnunet_liver.utils.io import InputError

__all__ = ["CHARACTERIZER_SCHEMA_VERSION", "Characterizer", "required_phases", "library_versions"]

CHARACTERIZER_SCHEMA_VERSION = "1.0"
FILE = "characterizer.json"


def library_versions() -> dict:
    """Versions of what fitted and runs the models."""
    import importlib.metadata as md

    out = {}
    for dist in ("nnunet_liver", "scikit-learn", "numpy", "pandas", "torch", "nnunetv2",
                 "dynamic_network_architectures", "pyradiomics-bhklab"):
        try:
            out[dist] = md.version(dist)
        except md.PackageNotFoundError:
            pass
    return out


def required_phases(features: Sequence[str], washout_phase: str = "V") -> List[str]:
    """The phases a model's features are computed on (deep probabilities need none: a missing phase is the
    constant channel)."""
    need = set()
    for f in features:
        if f in ("f_APHE", "f_EC"):
            need.add("A")
        elif f == "f_NPW":
            need.add(washout_phase)
        elif f.startswith("rad_") and not f.startswith("rad_shape_"):
            need.add(f.split("_")[1])
    return [p for p in ("NC", "A", "V", "D") if p in need]


@dataclass
class Characterizer:
    """Fitted second-stage models (see the module docstring); :meth:`save` / :meth:`load`."""
    models: Dict[str, FittedModel]
    primary: str
    feature_settings: FeatureSettings
    deep_settings: Optional[DeepSettings] = None
    deep_states: Dict[str, List[dict]] = field(default_factory=dict)
    training: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)
    folder: Optional[str] = None

    @property
    def criteria_source(self) -> Optional[str]:
        """"deep" when the APHE, EC and NPW sub-models exist, "handcrafted" with the criterion models, else None."""
        if all(c in self.deep_states for c in CRITERIA):
            return "deep"
        if all(m in self.models for m in CRITERION_MODELS):
            return "handcrafted"
        return None

    def phases_of(self, name: str) -> List[str]:
        return required_phases(self.models[name].features, self.feature_settings.washout_phase)

    @property
    def phases(self) -> List[str]:
        """The phases the primary model and the criterion calls need."""
        names = [self.primary] + (list(CRITERION_MODELS) if self.criteria_source == "handcrafted" else [])
        need = {p for n in names for p in self.phases_of(n)}
        return [p for p in ("NC", "A", "V", "D") if p in need]

    def describe(self) -> dict:
        """What CASE.json and predictions record about the characterizer."""
        return {"dir": self.folder, "primary": self.primary, "models": sorted(self.models),
                "criteria_source": self.criteria_source, "phases": self.phases,
                "deep_submodels": sorted(self.deep_states), "trained_on": self.training.get("summary", {})}

    def check_columns(self, columns: Sequence[str], what: str) -> None:
        """InputError (one line) when ``columns`` lack a feature of the primary or a criterion model."""
        names = [self.primary] + (list(CRITERION_MODELS) if self.criteria_source == "handcrafted" else [])
        have = set(columns)
        for name in names:
            gone = [f for f in self.models[name].features if f not in have and f not in DEEP_COLUMNS]
            if gone:
                raise InputError(f"{what}: has no column {gone[0]!r} that characterizer model {name} needs "
                                 f"({len(gone)} of its {len(self.models[name].features)} features missing)")

    def check_phases(self, available: Sequence[str], what: str) -> None:
        """InputError (one line) when the phases ``available`` lack one the characterizer needs."""
        gone = [p for p in self.phases if p not in set(available)]
        if gone:
            raise InputError(f"{what}: has phases {', '.join(available) or 'none'}, the characterizer "
                             f"({self.folder or 'in memory'}) needs {', '.join(self.phases)} (missing "
                             f"{', '.join(gone)})")

    # ------------------------------------------------------------------ disk
    def save(self, folder: str, training_table=None, overwrite: bool = False) -> str:
        """Write the characterizer folder (atomically: a failure leaves nothing)."""
        from nnunet_liver.characterize.deep import save_state
        from nnunet_liver.characterize.table import write_table
        from nnunet_liver.utils.io import atomic_dir, write_json_atomic

        with atomic_dir(folder, overwrite=overwrite) as tmp:
            os.makedirs(os.path.join(tmp, "models"))
            for name, m in self.models.items():
                write_json_atomic(m.to_dict(), os.path.join(tmp, "models", f"{_safe(name)}.json"))
            if self.deep_states:
                os.makedirs(os.path.join(tmp, "deep"))
                for name, states in self.deep_states.items():
                    for k, state in enumerate(states):
                        save_state(state, os.path.join(tmp, "deep", f"{name}_fold{k}.pt"))
            if training_table is not None:
                write_table(training_table, os.path.join(tmp, "training_table.csv"),
                            self.training.get("table_description", {}))
            write_json_atomic(self._manifest(), os.path.join(tmp, FILE))
        self.folder = folder
        return folder

    def _manifest(self) -> dict:
        return {"schema_version": CHARACTERIZER_SCHEMA_VERSION, "primary": self.primary,
                "criteria_source": self.criteria_source,
                "feature_settings": self.feature_settings.to_dict(),
                "models": {name: {"file": f"models/{_safe(name)}.json", "label": m.label,
                                  "features": list(m.features), "phases": self.phases_of(name),
                                  "penalty": m.penalty, "C": m.C} for name, m in self.models.items()},
                "deep": None if self.deep_settings is None else
                {"settings": self.deep_settings.to_dict(),
                 "submodels": {name: {"channels": self.deep_settings.channels(name), "folds": len(states),
                                      "files": [f"deep/{name}_fold{k}.pt" for k in range(len(states))]}
                               for name, states in self.deep_states.items()}},
                "training": {k: v for k, v in self.training.items() if k != "table_description"},
                "versions": self.versions}

    @classmethod
    def load(cls, folder: str) -> "Characterizer":
        """Read a characterizer folder; InputError (one line) for anything missing or not matching."""
        path = os.path.join(folder, FILE)
        if not os.path.isfile(path):
            raise InputError(f"{folder}: not a characterizer folder (no {FILE}; make one with "
                             f"nnunet-liver-characterize train)")
        try:
            with open(path, encoding="utf-8") as f:
                manifest = json.load(f)
        except (OSError, ValueError) as e:
            raise InputError(f"{path}: unreadable ({e})") from None
        if manifest.get("schema_version") != CHARACTERIZER_SCHEMA_VERSION:
            raise InputError(f"{path}: schema version {manifest.get('schema_version')!r}, this nnunet_liver reads "
                             f"{CHARACTERIZER_SCHEMA_VERSION}")
        models = {}
        for name, entry in manifest["models"].items():
            mpath = os.path.join(folder, entry["file"])
            if not os.path.isfile(mpath):
                raise InputError(f"{mpath}: model {name} listed in {FILE} is missing")
            with open(mpath, encoding="utf-8") as f:
                model = FittedModel.from_dict(json.load(f))
            if list(model.features) != list(entry["features"]) or \
                    len(model.coef) != sum(bool(k) for k in model.kept) or len(model.kept) != len(model.features):
                raise InputError(f"{mpath}: its features do not match {FILE}'s list for model {name}")
            models[name] = model
        if manifest["primary"] not in models:
            raise InputError(f"{path}: primary model {manifest['primary']!r} is not among its models")
        deep_settings, states = None, {}
        if manifest.get("deep"):
            deep_settings = DeepSettings.from_dict(manifest["deep"]["settings"])
            for name, entry in manifest["deep"]["submodels"].items():
                if name not in SUBMODELS or list(entry["channels"]) != deep_settings.channels(name):
                    raise InputError(f"{path}: deep sub-model {name} has channels {entry['channels']}, its settings "
                                     f"say {deep_settings.channels(name) if name in SUBMODELS else 'none'}")
                states[name] = [load_state(os.path.join(folder, f), deep_settings, name) for f in entry["files"]]
        return cls(models, manifest["primary"], FeatureSettings.from_dict(manifest["feature_settings"]),
                   deep_settings, states, manifest.get("training", {}), manifest.get("versions", {}), folder)

    def with_primary(self, name: Optional[str]) -> "Characterizer":
        """This characterizer reporting model ``name`` as ``hcc_probability`` (None: unchanged)."""
        if name is None:
            return self
        if name not in self.models or name in CRITERION_MODELS:
            raise InputError(f"--model {name}: the characterizer ({self.folder}) has "
                             f"{', '.join(n for n in sorted(self.models) if n not in CRITERION_MODELS)}")
        self.primary = name
        return self


def _safe(name: str) -> str:
    return name.replace("+", "_plus_")


def deep_probabilities(characterizer: Characterizer, patches: Dict[str, np.ndarray], device: str = "cpu"
                       ) -> Dict[str, np.ndarray]:
    """{``p_SUBMODEL``: (N,)} of every deep sub-model on normalised patches {sub-model: (N, C, Z, Y, X)}."""
    from nnunet_liver.characterize.deep import predict_submodel

    return {f"p_{name}": predict_submodel(states, patches[name], characterizer.deep_settings, device)
            for name, states in characterizer.deep_states.items()}
