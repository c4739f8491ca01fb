"""Tests of what a person sees of a run (plumbing/watch.py): the first progress line after iteration 1,
the hint when a GPU setting landed on the CPU, the timelapse images/progress.gif (also from
`sample.py --timelapse`), and the optional TensorBoard files.

    python -m pytest -q tests/test_watch.py

The timelapse's frame count and its survival of --resume are checked on test_train.py's runs.
"""

import argparse
import json
import re
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import sample
from plumbing import cli, monitor, watch
from tests.helpers import TINY, make_images, run_train


def _args(im_size=1024, ngf=64, ndf=64, device="auto", path="data/panda", iters=50000):
    return argparse.Namespace(im_size=im_size, ngf=ngf, ndf=ndf, device=device, path=path, iter=iters)


def _no_gpu(monkeypatch):
    """`--device auto` finds the CPU on any machine. (cli's check is replaced, not torch's: training
    imports parts of torch that read torch.cuda.is_available's own attributes.)"""
    monkeypatch.setattr(cli, "device_available", lambda name: name == "cpu")


# -- the first minute on a CPU --

def test_cpu_hint_for_a_gpu_setting_that_landed_on_the_cpu():
    """The paper's setting found only a CPU: one line with the time per iteration, the time of the run
    and the README's CPU command with the user's --path. None for the CPU setting, for --device cpu
    chosen explicitly, and on a GPU."""
    cpu, cuda, mps = torch.device("cpu"), torch.device("cuda"), torch.device("mps")
    hint = watch.cpu_hint(_args(path="my data"), cpu, 22.0, 49999)
    assert hint.startswith("hint: ") and "\n" not in hint
    assert "1024x1024 with widths 64/64" in hint and "22.0 s per iteration" in hint
    assert "about 12 days 17 h for the 49,999 iterations left" in hint         # 22 s x 49,999 = 12.7 days
    assert hint.endswith("For a CPU: python train.py --path 'my data' --im_size 128 --ngf 32 --ndf 32 --device cpu")
    # A setting is meant for a GPU from size 256, or with a width over 32.
    assert watch.cpu_hint(_args(im_size=256, ngf=32, ndf=32), cpu, 3.0, 10) is not None
    assert watch.cpu_hint(_args(im_size=128, ngf=32, ndf=48), cpu, 3.0, 10) is not None
    assert watch.cpu_hint(_args(im_size=128, ngf=32, ndf=32), cpu, 3.0, 10) is None
    # The user asked for the CPU: no hint, whatever the setting; a GPU: no hint.
    assert watch.cpu_hint(_args(device="cpu"), cpu, 22.0, 10) is None
    assert watch.cpu_hint(_args(im_size=128, ngf=32, ndf=32, device="cpu"), cpu, 1.0, 10) is None
    assert watch.cpu_hint(_args(), cuda, 0.2, 10) is None and watch.cpu_hint(_args(), mps, 1.0, 10) is None


def test_duration_reads_at_a_glance():
    assert [watch.duration(s) for s in (0.4, 45, 725, 12000, 1_100_000)] == [
        "0 s", "45 s", "12 min 05 s", "3 h 20 min", "12 days 17 h"]


def _lines(out):
    return [line for line in out.splitlines() if line.startswith(("iter ", "hint: "))]


@pytest.mark.parametrize("seconds_left, eta", [(59, "00:00:59"), (5 * 3600 + 59 * 60 + 40, "05:59:40"),
                                               (30 * 3600, "30:00:00"), (99 * 3600 + 3599, "99:59:59"),
                                               (100 * 3600, "4 days 4 h")])
def test_progress_line_counts_the_hours_left_past_a_day(capsys, monkeypatch, seconds_left, eta):
    """The ETA is a stopwatch, not a time of day: 30 hours left read '30:00:00'; from 100 hours on,
    days and hours. A fake clock: 10 iterations in 10 s (1 it/s), seconds_left iterations to go."""
    now = [1000.0]
    monkeypatch.setattr(monitor.time, "time", lambda: now[0])
    progress = monitor.Progress(total=10 + seconds_left, start=0)
    now[0] += 10.0
    progress.show(10, dict.fromkeys(("d_real", "d_fake", "recon", "g"), 0.5))
    line = capsys.readouterr().out
    assert f"ETA {eta} " in line, line


@pytest.mark.slow
def test_first_progress_line_after_iteration_one_then_the_hint(tmp_path, capsys, monkeypatch):
    """With --log_every 20 the first progress line still comes after iteration 1, and (a GPU setting,
    --device auto, no GPU) the hint follows it once, with the seconds that line measured. The same
    run with --device cpu has no hint. The tiny networks count as a GPU setting here: GPU_WIDTH is
    lowered to 4, as a real GPU setting takes minutes per run on a CPU."""
    _no_gpu(monkeypatch)
    monkeypatch.setattr(watch, "GPU_WIDTH", 4)
    data = make_images(tmp_path / "data", n=2)
    common = ["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "2", "--sample_every", "100",
              "--save_every", "100", *TINY, "--log_every", "20"]
    code, out, err = run_train([*common, "--device", "auto"], capsys)
    assert code == 0, err
    lines = _lines(out)
    assert [line.split()[0] + " " + line.split()[1] for line in lines] == ["iter 1/2", "hint: no", "iter 2/2"], out
    assert lines[1].endswith(f"For a CPU: python train.py --path {data} --im_size 128 --ngf 32 --ndf 32 --device cpu")
    seconds = float(re.search(r"([\d.]+) s per iteration", lines[1]).group(1))
    speed = re.search(r"([\d.]+) (it/s|s/it)", lines[0])               # under 1 it/s, seconds each
    if speed.group(2) == "s/it":
        assert float(speed.group(1)) == seconds
    else:
        assert abs(seconds - 1 / float(speed.group(1))) <= 0.06, (speed.group(0), seconds)
    assert "for the 1 iterations left" in lines[1]
    code, out, err = run_train([*common, "--device", "cpu", "--name", "explicit"], capsys)
    assert code == 0, err
    assert [line.split()[1] for line in _lines(out)] == ["1/2", "2/2"], out       # no hint


# -- the timelapse --

def _grids(folder, colours, width=522):
    """Sample grids NNNNNN_samples.png of one flat colour each, beside a recons grid and other files."""
    folder.mkdir(parents=True)
    for it, colour in colours.items():
        Image.new("RGB", (width, width), colour).save(folder / f"{it:06d}_samples.png")
        Image.new("RGB", (652, 522), (255, 255, 255)).save(folder / f"{it:06d}_recons.png")
    (folder / "notes.txt").write_text("not a grid")
    return folder


def _frames(path):
    with Image.open(path) as gif:
        frames = []
        for i in range(gif.n_frames):
            gif.seek(i)
            frames.append((np.asarray(gif.convert("RGB"))[0, 0].tolist(), gif.info["duration"], gif.size))
        return frames


def test_sample_timelapse_builds_the_gif_of_a_run_folder(tmp_path, capsys):
    """`sample.py --timelapse RUN_DIR`: one frame per sample grid in iteration order (1000 after 500,
    not before it), the recons grids left out, the last frame held longest, 256 pixels wide."""
    red, green, blue = (255, 0, 0), (0, 255, 0), (0, 0, 255)
    _grids(tmp_path / "run" / "images", {1000: blue, 500: green, 0: red})
    sample.main(["--timelapse", str(tmp_path / "run")])
    assert "3 frames" in capsys.readouterr().out
    frames = _frames(tmp_path / "run" / "images" / "progress.gif")
    assert [f[0] for f in frames] == [list(red), list(green), list(blue)]
    assert [f[1] for f in frames] == [watch.FRAME_MS, watch.FRAME_MS, watch.LAST_FRAME_MS]
    assert all(f[2] == (watch.FRAME_WIDTH, watch.FRAME_WIDTH) for f in frames)
    # A folder without grids: one line, exit 2.
    (tmp_path / "empty").mkdir()
    with pytest.raises(SystemExit) as e:
        sample.main(["--timelapse", str(tmp_path / "empty")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and "no sample grids" in err


@pytest.mark.slow
def test_timelapse_keeps_frames_small_and_rebuilds_after_a_resume(tmp_path):
    """A 1024x1024 run's grid (4106 pixels) becomes a FRAME_WIDTH frame; `update(upto=it)` leaves out
    the grids an earlier attempt wrote after `it`, and re-reads the grid of `fresh`."""
    folder = _grids(tmp_path / "images", {2: (10, 10, 10), 4: (20, 20, 20), 6: (30, 30, 30)}, width=4106)
    tl = watch.Timelapse(folder)
    assert tl.update(upto=4) == 2 and [f[0][0] for f in _frames(tl.path)] == [10, 20]
    Image.new("RGB", (4106, 4106), (90, 90, 90)).save(folder / "000004_samples.png")   # redrawn after resume
    assert tl.update(upto=4) == 2 and [f[0][0] for f in _frames(tl.path)] == [10, 20]  # kept: not fresh
    assert tl.update(upto=4, fresh=4) == 2 and [f[0][0] for f in _frames(tl.path)] == [10, 90]
    assert tl.update() == 3 and _frames(tl.path)[0][2] == (watch.FRAME_WIDTH, watch.FRAME_WIDTH)
    assert not list(folder.glob("*.tmp"))


# -- TensorBoard --

def test_tensorboard_missing_is_one_line_before_any_work(tmp_path, capsys, monkeypatch):
    """Without the tensorboard package, --tensorboard is refused (exit 2, one line naming the pip
    command) before the run folder is made."""
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)    # `import` of it fails
    data = make_images(tmp_path / "data", n=2)
    code, _, err = run_train(["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "1",
                              "--tensorboard", *TINY], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "pip install tensorboard" in lines[0], err
    assert not (tmp_path / "runs").exists()


def test_tensorboard_holds_each_loss_speed_score_and_both_grids(tmp_path, capsys):
    """A run with --tensorboard: its event file, read back with TensorBoard's own reader, holds every
    loss term and it/s at each progress line (the values of log.jsonl), the evaluation's SWD, and
    the sample and reconstruction grids at the size of their PNGs."""
    pytest.importorskip("tensorboard", reason="the optional tensorboard package is not installed")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    data = make_images(tmp_path / "data", n=2)
    code, _, err = run_train(["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "2",
                              "--sample_every", "2", "--eval_every", "2", "--eval_n", "4", "--tensorboard", *TINY],
                             capsys)
    assert code == 0, err
    run = tmp_path / "runs" / "data"
    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    for name in ("d_real", "d_fake", "recon", "g"):
        got = [(e.step, e.value) for e in acc.Scalars(f"loss/{name}")]
        want = [(r["iter"], r[name]) for r in rows if "eval" not in r]
        assert [s for s, _ in got] == [1, 2] and np.allclose([v for _, v in got], [v for _, v in want], rtol=1e-6)
    assert [e.step for e in acc.Scalars("speed/it_per_s")] == [1, 2]
    assert all(e.value > 0 for e in acc.Scalars("speed/it_per_s"))
    swd = [r["eval"]["swd"] for r in rows if "eval" in r]
    assert [(e.step, round(e.value, 3)) for e in acc.Scalars("eval/swd")] == [(2, round(swd[0], 3))]
    assert {"eval/swd_per_level/128", "eval/swd_per_level/16"} <= set(acc.Tags()["scalars"])
    for kind in ("samples", "recons"):
        (image,) = acc.Images(f"grids/{kind}")
        with Image.open(run / "images" / f"000002_{kind}.png") as png:
            assert image.step == 2 and (image.width, image.height) == png.size


# -- the score curve: images/swd.png and metrics.py --curve --

def _log(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_score_curve_reads_the_evaluations_with_hours_summed_over_a_resumed_run(tmp_path):
    """score_curve gives (iteration, hours, SWD) by iteration. A resumed attempt's clock restarts at 0:
    its hours continue from the last time the earlier attempt logged; its evaluation of an iteration
    the earlier attempt had also scored (past the checkpoint it resumed from) replaces that one. An
    evaluation row without a time takes the last progress line's; a line cut short is skipped."""
    log = _log(tmp_path / "log.jsonl", [
        {"iter": 100, "time": 360.0, "d_real": 0.5},
        {"iter": 100, "time": 370.0, "eval": {"swd": 30.0}},
        {"iter": 200, "time": 720.0, "d_real": 0.5},
        {"iter": 200, "time": 730.0, "eval": {"swd": 20.0}},
        {"iter": 300, "time": 1080.0, "d_real": 0.5},
        {"iter": 300, "time": 1090.0, "eval": {"swd": 25.0}},     # lost: the resume starts at 200
        # the second attempt, resumed from iteration 200: its clock starts again
        {"iter": 300, "time": 360.0, "d_real": 0.5},
        {"iter": 300, "eval": {"swd": 15.0}},                      # no time of its own: 360 s
        {"iter": 400, "time": 720.0, "d_real": 0.5},
    ])
    with open(log, "a") as f:
        f.write('{"iter": 400, "ti')                                # a crash mid-line
    rows = watch.score_curve(log)
    assert [(it, swd) for it, _, swd in rows] == [(100, 30.0), (200, 20.0), (300, 15.0)]
    assert [round(h * 3600) for _, h, _ in rows] == [370, 730, 1090 + 360]


def test_score_curve_plot_draws_each_score_where_its_axes_put_it(tmp_path):
    """draw_score_curve: both panels have each evaluation's dot at the pixel its iteration (left) or
    hours (right) and its SWD map to, the lowest in red, the others in the curve's colour; a mark is a
    grey line at its iteration. The y axis starts at 0 at the bottom: the best score is the lowest dot."""
    rows = [(500, 0.5, 40.0), (1000, 1.0, 25.0), (1500, 1.5, 18.0), (2000, 2.0, 21.0)]
    panels = watch.draw_score_curve(rows, tmp_path / "swd.png", marks=[(1250, "faces")])
    with Image.open(tmp_path / "swd.png") as im:
        image = im.convert("RGB")
    assert image.size == watch.CURVE_SIZE
    for panel, column in zip(panels, (0, 1)):
        ys = []
        for row in rows:
            x, y = panel.pixel(row[column], row[2])
            colour = watch.BEST_COLOUR if row[2] == 18.0 else watch.CURVE_COLOUR
            assert image.getpixel((round(x), round(y))) == colour, row
            ys.append(y)
        assert max(ys) == ys[2]                                    # the best score is the lowest dot
        assert panel.y_ticks[0] == 0 and panel.y_ticks[-1] >= 40 and panel.x_ticks[-1] >= rows[-1][column]
    x, _ = panels[0].pixel(1250, 10.0)
    top, bottom = panels[0].box[1], panels[0].box[3]
    column = [image.getpixel((c, y)) for c in (int(x), int(x) + 1) for y in range(top + 20, bottom)]
    assert column.count(watch.MARK_COLOUR) > (bottom - top) / 4                  # dashed: half of it grey


def test_metrics_curve_prints_the_table_and_draws_the_plot(tmp_path, capsys):
    """`metrics.py --curve RUN_DIR` prints iteration, hours and SWD of each evaluation and writes
    RUN_DIR/images/swd.png; a run without evaluations and a bad --mark are refused with the fix."""
    import metrics
    run = tmp_path / "run"
    run.mkdir()
    _log(run / "log.jsonl", [{"iter": 500, "time": 1800.0, "eval": {"swd": 31.5}},
                             {"iter": 1000, "time": 3600.0, "eval": {"swd": 22.25}}])
    assert metrics.main(["--curve", str(run), "--mark", "1000:first faces"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == ["iteration\thours\tswd", "500\t0.500\t31.50", "1000\t1.000\t22.25"]
    with Image.open(run / "images" / "swd.png") as im:
        assert im.size == watch.CURVE_SIZE
    assert metrics.main(["--curve", str(run), "--mark", "first"]) == 2
    assert "ITER:LABEL" in capsys.readouterr().err
    _log(run / "log.jsonl", [{"iter": 1, "time": 1.0, "d_real": 0.5}])
    assert metrics.main(["--curve", str(run)]) == 2
    assert "--eval_every" in capsys.readouterr().err
