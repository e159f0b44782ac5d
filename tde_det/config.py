"""Config keys added by tde_det. Every key has a default and a one-line comment."""

import contextlib
import os
import re

import yaml
from detectron2.config import CfgNode as CN

from .errors import ConfigError, FilesMissing


def add_tde_config(cfg):
    """Add the ``MODEL.TDE`` and tde_det evaluation keys to a Detectron2 config in place."""
    cfg.MODEL.TDE = CN()
    # K: number of heads the feature and each class weight are split into (D % K == 0).
    cfg.MODEL.TDE.NUM_HEADS = 2
    # tau: scale of the cosine logits.
    cfg.MODEL.TDE.SCALE = 16.0
    # gamma: added to each class-weight norm, ||w|| + gamma.
    cfg.MODEL.TDE.GAMMA = 1.0 / 32.0
    # mu: momentum of the moving-average feature x̄ over foreground regions (0.9: the paper's
    # classification code and official LVIS v0.5 code; the official LVIS v1.0 code uses 0.9998).
    cfg.MODEL.TDE.MOMENTUM = 0.9
    # alpha: strength of the counterfactual subtraction; used only at test time.
    cfg.MODEL.TDE.ALPHA = 1.5
    # Test-time logits: "tde" (De-confound-TDE) or "plain" (cosine logits, De-confound only).
    cfg.MODEL.TDE.INFERENCE = "tde"
    # Background exemption: bg score from the plain softmax, fg rescaled to sum to 1 - p_bg.
    cfg.MODEL.TDE.BACKGROUND_EXEMPT = True
    # All-reduce the foreground batch mean across processes before the moving-average update.
    cfg.MODEL.TDE.SYNC_MEAN = True

    cfg.MODEL.NORCAL = CN()
    # NorCal post-hoc calibration at test time (tde_det.modeling.calibration): gamma >= 0 in
    # softmax([z_fg - gamma * log N_c, z_bg]); 0 = off. Softmax heads, or TDE heads with INFERENCE plain.
    cfg.MODEL.NORCAL.GAMMA = 0.0
    # N_c: json with a list of per-class counts or an LVIS/COCO-format json; "" = image counts of DATASETS.TRAIN.
    cfg.MODEL.NORCAL.CLASS_COUNTS = ""

    # With TDE heads and INFERENCE "tde": also evaluate the same weights with "plain" (one table).
    cfg.TEST.TDE_EVAL_PLAIN = False

    # Your own LVIS-format json files (e.g. from tools/coco_to_lvis.py) registered as datasets with their
    # own vocabulary by get_tde_cfg, so that DATASETS.TRAIN / TEST can name them (docs/OWN_DATA.md).
    cfg.DATASETS.LVIS_JSON = CN()
    # Names to register, e.g. ("shapes_train", "shapes_val").
    cfg.DATASETS.LVIS_JSON.NAMES = ()
    # The LVIS-format json file of each name (same order).
    cfg.DATASETS.LVIS_JSON.FILES = ()
    # The image folder of each name: its json's file_names (coco_url) are relative to it.
    cfg.DATASETS.LVIS_JSON.IMAGE_ROOTS = ()

    cfg.TEST.LVIS_EVAL = CN()
    # LVIS evaluation backend: "fast" (tde_det's vectorised evaluator) or "lvis-api" (LVISEval).
    cfg.TEST.LVIS_EVAL.BACKEND = "fast"
    # Also report Fixed AP (Dave et al. 2021): no per-image cap, <= 10,000 detections per class.
    cfg.TEST.LVIS_EVAL.FIXED_AP = False


def get_tde_cfg(config_file=None, opts=()):
    """Detectron2's default config with the tde_det keys, then `config_file` and the ``KEY VALUE``
    overrides `opts` merged in; the datasets ``DATASETS.LVIS_JSON`` names are registered. Not frozen.
    A missing file, YAML error, unknown key, odd override list or wrong value type is a ConfigError
    with Detectron2's (yacs') message."""
    from detectron2.config import get_cfg

    from .data.json_datasets import register_json_datasets

    cfg = get_cfg()
    add_tde_config(cfg)
    if config_file:
        if "://" not in config_file and not os.path.isfile(config_file):
            raise FilesMissing(f"config file {config_file!r} does not exist (--config-file).")
        with _config_error(f"in {config_file}"):
            cfg.merge_from_file(config_file)
    with _config_error("in the trailing KEY VALUE overrides"):
        cfg.merge_from_list(list(opts))
    register_json_datasets(cfg)  # DATASETS.LVIS_JSON: before any tool looks a dataset up
    return cfg


@contextlib.contextmanager
def _config_error(where):
    """yacs' errors while merging (KeyError, AssertionError, ValueError, YAML) as a ConfigError."""
    try:
        yield
    except (KeyError, AssertionError, ValueError, yaml.YAMLError) as e:
        text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        hint = (" (the keys are Detectron2's, detectron2/config/defaults.py, plus tde_det's in tde_det/config.py)"
                if "Non-existent" in text else "")
        raise ConfigError(f"{where}: {_type_hint(text) or text}{hint}") from e


_TYPE_MISMATCH = re.compile(r"Type mismatch \(<class '(\w+)'> vs\. <class '(\w+)'>\) with values \((.*) vs\. (.*)\) "
                            r"for config key: (\S+)$", re.S)
_WRITE = {("float", "int"): "write {v}.0", ("tuple", "int"): "write ({v},)", ("tuple", "float"): "write ({v},)",
          ("tuple", "str"): "write ({v!r},)", ("list", "str"): "write [{v!r}]", ("bool", "int"): "write True or False",
          ("bool", "str"): "write True or False", ("int", "float"): "write a whole number, without a decimal point"}


def _type_hint(text):
    """yacs' "Type mismatch (<class 'float'> vs. <class 'int'>) with values (1.5 vs. -1) for config
    key: MODEL.TDE.ALPHA" as "MODEL.TDE.ALPHA takes a float, got -1 (an int): write -1.0"; None if
    `text` is not such a message."""
    m = _TYPE_MISMATCH.match(text)
    if not m:
        return None
    want, got, _, value, key = m.groups()
    fix = _WRITE.get((want, got), "write a value of that type").format(v=value)
    def a(word):
        return ("an " if word[0] in "aeiou" else "a ") + word

    return f"{key} takes {a(want)}, got {value} ({a(got)}): {fix}"
