"""tde_det's fast LVIS evaluation against lvis-api 0.5.3 itself, Fixed AP by hand, the evaluator.

Exactness: generated LVIS-format data (tde_det.evaluation.synthetic) with every case the LVIS
protocol treats specially is evaluated by lvis-api's LVISEval and by fast_lvis; every metric must
agree within 1e-6 (the precision / recall arrays too), for bbox and segm.
"""

import copy
import json
import math
import warnings

import numpy as np
import pytest
import torch

from lvis import LVIS
from lvis.eval import Params

from tde_det.evaluation import fast_lvis
from tde_det.evaluation.fast_lvis import AP_KEYS, METRIC_KEYS, evaluate, prepare_gt, run_lvis_api_eval, run_lvis_eval
from tde_det.evaluation.synthetic import make_synthetic_lvis


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    """(gt json path, lvis.LVIS, gt dict, results): 24 images, 30 categories, ties, > 300 dets on some images."""
    gt, results = make_synthetic_lvis(
        num_images=24, num_cats=30, dets_per_image=(0, 330), seed=3, cat_id_step=3,
        first_ann_id=0, num_ignored_gt=4, score_decimals=2,
    )
    gt["annotations"][5]["area"] = 0.0  # lvis-api drops it
    no_dets = {img["id"] for img in gt["images"][:3]}  # images without detections
    silent = {a["category_id"] for a in gt["annotations"][:2]}  # annotated categories without detections
    results = [r for r in results if r["image_id"] not in no_dets and r["category_id"] not in silent]
    path = tmp_path_factory.mktemp("lvis") / "gt.json"
    path.write_text(json.dumps(gt))
    return str(path), LVIS(str(path)), gt, results


def _assert_same(ours: fast_lvis.LVISEvalResult, ref: fast_lvis.LVISEvalResult):
    assert list(ours.results) == list(ref.results)
    for k, v in ref.results.items():
        assert abs(ours.results[k] - v) <= 1e-6, (k, ours.results[k], v)
    np.testing.assert_allclose(ours.precision, ref.precision, rtol=0, atol=1e-6)
    np.testing.assert_allclose(ours.recall, ref.recall, rtol=0, atol=1e-6)
    a, b = ours.per_category_ap(), ref.per_category_ap()
    assert a.keys() == b.keys()
    np.testing.assert_allclose(list(a.values()), list(b.values()), rtol=0, atol=1e-6)


# ----------------------------------------------------------------------------- exactness
def test_protocol_constants_are_lvis_apis():
    p = Params("bbox")
    assert np.array_equal(fast_lvis.IOU_THRS, p.iou_thrs)
    assert np.array_equal(fast_lvis.REC_THRS, p.rec_thrs)
    assert np.array_equal(fast_lvis.AREA_RNGS, np.array(p.area_rng, dtype=np.float64))
    assert list(fast_lvis.AREA_LABELS) == p.area_rng_lbl and list(fast_lvis.FREQ_LABELS) == p.img_count_lbl


def test_generated_data_covers_the_special_cases(synth):
    """Guards the exactness tests below: the generated set must keep exercising every case."""
    _, _, gt, results = synth
    per_img = {}
    for r in results:
        per_img[r["image_id"]] = per_img.get(r["image_id"], 0) + 1
    assert max(per_img.values()) > 300  # per-image cap applies
    assert len(per_img) < len(gt["images"])  # images without detections
    freqs = {c["frequency"] for c in gt["categories"]}
    assert freqs == {"r", "c", "f"}
    annotated = {a["category_id"] for a in gt["annotations"]}
    detected = {r["category_id"] for r in results}
    assert annotated - detected  # annotated categories without detections
    assert detected - annotated  # detections of categories never annotated
    assert any(img["neg_category_ids"] for img in gt["images"])
    assert any(img["not_exhaustive_category_ids"] for img in gt["images"])
    scores = [r["score"] for r in results]
    assert len(set(scores)) < len(scores)  # score ties
    assert any(len(a["segmentation"]) > 1 for a in gt["annotations"])  # multi-polygon masks
    assert any(a.get("ignore") for a in gt["annotations"]) and any(a["id"] == 0 for a in gt["annotations"])
    # detections on images where their category is neither annotated nor negative (filtered out)
    evaluated = {(img["id"], c) for img in gt["images"] for c in img["neg_category_ids"]}
    evaluated |= {(a["image_id"], a["category_id"]) for a in gt["annotations"]}
    assert any((r["image_id"], r["category_id"]) not in evaluated for r in results)


@pytest.mark.parametrize(
    "iou_type,variant",
    [
        ("bbox", "boxes"),  # results with bbox only
        ("bbox", "masks"),  # mask-style results: lvis-api takes their box from the RLE
        ("segm", "masks"),  # Detectron2's segm input: no bbox, area = mask area
        ("segm", "boxes+masks"),  # bbox present: lvis-api uses the box area for the area ranges
    ],
)
def test_matches_lvis_api(synth, iou_type, variant):
    path, lvis_gt, gt, results = synth
    if variant == "boxes":
        results = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    elif variant == "masks":
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    before = copy.deepcopy(results)
    ref = run_lvis_api_eval(lvis_gt, results, iou_type)
    for gt_input in (path, lvis_gt, gt):
        _assert_same(run_lvis_eval(gt_input, results, iou_type), ref)
    assert results == before  # inputs are not modified
    assert list(evaluate(path, results, iou_type)) == list(METRIC_KEYS)
    assert all(ref.results[k] > 0 for k in ("AP", "APr", "APc", "APf", "AR@300"))  # not a trivial case


def _uncompressed_rle(rle):
    """The same mask as an uncompressed RLE ({"size", "counts": [int, ...]}, column-major runs from 0s)."""
    import pycocotools.mask as mask_utils

    flat = mask_utils.decode(rle).ravel(order="F")
    change = np.flatnonzero(np.diff(flat)) + 1
    runs = np.diff(np.r_[0, change, len(flat)]).tolist()
    return {"size": list(rle["size"]), "counts": ([0] if flat[0] else []) + runs}


def test_matches_lvis_api_with_other_result_mask_formats(synth):
    """segm with box-style results whose masks are polygons, uncompressed RLE, or absent (box polygon)."""
    _, lvis_gt, _, results = synth
    mixed = []
    for n, r in enumerate(results):
        r = dict(r)
        if n % 4 == 1:
            x, y, w, h = r["bbox"]
            r["segmentation"] = [[x, y + h / 2, x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h]]
        elif n % 4 == 2:
            r["segmentation"] = _uncompressed_rle(r["segmentation"])
        elif n % 4 == 3:
            del r["segmentation"]
        mixed.append(r)
    _assert_same(run_lvis_eval(lvis_gt, mixed, "segm"), run_lvis_api_eval(lvis_gt, mixed, "segm"))


def test_matches_lvis_api_with_another_cap_and_mask_area(synth):
    _, lvis_gt, _, results = synth
    _assert_same(run_lvis_eval(lvis_gt, results, "bbox", max_dets=40), run_lvis_api_eval(lvis_gt, results, "bbox", max_dets=40))
    # use_mask_area=True: as if "bbox" were removed, what Detectron2 does for segm
    no_box = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    ours = run_lvis_eval(lvis_gt, results, "segm", use_mask_area=True)
    _assert_same(ours, run_lvis_eval(lvis_gt, no_box, "segm"))


def test_fixed_ap_matches_dave_et_al_procedure_on_lvis_api(synth):
    """Fixed AP = per-category top-k then lvis-api without per-image cap (scripts/evaluate_ap_fixed.py)."""
    _, lvis_gt, _, results = synth
    for iou_type in ("bbox", "segm"):
        ours = run_lvis_eval(lvis_gt, results, iou_type, max_dets_per_cat=60)
        _assert_same(ours, run_lvis_api_eval(lvis_gt, results, iou_type, max_dets_per_cat=60))
    out = evaluate(lvis_gt, results, "bbox", fixed_ap=True, max_dets_per_cat=60)
    assert list(out) == list(METRIC_KEYS) + [k + "_fixed" for k in AP_KEYS]
    ours = run_lvis_eval(lvis_gt, results, "bbox", max_dets_per_cat=60)
    assert all(out[k + "_fixed"] == ours.results[k] for k in AP_KEYS)


# ----------------------------------------------------------------------------- Fixed AP by hand
def _tiny_gt(cats, images, anns):
    return {
        "images": [{"id": i, "height": 100, "width": 100, "neg_category_ids": [], "not_exhaustive_category_ids": []} for i in images],
        "categories": [{"id": c, "name": f"c{c}", "frequency": f} for c, f in cats],
        "annotations": [{"id": n + 1, "image_id": i, "category_id": c, "bbox": b, "area": b[2] * b[3]} for n, (i, c, b) in enumerate(anns)],
    }


def _det(img, cat, box, score):
    return {"image_id": img, "category_id": cat, "bbox": box, "score": score}


def test_fixed_ap_hand_worked_cap_per_category():
    """One category, a gt on each of two images; detections TP 0.9, FP 0.8, TP 0.7 (IoU 1 or 0).

    Top 2 per category: TP, FP -> precision 1 up to recall 0.5, nothing beyond:
        AP = 51 / 101 (recall thresholds 0.00 .. 0.50).
    Top 3: the third detection reaches recall 1 at precision 2/3:
        AP = (51 * 1 + 50 * 2/3) / 101.
    """
    box, far = [10, 10, 30, 30], [60, 60, 20, 20]
    gt = _tiny_gt([(1, "f")], [1, 2], [(1, 1, box), (2, 1, box)])
    dets = [_det(1, 1, box, 0.9), _det(2, 1, far, 0.8), _det(2, 1, box, 0.7)]
    top2 = evaluate(gt, dets, fixed_ap=True, max_dets_per_cat=2)
    assert top2["AP_fixed"] == pytest.approx(51 / 101, abs=1e-12)
    assert top2["APf_fixed"] == pytest.approx(51 / 101, abs=1e-12)
    assert top2["APr_fixed"] == -1 and top2["APc_fixed"] == -1  # no such categories
    top3 = evaluate(gt, dets, fixed_ap=True, max_dets_per_cat=3)
    assert top3["AP_fixed"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    assert top3["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)  # standard: 3 dets, cap 300


def test_fixed_ap_hand_worked_no_per_image_cap():
    """Category A (rare) has one perfect detection at score 0.1; category B (frequent) has a perfect
    detection at 0.99 and 300 misses at 0.2..0.5 on the same image.

    Standard AP (300 per image): A's detection is cut -> AP_A = 0, AP_B = 1 -> AP = 0.5, APr = 0.
    Fixed AP (no per-image cap): A's detection counts -> AP_A = 1, AP_B = 1 -> AP = 1, APr = 1.
    """
    gt = _tiny_gt([(1, "r"), (2, "f")], [7], [(7, 1, [5, 5, 20, 20]), (7, 2, [50, 50, 30, 30])])
    dets = [_det(7, 1, [5, 5, 20, 20], 0.1), _det(7, 2, [50, 50, 30, 30], 0.99)]
    dets += [_det(7, 2, [0, 60, 10, 10], 0.2 + 0.001 * i) for i in range(300)]
    out = evaluate(gt, dets, fixed_ap=True)
    # (lvis-api's precision is tp / (fp + tp + eps): 1 - 2e-16 for a perfect ranking)
    assert [out[k] for k in ("AP", "APr", "APf")] == pytest.approx([0.5, 0.0, 1.0], abs=1e-12)
    assert [out[k] for k in ("AP_fixed", "APr_fixed", "APf_fixed")] == pytest.approx([1.0, 1.0, 1.0], abs=1e-12)


def test_equal_iou_goes_to_the_later_gt_as_in_lvis_api(tmp_path):
    """gts A = [0,0,10,10], B = [2,0,10,10]; det1 [1,0,10,10] (0.9) has IoU 90/110 with both, det2
    [-3,0,10,10] (0.8) has IoU 70/130 = 0.54 with A, 1/3 with B. lvis-api gives det1 the LATER gt, B,
    so det2 matches A at IoU 0.50: AP@0.5 = 1, AP@0.55..0.80 = 51/101 (recall 0.5), 0 above 0.818.
    """
    gt = _tiny_gt([(1, "c")], [1], [(1, 1, [0, 0, 10, 10]), (1, 1, [2, 0, 10, 10])])
    dets = [_det(1, 1, [1, 0, 10, 10], 0.9), _det(1, 1, [-3, 0, 10, 10], 0.8)]
    out = evaluate(gt, dets)
    assert out["AP"] == pytest.approx((1 + 6 * 51 / 101) / 10, abs=1e-12)
    assert out["AP50"] == pytest.approx(1.0, abs=1e-12)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    _assert_same(run_lvis_eval(gt, dets), run_lvis_api_eval(str(path), dets))


def test_a_non_ignored_gt_is_preferred_to_a_better_ignored_one(tmp_path):
    """gt A = [0,0,10,10] and ignored gt B = [1,0,10,10]; one detection [1,0,10,10] (IoU 1 with B,
    90/110 = 0.818 with A). lvis-api matches A while IoU >= t (t <= 0.80: AP 1), else B, which
    makes the detection ignored (t >= 0.85: no TP, no FP, AP 0): AP = 7/10.
    """
    gt = _tiny_gt([(1, "r")], [1], [(1, 1, [0, 0, 10, 10]), (1, 1, [1, 0, 10, 10])])
    gt["annotations"][1]["ignore"] = 1
    dets = [_det(1, 1, [1, 0, 10, 10], 0.9)]
    out = evaluate(gt, dets)
    assert out["AP"] == pytest.approx(0.7, abs=1e-12) and out["AR@300"] == pytest.approx(0.7, abs=1e-12)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    _assert_same(run_lvis_eval(gt, dets), run_lvis_api_eval(str(path), dets))


# ----------------------------------------------------------------------------- small cases, errors
def test_empty_results_and_prepared_gt_reuse(synth):
    path, _, gt, results = synth
    empty = evaluate(gt, [], "bbox")
    assert empty["AP"] == 0.0 and empty["AR@300"] == 0.0  # lvis-api itself cannot take an empty list
    prepared = prepare_gt(path)
    assert evaluate(prepared, results, "segm") == evaluate(gt, results, "segm")


def test_bad_inputs_give_clear_errors(synth, tmp_path):
    path, _, gt, results = synth
    with pytest.raises(FileNotFoundError, match="not found"):
        evaluate(str(tmp_path / "missing.json"), results)
    with pytest.raises(FileNotFoundError, match="results json not found"):
        evaluate(path, str(tmp_path / "missing_results.json"))
    with pytest.raises(ValueError, match="iou_type"):
        evaluate(path, results, "keypoints")
    with pytest.raises(ValueError, match="image_id not among the ground-truth images"):
        evaluate(gt, results + [dict(results[0], image_id=-5)])
    with pytest.raises(ValueError, match="category_id not among"):
        evaluate(gt, results + [dict(results[0], category_id=0)])
    with pytest.raises(ValueError, match="lacks 'score'"):
        evaluate(gt, [{k: v for k, v in results[0].items() if k != "score"}])
    with pytest.raises(ValueError, match="non-finite score"):
        evaluate(gt, [dict(results[0], score=float("nan"))])
    with pytest.raises(TypeError, match="list of dicts"):
        evaluate(gt, {"image_id": 1})
    annotated = {(a["image_id"], a["category_id"]) for a in gt["annotations"]}
    evaluated = next(r for r in results if (r["image_id"], r["category_id"]) in annotated)
    with pytest.raises(ValueError, match=r"\[x, y, width, height\]"):
        evaluate(gt, [dict(evaluated, bbox=[1, 2, 3])])
    bad = copy.deepcopy(gt)
    del bad["categories"][0]["frequency"]
    with pytest.raises(ValueError, match="frequency"):
        evaluate(bad, results)
    bad = copy.deepcopy(gt)
    del bad["images"][0]["neg_category_ids"]
    with pytest.raises(ValueError, match="neg_category_ids"):
        evaluate(bad, results)
    with pytest.raises(ValueError, match="no 'annotations'"):
        evaluate({"images": [], "categories": []}, results)
    with pytest.raises(ValueError, match="max_dets_per_cat"):
        evaluate(gt, results, fixed_ap=True, max_dets_per_cat=0)


def test_id_lookup_follows_dict_semantics():
    index = fast_lvis._IdIndex([3, 10, 400])
    objs = [{"i": 10}, {"i": 3.0}, {"i": 5}, {"i": np.int64(400)}]
    assert index.lookup(objs, "i").tolist() == [1, 0, -1, 2]
    assert index.lookup([{"i": "10"}, {"i": 3}], "i").tolist() == [-1, 0]  # a string is not the id 10
    big = fast_lvis._IdIndex([-2, 10**12])  # sparse / negative ids: sorted search
    assert big.lookup([{"i": 10**12}, {"i": -2}, {"i": 0}], "i").tolist() == [1, 0, -1]


def test_box_iou_is_pycocotools_bit_for_bit():
    import pycocotools.mask as mask_utils

    rng = np.random.default_rng(0)
    d = np.round(rng.uniform(0, 50, (200, 4)), 3)
    g = np.round(rng.uniform(0, 50, (7, 4)), 3)
    ref = mask_utils.iou(d.tolist(), g.tolist(), [0] * len(g))
    dd, gg = np.repeat(d, len(g), 0), np.tile(g, (len(d), 1))
    ours = fast_lvis._bbox_iou(dd, gg).reshape(len(d), len(g))
    assert np.array_equal(ours, ref)


# ----------------------------------------------------------------------------- Detectron2 evaluator
def _d2_predictions(gt, results):
    """Detectron2 model inputs / outputs carrying the given LVIS results (masks decoded)."""
    import pycocotools.mask as mask_utils
    import torch
    from detectron2.structures import Boxes, Instances

    by_img = {img["id"]: [] for img in gt["images"]}
    for r in results:
        by_img[r["image_id"]].append(r)
    pairs = []
    for img in gt["images"]:
        h, w, dets = img["height"], img["width"], by_img[img["id"]]
        inst = Instances((h, w))
        boxes = torch.tensor([r["bbox"] for r in dets], dtype=torch.float32).reshape(-1, 4)
        inst.pred_boxes = Boxes(torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], 1))
        inst.scores = torch.tensor([r["score"] for r in dets], dtype=torch.float32)
        inst.pred_classes = torch.tensor([r["category_id"] - 1 for r in dets], dtype=torch.int64)
        masks = [mask_utils.decode(r["segmentation"]) for r in dets]
        inst.pred_masks = torch.from_numpy(np.stack(masks) if masks else np.zeros((0, h, w), np.uint8)).bool()
        pairs.append(({"image_id": img["id"], "height": h, "width": w}, {"instances": inst}))
    return pairs


def _run(evaluator, pairs):
    evaluator.reset()
    for inp, out in pairs:
        evaluator.process([inp], [out])
    return evaluator.evaluate()


# Detectron2's own LVISEvaluator (the reference here) calls np.array(<mask tensor>) per detection,
# which numpy 2 warns about (torch's Tensor.__array__ takes no `copy`); FastLVISEvaluator avoids it.
@pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning:detectron2.evaluation.coco_evaluation"
)
def test_evaluator_gives_detectron2_lvis_evaluators_results(tmp_path):
    from detectron2.data import MetadataCatalog
    from detectron2.evaluation import LVISEvaluator
    from detectron2.evaluation import lvis_evaluation

    from tde_det.evaluation import FastLVISEvaluator, lvis_numpy_aliases

    gt, results = make_synthetic_lvis(num_images=10, num_cats=12, dets_per_image=(0, 40), seed=5, image_size=(40, 90))
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    name = f"tde_test_fast_lvis_{tmp_path.name}"
    classes = [c["name"] for c in sorted(gt["categories"], key=lambda c: c["id"])]
    MetadataCatalog.get(name).set(json_file=str(path), thing_classes=classes, evaluator_type="lvis")
    pairs = _d2_predictions(gt, results)
    original = lvis_evaluation._evaluate_predictions_on_lvis

    with lvis_numpy_aliases():  # lvis-api through Detectron2, as the README tells users to run it
        ref = _run(LVISEvaluator(name, distributed=False), pairs)
    fast = _run(FastLVISEvaluator(name, distributed=False, fixed_ap=True), pairs)
    api = _run(FastLVISEvaluator(name, distributed=False, fixed_ap=True, backend="lvis-api"), pairs)
    assert lvis_evaluation._evaluate_predictions_on_lvis is original  # patch undone
    assert all(torch.is_tensor(out["instances"].pred_masks) for _, out in pairs)  # callers' outputs untouched

    assert set(fast) == set(ref) == {"bbox", "segm"}
    for task in ("bbox", "segm"):
        assert all(fast[task][k] == pytest.approx(ref[task][k], abs=1e-4) for k in ref[task])
        assert list(fast[task]) == list(api[task])
        np.testing.assert_allclose(list(fast[task].values()), list(api[task].values()), rtol=0, atol=1e-4)
        expected = list(AP_KEYS) + ["AR@300"] + [k + "_fixed" for k in AP_KEYS] + ["AP-" + c for c in classes]
        assert list(fast[task]) == expected
        assert fast[task]["AP"] > 0 and fast[task]["AR@300"] > 0
        # per-category AP averages to AP over the categories with ground truth
        per_cat = [v for k, v in fast[task].items() if k.startswith("AP-") and not math.isnan(v)]
        assert np.mean(per_cat) == pytest.approx(fast[task]["AP"], abs=1e-6)


def test_evaluator_process_warns_nothing(tmp_path):
    """Detectron2's per-mask np.array(<tensor>) warns on numpy 2; FastLVISEvaluator hands it numpy masks."""
    from detectron2.data import MetadataCatalog

    from tde_det.evaluation import FastLVISEvaluator

    gt, results = make_synthetic_lvis(num_images=3, num_cats=4, dets_per_image=(2, 5), seed=1, image_size=(30, 40))
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    name = f"tde_test_fast_lvis_warn_{tmp_path.name}"
    MetadataCatalog.get(name).set(json_file=str(path), thing_classes=[c["name"] for c in gt["categories"]])
    evaluator = FastLVISEvaluator(name, distributed=False)
    evaluator.reset()
    pairs = _d2_predictions(gt, results)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for inp, out in pairs:
            evaluator.process([inp], [out])
    assert [str(w.message) for w in caught] == []
    assert sum(len(p["instances"]) for p in evaluator._predictions) == len(results)
    assert all("segmentation" in d for p in evaluator._predictions for d in p["instances"])


def test_build_lvis_evaluator_reads_the_config(tmp_path):
    from detectron2.config import get_cfg
    from detectron2.data import MetadataCatalog

    from tde_det import add_tde_config
    from tde_det.evaluation import FastLVISEvaluator, build_lvis_evaluator

    gt, _ = make_synthetic_lvis(num_images=2, num_cats=4, dets_per_image=(0, 0), masks=False)
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    name = f"tde_test_build_lvis_{tmp_path.name}"
    MetadataCatalog.get(name).set(json_file=str(path), evaluator_type="lvis")

    cfg = get_cfg()
    with pytest.raises(KeyError, match="add_tde_config"):
        build_lvis_evaluator(cfg, name)
    add_tde_config(cfg)
    ev = build_lvis_evaluator(cfg, name, str(tmp_path))
    assert isinstance(ev, FastLVISEvaluator) and ev._backend == "fast" and not ev._fixed_ap
    assert ev._max_dets_per_image == cfg.TEST.DETECTIONS_PER_IMAGE
    cfg.TEST.LVIS_EVAL.BACKEND, cfg.TEST.LVIS_EVAL.FIXED_AP = "lvis-api", True
    ev = build_lvis_evaluator(cfg, name)
    assert ev._backend == "lvis-api" and ev._fixed_ap
    cfg.TEST.LVIS_EVAL.BACKEND = "lvisapi"
    with pytest.raises(ValueError, match="BACKEND"):
        build_lvis_evaluator(cfg, name)
