"""Annotations over real series: a DICOM SEG (highdicom) and an RTSTRUCT (pydicom) with painted truth written over
HCC-TACE-Seg HCC_048 (portal-venous, 89 slices of 512 x 512) and HCC_009 (three phases, as TCIA downloads it), then
converted back: the SEG's labels exactly, the RTSTRUCT's within one voxel of the contour. The HCC-TACE-Seg preset runs
on a TCIA-shaped download built from HCC_009's real series, TCIA's own metadata rows and a SEG written here (the
collection's own SEGs are not in the shared data). Skipped where the real data is absent."""
import csv
import json
import os
import shutil

import numpy as np
import pytest
import SimpleITK as sitk

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("highdicom")

from nnunet_liver import labels as L  # noqa: E402
from nnunet_liver.dataset_conversion.cli import main  # noqa: E402
from nnunet_liver.testing.dicom_annotations import mask_contours, sorted_headers, write_rtstruct, write_seg  # noqa

REALDATA = os.environ.get("NNUNET_LIVER_REALDATA",
                          os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "realdata"))
HCC048 = os.path.join(REALDATA, "hcc048_pv_dicom")
HCC009 = os.path.join(REALDATA, "hcc009_3phase_dicom")


def need(folder):
    if not os.path.isdir(folder):
        pytest.skip(f"realdata {os.path.basename(folder)} not available")


def ellipsoid(shape, centre, radii):
    z, y, x = np.ogrid[:shape[0], :shape[1], :shape[2]]
    return sum(((a - c) / r) ** 2 for a, c, r in zip((z, y, x), centre, radii)) <= 1.0


def painted(shape):
    """Liver, a tumour inside it, a portal vein tube: voxel truth in our ids (the tumour over the liver)."""
    nz = shape[0]
    liver = ellipsoid(shape, (nz * 0.5, 230, 160), (nz * 0.3, 90, 110))
    tumour = ellipsoid(shape, (nz * 0.5, 220, 150), (nz * 0.1, 25, 30))
    vein = ellipsoid(shape, (nz * 0.5, 260, 250), (nz * 0.35, 8, 8))
    return liver, tumour, vein


def test_hcc048_seg_and_rtstruct_convert_back(tmp_path, capsys):
    need(HCC048)
    inp = tmp_path / "in"
    shutil.copytree(HCC048, inp / "hcc048")
    headers = sorted_headers(str(inp / "hcc048"))
    shape = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    liver, tumour, vein = painted(shape)
    write_seg(str(inp / "hcc048" / "seg" / "seg.dcm"), headers,
              [("Liver", liver, "liver"), ("Mass", tumour, "mass"), ("Portal vein", vein, "portal vein")])
    assert main(["dicom", "-i", str(inp), "-o", str(tmp_path / "raw"), "-d", "531", "--phases", "V",
                 "--tumor-type", "HCC"]) == 0
    ds = tmp_path / "raw" / "Dataset531_DicomStudies"
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "labelsTr" / "hcc048.nii.gz")))
    want = np.where(tumour, L.HCC, np.where(vein, L.PORTAL_SPLENIC_VEIN, np.where(liver, L.LIVER, 0)))
    np.testing.assert_array_equal(got, want)
    image = sitk.ReadImage(str(ds / "imagesTr" / "hcc048_0000.nii.gz"))
    assert image.GetSize() == (shape[2], shape[1], shape[0])

    # the same structures as RTSTRUCT contours (traced at half a voxel): within one voxel in-plane
    from scipy.ndimage import binary_dilation

    os.remove(inp / "hcc048" / "seg" / "seg.dcm")
    write_rtstruct(str(inp / "hcc048" / "rt" / "rs.dcm"), headers,
                   {"Liver": mask_contours(liver), "GTV": mask_contours(tumour)})
    assert main(["dicom", "-i", str(inp), "-o", str(tmp_path / "raw2"), "-d", "531", "--phases", "V",
                 "--label-map", "GTV=tumor", "--tumor-type", "HCC"]) == 0
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "raw2" / "Dataset531_DicomStudies" / "labelsTr" /
                                                    "hcc048.nii.gz")))
    grow = np.zeros((3, 3, 3), bool)
    grow[1] = True
    for ours, truth in ((got == L.HCC, tumour), (got > 0, liver)):
        assert not (ours & ~binary_dilation(truth, grow)).any() and not (truth & ~binary_dilation(ours, grow)).any()
        assert abs(int(ours.sum()) - int(truth.sum())) < 0.05 * truth.sum()


def tcia_download(root, seg_on="4.000000", missing_row=False):
    """HCC_009 as the NBIA Data Retriever writes it (manifest folder, metadata.csv with TCIA's rows), plus a SEG
    series painted on the series whose folder starts with ``seg_on``; returns (study folder, painted truth)."""
    manifest = root / "manifest-1700000000000"
    shutil.copytree(os.path.join(HCC009, "HCC_009"), manifest / "HCC-TACE-Seg" / "HCC_009")
    study = next((manifest / "HCC-TACE-Seg" / "HCC_009").iterdir())
    series = next(p for p in study.iterdir() if p.name.startswith(seg_on))
    headers = sorted_headers(str(series))
    shape = (len(headers), int(headers[0].Rows), int(headers[0].Columns))
    liver, tumour, vein = painted(shape)
    aorta = ellipsoid(shape, (shape[0] * 0.5, 250, 300), (shape[0] * 0.4, 10, 10))
    seg_folder = study / "300.000000-Segmentation-91234"
    uid = write_seg(str(seg_folder / "1-1.dcm"), headers,
                    [("Liver", liver, "liver"), ("Mass", tumour, "mass"), ("Portal vein", vein, "portal vein"),
                     ("Abdominal aorta", aorta, "aorta")])
    with open(os.path.join(HCC009, "tcia_manifest.csv"), newline="", encoding="utf-8-sig") as f:
        rows = list(csv.reader(f))
    seg_row = list(rows[1])
    seg_row[0], seg_row[8], seg_row[10], seg_row[13] = uid, "Segmentation", "SEG", "1"
    seg_row[-2] = "." + "\\".join(["", "HCC-TACE-Seg", "HCC_009", study.name, seg_folder.name])
    rows.append(seg_row)
    if missing_row:
        gone = list(rows[1])
        gone[0], gone[-2] = "1.2.3.4", ".\\HCC-TACE-Seg\\HCC_009\\" + study.name + "\\5.000000-NOT DOWNLOADED-1"
        rows.append(gone)
    with open(manifest / "metadata.csv", "w", newline="", encoding="utf-8") as f:
        f.write("\n".join(",".join(r) for r in rows) + "\n")  # as TCIA writes it: "10,54 MB" unquoted
    return study, (liver, tumour, vein)


def test_hcc_tace_seg_preset_on_a_tcia_shaped_download(tmp_path, capsys):
    need(HCC009)
    study, (liver, tumour, vein) = tcia_download(tmp_path / "dl", missing_row=True)
    before = sorted(os.walk(tmp_path / "dl"))
    assert main(["hcc-tace-seg", "-i", str(tmp_path / "dl"), "-o", str(tmp_path / "raw")]) == 0
    assert sorted(os.walk(tmp_path / "dl")) == before
    err = capsys.readouterr().err
    assert "incomplete download" in err and "NOT DOWNLOADED" in err
    assert "phases found: NC 1, A 1, V 1, D 0" in err and "annotated phase: A 1" in err
    assert "left out 'Abdominal aorta'" in err
    ds = tmp_path / "raw" / "Dataset525_HCC_TACE_Seg"
    case = "HCC_009_19980215"
    assert sorted(os.listdir(ds / "imagesTr")) == [f"{case}_{i:04d}.nii.gz" for i in range(4)]
    got = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "labelsTr" / f"{case}.nii.gz")))
    want = np.where(tumour, L.HCC, np.where(vein, L.PORTAL_SPLENIC_VEIN, np.where(liver, L.LIVER, 0)))
    np.testing.assert_array_equal(got, want)
    d = sitk.GetArrayFromImage(sitk.ReadImage(str(ds / "imagesTr" / f"{case}_0003.nii.gz")))
    assert (d == L.MISSING_PHASE_VALUE).all()  # no delayed phase in this study
    record = json.loads((ds / "conversion.json").read_text())
    assert record["cases"][case]["reference_phase"] == "A"
    assert record["sources"][0]["kind"] == "hcc-tace-seg" and len(record["sources"][0]["download_problems"]) == 1
    assert record["summaries"][-1]["label_cases"] == {"HCC": 1, "liver": 1, "portal_splenic_vein": 1}
    dataset = json.loads((ds / "dataset.json").read_text())
    assert dataset["channel_names"] == {"0": "NC", "1": "A", "2": "V", "3": "D"} and dataset["numTraining"] == 1
    from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity

    verify_dataset_integrity(str(ds), num_processes=1)  # what --verify_dataset_integrity runs; raises on a problem


def test_hcc_tace_seg_preset_needs_the_metadata(tmp_path):
    need(HCC009)
    shutil.copytree(os.path.join(HCC009, "HCC_009"), tmp_path / "dl" / "HCC_009")
    assert main(["hcc-tace-seg", "-i", str(tmp_path / "dl"), "-o", str(tmp_path / "raw")]) == 2
    assert not (tmp_path / "raw").exists()


def test_hcc009_rtstruct_on_the_venous_series(tmp_path):
    """The annotation reader alone on HCC_009's portal-venous series: an RTSTRUCT with a hole by the even-odd rule."""
    need(HCC009)
    from nnunet_liver.dicom.annotations import LabelMapping, find_annotations, label_map, structures
    from nnunet_liver.dicom.index import index_studies
    from nnunet_liver.testing.dicom_annotations import box_contour

    exam = os.path.join(HCC009, "HCC_009", os.listdir(os.path.join(HCC009, "HCC_009"))[0])
    series = next(p for p in os.scandir(exam) if p.name.startswith("103"))
    shutil.copytree(series.path, tmp_path / "s" / "ct")
    headers = sorted_headers(str(tmp_path / "s" / "ct"))
    rois = {"Liver": [(k, box_contour(150, 300, 100, 300)) for k in range(20, 40)]
            + [(k, box_contour(200, 250, 150, 200)) for k in range(20, 40)]}
    write_rtstruct(str(tmp_path / "s" / "rt.dcm"), headers, rois)
    found = find_annotations(index_studies(str(tmp_path / "s"))[0][0])
    label, _ = label_map(structures(found[0]), LabelMapping(), None, headers, "series 103")
    want = np.zeros(label.shape, np.uint8)
    want[20:40, 150:301, 100:301] = L.LIVER
    want[20:40, 200:251, 150:201] = 0
    np.testing.assert_array_equal(label, want)
