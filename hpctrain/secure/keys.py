"""Key files: creating them (``hpctrain keygen``), reading them, and keeping the bytes out of sight.

A key file holds 32 random bytes as 64 hex digits and a newline. It must be a regular file
that only its owner can read: one readable by group or others is refused with the chmod fix,
and so is one in a directory anyone can write (unless the caller trusts the path), since
whoever can replace the file there chooses the key the job encrypts with.

A :class:`Key` never shows its bytes: its repr and str name the file and a short one-way id,
so an f-string, a log line, an error or a saved config cannot leak the material.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import stat
from pathlib import Path

from hpctrain.errors import HpctrainError

KEY_BYTES = 32
_ID_LABEL = b"hpctrain key id v1"


class SecurityError(HpctrainError):
    """A key file is missing, malformed or too open; encrypted data is tampered with or needs
    another key; or a file comes from a place others can write."""


class Key:
    """32 bytes of key material loaded from ``path``; prints as its path and id only."""

    __slots__ = ("_material", "path")

    def __init__(self, material: bytes, path: str | os.PathLike = "<memory>") -> None:
        if not isinstance(material, bytes) or len(material) != KEY_BYTES:
            raise SecurityError(f"key from {str(path)!r} must be {KEY_BYTES} bytes; create one with "
                                "'hpctrain keygen KEYFILE'")
        self._material = material
        self.path = str(path)

    @property
    def material(self) -> bytes:
        return self._material

    @property
    def key_id(self) -> str:
        """A one-way 16-hex-digit name for the key (HMAC of a fixed label): tells keys apart
        in errors and manifests without revealing anything about the bytes."""
        return hmac.new(self._material, _ID_LABEL, hashlib.sha256).hexdigest()[:16]

    def derive(self, purpose: str) -> bytes:
        """A 32-byte subkey for ``purpose`` (e.g. "mask"), so one key file can serve several
        uses without the same bytes keying two algorithms."""
        return hmac.new(self._material, b"hpctrain subkey v1:" + purpose.encode(), hashlib.sha256).digest()

    def __repr__(self) -> str:
        return f"Key(path={self.path!r}, id={self.key_id})"

    __str__ = __repr__

    def __reduce__(self):  # never pickled into a submitit job or a checkpoint
        raise SecurityError(f"key {self.path!r} cannot be pickled; pass the key file path instead")


def world_writable_dir(path: str | os.PathLike) -> Path | None:
    """The first directory from ``path``'s parent upwards that anyone may write without the
    sticky bit protecting entries (a sticky /tmp is safe: others cannot replace our file)."""
    p = Path(os.path.abspath(path)).parent
    while True:
        try:
            st = p.stat()
        except OSError:
            return None
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            return p
        if p.parent == p:
            return None
        p = p.parent


def check_trusted_location(path: str | os.PathLike, what: str, *, trust_path: bool = False) -> None:
    """Refuse to load ``what`` from a directory that any user can write into (they could
    swap the file), unless the caller passed ``--trust-path`` (which sets HPCTRAIN_TRUST_PATH=1
    for the process and the ranks it starts)."""
    if trust_path or os.environ.get("HPCTRAIN_TRUST_PATH") == "1":
        return
    bad = world_writable_dir(path)
    if bad is not None:
        raise SecurityError(f"{what} {str(path)!r} is in {str(bad)!r}, which any user can write (mode "
                            f"{stat.S_IMODE(bad.stat().st_mode):o}, no sticky bit), so anyone could replace it: "
                            f"move it to a private directory, 'chmod o-w {bad}', or pass --trust-path")


def keygen(path: str | os.PathLike) -> Key:
    """Write a new random key to ``path`` with mode 0600; refuses to overwrite anything."""
    p = Path(path)
    if p.exists() or p.is_symlink():
        raise SecurityError(f"key file {str(p)!r} already exists; hpctrain keygen never overwrites a key (the data "
                            "encrypted with it would be lost): choose another path, or remove the old one yourself")
    if not p.parent.is_dir():
        raise SecurityError(f"directory {str(p.parent)!r} of key file {str(p)!r} does not exist; create it first "
                            "(mode 0700)")
    material = secrets.token_bytes(KEY_BYTES)
    # O_EXCL: a file or link that appears between the check and here is an error, never overwritten;
    # the mode is given at creation so the key is never readable by others, whatever the umask
    try:
        fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    except FileExistsError:
        raise SecurityError(f"key file {str(p)!r} already exists; choose another path") from None
    except OSError as e:
        raise SecurityError(f"cannot create key file {str(p)!r} ({e.strerror}); choose a writable directory") from None
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, material.hex().encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    return Key(material, p)


def load_key(path: str | os.PathLike, *, trust_path: bool = False) -> Key:
    """Read a key file written by :func:`keygen`, refusing one others could read or replace."""
    p = Path(path)
    try:
        st = p.stat()
    except FileNotFoundError:
        raise SecurityError(f"key file {str(p)!r} does not exist; create one with 'hpctrain keygen {p}'") from None
    except OSError as e:
        raise SecurityError(f"key file {str(p)!r} cannot be read ({e.strerror})") from None
    if not stat.S_ISREG(st.st_mode):
        raise SecurityError(f"key file {str(p)!r} is not a regular file; pass the file 'hpctrain keygen' wrote")
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SecurityError(f"key file {str(p)!r} has mode {mode:04o}: group or others can access it; "
                            f"restrict it with 'chmod 600 {p}' (and consider the key compromised if others read it)")
    check_trusted_location(p, "key file", trust_path=trust_path)
    raw = p.read_bytes().strip()
    try:
        material = bytes.fromhex(raw.decode("ascii"))
    except (UnicodeDecodeError, ValueError):
        material = b""
    if len(material) != KEY_BYTES:
        # say what is wrong without echoing any of the file's content
        raise SecurityError(f"key file {str(p)!r} is not an hpctrain key ({KEY_BYTES * 2} hex digits expected, "
                            f"found {len(raw)} characters); create one with 'hpctrain keygen KEYFILE'")
    return Key(material, p)


def read_token(path: str | os.PathLike, *, trust_path: bool = False) -> str:
    """A bearer token from a private file (same rules as a key file: 0600, trusted directory)."""
    p = Path(path)
    try:
        st = p.stat()
    except OSError as e:
        raise SecurityError(f"token file {str(p)!r} cannot be read ({e.strerror}); write one, e.g. "
                            f"'python -c \"import secrets; print(secrets.token_urlsafe(32))\" > {p}; chmod 600 {p}'"
                            ) from None
    mode = stat.S_IMODE(st.st_mode)
    if mode & 0o077:
        raise SecurityError(f"token file {str(p)!r} has mode {mode:04o}: group or others can read it; "
                            f"'chmod 600 {p}'")
    check_trusted_location(p, "token file", trust_path=trust_path)
    token = p.read_text(encoding="utf-8", errors="replace").strip()
    if len(token) < 16 or any(c.isspace() for c in token):
        raise SecurityError(f"token file {str(p)!r} must hold one token of at least 16 characters without spaces "
                            "(e.g. secrets.token_urlsafe(32))")
    return token


def as_key(key: Key | str | os.PathLike | None, *, trust_path: bool = False) -> Key | None:
    """``key`` as a loaded :class:`Key`: a Key passes through, a path is loaded, None stays None."""
    if key is None or isinstance(key, Key):
        return key
    return load_key(key, trust_path=trust_path)
