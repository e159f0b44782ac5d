#!/usr/bin/env python
"""Draw a TDE model's detections with Detectron2's Visualizer: plain | TDE (| ground truth), one PNG per image.

    # the first 8 images of the config's test set, TDE at alpha 1.5
    python tools/visualize.py --config-file configs/demo/tde_mask_rcnn_demo.yaml --alpha 1.5 \\
        --num-images 8 MODEL.WEIGHTS output/demo_tde_mask_rcnn/model_final.pth
    # your own images
    python tools/visualize.py --config-file CONFIG --input a.jpg b.jpg --output vis/ MODEL.WEIGHTS model.pth
    # Grad-CAM of the 3 best TDE detections per image: plain | TDE logit, and the softmax baseline's
    python tools/visualize.py --config-file configs/demo/tde_mask_rcnn_demo.yaml --cam --cam-top 3 \\
        --compare-weights output/demo_baseline_mask_rcnn/model_final.pth \\
        --compare-config configs/demo/baseline_mask_rcnn_demo.yaml \\
        MODEL.WEIGHTS output/demo_tde_mask_rcnn/model_final.pth

Both panels come from ONE forward pass (:class:`tde_det.analysis.alpha_sweep.AlphaSweep`): plain
is the cosine softmax (De-confound, alpha 0), TDE the background-exempt TDE scores at ``--alpha``
(default ``MODEL.TDE.ALPHA``). Detections with score >= ``--score-thresh`` are drawn; with
background exemption the two are calibrated alike, so one threshold serves both. Images of a
dataset also get a ground-truth panel. Runs on one process (``MODEL.DEVICE`` as configured).

``--cam``: instead, one row per TDE detection (those drawn, or the ``--cam-top N`` best): the image
around the box with the detection's score, then the Grad-CAM (:mod:`tde_det.analysis.cam`: the
ROI-pooled 7x7 box features, upsampled into the box) of the plain logit y_c and of the TDE logit
y_c - alpha*b_c; with ``--compare-weights/--compare-config`` also the CAMs of a second model (e.g. the
softmax baseline: plain logit only) on the same boxes. Panel titles: class, frequency group (r/c/f,
from the dataset's LVIS json) and the score (CAM panels: that logit's score for the drawn box).
Written as OUTPUT/<image>_alpha<alpha>_cam.png.
"""

import warnings

# Third-party warnings a user can do nothing about: fvcore's @torch.jit.script at import (torch >= 2.10),
# the meshgrid call of Detectron2's anchor generator.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")
warnings.filterwarnings("ignore", "torch.meshgrid: in an upcoming release")

import argparse
import io
import math
import os
import re
import sys

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tde_det import get_tde_cfg  # noqa: E402  (also registers the TDE heads, demo backbone and datasets)
from tde_det.data import prepare_dataset  # noqa: E402
from tde_det.engine import Trainer, cli  # noqa: E402
from tde_det.data.images import SkipUnreadableImages, image_problem  # noqa: E402
from tde_det.engine.weights import needs_trained_mean  # noqa: E402
from tde_det.errors import ConfigError, FilesMissing, UnreadableImage  # noqa: E402
from tde_det.analysis.alpha_sweep import AlphaSweep  # noqa: E402
from tde_det.analysis.cam import detection_cams, has_tde_head, paste_cams  # noqa: E402
from tde_det.analysis.figures import lvis_category_stats  # noqa: E402

CONFIG_KEY = re.compile(r"[A-Z][A-Z0-9_]*(\.[A-Z0-9_]+)+")  # MODEL.WEIGHTS, TEST.DETECTIONS_PER_IMAGE


def argument_parser():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config-file", required=True, metavar="FILE")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--input", nargs="+", metavar="IMAGE", help="image files (default: a dataset's images)")
    src.add_argument("--dataset", default="", help="registered dataset (default: DATASETS.TEST[0])")
    p.add_argument("--num-images", type=int, default=8, help="images taken from the dataset (default: 8)")
    p.add_argument("--alpha", type=float, default=None, help="alpha of the TDE panel (default: MODEL.TDE.ALPHA)")
    p.add_argument("--score-thresh", type=float, default=0.5, help="draw detections scoring >= this")
    p.add_argument("--output", default="", help="output folder (default: OUTPUT_DIR/visualize)")
    p.add_argument("--cam", action="store_true", help="Grad-CAM per detection of the plain and the TDE logit")
    p.add_argument("--cam-top", type=int, default=0, metavar="N",
                   help="with --cam: the N best TDE detections per image (default: those >= --score-thresh)")
    p.add_argument("--compare-weights", default="", metavar="FILE", help="with --cam: a second model's weights")
    p.add_argument("--compare-config", default="", metavar="FILE", help="with --cam: the second model's config")
    p.add_argument("--compare-opts", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                   help="with --cam: a config override of the second model (repeat the flag for several)")
    cli.add_arguments(p, data_check=False)
    p.add_argument("opts", nargs=argparse.REMAINDER, help="trailing KEY VALUE config overrides")
    return p


def parse_args(argv=None):
    """Parse the command line. ``--input`` takes the image paths after it; the first word that looks
    like a config key (``MODEL.WEIGHTS``) starts the trailing ``KEY VALUE`` overrides."""
    args = argument_parser().parse_args(argv)
    if args.input:
        n = 0
        while n < len(args.input) and not CONFIG_KEY.fullmatch(args.input[n]):
            n += 1
        if n == 0:
            cli.usage_error(f"--input needs image paths, got {args.input[0]!r}.")
        args.input, args.opts = args.input[:n], args.input[n:] + list(args.opts)
    return args


def setup(args):
    cfg = get_tde_cfg(args.config_file, args.opts)
    cfg.freeze()
    if not cfg.MODEL.WEIGHTS:
        raise ConfigError("MODEL.WEIGHTS is empty: add the override MODEL.WEIGHTS path/to/model_final.pth.")
    alpha = cfg.MODEL.TDE.ALPHA if args.alpha is None else args.alpha
    if not alpha >= 0:
        raise ConfigError(f"--alpha must be >= 0 (0: De-confound only), got {alpha:g}.")
    if args.num_images < 1:
        raise ConfigError(f"--num-images must be >= 1, got {args.num_images}.")
    if args.input:
        check_input_images(args.input)
    # the config's values and device, the dataset drawn from (a test set: its images must exist), the weights
    names = [] if args.input else [dataset_to_draw(cfg, args)]
    cli.preflight(cfg, names, names, evaluate=True, need_mean=needs_trained_mean(cfg, [alpha]))
    return cfg


def dataset_to_draw(cfg, args):
    """--dataset, else DATASETS.TEST[0]."""
    dataset_name = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
    if not dataset_name:
        raise ConfigError("No images: pass --input IMAGE ... or --dataset NAME (DATASETS.TEST is empty).")
    return dataset_name


def check_input_images(paths):
    """Every --input path is an image file that decodes."""
    for path in paths:
        if os.path.isdir(path):
            raise FilesMissing(f"--input {path!r} is a folder: give image files, e.g. --input {os.path.join(path, '*.jpg')}.")
        if not os.path.isfile(path):
            raise FilesMissing(f"--input image {path!r} does not exist.")
        problem = image_problem(path)
        if problem:
            raise UnreadableImage(f"--input image {path!r} cannot be read ({problem}).")


def load_inputs(cfg, args):
    """[(input dict for the model, RGB image [H, W, 3] uint8, dataset dict or None)], and the metadata."""
    mapper = SkipUnreadableImages(DatasetMapper(cfg, is_train=False), is_train=False)  # errors name the file
    if args.input:
        dataset_name = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else ""
        records = []
        for i, path in enumerate(args.input):
            if not os.path.isfile(path):
                raise FilesMissing(f"--input image {path!r} does not exist.")
            h, w = utils.read_image(path).shape[:2]
            records.append(({"file_name": path, "image_id": i, "height": h, "width": w}, None))
    else:
        dataset_name = dataset_to_draw(cfg, args)
        prepare_dataset(dataset_name)
        records = [(dict(d), d) for d in DatasetCatalog.get(dataset_name)[: max(args.num_images, 0)]]
    out = []
    for record, gt in records:
        model_input = mapper(dict(record))
        model_input.pop("instances", None)
        out.append((model_input, utils.read_image(record["file_name"], format="RGB"), gt))
    return out, MetadataCatalog.get(dataset_name) if dataset_name else MetadataCatalog.get("__unused")


PANEL_PX = 480  # longer side of one panel in the saved PNG (PANEL_PX / PANEL_DPI inches at PANEL_DPI)
PANEL_DPI = 150
LABEL_PX = 9  # height of Detectron2's label text in those pixels: readable, smaller than the demo's objects


def draw_detections(image, metadata, draw):
    """``draw(Visualizer)`` (e.g. ``lambda v: v.draw_instance_predictions(inst)``) at the panel's resolution,
    its label text LABEL_PX high whatever the image size, every label moved inside the image: RGB array."""
    scale = PANEL_PX / max(image.shape[:2])
    vis = Visualizer(image, metadata, scale=scale)
    vis._default_font_size = LABEL_PX / scale  # Detectron2's default: sqrt(h w) / 90, at least 10 image pixels
    out = draw(vis)
    keep_text_inside(out)
    return out.get_image()


def keep_text_inside(vis_image, margin=2):
    """Shift the text labels of a Detectron2 ``VisImage`` that stick out of the image back inside it."""
    renderer = vis_image.canvas.get_renderer()
    width, height = vis_image.fig.bbox.width, vis_image.fig.bbox.height
    to_data = vis_image.ax.transData
    for text in vis_image.ax.texts:
        box = text.get_window_extent(renderer)  # display pixels, origin bottom-left
        dx = max(0.0, margin - box.x0) - max(0.0, box.x1 + margin - width)
        dy = max(0.0, margin - box.y0) - max(0.0, box.y1 + margin - height)
        if dx or dy:
            x, y = to_data.transform(text.get_position())
            text.set_position(to_data.inverted().transform((x + dx, y + dy)))


def draw_panels(image, panels, path):
    """Save [(title, drawn RGB array)] side by side as one PNG."""
    h, w = image.shape[:2]
    inches = PANEL_PX / PANEL_DPI
    fig = Figure(figsize=(inches * len(panels) * w / max(h, w) + 0.4, (inches + 0.2) * h / max(h, w) + 0.4),
                 dpi=PANEL_DPI)
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(img)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(path)
    return path


def check_cam_args(args):
    """Errors for --cam options that do not fit together (before anything is built)."""
    if (args.compare_weights or args.compare_config or args.compare_opts or args.cam_top) and not args.cam:
        raise ConfigError("--cam-top, --compare-weights, --compare-config and --compare-opts only apply with --cam; "
                          "add --cam.")
    if args.compare_opts and not args.compare_config:
        raise ConfigError("--compare-opts overrides the second model's config: give --compare-config and --compare-weights.")
    if bool(args.compare_weights) != bool(args.compare_config):
        raise ConfigError("--compare-weights and --compare-config go together: give the second model's weights AND its config.")
    if args.cam_top < 0:
        raise ConfigError(f"--cam-top must be >= 1 (or 0: the detections >= --score-thresh), got {args.cam_top}.")
    for flag, path in (("--compare-weights", args.compare_weights), ("--compare-config", args.compare_config)):
        if path and not os.path.isfile(path):
            raise FilesMissing(f"{flag} file {path!r} does not exist.")


def load_compare_model(cfg, args):
    """(label, model in eval mode, its DatasetMapper) of --compare-weights/--compare-config, or None."""
    if not args.compare_weights:
        return None
    overrides = [word for pair in args.compare_opts for word in pair]
    other = get_tde_cfg(args.compare_config,
                        overrides + ["MODEL.WEIGHTS", args.compare_weights, "MODEL.DEVICE", cfg.MODEL.DEVICE])
    other.freeze()
    if other.MODEL.ROI_HEADS.NUM_CLASSES != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
        raise ConfigError(
            f"--compare-config has MODEL.ROI_HEADS.NUM_CLASSES {other.MODEL.ROI_HEADS.NUM_CLASSES}, the main model "
            f"{cfg.MODEL.ROI_HEADS.NUM_CLASSES}: the second model must be trained on the same classes."
        )
    cli.check_weights(other, evaluate=True, need_mean=needs_trained_mean(
        other, [cfg.MODEL.TDE.ALPHA if args.alpha is None else args.alpha]))
    model = Trainer.build_model(other)
    DetectionCheckpointer(model).load(other.MODEL.WEIGHTS)
    label = os.path.splitext(os.path.basename(args.compare_config))[0]
    return label, model.eval(), DatasetMapper(other, is_train=False)


def class_frequency(metadata):
    """Per class its LVIS frequency group r/c/f from the dataset's json, or None when there is none."""
    json_file = metadata.get("json_file", None)
    if not json_file or not os.path.isfile(json_file):
        return None
    freq = lvis_category_stats(json_file)["frequency"]
    return freq if all(f in ("r", "c", "f") for f in freq) else None


def cam_rows(model, compare, model_input, inst, alpha, metadata, frequency):
    """Per detection [(title, CAM [H, W] in [0, 1] or None, box XYXY)]: the image around the box (title:
    the detection's score), the main model's plain and TDE CAM, then the second model's (its plain, and
    its TDE when it has a TDE head) on the same boxes (titles: each logit's score for the box)."""
    height, width = inst.image_size
    boxes, classes = inst.pred_boxes.tensor, inst.pred_classes
    names = metadata.get("thing_classes", None)
    models = [("De-confound", model, model_input)]
    if compare is not None:
        label, other, mapper = compare
        record = {k: model_input[k] for k in ("file_name", "image_id", "height", "width") if k in model_input}
        other_input = mapper(record)
        other_input.pop("instances", None)
        models.append((label, other, other_input))
    columns = []
    for label, m, x in models:
        cams = detection_cams(m, x, boxes, classes, alpha=alpha if has_tde_head(m) else None)
        # maps and scores come on the model's device; drawn on the CPU with the CPU boxes
        columns.append((f"{label}: plain y", paste_cams(cams.plain.cpu(), boxes, height, width), cams.plain_scores.cpu()))
        if cams.tde is not None:
            title = f"{label}-TDE: y-{cams.alpha:g}b" if label == "De-confound" else f"{label}: TDE y-{cams.alpha:g}b"
            columns.append((title, paste_cams(cams.tde.cpu(), boxes, height, width), cams.tde_scores.cpu()))
    rows = []
    for r, c in enumerate(classes.tolist()):
        name = names[c] if names and c < len(names) else f"class {c}"
        group = f" ({frequency[c]})" if frequency else ""
        image = (f"{name}{group}\ndetection, alpha={alpha:g}: {float(inst.scores[r]):.2f}", None, boxes[r].tolist())
        rows.append([image] + [(f"{name}{group}: {score[r]:.2f}\n{title}", cam[r].numpy(), boxes[r].tolist())
                               for title, cam, score in columns])  # fmt: skip
    return rows


def draw_cam_rows(image, rows, path):
    """Save one row of panels per detection as one PNG; rows: [(title, CAM [H, W] or None, box)].
    Each panel shows the detection's box (white) with a margin of one box size on every side (the box
    head sees only the box; the margin shows the context) and the CAM, if any, as a jet colour map
    (red = strongest), more opaque where it is stronger."""
    from matplotlib import colormaps
    from matplotlib.patches import Rectangle

    h, w = image.shape[:2]
    rows = rows or [[("no detections", None, None)]]
    ncol = max(len(r) for r in rows)
    fig = Figure(figsize=(1.7 * ncol, 2.0 * len(rows)), dpi=90)
    for i, row in enumerate(rows):
        for j, (title, cam, box) in enumerate(row):
            ax = fig.add_subplot(len(rows), ncol, i * ncol + j + 1)
            ax.imshow(image)
            if box is not None:
                x0, y0, x1, y1 = box
                if cam is not None:
                    heat = colormaps["jet"](cam)
                    in_box = (slice(int(y0), math.ceil(y1)), slice(int(x0), math.ceil(x1)))
                    opacity = np.zeros(cam.shape)
                    opacity[in_box] = 0.1 + 0.6 * cam[in_box]
                    heat[..., 3] = opacity
                    ax.imshow(heat)
                ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, edgecolor="white", linewidth=0.8))
                side = max(x1 - x0, y1 - y0, 8.0) * 3
                cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
                ax.set_xlim(max(cx - side / 2, -0.5), min(cx + side / 2, w - 0.5))
                ax.set_ylim(min(cy + side / 2, h - 0.5), max(cy - side / 2, -0.5))
            ax.set_title(title, fontsize=6)
            ax.axis("off")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    # a 256-colour palette: a third of the size, no visible loss for these pictures
    Image.open(buffer).convert("RGB").quantize(colors=256).save(path, optimize=True)
    return path


def main(args):
    setup_logger(name="tde_det")
    check_cam_args(args)
    cfg = setup(args)
    # everything read and checked before the output folder is made
    compare = load_compare_model(cfg, args) if args.cam else None
    inputs, metadata = load_inputs(cfg, args)
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "visualize")
    os.makedirs(output, exist_ok=True)
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    alpha = cfg.MODEL.TDE.ALPHA if args.alpha is None else args.alpha
    sweep = AlphaSweep(model, [alpha])
    frequency = class_frequency(metadata) if args.cam else None
    written = []
    for model_input, image, gt in inputs:
        with torch.no_grad():
            batch = sweep([model_input])
        name = os.path.splitext(os.path.basename(model_input.get("file_name", str(model_input["image_id"]))))[0]
        if args.cam:
            inst = batch.outputs(alpha)[0]["instances"].to("cpu")
            inst = inst[inst.scores.argsort(descending=True)]
            inst = inst[: args.cam_top] if args.cam_top else inst[inst.scores >= args.score_thresh]
            rows = cam_rows(model, compare, model_input, inst, alpha, metadata, frequency)
            written.append(draw_cam_rows(image, rows, os.path.join(output, f"{name}_alpha{alpha:g}_cam.png")))
            continue
        panels = []
        for title, a in (("plain (De-confound)", None), (f"De-confound-TDE, alpha={alpha:g}", alpha)):
            inst = batch.outputs(a)[0]["instances"].to("cpu")
            inst = inst[inst.scores >= args.score_thresh]
            drawn = draw_detections(image, metadata, lambda v, inst=inst: v.draw_instance_predictions(inst))
            panels.append((f"{title}: {len(inst)} detection{'' if len(inst) == 1 else 's'}", drawn))
        if gt is not None and gt.get("annotations") is not None:
            panels.append(("ground truth", draw_detections(image, metadata, lambda v: v.draw_dataset_dict(gt))))
        written.append(draw_panels(image, panels, os.path.join(output, f"{name}_alpha{alpha:g}.png")))
    print(f"Wrote {len(written)} image(s) to {output}")
    return written


if __name__ == "__main__":
    args = parse_args()
    with cli.exit_on_user_error(args.debug):
        main(args)
