"""A compact ResNet-FPN backbone that trains from scratch on a CPU (for the demo configs).

It is Detectron2's own ``ResNet`` (``BasicStem`` + ``BasicBlock`` stages) wrapped in Detectron2's
``FPN``; only the depth/width table differs from ``build_resnet_fpn_backbone``, whose R18/R34
branch insists on ``RES2_OUT_CHANNELS = 64``. It reads the usual keys:

- ``MODEL.RESNETS.DEPTH``: 10 (one BasicBlock per stage) or 18 (two per stage).
- ``MODEL.RESNETS.STEM_OUT_CHANNELS`` and ``MODEL.RESNETS.RES2_OUT_CHANNELS``: widths of the
  stem and of res2; each later stage doubles the width (res5 = 8 x res2).
- ``MODEL.RESNETS.NORM`` (use "BN", "SyncBN" or "GN" when training from scratch: with
  FrozenBN and PIXEL_STD 1 a random-init network diverges), ``MODEL.RESNETS.OUT_FEATURES``,
  ``MODEL.BACKBONE.FREEZE_AT`` and all ``MODEL.FPN.*`` keys.

Output: ``{"p2".."p6": Tensor[N, FPN.OUT_CHANNELS, H / s, W / s]}`` for strides s = 4..64.
"""

from detectron2.layers import ShapeSpec
from detectron2.modeling import BACKBONE_REGISTRY
from detectron2.modeling.backbone.fpn import FPN, LastLevelMaxPool
from detectron2.modeling.backbone.resnet import BasicBlock, BasicStem, ResNet

from ..errors import ConfigError

_BLOCKS_PER_STAGE = {10: [1, 1, 1, 1], 18: [2, 2, 2, 2]}


def build_small_resnet(cfg, input_shape: ShapeSpec):
    """A BasicBlock ResNet of any width, res2..res5 at strides 4..32."""
    depth = cfg.MODEL.RESNETS.DEPTH
    if depth not in _BLOCKS_PER_STAGE:
        raise ConfigError(
            f"build_small_resnet_fpn_backbone supports MODEL.RESNETS.DEPTH in {sorted(_BLOCKS_PER_STAGE)}, "
            f"got {depth}; use build_resnet_fpn_backbone for deeper ResNets."
        )
    norm = cfg.MODEL.RESNETS.NORM
    stem = BasicStem(input_shape.channels, cfg.MODEL.RESNETS.STEM_OUT_CHANNELS, norm=norm)
    in_channels, out_channels = cfg.MODEL.RESNETS.STEM_OUT_CHANNELS, cfg.MODEL.RESNETS.RES2_OUT_CHANNELS
    stages = []
    for idx, num_blocks in enumerate(_BLOCKS_PER_STAGE[depth]):
        stages.append(
            ResNet.make_stage(
                BasicBlock,
                num_blocks,
                stride_per_block=[1 if idx == 0 else 2] + [1] * (num_blocks - 1),
                in_channels=in_channels,
                out_channels=out_channels,
                norm=norm,
            )
        )
        in_channels, out_channels = out_channels, out_channels * 2
    return ResNet(stem, stages, out_features=cfg.MODEL.RESNETS.OUT_FEATURES, freeze_at=cfg.MODEL.BACKBONE.FREEZE_AT)


@BACKBONE_REGISTRY.register()
def build_small_resnet_fpn_backbone(cfg, input_shape: ShapeSpec):
    """Detectron2's FPN (with a max-pooled p6) on top of :func:`build_small_resnet`."""
    return FPN(
        bottom_up=build_small_resnet(cfg, input_shape),
        in_features=cfg.MODEL.FPN.IN_FEATURES,
        out_channels=cfg.MODEL.FPN.OUT_CHANNELS,
        norm=cfg.MODEL.FPN.NORM,
        top_block=LastLevelMaxPool(),
        fuse_type=cfg.MODEL.FPN.FUSE_TYPE,
    )
