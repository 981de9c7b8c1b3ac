"""Request parsing (pure): the fast path for flat samples gives what the general path gives,
and every bad value still gets its 4xx with the same message."""

from __future__ import annotations

import json

import numpy as np
import pytest

from hpctrain.serve.inputs import RequestError, Schema, _flat_rows, parse_body

SCHEMA = Schema((1, 2, 2), missing_ok=True)


def body(rows):
    return json.dumps({"instances": rows}).encode()


def test_flat_samples_parse_like_nested_ones_nulls_as_nan():
    rows = [[0.5, None, 3, -1e30], [1.0, 2.0, 3.0, 4.0]]
    assert _flat_rows(rows, 4) is not None  # the fast path takes it
    nested = [[[[0.5, None], [3, -1e30]]], [[[1.0, 2.0], [3.0, 4.0]]]]
    assert _flat_rows(nested, 4) is None  # the general path takes this one
    a, b = parse_body(body(rows), SCHEMA), parse_body(body(nested), SCHEMA)
    assert a.dtype == b.dtype == np.float32 and a.shape == b.shape == (2, 1, 2, 2)
    np.testing.assert_array_equal(a, b)
    assert np.isnan(a[0, 0, 0, 1]) and a[0, 0, 1, 1] == np.float32(-1e30)


@pytest.mark.parametrize("rows, fragment", [
    ([[1.0, True, 3.0, 4.0]], "type ['bool']"),
    ([[1.0, "2", 3.0, 4.0]], "type ['str']"),
    ([[1.0, 2.0, 3.0]], "shape [3]"),
    ([[1.0, 2.0, 3.0, 4.0], [1.0, 2.0]], "ragged"),
    ([[1.0, 10**400, 3.0, 4.0]], "beyond the float32 range"),
    ([[1.0, 1e39, 3.0, 4.0]], "beyond the float32 range"),
])
def test_bad_values_keep_their_messages(rows, fragment):
    with pytest.raises(RequestError, match=fragment.replace("[", r"\[").replace("]", r"\]")) as e:
        parse_body(body(rows), SCHEMA)
    assert e.value.status == 422


def test_missing_values_without_an_imputer_are_refused_on_the_fast_path_too():
    with pytest.raises(RequestError, match="1 value\\(s\\) are missing") as e:
        parse_body(body([[1.0, None, 3.0, 4.0]]), Schema((4,), missing_ok=False))
    assert e.value.status == 422
