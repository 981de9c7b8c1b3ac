"""Shard format: exact round trips, mergeable column statistics, manifest and corruption errors."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from hpctrain.data.shards import (
    MANIFEST_NAME, ColumnStats, Manifest, ShardError, ShardWriter, iter_arrays, verify,
)


def _write(root, x, y, rows_per_shard, split=None, **kw):
    with ShardWriter(root, feature_names=None, sample_shape=x.shape[1:], rows_per_shard=rows_per_shard, **kw) as w:
        if split is None:
            w.add(x, y)
        else:
            for s in ("train", "val"):
                w.add(x[split == s], y[split == s], split=s)
    return Manifest.load(root)


def _read(m, split=None):
    xs, ys = zip(*[(x, y) for _, x, y in iter_arrays(m, split)])
    return np.concatenate(xs), np.concatenate(ys)


float_elems = st.one_of(st.floats(width=32, allow_nan=True, allow_infinity=True),
                        st.sampled_from([np.nan, np.inf, -np.inf, 0.0, -0.0]))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(shape=st.tuples(st.integers(1, 40), st.sampled_from([(1,), (3,), (2, 3), (1, 2, 3)])),
       rows_per_shard=st.integers(1, 17), data=st.data())
def test_round_trip_exact(tmp_path_factory, shape, rows_per_shard, data):
    n, sample = shape
    x = data.draw(hnp.arrays(np.float32, (n, *sample), elements=float_elems))
    y = data.draw(hnp.arrays(np.int64, (n,), elements=st.integers(-3, 5)))
    root = tmp_path_factory.mktemp("rt")
    m = _write(root, x, y, rows_per_shard, compression=data.draw(st.sampled_from(["none", "lzf", "gzip"])))
    gx, gy = _read(m)
    # Bit-exact, so NaN payloads, -0.0 and inf all survive.
    assert gx.dtype == np.float32 and gx.shape == x.shape
    assert gx.tobytes() == x.tobytes()
    assert np.array_equal(gy, y)
    assert len(m.shards) == -(-n // rows_per_shard)
    assert m.schema.sample_shape == sample
    assert m.class_counts() == {int(k): int(v) for k, v in zip(*np.unique(y, return_counts=True))}


def test_column_stats_match_numpy_and_merge(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(3, 2, size=(500, 6)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    x[5, 2], x[6, 2] = np.inf, -np.inf
    y = rng.integers(0, 4, 500)
    m = _write(tmp_path / "s", x, y, 97)
    st_ = m.column_stats()
    fin = np.where(np.isfinite(x), x, np.nan).astype(np.float64)
    np.testing.assert_allclose(st_.mean(), np.nanmean(fin, 0), rtol=1e-10)
    np.testing.assert_allclose(st_.std(), np.nanstd(fin, 0), rtol=1e-8)
    np.testing.assert_array_equal(st_.nan_count, np.isnan(x).sum(0))
    np.testing.assert_array_equal(st_.count, np.isfinite(x).sum(0))
    np.testing.assert_array_equal(st_.inf_count, np.isinf(x).sum(0))
    np.testing.assert_array_equal(st_.min, np.nanmin(fin, 0))
    np.testing.assert_array_equal(st_.max, np.nanmax(fin, 0))
    # JSON round trip and merge of halves equals the whole
    whole = ColumnStats.from_array(x)
    halves = ColumnStats.from_array(x[:123]).merge(ColumnStats.from_array(x[123:]))
    back = ColumnStats.from_json(json.loads(json.dumps(halves.to_json())))
    for k in ("count", "nan_count", "inf_count", "min", "max"):
        np.testing.assert_array_equal(getattr(back, k), getattr(whole, k))
    np.testing.assert_allclose(back.sum, whole.sum, rtol=1e-12)


def test_all_nan_column_stats_survive_json():
    x = np.full((4, 2), np.nan, np.float32)
    s = ColumnStats.from_json(json.loads(json.dumps(ColumnStats.from_array(x).to_json(), allow_nan=False)))
    assert np.all(s.count == 0) and np.all(s.nan_count == 4)
    assert np.all(np.isnan(s.mean())) and np.all(s.min == np.inf)


def test_splits_and_manifest_contents(tmp_path):
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    y = np.arange(20) % 2
    split = np.where(np.arange(20) % 4 == 0, "val", "train")
    m = _write(tmp_path / "s", x, y, 4, split=split)
    assert m.rows("train") == 15 and m.rows("val") == 5 and m.rows() == 20
    gx, gy = _read(m, "val")
    assert np.array_equal(gx, x[split == "val"]) and np.array_equal(gy, y[split == "val"])
    d = json.loads((tmp_path / "s" / MANIFEST_NAME).read_text())
    assert d["version"] == 1 and d["schema"]["sample_shape"] == [3]
    assert all(len(s["sha256"]) == 64 for s in d["shards"])
    assert verify(tmp_path / "s") == []


def test_writer_exception_leaves_nothing(tmp_path):
    out = tmp_path / "s"
    with pytest.raises(RuntimeError):
        with ShardWriter(out, feature_names=["a"], sample_shape=(1,), rows_per_shard=2) as w:
            w.add(np.ones((5, 1)), np.zeros(5, int))
            raise RuntimeError("boom")
    assert not out.exists()  # the writer created it, so it removes it
    (tmp_path / "keep").mkdir()
    with pytest.raises(RuntimeError):
        with ShardWriter(tmp_path / "keep", feature_names=["a"], sample_shape=(1,), rows_per_shard=2) as w:
            w.add(np.ones((5, 1)), np.zeros(5, int))
            raise RuntimeError("boom")
    assert list((tmp_path / "keep").iterdir()) == []
    with pytest.raises(ShardError, match="not a shard directory|no manifest|does not exist"):
        Manifest.load(out)


def test_empty_input_and_shape_mismatch(tmp_path):
    with pytest.raises(ShardError, match="empty"):
        with ShardWriter(tmp_path / "e", feature_names=None, sample_shape=(2,)) as w:
            w.add(np.zeros((0, 2)), np.zeros(0, int))
    assert not (tmp_path / "e" / MANIFEST_NAME).exists()
    with ShardWriter(tmp_path / "m", feature_names=None, sample_shape=(2,)) as w:
        with pytest.raises(ShardError, match="same shape"):
            w.add(np.zeros((3, 3)), np.zeros(3, int))
        with pytest.raises(ShardError, match="not an integer"):
            w.add(np.zeros((2, 2)), np.array([0.5, 1.0]))
        w.add(np.zeros((2, 2)), np.array([0, 1]))


def test_refuses_nonempty_dir_unless_overwrite(tmp_path):
    x, y = np.zeros((4, 2), np.float32), np.zeros(4, int)
    _write(tmp_path / "s", x, y, 2)
    with pytest.raises(ShardError, match="not empty"):
        _write(tmp_path / "s", x, y, 2)
    m = _write(tmp_path / "s", x[:3], y[:3], 3, overwrite=True)
    assert m.rows() == 3 and sorted(p.name for p in (tmp_path / "s").iterdir()) == ["manifest.json", "train-00000.h5"]
    # imputer statistics beside the manifest describe the old shards: replaced along with them
    (tmp_path / "s" / "imputer.json").write_text("{}")
    _write(tmp_path / "s", x, y, 2, overwrite=True)
    assert not (tmp_path / "s" / "imputer.json").exists()
    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    with pytest.raises(ShardError, match="not hpctrain shards"):
        _write(tmp_path / "o", x, y, 2, overwrite=True)


@pytest.fixture
def shard_dir(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(3000, 8)).astype(np.float32)
    y = rng.integers(0, 3, 3000)
    _write(tmp_path / "s", x, y, 1000, compression="none")
    return tmp_path / "s"


def test_bit_flip_named(shard_dir):
    p = shard_dir / "train-00001.h5"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 0x10
    p.write_bytes(bytes(b))
    probs = verify(shard_dir)
    assert len(probs) == 1 and "train-00001.h5" in probs[0] and "sha256" in probs[0]
    with pytest.raises(ShardError, match=r"train-00001\.h5.*sha256"):
        list(iter_arrays(shard_dir, verify=True))
    # Without the sha256 check, fletcher32 still refuses the flipped chunk.
    with pytest.raises(ShardError, match=r"train-00001\.h5"):
        list(iter_arrays(shard_dir))


def test_truncated_named(shard_dir):
    p = shard_dir / "train-00002.h5"
    p.write_bytes(p.read_bytes()[:5000])
    assert any("train-00002.h5" in s for s in verify(shard_dir))
    # The message must say truncated/corrupt (HDF5's "sblock" once made it read as a locking failure).
    with pytest.raises(ShardError, match=r"train-00002\.h5' cannot be opened as HDF5.*truncated or corrupt"):
        list(iter_arrays(shard_dir))


def test_missing_file_and_bad_manifests(shard_dir):
    (shard_dir / "train-00000.h5").unlink()
    with pytest.raises(ShardError, match=r"train-00000\.h5.*does not exist"):
        Manifest.load(shard_dir)
    mp = shard_dir / MANIFEST_NAME
    d = json.loads(mp.read_text())
    d["shards"][0]["file"] = "../../etc/passwd"
    mp.write_text(json.dumps(d))
    with pytest.raises(ShardError, match="outside"):
        Manifest.load(shard_dir)
    d["version"] = 99
    mp.write_text(json.dumps(d))
    with pytest.raises(ShardError, match="upgrade"):
        Manifest.load(shard_dir)
    mp.write_text("{not json")
    with pytest.raises(ShardError, match="not valid JSON"):
        Manifest.load(shard_dir)
    with pytest.raises(ShardError, match="does not exist"):
        Manifest.load(shard_dir / "nope")


def test_shard_with_wrong_shape_named(shard_dir, tmp_path):
    other = tmp_path / "o"
    _write(other, np.zeros((1000, 5), np.float32), np.zeros(1000, int), 1000)
    (shard_dir / "train-00001.h5").write_bytes((other / "train-00000.h5").read_bytes())
    with pytest.raises(ShardError, match=r"train-00001\.h5.*x is float32\(1000, 5\)"):
        list(iter_arrays(shard_dir))


def test_imports_stay_light():
    import subprocess
    import sys

    code = ("import sys, hpctrain.data, hpctrain.data.shards, hpctrain.commands.shard; "
            "from hpctrain.data import Manifest; "
            "print(sorted(m for m in ('h5py', 'torch', 'sklearn', 'pyarrow') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr


def _edit_manifest(root, change):
    mp = root / MANIFEST_NAME
    d = json.loads(mp.read_text())
    change(d)
    mp.write_text(json.dumps(d))


@pytest.mark.parametrize("change, want", [
    (lambda d: d.update(meta="abc"), r"meta is str 'abc'; expected a JSON object"),
    (lambda d: d["meta"].update(chunk_rows="abc"), r"meta: chunk_rows is str 'abc'; expected a positive integer"),
    (lambda d: d["meta"].update(compression="zstd"), r"compression is str 'zstd'; expected one of none, lzf, gzip"),
    (lambda d: d["shards"][0].update(rows=str(d["shards"][0]["rows"])),
     r"'train-00000.h5': rows is str '1000'; expected an integer"),
    (lambda d: d["shards"][0].update(rows=999), r"class_counts add up to 1000 rows, rows is 999"),
    (lambda d: d["shards"][0]["class_counts"].update({"1": "5"}), r"class_counts\['1'\] is str '5'"),
    (lambda d: d.update(shard=d["shards"]), r"unknown key 'shard' \(did you mean 'shards'\?\)"),
    (lambda d: d.update(bogus_key=1), r"unknown key 'bogus_key'; format version 1 has only format, version"),
    (lambda d: d["shards"][0].update(extra="x"), r"'train-00000.h5': unknown key 'extra'"),
    (lambda d: d["schema"].update(clases=[0]), r"unknown key 'clases' \(did you mean 'classes'\?\)"),
    (lambda d: d["schema"].update(sample_shape=["8"]), r"sample_shape is list \['8'\]"),
    (lambda d: d.update(version=True), r"version True; expected a positive integer"),
])
def test_manifest_fields_are_type_checked(shard_dir, change, want):
    # each of these once loaded (coerced or ignored) and failed later, or never
    _edit_manifest(shard_dir, change)
    with pytest.raises(ShardError, match=want):
        Manifest.load(shard_dir)


def test_manifest_meta_keeps_free_form_provenance(shard_dir):
    _edit_manifest(shard_dir, lambda d: d["meta"].update(note={"any": ["thing"]}))
    assert Manifest.load(shard_dir).meta["note"] == {"any": ["thing"]}


def test_labels_outside_schema_classes_refused_and_verified(shard_dir):
    # labels 0..2 in the shards, but the schema declares two classes: training would index past them
    _edit_manifest(shard_dir, lambda d: d["schema"].update(classes=[0, 1]))
    with pytest.raises(ShardError, match=r"labels \[2\] \(\d+ rows, first in 'train-00000.h5'\) that are not in "
                                         r"schema.classes \[0, 1\].*--force"):
        Manifest.load(shard_dir, check_files=False)
    with pytest.raises(ShardError, match="not in schema.classes"):
        verify(shard_dir)

    # the manifest hides label 2 (counted as 1), so only reading the labels can find it
    def hide(d):
        for s in d["shards"]:
            cc = s["class_counts"]
            cc["1"] = cc.get("1", 0) + cc.pop("2", 0)
    _edit_manifest(shard_dir, hide)
    Manifest.load(shard_dir)
    probs = verify(shard_dir)
    assert len([p for p in probs if "labels [2] are not in the manifest's schema.classes [0, 1]" in p]) == 3
    assert verify(shard_dir, deep=False) == []


def test_writer_bad_python_arguments(tmp_path):
    with pytest.raises(ShardError, match="sample_shape '12' must be a sequence of integers"):
        ShardWriter(tmp_path / "a", feature_names=None, sample_shape="12")  # was read as (1, 2)
    with pytest.raises(ShardError, match="classes \\['a'\\] must be a sequence of integer class ids"):
        ShardWriter(tmp_path / "b", feature_names=None, sample_shape=(3,), classes=["a"])
    w = ShardWriter(tmp_path / "c", feature_names=None, sample_shape=(3,), compression="none")
    with pytest.raises(ShardError, match="beyond the float32 range"):
        w.add(np.full((2, 3), 1e300), np.arange(2))  # was stored as inf
    with pytest.raises(ShardError, match="does not fit the int64 labels"):
        w.add(np.ones((1, 3)), np.array([2**63], dtype=np.uint64))  # was wrapped to -2**63
    w.add(np.array([[np.inf, 0, 1]]), np.array([0]))  # inf itself is data ('hpctrain clean' handles it)
    w.close()
