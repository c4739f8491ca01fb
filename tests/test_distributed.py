"""Tests of distributed.py: train.py under `torchrun --nproc_per_node=2` on the CPU (gloo).

    python -m pytest -q tests/test_distributed.py

Two runs, each shared by the tests that read it: a 3-iteration run watched from inside every
process (the images each rank trained on, its networks, its decoders' gradients, the calls that
write files), and a run in which one rank alone is sent SIGTERM. Skipped where torch has no
torch.distributed.
"""

import json

import pytest
import torch
from PIL import Image

import sample
import train
from tests.helpers import PROJECT, make_images, torchrun


N_IMAGES = 6                      # rank 0 trains on images 0, 2, 4; rank 1 on 1, 3, 5
ARGV = ["--im_size", "128", "--ngf", "8", "--ndf", "8", "--batch_size", "4", "--iter", "3",
        "--device", "cpu", "--log_every", "1", "--save_every", "2", "--sample_every", "2",
        "--eval_every", "3", "--eval_n", "4"]
# Every test here starts torchrun with two processes: slow, run with `python -m pytest -q -m slow`.
pytestmark = pytest.mark.slow

needs_dist = pytest.mark.skipif(not torch.distributed.is_available(),
                                reason="this torch build has no torch.distributed")

# The script each torchrun process runs: train.py's own `main`, watched from outside. It records the
# images each rank's `train_step` was given, the networks before the first step and after the last,
# the decoders' gradients (local after D's real pass, averaged when opt_D steps), and every call that
# writes a file; then saves all of it to rank{RANK}.pt.
OBSERVER = '''
import os, sys
import torch
sys.path.insert(0, {project!r})
from plumbing import speed
import train

rank = int(os.environ["RANK"])
seen, calls, first, now = [], [], {{}}, {{}}
local_grads, averaged_grads = [], []

def states(G, D):
    G, D = train.unwrap(G), train.unwrap(D)
    return {{"G": {{k: v.detach().clone() for k, v in G.state_dict().items()}},
             "D": {{k: v.detach().clone() for k, v in D.state_dict().items()}},
             "G_params": [n for n, _ in G.named_parameters()],
             "D_params": [n for n, _ in D.named_parameters()]}}

def decoder_grads():
    return {{n: p.grad.clone() for n, p in train.unwrap(now["D"]).named_parameters() if n.startswith("decoder_")}}

def watched_step(G, D, opt_G, opt_D, real, *rest, **kw):
    if not first:
        first.update(states(G, D))
        with torch.random.fork_rng():
            first["draw"] = torch.randn(4)               # this rank's next random numbers
    # Each training image is one flat background colour: its red value (corner pixel, the same
    # after a left-right flip) names the image.
    seen.append(((real[:, 0, 0, 0] + 1) * 127.5).round().long().tolist())
    now.update(G=G, D=D, opt_D=opt_D, backwards=0)
    return step(G, D, opt_G, opt_D, real, *rest, **kw)

def watched_backward(ctx, loss, opt):
    backward(ctx, loss, opt)
    now["backwards"] += 1
    if now["backwards"] == 1:                           # D's real pass: only this rank's gradients
        local_grads.append(decoder_grads())

def watched_opt_step(ctx, opt):
    if opt is now["opt_D"]:                             # after D's fake pass: averaged over the ranks
        averaged_grads.append(decoder_grads())
    opt_step(ctx, opt)

def watched(name):
    f = getattr(train, name)
    def g(*a, **k):
        calls.append(name)
        return f(*a, **k)
    setattr(train, name, g)

step, train.train_step = train.train_step, watched_step
backward, speed.StepContext.backward = speed.StepContext.backward, watched_backward
opt_step, speed.StepContext.step = speed.StepContext.step, watched_opt_step
for name in ("write_checkpoints", "save_samples", "sample_uint8"):
    watched(name)
train.main(sys.argv[1:])
torch.save({{"rank": rank, "world": int(os.environ["WORLD_SIZE"]), "seen": seen, "calls": calls,
            "first": first, "last": states(now["G"], now["D"]),
            "local_grads": local_grads, "averaged_grads": averaged_grads}}, {out!r} + f"/rank{{rank}}.pt")
'''


# The script of the second run: rank 1 alone receives SIGTERM twice, as a cluster and torchrun may
# both send it, after its second iteration. Each rank writes the number of iterations it has run to
# steps{RANK}.txt after every one, and its exit code to exit{RANK}.txt when train.py returns.
SIGNALLED = '''
import os, signal, sys
sys.path.insert(0, {project!r})
import train

rank, steps = int(os.environ["RANK"]), []
step = train.train_step

def signalled_step(*a, **k):
    losses = step(*a, **k)
    steps.append(1)
    with open({out!r} + f"/steps{{rank}}.txt", "w") as f:
        f.write(str(len(steps)))
    if rank == 1 and len(steps) == 2:
        os.kill(os.getpid(), signal.SIGTERM)
        os.kill(os.getpid(), signal.SIGTERM)
    return losses

train.train_step = signalled_step
try:
    train.main(sys.argv[1:])
    code = 0
except SystemExit as e:
    code = e.code
with open({out!r} + f"/exit{{rank}}.txt", "w") as f:
    f.write(f"{{code}} {{len(steps)}}")
raise SystemExit(code)
'''


def red_of(i):
    return 30 + 40 * i                 # background red of training image i: 30, 70, ..., 230


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """One 3-iteration run of train.py under `torchrun --nproc_per_node=2` (gloo), shared by the tests.
    Returns (root, run folder, torchrun's CompletedProcess, [rank 0's record, rank 1's record])."""
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    root = tmp_path_factory.mktemp("ddp")
    data = make_images(root / "data", N_IMAGES, size=128, centred=True,     # the background's red names the image
                       background=lambda i, rng: (red_of(i), *rng.integers(0, 256, 2)))
    script = root / "observer.py"
    script.write_text(OBSERVER.format(project=str(PROJECT), out=str(root)))
    proc = torchrun(script, ["--path", str(data), "--out", str(root / "runs"), *ARGV])
    records = [torch.load(root / f"rank{r}.pt", weights_only=True) if (root / f"rank{r}.pt").exists()
               else None for r in range(2)]
    return root, root / "runs" / "data", proc, records


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A second torchrun run (of --iter 50) in which only rank 1 is signalled, after iteration 2."""
    if not torch.distributed.is_available():
        pytest.skip("this torch build has no torch.distributed")
    root = tmp_path_factory.mktemp("ddp_stopped")
    data = make_images(root / "data", N_IMAGES, size=128, centred=True,
                       background=lambda i, rng: (red_of(i), *rng.integers(0, 256, 2)))
    script = root / "signalled.py"
    script.write_text(SIGNALLED.format(project=str(PROJECT), out=str(root)))
    proc = torchrun(script, ["--path", str(data), "--out", str(root / "stopped"),
                             *ARGV, "--iter", "50", "--log_every", "5", "--save_every", "50",
                             "--sample_every", "50", "--eval_every", "0"])

    def read(name):
        return (root / name).read_text().split() if (root / name).exists() else None
    codes = [read(f"exit{r}.txt") for r in range(2)]
    steps = [read(f"steps{r}.txt") for r in range(2)]
    return root / "stopped" / "data", proc, codes, steps


@needs_dist
def test_two_processes_write_once_and_resume_in_one(two_process_run, tmp_path, capsys):
    """Both ranks finish; only rank 0 logs, samples and saves; its checkpoint
    continues in a single process (--resume) and samples with sample.py."""
    root, run, proc, records = two_process_run
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert [r["rank"] for r in records] == [0, 1] and all(r["world"] == 2 for r in records)
    # Rank 0 wrote everything once; rank 1 never called a function that writes a file.
    assert records[1]["calls"] == []
    assert sorted(records[0]["calls"]) == sorted(["save_samples", "write_checkpoints", "sample_uint8",
                                                  "save_samples", "write_checkpoints"])
    assert sorted(p.name for p in run.iterdir()) == ["args.json", "checkpoints", "images", "log.jsonl"]
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["000002.pt", "000003.pt", "best.pt", "latest.pt"]
    assert sorted(p.name for p in (run / "images").iterdir()) == [
        "000002_recons.png", "000002_samples.png", "000003_recons.png", "000003_samples.png", "progress.gif",
        "swd.png"]                     # the score curve, redrawn at the evaluation of iteration 3
    rows = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["iter"] for r in rows if "eval" not in r] == [1, 2, 3]
    assert [r["iter"] for r in rows if "eval" in r] == [3]
    assert proc.stdout.count("done: 3 iterations") == 1 and proc.stdout.count("data: 6 images") == 1
    assert "2 processes" in proc.stdout
    assert json.loads((run / "args.json").read_text())["batch_size"] == 4     # the global batch

    # The checkpoint holds rank 0's networks (G, D identical on both ranks, see the next test).
    st = torch.load(run / "checkpoints" / "latest.pt", weights_only=True)
    assert st["iteration"] == 3
    assert all(torch.equal(st["G"][k], records[0]["last"]["G"][k]) for k in st["G"])
    assert all(torch.equal(st["D"][k], records[0]["last"]["D"][k]) for k in st["D"])

    # One process continues it, and sample.py reads it.
    out = tmp_path / "resumed"
    train.main(["--path", str(root / "data"), "--out", str(out), *ARGV, "--iter", "4",
                "--resume", str(run / "checkpoints" / "latest.pt")])
    printed = capsys.readouterr().out
    assert "resumed from iteration 3" in printed and "2 processes" not in printed
    resumed = torch.load(out / "data" / "checkpoints" / "latest.pt", weights_only=True)
    assert resumed["iteration"] == 4
    assert any(not torch.equal(resumed["G"][k], st["G"][k]) for k in st["G"])
    sample.main(["--ckpt", str(run / "checkpoints" / "latest.pt"), "--n", "2", "--out", str(tmp_path / "samples")])
    assert sorted(p.name for p in (tmp_path / "samples").iterdir()) == ["000000.png", "000001.png"]
    with Image.open(tmp_path / "samples" / "000001.png") as im:
        assert im.size == (128, 128)


@needs_dist
def test_gradients_are_averaged_across_ranks(two_process_run):
    """DDP averages the gradients: after 3 iterations every parameter of G and D (decoders included) is identical
    on both ranks and has moved from its initial value, and the ranks trained on different images."""
    _, _, proc, records = two_process_run
    assert proc.returncode == 0, f"torchrun failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    r0, r1 = records
    # Different data: each rank drew its batches (2 images each) from its own half of the set.
    assert all(len(batch) == 2 for r in records for batch in r["seen"]) and len(r0["seen"]) == 3
    seen0 = {i for batch in r0["seen"] for i in batch}
    seen1 = {i for batch in r1["seen"] for i in batch}
    assert seen0 <= {red_of(i) for i in (0, 2, 4)} and seen1 <= {red_of(i) for i in (1, 3, 5)}
    assert len(seen0) >= 2 and len(seen1) >= 2
    assert not torch.equal(r0["first"]["draw"], r1["first"]["draw"])          # and its own noise

    for net in ("G", "D"):
        names = r0["first"][f"{net}_params"]
        assert names == r1["first"][f"{net}_params"] and len(names) > 10
        for n in names:
            assert torch.equal(r0["first"][net][n], r1["first"][net][n]), f"{net}.{n} started differently"
            assert torch.equal(r0["last"][net][n], r1["last"][net][n]), f"{net}.{n} differs between ranks"
            assert not torch.equal(r0["last"][net][n], r0["first"][net][n]), f"{net}.{n} never changed"
        # Buffers: spectral norm's vectors follow the (identical) weights, so they agree too. BatchNorm's
        # running statistics may differ: on CPU each rank normalises by its own batch, and DDP only
        # copies rank 0's buffers to the others at the start of some forwards (after a synchronised
        # one); they are used in eval mode only, and the checkpoint holds rank 0's.
        for n in set(r0["last"][net]) - set(names):
            if not n.endswith(("running_mean", "running_var")):
                assert torch.equal(r0["last"][net][n], r1["last"][net][n]), f"{net}.{n} differs between ranks"

    # D's decoders run in the real pass only, which each rank back-propagates locally (no_sync); their
    # gradients must still be averaged, in the fake pass's backward, at every iteration.
    assert len(r0["local_grads"]) == len(r0["averaged_grads"]) == 3
    for it in range(3):
        local0, local1 = r0["local_grads"][it], r1["local_grads"][it]
        assert set(local0) == set(r0["averaged_grads"][it]) and any(n.startswith("decoder_part") for n in local0)
        for n in local0:
            assert not torch.equal(local0[n], local1[n]), f"iteration {it + 1}: {n} had the same local gradient"
            mean = (local0[n] + local1[n]) / 2
            for r in records:
                torch.testing.assert_close(r["averaged_grads"][it][n], mean, rtol=1e-5, atol=1e-7,
                                           msg=lambda m: f"iteration {it + 1}, {n}: {m}")


@needs_dist
def test_a_signal_to_one_rank_stops_all_after_that_iteration(stopped_run):
    """Ctrl-C/SIGTERM under torchrun: the ranks agree on it after every iteration, so all stop after the
    same one (not at the next log iteration), rank 0 saves it, and a repeated signal is not an abort.

    Rank 0 was never signalled: that it stops after iteration 2 and saves it is the agreement. Every
    rank stops after iteration 2, but whether each gets to return from train.py depends on the
    torchrun: some (2.4) send SIGTERM to the other workers as soon as one has exited with 130, after
    their signal handler is gone, which ends them before they write their exit code. Rank 0 has
    saved by then: the ranks leave together, after its save (distributed.shutdown's barrier)."""
    run, proc, codes, steps = stopped_run
    detail = f"[exit code, iterations] of each rank: {codes}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert steps == [["2"], ["2"]], detail                    # no rank ran a third iteration
    assert all(c in (["130", "2"], None) for c in codes), detail    # returned after the stop, or ended by torchrun
    assert codes != [None, None], detail                      # at least the first to leave returned 130
    assert proc.returncode != 0                               # torchrun reports the workers' exit 130
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["latest.pt"]
    assert torch.load(run / "checkpoints" / "latest.pt", weights_only=True)["iteration"] == 2
    assert proc.stderr.count("interrupted: saved iteration 2") == 1
