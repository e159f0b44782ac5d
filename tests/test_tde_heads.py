"""TDEFastRCNNOutputLayers and the TDE ROI heads inside Detectron2 (tiny CPU models)."""

import functools
import logging
import os
import subprocess
import sys

import pytest
import torch
from detectron2 import model_zoo
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg, instantiate
from detectron2.layers import ShapeSpec
from detectron2.modeling import build_model
from helpers import single_thread  # noqa: F401  (autouse fixture)
from detectron2.modeling.roi_heads import FastRCNNOutputLayers
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage

from tde_det.config import add_tde_config
from tde_det.modeling import (
    TDECascadeROIHeads,
    TDEFastRCNNOutputLayers,
    TDEStandardROIHeads,
    background_exempt_probs,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = [
    "cpu",
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU")),
]
NUM_CLASSES, FEAT = 4, 8
PREDICTOR_LOGGER = "tde_det.modeling.box_predictor"


# ---------------------------------------------------------------- predictor alone
def predictor_cfg(*opts):
    cfg = get_cfg()
    add_tde_config(cfg)
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = NUM_CLASSES
    cfg.merge_from_list(list(opts))
    return cfg


def make_predictor(*opts, device="cpu"):
    torch.manual_seed(0)
    return TDEFastRCNNOutputLayers(predictor_cfg(*opts), ShapeSpec(channels=FEAT)).to(device)


def proposals_with_labels(labels_per_image, device="cpu"):
    out = []
    for labels in labels_per_image:
        n = len(labels)
        inst = Instances((64, 64))
        boxes = torch.tensor([[0.0, 0.0, 20.0, 20.0]], device=device).repeat(n, 1)
        inst.proposal_boxes = Boxes(boxes)
        inst.gt_boxes = Boxes(boxes + 1)
        inst.gt_classes = torch.tensor(labels, dtype=torch.long, device=device)
        out.append(inst)
    return out


def test_predictor_reads_every_tde_key_and_keeps_detectron2_names():
    p = make_predictor(
        "MODEL.TDE.NUM_HEADS", 4, "MODEL.TDE.SCALE", 10.0, "MODEL.TDE.GAMMA", 0.5,
        "MODEL.TDE.MOMENTUM", 0.5, "MODEL.TDE.ALPHA", 2.5, "MODEL.TDE.INFERENCE", "plain",
        "MODEL.TDE.BACKGROUND_EXEMPT", False, "MODEL.TDE.SYNC_MEAN", False,
    )  # fmt: skip
    c = p.cls_score
    assert (c.num_heads, c.scale, c.gamma, c.momentum, c.sync_mean) == (4, 10.0, 0.5, 0.5, False)
    assert (p.alpha, p.inference_mode, p.background_exempt) == (2.5, "plain", False)
    sd = p.state_dict()
    assert sd["cls_score.weight"].shape == (NUM_CLASSES + 1, FEAT)
    assert sd["cls_score.mean_feature"].shape == (FEAT,)
    assert "cls_score.bias" not in sd and "bbox_pred.weight" in sd


BAD_VALUES = [  # (config key, argument, bad value, what the message says after "arg=value (KEY)")
    ("MODEL.TDE.NUM_HEADS", "num_heads", 3, ""),
    ("MODEL.TDE.ALPHA", "alpha", -0.5, " must be a number >= 0"),
    ("MODEL.TDE.INFERENCE", "inference", "TDE-ish", r" must be one of \('tde', 'plain'\)"),
    ("MODEL.TDE.SCALE", "scale", 0.0, ""),
    ("MODEL.TDE.GAMMA", "gamma", -1.0, " must be a finite number > 0"),
    ("MODEL.TDE.MOMENTUM", "momentum", 1.0, r" must be in \[0, 1\)"),
    ("MODEL.TDE.BACKGROUND_EXEMPT", "background_exempt", "yes", " must be True or False"),
]


def _bad_value_pattern(key, arg, value, rest):
    if arg == "num_heads":  # D=8 is not divisible by num_heads=3 (MODEL.TDE.NUM_HEADS)
        return rf"D={FEAT} is not divisible by num_heads=3 \({key}\)"
    if arg == "scale":
        return rf"scale=0.0 \({key}, tau\) must be a finite number > 0"
    return rf"{arg}={value!r} \({key}\){rest}"


@pytest.mark.parametrize("key, arg, value, rest", [b for b in BAD_VALUES if b[1] != "background_exempt"])
def test_bad_config_values_fail_at_build_time(key, arg, value, rest):
    with pytest.raises(ValueError, match=_bad_value_pattern(key, arg, value, rest)):
        make_predictor(key, value)


@pytest.mark.parametrize("key, arg, value, rest", BAD_VALUES)
def test_bad_arguments_name_the_argument_and_its_config_key(key, arg, value, rest):
    """Python / LazyConfig users pass arguments, not keys: the error names both."""
    from detectron2.modeling.box_regression import Box2BoxTransform

    with pytest.raises(ValueError, match=_bad_value_pattern(key, arg, value, rest)):
        TDEFastRCNNOutputLayers(
            ShapeSpec(channels=FEAT), box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)),
            num_classes=NUM_CLASSES, **{arg: value},
        )  # fmt: skip


def test_missing_add_tde_config_is_a_clear_error():
    cfg = get_cfg()
    with pytest.raises(KeyError, match="add_tde_config"):
        TDEFastRCNNOutputLayers(cfg, ShapeSpec(channels=FEAT))


@pytest.mark.parametrize("device", DEVICES)
def test_eval_scores_modes(device, caplog):
    x = torch.randn(7, FEAT, device=device)
    proposals = proposals_with_labels([[0] * 3, [0] * 4], device)

    tde = make_predictor(device=device).eval()
    with caplog.at_level(logging.WARNING, logger=PREDICTOR_LOGGER):
        preds = tde(x)
        before = torch.cat(tde.predict_probs(preds, proposals))
    # Detectron2's plain (scores, deltas) tuple; with x̄ still zero the TDE logits are y exactly
    # (b = 0, no branch), so the scores are the plain softmax; nothing is logged at inference.
    assert type(preds) is tuple and len(preds) == 2 and preds[0].dtype == torch.float32
    y = tde.cls_score(x)
    assert torch.equal(preds[0], y) and torch.equal(before, torch.softmax(y, 1))
    assert not caplog.records and not tde.tde_active()

    mean = torch.randn(FEAT, device=device)
    tde.cls_score.mean_feature.copy_(mean)
    preds = tde(x)
    probs = tde.predict_probs(preds, proposals)
    assert [len(p) for p in probs] == [3, 4]
    (y, deltas), b = tde.forward_with_counterfactual(x)
    torch.testing.assert_close(y, tde.cls_score(x))
    torch.testing.assert_close(b, tde.cls_score.counterfactual(x))
    assert torch.equal(deltas, preds[1]) and b.abs().max() > 0 and tde.tde_active()
    expected = background_exempt_probs(y, y - 1.5 * b)
    torch.testing.assert_close(torch.cat(probs), expected)
    assert not torch.allclose(torch.cat(probs), torch.softmax(y, 1), atol=1e-3)

    tde.alpha = 0.0
    assert torch.equal(torch.cat(tde.predict_probs(tde(x), proposals)), torch.softmax(y, 1))
    with pytest.raises(ValueError, match=r"alpha=-1.0 \(MODEL.TDE.ALPHA\) must be a number >= 0"):
        tde.alpha = -1.0

    no_exempt = make_predictor("MODEL.TDE.BACKGROUND_EXEMPT", False, device=device).eval()
    no_exempt.cls_score.mean_feature.copy_(mean)
    torch.testing.assert_close(
        torch.cat(no_exempt.predict_probs(no_exempt(x), proposals)), torch.softmax(y - 1.5 * b, 1)
    )

    plain = [
        make_predictor("MODEL.TDE.INFERENCE", "plain", "MODEL.TDE.ALPHA", a, device=device).eval() for a in (0.5, 3.0)
    ]
    outs = []
    for p in plain:
        p.cls_score.mean_feature.copy_(mean)
        outs.append(torch.cat(p.predict_probs(p(x), proposals)))
    assert torch.equal(outs[0], outs[1])
    torch.testing.assert_close(outs[0], torch.softmax(y, 1))


@pytest.mark.parametrize("device", DEVICES)
def test_mean_updates_from_foreground_only_in_training_with_grad(device):
    mu = 0.9
    p = make_predictor("MODEL.TDE.MOMENTUM", mu, device=device).train()
    labels = [[0, NUM_CLASSES, 3, NUM_CLASSES], [NUM_CLASSES, 1, 2]]  # NUM_CLASSES = background
    proposals = proposals_with_labels(labels, device)
    x = torch.randn(7, FEAT, device=device, requires_grad=True)
    fg = torch.tensor([True, False, True, False, False, True, True], device=device)
    with EventStorage():
        preds = p(x)
        losses = p.losses(preds, proposals)
        expected = (1 - mu) * x.detach()[fg].mean(0)
        torch.testing.assert_close(p.cls_score.mean_feature, expected)
        gt = torch.cat([q.gt_classes for q in proposals])
        torch.testing.assert_close(losses["loss_cls"], torch.nn.functional.cross_entropy(preds[0], gt))
        losses["loss_cls"].backward()
        assert p.cls_score.weight.grad.abs().sum() > 0

        snapshot = p.cls_score.mean_feature.clone()
        all_bg = proposals_with_labels([[NUM_CLASSES] * 3], device)
        p.losses(p(torch.randn(3, FEAT, device=device)), all_bg)  # no foreground
        assert torch.equal(p.cls_score.mean_feature, snapshot)
        with torch.no_grad():  # e.g. PreciseBN / loss evaluation passes in training mode
            p.losses(p(x), proposals)
        assert torch.equal(p.cls_score.mean_feature, snapshot)
        p.eval()
        p.losses(p(x), proposals)
        p.predict_probs(p(x), proposals)
        assert torch.equal(p.cls_score.mean_feature, snapshot)


def test_training_losses_without_their_forward_are_a_clear_error():
    p = make_predictor().train()
    proposals = proposals_with_labels([[0, 1]])
    outputs = (torch.randn(2, NUM_CLASSES + 1), torch.randn(2, 4 * NUM_CLASSES))
    with EventStorage():
        with pytest.raises(RuntimeError, match=r"call forward\(x\) in training mode on the same 2 regions first"):
            p.losses(outputs, proposals)
        p.losses(p(torch.randn(2, FEAT)), proposals)  # the features are consumed ...
        with pytest.raises(RuntimeError, match="got no forward"):
            p.losses(outputs, proposals)  # ... by one losses() call
        p(torch.randn(3, FEAT))
        with pytest.raises(RuntimeError, match="got a forward of 3 regions"):
            p.losses(outputs, proposals)


def _softmax_predictor():
    from detectron2.modeling.box_regression import Box2BoxTransform

    torch.manual_seed(1)
    return FastRCNNOutputLayers(
        ShapeSpec(channels=FEAT), box2box_transform=Box2BoxTransform((10.0, 10.0, 5.0, 5.0)), num_classes=NUM_CLASSES
    )


def test_loading_a_softmax_predictor_says_in_one_line_what_is_kept_and_dropped(caplog):
    softmax = _softmax_predictor()
    tde = make_predictor()
    with caplog.at_level(logging.INFO):
        result = tde.load_state_dict(softmax.state_dict())  # strict: nothing missing or unexpected
    assert not result.missing_keys and not result.unexpected_keys
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and caplog.records[0].levelno == logging.WARNING, lines
    assert "kept cls_score.weight (the class weights)" in lines[0]
    assert "dropped cls_score.bias" in lines[0] and "starts at zero" in lines[0]
    assert torch.equal(tde.cls_score.weight, softmax.cls_score.weight)
    assert torch.equal(tde.bbox_pred.weight, softmax.bbox_pred.weight)
    assert not tde.cls_score.mean_feature.any()


def test_finetuning_from_a_detectron2_softmax_checkpoint_logs_one_line(tmp_path, caplog):
    """A Detectron2 Mask R-CNN checkpoint (linear softmax box classifier) loaded into the TDE model
    with Detectron2's checkpointer: one line about cls_score, no missing/unexpected-key warnings for it."""
    cfg = tiny_yaml_cfg("standard")
    softmax_cfg = cfg.clone()
    softmax_cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    torch.manual_seed(0)
    softmax = build_model(softmax_cfg)
    DetectionCheckpointer(softmax, save_dir=str(tmp_path)).save("softmax")
    torch.manual_seed(1)
    tde = build_model(cfg)
    with caplog.at_level(logging.INFO):
        DetectionCheckpointer(tde).load(str(tmp_path / "softmax.pth"))
    mentions = [m for m in (r.getMessage() for r in caplog.records) if "cls_score" in m or "mean_feature" in m]
    assert len(mentions) == 1, mentions
    assert "kept roi_heads.box_predictor.cls_score.weight (the class weights)" in mentions[0]
    assert "dropped roi_heads.box_predictor.cls_score.bias" in mentions[0] and "starts at zero" in mentions[0]
    head = tde.roi_heads.box_predictor
    assert torch.equal(head.cls_score.weight, softmax.roi_heads.box_predictor.cls_score.weight)
    assert not head.cls_score.mean_feature.any() and not head.tde_active()
    train_one_step(tde)  # fine-tuning learns x̄
    assert head.tde_active()


def test_loading_a_zero_mean_warns_at_load_time_not_at_inference(caplog):
    untrained = make_predictor().state_dict()
    trained = dict(untrained, **{"cls_score.mean_feature": torch.rand(FEAT) + 0.1})
    p = make_predictor().eval()
    with caplog.at_level(logging.WARNING, logger=PREDICTOR_LOGGER):
        p.load_state_dict(trained)
        assert not caplog.records
        p.load_state_dict(untrained)
        assert len(caplog.records) == 1 and "all zero" in caplog.records[0].getMessage()
        p(torch.randn(3, FEAT))
        assert len(caplog.records) == 1
        make_predictor("MODEL.TDE.INFERENCE", "plain").load_state_dict(untrained)  # plain: nothing to warn
        assert len(caplog.records) == 1


# ---------------------------------------------------------------- whole models
TINY_OPTS = [
    "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
    "MODEL.RESNETS.DEPTH", 18, "MODEL.RESNETS.RES2_OUT_CHANNELS", 64, "MODEL.RESNETS.NORM", "BN",
    "MODEL.PIXEL_STD", [57.4, 57.1, 58.4],
    "MODEL.FPN.OUT_CHANNELS", 32, "MODEL.ROI_BOX_HEAD.FC_DIM", 64,
    "MODEL.ROI_MASK_HEAD.CONV_DIM", 32, "MODEL.ROI_MASK_HEAD.NUM_CONV", 1,
    "MODEL.ROI_HEADS.NUM_CLASSES", 5, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.001,
    "MODEL.RPN.PRE_NMS_TOPK_TRAIN", 200, "MODEL.RPN.POST_NMS_TOPK_TRAIN", 100,
    "MODEL.RPN.PRE_NMS_TOPK_TEST", 200, "MODEL.RPN.POST_NMS_TOPK_TEST", 50,
]  # fmt: skip
YAML_BASES = {
    "standard": ("LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml", "TDEStandardROIHeads"),
    "cascade": ("Misc/cascade_mask_rcnn_R_50_FPN_1x.yaml", "TDECascadeROIHeads"),
}
LAZY_BASES = {"standard": "common/models/mask_rcnn_fpn.py", "cascade": "common/models/cascade_rcnn.py"}


def tiny_yaml_cfg(kind):
    base, heads = YAML_BASES[kind]
    cfg = get_cfg()
    add_tde_config(cfg)
    cfg.merge_from_file(model_zoo.get_config_file(base))
    cfg.merge_from_list(TINY_OPTS + ["MODEL.ROI_HEADS.NAME", heads])  # the only TDE switch
    return cfg


def tiny_lazy_model_cfg(kind):
    """Detectron2's LazyConfig model with the TDE heads/predictors swapped in, shrunk for CPU."""
    model = model_zoo.get_config(LAZY_BASES[kind]).model
    bottom_up = model.backbone.bottom_up
    bottom_up.stem.norm = "BN"
    bottom_up.stages.update(depth=18, norm="BN")
    del bottom_up.stages.stride_in_1x1  # BasicBlock has no such argument
    model.backbone.out_channels = 32
    model.proposal_generator.head.in_channels = 32
    model.proposal_generator.update(pre_nms_topk=(200, 200), post_nms_topk=(100, 50))
    model.pixel_std = [57.4, 57.1, 58.4]
    rh = model.roi_heads
    rh.update(num_classes=5, batch_size_per_image=64)
    rh.mask_head.update(input_shape=ShapeSpec(channels=32, width=14, height=14), conv_dims=[32, 32])
    if kind == "standard":
        rh._target_ = TDEStandardROIHeads
        heads, predictors = [rh.box_head], [rh.box_predictor]
    else:
        rh._target_ = TDECascadeROIHeads
        heads, predictors = rh.box_heads, rh.box_predictors
    for head in heads:
        head.update(input_shape=ShapeSpec(channels=32, height=7, width=7), fc_dims=[64, 64])
    for pred in predictors:
        pred.update(
            _target_=TDEFastRCNNOutputLayers, input_shape=ShapeSpec(channels=64), test_score_thresh=0.001, alpha=1.5
        )
    return model


def synthetic_batch(n=2, size=128, seed=0, with_targets=True):
    g = torch.Generator().manual_seed(seed)
    batch = []
    for i in range(n):
        image = torch.randint(0, 256, (3, size, size), generator=g).float()
        item = {"image": image, "height": size, "width": size}
        if with_targets:
            boxes = torch.tensor([[10.0, 10.0, 60.0, 70.0], [50.0, 40.0, 120.0, 110.0]])
            masks = torch.zeros(2, size, size, dtype=torch.bool)
            for m, (x0, y0, x1, y1) in zip(masks, boxes.int().tolist()):
                m[y0:y1, x0:x1] = True
                image[:, y0:y1, x0:x1] = 255.0 * (i + 1) / (n + 1)
            inst = Instances((size, size))
            inst.gt_boxes = Boxes(boxes)
            inst.gt_classes = torch.tensor([i % 5, (i + 2) % 5])
            inst.gt_masks = BitMasks(masks)
            item["instances"] = inst
        batch.append(item)
    return batch


def tde_predictors(model):
    bp = model.roi_heads.box_predictor
    return list(bp) if isinstance(bp, torch.nn.ModuleList) else [bp]


def train_one_step(model):
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage():
        losses = model(synthetic_batch())
    total = sum(losses.values())
    opt.zero_grad()
    total.backward()
    opt.step()
    return losses


def detections(model, batch):
    model.eval()
    with torch.no_grad():
        out = model(batch)
    return [
        {
            "boxes": o["instances"].pred_boxes.tensor,
            "scores": o["instances"].scores,
            "classes": o["instances"].pred_classes,
            "masks": o["instances"].pred_masks,
        }
        for o in out
    ]


@functools.lru_cache(maxsize=None)
def built_model(source, kind):
    """(cfg or None, model) for a tiny Mask / Cascade Mask R-CNN, before any training."""
    torch.manual_seed(0)
    if source == "yaml":
        cfg = tiny_yaml_cfg(kind)
        return cfg, build_model(cfg)
    return None, instantiate(tiny_lazy_model_cfg(kind))


@pytest.mark.parametrize("source", ["yaml", "lazy"])
@pytest.mark.parametrize("kind", ["standard", "cascade"])
def test_model_trains_and_infers_with_tde(source, kind, caplog):
    _, model = built_model(source, kind)
    preds = tde_predictors(model)
    heads_cls = TDEStandardROIHeads if kind == "standard" else TDECascadeROIHeads
    assert type(model.roi_heads) is heads_cls
    assert len(preds) == (1 if kind == "standard" else 3)
    assert all(type(p) is TDEFastRCNNOutputLayers for p in preds)
    assert len({id(p.cls_score.mean_feature) for p in preds}) == len(preds)  # own x̄ per stage

    # Before any training step x̄ = 0: the TDE detections are exactly the plain ones (no branch).
    with caplog.at_level(logging.WARNING, logger=PREDICTOR_LOGGER):
        untrained = detections(model, synthetic_batch(with_targets=False))
    assert all(torch.isfinite(d["scores"]).all() for d in untrained)
    for p in preds:
        p.inference_mode = "plain"
    untrained_plain = detections(model, synthetic_batch(with_targets=False))
    for p in preds:
        p.inference_mode = "tde"
    for d, q in zip(untrained, untrained_plain):
        assert all(torch.equal(d[k], q[k]) for k in d)
    assert not caplog.records

    losses = train_one_step(model)
    assert all(torch.isfinite(v) for v in losses.values())
    assert {"loss_cls", "loss_mask"} <= set(losses) or {"loss_cls_stage2", "loss_mask"} <= set(losses)
    means = [p.cls_score.mean_feature.clone() for p in preds]
    assert all(m.abs().sum() > 0 for m in means)
    if len(means) > 1:
        assert not torch.allclose(means[0], means[1])

    batch = synthetic_batch(seed=1, with_targets=False)
    dets = detections(model, batch)
    assert sum(len(d["scores"]) for d in dets) > 0
    assert all(torch.isfinite(d["scores"]).all() and (d["scores"] <= 1).all() for d in dets)
    assert all(d["masks"].shape[1:] == (128, 128) for d in dets)
    for p, m in zip(preds, means):  # inference never moves x̄
        assert torch.equal(p.cls_score.mean_feature, m) and p.tde_active()

    for p in preds:  # the same model with plain cosine scores ranks differently
        p.inference_mode = "plain"
    plain = detections(model, batch)
    for p in preds:
        p.inference_mode = "tde"
    assert not all(
        d["scores"].shape == q["scores"].shape and torch.allclose(d["scores"], q["scores"]) for d, q in zip(dets, plain)
    )


def test_lazy_heads_reject_a_plain_predictor():
    model_cfg = tiny_lazy_model_cfg("standard")
    model_cfg.roi_heads.box_predictor._target_ = FastRCNNOutputLayers
    model_cfg.roi_heads.box_predictor.pop("alpha")
    with pytest.raises(TypeError, match="needs TDEFastRCNNOutputLayers"):
        instantiate(model_cfg.roi_heads)


_LOAD_AND_DETECT = """
import sys, torch
import tde_det.modeling  # registers the heads
from tde_det.config import add_tde_config
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
cfg_path, ckpt, inputs, out = sys.argv[1:]
cfg = get_cfg(); add_tde_config(cfg); cfg.merge_from_file(cfg_path)
model = build_model(cfg).eval()
DetectionCheckpointer(model).load(ckpt)
with torch.no_grad():
    res = model(torch.load(inputs))
torch.save([{"boxes": r["instances"].pred_boxes.tensor, "scores": r["instances"].scores,
             "classes": r["instances"].pred_classes, "masks": r["instances"].pred_masks} for r in res], out)
"""


def test_checkpoint_round_trip_restores_every_stage_mean_and_detections(tmp_path):
    cfg, model = built_model("yaml", "cascade")
    if not all(p.cls_score.has_mean for p in tde_predictors(model)):
        train_one_step(model)
    means = [p.cls_score.mean_feature.clone() for p in tde_predictors(model)]
    assert all(m.abs().sum() > 0 for m in means)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    ckpt = str(tmp_path / "model.pth")
    saved = torch.load(ckpt, weights_only=False)["model"]
    for k in range(3):
        assert torch.equal(saved[f"roi_heads.box_predictor.{k}.cls_score.mean_feature"], means[k])

    torch.manual_seed(123)
    fresh = build_model(cfg)
    DetectionCheckpointer(fresh).load(ckpt)
    for p, m in zip(tde_predictors(fresh), means):
        assert torch.equal(p.cls_score.mean_feature, m)

    batch = synthetic_batch(seed=2, with_targets=False)
    expected = detections(model, batch)
    torch.save(batch, tmp_path / "inputs.pt")
    (tmp_path / "cfg.yaml").write_text(cfg.dump())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(
        [sys.executable, "-c", _LOAD_AND_DETECT, str(tmp_path / "cfg.yaml"), ckpt,
         str(tmp_path / "inputs.pt"), str(tmp_path / "out.pt")],
        check=True, cwd=REPO, env=env,
    )  # fmt: skip
    got = torch.load(tmp_path / "out.pt")
    assert sum(len(d["scores"]) for d in expected) > 0
    for e, g in zip(expected, got):
        assert torch.equal(e["classes"], g["classes"])
        for key in ("boxes", "scores", "masks"):
            torch.testing.assert_close(e[key], g[key])

    # The restored x̄ is what makes these detections: without it the scores change.
    for p in tde_predictors(fresh):
        p.cls_score.mean_feature.zero_()
    without_mean = detections(fresh, batch)
    assert not all(
        e["scores"].shape == w["scores"].shape and torch.allclose(e["scores"], w["scores"])
        for e, w in zip(expected, without_mean)
    )
