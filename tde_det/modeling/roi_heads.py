"""ROI heads using :class:`TDEFastRCNNOutputLayers`, registered in ``ROI_HEADS_REGISTRY``.

Switching a model to De-confound-TDE is ``add_tde_config(cfg)`` plus
``MODEL.ROI_HEADS.NAME: TDEStandardROIHeads`` (or ``TDECascadeROIHeads``). Everything
else (sampling, pooling, box/mask heads, cascade score averaging §5) is Detectron2's;
only the box predictors are replaced. Each cascade stage has its own classifier and x̄.
"""

import torch
from detectron2.config import configurable
from detectron2.modeling.roi_heads import ROI_HEADS_REGISTRY, CascadeROIHeads, StandardROIHeads

from ..errors import ConfigError
from .box_predictor import TDEFastRCNNOutputLayers

__all__ = ["TDEStandardROIHeads", "TDECascadeROIHeads", "box_stages"]


def box_stages(model, purpose):
    """(model, roi_heads, [box_head per stage], [box_predictor per stage]) of a ``GeneralizedRCNN``
    (unwrapped from DDP) with Standard or Cascade ROI heads (TDE or Detectron2's); a ConfigError
    naming `purpose` (e.g. "The alpha sweep") for any other model."""
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        model = model.module
    for attr in ("backbone", "proposal_generator", "roi_heads", "preprocess_image", "_postprocess"):
        if not hasattr(model, attr):
            raise ConfigError(
                f"{purpose} runs a GeneralizedRCNN (MODEL.META_ARCHITECTURE 'GeneralizedRCNN'); got "
                f"{type(model).__name__}, which has no {attr!r}."
            )
    heads = model.roi_heads
    if isinstance(heads, CascadeROIHeads):
        return model, heads, list(heads.box_head), list(heads.box_predictor)
    if isinstance(heads, StandardROIHeads):
        return model, heads, [heads.box_head], [heads.box_predictor]
    raise ConfigError(
        f"{purpose} supports StandardROIHeads and CascadeROIHeads (and their TDE versions); this model has "
        f"{type(heads).__name__}."
    )


def _check_predictors(heads_cls, predictors):
    for p in predictors:
        if not isinstance(p, TDEFastRCNNOutputLayers):
            raise TypeError(
                f"{heads_cls.__name__} needs TDEFastRCNNOutputLayers box predictors, got "
                f"{type(p).__name__}. In a LazyConfig, set the predictor's _target_ to "
                "tde_det.modeling.TDEFastRCNNOutputLayers."
            )


@ROI_HEADS_REGISTRY.register()
class TDEStandardROIHeads(StandardROIHeads):
    """``StandardROIHeads`` (Faster / Mask R-CNN) with a :class:`TDEFastRCNNOutputLayers`.

    Scriptable with ``detectron2.export.scripting_with_instances``, as Detectron2's own.
    """

    # Detectron2's scripting patch (detectron2.export.torchscript_patch) marks these two attributes
    # of StandardROIHeads as constants through its class annotations, which a subclass does not
    # inherit: repeat them, so that TorchScript drops the code of a disabled mask / keypoint head.
    mask_on: torch.jit.Final[bool]
    keypoint_on: torch.jit.Final[bool]

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _check_predictors(type(self), [self.box_predictor])

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        ret["box_predictor"] = TDEFastRCNNOutputLayers(cfg, ret["box_head"].output_shape)
        return ret


@ROI_HEADS_REGISTRY.register()
class TDECascadeROIHeads(CascadeROIHeads):
    """``CascadeROIHeads`` with one :class:`TDEFastRCNNOutputLayers` (own classifier, own x̄) per stage.

    Test scores are Detectron2's mean over stages of each stage's ``predict_probs``. Traceable
    (``TracingAdapter``, ONNX); not scriptable, like Detectron2's ``CascadeROIHeads`` (its stages
    index module lists with a loop variable).
    """

    @configurable
    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        _check_predictors(type(self), self.box_predictor)

    @classmethod
    def _init_box_head(cls, cfg, input_shape):
        ret = super()._init_box_head(cfg, input_shape)
        # Keep each stage's box2box_transform (its cascade regression weights).
        ret["box_predictors"] = [
            TDEFastRCNNOutputLayers(cfg, head.output_shape, box2box_transform=pred.box2box_transform)
            for head, pred in zip(ret["box_heads"], ret["box_predictors"])
        ]
        return ret
