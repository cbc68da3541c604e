"""Clinical-size CT: the cascade vs plain nnU-Net prediction, seconds and peak resident memory, each in a fresh process.

    python benchmarks/bench_detect_clinical.py --work /tmp/clin [--slices 119 357 600] [--methods plain cascade]
                                               [--model demo] [-f 0] [--json results.json]

The cases are real CT: the portal-venous study of ``--dicom`` (512 x 512 axial DICOM slices; by default the
HCC-TACE-Seg case in ``../shared/realdata/hcc048_pv_dicom``) is read once with SimpleITK's ``ImageSeriesReader``,
resampled along z to ``--z-spacing`` mm (linear) and stacked with its mirror image along z until it has the requested
number of slices (a continuous, longer abdomen-to-pelvis-like volume). Each phase channel of a case links to the
same image, so both methods read identical inputs. ``--native`` adds the study at its own slice spacing (89 slices of
2.5 mm: nnU-Net's separate-z resampling) as a further case.

For every case and method one fresh process runs under ``/usr/bin/time -v`` (wall seconds, peak RSS of the process
and its children):

* plain: ``nnUNetv2_predict_from_modelfolder -m MODEL -f FOLDS -npp 1 -nps 1 -device cpu`` -- nnU-Net's own
  prediction with segmentation export;
* cascade: ``nnunet-liver-detect -m MODEL -f FOLDS --device cpu`` -- every sensitivity factor, seg2det, patient
  results, CASE.json, lesion map, summary.csv and report.html.

Targets: cascade / plain <= 1.0 in peak RSS and <= 1.15 in time; the 600-slice case
under 12 GB. ``--methods cascade`` measures the cascade alone (for the sizes where the plain prediction would not fit
the machine). Run it under the shared lock (``flock /tmp/heavy.lock python benchmarks/bench_detect_clinical.py ...``).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys


def _read_dicom(folder: str):
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    files = reader.GetGDCMSeriesFileNames(folder)
    if not files:
        raise SystemExit(f"{folder}: no DICOM series")
    reader.SetFileNames(files)
    return reader.Execute()


def make_case(image, slices: int, z_spacing: float, folder: str, channels: int) -> str:
    """Write one case of ``slices`` axial slices (``CASE_0000`` .. links) into ``folder``; returns the folder."""
    import numpy as np
    import SimpleITK as sitk

    os.makedirs(folder, exist_ok=True)
    if z_spacing > 0:
        sx, sy, sz = image.GetSpacing()
        nx, ny, nz = image.GetSize()
        new_nz = int(round(nz * sz / z_spacing))
        ref = sitk.Image(nx, ny, new_nz, image.GetPixelID())
        ref.SetSpacing((sx, sy, z_spacing))
        ref.SetOrigin(image.GetOrigin())
        ref.SetDirection(image.GetDirection())
        image = sitk.Resample(image, ref, sitk.Transform(), sitk.sitkLinear, -1024.0)
    arr = sitk.GetArrayFromImage(image).astype(np.int16)
    arr = np.maximum(arr, -1024)  # the scanner's padding (-2000) outside the field of view is air
    if slices > 0:
        reps = [arr if k % 2 == 0 else arr[::-1] for k in range(-(-slices // arr.shape[0]))]
        arr = np.concatenate(reps, axis=0)[:slices]
    out = sitk.GetImageFromArray(arr)
    out.SetSpacing(image.GetSpacing())
    out.SetOrigin(image.GetOrigin())
    out.SetDirection(image.GetDirection())
    first = os.path.join(folder, "CASE_0000.nii.gz")
    sitk.WriteImage(out, first)
    for c in range(1, channels):
        link = os.path.join(folder, f"CASE_{c:04d}.nii.gz")
        if not os.path.exists(link):
            os.symlink("CASE_0000.nii.gz", link)
    return folder


def _time_v(cmd, env, log: str) -> dict:
    full = ["/usr/bin/time", "-v"] + cmd
    with open(log, "w", encoding="utf-8") as f:
        proc = subprocess.run(full, env=env, stdout=f, stderr=subprocess.STDOUT)
    with open(log, encoding="utf-8") as f:
        text = f.read()
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    wall = re.search(r"Elapsed \(wall clock\) time \(h:mm:ss or m:ss\): ([\d:.]+)", text)
    seconds = None
    if wall:
        parts = [float(p) for p in wall.group(1).split(":")]
        seconds = sum(p * 60 ** i for i, p in enumerate(reversed(parts)))
    return {"returncode": proc.returncode, "seconds": seconds,
            "peak_rss_gb": None if rss is None else round(int(rss.group(1)) / 2 ** 20, 3), "log": log}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    here = os.path.dirname(os.path.abspath(__file__))
    p.add_argument("--work", required=True, help="work folder (cases, outputs, logs; kept)")
    p.add_argument("--dicom", default=os.path.join(here, "..", "..", "shared", "realdata", "hcc048_pv_dicom"),
                   help="the portal-venous DICOM series (default: ../shared/realdata/hcc048_pv_dicom beside the repository)")
    p.add_argument("--slices", type=int, nargs="*", default=[119, 357, 600])
    p.add_argument("--z-spacing", type=float, default=1.0, help="slice spacing of the stacked cases (mm)")
    p.add_argument("--native", action="store_true", help="also the study at its own slice spacing")
    p.add_argument("--methods", nargs="+", default=["plain", "cascade"], choices=["plain", "cascade"])
    p.add_argument("--model", default="demo", help="UNet-whole folder, or demo")
    p.add_argument("-f", nargs="+", default=["0"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import nnunet_liver
    from nnunet_liver.inference.model import resolve_model_dir

    model = resolve_model_dir(args.model, "whole")
    with open(os.path.join(model, "dataset.json"), encoding="utf-8") as f:
        channels = len(json.load(f)["channel_names"])
    os.makedirs(args.work, exist_ok=True)
    image = _read_dicom(args.dicom)
    cases = [(f"{n}_slices", n, args.z_spacing) for n in args.slices]
    if args.native:
        cases.append(("native", 0, 0.0))
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), nnUNet_compile="f",
               nnUNet_extTrainer=nnunet_liver.TRAINERS_DIR, nnUNet_def_n_proc="1")
    bindir = os.path.dirname(sys.executable)
    results = []
    for name, n, zsp in cases:
        case_dir = make_case(image, n, zsp, os.path.join(args.work, name, "in"), channels)
        row = {"case": name, "shape_zyx": None}
        import SimpleITK as sitk

        img = sitk.ReadImage(os.path.join(case_dir, "CASE_0000.nii.gz"))
        row["shape_zyx"] = list(reversed(img.GetSize()))
        row["spacing_zyx_mm"] = [round(s, 3) for s in reversed(img.GetSpacing())]
        del img
        for method in args.methods:
            out = os.path.join(args.work, name, f"out_{method}")
            shutil.rmtree(out, ignore_errors=True)
            if method == "plain":
                cmd = [os.path.join(bindir, "nnUNetv2_predict_from_modelfolder"), "-i", case_dir, "-o", out,
                       "-m", model, "-f", *args.f, "-npp", "1", "-nps", "1", "-device", "cpu"]
            else:
                cmd = [os.path.join(bindir, "nnunet-liver-detect"), "-i", case_dir, "-o", out, "-m", args.model,
                       "-f", *args.f, "--device", "cpu"]
            r = _time_v(cmd, env, os.path.join(args.work, name, f"{method}.log"))
            row[method] = r
            print(json.dumps({"case": name, "method": method, **r}), flush=True)
        if "plain" in row and "cascade" in row and row["plain"]["seconds"] and row["plain"]["peak_rss_gb"]:
            row["time_ratio"] = round(row["cascade"]["seconds"] / row["plain"]["seconds"], 3)
            row["rss_ratio"] = round(row["cascade"]["peak_rss_gb"] / row["plain"]["peak_rss_gb"], 3)
        results.append(row)
    summary = {"model": args.model, "folds": args.f, "threads": args.threads, "cases": results,
               "targets": {"rss_ratio": 1.0, "time_ratio": 1.15, "600_slices_peak_rss_gb": 12}}
    write_summary(summary, args.json)
    return 0


def write_summary(summary: dict, path=None) -> None:
    """Print a benchmark's summary as JSON and write it to ``path`` (if given)."""
    print(json.dumps(summary, indent=2))
    if path:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(summary, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
