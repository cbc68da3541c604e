"""Load on the DICOM node: N studies sent at once by a real Orthanc; no study lost, the time from each study's last
instance to its results stored in Orthanc, and the node's peak memory, against ``run_folder`` on the same studies
(the offline DICOM path, one process, model loaded once) measured in the same run.

    python benchmarks/bench_node.py [--studies 8] [--model DIR|demo] [--stable-age 2] [--work DIR] [--json FILE]

It runs itself in a private network namespace (Orthanc listens on every interface) with the Orthanc that .ci/run
unpacks. Studies: phantoms of 24 x 96 x 96 per phase with two painted lesions, four phases, a 10 mm reconstruction,
scouts and a dose report (about 110 CT instances each); the default model is the test rule model
(``nnunet_liver.testing.node``), whose network costs almost nothing, so the figures show the node's own costs
(receiving, queueing, DICOM reading, SEG/SR writing, sending); ``--model demo`` runs the bundled demo models.

Figures: per study, latency = results stored in Orthanc (the node's C-STORE of SEG and SR answered) minus the
study's last instance received, split into the stable wait, the queue wait, detection and delivery; makespan = the
last study's results minus the moment the N sends started; node peak RSS (VmHWM). Ratios: (makespan - stable_age) /
the baseline's detection time for the N studies, and node peak RSS / baseline peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import threading
import time


def _baseline(args) -> None:
    """Worker: load the detector, run run_folder on the studies (timed), print seconds and peak RSS as JSON."""
    from nnunet_liver.inference import LiverDetector
    from nnunet_liver.inference.runner import run_folder

    detector = LiverDetector(args.model, patch_model_dir=_patch(args.model), device="cpu", use_mirroring=False)
    t0 = time.time()
    result = run_folder(detector, args.studies_dir, args.out, report=False, progress=False)
    print(json.dumps({"seconds": time.time() - t0, "done": len(result.done), "failed": result.failed,
                      "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}))


def _patch(model: str):
    return "demo" if model == "demo" else None


def _vm_hwm_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="utf-8") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def run(args) -> dict:
    from nnunet_liver.testing.node import NodeProcess, node_settings, write_node_model, write_node_study
    from nnunet_liver.testing.orthanc import Orthanc, find_orthanc

    work = os.path.abspath(args.work)
    os.makedirs(work, exist_ok=True)
    model = args.model or write_node_model(os.path.join(work, "model"))
    studies_dir = os.path.join(work, "studies")
    studies = [write_node_study(os.path.join(studies_dir, f"s{k}"), seed=k) for k in range(args.studies)]
    print(f"{args.studies} studies written", file=sys.stderr)

    base = subprocess.run([sys.executable, __file__, "--worker", "--model", model, "--studies-dir", studies_dir,
                           "--out", os.path.join(work, "baseline_out")], capture_output=True, text=True)
    if base.returncode != 0:
        raise RuntimeError(f"baseline failed: {base.stderr[-3000:]}")
    baseline = json.loads(base.stdout.strip().splitlines()[-1])
    print(f"baseline: {baseline['seconds']:.1f} s, peak RSS {baseline['peak_rss_mb']:.0f} MB", file=sys.stderr)

    install = find_orthanc()
    if args.no_tcp_nodelay:  # DCMTK's default: each instance waits for the node's delayed acknowledgement
        install.env.pop("TCP_NODELAY", None)
    orthanc = Orthanc(install, os.path.join(work, "orthanc"), modalities={"NODE": ("NNLIVER", "127.0.0.1", 11112)}
                      ).start()
    settings = node_settings(os.path.join(work, "node"), model, 11112,
                             {"ae_title": "ORTHANC", "host": "127.0.0.1", "port": 4242},
                             [{"ae_title": "ORTHANC", "host": "127.0.0.1"}], stable_age=args.stable_age,
                             patch_model=_patch(model) or "none")
    node = NodeProcess(settings, os.path.join(work, "node", "node.log")).start()
    try:
        for s, k in zip(studies, range(args.studies)):
            orthanc.upload_folder(os.path.join(studies_dir, f"s{k}"))
        sends, errors = {}, []

        def send(uid):
            t = time.time()
            try:
                orthanc.send_study("NODE", uid)
            except Exception as e:  # noqa: BLE001 - recorded: a failed send is a lost study
                errors.append(f"{uid}: {e}")
            sends[uid] = (t, time.time())

        t_start = time.time()
        threads = [threading.Thread(target=send, args=(s["study_uid"],)) for s in studies]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        uids = {s["study_uid"] for s in studies}
        records = node.wait_for(lambda r: sum(1 for x in r.values() if x["study_uid"] in uids
                                              and x["state"] in ("sent", "failed")) == len(uids),
                                "every study sent", timeout=3600)
        peak = _vm_hwm_mb(node.proc.pid)
        recs = [r for r in records.values() if r["study_uid"] in uids]
        lost = [r["case_id"] for r in recs if r["state"] != "sent"]
        in_orthanc = sum(1 for s in studies if len(orthanc.instances(s["study_uid"], "SEG")) == 1)
    finally:
        node.terminate()
        orthanc.stop()
    latency = [r["sent"] - r["last_received"] for r in recs]
    parts = {"stable_and_queue_wait": [r["started"] - r["last_received"] for r in recs],
             "detection": [r["finished"] - r["started"] for r in recs],
             "delivery": [r["sent"] - r["finished"] for r in recs]}
    makespan = max(r["sent"] for r in recs) - t_start
    out = {"studies": args.studies, "instances_per_study": statistics.mean(r["instances"] for r in recs),
           "model": "rule" if not args.model else args.model, "stable_age_s": args.stable_age,
           "orthanc_tcp_nodelay": not args.no_tcp_nodelay,
           "send_errors": errors, "lost": lost, "results_in_orthanc": in_orthanc,
           "send_seconds": [round(b - a, 2) for a, b in sends.values()],
           "latency_s": {"min": min(latency), "median": statistics.median(latency), "max": max(latency)},
           "parts_median_s": {k: statistics.median(v) for k, v in parts.items()},
           "makespan_s": makespan, "node_peak_rss_mb": peak,
           "baseline_s": baseline["seconds"], "baseline_peak_rss_mb": baseline["peak_rss_mb"],
           "ratio_time": (makespan - args.stable_age) / baseline["seconds"],
           "ratio_rss": peak / baseline["peak_rss_mb"]}
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", type=int, default=8)
    p.add_argument("--model", default=None, help="a UNet-whole folder or 'demo' (default: the test rule model)")
    p.add_argument("--stable-age", type=float, default=2.0)
    p.add_argument("--work", default="/tmp/bench_node")
    p.add_argument("--json", default=None)
    p.add_argument("--no-tcp-nodelay", action="store_true", help="run Orthanc without TCP_NODELAY=1 (DCMTK's default)")
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--studies-dir", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        _baseline(args)
        return 0
    from nnunet_liver.testing.netns import inside_netns, netns_argv, netns_problem
    from nnunet_liver.testing.orthanc import orthanc_problem

    if not inside_netns():
        problem = netns_problem() or orthanc_problem()
        if problem:
            print(f"bench_node: {problem}", file=sys.stderr)
            return 1
        return subprocess.run(netns_argv([sys.executable, os.path.abspath(__file__), *(argv or sys.argv[1:])])
                              ).returncode
    out = run(args)
    text = json.dumps(out, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0 if not out["lost"] and not out["send_errors"] and out["results_in_orthanc"] == args.studies else 1


if __name__ == "__main__":
    sys.exit(main())
