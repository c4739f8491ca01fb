"""Tests of FastGAN's networks and method (Liu et al., ICLR 2021): sle.py, generator.py, discriminator.py.

    python -m pytest -q test_fastgan.py

1. parameter counts: the authors' networks at 256, 512 and 1024 (Fig. 3 and 4; 128 is ours);
2. output shapes; 3. the tanh range of G's two images;
4. SLE (§3.1, Eq. 1): a per-channel gate in (0, 1) multiplies the high-resolution map;
5. and 6. gradients: G's loss (Eq. 4) and D's reconstruction loss (Eq. 2) reach what they train;
7. style mixing (§4.2, Fig. 5); 8. sizes and widths the networks cannot be built for;
9. initialisation and spectral norm (§4); 10. a short train.py run that learns, and what its EMA
generator draws; 11. the losses (Eq. 2-4) called directly: the hinge margin, the decoders' targets,
the reconstruction term's form and weight; 12. the EMA generator: its ramped-up decay, its update,
its recomputed BatchNorm statistics (ema.py); 13. the layering of the project's files.

Every other test file, in tests/, tests one module or script and is named after it (test_diffaug.py,
test_train.py, test_images.py, test_checkpoint.py, test_sample.py, test_metrics.py, test_speed.py,
test_bench.py, test_ablation.py, test_distributed.py, test_datasets.py, ...). tests/helpers.py holds
the helpers that several of them share.
"""

import copy
import json
import math
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

import losses
import train
from plumbing import checkpoint, distances, speed
from tests.helpers import NZ, TINY, make_images, run_train
from discriminator import Discriminator, DownBlockComp, crop_quarter
from generator import SUPPORTED_SIZES, Generator, NoiseInjection
from sle import SLE


def _n_trainable(module):
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def _settle(G, steps=3, batch=8):
    """Bring a freshly built G to a state like a trained one before eval-mode use: a few train-mode
    forwards settle spectral norm's power iteration, and BatchNorm's running statistics become the
    cumulative average of those batches (instead of the initial mean 0 / var 1)."""
    bns = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average
    G.train()
    with torch.no_grad():
        for _ in range(steps):
            G(torch.randn(batch, G.nz))
    for bn in bns:
        bn.momentum = 0.1
    return G.eval()


def _assert_grads_reach(named_params, what):
    """Every parameter has a gradient that is finite and not identically zero."""
    named_params = list(named_params)
    assert named_params, f"no parameters in {what}"
    missing = [n for n, p in named_params if p.grad is None]
    assert not missing, f"{what}: no gradient reaches {missing}"
    bad = [n for n, p in named_params if not torch.isfinite(p.grad).all()]
    assert not bad, f"{what}: non-finite gradient in {bad}"
    zero = [n for n, p in named_params if not (p.grad != 0).any()]
    assert not zero, f"{what}: all-zero gradient in {zero}"


# -- 1. Parameter counts (the authors' networks at 256/512/1024; 128 is ours) --

PARAM_COUNTS = {  # im_size: (G, D, G.sle, D.sle), ngf = ndf = 64, nz = 256, nc = 3
    128: (28_959_622, 11_459_328, 2_641_920, 983_040),
    256: (29_127_846, 11_526_160, 2_774_016, 1_032_192),
    512: (29_174_392, 11_526_496, 2_807_040, 1_032_192),
    1024: (29_176_512, 11_528_192, 2_807_040, 1_032_192),
}
DECODERS_PARAM_COUNT = 3_139_488


@pytest.fixture(scope="module", params=SUPPORTED_SIZES, ids=lambda s: f"size{s}")
def full_size_nets(request):
    """G and D at ngf = ndf = 64 (the paper's widths); construction only, no forward pass."""
    torch.manual_seed(0)
    size = request.param
    return size, Generator(ngf=64, nz=NZ, nc=3, im_size=size), Discriminator(ndf=64, nc=3, im_size=size)


def test_generator_param_count(full_size_nets):
    """G has the authors' trainable-parameter count at each resolution (Fig. 3 architecture)."""
    size, G, _ = full_size_nets
    assert _n_trainable(G) == PARAM_COUNTS[size][0]


def test_discriminator_param_count(full_size_nets):
    """D (with its decoders) has the authors' trainable-parameter count at each resolution (Fig. 4)."""
    size, _, D = full_size_nets
    assert _n_trainable(D) == PARAM_COUNTS[size][1]


def test_sle_param_counts(full_size_nets):
    """The SLE modules of G (§3.1) and of D (Fig. 4) hold the expected number of parameters."""
    size, G, D = full_size_nets
    assert _n_trainable(G.sle) == PARAM_COUNTS[size][2]
    assert _n_trainable(D.sle) == PARAM_COUNTS[size][3]
    assert len(G.sle) == {128: 2, 256: 3, 512: 4, 1024: 4}[size]
    assert len(D.sle) == (2 if size == 128 else 3)


def test_decoder_param_counts(full_size_nets):
    """D's three reconstruction decoders (§3.2) are the same size at every resolution."""
    _, _, D = full_size_nets
    n = sum(_n_trainable(d) for d in (D.decoder_big, D.decoder_part, D.decoder_small))
    assert n == DECODERS_PARAM_COUNT


# -- 2. Output shapes --

@pytest.fixture(scope="module", params=SUPPORTED_SIZES, ids=lambda s: f"size{s}")
def small_nets(request):
    """Narrow G and D (ngf = ndf = 8) at each supported size, in train mode."""
    torch.manual_seed(0)
    size = request.param
    return size, Generator(ngf=8, nz=NZ, im_size=size), Discriminator(ndf=8, im_size=size)


def test_generator_output_shapes(small_nets):
    """G(z) returns the image at im_size and the 128x128 image (Fig. 3's two outputs)."""
    size, G, _ = small_nets
    torch.manual_seed(1)
    with torch.no_grad():
        img, img_128 = G(torch.randn(2, NZ))
    assert img.shape == (2, 3, size, size)
    assert img_128.shape == (2, 3, 128, 128)
    assert torch.isfinite(img).all() and torch.isfinite(img_128).all()


def test_discriminator_output_shapes(small_nets):
    """D returns two (B,1,5,5) logit maps, and with part=k three 128x128 reconstructions (§3.2)."""
    size, _, D = small_nets
    torch.manual_seed(1)
    img, img_128 = torch.randn(2, 3, size, size), torch.randn(2, 3, 128, 128)
    part = SUPPORTED_SIZES.index(size)  # each size asks for a different quarter: all four are covered
    with torch.no_grad():
        out = D(img, img_128)
        assert len(out) == 2
        for logits in out:
            assert logits.shape == (2, 1, 5, 5)
        logits_big, logits_small, recons = D(img, img_128, part=part)
    assert logits_big.shape == (2, 1, 5, 5) and logits_small.shape == (2, 1, 5, 5)
    assert set(recons) == {"big", "part", "small"}
    for r in recons.values():
        assert r.shape == (2, 3, 128, 128)
        assert r.abs().max() <= 1  # decoders end in tanh, like the images they rebuild


def test_crop_quarter_picks_the_right_quarter():
    """crop_quarter(x, k) is quarter k (0 TL, 1 TR, 2 BL, 3 BR) -- what decoder_part must rebuild (§3.2)."""
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).view(2, 1, 4, 4)
    assert torch.equal(crop_quarter(x, 0), x[:, :, :2, :2])
    assert torch.equal(crop_quarter(x, 1), x[:, :, :2, 2:])
    assert torch.equal(crop_quarter(x, 2), x[:, :, 2:, :2])
    assert torch.equal(crop_quarter(x, 3), x[:, :, 2:, 2:])


# -- 3. Output range --

@pytest.mark.parametrize("mode", ["train", "eval"])
def test_generator_outputs_in_tanh_range(mode):
    """Both of G's images lie in [-1, 1], the range of the data, even for huge latents (tanh heads)."""
    torch.manual_seed(0)
    G = Generator(ngf=16, nz=NZ, im_size=256)
    if mode == "eval":
        _settle(G)  # BN statistics of N(0, 1) latents: z * 100 then drives the heads far out of range
    with torch.no_grad():
        img, img_128 = G(torch.randn(2, NZ) * 100)
    for x in (img, img_128):
        assert torch.isfinite(x).all()
        assert x.min() >= -1 and x.max() <= 1
        assert x.std() > 0.01  # not a constant image


# -- 4. SLE --

@pytest.mark.parametrize("low,high", [(4, 64), (8, 128), (13, 40)])
def test_sle_gate_and_forward(low, high):
    """SLE (Eq. 1): a per-channel gate in (0,1) from x_low multiplies x_high, for any pair of resolutions."""
    torch.manual_seed(0)
    sle = SLE(ch_low=24, ch_high=8).eval()  # eval: no power-iteration step between two calls
    x_low, x_high = torch.randn(3, 24, low, low), torch.randn(3, 8, high, high)
    gate = sle.gate(x_low)
    assert gate.shape == (3, 8, 1, 1)
    assert (gate > 0).all() and (gate < 1).all()
    # The gate reads x_low: different samples get different gates.
    assert (gate[0] - gate[1]).abs().max() > 1e-3
    y = sle(x_low, x_high)
    assert y.shape == x_high.shape
    assert torch.allclose(y, x_high * gate, rtol=0, atol=1e-6)
    # Channel-wise: inside one channel the ratio y / x_high is one number.
    ratio = y[1, 2] / x_high[1, 2]
    assert torch.allclose(ratio, gate[1, 2, 0, 0].expand_as(ratio), atol=1e-5)


# -- 5. & 6. Gradients --

def test_noise_injection_adds_weighted_noise_and_learns_its_strength():
    """NoiseInjection (Fig. 3's comp blocks): x + w * n, one (B, 1, H, W) noise map broadcast over
    the channels; w gets the gradient sum(g * n); x is left as it was. Under bf16 autocast the sum
    is float32, as `x + w * n` with a float32 w gives."""
    torch.manual_seed(0)
    inj = NoiseInjection()
    with torch.no_grad():
        inj.weight.fill_(0.3)
    x, n = torch.randn(2, 4, 5, 5, requires_grad=True), torch.randn(2, 1, 5, 5)
    x_before = x.detach().clone()
    out = inj(x, n)
    assert out.shape == (2, 4, 5, 5) and torch.equal(out, x + 0.3 * n) and torch.equal(x, x_before)
    g = torch.randn_like(out)
    gw, gx = torch.autograd.grad(out, [inj.weight, x], g)
    torch.testing.assert_close(gw, (g * n).sum().view(1)) and torch.testing.assert_close(gx, g)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = nn.Conv2d(4, 4, 1)(x)                              # bf16 under autocast
        assert y.dtype == torch.bfloat16 and inj(y, n).dtype == torch.float32


def test_residual_down_block_is_the_mean_of_its_two_paths():
    """DownBlockComp (Fig. 4): (path A + path B) / 2, halving the resolution, in value and gradient."""
    torch.manual_seed(0)
    block = DownBlockComp(4, 8).eval()   # eval: spectral norm's power iteration would move between calls
    x = torch.randn(2, 4, 8, 8, requires_grad=True)
    out = block(x)
    ref = (block.main(x) + block.direct(x)) * 0.5
    assert out.shape == (2, 8, 4, 4) and torch.equal(out, ref)
    g = torch.randn_like(out)
    assert torch.equal(torch.autograd.grad(out, x, g)[0], torch.autograd.grad(ref, x, g)[0])


@pytest.mark.parametrize("size", SUPPORTED_SIZES)
def test_generator_loss_reaches_every_generator_parameter(size):
    """G's adversarial loss -E[D(G(z))] (Eq. 4) gives every G parameter a finite, non-zero gradient."""
    torch.manual_seed(0)
    G, D = Generator(ngf=8, nz=NZ, im_size=size), Discriminator(ndf=8, im_size=size)
    img, img_128 = G(torch.randn(2, NZ))
    logits_big, logits_small = D(img, img_128)
    loss = -(logits_big.mean() + logits_small.mean())
    loss.backward()
    # Includes the NoiseInjection strengths, which start at 0 but still get a gradient.
    assert all(m.weight.item() == 0 for m in G.modules() if isinstance(m, NoiseInjection))
    _assert_grads_reach(G.named_parameters(), "G")


@pytest.mark.parametrize("size", SUPPORTED_SIZES)
def test_reconstruction_loss_reaches_every_decoder_parameter(size):
    """D's reconstruction loss (Eq. 2) trains all three decoders, and through them D's encoder."""
    torch.manual_seed(0)
    D = Discriminator(ndf=8, im_size=size)
    img = torch.rand(2, 3, size, size) * 2 - 1
    img_128 = F.interpolate(img, size=128)
    part = 2
    _, _, recons = D(img, img_128, part=part)
    loss = (F.mse_loss(recons["big"], img_128)
            + F.mse_loss(recons["part"], F.interpolate(crop_quarter(img, part), size=128))
            + F.mse_loss(recons["small"], img_128))
    loss.backward()
    for name in ("decoder_big", "decoder_part", "decoder_small"):
        _assert_grads_reach(getattr(D, name).named_parameters(), name)
    # The point of §3.2: the loss shapes D's own features (the stem and the small branch).
    _assert_grads_reach(D.stem.named_parameters(), "D.stem")
    _assert_grads_reach(D.small.named_parameters(), "D.small")


# -- 7. Style mixing --

@pytest.fixture(scope="module")
def mixing_generator():
    """A settled G in eval mode with non-zero noise strengths; the tests only read it (no_grad, eval)."""
    torch.manual_seed(0)
    G = _settle(Generator(ngf=16, nz=NZ, im_size=128))
    # Non-zero noise strengths, so that sharing the noise between the two paths is actually tested.
    for m in G.modules():
        if isinstance(m, NoiseInjection):
            m.weight.data.fill_(0.5)
    return G


def test_style_mixing_with_own_latent_is_identity(mixing_generator):
    """G(z, z_style=z) == G(z) exactly in eval mode with the same noise (§4.2 style mixing)."""
    G = mixing_generator
    torch.manual_seed(1)
    z = torch.randn(2, NZ)
    noise = G.draw_noise(2)
    with torch.no_grad():
        a, a_128 = G(z, noise=noise)
        b, b_128 = G(z, z_style=z, noise=noise)
        assert torch.equal(a, b) and torch.equal(a_128, b_128)
        # Same through a fixed seed instead of an explicit noise dict.
        torch.manual_seed(5)
        c, _ = G(z)
        torch.manual_seed(5)
        d, _ = G(z, z_style=z)
        assert torch.equal(c, d)
        # ...and the noise does matter (its strengths are 0.5), so the above is not vacuous.
        e, _ = G(z)
        assert (c - e).abs().max() > 1e-2


def test_style_mixing_mixes(mixing_generator):
    """G(z, z_style=w) differs from G(z) and G(w): the gates carry w's style, the content is z's (Fig. 5)."""
    G = mixing_generator
    torch.manual_seed(2)
    z, w = torch.randn(2, 2, NZ)
    noise = G.draw_noise(2)
    with torch.no_grad():
        # The gates themselves depend on the latent, well above float noise, and are not saturated.
        feats_z, feats_w = G.low_res_path(z, noise), G.low_res_path(w, noise)
        for hi, sle in G.sle.items():
            lo = int(hi) // 16
            g_z, g_w = sle.gate(feats_z[lo]), sle.gate(feats_w[lo])
            assert 0.05 < g_z.mean() < 0.95
            assert (g_z - g_w).abs().mean() > 1e-2, f"gate of {hi} barely depends on the latent"
        img_z, _ = G(z, noise=noise)
        img_w, _ = G(w, noise=noise)
        mixed, _ = G(z, z_style=w, noise=noise)
    assert (mixed - img_z).abs().mean() > 1e-2
    assert (mixed - img_w).abs().mean() > 1e-2
    # The content comes from z: the mix is closer to G(z) than to G(w).
    assert (mixed - img_z).abs().mean() < (mixed - img_w).abs().mean()


# -- 8. Configuration checks --

@pytest.mark.parametrize("build,match", [
    (lambda: Generator(im_size=300), r"128, 256, 512, 1024"),
    (lambda: Discriminator(im_size=64), r"128, 256, 512, 1024"),
    (lambda: Generator(ngf=12, im_size=128), r"multiple of 8"),
    (lambda: Discriminator(ndf=0, im_size=128), r"multiple of 8"),
    (lambda: Generator(ngf=-8, im_size=128), r"multiple of 8"),
], ids=["G-size300", "D-size64", "ngf12", "ndf0", "ngf-8"])
def test_bad_configuration_raises(build, match):
    """A size or width the networks cannot be built for is refused with a ValueError naming the allowed values."""
    with pytest.raises(ValueError, match=match):
        build()


# -- 9. Initialisation (§4: N(0, 0.02) weights, spectral norm on every conv) --

def test_initialisation():
    """Conv weights ~ N(0, 0.02), BatchNorm gamma ~ N(1, 0.02) and beta = 0, noise strengths 0, SN on every conv."""
    torch.manual_seed(0)
    G, D = Generator(ngf=64, nz=NZ, im_size=128), Discriminator(ndf=64, im_size=128)
    w = G.up["16"].conv.parametrizations.weight.original
    assert 0.015 <= w.std() <= 0.025 and abs(w.mean()) < 1e-3
    for net in (G, D):
        gammas, betas = [], []
        for name, m in net.named_modules():
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                assert hasattr(m, "parametrizations"), f"{name} has no spectral norm"
                w = m.parametrizations.weight.original
                if w.numel() >= 1000:  # enough samples for a tight estimate
                    assert 0.015 <= w.std() <= 0.025, f"{name}: std {w.std():.4f}"
                    assert abs(w.mean()) < 0.003, f"{name}: mean {w.mean():.4f}"
            elif isinstance(m, nn.BatchNorm2d):
                gammas.append(m.weight.detach().flatten())
                betas.append(m.bias.detach().flatten())
        gammas, betas = torch.cat(gammas), torch.cat(betas)
        assert abs(gammas.mean() - 1) < 0.005
        assert 0.015 <= gammas.std() <= 0.025
        assert torch.equal(betas, torch.zeros_like(betas))
    assert all(m.weight.item() == 0 for m in G.modules() if isinstance(m, NoiseInjection))


def test_spectral_norm_is_one_right_after_construction():
    """Right after construction each spectrally-normalised conv has largest singular value ~1 (§4)."""
    torch.manual_seed(0)
    for net in (Generator(ngf=8, nz=NZ, im_size=256), Discriminator(ndf=8, im_size=256)):
        net.eval()  # eval: reading .weight does no power-iteration step
        for name, m in net.named_modules():
            if hasattr(m, "parametrizations"):
                p = m.parametrizations.weight[0]
                sigma = torch.linalg.matrix_norm(p._reshape_weight_to_matrix(m.weight.detach()), 2)
                assert 0.95 <= sigma <= 1.2, f"{name}: largest singular value {sigma:.3f}"


# -- 10. A short training run learns (train.py, end to end) --

# The overfit run: train.py on 2 synthetic images at 128x128, widths 8, batch 4, for OVERFIT_ITERS
# iterations, with a learning rate 10x the paper's and no DiffAugment: a test has 150 iterations, not
# 50,000, and only has to show that G learns the images. Scored like what a user looks at: the EMA
# generator in eval mode, with the BatchNorm statistics train.py recomputed for it (ema.py).
OVERFIT_ITERS = 150
QUICK_OVERFIT_ITERS = 60   # the quick loop's run: 40% of the iterations, a lower bar
OVERFIT_ARGS = ["--im_size", "128", "--ngf", "8", "--ndf", "8", "--batch_size", "4", "--lr", "2e-3",
                "--policy", "", "--device", "cpu", "--log_every", "1", "--save_every", "100000",
                "--sample_every", "100000"]
OVERFIT_BAR = 0.8      # the EMA generator's distance must fall below 0.8x the untrained G's
QUICK_OVERFIT_BAR = 0.9   # after QUICK_OVERFIT_ITERS (measured margins: docs/measurements.md)

# Saturated colours, far from what an untrained G draws (tanh of small values: grey), so that a G
# which learns the colours and the layout comes measurably closer to the training images.
_SATURATED = np.array([[255, 0, 0], [0, 0, 255], [255, 255, 0], [0, 255, 0]], np.uint8)


def _eval_samples(G, n=16, size=8):
    """n samples of G in eval mode (as sample.py draws them) from a fixed seed, at size x size."""
    g = torch.Generator().manual_seed(123)
    z = torch.randn(n, G.nz, generator=g)
    G.eval()
    with torch.no_grad():
        x = G(z, noise=G.draw_noise(n, generator=g))[0]
    return F.interpolate(x, size=size, mode="area")


def _nearest_distance(samples, reals):
    """Mean over samples of the mean squared pixel difference to the closest training image."""
    a, b = samples.flatten(1), F.interpolate(reals, size=samples.shape[-1], mode="area").flatten(1)
    return (torch.cdist(a, b) ** 2 / a.shape[1]).min(dim=1).values.mean().item()


def overfit_run(root, seed=0, iters=OVERFIT_ITERS):
    """The overfit run in `root`; returns what the tests read: the reconstruction loss of every
    iteration, and the nearest-neighbour distance (8x8 pixels) to the training images of the untrained
    G ('start'), the EMA generator ('ema') and the raw G ('raw') at the end, and the EMA generator's
    16 samples at full size ('ema_samples')."""
    from ema import recompute_batchnorm_statistics
    data = make_images(root / "data", n=2, centred=True,      # saturated disc on a saturated background
                       background=lambda i, rng: _SATURATED[2 * i % 4], disc=lambda i, rng: _SATURATED[(2 * i + 1) % 4])
    train.main(["--path", str(data), "--out", str(root / "runs"), "--iter", str(iters),
                "--seed", str(seed), *OVERFIT_ARGS])
    rows = [json.loads(line) for line in (root / "runs" / "data" / "log.jsonl").read_text().splitlines()]
    reals = torch.stack([torch.from_numpy(np.array(Image.open(p).convert("RGB"))).permute(2, 0, 1)
                         for p in sorted(data.glob("*.png"))]).float() / 127.5 - 1   # (2, 3, 64, 64)
    torch.manual_seed(seed)                                # train.py builds G first from --seed
    G_start = recompute_batchnorm_statistics(Generator(ngf=8, nz=NZ, im_size=128), 4, seed=seed)
    state = checkpoint.load_checkpoint(root / "runs" / "data" / "checkpoints" / "latest.pt")
    G_ema, G_raw = (checkpoint.generator_from_checkpoint(state, ema=e) for e in (True, False))
    with torch.no_grad():
        ema_samples = G_ema.eval()(torch.randn(16, NZ, generator=torch.Generator().manual_seed(5)))[0]
    return {"recon": [r["recon"] for r in rows if "recon" in r],
            "start": _nearest_distance(_eval_samples(G_start), reals),
            "ema": _nearest_distance(_eval_samples(G_ema), reals),
            "raw": _nearest_distance(_eval_samples(G_raw), reals),
            "ema_samples": ema_samples}


@pytest.fixture(scope="module")
def overfit(tmp_path_factory):
    return overfit_run(tmp_path_factory.mktemp("overfit"))


@pytest.fixture(scope="module")
def quick_overfit(tmp_path_factory):
    return overfit_run(tmp_path_factory.mktemp("quick_overfit"), iters=QUICK_OVERFIT_ITERS)


def test_a_short_run_learns_the_images(quick_overfit):
    """The quick loop's overfit run: QUICK_OVERFIT_ITERS iterations of train.py on 2 synthetic images
    cut D's reconstruction loss (Eq. 2) by more than 1.5x and bring the EMA generator's samples, in eval
    mode, below QUICK_OVERFIT_BAR times the untrained G's nearest-image distance; the samples are images,
    not a flat colour. Margins for seeds 0-2 under four CPU kernel settings are in
    docs/measurements.md ('The short overfit run'); `-m slow` runs the longer run below."""
    recon = quick_overfit["recon"]
    assert len(recon) == QUICK_OVERFIT_ITERS and np.mean(recon[-5:]) < np.mean(recon[:5]) / 1.5, recon
    assert quick_overfit["ema"] < QUICK_OVERFIT_BAR * quick_overfit["start"], (quick_overfit["start"], quick_overfit["ema"])
    assert quick_overfit["ema_samples"].flatten(1).std(dim=1).min() > 0.1


@pytest.mark.slow
def test_short_training_learns(overfit):
    """The training loop learns. On 2 synthetic images, OVERFIT_ITERS iterations of train.py (about a
    minute on 2 cores) cut D's reconstruction loss (Eq. 2) by more than 1.5x, and bring the EMA
    generator's samples close to the training images: the mean nearest-neighbour distance at 8x8
    pixels falls below OVERFIT_BAR times the untrained G's. The figures for seeds 0-2 under four CPU
    kernel settings are in docs/measurements.md ('The short overfit run'); with G's step removed (G's Adam at lr 0) the distance
    stays at its start and this test fails."""
    recon = overfit["recon"]
    assert len(recon) == OVERFIT_ITERS and np.mean(recon[-5:]) < np.mean(recon[:5]) / 1.5, recon
    assert overfit["ema"] < OVERFIT_BAR * overfit["start"], (overfit["start"], overfit["ema"])


@pytest.mark.slow
def test_ema_generator_draws_images_as_close_as_the_raw_generator(overfit):
    """What a user looks at is the EMA generator in eval mode (sample.py's default, the training grids).
    After the short run its samples are images, not a flat colour (each sample's standard deviation
    over its pixels is far above a flat image's 0), and they came about as close to the training
    images as the raw G's: of the nearest-neighbour distance the raw G closed since the start, the EMA
    generator closed at least 80% (measured for seeds 0-2 under four CPU kernel settings: 92% to 115%;
    at this learning rate G still moves fast at the end and the average lags it by a few iterations,
    so the end distances themselves differ by up to 20% either way). With a fixed decay of 0.999 and
    G's own BatchNorm statistics, the EMA generator's samples are a grey wash (std 0.13) and it closes
    41%. See ema.py: the ramped-up decay, its own statistics."""
    per_image_std = overfit["ema_samples"].flatten(1).std(dim=1)          # (16,)
    assert per_image_std.min() > 0.2, per_image_std
    start, ema, raw = overfit["start"], overfit["ema"], overfit["raw"]
    assert start - ema >= 0.8 * (start - raw), (start, ema, raw)


# -- 11. The losses (Eq. 2-4), called directly --

def test_hinge_margin_is_drawn_from_0_8_to_1():
    """Eq. 3 with the authors' margin m ~ U[0.8, 1]: relu(m - D(x)) on reals, relu(m + D(G(z))) on fakes.
    A logit of 1 (or -1 for fakes) is past every margin: exactly 0. A logit of 0 gives E[m] = 0.9, and a
    logit of 0.8 gives E[relu(m - 0.8)] = 0.1, each to the sampling error of 400,000 draws."""
    torch.manual_seed(0)
    n = 400_000
    zeros, ones = torch.zeros(n), torch.ones(n)
    assert losses.real_loss(ones).item() == 0.0 and losses.fake_loss(-ones).item() == 0.0
    assert abs(losses.real_loss(zeros).item() - 0.9) < 1e-3
    assert abs(losses.fake_loss(zeros).item() - 0.9) < 1e-3
    assert abs(losses.real_loss(0.8 * ones).item() - 0.1) < 1e-3
    assert abs(losses.fake_loss(-0.8 * ones).item() - 0.1) < 1e-3
    # The margin is drawn per logit: one logit per draw, never above 1 or below 0.8.
    per_logit = torch.stack([losses.real_loss(torch.zeros(1)) for _ in range(2000)])
    assert per_logit.min() >= 0.8 and per_logit.max() <= 1.0 and per_logit.std() > 0.05
    # Both of D's logit maps count, equally.
    lb, ls = torch.full((2, 1, 5, 5), 1.0), torch.full((2, 1, 5, 5), -3.0)
    both = losses.both_logits(lb, ls)
    assert both.shape == (100,) and both.mean().item() == -1.0


def test_generator_loss_is_minus_the_mean_logit():
    """Eq. 4: L_G = -E[D(G(z))], over both of D's logit maps: no margin, no clipping, so G is pushed
    even where D already calls its images real."""
    lb, ls = torch.full((2, 1, 5, 5), 3.0), torch.full((2, 1, 5, 5), -1.0)
    assert losses.generator_loss(losses.both_logits(lb, ls)).item() == -1.0
    logits = torch.tensor([0.5, 2.0], requires_grad=True)
    loss = losses.generator_loss(logits)
    assert loss.item() == -1.25 and torch.equal(torch.autograd.grad(loss, logits)[0], torch.full((2,), -0.5))


def _recons_equal_to_targets(real_aug, part):
    """Decoder outputs that are exactly the paper's targets, computed here without train.py: the
    augmented real image averaged down to 128x128 (2x2 blocks at 256), and its quarter `part`."""
    row, col = [(0, 0), (0, 1), (1, 0), (1, 1)][part]
    whole = F.avg_pool2d(real_aug, 2)                                     # (B, C, 128, 128)
    quarter = real_aug[:, :, 128 * row:128 * (row + 1), 128 * col:128 * (col + 1)]
    return {"big": whole.clone(), "small": whole.clone(), "part": quarter.clone()}


def test_reconstruction_targets_are_the_augmented_image_and_its_quarter():
    """Eq. 2's targets: decoder_big and decoder_small rebuild the (augmented) real image at 128x128,
    decoder_part the quarter `part` of it. Outputs equal to those targets cost nothing; the wrong
    quarter, or the image itself in place of its quarter, costs."""
    torch.manual_seed(0)
    real_aug = torch.rand(2, 3, 256, 256) * 2 - 1
    mse = losses.pixel_distance("mse")
    for part in range(4):
        recons = _recons_equal_to_targets(real_aug, part)
        assert losses.reconstruction_loss(recons, real_aug, part, mse).item() < 1e-10
        wrong = (part + 1) % 4
        assert losses.reconstruction_loss(recons, real_aug, wrong, mse).item() > 0.1
    recons = _recons_equal_to_targets(real_aug, 0)
    recons["part"] = recons["big"]
    assert losses.reconstruction_loss(recons, real_aug, 0, mse).item() > 0.1
    # No decoders (the --no_recon ablation): the term is zero.
    assert losses.reconstruction_loss({}, real_aug, 0, mse).item() == 0.0


@pytest.mark.parametrize("kind", ["mse", "l1"])
def test_reconstruction_term_is_summed_over_the_batch(kind):
    """The authors' form of L_recons: one distance per image (a mean over its channels and pixels),
    summed over the images of the batch, for each decoder. For a batch of B identical images the term
    is B times the term of one of them, decoder by decoder."""
    torch.manual_seed(0)
    dist = losses.pixel_distance(kind)
    one_real = torch.rand(1, 3, 256, 256) * 2 - 1
    one_recons = {k: torch.rand(1, 3, 128, 128) * 2 - 1 for k in ("big", "small", "part")}
    for B in (2, 8):
        real = one_real.expand(B, -1, -1, -1)
        for name in ("big", "small", "part"):
            single = losses.reconstruction_loss({name: one_recons[name]}, one_real, 1, dist)
            batch = losses.reconstruction_loss({name: one_recons[name].expand(B, -1, -1, -1)}, real, 1, dist)
            assert single.item() > 0
            torch.testing.assert_close(batch, B * single, rtol=1e-6, atol=0)
    # One image's distance is the mean over its channels and pixels.
    a, b = torch.zeros(1, 3, 128, 128), torch.full((1, 3, 128, 128), 0.5)
    assert dist(a, b).item() == pytest.approx(0.25 if kind == "mse" else 0.5)


def _one_step(argv_extra=(), steps=1):
    """`steps` plain training iterations at 128x128, widths 8, batch 4, from seed 0: (D's parameters
    before, after, the losses of the last step)."""
    args = train.parse_args(["--path", ".", "--im_size", "128", "--ngf", "8", "--ndf", "8",
                             "--batch_size", "4", *argv_extra])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        G, D = train.build_networks(args)
        before = {n: p.detach().clone() for n, p in D.named_parameters()}
        opt_G, opt_D = train.make_optimizers(G, D, args.lr, torch.device("cpu"))
        ctx = speed.StepContext(torch.device("cpu"))
        real = torch.rand(4, 3, 128, 128) * 2 - 1
        for _ in range(steps):
            loss_values = train.train_step(G, D, opt_G, opt_D, real, args, ctx, losses.pixel_distance(args.recon))
    return before, dict(D.named_parameters()), loss_values


def test_recon_weight_turns_the_self_supervision_up_and_down():
    """--recon_weight scales L_recons in D's loss: at 0 the decoders receive no gradient (Adam leaves
    them exactly where they were), at 1 (the default) they learn; the logged term is unweighted."""
    before, after, losses0 = _one_step(["--recon_weight", "0"])
    decoders = [k for k in before if k.startswith("decoder_")]
    assert decoders and all(torch.equal(before[k], after[k]) for k in decoders)
    trunk = [k for k in before if k.startswith("down.") and k.endswith("original")]
    assert any(not torch.equal(before[k], after[k]) for k in trunk)
    before, after, losses1 = _one_step()
    assert any(not torch.equal(before[k], after[k]) for k in decoders)
    assert losses0["recon"].item() == pytest.approx(losses1["recon"].item(), rel=1e-6) and losses1["recon"] > 0


def test_train_step_reconstructs_what_d_was_shown(monkeypatch):
    """The decoders' targets come from the *augmented* real batch D classified (DiffAugment on), not
    from the real batch before augmentation."""
    seen = {}
    real_loss = losses.reconstruction_loss

    def spy(recons, real_aug, part, distance):
        seen["target_source"] = real_aug.clone()
        return real_loss(recons, real_aug, part, distance)

    real_forward = Discriminator.forward

    def forward_spy(self, img, img_128, part=None, **kw):
        if part is not None:
            seen["d_input"] = img.clone()
        return real_forward(self, img, img_128, part, **kw)

    monkeypatch.setattr(losses, "reconstruction_loss", spy)
    monkeypatch.setattr(Discriminator, "forward", forward_spy)
    _one_step(["--policy", "color,translation"])
    assert torch.equal(seen["target_source"], seen["d_input"])
    assert seen["d_input"].shape == (4, 3, 128, 128)


def test_recon_lpips_without_the_package_is_one_line(tmp_path, monkeypatch, capsys):
    """--recon lpips is an optional extra: without the package, one line naming the pip install, exit 2."""
    monkeypatch.setitem(sys.modules, "lpips", None)          # `import lpips` raises ImportError
    data = make_images(tmp_path / "data", n=2)
    code, _, err = run_train(["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "1",
                               "--recon", "lpips", *TINY], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err
    assert lines[0] == "train.py: error: --recon lpips needs the lpips package: pip install lpips (or use --recon mse)"


def test_recon_lpips_distance_per_image(monkeypatch):
    """With the lpips package, --recon lpips's distance is one LPIPS value per image (zero for identical
    images), usable in a training step. The package's VGG backbone is built without its downloaded
    weights (pnet_rand=True), so the test needs no network; the learned linear heads ship with it."""
    lpips = pytest.importorskip("lpips", reason="the optional lpips package is not installed (pip install lpips)")
    real_lpips = lpips.LPIPS
    monkeypatch.setattr(lpips, "LPIPS", lambda **kw: real_lpips(pnet_rand=True, **kw))
    dist = distances.lpips_distance(torch.device("cpu"))
    torch.manual_seed(0)
    a, b = torch.rand(3, 3, 128, 128) * 2 - 1, torch.rand(3, 3, 128, 128) * 2 - 1
    d = dist(a, b)
    assert d.shape == (3,) and (d > 0).all()
    assert dist(a, a).abs().max().item() < 1e-6
    monkeypatch.setattr(distances, "lpips_distance", lambda device: dist)
    before, after, losses = _one_step(["--recon", "lpips"])
    assert torch.isfinite(losses["recon"]) and losses["recon"] > 0


# -- 12. The EMA generator (§4; ema.py) --

def test_ema_decay_ramps_up_to_the_long_run_decay():
    """The average's half-life is at most 5% of the iterations so far (StyleGAN2-ADA's ramp-up): at the
    first iteration the decay is 0.5 ** 20, it grows with t, and reaches --ema (0.999: a half-life of
    692.8 iterations) at the first t with 0.05 t >= 692.8. What is left
    of the initialisation after t iterations (the product of the decays) is below 1e-6 at every t."""
    from ema import ema_decay
    assert ema_decay(1, 0.999) == 0.5 ** 20
    decays = [ema_decay(t, 0.999) for t in range(1, 20001)]
    assert all(a <= b for a, b in zip(decays, decays[1:]))
    half_life = math.log(0.5) / math.log(0.999)
    t_full = math.ceil(half_life / 0.05)
    assert decays[t_full - 2] < 0.999 and decays[t_full - 1] == pytest.approx(0.999, abs=1e-12)
    assert max(decays) == pytest.approx(0.999, abs=1e-12)
    left = np.cumsum(np.log([d for d in decays]))
    assert np.exp(left).max() < 1e-6
    assert ema_decay(600, 0.999) == pytest.approx(0.5 ** (1 / 30))     # half-life 30 at 600 iterations
    assert ema_decay(5, 0.0) == 0.0                                    # --ema 0: the EMA is G


def test_ema_update_averages_weights_copies_sn_vectors_and_leaves_bn_statistics():
    """EMA.update(t): G_ema's parameters move to lerp(G_ema, G, 1 - decay(t)); spectral norm's power
    iteration vectors are copied from G; BatchNorm running statistics are not touched (they are
    recomputed from the EMA generator's own samples instead)."""
    from ema import EMA, ema_decay
    torch.manual_seed(0)
    G = Generator(ngf=8, nz=NZ, im_size=128)
    G_ema = copy.deepcopy(G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
        for name, b in G.named_buffers():
            if name.endswith(("running_mean", "_u")):
                b.add_(0.5)
    ema_before = {k: v.clone() for k, v in G_ema.state_dict().items()}
    ema = EMA(G_ema, G, decay=0.999)
    ema.update(700)
    w = 1 - ema_decay(700, 0.999)
    for (name, pe), p in zip(G_ema.named_parameters(), G.parameters()):
        torch.testing.assert_close(pe, ema_before[name] + w * (p - ema_before[name]), rtol=0, atol=1e-6)
    buffers_G = dict(G.named_buffers())
    for name, b in G_ema.named_buffers():
        if name.endswith("_u"):
            assert torch.equal(b, buffers_G[name])
        elif name.endswith("running_mean"):
            assert torch.equal(b, ema_before[name]) and not torch.equal(b, buffers_G[name])


def test_batchnorm_statistics_recomputed_from_the_generators_own_samples():
    """recompute_batchnorm_statistics sets each BatchNorm's running mean/var to the average over its
    batches of the batch statistics the layer sees in training mode (checked by hand for the first
    BatchNorm, the one after G's input layer); it is deterministic, leaves the global RNG and spectral
    norm's vectors alone, and returns G in eval mode."""
    from ema import recompute_batchnorm_statistics
    torch.manual_seed(0)
    G = Generator(ngf=8, nz=NZ, im_size=128)
    sn = {k: v.clone() for k, v in G.state_dict().items() if k.endswith(("_u", "_v"))}
    rng = torch.get_rng_state()
    recompute_batchnorm_statistics(G, batch_size=4, batches=3, seed=7)
    assert torch.equal(torch.get_rng_state(), rng) and not G.training
    assert all(torch.equal(G.state_dict()[k], v) for k, v in sn.items())
    first = copy.deepcopy(G.state_dict())
    recompute_batchnorm_statistics(G, batch_size=4, batches=3, seed=7)
    assert all(torch.equal(first[k], v) for k, v in G.state_dict().items())

    g = torch.Generator().manual_seed(7)
    means, variances = [], []
    with torch.no_grad():
        for _ in range(3):
            z = torch.randn(4, NZ, generator=g)
            G.draw_noise(4, generator=g)                                 # drawn in the same order
            x = G.init[0](z.view(4, -1, 1, 1))                           # (4, 2*f4, 4, 4) before the BN
            means.append(x.mean(dim=(0, 2, 3)))
            variances.append(x.var(dim=(0, 2, 3), unbiased=True))
    bn = G.init[1]
    torch.testing.assert_close(bn.running_mean, torch.stack(means).mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(bn.running_var, torch.stack(variances).mean(0), rtol=1e-5, atol=1e-6)
