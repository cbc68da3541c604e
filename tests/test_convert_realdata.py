"""The real two-phase HCC case (A and D only, label on D) and the real venous case convert."""
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver import labels as L
from nnunet_liver.dataset_conversion.cli import main as convert_main

REAL = Path(__file__).parents[1].parent / "shared" / "realdata"
HCC = REAL / "hcc_tace_1720"
pytestmark = pytest.mark.skipif(not (HCC / "D.nii.gz").is_file(),
                                reason=f"real data not available at {REAL} (../shared/realdata)")


def read(path):
    return sitk.ReadImage(str(path))


def test_two_phase_hcc_case_registers_onto_delayed_grid(tmp_path, capsys):
    raw = tmp_path / "raw"
    rc = convert_main(["multiphase", "-i", str(HCC), "-d", "650", "-o", str(raw), "--reference-phase", "D"])
    assert rc == 0, capsys.readouterr().err
    out = raw / "Dataset650_MultiPhase"
    d_in, label_in = read(HCC / "D.nii.gz"), read(HCC / "label.nii.gz")
    label_out = read(out / "labelsTr" / "hcc_tace_1720.nii.gz")
    assert np.array_equal(sitk.GetArrayFromImage(label_out), sitk.GetArrayFromImage(label_in))  # voxel-identical
    assert label_out.GetSize() == d_in.GetSize()
    assert np.allclose(label_out.GetOrigin(), d_in.GetOrigin(), atol=1e-3)
    arterial = read(out / "imagesTr" / "hcc_tace_1720_0001.nii.gz")
    assert arterial.GetSize() == d_in.GetSize() and np.allclose(arterial.GetOrigin(), d_in.GetOrigin(), atol=1e-3)
    assert np.array_equal(sitk.GetArrayFromImage(read(out / "imagesTr" / "hcc_tace_1720_0003.nii.gz")),
                          sitk.GetArrayFromImage(d_in))
    for ch in (0, 2):  # NC and V are missing
        assert np.all(sitk.GetArrayFromImage(read(out / "imagesTr" / f"hcc_tace_1720_{ch:04d}.nii.gz"))
                      == L.MISSING_PHASE_VALUE)
    report = json.loads((out / "registration" / "hcc_tace_1720.json").read_text(encoding="utf-8"))["phases"]["A"]
    print(f"\nhcc_tace_1720 A -> D: Mattes MI {report['metric_before']:.4f} -> {report['metric_after']:.4f}, "
          f"correlation {report['correlation_before']:.3f} -> {report['correlation_after']:.3f}, "
          f"translation (x, y, z) mm {np.round(report['translation_mm_xyz'], 2).tolist()}")
    assert report["metric_after"] < report["metric_before"] - 0.05
    assert report["correlation_after"] > report["correlation_before"]
    # the HCC (label 1) is visible in the registered arterial phase: brighter than the liver around it
    a = sitk.GetArrayFromImage(arterial)
    lab = sitk.GetArrayFromImage(label_in)
    assert np.median(a[lab == L.HCC]) > np.median(a[lab == L.LIVER])


def test_real_venous_case_as_single_phase(tmp_path, capsys):
    src = REAL / "totalseg_example"
    raw = tmp_path / "raw"
    rc = convert_main(["multiphase", "-i", str(src), "-d", "651", "-o", str(raw), "--phases", "V"])
    assert rc == 0, capsys.readouterr().err
    out = raw / "Dataset651_MultiPhase"
    assert json.loads((out / "dataset.json").read_text(encoding="utf-8"))["channel_names"] == {"0": "V"}
    assert np.array_equal(sitk.GetArrayFromImage(read(out / "labelsTr" / "totalseg_example.nii.gz")),
                          sitk.GetArrayFromImage(read(src / "label.nii.gz")))
