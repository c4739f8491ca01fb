"""Draw images from a trained FastGAN, and look at what it has learned: paper §4.2.

    python sample.py --ckpt runs/NAME/checkpoints/latest.pt                     # 16 images in samples/

Everything is written to --out (default samples/). The N separate images 000000.png, 000001.png, ...
(--n, default 16, at the checkpoint's full resolution) are always written; every other mode adds its
own files, and modes may be combined in one call:

    --grid                   grid.png: the N images in one picture.
    --truncation 0.7         the N images with the truncation trick (Brock et al. 2019, BigGAN §3.1):
                             every latent entry whose magnitude exceeds PSI is redrawn until it does not.
                             Latents then stay near the centre of N(0, I), where G has seen the most
                             training signal: smaller PSI gives cleaner, more typical images (fidelity)
                             but less variety; PSI -> 0 gives one "average" image for every seed.
                             Also applies to the latents of --interpolate and --style_mix.
    --truncation_strip       truncation_strip.png: rows are PSI = 2.0, 1.0, 0.7, 0.5, 0.3, columns
                             the first min(N, 8) seeds: the trade-off above, in one picture.
    --interpolate 8          a walk through latent space: spherical interpolation (slerp) through
                             the N images' latents (at least 2), 8 frames per pair, all frames with
                             image 0's injected noise (so frame 0 is 000000.png): interp/000000.png,
                             ... and interp.gif. A smooth walk is the usual sign that G has learned a
                             continuous space rather than a lookup table of its training images.
    --style_mix              style_mix.png, the paper's Fig. 5: the content (the high-resolution path)
                             comes from one latent, the style (the SLE gates, §3.1) from another. All
                             four gates read the style latent (64x64 from its 4x4 map, ...); the
                             authors' scripts/style_mix.py mixes the 128, 256 and 512 gates only and
                             computes the 64x64 map without its gate.
    --nearest data/panda     nearest.png and nearest.json: beside every sample, the closest training
                             image in pixel space at 64x64, with its distance: the plain check that G
                             does not just copy its (few!) training images.
    --invert photo.png       back-tracking (§4.2): optimise a latent so that G reproduces a real image:
                             invert_target.png, invert_recon.png, invert_latent.pt.

Without a checkpoint:
    --timelapse runs/NAME    runs/NAME/images/progress.gif from the run's sample grids, one frame per
                             grid, downscaled (the file train.py keeps up to date; plumbing/watch.py).

Other flags: --raw (the trained G instead of its EMA copy), --seed (default 0), --batch_size (16),
--device auto|cuda|mps|cpu, --bn eval|batch (below). The image size, the widths and nz always come
from the checkpoint.

The authors' released models. --ckpt also reads the files of the authors' train.py, models/{iter}.pth
and models/all_{iter}.pth, in every mode (plumbing/pretrained.py; docs/pretrained.md): their names mapped
to ours, the size and widths read from the tensors' shapes. At 256 and 512 their G has no tanh, and an
imported one computes the same. Their eval.py samples in train mode (BatchNorm with each batch's
statistics): --bn batch does the same; the default, --bn eval, samples in eval mode, after recomputing
the EMA generator's BatchNorm statistics from its own samples (their file holds the trained G's).

Classes (a checkpoint trained with --classes, conditional.py):
    --class cat              every mode above for class cat, written to OUT/cat/ (repeatable: one
    --class all              folder per class; 'all': every class of the checkpoint). All classes get the
                             same latents and noise, so OUT/cat/000003.png and OUT/dog/000003.png differ
                             by their class only; with --grid, OUT/grid.png has one row per class.
A class-conditional checkpoint needs --class; an unconditional one refuses it.

Randomness. Every mode draws its inputs on the CPU from its own torch.Generator seeded with --seed
(`draw_inputs`), then moves them to the device: the same --seed gives the same images on the same
machine, and adding or removing a mode never changes another mode's images. The EMA generator runs in
eval mode, so BatchNorm uses its running statistics and a sample does not depend (beyond float
rounding) on which other samples share its batch; the noise that G injects (generator.py's
NoiseInjection) is an explicit input, drawn with the latents.

Everything runs under torch.no_grad() except the inversion, which needs gradients w.r.t. the latent.
Refused input (a bad checkpoint, --n 0, PSI <= 0 or below 0.01, a folder without images, an --invert
file that is not an image, ...) is one line `sample.py: error: ...` on stderr and exit status 2, and
is refused before anything is written. A file that cannot be written (a full disk, a read-only
folder) is one line naming it and the OS error, exit status 1; every file is written whole or not at all.
"""

import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from plumbing.checkpoint import generator_from_checkpoint
from plumbing.cli import OneLineParser, UsageError, add_device_argument, resolve_device
from conditional import make_conditional_generator
from plumbing.datasets import ensure_dataset
from plumbing.disk import WriteFailed, atomic_write
from discriminator import resize_to_128
from plumbing.images import find_images, load_image, save_grid, to_uint8
from plumbing.pretrained import BN_MODES, read_weights, ready_to_sample
from plumbing.watch import Timelapse

STRIP_PSIS = (2.0, 1.0, 0.7, 0.5, 0.3)  # rows of truncation_strip.png: from "no truncation" to strong
MIN_PSI = 0.01       # below this every latent is ~0, and rejection sampling needs ~1/PSI rounds
MAX_COLUMNS = 8      # columns of the truncation strip, rows and columns of the style-mixing grid
NEAREST_SIZE = 64    # --nearest compares images as pixels at 64x64
GIF_MAX_SIZE = 256   # interp.gif is downscaled to this (the PNG frames keep the full resolution)
GIF_FRAME_MS = 80


# ------------------------------------------------------------------------------------------------
# Loading the generator, drawing its inputs, running it
# ------------------------------------------------------------------------------------------------

def load_generator(ckpt, raw=False, device="cpu", log=print, bn="eval"):
    """The checkpoint's EMA generator (or with raw=True the trained G), in eval mode, on `device`.

    Samples come from the EMA copy (ema.py: decay --ema, 0.999 by default, ramped up early in a run):
    its weights average the recent iterations, which removes most of the jitter of adversarial
    training. Eval mode: BatchNorm normalises with its running statistics, not with the batch's, so
    each image is a function of its own latent and noise only; for the EMA generator those are its
    own, recomputed from its samples when train.py wrote the checkpoint. The network is built from the checkpoint's own
    arguments (im_size, ngf, nz, no_sle, class_names): nothing here can disagree with the weights.
    The authors' files are read too, and bn='batch' samples in train mode (plumbing/pretrained.py)."""
    state = read_weights(ckpt, need_raw=raw)  # UsageError: missing, unreadable, neither ours nor theirs
    try:
        G = generator_from_checkpoint(state, ema=not raw, make_conditional=make_conditional_generator)
    except Exception as e:  # a file with our marker but broken contents
        raise UsageError(f"{ckpt}: the checkpoint's generator cannot be rebuilt "
                         f"({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else 'no detail'})")
    a = state["args"]
    log(f"{ckpt}: iteration {state['iteration']}, {a['im_size']}x{a['im_size']}, ngf {a['ngf']}, "
        f"nz {a['nz']}, {'trained G (--raw)' if raw else 'EMA generator'}"
        + (f", classes {', '.join(a['class_names'])}" if a.get("class_names") else ""))
    return ready_to_sample(G.to(device), state, raw, bn, log).requires_grad_(False)


def truncate(z, psi, generator=None):
    """BigGAN's truncation trick (Brock et al. 2019, §3.1) applied to a drawn latent: every entry with
    |z| > psi is redrawn from N(0, 1) until it is not. Entries already inside [-psi, psi] keep their
    value, so the same z truncated at two values of psi differ only where it matters."""
    if not psi > 0:  # psi <= 0 (or NaN): no value can ever be accepted, the loop would never end
        raise ValueError(f"truncation psi must be positive, got {psi}")
    z = z.clone()
    while True:
        bad = z.abs() > psi                                   # (B, nz) bool
        n_bad = int(bad.sum())
        if n_bad == 0:
            return z
        z[bad] = torch.randn(n_bad, generator=generator, dtype=z.dtype, device=z.device)


def truncated_normal(shape, psi, generator=None):
    """N(0, 1) samples of `shape`, each resampled until |x| <= psi (psi=None: no truncation).

    The trade-off: G learned from z ~ N(0, I), and most of its training signal came from typical z.
    Shrinking the range keeps latents where G is at its best (higher fidelity) at the price of
    variety; psi -> 0 maps every seed to the same image. BigGAN chooses psi per use case."""
    z = torch.randn(shape, generator=generator)
    return z if psi is None else truncate(z, psi, generator)


def draw_inputs(G, n, seed, psi=None):
    """n latents (n, nz) and their injected-noise dict {res: [(n, 1, res, res)] * 2}, on the CPU.

    One generator seeded with `seed` draws the noise first, then the latents (truncated if psi):
    so the noise and the untruncated draws are the same whatever psi is, and the rows of the
    truncation strip differ only by truncation. With psi, draw_inputs(G, n, seed, psi) is exactly
    what `--n n --truncation psi` generates."""
    g = torch.Generator().manual_seed(seed)
    noise = G.draw_noise(n, generator=g)                      # {8: [(n,1,8,8)]*2, 32: ..., 128: ...}
    z = truncated_normal((n, G.nz), psi, g)                   # (n, nz)
    return z, noise


def slice_noise(noise, start, stop):
    """The noise dict of samples start..stop-1."""
    return {r: [x[start:stop] for x in ns] for r, ns in noise.items()}


def shared_noise(noise, n):
    """A batch-1 noise dict seen as n copies (a view, no memory): 'the same noise for every image'."""
    return {r: [x[:1].expand(n, *x.shape[1:]) for x in ns] for r, ns in noise.items()}


def class_tensor(y, n, device):
    """Class index y (an int, or None without classes) for n images: (n,) on the device, or None."""
    return None if y is None else torch.full((n,), y, dtype=torch.long, device=device)


@torch.no_grad()
def generate(G, z, noise, batch_size=16, z_style=None, y=None):
    """G's full-resolution images for latents z (N, nz) and noise (batch N), in batches.

    z_style (N, nz), if given, feeds the SLE gates (style mixing). y: the class of every image (an int)
    for a class-conditional G, else None. Inputs may live on the CPU: each batch is moved to G's
    device. Returns float (N, 3, S, S) in [-1, 1] on the CPU."""
    device = next(G.parameters()).device
    out = []
    for s in range(0, z.shape[0], batch_size):
        e = min(s + batch_size, z.shape[0])
        nb = {r: [x.to(device) for x in ns] for r, ns in slice_noise(noise, s, e).items()}
        zs = None if z_style is None else z_style[s:e].to(device)
        img, _ = G(z[s:e].to(device), z_style=zs, noise=nb, y=class_tensor(y, e - s, device))   # (b, 3, S, S)
        out.append(img.float().cpu())
    return torch.cat(out)                                      # (N, 3, S, S)


# ------------------------------------------------------------------------------------------------
# Truncation strip, interpolation, style mixing
# ------------------------------------------------------------------------------------------------

def truncation_strip(G, n_cols, seed, batch_size=16, psis=STRIP_PSIS, y=None):
    """One row per psi, one column per seed-sample: (len(psis) * n_cols, 3, S, S) float, row-major.
    Every row uses the same noise and the same underlying normal draws (`draw_inputs`); y: the class."""
    rows = [generate(G, *draw_inputs(G, n_cols, seed, psi), batch_size, y=y) for psi in psis]
    return torch.cat(rows)


def slerp(a, b, t):
    """Spherical interpolation between latents a and b (..., nz), t in [0, 1] (a float or a tensor
    broadcastable to (..., 1)). t = 0 gives a exactly, t = 1 gives b.

    Why not a straight line: a Gaussian latent in high dimension lies near the sphere of radius
    sqrt(nz); the midpoint of two such latents has norm ~sqrt(nz / 2), a place G never saw during
    training. Slerp follows the arc between the two directions (White 2016, 'Sampling Generative
    Networks'). When a and b are (nearly) parallel the arc is a line: fall back to lerp, which also
    avoids dividing by sin(omega) ~ 0."""
    t = torch.as_tensor(t, dtype=a.dtype)
    a_unit = a / a.norm(dim=-1, keepdim=True)
    b_unit = b / b.norm(dim=-1, keepdim=True)
    cos = (a_unit * b_unit).sum(-1, keepdim=True).clamp(-1.0, 1.0)   # (..., 1)
    omega = torch.arccos(cos)                                        # angle between a and b
    sin = torch.sin(omega)
    parallel = sin.abs() < 1e-6
    safe_sin = torch.where(parallel, torch.ones_like(sin), sin)
    arc = torch.sin((1 - t) * omega) / safe_sin * a + torch.sin(t * omega) / safe_sin * b
    line = (1 - t) * a + t * b
    return torch.where(parallel, line, arc)


def interpolation_latents(keys, frames_per_pair):
    """The walk through keys (m, nz): frames_per_pair frames from each key towards the next (t = 0,
    1/K, ..., (K-1)/K; the first is the key itself), then the last key: ((m-1)*K + 1, nz)."""
    steps = [slerp(keys[i], keys[i + 1], k / frames_per_pair)
             for i in range(len(keys) - 1) for k in range(frames_per_pair)]
    return torch.stack(steps + [keys[-1]])


def interpolate(G, keys, noise, frames_per_pair, batch_size=16, y=None):
    """Frames of the walk through keys (m, nz), all with the same injected noise (a batch-1 dict) and
    class y, so only the latent changes from frame to frame. Returns (frames float (F, 3, S, S),
    latents (F, nz))."""
    zs = interpolation_latents(keys, frames_per_pair)                 # (F, nz)
    return generate(G, zs, shared_noise(noise, len(zs)), batch_size, y=y), zs


def style_mix_grid(G, z_content, z_style, noise, batch_size=16, y=None):
    """The style-mixing table of the paper's Fig. 5, as (kc+1) x (ks+1) cells, row-major:
    (kc+1)*(ks+1) images float (3, S, S).

        blank        | G(w_1)        ... G(w_ks)          <- plain samples of the style latents
        G(z_1)       | G(z_1, w_1)   ... G(z_1, w_ks)
        ...          | ...
        G(z_kc)      | G(z_kc, w_1)  ... G(z_kc, w_ks)
        ^ plain samples of the content latents

    G(z, w): the main path from 4x4 to full size grows from z (shape, layout: the 'content'), while the
    SLE gates (§3.1, Eq. 1) read the 4..32 maps of w and rescale channels at 64..512 (colour, texture:
    the 'style'). Every cell uses the same injected noise (batch-1 dict `noise`) and the same class y.
    Where this differs from the authors' scripts/style_mix.py: theirs takes the 8, 16 and 32 maps
    (the gates at 128, 256, 512) from w and computes the 64x64 map without its SLE (se_64), in the
    plain samples too; here the 64x64 gate reads w's 4x4 map, as every other gate reads w."""
    kc, ks = len(z_content), len(z_style)
    top = generate(G, z_style, shared_noise(noise, ks), batch_size, y=y)        # (ks, 3, S, S)
    left = generate(G, z_content, shared_noise(noise, kc), batch_size, y=y)     # (kc, 3, S, S)
    zc = z_content.repeat_interleave(ks, dim=0)                                 # (kc*ks, nz): z_1 z_1 .. z_2
    zw = z_style.repeat(kc, 1)                                                  # (kc*ks, nz): w_1 w_2 .. w_1
    inner = generate(G, zc, shared_noise(noise, kc * ks), batch_size, z_style=zw, y=y)
    inner = inner.view(kc, ks, *inner.shape[1:])                                # (kc, ks, 3, S, S)
    blank = torch.ones_like(top[:1])                                            # white: 1.0 in [-1, 1]
    rows = [torch.cat([blank, top])] + [torch.cat([left[i:i + 1], inner[i]]) for i in range(kc)]
    return torch.cat(rows)                                                      # ((kc+1)*(ks+1), 3, S, S)


# ------------------------------------------------------------------------------------------------
# Nearest training images
# ------------------------------------------------------------------------------------------------

def pixel_features(images_uint8, size=NEAREST_SIZE):
    """uint8 (N, 3, H, W) -> uint8 (N, 3*size*size): each image resized to size x size by PIL's Lanczos
    filter, the way images.load_image resizes training images, so an exact copy of a sample in the
    training folder lands on exactly the same pixels."""
    out = []
    for img in images_uint8:
        pil = Image.fromarray(img.permute(1, 2, 0).numpy())
        if pil.size != (size, size):
            pil = pil.resize((size, size), Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.asarray(pil).transpose(2, 0, 1).copy()))
    return torch.stack(out).flatten(1)                                          # (N, 3*size*size)


def load_training_features(folder, size=NEAREST_SIZE, log=print):
    """Every decodable image under `folder` as uint8 features (M, 3*size*size), and its path."""
    folder = ensure_dataset(folder, log=log)   # a folder, or a known dataset name fetched into it
    feats, names = [], []
    for p in find_images(folder):
        try:
            a, _ = load_image(p, size)                                          # (3, size, size) uint8
        except Exception as e:  # PIL raises several types for broken files
            log(f"warning: skipping {p}: not a readable image ({type(e).__name__})")
            continue
        feats.append(torch.from_numpy(a).flatten())
        names.append(p)
    if not feats:
        raise UsageError(f"--nearest {folder}: no readable images found (looked for .jpg, .png, ..., recursively)")
    return torch.stack(feats), names                                           # (M, 3*size*size), M paths


def nearest(queries, references, k=1, chunk=2048):
    """For each query, the k closest references: (distances (N, k), indices (N, k)), nearest first.

    queries (N, D) and references (M, D) are uint8 pixels; the distance is the mean squared difference
    of the pixel values mapped to [-1, 1] (0 for identical images, at most 4). Computed directly, a
    chunk of references at a time, rather than as |a|^2 + |b|^2 - 2ab, whose cancellation would turn
    an exact copy into a small non-zero number."""
    q = queries.float() / 127.5 - 1                                             # (N, D)
    dist = torch.empty(q.shape[0], references.shape[0])                         # (N, M)
    for s in range(0, references.shape[0], chunk):
        ref = references[s:s + chunk].float() / 127.5 - 1                       # (c, D)
        for i in range(q.shape[0]):
            dist[i, s:s + chunk] = (ref - q[i]).square().mean(dim=1)            # (c,)
    d, idx = dist.topk(min(k, dist.shape[1]), dim=1, largest=False, sorted=True)
    return d, idx


# ------------------------------------------------------------------------------------------------
# Back-tracking (inversion)
# ------------------------------------------------------------------------------------------------

def invert(G, target, steps=300, lr=0.05, generator=None, log=None, log_every=50, y=None):
    """Back-tracking (§4.2): find z such that G(z) reproduces `target` (1, 3, S, S) in [-1, 1] on G's
    device, by Adam on z with G frozen. Returns (z (1, nz), recon (1, 3, S, S), losses), where
    losses[0] is the error of the starting latent and losses[-1] that of the returned one.
    `log`, if given, is called with a progress line every `log_every` steps.

    The paper back-tracks real images that were held out from training, to show that G has not
    collapsed onto its few training images but can reach new ones, and interpolates between the
    recovered latents. The authors' back-tracking scripts (scripts/train_backtracking_*.py) minimise
    LPIPS between 2x average-pooled images plus 0.2 x the pixel MSE; ours is pixel MSE alone, which
    needs no downloaded network: MSE(G(z), target) at full size plus MSE(G's 128x128 output, target at
    128), so both of G's heads must agree with the image.

    The noise, then the starting z, are drawn from `generator` (the order of `draw_inputs`); the noise
    then stays fixed and only z moves. z is not kept Gaussian-looking (no prior term): a long run may
    drift to latents G never saw in training, where its images are less reliable.
    y: the class (an int) to back-track within, for a class-conditional G."""
    device = target.device
    noise = {r: [x.to(device) for x in ns] for r, ns in G.draw_noise(1, generator=generator).items()}
    z = torch.randn(1, G.nz, generator=generator).to(device).requires_grad_(True)   # (1, nz)
    target_128 = resize_to_128(target)                                          # (1, 3, 128, 128)

    def error(z):
        img, img_128 = G(z, noise=noise, y=class_tensor(y, 1, device))          # (1,3,S,S), (1,3,128,128)
        return F.mse_loss(img, target) + F.mse_loss(img_128, target_128), img

    opt = torch.optim.Adam([z], lr=lr)
    losses = []
    with torch.enable_grad():  # callers may hold torch.no_grad()
        for step in range(steps):
            loss, _ = error(z)
            losses.append(loss.item())
            if log is not None and step % log_every == 0:
                log(f"  inversion step {step}/{steps}: error {losses[-1]:.4f}")
            opt.zero_grad(set_to_none=True)
            loss.backward()   # G is frozen (requires_grad False): only z gets a gradient
            opt.step()
    with torch.no_grad():
        loss, recon = error(z)
        losses.append(loss.item())
    return z.detach(), recon, losses


# ------------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------------

def save_png(image, path):
    """One image (3, H, W), float in [-1, 1] or uint8, as a PNG."""
    image = image if image.dtype == torch.uint8 else to_uint8(image[None])[0]
    with atomic_write(path, sync=False) as f:          # whole or not at all; a failure is WriteFailed
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(f, format="PNG")


def save_gif(frames_uint8, path, max_size=GIF_MAX_SIZE, frame_ms=GIF_FRAME_MS):
    """uint8 frames (F, 3, S, S) as a looping animated GIF, downscaled to max_size if larger."""
    pils = [Image.fromarray(f.permute(1, 2, 0).numpy()) for f in frames_uint8]
    if pils[0].width > max_size:
        pils = [p.resize((max_size, max_size), Image.Resampling.LANCZOS) for p in pils]
    with atomic_write(path, sync=False) as f:
        pils[0].save(f, format="GIF", save_all=True, append_images=pils[1:], duration=frame_ms, loop=0)


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = OneLineParser(prog="sample.py", description="Sample from a trained FastGAN checkpoint (see the module docstring).")
    p.add_argument("--ckpt", default=None, help="a checkpoint written by train.py, or the authors' {iter}.pth or "
                   "all_{iter}.pth (every mode but --timelapse)")
    p.add_argument("--timelapse", default=None, metavar="RUN_DIR",
                   help="write RUN_DIR/images/progress.gif from the run's sample grids (no checkpoint needed)")
    p.add_argument("--out", default="samples", help="folder to write to")
    p.add_argument("--n", type=int, default=16, help="number of images (key latents of --interpolate)")
    p.add_argument("--seed", type=int, default=0, help="seed of the latents and the injected noise")
    p.add_argument("--batch_size", type=int, default=16, help="images per forward pass")
    add_device_argument(p)
    p.add_argument("--raw", action="store_true", help="use the trained G instead of its EMA copy")
    p.add_argument("--bn", choices=BN_MODES, default="eval",
                   help="BatchNorm: eval, running statistics (the authors' EMA generator's recomputed); batch, train mode as the authors' eval.py")
    p.add_argument("--grid", action="store_true", help="also write grid.png")
    p.add_argument("--truncation", type=float, default=None, metavar="PSI",
                   help="truncation trick: redraw latent entries with |z| > PSI (smaller: fidelity over variety)")
    p.add_argument("--truncation_strip", action="store_true",
                   help=f"write truncation_strip.png, rows PSI = {', '.join(map(str, STRIP_PSIS))}")
    p.add_argument("--interpolate", type=int, default=None, metavar="K",
                   help="slerp walk through max(2, N) latents, K frames per pair: interp/, interp.gif")
    p.add_argument("--style_mix", action="store_true", help="write style_mix.png (content x style, Fig. 5)")
    p.add_argument("--nearest", default=None, metavar="DATA_DIR",
                   help="nearest training image of each sample (pixels at 64x64): nearest.png, nearest.json")
    p.add_argument("--invert", default=None, metavar="IMAGE", help="back-track IMAGE to a latent (§4.2)")
    p.add_argument("--invert_steps", type=int, default=300, help="Adam steps of --invert")
    p.add_argument("--invert_lr", type=float, default=0.05, help="Adam learning rate of --invert")
    p.add_argument("--class", dest="classes", action="append", default=None, metavar="NAME",
                   help="a class of a class-conditional checkpoint (repeatable; 'all': every class): "
                        "its files go to OUT/NAME/, and --grid adds OUT/grid.png with one row per class")
    return p.parse_args(argv)


def check_args(args):
    """Refuse bad values before any work, in one readable line each."""
    if args.ckpt is None:
        raise UsageError("--ckpt is required (a checkpoint written by train.py), except with --timelapse RUN_DIR")
    for flag in ("n", "batch_size", "invert_steps"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag} must be a positive integer, got {getattr(args, flag)}")
    if args.truncation is not None and not args.truncation >= MIN_PSI:  # `not >=` also catches NaN
        raise UsageError(f"--truncation PSI must be at least {MIN_PSI} (PSI <= 0 is meaningless; "
                         f"below {MIN_PSI} every latent is ~0), got {args.truncation}")
    if args.interpolate is not None and args.interpolate <= 0:
        raise UsageError(f"--interpolate K needs K >= 1 frames per pair, got {args.interpolate}")
    if not args.invert_lr > 0:
        raise UsageError(f"--invert_lr must be positive, got {args.invert_lr}")
    if args.invert is not None and not Path(args.invert).is_file():
        raise UsageError(f"--invert {args.invert}: no such file")


def load_target(path, im_size, device):
    """The image to back-track, (1, 3, S, S) in [-1, 1] on the device (stretched to a square)."""
    try:
        a, _ = load_image(path, im_size)                                        # (3, S, S) uint8
    except Exception as e:
        raise UsageError(f"--invert {path}: not a readable image ({type(e).__name__})")
    return (torch.from_numpy(a).float() / 127.5 - 1)[None].to(device)


def chosen_classes(G, wanted, ckpt):
    """[(class index, name)] of the --class flags, in their order ('all': every class of G), or
    [(None, None)] for an unconditional G without --class. Refuses --class on an unconditional G, a
    class G does not have (naming those it has), and a class-conditional G without --class."""
    names = G.class_embedding.names if G.class_embedding is not None else None
    if not wanted:
        if names:
            raise UsageError(f"{ckpt} is class-conditional: pass --class NAME (repeatable) or --class all; "
                             f"its classes: {', '.join(names)}")
        return [(None, None)]
    if not names:
        raise UsageError(f"--class {wanted[0]}: {ckpt} has no classes (it was trained without --classes); "
                         f"leave out --class")
    if "all" in wanted:
        return list(enumerate(names))
    for w in wanted:
        if w not in names:
            raise UsageError(f"--class {w}: {ckpt} has no such class; its classes: {', '.join(names)}")
    return [(names.index(w), w) for w in dict.fromkeys(wanted)]     # in the order given, once each


def write_timelapse(run_dir):
    """RUN_DIR/images/progress.gif (RUN_DIR may also be the images folder itself) from the sample
    grids of a run, as train.py writes it (watch.Timelapse). Returns the GIF's path."""
    img_dir = Path(run_dir) / "images"
    img_dir = img_dir if img_dir.is_dir() else Path(run_dir)
    timelapse = Timelapse(img_dir)
    n = timelapse.update()
    if n == 0:
        raise UsageError(f"--timelapse {run_dir}: no sample grids (images/NNNNNN_samples.png) there; "
                         f"give a run folder written by train.py")
    print(f"wrote {timelapse.path}: {n} frames, {timelapse.path.stat().st_size / 1024:.0f} KB")
    return timelapse.path


def run(args):
    if args.timelapse is not None:      # needs no checkpoint, only the run's grids
        return write_timelapse(args.timelapse)
    check_args(args)
    device = resolve_device(args.device)
    G = load_generator(args.ckpt, args.raw, device, bn=args.bn)
    classes = chosen_classes(G, args.classes, args.ckpt)                        # [(None, None)]: no classes
    # Inputs that may be refused are read before anything is written.
    train_feats = train_paths = target = None
    if args.nearest is not None:
        train_feats, train_paths = load_training_features(args.nearest)
        print(f"nearest: {len(train_paths)} training images from {args.nearest}")
    if args.invert is not None:
        target = load_target(args.invert, G.im_size, device)
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"--out {out}: cannot create the folder ({e.strerror})")
    rows = []
    for y, name in classes:     # every mode, once per class (into OUT/NAME/), or once without classes
        if name is not None:
            print(f"class {name}:")           # OUT/NAME/ is made by its first file (disk.atomic_write)
        folder = out if name is None else out / name
        rows.append(write_modes(G, args, folder, y, train_feats, train_paths, target))
    if args.grid and classes[0][1] is not None:
        save_grid(torch.cat(rows), out / "grid.png", nrow=args.n)              # (K * N, 3, S, S) uint8
        print(f"wrote {out / 'grid.png'}: one row per class ({', '.join(name for _, name in classes)})")


def write_modes(G, args, out, y, train_feats, train_paths, target):
    """Every mode asked for, for class y (an int; None without classes), written to `out`. Returns
    the N images as uint8 (N, 3, S, S) when --grid or --nearest needed them, else None."""
    S, psi, bs = G.im_size, args.truncation, args.batch_size
    # ---- the N images: always written ----
    z, noise = draw_inputs(G, args.n, args.seed, psi)                           # (N, nz), noise of batch N
    keep = [] if (args.grid or args.nearest is not None) else None                          # uint8 copies, if needed
    for s in range(0, args.n, bs):
        batch = to_uint8(generate(G, z[s:s + bs], slice_noise(noise, s, s + bs), bs, y=y))   # (b, 3, S, S)
        for i, img in enumerate(batch):
            save_png(img, out / f"{s + i:06d}.png")
        if keep is not None:
            keep.append(batch)
    print(f"wrote {args.n} images of {S}x{S} to {out}/ (000000.png ...)"
          + (f", truncation PSI {psi}" if psi is not None else ""))
    samples = torch.cat(keep) if keep is not None else None                     # (N, 3, S, S) uint8
    if args.grid:
        save_grid(samples, out / "grid.png", nrow=math.ceil(math.sqrt(args.n)))
        print(f"wrote {out / 'grid.png'}")

    # ---- truncation strip: rows PSI = 2.0 ... 0.3, columns the first min(N, 8) seeds ----
    if args.truncation_strip:
        cols = min(args.n, MAX_COLUMNS)
        save_grid(truncation_strip(G, cols, args.seed, bs, y=y), out / "truncation_strip.png", nrow=cols)
        print(f"wrote {out / 'truncation_strip.png'}: rows PSI = {', '.join(map(str, STRIP_PSIS))}")

    # ---- interpolation: the walk visits the N latents above (at least 2), the noise of sample 0 ----
    if args.interpolate is not None:
        keys, key_noise = draw_inputs(G, max(2, args.n), args.seed, psi)
        frames, _ = interpolate(G, keys, slice_noise(key_noise, 0, 1), args.interpolate, bs, y=y)
        frames = to_uint8(frames)                                               # (F, 3, S, S)
        for i, f in enumerate(frames):
            save_png(f, out / "interp" / f"{i:06d}.png")
        save_gif(frames, out / "interp.gif")
        print(f"wrote {len(frames)} frames to {out / 'interp'}/ and {out / 'interp.gif'}")

    # ---- style mixing: k content latents x k style latents, one shared noise ----
    if args.style_mix:
        k = min(args.n, MAX_COLUMNS)
        zz, mix_noise = draw_inputs(G, 2 * k, args.seed, psi)                   # (2k, nz)
        cells = style_mix_grid(G, zz[:k], zz[k:], slice_noise(mix_noise, 0, 1), bs, y=y)
        save_grid(cells, out / "style_mix.png", nrow=k + 1)
        print(f"wrote {out / 'style_mix.png'}: rows share the content latent, columns the style latent")

    # ---- nearest training image of every sample ----
    if args.nearest is not None:
        d, idx = nearest(pixel_features(samples), train_feats)                  # (N, 1), (N, 1)
        rows, records = [], []
        for i in range(args.n):
            p = train_paths[int(idx[i, 0])]
            rows += [samples[i], torch.from_numpy(load_image(p, S)[0])]
            records.append({"sample": f"{i:06d}.png", "nearest": str(p.relative_to(args.nearest)),
                            "distance": float(d[i, 0])})
            print(f"  {i:06d}.png  nearest {records[-1]['nearest']}  distance {float(d[i, 0]):.4f}")
        save_grid(torch.stack(rows), out / "nearest.png", nrow=2)
        with atomic_write(out / "nearest.json", sync=False) as f:
            f.write(json.dumps({"feature": f"pixels at {NEAREST_SIZE}x{NEAREST_SIZE}, values in [-1, 1]",
                                "distance": "mean squared difference", "data": str(args.nearest),
                                "samples": records}, indent=2).encode())
        print(f"wrote {out / 'nearest.png'} (rows: sample | nearest) and {out / 'nearest.json'}")

    # ---- back-tracking ----
    if args.invert is not None:
        g = torch.Generator().manual_seed(args.seed)
        z_inv, recon, losses = invert(G, target, args.invert_steps, args.invert_lr, g, log=print, y=y)
        save_png(target[0].cpu(), out / "invert_target.png")
        save_png(recon[0].cpu(), out / "invert_recon.png")
        with atomic_write(out / "invert_latent.pt", sync=False) as f:
            torch.save(z_inv.cpu(), f)
        print(f"inversion: error {losses[0]:.4f} at the start, {losses[-1]:.4f} after {args.invert_steps} "
              f"steps; wrote invert_target.png, invert_recon.png, invert_latent.pt "
              f"(its noise: draw_inputs(G, 1, {args.seed})[1])")
    return samples


def main(argv=None):
    try:
        run(parse_args(argv))
    except UsageError as e:
        print(f"sample.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2)
    except WriteFailed as e:      # no space, no permission, a read-only folder: the file and the OS error
        print(f"sample.py: error: {e} (the files written before it are complete)", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
