"""Stand-in for ``detectron2._C`` in the PyPI source release of detectron2 v0.6.

That release (``pb1-detectron2==0.6``) ships detectron2's Python sources without
``detectron2/layers/csrc``, so its compiled extension cannot be built. Mask R-CNN
and Cascade Mask R-CNN on LVIS need none of the compiled ops; each op below
raises a clear error naming itself and the way to get it.

``scripts/setup_env.sh`` installs this file as ``detectron2/_C.py``.
"""

import torch

TDE_DET_STUB = True  # tde_det.collect_env reads this to report which detectron2 build is installed

_HOW_TO_GET_IT = (
    "This detectron2 is the PyPI source release without compiled ops. To use it, build detectron2 "
    "from source (https://github.com/facebookresearch/detectron2, `pip install -e .` on a machine "
    "with a C++/CUDA toolchain), or rerun the set-up step with TDE_DET_DETECTRON2_SRC=/path/to/detectron2 "
    "(see docs/ENVIRONMENT.md, 'Using an upstream detectron2 build')."
)


class MissingCompiledOp(RuntimeError):
    """Raised when code calls a compiled detectron2 op that this build does not have."""


def _missing(op_name, what):
    def op(*args, **kwargs):
        raise MissingCompiledOp(f"detectron2._C.{op_name} ({what}) is not available. {_HOW_TO_GET_IT}")

    op.__name__ = op_name
    op.__doc__ = f"Missing compiled op: {what}. Calling it raises MissingCompiledOp."
    return op


_OPS = {
    "box_iou_rotated": "rotated-box IoU",
    "nms_rotated": "rotated-box NMS",
    "roi_align_rotated_forward": "rotated ROIAlign",
    "roi_align_rotated_backward": "rotated ROIAlign",
    "deform_conv_forward": "deformable convolution",
    "deform_conv_backward_input": "deformable convolution",
    "deform_conv_backward_filter": "deformable convolution",
    "modulated_deform_conv_forward": "modulated deformable convolution",
    "modulated_deform_conv_backward": "modulated deformable convolution",
    "COCOevalEvaluateImages": "the fast COCO evaluator",
    "COCOevalAccumulate": "the fast COCO evaluator",
    "InstanceAnnotation": "the fast COCO evaluator",
}
globals().update({name: _missing(name, what) for name, what in _OPS.items()})

# detectron2.layers.nms_rotated calls the registered torch op `torch.ops.detectron2.nms_rotated`;
# register it so that call also raises the clear error instead of "no such operator".
_LIB = torch.library.Library("detectron2", "FRAGMENT")
_LIB.define("nms_rotated(Tensor boxes, Tensor scores, float iou_threshold) -> Tensor")
_LIB.impl("nms_rotated", globals()["nms_rotated"], "CompositeExplicitAutograd")


def get_compiler_version():
    return "none (PyPI source release, no compiled ops)"


def get_cuda_version():
    return "none (PyPI source release, no compiled ops)"


def has_cuda():
    return False
