"""DICOM SEG and RTSTRUCT annotations -> labelled nnU-Net cases (nnunet-liver-convert dicom): phantom studies with
annotations written by highdicom (SEG) and pydicom (RTSTRUCT) whose voxels are known, dcmqi's real liver SEG in five
encodings, and every bad input as one error line naming the file with nothing written."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from nnunet_liver import labels as L  # noqa: E402
from nnunet_liver.dataset_conversion.cli import main  # noqa: E402
from nnunet_liver.dicom.annotations import (LabelMapping, find_annotations, label_map, parse_label_map,  # noqa: E402
                                            read_annotation, structures)
from nnunet_liver.dicom.index import index_studies  # noqa: E402
from nnunet_liver.testing.dicom_annotations import (box_contour, mask_contours, sorted_headers,  # noqa: E402
                                                    write_rtstruct, write_seg)
from nnunet_liver.testing.dicom_study import SERIES, phantom, write_study  # noqa: E402
from nnunet_liver.utils.io import InputError  # noqa: E402

REALDATA = os.environ.get("NNUNET_LIVER_REALDATA",
                          os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "realdata"))
DCMQI = os.path.join(REALDATA, "dcmqi_liver_seg")


@pytest.fixture(scope="module")
def pool(tmp_path_factory):
    """A phantom study (NC, A, V, D, no extras) written once; tests hard-link its series into their own studies."""
    root = tmp_path_factory.mktemp("pool")
    case = phantom(0, shape=(16, 64, 64))
    write_study(str(root / "study"), case, extras=False)
    return root / "study", case


def _study(pool, folder):
    src, case = pool
    for series in os.listdir(src):
        os.makedirs(folder / series)
        for name in os.listdir(src / series):
            os.link(src / series / name, folder / series / name)
    return case


def _headers(folder, phase):
    return sorted_headers(str(folder / f"series{SERIES[phase][0]}"))


def _convert(tmp_path, *extra):
    return main(["dicom", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "raw"), "-d", "530", *extra])


def _label(tmp_path, case_id):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "raw" / "Dataset530_DicomStudies" / "labelsTr" /
                                                     f"{case_id}.nii.gz")))


def test_seg_on_the_arterial_series_becomes_the_reference_and_the_painted_labels(tmp_path, pool, capsys):
    study = tmp_path / "in" / "p1"
    case = _study(pool, study)
    write_study(str(tmp_path / "in" / "p2"), phantom(1, shape=(12, 64, 64)), extras=False)  # unlabelled: imagesTs
    truth = case.label
    liver = np.isin(truth, (7, 8, 4))  # the liver mask holds the lesion and vessels, as most annotators draw it
    tumour = truth == 4
    vein = truth == 9
    write_seg(str(study / "seg" / "seg.dcm"), _headers(study, "A"),
              [("Liver", liver, "liver"), ("Mass", tumour, "mass"), ("Portal vein", vein, "portal vein"),
               ("Abdominal aorta", truth == 8, "aorta")])
    assert _convert(tmp_path, "--tumor-type", "Meta") == 0
    err = capsys.readouterr().err
    assert "left out 'Abdominal aorta'" in err and "annotated phase: A 1" in err
    want = np.where(tumour, L.META, np.where(vein, L.PORTAL_SPLENIC_VEIN, np.where(liver, L.LIVER, 0)))
    got = _label(tmp_path, "p1")
    np.testing.assert_array_equal(got, want)
    ds = tmp_path / "raw" / "Dataset530_DicomStudies"
    assert sorted(os.listdir(ds / "imagesTr")) == [f"p1_{i:04d}.nii.gz" for i in range(4)]
    assert sorted(os.listdir(ds / "imagesTs")) == [f"p2_{i:04d}.nii.gz" for i in range(4)]
    record = json.loads((ds / "conversion.json").read_text())
    p1 = record["cases"]["p1"]
    assert p1["reference_phase"] == "A" and p1["split"] == "train" and p1["left_out"] == ["Abdominal aorta"]
    assert p1["labels"] == {"Meta": int(tumour.sum()), "liver": int((liver & ~tumour & ~vein).sum()),
                            "portal_splenic_vein": int(vein.sum())}
    assert p1["overlaps"]["Meta over liver"] == int((tumour & liver).sum())
    assert record["cases"]["p2"]["split"] == "test"
    summary = record["summaries"][-1]
    assert summary["labelled"] == 1 and summary["annotated_phase"] == {"A": 1}
    assert summary["phases_found"] == {"NC": 2, "A": 2, "V": 2, "D": 2}
    # the A channel is the arterial series itself, the label on its grid
    a = sitk.ReadImage(str(ds / "imagesTr" / "p1_0001.nii.gz"))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(a), np.rint(case.images["A"]))
    dataset = json.loads((ds / "dataset.json").read_text())
    assert dataset["numTraining"] == 1


def test_seg_frames_placed_by_position_not_order_and_fractional(tmp_path, pool):
    study = tmp_path / "s"
    case = _study(pool, study)
    headers = _headers(study, "V")
    truth = case.label == 7
    fraction = np.where(truth, 0.8, 0.0).astype(np.float32)
    fraction[truth & (np.arange(truth.shape[2])[None, None, :] < 20)] = 0.3  # below one half: out
    path = str(study / "seg.dcm")
    write_seg(path, headers, [("Liver", fraction, "liver")], fractional=True)
    ds = pydicom.dcmread(path)
    n, rows, cols = int(ds.NumberOfFrames), int(ds.Rows), int(ds.Columns)
    assert n == int(truth.any(axis=(1, 2)).sum()) < len(headers)  # only the slices with the organ: the rest is 0
    frames = np.frombuffer(ds.PixelData, np.uint8).reshape(n, rows, cols)
    order = np.random.default_rng(3).permutation(n)  # frames shuffled: positions travel with them
    ds.PixelData = frames[order].tobytes()
    ds.PerFrameFunctionalGroupsSequence = pydicom.Sequence([ds.PerFrameFunctionalGroupsSequence[i] for i in order])
    ds.save_as(path)
    annotation = [a for a in find_annotations(index_studies(str(study))[0][0])]
    label, report = label_map(structures(annotation[0]), LabelMapping(), None, headers, "V")
    want = np.where(truth & (np.arange(truth.shape[2])[None, None, :] >= 20), L.LIVER, 0)
    np.testing.assert_array_equal(label, want)


@pytest.mark.parametrize("syntax,fractional", [("1.2.840.10008.1.2.5", True), ("1.2.840.10008.1.2.4.90", False),
                                               ("1.2.840.10008.1.2.4.90", True), ("1.2.840.10008.1.2.4.80", True),
                                               ("1.2.840.10008.1.2.1.99", False)])
def test_seg_compressed_transfer_syntaxes(tmp_path, pool, syntax, fractional):
    """RLE, JPEG 2000 and JPEG-LS (highdicom writes binary 1-bit frames in JPEG 2000 only), the deflated data set."""
    study = tmp_path / "s"
    case = _study(pool, study)
    headers = _headers(study, "V")
    truth = case.label == 7
    path = str(study / "seg.dcm")
    write_seg(path, headers, [("liver", truth.astype(np.float32) if fractional else truth, None)],
              fractional=fractional, transfer_syntax=syntax)
    assert str(pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID) == syntax
    label, _ = label_map(structures(find_annotations(index_studies(str(study))[0][0])[0]), LabelMapping(), None,
                         headers, "V")
    np.testing.assert_array_equal(label, np.where(truth, L.LIVER, 0))


def test_rtstruct_even_odd_holes_exact_and_contours_within_one_voxel(tmp_path, pool, capsys):
    study = tmp_path / "in" / "p1"
    case = _study(pool, study)
    headers = _headers(study, "V")
    shape = case.label.shape
    ring = np.zeros(shape, bool)  # a box with a hole with an island in it, on slices 5..8
    contours = []
    for k in range(5, 9):
        ring[k, 10:40, 12:44] = True
        ring[k, 18:32, 20:36] = False
        ring[k, 23:27, 26:30] = True
        contours += [(k, box_contour(10, 39, 12, 43)), (k, box_contour(18, 31, 20, 35)),
                     (k, box_contour(23, 26, 26, 29))]
    liver = case.label == 7
    write_rtstruct(str(study / "rt" / "rs.dcm"), headers, {"Tumor": contours, "Liver": mask_contours(liver),
                                                             "Couch": [(0, box_contour(1, 3, 1, 3))]})
    assert _convert(tmp_path, "--label-map", "Tumor=Cyst", "couch=ignore") == 0
    got = _label(tmp_path, "p1")
    np.testing.assert_array_equal(got == L.CYST, ring)  # the lesion wins over the liver, holes by even-odd
    from scipy.ndimage import binary_dilation

    got_liver = np.isin(got, (L.LIVER, L.CYST)) & ~(ring & ~liver)
    grow = np.zeros((3, 3, 3), bool)
    grow[1] = True  # in-plane neighbours: contours are per slice
    assert not (got_liver & ~binary_dilation(liver, grow)).any()
    assert not (liver & ~binary_dilation(got_liver, grow)).any()
    assert (got_liver == liver).mean() > 0.99
    record = json.loads((tmp_path / "raw" / "Dataset530_DicomStudies" / "conversion.json").read_text())
    assert record["cases"]["p1"]["reference_phase"] == "V" and record["cases"]["p1"]["left_out"] == ["Couch"]


def test_label_mapping_rules():
    mapping = LabelMapping(parse_label_map(["GTV primary=tumor", "SCT:15825003=ignore",
                                            "Hepatic_Veins=hepatic_vessels"]))

    class S:
        def __init__(self, name, codes=()):
            self.name, self.codes = name, list(codes)

    assert mapping.target(S("Liver"))[0] == "liver"
    assert mapping.target(S("Segment_1", [("SCT", "10200004", "Liver")]))[0] == "liver"
    assert mapping.target(S("Segment_2", [("SRT", "T-62000", "Liver")]))[0] == "liver"
    assert mapping.target(S("PORTAL-VEIN"))[0] == "portal_splenic_vein"
    assert mapping.target(S("gtv  PRIMARY"))[0] == "tumor"
    assert mapping.target(S("hepatic veins"))[0] == "hepatic_vessels"
    assert mapping.target(S("Abdominal aorta", [("SCT", "15825003", "Aorta")])) == (None, "--label-map SCT:15825003")
    assert mapping.target(S("Kidney")) == (None, "unknown structure")
    assert mapping.target(S("Mass"))[0] == "tumor" and mapping.target(S("hcc"))[0] == "HCC"
    with pytest.raises(InputError, match="unknown class 'kidney'"):
        parse_label_map(["Kidney=kidney"])
    with pytest.raises(InputError, match="use NAME=CLASS"):
        parse_label_map(["Kidney"])


def _shift_frames(path, mm):
    ds = pydicom.dcmread(path)
    for item in ds.PerFrameFunctionalGroupsSequence:
        p = item.PlanePositionSequence[0]
        p.ImagePositionPatient = [p.ImagePositionPatient[0], p.ImagePositionPatient[1],
                                  float(p.ImagePositionPatient[2]) + mm]
    ds.save_as(path)


def _other_frame(path):
    ds = pydicom.dcmread(path)
    ds.FrameOfReferenceUID = pydicom.uid.generate_uid()
    ds.save_as(path)


def _other_series(path):
    ds = pydicom.dcmread(path)
    ds.ReferencedSeriesSequence[0].SeriesInstanceUID = pydicom.uid.generate_uid()
    for item in ds.ReferencedSeriesSequence[0].ReferencedInstanceSequence:
        item.ReferencedSOPInstanceUID = pydicom.uid.generate_uid()
    for item in ds.PerFrameFunctionalGroupsSequence:
        if "DerivationImageSequence" in item:
            del item.DerivationImageSequence
    if "DerivationImageSequence" in ds.SharedFunctionalGroupsSequence[0]:
        del ds.SharedFunctionalGroupsSequence[0].DerivationImageSequence
    ds.save_as(path)


BAD = [("seg-series", "seg", _other_series, "which is not in the study"),
       ("seg-between-slices", "seg", lambda p: _shift_frames(p, 2.5), "matches no slice"),
       ("seg-empty", "seg-empty", None, "segment 2 'Liver' is empty"),
       ("seg-frame-of-reference", "seg", _other_frame, "frame of reference"),
       ("rt-no-contour", "rt-empty", None, "ROI 1 'Liver' has no closed contour"),
       ("rt-between-slices", "rt-shift", None, "between the slices"),
       ("rt-frame-of-reference", "rt-frame", None, "frame of reference"),
       ("tumour-untyped", "seg-mass", None, "is a tumour without a type"),
       ("label-map", "seg", None, "--label-map Liver=kidney: unknown class 'kidney'")]


@pytest.mark.parametrize("kind,what,change,words", BAD, ids=[b[0] for b in BAD])
def test_bad_annotations_one_line_naming_the_file_nothing_written(tmp_path, pool, capsys, kind, what, change, words):
    study = tmp_path / "in" / "p1"
    case = _study(pool, study)
    headers = _headers(study, "V")
    liver = case.label == 7
    path = str(study / "ann" / "ann.dcm")
    if what == "seg":
        write_seg(path, headers, [("Liver", liver, "liver")])
    elif what == "seg-empty":
        write_seg(path, headers, [("Spleen", case.label == 11, "spleen"), ("Liver", np.zeros_like(liver), "liver")],
                  omit_empty_frames=False)
    elif what == "seg-mass":
        write_seg(path, headers, [("Mass", case.label == 4, "mass")])
    elif what == "rt-empty":
        write_rtstruct(path, headers, {"Liver": []})
    elif what == "rt-shift":
        write_rtstruct(path, headers, {"Liver": mask_contours(liver)}, slice_offsets_mm={"Liver": 2.5})
    elif what == "rt-frame":
        write_rtstruct(path, headers, {"Liver": mask_contours(liver)}, frame_of_reference=pydicom.uid.generate_uid())
    if change is not None:
        change(path)
    before = sorted(os.walk(tmp_path / "in"))
    extra = ["--label-map", "Liver=kidney"] if kind == "label-map" else []
    assert _convert(tmp_path, *extra) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    error = [l for l in lines if "error" in l]
    assert len(error) == 1 and words in error[0], lines
    if kind != "label-map":
        assert "ann.dcm" in error[0] or "ann/ann.dcm" in error[0], error[0]
    assert not (tmp_path / "raw").exists() or not os.listdir(tmp_path / "raw")  # no temporary folder left either
    assert sorted(os.walk(tmp_path / "in")) == before


def _dcmqi_headers():
    if not os.path.isdir(DCMQI):
        pytest.skip("realdata dcmqi_liver_seg not available")
    return sorted_headers(os.path.join(DCMQI, "ct"))


ENCODINGS = ["liver_seg.dcm", "encoded/liver_deflate.dcm", "encoded/liver_rle.dcm", "encoded/liver_j2k.dcm",
             "encoded/liver_nonbyte_aligned.dcm"]


def _read_real(name, headers):
    annotation = read_annotation(os.path.join(DCMQI, name))
    return label_map(structures(annotation), LabelMapping(), None, headers, "ct")


@pytest.fixture(scope="module")
def dcmqi_reference():
    """The uncompressed SEG's frames as pydicom decodes them, put on the slices by their positions (independent of
    our reader's frame placement)."""
    headers = _dcmqi_headers()
    ds = pydicom.dcmread(os.path.join(DCMQI, "liver_seg.dcm"))
    frames = ds.pixel_array
    z = [float(h.ImagePositionPatient[2]) for h in headers]
    out = np.zeros((len(headers), int(headers[0].Rows), int(headers[0].Columns)), np.uint8)
    for i, item in enumerate(ds.PerFrameFunctionalGroupsSequence):
        k = int(np.argmin(np.abs(np.asarray(z) - float(item.PlanePositionSequence[0].ImagePositionPatient[2]))))
        out[k] = np.where(frames[i] > 0, L.LIVER, 0)
    return headers, out


@pytest.mark.parametrize("name", ENCODINGS)
def test_real_dcmqi_seg_every_encoding_the_same_liver(dcmqi_reference, name):
    headers, want = dcmqi_reference
    label, report = _read_real(name, headers)
    assert report["structures"][0]["name"] == "Liver" and report["structures"][0]["class"] == "liver"
    assert int((want > 0).sum()) == 107098
    np.testing.assert_array_equal(label, want)


def test_real_dcmqi_seg_agrees_with_dcmqi(tmp_path, dcmqi_reference):
    from nnunet_liver.testing.dicom_check import dcmqi_label_map

    headers, want = dcmqi_reference
    from nnunet_liver.dicom.index import SeriesHeaders
    from nnunet_liver.dicom.series import read_series, series_geometry

    series = SeriesHeaders(str(headers[0].SeriesInstanceUID), [os.path.join(DCMQI, "ct", n) for n in
                                                              sorted(os.listdir(os.path.join(DCMQI, "ct")))])
    series.headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in series.files]
    reference = read_series(series_geometry(series))
    found = dcmqi_label_map(os.path.join(DCMQI, "liver_seg.dcm"), reference, str(tmp_path / "dcmqi"))
    if found is None:
        pytest.skip("dcmqi's segimage2itkimage is not installed")
    np.testing.assert_array_equal(found[0] > 0, want > 0)


def test_tumour_type_per_case_from_csv(tmp_path, pool, capsys):
    study = tmp_path / "in" / "p1"
    case = _study(pool, study)
    tumour = case.label == 4
    write_seg(str(study / "seg.dcm"), _headers(study, "V"), [("Neoplasm", tumour, "neoplasm"),
                                                             ("Liver", case.label == 7, "liver")])
    table = tmp_path / "types.csv"
    table.write_text("case,tumor_type\np1,Cyst\nother,HCC\n", encoding="utf-8")
    assert _convert(tmp_path, "--tumor-types", str(table), "--tumor-type", "Meta") == 0  # the CSV's row first
    got = _label(tmp_path, "p1")
    np.testing.assert_array_equal(got, np.where(tumour, L.CYST, np.where(case.label == 7, L.LIVER, 0)))
    table.write_text("p1,Kidney\n", encoding="utf-8")
    assert _convert(tmp_path, "--tumor-types", str(table), "--overwrite") == 2
    assert "types.csv: row 1" in capsys.readouterr().err


def test_the_annotated_reconstruction_is_used_even_where_the_rule_picks_another(tmp_path, capsys):
    """A SEG drawn on the 10 mm reconstruction of V: that series is the reference (the rule would take the 5 mm one)."""
    study = tmp_path / "in" / "p1"
    case = phantom(0)  # 24 x 96 x 96, as the other converter tests with a second reconstruction
    write_study(str(study), case, extras=True)  # V also as "Recon 10mm" (every second slice), a scout, a dose report
    thick = study / f"series{SERIES['V'][0] + 100}"
    headers = sorted_headers(str(thick))
    liver = case.label[::2] == 7
    write_seg(str(study / "seg.dcm"), headers, [("Liver", liver, "liver")])
    assert _convert(tmp_path) == 0
    got = _label(tmp_path, "p1")
    np.testing.assert_array_equal(got, np.where(liver, L.LIVER, 0))
    record = json.loads((tmp_path / "raw" / "Dataset530_DicomStudies" / "dicom" / "p1.json").read_text())
    assert record["reference_series_uid"] == str(headers[0].SeriesInstanceUID) and record["reference_phase"] == "V"
    v = sitk.ReadImage(str(tmp_path / "raw" / "Dataset530_DicomStudies" / "imagesTr" / "p1_0002.nii.gz"))
    assert v.GetSize()[2] == len(headers) and v.GetSpacing()[2] == pytest.approx(2 * case.spacing[0])
