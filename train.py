"""Train FastGAN on a folder of images: paper §3-4, Eq. 3-4.

    python train.py --path data/panda                         # one GPU, the paper's setting: 1024x1024, batch 8
    python train.py --path data/panda --im_size 128 --ngf 32 --ndf 32 --device cpu   # a laptop CPU
    torchrun --nproc_per_node=4 train.py --path data/panda    # 4 GPUs of one machine; --batch_size counts all 4
    # 2 machines of 4 GPUs: run this on each, with --node_rank=1 on the second; HOST is the first's address
    torchrun --nnodes=2 --node_rank=0 --nproc_per_node=4 --master_addr=HOST --master_port=29500 train.py --path data/panda

Read top to bottom, this file follows the paper:
  1. data: a few-shot folder of images, decoded once, kept on the device as uint8;
  2. networks (generator.py, discriminator.py), Adam (lr 2e-4, betas 0.5/0.999), an EMA copy of G;
  3. one training iteration (`train_step`): DiffAugment, D's hinge loss with the margin drawn from
     U[0.8, 1] plus the decoders' reconstruction loss (Eq. 2-3), G's loss -E[D(G(z))] (Eq. 4), EMA;
  4. the loop: progress, loss log, sample grids, atomic checkpoints, resume, Ctrl-C and NaN handling.

Everything a run writes goes to OUT/NAME/ (default runs/<data folder name>/):
  checkpoints/NNNNNN.pt, checkpoints/latest.pt, images/, log.jsonl, args.json.
"""

import argparse
import contextlib
import json
import math
import os
import random
import signal
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from diffaug import diff_augment
from discriminator import Discriminator, crop_quarter
from generator import SUPPORTED_SIZES, Generator, use_fast_upsample

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
CHECKPOINT_FORMAT = "fastgan-checkpoint-v1"  # marks a checkpoint as ours


class UsageError(Exception):
    """Input we refuse. The scripts print its message as one line on stderr and exit 2, no traceback."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad command line is one line on stderr (the usage is in --help), exit code 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


# ------------------------------------------------------------------------------------------------
# 1. Data
# ------------------------------------------------------------------------------------------------

def find_images(folder):
    """Every file under `folder` (recursively) with an image extension, sorted for a fixed order."""
    folder = Path(folder)
    if not folder.is_dir():
        raise UsageError(f"{folder}: no such folder")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())


def to_rgb(img):
    """Any PIL image as 8-bit RGB: grey and palette are expanded, transparency is composited on white,
    CMYK is converted, 16- and 32-bit greys are scaled down to 8 bits instead of being clipped."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(img, dtype=np.float64)
        peak = 65535.0 if img.mode != "F" and a.max() > 255 else (1.0 if img.mode == "F" else 255.0)
        img = Image.fromarray(np.clip(a / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if img.mode == "P" or img.mode == "LA" or (img.mode == "L" and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    return img.convert("RGB")


def load_image(path, im_size):
    """Decode one file: ((3, im_size, im_size) uint8 array, (original width, height)). Non-square images
    are stretched to a square, as the authors' `transforms.Resize((im_size, im_size))` does. Raises if
    the file does not decode."""
    with Image.open(path) as img:
        img.load()
        original_size = img.size
        img = to_rgb(img)
    if img.size != (im_size, im_size):
        img = img.resize((im_size, im_size), Image.Resampling.LANCZOS)
    return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1).copy(), original_size


def load_images(folder, im_size, log=print):
    """The whole few-shot set as one uint8 tensor (N, 3, im_size, im_size), decoded once.

    Files that do not decode are named, skipped and counted; images that are smaller than im_size
    or not square are resized, with one line saying how many. No image at all is a UsageError."""
    paths = find_images(folder)
    arrays, bad, resized = [], [], 0
    for p in paths:
        try:
            a, (w, h) = load_image(p, im_size)
        except Exception as e:  # PIL raises several types for broken files
            bad.append(p)
            log(f"warning: skipping {p}: not a readable image ({type(e).__name__})")
            continue
        resized += (w != h) or w < im_size
        arrays.append(a)
    if not arrays:
        raise UsageError(f"{folder}: no readable images found (looked for {', '.join(IMAGE_EXTENSIONS)}, "
                         f"recursively{f'; {len(bad)} file(s) failed to decode' if bad else ''})")
    if bad:
        log(f"warning: skipped {len(bad)} unreadable file(s) of {len(paths)}")
    if resized:
        log(f"note: {resized} of {len(arrays)} images were smaller than {im_size} or not square; "
            f"resized to {im_size}x{im_size}")
    return torch.from_numpy(np.stack(arrays))


def flip_and_normalise(batch_uint8):
    """uint8 (B, C, H, W) on the device -> float in [-1, 1], each image flipped left-right with p = 0.5
    (the authors' only data augmentation besides DiffAugment). Done on the device: no host round trip."""
    x = batch_uint8.float().div_(127.5).sub_(1.0)                                    # (B, C, H, W)
    flip = torch.rand(x.shape[0], 1, 1, 1, device=x.device) < 0.5                    # (B, 1, 1, 1)
    return torch.where(flip, x.flip(3), x)


class InMemoryData:
    """A few-shot set lives on the training device as one uint8 tensor: 100 images at 1024x1024 are
    300 MB, far cheaper than decoding JPEGs every iteration. Batches are drawn there, without
    replacement within a batch, by the device's own random generator (no host synchronisation)."""

    def __init__(self, images_uint8, device, channels_last=False):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        self.images = images_uint8.to(device).contiguous(memory_format=fmt)   # (N, 3, S, S) uint8
        self.device = device

    def __len__(self):
        return self.images.shape[0]

    def batch(self, batch_size, iteration):
        n = len(self)
        if n >= batch_size:
            idx = torch.randperm(n, device=self.device)[:batch_size]
        else:  # fewer images than the batch: draw with replacement
            idx = torch.randint(n, (batch_size,), device=self.device)
        return flip_and_normalise(self.images[idx])


class _FileDataset(torch.utils.data.Dataset):
    def __init__(self, paths, im_size):
        self.paths, self.im_size = paths, im_size

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        try:
            return torch.from_numpy(load_image(self.paths[i], self.im_size)[0])
        except Exception:  # a file broken since the scan: show a black image rather than stop the run
            return torch.zeros(3, self.im_size, self.im_size, dtype=torch.uint8)


class _IterationBatches(torch.utils.data.Sampler):
    """Batch k of the stream is a function of (seed, k) alone, so a resumed run reads the same images."""

    def __init__(self, n, batch_size, seed, start):
        self.n, self.batch_size, self.seed, self.start = n, batch_size, seed, start

    def __iter__(self):
        k = self.start
        while True:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + k)
            if self.n >= self.batch_size:
                yield torch.randperm(self.n, generator=g)[:self.batch_size].tolist()
            else:
                yield torch.randint(self.n, (self.batch_size,), generator=g).tolist()
            k += 1


class StreamingData:
    """A set too large for memory (FFHQ: 70k images) is decoded by worker processes every iteration."""

    def __init__(self, paths, im_size, batch_size, device, seed, start, workers, channels_last=False):
        self.device, self.channels_last = device, channels_last
        self.n = len(paths)
        loader = torch.utils.data.DataLoader(
            _FileDataset(paths, im_size), batch_sampler=_IterationBatches(self.n, batch_size, seed, start),
            num_workers=workers, pin_memory=str(device).startswith("cuda"),
            persistent_workers=workers > 0)
        self.stream = iter(loader)

    def __len__(self):
        return self.n

    def batch(self, batch_size, iteration):
        x = next(self.stream).to(self.device, non_blocking=True)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return flip_and_normalise(x)


# ------------------------------------------------------------------------------------------------
# 2. Networks, optimisers and the EMA generator
# ------------------------------------------------------------------------------------------------

def build_generator(im_size, ngf=64, nz=256, no_sle=False):
    G = Generator(ngf=ngf, nz=nz, im_size=im_size)
    if no_sle:       # ablation: the high-resolution maps pass through ungated
        G.sle = torch.nn.ModuleDict()
    return G


def build_discriminator(im_size, ndf=64, no_sle=False, no_recon=False):
    D = Discriminator(ndf=ndf, im_size=im_size)
    if no_sle:
        D.sle = torch.nn.ModuleDict()
    if no_recon:     # ablation: a plain discriminator, no decoders and no L_recons
        D.decoder_big = D.decoder_part = D.decoder_small = None
    return D


def build_networks(im_size, ngf=64, ndf=64, nz=256, no_sle=False, no_recon=False):
    """G then D, as in the paper. For the ablation (Table 2) the SLE modules and/or D's decoders are
    dropped *after* each network is built in full, so from one seed the layers that all variants
    share start from identical weights."""
    return build_generator(im_size, ngf, nz, no_sle), build_discriminator(im_size, ndf, no_sle, no_recon)


def unwrap(net):
    """The plain nn.Module under torch.compile's and DistributedDataParallel's wrappers."""
    while True:
        if hasattr(net, "_orig_mod"):
            net = net._orig_mod
        elif isinstance(net, torch.nn.parallel.DistributedDataParallel):
            net = net.module
        else:
            return net


class EMA:
    """The exponential moving average of G (decay 0.999, §4), from which every sample is drawn.

    Averaged: G's parameters and BatchNorm running statistics (the EMA generator runs in eval mode,
    so its running statistics must follow its averaged weights). Copied: the remaining buffers
    (BatchNorm's batch counter, spectral norm's power-iteration vectors). The tensor lists are built
    once; each update is a single fused `_foreach_lerp_` over all of them: ema += (1 - decay) * (g - ema)."""

    def __init__(self, G_ema, G):
        G_ema, G = unwrap(G_ema), unwrap(G)
        self.avg_dst, self.avg_src, self.copy_dst, self.copy_src = [], [], [], []
        for (_, pe), (_, p) in zip(G_ema.named_parameters(), G.named_parameters()):
            self.avg_dst.append(pe.data)
            self.avg_src.append(p.data)
        for (name, be), (_, b) in zip(G_ema.named_buffers(), G.named_buffers()):
            averaged = name.endswith("running_mean") or name.endswith("running_var")
            (self.avg_dst if averaged else self.copy_dst).append(be)
            (self.avg_src if averaged else self.copy_src).append(b)

    @torch.no_grad()
    def update(self, decay):
        torch._foreach_lerp_(self.avg_dst, self.avg_src, 1.0 - decay)
        torch._foreach_copy_(self.copy_dst, self.copy_src)


# Speed options (see README, "Speed and memory"). None on the command line means this device's default:
# on only where this project measured it faster on that device. On the CPU (2 cores, AVX2, no bf16
# units): fast_upsample makes the step about 25% faster at 256x256, ngf 64 (README's speed table);
# bf16 autocast was ~15x slower (emulated); channels_last was slower (ratio 0.92 instead of 0.75);
# compile was not timed. No GPU could be measured, so every option is off there until a GPU user's
# `python bench.py --compare --device cuda` says otherwise.
SPEED_DEFAULTS = {
    "cpu": {"fast_upsample": True, "channels_last": False, "amp": False, "compile": False},
    "cuda": {"fast_upsample": False, "channels_last": False, "amp": False, "compile": False},
}


def resolve_speed_flags(args, device):
    for flag, default in SPEED_DEFAULTS[device.type].items():
        if getattr(args, flag, None) is None:
            setattr(args, flag, default)


def make_optimizers(G, D, lr, device):
    """Adam, lr 2e-4, betas (0.5, 0.999) for both networks (§4). On CUDA the fused kernel updates all
    parameters in one launch instead of several per tensor."""
    kw = dict(lr=lr, betas=(0.5, 0.999))
    if device.type == "cuda":
        kw["fused"] = True
    return torch.optim.Adam(G.parameters(), **kw), torch.optim.Adam(D.parameters(), **kw)


def amp_setup(use_amp, device):
    """(autocast dtype or None, GradScaler or None). bf16 needs no loss scaling; fp16 (GPUs older than
    Ampere) does, so it comes with a GradScaler."""
    if not use_amp:
        return None, None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16, torch.amp.GradScaler("cuda")
    return torch.bfloat16, None


def speed_up(G, D, args, device):
    """Memory layout and compilation; returns the (possibly compiled) networks."""
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # fixed shapes every iteration: let cuDNN pick its fastest kernels
    if args.fast_upsample:                      # upsample + 3x3 conv as one transposed conv on the small map
        use_fast_upsample(G)
        use_fast_upsample(D)                    # D's decoders are made of the same up-blocks
    if args.channels_last:                      # NHWC: what cuDNN's fastest convolutions read (slower on our CPU)
        G.to(memory_format=torch.channels_last)
        D.to(memory_format=torch.channels_last)
    if args.compile:                            # fuse BatchNorm/GLU/LeakyReLU/elementwise work into few kernels
        G, D = torch.compile(G), torch.compile(D)
    return G, D


# ------------------------------------------------------------------------------------------------
# 3. One training iteration (Eq. 2-4)
# ------------------------------------------------------------------------------------------------

def resize_to_128(x):
    """(B, C, H, W) -> (B, C, 128, 128). Area averaging when shrinking (the authors use nearest, which
    aliases; area is the faithful downscale), nearest when growing (a 64x64 quarter at im_size 128)."""
    if x.shape[-1] == 128:
        return x
    return F.interpolate(x, size=(128, 128), mode="area" if x.shape[-1] > 128 else "nearest")


def hinge_real(logits):
    """D's hinge loss on reals (Eq. 3): E[relu(m - D(x))], margin m ~ U[0.8, 1] as in the authors' code."""
    return F.relu(torch.rand_like(logits) * 0.2 + 0.8 - logits).mean()


def hinge_fake(logits):
    """D's hinge loss on fakes (Eq. 3): E[relu(m + D(G(z)))], m ~ U[0.8, 1]."""
    return F.relu(torch.rand_like(logits) * 0.2 + 0.8 + logits).mean()


def both_logits(logits_big, logits_small):
    """The two branches' 5x5 logits as one vector (B*25 + B*25,): both count equally in every loss."""
    return torch.cat([logits_big.flatten(), logits_small.flatten()]).float()


def reconstruction_loss(recons, real_aug, part, kind="mse", target_128=None):
    """L_recons of Eq. 2, summed over the three decoders. Targets are the *augmented* real image D saw,
    resized to 128, and its quarter `part`, resized to 128. Ours is a pixel loss (mse or l1); the
    authors use LPIPS, which needs downloaded VGG weights (see README, 'Where we differ')."""
    dist = F.mse_loss if kind == "mse" else F.l1_loss
    if target_128 is None:
        target_128 = resize_to_128(real_aug)                     # (B, C, 128, 128)
    target_part = resize_to_128(crop_quarter(real_aug, part))    # (B, C, 128, 128)
    return (dist(recons["big"].float(), target_128) + dist(recons["small"].float(), target_128)
            + dist(recons["part"].float(), target_part))


def train_step(G, D, opt_G, opt_D, real, args, ema=None, scaler=None, amp_dtype=None):
    """One FastGAN iteration, in the authors' order. `real` is (B, nc, S, S) in [-1, 1] on the device.

    G and D may be wrapped by torch.compile and DistributedDataParallel (see `speed_up` and
    `wrap_distributed`). Returns the losses as 0-d tensors on the device: reading them (`.item()`)
    would make the host wait for the device, so the loop only does that every --log_every iterations."""
    autocast = torch.autocast(real.device.type, dtype=amp_dtype or torch.float32, enabled=amp_dtype is not None)
    # Under DDP, D's gradients are averaged across ranks once per D step (in its last backward) and
    # never for the G step; with one process this is a no-op.
    local_only = D.no_sync if isinstance(D, torch.nn.parallel.DistributedDataParallel) else contextlib.nullcontext
    B = real.shape[0]

    # One forward of G serves both steps: its output is detached for D's step, and its graph is
    # reused for G's step, so G never runs twice and never builds a graph it does not use.
    z = torch.randn(B, unwrap(G).nz, device=real.device)                            # (B, nz)
    with autocast:
        fake_big, fake_128 = G(z)                                                    # (B,3,S,S), (B,3,128,128)

    # DiffAugment on every image D sees (§4): the real batch, and each of G's outputs by its own call.
    real_aug = diff_augment(real, args.policy)
    fake_big_aug = diff_augment(fake_big, args.policy)
    fake_128_aug = diff_augment(fake_128, args.policy)

    # ---- D step (Eq. 3 + Eq. 2): hinge on reals and fakes, and reconstruct the reals ----
    D.requires_grad_(True)
    opt_D.zero_grad(set_to_none=True)
    with local_only():
        # The quarter decoder_part rebuilds (CPU RNG: no sync). Drawn even without decoders, so that
        # the ablation's variants (--no_recon) draw every later random number the same way.
        part = int(torch.randint(4, (1,)))
        with autocast:
            if args.no_recon:
                logits_real = both_logits(*D(real_aug, resize_to_128(real_aug)))
                loss_recon = torch.zeros((), device=real.device)
            else:
                real_128 = resize_to_128(real_aug)                           # D's second input, and a target
                lb, ls, recons = D(real_aug, real_128, part=part)
                logits_real = both_logits(lb, ls)
                loss_recon = reconstruction_loss(recons, real_aug.float(), part, args.recon, real_128.float())
            loss_real = hinge_real(logits_real)
        _backward(loss_real + loss_recon, scaler)
    with autocast:
        loss_fake = hinge_fake(both_logits(*D(fake_big_aug.detach(), fake_128_aug.detach())))
    _backward(loss_fake, scaler)
    _step(opt_D, scaler)

    # ---- G step (Eq. 4): -E[D(G(z))]. D is frozen: its weights' gradients are not even computed ----
    D.requires_grad_(False)
    opt_G.zero_grad(set_to_none=True)
    with local_only():
        with autocast:
            loss_g = -both_logits(*D(fake_big_aug, fake_128_aug)).mean()
        _backward(loss_g, scaler)
    _step(opt_G, scaler)
    if scaler is not None:
        scaler.update()

    if ema is not None:
        ema.update(args.ema)
    return {"d_real": loss_real.detach(), "d_fake": loss_fake.detach(),
            "recon": loss_recon.detach(), "g": loss_g.detach()}


def _backward(loss, scaler):
    (scaler.scale(loss) if scaler is not None else loss).backward()


def _step(opt, scaler):
    if scaler is not None:
        scaler.step(opt)
    else:
        opt.step()


# ------------------------------------------------------------------------------------------------
# 4. Checkpoints: everything needed to continue bit for bit, loadable with weights_only=True
# ------------------------------------------------------------------------------------------------

ARCH_KEYS = ("im_size", "ngf", "ndf", "nz", "no_sle", "no_recon")  # what a checkpoint's networks depend on


def rng_state():
    """Every random generator the run draws from, as tensors and plain Python values."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _plain(v):
    return v.item() if hasattr(v, "item") else v


def set_rng_state(state):
    random.setstate(_tuples(state["python"]))
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"][:torch.cuda.device_count()])


def _tuples(x):
    """random.setstate needs tuples where a round trip may give lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path, state):
    """Write `state` to `path` atomically: to a temporary file in the same folder, flushed to disk,
    then renamed over the old one. A crash or a full disk mid-save leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path, map_location="cpu"):
    """Read one of our checkpoints; anything else (missing, unreadable, someone else's) is a UsageError.
    weights_only=True: a checkpoint can hold tensors and plain values only, never code to run."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint file")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:
        raise UsageError(f"{path}: not a readable FastGAN checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'})")
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
        raise UsageError(f"{path}: not a checkpoint written by this project's train.py")
    return state


def checkpoint_state(G, D, G_ema, opt_G, opt_D, iteration, args, scaler=None):
    return {
        "format": CHECKPOINT_FORMAT,
        "iteration": iteration,
        "args": {k: v for k, v in vars(args).items()},
        "G": unwrap(G).state_dict(), "D": unwrap(D).state_dict(), "G_ema": unwrap(G_ema).state_dict(),
        "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": rng_state(),
    }


def generator_from_checkpoint(state, ema=True):
    """The (EMA by default) generator stored in a checkpoint, built from the checkpoint's own arguments."""
    a = state["args"]
    G = build_generator(a["im_size"], a["ngf"], a["nz"], a.get("no_sle", False))
    G.load_state_dict(state["G_ema" if ema else "G"])
    return G


# ------------------------------------------------------------------------------------------------
# Images a person can look at
# ------------------------------------------------------------------------------------------------

def to_uint8(x):
    """(B, C, H, W) floats in [-1, 1] -> uint8 (B, C, H, W) on the CPU."""
    return ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()


def save_grid(images, path, nrow=8, pad=2):
    """Save a batch (B, C, H, W) in [-1, 1] (float) or uint8 as one PNG grid of `nrow` columns."""
    images = images if images.dtype == torch.uint8 else to_uint8(images)
    B, C, H, W = images.shape
    ncol = min(nrow, B)
    rows = math.ceil(B / ncol)
    grid = torch.full((C, rows * (H + pad) + pad, ncol * (W + pad) + pad), 255, dtype=torch.uint8)
    for i in range(B):
        r, c = divmod(i, ncol)
        grid[:, pad + r * (H + pad):pad + r * (H + pad) + H, pad + c * (W + pad):pad + c * (W + pad) + W] = images[i]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(grid.permute(1, 2, 0).numpy().squeeze()).save(path)


def save_samples(G_ema, D, fixed_z, fixed_noise, show_real, part, out_dir, iteration):
    """images/NNNNNN_samples.png: EMA samples from fixed noise (the same latents every time, so the
    grids show training progress). images/NNNNNN_recons.png: each row is one real image, its 128x128
    version, D's reconstruction of it (decoder_big), the quarter `part`, decoder_part's
    reconstruction of that quarter, and decoder_small's reconstruction (§3.2). Draws no random numbers,
    so looking at a run never changes it."""
    with torch.no_grad():
        img, _ = G_ema(fixed_z, noise=fixed_noise)
        save_grid(img, Path(out_dir) / f"{iteration:06d}_samples.png", nrow=4)
        D = unwrap(D)
        if D.decoder_big is None:       # --no_recon: nothing to reconstruct
            return
        was_training = D.training
        D.eval()                        # running statistics: no batch-statistics update, no randomness
        _, _, rec = D(show_real, resize_to_128(show_real), part=part)
        D.train(was_training)
        real_128 = resize_to_128(show_real)
        quarter = resize_to_128(crop_quarter(show_real, part))
        rows = torch.stack([real_128, rec["big"], quarter, rec["part"], rec["small"]], dim=1)  # (B, 5, C, 128, 128)
        save_grid(rows.flatten(0, 1).float(), Path(out_dir) / f"{iteration:06d}_recons.png", nrow=5)


def evaluate(G_ema, real_uint8, n, seed, device, batch_size=16):
    """Score n EMA samples against the training images with metrics.py: SWD always, FID/KID when the
    optional package is installed. The latents come from their own generator, so evaluating never
    changes the run."""
    import metrics   # a script's functions, imported only by runs that evaluate
    g = torch.Generator().manual_seed(seed + 1)
    fakes = []
    with torch.no_grad():
        for i in range(0, n, batch_size):
            b = min(batch_size, n - i)
            z = torch.randn(b, G_ema.nz, generator=g).to(device)
            noise = {r: [t.to(device) for t in ts] for r, ts in G_ema.draw_noise(b, generator=g).items()}
            fakes.append(to_uint8(G_ema(z, noise=noise)[0]))
    return metrics.score(torch.cat(fakes), real_uint8, device=str(device))


class Progress:
    """One line that shows iteration, speed, time left and losses; rewritten in place on a terminal."""

    def __init__(self, total, start):
        self.total, self.t0, self.it0 = total, time.time(), start
        self.tty = sys.stdout.isatty()

    def show(self, it, losses):
        rate = (it - self.it0) / max(time.time() - self.t0, 1e-9)
        eta = (self.total - it) / rate if rate > 0 else float("inf")
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if eta < 360000 else "--"
        line = (f"iter {it}/{self.total}  {rate:.2f} it/s  ETA {eta_s}  "
                f"D real {losses['d_real']:.3f} fake {losses['d_fake']:.3f} recon {losses['recon']:.3f}  "
                f"G {losses['g']:.3f}")
        print(("\r" + line + "\x1b[K") if self.tty else line, end="" if self.tty else "\n", flush=True)
        return rate

    def close(self):
        if self.tty:
            print()


# ------------------------------------------------------------------------------------------------
# Arguments (the paper's defaults) and the loop
# ------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = OneLineParser(
        description="Train FastGAN (Liu et al., ICLR 2021) on a folder of images.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--path", required=True, help="folder of training images (searched recursively)")
    p.add_argument("--name", default=None, help="run name (default: the data folder's name)")
    p.add_argument("--out", default="runs", help="root folder of all runs; this run writes OUT/NAME/")
    p.add_argument("--im_size", type=int, default=1024, help=f"image size, one of {SUPPORTED_SIZES}")
    p.add_argument("--batch_size", type=int, default=8, help="images per iteration (all ranks together)")
    p.add_argument("--iter", type=int, default=50000, help="total iterations; a resumed run stops here too")
    p.add_argument("--lr", type=float, default=2e-4, help="Adam learning rate of G and D (betas 0.5, 0.999)")
    p.add_argument("--nz", type=int, default=256, help="latent size")
    p.add_argument("--ngf", type=int, default=64, help="G's width (multiple of 8); 16-32 for a CPU")
    p.add_argument("--ndf", type=int, default=64, help="D's width (multiple of 8); 16-32 for a CPU")
    p.add_argument("--policy", default="color,translation", help="DiffAugment policy ('' for none)")
    p.add_argument("--recon", choices=("mse", "l1"), default="mse", help="pixel distance of L_recons")
    p.add_argument("--ema", type=float, default=0.999, help="decay of the EMA generator")
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw of the run")
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto: CUDA if present")
    p.add_argument("--save_every", type=int, default=1000, help="write checkpoints/NNNNNN.pt and latest.pt")
    p.add_argument("--sample_every", type=int, default=500, help="write sample and reconstruction grids")
    p.add_argument("--log_every", type=int, default=20, help="print progress and append to log.jsonl")
    p.add_argument("--resume", default=None, help="a checkpoint to continue, or 'latest'")
    p.add_argument("--eval_every", type=int, default=0,
                   help="score EMA samples against the training images every N iterations (0: never)")
    p.add_argument("--eval_n", type=int, default=100, help="how many EMA samples each evaluation scores")
    p.add_argument("--stream", action="store_true",
                   help="decode images from disk every iteration (automatic for sets over 2 GiB)")
    p.add_argument("--workers", type=int, default=4, help="decoding processes when streaming")
    p.add_argument("--fast_upsample", action=argparse.BooleanOptionalAction, default=None,
                   help="compute each up-block's upsample + 3x3 conv as one stride-2 transposed conv of "
                        "the small map: same function, 2.25x fewer FLOPs (default: on for CPU; off for CUDA, "
                        "unmeasured)")
    p.add_argument("--channels_last", action=argparse.BooleanOptionalAction, default=None,
                   help="NHWC memory layout, what cuDNN's fastest convolutions read; try on GPUs (default: off)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision: bf16 autocast, fp16 + loss scaling on GPUs without bf16 "
                        "(default: off; try on Ampere or newer GPUs, slow on CPUs without bf16 units)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile G and D: minutes of compiling, then faster steps; for long runs")
    p.add_argument("--no_sle", action="store_true", help="ablation (Table 2): no skip-layer excitation")
    p.add_argument("--no_recon", action="store_true", help="ablation (Table 2): no decoders, no L_recons")
    args = p.parse_args(argv)
    args.name = args.name or Path(args.path).resolve().name
    return args


def check_args(args):
    """Refuse bad values before any work, in one readable line each."""
    if args.im_size not in SUPPORTED_SIZES:
        raise UsageError(f"--im_size must be one of {', '.join(map(str, SUPPORTED_SIZES))}, got {args.im_size}")
    for flag in ("ngf", "ndf"):
        v = getattr(args, flag)
        if v <= 0 or v % 8:
            raise UsageError(f"--{flag} must be a positive multiple of 8 (e.g. 16, 32, 64), got {v}")
    for flag in ("batch_size", "iter", "nz", "save_every", "sample_every", "log_every", "eval_n"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag} must be positive, got {getattr(args, flag)}")
    if not 0 <= args.ema < 1:
        raise UsageError(f"--ema must be in [0, 1), got {args.ema}")
    if not Path(args.path).is_dir():
        raise UsageError(f"{args.path}: no such folder (give --path a folder of images)")


def resolve_device(name):
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: no CUDA device is available (use --device cpu or auto)")
    return torch.device(name)


def resolve_resume(args, run_dir):
    if args.resume is None:
        return None
    path = run_dir / "checkpoints" / "latest.pt" if args.resume == "latest" else Path(args.resume)
    if args.resume == "latest" and not path.is_file():
        raise UsageError(f"--resume latest: there is no {path} yet (start without --resume)")
    state = load_checkpoint(path)
    for k in ARCH_KEYS:
        saved, now = state["args"].get(k), getattr(args, k, None)
        if saved != now:
            raise UsageError(f"{path} was trained with --{k} {saved}, but this run has --{k} {now}; "
                             f"pass --{k} {saved} to resume it")
    return state


class Diverged(Exception):
    pass


# Several GPUs or machines (torchrun). With one process none of this runs: `rank` is 0 and `world` 1.
def setup_distributed(args):
    """Under torchrun (which sets RANK, LOCAL_RANK, WORLD_SIZE), join the process group: NCCL between
    GPUs, gloo between CPU processes (and for the GPU processes' few CPU tensors, see `stop_requested`).
    Returns (rank, world, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 1, resolve_device(args.device)
    if args.batch_size % world:
        raise UsageError(f"--batch_size {args.batch_size} is the batch of all {world} processes together "
                         f"and must be divisible by {world}")
    device = resolve_device(args.device)
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return torch.distributed.get_rank(), world, device


def wrap_distributed(G, D, device):
    """DDP averages gradients across processes during backward. FastGAN's BatchNorm would otherwise
    see only batch/world images per GPU, so on CUDA it becomes SyncBatchNorm (statistics over the
    global batch). PyTorch's SyncBatchNorm runs on GPUs only: CPU processes keep per-process BatchNorm.

    D's decoders run on real images only. `train_step` back-propagates D's real pass locally (no_sync)
    and its fake pass with synchronisation, and that last backward averages everything D has
    accumulated, the decoders' gradients included, although the decoders are not in its graph: DDP
    must only be told that a pass may leave parameters unused (find_unused_parameters). Without
    decoders (--no_recon) every parameter is used, and the costly search for unused ones is skipped."""
    if device.type == "cuda":
        G = torch.nn.SyncBatchNorm.convert_sync_batchnorm(G)
        D = torch.nn.SyncBatchNorm.convert_sync_batchnorm(D)
    ids = [device.index] if device.type == "cuda" else None
    DDP = torch.nn.parallel.DistributedDataParallel
    has_decoders = unwrap(D).decoder_big is not None
    return DDP(G, device_ids=ids), DDP(D, device_ids=ids, find_unused_parameters=has_decoders)


def stop_requested(stop, world):
    """Has Ctrl-C/SIGTERM been received? Under torchrun the processes agree on it after every
    iteration, so that they all stop after the same one, within torchrun's 30 s before it kills them.
    The flag is a CPU tensor (gloo, also for GPU processes), so the GPUs never wait for it."""
    if world == 1:
        return stop["signal"] is not None
    flag = torch.tensor(float(stop["signal"] is not None))
    torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
    return bool(flag)


def train(args):
    """Set up, then run iterations until args.iter. Returns the run folder."""
    check_args(args)
    rank, world, device = setup_distributed(args)
    is_main = rank == 0                      # only rank 0 keeps the EMA, logs, samples and saves
    resolve_speed_flags(args, device)
    run_dir = Path(args.out) / args.name
    state = resolve_resume(args, run_dir)
    say = print if is_main else (lambda *a, **k: None)

    # Seed everything (the networks are built from args.seed alone); a resumed run then takes the
    # checkpoint's states, and under torchrun each rank draws its own noise and batches (seed + rank).
    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)

    # ---- 1. data ----
    paths = find_images(args.path)
    stream = args.stream or len(paths) * 3 * args.im_size ** 2 > 2 * 2 ** 30
    if stream:
        show_real_uint8 = load_images_subset(paths, args.im_size)
        eval_real_uint8 = load_images_subset(paths, args.im_size, k=args.eval_n) if args.eval_every else None
        if show_real_uint8 is None:
            raise UsageError(f"{args.path}: no readable images found (looked for {', '.join(IMAGE_EXTENSIONS)}, recursively)")
        data = StreamingData(paths[rank::world], args.im_size, args.batch_size // world, device, args.seed + rank,
                             state["iteration"] if state else 0, args.workers, args.channels_last)
    else:
        images = load_images(args.path, args.im_size, log=say)
        show_real_uint8, eval_real_uint8 = images[:8], images
        data = InMemoryData(images[rank::world], device, args.channels_last)   # each rank: its own slice
    say(f"data: {len(images) if not stream else len(paths)} images at {args.im_size}x{args.im_size} from "
        f"{args.path} ({'streamed from disk' if stream else 'in memory on ' + str(device)})")
    if world > 1 and (len(paths) if stream else len(images)) < world:   # torchrun: each rank its own share
        raise UsageError(f"{args.path}: fewer images than the {world} processes; each process trains on "
                         f"its own share of them")

    # ---- 2. networks, optimisers, EMA ----
    G, D = build_networks(args.im_size, args.ngf, args.ndf, args.nz, args.no_sle, args.no_recon)
    G_ema = build_generator(args.im_size, args.ngf, args.nz, args.no_sle)
    G_ema.load_state_dict(G.state_dict())
    G, D, G_ema = G.to(device), D.to(device), G_ema.to(device)
    G_ema.eval().requires_grad_(False)   # samples come from the EMA generator, in eval mode
    opt_G, opt_D = make_optimizers(G, D, args.lr, device)
    amp_dtype, scaler = amp_setup(args.amp, device)
    start = 0
    if state is not None:
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        G_ema.load_state_dict(state["G_ema"])
        opt_G.load_state_dict(state["opt_G"])
        opt_D.load_state_dict(state["opt_D"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start = state["iteration"]
        set_rng_state(state["rng"])
        say(f"resumed from iteration {start}")
    if world > 1 and (rank > 0 or state is None):
        torch.manual_seed(args.seed + 1_000_003 * rank + start)   # rank's own draws (rank 0 resumes exactly)
    n_g, n_d = (sum(p.numel() for p in net.parameters()) for net in (G, D))
    G, D = speed_up(G, D, args, device)
    if world > 1:
        G, D = wrap_distributed(G, D, device)
    ema = EMA(G_ema, G) if is_main else None
    say(f"G: {n_g:,} parameters, D: {n_d:,} parameters, device {device}"
        f"{f', {world} processes' if world > 1 else ''}; fast_upsample={args.fast_upsample} "
        f"channels_last={args.channels_last} "
        f"amp={args.amp} compile={args.compile}")

    # Fixed inputs for the sample grids, from their own generator: looking never moves the run's RNG.
    g = torch.Generator().manual_seed(args.seed)
    fixed_z = torch.randn(16, args.nz, generator=g).to(device)
    fixed_noise = {r: [n.to(device) for n in ns] for r, ns in G_ema.draw_noise(16, generator=g).items()}
    show_real = show_real_uint8.to(device).float() / 127.5 - 1
    ckpt_dir, img_dir = run_dir / "checkpoints", run_dir / "images"
    if is_main:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        img_dir.mkdir(parents=True, exist_ok=True)
        with open(run_dir / "args.json", "w") as f:
            json.dump(vars(args), f, indent=2)

    # ---- 3./4. the loop ----
    # Ctrl-C (or a cluster's SIGTERM) asks to stop: the iteration in progress finishes, a checkpoint
    # is written, and the run exits. A second Ctrl-C aborts at once.
    stop = {"signal": None}

    def on_signal(signum, frame):
        if stop["signal"] is not None and world == 1:   # under torchrun, a repeat is the same request
            raise KeyboardInterrupt
        stop["signal"] = signum
        say(f"\n{signal.Signals(signum).name}: finishing this iteration, then saving "
            f"(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    # A NaN/inf loss is recorded on the device (no sync) and checked at every log and save.
    first_bad = torch.full((), -1, dtype=torch.long, device=device)

    def check_finite():
        bad = int(first_bad)
        if bad >= 0:
            raise Diverged(f"a loss became NaN or inf at iteration {bad}; training stopped. The last good "
                           f"checkpoint is {ckpt_dir / 'latest.pt'} (resume with --resume latest, "
                           f"perhaps with a lower --lr)")

    def save(it, numbered=True):
        check_finite()                                    # never write a diverged state
        st = checkpoint_state(G, D, G_ema, opt_G, opt_D, it, args, scaler)
        if numbered:
            save_checkpoint(ckpt_dir / f"{it:06d}.pt", st)
        save_checkpoint(ckpt_dir / "latest.pt", st)

    old_handlers = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    progress = Progress(args.iter, start) if is_main else None
    totals, since_log, it = None, 0, start                # losses summed on the device since the last log
    try:
        with open(run_dir / "log.jsonl", "a") if is_main else contextlib.nullcontext() as log:
            while it < args.iter:
                real = data.batch(args.batch_size // world, it)              # (B, 3, S, S) in [-1, 1]
                losses = train_step(G, D, opt_G, opt_D, real, args, ema, scaler, amp_dtype)
                it += 1

                stacked = torch.stack(list(losses.values()))                 # (4,) still on the device
                first_bad = torch.where((first_bad < 0) & ~torch.isfinite(stacked).all(),
                                        torch.full_like(first_bad, it), first_bad)
                totals = stacked if totals is None else totals + stacked
                since_log += 1
                at_log = it % args.log_every == 0 or it == args.iter
                if world > 1 and (at_log or it % args.save_every == 0):   # torchrun: a NaN on any rank
                    torch.distributed.all_reduce(first_bad, op=torch.distributed.ReduceOp.MAX)
                    if not is_main and int(first_bad) >= 0:             # stops all; rank 0 says why
                        raise SystemExit(1)

                if is_main and at_log:
                    check_finite()
                    means = dict(zip(losses, (totals / since_log).tolist()))  # the one sync per log
                    rate = progress.show(it, means)
                    log.write(json.dumps({"iter": it, "time": round(time.time() - progress.t0, 3),
                                          "it_per_s": round(rate, 4), **means}) + "\n")
                    log.flush()
                if at_log:
                    totals, since_log = None, 0
                if is_main and (it % args.sample_every == 0 or it == args.iter):
                    save_samples(G_ema, D, fixed_z, fixed_noise, show_real, (it // args.sample_every) % 4,
                                 img_dir, it)
                if is_main and args.eval_every and it % args.eval_every == 0:
                    scores = evaluate(G_ema, eval_real_uint8, args.eval_n, args.seed, device)
                    log.write(json.dumps({"iter": it, "eval": scores}) + "\n")
                    log.flush()
                    say(f"\neval at iteration {it}: " + ", ".join(
                        f"{k} {v:.3f}" for k, v in scores.items() if k in ("swd", "fid", "kid") and v is not None))
                if is_main and (it % args.save_every == 0 or it == args.iter):
                    save(it)
                if stop_requested(stop, world):
                    if is_main:
                        save(it, numbered=False)
                        progress.close()
                        say(f"interrupted: saved iteration {it} to {ckpt_dir / 'latest.pt'}; "
                            f"continue with --resume latest", file=sys.stderr)
                    raise SystemExit(130)
    finally:
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if world > 1:
            torch.distributed.destroy_process_group()
    if is_main:
        progress.close()
        print(f"done: {it} iterations; checkpoints in {ckpt_dir}, images in {img_dir}")
    return run_dir


def load_images_subset(paths, im_size, k=8):
    """Up to k decodable images (for the reconstruction grid of a streamed set), or None."""
    out = []
    for p in paths:
        try:
            out.append(torch.from_numpy(load_image(p, im_size)[0]))
        except Exception:
            continue
        if len(out) == k:
            break
    return torch.stack(out) if out else None


def main(argv=None):
    args = parse_args(argv)
    try:
        train(args)
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except Diverged as e:
        print(f"\ntrain.py: {e}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
