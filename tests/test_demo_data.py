"""The generated long-tailed demo set, its registration, the LVIS file checks and the demo backbone."""

import filecmp
import json
import os

import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_lvis_instances
from detectron2.layers import ShapeSpec

from tde_det.data import (
    DEMO_SPEC,
    TINY_SPEC,
    DatasetFilesMissing,
    ensure_generated,
    lvis_frequency,
    prepare_dataset,
    register_demo_lt,
)
from tde_det.data import checks
from tde_det.data.demo_lt import is_generated
from tde_det.modeling.backbone import build_small_resnet_fpn_backbone

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    return ensure_generated(str(tmp_path_factory.mktemp("demo") / "tiny"), TINY_SPEC)


def _load(root, split):
    with open(os.path.join(root, "annotations", f"demo_lt_{split}.json")) as f:
        return json.load(f)


def test_lvis_frequency_rule():
    assert [lvis_frequency(n) for n in (1, 10, 11, 100, 101, 5000)] == ["r", "r", "c", "c", "f", "f"]


def test_demo_spec_has_all_three_groups_well_populated():
    counts = DEMO_SPEC.train_image_counts()
    assert 40 <= len(counts) <= 60 and len(DEMO_SPEC.class_names) == len(set(DEMO_SPEC.class_names)) == len(counts)
    groups = [lvis_frequency(n) for n in counts]
    assert {g: groups.count(g) for g in "rcf"} == {"r": 15, "c": 20, "f": 13}
    # every group has >= 10 val images per class
    assert min(DEMO_SPEC.val_image_counts()) >= 10


def test_json_is_lvis_format_with_frequencies_from_train(tiny_root):
    train, val = _load(tiny_root, "train"), _load(tiny_root, "val")
    cats = train["categories"]
    assert [c["id"] for c in cats] == list(range(1, len(TINY_SPEC.class_names) + 1))
    assert [c["name"] for c in cats] == TINY_SPEC.class_names
    assert val["categories"] == cats  # as in LVIS: val carries the train statistics
    # recount from the annotations
    for c in cats:
        anns = [a for a in train["annotations"] if a["category_id"] == c["id"]]
        n_img = len({a["image_id"] for a in anns})
        assert c["image_count"] == n_img and c["instance_count"] == len(anns)
        assert c["frequency"] == ("r" if n_img <= 10 else "c" if n_img <= 100 else "f")
    assert {c["frequency"] for c in cats} == {"r", "c", "f"}
    # every group present in val
    freq = {c["id"]: c["frequency"] for c in cats}
    assert {freq[a["category_id"]] for a in val["annotations"]} == {"r", "c", "f"}
    # some class has more instances than images
    assert any(c["instance_count"] > c["image_count"] for c in cats)


def test_images_negatives_boxes_and_masks_are_consistent(tiny_root):
    data = _load(tiny_root, "val")
    num_classes = len(data["categories"])
    by_image = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    assert len({a["id"] for a in data["annotations"]}) == len(data["annotations"])
    for img in data["images"]:
        split, name = img["coco_url"].split("/")[-2:]
        assert split == "val" and os.path.isfile(os.path.join(tiny_root, split, name))
        present = {a["category_id"] for a in by_image.get(img["id"], [])}
        assert sorted(img["neg_category_ids"]) == sorted(set(range(1, num_classes + 1)) - present)
        assert img["not_exhaustive_category_ids"] == []
        for a in by_image.get(img["id"], []):
            x, y, w, h = a["bbox"]
            assert 0 <= x and 0 <= y and x + w <= img["width"] and y + h <= img["height"] and w > 4 and h > 4
            poly = np.array(a["segmentation"][0]).reshape(-1, 2)
            assert np.allclose(poly.min(0), [x, y], atol=0.02) and np.allclose(poly.max(0), [x + w, y + h], atol=0.02)
            rle = mask_util.merge(mask_util.frPyObjects(a["segmentation"], img["height"], img["width"]))
            assert a["area"] == pytest.approx(float(mask_util.area(rle)))
            assert 0.25 * w * h < a["area"] <= w * h + 1e-6


def test_generation_is_deterministic_and_cached(tiny_root, tmp_path):
    other = ensure_generated(str(tmp_path / "again"), TINY_SPEC)
    for split in ("train", "val"):
        assert _load(tiny_root, split) == _load(other, split)
        names = sorted(os.listdir(os.path.join(tiny_root, split)))
        match, mismatch, errors = filecmp.cmpfiles(
            os.path.join(tiny_root, split), os.path.join(other, split), names, shallow=False
        )
        assert not mismatch and not errors and len(match) == len(names) > 0
    # a second call does not regenerate
    stamp = os.path.getmtime(os.path.join(other, "SPEC.json"))
    ensure_generated(other, TINY_SPEC)
    assert os.path.getmtime(os.path.join(other, "SPEC.json")) == stamp
    # no temporary directories left behind
    assert sorted(os.listdir(tmp_path)) == ["again"]


def test_changed_spec_or_incomplete_cache_regenerates(tmp_path):
    root = str(tmp_path / "d")
    os.makedirs(os.path.join(root, "train"))  # an interrupted, spec-less directory
    assert not is_generated(root, TINY_SPEC)
    ensure_generated(root, TINY_SPEC)
    assert is_generated(root, TINY_SPEC)
    other = TINY_SPEC.__class__(**{**TINY_SPEC.__dict__, "seed": 7})
    assert not is_generated(root, other)
    ensure_generated(root, other)
    assert is_generated(root, other) and not is_generated(root, TINY_SPEC)


def test_generating_without_opencv_says_how_to_get_it(tmp_path, monkeypatch):
    """OpenCV is not a requirement of setup.py (as in Detectron2); only the demo images need it."""
    from tde_det.data import demo_lt

    monkeypatch.setattr(demo_lt, "cv2", None)
    monkeypatch.setattr(demo_lt, "_CV2_ERROR", ImportError("No module named 'cv2'"), raising=False)
    with pytest.raises(ImportError, match=r"needs OpenCV.*No module named 'cv2'.*pip install opencv-python"):
        ensure_generated(str(tmp_path / "demo"), TINY_SPEC)
    assert not is_generated(str(tmp_path / "demo"), TINY_SPEC)


def test_registration_loads_through_detectron2(tmp_path):
    root = str(tmp_path / "reg")
    register_demo_lt("test_reg_demo", root, TINY_SPEC)
    meta = MetadataCatalog.get("test_reg_demo_val")
    assert meta.evaluator_type == "lvis" and meta.thing_classes == TINY_SPEC.class_names
    assert not os.path.exists(root)  # registering generates nothing
    dicts = DatasetCatalog.get("test_reg_demo_val")  # first use generates
    assert os.path.isfile(meta.json_file) and len(dicts) == len(_load(root, "val")["images"])
    for d in dicts:
        assert os.path.isfile(d["file_name"])
        assert all(0 <= a["category_id"] < len(TINY_SPEC.class_names) for a in d["annotations"])
        assert "neg_category_ids" in d and "not_exhaustive_category_ids" in d


def test_missing_lvis_files_error_names_path_env_and_readme(tmp_path, monkeypatch):
    json_file = str(tmp_path / "lvis" / "my_lvis_val.json")
    register_lvis_instances("test_missing_lvis_val", {}, json_file, str(tmp_path / "coco/"))
    monkeypatch.setitem(checks.LVIS_IMAGE_FOLDERS, "test_missing_lvis_val", ("train2017", "val2017"))
    os.makedirs(tmp_path / "coco" / "val2017")
    with pytest.raises(DatasetFilesMissing) as e:
        prepare_dataset("test_missing_lvis_val")
    msg = str(e.value)
    assert json_file in msg and os.path.join(str(tmp_path), "coco", "train2017") in msg
    assert "val2017" not in msg  # present folders are not reported
    assert "DETECTRON2_DATASETS" in msg and "datasets/README.md" in msg
    # complete layout: no error
    os.makedirs(tmp_path / "coco" / "train2017")
    os.makedirs(tmp_path / "lvis")
    open(json_file, "w").close()
    prepare_dataset("test_missing_lvis_val")


def test_builtin_lvis_names_are_checked(monkeypatch):
    meta = MetadataCatalog.get("lvis_v1_val")
    if os.path.isfile(meta.json_file):
        pytest.skip("LVIS v1 val is installed here")
    with pytest.raises(DatasetFilesMissing, match="lvis_v1_val.json"):
        prepare_dataset("lvis_v1_val")


def test_unregistered_name_is_a_clear_error():
    with pytest.raises(KeyError, match="not registered.*lvis_v1_train"):
        prepare_dataset("lvis_v7_train")


def _backbone_cfg(depth=10, norm="BN"):
    cfg = get_cfg()
    cfg.MODEL.RESNETS.DEPTH = depth
    cfg.MODEL.RESNETS.NORM = norm
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 16
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 24
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    return cfg


@pytest.mark.parametrize("depth,blocks", [(10, 1), (18, 2)])
def test_small_backbone_shapes_and_training(depth, blocks):
    torch.manual_seed(0)
    net = build_small_resnet_fpn_backbone(_backbone_cfg(depth), ShapeSpec(channels=3))
    out = net(torch.randn(2, 3, 64, 96))
    assert {k: tuple(v.shape) for k, v in out.items()} == {
        "p2": (2, 24, 16, 24), "p3": (2, 24, 8, 12), "p4": (2, 24, 4, 6), "p5": (2, 24, 2, 3), "p6": (2, 24, 1, 2)
    }
    assert {k: s.stride for k, s in net.output_shape().items()} == {"p2": 4, "p3": 8, "p4": 16, "p5": 32, "p6": 64}
    bottom_up = net.bottom_up
    assert len(bottom_up.res2) == blocks and bottom_up.res5[0].out_channels == 128  # 16 * 2**3
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())
    assert all(p.requires_grad for p in net.parameters())  # FREEZE_AT 0: trains from scratch
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is not None for p in net.parameters())


def test_small_backbone_rejects_unknown_depth():
    with pytest.raises(ValueError, match="DEPTH in \\[10, 18\\]"):
        build_small_resnet_fpn_backbone(_backbone_cfg(depth=50), ShapeSpec(channels=3))


def test_demo_config_builds_the_small_backbone():
    import tde_det.modeling  # noqa: F401  (TDE heads)
    from detectron2.modeling import build_model

    from tde_det import add_tde_config

    cfg = get_cfg()
    add_tde_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "demo", "tde_mask_rcnn_demo.yaml"))
    model = build_model(cfg)
    assert type(model.backbone.bottom_up).__name__ == "ResNet"
    assert model.roi_heads.__class__.__name__ == "TDEStandardROIHeads"
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == len(DEMO_SPEC.class_names)
