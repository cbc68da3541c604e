"""nnunet-liver-evaluate end to end on painted NIfTI folders: label maps, detector outputs, errors."""
import csv
import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.evaluation.cli import main
from nnunet_liver.labels import CYST, HCC, LIVER, META

SPACING_XYZ = (1.0, 1.0, 2.0)  # 1 voxel = 0.002 cm3 ; use --min-volume 0.01 (5 voxels) in these tests


def _write(arr, path, spacing=SPACING_XYZ, origin=(0.0, 0.0, 0.0)):
    im = sitk.GetImageFromArray(arr)
    im.SetSpacing(spacing)
    im.SetOrigin(origin)
    sitk.WriteImage(im, str(path))


def _cases():
    """Three painted cases: (reference, predicted label map)."""
    out = {}
    ref, pred = np.zeros((8, 16, 16), np.uint8), np.zeros((8, 16, 16), np.uint8)
    ref[:, 1:15, 1:15] = pred[:, 1:15, 1:15] = LIVER
    ref[1:3, 2:6, 2:6] = HCC      # TP
    pred[1:3, 3:7, 3:7] = HCC
    ref[5:7, 9:13, 9:13] = CYST   # FL (predicted Meta)
    pred[5:7, 9:13, 9:13] = META
    out["case_a"] = (ref, pred)
    ref, pred = np.zeros((8, 16, 16), np.uint8), np.zeros((8, 16, 16), np.uint8)
    ref[:, 1:15, 1:15] = pred[:, 1:15, 1:15] = LIVER
    ref[2:4, 4:8, 4:8] = META     # FN
    pred[6, 10:13, 10:13] = CYST  # FP (9 voxels = 0.018 cm3)
    pred[0, 14, 14] = HCC         # tiny: ignored
    out["case_b"] = (ref, pred)
    ref, pred = np.zeros((8, 16, 16), np.uint8), np.zeros((8, 16, 16), np.uint8)  # empty both
    out["case_c"] = (ref, pred)
    return out


@pytest.fixture
def folders(tmp_path):
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    pred_dir.mkdir()
    for cid, (r, p) in _cases().items():
        _write(r, ref_dir / f"{cid}.nii.gz")
        _write(p, pred_dir / f"{cid}.nii.gz")
    return ref_dir, pred_dir


def test_label_maps_end_to_end(folders, tmp_path, capsys):
    ref_dir, pred_dir = folders
    out = tmp_path / "out"
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(out), "--min-volume", "0.01",
                 "--strata", "-q"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert s["schema_version"] == "1.0"
    a = s["lesion"]["All"]
    assert (a["TP"], a["FL"], a["FP"], a["FN"]) == (1, 1, 1, 1)
    assert s["lesion"]["HCC"]["recall"] == 1.0
    assert s["lesion"]["Malign"]["TP"] == 1 and s["lesion"]["Malign"]["FN"] == 1
    assert s["patient"]["cases"] == 3
    # case_a: ref HCC, pred HCC; case_b: ref Meta, pred Cyst; case_c: normal/normal
    assert s["patient"]["malignancy_sensitivity"] == 0.5 and s["patient"]["malignancy_specificity"] == 1.0
    assert s["patient"]["class_accuracy"] == pytest.approx(2 / 3)
    assert s["froc"] is None and s["auc"] is None  # label maps carry no scores
    assert s["dice"]["lesion"]["cases"] == 2  # case_c: both empty -> undefined
    small = s["strata"]["<0.5"]  # every painted lesion is below 0.5 cm3
    assert (small["TP"], small["FL"], small["FP"], small["FN"]) == (1, 1, 1, 1)
    assert s["strata"][">64"]["TP"] == 0
    rows = list(csv.DictReader((out / "lesion_table.csv").read_text(encoding="utf-8").splitlines()))
    assert [r["type"] for r in rows] == ["HCC", "ICC", "Meta", "Hem", "Other", "Cyst", "All", "Malign"]
    per_case = list(csv.DictReader((out / "per_case.csv").read_text(encoding="utf-8").splitlines()))
    assert [r["case"] for r in per_case] == ["case_a", "case_b", "case_c"]
    assert (out / "patient.csv").exists() and (out / "strata.csv").exists()
    les = list(csv.DictReader((out / "lesions.csv").read_text(encoding="utf-8").splitlines()))
    assert sorted((r["case"], r["outcome"], r["ref_type"], r["pred_type"]) for r in les) == [
        ("case_a", "FL", "Cyst", "Meta"), ("case_a", "TP", "HCC", "HCC"), ("case_b", "FN", "Meta", ""),
        ("case_b", "FP", "", "Cyst"), ("case_b", "ignored", "", "HCC")]
    assert {r["fn_merged"] for r in les} == {"False"}  # case_b's FN overlaps nothing: missed, not merged
    counts = {r["type"]: r
              for r in csv.DictReader((out / "reference_counts.csv").read_text(encoding="utf-8").splitlines())}
    assert counts["All"]["Total"] == "3" and counts["Malign"]["Total"] == "2" and counts["Cyst"]["<0.5"] == "1"


def test_overlap_option_changes_matching(folders, tmp_path):
    ref_dir, pred_dir = folders
    out = tmp_path / "out"
    # the HCC pair overlaps 3x3 of 4x4 (IoU 18/46 = 0.39): a match for iou:0.1, not for iou:0.5
    main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(out), "--min-volume", "0.01", "-q",
          "--overlap", "iou:0.5"])
    a = json.loads((out / "summary.json").read_text())["lesion"]["All"]
    assert (a["TP"], a["FL"], a["FP"], a["FN"]) == (0, 1, 2, 2)


def test_detector_outputs_with_scores_livermax_and_uncertain(folders, tmp_path):
    ref_dir, _ = folders
    det = tmp_path / "det"
    det.mkdir()
    from nnunet_liver.postprocessing import instance_map, seg2det
    classes = {"case_a": "HCC", "case_b": "uncertain", "case_c": "normal"}
    livermax = {"case_a": {"HCC": 0.9, "Meta": 0.2, "Cyst": 0.7}, "case_b": {"HCC": 0.3, "Meta": 0.6, "Cyst": 0.1},
                "case_c": {"HCC": 0.1, "Meta": 0.1, "Cyst": 0.2}}
    for k, (cid, (_, pred)) in enumerate(_cases().items()):
        les = [l for l in seg2det(pred, (2.0, 1.0, 1.0)) if l.num_voxels > 1]
        for i, l in enumerate(les, start=1):
            l.id = i
        _write(instance_map(les, pred.shape), det / f"{cid}_lesions.nii.gz")
        js = {"schema_version": "1.0", "case": cid,
              "lesions": [{"id": l.id, "type": l.type, "label": l.label, "volume_cm3": l.volume_cm3,
                           "score": 0.9 - 0.1 * l.id - 0.3 * k} for l in les],
              "patient": {"class": classes[cid], "livermax": livermax[cid]}}
        (det / f"{cid}.json").write_text(json.dumps(js))
    out = tmp_path / "out"
    assert main(["-ref", str(ref_dir), "-pred", str(det), "-o", str(out), "--min-volume", "0.01", "-q"]) == 0
    s = json.loads((out / "summary.json").read_text())
    a = s["lesion"]["All"]
    assert (a["TP"], a["FL"], a["FP"], a["FN"]) == (1, 1, 1, 1)
    assert s["patient"]["uncertain"] == 1 and s["patient"]["certain"] == 2
    assert s["patient"]["class_accuracy"] == 1.0
    assert s["auc"]["HCC"]["auc"] == 1.0 and s["auc"]["Meta"]["auc"] == 1.0 and s["auc"]["Cyst"]["auc"] == 1.0
    # scores: case_a HCC 0.8 (hit), Meta 0.7 (hit); case_b Cyst 0.5 (FP) -> 2 of 3 references at 0 FP
    assert s["froc"]["sensitivity_at"]["0.125"] == pytest.approx(2 / 3)
    assert s["average_precision"] == pytest.approx(2 / 3)
    assert (out / "froc.png").stat().st_size > 1000 and (out / "auc.csv").exists()


def test_geometry_mismatch_is_one_line_error(folders, capsys):
    ref_dir, pred_dir = folders
    _write(_cases()["case_a"][1], pred_dir / "case_a.nii.gz", spacing=(1.0, 1.0, 3.0))
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nnunet-liver-evaluate: error: ") and "geometry" in err and "spacing" in err
    assert len(err.splitlines()) == 1


def test_missing_prediction_and_bad_overlap(folders, capsys):
    ref_dir, pred_dir = folders
    (pred_dir / "case_b.nii.gz").unlink()
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-q"]) == 2
    assert "no prediction for case case_b" in capsys.readouterr().err
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-q", "--overlap", "iou:2"]) == 2
    assert "overlap" in capsys.readouterr().err


def test_bad_label_values(folders, capsys):
    ref_dir, pred_dir = folders
    bad = _cases()["case_a"][1].copy()
    bad[0, 0, 0] = 42
    _write(bad, pred_dir / "case_a.nii.gz")
    assert main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-q"]) == 2
    assert "[42]" in capsys.readouterr().err


def test_case_dice_matches_nnunet_region_dice(folders, tmp_path):
    from nnunetv2.evaluation.evaluate_predictions import compute_tp_fp_fn_tn, region_or_label_to_mask
    ref_dir, pred_dir = folders
    out = tmp_path / "out"
    main(["-ref", str(ref_dir), "-pred", str(pred_dir), "-o", str(out), "--min-volume", "0.01", "-q"])
    rows = {r["case"]: r for r in csv.DictReader((out / "per_case.csv").read_text(encoding="utf-8").splitlines())}
    for cid, (ref, pred) in _cases().items():
        for key, region in (("lesion", (1, 2, 3, 4, 5, 6)), ("liver_region", tuple(range(1, 9))), ("HCC", 1)):
            tp, fp, fn, _ = compute_tp_fp_fn_tn(region_or_label_to_mask(ref, region),
                                                region_or_label_to_mask(pred, region))
            got = rows[cid][f"dice_{key}"]
            if tp + fp + fn == 0:
                assert got == ""  # undefined (nnU-Net: NaN)
            else:
                assert float(got) == pytest.approx(2 * tp / (2 * tp + fp + fn))


def test_detector_json_errors(folders, tmp_path, capsys):
    ref_dir, _ = folders
    det = tmp_path / "det"
    det.mkdir()
    for cid, (_, pred) in _cases().items():
        _write(np.zeros(pred.shape, np.uint16), det / f"{cid}_lesions.nii.gz")
        (det / f"{cid}.json").write_text(json.dumps({"lesions": [], "patient": {"class": "normal"}}))
    assert main(["-ref", str(ref_dir), "-pred", str(det), "-o", str(tmp_path / "o"), "-q"]) == 0
    (det / "case_b.json").write_text(json.dumps({"lesions": [], "patient": {"class": "tumour"}}))
    assert main(["-ref", str(ref_dir), "-pred", str(det), "-q"]) == 2
    assert "patient.class 'tumour'" in capsys.readouterr().err
    (det / "case_b.json").write_text("{not json")
    assert main(["-ref", str(ref_dir), "-pred", str(det), "-q"]) == 2
    assert "cannot read detector JSON" in capsys.readouterr().err
    inst = np.zeros((8, 16, 16), np.uint16)
    inst[2, 2:4, 2:4] = 3
    _write(inst, det / "case_b_lesions.nii.gz")
    (det / "case_b.json").write_text(json.dumps({"lesions": [{"id": 1, "type": "HCC"}]}))
    assert main(["-ref", str(ref_dir), "-pred", str(det), "-q"]) == 2
    assert "instance id 3" in capsys.readouterr().err
