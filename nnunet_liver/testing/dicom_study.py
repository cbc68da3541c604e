"""Multi-phase DICOM studies built from phantoms, as a PACS export holds them (tests and examples)."""
from __future__ import annotations

import os

import numpy as np

from nnunet_liver.testing.dicom_writer import new_uid, write_ct_series, write_dose_report, write_localizer
from nnunet_liver.phantom import generate_case

#: scrambled series numbers and descriptions that do not name the phase (one misleads: "ART" on the venous series)
SERIES = {"NC": (7, "Recon 2"), "A": (3, "LIVER 3 PHASE (C/A/P)"), "V": (12, "ART Recon 3"), "D": (5, "Series 5")}
TIMES = {"NC": "101000", "A": "101235", "V": "101310", "D": "101530"}
#: what an honest scanner console writes: phase names, the bolus start (A +35 s, V +70 s, D +210 s), the routes
HONEST_DESCRIPTIONS = {"NC": "PRE CONTRAST", "A": "LATE ARTERIAL", "V": "PORTAL VENOUS", "D": "DELAYED 3 MIN"}
BOLUS_START = "101200"
PATIENT = {"name": "Doe^Jane", "id": "PAT-4711", "birth_date": "19531224", "sex": "F"}


def phantom(seed=0, shape=(24, 96, 96)):
    return generate_case(seed, shape=shape)


def padded(volume: np.ndarray) -> np.ndarray:
    """What the reader returns for a series written with a padding value: -1024 HU outside the field-of-view disk."""
    nz, ny, nx = volume.shape
    yy, xx = np.mgrid[0:ny, 0:nx]
    outside = ((yy - (ny - 1) / 2) / (ny / 2)) ** 2 + ((xx - (nx - 1) / 2) / (nx / 2)) ** 2 > 1.0
    out = np.rint(volume).astype(np.float32)
    out[:, outside] = -1024
    return out


def expected_hu(case) -> dict:
    """{phase: HU the reader must return} for a study written by :func:`write_study`."""
    return {p: (padded(v) if p == "V" else np.rint(v).astype(np.float32)) for p, v in case.images.items()}


def contrast_tags(phase: str, oral: bool = False, bolus: bool = True) -> dict:
    """The contrast attributes a console writes on a series of ``phase``: ``ContrastBolusAgent`` (empty before the
    injection), ``ContrastBolusRoute`` (oral only before it when oral contrast was given) and
    ``ContrastBolusStartTime`` (:data:`BOLUS_START`, on the enhanced series)."""
    if phase == "NC":
        return {"ContrastBolusAgent": "", "ContrastBolusRoute": "ORAL" if oral else None}
    out = {"ContrastBolusAgent": "Iohexol 350", "ContrastBolusRoute": "ORAL & IV" if oral else "IV"}
    if bolus:
        out["ContrastBolusStartTime"] = BOLUS_START
    return out


def write_study(root, case, times=True, extras=True, study_uid=None, patient=None, series=None, tags=False,
                oral=False):
    """Write ``case`` as one DICOM study under ``root`` (a folder per series); returns {phase: series UID}.

    ``times``: True for :data:`TIMES`, False for none, or {phase: "HHMMSS"}. ``tags``: the contrast attributes of
    :func:`contrast_tags` (``oral``: oral contrast was given) and no others; default: ContrastBolusAgent on the
    enhanced series only.
    NC unsigned, A RLE-compressed, V with pixel padding -2000 and a second 10 mm reconstruction, D JPEG 2000 lossless,
    file names scrambled; ``extras`` adds a scout and a dose report.
    """
    from pydicom.uid import JPEG2000Lossless, RLELossless

    study_uid = study_uid or new_uid()
    frame = new_uid()
    times_ = times if isinstance(times, dict) else TIMES
    patient = patient or PATIENT
    series = series or SERIES
    uids = {}
    for phase, image in case.images.items():
        number, description = series[phase]
        kwargs = dict(study_uid=study_uid, series_number=number, description=description, frame_of_reference_uid=frame,
                      acquisition_time=times_[phase] if times else None, patient=patient, scramble_names=True,
                      contrast_agent=None if phase == "NC" or tags else "Iohexol",
                      attributes=contrast_tags(phase, oral, bolus=bool(times)) if tags else None)
        if phase == "NC":
            kwargs["signed"] = False
        if phase == "A":
            kwargs["transfer_syntax"] = RLELossless
        if phase == "V":
            kwargs["padding_value"] = -2000
        if phase == "D":
            kwargs["transfer_syntax"] = JPEG2000Lossless
        uids[phase] = write_ct_series(os.path.join(root, f"series{number}"), image, case.spacing,
                                      case.origin[::-1], **kwargs)
    if extras and "V" in case.images:
        number = series["V"][0] + 100
        write_ct_series(os.path.join(root, f"series{number}"), case.images["V"][::2],
                        (case.spacing[0] * 2,) + tuple(case.spacing[1:]), case.origin[::-1], study_uid, number,
                        "Recon 10mm", frame_of_reference_uid=frame, acquisition_time=times_["V"] if times else None,
                        patient=patient, contrast_agent="Iohexol")
        write_localizer(os.path.join(root, "scout"), study_uid, patient=patient)
        write_dose_report(os.path.join(root, "dose"), study_uid, patient=patient)
    return uids


def subset_study(pool, folder, numbers) -> None:
    """A study of some series of a study written by :func:`write_study` under ``pool``: the series numbered
    ``numbers`` hard-linked (no copy) into ``folder``."""
    for number in numbers:
        src = os.path.join(pool, f"series{number}")
        dst = os.path.join(folder, f"series{number}")
        os.makedirs(dst)
        for name in os.listdir(src):
            os.link(os.path.join(src, name), os.path.join(dst, name))
