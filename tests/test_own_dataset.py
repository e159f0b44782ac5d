"""A user's own COCO-format data set end to end, without Python: tools/coco_to_lvis.py, then the
``DATASETS.LVIS_JSON`` config keys naming the converted files in tools/train_net.py,
tools/sweep_alpha.py and tools/visualize.py (configs/demo/tde_mask_rcnn_tiny.yaml, a few iterations
on the generated example of tde_det.data.coco_example; subprocesses, as a user runs them).
"""

import contextlib
import glob
import io
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from helpers import REPO
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from tde_det import get_tde_cfg
from tde_det.data.checks import check_datasets
from tde_det.data.class_counts import norcal_class_counts
from tde_det.data.coco_example import CLASSES, TRAIN_IMAGES, generate_coco_example
from tde_det.data.coco_to_lvis import convert_files
from tde_det.errors import ConfigError, DataCheckFailed, FilesMissing

TINY = os.path.join(REPO, "configs", "demo", "tde_mask_rcnn_tiny.yaml")
FAST = ["TEST.DETECTIONS_PER_IMAGE", "20", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0",
        "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "DATALOADER.NUM_WORKERS", "0"]


@pytest.fixture(scope="module")
def example(tmp_path_factory):
    """The generated COCO-format example, converted; (root, override list naming it, coco val json)."""
    root = str(tmp_path_factory.mktemp("own"))
    train, val, images = generate_coco_example(os.path.join(root, "coco"))
    convert_files([train, val], os.path.join(root, "lvis"))
    opts = ["DATASETS.LVIS_JSON.NAMES", "('shapes_train', 'shapes_val')",
            "DATASETS.LVIS_JSON.FILES", f"('{root}/lvis/train.json', '{root}/lvis/val.json')",
            "DATASETS.LVIS_JSON.IMAGE_ROOTS", f"('{images}', '{images}')",
            "DATASETS.TRAIN", "('shapes_train',)", "DATASETS.TEST", "('shapes_val',)",
            "MODEL.ROI_HEADS.NUM_CLASSES", "6"]
    return root, opts, val


def _by_coco_id(values):
    """`values` (in the order of coco_example.CLASSES) in increasing order of the original id."""
    return [v for _, v in sorted(zip([c[0] for c in CLASSES], values))]


def test_config_keys_register_the_files_with_their_own_vocabulary(example):
    root, opts, _ = example
    cfg = get_tde_cfg(TINY, opts)
    meta = MetadataCatalog.get("shapes_val")
    assert meta.evaluator_type == "lvis" and meta.json_file == f"{root}/lvis/val.json"
    assert meta.thing_classes == _by_coco_id([c[1] for c in CLASSES])
    assert meta.coco_ids == sorted(c[0] for c in CLASSES)
    train_counts = MetadataCatalog.get("shapes_train").class_image_count
    assert [c["image_count"] for c in train_counts] == _by_coco_id(TRAIN_IMAGES)
    records = DatasetCatalog.get("shapes_val")
    assert len(records) == 24 and all(os.path.isfile(r["file_name"]) for r in records)
    # NorCal's default N_c: the training image counts of DATASETS.TRAIN
    assert norcal_class_counts(cfg) == _by_coco_id(TRAIN_IMAGES)
    # the pre-flight accepts them, and names the class count a config must have
    assert len(check_datasets(["shapes_train", "shapes_val"], ["shapes_val"], 6)) == 2
    with pytest.raises(DataCheckFailed, match="set MODEL.ROI_HEADS.NUM_CLASSES 6"):
        check_datasets(["shapes_val"], ["shapes_val"], 48)


def test_config_key_errors(example, tmp_path):
    root, opts, _ = example
    with pytest.raises(ConfigError, match="they have 2, 2 and 1"):
        get_tde_cfg(TINY, opts + ["DATASETS.LVIS_JSON.IMAGE_ROOTS", "('x',)"])
    with pytest.raises(ConfigError, match="'lvis_v1_val' is already a registered dataset"):
        get_tde_cfg(TINY, ["DATASETS.LVIS_JSON.NAMES", "('lvis_v1_val',)", "DATASETS.LVIS_JSON.FILES",
                           f"('{root}/lvis/val.json',)", "DATASETS.LVIS_JSON.IMAGE_ROOTS", "('x',)"])
    with pytest.raises(FilesMissing, match="nope.json"):
        get_tde_cfg(TINY, ["DATASETS.LVIS_JSON.NAMES", "('mine',)", "DATASETS.LVIS_JSON.FILES",
                           f"('{tmp_path}/nope.json',)", "DATASETS.LVIS_JSON.IMAGE_ROOTS", "('x',)"])
    broken = tmp_path / "broken.json"
    broken.write_text("{")
    with pytest.raises(ConfigError, match="broken.json is not valid JSON"):
        get_tde_cfg(TINY, ["DATASETS.LVIS_JSON.NAMES", "('mine',)", "DATASETS.LVIS_JSON.FILES",
                           f"('{broken}',)", "DATASETS.LVIS_JSON.IMAGE_ROOTS", "('x',)"])


def _run(tool, *args, cwd):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, os.path.join(REPO, "tools", tool), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _cocoeval_box_ap(gt_path, results_path):
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(gt_path)
        with open(results_path) as f:
            ev = COCOeval(gt, gt.loadRes(json.load(f)), "bbox")
        ev.params.maxDets = [300]
        ev.evaluate()
        ev.accumulate()
    prec = ev.eval["precision"][:, :, :, 0, 0]
    return float(np.mean(prec[prec > -1]))


def test_train_evaluate_sweep_and_draw_on_a_converted_data_set(example, tmp_path):
    root, opts, coco_val = example
    out = str(tmp_path / "out")
    log = _run("train_net.py", "--config-file", TINY, *opts, "SOLVER.MAX_ITER", "12", "SOLVER.CHECKPOINT_PERIOD",
               "100", "OUTPUT_DIR", out, *FAST, cwd=root)
    assert "data check: shapes_train: 120 image files found, 6 categories" in log
    assert "LVIS-style results on shapes_val" in log and "|   APr |   APc |   APf | APbox |" in log
    with open(os.path.join(out, "lvis_results.json")) as f:
        records = json.load(f)["shapes_val"]
    assert sorted(records) == ["plain", "tde_alpha1.5"]
    for variant, record in records.items():
        for task in ("bbox", "segm"):
            assert all(record["results"][task][k] is not None for k in ("AP", "APr", "APc", "APf"))
        # the same detections with the original category ids, scored by pycocotools on the
        # original COCO json, give the box AP the LVIS evaluation reported (at most 20 per image;
        # a few iterations give AP > 0 on detectron2 v0.6, 0 on upstream main)
        folder = os.path.join(out, "inference", variant)
        with open(os.path.join(folder, "lvis_instances_results.json")) as f:
            lvis_dets = json.load(f)
        with open(os.path.join(folder, "coco_instances_results.json")) as f:
            coco_dets = json.load(f)
        coco_ids = sorted(c[0] for c in CLASSES)
        assert len(coco_dets) == len(lvis_dets) > 0
        assert [dict(d, category_id=coco_ids[d["category_id"] - 1]) for d in lvis_dets] == coco_dets
        box_ap = _cocoeval_box_ap(coco_val, os.path.join(folder, "coco_instances_results.json"))
        assert abs(100 * box_ap - record["results"]["bbox"]["AP"]) <= 1e-9

    weights = ["MODEL.WEIGHTS", os.path.join(out, "model_final.pth")]
    sweep = str(tmp_path / "sweep")
    _run("sweep_alpha.py", "--config-file", TINY, "--alphas", "0", "1.5", "--gammas", "0.5", "--output", sweep,
         *opts, *weights, *FAST, cwd=root)
    with open(os.path.join(sweep, "alpha_sweep_shapes_val.json")) as f:
        rows = {r["setting"]: r for r in json.load(f)["rows"]}
    assert {"plain", "alpha=1.5", "norcal_gamma=0.5"} <= set(rows)
    assert all(rows[s].get(k) is not None for s in rows for k in ("AP", "APr", "APc", "APf"))
    for figure in ("alpha_curves_shapes_val.png", "prediction_distribution_shapes_val.png"):
        assert os.path.getsize(os.path.join(sweep, figure)) > 0

    vis = str(tmp_path / "vis")
    _run("visualize.py", "--config-file", TINY, "--num-images", "2", "--output", vis, *opts, *weights, cwd=root)
    assert len(glob.glob(os.path.join(vis, "*.png"))) == 2
