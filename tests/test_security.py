"""Issue 15: key files, the encrypted container, encrypted shards and checkpoints, masking,
file modes under a permissive umask, trusted paths and hostile manifests (one process)."""

from __future__ import annotations

import json
import os
import stat
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("cryptography")

from hpctrain.cli import main  # noqa: E402
from hpctrain.data.shards import Manifest, ShardError, ShardWriter, iter_arrays, verify  # noqa: E402
from hpctrain.secure import keyring  # noqa: E402
from hpctrain.secure.container import (  # noqa: E402
    HEADER_BYTES, TAG_BYTES, EncryptedFile, decrypt_file, write_encrypted,
)
from hpctrain.secure.keys import Key, SecurityError, keygen, load_key  # noqa: E402


@pytest.fixture(autouse=True)
def _empty_keyring(monkeypatch):
    keyring.clear()
    monkeypatch.delenv("HPCTRAIN_TRUST_PATH", raising=False)
    yield
    keyring.clear()


@pytest.fixture
def keydir(tmp_path):
    d = tmp_path / "keys"
    d.mkdir(mode=0o700)
    return d


def table(n=900, features=6, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, features)).astype(np.float32), rng.integers(0, 3, n)


def write_dir(out, x, y, key=None, rows_per_shard=200):
    with ShardWriter(out, feature_names=None, sample_shape=(x.shape[1],), rows_per_shard=rows_per_shard,
                     classes=[0, 1, 2], key=key) as w:
        w.add(x, y)
    return Path(out)


# -- key files


def test_keygen_writes_0600_under_umask_000_and_never_overwrites(keydir):
    old = os.umask(0)
    try:
        k = keygen(keydir / "k")
    finally:
        os.umask(old)
    assert stat.S_IMODE((keydir / "k").stat().st_mode) == 0o600
    assert load_key(keydir / "k").material == k.material
    before = (keydir / "k").read_bytes()
    with pytest.raises(SecurityError, match="already exists"):
        keygen(keydir / "k")
    assert (keydir / "k").read_bytes() == before


def test_a_key_readable_by_others_is_refused_with_the_chmod_fix(keydir):
    keygen(keydir / "k")
    os.chmod(keydir / "k", 0o644)
    with pytest.raises(SecurityError, match=r"mode 0644.*chmod 600"):
        load_key(keydir / "k")
    os.chmod(keydir / "k", 0o640)
    with pytest.raises(SecurityError, match="chmod 600"):
        load_key(keydir / "k")


def test_a_key_in_a_world_writable_directory_needs_trust_path(tmp_path, monkeypatch):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)  # no sticky bit: anyone could replace the file
    keygen(d / "k")
    with pytest.raises(SecurityError, match="--trust-path"):
        load_key(d / "k")
    assert load_key(d / "k", trust_path=True)
    monkeypatch.setenv("HPCTRAIN_TRUST_PATH", "1")
    assert load_key(d / "k")


def test_a_key_never_shows_its_bytes(keydir):
    k = keygen(keydir / "k")
    for text in (repr(k), str(k), f"{k}", str([k])):
        assert k.material.hex() not in text and "k" in text and k.key_id in text
    with pytest.raises(SecurityError, match="cannot be pickled"):
        import pickle

        pickle.dumps(k)


def test_a_malformed_key_file_is_refused_without_echoing_it(keydir):
    p = keydir / "k"
    p.write_text("secret-passphrase-not-a-key\n")
    os.chmod(p, 0o600)
    with pytest.raises(SecurityError, match="not an hpctrain key") as e:
        load_key(p)
    assert "secret" not in str(e.value)


# -- the container


def _sealed(path, data, key, ident="a.h5", chunk=1000):
    with open(path, "wb") as f:
        write_encrypted(f, data, key, ident, chunk_bytes=chunk)
    return path


def test_container_round_trip_and_random_access(tmp_path):
    k = Key(os.urandom(32), "mem")
    data = os.urandom(10_500)
    p = _sealed(tmp_path / "f", data, k)
    assert p.stat().st_size == HEADER_BYTES + len(data) + 11 * TAG_BYTES
    assert decrypt_file(p, k, "a.h5") == data
    with EncryptedFile(p, k, "a.h5", cache_chunks=2) as f:
        f.seek(2995)
        assert f.read(20) == data[2995:3015]
        f.seek(-5, os.SEEK_END)
        assert f.read() == data[-5:]
    assert decrypt_file(_sealed(tmp_path / "e", b"", k), k, "a.h5") == b""


@pytest.mark.parametrize("damage", ["flip", "truncate", "extend", "swap", "foreign_chunk", "wrong_key", "renamed"])
def test_every_tampering_fails_naming_the_file_and_returns_nothing(tmp_path, damage):
    k = Key(os.urandom(32), "mem")
    data = os.urandom(5000)
    p = _sealed(tmp_path / "f", data, k)
    raw = bytearray(p.read_bytes())
    ident, key = "a.h5", k
    sealed = 1000 + TAG_BYTES
    if damage == "flip":
        raw[HEADER_BYTES + 2 * sealed + 17] ^= 0x01
    elif damage == "truncate":
        raw = raw[:-sealed]
    elif damage == "extend":
        raw += b"\0" * 16
    elif damage == "swap":
        a, b = HEADER_BYTES + sealed, HEADER_BYTES + 2 * sealed
        raw[a:a + sealed], raw[b:b + sealed] = raw[b:b + sealed], raw[a:a + sealed]
    elif damage == "foreign_chunk":  # same key, same name, same size: a chunk of another file
        other = bytearray(_sealed(tmp_path / "g", os.urandom(5000), k).read_bytes())
        a = HEADER_BYTES + sealed
        raw[a:a + sealed] = other[a:a + sealed]
    elif damage == "wrong_key":
        key = Key(os.urandom(32), "other-key")
    elif damage == "renamed":
        ident = "b.h5"
    p.write_bytes(bytes(raw))
    with pytest.raises(SecurityError, match=r"encrypted file '.*/f'.*nothing from it was used") as e:
        decrypt_file(p, key, ident)
    if damage == "wrong_key":
        assert "another key" in str(e.value) and "other-key" in str(e.value)


def test_a_failed_chunk_leaves_zeros_not_plaintext_in_the_callers_buffer(tmp_path):
    k = Key(os.urandom(32), "mem")
    data = os.urandom(4000)
    p = _sealed(tmp_path / "f", data, k)
    raw = bytearray(p.read_bytes())
    raw[HEADER_BYTES + (1000 + TAG_BYTES) + 5] ^= 0x01  # chunk 1
    p.write_bytes(bytes(raw))
    out = bytearray(b"\xff" * 4000)
    f = EncryptedFile(p, k, "a.h5")
    with pytest.raises(SecurityError, match="chunk 1 of 4"):
        f.readinto(out)
    assert out[:1000] == data[:1000]  # chunk 0 passed its tag
    assert out[1000:2000] == bytes(1000)  # chunk 1 did not: wiped, never plaintext of a bad chunk
    with pytest.raises(SecurityError):  # and the file stays failed
        f.seek(0)
        f.read(10)
    f.close()


# -- encrypted shards


def test_encrypted_shards_read_back_equal_to_plaintext_and_the_loader_agrees(tmp_path, keydir):
    from hpctrain.data.loader import ShardLoader

    x, y = table()
    k = keygen(keydir / "k")
    plain = write_dir(tmp_path / "plain", x, y)
    enc = write_dir(tmp_path / "enc", x, y, key=k)
    m = Manifest.load(enc)
    assert m.encryption == {"cipher": "AES-256-GCM", "container": 1, "chunk_bytes": 262144, "key_id": k.key_id}
    for s in m.shards:  # no HDF5 signature anywhere: the files are ciphertext
        assert (enc / s.file).read_bytes()[:8] == b"HPCTAEAD"
    with pytest.raises(ShardError, match=rf"encrypted with the key of id {k.key_id}.*--key KEYFILE"):
        next(iter_arrays(enc))
    assert verify(enc) == []  # without the key: the sha256 over the ciphertext
    keyring.add(keydir / "k")
    assert verify(enc) == []  # with it: schema, chunk checksums, class counts too
    got = np.concatenate([a for _, a, _ in iter_arrays(enc)])
    np.testing.assert_array_equal(got, np.concatenate([a for _, a, _ in iter_arrays(plain)]))
    for epoch in (0, 1):
        batches = []
        for d in (plain, enc):
            L = ShardLoader(d, batch_size=50, seed=3, prefetch=1, buffer_rows=300)
            L.set_epoch(epoch)
            batches.append([(bx.numpy().copy(), by.numpy().copy()) for bx, by in L])
        assert len(batches[0]) == len(batches[1]) == 900 // 50
        for (a, ay), (b, by) in zip(*batches):
            np.testing.assert_array_equal(a, b)
            np.testing.assert_array_equal(ay, by)


def test_a_tampered_or_swapped_shard_fails_by_name_before_any_of_it_is_yielded(tmp_path, keydir):
    x, y = table()
    k = keyring.add(keygen(keydir / "k"))
    enc = write_dir(tmp_path / "enc", x, y, key=k)
    first, second = (enc / "train-00000.h5"), (enc / "train-00001.h5")
    raw = bytearray(first.read_bytes())
    raw[len(raw) - 40] ^= 0x80  # in the last chunk: a streaming reader would have used the rest
    first.write_bytes(bytes(raw))
    seen = []
    with pytest.raises(ShardError, match=r"train-00000\.h5"):
        for info, _, _ in iter_arrays(enc):
            seen.append(info.file)
    assert seen == []
    assert any("train-00000.h5" in p for p in verify(enc))  # sha256 catches it, key or not

    enc2 = write_dir(tmp_path / "enc2", x, y, key=k)
    a, b = enc2 / "train-00000.h5", enc2 / "train-00001.h5"
    da, db = a.read_bytes(), b.read_bytes()
    a.write_bytes(db)
    b.write_bytes(da)
    m = Manifest.load(enc2)
    with pytest.raises(ShardError, match=r"train-00000\.h5.*renamed from another name"):
        next(iter_arrays(m))
    del second


def test_wrong_key_for_an_encrypted_shard_names_the_file(tmp_path, keydir):
    x, y = table()
    k = keygen(keydir / "k")
    enc = write_dir(tmp_path / "enc", x, y, key=k)
    other = keygen(keydir / "other")
    # a manifest edited to point at another key id still cannot decrypt: the file's own check says so
    d = json.loads((enc / "manifest.json").read_text())
    d["meta"]["encryption"]["key_id"] = other.key_id
    (enc / "manifest.json").write_text(json.dumps(d))
    keyring.add(other)
    with pytest.raises(ShardError, match=r"train-00000\.h5.*another key"):
        next(iter_arrays(enc))


def test_shard_cli_encrypts_and_verify_works_without_the_key(tmp_path, keydir, capsys):
    assert main(["keygen", str(keydir / "k")]) == 0
    assert main(["keygen", str(keydir / "k")]) == 2
    assert "already exists" in capsys.readouterr().err
    out = tmp_path / "s"
    assert main(["shard", "synthetic:classification?rows=1200&features=5&classes=3", "--out", str(out),
                 "--encrypt", str(keydir / "k"), "--val-fraction", "0.2"]) == 0
    assert main(["shard", "verify", str(out)]) == 0
    assert "sha256 of the ciphertext" in capsys.readouterr().out
    assert main(["shard", "verify", str(out), "--key", str(keydir / "k")]) == 0
    assert "chunk checksums" in capsys.readouterr().out
    os.chmod(keydir / "k", 0o644)
    assert main(["shard", "verify", str(out), "--key", str(keydir / "k")]) == 2
    assert "chmod 600" in capsys.readouterr().err


# -- masking


def _masked(tmp_path, name, key_path, *masks):
    out = tmp_path / name
    argv = ["shard", "synthetic:classification?rows=600&features=5&classes=3&seed=4", "--out", str(out),
            "--no-shuffle", "--rows-per-shard", "600"]
    for m in masks:
        argv += ["--mask", m]
    if key_path:
        argv += ["--mask-key", str(key_path)]
    assert main(argv) == 0
    return out


def test_hash_masking_is_stable_per_key_and_differs_between_keys(tmp_path, keydir, capsys):
    k1, k2 = keydir / "k1", keydir / "k2"
    keygen(k1)
    keygen(k2)
    plain = _masked(tmp_path, "plain", None, "f2:redact")
    a = _masked(tmp_path, "a", k1, "f0:hash", "f1:drop", "f2:redact")
    b = _masked(tmp_path, "b", k1, "f0:hash", "f1:drop", "f2:redact")
    c = _masked(tmp_path, "c", k2, "f0:hash", "f1:drop", "f2:redact")
    xp = next(iter_arrays(plain))[1]
    xa, xb, xc = (next(iter_arrays(d))[1] for d in (a, b, c))
    m = Manifest.load(a)
    assert m.schema.feature_names == ["f0", "f2", "f3", "f4"]
    np.testing.assert_array_equal(xa, xb)  # same key: same pseudonyms, run after run
    assert (xa[:, 0] != xc[:, 0]).mean() > 0.99  # another key: other pseudonyms
    assert not np.isin(xa[:, 0], xp[:, 0]).any()  # no original value survives
    assert (xa[:, 0] == np.round(xa[:, 0])).all() and xa[:, 0].max() < 2 ** 24
    # equal inputs map to equal pseudonyms (joins stay possible)
    _, first = np.unique(xp[:, 0], return_index=True)
    assert len(np.unique(xa[:, 0])) == len(first)
    assert (xa[:, 1] == 0).all() and (xp[:, 2] == 0).all()
    np.testing.assert_array_equal(xa[:, 2:], xp[:, 3:])
    assert m.meta["masking"] == [{"column": "f0", "method": "hash", "key_id": load_key(k1).key_id, "bits": 24},
                                 {"column": "f1", "method": "drop"}, {"column": "f2", "method": "redact"}]


@pytest.mark.parametrize("argv_tail, fragment", [
    (["--mask", "f0:hash"], "--mask-key"),
    (["--mask", "nope:drop"], "no feature column 'nope'"),
    (["--mask", "f0:blur"], "METHOD one of hash, drop, redact"),
    (["--mask", "f0:drop", "--mask", "f0:redact"], "twice"),
])
def test_bad_masks_are_one_line_errors(tmp_path, capsys, argv_tail, fragment):
    rc = main(["shard", "synthetic:classification?rows=100&features=3&classes=2", "--out", str(tmp_path / "o"),
               *argv_tail])
    err = capsys.readouterr().err
    assert rc == 2 and fragment in err and len(err.strip().splitlines()) == 1


# -- hostile manifests and shards


def test_oversized_deeply_nested_and_row_count_lying_manifests_are_refused(tmp_path, monkeypatch):
    import hpctrain.data.manifest as M

    x, y = table(300)
    d = write_dir(tmp_path / "d", x, y, rows_per_shard=100)
    text = (d / "manifest.json").read_text()
    monkeypatch.setattr(M, "MAX_MANIFEST_BYTES", len(text) - 1)
    with pytest.raises(ShardError, match="over the"):
        Manifest.load(d)
    monkeypatch.undo()
    (d / "manifest.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ShardError, match="nested too deeply|not an hpctrain shard manifest"):
        Manifest.load(d)
    doc = json.loads(text)
    doc["shards"][0]["rows"] = 120  # the file holds 100
    doc["shards"][0]["class_counts"] = {"0": 120}
    (d / "manifest.json").write_text(json.dumps(doc))
    with pytest.raises(ShardError, match=r"train-00000\.h5.*x is float32\(100, 6\), manifest says float32\(120, 6\)"):
        list(iter_arrays(d))


def test_a_farm_task_argument_with_shell_syntax_stays_one_argument(tmp_path, monkeypatch):
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(name, raising=False)
    canary = tmp_path / "canary"
    canary.mkdir()
    (canary / "keep").write_text("x")
    got = tmp_path / "got.txt"
    hostile = f"x; rm -rf {canary}; echo pwned"
    code = "import sys; open(sys.argv[1], 'w').write(sys.argv[2])"
    tf = tmp_path / "t.jsonl"
    tf.write_text(json.dumps({"id": "t", "cmd": [sys.executable, "-c", code, str(got), hostile]}) + "\n")
    assert main(["farm", str(tf), "--out", str(tmp_path / "out"), "--local-workers", "1", "--no-progress"]) == 0
    assert got.read_text() == hostile
    assert (canary / "keep").is_file()


# -- training: encrypted data and checkpoints, resume, modes, no key bytes anywhere


def _blobs(root: Path, key=None) -> Path:
    rng = np.random.default_rng(0)
    centers = rng.normal(0, 3, size=(3, 6))
    with ShardWriter(root, feature_names=[f"f{i}" for i in range(6)], sample_shape=(6,), rows_per_shard=64,
                     classes=[0, 1, 2], key=key) as w:
        for split, n in (("train", 240), ("val", 60)):
            yy = rng.integers(0, 3, n)
            w.add((centers[yy] + rng.normal(0, 1.0, size=(n, 6))).astype(np.float32), yy, split=split)
    return root


def _cfg(data_dir, run_dir, **extra):
    from hpctrain.train.config import load_config

    base = {"run": {"name": "t", "dir": str(run_dir), "epochs": 2, "seed": 5},
            "data": {"dir": str(data_dir), "batch_size": 16, "prefetch": 0},
            "model": {"kind": "mlp", "hidden": [16]}, "optimizer": {"name": "adamw", "lr": 0.01},
            "checkpoint": {"every_steps": 4, "keep": 50},
            "logging": {"every_steps": 2, "plots": True, "progress": False}, "comm": {"backend": "mpi"}}
    for k, v in extra.items():
        base[k] = {**base.get(k, {}), **v}
    return load_config(base)


def _modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode) for p in [root, *root.rglob("*")]}


def test_encrypted_training_resumes_exactly_privately_and_leaks_no_key(tmp_path, keydir):
    torch = pytest.importorskip("torch")
    torch.set_num_threads(1)
    from hpctrain.train.checkpoint import load
    from hpctrain.train.trainer import train

    key = keygen(keydir / "k")
    plain = _blobs(tmp_path / "plain")
    enc = _blobs(tmp_path / "enc", key)
    full = train(_cfg(plain, tmp_path / "full"))
    keyring.clear()  # the run loads data.key itself

    calls = {"n": 0}

    def stop():
        calls["n"] += 1
        return calls["n"] == 18

    cfg = _cfg(enc, tmp_path / "cut", data={"key": str(keydir / "k")}, checkpoint={"encrypt": str(keydir / "k")})
    old = os.umask(0)
    try:
        assert train(cfg, stop_requested=stop).status == "interrupted"
        keyring.clear()
        os.umask(0)
        second = train(cfg)
    finally:
        os.umask(old)
    assert second.status == "completed" and second.resumed_from.endswith("step-00000017.pt")
    run = tmp_path / "cut"
    for name in ("final.pt", "step-00000017.pt"):
        assert (run / "checkpoints" / name).read_bytes()[:8] == b"HPCTAEAD"
    a, b = load(tmp_path / "full" / "checkpoints" / "final.pt"), load(run / "checkpoints" / "final.pt")
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    assert full.metrics["val_macro_f1"] == second.metrics["val_macro_f1"]
    # umask 000, yet nothing in the run dir is open to group or others
    modes = _modes(run)
    assert modes["."] == 0o700 and modes["checkpoints"] == 0o700
    loose = {p: oct(m) for p, m in modes.items() if m & 0o077}
    assert not loose, loose
    # without the key, the encrypted checkpoint is refused with the fix
    keyring.clear()
    from hpctrain.train.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="checkpoint.encrypt"):
        load(run / "checkpoints" / "final.pt")
    # no key bytes (raw or hex) in anything the run or the shard writer wrote; the path is fine
    needles = [key.material, key.material.hex().encode(), key.material.hex().upper().encode()]
    files = [p for p in [*run.rglob("*"), *enc.rglob("*")] if p.is_file()]
    assert any(p.name == "config.resolved.json" for p in files) and any(p.suffix == ".png" for p in files)
    for p in files:
        data = p.read_bytes()
        assert not any(n in data for n in needles), p
    resolved = json.loads((run / "config.resolved.json").read_text())
    assert json.dumps(resolved).count(str(keydir / "k")) >= 1


def test_group_share_opens_the_run_dir_to_the_group_only(tmp_path):
    pytest.importorskip("torch")
    from hpctrain.train.trainer import train

    data = _blobs(tmp_path / "plain")
    old = os.umask(0)
    try:
        assert train(_cfg(data, tmp_path / "g", run={"group_share": True, "epochs": 1})).status == "completed"
    finally:
        os.umask(old)
    modes = _modes(tmp_path / "g")
    assert modes["."] == 0o750
    assert all(m & 0o007 == 0 and m & 0o020 == 0 for m in modes.values()), modes
    assert modes["checkpoints/final.pt"] == 0o640


# -- serve: bearer token


def _call(app, path, headers=()):
    import asyncio

    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "GET", "path": path, "headers": list(headers)}
    asyncio.run(app(scope, receive, send))
    return sent[0]["status"]


def test_token_file_guards_every_endpoint_but_health(tmp_path):
    pytest.importorskip("starlette")
    from hpctrain.serve.server import _loopback, _RequireToken
    from hpctrain.secure.keys import read_token

    async def inner(scope, receive, send):
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    tok = tmp_path / "token"
    tok.write_text("s3cret-token-0123456789\n")
    os.chmod(tok, 0o644)
    with pytest.raises(SecurityError, match="chmod 600"):
        read_token(tok)
    os.chmod(tok, 0o600)
    app = _RequireToken(inner, read_token(tok))
    assert _call(app, "/health") == 200
    for path in ("/predict", "/ready", "/metadata", "/metrics", "/nope"):
        assert _call(app, path) == 401
        assert _call(app, path, [(b"authorization", b"Bearer wrong-token-0123456789")]) == 401
        assert _call(app, path, [(b"authorization", b"Bearer s3cret-token-0123456789")]) == 200
    assert _loopback("127.0.0.1") and _loopback("::1") and _loopback("localhost")
    assert not _loopback("0.0.0.0") and not _loopback("10.1.2.3")


# -- encrypted model artifacts


def test_export_encrypts_the_weights_and_predict_needs_the_key(tmp_path, keydir, capsys):
    pytest.importorskip("torch")
    pytest.importorskip("safetensors")
    from hpctrain.predict import load_run
    from hpctrain.train.trainer import train

    keygen(keydir / "k")
    keygen(keydir / "ak")
    data = _blobs(tmp_path / "plain")
    run = tmp_path / "run"
    assert train(_cfg(data, run, run={"epochs": 1}, checkpoint={"encrypt": str(keydir / "k")})).status == "completed"
    keyring.clear()
    # the run's checkpoints are encrypted: export needs their key
    assert main(["export", str(run), "--out", str(tmp_path / "m0")]) == 2
    assert "checkpoint.encrypt" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "plainm"), "--key", str(keydir / "k")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "m"), "--key", str(keydir / "k"),
                 "--encrypt", str(keydir / "ak")]) == 0
    keyring.clear()
    art = json.loads((tmp_path / "m" / "artifact.json").read_text())
    assert art["weights"]["encryption"]["key_id"] == load_key(keydir / "ak").key_id
    assert (tmp_path / "m" / art["weights"]["file"]).read_bytes()[:8] == b"HPCTAEAD"
    assert main(["predict", str(tmp_path / "m"), str(data), "--out", str(tmp_path / "p.npz")]) == 2
    err = capsys.readouterr().err
    assert "encrypted with the key of id" in err and "--key" in err
    keyring.add(keydir / "ak")
    x = np.concatenate([a for _, a, _ in iter_arrays(data)])
    np.testing.assert_array_equal(load_run(tmp_path / "m").predict(x), load_run(tmp_path / "plainm").predict(x))
    keyring.clear()
    assert main(["predict", str(tmp_path / "m"), str(data), "--out", str(tmp_path / "p.npz"), "--key",
                 str(keydir / "ak")]) == 0


def test_cli_runs_with_keys_leave_no_key_bytes_in_any_file_or_script(tmp_path, keydir, capsys, monkeypatch):
    """Test 5 of the issue through the commands: shard, train --key, a local submission (its
    submitit pickles and batch script), the sbatch script of --dry-run, profile --key and predict
    --key. Every file written, and everything printed, is free of the key's bytes."""
    pytest.importorskip("torch")
    for name in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "SLURM_PROCID", "SLURM_JOB_ID"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    old = os.umask(0o022)  # 'submit' tightens the process umask for good: give it back afterwards
    try:
        _cli_runs(tmp_path, keydir, capsys)
    finally:
        os.umask(old)


def _cli_runs(tmp_path, keydir, capsys):
    key = keygen(keydir / "k")
    kp = str(keydir / "k")
    assert main(["shard", "synthetic:classification?rows=800&features=5&classes=3", "--out", "enc",
                 "--encrypt", kp, "--val-fraction", "0.25"]) == 0
    cfg = tmp_path / "t.yaml"
    cfg.write_text(f"run: {{name: cli, dir: runs/cli, epochs: 1}}\ndata: {{dir: enc, batch_size: 32}}\n"
                   f"model: {{kind: mlp, hidden: [8]}}\ncomm: {{backend: mpi}}\nlogging: {{progress: false}}\n"
                   f"checkpoint: {{encrypt: {kp}}}\n")
    assert main(["train", str(cfg), "--key", kp]) == 0
    keyring.clear()
    assert main(["submit", str(cfg), "--cluster", "local", "--set", "data.key=" + kp, "--set", "run.dir=runs/sub",
                 "--name", "sub"]) == 0
    keyring.clear()
    assert main(["submit", str(cfg), "--dry-run", "--set", "data.key=" + kp, "--set", "run.dir=runs/dry",
                 "--name", "dry"]) == 0
    keyring.clear()
    assert main(["predict", "runs/cli", "enc", "--out", "p.npz", "--key", kp]) == 0
    pytest.importorskip("sklearn")
    keyring.clear()
    assert main(["profile", "enc", "--out", "prof", "--key", kp]) == 0
    printed = capsys.readouterr()
    needles = [key.material, key.material.hex().encode(), key.material.hex().upper().encode()]
    files = [p for p in tmp_path.rglob("*") if p.is_file() and "keys" not in p.parts]
    names = {p.name for p in files}
    assert "config.resolved.json" in names and "report.html" in names and "manifest.json" in names
    assert any(p.suffix == ".pkl" for p in files)  # submitit's pickles (a local run has no batch script)
    # 'submit' tightened the umask before it created anything: the submitted run is private
    sub = tmp_path / "runs" / "sub"
    loose = {str(p): oct(stat.S_IMODE(p.stat().st_mode)) for p in [sub, *sub.rglob("*")]
             if stat.S_IMODE(p.stat().st_mode) & 0o077}
    assert not loose, loose
    for p in files:
        data = p.read_bytes()
        assert not any(n in data for n in needles), p
    for text in (printed.out, printed.err):
        assert not any(n.decode(errors="ignore") in text for n in needles[1:])
    assert "#SBATCH" in printed.out  # the dry run's script was printed and checked too


def test_commands_that_would_write_a_decrypted_copy_refuse_encrypted_input(tmp_path, keydir, capsys):
    keygen(keydir / "k")
    assert main(["shard", "synthetic:classification?rows=400&features=4&classes=2", "--out", str(tmp_path / "enc"),
                 "--encrypt", str(keydir / "k")]) == 0
    for argv in (["clean", str(tmp_path / "enc"), "--out", str(tmp_path / "c")],
                 ["balance", str(tmp_path / "enc"), "--method", "oversample", "--out", str(tmp_path / "b")],
                 ["impute", "apply", str(tmp_path / "enc"), "--out", str(tmp_path / "i")]):
        capsys.readouterr()
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert "would leave a decrypted copy" in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / argv[-1]).exists()
    # reading commands take the key: imputation statistics from encrypted shards
    assert main(["impute", "fit", str(tmp_path / "enc"), "--key", str(keydir / "k")]) == 0
    assert (tmp_path / "enc" / "imputer.json").is_file()


def test_a_config_or_checkpoint_in_a_world_writable_directory_needs_trust_path(tmp_path, capsys):
    pytest.importorskip("torch")
    from hpctrain.train.checkpoint import load, save_file

    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    cfg = d / "t.yaml"
    cfg.write_text("run: {name: x}\ndata: {dir: nowhere}\n")
    assert main(["train", str(cfg), "--check"]) == 2
    assert "--trust-path" in capsys.readouterr().err
    assert main(["train", str(cfg), "--check", "--trust-path"]) == 2  # now the config is read: its data is missing
    assert "nowhere" in capsys.readouterr().err
    import torch

    save_file(d / "c.pt", {"model": {"w": torch.zeros(2)}})
    os.environ.pop("HPCTRAIN_TRUST_PATH", None)
    with pytest.raises(SecurityError, match="checkpoint .*any user can write"):
        load(d / "c.pt")


def test_a_real_server_with_a_token_file(tmp_path):
    pytest.importorskip("uvicorn")
    pytest.importorskip("safetensors")
    import http.client
    import socket
    import subprocess
    import time

    from hpctrain.train.trainer import train

    data = _blobs(tmp_path / "plain")
    assert train(_cfg(data, tmp_path / "run", run={"epochs": 1})).status == "completed"
    tok = tmp_path / "token"
    tok.write_text("s3cret-token-0123456789\n")
    os.chmod(tok, 0o600)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "hpctrain", "serve", str(tmp_path / "run"), "--port", str(port),
                             "--token-file", str(tok)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))

    def get(path, token=None):
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            c.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
            r = c.getresponse()
            r.read()
            return r.status
        finally:
            c.close()

    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, "the server exited early"
            try:
                if get("/health") == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(0.2)
        assert get("/ready") == 401 and get("/metadata", "wrong-token-0123456789") == 401
        for _ in range(300):  # the model may still be loading: 503 until ready
            if get("/ready", "s3cret-token-0123456789") == 200:
                break
            time.sleep(0.1)
        assert get("/ready", "s3cret-token-0123456789") == 200
        assert get("/metrics", "s3cret-token-0123456789") == 200
    finally:
        proc.terminate()
        proc.wait(timeout=60)
