"""Contrast-phase identification: confusion matrix (true phase x called phase, with "refused") over phantom DICOM
studies and the real studies, through ``nnunet_liver.dicom.study.identify_study``.

Phantom studies: per seed, every non-empty subset of NC, A, V, D (four-phase, three-, two- and one-phase studies),
for each anatomy variant (the default phantom; organ detail; oral contrast; lipiodol; their combinations) and each
header variant ("none": no times, no contrast tags, descriptions that do not name the phase and one that misleads;
"times": acquisition times only; "all": times, contrast tags (agent, route, bolus start) and honest descriptions).
Real studies (from ``--realdata``, skipped when absent): HCC-TACE-Seg HCC_009 (its three series and every subset,
left out with ``--phase-map SERIES=skip``), HCC_048, HCC-TACE case 1720's A and D (written as DICOM with and without
acquisition times, and each alone), TotalSegmentator's example CT (written as DICOM).

    python benchmarks/phase_confusion.py --seeds 0 1 2 3 --json phase_confusion.json

Prints the confusion matrices, every wrong call with its confidence, and every refusal with its reason; exits 1
when a wrong phase passed the confidence threshold.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import shutil
import sys
import tempfile
import time
from collections import Counter, defaultdict

import numpy as np

from nnunet_liver.dicom.index import index_studies
from nnunet_liver.dicom.phase import MIN_CONFIDENCE
from nnunet_liver.dicom.study import identify_study
from nnunet_liver.labels import PHASES
from nnunet_liver.phantom import generate_case
from nnunet_liver.testing.dicom_study import HONEST_DESCRIPTIONS, SERIES, subset_study, write_study
from nnunet_liver.testing.dicom_writer import new_uid, write_ct_series
from nnunet_liver.utils.io import InputError

VARIANTS = {"default": {}, "organ detail": dict(organ_detail=True), "oral": dict(oral_contrast=True),
            "lipiodol": dict(lipiodol=True), "organ+oral+lipiodol": dict(organ_detail=True, oral_contrast=True,
                                                                          lipiodol=True)}
HEADERS = ("none", "times", "all")
CALLS = PHASES + ("refused",)
#: TotalSegmentator's example is stored as "V" but shows no contrast anywhere (aorta and liver about 45 HU, kidneys
#: unenhanced): its truth here is NC
REAL_TRUTH_NOTE = "totalseg_example: truth NC (the folder names it V; aorta ~42 HU, liver ~46 HU, kidneys unenhanced)"


def subsets():
    for k in range(len(PHASES), 0, -1):
        yield from itertools.combinations(PHASES, k)


def identify(folder, truth, phase_map=None):
    """[(true phase, called phase or "refused", confidence, refusal reason)] for the one study under ``folder``;
    ``truth`` maps series number (or UID) to phase."""
    (study,), _ = index_studies(folder)
    t = time.perf_counter()
    try:
        found = identify_study(study, phase_map)
    except InputError as e:
        msg = str(e)
        kept = [s for s in study.series.values() if (phase_map or {}).get(str(s.number)) != "skip"]
        return [(truth.get(str(s.number), truth.get(s.uid)), "refused", None, msg) for s in kept], \
            time.perf_counter() - t
    out = [(truth.get(str(a["series_number"]), truth.get(a["series_uid"])), a["phase"], a["confidence"], None)
           for a in found.record["acquisitions"]]
    return out, time.perf_counter() - t


def phantom_rows(seeds, shape, work):
    rows = []
    for seed in seeds:
        for vname, extra in VARIANTS.items():
            case = generate_case(seed, shape=shape, lesion_free=False, **extra)
            oral = bool(extra.get("oral_contrast"))
            for header in HEADERS:
                series = ({p: (n, HONEST_DESCRIPTIONS[p]) for p, (n, _) in SERIES.items()} if header == "all"
                          else SERIES)
                pool = os.path.join(work, f"s{seed}_{vname}_{header}".replace(" ", "_").replace("+", "_"))
                write_study(pool, case, times=header != "none", extras=False, series=series, tags=header == "all",
                            oral=oral)
                truth = {str(n): p for p, (n, _) in series.items()}
                for subset in subsets():
                    study = os.path.join(work, "study")
                    shutil.rmtree(study, ignore_errors=True)
                    subset_study(pool, study, [series[p][0] for p in subset])
                    calls, seconds = identify(study, truth)
                    for true, called, conf, why in calls:
                        rows.append(dict(group="phantom", seed=seed, variant=vname, header=header,
                                         subset="+".join(subset), true=true, called=called, confidence=conf,
                                         reason=why, seconds=seconds))
                shutil.rmtree(pool)
            print(f"seed {seed} {vname}: {len(rows)} calls so far", file=sys.stderr, flush=True)
    return rows


def _write_nifti_as_dicom(path, folder, study_uid, number, description, time_=None):
    import SimpleITK as sitk

    img = sitk.ReadImage(path)
    write_ct_series(folder, sitk.GetArrayFromImage(img).astype(np.float32), img.GetSpacing()[::-1],
                    img.GetOrigin(), study_uid, number, description, direction=img.GetDirection(),
                    acquisition_time=time_)


def real_rows(realdata, work):
    rows = []

    def add(name, folder, truth, phase_map=None):
        calls, seconds = identify(folder, truth, phase_map)
        rows.extend(dict(group="real", study=name, true=t, called=c, confidence=f, reason=r, seconds=seconds)
                    for t, c, f, r in calls)

    hcc009 = os.path.join(realdata, "hcc009_3phase_dicom")
    if os.path.isdir(hcc009):
        truth = {"2": "NC", "4": "A", "103": "V"}
        for k in (3, 2, 1):
            for keep in itertools.combinations(sorted(truth), k):
                skip = {n: "skip" for n in truth if n not in keep}
                add("HCC_009 " + "+".join(truth[n] for n in keep), hcc009, truth, skip)
    hcc048 = os.path.join(realdata, "hcc048_pv_dicom")
    if os.path.isdir(hcc048):
        add("HCC_048", hcc048, {"6": "V"})
    tace = os.path.join(realdata, "hcc_tace_1720")
    if os.path.isdir(tace):
        for timed in (False, True):
            root = os.path.join(work, f"tace1720_{timed}")
            uid = new_uid()
            for phase, number, t in (("A", 4, "093035"), ("D", 2, "093300")):
                _write_nifti_as_dicom(os.path.join(tace, f"{phase}.nii.gz"), os.path.join(root, phase), uid, number,
                                      "Abd/Pel", t if timed else None)
            add(f"1720 A+D{' (times)' if timed else ''}", root, {"4": "A", "2": "D"})
            if not timed:
                add("1720 A", root, {"4": "A", "2": "D"}, {"2": "skip"})
                add("1720 D", root, {"4": "A", "2": "D"}, {"4": "skip"})
    totalseg = os.path.join(realdata, "totalseg_example")
    if os.path.isdir(totalseg):
        root = os.path.join(work, "totalseg")
        _write_nifti_as_dicom(os.path.join(totalseg, "V.nii.gz"), root, new_uid(), 3, "Abdomen")
        add("TotalSegmentator example", root, {"3": "NC"})
    return rows


def matrix(rows):
    m = {t: Counter() for t in PHASES}
    for r in rows:
        m[r["true"]][r["called"]] += 1
    return m


def print_matrix(title, rows):
    m = matrix(rows)
    print(f"\n{title} ({len(rows)} acquisitions)")
    print("true \\ called | " + " | ".join(f"{c:>7s}" for c in CALLS))
    for t in PHASES:
        print(f"{t:>13s} | " + " | ".join(f"{m[t][c]:7d}" for c in CALLS))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3])
    ap.add_argument("--shape", type=int, nargs=3, default=(24, 96, 96))
    ap.add_argument("--realdata", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..",
                                                       "shared", "realdata"))
    ap.add_argument("--no-phantoms", action="store_true")
    ap.add_argument("--json", help="write every call here")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="phase_confusion_") as work:
        rows = [] if args.no_phantoms else phantom_rows(args.seeds, tuple(args.shape), work)
        real = real_rows(args.realdata, work) if os.path.isdir(args.realdata) else []
    phantom = [r for r in rows if r["group"] == "phantom"]
    if phantom:
        print_matrix(f"Phantoms, seeds {args.seeds}, all variants and headers", phantom)
        for header in HEADERS:
            print_matrix(f"Phantoms, headers '{header}'", [r for r in phantom if r["header"] == header])
        for vname in VARIANTS:
            sub = [r for r in phantom if r["variant"] == vname]
            wrong = sum(r["called"] not in ("refused", r["true"]) for r in sub)
            refused = sum(r["called"] == "refused" for r in sub)
            print(f"variant {vname:>20s}: {len(sub)} acquisitions, {refused} refused, {wrong} wrong")
        by_k = defaultdict(list)
        for r in phantom:
            by_k[len(r["subset"].split("+"))].append(r)
        for k in sorted(by_k, reverse=True):
            sub = by_k[k]
            print(f"{k}-phase studies: {len(sub)} acquisitions, {sum(r['called'] == 'refused' for r in sub)} refused, "
                  f"{sum(r['called'] not in ('refused', r['true']) for r in sub)} wrong")
    if real:
        print_matrix("Real studies", real)
        for r in real:
            print(f"  {r['study']:>24s}: {r['true']} -> {r['called']}"
                  + (f" ({r['confidence']:.2f})" if r["confidence"] is not None else f": {r['reason'][:200]}"))
        print("  " + REAL_TRUTH_NOTE)
    every = phantom + real
    wrong = [r for r in every if r["called"] not in ("refused", r["true"])]
    print(f"\nwrong calls: {len(wrong)}; confidences: "
          + (", ".join(f"{r['confidence']:.2f}" for r in sorted(wrong, key=lambda r: -r["confidence"])) or "none"))
    for r in wrong:
        print("  wrong:", {k: r.get(k) for k in ("study", "seed", "variant", "header", "subset", "true", "called",
                                                  "confidence")})
    refusals = Counter()
    for r in every:
        if r["called"] == "refused":
            refusals[(r.get("variant", r.get("study")), r.get("header"), r.get("subset"), r["reason"][:160])] += 1
    print(f"refusals: {sum(refusals.values())} acquisitions in {len(refusals)} studies")
    for (v, h, s, why), n in sorted(refusals.items(), key=lambda t: str(t[0])):
        print(f"  {v} / {h} / {s}: {why}")
    seconds = [r["seconds"] for r in every]
    print(f"identify_study: {np.mean(seconds):.2f} s per study on average ({len(set(map(id, every)))} calls)")
    above = [r for r in wrong if r["confidence"] >= MIN_CONFIDENCE]
    print(f"wrong calls above the threshold {MIN_CONFIDENCE}: {len(above)}")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(every, f, indent=1)
    return 1 if above else 0


if __name__ == "__main__":
    sys.exit(main())
