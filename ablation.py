"""The ablation of FastGAN's two ideas: paper Table 2.

    python ablation.py --path data/panda --im_size 128 --ngf 32 --ndf 32 --iter 5000

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

This script trains the four variants in turn, each as an ordinary train.py run (so each has its own
checkpoints, log and sample grids, and each checkpoint works with sample.py), with the same seed, the
same data, batch size and number of iterations. Then it draws samples from each (the same latents for
all four) and scores them against the training images with metrics.py: SWD always (ProGAN §5: needs no
network weights), FID and KID when pytorch-fid is installed (the paper's metric is FID, §4).

Same seed, same start: train.py builds G and D *in full* from the seed and only then drops the SLE
modules and/or the decoders (train.build_networks), so the layers that two variants share start from
identical weights, and every variant draws the same batches, latents, injected noise and augmentations
at every iteration (train_step draws decoder_part's quarter even when there are no decoders): the
variants differ only in what the paper ablates. The tests check both claims on the CPU.

Everything goes to OUT/ablation-NAME/ (default runs/ablation-<data folder name>/):
    baseline/ sle/ recon/ both/    four train.py runs (checkpoints/, images/, log.jsonl, args.json),
                                   each with scores.json: its scores, reused by a later call
    table.md                       the table: parameters, seconds per iteration, SWD, FID/KID
    samples.png                    one row per variant (baseline, sle, recon, both), EMA generator;
                                   column j of every row: the same latent and noise
    results.json                   every number of the table, and SWD per pyramid level

Resuming: run the same command again. A variant whose latest checkpoint is at --iter is not trained
again (its scores are read back from its scores.json, or recomputed); a variant stopped part way
continues from its checkpoints/latest.pt (train.py --resume); a variant not started starts. A larger
--iter continues all four. Refused input (a missing folder, a bad value, an existing run with other
widths) is one line `ablation.py: error: ...` on stderr and exit status 2, before anything is written.
A file that cannot be written (a full disk, a read-only folder) is one line naming it, exit status 1;
every file is written whole or not at all, and the trained variants are kept.

Read top to bottom: 1. the variants, 2. the command line, 3. where each variant stands, 4. training,
5. measuring (parameters, seconds per iteration, samples and scores), 6. writing the results, 7. main.
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
from plumbing.disk import WriteFailed, atomic_write
from generator import SUPPORTED_SIZES
from plumbing.images import load_images, save_grid, to_uint8

# ------------------------------------------------------------------------------------------------
# 1. The four variants (Table 2)
# ------------------------------------------------------------------------------------------------

# (name, has SLE, has decoders), in the order of the table and of the rows of samples.png.
VARIANTS = (
    ("baseline", False, False),  # DCGAN-like G and D: neither idea
    ("sle", True, False),        # + skip-layer excitation (§3.1, Eq. 1) in G and D
    ("recon", False, True),      # + D's decoders and L_recons (§3.2, Eq. 2)
    ("both", True, True),        # full FastGAN
)

GRID_COLUMNS = 8       # samples per row of samples.png
GRID_MAX_CELL = 256    # samples.png shows each sample at most this size (1024 x 8 x 4 would be huge)
SAMPLE_BATCH = 16      # images per forward pass when sampling

# Checkpoint arguments that must match this ablation's for an existing run to be part of it:
# the networks (ARCH_KEYS) and what makes the four runs comparable (batch, seed, EMA decay).
MUST_MATCH = (*ARCH_KEYS, "batch_size", "seed", "ema")


def train_flags(sle, decoders):
    """train.py's ablation flags of a variant."""
    return (["--no_sle"] if not sle else []) + (["--no_recon"] if not decoders else [])


# ------------------------------------------------------------------------------------------------
# 2. Command line
# ------------------------------------------------------------------------------------------------

def parse_args(argv=None):
    p = OneLineParser(
        prog="ablation.py", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        description="FastGAN's ablation (paper Table 2): train baseline, +SLE, +decoders and both with "
                    "the same seed and budget, then score and compare them.")
    p.add_argument("--path", required=True, help="folder of training images (searched recursively)")
    p.add_argument("--name", default=None, help="ablation name (default: the data folder's name)")
    p.add_argument("--out", default="runs", help="root folder; this ablation writes OUT/ablation-NAME/")
    p.add_argument("--iter", type=int, required=True, help="iterations of each variant (the shared budget)")
    p.add_argument("--im_size", type=int, default=1024, help=f"image size, one of {SUPPORTED_SIZES}")
    p.add_argument("--ngf", type=int, default=64, help="G's width (multiple of 8); 16-32 for a CPU")
    p.add_argument("--ndf", type=int, default=64, help="D's width (multiple of 8); 16-32 for a CPU")
    p.add_argument("--batch_size", type=int, default=8, help="images per iteration")
    p.add_argument("--seed", type=int, default=0, help="seed of every variant's training, and of the samples")
    p.add_argument("--ema", type=float, default=0.999,
                   help="long-run EMA decay passed to train.py (ramped up early in a run: see ema.py)")
    add_device_argument(p)
    p.add_argument("--n_samples", type=int, default=64, help="samples per variant (raw G and EMA G) to score")
    p.add_argument("--no_fid", action="store_true", help="skip FID/KID (they need pytorch-fid)")
    p.add_argument("--save_every", type=int, default=1000, help="passed to train.py")
    p.add_argument("--sample_every", type=int, default=500, help="passed to train.py")
    p.add_argument("--log_every", type=int, default=20, help="passed to train.py")
    args = p.parse_args(argv)
    args.name = args.name or Path(args.path).resolve().name
    return args


def train_argv(args, name, sle, decoders, resume=None):
    """The train.py command line of one variant: its run is OUT/ablation-NAME/<variant>/."""
    argv = ["--path", str(args.path), "--out", str(args.out), "--name", f"ablation-{args.name}/{name}",
            "--im_size", str(args.im_size), "--ngf", str(args.ngf), "--ndf", str(args.ndf),
            "--batch_size", str(args.batch_size), "--iter", str(args.iter), "--seed", str(args.seed),
            "--ema", str(args.ema), "--device", args.device, "--save_every", str(args.save_every),
            "--sample_every", str(args.sample_every), "--log_every", str(args.log_every),
            *train_flags(sle, decoders)]
    return argv + (["--resume", str(resume)] if resume is not None else [])


def check_args(args):
    """Refuse bad values before any work. train.py's own checks (sizes, widths, positive counts, the
    folder) run on the command line the variants will get, with train.py's messages. Returns the device."""
    train.check_args(train.parse_args(train_argv(args, *VARIANTS[-1])))
    if args.n_samples <= 0:
        raise UsageError(f"--n_samples must be positive, got {args.n_samples}")
    return resolve_device(args.device)


# ------------------------------------------------------------------------------------------------
# 3. Where each variant stands: not started, part way, or done
# ------------------------------------------------------------------------------------------------

def latest_checkpoint(run_dir):
    return Path(run_dir) / "checkpoints" / "latest.pt"


def variant_status(run_dir, args, name, sle, decoders):
    """("new", 0), ("partial", iteration) or ("done", iteration) for the variant's run in run_dir.

    An existing checkpoint must belong to this ablation: the same networks (ARCH_KEYS, SLE and
    decoders included), batch and seed as the train.py command line this variant gets now (else the
    table would compare unlike things), and not past --iter (else the budgets would differ)."""
    ckpt = latest_checkpoint(run_dir)
    if not ckpt.is_file():
        return "new", 0
    state = load_checkpoint(ckpt)          # UsageError if unreadable or not ours
    wanted = train.parse_args(train_argv(args, name, sle, decoders))
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
                         f"more), or another --name or --out, so that all four variants get one budget")
    return ("done" if it == args.iter else "partial"), it


# ------------------------------------------------------------------------------------------------
# 4. Training one variant: an ordinary train.py run, in this process
# ------------------------------------------------------------------------------------------------

def train_variant(args, name, sle, decoders, resume=None):
    """train.main with the variant's flags. train.py prints its own progress lines. It exits
    (SystemExit) when it refuses something (2, after printing its own one line), when a loss
    diverges (1) or on Ctrl-C (130, after saving latest.pt); we add which variant stopped."""
    try:
        train.main(train_argv(args, name, sle, decoders, resume))
    except SystemExit as e:
        code = 0 if e.code is None else e.code if isinstance(e.code, int) else 1
        if code == 0:
            return
        if code != 2:   # train.py has said why; say where the ablation stands
            print(f"ablation.py: variant '{name}' stopped (train.py exit status {code}); the variants "
                  f"before it are kept: run the same command again to continue", file=sys.stderr)
        raise SystemExit(code)


# ------------------------------------------------------------------------------------------------
# 5. Measuring a variant: size, speed, samples and scores
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


def evaluate_variant(run_dir, args, real_uint8, device, may_reuse):
    """Sample and score one finished variant. Returns (scores {"raw": ..., "ema": ...}, grid images).

    Latents and injected noise come from sample.draw_inputs with --seed: the same for every variant
    (SLE and the decoders change neither nz nor the noise shapes), so row k of samples.png is four
    generators' answers to one input. SWD compares n_samples images with the training images, FID/KID
    (EMA G only, as the paper reports its generators) when pytorch-fid is there. With few samples
    FID is strongly biased upwards (KID is not): compare the variants with each other, not with
    published numbers, which use 5,000-50,000 samples."""
    ckpt = latest_checkpoint(run_dir)
    state = load_checkpoint(ckpt)
    G_ema = generator_on(state, ema=True, device=device)
    z, noise = sample.draw_inputs(G_ema, args.n_samples, args.seed)      # (n, nz), noise of batch n
    k = min(GRID_COLUMNS, args.n_samples)
    grid = to_uint8(sample.generate(G_ema, z[:k], sample.slice_noise(noise, 0, k), SAMPLE_BATCH))

    # The scores depend on the weights, the samples and the real set: reuse them only if all agree.
    key = {"iteration": state["iteration"], "n_samples": args.n_samples, "seed": args.seed, "fid": not args.no_fid,
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
# 6. Writing the results: table.md, samples.png, results.json
# ------------------------------------------------------------------------------------------------

def _num(x, fmt):
    return "n/a" if x is None else format(x, fmt)


def table_markdown(rows, args, command, wall_s, n_real):
    """The markdown table of the four variants, and the lines that say how it was made."""
    head = ("| variant | SLE (§3.1) | decoders (§3.2) | G parameters | D parameters | s / iteration "
            "| SWD raw G | SWD EMA G | FID EMA G | KID EMA G |")
    lines = [f"# FastGAN ablation (paper Table 2): {args.name}", "", head,
             "|---|---|---|--:|--:|--:|--:|--:|--:|--:|"]
    for r in rows:
        ema = r["scores"]["ema"]
        lines.append(
            f"| {r['variant']} | {'yes' if r['sle'] else 'no'} | {'yes' if r['decoders'] else 'no'} "
            f"| {r['params_G']:,} | {r['params_D']:,} | {_num(r['s_per_it'], '.4f')} "
            f"| {r['scores']['raw']['swd']:.2f} | {ema['swd']:.2f} | {_num(ema.get('fid'), '.2f')} "
            f"| {_num(ema.get('kid'), '.4f')} |")
    train_s = sum(r["train_s"] or 0.0 for r in rows)
    lines += [
        "",
        f"Command: `{command}`",
        "",
        f"Iterations: {args.iter} per variant, batch {args.batch_size}, seed {args.seed}, "
        f"{args.im_size}x{args.im_size}, ngf {args.ngf}, ndf {args.ndf}.",
        "",
        f"Wall time: {format_seconds(wall_s)} for this call of ablation.py; the four training loops "
        f"took {format_seconds(train_s)} in all (from their logs, including earlier calls).",
        "",
        "Scores (lower is better): SWD x 1e3 (ProGAN §5, mean over Laplacian levels) of "
        f"{args.n_samples} samples against the {n_real} training images; FID/KID of the EMA "
        "generator's samples (few samples bias FID upwards: compare rows, not papers).",
        "s / iteration: median over log intervals of d(time) / d(iteration), start-up excluded.",
    ]
    errors = {r["scores"]["ema"].get("fid_error") for r in rows} - {None}
    if errors:
        lines.append(f"FID/KID n/a: {'; '.join(sorted(errors))}.")
    lines += ["", f"samples.png: one row per variant, top to bottom {', '.join(r['variant'] for r in rows)}; "
                  "EMA generator, the same latents and noise in every row."]
    return "\n".join(lines) + "\n"


def format_seconds(s):
    return time.strftime("%H:%M:%S", time.gmtime(s)) if s >= 60 else f"{s:.1f} s"


# ------------------------------------------------------------------------------------------------
# 7. Main
# ------------------------------------------------------------------------------------------------

def run(args, command):
    t0 = time.time()

    def elapsed():
        return format_seconds(time.time() - t0)

    device = check_args(args)
    real = load_images(args.path, args.im_size, log=lambda m: None)   # (M, 3, S, S) uint8;
    root = Path(args.out) / f"ablation-{args.name}"                         # train.py prints warnings
    # Every existing run is checked before anything trains: a refusal then costs no training time.
    status = {}
    for name, sle, decoders in VARIANTS:
        status[name] = variant_status(root / name, args, name, sle, decoders)
    print(f"ablation: {len(VARIANTS)} variants x {args.iter} iterations in {root}/ "
          f"({', '.join(f'{n}: {s}' + (f' at {i}' if s == 'partial' else '') for n, (s, i) in status.items())})")

    rows, grids = [], []
    for k, (name, sle, decoders) in enumerate(VARIANTS, 1):
        tag = f"[{k}/{len(VARIANTS)}] {name} (SLE {'yes' if sle else 'no'}, decoders {'yes' if decoders else 'no'})"
        state, it = status[name]
        run_dir = root / name
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
            train_variant(args, name, sle, decoders, latest_checkpoint(run_dir) if state == "partial" else None)
            print(f"{tag}: trained to iteration {args.iter}; elapsed {elapsed()}")
        print(f"{tag}: scoring {args.n_samples} samples of raw G and EMA G ...")
        scores, grid, reused = evaluate_variant(run_dir, args, real, device, may_reuse=(state == "done"))
        grids.append(thumbnails(grid))
        n_g, n_d = count_parameters(args.im_size, args.ngf, args.ndf, sle, decoders)
        s_per_it, train_s = timing_from_log(run_dir / "log.jsonl", args.iter)
        rows.append({"variant": name, "sle": sle, "decoders": decoders, "train_flags": train_flags(sle, decoders),
                     "this_call": how, "checkpoint": str(latest_checkpoint(run_dir)), "iteration": args.iter,
                     "params_G": n_g, "params_D": n_d, "s_per_it": s_per_it, "train_s": train_s,
                     "scores": scores})
        print(f"{tag}: done: SWD raw G {scores['raw']['swd']:.2f}, EMA G {scores['ema']['swd']:.2f}"
              f"{' (scores read from scores.json)' if reused else ''}; elapsed {elapsed()}")

    wall = time.time() - t0
    with atomic_write(root / "table.md", sync=False) as f:
        f.write(table_markdown(rows, args, command, wall, len(real)).encode())
    save_grid(torch.cat(grids), root / "samples.png", nrow=len(grids[0]))
    with atomic_write(root / "results.json", sync=False) as f:
        f.write(json.dumps({"command": command, "iterations": args.iter, "wall_time_s": wall,
                            "settings": {k: v for k, v in vars(args).items()}, "n_real": len(real),
                            "s_per_it": "median over log intervals of d(time)/d(iter), start-up excluded",
                            "samples_png_rows": [r["variant"] for r in rows], "variants": rows},
                           indent=2, default=float).encode())
    print(f"ablation: wrote {root / 'table.md'}, {root / 'samples.png'} and {root / 'results.json'}; "
          f"total {elapsed()}")
    print((root / "table.md").read_text(), end="")
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
