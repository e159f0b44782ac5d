#!/usr/bin/env bash
# One prepared check on the borrowed GPU machine (one H200, its own python3 with torch 2.11 / CUDA 13,
# no network): the CUDA path, AMP and the GPU benchmarks, in at most 6 minutes.
#
#   bash scripts/device_check/device_check.sh              # on the GPU machine (see docs/BENCHMARKS.md, "CUDA")
#   bash scripts/device_check/device_check.sh --simulate   # here: the same steps on CPU, in a local stand-in
#
# Needs build/device-wheels (`make device-wheels`: what the machine lacks, detectron2 0.6 patched
# included). Steps, each logged with its elapsed seconds and run under its own time limit (and the
# whole under DEVICE_CHECK_BUDGET seconds, default 330 on the machine), so one slow step cannot eat
# the rest; a failed step is recorded and the next ones still run:
#   install          the carried wheels into a target folder (pip --no-index --target), every
#                    requirement of them checked present;
#                    PYTHONPATH = this repository + that folder
#   env              python -m tde_det.collect_env, torch / CUDA / GPU facts
#   tests            the whole suite (pytest -n 8 where pytest-xdist is there); on the machine, a test
#                    skipped for lack of a GPU is a failure, and at least one CUDA test must pass
#   train_fp32       the demo TDE model (configs/demo/tde_mask_rcnn_demo.yaml) on CUDA, 300 iterations,
#   train_amp        then again with SOLVER.AMP.ENABLED True; each evaluated in both inference modes
#                    (plain, tde): losses and the mean feature must be finite, the APs numbers; s/iter
#   bench_predictor  benchmarks/bench_predictor.py --device cuda: TDE / Detectron2 box predictor
#   bench_model      benchmarks/bench_model.py --device cuda: inference and training-step ratios,
#                    max_memory_allocated ratio, images/s at 800x1333 with 300 detections
# Writes $OUT/device_check.json (every step: status, seconds, findings), $OUT/device_check.log and
# $OUT/tests_junit.xml ($OUT defaults to build/device-check), and ends with one line
# "device check: GPU | tests N passed ... | ratios ...". Exit status 0 only if every step passed.
#
# --simulate runs the same steps here on CPU in build/device-sim: a Python 3.12 venv holding only the
# machine's preinstalled packages (scripts/device_check/device_sim_requirements.txt; created on first use, a few
# GB of downloads for torch's CUDA build) plus exactly the carried wheels, nothing from .venv. CPU-only
# tests skip as usual, training is shortened (tiny demo config, 6 iterations), the AMP run is skipped
# (detectron2's AMPTrainer needs CUDA), benchmarks run once, smaller (the predictor on 100 regions per
# image, the whole model on 400 x 667: at full size they take many minutes on 2 CPU cores). No budget.
#
# Environment: OUT, DEVICE_CHECK_BUDGET (seconds), DEVICE_CHECK_WORK (scratch folder),
# DEVICE_CHECK_PYTEST_WORKERS (0: no xdist), DEVICE_SIM_PYTHON (Python 3.12 for the stand-in venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"

MODE=device
case "${1:-}" in
    "") ;;
    --simulate) MODE=simulate ;;
    -h | --help) sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) echo "error: unknown argument '$1': run it with no argument on the GPU machine, or --simulate here" >&2; exit 2 ;;
esac

WHEELS="$ROOT/build/device-wheels"
T0=$(date +%s)
if [[ $MODE == device ]]; then
    PY="${DEVICE_CHECK_PYTHON:-python3}"
    OUT_DIR="${OUT:-$ROOT/build/device-check}"
    WORK="${DEVICE_CHECK_WORK:-/tmp/tde_device_check}"
    BUDGET="${DEVICE_CHECK_BUDGET:-330}"
    DEVICE=cuda
    TRAIN_CFG=configs/demo/tde_mask_rcnn_demo.yaml
    TRAIN_ITERS=300
    TRAIN_OPTS=(SOLVER.STEPS "(200, 260)" SOLVER.WARMUP_ITERS 50 DATALOADER.NUM_WORKERS 4)
    PRED_OPTS=(--reps 20 --warmup 3)
    MODEL_OPTS=(--reps 20 --warmup 3)
    #        install env tests train_fp32 train_amp bench_predictor bench_model
    LIMITS=(60 40 150 90 75 45 80)
else
    SIM="$ROOT/build/device-sim"
    PY="$SIM/venv/bin/python"
    OUT_DIR="${OUT:-$SIM/out}"
    WORK="${DEVICE_CHECK_WORK:-$SIM/work}"
    BUDGET="${DEVICE_CHECK_BUDGET:-7200}"
    DEVICE=cpu
    TRAIN_CFG=configs/demo/tde_mask_rcnn_tiny.yaml
    TRAIN_ITERS=6
    TRAIN_OPTS=(SOLVER.STEPS "(4,)" SOLVER.WARMUP_ITERS 2 DATALOADER.NUM_WORKERS 1)
    PRED_OPTS=(--reps 1 --warmup 0 --inference-regions 100 --train-regions 64)  # 1,203 classes' NMS: slow on CPU
    MODEL_OPTS=(--reps 1 --warmup 0 --scale 0.5)  # 400 x 667: the R50-FPN at 800 x 1333 is minutes per step here
    LIMITS=(300 120 3000 900 900 900 1800)
fi
RESERVE=10  # seconds kept for the report
SITE="$WORK/site"
LOG="$OUT_DIR/device_check.log"

elapsed() { echo $(( $(date +%s) - T0 )); }
say() { echo "[device_check +$(elapsed)s] $*"; }

# ---------------------------------------------------------------- the stand-in (--simulate only)
resolve_py312() {
    local cand
    for cand in "${DEVICE_SIM_PYTHON:-}" "$(command -v python3.12 || true)" \
        $(ls -d "$(pyenv root 2>/dev/null || echo /nonexistent)"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V -r); do
        if [[ -n "$cand" ]] && "$cand" -c 'import sys; assert sys.version_info[:2] == (3, 12)' 2>/dev/null; then
            echo "$cand"
            return 0
        fi
    done
    return 1
}

prepare_simulation() {
    local req="$ROOT/scripts/device_check/device_sim_requirements.txt" stamp base
    say "simulation: the wheels that travel (make device-wheels)"
    bash "$ROOT/scripts/device_check/device_wheels.sh" "$WHEELS"
    stamp="$(sha256sum "$req" | cut -d' ' -f1)"
    if [[ ! -x "$PY" ]]; then
        base="$(resolve_py312)" || { echo "error: no Python 3.12 found for the stand-in venv; set DEVICE_SIM_PYTHON=/path/to/python3.12" >&2; return 1; }
        say "simulation: creating the stand-in venv $SIM/venv with $base (torch's CUDA build: about 3 GB to download)"
        rm -rf "$SIM/venv"
        "$base" -m venv "$SIM/venv"
    fi
    if [[ "$(cat "$SIM/venv/.stamp" 2>/dev/null)" != "$stamp" ]]; then
        say "simulation: installing $req into the stand-in venv"
        "$PY" -m pip install -q --disable-pip-version-check -r "$req"
        echo "$stamp" > "$SIM/venv/.stamp"
    fi
    say "simulation: stand-in venv $SIM/venv: $("$PY" -c 'import sys, torch, numpy; print(f"Python {sys.version.split()[0]}, torch {torch.__version__}, numpy {numpy.__version__}")')"
    # Nothing of the project's environment may leak in: no detectron2 / fvcore / lvis before the install step.
    if env -u PYTHONPATH "$PY" -c 'import detectron2' 2>/dev/null || env -u PYTHONPATH "$PY" -c 'import fvcore' 2>/dev/null; then
        echo "error: the stand-in venv already has detectron2 or fvcore: it must hold only the GPU machine's packages" >&2
        return 1
    fi
}

# ---------------------------------------------------------------- steps (run as `bash -c NAME` under timeout)
step_install() {
    set -euo pipefail
    rm -rf "$SITE" && mkdir -p "$SITE"
    local wheels=("$WHEELS"/*.whl)
    [[ -f "${wheels[0]}" ]] || { echo "error: no wheels in $WHEELS: run 'make device-wheels' here and carry build/device-wheels"; return 1; }
    echo "installing ${#wheels[@]} wheels into $SITE"
    "$PY" -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir \
        --upgrade --target "$SITE" "${wheels[@]}"
    "$PY" scripts/device_check/device_report.py deps "$SITE" --json "$WORK/install.json"
    "$PY" -c 'import detectron2.modeling, detectron2.model_zoo, detectron2.export, detectron2.evaluation
import lvis.eval, pycocotools.mask, fvcore.common.checkpoint, hydra, omegaconf, cv2, tde_det, detectron2
print("imports ok: detectron2 from", detectron2.__file__)'
}

step_env() {
    set -euo pipefail
    "$PY" -m tde_det.collect_env
    "$PY" scripts/device_check/device_report.py env "$WORK/env.json" $([[ $MODE == device ]] && echo --need-cuda)
}

step_tests() {
    set -euo pipefail
    local workers="${DEVICE_CHECK_PYTEST_WORKERS:-}" xdist=()
    if [[ -z "$workers" ]]; then
        workers=$(( $(nproc) >= 16 ? 8 : ($(nproc) >= 4 ? $(nproc) / 2 : $(nproc)) ))
    fi
    if (( workers > 1 )) && "$PY" -c 'import xdist' 2>/dev/null; then
        # per test, not per file: the slowest file alone (train_net subprocesses) would outlast the limit
        xdist=(-n "$workers" --dist load)
        export OMP_NUM_THREADS=$(( $(nproc) / workers > 0 ? $(nproc) / workers : 1 ))
    fi
    echo "pytest ${xdist[*]:-(one process)}"
    "$PY" -m pytest tests -v -rs -p no:cacheprovider --junitxml="$WORK/junit.xml" "${xdist[@]}" 2>&1 \
        | tee "$WORK/pytest.log"
}
post_tests() {
    "$PY" scripts/device_check/device_report.py tests "$WORK/tests.json" "$WORK/junit.xml" "$WORK/pytest.log" --mode "$MODE"
}

train() {  # train NAME AMP(True/False)
    set -euo pipefail
    local opts
    mapfile -t opts <<< "$TRAIN_OPTS_LINES"
    "$PY" tools/train_net.py --config-file "$TRAIN_CFG" MODEL.DEVICE "$DEVICE" SOLVER.MAX_ITER "$TRAIN_ITERS" \
        "${opts[@]}" SOLVER.CHECKPOINT_PERIOD 1000000 SOLVER.AMP.ENABLED "$2" OUTPUT_DIR "$WORK/$1"
}
step_train_fp32() { train train_fp32 False; }
step_train_amp() { train train_amp True; }
post_train() {  # on the machine (300 iterations) both variants must detect something: their APs are numbers
    "$PY" scripts/device_check/device_report.py train "$WORK/$1.json" "$WORK/$1" --iters "$TRAIN_ITERS" \
        $([[ $MODE == device ]] && echo --need-ap)
}
post_train_fp32() { post_train train_fp32; }
post_train_amp() { post_train train_amp; }

step_bench_predictor() {
    local opts
    mapfile -t opts <<< "$PRED_OPTS_LINES"
    "$PY" benchmarks/bench_predictor.py --device "$DEVICE" "${opts[@]}" --json "$WORK/bench_predictor.json"
}
step_bench_model() {
    local opts
    mapfile -t opts <<< "$MODEL_OPTS_LINES"
    "$PY" benchmarks/bench_model.py --device "$DEVICE" "${opts[@]}" --json "$WORK/bench_model.json"
}

record() {  # record NAME STATUS SECONDS RC LIMIT NOTE
    printf '{"name": "%s", "status": "%s", "seconds": %s, "rc": %s, "limit_s": %s, "note": "%s"}\n' \
        "$1" "$2" "$3" "$4" "$5" "${6//\"/\'}" >> "$WORK/steps.jsonl"
}

step() {  # step NAME LIMIT_S: run step_NAME (then post_NAME, if defined) under min(LIMIT_S, budget left)
    local name="$1" limit="$2" left start rc status note="" dur
    left=$(( BUDGET - $(elapsed) - RESERVE ))
    (( left < limit )) && limit=$left
    if (( limit < 5 )); then
        say "=== $name: NOT RUN, out of time (budget ${BUDGET}s)"
        record "$name" out_of_time 0 -1 "$limit" "budget of ${BUDGET}s used up"
        return 0
    fi
    say "=== $name: start (time limit ${limit}s)"
    start=$(date +%s)
    set +e
    # in the background, so that a signal to this script can stop the step's process group (on_signal)
    timeout --kill-after=10 "$limit" bash -c "step_$name" &
    STEP_PID=$! STEP_NAME=$name
    wait "$STEP_PID"
    rc=$?
    STEP_PID=""
    set -e
    dur=$(( $(date +%s) - start ))
    if (( rc == 0 )); then
        status=ok
    elif (( rc == 124 || rc == 137 )); then
        status=timeout; note="stopped after its ${limit}s limit"
    else
        status=failed; note="exit status $rc"
    fi
    if declare -F "post_$name" >/dev/null; then
        if ! "post_$name"; then
            [[ $status == ok ]] && status=failed
            note="${note:+$note; }check failed (see the lines starting error: above)"
        fi
    fi
    say "=== $name: $status in ${dur}s${note:+ ($note)}"
    record "$name" "$status" "$dur" "$rc" "$limit" "$note"
}

skip() {  # skip NAME REASON
    say "=== $1: skipped ($2)"
    record "$1" skipped 0 0 0 "$2"
}

on_signal() {  # stopped from outside: end the running step too, then report (EXIT trap)
    trap '' PIPE  # the signal may have ended tee as well: the report files are still written
    if [[ -n "${STEP_PID:-}" ]]; then
        kill -TERM -- -"$STEP_PID" 2>/dev/null
        record "$STEP_NAME" stopped -1 143 -1 "stopped by a signal to device_check.sh"
    fi
    say "=== stopped by a signal${STEP_PID:+ during a step (stopped it too)}" || true
    exit 143
}

finish() {
    local rc=$?
    trap - EXIT
    [[ -f "$WORK/junit.xml" ]] && cp "$WORK/junit.xml" "$OUT_DIR/tests_junit.xml"
    local report_py="$PY"
    [[ -x "$(command -v "$PY" || true)" ]] || report_py=python3
    say "=== report: $OUT_DIR/device_check.json, $LOG (exit status of the steps: $rc)"
    "$report_py" "$ROOT/scripts/device_check/device_report.py" final "$WORK" "$OUT_DIR/device_check.json" --mode "$MODE" || rc=1
    exit "$rc"
}

main() {
    mkdir -p "$OUT_DIR"
    rm -rf "$WORK" && mkdir -p "$WORK"
    trap finish EXIT
    trap on_signal INT TERM
    STEP_PID=""
    say "mode $MODE, repository $ROOT, scratch $WORK, results $OUT_DIR, budget ${BUDGET}s, $(nproc) CPUs, $(date -u +%FT%TZ)"
    if [[ $MODE == simulate ]]; then
        prepare_simulation
        T0=$(date +%s)  # the budget counts the device's steps only
    fi
    export ROOT MODE PY WORK SITE WHEELS DEVICE TRAIN_CFG TRAIN_ITERS
    export PYTHONPATH="$ROOT:$SITE" PYTHONNOUSERSITE=1 PYTHONUNBUFFERED=1 MPLBACKEND=Agg
    export DETECTRON2_DATASETS="$WORK/datasets" PIP_NO_INPUT=1
    # arrays cannot be exported: one item a line, read back with mapfile by the step functions
    TRAIN_OPTS_LINES="$(printf '%s\n' "${TRAIN_OPTS[@]}")"
    PRED_OPTS_LINES="$(printf '%s\n' "${PRED_OPTS[@]}")"
    MODEL_OPTS_LINES="$(printf '%s\n' "${MODEL_OPTS[@]}")"
    export TRAIN_OPTS_LINES PRED_OPTS_LINES MODEL_OPTS_LINES
    export -f step_install step_env step_tests step_train_fp32 step_train_amp step_bench_predictor step_bench_model train

    step install "${LIMITS[0]}"
    step env "${LIMITS[1]}"
    step tests "${LIMITS[2]}"
    step train_fp32 "${LIMITS[3]}"
    if [[ $MODE == device ]]; then
        step train_amp "${LIMITS[4]}"
    else
        skip train_amp "CPU: detectron2's AMPTrainer needs CUDA; runs on the GPU machine"
    fi
    step bench_predictor "${LIMITS[5]}"
    step bench_model "${LIMITS[6]}"
    ! grep -q -v -E '"status": "(ok|skipped)"' "$WORK/steps.jsonl"
}

mkdir -p "$OUT_DIR"
set +e
main 2>&1 | tee "$LOG"
rc=${PIPESTATUS[0]}
exit "$rc"
