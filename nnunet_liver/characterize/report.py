"""``nnunet-liver-characterize evaluate``: the AUC tables as JSON and Markdown, and the same-lesion comparison with
the detector's own scores (UNet-patch's type and vote, UNet-whole's lesion probability, LiverMax)."""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, List, Optional

import numpy as np

from nnunet_liver.characterize.evaluate import TABLE_COLUMNS, auc_with_ci, nolte_table, table2, table3
from nnunet_liver.utils.io import InputError, atomic_path, write_json_atomic

__all__ = ["evaluate_characterizer", "same_lesion_table", "markdown"]

EVAL_SCHEMA_VERSION = "1.0"


def _fmt(d: Optional[dict]) -> str:
    if not d or d.get("mean") is None:
        return "-"
    return f"{100 * d['mean']:.1f} +- {100 * d['std']:.1f}"


def _fmt_ci(d: Optional[dict], key: str = "auc") -> str:
    if not d or d.get(key) is None:
        return "-"
    ci = d.get(f"{key}_ci95") or d.get("ci95")
    return f"{100 * d[key]:.1f} [{100 * ci[0]:.1f}, {100 * ci[1]:.1f}]" if ci else f"{100 * d[key]:.1f}"


def markdown(result: dict) -> str:
    """The tables in Markdown (AUC in %, mean +- std over folds; [95 % bootstrap CI])."""
    lines = []
    for key, title, second in (
            ("table2", "Table 2 layout: cross-validation on the training lesions, AUC % (mean +- std over folds; "
                       "pooled out-of-fold AUC [95 % CI])", "pooled"),
            ("table3", "Table 3 layout: trained on the training set, tested on the held-out set, AUC % (each "
                       "fold's models: mean +- std; final characterizer [95 % CI])", "final")):
        table = result.get(key) or {}
        cols = [c for c in TABLE_COLUMNS if c in table]
        if cols:
            lines += [title, "", "| | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols),
                      "| folds | " + " | ".join(_fmt(table[c]) for c in cols) + " |",
                      f"| {second} | " + " | ".join(_fmt_ci(table[c][second]) for c in cols) + " |", ""]
    nolte = result.get("nolte") or {}
    if nolte:
        keys = ("auc", "accuracy", "precision", "recall", "f1")
        lines += ["Nolte's comparison on the held-out set, % [95 % bootstrap CI], threshold 0.5", "",
                  "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        lines += [f"| {name} | " + " | ".join(_fmt_ci(m, k) for k in keys) + " |" for name, m in nolte.items()]
        lines.append("")
    crit = result.get("criteria") or {}
    if crit:
        lines += [f"LI-RADS criteria on the held-out set (from {result['characterizer']['criteria_source']}), AUC % "
                  "[95 % CI]", "", "| " + " | ".join(crit) + " |", "|" + "---|" * len(crit),
                  "| " + " | ".join(_fmt_ci(v) for v in crit.values()) + " |", ""]
    same = result.get("same_lesions") or {}
    if same.get("scores"):
        lines += [f"Same lesions as the detector ({same['matched']} of {same['reference_lesions']} held-out lesions "
                  f"found), AUC % [95 % CI]", "", "| score | AUC |", "|---|---|"]
        lines += [f"| {name} | {_fmt_ci(v)} |" for name, v in same["scores"].items()]
        lines.append("")
    return "\n".join(lines)


def _vote_share(entry: dict) -> Optional[float]:
    recls = entry.get("reclassification") or {}
    votes = recls.get("votes_cm3") or {}
    total = sum(float(v) for v in votes.values())
    return float(votes.get("HCC", 0.0)) / total if total > 0 else None


def same_lesion_table(dataset_dir: str, subset: str, dets_dir: str, test_out, n_boot: int = 1000,
                      seed: int = 0) -> dict:
    """AUC of HCC vs not on the held-out lesions the detector found (matched one to one by overlap), for the
    characterizer and the detector's own per-lesion scores (see the module docstring of ``evaluate``)."""
    import SimpleITK as sitk

    from nnunet_liver.characterize.lesions import dataset_cases
    from nnunet_liver.postprocessing.match import match
    from nnunet_liver.postprocessing.seg2det import lesions_from_instance_map, seg2det
    from nnunet_liver.utils.io import read_image

    rows: List[dict] = []
    n_ref = 0
    by_key = {(str(c), int(i)): p for c, i, p in zip(test_out["case"], test_out["lesion_id"],
                                                     test_out["hcc_probability"])}
    for case in dataset_cases(dataset_dir, subset):
        json_path = os.path.join(dets_dir, f"{case}.json")
        map_path = os.path.join(dets_dir, f"{case}_lesions.nii.gz")
        if not (os.path.isfile(json_path) and os.path.isfile(map_path)):
            raise InputError(f"{dets_dir}: no detector output for case {case} ({case}.json, {case}_lesions.nii.gz)")
        label, spacing, _ = read_image(os.path.join(dataset_dir, f"labels{subset}", f"{case}.nii.gz"), "label map")
        ref = seg2det(label, spacing)
        n_ref += len(ref)
        with open(json_path, encoding="utf-8") as f:
            rec = json.load(f)
        inst = sitk.GetArrayFromImage(sitk.ReadImage(map_path))
        entries = {int(e["id"]): e for e in rec["lesions"]}
        types = {i: e["label"] for i, e in entries.items()}
        pred = lesions_from_instance_map(inst, spacing, types) if entries else []
        m = match(ref, pred, min_ref_volume_cm3=0, min_pred_volume_cm3=0)
        ref_by_id = {l.id: l for l in ref}
        for rid, pid in m.pairs:
            e = entries[int(pid)]
            rows.append({"hcc": int(ref_by_id[rid].type == "HCC"),
                         "characterizer (reference mask)": by_key.get((case, int(rid)), np.nan),
                         "characterizer (detected mask)": e.get("hcc_probability", np.nan),
                         "UNet-patch HCC vote share": _vote_share(e),
                         "cascade type is HCC": float(e["type"] == "HCC"),
                         "UNet-whole mean HCC probability": (e.get("mean_probability") or {}).get("HCC", np.nan),
                         "LiverMax HCC (patient)": rec["patient"]["livermax"].get("HCC", np.nan)})
    scores = {}
    if rows:
        y = np.array([r["hcc"] for r in rows])
        for name in rows[0]:
            if name == "hcc":
                continue
            s = np.array([np.nan if r[name] is None else r[name] for r in rows], dtype=float)
            if np.isfinite(s).any():
                scores[name] = auc_with_ci(s, y, n_boot, seed)
    return {"reference_lesions": n_ref, "matched": len(rows), "scores": scores}


def evaluate_characterizer(args) -> dict:
    """Run the evaluation of ``args`` (``nnunet-liver-characterize evaluate``) and write EVAL_DIR."""
    from nnunet_liver.characterize.cli import _load_characterizer, _read_source
    from nnunet_liver.characterize.pipeline import characterize
    from nnunet_liver.characterize.table import read_table

    characterizer = _load_characterizer(args.m)
    train_path = os.path.join(characterizer.folder, "training_table.csv")
    training_table, _ = read_table(train_path)
    if "fold" not in training_table.columns:
        raise InputError(f"{train_path}: no fold column (a characterizer's training table)")
    result = {"schema_version": EVAL_SCHEMA_VERSION, "characterizer": characterizer.describe(),
              "bootstrap": int(args.bootstrap),
              "table2": table2(characterizer, training_table, args.bootstrap)}
    if args.i or args.t:
        test, patches, source = _read_source(args, characterizer.feature_settings, characterizer.deep_settings)
        test = test[test["hcc"].notna()].reset_index(drop=True)
        result["test_source"] = source
        result["table3"], final = table3(characterizer, training_table, test, patches, args.bootstrap,
                                         device=args.device)
        result["nolte"] = nolte_table(characterizer, final, args.bootstrap)
        out = characterize(characterizer, test, patches, device=args.device)
        result["criteria"] = {c: auc_with_ci(out[f"prob_{c}"].to_numpy(float), out[c].astype("float64").to_numpy(),
                                             args.bootstrap)
                              for c in ("APHE", "NPW", "EC") if c in out.columns and out[c].notna().all()}
        if args.detections:
            if not args.i:
                raise InputError("--detections needs the test dataset (-i) whose cases the detector ran on")
            result["same_lesions"] = same_lesion_table(args.i, args.subset, args.detections, out, args.bootstrap)
    os.makedirs(args.o, exist_ok=True)
    write_json_atomic(result, os.path.join(args.o, "characterize_eval.json"))
    text = markdown(result)
    with atomic_path(os.path.join(args.o, "characterize_eval.md")) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    print(text, file=sys.stderr)
    return result
