"""Every user mistake the tools catch before work, in one table (issue 27).

Each row: the tool, what the user got wrong, the error message expected (a regex searched in the
text from the single ``error:`` line on), the exit status. For every row the test also checks: no
traceback, and nothing written -- the OUTPUT_DIR holds a checkpoint and a ``last_checkpoint`` from
"an earlier run", which must be left as they were, with no new file beside them.

Most rows run the tool's ``__main__`` in this process (``runpy``, ~0.5 s a row instead of ~3 s for a
new interpreter) with ``detectron2.engine.launch`` replaced by a function that fails the test: a
training or evaluation that gets past the pre-flight is a missing check. The rows marked
``subprocess`` run the real command line (exit status and stderr as a user sees them). Data: the
generated LVIS v1-shaped set (tests/lvis_v1_like.py) copied per row, broken by the row's edit and
registered under fresh names. The last two tests run the real thing: a training over a data set
with a truncated image finishes and names the file it skipped; an evaluation stops at it.
"""

import contextlib
import importlib
import inspect
import io
import os
import re
import runpy
import shutil
import subprocess
import sys
import uuid
from dataclasses import dataclass, field
from typing import Callable, List, Optional

import detectron2.engine
import pytest
import torch
from detectron2.data.datasets import get_lvis_instances_meta, register_lvis_instances
from helpers import set_means
from lvis_v1_like import edit_json, make_lvis_v1

from tde_det import get_tde_cfg
from tde_det.engine import Trainer
from tde_det.errors import EXIT_OK, EXIT_USER_ERROR

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "demo", "tde_mask_rcnn_tiny.yaml")
FAST = ["MODEL.ROI_HEADS.NUM_CLASSES", "1203", "TEST.DETECTIONS_PER_IMAGE", "20", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"]
TOOLS = {"train_net": "tools/train_net.py", "sweep_alpha": "tools/sweep_alpha.py", "visualize": "tools/visualize.py",
         "export_model": "tools/export_model.py", "check_lvis": "datasets/check_lvis.py"}
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="the mistake is MODEL.DEVICE cuda without CUDA")
V06_LAUNCH = pytest.mark.skipif(
    torch.cuda.is_available() or "gloo" in inspect.getsource(importlib.import_module("detectron2.engine.launch")).lower(),
    reason="this detectron2's launch() starts CPU processes (gloo): several processes on a CPU are no mistake")


# ---- the data and weights the rows break ----


@pytest.fixture(scope="module")
def sound_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("lvis_sound")
    make_lvis_v1(str(root), num_train=4, num_val=4)
    return root


def _save(model, path):
    torch.save({"model": model.state_dict(), "iteration": 100}, path)
    return str(path)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Checkpoints of the tiny TDE model with 1203 classes: trained (non-zero x̄), never trained
    (x̄ all zero), of another architecture (FPN width 32 instead of 48); a text file; a folder."""
    folder = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    model = Trainer.build_model(get_tde_cfg(TINY, FAST))
    paths = {"untrained": _save(model, folder / "untrained.pth")}
    set_means(model, seed=1)
    paths["trained"] = _save(model, folder / "trained.pth")
    paths["other_arch"] = _save(Trainer.build_model(get_tde_cfg(TINY, FAST + ["MODEL.FPN.OUT_CHANNELS", "32"])),
                                folder / "other_arch.pth")
    (folder / "notes.pth").write_text("not a checkpoint\n")
    paths["text"] = str(folder / "notes.pth")
    (folder / "run").mkdir()
    paths["folder"] = str(folder / "run")
    return paths


@dataclass
class Context:
    """One row's copy of the data, its dataset names and options, the weights, the output folder."""

    root: str
    train: str
    val: str
    weights: dict
    out: str
    files: dict = field(default_factory=dict)

    @property
    def data(self):
        return ["DATASETS.TRAIN", f'("{self.train}",)', "DATASETS.TEST", f'("{self.val}",)']

    def opts(self, *more, weights="trained"):
        """Trailing KEY VALUE overrides: the row's data, fast settings, OUTPUT_DIR, the weights."""
        w = self.weights.get(weights, weights) if weights else ""
        return self.data + FAST + ["OUTPUT_DIR", self.out, "MODEL.WEIGHTS", w] + list(more)

    def json(self, split):
        return os.path.join(self.root, "lvis", f"lvis_v1_{split}.json")

    def image(self, split, k=0):
        """The path of the k-th image of `split` (the file Detectron2's loader reads)."""
        folder = "train2017" if split == "train" else "val2017"
        return os.path.join(self.root, "coco", folder, sorted(os.listdir(os.path.join(self.root, "coco", folder)))[k])


# ---- how the rows break things ----


def truncate(path, keep=600):
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(data[:keep])
    return path


def _edit(split, fn):
    return lambda ctx: edit_json(ctx.json(split), fn)


def _empty(data):
    data["images"], data["annotations"] = [], []


def _xyxy_box(data):
    a = data["annotations"][0]
    image = next(i for i in data["images"] if i["id"] == a["image_id"])
    a["bbox"] = [10.0, 10.0, float(image["width"]), float(image["height"])]  # [x0, y0, x1, y1] written as xywh


def _set(key_path, value):
    def edit(data):
        *parents, last = key_path
        target = data
        for k in parents:
            target = target[k]
        if value is KeyError:
            del target[last]
        else:
            target[last] = value(target[last]) if callable(value) else value
    return edit


def _listed_twice(data):
    data["images"].append(dict(data["images"][0], id=777777))


def _write(split, text):
    def write(ctx):
        with open(ctx.json(split), "w") as f:
            f.write(text)
    return write


def _truncate_image(split):
    return lambda ctx: truncate(ctx.image(split))


def _not_an_image(ctx):
    path = os.path.join(ctx.root, "notes.jpg")
    with open(path, "w") as f:
        f.write("not an image\n")
    ctx.files["not_an_image"] = path


def _truncated_copy(ctx):
    ctx.files["truncated"] = truncate(shutil.copy(ctx.image("val"), os.path.join(ctx.root, "cut.jpg")))


# ---- the table ----


@dataclass
class Row:
    id: str
    tool: str
    args: Callable[[Context], List[str]]
    expect: str  # regex searched in the error message (the "error:" line and the problem list under it)
    setup: Optional[Callable[[Context], None]] = None
    status: int = EXIT_USER_ERROR
    subprocess: bool = False
    marks: tuple = ()


def _train(*more, weights=""):
    return lambda c: ["--config-file", TINY] + c.opts(*more, weights=weights)


def _eval(*more, weights="trained"):
    return lambda c: ["--config-file", TINY, "--eval-only"] + c.opts(*more, weights=weights)


def _sweep(*more, weights="trained", alphas=("0", "1.5")):
    return lambda c: ["--config-file", TINY, "--alphas", *alphas] + c.opts(*more, weights=weights)


def _vis(*flags, more=(), weights="trained"):
    return lambda c: ["--config-file", TINY, *[c.files.get(f, f) for f in flags]] + c.opts(*more, weights=weights)


def _export(*flags, more=(), weights="trained"):
    return lambda c: (["--config-file", TINY, "--output", os.path.join(c.out, "export"),
                       *[c.files.get(f, f) for f in flags]] + c.opts(*more, weights=weights))


NO_IMAGES_TEST = r"lvis_v1_val\.json\): the json has no images: nothing to evaluate"
ROWS = [
    # -- the table --
    Row("empty_test_json/train", "train_net", _train(), NO_IMAGES_TEST, _edit("val", _empty)),
    Row("empty_test_json/eval_only", "train_net", _eval(), NO_IMAGES_TEST, _edit("val", _empty)),
    Row("empty_test_json/sweep", "sweep_alpha", _sweep(), NO_IMAGES_TEST, _edit("val", _empty)),
    Row("empty_test_json/export", "export_model", _export(), NO_IMAGES_TEST, _edit("val", _empty)),
    Row("empty_test_json/visualize", "visualize", _vis(), NO_IMAGES_TEST, _edit("val", _empty)),
    Row("empty_train_json", "train_net", _train(), r"lvis_v1_train\.json\): the json has no images: nothing to train on",
        _edit("train", _empty)),
    Row("lvis_eval_backend_misspelled", "train_net", _train("TEST.LVIS_EVAL.BACKEND", "lvisapi"),
        r"^error: TEST\.LVIS_EVAL\.BACKEND is 'lvisapi', but it must be 'fast' or 'lvis-api'\."),
    Row("norcal_gamma_negative", "train_net", _train("MODEL.NORCAL.GAMMA", "-1.0"),
        r"^error: MODEL\.NORCAL\.GAMMA is -1\.0, but it must be >= 0"),
    Row("norcal_gamma_negative/eval_only", "train_net", _eval("MODEL.NORCAL.GAMMA", "-0.5"),
        r"^error: MODEL\.NORCAL\.GAMMA is -0\.5, but it must be >= 0"),
    Row("cuda_without_cuda/visualize", "visualize", _vis(more=("MODEL.DEVICE", "cuda")),
        r"^error: MODEL\.DEVICE is 'cuda' but CUDA is not available", marks=(NO_CUDA,)),
    Row("cuda_without_cuda/visualize_cam", "visualize", _vis("--cam", more=("MODEL.DEVICE", "cuda")),
        r"^error: MODEL\.DEVICE is 'cuda' but CUDA is not available", marks=(NO_CUDA,)),
    Row("cuda_without_cuda/export", "export_model", _export(more=("MODEL.DEVICE", "cuda")),
        r"^error: MODEL\.DEVICE is 'cuda' but CUDA is not available", marks=(NO_CUDA,)),
    Row("cuda_without_cuda/export_subprocess", "export_model", _export(more=("MODEL.DEVICE", "cuda")),
        r"^error: MODEL\.DEVICE is 'cuda' but CUDA is not available", subprocess=True, marks=(NO_CUDA,)),
    Row("cuda_without_cuda/train", "train_net", _train("MODEL.DEVICE", "cuda"),
        r"^error: MODEL\.DEVICE is 'cuda' but CUDA is not available", marks=(NO_CUDA,)),
    Row("cuda_without_cuda/sweep", "sweep_alpha", _sweep("MODEL.DEVICE", "cuda"),
        r"^error: MODEL\.DEVICE is 'cuda' but CUDA is not available", marks=(NO_CUDA,)),
    Row("truncated_jpeg/visualize_input", "visualize", _vis("--input", "truncated"),
        r"^error: --input image '.*cut\.jpg' cannot be read \(.*[Tt]runcated", _truncated_copy),
    Row("not_an_image/visualize_input", "visualize", _vis("--input", "not_an_image"),
        r"^error: --input image '.*notes\.jpg' cannot be read \(cannot identify image file", _not_an_image),
    Row("truncated_jpeg/export_sample", "export_model", _export("--sample-image", "truncated"),
        r"^error: --sample-image '.*cut\.jpg' cannot be read \(.*[Tt]runcated", _truncated_copy),
    Row("not_an_image/export_sample", "export_model", _export("--sample-image", "not_an_image"),
        r"^error: --sample-image '.*notes\.jpg' cannot be read \(cannot identify image file", _not_an_image),
    Row("truncated_image_in_dataset/decode_images", "train_net", lambda c: ["--decode-images"] + _train()(c),
        r"lvis_v1_train\.json\): image '.*train2017/000000000001\.jpg' cannot be read: .*[Tt]runcated",
        _truncate_image("train")),
    Row("eval_only_without_weights", "train_net", _eval(weights=""),
        r"^error: MODEL\.WEIGHTS is empty: evaluating needs trained weights"),
    Row("eval_only_untrained_tde_weights", "train_net", _eval(weights="untrained"),
        r"^error: MODEL\.WEIGHTS '.*untrained\.pth' holds no trained TDE mean feature \(roi_heads\.box_predictor\."
        r"cls_score\.mean_feature is all zero\)"),
    Row("tde_alpha_int", "train_net", _train("MODEL.TDE.ALPHA", "-1"),
        r"^error: in the trailing KEY VALUE overrides: MODEL\.TDE\.ALPHA takes a float, got -1 \(an int\): write -1\.0$",
        subprocess=True),
    Row("no_config_file", "train_net", lambda c: c.opts(), r"^error: --config-file is required", subprocess=True),
    Row("no_config_file/sweep", "sweep_alpha", lambda c: ["--alphas", "0"] + c.opts(), r"^error: --config-file is required"),
    Row("weights_of_another_architecture/eval_only", "train_net", _eval(weights="other_arch"),
        r"^error: MODEL\.WEIGHTS '.*other_arch\.pth' does not fit this model: of its \d+ tensors, \d+ have another "
        r"shape \(e\.g\. 'backbone\.[^']*': \([\d, ]+\) in the file, \([\d, ]+\) in the model\)"),
    Row("weights_of_another_architecture/train", "train_net", _train(weights="other_arch"),
        r"^error: MODEL\.WEIGHTS '.*other_arch\.pth' does not fit this model"),
    Row("input_is_a_folder", "visualize", lambda c: _vis("--input", c.root)(c),
        r"^error: --input '.*' is a folder: give image files, e.g\. --input .*\*\.jpg"),
    Row("check_lvis_problem_exit_status", "check_lvis", lambda c: ["lvis_v1_train", "lvis_v1_val"],
        r"PROBLEM  lvis_v1_val \(.*\): the json has no images", _edit("val", _empty), subprocess=True),
    Row("num_gpus_2_on_cpu", "train_net", lambda c: ["--num-gpus", "2"] + _train()(c),
        r"^error: --num-gpus 2 --num-machines 1 asks for 2 processes, but CUDA is not available", subprocess=True,
        marks=(V06_LAUNCH,)),
    # -- malformed json (written or converted by hand) --
    Row("json/duplicate_image_ids", "train_net", _train(), r"image ids occur more than once: 1000",
        _edit("val", lambda d: d["images"][1].update(id=d["images"][0]["id"]))),
    Row("json/duplicate_annotation_ids", "train_net", _train(), r"annotation ids occur more than once: 10",
        _edit("train", lambda d: d["annotations"][1].update(id=d["annotations"][0]["id"]))),
    Row("json/annotation_of_no_image", "train_net", _train(),
        r"1 annotation\(s\) refer to image ids that are not in 'images'",
        _edit("train", _set(("annotations", 0, "image_id"), 99999))),
    Row("json/xyxy_box", "train_net", _train(),
        r"1 annotation bbox\(es\) outside the image: bbox is \[x, y, width, height\] in pixels; \[x0, y0, x1, y1\] is a "
        r"common conversion mistake", _edit("train", _xyxy_box)),
    Row("json/zero_size_box", "train_net", _train(), r"1 annotation bbox\(es\) width or height <= 0",
        _edit("train", _set(("annotations", 0, "bbox", 2), 0.0))),
    Row("json/polygon_of_two_points", "train_net", _train(), r"1 annotation\(s\) have a polygon that is not",
        _edit("train", _set(("annotations", 0, "segmentation"), [[1.0, 2.0, 3.0, 4.0]]))),
    Row("json/no_segmentation", "train_net", _train(), r"1 of \d+ annotations lack one of id, image_id, category_id, "
        r"bbox, segmentation", _edit("train", _set(("annotations", 0, "segmentation"), KeyError))),
    Row("json/image_listed_twice", "train_net", _train(), r"1 image file\(s\) are listed more than once",
        _edit("val", _listed_twice)),
    Row("json/no_height", "train_net", _train(), r"1 of 4 image records lack an integer 'id', 'coco_url' or positive "
        r"integer 'height' and 'width' \(image ids 1000\)", _edit("val", _set(("images", 0, "height"), KeyError))),
    Row("json/neg_category_unknown", "train_net", _train(), r"neg_category_ids / not_exhaustive_category_ids name "
        r"category ids that are not among the json's categories: 5000",
        _edit("val", _set(("images", 0, "neg_category_ids"), lambda ids: ids + [5000]))),
    Row("json/duplicate_category_ids", "train_net", _train(), r"category ids occur more than once: 1",
        _edit("val", lambda d: d["categories"][1].update(id=1))),
    Row("json/not_json", "train_net", _train(), r"lvis_v1_train\.json is not valid JSON", _write("train", "{")),
    Row("json/no_annotations_list", "train_net", _train(), r"the json has no 'annotations' list: nothing to train on",
        _edit("train", _set(("annotations",), KeyError))),
    # -- more config values --
    Row("min_size_int", "train_net", _train("INPUT.MIN_SIZE_TRAIN", "800"),
        r"MIN_SIZE_TRAIN takes a tuple, got 800 \(an int\): write \(800,\)$"),
    Row("device_misspelled", "train_net", _train("MODEL.DEVICE", "gpu"), r"^error: MODEL\.DEVICE 'gpu' is not a device"),
    Row("roi_heads_misspelled", "export_model", _export(more=("MODEL.ROI_HEADS.NAME", "TDEStandardROIHead")),
        r"^error: MODEL\.ROI_HEADS\.NAME is 'TDEStandardROIHead', but it must be a registered ROI head"),
    Row("sampler_misspelled", "train_net", _train("DATALOADER.SAMPLER_TRAIN", "RepeatFactorSampler"),
        r"^error: DATALOADER\.SAMPLER_TRAIN is 'RepeatFactorSampler', but it must be TrainingSampler or"),
    Row("batch_size_zero", "train_net", _train("SOLVER.IMS_PER_BATCH", "0"), r"^error: SOLVER\.IMS_PER_BATCH is 0"),
    Row("class_counts_missing", "sweep_alpha", lambda c: ["--config-file", TINY, "--alphas", "0", "--gammas", "0.5"]
        + c.opts("MODEL.NORCAL.CLASS_COUNTS", "counts.json"),
        r"^error: MODEL\.NORCAL\.CLASS_COUNTS is 'counts\.json', but it must be an existing json"),
    Row("alpha_negative/visualize", "visualize", _vis("--alpha", "-1"),
        r"^error: --alpha must be >= 0"),
    # -- more weights --
    Row("weights_missing/sweep", "sweep_alpha", _sweep(weights="nowhere.pth"),
        r"^error: MODEL\.WEIGHTS 'nowhere\.pth' does not exist"),
    Row("weights_folder", "train_net", _eval(weights="folder"), r"^error: MODEL\.WEIGHTS '.*run' is a folder"),
    Row("weights_not_a_checkpoint", "train_net", _eval(weights="text"),
        r"^error: MODEL\.WEIGHTS '.*notes\.pth' cannot be read as a checkpoint"),
    Row("untrained_tde_weights/sweep", "sweep_alpha", _sweep(weights="untrained"),
        r"holds no trained TDE mean feature"),
    Row("untrained_tde_weights/export", "export_model", _export(weights="untrained"),
        r"holds no trained TDE mean feature"),
    # -- more arguments --
    Row("sweep_alphas_not_numbers", "sweep_alpha", _sweep(alphas=("x",)), r"^error: --alphas needs numbers, got 'x'"),
    Row("visualize_num_images_zero", "visualize", _vis("--num-images", "0"),
        r"^error: --num-images must be >= 1"),
]


# ---- running a row ----


def _forbidden_launch(*args, **kwargs):
    raise AssertionError("the pre-flight let this mistake through: launch() was called")


def _run_in_process(tool, argv, monkeypatch):
    monkeypatch.setattr(sys, "argv", [TOOLS[tool]] + argv)
    monkeypatch.setattr(detectron2.engine, "launch", _forbidden_launch)
    out, err = io.StringIO(), io.StringIO()  # never closed: loggers made by a row may keep them
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as e:
        runpy.run_path(os.path.join(REPO, TOOLS[tool]), run_name="__main__")
    return e.value.code, out.getvalue(), err.getvalue()


def _run_subprocess(tool, argv, ctx):
    env = dict(os.environ, DETECTRON2_DATASETS=ctx.root, OMP_NUM_THREADS="1")
    argv = [ctx.data_builtin.get(w, w) for w in argv]
    proc = subprocess.run([sys.executable, os.path.join(REPO, TOOLS[tool])] + argv, cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def _context(sound_data, weights, tmp_path, row):
    root = str(tmp_path / "data")
    shutil.copytree(sound_data, root)
    tag = f"u27_{uuid.uuid4().hex[:8]}"
    train, val = f"{tag}_lvis_v1_train", f"{tag}_lvis_v1_val"
    meta = get_lvis_instances_meta("lvis_v1")
    for name, split in ((train, "train"), (val, "val")):
        register_lvis_instances(name, meta, os.path.join(root, "lvis", f"lvis_v1_{split}.json"),
                                os.path.join(root, "coco", ""))
    ctx = Context(root, train, val, weights, str(tmp_path / "out"))
    # a subprocess registers its datasets at start-up: it reads the builtin names under DETECTRON2_DATASETS
    ctx.data_builtin = {f'("{train}",)': '("lvis_v1_train",)', f'("{val}",)': '("lvis_v1_val",)',
                        train: "lvis_v1_train", val: "lvis_v1_val"}
    os.makedirs(ctx.out)
    for name, content in (("model_final.pth", b"an earlier run's checkpoint"), ("last_checkpoint", b"model_final.pth")):
        with open(os.path.join(ctx.out, name), "wb") as f:
            f.write(content)
    return ctx


def _snapshot(folder):
    """{relative path: bytes (files) or None (folders)} of everything under `folder`."""
    found = {}
    for d, dirs, files in os.walk(folder):
        found.update({os.path.relpath(os.path.join(d, x), folder): None for x in dirs})
        found.update({os.path.relpath(os.path.join(d, x), folder): open(os.path.join(d, x), "rb").read() for x in files})
    return found


@pytest.mark.parametrize("row", [pytest.param(r, id=r.id, marks=r.marks) for r in ROWS])
def test_user_mistake(row, sound_data, weights, tmp_path, monkeypatch):
    ctx = _context(sound_data, weights, tmp_path, row)
    if row.setup:
        row.setup(ctx)
    before = _snapshot(ctx.out)
    argv = row.args(ctx)
    if row.subprocess:
        status, out, err = _run_subprocess(row.tool, argv, ctx)
    else:
        status, out, err = _run_in_process(row.tool, argv, monkeypatch)
    log = out + err
    assert status == row.status, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    if row.tool == "check_lvis":  # its report is on stdout: an OK or PROBLEM line per dataset
        assert re.search(row.expect, out, re.M), out
    else:
        assert len(re.findall(r"^error:", err, re.M)) == 1, err
        message = err[err.index("error:"):]
        assert re.search(row.expect, message, re.M), message
    assert _snapshot(ctx.out) == before, "the tool wrote into OUTPUT_DIR"


def test_table_covers_every_tool():
    assert {r.tool for r in ROWS} == set(TOOLS)
    assert len({r.id for r in ROWS}) == len(ROWS)


# ---- an unreadable image met during the work ----


def test_training_skips_an_unreadable_image_and_names_it(sound_data, weights, tmp_path):
    ctx = _context(sound_data, weights, tmp_path, None)
    ctx.out = str(tmp_path / "run")
    bad = truncate(ctx.image("train", 1))
    env = dict(os.environ, DETECTRON2_DATASETS=ctx.root, OMP_NUM_THREADS="1")
    opts = ["DATASETS.TRAIN", '("lvis_v1_train",)', "DATASETS.TEST", "()"] + FAST + [
        "DATALOADER.NUM_WORKERS", "2", "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100", "OUTPUT_DIR", ctx.out]
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY, *opts],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    log = proc.stdout + proc.stderr
    assert proc.returncode == EXIT_OK, log[-3000:]
    # two data-loader workers read the image (every image is read in the first 2 iterations): one warning
    assert log.count(f"Skipping training image '{bad}': it cannot be read (") == 1, log[-3000:]
    assert f"1 training image(s) could not be read and were skipped: '{bad}'." in log
    assert os.path.isfile(os.path.join(ctx.out, "model_final.pth"))
    # the check names it up front
    check = subprocess.run([sys.executable, os.path.join(REPO, "datasets", "check_lvis.py"), "--decode", "lvis_v1_train"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert check.returncode == EXIT_USER_ERROR
    assert f"PROBLEM  lvis_v1_train ({ctx.json('train')}): image '{bad}' cannot be read: " in check.stdout


@pytest.mark.parametrize("in_training", [False, True], ids=["eval-only", "periodic-eval-in-training"])
def test_evaluation_stops_at_an_unreadable_image_and_names_it(sound_data, weights, tmp_path, in_training):
    ctx = _context(sound_data, weights, tmp_path, None)
    ctx.out = str(tmp_path / "run")
    bad = truncate(ctx.image("val", 0))
    env = dict(os.environ, DETECTRON2_DATASETS=ctx.root, OMP_NUM_THREADS="1")
    opts = ["DATASETS.TEST", '("lvis_v1_val",)'] + FAST + ["DATALOADER.NUM_WORKERS", "1", "OUTPUT_DIR", ctx.out]
    flags = [] if in_training else ["--eval-only"]
    opts += (["SOLVER.MAX_ITER", "2", "TEST.EVAL_PERIOD", "1", "DATASETS.TRAIN", '("lvis_v1_train",)'] if in_training
             else ["MODEL.WEIGHTS", weights["trained"]])
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY,
                           *flags, *opts], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == EXIT_USER_ERROR, (proc.stdout + proc.stderr)[-3000:]
    assert "Traceback" not in proc.stdout + proc.stderr and proc.stderr.count("error:") == 1, proc.stderr[-3000:]
    if in_training:  # a periodic evaluation in the training loop: its traceback is in log.txt only
        with open(os.path.join(ctx.out, "log.txt")) as f:
            assert "Exception during training:" in f.read()
    assert re.search(rf"^error: image '{re.escape(bad)}' cannot be read \(.*\); replace or remove it\. .* A test image "
                     r"is never skipped", proc.stderr, re.M), proc.stderr
