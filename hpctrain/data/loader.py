"""ShardLoader: rank-partitioned, shuffling, prefetching batches from HDF5 shards.

Per epoch (all pure arithmetic on the manifest, identical on every rank, no communication):

1. Shards are permuted with a generator seeded by (seed, epoch) and dealt to ranks by
   stride: rank r takes permuted shards r, r+W, r+2W, ...
2. Rows are rebalanced so every rank gets the same count: a rank above its quota hands
   the tail row range of its last shard to a rank below it. With fewer shards than ranks
   this is what splits a shard into row ranges (and the loader warns: under-sharded).
3. Each rank cuts its row ranges into slabs of whole HDF5 chunks (4 chunks of about 1 MiB),
   shuffles the slab order (seed, epoch, rank), and fills a shuffle buffer with whole-slab
   contiguous reads. Each full buffer is permuted and cut into batches; leftover rows
   carry into the next buffer. There is never a per-sample HDF5 read. With prefetch, a reader
   thread fills the next buffer while the current one is cut into batches (same order).

Equal batch counts: with ``drop_last=True`` every rank yields ``floor(total/W) // B``
batches (at most ``W-1 + W*(B-1)`` rows of the epoch are dropped, different ones each
epoch); with ``drop_last=False`` every rank yields ``ceil(ceil(total/W) / B)`` full batches,
the shortfall padded by re-reading the rank's own rows from the start of its order.
So a collective per batch can never hang on uneven data.

Files are opened lazily by the process (and thread) that reads them; handles are dropped,
never reused, after a fork, and are not pickled.
"""

from __future__ import annotations

import os
import queue
import threading
import warnings
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from hpctrain.data.shards import (
    Manifest, ShardError, ShardInfo, check_datasets, check_sha256, default_file_locking, read_rows,
)
from hpctrain.data.epoch_plan import EpochPlan, Piece, UnderShardedWarning, plan_epoch, slabs_of  # noqa: F401
from hpctrain.data.direct_read import chunk_index, read_rows_direct
from hpctrain.data.h5io import open_shard_source
from hpctrain.errors import HpctrainError

DEFAULT_BUFFER_BYTES = 64 << 20
BLOCK_BYTES = 4 << 20
SLAB_CHUNKS = 4
MAX_OPEN_FILES = 64


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


class _Files:
    """Lazily opened shard files of one process, LRU-capped; forgotten after a fork."""

    def __init__(self, m: Manifest, shards: list[ShardInfo], verify: bool, locking: bool | None) -> None:
        self.m, self.shards, self.verify, self.locking = m, shards, verify, locking
        self.pid = os.getpid()
        self.open: OrderedDict[int, Any] = OrderedDict()
        self.verified: set[int] = set()
        self.lock = threading.Lock()

    def get(self, i: int):
        with self.lock:
            if self.pid != os.getpid():  # inherited across fork: never touch the parent's handles
                self.open = OrderedDict()
                self.pid = os.getpid()
            if i in self.open:
                self.open.move_to_end(i)
                return self.open[i]
            s = self.shards[i]
            if self.verify and i not in self.verified:
                check_sha256(self.m, s)
                self.verified.add(i)
            # No HDF5 chunk cache: reads cover whole chunks, so caching would only add a copy
            # (and about 1 MiB of memory per open file).
            f, src = open_shard_source(self.m, s, locking=self.locking, rdcc_nbytes=0)
            try:
                xd, yd = check_datasets(self.m, s, f)
            except ShardError:
                f.close()
                raise
            # An encrypted shard's rows are decrypted straight into the buffers (direct_read)
            # when its layout allows; otherwise, and for plaintext, h5py reads them.
            direct = None
            if src is not None:
                xi, yi = chunk_index(xd), chunk_index(yd)
                if xi is not None and yi is not None:
                    direct = (src, xi, yi)
            self.open[i] = (f, xd, yd, direct)
            while len(self.open) > MAX_OPEN_FILES:
                _, (old, *_) = self.open.popitem(last=False)
                old.close()
            return self.open[i]

    def close(self) -> None:
        with self.lock:
            if self.pid == os.getpid():
                for f, *_ in self.open.values():
                    try:
                        f.close()
                    except Exception:  # noqa: BLE001  closing at shutdown must not raise
                        pass
            self.open = OrderedDict()


class ShardLoader:
    """Batches ``(x float32, y int64)`` torch tensors for one rank of ``world_size``.

    Args:
        manifest_or_dir: a :class:`Manifest` or a shard directory.
        rank, world_size: this process's place; every rank must use the same seed,
            batch size, drop_last and manifest.
        batch_size: per-rank batch size.
        shuffle: permute shards, slab order and rows within the shuffle buffer.
        seed: base seed; the order depends on (seed, epoch) only.
        drop_last: see the module docstring for the equal-count rule.
        prefetch: batches prepared ahead by a background thread (0: no thread).
        split: "train" or "val".
        verify: check each shard's sha256 before first use in this process.
        buffer_rows: shuffle buffer size in rows (default: about 64 MiB of samples).
        pin_memory: pin batches for fast host-to-GPU copies (default: when CUDA is present).
        slab_chunks: HDF5 chunks per contiguous read (default 4, about 4 MiB); larger reads are
            faster, smaller ones mix more regions of the data into each buffer.
        sampling: "none" (each row once per epoch, shuffled) or "oversample": each buffer's
            batches are drawn with replacement with weight 1/(class count in the manifest),
            so classes appear about equally often; batch counts are unchanged.
        file_locking: None follows HDF5_USE_FILE_LOCKING (hpctrain's default is FALSE);
            True/False asks HDF5 per file (an explicit environment variable still wins).
    """

    def __init__(self, manifest_or_dir: Manifest | str | os.PathLike, rank: int = 0, world_size: int = 1,
                 batch_size: int = 32, shuffle: bool = True, seed: int = 0, drop_last: bool = True,
                 prefetch: int = 2, split: str = "train", *, verify: bool = False, buffer_rows: int | None = None,
                 pin_memory: bool | None = None, file_locking: bool | None = None,
                 slab_chunks: int = SLAB_CHUNKS, sampling: str = "none") -> None:
        if file_locking is None or file_locking is False:
            default_file_locking()  # before any h5py open in this process
        self.manifest = Manifest.load(manifest_or_dir)
        if not _is_int(world_size) or world_size < 1:
            raise ShardError(f"world_size {world_size!r} must be a positive integer")
        if not _is_int(rank) or not 0 <= rank < world_size:
            raise ShardError(f"rank {rank!r} must satisfy 0 <= rank < world_size ({world_size})")
        if not _is_int(batch_size) or batch_size < 1:
            raise ShardError(f"batch_size {batch_size!r} must be a positive integer")
        if not _is_int(prefetch) or prefetch < 0:
            raise ShardError(f"prefetch {prefetch!r} must be an integer >= 0 (0: no background thread)")
        if not _is_int(seed):
            raise ShardError(f"seed {seed!r} must be an integer")
        if buffer_rows is not None and (not _is_int(buffer_rows) or buffer_rows < 1):
            raise ShardError(f"buffer_rows {buffer_rows!r} must be a positive integer, or None for the default")
        if not _is_int(slab_chunks) or slab_chunks < 1:
            raise ShardError(f"slab_chunks {slab_chunks!r} must be an integer >= 1")
        # bool("no") is True: a string here would silently switch the option on
        for name, v in (("shuffle", shuffle), ("drop_last", drop_last), ("verify", verify)):
            if not isinstance(v, (bool, np.bool_)):
                raise ShardError(f"{name} is {v!r} ({type(v).__name__}); expected True or False")
        for name, v in (("pin_memory", pin_memory), ("file_locking", file_locking)):
            if v is not None and not isinstance(v, (bool, np.bool_)):
                raise ShardError(f"{name} is {v!r} ({type(v).__name__}); expected True, False or None")
        rank, world_size, batch_size = int(rank), int(world_size), int(batch_size)
        prefetch, seed = int(prefetch), int(seed)
        shuffle, drop_last, verify = bool(shuffle), bool(drop_last), bool(verify)
        self.shards = self.manifest.shards_for(split)
        if not self.shards:
            raise ShardError(f"{str(self.manifest.root)!r} has no {split!r} shards; "
                             + ("re-shard with --val-fraction F" if split == "val" else "check the split name"))
        self.rank, self.world_size, self.batch_size = rank, world_size, batch_size
        self.shuffle, self.seed, self.drop_last, self.prefetch, self.split = shuffle, seed, drop_last, prefetch, split
        self.verify, self.file_locking = verify, file_locking
        self.sample_shape = tuple(self.manifest.schema.sample_shape)
        self.chunk_rows = self.manifest.chunk_rows
        row_bytes = 4 * max(1, int(np.prod(self.sample_shape)))
        self.buffer_rows = int(buffer_rows) if buffer_rows is not None else max(2 * batch_size,
                                                                                DEFAULT_BUFFER_BYTES // row_bytes)
        if self.buffer_rows < batch_size:
            raise ShardError(f"buffer_rows {self.buffer_rows} is smaller than batch_size {batch_size}")
        self.pin_memory = pin_memory
        self.slab_chunks = int(slab_chunks)
        if sampling not in ("none", "oversample"):
            raise ShardError(f"sampling {sampling!r} is not one of 'none', 'oversample'")
        self.sampling = sampling
        self._class_weight = None
        if sampling == "oversample" and self.manifest.schema.regression:
            raise ShardError("sampling='oversample' needs class labels; these shards hold regression targets: "
                             "use sampling='none'")
        if sampling == "oversample":
            counts = self.manifest.class_counts(split)
            top = max(counts) + 1 if counts else 1
            lo = min(0, min(counts)) if counts else 0
            w = np.zeros(top - lo)
            for c, n in counts.items():
                w[c - lo] = 1.0 / n if n else 0.0
            self._class_weight = (lo, w)
        self.epoch = 0
        self._position = 0  # batches consumed in the current epoch
        self._plan_cache: tuple[int, EpochPlan] | None = None
        self._files: _Files | None = None
        self._spare_buffers: list[tuple[np.ndarray, np.ndarray]] | None = None
        self._warned = False
        self._check_feasible()

    # -- planning
    def plan(self, epoch: int | None = None) -> EpochPlan:
        e = self.epoch if epoch is None else epoch
        if self._plan_cache is None or self._plan_cache[0] != e:
            self._plan_cache = (e, plan_epoch([s.rows for s in self.shards], world_size=self.world_size, epoch=e,
                                              seed=self.seed, shuffle=self.shuffle, drop_last=self.drop_last,
                                              batch_size=self.batch_size))
        return self._plan_cache[1]

    def _check_feasible(self) -> None:
        total = sum(s.rows for s in self.shards)
        if self.drop_last and total // self.world_size < self.batch_size:
            raise ShardError(f"{self.split!r} split has {total} rows: too few for {self.world_size} rank(s) x batch "
                             f"{self.batch_size} with drop_last=True (0 batches per epoch); lower the batch size, "
                             "use fewer ranks or drop_last=False")
        if total < self.world_size:
            raise ShardError(f"{self.split!r} split has {total} rows, fewer than {self.world_size} ranks")

    def __len__(self) -> int:
        """Batches per epoch: the same on every rank and in every epoch (it depends only on the
        split's total rows, the world size, the batch size and drop_last)."""
        return self.plan().batches

    @property
    def samples_per_epoch(self) -> int:
        return len(self) * self.batch_size

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.epoch = int(epoch)
            self._position = 0

    # -- resume
    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "batch": self._position, "seed": self.seed, "world_size": self.world_size,
                "batch_size": self.batch_size, "shuffle": self.shuffle, "drop_last": self.drop_last,
                "split": self.split, "sampling": self.sampling}

    def load_state_dict(self, state: dict) -> None:
        for k in ("seed", "world_size", "batch_size", "shuffle", "drop_last", "split", "sampling"):
            if k in state and state[k] != getattr(self, k):
                raise ShardError(f"loader state has {k}={state[k]!r} but this loader has {getattr(self, k)!r}; "
                                 "the batch order cannot be resumed exactly: use the same settings, or start "
                                 "the epoch afresh (drop the loader state)")
        self.epoch = int(state["epoch"])
        self._position = int(state["batch"])

    # -- reading
    def _file(self, i: int):
        if self._files is None:
            self._files = _Files(self.manifest, self.shards, self.verify, self.file_locking)
        return self._files.get(i)

    def _read(self, slab: Piece, xbuf: np.ndarray, ybuf: np.ndarray, at: int, n: int) -> None:
        _, xd, yd, direct = self._file(slab.shard)
        path = self.manifest.path(self.shards[slab.shard])
        a = slab.start
        if direct is not None:
            src, xi, yi = direct
            try:
                read_rows_direct(src, xi, a, a + n, xbuf[at:at + n])
                read_rows_direct(src, yi, a, a + n, ybuf[at:at + n])
            except HpctrainError as e:  # authentication failure: the buffers were zeroed
                raise ShardError(str(e)) from None
            return
        read_rows(path, xd, a, a + n, xbuf[at:at + n])
        read_rows(path, yd, a, a + n, ybuf[at:at + n])

    def iter_numpy(self, epoch: int | None = None, skip: int = 0) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """The epoch's batches as numpy arrays, read in the calling thread (no prefetch, no torch)."""
        for xb, yb in self._blocks(epoch, skip):
            B = self.batch_size
            for k in range(0, len(yb), B):
                yield xb[k:k + B], yb[k:k + B]

    def _blocks(self, epoch: int | None, skip: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Shuffled rows in blocks of whole batches (about 4 MiB each), after ``skip`` batches.

        Handing out blocks instead of single batches amortises the per-item costs (a numpy
        gather, a queue hand-off between threads) over several small batches."""
        e = self.epoch if epoch is None else epoch
        plan = self.plan(e)
        if plan.under_sharded and not self._warned:
            self._warned = True
            warnings.warn(f"{str(self.manifest.root)!r}: {len(self.shards)} {self.split!r} shard(s) for "
                          f"{self.world_size} ranks: ranks share shards by row ranges. Re-shard with "
                          f"--shards {4 * self.world_size} or more for parallel file reads",
                          UnderShardedWarning, stacklevel=4)
        return self._gen_blocks(e, plan, skip)

    @property
    def block_batches(self) -> int:
        """Batches per block handed from the reader to the consumer."""
        row = 4 * max(1, int(np.prod(self.sample_shape))) + 8
        return max(1, min(64, BLOCK_BYTES // (row * self.batch_size)))

    def _gen_blocks(self, e: int, plan: EpochPlan, skip: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        B, G = self.batch_size, self.block_batches
        need = plan.batches * B
        if need == 0:
            return
        slabs = slabs_of(plan.pieces[self.rank], self.chunk_rows * self.slab_chunks)
        if not slabs:
            raise ShardError(f"rank {self.rank} has no rows to read in epoch {e}")
        if self.shuffle:
            rng = np.random.default_rng([self.seed, e, self.rank, 1])
            slabs = [slabs[i] for i in rng.permutation(len(slabs))]
        else:
            rng = None
        cap = max(min(self.buffer_rows, need), B)
        if self._class_weight is not None:
            # Oversampling draws each buffer's batches with replacement, weighted 1/class count,
            # so a buffer holds whole batches and nothing carries over.
            cap = cap // B * B
            rng = rng or np.random.default_rng([self.seed, e, self.rank, 2])
        pos = [0, 0, 0]  # current slab, row offset inside it, rows read this epoch

        def fill(xbuf: np.ndarray, ybuf: np.ndarray, filled: int) -> tuple[int, np.ndarray]:
            """Top the buffer up from ``filled`` rows with whole-slab contiguous reads (the slab list
            cycles only to pad), then draw its order. Calls run strictly one after another, so the
            generator's draws happen in the same sequence whichever thread makes them."""
            si, off, read_total = pos
            while filled < cap and read_total < need:
                s = slabs[si]
                n = min(s.rows - off, cap - filled, need - read_total)
                self._read(Piece(s.shard, s.start + off, s.stop), xbuf, ybuf, filled, n)
                filled += n
                read_total += n
                off += n
                if off == s.rows:
                    si, off = (si + 1) % len(slabs), 0
            pos[:] = si, off, read_total
            if self._class_weight is not None:
                lo, w = self._class_weight
                p = w[ybuf[:filled] - lo]
                return filled, rng.choice(filled, size=filled, replace=True, p=p / p.sum())
            return filled, (rng.permutation(filled) if rng is not None else np.arange(filled))

        # With prefetch, a second buffer lets a reader thread fill (and order) the next buffer while
        # this one is cut into batches: HDF5 reads and numpy gathers release the GIL, so the two
        # overlap on separate cores. The rows a buffer leaves over are copied to the front of the
        # next one before its reads start, exactly as the single-buffer path carries them in place.
        nbuf = 2 if self.prefetch > 0 else 1
        bufs = self._get_buffers(cap, nbuf)
        reader = ThreadPoolExecutor(1, thread_name_prefix=f"ShardLoader-read{self.rank}") if nbuf > 1 else None
        try:
            filled, idx = fill(*bufs[0], 0)
            batch = 0  # batches of this epoch produced (or skipped) so far
            cur = 0
            while True:
                xbuf, ybuf = bufs[cur]
                nb = min(filled // B, plan.batches - batch)
                rest = idx[nb * B:]
                last = batch + nb >= plan.batches
                pending = None
                if not last and reader is not None:
                    xn, yn = bufs[1 - cur]
                    np.take(xbuf, rest, axis=0, out=xn[:len(rest)])
                    np.take(ybuf, rest, axis=0, out=yn[:len(rest)])
                    pending = reader.submit(fill, xn, yn, len(rest))
                first = min(max(skip - batch, 0), nb)  # batches of this buffer that a resume skips
                for k in range(first, nb, G):
                    sel = idx[k * B:min(k + G, nb) * B]
                    yield np.take(xbuf, sel, axis=0), np.take(ybuf, sel, axis=0)
                batch += nb
                if last:
                    return
                if pending is not None:
                    filled, idx = pending.result()
                    cur = 1 - cur
                else:
                    if len(rest):
                        xbuf[:len(rest)] = xbuf[rest]
                        ybuf[:len(rest)] = ybuf[rest]
                    filled, idx = fill(xbuf, ybuf, len(rest))
        finally:
            if reader is not None:
                reader.shutdown(wait=True, cancel_futures=True)
            self._spare_buffers = bufs  # no reads into them are in flight any more

    def _get_buffers(self, cap: int, nbuf: int) -> list[tuple[np.ndarray, np.ndarray]]:
        """Shuffle buffers kept from the previous epoch when they fit, else new ones.

        Re-using them saves touching (page-faulting) 64-128 MiB of fresh memory every epoch. They
        never leave the loader: batches are gathered out of them into new arrays. A second
        iteration running at the same time finds none spare and allocates its own."""
        bufs, self._spare_buffers = self._spare_buffers, None
        if bufs is None or len(bufs) != nbuf or len(bufs[0][1]) != cap:
            sch = self.manifest.schema
            bufs = [(np.empty((cap, *self.sample_shape), np.float32), np.empty((cap, *sch.y_shape), sch.y_dtype))
                    for _ in range(nbuf)]
        return bufs

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        import torch

        pin = self.pin_memory if self.pin_memory is not None else torch.cuda.is_available()
        if pin and not torch.cuda.is_available():
            raise ShardError("pin_memory=True needs a CUDA device and torch sees none; leave pin_memory=None "
                             "(pins only when CUDA is present) or pass pin_memory=False")
        if self._position >= len(self):
            self._position = 0  # a finished epoch iterated again starts over
        B = self.batch_size
        blocks = self._blocks(self.epoch, self._position)

        def to_torch(b: tuple[np.ndarray, np.ndarray]) -> tuple[Any, Any]:
            x, y = torch.from_numpy(b[0]), torch.from_numpy(b[1])
            if pin:  # one pinned copy per block; batches are views of it
                x, y = x.pin_memory(), y.pin_memory()
            return x, y

        if self.prefetch == 0:
            for b in blocks:
                x, y = to_torch(b)
                for xb, yb in zip(x.split(B), y.split(B)):
                    self._position += 1
                    yield xb, yb
            return
        # Queue items are blocks; at most ceil(prefetch / block) of them wait, so about
        # `prefetch` batches are ready ahead of the consumer.
        q: queue.Queue = queue.Queue(maxsize=max(1, -(-self.prefetch // self.block_batches)))
        stop = threading.Event()

        def put(item: Any) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for b in blocks:
                    if not put(("ok", to_torch(b))):
                        return
                put(("end", None))
            except BaseException as e:  # noqa: BLE001  handed to the consumer, which re-raises
                put(("err", e))
            finally:
                blocks.close()  # stops its reader thread now, not at garbage collection

        t = threading.Thread(target=work, name=f"ShardLoader-rank{self.rank}", daemon=True)
        t.start()
        try:
            while True:
                kind, item = q.get()
                if kind == "end":
                    return
                if kind == "err":
                    raise item
                x, y = item
                for xb, yb in zip(x.split(B), y.split(B)):  # views; one call per block
                    self._position += 1
                    yield xb, yb
        finally:
            stop.set()
            t.join(timeout=30)

    def close(self) -> None:
        if self._files is not None:
            self._files.close()
            self._files = None

    # Pickling (spawned workers, checkpoints): never carry open HDF5 handles.
    def __getstate__(self) -> dict:
        d = dict(self.__dict__)
        d["_files"] = None
        d["_plan_cache"] = None
        d["_spare_buffers"] = None
        return d

    def __setstate__(self, d: dict) -> None:
        self.__dict__.update(d)

    def __repr__(self) -> str:
        return (f"ShardLoader({str(Path(self.manifest.root))!r}, split={self.split!r}, rank={self.rank}/"
                f"{self.world_size}, batch_size={self.batch_size}, epoch={self.epoch}, batches={len(self)})")
