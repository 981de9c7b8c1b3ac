"""CPU augmentation kernels and the pipeline: property tests (the random streams are
ours, so the oracles are the properties each op must have), fused == sequential,
determinism, and configuration errors."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from hpctrain.errors import ConfigError
from hpctrain.kernels.augment import AugmentError
from hpctrain.kernels.pipeline import build_pipeline


@pytest.fixture
def img():
    return np.random.default_rng(0).standard_normal((32, 3, 6, 7)).astype(np.float32)


def test_flip_is_an_exact_permutation(img):
    for axis, flipped in (("horizontal", img[..., ::-1]), ("vertical", img[..., ::-1, :])):
        out, _ = build_pipeline([{"op": "flip", "p": 0.5, "axis": axis}], 1)(img)
        same = np.all(out == img, axis=(1, 2, 3))
        mirrored = np.all(out == flipped, axis=(1, 2, 3))
        assert np.all(same | mirrored)
        assert same.any() and mirrored.any()


def test_crop_is_a_window_of_the_padded_image(img):
    pad = 2
    out, _ = build_pipeline([{"op": "crop", "padding": pad}], 3)(img)
    padded = np.pad(img, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    h, w = img.shape[2:]
    offsets = set()
    for s in range(len(img)):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if np.array_equal(out[s], padded[s, :, dy:dy + h, dx:dx + w])]
        assert hits, f"sample {s} is not a window of its padded image"
        offsets.add(hits[0])
    assert len(offsets) > 3


def test_gaussian_noise_mean_std_and_normality():
    x = np.zeros((64, 1, 32, 32), np.float32)
    out, _ = build_pipeline([{"op": "noise", "std": 0.3, "mean": -0.1}], 5)(x)
    z = out.ravel().astype(np.float64)
    assert abs(z.mean() + 0.1) < 5 * 0.3 / np.sqrt(z.size)
    assert abs(z.std() - 0.3) < 5 * 0.3 / np.sqrt(2 * z.size)
    assert stats.kstest((z + 0.1) / 0.3, "norm").pvalue > 1e-4


def test_noise_p_applies_per_sample(img):
    out, _ = build_pipeline([{"op": "noise", "std": 1.0, "p": 0.5}], 2)(img)
    untouched = np.all(out == img, axis=(1, 2, 3))
    assert untouched.any() and not untouched.all()


def test_salt_pepper_share():
    x = np.full((16, 1, 32, 32), 0.5, np.float32)
    out, _ = build_pipeline([{"op": "salt_pepper", "amount": 0.1, "salt": 2.0, "pepper": -1.0}], 4)(x)
    vals, counts = np.unique(out, return_counts=True)
    assert set(vals) == {-1.0, 0.5, 2.0}
    share = dict(zip(vals, counts / out.size))
    tol = 5 * np.sqrt(0.05 * 0.95 / out.size)
    assert abs(share[-1.0] - 0.05) < tol and abs(share[2.0] - 0.05) < tol


def test_cutout_zeroes_one_clipped_square(img):
    size = 3
    out, _ = build_pipeline([{"op": "cutout", "size": size, "p": 1.0, "value": 0.0}], 6)(img + 10)
    for s in range(len(img)):
        changed = out[s] != img[s] + 10
        assert np.all(out[s][changed] == 0)
        ys, xs = np.nonzero(changed[0])
        assert np.all(changed == changed[0])  # the same square in every channel
        assert 1 <= ys.max() - ys.min() + 1 <= size and 1 <= xs.max() - xs.min() + 1 <= size
        assert changed[0].sum() == (ys.max() - ys.min() + 1) * (xs.max() - xs.min() + 1)


def test_jitter_is_affine_about_the_mean(img):
    out, _ = build_pipeline([{"op": "jitter", "brightness": 0.5, "contrast": 0.5}], 7)(img)
    for s in range(len(img)):
        a, b = img[s].ravel().astype(np.float64), out[s].ravel().astype(np.float64)
        c = np.polyfit(a - a.mean(), b - b.mean(), 1)[0]
        assert 0.5 - 1e-4 <= c <= 1.5 + 1e-4
        np.testing.assert_allclose(b - b.mean(), c * (a - a.mean()), atol=1e-4)
        assert abs(b.mean() - a.mean()) <= 0.5 + 1e-4


def test_mixup_labels_sum_to_one_and_match_the_mix(img):
    y = np.random.default_rng(1).integers(0, 4, len(img))
    entries = [{"op": "mixup", "num_classes": 4, "alpha": 0.4}]
    out, soft = build_pipeline(entries, 8)(img, y)
    assert soft.shape == (len(img), 4)
    np.testing.assert_allclose(soft.sum(axis=1), 1.0, rtol=1e-6)
    # numpy oracle with the same draws (a twin pipeline with the same seed)
    prm = build_pipeline(entries, 8).draw(img.shape, y)[0]
    lam, perm = prm["lam"], prm["perm"]
    want = lam[:, None, None, None] * img + (1 - lam[:, None, None, None]) * img[perm]
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    onehot = np.eye(4, dtype=np.float32)[y]
    np.testing.assert_allclose(soft, lam[:, None] * onehot + (1 - lam[:, None]) * onehot[perm], rtol=1e-6)
    assert 0 < lam.min() and lam.max() <= 1 and len(np.unique(lam)) > 1


def test_smote_points_lie_on_same_class_segments():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((60, 4)).astype(np.float32)
    y = np.array([0] * 45 + [1] * 12 + [2] * 3)
    out, y_out = build_pipeline([{"op": "smote", "p": 1.0, "k": 3}], 9)(x, y)
    np.testing.assert_array_equal(y_out, y)
    np.testing.assert_array_equal(out[:45], x[:45])  # majority class untouched
    moved = 0
    for i in range(45, 60):
        if np.array_equal(out[i], x[i]):
            continue
        moved += 1
        ok = False
        for j in np.flatnonzero(y == y[i]):
            if j == i:
                continue
            d = x[j] - x[i]
            t = np.dot(out[i] - x[i], d) / np.dot(d, d)
            if -1e-6 <= t <= 1 + 1e-6 and np.allclose(x[i] + t * d, out[i], atol=1e-5):
                ok = True
        assert ok, f"row {i} is not on a segment to a same-class row"
    assert moved >= 10


def test_tabular_noise_scales_with_feature_std():
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((4000, 3)) * np.array([0.1, 1.0, 10.0])).astype(np.float32)
    out, _ = build_pipeline([{"op": "tabular_noise", "scale": 0.2}], 10)(x)
    np.testing.assert_allclose((out - x).std(axis=0) / (0.2 * x.std(axis=0)), 1.0, atol=0.05)


CHAIN = [{"op": "flip", "p": 0.5}, {"op": "crop", "padding": 2}, {"op": "noise", "std": 0.2, "p": 0.7},
         {"op": "cutout", "size": 3, "p": 0.5}]


def test_fused_equals_sequential(img):
    fused = build_pipeline(CHAIN, 11)
    seq = build_pipeline(CHAIN, 11)
    seq.fuse = False
    for _ in range(2):
        np.testing.assert_array_equal(fused(img)[0], seq(img)[0])


def test_deterministic_and_resumable(img):
    a, b = build_pipeline(CHAIN, 12), build_pipeline(CHAIN, 12)
    np.testing.assert_array_equal(a(img)[0], b(img)[0])
    state = a.state_dict()
    nxt = a(img)[0]
    c = build_pipeline(CHAIN, 12)
    c.load_state_dict(state)
    np.testing.assert_array_equal(c(img)[0], nxt)
    assert not np.array_equal(build_pipeline(CHAIN, 13)(img)[0], build_pipeline(CHAIN, 12)(img)[0])


def test_torch_in_torch_out_and_input_untouched(img):
    torch = pytest.importorskip("torch")
    t = torch.from_numpy(img.copy())
    y = torch.arange(len(img)) % 3
    out, soft = build_pipeline(CHAIN + [{"op": "mixup", "num_classes": 3}], 0)(t, y)
    assert isinstance(out, torch.Tensor) and isinstance(soft, torch.Tensor)
    assert soft.shape == (len(img), 3)
    np.testing.assert_array_equal(t.numpy(), img)


def test_empty_pipeline_is_identity(img):
    out, y = build_pipeline([], 0)(img, None)
    assert out is img and y is None


@pytest.mark.parametrize("entries,match", [
    ([{"op": "flipp"}], "unknown augmentation 'flipp'.*did you mean 'flip'"),
    ([{"op": "flip", "prob": 0.5}], "unknown key.*prob.*Valid keys.*axis, p"),
    ([{"p": 0.5}], "missing 'op'"),
    ("flip", "expected a list"),
    ([["flip"]], "expected a mapping"),
    ([{"op": "flip", "p": 1.5}], "probability"),
    ([{"op": "flip", "axis": "diagonal"}], "horizontal"),
    ([{"op": "crop", "padding": -1}], "padding is -1"),
    ([{"op": "mixup"}], "num_classes"),
    ([{"op": "smote", "k": 40}], "k is 40"),
])
def test_config_errors(entries, match):
    with pytest.raises(ConfigError, match=match):
        build_pipeline(entries, 0)


def test_batch_errors(img):
    with pytest.raises(AugmentError, match="needs image batches"):
        build_pipeline([{"op": "flip"}], 0)(np.zeros((4, 5), np.float32))
    with pytest.raises(AugmentError, match="needs tabular batches"):
        build_pipeline([{"op": "smote"}], 0)(img, np.zeros(len(img), int))
    with pytest.raises(AugmentError, match="needs the labels"):
        build_pipeline([{"op": "mixup", "num_classes": 2}], 0)(img)
    with pytest.raises(AugmentError, match="class ids"):
        build_pipeline([{"op": "mixup", "num_classes": 2}], 0)(img, np.full(len(img), 5))


def test_refuses_to_run_in_another_process(img):
    p = build_pipeline([{"op": "flip"}], 0)
    p._pid = -1  # as seen from a forked DataLoader worker
    with pytest.raises(AugmentError, match="training process"):
        p(img)


def test_build_pipeline_public_from_augment_too(img):
    from hpctrain.kernels import augment, pipeline
    from hpctrain.kernels.augment import build_pipeline

    assert build_pipeline is pipeline.build_pipeline
    np.testing.assert_array_equal(build_pipeline([{"op": "flip", "p": 1.0}], 0)(img)[0], img[..., ::-1])
    with pytest.raises(AttributeError):
        augment.no_such_name  # noqa: B018


@pytest.mark.parametrize("entry,match", [
    ({"op": "noise", "std": float("nan")}, "std is nan; expected a finite"),
    ({"op": "noise", "mean": float("inf")}, "mean is inf"),
    ({"op": "jitter", "brightness": float("nan")}, "brightness is nan"),
    ({"op": "mixup", "num_classes": 3, "alpha": float("nan")}, "alpha is nan"),
    ({"op": "tabular_noise", "scale": float("nan")}, "scale is nan"),
    ({"op": "cutout", "value": float("nan")}, "value is nan"),
    ({"op": "salt_pepper", "salt": float("inf")}, "salt is inf"),
])
def test_non_finite_parameters_are_refused(entry, match):
    with pytest.raises(ConfigError, match=match):
        build_pipeline([entry], 0)


def test_bad_batches_and_labels(img):
    y4 = np.arange(len(img)) % 3
    with pytest.raises(AugmentError, match="padding 6 is not smaller than the image"):
        build_pipeline([{"op": "crop", "padding": 6}], 0)(img)
    with pytest.raises(AugmentError, match="dtype object"):
        build_pipeline([{"op": "noise"}], 0)(np.array([[1.0, None]], dtype=object))
    with pytest.raises(AugmentError, match="dtype <U3"):
        build_pipeline([{"op": "noise"}], 0)(np.array([["abc"]]))
    with pytest.raises(AugmentError, match="beyond the float32 range"):
        build_pipeline([{"op": "noise"}], 0)(np.full((2, 3), 1e300))
    with pytest.raises(AugmentError, match=r"labels of shape \(2,\) for a batch of 32"):
        build_pipeline([{"op": "flip"}], 0)(img, y4[:2])  # used to pass the wrong labels through
    with pytest.raises(AugmentError, match=r"labels of shape \(2, 3\) for a batch of 32"):
        build_pipeline([{"op": "mixup", "num_classes": 3}], 0)(img, np.ones((2, 3), np.float32))
    with pytest.raises(AugmentError, match="label 0.5 .*not a class id"):
        build_pipeline([{"op": "mixup", "num_classes": 3}], 0)(img, np.r_[0.5, y4[1:]])  # was truncated to 0
    with pytest.raises(AugmentError, match="label nan"):
        build_pipeline([{"op": "mixup", "num_classes": 3}], 0)(img, np.r_[np.nan, y4[1:]])
    with pytest.raises(AugmentError, match="dtype <U1"):
        build_pipeline([{"op": "mixup", "num_classes": 3}], 0)(img, np.array(list("abc" * 11))[:32])
    tab = np.random.default_rng(0).standard_normal((6, 3)).astype(np.float32)
    with pytest.raises(AugmentError, match="smote.*label 0.5"):
        build_pipeline([{"op": "smote"}], 0)(tab, np.array([0.5, 1, 1, 1, 1, 1]))
    # whole-number float labels are class ids
    _, y = build_pipeline([{"op": "mixup", "num_classes": 3, "p": 0.0}], 0)(img, y4.astype(np.float64))
    np.testing.assert_array_equal(y, np.eye(3, dtype=np.float32)[y4])
