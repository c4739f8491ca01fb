"""Train FastGAN on a folder of images: the paper's §4 training, Eq. 2-4, top to bottom.

    python train.py --path data/panda                         # one GPU, the paper's Table 2 setting: 256x256, batch 8
    python train.py --path data/panda --im_size 128 --ngf 32 --ndf 32 --device cpu   # a laptop CPU
    torchrun --nproc_per_node=4 train.py --path data/panda    # 4 GPUs; --batch_size counts all 4

This file is the method, in the paper's order:
  1. the arguments, with the paper's defaults;
  2. the data: a few-shot folder of images (fetched by name the first time, see plumbing/datasets.py);
  3. the networks (generator.py, discriminator.py), Adam, and the EMA generator (ema.py);
  4. one training iteration, `train_step`, with the losses of losses.py: D's hinge loss (Eq. 3),
     the decoders' reconstruction loss (Eq. 2), G's loss (Eq. 4);
  5. the loop: log, grids, checkpoints.
The machinery around it is in plumbing/ (its __init__.py lists it) and may be skipped on a first
reading; not in the paper, conditional.py (BigGAN's classes and orthogonal regularisation).

A run writes OUT/NAME/ (default runs/<data folder name>/): checkpoints/NNNNNN.pt (the newest --keep)
and latest.pt (the newest), images/NNNNNN_samples.png, _recons.png and progress.gif, log.jsonl,
args.json (tensorboard/ with --tensorboard).
"""

import copy
import random
import sys
from pathlib import Path

import numpy as np
import torch

import losses
import metrics
from plumbing.checkpoint import (checkpoint_state, load_optimizer_state, resume_state, set_rng_state, write_best,
                                 write_checkpoints)
from plumbing.cli import OneLineParser, UsageError, add_device_argument
from conditional import add_projection, grid_labels, make_conditional_generator, orthogonal_penalty
from plumbing.datasets import ensure_dataset
from plumbing.disk import DEFAULT_KEEP, WriteFailed, resumable_writes, start_run_folder
from plumbing.distances import reconstruction_distance
from diffaug import diff_augment
from discriminator import Discriminator, resize_to_128
from plumbing.distributed import agree, first_of_all, setup_distributed, shutdown, unwrap, wrap_distributed
from ema import EMA, recompute_batchnorm_statistics
from generator import SUPPORTED_SIZES, Generator
from plumbing.images import class_folders, default_image_size, training_data
from plumbing.monitor import Diverged, LossLog, StopSignal, fixed_inputs, sample_uint8, save_samples
from plumbing.pretrained import defer_architecture, init_from
from plumbing.speed import StepContext, add_speed_arguments, fused_adam, resolve_speed_flags, speed_up
from plumbing.watch import require_tensorboard


# ------------------------------------------------------------------------------------------------
# 1. Arguments: the paper's defaults (§4: batch 8, Adam lr 2e-4, betas 0.5/0.999, EMA 0.999)
# ------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = OneLineParser(description="Train FastGAN (Liu et al., ICLR 2021) on a folder of images.")
    add = p.add_argument
    add("--path", required=True, help="folder of training images (searched recursively), or a dataset "
        "name to fetch into that folder the first time: data/panda, data/obama, ... (see plumbing/datasets.py)")
    add("--name", default=None, help="run name (default: the data folder's name)")
    add("--out", default="runs", help="root folder of all runs; this run writes OUT/NAME/")
    add("--im_size", type=int, default=None, help=f"image size, one of {SUPPORTED_SIZES} (default: the "
        "paper's 256 for a named set, else the largest not above the images' median shorter side)")
    add("--batch_size", type=int, default=8, help="images per iteration (all processes together)")
    add("--iter", type=int, default=50000, help="total iterations; a resumed run stops here too")
    add("--lr", type=float, default=2e-4, help="Adam learning rate of G and D (betas 0.5, 0.999)")
    add("--nz", type=int, default=256, help="latent size")
    add("--ngf", type=int, default=64, help="G's width (multiple of 8); 16-32 for a CPU")
    add("--ndf", type=int, default=64, help="D's width (multiple of 8); 16-32 for a CPU")
    add("--policy", default="color,translation", help="DiffAugment policy ('' for none)")
    add("--recon", choices=("mse", "l1", "lpips"), default="mse", help="per-image distance of L_recons "
        "(Eq. 2): pixels, or the authors' LPIPS (pip install lpips; VGG weights download on first use)")
    add("--recon_weight", type=float, default=1.0, help="weight of L_recons in D's loss (Eq. 3 adds it with "
        "weight 1; docs/ablation.md compares others)")
    add("--ema", type=float, default=0.999, help="long-run decay of the EMA generator (ramped up, see ema.py)")
    add("--seed", type=int, default=0, help="seed of every random draw of the run")
    add_device_argument(p)
    add("--save_every", type=int, default=1000, help="write checkpoints/NNNNNN.pt and latest.pt")
    add("--keep", type=int, default=DEFAULT_KEEP, help="keep the newest K numbered checkpoints (0: all)")
    add("--sample_every", type=int, default=500, help="write sample and reconstruction grids")
    add("--log_every", type=int, default=20, help="print progress and append to log.jsonl (and after iteration 1)")
    add("--tensorboard", action="store_true", help="losses, scores, grids for TensorBoard (pip install tensorboard)")
    add("--resume", default=None, help="a checkpoint to continue, or 'latest'")
    add("--init_from", default=None, metavar="CKPT", help="fine-tune: G, D and the EMA generator start from CKPT "
        "(ours, or the authors' {iter}.pth or all_{iter}.pth), with its size and widths; Adam and the iteration count afresh")
    add("--eval_every", type=int, default=0, help="score EMA samples against the training images every "
        "N iterations (0: never)")
    add("--eval_n", type=int, default=100, help="how many EMA samples each evaluation scores")
    add("--stream", action="store_true", help="decode images from disk every iteration (automatic "
        "for sets over 2 GiB)")
    add("--workers", type=int, default=4, help="decoding processes when streaming")
    add("--no_sle", action="store_true", help="ablation (Table 2): no skip-layer excitation")
    add("--no_recon", action="store_true", help="ablation (Table 2): no decoders, no L_recons")
    add("--classes", action="store_true", help="class-conditional (BigGAN): each subfolder of --path is a class")
    add("--ortho", type=float, default=0.0, help="BigGAN's orthogonal regularisation of G, BETA ||W W^T * (1 - I)||^2 "
        "as its §3.1 writes it (BigGAN: 1e-4; its code adds half this gradient: --ortho B is its 2B); 0: off")
    add_speed_arguments(p)
    args = p.parse_args(argv)
    args.name = args.name or Path(args.path).resolve().name
    return defer_architecture(p, argv, args)     # --init_from: the size and widths not given come from its file


def check_args(args):
    """Refuse bad values before any work, in one readable line each. Returns the line that says the
    image size and why, when --im_size was left to the data (None when it was given, or resumed)."""
    if args.im_size is not None and args.im_size not in SUPPORTED_SIZES:
        raise UsageError(f"--im_size must be one of {', '.join(map(str, SUPPORTED_SIZES))}, got {args.im_size}")
    for flag in ("ngf", "ndf"):
        if getattr(args, flag) <= 0 or getattr(args, flag) % 8:
            raise UsageError(f"--{flag} must be a positive multiple of 8 (e.g. 16, 32, 64), got {getattr(args, flag)}")
    for flag in ("batch_size", "iter", "nz", "save_every", "sample_every", "log_every", "eval_n"):
        if getattr(args, flag) <= 0:
            raise UsageError(f"--{flag} must be positive, got {getattr(args, flag)}")
    for flag in ("recon_weight", "ortho", "keep"):
        if not getattr(args, flag) >= 0:
            raise UsageError(f"--{flag} must be at least 0, got {getattr(args, flag)}")
    if not 0 <= args.ema < 1:
        raise UsageError(f"--ema must be in [0, 1), got {args.ema}")
    if args.tensorboard:
        require_tensorboard()      # the optional package, or one line and exit 2 before any work
    ensure_dataset(args.path)      # a folder, or a known dataset name fetched into it; else refused
    size_line = choose_image_size(args)
    args.class_names = class_folders(args.path) if args.classes else None    # sorted subfolder names
    if args.classes and args.eval_every:
        raise UsageError("--eval_every is not for --classes: score each class with sample.py --class and metrics.py")
    return size_line


def choose_image_size(args):
    """--im_size left out of a fresh run: the paper's 256 for a named set, else the largest supported
    size not above the images' median shorter side (plumbing/images.py). Sets args.im_size and returns
    the line that says which and why; None when --im_size was given or the run resumes (a resumed run
    takes its checkpoint's size)."""
    if args.im_size is not None or getattr(args, "resume", None) is not None:
        return None
    args.im_size, why = default_image_size(args.path, SUPPORTED_SIZES)
    return f"image size {why} (--im_size to choose another)"


# ------------------------------------------------------------------------------------------------
# 3. Networks (Fig. 3, Fig. 4) and Adam (§4)
# ------------------------------------------------------------------------------------------------

def build_networks(args, class_names=None):
    """G then D, from the seed. For the ablation (Table 2) the SLEs and/or D's decoders are removed
    *after* each network is built in full, so the layers all variants share start from equal weights."""
    G = Generator(ngf=args.ngf, nz=args.nz, im_size=args.im_size)
    D = Discriminator(ndf=args.ndf, im_size=args.im_size)
    if args.no_sle:
        G.remove_sle(), D.remove_sle()
    if args.no_recon:
        D.remove_decoders()
    if class_names:        # not in the paper: BigGAN's classes, made the same way (conditional.py)
        make_conditional_generator(G, class_names), add_projection(D, len(class_names))
    return G, D


def make_optimizers(G, D, lr, device, compile=False):
    """Adam, lr 2e-4, betas (0.5, 0.999) for both networks (§4); on CUDA the fused kernel (speed.py)."""
    kw = dict(lr=lr, betas=(0.5, 0.999), fused=fused_adam(device, compile))
    return torch.optim.Adam(G.parameters(), **kw), torch.optim.Adam(D.parameters(), **kw)


# ------------------------------------------------------------------------------------------------
# 4. One training iteration (the losses, Eq. 2-4, are in losses.py)
# ------------------------------------------------------------------------------------------------

def train_step(G, D, opt_G, opt_D, real, args, ctx, distance, y=None, ortho=0.0):
    """One FastGAN iteration. `real` (B, 3, S, S) in [-1, 1]; `distance` is L_recons' per-image distance.
    `ctx` (speed.StepContext) says how the passes run (autocast, loss scaling, DDP); with every option
    off it does nothing. Not in the paper (conditional.py): `y` (B,) the reals' classes, the fakes' too
    (None: no classes); `ortho` G's orthogonal penalty (0: off). Returns the losses as 0-d tensors."""
    z = torch.randn(real.shape[0], args.nz, device=real.device)                      # (B, nz)
    with ctx.autocast():
        fake_big, fake_128 = G(z, y=y)                             # (B, 3, S, S), (B, 3, 128, 128)
    # DiffAugment on every image D sees (§4): the reals, and each of G's two outputs.
    real_aug = diff_augment(real, args.policy)
    fake_big_aug, fake_128_aug = diff_augment(fake_big, args.policy), diff_augment(fake_128, args.policy)

    # D step (Eq. 3 and Eq. 2): hinge on reals and fakes, and rebuild the reals from D's features.
    D.requires_grad_(True)
    opt_D.zero_grad(set_to_none=True)
    part = int(torch.randint(4, (1,)))                             # the quarter decoder_part rebuilds
    with ctx.local(D):                                             # DDP: average once, after the fakes
        with ctx.autocast():
            logits_big, logits_small, recons = D(real_aug, resize_to_128(real_aug), part=part, y=y)
            loss_real = losses.real_loss(losses.both_logits(logits_big, logits_small))
            # A sum over the images; under torchrun, over the global batch (see StepContext.processes).
            loss_recon = losses.reconstruction_loss(recons, real_aug, part, distance) * ctx.processes
        ctx.backward(loss_real + args.recon_weight * loss_recon, opt_D)
    with ctx.autocast():        # G's outputs detached: this pass trains D only
        loss_fake = losses.fake_loss(losses.both_logits(*D(fake_big_aug.detach(), fake_128_aug.detach(), y=y)))
    ctx.backward(loss_fake, opt_D)
    ctx.step(opt_D)

    # G step (Eq. 4): -E[D(G(z))], through the same forward of G. D is frozen (no weight gradients).
    D.requires_grad_(False)
    opt_G.zero_grad(set_to_none=True)
    with ctx.local(D):                                             # D's DDP has nothing to average here
        with ctx.autocast():
            loss_g = losses.generator_loss(losses.both_logits(*D(fake_big_aug, fake_128_aug, y=y)))
        ctx.backward(loss_g + orthogonal_penalty(G, ortho), opt_G)   # BigGAN §3.1; 0 unless --ortho
    ctx.step(opt_G)
    return {"d_real": loss_real.detach(), "d_fake": loss_fake.detach(),
            "recon": loss_recon.detach(), "g": loss_g.detach()}


# ------------------------------------------------------------------------------------------------
# 5. The loop
# ------------------------------------------------------------------------------------------------

def train(args):
    """Set up, then run iterations until args.iter. Returns the run folder."""
    init = init_from(args)                   # --init_from: its weights (plumbing/pretrained.py), else None
    size_line = check_args(args)
    rank, world, device = setup_distributed(args.device, args.batch_size)
    is_main = rank == 0                      # only rank 0 keeps the EMA, logs, draws grids and saves
    say = print if is_main else (lambda *a, **k: None)
    if size_line:
        say(size_line)
    batch = args.batch_size // world         # this process's share of the batch
    resolve_speed_flags(args, device)
    run_dir = Path(args.out) / args.name
    ckpt_dir, img_dir = run_dir / "checkpoints", run_dir / "images"
    state = resume_state(args, run_dir)
    start = state["iteration"] if state else 0
    random.seed(args.seed), np.random.seed(args.seed), torch.manual_seed(args.seed)

    # 2. data: uint8 images on the device (or streamed); each process its own slice under torchrun
    data, reals = training_data(args.path, args.im_size, batch, device, rank, world,
                                args.seed, start, args.stream, args.workers, args.channels_last,
                                keep=max(8, args.eval_n), log=say, classes=args.class_names)

    # 3. networks, the EMA generator (samples come from it, in eval mode), Adam
    G, D = build_networks(args, args.class_names)
    G, D = G.to(device), D.to(device)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    weights = state or init                  # --resume continues a run; --init_from starts one from weights
    if weights is not None:
        G.load_state_dict(weights["G"]), D.load_state_dict(weights["D"]), G_ema.load_state_dict(weights["G_ema"])
    n_g, n_d = (sum(p.numel() for p in net.parameters()) for net in (G, D))
    nets = (G, D, G_ema)                           # the plain modules, whose weights checkpoints hold
    G, D = speed_up(G, D, args, device, world, say)  # same function, faster (before Adam sees the weights)
    opt_G, opt_D = make_optimizers(G, D, args.lr, device, args.compile)
    ctx = StepContext(device, args.amp, (opt_G, opt_D), processes=world, dtype=args.amp_dtype)
    distance = reconstruction_distance(args.recon, device)        # Eq. 2's per-image distance
    if state is not None:
        load_optimizer_state(opt_G, state["opt_G"]), load_optimizer_state(opt_D, state["opt_D"])
        ctx.load_state_dict(state.get("scalers"))
        set_rng_state(state["rng"])
        say(f"resumed from iteration {start}")
    if world > 1:
        if rank > 0 or state is None:              # each process its own noise (rank 0 resumes exactly)
            torch.manual_seed(args.seed + 1_000_003 * rank + start)
        G, D = wrap_distributed(G, D, device, args.compile)
    ema = EMA(G_ema, unwrap(G), args.ema) if is_main else None
    say(f"G: {n_g:,} parameters, D: {n_d:,} parameters, device {device}"
        f"{f', {world} processes' if world > 1 else ''}; fast_upsample={args.fast_upsample} "
        f"channels_last={args.channels_last} amp={args.amp} compile={args.compile}")

    n_classes = len(args.class_names or ())                        # 0: unconditional
    n_grid, y_grid = grid_labels(args.class_names, device)         # 16 samples, or a row of 4 per class
    fixed = fixed_inputs(G_ema, n_grid, args.seed, device)         # the grids' latents and noise
    show_real = reals[:8].to(device).float() / 127.5 - 1           # (8, 3, S, S) for the recons grid
    if is_main:       # images/, args.json, and one line: one checkpoint's size, the most the run keeps, the free disk
        say(start_run_folder(run_dir, args, nets, n_grid))

    log = LossLog(run_dir if is_main else None, args, start, device)   # progress, log.jsonl, watch.py's
    clean, it = False, start
    try:
        with StopSignal(say, repeat_aborts=world == 1) as stop, resumable_writes(ckpt_dir):  # disk full: 1 line
            while it < args.iter:
                real, y = data.labelled_batch(batch)   # (B, 3, S, S) in [-1, 1], (B,) or None
                loss_values = train_step(G, D, opt_G, opt_D, real, args, ctx, distance, y, args.ortho)
                it += 1
                if ema is not None:
                    ema.update(it)
                log.add(loss_values, it)

                at_log = it % args.log_every == 0 or it in (start + 1, args.iter)    # a first line at once
                at_save = it % args.save_every == 0 or it == args.iter
                at_sample = it % args.sample_every == 0 or it == args.iter
                at_eval = args.eval_every and it % args.eval_every == 0
                if (at_log or at_save) and int(first_of_all(log.first_bad, world)) >= 0:
                    clean = True                           # every process stops here (never saves a NaN)
                    if is_main:
                        log.check_finite()                 # raises Diverged, which says where to resume
                    raise SystemExit(1)
                if at_log:
                    log.write(it)
                if is_main and (at_sample or at_eval or at_save):
                    recompute_batchnorm_statistics(G_ema, batch, 16 * world, seed=args.seed, classes=n_classes)
                if is_main and at_sample:
                    save_samples(G_ema, unwrap(D), fixed, show_real, (it // args.sample_every) % 4, img_dir, it, y_grid)
                    log.add_grids(it)                      # a frame of images/progress.gif; TensorBoard
                if is_main and at_eval:
                    fakes = sample_uint8(G_ema, args.eval_n, args.seed + 1)        # (n, 3, S, S) uint8
                    if log.evaluated(it, metrics.score(fakes, reals, device=str(device))):   # the best SWD yet
                        write_best(ckpt_dir, checkpoint_state(*nets, opt_G, opt_D, it, args, ctx.state_dict()))
                if is_main and at_save:
                    write_checkpoints(ckpt_dir, checkpoint_state(*nets, opt_G, opt_D, it, args, ctx.state_dict()))
                if agree(stop.requested, world):
                    clean = True
                    if is_main:
                        recompute_batchnorm_statistics(G_ema, batch, 16 * world, seed=args.seed, classes=n_classes)
                        write_checkpoints(ckpt_dir, checkpoint_state(*nets, opt_G, opt_D, it, args, ctx.state_dict()),
                                          numbered=False)
                        log.close()
                        say(f"interrupted: saved iteration {it} to {ckpt_dir / 'latest.pt'}; "
                            f"continue with --resume latest", file=sys.stderr)
                    raise SystemExit(130)
        clean = True
    finally:
        log.close()
        shutdown(world, clean)
    say(f"done: {it} iterations; checkpoints in {ckpt_dir}, images in {img_dir}")
    return run_dir


def main(argv=None):
    args = parse_args(argv)
    try:
        train(args)
    except UsageError as e:
        print(f"train.py: error: {e}", file=sys.stderr)
        raise SystemExit(2)
    except (Diverged, WriteFailed) as e:     # a loss became NaN, or a write failed: where to resume
        print(f"\ntrain.py: {e}", file=sys.stderr)
        raise SystemExit(1)


if __name__ == "__main__":
    main()
