"""Training/evaluation glue: a thin ``DefaultTrainer`` subclass, the results table, atomic checkpoints."""

from .buffers import SyncBuffers, sync_buffers
from .checkpoint import AtomicWritePathManager, make_atomic
from .results import RESULTS_FILE, format_table, update_results_json
from .trainer import Trainer, check_config, inference_variants, is_tde_model

__all__ = [
    "AtomicWritePathManager",
    "RESULTS_FILE",
    "SyncBuffers",
    "Trainer",
    "check_config",
    "format_table",
    "inference_variants",
    "is_tde_model",
    "make_atomic",
    "sync_buffers",
    "update_results_json",
]
