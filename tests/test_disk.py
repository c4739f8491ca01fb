"""Tests of disk.py as train.py and sample.py use it: --keep, latest.pt as a link, the size of a
checkpoint said up front, and a write that fails (a full disk, a read-only folder) as one line with
nothing lost.

    python -m pytest -q tests/test_disk.py

No test needs root or a full disk: the failing write is made by raising the OSError that the kernel
would raise (ENOSPC from inside torch.save, EROFS at the rename of a finished file). Root may write
into a folder whatever its permissions, so a chmod'ed folder would not fail for root.
"""

import copy
import errno
import os
import shutil
from collections import namedtuple
from pathlib import Path

import pytest
import torch

import sample
import train
from plumbing import checkpoint, disk, monitor
from tests.helpers import TINY, assert_same_training_state, build_nets, make_images, refuse_renames, run_train

# One run of 5 iterations that saves every iteration and keeps the newest 2 (grids only at the end).
KEEP_2 = ["--save_every", "1", "--keep", "2", "--sample_every", "100", *TINY]
_usage = namedtuple("usage", "total used free")     # what shutil.disk_usage returns


@pytest.fixture(scope="module")
def kept_run(tmp_path_factory):
    """(data folder, run folder) of `train.py KEEP_2 --iter 5`, shared by the tests below."""
    root = tmp_path_factory.mktemp("disk")
    data = make_images(root / "data", n=2)
    train.main(["--path", str(data), "--out", str(root / "runs"), "--iter", "5", *KEEP_2])
    return data, root / "runs" / "data"


def _continue(tmp_path, kept_run, capsys):
    """A copy of the run, continued by one iteration with --resume latest: (code, stdout, stderr)."""
    data, run = kept_run
    if not (tmp_path / "runs" / "data").exists():
        shutil.copytree(run, tmp_path / "runs" / "data")
    return run_train(["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "6", "--resume", "latest",
                      *KEEP_2], capsys)


def _contents(folder):
    return {p.name: p.read_bytes() for p in sorted(Path(folder).iterdir())}


def _one_line(err):
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def _continue_failing(tmp_path, kept_run, capsys, monkeypatch):
    """`_continue` with the failure patched into `monkeypatch`, undone after: the run exits with status
    1 and one line on stderr (returned), and the checkpoints keep their bytes (no temporary file)."""
    before = _contents(kept_run[1] / "checkpoints")
    code, _, err = _continue(tmp_path, kept_run, capsys)
    monkeypatch.undo()
    line = _one_line(err)
    assert code == 1
    assert _contents(tmp_path / "runs" / "data" / "checkpoints") == before
    return line


@pytest.mark.slow
def test_keep_leaves_the_newest_checkpoints_and_resume_stays_exact(tmp_path, kept_run, capsys, monkeypatch):
    """--save_every 1 --keep 2 for 5 iterations leaves 000004.pt, 000005.pt and latest.pt, a hard link
    to 000005.pt. Resuming from the kept 000004.pt ends at the same networks and Adam states. The line
    at start gives the size of one checkpoint (estimated from the tensors: within 0.1% of the real
    file), and warns when the disk is clearly too small (here made to say 1 KB free); the run still runs."""
    data, run = kept_run
    ckpts = run / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["000004.pt", "000005.pt", "latest.pt"]
    assert os.path.samefile(ckpts / "latest.pt", ckpts / "000005.pt")
    size = (ckpts / "latest.pt").stat().st_size
    G, D = build_nets(128, 8, 8)
    assert abs(disk.checkpoint_bytes((G, D, copy.deepcopy(G))) - size) < 1e-3 * size

    monkeypatch.setattr(shutil, "disk_usage", lambda path: _usage(10 ** 9, 10 ** 9 - 1000, 1000))
    code, out, _ = run_train(["--path", str(data), "--out", str(tmp_path), "--iter", "5",
                              "--resume", str(ckpts / "000004.pt"), *KEEP_2], capsys)
    line = next(s for s in out.splitlines() if s.startswith("disk:"))
    assert f"disk: one checkpoint {size / 1e6:.1f} MB" in line, line
    assert "1.0 KB free" in line and "WARNING: this will not fit" in line, line
    assert code == 0 and "resumed from iteration 4" in out
    a, b = (torch.load(r / "checkpoints" / "latest.pt", weights_only=True) for r in (run, tmp_path / "data"))
    assert a["iteration"] == b["iteration"] == 5
    assert_same_training_state(a, b)


@pytest.mark.slow
def test_full_disk_at_a_checkpoint_is_one_line_and_loses_nothing(tmp_path, kept_run, capsys, monkeypatch):
    """No space left while torch.save writes 000006.pt: exit status 1, one line naming the file, the OS
    error and the last good checkpoint; the checkpoints keep their bytes, no temporary file is left,
    and --resume latest (once there is space) continues from iteration 5."""
    ckpts = tmp_path / "runs" / "data" / "checkpoints"

    def full_disk(obj, f):
        f.write(b"the first part of a checkpoint")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(torch, "save", full_disk)
    line = _continue_failing(tmp_path, kept_run, capsys, monkeypatch)
    assert f"cannot write {ckpts / '000006.pt'}: No space left on device (ENOSPC)" in line, line
    assert f"the last good checkpoint is {ckpts / 'latest.pt'} (iteration 5)" in line and "--resume latest" in line
    code, out, _ = _continue(tmp_path, kept_run, capsys)
    assert code == 0 and "resumed from iteration 5" in out
    assert checkpoint.load_checkpoint(ckpts / "latest.pt")["iteration"] == 6
    assert sorted(p.name for p in ckpts.iterdir()) == ["000005.pt", "000006.pt", "latest.pt"]


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux), whose writes fail with ENOSPC")
def test_full_disk_at_the_loss_log_is_one_line_and_loses_nothing(tmp_path, kept_run, capsys, monkeypatch):
    """log.jsonl's filesystem is full (its file is /dev/full, which the kernel answers with ENOSPC at
    the first flush): exit status 1, one line naming log.jsonl, the OS error and the last good
    checkpoint; the checkpoints keep their bytes."""
    run = tmp_path / "runs" / "data"
    monkeypatch.setattr(monitor, "open", lambda path, mode: open("/dev/full", mode), raising=False)
    line = _continue_failing(tmp_path, kept_run, capsys, monkeypatch)
    assert f"cannot write {run / 'log.jsonl'}: No space left on device (ENOSPC)" in line, line
    assert f"the last good checkpoint is {run / 'checkpoints' / 'latest.pt'} (iteration 5)" in line


def test_read_only_folder_at_a_grid_is_one_line_and_loses_nothing(tmp_path, kept_run, capsys, monkeypatch):
    """images/ turns read-only (EROFS when the finished grid is renamed into it): exit status 1, one
    line naming the grid; its temporary file is removed and the checkpoints keep their bytes."""
    images = tmp_path / "runs" / "data" / "images"
    refuse_renames(monkeypatch, lambda dst: dst.parent == images, errno.EROFS)
    line = _continue_failing(tmp_path, kept_run, capsys, monkeypatch)
    assert f"cannot write {images / '000006_samples.png'}: Read-only file system (EROFS)" in line, line
    assert f"{images.parent / 'checkpoints' / 'latest.pt'} (iteration 5)" in line
    assert sorted(p.name for p in images.iterdir()) == ["000005_recons.png", "000005_samples.png", "progress.gif"]


def test_keep_newest_deletes_only_older_numbered_checkpoints(tmp_path):
    """keep 2 at iteration 4: 1-2 go; 3, 4 stay, and so do 5-6 (from a longer run this one resumed
    before the end of), latest.pt and other files. keep 0 deletes nothing."""
    for name in ["000001.pt", "000002.pt", "000003.pt", "000004.pt", "000005.pt", "000006.pt", "latest.pt", "x.txt"]:
        (tmp_path / name).write_bytes(name.encode())
    disk.keep_newest(tmp_path, 4, 0)
    assert len(list(tmp_path.iterdir())) == 8
    disk.keep_newest(tmp_path, 4, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "000003.pt", "000004.pt", "000005.pt", "000006.pt", "latest.pt", "x.txt"]


def test_latest_is_a_copy_where_there_are_no_hard_links(tmp_path, monkeypatch):
    """A filesystem without hard links (os.link fails): latest.pt is a whole copy, no temporary file."""
    (tmp_path / "000002.pt").write_bytes(b"checkpoint 2")
    (tmp_path / "latest.pt").write_bytes(b"checkpoint 1")

    def no_links(src, dst):
        raise OSError(errno.EPERM, os.strerror(errno.EPERM))

    monkeypatch.setattr(os, "link", no_links)
    disk.link_or_copy(tmp_path / "000002.pt", tmp_path / "latest.pt")
    assert (tmp_path / "latest.pt").read_bytes() == b"checkpoint 2"
    assert not os.path.samefile(tmp_path / "latest.pt", tmp_path / "000002.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["000002.pt", "latest.pt"]


def test_sample_full_disk_is_one_line(tmp_path, kept_run, capsys, monkeypatch):
    """sample.py with no space left for grid.png: exit status 1, one line naming it and the error; the
    images written before it are whole and no temporary file is left."""
    out = tmp_path / "samples"
    refuse_renames(monkeypatch, lambda dst: dst.name == "grid.png", errno.ENOSPC)
    with pytest.raises(SystemExit) as e:
        sample.main(["--ckpt", str(kept_run[1] / "checkpoints" / "latest.pt"), "--out", str(out), "--n", "2",
                     "--grid", "--device", "cpu"])
    line = _one_line(capsys.readouterr().err)
    assert e.value.code == 1
    assert line.startswith(f"sample.py: error: cannot write {out / 'grid.png'}: No space left on device (ENOSPC)")
    assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png"]


def test_the_disk_line_counts_its_checkpoints_in_words(tmp_path):
    """The disk line says '1 checkpoint' for one, 'N checkpoints' for more, with the size of each kept."""
    import argparse
    nets = (torch.nn.Linear(4, 4), torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    one = disk.checkpoint_bytes(nets)
    for iters, every, words in ((2, 1000, "1 checkpoint and"), (4, 1, "4 checkpoints and")):
        args = argparse.Namespace(iter=iters, save_every=every, keep=0, sample_every=1000, im_size=128)
        line = disk.disk_plan(tmp_path / "run", args, nets, 8)
        assert f": {words} " in line and f"one checkpoint {disk._size(one)}" in line, line
