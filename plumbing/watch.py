"""Watching a run learn: the hint of the first minute on a CPU, the timelapse, and TensorBoard.

A reader of the paper may skip this file. It holds no part of the method, only what a person sees:
- `cpu_hint`: a run whose setting is meant for a GPU (size 256 or more, or widths over 32) that
  landed on the CPU without the user asking for the CPU gets one line after its first iteration:
  the measured time per iteration, what the whole run would take, and the README's CPU command.
  It changes nothing; the run goes on as asked.
- `Timelapse`: images/progress.gif, one frame per sample grid. Every grid shows the same fixed
  latents (monitor.fixed_inputs), so the frames show G learning. Frames are downscaled (a 1024x1024
  run's 4106-pixel grid becomes FRAME_WIDTH pixels) so that a whole run's GIF stays a few MB. It is
  rebuilt from the numbered grids on disk, so it is complete after a resume, and `sample.py
  --timelapse RUN_DIR` makes it for any run folder.
- `score_curve` and `draw_score_curve`: with --eval_every, images/swd.png, the SWD of every evaluation
  against iterations and against hours of training, redrawn at each evaluation; `python metrics.py
  --curve RUN_DIR` draws it for any run folder and prints the table.
- `TensorBoard` (--tensorboard, the optional `tensorboard` package): each loss term, it/s, the
  evaluation scores and both grids, under RUN_DIR/tensorboard/; watch with `tensorboard --logdir runs`.
- `Watch`: all of these for one run, called by monitor.LossLog (rank 0 only).
It imports plumbing.cli only.
"""

import json
import os
import re
import shlex
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from plumbing.cli import UsageError

# A setting meant for a GPU: --im_size from GPU_SIZE, or --ngf/--ndf above GPU_WIDTH. The README's
# CPU command (128x128, widths 32) is below both; the paper's setting (256x256, widths 64) takes many
# times longer per iteration on a CPU (docs/measurements.md).
GPU_SIZE = 256
GPU_WIDTH = 32
CPU_COMMAND = "python train.py --path {path} --im_size 128 --ngf 32 --ndf 32 --device cpu"

FRAME_WIDTH = 256            # pixels of a timelapse frame at most: 4x4 samples of ~64 px each
FRAME_MS, LAST_FRAME_MS = 250, 2000   # each frame, and the last one (the run's current state), held longer
SAMPLE_GRID = re.compile(r"(\d+)_samples\.png")   # images/NNNNNN_samples.png (monitor.save_samples)


# ------------------------------------------------------------------------------------------------
# The first minute on a CPU
# ------------------------------------------------------------------------------------------------

def meant_for_gpu(im_size, ngf, ndf):
    """Whether a setting is one for a GPU: size 256 or more, or a width over 32."""
    return im_size >= GPU_SIZE or max(ngf, ndf) > GPU_WIDTH


def duration(seconds):
    """A time span a person reads at a glance: '45 s', '12 min 05 s', '3 h 20 min', '18 days 4 h'."""
    s = int(round(seconds))
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60:02d} s"
    if s < 86400:
        return f"{s // 3600} h {s % 3600 // 60:02d} min"
    return f"{s // 86400} days {s % 86400 // 3600} h"


def cpu_hint(args, device, seconds_per_iter, iters_left):
    """The one line for a GPU setting that landed on the CPU without --device cpu, else None.
    `args` needs path, device (what the user asked for), im_size, ngf, ndf."""
    if device.type != "cpu" or args.device == "cpu" or not meant_for_gpu(args.im_size, args.ngf, args.ndf):
        return None
    return (f"hint: no GPU found, so this runs on the CPU, but {args.im_size}x{args.im_size} with widths "
            f"{args.ngf}/{args.ndf} is a setting for a GPU: {seconds_per_iter:.1f} s per iteration here, "
            f"about {duration(seconds_per_iter * iters_left)} for the {iters_left:,} iterations left. "
            f"For a CPU: {CPU_COMMAND.format(path=shlex.quote(str(args.path)))}")


# ------------------------------------------------------------------------------------------------
# The timelapse
# ------------------------------------------------------------------------------------------------

def sample_grids(img_dir, upto=None):
    """[(iteration, path)] of the sample grids in `img_dir`, in training order (those after
    iteration `upto` left out: a resumed run's grids past its checkpoint are from the old attempt)."""
    found = ((int(m.group(1)), p) for p in Path(img_dir).glob("*_samples.png")
             if (m := SAMPLE_GRID.fullmatch(p.name)))
    return sorted((it, p) for it, p in found if upto is None or it <= upto)


def downscaled(image, width):
    """An RGB PIL image at most `width` pixels wide (the aspect kept), resized with Lanczos."""
    image = image.convert("RGB")
    if image.width <= width:
        return image
    return image.resize((width, max(1, round(image.height * width / image.width))), Image.Resampling.LANCZOS)


class Timelapse:
    """images/progress.gif from the sample grids in images/. `update` rebuilds the GIF from the grids
    on disk; frames already made are kept in memory (1 byte per pixel), so a rebuild decodes only the
    new grid. Written to a temporary file first, then renamed: an interrupted write leaves the old GIF."""

    def __init__(self, img_dir, width=FRAME_WIDTH):
        self.img_dir, self.width, self.frames = Path(img_dir), width, {}
        self.path = self.img_dir / "progress.gif"

    def frame(self, path):
        """One frame: the grid downscaled, with a palette of its own (GIF's 256 colours)."""
        with Image.open(path) as im:
            return downscaled(im, self.width).quantize(256)

    def update(self, upto=None, fresh=None):
        """Rebuild progress.gif from the grids up to iteration `upto` (None: all); the grid of iteration
        `fresh` was just written and is read again. Returns the number of frames (0: no grid, no GIF)."""
        grids = sample_grids(self.img_dir, upto)
        self.frames = {it: self.frames[it] if it in self.frames and it != fresh else self.frame(p)
                       for it, p in grids}
        frames = list(self.frames.values())
        if not frames:
            return 0
        tmp = self.path.with_name(self.path.name + ".tmp")
        frames[0].save(tmp, format="GIF", save_all=True, append_images=frames[1:], loop=0,
                       duration=[FRAME_MS] * (len(frames) - 1) + [LAST_FRAME_MS])
        os.replace(tmp, self.path)
        return len(frames)


# ------------------------------------------------------------------------------------------------
# The score curve: images/swd.png
# ------------------------------------------------------------------------------------------------

def score_curve(log_path):
    """[(iteration, hours, swd)] of a run's evaluations, read from its log.jsonl, by iteration.

    `hours` is training time: each attempt's clock starts at 0 (a row's "time"), so a resumed attempt's
    times are added to the last time the attempt before it logged. Where an attempt ran past the
    checkpoint it was resumed from, the resumed attempt's evaluation of an iteration replaces the
    earlier one. Rows without a time (logs of older versions) take the time of the last progress line
    before them."""
    scores, offset, last_time = {}, 0.0, 0.0
    for line in Path(log_path).read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:                    # a line cut short by a crash
            continue
        t = row.get("time")
        if t is not None:
            if t < last_time:                 # a new attempt: its clock restarted
                offset += last_time
            last_time = t
        if "eval" in row and row["eval"].get("swd") is not None:
            scores[row["iter"]] = ((offset + last_time) / 3600, row["eval"]["swd"])
    return [(it, hours, swd) for it, (hours, swd) in sorted(scores.items())]


def _font(size):
    try:
        return ImageFont.load_default(size)   # a scalable font (Pillow >= 10.1)
    except TypeError:
        return ImageFont.load_default()       # older Pillow: the small bitmap font


def _ticks(high, count=5):
    """Round tick values from 0 to at least `high`: 0, step, 2 step, ... with a step of 1, 2 or 5 x 10^k."""
    raw = max(high, 1e-9) / count
    magnitude = 10 ** np.floor(np.log10(raw))
    step = next(m * magnitude for m in (1, 2, 5, 10) if m * magnitude >= raw)
    return [i * step for i in range(int(np.ceil(high / step - 1e-9)) + 1)]


class CurvePanel:
    """One panel of the plot: maps (x, SWD) to pixels inside `box` = (left, top, right, bottom)."""

    def __init__(self, box, x_ticks, y_ticks):
        self.box, self.x_ticks, self.y_ticks = box, x_ticks, y_ticks

    def pixel(self, x, y):
        left, top, right, bottom = self.box
        return (left + (right - left) * x / self.x_ticks[-1], bottom - (bottom - top) * y / self.y_ticks[-1])


CURVE_SIZE = (960, 420)                       # pixels: two panels side by side
CURVE_COLOUR, BEST_COLOUR, MARK_COLOUR = (31, 119, 180), (214, 39, 40), (90, 90, 90)


def draw_score_curve(rows, path, marks=()):
    """Draw SWD against iterations (left) and hours (right) from score_curve's rows into a PNG at `path`;
    the best (lowest) score in red; each (iteration, label) of `marks` a grey vertical line with its
    label. Returns the two CurvePanels (where each value was drawn)."""
    image = Image.new("RGB", CURVE_SIZE, "white")
    draw, font, small = ImageDraw.Draw(image), _font(15), _font(12)
    draw.text((CURVE_SIZE[0] // 2, 8), "SWD of the EMA generator against the training images (lower is better)",
              fill="black", font=font, anchor="mt")
    y_ticks = _ticks(max(s for _, _, s in rows))
    panels = []
    for k, (column, x_label) in enumerate(((0, "iterations"), (1, "hours of training"))):
        xs = [r[column] for r in rows]
        panel = CurvePanel((70 + 480 * k, 40, 450 + 480 * k, 340), _ticks(max(xs)), y_ticks)
        left, top, right, bottom = panel.box
        draw.rectangle(panel.box, outline="black")
        for v in panel.y_ticks:
            px, py = panel.pixel(0, v)
            draw.line((left - 4, py, left, py), fill="black")
            draw.text((left - 6, py), f"{v:g}", fill="black", font=small, anchor="rm")
        for v in panel.x_ticks:
            px, py = panel.pixel(v, 0)
            draw.line((px, bottom, px, bottom + 4), fill="black")
            draw.text((px, bottom + 6), f"{v:,g}", fill="black", font=small, anchor="mt")
        draw.text(((left + right) // 2, bottom + 26), x_label, fill="black", font=font, anchor="mt")
        for it, label in marks:               # at the mark's iteration, or the hours of the nearest evaluation
            x = it if column == 0 else min(rows, key=lambda r: abs(r[0] - it))[1]
            px = panel.pixel(x, 0)[0]
            for y in range(top, bottom, 8):   # dashed
                draw.line((px, y, px, min(y + 4, bottom)), fill=MARK_COLOUR)
            draw.text((px + 4, top + 4), label, fill=MARK_COLOUR, font=small, anchor="lt")
        points = [panel.pixel(x, s) for x, (_, _, s) in zip(xs, rows)]
        if len(points) > 1:
            draw.line(points, fill=CURVE_COLOUR, width=2)
        best = min(range(len(rows)), key=lambda i: rows[i][2])
        for i, (px, py) in enumerate(points):
            colour = BEST_COLOUR if i == best else CURVE_COLOUR
            draw.ellipse((px - 3, py - 3, px + 3, py + 3), fill=colour)
        panels.append(panel)
    draw.text((70, CURVE_SIZE[1] - 8), f"best: {rows[best][2]:.2f} at iteration {rows[best][0]:,} (red)",
              fill=BEST_COLOUR, font=small, anchor="lb")
    tmp = Path(path).with_name(Path(path).name + ".tmp")
    image.save(tmp, format="PNG")
    os.replace(tmp, path)                    # an interrupted write leaves the old plot
    return panels


# ------------------------------------------------------------------------------------------------
# TensorBoard (optional)
# ------------------------------------------------------------------------------------------------

def require_tensorboard():
    """Refuse --tensorboard before any work when the package is missing (UsageError)."""
    try:
        from torch.utils.tensorboard import SummaryWriter  # noqa: F401  (needs the tensorboard package)
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from None


class TensorBoard:
    """Curves and grids for TensorBoard in `log_dir`. A resumed run (`start` > 0) hides what an earlier
    attempt wrote from iteration `start` on (purge_step), so the curves continue without a fold."""

    def __init__(self, log_dir, start=0, width=4 * FRAME_WIDTH):
        from torch.utils.tensorboard import SummaryWriter
        self.writer = SummaryWriter(str(log_dir), purge_step=start or None, flush_secs=20)
        self.width = width       # grids wider than this are downscaled (a 1024x1024 grid is 4106 px)

    def losses(self, it, means, rate):
        """The mean of each loss term since the last progress line, and iterations per second."""
        for name, value in means.items():
            self.writer.add_scalar(f"loss/{name}", value, it)
        self.writer.add_scalar("speed/it_per_s", rate, it)

    def scores(self, it, scores):
        """Every number of metrics.score (swd, its levels, fid, kid, ...); None (not computed) skipped."""
        for name, value in scores.items():
            for tag, v in (value.items() if isinstance(value, dict) else [("", value)]):
                if isinstance(v, (int, float)):
                    self.writer.add_scalar(f"eval/{name}" + (f"/{tag}" if tag else ""), v, it)
        self.writer.flush()

    def grids(self, img_dir, it):
        """The sample and reconstruction grids of iteration `it`, read back from their PNGs."""
        for kind in ("samples", "recons"):
            path = Path(img_dir) / f"{it:06d}_{kind}.png"
            if path.exists():         # no recons grid without decoders (--no_recon)
                with Image.open(path) as im:
                    image = np.asarray(downscaled(im, self.width))                # (H, W, 3) uint8
                self.writer.add_image(f"grids/{kind}", image, it, dataformats="HWC")
        self.writer.flush()

    def close(self):
        self.writer.close()


# ------------------------------------------------------------------------------------------------
# All of it, for one run
# ------------------------------------------------------------------------------------------------

class Watch:
    """What rank 0 shows of a run beyond its progress lines and log.jsonl (monitor.LossLog calls it):
    the CPU hint after the first line, the timelapse, and with args.tensorboard, TensorBoard."""

    def __init__(self, args, device, run_dir, start):
        self.args, self.device, self.hinted = args, device, False
        self.img_dir = Path(run_dir) / "images"
        self.timelapse = Timelapse(self.img_dir)
        self.board = TensorBoard(Path(run_dir) / "tensorboard", start) if args.tensorboard else None

    def logged(self, it, means, rate, tty=False):
        """After a progress line: the CPU hint the first time, the losses to TensorBoard."""
        if not self.hinted:
            self.hinted = True
            hint = cpu_hint(self.args, self.device, 1 / max(rate, 1e-9), self.args.iter - it)
            if hint:
                print(("\n" if tty else "") + hint, flush=True)
        if self.board:
            self.board.losses(it, means, rate)

    def evaluated(self, it, scores):
        """After an evaluation (its row is in log.jsonl): images/swd.png redrawn, the scores to TensorBoard."""
        draw_score_curve(score_curve(self.img_dir.parent / "log.jsonl"), self.img_dir / "swd.png")
        if self.board:
            self.board.scores(it, scores)

    def sampled(self, it):
        """The grids of iteration `it` are written: a frame more in progress.gif, and TensorBoard's."""
        self.timelapse.update(upto=it, fresh=it)
        if self.board:
            self.board.grids(self.img_dir, it)

    def close(self):
        if self.board:
            self.board.close()
