"""Median and mean at the edges of float32, compared byte for byte (``tobytes``).

``np.array_equal`` treats -0.0 and +0.0 as equal, so every comparison here is on the bytes.
Where scikit-learn's result is the exact one (signed zeros, subnormals, values whose pair sum
stays finite) the median must equal it byte for byte, on the in-memory path (sampled bracket)
and on the streaming path (radix selection over chunks). Where scikit-learn overflows
(medians above ~1.7e38 become inf: it adds the two middle values in float32; means of values
near the float32 maximum become NaN and the column is dropped), hpctrain keeps the exact
value instead: docs/kernels.md states the difference, and these tests pin the exact value.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from sklearn.impute import SimpleImputer

from hpctrain.kernels.impute import Imputer, fit_statistics

pytestmark = pytest.mark.filterwarnings("ignore:Skipping features:UserWarning")

NAN = np.nan
ULP = float(np.float32(1.4e-45))  # the smallest subnormal float32
TINY = float(np.finfo(np.float32).tiny)  # the smallest normal float32
MAX = float(np.finfo(np.float32).max)


def columns(*cols):
    """A float32 matrix from columns of unequal length (padded with NaN: missing)."""
    n = max(len(c) for c in cols)
    x = np.full((n, len(cols)), np.nan, np.float32)
    for j, c in enumerate(cols):
        x[:len(c), j] = np.asarray(c, np.float32)
    return x


def ours(x, strategy, chunked):
    if chunked:  # the streaming path: radix selection / float64 sums over chunks, no in-memory copy
        parts = np.array_split(x, 3)
        return fit_statistics(lambda: parts, x.shape[1], strategy).statistics.astype(np.float32)
    return Imputer(strategy).fit(x).statistics_.astype(np.float32)


def sklearn_stats(x, strategy):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return SimpleImputer(strategy=strategy).fit(x).statistics_.astype(np.float32)


# columns where scikit-learn's median is exact: hpctrain must give the same bytes
SAME_AS_SKLEARN = columns(
    [-0.0, -0.0, 1.0],  # odd count, the middle value is -0.0: both give +0.0
    [-0.0, -0.0, NAN],
    [-0.0],
    [-0.0, 0.0],
    [0.0, -0.0, -0.0, NAN, -1.0],
    [-1.0, -0.0, 0.0, 1.0],
    [ULP, 2 * ULP, 3 * ULP],  # subnormals
    [ULP, 2 * ULP],  # 1.5 ulp: rounds to even, 2 ulp
    [-ULP, ULP],
    [ULP, 3 * ULP, NAN, 0.0],
    [TINY, TINY - ULP],  # the largest subnormal and the smallest normal
    [-TINY, 5 * ULP, 7 * ULP],
    [1.0e38, 1.5e38],  # large, but the pair sum is still finite
    [-1.6e38, -1.6e38, 0.0],
    [1.5e38, -1.5e38, 1.0e38],
    [3.0e38, -3.0e38],  # huge values of opposite sign: the sum is 0
    [1.0, 1.0000001],  # adjacent floats: (a + b) / 2 is a tie
)


@pytest.mark.parametrize("chunked", [False, True])
def test_median_matches_sklearn_byte_for_byte(chunked):
    got = ours(SAME_AS_SKLEARN, "median", chunked)
    want = sklearn_stats(SAME_AS_SKLEARN, "median")
    assert got.tobytes() == want.tobytes(), list(zip(got, want))


def test_median_transform_matches_sklearn_byte_for_byte():
    x = SAME_AS_SKLEARN
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = SimpleImputer(strategy="median").fit_transform(x)
    got = Imputer("median").fit_transform(x.copy())
    assert got.dtype == want.dtype == np.float32
    assert got.tobytes() == want.tobytes()


@pytest.mark.parametrize("chunked", [False, True])
def test_median_of_many_signed_zeros(chunked):
    """Large columns whose median is a zero, with -0.0 and +0.0 both present in the middle: the
    in-memory bracket pivots on a sampled zero (both zeros compare equal to it) and the radix
    path orders -0.0 before +0.0; either way the median is +0.0, as in scikit-learn."""
    rng = np.random.default_rng(5)
    x = rng.choice(np.array([-0.0, 0.0, -1.0, 1.0, -2.5e-44, 2.5e-44], np.float32), size=(40_001, 4),
                   p=[0.3, 0.3, 0.15, 0.15, 0.05, 0.05])
    x[:, 1] = np.where(x[:, 1] == 0, np.float32(-0.0), x[:, 1])  # only negative zeros
    x[rng.random(x.shape) < 0.1] = np.nan
    got = ours(x, "median", chunked)
    assert got.tobytes() == sklearn_stats(x, "median").tobytes()
    assert got.tobytes() == np.zeros(4, np.float32).tobytes()


# columns where scikit-learn overflows; hpctrain gives the exact median
HUGE = columns(
    [3.0e38, 3.0e38, 3.0e38],  # odd count: sklearn computes (v + v) / 2 = inf
    [2.0e38, 3.0e38],
    [-3.0e38, -3.0e38, 1.0],
    [MAX, MAX, NAN],
    [-MAX, MAX, MAX],
)


@pytest.mark.parametrize("chunked", [False, True])
def test_median_of_huge_values_is_exact(chunked):
    want = np.array([np.median(HUGE[:, j][~np.isnan(HUGE[:, j])].astype(np.float64)) for j in range(HUGE.shape[1])])
    got = ours(HUGE, "median", chunked)
    assert np.all(np.isfinite(got))
    assert got.tobytes() == want.astype(np.float32).tobytes()
    filled = Imputer("median").fit_transform(HUGE.copy())
    assert filled[2, 3].tobytes() == np.float32(MAX).tobytes()  # the NaN filled with the exact median


# means: hpctrain sums in float64, so the mean is the exact one rounded to float32
MEANS = columns(
    [MAX, MAX, NAN],  # sklearn: NaN, column dropped
    [3.0e38, 3.0e38, 3.0e38, -1.0e38],
    [-MAX, -MAX, -MAX],
    [ULP, 2 * ULP],  # 1.5 ulp: rounds to even
    [ULP, ULP, 2 * ULP],  # 4/3 ulp: rounds to 1 ulp
    [-ULP, -0.0],
    [TINY, -TINY, TINY],
    [-0.0, -0.0],  # the mean of negative zeros is +0.0 (float64 sums start at +0.0), as in sklearn
)


@pytest.mark.parametrize("chunked", [False, True])
def test_mean_at_the_edges_is_exact(chunked):
    exact = []
    for j in range(MEANS.shape[1]):
        c = MEANS[:, j][~np.isnan(MEANS[:, j])].astype(np.float64)
        exact.append(sum(c.tolist()) / len(c))  # every sum here is exact in float64
    got = ours(MEANS, "mean", chunked)
    assert got.tobytes() == np.array(exact, np.float32).tobytes(), list(zip(got, exact))
    out = Imputer("mean").fit_transform(MEANS.copy())
    assert out.shape == MEANS.shape  # no column dropped
    assert out[2, 0].tobytes() == np.float32(MAX).tobytes()
