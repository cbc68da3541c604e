"""Seconds per case and peak memory: the full detection cascade vs plain nnU-Net prediction, same model and folds.

    python benchmarks/bench_detect.py [--model DIR] [--patch-model DIR] [-f 0] [--cases 4] [--shape 64 256 256]
                                      [--device cpu|cuda] [--json results.json]

Phantom cases (``nnunet_liver.phantom``) are predicted twice, each in a fresh worker process so that peak memory
(resident set, and CUDA allocator peak on a GPU) belongs to one method only:

* plain: ``nnUNetPredictor.initialize_from_trained_model_folder`` + ``predict_from_files_sequential`` -- what
  ``nnUNetv2_predict`` does per case (without its worker processes, so both methods run in one process);
* cascade: ``nnunet_liver.inference.LiverDetector`` + ``run_folder`` -- probabilities, every sensitivity factor,
  seg2det, reclassification (with ``--patch-model``), patient results, JSON, lesion map, summary.csv, report.html.

Each worker first predicts one warm-up case (not timed). The ratio cascade / plain is the figure of merit
(target <= 1.5). Without ``--model`` the benchmark writes a rule model (``nnunet_liver.testing.rule_model``:
nearest class mean HU, learned from the phantoms' label maps) whose network costs almost nothing, so the ratio is
then an upper bound of the cascade's overhead; pass a trained UNet-whole to measure a realistic ratio.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _gpu_peak_mb(device: str):
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2 ** 20
    return None


def worker(args) -> dict:
    import torch

    torch.set_num_threads(max(1, args.threads))
    cases = sorted({f[:-12] for f in os.listdir(args.cases_dir) if f.endswith(".nii.gz")})
    warm_dir = os.path.join(args.work, f"warm_{args.worker}")
    os.makedirs(warm_dir, exist_ok=True)
    for f in os.listdir(args.cases_dir):
        if f.startswith(cases[0] + "_"):
            shutil.copy(os.path.join(args.cases_dir, f), warm_dir)
    out = os.path.join(args.work, f"out_{args.worker}")
    folds = [int(f) if f != "all" else f for f in args.f]
    if args.worker == "plain":
        from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

        predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                    perform_everything_on_device=args.device.startswith("cuda"),
                                    device=torch.device(args.device), verbose=False, allow_tqdm=False)
        predictor.initialize_from_trained_model_folder(args.model, folds, args.chk)

        def run(src, dst):
            os.makedirs(dst, exist_ok=True)  # nnU-Net's sequential path expects it
            predictor.predict_from_files_sequential(src, dst, save_probabilities=False, overwrite=True)
    else:
        from nnunet_liver.inference import LiverDetector, run_folder

        detector = LiverDetector(args.model, folds=folds, checkpoint=args.chk, patch_model_dir=args.patch_model,
                                 device=args.device)

        def run(src, dst):
            result = run_folder(detector, src, dst, overwrite=True, progress=False)
            if not result.ok:
                raise RuntimeError(f"cascade failed: {result.failed}")
    run(warm_dir, os.path.join(args.work, f"warm_out_{args.worker}"))
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    run(args.cases_dir, out)
    if args.device.startswith("cuda"):
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    return {"worker": args.worker, "seconds_per_case": seconds / len(cases), "cases": len(cases),
            "peak_rss_mb": _peak_rss_mb(), "peak_gpu_mb": _gpu_peak_mb(args.device)}


def make_rule_model(dataset_dir: str, folder: str, folds) -> str:
    """A rule UNet-whole: each class's centre = mean HU (over phases) of its voxels in the phantoms' label maps."""
    import numpy as np
    import SimpleITK as sitk

    from nnunet_liver.testing.rule_model import write_rule_model
    from nnunet_liver.labels import NUM_CLASSES, dataset_json_labels

    sums, sq, counts = np.zeros(NUM_CLASSES), np.zeros(NUM_CLASSES), np.zeros(NUM_CLASSES)
    spacing = None
    for name in sorted(os.listdir(os.path.join(dataset_dir, "labelsTr"))):
        case = name[:-7]
        lab_img = sitk.ReadImage(os.path.join(dataset_dir, "labelsTr", name))
        spacing = tuple(reversed(lab_img.GetSpacing()))
        lab = sitk.GetArrayFromImage(lab_img)
        img = np.mean([sitk.GetArrayFromImage(sitk.ReadImage(os.path.join(dataset_dir, "imagesTr",
                                                                          f"{case}_{c:04d}.nii.gz")))
                       for c in range(4)], axis=0)
        for k in range(NUM_CLASSES):
            v = img[lab == k]
            sums[k], sq[k], counts[k] = sums[k] + v.sum(), sq[k] + (v.astype(np.float64) ** 2).sum(), \
                counts[k] + v.size
    counts = np.maximum(counts, 1)
    centers = sums / counts
    widths = np.maximum(np.sqrt(np.maximum(sq / counts - centers ** 2, 0)), 10.0)
    return write_rule_model(folder, dataset_json_labels(), centers.tolist(), widths.tolist(), folds=folds,
                            spacing=spacing, patch_size=(32, 128, 128))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="UNet-whole folder (default: a rule model from the phantoms)")
    p.add_argument("--patch-model", default=None, help="UNet-patch folder (reclassification in the cascade)")
    p.add_argument("-f", nargs="+", default=["0"], help="folds")
    p.add_argument("-chk", default="checkpoint_final.pth")
    p.add_argument("--cases", type=int, default=4)
    p.add_argument("--shape", type=int, nargs=3, default=[48, 192, 192], help="phantom shape (Z, Y, X)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    p.add_argument("--json", default=None, help="write the results here")
    p.add_argument("--work", default=None, help="work folder (default: a temporary one, removed)")
    p.add_argument("--worker", choices=["plain", "cascade"], help=argparse.SUPPRESS)
    p.add_argument("--cases-dir", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(args)))
        return 0

    work = args.work or tempfile.mkdtemp(prefix="bench_detect_")
    try:
        from nnunet_liver.phantom import write_phantom_dataset

        dataset = str(write_phantom_dataset(os.path.join(work, "Dataset999_Bench"), args.cases + 1, seed=123,
                                            shape=tuple(args.shape), progress=False))
        from nnunet_liver.inference.model import resolve_model_dir

        model = resolve_model_dir(args.model, "whole") if args.model else \
            make_rule_model(dataset, os.path.join(work, "rule_model"), [int(f) for f in args.f])
        if args.patch_model:
            args.patch_model = resolve_model_dir(args.patch_model, "patch")
        cases_dir = os.path.join(dataset, "imagesTr")
        env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), nnUNet_compile="f")
        import nnunet_liver

        env["nnUNet_extTrainer"] = nnunet_liver.TRAINERS_DIR  # plain nnU-Net must find our trainers
        results = {}
        for which in ("plain", "cascade"):
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", which, "--cases-dir", cases_dir,
                   "--work", work, "--model", model, "-f", *args.f, "-chk", args.chk, "--device", args.device,
                   "--threads", str(args.threads)]
            if args.patch_model:
                cmd += ["--patch-model", args.patch_model]
            proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
            line = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                raise SystemExit(f"{which} worker failed")
            results[which] = json.loads(line[-1][7:])
        summary = {"device": args.device, "cases": results["plain"]["cases"], "shape_zyx": args.shape,
                   "model": "rule model (network ~free: upper bound of the overhead)" if args.model is None
                   else os.path.abspath(model), "folds": args.f, "reclassification": bool(args.patch_model),
                   "plain_s_per_case": round(results["plain"]["seconds_per_case"], 3),
                   "cascade_s_per_case": round(results["cascade"]["seconds_per_case"], 3),
                   "ratio": round(results["cascade"]["seconds_per_case"] / results["plain"]["seconds_per_case"], 3),
                   "target_ratio": 1.5,
                   "plain_peak_rss_mb": round(results["plain"]["peak_rss_mb"], 1),
                   "cascade_peak_rss_mb": round(results["cascade"]["peak_rss_mb"], 1),
                   "plain_peak_gpu_mb": results["plain"]["peak_gpu_mb"],
                   "cascade_peak_gpu_mb": results["cascade"]["peak_gpu_mb"]}
        print(json.dumps(summary, indent=2))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(summary, f, indent=2)
        return 0
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
