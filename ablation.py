"""The ablation of FastGAN's two ideas: paper Table 2, over several seeds.

    python ablation.py --path data/panda --im_size 128 --ngf 32 --ndf 32 --iter 5000 --seeds 0 1 2
    python ablation.py --path data/panda ... --variants both --recon_weights 1 3 10 --seeds 0 1 2

FastGAN (Liu et al., ICLR 2021) adds two things to a DCGAN-like GAN, and Table 2 of the paper
measures each one on its own:

    variant    skip-layer excitation (§3.1)   self-supervised decoders in D (§3.2)   train.py flags
    baseline   no                              no                                     --no_sle --no_recon
    sle        yes                             no                                     --no_recon
    recon      no                              yes                                    --no_sle
    both       yes                             yes  (full FastGAN)                    (none)

"SLE" is the skip-layer excitation of Eq. 1: G's high-resolution maps are gated channel by channel
by its low-resolution maps (and D's by D's, Fig. 4: --no_sle removes both). "Decoders" are D's three
small decoders and the reconstruction loss L_recons of Eq. 2, which make D an encoder of real images.

This script trains each variant once per seed (--seeds), each as an ordinary train.py run (so each
has its own checkpoints, log and sample grids, and each checkpoint works with sample.py), with the
same data, batch size and number of iterations. Then it draws samples from each run and scores them
against the training images with metrics.py: SWD always (ProGAN §5: needs no network weights), FID
and KID when pytorch-fid is installed (the paper's metric is FID, §4).

One seed, one comparison; several seeds, a spread. A GAN trained twice from two seeds lands at two
different scores, and the paper's Table 2 has one number per cell. With --seeds 0 1 2 every cell of
our table is the mean ± the standard deviation over the seeds (the sample standard deviation, n - 1),
and the table says which differences exceed that spread, by a plain rule: two rows differ beyond the
spread when |mean_a - mean_b| > std_a + std_b, i.e. when the intervals mean ± std of the two rows do
not overlap. With 3 seeds this is a rough screen, not a significance test: read it as "this gap is
larger than the seed-to-seed scatter", nothing more.

Settings of the full model, in the same machinery: --recon_weights W1 W2 ... trains each variant
that has decoders (recon, both) once per weight of L_recons (train.py --recon_weight), as its own
row: "both" at train.py's default weight, "both-w3" at weight 3, and so on. --variants picks the
rows of Table 2 to train (default: all four), so `--variants both --recon_weights 1 3 10` sweeps the
weight of the full model, and its weight-1 runs are the very runs of Table 2's "both" row.

Same seed, same start: train.py builds G and D *in full* from the seed and only then drops the SLE
modules and/or the decoders (train.build_networks), so for one seed the layers that two variants
share start from identical weights, and every variant draws the same batches, latents, injected
noise and augmentations at every iteration (train_step draws decoder_part's quarter even when there
are no decoders): the variants differ only in what the paper ablates. The tests check both claims.

Everything goes to OUT/ablation-NAME/ (default runs/ablation-<data folder name>/):
    baseline/seed0/ ... both/seed2/   one train.py run per row and seed (checkpoints/, images/,
                                      log.jsonl, args.json), each with scores.json: its scores,
                                      reused by a later call; rows of a weight sweep: both-w3/seed0/ ...
    table.md                          the table: parameters, seconds per iteration, SWD, FID/KID as
                                      mean ± std over the seeds; the per-seed values; the differences
                                      that exceed the spread
    samples.png                       one row per run (row by row of the table, seed by seed), EMA
                                      generator; column j of the rows of one seed: the same latent and
                                      noise (each run samples from its own seed)
    results.json                      every number of the table, per seed, and SWD per pyramid level

Resuming: run the same command again. A run whose latest checkpoint is at --iter is not trained
again (its scores are read back from its scores.json, or recomputed); a run stopped part way
continues from its checkpoints/latest.pt (train.py --resume); a run not started starts. So adding a
seed (--seeds 0 1, then --seeds 0 1 2) trains only the new seed's runs, and a larger --iter continues
all of them. Refused input (a missing folder, a bad value, an existing run with other widths) is one
line `ablation.py: error: ...` on stderr and exit status 2, before anything is written.
A file that cannot be written (a full disk, a read-only folder) is one line naming it, exit status 1;
every file is written whole or not at all, and the trained runs are kept.

Read top to bottom: 1. the variants and the rows, 2. the command line, 3. where each run stands,
4. training, 5. measuring (parameters, seconds per iteration, samples and scores), 6. the spread
over seeds, 7. writing the results, 8. main.
"""

import argparse
import functools
import json
import os
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import metrics
import sample
import train
from plumbing.checkpoint import ARCH_KEYS, generator_from_checkpoint, load_checkpoint
from plumbing.cli import OneLineParser, UsageError, add_device_argument, resolve_device
from plumbing.datasets import ensure_dataset
from plumbing.disk import WriteFailed, atomic_write
from generator import SUPPORTED_SIZES
from plumbing.images import load_images, save_grid, to_uint8
from plumbing.monitor import clock

# ------------------------------------------------------------------------------------------------
# 1. The four variants (Table 2), and the rows of our table
# ------------------------------------------------------------------------------------------------

# (name, has SLE, has decoders), in the order of the table and of the rows of samples.png.
VARIANTS = (
    ("baseline", False, False),  # DCGAN-like G and D: neither idea
    ("sle", True, False),        # + skip-layer excitation (§3.1, Eq. 1) in G and D
    ("recon", False, True),      # + D's decoders and L_recons (§3.2, Eq. 2)
    ("both", True, True),        # full FastGAN
)
VARIANT_NAMES = tuple(name for name, _, _ in VARIANTS)

GRID_COLUMNS = 8       # samples per row of samples.png
GRID_MAX_CELL = 256    # samples.png shows each sample at most this size (1024 x 8 x 4 would be huge)
SAMPLE_BATCH = 16      # images per forward pass when sampling

# Checkpoint arguments that must match this ablation's for an existing run to be part of it: the
# networks (ARCH_KEYS) and what makes the runs comparable (batch, seed, EMA decay, L_recons weight).
MUST_MATCH = (*ARCH_KEYS, "batch_size", "seed", "ema", "recon_weight")


def train_flags(sle, decoders):
    """train.py's ablation flags of a variant."""
    return (["--no_sle"] if not sle else []) + (["--no_recon"] if not decoders else [])


def default_recon_weight():
    """train.py's default weight of L_recons (the row "both" is trained at it, "both-w3" at 3)."""
    return train.parse_args(["--path", "."]).recon_weight


def table_rows(args):
    """The rows of the table, in order: (label, sle, decoders, recon_weight).

    Each variant of --variants is one row; a variant with decoders is one row per weight of
    --recon_weights, labelled "<variant>" at train.py's default weight and "<variant>-w<weight>"
    otherwise (so a row keeps its name, and its runs their folder, whatever else the command asks).
    Variants without decoders have no L_recons: the weight means nothing there, they get one row."""
    default = default_recon_weight()
    rows = []
    for name, sle, decoders in VARIANTS:
        if name not in args.variants:
            continue
        for w in (args.recon_weights if decoders else [default]):
            rows.append((name if w == default else f"{name}-w{w:g}", sle, decoders, w))
    return rows


# ------------------------------------------------------------------------------------------------
# 2. Command line
# ------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = OneLineParser(
        prog="ablation.py",
        description="FastGAN's ablation (paper Table 2): train baseline, +SLE, +decoders and both with "
                    "the same budget, once per seed, then score them and compare them beyond the "
                    "spread over seeds.")
    p.add_argument("--path", required=True, help="folder of training images (searched recursively)")
    p.add_argument("--name", default=None, help="ablation name (default: the data folder's name)")
    p.add_argument("--out", default="runs", help="root folder; this ablation writes OUT/ablation-NAME/")
    p.add_argument("--iter", type=int, required=True, help="iterations of each run (the shared budget)")
    p.add_argument("--im_size", type=int, default=None, help=f"image size, one of {SUPPORTED_SIZES} "
                   "(default: as train.py, from the data)")
    p.add_argument("--ngf", type=int, default=64, help="G's width (multiple of 8); 16-32 for a CPU")
    p.add_argument("--ndf", type=int, default=64, help="D's width (multiple of 8); 16-32 for a CPU")
    p.add_argument("--batch_size", type=int, default=8, help="images per iteration")
    p.add_argument("--seeds", "--seed", type=int, nargs="+", default=[0],
                   help="seeds: every row is trained once per seed (and samples from its own seed); "
                        "the table gives mean ± standard deviation over them")
    p.add_argument("--variants", nargs="+", choices=VARIANT_NAMES, default=list(VARIANT_NAMES),
                   help="the variants of Table 2 to train")
    p.add_argument("--recon_weights", type=float, nargs="+", default=None,
                   help="weights of L_recons (train.py --recon_weight) for the variants with decoders, "
                        "one row each; None: train.py's default")
    p.add_argument("--ema", type=float, default=0.999,
                   help="long-run EMA decay passed to train.py (ramped up early in a run: see ema.py)")
    add_device_argument(p)
    p.add_argument("--n_samples", type=int, default=64, help="samples per run (raw G and EMA G) to score")
    p.add_argument("--no_fid", action="store_true", help="skip FID/KID (they need pytorch-fid)")
    p.add_argument("--save_every", type=int, default=1000, help="passed to train.py")
    p.add_argument("--sample_every", type=int, default=500, help="passed to train.py")
    p.add_argument("--log_every", type=int, default=20, help="passed to train.py")
    args = p.parse_args(argv)
    args.name = args.name or Path(args.path).resolve().name
    args.recon_weights = args.recon_weights or [default_recon_weight()]
    return args


def train_argv(args, name, sle, decoders, recon_weight=None, seed=None, resume=None):
    """The train.py command line of one run: row `name`, one seed; it writes OUT/ablation-NAME/<name>/seed<seed>/.
    recon_weight and seed default to train.py's default weight and the first of --seeds."""
    recon_weight = default_recon_weight() if recon_weight is None else recon_weight
    seed = args.seeds[0] if seed is None else seed
    argv = ["--path", str(args.path), "--out", str(args.out), "--name", f"ablation-{args.name}/{name}/seed{seed}",
            *(["--im_size", str(args.im_size)] if args.im_size is not None else []),
            "--ngf", str(args.ngf), "--ndf", str(args.ndf),
            "--batch_size", str(args.batch_size), "--iter", str(args.iter), "--seed", str(seed),
            "--ema", str(args.ema), "--recon_weight", str(recon_weight), "--device", args.device,
            "--save_every", str(args.save_every), "--sample_every", str(args.sample_every),
            "--log_every", str(args.log_every), *train_flags(sle, decoders)]
    return argv + (["--resume", str(resume)] if resume is not None else [])


def check_args(args):
    """Refuse bad values before any work. train.py's own checks (sizes, widths, positive counts, the
    folder) run on the command line the runs will get, with train.py's messages. Returns the device."""
    for flag in ("seeds", "recon_weights", "variants"):
        values = getattr(args, flag)
        if len(set(values)) != len(values):
            shown = " ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)
            raise UsageError(f"--{flag} lists a value twice ({shown}): give each once")
    if min(args.recon_weights) < 0:
        raise UsageError(f"--recon_weights must be at least 0, got {min(args.recon_weights):g}")
    if args.recon_weights != [default_recon_weight()] and not {"recon", "both"} & set(args.variants):
        raise UsageError("--recon_weights weighs L_recons, which only the variants with decoders have: "
                         "add --variants recon and/or both")
    if args.im_size is None:          # as train.py: the paper's size for a named set, else the images'
        ensure_dataset(args.path)
        print(train.choose_image_size(args))
    train.check_args(train.parse_args(train_argv(args, *VARIANTS[-1])))
    if args.n_samples <= 0:
        raise UsageError(f"--n_samples must be positive, got {args.n_samples}")
    return resolve_device(args.device)


# ------------------------------------------------------------------------------------------------
# 3. Where each run stands: not started, part way, or done
# ------------------------------------------------------------------------------------------------

def run_dir_of(root, name, seed):
    """The train.py run of row `name` and one seed: ROOT/<name>/seed<seed>/."""
    return Path(root) / name / f"seed{seed}"


def latest_checkpoint(run_dir):
    return Path(run_dir) / "checkpoints" / "latest.pt"


def run_status(run_dir, args, name, sle, decoders, recon_weight, seed):
    """("new", 0), ("partial", iteration) or ("done", iteration) for one run in run_dir.

    An existing checkpoint must belong to this ablation: the same networks (ARCH_KEYS, SLE and
    decoders included), batch, seed, EMA decay and L_recons weight as the train.py command line this
    run gets now (else the table would compare unlike things), and not past --iter (else the budgets
    would differ)."""
    flat = latest_checkpoint(Path(run_dir).parent)      # one run per variant, with no seed folder
    if flat.is_file():
        raise UsageError(f"{flat} is a run without a seed folder: move {Path(run_dir).parent}/* into "
                         f"{Path(run_dir).parent}/seed<its seed>/ (e.g. seed0/), or use another --name or --out")
    ckpt = latest_checkpoint(run_dir)
    if not ckpt.is_file():
        return "new", 0
    state = load_checkpoint(ckpt)          # UsageError if unreadable or not ours
    wanted = train.parse_args(train_argv(args, name, sle, decoders, recon_weight, seed))
    for k in MUST_MATCH:
        saved, now = state["args"].get(k), getattr(wanted, k)
        if saved != now and k in ("no_sle", "no_recon"):
            raise UsageError(f"{ckpt} is not a '{name}' run (it has {k} = {saved}): use another --name or --out")
        if saved != now:
            raise UsageError(f"{ckpt} was trained with --{k} {saved}, but this ablation has --{k} {now}: "
                             f"pass --{k} {saved} to continue it, or use another --name or --out")
    it = state["iteration"]
    if it > args.iter:
        raise UsageError(f"{ckpt} is at iteration {it}, past --iter {args.iter}: pass --iter {it} (or "
                         f"more), or another --name or --out, so that all runs get one budget")
    return ("done" if it == args.iter else "partial"), it


# ------------------------------------------------------------------------------------------------
# 4. Training one run: an ordinary train.py run, in this process
# ------------------------------------------------------------------------------------------------

def train_variant(args, name, sle, decoders, recon_weight, seed, resume=None):
    """train.main with the row's flags and one seed. train.py prints its own progress lines. It exits
    (SystemExit) when it refuses something (2, after printing its own one line), when a loss
    diverges (1) or on Ctrl-C (130, after saving latest.pt); we add which run stopped."""
    try:
        train.main(train_argv(args, name, sle, decoders, recon_weight, seed, resume))
    except SystemExit as e:
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
        if code == 0:
            return
        if code != 2:   # train.py has said why; say where the ablation stands
            print(f"ablation.py: '{name}' seed {seed} stopped (train.py exit status {code}); the runs "
                  f"before it are kept: run the same command again to continue", file=sys.stderr)
        raise SystemExit(code)


# ------------------------------------------------------------------------------------------------
# 5. Measuring a run: size, speed, samples and scores
# ------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def count_parameters(im_size, ngf, ndf, sle, decoders):
    """(parameters of G, parameters of D), as train.py prints them: built by train.build_networks
    (on a forked random state: counting never moves anyone's random numbers). Remembered, since
    building the paper's networks takes seconds."""
    with torch.random.fork_rng(devices=[]):
        G, D = train.build_networks(argparse.Namespace(im_size=im_size, ngf=ngf, ndf=ndf, nz=256,
                                                       no_sle=not sle, no_recon=not decoders))
    return tuple(sum(p.numel() for p in net.parameters()) for net in (G, D))


def timing_from_log(log_path, last_iter):
    """(seconds per iteration, seconds spent in the training loop) from a run's log.jsonl.

    Each row of the log is {"iter", "time", "it_per_s", losses...}, written every --log_every
    iterations; "time" counts from the start of *this process's* loop, so a resumed run appends rows
    whose clock starts again at 0. We cut the log into such segments (a row whose iteration or time
    does not grow starts a new one) and take:
      seconds per iteration: the median over consecutive rows of one segment of d(time) / d(iter),
        the steady-state cost of an iteration. The stretch before a segment's first row (start-up,
        the first slow iterations) is in no such interval, and the few intervals that hold a
        checkpoint save or a sample grid do not move the median. With no two rows in one segment
        (--iter below 2 x --log_every), the median of 1 / it_per_s, start-up included.
      seconds in the loop: the sum over segments of their last row's time (all the runs' loops).
    Rows past last_iter are ignored; (None, None) if the log has no row."""
    if not Path(log_path).is_file():
        return None, None
    with open(log_path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    rows = [r for r in rows if r["iter"] <= last_iter]
    if not rows:
        return None, None
    segments = []
    for r in rows:
        prev = segments[-1][-1] if segments else None
        if prev is not None and r["iter"] > prev["iter"] and r["time"] > prev["time"]:
            segments[-1].append(r)
        else:
            segments.append([r])
    steps = [(b["time"] - a["time"]) / (b["iter"] - a["iter"]) for s in segments for a, b in zip(s, s[1:])]
    if not steps:
        steps = [1.0 / r["it_per_s"] for r in rows if r["it_per_s"] > 0]
    s_per_it = float(np.median(steps)) if steps else None
    return s_per_it, float(sum(s[-1]["time"] for s in segments))


def generator_on(state, ema, device):
    """The EMA (or raw) generator of a loaded checkpoint, in eval mode on `device`. Samples in the
    paper come from the EMA generator (§4); the raw G shows what the averaging adds."""
    return generator_from_checkpoint(state, ema=ema).to(device).eval().requires_grad_(False)


def thumbnails(images_uint8, max_size=GRID_MAX_CELL):
    """uint8 (B, 3, S, S) -> uint8 (B, 3, s, s) with s = min(S, max_size), area-averaged."""
    if images_uint8.shape[-1] <= max_size:
        return images_uint8
    small = F.interpolate(images_uint8.float(), size=(max_size, max_size), mode="area")
    return small.round().clamp(0, 255).to(torch.uint8)


def read_cached_scores(path, key):
    """The scores saved by an earlier call, if they were made the same way (else None)."""
    try:
        with open(path) as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return None
    return saved["scores"] if saved.get("key") == key else None


def evaluate_variant(run_dir, args, real_uint8, device, may_reuse, seed):
    """Sample and score one finished run. Returns (scores {"raw": ..., "ema": ...}, grid images, reused).

    Latents and injected noise come from sample.draw_inputs with the run's own seed: the same for
    every row of one seed (SLE and the decoders change neither nz nor the noise shapes), so column j
    of samples.png is, seed by seed, every row's generator answering one input; and a run's scores
    depend on the run alone, not on which other seeds the command lists. SWD compares n_samples
    images with the training images, FID/KID (EMA G only, as the paper reports its generators) when
    pytorch-fid is there. With few samples FID is strongly biased upwards (KID is not): compare the
    variants with each other, not with published numbers, which use 5,000-50,000 samples."""
    ckpt = latest_checkpoint(run_dir)
    state = load_checkpoint(ckpt)
    G_ema = generator_on(state, ema=True, device=device)
    z, noise = sample.draw_inputs(G_ema, args.n_samples, seed)      # (n, nz), noise of batch n
    k = min(GRID_COLUMNS, args.n_samples)
    grid = to_uint8(sample.generate(G_ema, z[:k], sample.slice_noise(noise, 0, k), SAMPLE_BATCH))

    # The scores depend on the weights, the samples and the real set: reuse them only if all agree.
    key = {"iteration": state["iteration"], "n_samples": args.n_samples, "seed": seed, "fid": not args.no_fid,
           "n_real": len(real_uint8), "checkpoint_mtime_ns": os.stat(ckpt).st_mtime_ns}
    scores_path = Path(run_dir) / "scores.json"
    scores = read_cached_scores(scores_path, key) if may_reuse else None
    if scores is not None:
        return scores, grid, True
    G_raw = generator_on(state, ema=False, device=device)
    scores = {}
    for which, G, fid in (("raw", G_raw, False), ("ema", G_ema, not args.no_fid)):
        fake = to_uint8(sample.generate(G, z, noise, SAMPLE_BATCH))   # (n, 3, S, S) uint8
        scores[which] = metrics.score(fake, real_uint8, device=str(device), fid=fid)
    with atomic_write(scores_path, sync=False) as f:
        f.write(json.dumps({"key": key, "scores": scores}, indent=2, default=float).encode())
    return scores, grid, False


# ------------------------------------------------------------------------------------------------
# 6. The spread over seeds: mean ± standard deviation, and which differences exceed it
# ------------------------------------------------------------------------------------------------

# What the table averages over the seeds: (key, column of table.md, number format). Lower is better
# for every one of them (seconds, and distances to the training images).
MEASURES = (
    ("s_per_it", "s / iteration", ".4f"),
    ("swd_raw", "SWD raw G", ".2f"),
    ("swd_ema", "SWD EMA G", ".2f"),
    ("fid_ema", "FID EMA G", ".2f"),
    ("kid_ema", "KID EMA G", ".4f"),
)

SPREAD_RULE = ("two rows differ beyond the spread when |mean_a - mean_b| > std_a + std_b (their "
               "intervals mean ± std do not overlap; std: sample standard deviation over the seeds, n - 1)")


def measures_of_run(run):
    """One run's numbers by MEASURES key (None where not measured, e.g. FID without pytorch-fid)."""
    raw, ema = run["scores"]["raw"], run["scores"]["ema"]
    return {"s_per_it": run["s_per_it"], "swd_raw": raw["swd"], "swd_ema": ema["swd"],
            "fid_ema": ema.get("fid"), "kid_ema": ema.get("kid")}


def mean_std(values):
    """(mean, sample standard deviation with n - 1) of one measure over the seeds. The std is None
    with one seed (no spread to speak of); both are None when a seed lacks the measure."""
    if not values or any(v is None for v in values):
        return None, None
    x = np.asarray(values, dtype=np.float64)
    return float(x.mean()), (float(x.std(ddof=1)) if len(x) > 1 else None)


def beyond_spread(a, b):
    """SPREAD_RULE for two (mean, std) pairs: True, False, or None when either has no spread."""
    (mean_a, std_a), (mean_b, std_b) = a, b
    if None in (mean_a, std_a, mean_b, std_b):
        return None
    return abs(mean_a - mean_b) > std_a + std_b


def summarise(row, runs, args):
    """One row of the table from its runs (one per seed, in --seeds order): the row's description,
    mean and std of every measure, and the per-seed values. "s_per_it" and "scores" hold the means,
    in the shape of a single run's (metrics.score's keys swd, fid, kid)."""
    name, sle, decoders, recon_weight = row
    per_seed = [measures_of_run(r) for r in runs]
    stats = {key: mean_std([m[key] for m in per_seed]) for key, _, _ in MEASURES}
    n_g, n_d = count_parameters(args.im_size, args.ngf, args.ndf, sle, decoders)
    return {"variant": name, "sle": sle, "decoders": decoders, "recon_weight": recon_weight if decoders else None,
            "train_flags": train_flags(sle, decoders), "iteration": args.iter, "params_G": n_g, "params_D": n_d,
            "seeds": [r["seed"] for r in runs],
            "mean": {k: m for k, (m, _) in stats.items()}, "std": {k: s for k, (_, s) in stats.items()},
            "s_per_it": stats["s_per_it"][0],
            "scores": {"raw": {"swd": stats["swd_raw"][0]},
                       "ema": {"swd": stats["swd_ema"][0], "fid": stats["fid_ema"][0], "kid": stats["kid_ema"][0]}},
            "per_seed": runs}


def differences(rows):
    """Every pair of rows, for every measure with a spread: the two (mean, std) and whether the
    difference exceeds the spread (SPREAD_RULE). The first of a pair is the lower (better) mean."""
    out = []
    for key, _, _ in MEASURES:
        for i, a in enumerate(rows):
            for b in rows[i + 1:]:
                sa, sb = (a["mean"][key], a["std"][key]), (b["mean"][key], b["std"][key])
                verdict = beyond_spread(sa, sb)
                if verdict is None:
                    continue
                (lo, s_lo), (hi, s_hi) = sorted([(a["variant"], sa), (b["variant"], sb)], key=lambda t: t[1][0])
                out.append({"measure": key, "lower": lo, "higher": hi, "lower_mean_std": s_lo,
                            "higher_mean_std": s_hi, "beyond_spread": verdict})
    return out


# ------------------------------------------------------------------------------------------------
# 7. Writing the results: table.md, samples.png, results.json
# ------------------------------------------------------------------------------------------------

def _num(x, fmt):
    return "n/a" if x is None else format(x, fmt)


def _cell(mean, std, fmt):
    """"mean ± std", or the mean alone with one seed, or n/a."""
    return _num(mean, fmt) if mean is None or std is None else f"{mean:{fmt}} ± {std:{fmt}}"


def table_markdown(rows, diffs, args, command, wall_s, n_real):
    """The markdown table of the rows (mean ± std over the seeds), the per-seed values, the
    differences beyond the spread, and the lines that say how it was made."""
    n = len(args.seeds)
    head = ("| variant | SLE (§3.1) | decoders (§3.2) | G parameters | D parameters | s / iteration "
            "| SWD raw G | SWD EMA G | FID EMA G | KID EMA G |")
    lines = [f"# FastGAN ablation (paper Table 2): {args.name}", "", head,
             "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        cells = [_cell(r["mean"][k], r["std"][k], fmt) for k, _, fmt in MEASURES]
        lines.append(f"| {r['variant']} | {'yes' if r['sle'] else 'no'} | {'yes' if r['decoders'] else 'no'} "
                     f"| {r['params_G']:,} | {r['params_D']:,} | " + " | ".join(cells) + " |")
    train_s = sum(run["train_s"] or 0.0 for r in rows for run in r["per_seed"])
    seeds = ", ".join(map(str, args.seeds))
    lines += [
        "",
        (f"Each cell: mean ± standard deviation over {n} seeds ({seeds}), one run per variant and seed "
         "(sample standard deviation, n - 1)." if n > 1 else f"One seed ({seeds}): no spread."),
        "",
        f"Command: `{command}`",
        "",
        f"Iterations: {args.iter} per run, batch {args.batch_size}, {args.im_size}x{args.im_size}, "
        f"ngf {args.ngf}, ndf {args.ndf}, EMA decay {args.ema}; L_recons weight "
        f"{default_recon_weight():g} (train.py's default), or W in a row named -wW.",
        "",
        f"Wall time: {format_seconds(wall_s)} for this call of ablation.py; the {n * len(rows)} training "
        f"loops took {format_seconds(train_s)} in all (from their logs, including earlier calls).",
        "",
        "Scores (lower is better): SWD x 1e3 (ProGAN §5, mean over Laplacian levels) of "
        f"{args.n_samples} samples against the {n_real} training images; FID/KID of the EMA "
        "generator's samples (few samples bias FID upwards: compare rows, not papers).",
        "s / iteration: median over log intervals of d(time) / d(iteration), start-up excluded.",
    ]
    errors = {run["scores"]["ema"].get("fid_error") for r in rows for run in r["per_seed"]} - {None}
    if errors:
        lines.append(f"FID/KID n/a: {'; '.join(sorted(errors))}.")
    if n > 1:
        lines += ["", "## Per seed", "",
                  "| variant | seed | s / iteration | SWD raw G | SWD EMA G | FID EMA G | KID EMA G |",
                  "|---|--:|--:|--:|--:|--:|--:|"]
        for r in rows:
            for run in r["per_seed"]:
                m = measures_of_run(run)
                lines.append(f"| {r['variant']} | {run['seed']} | "
                             + " | ".join(_num(m[k], fmt) for k, _, fmt in MEASURES) + " |")
        lines += ["", "## Differences beyond the spread", "", f"Rule: {SPREAD_RULE}.", ""]
        if len(rows) < 2:
            lines.append("- one row: no pair to compare")
        for key, label, fmt in MEASURES:
            found = [d for d in diffs if d["measure"] == key]
            if not found:
                continue
            beyond = [f"{d['lower']} {_cell(*d['lower_mean_std'], fmt)} < {d['higher']} "
                      f"{_cell(*d['higher_mean_std'], fmt)}" for d in found if d["beyond_spread"]]
            lines.append(f"- {label}: " + ("; ".join(beyond) if beyond else "none")
                         + f" ({len(beyond)} of {len(found)} pairs beyond the spread)")
    lines += ["", f"samples.png: EMA generator; one block of {len(rows)} row(s) per seed (seeds {seeds}), "
                  f"in each block the rows {', '.join(r['variant'] for r in rows)} top to bottom; within "
                  "a block, column j is the same latent and noise in every row."]
    return "\n".join(lines) + "\n"


def format_seconds(s):
    """A stopwatch reading (hours past 24 counted on: a 30-hour ablation is '30:00:00'); seconds under a minute."""
    return clock(s) if s >= 60 else f"{s:.1f} s"


def output_names(rows):
    """(table, samples, results) file names: table.md, samples.png, results.json for the four rows of
    Table 2, and a suffix naming the rows for any other selection (a weight sweep writes
    table-both_both-w3_both-w10.md), so that two commands sharing runs do not overwrite each other."""
    labels = [r[0] for r in rows]
    suffix = "" if labels == list(VARIANT_NAMES) else "-" + "_".join(labels)
    return f"table{suffix}.md", f"samples{suffix}.png", f"results{suffix}.json"


# ------------------------------------------------------------------------------------------------
# 8. Main
# ------------------------------------------------------------------------------------------------

def run(args, command):
    t0 = time.time()

    def elapsed():
        return format_seconds(time.time() - t0)

    device = check_args(args)
    real = load_images(args.path, args.im_size, log=lambda m: None)   # (M, 3, S, S) uint8;
    root = Path(args.out) / f"ablation-{args.name}"                         # train.py prints warnings
    rows = table_rows(args)
    # Seed by seed: all rows of the first seed, then of the next, so a stopped ablation has whole seeds.
    runs = [(row, seed) for seed in args.seeds for row in rows]
    # Every existing run is checked before anything trains: a refusal then costs no training time.
    status = {(row[0], seed): run_status(run_dir_of(root, row[0], seed), args, *row, seed) for row, seed in runs}
    print(f"ablation: {len(rows)} rows x {len(args.seeds)} seed(s) x {args.iter} iterations in {root}/ ("
          + ", ".join(f"{n} seed {sd}: {st}" + (f" at {i}" if st == "partial" else "")
                      for (n, sd), (st, i) in status.items()) + ")")

    results, grids = {}, {}
    for k, ((name, sle, decoders, weight), seed) in enumerate(runs, 1):
        tag = (f"[{k}/{len(runs)}] {name}, seed {seed} (SLE {'yes' if sle else 'no'}, decoders "
               f"{'yes' if decoders else 'no'}" + (f", L_recons weight {weight:g})" if decoders else ")"))
        state, it = status[(name, seed)]
        run_dir = run_dir_of(root, name, seed)
        if state == "done":
            print(f"{tag}: skipped, already done (iteration {it}); elapsed {elapsed()}")
            how = "done before"
        else:
            if state == "partial":
                print(f"{tag}: resuming from iteration {it} to {args.iter}; elapsed {elapsed()}")
                how = f"resumed from {it}"
            else:
                print(f"{tag}: training from scratch to iteration {args.iter}; elapsed {elapsed()}")
                how = "trained"
            train_variant(args, name, sle, decoders, weight, seed,
                          latest_checkpoint(run_dir) if state == "partial" else None)
            print(f"{tag}: trained to iteration {args.iter}; elapsed {elapsed()}")
        print(f"{tag}: scoring {args.n_samples} samples of raw G and EMA G ...")
        scores, grid, reused = evaluate_variant(run_dir, args, real, device, may_reuse=(state == "done"), seed=seed)
        grids[(name, seed)] = thumbnails(grid)
        s_per_it, train_s = timing_from_log(run_dir / "log.jsonl", args.iter)
        results[(name, seed)] = {"seed": seed, "this_call": how, "checkpoint": str(latest_checkpoint(run_dir)),
                                 "s_per_it": s_per_it, "train_s": train_s, "scores": scores}
        print(f"{tag}: done: SWD raw G {scores['raw']['swd']:.2f}, EMA G {scores['ema']['swd']:.2f}"
              f"{' (scores read from scores.json)' if reused else ''}; elapsed {elapsed()}")

    summary = [summarise(row, [results[(row[0], seed)] for seed in args.seeds], args) for row in rows]
    diffs = differences(summary)
    wall = time.time() - t0
    table_name, samples_name, results_name = output_names(rows)
    with atomic_write(root / table_name, sync=False) as f:
        f.write(table_markdown(summary, diffs, args, command, wall, len(real)).encode())
    save_grid(torch.cat([grids[(row[0], seed)] for seed in args.seeds for row in rows]),
              root / samples_name, nrow=len(grids[runs[0][0][0], runs[0][1]]))
    with atomic_write(root / results_name, sync=False) as f:
        f.write(json.dumps({"command": command, "iterations": args.iter, "seeds": args.seeds, "wall_time_s": wall,
                   "settings": {k: v for k, v in vars(args).items()}, "n_real": len(real),
                   "s_per_it": "median over log intervals of d(time)/d(iter), start-up excluded",
                   "mean_std": "mean and sample standard deviation (n - 1) over the seeds; "
                               "'s_per_it' and 'scores' of a row are the means, 'per_seed' every run",
                   "spread_rule": SPREAD_RULE,
                   "samples_png_rows": [r[0] for r in rows], "samples_png_seeds": args.seeds,
                   "variants": summary, "differences": diffs},
                  indent=2, default=float).encode())
    print(f"ablation: wrote {root / table_name}, {root / samples_name} and {root / results_name}; "
          f"total {elapsed()}")
    print((root / table_name).read_text(), end="")
    return root


def main(argv=None):
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    args = parse_args(argv)
    command = "python ablation.py " + shlex.join(argv)
    try:
        run(args, command)
    except UsageError as e:
        print(f"ablation.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        raise SystemExit(2)
    except WriteFailed as e:    # a full disk, a read-only folder: the trained variants are kept
        print(f"ablation.py: error: {e}; the trained variants are kept: once it can be written, run the "
              f"same command again", file=sys.stderr)
        raise SystemExit(1)
    except KeyboardInterrupt:
        print("\nablation.py: interrupted; run the same command again to continue", file=sys.stderr)
        raise SystemExit(130)


if __name__ == "__main__":
    main()
