"""The fine-grained long-tailed demo set (FINE_SPEC): families of one frequent base class and
rare/common near neighbours with the same outline (issue 15)."""

import filecmp
import json
import os

import numpy as np
import pytest
from detectron2.data import MetadataCatalog

from tde_det.data import DEMO_SPEC, FINE_SPEC, DemoSpec, ensure_generated, lvis_frequency
from tde_det.data.demo_lt import _spec_record

# 2 families x (base + 2 cues); small images: generated in a few seconds
SMALL = DemoSpec(cues=("dot", "stripes"), families=(("circle", "red"), ("arrow", "green")), family_images=(125, 104),
                 max_images=40, min_images=3, val_min=2, val_max=4, max_objects=3, image_size=(64, 96),
                 object_radius=(9.0, 16.0), seed=5)


def _load(root, split):
    with open(os.path.join(root, "annotations", f"demo_lt_{split}.json")) as f:
        return json.load(f)


@pytest.fixture(scope="module")
def small_root(tmp_path_factory):
    return ensure_generated(str(tmp_path_factory.mktemp("fine") / "small"), SMALL)


def test_fine_spec_every_rare_and_common_class_has_a_frequent_neighbour_with_the_same_outline():
    counts = FINE_SPEC.train_image_counts()
    names = FINE_SPEC.class_names
    assert len(names) == len(set(names)) == len(counts) == 40
    groups = [lvis_frequency(n) for n in counts]
    assert {g: groups.count(g) for g in "rcf"} == {"r": 14, "c": 18, "f": 8}
    for i, g in enumerate(groups):
        j = FINE_SPEC.neighbour(i)
        shape_i, colour_i, cue_i = FINE_SPEC.appearance(i)
        shape_j, colour_j, cue_j = FINE_SPEC.appearance(j)
        assert groups[j] == "f" and cue_j is None and shape_i == shape_j
        if g == "f":
            assert j == i
        else:
            assert j != i and cue_i is not None and names[i].startswith(names[j] + "_")
            # the same colour but for the "hue" cue, which turns it a little
            dist = np.abs(colour_i - colour_j).max()
            assert (0 < dist < 90) if cue_i == "hue" else dist == 0
    assert DEMO_SPEC.neighbour(0) is None


def test_plain_spec_record_is_unchanged_by_the_fine_fields():
    """The demo set's existing caches stay valid: its SPEC.json record has no fine-grained fields."""
    assert "cues" not in _spec_record(DEMO_SPEC)["spec"] and "cues" in _spec_record(FINE_SPEC)["spec"]


def test_bad_fine_specs_are_errors():
    with pytest.raises(ValueError, match="cues"):
        DemoSpec(cues=("sparkle",), families=(("circle", "red"),))
    with pytest.raises(ValueError, match="families"):
        DemoSpec(cues=("dot",))
    with pytest.raises(ValueError, match="shape"):
        DemoSpec(cues=("dot",), families=(("hexagon", "red"),))


def test_generated_fine_set_groups_follow_lvis_rule_and_cues_show(small_root, tmp_path):
    train, val = _load(small_root, "train"), _load(small_root, "val")
    cats = train["categories"]
    assert [c["name"] for c in cats] == SMALL.class_names
    images = {}
    for a in train["annotations"]:
        images.setdefault(a["category_id"], set()).add(a["image_id"])
    for c in cats:
        assert c["image_count"] == len(images.get(c["id"], ()))
        assert c["frequency"] == lvis_frequency(c["image_count"])
    freq = [c["frequency"] for c in cats]
    assert freq[0] == freq[3] == "f" and all(f in "rc" for k, f in enumerate(freq) if k % 3)
    assert "r" in freq and "c" in freq
    # val: every class in clip(round(0.25 n), 2, 4) images
    val_images = {}
    for a in val["annotations"]:
        val_images.setdefault(a["category_id"], set()).add(a["image_id"])
    assert all(2 <= len(val_images.get(c["id"], ())) <= 4 for c in cats)
    # the "dot" cue darkens the object's inside: its darkest mask pixels are much darker than the base's
    import cv2
    import pycocotools.mask as mask_util

    def darkest(cid):
        values = []
        by_id = {i["id"]: i for i in train["images"]}
        for a in [a for a in train["annotations"] if a["category_id"] == cid][:8]:
            info = by_id[a["image_id"]]
            img = cv2.imread(os.path.join(small_root, "train", info["file_name"])).astype(np.float64)
            rle = mask_util.frPyObjects(a["segmentation"], info["height"], info["width"])
            m = mask_util.decode(mask_util.merge(rle)).astype(bool)
            m = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            values.append(np.percentile(img[m].sum(1), 2))
        return np.median(values)

    assert darkest(2) < 0.6 * darkest(1)  # red_circle_dot vs red_circle
    # deterministic: a second generation is byte-identical
    again = ensure_generated(str(tmp_path / "again"), SMALL)
    for rel in ("annotations/demo_lt_train.json", "annotations/demo_lt_val.json", "train/000001.jpg"):
        assert filecmp.cmp(os.path.join(small_root, rel), os.path.join(again, rel), shallow=False)


def test_fine_set_is_registered():
    meta = MetadataCatalog.get("tde_demo_lt_fine_val")
    assert meta.evaluator_type == "lvis" and meta.thing_classes == FINE_SPEC.class_names
    assert meta.json_file.endswith(os.path.join("tde_demo_lt_fine", "annotations", "demo_lt_val.json"))
