"""Reading rows of an encrypted shard without HDF5's file driver in the loop.

h5py reads an encrypted shard through its file-object driver: every HDF5 chunk read is a
callback into Python (seek, readinto, decrypt) that holds the GIL against the loader's other
thread, then HDF5 checks fletcher32 and copies the chunk out. For the datasets hpctrain writes
(chunked along rows, each chunk spanning whole rows, no filter but fletcher32) the rows a slab
needs are one byte range per HDF5 chunk, at a file offset HDF5 reports once per open. Those
ranges are decrypted straight into the destination buffer instead.

Skipping fletcher32 here loses nothing: every byte handed out has passed its AES-GCM tag, which
authenticates the file against modification, and fletcher32 only detects accidents.
Anything else (compression, another chunk shape, a missing chunk, a foreign byte order) returns
None from :func:`chunk_index`, and the caller reads through h5py as before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class ChunkIndex:
    """Where each row chunk of a dataset lies in the (plaintext) file.

    ``offsets[c]`` is the byte offset of chunk c (rows ``[c*chunk_rows, (c+1)*chunk_rows)``),
    whose rows are stored row-major, ``row_bytes`` each, from that offset on."""

    rows: int
    chunk_rows: int
    row_bytes: int
    offsets: tuple[int, ...]

    def spans(self, start: int, stop: int) -> list[tuple[int, int, int]]:
        """The byte ranges holding rows [start, stop): ``(file_offset, first_row_in_out, n_rows)``
        per chunk touched, adjacent ranges merged."""
        if not 0 <= start <= stop <= self.rows:
            raise ValueError(f"rows {start}:{stop} are outside a dataset of {self.rows} rows")
        out: list[tuple[int, int, int]] = []
        r = start
        while r < stop:
            c, within = divmod(r, self.chunk_rows)
            n = min(stop - r, self.chunk_rows - within)
            off = self.offsets[c] + within * self.row_bytes
            if out and out[-1][0] + out[-1][2] * self.row_bytes == off:
                prev = out[-1]
                out[-1] = (prev[0], prev[1], prev[2] + n)
            else:
                out.append((off, r - start, n))
            r += n
        return out


def chunk_index(dset) -> ChunkIndex | None:
    """The chunk index of h5py dataset ``dset`` when its rows can be read as raw bytes, else None."""
    import h5py

    dt = dset.dtype
    if dset.ndim < 1 or not dt.isnative or dt.hasobject or dt.fields is not None or dt.subdtype is not None:
        return None
    rows = int(dset.shape[0])
    row_bytes = int(np.prod(dset.shape[1:], dtype=np.int64)) * dt.itemsize
    dcpl = dset.id.get_create_plist()
    layout = dcpl.get_layout()
    if layout == h5py.h5d.CONTIGUOUS:
        off = dset.id.get_offset()
        if off is None or rows == 0:
            return None
        return ChunkIndex(rows, max(1, rows), row_bytes, (int(off),))
    if layout != h5py.h5d.CHUNKED or dset.chunks is None or tuple(dset.chunks[1:]) != tuple(dset.shape[1:]):
        return None
    for i in range(dcpl.get_nfilters()):
        if dcpl.get_filter(i)[0] != h5py.h5z.FILTER_FLETCHER32:
            return None
    chunk_rows = int(dset.chunks[0])
    n_chunks = -(-rows // chunk_rows)
    if dset.id.get_num_chunks() != n_chunks:
        return None  # a chunk never written (fill value): leave it to HDF5
    offsets = [0] * n_chunks
    for k in range(n_chunks):
        info = dset.id.get_chunk_info(k)
        c, rem = divmod(int(info.chunk_offset[0]), chunk_rows)
        if rem or not 0 <= c < n_chunks or info.size < chunk_rows * row_bytes:
            return None
        offsets[c] = int(info.byte_offset)
    return ChunkIndex(rows, chunk_rows, row_bytes, tuple(offsets))


def read_rows_direct(src, index: ChunkIndex, start: int, stop: int, out: np.ndarray) -> None:
    """Rows [start, stop) into ``out[:stop-start]`` (C-contiguous, the dataset's dtype and row
    shape) by positional reads of ``src`` (an :class:`~hpctrain.secure.container.EncryptedFile`)."""
    if stop == start:
        return
    if not out.flags.c_contiguous or out.shape[0] < stop - start or out[0].nbytes != index.row_bytes:
        raise ValueError(f"destination {out.dtype}{out.shape} (contiguous: {out.flags.c_contiguous}) cannot hold "
                         f"rows {start}:{stop} of {index.row_bytes} bytes each")
    flat = out.reshape(-1).view(np.uint8)
    rb = index.row_bytes
    # one call for all the chunks' ranges: the container reads their sealed bytes in as few
    # positioned reads as it can (see EncryptedFile.pread_ranges)
    src.pread_ranges([(off, flat[at * rb:(at + n) * rb]) for off, at, n in index.spans(start, stop)])
