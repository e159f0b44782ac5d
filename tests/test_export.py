"""TDE models through Detectron2's deployment paths (issue 14).

Scripting (Standard heads), tracing before the checkpoint is loaded, ONNX run with onnxruntime,
autocast dtypes, the README's LazyConfig recipe on Detectron2's model-zoo Mask R-CNN, and
tools/export_model.py as the README writes it, on the tiny demo model.
"""

import copy
import inspect
import io
import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from detectron2 import model_zoo
from detectron2.config import instantiate
from detectron2.export import TracingAdapter, scripting_with_instances
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances
from helpers import single_thread  # noqa: F401  (autouse fixture)

from tde_det import get_tde_cfg
from tde_det.modeling import TDECascadeROIHeads, TDEFastRCNNOutputLayers, TDEStandardROIHeads

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "demo", "tde_mask_rcnn_tiny.yaml")
README = os.path.join(REPO, "README.md")
SCORE_ATOL, BOX_ATOL, MASK_ATOL = 1e-5, 1e-3, 1e-4
SCRIPT_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": torch.Tensor,
    "pred_boxes": Boxes,
    "scores": torch.Tensor,
    "pred_classes": torch.Tensor,
    "pred_masks": torch.Tensor,
}

try:
    import onnxruntime
except ImportError as e:  # requirements.txt pins it; another environment may lack it
    onnxruntime, ONNX_MISSING = None, f"onnxruntime cannot be imported here ({e})"
else:
    ONNX_MISSING = ""
# torch >= 2.9 exports with dynamo by default; TracingAdapter needs the TorchScript-based exporter.
ONNX_EXTRA = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def tiny_cfg(kind, inference="tde"):
    opts = ["MODEL.TDE.INFERENCE", inference, "MODEL.DEVICE", "cpu"]
    if kind == "cascade":
        opts += ["MODEL.ROI_HEADS.NAME", "TDECascadeROIHeads", "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", True]
    return get_tde_cfg(TINY, opts)


def predictors(model):
    bp = model.roi_heads.box_predictor
    return list(bp) if isinstance(bp, torch.nn.ModuleList) else [bp]


def build(kind, inference="tde", seed=0, with_mean=True):
    """The tiny demo model (random weights), in eval mode; with a non-zero x̄ per stage if asked."""
    torch.manual_seed(seed)
    model = build_model(tiny_cfg(kind, inference)).eval()
    if with_mean:
        g = torch.Generator().manual_seed(seed + 100)
        for p in predictors(model):
            p.cls_score.mean_feature.copy_(torch.rand(p.cls_score.mean_feature.shape, generator=g) + 0.1)
    return model


def sample_image(seed=0, h=80, w=112):
    g = torch.Generator().manual_seed(seed)
    image = torch.randint(0, 256, (3, h, w), generator=g).float()
    image[:, 10:50, 20:70] = 200.0
    image[:, 40:75, 60:105] = 30.0
    return image


def rcnn_inference(model, inputs):
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


def eager_detections(model, image):
    with torch.no_grad():
        return model.inference([{"image": image}], do_postprocess=False)[0]


def assert_same_detections(expected: Instances, got: Instances):
    assert len(expected) > 0 and len(got) == len(expected)
    assert torch.equal(got.pred_classes.long(), expected.pred_classes)
    torch.testing.assert_close(got.scores, expected.scores, atol=SCORE_ATOL, rtol=0)
    torch.testing.assert_close(got.pred_boxes.tensor, expected.pred_boxes.tensor, atol=BOX_ATOL, rtol=0)
    torch.testing.assert_close(got.pred_masks, expected.pred_masks, atol=MASK_ATOL, rtol=0)


def load_into(exported, model):
    """Load the eager `model`'s weights (x̄ included) into an exported module; returns it."""
    state = model.state_dict()
    own = exported.state_dict()
    prefix = "model." if all(k.startswith("model.") for k in own) else ""
    result = exported.load_state_dict({prefix + k: v for k, v in state.items()}, strict=False)
    assert not result.unexpected_keys
    # Only Detectron2's non-persistent buffers (pixel mean/std, anchors) are not in a checkpoint.
    assert all(k.endswith(("pixel_mean", "pixel_std")) or ".cell_anchors." in k for k in result.missing_keys)
    return exported


# ----------------------------------------------------------------------------- the four runs
@pytest.fixture(scope="module")
def deployed():
    """(kind, inference) -> (model with weights and a non-zero x̄, sample image, its eager detections)."""
    cache = {}

    def get(kind, inference):
        if (kind, inference) not in cache:
            model, image = build(kind, inference, seed=0, with_mean=True), sample_image()
            cache[(kind, inference)] = model, image, eager_detections(model, image)
        return cache[(kind, inference)]

    return get


KINDS = pytest.mark.parametrize("kind", ["standard", "cascade"])
MODES = pytest.mark.parametrize("inference", ["tde", "plain"])


@MODES
@KINDS
def test_traced_before_load_then_loaded_gives_the_eager_detections(kind, inference, deployed):
    model, image, eager = deployed(kind, inference)
    if inference == "tde":  # the non-zero x̄ matters: the same weights with plain scores differ
        plain = copy.deepcopy(model)
        for p in predictors(plain):
            p.inference_mode = "plain"
        other = eager_detections(plain, image)
        assert not (len(other) == len(eager) and torch.allclose(other.scores, eager.scores, atol=1e-3))

    # Traced BEFORE the checkpoint is loaded (other weights, x̄ = 0), then loaded: TDE applies.
    fresh = build(kind, inference, seed=1, with_mean=False)
    adapter = TracingAdapter(fresh, [{"image": image}], rcnn_inference)
    with torch.no_grad():
        traced = torch.jit.trace(adapter, adapter.flattened_inputs, check_trace=False)
        before_load = adapter.outputs_schema(traced(image))[0]["instances"]
        load_into(traced, model)
        after_load = adapter.outputs_schema(traced(image))[0]["instances"]
    assert not (len(before_load) == len(eager) and torch.allclose(before_load.scores, eager.scores))
    assert_same_detections(eager, after_load)


@MODES
def test_scripted_before_load_then_loaded_gives_the_eager_detections(inference, deployed):
    """Standard heads only: Detectron2's CascadeROIHeads cannot be scripted."""
    model, image, eager = deployed("standard", inference)
    # Scripted while x̄ is still zero (the same other weights: Detectron2's scripting renames backbone
    # modules, so a checkpoint maps onto a scripted model only partly), then the state loaded.
    fresh = copy.deepcopy(model)
    for p in predictors(fresh):
        p.cls_score.mean_feature.zero_()
    scripted = scripting_with_instances(fresh, SCRIPT_FIELDS)
    with torch.no_grad():
        before_load = scripted.inference([{"image": image}], do_postprocess=False)[0]
        own = scripted.state_dict()
        shared = {k: v for k, v in model.state_dict().items() if k in own}
        assert "roi_heads.box_predictor.cls_score.mean_feature" in shared
        scripted.load_state_dict(shared, strict=False)
        got = scripted.inference([{"image": image}], do_postprocess=False)[0]
    if inference == "tde":
        assert not (len(before_load) == len(eager) and torch.allclose(before_load.scores, eager.scores))
    assert_same_detections(eager, got)


@pytest.mark.skipif(onnxruntime is None, reason=ONNX_MISSING or "-")
@MODES
@KINDS
def test_onnx_export_run_with_onnxruntime_gives_the_eager_detections(kind, inference, deployed):
    model, image, eager = deployed(kind, inference)
    adapter = TracingAdapter(model, [{"image": image}], rcnn_inference)
    f = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(adapter, (image,), f, opset_version=16, **ONNX_EXTRA)
    session = onnxruntime.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    outputs = session.run(None, {session.get_inputs()[0].name: image.numpy()})
    assert_same_detections(eager, adapter.outputs_schema([torch.from_numpy(o) for o in outputs])[0]["instances"])


# ----------------------------------------------------------------------------- autocast
def _autocast_check(device, dtype):
    model = build("standard").to(device)
    image = sample_image().to(device)
    pred = predictors(model)[0]
    x = torch.rand(5, pred.cls_score.weight.shape[1], device=device)
    for mode in ("tde", "plain"):
        pred.inference_mode = mode
        with torch.autocast(device, dtype=dtype):
            scores, deltas = pred(x)
            dets = eager_detections(model, image)
        assert deltas.dtype == dtype  # the box branch runs in low precision as Detectron2's ...
        assert scores.dtype == torch.float32 and dets.scores.dtype == torch.float32  # ... the scores do not
        assert len(dets) > 0 and torch.isfinite(dets.scores).all()
    pred.inference_mode = "tde"
    # Training under autocast: x̄ is updated in fp32 and stays an fp32 buffer.
    from detectron2.utils.events import EventStorage

    model.train()
    batch = [{"image": image, "instances": _gt_instances(image.shape[-2:], device)}]
    before = pred.cls_score.mean_feature.clone()
    with EventStorage(), torch.autocast(device, dtype=dtype):
        losses = model(batch)
    assert all(torch.isfinite(v) for v in losses.values())
    assert pred.cls_score.mean_feature.dtype == torch.float32
    assert not torch.equal(pred.cls_score.mean_feature, before)


def _gt_instances(size, device):
    inst = Instances(tuple(size))
    inst.gt_boxes = Boxes(torch.tensor([[20.0, 10.0, 70.0, 50.0], [60.0, 40.0, 105.0, 75.0]], device=device))
    inst.gt_classes = torch.tensor([0, 3], device=device)
    masks = torch.zeros(2, *size, dtype=torch.bool, device=device)
    masks[0, 10:50, 20:70] = masks[1, 40:75, 60:105] = True
    from detectron2.structures import BitMasks

    inst.gt_masks = BitMasks(masks)
    return inst


def test_cpu_bfloat16_autocast_scores_are_fp32_and_the_mean_stays_fp32():
    _autocast_check("cpu", torch.bfloat16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU: the CUDA float16 autocast check needs one")
def test_cuda_float16_autocast_scores_are_fp32_and_the_mean_stays_fp32():
    _autocast_check("cuda", torch.float16)


# ----------------------------------------------------------------------------- LazyConfig recipe
def _readme_block(marker):
    """The ```python block of README.md whose text contains `marker`."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    found = [b for b in blocks if marker in b]
    assert len(found) == 1, f"README.md has {len(found)} python blocks with {marker!r}"
    return found[0]


@pytest.mark.parametrize(
    "config, marker, heads",
    [
        ("COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.py", "TDEStandardROIHeads\n", TDEStandardROIHeads),
        ("common/models/cascade_rcnn.py", "TDECascadeROIHeads\n", TDECascadeROIHeads),
    ],
)
def test_readme_lazyconfig_recipe_builds_tde_models_from_detectron2s_model_zoo(config, marker, heads):
    lazy = model_zoo.get_config(config)
    model_cfg = lazy.model if "model" in lazy else lazy
    scope = {"model": model_cfg}
    exec(_readme_block(f"_target_ = {marker.strip()}"), scope)  # the README's lines, as written
    torch.manual_seed(0)
    model = instantiate(scope["model"]).eval()
    assert type(model.roi_heads) is heads
    preds = predictors(model)
    assert len(preds) == (3 if heads is TDECascadeROIHeads else 1)
    assert all(type(p) is TDEFastRCNNOutputLayers and p.inference_mode == "tde" for p in preds)
    with torch.no_grad():
        out = model([{"image": sample_image(h=64, w=64)}])
    assert torch.isfinite(out[0]["instances"].scores).all()


# ----------------------------------------------------------------------------- tools/export_model.py
def _env(data_root):
    return dict(os.environ, DETECTRON2_DATASETS=data_root, OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def demo_weights(tmp_path_factory):
    """The tiny demo model trained by tools/train_net.py as the README does (its 40 iterations, without
    the evaluation): (weights, data root)."""
    data_root = str(tmp_path_factory.mktemp("d2datasets"))
    out = str(tmp_path_factory.mktemp("train"))
    proc = subprocess.run(
        [sys.executable, "tools/train_net.py", "--config-file", "configs/demo/tde_mask_rcnn_tiny.yaml",
         "SOLVER.CHECKPOINT_PERIOD", "1000", "DATASETS.TEST", "()",
         "DATALOADER.NUM_WORKERS", "0", "OUTPUT_DIR", out],
        cwd=REPO, env=_env(data_root), capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return os.path.join(out, "model_final.pth"), data_root


def _readme_export_commands():
    """The README's export commands (one per line, starting with ``.venv/bin/python tools/export_model.py``)."""
    with open(README, encoding="utf-8") as f:
        return re.findall(r"^\.venv/bin/python tools/export_model\.py .*$", f.read(), flags=re.M)


def _run_tool(argv, data_root):
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=_env(data_root), capture_output=True, text=True,
                          timeout=900)  # fmt: skip


def _load_sample(path, cfg):
    """The tool's sample image, resized as Detectron2's test loader does ([3, H, W] float)."""
    from detectron2.data import detection_utils
    from detectron2.data import transforms as T

    original = detection_utils.read_image(path, format=cfg.INPUT.FORMAT)
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    return torch.as_tensor(resize.get_transform(original).apply_image(original).astype("float32").transpose(2, 0, 1))


def test_export_tool_as_the_readme_writes_it_reproduces_the_eager_detections(demo_weights, tmp_path):
    weights, data_root = demo_weights
    readme_weights = "output/demo_tde_mask_rcnn_tiny/model_final.pth"
    from detectron2.checkpoint import DetectionCheckpointer

    cfg = get_tde_cfg(TINY)
    model = build_model(cfg).eval()
    DetectionCheckpointer(model).load(weights)
    assert all(p.tde_active() for p in predictors(model))

    methods = set()
    for command in _readme_export_commands():
        argv = shlex.split(command)[1:]
        assert readme_weights in argv and "--output" in argv, command
        argv[argv.index(readme_weights)] = weights
        out = str(tmp_path / argv[argv.index("--output") + 1].replace("/", "_"))
        argv[argv.index("--output") + 1] = out
        method, fmt = argv[argv.index("--export-method") + 1], argv[argv.index("--format") + 1]
        methods.add((method, fmt))
        if onnxruntime is None and fmt == "onnx":
            continue
        proc = _run_tool(argv, data_root)
        assert proc.returncode == 0, command + "\n" + proc.stdout[-3000:] + proc.stderr[-3000:]
        assert "Exported model reproduces the eager detections" in proc.stdout
        with open(os.path.join(out, "export_check.json")) as f:
            check = json.load(f)
        assert check["equal"] and check["sample_image"].startswith(data_root)

        # Independently: the written file, loaded here, gives the eager model's detections.
        image = _load_sample(check["sample_image"], cfg)
        assert list(image.shape[-2:]) == check["input_size"]
        eager = eager_detections(model, image)
        assert check["eager_detections"] == len(eager) > 0
        if method == "scripting":
            fields = torch.jit.load(os.path.join(out, "model.ts"))(({"image": image},))[0]
            got = Instances(tuple(image.shape[-2:]))
            for k, v in fields.items():
                got.set(k, Boxes(v) if k == "pred_boxes" else v)
        else:
            adapter = TracingAdapter(model, [{"image": image}], rcnn_inference)
            with torch.no_grad():
                adapter(image)  # records the output schema
                if fmt == "torchscript":
                    flat = torch.jit.load(os.path.join(out, "model.ts"))(image)
                else:
                    session = onnxruntime.InferenceSession(os.path.join(out, "model.onnx"),
                                                           providers=["CPUExecutionProvider"])  # fmt: skip
                    feed = {session.get_inputs()[0].name: image.numpy()}
                    flat = [torch.from_numpy(o) for o in session.run(None, feed)]
            got = adapter.outputs_schema(flat)[0]["instances"]
        with torch.no_grad():
            assert_same_detections(eager, got)
    assert methods == {("scripting", "torchscript"), ("tracing", "torchscript"), ("tracing", "onnx")}


def test_export_tool_errors(demo_weights, tmp_path):
    weights, data_root = demo_weights
    base = ["tools/export_model.py", "--config-file", "configs/demo/tde_mask_rcnn_tiny.yaml", "--output", str(tmp_path)]
    cases = [
        (["--export-method", "scripting", "--format", "onnx", "MODEL.WEIGHTS", weights],
         "--export-method scripting gives TorchScript only"),
        (["MODEL.WEIGHTS", ""], "MODEL.WEIGHTS is empty"),
        (["MODEL.WEIGHTS", str(tmp_path / "nope.pth")], "is not a file"),
        (["--export-method", "scripting", "MODEL.WEIGHTS", weights, "MODEL.ROI_HEADS.NAME", "TDECascadeROIHeads",
          "MODEL.ROI_BOX_HEAD.CLS_AGNOSTIC_BBOX_REG", "True"], "TDECascadeROIHeads cannot be scripted"),
    ]  # fmt: skip
    for extra, message in cases:
        proc = _run_tool(base + extra, data_root)
        assert proc.returncode == 2, proc.stderr[-2000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith("error: ") and message in last, last
