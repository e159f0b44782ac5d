"""A long-tailed LVIS-format dataset of coloured shapes, generated deterministically on the machine.

Each class is one (shape, colour) pair, e.g. ``red_star``. The number of training images per
class falls geometrically from ``max_images`` (rank 0) to ``min_images`` (last rank); which class
gets which rank is a fixed seeded permutation, so every frequency group mixes shapes and colours.
Categories get LVIS's ``frequency`` from the generated train split by LVIS's rule:
rare ``r`` = 1-10 training images, common ``c`` = 11-100, frequent ``f`` > 100.

The val split is deliberately flatter than train (every class appears in
``clip(round(val_fraction * n_train), val_min, val_max)`` val images) so that APr, APc and APf
are all measured on enough instances. The generator knows every object in every image, so each
image's ``neg_category_ids`` lists every category absent from it (exhaustive negatives) and
``not_exhaustive_category_ids`` is empty: LVIS's federated evaluation then counts every false
positive, as COCO's would.

The fine-grained variant (``FINE_SPEC``, a spec with ``cues``) mimics LVIS's tail, where many rare
categories are near neighbours of a frequent one: classes come in families, one per (shape, colour)
pair of ``families``. Each family has one frequent *base* class (``family_images``: a geometric
ramp of training images, all > 100) and one rare-or-common class per cue in ``cues`` (the
``max_images``..``min_images`` ramp, all <= 100): the same outline and colour with one subtle
mark -- ``dot`` (a small dark dot inside), ``stripes`` (faint darker stripes), ``hue`` (the hue
turned by ``hue_shift`` degrees) or ``outline`` (a thin dark border). Masks are the outline in every
case, so a variant differs from its base only in appearance inside the box.

Layout written under ``root`` (Detectron2's LVIS loader finds an image from the last two parts
of its ``coco_url``, so image_root is ``root + "/"``)::

    root/train/000001.jpg ...   root/val/000001.jpg ...
    root/annotations/demo_lt_train.json   root/annotations/demo_lt_val.json
    root/SPEC.json              (the spec that produced the files; a different spec regenerates)
"""

import colorsys
import dataclasses
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass

import numpy as np
import pycocotools.mask as mask_util

try:  # OpenCV draws the demo images. As for Detectron2, the user picks its distribution
    import cv2  # (opencv-python, -headless, a system package): not a requirement of setup.py
except ImportError as e:
    cv2, _CV2_ERROR = None, e

logger = logging.getLogger(__name__)

GENERATOR_VERSION = 1

# RGB colours, saturated so that they stand out from the greyish backgrounds.
COLOURS = {
    "red": (220, 45, 45),
    "green": (45, 185, 70),
    "blue": (55, 85, 235),
    "yellow": (235, 210, 45),
    "magenta": (205, 65, 210),
    "cyan": (45, 200, 215),
}
SHAPES = ("circle", "square", "triangle", "star", "cross", "crescent", "ell", "arrow")


def _shape_polygon(shape):
    """Unit-size outline of a shape, float array [N, 2] of (x, y) within [-1, 1]^2, y pointing down."""
    if shape == "circle":
        t = np.linspace(0, 2 * np.pi, 24, endpoint=False)
        return np.stack([np.cos(t), np.sin(t)], 1)
    if shape == "square":
        return np.array([[-0.8, -0.8], [0.8, -0.8], [0.8, 0.8], [-0.8, 0.8]])
    if shape == "triangle":
        return np.array([[0.0, -1.0], [0.95, 0.75], [-0.95, 0.75]])
    if shape == "star":
        t = -np.pi / 2 + np.arange(10) * np.pi / 5
        r = np.where(np.arange(10) % 2 == 0, 1.0, 0.42)
        return np.stack([r * np.cos(t), r * np.sin(t)], 1)
    if shape == "cross":
        a, b = 0.32, 0.95
        return np.array(
            [[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b], [-a, a], [-b, a], [-b, -a], [-a, -a]]
        )
    if shape == "crescent":
        outer = np.linspace(np.pi / 2, 3 * np.pi / 2, 13)  # left half of the unit circle, bottom to top
        inner = outer[::-1]
        return np.concatenate(
            [np.stack([np.cos(outer), np.sin(outer)], 1), np.stack([-0.25 + 0.45 * np.cos(inner), np.sin(inner)], 1)]
        ) + np.array([0.35, 0.0])
    if shape == "ell":
        return np.array([[-0.8, -0.9], [-0.25, -0.9], [-0.25, 0.35], [0.8, 0.35], [0.8, 0.9], [-0.8, 0.9]])
    if shape == "arrow":
        return np.array([[-0.95, -0.25], [0.15, -0.25], [0.15, -0.7], [0.95, 0.0], [0.15, 0.7], [0.15, 0.25], [-0.95, 0.25]])
    raise ValueError(f"Unknown shape {shape!r}; known shapes: {SHAPES}")


@dataclass(frozen=True)
class DemoSpec:
    """Everything that determines the generated files (a changed spec regenerates the cache)."""

    shapes: tuple = SHAPES
    colours: tuple = tuple(COLOURS)
    max_images: int = 400  # training images of the most frequent class
    min_images: int = 2  # training images of the rarest class
    val_fraction: float = 0.25  # val images per class = clip(round(val_fraction * train images), val_min, val_max)
    val_min: int = 10
    val_max: int = 36
    max_objects: int = 5  # distinct classes per image (1..max_objects)
    repeat_prob: float = 0.15  # chance that a class appears twice in the same image
    image_size: tuple = (112, 160)  # min/max image side, pixels
    object_radius: tuple = (9.0, 22.0)  # min/max half-size of an object, pixels
    seed: int = 0
    # Fine-grained variant (empty `cues` = the plain shape x colour design above):
    cues: tuple = ()  # per family, one rare/common class per cue (see CUES); `max_images`..`min_images` ramp
    families: tuple = ()  # (shape, colour) of each family; its base class is frequent
    family_images: tuple = (400, 130)  # training images of the most / least frequent base class
    hue_shift: float = 25.0  # degrees the "hue" cue turns the family colour

    def __post_init__(self):
        if self.cues:
            unknown = [c for c in self.cues if c not in CUES]
            if unknown or not self.families:
                raise ValueError(f"DemoSpec: cues must be a subset of {CUES} (got unknown {unknown}) and "
                                 f"families must list (shape, colour) pairs (got {self.families!r}).")
            for shape, colour in self.families:
                if shape not in SHAPES or colour not in COLOURS:
                    raise ValueError(f"DemoSpec: family ({shape!r}, {colour!r}) needs a shape of {SHAPES} and "
                                     f"a colour of {tuple(COLOURS)}.")

    @property
    def class_names(self):
        if self.cues:
            return [f"{c}_{s}" + (f"_{cue}" if cue else "") for s, c in self.families for cue in ("",) + self.cues]
        return [f"{c}_{s}" for s in self.shapes for c in self.colours]

    def appearance(self, index):
        """(shape, RGB colour as float array [3], cue or None) of the class with 0-based `index`."""
        if not self.cues:
            shape, colour, cue = self.shapes[index // len(self.colours)], self.colours[index % len(self.colours)], None
        else:
            (shape, colour), k = self.families[index // (len(self.cues) + 1)], index % (len(self.cues) + 1)
            cue = self.cues[k - 1] if k else None
        rgb = np.array(COLOURS[colour], dtype=np.float64)
        if cue == "hue":
            h, s, v = colorsys.rgb_to_hsv(*(rgb / 255.0))
            rgb = np.array(colorsys.hsv_to_rgb((h + self.hue_shift / 360.0) % 1.0, s, v)) * 255.0
        return shape, rgb, cue

    def neighbour(self, index):
        """0-based index of the frequent base class that class `index` is a variant of (itself for a
        base class); None in the plain design."""
        if not self.cues:
            return None
        return index - index % (len(self.cues) + 1)

    def train_image_counts(self):
        """Training images per category (index = category id - 1): a geometric ramp over a seeded rank order
        (fine-grained: one ramp over the base classes, one over the variants)."""
        def ramp(n, hi, lo, seed):
            ranks = np.random.RandomState(seed).permutation(n)
            values = hi * (lo / hi) ** (np.arange(n) / max(n - 1, 1))
            return [int(round(v)) for v in values[ranks]]

        if not self.cues:
            return ramp(len(self.shapes) * len(self.colours), self.max_images, self.min_images, self.seed)
        per = len(self.cues) + 1
        bases = ramp(len(self.families), self.family_images[0], self.family_images[1], self.seed)
        variants = ramp(len(self.families) * len(self.cues), self.max_images, self.min_images, self.seed + 1)
        return [bases[i // per] if i % per == 0 else variants[(i // per) * len(self.cues) + i % per - 1]
                for i in range(len(self.families) * per)]

    def val_image_counts(self):
        return [
            int(np.clip(round(self.val_fraction * n), self.val_min, self.val_max)) for n in self.train_image_counts()
        ]


CUES = ("dot", "stripes", "hue", "outline")
DEMO_SPEC = DemoSpec()
# The fine-grained long-tailed set: 8 families x (1 frequent base + 4 rare/common variants) = 40
# classes. Val: every class in clip(round(0.25 * train images), 12, 30) images (flatter than train).
FINE_SPEC = DemoSpec(
    max_images=90,
    min_images=2,
    val_min=12,
    val_max=30,
    cues=CUES,
    families=(("circle", "red"), ("square", "green"), ("triangle", "blue"), ("star", "yellow"),
              ("cross", "magenta"), ("crescent", "cyan"), ("ell", "red"), ("arrow", "green")),
    family_images=(320, 130),
    seed=3,
)
# A few hundred 64-96 px images, 6 classes with all three frequency groups: for tests and smoke runs.
TINY_SPEC = DemoSpec(
    shapes=("circle", "square", "triangle"),
    colours=("red", "blue"),
    max_images=130,
    min_images=2,
    val_min=3,
    val_max=6,
    max_objects=3,
    image_size=(64, 96),
    object_radius=(8.0, 16.0),
    seed=1,
)


def lvis_frequency(image_count):
    """LVIS's frequency group from the number of training images a category appears in."""
    if image_count <= 10:
        return "r"
    if image_count <= 100:
        return "c"
    return "f"


def _pack_images(counts, max_objects, rng):
    """Group class appearances into images: list of lists of distinct 0-based class indices.

    Class i appears in exactly counts[i] images: the largest remaining counts are served first
    so that no image needs the same class twice.
    """
    remaining = np.array(counts, dtype=np.int64)
    images = []
    while remaining.sum() > 0:
        k = min(int(rng.randint(1, max_objects + 1)), int((remaining > 0).sum()))
        # sample k distinct classes with probability proportional to their remaining count
        p = remaining / remaining.sum()
        chosen = rng.choice(len(counts), size=k, replace=False, p=p)
        remaining[chosen] -= 1
        images.append(sorted(int(c) for c in chosen))
    order = rng.permutation(len(images))
    return [images[i] for i in order]


def _random_background(h, w, rng):
    """Low-saturation vertical/horizontal gradient plus noise, uint8 RGB [h, w, 3]."""
    c0, c1 = rng.uniform(60, 170, size=(2, 1, 1, 1)) + rng.uniform(-12, 12, size=(2, 1, 1, 3))
    if rng.rand() < 0.5:
        t = np.linspace(0, 1, h)[:, None, None]
    else:
        t = np.linspace(0, 1, w)[None, :, None]
    img = c0[0] * (1 - t) + c1[0] * t + rng.normal(0, 7, size=(h, w, 3))
    return img


def _place(radius_range, h, w, rng, boxes):
    """Pick centre and radius for a new object that does not overlap `boxes` (x0, y0, x1, y1)."""
    for attempt in range(60):
        r = rng.uniform(*radius_range) * (0.98 ** attempt)
        cx, cy = rng.uniform(r + 1, w - r - 1), rng.uniform(r + 1, h - r - 1)
        box = (cx - r - 2, cy - r - 2, cx + r + 2, cy + r + 2)
        if all(box[2] < b[0] or b[2] < box[0] or box[3] < b[1] or b[3] < box[1] for b in boxes):
            return cx, cy, r, box
    return None


# A point well inside each outline (unit coordinates) where the "dot" cue goes.
_ANCHORS = {"circle": (0.0, 0.0), "square": (0.0, 0.0), "triangle": (0.0, 0.25), "star": (0.0, 0.05),
            "cross": (0.0, 0.0), "crescent": (-0.5, 0.0), "ell": (-0.52, 0.6), "arrow": (-0.2, 0.0)}


def _apply_cue(cue, shade, shape, pts, theta, aspect, r, cx, cy, h, w):
    """The object's colour field [h, w, 3] (or [1|h, 1, 3], broadcast) with the cue drawn into it.
    Deterministic given the object's placement (no random numbers: the plain design's images stay
    bit-identical)."""
    shade = np.broadcast_to(shade, (h, w, 3)).copy()
    if cue == "hue":  # the colour itself was turned in DemoSpec.appearance
        return shade
    if cue == "dot":
        ax, ay = _ANCHORS[shape]
        rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
        px, py = rot @ np.array([ax * aspect, ay / aspect]) * r + np.array([cx, cy])
        yy, xx = np.mgrid[0:h, 0:w]
        inside = (xx - px) ** 2 + (yy - py) ** 2 <= max(0.22 * r, 1.6) ** 2
        shade[inside] *= 0.3
    elif cue == "stripes":
        yy, xx = np.mgrid[0:h, 0:w]
        period = max(0.42 * r, 3.5)
        phase = ((xx - cx) * np.cos(theta + 0.8) + (yy - cy) * np.sin(theta + 0.8)) / period
        shade[(phase % 1.0) < 0.4] *= 0.72
    elif cue == "outline":
        layer = np.zeros((h, w), np.uint8)
        cv2.polylines(layer, [np.round(pts * 16).astype(np.int32)], True, 255, thickness=1,
                      lineType=cv2.LINE_AA, shift=4)
        shade *= 1.0 - 0.7 * (layer.astype(np.float64) / 255.0)[..., None]
    else:
        raise ValueError(f"Unknown cue {cue!r}; known cues: {CUES}")
    return shade


def _render_split(split, image_classes, spec, start_image_id, rng, image_dir):
    """Draw the images of one split; returns (images, annotations) in LVIS json form."""
    images, annotations = [], []
    ann_id = 1
    num_classes = len(spec.class_names)
    for offset, classes in enumerate(image_classes):
        image_id = start_image_id + offset
        h, w = (int(v) for v in rng.randint(spec.image_size[0], spec.image_size[1] + 1, size=2))
        canvas = _random_background(h, w, rng)
        instances = [c for c in classes for _ in range(2 if rng.rand() < spec.repeat_prob else 1)]
        rng.shuffle(instances)
        boxes, anns = [], []
        for c in instances:
            placed = _place(spec.object_radius, h, w, rng, boxes)
            if placed is None:
                continue
            cx, cy, r, box = placed
            boxes.append(box)
            shape, colour, cue = spec.appearance(c)
            theta = rng.uniform(-0.4, 0.4)
            aspect = rng.uniform(0.85, 1.15)
            pts = _shape_polygon(shape) * np.array([aspect, 1.0 / aspect])
            rot = np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])
            pts = pts @ rot.T * r + np.array([cx, cy])
            pts[:, 0] = pts[:, 0].clip(0, w - 1)
            pts[:, 1] = pts[:, 1].clip(0, h - 1)
            layer = np.zeros((h, w), np.uint8)
            cv2.fillPoly(layer, [np.round(pts * 16).astype(np.int32)], 255, lineType=cv2.LINE_AA, shift=4)
            alpha = (layer.astype(np.float64) / 255.0)[..., None]
            shade = colour + rng.uniform(-18, 18, size=3) + np.linspace(-12, 12, h)[:, None, None] * rng.uniform(-1, 1)
            if cue is not None:
                shade = _apply_cue(cue, shade, shape, pts, theta, aspect, r, cx, cy, h, w)
            canvas = canvas * (1 - alpha) + shade * alpha
            poly = [round(float(v), 2) for v in pts.reshape(-1)]
            rle = mask_util.frPyObjects([poly], h, w)
            x0, y0 = float(pts[:, 0].min()), float(pts[:, 1].min())
            anns.append(
                {
                    "image_id": image_id,
                    "category_id": c + 1,
                    "segmentation": [poly],
                    "bbox": [round(x0, 2), round(y0, 2), round(float(pts[:, 0].max()) - x0, 2),
                             round(float(pts[:, 1].max()) - y0, 2)],
                    "area": float(mask_util.area(mask_util.merge(rle))),
                }
            )
        present = sorted({a["category_id"] for a in anns})
        file_name = f"{image_id:06d}.jpg"
        img = np.clip(canvas, 0, 255).astype(np.uint8)
        cv2.imwrite(os.path.join(image_dir, file_name), img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
        images.append(
            {
                "id": image_id,
                "file_name": file_name,
                "coco_url": f"http://tde-demo.invalid/{split}/{file_name}",
                "height": h,
                "width": w,
                "neg_category_ids": [i for i in range(1, num_classes + 1) if i not in present],
                "not_exhaustive_category_ids": [],
            }
        )
        for a in anns:
            a["id"] = ann_id
            ann_id += 1
        annotations.extend(anns)
    return images, annotations


def _categories(spec, train_images, train_annotations):
    """LVIS categories with image_count / instance_count / frequency measured on the train split."""
    image_sets = {}
    instance_count = {}
    for a in train_annotations:
        image_sets.setdefault(a["category_id"], set()).add(a["image_id"])
        instance_count[a["category_id"]] = instance_count.get(a["category_id"], 0) + 1
    cats = []
    for i, name in enumerate(spec.class_names):
        cid = i + 1
        n_img = len(image_sets.get(cid, ()))
        cats.append(
            {
                "id": cid,
                "name": name,
                "synonyms": [name],
                "def": f"a {name.replace('_', ' ')} drawn on a plain background",
                "synset": f"{name}.n.01",
                "image_count": n_img,
                "instance_count": instance_count.get(cid, 0),
                "frequency": lvis_frequency(n_img),
            }
        )
    return cats


def generate(root, spec=DEMO_SPEC):
    """Write the dataset described by `spec` into directory `root` (created; must not exist yet)."""
    if cv2 is None:
        raise ImportError(
            f"generating the demo dataset needs OpenCV, which cannot be imported here ({_CV2_ERROR}): "
            "pip install opencv-python (or opencv-python-headless)"
        )
    rng = np.random.RandomState(spec.seed + 1000)
    start = time.perf_counter()
    os.makedirs(os.path.join(root, "annotations"))
    splits = {}
    first_id = 1
    for split, counts in (("train", spec.train_image_counts()), ("val", spec.val_image_counts())):
        image_dir = os.path.join(root, split)
        os.makedirs(image_dir)
        image_classes = _pack_images(counts, spec.max_objects, rng)
        splits[split] = _render_split(split, image_classes, spec, first_id, rng, image_dir)
        first_id += len(image_classes)
    categories = _categories(spec, *splits["train"])
    for split, (images, annotations) in splits.items():
        data = {
            "info": {"description": f"tde_det long-tailed demo set ({split}), generator v{GENERATOR_VERSION}"},
            "licenses": [],
            "images": images,
            "annotations": annotations,
            "categories": categories,
        }
        with open(os.path.join(root, "annotations", f"demo_lt_{split}.json"), "w") as f:
            json.dump(data, f)
    _write_spec(root, spec)
    logger.info(
        "Generated the demo dataset in %s in %.1f s: %s",
        root, time.perf_counter() - start, summary(os.path.join(root, "annotations")),
    )


_FINE_FIELDS = ("cues", "families", "family_images", "hue_shift")


def _spec_record(spec):
    record = dataclasses.asdict(spec)
    if not spec.cues:  # the plain design's record (and so its existing caches) predates these fields
        for name in _FINE_FIELDS:
            record.pop(name)
    return {"generator_version": GENERATOR_VERSION, "spec": record}


def _write_spec(root, spec):
    with open(os.path.join(root, "SPEC.json"), "w") as f:
        json.dump(_spec_record(spec), f, indent=1)


def is_generated(root, spec=DEMO_SPEC):
    """True if `root` holds a complete dataset made by this generator version from `spec`."""
    path = os.path.join(root, "SPEC.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return json.load(f) == json.loads(json.dumps(_spec_record(spec)))


def ensure_generated(root, spec=DEMO_SPEC):
    """Generate the dataset into `root` unless it is already there.

    Safe against concurrent callers and interruptions: the files are written into a temporary
    sibling directory which is renamed to `root` only when complete. A cache made from another
    spec or generator version is replaced.
    """
    if is_generated(root, spec):
        return root
    parent = os.path.dirname(os.path.abspath(root))
    os.makedirs(parent, exist_ok=True)
    logger.info("Generating the long-tailed demo dataset into %s (first use; takes a few seconds) ...", root)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(root) + ".tmp-", dir=parent)
    try:
        data_dir = os.path.join(tmp, "data")
        generate(data_dir, spec)
        if os.path.exists(root):
            if is_generated(root, spec):  # another process finished first
                return root
            stale = os.path.join(tmp, "stale")
            os.rename(root, stale)
        try:
            os.rename(data_dir, root)
        except OSError:
            if not is_generated(root, spec):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return root


def summary(annotation_dir):
    """Per split: images, instances, and categories / instances per frequency group (a short string)."""
    parts = []
    for split in ("train", "val"):
        with open(os.path.join(annotation_dir, f"demo_lt_{split}.json")) as f:
            data = json.load(f)
        freq = {c["id"]: c["frequency"] for c in data["categories"]}
        groups = {g: [0, 0] for g in "rcf"}
        for c in data["categories"]:
            groups[c["frequency"]][0] += 1
        for a in data["annotations"]:
            groups[freq[a["category_id"]]][1] += 1
        parts.append(
            f"{split}: {len(data['images'])} images, {len(data['annotations'])} instances ("
            + ", ".join(f"{g}: {n} classes / {m} inst." for g, (n, m) in groups.items())
            + ")"
        )
    return "; ".join(parts)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description="Generate the long-tailed demo dataset.")
    parser.add_argument("root", help="output directory (e.g. datasets/tde_demo_lt)")
    parser.add_argument("--tiny", action="store_true", help="the tiny 6-class variant used by tests")
    parser.add_argument("--fine", action="store_true", help="the fine-grained 40-class variant (FINE_SPEC)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO)
    ensure_generated(args.root, TINY_SPEC if args.tiny else FINE_SPEC if args.fine else DEMO_SPEC)
    print(summary(os.path.join(args.root, "annotations")))
