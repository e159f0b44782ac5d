"""Print the versions a bug report needs: ``python -m tde_det.collect_env``."""

import importlib
import importlib.metadata
import os
import platform
import sys

from tabulate import tabulate


def _version(dist):
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def detectron2_build():
    """Which detectron2 is installed: the PyPI source release with the stand-in ``_C``, or a compiled build."""
    try:
        import detectron2
        from detectron2 import _C
    except ImportError as e:
        return f"failed to import ({e})"
    where = os.path.dirname(detectron2.__file__)
    if getattr(_C, "TDE_DET_STUB", False):
        return f"PyPI source release (pb1-detectron2 0.6), no compiled ops @ {where}"
    return f"compiled build (upstream source), _C at {_C.__file__} @ {where}"


def collect_env_info():
    """Return a list of (name, value) rows describing this environment."""
    import numpy
    import torch
    import torchvision

    rows = [
        ("sys.platform", sys.platform),
        ("Python", sys.version.split()[0]),
        ("machine", platform.machine()),
        ("tde_det", f"{_version('tde_det')} @ {os.path.dirname(os.path.abspath(__file__))}"),
        ("torch", torch.__version__),
        ("torchvision", torchvision.__version__),
        ("detectron2", _version("detectron2")),
        ("detectron2 build", detectron2_build()),
        ("CUDA available", torch.cuda.is_available()),
        ("torch CUDA version", torch.version.cuda),
    ]
    if torch.cuda.is_available():
        rows.append(("GPU", ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))))
    rows += [
        ("lvis", _version("lvis")),
        ("pycocotools", _version("pycocotools")),
        ("numpy", numpy.__version__),
        ("Pillow", _version("Pillow")),
        ("opencv-python", _version("opencv-python")),
        ("fvcore", _version("fvcore")),
        ("iopath", _version("iopath")),
        ("DETECTRON2_DATASETS", os.environ.get("DETECTRON2_DATASETS", "(unset: datasets/)")),
    ]
    return rows


def main():
    print(tabulate(collect_env_info(), tablefmt="simple"))


if __name__ == "__main__":
    main()
