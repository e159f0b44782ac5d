"""De-confound-TDE for Detectron2. ``add_tde_config(cfg)`` adds the config keys;
importing this package registers the TDE ROI heads, the demo backbone and the demo datasets."""

from . import data, modeling  # noqa: F401  (imported for registration)
from .config import add_tde_config, get_tde_cfg

__all__ = ["add_tde_config", "get_tde_cfg"]
