#!/usr/bin/env bash
# One prepared check for a lent GPU machine (one NVIDIA H200, its own PyTorch, no network, none of
# deepspeed / mlflow / decord / open_clip / pyarrow, maybe no PyYAML): what the model core measures there.
#
#   bash scripts/gpu_check.sh                  # results under ${OUT:-gpu_check_out}
#   make gpu-check                             # the same with .venv/bin/python (CPU-only: skips b-e, exit 0)
#
# On a lent machine, from this machine: `make gpu-bundle` (once; PyYAML's pure-Python part into the
# ignored .gpu_deps/), then the device tool's
#   run(command="bash scripts/gpu_check.sh", carry=[".gpu_deps"], timeout_s=540)
# The tree travels without .venv; turbo_ds is found through PYTHONPATH (the repo root), and .gpu_deps
# is added to PYTHONPATH only when that machine's python cannot import yaml itself (it is needed only
# to read configs/*.yaml, step d). Everything else needs torch alone.
#
# Steps, each under its own `timeout`, all within 8 minutes (GPU_CHECK_SECONDS, default 470; the
# device run's timeout_s is 540): a failing or timed-out step is recorded and the next one runs.
#   a  env        environment facts: nvidia-smi, python, torch, CUDA, cuDNN, bf16, a bf16 matmul probe
#   b  bench_model  scripts/bench_model.py --preset gpu (ViT-B/16, 16 x 224^2, batch 8, bf16 autocast,
#                 dense vs token dropout 0.5/0.75/0.9, Partial-MAE off/0.25, checkpointing off/all)
#   c  bench_frames scripts/bench_frames.py --preset gpu (frames vs memory/time, the lead's script)
#   d  plan       python -m turbo_ds.plan ... --measure --core: the planner's predicted vs measured peaks
#   e  train      scripts/gpu_train_check.py: 60 bf16 steps of ViT-B/16 + token dropout + Partial-MAE
#   f  decode     scripts/bench_decode.py --gpu: torchcodec's CPU decoder against its CUDA one (clips/s,
#                 same frames; printed to the log), where torchcodec loads. The lent machine lacks it (its
#                 torch is 2.11, ours 2.14, and it has no FFmpeg libraries): there, NVDEC through NVIDIA's
#                 PyNvVideoCodec (scripts/bench_nvdec.py run: clips/s and frame exactness of caption clips
#                 and 64 / 256 uniform frames of 1-minute 480p H.264, keyframes every 250 and 16 frames),
#                 from the wheel and videos make gpu-bundle put in .gpu_deps/ (~50 MB). Optional: without
#                 either it is recorded as skipped, saying why, and its failure never fails the script.
# Results (8 files at most, all in the output folder): env.json, bench_model.json, bench_frames.json,
# bench_frames.png, plan_k400.json, train_check.json, summary.json (each step's status, exit code and
# seconds) and gpu_check.log (everything printed). Exit status: 0 when no step failed (steps b-e are
# skipped, not failed, where torch sees no CUDA GPU), 1 otherwise, only at the end.
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
OUT_DIR=${OUT:-gpu_check_out}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
PY=${PYTHON:-python3}
LOG=$OUT_DIR/gpu_check.log
SUMMARY=$OUT_DIR/summary.json
TOTAL=${GPU_CHECK_SECONDS:-470}
START=$(date +%s)
DEADLINE=$((START + TOTAL))
GRACE=10 # seconds between timeout's TERM and KILL
export PYTHONUNBUFFERED=1 OMP_WAIT_POLICY=${OMP_WAIT_POLICY:-PASSIVE}
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PY" -c 'import yaml' >/dev/null 2>&1 && [ -d "$ROOT/.gpu_deps" ]; then
    export PYTHONPATH="$ROOT/.gpu_deps:$PYTHONPATH"
fi
: >"$LOG"

RECORDS=()
FAILED=0

say() { echo "[gpu_check] $*" | tee -a "$LOG"; }

record() { # name status rc seconds note (an optional step's failure is "optional-failed": no exit 1)
    RECORDS+=("{\"step\": \"$1\", \"status\": \"$2\", \"rc\": $3, \"seconds\": $4, \"note\": \"${5//[\"\\]/}\"}")
    [ "$2" = failed ] || [ "$2" = timeout ] && FAILED=1
    say "$1: $2 (rc $3, ${4}s)${5:+ - $5}"
}

# step NAME BUDGET_S CMD...: run CMD under timeout (its budget, cut to what is left before the deadline).
step() {
    local name=$1 budget=$2 now left t s0 rc status
    shift 2
    now=$(date +%s)
    left=$((DEADLINE - now - GRACE))
    if ((left < 15)); then
        record "$name" failed -1 0 "not run: the ${TOTAL}s budget is spent"
        return
    fi
    t=$((budget < left ? budget : left))
    say "=== $name (timeout ${t}s): $*"
    s0=$(date +%s)
    timeout -k "$GRACE" "$t" "$@" 2>&1 | tee -a "$LOG"
    rc=${PIPESTATUS[0]}
    case $rc in
        0) status=ok ;;
        124 | 137) status=timeout ;;
        *) status=failed ;;
    esac
    [ -n "${OPTIONAL:-}" ] && [ "$status" != ok ] && status="optional-$status"
    record "$name" "$status" "$rc" $(($(date +%s) - s0)) ""
}

write_summary() {
    local i
    {
        echo "{\"out_dir\": \"$OUT_DIR\", \"python\": \"$PY\", \"seconds\": $(($(date +%s) - START)), \"failed\": $FAILED, \"steps\": ["
        for i in "${!RECORDS[@]}"; do
            printf '  %s%s\n' "${RECORDS[$i]}" "$([ "$i" -lt $((${#RECORDS[@]} - 1)) ] && echo ,)"
        done
        echo "]}"
    } >"$SUMMARY"
}

# a: environment facts (also when there is no GPU).
command -v nvidia-smi >/dev/null && timeout 20 nvidia-smi 2>&1 | tee -a "$LOG"
step env 45 "$PY" - "$OUT_DIR/env.json" <<'EOF'
import importlib.util, json, os, platform, subprocess, sys, time

out = {"python": sys.version.split()[0], "executable": sys.executable, "platform": platform.platform(),
       "cpus": os.cpu_count(), "pythonpath": os.environ.get("PYTHONPATH", "")}
try:
    out["nvidia_smi"] = subprocess.run(
        ["nvidia-smi", "--query-gpu=name,memory.total,driver_version,clocks.max.sm", "--format=csv,noheader"],
        capture_output=True, text=True, timeout=20).stdout.strip()
except Exception as e:  # no driver: recorded, not fatal
    out["nvidia_smi"] = f"unavailable: {e}"
try:
    out["git_commit"] = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                       timeout=10).stdout.strip() or None
except Exception:
    out["git_commit"] = None
if not out["git_commit"] and os.path.exists(".gpu_deps/COMMIT"):  # the tree travels without .git
    out["git_commit"] = "from make gpu-bundle: " + open(".gpu_deps/COMMIT").read().strip()
# Which of turbo_ds's optional dependencies this python has (found, not imported).
out["packages"] = {n: importlib.util.find_spec(n) is not None for n in
                   ("numpy", "yaml", "deepspeed", "mlflow", "decord", "av", "open_clip", "pyarrow", "tqdm",
                    "fairscale", "timm", "matplotlib")}
import torch

out.update(torch=torch.__version__, cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version(),
           cuda_available=torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    out.update(gpu=p.name, capability=f"{p.major}.{p.minor}", gpu_mem_gib=p.total_memory / 2**30,
               sms=p.multi_processor_count, bf16_supported=torch.cuda.is_bf16_supported(),
               flash_sdp=torch.backends.cuda.flash_sdp_enabled(),
               mem_efficient_sdp=torch.backends.cuda.mem_efficient_sdp_enabled())
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        a @ b
    torch.cuda.synchronize()
    out["bf16_matmul_tflops"] = 10 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12
with open(sys.argv[1], "w") as f:
    json.dump(out, f, indent=1)
print(json.dumps(out, indent=1))
EOF

if "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' >/dev/null 2>&1; then
    # b: dense vs Turbo one-step benchmark; --max-seconds stops starting new runs so the rows get written.
    step bench_model 150 "$PY" scripts/bench_model.py --preset gpu --max-seconds 115 --json "$OUT_DIR/bench_model.json"
    # c: frames vs memory and time (scripts/bench_frames.py, the lead's); --plot / --max-seconds only
    # where that script has them.
    frames_extra=()
    grep -q -- '"--plot"' scripts/bench_frames.py 2>/dev/null && frames_extra+=(--plot "$OUT_DIR/bench_frames.png")
    grep -q -- '"--max-seconds"' scripts/bench_frames.py 2>/dev/null && frames_extra+=(--max-seconds 70)
    step bench_frames 90 "$PY" scripts/bench_frames.py --preset gpu --json "$OUT_DIR/bench_frames.json" \
        ${frames_extra[@]+"${frames_extra[@]}"}
    # d: the planner's predicted peaks against measured ones (turbo_ds/plan, the lead's).
    step plan 60 "$PY" -m turbo_ds.plan --config configs/k400_vitb16_turbo.yaml --gpu-mem 139GiB \
        --json "$OUT_DIR/plan_k400.json" --measure --core
    # e: a short bf16 training run of the model core.
    step train 60 "$PY" scripts/gpu_train_check.py --json "$OUT_DIR/train_check.json"
    # f: CPU vs GPU decoding where torchcodec can load here; else NVDEC through PyNvVideoCodec where
    # make gpu-bundle carried its wheel and the prepared videos (optional: see the header).
    nvdec_wheel=$(ls "$ROOT"/.gpu_deps/wheels/pynvvideocodec-*.whl 2>/dev/null | head -n 1)
    if why=$("$PY" -c 'import torchcodec.decoders' 2>&1); then
        OPTIONAL=1 step decode 45 "$PY" scripts/bench_decode.py --gpu --clips 3 --cache /tmp/turbo_ds_gpu_decode
    elif [ -n "$nvdec_wheel" ] && [ -f "$ROOT/.gpu_deps/nvdec/samples.json" ] &&
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/nvdec_site \
            "$nvdec_wheel" 2>&1 | tee -a "$LOG"; then
        OPTIONAL=1 step decode 60 env PYTHONPATH="/tmp/nvdec_site:$PYTHONPATH" "$PY" scripts/bench_nvdec.py run \
            "$ROOT/.gpu_deps/nvdec"
    else
        why=$(echo "$why" | grep -v '^[[:space:]]' | tail -n 1)
        record decode skipped 0 0 "torchcodec cannot load with this torch (${why:0:120}) and no PyNvVideoCodec bundle (make gpu-bundle)"
    fi
else
    for s in bench_model bench_frames plan train decode; do
        record "$s" skipped 0 0 "no CUDA GPU visible to torch"
    done
    say "no CUDA GPU visible to torch: GPU steps skipped (this is not a failure)"
fi

write_summary
say "done in $(($(date +%s) - START))s; results in $OUT_DIR: $(cd "$OUT_DIR" && ls | tr '\n' ' ')"
cat "$SUMMARY"
exit $FAILED
