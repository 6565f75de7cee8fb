"""1-Lipschitz layers: their Jacobians' singular values never exceed 1, whatever the parameters."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab import layers


@settings(max_examples=30, deadline=None)
@given(groups=st.integers(1, 4), group_size=st.integers(2, 4), seed=st.integers(0, 10_000))
def test_groupsort_is_a_permutation_with_orthogonal_jacobian(groups, group_size, seed):
    x = torch.randn(1, groups * group_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    layer = layers.GroupSort(group_size)
    y = layer(x)
    assert torch.equal(y.sort().values, x.sort().values)  # a permutation of the inputs
    blocks = y.reshape(groups, group_size)
    assert torch.all(blocks[:, :-1] >= blocks[:, 1:])  # descending within every group
    J = torch.autograd.functional.jacobian(lambda v: layer(v.reshape(1, -1)).flatten(), x.flatten())
    assert torch.allclose(torch.linalg.svdvals(J), torch.ones(x.numel(), dtype=torch.float64))


def test_maxmin_equals_groupsort_of_two_and_works_on_feature_maps():
    x = torch.randn(3, 6, 4, 5)
    assert torch.equal(layers.MaxMin()(x), layers.GroupSort(2)(x))
    y = layers.MaxMin()(x)
    assert torch.equal(y[:, 0], torch.maximum(x[:, 0], x[:, 1]))
    assert torch.equal(y[:, 1], torch.minimum(x[:, 0], x[:, 1]))


def test_groupsort_rejects_bad_sizes():
    with pytest.raises(ValueError, match="group_size"):
        layers.GroupSort(1)
    with pytest.raises(ValueError, match="divisible"):
        layers.GroupSort(4)(torch.randn(2, 6))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 12), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 10_000))
def test_spectral_linear_is_1_lipschitz_for_any_weights(m, n, scale, seed):
    torch.manual_seed(seed)
    layer = layers.SpectralLinear(n, m).double()
    with torch.no_grad():
        layer.weight.mul_(scale).add_(torch.randn_like(layer.weight))
    top = torch.linalg.matrix_norm(layer.normalized_weight(), ord=2).item()
    assert top <= 1 + 1e-12
    assert top >= 0.6  # the bound is tight enough that the layer is not needlessly contracting
    layer.eval()
    assert torch.allclose(layer.normalized_weight(), layer.train().normalized_weight())


def test_spectral_linear_trains():
    torch.manual_seed(0)
    layer = layers.SpectralLinear(4, 3)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, target = torch.randn(32, 4), torch.randn(32, 3) * 0.1
    before = torch.nn.functional.mse_loss(layer(x), target).item()
    for _ in range(50):
        opt.zero_grad()
        torch.nn.functional.mse_loss(layer(x), target).backward()
        opt.step()
    assert torch.nn.functional.mse_loss(layer(x), target).item() < before


def test_lipschitz_mlp_is_1_lipschitz_at_every_point():
    from stabilitylab import models

    torch.manual_seed(0)
    net = models.lipschitz_mlp(5, 3, hidden=(8, 6)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(10)  # whatever the weights
    for _ in range(20):
        x = torch.randn(5, dtype=torch.float64)
        J = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x)
        assert torch.linalg.matrix_norm(J, ord=2) <= 1 + 1e-12
    with pytest.raises(ValueError, match="group_size"):
        models.lipschitz_mlp(5, 3, hidden=(7,))


# ----------------------------------------------------------------------------- part A: every layer

import math  # noqa: E402

from torch import nn  # noqa: E402

from stabilitylab import lipschitz  # noqa: E402
from stabilitylab.spectral import conv_operator_matrix  # noqa: E402
from stabilitylab.testing import scramble_parameters  # noqa: E402

F64 = torch.float64

# name -> (factory, input shape without the batch dimension, has parameters)
LAYERS = {
    "SpectralLinear": (lambda: layers.SpectralLinear(5, 4), (5,), True),
    "BjorckLinear": (lambda: layers.BjorckLinear(5, 4, n_iter=6), (5,), True),
    "BjorckLinear-order2": (lambda: layers.BjorckLinear(4, 6, n_iter=4, order=2), (4,), True),
    "SpectralConv2d-zeros": (lambda: layers.SpectralConv2d(2, 3, 3), (2, 5, 5), True),
    "SpectralConv2d-circular-stride2": (
        lambda: layers.SpectralConv2d(2, 3, 3, stride=2, padding_mode="circular"), (2, 6, 6), True),
    "AOLLinear": (lambda: layers.AOLLinear(5, 4), (5,), True),
    "AOLConv2d-zeros": (lambda: layers.AOLConv2d(2, 3, 3), (2, 5, 5), True),
    "AOLConv2d-circular": (lambda: layers.AOLConv2d(3, 2, 3, padding_mode="circular"), (3, 4, 4), True),
    "AOLConv2d-stride2-pad0": (lambda: layers.AOLConv2d(2, 3, 3, stride=2, padding=0), (2, 6, 6), True),
    "SLLLinear": (lambda: layers.SLLLinear(5, inner_features=7), (5,), True),
    "SLLConv2d-zeros": (lambda: layers.SLLConv2d(2, inner_channels=3), (2, 5, 5), True),
    "SLLConv2d-circular": (lambda: layers.SLLConv2d(2, 2, 3, padding_mode="circular"), (2, 4, 4), True),
    "CPLLinear": (lambda: layers.CPLLinear(5, inner_features=3), (5,), True),
    "CPLConv2d-zeros": (lambda: layers.CPLConv2d(2, inner_channels=3), (2, 5, 5), True),
    "CPLConv2d-circular": (lambda: layers.CPLConv2d(2, kernel_size=3, padding_mode="circular"), (2, 4, 4), True),
    "Householder": (lambda: layers.Householder(4), (4, 3, 3), True),
    "Householder-group3": (lambda: layers.Householder(6, group_size=3), (6,), True),
    "ScaledAvgPool2d": (lambda: layers.ScaledAvgPool2d(2), (2, 4, 4), False),
    "ScaledAvgPool2d-overlap": (lambda: layers.ScaledAvgPool2d(3, stride=1, padding=1), (2, 4, 4), False),
    "L2NormPool2d": (lambda: layers.L2NormPool2d(2), (2, 4, 4), False),
    "L2NormPool2d-overlap": (lambda: layers.L2NormPool2d(3, stride=2), (2, 5, 5), False),
    "GlobalL2NormPool2d": (lambda: layers.GlobalL2NormPool2d(), (3, 3, 3), False),
    "InvertibleDownsampling": (lambda: layers.InvertibleDownsampling(2), (2, 4, 4), False),
}
PARAMETRIC = [name for name, (_, _, has) in LAYERS.items() if has]


def _make(name, dtype=F64, seed=0):
    torch.manual_seed(seed)
    factory, shape, _ = LAYERS[name]
    return factory().to(dtype), shape


def _scramble(layer, scale, seed):
    return scramble_parameters(layer, scale=scale, generator=torch.Generator().manual_seed(seed))


def _jacobian(layer, x):
    return torch.autograd.functional.jacobian(lambda v: layer(v.reshape(1, *x.shape)).flatten(), x.flatten())


@pytest.mark.parametrize("name", list(LAYERS))
@settings(max_examples=6, deadline=None)
@given(log_scale=st.floats(-3, 3), seed=st.integers(0, 10_000))
def test_every_layer_is_1_lipschitz_for_scrambled_parameters(name, log_scale, seed):
    layer, shape = _make(name, seed=seed)
    _scramble(layer, 10.0**log_scale, seed)
    x = torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    J = _jacobian(layer, x)
    assert torch.isfinite(J).all()
    assert torch.linalg.svdvals(J).max() <= 1 + 1e-5
    y = x + 0.3 * torch.randn(shape, dtype=F64, generator=torch.Generator().manual_seed(seed + 2))
    with torch.no_grad():  # a finite difference, not only the Jacobian (kinks of ReLU, norms)
        assert torch.linalg.vector_norm(layer(y[None]) - layer(x[None])) <= (1 + 1e-9) * torch.linalg.vector_norm(y - x)


@pytest.mark.parametrize("name", list(LAYERS))
def test_every_layer_runs_in_float32_and_float64_and_eval_equals_train(name):
    layer64, shape = _make(name, F64)
    layer32, _ = _make(name, torch.float32)
    x = torch.randn(3, *shape, dtype=F64)
    y64 = layer64(x)
    y32 = layer32(x.float())
    assert y32.dtype == torch.float32 and y64.dtype == F64
    assert torch.allclose(y32.double(), y64, atol=1e-4, rtol=1e-4)
    assert torch.equal(layer64.eval()(x), y64)
    assert getattr(layer64, "lipschitz_constant") == 1.0


@pytest.mark.parametrize("name", PARAMETRIC)
def test_every_parametric_layer_trains(name):
    layer, shape = _make(name, torch.float32)
    x = torch.randn(8, *shape)
    before = layer(x).detach()
    loss = layer(x).square().sum() + layer(x).sum()
    loss.backward()
    grads = [p.grad for p in layer.parameters() if p.requires_grad]
    assert grads and all(g is not None and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)
    torch.optim.SGD(layer.parameters(), lr=0.1).step()
    assert not torch.allclose(layer(x).detach(), before)


def test_upper_bound_of_sequences_of_layers_is_at_most_one():
    torch.manual_seed(0)
    dense = nn.Sequential(
        layers.AOLLinear(6, 6), layers.Householder(6), layers.SLLLinear(6), layers.MaxMin(),
        layers.CPLLinear(6), layers.BjorckLinear(6, 4), layers.SpectralLinear(4, 4),
    )
    assert lipschitz.upper_bound(dense, (6,)) <= 1.0
    conv = nn.Sequential(
        layers.AOLConv2d(2, 4, 3), layers.SLLConv2d(4), layers.CPLConv2d(4), layers.SpectralConv2d(4, 4, 3),
        layers.Householder(4), layers.L2NormPool2d(2), layers.InvertibleDownsampling(1),
        layers.ScaledAvgPool2d(2), layers.GlobalL2NormPool2d(),
    )
    assert lipschitz.upper_bound(conv, (2, 8, 8)) <= 1.0


# ----------------------------------------------------------------------------- dense layers


@settings(max_examples=12, deadline=None)
@given(m=st.integers(1, 9), n=st.integers(1, 9), seed=st.integers(0, 10_000), order=st.integers(1, 3))
def test_bjorck_converges_to_orthonormal_and_never_exceeds_one(m, n, seed, order):
    torch.manual_seed(seed)
    layer = layers.BjorckLinear(n, m, n_iter=25, order=order).double()
    with torch.no_grad():
        layer.weight.add_(0.3 * torch.randn_like(layer.weight))  # well conditioned
    s = torch.linalg.svdvals(layer.normalized_weight())
    assert torch.all(s <= 1 + 1e-12)
    assert torch.all(s >= 1 - 1e-4)
    if m >= n:  # an isometry: distances preserved
        x, y = torch.randn(2, n, dtype=F64)
        assert math.isclose(torch.dist(layer(x), layer(y)).item(), torch.dist(x, y).item(), rel_tol=1e-6)
    few = layers.BjorckLinear(n, m, n_iter=1).double()  # ill conditioned, too few steps: contracting
    with torch.no_grad():
        few.weight.copy_(torch.randn(m, n, dtype=F64) * torch.logspace(-3, 3, n, dtype=F64))
    assert torch.linalg.matrix_norm(few.normalized_weight(), ord=2) <= 1 + 1e-12


def test_bjorck_step_matches_the_closed_form_on_singular_values():
    # one order-1 step maps every singular value s to s (3 - s^2) / 2, singular vectors unchanged
    from stabilitylab.layers.dense import bjorck_orthonormalize

    U, _ = torch.linalg.qr(torch.randn(5, 5, dtype=F64))
    V, _ = torch.linalg.qr(torch.randn(3, 3, dtype=F64))
    s = torch.tensor([0.9, 0.5, 0.1], dtype=F64)
    W = U[:, :3] @ torch.diag(s) @ V.T
    out = bjorck_orthonormalize(W, n_iter=1, order=1)
    assert torch.allclose(out, U[:, :3] @ torch.diag(s * (3 - s**2) / 2) @ V.T, atol=1e-14)
    out2 = bjorck_orthonormalize(W.T, n_iter=1, order=2)  # wide matrix, order 2: s (15 - 10 s^2 + 3 s^4) / 8
    assert torch.allclose(out2, V @ torch.diag(s * (15 - 10 * s**2 + 3 * s**4) / 8) @ U[:, :3].T, atol=1e-14)


@pytest.mark.parametrize("padding_mode, stride, size", [("zeros", 1, 5), ("zeros", 2, 6), ("circular", 1, 5), ("circular", 2, 6)])
def test_spectral_conv_is_normalized_by_the_operator_norm(padding_mode, stride, size):
    torch.manual_seed(stride)
    layer = layers.SpectralConv2d(2, 3, 3, stride=stride, padding_mode=padding_mode).double()
    x = torch.randn(1, 2, size, size, dtype=F64)
    y = layer(x)
    kernel = layer.normalized_weight((size, size))
    mode = "circular" if padding_mode == "circular" else 1
    M = conv_operator_matrix(kernel, size, padding=mode, stride=stride)  # dense oracle
    assert torch.allclose(M @ x.flatten(), (y - layer.bias[:, None, None]).flatten(), atol=1e-12)
    top = torch.linalg.matrix_norm(M, ord=2).item()
    assert top <= 1 + 1e-9
    assert top >= 0.85  # the certified bound is close to the norm of this operator
    with pytest.raises(ValueError, match="input_size"):
        layers.SpectralConv2d(2, 3, 3, input_size=5)(torch.randn(1, 2, 6, 6))


# ----------------------------------------------------------------------------- AOL


def test_aol_leaves_orthogonal_weights_unchanged_and_bounds_dense_operators():
    torch.manual_seed(0)
    layer = layers.AOLLinear(4, 6).double()  # orthonormal columns at initialization
    assert torch.allclose(layer.normalized_weight(), layer.weight, atol=1e-12)  # D = I
    W = torch.randn(7, 5, dtype=F64)
    with torch.no_grad():
        layer = layers.AOLLinear(5, 7).double()
        layer.weight.copy_(W)
    d = 1 / torch.sqrt((W.T @ W).abs().sum(dim=1))  # Theorem 1, written out
    assert torch.allclose(layer.normalized_weight(), W * d, atol=1e-14)
    assert torch.linalg.matrix_norm(W * d, ord=2) <= 1


@settings(max_examples=15, deadline=None)
@given(size=st.integers(1, 7), k=st.sampled_from([1, 2, 3, 5]), stride=st.integers(1, 2), seed=st.integers(0, 10_000))
def test_aol_conv_operator_norm_is_at_most_one_on_every_size(size, k, stride, seed):
    torch.manual_seed(seed)
    layer = layers.AOLConv2d(2, 3, k, stride=stride, padding=k // 2).double()
    with torch.no_grad():
        layer.weight.normal_()
    M = conv_operator_matrix(layer.normalized_weight(), size, padding=(k // 2, k // 2), stride=stride)
    assert torch.linalg.matrix_norm(M, ord=2) <= 1 + 1e-12


# ----------------------------------------------------------------------------- SLL / CPL


@pytest.mark.parametrize("name", ["SLLLinear", "SLLConv2d-zeros", "SLLConv2d-circular", "CPLLinear", "CPLConv2d-zeros"])
def test_residual_layers_have_symmetric_jacobians_with_spectrum_in_minus_one_one(name):
    # J = I - 2 W Delta W^T: symmetric iff the transposed convolution is the exact adjoint
    layer, shape = _make(name, seed=3)
    _scramble(layer, 2.0, 3)
    x = torch.randn(shape, dtype=F64)
    J = _jacobian(layer, x)
    assert torch.allclose(J, J.T, atol=1e-12)
    eig = torch.linalg.eigvalsh(J)
    assert eig.min() >= -1 - 1e-9 and eig.max() <= 1 + 1e-9


def test_sll_t_matches_its_formula_and_survives_zero_and_huge_parameters():
    torch.manual_seed(0)
    layer = layers.SLLLinear(4, inner_features=3).double()
    with torch.no_grad():
        layer.log_q.copy_(torch.tensor([0.5, -1.0, 2.0]))
    G = (layer.weight @ layer.weight.T).abs()
    q = layer.log_q.exp()
    T = (G * q[None, :] / q[:, None]).sum(dim=1)
    assert torch.allclose(layer.inverse_t(), 1 / T, rtol=1e-12)
    with torch.no_grad():
        layer.weight[1].zero_()
        layer.log_q.copy_(torch.tensor([800.0, -900.0, 0.0]))
    x = torch.randn(5, 4, dtype=F64)
    assert torch.isfinite(layer(x)).all()


def test_cpl_uses_a_certified_bound():
    torch.manual_seed(0)
    layer = layers.CPLLinear(6, inner_features=4).double()
    norm = torch.linalg.matrix_norm(layer.weight, ord=2)
    assert torch.all(layer.inverse_t() <= 1 / norm**2 * (1 + 1e-12))
    conv = layers.CPLConv2d(2, inner_channels=3).double()
    x = torch.randn(1, 2, 5, 5, dtype=F64)
    conv(x)
    exact = torch.linalg.matrix_norm(conv_operator_matrix(conv.weight.detach(), 5, padding=1), ord=2)
    assert exact <= conv.bound(5) * (1 + 1e-12)


def test_residual_layers_reject_size_changes():
    with pytest.raises(ValueError, match="out_features"):
        layers.SLLLinear(4, 5)
    with pytest.raises(ValueError, match="out_channels"):
        layers.CPLConv2d(4, 5)
    with pytest.raises(ValueError, match="stride"):
        layers.SLLConv2d(4, 4, 3, 2)
    with pytest.raises(ValueError, match="kernel_size"):
        layers.SLLConv2d(4, 4, 2)
    with pytest.raises(ValueError, match="padding"):
        layers.SLLConv2d(4, 4, 3, 1, 0)


# ----------------------------------------------------------------------------- activations, pooling


@settings(max_examples=15, deadline=None)
@given(group=st.integers(2, 4), seed=st.integers(0, 10_000))
def test_householder_is_orthogonal_and_generalizes_maxmin(group, seed):
    torch.manual_seed(seed)
    layer = layers.Householder(2 * group, group_size=group).double()
    x = torch.randn(2, 2 * group, 3, dtype=F64)
    if group == 2:
        assert torch.allclose(layer(x), layers.MaxMin()(x), atol=1e-14)  # the initialization
    with torch.no_grad():
        layer.v.normal_()
    J = _jacobian(layer, x[0])
    assert torch.allclose(torch.linalg.svdvals(J), torch.ones(x[0].numel(), dtype=F64), atol=1e-12)
    v = layer.unit_vectors()[0]
    z = x[0, :group, 0]
    expected = z if v @ z > 0 else z - 2 * v * (v @ z)  # the two pieces, written out
    assert torch.allclose(layer(x[:1])[0, :group, 0], expected, atol=1e-14)


def test_pooling_layers_against_explicit_formulas():
    x = torch.randn(2, 3, 4, 6, dtype=F64)
    windows = x.reshape(2, 3, 2, 2, 3, 2).permute(0, 1, 2, 4, 3, 5)  # 2x2 blocks
    assert torch.allclose(layers.L2NormPool2d(2)(x), windows.square().sum(dim=(-2, -1)).sqrt())
    assert torch.allclose(layers.ScaledAvgPool2d(2)(x), windows.sum(dim=(-2, -1)) / 2)
    assert torch.allclose(layers.GlobalL2NormPool2d()(x), x.square().sum(dim=(-2, -1)).sqrt())
    assert layers.GlobalL2NormPool2d(keepdim=True)(x).shape == (2, 3, 1, 1)
    down = layers.InvertibleDownsampling(2)
    assert torch.equal(down.inverse(down(x)), x)
    y = torch.randn_like(x)
    assert math.isclose(torch.dist(down(x), down(y)).item(), torch.dist(x, y).item(), rel_tol=1e-12)
    with pytest.raises(ValueError, match="divisible"):
        down(torch.randn(1, 1, 3, 4))


@pytest.mark.parametrize("k, stride, padding, tight", [(2, None, 0, True), (3, None, 1, True), (3, 1, 1, False), (4, 2, 1, False)])
def test_scaled_avg_pool_norm_is_one_without_overlap(k, stride, padding, tight):
    pool = layers.ScaledAvgPool2d(k, stride=stride, padding=padding)
    x = torch.zeros(1, 1, 6, 6, dtype=F64)
    J = _jacobian(pool, x[0])  # the pool is linear: its Jacobian is its matrix
    top = torch.linalg.svdvals(J).max().item()
    assert top <= 1 + 1e-12
    if tight:
        assert math.isclose(top, 1.0, rel_tol=1e-12)
    else:  # the constant 1/sqrt(m M) is not far from the norm
        assert top >= 0.5


def test_layer_arguments_are_checked():
    cases = [
        (lambda: layers.BjorckLinear(3, 3, n_iter=-1), "n_iter"),
        (lambda: layers.BjorckLinear(3, 3, order=0), "order"),
        (lambda: layers.SpectralConv2d(2, 2, 3, padding_mode="reflect"), "padding_mode"),
        (lambda: layers.SpectralConv2d(2, 2, 2, padding_mode="circular"), "circular"),
        (lambda: layers.SpectralConv2d(2, 2, 3, padding=3), "padding"),
        (lambda: layers.SpectralConv2d(2, 2, 3, tol=2), "tol"),
        (lambda: layers.AOLConv2d(2, 2, 3, padding=2, padding_mode="circular"), "circular"),
        (lambda: layers.AOLLinear(0, 3), "in_features"),
        (lambda: layers.SLLLinear(3, inner_features=0), "inner_features"),
        (lambda: layers.Householder(5), "divisible"),
        (lambda: layers.Householder(4, group_size=1), "group_size"),
        (lambda: layers.ScaledAvgPool2d(0), "kernel_size"),
        (lambda: layers.L2NormPool2d(2, padding=2), "padding"),
        (lambda: layers.InvertibleDownsampling(0), "factor"),
        (lambda: layers.LLNLinear(3, 2, tol=0), "tol"),
    ]
    for build, word in cases:
        with pytest.raises(ValueError, match=word):
            build()
    with pytest.raises(ValueError, match="Householder"):
        layers.Householder(4)(torch.randn(2, 6))


# ----------------------------------------------------------------------------- last-layer normalization


@settings(max_examples=15, deadline=None)
@given(c=st.integers(1, 10), d=st.integers(1, 6), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 10_000))
def test_lln_has_unit_rows_and_declares_its_spectral_norm(c, d, scale, seed):
    torch.manual_seed(seed)
    layer = layers.LLNLinear(d, c).double()
    with torch.no_grad():
        layer.weight.mul_(scale)
    W = layer.normalized_weight()
    assert torch.allclose(torch.linalg.vector_norm(W, dim=1), torch.ones(c, dtype=F64))
    exact = torch.linalg.matrix_norm(W, ord=2).item()
    constant = layer.lipschitz_constant
    assert isinstance(constant, float)
    assert exact <= constant <= exact * (1 + 1e-3)
    assert 1 - 1e-12 <= exact <= math.sqrt(c) + 1e-12
    assert torch.allclose(layer.pairwise_lipschitz(), torch.cdist(W, W), atol=1e-12)
    assert lipschitz.upper_bound(nn.Sequential(layer), (d,)) == pytest.approx(constant)
    x = torch.randn(d, dtype=F64)
    J = _jacobian(layer, x)
    assert torch.linalg.svdvals(J).max() <= constant


def test_lln_constant_is_sqrt_c_for_identical_rows():
    layer = layers.LLNLinear(3, 4).double()
    with torch.no_grad():
        layer.weight.copy_(torch.tensor([1.0, 2.0, 2.0], dtype=F64).expand(4, 3) * torch.tensor([[1.0], [2.0], [3.0], [4.0]], dtype=F64))
    assert layer.lipschitz_constant == pytest.approx(2.0, rel=1e-6)
    assert torch.all(layer.pairwise_lipschitz() <= 1e-12)
