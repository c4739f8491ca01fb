"""Tests of ablation.py: the paper's Table 2, FastGAN's two ideas (SLE, §3.1; D's decoders, §3.2)
each removed in turn.

    python -m pytest -q tests/test_ablation.py

The variants must differ only in what the paper ablates: the parameters removed, the layers they
share starting equal, and the same random draws at every iteration. Most tests read one tiny
ablation run (`ablation_run`: 4 variants x 2 iterations), watched from inside by spies on
train.build_networks and train.train_step.
"""

import errno
import itertools
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ablation
from plumbing import checkpoint
import sample
import train
from tests.helpers import build_nets, make_images, refuse_renames, run_train, torch_threads
from plumbing.images import to_uint8


# -- helpers --

VARIANTS = ("baseline", "sle", "recon", "both")
FLAGS = {"baseline": (True, True), "sle": (False, True), "recon": (True, False), "both": (False, False)}
# (no_sle, no_recon) of each variant, as train.py's flags
ABLATION_TINY = ["--im_size", "128", "--ngf", "8", "--ndf", "8", "--batch_size", "2", "--device", "cpu",
                  "--n_samples", "3", "--log_every", "1", "--no_fid"]
CELL = 128 + 2  # one sample in a save_grid picture, with its 2-pixel gap


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def assert_shared_equal(a, b, what):
    """Two variants' state dicts (parameters and buffers): the names only one of them has are SLE or
    decoder weights, and every name both have holds an equal tensor."""
    only_one = set(a) ^ set(b)
    assert all(k.startswith(("sle.", "decoder_")) for k in only_one), f"{what}: unexpected {only_one}"
    shared = set(a) & set(b)
    assert len(shared) > 20, what
    unequal = sorted(k for k in shared if not torch.equal(a[k], b[k]))
    assert not unequal, f"{what}: shared layers start different: {unequal[:5]}"


def table_rows(table_md):
    """The data rows of table.md as lists of cells."""
    rows = [line for line in table_md.splitlines() if line.startswith("| ")]
    return [[c.strip() for c in line.strip("|").split("|")] for line in rows[1:]]   # rows[0]: the header


@pytest.fixture
def one_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def big_nets():
    """Three variants at 256x256 with the paper's widths (ngf = ndf = 64), each built by
    train.build_networks right after torch.manual_seed(0), as train.py does: full FastGAN ("both"),
    --no_sle ("recon") and --no_recon ("sle")."""
    nets = {}
    with torch.random.fork_rng(devices=[]), torch_threads(1):
        for v in ("both", "recon", "sle"):
            no_sle, no_recon = FLAGS[v]
            torch.manual_seed(0)
            nets[v] = build_nets(256, 64, 64, no_sle=no_sle, no_recon=no_recon)
    return nets


@pytest.fixture(scope="module")
def ablation_run(tmp_path_factory):
    """One tiny ablation (4 variants x 2 iterations), shared by several tests. While it runs, spies
    record what each variant's train.py run actually did: its networks right after
    train.build_networks, and at every train_step the random state on entry and on exit, and the
    real batch it was given."""
    root = tmp_path_factory.mktemp("ablation")
    data = make_images(root / "data", n=3)
    argv = ["--path", str(data), "--out", str(root / "runs"), "--iter", "2", *ABLATION_TINY]
    built, steps = {}, {}
    build, step = train.build_networks, train.train_step

    def build_spy(*a, **k):
        G, D = build(*a, **k)
        key = (a[0].no_sle, a[0].no_recon)
        if key not in built:   # the run's own call; ablation.py builds networks again to count parameters
            built[key] = ({n: t.clone() for n, t in G.state_dict().items()},
                          {n: t.clone() for n, t in D.state_dict().items()})
        return G, D

    def step_spy(G, D, opt_G, opt_D, real, args, *a, **k):
        entry = torch.get_rng_state().clone()
        losses = step(G, D, opt_G, opt_D, real, args, *a, **k)
        steps.setdefault((args.no_sle, args.no_recon), []).append((entry, real.clone(), torch.get_rng_state().clone()))
        return losses

    with pytest.MonkeyPatch.context() as mp, torch_threads(1):
        mp.setattr(train, "build_networks", build_spy)
        mp.setattr(train, "train_step", step_spy)
        code, out, err = run_train(argv, main=ablation.main)
    assert code == 0, err
    return {"root": root, "data": data, "argv": argv, "dir": root / "runs" / "ablation-data", "out": out,
            "built": {v: built.get(FLAGS[v]) for v in VARIANTS},
            "steps": {v: steps.get(FLAGS[v], []) for v in VARIANTS}}


# -- tests --

@pytest.mark.slow
def test_parameter_differences_at_256(big_nets):
    """At 256x256, ngf = ndf = 64, --no_sle removes 2,774,016 parameters from G
    (its three SLE modules, §3.1) and 1,032,192 from D (its three, Fig. 4); --no_recon removes D's
    decoders, 3,139,488 (§3.2), and leaves G alone."""
    n = {v: tuple(map(n_params, nets)) for v, nets in big_nets.items()}
    assert n["both"][0] - n["recon"][0] == 2_774_016           # --no_sle, G
    assert n["both"][1] - n["recon"][1] == 1_032_192           # --no_sle, D
    assert n["both"][1] - n["sle"][1] == 3_139_488             # --no_recon, D
    assert n["both"][0] == n["sle"][0]                         # --no_recon leaves G as it is


@pytest.mark.slow
def test_shared_layers_start_equal(big_nets, ablation_run, one_thread):
    """From one seed, every layer two variants share starts with the same weights and buffers: for
    networks built by train.build_networks after torch.manual_seed(0) (256x256, widths 64), and for
    the networks the four train.py runs of the tiny ablation actually built."""
    for source, nets in (("build_networks", big_nets), ("train.py runs", ablation_run["built"])):
        for a, b in itertools.combinations(list(nets), 2):
            for i, net in enumerate("GD"):
                sd_a, sd_b = nets[a][i], nets[b][i]
                sd_a = sd_a if isinstance(sd_a, dict) else sd_a.state_dict()
                sd_b = sd_b if isinstance(sd_b, dict) else sd_b.state_dict()
                assert_shared_equal(sd_a, sd_b, f"{source}: {net} of {a} vs {b}")


def same_draws(steps_a, steps_b, n_steps=None):
    """Do two runs enter their steps in the same random state, with the same batch, and leave them
    in the same random state? (Same entry state and same code: same latents, noise, augmentation.)"""
    for (ea, ra, xa), (eb, rb, xb) in list(zip(steps_a, steps_b))[:n_steps]:
        if not (torch.equal(ea, eb) and torch.equal(ra, rb) and torch.equal(xa, xb)):
            return False
    return len(steps_a) == len(steps_b)


@pytest.mark.slow
def test_variants_draw_the_same_inputs(ablation_run):
    """Same seed, same data: all four variants get the same first batch and enter their first step in
    the same random state (so the same latents, injected noise and DiffAugment draws). Variants with
    the same decoder setting (baseline/sle, recon/both) stay in step at every iteration."""
    steps = ablation_run["steps"]
    assert all(len(s) == 2 for s in steps.values())
    first = {v: steps[v][0] for v in VARIANTS}
    for v in VARIANTS[1:]:
        assert torch.equal(first[v][0], first["baseline"][0]), v   # random state entering step 1
        assert torch.equal(first[v][1], first["baseline"][1]), v   # the first real batch
    assert same_draws(steps["baseline"], steps["sle"])
    assert same_draws(steps["recon"], steps["both"])


@pytest.mark.slow
def test_all_variants_draw_the_same_inputs_every_step(ablation_run):
    """All four variants draw the same random numbers at every iteration: they differ only in what
    the paper ablates."""
    steps = ablation_run["steps"]
    for v in VARIANTS[1:]:
        assert same_draws(steps["baseline"], steps[v]), v


@pytest.mark.slow
def test_writes_table_samples_and_results(ablation_run, one_thread):
    """table.md has the four variants with parameter counts equal to
    train.build_networks'; samples.png holds one row per variant, each the EMA generator of that
    variant on the same latents; results.json has every number; progress lines were printed."""
    run = ablation_run
    rows = table_rows((run["dir"] / "table.md").read_text())
    assert [r[0] for r in rows] == list(VARIANTS)
    for r in rows:
        no_sle, no_recon = FLAGS[r[0]]
        assert r[1:3] == ["no" if no_sle else "yes", "no" if no_recon else "yes"]
        with torch.random.fork_rng(devices=[]):
            G, D = build_nets(128, 8, 8, no_sle=no_sle, no_recon=no_recon)
        assert (int(r[3].replace(",", "")), int(r[4].replace(",", ""))) == (n_params(G), n_params(D))
        assert float(r[5]) > 0 and float(r[6]) >= 0 and float(r[7]) >= 0      # s/it, SWD raw, SWD EMA
        assert r[8] == r[9] == "n/a"                                            # --no_fid
    assert "--iter 2" in (run["dir"] / "table.md").read_text()

    grid = np.asarray(Image.open(run["dir"] / "samples.png").convert("RGB"))
    assert grid.shape == (4 * CELL + 2, 3 * CELL + 2, 3)     # 4 rows of n_samples = 3
    for row, v in enumerate(VARIANTS):
        G = sample.load_generator(run["dir"] / v / "seed0" / "checkpoints" / "latest.pt", log=lambda m: None)
        expected = to_uint8(sample.generate(G, *sample.draw_inputs(G, 3, 0)))   # (3, 3, 128, 128)
        for col in range(3):
            y, x = 2 + row * CELL, 2 + col * CELL
            assert np.array_equal(grid[y:y + 128, x:x + 128], expected[col].permute(1, 2, 0).numpy()), (v, col)

    res = json.loads((run["dir"] / "results.json").read_text())
    assert res["iterations"] == 2 and res["samples_png_rows"] == list(VARIANTS)
    for r, v in zip(res["variants"], VARIANTS):
        assert r["variant"] == v and r["iteration"] == 2 and r["s_per_it"] > 0
        assert np.isfinite(r["scores"]["raw"]["swd"]) and np.isfinite(r["scores"]["ema"]["swd"])
    for k, v in enumerate(VARIANTS, 1):
        assert f"[{k}/4] {v}" in run["out"] and f"ablation-data/{v}/seed0/checkpoints" in run["out"]
    assert run["out"].count("training from scratch") == 4 and run["out"].count("done: 2 iterations") == 4


@pytest.mark.slow
def test_checkpoints_sample_in_sample_py(ablation_run, tmp_path, one_thread):
    """Each variant is an ordinary train.py run: its checkpoint is at iteration 2, has the variant's
    flags, and sample.py draws images from it."""
    for v in VARIANTS:
        ckpt = ablation_run["dir"] / v / "seed0" / "checkpoints" / "latest.pt"
        state = checkpoint.load_checkpoint(ckpt)
        assert state["iteration"] == 2
        assert (state["args"]["no_sle"], state["args"]["no_recon"]) == FLAGS[v]
        out = tmp_path / v
        code, _, err = run_train(["--ckpt", str(ckpt), "--n", "2", "--out", str(out), "--device", "cpu"], main=sample.main)
        assert code == 0, err
        assert sorted(p.name for p in out.iterdir()) == ["000000.png", "000001.png"]


@pytest.mark.slow
def test_resumes_where_it_stopped(ablation_run, tmp_path, one_thread):
    """Resume: the same command again trains nothing (checkpoints untouched, each
    variant 'skipped'); with a larger --iter the variants continue from their latest.pt, and a
    variant whose folder is gone starts from scratch."""
    runs = tmp_path / "runs"
    shutil.copytree(ablation_run["root"] / "runs", runs)
    argv = [*ablation_run["argv"]]
    argv[argv.index("--out") + 1] = str(runs)
    root = runs / "ablation-data"
    mtimes = {p: p.stat().st_mtime_ns for p in root.glob("*/seed0/checkpoints/*.pt")}
    assert len(mtimes) == 8                                   # 000002.pt and latest.pt of 4 variants

    code, out, err = run_train(argv, main=ablation.main)
    assert code == 0, err
    assert out.count("skipped, already done") == 4
    assert "training from scratch" not in out and "resuming from" not in out and "resumed from" not in out
    assert "iter 1/2" not in out
    assert {p: p.stat().st_mtime_ns for p in root.glob("*/seed0/checkpoints/*.pt")} == mtimes
    assert len(table_rows((root / "table.md").read_text())) == 4

    shutil.rmtree(root / "baseline")                          # not started
    argv[argv.index("--iter") + 1] = "3"                      # the three others: part way
    code, out, err = run_train(argv, main=ablation.main)
    assert code == 0, err
    assert "[1/4] baseline, seed 0 (SLE no, decoders no): training from scratch to iteration 3" in out
    assert out.count("resuming from iteration 2 to 3") == 3 and out.count("resumed from iteration 2") == 3
    for v in VARIANTS:
        assert checkpoint.load_checkpoint(root / v / "seed0" / "checkpoints" / "latest.pt")["iteration"] == 3, v
    assert json.loads((root / "results.json").read_text())["iterations"] == 3


@pytest.mark.slow
def test_refuses_bad_input_with_one_line(ablation_run, tmp_path, one_thread):
    """Refused input: exit status 2, one line `ablation.py: error: ...`, no traceback, nothing
    trained or written."""
    data = str(ablation_run["data"])
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not an image")
    existing = str(ablation_run["root"] / "runs")
    fresh = str(tmp_path / "runs")
    cases = {
        "no such folder": (["--path", str(tmp_path / "nope"), "--iter", "2", "--out", fresh], "no such folder"),
        "no images": (["--path", str(empty), "--iter", "2", "--out", fresh, *ABLATION_TINY], "no readable images"),
        "missing --iter": (["--path", data, "--out", fresh], "--iter"),
        "bad im_size": (["--path", data, "--iter", "2", "--out", fresh, *ABLATION_TINY, "--im_size", "300"],
                        "--im_size must be one of"),
        "bad n_samples": (["--path", data, "--iter", "2", "--out", fresh, *ABLATION_TINY, "--n_samples", "0"],
                          "--n_samples must be positive"),
        "other widths": (["--path", data, "--iter", "2", "--out", existing, *ABLATION_TINY, "--ngf", "16"],
                         "trained with --ngf 8, but this ablation has --ngf 16"),
        "past --iter": (["--path", data, "--iter", "1", "--out", existing, *ABLATION_TINY], "past --iter 1"),
    }
    before = {p: p.stat().st_mtime_ns for p in Path(existing).rglob("*") if p.is_file()}
    for case, (argv, expected) in cases.items():
        code, out, err = run_train(argv, main=ablation.main)
        lines = err.strip().splitlines()
        assert code == 2, (case, err)
        assert len(lines) == 1 and lines[0].startswith("ablation.py: error: ") and expected in lines[0], (case, err)
        assert "Traceback" not in err and "iter 1/" not in out, case
    assert not Path(fresh).exists()
    assert {p: p.stat().st_mtime_ns for p in Path(existing).rglob("*") if p.is_file()} == before


@pytest.mark.slow
def test_full_disk_is_one_line(ablation_run, tmp_path, one_thread, monkeypatch):
    """No space left for table.md: exit status 1, one line naming it and the OS error; the variants'
    checkpoints and the earlier results keep their bytes, and no temporary file is left."""
    runs = tmp_path / "runs"
    shutil.copytree(ablation_run["root"] / "runs", runs)
    argv = [*ablation_run["argv"]]
    argv[argv.index("--out") + 1] = str(runs)
    root = runs / "ablation-data"
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "scores.json"}
    refuse_renames(monkeypatch, lambda dst: dst.name == "table.md", errno.ENOSPC)
    code, out, err = run_train(argv, main=ablation.main)
    monkeypatch.undo()
    lines = err.strip().splitlines()
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    assert lines[0].startswith(f"ablation.py: error: cannot write {root / 'table.md'}: No space left on device "
                               f"(ENOSPC)"), lines[0]
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file() and p.name != "scores.json"} == before


def test_passes_its_ema_decay_to_every_variant():
    """ablation.py --ema reaches each variant's train.py command line (default: the paper's 0.999)."""
    for argv, want in ((["--path", "d", "--iter", "3"], 0.999), (["--path", "d", "--iter", "3", "--ema", "0.99"], 0.99)):
        args = ablation.parse_args(argv)
        for name, sle, decoders in ablation.VARIANTS:
            assert train.parse_args(ablation.train_argv(args, name, sle, decoders)).ema == want


def test_seconds_per_iteration_from_log(tmp_path):
    """s/it is the median of d(time)/d(iter) within one process's rows (a resumed run restarts the
    clock; start-up and a slow save do not count); rows past --iter are ignored; the loop time is the
    sum of each process's last time. Without two rows in one process: the median of 1 / it_per_s."""
    log = tmp_path / "log.jsonl"
    rows = [(10, 5.0), (20, 6.0), (30, 7.0), (40, 12.0),      # first process: start-up, then a slow save
            (40, 3.0), (50, 4.0), (60, 5.0), (70, 6.0)]      # resumed from 30 at 0 s; 70 is past --iter 60
    log.write_text("".join(json.dumps({"iter": i, "time": t, "it_per_s": 1.0, "g": 0.0}) + "\n" for i, t in rows))
    s_per_it, loop_s = ablation.timing_from_log(log, 60)
    assert s_per_it == pytest.approx(0.1) and loop_s == pytest.approx(12.0 + 5.0)
    log.write_text(json.dumps({"iter": 5, "time": 2.0, "it_per_s": 2.5}) + "\n")
    assert ablation.timing_from_log(log, 5) == (pytest.approx(0.4), pytest.approx(2.0))
    assert ablation.timing_from_log(tmp_path / "missing.jsonl", 5) == (None, None)


# -- several seeds, and the weight of L_recons --

def mean_cells(table_md):
    """{variant: [(mean, std) of each numeric column]} of table.md's first table, for cells 'm ± s'."""
    first = table_md.split("\n\n")[1]                      # the title, then the table
    cells = {}
    for line in first.splitlines()[2:]:
        row = [c.strip() for c in line.strip("|").split("|")]
        cells[row[0]] = [tuple(float(x) for x in c.split(" ± ")) for c in row[5:8]]   # s/it, SWD raw, SWD EMA
    return cells


@pytest.mark.slow
def test_seeds_give_mean_and_spread_and_a_new_seed_trains_only_itself(tmp_path):
    """--seeds 0 1: every variant trained once per seed; each cell of table.md is 'mean ± std' equal
    to the mean and sample std (n - 1) of the per-seed values in results.json, which holds both seeds.
    Then --seeds 0 1 2 trains the third seed's runs only: the first two are skipped, their checkpoints
    untouched and their scores unchanged."""
    data = make_images(tmp_path / "data", n=3)
    argv = ["--path", str(data), "--out", str(tmp_path / "runs"), "--iter", "1", "--variants", "baseline", "sle",
            "--sample_every", "100", *ABLATION_TINY[:-3], "--n_samples", "2", "--no_fid"]
    trained = []
    real_train_variant = ablation.train_variant

    def counting(args, name, sle, decoders, recon_weight, seed, resume=None):
        trained.append((name, seed))
        return real_train_variant(args, name, sle, decoders, recon_weight, seed, resume)

    root = tmp_path / "runs" / "ablation-data"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ablation, "train_variant", counting)
        code, out, err = run_train([*argv, "--seeds", "0", "1"], main=ablation.main)
        assert code == 0, err
        assert trained == [("baseline", 0), ("sle", 0), ("baseline", 1), ("sle", 1)]
        res = json.loads((root / "results-baseline_sle.json").read_text())
        cells = mean_cells((root / "table-baseline_sle.md").read_text())
        assert res["seeds"] == [0, 1] and [r["variant"] for r in res["variants"]] == ["baseline", "sle"]
        for r in res["variants"]:
            assert [p["seed"] for p in r["per_seed"]] == [0, 1]
            swd = [p["scores"]["ema"]["swd"] for p in r["per_seed"]]
            assert np.all(np.isfinite(swd)) and swd[0] != swd[1]            # two different runs
            assert r["mean"]["swd_ema"] == pytest.approx(np.mean(swd))
            assert r["std"]["swd_ema"] == pytest.approx(np.std(swd, ddof=1)) and r["std"]["swd_ema"] > 0
            for (mean, std), key in zip(cells[r["variant"]], ("s_per_it", "swd_raw", "swd_ema")):
                assert mean == pytest.approx(r["mean"][key], abs=1e-2) and std == pytest.approx(r["std"][key], abs=1e-2)
        assert "## Differences beyond the spread" in (root / "table-baseline_sle.md").read_text()
        mtimes = {p: p.stat().st_mtime_ns for p in root.glob("*/seed*/checkpoints/*.pt")}
        assert len(mtimes) == 2 * 2 * 2                                    # 000001.pt, latest.pt of 4 runs

        trained.clear()
        code, out, err = run_train([*argv, "--seeds", "0", "1", "2"], main=ablation.main)
        assert code == 0, err
    assert trained == [("baseline", 2), ("sle", 2)]
    assert out.count("skipped, already done") == 4 and out.count("training from scratch") == 2
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes
    res3 = json.loads((root / "results-baseline_sle.json").read_text())
    for r, r3 in zip(res["variants"], res3["variants"]):
        assert [p["seed"] for p in r3["per_seed"]] == [0, 1, 2]
        assert [p["scores"] for p in r3["per_seed"][:2]] == [p["scores"] for p in r["per_seed"]]


def test_spread_rule():
    """Beyond the spread: |mean_a - mean_b| > std_a + std_b; no verdict without a spread (one seed)."""
    assert ablation.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert ablation.mean_std([5.0]) == (5.0, None) and ablation.mean_std([1.0, None]) == (None, None)
    assert ablation.beyond_spread((10.0, 1.0), (13.1, 2.0)) is True
    assert ablation.beyond_spread((10.0, 1.0), (12.9, 2.0)) is False
    assert ablation.beyond_spread((10.0, None), (20.0, 1.0)) is None
    keys = [k for k, *_ in ablation.MEASURES]
    rows = [{"variant": v, "mean": dict.fromkeys(keys, m), "std": dict.fromkeys(keys, 1.0)}
            for v, m in (("a", 10.0), ("b", 13.0), ("c", 11.0))]
    d = [x for x in ablation.differences(rows) if x["measure"] == "swd_ema"]
    assert [(x["lower"], x["higher"], x["beyond_spread"]) for x in d] == [("a", "b", True), ("a", "c", False), ("c", "b", False)]


def test_recon_weights_are_rows_of_the_full_model():
    """--variants both --recon_weights 1 3 10: three rows of the full model, named both, both-w3,
    both-w10, whose train.py runs get --recon_weight 1, 3, 10 and the seed of each run; variants
    without decoders get one row whatever the weights. Weights without a variant that has decoders,
    a repeated seed, or a negative weight are refused in one line."""
    args = ablation.parse_args(["--path", "d", "--iter", "3", "--variants", "both", "--recon_weights", "1", "3", "10"])
    rows = ablation.table_rows(args)
    assert [r[0] for r in rows] == ["both", "both-w3", "both-w10"]
    for (name, sle, decoders, w), want in zip(rows, (1.0, 3.0, 10.0)):
        t = train.parse_args(ablation.train_argv(args, name, sle, decoders, w, 7))
        assert (t.recon_weight, t.seed, t.no_sle, t.no_recon) == (want, 7, False, False)
        assert t.name == f"ablation-d/{name}/seed7"
    args = ablation.parse_args(["--path", "d", "--iter", "3", "--recon_weights", "1", "3"])
    assert [r[0] for r in ablation.table_rows(args)] == ["baseline", "sle", "recon", "recon-w3", "both", "both-w3"]
    assert ablation.output_names(ablation.table_rows(args))[0] == "table-baseline_sle_recon_recon-w3_both_both-w3.md"
    assert ablation.output_names(ablation.table_rows(ablation.parse_args(["--path", "d", "--iter", "3"]))) == \
        ("table.md", "samples.png", "results.json")
    for bad, msg in ((["--variants", "sle", "--recon_weights", "3"], "only the variants with decoders"),
                     (["--seeds", "0", "0"], "--seeds lists a value twice"),
                     (["--recon_weights", "-1"], "--recon_weights must be at least 0")):
        with pytest.raises(ablation.UsageError, match=msg):
            ablation.check_args(ablation.parse_args(["--path", "d", "--iter", "3", *bad]))


@pytest.mark.parametrize("seconds, shown", [(5.25, "5.2 s"), (61, "00:01:01"), (30 * 3600, "30:00:00")])
def test_wall_times_count_the_hours_past_a_day(seconds, shown):
    """The summary's wall times read as a stopwatch: 30 hours of training is '30:00:00', not '06:00:00'."""
    assert ablation.format_seconds(seconds) == shown
