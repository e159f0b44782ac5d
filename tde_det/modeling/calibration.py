"""NorCal post-hoc calibration (Pan et al., NeurIPS 2021), in plain torch.

With C foreground classes, background LAST (Detectron2's convention), class training counts N_c > 0
(NorCal's default: the number of training images holding class c) and softmax logits z [R, C+1]:

    s_c  = exp(z_c) / N_c^γ   (c < C),   s_bg = exp(z_bg),   probs = s / Σ s
         = softmax([z_fg − γ·log N, z_bg])                                   ("exps", renormalised)

γ = 0 is the plain softmax. Like TDE's §4 scores it leaves the background alone; its foreground
shift is a constant per class (TDE's, α·cos(x, d̂)·⟨ŵ_c, d̂⟩ per head, depends on the region). It
needs no retraining: it applies to any softmax box classifier (Detectron2's, or the TDE heads'
plain cosine logits) at test time: :func:`apply_norcal`.
"""

import math

import torch
import torch.nn.functional as F

from ..errors import ConfigError

__all__ = ["apply_norcal", "check_norcal", "norcal_logits", "norcal_probs"]


def check_norcal(class_counts, gamma, num_classes=None):
    """`class_counts` as a float tensor [C] and `gamma` as a float; ConfigError unless every count is
    a finite number > 0, γ a finite number >= 0 and (if given) C == `num_classes`."""
    if not (isinstance(gamma, (int, float)) and not isinstance(gamma, bool) and math.isfinite(gamma) and gamma >= 0):
        raise ConfigError(f"NorCal gamma={gamma!r} (MODEL.NORCAL.GAMMA) must be a finite number >= 0 (0 = softmax).")
    counts = torch.as_tensor(class_counts, dtype=torch.float64)
    if counts.dim() != 1 or counts.numel() == 0:
        raise ConfigError(f"NorCal class counts must be a list of C numbers, got shape {tuple(counts.shape)}.")
    if num_classes is not None and counts.numel() != num_classes:
        raise ConfigError(
            f"NorCal has {counts.numel()} class counts but the model has {num_classes} classes "
            "(MODEL.ROI_HEADS.NUM_CLASSES): give one training count per foreground class."
        )
    bad = [i for i, n in enumerate(counts.tolist()) if not (math.isfinite(n) and n > 0)]
    if bad:
        raise ConfigError(
            f"NorCal needs a training count > 0 for every class; class index(es) {bad[:5]}"
            f"{' ...' if len(bad) > 5 else ''} have {[counts[i].item() for i in bad[:5]]}. A class never seen "
            "in training cannot be calibrated: fix the counts (MODEL.NORCAL.CLASS_COUNTS) or the training set."
        )
    return counts.float(), float(gamma)


def norcal_logits(logits: torch.Tensor, log_counts: torch.Tensor, gamma: float) -> torch.Tensor:
    """Logits [R, C+1] (at least fp32) whose softmax is the NorCal score: [z_fg − γ·log N, z_bg].

    logits: [R, C+1], background last; log_counts: [C] = log N_c. γ = 0 returns the logits (fp32).
    """
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    shift = (gamma * log_counts.to(device=z.device, dtype=z.dtype)).unsqueeze(0)
    return torch.cat([z[:, :-1] - shift, z[:, -1:]], dim=1)


def norcal_probs(logits: torch.Tensor, class_counts, gamma: float) -> torch.Tensor:
    """NorCal probabilities [R, C+1] = softmax([z_fg − γ·log N, z_bg]) from logits [R, C+1]
    (background last) and class counts [C] > 0; γ >= 0, and γ = 0 is exactly ``softmax(logits)``."""
    counts, gamma = check_norcal(class_counts, gamma)
    if logits.dim() != 2 or logits.shape[1] != counts.numel() + 1:
        raise ValueError(
            f"logits must be [R, C+1] = [R, {counts.numel() + 1}] for {counts.numel()} class counts, "
            f"got {tuple(logits.shape)}."
        )
    return F.softmax(norcal_logits(logits, counts.log(), gamma), dim=-1)


class _NorCalHook:
    """Forward hook of a box predictor: in eval mode its class logits z [R, C+1] become
    :func:`norcal_logits` (so Detectron2's ``predict_probs`` softmax gives the NorCal scores)."""

    def __init__(self, log_counts, gamma):
        self.log_counts, self.gamma = log_counts, gamma

    def __call__(self, module, inputs, output):
        if module.training:
            return None
        if getattr(module, "inference_mode", "plain") != "plain":
            raise RuntimeError(
                f"NorCal calibrates plain softmax logits, but this TDE predictor scores with inference "
                f"{module.inference_mode!r}: set MODEL.TDE.INFERENCE plain, or MODEL.NORCAL.GAMMA 0."
            )
        scores, deltas = output
        return norcal_logits(scores, self.log_counts, self.gamma), deltas


def apply_norcal(model, class_counts, gamma: float):
    """Calibrate the test-time class scores of a ``GeneralizedRCNN``'s softmax box predictor(s) (every
    cascade stage) with NorCal; γ = 0 removes it. In place, nothing saved in checkpoints; training
    is unaffected. Returns `model`.

    Works on Detectron2's ``FastRCNNOutputLayers`` and on TDE predictors with ``MODEL.TDE.INFERENCE
    plain``; a ConfigError for sigmoid-CE predictors, TDE scoring, or counts of the wrong length.
    """
    from .roi_heads import box_stages

    _, heads, _, predictors = box_stages(model, "NorCal (MODEL.NORCAL)")
    counts, gamma = check_norcal(class_counts, gamma, heads.num_classes)
    for k, p in enumerate(predictors):
        if getattr(p, "use_sigmoid_ce", False):
            raise ConfigError(f"Box predictor {k} uses sigmoid cross-entropy; NorCal calibrates softmax scores "
                              "(MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE False).")
        if getattr(p, "inference_mode", "plain") != "plain":
            raise ConfigError(
                f"NorCal calibrates the plain logits, but box predictor {k} scores with MODEL.TDE.INFERENCE "
                f"{p.inference_mode!r}: set MODEL.TDE.INFERENCE plain (and TEST.TDE_EVAL_PLAIN False), or "
                "compare NorCal and TDE in one pass with tools/sweep_alpha.py --gammas."
            )
    for p in predictors:
        handle = getattr(p, "_norcal_handle", None)
        if handle is not None:
            handle.remove()
            p._norcal_handle = None
        if gamma > 0:
            p._norcal_handle = p.register_forward_hook(_NorCalHook(counts.log(), gamma))
    return model
