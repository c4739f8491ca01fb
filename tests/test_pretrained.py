"""Tests of plumbing/pretrained.py, and of what sample.py and train.py do with it: the authors' released
files read into our networks (sample.py --ckpt), and fine-tuning from weights (train.py --init_from).

    python -m pytest -q tests/test_pretrained.py

The authors' files are small fixtures made with their own code (tests/fixtures/authors/; how they were
made: docs/pretrained.md), widths 8 and nz 16:
    256/models/10000.pth, 256/models/all_10000.pth   saved as their train.py saves its two files
    1024/models/10000.pth                             saved from nn.DataParallel (keys 'module.'...)
Beside each, expected.pt holds fixed inputs (latents z, images for D) and what their networks computed
from them, in train and in eval mode: a 32x32 lattice of each image's pixels (every im_size/32-th pixel;
every 8th of the 128x128 image), D's logits, and every 8th pixel of D's three reconstructions. Their G
drew its injected noise after torch.manual_seed(noise_seed); the same draws are replayed here into our
explicit `noise=` (`G.draw_noise` with a generator of that seed: the same shapes in the same order).
"""

import json
import pickle
import subprocess
import sys
from argparse import Namespace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import sample
import train
from discriminator import Discriminator
from plumbing import checkpoint, pretrained
from plumbing.cli import OneLineParser, given_flags
from tests.helpers import make_images, run_train, torch_threads

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "authors"
SHORT_256 = FIXTURES / "256" / "models" / "10000.pth"          # {'g': EMA weights, 'd'}
ALL_256 = FIXTURES / "256" / "models" / "all_10000.pth"        # {'g', 'd', 'g_ema', 'opt_g', 'opt_d'}
SHORT_1024 = FIXTURES / "1024" / "models" / "10000.pth"        # DataParallel: every key 'module.'...
TOLERANCE = 1e-5                                               # max abs difference from their outputs
QUIET = dict(log=lambda *a: None)
# The training flags of tests/helpers.TINY without its size and widths (they come from --init_from).
RUN = ["--batch_size", "2", "--device", "cpu", "--log_every", "1"]


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny networks on one thread (two threads on a busy 2-core machine spin-wait for each other)."""
    with torch_threads(1):
        yield


def expected(size):
    return torch.load(FIXTURES / str(size) / "expected.pt", weights_only=True)


def dataparallel_copy(path, tmp_path):
    """`path` with 'module.' before every key of 'g' and 'd', as their train.py saves with multi_gpu
    (nn.DataParallel's state_dict prefixes every key; the 1024 fixture was saved that way)."""
    state = torch.load(path, weights_only=True)
    for net in ("g", "d"):
        state[net] = {"module." + k: v for k, v in state[net].items()}
    copy = tmp_path / "dp" / path.name
    copy.parent.mkdir()
    torch.save(state, copy)
    return copy


def replayed_noise(G, e):
    """Their NoiseInjections' draws after torch.manual_seed(seed): (B, 1, r, r) twice per comp block at
    8, 32, 128 (512), the order of our G.draw_noise. The fixture kept each draw's sum and first values:
    if torch's generator ever drew otherwise, this says so instead of a puzzling mismatch."""
    noise = G.draw_noise(e["z"].shape[0], generator=torch.Generator().manual_seed(e["noise_seed"]))
    draws = [n for r in sorted(noise) for n in noise[r]]
    assert len(draws) == len(e["noise_check"])
    for n, (total, first) in zip(draws, e["noise_check"]):
        assert torch.equal(n.flatten()[:4], first) and torch.isclose(n.sum(), total), "another noise than theirs"
    return noise


def our_generator(path, ema=True):
    state = pretrained.read_weights(path)
    G = checkpoint.generator_from_checkpoint(state, ema=ema)
    return pretrained.match_their_outputs(G, state, **QUIET), state


def lattice(img, e):
    """The pixels the fixture kept: every stride-th of the full image, every 8th of the 128x128 one."""
    s = e["stride_big"]
    return img[:, :, ::s, ::s]


# -- 1. Their outputs, from our networks --

G_CASES = {"256 {iter}.pth": (SHORT_256, "short_ema", True),
           "256 all_{iter}.pth EMA": (ALL_256, "all_ema", True),
           "256 all_{iter}.pth trained G": (ALL_256, "all_raw", False),
           "256 {iter}.pth DataParallel": (SHORT_256, "short_ema", True),
           "1024 {iter}.pth DataParallel": (SHORT_1024, "short_ema", True)}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.startswith("1024") else c
                                  for c in G_CASES])   # the 1024 file: under -m slow
def test_generator_gives_their_images(case, mode, tmp_path):
    """Our G loaded from their file computes their G's two images for the same z and noise, to 1e-5:
    in train mode (BatchNorm with the batch's statistics, one power iteration per spectral norm) and in
    eval mode (the file's running statistics). At 256 their G has no tanh (values beyond +-1), at 1024 it has."""
    path, key, ema = G_CASES[case]
    if "DataParallel" in case and "256" in case:
        path = dataparallel_copy(path, tmp_path)
    e = expected(256 if "256" in case else 1024)
    G, state = our_generator(path, ema)
    assert (state["args"]["im_size"], state["args"]["ngf"], state["args"]["ndf"], state["args"]["nz"]) == \
        (e["im_size"], e["width"], e["width"], e["nz"])                 # read from the shapes alone
    G.train(mode == "train")
    with torch.no_grad():
        img, img_128 = G(e["z"], noise=replayed_noise(G, e))
    want = e[f"G_{key}_{mode}"]
    assert (lattice(img, e) - want["img"]).abs().max() <= TOLERANCE
    assert (img_128[:, :, ::e["stride_128"], ::e["stride_128"]] - want["img_128"]).abs().max() <= TOLERANCE
    assert torch.isclose(img.abs().max(), want["max_abs"], atol=TOLERANCE)
    if e["im_size"] == 256:
        assert img.abs().max() > 1.5, "their 256 G has no tanh: an imported one neither"
    else:
        assert img.abs().max() <= 1


def test_the_cases_are_told_apart():
    """The 1e-5 above separates the cases: their EMA and trained G differ by far more, and so do train
    and eval mode; all_{iter}.pth's EMA generator is exactly {iter}.pth's (their train.py saves both)."""
    e = expected(256)
    for mode in ("train", "eval"):
        assert (e[f"G_all_ema_{mode}"]["img"] - e[f"G_all_raw_{mode}"]["img"]).abs().max() > 100 * TOLERANCE
    assert (e["G_short_ema_train"]["img"] - e["G_short_ema_eval"]["img"]).abs().max() > 100 * TOLERANCE
    short, full = pretrained.read_weights(SHORT_256), pretrained.read_weights(ALL_256)
    assert short["G"] is None and full["G"] is not None
    assert short["G_ema"].keys() == full["G_ema"].keys()
    assert all(torch.equal(short["G_ema"][k], full["G_ema"][k]) for k in short["G_ema"])
    assert any(not torch.equal(full["G"][k], full["G_ema"][k]) for k in full["G"])


D_CASES = {"256 {iter}.pth": (SHORT_256, "short"), "256 all_{iter}.pth": (ALL_256, "all"),
           "1024 {iter}.pth DataParallel": (SHORT_1024, "short")}


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.startswith("1024") else c
                                  for c in D_CASES])   # the 1024 file: under -m slow
def test_discriminator_gives_their_logits(case, mode):
    """Our D loaded from their file gives their D's logits on fixed images (the full-size image and a
    128x128 one, given to both), and its decoders their reconstructions, to 1e-5, in both modes."""
    path, key = D_CASES[case]
    e = expected(256 if "256" in case else 1024)
    state = pretrained.read_weights(path)
    D = Discriminator(ndf=state["args"]["ndf"], im_size=state["args"]["im_size"])
    D.load_state_dict(state["D"])
    D.train(mode == "train")
    want = e[f"D_{key}_{mode}"]
    with torch.no_grad():
        big, small, recons = D(e["x_big"].float() / 127.5 - 1, e["x_small"].float() / 127.5 - 1, part=want["quarter"])
    assert (torch.cat([big.flatten(), small.flatten()]) - want["logits"]).abs().max() <= TOLERANCE
    for name in ("big", "small", "part"):
        assert (recons[name][:, :, ::8, ::8] - want[name]).abs().max() <= TOLERANCE, name


def test_names_translate_both_ways():
    """Every key of their G and D has one key of ours, and the inverse table gives it back."""
    for path in (ALL_256, SHORT_1024):
        raw = torch.load(path, weights_only=True)
        state = pretrained.read_weights(path)
        size = state["args"]["im_size"]
        for their_sd, ours, names in ((raw["g"], state["G_ema"], pretrained.generator_names(size)),
                                      (raw["d"], state["D"], pretrained.discriminator_names())):
            their = pretrained.without_dataparallel(their_sd)
            mapped = {pretrained.translate(k, names, pretrained.SPECTRAL_NORM) for k in their}
            assert mapped == set(ours) and len(mapped) == len(their)
            inverse, suffixes = {b: a for a, b in names.items()}, {b: a for a, b in pretrained.SPECTRAL_NORM.items()}
            assert {pretrained.translate(k, inverse, suffixes) for k in ours} == set(their)
    assert pretrained.translate("feat_8.1.weight_orig", pretrained.generator_names(256), pretrained.SPECTRAL_NORM) \
        == "up.8.conv1.parametrizations.weight.original"
    assert pretrained.translate("down_4.direct.2.running_var", pretrained.discriminator_names(), {}) \
        == "down.128.direct.2.running_var"


# -- 2. Refused files: one line, exit 2, nothing written --

def _edited(tmp_path, source, edit, name="10000.pth"):
    state = torch.load(source, weights_only=True)
    edit(state)
    path = tmp_path / "edited" / name
    path.parent.mkdir(exist_ok=True)
    torch.save(state, path)
    return path


def _without_feat_1024(state):
    state["g"] = {k: v for k, v in state["g"].items() if not k.startswith("module.feat_1024.")}


def _wider_to_big(state):
    state["g"]["to_big.weight_orig"] = torch.zeros(3, 8, 3, 3)          # their 256 G at width 8 has 4


def _short_ema_list(state):
    state["g_ema"] = state["g_ema"][:-1]


class NotATensor:       # pickled by reference: weights_only refuses to build it
    pass


REFUSALS = {
    # their 1024 file without its feat_1024 block: the rest reads as a 512 G, whose to_big is wider
    "feat_1024 absent": (lambda t: _edited(t, SHORT_1024, _without_feat_1024), [],
                         "'g'[to_big.weight_orig] is (3, 1, 3, 3) in the file, but the 512x512, ngf 8, ndf 8, "
                         "nz 16 networks that its other keys describe have (3, 2, 3, 3) there"),
    "to_big edited": (lambda t: _edited(t, SHORT_256, _wider_to_big), [],
                      "'g'[to_big.weight_orig] is (3, 8, 3, 3) in the file, but the 256x256, ngf 8, ndf 8, "
                      "nz 16 networks that its other keys describe have (3, 4, 3, 3) there"),
    "g_ema too short": (lambda t: _edited(t, ALL_256, _short_ema_list, "all_10000.pth"), [],
                        "'g_ema' should list G's"),
    "a pickle, not torch's": (lambda t: _write(t / "random.pth", pickle.dumps({"weights": [0.1, 0.2], "note": "x"}, protocol=2)),
                              [], "not a readable FastGAN checkpoint"),
    "a pickled object": (lambda t: _save(t / "object.pth", {"g": NotATensor()}), [],
                         "not a readable FastGAN checkpoint (it holds Python objects other than tensors"),
    "truncated": (lambda t: _write(t / "10000.pth", SHORT_256.read_bytes()[:len(SHORT_256.read_bytes()) // 2]), [],
                  "not a readable FastGAN checkpoint"),
    "neither format": (lambda t: _save(t / "weights.pth", {"state_dict": {"w": torch.zeros(2)}}), [],
                       "not a checkpoint written by this project's train.py, nor one of the authors' files"),
    "--raw of {iter}.pth": (lambda t: SHORT_256, ["--raw"], "holds only the EMA generator"),
}


def _write(path, data):
    path.write_bytes(data)
    return path


def _save(path, obj):
    torch.save(obj, path)
    return path


@pytest.mark.parametrize("case", list(REFUSALS))
def test_sample_refuses_in_one_line(case, tmp_path, capsys):
    make, flags, message = REFUSALS[case]
    path = make(tmp_path)
    code, out, err = run_train(["--ckpt", str(path), "--out", str(tmp_path / "out"), "--device", "cpu", "--grid",
                                *flags], capsys, main=sample.main)
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"sample.py: error: {path}: "), err
    assert message in lines[0], lines[0]
    assert not (tmp_path / "out").exists(), "nothing may be written for a refused file"


@pytest.mark.slow
def test_refusal_from_the_command_line(tmp_path):
    """`python sample.py` itself: the edited to_big, one line on stderr, exit 2, no traceback."""
    path = _edited(tmp_path, SHORT_256, _wider_to_big)
    r = subprocess.run([sys.executable, "sample.py", "--ckpt", str(path), "--out", str(tmp_path / "out"),
                        "--device", "cpu"], cwd=Path(__file__).resolve().parents[1], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == "" and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "[to_big.weight_orig] is (3, 8, 3, 3)" in r.stderr and not (tmp_path / "out").exists()


# -- 3. sample.py with their files --

@pytest.mark.slow
def test_sample_reads_their_file_in_every_mode(tmp_path, capsys):
    """Every mode runs on their {iter}.pth; what is said about their G (no tanh at 256, statistics
    recomputed) is said once, and the samples are real pictures."""
    data = make_images(tmp_path / "data", n=3)
    target = tmp_path / "data" / "img0.png"
    code, out, err = run_train(["--ckpt", str(SHORT_256), "--out", str(tmp_path / "out"), "--device", "cpu",
                                "--n", "4", "--batch_size", "4", "--grid", "--interpolate", "2", "--style_mix",
                                "--nearest", str(data), "--invert", str(target), "--invert_steps", "2"],
                               capsys, main=sample.main)
    assert code == 0, err
    o = tmp_path / "out"
    names = ["grid.png", "interp.gif", "style_mix.png", "nearest.png", "nearest.json", "invert_recon.png"]
    assert all((o / n).is_file() for n in names) and len(list((o / "interp").glob("*.png"))) == 7
    assert [p.name for p in sorted(o.glob("0*.png"))] == [f"{i:06d}.png" for i in range(4)]
    first = np.asarray(Image.open(o / "000000.png"))
    assert first.shape == (256, 256, 3) and first.std() > 5
    assert out.count("has no tanh") == 1 and out.count("BatchNorm statistics of the EMA generator recomputed") == 1
    assert "the authors' {iter}.pth" in out


@pytest.mark.slow
def test_bn_batch_samples_as_their_eval_py(tmp_path):
    """--bn batch: train mode, so a batch is their eval.py's sampling (here: their train-mode images of
    the fixture's z); --bn eval: eval mode, with statistics recomputed (not the file's)."""
    e = expected(256)
    G = sample.load_generator(SHORT_256, device="cpu", bn="batch", **QUIET)
    assert G.training
    noise = replayed_noise(G, e)
    img = sample.generate(G, e["z"], noise, batch_size=len(e["z"]))
    assert (lattice(img, e) - e["G_short_ema_train"]["img"]).abs().max() <= TOLERANCE
    G = sample.load_generator(SHORT_256, device="cpu", **QUIET)
    file = pretrained.read_weights(SHORT_256)["G_ema"]
    assert not G.training
    assert not torch.equal(G.state_dict()["init.1.running_mean"], file["init.1.running_mean"])
    # Ours are their own: the samples do not depend on the batch.
    one = sample.generate(G, e["z"][:1], sample.slice_noise(noise, 0, 1))
    assert (sample.generate(G, e["z"], noise)[:1] - one).abs().max() < 1e-5


@pytest.mark.slow
def test_sample_1024_grid(tmp_path, capsys):
    """Their 1024 file (saved from nn.DataParallel) samples 1024x1024 images and a grid; with tanh, as
    theirs at 1024, so nothing is said about it (--bn batch: no statistics to recompute, a quick test)."""
    code, out, err = run_train(["--ckpt", str(SHORT_1024), "--out", str(tmp_path / "out"), "--device", "cpu",
                                "--n", "2", "--grid", "--bn", "batch"], capsys, main=sample.main)
    assert code == 0, err
    assert np.asarray(Image.open(tmp_path / "out" / "000001.png")).shape == (1024, 1024, 3)
    assert (tmp_path / "out" / "grid.png").is_file() and "tanh" not in out and "'module.' dropped" in out


# -- 4. train.py --init_from --

@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 2-iteration run of ours (128x128, widths 8) to fine-tune from, and a new folder of images."""
    root = tmp_path_factory.mktemp("init")
    with torch_threads(1):
        run_train(["--path", str(make_images(root / "old", n=4, seed=1)), "--out", str(root / "runs"),
                   "--iter", "2", "--im_size", "128", "--ngf", "8", "--ndf", "8", *RUN])
    return root, root / "runs" / "old" / "checkpoints" / "latest.pt", make_images(root / "new", n=4, seed=2)


def _log(run):
    return [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_init_from_starts_from_the_weights(source, capsys):
    """The first iteration's loss on reals is another than a fresh run's (same seed, same data); the
    count starts at 0 and Adam afresh; args.json says where the weights came from."""
    root, ckpt, new = source
    common = ["--path", str(new), "--out", str(root / "runs"), "--iter", "2", *RUN]
    code, out, err = run_train([*common, "--name", "ft", "--init_from", str(ckpt)], capsys)
    assert code == 0, err
    assert run_train([*common, "--name", "fresh", "--im_size", "128", "--ngf", "8", "--ndf", "8"], capsys)[0] == 0
    ft, fresh = _log(root / "runs" / "ft"), _log(root / "runs" / "fresh")
    assert [r["iter"] for r in ft] == [1, 2]
    assert abs(ft[0]["d_real"] - fresh[0]["d_real"]) > 1e-3
    args = json.loads((root / "runs" / "ft" / "args.json").read_text())
    assert args["init_from"] == str(ckpt.resolve()) and "checkpoint at iteration 2" in args["init_source"]
    assert (args["im_size"], args["ngf"], args["ndf"], args["nz"]) == (128, 8, 8, 256)
    state = torch.load(root / "runs" / "ft" / "checkpoints" / "latest.pt", weights_only=True)
    assert state["iteration"] == 2
    assert all(int(s["step"]) == 2 for s in state["opt_G"]["state"].values())        # a fresh Adam, 2 steps
    assert "init_from:" in out


class Peeked(Exception):
    pass


@pytest.mark.slow
def test_init_from_loads_g_d_and_the_ema(source, monkeypatch):
    """G, D and the EMA generator hold the file's weights when the first iteration starts."""
    root, ckpt, new = source
    seen = {}
    real_ema = train.EMA

    def ema(G_ema, G, decay):
        seen.update(G_ema=dict(G_ema.state_dict()), G=dict(G.state_dict()))
        return real_ema(G_ema, G, decay)

    def step(G, D, *a, **k):
        seen["D"] = dict(D.state_dict())
        raise Peeked
    monkeypatch.setattr(train, "EMA", ema)
    monkeypatch.setattr(train, "train_step", step)
    with pytest.raises(Peeked):       # the speed options off: the modules keep their names
        train.train(train.parse_args(["--path", str(new), "--out", str(root / "runs"), "--name", "peek",
                                      "--init_from", str(ckpt), "--no-fast_upsample", "--no-channels_last", *RUN]))
    want = torch.load(ckpt, weights_only=True)
    for net in ("G", "D", "G_ema"):
        assert seen[net].keys() == want[net].keys() and all(torch.equal(seen[net][k], want[net][k]) for k in want[net]), net
    assert not all(torch.equal(want["G"][k], want["G_ema"][k]) for k in want["G"])


@pytest.mark.slow
def test_resume_continues_a_fine_tuning_run(source, capsys):
    """--resume latest continues the run that --init_from started: 1 + 1 iterations give the state of
    2 in one go (the same command plus --resume latest), and args.json keeps the source."""
    root, ckpt, new = source
    common = ["--path", str(new), "--out", str(root / "runs"), "--init_from", str(ckpt), "--save_every", "1", *RUN]
    assert run_train([*common, "--name", "once", "--iter", "2"], capsys)[0] == 0
    assert run_train([*common, "--name", "twice", "--iter", "1"], capsys)[0] == 0
    code, out, _ = run_train([*common, "--name", "twice", "--iter", "2", "--resume", "latest"], capsys)
    assert code == 0 and "resumed from iteration 1" in out
    a, b = (torch.load(root / "runs" / n / "checkpoints" / "latest.pt", weights_only=True) for n in ("once", "twice"))
    for net in ("G", "D", "G_ema"):
        assert all(torch.equal(a[net][k], b[net][k]) for k in a[net]), net
    # Resumed without --init_from (the size and widths then given): the record stays.
    code, _, _ = run_train(["--path", str(new), "--out", str(root / "runs"), "--name", "twice", "--iter", "3",
                            "--resume", "latest", "--im_size", "128", "--ngf", "8", "--ndf", "8", *RUN], capsys)
    assert code == 0
    assert json.loads((root / "runs" / "twice" / "args.json").read_text())["init_from"] == str(ckpt.resolve())


@pytest.mark.slow
@pytest.mark.parametrize("case", ["--ngf", "--im_size", "another source", "unreadable"])
def test_init_from_refusals(source, tmp_path, capsys, case):
    root, ckpt, new = source
    flags, message = {
        "--ngf": (["--init_from", str(ckpt), "--ngf", "16"], "--ngf 16: --init_from"),
        "--im_size": (["--init_from", str(ckpt), "--im_size=256"], "holds networks with --im_size 128"),
        "another source": (["--init_from", str(ckpt), "--resume", str(ckpt)], "continues a run that started from scratch"),
        "unreadable": (["--init_from", str(_write(tmp_path / "half.pt", ckpt.read_bytes()[:1000]))],
                       "not a readable FastGAN checkpoint"),
    }[case]
    code, _, err = run_train(["--path", str(new), "--out", str(tmp_path / "runs"), *RUN, *flags], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("train.py: error: ") and message in lines[0], err
    assert not (tmp_path / "runs").exists()


@pytest.mark.slow
def test_init_from_their_file(tmp_path, capsys):
    """Fine-tuning starts from their {iter}.pth: 256x256, widths 8, nz 16 from the file; one iteration."""
    data = make_images(tmp_path / "data", n=2)
    code, out, err = run_train(["--path", str(data), "--out", str(tmp_path / "runs"), "--init_from", str(SHORT_256),
                                "--iter", "1", *RUN], capsys)
    assert code == 0, err
    args = json.loads((tmp_path / "runs" / "data" / "args.json").read_text())
    assert (args["im_size"], args["ngf"], args["ndf"], args["nz"]) == (256, 8, 8, 16)
    assert args["init_source"].startswith("the authors' {iter}.pth")


def test_given_flags_reads_argparse():
    """Which flags a command line gives, as argparse reads them (an abbreviation, a default's value)."""
    p = OneLineParser()
    p.add_argument("--im_size", type=int, default=1024)
    p.add_argument("--ngf", type=int, default=64)
    assert given_flags(p, ["--im=1024"], ("im_size", "ngf")) == {"im_size"}
    assert given_flags(p, [], ("im_size", "ngf")) == set()
    args = Namespace(init_from="x", im_size=1024, ngf=64, ndf=64, nz=256)
    pretrained.defer_architecture(p, ["--ngf", "64"], args)
    assert (args.im_size, args.ngf, args.ndf, args.nz) == (None, 64, None, None)
