#!/usr/bin/env python
"""Peer test suite (issue 12): Detectron2's own ROI-head and end-to-end tests with the TDE heads.

    make peer-test                                         # the project's .venv (make env first)
    TDE_DET_VENV=.venv-main make peer-test                 # another environment (e.g. upstream detectron2)
    .venv/bin/python scripts/peer_test.py [PYTEST ARGS]    # the same; extra args go to pytest

For .ci/run: in each leg, after ``make test``, run ``make peer-test`` with the same environment
variables (TDE_DET_VENV / TDE_DET_PYTHON / TDE_DET_DETECTRON2_SRC). The exit status is pytest's: 0
when every test passed or failed exactly as listed in tests/peer/tde_peer_plugin.py. Where the
archive is absent it prints "peer suite skipped: ..." and exits 0.

It runs ``tests/modeling/test_roi_heads.py`` and ``tests/modeling/test_model_e2e.py`` of the
INSTALLED detectron2's version against it, with ``tests/peer/tde_peer_plugin.py`` (which swaps in
TDEStandardROIHeads / TDECascadeROIHeads for Detectron2's and lists the expected differences).
The tests come from an archive in ``$TDE_DET_VENDOR`` (default ``../shared/vendor`` next to the
repository), extracted into ``build/peer/`` (never copied into the project):

- detectron2 v0.6 from PyPI (the default set-up: stand-in ``detectron2._C``) -> ``detectron2-v0.6-tests.tar.gz``;
- a compiled build equal to upstream main at the snapshot's commit (its ``detectron2/modeling``
  sources equal the archive's) -> ``detectron2-main-02b5c4e2.tar.gz``;
- any other build: an error (this suite has no tests of that version).
"""

import hashlib
import os
import subprocess
import sys
import tarfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VENDOR = os.environ.get("TDE_DET_VENDOR", os.path.join(os.path.dirname(REPO), "shared", "vendor"))
MAIN = ("detectron2-main-02b5c4e2.tar.gz", "detectron2")  # (archive, top folder inside it)
V06 = ("detectron2-v0.6-tests.tar.gz", "detectron2-v0.6")
TESTS = ("tests/modeling/test_roi_heads.py", "tests/modeling/test_model_e2e.py")


def _installed_modeling_sources():
    """{relative path: bytes} of the installed ``detectron2/modeling/**.py``."""
    import detectron2

    root = os.path.dirname(detectron2.__file__)
    out = {}
    for folder, _, files in os.walk(os.path.join(root, "modeling")):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, "rb") as f:
                    out[os.path.relpath(path, root)] = f.read()
    return out


def _archive_modeling_sources(archive, top):
    prefix = f"{top}/detectron2/"
    out = {}
    with tarfile.open(archive) as tar:
        for m in tar.getmembers():
            if m.isfile() and m.name.startswith(prefix + "modeling/") and m.name.endswith(".py"):
                out[m.name[len(prefix):]] = tar.extractfile(m).read()
    return out


def choose_archive():
    """(archive path, top folder) of the tests matching the installed detectron2, or exit."""
    import detectron2
    from detectron2 import _C

    if getattr(_C, "TDE_DET_STUB", False):  # the PyPI v0.6 sources with tde_det's stand-in _C
        return os.path.join(VENDOR, V06[0]), V06[1]
    main = os.path.join(VENDOR, MAIN[0])
    if not os.path.isfile(main):
        print(f"peer suite skipped: {main} not found", flush=True)
        sys.exit(0)
    if _installed_modeling_sources() != _archive_modeling_sources(main, MAIN[1]):
        sys.exit(
            f"error: the installed detectron2 ({os.path.dirname(detectron2.__file__)}) is neither the PyPI v0.6 "
            f"release nor upstream main at the snapshot's commit ({MAIN[0]}: its detectron2/modeling differs), "
            "so the peer suite has no tests of its version."
        )
    return main, MAIN[1]


def extract(archive, top):
    """Extract the archive's tests/ and projects/PointRend/ into build/peer/<top>-<sha12>/ (once)."""
    with open(archive, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:12]
    dest = os.path.join(REPO, "build", "peer", f"{top}-{digest}")
    stamp = os.path.join(dest, ".extracted")
    if not os.path.isfile(stamp):
        wanted = (f"{top}/tests/", f"{top}/projects/PointRend/", f"{top}/LICENSE")
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(wanted)]
            tar.extractall(dest, members=members, filter="data")
        open(stamp, "w").close()
    return os.path.join(dest, top)


def main(argv):
    archive, top = choose_archive()
    if not os.path.isfile(archive):
        print(f"peer suite skipped: {archive} not found", flush=True)
        return 0
    root = extract(archive, top)
    print(f"peer suite: tests of {os.path.basename(archive)} ({root})", flush=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [os.path.join(REPO, "tests", "peer"), env.get("PYTHONPATH")]))
    env["TDE_PEER_POINTREND"] = os.path.join(root, "projects", "PointRend")
    cmd = [sys.executable, "-m", "pytest", "-p", "tde_peer_plugin", "-q", *[os.path.join(root, t) for t in TESTS], *argv]
    return subprocess.call(cmd, cwd=REPO, env=env)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
