"""Grad-CAM per detection (tde_det.analysis.cam) and ``tools/visualize.py --cam``.

Hand-made tensors for the Grad-CAM formula; tiny random-weight Mask R-CNNs (TDE Standard / Cascade
heads with a random mean feature, and Detectron2's softmax heads) for the per-detection maps; a
few generated images for the tool. Nothing is timed.
"""

import os
import subprocess
import sys
from unittest import mock

import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.structures import Boxes
from helpers import load_script, register_tiny_demo, set_means
from matplotlib.image import imread

from tde_det import add_tde_config
from tde_det.analysis.cam import detection_cams, grad_cam, has_tde_head, normalize_cams, paste_cams

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_YAML = os.path.join(REPO, "configs", "demo", "tde_mask_rcnn_tiny.yaml")
NUM_CLASSES = 6
TINY = [
    "MODEL.ROI_HEADS.NUM_CLASSES", NUM_CLASSES, "MODEL.RPN.POST_NMS_TOPK_TEST", 48,
    "MODEL.ROI_BOX_HEAD.FC_DIM", 32, "MODEL.ROI_MASK_HEAD.CONV_DIM", 8, "MODEL.ROI_MASK_HEAD.NUM_CONV", 1,
    "MODEL.FPN.OUT_CHANNELS", 16, "TEST.DETECTIONS_PER_IMAGE", 20, "MODEL.DEVICE", "cpu",
]  # fmt: skip
HEADS = {
    "tde": ["MODEL.ROI_HEADS.NAME", "TDEStandardROIHeads"],
    "cascade": ["MODEL.ROI_HEADS.NAME", "TDECascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True],
    "softmax": ["MODEL.ROI_HEADS.NAME", "StandardROIHeads"],
}


def tiny_cfg(heads, *opts):
    cfg = get_cfg()
    add_tde_config(cfg)
    cfg.merge_from_file(TINY_YAML)
    cfg.merge_from_list(TINY + HEADS[heads] + list(opts))
    return cfg


def tiny_model(heads, seed=0):
    torch.manual_seed(seed)
    model = build_model(tiny_cfg(heads)).eval()
    set_means(model, seed + 1)
    return model


def image_input(seed=0, h=64, w=80, scale=2):
    gen = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), generator=gen, dtype=torch.uint8)
    return {"image": image, "height": scale * h, "width": scale * w}


BOXES = torch.tensor([[10.0, 12.0, 70.0, 90.0], [80.0, 20.0, 150.0, 110.0], [30.0, 40.0, 120.0, 100.0]])
CLASSES = torch.tensor([1, 4, 2])


# ------------------------------------------------------------------ the formula, hand-made tensors
def test_grad_cam_is_the_relu_of_the_gradient_weighted_channels():
    gen = torch.Generator().manual_seed(0)
    acts = torch.randn(3, 5, 4, 6, generator=gen)
    mix = torch.randn(3, 5, 4, 6, generator=gen)  # logit s_r = <mix_r, acts_r>: gradient = mix_r
    a = acts.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad((a * mix).sum(), a)
    cam = grad_cam(acts, grad)
    assert cam.shape == (3, 4, 6) and bool((cam >= 0).all())
    for r in range(3):
        by_hand = torch.zeros(4, 6)
        for c in range(5):
            by_hand += mix[r, c].mean() * acts[r, c]
        torch.testing.assert_close(cam[r], by_hand.clamp_min(0))
    with pytest.raises(ValueError, match="same shape"):
        grad_cam(acts, grad[:, :2])


def test_zero_gradient_gives_a_zero_map_and_normalisation_is_joint_in_0_1():
    gen = torch.Generator().manual_seed(1)
    acts = torch.rand(3, 4, 5, 5, generator=gen)
    grads = torch.rand(3, 4, 5, 5, generator=gen)
    grads[1] = 0  # region 1: no gradient at all
    plain = grad_cam(acts, grads)
    other = grad_cam(acts, 0.5 * grads)
    assert bool((plain[1] == 0).all()) and bool((plain[0] > 0).any())
    n_plain, n_other = normalize_cams(plain, other)
    for m in (n_plain, n_other):
        assert bool(torch.isfinite(m).all()) and float(m.min()) >= 0 and float(m.max()) <= 1
    assert bool((n_plain[1] == 0).all()) and bool((n_other[1] == 0).all())
    # joint: the larger map of each region peaks at 1, the other keeps its relative strength
    torch.testing.assert_close(n_plain.flatten(1).amax(1)[[0, 2]], torch.ones(2))
    torch.testing.assert_close(n_other, 0.5 * n_plain)


def test_paste_puts_the_map_inside_its_box_only():
    cams = torch.ones(2, 7, 7)
    cams[1] = 0
    boxes = torch.tensor([[4.0, 6.0, 20.0, 30.0], [0.0, 0.0, 40.0, 40.0]])
    pasted = paste_cams(cams, boxes, 40, 50)
    assert pasted.shape == (2, 40, 50) and float(pasted.min()) >= 0 and float(pasted.max()) <= 1
    assert float(pasted[0, 8:28, 6:18].min()) > 0.9  # inside box 0
    outside = torch.ones(40, 50, dtype=torch.bool)
    outside[5:31, 3:21] = False
    assert float(pasted[0][outside].max()) == 0 and float(pasted[1].max()) == 0


# ------------------------------------------------------------------ per detection, tiny models
@pytest.mark.parametrize("heads", ["tde", "cascade"])
def test_tde_model_maps_plain_vs_tde(heads):
    model = tiny_model(heads)
    x = image_input()
    cams = detection_cams(model, x, BOXES, CLASSES, alpha=1.5)
    assert cams.plain.shape == cams.tde.shape == (3, 7, 7) and cams.alpha == 1.5
    both = torch.stack([cams.plain, cams.tde])
    assert float(both.min()) >= 0 and float(both.max()) <= 1
    peak = both.flatten(2).amax(2).amax(0)  # joint peak per detection: 1, or 0 when ReLU kills both maps
    assert bool(((peak - 1).abs() < 1e-6).logical_or(peak == 0).all()) and float(peak.max()) == pytest.approx(1)
    assert bool(((cams.plain_scores > 0) & (cams.plain_scores <= 1)).all())
    # alpha > 0 and a non-zero mean feature: the counterfactual term changes the maps and the scores
    assert float((cams.plain - cams.tde).abs().max()) > 1e-3
    assert not torch.allclose(cams.plain_scores, cams.tde_scores)
    # alpha = 0: TDE(y) = y, the same maps and scores
    zero = detection_cams(model, x, BOXES, CLASSES, alpha=0.0)
    torch.testing.assert_close(zero.tde, zero.plain)
    torch.testing.assert_close(zero.tde_scores, zero.plain_scores)
    assert all(p.grad is None for p in model.parameters())  # autograd.grad w.r.t. the pooled features only


def test_default_alpha_is_the_models():
    model = tiny_model("tde")
    model.roi_heads.box_predictor.alpha = 0.75
    assert detection_cams(model, image_input(), BOXES, CLASSES).alpha == 0.75


def test_class_without_gradient_gets_a_zero_map():
    model = tiny_model("tde")
    with torch.no_grad():
        model.roi_heads.box_predictor.cls_score.weight[4] = 0  # y_4 = b_4 = 0 for every feature
    cams = detection_cams(model, image_input(), BOXES, CLASSES, alpha=1.5)
    assert float(cams.plain[1].max()) == 0 and float(cams.tde[1].max()) == 0  # detection 1 is class 4
    assert float(cams.plain[[0, 2]].max()) > 0


def test_boxes_are_taken_in_output_coordinates():
    model = tiny_model("tde")
    x = image_input(scale=2)
    small = {"image": x["image"]}  # output size = input size
    a = detection_cams(model, x, BOXES, CLASSES)
    b = detection_cams(model, small, BOXES / 2, CLASSES)
    torch.testing.assert_close(a.plain, b.plain)
    torch.testing.assert_close(a.tde, b.tde)


def test_softmax_model_has_only_the_plain_map():
    model = tiny_model("softmax")
    assert not has_tde_head(model) and has_tde_head(tiny_model("cascade"))
    cams = detection_cams(model, image_input(), BOXES, CLASSES)
    assert cams.tde is None and cams.tde_scores is None and cams.alpha is None
    assert cams.plain.shape == (3, 7, 7) and float(cams.plain.min()) >= 0 and float(cams.plain.max()) <= 1
    # Detectron2's softmax score of the class for the box (input coordinates: half the output ones)
    heads = model.roi_heads
    with torch.no_grad():
        features = model.backbone(model.preprocess_image([image_input()]).tensor)
        pooled = heads.box_pooler([features[f] for f in heads.box_in_features], [Boxes(BOXES / 2)])
        probs = heads.box_predictor.predict_probs(heads.box_predictor(heads.box_head(pooled)), [BOXES])[0]
    torch.testing.assert_close(cams.plain_scores, probs[torch.arange(3), CLASSES])
    with pytest.raises(ValueError, match="no TDE head"):
        detection_cams(model, image_input(), BOXES, CLASSES, alpha=1.0)


def test_bad_inputs_get_clear_errors():
    model = tiny_model("tde")
    x = image_input()
    with pytest.raises(ValueError, match="classes must be foreground"):
        detection_cams(model, x, BOXES, torch.tensor([1, 6, 0]))
    with pytest.raises(ValueError, match=r"boxes \[R, 4\]"):
        detection_cams(model, x, BOXES[:, :3], CLASSES)
    with pytest.raises(ValueError, match="alpha must be >= 0"):
        detection_cams(model, x, BOXES, CLASSES, alpha=-1)
    with pytest.raises(ValueError, match="eval mode"):
        detection_cams(model.train(), x, BOXES, CLASSES)
    untrained = build_model(tiny_cfg("tde")).eval()
    with pytest.raises(ValueError, match="moving-average feature"):
        detection_cams(untrained, x, BOXES, CLASSES, alpha=1.5)
    empty = detection_cams(tiny_model("tde"), x, BOXES[:0], CLASSES[:0])
    assert empty.plain.shape == empty.tde.shape == (0, 7, 7)


# ------------------------------------------------------------------ tools/visualize.py --cam
def load_tool(name):
    return load_script(f"tools/{name}.py", f"tool_{name}")


@pytest.fixture(scope="module")
def cam_dataset(tmp_path_factory):
    """A few-image LVIS-format set from the demo generator, registered as camtest_{train,val}."""
    return register_tiny_demo("camtest", tmp_path_factory.mktemp("data") / "camtest", seed=5, val_min=2, val_max=3)


def assert_png(path):
    assert os.path.getsize(path) > 1000
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    pixels = imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and pixels.std() > 0.01


def test_visualize_cam_writes_one_png_per_image(cam_dataset, tmp_path):
    weights = str(tmp_path / "tde.pth")
    DetectionCheckpointer(tiny_model("tde"), save_dir=str(tmp_path)).save("tde")
    DetectionCheckpointer(tiny_model("softmax", seed=3), save_dir=str(tmp_path)).save("softmax")
    compare_yaml = tmp_path / "softmax.yaml"
    compare_yaml.write_text(
        f'_BASE_: "{TINY_YAML}"\nMODEL:\n  ROI_HEADS:\n    NAME: "StandardROIHeads"\n'
        "  FPN:\n    OUT_CHANNELS: 16\n  ROI_BOX_HEAD:\n    FC_DIM: 32\n"
        "  ROI_MASK_HEAD:\n    CONV_DIM: 8\n    NUM_CONV: 1\n"
    )
    opts = [str(o) for o in TINY] + ["MODEL.WEIGHTS", weights, "DATASETS.TEST", f"('{cam_dataset}',)"]
    tool = load_tool("visualize")
    base = ["--config-file", TINY_YAML, "--num-images", "2", "--cam"]
    out = tmp_path / "cam"
    args = tool.parse_args(base + ["--cam-top", "2", "--output", str(out), "--compare-weights",
                                   str(tmp_path / "softmax.pth"), "--compare-config", str(compare_yaml),
                                   "--compare-opts", "MODEL.ROI_HEADS.NUM_CLASSES", str(NUM_CLASSES),
                                   "--compare-opts", "MODEL.RPN.POST_NMS_TOPK_TEST", "48"] + opts)  # fmt: skip
    with mock.patch.object(tool, "draw_cam_rows", wraps=tool.draw_cam_rows) as draw:
        written = tool.main(args)
    assert len(written) == 2 and sorted(os.listdir(out)) == sorted(os.path.basename(p) for p in written)
    for path in written:
        assert path.endswith("_alpha1.5_cam.png")
        assert_png(path)
    names = tool.MetadataCatalog.get(cam_dataset).thing_classes
    for call in draw.call_args_list:
        rows = call.args[1]
        assert len(rows) == 2  # --cam-top 2
        for row in rows:
            # the image around the box, main model plain | TDE, then the softmax model's plain logit
            titles = [title for title, _, _ in row]
            assert len(row) == 4 and "detection, alpha=1.5" in titles[0] and row[0][1] is None
            assert "plain y" in titles[1] and "y-1.5b" in titles[2] and "softmax: plain y" in titles[3]
            name = titles[0].split(" (")[0]
            assert name in names and titles[0][len(name):].startswith((" (r)", " (c)", " (f)"))
            assert all(t.split("\n")[0].startswith(name) for t in titles)
            for _, cam, box in row[1:]:
                assert cam.min() >= 0 and cam.max() <= 1 and len(box) == 4 and box == row[0][2]

    # without --cam-top: the detections >= --score-thresh (none at 1.0 -> a "no detections" panel)
    out2 = tmp_path / "cam_thresh"
    written = tool.main(tool.parse_args(base + ["--score-thresh", "1.0", "--output", str(out2)] + opts))
    assert len(written) == 2 and len(os.listdir(out2)) == 2


def test_visualize_cam_rejects_bad_options(cam_dataset, tmp_path):
    tool = load_tool("visualize")
    opts = [str(o) for o in TINY] + ["MODEL.WEIGHTS", str(tmp_path / "none.pth"), "DATASETS.TEST", f"('{cam_dataset}',)"]
    base = ["--config-file", TINY_YAML, "--output", str(tmp_path)]
    with pytest.raises(ValueError, match="only apply with --cam"):
        tool.main(tool.parse_args(base + ["--compare-weights", "a.pth", "--compare-config", TINY_YAML] + opts))
    with pytest.raises(ValueError, match="--compare-opts overrides the second model"):
        tool.main(tool.parse_args(base + ["--cam", "--compare-opts", "MODEL.DEVICE", "cpu"] + opts))
    with pytest.raises(ValueError, match="go together"):
        tool.main(tool.parse_args(base + ["--cam", "--compare-weights", "a.pth"] + opts))
    with pytest.raises(FileNotFoundError, match="--compare-weights file"):
        tool.main(tool.parse_args(base + ["--cam", "--compare-weights", "a.pth", "--compare-config", TINY_YAML] + opts))
    with pytest.raises(ValueError, match="--cam-top must be"):
        tool.main(tool.parse_args(base + ["--cam", "--cam-top", "-1"] + opts))
    weights = str(tmp_path / "tde.pth")
    DetectionCheckpointer(tiny_model("tde"), save_dir=str(tmp_path)).save("tde")
    opts[opts.index("MODEL.WEIGHTS") + 1] = weights
    other = tmp_path / "other.yaml"  # the demo config: 48 classes, not 6
    other.write_text(f'_BASE_: "{os.path.join(REPO, "configs", "demo", "baseline_mask_rcnn_demo.yaml")}"\n')
    with pytest.raises(ValueError, match="NUM_CLASSES 48"):
        tool.main(tool.parse_args(base + ["--cam", "--compare-weights", weights, "--compare-config", str(other)] + opts))


def test_visualize_cam_option_error_is_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "visualize.py"), "--config-file", TINY_YAML, "--cam",
         "--compare-weights", str(tmp_path / "missing.pth"), "--compare-config", TINY_YAML],
        cwd=REPO, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"),
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: --compare-weights file") and "Traceback" not in proc.stderr
