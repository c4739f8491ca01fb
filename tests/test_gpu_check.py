"""Tests of docs/gpu_check.sh, the script that checks every CUDA path on a GPU: its CPU mode runs
the same checks at toy sizes, so the script cannot fall behind the code it checks.

    python -m pytest -q tests/test_gpu_check.py
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "docs" / "gpu_check.sh"
CHECKS = ["bench_256", "bench_1024", "bench_amp", "bench_amp_fp16", "bench_compile", "bench_channels_last",
          "train", "resume_channels_last", "deterministic_resume", "stream_classes", "sample", "metrics"]
CPU_SKIPS = {"bench_amp_fp16", "bench_compile"}


def _run(*argv, work):
    env = {**os.environ, "PYTHON": sys.executable}
    return subprocess.run(["bash", str(SCRIPT), *argv, "--work", str(work)], capture_output=True, text=True,
                          env=env, timeout=900)


@pytest.mark.slow
def test_gpu_check_passes_every_check_in_its_cpu_mode(tmp_path):
    """`bash docs/gpu_check.sh --device cpu`: one line per check, in the documented order, each PASS
    (with its figures) but the two that only a GPU can run in time (SKIP); exit status 0. The figures
    say what was checked: the resume across --channels_last agrees, the --deterministic resume is
    bit for bit equal, sample.py wrote its 8 images, metrics.py scored those 8."""
    proc = _run("--device", "cpu", work=tmp_path)
    lines = [l for l in proc.stdout.splitlines() if l.startswith(("PASS ", "FAIL ", "SKIP "))]
    detail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert [l.split()[1].rstrip(":") for l in lines] == CHECKS, detail
    for line in lines:
        expected = "SKIP" if line.split()[1].rstrip(":") in CPU_SKIPS else "PASS"
        assert line.startswith(expected), detail
    figures = {l.split()[1]: l for l in lines}
    assert "agree to" in figures["resume_channels_last"] and "bit for bit equal" in figures["deterministic_resume"]
    assert "8 samples" in figures["sample"] and '"n_fake": 8' in figures["metrics"] and '"swd"' in figures["metrics"]
    assert proc.returncode == 0 and "all checks passed" in proc.stdout, detail


def test_gpu_check_refuses_a_bad_device(tmp_path):
    """A device other than cuda or cpu: one error line, exit status 2, nothing run."""
    proc = _run("--device", "tpu", work=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--device must be cuda or cpu" in proc.stderr
    assert not any(tmp_path.iterdir())
