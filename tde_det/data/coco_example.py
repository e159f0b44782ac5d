"""A small generated COCO-format data set, as a labelling tool would export it: the example of
docs/OWN_DATA.md and the tests of ``tools/coco_to_lvis.py``.

    python -m tde_det.data.coco_example DIR        (PIL only; about 2 s)

writes ``DIR/images/{train,val}/NNNNNN.png`` (coloured shapes on a grey background) and
``DIR/annotations/{train,val}.json``: COCO format, ``file_name`` relative to ``DIR/images``,
polygon segmentations, category ids that are neither contiguous nor listed in order, a long tail
of training image counts (``TRAIN_IMAGES``: one frequent, two common and three rare classes in
LVIS's sense) and some images without objects.
"""

import argparse
import json
import math
import os

import numpy as np
from PIL import Image, ImageDraw

__all__ = ["CLASSES", "TRAIN_IMAGES", "generate_coco_example"]

# (original COCO category id, name, colour, shape), listed out of id order on purpose
CLASSES = [
    (17, "red circle", (220, 40, 40), "circle"),
    (3, "blue square", (40, 60, 220), "square"),
    (42, "green triangle", (40, 190, 60), "triangle"),
    (8, "yellow circle", (230, 210, 40), "circle"),
    (25, "magenta square", (210, 50, 200), "square"),
    (90, "cyan triangle", (40, 200, 210), "triangle"),
]
# training images per class, in the order of CLASSES: frequent (> 100), common (11-100), rare (<= 10)
TRAIN_IMAGES = [104, 40, 14, 8, 3, 1]
VAL_IMAGES = [8, 6, 5, 4, 3, 3]
SIZE = (64, 64)  # width, height


def _polygon(shape, cx, cy, r):
    if shape == "circle":
        angles = [2 * math.pi * k / 16 for k in range(16)]
    elif shape == "square":
        angles = [math.pi / 4 + math.pi / 2 * k for k in range(4)]
    else:
        angles = [-math.pi / 2 + 2 * math.pi * k / 3 for k in range(3)]
    return [(cx + r * math.cos(a), cy + r * math.sin(a)) for a in angles]


def _assign(counts, num_images, rng, max_objects=3):
    """Per image the list of class indices drawn in it: class c in counts[c] distinct images."""
    per_image = [[] for _ in range(num_images)]
    for c in np.argsort(counts)[::-1]:
        free = [i for i in range(num_images) if len(per_image[i]) < max_objects]
        for i in rng.choice(free, size=counts[c], replace=False):
            per_image[i].append(int(c))
    return per_image


def _split(split, counts, num_images, first_image_id, first_ann_id, image_dir, rng):
    images, annotations = [], []
    os.makedirs(image_dir, exist_ok=True)
    for k, classes in enumerate(_assign(counts, num_images, rng)):
        image_id = first_image_id + k
        file_name = f"{split}/{image_id:06d}.png"
        img = Image.new("RGB", SIZE, tuple(int(v) for v in rng.randint(90, 140, size=3)))
        draw = ImageDraw.Draw(img)
        slots = rng.permutation(4)  # one object per quadrant: no occlusion
        for c, slot in zip(classes, slots):
            _, _, colour, shape = CLASSES[c]
            r = rng.uniform(8, 13)
            cx = 16 + 32 * (slot % 2) + rng.uniform(-2, 2)
            cy = 16 + 32 * (slot // 2) + rng.uniform(-2, 2)
            pts = _polygon(shape, cx, cy, r)
            draw.polygon(pts, fill=colour)
            xs, ys = [p[0] for p in pts], [p[1] for p in pts]
            x0, y0, x1, y1 = min(xs), min(ys), max(xs), max(ys)
            flat = [round(v, 2) for p in pts for v in p]
            area = 0.5 * abs(sum(xs[i] * ys[i - 1] - xs[i - 1] * ys[i] for i in range(len(pts))))
            annotations.append({"id": first_ann_id + len(annotations), "image_id": image_id,
                                "category_id": CLASSES[c][0], "bbox": [round(x0, 2), round(y0, 2),
                                round(x1 - x0, 2), round(y1 - y0, 2)], "area": round(area, 2),
                                "segmentation": [flat], "iscrowd": 0})
        img.save(os.path.join(image_dir, f"{image_id:06d}.png"))
        images.append({"id": image_id, "file_name": file_name, "width": SIZE[0], "height": SIZE[1]})
    categories = [{"id": cid, "name": name, "supercategory": shape} for cid, name, _, shape in CLASSES]
    return {"info": {"description": "tde_det generated COCO-format example"}, "images": images,
            "annotations": annotations, "categories": categories}


def generate_coco_example(root, num_train=120, num_val=24, seed=0):
    """Write the example into `root`; returns the paths of (train json, val json, image root)."""
    rng = np.random.RandomState(seed)
    paths = []
    for split, counts, n, first in (("train", TRAIN_IMAGES, num_train, 1), ("val", VAL_IMAGES, num_val, 5001)):
        data = _split(split, counts, n, first, 10 * first, os.path.join(root, "images", split), rng)
        path = os.path.join(root, "annotations", f"{split}.json")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            json.dump(data, f)
        paths.append(path)
    return paths[0], paths[1], os.path.join(root, "images")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", metavar="DIR", help="output folder (images/ and annotations/ go there)")
    args = parser.parse_args(argv)
    train, val, images = generate_coco_example(args.root)
    print(f"COCO-format example: {train}, {val}; images under {images}")


if __name__ == "__main__":
    main()
