"""UNet-whole's preprocessing one channel at a time equals nnU-Net's ``run_case_npy`` bit for bit, with less memory;
a label map resampled like the image (``resample_seg_like``) equals ``run_case_npy``'s label map."""
import copy
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_liver.inference.predict import preprocess_like_training
from nnunet_liver.nnunet_mirror import channelwise_exact, resample_seg_like

STATS = [{"max": 3000.0, "mean": 60.0 + 10 * c, "median": 55.0, "min": -1024.0, "percentile_00_5": -200.0 + c,
          "percentile_99_5": 300.0 + 7 * c, "std": 40.0 + c} for c in range(4)]


def fake_model(spacing, scheme="CTNormalization", mask=False, transpose=(0, 1, 2), order=3, channels=4):
    tf = list(transpose)
    plans = {
        "dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans", "image_reader_writer": "SimpleITKIO",
        "original_median_spacing_after_transp": list(spacing), "original_median_shape_after_transp": [8, 8, 8],
        "transpose_forward": tf, "transpose_backward": [tf.index(i) for i in range(3)],
        "configurations": {"3d_fullres": {
            "data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": [8, 8, 8], "median_image_size_in_voxels": [8, 8, 8], "spacing": list(spacing),
            "normalization_schemes": [scheme] * channels, "use_mask_for_norm": [mask] * channels,
            "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": order, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []},
            "batch_dice": False}},
        "experiment_planner_used": "test", "label_manager": "LabelManager",
        "foreground_intensity_properties_per_channel": {str(c): STATS[c] for c in range(channels)}}
    pm = PlansManager(plans)
    dataset_json = {"channel_names": {str(c): n for c, n in enumerate("NC A V D".split()[:channels])},
                    "labels": {"background": 0, "liver": 1}, "numTraining": 1, "file_ending": ".nii.gz"}
    return SimpleNamespace(plans_manager=pm, configuration_manager=pm.get_configuration("3d_fullres"),
                           dataset_json=dataset_json)


def ct_case(shape=(14, 30, 26), dtype=np.int16, border=True, seed=0):
    """Four phases of whole HU, zero outside a box when ``border`` (nnU-Net crops to the nonzero box)."""
    rng = np.random.default_rng(seed)
    data = np.zeros((4,) + shape, np.float32)
    inner = (slice(None),) + ((slice(2, -1), slice(3, -2), slice(1, -4)) if border else (slice(None),) * 3)
    data[inner] = rng.integers(-1024, 400, size=data[inner].shape)
    data[:, 5:9, 10:16, 8:14] += 150  # a bright block: resampling overshoot and clipping
    data[1, 6, 12, 10] = 0  # a zero inside: filled by the nonzero mask's hole filling
    return data.astype(dtype)


CASES = {
    "CT, 3D resampling, crop": (dict(spacing=[2.0, 1.5, 1.5]), (1.0, 0.8, 0.8), {}),
    "CT, float32 input": (dict(spacing=[2.0, 1.5, 1.5]), (1.0, 0.8, 0.8), dict(dtype=np.float32)),
    "masked z-score, separate z": (dict(spacing=[4.0, 1.0, 1.0], scheme="ZScoreNormalization", mask=True),
                                   (2.5, 0.7, 0.7), {}),
    "CT, transposed plan": (dict(spacing=[1.6, 1.2, 2.0], transpose=(2, 0, 1)), (1.0, 0.8, 0.9), {}),
    "no resampling": (dict(spacing=[2.5, 0.9, 0.9]), (2.5, 0.9, 0.9), dict(border=False)),
    "linear, upsampling": (dict(spacing=[0.8, 0.6, 0.6], order=1), (1.0, 0.8, 0.8), {}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_equals_run_case_npy(name):
    plan_kw, spacing, case_kw = CASES[name]
    model = fake_model(**plan_kw)
    data = ct_case(**case_kw)
    before = data.copy()
    assert channelwise_exact(model.configuration_manager.preprocessor_class(), model.configuration_manager)
    ours, _, props = preprocess_like_training(model, data, spacing)
    ref, _, ref_props = DefaultPreprocessor(verbose=False).run_case_npy(
        data, None, {"spacing": list(spacing)}, model.plans_manager, model.configuration_manager,
        model.dataset_json)
    np.testing.assert_array_equal(data, before)  # the case is not modified
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert np.array_equal(ours, ref)  # bit for bit
    for key in ("shape_before_cropping", "bbox_used_for_cropping", "shape_after_cropping_and_before_resampling",
                "spacing"):
        assert np.array_equal(np.asarray(props[key]), np.asarray(ref_props[key])), key
    if case_kw.get("border", True):
        assert tuple(props["shape_after_cropping_and_before_resampling"]) != tuple(props["shape_before_cropping"])


def labels_case(shape=(14, 30, 26), seed=0):
    """(1, Z, Y, X) labels 1..5 painted as boxes on 1 (no 0: nnU-Net marks zeros outside the nonzero mask -1)."""
    rng = np.random.default_rng(seed)
    seg = np.ones((1,) + shape, np.int16)
    for label in range(2, 6):
        lo = [int(rng.integers(0, s - 3)) for s in shape]
        hi = [int(lo[i] + rng.integers(2, max(3, shape[i] // 2))) for i in range(3)]
        seg[0, lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = label
    seg[0, 7, 12, 10] = 5  # a single voxel: per-label resampling may drop it
    return seg


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("order", [None, 0])
def test_resample_seg_like_equals_run_case_npy(name, order):
    """The label map ``run_case_npy`` resamples with the image, from the image's properties alone: the plans' own
    label resampling (``order=None``), or nearest neighbour (``order=0``, as nnU-Net resamples with
    ``resampling_fn_seg_kwargs`` order 0)."""
    plan_kw, spacing, case_kw = CASES[name]
    model = fake_model(**plan_kw)
    data, seg = ct_case(**case_kw), labels_case()
    reference = model
    if order == 0:
        reference = fake_model(**plan_kw)
        kwargs = reference.configuration_manager.configuration["resampling_fn_seg_kwargs"]
        kwargs.update(order=0, order_z=0)
    _, ref_seg, props = DefaultPreprocessor(verbose=False).run_case_npy(
        data, seg, {"spacing": list(spacing)}, reference.plans_manager, reference.configuration_manager,
        reference.dataset_json)
    assert ref_seg.min() >= 1  # no -1: the comparison covers every voxel
    before = seg.copy()
    got = resample_seg_like(seg, props, ref_seg.shape[1:], model.plans_manager, model.configuration_manager,
                            order=order)
    np.testing.assert_array_equal(seg, before)
    assert got.shape == ref_seg.shape
    np.testing.assert_array_equal(got, ref_seg)
    # the image's own properties, as preprocess_like_training hands them over
    image, seg_pp, own = preprocess_like_training(model, data, spacing, seg)
    if order is None:
        np.testing.assert_array_equal(seg_pp, ref_seg)
    assert [list(b) for b in own["bbox_used_for_cropping"]] == [list(b) for b in props["bbox_used_for_cropping"]]


def test_resample_seg_like_tells_the_label_resampling_apart():
    """Per-label linear and nearest neighbour differ on random labels (so the two pins above are not the same
    test), and a shifted cropping box changes the result."""
    model = fake_model(spacing=[2.0, 1.5, 1.5])
    data = ct_case()
    seg = np.random.default_rng(3).integers(1, 6, size=(1,) + data.shape[1:]).astype(np.int16)
    _, ref_seg, props = DefaultPreprocessor(verbose=False).run_case_npy(
        data, seg, {"spacing": [1.0, 0.8, 0.8]}, model.plans_manager, model.configuration_manager, model.dataset_json)
    pm, cm = model.plans_manager, model.configuration_manager
    nearest = resample_seg_like(seg, props, ref_seg.shape[1:], pm, cm, order=0)
    assert (nearest != ref_seg).sum() > 0
    shifted = copy.deepcopy(props)
    shifted["bbox_used_for_cropping"][1] = [b + 1 for b in shifted["bbox_used_for_cropping"][1]]
    assert (resample_seg_like(seg, shifted, ref_seg.shape[1:], pm, cm) != ref_seg).sum() > 0


def test_a_changed_channel_scheme_changes_the_output():
    """The per-channel normaliser really is channel c's: swapping the statistics of two channels changes them."""
    model = fake_model(spacing=[2.0, 1.5, 1.5])
    data = ct_case()
    a, _, _ = preprocess_like_training(model, data, (1.0, 0.8, 0.8))
    swapped = fake_model(spacing=[2.0, 1.5, 1.5])
    fg = swapped.plans_manager.plans["foreground_intensity_properties_per_channel"]
    fg["0"], fg["3"] = copy.deepcopy(fg["3"]), copy.deepcopy(fg["0"])
    b, _, _ = preprocess_like_training(swapped, data, (1.0, 0.8, 0.8))
    assert np.array_equal(a[1:3], b[1:3]) and not np.array_equal(a[0], b[0]) and not np.array_equal(a[3], b[3])


def test_a_preprocessor_subclass_runs_nnunets_own_path():
    class Custom(DefaultPreprocessor):
        pass

    model = fake_model(spacing=[2.0, 1.5, 1.5])
    assert not channelwise_exact(Custom(), model.configuration_manager)
    model.configuration_manager.configuration["resampling_fn_data"] = "resample_torch_fornnunet"
    assert not channelwise_exact(DefaultPreprocessor(), model.configuration_manager)


def _peak_bytes(fn):
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_peak_memory_is_a_fraction_of_run_case_npy():
    """Allocation peaks (numpy reports its buffers to tracemalloc), not time: per channel, the float32 and float64
    copies of the case exist for one channel at a time."""
    model = fake_model(spacing=[2.0, 1.5, 1.5])
    data = ct_case(shape=(40, 96, 96))
    ours = _peak_bytes(lambda: preprocess_like_training(model, data, (1.0, 0.8, 0.8)))
    ref = _peak_bytes(lambda: DefaultPreprocessor(verbose=False).run_case_npy(
        data, None, {"spacing": [1.0, 0.8, 0.8]}, model.plans_manager, model.configuration_manager,
        model.dataset_json))
    case_f32 = data.size * 4
    # nnU-Net holds a float32 and a float64 copy of all four channels (3 x the float32 case) while it resamples each
    # channel (scipy's zoom: several float64 copies of one channel, in both paths); here one channel's copies exist
    assert ref > 3 * case_f32
    assert ref - ours > 1.5 * case_f32
