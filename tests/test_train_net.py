"""tools/train_net.py end to end on the tiny generated set, plus its error messages.

The CLI runs in subprocesses with DETECTRON2_DATASETS pointing at a temporary directory, so the
tiny demo set is generated there; each run is a few iterations of configs/demo/tde_mask_rcnn_tiny.yaml.
"""

import glob
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from detectron2.engine import default_argument_parser
from helpers import load_script

from tde_det.errors import ConfigError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "demo", "tde_mask_rcnn_tiny.yaml")
FAST = ["TEST.DETECTIONS_PER_IMAGE", "20", "MODEL.ROI_HEADS.SCORE_THRESH_TEST", "0.0", "MODEL.RPN.POST_NMS_TOPK_TEST", "50", "DATALOADER.NUM_WORKERS", "0"]


def _train_net():
    return load_script("tools/train_net.py")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("d2datasets"))


def _run(data_root, *args, check=True, timeout=600):
    env = dict(os.environ, DETECTRON2_DATASETS=data_root, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def _results(out_dir):
    with open(os.path.join(out_dir, "lvis_results.json")) as f:
        return json.load(f)["tde_demo_lt_tiny_val"]


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("train"))
    proc = _run(data_root, "--config-file", TINY, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "3",
                "OUTPUT_DIR", out, *FAST)
    return out, proc.stdout + proc.stderr


def test_train_then_evaluate_both_modes_in_one_table(trained, data_root):
    out, log = trained
    assert os.path.isdir(os.path.join(data_root, "tde_demo_lt_tiny", "train"))  # generated on first use
    assert "eta:" in log and "Starting training from iteration 0" in log
    for name in ("model_0000002.pth", "model_0000005.pth", "model_final.pth"):
        assert os.path.isfile(os.path.join(out, name))
    assert "LVIS-style results on tde_demo_lt_tiny_val" in log
    table = log[log.index("LVIS-style results"):].splitlines()[1:5]
    assert [c.strip() for c in table[0].split("|")[1:-1]] == [
        "model", "AP", "AP50", "AP75", "APr", "APc", "APf", "APbox", "APbox_r", "APbox_c", "APbox_f"
    ]
    assert table[2].startswith("| De-confound (plain) ") and table[3].startswith("| De-confound-TDE (alpha=1.5) ")
    res = _results(out)
    assert set(res) == {"plain", "tde_alpha1.5"}
    for key in res:
        for task in ("bbox", "segm"):
            assert {"AP", "AP50", "AP75", "APr", "APc", "APf"} <= set(res[key]["results"][task])
    assert res["plain"]["tde"]["INFERENCE"] == "plain" and res["tde_alpha1.5"]["tde"]["ALPHA"] == 1.5


def test_eval_only_alpha_override_and_plain(trained, data_root):
    out, _ = trained
    weights = os.path.join(out, "model_final.pth")
    before = _results(out)
    proc = _run(data_root, "--config-file", TINY, "--eval-only", "MODEL.WEIGHTS", weights, "MODEL.TDE.ALPHA", "2.0",
                "OUTPUT_DIR", out, *FAST)
    assert "De-confound-TDE (alpha=2)" in proc.stdout + proc.stderr
    after = _results(out)
    assert set(after) == {"plain", "tde_alpha1.5", "tde_alpha2"}
    assert after["tde_alpha2"]["tde"]["ALPHA"] == 2.0 and after["tde_alpha2"]["weights"] == weights
    # the same weights give the same plain numbers, whatever alpha is
    assert after["plain"]["results"] == before["plain"]["results"]
    assert after["tde_alpha1.5"] == before["tde_alpha1.5"]

    plain_dir = os.path.join(out, "plain_only")
    proc = _run(data_root, "--config-file", TINY, "--eval-only", "MODEL.WEIGHTS", weights,
                "MODEL.TDE.INFERENCE", "plain", "OUTPUT_DIR", plain_dir, *FAST)
    only = _results(plain_dir)
    assert set(only) == {"plain"} and only["plain"]["results"] == before["plain"]["results"]
    assert "De-confound-TDE" not in proc.stdout + proc.stderr.split("Evaluating")[-1]


def test_eval_only_with_lvis_api_gives_the_fast_evaluators_numbers(trained, data_root):
    """TEST.LVIS_EVAL.BACKEND lvis-api runs lvis-api's LVISEval (the removed numpy aliases given at run time, lvis_numpy_aliases): same table."""
    out, _ = trained
    fast = _results(out)
    api_dir = os.path.join(out, "lvis_api")
    _run(data_root, "--config-file", TINY, "--eval-only", "MODEL.WEIGHTS", os.path.join(out, "model_final.pth"),
         "TEST.LVIS_EVAL.BACKEND", "lvis-api", "OUTPUT_DIR", api_dir, *FAST)
    api = _results(api_dir)
    assert set(api) == {"plain", "tde_alpha1.5"} <= set(fast)  # fast: maybe other alphas of other tests
    for key in api:
        for task in ("bbox", "segm"):
            ours, ref = fast[key]["results"][task], api[key]["results"][task]
            assert {"AP", "AP50", "AP75", "APr", "APc", "APf"} <= set(ours) & set(ref)
            assert {k: ours[k] for k in ref if k in ours} == pytest.approx({k: ref[k] for k in ref if k in ours}, abs=1e-9, nan_ok=True)


def test_kill_9_then_resume_keeps_checkpoints_and_mean_feature(data_root, tmp_path):
    out = str(tmp_path / "killed")
    args = ["--config-file", TINY, "SOLVER.MAX_ITER", "2000", "SOLVER.CHECKPOINT_PERIOD", "2", "OUTPUT_DIR", out, *FAST]
    env = dict(os.environ, DETECTRON2_DATASETS=data_root, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, os.path.join(REPO, "tools", "train_net.py"), *args], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    tag = os.path.join(out, "last_checkpoint")
    try:
        deadline = time.time() + 300
        while time.time() < deadline:
            if os.path.isfile(tag) and open(tag).read().strip() >= "model_0000005.pth":
                break
            time.sleep(0.2)
        else:
            pytest.fail("no checkpoint after 300 s")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    # every file under a checkpoint name loads; partial writes only ever exist as *.tmp-<pid>
    for name in os.listdir(out):
        if name.endswith(".pth"):
            torch.load(os.path.join(out, name), map_location="cpu", weights_only=False)
    last = open(tag).read().strip()
    ckpt = torch.load(os.path.join(out, last), map_location="cpu", weights_only=False)
    means = {k: v for k, v in ckpt["model"].items() if k.endswith("mean_feature")}
    assert means and all(v.abs().sum() > 0 for v in means.values())

    # --resume restores the mean feature (what Trainer.resume_or_load does: Detectron2's checkpointer) ...
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    model = build_model(_cfg(*args[2:]))
    loaded = DetectionCheckpointer(model, save_dir=out).resume_or_load("", resume=True)
    assert loaded["iteration"] == ckpt["iteration"]
    state = model.state_dict()
    for k, v in means.items():
        assert torch.equal(state[k], v)

    # ... and the CLI continues from the next iteration
    resumed = _run(data_root, "--resume", *args[:3], str(ckpt["iteration"] + 3), *args[4:], "DATASETS.TEST", "()")
    assert f"Starting training from iteration {ckpt['iteration'] + 1}" in resumed.stdout + resumed.stderr


def test_resume_of_a_checkpoint_written_by_detectron2_v06(trained, data_root, tmp_path):
    """detectron2 v0.6 writes no '_trainer' entry (it saves no optimizer state); upstream main's
    DefaultTrainer needs one. --resume continues from such a checkpoint on either detectron2."""
    src, _ = trained
    ckpt = torch.load(os.path.join(src, "model_0000002.pth"), map_location="cpu", weights_only=False)
    had_optimizer = ckpt["trainer"].pop("_trainer", None) is not None  # what v0.6 never writes
    assert set(ckpt["trainer"]) <= {"iteration", "hooks"} and ckpt["trainer"]["iteration"] == 2
    out = tmp_path / "from_v06"
    out.mkdir()
    torch.save(ckpt, out / "model_0000002.pth")
    (out / "last_checkpoint").write_text("model_0000002.pth")
    proc = _run(data_root, "--resume", "--config-file", TINY, "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "100",
                "OUTPUT_DIR", str(out), *FAST, "DATASETS.TEST", "()")  # fmt: skip
    log = proc.stdout + proc.stderr
    assert "Starting training from iteration 3" in log
    # warned only where this detectron2 would have saved the optimizer state
    assert ("The checkpoint has no optimizer state" in log) == had_optimizer
    final = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)
    assert final["iteration"] == 3
    # the LR schedule continued from the checkpoint's (one more step), it did not restart
    sched = ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"]
    assert sched == 3 and final["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == sched + 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks CPU processes (with CUDA, launch uses NCCL)")
def test_two_cpu_processes_train_with_the_same_synced_mean(data_root, tmp_path):
    """--num-gpus 2 on the CPU (upstream detectron2: gloo): DDP without device_ids, both ranks end with
    the same parameters and the same x̄, which is the moving average of the GLOBAL fg mean."""
    train_net = _train_net()
    if not train_net._launcher_runs_without_cuda():
        with pytest.raises(ConfigError, match="supports only CUDA GPUs"):  # one "error:" line, exit 2
            train_net.check_launch(default_argument_parser().parse_args(["--num-gpus", "2"]))
        pytest.skip("this detectron2's launch() (v0.6) starts several processes only on CUDA GPUs (NCCL); "
                    "train_net.py refuses --num-gpus 2 on the CPU (checked)")
    records = tmp_path / "records"
    records.mkdir()
    env = dict(os.environ, DETECTRON2_DATASETS=data_root, OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "tests", "_train_two_processes.py"), str(records), "--num-gpus", "2",
         "--config-file", TINY, "SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "100",
         "OUTPUT_DIR", str(tmp_path / "out"), *FAST, "DATASETS.TEST", "()"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(records / f"rank{r}.pt", weights_only=False) for r in (0, 1))
    for r in (r0, r1):
        assert r["wrapper"] == "DistributedDataParallel" and r["device_ids"] is None
    assert r0["params"].keys() == r1["params"].keys()
    for name, p in r0["params"].items():
        assert torch.equal(p, r1["params"][name]), name
    (name, mean0), = r0["means"].items()
    assert torch.equal(mean0, r1["means"][name]) and mean0.abs().sum() > 0
    # the ranks saw different regions (a per-rank x̄ would differ) ...
    assert len(r0["local"]) == len(r1["local"]) == 3
    assert any(not torch.equal(a[0], b[0]) for a, b in zip(r0["local"], r1["local"]))
    # ... and x̄ is μ-averaged from the fg mean over both ranks at every step (DESIGN.md §2)
    mu, expected = r0["momentum"][0], torch.zeros_like(mean0, dtype=torch.float64)
    for (s0, n0), (s1, n1) in zip(r0["local"], r1["local"]):
        if n0 + n1:
            expected = mu * expected + (1 - mu) * (s0 + s1) / (n0 + n1)
    torch.testing.assert_close(mean0.double(), expected, rtol=1e-4, atol=1e-6)


# ---- errors, checked in-process (they happen before any model is built) ----


def _cfg(*opts):
    """The config train_net builds, without its dataset preparation."""
    from detectron2.config import get_cfg

    import tde_det.modeling  # noqa: F401  (registers the TDE heads)
    import tde_det.modeling.backbone  # noqa: F401
    from tde_det import add_tde_config

    cfg = get_cfg()
    add_tde_config(cfg)
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(list(opts))
    return cfg


def _setup(*argv):
    return _train_net().setup(default_argument_parser().parse_args(list(argv)))


def test_num_classes_mismatch_names_both(tmp_path):
    with pytest.raises(ValueError, match=r"NUM_CLASSES is 7 but dataset 'tde_demo_lt_tiny_val' has 6 classes"):
        _setup("--config-file", TINY, "--eval-only", "MODEL.ROI_HEADS.NUM_CLASSES", "7", "OUTPUT_DIR", str(tmp_path))


def test_unknown_config_key_is_a_config_error(tmp_path):
    from tde_det.errors import ConfigError

    # a typo in a trailing override: yacs' message, via Detectron2's CfgNode
    with pytest.raises(ConfigError, match="Non-existent key: MODEL.TDE.ALPHAA"):
        _setup("--config-file", TINY, "MODEL.TDE.ALPHAA", "2.0", "OUTPUT_DIR", str(tmp_path))
    # a typo in a config file
    bad = tmp_path / "bad.yaml"
    bad.write_text(f'_BASE_: "{TINY}"\nMODEL:\n  TDE:\n    ALPHAA: 2.0\n')
    with pytest.raises(ConfigError, match="Non-existent config key: MODEL.TDE.ALPHAA"):
        _setup("--config-file", str(bad), "OUTPUT_DIR", str(tmp_path))


def test_missing_lvis_is_reported_before_building_the_model(tmp_path):
    from detectron2.data import MetadataCatalog

    if os.path.isfile(MetadataCatalog.get("lvis_v1_val").json_file):
        pytest.skip("LVIS v1 val is installed here")
    from tde_det.data import DatasetFilesMissing

    config = os.path.join(REPO, "configs", "lvis_tde_mask_rcnn.yaml")
    with pytest.raises(DatasetFilesMissing) as e:
        _setup("--config-file", config, "--eval-only", "MODEL.DEVICE", "cpu", "OUTPUT_DIR", str(tmp_path))
    msg = str(e.value)
    assert os.path.join("lvis", "lvis_v1_val.json") in msg and "DETECTRON2_DATASETS" in msg
    assert "datasets/README.md" in msg


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA messages")
def test_cuda_device_without_cuda_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="MODEL.DEVICE cpu"):  # a ConfigError
        _setup("--config-file", TINY, "MODEL.DEVICE", "cuda", "OUTPUT_DIR", str(tmp_path))


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA messages")
def test_several_processes_without_cuda_is_a_clear_error(monkeypatch):
    train_net = _train_net()
    monkeypatch.setattr(train_net, "_launcher_runs_without_cuda", lambda: False)
    with pytest.raises(ConfigError, match="--num-gpus 2 .*CUDA is not available.*--num-gpus 1"):  # error: line, exit 2
        train_net.check_launch(default_argument_parser().parse_args(["--num-gpus", "2"]))
    train_net.check_launch(default_argument_parser().parse_args(["--num-gpus", "1"]))  # fine


# ---- atomic checkpoint writes ----


def test_checkpoint_writes_are_atomic(tmp_path):
    from detectron2.checkpoint import DetectionCheckpointer

    from tde_det.engine import make_atomic

    model = torch.nn.Linear(3, 2)
    ckpt = make_atomic(DetectionCheckpointer(model, save_dir=str(tmp_path)))
    ckpt.save("model_0000001", iteration=1)
    target = tmp_path / "model_0000001.pth"
    good = target.read_bytes()
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"

    # a save that dies half-way (exception while writing) leaves the old file and no temp file
    with pytest.raises(RuntimeError):
        with ckpt.path_manager.open(str(target), "wb") as f:
            f.write(b"half a checkpoint")
            raise RuntimeError("killed")
    assert target.read_bytes() == good and sorted(os.listdir(tmp_path)) == ["last_checkpoint", "model_0000001.pth"]

    # a writer that never finishes (the process is killed before close): the target is untouched
    f = ckpt.path_manager.open(str(target), "wb")
    f.write(b"partial")
    f.flush()
    assert target.read_bytes() == good
    f.discard()

    # saving again under the same name replaces the file only once it is complete
    model.weight.data.fill_(3.0)
    ckpt.save("model_0000001", iteration=1)
    assert torch.load(str(target), weights_only=False)["model"]["weight"].eq(3.0).all()
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]
    # reads and listings still go through Detectron2's path manager
    assert ckpt.has_checkpoint() and ckpt.get_checkpoint_file().endswith("model_0000001.pth")
    assert ckpt.get_all_checkpoint_files() == [str(target)]


@pytest.mark.parametrize("name", sorted(os.path.basename(p)[:-5] for p in glob.glob(os.path.join(REPO, "configs", "lvis*.yaml"))))
def test_lvis_configs_write_where_the_readme_reads(name):
    """README's eval/sweep/visualize commands load output/<config name>/model_final.pth."""
    from tde_det import get_tde_cfg

    cfg = get_tde_cfg(os.path.join(REPO, "configs", name + ".yaml"))
    assert cfg.OUTPUT_DIR == f"output/{name}"
