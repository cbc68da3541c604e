#!/usr/bin/env python
"""Wang et al.'s tables for the demo models from three ``nnunet-liver-detect`` runs on a phantom test set.

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

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans".
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

from nnunet_liver.labels import LESION_NAMES, UNCERTAIN

TYPES = LESION_NAMES + ("All", "Malign")


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def table_dict(rows: dict) -> dict:
    """{row name: row as a dict} of a lesion table ({name: ``LesionRow``}), for the markdown and the JSON."""
    return {k: r.to_dict() for k, r in rows.items()}


@functools.lru_cache(maxsize=None)
def _evaluate(ref_dir, det_dir):
    """``evaluate_folders`` of one detector run, computed once per (reference, run) in a process."""
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

    res = {name: _evaluate(str(ref_dir), str(d)) for name, d in det_dirs.items()}
    ref_class = {c.case: c.ref_class for c in next(iter(res.values())).cases}
    high = _high(det_dirs)
    pred = {name: _classes(d) for name, d in det_dirs.items() if name != high}
    pred[high] = _classes(det_dirs[high], "4")
    consensus = "Base+ReCls & High+ReCls" if high == "High+ReCls" else "Base & High"
    pred[consensus] = _classes(det_dirs[high])
    patient = {k: M.patient_table((ref_class[c], v[c]) for c in ref_class).to_dict() for k, v in pred.items()}
    agree = {c for c, v in pred[consensus].items() if v != UNCERTAIN}
    consensus_lesion = table_dict(M.lesion_table(c.match for c in res[high].cases if c.case in agree))
    return {"lesion": {k: table_dict(r.lesion) for k, r in res.items()}, "patient": patient,
            "consensus_lesion": consensus_lesion,
            "reference_counts": next(iter(res.values())).reference_counts, "cases": len(ref_class),
            "consensus_cases": len(agree), "high": high, "consensus": consensus}


def checks(fig: dict) -> dict:
    """The demo models' acceptance checks on the figures (True/False each; the first two need the ReCls runs)."""
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
           f"unmatched predictions below 0.5 cm3 (Wang et al., Table I).", ""]
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
    out += ["**Acceptance checks**", ""] + [f"- {k}: {'yes' if v else 'NO'}" for k, v in checks(fig).items()]
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


# --- the instance-preserving split, the "uncertain" consensus and its options ---------------------------------

#: lesions at least this large count as "found" in the split section (as the second held-out set counts them)
FOUND_MIN_CM3 = 1.0
#: the volume floor of the patient-class option measured (declared before any measurement: the smallest lesion the
#: second held-out set counts)
PATIENT_FLOOR_CM3 = 1.0


def _factor_lesions(det_dir, case):
    """``(lesions, record)`` of a detector output: Lesion objects from ``CASE_lesions.nii.gz`` typed by its JSON,
    each with ``sensitivity`` ("same"/"diff") attached from the JSON."""
    from nnunet_liver.postprocessing.seg2det import lesions_from_instance_map
    from nnunet_liver.utils.io import read_image

    rec = json.loads((Path(det_dir) / f"{case}.json").read_text(encoding="utf-8"))
    inst, spacing, _ = read_image(str(Path(det_dir) / f"{case}_lesions.nii.gz"), "label")
    les = lesions_from_instance_map(inst, spacing, {int(l["id"]): l["type"] for l in rec["lesions"]})
    sens = {int(l["id"]): l["sensitivity"] for l in rec["lesions"]}
    for l in les:
        l.sensitivity = sens[l.id]
    return les, rec


def _outranks(a: str, b: str) -> bool:
    """Patient class ``a`` has a higher priority than ``b`` ("normal" lowest)."""
    from nnunet_liver.postprocessing.patient import PATIENT_CLASSES

    return PATIENT_CLASSES.index(a) < PATIENT_CLASSES.index(b)


def uncertain_cause(f1, f4, c1, c4, truth_lesions=()) -> str:
    """Why the lowest and highest factor's patient classes ``c1`` != ``c4`` differ, from their final lesions.

    ``f1``/``f4``: the two factors' lesions after reclassification (on one grid); ``truth_lesions``: the
    reference lesions, to tell a lesion only f = 4 finds that is real from a false positive.
    """
    from nnunet_liver.postprocessing.match import match

    m = match(f1, f4, min_ref_volume_cm3=0, min_pred_volume_cm3=0)
    partner_of4 = {p: r for r, p in m.pairs}
    partner_of1 = dict(m.pairs)
    by1, by4 = {l.id: l for l in f1}, {l.id: l for l in f4}
    if _outranks(c4, c1):
        deciding = [l for l in f4 if l.type == c4]
        both = [l for l in deciding if l.id in partner_of4]
        if both:
            return f"a lesion both find is {c4} at f = 4, {by1[partner_of4[both[0].id]].type} at f = 1"
        big = max(deciding, key=lambda l: l.volume_cm3)
        real = any(_overlap(big, t) for t in truth_lesions)
        size = "< 1 cm3" if big.volume_cm3 < 1 else ">= 1 cm3"
        return f"a lesion only f = 4 finds ({size}, {'a real lesion' if real else 'no reference lesion'})"
    deciding = [l for l in f1 if l.type == c1]
    kept = [l for l in deciding if l.id in partner_of1]
    if kept:
        return f"a lesion both find is {c1} at f = 1, {by4[partner_of1[kept[0].id]].type} at f = 4"
    if any(_overlap(l, p) for l in deciding for p in f4):
        return f"f = 1's {c1} lesion merged into a neighbour at f = 4"
    return f"f = 1's {c1} lesion dropped at f = 4 (reclassification)"


def _overlap(a, b) -> bool:
    from nnunet_liver.postprocessing.match import overlap_matrix

    return bool(overlap_matrix([a], [b])[0, 0] > 0)


def patient_options(f1, f4):
    """The patient class of the paper's consensus and of the two options measured, from the final lesions of the
    lowest (``f1``) and highest (``f4``) factor: {"paper", "floor", "same-first"}.

    floor: each factor's class from its lesions of at least PATIENT_FLOOR_CM3 (``classify_patient(min_volume_cm3)``).
    same-first: when the two factors share lesions ("same"), the consensus of the classes of the shared lesions alone;
    otherwise the paper's rule.
    """
    from nnunet_liver.postprocessing.match import match
    from nnunet_liver.postprocessing.patient import classify_patient, consensus

    paper = consensus(classify_patient(f1), classify_patient(f4))
    floor = consensus(classify_patient(f1, PATIENT_FLOOR_CM3), classify_patient(f4, PATIENT_FLOOR_CM3))
    pairs = match(f1, f4, min_ref_volume_cm3=0, min_pred_volume_cm3=0).pairs
    if pairs:
        s1, s4 = {r for r, _ in pairs}, {p for _, p in pairs}
        same = consensus(classify_patient([l for l in f1 if l.id in s1]),
                         classify_patient([l for l in f4 if l.id in s4]))
    else:
        same = paper
    return {"paper": paper, "floor": floor, "same-first": same}


def consensus_analysis(ref_dir, base_recls_dir, high_dir) -> dict:
    """Per case: the reference class, f = 1 and f = 4 classes, the options' classes and, where the paper's consensus
    is "uncertain", its cause. f = 1's lesions are the Base+ReCls run's (the same detections and patches as the
    f = 1 half of the High+ReCls run, whose ``class_by_factor["1"]`` is checked against them)."""
    from nnunet_liver.evaluation.evaluate import read_reference
    from nnunet_liver.postprocessing.patient import classify_patient

    res = _evaluate(str(ref_dir), str(high_dir))
    out = {}
    for c in res.cases:
        f1, _ = _factor_lesions(base_recls_dir, c.case)
        f4, rec = _factor_lesions(high_dir, c.case)
        c1, c4 = rec["patient"]["class_by_factor"]["1"], rec["patient"]["class_by_factor"]["4"]
        if classify_patient(f1) != c1 or classify_patient(f4) != c4:
            raise RuntimeError(f"{c.case}: the Base+ReCls run's f = 1 lesions do not give the High+ReCls run's f = 1 "
                               f"class ({classify_patient(f1)} vs {c1}): not the same detector settings")
        row = {"ref": c.ref_class, "f1": c1, "f4": c4, **patient_options(f1, f4)}
        if row["paper"] == UNCERTAIN:
            truth = [l for l in read_reference(str(Path(ref_dir) / f"{c.case}.nii.gz"))[3] if l.volume_cm3 >= 0.5]
            row["cause"] = uncertain_cause(f1, f4, c1, c4, truth)
        out[c.case] = row
    return out


def found(ref_dir, det_dir, min_cm3: float = FOUND_MIN_CM3):
    """(found, total): reference lesions of at least ``min_cm3`` that a detection matches (TP or FL)."""
    rows = [r for c in _evaluate(str(ref_dir), str(det_dir)).cases for r in c.lesion_rows()
            if r["ref_id"] is not None and r["ref_volume_cm3"] >= min_cm3]
    return sum(r["outcome"] in ("TP", "FL") for r in rows), len(rows)


def split_section(ref_dir, runs: dict, base_recls, pairs: dict) -> str:
    """Markdown of the split section: ``runs`` {name: detector output folder} for the lesion table; ``pairs``
    {label: High+ReCls folder} for the consensus analysis, each with the Base+ReCls run ``base_recls``."""
    from nnunet_liver.evaluation import metrics as M

    out = ["| Run | FN | FN_merged | FP | FL | TP | precision | recall | Malign FN | Malign FP | "
           f"found >= {FOUND_MIN_CM3:g} cm3 |", "|---|" + "---:|" * 10]
    for name, d in runs.items():
        lesion = table_dict(_evaluate(str(ref_dir), str(d)).lesion)
        a, mal = lesion["All"], lesion["Malign"]
        k, n = found(ref_dir, d)
        out.append(f"| {name} | {a['FN']} | {a['FN_merged']} | {a['FP']} | {a['FL']} | {a['TP']} | "
                   f"{_pct(a['precision'])} | {_pct(a['recall'])} | {mal['FN']} | {mal['FP']} | {k}/{n} |")
    out += ["", "| Patient class | rule | malignancy sensitivity | specificity | uncertain | class accuracy |",
            "|---|---|---:|---:|---:|---:|"]
    causes = {}
    for label, high in pairs.items():
        rows = consensus_analysis(ref_dir, base_recls, high)
        for key, rule in (("f1", "Base+ReCls alone"), ("f4", "High+ReCls alone"), ("paper", "consensus (paper)"),
                          ("floor", f"consensus, lesions >= {PATIENT_FLOOR_CM3:g} cm3"),
                          ("same-first", "consensus, shared lesions first")):
            p = M.patient_table((r["ref"], r[key]) for r in rows.values()).to_dict()
            out.append(f"| {label} | {rule} | {_pct(p['malignancy_sensitivity'])} ({p['malignant_tp']}/"
                       f"{p['malignant_tp'] + p['malignant_fn']}) | {_pct(p['malignancy_specificity'])} "
                       f"({p['malignant_tn']}/{p['malignant_tn'] + p['malignant_fp']}) | {p['uncertain']} | "
                       f"{_pct(p['class_accuracy'])} |")
        for case, r in rows.items():
            if "cause" in r:
                causes.setdefault(label, []).append((case, r))
    for label, rows in causes.items():
        out += ["", f"Why f = 1 and f = 4 disagree ({label}, {len(rows)} uncertain cases):", ""]
        counts = {}
        for case, r in rows:
            counts.setdefault(r["cause"], []).append(f"{case} (truth {r['ref']}: f = 1 {r['f1']}, f = 4 {r['f4']})")
        out += [f"- {cause}: {len(v)} -- " + "; ".join(v)
                for cause, v in sorted(counts.items(), key=lambda kv: -len(kv[1]))]
    return "\n".join(out) + "\n"


#: the detector runs of the split section, as LiverDetector settings with the bundled models (``patch_model_dir``
#: None: no reclassification); the folders are ``det_NAME``
SPLIT_RUNS = {"Base": dict(factors=(1,), patch_model_dir=None, split=False),
              "Base_ReCls": dict(factors=(1,), split=False),
              "High_ReCls": dict(factors=(1, 4), split=False),
              "High_ReCls_split": dict(factors=(1, 4), split=True, marker_factor=None)}
#: the same with the marker factor (the detector's default): f = 1's regions split among f = 0.25's lesions too
MARKER_RUNS = {"Base_markers": dict(factors=(1,), patch_model_dir=None),
               "Base_ReCls_markers": dict(factors=(1,)),
               "High_markers": dict(factors=(1, 4), patch_model_dir=None),
               "High_ReCls_markers": dict(factors=(1, 4))}


def detect_runs(input_dir, out_root, runs=None, model="demo", patch="demo", progress=True) -> dict:
    """Several detector configurations on the cases of ``input_dir`` from ONE UNet-whole prediction per case
    (``LiverDetector.predict_case``): ``out_root/det_NAME/CASE.json`` and ``CASE_lesions.nii.gz`` per run, as
    ``nnunet-liver-detect`` writes them (no summary or report), the same outputs as separate runs but for
    ``timing_s``. A case whose outputs all exist is skipped. Returns {name: folder}."""
    from tqdm import tqdm

    from nnunet_liver.inference import LiverDetector
    from nnunet_liver.inference.cases import discover_cases
    from nnunet_liver.inference.runner import output_paths, with_relative_inputs
    from nnunet_liver.utils.io import write_image_like, write_json_atomic

    runs = SPLIT_RUNS if runs is None else runs
    dets = {name: LiverDetector(model, **{"patch_model_dir": patch, **kw}) for name, kw in runs.items()}
    first = next(iter(dets.values()))
    all_factors = sorted({f for det in dets.values() for f in det.map_factors})  # one prediction serves every run
    folders = {name: Path(out_root) / f"det_{name}" for name in runs}
    for f in folders.values():
        f.mkdir(parents=True, exist_ok=True)
    cases = discover_cases(str(input_dir), len(first.channel_names), first.file_ending)
    for case in tqdm(cases, desc="detect_runs", unit="case", disable=not progress):
        paths = {name: output_paths(str(folders[name]), case.case_id) for name in runs}
        if all(Path(p["json"]).exists() for p in paths.values()):
            continue
        prediction = first.predict_case(case, factors=all_factors)
        for name, det in dets.items():
            res = with_relative_inputs(det.detect_case(case, prediction=prediction), input_dir)
            write_image_like(res.instance_map, res.case.reference, paths[name]["lesions"])
            write_json_atomic(res.record, paths[name]["json"])
    return {name: str(f) for name, f in folders.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("-ref", required=True, help="reference label maps folder")
    p.add_argument("--base", default=None, help="the Base run (required unless --high-recls-split)")
    p.add_argument("--base-recls", default=None)
    p.add_argument("--high-recls", default=None)
    p.add_argument("--high", default=None, help="the f = 1 and 4 run without UNet-patch (instead of the ReCls runs)")
    p.add_argument("--high-recls-split", default=None, metavar="DIR",
                   help="the High+ReCls run with the instance-preserving split (the detector's default), --high-recls "
                        "being the --no-split run: writes the split section instead (lesion table with FN_merged, "
                        "patient classes, the causes of 'uncertain' and the consensus options)")
    p.add_argument("--run", nargs="+", default=[], metavar="NAME=DIR",
                   help="with --high-recls-split: more rows for the lesion table (e.g. the MARKER_RUNS folders: "
                        "'Base, markers=det_Base_markers')")
    p.add_argument("-o", default=None, help="markdown output (default: print)")
    a = p.parse_args(argv)
    if a.high_recls_split:
        if not (a.base_recls and a.high_recls):
            p.error("--high-recls-split needs --base-recls and --high-recls (the --no-split run)")
        runs = {"Base": a.base} if a.base else {}
        runs.update({"Base+ReCls": a.base_recls, "High+ReCls, --no-split (paper)": a.high_recls,
                     "High+ReCls, split": a.high_recls_split})
        for item in a.run:
            name, sep, folder = item.rpartition("=")
            if not sep or not name:
                p.error(f"--run {item!r}: expected NAME=DIR")
            runs[name] = folder
        text = split_section(a.ref, runs, a.base_recls, {"--no-split": a.high_recls, "split": a.high_recls_split})
    else:
        if not a.base:
            p.error("--base is required")
        if a.high:
            dirs = {"Base": a.base, "High": a.high}
        elif a.base_recls and a.high_recls:
            dirs = {"Base": a.base, "Base+ReCls": a.base_recls, "High+ReCls": a.high_recls}
        else:
            p.error("give --base-recls and --high-recls, or --high")
        text = markdown(compute(a.ref, dirs))
    if a.o:
        Path(a.o).write_text(text, encoding="utf-8")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
