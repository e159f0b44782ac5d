"""De-confound-TDE modeling: the classifier math, the box predictor and the ROI heads.

Importing this package registers ``TDEStandardROIHeads`` and ``TDECascadeROIHeads`` in
Detectron2's ``ROI_HEADS_REGISTRY`` and the demo backbone (``backbone.py``) in ``BACKBONE_REGISTRY``.
"""

from . import backbone  # noqa: F401  (registration)
from .box_predictor import TDEFastRCNNOutputLayers
from .calibration import apply_norcal, norcal_probs
from .cosine_classifier import (
    MultiHeadCosineClassifier,
    background_exempt_probs,
    exempt_logits,
    plain_probs,
    tde_logits,
    tde_probs,
)
from .roi_heads import TDECascadeROIHeads, TDEStandardROIHeads

__all__ = [
    "MultiHeadCosineClassifier",
    "TDECascadeROIHeads",
    "TDEFastRCNNOutputLayers",
    "TDEStandardROIHeads",
    "apply_norcal",
    "background_exempt_probs",
    "exempt_logits",
    "norcal_probs",
    "plain_probs",
    "tde_logits",
    "tde_probs",
]
