"""What a person sees of a run, and how it stops: the progress line, the loss log, the sample and
reconstruction grids, Ctrl-C, and a loss that becomes NaN.

A reader of the paper may skip this file. It holds no part of the method, only what a training tool
needs around it:
- `Progress`: one line with the iteration, speed, time left and the mean losses since the last line;
- `LossLog`: losses summed on the device (reading a GPU number makes the host wait, so that happens
  once per --log_every iterations), the first iteration whose loss was NaN or inf, log.jsonl, and
  what watch.py adds (the CPU hint, images/progress.gif, TensorBoard);
- `StopSignal`: Ctrl-C or a cluster's SIGTERM asks the run to stop after the current iteration and
  save; a second Ctrl-C (not one sent with the first) aborts at once;
- `save_samples`: the grids of images/ (EMA samples from fixed latents, D's reconstructions).
It imports the paper's discriminator, images.py, disk.py and watch.py, nothing else of ours.
"""

import json
import signal
import sys
import time
from pathlib import Path

import torch

from discriminator import crop_quarter, resize_to_128
from plumbing.disk import SAMPLE_TILE, WriteFailed, describe
from plumbing.images import save_grid, to_uint8
from plumbing.watch import Watch, duration


class Diverged(Exception):
    """A loss became NaN or inf; the message says where the last good checkpoint is."""


def clock(seconds):
    """Hours, minutes and seconds as on a stopwatch: 30 hours left is '30:00:00' (not a time of day)."""
    h, rest = divmod(int(seconds), 3600)
    return f"{h:02d}:{rest // 60:02d}:{rest % 60:02d}"


class Progress:
    """One line that shows iteration, speed, time left and losses; rewritten in place on a terminal."""

    def __init__(self, total, start):
        self.total, self.t0, self.it0 = total, time.time(), start
        self.tty = sys.stdout.isatty()

    def show(self, it, losses, score=None):
        rate = (it - self.it0) / max(time.time() - self.t0, 1e-9)
        eta = (self.total - it) / rate if rate > 0 else float("inf")
        eta_s = clock(eta) if eta < 360000 else duration(eta) if rate > 0 else "--"   # over 100 h: '5 days 2 h'
        speed = f"{rate:.2f} it/s" if rate >= 1 else f"{1 / max(rate, 1e-9):.1f} s/it"   # slow: seconds each
        line = (f"iter {it}/{self.total}  {speed}  ETA {eta_s}  "
                f"D real {losses['d_real']:.3f} fake {losses['d_fake']:.3f} recon {losses['recon']:.3f}  "
                f"G {losses['g']:.3f}" + (f"  SWD {score:.2f}" if score is not None else ""))
        print(("\r" + line + "\x1b[K") if self.tty else line, end="" if self.tty else "\n", flush=True)
        return rate

    def close(self):
        if self.tty:
            print()


# When to stop: D "may be winning" once the score has got worse this many evaluations in a row while
# D's hinge loss on reals (whose margin is 0.8-1) is below D_REAL_FLOOR: D separates the few reals
# from everything else, the overfitting the paper's introduction warns of.
WORSE_IN_A_ROW = 3
D_REAL_FLOOR = 0.1


class ScoreWatch:
    """--eval_every's scores (lower is better), read for a user's two questions: is this the best
    generator so far, and is D winning? `update` takes each evaluation's score and D's latest loss on
    reals; it returns (a new best?, the warning line or None). `history` holds (iteration, score) in
    order, including a resumed run's earlier evaluations."""

    def __init__(self, history=()):
        self.history = list(history)
        self.best = min((s for _, s in self.history), default=float("inf"))

    def update(self, it, score, d_real):
        self.history.append((it, score))
        improved = score < self.best
        self.best = min(self.best, score)
        last = [s for _, s in self.history[-(WORSE_IN_A_ROW + 1):]]
        worse = len(last) == WORSE_IN_A_ROW + 1 and all(b > a for a, b in zip(last, last[1:]))
        if not (worse and d_real < D_REAL_FLOOR):
            return improved, None
        first = self.history[-(WORSE_IN_A_ROW + 1)][0]
        return improved, (f"note: the score got worse at each of the last {WORSE_IN_A_ROW} evaluations "
                          f"(iterations {first}-{it}) while D's loss on reals fell to {d_real:.3f}: D may be "
                          f"winning, memorising the few training images. checkpoints/best.pt keeps the best "
                          f"generator so far (iteration {self.best_iteration()}); stop here, or try more "
                          f"images, --policy color,translation,cutout, or a lower --lr")

    def best_iteration(self):
        return min(self.history, key=lambda h: h[1])[0] if self.history else None


def score_history(log_path, upto):
    """(iteration, SWD) of the evaluations log.jsonl recorded up to iteration `upto` (a resumed run's)."""
    rows = []
    if Path(log_path).is_file():
        for line in Path(log_path).read_text().splitlines():
            try:
                row = json.loads(line)
            except ValueError:       # a line cut short by a crash
                continue
            if "eval" in row and row["iter"] <= upto and row["eval"].get("swd") is not None:
                rows.append((row["iter"], row["eval"]["swd"]))
    return rows


class LossLog:
    """Sums the step's losses on the device; `write` turns the means into a progress line and a row
    of log.jsonl. Every process records its first NaN/inf iteration (`first_bad`, -1 for none).
    `run_dir` is the run folder on rank 0 (None on the other processes, which only sum): there it
    also keeps a watch.Watch (the CPU hint after the first line, progress.gif, TensorBoard)."""

    def __init__(self, run_dir, args, start, device):
        self.path = Path(run_dir or ".") / "log.jsonl"
        self.file = open(self.path, "a") if run_dir is not None else None
        self.progress = Progress(args.iter, start) if run_dir is not None else None
        self.watch = Watch(args, device, run_dir, start) if run_dir is not None else None
        self.checkpoint = Path(run_dir or ".") / "checkpoints" / "latest.pt"
        self.first_bad = torch.full((), -1, dtype=torch.long, device=device)
        self.totals, self.count = None, 0
        self.means = {}                   # the losses of the last progress line
        self.scores = ScoreWatch(score_history(self.path, start) if run_dir is not None else ())

    def add(self, losses, it):
        stacked = torch.stack(list(losses.values()))                 # (4,) still on the device
        self.first_bad = torch.where((self.first_bad < 0) & ~torch.isfinite(stacked).all(),
                                     torch.full_like(self.first_bad, it), self.first_bad)
        self.totals = stacked if self.totals is None else self.totals + stacked
        self.count += 1
        self.names = list(losses)

    def check_finite(self):
        bad = int(self.first_bad)
        if bad >= 0:
            raise Diverged(f"a loss became NaN or inf at iteration {bad}; training stopped. The last good "
                           f"checkpoint is {self.checkpoint} (resume with --resume latest, perhaps with a "
                           f"lower --lr)")

    def write(self, it, row=None):
        """A row of losses (the means since the last one; reset) or, with `row`, that row as given."""
        if row is None:
            means = dict(zip(self.names, (self.totals / self.count).tolist()))   # the one sync per log
            self.totals, self.count = None, 0
            if self.file is None:
                return
            self.means = means
            last = self.scores.history[-1][1] if self.scores.history else None
            rate = self.progress.show(it, means, last)
            row = {"iter": it, "time": round(time.time() - self.progress.t0, 3), "it_per_s": round(rate, 4),
                   **means}
            self.watch.logged(it, means, rate, self.progress.tty)
        if self.file is not None:
            try:
                self.file.write(json.dumps(row) + "\n")
                self.file.flush()
            except OSError as e:   # a full disk: one line naming the file (disk.resumable_writes adds where to resume)
                raise WriteFailed(f"cannot write {self.path}: {describe(e)}") from None

    def evaluated(self, it, scores):
        """metrics.score's scores at iteration `it`: a row of log.jsonl, a line, TensorBoard (rank 0).
        Returns whether SWD is the best so far (the caller writes checkpoints/best.pt); says so, and
        says when D may be winning (ScoreWatch)."""
        if self.file is None:
            return False
        self.write(it, {"iter": it, "time": round(time.time() - self.progress.t0, 3), "eval": scores})
        improved, warning = self.scores.update(it, scores["swd"], self.means.get("d_real", float("inf")))
        print(f"\neval at iteration {it}: " + ", ".join(
            f"{k} {v:.3f}" for k, v in scores.items() if k in ("swd", "fid", "kid") and v is not None)
            + ("; the best so far: checkpoints/best.pt" if improved else ""))
        if warning:
            print(warning)
        self.watch.evaluated(it, scores)
        return improved

    def add_grids(self, it):
        """The grids of iteration `it` were written: progress.gif and TensorBoard take them (rank 0)."""
        if self.watch is not None:
            self.watch.sampled(it)

    def close(self):
        if self.file is not None:
            self.progress.close()
            try:
                self.file.close()
            except OSError:   # what a failed write left in the buffer: that failure was already reported
                pass
            self.watch.close()
            self.file = None


class StopSignal:
    """`with StopSignal(say) as stop:` ... `stop.requested` becomes True at Ctrl-C or SIGTERM. A second
    Ctrl-C raises KeyboardInterrupt (abort without saving), except under torchrun, where a repeat is
    the same request (a cluster and torchrun may both send it). A repeat within SAME_REQUEST_S of the
    first is the same request too: `timeout -s INT 30m python train.py ...` signals train.py and then
    its whole process group, so train.py gets two SIGINTs at once; a person's second Ctrl-C comes later."""

    SAME_REQUEST_S = 1.0

    def __init__(self, say, repeat_aborts=True):
        self.say, self.repeat_aborts, self.requested = say, repeat_aborts, False
        self.first_at = None          # time.monotonic() of the first request

    def _on_signal(self, signum, frame):
        if self.requested:
            if self.repeat_aborts and time.monotonic() - self.first_at > self.SAME_REQUEST_S:
                raise KeyboardInterrupt
            return
        self.requested, self.first_at = True, time.monotonic()
        self.say(f"\n{signal.Signals(signum).name}: finishing this iteration, then saving "
                 f"(press Ctrl-C again to abort without saving)", file=sys.stderr, flush=True)

    def __enter__(self):
        self.old = {s: signal.signal(s, self._on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def __exit__(self, *exc):
        for s, h in self.old.items():
            signal.signal(s, h)


def fixed_inputs(G, n, seed, device):
    """(latents (n, nz), noise) for the sample grids, the same at every grid so that the grids show
    training progress. Drawn from their own generator: looking at a run never moves its RNG."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, G.nz, generator=g).to(device)
    return z, {r: [t.to(device) for t in ts] for r, ts in G.draw_noise(n, generator=g).items()}


@torch.no_grad()
def save_samples(G_ema, D, fixed, show_real, part, out_dir, iteration, y=None, chunk=16):
    """images/NNNNNN_samples.png: samples of the EMA generator (eval mode) from the fixed latents and
    noise of `fixed_inputs` (and classes `y`, (n,), with --classes), drawn `chunk` at a time so that
    a grid of many classes needs no more memory than 16 samples; each sample at most disk.SAMPLE_TILE
    (256) pixels wide, so that a run's grids stay small (full-size samples: sample.py).
    images/NNNNNN_recons.png: each row is one real image at 128x128, D's reconstruction of it
    (decoder_big), the quarter `part`, decoder_part's reconstruction of that quarter, and
    decoder_small's reconstruction (§3.2). Draws no random numbers, so looking at a run never changes it."""
    z, noise = fixed                # from `fixed_inputs`
    img = torch.cat([G_ema(z[i:i + chunk], noise={r: [t[i:i + chunk] for t in ts] for r, ts in noise.items()},
                           y=None if y is None else y[i:i + chunk])[0] for i in range(0, len(z), chunk)])
    save_grid(img, Path(out_dir) / f"{iteration:06d}_samples.png", nrow=4, max_tile=SAMPLE_TILE)
    if D.decoder_big is None:       # --no_recon: nothing to reconstruct
        return
    was_training = D.training
    D.eval()                        # running statistics: no batch-statistics update, no randomness
    real_128 = resize_to_128(show_real)
    _, _, rec = D(show_real, real_128, part=part)
    D.train(was_training)
    quarter = resize_to_128(crop_quarter(show_real, part))
    rows = torch.stack([real_128, rec["big"], quarter, rec["part"], rec["small"]], dim=1)  # (B, 5, C, 128, 128)
    save_grid(rows.flatten(0, 1).float(), Path(out_dir) / f"{iteration:06d}_recons.png", nrow=5)


@torch.no_grad()
def sample_uint8(G, n, seed, batch_size=16):
    """n samples of G (in its current mode) as uint8 (n, 3, S, S) on the CPU, for scoring. The latents
    and noise come from their own generator seeded with `seed`: scoring never moves the run's RNG."""
    device = next(G.parameters()).device
    g, out = torch.Generator().manual_seed(seed), []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        z = torch.randn(b, G.nz, generator=g).to(device)
        noise = {r: [t.to(device) for t in ts] for r, ts in G.draw_noise(b, generator=g).items()}
        out.append(to_uint8(G(z, noise=noise)[0]))
    return torch.cat(out)
