"""Detectron2 box predictor with the De-confound-TDE classifier (DESIGN.md §1-4).

Box regression, the losses and ``fast_rcnn_inference`` are Detectron2's; only the
classification layer and the test-time probabilities change.
"""

import logging

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from .cosine_classifier import MultiHeadCosineClassifier, tde_probs

__all__ = ["TDEFastRCNNOutputLayers", "TDEPredictions"]

logger = logging.getLogger(__name__)

INFERENCE_MODES = ("tde", "plain")


class TDEPredictions(tuple):
    """What :meth:`TDEFastRCNNOutputLayers.forward` returns.

    A 2-tuple ``(scores [R, C+1], proposal_deltas [R, C*4 or 4])`` exactly as
    Detectron2's ``FastRCNNOutputLayers.forward`` (so every Detectron2 caller unpacks
    it unchanged), with two attributes:

    * ``features`` [R, D]: the detached classifier input (mean update in ``losses``).
    * ``counterfactual`` [R, C+1] or None: b with TDE(y) = y − α b, computed in eval
      mode together with y (one pass over the normalised weight); None in training.
    """

    def __new__(cls, scores, proposal_deltas, features, counterfactual=None):
        self = super().__new__(cls, (scores, proposal_deltas))
        self.features = features
        self.counterfactual = counterfactual
        return self


class TDEFastRCNNOutputLayers(FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` whose ``cls_score`` is a :class:`MultiHeadCosineClassifier`.

    * forward: y = cosine logits (§1) and Detectron2's box deltas, as :class:`TDEPredictions`.
    * losses: Detectron2's (softmax CE on y, box regression); before them, in training
      mode with autograd enabled, x̄ is updated from the foreground regions
      (0 <= gt_classes < C) of the proposals (§2). Eval mode, ``torch.no_grad()`` passes
      (inference, PreciseBN) and ``inference()`` never change x̄.
    * predict_probs (hence Detectron2's ``inference`` / cascade score averaging):
        inference="tde", background_exempt=True : §4 scores from y and TDE(y) = y − α b
        inference="tde", background_exempt=False: softmax(TDE(y)) (no exemption)
        inference="plain", or α = 0               : softmax(y) ("De-confound" row)
      While x̄ is still zero (no training step seen), TDE is inactive: a warning is
      logged once and softmax(y) is returned.

    The classifier keeps Detectron2's parameter name ``cls_score.weight`` [C+1, D]
    (no bias); x̄ is the buffer ``cls_score.mean_feature``.
    """

    @configurable
    def __init__(
        self,
        input_shape,
        *,
        num_heads: int = 2,
        scale: float = 16.0,
        gamma: float = 1.0 / 32.0,
        momentum: float = 0.9,
        alpha: float = 1.5,
        inference: str = "tde",
        background_exempt: bool = True,
        sync_mean: bool = True,
        **kwargs,
    ):
        """
        Args:
            input_shape, **kwargs: passed to ``FastRCNNOutputLayers`` unchanged
                (box2box_transform, num_classes, test thresholds, and on newer
                Detectron2 use_fed_loss / use_sigmoid_ce / ...).
            num_heads, scale, gamma, momentum, sync_mean: K, τ, γ, μ and the
                cross-process mean sync, see :class:`MultiHeadCosineClassifier`.
            alpha: α >= 0, the counterfactual strength (test time only).
            inference: "tde" or "plain".
            background_exempt: use the §4 scores (True) or softmax(TDE(y)) (False).
        """
        super().__init__(input_shape, **kwargs)
        if inference not in INFERENCE_MODES:
            raise ValueError(
                f"MODEL.TDE.INFERENCE must be one of {INFERENCE_MODES}, got {inference!r}."
            )
        if not isinstance(background_exempt, bool):
            raise ValueError(f"MODEL.TDE.BACKGROUND_EXEMPT must be True or False, got {background_exempt!r}.")
        if getattr(self, "use_sigmoid_ce", False) and inference == "tde":
            raise ValueError(
                "De-confound-TDE scores are defined for the softmax classifier; set "
                "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE False or MODEL.TDE.INFERENCE 'plain'."
            )
        weight = self.cls_score.weight
        self.cls_score = MultiHeadCosineClassifier(
            weight.shape[1],
            weight.shape[0],
            num_heads=num_heads,
            scale=scale,
            gamma=gamma,
            momentum=momentum,
            sync_mean=sync_mean,
        )
        self.alpha = alpha
        self.inference_mode = inference
        self.background_exempt = background_exempt
        self._warned_inactive = False

    @classmethod
    def from_config(cls, cfg, input_shape):
        ret = super().from_config(cfg, input_shape)
        if "TDE" not in cfg.MODEL:
            raise KeyError("cfg.MODEL.TDE is missing: call tde_det.add_tde_config(cfg) before merging the config.")
        tde = cfg.MODEL.TDE
        ret.update(
            num_heads=tde.NUM_HEADS,
            scale=tde.SCALE,
            gamma=tde.GAMMA,
            momentum=tde.MOMENTUM,
            alpha=tde.ALPHA,
            inference=tde.INFERENCE,
            background_exempt=tde.BACKGROUND_EXEMPT,
            sync_mean=tde.SYNC_MEAN,
        )
        return ret

    @property
    def alpha(self) -> float:
        """α, settable at test time (e.g. for a sweep); must be >= 0."""
        return self._alpha

    @alpha.setter
    def alpha(self, value):
        if not (isinstance(value, (int, float)) and value >= 0 and value == value):
            raise ValueError(f"MODEL.TDE.ALPHA must be a number >= 0, got {value!r}.")
        self._alpha = float(value)

    def forward(self, x):
        """x: [R, D] (or [R, ...], flattened) -> TDEPredictions(y [R, C+1], deltas, x.detach(), b)."""
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        if self.training:
            scores, counterfactual = self.cls_score(x), None
        else:
            scores, counterfactual = self.cls_score.logits_and_counterfactual(x)
        return TDEPredictions(scores, self.bbox_pred(x), x.detach(), counterfactual)

    @staticmethod
    def _features(predictions):
        features = getattr(predictions, "features", None)
        if features is None:
            raise TypeError(
                "TDEFastRCNNOutputLayers needs the TDEPredictions returned by its own forward(); "
                f"got {type(predictions).__name__}. Pass the predictor's output through unchanged."
            )
        return features

    def losses(self, predictions, proposals):
        """Update x̄ from the foreground regions (§2), then Detectron2's losses."""
        if self.training and torch.is_grad_enabled():
            features = self._features(predictions)
            if len(proposals):
                gt_classes = cat([p.gt_classes for p in proposals], dim=0)
                fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
                features = features[fg]
            else:
                features = features[:0]
            # Every process calls this once per step (the mean is all-reduced inside).
            self.cls_score.update_mean(features)
        return super().losses(predictions, proposals)

    def logit_terms(self, predictions):
        """(y, b), both [R, C+1], from this predictor's forward output: TDE(y) = y − α b.

        Lets α sweeps re-score the same regions for many α without re-running the model
        (``cosine_classifier.tde_probs(y, b, alpha, background_exempt)``). From raw box
        features: ``self.cls_score.logits_and_counterfactual(x)``.
        """
        b = getattr(predictions, "counterfactual", None)
        if b is None:
            b = self.cls_score.counterfactual(self._features(predictions))
        return predictions[0], b

    def tde_active(self) -> bool:
        """True when predict_probs applies TDE (inference "tde", α > 0, x̄ known)."""
        if self.inference_mode != "tde" or self.alpha == 0:
            return False
        if not self.cls_score.has_mean:
            if not self._warned_inactive:
                logger.warning(
                    "De-confound-TDE is inactive: the moving-average feature is still zero "
                    "(no training step and no trained checkpoint loaded); using the plain "
                    "cosine-softmax scores until it is known."
                )
                self._warned_inactive = True
            return False
        return True

    def predict_probs(self, predictions, proposals):
        """Per-image class probabilities [R_i, C+1] (see the class docstring)."""
        if not self.tde_active():
            return super().predict_probs(predictions, proposals)
        y, b = self.logit_terms(predictions)
        probs = tde_probs(y, b, self.alpha, self.background_exempt).to(y.dtype)
        return probs.split([len(p) for p in proposals], dim=0)
