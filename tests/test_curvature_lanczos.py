"""The Lanczos loop of hessian_eigenvalues and the flat-vector product it calls: the basis stays
orthonormal (the whole spectrum, repeated eigenvalues included, against eigvalsh; Q^T Q = I over
120 steps on a clustered top), the eigenvalues do not depend on returning eigenvectors, and the
flat product handles parameters that are unused or enter the loss linearly."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab import curvature
from stabilitylab.curvature import spectrum


def _quadratic(eigenvalues: torch.Tensor, seed: int):
    """0.5 w^T A w with A = Q diag(eigenvalues) Q^T (Q random orthogonal): its Hessian is A."""
    n = len(eigenvalues)
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    A = (Q * eigenvalues) @ Q.T
    w = torch.zeros(n, dtype=torch.float64, requires_grad=True)
    return A, w, (lambda: 0.5 * w @ A @ w)


@settings(max_examples=12, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 40), distinct=st.integers(1, 6))
def test_full_krylov_space_gives_the_whole_spectrum(seed, n, distinct):
    """k = P Lanczos steps with restarts at invariant subspaces: the Ritz values are every
    eigenvalue with its multiplicity (spectra with at most `distinct` values, so the Krylov space
    of one start vector is exhausted early). A basis that lost orthogonality would show ghost
    copies or miss a multiplicity."""
    g = torch.Generator().manual_seed(seed + 1)
    values = torch.randn(distinct, generator=g, dtype=torch.float64) * 3
    eigenvalues = values[torch.randint(0, distinct, (n,), generator=g)]
    A, w, loss = _quadratic(eigenvalues, seed)
    found = curvature.hessian_eigenvalues(loss, [w], k=n, tol=1e-10, generator=torch.Generator().manual_seed(seed))
    expected = torch.linalg.eigvalsh(A).flip(0)
    assert torch.allclose(found, expected, atol=1e-9 * max(1.0, float(expected.abs().max())))


@pytest.mark.parametrize("spread", [1e-4, 1e-2, 1.0])
def test_basis_stays_orthonormal_over_many_steps(spread):
    """The Lanczos vectors of 120 steps (on a spectrum with a cluster at the top, where plain
    Lanczos loses orthogonality as soon as a Ritz value converges) are orthonormal to 1e-12, and
    alpha, beta are those of T = Q^T A Q."""
    g = torch.Generator().manual_seed(0)
    eigenvalues = torch.cat([1 + spread * torch.rand(5, generator=g, dtype=torch.float64),
                             torch.linspace(-0.5, 0.5, 295, dtype=torch.float64)])
    A, w, loss = _quadratic(eigenvalues, 1)
    op = curvature.HessianOperator(loss, [w])
    m = 120
    Q = torch.empty(m, op.numel, dtype=torch.float64)
    q = spectrum._unit_start(op, torch.Generator().manual_seed(2))
    alphas, betas = [], []
    for j in range(m):
        alpha, r = spectrum._lanczos_step(op, Q, j, q)
        beta = float(torch.linalg.vector_norm(r))
        alphas.append(alpha)
        betas.append(beta)
        q = r / beta
    assert torch.allclose(Q @ Q.T, torch.eye(m, dtype=torch.float64), rtol=0, atol=1e-12)
    T = Q @ A @ Q.T
    assert torch.allclose(torch.diagonal(T), torch.tensor(alphas, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(torch.diagonal(T, 1), torch.tensor(betas[:-1], dtype=torch.float64), atol=1e-12)


@settings(max_examples=6, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 4), which=st.sampled_from(["LA", "LM"]))
def test_values_do_not_depend_on_returning_vectors(seed, k, which):
    """The same eigenvalues with and without return_eigenvectors (same start, same stopping rule)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(20, 4, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (20,), generator=g)
    params = list(model.parameters())

    def loss():
        return nn.functional.cross_entropy(model(x), y)

    plain = curvature.hessian_eigenvalues(loss, params, k=k, which=which, tol=1e-8, criterion="residual",
                                          generator=torch.Generator().manual_seed(seed))
    pairs = curvature.hessian_eigenvalues(loss, params, k=k, which=which, tol=1e-8, return_eigenvectors=True,
                                          generator=torch.Generator().manual_seed(seed))
    assert torch.equal(plain, pairs.eigenvalues)


def test_flat_product_with_unused_and_linear_parameters():
    """Parameters the loss does not use (no gradient) and parameters it is linear in (a gradient
    without a graph) have zero rows and columns in the Hessian: the flat product (the Krylov
    methods' path) matches the dense float64 Hessian, in float32 and float64."""
    for dtype in (torch.float64, torch.float32):
        g = torch.Generator().manual_seed(0)
        a = torch.randn(3, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        unused = torch.randn(2, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        linear = torch.randn(4, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        b = torch.randn(2, 2, generator=g, dtype=torch.float64).to(dtype).requires_grad_()
        c = torch.randn(4, generator=g, dtype=torch.float64).to(dtype)

        def loss():
            return (a.sin() ** 2).sum() * b.sum() + (b**3).sum() + (c * linear).sum()

        params = [a, unused, linear, b]
        op = curvature.HessianOperator(loss, params)
        flat = [p.detach().double().reshape(-1) for p in params]
        sizes = [len(f) for f in flat]

        def loss64(theta):
            a_, _, l_, b_ = (t.reshape(p.shape) for t, p in zip(theta.split(sizes), params))
            return (a_.sin() ** 2).sum() * b_.sum() + (b_**3).sum() + (c.double() * l_).sum()

        H = torch.autograd.functional.hessian(loss64, torch.cat(flat))
        V = torch.randn(op.numel, 3, generator=g, dtype=torch.float64)
        tol = 1e-12 if dtype == torch.float64 else 1e-5
        for i in range(3):
            out = op.matvec_flat(V[:, i])
            assert out.dtype == torch.float64
            assert torch.allclose(out, H @ V[:, i], rtol=tol, atol=tol * float(H.abs().max()))
        assert op.n_products == 3
