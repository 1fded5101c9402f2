#!/usr/bin/env bash
# One prepared script for a lent GPU (H100/H200 class): every GPU measurement of benchmarks/README.md in at most ~8 minutes.
#
# Steps, in order of priority (a step that fails is reported and the next one still runs):
#   paper_scale        benchmarks/paper_scale.py --device cuda: the paper config (DINOv2-L/14 + Mask2Former, 512 px,
#                      batch 4, bf16 autocast) through warm-up, DR-FIM estimation and sparse tuning, plus full and Rein
#   tuner_speed_bf16   benchmarks/tuner_speed.py at ViT-L/14, 512 px, 5%, bf16: full, LoRA, SHiRA, FisherTune
#                      (one round of 3 timed steps: the GPU's time is short; CPU runs use more rounds)
#   camvid_m2f         benchmarks/dg_camvid.py --head mask2former: the quick CamVid recipe (120 steps, 16 estimation
#                      batches, every 3rd evaluation image, fog) with the paper's head, FisherTune only. A GPU machine
#                      has no ../shared: run `python benchmarks/gpu_pack.py` first and carry gpu_carry/ (CamVid's
#                      source split, every 3rd evaluation image, the ViT-Tiny; ~52 MiB), which this step then reads;
#                      without a CamVid folder the step is skipped, not failed.
#   crossover          benchmarks/grad_path_crossover.py --path sampled --device cuda on ViT-L's shapes at batch 8,
#                      512 px (fp32)
#   compact_crossover  benchmarks/grad_path_crossover.py --path compact --device cuda, same shapes, bf16: where the GEMM over the
#                      entries' rows x cols block beats the dense one (CUDA stays dense until this is measured)
#   tuner_speed_fp32   the tuner_speed step in fp32, only if at least FP32_MIN_S of the budget is left
#
# Every result goes under --out-dir (default benchmarks/results/gpu/, relative to the repository root), each
# step's output to logs/<step>.log there, and a summary to summary.md (also printed). Each step runs under
# `timeout`, capped by what is left of --budget, so the whole script ends within the budget plus a few seconds.
#
# --dry-run (or TINY=1) runs every step at tiny size on CPU with the same flags except the sizes and the device,
# writing the same files: how the script is tested (tests/benchmarks/test_gpu_check.py).
set -euo pipefail

usage() {
    cat <<'EOF'
usage: benchmarks/gpu_check.sh [--dry-run] [--out-dir DIR] [--budget SECONDS] [--only STEP[,STEP...]]
                              [--camvid-root DIR] [--camvid-backbone DIR]

  --dry-run        every step at tiny size on CPU (same as TINY=1)
  --out-dir DIR    where results, logs/ and summary.md go (default benchmarks/results/gpu)
  --budget S       wall-clock budget in seconds for all steps (default 475)
  --only STEPS     run only these steps: paper_scale, tuner_speed_bf16, camvid_m2f, crossover,
                   compact_crossover, tuner_speed_fp32
  --camvid-root DIR      CamVid for camvid_m2f (default gpu_carry/camvid if packed, else ../shared/data/camvid)
  --camvid-backbone DIR  its backbone (default gpu_carry/backbone/<name> if packed, else ../shared's ViT-Tiny)
Relative paths are taken from the repository root.
Environment: PYTHON (default .venv/bin/python if present, else python3), TINY=1 (as --dry-run).
EOF
}
die() { echo "gpu_check.sh: $*" >&2; usage >&2; exit 2; }

STEPS="paper_scale tuner_speed_bf16 camvid_m2f crossover compact_crossover tuner_speed_fp32"
case "${TINY:-0}" in 0 | "") DRY=0 ;; 1) DRY=1 ;; *) die "TINY must be 0 or 1, got '${TINY}'" ;; esac
OUT_DIR=benchmarks/results/gpu
BUDGET=475
ONLY=""
CAMVID_ROOT=""
CAMVID_BACKBONE=""
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1; shift ;;
        --out-dir) [ $# -ge 2 ] && [ -n "$2" ] || die "--out-dir needs a value"; OUT_DIR=$2; shift 2 ;;
        --out-dir=*) OUT_DIR=${1#*=}; [ -n "$OUT_DIR" ] || die "--out-dir needs a value"; shift ;;
        --budget) [ $# -ge 2 ] || die "--budget needs a value"; BUDGET=$2; shift 2 ;;
        --only) [ $# -ge 2 ] || die "--only needs a value"; ONLY=$2; shift 2 ;;
        --camvid-root) [ $# -ge 2 ] && [ -n "$2" ] && [[ $2 != --* ]] || die "--camvid-root needs a value"; CAMVID_ROOT=$2; shift 2 ;;
        --camvid-backbone)
            [ $# -ge 2 ] && [ -n "$2" ] && [[ $2 != --* ]] || die "--camvid-backbone needs a value"; CAMVID_BACKBONE=$2; shift 2 ;;
        -h | --help) usage; exit 0 ;;
        *) die "unknown argument '$1'" ;;
    esac
done
[[ "$BUDGET" =~ ^[0-9]+$ ]] && [ "$BUDGET" -ge 60 ] || die "--budget must be whole seconds >= 60, got '$BUDGET'"
for s in ${ONLY//,/ }; do
    [[ " $STEPS " == *" $s "* ]] || die "unknown step '$s' in --only (steps: $STEPS)"
done

cd "$(dirname "$0")/.."
PY=${PYTHON:-}
if [ -z "$PY" ]; then
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ -z "$CAMVID_ROOT" ]; then
    if [ -f gpu_carry/camvid/splits.json ]; then CAMVID_ROOT=gpu_carry/camvid; else CAMVID_ROOT=../shared/data/camvid; fi
fi
if [ -z "$CAMVID_BACKBONE" ]; then
    CAMVID_BACKBONE=../shared/models/vit-tiny-patch16-224-augreg
    for c in gpu_carry/backbone/*/config.json; do
        if [ -f "$c" ]; then CAMVID_BACKBONE=${c%/config.json}; break; fi
    done
fi
CAMVID_EVERY=3  # a gpu_pack.py folder holds only every 3rd evaluation image already: score it whole
if [ -f "$CAMVID_ROOT/fishertune_pack.json" ]; then CAMVID_EVERY=1; fi  # dg_camvid_recipe.PACK_MARKER
mkdir -p "$OUT_DIR/logs"
OUT=$(cd "$OUT_DIR" && pwd)
LOGS=$OUT/logs

if [ "$DRY" = 1 ]; then
    # Tiny on CPU: the same scripts and flags, sizes cut down; the timeouts are generous (CPU, shared machines).
    DEVICE=(--device cpu)
    # Rein's row left out: one process less (its tiny run is in tests/benchmarks/test_paper_scale.py).
    PS_SIZE=(--model tiny --image-size 60x88 --batch 2 --threads 1 --methods fishertune,full)
    TS_SIZE=(--model vit-s14 --layers 1 --image-size 28 --batch 2 --steps 1 --warmup 0 --mem-steps 1 --threads 1
        --classes 10)
    SG_SIZE=(--shapes 64x32 --tokens 64 --densities 0.05,0.5 --reps 1 --threads 1)
    CC_SIZE=(--shapes 64x32 --tokens 64 --fractions 0.25,1 --aspects square --reps 1 --threads 1)
    CV_SIZE=(--steps 2 --estimation-batches 1 --eval-every 50 --threads 1)
    CAPS=(600 600 900 120 120 600)
    FP32_MIN_S=0
else
    if ! "$PY" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)'; then
        echo "gpu_check.sh: torch sees no CUDA GPU (python: $PY); use --dry-run for the tiny CPU mode" >&2
        exit 3
    fi
    DEVICE=(--device cuda)
    PS_SIZE=()  # the config's own: 512x512 crops, batch 4; ViT-L/14; bf16 (auto)
    TS_SIZE=(--model vit-l14 --image-size 512 --batch 8 --steps 3 --warmup 1 --mem-steps 1)
    # 8 x (36 * 36 + 1) = 10376 tokens: tuner_speed's batch at 512 px
    SG_SIZE=(--shapes 1024x1024,4096x1024,1024x4096 --tokens 10376)
    CC_SIZE=(--shapes 1024x1024,4096x1024,1024x4096 --tokens 10376 --fractions 0.1,0.3,0.5,0.7,0.9,1 --reps 5)
    CV_SIZE=(--quick --eval-every "$CAMVID_EVERY" --workers 8)
    # 460 s: with the CUDA probe and run_step's 5 s margin, the last crossover still gets its 30 s when every
    # step before it runs to its cap. camvid_m2f's 100 s is an estimate (never run on a GPU).
    CAPS=(180 120 100 30 30 0)  # tuner_speed_fp32 gets whatever is left
    FP32_MIN_S=120
fi

RESULTS=()
selected() { [ -z "$ONLY" ] || [[ ",$ONLY," == *",$1,"* ]]; }  # step name: run by this call (--only)?
FAILED=0
run_step() {  # name cap_seconds output_file command...
    local name=$1 cap=$2 out=$3 rc=0 t0=$SECONDS status
    shift 3
    selected "$name" || return 0
    local left=$((BUDGET - SECONDS - 5))
    if [ "$cap" -gt "$left" ]; then cap=$left; fi
    if [ "$cap" -lt 30 ]; then
        RESULTS+=("| $name | skipped: ${left} s of the budget left | 0 | |")
        return 0
    fi
    echo "== $name (timeout ${cap} s): $*" >&2
    timeout --kill-after=5 "$cap" "$@" >"$LOGS/$name.log" 2>&1 || rc=$?
    if [ "$rc" = 0 ]; then
        status=ok
    elif [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
        status="timed out after ${cap} s"
    else
        status="failed (rc $rc)"
    fi
    if [ "$rc" != 0 ]; then
        FAILED=1
        tail -n 20 "$LOGS/$name.log" >&2 || true
    fi
    RESULTS+=("| $name | $status | $((SECONDS - t0)) | ${out#"$PWD"/} |")
}

run_step paper_scale "${CAPS[0]}" "$OUT/paper_scale_cuda.md" \
    "$PY" benchmarks/paper_scale.py "${DEVICE[@]}" "${PS_SIZE[@]}" --out "$OUT/paper_scale_cuda.md"
run_step tuner_speed_bf16 "${CAPS[1]}" "$OUT/tuner_speed_vitl_bf16.md" \
    "$PY" benchmarks/tuner_speed.py "${DEVICE[@]}" "${TS_SIZE[@]}" --dtype bf16 --delta-max 0.05 \
    --methods full,lora,shira,fishertune --rounds 1 --out "$OUT/tuner_speed_vitl_bf16.md"
if [ -f "$CAMVID_ROOT/splits.json" ] && [ -f "$CAMVID_BACKBONE/config.json" ]; then
    # dg_camvid resumes finished runs: a fresh folder, or a second check would report ok having trained nothing
    if selected camvid_m2f; then rm -rf "$OUT/camvid"; fi
    run_step camvid_m2f "${CAPS[2]}" "$OUT/camvid" \
        "$PY" benchmarks/dg_camvid.py --head mask2former --methods dr_fim_var --seeds 0 --corruptions fog \
        "${CV_SIZE[@]}" --root "$CAMVID_ROOT" --backbone "$CAMVID_BACKBONE" --stop-on-error --out-dir "$OUT/camvid"
elif selected camvid_m2f; then
    RESULTS+=("| camvid_m2f | skipped: no CamVid at $CAMVID_ROOT or no backbone at $CAMVID_BACKBONE (benchmarks/gpu_pack.py) | 0 | |")
fi
run_step crossover "${CAPS[3]}" "$OUT/sparse_grad_crossover_cuda.md" \
    "$PY" benchmarks/grad_path_crossover.py --path sampled "${DEVICE[@]}" "${SG_SIZE[@]}" --dtype fp32 \
    --out "$OUT/sparse_grad_crossover_cuda.md"
run_step compact_crossover "${CAPS[4]}" "$OUT/compact_grad_crossover_cuda_bf16.md" \
    "$PY" benchmarks/grad_path_crossover.py --path compact "${DEVICE[@]}" "${CC_SIZE[@]}" --dtype bf16 \
    --out "$OUT/compact_grad_crossover_cuda_bf16.md"
LEFT=$((BUDGET - SECONDS - 5))
if [ "$DRY" = 1 ] || [ "$LEFT" -ge "$FP32_MIN_S" ]; then
    CAP=${CAPS[5]}
    if [ "$CAP" = 0 ]; then CAP=$LEFT; fi
    run_step tuner_speed_fp32 "$CAP" "$OUT/tuner_speed_vitl_fp32.md" \
        "$PY" benchmarks/tuner_speed.py "${DEVICE[@]}" "${TS_SIZE[@]}" --dtype fp32 --delta-max 0.05 \
        --methods full,lora,shira,fishertune --rounds 1 --out "$OUT/tuner_speed_vitl_fp32.md"
elif selected tuner_speed_fp32; then
    RESULTS+=("| tuner_speed_fp32 | skipped: ${LEFT} s left, needs ${FP32_MIN_S} s | 0 | |")
fi

{
    echo "# GPU check"
    echo
    if [ "$DRY" = 1 ]; then
        echo "DRY RUN (--dry-run / TINY=1): every step at tiny size on CPU; the numbers mean nothing."
        echo
    fi
    echo "Generated by \`benchmarks/gpu_check.sh\` at commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
        "$(date -u +%Y-%m-%dT%H:%M:%SZ), budget ${BUDGET} s, ${SECONDS} s in all; python: $PY."
    echo
    "$PY" -c 'import torch; c = torch.cuda.is_available()
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, device: {torch.cuda.get_device_name(0) if c else None}")' ||
        true
    echo
    echo "| step | status | seconds | result |"
    echo "|---|---|---:|---|"
    printf '%s\n' "${RESULTS[@]}"
} >"$OUT/summary.md"
cat "$OUT/summary.md"
exit "$FAILED"
