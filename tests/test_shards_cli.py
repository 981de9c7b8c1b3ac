"""``hpctrain shard``: every input kind against an oracle, built-in injection, and the bad-input errors."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from hpctrain.cli import main
from hpctrain.data import file_sources, sources
from hpctrain.data.shards import Manifest, ShardError, iter_arrays
from hpctrain.data.sources import SplitAssigner, write_shards


def read_all(d, split=None):
    xs, ys = zip(*[(x, y) for _, x, y in iter_arrays(d, split)])
    return np.concatenate(xs), np.concatenate(ys)


def sort_rows(x, y):
    flat = np.concatenate([y[:, None].astype(np.float64), np.nan_to_num(x.reshape(len(x), -1), nan=-1e30)], 1)
    order = np.lexsort(flat.T[::-1])
    return x[order], y[order]


def test_digits_cli(tmp_path, capsys):
    from sklearn.datasets import load_digits

    out = tmp_path / "dg"
    assert main(["shard", "sklearn:digits", "--out", str(out), "--val-fraction", "0.2"]) == 0
    m = Manifest.load(out)
    b = load_digits()
    assert m.schema.sample_shape == (1, 8, 8) and m.rows() == 1797 and m.schema.classes == list(range(10))
    # Stratified: each class loses floor or ceil of 20% to val.
    full = {int(k): int(v) for k, v in zip(*np.unique(b.target, return_counts=True))}
    for c, n in m.class_counts("val").items():
        assert abs(n - 0.2 * full[c]) <= 1
    x, y = read_all(out)
    gx, gy = sort_rows(x.reshape(1797, 64), y)
    wx, wy = sort_rows(b.data.astype(np.float32), b.target)
    assert np.array_equal(gx, wx) and np.array_equal(gy, wy)
    assert main(["shard", "info", str(out), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.split("\n", 1)[1])
    assert info["splits"]["val"]["rows"] == m.rows("val") and info["splits"]["train"]["missing_share"] == 0.0


def test_builtin_injection(tmp_path):
    m = write_shards("sklearn:digits?missing=0.1&imbalance=10&seed=3", tmp_path / "a")
    x, y = read_all(tmp_path / "a")
    assert abs(np.isnan(x).mean() - 0.1) < 0.01
    counts = np.bincount(y)
    assert 6 < counts[0] / counts[9] < 16  # about 10:1 from first to last class
    assert m.meta["params"] == {"missing": 0.1, "imbalance": 10.0, "seed": 3}
    again = write_shards("sklearn:digits?missing=0.1&imbalance=10&seed=3", tmp_path / "b")
    assert [s.sha256 for s in again.shards] == [s.sha256 for s in m.shards]  # reproducible
    m = write_shards("synthetic:classification?rows=3000&features=5&classes=3&imbalance=9&missing=0.2&seed=1",
                     tmp_path / "c", shards=4)
    x, y = read_all(tmp_path / "c")
    assert x.shape == (3000, 5) and len(m.shards) == 4 and abs(np.isnan(x).mean() - 0.2) < 0.02
    c = np.bincount(y)
    assert 5 < c[0] / c[2] < 15
    m = write_shards("synthetic:classification?rows=10&shape=2x3x4&classes=2", tmp_path / "d")
    assert m.schema.sample_shape == (2, 3, 4)
    with pytest.raises(ShardError, match="unknown parameter 'rowz'"):
        write_shards("synthetic:classification?rowz=10", tmp_path / "e")
    with pytest.raises(ShardError, match="unknown scikit-learn dataset"):
        write_shards("sklearn:mnist", tmp_path / "e")


def _csv(tmp_path, name="d.csv", sep=","):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(257, 4)).astype(np.float32)
    y = rng.integers(0, 3, 257)
    x[3, 1] = np.nan
    x[7, 2] = np.inf
    lines = [sep.join(["a", "b", "target", "c", "d"])]
    for i in range(257):
        cells = [repr(float(v)) for v in x[i]]
        if i == 3:
            cells[1] = ""  # an empty cell is a missing value
        cells.insert(2, str(y[i]))
        lines.append(sep.join(cells))
    p = tmp_path / name
    p.write_text("\n".join(lines) + "\n")
    return p, x, y


@pytest.mark.parametrize("name,sep", [("d.csv", ","), ("d.tsv", "\t")])
def test_csv_round_trip_exact_order(tmp_path, name, sep):
    p, x, y = _csv(tmp_path, name, sep)
    m = write_shards(str(p), tmp_path / "s", shards=3, shuffle=False)
    assert len(m.shards) == 3 and m.schema.feature_names == ["a", "b", "c", "d"]
    gx, gy = read_all(tmp_path / "s")
    np.testing.assert_array_equal(gx, x)  # NaN and inf preserved
    np.testing.assert_array_equal(gy, y)


def test_csv_streams_in_bounded_chunks(tmp_path, monkeypatch):
    p, x, y = _csv(tmp_path)
    monkeypatch.setattr(file_sources, "CHUNK_CELLS", 100)  # 20 rows per chunk for 5 columns
    src = sources.open_source(str(p))
    sizes = [len(c[1]) for c in src.chunks()]
    assert max(sizes) == 64 and sum(sizes) == 257  # the 64-row floor; never the whole file
    m = write_shards(str(p), tmp_path / "s", rows_per_shard=50, shuffle=False)
    assert [s.rows for s in m.shards] == [50] * 5 + [7]


def test_csv_errors(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b,label\n1,2,0\n3,x7,1\n")
    with pytest.raises(ShardError, match=r"line 3, column 'b': value 'x7' is not a number"):
        write_shards(str(bad), tmp_path / "o")
    assert not (tmp_path / "o").exists()  # nothing half-written
    with pytest.raises(ShardError, match="label column 'nope' does not exist"):
        write_shards(str(bad), tmp_path / "o", label="nope")
    (tmp_path / "h.csv").write_text("a,b,label\n")
    with pytest.raises(ShardError, match="empty"):
        write_shards(str(tmp_path / "h.csv"), tmp_path / "o")
    assert not (tmp_path / "o").exists()
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ShardError, match="empty"):
        write_shards(str(tmp_path / "e.csv"), tmp_path / "o")
    (tmp_path / "r.csv").write_text("a,b,label\n1,2,0\n1,2\n")
    with pytest.raises(ShardError, match="line 3 has 2 fields"):
        write_shards(str(tmp_path / "r.csv"), tmp_path / "o")
    (tmp_path / "l.csv").write_text("a,label\n1,0\n2,0.5\n")
    with pytest.raises(ShardError, match="line 3: label '0.5'.*not an integer"):
        write_shards(str(tmp_path / "l.csv"), tmp_path / "o")
    with pytest.raises(ShardError, match="does not exist"):
        write_shards(str(tmp_path / "missing.csv"), tmp_path / "o")


def test_string_labels_get_names(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("f,species\n1,cat\n2,dog\n3,cat\n4,eel\n")
    m = write_shards(str(p), tmp_path / "o", label="species", shuffle=False)
    assert m.schema.class_names == ["cat", "dog", "eel"]
    assert np.array_equal(read_all(tmp_path / "o")[1], [0, 1, 0, 2])


def test_npy_npz_parquet(tmp_path):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(100, 3)).astype(np.float32)
    x[0, 0] = np.nan
    y = rng.integers(0, 4, 100)
    np.save(tmp_path / "a.npy", np.concatenate([x, y[:, None].astype(np.float32)], 1))
    write_shards(str(tmp_path / "a.npy"), tmp_path / "s1", shuffle=False)
    gx, gy = read_all(tmp_path / "s1")
    assert np.array_equal(gx, x, equal_nan=True) and np.array_equal(gy, y)
    img = rng.normal(size=(50, 1, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "b.npz", x=img, y=y[:50])
    m = write_shards(str(tmp_path / "b.npz"), tmp_path / "s2", shuffle=False)
    assert m.schema.sample_shape == (1, 4, 4)
    assert np.array_equal(read_all(tmp_path / "s2")[0], img)
    np.savez(tmp_path / "c.npz", data=img)
    with pytest.raises(ShardError, match="needs arrays 'x' and 'y'"):
        write_shards(str(tmp_path / "c.npz"), tmp_path / "s3")
    import pandas as pd

    df = pd.DataFrame({"u": x[:, 0], "v": x[:, 1], "w": x[:, 2], "label": y})
    df.to_parquet(tmp_path / "d.parquet")
    write_shards(str(tmp_path / "d.parquet"), tmp_path / "s4", shuffle=False)
    gx, gy = read_all(tmp_path / "s4")
    assert np.array_equal(gx, x, equal_nan=True) and np.array_equal(gy, y)
    df["v"] = df["v"].astype(str)
    df.loc[5, "v"] = "oops"
    df.to_parquet(tmp_path / "e.parquet")
    with pytest.raises(ShardError, match=r"column 'v': value 'oops'"):
        write_shards(str(tmp_path / "e.parquet"), tmp_path / "s5")


def test_split_assigner_is_stratified_and_streaming():
    y = np.repeat([0, 1, 2], [100, 37, 5])
    rng = np.random.default_rng(0)
    y = y[rng.permutation(len(y))]
    a = SplitAssigner(0.25, seed=1)
    v = np.concatenate([a(y[i:i + 13]) for i in range(0, len(y), 13)])  # chunked stream
    for c, n in [(0, 100), (1, 37), (2, 5)]:
        assert abs(v[y == c].sum() - 0.25 * n) <= 1


def test_cli_verify_and_errors(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["shard", "synthetic:classification?rows=5000&features=8", "--out", str(out),
                 "--shards", "4", "--compression", "none"]) == 0
    assert main(["shard", "verify", str(out)]) == 0
    p = out / "train-00002.h5"
    b = bytearray(p.read_bytes())
    b[len(b) // 2] ^= 4
    p.write_bytes(bytes(b))
    capsys.readouterr()
    assert main(["shard", "verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "FAIL train-00002.h5" in text and "sha256" in text
    assert main(["shard", "sklearn:digits", "--out", str(out)]) == 2  # not empty, no --force
    assert "not empty" in capsys.readouterr().err
    assert main(["shard", "nope.csv", "--out", str(tmp_path / "x")]) == 2
    assert main(["shard", "info", str(tmp_path / "none")]) == 2
    assert main(["shard", "sklearn:digits", "--out", str(out), "--force", "--rows-per-shard", "500"]) == 0
    assert [s.rows for s in Manifest.load(out).shards] == [500, 500, 500, 297]


def test_values_beyond_float32_are_refused_not_made_inf(tmp_path):
    # NaN/inf are kept exactly, but a finite value that float32 cannot hold would silently become inf.
    (tmp_path / "ok.csv").write_text("a,b,label\nnan,inf,0\n-inf,,1\n3e38,NA,0\n")
    x, _ = read_all(write_shards(str(tmp_path / "ok.csv"), tmp_path / "ok", shuffle=False).root)
    want = np.array([[np.nan, np.inf], [-np.inf, np.nan], [3e38, np.nan]], np.float32)
    assert np.array_equal(x, want, equal_nan=True)
    (tmp_path / "big.csv").write_text("a,b,label\n1,2,0\n1e40,2,1\n")
    with pytest.raises(ShardError, match=r"line 3, column 'a': value 1e\+40 is outside the float32 range"):
        write_shards(str(tmp_path / "big.csv"), tmp_path / "o1")
    np.save(tmp_path / "big.npy", np.array([[1.0, 0], [2, 1], [-1e300, 0]]))
    with pytest.raises(ShardError, match=r"row 3, column 'c0'.*float32 range"):
        write_shards(str(tmp_path / "big.npy"), tmp_path / "o2")
    np.savez(tmp_path / "big.npz", x=np.array([[1.0], [5e38]]), y=np.array([0, 1]))
    with pytest.raises(ShardError, match=r"row 2, column 'f0'.*float32 range"):
        write_shards(str(tmp_path / "big.npz"), tmp_path / "o3")
    import pandas as pd

    pd.DataFrame({"f": [1.0, 2.0, 4e38], "label": [0, 1, 0]}).to_parquet(tmp_path / "big.parquet")
    with pytest.raises(ShardError, match=r"row 3, column 'f'.*float32 range"):
        write_shards(str(tmp_path / "big.parquet"), tmp_path / "o4")
    # A bad string cell in a later row group is reported by its row in the file.
    pd.DataFrame({"f": ["1", "2"] * 100 + ["x"], "label": [0, 1] * 100 + [0]}).to_parquet(
        tmp_path / "s.parquet", row_group_size=64)
    with pytest.raises(ShardError, match=r"row 201, column 'f': value 'x' is not a number"):
        write_shards(str(tmp_path / "s.parquet"), tmp_path / "o5")
    assert not any((tmp_path / f"o{i}").exists() for i in range(1, 6))


def test_cli_hostile_paths_and_unusable_output(tmp_path, capsys):
    d = tmp_path / "we ird 'q' \"dq\" ;$x"
    d.mkdir()
    src = d / "in put's.tsv"
    src.write_text("a\tb\tlabel\n1\t2\t0\n3\t4\t1\n")
    out = d / "out dir's \"x\""
    assert main(["shard", str(src), "--out", str(out)]) == 0
    assert main(["shard", "verify", str(out)]) == 0
    assert main(["shard", "info", str(out)]) == 0
    x, y = read_all(out)
    assert sorted(y.tolist()) == [0, 1] and sorted(x[:, 0].tolist()) == [1.0, 3.0]
    capsys.readouterr()
    for bad in ("/proc/hpctrain-no/such", str(src)):  # cannot be created; a file, not a directory
        assert main(["shard", str(src), "--out", bad]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err and "--out" in err


def test_csv_header_quirks(tmp_path):
    # An Excel byte-order mark is not part of the first column's name (it would hide 'label').
    (tmp_path / "bom.csv").write_bytes("\ufefflabel,a,b\n0,1,2\n1,3,4\n".encode())
    m = write_shards(str(tmp_path / "bom.csv"), tmp_path / "o1", shuffle=False)
    assert m.schema.feature_names == ["a", "b"] and m.meta["label"] == "label"
    (tmp_path / "dup.csv").write_text("a,a,label\n1,2,0\n")
    with pytest.raises(ShardError, match=r"column name\(s\) \['a'\] appear more than once"):
        write_shards(str(tmp_path / "dup.csv"), tmp_path / "o2")
    (tmp_path / "semi.csv").write_text("a;b;label\n1;2;0\n")
    with pytest.raises(ShardError, match="uses another delimiter"):
        write_shards(str(tmp_path / "semi.csv"), tmp_path / "o3")
    assert not (tmp_path / "o2").exists() and not (tmp_path / "o3").exists()


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cli_manifest_with_wrong_fields_or_undeclared_labels(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["shard", "synthetic:classification?rows=600&features=3&classes=5", "--out", str(out),
                 "--shards", "2"]) == 0
    good = (out / "manifest.json").read_text()

    def edit(change):
        d = json.loads(good)
        change(d)
        (out / "manifest.json").write_text(json.dumps(d))

    edit(lambda d: d.update(meta="abc"))  # was a ValueError traceback in 'shard info'
    assert main(["shard", "info", str(out)]) == 2
    assert "meta is str 'abc'; expected a JSON object" in _one_line_error(capsys)
    edit(lambda d: d["meta"].update(chunk_rows="abc"))
    assert main(["shard", "info", str(out)]) == 2
    assert "chunk_rows is str 'abc'" in _one_line_error(capsys)
    # labels 0-4 in the shards, three declared: info and verify passed, then train hit a torch IndexError
    edit(lambda d: d["schema"].update(classes=[0, 1, 2]))
    for sub in ("info", "verify"):
        capsys.readouterr()
        assert main(["shard", sub, str(out)]) == 2
        err = _one_line_error(capsys)
        assert "labels [3, 4]" in err and "not in schema.classes [0, 1, 2]" in err and "--force" in err


def test_cli_seed_out_of_range(tmp_path, capsys):
    for opts in (["--seed", "-1"], ["--seed", str(2**32)]):
        assert main(["shard", "sklearn:iris", "--out", str(tmp_path / "o"), *opts]) == 2
        assert f"--seed {opts[1]}: expected an integer from 0 to 4294967295" in _one_line_error(capsys)
    assert main(["shard", "sklearn:iris?missing=0.1&seed=-5", "--out", str(tmp_path / "o")]) == 2
    assert "seed -5: expected an integer from 0" in _one_line_error(capsys)
    assert main(["shard", "synthetic:classification?imbalance=nan", "--out", str(tmp_path / "o")]) == 2
    assert "imbalance=nan must be a finite number" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()
    assert main(["shard", "sklearn:iris", "--out", str(tmp_path / "o"), "--seed", str(2**32 - 1)]) == 0


def _shard_guarded(tmp_path, *argv):
    """``hpctrain shard ARGV`` in a child that may not write a file over 1 MiB: if the size check
    ever breaks, the child dies at its first 4 MB shard (SIGXFSZ) instead of filling the disk."""
    import subprocess
    import sys

    code = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); "
            "from hpctrain.cli import main; sys.exit(main(sys.argv[1:]))")
    p = subprocess.run([sys.executable, "-c", code, "shard", "--rows-per-shard", "10", *argv], cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    return p.returncode, p.stderr


def test_cli_refuses_output_larger_than_free_space(tmp_path):
    out = tmp_path / "big"
    # 1e9 rows x 1e5 features is about 364 TiB: no test machine has that much free
    rc, err = _shard_guarded(tmp_path, "synthetic:classification?rows=1000000000&features=100000", "--out", str(out))
    assert rc == 2 and err.count("\n") == 1, (rc, err)
    assert re.search(r"need about 363\.8 TiB \(1,000,000,000 rows x 100,000 features x 4 bytes \+ an 8-byte label, "
                     r"uncompressed; lzf compression may shrink that.*\), but the file system of .* has "
                     r"[\d.]+ [KMGT]iB free; shard a smaller rows=, or choose an --out", err), err
    assert not out.exists()
    # an absurd synthetic size is refused outright (the audit's 25 TB case started writing)
    rc, err = _shard_guarded(tmp_path, "synthetic:classification?rows=100000000000&features=64", "--out", str(out))
    assert rc == 2 and "limited to 1,000,000,000 rows" in err, (rc, err)
    rc, err = _shard_guarded(tmp_path, "synthetic:classification?rows=10&features=2000000", "--out", str(out))
    assert rc == 2 and "1,000,000 features" in err, (rc, err)
    assert not out.exists()


def test_manifest_write_failure_is_one_line_and_leaves_nothing(tmp_path):
    # a file the OS will not let grow (EFBIG here; ENOSPC on a full disk takes the same path) was an
    # OSError traceback: 30 small shards, but a manifest (1000 columns of statistics each) over 1 MiB
    out = tmp_path / "o"
    rc, err = _shard_guarded(tmp_path, "synthetic:classification?rows=300&features=1000", "--out", str(out))
    assert rc == 2 and err.count("\n") == 1 and "Traceback" not in err, (rc, err)
    assert "manifest.json' failed ([Errno 27] File too large)" in err and "choose an --out" in err, err
    assert not out.exists()


def test_check_space_compares_with_free_space(tmp_path):
    from hpctrain.data.sources import check_space, free_bytes, shard_bytes

    out = tmp_path / "s"
    rows = (free_bytes(tmp_path) + 2**30) // shard_bytes(1, (2,))  # 1 GiB more than is free
    with pytest.raises(ShardError, match=r"the file system of .* has [\d.]+ [KMGT]?i?B free"):
        check_space("x.npy", rows, (2,), out, compression="none", overwrite=False)
    check_space("x.npy", rows // 4, (2,), out, compression="none", overwrite=False)
    assert not out.exists()


def test_junk_and_pickled_numpy_files(tmp_path, capsys):
    (tmp_path / "junk.npy").write_bytes(b"garbage\x00\x01\x02")
    assert main(["shard", str(tmp_path / "junk.npy"), "--out", str(tmp_path / "o")]) == 2
    err = _one_line_error(capsys)
    assert "is not a valid .npy file" in err and "allow_pickle" not in err
    np.save(tmp_path / "obj.npy", np.array([[1, "a"], [2, "b"]], dtype=object))
    np.savez(tmp_path / "obj.npz", x=np.array([[1, "a"]], dtype=object), y=np.array([0]))
    for name in ("obj.npy", "obj.npz"):  # the npz was a ValueError traceback
        assert main(["shard", str(tmp_path / name), "--out", str(tmp_path / "o")]) == 2
        err = _one_line_error(capsys)
        assert "holds pickled Python objects" in err and "refuses to load" in err and "allow_pickle" not in err
    (tmp_path / "junk.npz").write_bytes(b"garbage")
    assert main(["shard", str(tmp_path / "junk.npz"), "--out", str(tmp_path / "o")]) == 2
    assert "is not a valid .npz file" in _one_line_error(capsys)
    assert not (tmp_path / "o").exists()


def test_overflowing_number_refused_written_inf_kept_and_noted(tmp_path, capsys):
    # 1e400 is inf already in float64; it used to slip past the float32 range check as inf
    (tmp_path / "big.csv").write_text("a,b,label\n1,2,0\n3,1e400,1\n")
    assert main(["shard", str(tmp_path / "big.csv"), "--out", str(tmp_path / "o1")]) == 2
    assert "line 3, column 'b': value '1e400' is outside the float32 range" in _one_line_error(capsys)
    (tmp_path / "ws.csv").write_text("a,b,label\n1, -1E999 ,0\n")
    with pytest.raises(ShardError, match=r"line 2, column 'b': value '-1E999'"):
        write_shards(str(tmp_path / "ws.csv"), tmp_path / "o2")
    # a written inf is a value, as NaN is: kept, counted apart from missing, and said at once
    (tmp_path / "inf.csv").write_text("a,b,label\n1,inf,0\n3,4,1\n-Infinity,+INF,0\n")
    assert main(["shard", str(tmp_path / "inf.csv"), "--out", str(tmp_path / "o3")]) == 0
    out = capsys.readouterr().out
    assert "note: 3 infinite feature value(s) kept as +/-inf, in column(s) a, b" in out
    x, _ = read_all(tmp_path / "o3")
    assert np.isinf(x).sum() == 3
    assert main(["shard", "info", str(tmp_path / "o3")]) == 0
    assert "3 infinite values" in capsys.readouterr().out
    assert main(["shard", "sklearn:iris", "--out", str(tmp_path / "o4")]) == 0
    assert "infinite" not in capsys.readouterr().out
