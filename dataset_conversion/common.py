"""Shared pieces of the converters: output folder, channel layout, label remapping, checks, parallel cases.

Every converter builds the whole dataset in a temporary folder beside the target and renames it at the end
(:func:`nnunet_liver.utils.io.atomic_dir`): a failure (bad input in any case) leaves no partial dataset, and inputs
are only ever read.

Output: ``<raw root>/DatasetXXX_NAME`` where the raw root is ``-o`` or else ``$nnUNet_raw`` (read when the
converter runs). ``imagesTr/CASE_XXXX.nii.gz`` (one file per channel of the chosen phase layout),
``labelsTr/CASE.nii.gz`` (our 13 ids), cases without a label go to ``imagesTs/``; ``dataset.json`` from
:func:`nnunet_liver.labels.dataset_json_labels`; ``conversion.json`` records sources, settings and cases.
"""
from __future__ import annotations

import glob
import json
import os
import re
import shutil
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver import __version__
from nnunet_liver import labels as L
from nnunet_liver.utils.io import InputError, atomic_dir, write_json_atomic

__all__ = ["IMAGE_SUFFIXES", "parse_phases", "dataset_folder", "find_image", "check_same_geometry", "read_label",
           "remap", "resolve_tumor_type", "missing_channel", "write_channels", "write_label", "run_cases",
           "build_dataset", "case_name"]

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
CONVERSION_FILE = "conversion.json"


def parse_phases(text) -> Tuple[str, ...]:
    """``"NC,A,V,D"`` or a sequence -> tuple of phases in time order; ValueError for unknown or repeated names."""
    items = [p.strip() for p in text.split(",")] if isinstance(text, str) else [str(p) for p in text]
    items = [p for p in items if p]
    bad = [p for p in items if p not in L.PHASES]
    if not items or bad or len(set(items)) != len(items):
        raise InputError(f"--phases {','.join(items)}: use distinct names from {','.join(L.PHASES)}")
    return tuple(p for p in L.PHASES if p in items)


def case_name(text: str) -> str:
    """A safe nnU-Net case identifier from a file or folder name."""
    name = re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_")
    if not name:
        raise InputError(f"{text!r}: cannot make a case name from it")
    return name


def dataset_folder(dataset_id: int, name: str, output: Optional[str] = None, append: bool = False) -> str:
    """``<raw root>/DatasetXXX_NAME``; the raw root is ``output`` or ``$nnUNet_raw``.

    Raises InputError when neither is set, when the id is out of 1..999, or when another dataset already uses
    the id under a different name (nnU-Net finds datasets by id).
    """
    root = output or os.environ.get("nnUNet_raw")
    if not root:
        raise InputError("nnUNet_raw is not set: export nnUNet_raw=/path/to/nnUNet_raw or pass -o RAW_ROOT")
    dataset_id = int(dataset_id)
    if not 1 <= dataset_id <= 999:
        raise InputError(f"dataset id {dataset_id}: must be in 1..999")
    if not re.fullmatch(r"[A-Za-z0-9_\-]+", name or ""):
        raise InputError(f"dataset name {name!r}: use letters, digits, '_' or '-'")
    folder = os.path.join(os.path.abspath(root), f"Dataset{dataset_id:03d}_{name}")
    for other in glob.glob(os.path.join(os.path.abspath(root), f"Dataset{dataset_id:03d}_*")):
        if os.path.abspath(other) != folder and not os.path.basename(other).startswith("."):
            raise InputError(f"{other}: dataset id {dataset_id} is already used by another dataset")
    if append and not os.path.isdir(folder):
        raise InputError(f"{folder}: --append needs an existing dataset")
    return folder


def find_image(folder: str, stem: str) -> Optional[str]:
    """``folder/stem`` with one of :data:`IMAGE_SUFFIXES`, or None."""
    for suffix in IMAGE_SUFFIXES:
        path = os.path.join(folder, stem + suffix)
        if os.path.isfile(path):
            return path
    return None


def check_same_geometry(image, label, what: str) -> None:
    """InputError naming ``what`` unless ``label`` has ``image``'s size, spacing, origin and direction."""
    problems = []
    if image.GetSize() != label.GetSize():
        problems.append(f"size {label.GetSize()} vs image {image.GetSize()}")
    else:
        if not np.allclose(image.GetSpacing(), label.GetSpacing(), rtol=1e-4, atol=1e-4):
            problems.append(f"spacing {label.GetSpacing()} vs image {image.GetSpacing()}")
        if not np.allclose(image.GetOrigin(), label.GetOrigin(), atol=1e-2):
            problems.append(f"origin {label.GetOrigin()} vs image {image.GetOrigin()}")
        if not np.allclose(image.GetDirection(), label.GetDirection(), atol=1e-4):
            problems.append("direction differs from the image's")
    if problems:
        raise InputError(f"{what}: label geometry does not match the image ({'; '.join(problems)})")


def read_label(path: str, what: str):
    """Read a label map; returns (int array (z, y, x), sitk image). Non-integer values are an InputError."""
    from nnunet_liver.utils.io import read_image

    array, _, image = read_image(path, "label")
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(array == np.round(array)):
            raise InputError(f"{what}: label {path} holds non-integer values")
    return array.astype(np.int64), image


def remap(array: np.ndarray, mapping: Dict[int, int], what: str) -> np.ndarray:
    """Map source label values to ours (uint8); InputError naming ``what`` for values outside ``mapping``."""
    values = np.unique(array)
    bad = sorted(int(v) for v in values if int(v) not in mapping)
    if bad:
        raise InputError(f"{what}: label values {bad} are outside the source's label set {sorted(mapping)}")
    lut = np.zeros(int(max(max(mapping), values.max())) + 1, np.uint8)
    for k, v in mapping.items():
        lut[k] = v
    return lut[array]


def resolve_tumor_type(name: Optional[str]) -> Optional[int]:
    """Our id for ``--tumor-type NAME`` (any name of the scheme, e.g. HCC, Meta, pancreas), or None."""
    if name is None:
        return None
    try:
        return L.id_of(name)
    except ValueError as e:
        raise InputError(f"--tumor-type {name}: {e}") from None


def missing_channel(reference):
    """The constant missing-phase channel (int16, ``MISSING_PHASE_VALUE``) on ``reference``'s grid."""
    import SimpleITK as sitk

    image = sitk.Image(reference.GetSize(), sitk.sitkInt16)
    image.CopyInformation(reference)
    return image + int(L.MISSING_PHASE_VALUE)


def write_channels(channels: Dict[str, object], phases: Sequence[str], reference, folder: str, case: str) -> List[str]:
    """Write one file per phase of the layout (missing ones as the constant channel); returns missing phases."""
    import SimpleITK as sitk

    missing = []
    for i, phase in enumerate(phases):
        image = channels.get(phase)
        if image is None:
            image = missing_channel(reference)
            missing.append(phase)
        else:
            image = sitk.Image(image)
            image.CopyInformation(reference)
        sitk.WriteImage(image, os.path.join(folder, f"{case}_{i:04d}.nii.gz"), useCompression=True)
    return missing


def write_label(array: np.ndarray, reference, path: str) -> None:
    """Write a uint8 label (z, y, x) with ``reference``'s geometry."""
    import SimpleITK as sitk

    L.validate_label_values(np.unique(array))
    image = sitk.GetImageFromArray(array.astype(np.uint8))
    image.CopyInformation(reference)
    sitk.WriteImage(image, path, useCompression=True)


def run_cases(job: Callable, jobs: Sequence, num_processes: int = 1, desc: str = "cases") -> List:
    """Run ``job`` over ``jobs`` (in order) with ``num_processes`` workers and a progress bar."""
    from tqdm import tqdm

    results = []
    with tqdm(total=len(jobs), desc=desc, unit="case") as bar:  # closed (newline) on errors too
        if int(num_processes) > 1 and len(jobs) > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(min(int(num_processes), len(jobs))) as pool:
                for r in pool.imap(job, jobs):
                    results.append(r)
                    bar.update()
        else:
            for j in jobs:
                results.append(job(j))
                bar.update()
    return results


def build_dataset(folder: str, phases: Sequence[str], cases: Iterable[Tuple[str, object]], convert: Callable,
                  num_processes: int, source: dict, append: bool = False, overwrite: bool = False) -> str:
    """Build (or extend with ``append``) the dataset ``folder`` atomically.

    ``cases``: (case name, job argument) pairs; ``convert((tmp_folder, phases, case, arg)) -> dict`` writes one
    case (imagesTr + labelsTr, or imagesTs when unlabelled) and returns its record for ``conversion.json``.
    """
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json

    cases = list(cases)
    if not cases:
        raise InputError(f"{source.get('inputs')}: no cases found")
    names = [c for c, _ in cases]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(f"case names {dup[:5]} occur more than once across the inputs")
    record = {"schema_version": "1.0", "converter": f"nnunet_liver {__version__}", "phases": list(phases),
              "sources": [], "cases": {}}
    with atomic_dir(folder, overwrite=overwrite or append) as tmp:
        if append:
            record = _start_append(folder, tmp, phases, names)
        for sub in ("imagesTr", "labelsTr"):
            os.makedirs(os.path.join(tmp, sub), exist_ok=True)
        results = run_cases(convert, [(tmp, tuple(phases), c, a) for c, a in cases], num_processes,
                            desc=f"convert {source.get('kind', '')}".strip())
        for name, entry in zip(names, results):
            record["cases"][name] = entry
        record["sources"].append(source)
        training = len([n for n in os.listdir(os.path.join(tmp, "labelsTr")) if n.endswith(".nii.gz")])
        generate_dataset_json(
            tmp, channel_names={str(i): p for i, p in enumerate(phases)}, labels=L.dataset_json_labels(),
            num_training_cases=training, file_ending=".nii.gz", dataset_name=os.path.basename(folder),
            description="converted by nnunet-liver-convert: " + ", ".join(s.get("kind", "?") for s in
                                                                         record["sources"]),
            reference="see conversion.json", release=__version__, license="see the sources' licences",
            converted_by="nnunet-liver-convert", overwrite_image_reader_writer="SimpleITKIO")
        write_json_atomic(record, os.path.join(tmp, CONVERSION_FILE))
    return folder


def _start_append(folder: str, tmp: str, phases, names) -> dict:
    """Copy the existing dataset into ``tmp``; check the channel layout and case names; return its record."""
    shutil.rmtree(tmp)
    shutil.copytree(folder, tmp)
    with open(os.path.join(tmp, "dataset.json"), encoding="utf-8") as f:
        existing = json.load(f)
    layout = [existing["channel_names"][str(i)] for i in range(len(existing["channel_names"]))]
    if layout != list(phases):
        raise InputError(f"{folder}: --append with --phases {','.join(phases)} but the dataset has "
                         f"{','.join(layout)}")
    record_path = os.path.join(tmp, CONVERSION_FILE)
    record = {"schema_version": "1.0", "phases": layout, "sources": [], "cases": {}}
    if os.path.isfile(record_path):
        with open(record_path, encoding="utf-8") as f:
            record = json.load(f)
    clash = sorted(set(names) & set(record["cases"]))
    for sub in ("imagesTr", "imagesTs"):
        d = os.path.join(tmp, sub)
        clash += [n for n in names if os.path.isfile(os.path.join(d, n + "_0000.nii.gz"))]
    if clash:
        raise InputError(f"{folder}: cases {sorted(set(clash))[:5]} already exist in the dataset")
    return record
