"""Tests of speed.py and of the savings built into train.py's step: they change how fast a step
runs, not what it computes.

    python -m pytest -q test_speed.py

Most tests run 3 training iterations from one seed through `bench.make_step` and compares them with
the same iterations of `bench.baseline_step`, the step as the authors' code writes it: bit-identical
for the savings that are always on, within float tolerance for --amp, --channels_last,
--fast_upsample and --compile. The upsample fold is also checked on its own, in float64.
"""

import argparse
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import bench
from tests.helpers import BENCH_ARGS, NZ, TINY, make_images, run_train
from generator import Generator


def _bench_run(kind, n=3, **flags):
    """n iterations of `kind` ('baseline' or 'ours') from seed 0: (losses per iteration, G, D, G_ema)."""
    a = bench.parse_args(BENCH_ARGS + ["--no-fast_upsample", "--no-channels_last", "--no-amp", "--no-compile"])
    a = argparse.Namespace(**{**vars(a), **flags})
    device = torch.device("cpu")
    step, G, D, G_ema = bench.make_step(kind, a, device, seed=0)
    torch.manual_seed(1)
    losses = [step() for _ in range(n)]
    return [{k: v.item() for k, v in l.items()} for l in losses], G, D, G_ema


@pytest.fixture(scope="module")
def _bench_baseline():
    return _bench_run("baseline")


def test_our_step_is_bit_identical_to_the_authors_step(_bench_baseline):
    """The always-on savings (D frozen in the G step, fused EMA, ...) change speed,
    not results: losses, G and D are bit-identical to the authors' step after 3 iterations."""
    base_losses, G_b, D_b, E_b = _bench_baseline
    losses, G, D, E = _bench_run("ours")
    assert losses == base_losses
    for a, b in ((G_b, G), (D_b, D)):
        for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(x, y), name


def test_amp_trains_without_nan_close_to_float32(_bench_baseline):
    """--amp (bf16 autocast on the CPU): 3 iterations with finite losses within 0.05 of float32's."""
    base_losses, _, _, _ = _bench_baseline
    losses, G, _, _ = _bench_run("ours", amp=True)
    for lb, lo in zip(base_losses, losses):
        assert all(np.isfinite(lo[k]) and abs(lb[k] - lo[k]) < 0.05 for k in lb), (lb, lo)
    assert all(torch.isfinite(p).all() for p in G.parameters())


def test_upsample_conv3x3_equals_upsample_then_conv():
    """speed.upsample_conv3x3 (a stride-2 transposed conv with the folded 4x4 kernel) is
    nearest-upsample x2 + 3x3 conv (padding 1), value and gradient: to float64 rounding on odd sizes.
    speed.fold_upsample switches every up-block of G: the same images, and the same state_dict (names
    and values), so checkpoints do not depend on the option; building the folded convs draws no number
    of the run's random generator."""
    from plumbing.speed import fold_upsample, upsample_conv3x3
    torch.manual_seed(0)
    x = torch.randn(2, 5, 7, 9, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 5, 3, 3, dtype=torch.float64, requires_grad=True)
    ref = F.conv2d(F.interpolate(x, scale_factor=2, mode="nearest"), w, padding=1)
    out = upsample_conv3x3(x, w)
    assert out.shape == (2, 4, 14, 18) and torch.allclose(out, ref, atol=1e-12, rtol=0)
    g = torch.randn_like(ref)
    gx, gw = torch.autograd.grad(ref, (x, w), g)
    fx, fw = torch.autograd.grad(out, (x, w), g)
    assert torch.allclose(gx, fx, atol=1e-11, rtol=0) and torch.allclose(gw, fw, atol=1e-11, rtol=0)
    G = Generator(ngf=8, nz=NZ, im_size=128).eval()
    z, noise = torch.randn(2, NZ), G.draw_noise(2)
    plain = G(z, noise=noise)[0]
    before = {k: v.clone() for k, v in G.state_dict().items()}
    rng = torch.get_rng_state()
    folded = fold_upsample(G)
    assert torch.equal(torch.get_rng_state(), rng)
    after = folded.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    assert sum(isinstance(m, nn.Identity) for m in folded.modules()) == len(folded.resolutions)
    fast = folded(z, noise=noise)[0]
    assert torch.allclose(plain, fast, atol=1e-5, rtol=0)


@pytest.mark.parametrize("flag", ["channels_last", "fast_upsample"])
def test_speed_option_agrees_within_tolerance(_bench_baseline, flag):
    """--channels_last (other convolution kernels) and --fast_upsample (the same function, another
    order of float sums) agree with the authors' float32 NCHW step: losses within 5e-3 over the first
    two iterations and 2e-2 at the third, weights within 3e-3 after three (Adam's steps are 2e-4 each).
    Rounding differences grow through a GAN's steps, by an amount the CPU's kernels and thread count
    decide: measured at most 2.7e-3, 8.7e-3 and 1.3e-3 with one and two threads."""
    base_losses, G_b, _, _ = _bench_baseline
    losses, G, _, _ = _bench_run("ours", **{flag: True})
    for it, (lb, lo) in enumerate(zip(base_losses, losses)):
        assert all(abs(lb[k] - lo[k]) < (5e-3 if it < 2 else 2e-2) for k in lb), (it, lb, lo)
    for x, y in zip(G_b.parameters(), G.parameters()):
        assert torch.allclose(x, y, atol=3e-3, rtol=0)
    if flag == "channels_last":   # really another path
        assert any(not torch.equal(x, y) for x, y in zip(G_b.parameters(), G.parameters()))


@pytest.mark.skipif(not os.environ.get("FASTGAN_SLOW"),
                    reason="slow (compiles G and D for minutes): run with FASTGAN_SLOW=1")
def test_compile_agrees_within_tolerance(_bench_baseline):
    """--compile (torch.compile of G and D): losses within 5e-3 of eager float32 after 3 iterations."""
    base_losses, _, _, _ = _bench_baseline
    losses, _, _, _ = _bench_run("ours", compile=True)
    for lb, lo in zip(base_losses, losses):
        assert all(abs(lb[k] - lo[k]) < 5e-3 for k in lb), (lb, lo)


@pytest.mark.parametrize("onednn_bf16, isa, native", [
    (True, "AVX512", True),      # oneDNN's bf16 kernels and ATen's AVX-512 ones: bf16 is native
    (False, "AVX2", False),      # an AVX2 CPU: every bf16 value converted in software
    (True, "AVX2", False),       # ATen limited to AVX2 (ATEN_CPU_CAPABILITY=avx2)
    (False, "AVX512", False),    # oneDNN without bf16 (ONEDNN_MAX_CPU_ISA=AVX2)
])
def test_amp_default_follows_the_cpus_bf16_and_an_explicit_flag_wins(monkeypatch, onednn_bf16, isa, native):
    """--amp left out: bf16 autocast on a CPU whose torch reports native bf16 (both probes replaced
    here, so every CPU runs every case), float32 elsewhere; --amp and --no-amp always win. The reason
    comes back for bench.py to print."""
    from plumbing.speed import resolve_speed_flags
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
    cpu = torch.device("cpu")
    for flag, expected, reason in ((None, native, "native" if native else "emulated"),
                                   ("--amp", True, "--amp given"), ("--no-amp", False, "--no-amp given")):
        args = bench.parse_args(BENCH_ARGS + ([flag] if flag else []))
        assert args.amp is None if flag is None else args.amp is expected
        why = resolve_speed_flags(args, cpu)["amp"]
        assert args.amp is expected and reason in why, (flag, args.amp, why)
        assert args.fast_upsample is True and args.channels_last is False     # the other defaults stay


def test_a_bf16_checkpoint_resumes_in_float32_and_back(tmp_path, capsys):
    """bf16 autocast changes how the passes compute, not what is kept: after 1 iteration with --amp
    every weight, Adam moment and EMA weight in the checkpoint is float32, and the run resumes without
    --amp; a float32 run resumes with it, continuing Adam's state (2 steps counted at the end, not 1)
    and moving the weights. The two orders (bf16 then float32, float32 then bf16) end with different
    weights: bf16 really ran."""
    data = make_images(tmp_path / "data")
    ends = {}
    for first, then in (("--amp", "--no-amp"), ("--no-amp", "--amp")):
        common = ["--path", str(data), "--out", str(tmp_path / first), "--save_every", "1",
                  "--sample_every", "100", *TINY]
        assert run_train([*common, "--iter", "1", first], capsys)[0] == 0
        code, out, _ = run_train([*common, "--iter", "2", "--resume", "latest", then], capsys)
        assert code == 0 and "resumed from iteration 1" in out and f"amp={then == '--amp'}" in out, out
        one = torch.load(tmp_path / first / "data" / "checkpoints" / "000001.pt", weights_only=True)
        two = torch.load(tmp_path / first / "data" / "checkpoints" / "latest.pt", weights_only=True)
        for st in (one, two):
            tensors = [v for net in ("G", "D", "G_ema") for v in st[net].values()]
            tensors += [v for opt in ("opt_G", "opt_D") for s in st[opt]["state"].values()
                        for k, v in s.items() if k != "step"]
            floats = [t for t in tensors if t.is_floating_point()]
            assert len(floats) > 100 and all(t.dtype == torch.float32 and torch.isfinite(t).all() for t in floats)
        assert all(int(s["step"]) == 2 for opt in ("opt_G", "opt_D") for s in two[opt]["state"].values())
        weights = [k for k in two["G"] if k.endswith("original")]
        assert all(not torch.equal(one["G"][k], two["G"][k]) for k in weights)
        ends[first] = two["G"]
    assert any(not torch.equal(ends["--amp"][k], ends["--no-amp"][k]) for k in weights)
