"""Data loaders of the liver trainers (subclasses of nnU-Net's ``nnUNetDataLoader``).

- :class:`LesionOversamplingDataLoader`: LIDIA's foreground-enhanced sampling. Of the patches nnU-Net forces to
  contain foreground, a fraction ``lesion_fraction`` is centred on a voxel of a lesion class (1..6) present in the
  case, chosen uniformly among the present lesion classes (so rare types are seen as often as common ones), using
  the class locations nnU-Net's preprocessing stores in each case's properties. Everything else is nnU-Net's.
  With ``class_balanced`` the lesion type is drawn first, uniformly among the types of the loader's cases, and then
  a case holding it (instead of a case first and then one of its types), for the same reason as below.
- :class:`LesionShuffleDataLoader`: UNet-patch's loader. Each patch is made on the fly from a liver-cropped case by
  :func:`nnunet_liver.training.shuffle.sample_training_patch` (four lesion-shuffle schemes, outside-liver
  voxels masked), then nnU-Net's transforms run on it as usual. With ``class_balanced`` each patch first draws a
  lesion type uniformly among the types of the training cases, then a case holding that type, then one of its
  lesions of that type (nnU-Net's uniform draw of cases otherwise: rare types such as metastases, a few percent of
  the lesions, would be seen a few percent of the time). With hard cases (UNet-whole's FN and FP on the training
  cases, ``nnunet-liver-convert patches --hard-cases``) a share ``hard_case_rate`` of the patches is cut around one
  of them, drawn uniformly over all of them, original or shuffled at even odds
  (:func:`nnunet_liver.training.shuffle.sample_hard_case_patch`; Wang et al., the cascade, Sec. III-B).

Papers: Wang et al., "A Cascaded Approach for ultraly High Performance Lesion Detection and False Positive Removal in
Liver CT Scans"; Huang et al., "LIDIA: Precise Liver Tumor Diagnosis on Multi-Phase Contrast-Enhanced CT via Iterative
Fusion and Asymmetric Contrastive Learning" (MICCAI).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from threadpoolctl import threadpool_limits

from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader

from nnunet_liver.labels import LESION_IDS, PATCH_MASKED
from nnunet_liver.training.shuffle import sample_hard_case_patch, sample_training_patch

__all__ = ["LesionOversamplingDataLoader", "LesionShuffleDataLoader", "present_lesion_types"]

class _LesionTypeIndex:
    """Mixin for ``nnUNetDataLoader`` subclasses: class-balanced draws of lesion types and of cases holding them."""

    def _init_lesion_types(self, class_balanced: bool) -> None:
        """Index the loader's cases by lesion type when ``class_balanced`` (no lesion at all: stays off)."""
        self.class_counts: Dict[int, int] = {}
        self.cases_by_class: Dict[int, List[str]] = self._index_lesion_types() if class_balanced else {}
        self.class_balanced = bool(self.cases_by_class)

    def _index_lesion_types(self) -> Dict[int, List[str]]:
        """{lesion type: keys of the cases that hold it}, from each case's ``class_locations`` property."""
        index: Dict[int, List[str]] = {}
        for key in self.indices:
            locations = self._data.load_case(key)[3].get("class_locations") or {}
            for c in present_lesion_types(locations):
                index.setdefault(c, []).append(key)
        return index

    def draw_lesion_type(self) -> Tuple[str, int]:
        """(case key, lesion type): a type uniform over ``self.cases_by_class``, then a case (uniform) holding it."""
        classes = sorted(self.cases_by_class)
        c = classes[np.random.randint(len(classes))]
        keys = self.cases_by_class[c]
        self.class_counts[c] = self.class_counts.get(c, 0) + 1
        return keys[np.random.randint(len(keys))], c


def present_lesion_types(class_locations: Optional[dict], lesion_classes: Sequence[int] = LESION_IDS) -> List[int]:
    """The lesion classes with at least one location in a case's ``class_locations`` (nnU-Net's property)."""
    if not class_locations:
        return []
    return [c for c in lesion_classes if c in class_locations and len(class_locations[c]) > 0]


class LesionOversamplingDataLoader(_LesionTypeIndex, nnUNetDataLoader):
    """nnU-Net's loader whose foreground-forced patches are centred on lesions with probability ``lesion_fraction``.

    ``class_balanced``: each patch is, with probability ``lesion_fraction``, a lesion type drawn uniformly over the
    types present in the loader's cases and then a case holding it (centred on a voxel of that type when nnU-Net
    forces the patch onto foreground), otherwise nnU-Net's uniform draw of a case (and, when forced, its uniform
    draw of foreground classes). The loader draws that joint distribution in nnU-Net's two steps, each complete on
    its own: ``get_indices`` draws the cases from their marginal probability and ``get_bbox`` the lesion type (or
    none) from its probability given the case's lesion types, so no state passes from one call to the other. The
    types drawn are counted in ``class_counts``. Without lesions in the loader's cases it is the plain loader.
    """

    def __init__(self, *args, lesion_fraction: float = 0.5, lesion_classes: Tuple[int, ...] = LESION_IDS,
                 class_balanced: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= lesion_fraction <= 1.0:
            raise ValueError(f"lesion_fraction must be in [0, 1], got {lesion_fraction}")
        self.lesion_fraction = lesion_fraction
        self.lesion_classes = tuple(lesion_classes)
        self._init_lesion_types(class_balanced)

    def _type_weights(self, types: Sequence[int]) -> np.ndarray:
        """Joint probabilities of (a case holding ``types``, each of its types), then of (that case, no type)."""
        lesion = [self.lesion_fraction / (len(self.cases_by_class) * len(self.cases_by_class[c])) for c in types]
        return np.array(lesion + [(1.0 - self.lesion_fraction) / len(self.indices)])

    def case_probabilities(self) -> np.ndarray:
        """Marginal probability of each case (``self.indices`` order) under the class-balanced draw."""
        types = {key: [c for c, keys in self.cases_by_class.items() if key in keys] for key in self.indices}
        return np.array([self._type_weights(types[key]).sum() for key in self.indices])

    def choose_lesion_class(self, class_locations: Optional[dict]) -> Optional[int]:
        """The lesion class a foreground-forced patch of this case is centred on, or None (organ foreground).

        Class-balanced: drawn given the case from the joint draw (a present type with probability in proportion to
        ``lesion_fraction / (number of types x cases holding it)``, none in proportion to ``(1 - lesion_fraction) /
        number of cases``). Otherwise: with probability ``lesion_fraction`` a present type, uniformly.
        """
        present = present_lesion_types(class_locations, self.lesion_classes)
        if self.class_balanced:
            present = [c for c in present if c in self.cases_by_class]
            w = self._type_weights(present)
            i = int(np.random.choice(len(w), p=w / w.sum()))
            if i == len(present):
                return None
            self.class_counts[present[i]] = self.class_counts.get(present[i], 0) + 1
            return present[i]
        if not present or np.random.uniform() >= self.lesion_fraction:
            return None
        return present[np.random.randint(len(present))]

    def get_indices(self):
        if not self.class_balanced:
            return super().get_indices()
        p = self.case_probabilities()
        return [self.indices[i] for i in np.random.choice(len(self.indices), self.batch_size, p=p / p.sum())]

    def get_bbox(self, data_shape: np.ndarray, force_fg: bool, class_locations: Union[dict, None],
                 overwrite_class: Union[int, Tuple[int, ...]] = None, verbose: bool = False):
        if force_fg and overwrite_class is None:
            overwrite_class = self.choose_lesion_class(class_locations)
        return super().get_bbox(data_shape, force_fg, class_locations, overwrite_class, verbose)


class LesionShuffleDataLoader(_LesionTypeIndex, nnUNetDataLoader):
    """Patches by lesion shuffle from liver-cropped cases (labels 0 masked, 1..6 lesions, 7 liver).

    ``scheme_rates`` ({scheme: weight}) and ``masked_value`` (normalised intensity outside the liver) are passed to
    :func:`~nnunet_liver.training.shuffle.sample_training_patch`. ``class_balanced``: draw a lesion type
    first (uniform over the types present in the loader's cases, from the class locations nnU-Net's preprocessing
    stores in each case's properties), then a case that holds it, then one of its lesions of that type; cases
    without lesions are then never drawn (negative patches come from the lesion-free liver of the drawn cases). The
    schemes drawn are counted in ``self.scheme_counts``, the lesion types drawn in ``self.class_counts``.

    ``hard_cases``: {case key: (hard-case map on the preprocessed case's grid, [{"id", "kind"}, ...])}
    (:func:`nnunet_liver.training.hard_cases.read_prepared_hard_cases`); cases not in the loader are left
    out. With probability ``hard_case_rate``
    a patch is cut around a hard case drawn uniformly over ``self.hard_index`` (scheme ``hard_FN_original``,
    ``hard_FN_shuffled``, ``hard_FP_original`` or ``hard_FP_shuffled``).
    """

    def __init__(self, *args, scheme_rates: Optional[Dict[str, float]] = None, masked_value: float = 0.0,
                 class_balanced: bool = False, hard_cases: Optional[Dict[str, tuple]] = None,
                 hard_case_rate: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if not 0.0 <= hard_case_rate <= 1.0:
            raise ValueError(f"hard_case_rate must be in [0, 1], got {hard_case_rate}")
        self.scheme_rates = scheme_rates
        self.masked_value = masked_value
        self.scheme_counts: Dict[str, int] = {}
        self._init_lesion_types(class_balanced)
        self.hard_index: List[Tuple[str, str, tuple, np.ndarray]] = self._index_hard_cases(hard_cases or {})
        self.hard_case_rate = hard_case_rate if self.hard_index else 0.0

    def _index_hard_cases(self, hard_cases: Dict[str, tuple]) -> List[tuple]:
        """[(case key, kind, box slices, bool mask of the box)] of the loader's cases' hard cases."""
        from scipy import ndimage

        index = []
        for key in self.indices:
            if key not in hard_cases:
                continue
            hard_map, entries = hard_cases[key]
            if not entries:
                continue
            shape = tuple(self._data.load_case(key)[0].shape[1:])
            m = np.asarray(hard_map)
            if m.shape != shape:
                raise ValueError(f"{key}: hard-case map shape {m.shape} differs from the preprocessed case's {shape} "
                                 "(prepare the hard cases again after preprocessing)")
            kinds = {int(e["id"]): str(e["kind"]) for e in entries}
            for i, box in enumerate(ndimage.find_objects(m.astype(np.int64)), start=1):
                if box is not None and i in kinds:  # a hard case resampled away has no voxel left
                    index.append((key, kinds[i], box, m[box] == i))
        return index

    def choose_cases(self) -> List[Tuple[str, Optional[int]]]:
        """(case key, lesion type or None) for each patch of a batch."""
        if not self.class_balanced:
            return [(key, None) for key in self.get_indices()]
        return [self.draw_lesion_type() for _ in range(self.batch_size)]

    def generate_train_batch(self):
        chosen = [(key, c, None) for key, c in self.choose_cases()]
        for j in range(len(chosen)):
            if self.hard_case_rate and np.random.uniform() < self.hard_case_rate:
                hard = self.hard_index[np.random.randint(len(self.hard_index))]
                chosen[j] = (hard[0], None, hard)
        selected_keys = [key for key, _, _ in chosen]
        rng = np.random.default_rng(np.random.randint(0, 2 ** 31 - 1))
        data_all, seg_all = None, None
        with torch.no_grad(), threadpool_limits(limits=1, user_api=None):
            for j, (key, lesion_class, hard) in enumerate(chosen):
                data, seg, _, _ = self._data.load_case(key)
                label = np.asarray(seg[0]).astype(np.int16)
                label[label < 0] = PATCH_MASKED  # nnU-Net's "outside the nonzero region"
                if hard is None:
                    image, label, scheme = sample_training_patch(
                        np.asarray(data, dtype=np.float32), label, self.patch_size, rng, self.scheme_rates,
                        self.masked_value, lesion_class=lesion_class)
                else:
                    shuffled = bool(rng.integers(2))
                    image, label = sample_hard_case_patch(np.asarray(data, dtype=np.float32), label,
                                                          self.patch_size, rng, hard[2], hard[3], shuffled,
                                                          self.masked_value)
                    scheme = f"hard_{hard[1]}_{'shuffled' if shuffled else 'original'}"
                self.scheme_counts[scheme] = self.scheme_counts.get(scheme, 0) + 1
                sample = {"image": torch.from_numpy(image), "segmentation": torch.from_numpy(label[None])}
                if self.transforms is not None:
                    sample = self.transforms(**sample)
                data_sample, seg_sample = sample["image"], sample["segmentation"]
                if data_all is None:
                    data_all = torch.empty((self.batch_size, *data_sample.shape), dtype=torch.float32)
                data_all[j] = data_sample
                if isinstance(seg_sample, list):
                    if seg_all is None:
                        seg_all = [torch.empty((self.batch_size, *s.shape), dtype=s.dtype) for s in seg_sample]
                    for s_idx, s in enumerate(seg_sample):
                        seg_all[s_idx][j] = s
                else:
                    if seg_all is None:
                        seg_all = torch.empty((self.batch_size, *seg_sample.shape), dtype=seg_sample.dtype)
                    seg_all[j] = seg_sample
        return {"data": data_all, "target": seg_all, "keys": selected_keys}
