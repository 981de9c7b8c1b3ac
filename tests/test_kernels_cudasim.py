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


def test_register_xoroshiro_matches_numba_states():
    """The noise kernels step xoroshiro128p states in registers; the sequence must be
    numba.cuda.random's own, and the states they store back must be where numba's would be."""
    from numba.cuda.random import create_xoroshiro128p_states, xoroshiro128p_next

    from hpctrain.kernels._cuda_augment import xoro_step

    @cuda.jit
    def ours(states, out):
        t = cuda.grid(1)
        s0 = states[t]["s0"]
        s1 = states[t]["s1"]
        for i in range(out.shape[1]):
            r, s0, s1 = xoro_step(s0, s1)
            out[t, i] = r
        states[t]["s0"] = s0
        states[t]["s1"] = s1

    @cuda.jit
    def theirs(states, out):
        t = cuda.grid(1)
        for i in range(out.shape[1]):
            out[t, i] = xoroshiro128p_next(states, t)

    a = create_xoroshiro128p_states(8, seed=11)
    b = create_xoroshiro128p_states(8, seed=11)
    ra = cuda.to_device(np.zeros((8, 5), np.uint64))
    rb = cuda.to_device(np.zeros((8, 5), np.uint64))
    ours[1, 8](a, ra)
    theirs[1, 8](b, rb)
    np.testing.assert_array_equal(ra.copy_to_host(), rb.copy_to_host())
    np.testing.assert_array_equal(a.copy_to_host(), b.copy_to_host())
    assert len(np.unique(ra.copy_to_host())) == 40


def test_noise_stream_continues_across_calls_and_is_seeded():
    x = np.zeros((2, 1, 8, 8), np.float32)
    p = _pipe([{"op": "noise", "std": 1.0}], seed=3)
    first = p(cuda.to_device(x))[0].copy_to_host()
    second = p(cuda.to_device(x))[0].copy_to_host()
    assert not np.array_equal(first, second)  # the states advanced and were stored back
    again = _pipe([{"op": "noise", "std": 1.0}], seed=3)(cuda.to_device(x))[0].copy_to_host()
    np.testing.assert_array_equal(first, again)  # same seed, same draws
    assert np.isfinite(first).all()


def test_two_normals_from_extreme_outputs():
    """The Box-Muller inputs come from the high bits; the all-ones output (u = 1 - 2**-24 on the
    log side) and zero must give finite normals."""
    from hpctrain.kernels._cuda_augment import two_normals, two_uniforms

    @cuda.jit
    def k(rs, out):
        i = cuda.grid(1)
        if i < rs.shape[0]:
            a, b = two_normals(rs[i])
            u, v = two_uniforms(rs[i])
            out[i, 0], out[i, 1], out[i, 2], out[i, 3] = a, b, u, v

    rs = np.array([0, 2**64 - 1, 1 << 40, (1 << 40) - 1], dtype=np.uint64)
    out = cuda.to_device(np.zeros((4, 4), np.float32))
    k[1, 4](cuda.to_device(rs), out)
    o = out.copy_to_host()
    assert np.isfinite(o).all()
    assert ((o[:, 2:] >= 0) & (o[:, 2:] < 1)).all()
    np.testing.assert_allclose(o[1, 2:], 1 - 2.0**-24)  # all 48 used bits set
    assert o[0, 0] == 0.0 and o[0, 1] == 0.0  # u = 0 on the log side: radius 0


def test_column_std_kernel_matches_cpu():
    from hpctrain.kernels import _augment_cpu as K
    from hpctrain.kernels import _cuda_augment as G

    x = (np.random.default_rng(4).standard_normal((300, 5)) * [1, 2, 3, 1e3, 1e-3] + 7).astype(np.float32)
    std = cuda.device_array(5, dtype=np.float32)
    G.column_std_kernel[2, G.REDUCE_THREADS](cuda.to_device(x), std)  # fewer blocks than columns: grid-stride
    np.testing.assert_allclose(std.copy_to_host(), K.column_std(x), rtol=1e-6)
    np.testing.assert_allclose(std.copy_to_host(), x.astype(np.float64).std(axis=0), rtol=1e-6)
