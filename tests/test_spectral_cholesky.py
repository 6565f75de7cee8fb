"""The Cholesky certificate of zero-padded convolutions (conv_spectral_norm, conv2d_norm): an upper
bound of the dense float64 operator's norm, within tol of it, at every scale, with the norm's
gradient; and a certificate that never passes below the norm, whatever shift it is offered."""

from __future__ import annotations

import math
from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab import spectral

F64 = torch.float64
CHOLESKY = "Cholesky certificate of the Gram matrix (certified)"


def _operator(kernel: torch.Tensor, size: tuple[int, int], pads, stride) -> torch.Tensor:
    """The dense float64 matrix of x -> conv2d(pad(x, pads), kernel, stride), pads = (l, r, t, b)."""
    c_in = kernel.shape[1]
    n = c_in * size[0] * size[1]
    basis = torch.eye(n, dtype=F64).reshape(n, c_in, *size)
    out = F.conv2d(F.pad(basis, pads), kernel.to(F64), stride=stride)
    return out.reshape(n, -1).T


def _norm(matrix: torch.Tensor) -> float:
    return torch.linalg.matrix_norm(matrix, ord=2).item()


@settings(max_examples=60, deadline=None)
@given(
    c_out=st.integers(1, 6), c_in=st.integers(1, 6), kh=st.integers(1, 5), kw=st.integers(1, 5),
    h=st.integers(3, 9), w=st.integers(3, 9), stride=st.sampled_from([(1, 1), (2, 2), (1, 2)]),
    pads=st.tuples(*[st.integers(0, 3)] * 4), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_certified_and_tight_against_the_dense_operator(c_out, c_in, kh, kw, h, w, stride, pads, seed):
    left, right, top, bottom = pads
    if (h + top + bottom - kh) // stride[0] + 1 < 1 or (w + left + right - kw) // stride[1] + 1 < 1:
        return
    kernel = torch.randn(c_out, c_in, kh, kw, dtype=F64, generator=torch.Generator().manual_seed(seed))
    result = spectral.conv2d_norm(kernel, (h, w), padding=((top, bottom), (left, right)), stride=stride, tol=1e-3)
    truth = _norm(_operator(kernel, (h, w), pads, stride))
    assert result.method == CHOLESKY
    assert truth <= result.upper.item() <= truth * (1 + 1e-3)


@pytest.mark.parametrize("c, k, n", [(16, 3, 9), (16, 5, 8), (8, 5, 9), (1, 5, 5)])
def test_closes_the_embedding_gap_on_small_images(c, k, n):
    kernel = torch.randn(c, c, k, k, dtype=F64, generator=torch.Generator().manual_seed(c * k * n))
    truth = _norm(spectral.conv_operator_matrix(kernel, n, padding="zeros"))
    bound = spectral.conv_spectral_norm(kernel, n, padding="zeros").item()
    embedding = spectral.conv_spectral_norm(kernel, n, padding="zeros", dense=False).item()
    assert truth <= bound <= truth * (1 + 1e-3) < embedding


@settings(max_examples=25, deadline=None)
@given(log_scale=st.sampled_from([-300, -150, -40, 0, 40, 150, 300]), seed=st.integers(0, 2**16),
       shape=st.sampled_from([(3, 2, 3, 3, 6), (2, 5, 5, 5, 7), (4, 4, 3, 2, 5)]))
def test_float64_kernels_at_every_scale(log_scale, seed, shape):
    c_out, c_in, kh, kw, n = shape
    unit = torch.randn(c_out, c_in, kh, kw, dtype=F64, generator=torch.Generator().manual_seed(seed))
    kernel = unit * 10.0**log_scale
    bound = spectral.conv_spectral_norm(kernel, n, padding=1).item()
    truth = _norm(spectral.conv_operator_matrix(unit, n, padding=1))  # the norm is homogeneous
    assert math.isfinite(bound)
    assert truth * 10.0**log_scale <= bound <= truth * 10.0**log_scale * (1 + 1e-3)


@pytest.mark.parametrize("scale", [1e-44, 1e-40, 1e-20, 1.0, 1e20, 1e36])
def test_float32_kernels_from_subnormal_to_huge(scale):
    unit = torch.randn(4, 3, 3, 3, generator=torch.Generator().manual_seed(3))
    kernel = (unit.double() * scale).float()  # the weights as stored: subnormal ones are rounded
    assert torch.isfinite(kernel).all() and kernel.abs().max() > 0
    bound = spectral.conv_spectral_norm(kernel, 6, padding="zeros")
    truth = _norm(spectral.conv_operator_matrix(kernel.double(), 6, padding="zeros"))
    assert bound.dtype == torch.float32
    assert truth <= bound.item() <= truth * (1 + 1e-3) + 1e-45


def test_zero_and_one_tap_kernels():
    zero = torch.zeros(3, 2, 3, 3, dtype=F64, requires_grad=True)
    bound = spectral.conv_spectral_norm(zero, 5, padding="zeros")
    assert bound.item() == 0.0
    bound.backward()
    assert torch.equal(zero.grad, torch.zeros_like(zero))
    # a centred identity tap: the operator is the identity, every eigenvalue of G is 1
    identity = torch.zeros(4, 4, 3, 3, dtype=F64)
    identity[:, :, 1, 1] = torch.eye(4, dtype=F64)
    assert 1.0 <= spectral.conv_spectral_norm(identity, 6, padding="zeros").item() <= 1 + 1e-3


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), stride=st.sampled_from([1, 2]), wide=st.booleans())
def test_gradient_is_the_norms_gradient(seed, stride, wide):
    c_out, c_in = (1, 5) if wide else (4, 3)  # wide: the row Gram matrix T T^T is the smaller
    kernel = torch.randn(c_out, c_in, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(seed), requires_grad=True)
    bound = spectral.conv_spectral_norm(kernel, 6, padding="zeros", stride=stride, tol=1e-7)
    (grad,) = torch.autograd.grad(bound, kernel)
    exact = torch.linalg.matrix_norm(spectral.conv_operator_matrix(kernel, 6, padding="zeros", stride=stride), ord=2)
    (expected,) = torch.autograd.grad(exact, kernel)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())


def test_no_grad_and_inference_mode():
    kernel = torch.randn(3, 3, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(0), requires_grad=True)
    reference = spectral.conv_spectral_norm(kernel, 6, padding="zeros")
    with torch.no_grad():
        assert spectral.conv_spectral_norm(kernel, 6, padding="zeros").item() == reference.item()
    with torch.inference_mode():
        assert spectral.conv_spectral_norm(kernel, 6, padding="zeros").item() == reference.item()


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), factor=st.floats(0.2, 0.99999), n=st.integers(2, 40))
def test_the_certificate_never_passes_below_the_top_eigenvalue(seed, factor, n):
    """An adversarial Lanczos estimate, below the top eigenvalue: the certificate escalates its
    shift and either returns a bound above the eigenvalue or gives up, never less."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(n + 3, n, dtype=F64, generator=g)
    G = A.T @ A
    top = torch.linalg.eigvalsh(G)[-1].item()
    vector = torch.randn(n, dtype=F64, generator=g)
    with mock.patch.object(spectral, "_top_eigenpair", lambda G, tol: (top * factor, 0.0, vector)):
        found = spectral._cholesky_certified_max(G, n + 3, 1e-3)
    assert found is None or found[0] >= top


def test_large_operators_fall_back_to_the_embedding_bound():
    kernel = torch.randn(40, 40, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(0))
    result = spectral.conv2d_norm(kernel, 8, padding=1)  # Gram side 2560 > 2048
    assert result.method == "gram (certified)"
    assert result.upper.item() >= _norm(spectral.conv_operator_matrix(kernel, 8, padding=1))


def _padded_operator(kernel: torch.Tensor, size: int, pads, mode: str, stride: int) -> torch.Tensor:
    c_in = kernel.shape[1]
    n = c_in * size * size
    basis = torch.eye(n, dtype=F64).reshape(n, c_in, size, size)
    return F.conv2d(F.pad(basis, pads, mode=mode), kernel, stride=stride).reshape(n, -1).T


@settings(max_examples=60, deadline=None)
@given(
    mode=st.sampled_from(["reflect", "replicate", "circular"]), c_out=st.integers(1, 5), c_in=st.integers(1, 5),
    k=st.sampled_from([1, 2, 3, 5]), size=st.integers(4, 8), stride=st.integers(1, 2),
    pads=st.tuples(*[st.integers(0, 3)] * 4), seed=st.integers(0, 2**16),
)  # fmt: skip
def test_other_paddings_certified_and_tight(mode, c_out, c_in, k, size, stride, pads, seed):
    left, right, top, bottom = pads
    if max(pads) >= size or (size + top + bottom - k) // stride + 1 < 1 or (size + left + right - k) // stride + 1 < 1:
        return  # reflect needs pads < size; no empty outputs
    kernel = torch.randn(c_out, c_in, k, k, dtype=F64, generator=torch.Generator().manual_seed(seed))
    result = spectral.conv2d_norm(kernel, size, padding=((top, bottom), (left, right)), padding_mode=mode,
                                  stride=stride)  # fmt: skip
    truth = _norm(_padded_operator(kernel, size, pads, mode, stride))
    assert result.upper.item() >= truth
    # reflect/replicate: the certificate applies at these sizes and the smaller bound is kept, so
    # the result is tight whatever method won; circular: the DFT bound or the certificate
    if mode != "circular" or result.method in (CHOLESKY, "gram (certified)"):
        assert result.upper.item() <= truth * (1 + 1e-3)


def test_reflected_copies_that_cancel():
    """Reflect padding adds the taps that read the same pixel: with opposite taps the operator's
    entries cancel to zero while the rounding of the terms does not; the certificate's margin is
    taken from the absolute values."""
    kernel = torch.zeros(2, 2, 3, 3, dtype=F64)
    kernel[:, :, 1, 0] = torch.tensor([[1.0, 0.3], [-0.2, 0.7]], dtype=F64)
    kernel[:, :, 1, 2] = -kernel[:, :, 1, 0] * (1 + 2**-40)
    kernel[:, :, 1, 1] = 1e-8
    result = spectral.conv2d_norm(kernel, 5, padding=1, padding_mode="reflect")
    truth = _norm(_padded_operator(kernel, 5, (1, 1, 1, 1), "reflect", 1))
    assert result.method.startswith("Cholesky")
    assert truth <= result.upper.item() <= truth * (1 + 1e-3)


@pytest.mark.parametrize("mode", ["reflect", "replicate"])
def test_other_paddings_gradient_is_the_norms_gradient(mode):
    kernel = torch.randn(3, 2, 3, 3, dtype=F64, generator=torch.Generator().manual_seed(5), requires_grad=True)
    bound = spectral.conv2d_norm(kernel, 5, padding=1, padding_mode=mode, tol=1e-7).upper
    (grad,) = torch.autograd.grad(bound, kernel)
    exact = torch.linalg.matrix_norm(_padded_operator(kernel, 5, (1, 1, 1, 1), mode, 1), ord=2)
    (expected,) = torch.autograd.grad(exact, kernel)
    torch.testing.assert_close(grad, expected, rtol=1e-4, atol=1e-6 * expected.abs().max().item())
