"""The fast paths of the orthogonal convolutions, against dense float64 oracles.

* SOCConv2d with circular padding evaluates its truncated exponential series either on the
  activations (K convolutions) or on the transfer matrices of the convolution (a matrix series
  per frequency, one product with the batch): both must be the operator
  :math:`\\sum_{j \\le K} L^j / j! / (1 + \\tau)` built densely from ``conv_operator_matrix``.
* The evaluation-mode cache: used only in evaluation mode, untraced, when no gradient with
  respect to the weight is needed; invalidated by optimizer steps, ``load_state_dict`` and a
  new image size; gradients equal those of a fresh computation.
"""

import math

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.autograd.functional import jacobian

from stabilitylab.layers.orthogonal import BROConv2d, SOCConv2d, _apply_spectral, _exp_series
from stabilitylab.spectral import conv_operator_matrix
from stabilitylab.testing import scramble_parameters

F64 = torch.float64


def scramble(layer, scale, seed):
    return scramble_parameters(layer, scale=scale, generator=torch.Generator().manual_seed(seed))


def dense_soc(layer, grid):
    """The dense matrix of the layer's linear part on the (downsampled, channel-padded) input:
    the truncated series of the unrolled circular skew convolution, divided by 1 + tau,
    restricted to the first ``out`` outputs and the first ``in * s^2`` inputs."""
    kernel, _, tail = layer._normalized(grid)
    L = conv_operator_matrix(kernel.detach(), grid, padding="circular")
    series = sum(torch.linalg.matrix_power(L, j) / math.factorial(j) for j in range(layer.n_terms + 1))
    n, (h, w) = layer.channels, grid
    series = (series / (1 + tail)).reshape(n, h, w, n, h, w)
    return series[: layer.out_channels, :, :, : layer.downsampled_channels].reshape(
        layer.out_channels * h * w, layer.downsampled_channels * h * w
    )


def basis(d, h, w):
    return torch.eye(d * h * w, dtype=F64).reshape(d * h * w, d, h, w)


def jacobian_matrix(layer, x):
    J = jacobian(lambda v: layer(v[None])[0].flatten(), x)
    return J.reshape(-1, x.numel())


# ----------------------------------------------------------------------------- SOC: both paths


@settings(max_examples=25, deadline=None)
@given(
    c_in=st.integers(1, 4),
    c_out=st.integers(1, 4),
    h=st.integers(3, 7),
    w=st.integers(3, 7),
    n_terms=st.integers(1, 5),
    scale=st.floats(0.1, 10.0),
    seed=st.integers(0, 10_000),
)
def test_soc_spectral_and_activation_paths_are_the_dense_series(c_in, c_out, h, w, n_terms, scale, seed):
    torch.manual_seed(seed)
    layer = scramble(SOCConv2d(c_in, c_out, 3, padding="circular", n_terms=n_terms, dtype=F64), scale, seed)
    grid = (h, w)
    oracle = dense_soc(layer, grid)
    e = basis(layer.downsampled_channels, h, w)
    with torch.no_grad():
        T = layer._spectral_inputs(grid)
        spectral = _apply_spectral(e, T, min(layer.out_channels, layer.channels))
        kernel, factor = layer._series_inputs(grid)
        padded = layer._pad_channels(e, layer.channels)
        direct = _exp_series(padded, kernel, n_terms, True, factor)[:, : layer.out_channels]
    for y in (spectral, direct):
        assert torch.allclose(y.reshape(len(e), -1).T, oracle, rtol=0, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), stride=st.sampled_from([1, 2]), batch=st.sampled_from([1, 64]))
def test_soc_forward_equals_the_dense_series_whichever_path_is_chosen(seed, stride, batch):
    torch.manual_seed(seed)
    layer = scramble(SOCConv2d(2, 3, 3, stride=stride, padding="circular", n_terms=3, dtype=F64), 3.0, seed)
    x = torch.randn(batch, 2, 6, 6, dtype=F64)
    grid = (6 // stride, 6 // stride)
    oracle = dense_soc(layer, grid)
    xs = torch.nn.functional.pixel_unshuffle(x, stride) if stride > 1 else x
    expected = (xs.reshape(batch, -1) @ oracle.T).reshape(batch, 3, *grid) + layer.bias[:, None, None]
    for mode in (True, False):
        layer.train(mode)
        with torch.set_grad_enabled(mode):
            assert torch.allclose(layer(x), expected, rtol=0, atol=1e-12)


def test_soc_chooses_by_the_cost_model():
    layer = SOCConv2d(64, 64, 3, padding="circular", n_terms=3)
    assert layer._use_spectrum(torch.zeros(64, 64, 16, 16))  # the benchmark's configuration
    assert not layer._use_spectrum(torch.zeros(1, 64, 64, 64))  # one image: K convolutions
    assert not SOCConv2d(64, 64, 3, n_terms=3)._use_spectrum(torch.zeros(64, 64, 16, 16))  # zero padding
    assert not layer._use_spectrum(torch.zeros(64, 64, 16, 16, dtype=torch.float16))


# ----------------------------------------------------------------------------- 1-Lipschitz, scrambled


@settings(max_examples=12, deadline=None)
@given(
    cls=st.sampled_from(["SOC", "BRO"]),
    c_in=st.integers(1, 3),
    c_out=st.integers(1, 3),
    scale=st.floats(1e-2, 1e2),
    seed=st.integers(0, 10_000),
    training=st.booleans(),
)
def test_scrambled_layers_are_1_lipschitz_in_train_and_eval(cls, c_in, c_out, scale, seed, training):
    torch.manual_seed(seed)
    if cls == "SOC":
        layer = SOCConv2d(c_in, c_out, 3, padding="circular", n_terms=2, max_norm=4.0, dtype=F64)
    else:
        layer = BROConv2d(c_in, c_out, 3, dtype=F64)
    scramble(layer, scale, seed).train(training)
    x = torch.randn(c_in, 5, 6, dtype=F64)
    s = torch.linalg.svdvals(jacobian_matrix(layer, x))
    assert s.max() <= 1 + 1e-10
    if not training:  # the cached operator (no_grad) is the same operator
        layer(x[None].expand(64, -1, -1, -1))  # the spectral path for SOC
        with torch.no_grad():
            y = layer(x[None])
        assert torch.allclose(y, layer.train()(x[None]), rtol=0, atol=1e-12)


# ----------------------------------------------------------------------------- the evaluation cache


def make(cls):
    if cls is SOCConv2d:
        return SOCConv2d(3, 3, 3, padding="circular", n_terms=4, dtype=F64)
    return BROConv2d(3, 3, 3, dtype=F64)


def fresh(layer, x):
    """The output of a copy in training mode (never cached)."""
    import copy

    return copy.deepcopy(layer).train()(x)


def test_cache_is_used_only_when_allowed_and_invalidated():
    for cls in (SOCConv2d, BROConv2d):
        torch.manual_seed(0)
        layer = make(cls)
        x = torch.randn(64, 3, 6, 6, dtype=F64)
        layer.eval()
        with torch.no_grad():
            y = layer(x)
        assert layer._cache  # filled
        value = next(iter(layer._cache.values()))[2]
        with torch.no_grad():
            assert torch.equal(layer(x), y)
        assert next(iter(layer._cache.values()))[2] is value  # reused, not recomputed
        assert torch.allclose(y, fresh(layer, x), rtol=0, atol=1e-12)
        # an optimizer step invalidates it
        opt = torch.optim.SGD(layer.parameters(), lr=0.5)
        layer.train()
        layer(x).square().sum().backward()
        opt.step()
        layer.eval()
        with torch.no_grad():
            y2 = layer(x)
        assert not torch.allclose(y2, y)
        assert torch.allclose(y2, fresh(layer, x), rtol=0, atol=1e-12)
        # load_state_dict invalidates it
        other = make(cls)
        scramble(other, 2.0, 5)
        layer.load_state_dict(other.state_dict())
        with torch.no_grad():
            assert torch.allclose(layer(x), fresh(other, x), rtol=0, atol=1e-12)
        # a new image size
        x8 = torch.randn(64, 3, 8, 7, dtype=F64)
        with torch.no_grad():
            assert torch.allclose(layer(x8), fresh(layer, x8), rtol=0, atol=1e-12)
        # training mode never uses (and clears) it
        layer.train()
        layer(x)
        assert layer._cache is None


def test_cache_is_bypassed_when_the_weight_needs_a_gradient():
    for cls in (SOCConv2d, BROConv2d):
        torch.manual_seed(1)
        layer = make(cls).eval()
        x = torch.randn(64, 3, 6, 6, dtype=F64)
        with torch.no_grad():
            layer(x)  # fill the cache
        probe = torch.randn_like(layer(x))
        (layer(x) * probe).sum().backward()  # eval, grad mode on, weight requires grad
        grads = [p.grad.clone() for p in layer.parameters()]
        twin = make(cls)
        twin.load_state_dict(layer.state_dict())
        (twin.train()(x) * probe).sum().backward()
        for g, p in zip(grads, twin.parameters()):
            assert torch.allclose(g, p.grad, rtol=1e-10, atol=1e-12)


def test_cache_passes_input_gradients_with_a_frozen_weight():
    for cls in (SOCConv2d, BROConv2d):
        torch.manual_seed(2)
        layer = make(cls).eval().requires_grad_(False)
        x = torch.randn(64, 3, 6, 6, dtype=F64, requires_grad=True)
        with torch.no_grad():
            layer(x)
        cached = dict(layer._cache)
        probe = torch.randn(64, 3, 6, 6, dtype=F64)
        (layer(x) * probe).sum().backward()
        assert {k: v[2] for k, v in layer._cache.items()}.keys() == cached.keys()
        assert all(layer._cache[k][2] is cached[k][2] for k in cached)  # the cache served it
        x2 = x.detach().clone().requires_grad_(True)
        twin = make(cls)
        twin.load_state_dict(layer.state_dict())
        (twin.train()(x2) * probe).sum().backward()
        assert torch.allclose(x.grad, x2.grad, rtol=0, atol=1e-12)


def test_float32_and_float64_agree():
    for cls in (SOCConv2d, BROConv2d):
        torch.manual_seed(3)
        layer = make(cls)
        x = torch.randn(64, 3, 6, 6, dtype=F64)
        y64 = layer(x)
        y32 = layer.float()(x.float())
        assert torch.allclose(y32.double(), y64, atol=1e-4)
