"""What a series' headers say about its contrast phase: acquisition times, contrast route and agent, the delay
after the contrast bolus started, and the series description.

- **Times** (:func:`acquisition_time`): ``AcquisitionDateTime``, else ``AcquisitionDate``/``AcquisitionTime``, else
  ``ContentDate``/``ContentTime``, else ``SeriesDate``/``SeriesTime`` (a missing date falls back on ``StudyDate``),
  corrected to UTC by ``TimezoneOffsetFromUTC`` (or the offset a DT value carries), so that acquisitions of one exam
  that straddle midnight or a daylight-saving change keep their order. Times without any date are seconds of the
  day; when such times of one study spread over more than 12 hours, the exam crossed midnight and the early-morning
  ones are moved to the next day (:func:`study_times`).
- **Route** (:func:`route_phases`): ``ContrastBolusRoute`` naming only an oral (or rectal) route means no
  intravenous contrast at this acquisition: NC. A route naming the intravenous route says little: scanners often copy
  the exam's route onto its non-contrast series too.
- **Agent**: ``ContrastBolusAgent`` naming only an oral agent (barium, Gastrografin, "oral") counts as an oral route.
- **Bolus delay** (:func:`bolus_delay_phases`): the acquisition time minus ``ContrastBolusStartTime``: before the
  injection NC, 10-50 s A, 50-110 s V, beyond 150 s D (110-150 s: V or D).
- **Descriptions** (:func:`description_phases`): whole words that name a phase ("non-contrast", "PRE",
  "arterial", "late arterial", "portal venous", "delayed", "equilibrium", "5 min" ...) are *strong*; abbreviations
  ("ART", "PV", "NC", "EQ", "W/O") only *weak*. "Late arterial" is A, "late" alone D; "PRE" followed by "op",
  "TACE", "treatment" or "ablation" names a time point of the patient's care, not a phase.
"""
from __future__ import annotations

import datetime
import re
from typing import List, Optional, Sequence, Tuple

__all__ = ["acquisition_time", "study_times", "route_phases", "agent_is_oral", "bolus_delay_phases",
           "description_phases", "description_strength", "BOLUS_DELAY_S"]

_DAY = 86400.0

#: bolus delay ranges (s) per phase; between V and D (110-150 s) both are possible
BOLUS_DELAY_S = {"A": (10.0, 50.0), "V": (50.0, 110.0), "D": (150.0, float("inf"))}

_STRONG = {
    "NC": r"non[- ]?contrast|non[- ]?enhanced|unenhanced|pre[- ]?contrast|without contrast|native|plain"
          r"|pre(?![- ]?(?:op|tace|treat|ablation|rfa|therapy|procedure|surgery))|precontrast",
    "A": r"(?:late|early|hepatic)?[- ]?arterial|arterial",
    "V": r"portal[- ]?venous|porto[- ]?venous|portal|venous",
    "D": r"delayed|equilibrium|late(?![- ]?(?:arterial|art\b))|\d+\s*min(?:ute)?s?",
}
_WEAK = {"NC": r"nc|noncon|w/o", "A": r"art|lap|hap", "V": r"pv|pvp|ven", "D": r"eq|del"}


def _parse_tm(value) -> Optional[float]:
    """A DICOM TM (``HHMMSS.FFFFFF``, or the old ``HH:MM:SS``) as seconds of the day."""
    t = str(value or "").strip().replace(":", "")
    if len(t) < 2 or not t[:2].isdigit():
        return None
    try:
        return int(t[0:2]) * 3600 + int(t[2:4] or 0) * 60 + float(t[4:] or 0)
    except ValueError:
        return None


def _parse_da(value) -> Optional[datetime.date]:
    d = str(value or "").strip().replace(".", "")
    try:
        return datetime.datetime.strptime(d[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _parse_offset(value) -> Optional[float]:
    """``+HHMM`` / ``-HHMM`` as seconds east of UTC."""
    m = re.fullmatch(r"\s*([+-])(\d{2})(\d{2})\s*", str(value or ""))
    if not m:
        return None
    sign = 1 if m.group(1) == "+" else -1
    return sign * (int(m.group(2)) * 3600 + int(m.group(3)) * 60)


def acquisition_time(ds) -> Optional[Tuple[float, bool, str]]:
    """``(seconds, dated, source)`` of one slice, or None: seconds since 1970 UTC when a date is known
    (``dated``), else seconds of the day; ``source`` names the attribute used."""
    offset = _parse_offset(getattr(ds, "TimezoneOffsetFromUTC", None))
    dt = str(getattr(ds, "AcquisitionDateTime", "") or "").strip()
    m = re.fullmatch(r"(\d{8})(\d{2,6}(?:\.\d+)?)?([+-]\d{4})?", dt)
    if m and m.group(2):
        day, seconds = _parse_da(m.group(1)), _parse_tm(m.group(2))
        if day is not None and seconds is not None:
            own = _parse_offset(m.group(3)) if m.group(3) else offset
            return _utc(day, seconds, own), True, "AcquisitionDateTime"
    for date_kw, time_kw in (("AcquisitionDate", "AcquisitionTime"), ("ContentDate", "ContentTime"),
                             ("SeriesDate", "SeriesTime")):
        seconds = _parse_tm(getattr(ds, time_kw, None))
        if seconds is None:
            continue
        day = _parse_da(getattr(ds, date_kw, None)) or _parse_da(getattr(ds, "StudyDate", None))
        if day is None:
            return seconds - (offset or 0.0), False, time_kw
        return _utc(day, seconds, offset), True, time_kw
    return None


def _utc(day: datetime.date, seconds: float, offset: Optional[float]) -> float:
    midnight = datetime.datetime(day.year, day.month, day.day, tzinfo=datetime.timezone.utc).timestamp()
    return midnight + seconds - (offset or 0.0)


def study_times(times: Sequence[Optional[Tuple[float, bool]]]) -> List[Optional[float]]:
    """Per acquisition ``(seconds, dated)`` or None -> seconds on one scale (None kept). Mixed dated and undated
    times are all taken as seconds of the day; undated ones spreading over more than 12 h crossed midnight."""
    if any(t is not None and not t[1] for t in times):
        values = [None if t is None else (t[0] % _DAY if t[1] else t[0]) for t in times]
        known = [v for v in values if v is not None]
        if known and max(known) - min(known) > _DAY / 2:
            values = [None if v is None else (v + _DAY if v < _DAY / 2 else v) for v in values]
        return values
    return [None if t is None else t[0] for t in times]


_ORAL = r"\b(oral|po|per os|enteral|rectal|barium|gastrografin|gastrographin|diatrizoate)\b"
_IV = r"\b(iv|i\.v\.|intravenous|intra[- ]venous|venous|vascular)\b"


def route_phases(route: Optional[str]) -> Optional[List[str]]:
    """``["NC"]`` when ``ContrastBolusRoute`` names only an oral or rectal route, None otherwise."""
    text = str(route or "").lower()
    if re.search(_ORAL, text) and not re.search(_IV, text):
        return ["NC"]
    return None


def agent_is_oral(agent: Optional[str]) -> bool:
    """``ContrastBolusAgent`` names only an oral agent (or the word oral) and no intravenous route."""
    text = str(agent or "").lower()
    return bool(re.search(_ORAL, text)) and not re.search(_IV, text)


def bolus_delay_phases(delay_s: Optional[float]) -> Optional[List[str]]:
    """Phases compatible with an acquisition ``delay_s`` seconds after the bolus started (None when unknown)."""
    if delay_s is None:
        return None
    if delay_s < 0:
        return ["NC"]
    out = [p for p, (lo, hi) in BOLUS_DELAY_S.items() if lo <= delay_s < hi]
    if 110.0 <= delay_s < 150.0:
        out = ["V", "D"]
    return out or None


def _named(text: str, table: dict) -> List[str]:
    return [p for p, pattern in table.items() if re.search(rf"\b(?:{pattern})\b", text)]


def description_phases(text: str) -> List[str]:
    """Phases a series description names (strong words first; abbreviations when no word names one); ``[]`` when
    none. "Late arterial" is A only, "portal venous" V only."""
    text = str(text or "").lower()
    return _named(text, _STRONG) or _named(text, _WEAK)


def description_strength(text: str) -> str:
    """"strong" when a whole word names the phase(s), "weak" for an abbreviation, "" when nothing is named."""
    text = str(text or "").lower()
    return "strong" if _named(text, _STRONG) else ("weak" if _named(text, _WEAK) else "")
