"""Synthetic LVIS-format ground truth and detections, for evaluation tests and benchmarks.

Everything an LVIS evaluation has to handle appears: the three frequency groups, categories
that are never annotated, per-image ``neg_category_ids`` / ``not_exhaustive_category_ids``,
objects of every area range, multi-polygon masks, detections that overlap ground truth at all
IoU levels (right and wrong category), detections of categories that are not evaluated on their
image, score ties (``score_decimals``), images without detections and images with more
detections than the per-image cap.
"""

from typing import List, Optional, Tuple

import numpy as np
import pycocotools.mask as mask_utils

__all__ = ["make_synthetic_lvis", "SYNTHETIC_VERSION"]

SYNTHETIC_VERSION = 2  # bump when the generated data change (benchmarks cache by it)


def _ellipse_polygons(boxes: np.ndarray, rng: np.random.Generator, n: int = 10) -> List[List[float]]:
    """Jagged ellipses inscribed in (N, 4) xywh boxes, each a flat [x0, y0, x1, y1, ...] list."""
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    t = np.sort(rng.uniform(0, 2 * np.pi, (len(boxes), n)), axis=1)
    r = rng.uniform(0.7, 1.0, (len(boxes), n))
    x, y, w, h = (boxes[:, i : i + 1] for i in range(4))
    px = x + w / 2 + r * np.cos(t) * w / 2
    py = y + h / 2 + r * np.sin(t) * h / 2
    return np.round(np.stack([px, py], 2).reshape(len(boxes), -1), 2).tolist()


def _random_boxes(rng, n, img_w, img_h) -> np.ndarray:
    """(n, 4) xywh boxes with side lengths spanning small, medium and large objects."""
    side = np.exp(rng.uniform(np.log(6), np.log(min(img_w, img_h) * 0.9), (n, 1)))
    aspect = np.exp(rng.uniform(-0.7, 0.7, (n, 1)))
    wh = np.concatenate([side * aspect, side / aspect], 1)
    wh = np.minimum(wh, [img_w - 1, img_h - 1])
    xy = rng.uniform(0, 1, (n, 2)) * ([img_w, img_h] - wh)
    return np.round(np.concatenate([xy, wh], 1), 2)


def _jitter(rng, boxes: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """Move and resize xywh boxes by relative noise ``scale`` (one per box)."""
    s = scale[:, None]
    xy = boxes[:, :2] + rng.normal(0, 1, (len(boxes), 2)) * s * boxes[:, 2:]
    wh = boxes[:, 2:] * np.exp(rng.normal(0, 1, (len(boxes), 2)) * s)
    return np.round(np.concatenate([xy, np.maximum(wh, 1.0)], 1), 2)


def make_synthetic_lvis(
    num_images: int = 50,
    num_cats: int = 60,
    dets_per_image: Tuple[int, int] = (0, 340),
    seed: int = 0,
    *,
    masks: bool = True,
    score_decimals: Optional[int] = 2,
    cat_id_step: int = 1,
    image_size: Tuple[int, int] = (120, 640),
    first_ann_id: int = 1,
    num_ignored_gt: int = 0,
) -> Tuple[dict, list]:
    """Build (gt_dataset_dict, results_list) in LVIS json formats.

    Args:
        dets_per_image: number of detections per image is uniform in [lo, hi] (lo == hi: fixed).
        masks: add polygon ground-truth masks and compressed-RLE result masks (counts as str).
        score_decimals: round scores to this many decimals (ties); None keeps float32 scores.
        cat_id_step: category ids are 1, 1 + step, ... (gaps test id mapping).
        first_ann_id: id of the first annotation (lvis-api treats a match to gt id 0 as none).
        num_ignored_gt: this many annotations get ``"ignore": 1``.
    Results carry "bbox" and, with ``masks``, "segmentation".
    """
    rng = np.random.default_rng(seed)
    cat_ids = [1 + cat_id_step * i for i in range(num_cats)]
    freq = rng.choice(["r", "c", "f"], num_cats, p=[0.3, 0.4, 0.3])
    freq[:3] = ["r", "c", "f"]
    categories = [{"id": c, "name": f"cat_{c}", "synonyms": [f"cat_{c}"], "frequency": str(f)} for c, f in zip(cat_ids, freq)]
    # frequent categories are annotated more often; the last 10% are never annotated
    weight = np.array([{"r": 1.0, "c": 4.0, "f": 16.0}[f] for f in freq])
    weight[int(num_cats * 0.9):] = 0
    weight /= weight.sum()

    image_ids = rng.choice(np.arange(1, num_images * 7), num_images, replace=False).tolist()  # gapped, unsorted
    images, annotations, results = [], [], []
    ann_id = first_ann_id
    lo, hi = dets_per_image
    for img_id in image_ids:
        w_img, h_img = (int(v) for v in rng.integers(image_size[0], image_size[1] + 1, 2))
        n_pos = min(1 + rng.poisson(3.0), int((weight > 0).sum()))
        pos = rng.choice(num_cats, n_pos, replace=False, p=weight)
        others = np.setdiff1d(np.arange(num_cats), pos)
        neg = rng.choice(others, min(len(others), int(rng.integers(1, 7))), replace=False)
        nel = pos[rng.random(len(pos)) < 0.3]
        images.append({
            "id": img_id, "width": w_img, "height": h_img,
            "neg_category_ids": [cat_ids[c] for c in neg],
            "not_exhaustive_category_ids": [cat_ids[c] for c in nel],
        })

        # ground truth
        gt_cats = np.concatenate([np.full(rng.geometric(0.4), c) for c in pos]).astype(np.int64)
        gt_boxes = _random_boxes(rng, len(gt_cats), w_img, h_img)
        gt_polys = _ellipse_polygons(gt_boxes, rng) if masks else None
        for j, (c, box) in enumerate(zip(gt_cats, gt_boxes)):
            ann = {"id": ann_id, "image_id": img_id, "category_id": cat_ids[c], "bbox": box.tolist()}
            ann_id += 1
            if masks:
                polys = [gt_polys[j]]
                if rng.random() < 0.2:  # second part
                    sub = box.copy()
                    sub[2:] *= 0.4
                    polys += _ellipse_polygons(sub, rng)
                ann["segmentation"] = polys
                rle = mask_utils.merge(mask_utils.frPyObjects(polys, h_img, w_img))
                ann["area"] = float(mask_utils.area(rle))
            else:
                ann["area"] = float(box[2] * box[3])
            annotations.append(ann)

        # detections: hits and near misses on gt (some with another category), plus clutter
        n_det = int(rng.integers(lo, hi + 1))
        if n_det == 0:
            continue
        reps = rng.integers(0, 4, len(gt_cats))
        src = np.repeat(np.arange(len(gt_cats)), reps)
        near = _jitter(rng, gt_boxes[src], rng.uniform(0.0, 0.25, len(src))) if len(src) else np.zeros((0, 4))
        near_cat = gt_cats[src].copy()
        wrong = rng.random(len(src)) < 0.25
        evaluated = np.concatenate([pos, neg])
        near_cat[wrong] = rng.choice(evaluated, int(wrong.sum()))
        n_clutter = max(n_det - len(src), 0)
        clutter = _random_boxes(rng, n_clutter, w_img, h_img)
        clutter_cat = np.where(
            rng.random(n_clutter) < 0.5, rng.choice(evaluated, n_clutter), rng.integers(0, num_cats, n_clutter)
        )
        boxes = np.concatenate([near, clutter])[:n_det]
        dcat = np.concatenate([near_cat, clutter_cat]).astype(np.int64)[:n_det]
        score = np.concatenate([rng.uniform(0.2, 1.0, len(near)), rng.uniform(0.0, 0.7, n_clutter)])[:n_det]
        score = np.round(score, score_decimals) if score_decimals is not None else score.astype(np.float32)
        perm = rng.permutation(n_det)
        boxes, dcat, score = boxes[perm], dcat[perm], score[perm]
        if masks:
            rles = mask_utils.frPyObjects(_ellipse_polygons(boxes, rng, 8), h_img, w_img)
        for j, (c, box, sc) in enumerate(zip(dcat.tolist(), boxes.tolist(), score.tolist())):
            det = {"image_id": img_id, "category_id": cat_ids[c], "bbox": box, "score": sc}
            if masks:
                det["segmentation"] = {"size": rles[j]["size"], "counts": rles[j]["counts"].decode("ascii")}
            results.append(det)

    for ann in annotations[: max(num_ignored_gt, 0)]:
        ann["ignore"] = 1
    # json order is not grouped by image (order breaks ties in lvis-api)
    annotations = [annotations[i] for i in rng.permutation(len(annotations))]
    results = [results[i] for i in rng.permutation(len(results))]
    gt = {"images": images, "annotations": annotations, "categories": categories, "info": {}, "licenses": []}
    return gt, results
