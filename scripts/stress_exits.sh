#!/usr/bin/env bash
# N consecutive short 2-rank CPU runs of the demo config under the deepspeed launcher (MLflow on, a
# DataLoader worker per rank, a checkpoint): every one must exit 0. Not a CI test: it hunts the rare
# exit-time abort (status -6 / 250, "terminate called without an active exception"). See docs/training.md.
#
#   scripts/stress_exits.sh [N] [OUT]      # default 20 runs under /tmp/turbo_ds_stress
#
# Uses demo_data/ when it is there, else writes the tiny demo dataset under OUT. Prints each run's exit
# status and seconds, then the count of non-zero exits; exits 1 if there was any. Logs: OUT/run_<i>.log.
set -u
cd "$(dirname "$0")/.."
N=${1:-20}
OUT=${2:-/tmp/turbo_ds_stress}
PY=${PY:-.venv/bin/python}
mkdir -p "$OUT"
DATA=demo_data
if [ ! -f demo_data/actions.parquet ]; then
    DATA=$OUT/data
    [ -f "$DATA/actions.parquet" ] || "$PY" -m data_index demo --out "$DATA" --size tiny > "$OUT/data.log" 2>&1 || {
        echo "could not write the tiny demo data (see $OUT/data.log)"
        exit 1
    }
fi
failed=0
for i in $(seq 1 "$N"); do
    run="$OUT/run_$i"
    rm -rf "$run"
    start=$(date +%s)
    "$PY" -m deepspeed.launcher.runner --num_gpus 2 --master_port $((29600 + i)) scripts/train.py \
        --ds_config ds_configs/zero2.json --config configs/demo_classification.yaml \
        --set output_dir="$run" --set data.index="$DATA/actions.parquet" --set data.root="$DATA" \
        --set train.max_steps=20 --set train.eval_every=10 --set train.log_every=5 \
        --set train.eval_max_batches=2 --set train.progress_bar=false \
        --set checkpoint.every_steps=10 --set data.num_workers=1 --set tracking.enabled=true \
        > "$OUT/run_$i.log" 2>&1
    rc=$?
    aborts=$(grep -c "terminate called" "$OUT/run_$i.log")
    echo "run $i: exit $rc ($(($(date +%s) - start)) s)$([ "$aborts" -gt 0 ] && echo ", 'terminate called' x$aborts")"
    [ "$rc" -ne 0 ] && failed=$((failed + 1))
done
echo "$failed of $N runs exited non-zero"
[ "$failed" -eq 0 ]
