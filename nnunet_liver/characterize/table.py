"""The lesion features table: one row per lesion, written as CSV (or Parquet) with a JSON description beside it.

Columns (CHARACTERIZE.md, "The features table"):

* identity: ``case``, ``lesion_id`` (seg2det's id in the reference label map, or the detector's final id),
  ``type`` (reference or detected type), ``num_voxels``, ``volume_cm3``, ``z_mm``/``y_mm``/``x_mm`` (centroid),
  ``phases`` (the phases present, space separated);
* labels where known: ``hcc`` (1 = HCC, 0 = another lesion type), and the radiologist's (or the phantom's) calls of
  the LI-RADS major features ``APHE``, ``NPW`` (nonperipheral washout) and ``EC`` (enhancing capsule), 1/0; empty
  = unknown;
* Sarfati et al.'s handcrafted features ``f_APHE``, ``f_EC``, ``f_NPW`` and the size ``s`` (mm);
* radiomics ``rad_*`` (pyradiomics, ``radiomics.yaml``);
* the deep sub-models' probabilities ``p_HCC``, ``p_APHE``, ``p_EC``, ``p_NPW`` once a characterizer has them.

``TABLE.json`` beside ``TABLE.csv`` records the schema version, where the lesions came from, the feature settings and
the radiomics library with its version and settings.

Papers: Sarfati et al., "Guiding the classification of hepatocellular carcinoma on 3D CT-scans using deep and handcrafted
radiological features".
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from typing import Iterable, List, Optional

import numpy as np

from nnunet_liver.characterize.features import SARFATI_SPACING_ZYX, sarfati_features
from nnunet_liver.characterize.lesions import CaseLesions, match_truth
from nnunet_liver.utils.io import InputError, atomic_path, write_json_atomic

__all__ = ["TABLE_SCHEMA_VERSION", "ID_COLUMNS", "LABEL_COLUMNS", "CRITERIA", "FeatureSettings", "lesion_rows",
           "features_table", "write_table", "read_table", "merge_labels", "table_description"]

TABLE_SCHEMA_VERSION = "1.0"
ID_COLUMNS = ("case", "lesion_id", "type", "num_voxels", "volume_cm3", "z_mm", "y_mm", "x_mm", "phases")
#: the LI-RADS major features as Sarfati et al. name them, with the phantom truth's keys
CRITERIA = {"APHE": "aphe", "NPW": "washout", "EC": "capsule"}
LABEL_COLUMNS = ("hcc",) + tuple(CRITERIA)


@dataclass
class FeatureSettings:
    """How the handcrafted features and radiomics are computed (recorded with every table and characterizer)."""
    washout_phase: str = "V"
    border_mm: float = 2.0
    energy_spacing_zyx: tuple = SARFATI_SPACING_ZYX
    radiomics: bool = True
    radiomics_phases: tuple = ("NC", "A", "V", "D")

    def to_dict(self) -> dict:
        return {"washout_phase": self.washout_phase, "border_mm": float(self.border_mm),
                "energy_spacing_zyx": [float(v) for v in self.energy_spacing_zyx], "radiomics": bool(self.radiomics),
                "radiomics_phases": list(self.radiomics_phases)}

    @classmethod
    def from_dict(cls, d: dict) -> "FeatureSettings":
        return cls(d.get("washout_phase", "V"), float(d.get("border_mm", 2.0)),
                   tuple(d.get("energy_spacing_zyx", SARFATI_SPACING_ZYX)), bool(d.get("radiomics", True)),
                   tuple(d.get("radiomics_phases", ("NC", "A", "V", "D"))))


def lesion_rows(case: CaseLesions, settings: FeatureSettings, extractor=None,
                truth: Optional[List[dict]] = None, reference: bool = True) -> List[dict]:
    """The table rows of one case's lesions (features of every lesion; ``truth``: the phantom's lesions).

    ``reference``: the lesions' types are reference types (``hcc`` is their label), not a detector's guess (``hcc``
    empty)."""
    from nnunet_liver.labels import HCC

    cache: dict = {}
    rows = []
    for les in case.lesions:
        row = {"case": case.case_id, "lesion_id": int(les.id), "type": les.type, "num_voxels": int(les.num_voxels),
               "volume_cm3": float(les.volume_cm3), "z_mm": float(les.centroid_mm[0]),
               "y_mm": float(les.centroid_mm[1]), "x_mm": float(les.centroid_mm[2]),
               "phases": " ".join(p for p in ("NC", "A", "V", "D") if p in case.images),
               "hcc": int(les.label == HCC) if reference else None}
        t = match_truth(les, truth) if truth else None
        for column, key in CRITERIA.items():
            row[column] = None if t is None else int(bool(t[key]))
        row.update(sarfati_features(les.mask, les.slices, case.images, case.parenchyma, case.spacing,
                                    les.diameter_mm, cache, settings.washout_phase, settings.border_mm,
                                    settings.energy_spacing_zyx))
        if extractor is not None:
            row.update(extractor.lesion(les.mask, les.slices, case.images, case.spacing,
                                        settings.radiomics_phases))
        rows.append(row)
    return rows


def features_table(cases: Iterable[CaseLesions], settings: FeatureSettings, truth: Optional[dict] = None,
                   progress: bool = False):
    """A pandas DataFrame of every lesion of ``cases`` (see the module docstring); ``truth``: {case: phantom
    lesions} from :func:`~nnunet_liver.characterize.lesions.phantom_truth`."""
    import pandas as pd
    from tqdm import tqdm

    extractor = None
    if settings.radiomics:
        from nnunet_liver.characterize.radiomics import RadiomicsExtractor

        extractor = RadiomicsExtractor()
    rows: List[dict] = []
    for case in tqdm(cases, desc="lesion features", unit="case", disable=not progress):
        rows += lesion_rows(case, settings, extractor, (truth or {}).get(case.case_id))
    table = pd.DataFrame(rows)
    if table.empty:
        table = pd.DataFrame(columns=list(ID_COLUMNS) + list(LABEL_COLUMNS) + ["f_APHE", "f_EC", "f_NPW", "s"])
    for column in LABEL_COLUMNS:
        table[column] = table[column].astype("Int64")
    return table


def table_description(settings: FeatureSettings, source: dict) -> dict:
    """What TABLE.json records: schema version, source, settings, the radiomics library and its settings."""
    from nnunet_liver import __version__

    radiomics = None
    if settings.radiomics:
        from nnunet_liver.characterize.radiomics import library

        radiomics = library()
    return {"schema_version": TABLE_SCHEMA_VERSION, "nnunet_liver_version": __version__, "source": source,
            "feature_settings": settings.to_dict(), "radiomics": radiomics}


def _sidecar(path: str) -> str:
    return os.path.splitext(path)[0] + ".json"


def write_table(table, path: str, description: dict) -> str:
    """Write ``table`` to ``path`` (``.csv`` or ``.parquet``) and its description to the ``.json`` beside it."""
    if not (path.endswith(".csv") or path.endswith(".parquet")):
        raise InputError(f"{path}: a features table is written as .csv or .parquet")
    with atomic_path(path) as tmp:
        if path.endswith(".csv"):
            table.to_csv(tmp, index=False)
        else:
            try:
                table.to_parquet(tmp, index=False)
            except ImportError as e:
                raise InputError(f"{path}: Parquet needs pyarrow or fastparquet ({e}); write .csv instead") from None
    write_json_atomic(dict(description, columns=list(table.columns), num_lesions=int(len(table))),
                      _sidecar(path))
    return path


def read_table(path: str):
    """(table, description) of a features table written by :func:`write_table` (description {} when absent)."""
    import pandas as pd

    if not os.path.isfile(path):
        raise InputError(f"{path}: features table not found")
    try:
        table = pd.read_parquet(path) if path.endswith(".parquet") else pd.read_csv(path)
    except (ValueError, ImportError, OSError) as e:
        raise InputError(f"{path}: not a readable features table ({e})") from None
    missing = [c for c in ("case", "lesion_id") if c not in table.columns]
    if missing:
        raise InputError(f"{path}: no column {missing[0]!r} (a table of nnunet-liver-characterize features)")
    description = {}
    if os.path.isfile(_sidecar(path)):
        with open(_sidecar(path), encoding="utf-8") as f:
            description = json.load(f)
    for column in LABEL_COLUMNS:
        if column in table.columns:
            table[column] = table[column].astype("Int64")
    table["case"] = table["case"].astype(str)
    return table, description


def merge_labels(table, labels_csv: str):
    """``table`` with the labels of ``labels_csv`` (columns ``case``, ``lesion_id`` and any of ``hcc``, ``APHE``,
    ``NPW``, ``EC``; 1/0, empty = unknown) in place of its own; a row naming a lesion the table lacks is an error."""
    import pandas as pd

    try:
        labels = pd.read_csv(labels_csv, dtype={"case": str})
    except (ValueError, OSError) as e:
        raise InputError(f"{labels_csv}: not a readable CSV ({e})") from None
    if not {"case", "lesion_id"} <= set(labels.columns):
        raise InputError(f"{labels_csv}: needs columns case and lesion_id (and any of {', '.join(LABEL_COLUMNS)})")
    given = [c for c in LABEL_COLUMNS if c in labels.columns]
    for column in given:
        bad = labels[column].dropna()
        bad = bad[~bad.isin([0, 1])]
        if len(bad):
            raise InputError(f"{labels_csv}: column {column} holds {bad.iloc[0]!r}; use 1, 0 or leave it empty")
    keys = set(zip(table["case"].astype(str), table["lesion_id"].astype(int)))
    for case, lesion in zip(labels["case"].astype(str), labels["lesion_id"].astype(int)):
        if (case, lesion) not in keys:
            raise InputError(f"{labels_csv}: case {case} lesion {lesion} is not in the features table")
    out = table.drop(columns=[c for c in given if c in table.columns]).merge(
        labels[["case", "lesion_id"] + given].astype({"lesion_id": int}), on=["case", "lesion_id"], how="left")
    for column in given:
        out[column] = out[column].astype("Int64")
    return out


def numeric(table, columns) -> np.ndarray:
    """float64 (N, len(columns)) of ``table``'s columns; NaN where empty."""
    return table[list(columns)].apply(lambda c: c.astype("float64")).to_numpy(dtype=np.float64)
