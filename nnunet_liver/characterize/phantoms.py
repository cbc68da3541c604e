"""Phantom datasets for the characterization stage: lesion types drawn so that HCC is common (about 40 % of lesions).

The detector's phantoms (``nnunet-liver-phantom``) draw one dominant type per patient, so HCC is one lesion in six;
a classifier of HCC vs the rest learns and is measured better on a balanced draw. These are the same phantoms
(:func:`nnunet_liver.phantom.generate_case` with ``lesion_types``), written as an nnU-Net raw dataset with the same
``truth.json`` (each lesion's type and its painted APHE / washout / capsule).
"""
from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from nnunet_liver.labels import LESION_NAMES
from nnunet_liver.utils.io import atomic_dir, write_json_atomic

__all__ = ["write_lesion_phantoms", "draw_lesion_types"]


def draw_lesion_types(rng: np.random.Generator, hcc_fraction: float = 0.4) -> list:
    """2-4 lesion types for one case: each HCC with probability ``hcc_fraction``, else one of the five others."""
    others = [t for t in LESION_NAMES if t != "HCC"]
    return ["HCC" if rng.random() < hcc_fraction else others[int(rng.integers(len(others)))]
            for _ in range(int(rng.integers(2, 5)))]


def write_lesion_phantoms(out_dir: str, num_cases: int, seed: int = 0, shape: Sequence[int] = (48, 192, 192),
                          min_lesion_cm3: float = 1.0, hcc_fraction: float = 0.4, overwrite: bool = False,
                          progress: bool = True) -> str:
    """Write ``num_cases`` phantoms (``phantom_000`` ...) with :func:`draw_lesion_types` lesions to ``out_dir``
    (imagesTr/, labelsTr/, dataset.json, truth.json); case k is drawn from ``SeedSequence([seed, k])``."""
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from tqdm import tqdm

    from nnunet_liver import __version__
    from nnunet_liver.labels import PHASES, dataset_json_labels
    from nnunet_liver.phantom import generate_case
    from nnunet_liver.phantom.dataset import case_seed, write_case

    cases = {}
    with atomic_dir(out_dir, overwrite=overwrite) as tmp:
        os.makedirs(os.path.join(tmp, "imagesTr"))
        os.makedirs(os.path.join(tmp, "labelsTr"))
        for k in tqdm(range(int(num_cases)), desc="phantoms", unit="case", disable=not progress):
            s = case_seed(seed, k)
            types = draw_lesion_types(np.random.default_rng(np.random.SeedSequence([int(seed), k, 2])), hcc_fraction)
            case = generate_case(s, shape=shape, lesion_types=types, min_lesion_cm3=min_lesion_cm3)
            name = f"phantom_{k:03d}"
            write_case(case, name, tmp)
            cases[name] = case.truth()
        generate_dataset_json(tmp, channel_names={str(i): p for i, p in enumerate(PHASES)},
                              labels=dataset_json_labels(), num_training_cases=len(cases), file_ending=".nii.gz",
                              dataset_name=os.path.basename(os.path.abspath(out_dir)),
                              description="nnunet_liver characterization phantoms (HCC about 40 % of lesions)",
                              converted_by="nnunet_liver.characterize.phantoms")
        write_json_atomic({"schema_version": "1.0", "generator": f"nnunet_liver.characterize.phantoms {__version__}",
                           "seed": int(seed), "num_cases": len(cases), "phases": list(PHASES),
                           "settings": {"shape": [int(s) for s in shape], "min_lesion_cm3": float(min_lesion_cm3),
                                        "hcc_fraction": float(hcc_fraction)},
                           "cases": cases}, os.path.join(tmp, "truth.json"))
    return out_dir
