"""Speed options: what changes how fast a step runs, never what it computes (up to float rounding).

A reader of the paper may skip this file. Every option here is applied to the networks after they
are built (`speed_up`) or wraps the training step from outside (`StepContext`), so generator.py,
discriminator.py and train.py's `train_step` show only the method:

- the upsample fold (`--fast_upsample`): each up-block's nearest upsample x2 followed by a 3x3 conv
  (Fig. 3) computed as one stride-2 transposed convolution of the small map, derived below;
- channels_last (`--channels_last [D|GD]`): NHWC memory layout, what cuDNN's fastest convolutions
  read, for D only or for both networks; BatchNorm's gradients are kept in the layout of its output,
  and GLU runs on the NHWC map seen as (B, H, W, C) (`ChannelsLastGLU`);
- mixed precision (`--amp`): bf16 autocast, or fp16 with loss scaling on GPUs without bf16 units
  (`--amp_dtype` forces either); spectral norm's power iteration stays in float32 under it;
- `torch.compile` (`--compile`): G and D compiled into fused kernels (minutes of compiling first);
- DDP's local accumulation (`StepContext.local`): see distributed.py;
- `--deterministic`: the same numbers from the same seed on a GPU too (slower kernels, no TF32).

What "the same results" means where: on the CPU a run resumed from a checkpoint continues bit for bit,
and with every option off our step is bit-identical to bench.baseline_step (the authors' order of
operations on this project's networks). On CUDA by
default neither holds exactly: cuDNN picks its kernels by timing them (cudnn.benchmark), convolutions
use TF32, Adam is the fused kernel (the baseline step: the plain one), and some backward kernels add
in a varying order; results agree to float tolerance. `--deterministic` makes CUDA runs repeatable
(a resume continues bit for bit) at some speed; it does not make our step equal the baseline step.

`SPEED_DEFAULTS` turns an option on by default only on a device where `bench.py --compare` measured
it faster (figures and commands in docs/speed.md).
It imports the paper's generator (its up-blocks, and G for the fold's check) and `cli.UsageError`.
"""

import argparse
import contextlib
import functools
import os

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import _SpectralNorm, spectral_norm

from generator import Generator, UpBlock, UpBlockComp
from plumbing.cli import UsageError

# None on the command line means the device's default. On the CPU each option is on because
# `bench.py --compare` measured the step faster with it (docs/speed.md has the figures): the fold
# (fewer multiply-adds, no upsampled map), channels_last for both networks (oneDNN's transposed,
# strided and low-channel convolutions skip their layout copies in NHWC), and bf16 autocast where the
# CPU computes bf16 natively ("native_bf16", see `cpu_bf16_is_native`; emulated bf16 is slower than
# float32). On CUDA every option stays off until measured there.
SPEED_DEFAULTS = {
    "cpu": {"fast_upsample": True, "channels_last": "GD", "amp": "native_bf16", "compile": False},
    "cuda": {"fast_upsample": False, "channels_last": False, "amp": False, "compile": False},
}
# Apple's MPS (written for it, never measured on it by this project): every option off.
SPEED_DEFAULTS["mps"] = dict.fromkeys(SPEED_DEFAULTS["cuda"], False)


# --channels_last's values: which networks run in NHWC (False: neither).
CHANNELS_LAST = ("D", "GD")


def speed_flag_argv(args):
    """The command-line flags that give another process the speed options `args` holds."""
    argv = [f"--{k}" if getattr(args, k) else f"--no-{k}" for k in ("fast_upsample", "amp", "compile")]
    argv += [f"--channels_last={args.channels_last}" if args.channels_last else "--no-channels_last"]
    return argv + ["--amp_dtype", args.amp_dtype] + (["--deterministic"] if args.deterministic else [])


def add_speed_arguments(parser):
    """The four speed flags, shared by train.py and bench.py. None (not given) means the device's default."""
    speed = parser.add_argument_group("speed (see speed.py; default: on where measured faster on the device)")
    flag = dict(action=argparse.BooleanOptionalAction, default=None)
    speed.add_argument("--fast_upsample", **flag, help="each up-block's nearest x2 + 3x3 conv as one "
                       "stride-2 transposed conv, the same function, in the blocks checked to be that pair "
                       "(default: on for CPU)")
    speed.add_argument("--channels_last", nargs="?", const="GD", choices=CHANNELS_LAST, default=None,
                       help="NHWC memory layout for D, or for both networks (no value: GD) (default: GD on "
                       "CPU without --compile, off elsewhere)")
    speed.add_argument("--no-channels_last", dest="channels_last", action="store_const", const=False,
                       help="NCHW memory layout for both networks")
    speed.add_argument("--amp", **flag, help="mixed precision: bf16, or fp16 with loss scaling (default: on "
                       "for a CPU with native bf16, off elsewhere)")
    speed.add_argument("--compile", **flag, help="torch.compile G and D after minutes of compiling (on the "
                       "CPU in NCHW unless --channels_last is given)")
    speed.add_argument("--amp_dtype", choices=("auto", "bf16", "fp16"), default="auto", help="--amp's "
                       "precision. auto: bf16 where the device computes it natively, else fp16 with loss scaling")
    speed.add_argument("--deterministic", action="store_true", help="repeatable results on a GPU: "
                       "deterministic algorithms, no cuDNN autotuning, no TF32 (slower; see speed.py)")


def resolve_speed_flags(args, device):
    """Fill each speed flag left at None with the device's default. Returns {flag: why} for the
    precision (`args.amp`): given on the command line, or the device's default and its reason."""
    why = {"amp": "--amp given" if args.amp else "--no-amp given"} if getattr(args, "amp", None) is not None else {}
    if device.type == "cpu" and getattr(args, "compile", None) and getattr(args, "channels_last", None) is None:
        # --compile on the CPU: NCHW unless asked. With both networks in NHWC, torch 2.14.1's compiler
        # produced G code that crashed the process (a segfault, at 256x256, ngf 64, batch 8, float32);
        # in NCHW it ran. Compiling was not faster than eager on the CPU anyway (docs/speed.md).
        args.channels_last = False
    for flag, default in SPEED_DEFAULTS[device.type].items():
        if getattr(args, flag, None) is None:
            if default == "native_bf16":
                default, why[flag] = cpu_bf16_is_native()
            setattr(args, flag, default)
    if args.amp and not torch.amp.is_autocast_available(device.type):   # MPS: PyTorch 2.5 or newer
        raise UsageError(f"--amp: this PyTorch has no autocast on {device.type}; drop --amp (or update PyTorch)")
    if getattr(args, "deterministic", False):
        make_deterministic()
    why.setdefault("amp", f"default on {device.type}: off until measured faster there")
    return why


def make_deterministic():
    """PyTorch's recipe for reproducible runs (docs: "Reproducibility"): only deterministic algorithms,
    cuDNN's deterministic convolutions without autotuning, full float32 instead of TF32 in
    convolutions and matrix products, and the cuBLAS workspace setting that deterministic cuBLAS
    needs (read when cuBLAS starts, so before the first matrix product).

    warn_only: an op PyTorch marks as nondeterministic is run with a warning that names it, not
    refused. On CUDA that is the backward of adaptive average pooling (SLE's pool to 4x4, the small
    decoder's pool to 8x8; `F.interpolate(mode="area")` in D's resize to 128x128), which adds into
    the input's gradient with atomic adds. Here every input size is a multiple of the output size,
    so each gradient element receives exactly one addition and the order of additions cannot change
    it: the run is still repeatable (docs/gpu_check.sh compares two runs bit for bit)."""
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


# ------------------------------------------------------------------------------------------------
# Does this CPU compute bf16 natively?
# ------------------------------------------------------------------------------------------------

def cpu_bf16_probes():
    """What this torch reports about the CPU: (oneDNN runs bf16 convolutions and matmuls, ATen's vector
    instruction set: 'AVX512', 'AVX2', 'DEFAULT', ..., the CPU has bf16 instructions: AVX512_BF16 or AMX).

    The first two follow the environment (ONEDNN_MAX_CPU_ISA=AVX2 and ATEN_CPU_CAPABILITY=avx2 lower
    them); the third is the hardware's, read by cpuinfo. oneDNN says yes on every AVX-512 CPU, also
    on those without bf16 instructions (Skylake to Ice Lake Xeons, Ice and Tiger Lake laptops): there
    it converts bf16 with AVX-512 integer instructions, and a step is slower than in float32
    (docs/speed.md). A torch without the third probe counts as no bf16 instructions (float32)."""
    try:
        bf16_instructions = torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported()
    except AttributeError:
        bf16_instructions = False
    return (torch.ops.mkldnn._is_mkldnn_bf16_supported(), torch.backends.cpu.get_cpu_capability(),
            bf16_instructions)


def cpu_bf16_is_native():
    """(True, why) when bf16 autocast runs on the CPU's own bf16 units, (False, why) when it would be
    emulated. Native needs all three probes: oneDNN's bf16 kernels (the convolutions, most of a step),
    ATen's AVX-512 kernels (BatchNorm, GLU and the elementwise work in bf16) and the CPU's bf16
    instructions. With AVX2 only, or a oneDNN without bf16, each bf16 value is converted in software;
    on AVX-512 without bf16 instructions, with integer instructions: both slower than float32
    (docs/speed.md)."""
    onednn_bf16, isa, bf16_instructions = cpu_bf16_probes()
    native = bool(onednn_bf16) and isa.upper().startswith(("AVX512", "AMX")) and bool(bf16_instructions)
    return native, (f"default on this CPU: bf16 {'native' if native else 'emulated'} "
                    f"(oneDNN bf16 {'yes' if onednn_bf16 else 'no'}, ATen {isa}, "
                    f"bf16 instructions {'yes' if bf16_instructions else 'no'})")


# ------------------------------------------------------------------------------------------------
# The upsample fold
# ------------------------------------------------------------------------------------------------

def _fold_3x3_to_4x4(w):
    """The 4 taps of the transposed convolution along the last axis, from the 3 taps of the 3x3 kernel.

    After a nearest x2 upsample u[2i] = u[2i+1] = x[i], the 3-tap window (w0, w1, w2) of output row
    2m covers u[2m-1], u[2m], u[2m+1] = x[m-1], x[m], x[m]:   y[2m]   = w0 x[m-1] + (w1 + w2) x[m]
    and of output row 2m+1 covers x[m], x[m], x[m+1]:          y[2m+1] = (w0 + w1) x[m] + w2 x[m+1].
    A transposed convolution with stride 2 and padding 1 computes y[o] = sum_i x[i] K[o + 1 - 2i], so
    K[3] = w0, K[1] = w1 + w2 (row 2m) and K[2] = w0 + w1, K[0] = w2 (row 2m+1).
    (..., 3) -> (..., 4)."""
    w0, w1, w2 = w.unbind(-1)
    return torch.stack([w2, w1 + w2, w0 + w1, w0], dim=-1)


def upsample_conv3x3(x, weight):
    """conv3x3(nearest_upsample_x2(x)) with padding 1, computed on the small map: the same function
    with 2.25x fewer multiply-adds and without storing the 4x larger upsampled map for backward.

    After a nearest x2 upsample, the 3x3 window of each output pixel covers only 2x2 distinct pixels
    of x, with sums of the 3x3 kernel's taps as weights that depend on the output pixel's parity
    (`_fold_3x3_to_4x4`). That is exactly a transposed convolution of x with stride 2 and a 4x4
    kernel: one library call, no upsampled map, no copies.
    x (B, C_in, H, W), weight (C_out, C_in, 3, 3) -> (B, C_out, 2H, 2W)."""
    # conv_transpose2d wants its weight as (C_in, C_out, kH, kW): fold the transposed view, so that the
    # 4x4 kernel is built in that order and is contiguous (no copy of it before the call, none of its
    # gradient after; at ngf 64 G's first folded kernel is 512 x 512 x 4 x 4 floats).
    w = weight.transpose(0, 1)                                         # (C_in, C_out, 3, 3), a view
    r0, r1, r2 = w.unbind(-2)                                          # the kernel's rows, (C_in, C_out, 3)
    k = torch.stack([_fold_3x3_to_4x4(r) for r in (r2, r1 + r2, r0 + r1, r0)], dim=-2)  # rows folded as columns
    return F.conv_transpose2d(x, k, stride=2, padding=1)               # (C_in, C_out, 4, 4) -> (B, C_out, 2H, 2W)


# The smallest map the fold is used on: on smaller maps (G's 4x4 input map) oneDNN's transposed
# convolution was measured slower than the upsample and plain convolution (docs/speed.md), so the
# block that reads a 4x4 map is left as written.
FOLD_FROM = 8


class FoldedUpsample(nn.Identity):
    """Stands where an up-block's `nn.Upsample` stood once the fold has moved the upsampling into the
    next convolution (`UpsampleConv3x3`): it passes the small map on unchanged, and says so in print(G)."""

    def extra_repr(self):
        return "nearest x2: done by the next conv (UpsampleConv3x3)"


class UpsampleConv3x3(nn.Conv2d):
    """A 3x3 conv (stride 1, padding 1) that takes the map *before* a nearest x2 upsample and applies
    both at once (`upsample_conv3x3`). Its parameters, spectral norm included, are those of the conv it
    replaces, under the same names, so checkpoints do not depend on the option."""

    def forward(self, x):
        return upsample_conv3x3(x, self.weight)   # (B, C_in, H, W) -> (B, C_out, 2H, 2W)

    def extra_repr(self):
        return super().extra_repr() + ", after a nearest x2 upsample: one stride-2 4x4 transposed conv"


def _why_not_foldable(block):
    """None if `block` is an up-block the fold knows: `up` = nn.Upsample(scale_factor=2, mode='nearest')
    followed by its first conv, a plain 3x3 nn.Conv2d with stride 1, padding 1, no bias. Otherwise the
    reason, in a few words."""
    up, conv = getattr(block, "up", None), getattr(block, _first_conv_name(block), None)
    if not isinstance(up, nn.Upsample):
        return f"its upsampling is {type(up).__name__}, not nn.Upsample"
    if up.mode != "nearest":
        return f"it upsamples with mode={up.mode!r}, not 'nearest'"
    if up.size is not None or up.scale_factor not in (2, 2.0, (2, 2), (2.0, 2.0)):
        return f"it upsamples by scale_factor={up.scale_factor!r}, size={up.size!r}, not x2"
    kind = parametrize.type_before_parametrizations(conv) if conv is not None else None
    if kind is not nn.Conv2d:
        return f"its first conv is {getattr(kind, '__name__', kind)}, not nn.Conv2d"
    params = dict(getattr(conv, "parametrizations", {}).items())     # {tensor name: its parametrizations}
    if set(params) - {"weight"} or not all(isinstance(p, _SpectralNorm) for p in params.get("weight", [])):
        return "its first conv has a parametrization other than spectral norm on its weight"
    shape = dict(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1), groups=1,
                 padding_mode="zeros")
    for attr, want in shape.items():
        if getattr(conv, attr) != want:
            return f"its first conv has {attr}={getattr(conv, attr)!r}, not {want!r}"
    if conv.bias is not None:
        return "its first conv has a bias"
    return None


def _first_conv_name(block):
    return "conv1" if isinstance(block, UpBlockComp) else "conv"


def _folded_conv(old):
    """An UpsampleConv3x3 with `old`'s weight (and spectral norm's vectors, when `old` has them)."""
    with torch.random.fork_rng(devices=[]):   # building the new conv draws no number of the run's
        new = UpsampleConv3x3(old.in_channels, old.out_channels, 3, 1, 1, bias=False)
        if parametrize.is_parametrized(old, "weight"):
            new = spectral_norm(new)
    new.load_state_dict(old.state_dict())     # the same weight and power-iteration vectors
    return new.to(old.weight.device).train(old.training)


def _example_call(net):
    """A zero-argument function running `net` (a Generator or Discriminator) on a batch of 2 random
    inputs drawn from a private generator, decoders included."""
    g = torch.Generator().manual_seed(0)
    device = next(net.parameters()).device
    if isinstance(net, Generator):
        z = torch.randn(2, net.nz, generator=g).to(device)
        y = torch.zeros(2, dtype=torch.long, device=device) if net.class_embedding is not None else None
        return lambda: net(z, y=y)
    img = torch.rand(2, net.nc, net.im_size, net.im_size, generator=g).to(device) * 2 - 1
    img_128 = torch.rand(2, net.nc, 128, 128, generator=g).to(device) * 2 - 1
    return lambda: net(img, img_128, part=0)


def fold_upsample(net, name="net"):
    """Fold each up-block of `net` (G's, and those of D's decoders) whose upsample + first conv is the
    pair the fold knows: `up` becomes a FoldedUpsample and the conv an UpsampleConv3x3 with the same
    weights. A block is folded only after two checks: its modules are exactly the known pair
    (`_why_not_foldable`), and the block gives the same output folded as written, on the input it gets
    in one forward of `net` (so a block whose forward was edited to do something between the two is
    left alone). Every other block is left as written. Call before the optimisers are made: a folded
    conv's parameters are new tensors (with the same values).

    Returns (the number of blocks folded, [('NAME.PATH', why), ...] for each block left as written)."""
    blocks = {path: m for path, m in net.named_modules() if isinstance(m, (UpBlock, UpBlockComp))}
    calls = {}
    hooks = [m.register_forward_pre_hook(functools.partial(_remember_call, calls, path), with_kwargs=True)
             for path, m in blocks.items()]
    was_training = {m: m.training for m in net.modules()}
    net.eval()                                # no running statistics or power iterations move
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            _example_call(net)()
            folded, left = 0, []
            for path, block in blocks.items():
                why = _why_not_foldable(block) or _why_not_same(block, calls.get(path))
                if why:
                    left.append((f"{name}.{path}", why))
                else:
                    folded += 1
    finally:
        for h in hooks:
            h.remove()
        net.train(was_training[net])          # the new modules too
        for m, training in was_training.items():
            m.training = training
    return folded, left


def left_as_written(left):
    """[(block, why), ...] as one phrase, the blocks grouped by why: 'why: A, B; why2: C' ('none')."""
    by_why = {}
    for block, why in left:
        by_why.setdefault(why, []).append(block)
    return "; ".join(f"{why}: {', '.join(blocks)}" for why, blocks in by_why.items()) or "none"


def _remember_call(calls, path, module, args, kwargs):
    calls.setdefault(path, (args, kwargs))


def _why_not_same(block, call):
    """Fold `block` and check that it computes what it did, on its remembered call; if it does not,
    put the block back as it was and say why. Returns None once folded."""
    if call is None:
        return "it did not run in a forward of the network"
    args, kwargs = call
    if args[0].shape[-1] < FOLD_FROM:
        return f"its input is {args[0].shape[-1]}x{args[0].shape[-1]}, where the fold is slower (below {FOLD_FROM}x{FOLD_FROM})"
    conv_name = _first_conv_name(block)
    up, conv = block.up, getattr(block, conv_name)
    before = block(*args, **kwargs)
    block.up, new = FoldedUpsample(), _folded_conv(conv)
    setattr(block, conv_name, new)
    try:
        after = block(*args, **kwargs)
        error = (after - before).abs().max().item() if after.shape == before.shape else float("inf")
    except RuntimeError:                      # e.g. a shape that no longer fits
        error = float("inf")
    if error <= 1e-4 * max(before.abs().max().item(), 1.0):
        return None
    block.up = up
    setattr(block, conv_name, conv)
    return "folded, it computed something else (its forward is not upsample then conv)"


# ------------------------------------------------------------------------------------------------
# Applying the options, and the step's context
# ------------------------------------------------------------------------------------------------

def speed_up(G, D, args, device, processes=1, say=None):
    """Apply the speed options to freshly built networks (before the optimisers are made); returns
    the (possibly compiled) networks to train with. The plain modules stay reachable through
    distributed.unwrap, and their state_dict keys do not depend on any option. `say`, if given, is
    handed one line naming what the fold and the GLU swap left as written, and why.
    Under torchrun (`processes` > 1) --compile is left to distributed.wrap_distributed, which compiles
    the DDP modules, as PyTorch advises (its DDPOptimizer then splits the graphs at DDP's gradient buckets)."""
    if device.type == "cuda" and not getattr(args, "deterministic", False):
        torch.backends.cudnn.benchmark = True   # fixed shapes every iteration: let cuDNN pick its fastest kernels
    if args.fast_upsample:
        (n_g, left_g), (n_d, left_d) = fold_upsample(G, "G"), fold_upsample(D, "D")  # D: its decoders' up-blocks
        if say:
            say(f"fast_upsample: {n_g + n_d} of {n_g + n_d + len(left_g + left_d)} up-blocks folded (nearest x2 + "
                f"3x3 conv as one transposed conv); left as written: {left_as_written(left_g + left_d)}")
    if args.amp:
        power_iteration_in_float32(G)
        power_iteration_in_float32(D)
    for name, net in (("G", G), ("D", D)):
        if name in (args.channels_last or ""):            # "D" or "GD"; False: neither
            net.to(memory_format=torch.channels_last)
            keep_batchnorm_gradients_in_layout(net)
            left = glu_for_channels_last(net, name)
            if left and say:
                say(f"channels_last: GLUs left as written (not over the channels): {', '.join(left)}")
    if args.compile and processes == 1:         # fuse BatchNorm/GLU/LeakyReLU/elementwise work into few kernels
        G, D = torch.compile(G), torch.compile(D)
    return G, D


def keep_batchnorm_gradients_in_layout(net):
    """Hand each BatchNorm of `net` its output's gradient in the memory layout of that output.

    In a channels_last network some gradients arrive in NCHW (some backward kernels write a plain
    contiguous tensor whatever the layout of their input). BatchNorm's CPU backward
    with an NHWC input and an NCHW gradient takes a generic path, far slower than with both in NHWC
    (docs/speed.md); converting the gradient first costs one copy.
    A gradient hook on the output tensor does it: it sees the gradient with respect to BatchNorm's
    output (before the in-place LeakyReLU that follows changes that tensor) and changes only its
    layout, never its values."""
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.register_forward_hook(_gradient_in_output_layout)
    return net


def _gradient_in_output_layout(module, inputs, output):
    if output.requires_grad and output.dim() == 4:
        layout = torch.channels_last if _is_channels_last(output) else torch.contiguous_format
        output.register_hook(lambda grad: grad.contiguous(memory_format=layout))


def _is_channels_last(x):
    return x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()


class ChannelsLastGLU(nn.GLU):
    """nn.GLU over the channels that stays fast on an NHWC map: the same values, another kernel.

    On an NHWC (channels_last) map, ATen's GLU backward over dim 1 reads the two halves of the
    channels as strided views and takes a generic path, several times slower than on NCHW
    (docs/speed.md). Seen as (B, H, W, C), the same NHWC memory is
    contiguous and the channels are the last dim: GLU over that dim runs at NCHW speed, and
    permuting back gives the (B, C, H, W) result, itself NHWC, without a copy. Forward values are
    bit for bit those of nn.GLU; gradients agree to float rounding."""

    def forward(self, x):
        if self.dim == 1 and x.dim() == 4 and _is_channels_last(x):
            out = F.glu(x.permute(0, 2, 3, 1), dim=-1)   # (B, H, W, 2C) -> (B, H, W, C), contiguous
            return out.permute(0, 3, 1, 2)              # (B, C, H, W), channels_last
        return super().forward(x)


def glu_for_channels_last(net, name="net"):
    """Replace every nn.GLU over the channels (dim 1) of `net` by a ChannelsLastGLU (GLU has no
    parameters, so checkpoints are unchanged). Returns ['NAME.PATH (dim=D)', ...] for the GLUs over
    another dim, left as written."""
    left = []
    for path, parent in list(net.named_modules()):
        for child_name, child in list(parent.named_children()):
            if type(child) is nn.GLU and child.dim in (1, -3):
                setattr(parent, child_name, ChannelsLastGLU(child.dim))
            elif type(child) is nn.GLU:
                left.append(f"{name}.{path + '.' if path else ''}{child_name} (dim={child.dim})")
    return left


def fused_adam(device, compile=False):
    """Whether Adam uses its fused kernel (one kernel for all of a network's parameters): on CUDA,
    except with --compile. The fused step requires each gradient to have its weight's memory layout,
    and a compiled backward may give 1x1 convolutions' weight gradients other strides (inductor
    picks its own output layouts); the default multi-tensor Adam accepts any layout. The CPU's plain Adam is what
    bench.baseline_step uses, so that both compute the same bits there."""
    return device.type == "cuda" and not compile


def power_iteration_in_float32(net):
    """Run every spectral norm of `net` (its power iteration, sigma and W / sigma) with autocast off.

    CUDA's autocast casts torch.mv to fp16/bf16 (the CPU's does not), so under --amp the power
    iteration would estimate sigma, the largest singular value of W, in 8 (bf16) or 11 (fp16) bits,
    and torch's spectral norm then mixes that with its float32 vectors (a crash in some versions).
    The weights the convolutions see are still cast by autocast, as without spectral norm.
    The spectral norms are torch's own (torch.nn.utils.parametrizations.spectral_norm); only the
    call of each one's forward is wrapped, so parameters, buffers and checkpoints are unchanged."""
    for module in net.modules():
        if isinstance(module, _SpectralNorm) and not isinstance(module.forward, functools.partial):
            module.forward = functools.partial(_without_autocast, module.forward)
    return net


def _without_autocast(forward, weight):
    with torch.autocast(weight.device.type, enabled=False):
        return forward(weight)


def cuda_has_native_bf16(device):
    """Whether the GPU computes bf16 in hardware (NVIDIA: compute capability 8.0, Ampere, and newer).
    torch.cuda.is_bf16_supported() also says yes where bf16 is only emulated (T4, V100, RTX 2080 Ti):
    slow, and without cuDNN's bf16 convolutions there, so it is asked not to count emulation."""
    try:
        return torch.cuda.is_bf16_supported(including_emulation=False)
    except TypeError:                           # a torch without the argument
        return torch.cuda.get_device_capability(device) >= (8, 0)


def amp_dtype(device, choice="auto"):
    """The precision of --amp: 'bf16' or 'fp16' as asked; 'auto': bf16 (needs no loss scaling) on
    the CPU and on GPUs with bf16 units, fp16 (with a GradScaler, see StepContext) on older GPUs."""
    if choice == "auto":
        choice = "fp16" if device.type == "cuda" and not cuda_has_native_bf16(device) else "bf16"
    return torch.float16 if choice == "fp16" else torch.bfloat16


class StepContext:
    """How a training step runs, not what it computes: autocast for the forward passes, loss scaling
    for fp16, and DDP's local gradient accumulation. With every option off (one process, float32) each
    method is the plain operation: `autocast()` and `local(D)` do nothing, `backward(loss)` is
    `loss.backward()`, `step(opt)` is `opt.step()`.

    Each optimiser has its own GradScaler under fp16, stepped and updated right after its own backward
    passes, so the two networks' loss scales never interfere.

    `processes`: how many processes train together (torchrun; 1 otherwise). DDP *averages* gradients
    over them, which keeps a per-process mean a mean over the global batch, but turns a per-process
    *sum* (the reconstruction term) into a sum over batch/processes images. Multiplying a sum by
    `processes` makes it, after the averaging, the sum over the global batch, as in one process."""

    def __init__(self, device, amp=False, opts=(), processes=1, dtype="auto"):
        self.device_type = device.type
        self.processes = processes
        self.dtype = amp_dtype(device, dtype) if amp else None
        self.scalers = {}
        if self.dtype == torch.float16:          # fp16's range needs loss scaling; bf16's does not
            self.scalers = {id(opt): torch.amp.GradScaler(device.type) for opt in opts}
        self._names = {id(opt): i for i, opt in enumerate(opts)}

    def autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    @staticmethod
    def local(net):
        """Accumulate gradients without averaging them across processes (DDP's no_sync); the next
        backward outside it averages everything accumulated. Without DDP: nothing."""
        return net.no_sync() if hasattr(net, "no_sync") else contextlib.nullcontext()

    def backward(self, loss, opt):
        scaler = self.scalers.get(id(opt))
        (scaler.scale(loss) if scaler else loss).backward()

    def step(self, opt):
        scaler = self.scalers.get(id(opt))
        if scaler:
            scaler.step(opt)
            scaler.update()
        else:
            opt.step()

    def state_dict(self):
        """The scalers' states by optimiser position (0: G's, 1: D's), for the checkpoint."""
        return {self._names[k]: s.state_dict() for k, s in self.scalers.items()}

    def load_state_dict(self, state):
        for k, s in self.scalers.items():
            if self._names[k] in (state or {}):
                s.load_state_dict(state[self._names[k]])
