"""Pre-flight check of ``MODEL.WEIGHTS``: the file exists, is a checkpoint, fits the model, and (to
evaluate TDE) holds a trained x̄.

The model of the config is built on the CPU and the checkpoint loaded into it the way Detectron2's
``DetectionCheckpointer`` loads it (the same renaming of Caffe2/model-zoo ``.pkl`` files), with the
log quiet, so that a mismatch is one error line instead of Detectron2's line per skipped tensor.

- To evaluate (``--eval-only``, the sweep, visualize, export): every tensor of the model must be in
  the checkpoint with its shape, and a TDE model scored with α > 0 needs a non-zero x̄ (weights
  never trained with TDE heads would give the plain scores).
- To train (weights as the initialisation): a partial checkpoint is fine (an ImageNet backbone, a
  model with another class count: Detectron2 skips the class-specific layers), but not one of which
  nothing loads, nor one whose shapes differ outside the class-specific output layers (another
  backbone or head: another architecture).
"""

import contextlib
import logging
import os

import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.modeling import build_model

from ..errors import ConfigError, FilesMissing

__all__ = ["check_weights", "needs_trained_mean"]

# Keys of the layers whose shape depends on the class count (Detectron2 skips them when it differs).
CLASS_SPECIFIC = ("box_predictor.", "mask_head.predictor.")
EXAMPLES = 2


def needs_trained_mean(cfg, alphas=None):
    """Whether evaluating `cfg` (or sweeping `alphas`) scores TDE with α > 0: then x̄ must be trained."""
    from .trainer import is_tde_model

    if not is_tde_model(cfg):
        return False
    if alphas is not None:
        return any(a > 0 for a in alphas)
    return cfg.MODEL.TDE.INFERENCE == "tde" and cfg.MODEL.TDE.ALPHA > 0


@contextlib.contextmanager
def _quiet():
    """Detectron2's and tde_det's loading messages off (the check reports the result itself)."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def _cpu_model(cfg):
    cfg = cfg.clone()
    cfg.defrost()
    cfg.MODEL.DEVICE = "cpu"
    if "NORCAL" in cfg.MODEL:
        cfg.MODEL.NORCAL.GAMMA = 0.0  # NorCal adds no tensors; its class counts need not be read here
    with torch.device("cpu"):
        return build_model(cfg)


def _shapes(items):
    key, in_file, in_model = items[0]
    return f"{key!r}: {tuple(in_file)} in the file, {tuple(in_model)} in the model"


def check_weights(cfg, evaluate, need_mean=None):
    """Raise a UserError if ``cfg.MODEL.WEIGHTS`` cannot serve: to `evaluate` (True) a trained model,
    or as the initialisation of training (False); see the module docstring. `need_mean`: whether the
    TDE x̄ must be non-zero (default :func:`needs_trained_mean`). URLs are not checked (Detectron2
    fetches them)."""
    weights = cfg.MODEL.WEIGHTS
    if not weights:
        if evaluate:
            raise ConfigError("MODEL.WEIGHTS is empty: evaluating needs trained weights. Add the override "
                              "MODEL.WEIGHTS path/to/model_final.pth (e.g. OUTPUT_DIR/model_final.pth of a "
                              "training run).")
        return
    if "://" in weights:
        return
    if not os.path.exists(weights):
        raise FilesMissing(f"MODEL.WEIGHTS {weights!r} does not exist. Give the path of a checkpoint, "
                           "e.g. MODEL.WEIGHTS OUTPUT_DIR/model_final.pth.")
    if os.path.isdir(weights):
        raise FilesMissing(f"MODEL.WEIGHTS {weights!r} is a folder: give the checkpoint file in it, "
                           "e.g. MODEL.WEIGHTS OUTPUT_DIR/model_final.pth.")
    model = _cpu_model(cfg)
    checkpointer = DetectionCheckpointer(model)
    found = []
    checkpointer._log_incompatible_keys = found.append  # fvcore's load() reports what did not fit through it
    with _quiet():
        try:
            checkpointer.load(weights, checkpointables=[])
        except Exception as e:  # whatever torch.load / pickle raise on a file that is not a checkpoint
            text = (str(e).splitlines() or [""])[0]
            text = text if len(text) <= 100 else text[:100] + "..."
            raise ConfigError(f"MODEL.WEIGHTS {weights!r} cannot be read as a checkpoint ({type(e).__name__}: "
                              f"{text}). Give a .pth written by tools/train_net.py or a Detectron2 model-zoo "
                              ".pkl.") from None
    if not found:
        raise ConfigError(f"MODEL.WEIGHTS {weights!r} holds no model state dict.")
    incompatible = found[0]
    expected = list(model.state_dict())
    wrong = list(incompatible.incorrect_shapes)
    wrong_keys = {k for k, _, _ in wrong}
    missing = [k for k in incompatible.missing_keys if k not in wrong_keys]
    loaded = len(expected) - len(missing) - len(wrong)
    where = f"MODEL.WEIGHTS {weights!r}"
    if loaded <= 0:
        raise ConfigError(f"{where} does not fit this model: none of its {len(expected)} tensors is in the file "
                          "under its name and shape. The weights belong to another architecture: give the config "
                          "they were trained with (their run's OUTPUT_DIR/config.yaml) or other weights.")
    architecture = [w for w in wrong if not any(c in w[0] for c in CLASS_SPECIFIC)]
    if evaluate and (wrong or missing) or architecture:
        parts = []
        if wrong:
            parts.append(f"{len(wrong)} have another shape (e.g. {_shapes(architecture or wrong)})")
        if evaluate and missing:
            parts.append(f"{len(missing)} are not in the file (e.g. {missing[0]!r})")
        raise ConfigError(f"{where} does not fit this model: of its {len(expected)} tensors, {' and '.join(parts)}. "
                          "The weights were trained with another config (backbone, heads or class count): give that "
                          "config (their run's OUTPUT_DIR/config.yaml) or weights trained with this one.")
    if evaluate and (needs_trained_mean(cfg) if need_mean is None else need_mean):
        zero = [k for k, v in model.state_dict().items() if k.endswith("mean_feature") and not bool(torch.any(v != 0))]
        if zero:
            raise ConfigError(f"{where} holds no trained TDE mean feature ({zero[0]} is all zero): these weights "
                              "were never trained with TDE heads (a softmax model, or one saved before its first "
                              "iteration), so TDE would give the plain scores. Give weights trained with this config, "
                              "or evaluate De-confound only: MODEL.TDE.INFERENCE plain.")
