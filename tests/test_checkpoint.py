"""Checkpoint files: atomic save, pruning, the latest pointer, safe loading, fallback."""

from __future__ import annotations

import pickle
import warnings

import pytest

torch = pytest.importorskip("torch")

from hpctrain.train import checkpoint as C  # noqa: E402


def payload(step):
    return {"model": {"w": torch.full((3,), float(step))}, "step": step, "rng": [{"python": (3, (1, 2), None)}]}


def test_save_prune_and_pointer(tmp_path):
    for s in (5, 10, 15, 20):
        C.save(tmp_path, s, payload(s), keep=2)
    assert [p.name for p in C.candidates(tmp_path)] == ["step-00000020.pt", "step-00000015.pt"]
    import json

    ptr = json.loads((tmp_path / "latest").read_text())
    assert ptr["file"] == "step-00000020.pt" and ptr["step"] == 20
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    path, ck = C.newest_valid(tmp_path)
    assert path.name == "step-00000020.pt" and torch.equal(ck["model"]["w"], torch.full((3,), 20.0))


def test_order_is_by_step_not_name_length(tmp_path):
    C.save(tmp_path, 99999999, payload(1), keep=5)
    C.save(tmp_path, 123456789, payload(2), keep=5)
    assert C.candidates(tmp_path)[0].name == "step-123456789.pt"


def test_truncated_newest_falls_back_with_warning(tmp_path):
    for s in (1, 2, 3):
        C.save(tmp_path, s, payload(s), keep=5)
    newest = tmp_path / "step-00000003.pt"
    newest.write_bytes(newest.read_bytes()[:100])
    with pytest.warns(C.CheckpointWarning, match="step-00000003.pt"):
        path, ck = C.newest_valid(tmp_path)
    assert path.name == "step-00000002.pt" and ck["step"] == 2


def test_bitflip_caught_by_pointer_hash(tmp_path):
    for s in (1, 2):
        C.save(tmp_path, s, payload(s), keep=5)
    newest = tmp_path / "step-00000002.pt"
    data = bytearray(newest.read_bytes())
    # Flip a byte of the tensor data at the end of the zip, where torch.load may not notice.
    data[-200] ^= 0xFF
    newest.write_bytes(bytes(data))
    with pytest.warns(C.CheckpointWarning, match="sha256"):
        path, _ = C.newest_valid(tmp_path)
    assert path.name == "step-00000001.pt"


def test_all_corrupt_or_none(tmp_path):
    assert C.newest_valid(tmp_path / "absent") is None
    (tmp_path / "step-00000001.pt").write_bytes(b"garbage")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert C.newest_valid(tmp_path) is None


class Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_weights_only_refuses_code(tmp_path):
    p = tmp_path / "step-00000001.pt"
    torch.save({"model": {}, "x": Evil()}, p)
    with pytest.raises(C.CheckpointError, match="unreadable"):
        C.load(p)
    q = tmp_path / "plain.pt"
    q.write_bytes(pickle.dumps([1, 2]))
    with pytest.raises(C.CheckpointError):
        C.load(q)
    with pytest.raises(C.CheckpointError, match="does not exist"):
        C.load(tmp_path / "nope.pt")
