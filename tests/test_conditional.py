"""Tests of conditional.py and of everything that carries classes: BigGAN's class-conditional
BatchNorm in G, Miyato & Koyama's projection in D, orthogonal regularisation (--ortho), class
folders (images.py), train.py with --classes (resume, torchrun, ablation flags, grids), sample.py's
--class and the EMA generator's recomputed statistics.

    python -m pytest -q tests/test_conditional.py

Self-contained: the images are made here (saturated red and blue ones), no other test file is read.
The slowest test trains for real (128x128, widths 8, 120 iterations, 40-80 s on a 2-core
CPU) and checks that each class's samples have its colour; its networks and checkpoint are shared.
"""

import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn as nn
from PIL import Image

from plumbing import checkpoint, distances
import conditional
import sample
import train
from plumbing.cli import UsageError
from ema import recompute_batchnorm_statistics
from generator import sn_conv2d
from plumbing.images import class_folders, training_data
from plumbing.speed import StepContext
from tests.helpers import PROJECT, make_images, run_train, torchrun

RED, BLUE = (255, 0, 0), (0, 0, 255)
SMALL = ["--im_size", "128", "--ngf", "8", "--ndf", "8", "--device", "cpu"]


def coloured(colour):
    """make_images' arguments for one class: 32x32 images of one saturated colour, each with a darker
    disc of the same hue at a random place."""
    return dict(size=32, background=lambda i, rng: colour, disc=lambda i, rng: (np.array(colour) * 0.6).astype(np.uint8))


def make_red_blue(root, n_red=6, n_blue=6):
    """root/blue/*.png and root/red/*.png: class 0 is blue, class 1 red (sorted names)."""
    make_images(root / "blue", n_blue, seed=1, **coloured(BLUE))
    make_images(root / "red", n_red, seed=2, **coloured(RED))
    return root


def nets_args(im_size=128, ngf=8, ndf=8):
    return argparse.Namespace(im_size=im_size, ngf=ngf, ndf=ndf, nz=256, no_sle=False, no_recon=False,
                              policy="color,translation", recon_weight=1.0)


def count(net):
    return sum(p.numel() for p in net.parameters())


def mean_colour(folder):
    """Mean (R, G, B) in 0..255 over the samples 000000.png, ... directly in `folder`."""
    arrays = [np.asarray(Image.open(p).convert("RGB"), dtype=np.float64) for p in sorted(folder.glob("0*.png"))]
    return np.stack(arrays).mean(axis=(0, 1, 2))


# ------------------------------------------------------------------------------------------------
# The red/blue run: trains for real, shared by several tests
# ------------------------------------------------------------------------------------------------

RED_BLUE_ITERS = 120


def train_red_blue(root):
    """train.py --classes on red and blue images, then sample.py --class all --grid: (train's stdout,
    {class: mean colour of its 8 samples}, the run folder, the samples folder)."""
    data = make_red_blue(root / "data")
    code, out, err = run_train(["--path", str(data), "--out", str(root / "runs"), "--classes",
                                           "--iter", str(RED_BLUE_ITERS), "--batch_size", "4", "--ema", "0.99",
                                           "--log_every", "20", "--save_every", "1000", "--sample_every", "60",
                                           *SMALL])
    assert code == 0, err
    run = root / "runs" / "data"
    code, _, err = run_train(main=sample.main, argv=["--ckpt", str(run / "checkpoints" / "latest.pt"), "--out",
                                          str(root / "samples"), "--class", "all", "--grid", "--n", "8",
                                          "--device", "cpu"])
    assert code == 0, err
    means = {c: mean_colour(root / "samples" / c) for c in ("blue", "red")}
    return out, means, run, root / "samples"


def assert_each_class_has_its_colour(means):
    """Red samples are red and not blue, blue samples blue and not red: wide margins on 0..255."""
    red, blue = means["red"], means["blue"]
    assert red[0] - red[2] > 100, f"class red's samples are not red: mean RGB {red.round(1)}"
    assert blue[2] - blue[0] > 100, f"class blue's samples are not blue: mean RGB {blue.round(1)}"
    assert red[0] - blue[0] > 100 and blue[2] - red[2] > 100, f"classes alike: red {red.round(1)}, blue {blue.round(1)}"


@pytest.fixture(scope="module")
def red_blue(tmp_path_factory):
    return train_red_blue(tmp_path_factory.mktemp("red_blue"))


@pytest.mark.slow
def test_each_class_samples_its_colour(red_blue):
    """After 120 iterations on saturated red and blue images, the EMA generator's samples of class red
    are red and those of class blue are blue (mean colour of 8 samples per class, from sample.py).
    The same check fails when the classes are ignored (docs/measurements.md, 'Classes': the class
    input replaced by zeros)."""
    _, means, _, samples = red_blue
    print({c: m.round(1).tolist() for c, m in means.items()})
    assert_each_class_has_its_colour(means)
    # sample.py --class all --grid: one row per class (blue, red), 8 columns of 128 px + 2 px gaps.
    with Image.open(samples / "grid.png") as im:
        assert im.size == (8 * 130 + 2, 2 * 130 + 2)
    for c in ("blue", "red"):
        assert sorted(p.name for p in (samples / c).glob("*.png"))[:2] == ["000000.png", "000001.png"]


@pytest.mark.slow
def test_training_grids_have_one_row_per_class(red_blue):
    """images/NNNNNN_samples.png: 4 samples per row, one row per class; the checkpoint and args.json
    keep the class names (sorted subfolder names)."""
    _, _, run, _ = red_blue
    with Image.open(run / "images" / f"{RED_BLUE_ITERS:06d}_samples.png") as im:
        assert im.size == (4 * 130 + 2, 2 * 130 + 2)
        rows = np.asarray(im.convert("RGB"), dtype=np.float64)
    top, bottom = rows[2:130].mean(axis=(0, 1)), rows[132:260].mean(axis=(0, 1))
    assert top[2] > top[0] + 100 and bottom[0] > bottom[2] + 100       # row 0: blue, row 1: red
    assert json.loads((run / "args.json").read_text())["class_names"] == ["blue", "red"]
    st = checkpoint.load_checkpoint(run / "checkpoints" / "latest.pt")
    assert st["args"]["class_names"] == ["blue", "red"] and "class_embedding.embed.weight" in st["G_ema"]



def test_class_grid_is_drawn_in_chunks_with_each_samples_class(tmp_path):
    """monitor.save_samples draws the grid `chunk` samples at a time (a grid of many classes needs no
    more memory than 16 samples), each with its own class and latent: the same grid as in one batch."""
    from plumbing.monitor import fixed_inputs, save_samples
    G, D = train.build_networks(argparse.Namespace(im_size=128, ngf=8, ndf=8, nz=256, no_sle=False,
                                                   no_recon=True), ["a", "b", "c"])
    G.eval()
    n, y = conditional.grid_labels(["a", "b", "c"], "cpu")                  # 12 samples: 4 per class
    fixed, shapes = fixed_inputs(G, n, 0, "cpu"), []
    G_watched = lambda z, noise, y: (shapes.append(len(z)), G(z, noise=noise, y=y))[1]
    for chunk, folder in ((5, tmp_path / "chunks"), (16, tmp_path / "whole")):
        save_samples(G_watched, D, fixed, None, 0, folder, 1, y, chunk=chunk)
    assert shapes == [5, 5, 2, 12]
    a, b = (np.asarray(Image.open(tmp_path / f / "000001_samples.png"), dtype=np.int16) for f in ("chunks", "whole"))
    assert np.abs(a - b).max() <= 1 and a.std() > 1

# ------------------------------------------------------------------------------------------------
# Parameter counts, the networks' interfaces
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("im_size,width", [(128, 8), pytest.param(1024, 64, marks=pytest.mark.slow)])
def test_conditional_parameter_counts(im_size, width):
    """Conditional G = unconditional G - each BatchNorm's gain and bias (2C) + two linear maps of the
    shared embedding per BatchNorm (2 (128 C + C)) + the embedding (K x 128). Conditional D =
    unconditional D + one class vector per class for each logit map (K x (d16 + d32))."""
    K, dim = 3, conditional.EMBED_DIM
    with torch.random.fork_rng():
        G0, D0 = train.build_networks(nets_args(im_size, width, width))
        G1, D1 = train.build_networks(nets_args(im_size, width, width), ["a", "b", "c"])
    widths = [m.num_features for m in G0.modules() if isinstance(m, nn.BatchNorm2d)]
    expected_G = count(G0) + sum(-2 * c + 2 * (dim * c + c) for c in widths) + K * dim
    expected_D = count(D0) + K * (D0.logits_big[0].in_channels + D0.logits_small.in_channels)
    assert (count(G1), count(D1)) == (expected_G, expected_D)
    assert not any(isinstance(m, nn.BatchNorm2d) for n, m in G1.named_modules() if not n.endswith(".bn"))
    print(f"{im_size}x{im_size}, widths {width}, {K} classes: G {count(G0):,} -> {count(G1):,}, "
          f"D {count(D0):,} -> {count(D1):,}")


@pytest.mark.slow
def test_train_prints_the_conditional_parameter_counts(red_blue):
    out, *_ = red_blue
    G, D = train.build_networks(nets_args(), ["blue", "red"])
    assert f"G: {count(G):,} parameters, D: {count(D):,} parameters" in out
    assert "classes: 2 (blue 6, red 6 images)" in out


def test_conditional_networks_need_and_use_the_class():
    """G refuses to run without y; a different class changes G's image and D's logits; D without y is
    its class-free part, to which the projection adds one number per image (the same on all 25 logits)."""
    torch.manual_seed(0)
    G, D = train.build_networks(nets_args(), ["a", "b"])
    G.eval(), D.eval()
    z = torch.randn(2, 256)
    noise = G.draw_noise(2)
    with pytest.raises(ValueError, match="class-conditional"):
        G(z, noise=noise)
    with torch.no_grad():
        a, _ = G(z, noise=noise, y=torch.tensor([0, 0]))
        b, _ = G(z, noise=noise, y=torch.tensor([1, 1]))
        assert (a - b).abs().max() > 1e-3
        x, x128 = a, train.resize_to_128(a)
        free = D(x, x128)
        for y in (torch.tensor([0, 0]), torch.tensor([1, 1])):
            for logits, base in zip(D(x, x128, y=y), free):
                shift = logits - base                                   # (B, 1, 5, 5)
                assert torch.allclose(shift, shift[:, :, :1, :1].expand_as(shift), atol=1e-5)


def test_conditional_batchnorm_formula():
    """BN(x) * (1 + W_gain e_y + b_gain) + (W_bias e_y + b_bias), per image, with the batch's statistics."""
    torch.manual_seed(0)
    cbn = conditional.ConditionalBatchNorm2d(4, dim=6)
    nn.init.normal_(cbn.to_gain.bias), nn.init.normal_(cbn.to_bias.bias)
    x, e = torch.randn(3, 4, 5, 5), torch.randn(3, 6)
    cbn.e = e
    want = nn.functional.batch_norm(x, None, None, training=True) * (1 + cbn.to_gain(e))[:, :, None, None] \
        + cbn.to_bias(e)[:, :, None, None]
    assert torch.allclose(cbn(x), want, atol=1e-6)


# ------------------------------------------------------------------------------------------------
# Orthogonal regularisation
# ------------------------------------------------------------------------------------------------

def _with(layer):
    return nn.Sequential(layer)


def penalty(net, beta):
    with torch.no_grad():
        return float(conditional.orthogonal_penalty(net, beta))


def test_orthogonal_penalty_zero_for_orthogonal_rows_and_grows_with_overlap():
    """R = beta ||W W^T * (1 - I)||^2: 0 for orthogonal filters whatever their norms; for two unit
    filters at angle t, 2 cos^2 t, growing as they overlap. beta = 0 computes nothing."""
    q, _ = torch.linalg.qr(torch.randn(6, 6, dtype=torch.float64))
    lin = nn.Linear(6, 4, bias=False).double()
    with torch.no_grad():
        lin.weight.copy_(q[:4] * torch.tensor([1.0, 2.0, 3.0, 0.5], dtype=torch.float64)[:, None])
    assert penalty(_with(lin), 1.0) < 1e-20
    values = []
    for deg in (90, 60, 30, 10, 0):
        t = np.radians(deg)
        two = nn.Linear(2, 2, bias=False).double()
        with torch.no_grad():
            two.weight.copy_(torch.tensor([[1.0, 0.0], [np.cos(t), np.sin(t)]]))
        values.append(penalty(_with(two), 1e-4))
        assert values[-1] == pytest.approx(1e-4 * 2 * np.cos(t) ** 2, abs=1e-18)
    assert values == sorted(values)
    assert conditional.orthogonal_penalty(_with(two), 0.0) == 0.0
    # A transposed conv is read by its output filters: weight (in, out, 1, 1) = [[1, 1], [0, 0]] has
    # orthogonal rows (inputs) but two equal output filters (1, 0) and (1, 0).
    tconv = nn.ConvTranspose2d(2, 2, 1, bias=False)
    with torch.no_grad():
        tconv.weight.copy_(torch.tensor([[1.0, 1.0], [0.0, 0.0]]).view(2, 2, 1, 1))
    assert penalty(_with(tconv), 1.0) == pytest.approx(2.0)


def test_ortho_gradient_is_the_formulas_twice_biggan_codes():
    """--ortho BETA differentiates BigGAN §3.1's R = BETA ||W W^T * (1 - I)||^2 as written: the gradient
    it adds to W is 4 BETA (W W^T * (1 - I)) W. BigGAN's released code adds 2 strength (W W^T * (1 - I)) W
    (the gradient of strength/2 * ||...||^2), so --ortho BETA is BigGAN's code at strength 2 BETA."""
    torch.manual_seed(0)
    lin = nn.Linear(5, 4, bias=False).double()
    beta = 1e-4
    conditional.orthogonal_penalty(_with(lin), beta).backward()
    with torch.no_grad():
        W = lin.weight
        off_diagonal = (W @ W.t()) * (1 - torch.eye(4, dtype=W.dtype))    # (4, 4)
        biggan_code = lambda strength: strength * 2 * off_diagonal @ W     # what its update adds
    assert off_diagonal.abs().max() > 0.01                                 # the filters overlap
    torch.testing.assert_close(lin.weight.grad, biggan_code(2 * beta), rtol=1e-12, atol=0)
    assert not torch.allclose(lin.weight.grad, biggan_code(beta))


def test_orthogonal_penalty_reads_the_normalised_weight():
    """With spectral norm the penalty sees W / sigma(W), the weight the layer computes with (as in eval
    mode), so scaling the stored weight changes nothing; reading it runs no power iteration."""
    torch.manual_seed(0)
    conv = sn_conv2d(3, 8, 3, 1, 1)
    conv(torch.randn(2, 3, 8, 8))                         # a training-mode pass: u, v as after a step
    u = conv.parametrizations.weight[0]._u.clone()
    p = penalty(_with(conv), 1.0)
    assert torch.equal(conv.parametrizations.weight[0]._u, u)
    conv.eval()
    w = conv.weight.detach().flatten(1)                      # eval mode: W / sigma with the same u, v
    gram = w @ w.t()
    assert p == pytest.approx(float((gram - torch.diag(torch.diag(gram))).square().sum()), rel=1e-5)
    with torch.no_grad():
        conv.parametrizations.weight.original.mul_(10.0)
    assert penalty(_with(conv), 1.0) == pytest.approx(p, rel=1e-5)


def test_ortho_changes_only_G_gradients():
    """One train_step with --ortho 0.01 against one without, from the same state: D's gradients (and
    weights) are identical bit for bit; G's differ exactly on its conv and linear weights (not on the
    class embedding, BatchNorm-free biases or noise strengths)."""
    grads = {}
    for beta in (0.0, 1e-2):
        torch.manual_seed(0)
        G, D = train.build_networks(nets_args(), ["a", "b"])
        opt_G, opt_D = train.make_optimizers(G, D, 2e-4, torch.device("cpu"))
        real = torch.rand(2, 3, 128, 128) * 2 - 1
        train.train_step(G, D, opt_G, opt_D, real, nets_args(), StepContext(torch.device("cpu")),
                         distances.pixel_distance("mse"), torch.tensor([0, 1]), beta)
        grads[beta] = ({n: p.grad.clone() for n, p in G.named_parameters()},
                       {n: p.grad.clone() for n, p in D.named_parameters() if p.grad is not None},
                       {n: p.detach().clone() for n, p in D.named_parameters()})
    (g0, d0, w0), (g1, d1, w1) = grads[0.0], grads[1e-2]
    assert d0.keys() == d1.keys() and all(torch.equal(d0[n], d1[n]) for n in d0)
    assert all(torch.equal(w0[n], w1[n]) for n in w0)
    changed = {n for n in g0 if not torch.equal(g0[n], g1[n])}
    matrices = {n for n in g0 if g0[n].dim() >= 2 and not n.startswith("class_embedding")}
    assert changed == matrices and len(matrices) > 20


# ------------------------------------------------------------------------------------------------
# Data: class folders, labels, refusals
# ------------------------------------------------------------------------------------------------

def _colour_labels(images):
    """Class of each uint8 or [-1, 1] image from its colour: 0 blue, 1 red."""
    x = images.float()
    return (x[:, 0].mean(dim=(1, 2)) > x[:, 2].mean(dim=(1, 2))).long()


def test_batches_carry_their_labels_in_proportion(tmp_path):
    """Unequal classes (2 blue, 6 red): every label matches its image, in memory and streamed, and
    under torchrun's slicing; batches are drawn uniformly over images, so red is ~3/4 of the labels."""
    data = make_red_blue(tmp_path / "data", n_red=6, n_blue=2)
    names = class_folders(data)
    assert names == ["blue", "red"]
    mem, reals = training_data(data, 128, 4, "cpu", classes=names, log=lambda *a: None)
    assert torch.equal(mem.labels, _colour_labels(reals))
    torch.manual_seed(0)
    seen = []
    for _ in range(200):
        x, y = mem.labelled_batch(4)
        assert torch.equal(y, _colour_labels(x))
        seen.append(y)
    share = torch.cat(seen).float().mean().item()
    assert 0.70 < share < 0.80, share
    streamed, _ = training_data(data, 128, 4, "cpu", classes=names, stream=True, workers=0, log=lambda *a: None)
    for _ in range(5):
        x, y = streamed.labelled_batch(4)
        assert torch.equal(y, _colour_labels(x))
    for rank in range(2):
        part, _ = training_data(data, 128, 2, "cpu", rank=rank, world=2, classes=names, log=lambda *a: None)
        assert torch.equal(part.labels, _colour_labels(part.images))
    unconditional, _ = training_data(data, 128, 4, "cpu", log=lambda *a: None)
    assert unconditional.labelled_batch(4)[1] is None


def test_class_folders_are_refused_in_one_line(tmp_path):
    """One class, a class with no readable image, an empty class, images outside any class: each a
    UsageError naming the folder and the fix; train.py says it in one line, exit 2."""
    one = tmp_path / "one"
    make_images(one / "red", 2, **coloured(RED))
    with pytest.raises(UsageError, match="at least two class subfolders"):
        class_folders(one)
    broken = make_red_blue(tmp_path / "broken")
    (broken / "green").mkdir()
    (broken / "green" / "x.png").write_text("not an image")
    with pytest.raises(UsageError, match=r"green: no readable image in this class.*add images to it or remove it"):
        training_data(broken, 128, 2, "cpu", classes=class_folders(broken), log=lambda *a: None)
    empty = make_red_blue(tmp_path / "empty")
    (empty / "grey").mkdir()
    loose = make_red_blue(tmp_path / "loose")
    make_images(loose, 1, **coloured(RED))                      # loose/img0.png, outside any class
    with pytest.raises(UsageError, match="outside any class"):
        class_folders(loose)
    for folder, words in ((one, "at least two"), (empty, "grey: no readable image"), (loose, "outside any class")):
        code, _, err = run_train(["--path", str(folder), "--out", str(tmp_path / "runs"),
                                             "--classes", "--iter", "1", *SMALL])
        assert code == 2 and words in err and len(err.strip().splitlines()) == 1, err
    ok = make_red_blue(tmp_path / "ok", 1, 1)
    code, _, err = run_train(["--path", str(ok), "--out", str(tmp_path / "runs"), "--classes",
                                         "--eval_every", "5", *SMALL])
    assert code == 2 and "--eval_every" in err
    code, _, err = run_train(["--path", str(one), "--ortho", "-1", *SMALL])
    assert code == 2 and "--ortho must be at least 0" in err


# ------------------------------------------------------------------------------------------------
# train.py with classes: resume, ablation flags, EMA statistics, torchrun
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_resume_with_classes_is_bit_exact(tmp_path):
    """--classes --ortho 1e-4: --iter 4 at once == --iter 2, then --iter 4 --resume latest (G, D, the
    EMA generator, Adam). Resuming without --classes is refused in one line."""
    data = make_red_blue(tmp_path / "data", n_red=3, n_blue=2)
    common = ["--path", str(data), "--classes", "--ortho", "1e-4", "--batch_size", "2", "--log_every", "1",
              "--save_every", "2", "--sample_every", "2", *SMALL]
    assert run_train([*common, "--out", str(tmp_path / "a"), "--iter", "4"])[0] == 0
    assert run_train([*common, "--out", str(tmp_path / "b"), "--iter", "2"])[0] == 0
    code, out, _ = run_train([*common, "--out", str(tmp_path / "b"), "--iter", "4", "--resume",
                                         "latest"])
    assert code == 0 and "resumed from iteration 2" in out
    a = torch.load(tmp_path / "a" / "data" / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "data" / "checkpoints" / "latest.pt", weights_only=True)
    for net in ("G", "D", "G_ema"):
        assert a[net].keys() == b[net].keys()
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    for opt in ("opt_G", "opt_D"):
        for i, s in a[opt]["state"].items():
            assert torch.equal(s["exp_avg"], b[opt]["state"][i]["exp_avg"])
    plain = [c for c in common if c not in ("--classes",)]
    code, _, err = run_train([*plain, "--out", str(tmp_path / "b"), "--iter", "6", "--resume",
                                         "latest"])
    assert code == 2 and "the classes blue, red" in err and "pass --classes" in err


@pytest.mark.slow
def test_ablation_flags_work_with_classes(tmp_path):
    """--classes with --no_sle and --no_recon (Table 2's ablations) trains and samples."""
    data = make_red_blue(tmp_path / "data", n_red=2, n_blue=2)
    code, out, err = run_train(["--path", str(data), "--out", str(tmp_path / "runs"), "--classes",
                                           "--no_sle", "--no_recon", "--iter", "2", "--batch_size", "2",
                                           "--sample_every", "2", *SMALL])
    assert code == 0, err
    st = checkpoint.load_checkpoint(tmp_path / "runs" / "data" / "checkpoints" / "latest.pt")
    assert not any(k.startswith("sle.") for k in st["G"]) and not any(k.startswith("decoder_") for k in st["D"])
    assert any(k.startswith("projection.") for k in st["D"])
    code, _, err = run_train(main=sample.main, argv=["--ckpt", str(tmp_path / "runs" / "data" / "checkpoints" / "latest.pt"),
                                          "--out", str(tmp_path / "s"), "--class", "red", "--n", "2"])
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "s" / "red").iterdir()) == ["000000.png", "000001.png"]


def test_ema_statistics_recomputed_with_uniform_classes():
    """recompute_batchnorm_statistics(..., classes=K) runs a conditional G on labels drawn from its own
    seeded generator: a function of the weights and seed alone, the run's RNG untouched."""
    torch.manual_seed(0)
    G, _ = train.build_networks(nets_args(), ["a", "b", "c"])
    state = torch.get_rng_state()
    stats = []
    for _ in range(2):
        recompute_batchnorm_statistics(G, 4, batches=2, seed=3, classes=3)
        stats.append({k: v.clone() for k, v in G.state_dict().items() if "running" in k})
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(stats[0][k], stats[1][k]) for k in stats[0])
    assert any(float((v - 1).abs().max()) > 1e-3 for k, v in stats[0].items() if k.endswith("running_var"))
    assert not G.training


_OBSERVER = '''
import os, sys
sys.path.insert(0, {project!r})
import torch
import train

rank, checks = int(os.environ["RANK"]), []
step = train.train_step

def watched(G, D, opt_G, opt_D, real, args, ctx, distance, y=None, ortho=0.0):
    colour = (real[:, 0].mean(dim=(1, 2)) > real[:, 2].mean(dim=(1, 2))).long()   # 1: red, 0: blue
    checks.append(bool(torch.equal(colour, y)))
    return step(G, D, opt_G, opt_D, real, args, ctx, distance, y, ortho)

train.train_step = watched
try:
    train.main(sys.argv[1:])
finally:
    with open({out!r} + f"/rank{{rank}}.txt", "w") as f:
        f.write(" ".join(map(str, checks)))
'''


@pytest.mark.slow
@pytest.mark.skipif(not torch.distributed.is_available(), reason="this torch build has no torch.distributed")
def test_torchrun_labels_travel_with_the_batch(tmp_path):
    """train.py --classes under torchrun --nproc_per_node=2 (gloo): in every process, at every step, each
    image's label is its class (read from its colour); the run finishes and writes a conditional checkpoint."""
    data = make_red_blue(tmp_path / "data", n_red=3, n_blue=3)
    script = tmp_path / "observer.py"
    script.write_text(_OBSERVER.format(project=str(PROJECT), out=str(tmp_path)))
    proc = torchrun(script, ["--path", data, "--out", tmp_path / "runs", "--classes", "--iter", "2",
                             "--batch_size", "4", "--sample_every", "2", *SMALL])
    assert proc.returncode == 0, proc.stderr[-3000:]
    for rank in range(2):
        assert (tmp_path / f"rank{rank}.txt").read_text().split() == ["True", "True"]
    st = checkpoint.load_checkpoint(tmp_path / "runs" / "data" / "checkpoints" / "latest.pt")
    assert st["args"]["class_names"] == ["blue", "red"] and st["iteration"] == 2


# ------------------------------------------------------------------------------------------------
# sample.py --class
# ------------------------------------------------------------------------------------------------

@pytest.mark.slow
def test_sample_modes_with_a_class(red_blue, tmp_path):
    """--class red with truncation, the truncation strip, interpolation and style mixing: every file in
    OUT/red/, every image red; --class blue the same latents, blue images."""
    _, _, run, _ = red_blue
    ckpt = str(run / "checkpoints" / "latest.pt")
    for c in ("red", "blue"):
        code, _, err = run_train(main=sample.main, argv=["--ckpt", ckpt, "--out", str(tmp_path), "--class", c, "--n", "2",
                                              "--truncation", "0.7", "--truncation_strip", "--interpolate", "2",
                                              "--style_mix", "--device", "cpu"])
        assert code == 0, err
        folder = tmp_path / c
        assert {"000000.png", "000001.png", "truncation_strip.png", "interp.gif", "style_mix.png"} <= \
            {p.name for p in folder.iterdir()}
        for picture in (folder / "truncation_strip.png", folder / "style_mix.png", folder / "interp" / "000001.png"):
            rgb = np.asarray(Image.open(picture).convert("RGB"), dtype=np.float64)
            if picture.name == "style_mix.png":
                rgb = rgb[132:, 132:]                               # the mixed cells, not the white corner
            r, b = rgb[..., 0].mean(), rgb[..., 2].mean()
            assert (r - b if c == "red" else b - r) > 60, (picture, r, b)


@pytest.mark.slow
def test_sample_refuses_wrong_classes_in_one_line(red_blue, tmp_path):
    """A class the checkpoint lacks (its classes are listed), --class on an unconditional checkpoint,
    and a conditional checkpoint without --class: one line each, exit 2, nothing written."""
    _, _, run, _ = red_blue
    ckpt = str(run / "checkpoints" / "latest.pt")
    code, _, err = run_train(main=sample.main, argv=["--ckpt", ckpt, "--out", str(tmp_path / "a"), "--class", "green"])
    assert code == 2 and "no such class" in err and "blue, red" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_train(main=sample.main, argv=["--ckpt", ckpt, "--out", str(tmp_path / "b")])
    assert code == 2 and "--class all" in err
    torch.manual_seed(0)
    G, D = train.build_networks(nets_args())
    opt_G, opt_D = train.make_optimizers(G, D, 2e-4, torch.device("cpu"))
    args = train.parse_args(["--path", "x", *SMALL])
    plain = tmp_path / "plain.pt"
    checkpoint.save_checkpoint(plain, checkpoint.checkpoint_state(G, D, G, opt_G, opt_D, 0, args))
    code, _, err = run_train(main=sample.main, argv=["--ckpt", str(plain), "--out", str(tmp_path / "c"), "--class", "red"])
    assert code == 2 and "has no classes" in err and len(err.strip().splitlines()) == 1
    assert not any((tmp_path / d).exists() for d in ("a", "b", "c"))
