"""The names and conventions of lipschitz, spectral and certify (issue 12, items 10, 11, 12, 16, 18).

Renamed arguments keep working with a DeprecationWarning and give the same numbers; results are
NamedTuples that still unpack; the Jacobian tools give the same values under no_grad and
inference_mode; every submodule's mode is restored; the convolution algebra lives in spectral.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab import certify, layers, lipschitz, models, spectral

D = torch.float64


def _grad_modes():
    return [torch.no_grad, torch.inference_mode]


def _small_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 6), nn.Tanh(), nn.Linear(6, 3)).double()


# ----------------------------------------------------------------------------- renames (item 16)


def test_n_steps_is_renamed_n_iter_with_the_same_result():
    model = _small_model()
    x = torch.randn(5, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    new = lipschitz.lower_bound(model, x, n_iter=4, generator=torch.Generator().manual_seed(1))
    with pytest.warns(DeprecationWarning, match="n_steps"):
        old = lipschitz.lower_bound(model, x, n_steps=4, generator=torch.Generator().manual_seed(1))
    assert torch.equal(new, old)
    with pytest.warns(DeprecationWarning, match="n_steps"):
        old_report = lipschitz.report(model, x, n_steps=2, generator=torch.Generator().manual_seed(1))
    assert old_report.upper == lipschitz.report(model, x, n_iter=2, generator=torch.Generator().manual_seed(1)).upper
    with pytest.raises(TypeError, match="n_iter"):
        lipschitz.lower_bound(model, x, n_iter=2, n_steps=2)


def test_check_soundness_n_steps_alias():
    model = _small_model().float().eval()
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        y = model(x).argmax(1)
    with pytest.warns(DeprecationWarning, match="n_steps"):
        old = certify.check_soundness(model, x, y, n_steps=3, restarts=0, progress=False)
    new = certify.check_soundness(model, x, y, n_iter=3, restarts=0, progress=False)
    assert old.sound and new.sound and torch.equal(old.radii, new.radii)


def test_layer_bound_upper_and_deprecated_bound():
    layer = nn.Linear(3, 2).double()
    (row,) = lipschitz.layer_bounds(layer, (3,))
    sigma = torch.linalg.matrix_norm(layer.weight.detach(), 2).item()
    assert sigma <= row.upper <= sigma * (1 + 1e-3)
    assert "bound" not in {f.name for f in __import__("dataclasses").fields(row)}
    with pytest.warns(DeprecationWarning, match="upper"):
        assert row.bound == row.upper


def test_report_input_shape_defaults_to_the_batch_shape_and_must_agree():
    model = _small_model()
    x = torch.randn(4, 3, dtype=D, generator=torch.Generator().manual_seed(2))
    a = lipschitz.report(model, x, n_iter=0)
    b = lipschitz.report(model, x, (3,), n_iter=0)
    assert a.upper == b.upper and a.lower == b.lower
    assert [r.input_shape for r in a.layers] == [(3,), (6,), (6,)]
    with pytest.raises(ValueError, match="input_shape"):
        lipschitz.report(model, x, (4,))


def test_certified_radius_input_shape_is_a_count_or_a_shape():
    z = torch.tensor([[2.0, 0.0], [0.0, 1.0]], dtype=D)
    y = torch.tensor([0, 1])
    r2 = certify.certified_radius(z, y)
    for shape in (12, (12,), (3, 4), (1, 3, 2, 2), torch.Size([3, 4])):
        torch.testing.assert_close(certify.certified_radius(z, y, norm="linf", input_shape=shape), r2 / math.sqrt(12))
    with pytest.warns(DeprecationWarning, match="input_dim"):
        old = certify.certified_radius(z, y, norm="linf", input_dim=12)
    torch.testing.assert_close(old, r2 / math.sqrt(12))


def test_certified_accuracy_scalar_float_and_curve_tensor():
    model = _small_model().eval()
    x = torch.randn(30, 3, dtype=D, generator=torch.Generator().manual_seed(3))
    y = torch.randint(0, 3, (30,), generator=torch.Generator().manual_seed(4))
    radii = certify.certified_radii(model, (x, y), progress=False)
    grid = [0.0, 0.05, 0.2]
    for eps in (0.05, torch.tensor(0.05)):
        value = certify.certified_accuracy(model, (x, y), eps, progress=False)
        assert type(value) is float and value == pytest.approx((radii > 0.05).double().mean().item())
    curve = certify.certified_accuracy_curve(model, (x, y), grid, progress=False)
    assert curve.shape == (3,) and curve.dtype == D
    torch.testing.assert_close(curve, torch.stack([(radii > e).double().mean() for e in grid]))
    with pytest.warns(DeprecationWarning, match="certified_accuracy_curve"):
        old = certify.certified_accuracy(model, (x, y), grid, progress=False)
    torch.testing.assert_close(old, curve)
    with pytest.raises(TypeError, match="eps_values"):
        certify.certified_accuracy_curve(model, (x, y), 0.1)


def test_power_and_gram_iteration_return_named_tuples():
    W = torch.randn(6, 4, dtype=D, generator=torch.Generator().manual_seed(0))
    result = spectral.power_iteration(W, n_iter=50, return_vector=True, generator=torch.Generator().manual_seed(0))
    assert isinstance(result, spectral.PowerIteration)
    estimate, vector = result  # still unpacks
    assert estimate is result.estimate and vector is result.vector
    assert torch.linalg.vector_norm(W @ vector).item() == pytest.approx(estimate.item(), rel=1e-12)
    bounds = spectral.gram_iteration(W, tol=1e-6, return_lower=True)
    assert isinstance(bounds, spectral.GramBounds)
    upper, lower = bounds
    sigma = torch.linalg.matrix_norm(W, 2).item()
    assert bounds.lower.item() <= sigma <= bounds.upper.item() and upper is bounds.upper and lower is bounds.lower


# ----------------------------------------------------------------------------- no_grad (item 10)


@pytest.mark.parametrize("mode", _grad_modes(), ids=["no_grad", "inference_mode"])
def test_jacobian_tools_give_the_same_values_under_no_grad_and_inference_mode(mode):
    torch.manual_seed(0)
    blocks = nn.Sequential(layers.SpectralLinear(4, 4), layers.GroupSort(2), layers.SpectralLinear(4, 4)).double()
    x = torch.randn(6, 4, dtype=D, generator=torch.Generator().manual_seed(1))
    sv = lipschitz.jacobian_singular_values(blocks, x[0])
    norms = lipschitz.backward_gradient_norms(blocks, x, generator=torch.Generator().manual_seed(2))
    with mode():
        xi = x.clone()  # created inside: an inference tensor under inference_mode
        sv_inside = lipschitz.jacobian_singular_values(blocks, xi[0])
        norms_inside = lipschitz.backward_gradient_norms(blocks, xi, generator=torch.Generator().manual_seed(2))
    torch.testing.assert_close(sv_inside, sv, rtol=0, atol=0)
    torch.testing.assert_close(norms_inside, norms, rtol=0, atol=0)
    assert sv.max().item() <= 1 + 1e-9  # 1-Lipschitz blocks


# ----------------------------------------------------------------------------- modes (item 12)


def _mixed_modes_model():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 3))
    model.train()
    model[1].eval()  # a deliberately frozen BatchNorm
    return model


def test_every_submodule_mode_is_restored():
    model = _mixed_modes_model()
    before = [m.training for m in model.modules()]
    x = torch.randn(10, 3, generator=torch.Generator().manual_seed(0))
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(1))
    certify.certified_radii(model, (x, y), progress=False)
    assert [m.training for m in model.modules()] == before
    certify.check_soundness(model, x, y, n_iter=2, restarts=0, progress=False)
    assert [m.training for m in model.modules()] == before
    lipschitz.lower_bound(model, x, n_iter=1)
    assert [m.training for m in model.modules()] == before


def test_progress_none_honours_tqdm_disable(monkeypatch, capsys):
    model = _small_model().eval()
    x = torch.randn(4, 3, dtype=D)
    y = torch.zeros(4, dtype=torch.long)
    monkeypatch.setenv("TQDM_DISABLE", "1")
    certify.certified_radii(model, (x, y), batch_size=1)
    assert "certifying" not in capsys.readouterr().err
    monkeypatch.delenv("TQDM_DISABLE")
    certify.certified_radii(model, (x, y), batch_size=1, progress=None)
    assert "certifying" in capsys.readouterr().err


# ----------------------------------------------------------------------------- structure (item 18)


def _conv(seed, mode, padding, stride, dilation, groups):
    g = torch.Generator().manual_seed(seed)
    conv = nn.Conv2d(2 * groups, 2 * groups, 3, padding=padding, padding_mode=mode, stride=stride,
                     dilation=dilation, groups=groups).double()  # fmt: skip
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g, dtype=D))
    return conv


def _operator_norm(conv, size):
    x = torch.zeros(1, conv.in_channels, size, size, dtype=D)
    J = torch.autograd.functional.jacobian(lambda z: conv(z).reshape(-1), x)
    return torch.linalg.matrix_norm(J.reshape(J.shape[0], -1), ord=2).item()


@settings(max_examples=30, deadline=None, derandomize=True)
@given(
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["zeros", "circular", "reflect", "replicate"]),
    padding=st.sampled_from([0, 1, 2, (1, 0)]),
    stride=st.sampled_from([1, 2]),
    dilation=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2]),
    size=st.integers(5, 7),
)
def test_conv2d_module_norm_is_the_certified_bound_lipschitz_uses(seed, mode, padding, stride, dilation, groups, size):
    conv = _conv(seed, mode, padding, stride, dilation, groups)
    try:
        conv(torch.zeros(1, conv.in_channels, size, size, dtype=D))
    except (RuntimeError, ValueError, NotImplementedError):
        return  # a combination torch refuses
    result = spectral.conv2d_module_norm(conv, size)
    assert isinstance(result, spectral.ConvNorm) and result.upper.dtype == D
    truth = _operator_norm(conv, size)
    assert result.upper.item() >= truth * (1 - 1e-9)
    (row,) = lipschitz.layer_bounds(conv, (conv.in_channels, size, size))
    assert row.upper == result.upper.item() and row.method == result.method
    # the functional form with torch's padding semantics agrees
    same = spectral.conv2d_norm(conv.weight, (size, size), padding=conv.padding, padding_mode=mode, stride=stride,
                                dilation=dilation, groups=groups)  # fmt: skip
    assert same.upper.item() == result.upper.item()


def test_conv2d_module_norm_is_differentiable_and_asymmetric_padding():
    conv = nn.Conv2d(1, 2, 3, padding="same").double()
    result = spectral.conv2d_module_norm(conv, 6)
    result.upper.backward()
    assert conv.weight.grad is not None and bool(torch.isfinite(conv.weight.grad).all())
    kernel = torch.randn(1, 1, 2, 2, dtype=D, generator=torch.Generator().manual_seed(0))
    explicit = spectral.conv2d_norm(kernel, 5, padding=((0, 1), (1, 0)))
    x = torch.zeros(1, 1, 5, 5, dtype=D)
    J = torch.autograd.functional.jacobian(
        lambda z: torch.nn.functional.conv2d(torch.nn.functional.pad(z, (1, 0, 0, 1)), kernel).reshape(-1), x
    )
    assert explicit.upper.item() >= torch.linalg.matrix_norm(J.reshape(J.shape[0], -1), 2).item() * (1 - 1e-12)


def test_kernel_autocorrelation_is_the_kernel_of_k_star_k():
    kernel = torch.randn(3, 2, 3, 3, dtype=D, generator=torch.Generator().manual_seed(0))
    auto = spectral.kernel_autocorrelation(kernel)
    assert auto.shape == (2, 2, 5, 5)
    # offset 0: the Gram matrix of the input channels' filters
    centre = auto[:, :, 2, 2]
    flat = kernel.transpose(0, 1).reshape(2, -1)
    torch.testing.assert_close(centre, flat @ flat.T)
    # circular convolution on an 8x8 grid: K^T K has the autocorrelation as its kernel
    K = spectral.conv_operator_matrix(kernel, 8, padding="circular")
    G = spectral.conv_operator_matrix(auto, 8, padding="circular")
    torch.testing.assert_close(K.T @ K, G)


def test_certify_imports_no_private_helper_of_another_module():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(certify))
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and not node.module.startswith("stabilitylab._"):
            assert all(not alias.name.startswith("_") for alias in node.names), node.module
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in (
            "lip", "lipschitz", "attacks", "spectral", "train"
        ):
            assert not node.attr.startswith("_"), f"{node.value.id}.{node.attr}"
