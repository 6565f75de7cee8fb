"""Guarantees at the seams of `lipschitz` and the layers it trusts (issue 12, items 1, 2, 3, 8, 10).

Every test asserts the mathematical property: a certified bound is at least the Lipschitz
constant the network attains (largest Jacobian spectral norm from a dense float64 Jacobian at
random points, or a difference quotient), a layer that declares 1 is 1-Lipschitz, or the call
is refused with a ValueError/TypeError naming the offending module or argument.
"""

from __future__ import annotations

import copy
import math
import types

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab import certify, layers, lipschitz, models

F64 = torch.float64


# ----------------------------------------------------------------------------- oracles


def measured_lipschitz(model: nn.Module, input_shape, *, n_points: int = 6, seed: int = 0, scale: float = 1.0) -> float:
    """Largest Jacobian spectral norm of a float64 copy of ``model`` at random points (dense
    Jacobian, exact SVD): a value the network's Lipschitz constant attains (a lower bound)."""
    f = copy.deepcopy(model).to(F64).eval()
    generator = torch.Generator().manual_seed(seed)
    best = 0.0
    for _ in range(n_points):
        x = scale * torch.randn(tuple(input_shape), generator=generator, dtype=F64)
        best = max(best, lipschitz.jacobian_singular_values(f, x)[0].item())
    return best


def assert_sound_or_refused(model: nn.Module, input_shape, module_name: str, **kwargs) -> None:
    """Either ``upper_bound`` refuses with a TypeError/ValueError that names the module, or its
    bound is at least the attained constant."""
    measured = measured_lipschitz(model, input_shape, **kwargs)
    try:
        bound = lipschitz.upper_bound(model, input_shape).item()
    except (TypeError, ValueError) as error:
        assert module_name in str(error)
        return
    assert bound >= measured * (1 - 1e-9), (bound, measured)


# ----------------------------------------------------------------------------- item 1: hooks


def _mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    where=st.sampled_from(["0", "1", "2", ""]),
    kind=st.sampled_from(["forward", "pre"]),
    factor=st.sampled_from([1000.0, 3.0, -7.0]),
)
def test_hooked_modules_are_refused_or_bounded(seed, where, kind, factor):
    model = _mlp(seed)
    target = model.get_submodule(where)
    if kind == "forward":
        target.register_forward_hook(lambda module, args, out: out * factor)
    else:
        target.register_forward_pre_hook(lambda module, args: (args[0] * factor,))
    assert_sound_or_refused(model, (4,), repr(where) if where else "(model)", scale=1e-3)


def test_hook_inside_a_declared_layer_is_refused_or_bounded():
    torch.manual_seed(1)
    residual = layers.export(nn.Sequential(layers.SLLLinear(4)))
    residual[0].outer.register_forward_hook(lambda module, args, out: -out * 50)
    assert_sound_or_refused(residual, (4,), "0.outer")


@pytest.mark.parametrize("target", ["0", "2", ""])
def test_instance_forward_override_is_refused_or_bounded(target):
    model = _mlp(2)
    module = model.get_submodule(target)
    # bound to the instance, so that the float64 copy of the oracle carries it too
    module.forward = types.MethodType(lambda self, x: 1000.0 * type(self).forward(self, x), module)
    assert_sound_or_refused(model, (4,), repr(target) if target else "(model)", scale=1e-3)


def test_global_forward_hooks_are_refused_or_bounded():
    from torch.nn.modules.module import register_module_forward_hook, register_module_forward_pre_hook

    model = _mlp(3)
    for register, hook in (
        (register_module_forward_hook, lambda module, args, out: out * 10),
        (register_module_forward_pre_hook, lambda module, args: tuple(2 * a for a in args)),
    ):
        handle = register(hook)
        try:
            measured = measured_lipschitz(model, (4,))
            try:
                bound = lipschitz.upper_bound(model, (4,)).item()
            except TypeError as error:
                assert "model" in str(error) and "hook" in str(error)
            else:
                assert bound >= measured
        finally:
            handle.remove()
    assert lipschitz.upper_bound(model, (4,)).item() >= measured_lipschitz(model, (4,)) * (1 - 1e-9)


def test_removed_hooks_leave_the_bound_available():
    model = _mlp(4)
    handle = model[0].register_forward_hook(lambda module, args, out: out * 1000)
    handle.remove()
    assert lipschitz.upper_bound(model, (4,)).item() >= measured_lipschitz(model, (4,)) * (1 - 1e-9)


# ----------------------------------------------------------------------------- item 10: no_grad / inference_mode


def _grad_modes():
    return [torch.no_grad, torch.inference_mode]


@pytest.mark.parametrize("mode", _grad_modes(), ids=["no_grad", "inference_mode"])
@pytest.mark.parametrize(
    "build",
    [
        lambda: models.cnn(1, 3, input_size=8, channels=(2, 3), hidden=6, pool="avg"),
        lambda: nn.Sequential(nn.Conv2d(1, 2, 3), nn.AdaptiveAvgPool2d(3), nn.Flatten(), nn.Linear(18, 2)),
        lambda: nn.Sequential(nn.Flatten(), nn.Linear(64, 5), nn.SiLU(), nn.Linear(5, 5), nn.Mish(),
                              nn.Linear(5, 5), nn.GELU(approximate="tanh"), nn.Linear(5, 2)),
    ],
    ids=["cnn-avg", "adaptive-avg", "smooth-activations"],
)
def test_bounds_work_under_no_grad_and_inference_mode(build, mode):
    lipschitz._numeric_constant.cache_clear()  # the numerical constants differentiate once, here
    torch.manual_seed(5)
    model = build().eval()
    shape = (1, 8, 8)
    with mode():
        bound = lipschitz.upper_bound(model, shape).item()
        rows = lipschitz.layer_bounds(model, shape)
        x = torch.randn(4, *shape)
        lower = lipschitz.lower_bound(model, x, n_iter=3).item()
        table = lipschitz.report(model, x, shape, n_iter=2)
    assert math.isclose(math.prod(row.upper for row in rows), bound)
    measured = measured_lipschitz(model, shape)
    assert bound >= measured * (1 - 1e-9)
    assert 0 < lower <= bound * (1 + 1e-9)
    assert table.upper == pytest.approx(bound) and 0 < table.lower <= bound * (1 + 1e-9)
    for row in table.layers:
        assert row.lower <= row.upper * (1 + 1e-6)


@pytest.mark.parametrize("mode", _grad_modes(), ids=["no_grad", "inference_mode"])
def test_certified_radii_with_computed_constant_on_avg_pool_cnn(mode):
    torch.manual_seed(6)
    model = models.cnn(1, 3, input_size=8, channels=(2,), hidden=6, pool="avg").eval()
    x, y = torch.randn(10, 1, 8, 8), torch.randint(0, 3, (10,))
    with mode():
        radii = certify.certified_radii(model, (x, y))
        accuracy = certify.certified_accuracy(model, (x, y), 0.0)
    L = lipschitz.upper_bound(model, (1, 8, 8))
    assert torch.allclose(radii, certify.certified_radii(model, (x, y), lipschitz=L))
    assert 0.0 <= float(accuracy) <= 1.0
    # a certified radius is a radius: no point within it changes the prediction (Lipschitz margin)
    with torch.no_grad():
        logits = model(x)
    margins = logits.gather(1, y[:, None])[:, 0] - logits.scatter(1, y[:, None], -math.inf).max(1).values
    assert torch.all(radii <= torch.clamp(margins, min=0) / (math.sqrt(2) * L.item()) * (1 + 1e-5) + 1e-12)


# ----------------------------------------------------------------------------- item 2: activation constants

_EPS32 = torch.finfo(torch.float32).eps


def _activation_is_sound_or_refused(module: nn.Module) -> None:
    """Either a ValueError naming the module's class, or for all pairs on a float64 grid (plus
    pairs straddling Softplus's switch to the identity):
    |f(a) - f(b)| <= c |a - b| (1 + 1e-9) + tol, tol the documented Softplus jump allowance."""
    module = module.to(F64)
    t = torch.linspace(-12, 12, 240_001, dtype=F64)
    tol = 0.0
    if isinstance(module, nn.Softplus):
        switch = module.threshold / module.beta
        t = torch.cat([t, torch.tensor([switch - 1e-7, switch + 1e-7], dtype=F64)]).sort().values
        tol = _EPS32 * abs(switch)
    try:
        constant, _ = lipschitz.activation_constant(module)
    except ValueError as error:
        assert type(module).__name__ in str(error)
        return
    assert math.isfinite(constant)
    with torch.no_grad():
        y = module(t)
    assert torch.isfinite(y).all()
    excess = (y[1:] - y[:-1]).abs() - constant * (t[1:] - t[:-1]) * (1 + 1e-9)
    assert excess.max().item() <= tol, (module, constant, excess.max().item())


_finite = st.floats(-3, 3, allow_nan=False).filter(lambda v: abs(v) > 1e-3)


@settings(max_examples=40, deadline=None)
@given(
    st.one_of(
        st.builds(
            lambda b, th: nn.Softplus(beta=b, threshold=th),
            _finite,
            st.sampled_from([-5.0, 0.0, 1.0, 5.0, 12.0, 20.0, 30.0]),
        ),
        st.builds(lambda a: nn.CELU(alpha=a), _finite),
        st.builds(lambda a: nn.ELU(alpha=a), st.one_of(_finite, st.just(math.nan), st.just(math.inf))),
        st.builds(lambda a: nn.LeakyReLU(a), st.one_of(_finite, st.just(math.nan))),
        st.builds(lambda a: nn.PReLU(1, init=a), st.one_of(_finite, st.just(math.nan))),
        st.builds(lambda a: nn.Hardtanh(-1.0, a), st.one_of(st.floats(0, 3), st.just(math.nan))),
    )
)
def test_activation_constants_are_sound_or_refused(module):
    _activation_is_sound_or_refused(module)


@pytest.mark.parametrize(
    "module",
    [nn.Softplus(threshold=1.0), nn.Softplus(threshold=0.0), nn.Softplus(threshold=-5.0), nn.CELU(alpha=-1.0),
     nn.ELU(alpha=math.nan), nn.LeakyReLU(math.nan), nn.PReLU(2, init=math.nan)],
    ids=["softplus-1", "softplus-0", "softplus--5", "celu--1", "elu-nan", "leaky-nan", "prelu-nan"],
)
def test_discontinuous_unbounded_or_nan_activations_are_refused_in_a_network(module):
    model = nn.Sequential(nn.Linear(2, 2), module, nn.Linear(2, 2))
    with pytest.raises(ValueError, match="'1'"):
        lipschitz.upper_bound(model, (2,))


@pytest.mark.parametrize("bad", ["nan-var", "negative-var", "nan-weight", "inf-mean"])
def test_batchnorm_with_invalid_statistics_is_refused(bad):
    bn = nn.BatchNorm1d(3).eval()
    with torch.no_grad():
        if bad == "nan-var":
            bn.running_var[1] = math.nan
        elif bad == "negative-var":
            bn.running_var[2] = -4.0
        elif bad == "nan-weight":
            bn.weight[0] = math.nan
        else:
            bn.running_mean[0] = math.inf
    model = nn.Sequential(nn.Linear(3, 3), bn)
    with pytest.raises(ValueError, match="'1'"):
        lipschitz.upper_bound(model, (3,))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 2**16), low=st.floats(-1e-3, 1.0))
def test_batchnorm_bound_is_sound_or_refused(seed, low):
    torch.manual_seed(seed)
    bn = nn.BatchNorm1d(4).eval()
    with torch.no_grad():
        bn.running_var.uniform_(low, 2.0)
        bn.weight.normal_()
    assert_sound_or_refused(nn.Sequential(nn.Linear(3, 4), bn), (3,), "'1'")


def test_nan_weights_anywhere_are_refused():
    model = nn.Sequential(nn.Linear(3, 3), nn.ReLU(), layers.SpectralLinear(3, 2))
    with torch.no_grad():
        model[2].weight[0, 0] = math.nan
    with pytest.raises(ValueError, match="'2'"):
        lipschitz.upper_bound(model, (3,))
    model = nn.Sequential(nn.Linear(3, 3))
    with torch.no_grad():
        model[0].bias[0] = math.nan
    with pytest.raises(ValueError, match="'0'"):
        lipschitz.upper_bound(model, (3,))


# ----------------------------------------------------------------------------- item 8: stale caches


def _served_operator(layer: nn.Module, shape) -> torch.Tensor:
    """The linear part of the map the layer serves in eval mode without autograd (where it
    caches), as a dense matrix: columns f(e_i) - f(0)."""
    n = math.prod(shape)
    with torch.no_grad():
        basis = torch.eye(n, dtype=F64).reshape(n, *shape)
        zero = layer(torch.zeros(1, *shape, dtype=F64))
        return (layer(basis) - zero).reshape(n, -1).T


_ORTHOGONAL_CONVS = {
    "cayley": lambda: layers.CayleyConv2d(2, 2, 3, dtype=F64),
    "bro": lambda: layers.BROConv2d(2, 3, 3, dtype=F64),
    "soc": lambda: layers.SOCConv2d(2, 2, 3, dtype=F64),
    "soc-circular": lambda: layers.SOCConv2d(2, 2, 3, padding="circular", dtype=F64),
}


@settings(max_examples=12, deadline=None)
@given(name=st.sampled_from(sorted(_ORTHOGONAL_CONVS)), seed=st.integers(0, 2**16), size=st.floats(0.05, 2.0),
       how=st.sampled_from(["data", "no_grad", "copy_"]))
def test_cached_eval_operator_follows_in_place_updates(name, seed, size, how):
    torch.manual_seed(seed)
    layer = _ORTHOGONAL_CONVS[name]().eval()
    shape = (2, 6, 6)
    _served_operator(layer, shape)  # fills the evaluation-mode cache
    update = size * torch.randn(layer.weight.shape, dtype=F64)
    if how == "data":
        layer.weight.data.add_(update)
    elif how == "no_grad":
        with torch.no_grad():
            layer.weight.add_(update)
    else:
        layer.weight.data.copy_(layer.weight.detach() + update)
    served = _served_operator(layer, shape)
    x = torch.randn(3, *shape, dtype=F64)
    with torch.enable_grad():  # no cache with autograd on: the current parameters' map
        fresh = layer(x).detach()
    with torch.no_grad():
        assert torch.allclose(layer(x), fresh, atol=1e-10, rtol=1e-10)
    singular = torch.linalg.svdvals(served)
    assert singular.max().item() <= 1 + 1e-9  # still 1-Lipschitz as served
    n = math.prod(shape)
    with torch.enable_grad():  # the current parameters' operator, column by column
        columns = torch.stack([layer(e[None]).detach()[0] for e in torch.eye(n, dtype=F64).reshape(n, *shape)])
        current = (columns - layer(torch.zeros(1, *shape, dtype=F64)).detach()).reshape(n, -1).T
    assert torch.allclose(served, current, atol=1e-10)


# ----------------------------------------------------------------------------- item 3: exported sizes


def _jacobian_norm(module: nn.Module, shape, seed: int = 0) -> float:
    x = torch.randn(tuple(shape), generator=torch.Generator().manual_seed(seed), dtype=F64)
    return lipschitz.jacobian_singular_values(module, x)[0].item()


@settings(max_examples=10, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    mode=st.sampled_from(["zeros", "circular"]),
    kernel=st.sampled_from([1, 3]),
    size=st.integers(3, 5),
    other=st.integers(2, 9),
)
def test_exported_cpl_conv_is_one_lipschitz_or_refuses_each_size(seed, mode, kernel, size, other):
    torch.manual_seed(seed)
    layer = layers.CPLConv2d(2, kernel_size=kernel, inner_channels=3, padding_mode=mode, dtype=F64)
    with torch.no_grad():
        layer.weight.mul_(3.0)
        layer(torch.randn(1, 2, size, size, dtype=F64))  # the size it is exported for
    exported = layers.export(nn.Sequential(layer))
    assert _jacobian_norm(exported, (2, size, size)) <= 1 + 1e-9
    bound = lipschitz.upper_bound(exported, (2, size, size)).item()
    assert bound >= _jacobian_norm(exported, (2, size, size)) * (1 - 1e-9)
    shape = (2, other, other)
    try:
        with torch.no_grad():
            exported(torch.zeros(1, *shape, dtype=F64))
    except ValueError:
        with pytest.raises(ValueError, match="'0'"):
            lipschitz.upper_bound(exported, shape)
        return
    for point in range(3):
        assert _jacobian_norm(exported, shape, point) <= 1 + 1e-9
    assert lipschitz.upper_bound(exported, shape).item() >= measured_lipschitz(exported, shape) * (1 - 1e-9)


@pytest.mark.parametrize("size", [2, 4, 7])
def test_exported_sll_conv_stays_one_lipschitz_on_every_size(size):
    torch.manual_seed(8)
    layer = layers.SLLConv2d(2, inner_channels=3, dtype=F64)
    with torch.no_grad():
        layer.weight.mul_(4.0)
        layer(torch.randn(1, 2, 5, 5, dtype=F64))
    exported = layers.export(nn.Sequential(layer))
    for point in range(3):
        assert _jacobian_norm(exported, (2, size, size), point) <= 1 + 1e-9


@pytest.mark.parametrize(
    "build, seen, other",
    [
        (lambda: layers.CPLConv2d(2, inner_channels=3, dtype=F64), (2, 6, 6), (2, 1, 1)),
        (lambda: layers.CPLConv2d(2, padding_mode="circular", dtype=F64), (2, 6, 6), (2, 3, 3)),
        (lambda: layers.SOCConv2d(2, 2, 3, dtype=F64), (2, 6, 6), (2, 3, 3)),
        (lambda: layers.CayleyConv2d(2, 2, 3, dtype=F64), (2, 6, 6), (2, 4, 4)),
    ],
    ids=["cpl-zeros", "cpl-circular", "soc", "cayley"],
)
def test_bounds_do_not_mutate_the_model(build, seen, other):
    torch.manual_seed(9)
    model = nn.Sequential(build(), nn.ReLU())
    with torch.no_grad():
        model[0].weight.mul_(3.0)
        model(torch.randn(1, *seen, dtype=F64))
    before = {key: value for key, value in vars(model[0]).items() if key not in ("_cache",)}
    state = {key: value.clone() for key, value in model.state_dict().items()}
    lipschitz.upper_bound(model, other)
    lipschitz.layer_bounds(model, other)
    lipschitz.lower_bound(model, torch.randn(2, *other, dtype=F64), n_iter=2)
    lipschitz.report(model, torch.randn(2, *other, dtype=F64), other, n_iter=1)
    after = {key: value for key, value in vars(model[0]).items() if key not in ("_cache",)}
    assert before.keys() == after.keys()
    for key in before:
        assert before[key] is after[key] or before[key] == after[key], key
    assert all(torch.equal(state[key], value) for key, value in model.state_dict().items())
    # what the model exports is still certified for the size it saw
    exported = layers.export(model)
    assert _jacobian_norm(exported, seen) <= 1 + 1e-9
