"""Spectral norms against dense float64 oracles: bounds hold, estimates stay below, exact matches."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab import spectral

SLACK = {torch.float32: 2e-5, torch.float64: 1e-11}  # floating-point rounding of a certified bound



def oracle(kernel, size, padding, stride):
    matrix = spectral.conv_operator_matrix(kernel.double(), size, padding=padding, stride=stride)
    return torch.linalg.matrix_norm(matrix, ord=2).item()


matrices = st.tuples(st.integers(1, 12), st.integers(1, 12), st.integers(0, 2**31 - 1), st.sampled_from([torch.float32, torch.float64]))


@settings(max_examples=40, deadline=None)
@given(matrices, st.integers(0, 8))
def test_gram_bound_is_above_and_power_estimate_below_the_norm(args, n_iter):
    m, n, seed, dtype = args
    W = torch.randn(3, m, n, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    exact = torch.linalg.matrix_norm(W.double(), ord=2)
    upper = spectral.gram_iteration(W, n_iter=n_iter).double()
    lower = spectral.power_iteration(W, n_iter=20, generator=torch.Generator().manual_seed(seed)).double()
    assert upper.shape == lower.shape == (3,)
    assert torch.all(upper >= exact * (1 - SLACK[dtype]))
    assert torch.all(lower <= exact * (1 + SLACK[dtype]))


def test_gram_iteration_converges_and_certifies_its_gap():
    W = torch.randn(60, 40, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    exact = torch.linalg.matrix_norm(W, ord=2)
    gaps = [(spectral.gram_iteration(W, n_iter=t) / exact - 1).item() for t in range(9)]
    assert gaps[0] == pytest.approx(torch.linalg.matrix_norm(W).item() / exact.item() - 1)
    assert all(a >= b - 1e-14 for a, b in zip(gaps, gaps[1:]))  # the bound only decreases
    assert gaps[-1] < 1e-9
    upper, lower = spectral.gram_iteration(W, tol=1e-8, return_lower=True)
    assert lower <= exact * (1 + 1e-12) and upper >= exact * (1 - 1e-12)
    assert upper / lower - 1 <= 1e-8


def test_gram_iteration_has_no_overflow_and_handles_zero_and_complex():
    W = torch.randn(30, 20, dtype=torch.float32) * 1e30
    exact = torch.linalg.matrix_norm(W.double(), ord=2)
    assert torch.isfinite(spectral.gram_iteration(W, n_iter=12))
    assert spectral.gram_iteration(W, n_iter=12).double() == pytest.approx(exact.item(), rel=1e-4)
    assert spectral.gram_iteration(torch.zeros(4, 3)).item() == pytest.approx(0.0, abs=1e-10)
    C = torch.randn(7, 5, dtype=torch.complex128)
    assert spectral.gram_iteration(C, n_iter=10).item() == pytest.approx(torch.linalg.matrix_norm(C, 2).item(), rel=1e-9)


def test_power_iteration_on_a_callable_operator():
    W = torch.randn(9, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    estimate, v = spectral.power_iteration(
        lambda x: W @ x, adjoint=lambda y: W.T @ y, input_shape=(6,), dtype=torch.float64,
        n_iter=300, return_vector=True,
    )
    assert estimate.item() == pytest.approx(torch.linalg.matrix_norm(W, 2).item(), rel=1e-8)
    assert v.norm().item() == pytest.approx(1.0)


@settings(max_examples=40, deadline=None)
@given(
    c_out=st.integers(1, 4),
    c_in=st.integers(1, 4),
    kh=st.integers(1, 4),
    kw=st.integers(1, 4),
    size=st.integers(4, 9),
    stride=st.sampled_from([1, 2]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**31 - 1),
)
def test_circular_padding_against_the_dense_oracle(c_out, c_in, kh, kw, size, stride, dtype, seed):
    size = size - size % stride
    kernel = torch.randn(c_out, c_in, kh, kw, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    if max(kh, kw) > size // stride * stride:
        return
    try:
        truth = oracle(kernel, size, "circular", stride)
    except ValueError:
        return
    exact = spectral.conv_spectral_norm(kernel, size, padding="circular", stride=stride, method="exact")
    gram = spectral.conv_spectral_norm(kernel, size, padding="circular", stride=stride, method="gram")
    fixed = spectral.conv_spectral_norm(kernel, size, padding="circular", stride=stride, method="gram", tol=None, n_iter=4)
    power = spectral.conv_spectral_norm(kernel, size, padding="circular", stride=stride, method="power")
    slack = SLACK[dtype]
    assert exact.dtype == dtype
    assert exact.item() == pytest.approx(truth, rel=50 * slack)
    assert truth * (1 - slack) <= gram.item() <= truth * (1 + 1e-3 + slack)
    assert fixed.item() >= truth * (1 - slack)
    assert power.item() <= truth * (1 + slack)


@settings(max_examples=30, deadline=None)
@given(
    c_out=st.integers(1, 3),
    c_in=st.integers(1, 3),
    kh=st.integers(1, 5),
    kw=st.integers(1, 5),
    size=st.integers(1, 8),
    stride=st.sampled_from([1, 2, 3]),
    pad=st.sampled_from(["zeros", 0, 1, 2]),
    seed=st.integers(0, 2**31 - 1),
)
def test_zero_padding_bound_holds_against_the_dense_oracle(c_out, c_in, kh, kw, size, stride, pad, seed):
    kernel = torch.randn(c_out, c_in, kh, kw, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    try:
        truth = oracle(kernel, size, pad, stride)
    except ValueError:  # padding >= kernel size, or an empty output
        with pytest.raises(ValueError):
            spectral.conv_spectral_norm(kernel, size, padding=pad, stride=stride)
        return
    gram = spectral.conv_spectral_norm(kernel, size, padding=pad, stride=stride)
    exact = spectral.conv_spectral_norm(kernel, size, padding=pad, stride=stride, method="exact")
    power = spectral.conv_spectral_norm(kernel, size, padding=pad, stride=stride, method="power", n_iter=200)
    assert gram.item() >= truth * (1 - 1e-11)
    assert exact.item() == pytest.approx(truth, rel=1e-12)
    assert power.item() <= truth * (1 + 1e-11)


def test_zero_padding_bound_is_tight_on_a_small_layer():
    kernel = torch.randn(16, 16, 3, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    truth = oracle(kernel, 8, "zeros", 1)
    bound = spectral.conv_spectral_norm(kernel, 8, padding="zeros").item()
    assert truth <= bound <= 1.05 * truth


def test_circular_gram_converges_as_n_iter_grows():
    kernel = torch.randn(6, 5, 3, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    truth = spectral.conv_spectral_norm(kernel, 10, method="exact").item()
    gaps = [spectral.conv_spectral_norm(kernel, 10, tol=None, n_iter=t).item() / truth - 1 for t in range(1, 10)]
    assert all(g >= -1e-12 for g in gaps)
    assert all(a >= b - 1e-13 for a, b in zip(gaps, gaps[1:]))
    assert gaps[-1] < 1e-8


def test_reshaped_kernel_norm_is_not_the_operator_norm():
    """What torch's spectral_norm parametrization normalizes can be far from the layer's norm."""
    kernel = torch.randn(16, 16, 3, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    reshaped = torch.linalg.matrix_norm(kernel.reshape(16, -1), 2).item()
    truth = spectral.conv_spectral_norm(kernel, 16, method="exact").item()
    assert truth > 1.2 * reshaped  # the bound sqrt(kh * kw) * reshaped holds, the reshaped norm alone does not
    assert truth <= 3 * reshaped + 1e-9


def test_gradients_match_finite_differences():
    kernel = torch.randn(3, 2, 3, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64, requires_grad=True)
    for kwargs in [dict(method="exact"), dict(method="gram", tol=None, n_iter=8)]:
        f = lambda k: spectral.conv_spectral_norm(k, 6, **kwargs)  # noqa: E731
        assert torch.autograd.gradcheck(f, (kernel,), eps=1e-6, atol=1e-5, rtol=1e-4)
    W = torch.randn(5, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda w: spectral.gram_iteration(w, n_iter=10), (W,), eps=1e-6, atol=1e-5)


def test_transfer_matrices_reassemble_the_operator_spectrum():
    kernel = torch.randn(3, 2, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    dense = spectral.conv_operator_matrix(kernel, 6, padding="circular")
    blocks = spectral.conv_transfer_matrices(kernel, 6)
    assert blocks.shape == (6 * 4, 3, 2)
    full = torch.linalg.svdvals(dense).sort().values[-6:]
    top = torch.linalg.svdvals(blocks).flatten().sort().values[-6:]
    assert torch.allclose(full[-1], top[-1])


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: spectral.conv_spectral_norm(torch.randn(3, 3, 3), 8), "kernel"),
        (lambda: spectral.conv_spectral_norm(torch.full((1, 1, 3, 3), math.nan), 8), "NaN"),
        (lambda: spectral.conv_spectral_norm(torch.full((1, 1, 3, 3), math.inf), 8), "NaN or Inf"),
        (lambda: spectral.conv_spectral_norm(torch.randn(1, 1, 3, 3), 0), "input_size"),
        (lambda: spectral.conv_spectral_norm(torch.randn(1, 1, 5, 5), 3), "smaller than the kernel"),
        (lambda: spectral.conv_spectral_norm(torch.randn(1, 1, 3, 3), 7, stride=2), "divisible"),
        (lambda: spectral.conv_spectral_norm(torch.randn(1, 1, 3, 3), 8, padding="reflect"), "padding"),
        (lambda: spectral.conv_spectral_norm(torch.randn(1, 1, 3, 3), 8, padding=3), "padding"),
        (lambda: spectral.conv_spectral_norm(torch.randn(1, 1, 3, 3), 8, method="svd"), "method"),
        (lambda: spectral.conv_spectral_norm(torch.randn(1, 1, 3, 3), 8, stride=0), "stride"),
        (lambda: spectral.conv_spectral_norm(torch.randn(1, 1, 3, 3), 8, tol=2.0), "tol"),
        (lambda: spectral.conv_spectral_norm(torch.randn(64, 64, 3, 3), 16, padding="zeros", method="exact"), "16384"),
        (lambda: spectral.gram_iteration(torch.randn(5)), "W"),
        (lambda: spectral.gram_iteration(torch.randn(3, 3), n_iter=-1), "n_iter"),
        (lambda: spectral.power_iteration(torch.randn(3, 3), n_iter=0), "n_iter"),
        (lambda: spectral.power_iteration(lambda x: x, input_shape=(3,)), "adjoint"),
        (lambda: spectral.power_iteration(lambda x: x, adjoint=lambda y: y), "input_shape"),
    ],
)
def test_bad_input_raises_a_clear_error(call, match):
    with pytest.raises((ValueError, TypeError), match=match):
        call()


def test_integer_kernel_is_rejected():
    with pytest.raises(TypeError, match="kernel"):
        spectral.conv_spectral_norm(torch.ones(1, 1, 3, 3, dtype=torch.int64), 8)


def test_n_iter_counts_gram_steps_with_and_without_tol():
    """With a tolerance too small to stop early, n_iter Gram steps give the same bound on both paths."""
    kernel = torch.randn(16, 16, 3, 3, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    for n_iter in [1, 2, 3, 5, 6]:
        plain = spectral.conv_spectral_norm(kernel, 16, tol=None, n_iter=n_iter).item()
        fast = spectral.conv_spectral_norm(kernel, 16, tol=1e-14, n_iter=n_iter).item()
        assert fast == pytest.approx(plain, rel=1e-9), n_iter


def test_dense_operator_size_is_checked_before_it_is_built():
    with pytest.raises(ValueError, match="65536"):
        spectral.conv_operator_matrix(torch.randn(64, 64, 3, 3), 32, padding="circular")
