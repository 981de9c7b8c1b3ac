"""Imputer against scikit-learn's SimpleImputer (the oracle), the distributed-method
statistics against the in-memory ones, persistence, errors and the shard/CLI paths."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.impute import SimpleImputer

from hpctrain.kernels.impute import STRATEGIES, ImputeError, Imputer, fit_statistics

pytestmark = pytest.mark.filterwarnings("ignore:Skipping features:UserWarning")


@st.composite
def matrices(draw):
    rows = draw(st.integers(1, 25))
    cols = draw(st.integers(1, 5))
    discrete = draw(st.booleans())
    if discrete:  # many ties
        vals = st.integers(-3, 3).map(float)
    else:
        vals = st.floats(-1e3, 1e3, allow_nan=False, width=32)
    x = np.array(draw(st.lists(vals, min_size=rows * cols, max_size=rows * cols)), dtype=np.float32)
    x = x.reshape(rows, cols)
    density = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    x[rng.random(x.shape) < density] = np.nan
    if cols > 1 and draw(st.booleans()):
        x[:, 0] = x[0, 1]  # a constant column (possibly all NaN)
    return x


def _check_against_sklearn(x, strategy, keep, indicator, fill=None):
    ref = SimpleImputer(strategy=strategy, keep_empty_features=keep, add_indicator=indicator,
                        fill_value=fill).fit_transform(x)
    got = Imputer(strategy, fill_value=fill, keep_empty_features=keep, add_indicator=indicator).fit_transform(x)
    assert got.dtype == np.float32
    assert got.shape == ref.shape
    if strategy == "mean":
        # sklearn accumulates float32 sums; compare with its float64 run (exact sums) at 1e-6
        ref64 = SimpleImputer(strategy=strategy, keep_empty_features=keep,
                              add_indicator=indicator).fit_transform(x.astype(np.float64))
        # a subnormal float32 result carries fewer significant bits than 1e-6 needs: compare
        # with the float64 result rounded to float32, give or take the smallest subnormal
        tiny = float(np.finfo(np.float32).smallest_subnormal)
        np.testing.assert_allclose(got, ref64.astype(np.float32), rtol=1e-6, atol=tiny)
        np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    else:
        np.testing.assert_array_equal(got, ref)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(x=matrices(), strategy=st.sampled_from(STRATEGIES), keep=st.booleans(), indicator=st.booleans())
def test_matches_sklearn(x, strategy, keep, indicator):
    _check_against_sklearn(x, strategy, keep, indicator)


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("case", ["single_row", "all_nan", "no_nan", "constant"])
def test_edge_cases(strategy, case):
    x = {"single_row": np.array([[1.5, np.nan, -2.0]], np.float32),
         "all_nan": np.full((4, 3), np.nan, np.float32),
         "no_nan": np.arange(12, dtype=np.float32).reshape(4, 3),
         "constant": np.array([[7, np.nan], [7, 1], [np.nan, 1], [7, 2]], np.float32)}[case]
    for keep in (False, True):
        for indicator in (False, True):
            _check_against_sklearn(x, strategy, keep, indicator)


def test_constant_fill_value_and_ties():
    x = np.array([[1, np.nan], [2, 5], [np.nan, 5], [2, 3], [1, 3]], np.float32)
    _check_against_sklearn(x, "constant", False, True, fill=-9.5)
    # most_frequent: 1 and 2 tie in column 0, 3 and 5 in column 1 -> the smallest wins
    np.testing.assert_array_equal(Imputer("most_frequent").fit(x).statistics_, [1.0, 3.0])


@settings(max_examples=40, deadline=None)
@given(x=matrices(), strategy=st.sampled_from(["median", "most_frequent"]), cut=st.integers(0, 25))
def test_distributed_method_equals_in_memory(x, strategy, cut):
    """The streaming/MPI methods (radix selection, merged value counts) over arbitrary chunks
    give exactly the in-memory statistics."""
    cut = min(cut, len(x))
    chunks = [np.ascontiguousarray(x[:cut]), np.ascontiguousarray(x[cut:])]
    streamed = fit_statistics(lambda: chunks, x.shape[1], strategy).statistics
    in_memory = fit_statistics(lambda: [x], x.shape[1], strategy, in_memory=x).statistics
    np.testing.assert_array_equal(streamed, in_memory)


@settings(max_examples=40, deadline=None)
@given(x=matrices(), sample=st.integers(0, 30), margin=st.sampled_from([0.0, 0.5, 2.0]), seed=st.integers(0, 3))
def test_sampled_median_is_exact_whatever_the_sample(x, sample, margin, seed):
    """The pivots of the fast in-memory median come from a random sample; a tiny sample with
    no margin makes the bracket miss the middle ranks, and the fallback must keep it exact."""
    from hpctrain.kernels import _impute_cpu as K

    count = (~np.isnan(x)).sum(axis=0)
    got = K.col_median_sampled(x, count, sample=sample, margin=margin, seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns
        ref = np.nanmedian(x.astype(np.float64), axis=0)
    np.testing.assert_array_equal(got.astype(np.float32), ref.astype(np.float32))
    np.testing.assert_array_equal(got, K.col_median_fast(x))


def test_streaming_median_reads_the_data_four_times():
    """The counting pass also builds the first radix round: 4 reads of the chunks, not 5."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1000, 3)).astype(np.float32)
    x[rng.random(x.shape) < 0.2] = np.nan
    reads = []

    def chunks():
        reads.append(1)
        return [x[:400], x[400:]]

    got = fit_statistics(chunks, 3, "median").statistics
    assert len(reads) == 4
    np.testing.assert_array_equal(got.astype(np.float32), SimpleImputer(strategy="median").fit(x).statistics_)


def test_large_median_and_mode_exact(monkeypatch):
    from hpctrain.kernels import _impute_cpu as K

    rng = np.random.default_rng(0)
    x = rng.standard_normal((20001, 4)).astype(np.float32)
    x[:, 3] = rng.integers(0, 50, len(x))
    x[rng.random(x.shape) < 0.3] = np.nan
    # the sampled bracket alone (no fallback) on a sample smaller than the data, with ties
    with monkeypatch.context() as mp:
        mp.setattr(K, "col_median_fast", lambda _: pytest.fail("the bracket missed on a regular sample"))
        got = K.col_median_sampled(x, (~np.isnan(x)).sum(axis=0), sample=2048)
    np.testing.assert_array_equal(got.astype(np.float32), SimpleImputer(strategy="median").fit(x).statistics_)
    for strategy in ("median", "most_frequent"):
        ref = SimpleImputer(strategy=strategy).fit(x).statistics_
        np.testing.assert_array_equal(Imputer(strategy).fit(x).statistics_.astype(np.float32), ref)
        streamed = fit_statistics(lambda: [x[:7000], x[7000:]], 4, strategy).statistics
        np.testing.assert_array_equal(streamed.astype(np.float32), ref)


def test_transform_in_place_and_copy():
    x = np.array([[1, np.nan], [3, 4]], np.float32)
    imp = Imputer("mean").fit(x)
    y = x.copy()
    assert imp.transform(y, copy=True) is not y and np.isnan(y).any()
    out = imp.transform(y)
    assert out is y
    np.testing.assert_array_equal(y, [[1, 4], [3, 4]])


def test_images_keep_their_shape():
    x = np.random.default_rng(1).random((6, 2, 3, 3)).astype(np.float32)
    x[0, 1, 2, 2] = np.nan
    imp = Imputer("median").fit(x)
    out = imp.transform(x.copy())
    assert out.shape == x.shape
    ref = SimpleImputer(strategy="median").fit_transform(x.reshape(6, -1)).reshape(x.shape)
    np.testing.assert_array_equal(out, ref)


def test_torch_cpu_tensor():
    torch = pytest.importorskip("torch")
    x = np.array([[1, np.nan], [np.nan, 4], [5, 6]], np.float32)
    t = torch.from_numpy(x.copy())
    out = Imputer("median", add_indicator=True).fit(t).transform(t)
    assert isinstance(out, torch.Tensor)
    np.testing.assert_array_equal(out.numpy(), SimpleImputer(strategy="median", add_indicator=True).fit_transform(x))


def test_float64_and_int_input_give_float32():
    x = np.array([[1, 2], [3, 4]], np.int64)
    out = Imputer("mean").fit_transform(x)
    assert out.dtype == np.float32
    np.testing.assert_array_equal(out, x)


def test_save_load_roundtrip(tmp_path):
    x = np.array([[1, np.nan, np.nan], [2, 5, np.nan], [np.nan, 6, np.nan]], np.float32)
    imp = Imputer("median", add_indicator=True).fit(x)
    path = imp.save(tmp_path / "imp.json")
    assert json.loads(path.read_text())["statistics"][2] is None  # JSON has no NaN
    again = Imputer.load(path)
    np.testing.assert_array_equal(again.transform(x.copy()), imp.transform(x.copy()))
    imp.save(tmp_path)  # a directory: the file goes next to the manifest
    assert Imputer.load(tmp_path).strategy == "median"


@pytest.mark.parametrize("content,match", [
    (None, "do not exist"),
    ("{not json", "not valid JSON"),
    ('{"format": "other"}', "not an hpctrain imputer file"),
    ('{"format": "hpctrain-imputer", "version": 99}', "version 99"),
    ('{"format": "hpctrain-imputer", "version": 1, "strategy": "mean"}', "malformed"),
    ('{"format": "hpctrain-imputer", "version": true}', "version True"),
    ('{"format": "hpctrain-imputer", "version": 1, "strategy": "mean", "fill_value": null,'
     ' "keep_empty_features": false, "add_indicator": false, "n_features": 1, "statistics": [Infinity],'
     ' "indicator_features": []}', "infinite"),
])
def test_load_errors(tmp_path, content, match):
    p = tmp_path / "imputer.json"
    if content is not None:
        p.write_text(content)
    with pytest.raises(ImputeError, match=match):
        Imputer.load(p)


def test_user_errors():
    with pytest.raises(ImputeError, match="not one of"):
        Imputer("mode")
    with pytest.raises(ImputeError, match="finite number"):
        Imputer("constant", fill_value=float("nan"))
    with pytest.raises(ImputeError, match="not fitted"):
        Imputer().transform(np.zeros((2, 2), np.float32))
    with pytest.raises(ImputeError, match="expected .rows, features."):
        Imputer().fit(np.zeros(3, np.float32))
    with pytest.raises(ImputeError, match="dtype"):
        Imputer().fit(np.array([["a", "b"]]))
    with pytest.raises(ImputeError, match="infinite"):
        Imputer().fit(np.array([[1.0, np.inf]], np.float32))
    with pytest.raises(ImputeError, match="no rows"):
        Imputer("median").fit(np.zeros((0, 3), np.float32))
    with pytest.raises(ImputeError, match="float32 range"):
        Imputer().fit(np.array([[1e300, 1.0]]))
    with pytest.raises(ImputeError, match="dtype object"):
        Imputer().fit(np.array([[1.0, None]], dtype=object))
    imp = Imputer().fit(np.zeros((2, 3), np.float32))
    with pytest.raises(ImputeError, match="fitted on 3"):
        imp.transform(np.zeros((2, 4), np.float32))
    empty = imp.transform(np.zeros((0, 3), np.float64))  # an empty batch is no error
    assert empty.shape == (0, 3) and empty.dtype == np.float32


# --- shard directories and the CLI ---------------------------------------------------------


def _write_shards(root, x, y, split_at, rows_per_shard=7, sample_shape=None):
    from hpctrain.data.shards import ShardWriter

    shape = sample_shape or (x.shape[1],)
    with ShardWriter(root, feature_names=None, sample_shape=shape, rows_per_shard=rows_per_shard) as w:
        w.add(x[:split_at].reshape((-1, *shape)), y[:split_at], split="train")
        w.add(x[split_at:].reshape((-1, *shape)), y[split_at:], split="val")


@pytest.fixture
def shard_data(tmp_path):
    rng = np.random.default_rng(5)
    x = rng.integers(0, 6, size=(40, 4)).astype(np.float32)
    x[:, 1] += rng.standard_normal(40).astype(np.float32)
    x[rng.random(x.shape) < 0.25] = np.nan
    x[:30, 3] = np.nan  # empty in the train split
    y = rng.integers(0, 3, 40)
    root = tmp_path / "shards"
    _write_shards(root, x, y, 30)
    return root, x, y


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("from_manifest", [True, False])
def test_fit_shard_dir_matches_sklearn(shard_data, strategy, from_manifest):
    root, x, _ = shard_data
    imp = Imputer(strategy, add_indicator=True).fit(root, from_manifest=from_manifest)
    ref = SimpleImputer(strategy=strategy, add_indicator=True).fit(x[:30])
    stats = imp.statistics_.astype(np.float32)
    if strategy == "mean":
        np.testing.assert_allclose(stats, ref.statistics_, rtol=1e-6)
    else:
        np.testing.assert_array_equal(stats, ref.statistics_.astype(np.float32))
    np.testing.assert_array_equal(imp.indicator_features_, ref.indicator_.features_)


def _tree_digest(root):
    from hpctrain.fileio import sha256_file

    return {p.name: sha256_file(p) for p in sorted(root.iterdir()) if p.is_file()}


def test_cli_fit_and_apply(shard_data, tmp_path, capsys):
    from hpctrain.cli import main
    from hpctrain.data.shards import Manifest, iter_arrays

    root, x, y = shard_data
    assert main(["impute", "fit", str(root), "--strategy", "median", "--add-indicator"]) == 0
    assert (root / "imputer.json").is_file()
    before = _tree_digest(root)
    out = tmp_path / "imputed"
    assert main(["impute", "apply", str(root), "--out", str(out)]) == 0
    assert _tree_digest(root) == before  # the input is never modified
    m = Manifest.load(out)
    ref = SimpleImputer(strategy="median", add_indicator=True).fit(x[:30])
    got = {s: np.concatenate([a for i, a, _ in iter_arrays(m, s)]) for s in ("train", "val")}
    np.testing.assert_array_equal(got["train"], ref.transform(x[:30]))
    np.testing.assert_array_equal(got["val"], ref.transform(x[30:]))
    assert m.schema.feature_names[-1].startswith("missing_")
    assert not np.isnan(got["train"]).any()
    assert "wrote" in capsys.readouterr().out


def test_cli_errors(shard_data, tmp_path, capsys):
    from hpctrain.cli import main

    root, _, _ = shard_data
    assert main(["impute", "apply", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "impute fit" in capsys.readouterr().err  # no statistics yet: says how to make them
    assert main(["impute", "fit", str(tmp_path / "missing")]) == 2
    assert "does not exist" in capsys.readouterr().err
    main(["impute", "fit", str(root)])
    assert main(["impute", "apply", str(root), "--out", str(root)]) == 2
    assert "never modifies" in capsys.readouterr().err
    assert main(["impute", "apply", str(root), "--out", str(root / "sub")]) == 2
    assert "inside the input directory" in capsys.readouterr().err
    assert not (root / "sub").exists()
    # statistics of another dataset with as many features are refused by name
    other = tmp_path / "other"
    _write_shards(other, np.ones((6, 4), np.float32), np.zeros(6, int), 4)
    meta = json.loads((other / "manifest.json").read_text())
    names = meta["schema"]["feature_names"]
    main(["impute", "fit", str(other), "--strategy", "median", "--out", str(tmp_path / "other.json")])
    capsys.readouterr()
    stats = json.loads((tmp_path / "other.json").read_text())
    stats["source"]["feature_names"] = ["renamed"] + names[1:]
    (tmp_path / "other.json").write_text(json.dumps(stats))
    o2, stats_file = str(tmp_path / "o2"), str(tmp_path / "other.json")
    assert main(["impute", "apply", str(root), "--out", o2, "--stats", stats_file]) == 2
    assert "other features" in capsys.readouterr().err
    assert main(["impute", "fit", str(root), "--strategy", "constant", "--fill-value", "nan"]) == 2
    assert "finite number" in capsys.readouterr().err


def test_apply_images_that_would_change_shape(tmp_path, capsys):
    from hpctrain.cli import main

    x = np.random.default_rng(0).random((10, 1, 2, 2)).astype(np.float32)
    x[:, 0, 0, 0] = np.nan
    root = tmp_path / "img"
    _write_shards(root, x.reshape(10, -1), np.zeros(10, np.int64), 10, sample_shape=(1, 2, 2))
    main(["impute", "fit", str(root)])
    assert main(["impute", "apply", str(root), "--out", str(tmp_path / "o")]) == 2
    assert "--keep-empty-features" in capsys.readouterr().err
    main(["impute", "fit", str(root), "--keep-empty-features"])
    assert main(["impute", "apply", str(root), "--out", str(tmp_path / "o2")]) == 0


def test_no_cuda_import_on_cpu_path():
    import subprocess
    import sys

    code = ("import numpy as np, sys; from hpctrain.kernels.impute import Imputer; "
            "from hpctrain.kernels.pipeline import build_pipeline; "
            "Imputer('mean').fit_transform(np.ones((3, 2), np.float32)); "
            "build_pipeline([{'op': 'flip'}], 0)(np.ones((2, 1, 2, 2), np.float32)); "
            "print(any(m.startswith('numba.cuda') for m in sys.modules))")
    with warnings.catch_warnings():
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.stdout.strip() == "False", out.stderr[-2000:]


def test_read_only_input_gets_a_filled_copy_not_a_numba_error():
    x = np.array([[1, np.nan], [3, 4], [np.nan, 6]], dtype=np.float32)
    ro = x.copy()
    ro.setflags(write=False)
    out = Imputer().fit(x).transform(ro)
    np.testing.assert_array_equal(out, [[1, 5], [3, 4], [2, 6]])
    assert np.isnan(ro[0, 1])  # untouched, and the caller gets the filled copy


def test_transform_of_a_list_keeps_its_shape():
    x = np.array([[1, np.nan], [3, 4]], dtype=np.float32)
    np.testing.assert_array_equal(Imputer().fit(x).transform([[np.nan, 1.0]]), [[2, 1]])


@pytest.mark.parametrize("call,match", [
    (lambda: Imputer(keep_empty_features="no"), "keep_empty_features is 'no'.*True or False"),
    (lambda: Imputer(add_indicator=1), "add_indicator is 1.*True or False"),
    (lambda: Imputer().fit(np.ones((2, 2), np.float32)).transform(np.ones((2, 2), np.float32), copy="no"),
     "copy is 'no'"),
    (lambda: Imputer().fit(np.ones((3, 0), np.float32)), r"shape \(3, 0\): no features"),
])
def test_bad_python_arguments(call, match):
    with pytest.raises(ImputeError, match=match):
        call()
