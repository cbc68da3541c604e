"""nnunet-liver-convert: MSD / LiTS / multi-phase fixtures, label remapping, layouts, merging, bad input."""
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver import labels as L
from nnunet_liver.dataset_conversion.cli import build_parser, main as convert_main
from nnunet_liver.phantom import generate_case
from nnunet_liver.phantom.dataset import to_sitk_image

SHAPE = (8, 16, 16)
MSD_LIVER = {"0": "background", "1": "liver", "2": "cancer"}


def write_image(path, array, spacing=(2.5, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def ct(seed, shape=SHAPE):
    return np.random.default_rng(seed).integers(-200, 200, shape).astype(np.int16)


def painted_label(tumour=True, shape=SHAPE, liver_value=1, tumour_value=2):
    lab = np.zeros(shape, np.uint8)
    lab[2:6, 3:12, 3:12] = liver_value  # organ
    if tumour:
        lab[3:5, 5:8, 5:8] = tumour_value  # tumour inside it
    return lab


def make_msd(root, task="Task03_Liver", labels=MSD_LIVER, n=2, tumour=True, shape=SHAPE, prefix="liver"):
    folder = root / task
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    training = []
    for i in range(n):
        write_image(folder / "imagesTr" / f"{prefix}_{i}.nii.gz", ct(i, shape))
        write_image(folder / "labelsTr" / f"{prefix}_{i}.nii.gz", painted_label(tumour and i == 0, shape))
        training.append({"image": f"./imagesTr/{prefix}_{i}.nii.gz", "label": f"./labelsTr/{prefix}_{i}.nii.gz"})
    meta = {"name": task, "modality": {"0": "CT"}, "labels": labels, "numTraining": n, "training": training}
    (folder / "dataset.json").write_text(json.dumps(meta))
    return folder


def make_lits(root, n=2, tumour_cases=(0,)):
    folder = root / "LiTS" / "Training Batch 1"
    folder.mkdir(parents=True)
    for i in range(n):
        write_image(folder / f"volume-{i}.nii", ct(10 + i))
        write_image(folder / f"segmentation-{i}.nii", painted_label(i in tumour_cases))
    return root / "LiTS"


def hash_tree(folder):
    out = {}
    for r, _, files in os.walk(folder):
        for f in files:
            p = os.path.join(r, f)
            out[p] = (hashlib.sha256(Path(p).read_bytes()).hexdigest(), os.stat(p).st_mtime_ns)
    return out


def run(argv, capsys):
    rc = convert_main([str(a) for a in argv])
    err = capsys.readouterr().err
    errors = [line for line in err.replace("\r", "\n").splitlines() if line.startswith("nnunet-liver-convert: error:")]
    return rc, errors, err


def test_msd_liver_remap_and_single_phase_layout(tmp_path, capsys):
    task = make_msd(tmp_path)
    raw = tmp_path / "raw"
    rc, errors, _ = run(["msd", "-i", task, "-d", 600, "-o", raw, "--tumor-type", "HCC"], capsys)
    assert rc == 0 and not errors
    out = raw / "Dataset600_MSD_Liver"
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "V"} and meta["labels"] == L.dataset_json_labels()
    assert meta["numTraining"] == 2 and meta["file_ending"] == ".nii.gz"
    src = read(task / "labelsTr" / "liver_0.nii.gz")
    got = read(out / "labelsTr" / "liver_0.nii.gz")
    assert np.array_equal(got == L.LIVER, src == 1) and np.array_equal(got == L.HCC, src == 2)
    assert np.array_equal(got == 0, src == 0)
    assert np.array_equal(read(out / "imagesTr" / "liver_0_0000.nii.gz"), ct(0))
    assert sorted(os.listdir(out / "imagesTr")) == ["liver_0_0000.nii.gz", "liver_1_0000.nii.gz"]


def test_msd_tumour_needs_tumor_type_and_fails_cleanly(tmp_path, capsys):
    task = make_msd(tmp_path)
    raw = tmp_path / "raw"
    raw.mkdir()
    before = hash_tree(task)
    rc, errors, err = run(["msd", "-i", task, "-d", 601, "-o", raw], capsys)
    assert rc != 0 and len(errors) == 1 and "Traceback" not in err
    assert "liver_0" in errors[0] and "--tumor-type" in errors[0]
    assert os.listdir(raw) == []  # no partial dataset, no temporary folder
    assert hash_tree(task) == before
    # without any tumour voxel the type is not needed
    rc, errors, _ = run(["msd", "-i", make_msd(tmp_path / "b", tumour=False), "-d", 601, "-o", raw], capsys)
    assert rc == 0 and np.unique(read(raw / "Dataset601_MSD_Liver" / "labelsTr" / "liver_0.nii.gz")).tolist() == [
        0, L.LIVER]


def test_msd_merge_tasks_four_phase_layout_and_workers(tmp_path, capsys):
    liver = make_msd(tmp_path)
    spleen = make_msd(tmp_path, "Task09_Spleen", {"0": "background", "1": "spleen"}, prefix="spleen",
                      tumour=False)
    vessel = make_msd(tmp_path, "Task08_HepaticVessel", {"0": "background", "1": "Vessel", "2": "Tumour"},
                      prefix="hepaticvessel")
    raw = tmp_path / "raw"
    rc, errors, _ = run(["msd", "-i", liver, "-i", spleen, "-i", vessel, "-d", 602, "-o", raw, "--phases",
                         "NC,A,V,D", "--tumor-type", "Meta", "-np", 2], capsys)
    assert rc == 0, errors
    out = raw / "Dataset602_MSD_Liver_Spleen_HepaticVessel"
    meta = json.loads((out / "dataset.json").read_text(encoding="utf-8"))
    assert meta["channel_names"] == {"0": "NC", "1": "A", "2": "V", "3": "D"} and meta["numTraining"] == 6
    for ch in (0, 1, 3):
        assert np.all(read(out / "imagesTr" / f"spleen_0_{ch:04d}.nii.gz") == L.MISSING_PHASE_VALUE)
    assert np.array_equal(read(out / "imagesTr" / "spleen_0_0002.nii.gz"), ct(0))
    assert np.unique(read(out / "labelsTr" / "spleen_0.nii.gz")).tolist() == [0, L.SPLEEN]
    assert np.unique(read(out / "labelsTr" / "hepaticvessel_0.nii.gz")).tolist() == [0, L.META, L.HEPATIC_VESSELS]
    assert np.unique(read(out / "labelsTr" / "liver_0.nii.gz")).tolist() == [0, L.META, L.LIVER]


def test_msd_pancreas_tumour_as_organ_and_unknown_type(tmp_path, capsys):
    task = make_msd(tmp_path, "Task07_Pancreas", {"0": "background", "1": "pancreas", "2": "cancer"},
                    prefix="pancreas")
    raw = tmp_path / "raw"
    rc, _, _ = run(["msd", "-i", task, "-d", 603, "-o", raw, "--tumor-type", "pancreas"], capsys)
    assert rc == 0
    assert np.unique(read(raw / "Dataset603_MSD_Pancreas" / "labelsTr" / "pancreas_0.nii.gz")).tolist() == [
        0, L.PANCREAS]
    rc, errors, _ = run(["msd", "-i", task, "-d", 604, "-o", raw, "--tumor-type", "carcinoid"], capsys)
    assert rc != 0 and "carcinoid" in errors[0]


def test_lits_remap_nested_uncompressed(tmp_path, capsys):
    src = make_lits(tmp_path)
    raw = tmp_path / "raw"
    rc, errors, _ = run(["lits", "-i", src, "-d", 605, "-o", raw, "--tumor-type", "ICC"], capsys)
    assert rc == 0, errors
    out = raw / "Dataset605_LiTS"
    got = read(out / "labelsTr" / "lits_000.nii.gz")
    src0 = read(src / "Training Batch 1" / "segmentation-0.nii")
    assert np.array_equal(got == L.ICC, src0 == 2) and np.array_equal(got == L.LIVER, src0 == 1)
    assert np.array_equal(read(out / "imagesTr" / "lits_001_0000.nii.gz"), ct(11))


def _phantom_case_folder(folder, seed=5, phases=("NC", "A", "V"), misalign_mm=8.0, label=True):
    case = generate_case(seed, shape=(24, 96, 96), spacing=(5.0, 3.0, 3.0), misalign_mm=misalign_mm, noise=False)
    folder.mkdir(parents=True)
    for p in phases:
        sitk.WriteImage(to_sitk_image(np.rint(case.images[p]).astype(np.int16), case.spacing, case.origin),
                        str(folder / f"{p}.nii.gz"))
    if label:
        sitk.WriteImage(to_sitk_image(case.label, case.spacing, case.origin), str(folder / "label.nii.gz"))
    return case


def test_multiphase_registers_fills_missing_and_keeps_label(tmp_path, capsys):
    moved = _phantom_case_folder(tmp_path / "cases" / "pat01")
    _phantom_case_folder(tmp_path / "cases" / "pat02", seed=6, phases=("V", "D"), label=False)
    aligned = generate_case(5, shape=(24, 96, 96), spacing=(5.0, 3.0, 3.0), noise=False)
    before = hash_tree(tmp_path / "cases")
    raw = tmp_path / "raw"
    rc, errors, _ = run(["multiphase", "-i", tmp_path / "cases", "-d", 606, "-o", raw], capsys)
    assert rc == 0, errors
    assert hash_tree(tmp_path / "cases") == before
    out = raw / "Dataset606_MultiPhase"
    assert np.array_equal(read(out / "labelsTr" / "pat01.nii.gz"), moved.label)
    assert np.all(read(out / "imagesTr" / "pat01_0003.nii.gz") == L.MISSING_PHASE_VALUE)  # no D
    assert np.array_equal(read(out / "imagesTr" / "pat01_0002.nii.gz"), np.rint(moved.images["V"]))
    report = json.loads((out / "registration" / "pat01.json").read_text(encoding="utf-8"))
    organs = np.zeros(moved.label.shape, bool)
    organs[2:-2] = moved.label[2:-2] > 0
    for ch, p in ((0, "NC"), (1, "A")):
        registered = read(out / "imagesTr" / f"pat01_{ch:04d}.nii.gz").astype(float)
        err_after = np.abs(registered - aligned.images[p])[organs].mean()
        err_before = np.abs(moved.images[p] - aligned.images[p])[organs].mean()
        assert err_after < 0.7 * err_before, (p, err_before, err_after)  # two interpolations remain
        residual_mm = np.asarray(report["phases"][p]["translation_mm_xyz"])[::-1] - moved.shifts_mm[p]
        assert np.all(np.abs(residual_mm) < np.asarray(moved.spacing)), residual_mm
    assert set(report["phases"]) == {"NC", "A"} and report["reference_phase"] == "V"
    assert all(r["metric_after"] < r["metric_before"] for r in report["phases"].values())
    # the unlabelled case goes to imagesTs with NC and A missing
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["numTraining"] == 1
    assert np.all(read(out / "imagesTs" / "pat02_0000.nii.gz") == L.MISSING_PHASE_VALUE)
    assert not np.all(read(out / "imagesTs" / "pat02_0003.nii.gz") == L.MISSING_PHASE_VALUE)


def test_append_merges_single_and_multiphase(tmp_path, capsys):
    raw = tmp_path / "raw"
    task = make_msd(tmp_path, shape=(24, 32, 32))
    rc, _, _ = run(["msd", "-i", task, "-d", 607, "-n", "Merged", "-o", raw, "--phases", "NC,A,V,D",
                    "--tumor-type", "HCC"], capsys)
    assert rc == 0
    _phantom_case_folder(tmp_path / "mp" / "pat01", misalign_mm=0.0)
    rc, errors, _ = run(["multiphase", "-i", tmp_path / "mp", "-d", 607, "-n", "Merged", "-o", raw, "--append"],
                        capsys)
    assert rc == 0, errors
    out = raw / "Dataset607_Merged"
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["numTraining"] == 3
    record = json.loads((out / "conversion.json").read_text(encoding="utf-8"))
    assert [s["kind"] for s in record["sources"]] == ["msd", "multiphase"]
    assert sorted(record["cases"]) == ["liver_0", "liver_1", "pat01"]
    snapshot = hash_tree(out)
    rc, errors, _ = run(["multiphase", "-i", tmp_path / "mp", "-d", 607, "-n", "Merged", "-o", raw, "--append"],
                        capsys)  # same case again
    assert rc != 0 and "already exist" in errors[0] and hash_tree(out) == snapshot
    rc, errors, _ = run(["multiphase", "-i", tmp_path / "mp", "-d", 607, "-n", "Merged", "-o", raw, "--append",
                         "--phases", "V"], capsys)
    assert rc != 0 and "--phases" in errors[0] and hash_tree(out) == snapshot
    rc, errors, _ = run(["msd", "-i", task, "-d", 607, "-n", "Other", "-o", raw, "--tumor-type", "HCC"], capsys)
    assert rc != 0 and "already used" in errors[0]


def _geometry_mismatch(root):
    task = make_msd(root)
    write_image(task / "labelsTr" / "liver_1.nii.gz", painted_label(False, (8, 16, 15)))
    return ["msd", "-i", task, "--tumor-type", "HCC"], "liver_1", "geometry"


def _spacing_mismatch(root):
    task = make_msd(root)
    write_image(task / "labelsTr" / "liver_1.nii.gz", painted_label(False), spacing=(5.0, 1.0, 1.0))
    return ["msd", "-i", task, "--tumor-type", "HCC"], "liver_1", "spacing"


def _label_out_of_set(root):
    task = make_msd(root)
    write_image(task / "labelsTr" / "liver_1.nii.gz", painted_label(False, liver_value=5))
    return ["msd", "-i", task, "--tumor-type", "HCC"], "liver_1", "outside"


def _missing_label_file(root):
    task = make_msd(root)
    os.remove(task / "labelsTr" / "liver_1.nii.gz")
    return ["msd", "-i", task, "--tumor-type", "HCC"], "liver_1", "not found"


def _missing_lits_segmentation(root):
    src = make_lits(root)
    os.remove(src / "Training Batch 1" / "segmentation-1.nii")
    return ["lits", "-i", src, "--tumor-type", "HCC"], "lits_001", "missing"


def _empty_folder(root):
    (root / "cases").mkdir()
    return ["multiphase", "-i", root / "cases"], "cases", "empty"


def _image_2d(root):
    src = make_lits(root)
    write_image(src / "Training Batch 1" / "volume-1.nii", ct(1, (1, 16, 16)))
    write_image(src / "Training Batch 1" / "segmentation-1.nii", painted_label(False, (1, 16, 16)))
    return ["lits", "-i", src, "--tumor-type", "HCC"], "volume-1", "3D"


def _corrupt_file(root):
    _phantom_case_folder(root / "cases" / "pat01", misalign_mm=0.0)
    (root / "cases" / "pat01" / "A.nii.gz").write_bytes(b"\x1f\x8b this is not a NIfTI file")
    return ["multiphase", "-i", root / "cases"], "A.nii.gz", "cannot read"


def _multiphase_bad_label(root):
    _phantom_case_folder(root / "cases" / "pat01", misalign_mm=0.0)
    img = sitk.ReadImage(str(root / "cases" / "pat01" / "label.nii.gz"))
    arr = sitk.GetArrayFromImage(img)
    arr[0, 0, 0] = 20
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    sitk.WriteImage(bad, str(root / "cases" / "pat01" / "label.nii.gz"))
    return ["multiphase", "-i", root / "cases"], "pat01", "[20]"


def _no_reference_phase(root):
    _phantom_case_folder(root / "cases" / "pat01", phases=("A", "D"), misalign_mm=0.0)
    return ["multiphase", "-i", root / "cases"], "pat01", "--reference-phase"


@pytest.mark.parametrize("make_bad", [_geometry_mismatch, _spacing_mismatch, _label_out_of_set, _missing_label_file,
                                      _missing_lits_segmentation, _empty_folder, _image_2d, _corrupt_file,
                                      _multiphase_bad_label, _no_reference_phase])
def test_bad_input_one_line_error_no_partial_dataset_inputs_untouched(tmp_path, capsys, make_bad):
    src = tmp_path / "src"
    src.mkdir()
    argv, who, problem = make_bad(src)
    raw = tmp_path / "raw"
    raw.mkdir()
    before = hash_tree(src)
    rc, errors, err = run(argv + ["-d", 610, "-o", raw], capsys)
    assert rc != 0
    assert len(errors) == 1 and "Traceback" not in err, err
    assert who in errors[0] and problem in errors[0], errors[0]
    assert os.listdir(raw) == []
    assert hash_tree(src) == before


def test_nnunet_raw_unset_is_a_clear_error(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    rc, errors, _ = run(["lits", "-i", make_lits(tmp_path), "--tumor-type", "HCC"], capsys)
    assert rc != 0 and "nnUNet_raw" in errors[0]
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "envraw"))
    rc, errors, _ = run(["lits", "-i", tmp_path / "LiTS", "--tumor-type", "HCC"], capsys)
    assert rc == 0 and (tmp_path / "envraw" / "Dataset521_LiTS" / "dataset.json").is_file()


def test_patches_subcommand_is_dispatched():
    parser = build_parser()
    args = parser.parse_args(["patches", "-i", "in", "-o", "out"])
    assert args.source == "patches"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["unknown"])
