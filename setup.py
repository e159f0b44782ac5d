"""tde_det: De-confound-TDE for long-tailed detection and segmentation in Detectron2.

Installs into an existing Detectron2 environment (``pip install -e .``) without replacing what is
there: the ranges below are what tde_det's code needs, and what Detectron2 already requires
satisfies them. The exact pins of ``make env`` live in requirements.txt.
"""

from setuptools import find_packages, setup

setup(
    name="tde_det",
    version="0.1.0",
    description="De-confound-TDE (Tang et al., NeurIPS 2020) heads for Detectron2 on LVIS",
    packages=find_packages(include=["tde_det", "tde_det.*"]),
    python_requires=">=3.11,<3.14",  # what CI covers (3.11-3.13)
    # detectron2 (v0.6 or upstream main) is not on PyPI: install it first, as its own docs say.
    # Like detectron2, no OpenCV distribution is required (the user picks opencv-python,
    # -headless or a system package); only generating the demo data set needs cv2.
    install_requires=[
        "torch>=2.1",  # tested: 2.11 (user environment in CI), 2.14.1 (make env)
        "torchvision",
        "numpy",  # tested: 1.26.4, 2.4.6, 2.5.5; lvis-api's np.float is handled at run time
        "lvis>=0.5.3",  # lvis-api: the reference evaluator (TEST.LVIS_EVAL.BACKEND lvis-api)
        "pycocotools>=2.0.2",  # as detectron2
        "matplotlib",  # alpha-sweep figures, tools/visualize.py
        "Pillow>=7.1",  # as detectron2
        "PyYAML",
        "tabulate",
    ],
    extras_require={
        "demo": ["opencv-python"],  # the demo data set's images (any cv2 distribution will do)
        "export": ["onnx", "onnxruntime"],  # tools/export_model.py --format onnx
        "test": ["pytest"],
    },
)
