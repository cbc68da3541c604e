"""``nnunet-liver-convert patches``: derive the UNet-patch dataset from a whole-CT nnU-Net raw dataset.

Design
------
UNet-patch (the reclassification model, ``LesionShufflePatchTrainer``) only ever sees the liver: its patches are
16 x 128 x 128 voxels cut *on the fly* by the lesion-shuffle schemes (original/shuffled positive/negative), with
everything outside the liver masked. Its raw dataset therefore stores each case once, reduced to what the shuffle
needs; the patches themselves are never written to disk (so the schemes, rates and patch size stay training-time
choices and nnU-Net's planning, preprocessing and normalisation apply unchanged).

Per case of the input dataset (images ``CASE_000k``, label map in the 13-class scheme):

1. liver region = labels 1..8 (the six lesion types, liver parenchyma, hepatic vessels);
2. crop every channel and the label map to the liver region's bounding box plus ``--margin-mm`` (clipped to the
   image), keeping the physical geometry (origin moves with the crop, spacing and direction unchanged);
3. mask: image voxels outside the liver region are set to ``--masked-hu`` (default -1024 HU, air);
4. patch labels: 0 = outside the liver (masked), 1..6 = lesion types unchanged, 7 = liver (parenchyma and hepatic
   vessels, 7 and 8).

The channel layout (dataset.json ``channel_names``) is kept, so a missing phase stays a constant channel and
UNet-patch, like UNet-whole, takes any phase subset. Cases without any liver voxel are skipped (reported).
The trainer masks outside-liver voxels again *after* nnU-Net's normalisation (image value 0.0, what
``make_reclassification_patches`` uses at inference), so ``--masked-hu`` only matters for nnU-Net's own final
validation on whole cropped cases.

Hard cases (``--hard-cases PRED_DIR``, Wang et al., the cascade, Sec. III-B): UNet-whole's predictions on the same
training cases, one per case, as the evaluation reads them (``PRED_DIR/CASE.nii.gz``, a 13-class label map such as
nnU-Net's out-of-fold ``fold_k/validation`` outputs of all folds gathered in one folder, or the detector's
``CASE_lesions.nii.gz`` + ``CASE.json``), are matched to the reference lesions with ``match`` (the evaluation's 0.5
cm3 floors). The reference lesions they miss (FN) and their proposals that match no reference lesion (FP, the part
inside the liver region) are painted, per case, into ``hardCasesTr/CASE.nii.gz`` (same crop and geometry as the
label map, hard case ``i`` = value ``i``) and listed in ``patch_dataset.json`` (``cases[].hard_cases``: id, kind
FN/FP, type, volume). After planning, ``python -m nnunet_liver.training.hard_cases -d DATASET`` puts the maps on
nnU-Net's preprocessed grid once, and ``LesionShufflePatchTrainer`` draws a share of its patches around them from
there. A case without a prediction gets no hard cases (listed in ``hard_cases_no_prediction`` and printed); a folder
with no prediction for any case is an error.

The output is written to a temporary folder and renamed, so a failed run leaves nothing behind.

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans".
"""
from __future__ import annotations

import argparse
import json
import os
import re
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from nnunet_liver import labels as L
from nnunet_liver.training.hard_cases import HARD_CASES_DIR
from nnunet_liver.utils.io import InputError, atomic_dir, read_image, write_json_atomic

__all__ = ["add_arguments", "run", "convert_patch_dataset", "patch_case", "HARD_CASES_DIR"]

DEFAULT_MARGIN_MM = 10.0


def patch_case(images: Sequence[np.ndarray], label: np.ndarray, spacing: Sequence[float],
               margin_mm: float = DEFAULT_MARGIN_MM, masked_hu: float = L.MISSING_PHASE_VALUE):
    """Liver-crop and mask one case.

    Parameters
    ----------
    images : sequence of (Z, Y, X) arrays (HU), one per channel
    label : (Z, Y, X) int, 13-class scheme
    spacing : (z, y, x) mm
    margin_mm : margin around the liver's bounding box, per axis, in mm
    masked_hu : image value outside the liver region

    Returns
    -------
    (images cropped and masked, patch label map uint8, bbox as ((z0, z1), (y0, y1), (x0, x1)) half-open) or None
    when the case holds no liver voxel.
    """
    region = np.isin(label, L.LIVER_REGION_IDS)
    if not region.any():
        return None
    idx = np.nonzero(region)
    bbox = []
    for ax, (lo, hi) in enumerate(zip((i.min() for i in idx), (i.max() for i in idx))):
        m = int(np.ceil(margin_mm / float(spacing[ax])))
        bbox.append((max(0, int(lo) - m), min(label.shape[ax], int(hi) + 1 + m)))
    sl = tuple(slice(a, b) for a, b in bbox)
    reg = region[sl]
    out_images = []
    for im in images:
        c = np.array(im[sl], dtype=np.float32)
        c[~reg] = masked_hu
        out_images.append(c)
    lab = label[sl]
    patch = np.zeros(lab.shape, np.uint8)
    for lesion in L.LESION_IDS:
        patch[lab == lesion] = lesion
    patch[np.isin(lab, (L.LIVER, L.HEPATIC_VESSELS))] = L.PATCH_LIVER
    return out_images, patch, tuple(bbox)


def _cases(raw: Path, file_ending: str, num_channels: int):
    names = sorted(p.name[:-len(file_ending)] for p in (raw / "labelsTr").glob("*" + file_ending))
    if not names:
        raise InputError(f"{raw / 'labelsTr'}: no label files ending in {file_ending}")
    for name in names:
        imgs = [raw / "imagesTr" / f"{name}_{c:04d}{file_ending}" for c in range(num_channels)]
        missing = [str(p) for p in imgs if not p.is_file()]
        if missing:
            raise InputError(f"{missing[0]}: image of case {name} not found")
        yield name, imgs, raw / "labelsTr" / f"{name}{file_ending}"


def _check_inputs(raw: Path, out: Path, margin_mm: float, hard_cases_dir, hard_min_volume_cm3: float) -> dict:
    """The input's dataset.json, after checking the input dataset, the output name and the options."""
    ds_file = raw / "dataset.json"
    if not ds_file.is_file():
        raise InputError(f"{ds_file}: not found (input must be an nnU-Net raw dataset folder)")
    ds = json.loads(ds_file.read_text(encoding="utf-8"))
    ds_labels = {str(k): v for k, v in ds.get("labels", {}).items()}
    if ds_labels != L.dataset_json_labels():
        raise InputError(f"{ds_file}: labels are not nnunet_liver's 13-class scheme (convert the dataset first)")
    if margin_mm < 0:
        raise InputError(f"margin must be >= 0 mm, got {margin_mm}")
    if not re.match(r"^Dataset\d{3}_\w+$", out.name):
        raise InputError(f"{out}: the output folder must be named like nnU-Net datasets, DatasetXXX_Name")
    if hard_min_volume_cm3 < 0:
        raise InputError(f"the hard cases' volume floor must be >= 0 cm3, got {hard_min_volume_cm3}")
    if hard_cases_dir is not None and not Path(hard_cases_dir).is_dir():
        raise InputError(f"{hard_cases_dir}: hard-case prediction folder not found")
    return ds


def _read_case(img_paths, lab_path):
    """(images, label map, spacing, SimpleITK label image) of one input case, checked."""
    lab, spacing, lab_img = read_image(str(lab_path), what="label")
    arrays = []
    for p in img_paths:
        arr, _, _ = read_image(str(p))
        if arr.shape != lab.shape:
            raise InputError(f"{p}: shape {arr.shape} differs from its label map's {lab.shape}")
        arrays.append(arr)
    L.validate_label_values(np.unique(lab), what=str(lab_path))
    return arrays, lab, spacing, lab_img


def _write_like(array: np.ndarray, ref, path: str) -> None:
    """Write ``array`` (Z, Y, X) with the geometry of the SimpleITK image ``ref`` (compressed)."""
    import SimpleITK as sitk

    o = sitk.GetImageFromArray(array)
    o.CopyInformation(ref)
    sitk.WriteImage(o, path, True)


def _convert_case(tmp: str, name: str, img_paths, lab_path, margin_mm, masked_hu, file_ending, hard_cases_dir,
                  hard_min_volume_cm3) -> Optional[dict]:
    """Write one case's cropped, masked images, patch labels and hard-case map into ``tmp``; its
    ``patch_dataset.json`` entry (``hard_cases`` absent when ``hard_cases_dir`` has no prediction for it), or None
    when the case holds no liver."""
    arrays, lab, spacing, lab_img = _read_case(img_paths, lab_path)
    res = patch_case(arrays, lab, spacing, margin_mm, masked_hu)
    if res is None:
        return None
    images, patch, bbox = res
    (z0, z1), (y0, y1), (x0, x1) = bbox
    ref = lab_img[x0:x1, y0:y1, z0:z1]  # SimpleITK slices x, y, z and keeps the physical geometry
    for c, im in enumerate(images):
        _write_like(im, ref, os.path.join(tmp, "imagesTr", f"{name}_{c:04d}{file_ending}"))
    _write_like(patch, ref, os.path.join(tmp, "labelsTr", f"{name}{file_ending}"))
    entry = {"case": name, "bbox_zyx": [list(b) for b in bbox]}
    if hard_cases_dir is not None:
        found = _hard_case_map(name, str(lab_path), lab, spacing, lab_img, str(hard_cases_dir), hard_min_volume_cm3)
        if found is not None:
            _write_like(found[0][z0:z1, y0:y1, x0:x1], ref, os.path.join(tmp, HARD_CASES_DIR, f"{name}{file_ending}"))
            entry["hard_cases"] = [h.to_json() for h in found[1]]
    return entry


def _dataset_json(ds: dict, raw: Path, out: Path, num_training: int) -> dict:
    """The UNet-patch dataset's dataset.json: the input's channels and file ending, the patch labels."""
    dataset_json = {
        "channel_names": dict(ds.get("channel_names", ds.get("modality"))), "labels": L.patch_dataset_json_labels(),
        "numTraining": num_training, "file_ending": ds.get("file_ending", ".nii.gz"), "name": out.name,
        "description": f"UNet-patch dataset (liver-cropped, outside-liver masked) derived from {raw.name}",
        "converted_by": "nnunet-liver-convert patches"}
    for key in ("overwrite_image_reader_writer", "licence", "reference"):
        if key in ds:
            dataset_json[key] = ds[key]
    return dataset_json


def _report(kept, skipped, no_prediction, hard_cases_dir) -> None:
    if skipped:
        print(f"nnunet-liver-convert patches: skipped {len(skipped)} case(s) without liver: {', '.join(skipped)}")
    if hard_cases_dir is not None:
        kinds = [h["kind"] for c in kept for h in c.get("hard_cases", [])]
        print(f"nnunet-liver-convert patches: hard cases {kinds.count('FN')} FN and {kinds.count('FP')} FP in "
              f"{sum(bool(c.get('hard_cases')) for c in kept)} of {len(kept)} cases"
              + (f"; no prediction (no hard cases) for {len(no_prediction)}: {', '.join(no_prediction[:10])}"
                 + (" ..." if len(no_prediction) > 10 else "") if no_prediction else ""))


def convert_patch_dataset(input_dir, output_dir, margin_mm: float = DEFAULT_MARGIN_MM,
                          masked_hu: float = L.MISSING_PHASE_VALUE, overwrite: bool = False,
                          progress: bool = True, hard_cases_dir=None, hard_min_volume_cm3: float = 0.5) -> Path:
    """Write the UNet-patch raw dataset derived from the whole-CT raw dataset ``input_dir`` to ``output_dir``.

    ``hard_cases_dir``: UNet-whole's predictions on the input's cases; their FN and FP lesions (of at least
    ``hard_min_volume_cm3``) become the hard cases (module docstring). Returns the output folder. Raises InputError
    for a missing/invalid input dataset or prediction, or an existing output.
    """
    from tqdm import tqdm

    raw, out = Path(input_dir), Path(output_dir)
    ds = _check_inputs(raw, out, margin_mm, hard_cases_dir, hard_min_volume_cm3)
    file_ending = ds.get("file_ending", ".nii.gz")
    cases = list(_cases(raw, file_ending, len(ds.get("channel_names", ds.get("modality")))))
    kept, skipped, no_prediction = [], [], []
    with atomic_dir(str(out), overwrite=overwrite) as tmp:
        for sub in ("imagesTr", "labelsTr") + ((HARD_CASES_DIR,) if hard_cases_dir is not None else ()):
            os.makedirs(os.path.join(tmp, sub))
        for name, img_paths, lab_path in tqdm(cases, desc="patch dataset", unit="case", disable=not progress):
            entry = _convert_case(tmp, name, img_paths, lab_path, margin_mm, masked_hu, file_ending,
                                  hard_cases_dir, hard_min_volume_cm3)
            if entry is None:
                skipped.append(name)
                continue
            if hard_cases_dir is not None and "hard_cases" not in entry:
                no_prediction.append(name)
            kept.append(entry)
        if not kept:
            raise InputError(f"{raw}: no case holds liver voxels (labels 1..8); nothing to convert")
        if hard_cases_dir is not None and len(no_prediction) == len(kept):
            raise InputError(f"{hard_cases_dir}: no prediction for any case of {raw.name} (expected CASE.nii.gz or "
                             f"CASE_lesions.nii.gz + CASE.json, e.g. {kept[0]['case']}.nii.gz)")
        write_json_atomic(_dataset_json(ds, raw, out, len(kept)), os.path.join(tmp, "dataset.json"))
        info = {"schema_version": "1.0", "source": str(raw), "margin_mm": margin_mm, "masked_hu": masked_hu,
                "cases": kept, "skipped_no_liver": skipped}
        if hard_cases_dir is not None:
            info.update(hard_cases_from=str(hard_cases_dir), hard_min_volume_cm3=hard_min_volume_cm3,
                        hard_cases_no_prediction=no_prediction)
        write_json_atomic(info, os.path.join(tmp, "patch_dataset.json"))
    _report(kept, skipped, no_prediction, hard_cases_dir)
    return out


def _hard_case_map(case: str, lab_path: str, lab: np.ndarray, spacing, lab_img, pred_dir: str, min_cm3: float):
    """The hard-case map (full grid) and entries of one case, its prediction in ``pred_dir`` against ``lab``; None
    when ``pred_dir`` has no prediction for it."""
    from nnunet_liver.evaluation.evaluate import has_prediction, read_prediction
    from nnunet_liver.postprocessing import seg2det
    from nnunet_liver.training.hard_cases import hard_cases

    if not has_prediction(pred_dir, case):
        return None
    pred = read_prediction(case, pred_dir, lab_path, lab_img, spacing, min_cm3)
    ref = seg2det(lab, spacing)
    return hard_cases(ref, pred.lesions, lab.shape, spacing, region=np.isin(lab, L.LIVER_REGION_IDS),
                      min_ref_volume_cm3=min_cm3, min_pred_volume_cm3=min_cm3)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-i", "--input", required=True,
                        help="whole-CT nnU-Net raw dataset folder (dataset.json with nnunet_liver's 13 labels)")
    parser.add_argument("-o", "--output", required=True,
                        help="output raw dataset folder, e.g. $nnUNet_raw/Dataset502_LiverPatch")
    parser.add_argument("--margin-mm", type=float, default=DEFAULT_MARGIN_MM,
                        help=f"margin around the liver's bounding box in mm (default: {DEFAULT_MARGIN_MM})")
    parser.add_argument("--masked-hu", type=float, default=L.MISSING_PHASE_VALUE,
                        help=f"image value outside the liver in HU (default: {L.MISSING_PHASE_VALUE})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--hard-cases", default=None, metavar="PRED_DIR",
                        help="UNet-whole's predictions on the input's cases (CASE.nii.gz label maps, e.g. nnU-Net's "
                             "fold_k/validation outputs, or the detector's CASE_lesions.nii.gz + CASE.json): their "
                             "false negatives and false positives become UNet-patch's hard cases (hardCasesTr/)")
    parser.add_argument("--hard-min-volume-cm3", type=float, default=0.5,
                        help="smaller reference lesions and proposals are not hard cases (default: 0.5, the "
                             "evaluation's floor)")


def run(args: argparse.Namespace) -> Path:
    return convert_patch_dataset(args.input, args.output, margin_mm=args.margin_mm, masked_hu=args.masked_hu,
                                 overwrite=args.overwrite, hard_cases_dir=args.hard_cases,
                                 hard_min_volume_cm3=args.hard_min_volume_cm3)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry (``python -m nnunet_liver.dataset_conversion.patches``): ``nnunet-liver-convert patches``,
    with its error line and exit codes."""
    import sys

    from nnunet_liver.dataset_conversion.cli import main as convert_main

    return convert_main(["patches", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    raise SystemExit(main())
