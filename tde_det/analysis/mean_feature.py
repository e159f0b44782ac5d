"""x̄ measured instead of remembered: the exact mean foreground feature of a trained TDE model (issue 29).

Training keeps x̄ as a moving average taken while the weights still change. :func:`estimate_mean_features`
measures it on the final weights instead. The definition, for every box stage s (one for Standard ROI
heads, one per stage for Cascade):

    x̄_s = (1 / |F_s|) Σ_{r ∈ F_s} box_head_s(pool(r))          [D] per stage

over the first N images of ``DATASETS.TRAIN[0]`` (``DatasetCatalog.get`` order), each resized as at
test time (``INPUT.MIN_SIZE_TEST`` / ``MAX_SIZE_TEST``, no flip). Stage 0's regions: the RPN's
proposals in inference mode plus the ground-truth boxes (``MODEL.ROI_HEADS.PROPOSAL_APPEND_GT``),
labelled by the ROI heads' ``proposal_matcher`` (``ROI_HEADS.IOU_THRESHOLDS``); F_0 = the regions of
matcher label 1, all of them (no sampling). Cascade stage s > 0 sees, as in training, the boxes that
stage s − 1 predicts for all of its regions (non-empty ones), labelled by that stage's matcher
(``ROI_BOX_CASCADE_HEAD.IOUS``). With several processes each takes every world-size-th image and the
float64 sums and counts are all-reduced: the result equals one process's.

:func:`write_checkpoint` writes ``{"model": state_dict, "mean_feature_record": record}``: the input
checkpoint's state dict with only the ``cls_score.mean_feature`` buffers replaced, and beside it a
json-able record of how x̄ was made (loadable with ``torch.load(weights_only=True)``);
:func:`describe_record` is the one line ``--eval-only`` and the α sweep print for it.
"""

import datetime
import logging
import os
import time

import torch
import torch.distributed as dist
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data import detection_utils as utils
from detectron2.modeling.proposal_generator.proposal_utils import add_ground_truth_to_proposals
from detectron2.structures import Boxes, Instances, pairwise_iou
from detectron2.utils import comm

from ..errors import ConfigError, UserError
from ..modeling.box_predictor import TDEFastRCNNOutputLayers
from ..modeling.roi_heads import box_stages

__all__ = ["RECORD_KEY", "estimate_mean_features", "mean_key", "write_checkpoint", "describe_record",
           "mean_feature_keys", "test_time_mapper", "tde_stages", "make_record", "log_record"]

logger = logging.getLogger(__name__)

RECORD_KEY = "mean_feature_record"  # the record's key in the checkpoint, beside "model"


class NoForeground(UserError):
    """No region of the images matched a ground-truth box."""


def mean_key(num_stages, stage):
    """State-dict key of stage `stage`'s x̄."""
    return ("roi_heads.box_predictor.cls_score.mean_feature" if num_stages == 1
            else f"roi_heads.box_predictor.{stage}.cls_score.mean_feature")


def mean_feature_keys(state_dict):
    """The x̄ keys present in a state dict, in stage order."""
    return sorted(k for k in state_dict if k.endswith("cls_score.mean_feature"))


def test_time_mapper(cfg):
    """Detectron2's ``DatasetMapper`` that keeps the annotations but transforms like the test loader
    (``ResizeShortestEdge(MIN_SIZE_TEST, MAX_SIZE_TEST)``, no flip, no crop), boxes only."""
    kwargs = DatasetMapper.from_config(cfg, is_train=True)
    kwargs.update(augmentations=utils.build_augmentation(cfg, is_train=False), use_instance_mask=False,
                  use_keypoint=False, recompute_boxes=False)
    return DatasetMapper(**kwargs)


def tde_stages(model):
    model, heads, box_heads, predictors = box_stages(model, "The x̄ estimation")
    if not all(isinstance(p, TDEFastRCNNOutputLayers) for p in predictors):
        raise ConfigError(
            f"The x̄ estimation needs a De-confound-TDE model; this config builds {type(heads).__name__} with "
            f"{type(predictors[0]).__name__} (a softmax model, which has no x̄). Use a TDE config "
            "(MODEL.ROI_HEADS.NAME TDEStandardROIHeads or TDECascadeROIHeads), e.g. configs/demo/tde_mask_rcnn_demo.yaml."
        )
    return model, heads, box_heads, predictors


def _foreground(boxes, gt, matcher):
    """Mask [R] of the regions `boxes` (Boxes) whose matcher label is 1 against `gt` (Instances with gt_boxes)."""
    if len(gt) == 0 or len(boxes) == 0:
        return torch.zeros(len(boxes), dtype=torch.bool, device=boxes.tensor.device)
    _, labels = matcher(pairwise_iou(gt.gt_boxes, boxes))
    return labels == 1


@torch.no_grad()
def _image_sums(model, heads, box_heads, predictors, inputs):
    """Per stage (fg feature sum [D] float64, fg count) of one batch of mapped dataset dicts."""
    images = model.preprocess_image(inputs)
    features = model.backbone(images.tensor)
    proposals, _ = model.proposal_generator(images, features, None)
    targets = [x["instances"].to(model.device) for x in inputs]
    if heads.proposal_append_gt:
        proposals = add_ground_truth_to_proposals(targets, proposals)
    in_features = [features[f] for f in heads.box_in_features]
    boxes = [p.proposal_boxes for p in proposals]
    matchers = [heads.proposal_matcher] + list(getattr(heads, "proposal_matchers", [])[1:])
    sums = []
    for stage, (box_head, predictor) in enumerate(zip(box_heads, predictors)):
        if stage > 0:  # the previous stage's predicted boxes of all its regions, as in training
            previous = [Instances(images.image_sizes[i], proposal_boxes=b) for i, b in enumerate(boxes)]
            predicted = predictor_prev.predict_boxes(predictor_prev(x_prev), previous)
            boxes = []
            for b, size in zip(predicted, images.image_sizes):
                b = Boxes(b.detach())
                b.clip(size)
                boxes.append(b[b.nonempty()])
        x = box_head(heads.box_pooler(in_features, boxes)).flatten(1)
        fg = torch.cat([_foreground(b, t, matchers[stage]) for b, t in zip(boxes, targets)])
        sums.append((x[fg].double().sum(0).cpu(), int(fg.sum())))
        x_prev, predictor_prev = x, predictor
    return sums


def estimate_mean_features(cfg, model, num_images=None, batch_size=1, progress_every=30.0):
    """The exact x̄ of every box stage (module docstring) over the first `num_images` images
    (None: all) of ``cfg.DATASETS.TRAIN[0]``; this process takes every world-size-th image.

    Returns (means [S, D] float32, counts [S] ints, num_images used). Raises ConfigError for a
    softmax model or num_images < 1, NoForeground when a stage found no foreground region.
    """
    if num_images is not None and (isinstance(num_images, bool) or not isinstance(num_images, int) or num_images < 1):
        raise ConfigError(f"--num-images {num_images!r} must be an integer >= 1 (or 'all').")
    model, heads, box_heads, predictors = tde_stages(model)
    name = cfg.DATASETS.TRAIN[0]
    dicts = DatasetCatalog.get(name)
    total = len(dicts) if num_images is None else min(num_images, len(dicts))
    if num_images is not None and num_images > len(dicts):
        logger.warning(f"--num-images {num_images} but {name} has {len(dicts)} images: using all of them.")
    mapper = test_time_mapper(cfg)
    rank, world = comm.get_rank(), comm.get_world_size()
    mine = list(range(rank, total, world))
    dim = predictors[0].cls_score.mean_feature.numel()
    stats = torch.zeros(len(predictors), dim + 1, dtype=torch.float64)
    was_training = model.training
    model.eval()
    start = last = time.perf_counter()
    try:
        for done in range(0, len(mine), batch_size):
            inputs = [mapper(dicts[i]) for i in mine[done : done + batch_size]]
            for s, (total_s, n) in enumerate(_image_sums(model, heads, box_heads, predictors, inputs)):
                stats[s, :dim] += total_s
                stats[s, dim] += n
            now = time.perf_counter()
            if comm.is_main_process() and now - last >= progress_every:
                last = now
                k = min(done + batch_size, len(mine))
                logger.info(f"x̄ estimation: {k}/{len(mine)} images of this process, "
                            f"{(now - start) / k:.2f} s/image, ETA {(len(mine) - k) * (now - start) / k:.0f} s")
    finally:
        model.train(was_training)
    if world > 1 and dist.is_available() and dist.is_initialized():
        stats = stats.to(model.device)  # NCCL reduces CUDA tensors only; gloo CPU ones
        dist.all_reduce(stats)
        stats = stats.cpu()
    counts = [int(c) for c in stats[:, dim].tolist()]
    for s, n in enumerate(counts):
        if n == 0:
            raise NoForeground(
                f"No foreground region (matcher label 1) for box stage {s} in the first {total} images of {name}: "
                "x̄ is undefined. Use more images (--num-images), or check that the data set has boxes and that the "
                "weights are the trained ones (MODEL.WEIGHTS)."
            )
    means = (stats[:, :dim] / stats[:, dim:]).float()
    return means, counts, total


def make_record(cfg, counts, num_images, previous, means):
    """The json-able record of how x̄ was made (stored beside the state dict)."""
    num_heads = cfg.MODEL.TDE.NUM_HEADS

    def head_cos(a, b):
        a, b = a.view(num_heads, -1), b.view(num_heads, -1)
        return [round(float(v), 6) for v in torch.cosine_similarity(a.double(), b.double(), dim=1)]

    return {
        "how": "exact mean",
        "dataset": cfg.DATASETS.TRAIN[0],
        "images": int(num_images),
        "input": f"test-time resize (MIN_SIZE_TEST {cfg.INPUT.MIN_SIZE_TEST}, MAX_SIZE_TEST {cfg.INPUT.MAX_SIZE_TEST}), no flip",
        "regions": "RPN proposals in inference mode + ground-truth boxes; foreground = proposal matcher label 1 "
                   f"(ROI_HEADS.IOU_THRESHOLDS {list(cfg.MODEL.ROI_HEADS.IOU_THRESHOLDS)}; cascade stages: their "
                   "own matchers on the previous stage's boxes)",
        "foreground_regions": [int(c) for c in counts],
        "cos_to_previous_per_head": [head_cos(m, p) for m, p in zip(means, previous)],
        "source_weights": str(cfg.MODEL.WEIGHTS),
        "num_processes": comm.get_world_size(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def write_checkpoint(checkpoint, means, record, path):
    """Write ``{"model": state_dict with x̄ replaced, RECORD_KEY: record}`` to `path` atomically.

    `checkpoint`: the loaded input checkpoint ({"model": state_dict, ...}); only its x̄ tensors change
    (same dtype); its other entries (optimizer, iteration) are not copied."""
    state = dict(checkpoint["model"])
    keys = mean_feature_keys(state)
    for s, key in enumerate([mean_key(len(means), s) for s in range(len(means))]):
        if key not in keys:
            raise ConfigError(f"The weights have no {key}: not a checkpoint of this TDE model (MODEL.WEIGHTS).")
        state[key] = means[s].to(dtype=state[key].dtype).clone()
    tmp = f"{path}.tmp-{os.getpid()}"
    torch.save({"model": state, RECORD_KEY: record}, tmp)
    os.replace(tmp, path)


def describe_record(checkpoint):
    """One line on how the checkpoint's x̄ was made, or None when it holds no record (the training's
    moving average, MODEL.TDE.MOMENTUM)."""
    record = checkpoint.get(RECORD_KEY) if isinstance(checkpoint, dict) else None
    if not isinstance(record, dict):
        return None
    return (f"x̄ of these weights: {record.get('how')} over the first {record.get('images')} images of "
            f"{record.get('dataset')} ({record.get('foreground_regions')} foreground regions per stage; "
            f"{record.get('date')}), not the training's moving average")


def log_record(checkpoint):
    """Log :func:`describe_record`'s line for a checkpoint (what ``Checkpointer.load`` returns), if any."""
    line = describe_record(checkpoint)
    if line and comm.is_main_process():
        logger.info(line)
    return line
