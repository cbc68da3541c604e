"""Registration: recovers a known rigid shift, improves the metric, never returns something worse."""
import numpy as np
import pytest
from scipy import ndimage

from nnunet_liver.phantom import generate_case
from nnunet_liver.phantom.dataset import to_sitk_image
from nnunet_liver.registration import mutual_information, register_to_reference

SHAPE, SPACING = (24, 96, 96), (5.0, 3.0, 3.0)


@pytest.fixture(scope="module")
def shifted_case():
    return generate_case(5, shape=SHAPE, spacing=SPACING, misalign_mm=8.0)


@pytest.mark.parametrize("phase", ["A", "D"])
def test_rigid_recovers_known_shift(shifted_case, phase):
    case = shifted_case
    fixed = to_sitk_image(case.images["V"], case.spacing, case.origin)
    moving = to_sitk_image(case.images[phase], case.spacing, case.origin)
    resampled, report = register_to_reference(moving, fixed, "rigid")
    shift_zyx = np.asarray(case.shifts_mm[phase])
    assert np.linalg.norm(shift_zyx) > 3.0
    # the transform maps fixed points to moving points: content moved by +s -> translation +s (x, y, z order)
    residual_mm = np.asarray(report["translation_mm_xyz"])[::-1] - shift_zyx
    residual_vox = np.abs(residual_mm) / np.asarray(case.spacing)
    assert residual_vox[1] < 1 and residual_vox[2] < 1 and residual_vox[0] < 1, residual_vox
    assert np.abs(report["parameters"][:3]).max() < 0.02  # almost no rotation
    assert report["metric_after"] < report["metric_before"] and report["improved"]
    assert report["correlation_after"] > report["correlation_before"]
    assert resampled.GetSize() == fixed.GetSize() and resampled.GetOrigin() == fixed.GetOrigin()


def test_affine_and_masked_registration_improve(shifted_case):
    case = shifted_case
    fixed = to_sitk_image(case.images["V"], case.spacing, case.origin)
    moving = to_sitk_image(case.images["NC"], case.spacing, case.origin)
    liver = ndimage.binary_dilation(case.label == 7, iterations=3)
    _, report = register_to_reference(moving, fixed, "affine", fixed_mask=liver)
    assert len(report["parameters"]) == 12 and report["metric_region"].startswith("fixed mask")
    assert report["metric_after"] < report["metric_before"]
    residual = np.asarray(report["translation_mm_xyz"])[::-1] - np.asarray(case.shifts_mm["NC"])
    assert np.all(np.abs(residual) < 1.5 * np.asarray(case.spacing))


def test_aligned_pair_stays_put_and_bad_arguments():
    case = generate_case(1, shape=SHAPE, spacing=SPACING)
    fixed = to_sitk_image(case.images["V"], case.spacing, case.origin)
    moving = to_sitk_image(case.images["A"], case.spacing, case.origin)
    _, report = register_to_reference(moving, fixed)
    assert np.all(np.abs(report["translation_mm_xyz"]) < 1.0)
    assert report["metric_after"] <= report["metric_before"]
    assert mutual_information(fixed, fixed) < mutual_information(fixed, moving)
    with pytest.raises(ValueError, match="transform"):
        register_to_reference(moving, fixed, "bspline")
    with pytest.raises(ValueError, match="shape"):
        register_to_reference(moving, fixed, fixed_mask=np.ones((2, 2, 2), bool))
