"""A DICOM study -> the model's input channels: series selection, reconstructions, phases, pixels, registration.

:func:`identify_study` decides, from headers and a few slices per series, which series is which phase:

- the axial CT image series (:func:`nnunet_liver.dicom.series.candidate_series`), each sorted and checked;
- reconstructions of one acquisition are grouped: same frame of reference, the same acquisition time (when both have
  one), and liver and aorta HU within 8 and 25 HU of each other. A study whose acquisitions all carry the same time
  (as some anonymisers leave them) is treated as having no times. Of a group, the **thinnest reconstruction with
  slices at most 5 mm apart** is used (else the thinnest); ties go to the series with more slices, then the lower
  series number;
- each series' anatomy and enhancement is measured on at most :data:`MAX_SLICES_READ` evenly spaced slices
  (:func:`nnunet_liver.dicom.organs.measure_enhancement`), its header evidence read (:mod:`nnunet_liver.dicom.tags`),
  and phases are assigned to the acquisitions jointly (:mod:`nnunet_liver.dicom.phase`). A refusal names the
  series by its SeriesNumber, or by its SeriesInstanceUID when it has none: what ``--phase-map`` takes.

:func:`load_dicom_case` then reads the chosen series of the phases the model takes, in full and one at a time, and
puts every phase on the reference phase's grid (V when present, else the first present phase in channel order, as for
NIfTI cases): a phase of the same frame of reference by its scanner coordinates first (resampled with the identity
transform), then refined by a rigid registration (SimpleITK, Mattes mutual information, as
``nnunet-liver-convert multiphase`` does) that is kept only when it improves the mutual information; a phase of
another or no frame of reference by registration alone. Both are recorded per phase in ``geometry.registration``.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.case import LoadedCase, store_phase, validate_case_id
from nnunet_liver.dicom.align import align_phase
from nnunet_liver.dicom.index import DicomStudy, SeriesHeaders
from nnunet_liver.dicom.organs import measure_enhancement
from nnunet_liver.dicom.phase import MIN_CONFIDENCE, SKIP, Acquisition, assign_phases
from nnunet_liver.dicom.series import SeriesGeometry, candidate_series, read_series, series_geometry
from nnunet_liver.dicom.tags import acquisition_time, study_times
from nnunet_liver.labels import MISSING_PHASE_VALUE
from nnunet_liver.utils.io import InputError

__all__ = ["MAX_SLICE_SPACING_MM", "StudyPhases", "identify_study", "load_dicom_case", "DicomLoadedCase"]

MAX_SLICE_SPACING_MM = 5.0
MAX_SLICES_READ = 24  # slices read per series to identify its phase
_SAME_LIVER_HU, _SAME_AORTA_HU = 8.0, 25.0


@dataclass
class StudyPhases:
    """The outcome of :func:`identify_study`: the series chosen per phase and everything CASE.json records."""
    geometry: Dict[str, SeriesGeometry]  # phase -> the chosen series, sorted
    series: Dict[str, SeriesHeaders]
    record: dict


def _series_time(g: SeriesGeometry) -> Optional[Tuple[float, bool, str]]:
    """The earliest slice time of a series: (seconds, dated, source attribute), or None."""
    times = [t for t in (acquisition_time(h) for h in g.headers) if t is not None]
    return min(times, key=lambda t: t[0]) if times else None


def _bolus_delay(g: SeriesGeometry, t: Optional[Tuple[float, bool, str]]) -> Optional[float]:
    """Seconds from ContrastBolusStartTime to the series' first acquisition time (same day; None when unknown)."""
    start = acquisition_time(_BolusStart(g.headers[0])) if t is not None else None
    if start is None:
        return None
    delay = (t[0] - start[0]) % 86400.0 if not (t[1] and start[1]) else t[0] - start[0]
    return delay - 86400.0 if delay > 43200.0 else delay  # within an exam: never half a day apart


class _BolusStart:
    """A header seen through :func:`acquisition_time` with ContrastBolusStartTime as its acquisition time."""

    def __init__(self, ds):
        self.AcquisitionTime = getattr(ds, "ContrastBolusStartTime", None)
        self.AcquisitionDate = getattr(ds, "AcquisitionDate", None) or getattr(ds, "ContentDate", None)
        self.StudyDate = getattr(ds, "StudyDate", None)
        self.TimezoneOffsetFromUTC = getattr(ds, "TimezoneOffsetFromUTC", None)


def _has_agent(s: SeriesHeaders) -> Optional[bool]:
    if "ContrastBolusAgent" not in s.first:
        return None
    return bool(str(s.first.ContrastBolusAgent or "").strip())


def _describe(s: SeriesHeaders, g: SeriesGeometry) -> dict:
    return {"series_uid": s.uid, "series_number": s.number, "description": str(s.get("SeriesDescription", "")),
            "num_slices": len(g.files), "slice_spacing_mm": round(g.spacing[2], 4),
            "slice_thickness_mm": g.slice_thickness_mm}


def _pick_reconstruction(members: List[tuple], prefer: Optional[str] = None) -> tuple:
    """The thinnest reconstruction at most MAX_SLICE_SPACING_MM apart (else the thinnest), more slices, lower number;
    the series ``prefer`` (the annotated one) whenever it is a member."""
    for m in members:
        if prefer is not None and m[0].uid == prefer:
            return m
    ok = [m for m in members if m[1].spacing[2] <= MAX_SLICE_SPACING_MM + 1e-6] or members
    return min(ok, key=lambda m: (round(m[1].spacing[2], 3), -len(m[1].files), m[0].number or 0))


def _close(a: float, b: float, tol: float) -> bool:
    return (not np.isfinite(a) and not np.isfinite(b)) or abs(a - b) <= tol


def _same_acquisition(m, group) -> bool:
    s0, _, f0, t0 = group[0]
    same_frame = str(m[0].get("FrameOfReferenceUID", "")) == str(s0.get("FrameOfReferenceUID", ""))
    same_time = m[3] is None or t0 is None or abs(m[3][0] - t0[0]) < 1.0
    same_look = _close(m[2].liver_hu, f0.liver_hu, _SAME_LIVER_HU) and _close(m[2].aorta_hu, f0.aorta_hu,
                                                                              _SAME_AORTA_HU)
    return same_frame and same_time and same_look


def _series_name(s: SeriesHeaders) -> str:
    """How a user names a series with --phase-map: its number, else its SeriesInstanceUID."""
    return f"series {s.number}" if s.number is not None else f"series {s.uid}"


def _hu(v: float) -> Optional[float]:
    return round(float(v), 1) if np.isfinite(v) else None


def identify_study(study: DicomStudy, phase_map: Optional[Dict[str, str]] = None,
                   prefer_series: Optional[str] = None) -> StudyPhases:
    """Choose the series and identify the phase of each acquisition of ``study`` (see the module docstring).

    ``prefer_series``: a SeriesInstanceUID (the series annotations are drawn on) that is used for its acquisition
    whatever the reconstruction rule says; InputError when it is not a usable axial CT series.

    Raises
    ------
    InputError
        two patients, no axial CT series, a refused series (gap, duplicate, tilt, mixed orientation, unreadable or
        undecodable file), or phases that cannot be told apart with confidence or whose evidence conflicts (name
        them with ``--phase-map``).
    """
    what = f"study {study.case_id} ({study.folder})"
    if study.error:
        raise InputError(study.error)
    candidates, left_out = candidate_series(study.series.values())
    skipped = [c for c in candidates if SKIP in ((phase_map or {}).get(c.uid), (phase_map or {}).get(str(c.number)))]
    candidates = [c for c in candidates if c not in skipped]
    left_out += [{"series_uid": s.uid, "series_number": s.number, "description": str(s.get("SeriesDescription", "")),
                  "reason": "--phase-map skip"} for s in skipped]
    if prefer_series is not None and not any(c.uid == prefer_series for c in candidates):
        why = next((l["reason"] for l in left_out if l["series_uid"] == prefer_series), "not in the study")
        name = (study.series[prefer_series].describe() if prefer_series in study.series else
                f"series {prefer_series}")
        raise InputError(f"{what}: the annotated {name} cannot be used as the reference: {why}")
    if not candidates:
        kinds = "; ".join(f"series {l['series_number'] if l['series_number'] is not None else l['series_uid']}: "
                          f"{l['reason']}" for l in left_out) or "no series"
        raise InputError(f"{what}: no axial CT image series ({kinds})")
    measured = []
    for s in sorted(candidates, key=lambda s: (s.number is None, s.number or 0, s.uid)):
        g = series_geometry(s)
        step = max(1, -(-len(g.files) // MAX_SLICES_READ))
        found = measure_enhancement(read_series(g, range(0, len(g.files), step)))
        if not found.liver.found and not found.aorta.found:
            raise InputError(f"{what}: {_series_name(s)} ({s.get('SeriesDescription', 'no description')!s}): neither "
                             f"a liver nor an aorta found in the image (is it an abdominal CT?)")
        measured.append((s, g, found, _series_time(g)))
    groups: List[List[tuple]] = []
    for m in measured:
        for group in groups:
            if _same_acquisition(m, group):
                group.append(m)
                break
        else:
            groups.append([m])
    agents = [_has_agent(m[0]) for m in measured]
    agent_known = any(a is True for a in agents) and any(a is False for a in agents)
    chosen = [_pick_reconstruction(g, prefer_series) for g in groups]
    times = study_times([None if c[3] is None else c[3][:2] for c in chosen])
    if len(times) > 1 and None not in times and max(times) - min(times) < 1.0:
        times = [None] * len(times)  # one time for every acquisition (an anonymiser's): no order to read
    t0 = min(t for t in times if t is not None) if any(t is not None for t in times) else None
    acquisitions = [Acquisition(key=s.uid, series_number=s.number, description=str(s.get("SeriesDescription", "")),
                                time=None if t is None or t0 is None else t - t0,
                                contrast_agent=_has_agent(s) if agent_known else None,
                                liver_hu=f.liver_hu, aorta_hu=f.aorta_hu, kidneys=f.kidneys.to_dict(),
                                spleen=f.spleen.to_dict(), route=str(s.get("ContrastBolusRoute", "")),
                                agent=str(s.get("ContrastBolusAgent", "")), bolus_delay=_bolus_delay(g, st),
                                notes=f.notes())
                    for (s, g, f, st), t in zip(chosen, times)]
    try:
        assigned = assign_phases(acquisitions, phase_map=phase_map)
    except InputError as e:
        raise InputError(f"{what}: {e}") from None
    weak = [(a, assigned[a.key]) for a in acquisitions if assigned[a.key]["confidence"] < MIN_CONFIDENCE]
    if weak:
        a, r = weak[0]
        raise InputError(f"{what}: cannot tell the phase of series {a.name} apart with confidence "
                         f"({r['phase']}? confidence {r['confidence']:.2f}; " + "; ".join(r["reasons"][:4])
                         + f"); name the phases with --phase-map {a.name}=PHASE")
    geometry, series, acq_records = {}, {}, []
    for (s, g, f, st), group, a in zip(chosen, groups, acquisitions):
        phase = assigned[a.key]["phase"]
        geometry[phase], series[phase] = g, s
        entry = {"phase": phase, **_describe(s, g), "confidence": assigned[a.key]["confidence"],
                 "reasons": assigned[a.key]["reasons"], "liver_hu": _hu(f.liver_hu), "aorta_hu": _hu(f.aorta_hu),
                 "time_s": None if a.time is None else round(a.time, 1),
                 "time_source": None if a.time is None or st is None else st[2],
                 "bolus_delay_s": None if a.bolus_delay is None else round(a.bolus_delay, 1),
                 "phase_costs": assigned[a.key]["costs"], "findings": f.to_dict(),
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


def _relative_record(study: DicomStudy, record: dict) -> dict:
    """CASE.json's DICOM record with paths relative to the searched folder and every file left out with its reason."""
    record = dict(record, folder=study.relative(study.folder),
                  unreadable_files=[{"file": study.relative(p), "reason": study.unreadable_reasons.get(p, "unreadable")}
                                    for p in study.unreadable])
    left = []
    for entry in record.get("series_left_out", []):
        if "files" in entry:
            entry = dict(entry, files=[study.relative(p) for p in entry["files"]])
        left.append(entry)
    record["series_left_out"] = left
    return record


def load_dicom_case(study: DicomStudy, channel_names: Sequence[str], allow_missing: bool,
                    registration_transform: str = "rigid", reference_series: Optional[str] = None):
    """Identify, read and align a DICOM study as a :class:`nnunet_liver.case.LoadedCase`.

    The reference phase is read first (its grid sizes the case array), then every other phase one at a time: read,
    put on the reference grid (:func:`nnunet_liver.dicom.align.align_phase`), stored into the case (int16 while the phases hold whole HU) and
    dropped, so that at most one phase besides the case is in memory. The returned object also carries ``dicom``
    (the record for CASE.json, paths relative to the searched folder) and ``reference_headers`` (for the DICOM SEG
    and SR written back).

    Raises InputError for a study that cannot be read or identified (bad input), and
    :class:`~nnunet_liver.registration.RegistrationError` when registering a phase of another frame of reference onto
    the reference fails (a failed step).

    ``reference_series``: a SeriesInstanceUID (the series a study's annotations are drawn on) that becomes the
    reference phase instead of V; its phase must be one the model takes.
    """
    import SimpleITK as sitk

    validate_case_id(study.case_id)
    found = identify_study(study, study.phase_map, reference_series)
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
    if reference_series is not None:
        annotated = [p for p, s in found.series.items() if s.uid == reference_series]
        if not annotated or annotated[0] not in used:
            raise InputError(f"study {study.case_id}: the annotated series {reference_series} was identified as "
                             f"{annotated[0] if annotated else 'no phase'}, not one of the phases written "
                             f"({', '.join(names)})")
        ref_phase = annotated[0]
    ref = read_series(found.geometry[ref_phase])
    ref_frame = str(found.series[ref_phase].get("FrameOfReferenceUID", "") or "")
    shape = (len(names),) + tuple(reversed(ref.GetSize()))
    data = store_phase(None, names.index(ref_phase), sitk.GetArrayViewFromImage(ref), shape)
    registration = {}
    for p in used:
        if p == ref_phase:
            continue
        frame = str(found.series[p].get("FrameOfReferenceUID", "") or "")
        array, report = align_phase(read_series(found.geometry[p]), ref, bool(ref_frame) and frame == ref_frame,
                               registration_transform, f"study {study.case_id}: registration of {p} to {ref_phase}")
        data = store_phase(data, names.index(p), array, shape)
        del array
        if report is not None:
            registration[p] = report
    for p in missing:
        data[names.index(p)] = MISSING_PHASE_VALUE
    ref_headers = list(found.geometry[ref_phase].headers)
    record = dict(_relative_record(study, found.record), phases_not_used=unused, reference_phase=ref_phase,
                  reference_series_uid=found.series[ref_phase].uid,
                  study_uid=str(getattr(ref_headers[0], "StudyInstanceUID", study.study_uid)))
    if len(study.study_uids) > 1:  # one exam exported as several studies (index.group_exams)
        record["study_uids"] = list(study.study_uids)
    inputs = {p: (study.relative(os.path.dirname(found.geometry[p].files[0])) if p in found.geometry else None)
              for p in names}
    spacing = tuple(float(s) for s in reversed(ref.GetSpacing()))
    return DicomLoadedCase(case_id=study.case_id, data=data, spacing=spacing,
                           reference=ref, reference_channel=names.index(ref_phase), phases_present=used,
                           phases_missing=missing, inputs=inputs, registration=registration, dicom=record,
                           reference_headers=ref_headers)
