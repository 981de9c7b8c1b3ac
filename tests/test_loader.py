"""ShardLoader: rank partitioning, coverage, order, equal batch counts, resume, corruption, fork safety."""

from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import subprocess
import sys
import threading
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hpctrain.data.loader import ShardLoader, UnderShardedWarning, plan_epoch, slabs_of
from hpctrain.data.shards import ShardError, ShardWriter


def make_shards(root, sizes, d=3, split_val=0):
    """Shards of the given sizes; sample i has x[i] = [i, 2i, 3i, ...] and y = i, so every
    batch can be checked against its labels and ids are unique."""
    n = sum(sizes)
    ids = np.arange(n)
    x = (ids[:, None] * np.arange(1, d + 1)[None, :]).astype(np.float32)
    with ShardWriter(root, feature_names=None, sample_shape=(d,), rows_per_shard=max(sizes),
                     compression="none") as w:
        # One add per shard so each file has exactly the wanted size.
        w.rows_per_shard = 10**9
        start = 0
        for s in sizes:
            w.add(x[start:start + s], ids[start:start + s])
            w._flush("train", s)
            start += s
        if split_val:
            w.add(x[:split_val], ids[:split_val], split="val")
    return root


def epoch_ids(root, world, batch, *, epoch=0, seed=0, drop_last=True, **kw):
    per_rank = []
    for r in range(world):
        L = ShardLoader(root, r, world, batch, seed=seed, drop_last=drop_last, **kw)
        L.set_epoch(epoch)
        ids = []
        for x, y in L:
            assert x.dtype.is_floating_point and tuple(x.shape) == (batch, 3)
            assert np.array_equal(x.numpy()[:, 1], 2 * y.numpy().astype(np.float32))
            ids.append(y.numpy().copy())
        assert len(ids) == len(L)
        per_rank.append(ids)
    return per_rank


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.integers(1, 50), min_size=1, max_size=12), world=st.integers(1, 9),
       batch=st.integers(1, 7), epoch=st.integers(0, 3), drop_last=st.booleans(), shuffle=st.booleans())
def test_plan_partitions_rows(rows, world, batch, epoch, drop_last, shuffle):
    total = sum(rows)
    if total < world:
        return
    plan = plan_epoch(rows, world_size=world, epoch=epoch, seed=3, shuffle=shuffle, drop_last=drop_last,
                      batch_size=batch)
    seen = np.zeros(total, int)
    offsets = np.concatenate([[0], np.cumsum(rows)])
    sizes = []
    for r in range(world):
        for p in plan.pieces[r]:
            assert 0 <= p.start < p.stop <= rows[p.shard]
            seen[offsets[p.shard] + p.start: offsets[p.shard] + p.stop] += 1
        sizes.append(plan.rows(r))
    assert seen.max() <= 1  # no row on two ranks
    assert max(sizes) - min(sizes) <= (0 if drop_last else 1)
    if drop_last:
        assert total - seen.sum() < world and plan.batches == (total // world) // batch
        assert all(plan.batches * batch <= s for s in sizes)
    else:
        assert seen.sum() == total and plan.batches * batch >= max(sizes)


def test_slabs_align_to_chunks():
    from hpctrain.data.loader import Piece

    s = slabs_of([Piece(0, 5, 23), Piece(1, 0, 8)], 8)
    assert [(p.shard, p.start, p.stop) for p in s] == [(0, 5, 8), (0, 8, 16), (0, 16, 23), (1, 0, 8)]


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_coverage_exactly_once_uneven_shards(tmp_path, world):
    sizes = [97, 13, 250, 1, 64, 75]  # 500 rows
    root = make_shards(tmp_path / "s", sizes)
    # drop_last=False with 500 rows: each rank gets 500/world rows (+1), all covered, none twice
    # when the per-rank quota is a multiple of the batch size.
    per_rank = epoch_ids(root, world, 4, drop_last=False, buffer_rows=64)
    assert len({len(b) for b in per_rank}) == 1
    allids = np.concatenate([np.concatenate(b) for b in per_rank])
    assert set(allids.tolist()) == set(range(500))
    if world in (1, 5):  # 500/1 and 500/5 = 100 are multiples of 4: no padding
        assert len(allids) == 500
    # drop_last=True: every sample at most once, and fewer than world*batch + world dropped
    per_rank = epoch_ids(root, world, 4, drop_last=True, buffer_rows=64)
    allids = np.concatenate([np.concatenate(b) for b in per_rank])
    assert len(allids) == len(set(allids.tolist())) > 500 - world * 4 - world


def test_order_is_seeded_and_changes_by_epoch(tmp_path):
    root = make_shards(tmp_path / "s", [400, 400, 300, 200])
    a = np.concatenate(epoch_ids(root, 2, 16, seed=7, epoch=1, buffer_rows=128)[0])
    b = np.concatenate(epoch_ids(root, 2, 16, seed=7, epoch=1, buffer_rows=128)[0])
    c = np.concatenate(epoch_ids(root, 2, 16, seed=7, epoch=2, buffer_rows=128)[0])
    d = np.concatenate(epoch_ids(root, 2, 16, seed=8, epoch=1, buffer_rows=128)[0])
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c) and not np.array_equal(a, d)
    # Shuffled: batches mix rows from across the rank's data, not one contiguous run.
    first = epoch_ids(root, 1, 64, seed=7, buffer_rows=512)[0][0]
    assert np.ptp(first) > 300 and not np.all(np.diff(np.sort(first)) == 1)


def test_no_shuffle_is_sequential(tmp_path):
    root = make_shards(tmp_path / "s", [10, 10, 10])
    ids = np.concatenate(epoch_ids(root, 1, 5, shuffle=False, drop_last=False)[0])
    assert np.array_equal(ids, np.arange(30))


def test_prefetch_thread_matches_synchronous(tmp_path):
    root = make_shards(tmp_path / "s", [300, 200])
    a = epoch_ids(root, 2, 8, prefetch=0, buffer_rows=50)
    b = epoch_ids(root, 2, 8, prefetch=3, buffer_rows=50)
    assert all(np.array_equal(np.concatenate(x), np.concatenate(y)) for x, y in zip(a, b))


def test_resume_from_state_dict(tmp_path):
    root = make_shards(tmp_path / "s", [300, 200, 100])
    full = ShardLoader(root, 1, 2, 8, seed=4, buffer_rows=40)
    full.set_epoch(3)
    want = [y.numpy() for _, y in full]
    part = ShardLoader(root, 1, 2, 8, seed=4, buffer_rows=40)
    part.set_epoch(3)
    it = iter(part)
    head = [next(it)[1].numpy() for _ in range(5)]
    it.close()
    state = pickle.loads(pickle.dumps(part.state_dict()))
    assert state["epoch"] == 3 and state["batch"] == 5
    resumed = ShardLoader(root, 1, 2, 8, seed=4, buffer_rows=40)
    resumed.load_state_dict(state)
    resumed.set_epoch(3)  # the trainer's loop calls this again; it must not reset the position
    tail = [y.numpy() for _, y in resumed]
    assert len(head) + len(tail) == len(want)
    assert all(np.array_equal(a, b) for a, b in zip(head + tail, want))
    with pytest.raises(ShardError, match="world_size"):
        ShardLoader(root, 0, 3, 8, seed=4).load_state_dict(state)


def test_under_sharded_splits_rows_and_warns(tmp_path):
    root = make_shards(tmp_path / "s", [103])
    with pytest.warns(UnderShardedWarning, match="1 'train' shard"):
        per_rank = epoch_ids(root, 4, 5, drop_last=False)
    allids = np.concatenate([np.concatenate(b) for b in per_rank])
    assert set(allids.tolist()) == set(range(103))
    assert len({len(b) for b in per_rank}) == 1


def test_val_split_and_errors(tmp_path):
    root = make_shards(tmp_path / "s", [40, 40], split_val=10)
    v = ShardLoader(root, 0, 1, 5, split="val", shuffle=False)
    assert np.array_equal(np.concatenate([y.numpy() for _, y in v]), np.arange(10))
    with pytest.raises(ShardError, match="too few"):
        ShardLoader(root, 0, 2, 64)
    with pytest.raises(ShardError, match="rank"):
        ShardLoader(root, 2, 2, 4)
    only_train = make_shards(tmp_path / "t", [40])
    with pytest.raises(ShardError, match="no 'val' shards"):
        ShardLoader(only_train, 0, 1, 4, split="val")


def _flip(path):
    b = bytearray(path.read_bytes())
    b[len(b) // 2] ^= 0x01
    path.write_bytes(bytes(b))


def test_verify_before_first_use_names_file(tmp_path):
    root = make_shards(tmp_path / "s", [2000, 2000])
    _flip(root / "train-00001.h5")
    with pytest.raises(ShardError, match=r"train-00001\.h5.*sha256"):
        for _ in ShardLoader(root, 0, 1, 16, verify=True):
            pass
    # Without verify, the chunk checksum fails inside the prefetch thread and is re-raised here.
    with pytest.raises(ShardError, match=r"train-00001\.h5"):
        for _ in ShardLoader(root, 0, 1, 16, prefetch=2):
            pass


def _child_sum(loader, conn):
    try:
        conn.send(int(sum(int(y.sum()) for _, y in loader)))
    except BaseException as e:  # noqa: BLE001
        conn.send(repr(e))


def test_fork_after_use_and_pickle(tmp_path):
    root = make_shards(tmp_path / "s", [100, 100])
    L = ShardLoader(root, 0, 1, 10, drop_last=False)
    want = sum(int(y.sum()) for _, y in L)  # the parent now holds open handles
    assert want == sum(range(200))
    ctx = mp.get_context("fork")
    a, b = ctx.Pipe()
    p = ctx.Process(target=_child_sum, args=(L, b))
    p.start()
    got = a.recv()
    p.join(30)
    assert got == want
    L2 = pickle.loads(pickle.dumps(L))
    assert sum(int(y.sum()) for _, y in L2) == want


def test_file_locking_off_by_default_and_user_setting_wins(tmp_path):
    root = make_shards(tmp_path / "s", [20])
    code = ("import os; from hpctrain.data import ShardLoader; "
            f"n = sum(len(y) for _, y in ShardLoader({str(root)!r}, 0, 1, 4)); "
            "print(n, os.environ.get('HDF5_USE_FILE_LOCKING'))")
    env = {k: v for k, v in os.environ.items() if k != "HDF5_USE_FILE_LOCKING"}
    # A writer holding the file with a lock (in its own process: this one may already have
    # HDF5 initialised with locking off): a locking reader is refused, ours is not.
    hold = ("import sys, h5py; f = h5py.File(sys.argv[1], 'a', locking=True); print('held', flush=True); "
            "sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(root / "train-00000.h5")], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env={**env, "HDF5_USE_FILE_LOCKING": "TRUE"})
    try:
        assert holder.stdout.readline().strip() == "held"
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.stdout.split() == ["20", "FALSE"], out.stderr
        env["HDF5_USE_FILE_LOCKING"] = "TRUE"  # the user's explicit choice is kept, and HDF5 then locks
        out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and "could not lock" in out.stderr and "HDF5_USE_FILE_LOCKING" in out.stderr
    finally:
        holder.communicate("", timeout=60)
    env["HDF5_USE_FILE_LOCKING"] = "BEST_EFFORT"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.split() == ["20", "BEST_EFFORT"], out.stderr


def test_len_equal_across_ranks_every_epoch(tmp_path):
    root = make_shards(tmp_path / "s", [500, 37, 120, 9, 300])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for e in range(4):
            lens = []
            for r in range(3):
                L = ShardLoader(root, r, 3, 16)
                L.set_epoch(e)
                lens.append(len(L))
            assert len(set(lens)) == 1 and lens[0] == (966 // 3) // 16  # same in every epoch too


def test_oversample_balances_classes(tmp_path):
    rng = np.random.default_rng(0)
    y = np.repeat([0, 1, 2], [900, 90, 10])
    y = y[rng.permutation(1000)]
    x = np.repeat(y[:, None].astype(np.float32), 3, axis=1)
    with ShardWriter(tmp_path / "s", feature_names=None, sample_shape=(3,), rows_per_shard=100) as w:
        w.add(x, y)
    per_rank = []
    for r in range(2):
        L = ShardLoader(tmp_path / "s", r, 2, 10, sampling="oversample", buffer_rows=200)
        got = [(xb.numpy(), yb.numpy()) for xb, yb in L]
        assert len(got) == len(L) == 50  # batch count unchanged
        assert all(np.array_equal(a[:, 0], b.astype(np.float32)) for a, b in got)
        per_rank.append(np.concatenate([b for _, b in got]))
    share = np.bincount(np.concatenate(per_rank), minlength=3) / 1000
    assert np.all(np.abs(share - 1 / 3) < 0.08), share  # from 90% / 9% / 1%
    with pytest.raises(ShardError, match="sampling"):
        ShardLoader(tmp_path / "s", 0, 1, 10, sampling="smote")


@pytest.mark.parametrize("drop_last,sampling", [(False, "none"), (True, "oversample"), (False, "oversample")])
def test_overlapped_reader_matches_synchronous_every_mode(tmp_path, drop_last, sampling):
    # prefetch > 0 reads the next buffer in another thread (two buffers, carried rows copied
    # across); prefetch=0 uses one buffer in place. Both must give the same batches, resumed too.
    root = make_shards(tmp_path / "s", [130, 70, 45])
    for skip in (0, 7):
        got = []
        for pf in (0, 2):
            L = ShardLoader(root, 1, 2, 6, seed=5, drop_last=drop_last, prefetch=pf, buffer_rows=20,
                            sampling=sampling)
            L.set_epoch(3)
            L.load_state_dict({"epoch": 3, "batch": skip})
            got.append([y.numpy().copy() for _, y in L])
        assert len(got[0]) == len(L) - skip and len(got[0]) == len(got[1])
        assert all(np.array_equal(a, b) for a, b in zip(*got))


def test_kept_batches_are_not_overwritten_and_early_stop_is_clean(tmp_path):
    # Shuffle buffers are reused across epochs; batches handed out must never alias them.
    root = make_shards(tmp_path / "s", [90, 60])
    L = ShardLoader(root, 0, 1, 8, seed=1, buffer_rows=24)
    kept = [(x, y) for x, y in L]
    copies = [(x.clone(), y.clone()) for x, y in kept]
    for e in (1, 2):
        L.set_epoch(e)
        for i, _ in enumerate(L):
            if e == 1 and i == 3:
                break  # an abandoned epoch must stop its threads and leave the loader usable
    assert all(bool((a == c).all()) and bool((b == d).all()) for (a, b), (c, d) in zip(kept, copies))
    assert not [t for t in threading.enumerate() if t.name.startswith("ShardLoader")]  # all stopped
    L.set_epoch(0)
    again = [y.numpy().copy() for _, y in L]
    assert all(np.array_equal(a, b.numpy()) for a, (_, b) in zip(again, copies))


def test_pinning_follows_cuda(tmp_path):
    import torch

    root = make_shards(tmp_path / "s", [40])
    x, _ = next(iter(ShardLoader(root, 0, 1, 8)))  # default: pinned exactly when CUDA is present
    assert x.is_pinned() == torch.cuda.is_available()
    if not torch.cuda.is_available():  # asking for pinning without CUDA: a clear error, not torch's
        with pytest.raises(ShardError, match="pin_memory=True needs a CUDA device"):
            next(iter(ShardLoader(root, 0, 1, 8, pin_memory=True)))


@pytest.mark.parametrize("kw,match", [
    ({"shuffle": "no"}, "shuffle is 'no'.*True or False"),
    ({"drop_last": 0}, "drop_last is 0"),
    ({"batch_size": True}, "batch_size True must be a positive integer"),
    ({"prefetch": "2"}, "prefetch '2' must be an integer"),
    ({"prefetch": float("nan")}, "prefetch nan"),
    ({"seed": "x"}, "seed 'x' must be an integer"),
    ({"buffer_rows": 0}, "buffer_rows 0 must be a positive integer"),
    ({"slab_chunks": "2"}, "slab_chunks '2'"),
    ({"pin_memory": "yes"}, "pin_memory is 'yes'"),
])
def test_bad_python_arguments(tmp_path, kw, match):
    root = make_shards(tmp_path / "s", [8, 8])
    with pytest.raises(ShardError, match=match):
        ShardLoader(root, **{"batch_size": 2, **kw})


def test_numpy_integer_sizes_are_accepted(tmp_path):
    root = make_shards(tmp_path / "s", [8, 8])
    ld = ShardLoader(root, rank=np.int64(1), world_size=np.int64(2), batch_size=np.int32(2), shuffle=np.bool_(False))
    assert (ld.rank, ld.world_size, ld.batch_size) == (1, 2, 2) and type(ld.batch_size) is int
