"""A CT window in nnU-Net's plans: ``CTNormalization`` with fixed clipping for every phase channel.

nnU-Net chooses the normalisation from dataset.json's channel names: ``CTNormalization`` (clip to the 0.5/99.5
percentiles of the foreground's intensities, then z-score with the foreground's mean and std) only for channels named
"CT", per-image z-scoring for everything else -- so for our channels NC, A, V, D. Even as "CT" the automatic window
would not suit the 13-class scheme: its foreground includes the stomach's air and the enhanced vessels, so the
window spans about -750..150 HU and the soft-tissue contrast of liver lesions (20 to 60 HU) is a small fraction of
the intensity range the network sees. (On LiTS, whose foreground is liver and tumour, nnU-Net's window is about
-20..200 HU.)

:func:`apply_ct_window` edits a plans dict the way nnU-Net's documentation allows (plans are meant to be edited
between ``nnUNetv2_plan_experiment`` and ``nnUNetv2_preprocess``): every configuration's ``normalization_schemes``
becomes ``CTNormalization`` and ``use_mask_for_norm`` False, and every channel's
``foreground_intensity_properties_per_channel`` gets the window as its 0.5/99.5 percentiles, its centre as mean and
a quarter of its width as std, so preprocessed images lie in [-2, 2]. A missing phase (constant -1024 HU) stays a
constant channel (-2). ``nnunet-liver-plan`` runs nnU-Net's own fingerprint, planning and preprocessing commands with
this edit in between. nnU-Net's predictor reads the same plans, so inference applies the same window.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
from typing import List, Optional, Sequence, Tuple

from nnunet_liver.labels import CT_WINDOW_HU
from nnunet_liver.utils.io import InputError, console_script, run_cli, write_json_atomic

__all__ = ["DEFAULT_CT_WINDOW", "apply_ct_window", "ct_window_of", "plan_with_ct_window", "main"]

PROG = "nnunet-liver-plan"
#: soft-tissue window (HU): fat, water (cysts), liver and lesions, enhanced vessels partly; the pipeline's one
#: window, ``labels.CT_WINDOW_HU`` (the report draws its images with it too)
DEFAULT_CT_WINDOW: Tuple[float, float] = CT_WINDOW_HU


def apply_ct_window(plans: dict, window: Sequence[float] = DEFAULT_CT_WINDOW) -> dict:
    """A copy of nnU-Net ``plans`` whose every configuration normalises every channel with ``window`` (HU)."""
    lo, hi = float(window[0]), float(window[1])
    if not hi > lo:
        raise ValueError(f"CT window must have upper > lower, got {lo}, {hi}")
    out = copy.deepcopy(plans)
    props = out.get("foreground_intensity_properties_per_channel")
    if not props:
        raise ValueError("plans have no foreground_intensity_properties_per_channel")
    for ch in props:
        props[ch] = {"max": hi, "mean": (lo + hi) / 2.0, "median": (lo + hi) / 2.0, "min": lo,
                     "percentile_00_5": lo, "percentile_99_5": hi, "std": (hi - lo) / 4.0}
    for cfg in out["configurations"].values():
        if "normalization_schemes" in cfg:  # configurations inheriting from another have none of their own
            cfg["normalization_schemes"] = ["CTNormalization"] * len(props)
            cfg["use_mask_for_norm"] = [False] * len(props)
    return out


def ct_window_of(plans: dict) -> Optional[Tuple[float, float]]:
    """The window :func:`apply_ct_window` wrote into ``plans``, or None if the plans are nnU-Net's own."""
    props = plans.get("foreground_intensity_properties_per_channel") or {}
    windows = {(p.get("percentile_00_5"), p.get("percentile_99_5")) for p in props.values()}
    if len(windows) != 1:
        return None
    lo, hi = next(iter(windows))
    if lo is None or hi is None:
        return None
    ok = all(p.get("min") == lo and p.get("max") == hi and p.get("std") == (hi - lo) / 4.0 for p in props.values())
    return (float(lo), float(hi)) if ok else None


def _run(cmd: List[str]) -> None:
    print("$ " + " ".join(cmd), flush=True)
    code = subprocess.call([console_script(cmd[0]), *cmd[1:]])
    if code != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed with exit code {code}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="nnU-Net's nnUNetv2_extract_fingerprint + nnUNetv2_plan_experiment, a CT window for every phase "
                    "channel in the plans, then nnUNetv2_preprocess (replaces nnUNetv2_plan_and_preprocess).")
    p.add_argument("-d", type=int, required=True, metavar="ID", help="dataset id in $nnUNet_raw")
    p.add_argument("-c", nargs="+", default=["3d_fullres"], help="configurations to preprocess")
    p.add_argument("--window", type=float, nargs=2, default=DEFAULT_CT_WINDOW, metavar=("LOW", "HIGH"),
                   help="clipping window in HU")
    p.add_argument("-np", type=int, default=2, help="processes for fingerprinting and preprocessing")
    p.add_argument("--verify_dataset_integrity", action="store_true", help="passed to the fingerprint step")
    return p


def plan_with_ct_window(dataset_id: int, configurations: Sequence[str] = ("3d_fullres",),
                        window: Sequence[float] = DEFAULT_CT_WINDOW, num_processes: int = 2,
                        verify_dataset_integrity: bool = False) -> str:
    """nnU-Net's fingerprint and planning, :func:`apply_ct_window` on the plans, then nnU-Net's preprocessing.
    Returns the plans file."""
    if not window[1] > window[0]:
        raise InputError(f"--window {window[0]:g} {window[1]:g}: upper must exceed lower")
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name

    try:
        name = maybe_convert_to_dataset_name(dataset_id)
    except RuntimeError as e:
        raise InputError(f"dataset {dataset_id}: {str(e).splitlines()[0]}") from None
    fp = ["nnUNetv2_extract_fingerprint", "-d", str(dataset_id), "-np", str(num_processes)]
    _run(fp + (["--verify_dataset_integrity"] if verify_dataset_integrity else []))
    _run(["nnUNetv2_plan_experiment", "-d", str(dataset_id)])
    plans_file = os.path.join(str(nnUNet_preprocessed), name, "nnUNetPlans.json")
    with open(plans_file, encoding="utf-8") as f:
        plans = apply_ct_window(json.load(f), window)
    write_json_atomic(plans, plans_file)
    print(f"{PROG}: {plans_file}: CTNormalization with window [{window[0]:g}, {window[1]:g}] HU "
          f"for {len(plans['foreground_intensity_properties_per_channel'])} channels", flush=True)
    for c in configurations:  # stale preprocessed data of an earlier plan must not survive
        data_id = plans["configurations"].get(c, {}).get("data_identifier")
        folder = os.path.join(str(nnUNet_preprocessed), name, data_id) if data_id else None
        if folder and os.path.isdir(folder):
            shutil.rmtree(folder)
    _run(["nnUNetv2_preprocess", "-d", str(dataset_id), "-c", *configurations,
          "-np", *[str(num_processes)] * len(configurations)])
    return plans_file


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)

    def work() -> None:
        plan_with_ct_window(args.d, args.c, args.window, args.np, args.verify_dataset_integrity)

    return run_cli(PROG, work)


if __name__ == "__main__":
    sys.exit(main())
