"""``nnunet-liver-phantom``: write a synthetic multi-phase liver CT dataset in nnU-Net's raw layout."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from nnunet_liver import labels as L
from nnunet_liver.phantom.lesions import MAX_LESION_CM3, MIN_LESION_CM3
from nnunet_liver.utils.io import run_cli

PROG = "nnunet-liver-phantom"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, description="Generate multi-phase liver CT phantoms (cartoon anatomy, six lesion types with "
        "textbook enhancement) as an nnU-Net raw dataset with a truth.json listing every lesion.")
    p.add_argument("-o", "--output", required=True, help="dataset folder to create, e.g. "
                   "$nnUNet_raw/Dataset501_LiverPhantom (must not exist unless --overwrite)")
    p.add_argument("-n", "--num-cases", type=int, required=True, help="number of cases")
    p.add_argument("--seed", type=int, default=0, help="dataset seed; same seed, same bytes (default: %(default)s)")
    p.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256), metavar=("Z", "Y", "X"),
                   help="voxels per case (default: 64 256 256)")
    p.add_argument("--spacing", type=float, nargs=3, default=None, metavar=("Z", "Y", "X"),
                   help="voxel spacing in mm (default: 5 mm slices and a 384 mm axial field of view)")
    p.add_argument("--phases", default=",".join(L.PHASES), help="channels to write, comma-separated subset of "
                   "NC,A,V,D, written in time order (default: %(default)s)")
    p.add_argument("--missing-delayed", type=float, default=0.0, metavar="P",
                   help="probability that a case's delayed phase is missing (constant "
                   f"{L.MISSING_PHASE_VALUE:g} channel; default: %(default)s)")
    p.add_argument("--misalign-mm", type=float, default=0.0, metavar="MM",
                   help="maximum random rigid shift (mm) of each phase against the reference phase (V); "
                   "recorded in truth.json (default: %(default)s)")
    p.add_argument("--min-lesion-volume", type=float, default=MIN_LESION_CM3, metavar="CM3",
                   help="smallest random lesion volume in cm3; volumes are log-distributed from it up to "
                   f"{MAX_LESION_CM3:g} cm3, skewed towards small ones (default: %(default)s)")
    p.add_argument("--organ-detail", action="store_true", help="kidneys with cortex, medulla and a collecting "
                   "system that fills with excreted contrast in D; an arciform (banded) spleen in A")
    p.add_argument("--oral-contrast", action="store_true", help="positive oral contrast (300-600 HU) in the "
                   "stomach and bowel, in every phase including NC")
    p.add_argument("--lipiodol", action="store_true", help="dense lipiodol deposits (800-2000 HU) in a treated "
                   "lesion (the largest HCC, else the largest lesion), as after TACE")
    p.add_argument("-np", "--num-processes", type=int, default=1, help="worker processes (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    return p


def run(args: argparse.Namespace) -> None:
    from nnunet_liver.phantom.dataset import write_phantom_dataset

    phases = tuple(p.strip() for p in args.phases.split(",") if p.strip())
    out = write_phantom_dataset(args.output, args.num_cases, args.seed, shape=args.shape, spacing=args.spacing,
                                phases=phases, missing_delayed=args.missing_delayed, misalign_mm=args.misalign_mm,
                                min_lesion_cm3=args.min_lesion_volume, num_processes=args.num_processes,
                                overwrite=args.overwrite, organ_detail=args.organ_detail,
                                oral_contrast=args.oral_contrast, lipiodol=args.lipiodol)
    print(f"{PROG}: wrote {args.num_cases} cases to {out}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
