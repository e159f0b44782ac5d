#!/usr/bin/env python
"""Export a De-confound-TDE model for deployment: TorchScript (scripting or tracing) or ONNX.

Detectron2's usual export command line (its ``tools/deploy/export_model.py`` is not installed by
pip), thin over Detectron2's export API (``scripting_with_instances``, ``TracingAdapter``):

    # TorchScript by tracing (Standard and Cascade heads)
    python tools/export_model.py --config-file configs/demo/tde_mask_rcnn_tiny.yaml \\
        --export-method tracing --format torchscript --output output/export_tracing \\
        MODEL.WEIGHTS output/demo_tde_mask_rcnn_tiny/model_final.pth
    # ONNX (tracing), run with onnxruntime
    python tools/export_model.py ... --export-method tracing --format onnx --output output/export_onnx ...
    # TorchScript by scripting (Standard heads only: Detectron2's CascadeROIHeads cannot be scripted)
    python tools/export_model.py ... --export-method scripting --format torchscript --output output/export_scripting ...

The exported model computes the scores of ``MODEL.TDE.INFERENCE`` / ``ALPHA`` /
``BACKGROUND_EXEMPT`` as set when exporting (TDE logits are part of the graph), and reads the
mean feature x̄ as a buffer. Like Detectron2's exporter it returns the detections before the final
resize to the original image size (``do_postprocess=False``: boxes in the input's coordinates,
28x28 ROI masks). After writing the file, the tool loads it back, runs it on the sample image and
compares its detections with the eager model's (same classes, scores within 1e-5, boxes within
1e-3 px), exits with status 1 if they differ, and writes the comparison to ``export_check.json``.

The sample image: ``--sample-image FILE``, else the first image of ``DATASETS.TEST[0]`` (the demo
sets are generated on first use), resized as Detectron2's test loader does. The exported model's
input is that image as a float32 tensor [3, H, W] (channels in ``INPUT.FORMAT``, BGR by default).
"""

import warnings

# Third-party warnings a user can do nothing about: fvcore's @torch.jit.script at import (torch >= 2.10),
# the meshgrid call of Detectron2's anchor generator.
warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated")
warnings.filterwarnings("ignore", "torch.meshgrid: in an upcoming release")

import argparse
import json
import logging
import os
import sys
from typing import Dict, List, Tuple

import torch
from torch import Tensor, nn

# Tracing Detectron2's models warns about every Python bool / len of a tensor (~20 lines), and the ONNX
# export about its legacy exporter (chosen on purpose: dynamo=False). The tool checks the exported
# model's detections against the eager model's, which is what these warnings ask for.
warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export")
warnings.filterwarnings("ignore", "Exporting aten::index operator of advanced indexing")

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from detectron2.checkpoint import DetectionCheckpointer  # noqa: E402
from detectron2.data import build_detection_test_loader, detection_utils  # noqa: E402
from detectron2.data import transforms as T  # noqa: E402
from detectron2.modeling import ROI_HEADS_REGISTRY, GeneralizedRCNN, build_model  # noqa: E402
from detectron2.modeling.roi_heads import CascadeROIHeads  # noqa: E402
from detectron2.structures import Boxes, Instances  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402

from tde_det import get_tde_cfg  # noqa: E402  (also registers the TDE heads, demo backbone and datasets)
from tde_det.data import prepare_dataset  # noqa: E402
from tde_det.engine import cli  # noqa: E402
from tde_det.data.images import image_problem  # noqa: E402
from tde_det.errors import UserError  # noqa: E402

logger = logging.getLogger("tde_det.export")

ONNX_OPSET = 16  # ONNX RoiAlign supports Detectron2's aligned=True (ROIAlignV2) from opset 16 on
SCORE_ATOL, BOX_ATOL = 1e-5, 1e-3
SCRIPTING_FIELDS = {
    "proposal_boxes": Boxes,
    "objectness_logits": Tensor,
    "pred_boxes": Boxes,
    "scores": Tensor,
    "pred_classes": Tensor,
    "pred_masks": Tensor,
    "pred_keypoints": Tensor,
    "pred_keypoint_heatmaps": Tensor,
}
OUTPUT_NAME = {"torchscript": "model.ts", "onnx": "model.onnx"}


class UsageError(UserError):
    """A bad argument, file or config: printed as one ``error:`` line (as every tde_det UserError)."""


def get_parser():
    parser = argparse.ArgumentParser(description="Export a De-confound-TDE Detectron2 model for deployment.")
    parser.add_argument("--format", choices=["torchscript", "onnx"], default="torchscript", help="output format")
    parser.add_argument(
        "--export-method", choices=["tracing", "scripting"], default="tracing",
        help="tracing (TorchScript or ONNX; Standard and Cascade heads) or scripting (TorchScript; Standard heads)",
    )  # fmt: skip
    parser.add_argument("--config-file", required=True, metavar="FILE", help="path to the config file")
    parser.add_argument("--sample-image", default=None, metavar="FILE",
                        help="image to trace with and to check the export on (default: first image of DATASETS.TEST)")
    parser.add_argument("--output", required=True, metavar="DIR", help="output directory for the exported model")
    parser.add_argument("--opset", type=int, default=ONNX_OPSET, help=f"ONNX opset version (default {ONNX_OPSET})")
    cli.add_arguments(parser, data_check=False)  # --debug
    parser.add_argument("opts", default=[], nargs=argparse.REMAINDER,
                        help="config overrides as KEY VALUE pairs, e.g. MODEL.WEIGHTS model_final.pth")
    return parser


_NO_SCRIPTING = ("{heads} cannot be scripted (Detectron2's CascadeROIHeads indexes its stages' module lists with a "
                 "loop variable, which TorchScript does not support): use --export-method tracing (--format "
                 "torchscript or onnx).")


def check_args(args, cfg):
    if args.export_method == "scripting" and args.format != "torchscript":
        raise UsageError("--export-method scripting gives TorchScript only: use --format torchscript, or "
                         "--export-method tracing for ONNX.")
    if not cfg.MODEL.WEIGHTS:
        raise UsageError("MODEL.WEIGHTS is empty: pass the trained weights to export, "
                         "e.g. MODEL.WEIGHTS output/demo_tde_mask_rcnn_tiny/model_final.pth.")
    if "://" not in cfg.MODEL.WEIGHTS and not os.path.isfile(cfg.MODEL.WEIGHTS):
        raise UsageError(f"MODEL.WEIGHTS {cfg.MODEL.WEIGHTS!r} is not a file; train first (tools/train_net.py) "
                         "or give the path of a checkpoint.")
    if args.sample_image is not None and not os.path.isfile(args.sample_image):
        raise UsageError(f"--sample-image {args.sample_image!r} is not a file.")
    if args.sample_image is not None and (problem := image_problem(args.sample_image)):
        raise UsageError(f"--sample-image {args.sample_image!r} cannot be read ({problem}).")
    if args.sample_image is None and not cfg.DATASETS.TEST:
        raise UsageError("DATASETS.TEST is empty: give --sample-image FILE.")
    if args.format == "onnx":
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise UsageError(f"--format onnx needs onnx and onnxruntime ({e}); install requirements.txt.") from None
    heads = ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME) if cfg.MODEL.ROI_HEADS.NAME in ROI_HEADS_REGISTRY else None
    if args.export_method == "scripting" and isinstance(heads, type) and issubclass(heads, CascadeROIHeads):
        raise UsageError(_NO_SCRIPTING.format(heads=heads.__name__))
    # the config's values and device, the test set the sample comes from, the weights (fit, trained x̄)
    names = [] if args.sample_image is not None else list(cfg.DATASETS.TEST[:1])
    cli.preflight(cfg, names, names, evaluate=True)


def load_model(cfg, args):
    model = build_model(cfg)
    if not isinstance(model, GeneralizedRCNN):
        raise UsageError(f"tools/export_model.py exports GeneralizedRCNN models; MODEL.META_ARCHITECTURE is "
                         f"{cfg.MODEL.META_ARCHITECTURE!r}.")
    if args.export_method == "scripting" and isinstance(model.roi_heads, CascadeROIHeads):
        raise UsageError(_NO_SCRIPTING.format(heads=type(model.roi_heads).__name__))
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    return model.eval()


def sample_inputs(cfg, args) -> List[Dict[str, Tensor]]:
    """One test input {"image": [3, H, W] float32 in cfg.INPUT.FORMAT, "height", "width", "file_name"},
    resized as Detectron2's test loader does."""
    if args.sample_image is None:
        if not cfg.DATASETS.TEST:
            raise UsageError("DATASETS.TEST is empty: give --sample-image FILE.")
        prepare_dataset(cfg.DATASETS.TEST[0])
        batch = next(iter(build_detection_test_loader(cfg, cfg.DATASETS.TEST[0])))
        logger.info(f"Sample image: {batch[0]['file_name']}")
        inputs = {k: batch[0][k] for k in ("height", "width", "file_name")}
        return [dict(inputs, image=batch[0]["image"].float())]  # the exported model's input: float32
    original = detection_utils.read_image(args.sample_image, format=cfg.INPUT.FORMAT)
    resize = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = resize.get_transform(original).apply_image(original)
    height, width = original.shape[:2]
    image = torch.as_tensor(image.astype("float32").transpose(2, 0, 1))
    return [{"image": image, "height": height, "width": width, "file_name": args.sample_image}]


def rcnn_inference(model, inputs):
    """GeneralizedRCNN inference without the final resize (as Detectron2's exporter)."""
    return [{"instances": model.inference(inputs, do_postprocess=False)[0]}]


class ScriptableAdapter(nn.Module):
    """Returns each image's fields as a dict (a scripted model cannot return Instances usefully)."""

    def __init__(self, model):
        super().__init__()
        self.model = model
        self.eval()

    def forward(self, inputs: Tuple[Dict[str, Tensor]]) -> List[Dict[str, Tensor]]:
        return [i.get_fields() for i in self.model.inference(inputs, do_postprocess=False)]


def export(model, inputs, args):
    """Write the exported model; return a function image -> Instances that runs the written file."""
    from detectron2.export import TracingAdapter, dump_torchscript_IR, scripting_with_instances

    os.makedirs(args.output, exist_ok=True)
    path = os.path.join(args.output, OUTPUT_NAME[args.format])
    image = inputs[0]["image"]
    if args.export_method == "scripting":
        ts_model = scripting_with_instances(ScriptableAdapter(model), SCRIPTING_FIELDS)
        torch.jit.save(ts_model, path)
        dump_torchscript_IR(ts_model, args.output)
        loaded = torch.jit.load(path)

        def run(img):
            fields = loaded(({"image": img},))[0]
            inst = Instances(tuple(img.shape[-2:]))
            for k, v in fields.items():
                inst.set(k, Boxes(v) if k == "pred_boxes" else v)
            return inst

        return path, run

    adapter = TracingAdapter(model, [{"image": image}], rcnn_inference)
    if args.format == "torchscript":
        with torch.no_grad():
            ts_model = torch.jit.trace(adapter, (image,))
        torch.jit.save(ts_model, path)
        dump_torchscript_IR(ts_model, args.output)
        loaded = torch.jit.load(path)

        def run(img):
            return adapter.outputs_schema(loaded(img))[0]["instances"]

    else:
        import inspect

        import onnxruntime

        extra = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
        with torch.no_grad():
            torch.onnx.export(adapter, (image,), path, opset_version=args.opset, **extra)
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])

        def run(img):
            outputs = session.run(None, {session.get_inputs()[0].name: img.cpu().numpy()})
            return adapter.outputs_schema([torch.from_numpy(o) for o in outputs])[0]["instances"]

    logger.info(f"Inputs schema: {adapter.inputs_schema}")
    logger.info(f"Outputs schema: {adapter.outputs_schema}")
    return path, run


def compare(eager: Instances, exported: Instances) -> dict:
    """Detections of the exported model vs the eager model's (same classes, scores, boxes)."""
    report = {"eager_detections": len(eager), "exported_detections": len(exported)}
    same_count = len(eager) == len(exported)
    report["same_classes"] = bool(same_count and torch.equal(eager.pred_classes.cpu(), exported.pred_classes.cpu()))
    if same_count and len(eager):
        report["max_score_diff"] = float((eager.scores.cpu() - exported.scores.cpu()).abs().max())
        report["max_box_diff"] = float((eager.pred_boxes.tensor.cpu() - exported.pred_boxes.tensor.cpu()).abs().max())
    else:
        report["max_score_diff"] = report["max_box_diff"] = 0.0 if same_count else float("inf")
    report["equal"] = bool(
        report["same_classes"] and report["max_score_diff"] <= SCORE_ATOL and report["max_box_diff"] <= BOX_ATOL
    )
    return report


def main(args):
    cfg = get_tde_cfg(args.config_file, args.opts)
    check_args(args, cfg)
    cfg.freeze()
    model = load_model(cfg, args)
    inputs = sample_inputs(cfg, args)
    inputs = [{k: v.to(model.device) if isinstance(v, Tensor) else v for k, v in inputs[0].items()}]
    with torch.no_grad():
        eager = model.inference(inputs, do_postprocess=False)[0]
    path, run = export(model, inputs, args)
    logger.info(f"Exported ({args.export_method}, {args.format}) to {path}")
    with torch.no_grad():
        exported = run(inputs[0]["image"])
    report = dict(compare(eager, exported), export_method=args.export_method, format=args.format, file=path,
                  sample_image=inputs[0]["file_name"], input_size=list(inputs[0]["image"].shape[-2:]))
    with open(os.path.join(args.output, "export_check.json"), "w") as f:
        json.dump(report, f, indent=1)
    line = (
        f"{report['exported_detections']} detections from {os.path.basename(path)}, "
        f"{report['eager_detections']} from the eager model; same classes: {report['same_classes']}, "
        f"max |score diff| {report['max_score_diff']:.2e}, max |box diff| {report['max_box_diff']:.2e} px"
    )
    if not report["equal"]:
        print(f"error: the exported model's detections differ from the eager model's: {line}", file=sys.stderr)
        return 1
    print(f"Exported model reproduces the eager detections on the sample image: {line}")
    return 0


if __name__ == "__main__":
    args = get_parser().parse_args()
    setup_logger(name="tde_det")
    setup_logger(name="detectron2", abbrev_name="d2")
    with cli.exit_on_user_error(args.debug):  # UsageError, config and data errors: one line, exit 2
        sys.exit(main(args))
