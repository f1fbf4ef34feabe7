#!/usr/bin/env bash
# `make bench-gpu`: every check that needs a GPU, in one command that fits ~13 minutes on one GPU.
#
#   1. engine_k     the flow solver at paper scale (64x64 RGB, Glow 3 x 32 x 512, batch 16, untied folds):
#                   CUDA peak memory of one training step vs K for standard autograd, checkpoint per fold
#                   and invprox; the largest K that fits the card (linear fit); time per step relative to
#                   standard; gradient error (benchmarks/solver_k.py --device cuda)
#   2. precision    bf16 / fp16 autocast gradient errors of the engine on CUDA (precision_errors.py)
#   3. paper_scale  Table 1 at the paper's scale: pre-train, train flow / U-Net / ResNet prox with equal
#                   wall time, evaluate (benchmarks/paper_scale.py, ~7 minutes)
#   4. gpu_tests    pytest -m gpu
#
# Results go to benchmarks/results/gpu/ (OUT; commit them, the device is named in summary.txt and each
# table); checkpoints to runs/gpu_suite_work/ (WORK, git-ignored). Each part has
# its own time limit and a failed part does not stop the others; the exit status is non-zero if any failed.
#
#     benchmarks/gpu_suite.sh            # on a machine with CUDA
#     benchmarks/gpu_suite.sh --tiny     # the same parts at toy sizes on the CPU, in about a minute (tests)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
if [ "${1:-}" = "--tiny" ]; then
    TINY=1 DEV=cpu OUT=${OUT:-runs/gpu_suite_tiny}
    ENGINE=(--size 8 --levels 2 --steps 1 --hidden 8 --batch 2 --ks 1 2 --repeats 1 --time-budget 5
            --no-peak)
    PAPER=(--tiny --data embedded)
else
    TINY=0 DEV=cuda OUT=${OUT:-benchmarks/results/gpu}
    ENGINE=(--size 64 --levels 3 --steps 32 --hidden 512 --batch 16 --ks 1 2 4 8 16 --repeats 3
            --time-budget 20 --budget 130GiB)
    PAPER=()
fi
mkdir -p "$OUT"
: > "$OUT/summary.txt"
status=0
part() {  # part NAME SECONDS CMD...: run CMD with a time limit, log to OUT/NAME.log
    local name=$1 limit=$2
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\texit %s\t%s s\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
    [ "$rc" -eq 0 ] || status=1
}
"$PY" -c "import torch; print('device:', torch.cuda.get_device_name(0) if torch.cuda.is_available() \
    else 'CPU', '| torch', torch.__version__)" | tee -a "$OUT/summary.txt"
part engine_k 200 "$PY" benchmarks/solver_k.py --device "$DEV" "${ENGINE[@]}" --parts sweep --no-plots \
    --methods standard checkpoint invprox --out "$OUT" --stem "engine_k_$DEV"
part precision 60 "$PY" benchmarks/precision_errors.py --device "$DEV"
part paper_scale 450 "$PY" benchmarks/paper_scale.py --device "$DEV" "${PAPER[@]}" --out "$OUT/paper_scale" \
    --work "${WORK:-runs/gpu_suite_work}"
if [ "$TINY" -eq 0 ]; then
    part gpu_tests 90 "$PY" -m pytest -q -m gpu -p no:cacheprovider
fi
exit $status
