"""``nnunet-liver-demo``: the whole product on a laptop CPU in a few minutes, with the bundled demo models.

    nnunet-liver-demo [-o OUT] [--overwrite] [--device cpu]

1. Generates five small synthetic phantoms (:mod:`nnunet_liver.phantom`, seed :data:`DEMO_SEED`, never used to
   train the demo models): an HCC liver, metastases with a cyst, an ICC with its delayed phase missing, benign
   lesions (hemangioma and cyst) and a lesion-free liver, written as ``OUT/phantoms/imagesTr`` (nnU-Net naming,
   channels NC, A, V, D; the ICC case has no ``_0003`` file) and ``OUT/phantoms/labelsTr`` (the truth).
2. Runs ``nnunet-liver-detect -m demo --patch-model demo`` (UNet-whole with nnU-Net's test-time mirroring, the
   detector's default and the model card's evaluation setting; sensitivity factors 1 and 4; lesion-shuffle
   reclassification with UNet-patch; patient classes) into ``OUT/detections`` (``CASE.json``,
   ``CASE_lesions.nii.gz``, ``summary.csv``, ``report.html``).
3. Runs ``nnunet-liver-evaluate`` against the phantom truth into ``OUT/evaluation``.
4. Prints where the report is and the headline figures, and writes them to ``OUT/demo_summary.json``.

The demo models are trained on synthetic phantoms for demonstration and testing only; see
``nnunet_liver/demo_models/MODEL_CARD.md``. Not for clinical use.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import shutil
import sys
import time
from typing import List, Optional

from nnunet_liver.utils.io import InputError, run_cli, write_json_atomic

PROG = "nnunet-liver-demo"
#: phantom seed of the demo cases (the demo models were trained with seed 601 and tested with 20261)
DEMO_SEED = 7
#: phantom geometry of the demo models (z, y, x): voxels and mm
DEMO_SHAPE = (24, 96, 96)
DEMO_SPACING = (6.0, 4.0, 4.0)
#: smallest random lesion volume of the demo phantoms (cm3): 3 cm3 is a sphere of 1.8 cm, 30 voxels at 6 x 4 x 4 mm
#: (the default 0.5 cm3 is 5 voxels there, too few for the small demo models; see MODEL_CARD.md)
DEMO_MIN_LESION_CM3 = 3.0
#: the demo cases: (name, lesion types, delayed phase missing)
DEMO_CASES = (("demo_hcc", ("HCC",), False),
              ("demo_meta", ("Meta", "Meta", "Cyst"), False),
              ("demo_icc_no_delayed", ("ICC",), True),
              ("demo_benign", ("Hem", "Cyst"), False),
              ("demo_normal", (), False))
OUTPUTS = ("phantoms", "detections", "evaluation", "demo_summary.json")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Run the whole pipeline (phantoms -> nnunet-liver-detect with the bundled "
                                            "demo models -> nnunet-liver-evaluate) on five synthetic cases. "
                                            "Demonstration only: the models are trained on synthetic phantoms.")
    p.add_argument("-o", default="nnunet_liver_demo", metavar="OUT", help="output folder (must be empty or new)")
    p.add_argument("--overwrite", action="store_true", help="replace the outputs of an earlier demo run in OUT")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:K")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    return p


def prepare_output(out: str, overwrite: bool) -> None:
    """Create ``out``; refuse a non-empty folder unless ``overwrite`` (then only the demo's own outputs go)."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise InputError(f"{out}: exists and is not a folder")
    if os.path.isdir(out) and os.listdir(out):
        if not overwrite:
            raise InputError(f"{out}: folder exists and is not empty; choose another -o or pass --overwrite")
        foreign = [n for n in os.listdir(out) if n not in OUTPUTS]
        if foreign:
            raise InputError(f"{out}: holds files the demo did not write ({', '.join(sorted(foreign)[:3])}); "
                             f"--overwrite only replaces an earlier demo run, choose another -o")
        for name in OUTPUTS:
            path = os.path.join(out, name)
            if os.path.isdir(path):
                shutil.rmtree(path)
            elif os.path.exists(path):
                os.remove(path)
    os.makedirs(out, exist_ok=True)


def write_demo_cases(folder: str) -> List[dict]:
    """Generate the demo phantoms into ``folder/imagesTr`` and ``folder/labelsTr``; returns their truth."""
    from nnunet_liver import labels as L
    from nnunet_liver.phantom import generate_case
    from nnunet_liver.phantom.dataset import case_seed, write_case

    os.makedirs(os.path.join(folder, "imagesTr"))
    os.makedirs(os.path.join(folder, "labelsTr"))
    truth = []
    for k, (name, types, missing) in enumerate(DEMO_CASES):
        case = generate_case(case_seed(DEMO_SEED, k), shape=DEMO_SHAPE, spacing=DEMO_SPACING,
                             missing_delayed=missing, lesion_types=types,
                             min_lesion_cm3=DEMO_MIN_LESION_CM3)
        write_case(case, name, folder)
        if missing:  # no delayed-phase file at all: the detector fills the IFM model's constant channel
            os.remove(os.path.join(folder, "imagesTr", f"{name}_{L.PHASES.index('D'):04d}.nii.gz"))
        truth.append({"case": name, **case.truth()})
    write_json_atomic({"cases": truth}, os.path.join(folder, "truth.json"))
    return truth


def headline(summary: dict, detections: str) -> dict:
    """Headline figures from ``nnunet-liver-evaluate``'s summary.json and the detector's JSON files."""
    les, pat = summary["lesion"], summary["patient"]
    cases = []
    for row in summary["per_case"]:
        with open(os.path.join(detections, f"{row['case']}.json"), encoding="utf-8") as f:
            d = json.load(f)
        cases.append({"case": row["case"], "truth": row["ref_class"], "predicted": row["pred_class"],
                      "phases": d["phases_present"], "lesions_found": len(d["lesions"]),
                      "true_lesions": row["ref_lesions"], "TP": row["TP"], "FL": row["FL"], "FP": row["FP"],
                      "FN": row["FN"], "seconds": d.get("timing_s", {}).get("total")})
    return {"cases": cases,
            "lesion": {k: les["All"][k] for k in ("TP", "FL", "FP", "FN", "precision", "recall", "recall_rough")},
            "malignant_lesion": {k: les["Malign"][k] for k in ("TP", "FL", "FP", "FN", "precision", "recall")},
            "patient": dict(cases=pat["cases"], uncertain=pat["uncertain"],
                            malignancy_sensitivity=pat["malignancy_sensitivity"],
                            malignancy_specificity=pat["malignancy_specificity"],
                            class_accuracy=pat["class_accuracy"])}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.0f}%"


def format_headline(h: dict, out: str, seconds: float) -> str:
    lines = [f"{'case':<22}{'phases':<13}{'truth':<8}{'predicted':<11}{'lesions found/true':<20}TP FL FP FN"]
    for c in h["cases"]:
        lines.append(f"{c['case']:<22}{','.join(c['phases']):<13}{c['truth']:<8}{c['predicted']:<11}"
                     f"{c['lesions_found']}/{c['true_lesions']:<18}{c['TP']:<3}{c['FL']:<3}{c['FP']:<3}{c['FN']}")
    a, p = h["lesion"], h["patient"]
    lines += ["",
              f"lesions (>= 0.5 cm3): recall {_pct(a['recall'])} (type ignored: {_pct(a['recall_rough'])}), "
              f"precision {_pct(a['precision'])} | TP {a['TP']}, FL {a['FL']}, FP {a['FP']}, FN {a['FN']}",
              f"patients: malignancy sensitivity {_pct(p['malignancy_sensitivity'])}, specificity "
              f"{_pct(p['malignancy_specificity'])}, class accuracy {_pct(p['class_accuracy'])} "
              f"({p['uncertain']} of {p['cases']} uncertain, left out)",
              "",
              f"report:     {os.path.join(os.path.abspath(out), 'detections', 'report.html')}",
              f"evaluation: {os.path.join(os.path.abspath(out), 'evaluation')} (tables as CSV and summary.json)",
              f"finished in {seconds:.0f} s. Demo models trained on synthetic phantoms: not for clinical use."]
    return "\n".join(lines)


def run_demo(out: str, overwrite: bool = False, device: str = "cpu", progress: bool = True) -> dict:
    """Run the demo into ``out``; returns the headline figures (also written to ``out/demo_summary.json``)."""
    from nnunet_liver.evaluation import cli as evaluate_cli
    from nnunet_liver.inference import cli as detect_cli
    from nnunet_liver.inference.model import resolve_model_dir

    t0 = time.perf_counter()
    for which in ("whole", "patch"):
        resolve_model_dir("demo", which)  # clear error before any work
    prepare_output(out, overwrite)
    phantoms, detections, evaluation = (os.path.join(out, n) for n in ("phantoms", "detections", "evaluation"))
    print(f"{PROG}: 1/3 generating {len(DEMO_CASES)} phantom cases -> {phantoms}", flush=True)
    write_demo_cases(phantoms)
    print(f"{PROG}: 2/3 nnunet-liver-detect -m demo --patch-model demo -> {detections}", flush=True)
    detect_args = ["-i", os.path.join(phantoms, "imagesTr"), "-o", detections, "-m", "demo",
                   "--patch-model", "demo", "--device", device]
    with contextlib.redirect_stderr(sys.stderr if progress else io.StringIO()):
        code = detect_cli.main(detect_args)
    if code != 0:
        raise RuntimeError(f"nnunet-liver-detect {' '.join(detect_args)} failed with exit code {code}")
    print(f"{PROG}: 3/3 nnunet-liver-evaluate -> {evaluation}", flush=True)
    with contextlib.redirect_stdout(io.StringIO()):
        code = evaluate_cli.main(["-ref", os.path.join(phantoms, "labelsTr"), "-pred", detections, "-o", evaluation,
                                  "-q"])
    if code != 0:
        raise RuntimeError(f"nnunet-liver-evaluate failed with exit code {code}")
    with open(os.path.join(evaluation, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    h = headline(summary, detections)
    h["seconds"] = round(time.perf_counter() - t0, 1)
    h["report"] = os.path.abspath(os.path.join(detections, "report.html"))
    write_json_atomic(h, os.path.join(out, "demo_summary.json"))
    print(format_headline(h, out, h["seconds"]), flush=True)
    return h


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> None:
        run_demo(args.o, overwrite=args.overwrite, device=args.device, progress=not args.quiet)

    return run_cli(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
