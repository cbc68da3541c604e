"""Trainers: dataset checks, network factories, data loaders; slow: real nnU-Net training and prediction on CPU."""
import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch

from nnunetv2.utilities.label_handling.label_handling import LabelManager
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

import nnunet_liver
from nnunet_liver.labels import (MISSING_PHASE_VALUE, PATCH_LIVER, dataset_json_labels,
                                 patch_dataset_json_labels)
from nnunet_liver.trainers.liver_dataloading import LesionOversamplingDataLoader, LesionShuffleDataLoader
from nnunet_liver.trainers.liver_networks import IterativeFusionModule, tiny_configuration
from nnunet_liver.trainers.liver_patch_trainer import LesionShufflePatchTrainer, with_patch_size
from nnunet_liver.trainers.liver_tiny_trainers import LiverIFMTrainer_tiny
from nnunet_liver.trainers.liver_trainers import LiverIFMTrainer, LiverWholeTrainer, check_labels, phase_order

ARCH = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
        "arch_kwargs": {"n_stages": 5, "features_per_stage": [32, 64, 128, 256, 320],
                        "conv_op": "torch.nn.modules.conv.Conv3d", "kernel_sizes": [[3, 3, 3]] * 5,
                        "strides": [[1, 1, 1], [2, 2, 2], [2, 2, 2], [2, 1, 2], [2, 1, 2]],
                        "n_conv_per_stage": [2] * 5, "n_conv_per_stage_decoder": [2] * 4, "conv_bias": True,
                        "norm_op": "torch.nn.modules.instancenorm.InstanceNorm3d",
                        "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                        "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
        "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]}


def plans():
    return {"dataset_name": "Dataset999_X", "plans_name": "nnUNetPlans", "transpose_forward": [1, 0, 2],
            "transpose_backward": [1, 0, 2], "image_reader_writer": "SimpleITKIO",
            "label_manager": "LabelManager",
            "configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "batch_size": 2,
                                              "patch_size": [64, 16, 64], "spacing": [6.0, 5.0, 6.0],
                                              "architecture": ARCH}}}


def whole_json(**over):
    d = {"channel_names": {"0": "NC", "1": "A", "2": "V", "3": "D"}, "labels": dataset_json_labels(),
         "numTraining": 2, "file_ending": ".nii.gz"}
    d.update(over)
    return d


def test_check_labels_accepts_scheme_and_names_the_difference():
    check_labels(whole_json(), dataset_json_labels(), "13-class")
    bad = dict(dataset_json_labels())
    bad["tumour"] = bad.pop("HCC")
    with pytest.raises(ValueError, match=r"missing or different \[\('HCC', 1\)\].*unexpected \[\('tumour', 1\)\]"):
        check_labels(whole_json(labels=bad), dataset_json_labels(), "13-class")
    for trainer in (LiverWholeTrainer, LiverIFMTrainer, LiverIFMTrainer_tiny):
        with pytest.raises(ValueError, match="not the 13-class whole-CT scheme"):
            trainer(plans(), "3d_fullres", 0, whole_json(labels={"background": 0, "liver": 1}),
                    torch.device("cpu"))
    with pytest.raises(ValueError, match="patch-model"):
        LesionShufflePatchTrainer(plans(), "3d_fullres", 0, whole_json(), torch.device("cpu"))


@pytest.mark.parametrize("names,ok", [
    ({"0": "NC", "1": "A", "2": "V", "3": "D"}, ("NC", "A", "V", "D")),
    ({"0": "nc"}, ("NC",)),
    ({"0": "A", "1": "V"}, ("A", "V")),
    ({"1": "D", "0": "V"}, ("V", "D")),
    ({"0": "V", "1": "A"}, "time order"),
    ({"0": "NC", "1": "T1"}, "unknown"),
    ({"0": "A", "1": "A"}, "repeated"),
])
def test_phase_order(names, ok):
    if isinstance(ok, tuple):
        assert phase_order({"channel_names": names}) == ok
    else:
        with pytest.raises(ValueError, match=ok if ok != "repeated" else "distinct"):
            phase_order({"channel_names": names})


def test_ifm_network_from_plans_and_tiny_configuration():
    pm = PlansManager(plans())
    cm = pm.get_configuration("3d_fullres")
    net = LiverIFMTrainer.build_network_architecture(pm, cm, 4, 14, True)
    ifms = [m for m in net.modules() if isinstance(m, IterativeFusionModule)]
    assert len(ifms) == 1 and ifms[0].out_channels == 32 and ifms[0].num_phases == 4
    tiny = tiny_configuration(cm, transpose_forward=pm.transpose_forward)
    assert tiny.network_arch_init_kwargs["features_per_stage"] == [4, 8, 16]
    assert tiny.patch_size == [32, 16, 32]  # (16, 32, 32) zyx in nnU-Net's transposed axis order, min with plan
    # idempotent: the predictor (tiny of the saved plans) builds the network the trainer trained
    assert tiny_configuration(tiny, transpose_forward=[1, 0, 2]).configuration == tiny.configuration
    assert tiny_configuration(tiny).configuration["architecture"] == tiny.configuration["architecture"]
    assert cm.network_arch_init_kwargs["n_stages"] == 5  # pure
    small = LiverIFMTrainer_tiny.build_network_architecture(pm, cm, 4, 14, True)
    x = torch.randn(1, 4, 32, 16, 32)
    x[:, 3] = -2.0
    out = small(x)
    assert len(out) == 2 and out[0].shape == (1, 14, 32, 16, 32)
    small.decoder.deep_supervision = False
    assert small(x).shape == (1, 14, 32, 16, 32)
    # the configuration each trainer trains with (detection applies the network with it): pure, from the plans
    assert LiverIFMTrainer.training_configuration(pm, cm) is cm
    assert LiverIFMTrainer_tiny.training_configuration(pm, cm).configuration == tiny.configuration
    from nnunet_liver.trainers.liver_demo_trainers import DEMO_WHOLE_PATCH_SIZE, LiverIFMTrainer_demo
    demo = LiverIFMTrainer_demo.training_configuration(pm, cm)
    assert demo.patch_size == [min(p, q) for p, q in zip(cm.patch_size, [DEMO_WHOLE_PATCH_SIZE[i] for i in (1, 0, 2)])]
    assert demo.network_arch_init_kwargs["features_per_stage"] == [8, 16, 32, 64]
    assert cm.patch_size == [64, 16, 64]
    patch_cm = with_patch_size(cm, (16, 128, 128), pm.transpose_forward)
    assert patch_cm.patch_size == [128, 16, 128]
    assert with_patch_size(cm, (16, 100, 128), pm.transpose_forward) is None


TRAINER_PATCH_SIZES = {"LiverIFMTrainer": [64, 16, 64], "LiverIFMTrainer_tiny": [32, 16, 32],
                       "LiverIFMTrainer_demo": [48, 16, 48], "LesionShufflePatchTrainer": [128, 16, 128],
                       "LesionShufflePatchTrainer_tiny": [32, 16, 32], "LesionShufflePatchTrainer_demo": [64, 16, 64]}


@pytest.mark.parametrize("name", list(TRAINER_PATCH_SIZES))
def test_trainers_record_their_configuration_in_their_plans(name, tmp_path, monkeypatch):
    """A trainer trains with ``training_configuration`` and writes it into its plans under the configuration's own
    name (the plans nnU-Net saves with the model and in the checkpoint's init_args): nnU-Net's PlansManager then
    resolves that configuration to exactly the trained one, which the hook leaves as it is (how ``load_model``
    tells such a folder from an old one); nothing else in the plans changes."""
    import copy

    from nnunet_liver.trainers import liver_demo_trainers, liver_patch_trainer, liver_tiny_trainers

    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    cls = next(getattr(m, name) for m in (liver_demo_trainers, liver_patch_trainer, liver_tiny_trainers,
                                         nnunet_liver.trainers.liver_trainers) if hasattr(m, name))
    p = plans()
    p["continue_training"] = False
    before = copy.deepcopy(p)
    before.pop("continue_training")
    patch = "Patch" in name
    trainer = cls(p, "3d_fullres", 0, whole_json(labels=patch_dataset_json_labels()) if patch else whole_json(),
                  torch.device("cpu"))
    planned = PlansManager(before).get_configuration("3d_fullres")
    assert trainer.planned_configuration.configuration == planned.configuration
    trained = cls.training_configuration(PlansManager(before), planned)
    assert list(trained.patch_size) == TRAINER_PATCH_SIZES[name]
    assert trainer.configuration_manager.configuration == trained.configuration
    assert trainer.my_init_kwargs["configuration"] == trainer.configuration_name == "3d_fullres"
    saved = trainer.my_init_kwargs["plans"]
    assert saved is trainer.plans_manager.plans  # what nnU-Net writes to plans.json and into the checkpoints
    resolved = PlansManager(copy.deepcopy(saved)).get_configuration("3d_fullres")
    assert resolved.configuration == trained.configuration
    assert cls.training_configuration(PlansManager(saved), resolved).configuration == resolved.configuration
    assert trainer.plans_manager.get_configuration("3d_fullres").configuration == trained.configuration
    assert {k: v for k, v in saved.items() if k != "configurations"} == \
        {k: v for k, v in before.items() if k != "configurations"}
    changed = {k for k in planned.configuration if planned.configuration[k] != resolved.configuration[k]}
    assert changed <= {"patch_size", "architecture", "batch_size"}
    assert bool(changed) == (name != "LiverIFMTrainer")
    if "demo" in name:
        assert trainer.batch_size == resolved.batch_size == (2 if patch else 4)


def test_recording_keeps_a_configurations_inheritance():
    from nnunet_liver.trainers.liver_trainers import record_trained_configuration

    p = plans()
    p["configurations"]["3d_cascade"] = {"inherits_from": "3d_fullres", "data_identifier": "cascade"}
    pm = PlansManager(p)
    trained = LiverIFMTrainer_tiny.training_configuration(pm, pm.get_configuration("3d_cascade"))
    recorded = record_trained_configuration(p, "3d_cascade", trained)
    assert recorded.configuration == trained.configuration
    assert p["configurations"]["3d_cascade"]["inherits_from"] == "3d_fullres"
    assert p["configurations"]["3d_fullres"] == plans()["configurations"]["3d_fullres"]
    assert set(p["configurations"]["3d_cascade"]) == {"inherits_from", "data_identifier", "patch_size",
                                                       "architecture"}


class FakeDataset:
    """In-memory stand-in for nnU-Net's preprocessed dataset (load_case -> data, seg, seg_prev, properties)."""

    def __init__(self, cases):
        self.cases = cases
        self.identifiers = list(cases)

    def load_case(self, key):
        data, seg = self.cases[key]
        locs = {c: np.argwhere(seg == c) for c in range(1, 14)}
        return data, seg, None, {"class_locations": locs}


def whole_case(seed=0):
    rng = np.random.default_rng(seed)
    seg = np.zeros((1, 16, 48, 48), np.int16)
    seg[0, 2:14, 5:40, 5:40] = 7
    seg[0, 3:5, 30:33, 30:33] = 3  # small metastasis
    seg[0, 8:10, 40:44, 40:44] = 11
    return rng.normal(size=(2, 16, 48, 48)).astype(np.float32), seg


def test_lesion_oversampling_centres_lesions():
    lm = LabelManager(dataset_json_labels(), None)
    np.random.seed(0)
    dl = LesionOversamplingDataLoader(FakeDataset({"a": whole_case()}), 2, (8, 16, 16), (8, 16, 16), lm,
                                      oversample_foreground_percent=1.0, lesion_fraction=1.0)
    _, _, _, props = dl._data.load_case("a")
    for _ in range(20):
        lbs, ubs = dl.get_bbox(np.array((16, 48, 48)), True, props["class_locations"])
        assert all(lo <= c < hi for lo, c, hi in zip(lbs, (3, 30, 30), ubs)) or \
            all(lo <= c < hi for lo, c, hi in zip(lbs, (4, 32, 32), ubs))
    dl.lesion_fraction = 0.0
    assert dl.choose_lesion_class(props["class_locations"]) is None
    dl.lesion_fraction = 1.0
    no_lesion = {c: (v if c not in range(1, 7) else np.zeros((0, 4), int)) for c, v in props["class_locations"].items()}
    assert dl.choose_lesion_class(no_lesion) is None
    assert dl.choose_lesion_class(props["class_locations"]) == 3
    with pytest.raises(ValueError):
        LesionOversamplingDataLoader(FakeDataset({"a": whole_case()}), 2, (8, 16, 16), (8, 16, 16), lm,
                                     lesion_fraction=2.0)


def _type_cases(kinds, shape=(1, 12, 40, 40)):
    """{key: (data, seg)} whole-scheme cases: liver with one lesion of type ``kind`` (0: none) each."""
    rng = np.random.default_rng(3)
    cases = {}
    for key, kind in kinds.items():
        seg = np.zeros(shape, np.int16)
        seg[0, 1:11, 3:37, 3:37] = 7
        seg[0, 2:4, 30:38, 30:38] = 11  # an organ, so "foreground" is not only lesions
        if kind:
            seg[0, 7:9, 6:9, 6:9] = kind
        cases[key] = (rng.normal(size=(2,) + shape[1:]).astype(np.float32), seg)
    return cases


def test_class_balanced_oversampling_loader_centres_lesion_types_uniformly():
    lm = LabelManager(dataset_json_labels(), None)
    # one ICC case, three cyst cases, one lesion-free case: nnU-Net's uniform draw of cases centres ICC in 1/5
    cases = _type_cases({"icc": 2, "cyst1": 6, "cyst2": 6, "cyst3": 6, "free": 0})
    np.random.seed(0)
    dl = LesionOversamplingDataLoader(FakeDataset(cases), 4, (4, 16, 16), (4, 16, 16), lm,
                                      oversample_foreground_percent=1.0, lesion_fraction=1.0, class_balanced=True)
    assert dl.class_balanced and dl.cases_by_class == {2: ["icc"], 6: ["cyst1", "cyst2", "cyst3"]}
    n, icc = 60, 0
    for _ in range(n):
        batch = dl.generate_train_batch()
        for key, y in zip(batch["keys"], batch["target"]):
            assert key != "free"
            lesion = 2 if key == "icc" else 6
            assert (y == lesion).any(), key  # forced onto the drawn type
            icc += key == "icc"
    share = icc / (4 * n)
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / (4 * n)), share
    assert sum(dl.class_counts.values()) == 4 * n and set(dl.class_counts) == {2, 6}
    # lesion_fraction 0: nnU-Net's uniform draw of cases (the lesion-free one too), no lesion type
    dl.lesion_fraction = 0.0
    keys = [k for _ in range(40) for k in dl.get_indices()]
    assert "free" in keys
    _, _, _, props = dl._data.load_case("icc")
    assert all(dl.choose_lesion_class(props["class_locations"]) is None for _ in range(20))
    # get_bbox on its own (any order of calls) centres a forced patch on the case's type
    dl.lesion_fraction = 1.0
    lbs, ubs = dl.get_bbox(np.array((12, 40, 40)), True, props["class_locations"])
    box = tuple(slice(max(lo, 0), hi) for lo, hi in zip(lbs, ubs))
    assert (cases["icc"][1][0][box] == 2).any()
    # no lesion in the loader's cases: the plain loader
    plain = LesionOversamplingDataLoader(FakeDataset(_type_cases({"free": 0})), 2, (4, 16, 16), (4, 16, 16), lm,
                                         class_balanced=True)
    assert not plain.class_balanced and list(plain.get_indices()) == ["free", "free"]


def test_class_balanced_two_step_draw_is_the_joint_draw():
    """get_indices' marginal of the cases and get_bbox's type given the case multiply to the joint draw "a lesion
    type uniform over the types, then a case holding it" (probability lesion_fraction) or "a case, uniform" (the
    rest), enumerated here by brute force."""
    lm = LabelManager(dataset_json_labels(), None)
    cases = _type_cases({"icc": 2, "cyst1": 6, "cyst2": 6, "both": 6, "free": 0})
    cases["both"][1][0, 2:4, 6:9, 20:23] = 2  # a case holding ICC and cyst
    lf = 0.6
    dl = LesionOversamplingDataLoader(FakeDataset(cases), 4, (4, 16, 16), (4, 16, 16), lm,
                                      oversample_foreground_percent=1.0, lesion_fraction=lf, class_balanced=True)
    joint = {}
    for c, keys in dl.cases_by_class.items():
        for key in keys:
            joint[key, c] = joint.get((key, c), 0.0) + lf / len(dl.cases_by_class) / len(keys)
    for key in dl.indices:
        joint[key, None] = joint.get((key, None), 0.0) + (1 - lf) / len(dl.indices)
    marginal = {key: sum(v for (k, _), v in joint.items() if k == key) for key in dl.indices}
    np.testing.assert_allclose(dl.case_probabilities(), [marginal[k] for k in dl.indices])
    assert abs(sum(marginal.values()) - 1) < 1e-12
    np.random.seed(1)
    _, _, _, props = dl._data.load_case("both")
    n = 4000
    draws = [dl.choose_lesion_class(props["class_locations"]) for _ in range(n)]
    for c in (2, 6, None):
        p = joint["both", c] / marginal["both"]
        assert abs(draws.count(c) / n - p) < 4 * np.sqrt(p * (1 - p) / n), (c, draws.count(c) / n, p)


def test_get_dataloaders_mirrors_nnunets(tmp_path, monkeypatch):
    """LiverWholeTrainer.get_dataloaders is nnU-Net's with the loader made by make_dataloader (nnU-Net has no hook
    for the loader class). With make_dataloader returning nnU-Net's own loader, both must give the same batches
    from the same random state: this fails when nnU-Net's get_dataloaders changes what it builds, and then the
    mirror in liver_trainers.py must follow it."""
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    class Mirror(LiverWholeTrainer):
        def make_dataloader(self, dataset, patch_size, final_patch_size, transforms, train):
            return nnUNetDataLoader(dataset, self.batch_size, patch_size, final_patch_size, self.label_manager,
                                    oversample_foreground_percent=self.oversample_foreground_percent,
                                    sampling_probabilities=None, pad_sides=None, transforms=transforms,
                                    probabilistic_oversampling=self.probabilistic_oversampling)

    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_n_proc_DA", "0")
    p = plans()
    p["continue_training"] = False
    p["configurations"]["3d_fullres"].update(patch_size=[8, 16, 16], use_mask_for_norm=[False] * 4)
    trainer = Mirror(p, "3d_fullres", 0, whole_json(), torch.device("cpu"))
    trainer.batch_size = 2
    trainer.dataset_class = FakeDataset
    cases = {"a": whole_case(0), "b": whole_case(1)}
    trainer.get_tr_and_val_datasets = lambda: (FakeDataset(cases), FakeDataset({"b": cases["b"]}))
    batches = []
    for get_dataloaders in (nnUNetTrainer.get_dataloaders, LiverWholeTrainer.get_dataloaders):
        np.random.seed(0)
        torch.manual_seed(0)
        tr, val = get_dataloaders(trainer)
        batches.append([next(tr), next(val)])
    for ours, theirs in zip(batches[1], batches[0]):
        assert list(ours["keys"]) == list(theirs["keys"])
        torch.testing.assert_close(ours["data"], theirs["data"])
        for a, b in zip(ours["target"], theirs["target"]):
            torch.testing.assert_close(a, b)


def test_whole_trainers_hand_class_balance_to_their_loader(tmp_path, monkeypatch):
    from nnunet_liver.trainers.liver_demo_trainers import LiverIFMTrainer_demo
    from nnunet_liver.trainers.liver_trainers import LiverIFMTrainer_classBalanced

    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    cases = _type_cases({"a": 3})
    for trainer_class, balanced in ((LiverIFMTrainer, False), (LiverIFMTrainer_classBalanced, True),
                                    (LiverIFMTrainer_demo, True)):
        p = plans()
        p["continue_training"] = False
        trainer = trainer_class(p, "3d_fullres", 0, whole_json(), torch.device("cpu"))
        trainer.batch_size = 2  # nnU-Net sets it in initialize()
        dl = trainer.make_dataloader(FakeDataset(cases), (4, 16, 16), (4, 16, 16), None, True)
        assert isinstance(dl, LesionOversamplingDataLoader)
        assert dl.class_balanced is balanced, trainer_class.__name__
        assert dl.cases_by_class == ({3: ["a"]} if balanced else {})


def test_lesion_shuffle_loader_masks_and_counts_schemes():
    lm = LabelManager(patch_dataset_json_labels(), None)
    rng = np.random.default_rng(1)
    seg = np.zeros((1, 10, 40, 40), np.int16)
    seg[0, 1:9, 3:37, 3:37] = PATCH_LIVER
    seg[0, 3:6, 6:10, 6:10] = 2
    seg[0, 0, 0, :5] = -1  # nnU-Net's outside-nonzero label
    data = rng.normal(size=(2,) + seg.shape[1:]).astype(np.float32)
    data[1] = 0.7  # missing phase
    np.random.seed(0)
    dl = LesionShuffleDataLoader(FakeDataset({"a": (data, seg), "b": (data, seg)}), 4, (4, 16, 16), (4, 16, 16),
                                 lm, masked_value=-5.0)
    for _ in range(10):
        batch = dl.generate_train_batch()
        x, y = batch["data"], batch["target"]
        assert x.shape == (4, 2, 4, 16, 16) and y.shape == (4, 1, 4, 16, 16)
        assert torch.all(x[:, :, ][(y == 0).expand_as(x)] == -5.0)
        assert int(y.min()) >= 0 and int(y.max()) <= PATCH_LIVER
    assert set(dl.scheme_counts) == {"original_positive", "original_negative", "shuffled_positive",
                                     "shuffled_negative"}


def test_class_balanced_shuffle_loader_draws_lesion_types_uniformly():
    lm = LabelManager(patch_dataset_json_labels(), None)
    rng = np.random.default_rng(2)

    def case(kind):
        seg = np.zeros((1, 10, 40, 40), np.int16)
        seg[0, 1:9, 3:37, 3:37] = PATCH_LIVER
        if kind:
            seg[0, 3:6, 6:10, 6:10] = kind
        return rng.normal(size=(2,) + seg.shape[1:]).astype(np.float32), seg

    # one ICC case, three cyst cases, one lesion-free case: a uniform draw of cases gives ICC 1/5 of the patches
    cases = {"icc": case(2), "cyst1": case(6), "cyst2": case(6), "cyst3": case(6), "free": case(0)}
    np.random.seed(0)
    dl = LesionShuffleDataLoader(FakeDataset(cases), 4, (4, 16, 16), (4, 16, 16), lm, class_balanced=True,
                                 scheme_rates={"original_positive": 1.0})
    assert dl.cases_by_class == {2: ["icc"], 6: ["cyst1", "cyst2", "cyst3"]}
    n = 100
    draws = [dl.choose_cases() for _ in range(n)]
    assert all(len(d) == 4 for d in draws)
    flat = [kc for d in draws for kc in d]
    assert all((k == "icc") == (c == 2) and k != "free" for k, c in flat)
    share = sum(c == 2 for _, c in flat) / len(flat)
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / len(flat)), share
    assert sum(dl.class_counts.values()) == 4 * n and set(dl.class_counts) == {2, 6}
    dl.class_counts.clear()
    for _ in range(5):
        batch = dl.generate_train_batch()
        for key, y in zip(batch["keys"], batch["target"]):
            assert int(y.max()) == PATCH_LIVER and (y == (2 if key == "icc" else 6)).any()
    assert sum(dl.class_counts.values()) == 20 and set(dl.class_counts) <= {2, 6}
    # without lesions (or with class_balanced off) it is nnU-Net's uniform draw of cases, lesion type None
    plain = LesionShuffleDataLoader(FakeDataset({"free": case(0)}), 3, (4, 16, 16), (4, 16, 16), lm,
                                    class_balanced=True)
    assert not plain.class_balanced and plain.choose_cases() == [("free", None)] * 3


def test_patch_trainers_hand_class_balance_to_their_loader(tmp_path, monkeypatch):
    from nnunet_liver.trainers.liver_demo_trainers import LesionShufflePatchTrainer_demo
    from nnunet_liver.trainers.liver_patch_trainer import LesionShufflePatchTrainer_classBalanced

    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    seg = np.zeros((1, 10, 40, 40), np.int16)
    seg[0, 1:9, 3:37, 3:37] = PATCH_LIVER
    seg[0, 3:6, 6:10, 6:10] = 3
    data = np.zeros((2,) + seg.shape[1:], np.float32)
    for trainer_class, balanced in ((LesionShufflePatchTrainer, False), (LesionShufflePatchTrainer_classBalanced, True),
                                    (LesionShufflePatchTrainer_demo, True)):
        p = plans()
        p["continue_training"] = False
        trainer = trainer_class(p, "3d_fullres", 0, whole_json(labels=patch_dataset_json_labels()),
                                torch.device("cpu"))
        trainer.batch_size = 2  # nnU-Net sets it in initialize()
        dl = trainer.make_dataloader(FakeDataset({"a": (data, seg)}), (4, 16, 16), (4, 16, 16), None, True)
        assert dl.class_balanced is balanced, trainer_class.__name__
        assert dl.cases_by_class == ({3: ["a"]} if balanced else {})


def test_trainers_found_by_nnunet_ext_trainer():
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            "names = ['LiverWholeTrainer', 'LiverIFMTrainer', 'LesionShufflePatchTrainer', 'LiverWholeTrainer_tiny',"
            " 'LiverIFMTrainer_tiny', 'LesionShufflePatchTrainer_tiny', 'LesionShufflePatchTrainer_classBalanced',"
            " 'LiverIFMTrainer_classBalanced', 'LiverIFMTrainer_demo', 'LiverIFMTrainer_demoUnweighted',"
            " 'LiverIFMTrainer_demoUnweighted_400epochs', 'LesionShufflePatchTrainer_demo',"
            " 'LesionShufflePatchTrainer_demo_220epochs', 'LesionShufflePatchTrainer_demoPresentDice']\n"
            "print('FOUND', [f(n).__name__ for n in names])\n")
    import os
    env = {**os.environ, "nnUNet_extTrainer": nnunet_liver.TRAINERS_DIR, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    line = [l for l in out.splitlines() if l.startswith("FOUND")][0]
    assert line.count("Trainer") == 14 and "LesionShufflePatchTrainer_tiny" in line
    assert "LiverIFMTrainer_demoUnweighted_400epochs" in line and "LesionShufflePatchTrainer_demo_220epochs" in line
    assert "LesionShufflePatchTrainer_classBalanced" in line and "LiverIFMTrainer_classBalanced" in line


# ---------------------------------------------------------------------------------------------- slow: real nnU-Net

def _predictor(model, monkeypatch):
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    monkeypatch.setenv("nnUNet_extTrainer", nnunet_liver.TRAINERS_DIR)
    torch.set_num_threads(1)
    pred = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=False,
                           perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                           verbose_preprocessing=False, allow_tqdm=False)
    pred.initialize_from_trained_model_folder(str(model.model_folder), use_folds=(0,),
                                              checkpoint_name="checkpoint_final.pth")
    return pred


def _read_case(model, case):
    from nnunetv2.imageio.simpleitk_reader_writer import SimpleITKIO

    files = sorted((model.raw_dataset / "imagesTr").glob(f"{case}_0*.nii.gz"))
    return SimpleITKIO().read_images([str(f) for f in files])


@pytest.mark.slow
def test_tiny_ifm_model_trains_and_predicts_with_missing_delayed_phase(tiny_whole_model, monkeypatch):
    folder = tiny_whole_model.model_folder
    assert (folder / "fold_0" / "checkpoint_final.pth").is_file()
    ckpt = torch.load(folder / "fold_0" / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    assert ckpt["trainer_name"] == "LiverIFMTrainer_tiny"
    pred = _predictor(tiny_whole_model, monkeypatch)
    assert any(isinstance(m, IterativeFusionModule) for m in pred.network.modules())
    img, props = _read_case(tiny_whole_model, "phantom_000")
    assert img.shape[0] == 4
    seg, prob = pred.predict_single_npy_array(img, props, None, None, True)
    assert seg.shape == img.shape[1:] and prob.shape == (14,) + img.shape[1:]
    np.testing.assert_allclose(prob.sum(0), 1.0, atol=1e-3)
    assert set(np.unique(seg)) <= set(range(14))
    # delayed phase missing: a constant channel; its value must not matter (presence is detected from the data)
    outs = []
    for fill in (MISSING_PHASE_VALUE, 300.0):
        miss = img.copy()
        miss[3] = fill
        outs.append(pred.predict_single_npy_array(miss, props, None, None, True)[1])
    np.testing.assert_allclose(outs[0], outs[1], atol=1e-5)
    assert not np.allclose(outs[0], prob, atol=1e-5)  # and the model did use the delayed phase when present


@pytest.mark.slow
def test_tiny_patch_model_trains_and_predicts_reclassification_patches(tiny_patch_model, monkeypatch):
    from nnunet_liver.postprocessing.lesion_shuffle import make_reclassification_patches

    ds = json.loads((tiny_patch_model.raw_dataset / "dataset.json").read_text())
    assert ds["labels"] == patch_dataset_json_labels()
    pred = _predictor(tiny_patch_model, monkeypatch)
    assert any(isinstance(m, IterativeFusionModule) for m in pred.network.modules())
    # a case with a lesion, preprocessed as nnU-Net would, then patches as the reclassification step makes them
    truth = json.loads((tiny_patch_model.raw_dataset / "patch_dataset.json").read_text())
    import SimpleITK as sitk
    for entry in truth["cases"]:
        lab = sitk.GetArrayFromImage(sitk.ReadImage(str(tiny_patch_model.raw_dataset / "labelsTr" /
                                                        f"{entry['case']}.nii.gz")))
        if np.isin(lab, range(1, 7)).any():
            break
    img, props = _read_case(tiny_patch_model, entry["case"])
    seg, prob = pred.predict_single_npy_array(img, props, None, None, True)
    assert prob.shape == (8,) + img.shape[1:]
    norm = (img - img.mean(axis=(1, 2, 3), keepdims=True)) / (img.std(axis=(1, 2, 3), keepdims=True) + 1e-6)
    lesion = np.isin(lab, range(1, 7))
    from scipy import ndimage
    cc, _ = ndimage.label(lesion)
    patches, masks = make_reclassification_patches(norm.astype(np.float32), lab > 0, cc == 1, n=4,
                                                   patch_size=(8, 16, 16), rng=0)
    pred.network.eval()
    with torch.no_grad():
        logits = pred.network(torch.from_numpy(patches))
    assert logits.shape == (4, 8, 8, 16, 16) and torch.isfinite(logits).all()
    # the patch dataset carries the tiny UNet-whole's misses and false alarms, and training drew patches around them
    assert truth["hard_cases_no_prediction"] == []
    n_hard = sum(len(c["hard_cases"]) for c in truth["cases"])
    assert n_hard > 0
    log = "".join(p.read_text() for p in (tiny_patch_model.model_folder / "fold_0").glob("training_log_*.txt"))
    used = re.search(r"LesionShufflePatchTrainer: (\d+) FN and (\d+) FP hard cases in the training cases, 25%", log)
    assert used and 0 < int(used.group(1)) + int(used.group(2)) <= n_hard, log[-2000:]


def _demo_trainer(cls, tmp_path, monkeypatch, dataset_json=None):
    # nnU-Net reads its folders from the environment when used; the trainer only derives paths from them here
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    p = plans()
    p["continue_training"] = False
    p["configurations"]["3d_fullres"]["batch_dice"] = False
    return cls(p, "3d_fullres", 0, dataset_json or whole_json(), torch.device("cpu"))


def test_demo_trainers_weight_lesion_classes_in_nnunets_loss(tmp_path, monkeypatch):
    """The demo recipe's loss is nnU-Net's Dice + CE with the lesion classes weighted in the CE term; the CE part
    equals torch's weighted cross-entropy (independent implementation); the weight is the variant's class constant
    (1, ``_demoUnweighted``: nnU-Net's unweighted CE), and no environment variable changes it."""
    from nnunet_liver.labels import LESION_IDS
    from nnunet_liver.trainers import liver_demo_trainers as dt

    trainer = _demo_trainer(dt.LiverIFMTrainer_demo, tmp_path, monkeypatch)
    trainer.enable_deep_supervision = True
    loss = trainer._build_loss()
    ce = loss.loss.ce
    expected = torch.ones(14)
    expected[list(LESION_IDS)] = dt.DEMO_LESION_CE_WEIGHT["whole"]
    assert torch.equal(ce.weight, expected)
    torch.manual_seed(0)
    logits = torch.randn(2, 14, 4, 6, 6)
    target = torch.randint(0, 14, (2, 1, 4, 6, 6))
    ref = torch.nn.functional.cross_entropy(logits, target[:, 0], weight=expected)
    assert torch.allclose(ce(logits, target), ref)
    unweighted = torch.nn.functional.cross_entropy(logits, target[:, 0])
    assert not torch.allclose(ref, unweighted)
    monkeypatch.setenv("nnUNet_liver_demo_lesion_ce", "1")  # the variable of earlier versions: ignored now
    assert torch.equal(trainer._build_loss().loss.ce.weight, expected)
    for cls in (dt.LiverIFMTrainer_demoUnweighted, dt.LiverIFMTrainer_demoUnweighted_400epochs):
        t = _demo_trainer(cls, tmp_path, monkeypatch)
        t.enable_deep_supervision = True
        assert torch.allclose(t._build_loss().loss.ce(logits, target), unweighted)
        assert t.training_settings()["lesion_ce_weight"] == 1.0


@pytest.mark.parametrize("name, epochs, lesion_ce", [
    ("LiverIFMTrainer_demo", 90, 4.0), ("LiverIFMTrainer_demoUnweighted", 90, 1.0),
    ("LiverIFMTrainer_demoUnweighted_400epochs", 400, 1.0), ("LesionShufflePatchTrainer_demo", 40, 2.0),
    ("LesionShufflePatchTrainer_demo_220epochs", 220, 2.0), ("LesionShufflePatchTrainer_demoPresentDice", 40, 2.0)])
def test_demo_variants_are_class_constants_recorded_in_their_settings(tmp_path, monkeypatch, name, epochs,
                                                                       lesion_ce):
    """Each variant trains what its name says, whatever the environment, and its settings say so; every variant
    builds the same network as the base demo trainer, so a model is applied like the base trainer's."""
    from nnunet_liver.trainers import liver_demo_trainers as dt

    cls = getattr(dt, name)
    patch = "Patch" in name
    labels = patch_dataset_json_labels() if patch else dataset_json_labels()
    monkeypatch.setenv("nnUNet_liver_demo_epochs", "7")  # the variable of earlier versions: ignored now
    trainer = _demo_trainer(cls, tmp_path, monkeypatch, whole_json(labels=labels))
    settings = trainer.training_settings()
    assert trainer.num_epochs == settings["num_epochs"] == epochs and settings["lesion_ce_weight"] == lesion_ce
    assert settings["trainer"] == name and settings["initial_weights"] is None
    assert settings["class_balanced"] is True and settings["phase_dropout_p"] == dt.DEMO_PHASE_DROPOUT_P
    assert settings["present_class_dice" if patch else "lesion_fraction"] == \
        ("PresentDice" in name if patch else dt.DEMO_LESION_FRACTION)
    json.dumps(settings)  # JSON-ready
    base = dt.LesionShufflePatchTrainer_demo if patch else dt.LiverIFMTrainer_demo
    pm = PlansManager(plans())
    cm = pm.get_configuration("3d_fullres")
    torch.manual_seed(0)
    net = cls.build_network_architecture(pm, cm, 4, len(labels), False)
    torch.manual_seed(0)
    ref = base.build_network_architecture(pm, cm, 4, len(labels), False)
    assert all(torch.equal(a, b) for a, b in zip(net.state_dict().values(), ref.state_dict().values()))
    assert list(net.state_dict()) == list(ref.state_dict())


def test_demo_init_with_heads_copies_every_weight_and_maps_whole_heads_to_patch(tmp_path, monkeypatch):
    """``load_weights_with_heads`` (``python -m nnunet_liver.training.warm_start``): the bundled UNet-whole's weights,
    heads included, start an identical network (same logits) and a patch-scheme network (8 classes) whose logits are
    the whole model's first eight channels (masked/background, six lesion types, liver); other networks are refused
    by name."""
    from nnunet_liver.inference.model import load_model
    from nnunet_liver.training.warm_start import load_weights_with_heads

    model = load_model("demo")
    ckpt = tmp_path / "checkpoint.pth"
    torch.save({"network_weights": model.parameters[0]}, ckpt)
    build = model.trainer_class.build_network_architecture
    args = (model.plans_manager, model.configuration_manager, 4)
    torch.manual_seed(0)
    x = torch.randn(1, 4, 16, 48, 48)
    with torch.no_grad():
        ref = model.network(x)
        for classes in (14, 8):
            net = build(*args, classes, enable_deep_supervision=False)
            assert not torch.allclose(net.eval()(x), ref[:, :classes])  # random heads differ
            assert load_weights_with_heads(net, str(ckpt)) == len(model.parameters[0])
            assert torch.allclose(net.eval()(x), ref[:, :classes], atol=1e-5)
    with pytest.raises(ValueError, match=r"seg_layers.0.weight has shape \(14, 32, 1, 1, 1\), this network \(20, 32"):
        load_weights_with_heads(build(*args, 20, enable_deep_supervision=False), str(ckpt))
    with pytest.raises(ValueError, match="checkpoint.pth: no weights for"):
        load_weights_with_heads(torch.nn.Sequential(torch.nn.Conv3d(4, 8, 3)), str(ckpt))
