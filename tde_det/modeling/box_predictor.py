"""Detectron2 box predictor with the De-confound-TDE classifier (DESIGN.md §1-4).

Box regression, the losses, ``predict_probs`` and ``fast_rcnn_inference`` are Detectron2's; only
the classification layer and the logits it returns at test time change. ``forward`` returns
Detectron2's plain ``(scores, proposal_deltas)`` tuple and has no Python branch on tensor values,
so TDE models script (``detectron2.export.scripting_with_instances``), trace and export to ONNX,
and a module traced or scripted before its checkpoint is loaded applies the x̄ loaded later.
"""

import logging
from typing import Optional

import torch
from detectron2.config import configurable
from detectron2.layers import cat
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers

from ..errors import ConfigError
from .cosine_classifier import MultiHeadCosineClassifier, _at_least_fp32, tde_logits

__all__ = ["TDEFastRCNNOutputLayers"]

logger = logging.getLogger(__name__)

INFERENCE_MODES = ("tde", "plain")


class TDEFastRCNNOutputLayers(FastRCNNOutputLayers):
    """``FastRCNNOutputLayers`` whose ``cls_score`` is a :class:`MultiHeadCosineClassifier`.

    * forward(x [R, D]) -> (scores [R, C+1], proposal_deltas), as Detectron2's:
        training: scores = y, the cosine logits (§1), for Detectron2's softmax CE;
        eval:     scores = the test-time logits, whose softmax (Detectron2's ``predict_probs``,
                  hence its ``inference`` and cascade score averaging) is the TDE score:
          inference="tde", background_exempt=True : ``exempt_logits(y, y − α b)`` (§4)
          inference="tde", background_exempt=False: y − α b (softmax(TDE(y)), no exemption)
          inference="plain"                       : y ("De-confound" row)
        always at least fp32 (autocast too, as Detectron2's softmax scores). While x̄ is zero,
        b = 0 and the TDE logits are exactly y: no branch, nothing frozen by tracing.
    * losses: Detectron2's (softmax CE on y, box regression); before them, in training mode with
      autograd enabled, x̄ is updated from the foreground regions (0 <= gt_classes < C) of the
      proposals (§2), using the features kept by the training forward. Eval mode,
      ``torch.no_grad()`` passes (PreciseBN) and inference never change x̄.
    * forward_with_counterfactual(x) -> ((y, proposal_deltas), b): one pass giving what an α sweep
      needs (scores for any α: ``tde_probs(y, b, α)``).
    * Loading a checkpoint warns when its x̄ is all zero (TDE would equal plain), and says in one
      line what is kept from a Detectron2 softmax predictor (class weights) and dropped (bias).

    The classifier keeps Detectron2's parameter name ``cls_score.weight`` [C+1, D]
    (no bias); x̄ is the buffer ``cls_score.mean_feature``.
    """

    # Python-only property (its setter validates); forward reads the float attribute ``_alpha``.
    __jit_unused_properties__ = ["alpha"]

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
            alpha: α >= 0, the counterfactual strength (test time only). Read when the module
                runs eagerly or is scripted / traced: set it before exporting.
            inference: "tde" or "plain".
            background_exempt: use the §4 scores (True) or softmax(TDE(y)) (False).

        Errors name the argument and its config key, e.g. ``inference='x'
        (MODEL.TDE.INFERENCE) must be one of ('tde', 'plain')``.
        """
        super().__init__(input_shape, **kwargs)
        if inference not in INFERENCE_MODES:
            raise ConfigError(f"inference={inference!r} (MODEL.TDE.INFERENCE) must be one of {INFERENCE_MODES}.")
        if not isinstance(background_exempt, bool):
            raise ConfigError(
                f"background_exempt={background_exempt!r} (MODEL.TDE.BACKGROUND_EXEMPT) must be True or False."
            )
        if getattr(self, "use_sigmoid_ce", False) and inference == "tde":
            raise ConfigError(
                "use_sigmoid_ce=True (MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE) with inference='tde' "
                "(MODEL.TDE.INFERENCE): De-confound-TDE scores are defined for the softmax classifier; set "
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
        self._alpha = 0.0
        self.alpha = alpha
        self.inference_mode = inference
        self.background_exempt = background_exempt
        # The training forward's detached input, consumed by ``losses`` for the x̄ update.
        self._train_features: Optional[torch.Tensor] = None

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
        if not (isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 and value == value):
            raise ConfigError(f"alpha={value!r} (MODEL.TDE.ALPHA) must be a number >= 0.")
        self._alpha = float(value)

    def forward(self, x):
        """x: [R, D] (or [R, ...], flattened) -> (scores [R, C+1], proposal_deltas [R, C*4 or 4]).

        scores: y in training; the test-time logits (class docstring) in eval mode.
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        proposal_deltas = self.bbox_pred(x)
        if self.training:
            if not torch.jit.is_scripting():
                self._keep_features(x)
            return self.cls_score(x), proposal_deltas
        if self.inference_mode == "tde":
            y, b = self.cls_score.logits_and_counterfactual(x)
            return tde_logits(y, b, self._alpha, self.background_exempt), proposal_deltas
        return _at_least_fp32(self.cls_score(x)), proposal_deltas

    @torch.jit.unused
    def _keep_features(self, x):
        self._train_features = x.detach()

    def forward_with_counterfactual(self, x):
        """((y, proposal_deltas), b) from box features x [R, D] in one pass (§1, §3).

        y, b [R, C+1] are the plain cosine logits and the counterfactual term, TDE(y) = y − α b,
        so an α sweep scores the same regions for any α with
        ``cosine_classifier.tde_probs(y, b, α, self.background_exempt)`` (what eval mode's
        forward + ``predict_probs`` give for that α); ``(y, proposal_deltas)`` can go to
        ``predict_boxes``. Never changes x̄.
        """
        if x.dim() > 2:
            x = torch.flatten(x, start_dim=1)
        y, b = self.cls_score.logits_and_counterfactual(x)
        return (y, self.bbox_pred(x)), b

    def losses(self, predictions, proposals):
        """Update x̄ from the foreground regions (§2), then Detectron2's losses."""
        features, self._train_features = self._train_features, None
        if self.training and torch.is_grad_enabled():
            scores = predictions[0]
            if features is None or features.shape[0] != scores.shape[0]:
                raise RuntimeError(
                    "TDEFastRCNNOutputLayers.losses() updates the mean feature from the regions of the "
                    "training-mode forward() called just before it; call forward(x) in training mode "
                    f"on the same {scores.shape[0]} regions first (got "
                    f"{'no forward' if features is None else f'a forward of {features.shape[0]} regions'})."
                )
            if len(proposals):
                gt_classes = cat([p.gt_classes for p in proposals], dim=0)
                fg = (gt_classes >= 0) & (gt_classes < self.num_classes)
                features = features[fg]
            else:
                features = features[:0]
            # Every process calls this once per step (the mean is all-reduced inside).
            self.cls_score.update_mean(features)
        return super().losses(predictions, proposals)

    def tde_active(self) -> bool:
        """True when eval scores differ from plain: inference "tde", α > 0 and x̄ non-zero."""
        return self.inference_mode == "tde" and self.alpha > 0 and self.cls_score.has_mean

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        """Checkpoint loading (``load_state_dict``, Detectron2's checkpointer) with TDE's own messages.

        * A Detectron2 softmax predictor (no ``cls_score.mean_feature``, e.g. a model-zoo Mask
          R-CNN): one line says what is kept (``cls_score.weight``, the class weights), what is
          dropped (``cls_score.bias``: the cosine classifier has none) and that x̄ starts at zero;
          fine-tuning then learns x̄.
        * A TDE checkpoint whose x̄ is all zero while inference is "tde": a warning (scores will
          equal the plain ones). Warned here, not in forward, so nothing is frozen into a trace.
        """
        weight_key, bias_key = prefix + "cls_score.weight", prefix + "cls_score.bias"
        mean_key = prefix + "cls_score.mean_feature"
        if mean_key not in state_dict and (weight_key in state_dict or bias_key in state_dict):
            dropped = state_dict.pop(bias_key, None) is not None
            state_dict[mean_key] = torch.zeros_like(self.cls_score.mean_feature)
            kept = (
                f"kept {weight_key} (the class weights)"
                if weight_key in state_dict
                else f"{weight_key} not loaded (not in the checkpoint or of another shape)"
            )
            logger.warning(
                f"Loading a softmax box predictor into TDE predictor {prefix[:-1] or '(root)'}: {kept}, "
                + (f"dropped {bias_key} (the cosine classifier has no bias), " if dropped else "")
                + "mean feature x̄ starts at zero (TDE scores equal the plain ones until training updates it)."
            )
        elif mean_key in state_dict and self.inference_mode == "tde" and self.alpha > 0:
            mean = state_dict[mean_key]
            if isinstance(mean, torch.Tensor) and not bool(torch.any(mean != 0)):
                logger.warning(
                    f"{mean_key} in the checkpoint is all zero (a model that never saw a training step): "
                    "De-confound-TDE is inactive and the scores equal the plain cosine-softmax ones. "
                    "Load weights trained with TDE heads, or set MODEL.TDE.INFERENCE 'plain'."
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
