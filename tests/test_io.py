import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_liver.utils.io import InputError, atomic_dir, atomic_path, read_image, write_image_like


def _write(array, path, spacing=(0.8, 0.7, 5.0)):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    sitk.WriteImage(img, str(path))
    return img


def test_read_image_returns_zyx_array_and_spacing(tmp_path):
    a = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)
    _write(a, tmp_path / "x.nii.gz")
    array, spacing, image = read_image(str(tmp_path / "x.nii.gz"))
    np.testing.assert_array_equal(array, a)
    assert spacing == pytest.approx((5.0, 0.7, 0.8))


@pytest.mark.parametrize("ending", [".nii.gz", ".nii", ".mha"])
def test_read_image_rejects_nan_in_every_format(tmp_path, ending):
    # ITK's NIfTI reader turns NaN into 0; the stored values must still be checked
    a = np.zeros((4, 5, 6), np.float32)
    a[1, 2, 3] = np.nan
    a[2, 2, 3] = np.inf
    _write(a, tmp_path / f"x{ending}")
    with pytest.raises(InputError, match=r"x\.\S*: image holds 2 NaN or infinite voxels"):
        read_image(str(tmp_path / f"x{ending}"))


def test_read_image_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="missing.nii.gz: image file not found"):
        read_image(str(tmp_path / "missing.nii.gz"))
    (tmp_path / "broken.nii.gz").write_bytes(b"not a nifti file at all")
    with pytest.raises(InputError, match="broken.nii.gz: cannot read image"):
        read_image(str(tmp_path / "broken.nii.gz"))
    _write(np.zeros((5, 6), np.int16), tmp_path / "flat.nii.gz", spacing=(1.0, 1.0))
    with pytest.raises(InputError, match="flat.nii.gz: image must be a 3D"):
        read_image(str(tmp_path / "flat.nii.gz"))
    for e in (InputError,):
        assert issubclass(e, ValueError)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_path(str(target)) as tmp:
            Path(tmp).write_text("half", encoding="utf-8")
            raise RuntimeError("interrupted")
    assert os.listdir(tmp_path) == []
    with atomic_path(str(target)) as tmp:
        Path(tmp).write_text("whole", encoding="utf-8")
    assert target.read_text() == "whole" and os.listdir(tmp_path) == ["out.json"]


def test_atomic_dir_renames_only_on_success(tmp_path):
    final = tmp_path / "Dataset501_X"
    with pytest.raises(RuntimeError):
        with atomic_dir(str(final)) as tmp:
            Path(tmp, "a.txt").write_text("x", encoding="utf-8")
            raise RuntimeError("failed conversion")
    assert os.listdir(tmp_path) == []
    with atomic_dir(str(final)) as tmp:
        Path(tmp, "a.txt").write_text("x", encoding="utf-8")
    assert (final / "a.txt").read_text() == "x"
    with pytest.raises(InputError, match="already exists"):
        with atomic_dir(str(final)):
            pass


def test_write_image_like_keeps_geometry(tmp_path):
    ref = _write(np.zeros((4, 5, 6), np.int16), tmp_path / "ref.nii.gz")
    ref.SetOrigin((1.0, 2.0, 3.0))
    write_image_like(np.ones((4, 5, 6), np.uint16), ref, str(tmp_path / "out.nii.gz"))
    out = sitk.ReadImage(str(tmp_path / "out.nii.gz"))
    assert out.GetOrigin() == pytest.approx((1.0, 2.0, 3.0)) and out.GetSpacing() == pytest.approx(ref.GetSpacing())
    assert sitk.GetArrayFromImage(out).sum() == 4 * 5 * 6
