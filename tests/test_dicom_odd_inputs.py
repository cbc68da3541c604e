"""Real exports a radiologist would read, built as odd variants of the real studies (and phantoms) in tmp folders:
files without preamble, junk beside the slices, a coronal reference image inside the axial series, a stray image, a
missing frame of reference, a truncated file, one exam split into several studies, two patients in one folder, the
modality LUT against GDCM, and a converted case's constant missing channel. The originals are never modified."""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")

from nnunet_liver.dicom.index import has_dicom, index_studies  # noqa: E402
from nnunet_liver.dicom.series import axial_stack, candidate_series, read_series, series_geometry  # noqa: E402
from nnunet_liver.dicom.study import load_dicom_case  # noqa: E402
from nnunet_liver.testing.dicom_writer import new_uid, write_ct_series  # noqa: E402
from nnunet_liver.inference.cases import CaseFiles, load_case  # noqa: E402
from nnunet_liver.utils.io import InputError  # noqa: E402

REALDATA = os.environ.get("NNUNET_LIVER_REALDATA",
                          os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "realdata"))
HCC048 = os.path.join(REALDATA, "hcc048_pv_dicom")
HCC009 = os.path.join(REALDATA, "hcc009_3phase_dicom")
DCMQI_CT = os.path.join(REALDATA, "dcmqi_liver_seg", "ct")
needs = {name: pytest.mark.skipif(not os.path.isdir(path), reason=f"realdata {name} not available")
         for name, path in (("hcc048", HCC048), ("hcc009", HCC009), ("dcmqi", DCMQI_CT))}


def in_position_order(folder):
    """The DICOM files of a one-series folder, sorted along z (file names say nothing)."""
    files = [os.path.join(folder, n) for n in os.listdir(folder) if n.endswith(".dcm")]
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in files]
    return [files[i] for i in np.argsort(z)]


def copy_slices(src, dst, start=0, stop=None, edit=None):
    """Slices ``start:stop`` (position order) of the series in ``src`` into ``dst``; ``edit(ds)`` changes headers."""
    os.makedirs(dst, exist_ok=True)
    for f in in_position_order(src)[start:stop]:
        if edit is None:
            shutil.copy(f, dst)
        else:
            ds = pydicom.dcmread(f)
            edit(ds)
            ds.save_as(os.path.join(dst, os.path.basename(f)))
    return dst


def only_study(root):
    studies, _ = index_studies(str(root))
    assert len(studies) == 1, [s.case_id for s in studies]
    return studies[0]


def only_series(root):
    (series,) = only_study(root).series.values()
    return series


def bare(src, dst):
    """``src`` without preamble and file meta: the data set alone, implicit VR little endian (old exports)."""
    ds = pydicom.dcmread(src)
    del ds.file_meta
    ds.preamble = None
    pydicom.dcmwrite(dst, ds, implicit_vr=True, little_endian=True)


@needs["hcc048"]
def test_files_without_preamble_read_like_the_originals_and_junk_is_listed(tmp_path):
    orig = copy_slices(HCC048, str(tmp_path / "orig" / "s"), 30, 45)
    odd = tmp_path / "odd" / "s"
    odd.mkdir(parents=True)
    for k, f in enumerate(in_position_order(orig)):
        if k % 3 == 0:
            bare(f, odd / f"slice{k:02d}")  # no preamble, no file meta, no suffix
        elif k % 3 == 1:
            (odd / f"slice{k:02d}.dcm").write_bytes(Path(f).read_bytes()[132:])  # file meta kept, no preamble
        else:
            shutil.copy(f, odd / f"slice{k:02d}.dcm")
    (odd / "notes").write_text("patient anxious, breath-hold poor\n")
    (odd / "random.bin").write_bytes(np.random.default_rng(0).bytes(4000))
    (odd / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)
    (odd / "cut.dcm").write_bytes(Path(in_position_order(orig)[0]).read_bytes()[:900])  # header cut short
    (odd / "seg.nii.gz").write_bytes(b"not looked at")
    (odd / "key.png").write_bytes(b"not looked at")
    assert has_dicom(str(tmp_path / "odd"))
    study = only_study(tmp_path / "odd")
    (series,) = study.series.values()
    assert len(series.files) == 15
    reasons = {os.path.basename(p): r for p, r in study.unreadable_reasons.items()}
    assert reasons == {"notes": "not a DICOM file", "random.bin": "not a DICOM file",
                       "broken.dcm": "DICOM file without SOPInstanceUID, StudyInstanceUID, SeriesInstanceUID",
                       "cut.dcm": reasons["cut.dcm"]}
    assert reasons["cut.dcm"].startswith("DICOM header cannot be parsed (")
    ours = sitk.GetArrayFromImage(read_series(series_geometry(series)))
    want = sitk.GetArrayFromImage(read_series(series_geometry(only_series(tmp_path / "orig"))))
    np.testing.assert_array_equal(ours, want)


@needs["dcmqi"]
def test_a_third_scanner_without_preambles(tmp_path):
    """dcmqi's three CT slices (another scanner, another rescale) read alike with and without their preamble."""
    for k, f in enumerate(sorted(os.listdir(DCMQI_CT))):
        bare(os.path.join(DCMQI_CT, f), tmp_path / f"img{k}")
    ours = read_series(series_geometry(only_series(tmp_path)))
    want = read_series(series_geometry(only_series(DCMQI_CT)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(want))
    assert ours.GetOrigin() == want.GetOrigin() and ours.GetSpacing() == want.GetSpacing()


@pytest.mark.parametrize("which", ["hcc048", "dcmqi", "hcc009"])
def test_hu_agree_with_gdcm(which):
    """The modality LUT (pydicom's apply_modality_lut), padding and the -1024 floor against SimpleITK's GDCM reader
    on the real series, slice by slice."""
    folder = {"hcc048": HCC048, "dcmqi": DCMQI_CT,
              "hcc009": os.path.join(HCC009, "HCC_009", "02-15-1998-NA-PP CAPLIVER PROTO.-10975",
                                     "2.000000-PRE LIVER-36498")}[which]
    if not os.path.isdir(folder):
        pytest.skip(f"realdata {which} not available")
    studies, _ = index_studies(folder)
    g = series_geometry(next(s for s in studies[0].series.values() if os.path.dirname(s.files[0]) == folder))
    for k in range(0, len(g.files), 7):
        f = g.files[k]
        ds = pydicom.dcmread(f)
        ours = sitk.GetArrayFromImage(read_series(g, [k]))[0]
        gdcm = sitk.GetArrayFromImage(sitk.ReadImage(f, sitk.sitkFloat32))[0]
        pad = getattr(ds, "PixelPaddingValue", None)
        if pad is not None:  # GDCM keeps padding as a value; ours is air
            gdcm[ds.pixel_array == pad] = -1024
        np.testing.assert_array_equal(ours, np.maximum(gdcm, -1024), err_msg=f)


def coronal_copy(src, dst, position):
    """A coronal reference image of the series of ``src`` (GE's thick reformats carry one in the axial series)."""
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = new_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
    ds.ImagePositionPatient = list(position)
    ds.ImageType = ["DERIVED", "SECONDARY", "REFORMATTED", "AVERAGE"]
    ds.save_as(dst)


@needs["hcc048"]
def test_coronal_image_inside_the_axial_series_is_left_out(tmp_path):
    """The coronal image is the series' first file: the series is judged by all its images, the axial stack used."""
    src = copy_slices(HCC048, str(tmp_path / "in" / "ax5"), 25, 50)
    coronal_copy(in_position_order(src)[0], os.path.join(src, "00000000.dcm"), (-180.0, 20.0, -300.0))
    study = only_study(tmp_path / "in")
    (series,) = study.series.values()
    assert os.path.basename(series.files[0]) == "00000000.dcm"
    stack, reason, left = axial_stack(series)
    assert reason is None and len(stack.files) == 25
    assert [(os.path.basename(f), r) for f, r in left] == [("00000000.dcm", "not axial (a coronal reformat)")]
    study.phase_map = {str(series.number): "V"}
    loaded = load_dicom_case(study, ["V"], allow_missing=False)
    assert loaded.data.shape[1] == 25
    (entry,) = loaded.dicom["series_left_out"]
    assert entry["files"] == [os.path.join("ax5", "00000000.dcm")]
    assert entry["reasons"] == ["not axial (a coronal reformat)"]
    assert "1 image(s) left out, the axial stack of 25 used" in entry["reason"]
    assert loaded.dicom["folder"] == "ax5" and loaded.inputs["V"] == "ax5"  # relative to the searched folder
    # a series of coronal images only is left out as a whole, with the reason
    for f in list(os.listdir(src)):
        if f != "00000000.dcm":
            coronal_copy(os.path.join(src, f), os.path.join(src, f), (-180.0, 20.0 + len(f), -300.0))
    keep, left_out = candidate_series(only_study(tmp_path / "in").series.values())
    assert not keep and left_out[0]["reason"] == "not axial (a coronal reformat)"


def test_stray_image_left_out_but_a_gap_inside_refused(tmp_path):
    vol = np.random.default_rng(0).normal(50, 20, (12, 32, 32))
    folder = tmp_path / "s"
    write_ct_series(str(folder), vol, (2.5, 1.0, 1.0), (0.0, 0.0, 0.0), new_uid(), 3)
    top = pydicom.dcmread(in_position_order(folder)[-1])
    top.SOPInstanceUID = new_uid()
    top.ImagePositionPatient = [0.0, 0.0, float(top.ImagePositionPatient[2]) + 60.0]
    top.save_as(folder / "stray.dcm")
    stack, reason, left = axial_stack(only_series(tmp_path))
    assert len(stack.files) == 12 and [os.path.basename(f) for f, _ in left] == ["stray.dcm"]
    assert left[0][1].startswith("stray image")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_series(series_geometry(stack))), np.rint(vol))
    os.remove(in_position_order(folder)[5])  # a missing slice inside the stack: still refused
    stack, reason, left = axial_stack(only_series(tmp_path))
    with pytest.raises(InputError, match="non-uniform slice spacing"):
        series_geometry(stack)


@needs["hcc048"]
def test_truncated_real_file_one_line_without_plugin_advice(tmp_path):
    src = copy_slices(HCC048, str(tmp_path / "s"), 40, 50)
    victim = in_position_order(src)[4]
    data = Path(victim).read_bytes()
    Path(victim).write_bytes(data[:len(data) - 7000])
    with pytest.raises(InputError) as e:
        read_series(series_geometry(only_series(tmp_path)))
    message = str(e.value)
    assert "\n" not in message and message.startswith(victim + ": truncated or corrupt pixel data")
    assert "plugin" not in message and message.endswith("may be incorrect)")


@needs["hcc048"]
def test_no_frame_of_reference_loads(tmp_path):
    """3D-IRCADb-style: no FrameOfReferenceUID. The case loads (its SEG/SR are declined later, with the reason)."""
    src = copy_slices(HCC048, str(tmp_path / "in" / "v"), 30, 50, edit=lambda ds: delattr(ds, "FrameOfReferenceUID"))
    study = only_study(tmp_path / "in")
    study.phase_map = {study.series[next(iter(study.series))].uid: "V"}
    loaded = load_dicom_case(study, ["V"], allow_missing=False)
    assert loaded.data.shape[1] == 20 and loaded.phases_present == ["V"]
    assert not any("FrameOfReferenceUID" in h for h in loaded.reference_headers) and len(os.listdir(src)) == 20


def split_into_studies(dst, slices, frame=True, dates=False):
    """HCC_009's three series, each with its own StudyInstanceUID (as some archives export an exam); ``frame``:
    they keep their shared FrameOfReferenceUID (else each gets its own); ``dates``: each study another date."""
    series_dirs = sorted(d for d in os.listdir(os.path.join(HCC009, "HCC_009", os.listdir(
        os.path.join(HCC009, "HCC_009"))[0])))
    root = os.path.join(HCC009, "HCC_009", os.listdir(os.path.join(HCC009, "HCC_009"))[0])
    for k, d in enumerate(series_dirs):
        study_uid, frame_uid = new_uid(), new_uid()

        def edit(ds, study_uid=study_uid, frame_uid=frame_uid, k=k):
            ds.StudyInstanceUID = study_uid
            if not frame:
                ds.FrameOfReferenceUID = frame_uid
            if dates:
                ds.StudyDate = f"1998021{k}"

        start, stop = slices[d.split(".")[0]]
        copy_slices(os.path.join(root, d), os.path.join(dst, f"exam {k}", d), start, stop, edit)


SPLIT_SLICES = {"2": (0, 20), "4": (20, 40), "103": (20, 40)}  # PRE at 10 mm, A and V at 2.5 mm over its middle


@needs["hcc009"]
def test_one_exam_exported_as_several_studies_is_one_case(tmp_path):
    split_into_studies(str(tmp_path / "one"), SPLIT_SLICES)
    (tmp_path / "one" / "tcia_manifest.csv").write_text("not DICOM, not listed\n")
    study = only_study(tmp_path / "one")
    assert len(study.study_uids) == 3 and len(study.series) == 3 and study.case_id == "one"
    assert not study.unreadable
    # no shared frame of reference, or another day: separate studies, separate cases
    split_into_studies(str(tmp_path / "frames"), SPLIT_SLICES, frame=False)
    split_into_studies(str(tmp_path / "days"), SPLIT_SLICES, dates=True)
    for root in ("frames", "days"):
        studies, _ = index_studies(str(tmp_path / root))
        assert len(studies) == 3 and all(len(s.study_uids) == 1 for s in studies)


@pytest.mark.slow  # a rigid registration on real slices: tens of seconds on two busy cores
@needs["hcc009"]
def test_one_exam_of_several_studies_loads_on_the_scanner_coordinates(tmp_path):
    split_into_studies(str(tmp_path / "one"), SPLIT_SLICES)
    study = only_study(tmp_path / "one")
    study.phase_map = {"2": "NC", "4": "A", "103": "V"}
    loaded = load_dicom_case(study, ["NC", "A", "V", "D"], allow_missing=True)
    v = next(s for s in study.series.values() if s.number == 103)
    assert loaded.dicom["study_uids"] == study.study_uids
    assert loaded.dicom["study_uid"] == str(v.first.StudyInstanceUID)  # the SEG/SR go to the reference's study
    assert loaded.phases_present == ["NC", "A", "V"] and loaded.data.shape[1] == 20
    nc = loaded.registration["NC"]  # 10 mm onto 2.5 mm: resampled by the scanner's coordinates, refinement tried
    assert nc["frame_of_reference"] == "shared" and nc["alignment"].startswith("scanner coordinates")
    assert "A" not in loaded.registration  # A shares V's grid exactly
    # the scanner alignment is what the case holds unless the registration improved on it
    if not nc["improved"]:
        from nnunet_liver.registration import resample_to

        nc_image = read_series(series_geometry(next(s for s in study.series.values() if s.number == 2)))
        want = sitk.GetArrayFromImage(resample_to(nc_image, loaded.reference))
        np.testing.assert_allclose(loaded.data[0], want, atol=0.5)


def test_a_folder_of_two_patients_gives_one_message(tmp_path):
    vol = np.zeros((10, 16, 16))
    for k, pid in enumerate(("P1", "P2")):
        write_ct_series(str(tmp_path / "b"), vol, (2.5, 1.0, 1.0), (0.0, 0.0, 5.0 * k), new_uid(), k + 1,
                        patient={"id": pid}, series_uid=None)
        for f in os.listdir(tmp_path / "b"):
            if f.startswith("IM"):
                os.rename(tmp_path / "b" / f, tmp_path / "b" / f"{pid}_{f}")
    studies, _ = index_studies(str(tmp_path))
    assert len(studies) == 2 and len({s.error for s in studies}) == 1
    assert "holds studies of 2 different patients (cases b, b_2)" in studies[0].error


def test_constant_missing_channel_is_a_missing_phase(tmp_path):
    """A converted case's constant -1024 channel is a missing phase (phases_present, the report, the features)."""
    rng = np.random.default_rng(0)
    for c, phase in enumerate(("NC", "A", "V", "D")):
        array = np.full((6, 8, 8), -1024, np.int16) if phase in ("A", "D") else \
            rng.integers(-100, 200, (6, 8, 8)).astype(np.int16)
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / f"c_{c:04d}.nii.gz"))
    files = [str(tmp_path / f"c_{c:04d}.nii.gz") for c in range(4)]
    loaded = load_case(CaseFiles("c", files), ["NC", "A", "V", "D"], allow_missing=False)
    assert loaded.phases_present == ["NC", "V"] and loaded.phases_missing == ["A", "D"]
    assert sorted(loaded.images_by_phase()) == ["NC", "V"] and loaded.reference_channel == 2
    for c in (0, 2):
        sitk.WriteImage(sitk.GetImageFromArray(np.full((6, 8, 8), -1024, np.int16)), files[c])
    with pytest.raises(InputError, match="every phase image is the constant -1024 HU"):
        load_case(CaseFiles("c", files), ["NC", "A", "V", "D"], allow_missing=True)
