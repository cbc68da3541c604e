"""Sharpness-aware minimisation (SAM) around nnU-Net's optimiser, with nnU-Net's GradScaler and gradient clipping.

SAM (Foret et al., *Sharpness-aware minimization for efficiently improving generalization*) takes two gradients
per step: ``g1`` at the weights ``w``, then ``g2`` at the perturbed weights ``w + e`` with
``e = rho * g1 / ||g1||_2`` (the global norm over every parameter with a gradient); the base optimiser then steps
from ``w`` with ``g2``. :class:`SAM` does the perturbation (:meth:`SAM.first_step`) and its undoing
(:meth:`SAM.restore`); the base optimiser stays nnU-Net's (its learning-rate schedule, its state in the checkpoint).

With mixed precision (nnU-Net's ``GradScaler`` on CUDA) the first gradient is the scaled one: :meth:`first_step`
takes ``grad_scale = 1 / scaler.get_scale()`` and unscales it itself (``GradScaler.unscale_`` may run once per
optimiser step, and the second backward needs it); a non-finite first gradient (an fp16 overflow) skips the
perturbation, and the second backward's overflow makes ``scaler.step`` skip the step and lower the scale as usual.
The weights are restored before the second gradient is unscaled, clipped (nnU-Net's norm 12) and applied, so the
step is nnU-Net's own step with SAM's gradient. :func:`sam_train_step` is that sequence.

LIDIA (Huang et al., *LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative Fusion
and Asymmetric Contrastive Learning*) trains with SAM; it gives no ``rho``, so SAM's default 0.05 is used.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, List, Optional

import torch

__all__ = ["SAM", "sam_train_step", "SAM_RHO"]

#: SAM's neighbourhood radius (Foret et al.'s default; LIDIA does not state one)
SAM_RHO = 0.05


class SAM:
    """The two SAM moves around a base optimiser's step.

    Parameters
    ----------
    params : the parameters to perturb (those of the base optimiser).
    rho : neighbourhood radius.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], rho: float = SAM_RHO):
        if rho < 0:
            raise ValueError(f"SAM rho must be >= 0, got {rho}")
        self.params: List[torch.nn.Parameter] = [p for p in params]
        self.rho = float(rho)
        self._perturbation: Dict[int, torch.Tensor] = {}

    @torch.no_grad()
    def first_step(self, grad_scale: float = 1.0) -> bool:
        """Move the weights to ``w + rho * g / ||g||`` with ``g = grad * grad_scale``; returns whether they moved
        (False for a zero or non-finite gradient)."""
        if self._perturbation:
            raise RuntimeError("SAM.first_step called twice without restore()")
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return False
        norm = torch.linalg.vector_norm(
            torch.stack([torch.linalg.vector_norm(g.detach().float()) for g in grads])) * float(grad_scale)
        if not bool(torch.isfinite(norm)) or float(norm) == 0.0:
            return False
        factor = self.rho * float(grad_scale) / (norm + 1e-12)
        for p in self.params:
            if p.grad is None:
                continue
            e = (p.grad.detach().float() * factor).to(p.dtype)
            p.add_(e)
            self._perturbation[id(p)] = e
        return True

    @torch.no_grad()
    def restore(self) -> None:
        """Undo :meth:`first_step` (back to ``w``)."""
        for p in self.params:
            e = self._perturbation.get(id(p))
            if e is not None:
                p.sub_(e)
        self._perturbation = {}


def sam_train_step(sam: SAM, optimizer: torch.optim.Optimizer, compute_loss: Callable[[], torch.Tensor],
                   grad_scaler=None, clip_norm: Optional[float] = 12.0, parameters=None,
                   autocast=None) -> torch.Tensor:
    """One SAM step as nnU-Net's ``train_step`` takes one plain step; returns the first loss (detached).

    ``compute_loss()`` runs the forward pass and the loss (called twice); ``autocast`` is the context manager to
    run it in (nnU-Net's ``torch.autocast`` on CUDA, none on the CPU); ``grad_scaler`` nnU-Net's GradScaler or None;
    ``clip_norm`` nnU-Net's gradient clipping (12) of ``parameters`` (default: SAM's).
    """
    parameters = sam.params if parameters is None else list(parameters)
    ctx = autocast if autocast is not None else contextlib.nullcontext
    optimizer.zero_grad(set_to_none=True)
    with ctx():
        loss = compute_loss()
    if grad_scaler is not None:
        grad_scaler.scale(loss).backward()
        sam.first_step(grad_scale=1.0 / float(grad_scaler.get_scale()))
    else:
        loss.backward()
        sam.first_step()
    optimizer.zero_grad(set_to_none=True)
    try:
        with ctx():
            loss2 = compute_loss()
        (grad_scaler.scale(loss2) if grad_scaler is not None else loss2).backward()
    finally:
        sam.restore()  # the step starts from w, with the gradient taken at w + e
    if grad_scaler is not None:
        grad_scaler.unscale_(optimizer)
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
        grad_scaler.step(optimizer)
        grad_scaler.update()
    else:
        if clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(parameters, clip_norm)
        optimizer.step()
    return loss.detach()
