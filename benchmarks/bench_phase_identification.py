"""Time of ``identify_study`` (series selection, slice sampling, anatomy, phases) on a real study, against a baseline
implementation in the same run.

The baseline is another source tree of the package (e.g. ``git archive <commit> | tar -x -C /tmp/base``); each
implementation runs in its own process (the package cannot be imported twice), the two alternating ``--rounds``
times, each round timing ``--repeat`` calls after one warm-up call (imports, file cache). Prints the median wall and
CPU seconds per call of each and their ratios (CPU time is the steadier on a shared machine).

    git archive 05750ef | tar -x -C /tmp/base
    python benchmarks/bench_phase_identification.py --baseline-src /tmp/base \\
        --study ../shared/realdata/hcc009_3phase_dicom
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys

_CHILD = r"""
import json, sys, time
from nnunet_liver.dicom.index import index_studies
from nnunet_liver.dicom.study import identify_study
studies, _ = index_studies(sys.argv[1])
identify_study(studies[0])
times, cpu = [], []
for _ in range(int(sys.argv[2])):
    t, c = time.perf_counter(), time.process_time()
    found = identify_study(studies[0])
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
print(json.dumps({"times": times, "cpu": cpu, "phases": {str(a["series_number"]): a["phase"]
                                                         for a in found.record["acquisitions"]}}))
"""


def run(src: str, study: str, repeat: int) -> dict:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    out = subprocess.run([sys.executable, "-c", _CHILD, study, str(repeat)], env=env, capture_output=True, text=True,
                         check=True, cwd=os.path.abspath(src))
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
    ap.add_argument("--baseline-src", required=True, help="source tree of the baseline implementation")
    ap.add_argument("--src", default=here, help="source tree of the implementation measured (default: this one)")
    ap.add_argument("--study", default=os.path.join(here, "..", "shared", "realdata", "hcc009_3phase_dicom"))
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args(argv)
    times = {"baseline": [], "this": []}
    cpu = {"baseline": [], "this": []}
    for _ in range(args.rounds):
        for name, src in (("baseline", args.baseline_src), ("this", args.src)):
            got = run(src, os.path.abspath(args.study), args.repeat)
            times[name] += got["times"]
            cpu[name] += got["cpu"]
            print(f"{name}: wall {', '.join(f'{t:.2f}' for t in got['times'])} s, CPU "
                  f"{', '.join(f'{t:.2f}' for t in got['cpu'])} s; phases {got['phases']}", flush=True)
    for what, values in (("wall", times), ("CPU", cpu)):
        med = {k: statistics.median(v) for k, v in values.items()}
        print(f"median {what} s per identify_study: baseline {med['baseline']:.2f}, this {med['this']:.2f}, "
              f"ratio {med['this'] / med['baseline']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
