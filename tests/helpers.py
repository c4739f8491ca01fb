"""What several test files share, defined once: the smallest real configuration, synthetic training
images (`make_images`, on the one PNG encoder `png_bytes`), a script run in this process with its
output captured (`run_train`), torchrun on two CPU processes (`torchrun`), and a block of code on
fewer torch threads (`torch_threads`).

The test files import them by name (`from tests.helpers import TINY, make_images, run_train`). Each
test file holds its own fixtures.
"""

import argparse
import contextlib
import io
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import train

NZ = 256  # the paper's latent size (nz)
PROJECT = Path(__file__).resolve().parents[1]     # the repository root: where the scripts are

# The smallest real configuration of train.py: 128x128, widths 8, batch 2, every iteration logged.
TINY = ["--im_size", "128", "--ngf", "8", "--ndf", "8", "--batch_size", "2", "--device", "cpu", "--log_every", "1"]

# The same networks and batch for bench.py, which times steps and has no log.
BENCH_ARGS = ["--im_size", "128", "--ngf", "8", "--ndf", "8", "--batch_size", "2", "--device", "cpu"]


def build_nets(im_size, ngf, ndf, nz=256, no_sle=False, no_recon=False):
    """train.build_networks for the given sizes and ablation flags: (G, D)."""
    return train.build_networks(argparse.Namespace(im_size=im_size, ngf=ngf, ndf=ndf, nz=nz,
                                                   no_sle=no_sle, no_recon=no_recon))


def png_bytes(picture):
    """uint8 (H, W, 3) -> the bytes of a PNG file."""
    buf = io.BytesIO()
    Image.fromarray(np.asarray(picture, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def make_images(folder, n=4, size=64, seed=0, background=None, disc=None, centred=False, pictures=None):
    """n PNGs folder/img0.png, img1.png, ... with structure a GAN can learn: a flat background and a
    disc. Colours are drawn at random (seeded), unless `background(i, rng)` or `disc(i, rng)` gives
    image i's RGB; the disc has a random centre and radius, or is `centred` with radius size / 4.
    `pictures`, uint8 (n, 3, H, W), are written as they are instead. Returns the folder."""
    folder.mkdir(parents=True, exist_ok=True)
    if pictures is not None:
        arrays = [np.asarray(p).transpose(1, 2, 0) for p in pictures]                  # (H, W, 3)
    else:
        rng, arrays = np.random.default_rng(seed), []
        yy, xx = np.mgrid[0:size, 0:size]
        for i in range(n):
            img = np.empty((size, size, 3), np.uint8)
            img[:] = background(i, rng) if background else rng.integers(0, 256, 3)
            if centred:
                (cy, cx), r = (size // 2, size // 2), size // 4
            else:
                (cy, cx), r = rng.integers(size // 4, 3 * size // 4, 2), rng.integers(size // 8, size // 4)
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = disc(i, rng) if disc else rng.integers(0, 256, 3)
            arrays.append(img)
    for i, img in enumerate(arrays):
        (folder / f"img{i}.png").write_bytes(png_bytes(img))
    return folder


def run_train(argv, capsys=None, main=train.main):
    """train.py's `main` (or another script's: `main=sample.main`) in this process, its stdout and
    stderr captured: (exit code, stdout, stderr). `capsys` (pytest's fixture), when given, is emptied
    first, so that nothing the test printed before is mixed into what the run printed."""
    if capsys is not None:
        capsys.readouterr()
    code, out, err = 0, io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(argv)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def torchrun(script, argv, timeout=300):
    """`torchrun --nproc_per_node=2 script argv` on a free port, CPU (gloo), one thread per process,
    from the repository root: the CompletedProcess, stdout and stderr captured."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")}
    env["OMP_NUM_THREADS"] = "1"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port", str(port),
           str(script), *map(str, argv)]
    return subprocess.run(cmd, cwd=PROJECT, env=env, capture_output=True, text=True, timeout=timeout)


@contextlib.contextmanager
def torch_threads(n=1):
    """torch on `n` CPU threads inside the block, as before after it. Tiny networks on one thread: two
    threads on a busy 2-core machine spin-wait for each other (a forward is then ~30x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def refuse_renames(monkeypatch, refused, err):
    """Make os.replace, the last step of every whole-file write, fail with OSError(err) for each
    destination where `refused(Path(dst))` is true, as a full disk or a read-only folder would."""
    rename = os.replace

    def replace(src, dst):
        if refused(Path(dst)):
            raise OSError(err, os.strerror(err), str(dst))
        return rename(src, dst)

    monkeypatch.setattr(os, "replace", replace)


def assert_same_training_state(a, b):
    """Two checkpoints (dicts from torch.load) hold the same G, D, EMA generator and Adam moments, bit
    for bit."""
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs"
    for opt in ("opt_G", "opt_D"):
        for i, s in a[opt]["state"].items():
            for moment in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(s[moment], b[opt]["state"][i][moment]), f"{opt} {i} {moment} differs"
