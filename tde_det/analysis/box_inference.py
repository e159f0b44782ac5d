"""Detectron2's per-image box inference for many score sets at once, with the same results (α sweep).

The sweep needs Detectron2's ``fast_rcnn_inference_single_image`` (score threshold, per-class NMS,
top-k) once per α on the same boxes. With LVIS's score threshold of 1e-4 nearly every (region,
class) pair is a candidate, and torchvision's per-class NMS makes one kernel call per class (tens
of microseconds each on CPU, whatever the box count). :func:`fast_rcnn_inference_many` gives the
same results with two exact shortcuts:

* NMS on the best candidates only. Greedy NMS decides a candidate from higher-scored candidates
  of its class only, so NMS over all candidates scoring >= the M-th best keeps exactly the full
  run's survivors among them; when at least top-k survive they are the full run's top-k.
* :func:`greedy_nms_groups`: the greedy NMS of every (score set, class) group at once, one
  vectorised step per kept box of the largest group instead of one call per group. It takes the
  candidates in torchvision's order (score descending, ties by index: its CPU kernel sorts
  stably) and computes IoU with its kernel's float32 operations, so it keeps the same boxes.

Each score set falls back to Detectron2's function on all candidates when a shortcut would not be
exact: fewer than top-k survivors among the best, two equal candidate scores (the final order is
an unstable ``torch.sort``), non-finite inputs, few candidates (torchvision then NMSes once on
class-shifted coordinates), or CUDA tensors (its CUDA kernel's IoU arithmetic is not reproduced).
"""

from typing import List, Sequence, Tuple

import torch
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.structures import Boxes, Instances

__all__ = ["fast_rcnn_inference_many", "greedy_nms_groups"]

# NMS runs on the best CANDIDATES_PER_DETECTION * top-k candidates of each score set first.
CANDIDATES_PER_DETECTION = 10
# On CPU, torchvision's batched_nms runs its NMS kernel class by class from this many boxes on
# (more than 4,000 coordinates); below, once on class-shifted coordinates, which rounds differently.
PER_CLASS_NMS_MIN_BOXES = 1001


def greedy_nms_groups(boxes, groups, iou_threshold: float):
    """Greedy NMS within each group, all groups at once: keep mask [N] bool.

    boxes [N, 4] float32 (x0, y0, x1, y1), groups [N] int64, both in visiting order: sorted by
    group, and within a group by decreasing score (ties by index, as torchvision's kernel). Within
    a group, the first box not yet decided is kept and suppresses the later ones with
    IoU = inter / (area_kept + area - inter) > iou_threshold (compared in float64, as the kernel).
    """
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    keep = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    alive = torch.arange(len(boxes), device=boxes.device)
    while len(alive):
        g = groups[alive]
        first = torch.ones_like(g, dtype=torch.bool)
        first[1:] = g[1:] != g[:-1]
        chosen = alive[first]
        keep[chosen] = True
        k = chosen[torch.cumsum(first, 0) - 1]  # the box kept in this step, per alive box of its group
        w = (torch.minimum(x2[k], x2[alive]) - torch.maximum(x1[k], x1[alive])).clamp_(min=0)
        h = (torch.minimum(y2[k], y2[alive]) - torch.maximum(y1[k], y1[alive])).clamp_(min=0)
        inter = w * h
        iou = inter / (areas[k] + areas[alive] - inter)
        alive = alive[~first & ~(iou.double() > iou_threshold)]
    return keep


def _has_ties(values) -> bool:
    v = values.sort().values
    return bool((v[1:] == v[:-1]).any())


def fast_rcnn_inference_many(
    boxes, scores_list: Sequence[torch.Tensor], image_shape, score_thresh: float, nms_thresh: float, topk: int
) -> List[Tuple[Instances, torch.Tensor]]:
    """``[fast_rcnn_inference_single_image(boxes, s, image_shape, score_thresh, nms_thresh, topk) for s in scores_list]``.

    boxes [R, C*4] or [R, 4] (one box per region and class, or class-agnostic), each scores
    [R, C+1]. Returns per score set (Instances with pred_boxes, scores, pred_classes; kept region
    indices [K]), identical to Detectron2's.
    """
    out = [None] * len(scores_list)
    exact_inputs = topk >= 0 and bool(torch.isfinite(boxes).all())
    m = CANDIDATES_PER_DETECTION * max(topk, 1)
    parts = []  # (set index, filter_inds [n, 2], scores [n])
    for v, scores in enumerate(scores_list):
        fg = scores[:, :-1]
        num_candidates = int((fg > score_thresh).sum())
        if not (exact_inputs and scores.device.type == "cpu" and num_candidates >= PER_CLASS_NMS_MIN_BOXES
                and m < num_candidates and bool(torch.isfinite(scores).all())):  # fmt: skip
            continue
        flat = fg.flatten()
        mth_best = flat.kthvalue(flat.numel() - m + 1).values
        candidates = (fg >= mth_best) & (fg > score_thresh)
        if _has_ties(fg[candidates]):
            continue
        parts.append((v, candidates.nonzero(), fg[candidates]))
    if parts:
        clipped = Boxes(boxes.reshape(-1, 4).clone())
        clipped.clip(image_shape)
        clipped = clipped.tensor.view(len(boxes), -1, 4)
        inds = torch.cat([p[1] for p in parts])
        cand_scores = torch.cat([p[2] for p in parts])
        set_of = torch.cat([torch.full((len(p[1]),), j, device=inds.device) for j, p in enumerate(parts)])
        cand_boxes = clipped[inds[:, 0], inds[:, 1] if clipped.shape[1] > 1 else 0]
        # visiting order: by (score set, class), then decreasing score, ties by candidate index
        order = torch.sort(cand_scores, descending=True, stable=True).indices
        groups = set_of * (scores_list[0].shape[1] - 1) + inds[:, 1]  # (set, class) -> one id
        order = order[torch.sort(groups[order], stable=True).indices]
        keep = torch.zeros_like(cand_scores, dtype=torch.bool)
        keep[order] = greedy_nms_groups(cand_boxes[order].float(), groups[order], nms_thresh)
        start = 0
        for v, filter_inds, scores in parts:
            end = start + len(scores)
            kept = torch.where(keep[start:end])[0]
            kept = kept[scores[kept].sort(descending=True)[1]][:topk]  # as torchvision's batched_nms
            if len(kept) >= topk:
                result = Instances(image_shape)
                result.pred_boxes = Boxes(cand_boxes[start:end][kept])
                result.scores = scores[kept]
                result.pred_classes = filter_inds[kept, 1]
                out[v] = (result, filter_inds[kept, 0])
            start = end
    for v, scores in enumerate(scores_list):
        if out[v] is None:
            out[v] = fast_rcnn_inference_single_image(boxes, scores, image_shape, score_thresh, nms_thresh, topk)
    return out
