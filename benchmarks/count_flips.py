"""Near-tie flips: the slab path (predict_maps) against the full-probability path on phantoms and real CT.

    python benchmarks/count_flips.py [--model demo] [-f 0] [--phantoms 4] [--realdata DIR] [--stacked 119]
                                     [--json out.json]

For each case UNet-whole's ensembled logits are computed once; then

* reference: nnU-Net's ``convert_predicted_logits_to_segmentation_with_correct_shape(return_probabilities=True)``,
  ``lesion_sensitivity_masks``, seg2det with the dense probabilities, ``liver_max``;
* slab path: ``maps_from_logits`` (what the detector runs).

It reports, per case and factor, the voxels whose label differs (a flip needs a scaled lesion probability and the
best other probability to tie within a float32 ulp: torch's softmax of a slab may differ from the whole volume's in
the last bit), whether the lesions are the same, and the largest relative difference of score, mean probability
and LiverMax. Cases: ``--phantoms`` demo-style phantoms (``nnunet_liver.phantom``), and every real study of
``--realdata`` (``hcc048_pv_dicom`` read as DICOM series, the NIfTI phases of the other folders, each phase alone
copied into every model channel), plus ``--stacked N``: the DICOM study resampled to 1 mm slices and stacked to N
slices (3D resampling instead of separate-z). Heavy for real CT (the reference path holds the full probabilities):
run under ``flock /tmp/heavy.lock``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile

import numpy as np

FACTORS = (1.0, 4.0)


def _real_cases(realdata: str, stacked, only=None):
    import SimpleITK as sitk

    out = []
    for name in sorted(os.listdir(realdata)):
        folder = os.path.join(realdata, name)
        if not os.path.isdir(folder) or (only is not None and name not in only):
            continue
        if name.endswith("_dicom"):
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(reader.GetGDCMSeriesFileNames(folder))
            image = reader.Execute()
            out.append((name, image))
            if stacked:
                from bench_detect_clinical import make_case

                with tempfile.TemporaryDirectory() as tmp:
                    for n in stacked:
                        make_case(image, n, 1.0, tmp, 1)
                        out.append((f"{name}_stacked_{n}", sitk.ReadImage(os.path.join(tmp, "CASE_0000.nii.gz"))))
            continue
        for f in sorted(os.listdir(folder)):
            if f.endswith(".nii.gz") and f != "label.nii.gz":
                out.append((f"{name}_{f[:-7]}", sitk.ReadImage(os.path.join(folder, f))))
    return out


def _array_case(image, channels: int):
    import SimpleITK as sitk

    arr = np.maximum(sitk.GetArrayFromImage(image).astype(np.float32), -1024)
    data = np.empty((channels,) + arr.shape, np.float32)
    data[:] = arr
    return data, tuple(float(s) for s in reversed(image.GetSpacing()))


def compare(predictor, model, data, spacing) -> dict:
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    from nnunet_liver.inference.predict import maps_from_logits, predict_logits
    from nnunet_liver.postprocessing.patient import liver_max
    from nnunet_liver.postprocessing.seg2det import seg2det
    from nnunet_liver.postprocessing.sensitivity import lesion_sensitivity_masks

    logits, props = predict_logits(predictor, model, data, spacing)
    got = maps_from_logits(logits.clone(), model.plans_manager, model.configuration_manager, predictor.label_manager,
                           copy.deepcopy(props), FACTORS)
    _, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits, model.plans_manager, model.configuration_manager, predictor.label_manager, props,
        return_probabilities=True)
    probs = np.ascontiguousarray(probs, dtype=np.float32)
    ref = lesion_sensitivity_masks(probs, FACTORS)
    row = {"shape_zyx": list(data.shape[1:]), "spacing_zyx": list(spacing), "slab_mode": got.slab_mode}
    lm_ref = liver_max(probs, ref[1.0])
    row["livermax_max_rel_diff"] = max(abs(got.liver_max[k] - v) / max(abs(v), 1e-30) for k, v in lm_ref.items())
    for f in FACTORS:
        key = f"{f:g}"
        row[f"flips_f{key}"] = int(np.count_nonzero(got.maps[f] != ref[f]))
        dense = seg2det(ref[f], spacing, probabilities=probs)
        sparse = seg2det(got.maps[f], spacing, probabilities=got.lesion_probabilities)
        row[f"lesions_f{key}"] = len(dense)
        same = len(dense) == len(sparse) and all(
            a.bbox == b.bbox and a.label == b.label and a.num_voxels == b.num_voxels for a, b in zip(dense, sparse))
        row[f"same_lesions_f{key}"] = bool(same)
        rel = 0.0
        if same:
            for a, b in zip(dense, sparse):
                pairs = [(a.score, b.score)] + [(a.mean_probability[k], b.mean_probability[k])
                                                for k in a.mean_probability]
                rel = max([rel] + [abs(x - y) / max(abs(x), 1e-30) for x, y in pairs])
        row[f"stats_max_rel_diff_f{key}"] = rel
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--model", default="demo")
    p.add_argument("-f", nargs="+", default=None)
    p.add_argument("--phantoms", type=int, default=4)
    p.add_argument("--realdata", default=os.path.join(here, "..", "..", "..", "shared", "realdata"))
    p.add_argument("--stacked", type=int, nargs="*", default=[])
    p.add_argument("--only", nargs="*", default=None, help="real studies (folder names) to use (default: all)")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    sys.path.insert(0, here)

    import torch

    from nnunet_liver.inference.cases import discover_cases, load_case
    from nnunet_liver.inference.model import load_model, make_predictor
    from nnunet_liver.phantom import write_phantom_dataset

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    folds = None if args.f is None else [int(f) if f != "all" else f for f in args.f]
    model = load_model(args.model, folds, which="whole")
    predictor = make_predictor(model, "cpu")
    rows = []
    if args.phantoms:
        with tempfile.TemporaryDirectory() as tmp:
            ds = write_phantom_dataset(os.path.join(tmp, "Dataset998_Flips"), args.phantoms, seed=7, progress=False)
            for case in discover_cases(os.path.join(str(ds), "imagesTr"), len(model.channel_names)):
                loaded = load_case(case, model.channel_names, allow_missing=model.is_ifm)
                rows.append({"case": f"phantom/{case.case_id}", **compare(predictor, model, loaded.data,
                                                                          loaded.spacing)})
                print(json.dumps(rows[-1]), flush=True)
    if args.realdata and os.path.isdir(args.realdata):
        for name, image in _real_cases(args.realdata, args.stacked, args.only):
            data, spacing = _array_case(image, len(model.channel_names))
            rows.append({"case": f"real/{name}", **compare(predictor, model, data, spacing)})
            print(json.dumps(rows[-1]), flush=True)
    total = {f"flips_f{f:g}": sum(r[f"flips_f{f:g}"] for r in rows) for f in FACTORS}
    summary = {"model": args.model, "cases": rows, "total": total,
               "all_lesions_same": all(r[f"same_lesions_f{f:g}"] for r in rows for f in FACTORS)}
    from bench_detect_clinical import write_summary

    write_summary({"total": total, "all_lesions_same": summary["all_lesions_same"]})
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(summary, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
