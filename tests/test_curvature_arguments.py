"""Every public function of stabilitylab.curvature answers invalid arguments with a ValueError or
TypeError whose message names the argument (issue 12, item 15): wrong types, negative or zero
counts, wrong shapes, NaN/Inf entries, non-scalar or non-finite closure outputs. Each valid base
call is run too, so that a failure is the bad value's and not the fixture's."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stabilitylab import curvature

NAN = float("nan")


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(8, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (8,), generator=g)
    params = list(model.parameters())
    closure = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    return model, x, y, params, closure


MODEL, X, Y, PARAMS, CLOSURE = _setup()
V = tuple(torch.ones_like(p) for p in PARAMS)
NAN_V = tuple(torch.full_like(p, NAN) for p in PARAMS)
FROZEN = [p.detach() for p in PARAMS]
QUIET = dict(progress=False)


def _nan_closure():
    return CLOSURE() * NAN


def _inf_closure():
    return CLOSURE() + math.inf


def _vector_closure():
    return MODEL(X).sum(dim=1)


def _int_closure():
    return torch.tensor(3)


def _sam_params():
    return [torch.zeros(3, requires_grad=True)]


def _optimizer():
    return torch.optim.SGD(PARAMS, lr=0.0)


# (function, base keyword arguments, {argument name: [bad values]}); positional arguments are
# passed by keyword so that the table says which argument is bad.
CASES = {
    "HessianOperator": (curvature.HessianOperator, dict(closure=CLOSURE, params=PARAMS), {
        "closure": [None, 3, _nan_closure, _inf_closure, _vector_closure, _int_closure],
        "params": [None, 3, [], [torch.zeros(2)], FROZEN, [torch.zeros(2, dtype=torch.int64)], "abc",
                   [PARAMS[0], torch.zeros(2, requires_grad=True)]],
    }),
    "hvp": (curvature.hvp, dict(closure=CLOSURE, params=PARAMS, v=V), {
        "closure": [None, "f", _nan_closure, _vector_closure],
        "params": [None, [], FROZEN, [1.0]],
        "v": [None, 3, NAN_V, V[:1], tuple(torch.zeros(5) for _ in PARAMS),
              tuple(torch.full_like(p, math.inf) for p in PARAMS)],
    }),
    "input_hvp": (curvature.input_hvp,
                  dict(input_loss=lambda t: nn.functional.cross_entropy(MODEL(t), Y), x=X, v=torch.ones_like(X)), {
        "input_loss": [None, 3, lambda t: MODEL(t), lambda t: MODEL(t).sum() * NAN],
        "x": [None, X.long(), X.clone().fill_(NAN), [[1.0]]],
        "v": [None, torch.ones(3), torch.full_like(X, NAN), X.long(), [1.0]],
        "batched": [1, "yes"],
        "create_graph": [None, 0],
    }),
    "hessian_eigenvalues": (curvature.hessian_eigenvalues, dict(closure=CLOSURE, params=PARAMS, **QUIET), {
        "closure": [None, 3, _nan_closure, _inf_closure, _vector_closure],
        "params": [None, [], FROZEN],
        "k": [0, -1, 1.5, "2", True, 10_000],
        "method": ["qr", None, 3],
        "which": ["SA", None],
        "tol": [0, 1, -1e-3, NAN, "1e-3", None],
        "criterion": ["gap", 3],
        "n_iter": [0, -5, 2.5, "10"],
        "return_eigenvectors": [1, "yes"],
        "generator": [0, "seed"],
        "progress": [1, "no"],
    }),
    "hessian_trace": (curvature.hessian_trace, dict(closure=CLOSURE, params=PARAMS, n_samples=4), {
        "closure": [None, 3, _nan_closure, _vector_closure],
        "params": [None, FROZEN],
        "n_samples": [1, 0, -3, 2.5, "4"],
        "method": ["exact", None],
        "return_stderr": [1, None],
        "batch_size": [0, -1, 1.5],
        "generator": [1, "g"],
    }),
    "hessian_density": (curvature.hessian_density, dict(closure=CLOSURE, params=PARAMS, n_iter=5, **QUIET), {
        "closure": [None, 3, _nan_closure, _inf_closure, _vector_closure],
        "params": [None, FROZEN],
        "n_iter": [0, -1, 2.5],
        "n_vectors": [0, -2, "3"],
        "grid": [1, 0, 2.5, torch.zeros(1), torch.zeros(2, 2), torch.tensor([0.0, NAN]), "x", None],
        "sigma": [0.0, -1.0, NAN, math.inf, "0.1"],
        "generator": [3],
        "progress": [2],
    }),
    "sharpness": (curvature.sharpness, dict(closure=CLOSURE, params=PARAMS, rho=0.1, n_iter=2), {
        "closure": [None, 3, _nan_closure, _vector_closure],
        "params": [None, [], FROZEN],
        "rho": [0.0, -0.1, NAN, math.inf, "0.1", None],
        "n_iter": [0, -1, 1.5],
        "step_size": [0.0, -1.0, NAN],
        "adaptive": [1, "yes"],
        "eta": [-1.0, NAN, "0"],
        "generator": [1],
        "return_perturbation": [1],
    }),
    "m_sharpness": (curvature.m_sharpness, dict(model=MODEL, data=(X, Y), m=4, rho=0.1, **QUIET), {
        "model": [None, lambda t: t, nn.ReLU()],
        "data": [None, 3, (X, Y[:3]), (X.clone().fill_(NAN), Y)],
        "m": [0, -1, 1.5, 100],
        "rho": [0.0, -1.0, NAN],
        "loss_fn": [3, "mse"],
        "n_iter": [0, -1],
        "adaptive": [1],
        "eta": [-0.5],
        "max_examples": [0, -1, 2.5],
        "generator": ["g"],
        "progress": [3],
    }),
    "sharpness_during_training": (
        curvature.sharpness_during_training,
        dict(closure=CLOSURE, params=PARAMS, optimizer=_optimizer(), n_iter=1, every=1, **QUIET), {
            "closure": [None, 3, _nan_closure],
            "params": [None, FROZEN],
            "optimizer": [None, "sgd", torch.optim.SGD],
            "n_iter": [-1, 1.5, "2"],
            "every": [0, -1, 1.5],
            "tol": [0.0, 2.0],
            "generator": [4],
            "progress": ["x"],
        }),
    "SAM": (curvature.SAM, dict(params=_sam_params(), base_optimizer=torch.optim.SGD, rho=0.05, lr=0.1), {
        "rho": [0.0, -1.0, NAN, "0.1"],
        "base_optimizer": ["sgd", None, torch.optim.SGD(_sam_params(), lr=0.1)],
        "adaptive": [1, "no"],
    }),
    "gradient_norm_penalty": (curvature.gradient_norm_penalty, dict(closure=CLOSURE, params=PARAMS), {
        "closure": [None, 3, _vector_closure, torch.zeros(3)],
        "params": [None, FROZEN],
        "method": ["exact!", None],
        "h": [0.0, -1.0, NAN],
    }),
    "input_curvature_penalty": (curvature.input_curvature_penalty, dict(model=MODEL, x=X, y=Y), {
        "model": [None, 3],
        "x": [None, X.long(), X.clone().fill_(NAN), X[:0], torch.tensor(1.0)],
        "y": [None, Y[:3], torch.tensor(1)],
        "h": [0.0, -1.0, NAN, "0.1"],
        "loss_fn": [3, "ce"],
    }),
    "hessian_trace_penalty": (curvature.hessian_trace_penalty, dict(closure=CLOSURE, params=PARAMS), {
        "closure": [None, 3, _vector_closure, torch.zeros(3)],
        "params": [None, FROZEN],
        "n_samples": [0, -1, 1.5],
        "generator": [1],
    }),
    "filter_normalized_direction": (curvature.filter_normalized_direction, dict(model=MODEL), {
        "model": [None, 3, nn.ReLU()],
        "ignore_1d": [1, None],
        "generator": [0],
    }),
    "eigen_directions": (curvature.eigen_directions, dict(model=MODEL, data=(X, Y), k=1, **QUIET), {
        "model": [None, 3],
        "data": [None, 3, (X, Y[:2]), (X.clone().fill_(NAN), Y)],
        "k": [0, -1, 1.5],
        "loss_fn": [3],
        "max_examples": [0, -1],
        "batch_size": [0, 1.5],
        "tol": [0.0],
        "n_iter": [0],
        "generator": [1],
    }),
    "loss_landscape": (
        curvature.loss_landscape,
        dict(model=MODEL, data=(X, Y), directions=[dict(MODEL.named_parameters())], coordinates=[0.0, 1.0],
             **QUIET), {
            "model": [None, 3],
            "data": [None, 3, (X, Y[:2]), (X.clone().fill_(NAN), Y)],
            "directions": [None, 3, {"nope": torch.zeros(1)}, [V, V, V], [], {"0.weight": torch.zeros(2)},
                           {"0.weight": torch.full((4, 3), NAN)}, [NAN_V], ["abc"]],
            "coordinates": [[], [NAN], "abc", None],
            "loss_fn": [3],
            "max_examples": [0, -2],
            "batch_size": [0, 2.5],
            "progress": [1],
        }),
    "random_perturbation_loss": (
        curvature.random_perturbation_loss, dict(model=MODEL, data=(X, Y), radii=[0.0, 0.1], **QUIET), {
            "model": [None, 3],
            "data": [None, 3, [1, 2, 3], (X, Y[:2]), (X.clone().fill_(NAN), Y)],
            "radii": [[], [-1.0], [NAN], [math.inf], "abc", None],
            "n_directions": [0, -1, 1.5, "8"],
            "relative": [1, None],
            "loss_fn": [3],
            "generator": [2],
            "batch_size": [0, 2.5],
            "progress": [1],
        }),
}

PARAMETERS = [
    pytest.param(fn_name, arg, i, id=f"{fn_name}-{arg}-{i}")
    for fn_name, (_, _, bad) in CASES.items()
    for arg, values in bad.items()
    for i in range(len(values))
]


@pytest.mark.parametrize("fn_name", list(CASES))
def test_the_base_call_is_valid(fn_name):
    fn, base, _ = CASES[fn_name]
    fn(**base)


@pytest.mark.parametrize("fn_name,arg,index", PARAMETERS)
def test_invalid_argument_is_named(fn_name, arg, index):
    fn, base, bad = CASES[fn_name]
    value = bad[arg][index]
    with pytest.raises((ValueError, TypeError)) as info:
        fn(**{**base, arg: value})
    assert arg in str(info.value), f"{fn_name}({arg}={value!r}) raised {info.value!r}, which does not name {arg!r}"


def test_operator_methods_name_their_argument():
    op = curvature.HessianOperator(CLOSURE, PARAMS)
    for bad in (None, NAN_V, V[:1], tuple(torch.zeros(5) for _ in PARAMS)):
        with pytest.raises((ValueError, TypeError), match="v"):
            op.matvec(bad)
    for bad in (None, torch.zeros(op.numel + 1), torch.full((op.numel,), NAN), torch.zeros(op.numel, 1)):
        with pytest.raises((ValueError, TypeError), match="v"):
            op.matvec_flat(bad)
    for bad in (None, torch.zeros(op.numel), torch.zeros(op.numel + 1, 2), torch.full((op.numel, 2), NAN)):
        with pytest.raises((ValueError, TypeError), match="V"):
            op.matmat(bad)


def test_an_operator_with_other_params_names_params():
    op = curvature.HessianOperator(CLOSURE, PARAMS)
    for fn in (curvature.hessian_eigenvalues, curvature.hessian_trace, curvature.hessian_density):
        with pytest.raises(ValueError, match="params"):
            fn(op, [torch.zeros(2, requires_grad=True)])


def test_sam_step_without_a_closure_names_closure():
    opt = curvature.SAM(_sam_params(), torch.optim.SGD, lr=0.1)
    with pytest.raises(ValueError, match="closure"):
        opt.step()
