"""The detector's second stage: ``nnunet-liver-detect --characterizer DIR``.

:class:`DetectionCharacterizer` takes the detector's ``CaseResult`` (its images, spacing, final lesions, instance map
and label maps) and returns what each lesion of CASE.json gains; :meth:`DetectionCharacterizer.annotate` merges it
into the record. Per lesion (CASE.json, schema ``inference/case_schema.json``):

* ``hcc_probability``: the primary model's HCC probability (None when the case lacks a phase it needs);
* ``criteria_probabilities``: {"APHE", "NPW", "EC"}, from the deep sub-models or the criterion models;
* ``lirads``: the LI-RADS v2018 category suggestion with the calls it rests on, for a patient at risk only (else
  None);
* ``characterization``: every model's probability, Eq. (1)'s features, the criteria source, why a value is missing.

and the record gains ``characterization``: the characterizer, whether the patient is flagged at risk, the note that
LI-RADS applies to patients at risk only.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

from nnunet_liver.characterize.characterizer import Characterizer
from nnunet_liver.characterize.lirads import AT_RISK_NOTE
from nnunet_liver.characterize.pipeline import AtRisk

__all__ = ["DetectionCharacterizer", "sr_measurements", "report_html"]


def _num(v) -> Optional[float]:
    try:
        v = float(v)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


class DetectionCharacterizer:
    """A loaded characterizer, the at-risk flags and the device, for the detector."""

    def __init__(self, characterizer: Characterizer, at_risk: Optional[AtRisk] = None, device: str = "cpu"):
        self.characterizer, self.at_risk, self.device = characterizer, at_risk or AtRisk(), device

    @classmethod
    def from_option(cls, folder: str, at_risk: Optional[str] = None, device: str = "cpu",
                    model: Optional[str] = None) -> "DetectionCharacterizer":
        """Load ``folder`` ('demo': the bundled one) with the ``--at-risk`` option's value."""
        from nnunet_liver.characterize.cli import _load_characterizer

        return cls(_load_characterizer(folder).with_primary(model), AtRisk.from_option(at_risk), device)

    def check_phases(self, channel_names: Sequence[str], folder: str) -> None:
        """InputError (one line) when the characterizer needs a phase the detection model does not have."""
        self.characterizer.check_phases(list(channel_names), f"--characterizer {folder}: the detection model")

    def __call__(self, result) -> Dict[int, dict]:
        """{lesion id: the entries that lesion gains in CASE.json} for a detector ``CaseResult``."""
        from dataclasses import replace

        from nnunet_liver.characterize.lesions import case_from_detection
        from nnunet_liver.characterize.pipeline import characterize, collect

        ch = self.characterizer
        if not result.lesions:
            return {}
        used = [ch.models[ch.primary]] + [ch.models[n] for n in ch.models if n.startswith("crit_")]
        settings = replace(ch.feature_settings,
                           radiomics=any(f.startswith("rad_") for m in used for f in m.features))
        table, patches = collect([case_from_detection(result)], settings, ch.deep_settings, reference=False,
                                 initial=False)
        out = characterize(ch, table, patches, self.at_risk, self.device)
        at_risk = self.at_risk(result.case.case_id)
        additions = {}
        for _, row in out.iterrows():
            lirads = None
            if row["lirads_category"] is not None and isinstance(row["lirads_category"], str):
                lirads = {"category": row["lirads_category"],
                          "category_if_growth": row["lirads_category_if_growth"]
                          if isinstance(row["lirads_category_if_growth"], str) else None,
                          "size_mm": round(float(row["s"]), 2),
                          "features": {"APHE": bool(row["prob_APHE"] >= 0.5), "washout": bool(row["prob_NPW"] >= 0.5),
                                       "capsule": bool(row["prob_EC"] >= 0.5), "threshold_growth": None}}
            by_model = {c[len("hcc_probability_"):]: _num(row[c]) for c in out.columns
                        if c.startswith("hcc_probability_")}
            reason = row["reason"] or None
            if lirads is None and reason is None:
                reason = None if at_risk else "LI-RADS: the patient is not flagged at risk (--at-risk)"
            additions[int(row["lesion_id"])] = {
                "hcc_probability": _num(row["hcc_probability"]),
                "criteria_probabilities": {c: _num(row[f"prob_{c}"]) for c in ("APHE", "NPW", "EC")},
                "lirads": lirads,
                "characterization": {"model": ch.primary, "hcc_probability_by_model": by_model,
                                     "criteria_source": ch.criteria_source,
                                     "features": {k: _num(row.get(k)) for k in ("f_APHE", "f_EC", "f_NPW", "s")},
                                     "reason": reason}}
        return additions

    def annotate(self, result):
        """``result`` with :meth:`__call__`'s additions in its record (every lesion gets the keys, None when absent)
        and the record's ``characterization`` (a new ``CaseResult``; ``result`` is not changed)."""
        import dataclasses

        additions = self(result)
        empty = {"hcc_probability": None, "criteria_probabilities": None, "lirads": None, "characterization": None}
        summary = {"characterizer": self.characterizer.describe(), "at_risk": self.at_risk(result.case.case_id),
                   "at_risk_source": self.at_risk.source, "lirads_note": AT_RISK_NOTE}
        lesions = {int(entry["id"]): additions.get(int(entry["id"]), empty) for entry in result.case_record.lesions}
        return dataclasses.replace(result, case_record=result.case_record.with_characterization(lesions, summary))


def sr_measurements(lesion: dict) -> list:
    """The TID 1500 measurements a characterized lesion adds: ``[(code, meaning, value, unit)]`` (unit "1")."""
    out = []
    if lesion.get("hcc_probability") is not None:
        out.append(("hcc-probability", "HCC probability (second-stage characterizer)", lesion["hcc_probability"], "1"))
    crit = lesion.get("criteria_probabilities") or {}
    for key, meaning in (("APHE", "Arterial phase hyperenhancement probability"),
                         ("NPW", "Nonperipheral washout probability"), ("EC", "Enhancing capsule probability")):
        if crit.get(key) is not None:
            out.append((f"{key}-probability", meaning, crit[key], "1"))
    return out


def sr_evaluations(lesion: dict) -> list:
    """The TID 1500 qualitative evaluations: ``[(code, meaning, value code, value meaning)]`` (LI-RADS category)."""
    lirads = lesion.get("lirads")
    if not lirads:
        return []
    return [("lirads", "LI-RADS v2018 category suggestion (patient at risk)", lirads["category"],
             f"{lirads['category']} (automatic suggestion, threshold growth unknown)")]


def report_html(record: dict) -> str:
    """The report's characterization section of one case ('' without a characterizer)."""
    import html

    info = record.get("characterization")
    if not info:
        return ""
    rows = []
    for les in record.get("lesions", []):
        crit = les.get("criteria_probabilities") or {}
        lirads = les.get("lirads")
        text = "-"
        if lirads:
            calls = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in lirads["features"].items() if v is not None)
            text = (f"<b>{html.escape(lirads['category'])}</b>"
                    + (f" ({html.escape(lirads['category_if_growth'])} with threshold growth)"
                       if lirads.get("category_if_growth") else "")
                    + f": {lirads['size_mm']:.0f} mm, {html.escape(calls)}; threshold growth unknown")
        reason = (les.get("characterization") or {}).get("reason")
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        rows.append(f"<tr><td>{les['id']}</td><td>{fmt(les.get('hcc_probability'))}</td>"
                    f"<td>{fmt(crit.get('APHE'))}</td><td>{fmt(crit.get('NPW'))}</td><td>{fmt(crit.get('EC'))}</td>"
                    f"<td>{text}</td><td>{html.escape(reason or '')}</td></tr>")
    desc = info["characterizer"]
    flag = "flagged at risk of HCC" if info.get("at_risk") else "not flagged at risk of HCC (no LI-RADS category)"
    return (f"<h3>Characterization ({html.escape(str(desc.get('primary')))} model; criteria from "
            f"{html.escape(str(desc.get('criteria_source')))})</h3><p>Patient {flag}. "
            f"{html.escape(info.get('lirads_note', AT_RISK_NOTE))}.</p>"
            "<table><tr><th>#</th><th>HCC probability</th><th>APHE</th><th>washout</th><th>capsule</th>"
            f"<th>LI-RADS suggestion</th><th>note</th></tr>{''.join(rows)}</table>")
