"""tools/train_net.py's ``main`` under Detectron2's ``launch`` with several CPU processes, recording
on every rank what the tests check (not collected by pytest: run as a script).

    python tests/_train_two_processes.py RECORD_DIR --num-gpus 2 --config-file CFG KEY VALUE ...
    # one of two "machines" (run both): Detectron2's multi-node flags are passed to launch
    python tests/_train_two_processes.py RECORD_DIR --num-machines 2 --machine-rank R --num-gpus 1 \\
        --dist-url tcp://127.0.0.1:PORT --config-file CFG KEY VALUE ...

Each rank writes RECORD_DIR/rank<r>.pt after training: the type of the trained model and its
``device_ids``, the world size, its parameters, its mean feature x̄ (``...mean_feature`` buffers),
its full state dict (parameters and every buffer), and, per call of
``MultiHeadCosineClassifier.update_mean``, this rank's (Σ fg features, fg count) BEFORE the sync;
and, right after ``resume_or_load``, the iteration training starts from and the state dict it
starts with ("start_iter", "start_state").
"""

import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

import train_net  # noqa: E402
from detectron2.engine import default_argument_parser, launch  # noqa: E402
from detectron2.utils import comm  # noqa: E402

from tde_det.engine import Trainer, cli  # noqa: E402
from tde_det.modeling.cosine_classifier import MultiHeadCosineClassifier  # noqa: E402

RECORD_DIR = sys.argv[1]
_local = []  # this rank's (sum, count) per update_mean call
_start = {}  # iteration and state right after resume_or_load
_update_mean = MultiHeadCosineClassifier.update_mean
_train = Trainer.train
_resume_or_load = Trainer.resume_or_load


def _inner(model):
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model


def _state(model):
    return {k: v.detach().clone() for k, v in _inner(model).state_dict().items()}


def update_mean(self, fg_x):
    if self.training:
        _local.append((fg_x.detach().double().sum(dim=0), fg_x.shape[0]))
    return _update_mean(self, fg_x)


def resume_or_load(self, *args, **kwargs):
    result = _resume_or_load(self, *args, **kwargs)
    _start.update(start_iter=self.start_iter, start_state=_state(self.model))
    return result


def train(self):
    result = _train(self)
    model = self.model
    inner = _inner(model)
    torch.save(
        {
            "wrapper": type(model).__name__,
            "device_ids": getattr(model, "device_ids", "unwrapped"),
            "world_size": comm.get_world_size(),
            "params": {n: p.detach().clone() for n, p in inner.named_parameters()},
            "means": {n: b.clone() for n, b in inner.named_buffers() if n.endswith("mean_feature")},
            "state": _state(model),
            "momentum": [m.momentum for m in inner.modules() if isinstance(m, MultiHeadCosineClassifier)],
            "local": _local,
            **_start,
        },
        os.path.join(RECORD_DIR, f"rank{comm.get_rank()}.pt"),
    )
    return result


# At import, so that the processes started by launch (which re-import this file) record too.
MultiHeadCosineClassifier.update_mean = update_mean
Trainer.resume_or_load = resume_or_load
Trainer.train = train

if __name__ == "__main__":
    args = default_argument_parser().parse_args(sys.argv[2:])
    train_net.check_launch(args)
    train_net.setup(args)  # generates the demo set once, before the processes start
    dist_url = args.dist_url if args.num_machines > 1 else "auto"
    launch(cli.in_worker(train_net.main), args.num_gpus, num_machines=args.num_machines,
           machine_rank=args.machine_rank, dist_url=dist_url, args=(args,))
