"""Multi-sensitivity masks equal a brute-force scaled argmax, ties included, for numpy and torch inputs."""
import numpy as np
import pytest
import torch

from nnunet_liver.postprocessing import lesion_sensitivity_masks
from nnunet_liver.postprocessing.sensitivity import scaled_argmax_reference


def _tied_probabilities(seed, shape=(8, 16, 16), levels=5, dtype=np.float32):
    """Probabilities on a coarse grid of values so that ties (within and across groups) are frequent."""
    rng = np.random.default_rng(seed)
    p = rng.integers(0, levels, size=(14,) + shape).astype(dtype) / np.asarray(levels * 4, dtype)
    return p


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("factors", [(1.0, 4.0), (0.5, 2.0, 3.0), (1.7,)])
def test_numpy_equals_brute_force(seed, factors):
    p = _tied_probabilities(seed)
    before = p.copy()
    masks = lesion_sensitivity_masks(p, factors)
    np.testing.assert_array_equal(p, before)  # input untouched
    assert set(masks) == set(factors)
    for f in factors:
        assert masks[f].dtype == np.uint8 and masks[f].shape == p.shape[1:]
        np.testing.assert_array_equal(masks[f], scaled_argmax_reference(p, f))


@pytest.mark.parametrize("seed", range(3))
def test_torch_equals_brute_force(seed):
    p = torch.from_numpy(_tied_probabilities(seed, levels=3))
    masks = lesion_sensitivity_masks(p, (1.0, 4.0, 3.0))
    for f, m in masks.items():
        assert isinstance(m, torch.Tensor) and m.dtype == torch.uint8 and m.device == p.device
        assert torch.equal(m, scaled_argmax_reference(p, f))
        # and numpy's argmax agrees with torch's
        np.testing.assert_array_equal(m.numpy(), scaled_argmax_reference(p.numpy(), f))


def test_tie_rules_between_groups():
    p = np.zeros((14, 1, 1, 4), np.float32)
    # voxel 0: lesion 2 scaled ties background -> background (index 0 first)
    p[2, 0, 0, 0], p[0, 0, 0, 0] = 0.1, 0.4
    # voxel 1: lesion 3 scaled ties liver (7) -> lesion (3 < 7)
    p[3, 0, 0, 1], p[7, 0, 0, 1] = 0.1, 0.4
    # voxel 2: two lesion channels tie -> the first; organs 9 and 8 tie above -> 8 at f=1
    p[5, 0, 0, 2] = p[4, 0, 0, 2] = 0.2
    p[9, 0, 0, 2] = p[8, 0, 0, 2] = 0.3
    # voxel 3: everything zero -> background
    m = lesion_sensitivity_masks(p, (1.0, 4.0))
    assert m[1.0][0, 0].tolist() == [0, 7, 8, 0]
    assert m[4.0][0, 0].tolist() == [0, 3, 4, 0]


def test_rounding_ties_for_non_power_of_two_factor():
    # two different lesion probabilities whose float32 products with f round to the same value: unscaled, channel 2
    # wins; scaled, they tie and channel 1 (first index) wins
    f = np.float32(3.0)
    a = np.float32(0.1)
    while not (a * f == np.nextafter(a, np.float32(1)) * f):
        a = np.nextafter(a, np.float32(1))
    b = np.nextafter(a, np.float32(1))
    p = np.zeros((14, 1, 1, 2), np.float32)
    p[1, 0, 0, :] = a
    p[2, 0, 0, :] = b
    p[7, 0, 0, 1] = 0.9  # voxel 1: the liver wins anyway
    m = lesion_sensitivity_masks(p, (3.0, 1.0))
    assert m[3.0][0, 0].tolist() == [1, 7]
    assert m[1.0][0, 0].tolist() == [2, 7]
    np.testing.assert_array_equal(m[3.0], scaled_argmax_reference(p, 3.0))


def test_large_volume_multiple_chunks():
    rng = np.random.default_rng(5)
    p = rng.random((14, 20, 256, 256), dtype=np.float32)  # 20 slices > one z-chunk of 16
    p[1:7] *= 0.3
    m = lesion_sensitivity_masks(p, (1.0, 4.0))
    for f in (1.0, 4.0):
        np.testing.assert_array_equal(m[f], scaled_argmax_reference(p, f))


@pytest.mark.parametrize("bad, match", [
    (np.zeros((13, 2, 2, 2), np.float32), "shape"),
    (np.zeros((14, 2, 2), np.float32), "shape"),
    (np.zeros((14, 2, 2, 2), np.int64), "floating"),
])
def test_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        lesion_sensitivity_masks(bad)


def test_bad_factor_and_nan():
    p = np.zeros((14, 2, 2, 2), np.float32)
    with pytest.raises(ValueError, match="> 0"):
        lesion_sensitivity_masks(p, (0.0,))
    p[3, 1, 1, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        lesion_sensitivity_masks(p)


@pytest.mark.parametrize("dtype", [np.float16, np.float64])
def test_other_float_dtypes_numpy(dtype):
    p = _tied_probabilities(7, dtype=dtype)
    m = lesion_sensitivity_masks(p, (1.0, 4.0, 3.0))
    for f in m:
        np.testing.assert_array_equal(m[f], scaled_argmax_reference(p, f))


def test_float64_torch():
    p = torch.from_numpy(_tied_probabilities(8, dtype=np.float64))
    m = lesion_sensitivity_masks(p, (4.0, 3.0))
    for f in m:
        assert torch.equal(m[f], scaled_argmax_reference(p, f))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_equals_brute_force():
    p = torch.from_numpy(_tied_probabilities(9, shape=(40, 64, 64))).cuda()
    m = lesion_sensitivity_masks(p, (1.0, 4.0, 3.0))
    for f in m:
        assert m[f].device == p.device
        assert torch.equal(m[f], scaled_argmax_reference(p, f))
