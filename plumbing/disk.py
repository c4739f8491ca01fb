"""The disk a run takes: files written whole or not at all, a bounded number of checkpoints, the cost
said up front, and a write that fails as one line with nothing lost.

A reader of the paper may skip this file. It holds no part of the method, only what a training tool
needs so that a whole run fits on a student's disk:
- `atomic_write`: every file goes to a temporary file in the same folder, is flushed to disk and only
  then renamed over its name, so a crash or a full disk leaves the previous file as it was; a failed
  write (no space, no permission, a read-only filesystem) removes the temporary file and becomes
  `WriteFailed`, whose message names the file and the OS error: the scripts print it as one line on
  stderr and exit with status 1, no traceback;
- retention: checkpoints/latest.pt is a hard link to the newest numbered checkpoint (no second full
  write), and only the newest --keep numbered checkpoints stay (`link_or_copy`, `keep_newest`);
- `start_run_folder`: the run's folder, args.json, and one line with the size of one checkpoint, what
  the run keeps on disk at most and the free space of the output's filesystem.
It imports nothing of ours.
"""

import errno
import json
import os
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch

# Default of train.py --keep: the newest checkpoint and the two before it, to fall back on if the
# last iterations went wrong (a collapse that the NaN check does not see). At the paper's setting a
# checkpoint is 606 MB: at most 4 on disk (3 kept + the next one, written before the oldest goes).
DEFAULT_KEEP = 3
# The sample grids of images/ show each sample at most this many pixels wide: at 1024x1024 a grid of
# 16 full-size samples is a 4106-pixel PNG of ~10-50 MB, a 1026-pixel one (fits a screen) ~1-3 MB.
SAMPLE_TILE = 256
# What torch.save writes per tensor besides its data: the zip record's headers and 64-byte alignment
# and the pickled reference (measured: 322-323 bytes on checkpoints of 128 and 1024 pixels).
BYTES_PER_TENSOR = 323
NUMBERED = re.compile(r"^(\d{6,})\.pt$")   # checkpoints/NNNNNN.pt


class WriteFailed(Exception):
    """A file could not be written. The message names the file and the OS error, in one line."""


def _os_error(e):
    """The OSError behind `e`: itself, or the one torch.save's RuntimeError was raised during."""
    while e is not None and not isinstance(e, OSError):
        e = e.__cause__ or e.__context__
    return e


def describe(e):
    """'No space left on device (ENOSPC)' for an OSError."""
    name = errno.errorcode.get(e.errno, "") if e.errno is not None else ""
    return f"{e.strerror or e}{f' ({name})' if name else ''}"


@contextmanager
def atomic_write(path, sync=True):
    """`with atomic_write(path) as f:` write bytes to f; `path` then holds them all, or (after any
    failure) whatever it held before. A failure to write (an OSError, also inside torch.save) is
    raised as WriteFailed naming `path`; the temporary file is removed either way. `sync`: wait until
    the bytes are on the disk before the rename (a checkpoint; not needed for a sample image)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as f:
            yield f
            f.flush()
            if sync:
                os.fsync(f.fileno())        # on disk before the rename makes it the file
        os.replace(tmp, path)
        if sync:
            _fsync_folder(path.parent)      # the rename itself on disk
    except (OSError, RuntimeError) as e:
        cause = _os_error(e)
        if cause is None:                   # not a failed write: a bug, shown as one
            raise
        raise WriteFailed(f"cannot write {path}: {describe(cause)}") from None
    finally:
        _remove(tmp)


def _remove(path):
    try:
        os.unlink(path)
    except OSError:                         # not there (the usual case), or a folder we cannot change
        pass


def _fsync_folder(folder):
    """Make a rename in `folder` durable (POSIX; elsewhere a folder cannot be opened: skipped)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def link_or_copy(src, dst):
    """Make `dst` the same file as `src`: a hard link (no second write, no space) where the filesystem
    allows it, else a copy. Through a temporary name and a rename, so `dst` is always a whole file."""
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.tmp{os.getpid()}")
    _remove(tmp)
    try:
        os.link(src, tmp)
        os.replace(tmp, dst)
        return
    except OSError:
        _remove(tmp)                        # no hard links here (FAT, some network drives): copy
    with atomic_write(dst) as f, open(src, "rb") as s:
        shutil.copyfileobj(s, f, 16 * 2 ** 20)


def keep_newest(ckpt_dir, iteration, keep):
    """Delete the numbered checkpoints older than the newest `keep` up to `iteration` (0: keep all).
    Called once the newest is in place. Checkpoints numbered above `iteration` (a run resumed from an
    earlier one) are left alone: the run overwrites them as it gets there."""
    if keep <= 0:
        return
    numbered = sorted((int(m[1]), p) for p in Path(ckpt_dir).iterdir() if (m := NUMBERED.match(p.name)))
    older = [p for it, p in numbered if it <= iteration][:-keep]
    for p in older:
        try:
            p.unlink()
        except OSError as e:
            raise WriteFailed(f"cannot delete {p} (only the newest --keep {keep} are kept): {describe(e)}") from None


@contextmanager
def resumable_writes(ckpt_dir):
    """Inside: a WriteFailed (a checkpoint, a grid) also says where the run can continue from."""
    try:
        yield
    except WriteFailed as e:
        raise WriteFailed(f"{e}; {resume_hint(ckpt_dir)}") from None


def resume_hint(ckpt_dir):
    """Where the run can continue: its checkpoints/latest.pt, the last good checkpoint, if there is one."""
    latest = Path(ckpt_dir) / "latest.pt"
    if not latest.is_file():
        return "no checkpoint was saved yet: free some space (or choose another --out), then start again"
    try:
        it = f" (iteration {torch.load(latest, mmap=True, weights_only=True)['iteration']})"
    except Exception:  # the iteration is a courtesy; the file was written whole
        it = ""
    return (f"the last good checkpoint is {latest}{it}: once the folder can be written again (free space, "
            f"permissions), run the same command with --resume latest")


# ------------------------------------------------------------------------------------------------
# What a run will keep on disk
# ------------------------------------------------------------------------------------------------

def checkpoint_bytes(nets):
    """The size of one checkpoint, from the tensors it will hold (no file is written): the state dicts
    of `nets` (G, D, the EMA generator), Adam's two moments and step for every parameter of G and D
    (Adam creates them at the first step), the random states, and torch.save's overhead per tensor.
    Within 0.1% of the real file (docs/disk.md)."""
    tensors = [t for net in nets for t in net.state_dict().values()]
    params = [p for net in nets[:2] for p in net.parameters()]
    data = sum(t.numel() * t.element_size() for t in tensors)
    data += sum(2 * p.numel() * p.element_size() + 4 for p in params)     # exp_avg, exp_avg_sq, step
    rng = 5056 + 4992 + 16 * torch.cuda.device_count()                   # torch, NumPy, CUDA states
    return data + rng + (len(tensors) + 3 * len(params) + 2) * BYTES_PER_TENSOR


def grid_bytes(im_size, n_samples, n_recons=8):
    """At most the size of one sample grid and one reconstruction grid (monitor.save_samples): their
    uncompressed pixels (the PNG files are smaller: docs/disk.md)."""
    tile = min(im_size, SAMPLE_TILE) + 2                                  # 2-pixel gaps
    cols = min(4, n_samples)
    samples = (cols * tile + 2) * (-(-n_samples // cols) * tile + 2) * 3
    recons = (5 * 130 + 2) * (n_recons * 130 + 2) * 3                     # rows of five 128x128 images
    return samples + recons


def saves(total, every, start=0):
    """How many of the iterations start+1 .. total save (every `every`, and the last)."""
    return max(0, total // every - start // every + (total % every != 0 and total > start))


def disk_plan(run_dir, args, nets, n_samples):
    """One line: the size of one checkpoint, the most the run keeps on disk, the free space; and a
    warning when that clearly does not fit (the run still starts: space may be freed meanwhile)."""
    one = checkpoint_bytes(nets)
    n_ckpt = saves(args.iter, args.save_every)
    kept = n_ckpt if args.keep <= 0 or args.keep >= n_ckpt else args.keep + 1   # + the one being written
    best = 1 if getattr(args, "eval_every", 0) else 0                          # checkpoints/best.pt
    grids = saves(args.iter, args.sample_every) * grid_bytes(args.im_size, n_samples)
    need = (kept + best) * one + grids
    root = next(p for p in [Path(run_dir), *Path(run_dir).resolve().parents] if p.exists())
    free = shutil.disk_usage(root).free
    there = sum(f.stat().st_size for f in Path(run_dir).rglob("*") if f.is_file()) if Path(run_dir).exists() else 0
    extra = f" (--keep {args.keep}, and the next one while it is written)" if kept < n_ckpt else ""
    extra += " and best.pt" if best else ""
    line = (f"disk: one checkpoint {_size(one)}; this run keeps at most {_size(need)}: {kept} "
            f"checkpoint{'' if kept == 1 else 's'}{extra} "
            f"and {_size(grids)} of grids; {_size(free)} free on {root}")
    if need > free + there:
        line += (f" -- WARNING: this will not fit: free {_size(need - free - there)}, or pass a lower "
                 f"--keep or a larger --save_every")
    return line


def _size(n):
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("KB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n} bytes"


def start_run_folder(run_dir, args, nets, n_samples):
    """OUT/NAME/images/ and OUT/NAME/args.json (the run's arguments, readable); returns `disk_plan`'s line."""
    try:
        (Path(run_dir) / "images").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteFailed(f"cannot create {Path(run_dir) / 'images'}: {describe(e)}") from None
    with atomic_write(Path(run_dir) / "args.json") as f:
        f.write(json.dumps(vars(args), indent=2).encode())
    return disk_plan(run_dir, args, nets, n_samples)
