"""Evaluation: how close are the generator's samples to the real images?

FastGAN's paper (Liu et al., ICLR 2021, §4) measures its generators with FID. This file computes three
scores, each from the paper that introduced it; lower is better for all three:

- SWD, sliced Wasserstein distance between Laplacian-pyramid patches: Karras et al. 2018, "Progressive
  Growing of GANs for Improved Quality, Stability, and Variation" (ProGAN), §5 and Appendix D. It looks
  at small 7x7 neighbourhoods at several scales, so it says *at which scale* two image sets differ
  (coarse layout at 16x16, fine texture and edges at full resolution). Needs no network weights.
- FID, Fréchet Inception Distance: Heusel et al. 2017, "GANs Trained by a Two Time-Scale Update Rule
  Converge to a Local Nash Equilibrium", where FID is defined. Fits one Gaussian to each set's
  InceptionV3 features and measures the distance between the two Gaussians.
- KID, Kernel Inception Distance: Bińkowski et al. 2018, "Demystifying MMD GANs", in its section on
  evaluation metrics. The squared MMD (Gretton et al. 2012) between the two sets' InceptionV3
  features with a cubic polynomial kernel. Unlike FID it has an unbiased estimator, which matters for
  FastGAN's few-shot data sets of 100-1000 images, where FID's bias is large.

FID and KID need InceptionV3 features, which come from the optional package pytorch-fid (its weights
download on first use). Without it, `score` still gives the SWD and says why FID/KID are missing.

    python metrics.py SAMPLES_DIR REAL_DIR [--size 256] [--device auto|cuda|mps|cpu] [--no_fid]

prints one JSON line, e.g. {"n_fake": 100, "n_real": 100, "size": 256, "swd": ..., "fid": ..., ...}.
A run trained with --eval_every logs its SWD at every evaluation; `python metrics.py --curve RUN_DIR
[--mark ITER:LABEL ...]` prints them as a table (iteration, hours of training, SWD) and draws them
against iterations and hours into RUN_DIR/images/swd.png (train.py redraws it at each evaluation).
A class-conditional model (train.py --classes) is scored one class at a time, against that class's
images: `sample.py --class all --n 100 --out s` writes s/cat/, s/dog/, ..., then
`python metrics.py s/cat data/animals/cat`, and so on.

Read top to bottom: 1. SWD (pyramid, patches, slicing), 2. FID and KID, 3. `score`, 4. the CLI.
"""

import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from plumbing.cli import OneLineParser, UsageError, add_device_argument, resolve_device
from plumbing.datasets import ensure_dataset
from plumbing.images import load_images
from plumbing.watch import draw_score_curve, score_curve

# ------------------------------------------------------------------------------------------------
# 1. SWD: sliced Wasserstein distance on Laplacian-pyramid patches (ProGAN §5, Appendix D)
# ------------------------------------------------------------------------------------------------
#
# ProGAN's recipe, which this section follows step by step:
#   a. build a Laplacian pyramid of every image, from full resolution down to 16x16;
#   b. from each level take 128 random 7x7 neighbourhoods per image: descriptors in R^(7*7*3 = 147);
#   c. normalise each colour channel of each set's descriptors to zero mean and unit std;
#   d. per level, the sliced Wasserstein distance between the two descriptor sets, 512 projections;
#   e. report each level's distance x 1e3, and their mean.
# A level's distance is small when the two sets have the same *distribution of local structure* in
# that frequency band: the 16x16 level compares coarse layout and colour blobs, the finest level
# compares edges, texture and noise.

SWD_MIN_RESOLUTION = 16   # ProGAN §5: "a minimum resolution of 16x16 pixels"
PATCH = 7                 # ProGAN §5: 7x7 neighbourhoods, 3 colour channels -> 147-d descriptors

# The 5-tap binomial filter [1, 4, 6, 4, 1] / 16, a cheap approximation of a Gaussian (sigma ~ 1).
# Used separably (rows then columns), it is the 5x5 kernel of ProGAN's code and of OpenCV's pyrDown.
BINOMIAL_5 = (1 / 16, 4 / 16, 6 / 16, 4 / 16, 1 / 16)

# Memory bounds: how many pixels of one colour channel a chunk of images may hold while the pyramid
# is built (2^21 = 32 images of 256x256), and how many projected values (descriptors x directions)
# one matrix product may produce (2^25 floats per set). Results do not depend on these numbers, only peak memory does.
_CHUNK_PIXELS = 2 ** 21
_PROJECTION_BUDGET = 2 ** 25


def _filter_1d(y, dim, gain, stride):
    """One pass of the binomial filter along axis `dim` of y, which carries 2 pixels of padding on
    both ends of that axis: length L + 4 -> L / stride. Output pixel i is
        gain * (y[i] + 4 y[i+1] + 6 y[i+2] + 4 y[i+3] + y[i+4]) / 16,   i = 0, stride, 2 stride, ...
    written as five shifted views of y (no copies) added up: the same numbers as a convolution with
    the kernel, and faster on the CPU than F.conv2d with one input channel."""
    length = y.shape[dim] - 4
    index = [slice(None)] * y.ndim
    taps = []
    for j in range(5):                                   # tap j: y[j], y[j+stride], ... on that axis
        index[dim] = slice(j, j + length, stride)
        taps.append(y[tuple(index)])
    w = [gain * c for c in BINOMIAL_5]
    out = (taps[0] + taps[4]).mul_(w[0])                 # the kernel is symmetric: pair the taps
    return out.add_(taps[1] + taps[3], alpha=w[1]).add_(taps[2], alpha=w[2])


def blur(x, gain=1.0, stride=1):
    """Separable 5x5 binomial blur with mirror padding. (N, C, H, W) float32 -> (N, C, H, W), or
    (N, C, H/2, W/2) with stride=2: the same blur evaluated only at every other pixel.

    `gain` scales each 1-D pass; `pyramid_up` uses gain 2 (4 in 2-D) to make up for the zeros it
    inserts. Padding is 'reflect' (d c b | a b c d | c b a), which is what ProGAN's
    scipy.ndimage.convolve(mode='mirror') does, so edges are not darkened."""
    y = F.pad(x, (2, 2, 2, 2), mode="reflect")           # (N, C, H+4, W+4)
    y = _filter_1d(y, 3, gain, stride)                   # rows:    (N, C, H+4, W/stride)
    return _filter_1d(y, 2, gain, stride)                # columns: (N, C, H/stride, W/stride)


def pyramid_down(x):
    """Blur, then keep every other pixel: (N, C, H, W) -> (N, C, H/2, W/2). As cv2.pyrDown.
    The blur first removes the frequencies that the half-resolution grid cannot hold (anti-aliasing).
    stride=2 computes blur(x)[:, :, ::2, ::2] without computing the pixels that would be dropped."""
    return blur(x, stride=2)


def pyramid_up(x):
    """Insert zeros between pixels, then blur with 4x gain: (N, C, H, W) -> (N, C, 2H, 2W). As cv2.pyrUp.
    Three quarters of the new grid are zeros, so the blur (an interpolation filter here) must be
    scaled by 4 to keep the brightness: a constant image stays the same constant."""
    n, c, h, w = x.shape
    up = x.new_zeros(n, c, 2 * h, 2 * w)
    up[:, :, ::2, ::2] = x
    return blur(up, gain=2.0)


def laplacian_pyramid(x, min_resolution=SWD_MIN_RESOLUTION):
    """Laplacian pyramid of (N, C, S, S) float32 images, finest level first.

    Returns [L_S, L_S/2, ..., L_16]: level k has shape (N, C, S/2^k, S/2^k). Every level but the last
    is a band-pass image: the Gaussian level minus the upsampled next (coarser) Gaussian level, i.e.
    exactly the detail that is lost by halving the resolution. The last (16x16) level is the Gaussian
    level itself, the low-pass residual. Adding the levels back from coarse to fine (upsampling in
    between) gives the input again exactly, so no information is lost, only sorted by frequency."""
    levels = [x]                                     # Gaussian levels, then turned into band-passes
    while levels[-1].shape[-1] > min_resolution:
        levels.append(pyramid_down(levels[-1]))      # next Gaussian level (N, C, s/2, s/2)
        levels[-2] = levels[-2] - pyramid_up(levels[-1])   # band-pass of level s
    return levels


def _check_images(images, name):
    """A uint8 (N, 3, S, S) tensor with S a power of two >= 16, or a ValueError saying what is wrong."""
    images = torch.as_tensor(images)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"{name}: expected a uint8 tensor (N, 3, S, S), got {images.dtype} "
                         f"{tuple(images.shape)}")
    n, _, h, w = images.shape
    if n == 0:
        raise ValueError(f"{name}: no images")
    if h != w or h < SWD_MIN_RESOLUTION or h & (h - 1):
        raise ValueError(f"{name}: images must be square with a power-of-two size >= "
                         f"{SWD_MIN_RESOLUTION}, got {h}x{w}")
    return images


def extract_patches(level, img, top, left):
    """The 7x7 patches level[img[k], :, top[k]:top[k]+7, left[k]:left[k]+7] for every k, flattened
    channel-major (as ProGAN does): level (n, 3, s, s), img/top/left (M,) -> (M, 3*7*7 = 147).

    One advanced-indexing gather instead of a Python loop: index tensors of shapes (M, 1, 1, 1),
    (1, 3, 1, 1), (M, 1, 7, 1), (M, 1, 1, 7) broadcast to (M, 3, 7, 7), one index per output value."""
    offsets = torch.arange(PATCH)
    rows = top.view(-1, 1, 1, 1) + offsets.view(1, 1, PATCH, 1)           # (M, 1, 7, 1)
    cols = left.view(-1, 1, 1, 1) + offsets.view(1, 1, 1, PATCH)          # (M, 1, 1, 7)
    chan = torch.arange(level.shape[1]).view(1, -1, 1, 1)                 # (1, 3, 1, 1)
    patches = level[img.view(-1, 1, 1, 1), chan, rows, cols]              # (M, 3, 7, 7)
    return patches.reshape(len(img), -1)                                  # (M, 147)


def pyramid_descriptors(images, n_patches, gen):
    """ProGAN's steps a-c for one image set: uint8 (N, 3, S, S) -> one (N * n_patches, 147) float32
    array of normalised descriptors per pyramid level, finest level first.

    Patch positions are drawn from `gen` for the whole set up front, so they do not depend on how the
    images are chunked. Each patch lies wholly inside its level: top-left corner uniform in
    [0, s - 7] on both axes (ProGAN's code draws centres in [3, s - 4], the same thing)."""
    n, _, size, _ = images.shape
    resolutions = []
    s = size
    while s >= SWD_MIN_RESOLUTION:
        resolutions.append(s)
        s //= 2
    m = n * n_patches                                             # descriptors per level
    owner = torch.arange(n).repeat_interleave(n_patches)          # (M,) image index of each patch
    corners = [(torch.randint(0, s - PATCH + 1, (m,), generator=gen),       # (M,) top row
                torch.randint(0, s - PATCH + 1, (m,), generator=gen))       # (M,) left column
               for s in resolutions]

    out = [[] for _ in resolutions]                               # per level: list of (m_chunk, 147)
    chunk = max(1, _CHUNK_PIXELS // (size * size))                # images per chunk
    for i0 in range(0, n, chunk):
        i1 = min(n, i0 + chunk)
        x = images[i0:i1].float()                                 # (n_c, 3, S, S), values 0..255
        pyramid = laplacian_pyramid(x)                            # [(n_c, 3, s, s) for s in resolutions]
        sel = slice(i0 * n_patches, i1 * n_patches)               # this chunk's patches
        for k, level in enumerate(pyramid):
            top, left = corners[k]
            out[k].append(extract_patches(level, owner[sel] - i0, top[sel], left[sel]))  # (m_c, 147)

    descriptors = []
    for parts in out:
        d = torch.cat(parts).view(m, 3, PATCH * PATCH)            # (M, 3, 49)
        # Step c: per colour channel, over all descriptors of this level *of this set* (ProGAN's
        # `finalize_descriptors`). This makes SWD blind to a global brightness/contrast change per
        # band and focuses it on the shape of the distribution: which local patterns occur, and how
        # often. (The clamp only guards a constant image set against 0/0.)
        mean = d.mean(dim=(0, 2), keepdim=True)                   # (1, 3, 1)
        std = d.std(dim=(0, 2), keepdim=True, unbiased=False)     # (1, 3, 1), as np.std
        descriptors.append(((d - mean) / std.clamp_min(1e-8)).view(m, -1))  # (M, 147)
    return resolutions, descriptors


def sliced_wasserstein(a, b, n_projections, gen_dirs, gen_sample):
    """ProGAN step d: SWD between two descriptor sets a (Ma, 147) and b (Mb, 147).

    The Wasserstein-1 distance between two 1-D distributions with the same number of samples is the
    mean |difference| of their *sorted* samples (optimal transport in 1-D matches the i-th smallest
    to the i-th smallest). SWD (Rabin et al. 2011) reduces the 147-d problem to many such 1-D ones:
    project both sets on a random unit direction, compare the sorted projections, average over
    directions. Both sets use the same directions, or the comparison would be meaningless."""
    if len(a) != len(b):
        # Sorted-sample matching needs equal counts: subsample the larger set without replacement.
        m = min(len(a), len(b))
        if len(a) > m:
            a = a[torch.randperm(len(a), generator=gen_sample)[:m]]
        else:
            b = b[torch.randperm(len(b), generator=gen_sample)[:m]]
    m, d = a.shape

    dirs = torch.randn(d, n_projections, generator=gen_dirs)      # (147, P) Gaussian -> uniform
    dirs = dirs / dirs.norm(dim=0, keepdim=True)                  # unit vectors: uniform on sphere

    total = 0.0
    step = max(1, _PROJECTION_BUDGET // m)                        # directions per matrix product
    for j in range(0, n_projections, step):
        # Projections laid out one direction per row, (p, M), so each sort runs over contiguous
        # memory. The sort itself is numpy's (same float32 values, a view, no copy): its vectorised
        # sort is faster than torch.sort on the CPU, and sorting is most of SWD's cost.
        pa = np.sort((dirs[:, j:j + step].T @ a.T).numpy(), axis=1)   # (p, M) each row sorted
        pb = np.sort((dirs[:, j:j + step].T @ b.T).numpy(), axis=1)   # (p, M)
        total += np.abs(pa - pb).sum(dtype=np.float64)            # sum of 1-D transport costs
    return float(total) / (m * n_projections)                     # mean over samples and directions


def swd(images_a, images_b, n_patches=128, n_projections=512, seed=0):
    """Sliced Wasserstein distance between two image sets, per Laplacian-pyramid level (ProGAN §5).

    images_a, images_b: uint8 tensors (N, 3, S, S) and (M, 3, S, S), S a power of two >= 16.
    Returns {"swd_per_level": {"S": ..., "S/2": ..., ..., "16": ...}, "swd": mean over levels},
    every value x 1e3 as in ProGAN's tables. Lower is closer; two samples of one distribution give
    a small but non-zero value (sampling noise), which shrinks as the sets grow.

    Deterministic for a given seed: patch positions and subsampling come from one torch.Generator
    seeded with `seed`, the projection directions from another seeded with `seed + 1`. The directions
    therefore depend only on the seed and the level, so two comparisons made with the same seed (say,
    two checkpoints against the same real set) are projected on exactly the same directions."""
    a = _check_images(images_a, "images_a")
    b = _check_images(images_b, "images_b")
    if a.shape[2:] != b.shape[2:]:
        raise ValueError(f"the two sets differ in size: {tuple(a.shape[2:])} vs {tuple(b.shape[2:])}")
    if n_patches < 1 or n_projections < 1:
        raise ValueError("n_patches and n_projections must be >= 1")

    gen_sample = torch.Generator().manual_seed(seed)
    gen_dirs = torch.Generator().manual_seed(seed + 1)
    resolutions, desc_a = pyramid_descriptors(a, n_patches, gen_sample)   # [(Na*n_patches, 147)]
    _, desc_b = pyramid_descriptors(b, n_patches, gen_sample)             # [(Nb*n_patches, 147)]

    per_level = {}
    for s, da, db in zip(resolutions, desc_a, desc_b):
        per_level[str(s)] = 1e3 * sliced_wasserstein(da, db, n_projections, gen_dirs, gen_sample)
    return {"swd_per_level": per_level, "swd": float(np.mean(list(per_level.values())))}


# ------------------------------------------------------------------------------------------------
# 2. FID (Heusel et al. 2017) and KID (Bińkowski et al. 2018) on feature arrays
# ------------------------------------------------------------------------------------------------

FID_HINT = ("FID/KID need the optional package pytorch-fid: pip install pytorch-fid "
            "(its InceptionV3 weights download on first use)")


def _clip_rounding(w):
    """Eigenvalues of a symmetric PSD matrix with rounding noise removed: (d,) -> (d,).

    Exact zeros come out of eigh as tiny numbers of either sign, about eps * largest eigenvalue
    (always so for a covariance of fewer than d samples, which is singular). Negative ones would
    make sqrt fail, and positive ones would be *amplified* by sqrt (sqrt(1e-14) = 1e-7, times d of
    them). So everything below the rounding level d * eps * max|w| (the threshold numpy's
    matrix_rank uses) is set to 0, its true value."""
    tol = len(w) * np.finfo(np.float64).eps * np.abs(w).max()
    return np.where(w > tol, w, 0.0)


def _sqrt_psd(s):
    """Symmetric square root of a symmetric positive semi-definite matrix: (d, d) -> (d, d).
    With s = V diag(w) V^T (np.linalg.eigh), sqrt(s) = V diag(sqrt(w)) V^T."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(_clip_rounding(w))) @ v.T          # scales column i of V by sqrt(w_i)


def frechet_distance(mu1, sigma1, mu2, sigma2):
    """Fréchet (2-Wasserstein) distance between N(mu1, sigma1) and N(mu2, sigma2):

        d^2 = ||mu1 - mu2||^2 + Tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))

    mu: (d,), sigma: (d, d). Returns a float. FID is this distance between Gaussians fitted to the
    InceptionV3 features of the two image sets (Heusel et al. 2017).

    Only the *trace* of (sigma1 sigma2)^(1/2) is needed, and it can be had from symmetric matrices
    alone. Write R = sigma1^(1/2) (symmetric). Then
        sigma1 sigma2 = R (R sigma2),  and  R sigma2 R = (R sigma2) R,
    and for any two square matrices X, Y, XY and YX have the same eigenvalues. So sigma1 sigma2 has
    the eigenvalues of M = R sigma2 R, which is symmetric positive semi-definite: real and >= 0.
    The square root of sigma1 sigma2 (the one with non-negative eigenvalues, which is what the
    formula means) has the square roots of those eigenvalues, and a trace is the sum of eigenvalues:
        Tr((sigma1 sigma2)^(1/2)) = sum_i sqrt(eig_i(R sigma2 R)).
    This needs only np.linalg.eigh/eigvalsh on symmetric matrices, which are stable. The usual route,
    scipy.linalg.sqrtm of the non-symmetric product, can return complex numbers with spurious
    imaginary parts when the covariances are singular (fewer samples than feature dimensions, always
    the case with a few-shot set of 100 images and 2048-d features)."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    s1, s2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    d = mu1.shape[0]
    if mu2.shape != (d,) or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu {mu1.shape}, {mu2.shape}; "
                         f"sigma {s1.shape}, {s2.shape}")
    s1, s2 = (s1 + s1.T) / 2, (s2 + s2.T) / 2               # exact symmetry for eigh
    r = _sqrt_psd(s1)                                       # (d, d) sigma1^(1/2)
    m = r @ s2 @ r                                          # (d, d) symmetric PSD, same eigenvalues
    eig = np.linalg.eigvalsh((m + m.T) / 2)                 #        as sigma1 sigma2
    tr_sqrt = np.sqrt(_clip_rounding(eig)).sum()            # Tr((sigma1 sigma2)^(1/2))
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_sqrt)


def _as_features(f, name):
    f = np.asarray(f, dtype=np.float64)
    if f.ndim != 2 or len(f) < 2:
        raise ValueError(f"{name}: expected features (N, d) with N >= 2, got shape {f.shape}")
    return f


def fid_from_features(f1, f2):
    """FID between two feature sets f1 (N1, d), f2 (N2, d): fit a Gaussian to each (mean and
    unbiased covariance), then `frechet_distance`. With N < d the covariances are singular and the
    estimate is biased upwards (Bińkowski et al. 2018 show this bias): compare FIDs only at equal N."""
    f1, f2 = _as_features(f1, "f1"), _as_features(f2, "f2")
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)                             # (d,)
    s1 = np.atleast_2d(np.cov(f1, rowvar=False))                            # (d, d)
    s2 = np.atleast_2d(np.cov(f2, rowvar=False))                            # (d, d); atleast_2d for d=1
    return frechet_distance(mu1, s1, mu2, s2)


def _polynomial_kernel(x, y):
    """KID's kernel k(x, y) = (x.y / d + 1)^3 for all pairs: (m, d), (n, d) -> (m, n).
    Dividing by d keeps x.y of order 1 whatever the feature width (Bińkowski et al. 2018's choice)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _mmd2_unbiased(x, y):
    """Unbiased estimate of MMD^2 between the distributions of x (m, d) and y (m, d)
    (Gretton et al. 2012, as used for KID by Bińkowski et al. 2018):

        1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(m(m-1)) sum_{i!=j} k(y_i, y_j) - 2/m^2 sum_{i,j} k(x_i, y_j)

    Leaving out the diagonal k(x_i, x_i) is what removes the bias: a sample compared with itself
    would look more similar than two independent samples do. The estimate can be slightly negative."""
    m = len(x)
    kxx, kyy, kxy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    xx = (kxx.sum() - np.trace(kxx)) / (m * (m - 1))
    yy = (kyy.sum() - np.trace(kyy)) / (m * (m - 1))
    return float(xx + yy - 2.0 * kxy.mean())


def kid_from_features(f1, f2, n_subsets=100, subset_size=1000, seed=0):
    """KID between feature sets f1 (N1, d) and f2 (N2, d): the unbiased MMD^2 with the cubic
    polynomial kernel, averaged over `n_subsets` random subsets of `subset_size` rows of each set
    (drawn without replacement; the size is capped at min(N1, N2)). As Bińkowski et al. do, the
    subsets keep the cost at O(subset_size^2) and their spread gives an error bar. (When both sets
    have at most subset_size rows, every subset is a whole set, so the std is 0: there is then only
    one estimate, and no error bar from subsets.) Returns (mean, std) over the subsets."""
    f1, f2 = _as_features(f1, "f1"), _as_features(f2, "f2")
    if f1.shape[1] != f2.shape[1]:
        raise ValueError(f"feature widths differ: {f1.shape[1]} vs {f2.shape[1]}")
    m = min(subset_size, len(f1), len(f2))
    if m < 2:
        raise ValueError("subset_size must be >= 2")
    rng = np.random.default_rng(seed)
    estimates = [_mmd2_unbiased(f1[rng.choice(len(f1), m, replace=False)],    # (m, d)
                                f2[rng.choice(len(f2), m, replace=False)])    # (m, d)
                 for _ in range(n_subsets)]
    return float(np.mean(estimates)), float(np.std(estimates))


def inception_features(images_uint8, device, batch_size=50):
    """InceptionV3 pool3 features, the 2048-d input of its classifier, as FID and KID use them.

    images_uint8: (N, 3, H, W) uint8. Returns a float64 numpy array (N, 2048).
    The network is pytorch-fid's port of the TensorFlow Inception that defined FID, so the numbers are
    comparable with published ones. It expects floats in [0, 1]; with resize_input=True it resizes to
    299x299 (bilinear) and with normalize_input=True it maps [0, 1] to the [-1, 1] it was trained on.
    pytorch-fid is optional, hence imported here only; a RuntimeError says how to get it."""
    try:
        from pytorch_fid.inception import InceptionV3
    except Exception as e:  # not installed (ImportError), or a broken install: a torchvision that
        # does not match torch fails at import with RuntimeError("operator torchvision::nms ...")
        raise RuntimeError(f"{FID_HINT} (import failed: {type(e).__name__}: {e})") from e
    try:
        model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]], resize_input=True,
                            normalize_input=True)
    except Exception as e:  # no network: URLError, HTTPError, OSError, a broken cached file ...
        raise RuntimeError(f"could not load pytorch-fid's InceptionV3 weights "
                           f"({type(e).__name__}: {e}); {FID_HINT}") from e
    model = model.to(device).eval()

    images = torch.as_tensor(images_uint8)
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    features = []
    with torch.no_grad():
        for i in range(0, len(images), batch_size):
            batch = images[i:i + batch_size].to(device).float() / 255.0   # (B, 3, H, W) in [0, 1]
            pool3 = model(batch)[0]                                        # (B, 2048, 1, 1)
            features.append(pool3.reshape(len(batch), -1).cpu().double().numpy())  # (B, 2048)
    return np.concatenate(features)                                        # (N, 2048)


# ------------------------------------------------------------------------------------------------
# 3. All scores for one set of samples
# ------------------------------------------------------------------------------------------------

def score(fake_uint8, real_uint8, device="cpu", fid=True):
    """Every score of generated images (N, 3, S, S) uint8 against real ones (M, 3, S, S) uint8.

    Always: "swd" and "swd_per_level" (CPU, no weights needed). Then, if `fid`, "fid", "kid" and
    "kid_std" from InceptionV3 features on `device`. FID/KID are optional: if pytorch-fid or its
    weights are missing (or anything else goes wrong there), "fid" and "kid" are None and
    "fid_error" says why. This function never raises for that part."""
    result = swd(fake_uint8, real_uint8)
    if not fid:
        result.update(fid=None, kid=None, fid_error="not computed (fid=False, --no_fid)")
        return result
    try:
        fake, real = torch.as_tensor(fake_uint8), torch.as_tensor(real_uint8)
        both = inception_features(torch.cat([fake, real]), device)     # (N + M, 2048), one model load
        f_fake, f_real = both[:len(fake)], both[len(fake):]            # (N, 2048), (M, 2048)
        fid_value = fid_from_features(f_fake, f_real)
        kid, kid_std = kid_from_features(f_fake, f_real)
    except Exception as e:  # optional part: report, never raise
        result.update(fid=None, kid=None, fid_error=str(e) or type(e).__name__)
        return result
    result.update(fid=fid_value, kid=kid, kid_std=kid_std)
    return result


# ------------------------------------------------------------------------------------------------
# 4. Command line
# ------------------------------------------------------------------------------------------------

def curve(run_dir, marks):
    """--curve: print the evaluations of RUN_DIR/log.jsonl as a table and draw RUN_DIR/images/swd.png."""
    log = Path(run_dir) / "log.jsonl"
    if not log.is_file():
        raise UsageError(f"{log}: no such file (give a run folder, e.g. runs/NAME, that train.py wrote)")
    rows = score_curve(log)
    if not rows:
        raise UsageError(f"{log} holds no evaluation: train with --eval_every N (e.g. 500) to score the "
                         f"EMA generator every N iterations")
    parsed = []
    for mark in marks:
        it, _, label = mark.partition(":")
        if not it.isdigit():
            raise UsageError(f"--mark {mark!r}: give ITER:LABEL, e.g. --mark '2000:first faces'")
        parsed.append((int(it), label))
    out = Path(run_dir) / "images" / "swd.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    draw_score_curve(rows, out, parsed)
    print("iteration\thours\tswd")
    for it, hours, swd in rows:
        print(f"{it}\t{hours:.3f}\t{swd:.2f}")
    print(f"wrote {out}", file=sys.stderr)
    return 0


def main(argv=None):
    """`python metrics.py SAMPLES_DIR REAL_DIR ...`: print one JSON line of scores. Returns the exit
    code: 0, or 2 after one 'metrics.py: error: ...' line on stderr for anything we refuse."""
    parser = OneLineParser(prog="metrics.py", description="SWD, FID and KID of generated images "
                            "against real ones; prints one JSON line.")
    parser.add_argument("samples_dir", nargs="?", help="folder of generated images")
    parser.add_argument("real_dir", nargs="?", help="folder of real images")
    parser.add_argument("--size", type=int, default=256,
                        help="both sets are resized to SIZE x SIZE (a power of two >= 16; default 256)")
    add_device_argument(parser, "where InceptionV3 runs (SWD always runs on the CPU); ")
    parser.add_argument("--no_fid", action="store_true", help="skip FID/KID (no pytorch-fid needed)")
    parser.add_argument("--curve", metavar="RUN_DIR", help="instead: the SWD a run trained with --eval_every "
                        "logged, as a table and as RUN_DIR/images/swd.png")
    parser.add_argument("--mark", action="append", default=[], metavar="ITER:LABEL",
                        help="with --curve: a labelled vertical line at iteration ITER (repeatable)")
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:        # the parser has printed its one line (or --help), and says the code
        return e.code
    try:
        if args.curve:
            return curve(args.curve, args.mark)
        if not (args.samples_dir and args.real_dir):
            raise UsageError("the arguments SAMPLES_DIR and REAL_DIR are required (or --curve RUN_DIR)")
        if args.size < SWD_MIN_RESOLUTION or args.size & (args.size - 1):
            raise UsageError(f"--size must be a power of two >= {SWD_MIN_RESOLUTION} "
                               f"(16, 32, 64, ...), got {args.size}")
        device = resolve_device(args.device)

        def log(message):          # loader and fetch messages go to stderr: stdout holds only the JSON line
            print(message, file=sys.stderr)

        if not Path(args.samples_dir).is_dir():            # before any slow loading or fetching
            raise UsageError(f"{args.samples_dir}: no such folder (give a folder of images)")
        ensure_dataset(args.real_dir, log=log)  # a folder, or a known dataset name fetched into it

        fake = load_images(args.samples_dir, args.size, log=log)     # (N, 3, S, S) uint8
        real = load_images(args.real_dir, args.size, log=log)        # (M, 3, S, S) uint8
    except UsageError as e:
        print(f"metrics.py: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2

    scores = score(fake, real, device=device, fid=not args.no_fid)
    print(json.dumps({"n_fake": len(fake), "n_real": len(real), "size": args.size, **scores}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
