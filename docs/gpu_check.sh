#!/usr/bin/env bash
# Every CUDA path of the project, checked in one run on one GPU (meant to take under 8 minutes):
#
#   bash docs/gpu_check.sh                  # on a machine with a CUDA GPU
#   bash docs/gpu_check.sh --device cpu     # the same checks at toy sizes on the CPU (the test suite
#                                           # runs this, so the script cannot fall behind the code)
#   bash docs/gpu_check.sh --work DIR       # keep the runs, logs and images in DIR (default: a temp folder)
#
# It prints one line per check, "PASS name (seconds): figures" or "FAIL name (seconds): why" (then
# the end of that check's log), and exits with status 1 if any check failed, 2 for a bad command line.
# The checks, in order (figures and what they mean: docs/cuda.md):
#   bench_256, bench_1024   bench.py --compare, every speed option off: our step against the authors'
#   bench_amp               --amp as chosen for this GPU (bf16 where it has bf16 units, else fp16)
#   bench_amp_fp16          --amp --amp_dtype fp16: the fp16 + GradScaler path (with fused Adam)
#   bench_channels_last     --channels_last
#   bench_compile           --compile (Adam not fused then, see speed.fused_adam)
#   train                   train.py, 200 iterations at 256x256 with sample grids and checkpoints
#   resume_channels_last    that run's middle checkpoint resumed with --channels_last: Adam's moments
#                           of the conv weights must match those of the resume without it (fused Adam
#                           reads them in order);
#                           both in float32, so that only the layout differs
#   deterministic_resume    --deterministic: a run and the same run stopped halfway and resumed end
#                           bit for bit equal (networks and Adam states)
#   stream_classes          --stream --classes: images decoded by workers, one class per subfolder
#   sample                  sample.py from the train check's checkpoint
#   metrics                 metrics.py (SWD) of those samples against the training images
# On the CPU: 128x128, widths 8, batch 2, 1-2 iterations; bench_1024 is bench at 128 without
# --compare, and bench_amp_fp16 and bench_compile are skipped (CPU fp16 is emulated, about 100x
# slower than float32; compiling takes minutes): their lines say SKIP.

set -u
cd "$(dirname "$0")/.."
DEVICE=cuda
WORK=""
while [ $# -gt 0 ]; do
    case "$1" in
        --device) DEVICE="${2:-}"; shift 2 ;;
        --work) WORK="${2:-}"; shift 2 ;;
        *) echo "gpu_check.sh: error: unknown argument $1 (use --device cuda|cpu, --work DIR)" >&2; exit 2 ;;
    esac
done
if [ "$DEVICE" != cuda ] && [ "$DEVICE" != cpu ]; then
    echo "gpu_check.sh: error: --device must be cuda or cpu, got '$DEVICE'" >&2; exit 2
fi
PY="${PYTHON:-python}"
WORK="${WORK:-$(mktemp -d)}"
mkdir -p "$WORK"

if [ "$DEVICE" = cuda ]; then
    SIZE=256; BIG=1024; NETS=(--batch_size 8); ITERS=200; HALF=100; SHORT=20
    BENCH=(--iters 5 --warmup 2); COMPARE=(--compare)
else
    SIZE=128; BIG=128; NETS=(--ngf 8 --ndf 8 --batch_size 2); ITERS=2; HALF=1; SHORT=1
    BENCH=(--iters 1 --warmup 0 --no_flops); COMPARE=()
fi
COMMON=(--device "$DEVICE" "${NETS[@]}")
PLAIN=(--no-fast_upsample --no-channels_last --no-amp --no-compile)   # the speed options, all off
TRAIN=("$PY" train.py "${COMMON[@]}" --im_size "$SIZE" --log_every 10 --out "$WORK/runs")
FAILED=0

# check NAME SUMMARY COMMAND...: run COMMAND with its output in $WORK/NAME.log; if it succeeds, run
# SUMMARY (a shell function reading the log) for the figures of the line. Either failing fails the check.
check() {
    local name=$1 summary=$2 t0=$SECONDS figures
    shift 2
    if "$@" > "$WORK/$name.log" 2>&1 && figures=$($summary "$WORK/$name.log" 2>&1); then
        echo "PASS $name ($((SECONDS - t0)) s): $figures"
    else
        echo "FAIL $name ($((SECONDS - t0)) s): ${figures:-command failed: $*}"
        tail -n 5 "$WORK/$name.log" | sed 's/^/    /'
        FAILED=1
    fi
}

skip() { echo "SKIP $1: $2"; }

# bench.py's JSON line, in a few figures.
bench_figures() {
    "$PY" - "$1" <<'EOF'
import json, sys
r = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
line = f"{r['device']}, {r['median_s'] * 1000:.1f} ms/it, {r['images_per_s']:.1f} img/s, amp {r['amp_dtype']}"
if "ratio_ours_over_baseline" in r:
    line += (f", ours/authors' {r['ratio_ours_over_baseline']:.2f}, peak {r['peak_memory_gb_ours']:.2f} GB "
             f"(authors' {r['peak_memory_gb_baseline']:.2f})")
else:
    line += f", peak {r['peak_memory_gb']:.2f} GB"
if "fraction_of_matmul" in r:
    line += f", {r['achieved_gflop_per_s']:.0f} GFLOP/s = {r['fraction_of_matmul']:.2f} of a {r['matmul_precision']} matmul"
    assert r["fraction_of_matmul"] < 1, "the step cannot run faster than the matmul peak of its precision"
print(line)
EOF
}

# train.py finished: its last progress line, and the files a run must have written.
train_figures() {
    "$PY" - "$1" "$WORK/runs/main" "$ITERS" <<'EOF'
import json, math, sys
from pathlib import Path
run, iters = Path(sys.argv[2]), int(sys.argv[3])
rows = [json.loads(l) for l in (run / "log.jsonl").read_text().splitlines()]
last = rows[-1]
assert last["iter"] == iters and all(math.isfinite(last[k]) for k in ("d_real", "d_fake", "recon", "g")), last
for f in (f"checkpoints/{iters:06d}.pt", "checkpoints/latest.pt", f"images/{iters:06d}_samples.png",
          f"images/{iters:06d}_recons.png"):
    assert (run / f).is_file(), f"{f} missing"
print(f"{iters} iterations, {last['it_per_s']:.2f} it/s, last losses "
      + ", ".join(f"{k} {last[k]:.3f}" for k in ("d_real", "d_fake", "recon", "g")))
EOF
}

# The resume with --channels_last against the one without: Adam's second moments of the conv weights
# (the 4-D tensors, the only ones whose memory order the layout changes) must agree up to what one
# more gradient, computed by other kernels, changes (tensor by tensor, the summed difference over the
# summed moment: a few percent at most in the CPU mode's batch of 2); moments read in the wrong order
# would differ by about their own size. (Fused Adam on CUDA refuses such moments outright.) The scalar
# noise-injection weights are left out: at initialisation their gradient is a sum that nearly cancels
# (BatchNorm removes the mean the noise adds), so another summation order changes it by its own size.
toggle_figures() {
    "$PY" - "$WORK/runs" <<'EOF'
import statistics, sys, torch
from pathlib import Path
runs = Path(sys.argv[1])
a, b = (torch.load(runs / n / "checkpoints" / "latest.pt", weights_only=True) for n in ("plain", "toggled"))
diffs = []
for opt in ("opt_G", "opt_D"):
    for k, s in a[opt]["state"].items():
        x, y = s["exp_avg_sq"], b[opt]["state"][k]["exp_avg_sq"]
        if x.dim() != 4:
            continue
        diffs.append(float((x - y).abs().sum() / x.abs().sum().clamp(min=1e-30)))
assert max(diffs) < 0.5, f"Adam's exp_avg_sq differs by up to {max(diffs):.3g} (relative) between the layouts"
print(f"Adam's exp_avg_sq of the {len(diffs)} conv weights agree to {max(diffs):.2g} at worst, {statistics.median(diffs):.2g} in the median "
      f"(relative), after one resumed iteration in each layout")
EOF
}

# The straight --deterministic run against the one resumed halfway: bit for bit.
deterministic_figures() {
    "$PY" - "$WORK/runs" <<'EOF'
import sys, torch
from pathlib import Path
runs = Path(sys.argv[1])
a, b = (torch.load(runs / n / "checkpoints" / "latest.pt", weights_only=True) for n in ("det_straight", "det_resumed"))
def tensors(x, prefix=""):
    if torch.is_tensor(x):
        yield prefix, x
    elif isinstance(x, dict):
        for k, v in x.items():
            yield from tensors(v, f"{prefix}.{k}")
n = 0
for part in ("G", "D", "G_ema", "opt_G", "opt_D"):
    for (name, x), (_, y) in zip(tensors(a[part], part), tensors(b[part], part)):
        assert torch.equal(x, y), f"{name} differs by {(x.float() - y.float()).abs().max():.3g}"
        n += 1
assert a["iteration"] == b["iteration"] and n > 100
print(f"{n} tensors bit for bit equal at iteration {a['iteration']}")
EOF
}

samples_figures() {
    local n
    n=$(ls "$WORK/samples"/*.png 2>/dev/null | wc -l)
    [ "$n" -eq 8 ] && echo "8 samples" || { echo "$n samples, not 8"; return 1; }
}

classes_figures() {
    ls "$WORK/runs/classes/images/"*_samples.png > /dev/null && tail -n 1 "$WORK/runs/classes/log.jsonl"
}

metrics_figures() { tail -n 1 "$1" | grep '"n_fake": 8' ; }

# Training images: 16 in one folder, and two classes of 8 in subfolders (synthetic discs, no download).
"$PY" -c "
import sys; from pathlib import Path; from tests.helpers import make_images
w, s = Path(sys.argv[1]), int(sys.argv[2])
make_images(w / 'data', 16, s, seed=0); make_images(w / 'classes' / 'red', 8, s, seed=1)
make_images(w / 'classes' / 'blue', 8, s, seed=2)" "$WORK" "$SIZE" || { echo "FAIL making the images"; exit 1; }
echo "gpu_check.sh on $DEVICE, work folder $WORK"

BENCH_CMD=("$PY" bench.py "${COMMON[@]}" "${BENCH[@]}")
check bench_256 bench_figures "${BENCH_CMD[@]}" --im_size "$SIZE" --compare "${PLAIN[@]}"
check bench_1024 bench_figures "${BENCH_CMD[@]}" --im_size "$BIG" "${COMPARE[@]}" "${PLAIN[@]}"
check bench_amp bench_figures "${BENCH_CMD[@]}" --im_size "$SIZE" "${COMPARE[@]}" --amp --no-channels_last --no-compile
if [ "$DEVICE" = cuda ]; then
    check bench_amp_fp16 bench_figures "${BENCH_CMD[@]}" --im_size "$SIZE" --compare --amp --amp_dtype fp16 --no-compile
    check bench_compile bench_figures "${BENCH_CMD[@]}" --im_size "$SIZE" --compile --no_flops
else
    skip bench_amp_fp16 "CPU fp16 is emulated (about 100x slower than float32)"
    skip bench_compile "compiling takes minutes on a CPU"
fi
check bench_channels_last bench_figures "${BENCH_CMD[@]}" --im_size "$SIZE" "${COMPARE[@]}" --channels_last --no-amp

check train train_figures "${TRAIN[@]}" --path "$WORK/data" --name main --iter "$ITERS" --save_every "$HALF" \
    --sample_every "$HALF" --no-channels_last
MIDDLE="$WORK/runs/main/checkpoints/$(printf %06d "$HALF").pt"
check resume_channels_last toggle_figures bash -c '"$@" --name plain --no-channels_last --no-amp && "$@" --name toggled --channels_last --no-amp' \
    _ "${TRAIN[@]}" --path "$WORK/data" --iter $((HALF + 1)) --save_every 1 --resume "$MIDDLE"
check deterministic_resume deterministic_figures bash -c '"$@" --name det_straight --iter '$((2 * SHORT))' &&
    "$@" --name det_resumed --iter '"$SHORT"' && "$@" --name det_resumed --iter '$((2 * SHORT))' --resume latest' \
    _ "${TRAIN[@]}" --path "$WORK/data" --deterministic --save_every "$SHORT" --sample_every 1000
check stream_classes classes_figures "${TRAIN[@]}" --path "$WORK/classes" --name classes --classes --stream \
    --workers 2 --iter "$SHORT" --sample_every "$SHORT"
check sample samples_figures "$PY" sample.py --ckpt "$WORK/runs/main/checkpoints/latest.pt" --n 8 \
    --out "$WORK/samples" --device "$DEVICE"
check metrics metrics_figures "$PY" metrics.py "$WORK/samples" "$WORK/data" --size "$SIZE" --device "$DEVICE" --no_fid

echo "gpu_check.sh: $([ $FAILED = 0 ] && echo 'all checks passed' || echo 'some checks FAILED') in $SECONDS s"
exit $FAILED
