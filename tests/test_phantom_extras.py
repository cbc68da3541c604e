"""Phantom extras (organ detail, oral contrast, lipiodol): what they add, that they are recorded, and that the default
phantoms stay bit for bit what they were before the extras existed (the bundled demo models were trained on them)."""
import hashlib
import json

import numpy as np
import pytest
from scipy import ndimage

from nnunet_liver import labels as L
from nnunet_liver.phantom import generate_case, write_phantom_dataset
from nnunet_liver.phantom.anatomy import TISSUE_IDS, TISSUES
from nnunet_liver.phantom.cli import main as phantom_main
from nnunet_liver.phantom.extras import LIPIODOL_MIN_HU

# digests of the int16 images, the label and the truth entry of default phantoms, taken at commit 05750ef (before
# the extras): a change here changes the phantoms every test, benchmark and bundled demo model was made with
PINNED = [
    (dict(seed=0, shape=(16, 64, 64)), "010e94b0655e92171a68"),
    (dict(seed=7, shape=(20, 80, 72), misalign_mm=4.0, missing_delayed=True), "91d188d55a39db5d245c"),
    (dict(seed=3, shape=(24, 96, 96), phases=("A", "V")), "bf844b95743715e66730"),
    (dict(seed=11, shape=(16, 64, 64), lesion_types=["HCC", "Cyst"], noise=False), "736c5d2ad17c33088ca0"),
    (dict(seed=5, shape=(24, 96, 96), lesion_free=True), "4c88951dd4be0cf50ea4"),
]
SHAPE = dict(shape=(32, 128, 128))
LIRADS_TRUTH_KEYS = ("aphe", "washout", "capsule")


def _digest(case) -> str:
    h = hashlib.sha256()
    for phase, image in case.images.items():
        h.update(phase.encode())
        h.update(np.clip(np.rint(image), -32768, 32767).astype("<i2").tobytes())
    h.update(case.label.astype(np.uint8).tobytes())
    truth = case.truth()  # the LI-RADS major features each lesion is painted with were added to it later
    truth["lesions"] = [{k: v for k, v in les.items() if k not in LIRADS_TRUTH_KEYS} for les in truth["lesions"]]
    h.update(json.dumps(truth, sort_keys=True).encode())
    return h.hexdigest()[:20]


@pytest.mark.parametrize("kwargs,digest", PINNED)
def test_default_phantoms_are_pinned(kwargs, digest):
    kw = dict(kwargs)
    case = generate_case(kw.pop("seed"), **kw)
    assert _digest(case) == digest
    assert not {"organ_detail", "oral_contrast", "lipiodol"} & set(case.truth())


@pytest.fixture(scope="module")
def pair():
    """The same seed without and with every extra (an HCC to treat)."""
    kw = dict(SHAPE, lesion_types=["HCC", "Cyst"], lesion_volumes_cm3=[30.0, 5.0])
    return generate_case(4, **kw), generate_case(4, organ_detail=True, oral_contrast=True, lipiodol=True, **kw)


def test_extras_keep_the_anatomy_and_lesions(pair):
    plain, extra = pair
    assert np.array_equal(plain.label, extra.label) and plain.lesions == extra.lesions
    assert plain.enhancement == extra.enhancement and plain.noise_hu == extra.noise_hu
    assert not np.array_equal(plain.images["V"], extra.images["V"])


def test_oral_contrast_in_every_phase(pair):
    plain, extra = pair
    truth = extra.truth()["oral_contrast"]
    assert 300 <= truth["stomach_hu"] <= 600 and truth["bowel_hu"] == pytest.approx(0.6 * truth["stomach_hu"], 0.01)
    stomach = ndimage.binary_erosion(extra.label == L.STOMACH, iterations=2)
    for phase in L.PHASES:  # NC too: oral contrast is not intravenous
        bright = extra.images[phase][stomach] > 250
        assert bright.mean() > 0.3, phase
        assert (plain.images[phase][stomach] > 250).mean() == 0.0


def test_lipiodol_dense_in_every_phase(pair):
    plain, extra = pair
    truth = extra.truth()["lipiodol"]
    treated = next(les for les in extra.lesions if les["id"] == truth["lesion_id"])
    assert treated["type"] == "HCC" and truth["hu"] >= 800 and truth["voxels"] >= 0.25 * treated["num_voxels"]
    lesion = extra.label == treated["label"]
    for phase in L.PHASES:
        assert extra.images[phase][lesion].max() > LIPIODOL_MIN_HU
        assert plain.images[phase][lesion].max() < 300


def test_lipiodol_without_a_lesion_is_recorded_as_none():
    case = generate_case(2, shape=(16, 64, 64), lesion_free=True, lipiodol=True)
    assert case.truth()["lipiodol"] is None


def test_organ_detail_kidneys_and_spleen(pair):
    _, extra = pair
    counts = extra.truth()["organ_detail"]["voxels"]
    assert all(v > 0 for v in counts.values())
    # the tissues behind: cortex and medulla differ in A only, the collecting system fills in D
    hu = {name: np.asarray(TISSUES[name], float) for name in ("kidney_cortex", "kidney_medulla", "renal_pelvis",
                                                               "spleen_red", "spleen_white")}
    assert hu["kidney_cortex"][1] - hu["kidney_medulla"][1] > 100 and abs(hu["kidney_cortex"][2] -
                                                                         hu["kidney_medulla"][2]) < 30
    assert hu["renal_pelvis"][3] > 400 > hu["renal_pelvis"][2]
    assert hu["spleen_red"][1] - hu["spleen_white"][1] > 80 and abs(hu["spleen_red"][2] - hu["spleen_white"][2]) < 10
    assert TISSUE_IDS["kidney_cortex"] > TISSUE_IDS["heart"]  # appended: the default tissue ids are unchanged
    spleen = ndimage.binary_erosion(extra.label == L.SPLEEN)
    spread = {p: np.percentile(extra.images[p][spleen], 90) - np.percentile(extra.images[p][spleen], 10)
              for p in ("A", "V")}
    assert spread["A"] > spread["V"] + 40


def test_dataset_and_cli_record_the_extras(tmp_path):
    out = write_phantom_dataset(tmp_path / "Dataset906_P", 2, seed=3, shape=(16, 48, 48), spacing=(5.0, 4.0, 4.0),
                                oral_contrast=True, progress=False)
    truth = json.loads((out / "truth.json").read_text(encoding="utf-8"))
    assert truth["settings"]["oral_contrast"] is True and "lipiodol" not in truth["settings"]
    assert all("oral_contrast" in c and "lipiodol" not in c for c in truth["cases"].values())
    cli = tmp_path / "Dataset907_P"
    assert phantom_main(["-o", str(cli), "-n", "1", "--seed", "3", "--shape", "16", "48", "48", "--spacing", "5", "4",
                         "4", "--organ-detail", "--lipiodol"]) == 0
    settings = json.loads((cli / "truth.json").read_text(encoding="utf-8"))["settings"]
    assert settings["organ_detail"] is True and settings["lipiodol"] is True and "oral_contrast" not in settings
