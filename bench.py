"""Measure FastGAN's training step: seconds per iteration, images/s, peak memory, FLOPs.

The paper's Table 1 claims are costs: hours per 10k iterations and GB of GPU memory at batch 8. This
script times full training iterations -- `train.train_step`, the very step `train.py` runs, not a
copy -- on synthetic data after warm-up, and prints one JSON line.

    python bench.py --im_size 256 --batch_size 8 --device cpu
    python bench.py --im_size 256 --batch_size 8 --device cpu --compare   # ours vs the baseline step

`--compare` times, alternating in one run, our step and `baseline_step`, the baseline step: the
authors' order of operations, without our savings (D keeps requires_grad during the G step, float32,
contiguous NCHW, no compile, a per-parameter EMA loop, the batch already on the device), run on this
project's networks, DiffAugment, resize and pixel distance. It is not what the authors' code runs:
theirs also runs LPIPS-VGG and resizes by nearest neighbour. It prints the ratio of medians. Peak
memory of each is measured in a separate process, since a process's peak RSS can't be reset.

Memory: CUDA's max allocated on a GPU; the peak resident set size of the process on a CPU.
FLOPs: `torch.utils.flop_counter` over one step (convolutions and matrix products, forward and
backward), divided by the median time, beside the FLOP/s of a large float32 matrix product on the
same device: how close the step runs to what the machine can do.
"""

import argparse
import copy
import itertools
import json
import resource
import statistics
import subprocess
import sys
import time

import torch

import losses
import train
from plumbing.cli import OneLineParser, UsageError, add_device_argument, resolve_device
from diffaug import diff_augment
from discriminator import resize_to_128
from ema import EMA
from generator import SUPPORTED_SIZES
from plumbing.speed import (StepContext, add_speed_arguments, amp_dtype, resolve_speed_flags, speed_flag_argv,
                           speed_up)


def baseline_step(G, D, G_ema, opt_G, opt_D, real, args):
    """The baseline step: one iteration in the authors' order of operations, without our savings
    (D keeps requires_grad during the G step, so the G step also computes D's weight gradients; a
    per-parameter EMA loop with a fixed decay; float32, NCHW, no compile), on this project's networks.
    The losses are losses.py's, as in `train.train_step`: the same maths and random draws, so on the
    CPU the two steps give the same bits (tests/test_speed.py). Not what the authors' code runs: it
    keeps two of our choices so that the results can be compared bit for bit, D's 128x128 input and
    the decoders' targets resized by area averaging (the authors: nearest) and the pixel
    reconstruction distance (the authors: LPIPS-VGG, which also costs time)."""
    z = torch.randn(real.shape[0], G.nz, device=real.device)
    fake_big, fake_128 = G(z)
    real_aug = diff_augment(real, args.policy)
    fake_big_aug = diff_augment(fake_big, args.policy)
    fake_128_aug = diff_augment(fake_128, args.policy)

    D.zero_grad()
    part = int(torch.randint(4, (1,)))
    logits_big, logits_small, recons = D(real_aug, resize_to_128(real_aug), part=part)
    loss_real = losses.real_loss(losses.both_logits(logits_big, logits_small))
    loss_recon = losses.reconstruction_loss(recons, real_aug, part, losses.pixel_distance(args.recon))
    (loss_real + args.recon_weight * loss_recon).backward()
    loss_fake = losses.fake_loss(losses.both_logits(*D(fake_big_aug.detach(), fake_128_aug.detach())))
    loss_fake.backward()
    opt_D.step()

    G.zero_grad()
    loss_g = losses.generator_loss(losses.both_logits(*D(fake_big_aug, fake_128_aug)))   # D's weight gradients too
    loss_g.backward()
    opt_G.step()

    with torch.no_grad():                                                 # one small update per tensor
        for p_ema, p in zip(G_ema.parameters(), G.parameters()):
            p_ema.mul_(args.ema).add_(p, alpha=1 - args.ema)
    return {"d_real": loss_real.detach(), "d_fake": loss_fake.detach(),
            "recon": loss_recon.detach(), "g": loss_g.detach()}


def setup(args, device, seed=0):
    """Networks, EMA copy and one synthetic real batch on the device, all from `seed`."""
    torch.manual_seed(seed)
    G, D = train.build_networks(args)
    G, D = G.to(device), D.to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    real = torch.rand(args.batch_size, 3, args.im_size, args.im_size, device=device) * 2 - 1
    return G, D, G_ema, real


def make_step(kind, args, device, seed=0):
    """(a zero-argument function running one iteration of `kind` ('ours' or 'baseline'), G, D, G_ema).
    'ours' is train.py's iteration: `train.train_step`, then the EMA update."""
    G, D, G_ema, real = setup(args, device, seed)
    if kind == "baseline":
        opt_G = torch.optim.Adam(G.parameters(), lr=args.lr, betas=(0.5, 0.999))
        opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(0.5, 0.999))
        return (lambda: baseline_step(G, D, G_ema, opt_G, opt_D, real, args)), G, D, G_ema
    G_fast, D_fast = speed_up(G, D, args, device, say=lambda line: print(line, file=sys.stderr))
    opt_G, opt_D = train.make_optimizers(G, D, args.lr, device, args.compile)
    ctx = StepContext(device, args.amp, (opt_G, opt_D), dtype=args.amp_dtype)
    ema = EMA(G_ema, G, args.ema)
    distance = losses.pixel_distance(args.recon)
    if args.channels_last:
        real = real.contiguous(memory_format=torch.channels_last)
    iterations = itertools.count(1)

    def step():
        loss_values = train.train_step(G_fast, D_fast, opt_G, opt_D, real, args, ctx, distance)
        ema.update(next(iterations))
        return loss_values
    return step, G, D, G_ema


def sync(device):
    """Wait for the GPU (CUDA or MPS) to finish what was queued, so a timer sees the work itself."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def timed(step, device):
    sync(device)
    t = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - t


def peak_memory_gb(device):
    """CUDA: the most memory tensors ever held. CPU: the process's peak resident set size, read from
    /proc (VmHWM starts afresh in a new program; getrusage's ru_maxrss would start from the RSS of
    the parent that spawned us) where there is one. MPS keeps no peak: the memory its driver holds for
    this process after the timed steps (its caching allocator keeps what the steps needed)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    if device.type == "mps":
        return torch.mps.driver_allocated_memory() / 2 ** 30
    try:
        with open("/proc/self/status") as f:
            kib = next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss          # KiB on Linux
    return kib / 2 ** 20


def step_flops(step):
    """Floating-point operations of one step, counted by PyTorch's FLOP counter (convs and matmuls)."""
    from torch.utils.flop_counter import FlopCounterMode
    with FlopCounterMode(display=False) as counter:
        step()
    return counter.get_total_flops()


def matmul_flops_per_s(device, dtype=torch.float32, tf32=False, n=None, repeats=5):
    """Median FLOP/s of an n x n matrix product in `dtype` (on CUDA in TF32 if `tf32`): a practical
    peak of the device for the arithmetic the step's convolutions use."""
    n = n or (8192 if device.type == "cuda" else 2048)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    was = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        a @ b
        times = [timed(lambda: a @ b, device) for _ in range(repeats)]
    finally:
        torch.backends.cuda.matmul.allow_tf32 = was
    return 2 * n ** 3 / statistics.median(times)


def conv_precision(args, device):
    """(dtype, tf32) of the step's convolutions: --amp's dtype, or float32, which cuDNN computes in
    TF32 unless that is switched off (it is by --deterministic). The matmul peak is measured in the
    same, so that `fraction_of_matmul` compares like with like (a TF32 step against a float32 peak
    could exceed 1)."""
    dtype = amp_dtype(device, args.amp_dtype) if args.amp else torch.float32
    return dtype, device.type == "cuda" and dtype == torch.float32 and torch.backends.cudnn.allow_tf32


def spread(times):
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
            "all_s": [round(t, 4) for t in times]}


def memory_in_subprocess(kind, args):
    """Peak memory of `kind` alone, measured by a fresh process running bench.py on it."""
    cmd = [sys.executable, __file__, "--only", kind, "--iters", "2", "--warmup", "1", "--no_flops"]
    for k in ("im_size", "batch_size", "ngf", "ndf", "nz", "device", "threads"):
        cmd += [f"--{k}", str(getattr(args, k))]
    cmd += [f"--{k}" for k in ("no_sle", "no_recon") if getattr(args, k)]
    if kind == "ours":
        cmd += speed_flag_argv(args)
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_memory_gb"]


def parse_args(argv=None):
    p = OneLineParser(description="Time FastGAN's training step on synthetic data.")
    p.add_argument("--im_size", type=int, default=256, help=f"one of {SUPPORTED_SIZES}")
    p.add_argument("--batch_size", type=int, default=8)
    p.add_argument("--ngf", type=int, default=64)
    p.add_argument("--ndf", type=int, default=64)
    p.add_argument("--nz", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-4)
    add_device_argument(p)
    p.add_argument("--iters", type=int, default=5, help="timed iterations (of each step with --compare)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    add_speed_arguments(p)
    p.add_argument("--compare", action="store_true", help="also time the baseline step (the authors' order, "
                   "our networks), alternating")
    p.add_argument("--only", choices=("ours", "baseline"), default="ours", help=argparse.SUPPRESS)
    p.add_argument("--no_flops", action="store_true", help="skip the FLOP count")
    p.add_argument("--no_sle", action="store_true", help="Table 2's ablation: time the networks without SLE")
    p.add_argument("--no_recon", action="store_true", help="Table 2's ablation: time D without its decoders")
    args = p.parse_args(argv)
    args.policy, args.recon, args.recon_weight, args.ema = "color,translation", "mse", 1.0, 0.999
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.im_size not in SUPPORTED_SIZES:
            raise UsageError(f"--im_size must be one of {SUPPORTED_SIZES}, got {args.im_size}")
        if args.iters < 1 or args.warmup < 0:
            raise UsageError("--iters must be at least 1 and --warmup at least 0")
        device = resolve_device(args.device)
        amp_why = resolve_speed_flags(args, device)["amp"]      # which precision, and why
    except UsageError as e:
        print(f"bench.py: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    if args.threads:
        torch.set_num_threads(args.threads)

    kinds = ["ours", "baseline"] if args.compare else [args.only]
    made = {k: make_step(k, args, device) for k in kinds}
    steps = {k: m[0] for k, m in made.items()}
    for _ in range(args.warmup):
        for k in kinds:
            timed(steps[k], device)
    times = {k: [] for k in kinds}
    for _ in range(args.iters):          # alternate, so both see the same machine load
        for k in kinds:
            times[k].append(timed(steps[k], device))

    main_kind = kinds[0]
    med = statistics.median(times[main_kind])
    n_g, n_d = (sum(p.numel() for p in net.parameters()) for net in made[main_kind][1:3])
    result = {
        "step": main_kind, "im_size": args.im_size, "batch_size": args.batch_size,
        **spread(times[main_kind]), "it_per_s": 1 / med, "images_per_s": args.batch_size / med,
        "hours_per_10k_iter": med * 10000 / 3600,
        "peak_memory_gb": round(peak_memory_gb(device), 3),
        "params_G": n_g, "params_D": n_d, "ngf": args.ngf, "ndf": args.ndf,
        "sle": not args.no_sle, "decoders": not args.no_recon,
        "fast_upsample": args.fast_upsample, "channels_last": args.channels_last, "amp": args.amp,
        "compile": args.compile, "amp_dtype": str(amp_dtype(device, args.amp_dtype))[6:] if args.amp else None,
        "deterministic": args.deterministic, "precision_why": amp_why,
        "precision": str(StepContext(device, args.amp, dtype=args.amp_dtype).dtype or torch.float32).replace("torch.", ""),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else device.type,
        "torch": torch.__version__, "threads": torch.get_num_threads(),
    }
    if not args.no_flops:
        flops = step_flops(steps[main_kind])
        dtype, tf32 = conv_precision(args, device)
        result.update({"step_gflop": flops / 1e9, "achieved_gflop_per_s": flops / med / 1e9,
                       "matmul_gflop_per_s": matmul_flops_per_s(device, dtype, tf32) / 1e9,
                       "matmul_precision": "tf32" if tf32 else str(dtype).replace("torch.", "")})
        result["fraction_of_matmul"] = result["achieved_gflop_per_s"] / result["matmul_gflop_per_s"]
    if args.compare:
        base = statistics.median(times["baseline"])
        result["baseline"] = spread(times["baseline"])
        result["ratio_ours_over_baseline"] = med / base
        del result["peak_memory_gb"]      # this process ran both: measure each alone instead
        result["peak_memory_gb_ours"] = memory_in_subprocess("ours", args)
        result["peak_memory_gb_baseline"] = memory_in_subprocess("baseline", args)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
