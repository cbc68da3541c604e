"""Synthetic multi-phase liver CT phantoms (cartoon anatomy, six lesion types, textbook enhancement).

- :func:`generate_case` -> :class:`PhantomCase` (images per phase, label, lesions, shifts).
- :func:`write_phantom_dataset` -> an nnU-Net raw dataset folder with a ``truth.json``.
- command line: ``nnunet-liver-phantom -o RAW_DATASET_DIR -n CASES --seed S``.
"""
from nnunet_liver.phantom.dataset import TRUTH_FILE, case_seed, write_phantom_dataset
from nnunet_liver.phantom.generate import PhantomCase, default_spacing, generate_case, reference_phase

__all__ = ["PhantomCase", "generate_case", "write_phantom_dataset", "default_spacing", "reference_phase",
           "case_seed", "TRUTH_FILE"]
