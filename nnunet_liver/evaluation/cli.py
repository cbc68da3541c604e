"""``nnunet-liver-evaluate``: lesion- and patient-level metrics of a prediction folder against references.

    nnunet-liver-evaluate -ref REF_DIR -pred PRED_DIR [-o OUT] [--overlap any|iou:X|dice:X]
                          [--min-volume CM3] [--min-pred-volume CM3] [--strata]

Writes ``OUT/summary.json`` and CSV tables (``lesion_table.csv``, ``reference_counts.csv`` (Table I),
``patient.csv``, ``per_case.csv``, ``lesions.csv`` (one row per lesion with its outcome), and when
available ``auc.csv`` (LiverMax), ``lesion_head_auc.csv`` (the lesion head's per-type one-vs-rest AUC over the matched
lesions, for detector outputs of a UNet-patch with the lesion head of Huang et al., "LIDIA: Precise Liver Tumor
Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative Fusion and Asymmetric Contrastive Learning"),
``strata.csv``, ``froc.csv`` + ``froc.png``); prints the tables.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import sys
from typing import Dict, List, Optional

from nnunet_liver.utils.io import InputError, atomic_path, run_cli, write_json_atomic

PROG = "nnunet-liver-evaluate"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-ref", required=True, help="folder of reference label maps CASE.nii.gz (13-class ids)")
    p.add_argument("-pred", required=True, help="folder of predictions: CASE.nii.gz label maps, or the detector's "
                                                "CASE_lesions.nii.gz + CASE.json")
    p.add_argument("-o", default=None, help="output folder (default: PRED_DIR/evaluation)")
    p.add_argument("--overlap", default="any", help="lesion match criterion: 'any' voxel (Wang et al.), 'iou:X' "
                                                    "(IoU > X; 0.1 as picai_eval, 0.5 as LiTS) or 'dice:X' "
                                                    "(default: any)")
    p.add_argument("--min-volume", type=float, default=0.5, help="reference lesions below this volume (cm3) are "
                                                                  "ignored (default: 0.5, Wang et al. Table I)")
    p.add_argument("--min-pred-volume", type=float, default=None, help="unmatched predictions below this volume "
                                                                        "(cm3) are ignored (default: --min-volume)")
    p.add_argument("--strata", action="store_true", help="also tabulate by lesion-size strata (Table I bins)")
    p.add_argument("--no-plot", action="store_true", help="do not draw froc.png")
    p.add_argument("-q", "--quiet", action="store_true", help="do not print the tables")
    return p


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}%"


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def format_table(title: str, rows: Dict[str, dict], cols: List[str], pct: tuple = ()) -> str:
    head = [title] + cols
    body = [[name] + [(_pct(r.get(c)) if c in pct else _fmt(r.get(c))) for c in cols] for name, r in rows.items()]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body)]
    lines = ["  ".join(str(x).rjust(w) if i else str(x).ljust(w) for i, (x, w) in enumerate(zip(line, widths)))
             for line in [head] + body]
    return "\n".join(lines)


LESION_COLS = ["FN", "FN_merged", "FP", "FL", "TP", "precision", "recall", "recall_rough"]
PCT = ("precision", "recall", "recall_rough", "malignancy_sensitivity", "malignancy_specificity", "class_accuracy",
       "auc")


def _rows(table) -> Dict[str, dict]:
    """{row name: row as a dict} of a table of result rows (``LesionRow`` ...)."""
    return {k: r.to_dict() for k, r in table.items()}


def _auc_rows(auc) -> Dict[str, dict]:
    """The AUC table's rows: one per type and the mean."""
    return {k: v for k, v in auc.to_dict().items() if isinstance(v, dict)}


def report_text(res) -> str:
    out = [format_table("Type", _rows(res.lesion), LESION_COLS, PCT)]
    if res.strata:
        out.append(format_table("Volume cm3", _rows(res.strata), LESION_COLS, PCT))
    p = res.patient
    out.append(f"Patients: {p.cases} ({p.uncertain} uncertain, left out) | malignancy sensitivity "
               f"{_pct(p.malignancy_sensitivity)}, specificity {_pct(p.malignancy_specificity)} | "
               f"patient-class accuracy {_pct(p.class_accuracy)}")
    if res.auc:
        out.append(format_table("LiverMax AUC", _auc_rows(res.auc), ["auc", "positives", "negatives"], PCT))
    if res.lesion_head_auc:
        out.append(format_table("Lesion head AUC (matched lesions)", _auc_rows(res.lesion_head_auc),
                                ["auc", "positives", "negatives"], PCT))
    if res.froc:
        fr = res.froc.sensitivity_at
        out.append("FROC sensitivity at FP/case: " + ", ".join(f"{k}: {_pct(v)}" for k, v in fr.items())
                   + f" | mean {_pct(res.froc.mean_sensitivity)} | AP {_fmt(res.average_precision)}")
    if res.dice:
        out.append("Dice (mean over cases): " + ", ".join(f"{k} {_fmt(v.mean)}" for k, v in res.dice.items()))
    return "\n\n".join(out)


def _write_csv(path: str, rows: List[dict], first: Optional[str] = None) -> None:
    cols: List[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    with atomic_path(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as f:
            f.write(buf.getvalue())


def plot_froc(froc, path: str) -> None:
    """Draw an FROC curve (:class:`~nnunet_liver.evaluation.metrics.FROCResult`) and its reported points."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    xs, ys = [0.0] + list(froc.fp_per_case), [0.0] + list(froc.sensitivity)
    ax.step(xs, ys, where="post", color="C0", label="FROC")
    rates = list(froc.rates)
    ax.plot(rates, [froc.sensitivity_at[f"{r:g}"] for r in rates], "o", color="C1", label="reported points")
    ax.set_xscale("symlog", linthresh=0.125)
    ax.set_xlim(0, max(rates + [max(xs)]))
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("false positives per case")
    ax.set_ylabel("lesion sensitivity")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)


def write_outputs(res, out_dir: str, plot: bool = True) -> List[str]:
    os.makedirs(out_dir, exist_ok=True)
    written = []

    def p(name):
        written.append(os.path.join(out_dir, name))
        return written[-1]

    write_json_atomic(res.to_dict(), p("summary.json"))
    _write_csv(p("lesion_table.csv"), [{"type": k, **v} for k, v in _rows(res.lesion).items()])
    _write_csv(p("reference_counts.csv"), [{"type": k, **v} for k, v in res.reference_counts.items()])
    _write_csv(p("patient.csv"), [res.patient.to_dict()])
    _write_csv(p("per_case.csv"), [c.row() for c in res.cases])
    _write_csv(p("lesions.csv"), [r for c in res.cases for r in c.lesion_rows()])
    if res.strata:
        _write_csv(p("strata.csv"), [{"volume_cm3": k, **v} for k, v in _rows(res.strata).items()])
    if res.auc:
        _write_csv(p("auc.csv"), [{"type": k, **v} for k, v in _auc_rows(res.auc).items()])
    if res.lesion_head_auc:
        _write_csv(p("lesion_head_auc.csv"), [{"type": k, **v} for k, v in _auc_rows(res.lesion_head_auc).items()])
    if res.froc:
        _write_csv(p("froc.csv"), [{"fp_per_case": k, "sensitivity": v} for k, v in res.froc.sensitivity_at.items()]
                   + [{"fp_per_case": "mean", "sensitivity": res.froc.mean_sensitivity},
                      {"fp_per_case": "average_precision", "sensitivity": res.average_precision}])
        if plot:
            plot_froc(res.froc, p("froc.png"))
    return written


def run(args: argparse.Namespace) -> None:
    """Evaluate ``args.pred`` against ``args.ref``, write the tables, print them unless ``args.quiet``."""
    from nnunet_liver.evaluation.evaluate import evaluate_folders

    if args.min_volume < 0 or (args.min_pred_volume is not None and args.min_pred_volume < 0):
        raise InputError("--min-volume: volumes must be >= 0 cm3")
    res = evaluate_folders(args.ref, args.pred, overlap=args.overlap, min_ref_volume_cm3=args.min_volume,
                           min_pred_volume_cm3=args.min_volume if args.min_pred_volume is None
                           else args.min_pred_volume, strata=args.strata, progress=not args.quiet)
    out = args.o or os.path.join(args.pred, "evaluation")
    write_outputs(res, out, plot=not args.no_plot)
    if not args.quiet:
        print(report_text(res))
        print(f"\nwritten to {out}")


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
