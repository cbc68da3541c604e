"""nnunet-liver-convert dicom: DICOM studies -> nnU-Net raw dataset (imagesTs in NC, A, V, D order)."""
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")

from nnunet_liver.dataset_conversion.cli import main  # noqa: E402
from nnunet_liver.testing.dicom_study import SERIES, expected_hu, phantom, write_study  # noqa: E402


def test_convert_dicom_studies(tmp_path, capsys):
    case = phantom(0)
    inp = tmp_path / "pacs"
    write_study(str(inp / "p1"), case, times=True)
    write_study(str(inp / "p2"), phantom(1, shape=(20, 96, 96)), times=False, extras=False)
    (inp / "p2" / "a" / "b").mkdir(parents=True)
    (inp / "p2" / f"series{SERIES['D'][0]}").rename(inp / "p2" / "a" / "b" / "moved")  # still found: any depth
    for f in (inp / "p2" / "a" / "b" / "moved").iterdir():  # D on another grid (2.5 mm higher): registered onto V
        ds = pydicom.dcmread(f)
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1],
                                   float(ds.ImagePositionPatient[2]) + 2.5]
        ds.save_as(f)
    broken = phantom(2)
    write_study(str(inp / "broken"), broken, extras=False)
    os.remove(sorted((inp / "broken" / f"series{SERIES['V'][0]}").iterdir())[4])
    before = sorted(os.walk(inp))
    rc = main(["dicom", "-i", str(inp), "-o", str(tmp_path / "raw"), "-d", "524"])
    assert rc == 0 and sorted(os.walk(inp)) == before
    err = capsys.readouterr().err
    assert "skipped study broken" in err and "non-uniform slice spacing" in err
    ds = tmp_path / "raw" / "Dataset524_DicomStudies"
    dataset = json.loads((ds / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "NC", "1": "A", "2": "V", "3": "D"}
    assert sorted(os.listdir(ds / "imagesTs")) == [f"{c}_{i:04d}.nii.gz" for c in ("p1", "p2") for i in range(4)]
    want = expected_hu(case)
    for i, p in enumerate(("NC", "A", "V", "D")):
        img = sitk.ReadImage(str(ds / "imagesTs" / f"p1_{i:04d}.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(img), want[p])
        assert img.GetSpacing() == pytest.approx(case.spacing[::-1])
    record = json.loads((ds / "conversion.json").read_text())
    assert "error" in record["cases"]["broken"] and record["cases"]["p1"]["reference_phase"] == "V"
    p2 = json.loads((ds / "dicom" / "p2.json").read_text())
    assert {a["phase"]: a["series_number"] for a in p2["acquisitions"]} == {p: n for p, (n, _) in SERIES.items()}
    assert list(p2["registration"]) == ["D"] and p2["registration"]["D"]["improved"]
    d = sitk.ReadImage(str(ds / "imagesTs" / "p2_0003.nii.gz"))
    v = sitk.ReadImage(str(ds / "imagesTs" / "p2_0002.nii.gz"))
    assert d.GetSize() == v.GetSize() and d.GetOrigin() == pytest.approx(v.GetOrigin())


def test_convert_dicom_nothing_found(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["dicom", "-i", str(tmp_path / "empty"), "-o", str(tmp_path / "raw")]) == 2  # bad input: the common exit code
    assert "no DICOM study found" in capsys.readouterr().err
    assert not (tmp_path / "raw").exists() or not os.listdir(tmp_path / "raw")
