"""Pipeline and hybrid parallelism, the pure part: which rank holds which stage of which
replica, how a model's sequential blocks split into contiguous stages, and the theoretical
bubble. No process group, no MPI; the stage runtime is :mod:`hpctrain.train.pipeline_stage`.

* **Layout.** W ranks, S stages, R = W / S data-parallel replicas. Ranks are stage-major:
  rank ``s * R + r`` holds stage ``s`` of replica ``r``. The R ranks of one stage are
  neighbours, so with ``--ntasks-per-node R`` under Slurm each node holds one stage: the big
  gradient allreduce stays inside a node, and only activations (one tensor per microbatch)
  cross nodes.
* **Blocks.** A model splits into its *sequential blocks*: ``model.pipeline_blocks()`` when it
  defines it (the built-in mlp, cnn and attention models do), else the children of an
  ``nn.Sequential``. Consecutive parameter-free children (ReLU, Flatten, pooling...) are glued
  to the parameter-holding child before them, so no stage is only an activation function.
* **Split.** Contiguous stages minimising the largest stage's parameter count (see
  :func:`split_balanced` for why parameters and not measured time).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from hpctrain.errors import ConfigError


@dataclass(frozen=True, slots=True)
class Layout:
    """Where rank ``rank`` sits in a W = S x R world (pure)."""

    world_size: int
    stages: int
    rank: int

    @property
    def replicas(self) -> int:
        return self.world_size // self.stages

    @property
    def stage(self) -> int:
        return self.rank // self.replicas

    @property
    def replica(self) -> int:
        return self.rank % self.replicas

    def pipeline_ranks(self, replica: int) -> list[int]:
        """The global ranks of replica ``replica``'s pipeline, stage 0 first."""
        return [s * self.replicas + replica for s in range(self.stages)]

    def stage_ranks(self, stage: int) -> list[int]:
        """The global ranks holding stage ``stage`` (its data-parallel group)."""
        return [stage * self.replicas + r for r in range(self.replicas)]

    @property
    def is_first(self) -> bool:
        return self.stage == 0

    @property
    def is_last(self) -> bool:
        return self.stage == self.stages - 1


def check_layout(world_size: int, stages: int) -> int:
    """The number of data-parallel replicas; ConfigError with the arithmetic when S does not divide W."""
    if stages < 1:
        raise ConfigError(f"parallel.pipeline_stages: got {stages}, expected at least 1")
    if world_size % stages:
        lo = world_size - world_size % stages
        hint = f"{lo} or {lo + stages}" if lo else f"{stages}"
        raise ConfigError(f"parallel.pipeline_stages ({stages}) does not divide world_size ({world_size}); run "
                          f"{hint} ranks, or choose pipeline_stages among the divisors of {world_size}")
    return world_size // stages


def check_microbatches(microbatches: int, batch_size: int, stages: int, schedule: str) -> None:
    """Each rank's batch must cut into equal microbatches (the gradient is then exactly the
    batch mean), and 1F1B needs at least one microbatch per stage."""
    if batch_size % microbatches:
        raise ConfigError(f"parallel.microbatches ({microbatches}) does not divide the per-rank batch "
                          f"({batch_size}); choose microbatches among the divisors of {batch_size}, or change "
                          "data.batch_size (or data.global_batch_size)")
    if schedule == "1f1b" and microbatches < stages:
        raise ConfigError(f"parallel.schedule=1f1b needs parallel.microbatches ({microbatches}) >= "
                          f"parallel.pipeline_stages ({stages}); raise microbatches or use schedule=gpipe")


def split_balanced(costs: Sequence[float], stages: int) -> list[int]:
    """Stage boundaries ``[0, b1, ..., n]`` cutting ``costs`` (one per block, in order) into
    ``stages`` contiguous non-empty runs whose largest sum is as small as possible.

    Among the splits with that smallest maximum, the one whose boundaries come earliest is
    returned, so the result is a function of the costs alone: every rank computes the same
    split without talking to the others, and a resumed run computes the split it saved.

    Costs are parameter counts in the trainer. Parameters are deterministic (a measured time
    differs between ranks and between runs, and a different split on resume would not fit
    the saved optimizer state), they are the memory that pipelining exists to spread, and
    for the Linear layers of the built-in MLP the forward FLOPs are 2 x batch x parameters,
    so they balance compute too. For convolutions they do not (see docs/parallelism.md).
    Pure; O(n^2 x stages), n is a few dozen blocks.
    """
    n = len(costs)
    if stages < 1:
        raise ValueError(f"stages must be >= 1, got {stages}")
    if n < stages:
        raise ConfigError(f"parallel.pipeline_stages ({stages}) exceeds the model's {n} sequential block(s); "
                          f"use at most {n} stages, or a model with more layers")
    if any(c < 0 for c in costs):
        raise ValueError(f"block costs must be >= 0, got {list(costs)}")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    inf = float("inf")
    # best[k][i]: smallest max-stage cost of blocks [i, n) cut into k stages
    best = [[inf] * (n + 1) for _ in range(stages + 1)]
    best[0][n] = 0.0
    for k in range(1, stages + 1):
        for i in range(n - k, -1, -1):
            for j in range(i + 1, n - k + 2):  # first stage is [i, j); k - 1 stages for [j, n)
                v = max(prefix[j] - prefix[i], best[k - 1][j])
                if v < best[k][i]:
                    best[k][i] = v
    bounds, i = [0], 0
    for k in range(stages, 1, -1):
        # the earliest j that keeps the optimum
        for j in range(i + 1, n - k + 2):
            if max(prefix[j] - prefix[i], best[k - 1][j]) <= best[k][i]:
                bounds.append(j)
                i = j
                break
    bounds.append(n)
    return bounds


def bubble_fraction(stages: int, microbatches: int) -> float:
    """The idle share of a GPipe/1F1B step with equal stages: (S - 1) / (M + S - 1)."""
    return (stages - 1) / (microbatches + stages - 1)


def group_blocks(children: Sequence[Any], param_counts: Sequence[int]) -> list[list[Any]]:
    """Glue parameter-free children to the parameter-holding child before them (leading ones to
    the first holder). Pure: ``children`` are opaque, ``param_counts`` says which hold weights."""
    groups: list[list[Any]] = []
    lead: list[Any] = []
    for child, n in zip(children, param_counts):
        if n > 0:
            groups.append([*lead, child])
            lead = []
        elif groups:
            groups[-1].append(child)
        else:
            lead.append(child)
    if lead:  # no child holds parameters
        groups.append(lead)
    return groups


def sequential_blocks(model) -> list:
    """The model's sequential blocks as modules, in order (their composition is the model's
    forward). ConfigError for a model that does not say how it splits."""
    from torch import nn

    if hasattr(model, "pipeline_blocks"):
        children = list(model.pipeline_blocks())
    elif isinstance(model, nn.Sequential):
        children = list(model.children())
    else:
        raise ConfigError(f"parallel.pipeline_stages: a {type(model).__name__} cannot be split into pipeline "
                          "stages: hpctrain splits an nn.Sequential (its children) or a model with a "
                          "pipeline_blocks() method returning its blocks in order (each maps one tensor to one "
                          "tensor; their composition must equal forward). Add pipeline_blocks() to the model, or "
                          "set parallel.pipeline_stages=1")
    counts = [sum(p.numel() for p in c.parameters()) for c in children]
    return [g[0] if len(g) == 1 else nn.Sequential(*g) for g in group_blocks(children, counts)]


def block_costs(blocks) -> list[int]:
    """Parameter count of each block (shared parameters counted where they first appear)."""
    seen: set[int] = set()
    out = []
    for b in blocks:
        n = 0
        for p in b.parameters():
            if id(p) not in seen:
                seen.add(id(p))
                n += p.numel()
        out.append(n)
    return out


def stage_names(model, blocks, bounds: Sequence[int]) -> list[list[str]]:
    """For each stage, the model's state-dict names whose tensors its blocks hold (the checkpoint
    keeps the unsplit model's names, so predict/export read it like any other). ConfigError
    when the blocks leave a parameter or buffer out: it would never train or be saved."""
    full = model.state_dict(keep_vars=True)
    owner: dict[int, int] = {}
    for s in range(len(bounds) - 1):
        for b in blocks[bounds[s]:bounds[s + 1]]:
            for t in b.state_dict(keep_vars=True).values():
                owner.setdefault(id(t), s)
    missing = [n for n, t in full.items() if id(t) not in owner]
    if missing:
        raise ConfigError(f"parallel.pipeline_stages: the sequential blocks of {type(model).__name__} do not hold "
                          f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}; its pipeline_blocks() must "
                          "cover every parameter and buffer of the model")
    out: list[list[str]] = [[] for _ in range(len(bounds) - 1)]
    for n, t in full.items():
        out[owner[id(t)]].append(n)
    return out
