"""The real portal-venous DICOM series of HCC-TACE-Seg case HCC_048 end to end with the bundled demo model: identified
as V, SEG and SR written and valid, report rendered. Skipped without the real data or the bundled model."""
import json
import os
import shutil
import subprocess

import pytest

pytest.importorskip("highdicom")

from nnunet_liver.inference.model import bundled_demo_model  # noqa: E402

# the repository's sibling shared/realdata (as the other real-data tests), or NNUNET_LIVER_REALDATA
REALDATA = os.environ.get("NNUNET_LIVER_REALDATA",
                          os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "shared", "realdata"))
FOLDER = os.path.join(REALDATA, "hcc048_pv_dicom")

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not os.path.isdir(FOLDER), reason="realdata hcc048_pv_dicom not available"),
              pytest.mark.skipif(not bundled_demo_model("whole"), reason="no bundled demo model")]


def test_hcc048_end_to_end_with_the_demo_model(tmp_path):
    import highdicom as hd
    import pydicom

    from nnunet_liver.inference.cli import main

    out = tmp_path / "out"
    assert main(["-i", FOLDER, "-o", str(out), "-m", "demo", "--device", "cpu", "--disable-tta"]) == 0
    rec = json.loads((out / "hcc048_pv_dicom.json").read_text(encoding="utf-8"))
    (acq,) = rec["dicom"]["acquisitions"]
    assert acq["phase"] == "V" and acq["confidence"] > 0.9 and rec["phases_present"] == ["V"]
    assert acq["description"] == "Recon 3: LIVER 2 PHASE (C/A/P)"
    assert rec["geometry"]["shape_zyx"] == [89, 512, 512]
    sr = hd.sr.srread(str(out / "hcc048_pv_dicom_sr.dcm"))
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == len(rec["lesions"])
    source = pydicom.dcmread(os.path.join(FOLDER, "00000001.dcm"), stop_before_pixels=True)
    assert sr.StudyInstanceUID == source.StudyInstanceUID
    if rec["lesions"]:
        seg = hd.seg.segread(str(out / "hcc048_pv_dicom_seg.dcm"))
        assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == source.SeriesInstanceUID
        assert len(seg.get_segment_numbers()) == len(rec["lesions"])
        assert not [e for e in seg if e.tag.is_private]  # the source's private CTP tags stay behind
    if shutil.which("dciodvfy"):
        for name in os.listdir(out):
            if name.endswith(".dcm"):
                proc = subprocess.run(["dciodvfy", str(out / name)], capture_output=True, text=True)
                assert not [l for l in (proc.stdout + proc.stderr).splitlines() if l.startswith("Error")], name
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "hcc048_pv_dicom" in html and "Patient_01" not in html
    if shutil.which("chromium"):
        shot = tmp_path / "shot.png"
        subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", f"--screenshot={shot}",
                        "--window-size=1000,1200", (out / "report.html").as_uri()], capture_output=True, timeout=300)
        assert shot.is_file() and shot.stat().st_size > 20000
