"""Tests of metrics.py: the Fréchet distance and FID, KID, SWD, `score` with and without the optional
pytorch-fid package, and the command line.

    python -m pytest -q tests/test_metrics.py

Each score is checked against a value computed another way (a closed form, a hand computation, or
a slow direct version), and on synthetic image sets whose order is known: two halves of one set,
the same set blurred, noise.
"""

import json
import math
import subprocess
import sys
import types
import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch

import metrics
from tests.helpers import PROJECT, make_images


# ------------------------------------------------------------------------------------------------
# Helpers: synthetic images with real structure, a blur, noise
# ------------------------------------------------------------------------------------------------

PALETTE = np.array([[230, 60, 50], [40, 120, 220], [250, 210, 60], [30, 160, 90],
                             [240, 240, 235], [35, 30, 45]], dtype=np.float64)


def shape_images(n, size=64, seed=0):
    """n uint8 images (n, 3, size, size) of one 'style': a grey background with a faint gradient,
    two bands of stripes, ten discs and three rectangles with hard edges, colours from one palette.
    Every image differs (seeded numpy RNG), but all come from the same distribution, so two halves
    of a set should be close in SWD, and a blurred or noise set far."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size                                   # (S, S) in [0, 1)
    out = np.empty((n, 3, size, size))

    def colour():
        return PALETTE[rng.integers(len(PALETTE))][:, None] + rng.normal(0, 8, (3, 1))

    for i in range(n):
        a = rng.uniform(0, 2 * np.pi)
        img = 128.0 + 20 * (np.cos(a) * (xx - .5) + np.sin(a) * (yy - .5)) + np.zeros((3, 1, 1))
        angle, freq = rng.uniform(0, np.pi), rng.uniform(25, 45)
        waves = np.sin(freq * (np.cos(angle) * xx + np.sin(angle) * yy)) > 0
        for _ in range(2):
            band = np.abs(xx - rng.uniform(.1, .9)) < rng.uniform(.05, .15)
            img[:, band & waves] = colour()
        for _ in range(10):
            cx, cy, r = rng.uniform(0, 1), rng.uniform(0, 1), rng.uniform(.04, .1)
            img[:, (xx - cx) ** 2 + (yy - cy) ** 2 < r * r] = colour()
        for _ in range(3):
            (x0, y0), (w, h) = rng.uniform(0, .85, 2), rng.uniform(.05, .15, 2)
            img[:, (xx > x0) & (xx < x0 + w) & (yy > y0) & (yy < y0 + h)] = colour()
        out[i] = img
    return torch.from_numpy(np.clip(out, 0, 255).round().astype(np.uint8))


def box_blur(images, passes=4):
    """3x3 box blur repeated `passes` times (close to a Gaussian, sigma ~ 0.8 sqrt(passes) px), in
    numpy so the test does not lean on metrics.blur. uint8 (N, 3, H, W) -> same."""
    x = images.numpy().astype(np.float64)
    h, w = x.shape[2:]
    for _ in range(passes):
        p = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="edge")
        x = sum(p[:, :, i:i + h, j:j + w] for i in range(3) for j in range(3)) / 9
    return torch.from_numpy(x.round().astype(np.uint8))


def noise_images(shape, seed=1):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, shape).astype(np.uint8))


# ------------------------------------------------------------------------------------------------
# Fréchet distance and FID
# ------------------------------------------------------------------------------------------------

def test_frechet_diagonal_matches_closed_form():
    # Diagonal covariances: the product commutes, (S1 S2)^(1/2) = diag(sqrt(a b)), so
    # d^2 = ||mu1 - mu2||^2 + sum (sqrt(a) - sqrt(b))^2.
    rng = np.random.default_rng(0)
    mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
    a, b = rng.uniform(0.1, 4, 6), rng.uniform(0.1, 4, 6)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-9)
    # One dimension, scalars in: (m1 - m2)^2 + (sqrt(v1) - sqrt(v2))^2 = 4 + 1.
    assert metrics.frechet_distance(1.0, 4.0, 3.0, 9.0) == pytest.approx(5.0, rel=1e-12)


def test_frechet_non_diagonal_matches_other_formulas():
    rng = np.random.default_rng(1)
    # Commuting but not diagonal: both covariances share eigenvectors Q, so the distance is the same
    # as for the diagonal case in Q's basis.
    q, _ = np.linalg.qr(rng.normal(size=(5, 5)))
    a, b = rng.uniform(0.1, 3, 5), rng.uniform(0.1, 3, 5)
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    mu1, mu2 = rng.normal(size=5), rng.normal(size=5)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)

    # Non-commuting 2x2: a 2x2 matrix M with eigenvalues l1, l2 >= 0 has
    # Tr(M^(1/2)) = sqrt(l1) + sqrt(l2) = sqrt(Tr M + 2 sqrt(det M)).
    s1 = np.array([[2.0, 0.8], [0.8, 1.0]])
    s2 = np.array([[0.5, -0.3], [-0.3, 3.0]])
    assert not np.allclose(s1 @ s2, s2 @ s1)
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, -1.0])
    expected = 8.0 + np.trace(s1) + np.trace(s2) - 2 * tr_sqrt
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected, rel=1e-9)


def test_frechet_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(2)
    full = np.cov(rng.normal(size=(500, 40)) @ rng.normal(size=(40, 40)), rowvar=False)
    singular = np.cov(rng.normal(size=(10, 40)), rowvar=False)      # 10 samples in 40-d: rank 9
    mu = rng.normal(size=40)
    for s in (full, singular):
        assert abs(metrics.frechet_distance(mu, s, mu, s)) < 1e-8 * np.trace(s)


def test_fid_from_features_of_large_samples_near_closed_form():
    rng = np.random.default_rng(3)
    mu1, mu2 = np.array([0.0, 0.0]), np.array([1.0, -0.5])
    s1 = np.array([[1.0, 0.6], [0.6, 2.0]])
    s2 = np.array([[0.5, -0.2], [-0.2, 1.0]])
    f1 = rng.multivariate_normal(mu1, s1, size=20000)               # (20000, 2)
    f2 = rng.multivariate_normal(mu2, s2, size=20000)
    exact = metrics.frechet_distance(mu1, s1, mu2, s2)
    tr_sqrt = math.sqrt(np.trace(s1 @ s2) + 2 * math.sqrt(np.linalg.det(s1) * np.linalg.det(s2)))
    assert exact == pytest.approx(1.25 + 3.0 + 1.5 - 2 * tr_sqrt, rel=1e-9)   # the 2x2 formula
    assert metrics.fid_from_features(f1, f2) == pytest.approx(exact, rel=0.05)
    assert abs(metrics.fid_from_features(f1[:10000], f1[10000:])) < 0.02          # same Gaussian


# ------------------------------------------------------------------------------------------------
# KID
# ------------------------------------------------------------------------------------------------

def test_kid_hand_computed_value():
    # d = 1, k(x, y) = (x y + 1)^3. x = {0, 1}: k(0, 1) = 1. y = {2, 3}: k(2, 3) = 343.
    # Cross terms k(0, 2), k(0, 3), k(1, 2), k(1, 3) = 1, 1, 27, 64, mean 23.25.
    # Unbiased MMD^2 = 1 + 343 - 2 * 23.25 = 297.5; subsets of 2 are the whole sets, so std = 0.
    kid, std = metrics.kid_from_features(np.array([[0.0], [1.0]]), np.array([[2.0], [3.0]]),
                                         n_subsets=5, subset_size=1000)
    assert kid == pytest.approx(297.5, rel=1e-12)
    assert std == pytest.approx(0.0, abs=1e-9)
    # d = 2, k(x, y) = (x.y / 2 + 1)^3. x = {(1, 0), (0, 1)}: x1.x2 = 0 -> k = 1.
    # y = {(1, 1), (2, 0)}: y1.y2 = 2 -> k = 8. Cross dot products 1, 2, 1, 0 -> k = 3.375, 8, 3.375, 1,
    # mean 3.9375. MMD^2 = 1 + 8 - 2 * 3.9375 = 1.125.
    kid, _ = metrics.kid_from_features(np.eye(2), np.array([[1.0, 1.0], [2.0, 0.0]]), n_subsets=1)
    assert kid == pytest.approx(1.125, rel=1e-12)


def test_kid_near_zero_for_same_distribution_positive_for_shifted():
    rng = np.random.default_rng(4)
    d = 16
    f1, f2 = rng.normal(size=(1000, d)), rng.normal(size=(1000, d))
    shifted = rng.normal(size=(1000, d)) + 0.5
    same, same_std = metrics.kid_from_features(f1, f2, n_subsets=10, subset_size=200)
    diff, diff_std = metrics.kid_from_features(f1, shifted, n_subsets=10, subset_size=200)
    assert diff > 0.5                              # for this shift the exact MMD^2 is ~1.0
    assert abs(same) < 0.02 * diff                 # unbiased: no positive offset at equal laws
    assert diff > 4 * diff_std
    # Deterministic for a fixed seed; another seed draws other subsets.
    assert metrics.kid_from_features(f1, f2, n_subsets=10, subset_size=200) == (same, same_std)
    assert metrics.kid_from_features(f1, f2, n_subsets=10, subset_size=200, seed=1)[0] != same


# ------------------------------------------------------------------------------------------------
# SWD
# ------------------------------------------------------------------------------------------------

def test_laplacian_pyramid_levels_and_reconstruction():
    x = shape_images(3, size=64).float()                                  # (3, 3, 64, 64)
    pyramid = metrics.laplacian_pyramid(x)
    assert [p.shape[-1] for p in pyramid] == [64, 32, 16]
    # Band-passes + the coarsest Gaussian level give the image back exactly (coarse to fine).
    rebuilt = pyramid[-1]
    for band in reversed(pyramid[:-1]):
        rebuilt = band + metrics.pyramid_up(rebuilt)
    assert torch.allclose(rebuilt, x, atol=1e-3)
    # The blur of a single bright pixel is the filter itself: [1, 4, 6, 4, 1] x [1, 4, 6, 4, 1] / 256.
    impulse = torch.zeros(1, 1, 16, 16)
    impulse[0, 0, 8, 8] = 256.0
    taps = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0])
    blurred = metrics.blur(impulse)[0, 0]
    assert torch.allclose(blurred[6:11, 6:11], taps[:, None] * taps[None, :], atol=1e-5)
    assert blurred.sum().item() == pytest.approx(256.0, rel=1e-6)
    # A constant image has no detail: every band-pass is 0 and the 16x16 level is the constant.
    # (Fails if the blur loses brightness, e.g. a wrong gain in pyramid_up, or at the borders.)
    const = torch.full((1, 3, 64, 64), 77.0)
    *bands, low = metrics.laplacian_pyramid(const)
    assert all(b.abs().max() < 1e-4 for b in bands)
    assert torch.allclose(low, torch.full((1, 3, 16, 16), 77.0), atol=1e-4)


def test_extract_patches_matches_slicing():
    g = torch.Generator().manual_seed(3)
    level = torch.randn(4, 3, 16, 16, generator=g)
    img = torch.tensor([0, 3, 3, 1, 2])
    top = torch.tensor([0, 9, 2, 5, 7])
    left = torch.tensor([9, 0, 4, 1, 7])
    patches = metrics.extract_patches(level, img, top, left)                 # (5, 147)
    assert patches.shape == (5, 147)
    for k in range(5):
        window = level[img[k], :, top[k]:top[k] + 7, left[k]:left[k] + 7]     # (3, 7, 7)
        assert torch.equal(patches[k], window.reshape(-1))


def test_sliced_wasserstein_of_a_translated_set():
    # b = a + c: on unit direction u every projection moves by c.u, so the sorted projections differ
    # by |c.u| and SWD = mean_u |c.u| -> |c| E|u_1| = |c| Gamma(d/2) / (sqrt(pi) Gamma((d+1)/2)).
    g = torch.Generator().manual_seed(0)
    d = 147
    a = torch.randn(2000, d, generator=g)
    c = torch.randn(d, generator=g)
    got = metrics.sliced_wasserstein(a, a + c, 4096, torch.Generator().manual_seed(1),
                                     torch.Generator().manual_seed(2))
    e_abs_u1 = math.exp(math.lgamma(d / 2) - math.lgamma((d + 1) / 2)) / math.sqrt(math.pi)
    assert got == pytest.approx(c.norm().item() * e_abs_u1, rel=0.05)
    # Unequal sizes: the larger set is subsampled; a set against a subset of itself is close to 0.
    near = metrics.sliced_wasserstein(a, a[:1000], 512, torch.Generator().manual_seed(1),
                                      torch.Generator().manual_seed(2))
    assert near < 0.1 * got
    # The subsample is random, not the first rows: against [a; a + c], half the kept rows are shifted.
    mixed = metrics.sliced_wasserstein(a, torch.cat([a, a + c]), 512, torch.Generator().manual_seed(1),
                                       torch.Generator().manual_seed(2))
    assert mixed > 0.2 * got
    mixed = metrics.sliced_wasserstein(torch.cat([a, a + c]), a, 512, torch.Generator().manual_seed(1),
                                       torch.Generator().manual_seed(2))      # the larger set first
    assert mixed > 0.2 * got


def test_swd_orders_self_blur_noise():
    images = shape_images(80, size=64, seed=0)
    a, b = images[:40], images[40:]                         # two halves of one distribution
    # 128 directions (ProGAN draws 4 x 128) instead of the default 512: the same distances up to
    # a little projection noise, 4x less sorting.
    self_ = metrics.swd(a, b, n_projections=128)
    blurred = metrics.swd(a, box_blur(b), n_projections=128)
    noise = metrics.swd(a, noise_images(b.shape), n_projections=128)
    # The finest level (64) is where a blur removes detail: the biggest gap. The coarse levels of
    # 40 images carry sampling noise that no blur of a few pixels changes, so the mean gaps are
    # smaller but keep the order.
    fine = [r["swd_per_level"]["64"] for r in (self_, blurred, noise)]
    assert fine[0] < 0.5 * fine[1] and fine[1] < 0.8 * fine[2]
    assert self_["swd"] < 0.75 * blurred["swd"] and blurred["swd"] < 0.8 * noise["swd"]


def test_swd_ignores_per_channel_brightness_and_contrast():
    # ProGAN normalises each set's descriptors per colour channel (mean 0, std 1), so scaling and
    # shifting a channel of one whole set changes nothing but uint8 rounding; without that
    # normalisation (or with statistics pooled over both sets) the distance would jump.
    images = shape_images(24, size=64, seed=8)
    a, b = images[:12], images[12:]
    scale = torch.tensor([0.5, 0.8, 0.3]).view(1, 3, 1, 1)
    shift = torch.tensor([64.0, 20.0, 100.0]).view(1, 3, 1, 1)
    dimmer = (b.float() * scale + shift).round().to(torch.uint8)
    base = metrics.swd(a, b, n_patches=64, n_projections=128)
    changed = metrics.swd(a, dimmer, n_patches=64, n_projections=128)        # same seed: same patches
    for level, value in base["swd_per_level"].items():
        assert changed["swd_per_level"][level] == pytest.approx(value, rel=0.03)


def test_swd_keys_mean_determinism_and_checks():
    images = shape_images(12, size=64, seed=5)
    a, b = images[:5], images[5:]                           # unequal sizes on purpose
    r = metrics.swd(a, b, n_patches=32, n_projections=64)
    assert list(r["swd_per_level"]) == ["64", "32", "16"]
    assert r["swd"] == pytest.approx(np.mean(list(r["swd_per_level"].values())), rel=1e-12)
    assert all(v > 0 for v in r["swd_per_level"].values())
    assert metrics.swd(a, b, n_patches=32, n_projections=64) == r                 # same seed
    # The documented recipe by hand: generator `seed` for patches, `seed + 1` for directions, x 1e3.
    gen_sample, gen_dirs = torch.Generator().manual_seed(0), torch.Generator().manual_seed(1)
    _, da = metrics.pyramid_descriptors(a, 32, gen_sample)
    _, db = metrics.pyramid_descriptors(b, 32, gen_sample)
    assert [tuple(d.shape) for d in da + db] == [(5 * 32, 147)] * 3 + [(7 * 32, 147)] * 3
    by_hand = [1e3 * metrics.sliced_wasserstein(x, y, 64, gen_dirs, gen_sample) for x, y in zip(da, db)]
    assert list(r["swd_per_level"].values()) == pytest.approx(by_hand, rel=1e-12)
    assert metrics.swd(a, b, n_patches=32, n_projections=64, seed=1)["swd"] != r["swd"]
    assert list(metrics.swd(images[:, :, :32, :32], images[:, :, 32:, 32:], n_patches=8,
                            n_projections=16)["swd_per_level"]) == ["32", "16"]
    with pytest.raises(ValueError, match="power-of-two"):
        metrics.swd(images[:, :, :48, :48], images[:, :, :48, :48])
    with pytest.raises(ValueError, match="uint8"):
        metrics.swd(images.float(), images.float())


# ------------------------------------------------------------------------------------------------
# score() and the optional pytorch-fid part
# ------------------------------------------------------------------------------------------------

class FakeInception(torch.nn.Module):
    """Stands in for pytorch-fid's InceptionV3, offline: checks the input contract ([0, 1] floats)
    and returns fixed random features of the image's 4x4 average colours and 4x4 average edge
    strength, shaped like pool3 (B, D, 1, 1) but with D = 64 instead of 2048, to keep FID's
    eigendecompositions small and the test fast."""
    BLOCK_INDEX_BY_DIM = {64: 0, 192: 1, 768: 2, 2048: 3}

    def __init__(self, output_blocks, resize_input, normalize_input):
        super().__init__()
        assert list(output_blocks) == [3] and resize_input and normalize_input
        self.proj = torch.randn(96, 64, generator=torch.Generator().manual_seed(0))

    def forward(self, x):
        assert x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
        pool = torch.nn.functional.adaptive_avg_pool2d
        edges = (x[:, :, :, 1:] - x[:, :, :, :-1]).abs()                          # (B, 3, H, W-1)
        summary = torch.cat([pool(x, 4), pool(edges, 4)], 1).reshape(len(x), 96)   # (B, 96)
        return [torch.relu(summary @ self.proj).reshape(len(x), 64, 1, 1)]


def fake_pytorch_fid(monkeypatch, inception_class):
    package = types.ModuleType("pytorch_fid")
    module = types.ModuleType("pytorch_fid.inception")
    module.InceptionV3 = inception_class
    package.inception = module
    monkeypatch.setitem(sys.modules, "pytorch_fid", package)
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", module)


def test_score_without_pytorch_fid_reports_and_keeps_swd(monkeypatch):
    monkeypatch.setitem(sys.modules, "pytorch_fid", None)         # import fails, installed or not
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", None)
    images = shape_images(6, size=32)
    with pytest.raises(RuntimeError, match="pip install pytorch-fid"):
        metrics.inception_features(images, "cpu")
    r = metrics.score(images[:3], images[3:], fid=True)
    assert r["fid"] is None and r["kid"] is None and "pip install pytorch-fid" in r["fid_error"]
    assert r["swd"] > 0 and list(r["swd_per_level"]) == ["32", "16"]

    # A broken install fails at import with other errors (a torchvision built for another torch
    # raises RuntimeError): the same readable message, with the cause.
    class Broken(types.ModuleType):
        def __getattr__(self, name):
            raise RuntimeError("operator torchvision::nms does not exist")
    monkeypatch.setitem(sys.modules, "pytorch_fid", types.ModuleType("pytorch_fid"))
    monkeypatch.setitem(sys.modules, "pytorch_fid.inception", Broken("pytorch_fid.inception"))
    with pytest.raises(RuntimeError, match="pip install pytorch-fid.*torchvision::nms"):
        metrics.inception_features(images, "cpu")


def test_weights_that_fail_to_load_give_a_readable_error(monkeypatch):
    class NoNetwork(FakeInception):
        def __init__(self, *args, **kwargs):
            raise urllib.error.URLError("no network")
    fake_pytorch_fid(monkeypatch, NoNetwork)
    images = shape_images(4, size=32)
    with pytest.raises(RuntimeError, match="weights.*pip install pytorch-fid"):
        metrics.inception_features(images, "cpu")
    r = metrics.score(images[:2], images[2:])
    assert r["fid"] is None and "weights" in r["fid_error"]


def test_score_with_a_stand_in_inception(monkeypatch):
    fake_pytorch_fid(monkeypatch, FakeInception)
    images = shape_images(60, size=32, seed=6)
    feats = metrics.inception_features(images[:7], "cpu", batch_size=3)    # 3 batches: 3 + 3 + 1
    assert feats.shape == (7, 64) and feats.dtype == np.float64
    same = metrics.score(images[:30], images[30:])
    far = metrics.score(images[:30], noise_images((30, 3, 32, 32)))
    assert set(same) >= {"swd", "swd_per_level", "fid", "kid", "kid_std"} and "fid_error" not in same
    assert 0 <= same["fid"] < 0.2 * far["fid"]
    assert same["kid"] < 0.2 * far["kid"] and far["kid"] > 0


def test_pytorch_fid_inception_features():
    pytest.importorskip("pytorch_fid", reason="optional package pytorch-fid not installed")
    try:
        from pytorch_fid.inception import FID_WEIGHTS_URL
    except Exception as e:   # e.g. torchvision missing
        pytest.skip(f"pytorch_fid.inception does not import: {e}")
    # Tests never download: use the weights only if a previous run left them in torch's hub cache.
    cached = Path(torch.hub.get_dir()) / "checkpoints" / FID_WEIGHTS_URL.rsplit("/", 1)[-1]
    if not cached.is_file():
        pytest.skip(f"InceptionV3 FID weights not cached at {cached} (they download on first use)")
    images = shape_images(4, size=64)
    try:
        feats = metrics.inception_features(images, "cpu", batch_size=2)
    except RuntimeError as e:
        pytest.skip(f"InceptionV3 weights could not load: {e}")
    assert feats.shape == (4, 2048) and np.isfinite(feats).all() and (feats >= 0).all()
    assert abs(metrics.fid_from_features(feats, feats)) < 1e-3


# ------------------------------------------------------------------------------------------------
# Command line
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_cli_prints_one_json_line(tmp_path, capsys):
    images = shape_images(8, size=64, seed=7)
    fake = make_images(tmp_path / "fake", pictures=images[:3])
    real = make_images(tmp_path / "real", pictures=images[3:])
    assert metrics.main([str(fake), str(real), "--size", "32", "--no_fid"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert (r["n_fake"], r["n_real"], r["size"]) == (3, 5, 32)
    assert list(r["swd_per_level"]) == ["32", "16"] and r["swd"] > 0 and r["fid"] is None

    # The same as a program, as a user runs it.
    proc = subprocess.run([sys.executable, "metrics.py", str(fake), str(real), "--size", "16",
                           "--no_fid", "--device", "cpu"],
                          cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout.strip())
    assert r["size"] == 16 and list(r["swd_per_level"]) == ["16"] and r["swd"] > 0


@pytest.mark.slow
def test_cli_refuses_with_one_line(tmp_path, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    real = make_images(tmp_path / "real", pictures=shape_images(2, size=32))
    # As a program: exit code 2, one line on stderr, no traceback.
    proc = subprocess.run([sys.executable, "metrics.py", str(empty), str(real), "--no_fid"],
                          cwd=PROJECT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == "" and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert proc.stderr.startswith("metrics.py: error: ") and "no readable images" in proc.stderr
    # In-process for the other refusals (an uncaught exception would fail the test as well).
    for argv, words in (([str(empty), str(real), "--no_fid"], "no readable images"),
                        ([str(real), str(real), "--size", "48"], "power of two"),
                        ([str(tmp_path / "missing"), str(real)], "no such folder"),
                        ([str(real)], "required"),
                        ([str(real), str(real), "--device", "tpu"], "invalid choice")):
        assert metrics.main(argv) == 2
        out, err = capsys.readouterr()
        assert out == "" and "Traceback" not in err
        err = err.strip()
        assert len(err.splitlines()) == 1 and err.startswith("metrics.py: error: ") and words in err
