"""Several processes give the numbers of one (upstream detectron2: CPU processes over gloo).

On the tiny demo config: a training on two "machines" (Detectron2's ``--num-machines 2
--machine-rank 0|1``, one process each, over loopback) leaves the same parameters and buffers on
both ranks and in ``model_final.pth``, and its end-of-training table is the table of a 1-process
``--eval-only`` of that file; ``--eval-only`` and ``tools/sweep_alpha.py`` on two processes give
the 1-process numbers; a run resumes on another number of processes from its last checkpoint.
One 2-machine training is shared by all tests of this file.
"""

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest
import torch
from helpers import load_script
from test_train_net import FAST, TINY

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECORD = os.path.join(REPO, "tests", "_train_two_processes.py")
VAL = "tde_demo_lt_tiny_val"
KEYS = ("plain", "tde_alpha1.5")  # the tiny config's two inference modes (TEST.TDE_EVAL_PLAIN)
TIMEOUT = 600

if torch.cuda.is_available():
    pytestmark = pytest.mark.skip(reason="checks CPU processes (with CUDA, launch uses NCCL and one GPU per process)")
elif not load_script("tools/train_net.py")._launcher_runs_without_cuda():
    pytestmark = pytest.mark.skip(
        reason="this detectron2's launch() (v0.6) starts several processes only on CUDA GPUs (NCCL); "
               "upstream detectron2 runs them on the CPU over gloo (CI's upstream leg)")


def _env(data_root):
    return dict(os.environ, DETECTRON2_DATASETS=data_root, OMP_NUM_THREADS="1")


def _run(data_root, script, *args):
    proc = subprocess.run([sys.executable, os.path.join(REPO, script), *map(str, args)], cwd=REPO,
                          env=_env(data_root), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def _results(out_dir):
    with open(os.path.join(out_dir, "lvis_results.json")) as f:
        return json.load(f)[VAL]


def _detections(out_dir, key):
    with open(os.path.join(out_dir, "inference", key, "lvis_instances_results.json")) as f:
        return json.load(f)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_same_state(a, b, what):
    assert a.keys() == b.keys(), what
    for k in a:
        assert torch.equal(a[k], b[k]), f"{what}: {k}"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """The tiny demo set, generated once here (concurrent launchers would each generate it)."""
    root = str(tmp_path_factory.mktemp("d2datasets"))
    code = "from tde_det.data import prepare_dataset\nfor n in ('tde_demo_lt_tiny_train', 'tde_demo_lt_tiny_val'): prepare_dataset(n)"
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(root), check=True, timeout=TIMEOUT)
    return root


@pytest.fixture(scope="module")
def two_machines(data_root, tmp_path_factory):
    """The tiny config (40 iterations, checkpoints every 20) on 2 "machines" of one process each
    (loopback), evaluated at the end; every rank records its state. Returns (output dir, [rank0, rank1] records, rank 0's log)."""
    base = tmp_path_factory.mktemp("two_machines")
    out, records = base / "train", base / "records"
    records.mkdir()
    url = f"tcp://127.0.0.1:{_free_port()}"
    procs = [
        subprocess.Popen(
            [sys.executable, RECORD, str(records), "--num-machines", "2", "--machine-rank", str(rank), "--num-gpus", "1",
             "--dist-url", url, "--config-file", TINY, "OUTPUT_DIR", str(out), *FAST],
            cwd=REPO, env=_env(data_root), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
        for rank in (0, 1)
    ]
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=TIMEOUT)[0])
    finally:
        for p in procs:  # one that failed leaves the other waiting for it
            if p.poll() is None:
                p.kill()
                p.communicate()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-3000:]
    return out, [torch.load(records / f"rank{r}.pt", weights_only=False) for r in (0, 1)], logs[0]


@pytest.fixture(scope="module")
def one_process_eval(two_machines, data_root, tmp_path_factory):
    """A 1-process ``--eval-only`` of the 2-machine run's model_final.pth (both inference modes)."""
    out = tmp_path_factory.mktemp("eval_1")
    _run(data_root, "tools/train_net.py", "--config-file", TINY, "--eval-only",
         "MODEL.WEIGHTS", two_machines[0] / "model_final.pth", "OUTPUT_DIR", out, *FAST)
    return out


def test_two_machines_hold_the_saved_model_and_print_its_table(two_machines, one_process_eval):
    out, (r0, r1), log = two_machines
    assert r0["world_size"] == r1["world_size"] == 2
    # every rank holds the same parameters, x̄ and every other buffer (BatchNorm statistics included) ...
    assert any(k.endswith("running_var") for k in r0["state"]) and any(k.endswith("mean_feature") for k in r0["state"])
    _assert_same_state(r0["state"], r1["state"], "rank 0 vs rank 1")
    # ... which is the model that was saved
    saved = torch.load(out / "model_final.pth", map_location="cpu", weights_only=False)["model"]
    _assert_same_state(saved, r0["state"], "model_final.pth vs the trained model")

    # the table printed at the end of training is the 1-process evaluation of model_final.pth
    assert "LVIS-style results on tde_demo_lt_tiny_val" in log
    trained, evaluated = _results(out), _results(one_process_eval)
    for key in KEYS:
        assert trained[key]["iteration"] is not None and evaluated[key]["weights"].endswith("model_final.pth")
        assert trained[key]["results"] == evaluated[key]["results"], key
        # down to every detection (and its score), not only the APs
        assert _detections(out, key) == _detections(one_process_eval, key), key
    assert any(trained[key]["results"]["bbox"]["AP50"] > 0 for key in KEYS)  # the model detects something


def test_eval_only_on_two_processes_gives_the_one_process_table(two_machines, one_process_eval, data_root, tmp_path):
    _run(data_root, "tools/train_net.py", "--config-file", TINY, "--eval-only", "--num-gpus", "2",
         "MODEL.WEIGHTS", two_machines[0] / "model_final.pth", "OUTPUT_DIR", tmp_path, *FAST)
    two, one = _results(tmp_path), _results(one_process_eval)
    assert set(two) == set(one) == set(KEYS)
    for key in KEYS:
        assert two[key]["results"] == one[key]["results"], key
        assert _detections(tmp_path, key) == _detections(one_process_eval, key), key


def test_alpha_sweep_on_two_processes_gives_the_one_process_sweep(two_machines, data_root, tmp_path):
    sweeps = {}
    for n in (1, 2):
        _run(data_root, "tools/sweep_alpha.py", "--config-file", TINY, "--num-gpus", n, "--alphas", 0, 1.5, 3,
             "--output", tmp_path / str(n), "MODEL.WEIGHTS", two_machines[0] / "model_final.pth", *FAST)
        with open(tmp_path / str(n) / f"alpha_sweep_{VAL}.json") as f:
            sweeps[n] = json.load(f)
        assert sweeps[n].pop("timing_s")  # timings differ, everything else must not
    one, two = sweeps[1], sweeps[2]
    assert one["mean_cos"] > 0 and one["heuristic_alpha"] is not None
    assert (two["mean_cos"], two["heuristic_alpha"]) == (one["mean_cos"], one["heuristic_alpha"])
    assert two["rows"] == one["rows"] and two["results"] == one["results"]
    assert two == one


def _resume(data_root, src_dir, dst_dir, num_gpus, max_iter):
    """Copy `src_dir`'s last checkpoint into `dst_dir` and resume it there on `num_gpus` processes
    until `max_iter`. Returns (the checkpoint, the records of every rank)."""
    name = (src_dir / "last_checkpoint").read_text().strip()
    ckpt = torch.load(src_dir / name, map_location="cpu", weights_only=False)  # the resumed run may overwrite it
    dst_dir.mkdir()
    shutil.copy(src_dir / name, dst_dir / name)
    (dst_dir / "last_checkpoint").write_text(name)
    records = dst_dir / "records"
    records.mkdir()
    _run(data_root, "tests/_train_two_processes.py", records, "--num-gpus", num_gpus, "--resume", "--config-file", TINY,
         "SOLVER.MAX_ITER", max_iter, "SOLVER.CHECKPOINT_PERIOD", 100, "OUTPUT_DIR", dst_dir, *FAST, "DATASETS.TEST", "()")
    return ckpt, [torch.load(records / f"rank{r}.pt", weights_only=False) for r in range(num_gpus)]


def test_resume_on_another_number_of_processes(two_machines, data_root, tmp_path):
    """2 processes -> 1 -> 2: each resumes from the last checkpoint, its iteration and every
    parameter and buffer (x̄ included), and goes on training."""
    src = two_machines[0]
    one_dir, two_dir = tmp_path / "on_1", tmp_path / "on_2"
    for dst, n, max_iter in ((one_dir, 1, 42), (two_dir, 2, 44)):
        ckpt, ranks = _resume(data_root, src, dst, n, max_iter)
        assert len(ranks) == n
        for r in ranks:
            assert r["world_size"] == n and r["start_iter"] == ckpt["iteration"] + 1
            _assert_same_state(r["start_state"], ckpt["model"], f"state resumed on {n} process(es)")
            (name, mean), = r["means"].items()
            assert not torch.equal(mean, ckpt["model"][name])  # x̄ moved on from the restored value
        _assert_same_state(ranks[0]["state"], ranks[-1]["state"], "ranks after the resumed training")
        final = torch.load(dst / "model_final.pth", map_location="cpu", weights_only=False)
        assert final["iteration"] == max_iter - 1
        src = dst
