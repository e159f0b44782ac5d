"""The pre-flight data check, one-line `error:` exits and strict results JSON (issue 16).

All on generated LVIS v1-shaped data in Detectron2's builtin layout (tests/lvis_v1_like.py): the
real 1,203 categories, coco_url image records, polygons, neg_category_ids and
not_exhaustive_category_ids. The tools run as subprocesses with DETECTRON2_DATASETS pointing at a
temporary directory.
"""

import json
import os
import subprocess
import sys
import uuid
import warnings

import pytest
import torch
from detectron2.data.datasets import get_lvis_instances_meta, register_lvis_instances
from helpers import load_script
from lvis_v1_like import edit_json, make_lvis_v1

from tde_det.data import prepare_dataset
from tde_det.data.checks import check_datasets, files_not_found
from tde_det.engine import cli
from tde_det.engine.results import update_results_json
from tde_det.engine.trainer import cap_num_workers
from tde_det.errors import ConfigError, DataCheckFailed, FilesMissing, NotRegistered, UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "demo", "tde_mask_rcnn_tiny.yaml")
LVIS_V1 = ["DATASETS.TRAIN", '("lvis_v1_train",)', "DATASETS.TEST", '("lvis_v1_val",)', "MODEL.ROI_HEADS.NUM_CLASSES", "1203"]
FAST = ["TEST.DETECTIONS_PER_IMAGE", "20", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RPN.POST_NMS_TOPK_TEST", "50",
        "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2"]


def _strict(text):
    def refuse(constant):
        raise ValueError(f"not strict JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


# ---- the check itself, in-process on datasets registered like Detectron2's lvis_v1_* ----


def _register(root, split="val"):
    """Register `root`'s lvis_v1_{split}.json under a fresh name with the builtin v1 metadata."""
    name = f"h16_lvis_v1_{split}_{uuid.uuid4().hex[:8]}"
    register_lvis_instances(name, get_lvis_instances_meta("lvis_v1"), os.path.join(root, "lvis", f"lvis_v1_{split}.json"),
                            os.path.join(root, "coco", ""))
    return name


@pytest.fixture
def lvis(tmp_path):
    make_lvis_v1(str(tmp_path), num_train=4, num_val=6)
    return str(tmp_path)


def _problems(*args, **kwargs):
    with pytest.raises(DataCheckFailed) as e:
        check_datasets(*args, **kwargs)
    assert str(e.value).count("\n  - ") == len(e.value.problems)
    return e.value.problems


def test_sound_data_passes(lvis):
    train, val = _register(lvis, "train"), _register(lvis, "val")
    lines = check_datasets([train, val], [val], num_classes=1203)
    assert lines[0].startswith(f"{train}: 4 image files found, 1203 categories (")
    assert lines[1].startswith(f"{val}: 6 image files found, 1203 categories, federated labels on every image")


def test_missing_images_are_listed_with_a_count(lvis):
    val = _register(lvis)
    images = json.load(open(os.path.join(lvis, "lvis", "lvis_v1_val.json")))["images"]
    gone = [os.path.join(lvis, "coco", *img["coco_url"].split("/")[-2:]) for img in images[:5]]
    for path in gone:
        os.remove(path)
    (problem,) = _problems([val], [val], 1203)
    assert f"5 of 6 image files do not exist: {gone[0]}, {gone[1]}, {gone[2]}, ... (5 in all)" in problem
    assert gone[3] not in problem


def test_lvis_v05_vocabulary_at_the_v1_path(tmp_path):
    make_lvis_v1(str(tmp_path), vocabulary="v0.5")
    val = _register(str(tmp_path))
    (problem,) = _problems([val], [val], 1203)
    assert ("the json has 1230 categories, but the registered dataset has 1203 and MODEL.ROI_HEADS.NUM_CLASSES is "
            "1203: this looks like LVIS v0.5: use configs/lvis_v0.5_*.yaml") in problem
    # only the class count wrong: the fix is the config
    make_lvis_v1(str(tmp_path))
    (problem,) = _problems([val], [val], 1230)
    assert "the json has 1203 categories, but MODEL.ROI_HEADS.NUM_CLASSES is 1230: this looks like LVIS v1" in problem


def test_same_count_other_vocabulary(lvis):
    val = _register(lvis)

    def rename(data):
        for c in data["categories"][10:14]:
            c["name"], c["synonyms"] = f"not_{c['name']}", [f"not_{c['name']}"]

    edit_json(os.path.join(lvis, "lvis", "lvis_v1_val.json"), rename)
    (problem,) = _problems([val], [val], 1203)
    assert "4 of the 1203 category names differ from the registered dataset's (e.g. id 11" in problem

    def renumber(data):
        data["categories"][500]["id"] = 1206  # id 501 (unused by the annotations) becomes 1206
        data["annotations"][0]["category_id"] = 1207

    edit_json(os.path.join(lvis, "lvis", "lvis_v1_val.json"), renumber)
    problems = _problems([val], [val], 1203)
    assert any("category ids are not 1..1203" in p and "(ids that differ: 501, 1206)" in p for p in problems)
    assert any("annotations use category ids that are not among the json's categories: 1207" in p for p in problems)


def test_federated_labels_are_required_on_test_sets_only(lvis):
    val, train = _register(lvis, "val"), _register(lvis, "train")

    def strip(data):
        for img in data["images"]:
            img.pop("neg_category_ids")
        data["images"][2].pop("not_exhaustive_category_ids")

    for split in ("train", "val"):
        edit_json(os.path.join(lvis, "lvis", f"lvis_v1_{split}.json"), strip)
    problems = _problems([train, val], [val], 1203)  # the train set is not a test set: no problem there
    assert len(problems) == 2 and all(p.startswith(f"{val} (") for p in problems)
    assert "6 of 6 images have no 'neg_category_ids'" in problems[0]
    assert "1 of 6 images have no 'not_exhaustive_category_ids'" in problems[1] and "(image ids 1002)" in problems[1]


def test_every_dataset_is_checked_and_problems_are_collected(lvis, tmp_path):
    val = _register(lvis)
    os.remove(os.path.join(lvis, "lvis", "lvis_v1_train.json"))
    train = _register(lvis, "train")
    problems = _problems([train, val, "no_such_dataset"], [val], 1203)
    assert "needs these files, which do not exist" in problems[0] and "lvis_v1_train.json" in problems[0]
    assert "'no_such_dataset' is not registered" in problems[1] and len(problems) == 2
    with pytest.raises(NotRegistered, match="not registered"):  # prepare_dataset alone still raises
        prepare_dataset("no_such_dataset")


def test_generated_demo_set_passes(tmp_path):
    from tde_det.data import TINY_SPEC, register_demo_lt

    prefix = f"h16_tiny_{uuid.uuid4().hex[:6]}"
    register_demo_lt(prefix, str(tmp_path / "tiny"), TINY_SPEC)
    lines = check_datasets([f"{prefix}_train", f"{prefix}_val"], [f"{prefix}_val"], len(TINY_SPEC.class_names))
    assert "federated labels on every image" in lines[1] and "image files found" in lines[0]


def test_threaded_stat_finds_the_same_files_in_order(tmp_path):
    paths = []
    for i in range(300):
        paths.append(str(tmp_path / f"{i}.jpg"))
        if i % 7:
            open(paths[-1], "w").close()
    paths.append(str(tmp_path))  # a folder is not an image file
    serial = [p for p in paths if not os.path.isfile(p)]
    assert files_not_found(paths, threads=1) == files_not_found(paths, threads=16) == serial and len(serial) == 44


# ---- one-line errors, strict JSON, data-loader workers ----


def test_user_errors_become_one_line(capsys):
    with pytest.raises(SystemExit) as e, cli.exit_on_user_error():
        raise NotRegistered("dataset 'x' is not registered")
    assert e.value.code == cli.USER_ERROR_EXIT
    assert capsys.readouterr().err == "error: dataset 'x' is not registered\n"
    with pytest.raises(ConfigError), cli.exit_on_user_error(debug=True):  # --debug: the traceback
        raise ConfigError("bad")
    with pytest.raises(ZeroDivisionError), cli.exit_on_user_error():  # a bug is not a user error
        1 / 0
    # a process started by launch() that printed its error and exited 2; any other exit is re-raised
    with pytest.raises(SystemExit) as e, cli.exit_on_user_error():
        raise torch.multiprocessing.ProcessExitedException("exited", 0, 123, 2)
    assert e.value.code == cli.USER_ERROR_EXIT
    with pytest.raises(torch.multiprocessing.ProcessExitedException), cli.exit_on_user_error():
        raise torch.multiprocessing.ProcessExitedException("killed", 0, 123, -9, signal_name="SIGKILL")
    # the wrapper given to launch() does the same in each process
    wrapped = cli.in_worker(lambda x: x + 1)
    assert wrapped(1) == 2
    with pytest.raises(SystemExit):
        cli.in_worker(lambda: (_ for _ in ()).throw(FilesMissing("gone")))()
    assert issubclass(ConfigError, ValueError) and issubclass(FilesMissing, FileNotFoundError)
    assert issubclass(DataCheckFailed, UserError) and issubclass(NotRegistered, KeyError)


def _spawned(rank, fn):  # what launch() runs in each process it starts: main after process-group set-up
    fn()


def _bad_config():
    raise ConfigError("MODEL.ROI_HEADS.NUM_CLASSES is 7 but dataset 'x' has 6 classes.")


def test_user_error_in_launched_processes_is_one_line(capfd):
    with pytest.raises(SystemExit) as e, cli.exit_on_user_error():
        torch.multiprocessing.spawn(_spawned, args=(cli.in_worker(_bad_config),), nprocs=1)
    assert e.value.code == cli.USER_ERROR_EXIT
    err = capfd.readouterr().err
    assert "error: MODEL.ROI_HEADS.NUM_CLASSES is 7 but dataset 'x' has 6 classes.\n" in err
    assert "Traceback" not in err


def test_config_errors_name_the_problem(tmp_path):
    from tde_det import get_tde_cfg

    with pytest.raises(ConfigError, match=r"in the trailing KEY VALUE overrides: Non-existent key: MODEL.TDE.ALPHAA \(the keys"):
        get_tde_cfg(TINY, ["MODEL.TDE.ALPHAA", "2.0"])
    with pytest.raises(ConfigError, match="odd length"):
        get_tde_cfg(TINY, ["MODEL.TDE.ALPHA"])
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{TINY}"\nMODEL:\n  TDE:\n    ALPHA: [1, 2\n')
    with pytest.raises(ConfigError, match=f"in {bad}"):
        get_tde_cfg(str(bad))
    with pytest.raises(FilesMissing, match="config file 'nope.yaml' does not exist"):
        get_tde_cfg("nope.yaml")
    cfg = get_tde_cfg(TINY, ["MODEL.WEIGHTS", str(tmp_path / "missing.pth")])
    with pytest.raises(FilesMissing, match="MODEL.WEIGHTS .*missing.pth' does not exist"):
        cli.check_weights(cfg)


def test_results_json_is_strict(tmp_path):
    nan, inf = float("nan"), float("inf")
    record = {"results": {"segm": {"AP": 12.5, "APr": nan, "AP-bull": nan, "AR": inf}}, "iteration": None}
    path = update_results_json(str(tmp_path), "lvis_v1_val", "tde_alpha1.5", record)
    data = _strict(open(path).read())
    assert data["lvis_v1_val"]["tde_alpha1.5"]["results"]["segm"] == {"AP": 12.5, "APr": None, "AP-bull": None, "AR": None}
    # a file written by an older version (with NaN) is rewritten strictly on the next update
    with open(path, "w") as f:
        f.write('{"old": {"x": {"AP": NaN}}}')
    update_results_json(str(tmp_path), "lvis_v1_val", "plain", {"results": {"bbox": {"AP": nan}}})
    data = _strict(open(path).read())
    assert data["old"]["x"]["AP"] is None and data["lvis_v1_val"]["plain"]["results"]["bbox"]["AP"] is None
    from tde_det.engine import format_table

    assert "|     - |" in format_table("x", [("m", data["lvis_v1_val"]["plain"]["results"])])  # readers take null


def test_data_loader_workers_capped_at_torch_suggestion():
    from tde_det import get_tde_cfg

    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    cfg = get_tde_cfg(TINY, ["DATALOADER.NUM_WORKERS", str(cpus + 2)])
    cfg.freeze()
    capped = cap_num_workers(cfg)
    assert capped.DATALOADER.NUM_WORKERS == cpus and cfg.DATALOADER.NUM_WORKERS == cpus + 2
    assert cap_num_workers(capped) is capped

    def warns(num_workers):
        loader = torch.utils.data.DataLoader(list(range(4)), num_workers=num_workers)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loader.check_worker_number_rationality()
        return any("worker" in str(w.message) for w in caught)

    assert warns(cfg.DATALOADER.NUM_WORKERS) and not warns(capped.DATALOADER.NUM_WORKERS)


# ---- tools/train_net.py on broken and sound data (subprocesses) ----


def _train_net(data_root, flags, *opts):
    env = dict(os.environ, DETECTRON2_DATASETS=data_root, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "train_net.py"), "--config-file", TINY, *flags,
                           *LVIS_V1, *FAST, *opts], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    return proc.returncode, proc.stdout + proc.stderr, proc.stderr


def _remove_one_image(root):
    os.remove(os.path.join(root, "coco", "val2017", f"{1000:012d}.jpg"))


def _drop_neg_ids(root):
    edit_json(os.path.join(root, "lvis", "lvis_v1_val.json"), lambda d: [img.pop("neg_category_ids") for img in d["images"]])


BROKEN = {
    "missing_image": ("v1", _remove_one_image, r"1 of 4 image files do not exist: .*val2017/000000001000\.jpg"),
    "v0.5_vocabulary": ("v0.5", None, r"the json has 1230 categories, but the registered dataset has 1203 and "
                                      r"MODEL\.ROI_HEADS\.NUM_CLASSES is 1203: this looks like LVIS v0\.5: use "
                                      r"configs/lvis_v0\.5_\*\.yaml"),
    "no_neg_category_ids": ("v1", _drop_neg_ids, r"4 of 4 images have no 'neg_category_ids'"),
}


@pytest.mark.parametrize("mode", ["train", "eval-only"])
@pytest.mark.parametrize("case", sorted(BROKEN))
def test_train_net_stops_before_training_or_inference(case, mode, tmp_path):
    import re

    vocabulary, breaks, pattern = BROKEN[case]
    make_lvis_v1(str(tmp_path), vocabulary=vocabulary)
    if breaks:
        breaks(str(tmp_path))
    rc, log, err = _train_net(str(tmp_path), ["--eval-only"] if mode == "eval-only" else [], "OUTPUT_DIR", str(tmp_path / "out"))
    assert rc == cli.USER_ERROR_EXIT, log[-3000:]
    assert err.count("error: ") == 1 and "error: the data check found " in err and "\n  - lvis_v1_val (" in err
    assert re.search(pattern, err), err
    assert "Traceback" not in log and "Starting training" not in log and "Start inference" not in log
    assert "Model:" not in log  # stopped before building the model
    if case == "missing_image" and mode == "train":  # the escape hatch gets past the check (and then fails late)
        rc, log, err = _train_net(str(tmp_path), ["--skip-data-check"], "SOLVER.MAX_ITER", "1", "OUTPUT_DIR",
                                  str(tmp_path / "out"))
        assert "data check: skipped (--skip-data-check)" in log and rc != 0 and "Start inference" in log
        assert re.search(r"^error: image '.*val2017/000000001000\.jpg' cannot be read", err, re.M), err  # names the file


def test_train_net_on_sound_data_trains_evaluates_and_writes_strict_json(tmp_path):
    make_lvis_v1(str(tmp_path))
    out = tmp_path / "out"
    rc, log, _ = _train_net(str(tmp_path), [], "SOLVER.MAX_ITER", "1", "OUTPUT_DIR", str(out))
    assert rc == 0, log[-3000:]
    assert "data check: lvis_v1_train: 4 image files found, 1203 categories" in log
    assert "data check: lvis_v1_val: 4 image files found, 1203 categories, federated labels on every image" in log
    assert "Starting training" in log and "Start inference" in log and "LVIS-style results on lvis_v1_val" in log
    data = _strict((out / "lvis_results.json").read_text())["lvis_v1_val"]
    for key in ("plain", "tde_alpha1.5"):
        segm = data[key]["results"]["segm"]
        assert isinstance(segm["AP"], float) and isinstance(segm["APc"], float)
        assert sum(v is None for k, v in segm.items() if k.startswith("AP-")) > 1100  # categories without gt


def test_evaluator_says_why_per_category_ap_is_missing(tmp_path):
    import logging

    from detectron2.data import MetadataCatalog
    from test_fast_lvis import _d2_predictions, _run

    from tde_det.evaluation import FastLVISEvaluator
    from tde_det.evaluation.synthetic import make_synthetic_lvis

    gt, results = make_synthetic_lvis(num_images=4, num_cats=6, dets_per_image=(1, 5), seed=1, image_size=(40, 60))
    path = tmp_path / "gt.json"
    path.write_text(json.dumps(gt))
    name = f"h16_vocab_{uuid.uuid4().hex[:6]}"
    MetadataCatalog.get(name).set(json_file=str(path), thing_classes=[f"c{i}" for i in range(5)], evaluator_type="lvis")
    evaluator = FastLVISEvaluator(name, distributed=False, tasks=("bbox",))
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    evaluator._logger.addHandler(handler)
    try:
        res = _run(evaluator, _d2_predictions(gt, results))
    finally:
        evaluator._logger.removeHandler(handler)
    assert not any(k.startswith("AP-") for k in res["bbox"])
    assert any("json has 6 categories but the dataset's metadata 5 classes" in r.getMessage() for r in records)


def test_check_lvis_script_prints_one_line_per_dataset(lvis, capsys):
    check_lvis = load_script("datasets/check_lvis.py")
    train, val = _register(lvis, "train"), _register(lvis, "val")
    assert check_lvis.main([train, val]) == 0
    _drop_neg_ids(lvis)  # lvis_v1_val.json: a test set by its name (no "train" in it)
    assert check_lvis.main([train, val]) == 2  # a user's mistake (tde_det.errors.EXIT_USER_ERROR)
    out = capsys.readouterr().out.splitlines()
    assert out[-3].startswith(f"OK       {train}: 4 image files found, 1203 categories")
    assert out[-2].startswith(f"PROBLEM  {val} (") and "6 of 6 images have no 'neg_category_ids'" in out[-2]


def test_sweep_alpha_runs_the_check_before_building_the_model(tmp_path):
    make_lvis_v1(str(tmp_path))
    _remove_one_image(str(tmp_path))
    weights = tmp_path / "model.pth"
    weights.write_bytes(b"never loaded")
    env = dict(os.environ, DETECTRON2_DATASETS=str(tmp_path), OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", "sweep_alpha.py"), "--config-file", TINY,
                           "--alphas", "0", "1", *LVIS_V1, "MODEL.WEIGHTS", str(weights), "OUTPUT_DIR", str(tmp_path / "out")],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == cli.USER_ERROR_EXIT, proc.stderr[-3000:]
    assert "1 of 4 image files do not exist" in proc.stderr and "Traceback" not in proc.stderr


@pytest.mark.parametrize("opts, words", [
    (["MODEL.TDE.MOMENTUM", "1.5"], "MODEL.TDE.MOMENTUM"),
    (["MODEL.TDE.NUM_HEADS", "7"], "not divisible by num_heads=7"),
    (["MODEL.TDE.INFERENCE", "tdee"], "MODEL.TDE.INFERENCE"),
    (["MODEL.RESNETS.DEPTH", "34"], "MODEL.RESNETS.DEPTH"),
])  # fmt: skip
def test_model_config_errors_are_config_errors(opts, words):
    """Raised while the tools build the model (after the pre-flight): one "error:" line too."""
    from tde_det import get_tde_cfg
    from tde_det.engine import Trainer

    with pytest.raises(ConfigError, match=words):
        Trainer.build_model(get_tde_cfg(TINY, opts))
