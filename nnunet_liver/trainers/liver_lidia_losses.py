"""LIDIA's lesion-level losses: focal loss, the supervised contrastive loss (Eq. 4), its asymmetric form (Eq. 5),
and the memory bank for cross-batch contrast.

- :func:`focal_loss`: ``FL(p_t) = -alpha_t (1 - p_t)^gamma log p_t`` averaged over the lesions (Lin et al., *Focal
  loss for dense object detection*); ``gamma = 0`` and no ``alpha`` is the cross-entropy.
- :func:`supervised_contrastive_loss`: Eq. (4) of LIDIA, per anchor ``x``::

      L(x) = - 1/|P(x)| sum_{p in P(x)} log( exp(z(x).z(p)/tau) / sum_{a in A(x)} exp(z(x).z(a)/tau) )

  ``A(x)``: every contrast sample but ``x`` itself (the batch's other lesions and the memory bank), ``P(x)``: those
  of ``x``'s label; anchors without a positive contribute nothing (Khosla et al.'s convention).
- :func:`asymmetric_contrastive_loss`: Eq. (5). Anchors of a *common* class use Eq. (4), with the heterogeneous
  ("others") samples in their denominator (so common classes are pushed away from them); an anchor ``x_r`` of the
  heterogeneous class is only pushed away from the common classes::

      L(x_r) = log sum_{a in A_c(x_r)} exp(z(x_r).z(a)/tau)

  with ``A_c(x_r)`` the common-class contrast samples: no attraction among "others" and no repulsion between them.
  The loss is the mean of the anchors' terms (anchors with an empty ``P(x)``, resp. ``A_c(x_r)``, left out).
- :class:`MemoryBank`: a FIFO of detached embeddings and their labels (1024 in LIDIA), with ``state_dict`` for
  checkpoints.

Embeddings ``z`` are the projection head's outputs, L2-normalised (the dot product is the cosine similarity).

Papers: Huang et al., "LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative Fusion
and Asymmetric Contrastive Learning"; Khosla et al., "Supervised Contrastive Learning"; Lin et al., "Focal Loss for
Dense Object Detection".
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["focal_loss", "supervised_contrastive_loss", "asymmetric_contrastive_loss", "contrastive_terms",
           "MemoryBank"]


def focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0,
               alpha: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Mean focal loss of ``logits`` (N, K) against class indices ``labels`` (N,); 0 (in the graph) when N = 0.

    ``alpha``: optional per-class weights (K,), multiplied into each sample's term (``alpha_t``).
    """
    if logits.shape[0] == 0:
        return logits.sum() * 0.0
    logp = F.log_softmax(logits.float(), dim=1).gather(1, labels.long().view(-1, 1)).squeeze(1)
    term = -((1.0 - logp.exp()).clamp_min(0.0) ** gamma) * logp if gamma != 0 else -logp
    if alpha is not None:
        term = term * alpha.to(term.device, term.dtype)[labels.long()]
    return term.mean()


def contrastive_terms(z: torch.Tensor, labels: torch.Tensor, bank_z: Optional[torch.Tensor] = None,
                      bank_labels: Optional[torch.Tensor] = None, temperature: float = 0.1,
                      heterogeneous: Sequence[int] = ()) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-anchor terms of Eq. (4) / Eq. (5) for the anchors ``z`` (N, D) with ``labels`` (N,).

    The contrast set of anchor ``i`` is the other anchors and the bank (``bank_z`` (M, D), ``bank_labels`` (M,),
    detached). Labels in ``heterogeneous`` follow Eq. (5), the others Eq. (4); with ``heterogeneous`` empty every
    anchor follows Eq. (4) (the ordinary supervised contrastive loss).

    Returns
    -------
    (terms (N,), valid (N,) bool): each anchor's term, and whether it has one (a positive for Eq. (4), a common
    contrast sample for Eq. (5)); invalid anchors' terms are 0.
    """
    n = z.shape[0]
    z = z.float()
    labels = labels.long().to(z.device)
    if bank_z is not None and bank_z.shape[0] > 0:
        contrast = torch.cat([z, bank_z.detach().to(z.device, z.dtype)], 0)
        contrast_labels = torch.cat([labels, bank_labels.long().to(z.device)], 0)
    else:
        contrast, contrast_labels = z, labels
    logits = z @ contrast.T / float(temperature)  # (N, N + M)
    not_self = torch.ones_like(logits, dtype=torch.bool)
    if n:
        not_self[torch.arange(n, device=z.device), torch.arange(n, device=z.device)] = False
    het = torch.zeros(int(max(int(contrast_labels.max()) + 1 if contrast_labels.numel() else 1,
                              max(heterogeneous, default=0) + 1)), dtype=torch.bool, device=z.device)
    if len(heterogeneous):
        het[torch.as_tensor(list(heterogeneous), device=z.device)] = True
    anchor_het = het[labels]  # (N,)
    contrast_common = ~het[contrast_labels]  # (N + M,)
    neg_inf = torch.finfo(logits.dtype).min
    # Eq. (4): log-softmax over A(x) (every contrast sample but x), averaged over the positives
    log_prob = logits - torch.logsumexp(logits.masked_fill(~not_self, neg_inf), dim=1, keepdim=True)
    positives = (labels[:, None] == contrast_labels[None, :]) & not_self
    num_pos = positives.sum(1)
    supcon = -(log_prob * positives).sum(1) / num_pos.clamp_min(1)
    # Eq. (5): log-sum-exp over the common-class contrast samples A_c(x_r)
    common = contrast_common[None, :] & not_self
    lse_common = torch.logsumexp(logits.masked_fill(~common, neg_inf), dim=1)
    num_common = common.sum(1)
    terms = torch.where(anchor_het, lse_common, supcon)
    valid = torch.where(anchor_het, num_common > 0, num_pos > 0)
    return torch.where(valid, terms, torch.zeros_like(terms)), valid


def supervised_contrastive_loss(z: torch.Tensor, labels: torch.Tensor, bank_z: Optional[torch.Tensor] = None,
                                bank_labels: Optional[torch.Tensor] = None, temperature: float = 0.1
                                ) -> torch.Tensor:
    """LIDIA's Eq. (4) averaged over the anchors that have a positive; 0 (in the graph) when none has."""
    terms, valid = contrastive_terms(z, labels, bank_z, bank_labels, temperature, heterogeneous=())
    return terms.sum() / valid.sum().clamp_min(1)


def asymmetric_contrastive_loss(z: torch.Tensor, labels: torch.Tensor, bank_z: Optional[torch.Tensor] = None,
                                bank_labels: Optional[torch.Tensor] = None, temperature: float = 0.1,
                                heterogeneous: Sequence[int] = ()) -> torch.Tensor:
    """LIDIA's asymmetric contrastive loss (Eq. (4) for common anchors, Eq. (5) for ``heterogeneous`` ones),
    averaged over the anchors that have a term; 0 (in the graph) when none has."""
    terms, valid = contrastive_terms(z, labels, bank_z, bank_labels, temperature, heterogeneous=heterogeneous)
    return terms.sum() / valid.sum().clamp_min(1)


class MemoryBank(nn.Module):
    """A FIFO of the last ``size`` embeddings (detached) and their labels, for cross-batch contrast.

    :meth:`enqueue` appends a batch (the oldest entries are overwritten once full); :meth:`get` returns the stored
    embeddings and labels oldest first. :meth:`state_dict` / :meth:`load_state_dict` (the buffers) carry it through
    a checkpoint.
    """

    def __init__(self, size: int, dim: int):
        super().__init__()
        if size < 0 or dim < 1:
            raise ValueError(f"memory bank size {size} must be >= 0 and dim {dim} >= 1")
        self.size, self.dim = int(size), int(dim)
        self.register_buffer("embeddings", torch.zeros(self.size, self.dim))
        self.register_buffer("labels", torch.full((self.size,), -1, dtype=torch.long))
        self.register_buffer("pointer", torch.zeros((), dtype=torch.long))  # next slot to write
        self.register_buffer("count", torch.zeros((), dtype=torch.long))  # entries filled

    def __len__(self) -> int:
        return int(self.count)

    @torch.no_grad()
    def enqueue(self, z: torch.Tensor, labels: torch.Tensor) -> None:
        """Append ``z`` (N, dim) with ``labels`` (N,), detached; with N > size only the last ``size`` are kept."""
        if z.ndim != 2 or z.shape[1] != self.dim or labels.shape != z.shape[:1]:
            raise ValueError(f"enqueue expects z (N, {self.dim}) and labels (N,), got {tuple(z.shape)} and "
                             f"{tuple(labels.shape)}")
        if self.size == 0 or z.shape[0] == 0:
            return
        z, labels = z.detach()[-self.size:], labels.detach()[-self.size:]
        n = z.shape[0]
        slots = (int(self.pointer) + torch.arange(n)) % self.size
        slots = slots.to(self.embeddings.device)
        self.embeddings[slots] = z.to(self.embeddings.device, self.embeddings.dtype)
        self.labels[slots] = labels.to(self.labels.device, torch.long)
        self.pointer.fill_((int(self.pointer) + n) % self.size)
        self.count.fill_(min(self.size, int(self.count) + n))

    def get(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """(embeddings (n, dim), labels (n,)) stored, oldest first."""
        n = int(self.count)
        if n < self.size:
            return self.embeddings[:n], self.labels[:n]
        order = (int(self.pointer) + torch.arange(self.size, device=self.embeddings.device)) % self.size
        return self.embeddings[order], self.labels[order]
