"""HessianOperator's product methods (double backward, forward-over-reverse, auto): every method
against the dense float64 Hessian, batched products against stacked single ones, eigenvalues
against the dense spectrum, and the silent fallback to double backward where torch.func cannot be
used (BatchNorm in training mode, hooks, parameters outside any module, dropout)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab import curvature

METHODS = ("auto", "double_backward", "forward_over_reverse")


def _mlp(seed: int, d_in: int = 3, hidden: int = 4, n: int = 12, classes: int = 3):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(d_in, hidden), nn.Tanh(), nn.Linear(hidden, classes)).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, d_in, generator=g, dtype=torch.float64)
    y = torch.randint(0, classes, (n,), generator=g)
    return model, x, y


def _dense_hessian(model: nn.Module, x, y, loss_fn=nn.functional.cross_entropy) -> torch.Tensor:
    """The P x P Hessian of the loss in the flattened parameters, torch.autograd.functional.hessian, float64."""
    names = [n for n, _ in model.named_parameters()]
    shapes = [p.shape for _, p in model.named_parameters()]
    sizes = [p.numel() for _, p in model.named_parameters()]
    flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])

    def loss(theta):
        tensors = [c.reshape(s) for c, s in zip(theta.split(sizes), shapes)]
        return loss_fn(torch.func.functional_call(model, dict(zip(names, tensors)), (x,)), y)

    return torch.autograd.functional.hessian(loss, flat)


def _closure(model, x, y, loss_fn=nn.functional.cross_entropy):
    return lambda: loss_fn(model(x), y)


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), d_in=st.integers(1, 5), hidden=st.integers(1, 6), b=st.integers(1, 6),
       method=st.sampled_from(METHODS))
def test_every_method_matches_the_dense_hessian(seed, d_in, hidden, b, method):
    """matvec, matvec_flat and matmat (b columns) equal H v for the dense float64 Hessian, and
    matmat equals the stacked matvecs; the products are counted, one per vector."""
    model, x, y = _mlp(seed, d_in=d_in, hidden=hidden)
    params = list(model.parameters())
    H = _dense_hessian(model, x, y)
    op = curvature.HessianOperator(_closure(model, x, y), params, method=method)
    assert op.product_method == ("forward_over_reverse" if method == "forward_over_reverse" else "double_backward")
    g = torch.Generator().manual_seed(seed)
    V = torch.randn(op.numel, b, generator=g, dtype=torch.float64)
    out = op.matmat(V)
    assert torch.allclose(out, H @ V, atol=1e-12, rtol=1e-10)
    stacked = torch.stack([op.matvec_flat(V[:, i]) for i in range(b)], dim=1)
    assert torch.allclose(out, stacked, atol=1e-12, rtol=1e-10)
    v = op.unflatten(V[:, 0])
    assert torch.allclose(op.flatten(op.matvec(v)), H @ V[:, 0], atol=1e-12, rtol=1e-10)
    assert op.n_products == 2 * b + 1


@pytest.mark.parametrize("method", METHODS)
def test_matmat_with_many_columns_in_float32(method):
    """In float32 (the auto method times batched against column-by-column products on the first
    call with >= 4 columns), repeated calls agree with the float64 dense Hessian to float32 rounding."""
    model, x, y = _mlp(3, d_in=4, hidden=5)
    H = _dense_hessian(model, x, y)
    model = model.float()
    op = curvature.HessianOperator(_closure(model, x.float(), y), list(model.parameters()), method=method)
    V = torch.randn(op.numel, 9, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for _ in range(2):
        out = op.matmat(V)
        assert out.dtype == torch.float64
        assert torch.allclose(out, H @ V, atol=1e-5 * float(H.abs().max()), rtol=1e-4)
    if method == "auto":
        assert op.batched in (True, False)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("algorithm", ["lanczos", "power"])
def test_eigenvalues_of_every_method_match_eigh(method, algorithm):
    """The top-3 eigenvalues of every product method agree with scipy's eigh of the dense Hessian."""
    model, x, y = _mlp(7, d_in=3, hidden=4)
    evals = scipy.linalg.eigh(_dense_hessian(model, x, y).numpy(), eigvals_only=True)[::-1]
    op = curvature.HessianOperator(_closure(model, x, y), list(model.parameters()), method=method)
    values = curvature.hessian_eigenvalues(op, k=3, method=algorithm, tol=1e-10, criterion="residual",
                                           n_iter=5000, generator=torch.Generator().manual_seed(0))
    assert np.allclose(values.numpy(), evals[:3], rtol=1e-7, atol=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_traces_of_every_method_match_the_dense_trace(method):
    """Hutch++ with batched probes (batch_size 4) through every method: within 4 standard errors
    of the exact trace, and the same estimate (same probes) whatever the method."""
    model, x, y = _mlp(11, d_in=4, hidden=5)
    H = _dense_hessian(model, x, y)
    estimates = []
    for m in (method, "double_backward"):
        op = curvature.HessianOperator(_closure(model, x, y), list(model.parameters()), method=m)
        est, se = curvature.hessian_trace(op, n_samples=30, method="hutch++", batch_size=4, return_stderr=True,
                                          generator=torch.Generator().manual_seed(0))
        estimates.append(float(est))
        assert abs(float(est) - float(torch.trace(H))) <= 4 * float(se) + 1e-9
    assert np.isclose(estimates[0], estimates[1], rtol=1e-9, atol=1e-12)


def _fallback_case(kind: str):
    torch.manual_seed(0)
    x = torch.randn(16, 3, dtype=torch.float64)
    y = torch.randint(0, 2, (16,))
    if kind == "batchnorm":
        model = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4), nn.Tanh(), nn.Linear(4, 2)).double().train()
    elif kind == "dropout":
        model = nn.Sequential(nn.Linear(3, 4), nn.Dropout(0.3), nn.Tanh(), nn.Linear(4, 2)).double().train()
    else:
        model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2)).double()
    return model, x, y


def test_fallback_with_batchnorm_in_training_mode():
    """BatchNorm in training mode updates its running statistics: the operator falls back to
    double backward, calls the closure once (the running statistics move once, as with double
    backward), and its products equal double backward's, which match the dense Hessian of the
    training-mode loss."""
    model, x, y = _fallback_case("batchnorm")
    reference = curvature.HessianOperator(_closure(model, x, y), list(model.parameters()), method="double_backward")
    before = model[1].num_batches_tracked.item()
    op = curvature.HessianOperator(_closure(model, x, y), list(model.parameters()), method="forward_over_reverse")
    assert op.product_method == "double_backward"
    assert model[1].num_batches_tracked.item() == before + 1
    V = torch.randn(op.numel, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    assert torch.allclose(op.matmat(V), reference.matmat(V), atol=1e-12, rtol=1e-10)
    assert model[1].num_batches_tracked.item() == before + 1  # no further forward pass
    assert model.training and all(m.training for m in model.modules())
    momentum, model[1].momentum = model[1].momentum, 0.0  # the dense oracle must not move the statistics
    H = _dense_hessian(model, x, y)
    model[1].momentum = momentum
    assert torch.allclose(op.matmat(V), H @ V, atol=1e-10, rtol=1e-8)


def test_fallback_with_a_forward_hook():
    """A forward hook (here one that records outputs) is a side effect the closure must keep:
    double backward, the closure called once, products equal to the dense Hessian."""
    model, x, y = _fallback_case("plain")
    seen = []
    handle = model[0].register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    try:
        op = curvature.HessianOperator(_closure(model, x, y), list(model.parameters()), method="forward_over_reverse")
        assert op.product_method == "double_backward"
        V = torch.randn(op.numel, 2, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
        out = op.matmat(V)
        assert len(seen) == 1
    finally:
        handle.remove()
    assert torch.allclose(out, _dense_hessian(model, x, y) @ V, atol=1e-12, rtol=1e-10)


def test_fallback_with_dropout_and_with_plain_tensors():
    """Dropout draws random numbers (a different mask each call): double backward at the one mask
    drawn at construction, the global random state moved by that call only. A parameter that no
    module holds: double backward too."""
    model, x, y = _fallback_case("dropout")
    reference_state = torch.random.get_rng_state()
    torch.manual_seed(5)
    reference = curvature.HessianOperator(_closure(model, x, y), list(model.parameters()), method="double_backward")
    after_reference = torch.random.get_rng_state()
    torch.manual_seed(5)
    op = curvature.HessianOperator(_closure(model, x, y), list(model.parameters()), method="forward_over_reverse")
    assert op.product_method == "double_backward"
    V = torch.randn(op.numel, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert torch.allclose(op.matmat(V), reference.matmat(V), atol=1e-12, rtol=1e-10)
    assert torch.equal(torch.random.get_rng_state(), after_reference)
    torch.random.set_rng_state(reference_state)
    A = torch.tensor([[2.0, 1.0], [1.0, 3.0]], dtype=torch.float64)
    w = torch.ones(2, dtype=torch.float64, requires_grad=True)
    op = curvature.HessianOperator(lambda: 0.5 * w @ A @ w + w.pow(4).sum(), [w], method="forward_over_reverse")
    assert op.product_method == "double_backward"
    assert torch.allclose(op.matmat(torch.eye(2, dtype=torch.float64)), A + 12 * torch.diag(w.detach() ** 2))


def test_fallback_when_the_closure_changes_its_data():
    """A closure that reads a new batch on every call: forward-over-reverse would differentiate
    another loss at each product; the first product sees a different loss and falls back to the
    Hessian at the construction's batch."""
    model, x, y = _fallback_case("plain")
    batches = iter([x, x + 1.0] + [x + 2.0] * 10)
    op = curvature.HessianOperator(lambda: nn.functional.cross_entropy(model(next(batches)), y),
                                   list(model.parameters()), method="forward_over_reverse")
    assert op.product_method == "forward_over_reverse"
    V = torch.randn(op.numel, 1, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    out = op.matvec_flat(V[:, 0])
    assert op.product_method == "double_backward"
    H = _dense_hessian(model, x, y)  # the graph of the construction's batch
    assert torch.allclose(out, H @ V[:, 0], atol=1e-12, rtol=1e-10)


def test_forward_over_reverse_finds_models_in_the_closure():
    """A model reached through a closure's free variable, a global, a functools.partial and a
    bound method: forward-over-reverse is used, the model's parameters and mode are left alone,
    and the closure runs once per product (a pure function of the parameters)."""
    import functools

    model, x, y = _fallback_case("plain")
    model.eval()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    H = _dense_hessian(model, x, y)
    V = torch.randn(sum(p.numel() for p in model.parameters()), 3, generator=torch.Generator().manual_seed(6),
                    dtype=torch.float64)

    class Task:
        def __init__(self, net):
            self.net = net

        def loss(self):
            return nn.functional.cross_entropy(self.net(x), y)

    def loss_of(net, inputs, labels):
        return nn.functional.cross_entropy(net(inputs), labels)

    for closure in (_closure(model, x, y), functools.partial(loss_of, model, x, y), Task(model).loss):
        op = curvature.HessianOperator(closure, list(model.parameters()), method="forward_over_reverse")
        assert op.product_method == "forward_over_reverse"
        assert torch.allclose(op.matmat(V), H @ V, atol=1e-12, rtol=1e-10)
        assert torch.allclose(op.matvec_flat(V[:, 0]), H @ V[:, 0], atol=1e-12, rtol=1e-10)
        assert op.product_method == "forward_over_reverse"
        assert not model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())


@pytest.mark.parametrize("method", METHODS)
def test_modes_are_preserved(method):
    """A model with submodules in mixed modes keeps every submodule's mode."""
    model, x, y = _fallback_case("plain")
    model.train()
    model[2].eval()
    modes = [m.training for m in model.modules()]
    op = curvature.HessianOperator(_closure(model, x, y), list(model.parameters()), method=method)
    op.matmat(torch.ones(op.numel, 2, dtype=torch.float64))
    curvature.hessian_eigenvalues(op, tol=1e-6, generator=torch.Generator().manual_seed(0))
    assert [m.training for m in model.modules()] == modes


def test_method_is_checked():
    model, x, y = _fallback_case("plain")
    for bad in ("jvp", 3, None):
        with pytest.raises((ValueError, TypeError), match="method"):
            curvature.HessianOperator(_closure(model, x, y), list(model.parameters()), method=bad)
