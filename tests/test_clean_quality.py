"""Cleaning: exact counts per step on constructed data; the input is never modified."""

import numpy as np
import pytest

from hpctrain.cli import main
from hpctrain.fileio import sha256_file
from hpctrain.quality import QualityError
from hpctrain.quality.clean import CleanPlan, clean_arrays


def _constructed():
    """80 distinct base rows in [0, 1); 5 exact duplicates; 1 same-features-other-label row;
    2 rows 2/3 missing and 1 row 1/3 missing; 2 rows with one far outlier each."""
    i = np.arange(80)
    base = np.stack([((i * 7 + j * 13) % 89) / 89 for j in range(3)], axis=1)
    y = list(i % 2)
    rows = list(base)
    rows += [base[k] for k in range(5)]          # 80-84 duplicates of 0-4 (same labels)
    y += [k % 2 for k in range(5)]
    rows.append(base[5])                         # 85: features of row 5 with the other label
    y.append(1 - 5 % 2)
    rows += [np.array([np.nan, np.nan, 0.3]), np.array([0.2, np.nan, np.nan]), np.array([np.nan, 0.4, 0.6])]
    y += [0, 1, 0]
    rows += [np.array([100.0, 0.5, 0.5]), np.array([0.5, -50.0, 0.5])]
    y += [1, 0]
    return np.array(rows, dtype=np.float32), np.array(y, dtype=np.int64)


def _counts(steps):
    return {s.step: (s.rows_in, s.rows_removed, s.rows_changed, s.values_changed) for s in steps}


@pytest.mark.parametrize("method", ["iqr", "zscore"])
def test_counts_drop_outliers(method):
    x, y = _constructed()
    plan = CleanPlan(drop_duplicates=True, drop_rows_missing_over=0.5, outliers="drop", method=method)
    xc, yc, steps = clean_arrays(x, y, plan)
    assert _counts(steps) == {"drop_duplicates": (91, 5, 0, 0), "drop_rows_missing_over": (86, 2, 0, 0),
                              f"outliers_drop_{method}": (84, 2, 0, 0)}
    assert len(xc) == 82 and np.nanmax(np.abs(xc)) < 1
    # the label-conflicting row is not a duplicate and stays
    assert sum(np.array_equal(r, x[5]) for r in xc) == 2


def test_counts_clip_outliers():
    x, y = _constructed()
    xc, yc, steps = clean_arrays(x, y, CleanPlan(outliers="clip", method="iqr"))
    assert _counts(steps) == {"outliers_clip_iqr": (91, 0, 2, 2)}
    assert len(xc) == 91
    col0 = x[:, 0][np.isfinite(x[:, 0])].astype(np.float64)
    q1, q3 = np.quantile(col0, [0.25, 0.75])
    assert xc[89, 0] == np.float32(q3 + 1.5 * (q3 - q1))
    changed = ~((xc == x) | (np.isnan(xc) & np.isnan(x)))
    assert changed.sum() == 2 and changed[89, 0] and changed[90, 1]


def test_missing_threshold_is_inclusive():
    x, y = _constructed()
    _, _, steps = clean_arrays(x, y, CleanPlan(drop_rows_missing_over=1 / 3))
    assert _counts(steps)["drop_rows_missing_over"] == (91, 2, 0, 0)
    _, _, steps = clean_arrays(x, y, CleanPlan(drop_rows_missing_over=0.0))
    assert _counts(steps)["drop_rows_missing_over"] == (91, 3, 0, 0)


def test_denoise_median3_on_images():
    imgs = np.zeros((4, 1, 5, 5), dtype=np.float32)
    imgs[1, 0, 2, 2] = 9.0      # a lone spike: removed
    imgs[2, 0, 0, 0] = 7.0      # a spike in a corner (border pixels repeat): removed
    imgs[3, 0, 1:4, 1:4] = 1.0  # a 3x3 block survives except its corners
    y = np.zeros(4, dtype=np.int64)
    out, _, steps = clean_arrays(imgs, y, CleanPlan(denoise="median3"))
    assert out.shape == imgs.shape
    assert not out[1].any() and not out[2].any()
    assert out[3, 0, 2, 2] == 1 and out[3, 0, 1, 1] == 0
    assert _counts(steps) == {"denoise_median3": (4, 0, 3, 2 + 4)}
    with pytest.raises(QualityError, match="image samples"):
        clean_arrays(np.zeros((3, 4), dtype=np.float32), np.zeros(3), CleanPlan(denoise="median3"))


def test_drop_label_noise_exact():
    rng = np.random.default_rng(5)
    x = np.concatenate([rng.normal(0, 1, (60, 2)), rng.normal(6, 1, (60, 2))]).astype(np.float32)
    y = np.array([0] * 60 + [1] * 60)
    y[[3, 70, 100]] = 1 - y[[3, 70, 100]]
    xc, yc, steps = clean_arrays(x, y, CleanPlan(drop_label_noise=True))
    assert _counts(steps) == {"drop_label_noise": (120, 3, 0, 0)}
    assert (yc[xc[:, 0] < 3] == 0).all() and (yc[xc[:, 0] > 3] == 1).all()


def test_plan_validation():
    with pytest.raises(QualityError, match="between 0 and 1"):
        CleanPlan(drop_rows_missing_over=1.5)
    with pytest.raises(QualityError, match="clip or drop"):
        CleanPlan(outliers="trim")


def test_cli_clean_writes_new_dir_and_leaves_input(tmp_path, capsys):
    from hpctrain.data.shards import Manifest, ShardWriter, iter_arrays

    x, y = _constructed()
    src = tmp_path / "src"
    with ShardWriter(src, feature_names=["a", "b", "c"], sample_shape=(3,), rows_per_shard=30) as w:
        w.add(x, y)
        w.add(x[:20], y[:20], split="val")
    digests = {p.name: sha256_file(p) for p in src.iterdir()}
    out = tmp_path / "clean"
    rc = main(["clean", str(src), "--out", str(out), "--drop-duplicates", "--drop-rows-missing-over", "0.5",
               "--outliers", "drop", "--method", "iqr"])
    assert rc == 0
    assert {p.name: sha256_file(p) for p in src.iterdir()} == digests
    text = capsys.readouterr().out
    assert "train: drop_duplicates: 91 rows in, removed 5" in text
    assert "train: outliers_drop_iqr: 84 rows in, removed 2" in text
    m = Manifest.load(out)
    assert m.rows("train") == 82 and m.rows("val") == 20
    assert m.meta["clean"]["train"][1] == {"step": "drop_rows_missing_over", "rows_in": 86, "rows_removed": 2,
                                           "rows_changed": 0, "values_changed": 0}
    got = np.concatenate([xx for _, xx, _ in iter_arrays(out, "train")])
    want, _, _ = clean_arrays(x, y, CleanPlan(drop_duplicates=True, drop_rows_missing_over=0.5, outliers="drop"))
    np.testing.assert_array_equal(got, want)
    assert main(["clean", str(src), "--out", str(tmp_path / "x")]) == 2
    assert "no step chosen" in capsys.readouterr().err
    assert main(["clean", str(tmp_path / "nope"), "--out", str(tmp_path / "y"), "--drop-duplicates"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_cli_clean_summary_and_option_errors(tmp_path, capsys):
    from hpctrain.data.shards import ShardWriter

    x, y = _constructed()
    src = tmp_path / "src"
    with ShardWriter(src, feature_names=["a", "b", "c"], sample_shape=(3,)) as w:
        w.add(x, y)
    assert main(["clean", str(src), "--out", str(tmp_path / "c"), "--drop-duplicates"]) == 0
    # the last line says where the data went and how many rows survived (91 - 5 duplicates)
    assert capsys.readouterr().out.strip().splitlines()[-1].startswith(f"wrote {tmp_path / 'c'}: train 91 -> 86 rows")
    # --method alone would silently do nothing
    assert main(["clean", str(src), "--out", str(tmp_path / "d"), "--drop-duplicates", "--method", "zscore"]) == 2
    err = capsys.readouterr().err
    assert "--method zscore" in err and "--outliers" in err and "Traceback" not in err
    (tmp_path / "file").write_text("x")
    assert main(["clean", str(src), "--out", str(tmp_path / "file"), "--drop-duplicates"]) == 2
    assert "not a directory" in capsys.readouterr().err
