"""``nnunet-liver-characterize features|train|predict|evaluate``: the second-stage lesion characterization.

A thin layer over :mod:`nnunet_liver.characterize.pipeline` (CHARACTERIZE.md has the commands and their outputs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from nnunet_liver.utils.io import InputError, run_cli

PROG = "nnunet-liver-characterize"


def _source_args(p, table: bool = True):
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("-i", metavar="DATASET_DIR", help="nnU-Net raw dataset: dataset.json (channels NC/A/V/D), "
                   "imagesTr/, labelsTr/ (reference label maps in our ids: their lesions are characterized)")
    if table:
        g.add_argument("-t", metavar="TABLE", help="a features table (.csv/.parquet) instead of images")
    p.add_argument("--subset", default="Tr", choices=["Tr", "Ts"], help="images/labels subset of the dataset")
    p.add_argument("--labels", metavar="CSV", help="labels per lesion: case, lesion_id, and any of hcc, APHE, NPW, "
                   "EC (1/0, empty = unknown); they replace the table's")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description="Lesion characterization: Sarfati et al.'s LI-RADS features and "
                                            "sub-models, radiomics, logistic regressions giving an HCC probability, "
                                            "the LI-RADS v2018 category for patients at risk, and their AUC tables.")
    sub = p.add_subparsers(dest="command", required=True)
    f = sub.add_parser("features", help="write the features table of a dataset's lesions",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _source_args(f, table=False)
    f.add_argument("-o", required=True, metavar="TABLE", help="output table (.csv or .parquet; TABLE.json beside)")
    f.add_argument("--no-radiomics", action="store_true", help="handcrafted features only")
    f.add_argument("--washout-phase", default="V", choices=["V", "D"],
                   help="phase of f_NPW (Eq. (1): the portal venous phase V)")
    ph = sub.add_parser("phantoms", help="write phantoms with HCC in about 40 %% of the lesions (an nnU-Net raw "
                        "dataset with truth.json)", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ph.add_argument("-o", required=True, metavar="DATASET_DIR")
    ph.add_argument("-n", type=int, default=40, help="number of cases")
    ph.add_argument("--seed", type=int, default=0)
    ph.add_argument("--shape", type=int, nargs=3, default=[48, 192, 192], metavar=("Z", "Y", "X"))
    ph.add_argument("--overwrite", action="store_true")
    t = sub.add_parser("train", help="train a characterizer", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _source_args(t)
    t.add_argument("-o", required=True, metavar="MODEL_DIR", help="characterizer folder to write")
    t.add_argument("--deep", action="store_true", help="train the deep sub-models (HCC, APHE, EC, NPW; needs -i)")
    t.add_argument("--deep-settings", metavar="JSON", help="deep sub-model settings overriding the defaults "
                   "(e.g. {\"patch_size\": [16, 32, 32], \"iterations\": 200}; CHARACTERIZE.md)")
    t.add_argument("--folds", type=int, default=5, help="cross-validation folds (stratified, grouped by case)")
    t.add_argument("--primary", default=None, help="the model reported as hcc_probability (default: DLF+HF with "
                   "deep sub-models, else HF)")
    t.add_argument("--no-radiomics", action="store_true", help="no radiomics (no RAD models)")
    t.add_argument("--washout-phase", default="V", choices=["V", "D"], help="phase of f_NPW (Eq. (1): V)")
    t.add_argument("--radiomics-phases", default="NC,A,V,D", help="phases whose radiomics the RAD models use")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--device", default="cpu", help="device of the deep sub-models' training")
    t.add_argument("--overwrite", action="store_true", help="replace an existing MODEL_DIR")
    pr = sub.add_parser("predict", help="HCC and criteria probabilities and LI-RADS per lesion",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    _source_args(pr)
    pr.add_argument("-m", required=True, metavar="MODEL_DIR", help="characterizer folder (or 'demo')")
    pr.add_argument("-o", required=True, metavar="OUT", help="output table (.csv or .parquet)")
    pr.add_argument("--model", default=None, help="report this model as hcc_probability (default: the primary)")
    pr.add_argument("--at-risk", nargs="?", const="all", default=None, metavar="CSV",
                    help="patients at risk of HCC get the LI-RADS category: every patient (no value) or those of "
                         "a CSV (case, at_risk)")
    pr.add_argument("--device", default="cpu")
    e = sub.add_parser("evaluate", help="AUC tables (Sarfati et al. Tables 2-3, Nolte) of a characterizer",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    e.add_argument("-m", required=True, metavar="MODEL_DIR", help="characterizer folder (its training table)")
    g = e.add_mutually_exclusive_group()
    g.add_argument("-i", metavar="TEST_DATASET_DIR", help="held-out nnU-Net raw dataset (Table 3, Nolte)")
    g.add_argument("-t", metavar="TEST_TABLE", help="held-out features table (without deep sub-models)")
    e.add_argument("--subset", default="Tr", choices=["Tr", "Ts"])
    e.add_argument("--labels", metavar="CSV", help="labels of the test lesions (see train)")
    e.add_argument("--detections", metavar="DETS_DIR", help="nnunet-liver-detect's outputs on the test dataset "
                   "(with --characterizer): the same-lesion comparison with UNet-patch's type and LiverMax")
    e.add_argument("-o", required=True, metavar="EVAL_DIR")
    e.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the 95 %% CIs")
    e.add_argument("--device", default="cpu")
    return p


def _feature_settings(args):
    from nnunet_liver.characterize.table import FeatureSettings

    radiomics = not getattr(args, "no_radiomics", False)
    if radiomics:
        from nnunet_liver.characterize.radiomics import radiomics_missing

        if radiomics_missing():
            raise InputError(f"{radiomics_missing()} (or pass --no-radiomics)")
    phases = tuple(p for p in getattr(args, "radiomics_phases", "NC,A,V,D").split(",") if p)
    if not phases or any(p not in ("NC", "A", "V", "D") for p in phases):
        raise InputError(f"--radiomics-phases {','.join(phases)}: a comma-separated subset of NC,A,V,D")
    return FeatureSettings(washout_phase=getattr(args, "washout_phase", "V"), radiomics=radiomics,
                           radiomics_phases=phases)


def _read_source(args, settings, deep=None, initial=False, reference=True):
    """(table, patches, description source) from -i DATASET or -t TABLE (+ --labels)."""
    from nnunet_liver.characterize.lesions import dataset_channels, iter_dataset, phantom_truth
    from nnunet_liver.characterize.pipeline import collect
    from nnunet_liver.characterize.table import merge_labels, read_table

    patches = None
    if getattr(args, "t", None):
        if deep is not None:
            raise InputError(f"{args.t}: deep sub-models need the images: give the dataset with -i")
        table, desc = read_table(args.t)
        source = {"table": os.path.abspath(args.t), "table_source": desc.get("source")}
    else:
        dataset_channels(args.i)
        table, patches = collect(iter_dataset(args.i, args.subset), settings, deep, phantom_truth(args.i),
                                 reference, initial, progress=True)
        source = {"dataset": os.path.abspath(args.i), "subset": args.subset}
    if getattr(args, "labels", None):
        table = merge_labels(table, args.labels)
    return table, patches, source


def _load_characterizer(path: str):
    from nnunet_liver.characterize.characterizer import Characterizer

    return Characterizer.load(demo_characterizer_dir() if path == "demo" else path)


def demo_characterizer_dir() -> str:
    """The bundled demo characterizer (HF and criterion logistic regressions trained on phantoms)."""
    return os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "demo_models", "characterizer")


def _write(table, path, description):
    from nnunet_liver.characterize.table import write_table

    write_table(table, path, description)
    print(f"{PROG}: {len(table)} lesions -> {path}", file=sys.stderr)


def run(args) -> int:
    from nnunet_liver.characterize.table import table_description

    if args.command == "phantoms":
        from nnunet_liver.characterize.phantoms import write_lesion_phantoms

        if args.n < 1:
            raise InputError(f"-n {args.n}: at least one case")
        write_lesion_phantoms(args.o, args.n, args.seed, tuple(args.shape), overwrite=args.overwrite)
        print(f"{PROG}: {args.n} phantoms -> {args.o}", file=sys.stderr)
        return 0
    if args.command == "features":
        settings = _feature_settings(args)
        table, _, source = _read_source(args, settings)
        _write(table, args.o, table_description(settings, source))
        return 0
    if args.command == "train":
        from nnunet_liver.characterize.deep import DeepSettings
        from nnunet_liver.characterize.pipeline import train_characterizer

        if os.path.exists(args.o) and not args.overwrite:
            raise InputError(f"{args.o}: already exists (--overwrite replaces it)")
        deep = None
        if args.deep:
            overrides = {}
            if args.deep_settings:
                try:
                    with open(args.deep_settings, encoding="utf-8") as fh:
                        overrides = json.load(fh)
                    deep = DeepSettings.from_dict({**DeepSettings().to_dict(), **overrides, "folds": args.folds,
                                                   "seed": args.seed})
                except (OSError, ValueError, TypeError) as ex:
                    raise InputError(f"{args.deep_settings}: not valid deep settings ({ex})") from None
            else:
                deep = DeepSettings(folds=args.folds, seed=args.seed)
        settings = _feature_settings(args)
        table, patches, source = _read_source(args, settings, deep, initial=True)
        characterizer, training_table = train_characterizer(table, patches or {}, settings, deep, args.primary,
                                                            args.seed, args.folds, args.device, source,
                                                            progress=True)
        characterizer.training["table_description"] = table_description(settings, source)
        characterizer.save(args.o, training_table, overwrite=args.overwrite)
        print(f"{PROG}: {', '.join(sorted(characterizer.models))} (primary {characterizer.primary}) on "
              f"{len(training_table)} lesions -> {args.o}", file=sys.stderr)
        return 0
    if args.command == "predict":
        from nnunet_liver.characterize.pipeline import AtRisk, characterize

        characterizer = _load_characterizer(args.m).with_primary(args.model)
        at_risk = AtRisk.from_option(args.at_risk)
        if args.i:
            from nnunet_liver.characterize.lesions import dataset_channels

            characterizer.check_phases(list(dataset_channels(args.i).values()), args.i)
        table, patches, source = _read_source(args, characterizer.feature_settings, characterizer.deep_settings,
                                              reference=True)
        out = characterize(characterizer, table, patches, at_risk, args.device)
        _write(out, args.o, {"source": source, "characterizer": characterizer.describe(),
                             "at_risk": at_risk.source})
        return 0
    if args.command == "evaluate":
        from nnunet_liver.characterize.report import evaluate_characterizer

        evaluate_characterizer(args)
        return 0
    raise InputError(f"unknown command {args.command}")


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
