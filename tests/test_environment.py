"""The installed environment: detectron2 imports, builds its LVIS Mask R-CNN, and names missing ops clearly."""

import importlib
import subprocess
import sys

import pytest
import torch


@pytest.mark.parametrize("module", ["detectron2.layers", "detectron2.modeling", "detectron2.evaluation"])
def test_detectron2_modules_import(module):
    importlib.import_module(module)


def test_detectron2_is_known_to_pip():
    out = subprocess.run([sys.executable, "-m", "pip", "show", "detectron2"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Name: detectron2" in out.stdout and "Version: 0.6" in out.stdout


def _stub_or_skip():
    from detectron2 import _C

    if not getattr(_C, "TDE_DET_STUB", False):
        pytest.skip("a compiled detectron2 is installed; its ops exist")
    return _C


@pytest.mark.parametrize(
    "call, op_name",
    [
        (lambda: __import__("detectron2.layers", fromlist=["x"]).nms_rotated(
            torch.zeros(2, 5), torch.zeros(2), 0.5), "nms_rotated"),
        (lambda: __import__("detectron2.layers.rotated_boxes", fromlist=["x"]).pairwise_iou_rotated(
            torch.zeros(2, 5), torch.zeros(3, 5)), "box_iou_rotated"),
        (lambda: __import__("detectron2.layers", fromlist=["x"]).ROIAlignRotated((7, 7), 1.0, 0)(
            torch.zeros(1, 1, 8, 8), torch.zeros(1, 6)), "roi_align_rotated_forward"),
        # DeformConv itself falls back to torchvision on CPU; its CUDA path calls this op
        (lambda: __import__("detectron2", fromlist=["_C"])._C.deform_conv_forward(), "deform_conv_forward"),
        (lambda: __import__("detectron2", fromlist=["_C"])._C.COCOevalEvaluateImages(), "COCOevalEvaluateImages"),
    ],
)
def test_missing_compiled_op_raises_clear_error(call, op_name):
    _C = _stub_or_skip()
    with pytest.raises(_C.MissingCompiledOp) as err:
        call()
    msg = str(err.value)
    assert f"detectron2._C.{op_name}" in msg
    assert "build detectron2 from source" in msg and "TDE_DET_DETECTRON2_SRC" in msg


def test_collect_env_reports_versions_and_build():
    out = subprocess.run([sys.executable, "-m", "tde_det.collect_env"], capture_output=True, text=True, check=True)
    for name in ["torch", "torchvision", "detectron2 build", "CUDA available", "lvis", "numpy"]:
        assert name in out.stdout
    assert ("PyPI source release" in out.stdout) or ("compiled build" in out.stdout)


def test_detectron2_lvis_mask_rcnn_trains_and_infers_on_cpu():
    """Detectron2's own LVIS v1 Mask R-CNN config, random weights, one step and one inference."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.NORM", "BN", "MODEL.PIXEL_STD", [57.4, 57.1, 58.4],
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", 200, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
    ])
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1203
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 160, 192), generator=g, dtype=torch.uint8).float()
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    inst = Instances((160, 192))
    inst.gt_boxes = Boxes(torch.tensor([[20.0, 30.0, 90.0, 120.0], [100.0, 10.0, 180.0, 70.0]]))
    inst.gt_classes = torch.tensor([5, 1000])
    masks = torch.zeros(2, 160, 192, dtype=torch.bool)
    masks[0, 30:120, 20:90] = True
    masks[1, 10:70, 100:180] = True
    inst.gt_masks = BitMasks(masks)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage():
        losses = model([{"image": image, "instances": inst}])
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()

    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 160, "width": 192}])
    det = out["instances"]
    assert det.image_size == (160, 192)
    assert det.has("pred_masks") and len(det) <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert torch.isfinite(det.scores).all()
