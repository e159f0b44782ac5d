#!/usr/bin/env bash
# Wheels that the borrowed GPU machine lacks, for its CPython 3.12 on manylinux x86-64, into
# build/device-wheels (ignored; `make device-wheels`). scripts/device_check/device_check.sh installs them there.
#
#   bash scripts/device_check/device_wheels.sh [DEST]        # default DEST: build/device-wheels
#
# What the machine has (its python3: torch 2.11, torchvision 0.26, numpy 2.5, opencv-python-headless,
# matplotlib, Pillow, PyYAML, tabulate, tqdm, pytest, tensorboard, cloudpickle, portalocker, scipy,
# packaging, six, ...) stays as it is; this folder holds exactly, one wheel each:
#   - the runtime needs of detectron2 v0.6 and tde_det missing there: fvcore, iopath, yacs, omegaconf,
#     hydra-core, antlr4-python3-runtime, pycocotools, lvis, termcolor -- at the versions pinned in
#     requirements.txt (fvcore and antlr4 are source releases: built here into pure-Python wheels);
#   - detectron2 0.6 itself: the patched sources that `make env` leaves in build/detectron2-pypi
#     (copied, patched again by scripts/patch_third_party.py, which is idempotent), as a pure-Python
#     wheel, so that `pip show detectron2` knows it there as here.
# Every Requires-Dist of these wheels is either in this folder or preinstalled on the machine
# (device_check.sh checks that again there). A second run with nothing changed only checks the stamp.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
DEST="${1:-$ROOT/build/device-wheels}"
[[ "$DEST" == /* ]] || DEST="$PWD/$DEST"
VENV_PY="$ROOT/${TDE_DET_VENV:-.venv}/bin/python"
D2_BUILD="$ROOT/build/detectron2-pypi"
PINS="$ROOT/requirements.txt"
BINARY=(iopath yacs omegaconf hydra-core pycocotools lvis termcolor)
SOURCE_ONLY=(fvcore antlr4-python3-runtime)
LIMIT_MIB=64  # what may travel to the machine, working tree included
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)

say() { echo "[device_wheels] $*"; }
die() { echo "[device_wheels] error: $*" >&2; exit 1; }

[[ -f "$D2_BUILD/detectron2/__init__.py" && -f "$D2_BUILD/setup.py" ]] \
    || die "$D2_BUILD has no detectron2 sources: run 'make env' (the default detectron2 v0.6 set-up) first."

pin() {  # pin NAME -> NAME==VERSION from requirements.txt (names compared case- and -/_-insensitively)
    local want line
    want="$(echo "$1" | tr 'A-Z_' 'a-z-')"
    line="$(grep -E '^[A-Za-z0-9_.-]+==' "$PINS" | sed 's/[[:space:]]*#.*//' \
        | awk -F'==' -v w="$want" '{n=tolower($1); gsub("_","-",n); if (n==w) print $1"=="$2}')"
    [[ -n "$line" ]] || die "$PINS pins no version of $1 (expected a line '$1==VERSION')."
    echo "$line"
}

SPECS=()
for name in "${BINARY[@]}" "${SOURCE_ONLY[@]}"; do SPECS+=("$(pin "$name")"); done

stamp_of() {
    { printf '%s\n' "${SPECS[@]}"; cat "${BASH_SOURCE[0]}" "$ROOT/scripts/patch_third_party.py" "$D2_BUILD/setup.py";
      (cd "$D2_BUILD" && find detectron2 -name '*.py' -type f | LC_ALL=C sort | xargs sha256sum); } | sha256sum | cut -d' ' -f1
}
STAMP="$(stamp_of)"
if [[ -f "$DEST/.stamp" && "$(cat "$DEST/.stamp")" == "$STAMP" ]]; then
    say "$DEST is up to date ($(du -sk "$DEST" | cut -f1) KiB)"
    exit 0
fi

# Building them needs the project's venv (its pip and Python); an up-to-date folder does not.
[[ -x "$VENV_PY" ]] || die "$VENV_PY not found: run 'make env' first (it also leaves the detectron2 sources in build/)."
rm -rf "$DEST" "$DEST.tmp" && mkdir -p "$DEST.tmp"
PIP=("$VENV_PY" -m pip --disable-pip-version-check)

say "binary wheels for CPython 3.12 manylinux x86-64: ${SPECS[*]:0:${#BINARY[@]}}"
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${PLATFORMS[@]}" \
    -d "$DEST.tmp" "${SPECS[@]:0:${#BINARY[@]}}"

say "pure-Python wheels built from the source releases: ${SPECS[*]:${#BINARY[@]}}"
"${PIP[@]}" wheel -q --no-deps --no-binary :all: -w "$DEST.tmp" "${SPECS[@]:${#BINARY[@]}}"

say "detectron2 0.6 wheel from $D2_BUILD (patched for numpy 2 / Pillow >= 10 / setuptools >= 81)"
STAGE="$DEST.tmp/.detectron2-src"
mkdir -p "$STAGE"
cp -r "$D2_BUILD/detectron2" "$D2_BUILD/setup.py" "$STAGE/"
[[ -f "$D2_BUILD/LICENSE" ]] && cp "$D2_BUILD/LICENSE" "$STAGE/"
find "$STAGE" -name '__pycache__' -type d -prune -exec rm -rf {} +
"$VENV_PY" "$ROOT/scripts/patch_third_party.py" detectron2 "$STAGE"
"${PIP[@]}" wheel -q --no-deps --no-build-isolation -w "$DEST.tmp" "$STAGE"
rm -rf "$STAGE"

say "checking the folder"
"$VENV_PY" - "$DEST.tmp" <<'EOF'
import collections, pathlib, sys, zipfile
folder = pathlib.Path(sys.argv[1])
wheels = sorted(folder.glob("*.whl"))
names = collections.Counter(w.name.split("-")[0].lower().replace("_", "-") for w in wheels)
twice = [n for n, c in names.items() if c > 1]
if twice:
    sys.exit(f"[device_wheels] error: more than one wheel of {twice}: pip --no-index would refuse the folder")
for w in wheels:
    tag = w.name[:-4].split("-")[-3:]
    if not (tag[2] == "any" or "x86_64" in tag[2]) or not (tag[0].startswith("py3") or tag[0] == "cp312"):
        sys.exit(f"[device_wheels] error: {w.name} does not install on CPython 3.12 manylinux x86-64")
    with zipfile.ZipFile(w) as z:
        z.testzip()
print("[device_wheels] " + ", ".join(w.name for w in wheels))
EOF
mv "$DEST.tmp" "$DEST"
echo "$STAMP" > "$DEST/.stamp"
KIB="$(du -sk "$DEST" | cut -f1)"
say "done: $(ls "$DEST"/*.whl | wc -l) wheels, $KIB KiB in $DEST (limit for all that travels: $LIMIT_MIB MiB)"
(( KIB < LIMIT_MIB * 1024 )) || die "$DEST is over $LIMIT_MIB MiB"
