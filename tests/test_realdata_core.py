"""The real HCC case (HCC-TACE, label drawn on D): seg2det finds its two lesions, LI-RADS signs come out right."""
from pathlib import Path

import numpy as np
import pytest

REAL = Path(__file__).parents[1].parent / "shared" / "realdata" / "hcc_tace_1720"
pytestmark = pytest.mark.skipif(not (REAL / "label.nii.gz").exists(),
                                reason=f"real data not found at {REAL} (shared/realdata is not part of the repo)")


@pytest.fixture(scope="module")
def case():
    from nnunet_liver.utils.io import read_image
    lab, spacing, img = read_image(str(REAL / "label.nii.gz"), "label")
    A, _, _ = read_image(str(REAL / "A.nii.gz"))
    D, _, _ = read_image(str(REAL / "D.nii.gz"))
    return lab, spacing, img, A, D


def test_two_hcc_lesions_with_their_volumes(case):
    from nnunet_liver.postprocessing import classify_patient, seg2det
    lab, spacing, img, _, _ = case
    les = seg2det(lab, spacing, origin=img.GetOrigin(), direction=img.GetDirection())
    assert len(les) == 2
    assert [l.type for l in les] == ["HCC", "HCC"]
    vols = sorted((l.volume_cm3 for l in les), reverse=True)
    assert vols == pytest.approx([57.0, 31.3], abs=0.5)
    # cross-check the volume with a plain voxel count
    assert sum(vols) == pytest.approx(np.count_nonzero(lab == 1) * np.prod(spacing) / 1000)
    assert all(20 < l.diameter_mm < 80 for l in les)  # several centimetres across
    assert classify_patient(les) == "HCC"


def test_li_rads_signs(case):
    """A: the tumour is brighter than the liver (APHE > 0); no V, so NPW is read on D: darker (washout < 0)."""
    from nnunet_liver.postprocessing import seg2det
    lab, spacing, _, A, D = case
    les = seg2det(lab, spacing, images={"A": A, "D": D}, liver_mask=lab > 0)
    for l in les:
        assert l.feature_phases == {"APHE": "A", "NPW": "D", "EC": "A"}
        assert 3 < l.features["APHE"] < 25       # about +10 HU
        assert -25 < l.features["NPW"] < -3      # about -9 HU
        assert l.features["EC"] is not None
        assert set(l.hu_median) == {"A", "D"}
    # whole tumour vs whole parenchyma, as the data's README states it
    tumour, liver = lab == 1, lab == 7
    assert np.median(A[tumour]) - np.median(A[liver]) > 0
    assert np.median(D[tumour]) - np.median(D[liver]) < 0
