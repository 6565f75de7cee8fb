"""SpectralConv2d / CPLConv2d: the cached certified bound is never stale, and the gradient that flows
through it is the gradient of the convolution's norm (dense float64 oracle)."""

from __future__ import annotations

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab import layers, spectral
from stabilitylab.layers import _bounds

F64 = torch.float64


def _operator_norm(layer, size: int) -> float:
    """The norm of the linear map the layer applies (bias removed), from its Jacobian."""
    x = torch.zeros(1, layer.in_channels, size, size, dtype=F64)
    with torch.no_grad():
        J = torch.autograd.functional.jacobian(lambda v: layer(v) - layer(torch.zeros_like(v)), x)
    return torch.linalg.matrix_norm(J.reshape(-1, x.numel()), ord=2).item()


BUILDERS = {
    "spectral-zeros": lambda: layers.SpectralConv2d(3, 2, 3, dtype=F64),
    "spectral-circular-stride2": lambda: layers.SpectralConv2d(2, 3, 3, stride=2, padding_mode="circular", dtype=F64),
    "cpl": lambda: layers.CPLConv2d(3, dtype=F64),
}


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_changed_weights_are_seen_through_every_path(name):
    layer = BUILDERS[name]().eval()
    x = torch.randn(2, layer.in_channels, 6, 6, dtype=F64)
    with torch.no_grad():
        layer(x)
    cache = layer.__dict__["_bound_cache"]
    first = cache.state[0].clone()
    # an in-place update (version bump), then a change through .data (no version bump)
    for change in (lambda w: w.mul_(3.0), lambda w: w.data.mul_(0.5)):
        with torch.no_grad():
            change(layer.weight)
        expected = _bounds.conv_bound(layer.weight, (6, 6), padding_mode=layer.padding_mode,
                                      padding=layer.padding, stride=getattr(layer, "stride", (1, 1))
                                      if name != "cpl" else (1, 1), n_iter=layer.n_iter)
        with torch.no_grad():
            layer(x)
        assert torch.allclose(cache.state[0], expected, rtol=1e-12)
        assert not torch.equal(cache.state[0], first)
        first = cache.state[0].clone()
        assert _operator_norm(layer, 6) <= 1 + 1e-12
    # load_state_dict of other weights, then another image size
    other = BUILDERS[name]()
    layer.load_state_dict(other.state_dict())
    assert _operator_norm(layer, 6) <= 1 + 1e-12
    assert _operator_norm(layer, 8) <= 1 + 1e-12


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(sorted(BUILDERS)), seed=st.integers(0, 2**16), train=st.booleans())
def test_gradient_through_the_bound_is_the_gradient_of_the_norm(name, seed, train):
    torch.manual_seed(seed)
    layer = BUILDERS[name]().train(train)
    size = 6
    fast = layer.bound(size)
    (g_fast,) = torch.autograd.grad(fast, layer.weight)
    stride = (1, 1) if name == "cpl" else layer.stride
    grid = _bounds.conv_grid((size, size), layer.kernel_size, layer.padding_mode, layer.padding, stride)
    weight = layer.weight.detach().clone().requires_grad_(True)
    matrix = spectral.conv_operator_matrix(weight, (grid[0] * stride[0], grid[1] * stride[1]),
                                           padding="circular", stride=stride)  # the bounded operator
    exact = torch.linalg.matrix_norm(matrix, ord=2)
    (g_exact,) = torch.autograd.grad(exact, weight)
    assert fast.item() >= exact.item()
    assert torch.allclose(g_fast, g_exact * fast.detach() / exact.detach(), rtol=1e-5, atol=1e-8)
    # a second call with the same weights reuses the bound and gives the same value and gradient
    again = layer.bound(size)
    (g_again,) = torch.autograd.grad(again, layer.weight)
    assert torch.equal(again, fast) and torch.allclose(g_again, g_fast, rtol=1e-12, atol=0)


def test_deepcopy_and_zero_weight():
    layer = layers.SpectralConv2d(2, 2, 3, dtype=F64)
    x = torch.randn(1, 2, 5, 5, dtype=F64, requires_grad=True)
    layer(x).sum().backward()
    twin = copy.deepcopy(layer)
    with torch.no_grad():
        twin.weight.zero_()
    assert torch.equal(twin(x), twin.bias.view(1, -1, 1, 1).expand(1, 2, 5, 5))
    assert _operator_norm(layer, 5) <= 1 + 1e-12
