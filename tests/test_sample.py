"""Tests of sample.py: drawing images from a checkpoint, and the paper's §4.2 looks at a generator
(truncation, interpolation, style mixing, the nearest training image, back-tracking).

    python -m pytest -q tests/test_sample.py

All tests read one tiny checkpoint written by train.py's own save code (the `module_ckpt` fixture).
"""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image

from plumbing import checkpoint
import sample
import train
from tests.helpers import build_nets, torch_threads
from discriminator import resize_to_128
from generator import NoiseInjection
from plumbing.images import to_uint8


LATENT = 32
SIZE = 128
PAD = 2  # save_grid's padding between cells


@pytest.fixture(scope="module")
def module_ckpt(tmp_path_factory):
    """A checkpoint of a tiny G that is not at its initialisation: BatchNorm running statistics
    settled by a few train-mode batches (as after training; fresh ones are mean 0 / var 1), noise
    strengths 0.1 instead of 0 (so the injected noise matters), and a raw G that differs from G_ema."""
    root = tmp_path_factory.mktemp("sample_ckpt")
    with torch_threads(1):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            G, D = build_nets(SIZE, 8, 8, LATENT)
            bns = [m for m in G.modules() if isinstance(m, nn.BatchNorm2d)]
            for bn in bns:
                bn.reset_running_stats()
                bn.momentum = None  # cumulative average of the batches below
            G.train()
            with torch.no_grad():
                for _ in range(3):
                    G(torch.randn(8, LATENT))
                for bn in bns:
                    bn.momentum = 0.1
                for m in G.modules():
                    if isinstance(m, NoiseInjection):
                        m.weight.fill_(0.1)
                G_ema = copy.deepcopy(G)
                for p in G.parameters():  # the trained G: a little away from its average
                    p.add_(0.01 * torch.randn_like(p))
        opt_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        opt_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
        args = train.parse_args(["--path", str(root), "--im_size", str(SIZE), "--ngf", "8", "--ndf", "8",
                                 "--nz", str(LATENT)])
        path = root / "latest.pt"
        checkpoint.save_checkpoint(path, checkpoint.checkpoint_state(G, D, G_ema, opt_G, opt_D, 0, args))
    return path


@pytest.fixture
def tiny_ckpt(module_ckpt):
    """The checkpoint's path, with torch on one thread during the test: these networks are tiny, and
    two threads on a busy 2-core machine spin-wait for each other (a forward is then ~30x slower)."""
    with torch_threads(1):
        yield module_ckpt


def run_sample(ckpt, out, *flags):
    sample.main(["--ckpt", str(ckpt), "--out", str(out), "--device", "cpu", *map(str, flags)])


def read_png(path):
    return np.asarray(Image.open(path).convert("RGB"))  # (H, W, 3) uint8


def cell_of(grid, row, col, size=SIZE):
    """Cell (row, col) of a save_grid picture, (size, size, 3)."""
    y, x = PAD + row * (size + PAD), PAD + col * (size + PAD)
    return grid[y:y + size, x:x + size]


def grid_shape(rows, cols, size=SIZE):
    return (rows * (size + PAD) + PAD, cols * (size + PAD) + PAD, 3)


def uint8_hwc(images):
    """float (B, 3, H, W) in [-1, 1] -> uint8 (B, H, W, 3), as the PNGs store them."""
    return to_uint8(images).permute(0, 2, 3, 1).numpy()


def numbered(folder):
    return sorted(p.name for p in Path(folder).glob("[0-9]*.png"))


# -- --n, --seed, --grid, --raw --

def test_writes_n_images_reproducibly(tiny_ckpt, tmp_path, capsys):
    run_sample(tiny_ckpt, tmp_path / "a", "--n", 5, "--seed", 3, "--batch_size", 2, "--grid")
    run_sample(tiny_ckpt, tmp_path / "b", "--n", 5, "--seed", 3)      # another batch size
    run_sample(tiny_ckpt, tmp_path / "c", "--n", 5, "--seed", 4)
    names = [f"{i:06d}.png" for i in range(5)]
    assert numbered(tmp_path / "a") == names
    for name in names:
        a = read_png(tmp_path / "a" / name)
        assert a.shape == (SIZE, SIZE, 3)
        assert a.std() > 5, "a flat image: the generator fixture is degenerate"
        # Same seed: the same image, whatever the batch size (eval-mode BatchNorm). Another seed: another.
        assert np.abs(a.astype(int) - read_png(tmp_path / "b" / name)).max() <= 1
        assert np.abs(a.astype(float) - read_png(tmp_path / "c" / name)).mean() > 2
    assert (tmp_path / "a" / "000000.png").read_bytes() != (tmp_path / "a" / "000001.png").read_bytes()
    # Bit-identical files for an identical command.
    run_sample(tiny_ckpt, tmp_path / "d", "--n", 5, "--seed", 3, "--batch_size", 2)
    assert all((tmp_path / "a" / n).read_bytes() == (tmp_path / "d" / n).read_bytes() for n in names)
    # The grid holds the 5 images, 3 per row.
    grid = read_png(tmp_path / "a" / "grid.png")
    assert grid.shape == grid_shape(2, 3)
    assert np.array_equal(cell_of(grid, 1, 1), read_png(tmp_path / "a" / "000004.png"))
    assert "wrote 5 images" in capsys.readouterr().out


def test_loads_ema_by_default_and_raw_on_request(tiny_ckpt):
    state = checkpoint.load_checkpoint(tiny_ckpt)
    G_ema = sample.load_generator(tiny_ckpt, raw=False, device="cpu", log=lambda *a: None)
    G_raw = sample.load_generator(tiny_ckpt, raw=True, device="cpu", log=lambda *a: None)
    assert not G_ema.training and not G_raw.training
    assert not any(p.requires_grad for p in G_ema.parameters())
    for name, t in G_ema.state_dict().items():
        assert torch.equal(t, state["G_ema"][name]), name
    for name, t in G_raw.state_dict().items():
        assert torch.equal(t, state["G"][name]), name
    z, noise = sample.draw_inputs(G_ema, 2, seed=0)
    assert (sample.generate(G_ema, z, noise) - sample.generate(G_raw, z, noise)).abs().max() > 1e-2


# -- truncation --

def test_truncated_normal_bounds_and_keeps_inliers():
    g = torch.Generator().manual_seed(0)
    z = sample.truncated_normal((64, LATENT), 0.5, g)
    assert z.shape == (64, LATENT) and z.abs().max() <= 0.5
    assert z.std() > 0.2, "resampled entries should spread over [-psi, psi], not collapse to 0"
    assert (z.abs() == 0.5).float().mean() < 0.01, "entries are redrawn, not clamped to +-psi"
    with pytest.raises(ValueError):
        sample.truncate(z, 0.0, g)
    assert torch.equal(sample.truncated_normal((3, 4), None, torch.Generator().manual_seed(1)),
                       torch.randn((3, 4), generator=torch.Generator().manual_seed(1)))
    base = torch.randn(16, LATENT, generator=g)
    t = sample.truncate(base, 1.0, g)
    inside = base.abs() <= 1.0
    assert t.abs().max() <= 1.0
    assert torch.equal(t[inside], base[inside]), "entries already within psi must keep their value"
    assert not torch.equal(t[~inside], base[~inside])


def test_truncation_bounds_latents_and_lowers_spread(tiny_ckpt, tmp_path):
    G = sample.load_generator(tiny_ckpt, device="cpu", log=lambda *a: None)
    for psi in (0.2, 0.7):
        z, _ = sample.draw_inputs(G, 8, seed=0, psi=psi)
        assert z.abs().max() <= psi
    run_sample(tiny_ckpt, tmp_path / "wide", "--n", 8, "--truncation", 2.0)
    run_sample(tiny_ckpt, tmp_path / "narrow", "--n", 8, "--truncation", 0.2)
    spread = {}
    for name in ("wide", "narrow"):
        imgs = np.stack([read_png(tmp_path / name / f"{i:06d}.png") for i in range(8)]).astype(float)
        # The images' coarse content (means of 8x8 blocks: (8, 16, 16, 3)), where the injected noise,
        # the same for both runs but pixel-fine, mostly averages out; then the std across the 8 samples.
        coarse = imgs.reshape(8, 16, 8, 16, 8, 3).mean(axis=(2, 4))
        spread[name] = coarse.std(axis=0).mean()
    assert spread["narrow"] < 0.7 * spread["wide"], spread


def test_truncation_strip(tiny_ckpt, tmp_path):
    run_sample(tiny_ckpt, tmp_path / "s", "--n", 3, "--truncation_strip")
    strip = read_png(tmp_path / "s" / "truncation_strip.png")
    assert strip.shape == grid_shape(len(sample.STRIP_PSIS), 3)
    # Row PSI = 0.7 is exactly what --truncation 0.7 writes for the same seed and N.
    run_sample(tiny_ckpt, tmp_path / "t", "--n", 3, "--truncation", 0.7)
    row = sample.STRIP_PSIS.index(0.7)
    for c in range(3):
        assert np.array_equal(cell_of(strip, row, c), read_png(tmp_path / "t" / f"{c:06d}.png"))
    # Rows differ: truncation changed the latents of the same seed.
    first, last = cell_of(strip, 0, 0).astype(float), cell_of(strip, len(sample.STRIP_PSIS) - 1, 0)
    assert np.abs(first - last).mean() > 0.5


# -- interpolation --

def test_slerp():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(2, LATENT, generator=g)
    assert torch.equal(sample.slerp(a, b, 0.0), a)
    assert torch.allclose(sample.slerp(a, b, 1.0), b, atol=1e-5)
    # On the arc: two orthogonal latents of equal norm keep that norm half-way (a line would shrink it).
    u, v = torch.zeros(LATENT), torch.zeros(LATENT)
    u[0], v[1] = 3.0, 3.0
    mid = sample.slerp(u, v, 0.5)
    assert torch.allclose(mid.norm(), torch.tensor(3.0))
    assert torch.allclose(mid[:2], torch.tensor([3 / 2 ** 0.5, 3 / 2 ** 0.5]))
    # Parallel vectors: no division by sin(0); the result is the straight line.
    assert torch.allclose(sample.slerp(a, 2 * a, 0.5), 1.5 * a)
    assert torch.isfinite(sample.slerp(a, a, 0.3)).all()


def test_interpolation_end_frames_and_files(tiny_ckpt, tmp_path):
    G = sample.load_generator(tiny_ckpt, device="cpu", log=lambda *a: None)
    keys, noise = sample.draw_inputs(G, 3, seed=1)
    noise1 = sample.slice_noise(noise, 0, 1)
    # batch_size 1 here and below: conv kernels may round differently for different batch sizes
    # (~1e-5), which is not what this test is about (the CLI part below checks batched frames).
    frames, zs = sample.interpolate(G, keys, noise1, frames_per_pair=4, batch_size=1)
    assert frames.shape == (2 * 4 + 1, 3, SIZE, SIZE) and zs.shape == (9, LATENT)
    assert torch.equal(zs[0], keys[0]) and torch.equal(zs[4], keys[1]) and torch.equal(zs[-1], keys[2])
    for f, k in ((0, 0), (4, 1), (8, 2)):
        plain = sample.generate(G, keys[k:k + 1], noise1, batch_size=1)
        assert (frames[f] - plain[0]).abs().max() < 1e-6
    # In-between frames move: consecutive frames differ.
    assert min((frames[i + 1] - frames[i]).abs().mean() for i in range(8)) > 1e-4

    # CLI: N = 3 keys, 2 frames per pair -> 5 frames; the walk starts at sample 0 (same latent and noise).
    run_sample(tiny_ckpt, tmp_path, "--n", 3, "--interpolate", 2)
    assert numbered(tmp_path / "interp") == [f"{i:06d}.png" for i in range(5)]
    first = read_png(tmp_path / "interp" / "000000.png").astype(int)
    assert np.abs(first - read_png(tmp_path / "000000.png")).max() <= 1
    with Image.open(tmp_path / "interp.gif") as gif:
        assert gif.n_frames == 5 and gif.size == (SIZE, SIZE)
    # --n 1 still walks between two latents.
    run_sample(tiny_ckpt, tmp_path / "one", "--n", 1, "--interpolate", 3)
    assert len(numbered(tmp_path / "one" / "interp")) == 4


# -- style mixing --

def test_style_mix_grid_layout(tiny_ckpt, tmp_path):
    run_sample(tiny_ckpt, tmp_path, "--n", 3, "--style_mix", "--seed", 2)
    grid = read_png(tmp_path / "style_mix.png")
    k = 3
    assert grid.shape == grid_shape(k + 1, k + 1)
    assert (cell_of(grid, 0, 0) == 255).all(), "the top-left cell is blank"
    # Recompute with the functions: content latents z[:k], style latents z[k:], the noise of the first.
    G = sample.load_generator(tiny_ckpt, device="cpu", log=lambda *a: None)
    z, noise = sample.draw_inputs(G, 2 * k, seed=2)
    noise1 = sample.slice_noise(noise, 0, 1)
    style = uint8_hwc(sample.generate(G, z[k:], sample.shared_noise(noise1, k)))
    content = uint8_hwc(sample.generate(G, z[:k], sample.shared_noise(noise1, k)))
    for j in range(k):
        assert np.abs(cell_of(grid, 0, j + 1).astype(int) - style[j]).max() <= 1, f"top row, column {j}"
    for i in range(k):
        assert np.abs(cell_of(grid, i + 1, 0).astype(int) - content[i]).max() <= 1, f"left column, row {i}"
    # Inner cells combine their parents: unlike either, and (content = the high-resolution path, which
    # the gates only rescale) nearer to the row's content sample than to the column's style sample.
    for i in range(k):
        for j in range(k):
            cell = cell_of(grid, i + 1, j + 1).astype(float)
            d_content = np.abs(cell - content[i]).mean()
            d_style = np.abs(cell - style[j]).mean()
            assert d_content > 0.2 and d_style > 0.2, (i, j, d_content, d_style)
            assert d_content < d_style, (i, j, d_content, d_style)


def test_style_mix_function_in_float(tiny_ckpt):
    G = sample.load_generator(tiny_ckpt, device="cpu", log=lambda *a: None)
    z, noise = sample.draw_inputs(G, 4, seed=5)
    noise1 = sample.slice_noise(noise, 0, 1)
    # batch_size 1 throughout: same kernels, so equal cells are equal to float precision.
    cells = sample.style_mix_grid(G, z[:2], z[2:], noise1, batch_size=1)      # 3 x 3 cells
    assert cells.shape == (9, 3, SIZE, SIZE)
    plain = sample.generate(G, z, sample.shared_noise(noise1, 4), batch_size=1)   # G(z_1), G(z_2), G(w_1), G(w_2)
    assert (cells[1] - plain[2]).abs().max() < 1e-6 and (cells[2] - plain[3]).abs().max() < 1e-6
    assert (cells[3] - plain[0]).abs().max() < 1e-6 and (cells[6] - plain[1]).abs().max() < 1e-6
    mixed = sample.generate(G, z[1:2], sample.shared_noise(noise1, 1), batch_size=1, z_style=z[2:3])
    assert (cells[7] - mixed[0]).abs().max() < 1e-6                              # row z_2, column w_1
    assert (cells[7] - plain[1]).abs().mean() > 1e-3 and (cells[7] - plain[2]).abs().mean() > 1e-3


# -- nearest training image --

def test_nearest_function_sorted_and_exact():
    g = torch.Generator().manual_seed(0)
    refs = torch.randint(0, 256, (7, 48), generator=g, dtype=torch.uint8)
    queries = torch.cat([refs[4:5], torch.randint(0, 256, (2, 48), generator=g, dtype=torch.uint8)])
    d, idx = sample.nearest(queries, refs, k=7, chunk=3)
    assert d.shape == idx.shape == (3, 7)
    assert (d >= 0).all() and (d[:, 1:] >= d[:, :-1]).all(), "distances must be sorted, nearest first"
    assert int(idx[0, 0]) == 4 and float(d[0, 0]) == 0.0
    brute = ((queries.float()[:, None] / 127.5 - refs.float()[None] / 127.5) ** 2).mean(-1)   # (3, 7)
    assert torch.allclose(d, brute.gather(1, idx), atol=1e-6)
    assert torch.allclose(d[:, 0], brute.min(1).values, atol=1e-6)


def test_nearest_finds_a_planted_copy(tiny_ckpt, tmp_path):
    run_sample(tiny_ckpt, tmp_path / "first", "--n", 3)
    data = tmp_path / "data"
    (data / "sub").mkdir(parents=True)
    (data / "copy.png").write_bytes((tmp_path / "first" / "000001.png").read_bytes())
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (90, 70, 3), dtype=np.uint8)).save(data / "sub" / "noise.png")
    Image.new("RGB", (50, 50), (128, 128, 128)).save(data / "sub" / "grey.jpg")
    (data / "notes.txt").write_text("not an image")

    run_sample(tiny_ckpt, tmp_path / "out", "--n", 3, "--nearest", data)
    report = json.loads((tmp_path / "out" / "nearest.json").read_text())
    rows = report["samples"]
    assert [r["sample"] for r in rows] == ["000000.png", "000001.png", "000002.png"]
    assert rows[1]["nearest"] == "copy.png" and rows[1]["distance"] < 1e-9
    assert all(r["distance"] >= 0 for r in rows)
    assert all(r["nearest"] in ("copy.png", "sub/noise.png", "sub/grey.jpg") for r in rows)
    assert rows[0]["distance"] > 1e-3 and rows[2]["distance"] > 1e-3
    pairs = read_png(tmp_path / "out" / "nearest.png")
    assert pairs.shape == grid_shape(3, 2)
    assert np.array_equal(cell_of(pairs, 1, 1), read_png(data / "copy.png"))
    assert np.array_equal(cell_of(pairs, 2, 0), read_png(tmp_path / "out" / "000002.png"))


# -- back-tracking --

def test_invert_lowers_the_error(tiny_ckpt):
    G = sample.load_generator(tiny_ckpt, device="cpu", log=lambda *a: None)
    # The target is G's own image for a latent the optimiser does not start from, with the noise the
    # inversion will use (that of draw_inputs(G, 1, seed)): a perfect reconstruction exists.
    _, noise = sample.draw_inputs(G, 1, seed=1)
    z_true = torch.randn(1, LATENT, generator=torch.Generator().manual_seed(99))
    target = sample.generate(G, z_true, noise)
    z, recon, losses = sample.invert(G, target, steps=30, lr=0.1, generator=torch.Generator().manual_seed(1))
    assert z.shape == (1, LATENT) and recon.shape == target.shape and len(losses) == 31
    # 30 steps take the error to 0.78 of the start on this checkpoint (the same under every CPU kernel
    # setting: nothing here is trained); 0.9 leaves room for a fork's other G (an attention block).
    assert losses[-1] < 0.9 * losses[0], losses
    # The reported errors are the real ones: of the starting latent (draw_inputs' z) and of the result.
    z0, _ = sample.draw_inputs(G, 1, seed=1)
    with torch.no_grad():
        for zz, reported in ((z0, losses[0]), (z, losses[-1])):
            img, img_128 = G(zz, noise=noise)
            err = F.mse_loss(img, target) + F.mse_loss(img_128, resize_to_128(target))
            assert abs(err.item() - reported) < 1e-5 * max(1.0, reported)
    assert torch.allclose(recon, G(z, noise=noise)[0])
    assert sum(b < a for a, b in zip(losses, losses[1:])) > 0.8 * 30, "the error should fall step after step"
    assert not any(p.requires_grad for p in G.parameters()) and all(p.grad is None for p in G.parameters())


def test_invert_cli_writes_its_files(tiny_ckpt, tmp_path, capsys):
    target = tmp_path / "photo.jpg"
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(target)
    run_sample(tiny_ckpt, tmp_path / "out", "--n", 1, "--invert", target, "--invert_steps", 4, "--seed", 6)
    out = tmp_path / "out"
    assert read_png(out / "invert_target.png").shape == (SIZE, SIZE, 3)
    z = torch.load(out / "invert_latent.pt", weights_only=True)
    assert isinstance(z, torch.Tensor) and z.shape == (1, LATENT)
    # The saved latent, with the noise of the same seed, regenerates the saved reconstruction.
    G = sample.load_generator(tiny_ckpt, device="cpu", log=lambda *a: None)
    _, noise = sample.draw_inputs(G, 1, seed=6)
    again = uint8_hwc(sample.generate(G, z, noise))[0]
    assert np.abs(again.astype(int) - read_png(out / "invert_recon.png")).max() <= 1
    assert "inversion: error" in capsys.readouterr().out


# -- refused input: exit 2, one line on stderr, no traceback, nothing written --

@pytest.mark.slow
def test_refuses_a_foreign_checkpoint_from_the_command_line(tmp_path):
    """The real entry point (`python sample.py ...`): a torch file that is not one of our checkpoints.
    (One subprocess only: starting Python and importing torch is most of this file's run time.)"""
    not_ours = tmp_path / "weights.pt"
    torch.save({"G": torch.zeros(3)}, not_ours)
    r = subprocess.run([sys.executable, "sample.py", "--ckpt", str(not_ours), "--out", str(tmp_path / "out")],
                       cwd=Path(__file__).resolve().parents[1], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sample.py: error: ") and str(not_ours) in lines[0], r.stderr
    assert "not a checkpoint written by this project" in lines[0]
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("case", ["missing_ckpt", "garbage_ckpt", "n_zero", "n_negative", "psi_zero", "psi_negative",
                                  "psi_nan", "interp_zero", "nearest_empty", "nearest_missing",
                                  "invert_not_image", "invert_missing", "bad_int"])
def test_refuses_bad_input(tiny_ckpt, tmp_path, capsys, case):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("no images here")
    (tmp_path / "fake.png").write_text("not really a png")
    (tmp_path / "garbage.pt").write_bytes(b"\x00\x01 not a zip file")
    ckpt = {"missing_ckpt": tmp_path / "missing.pt", "garbage_ckpt": tmp_path / "garbage.pt"}.get(case, tiny_ckpt)
    flags, expected = {
        "missing_ckpt": ([], "no such checkpoint file"),
        "garbage_ckpt": ([], "not a readable FastGAN checkpoint"),
        "n_zero": (["--n", "0"], "--n must be a positive integer"),
        "n_negative": (["--n", "-3"], "--n must be a positive integer"),
        "psi_zero": (["--truncation", "0"], "--truncation"),
        "psi_negative": (["--truncation", "-0.5"], "--truncation"),
        "psi_nan": (["--truncation", "nan"], "--truncation"),
        "interp_zero": (["--interpolate", "0"], "--interpolate"),
        "nearest_empty": (["--nearest", str(tmp_path / "empty")], "no readable images"),
        "nearest_missing": (["--nearest", str(tmp_path / "nowhere")], "no such folder"),
        "invert_not_image": (["--invert", str(tmp_path / "fake.png")], "not a readable image"),
        "invert_missing": (["--invert", str(tmp_path / "nowhere.png")], "no such file"),
        "bad_int": (["--n", "many"], "invalid int value"),
    }[case]
    with pytest.raises(SystemExit) as e:
        run_sample(ckpt, tmp_path / "out", *flags)
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sample.py: error: ") and expected in lines[0], err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists(), "nothing may be written for refused input"
