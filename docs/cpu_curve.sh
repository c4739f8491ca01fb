#!/usr/bin/env bash
# What a laptop run gives over time: the README's CPU command for HOURS hours (default 3) or ITERS
# iterations (default 6,000), whichever comes first, scored and pictured every EVERY iterations (500).
#
#   bash docs/cpu_curve.sh DATA OUT_ROOT NAME
#
# One thread (OMP_NUM_THREADS=1) pinned to the core in $CORE (default 0). During the run train.py's
# --eval_every 500 logs the SWD of 100 EMA samples against the training images (and keeps best.pt);
# every numbered checkpoint is kept (--keep 0). Afterwards, for each checkpoint, 100 samples of the EMA
# generator and 100 of the trained G (sample.py, seed 0) are scored with metrics.py, and the table
# OUT_ROOT/NAME/curve.tsv holds: iteration, hours of training, SWD logged during the run (EMA), and
# SWD from sample.py of the EMA generator and of the trained G. Then metrics.py --curve draws
# images/swd.png, and sample.py --nearest puts 16 samples of the last checkpoint beside their closest
# training images (OUT_ROOT/NAME/nearest/).
#
# A run cut short (the machine was needed) continues with RESUME=1 and LIMIT_S set to the seconds of
# training left (3 h less the hours that `python metrics.py --curve OUT_ROOT/NAME` shows at its end).
set -euo pipefail
data=$1; root=$2; name=$3
hours=${HOURS:-3}; iters=${ITERS:-6000}; every=${EVERY:-500}; core=${CORE:-0}
limit=${LIMIT_S:-$((hours * 3600))}
resume=(); [ -n "${RESUME:-}" ] && resume=(--resume latest)
cpu_command=(--im_size 128 --ngf 32 --ndf 32 --device cpu)     # the README's CPU command, after --path
run="$root/$name"
mkdir -p "$root"
echo "== $name: $(date -u +%FT%TZ), at most $limit s or $iters iterations, core $core ${resume[*]}"
OMP_NUM_THREADS=1 timeout --foreground -s INT "$limit" taskset -c "$core" \
  python train.py --path "$data" "${cpu_command[@]}" --iter "$iters" "${resume[@]}" \
    --eval_every "$every" --sample_every "$every" --save_every "$every" --keep 0 --log_every 100 \
    --out "$root" --name "$name" >> "$root/$name.log" 2>&1 || true
echo "== training ended $(date -u +%FT%TZ): $(tail -n 1 "$root/$name.log")"

one() {   # sample.py + metrics.py on one checkpoint: prints the SWD
  OMP_NUM_THREADS=1 taskset -c "$core" python sample.py --ckpt "$1" --n 100 --seed 0 $2 --out "$3" --device cpu > /dev/null
  OMP_NUM_THREADS=1 taskset -c "$core" python metrics.py "$3" "$data" --size 128 --no_fid --device cpu \
    | python -c "import json,sys; print(round(json.loads(sys.stdin.read())['swd'], 2))"
}
python metrics.py --curve "$run" > "$run/logged.tsv"           # iteration, hours, SWD logged (EMA)
printf 'iteration\thours\tswd_logged_ema\tswd_sample_ema\tswd_sample_raw\n' > "$run/curve.tsv"
tail -n +2 "$run/logged.tsv" | while IFS=$'\t' read -r it h logged; do
  ckpt=$(printf '%s/checkpoints/%06d.pt' "$run" "$it")
  [ -f "$ckpt" ] || continue
  ema=$(one "$ckpt" "" "$run/scored/ema_$it"); raw=$(one "$ckpt" --raw "$run/scored/raw_$it")
  rm -rf "$run/scored"
  printf '%s\t%s\t%s\t%s\t%s\n' "$it" "$h" "$logged" "$ema" "$raw" | tee -a "$run/curve.tsv"
done
last=$(ls "$run"/checkpoints/[0-9]*.pt | sort | tail -n 1)
OMP_NUM_THREADS=1 taskset -c "$core" python sample.py --ckpt "$last" --n 16 --seed 0 --nearest "$data" \
  --out "$run/nearest" --device cpu
echo "== done $(date -u +%FT%TZ)"
