"""Orthogonal layers (Cayley, SOC, BRO): checked against dense float64 oracles.

Oracles: the Jacobian of the layer (``torch.autograd.functional.jacobian``) and its singular
values; dense matrices built independently of the layers (the Cayley transform and the block
reflector of the unrolled circular convolution, ``scipy.linalg.expm`` of the unrolled skew
convolution); the exponential series tail in closed form (``scipy.special.gammainc``).
"""

import math

import numpy as np
import pytest
import scipy.linalg
import scipy.special
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.autograd.functional import jacobian

from stabilitylab import lipschitz
from stabilitylab.layers.orthogonal import (
    BROConv2d,
    BROLinear,
    CayleyConv2d,
    CayleyLinear,
    SOCConv2d,
    TruncatedExpConv2d,
    _exp_tail,
)
from stabilitylab.spectral import conv_operator_matrix
from stabilitylab.testing import scramble_parameters

F64 = torch.float64
CONVS = (CayleyConv2d, BROConv2d, SOCConv2d)


def jacobian_matrix(layer, x):
    """The layer's Jacobian at x (one sample), as a (outputs, inputs) matrix."""
    J = jacobian(lambda v: layer(v[None])[0].flatten(), x)
    return J.reshape(-1, x.numel())


def scramble(layer, scale, seed):
    """Whatever the parameters: multiply every weight by ``scale`` and add noise."""
    return scramble_parameters(layer, scale=scale, generator=torch.Generator().manual_seed(seed))


def circular_convolution_matrix(V, h, w):
    """Dense matrix of y[o, a] = sum_{i, b} V[o, i, a - b] x[i, b] (indices mod (h, w)), the
    convention of a DFT product: built by explicit indexing, independently of any FFT."""
    V = V.detach().numpy()
    c, d, kh, kw = V.shape
    padded = np.zeros((c, d, h, w))
    padded[:, :, :kh, :kw] = V
    a1, a2 = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    a1, a2 = a1.ravel(), a2.ravel()
    d1 = (a1[:, None] - a1[None, :]) % h
    d2 = (a2[:, None] - a2[None, :]) % w
    blocks = padded[:, :, d1, d2]  # (c, d, hw, hw)
    return blocks.transpose(0, 2, 1, 3).reshape(c * h * w, d * h * w)


# ----------------------------------------------------------------------------- dense layers


@settings(max_examples=30, deadline=None)
@given(
    cls=st.sampled_from([CayleyLinear, BROLinear]),
    n_in=st.integers(1, 7),
    n_out=st.integers(1, 7),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 10_000),
)
def test_dense_layers_have_unit_singular_values_for_any_weights(cls, n_in, n_out, scale, seed):
    torch.manual_seed(seed)
    layer = scramble(cls(n_in, n_out, dtype=F64), scale, seed)
    x = torch.randn(n_in, dtype=F64)
    s = torch.linalg.svdvals(jacobian_matrix(layer, x))
    assert s.max() <= 1 + 1e-10
    # semi-orthogonal: all min(in, out) singular values are 1 (the kept side)
    assert torch.allclose(s, torch.ones(min(n_in, n_out), dtype=F64), atol=1e-8)
    if n_out >= n_in:  # an isometry
        y = torch.randn(n_in, dtype=F64)
        assert torch.isclose(torch.linalg.vector_norm(layer(x) - layer(y)), torch.linalg.vector_norm(x - y), atol=1e-10)


@settings(max_examples=15, deadline=None)
@given(n_in=st.integers(1, 6), n_out=st.integers(1, 6), seed=st.integers(0, 10_000))
def test_cayley_linear_matches_the_dense_cayley_transform(n_in, n_out, seed):
    torch.manual_seed(seed)
    layer = CayleyLinear(n_in, n_out, dtype=F64)
    V = layer.weight.detach().numpy()
    A = V - V.T
    eye = np.eye(len(A))
    Q = (eye - A) @ np.linalg.inv(eye + A)
    assert np.allclose(Q.T @ Q, eye, atol=1e-12)
    assert np.allclose(layer.orthogonal_weight().detach().numpy(), Q[:n_out, :n_in], atol=1e-12)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 7), seed=st.integers(0, 10_000), data=st.data())
def test_bro_linear_is_the_block_reflector_symmetric_and_involutive(n, seed, data):
    rank = data.draw(st.integers(1, n))
    torch.manual_seed(seed)
    layer = BROLinear(n, n, rank=rank, dtype=F64)
    V = layer.weight.detach().numpy()
    P = V @ np.linalg.inv(V.T @ V) @ V.T
    Q = layer.orthogonal_weight().detach().numpy()
    assert np.allclose(Q, np.eye(n) - 2 * P, atol=1e-10)
    assert np.allclose(Q, Q.T, atol=1e-12) and np.allclose(Q @ Q, np.eye(n), atol=1e-10)
    # eigenvalue -1 with multiplicity rank, +1 otherwise
    assert np.allclose(np.linalg.eigvalsh(Q), [-1.0] * rank + [1.0] * (n - rank), atol=1e-8)


@pytest.mark.parametrize("scale", [1e-30, 1e-3, 1.0, 1e3, 1e30])
def test_bro_linear_with_rank_deficient_weights_stays_1_lipschitz(scale):
    torch.manual_seed(0)
    n, rank, true_rank = 8, 5, 2
    layer = BROLinear(n, n, rank=rank, dtype=F64)
    with torch.no_grad():
        layer.weight.copy_(scale * torch.randn(n, true_rank, dtype=F64) @ torch.randn(true_rank, rank, dtype=F64))
    s = torch.linalg.svdvals(jacobian_matrix(layer, torch.randn(n, dtype=F64)))
    assert s.max() <= 1 + 1e-12
    # the reflection of the 2-dimensional column space is still exact: eigenvalues -1, -1, 1, ...
    Q = layer.orthogonal_weight().detach()
    assert torch.allclose(torch.linalg.eigvalsh(Q)[:true_rank], -torch.ones(true_rank, dtype=F64), atol=1e-8)
    assert torch.allclose(Q, Q.T, atol=1e-12)
    # the gradient is defined (no NaN) even at a rank-deficient weight
    layer(torch.randn(4, n, dtype=F64)).square().sum().backward()
    assert torch.isfinite(layer.weight.grad).all()
    # a zero weight reflects nothing: the identity
    with torch.no_grad():
        layer.weight.zero_()
    assert torch.allclose(layer.orthogonal_weight(), torch.eye(n, dtype=F64))


def test_bro_linear_eps_is_a_ridge_that_only_contracts():
    torch.manual_seed(1)
    layer = BROLinear(5, 5, rank=3, eps=1e-2, dtype=F64)
    V = layer.weight.detach() / layer.weight.detach().abs().max()
    s = 1e-2 * V.square().sum()
    Q = torch.eye(5, dtype=F64) - 2 * V @ torch.linalg.solve(V.T @ V + s * torch.eye(3, dtype=F64), V.T)
    assert torch.allclose(layer.orthogonal_weight(), Q, atol=1e-12)
    eig = torch.linalg.eigvalsh(layer.orthogonal_weight().detach())
    assert eig.min() > -1 and eig.max() <= 1 + 1e-12


# ----------------------------------------------------------------------------- convolutions


def conv_config(draw_cls, data, *, max_in=3, max_out=4):
    cls = draw_cls
    stride = data.draw(st.sampled_from([1, 1, 2]))
    c_in = data.draw(st.integers(1, max_in if stride == 1 else 1))
    c_out = data.draw(st.integers(1, max_out))
    k = data.draw(st.sampled_from([1, 3]) if cls is SOCConv2d else st.integers(1, 3))
    # circular layers need the (downsampled) image at least as large as the kernel
    side = data.draw(st.sampled_from([n for n in (4, 6) if n // 2 >= k]) if stride == 2 else st.integers(max(k, 3), 6))
    return cls, c_in, c_out, k, stride, side


@settings(max_examples=40, deadline=None)
@given(cls=st.sampled_from(CONVS), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 10_000), data=st.data())
def test_convolutions_are_1_lipschitz_and_orthogonal_on_the_smaller_side(cls, scale, seed, data):
    cls, c_in, c_out, k, stride, side = conv_config(cls, data)
    torch.manual_seed(seed)
    layer = scramble(cls(c_in, c_out, k, stride, dtype=F64), scale, seed)
    x = torch.randn(c_in, side, side, dtype=F64)
    s = torch.linalg.svdvals(jacobian_matrix(layer, x))
    assert s.max() <= 1 + 1e-10
    n_out, n_in = c_out * (side // stride) ** 2, c_in * side * side
    assert len(s) == min(n_out, n_in)
    # all singular values 1 (SOC: up to its certified truncation tail, < 3e-8 by default)
    assert s.min() >= 1 - (1e-7 if cls is SOCConv2d else 1e-8)
    if n_out >= n_in:  # an isometry
        y = torch.randn(c_in, side, side, dtype=F64)
        dist = torch.linalg.vector_norm(layer(x[None]) - layer(y[None]))
        assert torch.isclose(dist, torch.linalg.vector_norm(x - y), rtol=1e-6)


@pytest.mark.parametrize("c_in, c_out, k", [(2, 2, 3), (2, 3, 2), (3, 2, 3)])
def test_cayley_conv_is_the_cayley_transform_of_the_unrolled_convolution(c_in, c_out, k):
    torch.manual_seed(0)
    h, w = 4, 5
    layer = CayleyConv2d(c_in, c_out, k, dtype=F64)
    C = circular_convolution_matrix(layer.weight, h, w)
    A = C - C.T
    eye = np.eye(len(A))
    Q = (eye - A) @ np.linalg.inv(eye + A)  # dense, n h w x n h w
    expected = Q[: c_out * h * w, : c_in * h * w]
    J = jacobian_matrix(layer, torch.randn(c_in, h, w, dtype=F64)).numpy()
    assert np.allclose(J, expected, atol=1e-10)
    blocks = layer.frequency_matrices((h, w))
    assert blocks.shape == (h, w // 2 + 1, c_out, c_in)


@pytest.mark.parametrize("c_in, c_out, rank", [(3, 3, 1), (3, 3, 2), (2, 3, 1), (3, 2, 2)])
def test_bro_conv_is_the_block_reflector_of_the_unrolled_convolution(c_in, c_out, rank):
    torch.manual_seed(0)
    h, w = 5, 4
    layer = BROConv2d(c_in, c_out, 3, rank=rank, dtype=F64)
    C = circular_convolution_matrix(layer.weight, h, w)  # (n h w, rank h w)
    Q = np.eye(len(C)) - 2 * C @ np.linalg.solve(C.T @ C, C.T)
    J = jacobian_matrix(layer, torch.randn(c_in, h, w, dtype=F64)).numpy()
    assert np.allclose(J, Q[: c_out * h * w, : c_in * h * w], atol=1e-9)
    if c_in == c_out:  # Hermitian involution at every frequency, trace n - 2 rank
        B = layer.frequency_matrices((h, w))
        eye = torch.eye(c_in, dtype=B.dtype)
        assert torch.allclose(B, B.mH, atol=1e-12) and torch.allclose(B @ B, eye.expand_as(B), atol=1e-10)
        assert torch.allclose(torch.diagonal(B, dim1=-2, dim2=-1).sum(-1).real, torch.tensor(c_in - 2.0 * rank, dtype=F64))


def test_bro_conv_with_rank_deficient_kernels_stays_1_lipschitz():
    torch.manual_seed(0)
    layer = BROConv2d(4, 4, 3, rank=3, dtype=F64)
    x = torch.randn(4, 5, 5, dtype=F64)
    with torch.no_grad():  # repeated filters: every frequency's V has rank 2 < 3
        layer.weight[:, 2] = 3 * layer.weight[:, 0]
    s = torch.linalg.svdvals(jacobian_matrix(layer, x))
    assert s.max() <= 1 + 1e-12
    # two reflected directions per frequency: 2 * 25 singular values... all still 1 (Q = I - 2P)
    assert torch.allclose(s, torch.ones_like(s), atol=1e-8)
    layer(x[None]).sum().backward()
    assert torch.isfinite(layer.weight.grad).all()
    with torch.no_grad():  # rank 0: the identity
        layer.weight.zero_()
    assert torch.allclose(layer(x[None])[0], x + layer.bias[:, None, None], atol=1e-12)
    with torch.no_grad():  # a kernel whose DFT vanishes at some frequencies (a difference filter)
        layer.weight.zero_()
        layer.weight[0, 0, 1, 1], layer.weight[0, 0, 1, 2] = 1.0, -1.0
        layer.weight[1, 1, 0, 1], layer.weight[1, 1, 1, 1] = 1.0, -1.0
    s = torch.linalg.svdvals(jacobian_matrix(layer, x))
    assert s.max() <= 1 + 1e-12


def test_soc_is_the_truncated_exponential_of_a_skew_symmetric_convolution():
    torch.manual_seed(0)
    c, h, w = 2, 5, 5
    for padding in ("same", "circular"):
        layer = scramble(SOCConv2d(c, c, 3, padding=padding, n_terms=6, dtype=F64), 10.0, 1)
        kernel, s, tail = layer.normalized_kernel((h, w))
        L = conv_operator_matrix(kernel.detach(), (h, w), padding="zeros" if padding == "same" else "circular")
        assert torch.allclose(L, -L.T, atol=1e-12)  # skew-symmetric operator
        assert torch.linalg.matrix_norm(L, ord=2) <= s + 1e-12 and s <= 1.0 + 1e-15  # certified, rescaled
        assert s >= 0.5  # the bound is not loose: the scrambled kernel needed the rescaling
        expected_tail = math.exp(s.item()) * scipy.special.gammainc(7, s.item())  # sum_{j > 6} s^j / j!
        assert expected_tail <= tail.item() <= expected_tail * (1 + 1e-9)
        J = jacobian_matrix(layer, torch.randn(c, h, w, dtype=F64))
        series = sum(torch.linalg.matrix_power(L, j) / math.factorial(j) for j in range(7)) / (1 + tail)
        assert torch.allclose(J, series, atol=1e-12)
        # close to the exact exponential, within the certified tail
        E = torch.from_numpy(scipy.linalg.expm(L.numpy()))
        assert torch.linalg.matrix_norm(J - E, ord=2) <= 2 * tail + 1e-12
        sv = torch.linalg.svdvals(J)
        assert sv.max() <= 1 + 1e-12 and sv.min() >= (1 - tail) / (1 + tail) - 1e-12


@settings(max_examples=20, deadline=None)
@given(
    n_terms=st.integers(1, 4),
    max_norm=st.floats(0.5, 8.0),
    scale=st.floats(1e-3, 1e3),
    seed=st.integers(0, 10_000),
    circular=st.booleans(),
)
def test_soc_with_few_terms_and_large_weights_never_expands(n_terms, max_norm, scale, seed, circular):
    torch.manual_seed(seed)
    layer = SOCConv2d(2, 2, 3, padding="circular" if circular else "same", n_terms=n_terms, max_norm=max_norm, dtype=F64)
    scramble(layer, scale, seed)
    s = torch.linalg.svdvals(jacobian_matrix(layer, torch.randn(2, 4, 4, dtype=F64)))
    assert s.max() <= 1 + 1e-5
    assert s.min() > 0  # contracting, not degenerate, for these norms


@settings(max_examples=20, deadline=None)
@given(s=st.floats(0.0, 8.0), n_terms=st.integers(1, 15))
def test_exp_tail_is_a_certified_upper_bound(s, n_terms):
    tail = _exp_tail(torch.tensor(s, dtype=F64), n_terms, 8.0).item()
    exact = math.exp(s) * scipy.special.gammainc(n_terms + 1, s) if s > 0 else 0.0
    assert exact <= tail * (1 + 1e-12) + 1e-300
    assert tail <= exact * (1 + 1e-9) + 1e-300


def test_soc_default_is_orthogonal_to_the_tail():
    torch.manual_seed(3)
    layer = SOCConv2d(3, 3, 3, dtype=F64)
    _, s, tail = layer.normalized_kernel(5)
    assert tail < 3e-8
    sv = torch.linalg.svdvals(jacobian_matrix(layer, torch.randn(3, 5, 5, dtype=F64)))
    assert sv.max() <= 1 + 1e-12 and sv.min() >= 1 - 2 * tail.item() - 1e-12


# ----------------------------------------------------------------------------- common behaviour


def make_layers(dtype=F64):
    return [
        (CayleyLinear(5, 4, dtype=dtype), (3, 5)),
        (BROLinear(4, 6, rank=2, dtype=dtype), (3, 4)),
        (CayleyConv2d(2, 3, 3, dtype=dtype), (2, 2, 5, 6)),
        (CayleyConv2d(2, 4, 3, stride=2, dtype=dtype), (2, 2, 6, 6)),
        (BROConv2d(3, 2, 3, dtype=dtype), (2, 3, 6, 5)),
        (BROConv2d(1, 4, 2, stride=2, bias=False, dtype=dtype), (2, 1, 4, 6)),
        (SOCConv2d(2, 3, 3, dtype=dtype), (2, 2, 5, 5)),
        (SOCConv2d(2, 5, 3, stride=2, padding="circular", dtype=dtype), (2, 2, 6, 8)),
        (SOCConv2d(3, 2, 1, bias=False, dtype=dtype), (2, 3, 4, 4)),
    ]


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (F64, 1e-10)])
def test_export_gives_plain_modules_with_the_same_outputs(dtype, tol):
    torch.manual_seed(0)
    for layer, shape in make_layers(dtype):
        x = torch.randn(shape, dtype=dtype)
        y = layer(x)
        exported = layer.export_module()  # the size of the last input
        assert not any(p.requires_grad for p in exported.parameters())
        assert torch.allclose(exported(x), y, rtol=tol, atol=tol), type(layer).__name__
        kinds = {type(m) for m in exported.modules()}
        assert kinds <= {nn.Linear, nn.Conv2d, nn.Sequential, nn.PixelUnshuffle, TruncatedExpConv2d}
        if isinstance(layer, (CayleyLinear, BROLinear)):
            assert isinstance(exported, nn.Linear)
        elif isinstance(layer, SOCConv2d):
            assert isinstance(exported, TruncatedExpConv2d)
            with pytest.raises(ValueError, match="exported for"):
                exported(torch.randn(1, shape[1], 8, 8, dtype=dtype))
        else:
            conv = exported if isinstance(exported, nn.Conv2d) else exported[-1]
            assert conv.padding_mode == "circular" and conv.exported_input_size == tuple(shape[-2:])
        # an explicit input size (no forward at that size needed)
        if not isinstance(layer, (CayleyLinear, BROLinear)):
            big = torch.randn(1, shape[1], 8, 8, dtype=dtype)
            assert torch.allclose(layer.export_module((8, 8))(big), layer(big), rtol=tol, atol=tol)


def test_export_needs_an_input_size():
    layer = BROConv2d(2, 2, 3)
    with pytest.raises(ValueError, match="input_size"):
        layer.export_module()
    with pytest.raises(ValueError, match="input_size"):
        SOCConv2d(2, 2, 3).export_module((0, 4))


def test_float32_and_float64_agree_and_stay_1_lipschitz():
    torch.manual_seed(0)
    for layer64, shape in make_layers(F64):
        layer32 = make_copy(layer64, torch.float32)
        x = torch.randn(shape, dtype=F64)
        y32, y64 = layer32(x.float()), layer64(x)
        assert y32.dtype == torch.float32
        assert torch.allclose(y32.double(), y64, atol=1e-5), type(layer64).__name__
        J = jacobian_matrix(layer32, x[0].float())
        assert torch.linalg.matrix_norm(J.double(), ord=2) <= 1 + 1e-5


def make_copy(layer, dtype):
    import copy

    return copy.deepcopy(layer).to(dtype)


def test_eval_equals_train_and_the_cache_follows_the_parameters():
    torch.manual_seed(0)
    for layer, shape in make_layers():
        x = torch.randn(shape, dtype=F64)
        y_train = layer.train()(x)
        layer.eval()
        with torch.no_grad():
            y_eval = layer(x)
            y_again = layer(x)  # cached for convolutions
        assert torch.allclose(y_eval, y_train, rtol=0, atol=1e-14) and torch.equal(y_eval, y_again)
        with torch.no_grad():  # an in-place update must invalidate any cache
            layer.weight.add_(0.3 * torch.randn_like(layer.weight))
            y_new = layer(x)
        assert not torch.allclose(y_new, y_eval)
        assert torch.allclose(y_new, layer.train()(x), rtol=0, atol=1e-14)
        layer.eval()
        with torch.no_grad():  # another input size recomputes as well
            if len(shape) == 4:
                x2 = torch.randn(1, shape[1], 8, 8, dtype=F64)
                assert torch.allclose(layer(x2), layer.train()(x2), rtol=0, atol=1e-14)


@pytest.mark.parametrize("index", range(9))
def test_one_optimizer_step_changes_the_output(index):
    torch.manual_seed(index)
    layer, shape = make_layers()[index]
    x = torch.randn(shape, dtype=F64)
    before = layer(x).detach()
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    (layer(x) - torch.randn_like(before)).square().sum().backward()
    for name, p in layer.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name
    opt.step()
    assert not torch.allclose(layer(x), before)


def test_unbatched_inputs_and_lipschitz_upper_bound_of_a_sequence():
    torch.manual_seed(0)
    conv = nn.Sequential(
        SOCConv2d(2, 4, 3, dtype=F64),
        CayleyConv2d(4, 4, 3, dtype=F64),
        BROConv2d(4, 2, 3, stride=2, dtype=F64),
        nn.Flatten(),
        CayleyLinear(2 * 3 * 3, 10, dtype=F64),
        BROLinear(10, 3, dtype=F64),
    )
    assert lipschitz.upper_bound(conv, (2, 6, 6)) <= 1
    x = torch.randn(2, 6, 6, dtype=F64)
    assert torch.allclose(conv[0](x), conv[0](x[None])[0])
    J = jacobian(lambda v: conv(v[None])[0], x).reshape(3, -1)
    assert torch.linalg.matrix_norm(J, ord=2) <= 1 + 1e-10
    dense = nn.Sequential(CayleyLinear(4, 6), BROLinear(6, 2))
    assert lipschitz.upper_bound(dense, (4,)) <= 1


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="in_features"):
        CayleyLinear(0, 3)
    with pytest.raises(TypeError, match="out_features"):
        BROLinear(3, 2.5)
    with pytest.raises(ValueError, match="rank"):
        BROLinear(3, 4, rank=5)
    with pytest.raises(ValueError, match="rank"):
        BROConv2d(3, 4, 3, rank=0)
    with pytest.raises(ValueError, match="eps"):
        BROLinear(3, 4, eps=-1.0)
    with pytest.raises(ValueError, match="eps"):
        BROConv2d(3, 4, 3, eps=float("nan"))
    with pytest.raises(ValueError, match="padding"):
        CayleyConv2d(2, 2, 3, padding="zeros")
    with pytest.raises(ValueError, match="padding"):
        BROConv2d(2, 2, 3, padding=1)
    with pytest.raises(ValueError, match="padding"):
        SOCConv2d(2, 2, 3, padding="reflect")
    with pytest.raises(ValueError, match="padding"):
        SOCConv2d(2, 2, 3, padding=0)
    with pytest.raises(ValueError, match="kernel_size"):
        SOCConv2d(2, 2, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        CayleyConv2d(2, 2, 0)
    with pytest.raises(ValueError, match="stride"):
        BROConv2d(2, 2, 3, stride=0)
    with pytest.raises(ValueError, match="n_terms"):
        SOCConv2d(2, 2, 3, n_terms=0)
    with pytest.raises(ValueError, match="max_norm"):
        SOCConv2d(2, 2, 3, max_norm=0.0)
    with pytest.raises(ValueError, match="max_norm"):
        SOCConv2d(2, 2, 3, max_norm=100.0)
    with pytest.raises(TypeError, match="bias"):
        CayleyLinear(2, 2, bias=None)
    with pytest.raises(ValueError, match=r"\(\.\.\., 3\)"):
        CayleyLinear(3, 2)(torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"x must have shape \(N, 2, H, W\)"):
        SOCConv2d(2, 2, 3)(torch.randn(1, 3, 5, 5))
    with pytest.raises(ValueError, match="divisible by the stride"):
        BROConv2d(2, 2, 1, stride=2)(torch.randn(1, 2, 5, 4))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        CayleyConv2d(2, 2, 5)(torch.randn(1, 2, 4, 4))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        SOCConv2d(1, 1, 3, stride=2, padding="circular")(torch.randn(1, 1, 6, 4))
