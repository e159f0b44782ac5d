#!/usr/bin/env bash
# tde_det installed into a Detectron2 environment the way a user does it (issue 20; CI leg 3):
#
#   bash scripts/user_env_check.sh        # or: make user-env-check
#
# 1. a fresh venv (build/user-env/venv, Python 3.12: TDE_DET_USER_PYTHON to choose) with the user's
#    own packages: numpy 1.26.4, torch 2.11.0 / torchvision 0.26.0, Pillow 10.4.0, lvis 0.5.3,
#    opencv-python, setuptools < 81 (to build detectron2);
# 2. upstream detectron2 main from the vendored snapshot, built by pip as its README says
#    (`pip install --no-build-isolation ./detectron2`: compiled CPU ops, its own requirements),
#    not patched and outside scripts/setup_env.sh;
# 3. `pip install -e .` of this checkout: every package already there must keep its version and
#    only tde_det may be added (else the difference is printed and the check fails);
# 4. the test tools (the `test` and `export` extras), then the suite as `make test` runs it
#    (`python -m pytest tests -q`) and the peer suite (scripts/peer_test.py) in that venv;
# 5. numpy upgraded to 2.x there as a user would (`pip install -U numpy`): the lvis-api tests again
#    (lvis-api's own LVISEval, and `--eval-only` with BACKEND fast and lvis-api giving one table).
# Each step prints its wall time. A failure in steps 1-3 stops the check; the checks of steps 4-5
# all run, and the script exits 1 at the end if any of them failed.
set -Eeuo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="$ROOT/build/user-env"
VENV="$WORK/venv"
PY="$VENV/bin/python"
TARBALL="${TDE_DET_VENDOR:-$ROOT/../shared/vendor}/detectron2-main-02b5c4e2.tar.gz"
# The user's environment. The constraints keep these versions while pip resolves detectron2's and
# the test tools' requirements; `pip install -e .` of tde_det runs without them.
USER_PINS=(numpy==1.26.4 torch==2.11.0 torchvision==0.26.0 Pillow==10.4.0 lvis==0.5.3 opencv-python==4.11.0.86)
LVIS_API_TESTS=(tests/test_fast_lvis.py tests/test_environment.py
                "tests/test_train_net.py::test_eval_only_with_lvis_api_gives_the_fast_evaluators_numbers")

CURRENT_STEP=""
T_STEP=$(date +%s)
step() {
    [[ -z "$CURRENT_STEP" ]] || echo "[user_env] ... $(( $(date +%s) - T_STEP ))s"
    CURRENT_STEP="$1"; T_STEP=$(date +%s); echo "[user_env] $1"
}
trap 'echo "[user_env] FAILED at step: ${CURRENT_STEP}" >&2' ERR
FAILED=()
check() {  # check COMMAND...: run it in the repository root; a failure is recorded, the next checks run
    (cd "$ROOT" && "$@") || { FAILED+=("$CURRENT_STEP"); echo "[user_env] FAILED: $CURRENT_STEP" >&2; }
}

find_python() {
    local cand
    for cand in "${TDE_DET_USER_PYTHON:-}" python3.12 $(ls -d "$(pyenv root 2>/dev/null)"/versions/3.12.*/bin/python3.12 2>/dev/null | sort -V -r); do
        [[ -n "$cand" ]] && "$cand" -c 'import sys; assert sys.version_info[:2] >= (3, 11)' >/dev/null 2>&1 && { command -v "$cand"; return; }
    done
    echo "[user_env] no Python 3.12 found: set TDE_DET_USER_PYTHON=/path/to/python3.1x" >&2
    return 1
}

source "$ROOT/scripts/pip_quiet.sh"
pip_q() { pip_quiet "$PY" "$@"; }

packages() {  # name==version of every installed distribution, sorted (pip's own view)
    "$PY" - <<'EOF'
import importlib.metadata as md
print("\n".join(sorted({f"{d.metadata['Name'].lower().replace('_', '-')}=={d.version}" for d in md.distributions()})))
EOF
}

main() {  # one function, read whole before it runs: editing this file meanwhile cannot derail a run
    step "fresh venv $VENV"
    [[ -f "$TARBALL" ]] || { echo "[user_env] $TARBALL not found (upstream detectron2 main snapshot)" >&2; false; }
    BASE_PY="$(find_python)"
    rm -rf "$WORK" && mkdir -p "$WORK"
    "$BASE_PY" -m venv "$VENV"
    printf '%s\n' "${USER_PINS[@]}" > "$WORK/user-constraints.txt"
    echo "[user_env] $("$PY" -V)"

    step "the user's packages: ${USER_PINS[*]} setuptools<81"
    pip_q install -q -c "$WORK/user-constraints.txt" "${USER_PINS[@]}" "setuptools<81"

    step "upstream detectron2 main built by pip (pip install --no-build-isolation ./detectron2)"
    tar -xzf "$TARBALL" -C "$WORK"
    (cd "$WORK" && pip_q install -q --no-build-isolation -c user-constraints.txt ./detectron2)
    rm -rf "$WORK/detectron2"  # the installed copy is what the tests import

    step "pip install -e . (this checkout): nothing of the user's may change"
    packages > "$WORK/freeze-before.txt"
    "$PY" -m pip freeze > "$WORK/pip-freeze-before.txt"
    pip_q install -q -e "$ROOT"
    packages > "$WORK/freeze-after.txt"
    "$PY" -m pip freeze > "$WORK/pip-freeze-after.txt"
    CHANGED="$(diff "$WORK/freeze-before.txt" "$WORK/freeze-after.txt" | grep '^[<>]' || true)"
    if [[ "$CHANGED" != "> tde-det==0.1.0" ]]; then
        echo "[user_env] pip install -e . changed the user's environment (< before, > after); expected only '> tde-det==0.1.0':" >&2
        echo "$CHANGED" >&2
        false
    fi
    echo "[user_env] only tde_det added; $(wc -l < "$WORK/freeze-before.txt") packages kept: $(grep -E '^(numpy|torch|torchvision|pillow|detectron2|lvis)==' "$WORK/freeze-after.txt" | tr '\n' ' ')"
    "$PY" -m tde_det.collect_env

    step "test tools (tde_det's test and export extras, the user's versions kept)"
    pip_q install -q -c "$WORK/user-constraints.txt" -e "$ROOT[test,export]"

    step "the suite (python -m pytest tests -q), numpy $("$PY" -c 'import numpy; print(numpy.__version__)')"
    check "$PY" -m pytest tests -q -p no:cacheprovider

    step "the peer suite (scripts/peer_test.py)"
    check "$PY" scripts/peer_test.py

    step "the user upgrades numpy (pip install -U numpy): lvis-api tests on numpy 2"
    pip_q install -q -U numpy
    echo "[user_env] numpy $("$PY" -c 'import numpy; print(numpy.__version__)')"
    check "$PY" -m pytest -q -p no:cacheprovider "${LVIS_API_TESTS[@]}"

    step "done"
    if (( ${#FAILED[@]} )); then
        printf '[user_env] FAILED: %s\n' "${FAILED[@]}" >&2
        return 1
    fi
    echo "[user_env] OK"
}

main "$@"
