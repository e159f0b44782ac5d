#!/usr/bin/env bash
# Create or update the project's virtual environment in .venv (idempotent).
#
#   bash scripts/setup_env.sh          # or: make env
#
# Environment variables:
#   TDE_DET_PYTHON            interpreter used to create the venv (default: python3.11, else python3)
#   TDE_DET_DETECTRON2_SRC    path to an upstream detectron2 checkout: install it (compiled, editable)
#                             instead of the PyPI source release pb1-detectron2==0.6
#
# A second run with nothing to do only checks the stamp and the imports (seconds).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)
D2_SDIST="pb1-detectron2-0.6.tar.gz"
D2_SHA256="5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"
D2_BUILD="$ROOT/build/detectron2-pypi"
D2_SRC="${TDE_DET_DETECTRON2_SRC:-}"
STAMP="$VENV/.tde_det_env"

CURRENT_STEP=""
step() { CURRENT_STEP="$1"; echo "[setup_env] $1"; }
trap 'echo "[setup_env] FAILED at step: ${CURRENT_STEP}" >&2' ERR

env_hash() {
    cat "$ROOT/requirements.txt" "$ROOT/setup.py" "$ROOT/scripts/setup_env.sh" "$ROOT/scripts/detectron2_C.py" \
        | { cat; echo "d2src=$D2_SRC"; } | sha256sum | cut -d' ' -f1
}

verify() {
    "$PY" - <<'EOF'
import detectron2.layers, detectron2.modeling, detectron2.evaluation  # noqa: F401
import lvis, pycocotools.mask, cv2, torch, torchvision  # noqa: F401
import tde_det  # noqa: F401
EOF
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$(env_hash)" ]] && verify 2>/dev/null; then
    echo "[setup_env] environment in $VENV is up to date"
    exit 0
fi

step "create the virtual environment ($VENV)"
if [[ ! -x "$PY" ]]; then
    BASE_PY="${TDE_DET_PYTHON:-$(command -v python3.11 || command -v python3)}"
    "$BASE_PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"need Python 3.11, got {sys.version}"'
    "$BASE_PY" -m venv "$VENV"
fi

step "install the pinned requirements (requirements.txt)"
"${PIP[@]}" install -q -r "$ROOT/requirements.txt"

if [[ -n "$D2_SRC" ]]; then
    step "install detectron2 from the upstream source at $D2_SRC (compiles its C++/CUDA ops)"
    [[ -f "$D2_SRC/setup.py" ]] || { echo "TDE_DET_DETECTRON2_SRC=$D2_SRC has no setup.py" >&2; false; }
    "${PIP[@]}" install -q --no-build-isolation --no-deps -e "$D2_SRC"
else
    step "download detectron2's PyPI source release $D2_SDIST and check its sha256"
    mkdir -p "$ROOT/build"
    if [[ ! -f "$ROOT/build/$D2_SDIST" ]]; then
        # pip runs the sdist's setup.py for metadata, which imports torch: no build isolation.
        "${PIP[@]}" download -q --no-deps --no-build-isolation --no-binary :all: -d "$ROOT/build" pb1-detectron2==0.6
    fi
    echo "$D2_SHA256  $ROOT/build/$D2_SDIST" | sha256sum --check --quiet

    step "install detectron2 v0.6 Python sources with the stand-in detectron2._C (scripts/detectron2_C.py)"
    rm -rf "$D2_BUILD" && mkdir -p "$D2_BUILD"
    tar -xzf "$ROOT/build/$D2_SDIST" -C "$D2_BUILD" --strip-components=1 pb1-detectron2-0.6/detectron2 pb1-detectron2-0.6/LICENSE
    cp "$ROOT/scripts/detectron2_C.py" "$D2_BUILD/detectron2/_C.py"
    cat > "$D2_BUILD/setup.py" <<'EOF'
from setuptools import find_packages, setup

setup(
    name="detectron2",
    version="0.6",
    description="detectron2 v0.6 Python sources (from pb1-detectron2==0.6) without compiled ops",
    license="Apache-2.0",
    packages=find_packages(include=["detectron2", "detectron2.*"]),
    package_data={"detectron2.model_zoo": ["configs/**/*.yaml", "configs/**/*.py"]},
    python_requires=">=3.6",
)
EOF
    "${PIP[@]}" uninstall -q -y pb1-detectron2 >/dev/null 2>&1 || true
    "${PIP[@]}" install -q --no-deps --no-build-isolation "$D2_BUILD"
fi

step "install tde_det in editable mode"
"${PIP[@]}" install -q --no-deps --no-build-isolation -e "$ROOT"

step "check that detectron2, lvis and tde_det import"
verify
env_hash > "$STAMP"
echo "[setup_env] done: $("$PY" -m pip show detectron2 | grep -E '^(Name|Version)' | tr '\n' ' ')"
