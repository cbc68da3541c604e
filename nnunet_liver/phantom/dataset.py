"""Write phantoms as an nnU-Net raw dataset: :func:`write_phantom_dataset`.

Layout (nnU-Net v2)::

    RAW_DATASET_DIR/
        dataset.json            channel_names from the phases (e.g. {"0": "NC", "1": "A", "2": "V", "3": "D"}),
                                labels = nnunet_liver.labels.dataset_json_labels(), file_ending ".nii.gz"
        imagesTr/phantom_000_0000.nii.gz ...   one file per phase (int16 HU; a missing phase is the constant
                                               MISSING_PHASE_VALUE)
        labelsTr/phantom_000.nii.gz            uint8, our 13 ids, on the reference phase (V when present)
        truth.json              every lesion per case (id, type, label, centre voxel and mm, volume_cm3), the
                                rigid shift applied to each phase, missing phases, per-case seed

Images have the identity direction (LPS) and an origin centring the field of view. Files are written with
SimpleITK's gzip (no time stamp), so the same seed gives byte-identical files. The dataset is built in a temporary
folder and renamed at the end: a failure leaves nothing behind.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from nnunet_liver import __version__
from nnunet_liver import labels as L
from nnunet_liver.phantom.generate import DEFAULT_SHAPE, check_case_arguments, generate_case
from nnunet_liver.phantom.lesions import MIN_LESION_CM3
from nnunet_liver.utils.io import InputError, atomic_dir, write_json_atomic

__all__ = ["write_phantom_dataset", "case_seed", "write_case", "to_sitk_image"]

TRUTH_FILE = "truth.json"
TRUTH_SCHEMA_VERSION = "1.0"


def case_seed(seed: int, index: int) -> int:
    """Seed of case ``index`` of a dataset drawn with ``seed`` (independent streams, order-free)."""
    return int(np.random.SeedSequence([int(seed), int(index)]).generate_state(1, dtype=np.uint32)[0])


def to_sitk_image(array: np.ndarray, spacing, origin):
    """SimpleITK image of an array (z, y, x) with spacing and origin (z, y, x, mm) and the identity direction."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(array)
    image.SetSpacing(tuple(float(s) for s in reversed(spacing)))
    image.SetOrigin(tuple(float(o) for o in reversed(origin)))
    return image


def write_case(case, name: str, folder: str) -> None:
    """Write a :class:`PhantomCase` as ``imagesTr/NAME_XXXX.nii.gz`` and ``labelsTr/NAME.nii.gz`` under ``folder``."""
    import SimpleITK as sitk

    for channel, (phase, image) in enumerate(case.images.items()):
        hu = np.clip(np.rint(image), -32768, 32767).astype(np.int16)
        sitk.WriteImage(to_sitk_image(hu, case.spacing, case.origin),
                        os.path.join(folder, "imagesTr", f"{name}_{channel:04d}.nii.gz"), useCompression=True)
    sitk.WriteImage(to_sitk_image(case.label.astype(np.uint8), case.spacing, case.origin),
                    os.path.join(folder, "labelsTr", f"{name}.nii.gz"), useCompression=True)


def _job(args):
    index, folder, seed, kwargs, missing_delayed_p = args
    s = case_seed(seed, index)
    draw = np.random.default_rng(np.random.SeedSequence([int(seed), int(index), 1]))
    missing = bool(draw.random() < missing_delayed_p)
    case = generate_case(s, missing_delayed=missing, **kwargs)
    name = f"phantom_{index:03d}"
    write_case(case, name, folder)
    return name, case.truth()


def write_phantom_dataset(out_dir, num_cases: int, seed: int = 0, shape: Sequence[int] = DEFAULT_SHAPE,
                          spacing: Optional[Sequence[float]] = None, phases: Sequence[str] = L.PHASES,
                          missing_delayed: float = 0.0, misalign_mm: float = 0.0,
                          min_lesion_cm3: float = MIN_LESION_CM3, num_processes: int = 1,
                          overwrite: bool = False, progress: bool = True, organ_detail: bool = False,
                          oral_contrast: bool = False, lipiodol: bool = False) -> Path:
    """Generate ``num_cases`` phantoms into the nnU-Net raw dataset folder ``out_dir``.

    Parameters
    ----------
    out_dir : the dataset folder itself (e.g. ``$nnUNet_raw/Dataset501_LiverPhantom``); must not exist unless
        ``overwrite``.
    num_cases : number of cases (``phantom_000`` ...).
    seed : dataset seed; case k uses :func:`case_seed` (seed, k), so the result does not depend on
        ``num_processes``.
    shape, spacing : (Z, Y, X) voxels and (z, y, x) mm; default spacing: 5 mm slices, 384 mm axial field of view.
    phases : channels written, in time order (default NC, A, V, D).
    missing_delayed : probability that a case's D channel is the constant missing channel.
    misalign_mm : maximum length of the random rigid shift of each non-reference phase (0 = aligned).
    min_lesion_cm3 : smallest random lesion volume (cm3; default 0.5), see :func:`generate_case`.
    num_processes : worker processes.
    organ_detail, oral_contrast, lipiodol : the extras of :func:`generate_case` for every case (kidney cortex,
        medulla and collecting system, an arciform arterial spleen; oral contrast in stomach and bowel; lipiodol
        deposits in a treated lesion); recorded in ``truth.json`` (settings and each case) when asked for.

    Returns
    -------
    Path of the written dataset folder.
    """
    try:  # every argument checked here, before any worker starts
        _, _, phases, min_lesion_cm3 = check_case_arguments(shape, spacing, phases, min_lesion_cm3=min_lesion_cm3)
    except ValueError as e:
        raise InputError(str(e)) from None
    if int(num_cases) < 1:
        raise InputError(f"{out_dir}: number of cases must be >= 1, got {num_cases}")
    if not 0.0 <= float(missing_delayed) <= 1.0:
        raise InputError(f"missing_delayed is a probability in [0, 1], got {missing_delayed}")
    if float(misalign_mm) < 0:
        raise InputError(f"misalign_mm must be >= 0, got {misalign_mm}")
    from nnunetv2.dataset_conversion.generate_dataset_json import generate_dataset_json
    from tqdm import tqdm

    out_dir = Path(out_dir)
    kwargs = dict(shape=tuple(int(s) for s in shape), spacing=None if spacing is None else tuple(spacing),
                  phases=phases, misalign_mm=float(misalign_mm), min_lesion_cm3=min_lesion_cm3)
    extras = {k: True for k, v in (("organ_detail", organ_detail), ("oral_contrast", oral_contrast),
                                   ("lipiodol", lipiodol)) if v}
    kwargs.update(extras)
    with atomic_dir(str(out_dir), overwrite=overwrite) as tmp:
        os.makedirs(os.path.join(tmp, "imagesTr"))
        os.makedirs(os.path.join(tmp, "labelsTr"))
        jobs = [(i, tmp, int(seed), kwargs, float(missing_delayed)) for i in range(int(num_cases))]
        bar = dict(total=len(jobs), desc="phantoms", unit="case", disable=not progress)
        if num_processes > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(int(num_processes)) as pool:
                results = list(tqdm(pool.imap(_job, jobs), **bar))
        else:
            results = [_job(j) for j in tqdm(jobs, **bar)]
        generate_dataset_json(
            tmp, channel_names={str(i): p for i, p in enumerate(phases)}, labels=L.dataset_json_labels(),
            num_training_cases=len(results), file_ending=".nii.gz", dataset_name=out_dir.name,
            description="nnunet_liver synthetic multi-phase liver CT phantoms (cartoon anatomy, six lesion types)",
            reference="nnunet_liver.phantom", release=__version__, license="CC0-1.0 (synthetic data)",
            converted_by="nnunet-liver-phantom", overwrite_image_reader_writer="SimpleITKIO")
        truth = {"schema_version": TRUTH_SCHEMA_VERSION, "generator": f"nnunet_liver.phantom {__version__}",
                 "seed": int(seed), "num_cases": len(results), "phases": list(phases),
                 "settings": {"shape": list(kwargs["shape"]), "spacing": kwargs["spacing"],
                              "missing_delayed": float(missing_delayed), "misalign_mm": float(misalign_mm),
                              "min_lesion_cm3": min_lesion_cm3, **extras},
                 "cases": {name: entry for name, entry in results}}
        write_json_atomic(truth, os.path.join(tmp, TRUTH_FILE))
    return out_dir
