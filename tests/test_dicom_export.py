"""DICOM SEG and SR for 0, 1, 2 and many lesions, read back by highdicom and by independent readers (dcmqi's
segimage2itkimage and tid1500reader, dcmtk's dsrdump, dicom3tools' dciodvfy); headers a real export may lack; a
series without a frame of reference; the device observer UID."""
import copy
import os
import shutil
import types
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

hd = pytest.importorskip("highdicom")
pydicom = pytest.importorskip("pydicom")

from nnunet_liver.dicom.export import LESION_CODES, LOCAL_SCHEME, device_uid, write_dicom_outputs  # noqa: E402
from nnunet_liver.dicom.index import index_studies  # noqa: E402
from nnunet_liver.dicom.series import read_series, series_geometry  # noqa: E402
from nnunet_liver.testing.dicom_writer import new_uid, write_ct_series  # noqa: E402
from nnunet_liver.testing import dicom_check  # noqa: E402

REALDATA = os.environ.get("NNUNET_LIVER_REALDATA",
                          os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "realdata"))
HCC048 = os.path.join(REALDATA, "hcc048_pv_dicom")
TYPES = ("HCC", "ICC", "Meta", "Hem", "Other", "Cyst")
MODEL = {"whole": {"dir": "/models/whole", "folds": ["0"], "checkpoint": "checkpoint_final.pth"}, "patch": None,
         "nnunet_liver_version": "test"}


def geometry_of(folder):
    (study,), _ = index_studies(str(folder))
    (series,) = study.series.values()
    return series_geometry(series)


@pytest.fixture(scope="module")
def phantom_series(tmp_path_factory):
    """A 24-slice CT series (5 mm, 64 x 64 at 3 mm) of one study: the source the SEG and SR reference."""
    folder = tmp_path_factory.mktemp("src") / "study" / "s4"
    rng = np.random.default_rng(0)
    volume = rng.normal(60, 10, (24, 64, 64))
    write_ct_series(str(folder), volume, (5.0, 3.0, 3.0), (-96.0, -96.0, 0.0), new_uid(), 4, "Abdomen",
                    patient={"name": "Doe^Jane", "id": "P7"})
    g = geometry_of(folder.parent)
    return g, read_series(g)


def contiguous_slices(folder, start, stop):
    """File names of the slices ``start:stop`` of a one-series folder in position order (not file-name order)."""
    names = [n for n in os.listdir(folder) if n.endswith(".dcm")]
    z = [float(pydicom.dcmread(os.path.join(folder, n), stop_before_pixels=True).ImagePositionPatient[2])
         for n in names]
    return [names[i] for i in np.argsort(z)[start:stop]]


def paint_lesions(shape, n, rng):
    """``n`` lesions (ids 1..n): boxes of 1 to 4 slices and 2 to 5 pixels a side at distinct places, in one map."""
    lesions = np.zeros(shape, np.uint16)
    free = np.ones(shape, bool)
    for lesion_id in range(1, n + 1):
        while True:
            dz, dy, dx = rng.integers(1, 5), rng.integers(2, 6), rng.integers(2, 6)
            z, y, x = rng.integers(0, shape[0] - dz), rng.integers(0, shape[1] - dy), rng.integers(0, shape[2] - dx)
            box = (slice(z, z + dz), slice(max(y - 1, 0), y + dy + 1), slice(max(x - 1, 0), x + dx + 1))
            if free[box].all():  # a margin of one pixel keeps lesions apart
                free[box] = False
                lesions[z:z + dz, y:y + dy, x:x + dx] = lesion_id
                break
    return lesions


def case_result(instance_map, headers, reference, n, model=MODEL, case_id="c"):
    """What the runner hands to write_dicom_outputs: the record, the lesion map and the loaded case's DICOM parts."""
    lesions = [{"id": k, "type": TYPES[(k - 1) % len(TYPES)], "volume_cm3": float((instance_map == k).sum()) * 0.045,
                "diameter_mm": 3.0 + k, "score": 0.5 + 0.01 * k, "sensitivity": "same" if k % 2 else "diff",
                "features": {"APHE": 10.0 * k, "NPW": None, "EC": float("nan")}} for k in range(1, n + 1)]
    record = {"lesions": lesions, "model": model,
              "patient": {"class": lesions[0]["type"] if lesions else "normal", "malignant": bool(lesions)}}
    case = types.SimpleNamespace(case_id=case_id, reference_headers=headers, reference=reference)
    return types.SimpleNamespace(record=record, instance_map=instance_map, case=case)


def check_outputs(out, result, tmp_path):
    """highdicom and the independent readers agree with the lesion map and the record."""
    lesions = result.record["lesions"]
    names = write_dicom_outputs(result, str(out))
    assert "not_written" not in names and names["sr"] == "c_sr.dcm"
    assert names["seg"] == ("c_seg.dcm" if lesions else None) and os.path.isfile(out / "c_sr.dcm")
    assert os.path.isfile(out / "c_seg.dcm") == bool(lesions)
    sr = hd.sr.srread(str(out / "c_sr.dcm"))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(lesions)
    assert [i.CodingSchemeDesignator for i in sr.CodingSchemeIdentificationSequence] == [LOCAL_SCHEME]
    counts = {k: int((result.instance_map == k).sum()) for k in range(1, len(lesions) + 1)}
    tracking = {}
    if lesions:
        seg = hd.seg.segread(str(out / "c_seg.dcm"))
        assert list(seg.get_segment_numbers()) == list(counts)
        uids = [h.SOPInstanceUID for h in result.case.reference_headers]
        pixels = seg.get_pixels_by_source_instance(uids, combine_segments=True, assert_missing_frames_are_empty=True)
        np.testing.assert_array_equal(pixels, result.instance_map)
        for les in lesions:
            d = seg.get_segment_description(les["id"])
            assert d.segmented_property_type.value == LESION_CODES[les["type"]][0]
            tracking[les["id"]] = d.tracking_uid
        for group, les in zip(groups, lesions):
            assert group.tracking_uid == tracking[les["id"]]  # one lesion, one UID in SEG and SR
            ref = group.referenced_segment
            assert ref.referenced_sop_instance_uid == seg.SOPInstanceUID and ref.referenced_segment_numbers == \
                [les["id"]]
            z = np.flatnonzero((result.instance_map == les["id"]).any(axis=(1, 2)))
            assert [s.referenced_sop_instance_uid for s in ref.source_images_for_segmentation] == [uids[k] for k in z]
    # dcmqi: the label image on the lesion grid, segment by segment, codes and tracking UIDs
    read = dicom_check.dcmqi_label_map(str(out / "c_seg.dcm"), result.case.reference, str(tmp_path / "dcmqi")) \
        if lesions else None
    if read is not None:
        labels, segments = read
        np.testing.assert_array_equal(labels, result.instance_map)
        assert {s["labelID"]: int((labels == s["labelID"]).sum()) for s in segments} == counts
        for s in segments:
            les = lesions[s["labelID"] - 1]
            assert s["SegmentLabel"] == f"lesion {les['id']} {les['type']}"
            assert s["SegmentedPropertyTypeCodeSequence"]["CodeValue"] == LESION_CODES[les["type"]][0]
            assert s["TrackingUniqueIdentifier"] == tracking[les["id"]]
    report = dicom_check.dcmqi_measurements(str(out / "c_sr.dcm"), str(tmp_path / "dcmqi_sr"))
    if report is not None:
        *per_lesion, patient = report["Measurements"]
        assert len(per_lesion) == len(lesions) and patient["TrackingIdentifier"] == "patient result"
        for m, les in zip(per_lesion, lesions):
            assert m["ReferencedSegment"] == les["id"] and m["TrackingUniqueIdentifier"] == tracking[les["id"]]
            assert m["Finding"]["CodeValue"] == LESION_CODES[les["type"]][0]
            volume = next(i for i in m["measurementItems"] if i["quantity"]["CodeValue"] == "118565006")
            assert float(volume["value"]) == pytest.approx(les["volume_cm3"])
        count = next(i for i in patient["measurementItems"] if i["quantity"]["CodeMeaning"].startswith("Number of"))
        assert float(count["value"]) == len(lesions)
    dump = dicom_check.dsrdump(str(out / "c_sr.dcm"))
    if dump is not None:
        assert dump.count("Referenced Segment") == len(lesions) and "Imaging Measurement Report" in dump
    for name in ("c_seg.dcm", "c_sr.dcm") if lesions else ("c_sr.dcm",):
        verdict = dicom_check.dciodvfy(str(out / name))
        if verdict is not None:
            assert not verdict["errors"], (name, verdict["errors"][:5])
    return names


@pytest.mark.parametrize("n", [0, 1, 2, 37])
def test_seg_and_sr_for_any_number_of_lesions(phantom_series, tmp_path, n):
    """One lesion is the commonest finding (a one-segment SEG keeps its segment identification in the shared
    functional groups); none, two and many too; every type's code."""
    g, reference = phantom_series
    instance_map = paint_lesions(reference.GetSize()[::-1], n, np.random.default_rng(n))
    (tmp_path / "out").mkdir()
    names = check_outputs(tmp_path / "out", case_result(instance_map, g.headers, reference, n), tmp_path)
    # the painted count, read back from the files themselves: no SEG without a lesion, one SR group per lesion
    assert names["seg"] == ("c_seg.dcm" if n else None)
    sr = hd.sr.srread(str(tmp_path / "out" / "c_sr.dcm"))
    assert len(sr.content.get_volumetric_roi_measurement_groups()) == n
    if n:
        assert len(hd.seg.segread(str(tmp_path / "out" / "c_seg.dcm")).get_segment_numbers()) == n


def test_independent_readers_are_installed():
    """dcmqi's readers come with the test extra and must be there; dcmtk and dicom3tools come from Debian (.ci/run
    installs them where it can), so their absence skips, naming them."""
    assert [t for t in ("segimage2itkimage", "tid1500reader") if dicom_check.tool(t) is None] == []
    missing = [t for t in ("dsrdump", "dciodvfy") if dicom_check.tool(t) is None]
    if missing:
        pytest.skip(f"not installed: {', '.join(missing)} (apt-get install dcmtk dicom3tools)")


@pytest.mark.skipif(not os.path.isdir(HCC048), reason="realdata hcc048_pv_dicom not available")
def test_real_series_one_lesion_and_headers_an_anonymiser_left(tmp_path, capsys):
    """HCC_048's portal-venous series (its PatientName 'Patient_01' has one component, which highdicom warns about
    quoting it) with PatientSex, PatientBirthDate, StudyID and AccessionNumber removed: one lesion, SEG and SR."""
    src = tmp_path / "hcc048"
    src.mkdir()
    for name in contiguous_slices(HCC048, 30, 50):
        ds = pydicom.dcmread(os.path.join(HCC048, name))
        for keyword in ("PatientSex", "PatientBirthDate", "StudyID", "AccessionNumber"):
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(src / name)
    g = geometry_of(tmp_path)
    reference = read_series(g)
    instance_map = np.zeros(reference.GetSize()[::-1], np.uint16)
    instance_map[8:12, 200:230, 180:215] = 1
    (tmp_path / "out").mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no warning at all, least of all one quoting the patient's name
        check_outputs(tmp_path / "out", case_result(instance_map, g.headers, reference, 1), tmp_path)
    captured = capsys.readouterr()
    assert "Patient_01" not in captured.err + captured.out
    for name in ("c_seg.dcm", "c_sr.dcm"):
        ds = pydicom.dcmread(tmp_path / "out" / name)
        assert ds.PatientSex == "" and ds.PatientBirthDate == "" and ds.StudyID == "" and ds.AccessionNumber == ""
        assert ds.StudyInstanceUID == g.headers[0].StudyInstanceUID


HCC009_V = os.path.join(REALDATA, "hcc009_3phase_dicom", "HCC_009", "02-15-1998-NA-PP CAPLIVER PROTO.-10975",
                        "103.000000-LIVER 3 PHASE CAP-83135")


@pytest.mark.skipif(not os.path.isdir(HCC009_V), reason="realdata hcc009_3phase_dicom not available")
def test_real_series_whose_export_carries_an_invalid_code(tmp_path):
    """HCC_009's portal-venous series as TCIA exports it: its ProcedureCodeSequence item has no coding scheme
    designator (dciodvfy's error on the source); the SEG and SR do not inherit it."""
    src = tmp_path / "hcc009" / "v"
    src.mkdir(parents=True)
    for name in contiguous_slices(HCC009_V, 20, 36):
        shutil.copy(os.path.join(HCC009_V, name), src / name)
    g = geometry_of(tmp_path / "hcc009")
    assert "CodingSchemeDesignator" not in g.headers[0].ProcedureCodeSequence[0]
    reference = read_series(g)
    instance_map = np.zeros(reference.GetSize()[::-1], np.uint16)
    instance_map[3:9, 240:270, 300:330] = 1
    instance_map[10:12, 300:310, 200:215] = 2
    (tmp_path / "out").mkdir()
    check_outputs(tmp_path / "out", case_result(instance_map, g.headers, reference, 2), tmp_path)
    for name in ("c_seg.dcm", "c_sr.dcm"):
        assert "ProcedureCodeSequence" not in pydicom.dcmread(tmp_path / "out" / name, stop_before_pixels=True)


def test_no_frame_of_reference_writes_nothing_and_says_why(phantom_series, tmp_path):
    """A series without FrameOfReferenceUID (3D-IRCADb-style): no SEG/SR, the reason returned, no stale files."""
    g, reference = phantom_series
    headers = [copy.deepcopy(h) for h in g.headers]
    for h in headers:
        del h.FrameOfReferenceUID
    out = tmp_path / "out"
    out.mkdir()
    for stale in ("c_seg.dcm", "c_sr.dcm"):  # an earlier run's outputs must not pass for this run's
        (out / stale).write_bytes(b"old")
    instance_map = paint_lesions(reference.GetSize()[::-1], 2, np.random.default_rng(2))
    names = write_dicom_outputs(case_result(instance_map, headers, reference, 2), str(out))
    assert names["seg"] is None and names["sr"] is None
    assert "no FrameOfReferenceUID" in names["not_written"] and g.headers[0].SeriesInstanceUID in names["not_written"]
    assert os.listdir(out) == []


def test_a_writer_failure_is_a_reason_not_an_exception(phantom_series, tmp_path):
    """Whatever highdicom refuses (here a lesion map that does not fit the series) becomes the reason."""
    g, reference = phantom_series
    names = write_dicom_outputs(case_result(np.ones((3, 4, 5), np.uint16), g.headers, reference, 1), str(tmp_path))
    assert names["seg"] is None and names["not_written"].startswith("DICOM SEG/SR not written (ValueError: lesion map")
    assert os.listdir(tmp_path) == []


def test_device_observer_uid_is_stable_per_model(phantom_series, tmp_path):
    """One installed model is one device in every SR it writes; another model is another device."""
    g, reference = phantom_series
    instance_map = np.zeros(reference.GetSize()[::-1], np.uint16)
    uids = []
    for k, model in enumerate((MODEL, dict(MODEL), dict(MODEL, whole=dict(MODEL["whole"], folds=["0", "1"])))):
        out = tmp_path / str(k)
        out.mkdir()
        write_dicom_outputs(case_result(instance_map, g.headers, reference, 0, model=model), str(out))
        sr = hd.sr.srread(str(out / "c_sr.dcm"))
        observer = sr.content.get_observer_contexts()[0]
        uids.append(observer.observer_identifying_attributes.uid)
        assert sr.SOPInstanceUID not in uids
    assert uids[0] == uids[1] == device_uid(MODEL) and uids[2] != uids[0]
    assert pydicom.uid.UID(uids[0]).is_valid
