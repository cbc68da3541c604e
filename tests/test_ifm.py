"""Iterative Fusion Module: presence detection, per-sample skipping of missing phases, gradients, phase dropout."""
from itertools import combinations

import numpy as np
import pytest
import torch

from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_liver.trainers.liver_networks import IterativeFusionModule, insert_ifm, phase_presence
from nnunet_liver.trainers.liver_transforms import (PRESENCE_KEY, DetectPhasePresenceTransform,
                                                    ImposeAbsentPhasesTransform, PhaseDropoutTransform,
                                                    dropout_subsets)

REQ_IMPORT = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def arch_kwargs(**over):
    kw = dict(n_stages=3, features_per_stage=[8, 16, 16], conv_op="torch.nn.modules.conv.Conv3d",
              kernel_sizes=[[1, 3, 3], [3, 3, 3], [3, 3, 3]], strides=[[1, 1, 1], [1, 2, 2], [2, 2, 2]],
              n_conv_per_stage=[2, 1, 1], n_conv_per_stage_decoder=[1, 1], conv_bias=True,
              norm_op="torch.nn.modules.instancenorm.InstanceNorm3d", norm_op_kwargs={"eps": 1e-5, "affine": True},
              dropout_op=None, dropout_op_kwargs=None, nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True})
    kw.update(over)
    return kw


def ifm(num_phases=4, seed=0):
    torch.manual_seed(seed)
    m = IterativeFusionModule(num_phases, 8, conv_op=torch.nn.Conv3d, kernel_size=3)
    return m.eval()


def images(batch=2, phases=4, shape=(4, 8, 8), seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn((batch, phases) + shape, generator=g)


def reference_fusion(m, x1, phases):
    """Brute force: fuse only ``phases`` (channel indices) of one sample (1, P, ...) in time order."""
    h = m.phase_blocks[phases[0]](x1[:, phases[0]:phases[0] + 1])
    for p in phases[1:]:
        h = m.fusion(torch.cat((h, m.phase_blocks[p](x1[:, p:p + 1])), dim=1))
    return h


def test_phase_presence_constant_and_padded_constant_are_absent():
    x = images(batch=3)
    x[0, 3] = -1.7  # constant: missing phase
    x[1, 1] = -1.7
    x[1, 1, :, :2] = 0.0  # missing phase padded with zeros (nnU-Net crop/sliding window padding)
    x[2] = 0.5  # pure air patch: everything constant -> fall back to all present
    expected = torch.tensor([[1, 1, 1, 0], [1, 0, 1, 1], [1, 1, 1, 1]], dtype=torch.bool)
    assert torch.equal(phase_presence(x), expected)


@pytest.mark.parametrize("present", [c for r in range(1, 5) for c in combinations(range(4), r)])
def test_missing_phases_equal_fusing_only_present_ones_in_time_order(present):
    m = ifm()
    x = images(batch=1)
    for p in set(range(4)) - set(present):
        x[:, p] = -2.5
    with torch.no_grad():
        out = m(x)
        ref = reference_fusion(m, x, list(present))
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_explicit_presence_overrides_detection():
    m = ifm()
    x = images(batch=1)
    with torch.no_grad():
        out = m(x, presence=torch.tensor([[True, False, True, False]]))
        ref = reference_fusion(m, x, [0, 2])
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-6)


def test_sample_output_independent_of_other_samples_phases():
    m = ifm()
    x = images(batch=3, seed=1)
    x[0, 1] = 3.0  # sample 0: no A
    with torch.no_grad():
        alone = m(x[:1])
        for partner_missing in [(), (0,), (3,), (1, 2, 3), (0, 1, 2)]:
            xb = x.clone()
            for p in partner_missing:
                xb[1:, p] = -1.0
            torch.testing.assert_close(m(xb)[:1], alone, rtol=1e-5, atol=1e-6)


def test_mixed_batch_every_sample_equals_its_own_output():
    m = ifm()
    x = images(batch=5, seed=4)
    x[1, 3] = 1.0
    x[3, 3] = 1.0
    x[2, 1:] = -1.0
    with torch.no_grad():
        batch = m(x)
        for b in range(5):
            torch.testing.assert_close(batch[b:b + 1], m(x[b:b + 1]), rtol=1e-5, atol=1e-6)


def test_missing_phase_block_gets_no_gradient():
    m = ifm().train()
    x = images(batch=2, seed=2)
    x[:, 3] = -1.0  # D missing in every sample
    m(x).square().mean().backward()
    for p, block in enumerate(m.phase_blocks):
        grads = [q.grad for q in block.parameters()]
        total = sum(float(g.abs().sum()) for g in grads if g is not None)
        # every parameter takes part in the graph (nnU-Net's DDP has no find_unused_parameters) ...
        assert all(g is not None for g in grads)
        if p == 3:  # ... and the missing phase's block gets a zero gradient
            assert total == 0.0
        else:
            assert total > 0.0


def test_missing_phase_block_no_gradient_from_that_sample():
    """D present in sample 1 only: D's gradient is the one sample 1 alone gives."""
    m = ifm().train().double()
    x = images(batch=2, seed=3).double()
    x[0, 3] = 2.0
    m(x)[1:].sum().backward()
    g_batch = [q.grad.clone() for q in m.phase_blocks[3].parameters()]
    m.zero_grad()
    m(x)[:1].sum().backward()
    assert all(float(q.grad.abs().sum()) == 0.0 for q in m.phase_blocks[3].parameters())
    m.zero_grad()
    m(x[1:]).sum().backward()
    for a, q in zip(g_batch, m.phase_blocks[3].parameters()):
        torch.testing.assert_close(a, q.grad, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("arch,kw", [
    ("dynamic_network_architectures.architectures.unet.PlainConvUNet", {}),
    ("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet",
     {"n_blocks_per_stage": [1, 1, 1], "n_conv_per_stage": None}),
])
def test_insert_ifm_keeps_nnunet_network_and_deep_supervision(arch, kw):
    kwargs = arch_kwargs(**kw)
    kwargs = {k: v for k, v in kwargs.items() if v is not None or k.startswith("dropout")}
    torch.manual_seed(0)
    net = get_network_from_plans(arch, kwargs, REQ_IMPORT, 3, 14, deep_supervision=True)
    plain_params = {n for n, _ in net.named_parameters()}
    insert_ifm(net, 3)
    assert any(isinstance(mod, IterativeFusionModule) for mod in net.modules())
    # everything but the first layer is still nnU-Net's
    kept = {n for n, _ in net.named_parameters()} & plain_params
    assert len(plain_params - kept) == 2 or len(plain_params - kept) == 4  # first conv (+ bias) (+ norm) replaced
    x = images(batch=2, phases=3, shape=(4, 16, 16))
    out = net(x)
    assert isinstance(out, (list, tuple)) and out[0].shape == (2, 14, 4, 16, 16)
    net.decoder.deep_supervision = False  # what nnUNetTrainer.set_deep_supervision_enabled does
    assert net(x).shape == (2, 14, 4, 16, 16)


def test_insert_ifm_rejects_channel_mismatch():
    net = get_network_from_plans("dynamic_network_architectures.architectures.unet.PlainConvUNet", arch_kwargs(),
                                 REQ_IMPORT, 2, 14, deep_supervision=False)
    with pytest.raises(ValueError, match="expected 4 phases"):
        insert_ifm(net, 4)
    with pytest.raises(ValueError, match="1 to 4 phases"):
        IterativeFusionModule(5, 8)


def test_dropout_subsets_and_all_reachable():
    assert len(dropout_subsets([True] * 4)) == 15
    assert dropout_subsets([True, True, True, False]) == [(0,), (1,), (2,), (0, 1), (0, 2), (1, 2), (0, 1, 2)]
    np.random.seed(0)
    t = PhaseDropoutTransform(p=1.0)
    for present, expected in [([True] * 4, 15), ([True, True, True, False], 7), ([True, False, False, False], 1)]:
        seen = set()
        for _ in range(400):
            img = torch.randn(4, 2, 4, 4)
            d = t(image=img, **{PRESENCE_KEY: torch.tensor(present)})
            kept = tuple(int(i) for i in torch.nonzero(d[PRESENCE_KEY]).flatten())
            assert set(kept) <= {i for i, p in enumerate(present) if p} and kept
            assert torch.all(d["image"][~d[PRESENCE_KEY]] == 0)
            seen.add(kept)
        assert len(seen) == expected
        assert {(0,), (0, 1, 2)} & seen  # screening (NC only) / no delayed phase


def test_dropout_probability_zero_keeps_everything():
    np.random.seed(0)
    d = PhaseDropoutTransform(p=0.0)(image=torch.randn(4, 2, 4, 4), **{PRESENCE_KEY: torch.ones(4, dtype=bool)})
    assert bool(d[PRESENCE_KEY].all())
    with pytest.raises(ValueError):
        PhaseDropoutTransform(p=1.5)


def test_presence_survives_nnunet_augmentation():
    """A missing phase is no longer constant after nnU-Net's augmentations; the wrapper makes it constant again."""
    from nnunet_liver.trainers.liver_trainers import LiverIFMTrainer

    class NoDropout(LiverIFMTrainer):
        phase_dropout_p = 0.0

    np.random.seed(0)
    torch.manual_seed(0)
    tr = NoDropout.get_training_transforms(
        (8, 16, 16), (-0.5, 0.5), None, (1, 2), False,
        use_mask_for_norm=[False] * 4, foreground_labels=list(range(1, 14)))
    base = nnUNetTrainer.get_training_transforms(
        (8, 16, 16), (-0.5, 0.5), None, (1, 2), False,
        use_mask_for_norm=[False] * 4, foreground_labels=list(range(1, 14)))
    broke = 0
    for i in range(20):
        img = torch.randn(4, 10, 20, 20)
        img[3] = -1.3  # delayed phase missing
        seg = torch.randint(0, 14, (1, 10, 20, 20)).to(torch.int16)
        out = tr(image=img.clone(), segmentation=seg.clone())
        assert PRESENCE_KEY not in out
        pres = phase_presence(out["image"][None])[0]
        assert pres.tolist() == [True, True, True, False]
        assert torch.all(out["image"][3] == 0)
        plain = base(image=img.clone(), segmentation=seg.clone())
        broke += int(bool(phase_presence(plain["image"][None])[0][3]))
    assert broke > 0  # nnU-Net's own pipeline does make the missing channel look present sometimes


def test_detect_presence_transform():
    img = torch.randn(3, 4, 8, 8)
    img[1] = 7.0
    d = DetectPhasePresenceTransform()(image=img)
    assert d[PRESENCE_KEY].tolist() == [True, False, True]
    d["image"][1] = torch.randn(4, 8, 8)
    d = ImposeAbsentPhasesTransform()(**d)
    assert torch.all(d["image"][1] == 0) and PRESENCE_KEY not in d


def test_demo_trainers_use_their_own_phase_dropout():
    """The demo recipe's lighter phase dropout reaches nnU-Net's pipeline; the full trainers keep LIDIA's 0.5."""
    from nnunet_liver.trainers import liver_demo_trainers as dt
    from nnunet_liver.trainers.liver_trainers import PHASE_DROPOUT_P, LiverIFMTrainer

    args = ((8, 16, 16), (-0.5, 0.5), None, (1, 2), False)
    kwargs = dict(use_mask_for_norm=[False] * 4, foreground_labels=list(range(1, 14)))
    for cls, p in ((LiverIFMTrainer, PHASE_DROPOUT_P), (dt.LiverIFMTrainer_demo, dt.DEMO_PHASE_DROPOUT_P),
                   (dt.LesionShufflePatchTrainer_demo, dt.DEMO_PHASE_DROPOUT_P)):
        ts = cls.get_training_transforms(*args, **kwargs).transforms
        assert isinstance(ts[0], DetectPhasePresenceTransform) and isinstance(ts[-1], ImposeAbsentPhasesTransform)
        assert isinstance(ts[1], PhaseDropoutTransform) and ts[1].p == p
        assert cls.phase_dropout_p == p  # what training_settings.json records is what the transforms use
    assert dt.DEMO_PHASE_DROPOUT_P < PHASE_DROPOUT_P

    class Variant(dt.LiverIFMTrainer_demo):
        phase_dropout_p = 0.35

    ts = Variant.get_training_transforms(*args, **kwargs).transforms
    assert ts[1].p == Variant.phase_dropout_p == 0.35  # a variant's own value reaches the pipeline it records
    rates = dt.LesionShufflePatchTrainer_demo.scheme_rates
    assert abs(sum(rates.values()) - 1.0) < 1e-9
    assert rates["original_positive"] + rates["shuffled_positive"] > 0.5
