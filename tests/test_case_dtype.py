"""The detector holds a case as int16 when every phase holds whole HU within int16 (most CT), else float32."""
import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.case import holds_int16, store_phase
from nnunet_liver.inference.cases import discover_cases, load_case
from nnunet_liver.labels import MISSING_PHASE_VALUE


@pytest.mark.parametrize("array, expected", [
    (np.array([-1024, 3071], np.int16), True),
    (np.array([0, 255], np.uint8), True),
    (np.array([-1024.0, 0.0, 3071.0], np.float32), True),  # float32 NIfTI holding whole HU
    (np.array([-1024.0, 0.5], np.float32), False),
    (np.array([-32768, 32767], np.int32), True),
    (np.array([-32769], np.int32), False),
    (np.array([32768], np.uint16), False),
    (np.array([40000.0], np.float64), False),
    (np.zeros((0,), np.float32), True),  # empty
])
def test_holds_int16(array, expected):
    assert holds_int16(array) is expected


def test_a_fraction_far_into_a_large_volume_is_found():
    a = np.zeros((9, 700, 700), np.float32)  # more than one chunk of the check
    assert holds_int16(a)
    a[8, 699, 699] = 0.25
    assert not holds_int16(a)


def test_store_phase_upcasts_once_and_keeps_values():
    data = store_phase(None, 0, np.full((2, 3), -1024, np.int16), (3, 2, 3))
    assert data.dtype == np.int16
    data = store_phase(data, 1, np.full((2, 3), 40.0, np.float32), (3, 2, 3))
    assert data.dtype == np.int16 and (data[1] == 40).all()
    data = store_phase(data, 2, np.full((2, 3), 40.5, np.float32), (3, 2, 3))
    assert data.dtype == np.float32
    assert (data[0] == -1024).all() and (data[1] == 40).all() and (data[2] == 40.5).all()


def _write(folder, case_id, arrays):
    for c, a in arrays.items():
        im = sitk.GetImageFromArray(a)
        im.SetSpacing((0.8, 0.8, 2.5))
        sitk.WriteImage(im, str(folder / f"{case_id}_{c:04d}.nii.gz"))


def test_load_case_dtype_and_values(tmp_path):
    rng = np.random.default_rng(0)
    whole = rng.integers(-1024, 3000, size=(4, 6, 5)).astype(np.int16)
    _write(tmp_path, "int", {0: whole, 1: whole + 1, 2: whole.astype(np.float32)})  # D missing
    _write(tmp_path, "frac", {0: whole, 1: whole, 2: whole.astype(np.float32) + 0.5, 3: whole})
    cases = {c.case_id: c for c in discover_cases(str(tmp_path), 4)}
    names = ("NC", "A", "V", "D")
    a = load_case(cases["int"], names, allow_missing=True)
    assert a.data.dtype == np.int16
    np.testing.assert_array_equal(a.data[0], whole)
    np.testing.assert_array_equal(a.data[1], whole + 1)
    np.testing.assert_array_equal(a.data[2], whole)
    assert (a.data[3] == MISSING_PHASE_VALUE).all() and a.phases_missing == ["D"]
    b = load_case(cases["frac"], names, allow_missing=False)
    assert b.data.dtype == np.float32
    np.testing.assert_array_equal(b.data[2], whole.astype(np.float32) + 0.5)
    np.testing.assert_array_equal(b.data[0], whole)
    np.testing.assert_array_equal(b.data[3], whole)
