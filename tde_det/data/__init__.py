"""Datasets: the generated long-tailed demo set (registered on import, generated on first use)
and up-front checks that LVIS files exist."""

from .builtin import DEMO_DATASETS, register_demo_lt
from .checks import DatasetFilesMissing, missing_files, prepare_dataset
from .demo_lt import DEMO_SPEC, FINE_SPEC, TINY_SPEC, DemoSpec, ensure_generated, lvis_frequency

__all__ = [
    "DEMO_DATASETS",
    "DEMO_SPEC",
    "FINE_SPEC",
    "TINY_SPEC",
    "DatasetFilesMissing",
    "DemoSpec",
    "ensure_generated",
    "lvis_frequency",
    "missing_files",
    "prepare_dataset",
    "register_demo_lt",
]
