"""A DICOM study -> the model's input channels: series selection, reconstructions, phases, pixels, registration.

:func:`identify_study` decides, from headers and a few slices per series, which series is which phase:

- the axial CT image series (:func:`nnunet_liver.dicom.series.candidate_series`), each sorted and checked;
- reconstructions of one acquisition are grouped: same frame of reference, the same acquisition time (when both have
  one), and liver and aorta HU within 8 and 25 HU of each other. A study whose acquisitions all carry the same time
  (as some anonymisers leave them) is treated as having no times. Of a group, the **thinnest reconstruction with
  slices at most 5 mm apart** is used (else the thinnest); ties go to the series with more slices, then the lower
  series number;
- phases are assigned to the acquisitions jointly (:mod:`nnunet_liver.dicom.phase`).

:func:`load_dicom_case` then reads the chosen series of the phases the model takes, in full, and puts every phase on
the reference phase's grid (V when present, else the first present phase in channel order, as for NIfTI cases):
phases on another grid are registered to it (rigid, SimpleITK, as ``nnunet-liver-convert multiphase`` does), because
the phases of a study are separate acquisitions that rarely share a grid.
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import numpy as np

from nnunet_liver.dicom.index import DicomStudy, SeriesHeaders
from nnunet_liver.dicom.phase import MIN_CONFIDENCE, SKIP, Acquisition, assign_phases, measure_enhancement
from nnunet_liver.dicom.series import SeriesGeometry, candidate_series, read_series, series_geometry
from nnunet_liver.inference.cases import LoadedCase, _json_ready, _same_geometry, store_phase, validate_case_id
from nnunet_liver.labels import MISSING_PHASE_VALUE
from nnunet_liver.utils.io import InputError

__all__ = ["MAX_SLICE_SPACING_MM", "StudyPhases", "identify_study", "load_dicom_case", "DicomLoadedCase"]

MAX_SLICE_SPACING_MM = 5.0
_SAME_LIVER_HU, _SAME_AORTA_HU = 8.0, 25.0


@dataclass
class StudyPhases:
    """The outcome of :func:`identify_study`: the series chosen per phase and everything CASE.json records."""
    geometry: Dict[str, SeriesGeometry]  # phase -> the chosen series, sorted
    series: Dict[str, SeriesHeaders]
    record: dict


def _seconds(ds) -> Optional[float]:
    """Acquisition time of a slice in seconds since 1970 (AcquisitionTime, else ContentTime, else SeriesTime)."""
    for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                             ("SeriesDate", "SeriesTime")):
        t = str(getattr(ds, time_kw, "") or "").strip()
        if not t:
            continue
        d = str(getattr(ds, date_kw, "") or getattr(ds, "StudyDate", "") or "19700101").strip()
        try:
            hh, mm, ss = int(t[0:2]), int(t[2:4] or 0), float(t[4:] or 0)
            day = datetime.datetime.strptime(d[:8], "%Y%m%d").replace(tzinfo=datetime.timezone.utc)
            return day.timestamp() + hh * 3600 + mm * 60 + ss
        except ValueError:
            continue
    return None


def _series_time(g: SeriesGeometry) -> Optional[float]:
    times = [t for t in (_seconds(h) for h in g.headers) if t is not None]
    return min(times) if times else None


def _has_agent(s: SeriesHeaders) -> Optional[bool]:
    if "ContrastBolusAgent" not in s.first:
        return None
    return bool(str(s.first.ContrastBolusAgent or "").strip())


def _describe(s: SeriesHeaders, g: SeriesGeometry) -> dict:
    return {"series_uid": s.uid, "series_number": s.number, "description": str(s.get("SeriesDescription", "")),
            "num_slices": len(g.files), "slice_spacing_mm": round(g.spacing[2], 4),
            "slice_thickness_mm": g.slice_thickness_mm}


def _pick_reconstruction(members: List[tuple]) -> tuple:
    """The thinnest reconstruction at most MAX_SLICE_SPACING_MM apart (else the thinnest), more slices, lower number."""
    ok = [m for m in members if m[1].spacing[2] <= MAX_SLICE_SPACING_MM + 1e-6] or members
    return min(ok, key=lambda m: (round(m[1].spacing[2], 3), -len(m[1].files), m[0].number or 0))


def identify_study(study: DicomStudy, phase_map: Optional[Dict[str, str]] = None) -> StudyPhases:
    """Choose the series and identify the phase of each acquisition of ``study`` (see the module docstring).

    Raises
    ------
    InputError
        two patients, no axial CT series, a refused series (gap, duplicate, tilt, mixed orientation, unreadable or
        undecodable file), or phases that cannot be told apart with confidence (name them with ``--phase-map``).
    """
    what = f"study {study.case_id} ({study.folder})"
    if study.error:
        raise InputError(study.error)
    candidates, left_out = candidate_series(study.series.values())
    skipped = [c for c in candidates if SKIP in ((phase_map or {}).get(c.uid), (phase_map or {}).get(str(c.number)))]
    candidates = [c for c in candidates if c not in skipped]
    left_out += [{"series_uid": s.uid, "series_number": s.number, "description": str(s.get("SeriesDescription", "")),
                  "reason": "--phase-map skip"} for s in skipped]
    if not candidates:
        kinds = "; ".join(f"series {l['series_number']}: {l['reason']}" for l in left_out) or "no series"
        raise InputError(f"{what}: no axial CT image series ({kinds})")
    measured = []
    for s in sorted(candidates, key=lambda s: (s.number is None, s.number or 0, s.uid)):
        g = series_geometry(s)
        step = max(1, len(g.files) // 24)
        feats = measure_enhancement(read_series(g, range(0, len(g.files), step)))
        if not np.isfinite(feats["liver_hu"]) or not np.isfinite(feats["aorta_hu"]):
            raise InputError(f"{what}: {s.describe()}: no abdomen found in the image (is it an abdominal CT?)")
        measured.append((s, g, feats, _series_time(g)))
    groups: List[List[tuple]] = []
    for m in measured:
        for group in groups:
            s0, g0, f0, t0 = group[0]
            same_frame = str(m[0].get("FrameOfReferenceUID", "")) == str(s0.get("FrameOfReferenceUID", ""))
            same_time = m[3] is None or t0 is None or abs(m[3] - t0) < 1.0
            same_look = (abs(m[2]["liver_hu"] - f0["liver_hu"]) <= _SAME_LIVER_HU
                         and abs(m[2]["aorta_hu"] - f0["aorta_hu"]) <= _SAME_AORTA_HU)
            if same_frame and same_time and same_look:
                group.append(m)
                break
        else:
            groups.append([m])
    agents = [_has_agent(m[0]) for m in measured]
    agent_known = any(a is True for a in agents) and any(a is False for a in agents)
    chosen = [_pick_reconstruction(g) for g in groups]
    times = [c[3] for c in chosen]
    if len(times) > 1 and None not in times and max(times) - min(times) < 1.0:
        times = [None] * len(times)  # one time for every acquisition (an anonymiser's): no order to read
    t0 = min(t for t in times if t is not None) if any(t is not None for t in times) else None
    acquisitions = [Acquisition(key=s.uid, series_number=s.number, description=str(s.get("SeriesDescription", "")),
                                time=None if t is None or t0 is None else t - t0,
                                contrast_agent=_has_agent(s) if agent_known else None,
                                liver_hu=f["liver_hu"], aorta_hu=f["aorta_hu"])
                    for (s, g, f, _), t in zip(chosen, times)]
    try:
        assigned = assign_phases(acquisitions, phase_map=phase_map)
    except InputError as e:
        raise InputError(f"{what}: {e}") from None
    weak = [(a, assigned[a.key]) for a in acquisitions if assigned[a.key]["confidence"] < MIN_CONFIDENCE]
    if weak:
        a, r = weak[0]
        raise InputError(f"{what}: cannot tell the phase of series {a.series_number} apart with confidence "
                         f"({r['phase']}? confidence {r['confidence']:.2f}; liver {a.liver_hu:.0f} HU, aorta "
                         f"{a.aorta_hu:.0f} HU); name the phases with --phase-map SERIES=PHASE")
    geometry, series, acq_records = {}, {}, []
    for (s, g, f, t), group, a in zip(chosen, groups, acquisitions):
        phase = assigned[a.key]["phase"]
        geometry[phase], series[phase] = g, s
        entry = {"phase": phase, **_describe(s, g), "confidence": assigned[a.key]["confidence"],
                 "reasons": assigned[a.key]["reasons"], "liver_hu": round(f["liver_hu"], 1),
                 "aorta_hu": round(f["aorta_hu"], 1),
                 "time_s": None if a.time is None else round(a.time, 1),
                 "other_reconstructions": [_describe(m[0], m[1]) for m in group if m[0] is not s]}
        acq_records.append(entry)
    record = {"study_uid": study.study_uid, "folder": study.folder, "acquisitions": acq_records,
              "series_left_out": left_out, "unreadable_files": list(study.unreadable),
              "reconstruction_rule": f"thinnest with slices <= {MAX_SLICE_SPACING_MM:g} mm apart",
              "phase_map": dict(phase_map or {})}
    return StudyPhases(geometry, series, record)


@dataclass
class DicomLoadedCase(LoadedCase):
    """A :class:`LoadedCase` read from DICOM (see :func:`load_dicom_case`)."""
    dicom: dict = field(default_factory=dict)
    reference_headers: list = field(default_factory=list)  # the reference series' headers, in slice order


def load_dicom_case(study: DicomStudy, channel_names: Sequence[str], allow_missing: bool,
                    registration_transform: str = "rigid"):
    """Identify, read and align a DICOM study as a :class:`nnunet_liver.inference.cases.LoadedCase`.

    The returned object also carries ``dicom`` (the record for CASE.json) and ``reference_headers`` (for the
    DICOM SEG and SR written back).
    """
    import SimpleITK as sitk

    validate_case_id(study.case_id)
    found = identify_study(study, study.phase_map)
    names = list(channel_names)
    used = [p for p in names if p in found.geometry]
    unused = sorted(set(found.geometry) - set(names))
    if not used:
        raise InputError(f"study {study.case_id}: none of its phases ({', '.join(sorted(found.geometry))}) is one "
                         f"the model takes ({', '.join(names)})")
    missing = [p for p in names if p not in found.geometry]
    if missing and not allow_missing:
        raise InputError(f"study {study.case_id}: phase {missing[0]} not found (phases identified: "
                         f"{', '.join(sorted(found.geometry))}) and the model is not an IFM model (only IFM models "
                         f"accept missing phases)")
    ref_phase = "V" if "V" in used else used[0]
    images = {p: read_series(found.geometry[p]) for p in used}
    ref = images[ref_phase]
    arrays, registration = {}, {}
    for p in used:
        if p != ref_phase and _same_geometry(images[p], ref) is not None:
            from nnunet_liver.registration import register_to_reference

            try:
                moved, report = register_to_reference(images[p], ref, transform=registration_transform)
            except RuntimeError as e:
                raise InputError(f"study {study.case_id}: registration of {p} to {ref_phase} failed "
                                 f"({(str(e).strip().splitlines() or [''])[-1][:160]})") from None
            arrays[p] = sitk.GetArrayFromImage(moved)
            registration[p] = _json_ready(report)
        else:
            arrays[p] = sitk.GetArrayFromImage(images[p])
    shape = (len(names),) + tuple(arrays[ref_phase].shape)
    data = None
    for c, p in enumerate(names):
        data = store_phase(data, c, arrays.pop(p) if p in arrays else np.int16(MISSING_PHASE_VALUE), shape)
    record = dict(found.record, phases_not_used=unused, reference_phase=ref_phase,
                  reference_series_uid=found.series[ref_phase].uid)
    inputs = {p: (os.path.dirname(found.geometry[p].files[0]) if p in found.geometry else None) for p in names}
    spacing = tuple(float(s) for s in reversed(ref.GetSpacing()))
    return DicomLoadedCase(case_id=study.case_id, data=data, spacing=spacing,
                   reference=ref, reference_channel=names.index(ref_phase), phases_present=used,
                   phases_missing=missing, inputs=inputs, registration=registration, dicom=record,
                   reference_headers=list(found.geometry[ref_phase].headers))
