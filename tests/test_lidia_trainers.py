"""LIDIA's lesion head and trainer variants: lesion instances (the project's connectivity rule), pooling, the network
still returning nnU-Net's plain logits, one train step of each variant in-process (memory bank, SAM), the checkpoint
carrying the memory bank; slow: the LIDIA + SAM variant trains through ``nnUNetv2_train``, resumes with its memory
bank, and detects with its lesion head in ``nnunet-liver-detect``."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_liver.labels import PATCH_LIVER, patch_dataset_json_labels
from nnunet_liver.trainers.liver_lesion_head import (LesionHead, capture_features, lesion_head_of, lesion_instances,
                                                     pool_lesion_features)
from nnunet_liver.trainers.liver_lidia_trainers import (MEMORY_BANK_KEY, LesionShufflePatchTrainer_LIDIA,
                                                        LesionShufflePatchTrainer_LIDIA_SAM,
                                                        LesionShufflePatchTrainer_LIDIAacl,
                                                        LesionShufflePatchTrainer_LIDIAce,
                                                        LesionShufflePatchTrainer_LIDIAfocal)
from nnunet_liver.trainers.liver_tiny_trainers import (LesionShufflePatchTrainer_LIDIA_SAM_tiny,
                                                       LesionShufflePatchTrainer_LIDIA_tiny,
                                                       LesionShufflePatchTrainer_tiny)

sys.path.insert(0, str(Path(__file__).parent))
from test_trainers import plans, whole_json  # noqa: E402


def test_lesion_instances_follow_the_slice_overlap_rule_and_majority_type():
    lab = np.full((2, 6, 10, 10), PATCH_LIVER, np.int16)
    lab[0, 1:3, 1:3, 1:3] = 1            # HCC ...
    lab[0, 1, 3, 3] = 3                  # ... touching a Meta voxel diagonally in-plane: one lesion, type HCC
    lab[0, 4, 6:8, 6:8] = 6              # a cyst ...
    lab[0, 5, 8, 8] = 6                  # ... and a voxel diagonal across slices: a separate lesion
    lab[1, 0:2, 0:2, 0] = 5              # tie 4 Other / 4 Hem voxels: the higher-priority type (Hem)
    lab[1, 2:4, 0:2, 0] = 4
    inst, types = lesion_instances(lab)
    assert types == [1, 6, 6, 4]
    assert set(np.unique(inst[0][lab[0] != PATCH_LIVER])) == {1, 2, 3}
    assert (inst[0][1:3, 1:3, 1:3] == 1).all() and inst[0][1, 3, 3] == 1
    assert inst[0][5, 8, 8] not in (0, inst[0][4, 6, 6])
    assert (inst[1][lab[1] != PATCH_LIVER] == 4).all() and (inst[lab == PATCH_LIVER] == 0).all()
    inst, types = lesion_instances(lab, min_voxels=2)
    assert types == [1, 6, 4] and inst[0][5, 8, 8] == 0
    empty, none = lesion_instances(np.full((1, 3, 4, 4), PATCH_LIVER))
    assert none == [] and not empty.any()


def test_pool_lesion_features_is_the_mean_over_each_instance():
    g = torch.Generator().manual_seed(0)
    feats = torch.randn(2, 3, 4, 5, 5, generator=g)
    inst = torch.zeros(2, 4, 5, 5, dtype=torch.long)
    inst[0, 0:2, 1:3, 1:3] = 1
    inst[1, 3, 4, 4] = 2
    inst[1, 0, 0, 0:2] = 3
    pooled = pool_lesion_features(feats, inst, 3)
    for k in (1, 2, 3):
        b = 0 if k == 1 else 1
        m = inst[b] == k
        assert torch.allclose(pooled[k - 1], feats[b][:, m].mean(1), atol=1e-6)


def _trainer(cls):
    p = plans()
    p["continue_training"] = False
    p["configurations"]["3d_fullres"]["batch_dice"] = False
    t = cls(p, "3d_fullres", 0, whole_json(labels=patch_dataset_json_labels()), torch.device("cpu"))
    torch.manual_seed(0)
    t.network = t.build_network_architecture(t.plans_manager, t.configuration_manager, 4, 8, True)
    t.optimizer, t.lr_scheduler = t.configure_optimizers()
    t.loss = t._build_loss()
    t.prepare_lesion_training()
    return t


def _batch(t):
    ps = [int(v) for v in t.configuration_manager.patch_size]
    seg = np.full((2, 1, *ps), PATCH_LIVER, np.int16)
    seg[0, 0, 2:6, 3:8, 3:8] = 1
    seg[0, 0, 20:28, 10:14, 10:14] = 5
    seg[1, 0, 4:9, 2:9, 2:9] = 6
    seg[1, 0, 20, 12, 20] = 2  # one voxel: below min_lesion_voxels, no embedding
    full = torch.from_numpy(seg).float()
    target = [full] + [F.interpolate(full, scale_factor=[float(x) for x in s], mode="nearest")
                       for s in t._get_deep_supervision_scales()[1:]]
    return {"data": torch.randn(2, 4, *ps, generator=torch.Generator().manual_seed(1)), "target": target}


@pytest.mark.parametrize("cls, name, focal_gamma, lambda_acl, use_sam", [
    (LesionShufflePatchTrainer_LIDIA, "LesionShufflePatchTrainer_LIDIA", 2.0, 0.01, False),
    (LesionShufflePatchTrainer_LIDIAfocal, "LesionShufflePatchTrainer_LIDIAfocal", 2.0, 0.0, False),
    (LesionShufflePatchTrainer_LIDIAacl, "LesionShufflePatchTrainer_LIDIAacl", 0.0, 0.01, False),
    (LesionShufflePatchTrainer_LIDIAce, "LesionShufflePatchTrainer_LIDIAce", 0.0, 0.0, False),
    (LesionShufflePatchTrainer_LIDIA_SAM, "LesionShufflePatchTrainer_LIDIA_SAM", 2.0, 0.01, True)])
def test_variants_are_class_constants_recorded_in_their_settings(tmp_path, monkeypatch, cls, name, focal_gamma,
                                                                 lambda_acl, use_sam):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    p = plans()
    p["continue_training"] = False
    t = cls(p, "3d_fullres", 0, whole_json(labels=patch_dataset_json_labels()), torch.device("cpu"))
    t.batch_size = 2  # nnU-Net sets it in initialize()
    s = t.training_settings()
    assert s["trainer"] == name and s["focal_gamma"] == focal_gamma and s["lambda_acl"] == lambda_acl
    assert s["use_sam"] is use_sam and s["lambda_seg"] == 5.0 and s["lambda_focal"] == 5.0
    assert s["temperature"] == 0.1 and s["memory_bank_size"] == 1024 and s["heterogeneous_types"] == ("Other",)
    assert json.loads(json.dumps(s))["heterogeneous_types"] == ["Other"]
    assert t.memory_bank.size == 1024 and not t._do_i_compile()


def test_head_network_returns_nnunets_plain_logits(tmp_path, monkeypatch):
    """The head changes nothing in the forward pass: with the same weights, the headed network's outputs (deep
    supervision on and off) equal UNet-patch's bit for bit."""
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    t = _trainer(LesionShufflePatchTrainer_LIDIA_tiny)
    plain = LesionShufflePatchTrainer_tiny.build_network_architecture(t.plans_manager, t.configuration_manager, 4, 8,
                                                                      True)
    state = {k: v for k, v in t.network.state_dict().items() if not k.startswith("lesion_head.")}
    assert set(t.network.state_dict()) - set(state) == {k for k in t.network.state_dict() if "lesion_head" in k}
    plain.load_state_dict(state)
    x = _batch(t)["data"]
    t.network.eval(), plain.eval()
    with torch.no_grad():
        a, b = t.network(x), plain(x)
        assert isinstance(a, list) and len(a) == len(b) and all(torch.equal(u, v) for u, v in zip(a, b))
        head = lesion_head_of(t.network)
        assert head.features is None  # nothing kept outside capture_features
        with capture_features(head):
            t.network(x)
            assert head.features.shape == (2, head.in_channels, *x.shape[2:])
        assert head.features is None
        t.network.decoder.deep_supervision = plain.decoder.deep_supervision = False
        assert torch.equal(t.network(x), plain(x))


@pytest.mark.parametrize("cls", [LesionShufflePatchTrainer_LIDIA_tiny, LesionShufflePatchTrainer_LIDIA_SAM_tiny])
def test_train_step_trains_the_head_and_fills_the_memory_bank(tmp_path, monkeypatch, cls):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    t = _trainer(cls)
    assert (t.sam is not None) is cls.use_sam
    head = lesion_head_of(t.network)
    before = {k: v.clone() for k, v in t.network.state_dict().items()}
    batch = _batch(t)
    out = t.train_step(batch)
    assert np.isfinite(out["loss"])
    emb, labels = t.memory_bank.get()
    assert labels.tolist() == [0, 4, 5]  # HCC, Other, Cyst (type indices); the one-voxel ICC is left out
    assert torch.allclose(emb.norm(dim=1), torch.ones(3), atol=1e-5)
    changed = {k for k, v in t.network.state_dict().items() if v.is_floating_point() and not torch.equal(v, before[k])}
    assert any(k.startswith("lesion_head.classifier") for k in changed)
    assert any(k.startswith("lesion_head.projection") for k in changed)
    assert any(k.startswith("decoder.") for k in changed) and head.features is None
    t.train_step(batch)
    assert t.memory_bank.get()[1].tolist() == [0, 4, 5, 0, 4, 5]
    assert t._head_log[0]["lesions"] == 3 and t._head_log[0]["acl"] > 0


def test_a_batch_without_lesions_keeps_the_head_in_the_graph(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    t = _trainer(LesionShufflePatchTrainer_LIDIA_tiny)
    batch = _batch(t)
    batch["target"] = [torch.full_like(x, PATCH_LIVER) for x in batch["target"]]
    assert np.isfinite(t.train_step(batch)["loss"])
    assert len(t.memory_bank) == 0
    assert all(p.grad is not None for p in lesion_head_of(t.network).parameters())


def test_checkpoint_carries_the_memory_bank(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    t = _trainer(LesionShufflePatchTrainer_LIDIA_tiny)
    t.train_step(_batch(t))
    path = str(tmp_path / "checkpoint.pth")
    t.save_checkpoint(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    assert ckpt[MEMORY_BANK_KEY]["count"] == 3 and "network_weights" in ckpt
    assert any(k.startswith("lesion_head.") for k in ckpt["network_weights"])
    fresh = _trainer(LesionShufflePatchTrainer_LIDIA_tiny)
    fresh.was_initialized = True
    fresh.load_checkpoint(path)
    assert torch.equal(fresh.memory_bank.get()[0], t.memory_bank.get()[0])
    assert fresh.memory_bank.get()[1].tolist() == [0, 4, 5]
    for k, v in t.network.state_dict().items():
        assert torch.equal(fresh.network.state_dict()[k], v)
    # a checkpoint without a bank (e.g. a plain UNet-patch's) starts an empty one
    del ckpt[MEMORY_BANK_KEY]
    torch.save(ckpt, path)
    other = _trainer(LesionShufflePatchTrainer_LIDIA_tiny)
    other.was_initialized = True
    other.load_checkpoint(path)
    assert len(other.memory_bank) == 0


def test_lesion_head_shapes():
    head = LesionHead(5)
    logits, z = head(torch.randn(4, 5))
    assert logits.shape == (4, 6) and z.shape == (4, 128)
    assert torch.allclose(z.norm(dim=1), torch.ones(4), atol=1e-5)


def test_lidia_trainers_found_by_nnunet_ext_trainer():
    import os
    import subprocess

    import nnunet_liver

    names = ["LesionShufflePatchTrainer_LIDIA", "LesionShufflePatchTrainer_LIDIAfocal",
             "LesionShufflePatchTrainer_LIDIAacl", "LesionShufflePatchTrainer_LIDIAce",
             "LesionShufflePatchTrainer_LIDIA_SAM", "LesionShufflePatchTrainer_LIDIA_tiny",
             "LesionShufflePatchTrainer_LIDIA_SAM_tiny", "LesionShufflePatchTrainer_LIDIA_SAM_demo_1epoch"]
    code = ("from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name as f\n"
            f"print('FOUND', [f(n).__name__ for n in {names!r}])\n")
    env = {**os.environ, "nnUNet_extTrainer": nnunet_liver.TRAINERS_DIR, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    line = [l for l in out.splitlines() if l.startswith("FOUND")][0]
    assert line == f"FOUND {names!r}"


def test_cuda_checks_demo_variant_is_the_demo_patch_network_with_the_head(tmp_path, monkeypatch):
    from nnunet_liver.trainers.liver_demo_trainers import LesionShufflePatchTrainer_demo
    from nnunet_liver.trainers.liver_lidia_trainers import LesionShufflePatchTrainer_LIDIA_SAM_demo_1epoch as Demo

    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    p = plans()
    p["continue_training"] = False
    p["configurations"]["3d_fullres"]["batch_dice"] = False
    t = Demo(p, "3d_fullres", 0, whole_json(labels=patch_dataset_json_labels()), torch.device("cpu"))
    t.batch_size = 2
    s = t.training_settings()
    assert s["use_sam"] is True and s["num_epochs"] == 1 and s["lesion_ce_weight"] == 2.0 and s["lambda_acl"] == 0.01
    torch.manual_seed(0)
    net = Demo.build_network_architecture(t.plans_manager, t.configuration_manager, 4, 8, False)
    torch.manual_seed(0)
    ref = LesionShufflePatchTrainer_demo.build_network_architecture(t.plans_manager, t.configuration_manager, 4, 8,
                                                                    False)
    body = [k for k in net.state_dict() if not k.startswith("lesion_head.")]
    assert body == list(ref.state_dict()) and lesion_head_of(net) is not None
