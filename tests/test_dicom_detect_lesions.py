"""nnunet-liver-detect end to end on DICOM studies with 0, 1, 2 and 12 lesions (one lesion is the commonest finding),
read back by highdicom and by dcmqi; a series without a frame of reference keeps its detection; a run where every
study fails lists them in report.html and prints each problem once."""
import csv
import json
import os
import shutil
from pathlib import Path
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from nnunet_liver.inference.cli import main  # noqa: E402
from nnunet_liver.labels import dataset_json_labels  # noqa: E402
from nnunet_liver.testing import dicom_check  # noqa: E402
from nnunet_liver.testing.dicom_study import PATIENT, phantom, write_study  # noqa: E402
from nnunet_liver.testing.rule_model import write_rule_model  # noqa: E402

pytestmark = pytest.mark.slow  # nnU-Net's predictor on a rule network

#: lesions are what is painted 1000 HU: no tissue of the phantom comes near it (HCC wins above ~900 HU); the other
#: lesion types sit beyond, the phantom's 190 HU vessels are portal vein, so nothing else becomes a lesion
LESION_HU = 1000.0
CENTERS = [-1000, LESION_HU, 1150, 1250, 1350, 1400, 1450, 80, 455, 190, 600, 700, 800, 350]
COUNTS = (0, 1, 2, 12)


def painted_study(n, seed=0):
    """The phantom's venous phase with ``n`` balls of 6 mm radius painted LESION_HU inside its liver, apart."""
    case = phantom(seed)
    v = case.images["V"].copy()
    liver = np.argwhere(case.label == 7)
    rng = np.random.default_rng(n)
    zz, yy, xx = np.indices(v.shape)
    centres = []
    while len(centres) < n:
        p = liver[rng.integers(len(liver))]
        if all(np.abs(p - q).max() > 4 for q in centres):
            centres.append(p)
    for p in centres:
        d2 = sum(((g - c) * s) ** 2 for g, c, s in zip((zz, yy, xx), p, case.spacing))
        v[d2 <= 36.0] = LESION_HU
    case.images = {"V": v}
    return case


def drop_frame_of_reference(folder):
    for root, _, files in os.walk(folder):
        for name in files:
            ds = pydicom.dcmread(os.path.join(root, name))
            del ds.FrameOfReferenceUID
            ds.save_as(os.path.join(root, name))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("lesions")
    model = write_rule_model(str(root / "model"), dataset_json_labels(), CENTERS, [40.0] * 14, folds=(0,),
                             spacing=(5.0, 4.0, 4.0), channel_names=("V",))
    inp, out = root / "Doe^Jane exports", root / "out"
    for n in COUNTS:
        write_study(str(inp / f"n{n}"), painted_study(n), times=False, extras=False)
    write_study(str(inp / "nofor"), painted_study(1), times=False, extras=False)
    drop_frame_of_reference(inp / "nofor")
    proc = subprocess.run([dicom_check.tool("nnunet-liver-detect"), "-i", str(inp), "-o", str(out), "-m", model,
                           "--device", "cpu", "--disable-tta", "--phase-map", "12=V"],
                          capture_output=True, text=True)
    return {"in": inp, "out": out, "rc": proc.returncode, "stderr": proc.stderr}


def record(run, case):
    return json.loads((run["out"] / f"{case}.json").read_text(encoding="utf-8"))


def test_every_study_done_and_valid(run):
    import jsonschema

    from nnunet_liver.inference import schema_path

    assert run["rc"] == 0, run["stderr"][-3000:]
    with open(run["out"] / "summary.csv", encoding="utf-8") as f:
        rows = {r["case"]: r for r in csv.DictReader(f)}
    assert {c: (r["status"], r["num_lesions"]) for c, r in rows.items()} == {
        **{f"n{n}": ("done", str(n)) for n in COUNTS}, "nofor": ("done", "1")}
    schema = json.loads(Path(schema_path()).read_text(encoding="utf-8"))
    for case in rows:
        rec = record(run, case)
        jsonschema.validate(rec, schema)
        assert rec["inputs"] == {"V": os.path.join(case, "series12")} and rec["dicom"]["folder"] == case  # -i/..
        assert PATIENT["name"] not in json.dumps(rec) and "Doe^Jane exports" not in json.dumps(rec)


@pytest.mark.parametrize("n", COUNTS)
def test_seg_and_sr_agree_with_the_lesion_map(run, n, tmp_path):
    """SEG segments and SR groups, one per lesion; dcmqi's label image equals CASE_lesions.nii.gz voxel for voxel;
    tracking UIDs shared by SEG and SR; dciodvfy finds no error."""
    out, case = run["out"], f"n{n}"
    rec = record(run, case)
    assert len(rec["lesions"]) == n and rec["dicom"]["outputs"] == {"seg": f"{case}_seg.dcm" if n else None,
                                                                    "sr": f"{case}_sr.dcm"}
    lesion_image = sitk.ReadImage(str(out / f"{case}_lesions.nii.gz"))
    lesion_map = sitk.GetArrayFromImage(lesion_image)
    assert sorted(np.unique(lesion_map[lesion_map > 0]).tolist()) == list(range(1, n + 1))
    sr = hd.sr.srread(str(out / f"{case}_sr.dcm"))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == n
    (patient,) = sr.content.get_image_measurement_groups()
    assert patient.get_measurements()[0].value == n
    if not n:
        assert not (out / f"{case}_seg.dcm").exists()
        return
    seg = hd.seg.segread(str(out / f"{case}_seg.dcm"))
    assert list(seg.get_segment_numbers()) == list(range(1, n + 1))
    uids = {k: seg.get_segment_description(k).tracking_uid for k in range(1, n + 1)}
    assert [g.tracking_uid for g in groups] == [uids[k] for k in range(1, n + 1)]
    assert [g.referenced_segment.referenced_segment_numbers for g in groups] == [[k] for k in range(1, n + 1)]
    read = dicom_check.dcmqi_label_map(str(out / f"{case}_seg.dcm"), lesion_image, str(tmp_path / "seg"))
    if read is not None:
        labels, segments = read
        np.testing.assert_array_equal(labels, lesion_map)
        assert {s["labelID"]: s["TrackingUniqueIdentifier"] for s in segments} == uids
        assert {s["labelID"]: int((labels == s["labelID"]).sum()) for s in segments} == \
            {k: int((lesion_map == k).sum()) for k in range(1, n + 1)}
    measured = dicom_check.dcmqi_measurements(str(out / f"{case}_sr.dcm"), str(tmp_path / "sr"))
    if measured is not None:
        per_lesion = [m for m in measured["Measurements"] if "ReferencedSegment" in m]
        assert {m["ReferencedSegment"]: m["TrackingUniqueIdentifier"] for m in per_lesion} == uids
    for name in (f"{case}_seg.dcm", f"{case}_sr.dcm"):
        verdict = dicom_check.dciodvfy(str(out / name))
        if verdict is not None:
            assert not verdict["errors"], (name, verdict["errors"][:5])


def test_no_frame_of_reference_keeps_the_detection(run):
    """The SEG/SR cannot be written without a frame of reference: CASE.json, the NIfTI and the report are, and
    CASE.json and stderr say why."""
    out = run["out"]
    rec = record(run, "nofor")
    outputs = rec["dicom"]["outputs"]
    assert outputs["seg"] is None and outputs["sr"] is None and "no FrameOfReferenceUID" in outputs["not_written"]
    assert len(rec["lesions"]) == 1 and (out / "nofor_lesions.nii.gz").is_file()
    assert not [p for p in os.listdir(out) if p.startswith("nofor_") and p.endswith(".dcm")]
    warnings = [l for l in run["stderr"].splitlines() if "warning: case nofor" in l]
    assert len(warnings) == 1 and "no FrameOfReferenceUID" in warnings[0]
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "id='nofor'" in html and "no FrameOfReferenceUID" in html


def test_when_every_study_fails_the_report_lists_them_and_each_problem_prints_once(run, tmp_path):
    inp = tmp_path / "in"
    for pid in ("P1", "P2"):  # two patients' studies in one folder: both fail with one message
        write_study(str(inp / "mixed" / pid), painted_study(0), times=False, extras=False,
                    patient={"name": f"X^{pid}", "id": pid, "birth_date": "", "sex": ""})
        for series in os.listdir(inp / "mixed" / pid):
            for f in os.listdir(inp / "mixed" / pid / series):
                os.rename(inp / "mixed" / pid / series / f, inp / "mixed" / f"{pid}_{f}")
        shutil.rmtree(inp / "mixed" / pid)
    model = run["out"].parent / "model"
    proc = subprocess.run([dicom_check.tool("nnunet-liver-detect"), "-i", str(inp), "-o", str(tmp_path / "out"),
                           "-m", str(model), "--device", "cpu"], capture_output=True, text=True)
    assert proc.returncode == 2
    errors = [l for l in proc.stderr.splitlines() if ": error: " in l]
    assert len(errors) == 1 and "holds studies of 2 different patients (cases mixed, mixed_2)" in errors[0]
    html = (tmp_path / "out" / "report.html").read_text(encoding="utf-8")
    assert "0 case(s) done" in html and "2 failed, 0 pending" in html
    assert html.count("holds studies of 2 different patients") == 2  # one row per case


def test_overview_numbers_are_white_with_a_black_outline():
    """On mid-grey liver, each lesion's number is drawn in white with a black outline (legible on any grey and
    beside any type's colour), large enough to read."""
    import io

    from matplotlib.image import imread

    from nnunet_liver.inference.report import overview_png

    image = np.full((3, 120, 120), 50.0)  # 50 HU: mid grey in the -150..250 HU window
    instances = np.zeros(image.shape, np.uint16)
    for k, (y, x) in enumerate(((20, 20), (60, 70), (90, 30)), start=1):
        instances[1, y:y + 8, x:x + 8] = k
    rgb = imread(io.BytesIO(overview_png(image, instances, None, (5.0, 1.0, 1.0), {1: "HCC", 2: "Meta", 3: "Cyst"})))
    rgb = rgb[..., :3]
    white = (rgb > 0.95).all(axis=2)
    black = (rgb < 0.05).all(axis=2)
    assert white.sum() > 3 * 40 and black.sum() > white.sum()  # three numbers, each ringed in black
    from scipy import ndimage

    assert ndimage.label(white)[1] >= 3


@pytest.mark.skipif(shutil.which("chromium") is None, reason="chromium not installed")
def test_report_renders(run, tmp_path):
    shot = tmp_path / "shot.png"
    proc = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                           "--window-size=1100,1600", (run["out"] / "report.html").as_uri()],
                          capture_output=True, text=True, timeout=300)
    assert shot.is_file(), proc.stderr[-2000:]
