"""tde_det: De-confound-TDE for long-tailed detection and segmentation in Detectron2."""

from setuptools import find_packages, setup

setup(
    name="tde_det",
    version="0.1.0",
    description="De-confound-TDE (Tang et al., NeurIPS 2020) heads for Detectron2 on LVIS",
    packages=find_packages(include=["tde_det", "tde_det.*"]),
    python_requires=">=3.11,<3.14",  # what CI and the pins cover (3.11-3.13)
    # Exact pins live in requirements.txt (installed by scripts/setup_env.sh); detectron2 is
    # installed by that script from its source release, so it is not listed here.
    install_requires=[
        "torch>=2.1",
        "Pillow>=10",
        "torchvision",
        "numpy>=2",  # detectron2 v0.6 and lvis 0.5.3 are patched for numpy 2 at install
        "lvis==0.5.3",
        "pycocotools",
        "matplotlib",
        "opencv-python",
        "fvcore>=0.1.5,<0.1.6",
        "iopath>=0.1.7,<0.1.10",
    ],
)
