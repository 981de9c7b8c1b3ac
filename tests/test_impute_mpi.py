"""Imputer statistics merged across 2 MPI ranks equal the single-process fit (and sklearn).

Run by scripts/test.sh as ``mpirun -np 2 python -m pytest --with-mpi -m mpi``."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.mpi, pytest.mark.filterwarnings("ignore:Skipping features:UserWarning")]


def _data():
    rng = np.random.default_rng(11)
    x = rng.integers(0, 7, size=(101, 5)).astype(np.float32)
    x[:, 1] += rng.standard_normal(101).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    x[:, 4] = np.nan
    x[60:, 2] = np.nan  # rank 1's half of column 2 is empty
    return x


@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent", "constant"])
def test_array_fit_across_ranks(strategy):
    from mpi4py import MPI
    from sklearn.impute import SimpleImputer

    from hpctrain.kernels.impute import Imputer

    comm = MPI.COMM_WORLD
    assert comm.Get_size() == 2
    x = _data()
    local = x[:60] if comm.Get_rank() == 0 else x[60:]
    dist = Imputer(strategy, add_indicator=True).fit(local, comm=comm)
    single = Imputer(strategy, add_indicator=True).fit(x)
    np.testing.assert_array_equal(dist.statistics_, single.statistics_)
    np.testing.assert_array_equal(dist.indicator_features_, single.indicator_features_)
    ref = SimpleImputer(strategy=strategy, add_indicator=True).fit(x)
    if strategy == "mean":
        np.testing.assert_allclose(dist.statistics_, ref.statistics_, rtol=1e-6)
    else:
        np.testing.assert_array_equal(dist.statistics_.astype(np.float32), ref.statistics_.astype(np.float32))


def test_merge_statistics_sums_partials():
    from mpi4py import MPI

    from hpctrain.kernels.impute import merge_statistics

    comm = MPI.COMM_WORLD
    r = comm.Get_rank()
    got = merge_statistics({"sum": np.array([1.0 + r, 2.0]), "count": np.array([r, 1]), "rows": 3 + r}, comm)
    np.testing.assert_array_equal(got["sum"], [3.0, 4.0])
    np.testing.assert_array_equal(got["count"], [1, 2])
    assert got["rows"] == 7
    assert merge_statistics({"sum": np.ones(2), "count": np.ones(2, np.int64), "rows": 1})["rows"] == 1


@pytest.mark.parametrize("strategy", ["median", "most_frequent"])
def test_shard_dir_fit_across_ranks(tmp_path, strategy):
    from mpi4py import MPI

    from hpctrain.data.shards import ShardWriter
    from hpctrain.kernels.impute import Imputer

    comm = MPI.COMM_WORLD
    x = _data()
    root = None
    if comm.Get_rank() == 0:
        root = str(tmp_path / "shards")
        with ShardWriter(root, feature_names=None, sample_shape=(5,), rows_per_shard=13) as w:
            w.add(x, np.zeros(len(x), np.int64))
    root = comm.bcast(root, root=0)
    dist = Imputer(strategy).fit(root, comm=comm, from_manifest=False)
    single = Imputer(strategy).fit(x)
    np.testing.assert_array_equal(dist.statistics_, single.statistics_)
    comm.Barrier()
