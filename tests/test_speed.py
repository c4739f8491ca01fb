"""Tests of speed.py and of the savings built into train.py's step: they change how fast a step
runs, not what it computes.

    python -m pytest -q tests/test_speed.py

Most tests run 3 training iterations from one seed through `bench.make_step` and compares them with
the same iterations of `bench.baseline_step`, the baseline step (the authors' order of operations on
this project's networks, DiffAugment, resize and pixel distance; not their LPIPS): bit-identical
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
from discriminator import Discriminator
from generator import Generator, UpBlock, sn_conv2d
from plumbing.speed import FoldedUpsample, fold_upsample, speed_up


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


def test_our_step_is_bit_identical_to_the_baseline_step(_bench_baseline):
    """The always-on savings (D frozen in the G step, no host-device synchronisation, ...) change speed, not results:
    losses, G and D are bit-identical to the baseline step's (the authors' order, our networks) after
    3 iterations."""
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
    from plumbing.speed import upsample_conv3x3
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
    n_folded, left = fold_upsample(G, "G")
    assert torch.equal(torch.get_rng_state(), rng)
    after = G.state_dict()
    assert list(after) == list(before) and all(torch.equal(before[k], after[k]) for k in before)
    # Every up-block but the one reading the 4x4 map (below FOLD_FROM) is folded; eval mode is kept.
    assert n_folded == len(G.resolutions) - 1 and len(left) == 1 and left[0][0] == "G.up.8"
    assert left[0][1].startswith("its input is 4x4")
    assert sum(isinstance(m, FoldedUpsample) for m in G.modules()) == n_folded
    assert not any(m.training for m in G.modules())
    fast = G(z, noise=noise)[0]
    assert torch.allclose(plain, fast, atol=1e-5, rtol=0)


def _edited_generators(edit):
    """(G as built then edited by `edit`, a copy of it) from one seed, both in eval mode."""
    import copy
    torch.manual_seed(0)
    G = Generator(ngf=8, nz=NZ, im_size=128)
    edit(G)
    return G.eval(), copy.deepcopy(G)


class _UpBlockWithAScale(UpBlock):
    """An UpBlock whose forward a student edited: it shifts the upsampled map by one pixel before the conv."""

    def forward(self, x):
        return self.glu(self.bn(self.conv(self.up(x).roll(1, dims=-1))))


def _bilinear(G):
    G.up["16"].up = nn.Upsample(scale_factor=2, mode="bilinear")


def _conv_5x5(G):
    old = G.up["64"].conv
    G.up["64"].conv = sn_conv2d(old.in_channels, old.out_channels, 5, 1, 2)
    G.up["64"].up = nn.Upsample(scale_factor=2, mode="nearest")    # only the conv differs from the known pair


def _edited_forward(G):
    old = G.up["64"]
    new = _UpBlockWithAScale(old.conv.in_channels, old.conv.out_channels // 2)
    new.load_state_dict(old.state_dict())
    new.up = nn.Upsample(scale_factor=2, mode="nearest")            # only the forward differs from the known pair
    G.up["64"] = new


@pytest.mark.parametrize("edit, block, why", [
    (_bilinear, "G.up.16", "it upsamples with mode='bilinear', not 'nearest'"),
    (_conv_5x5, "G.up.64", "its first conv has kernel_size=(5, 5), not (3, 3)"),
    (_edited_forward, "G.up.64", "folded, it computed something else"),
], ids=["bilinear", "conv5x5", "edited_forward"])
def test_the_fold_leaves_a_block_it_does_not_know_as_written_and_says_so(edit, block, why, capsys):
    """A student's edit of an up-block (bilinear upsampling, a 5x5 conv, a forward that does something
    between the upsample and the conv) is never folded: after speed_up with the CPU's defaults G
    computes what the edited G computes (to float rounding: the other blocks are folded), and the
    line speed_up says names the block and why it was left."""
    G, plain = _edited_generators(edit)
    args = argparse.Namespace(fast_upsample=True, channels_last="GD", amp=False, compile=False)
    lines = []
    speed_up(G, Discriminator(ndf=8, im_size=128), args, torch.device("cpu"), say=lines.append)
    fold_line = next(line for line in lines if line.startswith("fast_upsample:"))
    groups = dict(g.rsplit(": ", 1) for g in fold_line.split("left as written: ")[1].split("; "))
    assert block in next(blocks.split(", ") for reason, blocks in groups.items() if reason.startswith(why)), fold_line
    assert not isinstance(dict(G.named_modules())[block[2:]].up, FoldedUpsample)
    torch.manual_seed(1)
    z, noise = torch.randn(3, NZ), G.draw_noise(3)
    for a, b in zip(G(z, noise=noise), plain(z, noise=noise)):
        assert torch.allclose(a, b, atol=1e-5, rtol=0), (a - b).abs().max()
    # Folded regardless, the bilinear block would compute something else: the check keeps it out.
    if edit is _bilinear:
        from plumbing.speed import upsample_conv3x3
        block, x = G.up["16"], torch.randn(2, G.up["16"].conv.in_channels, 8, 8)
        with torch.no_grad():
            assert not torch.allclose(block.conv(block.up(x)), upsample_conv3x3(x, block.conv.weight), atol=1e-3)


@pytest.mark.parametrize("flag, value", [("channels_last", "D"), ("channels_last", "GD"), ("fast_upsample", True)])
def test_speed_option_agrees_within_tolerance(_bench_baseline, flag, value):
    """--channels_last D and GD (other convolution kernels; BatchNorm's gradients moved to NHWC; GLU
    on the NHWC view) and
    --fast_upsample (the same function, another order of float sums) agree with the baseline step
    (float32, NCHW): losses within 5e-3 over the first two iterations and 2e-2 at the third, weights
    within 3e-3 after three (Adam's steps are 2e-4 each).
    Rounding differences grow through a GAN's steps, by an amount the CPU's kernels and thread count
    decide: measured at most 2.7e-3, 8.7e-3 and 1.3e-3 with one and two threads."""
    base_losses, G_b, _, _ = _bench_baseline
    losses, G, _, _ = _bench_run("ours", **{flag: value})
    for it, (lb, lo) in enumerate(zip(base_losses, losses)):
        assert all(abs(lb[k] - lo[k]) < (5e-3 if it < 2 else 2e-2) for k in lb), (it, lb, lo)
    for x, y in zip(G_b.parameters(), G.parameters()):
        assert torch.allclose(x, y, atol=3e-3, rtol=0)
    if flag == "channels_last":   # really another path
        assert any(not torch.equal(x, y) for x, y in zip(G_b.parameters(), G.parameters()))


def test_batchnorm_gradients_arrive_in_their_outputs_layout():
    """In an NHWC D, some gradients reach BatchNorm in NCHW (BatchNorm's CPU backward is then ~8x
    slower); with `keep_batchnorm_gradients_in_layout` every BatchNorm output's gradient is NHWC, and
    D's weight gradients are those computed without it (the hook changes layouts, not values)."""
    from plumbing.speed import keep_batchnorm_gradients_in_layout

    def weight_grads_and_layouts(hooked):
        torch.manual_seed(0)
        D = Discriminator(ndf=8, im_size=128).to(memory_format=torch.channels_last)
        if hooked:
            keep_batchnorm_gradients_in_layout(D)
        layouts = []
        def record(module, inputs, output):          # registered after the layout hook: sees its result
            output.register_hook(lambda g: layouts.append(g.is_contiguous(memory_format=torch.channels_last)))
        for m in D.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.register_forward_hook(record)
        x = torch.randn(2, 3, 128, 128).contiguous(memory_format=torch.channels_last)
        lb, ls, recons = D(x, x, part=1)
        (lb.sum() + ls.sum() + sum(r.square().sum() for r in recons.values())).backward()
        return [p.grad for p in D.parameters()], layouts

    plain, plain_layouts = weight_grads_and_layouts(False)
    hooked, hooked_layouts = weight_grads_and_layouts(True)
    assert len(hooked_layouts) == sum(isinstance(m, nn.BatchNorm2d) for m in Discriminator(8, im_size=128).modules())
    assert not all(plain_layouts) and all(hooked_layouts)
    for a, b in zip(plain, hooked):                  # float32 rounding of another summation order
        assert (a - b).abs().max() <= 1e-4 * a.abs().max()


@pytest.mark.slow   # compiles G and D: minutes
def test_compile_agrees_within_tolerance(_bench_baseline, monkeypatch):
    """--compile (torch.compile of G and D): losses within 5e-3 of eager float32 after 3 iterations.
    G draws its injected noise inside its forward, and inductor draws random numbers with its own
    generator: with `fallback_random` the compiled G draws torch's, the same noise as eager, so that the
    two compute the same function of the same numbers (without it the losses differ from the first
    iteration on, as any other draw of the noise would)."""
    import torch._inductor.config
    monkeypatch.setattr(torch._inductor.config, "fallback_random", True)
    base_losses, _, _, _ = _bench_baseline
    losses, _, _, _ = _bench_run("ours", compile=True)
    for lb, lo in zip(base_losses, losses):
        assert all(abs(lb[k] - lo[k]) < 5e-3 for k in lb), (lb, lo)


def _two_adams():
    return [torch.optim.Adam([nn.Parameter(torch.zeros(3))]) for _ in range(2)]


# The GradScalers made here for a GPU this machine may not have warn that they disable themselves.
@pytest.mark.filterwarnings("ignore:torch.cuda.amp.GradScaler is enabled, but CUDA is not available")
@pytest.mark.parametrize("gpu, native_bf16, asked, dtype", [
    ("T4, V100, RTX 2080 Ti: bf16 emulated only", False, "auto", torch.float16),
    ("A100, H100, RTX 3090: bf16 units", True, "auto", torch.bfloat16),
    ("bf16 units, fp16 asked for", True, "fp16", torch.float16),
    ("bf16 emulated, bf16 asked for", False, "bf16", torch.bfloat16),
])
def test_amp_picks_bf16_only_on_gpus_with_bf16_units(monkeypatch, gpu, native_bf16, asked, dtype):
    """--amp on CUDA: bf16 where the GPU computes it natively, else fp16 with one GradScaler per
    optimiser; --amp_dtype forces either. torch.cuda.is_bf16_supported() says True on GPUs that only
    emulate bf16 unless asked not to count emulation: the GPU is replaced here by the answers its
    probes would give (emulation counted or not, compute capability)."""
    from plumbing.speed import StepContext
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native_bf16 or including_emulation)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0) if native_bf16 else (7, 5))
    opts = _two_adams()
    forced = {} if asked == "auto" else {"dtype": asked}        # auto: as train.py is called without --amp_dtype
    ctx = StepContext(torch.device("cuda"), amp=True, opts=opts, **forced)
    assert ctx.dtype == dtype, gpu
    assert len(ctx.scalers) == (2 if dtype == torch.float16 else 0), gpu
    assert StepContext(torch.device("cuda"), amp=False, opts=opts).dtype is None


def test_amp_without_the_emulation_argument_reads_the_compute_capability(monkeypatch):
    """A torch whose is_bf16_supported() takes no argument: bf16 from compute capability 8.0 on."""
    from plumbing.speed import amp_dtype
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    for capability, dtype in (((7, 5), torch.float16), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        assert amp_dtype(torch.device("cuda")) == dtype, capability


def test_fp16_loss_scaling_steps_like_float32_and_skips_an_overflow():
    """The fp16 path (--amp_dtype fp16), here on the CPU: the scaled backward and the scaler's step
    give the float32 update of a small conv to fp16 rounding; a gradient that overflows (inf) skips
    the step and halves the scale, as GradScaler promises."""
    from plumbing.speed import StepContext
    torch.manual_seed(0)
    x = torch.randn(2, 3, 8, 8)
    nets = [nn.Conv2d(3, 4, 3) for _ in range(2)]
    nets[1].load_state_dict(nets[0].state_dict())
    opts = [torch.optim.Adam(n.parameters(), lr=1e-2) for n in nets]
    fp32, fp16 = StepContext(torch.device("cpu")), StepContext(torch.device("cpu"), True, opts[1:], dtype="fp16")
    assert fp16.dtype == torch.float16 and len(fp16.scalers) == 1
    start = nets[0].weight.detach().clone()
    for ctx, net, opt in ((fp32, nets[0], opts[0]), (fp16, nets[1], opts[1])):
        for _ in range(3):
            opt.zero_grad()
            with ctx.autocast():
                loss = net(x).float().pow(2).mean()
            ctx.backward(loss, opt)
            ctx.step(opt)
    moved = (nets[0].weight - nets[1].weight).abs().max()
    assert moved < 1e-3 and (nets[1].weight - start).abs().max() > 1e-2   # 3 steps of lr 1e-2
    scaler = next(iter(fp16.scalers.values()))
    scale, before = scaler.get_scale(), nets[1].weight.detach().clone()
    opts[1].zero_grad()
    with fp16.autocast():
        loss = nets[1](x).float().sum() * float("inf")
    fp16.backward(loss, opts[1])
    fp16.step(opts[1])
    assert torch.equal(nets[1].weight, before) and scaler.get_scale() == scale / 2


def test_spectral_norm_power_iteration_stays_float32_under_amp(monkeypatch):
    """Under --amp the power iteration and sigma of every spectral norm run in float32. CUDA's
    autocast casts torch.mv to the low precision; the CPU's does not, so torch.mv is replaced here by
    one that does what CUDA's autocast does (casts its inputs to the autocast dtype when autocast is
    on) and records the dtype it computed in. G's and D's forwards under the step's autocast then
    must call it only in float32, and give the same spectral norms as without autocast."""
    from plumbing.speed import StepContext, speed_up
    real_mv, dtypes = torch.mv, []

    def cuda_like_mv(m, v):
        if torch.is_autocast_enabled("cpu"):
            m, v = m.to(torch.get_autocast_dtype("cpu")), v.to(torch.get_autocast_dtype("cpu"))
        dtypes.append(m.dtype)
        return real_mv(m, v)

    args = bench.parse_args(BENCH_ARGS + ["--no-fast_upsample", "--no-channels_last", "--amp", "--no-compile"])
    cpu, sigmas = torch.device("cpu"), []
    for autocast in (False, True):
        G, D, _, real = bench.setup(args, cpu)                     # the same networks from seed 0 each time
        G, D = speed_up(G, D, args, cpu)
        monkeypatch.setattr(torch, "mv", cuda_like_mv)
        dtypes.clear()
        with StepContext(cpu, amp=autocast).autocast():
            G(torch.zeros(2, NZ))
            D(real, real)
            sigmas.append([m.parametrizations.weight.original.norm() / m.weight.norm()
                           for m in (*G.modules(), *D.modules()) if hasattr(m, "parametrizations")])
        monkeypatch.setattr(torch, "mv", real_mv)
        assert len(dtypes) > 50 and set(dtypes) == {torch.float32}, (autocast, set(dtypes))
    assert len(sigmas[0]) > 20
    for a, b in zip(*sigmas):
        assert a.dtype == b.dtype == torch.float32 and torch.allclose(a, b, rtol=1e-6), (a, b)


def test_fused_adam_on_cuda_except_with_compile():
    """Adam's fused kernel: on CUDA without --compile only (a compiled backward may give 1x1 conv
    weight gradients other strides than their weights, which the fused step refuses); never on the
    CPU, where the plain Adam computes what bench.baseline_step computes. train.make_optimizers asks."""
    import train
    from plumbing.speed import fused_adam
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert fused_adam(cuda) and not fused_adam(cuda, compile=True) and not fused_adam(cpu)
    G, D = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 1, 1)         # fused=True Adam is made on CPU weights too
    for compile, fused in ((False, True), (True, False)):
        for opt in train.make_optimizers(G, D, 2e-4, cuda, compile):
            assert bool(opt.defaults["fused"]) == fused and opt.defaults["betas"] == (0.5, 0.999)
    assert not any(opt.defaults["fused"] for opt in train.make_optimizers(G, D, 2e-4, cpu))


def test_deterministic_sets_pytorchs_reproducibility_switches(monkeypatch):
    """--deterministic: deterministic algorithms (a warning for an op without one), cuDNN
    deterministic and not autotuned (speed_up leaves benchmark off on CUDA), no TF32, cuBLAS's
    workspace setting. Without it speed_up turns cuDNN's autotuning on for CUDA. (The switches are
    global: restored after the test.)"""
    from plumbing.speed import resolve_speed_flags, speed_up
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    saved = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark,
             torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cuda = torch.device("cuda")
    try:
        for deterministic in (False, True):
            torch.backends.cudnn.benchmark, torch.backends.cudnn.allow_tf32 = False, True
            args = bench.parse_args(BENCH_ARGS + ["--no-fast_upsample", "--no-channels_last", "--no-amp",
                                                  "--no-compile"] + (["--deterministic"] if deterministic else []))
            resolve_speed_flags(args, cuda)
            speed_up(nn.Conv2d(3, 3, 1), nn.Conv2d(3, 3, 1), args, cuda)
            assert torch.backends.cudnn.benchmark == (not deterministic)
            assert torch.are_deterministic_algorithms_enabled() == deterministic
            assert torch.is_deterministic_algorithms_warn_only_enabled() == deterministic   # see make_deterministic
            assert torch.backends.cudnn.allow_tf32 == (not deterministic)
            assert (os.environ.get("CUBLAS_WORKSPACE_CONFIG") == ":4096:8") == deterministic
        assert torch.backends.cudnn.deterministic and not torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.use_deterministic_algorithms(saved[0], warn_only=warn_only)
        (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = saved[1:]


@pytest.mark.parametrize("onednn_bf16, isa, bf16_instructions, native", [
    (True, "AVX512", True, True),     # oneDNN's bf16 kernels, ATen's AVX-512 ones, bf16 units: native
    (False, "AVX2", False, False),    # an AVX2 CPU: every bf16 value converted in software
    (True, "AVX2", True, False),      # ATen limited to AVX2 (ATEN_CPU_CAPABILITY=avx2)
    (False, "AVX512", True, False),   # oneDNN without bf16 (ONEDNN_MAX_CPU_ISA=AVX2)
    (True, "AVX512", False, False),   # AVX-512 without bf16 instructions (Cascade Lake): oneDNN emulates
])
def test_amp_default_follows_the_cpus_bf16_and_an_explicit_flag_wins(monkeypatch, onednn_bf16, isa,
                                                                      bf16_instructions, native):
    """--amp left out: bf16 autocast on a CPU whose torch reports native bf16 (the three probes
    replaced here, so every CPU runs every case), float32 elsewhere; --amp and --no-amp always win.
    The reason comes back for bench.py to print."""
    from plumbing.speed import resolve_speed_flags
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: onednn_bf16)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: bf16_instructions)
    monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: bf16_instructions)
    cpu = torch.device("cpu")
    for flag, expected, reason in ((None, native, "native" if native else "emulated"),
                                   ("--amp", True, "--amp given"), ("--no-amp", False, "--no-amp given")):
        args = bench.parse_args(BENCH_ARGS + ([flag] if flag else []))
        assert args.amp is None if flag is None else args.amp is expected
        why = resolve_speed_flags(args, cpu)["amp"]
        assert args.amp is expected and reason in why, (flag, args.amp, why)
        assert args.fast_upsample is True and args.channels_last == "GD"     # the other defaults stay


@pytest.mark.parametrize("flags, layout", [
    ([], "GD"),                                     # the CPU default
    (["--compile"], False),                         # compiled: NCHW
    (["--compile", "--channels_last"], "GD"),       # an explicit layout wins
    (["--compile", "--channels_last", "D"], "D"),
])
def test_compile_on_the_cpu_defaults_to_nchw_and_an_explicit_layout_wins(flags, layout):
    """--compile on the CPU leaves --channels_last off unless it is given (torch 2.14.1's compiler
    crashed on both networks in NHWC); the other defaults do not move."""
    from plumbing.speed import resolve_speed_flags
    args = bench.parse_args(BENCH_ARGS + flags)
    resolve_speed_flags(args, torch.device("cpu"))
    assert args.channels_last == layout and args.fast_upsample is True


def test_channels_last_glu_is_nn_glu_through_the_nhwc_view():
    """ChannelsLastGLU takes nn.GLU over the channels of an NHWC map through its (B, H, W, C) view
    (ATen's GLU backward over dim 1 is ~4x slower on NHWC): the same forward bit for bit, the same
    gradient to float rounding, a result still in NHWC; on an NCHW map it is nn.GLU itself.
    glu_for_channels_last swaps every GLU of a network."""
    from plumbing.speed import ChannelsLastGLU, glu_for_channels_last
    torch.manual_seed(0)
    x = torch.randn(2, 8, 6, 5).contiguous(memory_format=torch.channels_last).requires_grad_()
    g = torch.randn(2, 4, 6, 5)
    ref = F.glu(x, dim=1)
    out = ChannelsLastGLU(dim=1)(x)
    assert out.grad_fn.name() == "PermuteBackward0"              # the (B, H, W, C) path ran
    assert torch.equal(out, ref) and out.is_contiguous(memory_format=torch.channels_last)
    (gx_ref,), (gx,) = torch.autograd.grad(ref, x, g), torch.autograd.grad(out, x, g)
    assert torch.allclose(gx, gx_ref, atol=1e-6, rtol=0)
    nchw = torch.randn(2, 8, 6, 5)
    assert torch.equal(ChannelsLastGLU(dim=1)(nchw), F.glu(nchw, dim=1))
    G = Generator(ngf=16, nz=NZ, im_size=128)
    n = sum(type(m) is nn.GLU for m in G.modules())
    glu_for_channels_last(G)
    assert n == len(G.resolutions) + 1 and sum(type(m) is ChannelsLastGLU for m in G.modules()) == n
    assert not any(type(m) is nn.GLU for m in G.modules())


def test_the_fold_leaves_blocks_on_maps_smaller_than_fold_from():
    """The block that reads a map smaller than FOLD_FROM (G's 4x4 map, where oneDNN's transposed conv
    is slower than the plain conv of the upsampled map) is left as written; every block from FOLD_FROM
    on is folded: G's and the 12 up-blocks of D's three decoders (which read 8x8 and larger maps)."""
    from plumbing.speed import FOLD_FROM
    G, D = Generator(ngf=8, nz=NZ, im_size=256), Discriminator(ndf=8, im_size=256)
    (n_g, left_g), (n_d, left_d) = fold_upsample(G, "G"), fold_upsample(D, "D")
    small = [r for r in G.resolutions if r // 2 < FOLD_FROM]
    assert n_g == len(G.resolutions) - len(small) and [block for block, _ in left_g] == [f"G.up.{r}" for r in small]
    assert (n_d, left_d) == (12, [])
    assert all(isinstance(G.up[str(r)].up, nn.Upsample) for r in small)


@pytest.mark.slow
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


