#!/usr/bin/env bash
# Reproduces benchmarks/TABLE1.md: the seed paper's Table 1 (denoising, K = 4, trained at sigma 0.20) at
# the scale of a 2-core CPU without GPU, plus inpainting, deblurring and compressed sensing end to end.
#
# Usage (from the repository root, with the project's venv in .venv):
#
#     benchmarks/table1.sh                  # every stage: pilot denoise tasks summary
#     benchmarks/table1.sh pilot            # learning-rate pilots only (~5 min)
#     benchmarks/table1.sh denoise          # Table 1: train flow / U-Net / ResNet prox, evaluate (~15 min)
#     benchmarks/table1.sh denoise_eval     # only the evaluation of the trained denoisers
#     benchmarks/table1.sh summary          # tables with finite-output counts from the runs' CSVs
#     benchmarks/table1.sh tasks            # inpainting, deblurring, compressed sensing, flow prox (~6 min)
#
# Runs go to runs/table1/<name>/ (git-ignored; a stage deletes and rewrites its own runs); the small
# result files are copied to benchmarks/results/table1_* (denoising) and tasks_* (other tasks). Wall
# times of every command are appended to runs/table1/times.tsv (copied to results/table1_times.tsv).
# Everything runs on one CPU thread (OMP_NUM_THREADS=1; `invprox train/eval` have no --threads option)
# and uses fixed seeds (--seed 0 for training, the evaluation's measurement seed 0), so re-running gives
# the same numbers up to floating-point non-determinism of the CPU kernels.
#
# Why `invprox_flow` instead of plain `invprox` for the flow solver: with the shipped defaults
# (FlowProxSolver mu_init = 0.5, lam_init = 0.1) the solver built on benchmarks/results/glow_celeba32.pt
# returns inf/NaN at sigma 0.20 before any training (the first `invprox train --prox flow` step stops with
# "training loss is nan at step 1"): the Glow's inverse overflows on the shrunk latents of noisy inputs.
# `invprox train` has no option for the initial mu_k / lambda_k, so `invprox_flow` runs the same CLI with
# invprox.solvers.factory.build_solver wrapped to pass mu_init=$FLOW_MU_INIT, lam_init=$FLOW_LAM_INIT
# (0.1, 0.5: finite on all 32 probe images at sigma 0.10, 0.20, 0.25; 0.1, 0.1 was too, but
# training from it hit a NaN loss at step 39; from 0.1, 0.5 the denoising run still stops with a NaN
# loss at step 41, and the script goes on with its solver.pt of step 40). Nothing else changes; mu_k and
# lambda_k are learned as usual, and `invprox eval` loads the trained values from solver.pt.
set -euo pipefail

cd "$(dirname "$0")/.."
PY=.venv/bin/python
GLOW=benchmarks/results/glow_celeba32.pt
RUNS=runs/table1
RES=benchmarks/results
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
export FLOW_MU_INIT=${FLOW_MU_INIT:-0.1} FLOW_LAM_INIT=${FLOW_LAM_INIT:-0.5}
mkdir -p "$RUNS"

# ---------------------------------------------------------------------------------------------------------
# settings (the write-up quotes them)
DATA=(--data celeba64 --size 32 --channels 3)
STEPS=80             # training steps of every denoising solver (batch 8: 640 distinct faces, 0.13 epoch)
TASK_STEPS=15        # training steps per task (flow prox)
LR_FLOW=1e-4         # chosen by the pilot (see TABLE1.md)
LR_CNN=1e-3          # chosen by the U-Net pilot, used for both CNN baselines
LR_STEP=1e-2         # mu_k, lambda_k (paper)
EVAL_LIMIT=64        # first 64 faces of celeba64/val (people not in train)
REF_LIMIT=8          # BM3D and latent MAP: first 8 of them, sigma 0.10 and 0.20 (Asim et al.'s levels)
TASK_LIMIT=16        # inpainting, deblurring, compressed sensing: first 16 val faces
LM_STEPS=30          # latent MAP Adam steps (lr 0.05, from z = 0)
# baselines sized to the flow solver (4 untied Glows of 0.74 M = 2.95 M parameters)
UNET=(--prox unet --features 40 --depth 2)        # 2.92 M
RESNET=(--prox resnet --features 128 --n-blocks 2) # 2.51 M (the paper's 128 feature maps)

# ---------------------------------------------------------------------------------------------------------
invprox_flow() {  # `invprox ARGS` with the flow solver's initial mu_k, lambda_k overridden (see top)
    "$PY" - "$@" <<'PYEOF'
import os, sys
import torch
torch.set_num_threads(1)
import invprox.solvers.factory as factory
_build = factory.build_solver
def build_solver(kind, *args, **kw):
    if kind == "flow":
        kw.setdefault("mu_init", float(os.environ["FLOW_MU_INIT"]))
        kw.setdefault("lam_init", float(os.environ["FLOW_LAM_INIT"]))
    return _build(kind, *args, **kw)
factory.build_solver = build_solver
from invprox.cli import main
sys.exit(main(sys.argv[1:]))
PYEOF
}

timed() {  # timed NAME CMD...: run CMD, append "NAME<TAB>seconds" to times.tsv
    local name=$1; shift
    local t0=$SECONDS rc=0
    "$@" || rc=$?
    printf '%s\t%s\t%s\n' "$name" "$((SECONDS - t0))" "exit $rc" >> "$RUNS/times.tsv"
    echo "== $name: $((SECONDS - t0)) s, exit $rc"
    return $rc
}

train() {  # train NAME ARGS...: fresh run in runs/table1/NAME
    local name=$1; shift
    rm -rf "${RUNS:?}/$name"
    timed "train $name" invprox_flow train "${DATA[@]}" --K 4 --batch 8 --seed 0 --patience 0 \
        --no-progress --out "$RUNS/$name" "$@"
}

input_rows() {  # input_rows EVAL_DIR MODEL LIMIT SIGMA...: PSNR/SSIM of the input A^T y (clamped to [0,1])
    # on exactly the measurements `invprox eval` used (same images, same seed); writes EVAL_DIR/input.json
    "$PY" - "$@" <<'PYEOF'
import json, sys
import torch
torch.set_num_threads(1)
from invprox.checkpoint import load_checkpoint
from invprox.data import make_dataset
from invprox.train.evaluate import _ssim
from invprox.train.loop_utils import dataset_tensor
from invprox.train.solver_setup import fixed_measurements
from invprox.metrics import psnr
out, model, limit, sigmas = sys.argv[1], sys.argv[2], int(sys.argv[3]), [float(s) for s in sys.argv[4:]]
cfg = load_checkpoint(model)["config"]
x = dataset_tensor(make_dataset(cfg["data"], size=cfg["size"], channels=cfg["channels"], split="val"), limit)
res = {}
for s in sigmas:
    ps, ss = [], []
    for a, b, y, op in fixed_measurements(x, range(len(x)), cfg["task"], cfg["physics_options"], s, 0, "eval", 16):
        est = op.A_adjoint(y).clamp(0, 1)
        ps.append(psnr(est, x[a:b])); ss.append(_ssim(est, x[a:b]))
    res[f"{s:g}"] = {"psnr": float(torch.cat(ps).mean()), "ssim": float(torch.cat(ss).mean())}
json.dump({"method": "input A^T y (clamped)", "task": cfg["task"], "n_images": len(x), "mean": res},
          open(f"{out}/input.json", "w"), indent=1)
print("input A^T y:", " | ".join(f"sigma {k}: {v['psnr']:.2f} / {v['ssim']:.4f}" for k, v in res.items()))
PYEOF
}

# ---------------------------------------------------------------------------------------------------------
stage_pilot() {
    # Learning-rate pilots, validated on the first 32 TRAINING faces (not on the evaluation images).
    local -x FLOW_LAM_INIT=0.1   # the pilots were run with lam_init 0.1 (before the step-39 NaN, see top)
    local pv=(--val-data /work/shared/data/celeba64/train --n-val 32 --n-train 800 --sigma 0.2)
    for lr in 1e-4 1e-5; do
        train "pilot_flow_lr$lr" "${pv[@]}" --prox flow --flow "$GLOW" --standard-autograd \
            --lr-net "$lr" --lr-step "$LR_STEP" --max-steps 25 --val-every 25
    done
    for lr in 1e-3 1e-4; do
        train "pilot_unet_lr$lr" "${pv[@]}" "${UNET[@]}" --lr-net "$lr" --lr-step "$LR_STEP" \
            --max-steps 50 --val-every 50
    done
    "$PY" - "$RUNS" <<'PYEOF' | tee "$RES/table1_pilot.md"
import json, sys, pathlib
print("| pilot run | steps | val PSNR (32 train faces, sigma 0.2) | wall s |\n|---|---|---|---|")
for d in sorted(pathlib.Path(sys.argv[1]).glob("pilot_*")):
    m = json.loads((d / "metrics.json").read_text())
    print(f"| {d.name} | {m['steps']} | {m['val'][-1]['val_psnr']:.2f} | {m['wall_time_s']:.0f} |")
PYEOF
}

stage_denoise() {
    # validation every 20 steps on the first 32 TRAINING faces (never on the evaluation faces); solver.pt
    # is the best of these validations. A non-finite loss stops a run; its solver.pt (last good
    # validation) is then used and the stop is reported.
    local common=(--sigma 0.2 --n-train 2400 --max-steps "$STEPS" --val-every 20 --n-val 32
                  --val-data /work/shared/data/celeba64/train --lr-step "$LR_STEP")
    train flow_dn "${common[@]}" --prox flow --flow "$GLOW" --standard-autograd --lr-net "$LR_FLOW" \
        || [ -f "$RUNS/flow_dn/solver.pt" ]
    train unet_dn "${common[@]}" "${UNET[@]}" --lr-net "$LR_CNN"
    train resnet_dn "${common[@]}" "${RESNET[@]}" --lr-net "$LR_CNN"
    stage_denoise_eval
}

stage_denoise_eval() {
    rm -rf "$RUNS/eval_dn"
    timed "eval denoising" invprox_flow eval \
        --model "$RUNS/flow_dn/solver.pt" --name "flow prox" \
        --model "$RUNS/unet_dn/solver.pt" --name "U-Net prox" \
        --model "$RUNS/resnet_dn/solver.pt" --name "ResNet prox" \
        --data celeba64 --split val --limit "$EVAL_LIMIT" --sigmas 0.10 0.15 0.20 0.25 \
        --grid-sigma 0.2 --seed 0 --no-progress --out "$RUNS/eval_dn"
    input_rows "$RUNS/eval_dn" "$RUNS/flow_dn/solver.pt" "$EVAL_LIMIT" 0.10 0.15 0.20 0.25
    # references on a small subset: BM3D (bm3d 4.0.3) takes ~4 s per 32x32 RGB image on this CPU
    rm -rf "$RUNS/eval_lm"
    timed "eval references" invprox_flow eval --latent-map --flow "$GLOW" --lm-steps "$LM_STEPS" \
        --model "$RUNS/flow_dn/solver.pt" --name "flow prox" \
        --model "$RUNS/unet_dn/solver.pt" --name "U-Net prox" \
        --model "$RUNS/resnet_dn/solver.pt" --name "ResNet prox" --classical \
        --data celeba64 --split val --limit "$REF_LIMIT" --sigmas 0.10 0.20 --seed 0 --no-progress \
        --out "$RUNS/eval_lm"
    input_rows "$RUNS/eval_lm" "$RUNS/flow_dn/solver.pt" "$REF_LIMIT" 0.10 0.20
    cp "$RUNS/eval_lm/input.json" "$RES/table1_references_input.json"
    cp "$RUNS/eval_lm/results.md" "$RES/table1_references.md"
    cp "$RUNS/eval_lm/results.json" "$RES/table1_references.json"
    cp "$RUNS/eval_lm/grid.png" "$RES/table1_references_grid.png"
    cp "$RUNS/eval_dn/results.md" "$RES/table1_results.md"
    cp "$RUNS/eval_dn/results.json" "$RES/table1_results.json"
    cp "$RUNS/eval_dn/input.json" "$RES/table1_input.json"
    cp "$RUNS/eval_dn/per_image.csv" "$RES/table1_per_image.csv"
    cp "$RUNS/eval_dn/grid.png" "$RES/table1_grid.png"
    for m in flow_dn unet_dn resnet_dn; do cp "$RUNS/$m/metrics.json" "$RES/table1_train_$m.json"; done
    cp "$RUNS/times.tsv" "$RES/table1_times.tsv"
}

stage_tasks() {
    local common=(--sigma 0.05 --n-train 400 --max-steps "$TASK_STEPS" --val-every 5 --n-val 16
                  --val-data /work/shared/data/celeba64/train --lr-step "$LR_STEP")
    local -A opts=([inpainting]="--task inpainting --p-missing 0.5"
                   [deblurring]="--task deblurring --kernel gaussian --blur-std 1.5"
                   [compressed_sensing]="--task compressed_sensing --cs-ratio 0.25")
    for task in inpainting deblurring compressed_sensing; do
        # shellcheck disable=SC2206
        local t=(${opts[$task]})
        train "flow_$task" "${common[@]}" "${t[@]}" --prox flow --flow "$GLOW" --standard-autograd \
            --lr-net "$LR_FLOW" || [ -f "$RUNS/flow_$task/solver.pt" ]
        rm -rf "$RUNS/eval_$task"
        timed "eval $task" invprox_flow eval \
            --model "$RUNS/flow_$task/solver.pt" --name "flow prox" \
            --classical \
            --data celeba64 --split val --limit "$TASK_LIMIT" --sigmas 0.05 --seed 0 --no-progress \
            --out "$RUNS/eval_$task"
        input_rows "$RUNS/eval_$task" "$RUNS/flow_$task/solver.pt" "$TASK_LIMIT" 0.05
        for f in results.md results.json input.json grid.png; do
            cp "$RUNS/eval_$task/$f" "$RES/tasks_${task}_${f}"
        done
        cp "$RUNS/flow_$task/metrics.json" "$RES/tasks_${task}_train_flow.json"
    done
    cp "$RUNS/times.tsv" "$RES/table1_times.tsv"
}

stage_summary() {  # tables with the number of finite outputs (eval's mean is n/a if one image is NaN)
    "$PY" - "$RUNS" "$RES" <<'PYEOF'
import csv, json, math, sys, pathlib
runs, res = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
def table(ev, title):
    rows = {}
    for r in csv.DictReader(open(ev / "per_image.csv")):
        rows.setdefault(r["method"], {}).setdefault(float(r["sigma"]), []).append((float(r["psnr"]), float(r["ssim"])))
    sig = sorted({s for m in rows.values() for s in m})
    inp = json.loads((ev / "input.json").read_text())["mean"]
    out = [f"### {title}", "", "PSNR (dB) / SSIM, mean over the images whose output is finite; [k/n]: k of n "
           "outputs finite", "", "| method | " + " | ".join(f"sigma {s:g}" for s in sig) + " |",
           "|---" * (len(sig) + 1) + "|",
           "| input A^T y (clamped) | " + " | ".join(f"{inp[f'{s:g}']['psnr']:.2f} / {inp[f'{s:g}']['ssim']:.4f}" for s in sig) + " |"]
    for m, d in rows.items():
        cells = []
        for s in sig:
            v = d[s]; f = [x for x in v if math.isfinite(x[0])]
            c = f"{sum(a for a, _ in f) / len(f):.2f} / {sum(b for _, b in f) / len(f):.4f}" if f else "n/a"
            cells.append(c + ("" if len(f) == len(v) else f" [{len(f)}/{len(v)}]"))
        out.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"
if (runs / "eval_dn").exists():
    (res / "table1_summary.md").write_text(
        table(runs / "eval_dn", "Denoising, celeba64 val faces 0-63, 32x32") + "\n" +
        table(runs / "eval_lm", "Denoising with references, celeba64 val faces 0-7, 32x32"))
    print((res / "table1_summary.md").read_text())
tasks = [t for t in ("inpainting", "deblurring", "compressed_sensing") if (runs / f"eval_{t}").exists()]
if tasks:
    (res / "tasks_summary.md").write_text("\n".join(table(runs / f"eval_{t}", f"{t}, celeba64 val faces 0-15, 32x32") for t in tasks))
    print((res / "tasks_summary.md").read_text())
PYEOF
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(pilot denoise tasks summary)
for s in "${stages[@]}"; do
    case $s in
        pilot|denoise|denoise_eval|tasks|summary) "stage_$s" ;;
        *) echo "unknown stage $s (pilot, denoise, denoise_eval, tasks, summary)" >&2; exit 2 ;;
    esac
done
