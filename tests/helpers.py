"""Helpers shared by the tests: load one of the repo's scripts as a module, register a tiny
generated demo-format dataset, run a module's tiny models on one thread, set a random x̄."""

import importlib.util
import os
import sys

import pytest
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_script(relpath, name=None):
    """The module of the repo's script `relpath` (e.g. "tools/visualize.py"), freshly executed."""
    name = name or os.path.splitext(os.path.basename(relpath))[0]
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, relpath))
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses (and pickling) look a class's module up by name
    spec.loader.exec_module(module)
    return module


def register_tiny_demo(name, root, seed, val_min, val_max):
    """Register a few-image LVIS-format set of the demo generator as `name`_{train,val} (generated
    under `root` on first use; 6 classes, 48x64 images); returns the val split's name."""
    from detectron2.data import DatasetCatalog

    from tde_det.data import DemoSpec, register_demo_lt

    if f"{name}_val" not in DatasetCatalog.list():
        spec = DemoSpec(shapes=("circle", "square"), colours=("red", "green", "blue"), max_images=14, min_images=1,
                        val_fraction=0.2, val_min=val_min, val_max=val_max, max_objects=2, image_size=(48, 64),
                        object_radius=(6.0, 12.0), seed=seed)  # fmt: skip
        register_demo_lt(name, str(root), spec)
    return f"{name}_val"


@pytest.fixture(autouse=True, scope="module")
def single_thread():
    """Imported by a test module: its tiny models run on one thread, fastest and steady on a shared,
    busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def set_means(model, seed):
    """Give every stage's moving-average feature x̄ a random, clearly non-zero value (N(0.5, 1))."""
    gen = torch.Generator().manual_seed(seed)
    for name, buf in model.named_buffers():
        if name.endswith("mean_feature"):
            buf.copy_(torch.randn(buf.shape, generator=gen) + 0.5)
