"""Tests of the device choice shared by the five scripts (plumbing/cli.py): `--device auto` tries CUDA,
then Apple's MPS, then the CPU; a device named on the command line that is absent is refused in one
line (exit 2) by every script; and the speed options' defaults on MPS.

    python -m pytest -q tests/test_device.py

No MPS machine runs these tests: the availability checks are replaced where the choice is tested.
"""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import ablation
import bench
import metrics
import sample
import train
from plumbing import cli, speed
from tests.helpers import BENCH_ARGS, TINY, make_images

HERE = Path(__file__).resolve().parents[1]


def _available(monkeypatch, cuda, mps):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize("cuda, mps, chosen", [(True, True, "cuda"), (True, False, "cuda"),
                                               (False, True, "mps"), (False, False, "cpu")])
def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, chosen):
    _available(monkeypatch, cuda, mps)
    assert cli.resolve_device("auto") == torch.device(chosen)
    assert cli.resolve_device("cpu") == torch.device("cpu")          # the CPU is always there


@pytest.mark.parametrize("name, words", [("mps", "MPS backend"), ("cuda", "no CUDA device")])
def test_an_absent_device_asked_for_is_refused(monkeypatch, name, words):
    """A device named explicitly is never replaced by another: one line saying what is missing."""
    _available(monkeypatch, cuda=False, mps=False)
    with pytest.raises(cli.UsageError, match=words) as e:
        cli.resolve_device(name)
    assert str(e.value).startswith(f"--device {name}: ") and "\n" not in str(e.value)


def _exit_code(main, argv):
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code


def test_every_script_refuses_an_absent_mps_in_one_line(tmp_path, capsys, monkeypatch):
    """train.py, sample.py, metrics.py, bench.py and ablation.py all accept `--device mps`, and all
    refuse it (exit 2, one line naming MPS, no traceback) where it is absent, before any work."""
    _available(monkeypatch, cuda=False, mps=False)
    data = make_images(tmp_path / "data", n=2)
    ckpt = tmp_path / "latest.pt"
    torch.save({}, ckpt)              # never read: the device is refused first
    runs = {
        "train.py": (train.main, ["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "1", *TINY]),
        "sample.py": (sample.main, ["--ckpt", str(ckpt), "--out", str(tmp_path / "samples")]),
        "metrics.py": (metrics.main, [str(data), str(data), "--no_fid"]),
        "bench.py": (bench.main, [*BENCH_ARGS, "--iters", "1", "--warmup", "0", "--no_flops"]),
        "ablation.py": (ablation.main, ["--path", str(data), "--out", str(tmp_path / "abl"), "--iter", "1"]),
    }
    for script, (main, argv) in runs.items():
        code = _exit_code(main, [*argv, "--device", "mps"])
        out, err = capsys.readouterr()
        lines = err.strip().splitlines()
        assert code == 2 and len(lines) == 1, (script, code, err)
        assert lines[0].startswith(f"{script}: error: --device mps: ") and "MPS backend" in lines[0], (script, err)
    assert not any((tmp_path / d).exists() for d in ("runs", "samples", "abl"))


@pytest.mark.slow
@pytest.mark.skipif(torch.backends.mps.is_available(), reason="this machine has MPS")
def test_device_mps_in_a_real_process(tmp_path):
    """As a shell sees it, without replacing anything: `python train.py --device mps` on a machine
    without MPS exits 2 with one line and no traceback."""
    data = make_images(tmp_path / "data", n=2)
    r = subprocess.run([sys.executable, "train.py", "--path", str(data), "--out", str(tmp_path / "runs"),
                        "--device", "mps"], cwd=HERE, capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--device mps" in lines[0] and "Traceback" not in r.stderr


def test_speed_options_on_mps(monkeypatch):
    """On MPS every speed option is off unless asked for (none measured there), and --amp is refused
    where this PyTorch has no autocast for the device."""
    args = argparse.Namespace(fast_upsample=None, channels_last=None, amp=None, compile=None)
    speed.resolve_speed_flags(args, torch.device("mps"))
    assert vars(args) == {"fast_upsample": False, "channels_last": False, "amp": False, "compile": False}
    monkeypatch.setattr(torch.amp, "is_autocast_available", lambda device_type: device_type != "mps")
    with pytest.raises(cli.UsageError, match="--amp: this PyTorch has no autocast on mps"):
        speed.resolve_speed_flags(argparse.Namespace(fast_upsample=None, channels_last=None, amp=True,
                                                     compile=None), torch.device("mps"))
