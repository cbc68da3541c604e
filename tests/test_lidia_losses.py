"""LIDIA's lesion-level losses against hand-computed values: focal loss (its definition; gamma = 0 is the cross-
entropy), the supervised contrastive loss of Eq. (4), the asymmetric form of Eq. (5), the temperature, the memory
bank's FIFO and label bookkeeping; SAM's two steps against a hand-rolled reference, plainly and through a GradScaler."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_liver.trainers.liver_lidia_losses import (MemoryBank, asymmetric_contrastive_loss, contrastive_terms,
                                                      focal_loss, supervised_contrastive_loss)
from nnunet_liver.trainers.liver_sam import SAM, sam_train_step


# ---------------------------------------------------------------- focal loss

def test_focal_loss_against_its_definition():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 2])
    p = torch.softmax(logits, 1)
    p0, p1 = float(p[0, 0]), float(p[1, 2])
    expected = (-(1 - p0) ** 2 * math.log(p0) - (1 - p1) ** 2 * math.log(p1)) / 2
    assert float(focal_loss(logits, labels, gamma=2.0)) == pytest.approx(expected, rel=1e-6)
    # alpha_t weights each sample's term by its class's weight
    alpha = torch.tensor([0.25, 1.0, 3.0])
    expected_a = (-0.25 * (1 - p0) ** 2 * math.log(p0) - 3.0 * (1 - p1) ** 2 * math.log(p1)) / 2
    assert float(focal_loss(logits, labels, gamma=2.0, alpha=alpha)) == pytest.approx(expected_a, rel=1e-6)


def test_focal_loss_gamma_zero_is_cross_entropy_and_empty_is_zero():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, 6, generator=g)
    labels = torch.randint(0, 6, (7,), generator=g)
    assert float(focal_loss(logits, labels, gamma=0.0)) == pytest.approx(float(F.cross_entropy(logits, labels)),
                                                                         rel=1e-6)
    # focusing lowers every sample's term (p_t < 1)
    assert float(focal_loss(logits, labels, gamma=2.0)) < float(F.cross_entropy(logits, labels))
    empty = torch.zeros(0, 6, requires_grad=True)
    out = focal_loss(empty, torch.zeros(0, dtype=torch.long))
    assert float(out.detach()) == 0.0 and out.requires_grad


# ---------------------------------------------------------------- contrastive losses

def _unit(*angles_deg):
    return torch.tensor([[math.cos(math.radians(a)), math.sin(math.radians(a))] for a in angles_deg])


def _eq4_by_hand(z, labels, tau):
    """Eq. (4), written out per anchor with Python loops (the brute-force reference)."""
    terms = []
    for i in range(len(z)):
        others = [a for a in range(len(z)) if a != i]
        pos = [p for p in others if labels[p] == labels[i]]
        if not pos:
            continue
        denom = sum(math.exp(float(z[i] @ z[a]) / tau) for a in others)
        terms.append(-sum(math.log(math.exp(float(z[i] @ z[p]) / tau) / denom) for p in pos) / len(pos))
    return sum(terms) / len(terms)


def test_supervised_contrastive_loss_is_eq4():
    # two of class 0 at 0 and 30 degrees, one of class 1 at 90, one of class 0 at 180
    z = _unit(0, 30, 90, 180)
    labels = torch.tensor([0, 0, 1, 0])
    for tau in (0.1, 1.0):
        # anchor 0 by hand: positives 1 (cos 30) and 3 (cos 180); A = {1, 2, 3}
        c30, c90, c180 = math.cos(math.radians(30)), 0.0, -1.0
        denom0 = math.exp(c30 / tau) + math.exp(c90 / tau) + math.exp(c180 / tau)
        term0 = -0.5 * (math.log(math.exp(c30 / tau) / denom0) + math.log(math.exp(c180 / tau) / denom0))
        terms, valid = contrastive_terms(z, labels, temperature=tau)
        assert float(terms[0]) == pytest.approx(term0, rel=1e-5)
        assert valid.tolist() == [True, True, False, True]  # class 1 has no positive
        assert float(supervised_contrastive_loss(z, labels, temperature=tau)) == pytest.approx(
            _eq4_by_hand(z, labels, tau), rel=1e-5)
    # the temperature matters: the two values differ
    assert float(supervised_contrastive_loss(z, labels, temperature=0.1)) != pytest.approx(
        float(supervised_contrastive_loss(z, labels, temperature=1.0)), rel=1e-3)


def test_supervised_contrastive_loss_with_the_bank_is_eq4_over_the_union():
    g = torch.Generator().manual_seed(3)
    z = F.normalize(torch.randn(5, 4, generator=g), dim=1)
    labels = torch.tensor([0, 1, 1, 2, 0])
    bank_z = F.normalize(torch.randn(6, 4, generator=g), dim=1)
    bank_labels = torch.tensor([2, 2, 0, 1, 3, 0])
    # anchors are the batch only; their contrast set is the rest of the batch and the bank
    allz, alll = torch.cat([z, bank_z]), torch.cat([labels, bank_labels])
    expected = []
    for i in range(5):
        others = [a for a in range(11) if a != i]
        pos = [p for p in others if alll[p] == alll[i]]
        denom = sum(math.exp(float(allz[i] @ allz[a]) / 0.1) for a in others)
        expected.append(-sum(float(allz[i] @ allz[p]) / 0.1 - math.log(denom) for p in pos) / len(pos))
    got = supervised_contrastive_loss(z, labels, bank_z, bank_labels, temperature=0.1)
    assert float(got) == pytest.approx(sum(expected) / 5, rel=1e-5)


def test_asymmetric_loss_eq5_no_attraction_among_others():
    OTHER = 4
    # common anchors 0 (class 0) and 1 (class 0); "others" 2 and 3
    z = _unit(0, 40, 100, 200)
    labels = torch.tensor([0, 0, OTHER, OTHER])
    tau = 0.1
    terms, valid = contrastive_terms(z, labels, temperature=tau, heterogeneous=(OTHER,))
    assert valid.tolist() == [True, True, True, True]
    # an "others" anchor: log sum over the COMMON samples only (Eq. 5), the other "others" sample left out
    for r in (2, 3):
        expected = math.log(sum(math.exp(float(z[r] @ z[a]) / tau) for a in (0, 1)))
        assert float(terms[r]) == pytest.approx(expected, rel=1e-5)
    # a common anchor: Eq. (4) with every other sample (the "others" too) in the denominator
    denom = sum(math.exp(float(z[0] @ z[a]) / tau) for a in (1, 2, 3))
    assert float(terms[0]) == pytest.approx(-(float(z[0] @ z[1]) / tau - math.log(denom)), abs=1e-6)
    loss = asymmetric_contrastive_loss(z, labels, temperature=tau, heterogeneous=(OTHER,))
    assert float(loss) == pytest.approx(float(terms.mean()), rel=1e-6)
    # no attraction among "others": their own terms do not depend on each other (gradient of anchor 2's term with
    # respect to sample 3 is zero), while the symmetric loss (Eq. 4 for everyone) pulls them together
    zz = z.clone().requires_grad_(True)
    t, _ = contrastive_terms(zz, labels, temperature=tau, heterogeneous=(OTHER,))
    t[2].backward()
    assert torch.count_nonzero(zz.grad[3]) == 0 and torch.count_nonzero(zz.grad[0]) > 0
    zz.grad = None
    t, _ = contrastive_terms(zz, labels, temperature=tau)
    t[2].backward()
    assert torch.count_nonzero(zz.grad[3]) > 0
    # the "others" anchor's term falls as it moves away from the common classes (repulsion)
    near = contrastive_terms(_unit(0, 40, 20, 200), labels, temperature=tau, heterogeneous=(OTHER,))[0][2]
    far = contrastive_terms(_unit(0, 40, 200, 200), labels, temperature=tau, heterogeneous=(OTHER,))[0][2]
    assert float(far) < float(near)


def test_asymmetric_loss_only_others_or_single_samples_is_zero():
    z = _unit(0, 90, 180)
    assert float(asymmetric_contrastive_loss(z, torch.tensor([4, 4, 4]), heterogeneous=(4,))) == 0.0
    assert float(asymmetric_contrastive_loss(z, torch.tensor([0, 1, 2]), heterogeneous=(4,))) == 0.0
    empty = asymmetric_contrastive_loss(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), heterogeneous=(4,))
    assert float(empty) == 0.0
    # without heterogeneous classes the asymmetric loss is Eq. (4)
    g = torch.Generator().manual_seed(1)
    z = F.normalize(torch.randn(6, 3, generator=g), dim=1)
    labels = torch.tensor([0, 1, 0, 1, 2, 2])
    assert float(asymmetric_contrastive_loss(z, labels)) == pytest.approx(
        float(supervised_contrastive_loss(z, labels)), rel=1e-6)


# ---------------------------------------------------------------- memory bank

def test_memory_bank_fifo_labels_and_state_dict():
    bank = MemoryBank(size=4, dim=2)
    assert len(bank) == 0 and bank.get()[0].shape == (0, 2)
    z = torch.arange(12, dtype=torch.float32).view(6, 2)
    bank.enqueue(z[:3], torch.tensor([0, 1, 2]))
    emb, lab = bank.get()
    assert emb.tolist() == z[:3].tolist() and lab.tolist() == [0, 1, 2]
    bank.enqueue(z[3:6], torch.tensor([3, 4, 5]))  # 6 entries into 4 slots: the two oldest are gone
    emb, lab = bank.get()
    assert len(bank) == 4 and emb.tolist() == z[2:6].tolist() and lab.tolist() == [2, 3, 4, 5]
    # detached: the bank holds no graph
    x = torch.ones(1, 2, requires_grad=True)
    bank.enqueue(x * 2, torch.tensor([1]))
    assert not bank.get()[0].requires_grad
    assert bank.get()[1].tolist() == [3, 4, 5, 1]
    # a batch larger than the bank keeps its last entries
    bank.enqueue(torch.zeros(9, 2) + torch.arange(9.0)[:, None], torch.arange(9))
    assert bank.get()[1].tolist() == [5, 6, 7, 8]
    restored = MemoryBank(size=4, dim=2)
    restored.load_state_dict(bank.state_dict())
    assert torch.equal(restored.get()[0], bank.get()[0]) and torch.equal(restored.get()[1], bank.get()[1])
    restored.enqueue(torch.full((1, 2), -1.0), torch.tensor([2]))
    bank.enqueue(torch.full((1, 2), -1.0), torch.tensor([2]))
    assert restored.get()[1].tolist() == bank.get()[1].tolist() == [6, 7, 8, 2]
    with pytest.raises(ValueError, match="enqueue expects"):
        bank.enqueue(torch.zeros(2, 3), torch.zeros(2))


# ---------------------------------------------------------------- SAM

def _tiny_model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))


def _data():
    g = torch.Generator().manual_seed(5)
    return torch.randn(8, 3, generator=g), torch.randint(0, 2, (8,), generator=g)


def _reference_sam(model, x, y, lr, rho, clip):
    """SAM by hand: g1 at w, e = rho g1/||g1||, g2 at w + e, clip g2, w <- w - lr g2."""
    params = list(model.parameters())
    w = [p.detach().clone() for p in params]
    g1 = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    norm = torch.sqrt(sum((g ** 2).sum() for g in g1))
    with torch.no_grad():
        for p, g in zip(params, g1):
            p.add_(rho * g / norm)
    g2 = torch.autograd.grad(F.cross_entropy(model(x), y), params)
    total = torch.sqrt(sum((g ** 2).sum() for g in g2))
    scale = min(1.0, clip / (float(total) + 1e-6))
    return [wi - lr * gi * scale for wi, gi in zip(w, g2)]


@pytest.mark.parametrize("clip", [12.0, 0.05])
def test_sam_step_equals_the_hand_rolled_reference(clip):
    x, y = _data()
    ref_model = _tiny_model()
    expected = _reference_sam(ref_model, x, y, lr=0.1, rho=0.05, clip=clip)
    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sam = SAM(model.parameters(), rho=0.05)
    loss = sam_train_step(sam, opt, lambda: F.cross_entropy(model(x), y), clip_norm=clip)
    assert float(loss) == pytest.approx(float(F.cross_entropy(_tiny_model()(x), y).detach()), rel=1e-6)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p.detach(), e, atol=1e-6)
    # SAM moved differently from a plain step (the second gradient is not the first)
    plain = _tiny_model()
    F.cross_entropy(plain(x), y).backward()
    with torch.no_grad():
        moved = [(p - 0.1 * p.grad).detach() for p in plain.parameters()]
    if clip == 12.0:
        assert max(float((p.detach() - m).abs().max()) for p, m in zip(model.parameters(), moved)) > 1e-6


def test_sam_through_a_grad_scaler_equals_the_plain_step():
    """nnU-Net's mixed-precision path (scaled backward, unscale_, clip, scaler.step, update) on the CPU's GradScaler:
    the perturbation and the step must be the unscaled ones."""
    x, y = _data()
    expected = _reference_sam(_tiny_model(), x, y, lr=0.1, rho=0.05, clip=12.0)
    model = _tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    sam_train_step(SAM(model.parameters()), opt, lambda: F.cross_entropy(model(x), y), grad_scaler=scaler)
    for p, e in zip(model.parameters(), expected):
        assert torch.allclose(p.detach(), e, atol=1e-6)
    assert scaler.get_scale() == 2.0 ** 10  # no overflow: the scale stays


def test_sam_overflow_skips_the_step_and_restores_the_weights():
    x, y = _data()
    model = _tiny_model()
    before = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)

    def loss_inf():
        return F.cross_entropy(model(x), y) * float("inf")

    sam_train_step(SAM(model.parameters()), opt, loss_inf, grad_scaler=scaler)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p.detach(), b)  # no perturbation left behind, no step
    assert scaler.get_scale() < 2.0 ** 10
    sam = SAM(model.parameters())
    with pytest.raises(ValueError, match="rho"):
        SAM(model.parameters(), rho=-1)
    assert sam.first_step() is False  # no gradients yet: nothing to do
