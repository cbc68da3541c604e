#!/usr/bin/env python
"""Seed 003's tables for the demo models from three ``nnunet-liver-detect`` runs on a phantom test set.

Used by ``scripts/train_demo_models.py --stages evaluate``; runnable alone on existing detector outputs::

    python scripts/evaluate_demo_models.py -ref TEST/labelsTr --base DET_BASE --base-recls DET_BASE_RECLS \
        --high-recls DET_HIGH_RECLS -o test_results.md

Tables (markdown): I (reference lesions per type and size), II (lesion level per type, All and Malign: FN, FP, FL,
TP, precision, recall for Base, Base+ReCls, High+ReCls; and how many of the FN are merged into a neighbour's
detection), IV (patient-level malignancy sensitivity/specificity per
model and for the consensus of Base+ReCls and High+ReCls, counted on the cases where they agree), V (High+ReCls on
the consensus cases, with recall-rough). Without a UNet-patch (``--high``) the runs are Base and High (f = 1 and 4,
``--patch-model none``) and the consensus is theirs. Patient classes are read from each run's ``CASE.json``: Base and
Base+ReCls ran with the single factor 1; High+ReCls ran with factors 1 and 4, so its ``class_by_factor["4"]`` is
High+ReCls's class and its ``class`` the consensus.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from nnunet_liver.labels import LESION_NAMES

TYPES = LESION_NAMES + ("All", "Malign")


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _evaluate(ref_dir, det_dir):
    from nnunet_liver.evaluation.evaluate import evaluate_folders

    return evaluate_folders(str(ref_dir), str(det_dir))


def _classes(det_dir, factor_key=None):
    out = {}
    for f in sorted(Path(det_dir).glob("*.json")):
        d = json.loads(f.read_text())
        if "patient" not in d:
            continue
        p = d["patient"]
        out[d["case"]] = p["class_by_factor"][factor_key] if factor_key else p["class"]
    return out


def lesion_table_md(tables: dict, cols=("FN", "FP", "FL", "TP", "precision", "recall")) -> str:
    names = list(tables)
    head = "| Type | " + " | ".join(f"{n} {c}" if i == 0 else c for n in names for i, c in enumerate(cols)) + " |"
    sep = "|---|" + "---:|" * (len(cols) * len(names))
    rows = []
    for t in TYPES:
        cells = []
        for n in names:
            r = tables[n][t]
            cells += [_pct(r[c]) if c in ("precision", "recall", "recall_rough") else str(r[c]) for c in cols]
        rows.append(f"| {t} | " + " | ".join(cells) + " |")
    return "\n".join([head, sep, *rows])


def _high(det_dirs: dict) -> str:
    """The f = 1 and 4 run's name: High+ReCls, or High (no UNet-patch: ``--patch-model none``)."""
    return "High+ReCls" if "High+ReCls" in det_dirs else "High"


def compute(ref_dir, det_dirs: dict) -> dict:
    """All figures of the model card: {"lesion": {model: table}, "patient": {row: table}, "consensus_lesion": table,
    "reference_counts": table, "cases": n}. ``det_dirs``: Base, Base+ReCls, High+ReCls, or (without a UNet-patch)
    Base and High."""
    from nnunet_liver.evaluation import metrics as M

    res = {name: _evaluate(ref_dir, d) for name, d in det_dirs.items()}
    ref_class = {c.case: c.ref_class for c in next(iter(res.values())).cases}
    high = _high(det_dirs)
    pred = {name: _classes(d) for name, d in det_dirs.items() if name != high}
    pred[high] = _classes(det_dirs[high], "4")
    consensus = "Base+ReCls & High+ReCls" if high == "High+ReCls" else "Base & High"
    pred[consensus] = _classes(det_dirs[high])
    patient = {k: M.patient_table((ref_class[c], v[c]) for c in ref_class) for k, v in pred.items()}
    agree = {c for c, v in pred[consensus].items() if v != "uncertain"}
    consensus_lesion = M.lesion_table(c.match for c in res[high].cases if c.case in agree)
    return {"lesion": {k: r.lesion for k, r in res.items()}, "patient": patient, "consensus_lesion": consensus_lesion,
            "reference_counts": next(iter(res.values())).reference_counts, "cases": len(ref_class),
            "consensus_cases": len(agree), "high": high, "consensus": consensus}


def checks(fig: dict) -> dict:
    """The issue's acceptance checks on the figures (True/False each; the first two need the ReCls runs)."""
    les, pat = fig["lesion"], fig["patient"][fig["consensus"]]
    out = {}
    if "High+ReCls" in les and "Base+ReCls" in les:
        out["High+ReCls has fewer FN than Base (All)"] = les["High+ReCls"]["All"]["FN"] < les["Base"]["All"]["FN"]
        out["Base+ReCls has fewer FP than Base (All)"] = les["Base+ReCls"]["All"]["FP"] < les["Base"]["All"]["FP"]
    out["consensus malignancy sensitivity >= 0.9"] = (pat["malignancy_sensitivity"] or 0) >= 0.9
    out["consensus malignancy specificity >= 0.9"] = (pat["malignancy_specificity"] or 0) >= 0.9
    return out


def markdown(fig: dict, timings: dict = None) -> str:
    out = [f"Test set: {fig['cases']} phantom cases. Reference lesions below 0.5 cm3 are ignored, and so are "
           f"unmatched predictions below 0.5 cm3 (seed 003, Table I).", ""]
    rc = fig["reference_counts"]
    bins = [k for k in next(iter(rc.values())) if k != "Total"] + ["Total"]
    out += ["**Table I layout: reference lesions per type and volume (cm3)**", "",
            "| Type | " + " | ".join(bins) + " |", "|---|" + "---:|" * len(bins)]
    out += [f"| {t} | " + " | ".join(str(rc[t].get(b, 0)) for b in bins) + " |" for t in TYPES if t in rc]
    out += ["", "**Table II layout: lesion level (FN, FP, FL, TP, precision, recall)**", "",
            lesion_table_md(fig["lesion"]), ""]
    merged = {k: t["All"].get("FN_merged") for k, t in fig["lesion"].items()}
    if all(v is not None for v in merged.values()):
        out += ["False negatives that overlap a detection matched to another reference lesion (FN_merged: two "
                "neighbours detected as one; part of FN): " + ", ".join(f"{k} {v} of {fig['lesion'][k]['All']['FN']}"
                                                                        for k, v in merged.items()) + ".", ""]
    out += ["**Table IV layout: patient-level malignancy**", "",
            "| Model | sensitivity | specificity | cases counted | uncertain (left out) | patient-class accuracy |",
            "|---|---:|---:|---:|---:|---:|"]
    for k, p in fig["patient"].items():
        out.append(f"| {k} | {_pct(p['malignancy_sensitivity'])} ({p['malignant_tp']}/"
                   f"{p['malignant_tp'] + p['malignant_fn']}) | {_pct(p['malignancy_specificity'])} "
                   f"({p['malignant_tn']}/{p['malignant_tn'] + p['malignant_fp']}) | {p['certain']} | "
                   f"{p['uncertain']} | {_pct(p['class_accuracy'])} |")
    high = fig["high"]
    out += ["", f"**Table V layout: {high} on the consensus cases ({fig['consensus_cases']} of {fig['cases']})**",
            "", lesion_table_md({high: fig["consensus_lesion"]},
                                cols=("FN", "FP", "FL", "TP", "precision", "recall", "recall_rough")), ""]
    out += ["**Checks (issue 6)**", ""] + [f"- {k}: {'yes' if v else 'NO'}" for k, v in checks(fig).items()]
    if high == "High":
        out.append("- the ReCls checks (fewer FN, fewer FP) need a UNet-patch: not evaluated")
    if timings:
        out += ["", "Detection wall time for the whole test set (2 CPU cores): "
                + ", ".join(f"{k} {v / 60:.1f} min ({v / fig['cases']:.1f} s/case)" for k, v in timings.items())]
    return "\n".join(out) + "\n"


def write_results(test, det_dirs, timings, out_md) -> dict:
    fig = compute(Path(test) / "labelsTr", det_dirs)
    Path(out_md).write_text(markdown(fig, timings))
    Path(out_md).with_suffix(".json").write_text(json.dumps({**fig, "checks": checks(fig), "timings_s": timings},
                                                            indent=1, default=str))
    return fig


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-ref", required=True, help="reference label maps folder")
    p.add_argument("--base", required=True)
    p.add_argument("--base-recls", default=None)
    p.add_argument("--high-recls", default=None)
    p.add_argument("--high", default=None, help="the f = 1 and 4 run without UNet-patch (instead of the ReCls runs)")
    p.add_argument("-o", default=None, help="markdown output (default: print)")
    a = p.parse_args(argv)
    if a.high:
        dirs = {"Base": a.base, "High": a.high}
    elif a.base_recls and a.high_recls:
        dirs = {"Base": a.base, "Base+ReCls": a.base_recls, "High+ReCls": a.high_recls}
    else:
        p.error("give --base-recls and --high-recls, or --high")
    fig = compute(a.ref, dirs)
    text = markdown(fig)
    if a.o:
        Path(a.o).write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
