"""Patient rules: classify_patient priority, consensus, LiverMax inside the predicted liver only."""
import numpy as np
import pytest
import torch

from nnunet_liver.labels import CYST, HCC, HEM, ICC, LIVER, META, OTHER, SPLEEN
from nnunet_liver.postprocessing import classify_patient, consensus, is_malignant_class, liver_max, seg2det


def _lm(*labels):
    lm = np.zeros((8, 16, 16), np.uint8)
    for k, lab in enumerate(labels):
        lm[k, 2:6, 2:6] = lab
    return lm


@pytest.mark.parametrize("labels, expected", [
    ((), "normal"),
    ((LIVER, SPLEEN), "normal"),
    ((CYST, OTHER), "Other"),
    ((CYST, HEM, OTHER), "Hem"),
    ((HEM, META, CYST), "Meta"),
    ((META, ICC), "ICC"),
    ((CYST, ICC, HCC, META), "HCC"),
])
def test_priority(labels, expected):
    lm = np.zeros((8, 16, 16), np.uint8)
    for k, lab in enumerate(labels):
        lm[2 * k, 2:6, 2:6] = lab  # every other slice: separate lesions
    assert classify_patient(seg2det(lm, (1, 1, 1))) == expected


def test_min_volume_floor():
    lm = np.zeros((8, 16, 16), np.uint8)
    lm[0, 0, 0] = HCC  # 1 voxel = 0.001 cm3
    lm[4:6, 4:8, 4:8] = CYST
    les = seg2det(lm, (1, 1, 1))
    assert classify_patient(les) == "HCC"
    assert classify_patient(les, min_volume_cm3=0.01) == "Cyst"


def test_consensus_and_malignancy():
    assert consensus("HCC", "HCC") == "HCC"
    assert consensus("HCC", "Meta") == "uncertain"
    assert consensus("normal", "normal") == "normal"
    assert [is_malignant_class(c) for c in ("HCC", "ICC", "Meta", "Hem", "Cyst", "normal", "uncertain")] == \
        [True, True, True, False, False, False, None]


def _probs():
    p = np.zeros((14, 4, 8, 8), np.float32)
    p[0] = 1.0
    p[0, :, 2:6, 2:6] = 0.0
    p[LIVER, :, 2:6, 2:6] = 0.7      # predicted liver: argmax = 7
    p[HCC, :, 2:6, 2:6] = 0.2
    p[HCC, 1, 3, 3] = 0.25
    p[META, 2, 4, 4] = 0.1
    p[HCC, 0, 0, 0] = 0.9            # outside the liver (argmax background): must be ignored
    p[CYST, 0, 7, 7] = 0.8
    return p


def test_liver_max_inside_liver_only():
    p = _probs()
    lm_before = np.argmax(p, 0)
    s = liver_max(p)
    assert s["HCC"] == pytest.approx(0.25)
    assert s["Meta"] == pytest.approx(0.1)
    assert s["Cyst"] == 0.0 and s["ICC"] == 0.0
    assert set(s) == {"HCC", "ICC", "Meta", "Hem", "Other", "Cyst"}
    # a lesion voxel (label 1..6) is part of the liver too
    lm = lm_before.copy()
    lm[0, 0, 0] = HCC
    assert liver_max(p, lm)["HCC"] == pytest.approx(0.9)
    st = liver_max(torch.from_numpy(p))
    assert st == pytest.approx(s)


def test_liver_max_empty_liver_and_bad_shape():
    p = np.zeros((14, 2, 4, 4), np.float32)
    p[0] = 1
    assert set(liver_max(p).values()) == {0.0}
    with pytest.raises(ValueError, match="shape"):
        liver_max(np.zeros((13, 2, 4, 4), np.float32))
