"""Box predictor alone at LVIS size: TDEFastRCNNOutputLayers vs Detectron2's FastRCNNOutputLayers.

    .venv/bin/python benchmarks/bench_predictor.py [--device cuda] [--reps 10] [--inference-regions 1000]

1,203 + 1 classes, 1,024-d features, class-specific box regression.
inference: 1,000 regions x 2 images, forward + predict_probs + fast_rcnn_inference (predictor.inference).
training:  512 sampled regions x 2 images, forward + losses + backward.
Inference is dominated, for both heads alike, by Detectron2's NMS over 1,203 classes (seconds per call on 2 cores).
Prints median times and the median of the per-pair ratios TDE / baseline (target <= 1.2).
"""

import argparse
import json

import _common  # noqa: F401  (puts the repo on sys.path)
import torch
from _common import paired_times, print_table, summarize
from detectron2.config import get_cfg
from detectron2.layers import ShapeSpec
from detectron2.modeling.roi_heads.fast_rcnn import FastRCNNOutputLayers
from detectron2.structures import Boxes, Instances
from detectron2.utils.events import EventStorage

from tde_det import add_tde_config
from tde_det.modeling.box_predictor import TDEFastRCNNOutputLayers

NUM_CLASSES, DIM, IMAGE_SIZE = 1203, 1024, (800, 1333)


def lvis_cfg(device):
    cfg = get_cfg()
    add_tde_config(cfg)
    cfg.MODEL.DEVICE = device
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0001
    cfg.TEST.DETECTIONS_PER_IMAGE = 300
    return cfg


def random_proposals(num_images, per_image, device, gen, with_gt):
    h, w = IMAGE_SIZE
    out = []
    for _ in range(num_images):
        xy = torch.rand(per_image, 2, generator=gen) * torch.tensor([w * 0.8, h * 0.8])
        wh = torch.rand(per_image, 2, generator=gen) * torch.tensor([w * 0.2, h * 0.2]) + 8
        boxes = torch.cat([xy, xy + wh], dim=1)
        inst = Instances(IMAGE_SIZE, proposal_boxes=Boxes(boxes.to(device)))
        if with_gt:
            inst.gt_boxes = Boxes((boxes + torch.randn(boxes.shape, generator=gen) * 4).to(device))
            # a quarter foreground, as Detectron2's sampler keeps at most 25% positives
            labels = torch.randint(0, NUM_CLASSES, (per_image,), generator=gen)
            labels[torch.rand(per_image, generator=gen) > 0.25] = NUM_CLASSES
            inst.gt_classes = labels.to(device)
        out.append(inst)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--inference-regions", type=int, default=1000, help="regions per image at inference")
    parser.add_argument("--train-regions", type=int, default=512, help="sampled regions per image in training")
    parser.add_argument("--json", help="also write the rows to this file")
    args = parser.parse_args()
    device = args.device
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    cfg = lvis_cfg(device)
    shape = ShapeSpec(channels=DIM)
    baseline = FastRCNNOutputLayers(cfg, shape).to(device)
    tde = TDEFastRCNNOutputLayers(cfg, shape).to(device)
    # a known head direction, so TDE inference runs its full path (not the "mean unknown" fallback)
    for name, buf in tde.named_buffers():
        if name.endswith("mean_feature"):
            buf.copy_(torch.rand(DIM, generator=gen).to(device))

    rows = []
    # inference: --inference-regions (1,000) x 2 images
    n = args.inference_regions
    feats = torch.relu(torch.randn(2 * n, DIM, generator=gen)).to(device)
    props = random_proposals(2, n, device, gen, with_gt=False)
    baseline.eval(), tde.eval()

    def infer(model):
        with torch.no_grad():
            return model.inference(model(feats), props)

    base, tde_t, ratios = paired_times(lambda: infer(baseline), lambda: infer(tde), device, args.warmup, args.reps)
    rows.append(summarize(f"inference 2x{n} regions", base, tde_t, ratios, 1.2))
    print(f"inference: median ratio {rows[0]['ratio']:.3f} (training next)", flush=True)

    # training: --train-regions (512) x 2 images
    n = args.train_regions
    feats = torch.relu(torch.randn(2 * n, DIM, generator=gen)).to(device).requires_grad_(True)
    props = random_proposals(2, n, device, gen, with_gt=True)
    baseline.train(), tde.train()

    def train_step(model):
        with EventStorage():  # Detectron2's losses log classification statistics
            losses = model.losses(model(feats), props)
        sum(losses.values()).backward()
        model.zero_grad(set_to_none=True)
        feats.grad = None

    base, tde_t, ratios = paired_times(
        lambda: train_step(baseline), lambda: train_step(tde), device, args.warmup, args.reps
    )
    rows.append(summarize(f"training 2x{n} regions", base, tde_t, ratios, 1.2))

    print(f"Box predictor, LVIS size ({NUM_CLASSES}+1 classes, {DIM}-d), device={device}, reps={args.reps}")
    print_table(rows, ["case", "baseline_ms", "tde_ms", "ratio", "target", "ok"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": device, "reps": args.reps, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
