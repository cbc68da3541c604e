"""The slab path (predict.maps_from_logits) against nnU-Net's whole-volume export followed by the dense cascade.

Reference: ``convert_predicted_logits_to_segmentation_with_correct_shape(return_probabilities=True)`` (nnU-Net's
own resampling, softmax, cropping reversal and transpose), then ``lesion_sensitivity_masks``, seg2det on the dense
probabilities and ``liver_max``. Plans are the demo model's, with spacing, transpose and resampling settings changed
per case, so nnU-Net's separate-z, 3D (orders 1 and 3), identity and torch resamplers all run.
"""
import copy
import json
import os

import numpy as np
import pytest
import torch

from nnunet_liver import nnunet_mirror
from nnunet_liver.inference.model import DEMO_MODELS_DIR
from nnunet_liver.inference.predict import maps_from_logits
from nnunet_liver.nnunet_mirror import SlabResampler
from nnunet_liver.postprocessing.patient import liver_max
from nnunet_liver.postprocessing.seg2det import seg2det
from nnunet_liver.postprocessing.sensitivity import LesionProbabilities, lesion_sensitivity_masks

FACTORS = (1.0, 4.0)


def _managers(spacing=(6.0, 4.0, 4.0), transpose=(0, 1, 2), fn="resample_data_or_seg_to_shape", kwargs=None):
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    with open(os.path.join(DEMO_MODELS_DIR, "whole", "plans.json"), encoding="utf-8") as f:
        plans = json.load(f)
    with open(os.path.join(DEMO_MODELS_DIR, "whole", "dataset.json"), encoding="utf-8") as f:
        dataset_json = json.load(f)
    plans = copy.deepcopy(plans)
    plans["transpose_forward"] = list(transpose)
    plans["transpose_backward"] = [int(i) for i in np.argsort(transpose)]
    cfg = plans["configurations"]["3d_fullres"]
    cfg["spacing"] = list(spacing)
    cfg["resampling_fn_probabilities"] = fn
    cfg["resampling_fn_probabilities_kwargs"] = kwargs if kwargs is not None else \
        {"is_seg": False, "order": 1, "order_z": 0, "force_separate_z": None}
    pm = PlansManager(plans)
    return pm, pm.get_configuration("3d_fullres"), pm.get_label_manager(dataset_json)


def _case(shape, spacing, net_shape, transpose=(0, 1, 2), bbox=None, seed=0):
    """Random logits on the network grid (lesion channels boosted so lesions of both factors appear) + properties.

    ``shape``/``spacing`` are the input's (z, y, x); ``bbox`` is the cropping box in the input's axis order.
    """
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(14,) + tuple(net_shape)).astype(np.float32) * 2
    logits[7] += 1.5  # liver everywhere-ish
    logits[1:7] -= 0.5
    if bbox is None:
        bbox = [[0, s] for s in shape]
    t = list(transpose)
    props = {"spacing": list(spacing), "shape_before_cropping": [shape[i] for i in t],
             "bbox_used_for_cropping": [list(bbox[i]) for i in t],
             "shape_after_cropping_and_before_resampling": [bbox[i][1] - bbox[i][0] for i in t]}
    return logits, props


def _reference(logits, pm, cm, lm, props):
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape

    _, probs = convert_predicted_logits_to_segmentation_with_correct_shape(
        torch.from_numpy(logits.copy()), pm, cm, lm, copy.deepcopy(props), return_probabilities=True)
    return np.ascontiguousarray(probs, dtype=np.float32)


def _compare(logits, pm, cm, lm, props, spacing, as_torch=False):
    """The slab path and the reference on one case: ``(got, probs, ref_maps)``.

    ``as_torch``: torch logits, and the slabs kept as torch tensors (the code path of a CUDA device)."""
    probs = _reference(logits, pm, cm, lm, props)
    ref_maps = lesion_sensitivity_masks(probs, FACTORS)
    inp = torch.from_numpy(logits) if as_torch else logits
    got = maps_from_logits(inp, pm, cm, lm, copy.deepcopy(props), FACTORS, numpy_on_host=not as_torch)
    return got, probs, ref_maps


def _problems(got, probs, ref_maps, spacing) -> list:
    """Every way the slab path's output differs from the reference (empty: identical), and the lesions compared.

    Maps and every lesion field are compared exactly; score, mean probability and LiverMax with a relative tolerance
    of 1e-6: torch's softmax of a slab may differ from the whole volume's in the last bit (its vectorised and scalar
    loops split the voxels differently)."""
    problems, n = [], 0
    for f in FACTORS:
        m = got.maps[f]
        if m.dtype != np.uint8 or m.shape != probs.shape[1:]:
            problems.append(f"factor {f}: map {m.dtype} {m.shape}, expected uint8 {probs.shape[1:]}")
        elif not np.array_equal(m, ref_maps[f]):
            problems.append(f"factor {f}: {int((m != ref_maps[f]).sum())} voxels differ")
    if got.liver_max != pytest.approx(liver_max(probs, ref_maps[1.0]), rel=1e-6, abs=1e-12):
        problems.append(f"LiverMax {got.liver_max} != {liver_max(probs, ref_maps[1.0])}")
    for f in FACTORS:
        dense = [l.to_dict() for l in seg2det(ref_maps[f], spacing, probabilities=probs)]
        sparse = [l.to_dict() for l in seg2det(got.maps[f], spacing, probabilities=got.lesion_probabilities)]
        if len(dense) != len(sparse):
            problems.append(f"factor {f}: {len(sparse)} lesions, expected {len(dense)}")
        for a, b in zip(dense, sparse):
            for key in ("score", "mean_probability"):
                if b.pop(key) != pytest.approx(a.pop(key), rel=1e-6):
                    problems.append(f"factor {f}, lesion {a['id']}: {key} differs")
            if a != b:
                problems.append(f"factor {f}, lesion {a['id']}: {sorted(k for k in a if a[k] != b.get(k))} differ")
        n += len(dense)
    return problems, n


@pytest.fixture
def small_slabs(monkeypatch):
    """Slabs of a few rows, so every case crosses many slab boundaries."""
    monkeypatch.setattr(nnunet_mirror, "_SLAB_VOXELS_CPU", 3 * 64)


@pytest.mark.parametrize("order_z", [0, 1])
def test_separate_z_equals_nnunet(small_slabs, order_z):
    spacing = (2.5, 0.8, 0.8)  # anisotropic input: nnU-Net resamples in-plane per slice, then along z
    pm, cm, lm = _managers(kwargs={"is_seg": False, "order": 1, "order_z": order_z, "force_separate_z": None})
    logits, props = _case((21, 12, 14), spacing, (9, 5, 6))
    for as_torch in (False, True):
        got, probs, ref_maps = _compare(logits, pm, cm, lm, props, spacing, as_torch=as_torch)
        assert got.slab_mode == "separate_z"
        problems, n = _problems(got, probs, ref_maps, spacing)
        assert problems == [] and n >= 1


@pytest.mark.parametrize("order", [1, 3])
def test_3d_zoom_equals_nnunet(small_slabs, order):
    spacing = (1.0, 0.75, 0.75)  # isotropic enough: one 3D resize
    pm, cm, lm = _managers(kwargs={"is_seg": False, "order": order, "order_z": 0, "force_separate_z": None})
    logits, props = _case((19, 13, 11), spacing, (6, 5, 4), seed=1)
    got, probs, ref_maps = _compare(logits, pm, cm, lm, props, spacing)
    assert got.slab_mode == "zoom"
    problems, n = _problems(got, probs, ref_maps, spacing)
    assert problems == [] and n >= 1


def test_cropping_box_and_torch_input(small_slabs):
    spacing = (1.0, 0.75, 0.75)
    pm, cm, lm = _managers()
    bbox = [[2, 15], [3, 12], [1, 10]]
    logits, props = _case((18, 14, 12), spacing, (5, 4, 4), bbox=bbox, seed=2)
    got, probs, ref_maps = _compare(logits, pm, cm, lm, props, spacing, as_torch=True)
    assert got.slab_mode == "zoom"
    problems, n = _problems(got, probs, ref_maps, spacing)
    assert problems == [] and n >= 1
    outside = np.ones(probs.shape[1:], bool)
    outside[2:15, 3:12, 1:10] = False
    assert not got.maps[4.0][outside].any()  # background outside the cropping box


@pytest.mark.parametrize("transpose", [(2, 0, 1), (1, 2, 0)])
def test_transposed_plan(small_slabs, transpose):
    spacing = (1.0, 0.75, 0.8)
    pm, cm, lm = _managers(spacing=(4.0, 6.0, 4.0), transpose=transpose)
    bbox = [[1, 16], [0, 13], [2, 11]]
    net = (4, 5, 6)
    logits, props = _case((17, 13, 12), spacing, net, transpose=transpose, bbox=bbox, seed=3)
    for as_torch in (False, True):
        problems, n = _problems(*_compare(logits, pm, cm, lm, props, spacing, as_torch=as_torch), spacing)
        assert problems == [] and n >= 1


def test_identity_and_torch_resampler(small_slabs):
    spacing = (6.0, 4.0, 4.0)  # the network's own grid: nnU-Net returns the logits unchanged
    pm, cm, lm = _managers()
    logits, props = _case((7, 9, 8), spacing, (7, 9, 8), seed=4)
    got, probs, ref_maps = _compare(logits, pm, cm, lm, props, spacing)
    assert got.slab_mode == "identity"
    problems, n = _problems(got, probs, ref_maps, spacing)
    assert problems == [] and n >= 1
    spacing = (1.0, 0.75, 0.75)
    pm, cm, lm = _managers(fn="resample_torch_fornnunet", kwargs={"is_seg": False, "force_separate_z": None,
                                                                  "memefficient_seg_resampling": False})
    logits, props = _case((15, 12, 10), spacing, (5, 4, 4), seed=5)
    got, probs, ref_maps = _compare(logits, pm, cm, lm, props, spacing, as_torch=True)
    assert got.slab_mode == "whole"
    problems, n = _problems(got, probs, ref_maps, spacing)
    assert problems == [] and n >= 1


def test_comparison_catches_a_flipped_voxel_and_a_shifted_score(small_slabs):
    """The comparison the tests above rely on reports a single changed voxel and a changed lesion probability."""
    spacing = (1.0, 0.75, 0.75)
    pm, cm, lm = _managers()
    logits, props = _case((19, 13, 11), spacing, (6, 5, 4), seed=1)
    got, probs, ref_maps = _compare(logits, pm, cm, lm, props, spacing)
    flipped = copy.deepcopy(got)
    lesion = (flipped.maps[4.0] >= 1) & (flipped.maps[4.0] <= 6)
    z, y, x = map(int, np.argwhere(lesion)[0])
    flipped.maps[4.0][z, y, x] = 7  # one lesion voxel becomes liver
    problems, _ = _problems(flipped, probs, ref_maps, spacing)
    assert "factor 4.0: 1 voxels differ" in problems
    shifted = copy.deepcopy(got)
    shifted.liver_max = {k: v * 1.01 + 1e-3 for k, v in got.liver_max.items()}
    problems, _ = _problems(shifted, probs, ref_maps, spacing)
    assert any(p.startswith("LiverMax") for p in problems)


def test_slab_resampler_bitwise(small_slabs):
    """Each resampled slab is bit-for-bit nnU-Net's whole-volume resampling (before any softmax)."""
    for spacing, kwargs, shape, net in [((2.5, 0.8, 0.8), {"order": 3, "order_z": 1}, (23, 11, 9), (10, 5, 4)),
                                        ((3.1, 0.9, 0.9), {"order": 1, "order_z": 0}, (8, 10, 10), (11, 5, 4)),
                                        ((1.0, 1.0, 1.0), {"order": 3, "order_z": 0}, (14, 9, 10), (5, 4, 4))]:
        kw = {"is_seg": False, "force_separate_z": None, **kwargs}
        pm, cm, lm = _managers(kwargs=kw)
        logits, props = _case(shape, spacing, net)
        whole = cm.resampling_fn_probabilities(logits.copy(), props["shape_after_cropping_and_before_resampling"],
                                               list(cm.spacing), list(spacing))
        res = SlabResampler(logits, pm, cm, props)
        assert res.mode in ("separate_z", "zoom")
        got = np.concatenate([res.resample(k0, k1) for k0, k1 in res.slabs()], axis=1)
        assert got.dtype == whole.dtype
        np.testing.assert_array_equal(got, whole)


@pytest.fixture
def fresh_zoom_check():
    """The once-per-process check of scipy's private zoom routine runs again in the test, and after it."""
    nnunet_mirror._scipy_zoom_rows.cache_clear()
    yield
    nnunet_mirror._scipy_zoom_rows.cache_clear()


def _without_offset(x, zoom, shift, out, *rest):  # a scipy whose zoom_shift lost the output offset
    if shift is not None:
        raise TypeError("zoom_shift(): argument 'shift' must be None")
    _ORIGINAL_ZOOM_SHIFT(x, zoom, shift, out, *rest)


def _off_by_a_bit(x, zoom, shift, out, *rest):  # a scipy whose zoom_shift computes something else with an offset
    _ORIGINAL_ZOOM_SHIFT(x, zoom, shift, out, *rest)
    if shift is not None:
        out += 1e-12


def _original_zoom_shift():
    from scipy.ndimage import _nd_image

    return _nd_image.zoom_shift


_ORIGINAL_ZOOM_SHIFT = _original_zoom_shift()


def _no_private_api(self):
    raise ImportError("cannot import name '_prepad_for_spline_filter'")


@pytest.mark.parametrize("change", ["removed", "arguments", "values"])
def test_a_changed_scipy_zoom_routine_falls_back_to_the_public_path(small_slabs, fresh_zoom_check, monkeypatch,
                                                                     change):
    """The 3D slab rule calls scipy's private routines (``zoom_shift`` with an output offset); should a scipy release
    remove them, change their arguments or their values, the check against the public ``scipy.ndimage.zoom``
    fails and nnU-Net's whole-volume resampling runs instead: the same maps and lesions."""
    from scipy.ndimage import _nd_image

    if change == "removed":
        monkeypatch.setattr(nnunet_mirror._ZoomRows, "__init__", _no_private_api)
    else:
        monkeypatch.setattr(_nd_image, "zoom_shift", _without_offset if change == "arguments" else _off_by_a_bit)
    spacing = (1.0, 0.75, 0.75)
    pm, cm, lm = _managers(kwargs={"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None})
    logits, props = _case((19, 13, 11), spacing, (6, 5, 4), seed=1)
    got, probs, ref_maps = _compare(logits, pm, cm, lm, props, spacing)
    assert got.slab_mode == "whole"
    problems, n = _problems(got, probs, ref_maps, spacing)
    assert problems == [] and n >= 1
    monkeypatch.undo()
    nnunet_mirror._scipy_zoom_rows.cache_clear()
    assert SlabResampler(logits, pm, cm, props).mode == "zoom"  # the installed scipy passes the check


def test_no_lesion_and_no_liver(small_slabs):
    spacing = (1.0, 0.75, 0.75)
    pm, cm, lm = _managers()
    logits = np.zeros((14, 4, 4, 4), np.float32)
    logits[0] = 5.0  # background everywhere
    _, props = _case((9, 8, 8), spacing, (4, 4, 4))
    got = maps_from_logits(logits, pm, cm, lm, props, FACTORS)
    assert all(not m.any() for m in got.maps.values())
    assert set(got.liver_max.values()) == {0.0}
    assert got.lesion_probabilities.flat_index.size == 0
    assert seg2det(got.maps[4.0], spacing, probabilities=got.lesion_probabilities) == []


def test_lesion_probabilities_rejects_missing_voxels():
    lp = LesionProbabilities((2, 3, 3), np.array([0, 4]), np.zeros((6, 2), np.float32))
    mask = np.ones((1, 2, 2), bool)
    with pytest.raises(ValueError, match="no stored probability"):
        lp.lesion_values((slice(0, 1), slice(0, 2), slice(0, 2)), mask)
    with pytest.raises(ValueError, match="increasing"):
        LesionProbabilities((2, 3, 3), np.array([4, 0]), np.zeros((6, 2), np.float32))
