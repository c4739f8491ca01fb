"""Tests of bench.py, the timing script: its one JSON line.

    python -m pytest -q tests/test_bench.py

That the step bench.py times computes what the baseline step (the authors' order of operations, our
networks) computes is tested in test_speed.py.
"""

import json

import pytest

import bench
from tests.helpers import BENCH_ARGS
from generator import Generator


@pytest.mark.slow
def test_bench_prints_one_json_line(capsys):
    """bench.py: one JSON line with the median and spread of seconds per iteration, images/s, peak
    memory, parameter counts, FLOPs of the step, the machine's matmul FLOP/s, and the precision."""
    bench.main(BENCH_ARGS + ["--iters", "2", "--warmup", "1"])
    out = capsys.readouterr().out.strip().splitlines()
    r = json.loads(out[-1])
    assert len(r["all_s"]) == 2 and r["min_s"] <= r["median_s"] <= r["max_s"]
    assert r["images_per_s"] == pytest.approx(2 / r["median_s"])
    assert r["params_G"] == sum(p.numel() for p in Generator(ngf=8, nz=256, im_size=128).parameters())
    assert r["peak_memory_gb"] > 0 and r["device"] == "cpu" and r["threads"] >= 1
    assert r["step_gflop"] > 1 and r["matmul_gflop_per_s"] > r["achieved_gflop_per_s"] > 0
    # Which precision ran, and why: --amp left out, so this CPU's default (bf16 where it is native).
    assert r["precision"] == ("bfloat16" if r["amp"] else "float32")
    assert r["precision_why"].startswith("default on this CPU: bf16 " + ("native" if r["amp"] else "emulated"))
