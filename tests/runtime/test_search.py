"""The NumPy searches' top-k: what a stable sort of the whole row gives, ties included."""

from __future__ import annotations

import numpy as np
import pytest

from mamba_asr.runtime.search import top_k


@pytest.mark.parametrize("k", [1, 4, 10, 40])
def test_top_k_equals_a_stable_sort(k):
    rng = np.random.default_rng(k)
    x = rng.integers(-5, 5, size=(3, 64)).astype(np.float32)  # many ties
    x[1, 10:] = -np.inf  # a row with fewer finite values than k
    x[2] = rng.standard_normal(64)
    expected = np.argsort(-x, axis=-1, kind="stable")[:, :k]
    np.testing.assert_array_equal(top_k(x, k), expected)
