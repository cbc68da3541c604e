"""Contrast phases of the real studies: HCC-TACE-Seg HCC_009 (non-contrast with oral contrast in the stomach,
arterial, portal-venous; every subset; and with its descriptions and contrast tags removed), HCC_048 (portal-venous),
HCC-TACE case 1720's arterial and delayed phases and TotalSegmentator's example CT written as DICOM studies.
Skipped with a reason where the real data is absent."""
import os
import shutil

import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")

from nnunet_liver.dicom.index import index_studies  # noqa: E402
from nnunet_liver.dicom.phase import MIN_CONFIDENCE  # noqa: E402
from nnunet_liver.dicom.study import identify_study  # noqa: E402
from nnunet_liver.testing.dicom_writer import new_uid, write_ct_series  # noqa: E402

# the repository's sibling shared/realdata (as the other real-data tests), or NNUNET_LIVER_REALDATA
REALDATA = os.environ.get("NNUNET_LIVER_REALDATA",
                          os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "realdata"))
HCC009 = os.path.join(REALDATA, "hcc009_3phase_dicom")
HCC009_TRUTH = {2: "NC", 4: "A", 103: "V"}


def need(folder):
    if not os.path.isdir(folder):
        pytest.skip(f"realdata {os.path.basename(folder)} not available")


def only_study(root):
    studies, _ = index_studies(str(root))
    assert len(studies) == 1
    return studies[0]


def phases(found):
    return {a["series_number"]: a["phase"] for a in found.record["acquisitions"]}


@pytest.fixture(scope="module")
def hcc009():
    need(HCC009)
    return identify_study(only_study(HCC009))


def test_hcc009_three_phases_and_the_stomach_is_not_the_aorta(hcc009):
    assert phases(hcc009) == HCC009_TRUTH
    by = {a["series_number"]: a for a in hcc009.record["acquisitions"]}
    assert all(a["confidence"] > 0.9 for a in by.values())
    pre = by[2]
    assert pre["aorta_hu"] < 80 and pre["liver_hu"] < 70  # before: the contrast-filled stomach was "the aorta"
    assert 15 <= pre["findings"]["aorta"]["diameter_mm"] <= 35
    assert any("oral contrast only" in r for r in pre["reasons"])
    assert any("description 'PRE LIVER' names NC" in r for r in pre["reasons"])
    assert by[4]["aorta_hu"] > 300 and by[4]["liver_hu"] < 85
    assert any("spleen: heterogeneous" in r for r in by[4]["reasons"])
    assert by[103]["liver_hu"] > 110 and 140 < by[103]["aorta_hu"] < 220
    assert all(a["time_s"] is None and a["phase_costs"][a["phase"]] == min(a["phase_costs"].values())
               for a in by.values())


@pytest.mark.slow  # six studies of 20 to 138 real slices
@pytest.mark.parametrize("keep", [(2,), (4,), (103,), (2, 4), (2, 103), (4, 103)])
def test_hcc009_every_subset(keep):
    need(HCC009)
    skip = {str(n): "skip" for n in HCC009_TRUTH if n not in keep}
    found = identify_study(only_study(HCC009), skip)
    assert phases(found) == {n: HCC009_TRUTH[n] for n in keep}
    assert all(a["confidence"] >= MIN_CONFIDENCE for a in found.record["acquisitions"])


@pytest.mark.slow  # copies the 158 real slices
def test_hcc009_by_its_images_alone(tmp_path):
    """No description, no contrast route: the anatomy alone still tells the three phases."""
    need(HCC009)
    for root, _, files in os.walk(HCC009):
        for name in files:
            if not name.endswith(".dcm"):
                continue
            ds = pydicom.dcmread(os.path.join(root, name))
            ds.SeriesDescription = f"Series {ds.SeriesNumber}"
            for keyword in ("ContrastBolusRoute", "ContrastBolusAgent"):
                if keyword in ds:
                    delattr(ds, keyword)
            out = tmp_path / str(ds.SeriesNumber)
            out.mkdir(exist_ok=True)
            ds.save_as(out / name)
    found = identify_study(only_study(tmp_path))
    assert phases(found) == HCC009_TRUTH
    assert all(a["confidence"] > 0.9 for a in found.record["acquisitions"])


def test_hcc048_portal_venous():
    folder = os.path.join(REALDATA, "hcc048_pv_dicom")
    need(folder)
    (acq,) = identify_study(only_study(folder)).record["acquisitions"]
    assert acq["phase"] == "V" and acq["confidence"] > 0.9
    assert any("homogeneous nephrogram" in r for r in acq["reasons"])


def _as_dicom(nifti, folder, study_uid, number, time=None):
    import SimpleITK as sitk

    img = sitk.ReadImage(nifti)
    write_ct_series(str(folder), sitk.GetArrayFromImage(img).astype(np.float32), img.GetSpacing()[::-1],
                    img.GetOrigin(), study_uid, number, "Abd/Pel", direction=img.GetDirection(),
                    acquisition_time=time)


@pytest.fixture(scope="module")
def tace1720(tmp_path_factory):
    folder = os.path.join(REALDATA, "hcc_tace_1720")
    need(folder)
    root = tmp_path_factory.mktemp("tace1720")
    uid = new_uid()
    for phase, number in (("A", 4), ("D", 2)):
        _as_dicom(os.path.join(folder, f"{phase}.nii.gz"), root / phase, uid, number)
    return root


def test_tace1720_arterial_and_delayed_without_times(tace1720):
    found = identify_study(only_study(tace1720))
    assert phases(found) == {4: "A", 2: "D"}
    by = {a["phase"]: a for a in found.record["acquisitions"]}
    assert all(a["confidence"] > 0.9 for a in by.values())
    assert any("excreted into the collecting systems" in r for r in by["D"]["reasons"])


@pytest.mark.parametrize("keep,phase", [(4, "A"), (2, "D")])
def test_tace1720_each_phase_alone(tace1720, keep, phase):
    found = identify_study(only_study(tace1720), {str(6 - keep): "skip"})
    (acq,) = found.record["acquisitions"]
    assert acq["phase"] == phase and acq["confidence"] > 0.9


def test_totalsegmentator_example_shows_no_contrast(tmp_path):
    """Stored as "V", but nothing in it is enhanced (aorta and liver about 45 HU, kidneys unenhanced): NC. Its
    in-plane axes are flipped (direction -1, -1, 1)."""
    folder = os.path.join(REALDATA, "totalseg_example")
    need(folder)
    _as_dicom(os.path.join(folder, "V.nii.gz"), tmp_path / "s", new_uid(), 3)
    (acq,) = identify_study(only_study(tmp_path)).record["acquisitions"]
    assert acq["phase"] == "NC" and acq["confidence"] > 0.9
    assert acq["aorta_hu"] < 70 and acq["liver_hu"] < 70 and acq["findings"]["kidneys"]["cortex_hu"] is None
    shutil.rmtree(tmp_path / "s")
