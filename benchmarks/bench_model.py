"""Whole model: LVIS v1 Mask R-CNN R50-FPN with TDE heads vs Detectron2's standard heads.

    .venv/bin/python benchmarks/bench_model.py [--device cuda] [--reps 9] [--scale 1.0]

Random weights (the TDE model gets the baseline's weights for every shared parameter, so both see
the same proposals; GroupNorm and real pixel std so that random weights give ~1000 proposals;
score threshold 0 so that both keep 300 detections), one 800 x 1333 image. Times inference and one training step (forward, losses,
backward, SGD step), alternating the two models; reports medians and the median per-pair ratio
TDE / baseline (targets: inference <= 1.02, training <= 1.03). Peak memory (RSS on CPU,
torch.cuda.max_memory_allocated on CUDA) is measured for each model in its own subprocess running
the same work (target <= 1.05).
"""

import argparse
import json
import subprocess
import sys

import _common  # noqa: F401  (puts the repo on sys.path)
import torch
from _common import paired_times, peak_rss_mib, print_table, summarize
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from tde_det import add_tde_config

H, W = 800, 1333  # LVIS size; --scale shrinks it (and the ground truth) for quick CPU runs


def build(kind, device):
    cfg = get_cfg()
    add_tde_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file("LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.DEVICE = device
    # Random weights behave like a trained model only with normalisation that works from init
    # (FrozenBN + PIXEL_STD 1 explodes: one proposal, saturated logits) ...
    cfg.MODEL.RESNETS.NORM = "GN"
    cfg.MODEL.FPN.NORM = "GN"
    cfg.MODEL.PIXEL_STD = [57.375, 57.120, 58.395]
    # ... and both models must keep the same number of detections (300), or the mask head, which
    # runs on every kept detection, dominates the difference. With threshold 0 both keep the top 300.
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0
    if kind == "tde":
        cfg.MODEL.ROI_HEADS.NAME = "TDEStandardROIHeads"
    torch.manual_seed(0)
    return build_model(cfg)


def build_pair(device):
    baseline = build("baseline", device)
    tde = build("tde", device)
    base_state = baseline.state_dict()
    shared = {k: v for k, v in base_state.items() if k in tde.state_dict() and tde.state_dict()[k].shape == v.shape}
    tde.load_state_dict(shared, strict=False)
    gen = torch.Generator().manual_seed(1)
    for name, buf in tde.named_buffers():
        if name.endswith("mean_feature"):
            buf.copy_(torch.rand(buf.shape, generator=gen).to(buf.device))
    return baseline, tde


def image_size(scale):
    return round(H * scale), round(W * scale)


def make_inputs(device, scale=1.0):
    h, w = image_size(scale)
    gen = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8).to(device)
    boxes = torch.tensor([[100.0, 120.0, 400.0, 500.0], [600.0, 50.0, 1200.0, 700.0], [300, 300, 420, 380]]) * scale
    masks = torch.zeros(len(boxes), h, w, dtype=torch.bool)
    for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
        m[y0:y1, x0:x1] = True
    inst = Instances((h, w), gt_boxes=Boxes(boxes), gt_classes=torch.tensor([3, 500, 1100]), gt_masks=BitMasks(masks))
    train_inputs = [{"image": image, "instances": inst.to(device)}]
    test_inputs = [{"image": image, "height": h, "width": w}]
    return train_inputs, test_inputs


def runners(model, device, scale=1.0):
    train_inputs, test_inputs = make_inputs(device, scale)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-5, momentum=0.9)

    def infer():
        model.eval()
        with torch.no_grad():
            return model(test_inputs)

    def train_step():
        model.train()
        with EventStorage():
            losses = model(train_inputs)
        optimizer.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        optimizer.step()

    return infer, train_step


def measure_memory(kind, device, scale):
    """Child process: one inference and one training step of one model, print its peak memory (MiB)."""
    baseline, tde = build_pair(device)
    model = tde if kind == "tde" else baseline
    del baseline, tde
    infer, train_step = runners(model, device, scale)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    infer()
    train_step()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else peak_rss_mib()
    print(json.dumps({"peak_mib": peak}))


def memory_rows(device, scale):
    peaks = {}
    for kind in ("baseline", "tde"):
        out = subprocess.run(
            [sys.executable, __file__, "--device", device, "--scale", str(scale), "--memory-of", kind],
            capture_output=True, text=True, check=True,
        )
        peaks[kind] = json.loads(out.stdout.strip().splitlines()[-1])["peak_mib"]
    ratio = peaks["tde"] / peaks["baseline"]
    what = "max_memory_allocated" if device.startswith("cuda") else "peak RSS"
    return {"case": f"peak memory ({what}), MiB", "baseline_ms": peaks["baseline"], "tde_ms": peaks["tde"],
            "ratio": ratio, "target": 1.05, "ok": ratio <= 1.05}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--reps", type=int, default=9)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--scale", type=float, default=1.0, help="image size factor (1: 800 x 1333, LVIS size)")
    parser.add_argument("--json", help="also write the rows to this file")
    parser.add_argument("--memory-of", choices=["baseline", "tde"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_of:
        return measure_memory(args.memory_of, args.device, args.scale)

    h, w = image_size(args.scale)
    rows = [memory_rows(args.device, args.scale)]
    baseline, tde = build_pair(args.device)
    base_infer, base_train = runners(baseline, args.device, args.scale)
    tde_infer, tde_train = runners(tde, args.device, args.scale)
    counts = [len(infer()[0]["instances"]) for infer in (base_infer, tde_infer)]
    print(f"detections per image: baseline {counts[0]}, TDE {counts[1]}")
    if counts[0] != counts[1]:
        raise SystemExit("error: the two models keep different numbers of detections; the comparison would be unfair.")
    b, t, r = paired_times(base_infer, tde_infer, args.device, args.warmup, args.reps)
    rows.insert(0, summarize(f"inference, 1 image {h}x{w}", b, t, r, 1.02))
    b, t, r = paired_times(base_train, tde_train, args.device, args.warmup, args.reps)
    rows.insert(1, summarize("training step, 1 image", b, t, r, 1.03))

    name = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    print(f"LVIS v1 Mask R-CNN R50-FPN, random weights, device={args.device} [{name}], reps={args.reps}")
    print("(for the memory row, the time columns hold MiB)")
    print_table(rows, ["case", "baseline_ms", "tde_ms", "ratio", "target", "ok"])
    for row in rows[:2]:
        print(f"{row['case']}: baseline {1000 / row['baseline_ms']:.2f} images/s, TDE {1000 / row['tde_ms']:.2f} images/s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "image_size": [h, w], "detections": counts, "reps": args.reps, "rows": rows},
                      f, indent=2)


if __name__ == "__main__":
    main()
