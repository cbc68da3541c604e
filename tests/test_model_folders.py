"""The bundled model folders run under plain nnU-Net (``nnUNetv2_predict_from_modelfolder``, our trainers found
through ``nnUNet_extTrainer`` as for training) with the patch size they were trained with, and UNet-whole's
probabilities are the detection cascade's.

The references: the cascade's UNet-whole step (``LiverDetector.predict_case``: label maps of every factor, lesion
probabilities, LiverMax) and its full-volume reference (``predict_probabilities``); and, to show that the patch size
matters on this input, the same model with the planned patch size that plans.json held before the trainers recorded
the trained one.
"""
import dataclasses
import os
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

import nnunet_liver
from nnunet_liver.demo import DEMO_MIN_LESION_CM3, DEMO_SHAPE, DEMO_SPACING
from nnunet_liver.inference.model import DEMO_MODELS_DIR
from nnunet_liver.utils.io import console_script

pytestmark = pytest.mark.slow  # nnU-Net's predictor in a subprocess on the demo models

#: what plans.json held before the trainers recorded their configuration: nnU-Net's planned patch sizes
PLANNED_PATCH_SIZE = {"whole": [24, 96, 96], "patch": [16, 48, 64]}
TRAINED_PATCH_SIZE = {"whole": [16, 48, 48], "patch": [16, 64, 64]}


@pytest.fixture(scope="module")
def phantom(tmp_path_factory):
    """One demo-geometry phantom with lesions (nnU-Net raw naming), never used for training (seed 4242)."""
    from nnunet_liver.phantom import write_phantom_dataset

    folder = tmp_path_factory.mktemp("phantom") / "Dataset990_Check"
    write_phantom_dataset(folder, 1, seed=4242, shape=DEMO_SHAPE, spacing=DEMO_SPACING,
                          min_lesion_cm3=DEMO_MIN_LESION_CM3, progress=False)
    return folder / "imagesTr"


def _nnunet_predict(model_dir, images, out, tmp_path):
    """``nnUNetv2_predict_from_modelfolder`` as a user runs it (nnU-Net's defaults: test-time mirroring, step 0.5),
    with probabilities; returns {case: (probabilities (K, Z, Y, X), segmentation (Z, Y, X))}."""
    env = dict(os.environ, nnUNet_extTrainer=nnunet_liver.TRAINERS_DIR, nnUNet_compile="f", OMP_NUM_THREADS="1",
               MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    log = tmp_path / f"{os.path.basename(model_dir)}.log"
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run([console_script("nnUNetv2_predict_from_modelfolder"), "-i", str(images), "-o", str(out),
                               "-m", str(model_dir), "-f", "0", "-device", "cpu", "--save_probabilities",
                               "-npp", "1", "-nps", "1"], env=env, stdout=f, stderr=subprocess.STDOUT)
    assert proc.returncode == 0, log.read_text()[-3000:]
    results = {}
    for npz in sorted(out.glob("*.npz")):
        case = npz.name[:-len(".npz")]
        seg = sitk.GetArrayFromImage(sitk.ReadImage(str(out / f"{case}.nii.gz")))
        results[case] = (np.load(npz)["probabilities"], seg)
    assert results
    return results


def _with_patch_size(model, patch_size):
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    cm = ConfigurationManager(dict(model.configuration_manager.configuration, patch_size=list(patch_size)))
    return dataclasses.replace(model, configuration_manager=cm)


def test_plain_nnunet_runs_unet_whole_with_its_trained_patch_size_and_the_cascades_probabilities(phantom, tmp_path):
    from nnunet_liver.inference import LiverDetector
    from nnunet_liver.inference.cases import discover_cases
    from nnunet_liver.inference.model import make_predictor
    from nnunet_liver.inference.predict import predict_probabilities
    from nnunet_liver.postprocessing.patient import liver_max
    from nnunet_liver.postprocessing.seg2det import seg2det
    from nnunet_liver.postprocessing.sensitivity import lesion_sensitivity_masks

    (case_id, (probs, seg)), = _nnunet_predict(os.path.join(DEMO_MODELS_DIR, "whole"), phantom, tmp_path / "whole",
                                               tmp_path).items()
    det = LiverDetector("demo", patch_model_dir=None, factors=(1, 4), device="cpu")
    assert list(det.model.configuration_manager.patch_size) == TRAINED_PATCH_SIZE["whole"]
    (case,) = discover_cases(str(phantom), 4)
    loaded, predicted = det.predict_case(case)
    # the cascade's full-volume reference: the same probabilities
    reference = predict_probabilities(det.predictor, det.model, loaded.data, loaded.spacing)
    assert probs.shape == reference.shape == (14,) + loaded.data.shape[1:]
    np.testing.assert_allclose(probs, reference, rtol=0, atol=1e-6)
    # the cascade's UNet-whole step: every factor's label map, LiverMax and the lesions' probabilities
    maps = lesion_sensitivity_masks(probs, (1.0, 4.0))
    np.testing.assert_array_equal(seg, predicted.maps[1.0])
    for f in (1.0, 4.0):
        np.testing.assert_array_equal(maps[f], predicted.maps[f])
    assert predicted.liver_max == pytest.approx(liver_max(probs, maps[1.0]), abs=1e-6)
    dense = seg2det(maps[4.0], loaded.spacing, probabilities=probs)
    sparse = seg2det(predicted.maps[4.0], loaded.spacing, probabilities=predicted.lesion_probabilities)
    assert len(dense) == len(sparse) >= 1
    for a, b in zip(dense, sparse):
        assert b.score == pytest.approx(a.score, abs=1e-6) and b.volume_cm3 == a.volume_cm3
    # the planned patch size (what plain nnU-Net ran before) gives other probabilities on this case
    planned = _with_patch_size(det.model, PLANNED_PATCH_SIZE["whole"])
    other = predict_probabilities(make_predictor(planned), planned, loaded.data, loaded.spacing)
    assert np.abs(other - probs).max() > 1e-2


def test_plain_nnunet_runs_unet_patch_with_its_trained_patch_size(phantom, tmp_path):
    from nnunet_liver.inference.cases import discover_cases, load_case
    from nnunet_liver.inference.model import load_model, make_predictor
    from nnunet_liver.inference.predict import predict_probabilities

    (case_id, (probs, seg)), = _nnunet_predict(os.path.join(DEMO_MODELS_DIR, "patch"), phantom, tmp_path / "patch",
                                               tmp_path).items()
    model = load_model("demo", which="patch")
    assert list(model.configuration_manager.patch_size) == TRAINED_PATCH_SIZE["patch"]
    (case,) = discover_cases(str(phantom), 4)
    loaded = load_case(case, model.channel_names, allow_missing=False)
    ours = predict_probabilities(make_predictor(model), model, loaded.data, loaded.spacing)
    assert probs.shape == ours.shape == (8,) + loaded.data.shape[1:]
    np.testing.assert_allclose(probs, ours, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(seg, ours.argmax(0))
    planned = _with_patch_size(model, PLANNED_PATCH_SIZE["patch"])
    other = predict_probabilities(make_predictor(planned), planned, loaded.data, loaded.spacing)
    assert np.abs(other - probs).max() > 1e-2
