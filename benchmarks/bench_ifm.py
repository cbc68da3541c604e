"""Cost of the IFM: one training step (forward + backward + SGD step) of the IFM network / the plain nnU-Net network
of the same plan, in the same process; and the peak GPU memory ratio when CUDA is present.

Target: time ratio <= 1.3.

    python benchmarks/bench_ifm.py                       # CPU default: 4 phases, 32x96x96 patch, batch 2
    python benchmarks/bench_ifm.py --patch 64 160 160    # a typical 3d_fullres abdominal CT plan (GPU)

The plan is nnU-Net's default PlainConvUNet for 5 mm x 0.8 mm CT (features 32..320, strides (1,1,1), (1,2,2),
(2,2,2), ...); with ``--resenc`` nnU-Net's ResEnc (M-like) U-Net.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from nnunetv2.utilities.get_network_from_plans import get_network_from_plans

from nnunet_liver.trainers.liver_networks import insert_ifm

REQ = ["conv_op", "norm_op", "dropout_op", "nonlin"]


def plan_kwargs(n_stages: int, resenc: bool) -> dict:
    strides = [[1, 1, 1], [1, 2, 2], [2, 2, 2], [2, 2, 2], [1, 2, 2], [1, 2, 2]][:n_stages]
    kw = dict(n_stages=n_stages, features_per_stage=[min(32 * 2 ** i, 320) for i in range(n_stages)],
              conv_op="torch.nn.modules.conv.Conv3d",
              kernel_sizes=[[1, 3, 3]] + [[3, 3, 3]] * (n_stages - 1), strides=strides,
              n_conv_per_stage_decoder=[2] * (n_stages - 1), conv_bias=True,
              norm_op="torch.nn.modules.instancenorm.InstanceNorm3d", norm_op_kwargs={"eps": 1e-5, "affine": True},
              dropout_op=None, dropout_op_kwargs=None, nonlin="torch.nn.LeakyReLU", nonlin_kwargs={"inplace": True})
    if resenc:
        kw["n_blocks_per_stage"] = [1, 3, 4, 6, 6, 6][:n_stages]
        kw["n_conv_per_stage_decoder"] = [1] * (n_stages - 1)
    else:
        kw["n_conv_per_stage"] = [2] * n_stages
    return kw


def build(ifm: bool, phases: int, n_stages: int, resenc: bool, device):
    arch = ("dynamic_network_architectures.architectures.unet.ResidualEncoderUNet" if resenc
            else "dynamic_network_architectures.architectures.unet.PlainConvUNet")
    torch.manual_seed(0)
    net = get_network_from_plans(arch, plan_kwargs(n_stages, resenc), REQ, phases, 14, deep_supervision=True)
    if ifm:
        insert_ifm(net, phases)
    return net.to(device)


def step(net, opt, x, y):
    opt.zero_grad(set_to_none=True)
    outs = net(x)
    loss = sum(torch.nn.functional.cross_entropy(o, torch.nn.functional.interpolate(
        y[:, None].float(), size=o.shape[2:], mode="nearest")[:, 0].long()) for o in outs)
    loss.backward()
    opt.step()


def timed_steps(net, opt, x, y, repeats: int, device) -> list:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step(net, opt, x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--patch", type=int, nargs=3, default=(32, 96, 96), help="patch z y x (default: 32 96 96)")
    p.add_argument("--batch", type=int, default=2, help="batch size (default: 2)")
    p.add_argument("--phases", type=int, default=4, help="input phases (default: 4)")
    p.add_argument("--stages", type=int, default=5, help="U-Net stages (default: 5)")
    p.add_argument("--repeats", type=int, default=2, help="timed steps per network and round (default: 2)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default: 3)")
    p.add_argument("--resenc", action="store_true", help="nnU-Net's residual-encoder U-Net instead of PlainConvUNet")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1)")
    p.add_argument("--all-present", action="store_true",
                   help="every sample has every phase (default: sample 0 misses its last phase, as with dropout)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    x = torch.randn((a.batch, a.phases, *a.patch), generator=g).to(device)
    if not a.all_present:
        x[0, -1] = 0.0  # one sample without its last phase, as in training with phase dropout
    y = torch.randint(0, 14, (a.batch, *a.patch), generator=g).to(device)
    nets = {name: build(name == "ifm", a.phases, a.stages, a.resenc, device) for name in ("plain", "ifm")}
    opts = {k: torch.optim.SGD(n.parameters(), lr=1e-3, momentum=0.99, nesterov=True) for k, n in nets.items()}
    times = {k: [] for k in nets}
    peak = {}
    for k in nets:  # warm-up, and peak memory of one step
        step(nets[k], opts[k], x, y)
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            step(nets[k], opts[k], x, y)
            torch.cuda.synchronize()
            peak[k] = torch.cuda.max_memory_allocated()
    for _ in range(a.rounds):  # interleaved rounds; the minimum is robust to other processes' load
        for k in nets:
            times[k] += timed_steps(nets[k], opts[k], x, y, a.repeats, device)
    results = {k: {"min_s": min(v), "median_s": statistics.median(v), "peak_bytes": peak.get(k)}
               for k, v in times.items()}
    n_plain = sum(q.numel() for q in build(False, a.phases, a.stages, a.resenc, "cpu").parameters())
    n_ifm = sum(q.numel() for q in build(True, a.phases, a.stages, a.resenc, "cpu").parameters())
    ratio = results["ifm"]["min_s"] / results["plain"]["min_s"]
    print(f"device={device} arch={'ResEnc' if a.resenc else 'PlainConvUNet'} patch={tuple(a.patch)} "
          f"batch={a.batch} phases={a.phases} stages={a.stages} threads={a.threads} "
          f"{'all phases present' if a.all_present else 'sample 0 without its last phase'}")
    print(f"parameters: plain {n_plain:,}  ifm {n_ifm:,}  (+{n_ifm - n_plain:,})")
    print(f"train step (min of {a.rounds} x {a.repeats}): plain {results['plain']['min_s']:.3f} s  "
          f"ifm {results['ifm']['min_s']:.3f} s  ratio {ratio:.3f} (target <= 1.3); medians "
          f"{results['plain']['median_s']:.3f} s / {results['ifm']['median_s']:.3f} s")
    if device.type == "cuda":
        mr = results["ifm"]["peak_bytes"] / results["plain"]["peak_bytes"]
        print(f"peak GPU memory: plain {results['plain']['peak_bytes'] / 2**30:.2f} GiB  "
              f"ifm {results['ifm']['peak_bytes'] / 2**30:.2f} GiB  ratio {mr:.3f}")
    return ratio


if __name__ == "__main__":
    main()
