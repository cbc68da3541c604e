"""Medical Segmentation Decathlon tasks -> nnU-Net raw dataset in our label ids.

Input: an MSD task folder (``TaskNN_Name/`` with ``dataset.json``, ``imagesTr/``, ``labelsTr/``), e.g.
Task03_Liver, Task08_HepaticVessel, Task09_Spleen, Task07_Pancreas. Labels are remapped by their names in the
task's dataset.json: liver -> 7, (hepatic) vessel -> 8, spleen -> 11, pancreas -> 12. Tumour labels (cancer,
tumour) are untyped in MSD, so ``--tumor-type NAME`` is required as soon as a case holds one (any name of our
scheme: a lesion type such as HCC or Meta, or e.g. ``pancreas`` for Task07's pancreatic tumours); there is no
silent default. The CT is placed as the venous phase (see :mod:`.singlephase`). Only the training cases
(``training`` in dataset.json, else every ``imagesTr`` file) are converted.

Example::

    nnunet-liver-convert msd -i Task03_Liver -d 520 --tumor-type HCC
    nnunet-liver-convert msd -i Task03_Liver -i Task09_Spleen -d 520 -n MSDLiverSpleen --tumor-type HCC
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Optional, Sequence, Tuple

from nnunet_liver import labels as L
from nnunet_liver.dataset_conversion.common import (build_dataset, case_name, dataset_folder, parse_phases,
                                                    resolve_tumor_type)
from nnunet_liver.dataset_conversion.singlephase import check_layout, convert_single_phase_case
from nnunet_liver.utils.io import InputError

__all__ = ["DEFAULT_DATASET_ID", "MSD_LABEL_NAMES", "TUMOUR_NAMES", "msd_cases", "convert_msd", "add_arguments",
           "run"]

DEFAULT_DATASET_ID = 520
#: MSD label names (lower case) -> our ids
MSD_LABEL_NAMES: Dict[str, int] = {"background": 0, "liver": L.LIVER, "vessel": L.HEPATIC_VESSELS,
                                   "hepatic vessel": L.HEPATIC_VESSELS, "hepatic vessels": L.HEPATIC_VESSELS,
                                   "spleen": L.SPLEEN, "pancreas": L.PANCREAS}
TUMOUR_NAMES = ("cancer", "tumour", "tumor", "lesion", "tumors", "tumours")


def _strip(path: str) -> str:
    base = os.path.basename(path)
    for suffix in (".nii.gz", ".nii"):
        if base.endswith(suffix):
            return base[: -len(suffix)]
    return base


def msd_cases(task_dir: str, tumor_id: Optional[int]) -> List[Tuple[str, dict]]:
    """(case name, job spec) for every training case of an MSD task folder; checks the task's dataset.json."""
    meta_path = os.path.join(task_dir, "dataset.json")
    if not os.path.isdir(task_dir):
        raise InputError(f"{task_dir}: input folder not found")
    if not os.path.isfile(meta_path):
        raise InputError(f"{task_dir}: not an MSD task folder (no dataset.json)")
    try:
        with open(meta_path, encoding="utf-8") as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise InputError(f"{meta_path}: cannot read ({e})") from None
    modality = {str(v).upper() for v in meta.get("modality", {"0": "CT"}).values()}
    if modality != {"CT"}:
        raise InputError(f"{meta_path}: modality {sorted(modality)}; only single-channel CT tasks are supported")
    mapping, tumour_values = {}, []
    for value, name in meta.get("labels", {}).items():
        key = str(name).strip().lower()
        if key in MSD_LABEL_NAMES:
            mapping[int(value)] = MSD_LABEL_NAMES[key]
        elif key in TUMOUR_NAMES:
            tumour_values.append(int(value))
        else:
            raise InputError(f"{meta_path}: label {value} {name!r} has no counterpart in our scheme "
                             f"(known: {', '.join(list(MSD_LABEL_NAMES) + list(TUMOUR_NAMES))})")
    if 0 not in mapping:
        mapping[0] = 0
    entries = meta.get("training")
    if entries:
        pairs = [(os.path.normpath(os.path.join(task_dir, e["image"])),
                  os.path.normpath(os.path.join(task_dir, e["label"]))) for e in entries]
    else:
        images_dir = os.path.join(task_dir, "imagesTr")
        names = sorted(n for n in os.listdir(images_dir) if not n.startswith(".") and
                       n.endswith((".nii.gz", ".nii"))) if os.path.isdir(images_dir) else []
        pairs = [(os.path.join(images_dir, n), os.path.join(task_dir, "labelsTr", n)) for n in names]
    return [(case_name(_strip(img)), {"image": img, "label": lab, "mapping": mapping, "tumor_values": tumour_values,
                                      "tumor_id": tumor_id}) for img, lab in pairs]


def convert_msd(inputs: Sequence[str], dataset_id: int = DEFAULT_DATASET_ID, name: Optional[str] = None,
                phases: Sequence[str] = ("V",), tumor_type: Optional[str] = None, output: Optional[str] = None,
                num_processes: int = 1, append: bool = False, overwrite: bool = False) -> str:
    """Convert one or more MSD task folders into ``<raw root>/DatasetXXX_NAME``; returns the dataset folder.

    Parameters
    ----------
    inputs : MSD task folders (several are merged into one dataset).
    dataset_id, name : nnU-Net dataset id and name (default name: the task names, e.g. ``MSD_Liver``).
    phases : channel layout written; the CT is the ``V`` channel, the others constant missing channels.
    tumor_type : our name for the tasks' tumour label (required when a case holds one).
    output : raw root instead of ``$nnUNet_raw``; append / overwrite : extend or replace an existing dataset.
    """
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    phases = parse_phases(phases)
    check_layout(phases)
    tumor_id = resolve_tumor_type(tumor_type)
    cases = [c for task in inputs for c in msd_cases(task, tumor_id)]
    if not cases:
        raise InputError(f"{', '.join(inputs)}: no training cases found")
    name = name or "MSD_" + "_".join(os.path.basename(os.path.normpath(t)).split("_", 1)[-1] for t in inputs)
    folder = dataset_folder(dataset_id, name, output, append)
    source = {"kind": "msd", "inputs": [os.path.abspath(t) for t in inputs], "tumor_type": tumor_type}
    return build_dataset(folder, phases, cases, convert_single_phase_case, num_processes, source, append,
                         overwrite)


def add_arguments(parser) -> None:
    parser.add_argument("--tumor-type", default=None, metavar="NAME",
                        help="our label name for the tasks' untyped tumour label (HCC, ICC, Meta, Hem, Other, "
                             "Cyst, or an organ such as pancreas); required when a case holds a tumour")


def run(args) -> str:
    return convert_msd(args.input, args.dataset_id or DEFAULT_DATASET_ID, args.name, args.phases, args.tumor_type,
                       args.output, args.num_processes, args.append, args.overwrite)
