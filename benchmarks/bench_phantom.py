"""Phantom generation speed: cases per second at 64 x 256 x 256 with 4 phases, and a ratio to a baseline.

    python benchmarks/bench_phantom.py               # 64 x 256 x 256, 4 phases, 5 cases
    python benchmarks/bench_phantom.py --cases 2 --shape 32 128 128

Prints:
  1. generate_case: cases/s (in memory), and the ratio of its time per case to a baseline run in the same
     process: per phase, drawing the image noise and one 3D Gaussian filter of the volume (the work no phantom can
     skip). Target: ratio <= 6 (lesions are painted on their bounding boxes, never the full volume per lesion).
  2. write_phantom_dataset: cases/s including the int16 NIfTI writing (gzip), one process.
Times are the best of ``--repeats`` runs on one thread (OMP_NUM_THREADS=1 recommended).
"""
from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
from scipy import ndimage


def best(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--shape", type=int, nargs=3, default=(64, 256, 256))
    p.add_argument("--cases", type=int, default=5)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    from nnunet_liver.phantom import generate_case, write_phantom_dataset

    shape = tuple(args.shape)
    generate_case(0, shape=(16, 64, 64))  # warm-up (imports)

    def phantoms():
        for s in range(args.cases):
            generate_case(s, shape=shape)

    def baseline():
        rng = np.random.default_rng(0)
        for _ in range(args.cases):
            for _phase in range(4):
                img = rng.standard_normal(shape, dtype=np.float32)
                ndimage.gaussian_filter(img, (0.42, 0.7, 0.7), truncate=3.0)

    t_ph, t_base = best(phantoms, args.repeats), best(baseline, args.repeats)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        write_phantom_dataset(f"{tmp}/Dataset999_Bench", args.cases, seed=0, shape=shape, progress=False)
        t_write = time.perf_counter() - t0
    lesions = sum(len(generate_case(s, shape=shape).lesions) for s in range(args.cases))
    print(f"shape {shape}, 4 phases, {args.cases} cases ({lesions} lesions)")
    print(f"generate_case:         {args.cases / t_ph:6.2f} cases/s  ({t_ph / args.cases:.3f} s/case)")
    print(f"baseline noise+filter: {args.cases / t_base:6.2f} cases/s  -> ratio {t_ph / t_base:.2f} (target <= 6)")
    print(f"write_phantom_dataset: {args.cases / t_write:6.2f} cases/s  (int16 NIfTI, gzip, 1 process)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
