"""tools/coco_to_lvis.py: the conversion, its exactness against pycocotools, and its input errors.

Exactness (issue 26): on an exhaustively labelled COCO-format set without crowd annotations and at
most 300 detections per image, LVIS AP of the converted files (tde_det's evaluator and lvis-api)
equals pycocotools' COCOeval AP of the original files with ``maxDets = [300]`` to 1e-12 -- AP,
AP50, AP75, APs/m/l, and APr/c/f against COCOeval's precision averaged over the same categories.
"""

import contextlib
import copy
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from helpers import REPO, load_script
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tde_det.data.coco_to_lvis import ConversionError, convert, convert_files
from tde_det.evaluation import run_lvis_api_eval, run_lvis_eval

# original category ids, listed out of order, with their number of training images: exactly on
# LVIS's frequency boundaries (10 r, 11 c, 100 c, 101 f), none (r), and a few
TRAIN_IMAGES = {31: 10, 7: 11, 120: 100, 2: 101, 58: 0, 900: 3}
EXPECTED_FREQUENCY = {31: "r", 7: "c", 120: "c", 2: "f", 58: "r", 900: "r"}
SIZE = 200


def _diamond(x, y, w, h):
    return [x + w / 2, y, x + w, y + h / 2, x + w / 2, y + h, x, y + h / 2]


def _annotation(ann_id, image_id, cat, box):
    x, y, w, h = box
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": box, "area": w * h / 2,
            "segmentation": [_diamond(x, y, w, h)], "iscrowd": 0}


def _random_box(rng):
    w, h = rng.uniform(8, 90, size=2)
    return [float(rng.uniform(0, SIZE - w)), float(rng.uniform(0, SIZE - h)), float(w), float(h)]


def _categories():
    return [{"id": c, "name": f"class {c}", "supercategory": "thing"} for c in TRAIN_IMAGES]


def make_train(rng):
    """101 images; category c in exactly TRAIN_IMAGES[c] of them."""
    images = [{"id": 1000 + i, "file_name": f"{1000 + i}.jpg", "height": SIZE, "width": SIZE} for i in range(101)]
    anns = []
    for cat, n in TRAIN_IMAGES.items():
        for img in rng.choice(101, size=n, replace=False):
            for _ in range(rng.randint(1, 3)):
                anns.append(_annotation(len(anns) + 1, 1000 + int(img), cat, _random_box(rng)))
    return {"images": images, "annotations": anns, "categories": _categories()}


def make_test(rng, num_images=40):
    """Test images (ids not contiguous; every 5th without annotations) and detections with COCO
    category ids: jittered ground truth and random false positives, scores on a 0.1 grid (ties),
    at most 300 per image; also a category (900) with detections but no ground truth."""
    images = [{"id": 7 * i + 3, "file_name": f"t{i}.jpg", "height": SIZE, "width": SIZE} for i in range(num_images)]
    anns, dets = [], []
    gt_cats = [c for c in TRAIN_IMAGES if c != 900]  # 58: no training image, but test ground truth
    for k, img in enumerate(images):
        if k % 5 != 0:
            for _ in range(rng.randint(1, 6)):
                anns.append(_annotation(len(anns) + 1, img["id"], int(rng.choice(gt_cats)), _random_box(rng)))
    for a in anns:
        for _ in range(rng.randint(0, 3)):
            box = [float(v + rng.uniform(-0.2, 0.2) * s) for v, s in zip(a["bbox"], a["bbox"][2:] * 2)]
            box[2], box[3] = max(box[2], 2.0), max(box[3], 2.0)
            dets.append({"image_id": a["image_id"], "category_id": a["category_id"], "bbox": box})
    for img in images:
        for _ in range(rng.randint(0, 12)):
            dets.append({"image_id": img["id"], "category_id": int(rng.choice(list(TRAIN_IMAGES))),
                         "bbox": _random_box(rng)})
    order = rng.permutation(len(dets))
    dets = [dets[i] for i in order]
    for d in dets:
        d["score"] = float(rng.randint(1, 10)) / 10
        x, y, w, h = d["bbox"]
        rle = mask_utils.merge(mask_utils.frPyObjects([_diamond(x, y, w, h)], SIZE, SIZE))
        d["segmentation"] = {"size": rle["size"], "counts": rle["counts"].decode()}
    return {"images": images, "annotations": anns, "categories": _categories()}, dets


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    rng = np.random.RandomState(0)
    train = make_train(rng)
    test, dets = make_test(rng)
    root = tmp_path_factory.mktemp("coco")
    paths = []
    for name, d in (("train.json", train), ("test.json", test)):
        paths.append(str(root / name))
        with open(paths[-1], "w") as f:
            json.dump(d, f)
    out = str(root / "lvis")
    convert_files(paths, out)
    return {"coco": paths, "lvis": [os.path.join(out, "train.json"), os.path.join(out, "test.json")],
            "train": train, "test": test, "dets": dets}


def _coco_metrics(gt_path, dets, iou_type, frequency):
    """COCOeval with maxDets [300]; AP, AP50, AP75, APs/m/l, and APr/c/f as the mean precision over
    the categories of each frequency group (`frequency`: COCO id -> r/c/f)."""
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        ev = COCOeval(gt, gt.loadRes(copy.deepcopy(dets)), iou_type)
        ev.params.maxDets = [300]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][..., 0]  # [iou, recall, category, area]

    def mean(s):
        s = s[s > -1]
        return float(np.mean(s)) if s.size else -1.0

    out = {"AP": mean(prec[..., 0]), "AP50": mean(prec[0, ..., 0]), "AP75": mean(prec[5, ..., 0]),
           "APs": mean(prec[..., 1]), "APm": mean(prec[..., 2]), "APl": mean(prec[..., 3])}
    for group in "rcf":
        ks = [k for k, c in enumerate(ev.params.catIds) if frequency[c] == group]
        out["AP" + group] = mean(prec[:, :, ks, 0])
    return out


# ----------------------------------------------------------------------------- the conversion
def test_categories_renumbered_by_original_id_with_lvis_frequencies(data):
    with open(data["lvis"][1]) as f:
        lvis = json.load(f)
    cats = lvis["categories"]
    assert [c["id"] for c in cats] == list(range(1, 7))
    assert [c["coco_id"] for c in cats] == sorted(TRAIN_IMAGES)
    assert {c["coco_id"]: c["frequency"] for c in cats} == EXPECTED_FREQUENCY
    assert {c["coco_id"]: c["image_count"] for c in cats} == TRAIN_IMAGES
    counts = {c: 0 for c in TRAIN_IMAGES}
    for a in data["train"]["annotations"]:
        counts[a["category_id"]] += 1
    assert {c["coco_id"]: c["instance_count"] for c in cats} == counts
    assert all(c["name"] == f"class {c['coco_id']}" and c["supercategory"] == "thing" for c in cats)
    with open(data["lvis"][0]) as f:
        assert json.load(f)["categories"] == cats  # the same table in every output


def test_images_get_federated_labels_of_an_exhaustive_data_set(data):
    with open(data["lvis"][1]) as f:
        lvis = json.load(f)
    new_id = {c["coco_id"]: c["id"] for c in lvis["categories"]}
    assert [a["id"] for a in lvis["annotations"]] == list(range(1, len(lvis["annotations"]) + 1))
    assert [(a["image_id"], new_id.get(a["category_id"]), a["bbox"]) for a in data["test"]["annotations"]] == \
        [(a["image_id"], a["category_id"], a["bbox"]) for a in lvis["annotations"]]
    present = {}
    for a in lvis["annotations"]:
        present.setdefault(a["image_id"], set()).add(a["category_id"])
    for img, orig in zip(lvis["images"], data["test"]["images"]):
        assert img["id"] == orig["id"] and img["coco_url"] == "./" + orig["file_name"]
        assert img["neg_category_ids"] == sorted(set(range(1, 7)) - present.get(img["id"], set()))
        assert img["not_exhaustive_category_ids"] == []


def test_crowd_annotation_becomes_a_not_exhaustive_class_of_its_image():
    train = {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10}],
             "annotations": [_annotation(5, 1, 4, [1, 1, 3, 3]), dict(_annotation(6, 1, 9, [2, 2, 5, 5]), iscrowd=1)],
             "categories": [{"id": 9, "name": "b"}, {"id": 4, "name": "a"}]}
    out, = convert([("train.json", train)])
    assert [(a["id"], a["category_id"]) for a in out["annotations"]] == [(1, 1)]  # crowd dropped
    assert out["images"][0]["not_exhaustive_category_ids"] == [2]
    assert out["images"][0]["neg_category_ids"] == []  # the crowd class is present, not verified absent
    assert [c["image_count"] for c in out["categories"]] == [1, 0]  # crowd not counted
    partial, = convert([("train.json", train)], partially_labelled=True)
    assert partial["images"][0]["neg_category_ids"] == []


def test_annotation_without_polygon_gets_its_box_and_a_note():
    train = _good()
    train["annotations"][0]["segmentation"] = []  # as labelling tools export boxes
    del train["annotations"][1]["segmentation"]
    notes = []
    out, = convert([("train.json", train)], notes=notes)
    assert [a["segmentation"] for a in out["annotations"]] == [[[1, 1, 4, 1, 4, 4, 1, 4]], [[2, 2, 6, 2, 6, 6, 2, 6]]]
    assert notes == ["train.json: 2 annotation(s) without a polygon get their box as polygon; box-only data: "
                     "train with MODEL.MASK_ON False (mask AP would score boxes)"]


def test_partially_labelled_leaves_neg_category_ids_empty(data):
    _, test = convert([(p, json.load(open(p))) for p in data["coco"]], partially_labelled=True)
    assert all(img["neg_category_ids"] == [] for img in test["images"])


# ----------------------------------------------------------------------------- exactness
@pytest.mark.parametrize("iou_type", ["bbox", "segm"])
def test_lvis_ap_of_converted_files_equals_cocoeval_ap_of_the_originals(data, iou_type):
    with open(data["lvis"][1]) as f:
        cats = json.load(f)["categories"]
    new_id = {c["coco_id"]: c["id"] for c in cats}
    frequency = {c["coco_id"]: c["frequency"] for c in cats}
    key = "segmentation" if iou_type == "segm" else "bbox"
    dets = [{"image_id": d["image_id"], "category_id": d["category_id"], key: d[key], "score": d["score"]}
            for d in data["dets"]]
    per_image = np.bincount([d["image_id"] for d in dets])
    assert per_image.max() <= 300 and len({d["score"] for d in dets}) < len(dets) / 10  # many ties
    lvis_dets = [dict(d, category_id=new_id[d["category_id"]]) for d in dets]

    coco = _coco_metrics(data["coco"][1], dets, iou_type, frequency)
    fast = run_lvis_eval(data["lvis"][1], lvis_dets, iou_type, 300).results
    api = run_lvis_api_eval(data["lvis"][1], lvis_dets, iou_type, 300).results
    assert all(coco[k] > 0 for k in ("AP", "APr", "APc", "APf"))  # every group is scored
    for k, v in coco.items():
        assert abs(fast[k] - v) <= 1e-12, (k, fast[k], v)
        assert abs(api[k] - v) <= 1e-12, (k, api[k], v)


def test_with_crowd_annotations_lvis_ap_can_only_rise(data, tmp_path):
    test = copy.deepcopy(data["test"])
    for a in test["annotations"][::4]:
        a["iscrowd"] = 1
    coco_path = tmp_path / "test.json"
    coco_path.write_text(json.dumps(test))
    _, converted = convert([(data["coco"][0], data["train"]), (str(coco_path), test)])
    lvis_path = tmp_path / "lvis.json"
    lvis_path.write_text(json.dumps(converted))
    new_id = {c["coco_id"]: c["id"] for c in converted["categories"]}
    frequency = {c["coco_id"]: c["frequency"] for c in converted["categories"]}
    dets = [{k: d[k] for k in ("image_id", "category_id", "bbox", "score")} for d in data["dets"]]
    coco = _coco_metrics(str(coco_path), dets, "bbox", frequency)
    lvis = run_lvis_eval(str(lvis_path), [dict(d, category_id=new_id[d["category_id"]]) for d in dets]).results
    assert lvis["AP"] > coco["AP"]  # the unmatched detections of a crowd's class in its image are ignored
    for k in ("AP50", "AP75", "APr", "APc", "APf"):
        assert lvis[k] >= coco[k] - 1e-12, k


# ----------------------------------------------------------------------------- bad input
def _good():
    return {"images": [{"id": 1, "file_name": "a.jpg", "height": 10, "width": 10},
                       {"id": 2, "file_name": "b.jpg", "height": 10, "width": 10}],
            "annotations": [_annotation(1, 1, 3, [1, 1, 3, 3]), _annotation(2, 2, 5, [2, 2, 4, 4])],
            "categories": [{"id": 5, "name": "b"}, {"id": 3, "name": "a"}]}


def _missing_annotations(d):
    del d["annotations"]


def _no_bbox(d):
    del d["annotations"][1]["bbox"]


def _undefined_category(d):
    d["annotations"][1]["category_id"] = 77


def _undefined_image(d):
    d["annotations"][0]["image_id"] = 99


def _duplicate_image(d):
    d["images"][1]["id"] = 1


def _duplicate_category(d):
    d["categories"][1]["id"] = 5


def _duplicate_annotation(d):
    d["annotations"][1]["id"] = 1


def _zero_width(d):
    d["annotations"][1]["bbox"][2] = 0


def _negative_height(d):
    d["annotations"][0]["bbox"][3] = -2.5


BAD = {  # case -> (edit of a good json, what the error line must say)
    "missing key": (_missing_annotations, "missing key 'annotations'"),
    "missing bbox": (_no_bbox, "annotations[1] (id 2) has no 'bbox'"),
    "undefined category": (_undefined_category, "annotations[1] (id 2) has category_id 77"),
    "undefined image": (_undefined_image, "annotations[0] (id 1) has image_id 99"),
    "duplicate image id": (_duplicate_image, "duplicate image id 1 (images[0] and images[1])"),
    "duplicate category id": (_duplicate_category, "duplicate category id 5 (categories[0] and categories[1])"),
    "duplicate annotation id": (_duplicate_annotation, "duplicate annotation id 1"),
    "zero-width box": (_zero_width, "annotations[1] (id 2) has bbox [2, 2, 0, 4]"),
    "negative box": (_negative_height, "annotations[0] (id 1) has bbox [1, 1, 3, -2.5]"),
}


@pytest.fixture(scope="module")
def tool():
    return load_script("tools/coco_to_lvis.py")


def _run_tool(tool, capsys, argv):
    with pytest.raises(SystemExit) as e:
        tool.main(argv)
    captured = capsys.readouterr()
    return e.value.code, captured.err


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_json_is_one_error_line_and_nothing_written(tool, capsys, tmp_path, case):
    edit, expected = BAD[case]
    train, val = tmp_path / "train.json", tmp_path / "val.json"
    train.write_text(json.dumps(_good()))
    bad = _good()
    edit(bad)
    val.write_text(json.dumps(bad))  # the second file is the bad one: the first is not written either
    out = tmp_path / "out"
    code, err = _run_tool(tool, capsys, [str(train), str(val), "--output-dir", str(out)])
    assert code == 2
    assert err.count("\n") == 1 and err.startswith(f"error: {val}: ") and expected in err, err
    assert not out.exists()


@pytest.mark.parametrize("content, expected", [(None, "cannot read it"), ("{\"images\": [", "not valid JSON")])
def test_unreadable_json_is_one_error_line(tool, capsys, tmp_path, content, expected):
    path = tmp_path / "train.json"
    if content is not None:
        path.write_text(content)
    code, err = _run_tool(tool, capsys, [str(path), "--output-dir", str(tmp_path / "out")])
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {path}: {expected}"), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rare, common", [(20, 5), (10, 10), (-1, 100)])
def test_nonsense_thresholds_are_one_error_line(tool, capsys, tmp_path, rare, common):
    path = tmp_path / "train.json"
    path.write_text(json.dumps(_good()))
    code, err = _run_tool(tool, capsys, [str(path), "--output-dir", str(tmp_path / "out"),
                                         "--rare-max-images", str(rare), "--common-max-images", str(common)])
    assert code == 2 and err.count("\n") == 1 and "make no sense" in err, err
    assert not (tmp_path / "out").exists()


def test_other_vocabulary_in_a_later_file_is_an_error(tmp_path):
    other = _good()
    other["categories"][0]["name"] = "renamed"
    with pytest.raises(ConversionError, match=r"val.json: its categories differ from train.json's \(e.g. id 5"):
        convert([("train.json", _good()), ("val.json", other)])


def test_command_line_converts_and_reports_the_groups(tmp_path):
    """The real command: exit 0 and one summary line per file; then a bad file: exit 2, one line."""
    path = tmp_path / "train.json"
    path.write_text(json.dumps(_good()))
    env = dict(os.environ, OMP_NUM_THREADS="1")
    tool = [sys.executable, os.path.join(REPO, "tools", "coco_to_lvis.py")]
    ok = subprocess.run(tool + [str(path), "--output-dir", str(tmp_path / "out")], capture_output=True, text=True,
                        env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout == f"{tmp_path / 'out' / 'train.json'}: 2 images, 2 annotations, 2 categories " \
                        "(rare 2, common 0, frequent 0)\n"
    assert ok.stderr == ""
    bad = _good()
    bad["annotations"][0]["bbox"][2] = 0
    path.write_text(json.dumps(bad))
    proc = subprocess.run(tool + [str(path), "--output-dir", str(tmp_path / "out2")], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [f"error: {path}: annotations[0] (id 1) has bbox [1, 1, 0, 3]: width and "
                                        "height must be > 0."]
    assert not (tmp_path / "out2").exists()
