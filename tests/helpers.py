"""What several test files share: the smallest real configuration, synthetic training images, and
train.py run in this process.

pytest reads this file before the tests; the test files import the helpers below by name
(`from conftest import TINY, make_images, run_train`). Each test file holds its own fixtures.
"""

import argparse

import numpy as np
from PIL import Image

import train

NZ = 256  # the paper's latent size (nz)

# The smallest real configuration of train.py: 128x128, widths 8, batch 2, every iteration logged.
TINY = ["--im_size", "128", "--ngf", "8", "--ndf", "8", "--batch_size", "2", "--device", "cpu", "--log_every", "1"]

# The same networks and batch for bench.py, which times steps and has no log.
BENCH_ARGS = ["--im_size", "128", "--ngf", "8", "--ndf", "8", "--batch_size", "2", "--device", "cpu"]


def build_nets(im_size, ngf, ndf, nz=256, no_sle=False, no_recon=False):
    """train.build_networks for the given sizes and ablation flags: (G, D)."""
    return train.build_networks(argparse.Namespace(im_size=im_size, ngf=ngf, ndf=ndf, nz=nz,
                                                   no_sle=no_sle, no_recon=no_recon))


def make_images(folder, n=4, size=64, seed=0):
    """n PNGs with structure a GAN can learn: a flat background and a disc, colours drawn at random."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    for i in range(n):
        img = np.empty((size, size, 3), np.uint8)
        img[:] = rng.integers(0, 256, 3)
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = rng.integers(size // 8, size // 4)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.integers(0, 256, 3)
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def run_train(argv, capsys):
    """train.main in this process: (exit code, stdout, stderr)."""
    code = 0
    try:
        train.main(argv)
    except SystemExit as e:
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err
