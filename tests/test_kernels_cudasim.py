"""CUDA kernels under the numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1 set before numba is
imported; scripts/test.sh runs this file in its own pytest process). The simulator runs
every GPU thread as a Python thread, so the arrays here are tiny."""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = [pytest.mark.cudasim, pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning"),
              pytest.mark.filterwarnings("ignore:Skipping features:UserWarning")]

if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    from numba import cuda
else:  # collected in the plain run: the marker skips every test (conftest)
    cuda = None


def _pipe(entries, seed=7):
    from hpctrain.kernels.pipeline import build_pipeline

    return build_pipeline(entries, seed)


def _both(entries, x, y=None, seed=7):
    """Run the same pipeline (same seed, so the same per-sample draws) on CPU and device."""
    cpu_x, cpu_y = _pipe(entries, seed)(x, y)
    dev_x, dev_y = _pipe(entries, seed)(cuda.to_device(x), y)
    return cpu_x, cpu_y, dev_x.copy_to_host(), dev_y


@pytest.fixture
def img():
    return np.random.default_rng(0).standard_normal((3, 2, 5, 6)).astype(np.float32)


@pytest.mark.parametrize("entries", [
    [{"op": "flip", "p": 0.5}],
    [{"op": "flip", "p": 0.7, "axis": "vertical"}],
    [{"op": "crop", "padding": 2}],
    [{"op": "cutout", "size": 3, "p": 0.8}],
    [{"op": "flip", "p": 0.5}, {"op": "crop", "padding": 1}, {"op": "cutout", "size": 2, "p": 1.0}],
])
def test_geometric_ops_equal_cpu(img, entries):
    cpu_x, _, dev_x, _ = _both(entries, img)
    np.testing.assert_array_equal(dev_x, cpu_x)


def test_jitter_equal_cpu(img):
    # the sample mean is a float64 tree reduction on the device, a loop on the CPU
    cpu_x, _, dev_x, _ = _both([{"op": "jitter", "brightness": 0.3, "contrast": 0.5}], img)
    np.testing.assert_allclose(dev_x, cpu_x, rtol=1e-6, atol=1e-6)


def test_mixup_equal_cpu(img):
    y = np.array([0, 2, 1])
    cpu_x, cpu_y, dev_x, dev_y = _both([{"op": "mixup", "num_classes": 3, "alpha": 0.4}], img, y)
    np.testing.assert_allclose(dev_x, cpu_x, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(dev_y, cpu_y)
    np.testing.assert_allclose(dev_y.sum(axis=1), 1.0, rtol=1e-6)


def test_smote_equal_cpu():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((10, 3)).astype(np.float32)
    y = np.array([0, 0, 0, 0, 0, 0, 1, 1, 1, 2])
    cpu_x, _, dev_x, _ = _both([{"op": "smote", "p": 1.0, "k": 2}], x, y)
    np.testing.assert_allclose(dev_x, cpu_x, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(cpu_x[6:9], x[6:9])  # the minority rows moved


def test_gaussian_noise_statistics():
    x = np.zeros((4, 1, 16, 16), dtype=np.float32)  # 1024 draws
    out = _pipe([{"op": "noise", "std": 0.5, "mean": 0.2}])(cuda.to_device(x))[0].copy_to_host()
    se = 0.5 / np.sqrt(out.size)
    assert abs(out.mean() - 0.2) < 5 * se
    assert abs(out.std() - 0.5) < 5 * 0.5 / np.sqrt(2 * out.size)
    assert len(np.unique(out)) > 1000  # states are not shared between threads


def test_salt_pepper_share():
    x = np.full((4, 1, 16, 16), 0.5, dtype=np.float32)
    out = _pipe([{"op": "salt_pepper", "amount": 0.2}])(cuda.to_device(x))[0].copy_to_host()
    assert set(np.unique(out)) <= {0.0, 0.5, 1.0}
    share = (out != 0.5).mean()
    assert abs(share - 0.2) < 5 * np.sqrt(0.2 * 0.8 / out.size)


def test_tabular_noise_scaled_by_std():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal((256, 2)) * np.array([1.0, 10.0])).astype(np.float32)
    out = _pipe([{"op": "tabular_noise", "scale": 0.1}])(cuda.to_device(x))[0].copy_to_host()
    ratio = (out - x).std(axis=0) / (0.1 * x.std(axis=0))
    np.testing.assert_allclose(ratio, 1.0, atol=0.25)


def test_noise_bounded_states():
    p = _pipe([{"op": "noise", "std": 1.0}])
    p(cuda.to_device(np.zeros((2, 1, 4, 4), np.float32)))
    assert p._cuda.n_states <= 4 * 32  # one per simulated thread, not one per element


def test_imputer_device_matches_sklearn():
    from sklearn.impute import SimpleImputer

    from hpctrain.kernels.impute import Imputer

    rng = np.random.default_rng(3)
    x = rng.integers(0, 4, size=(9, 5)).astype(np.float32)
    x[rng.random(x.shape) < 0.3] = np.nan
    x[:, 1] = np.nan
    for strategy in ("mean", "median", "most_frequent", "constant"):
        for indicator in (False, True):
            ref = SimpleImputer(strategy=strategy, add_indicator=indicator).fit_transform(x)
            imp = Imputer(strategy, add_indicator=indicator).fit(x)
            got = imp.transform(cuda.to_device(x)).copy_to_host()
            np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_imputer_device_in_place():
    from hpctrain.kernels.impute import Imputer

    x = np.array([[1.0, np.nan], [3.0, 4.0], [np.nan, 8.0]], dtype=np.float32)
    imp = Imputer("mean").fit(x)
    d = cuda.to_device(x)
    assert imp.transform(d) is d
    np.testing.assert_array_equal(d.copy_to_host(), [[1, 6], [3, 4], [2, 8]])
    kept = cuda.to_device(x)
    out = imp.transform(kept, copy=True)
    assert np.isnan(kept.copy_to_host()).sum() == 2
    np.testing.assert_array_equal(out.copy_to_host(), [[1, 6], [3, 4], [2, 8]])
