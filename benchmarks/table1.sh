#!/usr/bin/env bash
# Reproduces benchmarks/TABLE1.md: the seed paper's Table 1 (denoising, K = 4, trained at sigma 0.20) at
# the scale of a 2-core CPU without GPU with an equal CPU budget per solver, PSNR vs K, and inpainting
# and deblurring under the same protocol.
#
# Usage (from the repository root, with the project's venv in .venv):
#
#     benchmarks/table1.sh                  # every stage: denoise k_sweep tasks (~2 h)
#     benchmarks/table1.sh pilot            # learning-rate pilots only (~5 min)
#     benchmarks/table1.sh denoise          # Table 1: train flow / U-Net / ResNet prox, evaluate (~70 min)
#     benchmarks/table1.sh denoise_train    # only the training (two 25-minute pairs of runs)
#     benchmarks/table1.sh denoise_eval     # only the evaluation of the trained denoisers
#     benchmarks/table1.sh k_sweep          # PSNR and activation memory vs K = 1..16 (~25 min)
#     benchmarks/table1.sh tasks            # inpainting, deblurring: flow / U-Net / ResNet prox (~25 min)
#     benchmarks/table1.sh prior            # a stronger 32x32 prior, a 64x64 one (~30 min)
#     benchmarks/table1.sh denoise_more     # flow prox: stronger prior, lr 5e-4; U-Net seed 1 (~70 min)
#     benchmarks/table1.sh tasks_prior      # inpainting, deblurring with the stronger prior (~10 min)
#     benchmarks/table1.sh refs_prior       # BM3D, latent MAP (stronger prior) and every solver, 32 faces
#     benchmarks/table1.sh prior2           # the stronger prior trained further, cosine schedule (~45 min)
#     benchmarks/table1.sh denoise_prior2   # flow prox on it (two seeds), U-Net prox seed 2 (~60 min)
#     benchmarks/table1.sh channels_last    # flow prox (that prior) and U-Net prox, channels-last (~30 min)
#     benchmarks/table1.sh batch4           # the same two at batch 4 (~30 min)
#     benchmarks/table1.sh cosine           # flow prox, warm-up + cosine learning rate, peaks 1e-4, 2e-4 (~35 min)
#     benchmarks/table1.sh tied             # flow prox with one Glow for all folds; U-Net prox, cosine (~35 min)
#     benchmarks/table1.sh split            # flow prox at lr 2e-4, 3e-4 with its split priors frozen (~35 min)
#     benchmarks/table1.sh longer           # flow prox, U-Net prox of denoise_prior2 resumed to 50 minutes (~35 min)
#     benchmarks/table1.sh longer3          # the same resumed to 75 minutes (~35 min)
#     benchmarks/table1.sh grow             # flow / U-Net prox: K = 1 for GROW_K1 minutes, then grown to K = 4
#                                           # for the rest (--init-from; ~35 min): grow_k1, then grow_k4
#     benchmarks/table1.sh grow_resnet      # the same for ResNet prox (~30 min, one core)
#     benchmarks/table1.sh grow_unet_seed1  # the same for U-Net prox, seed 1 (~30 min, one core)
#     benchmarks/table1.sh tasks_grow       # deblurring: flow and U-Net prox grown from one fold (~10 min)
#     benchmarks/table1.sh k1_full          # stage grow's one-fold runs resumed to 25 minutes (~20 min)
#     benchmarks/table1.sh k1_screen        # one-fold flow prox: lr 3e-4, mu kept at 0.5 (~15 min)
#     benchmarks/table1.sh alive            # flow prox with every fold trainable (--keep-mu), plain and
#                                           # grown from k1_screen's lr-3e-4 fold (~35 min)
#     benchmarks/table1.sh k1_m2            # one-fold flow and U-Net prox for the whole budget, on a machine
#                                           # with AVX-512 (3.4x the steps of the first one; ~35 min)
#     benchmarks/table1.sh k1_m2_resnet     # the same for ResNet prox (~30 min, one core)
#     benchmarks/table1.sh cond_y           # flow prox whose Glows also read A^T y (--cond-y), K = 1 and
#                                           # K = 4, whole budget (second machine; ~35 min)
#     benchmarks/table1.sh channel          # one-fold flow prox with a lambda per latent channel
#                                           # (--lam-per channel): Gaussian shrinkage and soft
#                                           # thresholding (--shrinkage laplace) (~35 min)
#     benchmarks/table1.sh channel_cond     # one-fold flow prox with both: --lam-per channel --cond-y
#                                           # (~30 min, one core)
#     benchmarks/table1.sh lam_y            # one-fold flow prox whose shrinkage map is read from A^T y
#                                           # (--lam-y; ~30 min, one core)
#     benchmarks/table1.sh lam_y_cond       # the same with conditional Glows too (--cond-y; one core)
#     benchmarks/table1.sh tasks_cond       # inpainting, deblurring: flow prox with and without --cond-y,
#                                           # U-Net prox (second machine; ~30 min)
#     benchmarks/table1.sh k1_lr3           # one-fold flow prox at lr 3e-4 (second machine; one core)
#     benchmarks/table1.sh wide             # one-fold flow prox on the prior widened to 128 hidden channels
#                                           # (--widen 128; second machine; one core)
#     benchmarks/table1.sh coupling         # one-fold flow prox, coupling layers at 3e-4, the rest of the
#                                           # flow at 1e-4 (--lr-coupling; second machine; one core)
#     benchmarks/table1.sh coupling_split   # the same with the split priors at 3e-4 too (one core)
#     benchmarks/table1.sh coupling_frozen  # the same with the rest of each flow kept as pre-trained
#                                           # (--lr-net 0; one core)
#     benchmarks/table1.sh coupling_frozen5 # the same with the couplings at 5e-4 (one core)
#     benchmarks/table1.sh coupling_cosine  # stage coupling with a cosine decay of the rates (one core)
#     benchmarks/table1.sh anchor           # stage coupling with the Glows pulled towards the prior
#                                           # (--anchor 1e-5; one core)
#     benchmarks/table1.sh tasks_coupling   # stage tasks_cond's flow prox runs with --lr-coupling (one core)
#     benchmarks/table1.sh unet_seed1_m2 coupling_cosine_seed1   # U-Net prox (stage k1_m2) and the flow
#                                           # prox of stage coupling_cosine with seed 1 (one core each)
#     benchmarks/table1.sh cosine_m2        # stage coupling_cosine's schedule with every network at 1e-4
#     benchmarks/table1.sh paired           # paired per-image differences, flow prox vs U-Net prox (seconds)
#     benchmarks/table1.sh step_cost        # a trained solver's step: batch, Adam, bf16, profile, compile
#     benchmarks/table1.sh budget_150       # untied flow prox and U-Net prox, 150 CPU min (~2 h 50 min;
#                                           # run again on the same machine to continue from checkpoints)
#     benchmarks/table1.sh budget_100_m3    # stage budget_100's pair with seed 1 on the third machine
#                                           # (AVX2), then its curves and paired report (~2 h)
#     benchmarks/table1.sh budget_100_m3_flip  # the same pair trained on randomly mirrored faces (--flip),
#                                           # then curves and paired reports against budget_100_m3 (~2 h)
#     benchmarks/table1.sh mirror_m3        # those two pairs tested with the self-ensemble over the
#                                           # mirror (invprox eval --mirror), and paired reports (~2 min)
#     benchmarks/table1.sh budget_150_seed1 # the same with seed 1, then the curves, budget and paired
#                                           # reports of both seeds (~2 h 40 min; as budget_150)
#
# Runs go to runs/table1/<name>/ (git-ignored; a stage deletes and rewrites its own runs); the small
# result files are copied to benchmarks/results/table1_* (denoising) and tasks_* (other tasks). Wall
# times of every command are appended to runs/table1/times.tsv (copied to results/table1_times.tsv).
# Everything runs on one CPU thread (OMP_NUM_THREADS=1; `invprox train/eval` have no --threads option)
# and uses fixed seeds (--seed 0 for training, the evaluation's measurement seed 0), so re-running gives
# the same numbers up to floating-point non-determinism of the CPU kernels.
#
# The Glow is benchmarks/results/glow_celeba32.pt, trained with --scale-min 0.5 (see benchmarks/README.md):
# a first Glow without that bound had an inverse that overflowed on noisy faces, and the flow solver built
# on it gave NaN (the history is in TABLE1.md).
set -euo pipefail

cd "$(dirname "$0")/.."
PY=.venv/bin/python
GLOW=benchmarks/results/glow_celeba32.pt
RUNS=runs/table1
RES=benchmarks/results
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p "$RUNS"

# ---------------------------------------------------------------------------------------------------------
# settings (the write-up quotes them)
DATA=(--data celeba64 --size 32 --channels 3)
BUDGET=25            # minutes of CPU time (one thread) in training steps, every denoising solver
K_BUDGET=6           # the same, per K of the PSNR-vs-K sweep
STEPS=80             # legacy: training steps of the pilot runs
TASK_BUDGET=6        # minutes of CPU time per solver and task (inpainting, deblurring)
LR_FLOW=3e-4         # best of 1e-5/1e-4/3e-4 over 12 minutes (issue 10); 1e-3 is run beside it
LR_CNN=1e-3          # chosen by the U-Net pilot, used for both CNN baselines
LR_STEP=1e-2         # mu_k, lambda_k (paper)
REF_LIMIT=32         # BM3D and latent MAP: the first 32 faces of celeba64/val (~4 s per face for BM3D)
TASK_LIMIT=64        # inpainting, deblurring: first 64 val faces
PRIOR_MORE=30        # minutes of wall time: further training of the 32x32 prior (stage prior)
PRIOR_64=20          # minutes of wall time: a 64x64 prior of the same shape (stage prior)
GROW_K1=10           # minutes of the budget at K = 1 before growing to K = 4 (stage grow)
PRIOR2_STEPS=5200    # steps of the second further training of the 32x32 prior (cosine to 0; ~45 min)
# Table 1's training protocol (every denoising stage; the write-up's Protocol table)
PROTOCOL=(--sigma 0.2 --budget-minutes "$BUDGET" --val-every 100 --n-val 64 --val-data holdout
          --lr-step "$LR_STEP" --clip-grad 1.0 --start smooth --calibrate 32)
# baselines sized to the flow solver (4 untied Glows of 0.74 M = 2.95 M parameters)
UNET=(--prox unet --features 40 --depth 2)        # 2.92 M
RESNET=(--prox resnet --features 128 --n-blocks 2) # 2.51 M (the paper's 128 feature maps)

# ---------------------------------------------------------------------------------------------------------
invprox() {  # the command line of this checkout, on one thread
    "$PY" -m invprox.cli "$@"
}
timed() {  # timed NAME CMD...: run CMD, append "NAME<TAB>seconds" to times.tsv
    local name=$1; shift
    local t0=$SECONDS rc=0
    "$@" || rc=$?
    printf '%s\t%s\t%s\n' "$name" "$((SECONDS - t0))" "exit $rc" >> "$RUNS/times.tsv"
    echo "== $name: $((SECONDS - t0)) s, exit $rc"
    return $rc
}

train() {
    # train NAME ARGS...: fresh run in runs/table1/NAME; with RESUME=1 a run that has a checkpoint there (one
    # stopped before its end, e.g. by a session's end) continues from it instead (invprox train --resume)
    local name=$1 more=(); shift
    if [ -n "${RESUME:-}" ] && [ -f "$RUNS/$name/checkpoint.pt" ]; then
        more=(--resume)
    else
        rm -rf "${RUNS:?}/$name"
    fi
    timed "train $name" invprox train "${DATA[@]}" --K 4 --batch 8 --seed 0 --patience 0 \
        --no-progress --out "$RUNS/$name" "$@" "${more[@]}"
}

keep_prior() {  # keep_prior RUN STEM: a pre-training run's flow, metrics and samples to RES/STEM*
    cp "$RUNS/$1/flow.pt" "$RES/$2.pt"
    cp "$RUNS/$1/metrics.json" "$RES/$2_metrics.json"
    cp "$RUNS/$1/samples.png" "$RES/$2_samples.png"
}

keep_train() {  # keep_train NAME...: a run's training metrics to RES (runs that are not evaluated)
    local m
    for m in "$@"; do cp "$RUNS/$m/metrics.json" "$RES/table1_train_${m}.json"; done
}

tested() {  # tested NAME: run NAME has test results, in runs/ or as the copy eval_test keeps in RES
    [ -f "$RUNS/eval_$1/results.json" ] || [ -f "$RES/table1_$1_results.json" ]
}
eval_test() {  # eval_test NAME...: each run on all 600 test faces at the four sigmas; results to RES
    local m
    for m in "$@"; do
        rm -rf "$RUNS/eval_$m"
        timed "eval $m" invprox eval --model "$RUNS/$m/solver.pt" --name "$m" --data celeba64 --split val \
            --sigmas 0.10 0.15 0.20 0.25 --seed 0 --no-progress --out "$RUNS/eval_$m"
        cp "$RUNS/eval_$m/results.md" "$RES/table1_${m}_results.md"
        cp "$RUNS/eval_$m/results.json" "$RES/table1_${m}_results.json"
        cp "$RUNS/eval_$m/per_image.csv" "$RES/table1_${m}_per_image.csv"
        cp "$RUNS/$m/metrics.json" "$RES/table1_train_${m}.json"
    done
}
eval_mirror() {  # eval_mirror NAME...: eval_test with --mirror (the self-ensemble), as run NAME_mirror
    local m
    for m in "$@"; do
        rm -rf "$RUNS/eval_${m}_mirror"
        timed "eval $m --mirror" invprox eval --model "$RUNS/$m/solver.pt" --name "$m" --data celeba64 \
            --split val --sigmas 0.10 0.15 0.20 0.25 --seed 0 --mirror --no-progress --out "$RUNS/eval_${m}_mirror"
        local f
        for f in results.md results.json per_image.csv; do
            cp "$RUNS/eval_${m}_mirror/$f" "$RES/table1_${m}_mirror_$f"
        done
    done
}


# ---------------------------------------------------------------------------------------------------------
stage_pilot() {
    # Learning-rate pilots, validated on the first 32 TRAINING faces (not on the evaluation images).
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
    stage_denoise_train
    stage_denoise_eval
}

stage_denoise_train() {
    # Equal budget: every solver trains for BUDGET minutes of its own process's CPU time on one thread
    # (validation and calibration excluded), two runs at a time on the two cores. Validation every 100
    # steps on the last 64 faces of celeba64/train, held out from training (never the test faces);
    # solver.pt is the best of these validations (early stopping by selection). Every solver starts from
    # the calibrated smooth start (--start smooth --calibrate 32); the flow also calibrates mu_k and a
    # lambda per latent level. A fifth run, "flow_init", is the flow solver calibrated and not trained.
    local common=("${PROTOCOL[@]}")
    train flow_init "${common[@]}" --prox flow --flow "$GLOW" --max-steps 0
    train flow_dn "${common[@]}" --prox flow --flow "$GLOW" --standard-autograd --lr-net "$LR_FLOW" &
    train unet_dn "${common[@]}" "${UNET[@]}" --lr-net "$LR_CNN" &
    wait
    train resnet_dn "${common[@]}" "${RESNET[@]}" --lr-net "$LR_CNN" &
    train flow_dn_lr1e-3 "${common[@]}" --prox flow --flow "$GLOW" --standard-autograd --lr-net 1e-3 &
    wait
}

stage_denoise_eval() {
    # all 600 faces of celeba64/val (20 people never seen in training) at four noise levels; references
    # that take seconds per image (BM3D, latent MAP) on the first REF_LIMIT faces, with the solvers
    # again on those faces. The two evaluations run side by side on the two cores. (The flow run at lr 1e-3
    # is in the training table and the curves only: it stops at a non-finite loss before any validation.)
    local models=(--model "$RUNS/flow_dn/solver.pt" --name "flow prox"
                  --model "$RUNS/unet_dn/solver.pt" --name "U-Net prox"
                  --model "$RUNS/resnet_dn/solver.pt" --name "ResNet prox"
                  --model "$RUNS/flow_init/solver.pt" --name "flow prox, calibrated, untrained")
    rm -rf "$RUNS/eval_dn" "$RUNS/eval_ref"
    timed "eval denoising" invprox eval "${models[@]}" --data celeba64 --split val \
        --sigmas 0.10 0.15 0.20 0.25 --grid-sigma 0.2 --seed 0 --no-progress --out "$RUNS/eval_dn" &
    timed "eval references" invprox eval "${models[@]}" --latent-map --flow "$GLOW" --classical \
        --data celeba64 --split val --limit "$REF_LIMIT" --sigmas 0.10 0.15 0.20 0.25 --grid-sigma 0.2 \
        --seed 0 --no-progress --out "$RUNS/eval_ref" &
    wait
    cp "$RUNS/eval_ref/results.md" "$RES/table1_references.md"
    cp "$RUNS/eval_ref/results.json" "$RES/table1_references.json"
    cp "$RUNS/eval_ref/grid.png" "$RES/table1_references_grid.png"
    cp "$RUNS/eval_dn/results.md" "$RES/table1_results.md"
    cp "$RUNS/eval_dn/results.json" "$RES/table1_results.json"
    cp "$RUNS/eval_dn/per_image.csv" "$RES/table1_per_image.csv"
    cp "$RUNS/eval_dn/grid.png" "$RES/table1_grid.png"
    for m in flow_init flow_dn unet_dn resnet_dn flow_dn_lr1e-3; do
        cp "$RUNS/$m/metrics.json" "$RES/table1_train_$m.json"
    done
    timed "curves" "$PY" benchmarks/table1_curves.py --runs flow_dn unet_dn resnet_dn flow_dn_lr1e-3 \
        --step-time
    cp "$RUNS/times.tsv" "$RES/table1_times.tsv"
}

stage_k_sweep() {
    # PSNR vs K with the new defaults: every K trains the flow solver for K_BUDGET CPU minutes (one
    # thread, two runs at a time), then benchmarks/psnr_memory_k.py scores it on 64 unseen faces and
    # measures the activation memory of one training step with and without the engine.
    local common=(--sigma 0.2 --budget-minutes "$K_BUDGET" --val-every 50 --n-val 64 --val-data holdout
                  --lr-step "$LR_STEP" --clip-grad 1.0 --start smooth --calibrate 32 --prox flow
                  --flow "$GLOW" --standard-autograd --lr-net "$LR_FLOW")
    for pair in "1 16" "2 8" "4"; do
        for K in $pair; do train "k$K" "${common[@]}" --K "$K" & done
        wait
    done
    timed "psnr_memory_k" "$PY" benchmarks/psnr_memory_k.py --ks 1 2 4 8 16
}

stage_tasks() {
    # The TSP paper's other tasks, the same fair protocol as denoising at a smaller budget: flow, U-Net and
    # ResNet prox trained TASK_BUDGET CPU minutes each (two at a time), the calibrated smooth start,
    # validation on held-out training faces; test on the first TASK_LIMIT faces of celeba64/val with the
    # classical reference (biharmonic + TV inpainting, TV deblurring).
    local common=(--sigma 0.05 --budget-minutes "$TASK_BUDGET" --val-every 50 --n-val 64
                  --val-data holdout --lr-step "$LR_STEP" --clip-grad 1.0 --start smooth --calibrate 32)
    local inp=(--task inpainting --p-missing 0.5) deb=(--task deblurring --kernel gaussian --blur-std 1.5)
    local flow=(--prox flow --flow "$GLOW" --standard-autograd --lr-net "$LR_FLOW")
    train flow_inpainting "${common[@]}" "${inp[@]}" "${flow[@]}" &
    train unet_inpainting "${common[@]}" "${inp[@]}" "${UNET[@]}" --lr-net "$LR_CNN" &
    wait
    train resnet_inpainting "${common[@]}" "${inp[@]}" "${RESNET[@]}" --lr-net "$LR_CNN" &
    train flow_deblurring "${common[@]}" "${deb[@]}" "${flow[@]}" &
    wait
    train unet_deblurring "${common[@]}" "${deb[@]}" "${UNET[@]}" --lr-net "$LR_CNN" &
    train resnet_deblurring "${common[@]}" "${deb[@]}" "${RESNET[@]}" --lr-net "$LR_CNN" &
    wait
    for task in inpainting deblurring; do
        rm -rf "$RUNS/eval_$task"
        timed "eval $task" invprox eval --model "$RUNS/flow_$task/solver.pt" --name "flow prox" \
            --model "$RUNS/unet_$task/solver.pt" --name "U-Net prox" \
            --model "$RUNS/resnet_$task/solver.pt" --name "ResNet prox" --classical \
            --data celeba64 --split val --limit "$TASK_LIMIT" --sigmas 0.05 --seed 0 --no-progress \
            --out "$RUNS/eval_$task" &
    done
    wait
    for task in inpainting deblurring; do
        for f in results.md results.json grid.png; do
            cp "$RUNS/eval_$task/$f" "$RES/tasks_${task}_${f}"
        done
        for m in flow unet resnet; do
            cp "$RUNS/${m}_$task/metrics.json" "$RES/tasks_${task}_train_$m.json"
        done
    done
    cp "$RUNS/times.tsv" "$RES/table1_times.tsv"
}

stage_prior() {
    # Issue 10's "stronger prior": the committed 32x32 Glow trained PRIOR_MORE more minutes (fresh Adam,
    # lr 1e-3 after 100 warm-up steps); beside it, a Glow of the same shape on the 64x64 faces for PRIOR_64
    # minutes. One thread each. bits/dim on all 600 celeba64/val faces after every epoch.
    local glow=(--data celeba64 --standard-autograd --threads 1 --no-progress --epochs 100 --lr 1e-3)
    rm -rf "$RUNS/glow32_more" "$RUNS/glow64"
    timed "prior glow32_more" invprox pretrain "${glow[@]}" --init "$GLOW" --batch 32 --warmup 100 \
        --max-minutes "$PRIOR_MORE" --seed 1 --out "$RUNS/glow32_more" &
    timed "prior glow64" invprox pretrain "${glow[@]}" --size 64 --channels 3 --levels 3 --steps 8 \
        --hidden 64 --n-bits 5 --scale-min 0.5 --batch 16 --warmup 200 --max-minutes "$PRIOR_64" \
        --seed 0 --out "$RUNS/glow64" &
    wait
    keep_prior glow32_more glow_celeba32_more
    cp "$RUNS/glow64/metrics.json" "$RES/glow_celeba64_metrics.json"
    cp "$RUNS/glow64/samples.png" "$RES/glow_celeba64_samples.png"
}

stage_denoise_more() {
    # What makes the flow prox win? More runs under Table 1's protocol (25 CPU minutes, the same validation
    # and early stopping): the flow with the stronger prior of stage_prior at network lr 2e-4 and 1e-4, skipping
    # steps with a non-finite gradient (this prior's runs hit NaN gradients: at step 394 with lr 3e-4, at
    # step 588 with 2e-4); the flow at lr 5e-4 with the table's prior (between 3e-4 and 1e-3, which
    # diverged); U-Net prox with another seed (how far a baseline moves by chance). Two at a time.
    local common=("${PROTOCOL[@]}")
    local flow=(--prox flow --standard-autograd)
    train flow_dn_prior "${common[@]}" "${flow[@]}" --flow "$RES/glow_celeba32_more.pt" --lr-net 2e-4 \
        --skip-nonfinite 10 &
    train flow_dn_lr5e-4 "${common[@]}" "${flow[@]}" --flow "$GLOW" --lr-net 5e-4 &
    wait
    train unet_dn_seed1 "${common[@]}" "${UNET[@]}" --lr-net "$LR_CNN" --seed 1 &
    train flow_dn_prior_lr1e-4 "${common[@]}" "${flow[@]}" --flow "$RES/glow_celeba32_more.pt" \
        --lr-net 1e-4 --skip-nonfinite 10 &
    wait
    # second seeds: the flow prox at lr 1e-4 and ResNet prox
    train flow_dn_prior_lr1e-4_seed1 "${common[@]}" "${flow[@]}" --flow "$RES/glow_celeba32_more.pt" \
        --lr-net 1e-4 --skip-nonfinite 10 --seed 1 &
    train resnet_dn_seed1 "${common[@]}" "${RESNET[@]}" --lr-net "$LR_CNN" --seed 1 &
    wait
    eval_test flow_dn_prior_lr1e-4_seed1 resnet_dn_seed1
    rm -rf "$RUNS/eval_lr1e-4"
    timed "eval lr1e-4" invprox eval --model "$RUNS/flow_dn_prior_lr1e-4/solver.pt" \
        --name "flow prox, stronger prior, lr 1e-4" --data celeba64 --split val \
        --sigmas 0.10 0.15 0.20 0.25 --seed 0 --no-progress --out "$RUNS/eval_lr1e-4"
    for f in results.md results.json per_image.csv; do
        cp "$RUNS/eval_lr1e-4/$f" "$RES/table1_prior_lr1e-4_$f"
    done
    rm -rf "$RUNS/eval_more"
    timed "eval more" invprox eval --model "$RUNS/flow_dn_prior/solver.pt" --name "flow prox, stronger prior" \
        --model "$RUNS/unet_dn_seed1/solver.pt" --name "U-Net prox, seed 1" --data celeba64 --split val \
        --sigmas 0.10 0.15 0.20 0.25 --seed 0 --no-progress --out "$RUNS/eval_more"
    for f in results.md results.json per_image.csv; do
        cp "$RUNS/eval_more/$f" "$RES/table1_more_$f"
    done
    for m in flow_dn_prior flow_dn_lr5e-4 unet_dn_seed1 flow_dn_prior_lr1e-4; do
        cp "$RUNS/$m/metrics.json" "$RES/table1_train_${m}.json"
    done
}

flow_tasks() {  # flow_tasks PRIOR SUFFIX LABEL: inpainting and deblurring as in stage_tasks, flow prox alone
    local prior=$1 sfx=$2 label=$3 task
    local common=(--sigma 0.05 --budget-minutes "$TASK_BUDGET" --val-every 50 --n-val 64
                  --val-data holdout --lr-step "$LR_STEP" --clip-grad 1.0 --start smooth --calibrate 32
                  --prox flow --flow "$prior" --standard-autograd --lr-net "$LR_FLOW" --skip-nonfinite 10)
    train "flow_inpainting_$sfx" "${common[@]}" --task inpainting --p-missing 0.5 &
    train "flow_deblurring_$sfx" "${common[@]}" --task deblurring --kernel gaussian --blur-std 1.5 &
    wait
    for task in inpainting deblurring; do
        rm -rf "$RUNS/eval_${task}_$sfx"
        timed "eval $task $sfx" invprox eval --model "$RUNS/flow_${task}_$sfx/solver.pt" \
            --name "$label" --data celeba64 --split val --limit "$TASK_LIMIT" \
            --sigmas 0.05 --seed 0 --no-progress --out "$RUNS/eval_${task}_$sfx"
        cp "$RUNS/eval_${task}_$sfx/results.json" "$RES/tasks_${task}_${sfx}_results.json"
        cp "$RUNS/eval_${task}_$sfx/results.md" "$RES/tasks_${task}_${sfx}_results.md"
        cp "$RUNS/flow_${task}_$sfx/metrics.json" "$RES/tasks_${task}_${sfx}_train_flow.json"
    done
}

stage_tasks_prior() {  # the first stronger prior (stage prior)
    flow_tasks "$RES/glow_celeba32_more.pt" prior "flow prox, stronger prior"
}

stage_refs_prior() {
    # Issue 10's "above BM3D and latent MAP": the references on the first REF_LIMIT test faces, latent MAP
    # with the stronger prior, beside both seeds of every solver of stage denoise_more (the same faces).
    rm -rf "$RUNS/eval_ref_prior"
    timed "eval references, stronger prior" invprox eval \
        --model "$RUNS/flow_dn_prior_lr1e-4/solver.pt" --name "flow prox (stronger prior), seed 0" \
        --model "$RUNS/flow_dn_prior_lr1e-4_seed1/solver.pt" --name "flow prox (stronger prior), seed 1" \
        --model "$RUNS/unet_dn/solver.pt" --name "U-Net prox, seed 0" \
        --model "$RUNS/unet_dn_seed1/solver.pt" --name "U-Net prox, seed 1" \
        --model "$RUNS/resnet_dn/solver.pt" --name "ResNet prox, seed 0" \
        --model "$RUNS/resnet_dn_seed1/solver.pt" --name "ResNet prox, seed 1" \
        --latent-map --flow "$RES/glow_celeba32_more.pt" --classical --data celeba64 --split val \
        --limit "$REF_LIMIT" --sigmas 0.10 0.15 0.20 0.25 --grid-sigma 0.2 --seed 0 --no-progress \
        --out "$RUNS/eval_ref_prior"
    for f in results.md results.json; do cp "$RUNS/eval_ref_prior/$f" "$RES/table1_references_prior_$f"; done
}

stage_prior2() {
    # The stronger prior (glow_celeba32_more.pt) trained PRIOR2_STEPS more steps, a cosine schedule from
    # lr 1e-3 down to 0 after 100 warm-up steps (fresh Adam), one thread.
    rm -rf "$RUNS/glow32_cos"
    timed "prior glow32_cos" invprox pretrain --data celeba64 --standard-autograd --threads 1 --no-progress \
        --epochs 100 --lr 1e-3 --init "$RES/glow_celeba32_more.pt" --batch 32 --warmup 100 \
        --schedule cosine --max-steps "$PRIOR2_STEPS" --max-minutes 50 --seed 2 --out "$RUNS/glow32_cos"
    keep_prior glow32_cos glow_celeba32_cos
}

stage_denoise_prior2() {
    # Table 1's protocol with the prior of stage prior2: the flow prox at lr 1e-4 (seeds 0 and 1), and
    # U-Net prox with a third seed (how far the baseline moves by chance); evaluated on all 600 test faces.
    local common=("${PROTOCOL[@]}")
    local flow=(--prox flow --standard-autograd --flow "$RES/glow_celeba32_cos.pt" --lr-net 1e-4
                --skip-nonfinite 10)
    train unet_dn_seed2 "${common[@]}" "${UNET[@]}" --lr-net "$LR_CNN" --seed 2
    train flow_dn_prior2 "${common[@]}" "${flow[@]}" &
    train flow_dn_prior2_seed1 "${common[@]}" "${flow[@]}" --seed 1 &
    wait
    eval_test unet_dn_seed2 flow_dn_prior2 flow_dn_prior2_seed1
}

stage_channels_last() {
    # The same protocol with the solvers' weights and batches in channels-last memory format
    # (`--channels-last`): the flow prox (prior of stage prior2, lr 1e-4) and U-Net prox, side by side.
    local common=("${PROTOCOL[@]}" --channels-last)
    train flow_dn_cl_seed0 "${common[@]}" --prox flow --standard-autograd --flow "$RES/glow_celeba32_cos.pt" \
        --lr-net 1e-4 --skip-nonfinite 10 &
    train unet_dn_cl_seed0 "${common[@]}" "${UNET[@]}" --lr-net "$LR_CNN" &
    wait
    eval_test flow_dn_cl_seed0 unet_dn_cl_seed0
}

stage_batch4() {
    # Twice the steps in the same budget: the flow prox (prior of stage prior2, lr 1e-4) and U-Net prox at
    # batch 4 instead of 8, side by side.
    local common=("${PROTOCOL[@]}" --batch 4)
    train flow_dn_batch4 "${common[@]}" --prox flow --standard-autograd --flow "$RES/glow_celeba32_cos.pt" \
        --lr-net 1e-4 --skip-nonfinite 10 &
    train unet_dn_batch4 "${common[@]}" "${UNET[@]}" --lr-net "$LR_CNN" &
    wait
    eval_test flow_dn_batch4 unet_dn_batch4
}

COSINE=(--lr-schedule cosine --warmup 100)

stage_cosine() {
    # A learning-rate schedule: linear warm-up over 100 steps, then a cosine decay to 0 over the 25-minute
    # budget (`--lr-schedule cosine --warmup 100`; the decay follows the CPU time used): the flow prox
    # (prior of stage prior2) at peaks 1e-4 (its constant rate so far) and 2e-4 (diverged when constant).
    local common=("${PROTOCOL[@]}" "${COSINE[@]}")
    local flow=(--prox flow --standard-autograd --flow "$RES/glow_celeba32_cos.pt" --skip-nonfinite 10)
    train flow_dn_cos1e-4 "${common[@]}" "${flow[@]}" --lr-net 1e-4 &
    train flow_dn_cos2e-4 "${common[@]}" "${flow[@]}" --lr-net 2e-4 &
    wait
    stage_cosine_eval
}

stage_cosine_eval() {
    eval_test flow_dn_cos1e-4 &
    eval_test flow_dn_cos2e-4 &
    wait
}

stage_tied() {
    # One Glow shared by the four folds (`--tied`: a quarter of the parameters, the same compute), at the
    # flow prox's constant rate 1e-4; beside it U-Net prox with the schedule of stage cosine.
    local common=("${PROTOCOL[@]}")
    train flow_dn_tied "${common[@]}" --prox flow --standard-autograd --flow "$RES/glow_celeba32_cos.pt" \
        --skip-nonfinite 10 --tied --lr-net 1e-4 &
    train unet_dn_cos "${common[@]}" "${UNET[@]}" --lr-net "$LR_CNN" "${COSINE[@]}" &
    wait
    eval_test flow_dn_tied &
    eval_test unet_dn_cos &
    wait
}

resume_to() {  # resume_to MINUTES FROM NAME...: copy run NAME$FROM to NAME_MINUTES, resume it to MINUTES
    local minutes=$1 from=$2 m; shift 2
    for m in "$@"; do
        if [ ! -f "$RUNS/$m$from/checkpoint.pt" ]; then
            echo "resuming $RUNS/$m$from: run the stage that trains it first" >&2
            return 2
        fi
        rm -rf "${RUNS:?}/${m}_$minutes"
        cp -r "$RUNS/$m$from" "$RUNS/${m}_$minutes"
    done
    for m in "$@"; do
        timed "resume ${m}_$minutes" invprox train --resume --out "$RUNS/${m}_$minutes" \
            --budget-minutes "$minutes" --val-every 100 --patience 0 --skip-nonfinite 10 --no-progress &
    done
    wait
    for m in "$@"; do
        eval_test "${m}_$minutes" &
    done
    wait
}

stage_longer() {
    # Twice the budget: the flow prox at lr 1e-4 (stage denoise_prior2, seed 0) and U-Net prox (seed 2)
    # resumed from their 25-minute checkpoints to 50 CPU minutes in all (the budget counts both parts;
    # solver.pt stays the best validation of the whole run). Needs the runs of stage denoise_prior2.
    resume_to $((2 * BUDGET)) "" flow_dn_prior2 unet_dn_seed2
}

stage_longer3() {
    # Three times the budget: the runs of stage longer resumed to 75 CPU minutes.
    resume_to $((3 * BUDGET)) _50 flow_dn_prior2 unet_dn_seed2
}

stage_split() {
    # The flow prox at the rates that diverged (2e-4, 3e-4; the first value to explode was a learned split
    # prior's scale), with the split priors kept as pre-trained (`--lr-split 0`), side by side.
    local common=("${PROTOCOL[@]}")
    local flow=(--prox flow --standard-autograd --flow "$RES/glow_celeba32_cos.pt" --skip-nonfinite 10
                --lr-split 0)
    train flow_dn_split2e-4 "${common[@]}" "${flow[@]}" --lr-net 2e-4 &
    train flow_dn_split3e-4 "${common[@]}" "${flow[@]}" --lr-net 3e-4 &
    wait
    eval_test flow_dn_split2e-4 &
    eval_test flow_dn_split3e-4 &
    wait
}

stage_grow() {
    # Progressive depth, the same 25 CPU minutes in all: each solver trains with ONE fold for GROW_K1
    # minutes (a step costs a quarter), then grows to K = 4 (`--init-from`: the trained fold, then three
    # copies of it that start as the identity; the flow prox calibrates their mu and lambda) and trains
    # for the rest of the budget. Flow prox at its constant 1e-4 (prior of stage prior2), U-Net prox at 1e-3.
    stage_grow_k1
    stage_grow_k4
}

GROW_FLOW=(--prox flow --standard-autograd --lr-net 1e-4 --skip-nonfinite 10)

stage_grow_k1() {  # the first part of stage grow: K = 1 for GROW_K1 minutes
    local k1=(--K 1 --budget-minutes "$GROW_K1")
    train flow_dn_k1 "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" "${k1[@]}" &
    train unet_dn_k1 "${PROTOCOL[@]}" "${UNET[@]}" --lr-net "$LR_CNN" "${k1[@]}" &
    wait
    keep_train flow_dn_k1 unet_dn_k1
}

stage_grow_k4() {  # the second part: grown to K = 4, the rest of the budget; evaluated
    local k4=(--K 4 --budget-minutes "$((BUDGET - GROW_K1))")
    train flow_dn_grow "${PROTOCOL[@]}" "${GROW_FLOW[@]}" "${k4[@]}" --init-from "$RUNS/flow_dn_k1/solver.pt" &
    train unet_dn_grow "${PROTOCOL[@]}" "${UNET[@]}" --lr-net "$LR_CNN" "${k4[@]}" \
        --init-from "$RUNS/unet_dn_k1/solver.pt" &
    wait
    eval_test flow_dn_grow &
    eval_test unet_dn_grow &
    wait
}

stage_grow_resnet() {  # stage grow for ResNet prox (one run after the other, on one core)
    train resnet_dn_k1 "${PROTOCOL[@]}" "${RESNET[@]}" --lr-net "$LR_CNN" --K 1 --budget-minutes "$GROW_K1"
    train resnet_dn_grow "${PROTOCOL[@]}" "${RESNET[@]}" --lr-net "$LR_CNN" --K 4 \
        --budget-minutes "$((BUDGET - GROW_K1))" --init-from "$RUNS/resnet_dn_k1/solver.pt"
    eval_test resnet_dn_grow
    keep_train resnet_dn_k1
}

stage_grow_unet_seed1() {  # stage grow for U-Net prox with seed 1 (one run after the other, one core)
    train unet_dn_k1_seed1 "${PROTOCOL[@]}" "${UNET[@]}" --lr-net "$LR_CNN" --K 1 --budget-minutes "$GROW_K1" \
        --seed 1
    train unet_dn_grow_seed1 "${PROTOCOL[@]}" "${UNET[@]}" --lr-net "$LR_CNN" --K 4 --seed 1 \
        --budget-minutes "$((BUDGET - GROW_K1))" --init-from "$RUNS/unet_dn_k1_seed1/solver.pt"
    eval_test unet_dn_grow_seed1
    keep_train unet_dn_k1_seed1
}

grow_task() {  # grow_task NAME ARGS...: NAME_k1 at K = 1 for 40% of TASK_BUDGET, then NAME_grow at K = 4
    local name=$1; shift
    train "${name}_k1" "$@" --K 1 --budget-minutes "$(awk "BEGIN { print $TASK_BUDGET * 0.4 }")"
    train "${name}_grow" "$@" --K 4 --budget-minutes "$(awk "BEGIN { print $TASK_BUDGET * 0.6 }")" \
        --init-from "$RUNS/${name}_k1/solver.pt"
}

stage_tasks_grow() {
    # Deblurring, where the flow prox led at TASK_BUDGET minutes (stage tasks_prior): flow prox (that
    # prior, LR_FLOW) and U-Net prox grown from one fold within the same budget, side by side.
    local common=(--sigma 0.05 --val-every 50 --n-val 64 --val-data holdout --lr-step "$LR_STEP" --clip-grad 1.0
                  --start smooth --calibrate 32 --task deblurring --kernel gaussian --blur-std 1.5)
    grow_task flow_deblurring "${common[@]}" --prox flow --flow "$RES/glow_celeba32_more.pt" --standard-autograd \
        --lr-net "$LR_FLOW" --skip-nonfinite 10 &
    grow_task unet_deblurring "${common[@]}" "${UNET[@]}" --lr-net "$LR_CNN" &
    wait
    rm -rf "$RUNS/eval_deblurring_grow"
    timed "eval deblurring grow" invprox eval --model "$RUNS/flow_deblurring_grow/solver.pt" \
        --name "flow prox, grown" --model "$RUNS/unet_deblurring_grow/solver.pt" --name "U-Net prox, grown" \
        --data celeba64 --split val --limit "$TASK_LIMIT" --sigmas 0.05 --seed 0 --no-progress \
        --out "$RUNS/eval_deblurring_grow"
    for f in results.md results.json; do cp "$RUNS/eval_deblurring_grow/$f" "$RES/tasks_deblurring_grow_$f"; done
    for m in flow unet; do
        for part in k1 grow; do
            cp "$RUNS/${m}_deblurring_$part/metrics.json" "$RES/tasks_deblurring_train_${m}_$part.json"
        done
    done
}

stage_k1_full() {  # the control of stage grow: its one-fold runs kept at K = 1 for the whole budget
    resume_to "$BUDGET" "" flow_dn_k1 unet_dn_k1
}

stage_k1_m2() {
    # Stage k1_full's runs (one fold for the whole budget) from scratch on the second machine (a 2-core
    # AMD EPYC with AVX-512, where a training step takes 1/3.4 of the CPU time it took on the first):
    # the same budget, 3.4 times the steps.
    local k1=(--K 1 --budget-minutes "$BUDGET")
    train flow_dn_k1_m2 "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" "${k1[@]}" &
    train unet_dn_k1_m2 "${PROTOCOL[@]}" "${UNET[@]}" --lr-net "$LR_CNN" "${k1[@]}" &
    wait
    eval_test flow_dn_k1_m2 &
    eval_test unet_dn_k1_m2 &
    wait
}

stage_k1_m2_resnet() {  # stage k1_m2 for ResNet prox (one core)
    train resnet_dn_k1_m2 "${PROTOCOL[@]}" "${RESNET[@]}" --lr-net "$LR_CNN" --K 1 --budget-minutes "$BUDGET"
    eval_test resnet_dn_k1_m2
}

stage_cond_y() {
    # The flow prox with conditional Glows (--cond-y: every coupling network also reads A^T y, through a
    # zero-initialised 1x1 convolution), one fold and four, the whole budget, beside stage k1_m2's runs.
    local flow=("${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" --cond-y)
    train flow_dn_k1_cond "${flow[@]}" --K 1 &
    train flow_dn_k4_cond "${flow[@]}" --K 4 &
    wait
    eval_test flow_dn_k1_cond &
    eval_test flow_dn_k4_cond &
    wait
}

stage_channel() {
    # One fold for the whole budget (as stage k1_m2, second machine) with one shrinkage per channel of the
    # flow's internal tensor (66 lambdas instead of 3): the Gaussian prior's z / (1 + lambda_c), and soft
    # thresholding (the prox of a Laplace prior, lambda_c ||z_c||_1: nonlinear, as in wavelet shrinkage).
    local flow=("${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" --lam-per channel
                --K 1)
    train flow_dn_k1_channel "${flow[@]}" &
    train flow_dn_k1_channel_soft "${flow[@]}" --shrinkage laplace &
    wait
    eval_test flow_dn_k1_channel &
    eval_test flow_dn_k1_channel_soft &
    wait
}

stage_channel_cond() {  # stage channel's Gaussian run with conditional Glows too (one core)
    train flow_dn_k1_channel_cond "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" \
        --lam-per channel --K 1 --cond-y
    eval_test flow_dn_k1_channel_cond
}

stage_lam_y() {  # one fold for the whole budget (second machine), lambda map read from A^T y (one core)
    train flow_dn_k1_lamy "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" --K 1 --lam-y
    eval_test flow_dn_k1_lamy
}

stage_lam_y_cond() {  # the same with conditional Glows (one core)
    train flow_dn_k1_lamy_cond "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" --K 1 \
        --lam-y --cond-y
    eval_test flow_dn_k1_lamy_cond
}

stage_tasks_cond() {
    # Inpainting and deblurring as in stage tasks_prior (K = 4, TASK_BUDGET minutes, that prior at LR_FLOW),
    # on the second machine: the flow prox with conditional Glows (--cond-y) and without, and U-Net prox.
    local common=(--sigma 0.05 --budget-minutes "$TASK_BUDGET" --val-every 50 --n-val 64
                  --val-data holdout --lr-step "$LR_STEP" --clip-grad 1.0 --start smooth --calibrate 32)
    local inp=(--task inpainting --p-missing 0.5) deb=(--task deblurring --kernel gaussian --blur-std 1.5)
    local flow=(--prox flow --flow "$RES/glow_celeba32_more.pt" --standard-autograd --lr-net "$LR_FLOW"
                --skip-nonfinite 10)
    local task
    # two lanes of three runs, one per core; a run that stops on a non-finite loss keeps its best state
    # (solver.pt) and its lane goes on
    {
        train flow_inpainting_cond_m2 "${common[@]}" "${inp[@]}" "${flow[@]}" --cond-y || true
        train flow_inpainting_m2 "${common[@]}" "${inp[@]}" "${flow[@]}" || true
        train unet_inpainting_m2 "${common[@]}" "${inp[@]}" "${UNET[@]}" --lr-net "$LR_CNN" || true
    } &
    {
        train flow_deblurring_cond_m2 "${common[@]}" "${deb[@]}" "${flow[@]}" --cond-y || true
        train flow_deblurring_m2 "${common[@]}" "${deb[@]}" "${flow[@]}" || true
        train unet_deblurring_m2 "${common[@]}" "${deb[@]}" "${UNET[@]}" --lr-net "$LR_CNN" || true
    } &
    wait
    for task in inpainting deblurring; do
        rm -rf "$RUNS/eval_${task}_cond_m2"
        timed "eval $task cond m2" invprox eval --model "$RUNS/flow_${task}_cond_m2/solver.pt" \
            --name "flow prox, cond y" --model "$RUNS/flow_${task}_m2/solver.pt" --name "flow prox" \
            --model "$RUNS/unet_${task}_m2/solver.pt" --name "U-Net prox" --data celeba64 --split val \
            --limit "$TASK_LIMIT" --sigmas 0.05 --seed 0 --no-progress --out "$RUNS/eval_${task}_cond_m2" &
    done
    wait
    for task in inpainting deblurring; do
        for f in results.md results.json; do cp "$RUNS/eval_${task}_cond_m2/$f" "$RES/tasks_${task}_cond_m2_$f"; done
        for m in flow_${task}_cond_m2 flow_${task}_m2 unet_${task}_m2; do
            cp "$RUNS/$m/metrics.json" "$RES/tasks_train_$m.json"
        done
    done
}

stage_k1_screen() {
    # One-fold flow prox runs of GROW_K1 minutes beside stage grow's flow_dn_k1 (lr 1e-4, calibrated mu):
    # lr 3e-4, and the step mu kept at 0.5 by the calibration.
    local k1=("${PROTOCOL[@]}" --prox flow --standard-autograd --skip-nonfinite 10 --K 1
              --budget-minutes "$GROW_K1" --flow "$RES/glow_celeba32_cos.pt")
    train flow_dn_k1_lr3e-4 "${k1[@]}" --lr-net 3e-4 &
    train flow_dn_k1_mu0.5 "${k1[@]}" --lr-net 1e-4 --keep-mu --mu-init 0.5 &
    wait
    keep_train flow_dn_k1_lr3e-4 flow_dn_k1_mu0.5
}

stage_alive() {
    # Folds kept trainable: the calibration keeps mu_k at 0.5 (--keep-mu), so no calibrated fold starts as
    # the identity that the calibration's smallest step and shrinkage make of it. The flow prox of Table
    # 1's protocol (K = 4, 25 minutes, lr 1e-4), and grown at lr 1e-4 from stage k1_screen's lr-3e-4 fold
    # (15 minutes; only the three new folds get mu 0.5, the source's fold keeps its calibrated step).
    train flow_dn_mu0.5 "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" \
        --keep-mu --mu-init 0.5 &
    train flow_dn_grow_mu0.5 "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --K 4 --budget-minutes "$((BUDGET - GROW_K1))" \
        --init-from "$RUNS/flow_dn_k1_lr3e-4/solver.pt" --keep-mu --mu-init 0.5 &
    wait
    eval_test flow_dn_mu0.5 &
    eval_test flow_dn_grow_mu0.5 &
    wait
}

stage_k1_lr3() {  # one fold for the whole budget (second machine) at the network rate 3e-4 (one core)
    # (it met non-finite losses at step 1,285, before any state worth testing: its training metrics are kept)
    train flow_dn_k1_lr3_m2 "${PROTOCOL[@]}" --prox flow --standard-autograd --lr-net 3e-4 --skip-nonfinite 10 \
        --flow "$RES/glow_celeba32_cos.pt" --K 1 || true
    keep_train flow_dn_k1_lr3_m2
}

stage_wide() {  # one fold (second machine), the prior's coupling networks widened to 128 channels (one core)
    train flow_dn_k1_wide128 "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" --K 1 \
        --widen 128
    eval_test flow_dn_k1_wide128
}

stage_coupling() {
    # One fold (second machine) with the Glows' coupling layers at 3e-4 and the rest of each flow (ActNorm,
    # 1x1 convolutions, split priors) at 1e-4: stage k1_lr3's rate where it is safe (one core)
    # (a run stopped by a non-finite loss keeps its best state, solver.pt, which is then tested)
    train flow_dn_k1_coup3 "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" --K 1 \
        --lr-coupling 3e-4 || true
    stage_coupling_eval
}

stage_coupling_eval() { eval_test flow_dn_k1_coup3; }  # stage coupling's test alone

stage_coupling_split() {  # stage coupling with the split priors at the couplings' rate too (one core)
    train flow_dn_k1_coup3_split "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" --K 1 \
        --lr-coupling 3e-4 --lr-split 3e-4 || true
    eval_test flow_dn_k1_coup3_split
}

stage_coupling_frozen() {
    # Stage coupling with the rest of each flow kept as pre-trained (--lr-net 0: ActNorm, the 1x1
    # convolutions and the split priors, whose effects nearly cancel between f and g = f^-1, so that Adam
    # turns their tiny gradients into steps of the full rate and they drift until the flow overflows)
    train flow_dn_k1_coup3_frozen "${PROTOCOL[@]}" --prox flow --standard-autograd --skip-nonfinite 10 \
        --flow "$RES/glow_celeba32_cos.pt" --K 1 --lr-net 0 --lr-coupling 3e-4 || true
    eval_test flow_dn_k1_coup3_frozen
}

cosine_k1() {
    # cosine_k1 NAME ARGS...: the one-fold flow prox on glow_celeba32_cos.pt (Table 1's protocol, every rate
    # decayed along a cosine after 100 warm-up steps) with ARGS, then tested (runs/table1/NAME)
    train "$1" "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" --K 1 --lr-schedule cosine \
        --warmup 100 "${@:2}" || true
    eval_test "$1"
}
# stage drop2_cond's flow prox (the coarsest level's flow steps dropped, couplings at 1e-3, A^T y read by
# every coupling), and the same with untied inverse flows (stage untie)
DROP2=(--level-steps 8,8,0 --lr-coupling 1e-3 --cond-y)
UNTIE=("${DROP2[@]}" --untie-inverse)

unet_cosine_k1() {
    # unet_cosine_k1 NAME ARGS...: U-Net prox of stage unet_cosine (Table 1's protocol, warm-up and cosine
    # decay) with ARGS, then tested (runs/table1/NAME)
    train "$1" "${PROTOCOL[@]}" "${UNET[@]}" --lr-net "$LR_CNN" --K 1 --lr-schedule cosine --warmup 100 "${@:2}"
    eval_test "$1"
}

stage_coupling_cosine() {
    # Stage coupling (couplings at 3e-4, the rest of each flow at 1e-4) with every rate decayed along a
    # cosine over the budget after 100 warm-up steps: the high rate early, where it learns fastest, and
    # low late, where every constant rate >= 3e-4 met non-finite losses (one core)
    cosine_k1 flow_dn_k1_coup3_cos --lr-coupling 3e-4
}

stage_anchor() {
    # Stage coupling (couplings at 3e-4, the rest of each flow at 1e-4; non-finite at step 5,900) with the
    # Glows' weights pulled towards the prior (--anchor): the coarsest level's couplings, whose
    # shrinkage is ~0 so that f and g = f^-1 cancel there, get gradients ~10x smaller than the finest
    # level's but drift as far under Adam, until the forward overflows (TABLE1.md; one core)
    # (a first run at --anchor 1e-4, flow_dn_k1_coup3_anchor1e-4, held the flow at the prior: 24.41 dB on
    # the held-out faces at step 4,000 against 25.05 without; stopped by hand at step 4,500, metrics kept)
    train flow_dn_k1_coup3_anchor1e-5 "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" \
        --K 1 --lr-coupling 3e-4 --anchor 1e-5 || true
    eval_test flow_dn_k1_coup3_anchor1e-5
}

stage_unet_seed1_m2() {  # stage k1_m2's U-Net prox with another seed (one core)
    train unet_dn_k1_m2_seed1 "${PROTOCOL[@]}" "${UNET[@]}" --lr-net "$LR_CNN" --K 1 --seed 1
    eval_test unet_dn_k1_m2_seed1
}

stage_coupling_cosine_seed1() {  # stage coupling_cosine with another seed (one core)
    cosine_k1 flow_dn_k1_coup3_cos_seed1 --lr-coupling 3e-4 --seed 1
}

stage_cosine_m2() {  # the control of stage coupling_cosine: the same schedule, every network at 1e-4 (one core)
    cosine_k1 flow_dn_k1_cos_m2
}

stage_coupling_frozen5() {  # stage coupling_frozen with the couplings at 5e-4 (one core)
    train flow_dn_k1_coup5_frozen "${PROTOCOL[@]}" --prox flow --standard-autograd --skip-nonfinite 10 \
        --flow "$RES/glow_celeba32_cos.pt" --K 1 --lr-net 0 --lr-coupling 5e-4 || true
    eval_test flow_dn_k1_coup5_frozen
}

tasks_flow_lane() {
    # tasks_flow_lane TAG LABEL FLOW_ARGS...: the flow prox for inpainting, then deblurring (K = 4,
    # TASK_BUDGET minutes, sigma 0.05, held-out validation; runs flow_<task>_TAG), tested on the first
    # TASK_LIMIT test faces as LABEL (results/tasks_<task>_TAG_results.*); one lane (one core)
    local tag=$1 label=$2; shift 2
    local common=(--sigma 0.05 --budget-minutes "$TASK_BUDGET" --val-every 50 --n-val 64
                  --val-data holdout --lr-step "$LR_STEP" --clip-grad 1.0 --start smooth --calibrate 32)
    local task tasks=(${LANE_TASKS:-inpainting deblurring})  # LANE_TASKS=inpainting: that task alone
    for task in "${tasks[@]}"; do
        local opts=(--task inpainting --p-missing 0.5)
        [ "$task" = deblurring ] && opts=(--task deblurring --kernel gaussian --blur-std 1.5)
        train "flow_${task}_$tag" "${common[@]}" "${opts[@]}" "$@" || true
    done
    for task in "${tasks[@]}"; do
        rm -rf "$RUNS/eval_${task}_$tag"
        timed "eval $task ${tag//_/ }" invprox eval --model "$RUNS/flow_${task}_$tag/solver.pt" \
            --name "$label" --data celeba64 --split val --limit "$TASK_LIMIT" \
            --sigmas 0.05 --seed 0 --no-progress --out "$RUNS/eval_${task}_$tag"
        for f in results.md results.json; do
            cp "$RUNS/eval_${task}_$tag/$f" "$RES/tasks_${task}_${tag}_$f"
        done
        cp "$RUNS/flow_${task}_$tag/metrics.json" "$RES/tasks_train_flow_${task}_$tag.json"
    done
}

stage_tasks_coupling() {
    # Stage tasks_cond's flow prox runs (K = 4, TASK_BUDGET minutes, prior of stage prior) with the coupling
    # layers at LR_FLOW and the rest of each flow at 1e-4 (--lr-coupling), one lane (one core); compared with
    # stage tasks_cond's runs on the same 64 test faces
    tasks_flow_lane coup3_m2 "flow prox, --lr-coupling" --prox flow --flow "$RES/glow_celeba32_more.pt" \
        --standard-autograd --lr-net 1e-4 --lr-coupling "$LR_FLOW" --skip-nonfinite 10
}

stage_coupling5_cosine() {
    # Stage coupling_cosine with the couplings at 5e-4 (constant 5e-4 diverged at step 2,800 with the rest
    # frozen): does the decay alone let a higher rate last? The control of stage eps (one core)
    cosine_k1 flow_dn_k1_coup5_cos --lr-coupling 5e-4
}

stage_eps() {
    # Stage coupling5_cosine with Adam's epsilon at 1e-6 instead of 1e-8 (--adam-eps): the coarsest level's
    # couplings, whose gradients are ~1e-6 and less because f and g cancel there, then take steps smaller
    # than the learning rate instead of drifting at Adam's full step (TABLE1.md; one core)
    cosine_k1 flow_dn_k1_coup5_cos_eps6 --lr-coupling 5e-4 --adam-eps 1e-6
}

stage_k1_m2_unet() {  # stage k1_m2's U-Net prox alone (one core): a rerun, for the OOD stage's models
    train unet_dn_k1_m2 "${PROTOCOL[@]}" "${UNET[@]}" --lr-net "$LR_CNN" --K 1 --budget-minutes "$BUDGET"
    eval_test unet_dn_k1_m2
}

stage_coupling_cosine_cond() {  # stage coupling_cosine with conditional Glows (--cond-y; one core)
    cosine_k1 flow_dn_k1_coup3_cos_cond --cond-y --lr-coupling 3e-4
}

stage_ood() {
    # The one-fold solvers trained at sigma 0.20 (stages coupling_cosine, coupling_cosine_seed1, freeze10,
    # k1_m2_unet, unet_seed1_m2, k1_m2_resnet), tested further out of their training noise: sigma 0.20 ...
    # 0.40 on all 600 test faces, as trained (start weight and lambda of sigma 0.20 at every level) and with
    # the noise level known (`invprox eval --adapt-start P --adapt-lam Q`: the smooth start's alpha times
    # (sigma / 0.20)^P for every solver, the flow prox's lambda times (sigma / 0.20)^Q; MAP scales both
    # with the noise variance, P = Q = 2). The runs present are evaluated, the others listed as missing.
    local runs=(flow_dn_k1_coup3_cos flow_dn_k1_coup3_cos_seed1 flow_dn_k1_coup10_cos_frz2 unet_dn_k1_m2
                unet_dn_k1_m2_seed1 resnet_dn_k1_m2)
    local args=() m pq
    for m in "${runs[@]}"; do
        if [ -f "$RUNS/$m/solver.pt" ]; then args+=(--model "$RUNS/$m/solver.pt" --name "$m")
        else echo "stage ood: $RUNS/$m/solver.pt missing (run its stage first); left out" >&2; fi
    done
    for pq in 0,0 1,0 1,1 2,0 2,2; do
        local tag="start${pq%,*}_lam${pq#*,}"
        rm -rf "$RUNS/eval_ood_$tag"
        timed "eval ood $tag" invprox eval "${args[@]}" --data celeba64 --split val \
            --sigmas 0.10 0.15 0.20 0.25 0.30 0.35 0.40 --adapt-start "${pq%,*}" --adapt-lam "${pq#*,}" \
            --seed 0 --no-progress --out "$RUNS/eval_ood_$tag"
        cp "$RUNS/eval_ood_$tag/results.md" "$RES/table1_ood_${tag}_results.md"
        cp "$RUNS/eval_ood_$tag/results.json" "$RES/table1_ood_${tag}_results.json"
    done
}

stage_freeze() {
    # The decayed couplings' rate (stage coupling_cosine) with the coarsest latent level kept as pre-trained
    # (--freeze-levels 2: its flow steps, 55% of the Glow's parameters): the learned shrinkage leaves that
    # level alone, so f and g cancel there, its weights get almost no gradient, and under Adam they drift
    # until its last steps overflow (TABLE1.md; the same in the 5e-4 run of stage coupling5_cosine). At
    # 3e-4 (does freezing it cost anything?) and 5e-4 (does it let the higher rate last?), one core each
    cosine_k1 flow_dn_k1_coup3_cos_frz2 --freeze-levels 2 --lr-coupling 3e-4 &
    cosine_k1 flow_dn_k1_coup5_cos_frz2 --freeze-levels 2 --lr-coupling 5e-4 &
    wait
}

stage_freeze_cond() {  # stage freeze's 5e-4 run with conditional Glows (--cond-y; one core)
    cosine_k1 flow_dn_k1_coup5_cos_frz2_cond --freeze-levels 2 --lr-coupling 5e-4 --cond-y
}

stage_freeze10() {  # stage freeze with the couplings at 1e-3 (one core)
    cosine_k1 flow_dn_k1_coup10_cos_frz2 --freeze-levels 2 --lr-coupling 1e-3
}

stage_tasks_freeze() {
    # Stage tasks_coupling's flow prox runs (K = 4, TASK_BUDGET minutes, prior of stage prior) with stage
    # freeze10's recipe: the coarsest level frozen, the couplings decayed from 1e-3 (one lane, one core)
    tasks_flow_lane frz2_m2 "flow prox, --freeze-levels 2" --prox flow --flow "$RES/glow_celeba32_more.pt" \
        --standard-autograd --lr-net 1e-4 --lr-coupling 1e-3 --lr-schedule cosine --warmup 100 \
        --freeze-levels 2 --skip-nonfinite 10
}

stage_freeze_cond_seed1() {  # stage freeze_cond with another seed (one core)
    cosine_k1 flow_dn_k1_coup5_cos_frz2_cond_seed1 --freeze-levels 2 --lr-coupling 5e-4 --cond-y --seed 1
}

stage_freeze10_cond() {  # stage freeze10 (couplings from 1e-3) with conditional Glows (one core)
    cosine_k1 flow_dn_k1_coup10_cos_frz2_cond --freeze-levels 2 --lr-coupling 1e-3 --cond-y
}

stage_freeze20() {  # stage freeze with the couplings at 2e-3 (one core)
    cosine_k1 flow_dn_k1_coup20_cos_frz2 --freeze-levels 2 --lr-coupling 2e-3
}

stage_freeze10_seed1() {  # stage freeze10 with another seed (one core)
    cosine_k1 flow_dn_k1_coup10_cos_frz2_seed1 --freeze-levels 2 --lr-coupling 1e-3 --seed 1
}

stage_freeze10_cond_seed1() {  # stage freeze10_cond with another seed (one core)
    cosine_k1 flow_dn_k1_coup10_cos_frz2_cond_seed1 --freeze-levels 2 --lr-coupling 1e-3 --cond-y --seed 1
}

stage_unet_cosine() {
    # The fairness check of the flow prox's schedule: U-Net prox (stage k1_m2_unet) with its rate warmed
    # up over 100 steps and decayed along a cosine over the budget, as every flow run since stage
    # coupling_cosine (one core)
    unet_cosine_k1 unet_dn_k1_cos_m2
}

stage_tasks_freeze_resnet() {  # stage tasks_freeze, then stage k1_m2_resnet (one lane, one core)
    stage_tasks_freeze
    stage_k1_m2_resnet
}

stage_drop2_cond() {
    # Stage freeze10_cond (couplings decayed from 1e-3, conditional Glows) with the coarsest level's flow
    # steps dropped instead of frozen (--level-steps 8,8,0: Glow.with_steps): the shrinkage leaves that
    # level almost alone (lambda 0.03), so f and g nearly cancel there, yet its 16 steps of f and g cost
    # 23% of a training step; another, cheaper flow, whose coarsest latents are its input, squeezed (one core)
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cond "${DROP2[@]}"
}

stage_drop2_cond_seed1() {  # stage drop2_cond with another seed (one core)
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cond_seed1 "${DROP2[@]}" --seed 1
}

stage_ood_heldout() {
    # Stage ood with the adaptation's exponents chosen, not probed: per solver, the start's P and the flow
    # prox's lambda Q from {0, 0.5, 1, 1.5, 2} by the mean PSNR at sigma 0.10 ... 0.40 on its own 64 held-out
    # training faces (benchmarks/adapt_choice.py, invprox eval --split validation), then all 600 test faces
    # as trained and as chosen. The runs present are used, the others listed as missing (one core)
    local runs=(flow_dn_k1_coup10_cos_frz2_cond flow_dn_k1_coup10_cos_frz2_cond_seed1
                flow_dn_k1_coup10_cos_drop2_cond flow_dn_k1_coup10_cos_drop2_cond_seed1 unet_dn_k1_m2
                unet_dn_k1_m2_seed1 unet_dn_k1_cos_m2 resnet_dn_k1_m2)
    local args=() m
    for m in "${runs[@]}"; do
        if [ -f "$RUNS/$m/solver.pt" ]; then args+=(--model "$m=$RUNS/$m/solver.pt")
        else echo "stage ood_heldout: $RUNS/$m/solver.pt missing (run its stage first); left out" >&2; fi
    done
    timed "ood heldout" "$PY" benchmarks/adapt_choice.py "${args[@]}" \
        --sigmas 0.10 0.15 0.20 0.25 0.30 0.35 0.40 --stem table1_ood_heldout
}

stage_tasks_freeze5_inpainting() {
    # Stage tasks_freeze's inpainting run (its couplings from 1e-3 met a NaN loss at step 261 and stopped
    # with the state of step 250) with the couplings decayed from 5e-4, stage freeze's lower rate (one core)
    LANE_TASKS=inpainting tasks_flow_lane frz2_5_m2 "flow prox, --freeze-levels 2, 5e-4" --prox flow \
        --flow "$RES/glow_celeba32_more.pt" --standard-autograd --lr-net 1e-4 --lr-coupling 5e-4 \
        --lr-schedule cosine --warmup 100 --freeze-levels 2 --skip-nonfinite 10
}

stage_untrained_k1() {
    # The one-fold flow prox of the freeze/drop stages before any training step (--max-steps 0: the
    # calibrated start, mu and lambda per level, conditional Glows whose injections start at zero), tested
    # as the trained runs are (one core, about a minute)
    train flow_dn_k1_untrained "${PROTOCOL[@]}" "${GROW_FLOW[@]}" --flow "$RES/glow_celeba32_cos.pt" --K 1 \
        --cond-y --max-steps 0
    eval_test flow_dn_k1_untrained
}

stage_drop2_net3() {
    # Stage drop2_cond with the rest of each flow (ActNorm, 1x1 convolutions, split priors) at 3e-4 instead
    # of 1e-4 (decayed too): every constant rate >= 3e-4 diverged while the coarsest level trained (one core)
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cond_net3 "${DROP2[@]}" \
        --lr-net 3e-4
}

stage_unet_cosine_seed1() {  # stage unet_cosine with another seed (one core)
    unet_cosine_k1 unet_dn_k1_cos_m2_seed1 --seed 1
}

kd_run() {  # kd_run K...: stage k_sweep_drop2's runs for these K, one after the other (one core)
    local K
    for K in "$@"; do
        train "kd$K" --sigma 0.2 --budget-minutes "$K_BUDGET" --val-every 50 --n-val 64 --val-data holdout \
            --lr-step "$LR_STEP" --clip-grad 1.0 --start smooth --calibrate 32 "${GROW_FLOW[@]}" \
            --flow "$RES/glow_celeba32_cos.pt" --K "$K" "${DROP2[@]}" \
            --lr-schedule cosine --warmup 100 || true
    done
}

stage_k_sweep_drop2() {
    # Stage k_sweep with stage drop2_cond's recipe (the coarsest level's flow steps dropped, couplings
    # decayed from 1e-3 after 100 warm-up steps, the rest at 1e-4, conditional Glows) on the prior of the
    # one-fold runs: every K trains for K_BUDGET CPU minutes (K = 1 and 16 on one core, 2, 4 and 8 on the
    # other); then psnr_memory_k.py (64 test faces, activation memory with and without the engine)
    kd_run 1 16 &
    kd_run 2 4 8 &
    wait
    timed "psnr_memory_k drop2" "$PY" benchmarks/psnr_memory_k.py --ks 1 2 4 8 16 --prefix kd \
        --stem psnr_memory_k_drop2
}

stage_drop2_net3_seed1() {  # stage drop2_net3 with another seed (one core)
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cond_net3_seed1 "${DROP2[@]}" \
        --lr-net 3e-4 --seed 1
}

stage_drop2_half1_net3() {
    # Stage drop2_net3 with half of the middle level's flow steps dropped too (--level-steps 8,4,0): its
    # shrinkage was 0.27 in stage freeze10_cond's run (the finest level's 2.9), so it does some of the
    # denoising; what do the cheaper steps buy against that? (one core)
    cosine_k1 flow_dn_k1_coup10_cos_drop2h1_cond_net3 --level-steps 8,4,0 --lr-coupling 1e-3 --cond-y \
        --lr-net 3e-4
}

stage_refs_k1() {
    # Issue 10's "above BM3D and latent MAP", for the one-fold solvers of the last section: the references
    # on the first REF_LIMIT test faces (BM3D, latent MAP with the prior the one-fold runs fine-tune),
    # beside those solvers on the same faces (one core)
    local runs=(flow_dn_k1_coup10_cos_drop2_cond flow_dn_k1_coup10_cos_drop2_cond_seed1 unet_dn_k1_cos_m2
                unet_dn_k1_cos_m2_seed1 resnet_dn_k1_m2)
    local args=() m
    for m in "${runs[@]}"; do
        if [ -f "$RUNS/$m/solver.pt" ]; then args+=(--model "$RUNS/$m/solver.pt" --name "$m")
        else echo "stage refs_k1: $RUNS/$m/solver.pt missing (run its stage first); left out" >&2; fi
    done
    rm -rf "$RUNS/eval_ref_k1"
    timed "eval references, one fold" invprox eval "${args[@]}" --latent-map --flow "$RES/glow_celeba32_cos.pt" \
        --classical --data celeba64 --split val --limit "$REF_LIMIT" --sigmas 0.10 0.15 0.20 0.25 \
        --grid-sigma 0.2 --seed 0 --no-progress --out "$RUNS/eval_ref_k1"
    for f in results.md results.json; do cp "$RUNS/eval_ref_k1/$f" "$RES/table1_references_k1_$f"; done
}

budget_lane() {
    # budget_lane KIND B...: stage budget_sweep's runs of one solver (flow, untie: stage untie's untied flow
    # prox, unet or resnet), B CPU minutes each, one after the other (one core); with BUDGET_SEED=S, seed S
    # (runs named ..._seedS); with BUDGET_TAG=T, runs named ..._bBT (e.g. T=_m3: another machine); with
    # BUDGET_ARGS="--opt ...", those options of invprox train too (e.g. --flip)
    local kind=$1 b seed=() tag="${BUDGET_TAG:-}"; shift
    if [ -n "${BUDGET_SEED:-}" ]; then seed=(--seed "$BUDGET_SEED"); tag="${tag}_seed$BUDGET_SEED"; fi
    # shellcheck disable=SC2206  # words on purpose: a list of options
    seed+=(${BUDGET_ARGS:-})
    for b in "$@"; do
        if [ "$kind" = flow ]; then
            cosine_k1 "flow_dn_k1_coup10_cos_drop2_cond_b$b$tag" "${DROP2[@]}" --budget-minutes "$b" "${seed[@]}"
        elif [ "$kind" = untie ]; then
            cosine_k1 "flow_dn_k1_coup10_cos_drop2_cond_untie_b$b$tag" "${UNTIE[@]}" --budget-minutes "$b" "${seed[@]}"
        elif [ "$kind" = unet ]; then
            unet_cosine_k1 "unet_dn_k1_cos_m2_b$b$tag" --budget-minutes "$b" "${seed[@]}"
        else  # ResNet prox as in stage k1_m2_resnet (constant rate)
            train "resnet_dn_k1_m2_b$b$tag" "${PROTOCOL[@]}" "${RESNET[@]}" --lr-net "$LR_CNN" --K 1 \
                --budget-minutes "$b" "${seed[@]}"
            eval_test "resnet_dn_k1_m2_b$b$tag"
        fi
    done
}

stage_budget_sweep() {
    # Where does the order of stage drop2_cond / unet_cosine change with the training budget? The same two
    # recipes (cosine decay over the whole budget) trained for 5 and 10 CPU minutes instead of 25, tested
    # on all 600 faces (flow prox on one core, U-Net prox on the other)
    budget_lane flow 5 10 &
    budget_lane unet 5 10 &
    wait
    stage_budget_report
}

stage_budget_report() {
    # Test PSNR against the budget (benchmarks/budget_sweep.py): the runs of stages budget_sweep,
    # budget_resnet, budget_5_seed1, budget_50, budget_100 and budget_150 tested (in runs/ or kept in
    # RES: runs/ does not outlive a machine), and the 25-minute
    # runs of stages drop2_cond(_seed1), untie / untie_unet, unet_cosine(_seed1) and k1_m2_resnet
    local b flow=() untie=() unet=() resnet=()
    for b in 5 10 25 50 100 150; do
        local f=flow_dn_k1_coup10_cos_drop2_cond_b$b u=unet_dn_k1_cos_m2_b$b r=resnet_dn_k1_m2_b$b
        local t=flow_dn_k1_coup10_cos_drop2_cond_untie_b$b
        [ "$b" = 25 ] && f=flow_dn_k1_coup10_cos_drop2_cond && u=unet_dn_k1_cos_m2 && r=resnet_dn_k1_m2 \
            && t=flow_dn_k1_coup10_cos_drop2_cond_untie
        local m
        for m in "$f" "${f}_seed1"; do tested "$m" && flow+=("$m"); done
        for m in "$t" "${t}_seed1"; do tested "$m" && untie+=("$m"); done
        for m in "$u" "${u}_seed1"; do tested "$m" && unet+=("$m"); done
        for m in "$r" "${r}_seed1"; do tested "$m" && resnet+=("$m"); done
    done
    timed "budget report" "$PY" benchmarks/budget_sweep.py --runs-dir "$RUNS" --stem table1_budget \
        --series "flow prox=$(IFS=,; echo "${flow[*]}")" \
        --series "flow prox, untied=$(IFS=,; echo "${untie[*]}")" --series "U-Net prox=$(IFS=,; echo "${unet[*]}")" \
        --series "ResNet prox=$(IFS=,; echo "${resnet[*]}")"
}

stage_budget_resnet() {  # stage budget_sweep for ResNet prox: 5 and 10 CPU minutes (one core)
    budget_lane resnet 5 10
}

stage_cond_net_pair() {
    # Stage cond_net's 8-map run and stage drop2_cond's plain run again, side by side (one core each): the
    # machine ran slower on the day of stage cond_net than when drop2_cond ran (the plain flow prox's
    # step 8.9-11.2 CPU s per 100 in that session's other runs against 8.1), so only runs made at the same
    # time are compared
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cond_r2 "${DROP2[@]}" &
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cnet8_r2 --level-steps 8,8,0 --lr-coupling 1e-3 --cond-net 8 &
    wait
}

stage_budget_5_seed1() {  # the 5-minute runs of stage budget_sweep with seed 1, one after the other (one core)
    BUDGET_SEED=1 budget_lane flow 5
    BUDGET_SEED=1 budget_lane unet 5
}

stage_budget_50() {  # stage budget_sweep's recipes for 50 CPU minutes (one core each; ~55 min)
    budget_lane flow 50 &
    budget_lane unet 50 &
    wait
}

stage_budget_100() {
    # stage untie's untied flow prox and stage unet_cosine's U-Net prox for 100 CPU minutes (one core each;
    # ~1 h 50 min): does U-Net prox's lead at the training noise (0.19 to 0.23 dB from 10 to 50 minutes with
    # the tied flow prox, 0.15 at 25 with the untied one) close when the curves have time to flatten?
    # (Not run yet: started and stopped by hand after 3 minutes in favour of stage batch16.)
    budget_lane untie 100 &
    budget_lane unet 100 &
    wait
    timed "curves" "$PY" benchmarks/table1_curves.py --runs flow_dn_k1_coup10_cos_drop2_cond_untie_b100 \
        unet_dn_k1_cos_m2_b100 --stem table1_b100
    stage_budget_report
}

stage_budget_100_m3_flip() {
    # Stage budget_100_m3's pair (seed 1, 100 CPU minutes, third machine) with training images mirrored
    # left-right at random (`invprox train --flip`): both solvers' outputs gain ~0.11 dB when averaged with
    # their output on the mirrored input (stage mirror_m3), so neither is mirror-symmetric; at 150 CPU
    # minutes both fit their training faces 0.4-0.5 dB better than the held-out ones. Does the augmentation change
    # either, or their order? Runs named ..._b100_m3_flip_seed1; one core each, ~1 h 55 min
    BUDGET_TAG=_m3_flip BUDGET_SEED=1 BUDGET_ARGS=--flip budget_lane untie 100 &
    BUDGET_TAG=_m3_flip BUDGET_SEED=1 BUDGET_ARGS=--flip budget_lane unet 100 &
    wait
    timed "curves" "$PY" benchmarks/table1_curves.py --runs flow_dn_k1_coup10_cos_drop2_cond_untie_b100_m3_seed1 \
        unet_dn_k1_cos_m2_b100_m3_seed1 flow_dn_k1_coup10_cos_drop2_cond_untie_b100_m3_flip_seed1 \
        unet_dn_k1_cos_m2_b100_m3_flip_seed1 --stem table1_b100_m3_flip
    stage_paired
    local t=flow_dn_k1_coup10_cos_drop2_cond_untie_b100_m3 u=unet_dn_k1_cos_m2_b100_m3
    paired table1_paired_m3_flip_flow "flow prox, --flip" "flow prox" "${t}_flip_seed1" "${t}_seed1"
    paired table1_paired_m3_flip_unet "U-Net prox, --flip" "U-Net prox" "${u}_flip_seed1" "${u}_seed1"
}

stage_mirror_m3() {
    # The self-ensemble over the left-right mirror (`invprox eval --mirror`) of the third machine's
    # 100-minute runs (stages budget_100_m3 and budget_100_m3_flip; those in runs/): what it adds to each
    # solver, and whether it changes their order (one core each, ~2 min)
    local t=flow_dn_k1_coup10_cos_drop2_cond_untie_b100_m3 u=unet_dn_k1_cos_m2_b100_m3 m
    local f="flow prox, untied" n="U-Net prox"
    for m in "${t}_seed1" "${t}_flip_seed1"; do [ -f "$RUNS/$m/solver.pt" ] && eval_mirror "$m"; done &
    for m in "${u}_seed1" "${u}_flip_seed1"; do [ -f "$RUNS/$m/solver.pt" ] && eval_mirror "$m"; done &
    wait
    paired table1_paired_b100_m3_mirror "$f, --mirror" "$n, --mirror" "${t}_seed1_mirror" "${u}_seed1_mirror"
    paired table1_paired_b100_m3_flip_mirror "$f, --mirror" "$n, --mirror" "${t}_flip_seed1_mirror" \
        "${u}_flip_seed1_mirror"
    paired table1_paired_m3_mirror_flow "$f, --mirror" "$f" "${t}_seed1_mirror" "${t}_seed1"
    paired table1_paired_m3_mirror_unet "$n, --mirror" "$n" "${u}_seed1_mirror" "${u}_seed1"
}

stage_budget_100_m3() {
    # Stage budget_100's pair (seed 1) on the third development machine (2-core AMD EPYC with AVX2 and no
    # AVX-512), where a step took 2.3x (flow prox) and 2.8x (U-Net prox) the CPU time of the second's
    # 100-minute runs: where does U-Net prox's lead at the training noise stand at 100 CPU minutes on a
    # slower machine, with another seed?
    # Runs named ..._b100_m3_seed1, kept out of stage budget_report (its budgets are the second machine's);
    # one core each, ~1 h 55 min
    BUDGET_TAG=_m3 BUDGET_SEED=1 budget_lane untie 100 &
    BUDGET_TAG=_m3 BUDGET_SEED=1 budget_lane unet 100 &
    wait
    timed "curves" "$PY" benchmarks/table1_curves.py --runs flow_dn_k1_coup10_cos_drop2_cond_untie_b100_m3_seed1 \
        unet_dn_k1_cos_m2_b100_m3_seed1 --stem table1_b100_m3
    stage_paired
}

stage_budget_150() {
    # Stage budget_100 for 150 CPU minutes, with epoch limits the budget reaches first (U-Net prox's
    # 100-minute run stopped at its 100-epoch limit after 69 minutes; 150 minutes are ~75,000 steps of the
    # flow prox, under 200 epochs, and ~130,000 of U-Net prox). U-Net prox's test PSNR at
    # sigma 0.20 stopped moving by 25 CPU minutes (25.90 / 25.92 / 25.91 at 25 / 50 / 100), the untied flow
    # prox's did not (25.71 at 25, three runs; 25.85 at 100): does it pass U-Net prox? One core each, ~2 h
    # 50 min: longer than a session; run again while runs/ is still there (it does not outlive the machine),
    # each run continues from its checkpoint on the same schedule
    # (the two halves were started apart: stage budget_150_flow, then budget_150_unet)
    stage_budget_150_flow &
    stage_budget_150_unet &
    wait
    budget_150_reports
}

stage_budget_150_seed1() {
    # Stage budget_150 with seed 1 (both runs): at 150 CPU minutes both solvers had saturated and U-Net prox
    # led at sigma 0.20 by 0.05 dB with one run each, less than the 0.07 dB that seeds and days moved a run
    # pair at 25 minutes. One core each, ~2 h 40 min; run again while runs/ is still there, each continues
    # from its checkpoint (a session that started it ended, and its runs/ was gone in the next: not run yet)
    budget_150_flow _seed1 --seed 1 &
    budget_150_unet _seed1 --seed 1 &
    wait
    budget_150_reports
}

budget_150_flow() {  # budget_150_flow SUFFIX ARGS...: the untied flow prox for 150 CPU min (continues a checkpoint)
    RESUME=1 cosine_k1 "flow_dn_k1_coup10_cos_drop2_cond_untie_b150$1" "${UNTIE[@]}" --budget-minutes 150 \
        --epochs 200 "${@:2}"
}

budget_150_unet() {  # budget_150_unet SUFFIX ARGS...: U-Net prox for 150 CPU min (continues a checkpoint)
    RESUME=1 unet_cosine_k1 "unet_dn_k1_cos_m2_b150$1" --budget-minutes 150 --epochs 1000 "${@:2}"
}

budget_150_reports() {
    # the curves of the 150-minute runs present (seed 0, and seed 1 where stage budget_150_seed1 has run; in
    # runs/ or as the copies eval_test keeps in RES, which table1_curves.py reads), the budget report and
    # stage paired (seconds; its 150-minute pair takes every seed present)
    local runs=() m
    for m in flow_dn_k1_coup10_cos_drop2_cond_untie_b150 unet_dn_k1_cos_m2_b150 \
             flow_dn_k1_coup10_cos_drop2_cond_untie_b150_seed1 unet_dn_k1_cos_m2_b150_seed1; do
        { [ -f "$RUNS/$m/metrics.json" ] || [ -f "$RES/table1_train_$m.json" ]; } && runs+=("$m")
    done
    timed "curves" "$PY" benchmarks/table1_curves.py --runs "${runs[@]}" --stem table1_b150
    stage_budget_report
    stage_paired
}

stage_budget_150_flow() {  # stage budget_150's flow prox (one core; continues from its checkpoint)
    budget_150_flow ""
}

stage_budget_150_unet() {  # stage budget_150's U-Net prox (one core; continues from its checkpoint)
    budget_150_unet ""
}

stage_untie() {
    # Stage drop2_cond with each fold's g the inverse of its own copy of the Glow (--untie-inverse): twice
    # the flow parameters for the same arithmetic per step, and no level that cancels between f and g.
    # Beside it, stage drop2_cond's run again (the machine's speed per step changes between sessions)
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cond_untie "${UNTIE[@]}" &
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cond_r3 "${DROP2[@]}" &
    wait
}

stage_untie_unet() {
    # Stage untie's flow prox with seed 1, side by side with stage unet_cosine's U-Net prox again: the
    # untied flow prox against U-Net prox on the same day (one core each)
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cond_untie_seed1 "${UNTIE[@]}" --seed 1 &
    unet_cosine_k1 unet_dn_k1_cos_m2_r2 &
    wait
}

per_image() {
    # per_image NAME: run NAME's evaluation folder holds its per-image results; where runs/ lost it (runs/
    # does not outlive a machine), it is restored from the copies eval_test keeps in RES (runs tested since
    # these copies began)
    local d="$RUNS/eval_$1"
    [ -f "$d/per_image.csv" ] && return 0
    [ -f "$RES/table1_$1_per_image.csv" ] && [ -f "$RES/table1_$1_results.json" ] || return 1
    mkdir -p "$d"
    cp "$RES/table1_$1_per_image.csv" "$d/per_image.csv"
    cp "$RES/table1_$1_results.json" "$d/results.json"
}

paired() {
    # paired STEM NAME_A NAME_B "RUN_A..." "RUN_B...": benchmarks/paired_diff.py on the evaluations of the
    # runs that exist (per-image differences on the 600 test faces, bootstrap intervals;
    # results/STEM.{md,json})
    local stem=$1 na=$2 nb=$3 m a=() b=()
    for m in $4; do per_image "$m" && a+=("$RUNS/eval_$m"); done
    for m in $5; do per_image "$m" && b+=("$RUNS/eval_$m"); done
    if [ ${#a[@]} -eq 0 ] || [ ${#b[@]} -eq 0 ]; then
        echo "paired $stem: no evaluations of $na or $nb" >&2
        return
    fi
    timed "paired $stem" "$PY" benchmarks/paired_diff.py --a "${a[@]}" --b "${b[@]}" --names "$na" "$nb" \
        --out "$RES" --stem "$stem"
}

stage_paired() {
    # Is U-Net prox's lead at the training noise larger than the test faces and the seeds let it be? Paired
    # per-image differences with bootstrap intervals: the untied flow prox's 25-minute runs (stages untie,
    # untie_unet, untie_unet_r2) against U-Net prox's (unet_cosine, unet_cosine_seed1, untie_unet,
    # untie_unet_r2), at batch 16 (batch16, batch16_seed1), at 100 and 150 CPU minutes (budget_100,
    # budget_150; budget_100_m3, on the third machine), and the tasks
    # (tasks_k1_untie against deblur_k1 / tasks_k1_inpainting's U-Net prox)
    local t=flow_dn_k1_coup10_cos_drop2_cond_untie u=unet_dn_k1_cos_m2
    local f="flow prox, untied" n="U-Net prox"
    paired table1_paired_untie_unet "$f" "$n" "$t ${t}_seed1 ${t}_r2" "$u ${u}_seed1 ${u}_r2 ${u}_r3"
    paired table1_paired_b16 "$f" "$n" "${t}_b16 ${t}_b16_seed1" "${u}_b16 ${u}_b16_seed1"
    paired table1_paired_b100 "$f" "$n" "${t}_b100" "${u}_b100"
    paired table1_paired_b100_m3 "$f" "$n" "${t}_b100_m3_seed1" "${u}_b100_m3_seed1"
    paired table1_paired_b100_m3_flip "$f" "$n" "${t}_b100_m3_flip_seed1" "${u}_b100_m3_flip_seed1"
    paired table1_paired_b150 "$f" "$n" "${t}_b150 ${t}_b150_seed1" "${u}_b150 ${u}_b150_seed1"
    paired tasks_paired_deblurring "$f" "$n" flow_deblurring_k1_untie unet_deblurring_k1
    paired tasks_paired_inpainting "$f" "$n" flow_inpainting_k1_untie unet_inpainting_k1
}

stage_step_cost() {
    # What a training step of the trained one-fold solvers costs and where it goes (benchmarks/step_cost.py:
    # the step at batch 8 / 16 / 32, Adam's step alone, bf16 autocast, a profile) and what torch.compile
    # does to it (compile_step.py --models); the untied flow prox of stage untie_unet_r2, its U-Net prox, and
    # stage k1_m2_resnet's ResNet prox; the two scripts side by side (one core each)
    local m=("$RUNS/flow_dn_k1_coup10_cos_drop2_cond_untie_r2" "$RUNS/unet_dn_k1_cos_m2_r3"
             "$RUNS/resnet_dn_k1_m2")
    timed "step_cost" "$PY" benchmarks/step_cost.py "${m[@]}" --out "$RES" --stem table1_step_cost &
    timed "compile_step trained" "$PY" benchmarks/compile_step.py --models "${m[@]:0:2}" --tag table1 &
    wait
}

stage_untie_levers() {
    # Stage untie's flow prox with the two levers that gave the tied fold more per step and cost as much:
    # the rest of each flow (ActNorm, 1x1 convolutions, split priors) at 3e-4 instead of 1e-4 (tied, f and
    # g moved those weights together and the gain cancelled), and a two-map conditioning network (9% per
    # step instead of stage cond_net's 29%); screened per step against stage untie's run (one core each)
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cond_untie_net3 "${UNTIE[@]}" --lr-net 3e-4 &
    cosine_k1 flow_dn_k1_coup10_cos_drop2_untie_cnet2 --level-steps 8,8,0 --lr-coupling 1e-3 --cond-net 2 \
        --untie-inverse &
    wait
}

stage_untie_levers2() {
    # Stage untie's flow prox with the couplings at 2e-3 instead of 1e-3 (tied, the rates that diverged
    # were those of the coarsest level, where f and g cancel), and with the coarsest level's flow steps
    # kept (tied, they cancelled between f and g and were dropped to save 18% per step; untied, they can
    # work at the coarsest scale); screened per step against stage untie's run (one core each)
    # (both stopped by hand after the screen, at steps 6,200 and 4,600, metrics kept: 2e-3 learned as much
    # per step as 1e-3; the kept level +0.06 dB per step at 4,000 for 30% more CPU per step: TABLE1.md)
    cosine_k1 flow_dn_k1_coup20_cos_drop2_cond_untie --level-steps 8,8,0 --lr-coupling 2e-3 --cond-y \
        --untie-inverse &
    cosine_k1 flow_dn_k1_coup10_cos_cond_untie --lr-coupling 1e-3 --cond-y --untie-inverse &
    wait
}

stage_batch16() {
    # Stage untie_unet at batch 16 (the seed paper's) instead of 8, side by side (one core each): on one
    # thread the flow prox's step is heavy in small operations that a larger batch shares out (per image,
    # its forward + backward + Adam costs 22% less at batch 16 than at 8, U-Net prox's 5%; at batch 32
    # neither gains more), so per image the flow prox costs 1.12x U-Net prox's instead of 1.35x
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cond_untie_b16 "${UNTIE[@]}" --batch 16 &
    unet_cosine_k1 unet_dn_k1_cos_m2_b16 --batch 16 &
    wait
}

stage_batch16_seed1() {  # stage batch16 with seed 1 (one core each)
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cond_untie_b16_seed1 "${UNTIE[@]}" --batch 16 --seed 1 &
    unet_cosine_k1 unet_dn_k1_cos_m2_b16_seed1 --batch 16 --seed 1 &
    wait
}

stage_untie_unet_r2() {
    # Stage untie_unet again at batch 8 with seed 0, on the day of stage batch16 (the machine's speed per step
    # changes between sessions) and with Adam's fused kernel (one core each)
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cond_untie_r2 "${UNTIE[@]}" &
    unet_cosine_k1 unet_dn_k1_cos_m2_r3 &
    wait
}

task_k1() {
    # task_k1 TASK NAME ARGS...: Table 1's current protocol (one fold, 25 CPU minutes, warm-up and cosine
    # decay, early stopping on 64 held-out training faces) for TASK (deblurring: Gaussian blur std 1.5;
    # inpainting: half of the pixels missing; sigma 0.05), then tested on all 600 test faces with the
    # classical reference (runs/table1/NAME, results/tasks_NAME_*)
    local task=$1 name=$2; shift 2
    local opts=(--task inpainting --p-missing 0.5)
    [ "$task" = deblurring ] && opts=(--task deblurring --kernel gaussian --blur-std 1.5)
    train "$name" "${opts[@]}" --sigma 0.05 --budget-minutes "$BUDGET" \
        --val-every 100 --n-val 64 --val-data holdout --lr-step "$LR_STEP" --clip-grad 1.0 --start smooth \
        --calibrate 32 --K 1 --lr-schedule cosine --warmup 100 "$@" || true
    rm -rf "$RUNS/eval_$name"
    timed "eval $name" invprox eval --model "$RUNS/$name/solver.pt" --name "$name" --classical \
        --data celeba64 --split val --sigmas 0.05 --seed 0 --no-progress --out "$RUNS/eval_$name"
    for f in results.md results.json; do cp "$RUNS/eval_$name/$f" "$RES/tasks_${name}_$f"; done
    cp "$RUNS/$name/metrics.json" "$RES/tasks_train_$name.json"
}
TASK_FLOW=(--flow "$RES/glow_celeba32_cos.pt" "${GROW_FLOW[@]}" "${DROP2[@]}")

stage_deblur_k1() {
    # Deblurring under the protocol Table 1's denoising runs have now, instead of stage tasks' K = 4 and 6
    # minutes (where the flow prox led, as it leads denoising at 5 minutes): the flow prox of stage
    # drop2_cond and U-Net prox of stage unet_cosine, 25 CPU minutes each, side by side (one core each)
    task_k1 deblurring flow_deblurring_k1 "${TASK_FLOW[@]}" &
    task_k1 deblurring unet_deblurring_k1 "${UNET[@]}" --lr-net "$LR_CNN" &
    wait
}

stage_tasks_k1_inpainting() {  # inpainting under that protocol: flow and U-Net prox (one core each)
    task_k1 inpainting flow_inpainting_k1 "${TASK_FLOW[@]}" &
    task_k1 inpainting unet_inpainting_k1 "${UNET[@]}" --lr-net "$LR_CNN" &
    wait
}

stage_tasks_k1_resnet() {
    # ResNet prox for both tasks under that protocol, with the same warm-up and cosine decay as the
    # others (one core each)
    task_k1 deblurring resnet_deblurring_k1 "${RESNET[@]}" --lr-net "$LR_CNN" &
    task_k1 inpainting resnet_inpainting_k1 "${RESNET[@]}" --lr-net "$LR_CNN" &
    wait
}

stage_tasks_k1_untie() {
    # Stages deblur_k1 / tasks_k1_inpainting's flow prox with untied inverse flows (--untie-inverse; one core
    # each), against those stages' U-Net and ResNet prox
    task_k1 deblurring flow_deblurring_k1_untie "${TASK_FLOW[@]}" --untie-inverse &
    task_k1 inpainting flow_inpainting_k1_untie "${TASK_FLOW[@]}" --untie-inverse &
    wait
}

stage_cond_net() {
    # Stage drop2_cond with a conditioning network (--cond-net N): the couplings read N feature maps of
    # A^T y besides A^T y itself, computed once per call by three 3x3 convolutions (32 channels), as the
    # conditioning networks of conditional invertible networks; the parameters freed by dropping the
    # coarsest level (the flow prox has half U-Net prox's) buy features the 16 steps need not build
    # themselves. N = 8 and 16 (one core each)
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cnet8 --level-steps 8,8,0 --lr-coupling 1e-3 --cond-net 8 &
    cosine_k1 flow_dn_k1_coup10_cos_drop2_cnet16 --level-steps 8,8,0 --lr-coupling 1e-3 --cond-net 16 &
    wait
}

stages=("$@")
[ ${#stages[@]} -eq 0 ] && stages=(denoise k_sweep tasks)
for s in "${stages[@]}"; do
    if ! declare -F "stage_$s" > /dev/null; then
        echo "unknown stage $s (one of: $(declare -F | sed -n 's/^declare -f stage_//p' | tr '\n' ' '))" >&2
        exit 2
    fi
done
for s in "${stages[@]}"; do
    "stage_$s"
done
