import json
import os

import pytest

from hpctrain.fileio import append_jsonl, atomic_path, atomic_write_json, sha256_file


def test_atomic_write_replaces(tmp_path):
    p = tmp_path / "sub" / "m.json"
    atomic_write_json(p, {"a": 1})
    atomic_write_json(p, {"a": 2})
    assert json.loads(p.read_text()) == {"a": 2}
    assert [f.name for f in p.parent.iterdir()] == ["m.json"]  # no temp files left


def test_failure_keeps_old_file_and_no_temp(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_path(p) as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("crash mid-write")
    assert p.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["x.bin"]


def test_nan_is_refused_in_json(tmp_path):
    with pytest.raises(ValueError):
        atomic_write_json(tmp_path / "n.json", {"x": float("nan")})
    assert not (tmp_path / "n.json").exists()


def test_sha256_and_jsonl(tmp_path):
    p = tmp_path / "f"
    p.write_bytes(b"abc")
    assert sha256_file(p) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    j = tmp_path / "j.jsonl"
    append_jsonl(j, {"a": 1})
    append_jsonl(j, {"b": 2})
    assert [json.loads(x) for x in j.read_text().splitlines()] == [{"a": 1}, {"b": 2}]
