"""Every layer traces: torch.compile(fullgraph=True), torch.export and meta tensors (issue 12, item 14).

A traced layer must compute the same function as the eager one (float64, to rounding) and stay
1-Lipschitz (Jacobian singular values of the compiled / exported graph); NaN parameters, which
the traced forward no longer checks, are refused by ``check_parameters()``, ``export_module()``
and an evaluation-mode forward.
"""

import copy
import inspect

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab import layers, spectral
from stabilitylab.layers import _bounds
from stabilitylab.testing import scramble_parameters

F64 = torch.float64


def _exported_cpl():
    torch.manual_seed(0)
    layer = layers.CPLConv2d(2, inner_channels=3, input_size=5, dtype=F64)
    return layer.export_module()


def _exported_soc():
    torch.manual_seed(0)
    return layers.SOCConv2d(2, 3, 3, dtype=F64).export_module((6, 6))


# name -> (factory of a float64 layer, input shape without the batch dimension)
CASES = {
    "GroupSort": (lambda: layers.GroupSort(3), (6, 2)),
    "MaxMin": (lambda: layers.MaxMin(), (4, 3, 3)),
    "Householder": (lambda: layers.Householder(4, dtype=F64), (4, 3, 3)),
    "SpectralLinear": (lambda: layers.SpectralLinear(5, 4, dtype=F64), (5,)),
    "BjorckLinear": (lambda: layers.BjorckLinear(4, 5, n_iter=8, dtype=F64), (4,)),
    "SpectralConv2d": (lambda: layers.SpectralConv2d(2, 3, 3, dtype=F64), (2, 5, 5)),
    "SpectralConv2d-circular-stride2": (
        lambda: layers.SpectralConv2d(2, 3, 3, stride=2, padding_mode="circular", dtype=F64), (2, 6, 6)),
    "AOLLinear": (lambda: layers.AOLLinear(5, 4, dtype=F64), (5,)),
    "AOLConv2d": (lambda: layers.AOLConv2d(2, 3, 3, dtype=F64), (2, 5, 5)),
    "SLLLinear": (lambda: layers.SLLLinear(5, inner_features=3, dtype=F64), (5,)),
    "SLLConv2d": (lambda: layers.SLLConv2d(2, inner_channels=3, dtype=F64), (2, 5, 5)),
    "CPLLinear": (lambda: layers.CPLLinear(5, inner_features=3, dtype=F64), (5,)),
    "CPLConv2d": (lambda: layers.CPLConv2d(2, inner_channels=3, dtype=F64), (2, 5, 5)),
    "CPLConv2d-circular": (lambda: layers.CPLConv2d(2, padding_mode="circular", dtype=F64), (2, 4, 4)),
    "ExportedResidual": (_exported_cpl, (2, 5, 5)),
    "CayleyLinear": (lambda: layers.CayleyLinear(5, 4, dtype=F64), (5,)),
    "CayleyConv2d": (lambda: layers.CayleyConv2d(2, 3, 3, dtype=F64), (2, 4, 4)),
    "SOCConv2d": (lambda: layers.SOCConv2d(2, 3, 3, dtype=F64), (2, 5, 5)),
    "SOCConv2d-circular-stride2": (
        lambda: layers.SOCConv2d(2, 3, 3, stride=2, padding="circular", dtype=F64), (2, 6, 6)),
    "TruncatedExpConv2d": (_exported_soc, (2, 6, 6)),
    "BROLinear": (lambda: layers.BROLinear(4, 6, dtype=F64), (4,)),
    "BROConv2d": (lambda: layers.BROConv2d(2, 2, 3, dtype=F64), (2, 4, 4)),
    "ScaledAvgPool2d": (lambda: layers.ScaledAvgPool2d(2), (2, 4, 4)),
    "L2NormPool2d": (lambda: layers.L2NormPool2d(3, stride=2, padding=1), (2, 5, 5)),
    "GlobalL2NormPool2d": (lambda: layers.GlobalL2NormPool2d(), (3, 3, 3)),
    "InvertibleDownsampling": (lambda: layers.InvertibleDownsampling(2), (2, 4, 4)),
    "LLNLinear": (lambda: layers.LLNLinear(5, 3, dtype=F64), (5,)),
}
LIPSCHITZ_ONE = [name for name in CASES if name != "LLNLinear"]  # LLN declares ||W|| instead


def test_the_cases_cover_every_layer_of_the_package():
    classes = {name for name in layers.__all__ if inspect.isclass(getattr(layers, name))}
    covered = {type(factory()).__name__ for factory, _ in CASES.values()}
    assert classes <= covered, classes - covered


def _layer(name, seed=0):
    factory, shape = CASES[name]
    torch.manual_seed(seed)
    layer = factory()
    if not isinstance(layer, (layers.ExportedResidual, layers.TruncatedExpConv2d)):
        scramble_parameters(layer, scale=1.0, noise=0.3, generator=torch.Generator().manual_seed(seed))
    x = torch.randn(3, *shape, dtype=F64, generator=torch.Generator().manual_seed(seed + 1))
    return layer, x


def _jacobian_norm(fn, x):
    """The largest singular value of the Jacobian of a batched map at x: the maps here act on
    each sample alone, so the batch Jacobian is block diagonal and its norm is the largest of
    the samples' norms."""
    J = torch.autograd.functional.jacobian(fn, x)
    return torch.linalg.matrix_norm(J.reshape(fn(x).numel(), x.numel()), ord=2).item()


@pytest.mark.parametrize("name", list(CASES))
def test_compiled_layer_equals_eager_and_stays_1_lipschitz(name):
    layer, x = _layer(name)
    expected = layer(x).detach()
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    assert torch.allclose(compiled(x), expected, rtol=1e-12, atol=1e-12)
    if name in LIPSCHITZ_ONE:
        assert _jacobian_norm(compiled, x) <= 1 + 1e-9
    layer.eval()  # evaluation mode without autograd: the eager layers cache, the graph must not
    with torch.no_grad():
        assert torch.allclose(compiled(x), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_exported_program_equals_eager_and_stays_1_lipschitz(name):
    layer, x = _layer(name, seed=1)
    expected = layer(x).detach()
    program = torch.export.export(layer, (x,))
    module = program.module()
    assert torch.allclose(module(x), expected, rtol=1e-12, atol=1e-12)
    if name in LIPSCHITZ_ONE:
        assert _jacobian_norm(module, x) <= 1 + 1e-9
    y = x + 0.5 * torch.randn_like(x)
    with torch.no_grad():  # the program is the layer's function at other points too
        assert torch.allclose(module(y), layer(y), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", list(CASES))
def test_forward_on_meta_tensors_gives_the_output_shape(name):
    layer, x = _layer(name, seed=2)
    expected = layer(x)
    meta = copy.deepcopy(layer).to("meta")
    for mode in (True, False):
        y = meta.train(mode)(x.to("meta"))
        assert y.device.type == "meta" and y.shape == expected.shape and y.dtype == expected.dtype


def test_inductor_compiles_a_small_layer_to_the_same_function():
    torch.manual_seed(0)
    layer = layers.SpectralLinear(4, 3, dtype=F64)
    scramble_parameters(layer, noise=0.5, generator=torch.Generator().manual_seed(0))
    x = torch.randn(6, 4, dtype=F64)
    torch._dynamo.reset()
    compiled = torch.compile(layer, fullgraph=True)
    assert torch.allclose(compiled(x), layer(x), rtol=1e-12, atol=1e-12)
    weight = compiled.normalized_weight().detach()
    assert torch.linalg.matrix_norm(weight, ord=2) <= 1


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(1e-3, 1e3), circular=st.booleans())
def test_compiled_conv_layers_follow_parameter_updates(seed, scale, circular):
    """The graph reads the parameters at every call: after an optimizer-like in-place update the
    compiled layer computes the new function, still 1-Lipschitz."""
    torch.manual_seed(seed)
    layer = layers.SpectralConv2d(2, 2, 3, padding_mode="circular" if circular else "zeros", dtype=F64)
    compiled = torch.compile(layer, fullgraph=True, backend="aot_eager")
    x = torch.randn(2, 2, 5, 5, dtype=F64)
    compiled(x)
    with torch.no_grad():
        layer.weight.mul_(scale).add_(torch.randn_like(layer.weight))
    assert torch.allclose(compiled(x), layer(x), rtol=1e-12, atol=1e-12)
    K = layer.normalized_weight(5).detach()
    M = spectral.conv_operator_matrix(K, 5, padding="circular" if circular else "zeros")
    assert torch.linalg.matrix_norm(M, ord=2) <= 1


# ----------------------------------------------------------------------------- NaN parameters


PARAMETRIC = [name for name in CASES if list(CASES[name][0]().parameters())
              and name not in ("LLNLinear", "ExportedResidual")]


@pytest.mark.parametrize("name", PARAMETRIC)
def test_a_nan_parameter_is_refused_outside_the_traced_forward(name):
    layer, x = _layer(name, seed=3)
    pname, p = next(iter(layer.named_parameters()))
    with torch.no_grad():
        p.view(-1)[0] = float("nan")
    with pytest.raises(ValueError, match=pname):
        layer.check_parameters()
    with pytest.raises(ValueError, match=pname):
        layers.export(nn.Sequential(layer))
    with pytest.raises(ValueError, match=pname):
        layer.eval()(x)
    with pytest.raises(ValueError, match=pname), torch.no_grad():
        layer(x)
    finite, _ = _layer(name, seed=3)
    assert finite.check_parameters() is finite


# ----------------------------------------------------------------------------- the traceable bounds


@settings(max_examples=30, deadline=None)
@given(m=st.integers(1, 9), n=st.integers(1, 9), n_iter=st.integers(0, 8), log_scale=st.floats(-30, 30),
       dtype=st.sampled_from([torch.float32, F64]), seed=st.integers(0, 2**16))
def test_gram_bound_is_gram_iteration_bit_for_bit(m, n, n_iter, log_scale, dtype, seed):
    W = torch.randn(m, n, dtype=dtype, generator=torch.Generator().manual_seed(seed)) * 10.0**log_scale
    bound = _bounds.gram_bound(W, n_iter)
    assert torch.equal(bound, spectral.gram_iteration(W, n_iter=n_iter))
    assert bound.item() >= torch.linalg.matrix_norm(W.double(), ord=2).item()


@settings(max_examples=25, deadline=None)
@given(c_out=st.integers(1, 3), c_in=st.integers(1, 3), k=st.sampled_from([1, 3]), stride=st.integers(1, 2),
       size=st.integers(3, 6), n_iter=st.integers(1, 7), circular=st.booleans(), seed=st.integers(0, 2**16))
def test_conv_bound_is_certified_against_the_dense_operator(c_out, c_in, k, stride, size, n_iter, circular, seed):
    kernel = torch.randn(c_out, c_in, k, k, dtype=F64, generator=torch.Generator().manual_seed(seed))
    pad = (k // 2, k // 2)
    if circular:
        size = size - size % stride
        size += stride if size < k else 0  # a circular image holds the kernel
    bound = _bounds.conv_bound(kernel, (size, size), padding_mode="circular" if circular else "zeros",
                               padding=pad, stride=(stride, stride), n_iter=n_iter)
    M = spectral.conv_operator_matrix(kernel, size, padding="circular" if circular else pad, stride=stride)
    norm = torch.linalg.matrix_norm(M, ord=2).item()
    assert bound.item() >= norm
    if circular:  # the number of the checked public function with a fixed step count (to rounding)
        reference = spectral.conv_spectral_norm(kernel, size, padding="circular", stride=stride, tol=None, n_iter=n_iter)
        assert torch.allclose(bound, reference, rtol=1e-12, atol=0)
    else:  # one grid of the public function's three: never below its minimum (to rounding)
        reference = spectral.conv_spectral_norm(kernel, size, padding=pad, stride=stride, tol=None, n_iter=n_iter)
        assert bound.item() >= reference.item() * (1 - 1e-12)
