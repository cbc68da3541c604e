"""Hard cases for UNet-patch: UNet-whole's false positives and false negatives on its training data (Wang et al., the
cascade, Sec. III-B).

The paper adds "shuffling Det_FP^pred and Det_FN^pred" to UNet-patch's training patches: the lesion proposals of
UNet-whole that match no reference lesion (FP: liver texture that looks like a lesion, to be learnt as liver) and
the reference lesions UNet-whole misses (FN: lesions to be learnt as lesions). :func:`hard_cases` finds both with
:func:`~nnunet_liver.postprocessing.match.match` (the evaluation's rules and volume floors) and paints them into
one instance map; ``nnunet-liver-convert patches --hard-cases`` writes that map beside each case of the UNet-patch
raw dataset (``hardCasesTr/``). After nnU-Net's planning and preprocessing, :func:`prepare_hard_cases`
(``python -m nnunet_liver.training.hard_cases -d DATASET``) puts the maps once on each case's preprocessed grid,
transposed, cropped and resampled as nnU-Net did the case (nearest neighbour), into
``$nnUNet_preprocessed/DATASET/<data identifier>_hardCases/`` (``CASE.npz`` and ``hard_cases.json``). That is
where ``LesionShufflePatchTrainer`` reads them: training never reads the raw dataset. It draws a share of its
patches around them (:func:`~nnunet_liver.training.shuffle.sample_hard_case_patch`). The labels of a hard case's
patch are always the reference's: an FP region stays liver, an FN lesion keeps its type.

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans".
"""
from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

__all__ = ["HardCase", "hard_cases", "prepare_hard_cases", "read_prepared_hard_cases", "prepared_folder",
           "HARD_CASES_DIR", "PREPARED_SUFFIX", "PREPARED_INDEX"]

#: sub-folder of the UNet-patch raw dataset holding the hard-case maps (raw grid)
HARD_CASES_DIR = "hardCasesTr"
#: ``<data identifier><PREPARED_SUFFIX>``: the folder of the maps on nnU-Net's preprocessed grid
PREPARED_SUFFIX = "_hardCases"
#: the prepared folder's index: {case: [{"id", "kind", "type", "volume_cm3", "source_id"}, ...]}
PREPARED_INDEX = "hard_cases.json"


@dataclass
class HardCase:
    """One hard case: its value in the hard-case map, FN or FP, the lesion type (the reference's for an FN,
    UNet-whole's for an FP), its volume in the map and the id of the lesion it comes from."""
    id: int
    kind: str
    type: str
    volume_cm3: float
    source_id: int

    def to_json(self) -> dict:
        return asdict(self)


def hard_cases(reference: Sequence, prediction: Sequence, shape: Sequence[int], spacing: Sequence[float],
               region: Optional[np.ndarray] = None, min_ref_volume_cm3: float = 0.5,
               min_pred_volume_cm3: float = 0.5, overlap: str = "any") -> Tuple[np.ndarray, List[HardCase]]:
    """UNet-whole's FN and FP lesions of one case as an instance map.

    Parameters
    ----------
    reference, prediction : lesions (``seg2det`` / ``lesions_from_instance_map``) on the same grid
    shape : (Z, Y, X) of that grid
    spacing : (z, y, x) mm
    region : (Z, Y, X) bool, optional
        Where hard cases may lie (the liver region of the UNet-patch dataset); FP voxels outside it are dropped and
        an FP with none inside is left out.
    min_ref_volume_cm3, min_pred_volume_cm3, overlap : ``match``'s options (smaller lesions are not hard cases)

    Returns
    -------
    map : (Z, Y, X) uint16, 0 elsewhere, hard case ``i`` painted with ``i`` (FN lesions first, by reference id, then
        FP, by prediction id; an FP voxel on an FN lesion stays the FN's)
    cases : the :class:`HardCase` entries, ids 1..n
    """
    from nnunet_liver.postprocessing.match import match

    shape = tuple(int(s) for s in shape)
    if region is not None and tuple(region.shape) != shape:
        raise ValueError(f"region shape {tuple(region.shape)} differs from the grid {shape}")
    m = match(reference, prediction, min_ref_volume_cm3=min_ref_volume_cm3, min_pred_volume_cm3=min_pred_volume_cm3,
              overlap=overlap)
    voxel_cm3 = float(np.prod(spacing)) / 1000.0
    out = np.zeros(shape, np.uint16)
    cases: List[HardCase] = []
    ref = {les.id: les for les in reference}
    pred = {les.id: les for les in prediction}
    todo = [("FN", ref[i]) for i in sorted(m.unmatched_reference)]
    todo += [("FP", pred[i]) for i in sorted(m.unmatched_prediction)]
    for kind, les in todo:
        sub = out[les.slices]
        paint = les.mask & (sub == 0)
        if region is not None:
            paint &= region[les.slices]
        n = int(np.count_nonzero(paint))
        if n == 0:
            continue
        hid = len(cases) + 1
        sub[paint] = hid
        cases.append(HardCase(hid, kind, les.type, n * voxel_cm3, int(les.id)))
    return out, cases


def prepared_folder(preprocessed_dataset_folder_base: str, data_identifier: str) -> str:
    """``$nnUNet_preprocessed/DATASET/<data identifier>_hardCases``: where the prepared maps of a configuration lie."""
    return os.path.join(preprocessed_dataset_folder_base, data_identifier + PREPARED_SUFFIX)


def _raw_hard_cases(raw_folder: str) -> Dict[str, list]:
    """{case: entries} of a UNet-patch raw dataset converted with ``--hard-cases`` (cases without any left out)."""
    from nnunet_liver.utils.io import InputError

    info_file = os.path.join(raw_folder, "patch_dataset.json")
    if not os.path.isfile(info_file):
        raise InputError(f"{info_file}: not found (the raw dataset is not a UNet-patch dataset from "
                         f"nnunet-liver-convert patches)")
    with open(info_file, encoding="utf-8") as f:
        info = json.load(f)
    if "hard_cases_from" not in info:
        raise InputError(f"{info_file}: the dataset was converted without --hard-cases; nothing to prepare")
    return {c["case"]: c["hard_cases"] for c in info.get("cases", []) if c.get("hard_cases")}


def _to_preprocessed_grid(hard_map: np.ndarray, properties: dict, plans_manager, configuration_manager, shape,
                          case: str) -> np.ndarray:
    """A raw-grid (1, Z, Y, X) hard-case map on a preprocessed case's grid: nnU-Net's transpose and crop, then the
    plans' label resampling with order 0 (:func:`nnunet_liver.nnunet_mirror.resample_seg_like`)."""
    from nnunet_liver.nnunet_mirror import resample_seg_like

    transposed = tuple(hard_map.shape[1:][i] for i in plans_manager.transpose_forward)
    before = tuple(int(v) for v in properties["shape_before_cropping"])
    if transposed != before:
        raise ValueError(f"{case}: hard-case map shape {transposed} (transposed) differs from the preprocessed "
                         f"case's {before}")
    return resample_seg_like(hard_map, properties, shape, plans_manager, configuration_manager,
                             order=0)[0].astype(np.uint16)


def prepare_hard_cases(dataset_name_or_id, configuration: str = "3d_fullres",
                       plans_identifier: str = "nnUNetPlans") -> str:
    """Put the raw dataset's hard-case maps on nnU-Net's preprocessed grid of ``configuration``, once.

    Reads ``$nnUNet_raw/DATASET/{patch_dataset.json, hardCasesTr/}`` and the preprocessed cases (their nnU-Net
    properties and shapes), writes :func:`prepared_folder` (replacing an earlier one, atomically). Returns it.
    Raises InputError naming the file or case for a dataset without hard cases, unplanned or unpreprocessed data,
    or a map that does not fit its case.
    """
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnunet_liver.utils.io import InputError, atomic_dir, write_json_atomic

    if not nnUNet_raw or not nnUNet_preprocessed:
        raise InputError("nnUNet_raw and nnUNet_preprocessed must be set")
    try:
        name = maybe_convert_to_dataset_name(dataset_name_or_id)
    except RuntimeError as e:
        raise InputError(str(e)) from None
    entries = _raw_hard_cases(os.path.join(nnUNet_raw, name))
    plans_file = os.path.join(nnUNet_preprocessed, name, plans_identifier + ".json")
    if not os.path.isfile(plans_file):
        raise InputError(f"{plans_file}: not found (plan and preprocess the dataset first: nnunet-liver-plan)")
    pm = PlansManager(plans_file)
    cm = pm.get_configuration(configuration)
    data_folder = os.path.join(nnUNet_preprocessed, name, cm.data_identifier)
    if not os.path.isdir(data_folder):
        raise InputError(f"{data_folder}: not found (preprocess configuration {configuration} first)")
    dataset = infer_dataset_class(data_folder)(data_folder)
    reader = pm.image_reader_writer_class()
    with open(os.path.join(nnUNet_raw, name, "dataset.json"), encoding="utf-8") as f:
        ending = json.load(f).get("file_ending", ".nii.gz")
    out = prepared_folder(os.path.join(nnUNet_preprocessed, name), cm.data_identifier)
    with atomic_dir(out, overwrite=True) as tmp:
        for case in sorted(entries):
            path = os.path.join(nnUNet_raw, name, HARD_CASES_DIR, case + ending)
            if not os.path.isfile(path):
                raise InputError(f"{path}: hard-case map listed in patch_dataset.json is missing")
            if case not in dataset.identifiers:
                raise InputError(f"{case}: has hard cases but no preprocessed case in {data_folder}")
            data, _, _, properties = dataset.load_case(case)
            hard_map, _ = reader.read_seg(path)
            try:
                grid = _to_preprocessed_grid(np.asarray(hard_map), properties, pm, cm, data.shape[1:], case)
            except ValueError as e:
                raise InputError(f"{path}: {e}") from None
            np.savez_compressed(os.path.join(tmp, case + ".npz"), map=grid)
        write_json_atomic(entries, os.path.join(tmp, PREPARED_INDEX))
    kinds = [e["kind"] for v in entries.values() for e in v]
    print(f"hard cases: {kinds.count('FN')} FN and {kinds.count('FP')} FP of {len(entries)} cases on the "
          f"{configuration} grid -> {out}")
    return out


def read_prepared_hard_cases(folder: str) -> Dict[str, Tuple[np.ndarray, list]]:
    """{case: (hard-case map on the preprocessed grid, entries)} from a :func:`prepare_hard_cases` folder."""
    with open(os.path.join(folder, PREPARED_INDEX), encoding="utf-8") as f:
        index = json.load(f)
    out = {}
    for case, entries in index.items():
        with np.load(os.path.join(folder, case + ".npz")) as z:
            out[case] = (z["map"], entries)
    return out


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m nnunet_liver.training.hard_cases -d DATASET [-c CONFIGURATION] [-p PLANS]``."""
    from nnunet_liver.utils.io import run_cli

    parser = argparse.ArgumentParser(
        prog="python -m nnunet_liver.training.hard_cases",
        description="Put a UNet-patch dataset's hard-case maps on nnU-Net's preprocessed grid (once, after "
                    "nnunet-liver-plan), where LesionShufflePatchTrainer reads them.")
    parser.add_argument("-d", "--dataset", required=True, help="dataset id or name, e.g. 602")
    parser.add_argument("-c", "--configuration", default="3d_fullres", help="default: %(default)s")
    parser.add_argument("-p", "--plans", default="nnUNetPlans", help="plans identifier (default: %(default)s)")
    args = parser.parse_args(argv)

    def work() -> None:
        prepare_hard_cases(args.dataset, args.configuration, args.plans)

    return run_cli(parser.prog, work)


if __name__ == "__main__":
    raise SystemExit(main())
