"""pytest plugin of the peer test suite: Detectron2's own ROI-head and end-to-end tests run against
the installed detectron2 with tde_det's De-confound-TDE heads in place of Detectron2's.

Loaded by ``scripts/peer_test.sh`` (``make peer-test``) with ``-p tde_peer_plugin``; it is not a
conftest, so ``pytest tests`` never loads it. Before the test modules are imported it

- makes ``detectron2.config.get_cfg`` (hence ``model_zoo.get_config`` and the tests' own
  ``get_cfg()``) return configs with ``add_tde_config`` applied;
- swaps the heads: ``ROI_HEADS_REGISTRY`` names ``StandardROIHeads`` / ``CascadeROIHeads`` build
  ``TDEStandardROIHeads`` / ``TDECascadeROIHeads``, and the classes imported from
  ``detectron2.modeling(.roi_heads)`` are the TDE ones;
- maps ``detectron2.projects.point_rend`` to the PointRend folder of the extracted archive
  (``$TDE_PEER_POINTREND``: the release's own ``projects/PointRend``; an installed PyPI release has none);
- marks, BY NAME, the tests expected to fail (strict xfail: a test that starts to pass fails the
  run, so the lists cannot go stale), and fails the run if no TDE box predictor was built.
"""

import functools
import importlib.util
import os
import sys

import pytest

# Assertions on the reference numbers of Detectron2's softmax FastRCNNOutputLayers: with the cosine
# classifier they differ by design.
EXPECTED_DIFFERENCES = {
    "test_roi_heads.py::ROIHeadsTest::test_roi_heads": (
        "asserts the reference losses of Detectron2's linear softmax box classifier; the TDE heads' cosine "
        "classifier gives another loss_cls, and building it draws random numbers, so the box and mask "
        "heads built after it get other initial weights (other loss_box_reg, loss_mask)"
    ),
}
# Tests expected to fail until the TDE heads support them (an XPASS fails the run). Empty since
# issue 14: test_StandardROIHeads_scriptability passes with the TDE heads (scripting works).
PENDING_SCRIPTING = {}
# Skipped where the installed detectron2 has no compiled ops (the default PyPI v0.6 release with
# tde_det's stand-in detectron2._C): rotated boxes need them.
NEEDS_COMPILED_OPS = {
    "test_roi_heads.py::ROIHeadsTest::test_rroi_heads": "rotated ROIAlign / rotated box IoU",
}

_built = {"TDEFastRCNNOutputLayers": 0}


def _map_point_rend(folder):
    """Import ``folder/point_rend`` as ``detectron2.projects.point_rend``."""
    import detectron2.projects

    package = os.path.join(folder, "point_rend")
    if not os.path.isfile(os.path.join(package, "__init__.py")):
        raise pytest.UsageError(f"TDE_PEER_POINTREND={folder!r} has no point_rend/__init__.py")
    spec = importlib.util.spec_from_file_location(
        "detectron2.projects.point_rend", os.path.join(package, "__init__.py"), submodule_search_locations=[package]
    )
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    detectron2.projects.point_rend = module


def _swap_in_tde_heads():
    import detectron2.config
    import detectron2.model_zoo.model_zoo
    import detectron2.modeling
    import detectron2.modeling.roi_heads
    from detectron2.modeling import ROI_HEADS_REGISTRY

    from tde_det import add_tde_config
    from tde_det.modeling.box_predictor import TDEFastRCNNOutputLayers
    from tde_det.modeling.roi_heads import TDECascadeROIHeads, TDEStandardROIHeads

    d2_get_cfg = detectron2.config.get_cfg

    def get_cfg():
        cfg = d2_get_cfg()
        add_tde_config(cfg)
        return cfg

    for module in (detectron2.config, detectron2.model_zoo.model_zoo):
        module.get_cfg = get_cfg
    for name, cls in (("StandardROIHeads", TDEStandardROIHeads), ("CascadeROIHeads", TDECascadeROIHeads)):
        # fvcore's Registry has no public way to replace an entry.
        ROI_HEADS_REGISTRY._obj_map[name] = cls
        for module in (detectron2.modeling, detectron2.modeling.roi_heads):
            setattr(module, name, cls)

    init = TDEFastRCNNOutputLayers.__init__

    def counting_init(self, *args, **kwargs):
        _built["TDEFastRCNNOutputLayers"] += 1
        init(self, *args, **kwargs)

    TDEFastRCNNOutputLayers.__init__ = functools.wraps(init)(counting_init)


def _has_compiled_ops():
    from detectron2 import _C

    return not getattr(_C, "TDE_DET_STUB", False)  # tde_det's stand-in _C (scripts/detectron2_C.py)


def pytest_configure(config):
    folder = os.environ.get("TDE_PEER_POINTREND")
    if folder:
        _map_point_rend(folder)
    _swap_in_tde_heads()


def pytest_report_header(config):
    from detectron2.modeling import ROI_HEADS_REGISTRY

    return (
        f"tde_det peer suite: StandardROIHeads -> {ROI_HEADS_REGISTRY.get('StandardROIHeads').__name__}, "
        f"CascadeROIHeads -> {ROI_HEADS_REGISTRY.get('CascadeROIHeads').__name__}"
    )


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, so that the stale-entry check sees every test
def pytest_collection_modifyitems(config, items):
    compiled = _has_compiled_ops()
    unused = set(EXPECTED_DIFFERENCES) | set(PENDING_SCRIPTING) | set(NEEDS_COMPILED_OPS)
    for item in items:
        key = item.nodeid.split("/")[-1]
        unused.discard(key)
        if key in EXPECTED_DIFFERENCES:
            item.add_marker(pytest.mark.xfail(reason=f"expected difference: {EXPECTED_DIFFERENCES[key]}",
                                              raises=AssertionError, strict=True))
        elif key in PENDING_SCRIPTING:
            item.add_marker(pytest.mark.xfail(reason=f"pending scripting support: {PENDING_SCRIPTING[key]}",
                                              strict=True))
        elif key in NEEDS_COMPILED_OPS and not compiled:
            item.add_marker(pytest.mark.skip(
                reason=f"needs detectron2's compiled ops ({NEEDS_COMPILED_OPS[key]}); this detectron2 has none"))
    selected = {os.path.basename(str(item.fspath)) for item in items}
    stale = sorted(k for k in unused if k.split("::")[0] in selected)
    if stale:
        raise pytest.UsageError(f"tde_peer_plugin lists tests that do not exist in this detectron2: {stale}")


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    terminalreporter.write_line(f"tde_det peer suite: TDE box predictors built: {_built['TDEFastRCNNOutputLayers']}")


def pytest_sessionfinish(session, exitstatus):
    option = session.config.option
    if option.collectonly or option.keyword or option.markexpr:  # a partial run may build no ROI heads
        return
    if session.testscollected and not _built["TDEFastRCNNOutputLayers"] and exitstatus == 0:
        print("\ntde_det peer suite: no TDE box predictor was built, the heads were not swapped in", file=sys.stderr)
        session.exitstatus = 1
