"""Patch detectron2's Python sources for numpy 2, Pillow >= 10, setuptools >= 81, torch 2.x.

    python scripts/patch_third_party.py detectron2 DIR       # DIR holds detectron2/ (v0.6 sources)
    python scripts/patch_third_party.py detectron2-main DIR  # DIR holds detectron2/ (upstream main)

Used by ``make env`` on the sources it installs (before installing them), never on an installed
package. lvis 0.5.3's ``np.float`` is not patched here: tde_det handles it at run time
(``tde_det.evaluation.lvis_numpy_aliases``), so that it works in any environment.

detectron2 v0.6 (2021) predates numpy 1.24 (removed `np.float`, `np.int`,
`np.bool`, `np.object`, `np.str`), numpy 2.0 (`np.array(..., copy=False)` now means "never copy"),
Pillow 10 (removed `Image.LINEAR`), setuptools 81 (removed `pkg_resources`) and torch's removal of
caffe2. Upstream detectron2 main fixed all of these but `pkg_resources`. Every edit below is an exact
text replacement with the number of times the text must occur and the reason; the patched file gets
a header comment listing its edits. Idempotent: a file with that header is only re-checked. Fails
(exit 1, naming file and text) when a file or an expected text is missing, i.e. when the sources are
not the release this script was written for. After patching, the whole package is scanned for the
removed names; any left is an error too.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path

MARKER = "# Patched by tde_det's scripts/patch_third_party.py"

# A removed numpy alias: `np.float` etc. not followed by a digit or underscore (np.float32, np.bool_
# are fine). numpy 1.20 deprecated them; they were the Python builtins, so the builtin is the exact
# old meaning (`np.float` -> `float` == float64 dtype, `np.int` -> `int` == int64 on Linux).
NP_ALIAS = re.compile(r"\bnp\.(float|int|bool|object|str|long|complex|unicode)\b(?![\d_])")
NP_ALIAS_FIX = re.compile(r"\bnp\.(float|int|bool|object|str)\b(?![\d_])")
WHY_NP = "numpy 1.24 removed the aliases np.float/np.int/np.bool/np.object/np.str of the builtins"


@dataclass(frozen=True)
class Edit:
    """Replace `old` by `new`: exactly `count` occurrences (regex if `regex`)."""

    old: str
    new: str
    count: int
    why: str
    regex: bool = False


def np_aliases(count: int) -> Edit:
    """The builtin for each removed numpy alias (`np.float` -> `float`)."""
    return Edit(NP_ALIAS_FIX.pattern, r"\1", count, WHY_NP, regex=True)


PKG_RESOURCES_IMPORT = Edit(
    "import pkg_resources\n",
    "from importlib import resources as importlib_resources\n",
    1,
    "setuptools 81 removed pkg_resources; importlib.resources is the standard library's API",
)
PKG_RESOURCES_CALL = Edit(
    'pkg_resources.resource_filename(\n        "detectron2.model_zoo", os.path.join("configs", config_path)\n    )',
    'str(\n        importlib_resources.files("detectron2.model_zoo").joinpath("configs", config_path)\n    )',
    1,
    "same file path as pkg_resources.resource_filename for an installed (non-zip) package",
)

DETECTRON2_V06: dict[str, list[Edit]] = {
    "detectron2/model_zoo/model_zoo.py": [PKG_RESOURCES_IMPORT, PKG_RESOURCES_CALL],
    "detectron2/export/__init__.py": [
        Edit(
            "\nfrom .api import *\n",
            "\ntry:\n"
            "    from caffe2.proto import caffe2_pb2 as _caffe2_pb2  # noqa: F401\n"
            "except ImportError:  # torch >= 1.10 ships no caffe2: only its exporters are missing\n"
            "    pass\n"
            "else:\n"
            "    from .api import *  # noqa: F403  (Caffe2Tracer, Caffe2Model, add_export_config, ...)\n",
            1,
            "api.py (and shared.py, caffe2_inference.py it imports) import caffe2 at module level, "
            "which torch 2.x does not ship; TracingAdapter and the TorchScript helpers need no caffe2 "
            "(upstream main does the same)",
        )
    ],
    "detectron2/layers/mask_ops.py": [
        Edit(
            "mask = np.array(mask, copy=False)",
            "mask = np.asarray(mask)",
            1,
            "numpy 2: copy=False means 'never copy' and raises if a copy is needed; np.asarray is "
            "numpy 1's copy=False (copy only if needed)",
        )
    ],
    "detectron2/data/transforms/transform.py": [
        Edit(
            "interp=Image.LINEAR,",
            "interp=Image.BILINEAR,",
            1,
            "Pillow 10 removed Image.LINEAR, an alias of Image.BILINEAR (a default argument: "
            "evaluated when detectron2.data.transforms is imported)",
        )
    ],
    "detectron2/evaluation/pascal_voc_evaluation.py": [np_aliases(2)],
    "detectron2/evaluation/sem_seg_evaluation.py": [np_aliases(7)],
    "detectron2/structures/masks.py": [np_aliases(3)],
    "detectron2/data/datasets/pascal_voc.py": [np_aliases(1)],
    "detectron2/data/build.py": [np_aliases(2)],
    "detectron2/utils/visualizer.py": [np_aliases(3)],
    "detectron2/utils/video_visualizer.py": [np_aliases(1)],
}

# Upstream main (e.g. 02b5c4e2) still imports pkg_resources in model_zoo; nothing else is needed.
DETECTRON2_MAIN: dict[str, list[Edit]] = {
    "detectron2/model_zoo/model_zoo.py": [PKG_RESOURCES_IMPORT, PKG_RESOURCES_CALL],
}

# Removed names that must not be left anywhere in a patched package (scanned after patching).
FORBIDDEN = [
    (NP_ALIAS, WHY_NP),
    (re.compile(r"\bImage\.(LINEAR|CUBIC|ANTIALIAS)\b"), "Pillow 10 removed these constants"),
    (re.compile(r"^\s*import pkg_resources|^\s*from pkg_resources", re.M), "setuptools 81 removed pkg_resources"),
    (re.compile(r"\bnp\.array\([^()]*copy=False"), "numpy 2 changed np.array(copy=False)"),
    (re.compile(r"\bnp\.(product|cumproduct|sometrue|alltrue|asscalar|cast|float_|complex_|string_|unicode_)\b"),
     "removed in numpy 2"),
]


class PatchError(RuntimeError):
    pass


def _count(edit: Edit, text: str) -> int:
    return len(re.findall(edit.old, text)) if edit.regex else text.count(edit.old)


def _header(edits: list[Edit]) -> str:
    lines = [MARKER + " (numpy 2 / Pillow >= 10 / setuptools >= 81 / torch 2.x):"]
    for e in edits:
        what = f"{e.count}x removed numpy alias -> builtin" if e.regex else f"{e.old.strip().splitlines()[0]!r}"
        lines.append(f"#   {what}: {e.why}")
    return "\n".join(lines) + "\n"


def patched_text(path: Path, edits: list[Edit], *, optional: bool = False) -> tuple[str, str | None]:
    """(status, new text or None) of `path` with `edits` applied; nothing is written.

    Status: 'patched', 'already patched' or (`optional` and none of the texts there) 'not needed'.
    """
    if not path.is_file():
        raise PatchError(f"{path}: file not found (is this the right source tree?)")
    text = path.read_text(encoding="utf-8")
    if MARKER in text:
        return "already patched", None
    counts = [_count(e, text) for e in edits]
    if optional and not any(counts):
        return "not needed", None
    for e, n in zip(edits, counts):
        if n != e.count:
            raise PatchError(
                f"{path}: expected {e.count} occurrence(s) of {e.old!r}, found {n}: these are not "
                "the sources this patch was written for (detectron2 v0.6 / upstream main)"
            )
        text = re.sub(e.old, e.new, text) if e.regex else text.replace(e.old, e.new)
    # After an encoding line if there is one, so it stays within the first two lines.
    first, sep, rest = text.partition("\n")
    if re.match(r"#.*coding[:=]", first):
        text = first + sep + _header(edits) + rest
    else:
        text = _header(edits) + text
    return "patched", text


def scan(package: Path) -> list[str]:
    """Lines of `package`'s .py files that still use a removed name."""
    found = []
    for py in sorted(package.rglob("*.py")):
        for i, line in enumerate(py.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            for pattern, why in FORBIDDEN:
                if pattern.search(code):
                    found.append(f"{py}:{i}: {line.strip()}  ({why})")
    return found


TARGETS = {
    "detectron2": ("detectron2", DETECTRON2_V06, False),
    "detectron2-main": ("detectron2", DETECTRON2_MAIN, True),
}


def patch(target: str, root: Path) -> list[str]:
    """Patch the package of `target` under `root`; return one report line per file."""
    package_name, table, optional = TARGETS[target]
    package = root / package_name
    if not (package / "__init__.py").is_file():
        raise PatchError(f"{root} has no {package_name}/__init__.py: pass the folder that contains {package_name}/")
    # All files are checked before any is written: a failure leaves the tree as it was.
    results = {rel: patched_text(root / rel, edits, optional=optional) for rel, edits in table.items()}
    for rel, (_, text) in results.items():
        if text is not None:
            (root / rel).write_text(text, encoding="utf-8")
    report = [f"{rel}: {status}" for rel, (status, _) in results.items()]
    left = scan(package)
    if left:
        raise PatchError("removed names still used after patching:\n  " + "\n  ".join(left))
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("target", choices=sorted(TARGETS))
    parser.add_argument("dir", type=Path, help="folder that contains the package to patch")
    args = parser.parse_args(argv)
    try:
        for line in patch(args.target, args.dir.resolve()):
            print(f"[patch_third_party] {args.target}: {line}")
    except PatchError as e:
        print(f"[patch_third_party] error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
