"""The pipeline stage runtime: this rank's stage of the model, its schedule, its gradient group,
its share of checkpoints and evaluation. The trainer holds one :class:`PipelineRuntime` when
``parallel.pipeline_stages > 1`` (``Trainer.pipe``); the layout and the split are the pure
:mod:`hpctrain.train.pipeline`.

* **Engine.** ``torch.distributed.pipelining``: a ``PipelineStage`` around this rank's blocks,
  driven by ``ScheduleGPipe`` or ``Schedule1F1B`` over the replica's pipeline group, on the
  process group of the ``torch`` comm backend (gloo on CPU, nccl on GPUs), whose rendezvous works
  under mpirun, ``hpctrain launch`` and srun alike. The loss is the mean over microbatches
  (``scale_grads=True``), so one step's gradient is the gradient of the batch mean, as without
  a pipeline.
* **Gradient groups.** After the schedule's backward, each stage's gradients are averaged over
  the R ranks holding that stage (a ``dist.new_group`` per stage): one flat allreduce per step.
  torch subgroups, not Horovod process sets: the activations already travel on torch.distributed,
  and one runtime means one set of timeouts and no second background thread on the cores.
* **Evaluation** is a forward-only pass written here with ``dist.send``/``recv`` of a shape
  header and the tensor: the library's ``schedule.eval`` reuses the shapes it inferred at the
  first training step, and validation blocks have other sizes (the last one is short).
* **Checkpoints.** Every rank of replica 0 sends its stage's weights (under the unsplit model's
  names), optimizer state and early-stopping best weights to rank 0, which writes ONE ordinary
  checkpoint (atomic, ``latest`` pointer last) with a ``pipeline`` entry. Predict, export and
  serve read it like any other; a resume loads each stage's names from it.
"""

from __future__ import annotations

import datetime
from typing import Any

from hpctrain.errors import ConfigError
from hpctrain.train.pipeline import Layout, block_costs, sequential_blocks, split_balanced, stage_names

_GROUPS: dict[tuple[int, int], tuple[Any, list, list]] = {}


def groups(layout: Layout, timeout_s: int) -> tuple[Any, Any]:
    """(this rank's pipeline group, its stage's data-parallel group or None). Every rank creates
    every group in the same order (dist.new_group is collective); cached per (W, S) while the
    world process group lives, since a process that trains twice (tests, sweeps) keeps it."""
    import torch.distributed as dist

    key = (layout.world_size, layout.stages)
    world = dist.group.WORLD
    if key not in _GROUPS or _GROUPS[key][0] is not world:
        t = datetime.timedelta(seconds=timeout_s)
        pipes = [dist.new_group(layout.pipeline_ranks(r), timeout=t) for r in range(layout.replicas)]
        dps = [dist.new_group(layout.stage_ranks(s), timeout=t) for s in range(layout.stages)] \
            if layout.replicas > 1 else [None] * layout.stages
        _GROUPS[key] = (world, pipes, dps)
    _, pipes, dps = _GROUPS[key]
    return pipes[layout.replica], dps[layout.stage]


class PipelineRuntime:
    """This rank's stage. Build it on every rank with the same full model (same seed)."""

    def __init__(self, *, model, layout: Layout, device, microbatches: int, schedule: str, criterion,
                 timeout_s: int = 60):
        import torch
        from torch import nn

        self.torch = torch
        self.layout, self.device, self.microbatches, self.schedule_name = layout, device, microbatches, schedule
        blocks = sequential_blocks(model)
        self.bounds = split_balanced(block_costs(blocks), layout.stages)
        names = stage_names(model, blocks, self.bounds)
        s = layout.stage
        self.module = nn.Sequential(*blocks[self.bounds[s]:self.bounds[s + 1]])
        # stage-local state-dict name -> the unsplit model's name, by tensor identity (before any move)
        full = model.state_dict(keep_vars=True)
        by_id = {id(t): n for n, t in full.items() if n in set(names[s])}
        self.to_full = {local: by_id[id(t)] for local, t in self.module.state_dict(keep_vars=True).items()}
        self.to_local = {f: loc for loc, f in self.to_full.items()}
        # shapes of the whole model, to check a checkpoint against (no tensor memory)
        self.full_shapes = {n: torch.empty(t.shape, device="meta") for n, t in full.items()}
        self.full_order = list(full)
        self.module.to(device)
        self.pipe_group, self.dp_group = groups(layout, timeout_s)
        self.pipe_ranks = layout.pipeline_ranks(layout.replica)
        from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

        self.stage = PipelineStage(self.module, s, layout.stages, device, group=self.pipe_group)
        cls = ScheduleGPipe if schedule == "gpipe" else Schedule1F1B
        self.schedule = cls(self.stage, microbatches, loss_fn=criterion, scale_grads=True)
        self.busy_s = 0.0  # time in train_batch (the benchmark's per-stage busy time is measured apart)

    # -- training --------------------------------------------------------------------------
    def train_batch(self, x, y) -> float:
        """One batch through the schedule (forward and backward of every microbatch); gradients
        accumulate in the stage's parameters. Returns the batch's mean loss on the last stage,
        0.0 elsewhere."""
        lay = self.layout
        losses: list = []
        if lay.is_first:
            self.schedule.step(x, return_outputs=False)
        elif lay.is_last:
            self.schedule.step(target=y, losses=losses, return_outputs=False)
        else:
            self.schedule.step(return_outputs=False)
        if not lay.is_last:
            return 0.0
        return float(sum(float(v.detach()) for v in losses) / len(losses))

    def exchange(self, optimizer, clip_grad_norm: float | None) -> StageExchange:
        return StageExchange(self, optimizer, clip_grad_norm)

    def broadcast_stage(self) -> None:
        """Make the stage's weights equal on its R ranks (they are already: same seed; for certainty)."""
        if self.dp_group is None:
            return
        src = self.layout.stage_ranks(self.layout.stage)[0]
        for t in self.module.state_dict(keep_vars=True).values():
            self.torch.distributed.broadcast(t.data, src=src, group=self.dp_group)

    # -- evaluation ------------------------------------------------------------------------
    def forward_only(self, inputs, count: int) -> list | None:
        """Collective over the pipeline: ``count`` blocks forward through the stages (stage 0 takes
        them from ``inputs``, an iterator of tensors on the device). The last stage returns the
        outputs, in order; the others None. Eval mode, no autograd."""
        import torch.distributed as dist

        torch = self.torch
        lay = self.layout
        prev = self.pipe_ranks[lay.stage - 1] if not lay.is_first else None
        nxt = self.pipe_ranks[lay.stage + 1] if not lay.is_last else None
        outs = []
        was = self.module.training
        self.module.eval()
        try:
            with torch.no_grad():
                for _ in range(count):
                    if lay.is_first:
                        h = next(inputs)
                    else:
                        head = torch.zeros(9, dtype=torch.int64, device=self.device)
                        dist.recv(head, src=prev, group=self.pipe_group)
                        shape = [int(v) for v in head[1:1 + int(head[0])]]
                        h = torch.empty(shape, dtype=torch.float32, device=self.device)
                        dist.recv(h, src=prev, group=self.pipe_group)
                    out = self.module(h)
                    if lay.is_last:
                        outs.append(out)
                        continue
                    out = out.float().contiguous()
                    if out.dim() > 8:
                        raise ConfigError(f"parallel.pipeline_stages: stage {lay.stage} outputs a {out.dim()}-D "
                                          "tensor; at most 8 dimensions pass between stages")
                    head = torch.zeros(9, dtype=torch.int64, device=self.device)
                    head[0] = out.dim()
                    head[1:1 + out.dim()] = torch.tensor(out.shape, dtype=torch.int64)
                    dist.send(head, dst=nxt, group=self.pipe_group)
                    dist.send(out, dst=nxt, group=self.pipe_group)
        finally:
            self.module.train(was)
        return outs if lay.is_last else None

    def evaluation(self, prep, val) -> tuple:
        """Collective over the pipeline: (forward, val) for the Evaluator. The last stage gets this
        replica's validation rows and a forward that hands out the outputs the pipeline computed,
        block by block in the Evaluator's order; the other stages get no rows (their zeros add
        nothing to the sums over ranks)."""
        from hpctrain.train.evaluate import BLOCK

        torch = self.torch
        x, y = val
        count = -(-len(y) // BLOCK)
        inputs = None
        if self.layout.is_first:
            inputs = (prep.features(torch.from_numpy(x[lo:lo + BLOCK])).to(self.device)
                      for lo in range(0, len(y), BLOCK))
        outs = self.forward_only(inputs, count)
        if outs is None:
            return (lambda xb: None), (x[:0], y[:0])
        it = iter(outs)
        return (lambda xb: next(it)), val

    # -- checkpoints -----------------------------------------------------------------------
    def stage_state(self, optimizer, early) -> dict | None:
        """What this rank contributes to a checkpoint (None off replica 0: replicas are equal)."""
        if self.layout.replica != 0:
            return None
        best = early.best_state
        return {"stage": self.layout.stage,
                "model": {self.to_full[k]: v.detach().cpu() for k, v in self.module.state_dict().items()},
                "optimizer": optimizer.state_dict(),
                "early_best": None if best is None else {self.to_full[k]: v for k, v in best.items()}}

    def merge(self, parts: list) -> dict:
        """Rank 0: the checkpoint entries of the whole pipeline from every rank's stage_state."""
        by_stage = {p["stage"]: p for p in parts if p is not None}
        model: dict = {}
        for p in by_stage.values():
            model.update(p["model"])
        bests = [by_stage[s]["early_best"] for s in range(self.layout.stages)]
        best = None
        if all(b is not None for b in bests):
            best = {}
            for b in bests:
                best.update(b)
        return {"model": {n: model[n] for n in self.full_order},
                "optimizer": {"pipeline_stages": [by_stage[s]["optimizer"] for s in range(self.layout.stages)]},
                "early_best": best, "pipeline": self.describe()}

    def describe(self) -> dict:
        return {"stages": self.layout.stages, "boundaries": list(self.bounds), "microbatches": self.microbatches,
                "schedule": self.schedule_name}

    def check_checkpoint(self, ck: dict, name: str) -> None:
        got = (ck.get("pipeline") or {}).get("stages", 1)
        if got != self.layout.stages:
            raise ConfigError(
                f"cannot resume from {name}: it was written with parallel.pipeline_stages={got}, this run has "
                f"{self.layout.stages}; resume with pipeline_stages={got} (the optimizer state is per stage), or "
                "start a new run (another run.dir) with model.init_from pointing at that checkpoint")
        saved = ck["pipeline"].get("boundaries")
        if saved is not None and list(saved) != list(self.bounds):
            raise ConfigError(f"cannot resume from {name}: its stage boundaries {saved} differ from this run's "
                              f"{self.bounds} (the model changed); restore the model section or start a new run")

    def load(self, ck: dict, optimizer, early) -> None:
        """This stage's weights, optimizer state and best weights from a whole-pipeline checkpoint."""
        with self.torch.no_grad():
            for local, t in self.module.state_dict(keep_vars=True).items():
                t.copy_(ck["model"][self.to_full[local]])
        optimizer.load_state_dict(ck["optimizer"]["pipeline_stages"][self.layout.stage])
        best = early.best_state
        if best is not None:
            early.best_state = {loc: best[f] for f, loc in self.to_local.items()}


class StageExchange:
    """The optimizer step of a stage: average gradients over the stage's replicas, clip by the
    norm over the whole pipeline (every stage's share summed), step. The interface of
    :class:`hpctrain.comm.base.GradientExchange` that the trainer uses."""

    def __init__(self, rt: PipelineRuntime, optimizer, clip_grad_norm: float | None):
        self.rt, self.optimizer, self.clip = rt, optimizer, clip_grad_norm
        self.params = [p for p in rt.module.parameters() if p.requires_grad]

    def zero_grad(self) -> None:
        for p in self.params:
            if p.grad is not None:
                p.grad.zero_()

    def step(self) -> None:
        import torch.distributed as dist

        torch = self.rt.torch
        for p in self.params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        replicas = self.rt.layout.replicas
        if replicas > 1:
            flat = torch.cat([p.grad.reshape(-1) for p in self.params])
            dist.all_reduce(flat, group=self.rt.dp_group)
            flat.div_(replicas)
            off = 0
            for p in self.params:
                n = p.numel()
                p.grad.copy_(flat[off:off + n].view_as(p))
                off += n
        if self.clip is not None:
            local = torch.zeros(1, dtype=torch.float64, device=self.rt.device)
            for p in self.params:
                local += p.grad.detach().double().pow(2).sum()
            if self.rt.layout.stages > 1:
                dist.all_reduce(local, group=self.rt.pipe_group)
            coef = self.clip / (float(local.sqrt()) + 1e-6)
            if coef < 1.0:
                for p in self.params:
                    p.grad.mul_(coef)
        self.optimizer.step()

    def close(self) -> None:
        pass


class _Named:
    def __init__(self, pairs: list):
        self._pairs = pairs

    def named_parameters(self):
        return iter(self._pairs)


def named_for_optimizer(rt: PipelineRuntime) -> _Named:
    """The stage's parameters under the unsplit model's names (what make_optimizer groups by)."""
    return _Named([(rt.to_full[n], p) for n, p in rt.module.named_parameters()])
