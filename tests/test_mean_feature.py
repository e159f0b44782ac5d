"""tools/estimate_mean_feature.py (issue 29): the exact x̄ against its definition computed here with
Detectron2's parts, the checkpoint it writes, 2 processes = 1, and its bad-input errors.

The model is the tiny demo config with seeded random weights (the definition does not need trained
ones) and a random x̄; the data the repo's tiny generated set (DETECTRON2_DATASETS as registered here).
"""

import os
import subprocess
import sys

import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling.matcher import Matcher
from detectron2.structures import Boxes, BoxMode, pairwise_iou
from helpers import load_script, set_means

from tde_det import get_tde_cfg
from tde_det.data import prepare_dataset
from tde_det.engine import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "demo", "tde_mask_rcnn_tiny.yaml")
SOFTMAX = os.path.join(REPO, "configs", "demo", "baseline_mask_rcnn_demo.yaml")
TRAIN = "tde_demo_lt_tiny_train"
NUM_IMAGES = 6
OPTS = ["MODEL.RPN.POST_NMS_TOPK_TEST", "40", "DATALOADER.NUM_WORKERS", "0"]
KEY = "roi_heads.box_predictor.cls_score.mean_feature"


def _data_root():
    prepare_dataset(TRAIN)
    image_root = MetadataCatalog.get(TRAIN).image_root
    return os.path.dirname(os.path.abspath(image_root.rstrip("/")))


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """A tiny TDE model (seeded random weights, random x̄) saved as a Detectron2 checkpoint."""
    torch.manual_seed(0)
    cfg = get_tde_cfg(TINY, OPTS)
    model = Trainer.build_model(cfg).eval()
    set_means(model, 1)
    path = str(tmp_path_factory.mktemp("weights") / "model.pth")
    torch.save({"model": model.state_dict(), "iteration": 7}, path)
    return cfg, model, path


def _run(*args, timeout=300):
    env = dict(os.environ, DETECTRON2_DATASETS=_data_root(), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, os.path.join(REPO, "tools", "estimate_mean_feature.py"), *map(str, args)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


@torch.no_grad()
def reference_mean(cfg, model, num_images):
    """The definition, written out with Detectron2's parts: each image resized as at test time, the
    RPN's inference proposals + the (rescaled) GT boxes, a Matcher built from ROI_HEADS.IOU_THRESHOLDS,
    label 1 = foreground, box pooler + box head features, their plain mean (float64). Cascade stage
    s > 0: stage s − 1's regressed boxes of all its regions (clipped, non-empty), a Matcher at
    ROI_BOX_CASCADE_HEAD.IOUS[s]. Returns (means [S, D], counts [S])."""
    heads = model.roi_heads
    cascade = isinstance(heads.box_predictor, torch.nn.ModuleList)
    box_heads = list(heads.box_head) if cascade else [heads.box_head]
    predictors = list(heads.box_predictor) if cascade else [heads.box_predictor]
    thresholds = [cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS] + [[t] for t in cfg.MODEL.ROI_BOX_CASCADE_HEAD.IOUS[1:]]
    matchers = [Matcher(t, [0, 1] if len(t) == 1 else cfg.MODEL.ROI_HEADS.IOU_LABELS, allow_low_quality_matches=False)
                for t in thresholds]
    resize = T.ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    dim = predictors[0].cls_score.weight.shape[1]
    total, count = torch.zeros(len(predictors), dim, dtype=torch.float64), [0] * len(predictors)
    for d in DatasetCatalog.get(TRAIN)[:num_images]:
        image = read_image(d["file_name"], format=cfg.INPUT.FORMAT)
        h, w = image.shape[:2]
        resized = resize.get_transform(image).apply_image(image)
        nh, nw = resized.shape[:2]
        images = model.preprocess_image([{"image": torch.as_tensor(resized.transpose(2, 0, 1).copy())}])
        features = model.backbone(images.tensor)
        pooled = [features[f] for f in cfg.MODEL.ROI_HEADS.IN_FEATURES]
        proposals, _ = model.proposal_generator(images, features, None)
        gt = torch.tensor([BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in d["annotations"]],
                          dtype=torch.float32).reshape(-1, 4)
        gt = Boxes(gt * torch.tensor([nw / w, nh / h, nw / w, nh / h]))
        boxes = Boxes.cat([proposals[0].proposal_boxes, gt])
        for s, (box_head, predictor) in enumerate(zip(box_heads, predictors)):
            if s > 0:
                boxes = Boxes(predictors[s - 1].box2box_transform.apply_deltas(predictors[s - 1].bbox_pred(x), boxes.tensor))
                boxes.clip((nh, nw))
                boxes = boxes[boxes.nonempty()]
            x = box_head(heads.box_pooler(pooled, [boxes])).flatten(1)
            _, labels = matchers[s](pairwise_iou(gt, boxes))
            total[s] += x[labels == 1].double().sum(0)
            count[s] += int((labels == 1).sum())
    return total / torch.tensor(count, dtype=torch.float64)[:, None], count


def _direction_error(a, b, num_heads):
    """max over heads of 1 − cos(a^k, b^k)."""
    a, b = a.double().view(num_heads, -1), b.double().view(num_heads, -1)
    return float((1 - torch.cosine_similarity(a, b, dim=1)).abs().max())


@pytest.fixture(scope="module")
def estimated(weights, tmp_path_factory):
    _, _, path = weights
    out = str(tmp_path_factory.mktemp("out") / "estimated.pth")
    proc = _run("--config-file", TINY, "--num-images", NUM_IMAGES, "--output", out, "MODEL.WEIGHTS", path, *OPTS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout + proc.stderr


def test_tool_mean_equals_the_definition(weights, estimated):
    cfg, model, _ = weights
    out, log = estimated
    ref, count = reference_mean(cfg, model, NUM_IMAGES)
    ckpt = torch.load(out, weights_only=True)  # the record is json-able: loads without pickle
    new = ckpt["model"][KEY]
    assert _direction_error(new, ref[0], cfg.MODEL.TDE.NUM_HEADS) < 1e-6
    assert torch.allclose(new.double(), ref[0], rtol=1e-5, atol=1e-6)
    record = ckpt["mean_feature_record"]
    assert record["images"] == NUM_IMAGES and record["foreground_regions"] == count
    assert record["dataset"] == TRAIN and record["how"] == "exact mean" and record["num_processes"] == 1
    # every other tensor unchanged
    old = model.state_dict()
    assert set(ckpt["model"]) == set(old)
    for k, v in old.items():
        if k != KEY:
            assert torch.equal(ckpt["model"][k], v), k
    assert not torch.allclose(new, old[KEY])
    assert f"{count} foreground regions of the first {NUM_IMAGES} images" in log


def test_cascade_every_stage_equals_the_definition(tmp_path):
    """Cascade: each stage's x̄ from that stage's regions (the previous stage's boxes, its own IoU)."""
    opts = OPTS + ["MODEL.ROI_HEADS.NAME", "TDECascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True"]
    torch.manual_seed(0)
    cfg = get_tde_cfg(TINY, opts)
    model = Trainer.build_model(cfg).eval()
    set_means(model, 2)
    path, out = str(tmp_path / "cascade.pth"), str(tmp_path / "estimated.pth")
    torch.save({"model": model.state_dict()}, path)
    proc = _run("--config-file", TINY, "--num-images", NUM_IMAGES, "--output", out, "MODEL.WEIGHTS", path, *opts)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ref, count = reference_mean(cfg, model, NUM_IMAGES)
    ckpt = torch.load(out, weights_only=True)
    assert len(count) == 3 and all(c > 0 for c in count) and ckpt["mean_feature_record"]["foreground_regions"] == count
    for s in range(3):
        new = ckpt["model"][f"roi_heads.box_predictor.{s}.cls_score.mean_feature"]
        assert _direction_error(new, ref[s], cfg.MODEL.TDE.NUM_HEADS) < 1e-6, s


def test_record_is_shown_when_loaded(estimated, tmp_path):
    """--eval-only prints how the checkpoint's x̄ was made (tools/sweep_alpha.py loads it the same way)."""
    from tde_det.analysis.mean_feature import describe_record

    line = describe_record(torch.load(estimated[0], weights_only=True))
    assert line.startswith(f"x̄ of these weights: exact mean over the first {NUM_IMAGES} images of {TRAIN}")
    assert describe_record({"model": {}}) is None
    env = dict(os.environ, DETECTRON2_DATASETS=_data_root(), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY, "--eval-only",
                           "MODEL.WEIGHTS", estimated[0], "OUTPUT_DIR", str(tmp_path), "TEST.DETECTIONS_PER_IMAGE", "20",
                           *OPTS], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert line in proc.stdout + proc.stderr


def test_two_processes_equal_one(weights, estimated, tmp_path):
    if not load_script("tools/train_net.py")._launcher_runs_without_cuda() or torch.cuda.is_available():
        pytest.skip("detectron2 v0.6's launch() starts several processes only on CUDA GPUs (NCCL); upstream "
                    "detectron2 runs them on the CPU over gloo (CI's upstream leg)")
    _, _, path = weights
    out = str(tmp_path / "two.pth")
    proc = _run("--config-file", TINY, "--num-images", NUM_IMAGES, "--output", out, "--num-gpus", 2,
                "MODEL.WEIGHTS", path, *OPTS)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, two = torch.load(estimated[0], weights_only=True), torch.load(out, weights_only=True)
    assert torch.allclose(one["model"][KEY], two["model"][KEY], rtol=1e-6, atol=1e-7)
    assert two["mean_feature_record"]["foreground_regions"] == one["mean_feature_record"]["foreground_regions"]
    assert two["mean_feature_record"]["num_processes"] == 2


def _error_lines(proc):
    return [line for line in proc.stderr.splitlines() if line.startswith("error:")]


@pytest.mark.parametrize("case", ["softmax", "zero_images", "no_foreground"])
def test_bad_input_is_one_error_line(weights, tmp_path, case):
    _, _, path = weights
    out = tmp_path / "out.pth"
    config, n, extra = TINY, NUM_IMAGES, []
    if case == "softmax":
        config, extra = SOFTMAX, ["MODEL.ROI_HEADS.NUM_CLASSES", "6", "DATASETS.TRAIN", "('tde_demo_lt_tiny_train',)"]
    elif case == "zero_images":
        n = 0
    else:  # a matcher threshold no region reaches, and no GT boxes appended: no foreground at all
        extra = ["MODEL.ROI_HEADS.PROPOSAL_APPEND_GT", "False", "MODEL.ROI_HEADS.IOU_THRESHOLDS", "[1.01]"]
        n = 2
    proc = _run("--config-file", config, "--num-images", n, "--output", out, "MODEL.WEIGHTS", path, *OPTS, *extra)
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    errors = _error_lines(proc)
    assert len(errors) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    expected = {"softmax": "softmax model", "zero_images": "--num-images 0", "no_foreground": "No foreground region"}
    assert expected[case] in errors[0]
    assert not out.exists()


def _train_recording(momentum, out_dir):
    """3 iterations of the tiny config at μ = `momentum`, recording the batch means as the study does."""
    from detectron2.utils.env import seed_all_rng

    study = load_script("studies/tde_mean_choice.py")
    cfg = get_tde_cfg(TINY, OPTS + ["SOLVER.MAX_ITER", "3", "SOLVER.IMS_PER_BATCH", "2", "SOLVER.STEPS", "(2,)",
                                    "SOLVER.WARMUP_ITERS", "1", "SOLVER.CHECKPOINT_PERIOD", "1000", "TEST.EVAL_PERIOD", "0",
                                    "DATASETS.TEST", "()", "MODEL.TDE.MOMENTUM", str(momentum), "OUTPUT_DIR", str(out_dir)])
    seed_all_rng(0)
    trainer = Trainer(cfg)
    recorder = study.BatchMeanRecorder([trainer.model.roi_heads.box_predictor])
    trainer.train()
    return study, trainer.model, recorder.state()


def test_mu_changes_only_the_buffer_and_the_record_recomputes_it(tmp_path):
    """The study's premise: x̄ never enters the loss, so trainings that differ only in μ end with the
    same weights, and x̄ for any μ is recomputed exactly from the recorded batch means."""
    study, a, record = _train_recording(0.9, tmp_path / "a")
    _, b, _ = _train_recording(0.9998, tmp_path / "b")
    sa, sb = a.state_dict(), b.state_dict()
    for k in sa:
        if k != KEY:
            assert torch.equal(sa[k], sb[k]), k
    assert record["fg_sum"].shape[0] == 3 and int(record["fg_count"].sum()) > 0
    for model, mu in ((a, 0.9), (b, 0.9998)):
        again = study.ema_from_record(record["fg_sum"][:, 0], record["fg_count"][:, 0], mu)
        assert torch.allclose(again.float(), model.state_dict()[KEY], rtol=1e-5, atol=1e-7)
    assert not torch.allclose(sa[KEY], sb[KEY])
