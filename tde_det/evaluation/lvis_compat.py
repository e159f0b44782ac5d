"""lvis-api 0.5.3 on numpy >= 1.24, without editing its files.

lvis-api's ``LVISEval.accumulate`` calls ``astype(dtype=np.float)``; numpy 1.24 removed that alias
of the builtin ``float``, so lvis-api's evaluation fails with ``AttributeError: module 'numpy' has no
attribute 'float'`` on numpy 1.24-1.26 and 2.x. While :func:`lvis_numpy_aliases` is open, the
module ``lvis.eval`` sees numpy through a view that has the removed aliases back, with their old
meaning (``np.float`` is ``float``). numpy itself, other modules and the files of the installed lvis
are untouched, and everything is as before once the block is left.

tde_det's ``lvis-api`` backend (``run_lvis_api_eval``, ``TEST.LVIS_EVAL.BACKEND lvis-api``) uses it.
Detectron2's own ``LVISEvaluator`` calls lvis-api too; run it inside the block::

    from tde_det.evaluation import lvis_numpy_aliases

    with lvis_numpy_aliases():
        results = inference_on_dataset(model, loader, LVISEvaluator("lvis_v1_val", output_dir="out"))
"""

import contextlib
import importlib
import threading
import types

import numpy

__all__ = ["lvis_numpy_aliases", "REMOVED_ALIASES"]

# numpy 1.20 deprecated these aliases of the builtins and 1.24 removed them (numpy 2 re-added
# np.bool, as np.bool_; only the missing ones are put back).
REMOVED_ALIASES = {"float": float, "int": int, "bool": bool, "object": object, "str": str, "complex": complex}

_LOCK = threading.Lock()
_STATE = {"depth": 0, "original": None}


class _NumpyWithAliases(types.ModuleType):
    """numpy plus the aliases it no longer has: every other name is looked up in numpy itself."""

    def __getattr__(self, name):
        return getattr(numpy, name)


def _missing_aliases():
    return {name: value for name, value in REMOVED_ALIASES.items() if name not in dir(numpy)}


def _numpy_view(aliases):
    view = _NumpyWithAliases("numpy", numpy.__doc__)
    for name, value in aliases.items():
        setattr(view, name, value)
    return view


@contextlib.contextmanager
def lvis_numpy_aliases():
    """Within the block, ``lvis.eval`` runs on this numpy (nested and concurrent blocks are fine).

    Does nothing where numpy still has the aliases, or where ``lvis.eval`` does not use numpy as
    ``np`` (a fixed lvis release).
    """
    lvis_eval = importlib.import_module("lvis.eval")
    aliases = _missing_aliases()
    with _LOCK:
        if _STATE["depth"] == 0:
            if not aliases or getattr(lvis_eval, "np", None) is not numpy:
                _STATE["original"] = None
            else:
                _STATE["original"] = lvis_eval.np
                lvis_eval.np = _numpy_view(aliases)
        _STATE["depth"] += 1
    try:
        yield
    finally:
        with _LOCK:
            _STATE["depth"] -= 1
            if _STATE["depth"] == 0 and _STATE["original"] is not None:
                lvis_eval.np = _STATE["original"]
                _STATE["original"] = None
