#!/usr/bin/env bash
# The CPU command chosen by measurement: train each setting for a fixed wall time on one CPU thread,
# then score 100 EMA samples against the training images with SWD (lower is better).
#
#   bash docs/cpu_sweep.sh DATA OUT_ROOT "NGF BATCH LR SEED" ["NGF BATCH LR SEED" ...]
#
# Every run: 128x128, ngf = ndf = NGF, the CPU's default precision, OMP_NUM_THREADS=1 pinned to the
# core in $CORE (default 1), stopped by SIGINT after $MINUTES minutes (default 30; train.py then
# finishes the iteration and saves latest.pt). One TSV row per run is appended to OUT_ROOT/sweep.tsv:
# setting, iterations reached, SWD of the EMA generator and of the trained G. `timeout --foreground`
# sends its one SIGINT to train.py alone (without it, timeout also signals its process group: train.py
# takes two SIGINTs at once as one request, but versions before that aborted without saving).
set -euo pipefail
data=$1; root=$2; shift 2
minutes=${MINUTES:-30}; core=${CORE:-1}
mkdir -p "$root"
[ -f "$root/sweep.tsv" ] || printf 'ngf\tbatch\tlr\tseed\tminutes\titers\tswd_ema\tswd_raw\n' > "$root/sweep.tsv"
for setting in "$@"; do
  read -r ngf batch lr seed <<< "$setting"
  name="w${ngf}_b${batch}_lr${lr}_s${seed}"
  echo "== $name, $(date -u +%H:%M:%S)"
  OMP_NUM_THREADS=1 timeout --foreground -s INT "$((minutes * 60))" taskset -c "$core" \
    python train.py --path "$data" --im_size 128 --ngf "$ngf" --ndf "$ngf" --batch_size "$batch" \
      --lr "$lr" --seed "$seed" --iter 100000 --save_every 500 --sample_every 500 --log_every 100 \
      --out "$root" --name "$name" --device cpu > "$root/$name.log" 2>&1 || true
  ckpt="$root/$name/checkpoints/latest.pt"
  iters=$(python -c "import torch,sys; print(torch.load(sys.argv[1], weights_only=True)['iteration'])" "$ckpt")
  scores=""
  for mode in ema raw; do
    flag=""; [ "$mode" = raw ] && flag="--raw"
    rm -rf "$root/$name/samples_$mode"
    OMP_NUM_THREADS=1 taskset -c "$core" python sample.py --ckpt "$ckpt" --n 100 --seed 0 $flag \
      --out "$root/$name/samples_$mode" --device cpu > /dev/null
    swd=$(OMP_NUM_THREADS=1 taskset -c "$core" python metrics.py "$root/$name/samples_$mode" "$data" \
      --size 128 --no_fid --device cpu | python -c "import json,sys; print(round(json.loads(sys.stdin.read())['swd'], 2))")
    scores="$scores\t$swd"
  done
  printf "$ngf\t$batch\t$lr\t$seed\t$minutes\t$iters$scores\n" | tee -a "$root/sweep.tsv"
done
