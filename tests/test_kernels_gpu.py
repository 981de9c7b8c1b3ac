"""The CUDA kernels on a real device (marker ``gpu``: skipped without one; run by
scripts/gpu-check.sh). Oracles: scikit-learn and the CPU kernels with the same draws."""

from __future__ import annotations

import numpy as np
import pytest

pytestmark = [pytest.mark.gpu, pytest.mark.filterwarnings("ignore:Skipping features:UserWarning")]


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device (a CPU build?)")
    return torch


def _data(rows=5000, cols=9, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 20, size=(rows, cols)).astype(np.float32)
    x[:, 1] += rng.standard_normal(rows).astype(np.float32)
    x[rng.random(x.shape) < 0.15] = np.nan
    x[:, 4] = np.nan
    return x


@pytest.mark.parametrize("strategy", ["mean", "median", "most_frequent", "constant"])
@pytest.mark.parametrize("indicator", [False, True])
def test_imputer_numba_device_array(strategy, indicator):
    from numba import cuda
    from sklearn.impute import SimpleImputer

    from hpctrain.kernels.impute import Imputer

    x = _data()
    ref = SimpleImputer(strategy=strategy, add_indicator=indicator).fit_transform(x)
    got = Imputer(strategy, add_indicator=indicator).fit(x).transform(cuda.to_device(x)).copy_to_host()
    np.testing.assert_allclose(got, ref, rtol=1e-6)


def test_imputer_torch_cuda_in_place():
    torch = _torch_cuda()
    from sklearn.impute import SimpleImputer

    from hpctrain.kernels.impute import Imputer

    x = _data()
    x[:, 4] = 1.0  # nothing dropped: the fill happens in place
    t = torch.from_numpy(x).cuda()
    imp = Imputer("median").fit(x)
    out = imp.transform(t)
    assert out is t and out.is_cuda
    np.testing.assert_array_equal(out.cpu().numpy(), SimpleImputer(strategy="median").fit_transform(x))


def test_imputer_torch_cuda_drop_and_indicator():
    torch = _torch_cuda()
    from sklearn.impute import SimpleImputer

    from hpctrain.kernels.impute import Imputer

    x = _data(seed=1)
    out = Imputer("mean", add_indicator=True).fit(x).transform(torch.from_numpy(x).cuda())
    assert isinstance(out, torch.Tensor) and out.is_cuda
    np.testing.assert_allclose(out.cpu().numpy(), SimpleImputer(add_indicator=True).fit_transform(x), rtol=1e-6)


@pytest.mark.parametrize("entries", [
    [{"op": "flip", "p": 0.5}, {"op": "crop", "padding": 4}, {"op": "cutout", "size": 8, "p": 0.5}],
    [{"op": "flip", "p": 0.5, "axis": "vertical"}],
])
def test_pipeline_torch_cuda_equals_cpu(entries):
    torch = _torch_cuda()
    from hpctrain.kernels.pipeline import build_pipeline

    x = np.random.default_rng(2).standard_normal((64, 3, 32, 32)).astype(np.float32)
    cpu, _ = build_pipeline(entries, 5)(x)
    dev, _ = build_pipeline(entries, 5)(torch.from_numpy(x).cuda())
    assert dev.is_cuda
    np.testing.assert_array_equal(dev.cpu().numpy(), cpu)


def test_pipeline_mixup_and_jitter_on_device():
    torch = _torch_cuda()
    from hpctrain.kernels.pipeline import build_pipeline

    x = np.random.default_rng(3).standard_normal((32, 3, 8, 8)).astype(np.float32)
    y = np.arange(32) % 4
    entries = [{"op": "jitter"}, {"op": "mixup", "num_classes": 4}]
    cx, cy = build_pipeline(entries, 6)(x, y)
    dx, dy = build_pipeline(entries, 6)(torch.from_numpy(x).cuda(), torch.from_numpy(y).cuda())
    np.testing.assert_allclose(dx.cpu().numpy(), cx, rtol=1e-5, atol=1e-5)
    assert dy.is_cuda
    np.testing.assert_allclose(dy.cpu().numpy(), cy, rtol=1e-6)


def test_device_noise_statistics():
    torch = _torch_cuda()
    from hpctrain.kernels.pipeline import build_pipeline

    x = torch.zeros((256, 3, 32, 32), device="cuda")
    p = build_pipeline([{"op": "noise", "std": 0.5}], 7)
    z = p(x)[0].double()
    assert abs(z.mean().item()) < 5 * 0.5 / np.sqrt(z.numel())
    assert abs(z.std().item() - 0.5) < 5 * 0.5 / np.sqrt(2 * z.numel())
    assert p._cuda.n_states < z.numel()  # bounded states, reused in grid-stride loops
    z2 = build_pipeline([{"op": "noise", "std": 0.5}], 7)(x)[0].double()
    assert torch.equal(z, z2)  # deterministic for a seed
