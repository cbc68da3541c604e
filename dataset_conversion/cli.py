"""``nnunet-liver-convert {msd,lits,multiphase,dicom,hcc-tace-seg,patches}``: public or own data -> nnU-Net raw
datasets.

Common options of msd / lits / multiphase / dicom / hcc-tace-seg::

    -i INPUT        source folder; give -i several times to merge several sources of the same kind into one
                    dataset (e.g. two MSD tasks, or several folders of multi-phase cases)
    -d DATASET_ID   nnU-Net dataset id (default per source: msd 520, lits 521, multiphase 522, dicom 524,
                    hcc-tace-seg 525)
    -n NAME         dataset name (DatasetXXX_NAME)
    -o RAW_ROOT     nnU-Net raw folder to write into (default: $nnUNet_raw)
    --phases        channel layout written (msd/lits default V, multiphase/dicom default NC,A,V,D)
    --append        add the cases to the existing DatasetXXX_NAME (same --phases): merges sources of
                    different kinds, e.g. `msd ... -d 530` then `multiphase ... -d 530 --append`
    --overwrite     replace an existing DatasetXXX_NAME
    -np N           worker processes

``patches`` (the UNet-patch dataset) has its own options, from ``nnunet_liver.dataset_conversion.patches``.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Optional, Sequence

from nnunet_liver import labels as L
from nnunet_liver.utils.io import run_cli

PROG = "nnunet-liver-convert"
SOURCES = {"msd": ("Medical Segmentation Decathlon task folder(s) (Task03_Liver, Task08_HepaticVessel, "
                   "Task09_Spleen, Task07_Pancreas)", "V"),
           "lits": ("LiTS folder(s) with volume-N / segmentation-N", "V"),
           "multiphase": ("folder(s) of multi-phase case folders (NC/A/V/D + optional label), registered to the "
                          "reference phase", ",".join(L.PHASES)),
           "dicom": ("folder(s) of DICOM studies (any depth, one case per study), phases identified and registered "
                     "to the reference phase; studies with DICOM SEG or RTSTRUCT annotations labelled (imagesTr/"
                     "labelsTr), the others in imagesTs", ",".join(L.PHASES)),
           "hcc-tace-seg": ("TCIA's HCC-TACE-Seg collection as TCIA downloads it (patient folders and metadata.csv): "
                            "four phases, liver, HCC and portal vein from its DICOM SEGs", ",".join(L.PHASES))}


def _module(source: str) -> str:
    return f"nnunet_liver.dataset_conversion.{source.replace('-', '_')}"


def _add_common(p: argparse.ArgumentParser, default_phases: str) -> None:
    p.add_argument("-i", "--input", action="append", required=True, metavar="INPUT",
                   help="source folder; repeat to merge several sources into one dataset")
    p.add_argument("-d", "--dataset-id", type=int, default=None,
                   help="nnU-Net dataset id (default: msd 520, lits 521, multiphase 522, dicom 524, "
                        "hcc-tace-seg 525)")
    p.add_argument("-n", "--name", default=None, help="dataset name (default from the source)")
    p.add_argument("-o", "--output", default=None, metavar="RAW_ROOT",
                   help="nnU-Net raw folder to write DatasetXXX_NAME into (default: $nnUNet_raw)")
    p.add_argument("--phases", default=default_phases,
                   help="channel layout written, comma-separated subset of NC,A,V,D (default: %(default)s); "
                        "absent phases are written as the constant missing channel "
                        f"({L.MISSING_PHASE_VALUE:g} HU)")
    p.add_argument("--append", action="store_true",
                   help="add the cases to an existing DatasetXXX_NAME with the same channel layout")
    p.add_argument("--overwrite", action="store_true", help="replace an existing DatasetXXX_NAME")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default: 1)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description="Convert public single-phase datasets or multi-phase "
                                     "case folders into nnU-Net raw datasets in nnunet_liver's 13-class scheme.",
                                     epilog="see `nnunet-liver-convert SOURCE -h` for each source's options")
    sub = parser.add_subparsers(dest="source", required=True,
                                metavar="{msd,lits,multiphase,dicom,hcc-tace-seg,patches}")
    for name, (help_text, phases) in SOURCES.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        _add_common(p, phases)
        importlib.import_module(_module(name)).add_arguments(p)
    p = sub.add_parser("patches", help="UNet-patch dataset (liver crops, outside masked) from a whole-CT dataset",
                       description="UNet-patch dataset (liver crops, outside masked) from a whole-CT dataset")
    importlib.import_module("nnunet_liver.dataset_conversion.patches").add_arguments(p)
    return parser


def run(args: argparse.Namespace) -> None:
    out = importlib.import_module(_module(args.source)).run(args)
    print(f"{PROG}: wrote {out}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
