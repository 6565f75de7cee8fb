r"""The Hessian's spectrum: top eigenvalues (Lanczos, power iteration), trace (Hutchinson,
Hutch++) and spectral density (stochastic Lanczos quadrature)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal, lapack
from torch import Tensor
from tqdm import tqdm

from stabilitylab._checks import (
    check_choice,
    check_generator,
    check_int,
    check_positive,
    check_progress,
    check_tensor,
    check_tol,
)
from stabilitylab._deprecation import renamed_kwargs
from stabilitylab.curvature._common import NOT_FINITE, LossClosure, _check_bool, _document_fields, _rademacher
from stabilitylab.curvature.hessian import HessianOperator, _operator

__all__ = ["Eigenpairs", "TraceEstimate", "SpectralDensity", "hessian_eigenvalues", "hessian_trace",
           "hessian_density"]


@_document_fields
class Eigenpairs(NamedTuple):
    """Eigenvalues and their eigenvectors (:func:`hessian_eigenvalues` with ``return_eigenvectors``,
    :func:`~stabilitylab.curvature.eigen_directions`); unpacks as ``values, vectors``."""

    eigenvalues: Tensor
    eigenvectors: list

    __field_docs__ = {
        'eigenvalues': '``(k,)`` eigenvalues, in decreasing order',
        'eigenvectors': '``k`` unit eigenvectors, each a tuple shaped like params (or a ``{name: tensor}`` dict)',
    }


@_document_fields
class TraceEstimate(NamedTuple):
    """A stochastic trace estimate and its standard error (:func:`hessian_trace` with
    ``return_stderr``); unpacks as ``trace, stderr``."""

    trace: Tensor
    stderr: Tensor

    __field_docs__ = {
        'trace': '0-dim estimate of the trace',
        'stderr': '0-dim estimated standard error of ``trace``',
    }


def _top(theta: np.ndarray, k: int, which: str) -> np.ndarray:
    key = theta if which == "LA" else np.abs(theta)
    return np.argsort(-key, kind="stable")[:k]


def _unit_start(op: HessianOperator, generator, exclude: Tensor | None = None) -> Tensor:
    q = torch.randn(op.numel, generator=generator, dtype=torch.float64).to(op.device)
    if exclude is not None and len(exclude):
        for _ in range(2):
            q = q - exclude.T @ (exclude @ q)
    return q / torch.linalg.vector_norm(q)


_SEPARATED = 0.02  # a neighbouring Ritz value counts as resolved when its residual is below this fraction of its distance
_STEV_LIMIT = 48  # largest Lanczos matrix handed to LAPACK's stev (QL: fastest when small); above, eigh_tridiagonal


def _tridiagonal_eigh(alphas: np.ndarray, betas: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (ascending) and unit eigenvectors (columns) of the symmetric tridiagonal matrix
    with diagonal ``alphas`` (m,) and off-diagonal ``betas`` (m - 1,), in float64 on the CPU.
    NumPy/LAPACK on these few numbers: a few microseconds, where torch's per-call overhead on
    a dozen small tensors per Lanczos step cost more than the Hessian-vector product itself on
    small networks."""
    if len(alphas) == 1:
        return alphas.copy(), np.ones((1, 1))
    if len(alphas) <= _STEV_LIMIT:
        theta, S, info = lapack.dstev(alphas, betas, compute_v=1)
        if info == 0:
            return theta, S
    return eigh_tridiagonal(alphas, betas)


def _eigenvalue_errors(theta: np.ndarray, residual: np.ndarray) -> np.ndarray:
    """Error estimates min(r_i, r_i^2 / gap_i) of the Ritz values `theta` (ascending) with residual
    norms `residual`. gap_i is the distance from theta_i to its neighbouring Ritz values theta_j,
    each moved towards theta_i by its residual r_j, and counted only when that neighbour is
    resolved (r_j <= _SEPARATED |theta_j - theta_i|; otherwise the gap on that side is taken as 0).
    Where the gap is not larger than r_i, or theta_i has no neighbour, the estimate is r_i."""
    if len(theta) == 1:
        return residual.copy()
    d = theta[1:] - theta[:-1]  # distance between consecutive Ritz values
    above = np.where(residual[1:] <= _SEPARATED * d, d - residual[1:], 0.0)  # to the next one up
    below = np.where(residual[:-1] <= _SEPARATED * d, d - residual[:-1], 0.0)  # to the next one down
    gap = np.minimum(np.append(above, np.inf), np.insert(below, 0, np.inf))
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gap > residual, residual**2 / gap, residual)


def _eigenvalue_error(theta: np.ndarray, residual: np.ndarray, i: int) -> float:
    """``_eigenvalue_errors(theta, residual)[i]``, for one index, in plain floats (the Lanczos loop's check)."""
    r, m = float(residual[i]), len(theta)
    if m == 1:
        return r
    gap = math.inf
    if i + 1 < m:
        d = float(theta[i + 1] - theta[i])
        gap = min(gap, d - float(residual[i + 1]) if residual[i + 1] <= _SEPARATED * d else 0.0)
    if i > 0:
        d = float(theta[i] - theta[i - 1])
        gap = min(gap, d - float(residual[i - 1]) if residual[i - 1] <= _SEPARATED * d else 0.0)
    return r * r / gap if gap > r else r


def _lanczos_step(op: HessianOperator, Q: Tensor, j: int, q: Tensor) -> tuple[float, Tensor]:
    """Store the unit vector q as the j-th Lanczos vector; return alpha_j = q^T H q and H q
    orthogonalized against the j + 1 vectors so far (classical Gram-Schmidt, twice)."""
    Q[j] = q
    w = op._product_flat(q)
    alpha = float(torch.dot(w, q))
    if not math.isfinite(alpha):
        raise ValueError(NOT_FINITE)
    basis = Q[: j + 1]
    for _ in range(2):
        w = torch.addmv(w, basis.T, basis @ w, alpha=-1)
    return alpha, w


def _tridiagonal(alphas: Tensor, betas: Tensor, m: int) -> Tensor:
    """The m x m Lanczos matrix T_m from its diagonal and off-diagonal."""
    return torch.diag(alphas[:m]) + torch.diag(betas[: m - 1], 1) + torch.diag(betas[: m - 1], -1)


def _lanczos(op: HessianOperator, k: int, tol: float, n_iter: int, which: str, criterion: str, generator,
             progress: bool) -> tuple[Tensor, Tensor, bool]:
    """Lanczos with full reorthogonalization (classical Gram-Schmidt, twice) in float64.
    Returns the top-k Ritz values (descending by `which`), their Ritz vectors (k, P) and whether
    the stopping rule held for each of them: with criterion "eigenvalue", the error estimate
    min(r_i, r_i^2 / gap_i) <= tol |theta_i|; with "residual", r_i <= tol * max |theta|, where
    r_i = ||H y_i - theta_i y_i|| = beta_m |s_{m,i}|. A Krylov space of dimension P is exact.
    The basis grows by doubling (a run that stops after a few steps never allocates n_iter
    vectors); the m x m tridiagonal problem is solved with NumPy/LAPACK."""
    n = op.numel
    m_max = min(n_iter, n)
    Q = torch.empty(min(m_max, 16), n, dtype=torch.float64, device=op.device)
    alphas = np.zeros(m_max)
    betas = np.zeros(m_max)
    q = _unit_start(op, generator)
    tiny = np.finfo(np.float64).tiny
    converged, theta, S, idx, m = False, None, None, None, 0
    bar = tqdm(total=m_max, desc="lanczos", disable=not progress, leave=False)
    for j in range(m_max):
        if j == len(Q):
            Q = torch.cat([Q, torch.empty(min(len(Q), m_max - j), n, dtype=Q.dtype, device=Q.device)])
        alphas[j], w = _lanczos_step(op, Q, j, q)
        beta = float(torch.linalg.vector_norm(w))
        m = j + 1
        theta, S = _tridiagonal_eigh(alphas[:m], betas[: m - 1])
        scale = max(float(np.abs(theta).max()), tiny)
        bar.update(1)
        if m >= k:
            idx = _top(theta, k, which)
            residual = beta * np.abs(S[m - 1])
            if criterion == "residual":
                done = all(residual[i] <= tol * scale for i in idx)
            else:
                done = all(_eigenvalue_error(theta, residual, i) <= tol * max(abs(theta[i]), tiny) for i in idx)
            if done or m == n:
                converged = True
                break
        if m == m_max:
            break
        if beta <= 1e-12 * scale:  # an invariant subspace: restart orthogonally to it
            q = _unit_start(op, generator, exclude=Q[:m])
            betas[j] = 0.0
        else:
            q = w / beta
            betas[j] = beta
    bar.close()
    if idx is None:  # fewer Lanczos steps than k: cannot happen since k <= P = m_max
        idx = _top(theta, k, which)
    coefficients = torch.from_numpy(np.ascontiguousarray(S[:, idx].T)).to(Q.device)
    vectors = coefficients @ Q[:m]
    vectors = vectors / torch.linalg.vector_norm(vectors, dim=1, keepdim=True)
    return torch.from_numpy(theta[idx].copy()), vectors, converged


def _power(op: HessianOperator, k: int, tol: float, n_iter: int, which: str, generator,
           progress: bool) -> tuple[Tensor, Tensor, bool]:
    """Power iteration with deflation (the iterate is kept orthogonal to the vectors found) and,
    for the largest algebraic eigenvalue, a shift by the dominant negative eigenvalue when that is
    what the plain iteration finds. Stops when ||H v - theta v|| <= tol |theta| (a bound on the
    eigenvalue error with no gap estimate: power iteration has no second Ritz value)."""
    found_vals, found = [], torch.empty(0, op.numel, dtype=torch.float64, device=op.device)
    all_converged = True
    bar = tqdm(total=k, desc="power", disable=not progress, leave=False)

    def run(shift: float) -> tuple[float, Tensor, bool]:
        v = _unit_start(op, generator, exclude=found)
        theta = 0.0
        for _ in range(n_iter):
            hv = op._product_flat(v)
            if len(found):
                hv = hv - found.T @ (found @ hv)
            theta = float(torch.dot(v, hv))
            if not math.isfinite(theta):
                raise ValueError(NOT_FINITE)
            residual = float(torch.linalg.vector_norm(hv - theta * v))
            if residual <= tol * max(abs(theta), torch.finfo(torch.float64).tiny):
                return theta, v, True
            w = hv - shift * v
            if len(found):
                w = w - found.T @ (found @ w)
            norm = torch.linalg.vector_norm(w)
            if norm == 0:
                return theta, v, True
            v = w / norm
        return theta, v, False

    for _ in range(k):
        theta, v, ok = run(0.0)
        if which == "LA" and theta < 0:  # the dominant eigenvalue is negative: shift it to 0
            theta, v, ok = run(theta)
        all_converged &= ok
        found_vals.append(theta)
        found = torch.cat([found, v[None]])
        bar.update(1)
    bar.close()
    values = torch.tensor(found_vals, dtype=torch.float64)
    order = torch.from_numpy(_top(values.numpy(), k, which))
    return values[order], found[order.to(found.device)], all_converged


@renamed_kwargs(loss_fn="closure", max_iter="n_iter")
def hessian_eigenvalues(
    closure: LossClosure | HessianOperator,
    params: Sequence[Tensor] | None = None,
    *,
    k: int = 1,
    method: str = "lanczos",
    which: str = "LA",
    tol: float = 1e-5,
    criterion: str | None = None,
    n_iter: int | None = None,
    return_eigenvectors: bool = False,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> Tensor | Eigenpairs:
    r"""Top-:math:`k` eigenvalues of the Hessian :math:`\nabla^2_\theta L`, by Lanczos or power iteration.

    By default the *largest algebraic* eigenvalues :math:`\lambda_1 \ge \dots \ge \lambda_k`
    (``which="LA"``): the sharpness that papers report, :math:`\lambda_{\max}(H)`, is the top
    algebraic one (away from a minimum the Hessian has negative eigenvalues, which can be larger
    in magnitude). ``which="LM"`` gives those of largest magnitude instead.

    * ``method="lanczos"``: builds the Krylov basis :math:`q_1, Hq_1, \dots` with full
      reorthogonalization (classical Gram-Schmidt applied twice) and the tridiagonal
      :math:`T_m = Q_m^\top H Q_m`, all in float64; the Ritz pairs :math:`(\theta_i, y_i = Q_m s_i)`
      of :math:`T_m` have residuals :math:`r_i = \|H y_i - \theta_i y_i\| = \beta_m |s_{m,i}|`
      at no extra product [golub2013matrix]. One Hessian-vector product per step; by the
      Kaniel-Paige-Saad bound the error of :math:`\theta_1` decays like the inverse square of a
      Chebyshev polynomial, roughly :math:`e^{-4m\sqrt{\gamma}}` with
      :math:`\gamma = (\lambda_1-\lambda_2)/(\lambda_2-\lambda_P)` [saad2011numerical].
    * ``method="power"``: power iteration, one eigenpair at a time, each iterate kept orthogonal to
      the eigenvectors already found (deflation). With ``which="LA"``, when the dominant
      eigenvalue found is negative, the iteration is re-run on :math:`H - \theta I`. Its
      eigenvector converges like :math:`|\lambda_2/\lambda_1|^m` and its Rayleigh quotient like
      :math:`|\lambda_2/\lambda_1|^{2m}`: much slower than Lanczos when the top gap is small.

    **Stopping rule** (``criterion``; :math:`\mathrm{tol}` is checked after every product):

    * ``"eigenvalue"`` (the default without ``return_eigenvectors``): ``tol`` is a *relative
      accuracy of the eigenvalues*. For a
      symmetric :math:`H` and a unit :math:`y` with Rayleigh quotient :math:`\theta` and residual
      :math:`r`, some eigenvalue lies within :math:`r` of :math:`\theta`, and when :math:`\lambda`
      is the only eigenvalue within distance :math:`\delta` of :math:`\theta`,
      :math:`|\lambda - \theta| \le r^2/\delta` (the Kato-Temple inequality)
      [parlett1998symmetric] [saad2011numerical]. Lanczos stops when, for each of the top
      :math:`k` Ritz values,

      .. math:: \min\!\left(r_i,\ \frac{r_i^2}{\delta_i}\right) \le \mathrm{tol}\,|\theta_i|,
         \qquad \delta_i = \min_{j = i \pm 1} \bigl(|\theta_j - \theta_i| - r_j\bigr),

      the gap :math:`\delta_i` being *estimated* from the neighbouring Ritz values
      :math:`\theta_{i\pm1}`, each moved towards :math:`\theta_i` by its own residual, and only
      from a neighbour that is itself resolved, :math:`r_j \le 0.02\,|\theta_j - \theta_i|`
      (otherwise :math:`\delta_i = 0` and the rule is :math:`r_i \le \mathrm{tol}\,|\theta_i|`;
      the second term is used only when :math:`\delta_i > r_i`). The :math:`r_i` part is a
      bound (on the distance to the *nearest* eigenvalue); the :math:`r_i^2/\delta_i` part is a
      bound only if the estimated gap is no larger than the true one. That holds once the
      neighbouring eigenvalues are resolved, but not while the Krylov space has not separated an
      eigenvalue close to :math:`\theta_i`: a top cluster narrower than about
      :math:`2\sqrt{\mathrm{tol}\,|\theta_i|\,\delta_i}` is seen as one Ritz value, a mixture
      of the cluster's eigenvectors whose residual is below the cluster's width. The
      separation condition (0.02, chosen on synthetic spectra with top gaps of 0.1% to 5%)
      makes this rare; it cannot exclude it, and neither can the residual rule, which shares
      the failure where the start vector has a tiny component on the top eigenvector and the
      iteration settles on the second one (misconvergence). Power iteration has no second Ritz
      value, hence no gap estimate: it stops at the bound :math:`r \le \mathrm{tol}\,|\theta|`.
      Since the error is about :math:`r^2/\delta` while the residual is :math:`r`, this rule
      stops Lanczos earlier than the residual rule for the same ``tol``; its eigenvectors are
      accurate to an angle of about :math:`r/\delta \approx \sqrt{\mathrm{tol}\,|\theta|/\delta}`.
    * ``"residual"`` (the default with ``return_eigenvectors``): stop when every residual of the
      top :math:`k` is below :math:`\mathrm{tol}\cdot\max_i|\theta_i|` (for power iteration
      :math:`\mathrm{tol}\,|\theta|`): eigenvectors with a small residual (an angle of at most
      about :math:`r/\delta`), and eigenvalues within :math:`r_i` of an eigenvalue (so ``tol``
      still bounds the eigenvalue error, relative to :math:`\max_i|\theta_i|`), usually much
      closer, about :math:`r_i^2/\delta`.

    With either rule a Krylov space of dimension :math:`P` gives the exact spectrum and stops.
    Lanczos with one start vector sees one copy of a repeated eigenvalue (until the Krylov space
    is exhausted); both methods are iterative estimates: with ``which="LA"`` the returned top
    eigenvalue is a Rayleigh quotient, a lower bound of :math:`\lambda_1` up to rounding, never
    an upper bound.

    Args:
        closure: zero-argument callable returning the scalar loss, or a :class:`HessianOperator`
            (then ``params`` may be omitted; its product count grows). Formerly ``loss_fn``.
        params: tensors (requiring grad) the Hessian is taken in.
        k: number of eigenvalues, at most the number of parameters :math:`P`.
        method: ``"lanczos"`` or ``"power"``.
        which: ``"LA"`` (largest algebraic) or ``"LM"`` (largest magnitude).
        tol: the tolerance of ``criterion``, in (0, 1). Products are computed in the parameters'
            dtype: in float32, tolerances much below ~1e-6 may not be reachable.
        criterion: ``"eigenvalue"`` (estimated relative eigenvalue error) or ``"residual"``
            (relative residual); default (``None``): ``"residual"`` with ``return_eigenvectors``,
            else ``"eigenvalue"``.
        n_iter: Lanczos steps (default ``min(P, max(100, 4k))``) or power iterations per
            eigenvalue (default 1000). A warning is issued when ``tol`` was not reached.
            Formerly ``max_iter``.
        return_eigenvectors: also return the unit eigenvectors.
        generator: seeds the start vectors (drawn on the CPU, then moved to the parameters' device).
        progress: a progress bar (``None``: unless ``TQDM_DISABLE`` is set).

    Returns:
        Eigenvalues ``(k,)`` in decreasing order (of value for ``"LA"``, of magnitude for
        ``"LM"``), in the parameters' dtype and on their device; with ``return_eigenvectors``, an
        :class:`Eigenpairs` ``(eigenvalues, eigenvectors)``, the eigenvectors a list of ``k``
        tuples shaped like ``params`` (it unpacks like the former ``(values, vectors)`` tuple).

    Raises:
        TypeError or ValueError: each naming the argument, for params that do not require grad; ``k`` < 1
            or larger than :math:`P`; unknown ``method``, ``which`` or ``criterion``; ``tol``
            outside (0, 1); ``n_iter`` < 1 (< ``k`` for Lanczos); a closure that does not return a
            finite scalar, or whose Hessian-vector products are not finite.
    """
    method = check_choice(method, "method", ("lanczos", "power"))
    which = check_choice(which, "which", ("LA", "LM"))
    return_eigenvectors = _check_bool(return_eigenvectors, "return_eigenvectors")
    if criterion is None:
        criterion = "residual" if return_eigenvectors else "eigenvalue"
    criterion = check_choice(criterion, "criterion", ("eigenvalue", "residual"))
    tol = check_tol(tol)
    check_int(k, "k", 1)
    if n_iter is not None:
        check_int(n_iter, "n_iter", 1)
    generator = check_generator(generator)
    progress = check_progress(progress)
    op = _operator(closure, params)
    if k > op.numel:
        raise ValueError(f"k must be at most the number of parameters ({op.numel}), got {k!r}")
    if method == "lanczos":
        steps = n_iter if n_iter is not None else max(100, 4 * k)
        if steps < k:
            raise ValueError(f"n_iter must be at least k={k} for Lanczos, got {n_iter!r}")
        values, vectors, converged = _lanczos(op, k, tol, steps, which, criterion, generator, progress)
    else:
        steps = n_iter or 1000
        values, vectors, converged = _power(op, k, tol, steps, which, generator, progress)
    if not converged:
        warnings.warn(f"hessian_eigenvalues ({method}) stopped before reaching tol={tol:g} "
                      f"(criterion={criterion!r}, n_iter={steps}); the values are estimates",
                      RuntimeWarning, stacklevel=3)
    values = values.to(dtype=op.dtype, device=op.device)
    if not return_eigenvectors:
        return values
    return Eigenpairs(values, [op.unflatten(v.to(op.dtype)) for v in vectors])


# ----------------------------------------------------------------------------- trace


def _probes(op: HessianOperator, count: int, generator) -> Tensor:
    return _rademacher((op.numel, count), generator, torch.float64, op.device)


def _apply(op: HessianOperator, V: Tensor, batch_size: int) -> Tensor:
    return torch.cat([op._matmat(V[:, i : i + batch_size]) for i in range(0, V.shape[1], batch_size)], dim=1)


@renamed_kwargs(loss_fn="closure")
def hessian_trace(
    closure: LossClosure | HessianOperator,
    params: Sequence[Tensor] | None = None,
    *,
    n_samples: int = 100,
    method: str = "hutchinson",
    return_stderr: bool = False,
    batch_size: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor | TraceEstimate:
    r"""Stochastic estimate of the Hessian trace :math:`\operatorname{tr}(\nabla^2_\theta L)`.

    * ``"hutchinson"`` [hutchinson1989stochastic]: with Rademacher probes :math:`z_i`
      (:math:`\mathbb{E}\,zz^\top = I`), :math:`\widehat{t} = \frac1m\sum_i z_i^\top H z_i`,
      unbiased, of variance :math:`\frac2m(\|H\|_F^2 - \sum_j H_{jj}^2)`; its standard error is the
      sample standard deviation over :math:`\sqrt m`.
    * ``"hutch++"`` [meyer2021hutch]: a third of the products sketch :math:`Q = \operatorname{qr}(HS)`,
      a third compute :math:`\operatorname{tr}(Q^\top H Q)` exactly, and the last third estimate the
      trace of the deflated rest :math:`(I - QQ^\top) H (I - QQ^\top)` by Hutchinson; unbiased, with
      an error :math:`O(1/m)` instead of :math:`O(1/\sqrt m)` when the spectrum is dominated by a
      few large eigenvalues, as a network's Hessian usually is. Its standard error is that of the
      Hutchinson part.

    Args:
        closure: zero-argument callable returning the scalar loss, or a :class:`HessianOperator`
            (formerly ``loss_fn``).
        params: tensors (requiring grad) the Hessian is taken in.
        n_samples: Hessian-vector products to spend (at least 2 for Hutchinson, 3 for Hutch++).
        method: ``"hutchinson"`` or ``"hutch++"``.
        return_stderr: also return the estimated standard error.
        batch_size: products per batched backward pass (see :meth:`HessianOperator.matmat`).
        generator: seeds the probes (drawn on the CPU, then moved to the parameters' device).

    Returns:
        The estimate (0-dim, the parameters' dtype); with ``return_stderr``, a
        :class:`TraceEstimate` ``(trace, stderr)`` (it unpacks like the former tuple).

    Raises:
        TypeError or ValueError: each naming the argument, for params that do not require grad,
            ``n_samples`` too small, unknown ``method``, ``batch_size`` < 1; a closure that does
            not return a finite scalar, or whose Hessian-vector products are not finite.
    """
    method = check_choice(method, "method", ("hutchinson", "hutch++"))
    check_int(n_samples, "n_samples", 2 if method == "hutchinson" else 3)
    check_int(batch_size, "batch_size", 1)
    return_stderr = _check_bool(return_stderr, "return_stderr")
    generator = check_generator(generator)
    op = _operator(closure, params)
    if method == "hutchinson":
        Z = _probes(op, n_samples, generator)
        samples = (Z * _apply(op, Z, batch_size)).sum(dim=0)
        estimate = samples.mean()
        stderr = samples.std() / math.sqrt(n_samples)
    else:
        s = n_samples // 3
        g = n_samples - 2 * s
        S = _probes(op, s, generator)
        Q, _ = torch.linalg.qr(_apply(op, S, batch_size))
        exact = (Q * _apply(op, Q, batch_size)).sum()
        G = _probes(op, g, generator)
        G = G - Q @ (Q.T @ G)
        samples = (G * _apply(op, G, batch_size)).sum(dim=0)
        estimate = exact + samples.mean()
        stderr = samples.std() / math.sqrt(g) if g > 1 else torch.tensor(float("nan"), dtype=torch.float64)
    if not torch.isfinite(estimate):
        raise ValueError(NOT_FINITE)
    estimate = estimate.to(dtype=op.dtype)
    return TraceEstimate(estimate, stderr.to(dtype=op.dtype)) if return_stderr else estimate


# ----------------------------------------------------------------------------- spectral density


@_document_fields
class SpectralDensity(NamedTuple):
    """The output of :func:`hessian_density`."""

    grid: Tensor
    density: Tensor
    nodes: Tensor
    weights: Tensor

    __field_docs__ = {
        'grid': '``(G,)`` points where the density is evaluated',
        'density': '``(G,)`` Gaussian-broadened density, integrating to ~1 over the grid',
        'nodes': '``(n_vectors, n_iter)`` Ritz values (quadrature nodes) of each run',
        'weights': '``(n_vectors, n_iter)`` quadrature weights, each row summing to 1',
    }


def _lanczos_tridiagonal(op: HessianOperator, m: int, generator) -> tuple[Tensor, Tensor]:
    """m Lanczos steps from a normalized Rademacher vector, full reorthogonalization; the nodes
    and weights (squared first components) of the Gauss quadrature of T_m."""
    n = op.numel
    q = _rademacher((n,), generator, torch.float64, op.device) / math.sqrt(n)
    Q = torch.empty(m, n, dtype=torch.float64, device=op.device)
    alphas, betas = torch.zeros(m, dtype=torch.float64), torch.zeros(max(m - 1, 0), dtype=torch.float64)
    for j in range(m):
        alphas[j], w = _lanczos_step(op, Q, j, q)
        if j == m - 1:
            break
        beta = torch.linalg.vector_norm(w)
        if float(beta) <= 1e-12 * max(float(alphas[: j + 1].abs().max()), 1e-300):
            m = j + 1  # the start vector lies in an invariant subspace: the quadrature is exact
            break
        betas[j] = beta.cpu()
        q = w / beta
    theta, S = torch.linalg.eigh(_tridiagonal(alphas, betas, m))
    return theta, S[0].pow(2)


@renamed_kwargs(loss_fn="closure", n_lanczos="n_iter")
def hessian_density(
    closure: LossClosure | HessianOperator,
    params: Sequence[Tensor] | None = None,
    *,
    n_iter: int = 80,
    n_vectors: int = 1,
    grid: Tensor | int = 1000,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> SpectralDensity:
    r"""Spectral density of the Hessian by stochastic Lanczos quadrature (SLQ).

    The empirical spectral density :math:`\phi(t) = \frac1P\sum_j \delta(t - \lambda_j)`, smoothed
    by a Gaussian :math:`g_\sigma`, is :math:`\phi_\sigma(t) = \frac1P\operatorname{tr}\,g_\sigma(tI - H)
    = \mathbb{E}_v\, v^\top g_\sigma(tI - H)\, v` for random unit :math:`v`. For each of
    ``n_vectors`` normalized Rademacher vectors, :math:`m` Lanczos steps give :math:`T_m`, with
    eigenpairs :math:`(\theta_j, s_j)`, and the Gauss quadrature
    :math:`v^\top f(H) v \approx \sum_j \tau_j f(\theta_j)`, :math:`\tau_j = s_{1j}^2`, exact for
    polynomials of degree below :math:`2m` [golub2013matrix] [ghorbani2019investigation]. The
    result averages :math:`\sum_j \tau_j g_\sigma(t - \theta_j)` over the vectors: a mixture of
    Gaussians of total mass 1.

    Args:
        closure: zero-argument callable returning the scalar loss, or a :class:`HessianOperator`
            (formerly ``loss_fn``).
        params: tensors (requiring grad) the Hessian is taken in.
        n_iter: Lanczos steps per vector (capped at :math:`P`; ``n_iter * n_vectors``
            Hessian-vector products). Formerly ``n_lanczos``.
        n_vectors: random start vectors averaged.
        grid: the points ``(G,)`` where the density is evaluated, or their number: then an even
            grid from the smallest node minus :math:`5\sigma` to the largest plus :math:`5\sigma`
            (so that the density integrates to 1 up to ~1e-6 and the grid resolution).
        sigma: the broadening; default 1% of the node range (or of its largest magnitude when all
            nodes are equal, or 1e-3 when they are all 0).
        generator: seeds the start vectors (drawn on the CPU, then moved to the parameters' device).
        progress: a progress bar over the vectors (``None``: unless ``TQDM_DISABLE`` is set).

    Returns:
        A :class:`SpectralDensity` ``(grid, density, nodes, weights)``; ``grid`` and ``density``
        in float64 on the CPU, ``nodes`` and ``weights`` ``(n_vectors, m)``.

    Raises:
        TypeError or ValueError: each naming the argument, for params that do not require grad,
            ``n_iter`` or ``n_vectors`` < 1, ``sigma`` <= 0, a grid with fewer than 2 points or
            non-finite points; a closure that does not return a finite scalar, or whose
            Hessian-vector products are not finite.
    """
    check_int(n_iter, "n_iter", 1)
    check_int(n_vectors, "n_vectors", 1)
    if sigma is not None:
        sigma = check_positive(sigma, "sigma")
    if isinstance(grid, Tensor):
        check_tensor(grid, "grid", min_dims=1, max_dims=1)
        if grid.numel() < 2:
            raise ValueError(f"grid must be an int >= 2 or a 1-D tensor of >= 2 points, got shape {tuple(grid.shape)}")
    else:
        check_int(grid, "grid", 2)
    generator = check_generator(generator)
    progress = check_progress(progress)
    op = _operator(closure, params)
    m = min(n_iter, op.numel)
    nodes = torch.zeros(n_vectors, m, dtype=torch.float64)
    weights = torch.zeros(n_vectors, m, dtype=torch.float64)
    for i in tqdm(range(n_vectors), desc="SLQ", disable=not progress, leave=False):
        theta, tau = _lanczos_tridiagonal(op, m, generator)
        nodes[i, : len(theta)] = theta.cpu()
        weights[i, : len(tau)] = tau.cpu()
        if len(theta) < m:  # an early invariant subspace: pad with zero-weight copies
            nodes[i, len(theta):] = theta[-1].cpu()
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        spread = hi - lo if hi > lo else max(abs(hi), abs(lo))
        sigma = 0.01 * spread if spread > 0 else 1e-3
    if isinstance(grid, int):
        grid = torch.linspace(lo - 5 * sigma, hi + 5 * sigma, grid, dtype=torch.float64)
    else:
        grid = grid.detach().to(dtype=torch.float64, device="cpu")
    z = (grid[:, None, None] - nodes[None]) / sigma
    kernel = torch.exp(-0.5 * z**2) / (sigma * math.sqrt(2 * math.pi))
    density = (kernel * weights[None]).sum(dim=2).mean(dim=1)
    return SpectralDensity(grid, density, nodes, weights)

