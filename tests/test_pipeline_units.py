"""Pipeline parallelism without MPI: the layout, the stage split, the blocks of the built-in
models, and the config errors with their arithmetic (hpctrain.train.pipeline, train/config.py)."""

from __future__ import annotations

import itertools

import pytest

from hpctrain.errors import ConfigError
from hpctrain.train.pipeline import (Layout, bubble_fraction, check_layout, check_microbatches, group_blocks,
                                     split_balanced)


def _max_stage(costs, bounds):
    return max(sum(costs[a:b]) for a, b in zip(bounds, bounds[1:]))


def _brute_best(costs, stages):
    n = len(costs)
    return min(_max_stage(costs, [0, *cut, n]) for cut in itertools.combinations(range(1, n), stages - 1))


@pytest.mark.parametrize("costs,stages,want", [
    ([1, 1, 1, 1], 2, [0, 2, 4]),
    ([10, 1, 1, 1, 1, 1], 2, [0, 1, 6]),  # the heavy first block alone
    ([1, 1, 1, 1, 1, 10], 2, [0, 5, 6]),
    ([3, 3, 3], 3, [0, 1, 2, 3]),
    ([5], 1, [0, 1]),
    ([0, 0, 0, 0], 2, [0, 1, 4]),  # ties: earliest boundaries, every stage non-empty
])
def test_split_examples(costs, stages, want):
    assert split_balanced(costs, stages) == want


def test_split_is_optimal_contiguous_and_deterministic_against_brute_force():
    import random

    rng = random.Random(7)
    for _ in range(300):
        n = rng.randint(1, 9)
        stages = rng.randint(1, n)
        costs = [rng.choice([0, 1, 2, 5, 40, 1000]) for _ in range(n)]
        b = split_balanced(costs, stages)
        assert b[0] == 0 and b[-1] == n and len(b) == stages + 1
        assert all(x < y for x, y in zip(b, b[1:])), (costs, stages, b)  # no empty stage
        assert _max_stage(costs, b) == _brute_best(costs, stages), (costs, stages, b)
        assert split_balanced(list(costs), stages) == b


def test_more_stages_than_blocks_is_a_config_error_with_the_counts():
    with pytest.raises(ConfigError, match=r"parallel.pipeline_stages \(4\) exceeds the model's 3 sequential block"):
        split_balanced([1, 2, 3], 4)


def test_layout_is_stage_major():
    w = [Layout(world_size=6, stages=3, rank=r) for r in range(6)]
    assert [(x.stage, x.replica) for x in w] == [(0, 0), (0, 1), (1, 0), (1, 1), (2, 0), (2, 1)]
    assert w[0].replicas == 2 and w[0].pipeline_ranks(1) == [1, 3, 5] and w[0].stage_ranks(2) == [4, 5]
    assert w[0].is_first and not w[0].is_last and w[5].is_last
    # every rank in exactly one pipeline and one stage group
    assert sorted(r for rep in range(2) for r in w[0].pipeline_ranks(rep)) == list(range(6))
    assert sorted(r for s in range(3) for r in w[0].stage_ranks(s)) == list(range(6))


def test_layout_errors_carry_the_arithmetic():
    assert check_layout(4, 2) == 2 and check_layout(2, 2) == 1
    with pytest.raises(ConfigError, match=r"parallel.pipeline_stages \(3\) does not divide world_size \(4\); run 3 or "
                                          r"6 ranks"):
        check_layout(4, 3)
    with pytest.raises(ConfigError, match=r"pipeline_stages \(2\) does not divide world_size \(1\); run 2 ranks"):
        check_layout(1, 2)


def test_microbatch_errors():
    check_microbatches(4, 16, 2, "1f1b")
    with pytest.raises(ConfigError, match=r"parallel.microbatches \(3\) does not divide the per-rank batch \(16"):
        check_microbatches(3, 16, 2, "gpipe")
    with pytest.raises(ConfigError, match=r"1f1b needs parallel.microbatches \(1\) >= parallel.pipeline_stages \(2\)"):
        check_microbatches(1, 16, 2, "1f1b")


def test_bubble():
    assert bubble_fraction(2, 1) == 0.5 and bubble_fraction(2, 8) == pytest.approx(1 / 9)
    assert bubble_fraction(1, 4) == 0.0


def test_parameter_free_children_join_the_holder_before_them():
    kids = ["flatten", "lin1", "relu", "drop", "lin2", "relu2", "head"]
    counts = [0, 10, 0, 0, 5, 0, 3]
    assert group_blocks(kids, counts) == [["flatten", "lin1", "relu", "drop"], ["lin2", "relu2"], ["head"]]
    assert group_blocks(["a", "b"], [0, 0]) == [["a", "b"]]


@pytest.mark.parametrize("kind,shape,kw,blocks", [
    ("mlp", (6,), {"hidden": [16, 8]}, 3),
    ("cnn", (1, 8, 8), {"channels": [4, 8]}, 3),
    ("attention", (5,), {"embed_dim": 8, "heads": 2, "layers": 2}, 4),
])
def test_builtin_models_compose_from_their_blocks(kind, shape, kw, blocks):
    import torch

    from hpctrain.train.models import build_model
    from hpctrain.train.pipeline import block_costs, sequential_blocks, stage_names

    torch.manual_seed(0)
    m = build_model(kind, shape, 3, **kw).eval()
    bl = sequential_blocks(m)
    assert len(bl) == blocks
    x = torch.randn(4, *shape)
    h = x
    for b in bl:
        h = b(h)
    assert torch.equal(h, m(x))
    bounds = split_balanced(block_costs(bl), 2)
    names = stage_names(m, bl, bounds)
    assert sorted(names[0] + names[1]) == sorted(m.state_dict())  # every tensor in exactly one stage
    assert sum(block_costs(bl)) == sum(p.numel() for p in m.parameters())


def test_a_model_that_cannot_be_split_says_how_to_make_it_splittable():
    from torch import nn

    from hpctrain.train.pipeline import sequential_blocks

    class Opaque(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(2, 2)

        def forward(self, x):
            return self.a(x)

    with pytest.raises(ConfigError, match="cannot be split into pipeline stages.*pipeline_blocks"):
        sequential_blocks(Opaque())
    assert len(sequential_blocks(nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2)))) == 2


def test_blocks_that_leave_a_parameter_out_are_refused():
    from torch import nn

    from hpctrain.train.pipeline import sequential_blocks, stage_names

    class Leaky(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.extra = nn.Linear(2, 2), nn.Linear(2, 2), nn.Linear(1, 1)

        def pipeline_blocks(self):
            return [self.a, self.b]

    m = Leaky()
    with pytest.raises(ConfigError, match="do not hold extra.weight, extra.bias"):
        stage_names(m, sequential_blocks(m), [0, 1, 2])


# -- the config: static checks and check_runtime's arithmetic --------------------------------

@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    from slurm_helpers import make_blobs

    return make_blobs(tmp_path_factory.mktemp("pipe") / "blobs", train=128, val=20, rows_per_shard=32)


def _cfg(blobs, tmp_path, **sections):
    from hpctrain.train.config import load_config

    d = {"run": {"name": "p", "dir": str(tmp_path / "run")}, "data": {"dir": str(blobs), "batch_size": 8},
         "model": {"kind": "mlp", "hidden": [16, 8]}, "comm": {"backend": "torch"},
         "parallel": {"pipeline_stages": 2, "microbatches": 4}}
    for k, v in sections.items():
        d[k] = {**d.get(k, {}), **v}
    return load_config(d)


def test_the_parallel_section_is_strict_and_documented(blobs, tmp_path):
    from hpctrain.train.config import reference_markdown

    with pytest.raises(ConfigError, match="pipeline_stage"):
        _cfg(blobs, tmp_path, parallel={"pipline_stages": 2})
    with pytest.raises(ConfigError, match="parallel.schedule"):
        _cfg(blobs, tmp_path, parallel={"schedule": "zigzag"})
    with pytest.raises(ConfigError, match=r"parallel.microbatches: got 0"):
        _cfg(blobs, tmp_path, parallel={"microbatches": 0})
    ref = reference_markdown()
    assert "`parallel.pipeline_stages`" in ref and "`parallel.microbatches`" in ref and "`parallel.schedule`" in ref


@pytest.mark.parametrize("section,value,match", [
    ("comm", {"backend": "horovod"}, "runs on torch.distributed.*set comm.backend=torch"),
    ("comm", {"backward_passes_per_step": 2}, "comm.backward_passes_per_step: not supported"),
    ("run", {"precision": "bf16"}, "run.precision: not supported"),
    ("regularization", {"l1": 0.1}, "regularization.l1: not supported"),
])
def test_what_a_pipeline_does_not_combine_with(blobs, tmp_path, section, value, match):
    with pytest.raises(ConfigError, match=match):
        _cfg(blobs, tmp_path, **{section: value})


def test_check_runtime_plans_replicas_and_reports_the_arithmetic(blobs, tmp_path):
    from hpctrain.train.plan import check_runtime

    plan = check_runtime(_cfg(blobs, tmp_path, schedule={"scale_lr": True}), 4)
    assert (plan.stages, plan.replicas, plan.microbatches, plan.batch_size) == (2, 2, 4, 8)
    assert plan.global_batch == 16 and plan.lr == pytest.approx(2e-3)  # scaled by the replicas, not the ranks
    with pytest.raises(ConfigError, match=r"parallel.pipeline_stages \(3\) does not divide world_size \(4\)"):
        check_runtime(_cfg(blobs, tmp_path, parallel={"pipeline_stages": 3}), 4)
    with pytest.raises(ConfigError, match=r"parallel.microbatches \(3\) does not divide the per-rank batch \(8"):
        check_runtime(_cfg(blobs, tmp_path, parallel={"microbatches": 3}), 2)
    with pytest.raises(ConfigError, match=r"parallel.pipeline_stages \(4\) exceeds the 3 sequential block\(s\) of "
                                          r"model.kind=mlp"):
        check_runtime(_cfg(blobs, tmp_path, parallel={"pipeline_stages": 4}), 4)
    with pytest.raises(ConfigError, match=r"data.global_batch_size: 31 is not divisible by data-parallel replicas"):
        check_runtime(_cfg(blobs, tmp_path, data={"global_batch_size": 31}), 4)
    # global batch over the replicas: 32 = 2 replicas x 16
    assert check_runtime(_cfg(blobs, tmp_path, data={"global_batch_size": 32}), 4).batch_size == 16


def test_data_parallel_plan_is_unchanged(blobs, tmp_path):
    from hpctrain.train.plan import Plan, check_runtime

    cfg = _cfg(blobs, tmp_path, parallel={"pipeline_stages": 1}, comm={"backend": "mpi"})
    assert check_runtime(cfg, 2) == Plan(world_size=2, batch_size=8, accum=1, global_batch=16, lr=2e-3)
