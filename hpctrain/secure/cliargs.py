"""The security flags several commands share: --key, --trust-path, --group-share."""

from __future__ import annotations

import os

TRUST_ENV = "HPCTRAIN_TRUST_PATH"


def add_key_arguments(p, *, key_help: str = "key file of encrypted shards, checkpoints or artifacts") -> None:
    p.add_argument("--key", metavar="KEYFILE", action="append", default=[],
                   help=f"{key_help} ('hpctrain keygen'); repeatable")
    add_trust_argument(p)


def add_trust_argument(p) -> None:
    if any("--trust-path" in a.option_strings for a in p._actions):
        return
    p.add_argument("--trust-path", action="store_true",
                   help="load configs, keys, checkpoints and artifacts even from a directory any user can write")


def add_share_argument(p) -> None:
    p.add_argument("--group-share", action="store_true",
                   help="open the run dir to your group (0750/0640) instead of private 0700/0600 (run.group_share)")


def apply(args) -> None:
    """Honour --trust-path for this process (and the ranks it starts), then load each --key."""
    if getattr(args, "trust_path", False):
        os.environ[TRUST_ENV] = "1"
    keys = getattr(args, "key", None) or []
    if isinstance(keys, (str, os.PathLike)):  # train's --key is one path (it becomes data.key)
        keys = [keys]
    if keys:
        from hpctrain.secure import keyring

        for k in keys:
            keyring.add(k)


def refuse_encrypted_input(shard_dir, command: str) -> None:
    """Commands that write new shards from their input (clean, balance, impute apply, update)
    would write a decrypted copy: refused for encrypted input rather than leak it."""
    from hpctrain.data.shards import Manifest, ShardError
    from hpctrain.secure.keys import SecurityError

    try:
        enc = Manifest.load(shard_dir, check_files=False).encryption
    except ShardError:
        return  # the command reports a bad directory itself
    if enc:
        raise SecurityError(f"{str(shard_dir)!r} is encrypted; 'hpctrain {command}' writes new shards from it and "
                            "cannot encrypt them yet, so it would leave a decrypted copy: refused. Train on the "
                            "encrypted shards directly (data.key), or re-shard the source with the change and "
                            "--encrypt")


def check_config_path(path, what: str = "config") -> None:
    from hpctrain.secure.keys import check_trusted_location

    check_trusted_location(path, what)
