"""The keys this process holds, by key id: what ``--key``/``data.key`` load once, and what
every reader of an encrypted file looks up by the id its manifest or pointer records.

Readers deep inside the data layer (validation, profiling, prediction) take a directory, not a
key; looking the key up here keeps the key off every signature in between, and only the key
*path* ever travels in configs and job specs: each process loads the key itself.
"""

from __future__ import annotations

import os

from hpctrain.secure.keys import Key, SecurityError, as_key

_KEYS: dict[str, Key] = {}


def add(key: Key | str | os.PathLike, *, trust_path: bool = False) -> Key:
    """Load ``key`` (a Key or a key file path) into this process's keyring; returns it."""
    k = as_key(key, trust_path=trust_path)
    assert k is not None
    _KEYS[k.key_id] = k
    return k


def get(key_id: str, what: str) -> Key:
    """The held key with ``key_id``, or a SecurityError telling how to supply it."""
    k = _KEYS.get(key_id)
    if k is not None:
        return k
    held = ", ".join(f"{v.path} (id {i})" for i, v in _KEYS.items()) or "none"
    raise SecurityError(f"{what} is encrypted with the key of id {key_id}; keys given: {held}. Pass that key "
                        "file with --key KEYFILE (or data.key: KEYFILE in the config)")


def clear() -> None:
    _KEYS.clear()


def held() -> list[Key]:
    return list(_KEYS.values())
