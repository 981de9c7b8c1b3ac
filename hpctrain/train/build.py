"""Building the pieces of a training run that do not depend on its state: the comm backend
and the optimizer with its parameter groups."""

from __future__ import annotations

from hpctrain.env import RankInfo
from hpctrain.errors import ConfigError
from hpctrain.train.config import TrainConfig


def get_comm(cfg: TrainConfig, info: RankInfo):
    import os

    from hpctrain.comm import shared_comm

    if cfg.comm.timeline:
        # Horovod reads this once, in hvd.init; DYNAMIC lets the trainer open the file in the run dir
        os.environ.setdefault("HOROVOD_TIMELINE", "DYNAMIC")
    return shared_comm(cfg.comm.backend, info, timeout_s=cfg.comm.timeout_s, torch_backend=cfg.comm.torch_backend,
                       horovod=horovod_knobs(cfg, info.rank == 0))


def horovod_knobs(cfg: TrainConfig, is_root: bool):
    from hpctrain.comm.horovod_knobs import HorovodKnobs
    from hpctrain.rundir import RunDir

    c = cfg.comm
    log = None
    if c.horovod_autotune and c.backend == "horovod":
        # Horovod's coordinator (rank 0) writes the log; the directory must exist before hvd.init.
        log = RunDir(cfg.run.dir).horovod_autotune
        if is_root:
            log.parent.mkdir(parents=True, exist_ok=True)
    return HorovodKnobs(cycle_time_ms=c.horovod_cycle_time_ms, fusion_mb=c.horovod_fusion_mb,
                        cache_capacity=c.horovod_cache_capacity, poll_us=c.horovod_poll_us,
                        autotune=c.horovod_autotune, autotune_log=str(log) if log else None)


def make_optimizer(cfg: TrainConfig, model, transfer: bool):
    import torch

    from hpctrain.train.models import is_head

    o = cfg.optimizer
    wd = cfg.regularization.weight_decay
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not trainable:
        raise ConfigError("model.freeze: every parameter is frozen; nothing would train. Narrow the patterns")
    if transfer and o.body_lr_scale != 1.0:
        body = [p for n, p in trainable if not is_head(n)]
        head = [p for n, p in trainable if is_head(n)]
        groups = [g for g in ({"params": body, "lr_scale": o.body_lr_scale}, {"params": head, "lr_scale": 1.0})
                  if g["params"]]
    else:
        groups = [{"params": [p for _, p in trainable], "lr_scale": 1.0}]
    if o.name == "sgd":
        return torch.optim.SGD(groups, lr=o.lr, momentum=o.momentum, nesterov=o.nesterov, weight_decay=wd)
    if o.name == "adam":
        return torch.optim.Adam(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=wd)
    return torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps, weight_decay=wd)
