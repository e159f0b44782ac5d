"""``Trainer``: Detectron2's ``DefaultTrainer`` with LVIS evaluation and the checks of this project.

What it adds to ``DefaultTrainer``:

- datasets are prepared before use: the demo set is generated on first use; a missing LVIS json or
  image folder is an error naming the path (:func:`tde_det.data.prepare_dataset`);
- ``MODEL.ROI_HEADS.NUM_CLASSES`` must equal the datasets' class count (:func:`check_config`);
- LVIS evaluation with tde_det's ``FastLVISEvaluator`` (Detectron2's ``LVISEvaluator`` with exact,
  faster metrics; ``TEST.LVIS_EVAL.BACKEND lvis-api`` for lvis-api's), ``TEST.DETECTIONS_PER_IMAGE``
  (300 for LVIS) detections per image;
- ``test()`` evaluates every variant listed by :func:`inference_variants` -- with TDE heads and
  ``TEST.TDE_EVAL_PLAIN``, the same weights with ``MODEL.TDE.INFERENCE plain`` and then ``tde`` --
  prints one LVIS-style table (AP, AP50, AP75, APr, APc, APf and box AP) and records it in
  ``OUTPUT_DIR/lvis_results.json``;
- an image that cannot be read is skipped in training (one warning naming it, the count at the
  end) and an error naming it in evaluation (:mod:`tde_det.data.images`);
- checkpoints are written atomically (:mod:`tde_det.engine.checkpoint`);
- several CPU processes (upstream detectron2's ``launch`` uses gloo without CUDA): the model is
  wrapped in ``DistributedDataParallel`` without ``device_ids``, which DDP requires for CPU modules
  (Detectron2's ``create_ddp_model`` passes the local rank);
- ``--resume`` under upstream detectron2 of a run started under detectron2 v0.6, whose checkpoints
  have no ``_trainer`` entry (v0.6 saves no optimizer state): see :meth:`Trainer.load_state_dict`;
- several processes: before each checkpoint and evaluation every process gets the same buffers
  (BatchNorm statistics averaged, the rest rank 0's; :mod:`tde_det.engine.buffers`), so the
  evaluation during training scores the weights that are saved;
- preemption-safe, exactly resumable training (:mod:`tde_det.engine.preemption`): the training data
  come from a :class:`~tde_det.data.resumable_loader.ResumableTrainLoader` (Detectron2's dataset,
  mapper, sampler and grouping) whose position is saved in every checkpoint; SIGTERM / SIGUSR1 stop
  all processes after the same iteration with a checkpoint of it (exit status 3); the optimizer
  state is saved under detectron2 v0.6 too.
"""

import contextlib
import logging
import math
import os
from collections import OrderedDict

import detectron2.engine.defaults
import torch
from detectron2.data import DatasetMapper, MetadataCatalog, build_detection_test_loader
from detectron2.engine import DefaultTrainer, hooks
from detectron2.engine.train_loop import TrainerBase
from detectron2.evaluation import COCOEvaluator
from detectron2.modeling import BACKBONE_REGISTRY, META_ARCH_REGISTRY, ROI_HEADS_REGISTRY
from detectron2.utils import comm
from detectron2.utils.events import get_event_storage

from ..data import prepare_dataset
from ..data.class_counts import norcal_class_counts
from ..data.images import SkippedImagesReport, SkipUnreadableImages
from ..errors import ConfigError
from ..evaluation.lvis_evaluator import build_lvis_evaluator
from ..modeling.box_predictor import INFERENCE_MODES
from ..modeling.calibration import apply_norcal
from ..modeling.roi_heads import TDECascadeROIHeads, TDEStandardROIHeads
from ..data.resumable_loader import build_resumable_train_loader
from . import preemption
from .buffers import SyncBuffers
from .checkpoint import make_atomic, remove_partial_files
from .results import format_table, update_results_json

__all__ = ["Trainer", "cap_num_workers", "check_config", "check_device", "check_values", "inference_variants", "is_tde_model"]

logger = logging.getLogger(__name__)


def is_tde_model(cfg):
    """True if ``MODEL.ROI_HEADS.NAME`` is one of tde_det's TDE ROI heads (or a subclass)."""
    heads = ROI_HEADS_REGISTRY.get(cfg.MODEL.ROI_HEADS.NAME)
    return isinstance(heads, type) and issubclass(heads, (TDEStandardROIHeads, TDECascadeROIHeads))


def inference_variants(cfg):
    """The (key, row label, cfg) triples that ``Trainer.test`` evaluates, in display order.

    A softmax model gives one row. A TDE model gives its ``MODEL.TDE.INFERENCE`` row, preceded by a
    ``plain`` row (same weights, De-confound only) when INFERENCE is ``tde`` and
    ``TEST.TDE_EVAL_PLAIN`` is set. With ``MODEL.NORCAL.GAMMA`` > 0: one NorCal row (softmax, or
    TDE heads' plain logits).
    """
    gamma = cfg.MODEL.NORCAL.GAMMA if "NORCAL" in cfg.MODEL else 0.0
    if gamma > 0:  # NorCal calibrates plain softmax logits (check_config refuses TDE scoring with it)
        name = "softmax" if not is_tde_model(cfg) else "plain"
        label = "softmax (baseline)" if name == "softmax" else "De-confound (plain)"
        return [(f"{name}_norcal_gamma{gamma:g}", f"{label} + NorCal (gamma={gamma:g})", cfg)]
    if not is_tde_model(cfg):
        return [("softmax", "softmax (baseline)", cfg)]
    tde = cfg.MODEL.TDE
    tde_row = (f"tde_alpha{tde.ALPHA:g}", f"De-confound-TDE (alpha={tde.ALPHA:g})", cfg)
    if tde.INFERENCE != "tde":
        return [(tde.INFERENCE, f"De-confound ({tde.INFERENCE})", cfg)]
    if not cfg.TEST.get("TDE_EVAL_PLAIN", False):
        return [tde_row]
    plain = cfg.clone()
    plain.defrost()
    plain.MODEL.TDE.INFERENCE = "plain"
    plain.freeze()
    return [("plain", "De-confound (plain)", plain), tde_row]


def check_config(cfg, dataset_names=None, world_size=1):
    """Errors for settings that would otherwise fail late or silently.

    - ``MODEL.ROI_HEADS.NUM_CLASSES`` must equal ``len(thing_classes)`` of every dataset in
      `dataset_names` (default: ``DATASETS.TRAIN + DATASETS.TEST``) that declares its classes;
    - ``MODEL.DEVICE`` must be a device this machine has (:func:`check_device`);
    - the values of :func:`check_values` (backends, registered names, γ, α, sizes, batch size
      divisible by `world_size` processes).
    """
    names = list(cfg.DATASETS.TRAIN) + list(cfg.DATASETS.TEST) if dataset_names is None else dataset_names
    for name in names:
        classes = MetadataCatalog.get(name).get("thing_classes")
        if classes is not None and len(classes) != cfg.MODEL.ROI_HEADS.NUM_CLASSES:
            raise ConfigError(
                f"MODEL.ROI_HEADS.NUM_CLASSES is {cfg.MODEL.ROI_HEADS.NUM_CLASSES} but dataset {name!r} has "
                f"{len(classes)} classes. Set MODEL.ROI_HEADS.NUM_CLASSES {len(classes)} (in the config or "
                "as a trailing KEY VALUE override)."
            )
    check_device(cfg.MODEL.DEVICE)
    check_values(cfg, world_size)
    if cfg.MODEL.NORCAL.GAMMA > 0 and is_tde_model(cfg) and cfg.MODEL.TDE.INFERENCE != "plain":
        raise ConfigError(
            f"MODEL.NORCAL.GAMMA {cfg.MODEL.NORCAL.GAMMA:g} calibrates the plain logits, but MODEL.TDE.INFERENCE is "
            f"{cfg.MODEL.TDE.INFERENCE!r}: add MODEL.TDE.INFERENCE plain, or compare NorCal with TDE in one pass "
            "with tools/sweep_alpha.py --gammas."
        )


def check_device(device):
    """``MODEL.DEVICE`` must name a device this machine has: cpu, cuda, cuda:N."""
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise ConfigError(f"MODEL.DEVICE {device!r} is not a device: use cpu, cuda or cuda:N.") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            f"MODEL.DEVICE is {device!r} but CUDA is not available on this machine. "
            "Add the override MODEL.DEVICE cpu to run on the CPU."
        )
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ConfigError(f"MODEL.DEVICE is {device!r} but this machine has {torch.cuda.device_count()} CUDA device(s).")
    if dev.type not in ("cpu", "cuda"):
        raise ConfigError(f"MODEL.DEVICE {device!r}: tde_det runs on cpu or cuda.")


SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler", "RandomSubsetTrainingSampler")


def _value_rules(cfg, world_size):
    """(holds, key, value, what it must be) for the values the tools depend on."""
    from ..evaluation.lvis_evaluator import BACKENDS

    def finite(x):
        return isinstance(x, (int, float)) and math.isfinite(x)

    tde, norcal, heads, solver, inp = cfg.MODEL.TDE, cfg.MODEL.NORCAL, cfg.MODEL.ROI_HEADS, cfg.SOLVER, cfg.INPUT
    return [
        (cfg.MODEL.META_ARCHITECTURE in META_ARCH_REGISTRY, "MODEL.META_ARCHITECTURE", cfg.MODEL.META_ARCHITECTURE,
         "a registered meta-architecture, e.g. GeneralizedRCNN"),
        (cfg.MODEL.BACKBONE.NAME in BACKBONE_REGISTRY, "MODEL.BACKBONE.NAME", cfg.MODEL.BACKBONE.NAME,
         "a registered backbone, e.g. build_resnet_fpn_backbone"),
        (heads.NAME in ROI_HEADS_REGISTRY, "MODEL.ROI_HEADS.NAME", heads.NAME,
         "a registered ROI head: TDEStandardROIHeads, TDECascadeROIHeads, StandardROIHeads, CascadeROIHeads"),
        (heads.NUM_CLASSES >= 1, "MODEL.ROI_HEADS.NUM_CLASSES", heads.NUM_CLASSES, ">= 1"),
        (0 <= heads.SCORE_THRESH_TEST <= 1, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", heads.SCORE_THRESH_TEST, "in [0, 1]"),
        (0 <= heads.NMS_THRESH_TEST <= 1, "MODEL.ROI_HEADS.NMS_THRESH_TEST", heads.NMS_THRESH_TEST, "in [0, 1]"),
        (heads.BATCH_SIZE_PER_IMAGE >= 1, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", heads.BATCH_SIZE_PER_IMAGE, ">= 1"),
        (0 < heads.POSITIVE_FRACTION <= 1, "MODEL.ROI_HEADS.POSITIVE_FRACTION", heads.POSITIVE_FRACTION, "in (0, 1]"),
        (finite(tde.ALPHA) and tde.ALPHA >= 0, "MODEL.TDE.ALPHA", tde.ALPHA,
         ">= 0 (0: De-confound only; the paper's LVIS value is 1.5)"),
        (tde.INFERENCE in INFERENCE_MODES, "MODEL.TDE.INFERENCE", tde.INFERENCE,
         " or ".join(repr(m) for m in INFERENCE_MODES)),
        (0 <= tde.MOMENTUM < 1, "MODEL.TDE.MOMENTUM", tde.MOMENTUM, "in [0, 1) (0.9 in the paper)"),
        (tde.NUM_HEADS >= 1, "MODEL.TDE.NUM_HEADS", tde.NUM_HEADS, ">= 1 (2 in the paper)"),
        (finite(tde.SCALE) and tde.SCALE > 0, "MODEL.TDE.SCALE", tde.SCALE, "> 0 (16 in the paper)"),
        (finite(tde.GAMMA) and tde.GAMMA >= 0, "MODEL.TDE.GAMMA", tde.GAMMA, ">= 0 (1/32 in the paper)"),
        (finite(norcal.GAMMA) and norcal.GAMMA >= 0, "MODEL.NORCAL.GAMMA", norcal.GAMMA, ">= 0 (0: NorCal off)"),
        (not norcal.CLASS_COUNTS or "://" in norcal.CLASS_COUNTS or os.path.isfile(norcal.CLASS_COUNTS),
         "MODEL.NORCAL.CLASS_COUNTS", norcal.CLASS_COUNTS, "an existing json file, or '' (DATASETS.TRAIN's counts)"),
        (cfg.TEST.LVIS_EVAL.BACKEND in BACKENDS, "TEST.LVIS_EVAL.BACKEND", cfg.TEST.LVIS_EVAL.BACKEND,
         " or ".join(repr(b) for b in BACKENDS)),
        (cfg.TEST.DETECTIONS_PER_IMAGE >= 1, "TEST.DETECTIONS_PER_IMAGE", cfg.TEST.DETECTIONS_PER_IMAGE, ">= 1 (LVIS: 300)"),
        (cfg.TEST.EVAL_PERIOD >= 0, "TEST.EVAL_PERIOD", cfg.TEST.EVAL_PERIOD, ">= 0 (0: evaluate after training only)"),
        (solver.IMS_PER_BATCH >= 1, "SOLVER.IMS_PER_BATCH", solver.IMS_PER_BATCH, ">= 1"),
        (solver.IMS_PER_BATCH % max(world_size, 1) == 0, "SOLVER.IMS_PER_BATCH", solver.IMS_PER_BATCH,
         f"divisible by the {world_size} processes (the batch is split evenly)"),
        (finite(solver.BASE_LR) and solver.BASE_LR > 0, "SOLVER.BASE_LR", solver.BASE_LR, "> 0"),
        (solver.MAX_ITER >= 0, "SOLVER.MAX_ITER", solver.MAX_ITER, ">= 0"),
        (solver.CHECKPOINT_PERIOD >= 1, "SOLVER.CHECKPOINT_PERIOD", solver.CHECKPOINT_PERIOD, ">= 1"),
        (len(inp.MIN_SIZE_TRAIN) >= 1 and all(s > 0 for s in inp.MIN_SIZE_TRAIN), "INPUT.MIN_SIZE_TRAIN",
         inp.MIN_SIZE_TRAIN, "sizes > 0, e.g. (640, 672, 704, 736, 768, 800)"),
        (inp.MIN_SIZE_TRAIN_SAMPLING in ("choice", "range") and
         (inp.MIN_SIZE_TRAIN_SAMPLING == "choice" or len(inp.MIN_SIZE_TRAIN) == 2), "INPUT.MIN_SIZE_TRAIN_SAMPLING",
         inp.MIN_SIZE_TRAIN_SAMPLING, "'choice', or 'range' with two INPUT.MIN_SIZE_TRAIN values"),
        (inp.MAX_SIZE_TRAIN > 0, "INPUT.MAX_SIZE_TRAIN", inp.MAX_SIZE_TRAIN, "> 0"),
        (inp.MIN_SIZE_TEST >= 0, "INPUT.MIN_SIZE_TEST", inp.MIN_SIZE_TEST, ">= 0 (0: no resizing)"),
        (inp.MAX_SIZE_TEST > 0, "INPUT.MAX_SIZE_TEST", inp.MAX_SIZE_TEST, "> 0"),
        (cfg.DATALOADER.NUM_WORKERS >= 0, "DATALOADER.NUM_WORKERS", cfg.DATALOADER.NUM_WORKERS, ">= 0"),
        (cfg.DATALOADER.SAMPLER_TRAIN in SAMPLERS, "DATALOADER.SAMPLER_TRAIN", cfg.DATALOADER.SAMPLER_TRAIN,
         " or ".join(SAMPLERS)),
        (cfg.DATALOADER.REPEAT_THRESHOLD >= 0, "DATALOADER.REPEAT_THRESHOLD", cfg.DATALOADER.REPEAT_THRESHOLD,
         ">= 0 (LVIS: 0.001)"),
    ]


def check_values(cfg, world_size=1):
    """A ConfigError for the first value of :func:`_value_rules` that cannot work: its key, the value
    and what it must be."""
    for holds, key, value, must in _value_rules(cfg, world_size):
        if not holds:
            raise ConfigError(f"{key} is {value!r}, but it must be {must}. Fix it in the config or with a "
                              f"trailing override: {key} VALUE.")


@contextlib.contextmanager
def _ddp_without_device_ids_for_cpu_models():
    """Within the block, Detectron2's ``create_ddp_model`` (called by ``DefaultTrainer.__init__``)
    wraps a model whose parameters are all on the CPU with ``device_ids=None``."""
    create_ddp_model = detectron2.engine.defaults.create_ddp_model

    def create_cpu_aware(model, **kwargs):
        if "device_ids" not in kwargs and all(p.device.type == "cpu" for p in model.parameters()):
            kwargs["device_ids"] = None
        return create_ddp_model(model, **kwargs)

    detectron2.engine.defaults.create_ddp_model = create_cpu_aware
    try:
        yield
    finally:
        detectron2.engine.defaults.create_ddp_model = create_ddp_model


def cap_num_workers(cfg):
    """`cfg`, or a copy with ``DATALOADER.NUM_WORKERS`` lowered to the CPUs this process may use
    (the limit above which torch's DataLoader warns of slowness; LVIS configs ask for 4 workers)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    if cfg.DATALOADER.NUM_WORKERS <= cpus:
        return cfg
    if cpus not in _CAPPED:
        logger.info("DATALOADER.NUM_WORKERS is %d but this process may use %d CPUs: using %d data-loader workers.",
                    cfg.DATALOADER.NUM_WORKERS, cpus, cpus)
        _CAPPED.add(cpus)
    cfg = cfg.clone()
    cfg.defrost()
    cfg.DATALOADER.NUM_WORKERS = cpus
    cfg.freeze()
    return cfg


_CAPPED = set()  # the info line is printed once per process


class Trainer(DefaultTrainer):
    """``DefaultTrainer`` for LVIS-format data with the De-confound-TDE heads (see module docstring)."""

    def __init__(self, cfg):
        check_config(cfg)
        with _ddp_without_device_ids_for_cpu_models():
            super().__init__(cfg)
        make_atomic(self.checkpointer)

    def state_dict(self):
        """Detectron2's, with the optimizer state (``_trainer``) under detectron2 v0.6 too."""
        ret = super().state_dict()
        if "_trainer" not in ret:  # v0.6's DefaultTrainer saves the iteration and hook states only
            ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        """Detectron2's; a checkpoint without the ``_trainer`` entry (written by detectron2 v0.6's own
        trainer, which saves iteration and hook states but not the optimizer's) resumes here too, with
        the iteration and LR schedule from the checkpoint and a fresh optimizer state -- as v0.6 itself
        resumes."""
        if "_trainer" in state_dict:
            if DefaultTrainer.load_state_dict is not TrainerBase.load_state_dict:
                return super().load_state_dict(state_dict)
            TrainerBase.load_state_dict(self, state_dict)  # detectron2 v0.6: the optimizer is ours to load
            return self._trainer.load_state_dict(state_dict["_trainer"])
        logger.warning(
            "The checkpoint has no optimizer state (no '_trainer' entry: written by detectron2 v0.6's trainer, which "
            "does not save it). Resuming from its iteration, LR schedule and weights with a fresh optimizer state "
            "(e.g. SGD momentum), as detectron2 v0.6 itself would."
        )
        TrainerBase.load_state_dict(self, state_dict)

    @classmethod
    def build_model(cls, cfg):
        """Detectron2's model, with NorCal on its box predictor(s) when ``MODEL.NORCAL.GAMMA`` > 0
        (class counts: :func:`tde_det.data.class_counts.norcal_class_counts`)."""
        model = super().build_model(cfg)
        if cfg.MODEL.NORCAL.GAMMA > 0:
            apply_norcal(model, norcal_class_counts(cfg), cfg.MODEL.NORCAL.GAMMA)
        return model

    def build_hooks(self):
        """Detectron2's hooks; with several processes :class:`~tde_det.engine.buffers.SyncBuffers`
        runs before the checkpointer and the evaluation."""
        ret = super().build_hooks()
        ret.insert(0, SkippedImagesReport())  # the count of unreadable training images, at the end
        if comm.get_world_size() > 1:
            at = next((i for i, h in enumerate(ret) if isinstance(h, (hooks.PeriodicCheckpointer, hooks.EvalHook))), len(ret))
            ret.insert(at, SyncBuffers(self.model, self.cfg.SOLVER.CHECKPOINT_PERIOD, self.cfg.TEST.EVAL_PERIOD))
        return preemption.build_hooks(self, ret)  # ResumeState before the checkpointer, StopOnSignal last

    def resume_or_load(self, resume=True):
        """Detectron2's; with `resume`, partial files of an interrupted save are removed first, and each
        process gets back its own buffers where the checkpoint holds them (a stop between periodic
        checkpoints: :class:`~tde_det.engine.preemption.ResumeState`)."""
        if resume and comm.is_main_process():
            remove_partial_files(self.cfg.OUTPUT_DIR)
        super().resume_or_load(resume=resume)
        for h in self._hooks:
            if isinstance(h, preemption.ResumeState):
                h.restore_rank_buffers(resumed=resume and self.checkpointer.has_checkpoint())

    @classmethod
    def build_train_loader(cls, cfg):
        """Detectron2's data, mapper, sampler and grouping as a resumable loader
        (:func:`~tde_det.data.resumable_loader.build_resumable_train_loader`), with a mapper that skips
        an image that cannot be read (one warning naming it; :class:`~tde_det.data.images.SkipUnreadableImages`)."""
        for name in cfg.DATASETS.TRAIN:
            prepare_dataset(name)
        mapper = SkipUnreadableImages(DatasetMapper(cfg, True), is_train=True)
        return build_resumable_train_loader(cap_num_workers(cfg), mapper=mapper,
                                            worker_init_fn=preemption.ignore_stop_signals)

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        """Detectron2's, with a mapper whose error for an image that cannot be read names the file."""
        prepare_dataset(dataset_name)
        mapper = SkipUnreadableImages(DatasetMapper(cfg, False), is_train=False)
        return build_detection_test_loader(cap_num_workers(cfg), dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        """LVIS evaluator for ``evaluator_type == "lvis"`` datasets, COCO's for "coco" ones.

        Predictions go to ``OUTPUT_DIR/inference/<variant>/`` so that the variants do not
        overwrite each other's files.
        """
        prepare_dataset(dataset_name)
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", inference_variants(cfg)[-1][0])
        evaluator_type = MetadataCatalog.get(dataset_name).get("evaluator_type")
        if evaluator_type == "lvis":
            return build_lvis_evaluator(cfg, dataset_name, output_folder)
        if evaluator_type == "coco":
            return COCOEvaluator(dataset_name, output_dir=output_folder)
        raise NotImplementedError(
            f"No evaluator for dataset {dataset_name!r} (evaluator_type={evaluator_type!r}); tde_det evaluates "
            "LVIS-format ('lvis') and COCO-format ('coco') datasets."
        )

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        """Evaluate every variant of :func:`inference_variants` on ``DATASETS.TEST``.

        Each variant other than `cfg`'s own gets a fresh model built from its config, holding
        `model`'s weights and buffers (incl. the TDE mean feature). Returns Detectron2's usual
        results dict for one variant, ``{variant key: results}`` for several.
        """
        variants = inference_variants(cfg)
        source = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
        all_results = OrderedDict()
        for key, label, cfg_v in variants:
            if cfg_v is cfg:
                model_v = model
            else:
                model_v = cls.build_model(cfg_v)
                model_v.load_state_dict(source.state_dict())
            logger.info("Evaluating %s ...", label)
            results = super().test(cfg_v, model_v, evaluators)
            if len(cfg.DATASETS.TEST) == 1:
                results = OrderedDict([(cfg.DATASETS.TEST[0], results)])
            all_results[key] = results
        if comm.is_main_process():
            cls._report(cfg, variants, all_results)
        if len(variants) == 1:
            results = all_results[variants[0][0]]
            return results if len(results) != 1 else next(iter(results.values()))
        return all_results

    @staticmethod
    def _report(cfg, variants, all_results):
        try:
            iteration = get_event_storage().iter
        except AssertionError:  # not inside training (--eval-only)
            iteration = None
        for dataset_name in cfg.DATASETS.TEST:
            rows = [(label, all_results[key].get(dataset_name) or {}) for key, label, _ in variants]
            logger.info("\n" + format_table(dataset_name, rows))
            for key, label, cfg_v in variants:
                record = {
                    "label": label,
                    "results": all_results[key].get(dataset_name) or {},
                    "weights": cfg.MODEL.WEIGHTS if iteration is None else None,
                    "iteration": iteration,
                }
                if is_tde_model(cfg_v):
                    record["tde"] = {k: cfg_v.MODEL.TDE[k] for k in ("INFERENCE", "ALPHA", "BACKGROUND_EXEMPT")}
                path = update_results_json(cfg.OUTPUT_DIR, dataset_name, key, record)
            logger.info("Results written to %s", path)
