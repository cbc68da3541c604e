"""LiTS (Liver Tumor Segmentation challenge) -> nnU-Net raw dataset in our label ids.

Input: a folder (searched recursively, e.g. both "Training Batch" folders) holding ``volume-N.nii[.gz]`` and
``segmentation-N.nii[.gz]``. Labels: 0 background, 1 liver -> 7, 2 tumour -> ``--tumor-type NAME`` (required as
soon as a case holds a tumour; no silent default). The CT is placed as the venous phase (:mod:`.singlephase`).
A volume without its segmentation is an error (LiTS test volumes: convert them with ``--allow-unlabelled``, they
go to ``imagesTs``).

Example::

    nnunet-liver-convert lits -i LiTS/ -d 521 --tumor-type HCC
"""
from __future__ import annotations

import os
import re
from typing import List, Optional, Sequence, Tuple

from nnunet_liver import labels as L
from nnunet_liver.dataset_conversion.common import build_dataset, dataset_folder, parse_phases, resolve_tumor_type
from nnunet_liver.dataset_conversion.singlephase import check_layout, convert_single_phase_case
from nnunet_liver.utils.io import InputError

__all__ = ["DEFAULT_DATASET_ID", "LITS_MAPPING", "lits_cases", "convert_lits", "add_arguments", "run"]

DEFAULT_DATASET_ID = 521
LITS_MAPPING = {0: 0, 1: L.LIVER}
LITS_TUMOUR = 2
_PATTERN = re.compile(r"^(volume|segmentation)-(\d+)\.nii(\.gz)?$")


def lits_cases(folder: str, tumor_id: Optional[int], allow_unlabelled: bool = False) -> List[Tuple[str, dict]]:
    """(case name ``lits_NNN``, job spec) for every ``volume-N`` under ``folder``."""
    if not os.path.isdir(folder):
        raise InputError(f"{folder}: input folder not found")
    found = {"volume": {}, "segmentation": {}}
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for f in sorted(files):
            m = _PATTERN.match(f)
            if m:
                kind, n = m.group(1), int(m.group(2))
                if n in found[kind]:
                    raise InputError(f"{os.path.join(root, f)}: {kind}-{n} occurs twice under {folder}")
                found[kind][n] = os.path.join(root, f)
    orphans = sorted(set(found["segmentation"]) - set(found["volume"]))
    if orphans:
        raise InputError(f"{found['segmentation'][orphans[0]]}: segmentation without volume-{orphans[0]}")
    cases = []
    for n in sorted(found["volume"]):
        label = found["segmentation"].get(n)
        if label is None and not allow_unlabelled:
            raise InputError(f"case lits_{n:03d}: {found['volume'][n]} has no segmentation-{n} (missing file)")
        cases.append((f"lits_{n:03d}", {"image": found["volume"][n], "label": label, "mapping": LITS_MAPPING,
                                        "tumor_values": [LITS_TUMOUR], "tumor_id": tumor_id}))
    return cases


def convert_lits(inputs: Sequence[str], dataset_id: int = DEFAULT_DATASET_ID, name: Optional[str] = None,
                 phases: Sequence[str] = ("V",), tumor_type: Optional[str] = None, output: Optional[str] = None,
                 num_processes: int = 1, append: bool = False, overwrite: bool = False,
                 allow_unlabelled: bool = False) -> str:
    """Convert LiTS folder(s) into ``<raw root>/DatasetXXX_NAME`` (default name ``LiTS``); see :func:`convert_msd`
    for the parameters."""
    inputs = [inputs] if isinstance(inputs, str) else list(inputs)
    phases = parse_phases(phases)
    check_layout(phases)
    tumor_id = resolve_tumor_type(tumor_type)
    cases = [c for folder in inputs for c in lits_cases(folder, tumor_id, allow_unlabelled)]
    if not cases:
        raise InputError(f"{', '.join(inputs)}: no volume-N.nii[.gz] files found")
    folder = dataset_folder(dataset_id, name or "LiTS", output, append)
    source = {"kind": "lits", "inputs": [os.path.abspath(t) for t in inputs], "tumor_type": tumor_type}
    return build_dataset(folder, phases, cases, convert_single_phase_case, num_processes, source, append,
                         overwrite)


def add_arguments(parser) -> None:
    parser.add_argument("--tumor-type", default=None, metavar="NAME",
                        help="our label name for LiTS's untyped tumour label 2 (HCC, ICC, Meta, Hem, Other, Cyst); "
                             "required when a case holds a tumour")
    parser.add_argument("--allow-unlabelled", action="store_true",
                        help="convert volumes without a segmentation into imagesTs instead of failing")


def run(args) -> str:
    return convert_lits(args.input, args.dataset_id or DEFAULT_DATASET_ID, args.name, args.phases, args.tumor_type,
                        args.output, args.num_processes, args.append, args.overwrite, args.allow_unlabelled)
