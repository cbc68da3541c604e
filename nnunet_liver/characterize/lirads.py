"""The LI-RADS v2018 CT/MRI diagnostic table (American College of Radiology), as a suggestion for patients at risk.

LI-RADS applies only to patients at high risk of HCC (cirrhosis, chronic hepatitis B, current or prior HCC); for
anyone else no category is given. The table categorises an observation that is not LR-M, LR-TIV or treated by its
size (< 10, 10-19, >= 20 mm), nonrim arterial phase hyperenhancement (APHE) and the count of additional major
features: nonperipheral washout, enhancing capsule and threshold growth::

                          no APHE           nonrim APHE
    size (mm)             < 20    >= 20     < 10    10-19          >= 20
    none of the others    LR-3    LR-3      LR-3    LR-3           LR-4
    one                   LR-3    LR-4      LR-4    LR-4 / LR-5 *  LR-5
    two or three          LR-4    LR-4      LR-4    LR-5           LR-5

    * 10-19 mm with nonrim APHE and one additional feature: LR-4 if it is the enhancing capsule, LR-5 if it is
      nonperipheral washout or threshold growth.

Threshold growth needs a prior study; without one it is unknown: the category is given as if absent, and
``category_if_growth`` says what it would be with growth. The feature calls come from the characterizer's criterion
probabilities (present when >= 0.5) and are reported with the category, so a reader sees what it rests on. The
category is never a diagnosis: LR-1/LR-2 (benign), LR-M, LR-TIV and ancillary features need a radiologist.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

__all__ = ["LiradsResult", "lirads_category", "size_column", "AT_RISK_NOTE", "CALL_THRESHOLD"]

#: a criterion probability at or above this is a "present" call
CALL_THRESHOLD = 0.5
AT_RISK_NOTE = ("LI-RADS applies only to patients at high risk of HCC (cirrhosis, chronic hepatitis B, current or "
                "prior HCC); the category is a suggestion from the automatic feature calls, not a diagnosis")


def size_column(size_mm: float) -> str:
    """The table's size column: "<10", "10-19" or ">=20" (mm)."""
    return "<10" if size_mm < 10 else ("10-19" if size_mm < 20 else ">=20")


def _category(size_mm: float, aphe: bool, washout: bool, capsule: bool, growth: bool) -> str:
    n = int(washout) + int(capsule) + int(growth)
    if not aphe:
        if size_mm < 20:
            return "LR-4" if n >= 2 else "LR-3"
        return "LR-3" if n == 0 else "LR-4"
    if size_mm < 10:
        return "LR-3" if n == 0 else "LR-4"
    if size_mm < 20:
        if n == 0:
            return "LR-3"
        if n == 1:
            return "LR-4" if capsule else "LR-5"
        return "LR-5"
    return "LR-4" if n == 0 else "LR-5"


@dataclass
class LiradsResult:
    """A LI-RADS v2018 category suggestion and what it rests on.

    ``category``: "LR-3", "LR-4" or "LR-5" with threshold growth absent or as given; ``category_if_growth``: the
    category with threshold growth when growth is unknown (None when known); ``features``: the calls {"APHE",
    "washout", "capsule", "threshold_growth"} (True, False, or None = unknown); ``size_mm`` and its column.
    """
    category: str
    category_if_growth: Optional[str]
    size_mm: float
    size_column: str
    features: dict = field(default_factory=dict)
    note: str = AT_RISK_NOTE

    def to_dict(self) -> dict:
        return {"category": self.category, "category_if_growth": self.category_if_growth,
                "size_mm": round(float(self.size_mm), 2), "size_column": self.size_column,
                "features": dict(self.features), "note": self.note}

    def __str__(self) -> str:
        calls = ", ".join(f"{k} {'yes' if v else 'no' if v is not None else 'unknown'}"
                          for k, v in self.features.items())
        growth = f" ({self.category_if_growth} with threshold growth)" if self.category_if_growth else ""
        return f"{self.category}{growth}: {self.size_mm:.0f} mm, {calls}"


def lirads_category(size_mm: float, aphe: bool, washout: bool, capsule: bool,
                    threshold_growth: Optional[bool] = None) -> LiradsResult:
    """The v2018 CT/MRI diagnostic table's category (see the module docstring).

    Parameters
    ----------
    size_mm : the observation's size (largest diameter, mm)
    aphe : nonrim arterial phase hyperenhancement
    washout : nonperipheral washout
    capsule : enhancing capsule
    threshold_growth : True / False when a prior study tells; None (unknown): categorised as absent, and
        ``category_if_growth`` holds the category with growth.
    """
    if size_mm is None or not size_mm >= 0:
        raise ValueError(f"LI-RADS needs the observation's size in mm, got {size_mm}")
    growth = bool(threshold_growth)
    category = _category(float(size_mm), bool(aphe), bool(washout), bool(capsule), growth)
    if_growth = None
    if threshold_growth is None:
        with_growth = _category(float(size_mm), bool(aphe), bool(washout), bool(capsule), True)
        if_growth = with_growth if with_growth != category else None
    return LiradsResult(category, if_growth, float(size_mm), size_column(float(size_mm)),
                        {"APHE": bool(aphe), "washout": bool(washout), "capsule": bool(capsule),
                         "threshold_growth": threshold_growth})
