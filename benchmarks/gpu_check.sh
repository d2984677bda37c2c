#!/usr/bin/env bash
# The GPU check (issue 14), at most 8 minutes on one large NVIDIA GPU (an H200):
#   1. the device-marked tests (scorer, selection, in-LLM pruning, SAM encoder, predictor) on CUDA, each against a
#      CPU reference (`LITELVLM_TEST_DEVICE=cuda python -m pytest -m device`);
#   2. the full-size GLaMM-7B bench, random weights, bf16: litelvlm and fastv at 576/192/128/64 tokens, SAM's
#      encoder on the device's default forward -> glamm7b_cuda_bf16.{md,json,png};
#   3. SAM ViT-H's image encoder, litelvlm's fused forward vs transformers' SDPA (and eager)
#      -> sam_encoder_cuda_bf16.{md,json};
#   4. with the time left, the other fast tests of the same files (these run on the machine's CPU);
#   5. one summary line: the steps' outcomes, the speed-ups at 64 tokens against the FLOP ideal, the faster SAM
#      encoder forward and whether `default_sam_attention` agrees.
# Each step runs under `timeout` (and all of them within GPU_CHECK_LIMIT_S, default 480 s); a step that fails or
# times out does not stop the others. Everything printed also goes to the log, gpu_check_cuda.log.
#
# Usage, from anywhere, with the environment (a CUDA build of torch, `pip install -e ".[dev]"`) active:
#   bash benchmarks/gpu_check.sh                  # writes into benchmarks/results
#   bash benchmarks/gpu_check.sh --out DIR        # or GPU_CHECK_OUT=DIR: writes into DIR (created)
#   bash benchmarks/gpu_check.sh --device cuda:1
#   bash benchmarks/gpu_check.sh --dry-run        # every step on the CPU at tiny sizes, into a new temporary
#                                                 # directory (or --out); its files are named dry_run_*
# Environment: PYTHON (default python), GPU_CHECK_LIMIT_S (default 480), GPU_CHECK_TESTS (the test paths of
# step 1, default tests), GPU_CHECK_MORE_TESTS (those of step 4; empty: skip it), GPU_CHECK_TINY_MODEL (dry run:
# a tiny GLaMM checkpoint to bench instead of making one).
# Exit code: 0 when every step passed, 1 when one failed or timed out, 2 for bad usage.
set -euo pipefail

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }

DRY_RUN=0
DEVICE=cuda
OUT=${GPU_CHECK_OUT:-}
while (($#)); do
    case $1 in
        --dry-run) DRY_RUN=1 ;;
        --out) [[ $# -ge 2 ]] || { echo "gpu_check.sh: --out needs a directory" >&2; exit 2; }; OUT=$2; shift ;;
        --out=*) OUT=${1#--out=} ;;
        --device) [[ $# -ge 2 ]] || { echo "gpu_check.sh: --device needs a value" >&2; exit 2; }; DEVICE=$2; shift ;;
        --device=*) DEVICE=${1#--device=} ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gpu_check.sh: unknown argument '$1'; see --help" >&2; exit 2 ;;
    esac
    shift
done

# Paths given relative to where the script was started from, before it moves to the repository root.
absolute() { if [[ -z $1 || $1 == /* ]]; then echo "$1"; else echo "$PWD/$1"; fi; }
OUT=$(absolute "$OUT")
TINY_MODEL=$(absolute "${GPU_CHECK_TINY_MODEL:-}")
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}"  # this tree's code, whatever is installed
PYTHON=${PYTHON:-python}
LIMIT_S=${GPU_CHECK_LIMIT_S:-480}
TESTS=${GPU_CHECK_TESTS:-tests}
# Step 4: the other fast tests of the files that hold the device tests, and of SAM and the bench.
MORE_TESTS=${GPU_CHECK_MORE_TESTS-tests/test_scoring.py tests/test_selection_litelvlm.py tests/test_selection_baselines.py
tests/test_llm_pruning.py tests/test_sam_encoder.py tests/test_predictor.py tests/test_sam.py tests/test_bench.py}

if ((DRY_RUN)); then
    DEVICE=cpu
    PREFIX=dry_run_
    OUT=${OUT:-$(mktemp -d "${TMPDIR:-/tmp}/gpu-check-dry-run.XXXXXX")}
else
    PREFIX=
    OUT=${OUT:-benchmarks/results}
fi
mkdir -p "$OUT"
TAG=${DEVICE%%:*}  # cuda:1 -> cuda
BENCH_JSON="$OUT/${PREFIX}glamm7b_${TAG}_bf16.json"
SAM_JSON="$OUT/${PREFIX}sam_encoder_${TAG}_bf16.json"
LOG="$OUT/${PREFIX}gpu_check_${TAG}.log"
: >"$LOG"
exec > >(tee -a "$LOG") 2>&1

STATUSES=()
FAILED=0
START=$SECONDS

# run_step NAME CAP_S COMMAND...: COMMAND under `timeout`, at most CAP_S and what is left of LIMIT_S (20 s kept
# for the summary); records NAME=passed|failed|timed-out|skipped.
run_step() {
    local name=$1 cap=$2 status code
    shift 2
    local left=$((LIMIT_S - (SECONDS - START) - 20))
    local limit=$((cap < left ? cap : left))
    if ((limit < 10)); then
        echo "== $name: skipped (${left} s left of ${LIMIT_S})"
        STATUSES+=(--status "$name=skipped")
        return
    fi
    echo "== $name (at most ${limit} s): $*"
    local began=$SECONDS
    set +e
    timeout --kill-after=5 "$limit" "$@"
    code=$?
    set -e
    case $code in
        0) status=passed ;;
        124 | 137) status=timed-out ;;
        *) status=failed ;;
    esac
    [[ $status == passed ]] || FAILED=1
    STATUSES+=(--status "$name=$status")
    echo "== $name: $status (exit $code, $((SECONDS - began)) s)"
}

MODE=$( ((DRY_RUN)) && echo "dry run" || echo "full size")
echo "== gpu_check.sh ($MODE) on $DEVICE into $OUT, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "== commit $(git describe --always --dirty 2>/dev/null || echo unknown)"
if ! ((DRY_RUN)) && command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
fi

# 0. The device must exist; nothing else can run without it.
run_step environment 60 "$PYTHON" -c "
import sys, importlib.metadata, torch
device = torch.device('$DEVICE')
print('python', sys.version.split()[0], 'torch', torch.__version__, 'cuda', torch.version.cuda,
      'transformers', importlib.metadata.version('transformers'), 'cpu threads', torch.get_num_threads())
if device.type == 'cuda':
    if not torch.cuda.is_available():
        sys.exit('gpu_check.sh: this torch build or machine has no CUDA device; run --dry-run for the CPU check.')
    print('device', torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory // 2**30, 'GiB')
"
if ((FAILED)); then
    "$PYTHON" benchmarks/gpu_summary.py "${STATUSES[@]}"
    exit 1
fi

# 1. The device-marked tests on the device (TF32 off; each compared with a CPU reference).
run_step device-tests 120 env LITELVLM_TEST_DEVICE="$DEVICE" \
    "$PYTHON" -m pytest -q -p no:cacheprovider -m device $TESTS

# 2. The GLaMM bench: full size on the GPU; on the CPU a tiny GLaMM checkpoint in the official layout (the
#    random 7B architecture, even cut to one layer, takes minutes to build and run on a CPU).
BENCH_OUTPUTS=(--no-progress --json "$BENCH_JSON" --markdown "$OUT/${PREFIX}glamm7b_${TAG}_bf16.md"
    --plot "$OUT/${PREFIX}glamm7b_${TAG}_bf16.png")
if ((DRY_RUN)); then
    TINY=${TINY_MODEL:-$OUT/tiny-glamm}
    if [[ ! -f $TINY/config.json ]]; then
        run_step tiny-model 120 "$PYTHON" -c \
            "import sys; from litelvlm.testing import make_tiny_glamm; make_tiny_glamm(sys.argv[1], seed=0)" "$TINY"
    fi
    # (--budget-mode final: with 4 LLM layers fastv's unpruned early layers cannot average 64 tokens per layer)
    run_step bench 120 "$PYTHON" -m litelvlm bench --model "$TINY" --device cpu --dtype bfloat16 \
        --methods litelvlm,fastv --budgets 576,64 --budget-mode final --runs 1 --warmup 0 "${BENCH_OUTPUTS[@]}"
else
    run_step bench 240 "$PYTHON" -m litelvlm bench --device "$DEVICE" --dtype bfloat16 \
        --methods litelvlm,fastv --budgets 576,192,128,64 --runs 10 --warmup 3 "${BENCH_OUTPUTS[@]}"
fi

# 3. SAM ViT-H's encoder: litelvlm's fused forward vs transformers' SDPA and eager, same weights.
SAM_OUTPUTS=(--json "$SAM_JSON" --markdown "$OUT/${PREFIX}sam_encoder_${TAG}_bf16.md")
if ((DRY_RUN)); then
    run_step sam-encoder 90 "$PYTHON" benchmarks/sam_encoder.py --tiny --runs 1 --device cpu --dtype bfloat16 \
        "${SAM_OUTPUTS[@]}"
else
    run_step sam-encoder 90 "$PYTHON" benchmarks/sam_encoder.py --runs 20 --device "$DEVICE" --dtype bfloat16 \
        "${SAM_OUTPUTS[@]}"
fi

# 4. With the time left: the other fast tests of the same files (on the CPU; the dry run only collects them).
if [[ -z ${MORE_TESTS//[[:space:]]/} ]]; then
    echo "== more-tests: skipped (GPU_CHECK_MORE_TESTS is empty)"
    STATUSES+=(--status more-tests=skipped)
elif ((DRY_RUN)); then
    run_step more-tests 60 "$PYTHON" -m pytest -q -p no:cacheprovider --collect-only -m "not device and not slow" \
        $MORE_TESTS
else
    run_step more-tests 600 env LITELVLM_TEST_DEVICE="$DEVICE" \
        "$PYTHON" -m pytest -q -p no:cacheprovider -m "not device and not slow" $MORE_TESTS
fi

echo "== done in $((SECONDS - START)) s; files in $OUT"
# 5. The summary line (standard library only: it cannot fail for lack of the device).
"$PYTHON" benchmarks/gpu_summary.py --bench "$BENCH_JSON" --sam "$SAM_JSON" "${STATUSES[@]}"
exit "$FAILED"
