"""The training loop: the same code as one process, under mpirun/hpctrain launch and under srun.

Order of events, every rank:

1. check the config against the world size and the file system (no process group yet);
2. if ``result.json`` says completed, return at once (a finished run requeued by Slurm);
3. start the comm backend, build model/optimizer, resume from the newest valid checkpoint;
4. loop: at each step boundary agree on ``stop_requested``, then k backward passes and one
   averaged-gradient step; checkpoint every N steps and every epoch; evaluate every epoch;
5. restore the best weights if early stopping is on, evaluate, write the final checkpoint,
   ``result.json`` and the plots (rank 0).
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import numpy as np

from hpctrain.env import RankInfo, placement_line, rank_info
from hpctrain.errors import ConfigError
from hpctrain.fileio import append_jsonl, atomic_write_text
from hpctrain.rundir import METRICS, RESULT, RunDir  # noqa: F401 - RESULT: public name, kept here
from hpctrain.train.build import get_comm, make_optimizer
from hpctrain.train.config import TrainConfig
from hpctrain.train.plan import Plan, check_runtime
from hpctrain.train.provenance import RESOLVED, write_resolved  # noqa: F401 - RESOLVED: public name, kept here
from hpctrain.train.checkpoint import state_mismatch  # noqa: F401 - public name, kept here
from hpctrain.train.result import Progress, TrainResult
from hpctrain.train.rng import rng_state, seed_all, set_rng_state



class Trainer:
    """One training run on this rank. Use :func:`train`."""

    def __init__(self, cfg: TrainConfig, info: RankInfo, plan: Plan,
                 stop_requested: Callable[[], bool] | None = None):
        import torch

        from hpctrain.train import data as D
        from hpctrain.train.callbacks import EarlyStopping, mode_of
        from hpctrain.train.losses import Criterion, balanced_weights, inverse_frequency
        from hpctrain.train.schedules import Plateau

        self.cfg, self.info, self.plan, self.stop_requested = cfg, info, plan, stop_requested
        self.run_dir = Path(cfg.run.dir)
        self.ckpt_dir = RunDir(self.run_dir).checkpoints
        self.torch = torch
        if cfg.run.threads:
            torch.set_num_threads(cfg.run.threads)
        if cfg.run.deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
            torch.use_deterministic_algorithms(True)
            # oneDNN's CPU convolutions were seen to differ in the last bits between the first
            # run in a process and later ones (measured; see docs/training.md), which breaks
            # bit-exact resume; the native kernels do not.
            torch.backends.mkldnn.enabled = False
        self.ckpt_key = D.load_keys(cfg)  # before anything reads an encrypted shard or checkpoint
        self.data_info = D.describe(cfg.data.dir, cfg.data.train_split, cfg.data.val_split)
        self.comm = get_comm(cfg, info)
        self.rank, self.world = self.comm.rank, self.comm.size
        self.root = self.rank == 0
        if cfg.run.device == "cuda" or (cfg.run.device == "auto" and torch.cuda.is_available()):
            if not torch.cuda.is_available():
                raise ConfigError("run.device=cuda but torch sees no CUDA device; use run.device=auto")
            # One rank per GPU: the local rank picks the device.
            torch.cuda.set_device(info.local_rank % torch.cuda.device_count())
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")

        # The model starts identical everywhere (same seed, then a broadcast for certainty);
        # dropout, augmentation and other draws use per-rank streams.
        seed_all(cfg.run.seed)
        from hpctrain.train.models import load_transfer, model_from_config

        self.regression = self.data_info.regression
        self.model = model_from_config(cfg.model, self.data_info.sample_shape, self.data_info.num_outputs,
                                       self.regression)
        self.transfer = cfg.model.init_from is not None
        self.fresh_head: list[str] = []
        if self.transfer:
            from hpctrain.train.checkpoint import load

            self.fresh_head = load_transfer(self.model, load(Path(cfg.model.init_from))["model"])
        if cfg.model.freeze:
            from hpctrain.train.plan import frozen_names

            names = frozen_names(cfg.model.freeze, [n for n, _ in self.model.named_parameters()])
            for n, p in self.model.named_parameters():
                if n in names:
                    p.requires_grad_(False)
        # The one seam of pipeline parallelism (parallel.pipeline_stages > 1): self.pipe holds this
        # rank's stage (hpctrain.train.pipeline_stage) and replaces the model, the forward/backward
        # pass, the exchange, checkpoint contents and evaluation; the data is read per replica.
        self.pipe = None
        self.data_rank, self.data_world = self.rank, self.world
        if plan.stages > 1:
            from hpctrain.train.pipeline import Layout

            layout = Layout(world_size=self.world, stages=plan.stages, rank=self.rank)
            self.data_rank, self.data_world = layout.replica, layout.replicas
        else:
            self.model.to(self.device)
            from hpctrain.train.precision import make_scaler

            # the compiled wrapper runs forward passes; self.model keeps the plain parameter names in checkpoints
            self.forward = torch.compile(self.model) if cfg.run.compile else self.model
            self.scaler = make_scaler(cfg.run.precision, self.device)
            opt = make_optimizer(cfg, self.model, self.transfer)
            self.exchange = self.comm.gradient_exchange(self.model, opt, compression=cfg.comm.fp16_compression,
                                                        backward_passes_per_step=plan.accum,
                                                        bucket_mb=cfg.comm.bucket_mb)
            self.optimizer = self.exchange.optimizer
        seed_all(cfg.run.seed + 1000 * self.rank)

        self.loader = D.make_train_loader(cfg, self.data_rank, self.data_world, plan.batch_size)
        if self.epoch_steps(0) == 0:
            raise ConfigError(f"comm.backward_passes_per_step={plan.accum} exceeds the {len(self.loader)} batches "
                              "per epoch; lower it or data.batch_size")
        full = sum(self.epoch_steps(e) for e in range(cfg.run.epochs))
        self.total_steps = min(full, cfg.run.max_steps) if cfg.run.max_steps else full
        # every stage of a replica draws the same augmentation stream: its first and last stages
        # must see the same augmented batch
        self.prep = D.Preprocess(self.data_info.classes, cfg.imputation.imputer, cfg.imputation.on_nan,
                                 cfg.augmentation.ops, cfg.run.seed, self.data_rank)
        self.val = None
        if cfg.data.val_split:
            self.val = D.val_arrays(cfg.data.dir, cfg.data.val_split, self.data_rank, self.data_world)

        k = self.data_info.num_classes
        counts = {self.data_info.classes.index(c) if c in self.data_info.classes else c: n
                  for c, n in self.data_info.train_counts.items()}
        weight = None
        if cfg.imbalance.class_weights == "balanced":
            weight = balanced_weights(counts, k)
        elif cfg.imbalance.sampling == "weighted":
            weight = inverse_frequency(counts, k)
        self.criterion = Criterion(cfg.imbalance.loss, weight=weight, gamma=cfg.imbalance.focal_gamma,
                                   label_smoothing=cfg.regularization.label_smoothing)
        if cfg.loss.module is not None or self.regression:
            from hpctrain.train.config import LossConfig
            from hpctrain.train.losses import loss_from_config

            self.criterion = loss_from_config(cfg.loss if cfg.loss.module is not None else LossConfig(module="mse"))
        self.eval_criterion = Criterion(cfg.imbalance.loss, weight=None, gamma=cfg.imbalance.focal_gamma)
        if plan.stages > 1:
            self._setup_pipeline()
        from hpctrain.train.plan import monitor_for

        self.monitor = monitor = monitor_for(cfg, self.regression)
        self.early = EarlyStopping(monitor, cfg.regularization.patience, cfg.regularization.min_delta,
                                   enabled=cfg.regularization.early_stopping)
        self.plateau = Plateau(mode_of(monitor), cfg.schedule.plateau_patience, cfg.schedule.gamma) \
            if cfg.schedule.kind == "plateau" else None
        self.step = 0
        self.epoch = 0
        self.acc = {"loss_sum": 0.0, "batches": 0}
        self.resumed_from: str | None = None
        self._positioned = False  # True when a resume already put the loader mid-epoch
        self.tb = None
        from hpctrain.train.metrics import resolve_metrics

        self.extra_metrics = resolve_metrics(cfg.metrics.extra)
        self.sampler = None  # hpctrain.monitor.sampler.RankMonitor while monitoring

    def _setup_pipeline(self) -> None:
        """Split self.model (built whole, on the host, identically on every rank) into this rank's
        stage; the stage replaces the model, its exchange the gradient exchange."""
        from hpctrain.train.pipeline import Layout
        from hpctrain.train.pipeline_stage import PipelineRuntime, named_for_optimizer

        cfg = self.cfg
        self.pipe = PipelineRuntime(model=self.model, layout=Layout(world_size=self.world, stages=self.plan.stages,
                                                                    rank=self.rank),
                                    device=self.device, microbatches=self.plan.microbatches,
                                    schedule=cfg.parallel.schedule, criterion=self.criterion,
                                    timeout_s=cfg.comm.timeout_s)
        self.model = self.forward = self.pipe.module
        self.scaler = None
        # the optimizer sees the unsplit model's parameter names (transfer learning's head/body groups)
        opt = make_optimizer(cfg, named_for_optimizer(self.pipe), self.transfer)
        self.exchange = self.pipe.exchange(opt, cfg.optimizer.clip_grad_norm)
        self.optimizer = opt

    def epoch_steps(self, epoch: int) -> int:
        """Optimizer steps in ``epoch`` (the loader's batch count may vary by one between epochs)."""
        return self.loader.plan(epoch).batches // self.plan.accum

    # -- checkpoints -------------------------------------------------------------------------
    def _payload(self, loader_state: dict | None, rng_states: list, stages: list | None = None) -> dict:
        """Rank 0. ``stages``: every rank's PipelineRuntime.stage_state (a pipeline run)."""
        if stages is not None:
            merged = self.pipe.merge(stages)
            payload = self._payload(loader_state, rng_states)  # then the whole pipeline's model and optimizer
            payload.update(model=merged["model"], optimizer=merged["optimizer"], pipeline=merged["pipeline"])
            payload["early"] = {**payload["early"], "best_state": merged["early_best"]}
            return payload
        from hpctrain.config import to_dict

        return {"format": 1, "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
                "optimizer": self.optimizer.state_dict(), "step": self.step, "epoch": self.epoch,
                "loader": loader_state, "rng": rng_states, "world_size": self.world,
                "plateau": self.plateau.state_dict() if self.plateau else None,
                "early": self.early.state_dict(), "acc": dict(self.acc),
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "classes": list(self.data_info.classes), "sample_shape": list(self.data_info.sample_shape),
                "targets": self.data_info.targets,
                "config": json.loads(json.dumps(to_dict(self.cfg)))}

    def checkpoint(self, *, mid_epoch: bool) -> None:
        """Collective: gathers every rank's RNG state; rank 0 writes."""
        from hpctrain.train import checkpoint as C

        states = self.comm.gather({**rng_state(), "augment": self.prep.state_dict()})
        stages = self._gather_stages()
        if self.root:
            loader_state = self.loader.state_dict() if mid_epoch else None
            C.save(self.ckpt_dir, self.step, self._payload(loader_state, states, stages),
                   keep=self.cfg.checkpoint.keep, key=self.ckpt_key)
        self.comm.barrier()  # nobody runs ahead of a checkpoint that may be needed to resume them

    def _gather_stages(self) -> list | None:
        """Collective in a pipeline run (every stage's state to rank 0); None otherwise."""
        if self.pipe is None:
            return None
        return self.comm.gather(self.pipe.stage_state(self.optimizer, self.early))

    def resume(self) -> None:
        from hpctrain.train import checkpoint as C

        name, ck = None, None
        if self.root and self.cfg.checkpoint.resume:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", C.CheckpointWarning)
                found = C.newest_valid(self.ckpt_dir)
            for w in caught:
                print(f"hpctrain train: warning: {w.message}", file=sys.stderr, flush=True)
            if found:
                name, ck = str(found[0]), found[1]  # loaded once, while newest_valid checked it
        name = self.comm.broadcast(name)
        if name is None:
            if self.pipe is not None:
                self.pipe.broadcast_stage()
            else:
                self.comm.broadcast_model(self.model, self.optimizer)
            return
        if ck is None:
            ck = C.load(Path(name))  # the run dir is on a shared file system: every other rank reads it
        if self.pipe is not None:
            self.pipe.check_checkpoint(ck, name)
        elif ck.get("pipeline"):
            n = ck["pipeline"].get("stages")
            raise ConfigError(f"cannot resume from {name}: it was written by a pipeline of {n} stages, this run has "
                              f"parallel.pipeline_stages=1; resume with parallel.pipeline_stages={n} (and "
                              "comm.backend=torch), or start a new run with model.init_from pointing at it")
        diff = state_mismatch(ck["model"], self.pipe.full_shapes if self.pipe is not None else self.model.state_dict())
        if diff:
            raise ConfigError(
                f"cannot resume from {name}: it was written by a different model ({diff}). The config's model "
                f"section changed since this run started; restore it (the run's config.resolved.json has the old "
                f"one) or start a new run with another run.dir")
        if self.pipe is None:
            self.model.load_state_dict(ck["model"])
            self.optimizer.load_state_dict(ck["optimizer"])
        self.step, self.epoch = int(ck["step"]), int(ck["epoch"])
        if self.plateau is not None and ck.get("plateau"):
            self.plateau.load_state_dict(ck["plateau"])
        self.early.load_state_dict(ck["early"])
        if self.pipe is not None:
            self.pipe.load(ck, self.optimizer, self.early)  # this stage's share, best weights included
        if self.scaler is not None and ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.acc = dict(ck.get("acc") or self.acc)
        if ck.get("world_size") == self.world and ck.get("rng"):
            set_rng_state(ck["rng"][self.rank])
            self.prep.load_state_dict(ck["rng"][self.rank].get("augment"))
            if ck.get("loader") is not None:
                self.loader.set_epoch(self.epoch)
                self.loader.load_state_dict(ck["loader"])
                self._positioned = True
        elif self.root:
            print(f"hpctrain train: warning: {name} was written by {ck.get('world_size')} ranks, this run has "
                  f"{self.world}; resuming weights and optimizer, not the exact RNG/loader position", file=sys.stderr)
        self.resumed_from = name
        if self.root:
            self._truncate_metrics(self.step)
            print(f"hpctrain train: resumed from {name} (step {self.step}, epoch {self.epoch})", file=sys.stderr,
                  flush=True)

    def _truncate_metrics(self, step: int) -> None:
        # Records written after the checkpoint would appear twice once the run redoes those steps.
        from hpctrain.train.plots import read_metrics

        path = self.run_dir / METRICS
        rows = [r for r in read_metrics(path) if r.get("step", 0) <= step and
                not (r.get("kind") == "epoch" and r.get("epoch", -1) >= self.epoch)]
        atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))

    # -- evaluation --------------------------------------------------------------------------
    def evaluate(self, keep_predictions: bool = False) -> dict:
        """Collective: validation metrics summed over ranks (see hpctrain.train.evaluate)."""
        from hpctrain.train.evaluate import Evaluator

        forward, val = self.forward, self.val
        if self.pipe is not None:  # the outputs come out of the last stage; the other stages score no rows
            forward, val = self.pipe.evaluation(self.prep, self.val)
        return Evaluator(comm=self.comm, forward=forward, model=self.model, prep=self.prep, val=val,
                         device=self.device, precision=self.cfg.run.precision,
                         num_classes=self.data_info.num_classes, targets=self.data_info.targets,
                         extra_metrics=self.extra_metrics)(keep_predictions)

    # -- the loop ----------------------------------------------------------------------------
    def _set_lr(self) -> float:
        from hpctrain.train.schedules import lr_at

        lr = lr_at(self.cfg.schedule, peak=self.plan.lr, step=self.step, epoch=self.epoch,
                   total_steps=self.total_steps, world_size=self.data_world, plateau=self.plateau)
        for g in self.optimizer.param_groups:
            g["lr"] = lr * g.get("lr_scale", 1.0)
        return lr

    def _log(self, record: dict) -> None:
        if self.root:
            append_jsonl(self.run_dir / METRICS, record, fsync=False)
            if self.tb is not None:
                for k, v in record.items():
                    if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                        self.tb.add_scalar(f"{record['kind']}/{k}", v, record["step"])

    def _l1(self):
        l1 = self.cfg.regularization.l1
        if not l1:
            return 0.0
        return l1 * sum(p.abs().sum() for n, p in self.model.named_parameters() if p.requires_grad and p.dim() > 1)

    def _owned(self, t):
        """The batch in fresh torch-allocated memory on the device. Vectorised CPU reductions
        split work by memory alignment, so a batch that is a view at another offset of some
        buffer (loader, augmentation) can sum in another order: a fresh copy keeps a resumed
        run bit-for-bit equal to an uninterrupted one. The copy costs far less than a step."""
        if self.device.type == "cpu":
            return t.clone(memory_format=self.torch.contiguous_format)
        return t.to(self.device, non_blocking=True)

    def _stop_agreed(self) -> bool:
        if self.stop_requested is None:
            return False
        return self.comm.any_true(bool(self.stop_requested()))

    def run(self) -> TrainResult:
        from hpctrain.train.precision import apply_step, autocast

        cfg = self.cfg
        self.resume()
        if self.sampler is not None:
            self.sampler.step = self.step  # samples before the first step name the resumed step
        if self.root and cfg.logging.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(RunDir(self.run_dir).tensorboard))
        progress = Progress(cfg.logging.progress and self.root, self.total_steps)
        accum = self.plan.accum
        stop_early = self.early.enabled and self.early.bad_epochs >= self.early.patience
        t_log, n_log = time.perf_counter(), 0
        self.model.train()
        while self.epoch < cfg.run.epochs and self.step < self.total_steps and not stop_early:
            if not self._positioned:
                self.loader.set_epoch(self.epoch)
            self._positioned = False
            it = iter(self.loader)
            t_epoch = time.perf_counter()
            steps_per_epoch = self.epoch_steps(self.epoch)
            while self.step < self.total_steps and self.acc["batches"] < steps_per_epoch:
                t_step = time.perf_counter()
                if self._stop_agreed():
                    progress.close()
                    self.checkpoint(mid_epoch=True)
                    return TrainResult("interrupted", self.step, self.epoch, {}, self.run_dir, self.resumed_from)
                lr = self._set_lr()
                self.exchange.zero_grad()
                got = 0
                step_loss = 0.0
                wait_s = h2d_s = 0.0  # perf_counter pairs: tens of ns each, far below a step
                t_fetch = time.perf_counter()
                for x, y in it:
                    wait_s += time.perf_counter() - t_fetch
                    x = self.prep.features(x)
                    y = self.prep.labels(y)
                    x, y = self.prep.augment(x, y)
                    t_copy = time.perf_counter()
                    x, y = self._owned(x), self._owned(y)
                    h2d_s += time.perf_counter() - t_copy
                    if self.pipe is not None:  # every microbatch's forward and backward, through the stages
                        step_loss += self.pipe.train_batch(x, y) / accum
                    else:
                        with autocast(self.device, cfg.run.precision):
                            loss = self.criterion(self.forward(x), y)
                        # through the exchange: the mpi/torch backends fold the 1/world averaging into it
                        total = loss / accum + self._l1()
                        self.exchange.backward(total if self.scaler is None else self.scaler.scale(total))
                        step_loss += float(loss.detach()) / accum
                    got += 1
                    if got == accum:
                        break
                    t_fetch = time.perf_counter()
                if got < accum:
                    raise RuntimeError(f"the loader ended after {self.acc['batches']} of {steps_per_epoch} "
                                       f"steps of epoch {self.epoch}; its len() and its batches disagree")
                t_exchange = time.perf_counter()
                # a pipeline's exchange clips by the norm over all its stages itself
                apply_step(self.exchange, self.model.parameters(), scaler=self.scaler,
                           clip_grad_norm=cfg.optimizer.clip_grad_norm if self.pipe is None else None)
                self.step += 1
                if self.sampler is not None:
                    t_end = time.perf_counter()
                    self.sampler.add_step(self.step, t_end - t_step, wait_s, t_end - t_exchange, h2d_s)
                    if self.step % cfg.monitor.gather_every_steps == 0:
                        self.sampler.gather(self.comm)
                self.acc["loss_sum"] += step_loss
                self.acc["batches"] += 1
                n_log += accum * self.plan.batch_size * self.data_world
                if self.step % cfg.logging.every_steps == 0 or self.step == self.total_steps:
                    # data_world ranks hold a loss: every rank, or a pipeline's last stages
                    mean_loss = float(self.comm.allreduce(np.array([step_loss]))[0]) / self.data_world
                    dt = time.perf_counter() - t_log
                    self._log({"kind": "step", "step": self.step, "epoch": self.epoch, "loss": mean_loss, "lr": lr,
                               "samples_per_s": n_log / dt if dt > 0 else None})
                    t_log, n_log = time.perf_counter(), 0
                    progress.update(self.step, self.epoch, mean_loss)
                if cfg.checkpoint.every_steps and self.step % cfg.checkpoint.every_steps == 0:
                    self.checkpoint(mid_epoch=True)
            if self.acc["batches"] < steps_per_epoch:
                break  # run.max_steps ended the run inside an epoch
            stop_early = self._end_epoch(time.perf_counter() - t_epoch)
        progress.close()
        if self.sampler is not None:
            self.sampler.flush()
            self.sampler.gather(self.comm)  # the last straggler check, and alerts raised since the previous one
        return self._finish()

    def start_monitor(self) -> None:
        """The per-rank sampler (monitor.enabled) and Horovod's timeline (comm.timeline)."""
        cfg = self.cfg
        if cfg.comm.timeline:
            RunDir(self.run_dir).monitor.mkdir(parents=True, exist_ok=True)
            try:
                self.comm.hvd.start_timeline(str(RunDir(self.run_dir).timeline))
            except ValueError as e:  # Horovod was started earlier in this process without the variable
                raise ConfigError(f"comm.timeline: Horovod was initialised in this process before the timeline "
                                  f"was asked for ({e}); set HOROVOD_TIMELINE=DYNAMIC before the first run, or "
                                  "run this one in its own process") from None
        if cfg.monitor.enabled:
            from hpctrain.monitor.sampler import RankMonitor

            cuda = self.device.index if self.device.type == "cuda" else None
            self.sampler = RankMonitor(cfg.monitor, self.run_dir, rank=self.rank, node=self.info.node,
                                       cuda_index=cuda)
            self.sampler.start()

    def stop_monitor(self, clean: bool = True) -> None:
        """Local only (it also runs after an exception): no collective here. After an exception
        Horovod's timeline is left alone: its background thread may be what failed."""
        if self.sampler is not None:
            self.sampler.close()
            self.sampler = None
        if self.cfg.comm.timeline and clean:
            self.comm.hvd.stop_timeline()

    def _end_epoch(self, seconds: float) -> bool:
        cfg = self.cfg
        train_loss = float(self.comm.allreduce(np.array([self.acc["loss_sum"] / max(1, self.acc["batches"])]))[0]
                           ) / self.data_world
        rec: dict[str, Any] = {"kind": "epoch", "epoch": self.epoch, "step": self.step, "train_loss": train_loss,
                               "lr": self.optimizer.param_groups[-1]["lr"], "seconds": seconds}
        stop = False
        if self.val is not None:
            ev = self.evaluate()
            ev.pop("confusion")
            rec.update(ev)
            value = ev[self.monitor]
            if self.plateau is not None:
                self.plateau.update(value, cfg.regularization.min_delta)
            stop = self.early.update(value, self.epoch, self.model)
            rec["best_epoch"] = self.early.best_epoch
        self._log(rec)
        self.acc = {"loss_sum": 0.0, "batches": 0}
        self.epoch += 1
        if cfg.checkpoint.every_epoch:
            self.checkpoint(mid_epoch=False)
        if stop and self.root:
            print(f"hpctrain train: early stopping at epoch {self.epoch - 1}: {self.monitor} did not "
                  f"improve for {cfg.regularization.patience} epochs (best {self.early.best:.4f} at epoch "
                  f"{self.early.best_epoch})", file=sys.stderr, flush=True)
        return stop

    def _finish(self) -> TrainResult:
        from hpctrain.train import checkpoint as C

        cfg = self.cfg
        restored = cfg.regularization.early_stopping and self.early.restore(self.model)
        metrics: dict[str, Any] = {"best_epoch": self.early.best_epoch, "restored_best": bool(restored)}
        confusion = pred_true = None
        if self.val is not None:
            ev = self.evaluate(keep_predictions=True)
            confusion = ev.pop("confusion")
            gathered = ev.pop("pred_true", None)
            if gathered:  # rank 0: every rank's share of the validation rows
                pred_true = (np.concatenate([p for p, _ in gathered]), np.concatenate([t for _, t in gathered]))
            metrics.update(ev)
            if confusion is not None:
                metrics["confusion"] = confusion
        states = self.comm.gather({**rng_state(), "augment": self.prep.state_dict()})
        stages = self._gather_stages()
        if self.root:
            payload = self._payload(None, states, stages)
            C.save(self.ckpt_dir, self.step, payload, keep=cfg.checkpoint.keep, key=self.ckpt_key)
            C.save_file(RunDir(self.run_dir).final_checkpoint, payload, key=self.ckpt_key)
            RunDir(self.run_dir).write_result({"status": "completed", "step": self.step, "epoch": self.epoch,
                                               "metrics": metrics})
            if cfg.logging.plots:
                from hpctrain.train.plots import write_plots

                names = self.data_info.class_names or [str(c) for c in self.data_info.classes]
                write_plots(self.run_dir, confusion, names, title=cfg.run.name, pred_true=pred_true)
            if self.tb is not None:
                self.tb.close()
        self.comm.barrier()
        self.exchange.close()
        return TrainResult("completed", self.step, self.epoch, metrics, self.run_dir, self.resumed_from)


def train(cfg: TrainConfig, *, stop_requested: Callable[[], bool] | None = None) -> TrainResult:
    """Train (or resume, or recognise as finished) the run ``cfg.run.dir``; see the module doc."""
    from hpctrain.secure.perms import private_umask

    # before anything is created: checkpoints, logs and plots private whatever the user's umask;
    # the caller's umask comes back afterwards (train() is also a library call)
    old = private_umask(cfg.run.group_share)
    try:
        return _train(cfg, stop_requested)
    finally:
        os.umask(old)


def _train(cfg: TrainConfig, stop_requested: Callable[[], bool] | None) -> TrainResult:
    from hpctrain.secure.perms import make_private_dir

    info = rank_info()
    plan = check_runtime(cfg, info.world_size)
    run_dir = Path(cfg.run.dir)
    done = RunDir(run_dir).read_result()
    if done and done.get("status") == "completed":
        return TrainResult("completed", int(done.get("step", 0)), int(done.get("epoch", 0)),
                           dict(done.get("metrics") or {}), run_dir, None)
    if cfg.logging.tensorboard:
        from hpctrain.extras import require

        require("tensorboard", "logging.tensorboard (or set logging.tensorboard=false)")
    trainer = Trainer(cfg, info, plan, stop_requested)
    # Which rank ran where: the first thing to know about a hung or slow multi-node job.
    placement = trainer.comm.gather({"node": info.node, "local_rank": info.local_rank, "pid": os.getpid(),
                                            "device": str(trainer.device)})
    if trainer.root:
        make_private_dir(run_dir, cfg.run.group_share)
        write_resolved(cfg, info, plan, placement)
        if info.world_size > 1:
            print(f"hpctrain train: {placement_line(placement)}", file=sys.stderr, flush=True)
    trainer.start_monitor()
    try:
        result = trainer.run()
    except BaseException:
        trainer.stop_monitor(clean=False)
        raise
    trainer.stop_monitor()
    return result
