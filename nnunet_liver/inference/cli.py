"""``nnunet-liver-detect``: a thin command line over :class:`nnunet_liver.inference.LiverDetector`."""
from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from nnunet_liver.utils.io import EXIT_BAD_INPUT, EXIT_FAILED, EXIT_OK, InputError, run_cli

PROG = "nnunet-liver-detect"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="Detect and classify liver lesions on multi-phase CT: UNet-whole (folds ensembled), lesion "
                    "sensitivity factors, seg2det, reclassification with UNet-patch, patient class and LiverMax. "
                    "Writes CASE.json, CASE_lesions.nii.gz, summary.csv and report.html.")
    p.add_argument("-i", default=None, metavar="CASES_DIR",
                   help="input folder, nnU-Net naming: CASE_0000.nii.gz ... in the model's channel order "
                        "(NC, A, V, D), and/or DICOM studies at any depth (one case per study, phases identified; "
                        "CASE_seg.dcm and CASE_sr.dcm written back)")
    p.add_argument("-o", required=True, metavar="OUT_DIR", help="output folder")
    p.add_argument("-m", required=True, metavar="WHOLE_MODEL_DIR",
                   help="UNet-whole's nnU-Net training output folder, or 'demo' for the bundled demo model")
    p.add_argument("-f", nargs="+", default=None, metavar="FOLD",
                   help="folds to ensemble (default: every fold holding the checkpoint)")
    p.add_argument("-chk", default="checkpoint_final.pth", help="checkpoint file name in each fold folder")
    p.add_argument("--patch-model", default=None, metavar="PATCH_MODEL_DIR",
                   help="UNet-patch's training output folder ('demo' for the bundled one; the default with "
                        "-m demo); 'none' or no UNet-patch skips the reclassification step")
    p.add_argument("--factors", nargs="+", type=float, default=[1.0, 4.0],
                   help="lesion sensitivity factors; the highest gives the final lesions, the lowest the "
                        "same/diff split")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:K (default: cuda when available, else cpu)")
    p.add_argument("--register", action="store_true",
                   help="register phases on another grid onto the venous phase (rigid, SimpleITK) instead of "
                        "failing the case")
    p.add_argument("--num-parts", type=int, default=1, help="split the cases into this many interleaved parts")
    p.add_argument("--part-id", type=int, default=0, help="which part this process runs (0 .. num_parts-1)")
    p.add_argument("--overwrite", action="store_true", help="redo cases whose outputs already exist")
    p.add_argument("--num-patches", type=int, default=10, help="reclassification patches per lesion")
    p.add_argument("--seed", type=int, default=0, help="seed of the reclassification patches")
    p.add_argument("--no-split", action="store_true",
                   help="do not split a higher factor's lesion region among the lowest factor's lesions it holds "
                        "(the paper's cascade exactly; by default two lesions that f = 1 separates stay two at f = 4)")
    p.add_argument("--marker-factor", type=float, default=None, metavar="F",
                   help="with the split, the lowest factor's regions are split among the lesions of this lower "
                        "factor of at least 0.5 cm3 (default 0.25: two lesions f = 1 joins but f = 0.25 keeps apart "
                        "stay two); 0 turns this off")
    p.add_argument("--disable-tta", action="store_true", help="no test-time mirroring (faster)")
    p.add_argument("--no-report", action="store_true", help="do not write report.html")
    p.add_argument("--characterizer", default=None, metavar="DIR",
                   help="second-stage characterizer (nnunet-liver-characterize train; 'demo' for the bundled one): "
                        "per lesion the HCC probability and the LI-RADS criteria probabilities")
    p.add_argument("--at-risk", nargs="?", const="all", default=None, metavar="CSV",
                   help="with --characterizer: patients at risk of HCC get a LI-RADS category suggestion: every "
                        "patient (no value) or those of a CSV (case, at_risk)")
    p.add_argument("--phase-map", nargs="+", default=None, metavar="SERIES=PHASE",
                   help="DICOM input: the phase of a series (series number or SeriesInstanceUID = NC, A, V, D, or "
                        "skip to leave it out), for studies whose phases cannot be identified from the images and "
                        "tags")
    web = p.add_argument_group("DICOMweb (instead of -i): studies from a server, SEG + SR back to it")
    web.add_argument("--dicomweb", metavar="URL", default=None,
                     help="DICOMweb root, e.g. http://pacs:8042/dicom-web; credentials from --dicomweb-auth or the "
                          "environment, never on the command line (nnunet_liver/node/DEPLOY.md)")
    web.add_argument("--study", nargs="+", action="extend", default=[], metavar="UID",
                     help="StudyInstanceUID(s) to retrieve (QIDO-RS + WADO-RS) and detect")
    web.add_argument("--query", nargs="+", default=None, metavar="KEY=VALUE",
                     help="QIDO-RS study query whose studies are run too, e.g. ModalitiesInStudy=CT StudyDate=20240101-")
    web.add_argument("--push", action="store_true", help="store each study's SEG + SR back (STOW-RS)")
    web.add_argument("--dicomweb-auth", metavar="FILE", default=None,
                     help='credentials file: {"token": ...} or {"username": ..., "password": ...}')
    return p


def run(args: argparse.Namespace) -> int:
    """Detect on every case of ``args.i``; one error line per failed case. The other cases still run; the exit code
    is :data:`EXIT_BAD_INPUT` if a case's files were bad, else :data:`EXIT_FAILED` if a case failed."""
    if args.patch_model is None and args.m == "demo":
        args.patch_model = "demo"  # the bundled pair: -m demo alone runs the whole cascade
    elif args.patch_model is not None and args.patch_model.lower() == "none":
        args.patch_model = None  # Wang et al.'s Base model, e.g. the bundled UNet-whole alone: --patch-model none
    if args.device is None:
        import torch

        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    from nnunet_liver.dicom.phase import parse_phase_map
    from nnunet_liver.inference.detector import LiverDetector
    from nnunet_liver.inference.runner import run_folder

    if (args.i is None) == (args.dicomweb is None):
        raise InputError("give either -i CASES_DIR or --dicomweb URL")
    if (args.study or args.query or args.push or args.dicomweb_auth) and not args.dicomweb:
        raise InputError("--study, --query, --push and --dicomweb-auth need --dicomweb URL")
    remote = None
    if args.dicomweb:  # the studies are found before the model loads: a wrong URL or UID fails at once
        from nnunet_liver.inference.dicomweb import DicomwebStudies, parse_query

        remote = DicomwebStudies(args.dicomweb, args.study, parse_query(args.query), args.push, args.dicomweb_auth)
    characterizer = None
    if args.characterizer is not None:
        from nnunet_liver.characterize.hook import DetectionCharacterizer

        characterizer = DetectionCharacterizer.from_option(args.characterizer, args.at_risk, args.device)
    elif args.at_risk is not None:
        raise InputError("--at-risk needs --characterizer (LI-RADS comes from the characterizer's feature calls)")
    detector = LiverDetector(args.m, folds=args.f, checkpoint=args.chk, patch_model_dir=args.patch_model,
                             factors=args.factors, device=args.device, register=args.register,
                             num_patches=args.num_patches, seed=args.seed, use_mirroring=not args.disable_tta,
                             split=not args.no_split, characterizer=characterizer,
                             **({} if args.marker_factor is None else {"marker_factor": args.marker_factor}))
    if characterizer is not None:
        characterizer.check_phases(detector.channel_names, args.characterizer)
    if remote is not None:
        result = remote.detect(detector, args.o, overwrite=args.overwrite, report=not args.no_report,
                               phase_map=parse_phase_map(args.phase_map))
    else:
        result = run_folder(detector, args.i, args.o, num_parts=args.num_parts, part_id=args.part_id,
                            overwrite=args.overwrite, report=not args.no_report,
                            phase_map=parse_phase_map(args.phase_map))
    for message in dict.fromkeys(result.failed.values()):  # one line per problem, however many cases it fails
        print(f"{PROG}: error: {message}", file=sys.stderr)
    print(f"{PROG}: {result} -> {args.o}", file=sys.stderr)
    if result.bad_input:
        return EXIT_BAD_INPUT
    return EXIT_OK if result.ok else EXIT_FAILED


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    return run_cli(PROG, lambda: run(args))


if __name__ == "__main__":
    sys.exit(main())
