"""α sweep in one inference pass, and the authors' α heuristic (issue 4).

TDE logits are linear in α (DESIGN.md §3): ``TDE(y) = y − α·b``. So backbone, RPN and box head
run ONCE per batch, keeping per region and cascade stage only ``(y, b)``, both [R, C+1] (from
``TDEFastRCNNOutputLayers.forward_with_counterfactual``), and the α-independent boxes of the last
stage. Then for every α:

    probs_α  = tde_probs(y, b, α)                 per stage (§4; α = 0 is softmax(y) = "plain")
    scores_α = Σ_stages probs_α / num_stages      (cascade only: as Detectron2's CascadeROIHeads)
    dets_α   = fast_rcnn_inference(boxes, scores_α, …)   (Detectron2's threshold / NMS / top-k; all α
                                                         at once, same result: :mod:`.box_inference`)

A detection is a (region, class) pair: its box and its mask do not depend on α. The mask head
(``roi_heads.forward_with_given_boxes``) therefore runs once per batch on the UNION of all α's
detections (in chunks of ``MASK_HEAD_CHUNK``) and each α takes its rows; the union's masks are
pasted once (``detector_postprocess`` with :mod:`.mask_paste`), or per α when they would not fit
``PASTE_BUDGET_BYTES``, so memory stays bounded by one batch. Across the dataset only what the
evaluators keep (the detections) grows.

``"plain"`` (``MODEL.TDE.INFERENCE plain``, the De-confound row) is softmax(y), i.e. α = 0: it is
always computed and shares its detections with an α = 0 row.

NorCal (issue 22, :mod:`tde_det.modeling.calibration`) is scored in the same pass: for each γ in
``gammas``, probs_γ = softmax([y_fg − γ·log N, y_bg]) per stage (row ``"norcal_gamma=0.5"``; γ = 0 is
``plain``). It needs only softmax logits, so the sweep also runs Detectron2's softmax ROI heads
(``FastRCNNOutputLayers``), with NorCal rows only (no α > 0).

The authors' heuristic (their README): choose α with α · mean cos(x, d̂) ≈ 1. ``mean cos`` is the
mean of cos(x^k, d̂^k) over every region the box predictor scores (all proposals of all evaluated
images) and all K heads; for a cascade the mean of the per-stage means (the stages' scores are
averaged). α_heuristic = 1 / mean cos.

Works for Standard and Cascade ROI heads in a ``GeneralizedRCNN`` whose box predictors are all
``TDEFastRCNNOutputLayers`` (α and γ rows) or all Detectron2's softmax ``FastRCNNOutputLayers`` (γ
rows). The model's own ``MODEL.TDE.ALPHA`` / ``INFERENCE`` and ``MODEL.NORCAL`` are ignored (every
setting is computed from the raw logits); ``BACKGROUND_EXEMPT`` and the test thresholds are the model's.
"""

import datetime
import logging
import math
import time
from collections import OrderedDict
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Sequence

import torch
from detectron2.evaluation import inference_context
from detectron2.modeling.roi_heads import CascadeROIHeads, FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from detectron2.utils.logger import log_every_n_seconds
from torch import nn

from ..errors import ConfigError
from ..modeling.box_predictor import TDEFastRCNNOutputLayers
from ..modeling.calibration import check_norcal, norcal_logits
from ..modeling.cosine_classifier import plain_probs, tde_probs
from ..modeling.roi_heads import box_stages
from .box_inference import fast_rcnn_inference_many
from .mask_paste import batched_mask_paste

__all__ = [
    "PLAIN",
    "AlphaSweep",
    "SweepBatch",
    "SweepResult",
    "SweepStatistics",
    "best_per_metric",
    "check_alphas",
    "check_gammas",
    "gamma_setting_name",
    "format_sweep_table",
    "inference_on_dataset_alphas",
    "metric_rows",
    "setting_name",
]

logger = logging.getLogger(__name__)

PLAIN = "plain"
# Largest size (bytes, one byte per pixel) of a batch's union of pasted masks before the sweep
# falls back to pasting each α's masks separately.
PASTE_BUDGET_BYTES = 1 << 30
# The mask / keypoint head runs on at most this many detections at a time, so its activations
# (the class-specific mask logits [n, C, 28, 28]: 3.8 MB per detection with LVIS's 1,203 classes)
# are bounded by the chunk, not by the union of all α's detections. Same outputs bit for bit;
# speed on CPU unchanged within noise (chunks of 50-150 vs none, demo model).
MASK_HEAD_CHUNK = 100
# Columns of the sweep table: (title, task, LVIS metric); AP* from masks when the model has them.
METRICS = (("AP", None, "AP"), ("AP50", None, "AP50"), ("APr", None, "APr"), ("APc", None, "APc"),
           ("APf", None, "APf"), ("APbox", "bbox", "AP"))
# Added to the rows and the table when the evaluator reports Fixed AP (TEST.LVIS_EVAL.FIXED_AP).
FIXED_METRICS = (("AP_fixed", None, "AP_fixed"), ("APr_fixed", None, "APr_fixed"), ("APbox_fixed", "bbox", "AP_fixed"))


def setting_name(alpha: Optional[float]) -> str:
    """Row name: ``"plain"`` for None, else ``"alpha=1.5"``."""
    return PLAIN if alpha is None else f"alpha={alpha:g}"


def gamma_setting_name(gamma: float) -> str:
    """Row name of NorCal at γ: ``"norcal_gamma=0.5"``."""
    return f"norcal_gamma={gamma:g}"


def _key(setting) -> str:
    """The internal key of a setting: a row name (str) as it is, α (None / number) -> ``"plain"`` for
    None or 0, else ``"alpha=<α>"``."""
    if isinstance(setting, str):
        return setting
    return PLAIN if setting is None or float(setting) == 0.0 else setting_name(float(setting))


def _check_values(values, name: str, meaning: str) -> List[float]:
    """`values` as floats; ConfigError for non-numbers, NaN/inf, values < 0 and duplicates."""
    out = []
    for a in values:
        try:
            v = float(a)
        except (TypeError, ValueError):
            raise ConfigError(f"{name} values must be numbers, got {a!r}.") from None
        if not math.isfinite(v) or v < 0:
            raise ConfigError(f"{name} values must be finite and >= 0 ({meaning}), got {a!r}.")
        if v in out:
            raise ConfigError(f"{name} {v:g} is listed twice in {list(values)}; give each value once.")
        out.append(v)
    return out


def check_alphas(alphas: Sequence[float]) -> List[float]:
    """The α values as floats; errors for an empty list, non-numbers, NaN/inf, α < 0, duplicates."""
    if alphas is None or len(alphas) == 0:
        raise ConfigError("Give at least one alpha to sweep, e.g. --alphas 0 0.5 1 1.5 2 2.5 3.")
    return _check_values(alphas, "alpha", "TDE(y) = y - alpha*b")


def check_gammas(gammas: Sequence[float]) -> List[float]:
    """The NorCal γ values as floats (may be empty); errors as :func:`check_alphas`."""
    return _check_values(gammas or (), "gamma", "NorCal; 0 = softmax")


def _sweep_predictors(model, alphas, gammas) -> List[FastRCNNOutputLayers]:
    """The box predictor of each stage; clear errors for models the sweep cannot run. α > 0 needs
    TDE predictors; a softmax model takes NorCal γ values only."""
    predictors = box_stages(model, "The alpha sweep")[3]
    heads = model.roi_heads
    tde = [isinstance(p, TDEFastRCNNOutputLayers) for p in predictors]
    if not all(tde):
        if any(tde) or not all(isinstance(p, FastRCNNOutputLayers) for p in predictors):
            raise ConfigError(
                f"The sweep needs box predictors that are all TDEFastRCNNOutputLayers or all Detectron2's "
                f"FastRCNNOutputLayers; this model's {type(heads).__name__} has "
                f"{[type(p).__name__ for p in predictors]}."
            )
        if any(a > 0 for a in alphas):
            raise ConfigError(
                f"TDE alpha values need De-confound-TDE ROI heads (MODEL.ROI_HEADS.NAME TDEStandardROIHeads or "
                f"TDECascadeROIHeads); this model has {type(heads).__name__} with softmax box predictors, for "
                "which the sweep scores plain and NorCal only: leave out --alphas and give --gammas (e.g. 0.25 0.5 1)."
            )
    for k, p in enumerate(predictors):
        # The sweep scores with softmax (plain) and the §4 rule (α > 0); a sigmoid-CE predictor's own
        # plain scores are per-class sigmoids and it refuses TDE, so no row would be the model's.
        if getattr(p, "use_sigmoid_ce", False):
            raise ConfigError(
                f"Box predictor {k} uses sigmoid cross-entropy (MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE True): "
                "De-confound-TDE, hence every alpha of the sweep, is defined for the softmax classifier only. "
                "Evaluate this model's plain scores with tools/train_net.py --eval-only, or train with "
                "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE False to use TDE."
            )
        if tde[k] and any(a > 0 for a in alphas) and not p.cls_score.has_mean:
            raise ConfigError(
                f"The moving-average feature of box predictor {k} is all zero, so TDE is inactive and every "
                "alpha would give the plain scores. Load trained TDE weights (MODEL.WEIGHTS path/to/model.pth)."
            )
    return predictors


# ----------------------------------------------------------------------------- statistics
class SweepStatistics:
    """What the sweep measures besides detections, summed over regions (and over processes by :meth:`merged`).

    - ``cos_sum[s]``: Σ over regions and heads of cos(x^k, d̂^k) at stage s; ``num_regions``: regions
      scored per stage (the same for every stage); K = ``num_heads[s]``.
    - ``top1[v]`` [C]: per class, the number of foreground regions whose top-1 foreground class under
      the setting ``values[v]`` (a row name: "plain", "alpha=1.5", "norcal_gamma=0.5") is that class. A region is foreground when its plain background probability
      (cascade: averaged over stages) is < 0.5 -- with background exemption that is also its TDE
      background score, so plain and TDE are compared on the same regions.
    """

    def __init__(self, values, num_classes, num_heads):
        self.values = list(values)
        self.num_heads = list(num_heads)
        self.cos_sum = torch.zeros(len(num_heads), dtype=torch.float64)
        self.num_regions = 0
        self.num_fg_regions = 0
        self.num_detections = 0  # detections of all α values (with a mask / keypoint head)
        self.num_union_detections = 0  # distinct (region, class) among them: what the mask head ran on
        self.top1 = torch.zeros(len(self.values), num_classes, dtype=torch.int64)

    def merged(self) -> "SweepStatistics":
        """The sums over all processes (every process must call this)."""
        if comm.get_world_size() == 1:
            return self
        out = SweepStatistics(self.values, self.top1.shape[1], self.num_heads)
        fields = ("cos_sum", "num_regions", "num_fg_regions", "num_detections", "num_union_detections", "top1")
        for part in comm.all_gather([getattr(self, f) for f in fields]):
            for f, value in zip(fields, part):
                setattr(out, f, getattr(out, f) + value)
        return out

    @property
    def mean_cos_per_stage(self) -> List[float]:
        """mean cos(x^k, d̂^k) over regions and heads, one per stage (NaN before any region)."""
        return [
            float(s) / (self.num_regions * k) if self.num_regions else float("nan")
            for s, k in zip(self.cos_sum.tolist(), self.num_heads)
        ]

    @property
    def mean_cos(self) -> float:
        """The mean over stages of :attr:`mean_cos_per_stage`."""
        per_stage = self.mean_cos_per_stage
        return sum(per_stage) / len(per_stage) if per_stage else float("nan")  # NaN: softmax model

    @property
    def heuristic_alpha(self) -> float:
        """The authors' α: α · mean cos = 1, i.e. 1 / mean cos (inf if mean cos <= 0, NaN if unmeasured)."""
        m = self.mean_cos
        if math.isnan(m):
            return float("nan")
        return 1.0 / m if m > 0 else float("inf")

    def top1_counts(self, setting) -> List[int]:
        """Per-class top-1 foreground-region counts for a setting: α (None or 0 = plain) or a row name."""
        return self.top1[self.values.index(_key(setting))].tolist()


# ----------------------------------------------------------------------------- per batch
class SweepBatch:
    """Detections of one batch for every setting; :meth:`outputs` post-processes one on demand.

    Settings are keyed by row name ("plain", "alpha=1.5", "norcal_gamma=0.5"). ``instances[α]``: per-image Instances (pred_boxes, scores, pred_classes) at the network's input
    resolution, as ``fast_rcnn_inference`` returns them. With a mask / keypoint head, ``unions``
    holds per image every (region, class) detection of any α once, with the head's outputs, and
    ``rows[α][i]`` the union row of each detection of α. The union is post-processed (masks pasted
    at image resolution by ``model._postprocess``) ONCE, on the first :meth:`outputs` call, and
    every α takes its rows -- unless the pasted masks would exceed ``paste_budget`` bytes, then
    each α is post-processed on its own (same result, less memory, more time).
    """

    def __init__(self, model, batched_inputs, image_sizes, instances, unions=None, rows=None,
                 paste_budget=PASTE_BUDGET_BYTES):  # fmt: skip
        self._model = model
        self._inputs = batched_inputs
        self._image_sizes = image_sizes
        self.instances = instances
        self.unions = unions
        self.rows = rows
        self._paste_budget = paste_budget
        self._post = None  # post-processed unions, computed on first use

    def _pasted_bytes(self):
        return sum(
            len(u) * int(x.get("height", s[0])) * int(x.get("width", s[1]))
            for u, x, s in zip(self.unions, self._inputs, self._image_sizes)
        )

    def outputs(self, alpha) -> List[dict]:
        """``model(batched_inputs)``'s output for α (None = plain) or a setting's row name:
        ``[{"instances": Instances}]``."""
        alpha = _key(alpha)
        if self.unions is None or self._pasted_bytes() > self._paste_budget:
            per_image = []
            for i, inst in enumerate(self.instances[alpha]):
                x = Instances(inst.image_size)  # detector_postprocess scales boxes in place: copy them
                for name, value in inst.get_fields().items():
                    x.set(name, value.clone() if isinstance(value, Boxes) else value)
                if self.unions is not None:
                    for name, value in self.unions[i].get_fields().items():
                        if not x.has(name):
                            x.set(name, value[self.rows[alpha][i]])
                per_image.append(x)
            with batched_mask_paste():
                return self._model._postprocess(per_image, self._inputs, self._image_sizes)
        if self._post is None:
            unions = []
            for u in self.unions:
                u = Instances(u.image_size, **u.get_fields())
                u.union_row = torch.arange(len(u), device=u.pred_classes.device)
                unions.append(u)
            with batched_mask_paste():
                post = self._model._postprocess(unions, self._inputs, self._image_sizes)
            self._post = [o["instances"] for o in post]
        out = []
        for inst, union, post, rows in zip(self.instances[alpha], self.unions, self._post, self.rows[alpha]):
            # detector_postprocess drops empty boxes: map union rows to rows of the post-processed union.
            where = torch.full((len(union),), -1, dtype=torch.long, device=rows.device)
            where[post.union_row] = torch.arange(len(post), device=rows.device)
            idx = where[rows]
            keep = idx >= 0
            picked = post[idx[keep]]
            res = Instances(post.image_size)  # fields in detector_postprocess's order
            res.pred_boxes = picked.pred_boxes
            res.scores = inst.scores[keep]
            res.pred_classes = picked.pred_classes
            for name, value in picked.get_fields().items():
                if not res.has(name) and name != "union_row":
                    res.set(name, value)
            out.append({"instances": res})
        return out


class AlphaSweep:
    """Runs a TDE ``GeneralizedRCNN`` once per batch and returns its detections for every α.

    ``sweep(batched_inputs)`` -> :class:`SweepBatch`; ``sweep.stats`` accumulates the measured
    cos (TDE models) and the top-1 class counts. Settings (``values``, row names): "plain", α in
    `alphas` (> 0; TDE models) and NorCal γ in `gammas` (> 0; needs `class_counts` [C] > 0). Call
    under ``torch.no_grad()`` with the model in eval mode (:func:`inference_on_dataset_alphas` does).
    """

    def __init__(self, model, alphas: Sequence[float], paste_budget: int = PASTE_BUDGET_BYTES,
                 gammas: Sequence[float] = (), class_counts=None):  # fmt: skip
        self.model = box_stages(model, "The alpha sweep")[0]
        self.paste_budget = paste_budget
        self.alphas = check_alphas(alphas) if len(alphas) else []  # []: plain only (a softmax model has no α)
        self.gammas = check_gammas(gammas)
        self.predictors = _sweep_predictors(self.model, self.alphas, self.gammas)
        self.is_tde = isinstance(self.predictors[0], TDEFastRCNNOutputLayers)
        heads = self.model.roi_heads
        self.log_counts = None
        if self.gammas:
            if class_counts is None:
                raise ConfigError("NorCal gamma values need the class training counts (class_counts).")
            self.log_counts = check_norcal(class_counts, 0.0, heads.num_classes)[0].log()
        self.settings = OrderedDict([(PLAIN, ("alpha", 0.0))])
        self.settings.update((setting_name(a), ("alpha", a)) for a in self.alphas if a != 0.0)
        self.settings.update((gamma_setting_name(g), ("gamma", g)) for g in self.gammas if g != 0.0)
        self.values = list(self.settings)
        num_heads = [p.cls_score.num_heads for p in self.predictors] if self.is_tde else []
        self.stats = SweepStatistics(self.values, heads.num_classes, num_heads)

    # -- the α-independent part: proposals, every stage's predictions, the final boxes
    def _proposals(self, images, features, batched_inputs):
        if self.model.proposal_generator is not None:
            return self.model.proposal_generator(images, features, None)[0]
        return [x["proposals"].to(self.model.device) for x in batched_inputs]

    def _box_stages(self, features, proposals):
        """[(predictor, (y, b), box features x, proposals)] per stage and the last stage's boxes [R_i, C*4].

        Each stage's predictor runs once: TDE through ``forward_with_counterfactual`` (y, b and the
        deltas); softmax through ``forward`` (raw logits, b = None; not ``__call__``, so a NorCal
        hook of the model is not applied on top of the sweep's own).
        """
        heads = self.model.roi_heads
        box_features = [features[f] for f in heads.box_in_features]
        cascade = isinstance(heads, CascadeROIHeads)
        stages, boxes = [], None
        image_sizes = [p.image_size for p in proposals]
        # As Standard/CascadeROIHeads._forward_box at test time (the refinement never depends on the scores).
        for k in range(heads.num_cascade_stages if cascade else 1):
            if k > 0:
                proposals = heads._create_proposals_from_boxes(boxes, image_sizes)
            if cascade:
                box_head, predictor = heads.box_head[k], heads.box_predictor[k]
            else:
                box_head, predictor = heads.box_head, heads.box_predictor
            x = box_head(heads.box_pooler(box_features, [p.proposal_boxes for p in proposals]))
            if self.is_tde:
                predictions, b = predictor.forward_with_counterfactual(x)
            else:
                predictions, b = predictor.forward(x), None
            boxes = predictor.predict_boxes(predictions, proposals)
            stages.append((predictor, (predictions[0], b), x, proposals))
        return stages, boxes

    # -- the α-dependent part
    def _scores(self, terms, key, counts):
        """Per-image scores [R_i, C+1] for a setting, exactly as the ROI heads' inference computes them."""
        kind, value = self.settings[key]
        per_stage = []
        for predictor, (y, b) in zip(self.predictors, terms):
            # The model's own eval scores (fp32): softmax of its test-time logits for this setting.
            if kind == "gamma":  # NorCal: what apply_norcal's logits give under predict_probs
                probs = torch.softmax(norcal_logits(y, self.log_counts, value), dim=-1)
            elif value == 0.0:  # TDE inactive: Detectron2's softmax (FastRCNNOutputLayers.predict_probs)
                probs = plain_probs(y)
            else:
                probs = tde_probs(y, b, value, predictor.background_exempt)
            per_stage.append(probs.split(counts, dim=0))
        if not isinstance(self.model.roi_heads, CascadeROIHeads):
            return list(per_stage[0])
        n = self.model.roi_heads.num_cascade_stages
        return [sum(list(scores_per_image)) * (1.0 / n) for scores_per_image in zip(*per_stage)]

    def _count_top1(self, scores_by_value):
        plain = torch.cat(scores_by_value[PLAIN])
        fg = plain[:, -1] < 0.5
        self.stats.num_fg_regions += int(fg.sum())
        num_classes = self.stats.top1.shape[1]
        for v, value in enumerate(self.values):
            s = torch.cat(scores_by_value[value])[fg, :-1]
            self.stats.top1[v] += torch.bincount(s.argmax(dim=1), minlength=num_classes).cpu()

    def _union_head_outputs(self, features, dets, kept):
        """Run the mask (and keypoint) head once on the union of all α's detections of each image
        (at most ``MASK_HEAD_CHUNK`` detections per call).

        dets / kept: α -> per-image Instances / region indices from ``fast_rcnn_inference``. A
        detection is the pair (region, class): its box and head outputs do not depend on α.
        Returns (unions: per-image Instances with the head's outputs, rows: α -> per-image union
        row of each detection), or (None, None) for a model without mask / keypoint head.
        """
        heads = self.model.roi_heads
        if not (getattr(heads, "mask_on", False) or getattr(heads, "keypoint_on", False)):
            return None, None
        unions, rows = [], {v: [] for v in self.values}
        for i in range(len(kept[PLAIN])):
            cat = Instances.cat([dets[v][i] for v in self.values])
            keys = torch.cat([kept[v][i] for v in self.values]) * (heads.num_classes + 1) + cat.pred_classes
            uniq, inverse = torch.unique(keys, return_inverse=True)
            first = torch.full((len(uniq),), len(keys), dtype=torch.long, device=keys.device)
            first.scatter_reduce_(0, inverse, torch.arange(len(keys), device=keys.device), reduce="amin")
            union = Instances(cat.image_size)
            union.pred_boxes = cat.pred_boxes[first]
            union.pred_classes = cat.pred_classes[first]
            unions.append(union)
            start = 0
            for v in self.values:
                rows[v].append(inverse[start : start + len(dets[v][i])])
                start += len(dets[v][i])
        self.stats.num_detections += sum(len(dets[v][i]) for v in self.values for i in range(len(unions)))
        self.stats.num_union_detections += sum(len(u) for u in unions)
        chunk = MASK_HEAD_CHUNK
        if all(len(u) <= chunk for u in unions):
            return heads.forward_with_given_boxes(features, unions), rows
        outputs = []
        for i, union in enumerate(unions):
            image_features = {name: f[i : i + 1] for name, f in features.items()}
            parts = [heads.forward_with_given_boxes(image_features, [union[s : s + chunk]])[0]
                     for s in range(0, max(len(union), 1), chunk)]  # fmt: skip
            outputs.append(Instances.cat(parts))
        return outputs, rows

    def __call__(self, batched_inputs) -> SweepBatch:
        images = self.model.preprocess_image(batched_inputs)
        features = self.model.backbone(images.tensor)
        proposals = self._proposals(images, features, batched_inputs)
        stages, boxes = self._box_stages(features, proposals)
        final = stages[-1][3]
        counts = [len(p) for p in final]
        image_sizes = [p.image_size for p in final]

        terms = []
        for s, (predictor, (y, b), x, _) in enumerate(stages):
            terms.append((y, b))
            if self.is_tde:
                self.stats.cos_sum[s] += predictor.cls_score.mean_cosine(x.flatten(1)).double().sum().cpu()
        self.stats.num_regions += sum(counts)
        del stages

        last = self.predictors[-1]
        scores_by_value = {value: self._scores(terms, value, counts) for value in self.values}
        dets, kept = {value: [] for value in self.values}, {value: [] for value in self.values}
        for i, (b, size) in enumerate(zip(boxes, image_sizes)):
            per_value = fast_rcnn_inference_many(
                b, [scores_by_value[value][i] for value in self.values], size,
                last.test_score_thresh, last.test_nms_thresh, last.test_topk_per_image,
            )  # fmt: skip
            for value, (result, rows) in zip(self.values, per_value):
                dets[value].append(result)
                kept[value].append(rows)
        self._count_top1(scores_by_value)
        del scores_by_value, terms
        unions, rows = self._union_head_outputs(features, dets, kept)
        return SweepBatch(self.model, batched_inputs, images.image_sizes, dets, unions, rows, self.paste_budget)


# ----------------------------------------------------------------------------- over a dataset
@dataclass
class SweepResult:
    """What :func:`inference_on_dataset_alphas` returns (``results`` only filled on the main process)."""

    alphas: List[float]
    results: "OrderedDict[str, dict]"  # row name ("plain", "alpha=1.5", "norcal_gamma=0.5") -> evaluator results
    stats: SweepStatistics
    timing: Dict[str, float] = field(default_factory=dict)
    gammas: List[float] = field(default_factory=list)

    @property
    def mean_cos(self) -> float:
        return self.stats.mean_cos

    @property
    def heuristic_alpha(self) -> float:
        return self.stats.heuristic_alpha

    def rows(self) -> List[dict]:
        """:func:`metric_rows` of the results."""
        return metric_rows(self.results, self.alphas, self.gammas)

    def to_json(self) -> dict:
        rows = self.rows()
        return {
            "alphas": self.alphas,
            "gammas": self.gammas,
            "rows": rows,
            "best": best_per_metric(rows),
            "mean_cos": self.mean_cos,
            "mean_cos_per_stage": self.stats.mean_cos_per_stage,
            "heuristic_alpha": self.heuristic_alpha,
            "num_regions": self.stats.num_regions,
            "num_fg_regions": self.stats.num_fg_regions,
            "num_detections_all_alphas": self.stats.num_detections,
            "num_mask_head_detections": self.stats.num_union_detections,
            "timing_s": self.timing,
            "results": self.results,
        }


def _sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def inference_on_dataset_alphas(
    model,
    data_loader,
    alphas: Sequence[float],
    build_evaluator: Optional[Callable[[str], object]] = None,
    gammas: Sequence[float] = (),
    class_counts=None,
) -> SweepResult:
    """Detectron2's ``inference_on_dataset`` for every α (and NorCal γ) at once (model run once per batch).

    Args:
        model: a ``GeneralizedRCNN`` with TDE ROI heads, or softmax ROI heads with `gammas` only
            (set to eval mode for the run).
        data_loader: an iterable of batched inputs (e.g. ``build_detection_test_loader``; under
            ``launch`` each process gets its shard).
        alphas: the α values (>= 0; may be empty: plain only); the ``plain`` row (α = 0) is always added.
        build_evaluator: ``setting name -> DatasetEvaluator`` (or None): one evaluator per distinct
            setting ("plain" also serves α = 0 and γ = 0 rows). None: no evaluation (benchmarks).
        gammas, class_counts: NorCal γ values (>= 0) and the class training counts [C] they need.

    Returns:
        :class:`SweepResult` with rows "plain", then ``setting_name(α)`` in the order given, then
        ``gamma_setting_name(γ)``. As in
        Detectron2, each evaluator's ``evaluate()`` gathers the detections on the main process;
        other processes get empty results. ``stats`` are summed over all processes. ``timing``:
        ``inference`` (model + post-processing of every α, like inference_on_dataset's compute
        time), ``evaluator_process`` and ``evaluate`` seconds on this process.
    """
    sweep = AlphaSweep(model, alphas, gammas=gammas, class_counts=class_counts)
    evaluators = OrderedDict()
    if build_evaluator is not None:
        for key in sweep.values:
            evaluators[key] = build_evaluator(key)
            evaluators[key].reset()
    total = len(data_loader) if hasattr(data_loader, "__len__") else None
    logger.info("Alpha sweep: plain + alpha in %s + NorCal gamma in %s, %s batches", sweep.alphas, sweep.gammas,
                total if total is not None else "?")
    timing = {"inference": 0.0, "evaluator_process": 0.0}
    start = time.perf_counter()
    with ExitStack() as stack:
        if isinstance(model, nn.Module):
            stack.enter_context(inference_context(model))
        stack.enter_context(torch.no_grad())
        for idx, inputs in enumerate(data_loader):
            t0 = time.perf_counter()
            batch = sweep(inputs)
            _sync()
            timing["inference"] += time.perf_counter() - t0
            for value, evaluator in evaluators.items():
                t0 = time.perf_counter()
                outputs = batch.outputs(value)
                _sync()
                t1 = time.perf_counter()
                evaluator.process(inputs, outputs)
                timing["evaluator_process"] += time.perf_counter() - t1
                timing["inference"] += t1 - t0
            del batch
            if total:
                per_iter = (time.perf_counter() - start) / (idx + 1)
                log_every_n_seconds(
                    logging.INFO,
                    f"Alpha sweep: {idx + 1}/{total} batches, {per_iter:.4f} s/batch, "
                    f"ETA={datetime.timedelta(seconds=int(per_iter * (total - idx - 1)))}",
                    n=5,
                )
    t0 = time.perf_counter()
    by_value = OrderedDict((value, e.evaluate() or {}) for value, e in evaluators.items())
    timing["evaluate"] = time.perf_counter() - t0
    stats = sweep.stats.merged()
    results = OrderedDict()
    if comm.is_main_process() and evaluators:
        results[PLAIN] = by_value[PLAIN]
        for a in sweep.alphas:
            results[setting_name(a)] = by_value[_key(a)]
        for g in sweep.gammas:
            results[gamma_setting_name(g)] = by_value[PLAIN if g == 0.0 else gamma_setting_name(g)]
    logger.info(
        "Alpha sweep done: inference %.1f s (all alphas), evaluator.process %.1f s, evaluate %.1f s; "
        "mean cos(x, d_hat) = %.4f -> heuristic alpha = 1 / mean cos = %.3f",
        timing["inference"], timing["evaluator_process"], timing["evaluate"], stats.mean_cos, stats.heuristic_alpha,
    )
    return SweepResult(sweep.alphas, results, stats, timing, sweep.gammas)


# ----------------------------------------------------------------------------- reporting
def _metric(results, task, name):
    if task is None:
        task = "segm" if "segm" in results else "bbox"
    value = results.get(task, {}).get(name)
    if value is None or (isinstance(value, float) and math.isnan(value)) or value < 0:
        return None  # LVIS: -1 = no category of that group in the split
    return float(value)


def metric_rows(results: "OrderedDict[str, dict]", alphas: Sequence[float], gammas: Sequence[float] = ()) -> List[dict]:
    """One dict per row: ``{"setting", "alpha" (None for plain and NorCal rows), "gamma" (NorCal's γ,
    else None), "AP", "AP50", "APr", "APc", "APf", "APbox"}``.

    AP..APf are mask AP when the results have "segm", else box AP; values as the evaluator
    reports them (Detectron2: percent), None where undefined.
    """
    alpha_of = {PLAIN: None, **{setting_name(a): float(a) for a in alphas}}
    gamma_of = {gamma_setting_name(g): float(g) for g in gammas}
    rows = []
    for name, res in results.items():
        row = {"setting": name, "alpha": alpha_of.get(name), "gamma": gamma_of.get(name)}
        row.update((title, _metric(res or {}, task, key)) for title, task, key in METRICS)
        row.update(
            (title, _metric(res or {}, task, key)) for title, task, key in FIXED_METRICS
            if any(key in (res or {}).get(t, {}) for t in ("bbox", "segm"))
        )
        rows.append(row)
    return rows


def best_per_metric(rows: List[dict]) -> Dict[str, dict]:
    """Per metric, the row with the highest value (first one on ties): ``{metric: {"setting", "alpha", "value"}}``."""
    best = {}
    for title, _, _ in METRICS + FIXED_METRICS:
        scored = [r for r in rows if r.get(title) is not None]
        if scored:
            top = max(scored, key=lambda r: r[title])
            best[title] = {"setting": top["setting"], "alpha": top["alpha"], "value": top[title]}
    return best


def format_sweep_table(rows: List[dict], mean_cos: Optional[float] = None, heuristic_alpha=None) -> str:
    """A Markdown table α × metrics (best value of each column in bold), the best α per metric and
    the heuristic α."""
    best = best_per_metric(rows)
    titles = [t for t, _, _ in METRICS + FIXED_METRICS if any(t in r for r in rows)]
    header = "| setting | " + " | ".join(titles) + " |"
    lines = [header, "|---|" + "|".join("---:" for _ in titles) + "|"]
    for r in rows:
        cells = []
        for t in titles:
            v = r.get(t)
            cell = "-" if v is None else f"{v:.1f}"
            if v is not None and best.get(t, {}).get("setting") == r["setting"]:
                cell = f"**{cell}**"
            cells.append(cell)
        label = r["setting"] + (" (= plain)" if r["alpha"] == 0.0 or r.get("gamma") == 0.0 else "")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Best per metric: " + ", ".join(f"{t} {b['setting']} ({b['value']:.1f})" for t, b in best.items()))
    if mean_cos is not None and math.isfinite(mean_cos):  # NaN: a softmax model (no x̄)
        lines.append(
            f"Heuristic (alpha * mean cos(x, d_hat) = 1): mean cos = {mean_cos:.4f} -> alpha = {heuristic_alpha:.3f}"
        )
    return "\n".join(lines)
