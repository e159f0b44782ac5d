#!/usr/bin/env bash
# Create or update the project's virtual environment (default .venv; idempotent).
#
#   bash scripts/setup_env.sh          # or: make env
#
# Environment variables:
#   TDE_DET_PYTHON            interpreter for a new venv (a command or a path, Python 3.11-3.13).
#                             Default: the newest of python3.13, python3.12, python3.11 that runs,
#                             on PATH or in $(pyenv root)/versions (pyenv's shims fail unless selected).
#                             An existing venv keeps its Python unless TDE_DET_PYTHON names another.
#   TDE_DET_VENV              the venv's folder (default .venv; relative to the repository root)
#   TDE_DET_DETECTRON2_SRC    path to an upstream detectron2 checkout: install it (compiled, editable)
#                             instead of the PyPI source release pb1-detectron2==0.6
#
# detectron2 v0.6's sources are patched for numpy 2 / Pillow >= 10 / setuptools >= 81 / torch 2.x by
# scripts/patch_third_party.py before they are installed (each edit listed there with its reason).
# lvis 0.5.3 is installed as released: tde_det gives its evaluator numpy's removed aliases at run time.
# A second run with nothing to do only checks the stamp and the imports (seconds).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${TDE_DET_VENV:-.venv}"
[[ "$VENV" == /* ]] || VENV="$ROOT/$VENV"
PY="$VENV/bin/python"
D2_SDIST="pb1-detectron2-0.6.tar.gz"
D2_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
D2_BUILD="$ROOT/build/detectron2-pypi"
D2_SRC="${TDE_DET_DETECTRON2_SRC:-}"
STAMP="$VENV/.tde_det_env"
PATCH=("$ROOT/scripts/patch_third_party.py")
SUPPORTED="3.11 3.12 3.13"

source "$ROOT/scripts/pip_quiet.sh"
pip_q() { pip_quiet "$PY" "$@"; }

CURRENT_STEP=""
step() { CURRENT_STEP="$1"; echo "[setup_env] $1"; }
trap 'echo "[setup_env] FAILED at step: ${CURRENT_STEP}" >&2' ERR

env_hash() {
    cat "$ROOT/requirements.txt" "$ROOT/setup.py" "$ROOT/scripts/setup_env.sh" "$ROOT/scripts/detectron2_C.py" \
        "$ROOT/scripts/patch_third_party.py" \
        | { cat; echo "d2src=$D2_SRC"; "$PY" -V 2>/dev/null || true; } | sha256sum | cut -d' ' -f1
}

verify() {  # torch's and detectron2's deprecation notes are not this check's business
    "$PY" -W ignore::FutureWarning -W ignore::DeprecationWarning - <<'EOF'
import detectron2.layers, detectron2.modeling, detectron2.evaluation, detectron2.export  # noqa: F401
import detectron2.model_zoo, lvis.eval, pycocotools.mask, cv2, torch, torchvision  # noqa: F401
import tde_det  # noqa: F401
EOF
}

# A command or path that runs, else (for a bare pythonX.Y) pyenv's newest X.Y.*: pyenv installs
# interpreters in $(pyenv root)/versions/X.Y.Z/bin, and its shims fail unless that version is selected.
resolve_python() {
    local cand
    cand="$(command -v "$1" || true)"
    if [[ -n "$cand" ]] && "$cand" -c '' >/dev/null 2>&1; then echo "$cand"; return 0; fi
    if [[ "$1" =~ ^python(3\.[0-9]+)$ ]] && command -v pyenv >/dev/null 2>&1; then
        for cand in $(ls -d "$(pyenv root)/versions/${BASH_REMATCH[1]}".*/bin/"$1" 2>/dev/null | sort -V -r); do
            if "$cand" -c '' >/dev/null 2>&1; then echo "$cand"; return 0; fi
        done
    fi
    return 1
}

# The interpreter for a new venv: TDE_DET_PYTHON, else the newest supported python3.1x that runs.
find_python() {
    local v
    if [[ -n "${TDE_DET_PYTHON:-}" ]]; then resolve_python "$TDE_DET_PYTHON" || echo "$TDE_DET_PYTHON"; return; fi
    for v in 3.13 3.12 3.11; do
        resolve_python "python$v" && return
    done
    command -v python3 || echo python3
}
py_version() { "$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || echo none; }

check_supported() {  # check_supported INTERPRETER VERSION
    if [[ " $SUPPORTED " != *" $2 "* ]]; then
        echo "[setup_env] need Python 3.11, 3.12 or 3.13; '$1' is ${2/none/not a working interpreter}." \
            "Install one, or set TDE_DET_PYTHON=/path/to/python3.1x" >&2
        return 1
    fi
}

if [[ -x "$PY" && -n "${TDE_DET_PYTHON:-}" ]]; then
    BASE_PY="$(find_python)"
    WANT="$(py_version "$BASE_PY")"
    if [[ "$(py_version "$PY")" != "$WANT" ]]; then
        CURRENT_STEP="check TDE_DET_PYTHON"
        check_supported "$BASE_PY" "$WANT"
        echo "[setup_env] $VENV has Python $(py_version "$PY"), TDE_DET_PYTHON=$TDE_DET_PYTHON is $WANT: recreating it"
        rm -rf "$VENV"
    fi
fi

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(env_hash)" ]] && verify 2>/dev/null; then
    echo "[setup_env] environment in $VENV is up to date"
    exit 0
fi

step "create the virtual environment ($VENV)"
if [[ -x "$PY" ]]; then
    echo "[setup_env] keeping $VENV (Python $(py_version "$PY")); TDE_DET_PYTHON=... or 'make clean-env' to change"
else
    BASE_PY="$(find_python)"
    WANT="$(py_version "$BASE_PY")"
    check_supported "$BASE_PY" "$WANT"
    echo "[setup_env] using $BASE_PY (Python $WANT)"
    "$BASE_PY" -m venv "$VENV"
fi

step "install the pinned requirements (requirements.txt)"
pip_q install -q -r "$ROOT/requirements.txt"

if [[ -n "$D2_SRC" ]]; then
    step "install detectron2 from the upstream source at $D2_SRC (compiles its C++/CUDA ops)"
    [[ -f "$D2_SRC/setup.py" ]] || { echo "TDE_DET_DETECTRON2_SRC=$D2_SRC has no setup.py" >&2; false; }
    # Upstream main still imports pkg_resources (gone in setuptools >= 81) in model_zoo: patch that
    # one file of the checkout (idempotent; nothing to do once upstream fixes it).
    "$PY" "${PATCH[@]}" detectron2-main "$D2_SRC"
    pip_q install -q --no-build-isolation --no-deps -e "$D2_SRC"
else
    step "download detectron2's PyPI source release $D2_SDIST and check its sha256"
    mkdir -p "$ROOT/build"
    if [[ ! -f "$ROOT/build/$D2_SDIST" ]]; then
        # pip runs the sdist's setup.py for metadata, which imports torch: no build isolation.
        pip_q download -q --no-deps --no-build-isolation --no-binary :all: -d "$ROOT/build" pb1-detectron2==0.6
    fi
    echo "$D2_SHA256  $ROOT/build/$D2_SDIST" | sha256sum --check --quiet

    step "install detectron2 v0.6 Python sources with the stand-in detectron2._C (scripts/detectron2_C.py)"
    rm -rf "$D2_BUILD" && mkdir -p "$D2_BUILD"
    tar -xzf "$ROOT/build/$D2_SDIST" -C "$D2_BUILD" --strip-components=1 pb1-detectron2-0.6/detectron2 pb1-detectron2-0.6/LICENSE
    cp "$ROOT/scripts/detectron2_C.py" "$D2_BUILD/detectron2/_C.py"

    step "patch detectron2 v0.6 for numpy 2 / Pillow >= 10 / setuptools >= 81 / torch 2.x"
    "$PY" "${PATCH[@]}" detectron2 "$D2_BUILD"
    cat > "$D2_BUILD/setup.py" <<'EOF'
from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="0.6",
    description="detectron2 v0.6 Python sources (from pb1-detectron2==0.6) without compiled ops",
    license="Apache-2.0",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},
    python_requires=">=3.11",
)
EOF
    pip_q uninstall -q -y pb1-detectron2 >/dev/null 2>&1 || true
    pip_q install -q --no-deps --no-build-isolation "$D2_BUILD"
fi

step "lvis as released (set-ups before issue 20 patched lvis/eval.py in place: reinstalled then)"
if grep -qs "Patched by tde_det" "$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/lvis/eval.py"; then
    pip_q install -q --force-reinstall --no-deps "$(grep -E '^lvis==' "$ROOT/requirements.txt")"
fi

step "install tde_det in editable mode"
pip_q install -q --no-deps --no-build-isolation -e "$ROOT"

step "check that detectron2, lvis and tde_det import"
verify
env_hash > "$STAMP"
echo "[setup_env] done: $("$PY" -m pip show detectron2 | grep -E '^(Name|Version)' | tr '\n' ' ')"
