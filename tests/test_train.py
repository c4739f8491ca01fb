"""Tests of train.py as a tool: the loop's output folder, checkpoints, exact resume, refused input,
a loss that becomes NaN, Ctrl-C, and images streamed from disk.

    python -m pytest -q tests/test_train.py

Most tests run train.py's `main` in this process at the smallest real configuration (TINY, in
tests/helpers.py: 128x128, widths 8, batch 2); the Ctrl-C test and one refusal run `python train.py` as a
user does. That the loop actually learns is tested in test_fastgan.py (test_a_short_run_learns_the_images, and
test_short_training_learns under -m slow).
"""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from plumbing import checkpoint, monitor, watch
import train
from tests.helpers import TINY, assert_same_training_state, make_images, run_train

HERE = Path(__file__).resolve().parents[1]  # where train.py is: the cwd of `python train.py`


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """One 4-iteration run, saved, sampled and evaluated every 2 iterations, shared by several tests."""
    root = tmp_path_factory.mktemp("tiny")
    data = make_images(root / "data")
    train.main(["--path", str(data), "--out", str(root / "runs"), "--iter", "4",
                "--save_every", "2", "--sample_every", "2", "--eval_every", "2", "--eval_n", "4", *TINY])
    return root, data, root / "runs" / "data"


def test_train_writes_checkpoints_images_log_and_args(tiny_run):
    """OUT/NAME/ holds numbered and latest checkpoints (and best.pt: this run evaluates), grids, the loss
    log and args."""
    _, _, run = tiny_run
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000002.pt", "000004.pt", "best.pt", "latest.pt"]
    assert sorted(p.name for p in (run / "images").iterdir()) == [
        "000002_recons.png", "000002_samples.png", "000004_recons.png", "000004_samples.png", "progress.gif",
        "swd.png"]
    # The timelapse: one frame per sample grid, in order, each the grid downscaled (watch.Timelapse).
    with Image.open(run / "images" / "progress.gif") as gif:
        assert gif.n_frames == 2 and gif.width == watch.FRAME_WIDTH
        for i, it in enumerate((2, 4)):
            gif.seek(i)
            want = watch.Timelapse(run / "images").frame(run / "images" / f"{it:06d}_samples.png")
            assert np.array_equal(np.asarray(gif.convert("RGB")), np.asarray(want.convert("RGB"))), it
    with Image.open(run / "images" / "000004_samples.png") as im:
        assert im.size == (4 * 130 + 2, 4 * 130 + 2)          # 16 samples, 4 per row, 128 px + 2 px gaps
    with Image.open(run / "images" / "000004_recons.png") as im:
        assert im.size == (5 * 130 + 2, 4 * 130 + 2)          # 4 real images x (real + 4 reconstructions)
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    evals = [r for r in rows if "eval" in r]
    rows = [r for r in rows if "eval" not in r]
    assert [r["iter"] for r in rows] == [1, 2, 3, 4]
    # --eval_every 2: SWD of 4 EMA samples against the training images, logged beside the losses.
    assert [r["iter"] for r in evals] == [2, 4]
    assert 0 < evals[0]["time"] <= rows[2]["time"] <= evals[1]["time"]   # training time when each was scored
    assert all(r["eval"]["swd"] > 0 and set(r["eval"]["swd_per_level"]) == {"128", "64", "32", "16"} for r in evals)
    for r in rows:
        assert all(np.isfinite(r[k]) for k in ("d_real", "d_fake", "recon", "g"))
        assert r["recon"] > 0
    args = json.loads((run / "args.json").read_text())
    assert args["im_size"] == 128 and args["ngf"] == 8 and args["iter"] == 4


def test_checkpoint_is_complete_and_weights_only(tiny_run):
    """A checkpoint loads with weights_only=True and holds nets, optimisers, iteration, args and RNGs."""
    _, _, run = tiny_run
    st = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert st["format"] == checkpoint.CHECKPOINT_FORMAT and st["iteration"] == 4
    assert {"G", "D", "G_ema", "opt_G", "opt_D", "args", "rng"} <= set(st)
    assert set(st["rng"]) == {"python", "numpy", "torch", "cuda", "mps"}
    assert len(st["opt_G"]["state"]) == len(st["opt_G"]["param_groups"][0]["params"]) > 0
    two = torch.load(run / "checkpoints" / "000002.pt", weights_only=True)
    changed = [k for k in st["G"] if st["G"][k].is_floating_point() and not torch.equal(st["G"][k], two["G"][k])]
    assert changed, "G did not change between iterations 2 and 4"
    # The EMA generator is a different network from G, but close to it.
    assert any(not torch.equal(st["G"][k], st["G_ema"][k]) for k in changed)


@pytest.mark.slow
def test_resume_is_bit_exact(tiny_run, capsys):
    """Resume is exact: --iter 4 at once == --iter 2, then --iter 4 --resume latest (G, D, Adam, and the
    EMA generator, whose decay is ramped up by iteration and whose BatchNorm statistics are recomputed
    at every save). The one-go run also evaluated and sampled; neither may change the run."""
    root, data, run = tiny_run
    out = root / "resumed"
    common = ["--path", str(data), "--out", str(out), "--save_every", "2", "--sample_every", "2", *TINY]
    assert run_train([*common, "--iter", "2"], capsys)[0] == 0
    with Image.open(out / "data" / "images" / "progress.gif") as gif:
        assert gif.n_frames == 1                                   # the grid of iteration 2
    code, stdout, _ = run_train([*common, "--iter", "4", "--resume", "latest"], capsys)
    assert code == 0 and "resumed from iteration 2" in stdout
    a = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    b = torch.load(out / "data" / "checkpoints" / "latest.pt", weights_only=True)
    assert_same_training_state(a, b)
    # The EMA generator is not G (the ramp-up averages), its statistics are its own (not G's), and the
    # grid it drew at iteration 4 is the same picture in both runs.
    assert any(not torch.equal(a["G"][k], a["G_ema"][k]) for k in a["G"] if k.endswith("original"))
    assert any(not torch.equal(a["G"][k], a["G_ema"][k]) for k in a["G"] if k.endswith("running_mean"))
    grid = "images/000004_samples.png"
    assert (run / grid).read_bytes() == (out / "data" / grid).read_bytes()
    # The timelapse after the resume holds the frames of both parts: the one-go run's GIF, byte for byte.
    gif = "images/progress.gif"
    assert (run / gif).read_bytes() == (out / "data" / gif).read_bytes()


@pytest.mark.slow
def test_nan_loss_stops_run_and_keeps_last_good_checkpoint(tmp_path, capsys, monkeypatch):
    """A NaN loss stops the run with a message naming its iteration; latest.pt stays the last good one."""
    data = make_images(tmp_path / "data", n=2)
    real_step, calls = train.train_step, []

    def step_that_diverges(*a, **k):
        losses = real_step(*a, **k)
        calls.append(1)
        if len(calls) == 3:
            losses["g"] = losses["g"] * float("nan")
        return losses

    monkeypatch.setattr(train, "train_step", step_that_diverges)
    code, _, err = run_train(["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "6",
                              "--save_every", "2", "--sample_every", "100", *TINY], capsys)
    assert code == 1
    assert "iteration 3" in err and "NaN" in err and "Traceback" not in err
    st = checkpoint.load_checkpoint(tmp_path / "runs" / "data" / "checkpoints" / "latest.pt")
    assert st["iteration"] == 2
    assert all(torch.isfinite(v).all() for v in st["G"].values() if v.is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize("signals", [1, 2])
def test_ctrl_c_saves_a_checkpoint_and_exits_cleanly(tmp_path, signals):
    """Ctrl-C finishes the iteration, writes latest.pt, and exits (code 130) without a traceback. Two
    SIGINTs at once (as `timeout -s INT` sends them: to train.py, then to its process group) are one
    request: the run still saves."""
    data = make_images(tmp_path / "data", n=2)
    out = tmp_path / "runs"
    proc = subprocess.Popen([sys.executable, "train.py", "--path", str(data), "--out", str(out), "--iter", "10000",
                             "--save_every", "10000", "--sample_every", "10000", *TINY],
                            cwd=HERE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    log = out / "data" / "log.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (log.exists() and log.read_text().strip()):
        time.sleep(0.2)
    for _ in range(signals):
        proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted: saved iteration" in stderr
    saved = int(stderr.split("interrupted: saved iteration ")[1].split()[0])
    st = checkpoint.load_checkpoint(out / "data" / "checkpoints" / "latest.pt")
    assert st["iteration"] == saved >= 1


def test_a_second_ctrl_c_aborts_unless_it_comes_with_the_first(monkeypatch):
    """StopSignal: the first SIGINT asks for a stop; a repeat within SAME_REQUEST_S is the same request
    (timeout's pair of signals), a later one aborts (KeyboardInterrupt); under torchrun
    (repeat_aborts=False) no repeat aborts."""
    clock = [100.0]
    monkeypatch.setattr(monitor.time, "monotonic", lambda: clock[0])
    said = []
    stop = monitor.StopSignal(lambda *a, **k: said.append(a[0]))
    stop._on_signal(signal.SIGINT, None)
    assert stop.requested and len(said) == 1
    clock[0] += 0.01
    try:
        stop._on_signal(signal.SIGINT, None)                 # the same request: no abort, no second line
    except KeyboardInterrupt:                                # (as a failure, not an interrupted session)
        pytest.fail("a second SIGINT 0.01 s after the first aborted the run")
    assert len(said) == 1
    clock[0] += monitor.StopSignal.SAME_REQUEST_S + 1
    with pytest.raises(KeyboardInterrupt):
        stop._on_signal(signal.SIGINT, None)
    patient = monitor.StopSignal(lambda *a, **k: None, repeat_aborts=False)
    patient._on_signal(signal.SIGTERM, None)
    clock[0] += 60
    patient._on_signal(signal.SIGTERM, None)
    assert patient.requested


def refusals(tmp_path, tiny_run):
    root, data, run = tiny_run
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    (empty / "broken.png").write_bytes(b"\x89PNG this is not really a png")
    not_ours = tmp_path / "other.pt"
    torch.save({"state_dict": {"w": torch.zeros(1)}}, not_ours)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint")
    base = ["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "1", *TINY]
    ckpt = str(run / "checkpoints" / "latest.pt")
    return {
        "missing --path": (["--iter", "1"], "--path"),
        "no such folder": ([*base[:0], "--path", str(tmp_path / "nope"), "--iter", "1"], "no such folder"),
        "no readable images": (["--path", str(empty), "--iter", "1", *TINY], ".jpg, .jpeg, .png"),
        "bad im_size": ([*base, "--im_size", "300"], "--im_size must be one of"),
        "bad ngf": ([*base, "--ngf", "12"], "--ngf must be a positive multiple of 8"),
        "bad ndf": ([*base, "--ndf", "0"], "--ndf must be a positive multiple of 8"),
        "resume latest without one": ([*base, "--resume", "latest"], "there is no"),
        "resume someone else's file": ([*base, "--resume", str(not_ours)], "not a checkpoint written by"),
        "resume garbage": ([*base, "--resume", str(garbage)], "not a readable FastGAN checkpoint"),
        "resume other widths": ([*base, "--ngf", "16", "--resume", ckpt], "pass --ngf 8"),
        "resume other size": ([*base, "--im_size", "256", "--resume", ckpt], "pass --im_size 128"),
    }


def test_refused_inputs_exit_2_with_one_line(tmp_path, tiny_run, capsys):
    """Refused input (a missing or empty folder, bad sizes or widths, a checkpoint that cannot be resumed):
    exit code 2, one readable line on stderr, no traceback, for each case."""
    for name, (argv, expected) in refusals(tmp_path, tiny_run).items():
        code, _, err = run_train(argv, capsys)
        assert code == 2, name
        lines = err.strip().splitlines()
        assert len(lines) == 1 and expected in lines[0] and "Traceback" not in err, (name, err)


@pytest.mark.slow
def test_refused_input_in_a_real_process_has_no_traceback(tmp_path):
    """Refused input as a shell sees it: `python train.py` with a missing folder exits with code 2,
    one line on stderr and no traceback."""
    r = subprocess.run([sys.executable, "train.py", "--path", str(tmp_path / "nope")], cwd=HERE,
                       capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"train.py: error: {tmp_path / 'nope'}: no such folder (give --path a folder of images"), lines


@pytest.mark.slow
def test_streaming_data_trains(tmp_path, capsys):
    """--stream decodes from disk each iteration (the path for sets too large for memory)."""
    data = make_images(tmp_path / "data", n=3)
    code, out, _ = run_train(["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "2",
                              "--stream", "--workers", "0", *TINY], capsys)
    assert code == 0 and "streamed from disk" in out
    assert checkpoint.load_checkpoint(tmp_path / "runs" / "data" / "checkpoints" / "latest.pt")["iteration"] == 2


def _pictures(folder, sizes):
    """One PNG of each (width, height) in `sizes` in `folder`, a plain gradient (any content will do)."""
    folder.mkdir(parents=True)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(np.full((h, w, 3), 40 * i, np.uint8)).save(folder / f"img{i}.png")
    return folder


@pytest.mark.parametrize("sizes, expected, median", [
    ([(300, 200)] * 3, 128, "200"),                          # smaller than every size: the smallest, 128
    ([(600, 600), (600, 600), (2000, 1000)], 512, "600"),    # the median, not the largest image
    ([(256, 256), (1500, 1300), (1100, 1024)], 1024, "1024"),
    ([(4000, 3000)] * 2, 1024, "3000"),                      # 1024 at most
])
def test_image_size_left_out_follows_the_images(tmp_path, sizes, expected, median):
    """--im_size left out: the largest supported size not above the median shorter side of the
    folder's images (128 at least, 1024 at most), and one line says which and why."""
    data = _pictures(tmp_path / "data", sizes)
    args = train.parse_args(["--path", str(data)])
    line = train.check_args(args)
    assert args.im_size == expected
    assert line == f"image size {expected}: the images' median shorter side is {median} px (--im_size to choose another)"


def test_image_size_of_a_named_set_is_the_papers_and_an_explicit_size_wins(tmp_path):
    """A folder named after one of the paper's sets (data/panda) trains at the paper's 256x256 whatever
    its images' size; an explicit --im_size wins, silently; a resumed run takes its checkpoint's size."""
    panda = _pictures(tmp_path / "data" / "panda", [(600, 600)] * 2)
    args = train.parse_args(["--path", str(panda)])
    assert train.check_args(args) == f"image size 256: the paper's size for {panda} (--im_size to choose another)"
    assert args.im_size == 256
    args = train.parse_args(["--path", str(panda), "--im_size", "1024"])
    assert train.check_args(args) is None and args.im_size == 1024
    args = train.parse_args(["--path", str(panda), "--resume", "latest"])
    assert train.check_args(args) is None and args.im_size is None       # the checkpoint decides


@pytest.mark.slow
def test_the_run_prints_the_chosen_size_first(tmp_path, capsys):
    """The first line of a run without --im_size says the size and why; a resume without --im_size
    continues at the checkpoint's size."""
    data = _pictures(tmp_path / "data", [(300, 200)] * 2)
    tiny_no_size = [a for a in TINY if a not in ("--im_size", "128")]
    code, out, _ = run_train(["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "1", *tiny_no_size], capsys)
    assert code == 0 and out.splitlines()[0] == ("image size 128: the images' median shorter side is 200 px "
                                                 "(--im_size to choose another)"), out
    code, out, _ = run_train(["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "2",
                              "--resume", "latest", *tiny_no_size], capsys)
    assert code == 0 and "resumed from iteration 1" in out and "image size" not in out, out


@pytest.mark.slow
def test_best_pt_is_written_when_the_score_improves_and_not_otherwise(tmp_path, capsys, monkeypatch):
    """With --eval_every, checkpoints/best.pt holds the run at its lowest SWD so far: written at the
    evaluations that improve on every earlier one, not at the others (the scores are replaced by a
    fixed sequence); the eval line says so, and the progress line shows the last score."""
    import metrics
    sequence = iter([5.0, 4.0, 6.0, 3.0, 7.0])
    monkeypatch.setattr(metrics, "score", lambda fakes, reals, device: {"swd": next(sequence), "fid": None, "kid": None})
    written = []
    real_write = train.write_best
    monkeypatch.setattr(train, "write_best", lambda d, state: (written.append(state["iteration"]), real_write(d, state)))
    data = make_images(tmp_path / "data")
    code, out, _ = run_train(["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "5",
                              "--eval_every", "1", "--eval_n", "2", "--sample_every", "100", *TINY], capsys)
    assert code == 0, out
    assert written == [1, 2, 4]
    best = torch.load(tmp_path / "runs" / "data" / "checkpoints" / "best.pt", weights_only=True)
    assert best["iteration"] == 4
    assert out.count("the best so far: checkpoints/best.pt") == 3
    last_line = next(line for line in out.splitlines() if line.startswith("iter 5/5"))
    assert last_line.endswith("SWD 3.00"), last_line        # logged before iteration 5's evaluation


def test_d_may_be_winning_is_said_on_a_worsening_score_with_d_real_near_zero():
    """ScoreWatch says 'D may be winning' once the score got worse at WORSE_IN_A_ROW evaluations in a
    row while D's loss on reals is below D_REAL_FLOOR; not on a healthy run (scores falling, or D's
    loss on reals far from 0), and not on a worse score alone. A resumed run's history counts."""
    from plumbing.monitor import D_REAL_FLOOR, WORSE_IN_A_ROW, ScoreWatch

    def said(scores, d_real, history=()):
        watch = ScoreWatch(history)
        lines = [watch.update(500 * (i + 1 + len(history)), s, d_real)[1] for i, s in enumerate(scores)]
        return [line for line in lines if line]

    overfitting = [50.0, 40.0, 41.0, 45.0, 52.0]        # best at the 2nd, then worse 3 times in a row
    assert WORSE_IN_A_ROW == 3 and D_REAL_FLOOR == 0.1
    lines = said(overfitting, d_real=0.02)
    assert len(lines) == 1 and "D may be winning" in lines[0] and "iteration 1000)" in lines[0], lines
    assert said(overfitting, d_real=0.6) == []                     # D still has work: not the warning
    assert said([50.0, 45.0, 41.0, 38.0, 36.0], d_real=0.02) == []  # a healthy run
    assert said([50.0, 40.0, 41.0, 39.0, 45.0, 46.0], d_real=0.02) == []   # worse, but not 3 in a row
    assert len(said([45.0, 52.0], d_real=0.02, history=[(500, 50.0), (1000, 40.0), (1500, 41.0)])) == 1  # resumed
