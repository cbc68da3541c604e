"""Which contrast phase (NC, A, V, D) each CT acquisition of a study is, with a confidence and the reasons.

Each acquisition gets a cost per phase from the evidence radiologists use (every term is recorded in the reasons):

1. **Aorta and liver** (found by :mod:`.anatomy` and :mod:`.organs`): each phase has a core range (:data:`CORE_HU`)
   of aortic lumen and liver parenchyma HU; outside it the cost grows quadratically (:data:`AORTA_SCALE_HU`,
   :data:`LIVER_SCALE_HU` per unit). The arterial phase has a bright aorta and a barely enhanced liver, the
   portal-venous phase the liver at its peak with the aorta still well above it, the delayed (equilibrium) phase
   both lower and close together, the non-contrast phase neither enhanced. When a study has a non-contrast
   acquisition, its liver is the baseline: the other phases' liver ranges move with it (a fatty liver is darker
   in every phase).
2. **Kidneys** (only when the aorta is enhanced, or not found): enhanced parenchyma rules out NC; contrast excreted
   into the collecting systems means a delayed (excretory) phase, its absence speaks mildly against it;
   corticomedullary differentiation speaks against the delayed phase, a homogeneous nephrogram against the arterial
   phase.
3. **Spleen** (when the aorta is enhanced): heterogeneous (arciform) means arterial, homogeneous not arterial.
4. **Headers** (:mod:`.tags`): an oral-only ``ContrastBolusRoute`` or agent, the delay after
   ``ContrastBolusStartTime``, and a description naming a phase in words are strong; an abbreviation, an intravenous
   route, and a ``ContrastBolusAgent`` empty while other series of the study have one are weak nudges.
5. **Times** (when every acquisition has one): phases follow time order, and V comes 15-100 s after A, D more than
   100 s after A and 60 s after V (:data:`TIME_GAP_COST` per gap on the wrong side).
6. **The study as a whole**: the aorta is brightest in A, then V, then D; the liver is higher in V than in D and
   A; NC is the least enhanced of all (violations cost quadratically).

All acquisitions of a study are assigned distinct phases jointly (every one-to-one assignment is scored, the lowest
total wins). The confidence of an acquisition's phase is ``1 - exp(-margin / 2)``, the margin being the cost gap to
the best assignment that gives it another phase. A study is refused (:class:`PhaseConflict`, one line with the
reasons) when a confidence is below :data:`MIN_CONFIDENCE`, when a strong header says one phase and the image
clearly another (:data:`CONFLICT_COST`), when the acquisition times force phases the images clearly contradict,
or when the joint assignment gives an acquisition a phase its own evidence rejects (:data:`OWN_GAP_LIMIT`: two
acquisitions of one phase, such as two arterial runs, or a phase missing from the study that another one's
evidence takes). An acquisition moved off its own best phase by the study keeps at most the margin
:data:`DUPLICATE_MARGIN` less how far it was moved.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from nnunet_liver.dicom.tags import (agent_is_oral, bolus_delay_phases, description_phases, description_strength,
                                     route_phases)
from nnunet_liver.labels import PHASES
from nnunet_liver.utils.io import InputError

__all__ = ["CORE_HU", "MIN_CONFIDENCE", "CONFLICT_COST", "SKIP", "Acquisition", "PhaseConflict", "assign_phases",
           "description_phases", "parse_phase_map"]

#: phase -> ((aorta low, high), (liver low, high)) HU: where a phase's values usually lie (120 kVp)
CORE_HU: Dict[str, Tuple[Tuple[float, float], Tuple[float, float]]] = {
    "NC": ((20.0, 70.0), (30.0, 70.0)),
    "A": ((200.0, 600.0), (45.0, 88.0)),
    "V": ((150.0, 320.0), (95.0, 150.0)),
    "D": ((85.0, 135.0), (75.0, 100.0)),
}
AORTA_SCALE_HU, LIVER_SCALE_HU = 20.0, 10.0
LIVER_BASELINE_HU = 55.0  # the NC liver the core ranges assume
ENHANCED_AORTA_HU = 90.0  # above this the aorta holds iodine: kidney and spleen patterns are read
MIN_CONFIDENCE = 0.5
CONFLICT_COST = 6.0
OWN_GAP_LIMIT = 3.0  # an acquisition given a phase this much worse than its own best: two of one phase
DUPLICATE_MARGIN = 4.5  # the margin left to an acquisition given a phase worse than its own best, less the gap
TIME_GAP_COST = 6.0
STRONG_TAG_COST, WEAK_TAG_COST = 3.0, 1.0
EXCRETED_CM2 = 2.0

#: the --phase-map value that leaves a series out
SKIP = "skip"


class PhaseConflict(InputError):
    """The phases cannot be told with confidence, or the evidence conflicts; the message is one line."""


def _outside(value: float, lo: float, hi: float, scale: float) -> float:
    if not np.isfinite(value):
        return 0.0
    return (max(lo - value, 0.0, value - hi) / scale) ** 2


def _costs(table: Dict[str, float]) -> Dict[str, float]:
    return {p: float(table.get(p, 0.0)) for p in PHASES}


@dataclass
class Acquisition:
    """One acquisition (one or more reconstructions of it) and the evidence on its phase.

    ``kidneys`` and ``spleen`` are :meth:`nnunet_liver.dicom.organs.Kidneys.to_dict` /
    :meth:`~nnunet_liver.dicom.organs.Spleen.to_dict` (empty: not measured); ``route`` and ``agent`` the
    ``ContrastBolusRoute``/``ContrastBolusAgent`` text; ``bolus_delay`` the seconds since ``ContrastBolusStartTime``.
    """
    key: str  # the chosen series' UID
    series_number: Optional[int]
    description: str
    time: Optional[float]  # seconds since the study's first acquisition (None when absent)
    contrast_agent: Optional[bool]  # ContrastBolusAgent present (None when no series of the study says)
    liver_hu: float
    aorta_hu: float
    kidneys: dict = field(default_factory=dict)
    spleen: dict = field(default_factory=dict)
    route: str = ""
    agent: str = ""
    bolus_delay: Optional[float] = None
    notes: List[str] = field(default_factory=list)  # what the image finders could not find

    @property
    def name(self) -> str:
        """How a user names this series with --phase-map: its number, else its UID."""
        return str(self.series_number) if self.series_number is not None else self.key

    def image_costs(self, baseline_shift: float = 0.0) -> Dict[str, float]:
        """Aorta and liver against each phase's core range (liver ranges shifted by ``baseline_shift``)."""
        out = {}
        for p, ((alo, ahi), (llo, lhi)) in CORE_HU.items():
            shift = 0.0 if p == "NC" else baseline_shift
            out[p] = (_outside(self.aorta_hu, alo, ahi, AORTA_SCALE_HU)
                      + _outside(self.liver_hu, llo + shift, lhi + shift, LIVER_SCALE_HU))
        return out

    def pattern_terms(self) -> List[Tuple[Dict[str, float], str]]:
        """Kidney and spleen evidence: [(cost per phase, reason)]."""
        enhanced = not np.isfinite(self.aorta_hu) or self.aorta_hu >= ENHANCED_AORTA_HU
        terms = []
        k = self.kidneys or {}
        if enhanced and k.get("cortex_hu") is not None:
            terms.append(({"NC": 4.0}, f"kidneys: enhanced parenchyma ({k['cortex_hu']:.0f} HU)"))
            excreted = k.get("excreted_contrast_cm2") or 0.0
            if excreted >= EXCRETED_CM2:
                terms.append(({"NC": 3.0, "A": 5.0, "V": 4.0}, f"kidneys: contrast excreted into the collecting "
                              f"systems ({excreted:.1f} cm2 above 400 HU): delayed (excretory) phase"))
            else:
                terms.append(({"D": 0.5}, "kidneys: no excreted contrast in the collecting systems"))
            share = k.get("medulla_share")
            if share is not None and share >= 0.10:
                terms.append(({"D": 1.0}, f"kidneys: corticomedullary differentiation (medulla {share:.0%} of the "
                              "kidney)"))
            elif share is not None and share <= 0.05 and excreted < EXCRETED_CM2:
                terms.append(({"A": 1.0}, f"kidneys: homogeneous nephrogram (medulla {share:.0%} of the kidney)"))
        s = self.spleen or {}
        if (np.isfinite(self.aorta_hu) and self.aorta_hu >= ENHANCED_AORTA_HU and s.get("spread_hu") is not None
                and s.get("liver_spread_hu") is not None and (s.get("area_cm2") or 0.0) >= 100.0):
            excess = s["spread_hu"] - s["liver_spread_hu"]
            if excess >= 30.0:
                terms.append(({"V": 0.5, "D": 1.0}, f"spleen: heterogeneous (spread {s['spread_hu']:.0f} HU, liver "
                              f"{s['liver_spread_hu']:.0f} HU): arterial"))
            elif excess <= 10.0:
                terms.append(({"A": 1.0}, f"spleen: homogeneous (spread {s['spread_hu']:.0f} HU, liver "
                              f"{s['liver_spread_hu']:.0f} HU)"))
        return [(_costs(c), r) for c, r in terms]

    def tag_terms(self) -> List[Tuple[Dict[str, float], str, bool]]:
        """Header evidence: [(cost per phase, reason, strong)]; a strong one may conflict with the image."""
        terms = []

        def against(named, cost):
            return {p: (0.0 if p in named else cost) for p in PHASES}

        oral = route_phases(self.route)
        if oral:
            terms.append((against(oral, STRONG_TAG_COST), f"ContrastBolusRoute {self.route!r}: oral contrast only, "
                          "no intravenous contrast: NC", True))
        elif self.route.strip():
            terms.append(({"NC": 0.5}, f"ContrastBolusRoute {self.route!r}: intravenous contrast in the exam", False))
        if agent_is_oral(self.agent) and not oral:
            terms.append((against(["NC"], STRONG_TAG_COST), f"ContrastBolusAgent {self.agent!r}: an oral agent "
                          "only: NC", True))
        if self.contrast_agent is not None:
            terms.append((against(["NC"] if not self.contrast_agent else ["A", "V", "D"], STRONG_TAG_COST),
                          "ContrastBolusAgent " + ("set" if self.contrast_agent else "empty while other series of "
                                                   "the study have one"), False))
        delay = bolus_delay_phases(self.bolus_delay)
        if delay:
            terms.append((against(delay, STRONG_TAG_COST + 1.0), f"acquired {self.bolus_delay:.0f} s after the "
                          f"contrast bolus started (ContrastBolusStartTime): {'/'.join(delay)}", True))
        words = description_phases(self.description)
        if words:
            strong = description_strength(self.description) == "strong"
            terms.append((against(words, STRONG_TAG_COST if strong else WEAK_TAG_COST),
                          f"description {self.description!r} names {'/'.join(words)}"
                          + ("" if strong else " (an abbreviation: a nudge)"), strong))
        return [({p: float(c.get(p, 0.0)) for p in PHASES}, r, s) for c, r, s in terms]

    def evidence_costs(self, baseline_shift: float = 0.0) -> Dict[str, float]:
        """The acquisition's own cost per phase: image, patterns and headers."""
        total = self.image_costs(baseline_shift)
        for c, _ in self.pattern_terms():
            total = {p: total[p] + c[p] for p in PHASES}
        for c, _, _ in self.tag_terms():
            total = {p: total[p] + c[p] for p in PHASES}
        return total

    def image_only(self) -> Dict[str, float]:
        total = self.image_costs()
        for c, _ in self.pattern_terms():
            total = {p: total[p] + c[p] for p in PHASES}
        return total


def _fmt(costs: Dict[str, float]) -> str:
    return ", ".join(f"{p} {costs[p]:.1f}" for p in PHASES)


def _relation_cost(acquisitions: Sequence[Acquisition], perm: Sequence[str]) -> float:
    """The study as a whole: aorta A > V > D > NC, liver V >= D, V >= A, NC least (with tolerances)."""
    by = {p: a for a, p in zip(acquisitions, perm)}
    cost = 0.0
    rules = (("A", "V", "aorta_hu", 20.0, 15.0), ("A", "D", "aorta_hu", 20.0, 15.0), ("V", "D", "aorta_hu", 15.0, 15.0),
             ("V", "D", "liver_hu", 5.0, 8.0), ("V", "A", "liver_hu", 5.0, 8.0))
    for high, low, attr, tol, scale in rules:
        if high in by and low in by:
            hi, lo = getattr(by[high], attr), getattr(by[low], attr)
            if np.isfinite(hi) and np.isfinite(lo):
                cost += (max(0.0, lo - tol - hi) / scale) ** 2
    if "NC" in by:
        for p, a in by.items():
            for attr, tol, scale in (("aorta_hu", 20.0, 15.0), ("liver_hu", 5.0, 8.0)):
                mine, theirs = getattr(by["NC"], attr), getattr(a, attr)
                if p != "NC" and np.isfinite(mine) and np.isfinite(theirs):
                    cost += (max(0.0, mine - tol - theirs) / scale) ** 2
    return cost


def _time_gap_cost(acquisitions: Sequence[Acquisition], perm: Sequence[str]) -> float:
    """:data:`TIME_GAP_COST` per V or D whose delay after A (or D's after V) is on the wrong side of its range."""
    times = {p: a.time for a, p in zip(acquisitions, perm)}
    cost = 0.0
    if "A" in times:
        if "V" in times and not 15.0 <= times["V"] - times["A"] <= 100.0:
            cost += TIME_GAP_COST
        if "D" in times and times["D"] - times["A"] <= 100.0:
            cost += TIME_GAP_COST
    if "V" in times and "D" in times and times["D"] - times["V"] < 60.0:
        cost += TIME_GAP_COST
    return cost


def _in_time_order(acquisitions, perm) -> bool:
    order = sorted(range(len(acquisitions)), key=lambda i: acquisitions[i].time)
    ranks = [PHASES.index(perm[i]) for i in order]
    return ranks == sorted(ranks)


def _score(acquisitions, perm, fixed, timed) -> float:
    nc = [a for a, p in zip(acquisitions, perm) if p == "NC" and np.isfinite(a.liver_hu)]
    shift = float(np.clip(nc[0].liver_hu - LIVER_BASELINE_HU, -25.0, 25.0)) if nc else 0.0
    cost = sum(0.0 if a.key in fixed else a.evidence_costs(shift)[p] for a, p in zip(acquisitions, perm))
    cost += _relation_cost(acquisitions, perm)
    if timed:
        cost += _time_gap_cost(acquisitions, perm)
    return cost


def assign_phases(acquisitions: Sequence[Acquisition], phases: Sequence[str] = PHASES,
                  phase_map: Optional[Dict[str, str]] = None) -> Dict[str, dict]:
    """Assign each acquisition a distinct phase; ``{key: {"phase", "confidence", "reasons", "cost", "costs"}}``.

    ``phase_map`` ({acquisition key or series number as text: phase}) fixes those acquisitions' phases. Confidences
    below :data:`MIN_CONFIDENCE` are returned as they are (the caller refuses them); conflicts raise.

    Raises
    ------
    InputError
        more acquisitions than phases, or no assignment consistent with the fixed phases and the time order.
    PhaseConflict
        a strong header against a clear image, times against clear images, or an acquisition given a phase its
        own image clearly rejects.
    """
    acquisitions = list(acquisitions)
    phase_map = dict(phase_map or {})
    fixed = {}
    for a in acquisitions:
        for key in (a.key, str(a.series_number)):
            if key in phase_map:
                fixed[a.key] = phase_map[key]
    if len(acquisitions) > len(phases):
        raise InputError(f"{len(acquisitions)} contrast acquisitions but only {len(phases)} phases "
                         f"({', '.join(phases)}); leave some out with --phase-map SERIES=skip")
    timed = all(a.time is not None for a in acquisitions) and len(acquisitions) > 1
    _check_tags(acquisitions, fixed)
    scored, untimed = [], []
    for perm in itertools.permutations(phases, len(acquisitions)):
        if any(fixed.get(a.key, p) != p for a, p in zip(acquisitions, perm)):
            continue
        untimed.append(_score(acquisitions, perm, fixed, False))
        if timed and not _in_time_order(acquisitions, perm):
            continue
        scored.append((_score(acquisitions, perm, fixed, timed), perm))
    if not scored:
        raise InputError("no phase assignment agrees with the acquisition times and --phase-map")
    scored.sort(key=lambda t: t[0])
    best_cost, best = scored[0]
    if timed and best_cost - min(untimed) >= CONFLICT_COST:
        raise PhaseConflict("the acquisition times (" + ", ".join(
            f"series {a.name} at {a.time:.0f} s" for a in sorted(acquisitions, key=lambda a: a.time))
            + f") force phases the images contradict ({_fmt_images(acquisitions)}); name the phases with "
            "--phase-map SERIES=PHASE")
    _check_own_image(acquisitions, best, fixed)
    nc = [a for a, p in zip(acquisitions, best) if p == "NC" and np.isfinite(a.liver_hu)]
    shift = float(np.clip(nc[0].liver_hu - LIVER_BASELINE_HU, -25.0, 25.0)) if nc else 0.0
    out = {}
    for i, (a, p) in enumerate(zip(acquisitions, best)):
        if a.key in fixed:
            out[a.key] = {"phase": p, "confidence": 1.0, "reasons": ["--phase-map"], "cost": 0.0, "costs": {}}
            continue
        others = [c for c, perm in scored[1:] if perm[i] != p]
        margin = (others[0] - best_cost) if others else float("inf")
        own = a.evidence_costs(shift if p != "NC" else 0.0)
        gap = own[p] - min(own.values())
        if gap > 0:  # the study moved it off its own best phase: as sure as the study's reason to, no more
            margin = min(margin, DUPLICATE_MARGIN - gap)
        confidence = 1.0 if not np.isfinite(margin) else float(max(0.0, 1.0 - np.exp(-margin / 2.0)))
        out[a.key] = {"phase": p, "confidence": round(confidence, 4), "reasons": _reasons(a, p, shift, timed),
                      "cost": round(float(own[p]), 4), "costs": {q: round(float(own[q]), 3) for q in PHASES}}
    return out


def _fmt_images(acquisitions) -> str:
    return "; ".join(f"series {a.name}: liver {a.liver_hu:.0f} HU, aorta {a.aorta_hu:.0f} HU" for a in acquisitions)


def _reasons(a: Acquisition, p: str, shift: float, timed: bool) -> List[str]:
    img = a.image_costs(shift)
    reasons = [f"image: liver {a.liver_hu:.0f} HU, aorta {a.aorta_hu:.0f} HU (closest to "
               f"{min(img, key=img.get)}: {_fmt(img)})"]
    if shift:
        reasons.append(f"liver ranges moved by {shift:+.0f} HU to the non-contrast liver of the study")
    reasons += list(a.notes)
    reasons += [f"{r} ({_fmt(c)})" for c, r in a.pattern_terms()]
    reasons += [f"{r} ({_fmt(c)})" for c, r, _ in a.tag_terms()]
    if timed:
        reasons.append(f"acquired {a.time:.0f} s after the first acquisition (time order enforced)")
    return reasons


def _check_tags(acquisitions: Sequence[Acquisition], fixed: dict) -> None:
    """A strong header naming phases the image clearly rejects: :class:`PhaseConflict`."""
    for a in acquisitions:
        if a.key in fixed:
            continue
        img = a.image_only()
        best = min(img, key=img.get)
        for costs, reason, strong in a.tag_terms():
            named = [p for p in PHASES if costs[p] == 0.0]
            if strong and named and min(img[p] for p in named) - img[best] >= CONFLICT_COST:
                raise PhaseConflict(f"series {a.name}: the evidence conflicts: {reason}, but the image says "
                                    f"{best} (liver {a.liver_hu:.0f} HU, aorta {a.aorta_hu:.0f} HU; {_fmt(img)}); "
                                    f"name its phase with --phase-map {a.name}=PHASE")


def _check_own_image(acquisitions: Sequence[Acquisition], best: Sequence[str], fixed: dict) -> None:
    """An acquisition the joint assignment gives a phase its own evidence clearly rejects: :class:`PhaseConflict`."""
    for a, p in zip(acquisitions, best):
        if a.key in fixed:
            continue
        own = a.evidence_costs()
        mine = min(own, key=own.get)
        if own[p] - own[mine] >= OWN_GAP_LIMIT:
            twins = [b.name for b, q in zip(acquisitions, best) if q == mine and b is not a]
            raise PhaseConflict(
                f"series {a.name} looks like {mine} (liver {a.liver_hu:.0f} HU, aorta {a.aorta_hu:.0f} HU; "
                f"{_fmt(own)})" + (f" as does series {', '.join(twins)}" if twins else "")
                + f", but the study has no place for it as {mine}; name the phases with --phase-map SERIES=PHASE "
                "or leave one out with SERIES=skip")


def parse_phase_map(items: Optional[Sequence[str]]) -> Dict[str, str]:
    """``["4=A", "1.2.3=V", "9=skip"]`` -> ``{"4": "A", "1.2.3": "V", "9": "skip"}`` (series number or
    SeriesInstanceUID = phase, or ``skip`` to leave that series out)."""
    out = {}
    for item in items or []:
        key, sep, phase = str(item).partition("=")
        phase = phase.strip()
        phase = SKIP if phase.lower() == SKIP else phase.upper()
        if not sep or not key.strip() or (phase not in PHASES and phase != SKIP):
            raise InputError(f"--phase-map {item!r}: use SERIES=PHASE with SERIES a series number or "
                             f"SeriesInstanceUID and PHASE one of {', '.join(PHASES)} or {SKIP}")
        out[key.strip()] = phase
    return out
