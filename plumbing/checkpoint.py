"""Checkpoints: everything a run needs to continue bit for bit, written so that nothing is lost.

A reader of the paper may skip this file. It holds no part of the method, only what a serious
trainer needs around it:
- atomic writes: a checkpoint goes to a temporary file, is flushed to disk and then renamed over the
  old one, so a crash or a full disk mid-save leaves the previous checkpoint intact;
- safe reads: `torch.load(..., weights_only=True)`, so a checkpoint holds tensors and plain values
  only, never code that loading would run; anything else is refused in one line;
- exact resume: the networks, both Adam states, the iteration, the arguments and the state of every
  random generator the run draws from (Python, NumPy, torch's CPU, CUDA and MPS generators).
  Bit for bit on the CPU; on a GPU with --deterministic only (see speed.py: by default cuDNN picks
  kernels by timing them and some add in a varying order). Adam's moments are put in the memory
  layout of the weights they belong to, so --channels_last may differ between the two runs.
A class-conditional run (--classes) keeps its class names in the arguments (`args["class_names"]`,
the sorted subfolder names; None without classes), and a resume on other classes is refused.
It imports the paper's generator, `cli.UsageError` and disk.py's file writing, nothing else of ours
(conditional.py's conversion of a generator is handed to `generator_from_checkpoint` by the script
that needs it).
"""

import pickle
import random
from pathlib import Path

import numpy as np
import torch

from plumbing.cli import UsageError
from plumbing.disk import atomic_write, keep_newest, link_or_copy
from generator import Generator

CHECKPOINT_FORMAT = "fastgan-checkpoint-v1"  # marks a checkpoint as ours
# The arguments a checkpoint's networks depend on: resuming with other values is refused.
ARCH_KEYS = ("im_size", "ngf", "ndf", "nz", "no_sle", "no_recon")


def rng_state():
    """Every random generator the run draws from, as tensors and plain Python values."""
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(_plain, np_state[2:])],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "mps": torch.mps.get_rng_state() if torch.backends.mps.is_available() else None,
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
    if state.get("mps") is not None and torch.backends.mps.is_available():
        torch.mps.set_rng_state(state["mps"])


def _tuples(x):
    """random.setstate needs tuples where a round trip may give lists."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


def save_checkpoint(path, state):
    """Write `state` to `path` atomically (disk.atomic_write): to a temporary file in the same folder,
    flushed to disk, then renamed over the old one. A crash or a full disk mid-save leaves the previous
    file intact; a failed write is raised as disk.WriteFailed, naming the file and the OS error."""
    with atomic_write(path) as f:
        torch.save(state, f)


def read_file(path, map_location="cpu"):
    """torch.load(path, weights_only=True): tensors and plain values only, never code. A missing or
    unreadable file (truncated, not torch's, a pickle of other objects) is a UsageError."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{path}: no such checkpoint file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:   # torch's text for it is a page long, with terminal colour codes
        raise UsageError(f"{path}: not a readable FastGAN checkpoint (it holds Python objects other than "
                         f"tensors and plain values, which weights_only=True does not build)")
    except Exception as e:
        raise UsageError(f"{path}: not a readable FastGAN checkpoint ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:120] if str(e) else 'no detail'})")


def is_ours(state):
    """Whether a file's contents are a checkpoint written by train.py (it carries our format marker)."""
    return isinstance(state, dict) and state.get("format") == CHECKPOINT_FORMAT


def load_checkpoint(path, map_location="cpu"):
    """Read one of our checkpoints; anything else (missing, unreadable, someone else's) is a UsageError."""
    state = read_file(path, map_location)
    if not is_ours(state):
        raise UsageError(f"{path}: not a checkpoint written by this project's train.py")
    return state


def checkpoint_state(G, D, G_ema, opt_G, opt_D, iteration, args, scalers=None):
    """Everything needed to continue the run. G, D, G_ema: the plain modules (not DDP/compile wrappers)."""
    return {
        "format": CHECKPOINT_FORMAT,
        "iteration": iteration,
        "args": dict(vars(args)),
        "G": G.state_dict(), "D": D.state_dict(), "G_ema": G_ema.state_dict(),
        "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict(),
        "scalers": scalers or {},
        "rng": rng_state(),
    }


def write_best(ckpt_dir, state):
    """checkpoints/best.pt: the run's state at its best evaluation so far, written whole (a checkpoint
    like the others: sample.py reads its EMA generator, --resume can continue from it)."""
    save_checkpoint(Path(ckpt_dir) / "best.pt", state)


def write_checkpoints(ckpt_dir, state, numbered=True):
    """checkpoints/NNNNNN.pt (unless not `numbered`) and checkpoints/latest.pt, each written whole.
    latest.pt is a hard link to the new numbered file (no second write; a copy where the filesystem has
    no hard links). Once both are in place, the numbered checkpoints older than the newest --keep
    (the run's `state["args"]["keep"]`; 0: all are kept) are deleted."""
    latest = Path(ckpt_dir) / "latest.pt"
    if not numbered:
        save_checkpoint(latest, state)
        return
    path = Path(ckpt_dir) / f"{state['iteration']:06d}.pt"
    save_checkpoint(path, state)
    link_or_copy(path, latest)
    keep_newest(ckpt_dir, state["iteration"], state["args"].get("keep", 0))


def load_optimizer_state(opt, state):
    """`opt.load_state_dict(state)`, with each per-weight tensor (Adam's exp_avg and exp_avg_sq) then
    given its weight's memory layout. load_state_dict keeps the layout they were saved in: a run saved
    without --channels_last and resumed with it (or the reverse) would hand fused Adam, which walks
    the weight, its gradient and its moments in memory order, the moments of other elements (on the
    CPU a silently wrong update; on CUDA an error at the first step)."""
    opt.load_state_dict(state)
    for p, per_weight in opt.state.items():
        for k, v in per_weight.items():
            if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                per_weight[k] = torch.empty_like(p, dtype=v.dtype).copy_(v)   # p's layout, v's values


def resume_state(args, run_dir):
    """The checkpoint that --resume names ('latest': this run's own), checked against this run's
    networks; None without --resume."""
    if args.resume is None:
        return None
    path = Path(run_dir) / "checkpoints" / "latest.pt" if args.resume == "latest" else Path(args.resume)
    if args.resume == "latest" and not path.is_file():
        raise UsageError(f"--resume latest: there is no {path} yet (start without --resume)")
    state = load_checkpoint(path)
    for k in ARCH_KEYS:
        saved, now = state["args"].get(k), getattr(args, k, None)
        if k == "im_size" and now is None:    # --im_size left out: the checkpoint's
            args.im_size = now = saved
        if saved != now:
            raise UsageError(f"{path} was trained with --{k} {saved}, but this run has --{k} {now}; "
                             f"pass --{k} {saved} to resume it")
    saved, now = state["args"].get("class_names"), getattr(args, "class_names", None)
    if saved != now:
        raise UsageError(f"{path} was trained on {_classes(saved)}, but this run has {_classes(now)}; "
                         f"resume it on the same classes{' (pass --classes)' if saved and not now else ''}")
    # A fine-tuning run (--init_from, plumbing/pretrained.py) keeps, resumed, the record of where its
    # weights came from (args.json is written anew); another --init_from would be another run.
    saved, now = state["args"].get("init_from"), getattr(args, "init_from", None)
    if now is not None and (saved is None or Path(saved).resolve() != Path(now).resolve()):
        raise UsageError(f"--init_from {now}: {path} continues a run that started "
                         f"{'from ' + saved if saved else 'from scratch'}; leave out --init_from to resume it")
    if saved is not None:
        args.init_from, args.init_source = saved, state["args"].get("init_source")
    return state


def _classes(names):
    return f"the classes {', '.join(names)}" if names else "no classes (without --classes)"


def generator_from_checkpoint(state, ema=True, make_conditional=None):
    """The (EMA by default) generator stored in a checkpoint, built from the checkpoint's own arguments.
    A class-conditional checkpoint needs `make_conditional`, conditional.make_conditional_generator
    (sample.py passes it), which turns the built generator into the conditional one before loading."""
    a = state["args"]
    G = Generator(ngf=a["ngf"], nz=a["nz"], im_size=a["im_size"])
    if a.get("no_sle", False):
        G.remove_sle()
    if a.get("class_names"):
        if make_conditional is None:
            raise UsageError(f"this checkpoint is class-conditional (classes {', '.join(a['class_names'])}); "
                             f"sample it with sample.py --class")
        make_conditional(G, a["class_names"])
    G.load_state_dict(state["G_ema" if ema else "G"])
    return G
