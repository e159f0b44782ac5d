#!/usr/bin/env python
"""Draw a TDE model's detections with Detectron2's Visualizer: plain | TDE (| ground truth), one PNG per image.

    # the first 8 images of the config's test set, TDE at alpha 1.5
    python tools/visualize.py --config-file configs/demo/tde_mask_rcnn_demo.yaml --alpha 1.5 \\
        --num-images 8 MODEL.WEIGHTS output/demo_tde_mask_rcnn/model_final.pth
    # your own images
    python tools/visualize.py --config-file CONFIG --input a.jpg b.jpg --output vis/ MODEL.WEIGHTS model.pth

Both panels come from ONE forward pass (:class:`tde_det.evaluation.alpha_sweep.AlphaSweep`): plain
is the cosine softmax (De-confound, alpha 0), TDE the background-exempt TDE scores at ``--alpha``
(default ``MODEL.TDE.ALPHA``). Detections with score >= ``--score-thresh`` are drawn; with
background exemption the two are calibrated alike, so one threshold serves both. Images of a
dataset also get a ground-truth panel. Runs on one process (``MODEL.DEVICE`` as configured).
"""

import argparse
import os
import re
import sys

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data import detection_utils as utils
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from tde_det import get_tde_cfg  # noqa: E402  (also registers the TDE heads, demo backbone and datasets)
from tde_det.data import prepare_dataset  # noqa: E402
from tde_det.engine import Trainer  # noqa: E402
from tde_det.evaluation.alpha_sweep import AlphaSweep  # noqa: E402

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
            raise SystemExit(f"error: --input needs image paths, got {args.input[0]!r}.")
        args.input, args.opts = args.input[:n], args.input[n:] + list(args.opts)
    return args


def setup(args):
    cfg = get_tde_cfg(args.config_file, args.opts)
    cfg.freeze()
    if not cfg.MODEL.WEIGHTS:
        raise ValueError("MODEL.WEIGHTS is empty: add the override MODEL.WEIGHTS path/to/model_final.pth.")
    return cfg


def load_inputs(cfg, args):
    """[(input dict for the model, RGB image [H, W, 3] uint8, dataset dict or None)], and the metadata."""
    mapper = DatasetMapper(cfg, is_train=False)
    if args.input:
        dataset_name = cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else ""
        records = []
        for i, path in enumerate(args.input):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"--input image {path!r} does not exist.")
            h, w = utils.read_image(path).shape[:2]
            records.append(({"file_name": path, "image_id": i, "height": h, "width": w}, None))
    else:
        dataset_name = args.dataset or (cfg.DATASETS.TEST[0] if cfg.DATASETS.TEST else "")
        if not dataset_name:
            raise ValueError("No images: pass --input IMAGE ... or --dataset NAME (DATASETS.TEST is empty).")
        prepare_dataset(dataset_name)
        records = [(dict(d), d) for d in DatasetCatalog.get(dataset_name)[: max(args.num_images, 0)]]
    out = []
    for record, gt in records:
        model_input = mapper(dict(record))
        model_input.pop("instances", None)
        out.append((model_input, utils.read_image(record["file_name"], format="RGB"), gt))
    return out, MetadataCatalog.get(dataset_name) if dataset_name else MetadataCatalog.get("__unused")


def draw_panels(image, panels, path):
    """Save [(title, drawn RGB array)] side by side as one PNG."""
    h, w = image.shape[:2]
    fig = Figure(figsize=(3.2 * len(panels) * w / max(h, w) + 0.4, 3.4 * h / max(h, w) + 0.4), dpi=150)
    for i, (title, img) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.imshow(img)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    FigureCanvasAgg(fig)
    fig.savefig(path)
    return path


def main(args):
    setup_logger(name="tde_det")
    cfg = setup(args)
    output = args.output or os.path.join(cfg.OUTPUT_DIR, "visualize")
    os.makedirs(output, exist_ok=True)
    model = Trainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()
    alpha = cfg.MODEL.TDE.ALPHA if args.alpha is None else args.alpha
    sweep = AlphaSweep(model, [alpha])
    inputs, metadata = load_inputs(cfg, args)
    written = []
    for model_input, image, gt in inputs:
        with torch.no_grad():
            batch = sweep([model_input])
        panels = []
        for title, a in (("plain (De-confound)", None), (f"De-confound-TDE, alpha={alpha:g}", alpha)):
            inst = batch.outputs(a)[0]["instances"].to("cpu")
            inst = inst[inst.scores >= args.score_thresh]
            drawn = Visualizer(image, metadata).draw_instance_predictions(inst).get_image()
            panels.append((f"{title}: {len(inst)} detections", drawn))
        if gt is not None and gt.get("annotations") is not None:
            panels.append(("ground truth", Visualizer(image, metadata).draw_dataset_dict(gt).get_image()))
        name = os.path.splitext(os.path.basename(model_input.get("file_name", str(model_input["image_id"]))))[0]
        written.append(draw_panels(image, panels, os.path.join(output, f"{name}_alpha{alpha:g}.png")))
    print(f"Wrote {len(written)} image(s) to {output}")
    return written


if __name__ == "__main__":
    main(parse_args())
