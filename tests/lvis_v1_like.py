"""Generated LVIS v1-shaped data in Detectron2's builtin layout, for tests that must not need LVIS.

    root/lvis/lvis_v1_train.json   root/lvis/lvis_v1_val.json
    root/coco/train2017/000000000001.jpg ...   root/coco/val2017/...

Like the real files: the 1,203 categories of ``detectron2.data.datasets.lvis_v1_categories`` (or,
``vocabulary="v0.5"``, v0.5's 1,230 at the v1 path), image records with ``coco_url`` (val images
come from both train2017/ and val2017/, as in LVIS v1), ``neg_category_ids`` and
``not_exhaustive_category_ids``, polygon annotations with bbox and area. Small images (64-96 px)
of filled polygons on noise; deterministic.
"""

import json
import os

import cv2
import numpy as np
from detectron2.data.datasets.lvis_v0_5_categories import LVIS_CATEGORIES as V05_CATEGORIES
from detectron2.data.datasets.lvis_v1_categories import LVIS_CATEGORIES as V1_CATEGORIES


def _polygon(rng, h, w):
    """A random convex quadrilateral inside the image: (flat [x0, y0, ...] list, bbox xywh, area)."""
    cx, cy = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h
    r = rng.uniform(0.15, 0.3) * min(h, w)
    angles = np.sort(rng.uniform(0, 2 * np.pi, 4))
    pts = np.stack([cx + r * np.cos(angles), cy + r * np.sin(angles)], 1).round(2)
    x, y = pts[:, 0], pts[:, 1]
    area = 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))
    bbox = [float(x.min()), float(y.min()), float(x.max() - x.min()), float(y.max() - y.min())]
    return pts.ravel().tolist(), bbox, float(area)


def _split(root, split, first_id, num_images, categories, rng, folders):
    images, annotations = [], []
    ids = [c["id"] for c in categories]
    for image_id in range(first_id, first_id + num_images):
        h, w = int(rng.integers(64, 97)), int(rng.integers(64, 97))
        folder = folders[image_id % len(folders)]
        file_name = f"{image_id:012d}.jpg"
        pixels = rng.integers(60, 200, (h, w, 3), dtype=np.uint8)
        present = []
        for _ in range(int(rng.integers(1, 4))):
            cat = int(rng.choice(ids))
            poly, bbox, area = _polygon(rng, h, w)
            cv2.fillPoly(pixels, [np.array(poly).reshape(-1, 2).astype(np.int32)], tuple(int(v) for v in rng.integers(0, 256, 3)))
            annotations.append({"id": len(annotations) + first_id * 10, "image_id": image_id, "category_id": cat,
                                "segmentation": [poly], "bbox": bbox, "area": area})
            present.append(cat)
        os.makedirs(os.path.join(root, "coco", folder), exist_ok=True)
        cv2.imwrite(os.path.join(root, "coco", folder, file_name), pixels)
        images.append({
            "id": image_id, "height": h, "width": w, "license": 1, "date_captured": "2013-11-14 16:28:13",
            "coco_url": f"http://images.cocodataset.org/{folder}/{file_name}",
            "flickr_url": f"http://farm1.staticflickr.com/{image_id}.jpg",
            "neg_category_ids": [c for c in ids if c not in present],  # exhaustive over the categories used
            "not_exhaustive_category_ids": [present[0]] if image_id % 3 == 0 else [],
        })
    return images, annotations


def make_lvis_v1(root, num_train=4, num_val=4, vocabulary="v1", seed=0):
    """Write both splits under `root` (see the module docstring); returns {split: json path}.

    vocabulary: "v1" (1,203 categories) or "v0.5" (LVIS v0.5's 1,230, written at the v1 paths).
    """
    rng = np.random.default_rng(seed)
    source = {"v1": V1_CATEGORIES, "v0.5": V05_CATEGORIES}[vocabulary]
    categories = [dict(c, image_count=0, instance_count=0) for c in sorted(source, key=lambda c: c["id"])]
    # a handful of categories, the last ones included (ids past 1,203 in v0.5), keep the data small
    used = categories[:3] + categories[-3:]
    paths = {}
    os.makedirs(os.path.join(root, "lvis"), exist_ok=True)
    for split, first_id, n, folders in (("train", 1, num_train, ("train2017",)),
                                        ("val", 1000, num_val, ("val2017", "train2017"))):
        images, annotations = _split(root, split, first_id, n, used, rng, folders)
        paths[split] = os.path.join(root, "lvis", f"lvis_v1_{split}.json")
        with open(paths[split], "w") as f:
            json.dump({"info": {"description": f"LVIS v1-shaped test data ({vocabulary} vocabulary)"},
                       "licenses": [{"id": 1, "name": "test"}], "images": images,
                       "annotations": annotations, "categories": categories}, f)
    return paths


def edit_json(path, edit):
    """Apply `edit(data)` to the json file at `path` in place."""
    with open(path) as f:
        data = json.load(f)
    edit(data)
    with open(path, "w") as f:
        json.dump(data, f)
