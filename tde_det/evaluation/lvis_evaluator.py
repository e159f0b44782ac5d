"""``FastLVISEvaluator``: Detectron2's ``LVISEvaluator`` with tde_det's fast, exact LVIS evaluation.

Everything but the metric computation is Detectron2's own code (gathering predictions, the
category-id mapping, ``lvis_instances_results.json``, proposal evaluation): the subclass only
replaces, while its ``_eval_predictions`` runs, the module function
``detectron2.evaluation.lvis_evaluation._evaluate_predictions_on_lvis`` -- the part that builds
``LVISResults`` and runs ``LVISEval`` -- by :meth:`FastLVISEvaluator._evaluate_task` (and its
``process`` hands Detectron2 the predicted masks as numpy arrays, which numpy 2 does not warn about).
For a dataset converted by ``tools/coco_to_lvis.py`` it also writes ``coco_instances_results.json``:
the predictions with the original COCO category ids.

Results per task ("bbox", "segm"), in percent like Detectron2's: AP, AP50, AP75, APs, APm, APl,
APr, APc, APf, AR@300, with ``fixed_ap`` also AP_fixed, AP50_fixed, ..., APf_fixed (Fixed AP, Dave
et al. 2021), and "AP-<class name>" per category (NaN for a category without ground truth; hidden
by ``print_csv_format`` like COCOEvaluator's). LVIS's -1 (undefined) shows as -100, as in
Detectron2.
"""

import contextlib
import json
import math
import os
from collections import OrderedDict

import torch
from detectron2.evaluation import LVISEvaluator
from detectron2.evaluation import lvis_evaluation as _d2_lvis
from detectron2.structures import Instances
from detectron2.utils.logger import create_small_table

from .fast_lvis import AP_KEYS, FIXED_SUFFIX, prepare_gt, run_lvis_api_eval, run_lvis_eval

__all__ = ["FastLVISEvaluator", "build_lvis_evaluator", "BACKENDS"]

BACKENDS = ("fast", "lvis-api")
COCO_ID_RESULTS = "coco_instances_results.json"  # predictions with the json's original coco_id
_PATCHED_NAME = "_evaluate_predictions_on_lvis"


class FastLVISEvaluator(LVISEvaluator):
    """Drop-in ``LVISEvaluator`` (same constructor arguments, same results) computing the metrics
    with :mod:`tde_det.evaluation.fast_lvis` (``backend="fast"``) or lvis-api (``"lvis-api"``).

    Extra keyword arguments:
        backend: "fast" (default) or "lvis-api" (lvis-api's ``LVISEval``; same numbers, slower).
        fixed_ap: also report Fixed AP as "<metric>_fixed".
        max_dets_per_cat: Fixed AP's per-category limit (10,000 for LVIS).
    """

    def __init__(self, dataset_name, tasks=None, distributed=True, output_dir=None, *,
                 backend="fast", fixed_ap=False, max_dets_per_cat=10000, **kwargs):
        if backend not in BACKENDS:
            raise ValueError(f"LVIS evaluation backend must be one of {BACKENDS}, got {backend!r}")
        if not hasattr(_d2_lvis, _PATCHED_NAME):
            raise ImportError(
                f"this Detectron2 has no detectron2.evaluation.lvis_evaluation.{_PATCHED_NAME}; "
                "FastLVISEvaluator needs a Detectron2 with it (v0.6 or upstream main)"
            )
        super().__init__(dataset_name, tasks, distributed, output_dir, **kwargs)
        self._backend = backend
        self._fixed_ap = bool(fixed_ap)
        self._max_dets_per_cat = int(max_dets_per_cat)

    def process(self, inputs, outputs):
        # Detectron2's instances_to_coco_json encodes each mask with np.array(<mask tensor>), which on
        # numpy 2 warns once per detection (torch's Tensor.__array__ takes no `copy` argument); the
        # masks converted to numpy once per image avoid that. The caller's outputs stay as they are.
        super().process(inputs, [_with_numpy_masks(output) for output in outputs])

    def _eval_predictions(self, predictions, *args, **kwargs):
        self._save_coco_id_results(predictions)
        with _replace_module_function(_d2_lvis, _PATCHED_NAME, self._evaluate_task):
            return super()._eval_predictions(predictions, *args, **kwargs)

    def _save_coco_id_results(self, predictions):
        """For a dataset converted by tools/coco_to_lvis.py (metadata ``coco_ids``): the predictions
        with the original COCO category ids, in ``coco_instances_results.json`` next to Detectron2's
        ``lvis_instances_results.json`` (ids 1..N) -- what pycocotools scores against the COCO json."""
        coco_ids = self._metadata.get("coco_ids", None)
        if not (coco_ids and self._output_dir):
            return
        # the instances' category_id is still Detectron2's contiguous index (super() maps it later)
        results = [dict(r, category_id=coco_ids[r["category_id"]]) for p in predictions for r in p["instances"]]
        path = os.path.join(self._output_dir, COCO_ID_RESULTS)
        self._logger.info(f"Saving results with the original COCO category ids to {path}")
        with open(path, "w") as f:
            json.dump(results, f)

    def _evaluate_task(self, lvis_gt, lvis_results, iou_type, max_dets_per_image=None, class_names=None, **_):
        """Replacement of Detectron2's ``_evaluate_predictions_on_lvis``: {metric: value in percent}."""
        if len(lvis_results) == 0:
            self._logger.warning("No predictions from the model!")
            return {metric: float("nan") for metric in AP_KEYS}
        max_dets = 300 if max_dets_per_image is None else max_dets_per_image
        # Detectron2 removes "bbox" before segm evaluation so that the area ranges use mask areas
        use_mask_area = iou_type == "segm"
        if self._backend == "fast":
            run, gt = run_lvis_eval, self._prepared_gt(lvis_gt)
        else:
            run, gt = run_lvis_api_eval, lvis_gt
        main = run(gt, lvis_results, iou_type, max_dets, use_mask_area=use_mask_area)
        results = OrderedDict((k, float(main.results[k] * 100)) for k in AP_KEYS + ("AR@300",))
        if self._fixed_ap:
            fixed = run(gt, lvis_results, iou_type, -1, self._max_dets_per_cat, use_mask_area=use_mask_area)
            results.update((k + FIXED_SUFFIX, float(fixed.results[k] * 100)) for k in AP_KEYS)
        self._logger.info(
            f"Evaluation results for {iou_type} ({self._backend} LVIS evaluation): \n" + create_small_table(results)
        )
        if class_names is not None and len(class_names) == len(main.cat_ids):
            # thing_classes are in the order of the sorted category ids (Detectron2's LVIS metadata)
            per_cat = main.per_category_ap()
            results.update(
                ("AP-" + name, per_cat[c] * 100 if not math.isnan(per_cat[c]) else float("nan"))
                for name, c in zip(class_names, main.cat_ids)
            )
        elif class_names is not None:
            self._logger.warning(
                f"No per-category AP: the ground-truth json has {len(main.cat_ids)} categories but the dataset's "
                f"metadata {len(class_names)} classes, so the results are scored against another vocabulary. "
                "`python datasets/check_lvis.py --config-file CONFIG` names the mismatch."
            )
        return results

    def _prepared_gt(self, lvis_gt):
        """The indexed ground truth, shared by all evaluators of one json file (e.g. an alpha sweep)."""
        path = getattr(self._metadata, "json_file", None)
        try:
            stat = os.stat(path)
            key = (os.path.abspath(path), stat.st_mtime_ns, stat.st_size)
        except (OSError, TypeError):
            key = ("object", id(lvis_gt))
        if _GT_CACHE.get("key") != key:
            _GT_CACHE.clear()  # keep one ground truth: LVIS val indexed is a few hundred MB
            # (holding lvis_gt keeps its id from being reused while it is the key)
            _GT_CACHE.update(key=key, gt=prepare_gt(lvis_gt), owner=lvis_gt)
        return _GT_CACHE["gt"]


_GT_CACHE = {}


def _with_numpy_masks(output):
    """`output` with its instances' ``pred_masks`` as a numpy array (a new dict and Instances)."""
    instances = output.get("instances")
    if instances is None or not torch.is_tensor(instances.get_fields().get("pred_masks")):
        return output
    fields = dict(instances.get_fields(), pred_masks=instances.pred_masks.cpu().numpy())
    return dict(output, instances=Instances(instances.image_size, **fields))


@contextlib.contextmanager
def _replace_module_function(module, name, fn):
    """Temporarily set ``module.name = fn`` (restored on exit, also after an error)."""
    original = getattr(module, name)
    setattr(module, name, fn)
    try:
        yield
    finally:
        setattr(module, name, original)


def build_lvis_evaluator(cfg, dataset_name, output_dir=None, *, distributed=True):
    """The LVIS evaluator selected by ``cfg.TEST.LVIS_EVAL`` (BACKEND, FIXED_AP), capped at
    ``cfg.TEST.DETECTIONS_PER_IMAGE`` detections per image (300 for LVIS)."""
    lvis_cfg = cfg.TEST.get("LVIS_EVAL")
    if lvis_cfg is None:
        raise KeyError("cfg.TEST.LVIS_EVAL is missing; call tde_det.add_tde_config(cfg) before loading the config")
    backend = lvis_cfg.BACKEND
    if backend not in BACKENDS:
        raise ValueError(f"TEST.LVIS_EVAL.BACKEND must be one of {BACKENDS}, got {backend!r}")
    return FastLVISEvaluator(
        dataset_name,
        distributed=distributed,
        output_dir=output_dir,
        max_dets_per_image=cfg.TEST.DETECTIONS_PER_IMAGE,
        backend=backend,
        fixed_ap=lvis_cfg.FIXED_AP,
    )
