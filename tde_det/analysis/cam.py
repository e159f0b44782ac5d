"""Grad-CAM per detection for the plain and the TDE class logit (issue 17), plain torch on Detectron2's modules.

Map: the ROI-pooled box features, i.e. the S×S region (S = ``MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION``,
7) that Detectron2's ``box_pooler`` samples from the FPN level it assigns the box to; the S×S map is
upsampled into the box on the image (:func:`paste_cams`, Detectron2's ``paste_masks_in_image``,
which uses the same box-to-bin geometry as ROIAlign). Outside its box a detection's map is 0: the
box head sees nothing else (up to ROIAlign's bilinear border).

For a detection r of class c = c_r with pooled features A_r [Ch, S, S] and a target logit s_r:

    a_rc'   = mean_{u,v} ∂s_r / ∂A_r[c', u, v]              (channel weights)
    CAM_r   = ReLU( Σ_c' a_rc' · A_r[c'] )                   [S, S]   (:func:`grad_cam`)

with s_r = y_c (plain) and s_r = y_c − α·b_c (TDE; y, b from
``MultiHeadCosineClassifier.logits_and_counterfactual`` of the box-head feature x = box_head(A_r)).
Since a_rc' is linear in the gradient, CAM_TDE = ReLU(G_y − α·G_b) with G the pre-ReLU maps of y_c
and b_c: the TDE map is the plain one minus what the counterfactual (head-direction) term explains.
A softmax model (Detectron2's ``FastRCNNOutputLayers``) has only s_r = y_c = the linear logit.
Cascade heads share one pooler: s_r is the mean over stages of the stage logits, each stage's
head applied to the same pooled features.

The logits are recomputed on the given boxes (usually the drawn detections, i.e. the regressed
boxes), so they, and the scores reported with them, are what the model gives these boxes as
proposals. The detection's own score was computed on its proposal before box regression; the two
agree for well-localised detections and can differ a lot for loose ones.
"""

from dataclasses import dataclass
from typing import List, Optional

import torch
from detectron2.layers.mask_ops import paste_masks_in_image
from detectron2.structures import Boxes

from ..errors import ConfigError
from ..modeling.cosine_classifier import MultiHeadCosineClassifier, plain_probs, tde_probs
from ..modeling.roi_heads import box_stages

__all__ = ["DetectionCams", "detection_cams", "grad_cam", "has_tde_head", "normalize_cams", "paste_cams"]

# A region whose maps are all below this is left at zero by normalize_cams (no division by ~0).
_EPS = 1e-12


def grad_cam(activations: torch.Tensor, gradients: torch.Tensor) -> torch.Tensor:
    """Grad-CAM: [R, Ch, h, w] activations and ∂s/∂activations -> [R, h, w], >= 0, unnormalised.

    CAM_r = ReLU(Σ_c mean_{u,v}(gradients[r, c]) · activations[r, c]). Zero for a region whose
    gradient is zero.
    """
    if activations.dim() != 4 or activations.shape != gradients.shape:
        raise ValueError(
            f"grad_cam needs activations and gradients of the same shape [R, Ch, h, w], got "
            f"{tuple(activations.shape)} and {tuple(gradients.shape)}."
        )
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    return torch.relu((weights * activations).sum(dim=1))


def normalize_cams(*cams: torch.Tensor) -> List[torch.Tensor]:
    """Scale maps [R, h, w] (each >= 0) to [0, 1] per region, JOINTLY over the given maps.

    Region r of every map is divided by the largest value of region r over all of them, so the
    maps passed together (e.g. the plain and the TDE map of one model) stay comparable in
    strength; a region that is zero in all of them stays zero.
    """
    if not cams:
        return []
    peak = torch.stack([c.flatten(1).amax(dim=1) if c.numel() else c.new_zeros(len(c)) for c in cams]).amax(dim=0)
    scale = torch.where(peak > _EPS, 1.0 / peak.clamp_min(_EPS), torch.zeros_like(peak))
    return [c * scale[:, None, None] for c in cams]


def paste_cams(cams: torch.Tensor, boxes: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Upsample [R, S, S] maps in [0, 1] into their boxes [R, 4] (XYXY, image pixels) -> [R, height, width].

    Detectron2's ``paste_masks_in_image`` (bilinear, box edges = outer bin edges as in ROIAlign),
    quantised to 1/255; zero outside each box.
    """
    pasted = paste_masks_in_image(cams.float().clamp(0, 1), Boxes(boxes.float()), (int(height), int(width)), threshold=-1)
    return pasted.float() / 255.0


@dataclass
class DetectionCams:
    """CAMs of R detections, each map [R, S, S] over the detection's box, in [0, 1].

    ``plain`` and ``tde`` are normalised jointly per detection (:func:`normalize_cams`): the
    larger of the two has maximum 1. ``plain_scores`` / ``tde_scores`` [R]: the model's score of
    the detection's class for the box (plain: softmax(y), or Detectron2's ``predict_probs`` for a
    softmax model; TDE: ``tde_probs(y, b, α)``, background-exempt as configured; cascade: mean over
    stages). ``tde`` / ``tde_scores`` / ``alpha`` are None for a model without TDE head.
    """

    plain: torch.Tensor
    plain_scores: torch.Tensor
    tde: Optional[torch.Tensor] = None
    tde_scores: Optional[torch.Tensor] = None
    alpha: Optional[float] = None


def has_tde_head(model) -> bool:
    """True when the model's box predictors are De-confound-TDE ones (cosine classifier with x̄)."""
    predictors = box_stages(model, "Grad-CAM per detection")[3]
    return all(isinstance(p.cls_score, MultiHeadCosineClassifier) for p in predictors)


def detection_cams(model, model_input: dict, boxes, classes: torch.Tensor, alpha: Optional[float] = None) -> DetectionCams:
    """Grad-CAM of the plain (and, for TDE heads, the TDE) logit of each detection of one image.

    Args:
        model: a ``GeneralizedRCNN`` in eval mode with Standard or Cascade ROI heads, either
            De-confound-TDE (``MultiHeadCosineClassifier``) or Detectron2's softmax ones.
        model_input: the image as the model takes it at test time: {"image": [3, h, w] in
            ``INPUT.FORMAT``, optional "height"/"width" of the output (default h, w)}.
        boxes: [R, 4] XYXY (Tensor or Boxes) in OUTPUT coordinates (height × width), e.g. a
            detection's ``pred_boxes``; classes: [R] foreground class indices (0 <= c < C).
        alpha: α of the TDE logit (default: the last box predictor's ``alpha``,
            ``MODEL.TDE.ALPHA``); must be None for a softmax model.

    Returns :class:`DetectionCams` (maps [R, S, S] and scores [R], on the model's device).
    Parameters' ``.grad`` are not touched (``torch.autograd.grad`` w.r.t. the pooled features).
    """
    model, heads, box_heads, predictors = box_stages(model, "Grad-CAM per detection")
    if model.training:
        raise ValueError("detection_cams needs the model in eval mode: call model.eval() first.")
    cosine = [isinstance(p.cls_score, MultiHeadCosineClassifier) for p in predictors]
    if any(cosine) and not all(cosine):
        raise TypeError("Every box predictor must be a TDE predictor, or none; this model mixes them.")
    is_tde = all(cosine)
    if is_tde:
        alpha = predictors[-1].alpha if alpha is None else float(alpha)
        if not (alpha >= 0):
            raise ValueError(f"alpha must be >= 0 (TDE(y) = y - alpha*b), got {alpha!r}.")
        if alpha > 0 and not all(p.cls_score.has_mean for p in predictors):
            raise ConfigError(
                "The moving-average feature of the TDE head is all zero, so the TDE logit equals the plain one. "
                "Load trained TDE weights (MODEL.WEIGHTS path/to/model.pth)."
            )
    elif alpha is not None:
        raise ValueError(f"alpha={alpha} was given, but this model has no TDE head (softmax): only the plain logit exists.")

    boxes = boxes.tensor if isinstance(boxes, Boxes) else torch.as_tensor(boxes)
    classes = torch.as_tensor(classes, dtype=torch.long)
    if boxes.dim() != 2 or boxes.shape[1] != 4 or classes.shape != (len(boxes),):
        raise ValueError(f"Need boxes [R, 4] and classes [R], got {tuple(boxes.shape)} and {tuple(classes.shape)}.")
    if len(classes) and not (0 <= int(classes.min()) and int(classes.max()) < heads.num_classes):
        raise ValueError(f"classes must be foreground indices in [0, {heads.num_classes}), got {classes.tolist()}.")
    if "image" not in model_input:
        raise ValueError("model_input needs an 'image' tensor [3, h, w], as the model takes it at test time.")

    device = next(model.parameters()).device
    if len(classes) == 0:
        s = heads.box_pooler.output_size
        empty, none = torch.zeros(0, *s, device=device), torch.zeros(0, device=device)
        if not is_tde:
            return DetectionCams(plain=empty, plain_scores=none)
        return DetectionCams(plain=empty, plain_scores=none, tde=empty.clone(), tde_scores=none.clone(), alpha=alpha)
    h, w = model_input["image"].shape[-2:]
    out_h, out_w = int(model_input.get("height", h)), int(model_input.get("width", w))
    scale = torch.tensor([w / out_w, h / out_h, w / out_w, h / out_h], dtype=torch.float32)
    input_boxes = Boxes((boxes.detach().float().cpu() * scale).to(device))
    with torch.no_grad():
        images = model.preprocess_image([model_input])
        features = model.backbone(images.tensor)
        pooled = heads.box_pooler([features[f] for f in heads.box_in_features], [input_boxes])
    pooled = pooled.detach().requires_grad_(True)
    rows = torch.arange(len(classes), device=device)
    cls = classes.to(device)

    with torch.enable_grad():
        ys, bs, plain_p, tde_p = [], [], [], []
        for head, predictor in zip(box_heads, predictors):
            x = torch.flatten(head(pooled), start_dim=1)
            if is_tde:
                y, b = predictor.cls_score.logits_and_counterfactual(x)
                bs.append(b)
                with torch.no_grad():
                    plain_p.append(plain_probs(y))
                    tde_p.append(tde_probs(y, b, alpha, predictor.background_exempt))
            else:
                y = predictor.cls_score(x)
                with torch.no_grad():  # Detectron2's own scores (softmax, or sigmoid with USE_SIGMOID_CE)
                    deltas = predictor.bbox_pred(x)
                    plain_p.append(predictor.predict_probs((y, deltas), [input_boxes])[0])
            ys.append(y)
        y = torch.stack(ys).mean(dim=0)
        targets = [y[rows, cls]]
        if is_tde:
            b = torch.stack(bs).mean(dim=0)
            targets.append((y - alpha * b)[rows, cls])
        grads = [torch.autograd.grad(t.sum(), pooled, retain_graph=True, allow_unused=True)[0] for t in targets]
    cams = [grad_cam(pooled.detach(), g if g is not None else torch.zeros_like(pooled)) for g in grads]
    cams = normalize_cams(*cams)

    def score(probs):
        return torch.stack(probs).mean(dim=0)[rows, cls].float()

    if not is_tde:
        return DetectionCams(plain=cams[0], plain_scores=score(plain_p))
    return DetectionCams(plain=cams[0], plain_scores=score(plain_p), tde=cams[1], tde_scores=score(tde_p), alpha=alpha)
