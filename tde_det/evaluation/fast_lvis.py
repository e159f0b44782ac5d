"""Vectorised LVIS evaluation giving exactly the numbers of lvis-api 0.5.3's ``LVISEval``.

The protocol reproduced (``lvis/eval.py``, ``lvis/results.py`` of lvis 0.5.3):

* results: at most ``max_dets`` per image, the top ones in the order (score desc, input order),
  counted before any other filter; box-style results (the first result has ``"bbox"``) take
  ``area = w * h``, mask-style ones the RLE area; results and ground truth need ``0 < area < inf``;
* federated rule: a detection of category c on image i is evaluated only if c is annotated on i
  or listed in i's ``neg_category_ids``;
* per (image, category), detections by score desc (ties: input order) are matched greedily: at
  IoU threshold t a detection takes, among the still unmatched ground truth with IoU >= t, a
  non-ignored one if any, else an ignored one, with the largest IoU (ties: the later one in json
  order). Ground truth is ignored if flagged ``ignore`` or its area is outside the area range; an
  unmatched detection is ignored if its area is outside the range or its category is in the
  image's ``not_exhaustive_category_ids``; a match to a ground truth with id 0 counts as none;
* per category, detections of all images by score desc (ties: image id, then input order):
  ``precision = tp / (fp + tp + eps)``, made non-increasing from the right and read at the 101
  recall thresholds 0:0.01:1 (first index with ``recall >= r``, 0 past the last detection);
  IoU thresholds 0.50:0.05:0.95; areas all / small (<= 32^2) / medium / large (>= 96^2);
* a (category, area) without non-ignored ground truth gets -1 and is left out of every mean;
  APr/APc/APf average over the categories of each ``frequency`` of the ground-truth json.

Fixed AP (Dave et al. 2021, "Evaluating Large-Vocabulary Object Detectors: The Devil is in the
Details"): the same, but instead of the per-image cap each category keeps its top
``max_dets_per_cat`` (10,000) results over the dataset (score desc, input order), as their
``scripts/evaluate_ap_fixed.py`` does before calling lvis-api with ``max_dets=-1``.

How: box IoU is pycocotools' ``bbIou`` in numpy (the same float64 operations, so the same bits),
mask IoU ``pycocotools.mask.iou`` once per image. Matching runs in lock-step over all
(image, category) groups: step k matches the k-th detection of every group, all 4 areas x 10
thresholds at once. Accumulation needs only the true positives: at the j-th one of a category,
``precision_j = j / (fp_j + j + eps)`` (fp_j = false positives ranked above it) and the
interpolated precision at a recall threshold needing j true positives is ``max(precision_j')``
over j' >= j -- computed for all categories with segmented cumulative sums and maxima.
"""

import json
import logging
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from itertools import chain
from operator import itemgetter
from typing import Dict, List, Optional

import numpy as np
import pycocotools.mask as mask_utils

from .lvis_compat import lvis_numpy_aliases

__all__ = [
    "evaluate",
    "run_lvis_eval",
    "run_lvis_api_eval",
    "prepare_gt",
    "LVISEvalResult",
    "PreparedGT",
    "AP_KEYS",
    "AR_KEYS",
    "METRIC_KEYS",
    "FIXED_SUFFIX",
    "DEFAULT_MAX_DETS_PER_CAT",
]

logger = logging.getLogger(__name__)

# Exactly lvis.eval.Params (lvis 0.5.3).
IOU_THRS = np.linspace(0.5, 0.95, int(np.round((0.95 - 0.5) / 0.05)) + 1, endpoint=True)
REC_THRS = np.linspace(0.0, 1.00, int(np.round((1.00 - 0.0) / 0.01)) + 1, endpoint=True)
AREA_RNGS = np.array([[0**2, 1e5**2], [0**2, 32**2], [32**2, 96**2], [96**2, 1e5**2]], dtype=np.float64)
AREA_LABELS = ("all", "small", "medium", "large")
FREQ_LABELS = ("r", "c", "f")

AP_KEYS = ("AP", "AP50", "AP75", "APs", "APm", "APl", "APr", "APc", "APf")
# lvis-api names the AR keys after Params.max_dets, which is 300 whatever cap LVISResults used.
AR_KEYS = ("AR@300", "ARs@300", "ARm@300", "ARl@300")
METRIC_KEYS = AP_KEYS + AR_KEYS
# Fixed-AP metrics are reported as e.g. "APr_fixed" (no "-": Detectron2's print_csv_format hides
# keys containing "-", which it reserves for per-category "AP-<class>").
FIXED_SUFFIX = "_fixed"
DEFAULT_MAX_DETS_PER_CAT = 10000

_T, _R, _A = len(IOU_THRS), len(REC_THRS), len(AREA_RNGS)
_THR_EFF = np.minimum(IOU_THRS, 1 - 1e-10)  # lvis-api: iou = min([iou_thr, 1 - 1e-10])
_EPS = np.spacing(1)


# ----------------------------------------------------------------------------- id lookup
class _IdIndex:
    """Maps ids (json ints, or any hashable) to their index in a sorted id list; -1 if unknown."""

    def __init__(self, ids: list):
        self.index = {v: i for i, v in enumerate(ids)}
        self.table = self.sorted = None
        if ids and all(type(v) is int for v in ids):
            arr = np.asarray(ids, dtype=np.int64)
            if arr.min() >= 0 and arr.max() < 50_000_000:  # dense table, O(1) per lookup
                self.table = np.full(int(arr.max()) + 1, -1, dtype=np.int64)
                self.table[arr] = np.arange(len(arr))
            else:
                self.sorted = arr  # ids are given sorted

    def lookup(self, objs: list, field_name: str) -> np.ndarray:
        """(len(objs),) int64 index of ``obj[field_name]`` for each dict; KeyError if a dict lacks it."""
        n = len(objs)
        if (self.table is not None or self.sorted is not None) and all(
            issubclass(t, (int, float, np.integer, np.floating)) for t in set(map(type, map(itemgetter(field_name), objs)))
        ):
            v = np.fromiter(map(itemgetter(field_name), objs), dtype=np.float64, count=n)
            if (np.abs(v) < 2**53).all() and (v == np.floor(v)).all():  # ints (3.0 == 3 as in a dict)
                iv = v.astype(np.int64)
                if self.table is not None:
                    inside = (iv >= 0) & (iv < len(self.table))
                    return np.where(inside, self.table[np.where(inside, iv, 0)], -1)
                pos = np.minimum(np.searchsorted(self.sorted, iv), len(self.sorted) - 1)
                return np.where(self.sorted[pos] == iv, pos, -1)
        get = self.index.get
        return np.fromiter((get(x, -1) for x in map(itemgetter(field_name), objs)), dtype=np.int64, count=n)


# ----------------------------------------------------------------------------- ground truth
@dataclass
class PreparedGT:
    """Ground truth of one LVIS json in array form; reuse it to evaluate many result sets.

    Annotations kept are those lvis-api evaluates (known image and category, ``0 < area < inf``),
    sorted by (image, category), ties in json order. N annotations, K categories, A = 4 areas.
    """

    img_ids: list  # sorted image ids (lvis-api's params.img_ids)
    img_hw: np.ndarray  # (num_images, 2) height, width (0 where absent)
    cat_ids: list  # sorted category ids (lvis-api's params.cat_ids)
    freq_groups: List[List[int]]  # category indices of frequency "r", "c", "f"
    anns: list  # N annotation dicts
    ann_key: np.ndarray  # (N,) int64 image_index * K + category_index, non-decreasing
    ann_regular: np.ndarray  # (N, A) bool: not ignored in area range a
    ann_id_nonzero: np.ndarray  # (N,) bool
    num_gt: np.ndarray  # (K, A) int64 non-ignored annotations per category and area
    key_flags: np.ndarray  # (num_images * K,) uint8 per (image, category): 1 annotated, 2 negative, 4 not exhaustive
    img_index: _IdIndex = field(repr=False)
    cat_index: _IdIndex = field(repr=False)
    _cache: dict = field(default_factory=dict, repr=False)

    @property
    def num_cats(self) -> int:
        return len(self.cat_ids)

    def gt_boxes(self) -> np.ndarray:
        """(N, 4) float64 xywh boxes of the kept annotations."""
        if "boxes" not in self._cache:
            try:
                boxes = np.array([a["bbox"] for a in self.anns], dtype=np.float64).reshape(len(self.anns), 4)
            except (KeyError, ValueError, TypeError):
                raise ValueError("every ground-truth annotation needs a 'bbox' [x, y, w, h] for bbox evaluation") from None
            self._cache["boxes"] = boxes
        return self._cache["boxes"]

    def gt_mask_stats(self, ann_indices: np.ndarray):
        """(N, 4) xywh bounding boxes and (N,) areas of the annotations' masks (filled for ``ann_indices``)."""
        if "mask_box" not in self._cache:
            n = len(self.anns)
            self._cache.update(mask_box=np.zeros((n, 4)), mask_area=np.zeros(n), mask_done=np.zeros(n, dtype=bool))
        box, area, done = self._cache["mask_box"], self._cache["mask_area"], self._cache["mask_done"]
        todo = ann_indices[~done[ann_indices]]
        if len(todo):
            rles = self.gt_rles(todo)
            box[todo] = np.asarray(mask_utils.toBbox(rles), dtype=np.float64).reshape(-1, 4)
            area[todo] = _rle_area(rles)
            done[todo] = True
        return box, area

    def gt_rles(self, ann_indices: np.ndarray) -> list:
        """RLEs (as lvis-api's ``LVIS.ann_to_rle``) of the given kept annotations, cached."""
        rles = self._cache.setdefault("rles", {})
        out = []
        for i in ann_indices.tolist():
            rle = rles.get(i)
            if rle is None:
                ann = self.anns[i]
                if "segmentation" not in ann:
                    raise ValueError(f"ground-truth annotation id {ann.get('id')} has no 'segmentation'; segm evaluation needs it")
                h, w = self.img_hw[self.ann_key[i] // self.num_cats]
                rle = rles[i] = _to_rle(ann["segmentation"], int(h), int(w))
            out.append(rle)
        return out


def _rle_area(rles: list) -> np.ndarray:
    """(N,) float64 ``pycocotools.mask.area`` of N RLEs, at most 255 per call.

    pycocotools (2.0.11 included) builds its output with ``np.array((N,), dtype=np.uint8)``, which
    numpy 2 refuses for N > 255 (OverflowError); the areas themselves are uint32 and exact.
    """
    if not rles:
        return np.zeros(0)
    return np.concatenate(
        [np.asarray(mask_utils.area(rles[i:i + 255]), dtype=np.float64).reshape(-1) for i in range(0, len(rles), 255)]
    )


def _to_rle(segm, h: int, w: int):
    """lvis-api's ``LVIS.ann_to_rle``: polygons are merged, uncompressed RLE compressed."""
    if isinstance(segm, list):
        return mask_utils.merge(mask_utils.frPyObjects(segm, h, w))
    if isinstance(segm, dict) and isinstance(segm.get("counts"), list):
        return mask_utils.frPyObjects(segm, h, w)
    return segm


def _load_json(path, what: str):
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} json not found: '{path}'. Pass an existing file path.")
    with open(path, "r") as f:
        return json.load(f)


def prepare_gt(gt) -> PreparedGT:
    """Index an LVIS ground truth: json path, ``lvis.LVIS`` object, dataset dict, or a PreparedGT."""
    if isinstance(gt, PreparedGT):
        return gt
    if isinstance(gt, (str, os.PathLike)):
        dataset = _load_json(os.fspath(gt), "LVIS ground-truth")
    elif isinstance(gt, dict):
        dataset = gt
    elif isinstance(getattr(gt, "dataset", None), dict):
        dataset = gt.dataset  # lvis.LVIS
    else:
        raise TypeError(f"gt must be an LVIS json path, an lvis.LVIS object or a dataset dict, got {type(gt).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(dataset.get(key), list):
            raise ValueError(f"LVIS ground truth has no '{key}' list; is this an LVIS-format json?")

    try:
        by_id = {img["id"]: img for img in dataset["images"]}  # last one wins, as in lvis-api's index
        cats = {c["id"]: c for c in dataset["categories"]}
    except KeyError:
        raise ValueError("every LVIS image and category needs an 'id'") from None
    img_ids, cat_ids = sorted(by_id), sorted(cats)
    img_index, cat_index = _IdIndex(img_ids), _IdIndex(cat_ids)
    K = len(cat_ids)
    img_hw = np.array([[by_id[i].get("height", 0), by_id[i].get("width", 0)] for i in img_ids], dtype=np.int64).reshape(-1, 2)
    freq_groups = [[] for _ in FREQ_LABELS]
    for n, c in enumerate(cat_ids):
        freq = cats[c].get("frequency")
        if freq not in FREQ_LABELS:
            raise ValueError(
                f"category id {c} has frequency {freq!r}; LVIS categories need 'frequency' in "
                "('r', 'c', 'f') -- use the official LVIS json, which has it"
            )
        freq_groups[FREQ_LABELS.index(freq)].append(n)

    anns_all = dataset["annotations"]
    try:
        a_img = img_index.lookup(anns_all, "image_id")
        a_cat = cat_index.lookup(anns_all, "category_id")
        a_area = np.fromiter(map(itemgetter("area"), anns_all), dtype=np.float64, count=len(anns_all))
    except KeyError as e:
        raise ValueError(f"a ground-truth annotation lacks {e}; LVIS annotations need image_id, category_id and area") from None
    with np.errstate(invalid="ignore"):
        kept = np.flatnonzero((a_img >= 0) & (a_cat >= 0) & (a_area > 0) & (a_area < np.inf))
    key = a_img[kept] * K + a_cat[kept]
    order = np.argsort(key, kind="stable")
    kept, key = kept[order], key[order]
    anns = [anns_all[i] for i in kept.tolist()]
    area = a_area[kept]
    ignore = np.array([bool(a.get("ignore", 0)) for a in anns], dtype=bool)
    id_nonzero = np.array([a.get("id") != 0 for a in anns], dtype=bool)
    regular = ~ignore[:, None] & (area[:, None] >= AREA_RNGS[:, 0]) & (area[:, None] <= AREA_RNGS[:, 1])
    num_gt = np.zeros((K, _A), dtype=np.int64)
    if len(key):
        np.add.at(num_gt, key % K, regular.astype(np.int64))

    key_flags = np.zeros(len(img_ids) * K, dtype=np.uint8)
    key_flags[key] |= 1
    for name, bit in (("neg_category_ids", 2), ("not_exhaustive_category_ids", 4)):
        rows, cols = [], []
        for n, i in enumerate(img_ids):
            ids = by_id[i].get(name)
            if ids is None:
                raise ValueError(f"image id {i} has no '{name}'; LVIS images must list it (federated evaluation)")
            rows.append(np.full(len(ids), n, dtype=np.int64))
            cols.append(ids)
        cidx = cat_index.lookup([{"c": c} for c in chain.from_iterable(cols)], "c")
        flat = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        known = cidx >= 0  # ids outside the category list cannot match any result
        key_flags[flat[known] * K + cidx[known]] |= bit

    return PreparedGT(
        img_ids=img_ids, img_hw=img_hw, cat_ids=cat_ids, freq_groups=freq_groups, anns=anns,
        ann_key=key, ann_regular=regular, ann_id_nonzero=id_nonzero, num_gt=num_gt,
        key_flags=key_flags, img_index=img_index, cat_index=cat_index,
    )


# ----------------------------------------------------------------------------- results
@dataclass
class _Results:
    """Detections in array form (D = number of results given; the dicts are not modified)."""

    dets: list
    img: np.ndarray  # (D,) image index
    cat: np.ndarray  # (D,) category index
    score: np.ndarray  # (D,) float64
    rank: np.ndarray  # (D,) position in the order (score desc, input order)
    rank_img: np.ndarray  # (D,) position in the order (score desc, image, input order)
    box_style: bool  # lvis-api: "bbox" in results[0] -> area = w * h, else the mask area
    ignore_bbox: bool  # use_mask_area: as if no result had a "bbox"


def _load_results(results, gt: PreparedGT, use_mask_area: bool = False) -> _Results:
    if isinstance(results, (str, os.PathLike)):
        results = _load_json(os.fspath(results), "LVIS results")
    elif not isinstance(results, list) and hasattr(results, "dataset"):
        raise TypeError("pass the raw results list (or a json path), not an lvis.LVISResults, which has already applied its per-image cap")
    if not isinstance(results, list):
        raise TypeError(f"results must be a list of dicts or a json path, got {type(results).__name__}")
    if results and not isinstance(results[0], dict):
        raise TypeError(f"results must be a list of dicts in LVIS results format, got a list of {type(results[0]).__name__}")
    D = len(results)
    try:
        img = gt.img_index.lookup(results, "image_id")
        cat = gt.cat_index.lookup(results, "category_id")
        score = np.fromiter(map(itemgetter("score"), results), dtype=np.float64, count=D)
    except KeyError as e:
        raise ValueError(f"a result lacks {e}; LVIS results need image_id, category_id, score and bbox or segmentation") from None
    for name, idx, ids in (("image_id", img, None), ("category_id", cat, None)):
        if (idx < 0).any():
            bad = sorted({results[i][name] for i in np.flatnonzero(idx < 0)[:5].tolist()}, key=str)
            what = "images" if name == "image_id" else "categories"
            hint = (
                "results must refer to images of the evaluated dataset" if name == "image_id" else
                "LVIS category ids are the json ids (Detectron2's contiguous ids need +1); lvis-api would silently drop them"
            )
            raise ValueError(f"{int((idx < 0).sum())} results have a {name} not among the ground-truth {what} (e.g. {bad}); {hint}")
    if not np.isfinite(score).all():
        raise ValueError(f"{int((~np.isfinite(score)).sum())} results have a non-finite score; scores must be finite numbers")

    if D == 0 or use_mask_area:
        box_style = False
    elif "bbox" in results[0]:
        box_style = True
    elif "segmentation" in results[0]:
        box_style = False
    else:
        raise ValueError("results need a 'bbox' or a 'segmentation' (the first result has neither)")

    order = np.argsort(-score, kind="stable")  # (score desc, input order)
    rank = np.empty(D, dtype=np.int64)
    rank[order] = np.arange(D)
    s = score[order]
    tie = np.r_[False, s[1:] == s[:-1]]
    if tie.any():  # runs of equal scores: (image, input order) inside each
        run = np.cumsum(~tie)
        in_run = tie | np.r_[tie[1:], False]
        pos = np.flatnonzero(in_run)
        sub = order[pos]
        order = order.copy()
        order[pos] = sub[np.lexsort((sub, img[sub], run[pos]))]
    rank_img = np.empty(D, dtype=np.int64)
    rank_img[order] = np.arange(D)
    return _Results(results, img, cat, score, rank, rank_img, box_style, use_mask_area)


def _top_per_group(group: np.ndarray, rank: np.ndarray, limit: int) -> np.ndarray:
    """Sorted indices of the first ``limit`` results of each group in ``rank`` order."""
    if len(group) == 0 or np.bincount(group).max() <= limit:
        return np.arange(len(group))
    order = np.argsort(group * len(group) + rank)
    g = group[order]
    starts = np.flatnonzero(np.r_[True, g[1:] != g[:-1]])
    within = np.arange(len(g)) - np.repeat(starts, np.diff(np.r_[starts, len(g)]))
    return np.sort(order[within < limit])


# ----------------------------------------------------------------------------- entry points
@dataclass
class LVISEvalResult:
    """One evaluation: ``results`` has lvis-api's keys; arrays as lvis-api's ``LVISEval.eval``.

    precision: (T=10, R=101, K, A=4), -1 where a category has no non-ignored ground truth.
    recall:    (T, K, A), same convention.
    """

    results: "OrderedDict[str, float]"
    precision: np.ndarray
    recall: np.ndarray
    cat_ids: list
    freq_groups: List[List[int]]

    def per_category_ap(self) -> Dict[object, float]:
        """{category id: AP over IoU 0.50:0.95 at area "all"}; NaN where the category has no ground truth."""
        p = self.precision[:, :, :, 0]
        valid = p > -1
        cnt = valid.sum(axis=(0, 1))
        tot = np.where(valid, p, 0.0).sum(axis=(0, 1))
        ap = np.full(len(cnt), np.nan)
        ap[cnt > 0] = tot[cnt > 0] / cnt[cnt > 0]
        return {c: float(v) for c, v in zip(self.cat_ids, ap)}


def _check_iou_type(iou_type):
    if iou_type not in ("bbox", "segm"):
        raise ValueError(f"iou_type must be 'bbox' or 'segm', got {iou_type!r}")


def run_lvis_eval(
    gt,
    results,
    iou_type: str = "bbox",
    max_dets: int = 300,
    max_dets_per_cat: Optional[int] = None,
    *,
    use_mask_area: bool = False,
) -> LVISEvalResult:
    """One LVIS evaluation with lvis-api's numbers; ``max_dets_per_cat`` given -> Fixed AP protocol.

    Args:
        gt: LVIS json path, ``lvis.LVIS``, dataset dict or :class:`PreparedGT` (from
            :func:`prepare_gt`, to evaluate many result sets on one ground truth).
        results: list of LVIS result dicts or a json path (the dicts are not modified).
        iou_type: "bbox" or "segm".
        max_dets: per-image cap as ``lvis.LVISResults(max_dets=...)``; < 0: no cap.
        max_dets_per_cat: keep only the top this-many results of each category over the
            dataset, instead of the per-image cap (Fixed AP).
        use_mask_area: evaluate as if the results had no "bbox", so the area ranges use the
            mask area (Detectron2's LVISEvaluator removes "bbox" before segm evaluation).
    """
    _check_iou_type(iou_type)
    gt = prepare_gt(gt)
    return _evaluate(gt, _load_results(results, gt, use_mask_area), iou_type, max_dets, max_dets_per_cat)


def evaluate(
    gt,
    results,
    iou_type: str = "bbox",
    max_dets: int = 300,
    *,
    fixed_ap: bool = False,
    max_dets_per_cat: int = DEFAULT_MAX_DETS_PER_CAT,
    use_mask_area: bool = False,
) -> "OrderedDict[str, float]":
    """LVIS metrics equal to ``LVISEval(gt, LVISResults(gt, results, max_dets), iou_type).results``.

    Returns an OrderedDict with keys AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR@300,
    ARs@300, ARm@300, ARl@300 (fractions; -1 where undefined). With ``fixed_ap=True`` the AP
    keys come again with suffix "_fixed" (e.g. "APr_fixed"): Fixed AP, the top
    ``max_dets_per_cat`` results per category and no per-image cap. Other arguments as
    :func:`run_lvis_eval`, which also gives per-category AP and the precision / recall arrays.
    """
    _check_iou_type(iou_type)
    gt = prepare_gt(gt)
    res = _load_results(results, gt, use_mask_area)
    out = _evaluate(gt, res, iou_type, max_dets, None).results
    if fixed_ap:
        fixed = _evaluate(gt, res, iou_type, -1, max_dets_per_cat).results
        out.update((k + FIXED_SUFFIX, fixed[k]) for k in AP_KEYS)
    return out


def run_lvis_api_eval(
    gt,
    results,
    iou_type: str = "bbox",
    max_dets: int = 300,
    max_dets_per_cat: Optional[int] = None,
    *,
    use_mask_area: bool = False,
) -> LVISEvalResult:
    """The same evaluation done by lvis-api itself (slow): the reference, and the "lvis-api" backend.

    ``gt``: json path or ``lvis.LVIS``. Fixed AP as Dave et al.'s ``evaluate_ap_fixed.py``: the
    top ``max_dets_per_cat`` per category (stable sort by score), then ``LVISResults(max_dets=-1)``.
    The result dicts are copied (lvis-api adds keys to its inputs).
    """
    from lvis import LVIS, LVISEval, LVISResults

    _check_iou_type(iou_type)
    if isinstance(gt, (str, os.PathLike)):
        if not os.path.isfile(gt):
            raise FileNotFoundError(f"LVIS ground-truth json not found: '{gt}'")
        gt = LVIS(os.fspath(gt))
    if not isinstance(gt, LVIS):
        raise TypeError(f"lvis-api needs an LVIS json path or an lvis.LVIS object, got {type(gt).__name__}")
    if isinstance(results, (str, os.PathLike)):
        results = _load_json(os.fspath(results), "LVIS results")
    dets = [dict(d) for d in results]
    if not dets:
        raise ValueError("lvis-api cannot evaluate an empty results list")
    if use_mask_area:
        for d in dets:
            d.pop("bbox", None)
    if max_dets_per_cat is not None:
        by_cat = {}
        for d in dets:
            by_cat.setdefault(d["category_id"], []).append(d)
        dets = [d for ds in by_cat.values() for d in sorted(ds, key=lambda x: x["score"], reverse=True)[:max_dets_per_cat]]
        max_dets = -1
    ev = LVISEval(gt, LVISResults(gt, dets, max_dets=max_dets), iou_type)
    with lvis_numpy_aliases():  # lvis 0.5.3 uses np.float, removed in numpy 1.24
        ev.run()
    return LVISEvalResult(OrderedDict(ev.results), ev.eval["precision"], ev.eval["recall"], list(ev.params.cat_ids), ev.freq_groups)


# ----------------------------------------------------------------------------- evaluation
def _evaluate(gt: PreparedGT, res: _Results, iou_type: str, max_dets, max_dets_per_cat) -> LVISEvalResult:
    K, D = gt.num_cats, len(res.dets)
    if max_dets_per_cat is not None:
        if max_dets_per_cat < 1:
            raise ValueError(f"max_dets_per_cat must be >= 1, got {max_dets_per_cat}")
        sel = _top_per_group(res.cat, res.rank, int(max_dets_per_cat))
    elif max_dets is not None and max_dets >= 0:
        sel = _top_per_group(res.img, res.rank, int(max_dets))
    else:
        sel = np.arange(D)

    # federated rule: the category is annotated on the image or in its negative list
    key = res.img[sel] * K + res.cat[sel]
    flags = gt.key_flags[key]
    ok = (flags & 3) > 0
    sel, key, flags = sel[ok], key[ok], flags[ok]
    boxes = _boxes_of(res.dets, sel) if res.box_style else None
    area = boxes[:, 2] * boxes[:, 3] if res.box_style else _mask_areas(res.dets, sel)
    with np.errstate(invalid="ignore"):
        ok = (area > 0) & (area < np.inf)
    sel, key, flags, area = sel[ok], key[ok], flags[ok], area[ok]
    cat = key % K if K else key

    # matching, per (image, category) group with ground truth, by (score desc, input order)
    m = np.flatnonzero(flags & 1)
    m = m[np.argsort(key[m] * D + res.rank[sel[m]])]
    if iou_type == "bbox" and len(m):
        dboxes = boxes[ok][m] if boxes is not None else _det_boxes(res, sel[m])
    else:
        dboxes = None
    rel, tp_r, nfp_r = _match(gt, res, sel, key, m, dboxes, None if res.box_style else area[m])

    # accumulation order: (category, score desc, image, input order)
    order = np.argsort(cat * D + res.rank_img[sel])
    pos = np.empty(len(order), dtype=np.int64)
    pos[order] = np.arange(len(order))
    rpos = pos[m[rel]]
    o = np.argsort(rpos)
    # an unmatched detection is ignored outside the area range or for a not-exhaustive category
    ign = (area[:, None] < AREA_RNGS[:, 0]) | (area[:, None] > AREA_RNGS[:, 1]) | ((flags & 4) > 0)[:, None]
    precision, recall = _accumulate(gt.num_gt, cat[order], ign[order], rpos[o], tp_r[o], nfp_r[o])
    return LVISEvalResult(_summarize(precision, recall, gt.freq_groups), precision, recall, gt.cat_ids, gt.freq_groups)


def _mask_areas(dets: list, sel: np.ndarray) -> np.ndarray:
    """Area of mask-style results: ``pycocotools.mask.area`` of their RLE, as lvis-api."""
    if len(sel) == 0:
        return np.zeros(0)
    picked = itemgetter(*sel.tolist())(dets) if len(sel) > 1 else [dets[int(sel[0])]]
    try:
        return _rle_area(list(map(itemgetter("segmentation"), picked)))
    except (KeyError, TypeError, ValueError, AttributeError):
        raise ValueError(
            "mask results (no 'bbox' in the first result, or use_mask_area=True) need "
            "'segmentation' as a compressed RLE dict with 'size' and 'counts'"
        ) from None


def _boxes_of(dets: list, sel: np.ndarray) -> np.ndarray:
    """(len(sel), 4) float64: the 'bbox' of the given results."""
    picked = itemgetter(*sel.tolist())(dets) if len(sel) > 1 else [dets[i] for i in sel.tolist()]
    try:
        bboxes = list(map(itemgetter("bbox"), picked))
    except KeyError:
        raise ValueError("results are box-style (the first has a 'bbox') but some lack 'bbox'; give every result a bbox") from None
    if (np.fromiter(map(len, bboxes), dtype=np.int64, count=len(bboxes)) != 4).any():
        raise ValueError("every 'bbox' must be [x, y, width, height] (4 numbers)")
    return np.fromiter(chain.from_iterable(bboxes), dtype=np.float64, count=4 * len(bboxes)).reshape(-1, 4)


def _det_boxes(res: _Results, idx: np.ndarray) -> np.ndarray:
    """xywh boxes of mask-style results: their 'bbox' if any, else the RLE's box (lvis-api: toBbox)."""
    out = np.empty((len(idx), 4), dtype=np.float64)
    missing = []
    for j, i in enumerate(idx.tolist()):
        b = None if res.ignore_bbox else res.dets[i].get("bbox")
        if b is None:
            missing.append(j)
        else:
            out[j] = b
    if missing:
        out[missing] = mask_utils.toBbox([res.dets[i]["segmentation"] for i in idx[missing].tolist()])
    return out


def _bbox_iou(d: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Row-wise IoU of xywh boxes, pycocotools' ``bbIou`` operation for operation: (P, 4) x2 -> (P,)."""
    w = np.fmin(d[:, 2] + d[:, 0], g[:, 2] + g[:, 0]) - np.fmax(d[:, 0], g[:, 0])
    h = np.fmin(d[:, 3] + d[:, 1], g[:, 3] + g[:, 1]) - np.fmax(d[:, 1], g[:, 1])
    i = w * h
    u = d[:, 2] * d[:, 3] + g[:, 2] * g[:, 3] - i
    with np.errstate(invalid="ignore", divide="ignore"):
        o = i / u
    o[(w <= 0) | (h <= 0)] = 0.0
    return o


def _mask_ious(gt: PreparedGT, res: _Results, didx, dimg, d_area, pdet, pgt, out):
    """Mask IoU of every (detection, gt) pair: pycocotools' value wherever it can be >= 0.5.

    A pair whose IoU is provably below 0.5 (so no IoU threshold can use it) gets 0 without a mask
    comparison: with the masks' bounding boxes and areas, ``IoU = I / (a_d + a_g - I)`` with
    ``I <= min(box intersection, a_d, a_g)``, exact integers. The other pairs:
    ``pycocotools.mask.iou`` once per image.
    """
    dets = res.dets
    segs = [dets[i].get("segmentation") for i in didx.tolist()]
    for j, segm in enumerate(segs):
        if not (type(segm) is dict and type(segm.get("counts")) in (str, bytes)):  # not compressed RLE
            h, w = (int(v) for v in gt.img_hw[dimg[j]])
            segs[j] = _det_rle(dets[int(didx[j])], h, w)
    d_box = np.asarray(mask_utils.toBbox(segs), dtype=np.float64).reshape(-1, 4)
    if d_area is None:  # box-style results: their "area" is the box's
        d_area = _rle_area(segs)
    g_box, g_area = gt.gt_mask_stats(np.unique(pgt))
    db, gb, da, ga = d_box[pdet], g_box[pgt], d_area[pdet], g_area[pgt]
    iw = np.minimum(db[:, 0] + db[:, 2], gb[:, 0] + gb[:, 2]) - np.maximum(db[:, 0], gb[:, 0])
    ih = np.minimum(db[:, 1] + db[:, 3], gb[:, 1] + gb[:, 3]) - np.maximum(db[:, 1], gb[:, 1])
    inter = np.minimum(np.maximum(iw, 0) * np.maximum(ih, 0), np.minimum(da, ga))
    with np.errstate(invalid="ignore", divide="ignore"):
        bound = inter / (da + ga - inter)
    need = np.flatnonzero(bound >= _THR_EFF[0] - 1e-9)
    out[:] = 0.0
    if len(need) == 0:
        return
    nd, ngt = pdet[need], pgt[need]
    bounds = np.flatnonzero(np.r_[True, dimg[nd][1:] != dimg[nd][:-1], True])  # pairs come sorted by image
    for s, e in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        d_local, d_row = np.unique(nd[s:e], return_inverse=True)
        g_local, g_col = np.unique(ngt[s:e], return_inverse=True)
        ious = mask_utils.iou([segs[i] for i in d_local.tolist()], gt.gt_rles(g_local), [0] * len(g_local))
        out[need[s:e]] = np.asarray(ious, dtype=np.float64).reshape(len(d_local), len(g_local))[d_row, g_col]


def _det_rle(det: dict, h: int, w: int):
    """A result's mask as lvis-api takes it: its segmentation, else its bbox as a polygon."""
    segm = det.get("segmentation")
    if segm is None:
        x1, y1, bw, bh = det["bbox"]
        x2, y2 = x1 + bw, y1 + bh
        segm = [[x1, y1, x1, y2, x2, y2, x2, y1]]
    return _to_rle(segm, h, w)


def _match(gt: PreparedGT, res: _Results, sel, key, m, dboxes, mask_area):
    """Greedy lvis-api matching of detections ``m`` (indices into ``sel``, sorted by group then rank).

    Returns (rel, tp, nfp): ``rel`` indexes into ``m`` the detections with IoU >= 0.5 to some gt
    of their group (no other can match); for them, with shape (len(rel), A, T):
      tp:  matched to a non-ignored gt with nonzero id   (lvis-api: dt_m > 0 and not dt_ig)
      nfp: matched, and gt id nonzero or gt ignored      (lvis-api: dt_m > 0 or dt_ig)
    """
    empty = (np.zeros(0, np.int64), np.zeros((0, _A, _T), bool), np.zeros((0, _A, _T), bool))
    if len(m) == 0:
        return empty
    mkey = key[m]
    gs = np.searchsorted(gt.ann_key, mkey, "left")
    ng = np.searchsorted(gt.ann_key, mkey, "right") - gs
    # every (detection, gt of its group) pair; the gts of a detection are consecutive
    P = int(ng.sum())
    pstart = np.cumsum(ng) - ng
    pdet = np.repeat(np.arange(len(m)), ng)
    pgt = gs[pdet] + (np.arange(P) - pstart[pdet])
    if dboxes is not None:
        iou = _bbox_iou(dboxes[pdet], gt.gt_boxes()[pgt])
    else:
        iou = np.empty(P, dtype=np.float64)
        _mask_ious(gt, res, sel[m], mkey // gt.num_cats, mask_area, pdet, pgt, iou)

    rel = np.flatnonzero(np.maximum.reduceat(iou, pstart) >= _THR_EFF[0])
    tp = np.zeros((len(rel), _A, _T), dtype=bool)
    nfp = np.zeros((len(rel), _A, _T), dtype=bool)
    if len(rel) == 0:
        return empty
    rkey = mkey[rel]
    gstart = np.flatnonzero(np.r_[True, rkey[1:] != rkey[:-1]])  # groups of relevant detections
    gcount = np.diff(np.r_[gstart, len(rel)])
    gsize = ng[rel[gstart]]
    bucket = np.ceil(np.log2(gsize)).astype(np.int64)  # pad each group's gts to a power of two
    for b in np.unique(bucket).tolist():
        g = np.flatnonzero(bucket == b)
        g = g[np.argsort(-gcount[g], kind="stable")]  # the groups active at step k are a prefix
        _match_bucket(1 << b, gcount[g], gstart[g], gs[rel[gstart[g]]], gsize[g], rel, pstart, iou, gt, tp, nfp)
    return rel, tp, nfp


def _match_bucket(G, cnt, start, gs, ng, rel, pstart, iou, gt, tp, nfp):
    """Lock-step matching of groups with <= G gts each; step k matches every group's k-th detection.

    Per (area, threshold): candidates are unmatched gts with IoU >= t; take the non-ignored ones if
    any, else the ignored ones; pick the largest IoU, the last one on ties (lvis-api's loop).
    """
    nG = len(cnt)
    cols = np.arange(G)
    valid = cols < ng[:, None]  # (nG, G)
    gidx = np.where(valid, gs[:, None] + cols, 0)
    regular = (gt.ann_regular[gidx] & valid[:, :, None]).transpose(0, 2, 1)[:, :, None, :]  # (nG, A, 1, G)
    id_nz = gt.ann_id_nonzero[gidx] & valid  # (nG, G)
    matched = np.zeros((nG, _A, _T, G), dtype=bool)
    thr = _THR_EFF[:, None]  # (T, 1)
    last = len(iou) - 1
    for k in range(int(cnt[0])):
        na = int(np.searchsorted(-cnt, -k, "left"))  # groups with more than k detections
        r = start[:na] + k  # index into rel
        row = np.where(valid[:na], iou[np.minimum(pstart[rel[r]][:, None] + cols, last)], -1.0)  # (na, G)
        row4 = row[:, None, None, :]
        cand = (row4 >= thr) & ~matched[:na]  # (na, A, T, G)
        cand_reg = cand & regular[:na]
        has_reg = cand_reg.any(-1)  # (na, A, T)
        pool = np.where(has_reg[..., None], cand_reg, cand)
        hit = pool.any(-1)
        pick = G - 1 - np.argmax(np.where(pool, row4, -1.0)[..., ::-1], axis=-1)  # last of the largest
        sub = matched[:na]
        gi, ai, ti = np.nonzero(hit)
        sub[gi, ai, ti, pick[gi, ai, ti]] = True
        nz = id_nz[np.arange(na)[:, None, None], pick]
        tp[r] = has_reg & nz
        nfp[r] = hit & (nz | ~has_reg)


# ----------------------------------------------------------------------------- accumulation
_NEED_CACHE: Dict[int, np.ndarray] = {}


def _need_tps(num_gt: np.ndarray) -> np.ndarray:
    """(..., R): least true-positive count j with ``j / num_gt >= r`` per recall threshold (as float64)."""
    out = np.zeros(num_gt.shape + (_R,), dtype=np.int64)
    for v in np.unique(num_gt[num_gt > 0]).tolist():
        need = _NEED_CACHE.get(v)
        if need is None:
            need = _NEED_CACHE[v] = np.searchsorted(np.arange(v + 1, dtype=np.float64) / v, REC_THRS, side="left")
        out[num_gt == v] = need
    return out


def _accumulate(num_gt, cat, ign, rpos, tp_r, nfp_r):
    """Precision (T, R, K, A) and recall (T, K, A), equal to ``LVISEval.accumulate``'s.

    Inputs, all in accumulation order (category, score desc, image, input order):
      cat (N,) category index, non-decreasing; ign (N, A) ignored if unmatched;
      rpos (M,) increasing positions of the matchable detections; tp_r, nfp_r (M, A, T) (see _match).
    Every other detection is a false positive where not ignored.
    """
    K = num_gt.shape[0]
    N, M = len(cat), len(rpos)
    cstart = np.searchsorted(cat, np.arange(K + 1))
    # F[i, a]: not-ignored detections before position i -- false positives if none matched
    F = np.zeros((N + 1, _A), dtype=np.int64)
    np.cumsum(~ign, axis=0, out=F[1:])
    rcat = cat[rpos]
    rfirst = np.searchsorted(rcat, rcat, "left")  # first matchable detection of the same category
    # Gc: matched detections that F counted as false positives; Tc: true positives (cumulative)
    Gc = np.zeros((M + 1, _A, _T), dtype=np.int64)
    np.cumsum(nfp_r & ~ign[rpos][:, :, None], axis=0, out=Gc[1:])
    Tc = np.zeros((M + 1, _A, _T), dtype=np.int64)
    np.cumsum(tp_r, axis=0, out=Tc[1:])

    # one event per true positive (detection e, area a, threshold t)
    e, a, t = np.nonzero(tp_r)
    j = Tc[e + 1, a, t] - Tc[rfirst[e], a, t]
    fp = F[rpos[e] + 1, a] - F[cstart[rcat[e]], a] - (Gc[e + 1, a, t] - Gc[rfirst[e], a, t])
    tpf = j.astype(np.float64)
    pr = tpf / (fp.astype(np.float64) + tpf + _EPS)
    S = K * _A * _T
    seg = (rcat[e] * _A + a) * _T + t
    o = np.argsort(seg, kind="stable")  # events by (segment, position)
    seg, pr = seg[o], pr[o]
    # interpolated precision: maximum over the later true positives of the segment (exact, on ranks)
    uniq, code = np.unique(pr, return_inverse=True)
    U = len(uniq)
    code = code.astype(np.int64) + (S - seg) * U
    code = np.maximum.accumulate(code[::-1])[::-1] - (S - seg) * U
    env = uniq[code] if U else np.zeros(0)
    count = np.bincount(seg, minlength=S).reshape(K, _A, _T)
    first = (np.cumsum(count) - count.reshape(-1)).reshape(K, _A, _T)

    # precision at recall r: the interpolated precision of the need(r)-th true positive
    need = np.maximum(_need_tps(num_gt), 1)[:, :, None, :]  # (K, A, 1, R)  (need 0 -> index 0 -> first TP)
    inside = need <= count[..., None]  # (K, A, T, R)
    at = np.where(inside, first[..., None] + need - 1, 0)
    prec = np.where(inside, env[at] if len(env) else 0.0, 0.0)
    has_gt = (num_gt > 0)[:, :, None]
    prec = np.where(has_gt[..., None], prec, -1.0)
    with np.errstate(invalid="ignore", divide="ignore"):
        rec = np.where(has_gt, count / num_gt[:, :, None], -1.0)
    return prec.transpose(2, 3, 0, 1), rec.transpose(2, 0, 1)


def _mean_valid(s: np.ndarray) -> float:
    v = s[s > -1]
    return -1 if len(v) == 0 else np.mean(v)


def _summarize(precision, recall, freq_groups) -> "OrderedDict[str, float]":
    """``LVISEval.summarize``: means over the entries > -1 (-1 if none)."""
    t50 = np.where(0.50 == IOU_THRS)[0]
    t75 = np.where(0.75 == IOU_THRS)[0]
    out = OrderedDict()
    out["AP"] = _mean_valid(precision[:, :, :, [0]])
    out["AP50"] = _mean_valid(precision[t50][:, :, :, [0]])
    out["AP75"] = _mean_valid(precision[t75][:, :, :, [0]])
    for key, a in (("APs", 1), ("APm", 2), ("APl", 3)):
        out[key] = _mean_valid(precision[:, :, :, [a]])
    for key, grp in zip(("APr", "APc", "APf"), freq_groups):
        out[key] = _mean_valid(precision[:, :, grp, [0]])
    for key, a in zip(AR_KEYS, range(_A)):
        out[key] = _mean_valid(recall[:, :, [a]])
    return out
