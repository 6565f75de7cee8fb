"""spectral.kernel_gram_bound: a certified bound from the kernel alone, for every image size and
zero padding (and circular padding), against dense float64 operators."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab import spectral

F64 = torch.float64


def _norm(matrix: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(matrix, ord=2).item()


@settings(max_examples=40, deadline=None)
@given(c_out=st.integers(1, 4), c_in=st.integers(1, 4), k=st.sampled_from([1, 2, 3, 5]), stride=st.integers(1, 2),
       n_iter=st.integers(1, 3), log_scale=st.floats(-20, 20), seed=st.integers(0, 2**16))
def test_bounds_every_zero_padded_and_circular_operator(c_out, c_in, k, stride, n_iter, log_scale, seed):
    g = torch.Generator().manual_seed(seed)
    kernel = torch.randn(c_out, c_in, k, k, dtype=F64, generator=g) * 10.0**log_scale
    bound = spectral.kernel_gram_bound(kernel, n_iter=n_iter, stride=stride).item()
    for n in (k, k + 1, 9):
        for pad in range(k):
            if (n + 2 * pad - k) // stride + 1 < 1:
                continue
            assert bound >= _norm(spectral.conv_operator_matrix(kernel, n, padding=pad, stride=stride))
    size = 2 * stride * max(k, 3)
    assert bound >= _norm(spectral.conv_operator_matrix(kernel, size, padding="circular", stride=stride))


@settings(max_examples=15, deadline=None)
@given(c=st.integers(1, 4), k=st.sampled_from([2, 3]), seed=st.integers(0, 2**16))
def test_converges_to_the_infinite_grid_norm(c, k, seed):
    kernel = torch.randn(c, c, k, k, dtype=F64, generator=torch.Generator().manual_seed(seed))
    # sup over the torus of sigma_1(K^(theta)), approximated from below on a fine grid
    sup = spectral.conv_spectral_norm(kernel, 96, padding="circular", method="exact").item()
    bounds = [spectral.kernel_gram_bound(kernel, n_iter=t).item() for t in (1, 3, 5)]
    assert all(b >= sup for b in bounds)
    assert bounds[-1] <= 1.05 * sup
    assert bounds[-1] <= bounds[0] * (1 + 1e-9)


def test_float32_extremes_zero_and_gradient():
    assert spectral.kernel_gram_bound(torch.zeros(2, 3, 3, 3)).item() == 0.0
    tiny = torch.full((2, 2, 3, 3), 1e-40)  # subnormal float32 entries
    exact = _norm(spectral.conv_operator_matrix(tiny.double(), 6, padding=1))
    assert 0 < exact <= spectral.kernel_gram_bound(tiny).item() <= 2 * exact
    huge = torch.full((2, 2, 3, 3), 1e36)
    assert spectral.kernel_gram_bound(huge).item() >= _norm(spectral.conv_operator_matrix(huge.double(), 6, padding=1))
    kernel = torch.randn(3, 2, 3, 3, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: spectral.kernel_gram_bound(w, n_iter=2), (kernel,))


@pytest.mark.parametrize("bad, match", [
    (dict(kernel=torch.randn(2, 2, 3)), "kernel"),
    (dict(kernel=torch.full((2, 2, 3, 3), float("nan"))), "kernel"),
    (dict(kernel=torch.randn(2, 2, 3, 3), n_iter=0), "n_iter"),
    (dict(kernel=torch.randn(2, 2, 3, 3), stride=0), "stride"),
])
def test_bad_arguments_are_named(bad, match):
    with pytest.raises((TypeError, ValueError), match=match):
        spectral.kernel_gram_bound(**bad)
