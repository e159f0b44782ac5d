"""The one-pass α sweep (tde_det.analysis.alpha_sweep), its heuristic, the pictures and the tools.

Tiny random-weight Mask R-CNNs (Standard and Cascade TDE heads, a random mean feature) on a few
small generated images; nothing is timed here (see benchmarks/bench_alpha_sweep.py).
"""

import json
import os
from unittest import mock

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.evaluation import DatasetEvaluator
from detectron2.modeling import build_model
from helpers import load_script, register_tiny_demo, set_means
from matplotlib.image import imread

from tde_det import add_tde_config
from tde_det.errors import ConfigError
from tde_det.analysis.alpha_sweep import (
    AlphaSweep,
    best_per_metric,
    check_alphas,
    format_sweep_table,
    inference_on_dataset_alphas,
    metric_rows,
)
from tde_det.analysis.figures import lvis_category_stats, plot_alpha_curves, plot_prediction_distribution

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NUM_CLASSES = 6
ALPHAS = [0.0, 0.5, 1.5, 3.0]
TINY = [
    "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES, "MODEL.RPN.POST_NMS_TOPK_TEST", 48,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 32, "MODEL.ROI_MASK_HEAD.CONV_DIM", 8, "MODEL.ROI_MASK_HEAD.NUM_CONV", 1,
    "MODEL.FPN.OUT_CHANNELS", 16, "TEST.DETECTIONS_PER_IMAGE", 20, "MODEL.DEVICE", "cpu",
]  # fmt: skip
HEADS = {
    "standard": ["MODEL.ROI_HEADS.NAME", "TDEStandardROIHeads"],
    "cascade": ["MODEL.ROI_HEADS.NAME", "TDECascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True],
}


def tiny_cfg(heads, *opts):
    cfg = get_cfg()
    add_tde_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "demo", "Base-demo.yaml"))
    cfg.merge_from_list(TINY + HEADS[heads] + list(opts))
    return cfg


@pytest.fixture(scope="module", params=["standard", "cascade"])
def tiny(request):
    """(heads, trained-looking random model in eval mode, its state dict)."""
    torch.manual_seed(0)
    model = build_model(tiny_cfg(request.param)).eval()
    set_means(model, 1)
    return request.param, model, model.state_dict()


def make_batches(num_batches=2, per_batch=2, seed=2):
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for b in range(num_batches):
        batch = []
        for i in range(per_batch):
            h, w = 56 + 8 * i, 72 + 8 * b
            image = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
            batch.append({"image": image, "height": 2 * h, "width": 2 * w, "image_id": len(batches) * 10 + i})
        batches.append(batch)
    return batches


class Recorder(DatasetEvaluator):
    """Keeps every output (what a real evaluator would score)."""

    def reset(self):
        self.outputs = []

    def process(self, inputs, outputs):
        self.outputs.extend(o["instances"] for o in outputs)

    def evaluate(self):
        return {"bbox": {"AP": float(sum(len(i) for i in self.outputs))}}


def assert_same_detections(a, b):
    assert len(a) == len(b) and a.image_size == b.image_size
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    assert torch.equal(a.scores, b.scores)
    assert torch.equal(a.pred_classes, b.pred_classes)
    assert torch.equal(a.pred_masks, b.pred_masks)


# ------------------------------------------------------------------- detections
def test_sweep_equals_eval_only_run_for_every_alpha(tiny):
    heads, model, state = tiny
    batches = make_batches()
    recorders = {}

    def make(name):
        recorders[name] = Recorder()
        return recorders[name]

    result = inference_on_dataset_alphas(model, batches, ALPHAS, make)
    assert list(result.results) == ["plain", "alpha=0", "alpha=0.5", "alpha=1.5", "alpha=3"]
    assert set(recorders) == {"plain", "alpha=0.5", "alpha=1.5", "alpha=3"}  # alpha 0 shares plain's

    def reference(*opts):
        ref = build_model(tiny_cfg(heads, *opts)).eval()
        ref.load_state_dict(state)
        with torch.no_grad():
            return [o["instances"] for batch in batches for o in ref(batch)]

    for name, opts in [("plain", ("MODEL.TDE.INFERENCE", "plain"))] + [
        (f"alpha={a:g}", ("MODEL.TDE.ALPHA", a)) for a in ALPHAS if a
    ]:
        expected = reference(*opts)
        got = recorders[name].outputs
        assert len(got) == len(expected) == 4
        for g, e in zip(got, expected):
            assert_same_detections(g, e)
    # α = 0 in "tde" mode is the plain model too.
    for g, e in zip(recorders["plain"].outputs, reference("MODEL.TDE.ALPHA", 0.0)):
        assert_same_detections(g, e)
    # ...and the α really matter here (else the comparison above would be vacuous).
    plain, strong = recorders["plain"].outputs, recorders["alpha=3"].outputs
    assert any(not torch.equal(p.scores, s.scores) or not torch.equal(p.pred_classes, s.pred_classes)
               for p, s in zip(plain, strong))
    assert all(len(i) > 0 for i in strong)
    # The mask head ran on the union of all α's detections, fewer than their sum (shared rows).
    stats = result.stats
    assert 0 < stats.num_union_detections < stats.num_detections

    # Pasting each α's masks separately (paste budget 0) gives the same, and outputs() can be re-read;
    # the mask head in chunks of 7 detections too.
    separate = AlphaSweep(model, ALPHAS, paste_budget=0)
    with torch.no_grad(), mock.patch("tde_det.analysis.alpha_sweep.MASK_HEAD_CHUNK", 7):
        sweeps = [separate(batch) for batch in batches]
    assert max(len(u) for s in sweeps for u in s.unions) > 7
    for name, a in [("plain", None), ("alpha=0.5", 0.5), ("alpha=3", 3.0)]:
        for again in range(2):
            got = [o["instances"] for s in sweeps for o in s.outputs(a)]
            for g, e in zip(got, recorders[name].outputs):
                assert_same_detections(g, e)


def test_top1_counts_follow_the_scores(tiny):
    _, model, _ = tiny
    sweep = AlphaSweep(model, [1.5])
    with torch.no_grad():
        for batch in make_batches(1):
            sweep(batch)
    top1 = sweep.stats.top1
    assert top1.shape == (2, NUM_CLASSES)
    assert int(top1[0].sum()) == int(top1[1].sum()) == sweep.stats.num_fg_regions > 0
    assert sweep.stats.top1_counts(None) == top1[0].tolist()


# ------------------------------------------------------------------- heuristic
def hand_mean_cos(predictor, features):
    """mean over regions and heads of cos(x^k, x̄^k), written out with loops."""
    k_heads = predictor.cls_score.num_heads
    mean = predictor.cls_score.mean_feature
    d = features.shape[1] // k_heads
    total, n = 0.0, 0
    for x in features:
        for k in range(k_heads):
            xk, mk = x[k * d : (k + 1) * d].double(), mean[k * d : (k + 1) * d].double()
            total += float(xk @ mk / (xk.norm() * mk.norm()))
            n += 1
    return total / n


def test_heuristic_alpha_comes_from_the_measured_cos(tiny):
    _, model, state = tiny
    try:
        for seed in (1, 7):
            set_means(model, seed)
            predictors = list(model.roi_heads.box_predictor) if hasattr(model.roi_heads, "num_cascade_stages") else [
                model.roi_heads.box_predictor
            ]
            captured = {i: [] for i in range(len(predictors))}
            heads = model.roi_heads
            box_heads = list(heads.box_head) if hasattr(heads, "num_cascade_stages") else [heads.box_head]
            hooks = [  # each stage's box-head output is its predictor's input x
                h.register_forward_hook(lambda m, inp, out, i=i: captured[i].append(out.flatten(1)))
                for i, h in enumerate(box_heads)
            ]
            try:
                result = inference_on_dataset_alphas(model, make_batches(), [1.0])
            finally:
                for h in hooks:
                    h.remove()
            expected = [hand_mean_cos(p, torch.cat(captured[i])) for i, p in enumerate(predictors)]
            assert result.stats.mean_cos_per_stage == pytest.approx(expected, abs=1e-6)
            mean = sum(expected) / len(expected)
            assert result.mean_cos == pytest.approx(mean, abs=1e-6)
            assert result.heuristic_alpha == pytest.approx(1.0 / mean, rel=1e-5)
            assert result.stats.num_regions == len(torch.cat(captured[0]))
            if seed == 1:
                first = result.heuristic_alpha
        assert result.heuristic_alpha != pytest.approx(first, rel=1e-3)
    finally:
        model.load_state_dict(state)


# ------------------------------------------------------------------- bad input
def test_bad_alphas_and_models_get_clear_errors():
    assert check_alphas([0, "1.5", 2]) == [0.0, 1.5, 2.0]
    for bad, words in [([], "at least one"), ([1, -0.5], ">= 0"), ([1, 1.0], "twice"), (["x"], "numbers"),
                       ([float("nan")], "finite")]:  # fmt: skip
        with pytest.raises(ConfigError, match=words):
            check_alphas(bad)
    softmax = build_model(tiny_cfg("standard", "MODEL.ROI_HEADS.NAME", "StandardROIHeads")).eval()
    with pytest.raises(ConfigError, match="TDEStandardROIHeads or TDECascadeROIHeads"):
        AlphaSweep(softmax, [1.0])
    untrained = build_model(tiny_cfg("standard")).eval()
    with pytest.raises(ConfigError, match="MODEL.WEIGHTS"):
        AlphaSweep(untrained, [1.0])


# ------------------------------------------------------------------- table and pictures
RESULTS = {
    "plain": {"segm": {"AP": 20.0, "AP50": 30.0, "APr": 5.0, "APc": 18.0, "APf": 30.0}, "bbox": {"AP": 22.0}},
    "alpha=1": {"segm": {"AP": 22.0, "AP50": 31.0, "APr": 9.0, "APc": 21.0, "APf": 29.0}, "bbox": {"AP": 24.0}},
    "alpha=2": {"segm": {"AP": 21.0, "AP50": 32.0, "APr": 12.0, "APc": 20.0, "APf": -1}, "bbox": {"AP": 23.0}},
}


def test_rows_table_and_best_alpha():
    rows = metric_rows(RESULTS, [1.0, 2.0])
    assert [r["alpha"] for r in rows] == [None, 1.0, 2.0]
    assert rows[2]["APf"] is None  # LVIS's -1: no category of the group
    best = best_per_metric(rows)
    assert best["AP"]["setting"] == "alpha=1" and best["APr"]["alpha"] == 2.0 and best["APf"]["setting"] == "plain"
    assert best["APbox"]["value"] == 24.0
    table = format_sweep_table(rows, 0.5, 2.0)
    assert "| alpha=1 | **22.0** |" in table and "alpha = 2.000" in table


def assert_png(path):
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.01


def test_pictures_are_written(tmp_path):
    rows = metric_rows(RESULTS, [1.0, 2.0])
    assert_png(plot_alpha_curves(rows, str(tmp_path / "a" / "curves.png"), heuristic_alpha=1.4))
    counts = {"plain": [50, 30, 10, 5, 0, 0], "TDE": [30, 25, 15, 10, 5, 5], "ground truth": [9, 7, 4, 3, 1, 1]}
    assert_png(plot_prediction_distribution([100, 60, 40, 20, 3, 1], counts, str(tmp_path / "dist.png"),
                                            frequency=["f", "c", "c", "c", "r", "r"], class_names=list("abcdef")))
    with pytest.raises(ValueError, match="has 2 counts"):
        plot_prediction_distribution([1, 2, 3], {"x": [1, 2]}, str(tmp_path / "bad.png"))


# ------------------------------------------------------------------- the tools, end to end
def load_tool(name):
    return load_script(f"tools/{name}.py", f"tool_{name}")


@pytest.fixture(scope="module")
def tiny_dataset(tmp_path_factory):
    """A few-image LVIS-format set from the demo generator, registered as sweeptest_{train,val}."""
    return register_tiny_demo("sweeptest", tmp_path_factory.mktemp("data") / "sweeptest", seed=3, val_min=1, val_max=2)


def test_sweep_and_visualize_tools(tiny_dataset, tmp_path):
    torch.manual_seed(0)
    model = build_model(tiny_cfg("standard"))
    set_means(model, 1)
    weights = str(tmp_path / "model.pth")
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    opts = TINY + ["MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{tiny_dataset}',)",
                   "DATASETS.TRAIN", "('sweeptest_train',)"]  # fmt: skip
    config = os.path.join(REPO, "configs", "demo", "tde_mask_rcnn_demo.yaml")

    sweep_tool = load_tool("sweep_alpha")
    out = tmp_path / "sweep"
    # trailing overrides right after the alpha values, as a user types them
    args = sweep_tool.parse_args(
        ["--config-file", config, "--output", str(out), "--alphas", "0", "1", "2", "--gammas", "0.5"]
        + [str(o) for o in opts]
    )
    assert args.alphas == [0.0, 1.0, 2.0] and args.gammas == [0.5]
    assert args.opts[:2] == ["MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES)]
    records = sweep_tool.main(args)
    record = json.loads((out / f"alpha_sweep_{tiny_dataset}.json").read_text())
    assert [r["setting"] for r in record["rows"]] == ["plain", "alpha=0", "alpha=1", "alpha=2", "norcal_gamma=0.5"]
    assert record["gammas"] == [0.5] and record["rows"][-1]["gamma"] == 0.5
    assert set(record["best"]) >= {"AP", "APbox"}
    assert record["heuristic_alpha"] == pytest.approx(1.0 / record["mean_cos"])
    assert records[tiny_dataset]["num_regions"] == record["num_regions"] > 0
    assert_png(out / f"alpha_curves_{tiny_dataset}.png")
    assert_png(out / f"prediction_distribution_{tiny_dataset}.png")
    cats = lvis_category_stats(sweep_tool.MetadataCatalog.get(tiny_dataset).json_file)
    assert len(cats["names"]) == NUM_CLASSES and sum(cats["gt_instances"]) > 0

    vis_tool = load_tool("visualize")
    vis_out = tmp_path / "vis"
    args = vis_tool.argument_parser().parse_args(
        ["--config-file", config, "--num-images", "2", "--alpha", "1.5", "--score-thresh", "0.2",
         "--output", str(vis_out)] + [str(o) for o in opts]
    )  # fmt: skip
    written = vis_tool.main(args)
    assert len(written) == 2
    # own images, trailing overrides right after the paths
    image = vis_tool.DatasetCatalog.get(tiny_dataset)[0]["file_name"]
    args = vis_tool.parse_args(["--config-file", config, "--output", str(vis_out / "own"), "--input", image]
                               + [str(o) for o in opts])  # fmt: skip
    assert args.input == [image] and args.opts[:2] == ["MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES)]
    written += vis_tool.main(args)
    assert len(written) == 3
    for path in written:
        assert_png(path)


def test_sweep_tool_rejects_missing_weights(tiny_dataset, tmp_path):
    sweep_tool = load_tool("sweep_alpha")
    config = os.path.join(REPO, "configs", "demo", "tde_mask_rcnn_demo.yaml")
    args = sweep_tool.parse_args(
        ["--config-file", config, "--output", str(tmp_path)] + [str(o) for o in TINY]
        + ["DATASETS.TEST", f"('{tiny_dataset}',)", "DATASETS.TRAIN", "('sweeptest_train',)"]
    )  # fmt: skip
    with pytest.raises(ValueError, match="MODEL.WEIGHTS"):
        sweep_tool.main(args)


def test_sweep_refuses_sigmoid_ce_predictors():
    """The sweep scores with softmax / the §4 rule: a predictor scoring with sigmoids is refused
    (on detectron2 v0.6, which has no sigmoid CE, the attribute is set by hand)."""
    model = build_model(tiny_cfg("standard")).eval()
    set_means(model, 1)
    model.roi_heads.box_predictor.use_sigmoid_ce = True
    with pytest.raises(ConfigError, match="USE_SIGMOID_CE True.*softmax classifier only"):  # `error:` line in tools
        AlphaSweep(model, [1.0])


@pytest.mark.skipif("USE_SIGMOID_CE" not in get_cfg().MODEL.ROI_BOX_HEAD,
                    reason="this detectron2 (v0.6) has no MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE")
def test_sigmoid_ce_model_is_refused_by_sweep_and_visualize_tools(tiny_dataset, tmp_path):
    sigmoid = ["MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", True, "MODEL.TDE.INFERENCE", "plain"]
    with pytest.raises(ValueError, match="USE_SIGMOID_CE False or MODEL.TDE.INFERENCE 'plain'"):
        build_model(tiny_cfg("standard", "MODEL.ROI_BOX_HEAD.USE_SIGMOID_CE", True))  # the predictor refuses TDE
    model = build_model(tiny_cfg("standard", *sigmoid)).eval()  # ... and allows plain
    set_means(model, 1)
    DetectionCheckpointer(model, save_dir=str(tmp_path)).save("model")
    opts = [str(o) for o in TINY + sigmoid + ["MODEL.WEIGHTS", str(tmp_path / "model.pth"),
            "DATASETS.TEST", f"('{tiny_dataset}',)", "DATASETS.TRAIN", "('sweeptest_train',)"]]  # fmt: skip
    config = os.path.join(REPO, "configs", "demo", "tde_mask_rcnn_demo.yaml")
    sweep_tool = load_tool("sweep_alpha")
    args = sweep_tool.parse_args(
        ["--config-file", config, "--output", str(tmp_path / "sweep"), "--alphas", "0", "1"] + opts)
    with pytest.raises(ConfigError, match="USE_SIGMOID_CE True"):
        sweep_tool.main(args)
    assert not (tmp_path / "sweep" / f"alpha_sweep_{tiny_dataset}.json").exists()
    vis_tool = load_tool("visualize")
    args = vis_tool.argument_parser().parse_args(
        ["--config-file", config, "--num-images", "1", "--output", str(tmp_path / "vis")] + opts)
    with pytest.raises(ConfigError, match="USE_SIGMOID_CE True"):
        vis_tool.main(args)


def test_figure_alpha_picks_best_ap_with_tde():
    sweep_tool = load_tool("sweep_alpha")
    rows = metric_rows(RESULTS, [1.0, 2.0])
    assert sweep_tool.figure_alpha(rows, None) == 1.0
    assert sweep_tool.figure_alpha(rows, 2.0) == 2.0
    assert sweep_tool.figure_alpha(metric_rows({"plain": RESULTS["plain"]}, []), None) is None


# ------------------------------------------------------------------- exact shortcuts of the sweep
def test_box_inference_for_many_score_sets_equals_detectron2():
    """One call for several score sets (spread, clustered, tied boxes / scores) == Detectron2 per set."""
    from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image

    from tde_det.analysis.box_inference import fast_rcnn_inference_many

    gen = torch.Generator().manual_seed(3)
    regions, classes, h, w = 400, 20, 300, 400
    spread = torch.rand(regions, classes, 2, generator=gen) * torch.tensor([w - 60.0, h - 60.0])
    # a few clusters of near-identical boxes per class: few NMS survivors
    clustered = (torch.rand(1, classes, 2, generator=gen) * 100).expand(regions, classes, 2) + torch.rand(
        regions, classes, 2, generator=gen)  # fmt: skip
    logits = [3 * torch.randn(regions, classes + 1, generator=gen) for _ in range(3)]
    score_sets = [torch.softmax(x, dim=1) for x in logits]
    score_sets.append((score_sets[0] * 50).round() / 50 + 1e-3)  # many equal scores
    score_sets.append(torch.softmax(logits[1] - 2 * logits[2], dim=1))
    for xy in (spread, clustered):
        boxes = torch.cat([xy, xy + 20 + 40 * torch.rand(regions, classes, 2, generator=gen)], 2).reshape(regions, -1)
        for topk in (100, 300):
            got = fast_rcnn_inference_many(boxes, score_sets, (h, w), 1e-4, 0.5, topk)
            for scores, (result, rows) in zip(score_sets, got):
                ref, ref_rows = fast_rcnn_inference_single_image(boxes, scores, (h, w), 1e-4, 0.5, topk)
                assert len(ref) == topk if xy is spread else len(ref) < topk
                assert torch.equal(result.pred_boxes.tensor, ref.pred_boxes.tensor)
                assert torch.equal(result.scores, ref.scores) and torch.equal(result.pred_classes, ref.pred_classes)
                assert torch.equal(rows, ref_rows)
    # class-agnostic boxes
    boxes = torch.cat([spread[:, 0], spread[:, 0] + 30], 1)
    for scores, (result, rows) in zip(score_sets, fast_rcnn_inference_many(boxes, score_sets, (h, w), 1e-4, 0.5, 50)):
        ref, ref_rows = fast_rcnn_inference_single_image(boxes, scores, (h, w), 1e-4, 0.5, 50)
        assert torch.equal(result.pred_boxes.tensor, ref.pred_boxes.tensor) and torch.equal(rows, ref_rows)


def test_grouped_greedy_nms_equals_torchvision():
    from torchvision.ops import batched_nms
    from torchvision.ops import boxes as box_ops

    from tde_det.analysis.box_inference import PER_CLASS_NMS_MIN_BOXES, greedy_nms_groups

    gen = torch.Generator().manual_seed(5)
    n = 3000
    xy = torch.rand(n, 2, generator=gen) * 200
    boxes = torch.cat([xy, xy + 5 + 40 * torch.rand(n, 2, generator=gen)], 1)
    # IoU exactly at the threshold 0.5 (not suppressed: torchvision suppresses IoU > threshold)
    boxes[:3] = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 20.0], [0.0, 0.0, 10.0, 19.99]])
    classes = torch.randint(0, 60, (n,), generator=gen)
    classes[:3], classes[-1] = 61, 99  # a class of 3, a class with a single box
    for scores in (torch.rand(n, generator=gen), (torch.rand(n, generator=gen) * 20).round() / 20):  # distinct, tied
        scores[:3] = torch.tensor([0.9, 0.8, 0.7])
        order = torch.sort(scores, descending=True, stable=True).indices
        order = order[torch.sort(classes[order], stable=True).indices]
        for thresh in (0.3, 0.5, 0.7):
            keep = torch.zeros(n, dtype=torch.bool)
            keep[order] = greedy_nms_groups(boxes[order], classes[order], thresh)
            assert torch.equal(keep, torch.zeros(n, dtype=torch.bool).index_fill_(0, batched_nms(boxes, scores, classes, thresh), True))
            if thresh == 0.5:  # IoU(box 0, box 1) = 0.5 exactly: kept; IoU(box 0, box 2) > 0.5: suppressed
                assert keep[:2].all() and not keep[2]
    # The shortcut applies where torchvision runs NMS class by class (its result is reproduced).
    with mock.patch.object(box_ops, "_batched_nms_vanilla", wraps=box_ops._batched_nms_vanilla) as per_class:
        for num, calls in ((PER_CLASS_NMS_MIN_BOXES, 1), (PER_CLASS_NMS_MIN_BOXES - 1, 1)):
            batched_nms(boxes[:num], scores[:num], classes[:num], 0.5)
            assert per_class.call_count == calls


def test_batched_mask_paste_equals_detectron2():
    from detectron2.layers import paste_masks_in_image

    from tde_det.analysis.mask_paste import batched_mask_paste, paste_masks_batched

    gen = torch.Generator().manual_seed(4)
    for (h, w), n in [((97, 130), 150), ((40, 33), 7), ((400, 600), 40)]:
        xy = torch.rand(n, 2, generator=gen) * torch.tensor([w * 0.9, h * 0.9])
        boxes = torch.cat([xy, torch.minimum(xy + torch.rand(n, 2, generator=gen) * torch.tensor([w / 2, h / 2]) + 0.2,
                                             torch.tensor([float(w), float(h)]))], 1)  # fmt: skip
        boxes[0] = torch.tensor([0.0, 0.0, w, h])  # the whole image
        boxes[1] = torch.tensor([w - 1.5, h - 1.5, w, h])  # a sliver at the corner
        masks = torch.rand(n, 28, 28, generator=gen)
        expected = paste_masks_in_image(masks, boxes, (h, w))
        assert expected.any() and torch.equal(paste_masks_batched(masks, boxes, (h, w)), expected)
    import detectron2.layers.mask_ops

    with batched_mask_paste():
        assert detectron2.layers.paste_masks_in_image is paste_masks_batched
        assert detectron2.layers.mask_ops.paste_masks_in_image is paste_masks_batched
    assert detectron2.layers.paste_masks_in_image is paste_masks_in_image
    assert detectron2.layers.mask_ops.paste_masks_in_image is paste_masks_in_image


def test_sweep_pastes_its_masks_batched(tiny):
    """The α sweep's masks go through the batched pasting, not Detectron2's per-mask one, on whichever
    Detectron2 is installed (v0.6 imports ``paste_masks_in_image`` from ``detectron2.layers``,
    upstream main from ``detectron2.layers.mask_ops``): counts the calls made by the real sweep."""
    import detectron2.layers.mask_ops as mask_ops

    from tde_det.analysis import mask_paste

    _, model, _ = tiny
    for budget in (None, 0):  # union pasted once / each α pasted separately
        sweep = AlphaSweep(model, [1.5], **({} if budget is None else {"paste_budget": budget}))
        with mock.patch.object(mask_paste, "_paste_chunk", wraps=mask_paste._paste_chunk) as batched, \
                mock.patch.object(mask_ops, "_do_paste_mask", wraps=mask_ops._do_paste_mask) as per_mask, \
                torch.no_grad():  # fmt: skip
            outputs = [o["instances"] for batch in make_batches(1) for o in sweep(batch).outputs(1.5)]
        assert sum(len(o) for o in outputs) > 0 and all(o.pred_masks.dtype == torch.bool for o in outputs)
        assert batched.call_count > 0, "the sweep did not paste with tde_det's batched pasting"
        assert per_mask.call_count == 0, "the sweep pasted masks with Detectron2's per-mask pasting"


def test_fixed_ap_columns_appear_when_reported():
    from tde_det.engine.results import format_table

    fixed = {k: {t: dict(v, AP_fixed=v.get("AP", 0) + 1, APr_fixed=3.0) for t, v in r.items()} for k, r in RESULTS.items()}
    rows = metric_rows(fixed, [1.0, 2.0])
    assert rows[1]["AP_fixed"] == 23.0 and rows[1]["APbox_fixed"] == 25.0 and rows[0]["APr_fixed"] == 3.0
    assert "| setting | AP | AP50 | APr | APc | APf | APbox | AP_fixed | APr_fixed | APbox_fixed |" in format_sweep_table(rows)
    assert "AP_fixed" not in format_sweep_table(metric_rows(RESULTS, [1.0, 2.0]))
    header = format_table("d", [("m", fixed["plain"])]).splitlines()[1]
    assert [c.strip() for c in header.split("|")[-4:-1]] == ["AP_fixed", "APr_fixed", "APbox_fixed"]
    assert "AP_fixed" not in format_table("d", [("m", RESULTS["plain"])])
