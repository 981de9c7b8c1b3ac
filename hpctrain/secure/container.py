"""The encrypted file container: AES-256-GCM, chunk by chunk, with random access.

Layout: a 64-byte header, then ``n_chunks`` sealed chunks. Chunk i holds plaintext bytes
``[i*C, min((i+1)*C, size))`` (C = ``chunk_bytes``) followed by its 16-byte GCM tag.

    magic "HPCTAEAD" | version u16 | flags u16 | chunk_bytes u32 | plain_size u64 |
    n_chunks u64 | salt 16 | key_check 16                                 (big-endian)

* Each file gets its own AES key, HMAC-SHA256(master key, label + salt) with a random salt,
  so the chunk index can be the GCM nonce with no chance of a nonce repeating under a key.
* The associated data of chunk i is the whole header (chunk count and size included, so a
  dropped tail chunk or a rewritten count fails), the file's identity (its shard or checkpoint
  name, so a file renamed over another, or a chunk pasted from another file, fails) and i
  (so reordered chunks fail).
* ``key_check`` tells a wrong key apart from a modified file in the error message.
* The file size must equal what the header promises before anything is read, so a truncated
  or extended file is refused at open; every byte handed out has passed its tag.

Readers decrypt on demand into a small LRU cache of chunks (``EncryptedFile``): h5py opens that
object directly, so memory stays bounded and no plaintext ever reaches the disk.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import os
import secrets
import struct
import threading
from collections import OrderedDict
from pathlib import Path
from typing import BinaryIO, Iterator

from hpctrain.secure.keys import Key, SecurityError

MAGIC = b"HPCTAEAD"
VERSION = 1
HEADER = struct.Struct(">8sHHIQQ16s16s")
HEADER_BYTES = HEADER.size  # 64
TAG_BYTES = 16
DEFAULT_CHUNK_BYTES = 256 << 10
CACHE_CHUNKS = 4
# sealed chunks read per positioned read: the scratch buffer is this many chunks per reading
# thread (4 MiB at the default chunk size), shared by all the files the thread reads
READ_CHUNKS = 16
_scratch = threading.local()
# the chunk index is the 96-bit nonce; cap far below that so sizes stay sane
MAX_CHUNKS = 1 << 32


def _aesgcm(material: bytes):
    from hpctrain.extras import require

    require("cryptography", "encryption (--encrypt, --key, checkpoint.encrypt)")
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(material)


def _file_key(key: Key, salt: bytes) -> bytes:
    return hmac.new(key.material, b"hpctrain file key v1" + salt, hashlib.sha256).digest()


def _key_check(file_key: bytes) -> bytes:
    return hmac.new(file_key, b"hpctrain key check v1", hashlib.sha256).digest()[:16]


def _aad(header: bytes, identity: bytes, index: int) -> bytes:
    return header + struct.pack(">I", len(identity)) + identity + struct.pack(">Q", index)


def is_encrypted(path: str | os.PathLike) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


def encrypted_size(plain_size: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    n = max(1, -(-plain_size // chunk_bytes))
    return HEADER_BYTES + plain_size + n * TAG_BYTES


def seal_chunks(data: bytes | memoryview, key: Key, identity: str,
                chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> Iterator[bytes]:
    """The header, then each sealed chunk of ``data`` (an empty input is one empty chunk)."""
    if not 1 <= chunk_bytes < (1 << 32):
        raise SecurityError(f"chunk_bytes {chunk_bytes} must be between 1 and 2**32-1")
    view = memoryview(data)
    n = max(1, -(-len(view) // chunk_bytes))
    if n > MAX_CHUNKS:
        raise SecurityError(f"{len(view)} bytes need {n} chunks of {chunk_bytes}; more than {MAX_CHUNKS}")
    salt = secrets.token_bytes(16)
    fk = _file_key(key, salt)
    header = HEADER.pack(MAGIC, VERSION, 0, chunk_bytes, len(view), n, salt, _key_check(fk))
    yield header
    aead = _aesgcm(fk)
    ident = identity.encode("utf-8")
    for i in range(n):
        yield aead.encrypt(i.to_bytes(12, "big"), bytes(view[i * chunk_bytes:(i + 1) * chunk_bytes]),
                           _aad(header, ident, i))


def write_encrypted(out: BinaryIO, data: bytes | memoryview, key: Key, identity: str,
                    chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> None:
    for piece in seal_chunks(data, key, identity, chunk_bytes):
        out.write(piece)


class EncryptedFile(io.RawIOBase):
    """A read-only, seekable view of the plaintext of an encrypted file.

    Decrypts only the chunks a read touches and keeps the last ``cache_chunks`` of them. The
    first failure (tampering, wrong key) is kept in :attr:`failure`, because a library reading
    through this object (h5py) may swallow the exception and report a vaguer one.
    """

    def __init__(self, path: str | os.PathLike, key: Key, identity: str, *,
                 cache_chunks: int = CACHE_CHUNKS) -> None:
        super().__init__()
        self.path = Path(path)
        self.identity = identity.encode("utf-8")
        self._failure: str | None = None
        self._cache: OrderedDict[int, bytes] = OrderedDict()
        self._cache_chunks = max(1, cache_chunks)
        self._pos = 0
        self._lock = threading.Lock()
        try:
            self._f = open(self.path, "rb", buffering=0)  # reads are whole chunks: no second buffer
        except FileNotFoundError:
            raise SecurityError(f"encrypted file {str(self.path)!r} does not exist") from None
        try:
            self._read_header(key)
        except BaseException:
            self._f.close()
            raise

    def _fail(self, why: str) -> SecurityError:
        self._failure = (f"encrypted file {str(self.path)!r}: {why}; nothing from it was used. Re-create it from its "
                         "source, or pass the key it was written with")
        return SecurityError(self._failure)

    @property
    def failure(self) -> SecurityError | None:
        """The first authentication failure, as a fresh exception. Only the message is kept:
        a stored exception's traceback holds h5py's frames alive, and h5py then crashed at exit."""
        return SecurityError(self._failure) if self._failure is not None else None

    def _read_header(self, key: Key) -> None:
        raw = self._f.read(HEADER_BYTES)
        if len(raw) < HEADER_BYTES or raw[:len(MAGIC)] != MAGIC:
            raise self._fail("not an hpctrain encrypted file (no header); it is plaintext, truncated or another "
                             "format")
        magic, version, _flags, cb, size, n, salt, check = HEADER.unpack(raw)
        if version != VERSION:
            raise self._fail(f"container version {version}, this hpctrain reads {VERSION} (upgrade hpctrain)")
        if cb < 1 or n != max(1, -(-size // cb)) or n > MAX_CHUNKS:
            raise self._fail(f"inconsistent header (chunk size {cb}, {size} bytes, {n} chunks): modified")
        actual = os.fstat(self._f.fileno()).st_size
        want = HEADER_BYTES + size + n * TAG_BYTES
        if actual != want:
            raise self._fail(f"{actual} bytes on disk, the header promises {want}: "
                             + ("truncated" if actual < want else "extended"))
        fk = _file_key(key, salt)
        if not hmac.compare_digest(_key_check(fk), check):
            raise self._fail(f"written with another key than {key.path!r} (id {key.key_id}), or its header "
                             "was modified")
        self.header, self.chunk_bytes, self.size, self.n_chunks = raw, cb, size, n
        self._aead = _aesgcm(fk)
        self._fk = fk
        self._direct = True  # decrypt whole chunks straight into the caller's buffer (see _decrypt_into)

    # -- io.RawIOBase
    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self.size}[whence]
        pos = base + offset
        if pos < 0:
            raise ValueError(f"negative seek position {pos}")
        self._pos = pos
        return pos

    def _read_sealed(self, first: int, last: int) -> memoryview:
        """The sealed chunks first..last (ciphertext and tags, back to back) in one positioned
        read into this thread's scratch buffer. One read, not one per chunk: a read releases the
        GIL, and getting it back can cost a switch interval (5 ms) when another thread of the
        process is busy in Python, as the loader's batch assembly is."""
        start = HEADER_BYTES + first * (self.chunk_bytes + TAG_BYTES)
        n = (last - first) * (self.chunk_bytes + TAG_BYTES) + self._plain_len(last) + TAG_BYTES
        buf = getattr(_scratch, "buf", None)
        if buf is None or len(buf) < n:
            buf = _scratch.buf = bytearray(max(n, READ_CHUNKS * (self.chunk_bytes + TAG_BYTES)))
        view, got = memoryview(buf)[:n], 0
        while got < n:
            k = os.preadv(self._f.fileno(), [view[got:]], start + got)
            if not k:
                raise self._fail(f"chunk {first + got // (self.chunk_bytes + TAG_BYTES)} is cut short on disk "
                                 "(the file shrank after it was opened)")
            got += k
        return view

    def _sealed_of(self, window: memoryview, first: int, i: int) -> memoryview:
        at = (i - first) * (self.chunk_bytes + TAG_BYTES)
        return window[at:at + self._plain_len(i) + TAG_BYTES]

    def _bad_chunk(self, i: int) -> SecurityError:
        return self._fail(f"chunk {i} of {self.n_chunks} fails authentication: the file was modified, its chunks "
                          "reordered or mixed with another file's, or it was renamed from another name than "
                          f"{self.identity.decode(errors='replace')!r}")

    def _open_chunk(self, i: int, sealed: memoryview) -> bytes:
        """Chunk i's plaintext from its sealed bytes, kept in the cache."""
        from cryptography.exceptions import InvalidTag

        try:
            plain = self._aead.decrypt(i.to_bytes(12, "big"), sealed, _aad(self.header, self.identity, i))
        except InvalidTag:
            raise self._bad_chunk(i) from None
        self._cache[i] = plain
        while len(self._cache) > self._cache_chunks:
            self._cache.popitem(last=False)
        return plain

    def _chunk(self, i: int) -> bytes:
        got = self._cache.get(i)
        if got is not None:
            self._cache.move_to_end(i)
            return got
        if self._failure is not None:
            raise SecurityError(self._failure)
        return self._open_chunk(i, self._read_sealed(i, i))

    def _plain_len(self, i: int) -> int:
        return min(self.chunk_bytes, self.size - i * self.chunk_bytes)

    def _decrypt_into(self, i: int, sealed: memoryview, dest: memoryview) -> bool:
        """Decrypt chunk i straight into ``dest`` (exactly its length), saving the copy and the
        allocation of the cached path. If the tag fails, ``dest`` is zeroed before raising, so
        no unauthenticated byte stays behind. False when this cryptography build cannot (older
        versions want 15 spare bytes after the output)."""
        from cryptography.exceptions import InvalidTag
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

        n = len(dest)
        dec = Cipher(algorithms.AES(self._fk), modes.GCM(i.to_bytes(12, "big"), bytes(sealed[n:]))).decryptor()
        dec.authenticate_additional_data(_aad(self.header, self.identity, i))
        try:
            dec.update_into(sealed[:n], dest)
        except ValueError:
            self._direct = False
            return False
        try:
            dec.finalize()
        except InvalidTag:
            dest[:] = bytes(n)
            raise self._bad_chunk(i) from None
        return True

    def readinto(self, b) -> int:
        out = memoryview(b).cast("B")
        want = min(len(out), max(0, self.size - self._pos))
        self.pread_into(self._pos, out[:want])
        self._pos += want
        return want

    def pread_into(self, offset: int, dest) -> None:
        """Fill ``dest`` with the plaintext at ``offset`` (positional: the file position does
        not move). The range must lie inside the file. See :meth:`pread_ranges`."""
        self.pread_ranges([(offset, dest)])

    def pread_ranges(self, pieces) -> None:
        """Fill each ``(offset, dest)`` of ``pieces`` with the plaintext at that offset.

        The sealed chunks are read in windows of up to ``READ_CHUNKS`` (one read per window,
        windows shared by neighbouring pieces); whole chunks inside a piece are decrypted
        straight into it, only partial chunks at its ends pass through the cache. Serialised
        by a lock: the cache is shared."""
        views = []
        for offset, dest in pieces:
            out = memoryview(dest).cast("B")
            if offset < 0 or offset + len(out) > self.size:
                raise ValueError(f"read of {len(out)} bytes at {offset} is outside the {self.size}-byte plaintext "
                                 f"of {str(self.path)!r}")
            if len(out):
                views.append((offset, out))
        views.sort(key=lambda p: p[0])
        cb = self.chunk_bytes
        # the last chunk of the run of touching pieces each piece belongs to: a window never
        # reads the gap between two pieces that share no chunk
        run_end = [0] * len(views)
        for k in range(len(views) - 1, -1, -1):
            off, out = views[k]
            run_end[k] = (off + len(out) - 1) // cb
            if k + 1 < len(views) and views[k + 1][0] // cb <= run_end[k] + 1:
                run_end[k] = max(run_end[k], run_end[k + 1])
        with self._lock:
            if self._failure is not None:
                raise SecurityError(self._failure)
            window, first, last = None, -1, -2
            for k, (offset, out) in enumerate(views):
                done, want = 0, len(out)
                while done < want:
                    i, off = divmod(offset + done, cb)
                    plain_len = self._plain_len(i)
                    whole = off == 0 and want - done >= plain_len
                    cached = self._cache.get(i)
                    if cached is None and not first <= i <= last:
                        first, last = i, min(i + READ_CHUNKS - 1, run_end[k])
                        window = self._read_sealed(first, last)
                    if (whole and cached is None and self._direct
                            and self._decrypt_into(i, self._sealed_of(window, first, i), out[done:done + plain_len])):
                        done += plain_len
                        continue
                    if cached is None:
                        cached = self._open_chunk(i, self._sealed_of(window, first, i))
                    else:
                        self._cache.move_to_end(i)
                    n = min(want - done, len(cached) - off)
                    out[done:done + n] = cached[off:off + n]
                    done += n

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:
            n = max(0, self.size - self._pos)
        buf = bytearray(min(n, max(0, self.size - self._pos)))
        got = self.readinto(buf)
        return bytes(buf[:got])

    def readall(self) -> bytes:
        return self.read(-1)

    def verify_all(self) -> None:
        """Authenticate every chunk (without keeping them): raises on the first bad one."""
        for i in range(self.n_chunks):
            self._chunk(i)

    def close(self) -> None:
        if not self.closed:
            self._f.close()
            self._cache.clear()
        super().close()


def decrypt_file(path: str | os.PathLike, key: Key, identity: str) -> bytes:
    """The whole plaintext of an encrypted file; every chunk is authenticated before any of it
    is returned, so a caller never sees part of a tampered file."""
    with EncryptedFile(path, key, identity, cache_chunks=1) as f:
        out = bytearray(f.size)
        f.readinto(out)
    return bytes(out)
