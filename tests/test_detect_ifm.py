"""nnunet-liver-detect with tiny trained models (tests/conftest.py): an IFM model on a case without delayed phase,
and the whole cascade with a trained UNet-patch, on phantoms."""
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.inference import schema_path

pytestmark = pytest.mark.slow


def _fixture(request, name):
    try:
        return request.getfixturevalue(name).model_folder
    except pytest.FixtureLookupError:
        pytest.skip(f"fixture {name} (tests/conftest.py, tiny trained models) is not available")


def _write_phantom(folder, case_id, seed, phases=("NC", "A", "V")):
    from nnunet_liver.phantom import generate_case

    case = generate_case(seed, shape=(16, 64, 64), spacing=(5.0, 3.0, 3.0))
    os.makedirs(folder, exist_ok=True)
    for c, name in enumerate(("NC", "A", "V", "D")):
        if name in phases:
            im = sitk.GetImageFromArray(case.images[name].astype(np.float32))
            im.SetSpacing(tuple(reversed(case.spacing)))
            sitk.WriteImage(im, os.path.join(folder, f"{case_id}_{c:04d}.nii.gz"))
    return case


def _check_outputs(out, case_id):
    import jsonschema

    rec = json.loads(Path(os.path.join(out, f"{case_id}.json")).read_text(encoding="utf-8"))
    jsonschema.validate(rec, json.loads(Path(schema_path()).read_text(encoding="utf-8")))
    arr = sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(out, f"{case_id}_lesions.nii.gz")))
    assert sorted(l["id"] for l in rec["lesions"]) == sorted(int(i) for i in np.unique(arr) if i)
    return rec, arr


def test_ifm_model_runs_without_delayed_phase(request, tmp_path):
    from nnunet_liver.inference import LiverDetector, run_folder
    from nnunet_liver.postprocessing.seg2det import seg2det

    model = _fixture(request, "tiny_whole_model")
    inp, out = tmp_path / "in", tmp_path / "out"
    _write_phantom(inp, "nod", 11, phases=("NC", "A", "V"))
    det = LiverDetector(str(model), device="cpu")
    assert det.model.is_ifm
    result = run_folder(det, str(inp), str(out), progress=False)
    assert result.ok and result.done == ["nod"]
    rec, arr = _check_outputs(str(out), "nod")
    assert rec["phases_present"] == ["NC", "A", "V"] and rec["phases_missing"] == ["D"]
    assert rec["model"]["whole"]["ifm"] is True
    assert arr.shape == (16, 64, 64)
    # f = 4 finds every lesion f = 1 finds (on the trained model's real probabilities)
    res = det.detect({"NC": str(inp / "nod_0000.nii.gz"), "A": str(inp / "nod_0001.nii.gz"),
                      "V": str(inp / "nod_0002.nii.gz")}, "nod")
    shape = res.case.data.shape[1:]
    f4 = seg2det(res.label_maps[4.0], res.case.spacing)
    for les in seg2det(res.label_maps[1.0], res.case.spacing):
        m = les.global_mask(shape)
        assert any((m & l.global_mask(shape)).any() for l in f4)


def test_cascade_with_trained_patch_model(request, tmp_path):
    from nnunet_liver.inference.cli import main

    whole = _fixture(request, "tiny_whole_model")
    patch = _fixture(request, "tiny_patch_model")
    inp, out = tmp_path / "in", tmp_path / "out"
    _write_phantom(inp, "full", 12, phases=("NC", "A", "V", "D"))
    assert main(["-i", str(inp), "-o", str(out), "-m", str(whole), "--patch-model", str(patch),
                 "--factors", "1", "4", "--no-report"]) == 0
    rec, _ = _check_outputs(str(out), "full")
    assert rec["settings"]["reclassification"]["enabled"] and rec["model"]["patch"] is not None
    d4 = rec["detections_by_factor"]["4"]
    assert d4["before_reclassification"] - len(d4["dropped_detection_ids"]) == d4["after_reclassification"]
    assert d4["after_reclassification"] == len(rec["lesions"])
    for les in rec["lesions"]:
        r = les["reclassification"]
        assert r["kept"] and (r["skipped"] or r["score_cm3"] >= 0.5) and r["type_after"] == les["type"]
