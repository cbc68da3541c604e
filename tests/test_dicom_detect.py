"""nnunet-liver-detect on DICOM studies: the same detections as the NIfTI path, SEG and SR back, bad studies isolated,
privacy, and the report rendered in a real browser."""
import csv
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

hd = pytest.importorskip("highdicom")

from nnunet_liver.dicom.export import LESION_CODES  # noqa: E402
from nnunet_liver.inference.cli import main  # noqa: E402
from nnunet_liver.labels import dataset_json_labels  # noqa: E402
from nnunet_liver.testing.dicom_study import PATIENT, SERIES, expected_hu, phantom, write_study  # noqa: E402
from nnunet_liver.testing.rule_model import write_rule_model  # noqa: E402

pytestmark = pytest.mark.slow  # nnU-Net's predictor on a rule network

# phantom HU averaged over the four phases: liver about 80, enhancing lesions and vessels above 150; bone (about
# 455 HU) goes to hepatic vessels, so that only HCC (190 HU) and liver are found in the abdomen
CENTERS = [-1000, 190, 900, 1000, 1100, 1200, 1300, 80, 455, 1400, 600, 700, 800, 350]
IDENTIFYING = (PATIENT["name"], PATIENT["id"], PATIENT["birth_date"], "General Hospital", "A123")


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return write_rule_model(str(tmp_path_factory.mktemp("m") / "whole"), dataset_json_labels(), CENTERS,
                            [40.0] * 14, folds=(0,), spacing=(5.0, 4.0, 4.0))


def digest(folder):
    h = hashlib.sha256()
    for root, dirs, files in sorted(os.walk(folder)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as f:
                h.update(name.encode() + f.read())
    return h.hexdigest()


def write_nifti_twin(folder, case_id, case):
    os.makedirs(folder, exist_ok=True)
    for c, (phase, array) in enumerate(expected_hu(case).items()):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing(case.spacing[::-1])
        image.SetOrigin(case.origin[::-1])
        sitk.WriteImage(image, os.path.join(folder, f"{case_id}_{c:04d}.nii.gz"))


@pytest.fixture(scope="module")
def run(model, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    inp, out = root / "in", root / "out"
    case = phantom(0)
    write_study(str(inp / "site" / "patient1"), case, times=False)
    write_nifti_twin(str(inp), "twin", case)
    broken = phantom(1)
    write_study(str(inp / "broken"), broken, times=True, extras=False)
    victim = sorted((inp / "broken" / f"series{SERIES['A'][0]}").iterdir())[7]
    victim.unlink()  # a missing slice
    blend = phantom(2)
    blend.images = {"V": 0.5 * (blend.images["V"] + blend.images["D"])}
    write_study(str(inp / "ambiguous"), blend, times=False, extras=False,
                series={"V": (31, "Abdomen"), **{k: v for k, v in SERIES.items() if k != "V"}})
    before = digest(inp)
    rc = main(["-i", str(inp), "-o", str(out), "-m", model, "--device", "cpu", "--disable-tta"])
    return {"in": inp, "out": out, "rc": rc, "case": case, "digest_before": before, "victim": victim.name}


def test_dicom_matches_nifti_and_bad_studies_stay_apart(run):
    out = run["out"]
    assert run["rc"] == 2 and digest(run["in"]) == run["digest_before"]  # bad studies are bad input (2)
    rows = {r["case"]: r for r in csv.DictReader((out / "summary.csv").read_text(encoding="utf-8").splitlines())}
    assert {c: r["status"] for c, r in rows.items()} == {"twin": "done", "patient1": "done", "broken": "failed",
                                                          "ambiguous": "failed"}
    assert "non-uniform slice spacing" in rows["broken"]["error"]
    assert "series 31" in rows["ambiguous"]["error"] and "--phase-map" in rows["ambiguous"]["error"]
    for c in ("broken", "ambiguous"):
        assert len((out / f"{c}_error.txt").read_text().splitlines()) == 1
        assert not (out / f"{c}.json").exists() and not (out / f"{c}_seg.dcm").exists()
    assert not [p for p in os.listdir(out) if p.startswith(".tmp_")]
    a = sitk.ReadImage(str(out / "twin_lesions.nii.gz"))
    b = sitk.ReadImage(str(out / "patient1_lesions.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), sitk.GetArrayFromImage(b))
    assert a.GetOrigin() == pytest.approx(b.GetOrigin()) and a.GetSpacing() == pytest.approx(b.GetSpacing())
    ra, rb = (json.loads((out / f"{c}.json").read_text()) for c in ("twin", "patient1"))
    assert len(rb["lesions"]) >= 2
    assert ra["lesions"] == rb["lesions"] and ra["patient"] == rb["patient"]
    import jsonschema

    from nnunet_liver.inference import schema_path

    jsonschema.validate(rb, json.loads(Path(schema_path()).read_text(encoding="utf-8")))
    acq = {x["phase"]: x["series_number"] for x in rb["dicom"]["acquisitions"]}
    assert acq == {p: n for p, (n, _) in SERIES.items()} and rb["dicom"]["outputs"]["seg"] == "patient1_seg.dcm"


def test_phase_map_rescues_the_ambiguous_study(run, tmp_path):
    """A venous-only model: the ambiguous study's one series is refused, then run as V once --phase-map says so."""
    v_model = write_rule_model(str(tmp_path / "v"), dataset_json_labels(), CENTERS, [40.0] * 14, folds=(0,),
                               spacing=(5.0, 4.0, 4.0), channel_names=("V",))
    inp = tmp_path / "in"
    shutil.copytree(run["in"] / "ambiguous", inp / "ambiguous")
    assert main(["-i", str(inp), "-o", str(tmp_path / "o1"), "-m", v_model, "--device", "cpu"]) == 2
    out = inp / "o2"  # inside the input folder: its SEG and SR must not join the study on the next run
    for _ in range(2):
        assert main(["-i", str(inp), "-o", str(out), "-m", v_model, "--device", "cpu", "--phase-map", "31=V"]) == 0
    assert (out / "ambiguous_sr.dcm").is_file() and sorted(p for p in os.listdir(out) if p.endswith(".json")) == \
        ["ambiguous.json"]
    rec = json.loads((out / "ambiguous.json").read_text())
    (acq,) = rec["dicom"]["acquisitions"]
    assert rec["phases_present"] == ["V"] and acq["phase"] == "V" and acq["reasons"] == ["--phase-map"]


def test_seg_and_sr_read_back(run):
    out = run["out"]
    rec = json.loads((out / "patient1.json").read_text())
    lesions = rec["lesions"]
    seg = hd.seg.segread(str(out / "patient1_seg.dcm"))
    v_uid = next(a["series_uid"] for a in rec["dicom"]["acquisitions"] if a["phase"] == "V")
    assert seg.StudyInstanceUID == rec["dicom"]["study_uid"]
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == v_uid
    assert list(seg.get_segment_numbers()) == list(range(1, len(lesions) + 1))
    for number, les in enumerate(lesions, start=1):
        d = seg.get_segment_description(number)
        assert d.segment_label == f"lesion {les['id']} {les['type']}"
        assert d.segmented_property_type.value == LESION_CODES[les["type"]][0]
    # the voxels, frame by frame on the source images in slice order
    import pydicom

    v_files = sorted((run["in"] / "site" / "patient1" / f"series{SERIES['V'][0]}").iterdir(),
                     key=lambda p: float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2]))
    uids = [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in v_files]
    pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
    lesion_map = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "patient1_lesions.nii.gz")))
    np.testing.assert_array_equal(pixels, lesion_map)  # segment number = lesion id

    sr = hd.sr.srread(str(out / "patient1_sr.dcm"))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(lesions)
    from pydicom.sr.codedict import codes

    for group, les in zip(groups, lesions):
        assert group.tracking_identifier == f"lesion {les['id']}"
        assert group.finding_type.value == LESION_CODES[les["type"]][0]
        volume = group.get_measurements(name=codes.SCT.Volume)[0]
        assert volume.value == pytest.approx(les["volume_cm3"], rel=1e-6)
        assert group.get_measurements(name=codes.SCT.Diameter)[0].value == pytest.approx(les["diameter_mm"])
        (sens,) = group.get_qualitative_evaluations()
        assert sens.value.value == les["sensitivity"]
        ref = group.referenced_segment
        assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID
    (patient,) = sr.content.get_image_measurement_groups()
    assert patient.tracking_identifier == "patient result"
    assert {q.name.value: q.value.value for q in patient.get_qualitative_evaluations()} == {
        "patient-class": rec["patient"]["class"], "malignant": str(rec["patient"]["malignant"]).lower()}
    assert patient.get_measurements()[0].value == len(lesions)


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy (Debian dicom3tools) not installed")
def test_dciodvfy_validates_seg_and_sr(run):
    for name in ("patient1_seg.dcm", "patient1_sr.dcm"):
        proc = subprocess.run(["dciodvfy", str(run["out"] / name)], capture_output=True, text=True)
        errors = [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("Error")]
        assert not errors, (name, errors[:5])


def test_privacy_of_every_output(run):
    import pydicom

    out = run["out"]
    for name in ("patient1.json", "summary.csv", "report.html"):
        text = (out / name).read_text(encoding="utf-8")
        assert not [t for t in IDENTIFYING if t in text], name
    for name in ("patient1_seg.dcm", "patient1_sr.dcm"):
        ds = pydicom.dcmread(out / name)
        assert "InstitutionName" not in ds and not [e for e in ds if e.tag.is_private]
        assert ds.PatientID == PATIENT["id"]  # the Patient module, which PACS files the object by
        assert ds.PatientBirthDate == "" and ds.PatientSex == ""


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders_in_a_headless_browser(run, tmp_path):
    from matplotlib.image import imread

    html = (run["out"] / "report.html").read_text(encoding="utf-8")
    rec = json.loads((run["out"] / "patient1.json").read_text())
    shown = min(len(rec["lesions"]), 40)
    # overview + one image per present phase per lesion, for the DICOM study and its NIfTI twin
    assert html.count("<img") == 2 * (1 + 4 * shown) and "1.2." in html
    shot = tmp_path / "shot.png"
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                           "--window-size=1100,1400", (run["out"] / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=300)
    assert shot.is_file(), proc.stderr[-2000:]
    rgb = imread(str(shot))[..., :3]
    assert rgb.shape[:2] == (1400, 1100)
    grey = rgb.mean(2)
    assert (grey < 0.2).mean() > 0.05  # the dark CT overview is on the page
    assert len(np.unique((rgb * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 200  # images, not blank text
