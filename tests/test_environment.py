"""The installed environment: detectron2 imports, builds its LVIS Mask R-CNN, and names missing ops clearly."""

import importlib
import importlib.metadata
import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import load_script


@pytest.mark.parametrize("module", ["detectron2.layers", "detectron2.modeling", "detectron2.evaluation"])
def test_detectron2_modules_import(module):
    importlib.import_module(module)


def test_detectron2_is_known_to_pip():
    out = subprocess.run([sys.executable, "-m", "pip", "show", "detectron2"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "Name: detectron2" in out.stdout and "Version: 0.6" in out.stdout


def _stub_or_skip():
    from detectron2 import _C

    if not getattr(_C, "TDE_DET_STUB", False):
        pytest.skip("a compiled detectron2 is installed; its ops exist")
    return _C


@pytest.mark.parametrize(
    "call, op_name",
    [
        (lambda: __import__("detectron2.layers", fromlist=["x"]).nms_rotated(
            torch.zeros(2, 5), torch.zeros(2), 0.5), "nms_rotated"),
        (lambda: __import__("detectron2.layers.rotated_boxes", fromlist=["x"]).pairwise_iou_rotated(
            torch.zeros(2, 5), torch.zeros(3, 5)), "box_iou_rotated"),
        (lambda: __import__("detectron2.layers", fromlist=["x"]).ROIAlignRotated((7, 7), 1.0, 0)(
            torch.zeros(1, 1, 8, 8), torch.zeros(1, 6)), "roi_align_rotated_forward"),
        # DeformConv itself falls back to torchvision on CPU; its CUDA path calls this op
        (lambda: __import__("detectron2", fromlist=["_C"])._C.deform_conv_forward(), "deform_conv_forward"),
        (lambda: __import__("detectron2", fromlist=["_C"])._C.COCOevalEvaluateImages(), "COCOevalEvaluateImages"),
    ],
)
def test_missing_compiled_op_raises_clear_error(call, op_name):
    _C = _stub_or_skip()
    with pytest.raises(_C.MissingCompiledOp) as err:
        call()
    msg = str(err.value)
    assert f"detectron2._C.{op_name}" in msg
    assert "build detectron2 from source" in msg and "TDE_DET_DETECTRON2_SRC" in msg


def _setup_py_requirements():
    """setup.py's install_requires, read from the checkout's setup.py (the code that runs, installed or not:
    the GPU check puts the working tree on PYTHONPATH without installing it)."""
    import ast

    tree = ast.parse((Path(__file__).resolve().parents[1] / "setup.py").read_text(encoding="utf-8"))
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and getattr(n.func, "id", None) == "setup"]
    assert len(calls) == 1, "setup.py must call setup() once"
    (requires,) = [k.value for k in calls[0].keywords if k.arg == "install_requires"]
    return ast.literal_eval(requires)


def test_installed_versions_meet_setup_py():
    """What setup.py asks for is installed here (make env installs tde_det with --no-deps; the GPU check
    runs the working tree without installing it)."""
    from packaging.requirements import Requirement

    core = [Requirement(r) for r in _setup_py_requirements()]
    assert {r.name.lower() for r in core} >= {"torch", "numpy", "lvis", "pycocotools"}
    for r in core:
        version = importlib.metadata.version(r.name)
        assert r.specifier.contains(version, prereleases=True), f"{r.name} {version} does not meet setup.py's '{r}'"
    try:  # where tde_det is installed, its metadata says the same (no stale egg-info)
        installed = importlib.metadata.requires("tde_det") or []
    except importlib.metadata.PackageNotFoundError:
        return
    assert sorted(str(r) for r in core) == sorted(str(Requirement(r)) for r in installed if "extra ==" not in r)


def test_collect_env_reports_versions_and_build():
    out = subprocess.run([sys.executable, "-m", "tde_det.collect_env"], capture_output=True, text=True, check=True)
    for name in ["torch", "torchvision", "detectron2 build", "CUDA available", "lvis", "numpy"]:
        assert name in out.stdout
    assert ("PyPI source release" in out.stdout) or ("compiled build" in out.stdout)


def test_detectron2_lvis_mask_rcnn_trains_and_infers_on_cpu():
    """Detectron2's own LVIS v1 Mask R-CNN config, random weights, one step and one inference."""
    from detectron2 import model_zoo
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    cfg = get_cfg()
    cfg.merge_from_file(model_zoo.get_config_file("LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    cfg.merge_from_list([
        "MODEL.DEVICE", "cpu", "MODEL.WEIGHTS", "",
        "MODEL.RESNETS.NORM", "BN", "MODEL.PIXEL_STD", [57.4, 57.1, 58.4],
        "MODEL.RPN.POST_NMS_TOPK_TRAIN", 200, "MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE", 64,
    ])
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 1203
    torch.manual_seed(0)
    model = build_model(cfg)
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, 160, 192), generator=g, dtype=torch.uint8).float()
    from detectron2.structures import BitMasks, Boxes, Instances
    from detectron2.utils.events import EventStorage

    inst = Instances((160, 192))
    inst.gt_boxes = Boxes(torch.tensor([[20.0, 30.0, 90.0, 120.0], [100.0, 10.0, 180.0, 70.0]]))
    inst.gt_classes = torch.tensor([5, 1000])
    masks = torch.zeros(2, 160, 192, dtype=torch.bool)
    masks[0, 30:120, 20:90] = True
    masks[1, 10:70, 100:180] = True
    inst.gt_masks = BitMasks(masks)

    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    with EventStorage():
        losses = model([{"image": image, "instances": inst}])
    assert {"loss_cls", "loss_box_reg", "loss_mask", "loss_rpn_cls", "loss_rpn_loc"} <= set(losses)
    total = sum(losses.values())
    assert torch.isfinite(total)
    optimizer.zero_grad()
    total.backward()
    optimizer.step()

    model.eval()
    with torch.no_grad():
        (out,) = model([{"image": image, "height": 160, "width": 192}])
    det = out["instances"]
    assert det.image_size == (160, 192)
    assert det.has("pred_masks") and len(det) <= cfg.TEST.DETECTIONS_PER_IMAGE
    assert torch.isfinite(det.scores).all()


# ------------------------------------------------------- numpy 2 / Pillow >= 10 / setuptools >= 81
# make env's venv (its stamp .tde_det_env in sys.prefix) pins numpy 2, Pillow 13 and setuptools 84 and
# installs detectron2 sources patched by scripts/patch_third_party.py. In a user's own environment
# (scripts/user_env_check.sh: numpy 1.26, setuptools 80, detectron2 built by pip) the installed
# packages are the user's, so those checks do not apply there.
MAKE_ENV = Path(sys.prefix, ".tde_det_env").is_file()
make_env_only = pytest.mark.skipif(not MAKE_ENV, reason="checks make env's pinned, patched venv; this is another environment")


def _patch_script():
    return load_script("scripts/patch_third_party.py")


def _version(name):
    return tuple(int(x) for x in importlib.metadata.version(name).split(".")[:2])


@make_env_only
def test_environment_has_numpy2_current_pillow_and_setuptools_without_pkg_resources():
    import numpy as np

    assert _version("numpy") >= (2, 0) and np.__version__ == importlib.metadata.version("numpy")
    assert _version("Pillow") >= (10, 0)
    assert _version("setuptools") >= (81, 0)
    assert sys.version_info[:2] in {(3, 11), (3, 12), (3, 13)}
    with warnings.catch_warnings():  # numpy 2 announces np.object / np.str as future scalar types
        warnings.simplefilter("ignore", FutureWarning)
        for alias in ["float", "int", "object", "str"]:  # what detectron2 v0.6 / lvis 0.5.3 used
            assert not hasattr(np, alias)


@make_env_only
def test_installed_detectron2_uses_no_removed_name():
    """The scan of scripts/patch_third_party.py over the installed detectron2: nothing left to patch."""
    root = Path(importlib.import_module("detectron2").__file__).parent
    assert _patch_script().scan(root) == []


def test_detectron2_export_imports_and_traces_without_caffe2():
    """v0.6's export package imported caffe2 (not in torch 2.x) at module level."""
    import detectron2.export as export
    from detectron2.structures import Boxes, Instances

    if importlib.util.find_spec("caffe2") is None:
        assert not hasattr(export, "Caffe2Tracer")  # the caffe2 exporters are the only thing missing

    class Detector(torch.nn.Module):
        def forward(self, image):
            inst = Instances(image.shape[-2:])
            inst.pred_boxes = Boxes(image.mean(0)[:4, :4] * 2)
            inst.scores = image.amax(dim=(0, 2))[:4]
            return [inst]

    image = torch.rand(3, 8, 6)
    adapter = export.TracingAdapter(Detector(), image)
    traced = torch.jit.trace(adapter, adapter.flattened_inputs)
    (out,) = adapter.outputs_schema(traced(image + 1))
    (ref,) = Detector()(image + 1)
    assert torch.equal(out.pred_boxes.tensor, ref.pred_boxes.tensor) and torch.equal(out.scores, ref.scores)


def test_model_zoo_finds_configs():
    from detectron2 import model_zoo
    from detectron2.model_zoo import model_zoo as zoo_module

    if MAKE_ENV:  # setuptools >= 81 there: patched to importlib.resources
        assert "pkg_resources" not in vars(zoo_module)
    path = Path(model_zoo.get_config_file("LVISv1-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"))
    assert path.is_file() and path.parts[-3:] == ("configs", "LVISv1-InstanceSegmentation", path.name)
    assert path.is_relative_to(Path(zoo_module.__file__).parent)
    with pytest.raises(RuntimeError, match="not available in Model Zoo"):
        model_zoo.get_config_file("LVISv1-InstanceSegmentation/no_such_config.yaml")


def test_lvis_api_evaluates_on_this_numpy_with_its_files_as_released(tmp_path):
    """lvis-api's own LVISEval end to end inside lvis_numpy_aliases() (its accumulate() uses np.float,
    gone since numpy 1.24); the installed lvis is not patched, so without the block it still fails."""
    from lvis import LVIS, LVISEval

    from tde_det.evaluation import lvis_numpy_aliases
    from tde_det.evaluation.synthetic import make_synthetic_lvis

    gt, _ = make_synthetic_lvis(num_images=4, num_cats=5, dets_per_image=(1, 3), seed=0)
    perfect = [{"image_id": a["image_id"], "category_id": a["category_id"], "bbox": a["bbox"], "score": 0.9}
               for a in gt["annotations"]]
    shifted = [dict(r, bbox=[r["bbox"][0] + r["bbox"][2], r["bbox"][1], r["bbox"][2], r["bbox"][3]])
               for r in perfect]  # moved by its own width: IoU 0
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    lvis_gt = LVIS(str(tmp_path / "gt.json"))
    aps = []
    for results in (perfect, shifted):
        ev = LVISEval(lvis_gt, results, iou_type="bbox")
        with lvis_numpy_aliases():
            ev.run()
        aps.append(ev.get_results()["AP"])
    assert aps[0] == pytest.approx(1.0, abs=1e-6) and aps[1] == 0.0
    if "float" not in dir(np):
        with pytest.raises(AttributeError, match="float"):
            LVISEval(lvis_gt, perfect, iou_type="bbox").run()


def test_lvis_numpy_aliases_is_scoped_to_lvis_eval():
    import lvis.eval

    from tde_det.evaluation import lvis_numpy_aliases

    with lvis_numpy_aliases():
        view = lvis.eval.np
        with lvis_numpy_aliases():  # nested (e.g. an evaluator inside a wrapped inference_on_dataset)
            assert lvis.eval.np is view
        assert lvis.eval.np is view  # still open
        assert view.float is float and view.cumsum is np.cumsum and view.ndarray is np.ndarray
        assert not hasattr(np, "float")  # numpy itself unchanged
    assert lvis.eval.np is np
    with pytest.raises(ZeroDivisionError):
        with lvis_numpy_aliases():
            1 / 0
    assert lvis.eval.np is np


def test_installed_lvis_files_are_as_released():
    """tde_det edits no file of lvis (its RECORD's sha256 of every file still holds)."""
    import base64
    import hashlib

    checked = 0
    for f in importlib.metadata.files("lvis"):
        if f.hash is None or f.hash.mode != "sha256":
            continue
        digest = base64.urlsafe_b64encode(hashlib.sha256(f.read_binary()).digest()).rstrip(b"=").decode()
        assert digest == f.hash.value, f"{f.locate()} differs from the lvis release (pip install --force-reinstall lvis)"
        checked += 1
    assert checked >= 5  # lvis/__init__, eval, lvis, results, vis


def test_patch_is_idempotent_and_fails_loudly_on_unknown_sources(tmp_path, capsys):
    patcher = _patch_script()  # a fresh module: the toy target below lives only in it
    patcher.TARGETS["toy"] = ("pkg", {"pkg/eval.py": [patcher.np_aliases(2)]}, False)
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    src = "import numpy as np\na = x.astype(dtype=np.float)\nb = y.astype(dtype=np.float)  # np.float32 stays\n"
    (pkg / "eval.py").write_text(src)
    assert patcher.main(["toy", str(tmp_path)]) == 0
    patched = (pkg / "eval.py").read_text()
    assert patched.startswith(patcher.MARKER)
    assert "astype(dtype=float)\n" in patched and "astype(dtype=float)  # np.float32 stays" in patched
    assert patcher.main(["toy", str(tmp_path)]) == 0 and (pkg / "eval.py").read_text() == patched
    assert "already patched" in capsys.readouterr().out

    (pkg / "eval.py").write_text("import numpy as np\na = x.astype(dtype=np.float)\n")  # one of the two
    assert patcher.main(["toy", str(tmp_path)]) == 1
    err = capsys.readouterr().err
    assert "error:" in err and "expected 2 occurrence(s)" in err and "eval.py" in err
    assert patcher.main(["toy", str(tmp_path / "nowhere")]) == 1
    assert "has no pkg/__init__.py" in capsys.readouterr().err


def test_mask_areas_of_more_than_255_rles_on_numpy2():
    """pycocotools' area() of > 255 RLEs overflows a uint8 on numpy 2; fast_lvis calls it in chunks."""
    import pycocotools.mask as mask_utils

    from tde_det.evaluation.fast_lvis import _rle_area

    masks = np.zeros((20, 30, 600), dtype=np.uint8, order="F")
    for i in range(600):
        masks[: 1 + i % 20, : 1 + i % 30, i] = 1
    rles = mask_utils.encode(masks)
    expected = [float(mask_utils.area(r)) for r in rles]
    assert _rle_area(rles).tolist() == expected == [(1 + i % 20) * (1 + i % 30) for i in range(600)]
    assert _rle_area([]).shape == (0,)


def test_patch_writes_nothing_when_one_file_does_not_match(tmp_path):
    patcher = _patch_script()
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("x = np.int(3)\n")
    (pkg / "b.py").write_text("y = 2\n")  # the text to replace is not there
    patcher.TARGETS["toy"] = ("pkg", {"pkg/a.py": [patcher.np_aliases(1)], "pkg/b.py": [patcher.np_aliases(1)]}, False)
    try:
        with pytest.raises(patcher.PatchError, match="b.py: expected 1"):
            patcher.patch("toy", tmp_path)
    finally:
        del patcher.TARGETS["toy"]
    assert (pkg / "a.py").read_text() == "x = np.int(3)\n"
