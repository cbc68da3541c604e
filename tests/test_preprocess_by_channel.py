"""UNet-whole's preprocessing one channel at a time equals nnU-Net's ``run_case_npy`` bit for bit, with less memory."""
import copy
import tracemalloc
from types import SimpleNamespace

import numpy as np
import pytest
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

from nnunet_liver.inference.predict import _channelwise_exact, preprocess_like_training

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
    assert _channelwise_exact(model.configuration_manager.preprocessor_class(), model.configuration_manager)
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
    assert not _channelwise_exact(Custom(), model.configuration_manager)
    model.configuration_manager.configuration["resampling_fn_data"] = "resample_torch_fornnunet"
    assert not _channelwise_exact(DefaultPreprocessor(), model.configuration_manager)


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
