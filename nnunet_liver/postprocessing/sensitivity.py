"""Multi-sensitivity label maps from one pass over the whole-CT model's probabilities (Wang et al., eq. 3).

For a lesion sensitivity factor ``f`` the label map is ``argmax`` over channels after the six lesion channels
(1..6) were multiplied by ``f``. Every factor is decided from four per-voxel quantities gathered in one pass:
the best lesion channel and its probability, the best non-lesion channel (0, 7..13) and its probability.

Exactness, including numpy's first-index tie rule:

* among the lesion channels, scaling by ``f`` keeps the order (floating-point rounding is monotone), so the scaled
  maximum is ``fl(max * f)``. For ``f`` a power of two >= 1 the product is exact, hence the first lesion channel
  reaching the maximum is unchanged. For any other ``f`` (or where ``max * f`` overflows) two different
  probabilities may round to the same product; the scaled first index is then recomputed for that chunk, still
  inside the same pass.
* between the two groups, when the scaled lesion maximum equals the non-lesion maximum, the lower channel index wins:
  background (0) beats every lesion channel, every lesion channel (1..6) beats the organs (7..13).

Memory: the volume is processed in z-chunks; temporaries are a few chunk-sized arrays and the outputs are uint8
(one byte per voxel per factor), so the extra memory is a small fraction of the float32 probability array.

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans".
"""
from __future__ import annotations

import math
from typing import Dict, Sequence, Tuple

import numpy as np

from nnunet_liver.labels import LESION_IDS, NUM_CLASSES

__all__ = ["lesion_sensitivity_masks", "scaled_argmax_reference", "LesionProbabilities"]

_L0, _L1 = min(LESION_IDS), max(LESION_IDS) + 1  # lesion channels 1..6 (a contiguous block)
_CHUNK_VOXELS_CPU = 1 << 20  # voxels per z-chunk on the CPU (a few MB of temporaries)
_CHUNK_VOXELS_GPU = 1 << 24


def _is_torch(x) -> bool:
    return type(x).__module__.startswith("torch")


def _exact_scaling(f: float) -> bool:
    """True if ``p * f`` preserves every order and tie among finite probabilities (power of two, >= 1)."""
    m, _ = math.frexp(f)
    return f >= 1.0 and m == 0.5


def _validate(probabilities, factors) -> Tuple[float, ...]:
    shape = tuple(probabilities.shape)
    if len(shape) != 4 or shape[0] != NUM_CLASSES:
        raise ValueError(f"probabilities must have shape ({NUM_CLASSES}, Z, Y, X) (background + 13 classes), "
                         f"got {shape}")
    if not probabilities.dtype.is_floating_point if _is_torch(probabilities) else \
            not np.issubdtype(probabilities.dtype, np.floating):
        raise ValueError(f"probabilities must be a floating-point array, got dtype {probabilities.dtype}")
    factors = tuple(float(f) for f in factors)
    if not factors:
        raise ValueError("factors must hold at least one lesion sensitivity factor, e.g. (1.0, 4.0)")
    bad = [f for f in factors if not (math.isfinite(f) and f > 0)]
    if bad:
        raise ValueError(f"lesion sensitivity factors must be finite and > 0, got {bad}")
    return factors


def lesion_sensitivity_masks(probabilities, factors: Sequence[float] = (1.0, 4.0)) -> Dict[float, object]:
    """Label maps for several lesion sensitivity factors from one pass over the probabilities.

    Parameters
    ----------
    probabilities : numpy.ndarray or torch.Tensor, shape (14, Z, Y, X)
        softmax output of the whole-CT model (background + 13 classes), any floating dtype; torch tensors may
        live on any device. Not modified. NaN is rejected.
    factors : sequence of float
        lesion sensitivity factors ``f`` (> 0); the six lesion channels are multiplied by ``f`` before argmax.

    Returns
    -------
    dict
        ``{f: label_map}`` with ``label_map`` of shape (Z, Y, X), dtype uint8: a numpy array for numpy input, a
        torch tensor on the input's device for torch input. Each map equals
        ``argmax(scaled probabilities, axis=0)`` exactly, including the first-index tie rule.
    """
    factors = _validate(probabilities, factors)
    if _is_torch(probabilities):
        return _masks_torch(probabilities, factors)
    return _masks_numpy(np.asarray(probabilities), factors)


def _chunk_len(shape, voxels: int) -> int:
    return max(1, voxels // max(1, shape[2] * shape[3]))


def _masks_numpy(p: np.ndarray, factors) -> Dict[float, np.ndarray]:
    Z = p.shape[1]
    out = {f: np.empty(p.shape[1:], dtype=np.uint8) for f in factors}
    step = _chunk_len(p.shape, _CHUNK_VOXELS_CPU)
    nonlesion_upper = list(range(_L1, NUM_CLASSES))
    for z0 in range(0, Z, step):
        c = p[:, z0:z0 + step]
        les_max = np.max(c[_L0:_L1], axis=0)
        les_idx = np.full(les_max.shape, _L1 - 1, dtype=np.uint8)
        for k in range(_L1 - 2, _L0 - 1, -1):  # downwards: the lowest index reaching the maximum wins
            np.putmask(les_idx, c[k] == les_max, k)
        org_max = np.max(c[_L1:], axis=0)
        org_idx = np.full(org_max.shape, NUM_CLASSES - 1, dtype=np.uint8)
        for k in nonlesion_upper[-2::-1]:
            np.putmask(org_idx, c[k] == org_max, k)
        bg_wins = c[0] >= org_max  # background is channel 0: it wins ties against 7..13
        np.putmask(org_idx, bg_wins, 0)
        non_max = np.maximum(org_max, c[0])
        if np.isnan(les_max).any() or np.isnan(non_max).any():
            raise ValueError("probabilities contain NaN; the scaled argmax is undefined")
        del org_max
        # lesion wins a tie only against the organs (index >= 7), never against the background (index 0)
        tie_ok = ~bg_wins
        for f in factors:
            if f == 1.0:
                scaled = les_max
            else:
                scaled = les_max * np.asarray(f, dtype=les_max.dtype)
            idx = les_idx
            if not _exact_scaling(f) or np.isinf(scaled).any():
                idx = np.full(scaled.shape, _L1 - 1, dtype=np.uint8)
                fd = np.asarray(f, dtype=c.dtype)
                for k in range(_L1 - 2, _L0 - 1, -1):
                    np.putmask(idx, c[k] * fd == scaled, k)
            lesion_wins = scaled > non_max
            lesion_wins |= (scaled == non_max) & tie_ok
            np.copyto(out[f][z0:z0 + step], org_idx)
            np.putmask(out[f][z0:z0 + step], lesion_wins, idx)
    return out


def _masks_torch(p, factors):
    import torch

    Z = p.shape[1]
    out = {f: torch.empty(tuple(p.shape[1:]), dtype=torch.uint8, device=p.device) for f in factors}
    budget = _CHUNK_VOXELS_GPU if p.device.type != "cpu" else _CHUNK_VOXELS_CPU
    step = _chunk_len(p.shape, budget)
    with torch.no_grad():
        for z0 in range(0, Z, step):
            c = p[:, z0:z0 + step]
            les_max = torch.amax(c[_L0:_L1], dim=0)
            les_idx = torch.full(les_max.shape, _L1 - 1, dtype=torch.uint8, device=p.device)
            for k in range(_L1 - 2, _L0 - 1, -1):
                les_idx.masked_fill_(c[k] == les_max, k)
            org_max = torch.amax(c[_L1:], dim=0)
            org_idx = torch.full(org_max.shape, NUM_CLASSES - 1, dtype=torch.uint8, device=p.device)
            for k in range(NUM_CLASSES - 2, _L1 - 1, -1):
                org_idx.masked_fill_(c[k] == org_max, k)
            bg_wins = c[0] >= org_max
            org_idx.masked_fill_(bg_wins, 0)
            non_max = torch.maximum(org_max, c[0])
            if bool(torch.isnan(les_max).any()) or bool(torch.isnan(non_max).any()):
                raise ValueError("probabilities contain NaN; the scaled argmax is undefined")
            del org_max
            tie_ok = ~bg_wins
            for f in factors:
                scaled = les_max if f == 1.0 else les_max * f
                idx = les_idx
                if not _exact_scaling(f) or bool(torch.isinf(scaled).any()):
                    idx = torch.full(scaled.shape, _L1 - 1, dtype=torch.uint8, device=p.device)
                    for k in range(_L1 - 2, _L0 - 1, -1):
                        idx.masked_fill_(c[k] * f == scaled, k)
                lesion_wins = (scaled > non_max) | ((scaled == non_max) & tie_ok)
                out[f][z0:z0 + step] = torch.where(lesion_wins, idx, org_idx)
    return out


def scaled_argmax_reference(probabilities, factor: float):
    """Brute-force reference: ``argmax`` over channels after scaling the lesion channels (tests, benchmarks).

    Uses a full copy of the probabilities; numpy in -> numpy uint8 out, torch in -> torch uint8 out.
    """
    if _is_torch(probabilities):
        import torch

        scaled = probabilities.clone()
        scaled[_L0:_L1] = scaled[_L0:_L1] * factor
        return torch.argmax(scaled, dim=0).to(torch.uint8)
    scaled = np.array(probabilities, copy=True)
    scaled[_L0:_L1] = scaled[_L0:_L1] * np.asarray(factor, dtype=scaled.dtype)
    return np.argmax(scaled, axis=0).astype(np.uint8)


class LesionProbabilities:
    """The six lesion channels' probabilities (1..6) kept only where a label map has a lesion, in raster order.

    It stands for a dense (14, Z, Y, X) probability array wherever seg2det reads one (each lesion's voxels):
    :func:`nnunet_liver.postprocessing.seg2det.seg2det` accepts it as ``probabilities``. Built slab by slab by
    :func:`nnunet_liver.inference.predict.predict_maps`, which keeps the voxels the highest sensitivity factor
    labels as lesion (every lower factor's lesions lie inside them: scaling the lesion channels by a larger factor
    can only make more voxels lesion).

    Parameters
    ----------
    shape : (Z, Y, X) of the label maps.
    flat_index : int64 (n,) raster indices into ``shape``, strictly increasing.
    values : float32 (6, n) the lesion channels' probabilities at those voxels.
    """

    def __init__(self, shape, flat_index: np.ndarray, values: np.ndarray):
        self.grid_shape = tuple(int(s) for s in shape)
        self.flat_index = np.asarray(flat_index, dtype=np.int64)
        self.values = np.ascontiguousarray(values, dtype=np.float32)
        if self.values.shape != (_L1 - _L0, self.flat_index.size):
            raise ValueError(f"values must have shape ({_L1 - _L0}, {self.flat_index.size}), got {self.values.shape}")
        if self.flat_index.size > 1 and not bool(np.all(np.diff(self.flat_index) > 0)):
            raise ValueError("flat_index must be strictly increasing (raster order)")

    @property
    def shape(self) -> Tuple[int, ...]:
        """(14, Z, Y, X): the shape of the dense probability array this stands for."""
        return (NUM_CLASSES,) + self.grid_shape

    def lesion_values(self, box, mask: np.ndarray) -> np.ndarray:
        """(6, n) float32 lesion-channel probabilities at ``mask``'s voxels (bool, the shape of the ``box`` slices),
        in raster order: the same array as ``dense[1:7][(slice(None),) + box][:, mask]``."""
        local = np.nonzero(mask)
        coords = tuple(c + sl.start for c, sl in zip(local, box))
        wanted = np.ravel_multi_index(coords, self.grid_shape)
        pos = np.searchsorted(self.flat_index, wanted)
        pos_ok = np.minimum(pos, max(self.flat_index.size - 1, 0))
        if self.flat_index.size == 0 or not np.array_equal(self.flat_index[pos_ok], wanted):
            raise ValueError("a lesion voxel has no stored probability (the lesion lies outside the label map the "
                             "probabilities were kept for)")
        return self.values[:, pos]
