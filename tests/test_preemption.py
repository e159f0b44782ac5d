"""Preemption-safe training and exact resume (tde_det.engine.preemption, tde_det.data.resumable_loader).

The stream and its state on their own (Detectron2's samplers and grouping as references), then
tools/train_net.py on the tiny config: a run stopped by SIGTERM (from inside at a fixed iteration,
from outside to its process group, with a second signal or a SIGKILL during the save) and resumed
ends with the ``model_final.pth`` of an uninterrupted run, bit for bit, with 0 and 2 data-loader
workers, and with 2 processes (upstream detectron2). tests/_train_with_stop.py is train_net with
the signals at fixed points.
"""

import itertools
import multiprocessing
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from detectron2.data.common import AspectRatioGroupedDataset
from detectron2.data.samplers import RepeatFactorTrainingSampler, TrainingSampler
from helpers import load_script
from test_train_net import FAST, TINY

from tde_det.data.resumable_loader import ResumableTrainLoader, initial_state, rank_positions, reshard
from tde_det.engine import preemption

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WRAPPER = os.path.join(REPO, "tests", "_train_with_stop.py")
TRAIN_NET = os.path.join(REPO, "tools", "train_net.py")
# 6 iterations, periodic checkpoints after iterations 1, 3, 5; no evaluation
RUN = ["--config-file", TINY, "SOLVER.MAX_ITER", "6", "SOLVER.CHECKPOINT_PERIOD", "2", "DATASETS.TEST", "()",
       *FAST[:-2]]
TIMEOUT = 300


# ---------------------------------------------------------------- the stream and its state


def _sampler(kind, seed=7):
    if kind == "TrainingSampler":
        return TrainingSampler(23, seed=seed)
    return RepeatFactorTrainingSampler(torch.tensor([1.0, 2.5, 0.4, 1.0, 3.0] * 4), seed=seed)


@pytest.mark.parametrize("kind", ["TrainingSampler", "RepeatFactorTrainingSampler"])
@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_each_rank_reads_the_indices_detectron2_gives_it(kind, world_size):
    from tde_det.data.resumable_loader import _Keys

    for rank in range(world_size):
        ours = [i for _, i in itertools.islice(_Keys(_sampler(kind), initial_state(rank, world_size)), 60)]
        d2 = _sampler(kind)
        d2._rank, d2._world_size = rank, world_size  # what Detectron2's sampler of that rank would be
        assert ours == list(itertools.islice(iter(d2), 60))


def _run_stream(states, consumed, pending_every):
    """Each rank reads `consumed` positions; every `pending_every`-th one stays in a partial batch.
    Returns (trained positions, the states after)."""
    trained, after = set(), []
    for s in states:
        read = list(itertools.islice(rank_positions(s), consumed))
        pending = read[::pending_every]
        trained |= set(read) - set(pending)
        rest = s["head"][consumed:]
        tail_read = max(0, consumed - len(s["head"]))
        after.append({"head": pending + rest, "next": s["next"] + tail_read * s["step"], "step": s["step"]})
    return trained, after


@pytest.mark.parametrize("new_world", [1, 2, 3, 5])
def test_resharding_reads_every_position_exactly_once(new_world):
    # 2 ranks read unevenly, then 3, then `new_world`: no position is trained twice or skipped
    trained, states = set(), [initial_state(r, 2) for r in range(2)]
    for world, consumed in ((2, 7), (3, 5)):
        states = reshard(states, world)
        t, states = _run_stream(states, consumed, 3)
        assert not t & trained
        trained |= t
    states = reshard(states, new_world)
    bound = 80
    later = [p for s in states for p in itertools.takewhile(lambda p: p < bound, rank_positions(s))]
    assert len(later) == len(set(later)) and not set(later) & trained
    assert set(later) | trained == set(range(bound))
    assert reshard(states, new_world) == states  # the same number of processes: each keeps its own


def _mapper(d):
    """A mapper as random as an augmentation: draws from numpy, Python and torch; None for id 5 (an
    unreadable image)."""
    if d["id"] == 5:
        return None
    return dict(d, draws=(float(np.random.rand()), float(torch.rand(1)), np.random.randint(1 << 30)))


def _dataset():
    return [{"id": i, "width": 60 if i % 3 else 40, "height": 50} for i in range(17)]


def _loader(num_workers=0, **kw):
    return ResumableTrainLoader(_dataset(), _mapper, TrainingSampler(17, seed=3), 2, num_workers=num_workers, seed=11,
                                **kw)


def _summary(batches):
    return [[(d["id"], d["draws"]) for d in b] for b in batches]


def test_loader_groups_like_detectron2_skips_none_and_leaves_the_training_rng_alone():
    torch.manual_seed(0)
    before = torch.get_rng_state()
    batches = _summary(itertools.islice(_loader(), 12))
    assert torch.equal(torch.get_rng_state(), before)  # the main process's draws are not consumed
    # Detectron2's grouping of the same samples, in the sampler's order, the None ones dropped
    order = itertools.islice(iter(TrainingSampler(17, seed=3)), 40)
    samples = [s for s in map(_mapper, (_dataset()[i] for i in order)) if s is not None]
    d2 = [[d["id"] for d in b] for b in itertools.islice(iter(AspectRatioGroupedDataset(samples, 2)), 12)]
    assert [[i for i, _ in b] for b in batches] == d2
    assert 5 not in {i for b in batches for i, _ in b}
    # the augmentations are a function of the position: the same sample drawn twice gets other draws
    draws = {}
    for b in batches:
        for i, d in b:
            draws.setdefault(i, []).append(d)
    assert any(len(set(v)) > 1 for v in draws.values())


def test_loader_resumes_mid_stream_with_its_partial_batches_and_any_worker_count():
    reference = _summary(itertools.islice(_loader(), 10))
    first = _loader()
    it = iter(first)
    head = []
    while not first.state_dict()["head"]:  # stop where a partial batch is pending
        head += _summary(itertools.islice(it, 1))
    state = first.stream_state_dict([first.state_dict()])
    assert all(isinstance(p, int) for p in state["ranks"][0]["head"]) and 0 < len(head) < 8
    first.close()
    for workers in (0, 2):
        resumed = _loader(num_workers=workers)
        resumed.load_stream_state_dict(state)
        assert head + _summary(itertools.islice(resumed, 10 - len(head))) == reference, f"{workers} workers"
        resumed.close()


def test_a_launcher_passes_stop_signals_to_its_processes():
    ctx = multiprocessing.get_context("fork")
    ready = ctx.Event()
    child = ctx.Process(target=_wait_for_stop, args=(ready,))
    child.start()
    assert ready.wait(10)
    with preemption.forward_stop_signals():
        os.kill(os.getpid(), signal.SIGTERM)  # to the launcher only
        child.join(10)
    assert child.exitcode == preemption.EXIT_STOPPED


def _wait_for_stop(ready):
    preemption.install_stop_handlers()
    ready.set()
    while not preemption.stop_requested():
        time.sleep(0.01)
    os._exit(preemption.EXIT_STOPPED)


# ---------------------------------------------------------------- training


def _env(data_root, **extra):
    return dict(os.environ, DETECTRON2_DATASETS=data_root, OMP_NUM_THREADS="1", **extra)


def _train(data_root, out, *opts, script=TRAIN_NET, resume=False, flags=(), env=None):
    proc = subprocess.run([sys.executable, script, *(["--resume"] if resume else []), *flags, *RUN, "OUTPUT_DIR", str(out),
                           *opts],
                          cwd=REPO, env=env or _env(data_root), capture_output=True, text=True, timeout=TIMEOUT)
    return proc.returncode, proc.stdout + proc.stderr


def _final(out):
    return torch.load(os.path.join(out, "model_final.pth"), map_location="cpu", weights_only=True)["model"]


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"


def _last_checkpoint(out):
    with open(os.path.join(out, "last_checkpoint")) as f:
        name = f.read().strip()
    return name, torch.load(os.path.join(out, name), map_location="cpu", weights_only=True)


def _resume_and_compare(data_root, out, reference, *opts, flags=()):
    rc, log = _train(data_root, out, *opts, resume=True, flags=flags)
    assert rc == 0, log[-3000:]
    _assert_same_weights(_final(out), reference)
    return log


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return str(tmp_path_factory.mktemp("d2datasets"))


@pytest.fixture(scope="module")
def reference(data_root, tmp_path_factory):
    """model_final.pth of the uninterrupted run (no data-loader worker)."""
    out = tmp_path_factory.mktemp("reference")
    rc, log = _train(data_root, out, "DATALOADER.NUM_WORKERS", "0")
    assert rc == 0, log[-3000:]
    return _final(out)


def test_stop_saves_the_iteration_exits_3_and_resume_is_exact(data_root, reference, tmp_path):
    """SIGTERM during iteration 2 (between periodic checkpoints), a second one during the save."""
    env = _env(data_root, TDE_DET_TEST_STOP_AT="2", TDE_DET_TEST_SIGNAL_IN_SAVE="TERM")
    rc, log = _train(data_root, tmp_path, "DATALOADER.NUM_WORKERS", "0", script=WRAPPER, env=env)
    assert rc == preemption.EXIT_STOPPED == 3, log[-3000:]
    assert "SIGTERM during the save of" in log and "Traceback" not in log
    assert "Stopped on SIGTERM after iteration 2" in log and "Continue with --resume" in log
    name, ckpt = _last_checkpoint(tmp_path)  # weights_only=True: nothing pickled in what was added
    assert name == "model_0000002.pth" and ckpt["iteration"] == 2
    assert not os.path.exists(tmp_path / "model_0000003.pth") and not os.path.exists(tmp_path / "model_final.pth")
    resume = ckpt["trainer"]["hooks"]["ResumeState"]
    assert resume["world_size"] == 1 and resume["data"]["ranks"][0]["next"] > 0
    assert ckpt["trainer"]["_trainer"]["optimizer"]["state"]  # SGD momentum, also under detectron2 v0.6
    log = _resume_and_compare(data_root, tmp_path, reference, "DATALOADER.NUM_WORKERS", "0")
    assert "Starting training from iteration 3" in log


def test_sigterm_to_the_process_group_with_two_workers(data_root, reference, tmp_path):
    """A real SIGTERM from outside to the whole process group (main process and both data-loader
    workers), at whatever iteration it arrives."""
    proc = subprocess.Popen([sys.executable, WRAPPER, *RUN, "OUTPUT_DIR", str(tmp_path), "DATALOADER.NUM_WORKERS", "2"],
                            cwd=REPO, env=_env(data_root, TDE_DET_TEST_ITER_SLEEP="0.5"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        deadline = time.time() + TIMEOUT
        while not os.path.exists(tmp_path / "model_0000001.pth") and proc.poll() is None and time.time() < deadline:
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGTERM)
        log = proc.communicate(timeout=TIMEOUT)[0]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 3, log[-3000:]
    assert "Traceback" not in log and "DataLoader worker" not in log, log[-3000:]
    name, ckpt = _last_checkpoint(tmp_path)
    assert 1 < ckpt["iteration"] < 5 and name == f"model_{ckpt['iteration']:07d}.pth"
    assert f"Stopped on SIGTERM after iteration {ckpt['iteration']}" in log
    _resume_and_compare(data_root, tmp_path, reference, "DATALOADER.NUM_WORKERS", "2")


def test_kill_during_the_save_leaves_the_previous_checkpoint(data_root, reference, tmp_path):
    env = _env(data_root, TDE_DET_TEST_STOP_AT="4", TDE_DET_TEST_SIGNAL_IN_SAVE="KILL")
    rc, log = _train(data_root, tmp_path, "DATALOADER.NUM_WORKERS", "0", script=WRAPPER, env=env)
    assert rc == -signal.SIGKILL, log[-3000:]
    assert "SIGKILL during the save of" in log
    name, ckpt = _last_checkpoint(tmp_path)
    assert name == "model_0000003.pth" and ckpt["iteration"] == 3  # the periodic one, whole
    assert not os.path.exists(tmp_path / "model_0000004.pth")
    assert [f for f in os.listdir(tmp_path) if ".tmp-" in f]  # only a temporary file was half-written
    _resume_and_compare(data_root, tmp_path, reference, "DATALOADER.NUM_WORKERS", "0")
    assert not [f for f in os.listdir(tmp_path) if ".tmp-" in f]  # removed by --resume


def test_two_processes_stopped_by_one_rank_and_resumed(data_root, tmp_path):
    """Upstream detectron2 (gloo): SIGUSR1 to rank 1 only during iteration 1; both ranks stop after
    iteration 2 (the flags' all-reduce runs during the next iteration); the resumed run equals its
    uninterrupted twin (BatchNorm statistics per rank included)."""
    if not load_script("tools/train_net.py")._launcher_runs_without_cuda() or torch.cuda.is_available():
        pytest.skip("several CPU processes need upstream detectron2's launch (gloo); v0.6's needs CUDA")
    two = dict(flags=["--num-gpus", "2"])
    rc, log = _train(data_root, tmp_path / "twin", "DATALOADER.NUM_WORKERS", "0", **two)
    assert rc == 0, log[-3000:]
    env = _env(data_root, TDE_DET_TEST_STOP_AT="1:1:USR1")
    rc, log = _train(data_root, tmp_path / "stopped", "DATALOADER.NUM_WORKERS", "0", script=WRAPPER, env=env, **two)
    assert rc == 3 and "Traceback" not in log, log[-3000:]
    assert "Stopped on SIGUSR1 after iteration 2" in log
    name, ckpt = _last_checkpoint(tmp_path / "stopped")
    resume = ckpt["trainer"]["hooks"]["ResumeState"]
    assert name == "model_0000002.pth" and resume["world_size"] == 2 and len(resume["data"]["ranks"]) == 2
    assert any(resume["rank_buffers"])  # each rank's own BatchNorm statistics (the model holds their mean)
    _resume_and_compare(data_root, tmp_path / "stopped", _final(tmp_path / "twin"), "DATALOADER.NUM_WORKERS", "0",
                        **two)
