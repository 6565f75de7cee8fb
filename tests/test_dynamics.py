"""stabilitylab.dynamics: derivatives of the top singular value and the SGD drift of s1.

Oracles: autograd through ``torch.linalg.svdvals`` and second differences of it (float64, with a
gap between s1 and s2), a dense Hessian, Monte Carlo averages of s1 over Gaussian perturbations of
known covariance, and exact expectations over every mini-batch of a toy data set.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import stabilitylab.dynamics as dynamics

F64 = torch.float64


def _orthonormal(n: int, g: torch.Generator) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=F64))
    return q * torch.sign(torch.diagonal(r))


def _matrix(m: int, n: int, seed: int, *, gap: float = 0.3, rank: int | None = None) -> torch.Tensor:
    """``U diag(s) V^T`` with s1 - s2 >= gap * s1 (and zeros beyond ``rank``)."""
    g = torch.Generator().manual_seed(seed)
    r = min(m, n)
    s = torch.sort(torch.rand(r, generator=g, dtype=F64) * (1 - gap), descending=True).values
    s[0] = 1.0
    if rank is not None:
        s[rank:] = 0.0
    return _orthonormal(m, g)[:, :r] @ torch.diag(s) @ _orthonormal(n, g)[:, :r].T * 2.0


def _s1(W: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(W)[..., 0]


shapes = st.tuples(st.integers(1, 6), st.integers(1, 6))


# ----------------------------------------------------------------------------- derivatives


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000))
def test_gradient_is_autograd_of_svdvals(shape, seed):
    W = _matrix(*shape, seed)
    expected = torch.func.grad(_s1)(W)
    assert torch.allclose(dynamics.singular_value_gradient(W), expected, atol=1e-10)


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000))
def test_top_singular_pair_is_a_singular_triple(shape, seed):
    W = _matrix(*shape, seed)
    u, s, v = dynamics.top_singular_pair(W)
    assert torch.isclose(s, _s1(W), atol=1e-12)
    assert torch.allclose(W @ v, s * u, atol=1e-10) and torch.allclose(W.T @ u, s * v, atol=1e-10)
    assert torch.isclose(u.norm(), torch.ones((), dtype=F64)) and v[v.abs().argmax()] > 0


@settings(max_examples=30, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000))
def test_quadform_is_the_autograd_hessian(shape, seed):
    m, n = shape
    W = _matrix(m, n, seed)
    E = torch.randn(3, m, n, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    H = torch.autograd.functional.hessian(_s1, W).reshape(m * n, m * n)
    expected = torch.einsum("ki,ij,kj->k", E.reshape(3, -1), H, E.reshape(3, -1))
    got = dynamics.singular_value_hessian_quadform(W, E)
    assert got.shape == (3,) and got.dtype == F64
    assert torch.allclose(got, expected, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("m, n, rank", [(6, 4, 4), (4, 6, 4), (5, 5, 2), (7, 3, 1), (1, 5, 1), (5, 1, 1)])
def test_quadform_matches_second_differences_with_full_bases(m, n, rank):
    """Tall, wide, rank-deficient: the sums over the full bases (s_i = 0 beyond the rank)."""
    W = _matrix(m, n, 7, rank=rank)
    E = torch.randn(4, m, n, generator=torch.Generator().manual_seed(3), dtype=F64)
    h = 1e-4
    second = (_s1(W + h * E) - 2 * _s1(W) + _s1(W - h * E)) / h**2
    got = dynamics.singular_value_hessian_quadform(W, E)
    assert torch.allclose(got, second, rtol=1e-5, atol=1e-5)
    # the same sum written with full orthonormal bases, term by term as in the docstring
    U, S, Vh = torch.linalg.svd(W, full_matrices=True)
    s = torch.zeros(max(m, n), dtype=F64)
    s[: len(S)] = S
    for k in range(4):
        a = U.T @ E[k] @ Vh[0]  # u_i^T E v1, i = 1..m
        b = U[:, 0] @ E[k] @ Vh.T  # u1^T E v_j, j = 1..n
        full = sum(s[0] * a[i] ** 2 / (s[0] ** 2 - s[i] ** 2) for i in range(1, m))
        full += sum(s[0] * b[j] ** 2 / (s[0] ** 2 - s[j] ** 2) for j in range(1, n))
        full += sum(2 * s[l] * a[l] * b[l] / (s[0] ** 2 - s[l] ** 2) for l in range(1, min(m, n)))
        assert math.isclose(float(got[k]), float(full), rel_tol=1e-10, abs_tol=1e-12)


@settings(max_examples=40, deadline=None)
@given(shape=shapes, seed=st.integers(0, 10_000))
def test_quadform_is_nonnegative_s1_is_convex(shape, seed):
    W = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64)
    E = torch.randn(5, *shape, generator=torch.Generator().manual_seed(seed + 1), dtype=F64)
    try:
        q = dynamics.singular_value_hessian_quadform(W, E)
    except ValueError:
        return  # a random matrix with a (numerically) repeated top value
    assert bool((q >= -1e-12).all())


def test_float32_input_is_computed_in_float64():
    W = _matrix(5, 4, 1)
    E = torch.randn(5, 4, generator=torch.Generator().manual_seed(2), dtype=F64)
    q64 = dynamics.singular_value_hessian_quadform(W, E)
    q32 = dynamics.singular_value_hessian_quadform(W.float(), E.float())
    assert q32.dtype == F64 and math.isclose(float(q32), float(q64), rel_tol=1e-5)
    assert dynamics.singular_value_gradient(W.float()).dtype == torch.float32


def test_a_repeated_or_zero_top_singular_value_is_refused():
    W = torch.diag(torch.tensor([2.0, 2.0, 1.0], dtype=F64))
    for fn in (dynamics.top_singular_pair, dynamics.singular_value_gradient):
        with pytest.raises(ValueError, match="gap_tol"):
            fn(W)
    with pytest.raises(ValueError, match="simple top singular value"):
        dynamics.singular_value_hessian_quadform(W, torch.ones(3, 3, dtype=F64))
    with pytest.raises(ValueError, match="simple top singular value"):
        dynamics.singular_value_gradient(torch.zeros(3, 2))
    # a gap of 1e-3 is accepted by default and refused by a stricter tolerance
    W2 = torch.diag(torch.tensor([1.001, 1.0], dtype=F64))
    assert dynamics.singular_value_hessian_quadform(W2, torch.ones(2, 2, dtype=F64)) > 0
    with pytest.raises(ValueError, match="gap_tol"):
        dynamics.top_singular_pair(W2, gap_tol=1e-2)


# ----------------------------------------------------------------------------- the Itô drift


def _exact_covariance_samples(L: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """2J per-sample gradients ``±a_j`` whose sample covariance (1/(K-1)) is exactly ``L L^T``."""
    J = L.shape[1]
    K = 2 * J
    a = math.sqrt((K - 1) / 2) * L.T  # (J, mn)
    return torch.cat([a, -a]).reshape(K, *shape)


def test_curvature_drift_matches_monte_carlo_and_dense_hessian():
    """E[s1(W - eta Z)] - s1(W) for Z ~ N(0, C / B) against (eta^2/2) tr(H C) / B.

    Monte Carlo with 40 000 antithetic pairs (s1(W + eta Z) + s1(W - eta Z)) / 2 - s1(W), which
    has the same mean and no first-order noise; tolerance: 4 standard errors plus 2 % for the
    fourth-order Taylor remainder (eta ||Z|| is about 9 % of s1 - s2 here; the gap found is 0.3 %,
    under one standard error).
    """
    m, n, B = 4, 3, 2
    W = _matrix(m, n, 11, gap=0.5)
    g = torch.Generator().manual_seed(5)
    L = torch.randn(m * n, 6, generator=g, dtype=F64) * 0.5
    C = L @ L.T
    eta = 0.05
    samples = _exact_covariance_samples(L, (m, n))
    terms = dynamics.lipschitz_drift_terms(W, torch.zeros(m, n, dtype=F64), samples, eta, B)
    H = torch.autograd.functional.hessian(_s1, W).reshape(m * n, m * n)
    assert math.isclose(float(terms.curvature_drift), float(0.5 * eta**2 * torch.trace(H @ C) / B), rel_tol=1e-9)
    G = dynamics.singular_value_gradient(W).reshape(-1)
    assert math.isclose(float(terms.diffusion), float(eta * torch.sqrt(G @ C @ G / B)), rel_tol=1e-9)
    assert float(terms.gradient_drift) == 0.0 and float(terms.gradient_curvature) == 0.0

    n_mc = 40_000
    Z = (torch.randn(n_mc, 6, generator=g, dtype=F64) @ L.T / math.sqrt(B)).reshape(n_mc, m, n)
    pair = 0.5 * (_s1(W + eta * Z) + _s1(W - eta * Z)) - _s1(W)
    mc, se = float(pair.mean()), float(pair.std() / math.sqrt(n_mc))
    predicted = float(terms.curvature_drift)
    assert abs(mc - predicted) <= 4 * se + 0.02 * predicted, (mc, predicted, se)
    # the diffusion is the standard deviation of the one-sided change (first order)
    one_sided = _s1(W - eta * Z) - _s1(W)
    assert math.isclose(float(one_sided.std()), float(terms.diffusion), rel_tol=0.03)


def _toy(seed: int = 0, N: int = 6):
    """A linear model x -> W x with squared loss on N examples (per-example gradients (W x - t) x^T)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(3, 4, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(_matrix(4, 3, seed, gap=0.4))
    x = torch.randn(N, 3, generator=g, dtype=F64)
    t = torch.randn(N, 4, generator=g, dtype=F64) * 2
    return model, x, t


def _mse(out, target):
    return 0.5 * (out - target).square().sum(-1).mean()


@pytest.mark.parametrize("B", [1, 2, 3])
def test_drift_terms_sum_to_the_exact_expected_change_over_all_batches(B):
    """Every batch of B of N examples without replacement, equally likely: the exact mean of
    s1(W - eta g_S) - s1(W) is the sum of the drift terms up to O(eta^3), its variance the
    diffusion^2 up to O(eta^3) (finite-population factor 1 - B/N). Measured: relative gaps of
    0.1-0.2 % at eta = 1e-3, halving with eta."""
    model, x, t = _toy()
    N = len(x)
    W = model.weight.detach()
    grads = dynamics.per_sample_gradients(model, x, t, loss_fn=_mse)["weight"]
    for eta in (1e-3, 5e-4):
        terms = dynamics.lipschitz_drift_terms(W, grads.mean(0), grads, eta, B, dataset_size=N)
        changes = torch.stack([_s1(W - eta * grads[list(S)].mean(0)) - _s1(W)
                               for S in itertools.combinations(range(N), B)])
        second_order = float(changes.mean() - terms.gradient_drift)
        assert math.isclose(second_order, float(terms.curvature_drift + terms.gradient_curvature), rel_tol=5e-3)
        assert math.isclose(float(changes.mean()), float(terms.drift), rel_tol=1e-3, abs_tol=1e-12)
        assert math.isclose(float(changes.var(unbiased=False)), float(terms.diffusion) ** 2, rel_tol=5e-3)


def test_weight_decay_adds_to_the_mean_gradient():
    model, x, t = _toy(1)
    W = model.weight.detach()
    grads = dynamics.per_sample_gradients(model, x, t, loss_fn=_mse)["weight"]
    plain = dynamics.lipschitz_drift_terms(W, grads.mean(0), grads, 0.01, 2)
    decayed = dynamics.lipschitz_drift_terms(W, grads.mean(0), grads, 0.01, 2, weight_decay=0.1)
    # <u1 v1^T, lambda W> = lambda s1
    assert math.isclose(float(decayed.gradient_drift - plain.gradient_drift), -0.01 * 0.1 * float(_s1(W)),
                        rel_tol=1e-9)
    assert float(decayed.curvature_drift) == pytest.approx(float(plain.curvature_drift), rel=1e-12)


def test_per_sample_gradients_match_single_example_autograd():
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3), nn.Dropout(0.5)).double().train()
    x = torch.randn(6, 5, generator=g, dtype=F64)
    y = torch.randint(0, 3, (6,), generator=g)
    grads = dynamics.per_sample_gradients(model, x, y)
    assert set(grads) == {name for name, _ in model.named_parameters()}
    assert model.training and all(m.training for m in model.modules())  # modes restored
    model.eval()
    for k in range(6):
        model.zero_grad()
        nn.functional.cross_entropy(model(x[k : k + 1]), y[k : k + 1]).backward()
        for name, p in model.named_parameters():
            assert torch.allclose(grads[name][k], p.grad, atol=1e-12)
    only = dynamics.per_sample_gradients(model, x, y, names=["2.weight"], chunk_size=2)
    assert list(only) == ["2.weight"] and torch.allclose(only["2.weight"], grads["2.weight"], atol=1e-12)


def test_corrupt_labels_changes_exactly_the_fraction():
    labels = torch.arange(200) % 10
    noisy = dynamics.corrupt_labels(labels, 0.3, num_classes=10, generator=torch.Generator().manual_seed(0))
    assert int((noisy != labels).sum()) == 60 and noisy.min() >= 0 and noisy.max() < 10
    again = dynamics.corrupt_labels(labels, 0.3, num_classes=10, generator=torch.Generator().manual_seed(0))
    assert torch.equal(noisy, again)
    assert torch.equal(dynamics.corrupt_labels(labels, 0.0), labels)
    everything = dynamics.corrupt_labels(labels, 1.0, generator=torch.Generator().manual_seed(1))
    assert int((everything != labels).sum()) == 200


# ----------------------------------------------------------------------------- argument checks


def test_bad_arguments_are_refused_by_name():
    W = _matrix(4, 3, 0)
    G = torch.zeros(5, 4, 3, dtype=F64)
    cases = [
        (lambda: dynamics.top_singular_pair(torch.ones(3)), "W"),
        (lambda: dynamics.top_singular_pair(torch.ones(3, 3, dtype=torch.long)), "W"),
        (lambda: dynamics.top_singular_pair(torch.full((3, 3), math.nan)), "W"),
        (lambda: dynamics.top_singular_pair(W, gap_tol=0.0), "gap_tol"),
        (lambda: dynamics.singular_value_hessian_quadform(W, torch.ones(3, 4, dtype=F64)), "E"),
        (lambda: dynamics.singular_value_hessian_quadform(W, torch.full((4, 3), math.inf)), "E"),
        (lambda: dynamics.lipschitz_drift_terms(W, torch.zeros(3, 4), G, 0.1, 2), "grad"),
        (lambda: dynamics.lipschitz_drift_terms(W, W, G[:1], 0.1, 2), "per_sample_grads"),
        (lambda: dynamics.lipschitz_drift_terms(W, W, G, 0.0, 2), "lr"),
        (lambda: dynamics.lipschitz_drift_terms(W, W, G, 0.1, 0), "batch_size"),
        (lambda: dynamics.lipschitz_drift_terms(W, W, G, 0.1, 4, dataset_size=3), "dataset_size"),
        (lambda: dynamics.lipschitz_drift_terms(W, W, G, 0.1, 2, weight_decay=-1.0), "weight_decay"),
        (lambda: dynamics.per_sample_gradients(nn.Linear(3, 2), torch.ones(2, 3), torch.zeros(3).long()), "y"),
        (lambda: dynamics.per_sample_gradients(nn.Linear(3, 2), torch.ones(2, 3), torch.zeros(2).long(),
                                               names=["nope"]), "names"),
        (lambda: dynamics.per_sample_gradients("net", torch.ones(2, 3), torch.zeros(2).long()), "model"),
        (lambda: dynamics.corrupt_labels(torch.ones(3), 0.1), "labels"),
        (lambda: dynamics.corrupt_labels(torch.tensor([0, 5]), 0.1, num_classes=3), "labels"),
        (lambda: dynamics.corrupt_labels(torch.tensor([0, 1]), 1.5), "rate"),
        (lambda: dynamics.SpectralMonitor(every=0), "every"),
        (lambda: dynamics.SpectralMonitor(drift_every=1.5), "drift_every"),
        (lambda: dynamics.SpectralMonitor(exact_steps=[-1]), "exact_steps"),
        (lambda: dynamics.SpectralMonitor(drift_samples=1), "drift_samples"),
        (lambda: dynamics.SpectralMonitor(drift_data=[1, 2]), "drift_data"),
        (lambda: dynamics.SpectralMonitor(lower_points=torch.full((2, 3), math.nan)), "lower_points"),
        (lambda: dynamics.SpectralMonitor(layers="0"), "layers"),
        (lambda: dynamics.SpectralMonitor(generator=0), "generator"),
        (lambda: dynamics.SpectralMonitor(lr=-1.0), "lr"),
    ]
    for call, name in cases:
        with pytest.raises((ValueError, TypeError)) as info:
            call()
        assert name in str(info.value), (name, str(info.value))
