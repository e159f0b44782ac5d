"""Does the moving-average feature x̄ settle? A short CPU training run of a tiny TDE Mask R-CNN.

    .venv/bin/python studies/tde_mean_convergence.py [--kind standard|cascade] [--steps 40]

Model: Detectron2's LVIS v1 Mask R-CNN R-50-FPN YAML with the TDE heads, shrunk for CPU
(R-18 with BN, FPN 32 channels, 64-d box head, K = 2, μ = MODEL.TDE.MOMENTUM = 0.9, 5 classes);
data: generated 128 px images with 1-3 class-coloured rectangles, batch 2, SGD lr 0.005 with
momentum 0.9 and gradient-norm clipping at 5.
Prints, per step, cos(x̄_t, x̄_{t−1}) per stage (the direction d̂ is what TDE uses), and at the
end the mean cos(x^k, d̂^k) over the test-time proposals of a held-out batch (α heuristic:
α · mean cos ≈ 1).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo, for tde_det

import torch  # noqa: E402
from detectron2 import model_zoo  # noqa: E402
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from tde_det.config import get_tde_cfg

NUM_CLASSES, SIZE = 5, 128
BASES = {
    "standard": ("LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "TDEStandardROIHeads"),
    "cascade": ("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml", "TDECascadeROIHeads"),
}
COLOURS = torch.tensor([[230, 40, 40], [40, 230, 40], [40, 40, 230], [230, 230, 40], [230, 40, 230]]).float()


def tiny_cfg(kind):
    base, heads = BASES[kind]
    cfg = get_tde_cfg(model_zoo.get_config_file(base))
    # fmt: off
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "", "MODEL.ROI_HEADS.NAME", heads,
        "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.NORM", "BN",
        "MODEL.PIXEL_STD", [57.4, 57.1, 58.4], "MODEL.FPN.OUT_CHANNELS", 32,
        "MODEL.ROI_BOX_HEAD.FC_DIM", 64, "MODEL.ROI_MASK_HEAD.CONV_DIM", 32, "MODEL.ROI_MASK_HEAD.NUM_CONV", 1,
        "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
        "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.001,
        "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
        "MODEL.RPN.PRE_NMS_TOPK_TEST", 200, "MODEL.RPN.POST_NMS_TOPK_TEST", 100,
    ])
    # fmt: on
    return cfg


def generated_batch(gen, n=2):
    batch = []
    for _ in range(n):
        image = torch.rand(3, SIZE, SIZE, generator=gen) * 60
        k = int(torch.randint(1, 4, (1,), generator=gen))
        boxes, classes, masks = [], [], torch.zeros(k, SIZE, SIZE, dtype=torch.bool)
        for j in range(k):
            w, h = (torch.randint(24, 64, (2,), generator=gen)).tolist()
            x0 = int(torch.randint(0, SIZE - w, (1,), generator=gen))
            y0 = int(torch.randint(0, SIZE - h, (1,), generator=gen))
            c = int(torch.randint(0, NUM_CLASSES, (1,), generator=gen))
            image[:, y0 : y0 + h, x0 : x0 + w] = COLOURS[c][:, None, None]
            masks[j, y0 : y0 + h, x0 : x0 + w] = True
            boxes.append([x0, y0, x0 + w, y0 + h])
            classes.append(c)
        inst = Instances((SIZE, SIZE), gt_boxes=Boxes(torch.tensor(boxes).float()),
                         gt_classes=torch.tensor(classes), gt_masks=BitMasks(masks))  # fmt: skip
        batch.append({"image": image, "instances": inst, "height": SIZE, "width": SIZE})
    return batch


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kind", choices=sorted(BASES), default="standard")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--lr", type=float, default=0.005)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(0)

    cfg = tiny_cfg(args.kind)
    model = build_model(cfg).train()
    bp = model.roi_heads.box_predictor
    predictors = list(bp) if isinstance(bp, torch.nn.ModuleList) else [bp]
    heads = predictors[0].cls_score.num_heads
    opt = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    prev = [None] * len(predictors)
    history = []  # per step: [x̄ of every stage]
    print(f"{args.kind}: K={heads} mu={cfg.MODEL.TDE.MOMENTUM} D={predictors[0].cls_score.weight.shape[1]}")
    print("step  loss   " + "  ".join(f"cos(m_t,m_t-1)[s{s}]" for s in range(len(predictors))))
    with EventStorage():
        for step in range(1, args.steps + 1):
            losses = model(generated_batch(gen))
            total = sum(losses.values())
            opt.zero_grad()
            total.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            cosines = []
            for s, p in enumerate(predictors):
                m = p.cls_score.mean_feature.clone()
                cosines.append(float("nan") if prev[s] is None else float(torch.cosine_similarity(m, prev[s], dim=0)))
                prev[s] = m
            history.append(list(prev))
            print(f"{step:4d}  {float(total.detach()):5.2f}  " + "  ".join(f"{c:18.5f}" for c in cosines))

    for s in range(len(predictors)):
        marks = sorted({1, 5, 10, args.steps // 2, args.steps - 5} & set(range(1, args.steps + 1)))
        to_final = ", ".join(
            f"t={t}: {float(torch.cosine_similarity(history[t - 1][s], history[-1][s], dim=0)):.4f}" for t in marks
        )
        print(f"stage {s}: cos(x̄_t, x̄_final) {to_final}")

    # Held-out batch: cos(x^k, d̂^k) over the test-time proposals of every stage.
    captured = []
    hooks = [p.register_forward_pre_hook(lambda mod, inp: captured.append((mod, inp[0].flatten(1)))) for p in predictors]
    model.eval()
    with torch.no_grad():
        model(generated_batch(torch.Generator().manual_seed(1), n=4))
    for h in hooks:
        h.remove()
    for s, (mod, feats) in enumerate(captured):
        cos = mod.cls_score.mean_cosine(feats)  # [R, K]
        per_head = ", ".join(f"{v:.4f}" for v in cos.mean(0).tolist())
        mean = float(cos.mean())
        print(f"stage {s}: {len(feats)} regions, mean cos(x, d_hat) = {mean:.4f} (per head {per_head}); "
              f"alpha heuristic 1/mean cos = {1 / mean if mean > 0 else float('inf'):.2f}")  # fmt: skip


if __name__ == "__main__":
    main()
