"""Encrypted shards read without HDF5's file driver: the chunk index, byte ranges, equality
with h5py's reads, fallback for layouts it cannot read, and tampering through this path."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytest.importorskip("cryptography")
h5py = pytest.importorskip("h5py")

from hpctrain.data.direct_read import ChunkIndex, chunk_index, read_rows_direct  # noqa: E402
from hpctrain.data.shards import Manifest, ShardError, ShardWriter  # noqa: E402
from hpctrain.secure import keyring  # noqa: E402
from hpctrain.secure.container import EncryptedFile, write_encrypted  # noqa: E402
from hpctrain.secure.keys import Key, SecurityError, keygen  # noqa: E402


@pytest.fixture(autouse=True)
def _empty_keyring():
    keyring.clear()
    yield
    keyring.clear()


def test_spans_cover_the_rows_chunk_by_chunk_and_merge_adjacent_ranges():
    # chunks of 10 rows x 8 bytes; chunk 1 sits right after chunk 0, chunk 2 elsewhere, 3 partial
    ix = ChunkIndex(rows=35, chunk_rows=10, row_bytes=8, offsets=(1000, 1080, 5000, 9000))
    assert ix.spans(3, 7) == [(1024, 0, 4)]
    assert ix.spans(5, 25) == [(1040, 0, 15), (5000, 15, 5)]  # chunks 0 and 1 merged
    assert ix.spans(28, 35) == [(5064, 0, 2), (9000, 2, 5)]
    assert ix.spans(4, 4) == []
    with pytest.raises(ValueError, match="outside a dataset of 35 rows"):
        ix.spans(30, 36)
    # every row of [a, b) is in exactly one span, in order
    for a in range(36):
        for b in range(a, 36):
            rows = [r for off, at, n in ix.spans(a, b) for r in range(at, at + n)]
            assert rows == list(range(b - a))


def _h5_bytes(path, **dsets):
    with h5py.File(path, "w") as f:
        for name, (data, kw) in dsets.items():
            f.create_dataset(name, data=data, **kw)
    return path.read_bytes()


def _encrypted_h5(tmp_path, chunk_bytes=4096, **dsets):
    """An HDF5 file built in memory, written only as ciphertext with small container chunks
    (so HDF5 chunks straddle container chunks), opened as h5py sees it and as the source."""
    key = Key(os.urandom(32), "mem")
    plain = _h5_bytes(tmp_path / "plain.h5", **dsets)
    p = tmp_path / "enc.h5"
    with open(p, "wb") as out:
        write_encrypted(out, plain, key, "enc.h5", chunk_bytes=chunk_bytes)
    src = EncryptedFile(p, key, "enc.h5")
    return h5py.File(src, "r"), src, p, key


def test_direct_reads_equal_h5py_reads_for_any_row_range(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((1000, 3, 5)).astype(np.float32)
    y = rng.integers(0, 9, 1000)
    f, src, _, _ = _encrypted_h5(tmp_path, x=(x, dict(chunks=(64, 3, 5), fletcher32=True)),
                                 y=(y, dict(chunks=(64,), fletcher32=True)),
                                 c=(x, dict()))  # contiguous
    with f:
        for name, want in (("x", x), ("y", y), ("c", x)):
            ix = chunk_index(f[name])
            assert ix is not None and ix.rows == 1000
            for a, b in [(0, 1000), (0, 1), (63, 65), (100, 611), (960, 1000), (999, 1000), (5, 5)]:
                out = np.full((b - a, *want.shape[1:]), -7, dtype=want.dtype)
                read_rows_direct(src, ix, a, b, out)
                np.testing.assert_array_equal(out, want[a:b])
                np.testing.assert_array_equal(out, f[name][a:b])
        with pytest.raises(ValueError, match="cannot hold rows"):
            read_rows_direct(src, chunk_index(f["x"]), 0, 10, np.zeros((10, 3, 5), np.float32)[:, :, ::2])


@pytest.mark.parametrize("kw", [dict(chunks=(64, 3), compression="gzip"), dict(chunks=(64, 3), compression="lzf"),
                                dict(chunks=(64, 1)), dict(chunks=(64, 3), shuffle=True)])
def test_layouts_it_cannot_read_as_raw_rows_are_left_to_h5py(tmp_path, kw):
    x = np.arange(600, dtype=np.float32).reshape(200, 3)
    f, _, _, _ = _encrypted_h5(tmp_path, x=(x, kw))
    with f:
        assert chunk_index(f["x"]) is None


def test_big_endian_and_unwritten_chunks_are_left_to_h5py(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f.create_dataset("be", data=np.arange(100, dtype=">f4"), chunks=(10,))
        f.create_dataset("sparse", shape=(100,), dtype=np.float32, chunks=(10,))
        f["sparse"][:10] = 1.0  # chunks 1..9 never written: HDF5 returns the fill value
        assert chunk_index(f["be"]) is None
        assert chunk_index(f["sparse"]) is None


def _shards(out, key, rows=20_000, features=16, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((rows, features)).astype(np.float32)
    y = rng.integers(0, 3, rows)
    with ShardWriter(out, feature_names=None, sample_shape=(features,), rows_per_shard=rows // 2,
                     classes=[0, 1, 2], key=key, compression=None) as w:
        w.add(x, y)
    return out


def test_the_loader_reads_uncompressed_encrypted_shards_directly_and_equal_to_plaintext(tmp_path):
    from hpctrain.data.loader import ShardLoader

    k = keyring.add(keygen(tmp_path / "k"))
    plain, enc = _shards(tmp_path / "plain", None), _shards(tmp_path / "enc", k)
    loaders = [ShardLoader(d, batch_size=256, seed=1, prefetch=2, buffer_rows=6000) for d in (plain, enc)]
    got = [[(bx.numpy().copy(), by.numpy().copy()) for bx, by in L] for L in loaders]
    assert len(got[0]) == len(got[1]) > 10
    for (a, ay), (b, by) in zip(*got):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(ay, by)
    # the encrypted loader took the direct path for both datasets of every shard it opened
    opened = list(loaders[1]._files.open.values())
    assert opened and all(direct is not None for *_, direct in opened)
    assert all(direct is None for *_, direct in loaders[0]._files.open.values())
    for L in loaders:
        L.close()


def test_a_modified_chunk_read_directly_fails_by_name_and_leaves_no_plaintext(tmp_path):
    from hpctrain.data.loader import ShardLoader

    k = keyring.add(keygen(tmp_path / "k"))
    enc = _shards(tmp_path / "enc", k)
    m = Manifest.load(enc)
    victim = enc / m.shards[0].file
    raw = bytearray(victim.read_bytes())
    raw[len(raw) // 2] ^= 0x04  # inside the x rows, far from HDF5's metadata at the start
    victim.write_bytes(bytes(raw))
    L = ShardLoader(enc, batch_size=256, seed=1, prefetch=0, shuffle=False)
    with pytest.raises(ShardError, match=rf"{m.shards[0].file}.*fails authentication"):
        for _ in L:
            pass
    L.close()
    # at the container level: the bytes handed out before the bad chunk passed their tags,
    # the bad chunk's share of the destination is zeros
    src = EncryptedFile(victim, k, m.shards[0].file)
    out = np.full(src.size, 0xFF, np.uint8)
    with pytest.raises(SecurityError, match="fails authentication"):
        src.pread_into(0, out)
    bad = (len(raw) // 2 - 64) // (src.chunk_bytes + 16)
    assert not (out[bad * src.chunk_bytes:(bad + 1) * src.chunk_bytes] == 0xFF).any()
    src.close()


def test_positional_reads_leave_the_file_position_alone_and_refuse_ranges_outside(tmp_path):
    key = Key(os.urandom(32), "mem")
    data = os.urandom(10_000)
    p = tmp_path / "f"
    with open(p, "wb") as out:
        write_encrypted(out, data, key, "f", chunk_bytes=1000)
    with EncryptedFile(p, key, "f") as f:
        f.seek(123)
        buf = bytearray(2500)
        f.pread_into(1999, buf)
        assert bytes(buf) == data[1999:4499] and f.tell() == 123
        with pytest.raises(ValueError, match="outside the 10000-byte plaintext"):
            f.pread_into(9000, bytearray(1001))


def test_ranges_share_read_windows_and_equal_the_plaintext(tmp_path, monkeypatch):
    import hpctrain.secure.container as container

    key = Key(os.urandom(32), "mem")
    data = os.urandom(100_000)
    p = tmp_path / "f"
    with open(p, "wb") as out:
        write_encrypted(out, data, key, "f", chunk_bytes=1000)
    reads = []
    real = os.preadv
    monkeypatch.setattr(container.os, "preadv", lambda fd, bufs, off: reads.append(off) or real(fd, bufs, off))
    with EncryptedFile(p, key, "f") as f:
        # out of order; two share chunk 2 (1999..2010 and 2500..); a gap of 40 chunks; then a
        # range longer than one read window
        pieces = [(50_000, bytearray(30_000)), (1999, bytearray(11)), (2500, bytearray(4000)), (0, bytearray(7))]
        f.pread_ranges(pieces)
        for off, buf in pieces:
            assert bytes(buf) == data[off:off + len(buf)]
        # chunks 0-6 in one window, then 50..79 in windows of READ_CHUNKS: no read of the gap
        assert reads[0] == container.HEADER_BYTES
        assert len(reads) == 1 + -(-30 // container.READ_CHUNKS)
        assert all(off >= container.HEADER_BYTES + 50 * 1016 for off in reads[1:])
        reads.clear()
        f.pread_ranges([(1999, bytearray(11))])  # chunks 1 and 2 are in the cache: no read at all
        assert reads == []
