"""The epoch plan of the shard loader: which rows each rank reads, in which order, and how
many batches it yields. Pure arithmetic on the manifest's row counts, identical on every rank,
no I/O and no communication (the reading itself is hpctrain.data.loader.ShardLoader).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np


class UnderShardedWarning(UserWarning):
    """There are fewer shards than ranks, so ranks share shards by row ranges."""


@dataclass(frozen=True, slots=True)
class Piece:
    """Rows [start, stop) of shard number ``shard`` (index into the split's shard list)."""

    shard: int
    start: int
    stop: int

    @property
    def rows(self) -> int:
        return self.stop - self.start


@dataclass(frozen=True, slots=True)
class EpochPlan:
    pieces: list[list[Piece]]  # per rank
    batches: int  # per rank, equal on every rank
    under_sharded: bool

    def rows(self, rank: int) -> int:
        return sum(p.rows for p in self.pieces[rank])


def plan_epoch(rows: Sequence[int], *, world_size: int, epoch: int, seed: int, shuffle: bool, drop_last: bool,
               batch_size: int) -> EpochPlan:
    """Which row ranges each rank reads this epoch, and the common batch count (pure)."""
    n = len(rows)
    order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
    assign: list[list[Piece]] = [[Piece(int(order[i]), 0, int(rows[order[i]])) for i in range(r, n, world_size)]
                                 for r in range(world_size)]
    total = int(sum(rows))
    base, extra = divmod(total, world_size)
    quota = [base if drop_last else base + (r < extra) for r in range(world_size)]
    pool: list[Piece] = []
    for r in range(world_size):
        size = sum(p.rows for p in assign[r])
        while size > quota[r]:
            p = assign[r].pop()
            excess = size - quota[r]
            if p.rows <= excess:
                pool.append(p)
                size -= p.rows
            else:
                assign[r].append(Piece(p.shard, p.start, p.stop - excess))
                pool.append(Piece(p.shard, p.stop - excess, p.stop))
                size -= excess
    for r in range(world_size):
        need = quota[r] - sum(p.rows for p in assign[r])
        while need > 0:
            q = pool.pop(0)
            if q.rows <= need:
                assign[r].append(q)
                need -= q.rows
            else:
                assign[r].append(Piece(q.shard, q.start, q.start + need))
                pool.insert(0, Piece(q.shard, q.start + need, q.stop))
                need = 0
    batches = base // batch_size if drop_last else math.ceil(max(quota) / batch_size)
    return EpochPlan(pieces=assign, batches=batches, under_sharded=n < world_size)


def slabs_of(pieces: Sequence[Piece], chunk_rows: int) -> list[Piece]:
    """Cut row ranges at chunk boundaries so each read covers whole chunks where possible."""
    out = []
    for p in pieces:
        a = p.start
        while a < p.stop:
            b = min(p.stop, (a // chunk_rows + 1) * chunk_rows)
            out.append(Piece(p.shard, a, b))
            a = b
    return out
