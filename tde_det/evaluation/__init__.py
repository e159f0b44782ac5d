"""LVIS evaluation: :mod:`.fast_lvis` (vectorised, lvis-api's exact numbers, optional Fixed AP) and
:class:`FastLVISEvaluator` / :func:`build_lvis_evaluator`, the Detectron2 evaluator using it
(imported on first access, so that the plain functions do not import Detectron2 / torch)."""

from .fast_lvis import evaluate, prepare_gt, run_lvis_api_eval, run_lvis_eval
from .lvis_compat import lvis_numpy_aliases

__all__ = [
    "evaluate",
    "prepare_gt",
    "run_lvis_eval",
    "run_lvis_api_eval",
    "lvis_numpy_aliases",
    "FastLVISEvaluator",
    "build_lvis_evaluator",
]


def __getattr__(name):
    if name in ("FastLVISEvaluator", "build_lvis_evaluator"):
        from . import lvis_evaluator

        return getattr(lvis_evaluator, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
