"""De-confound-TDE for Detectron2. ``add_tde_config(cfg)`` adds the config keys;
importing this package registers the TDE ROI heads, the demo backbone and the demo datasets."""

import warnings

with warnings.catch_warnings():  # only while importing: the process's warning filters are kept
    # fvcore's @torch.jit.script at import (torch >= 2.10) warns that TorchScript is deprecated:
    # nothing a user of this package can act on (e.g. `python -m tde_det.data.coco_example`)
    warnings.filterwarnings("ignore", "`torch.jit.script` is deprecated", FutureWarning)
    from . import data, modeling  # noqa: F401  (imported for registration)
    from .config import add_tde_config, get_tde_cfg

__all__ = ["add_tde_config", "get_tde_cfg"]
