r"""Curvature of the loss: Hessian spectra, sharpness, SAM, curvature regularizers, landscapes.

The book's third view of stability: how the loss moves when the *weights* (or the *inputs*)
move. Everything here works on the Hessian :math:`H = \nabla^2_\theta L(\theta)` without ever
forming it, through Hessian-vector products :math:`v \mapsto Hv` computed by double
backpropagation (Pearlmutter's trick): with :math:`g = \nabla_\theta L` built with
``create_graph=True``, :math:`Hv = \nabla_\theta (g^\top v)`, one extra backward pass.

* :func:`hvp`, :func:`input_hvp` and :class:`HessianOperator` (the gradient graph built once and
  reused for many products, which it counts);
* :func:`hessian_eigenvalues`: top-:math:`k` eigenvalues by Lanczos with full
  reorthogonalization or by power iteration with deflation [golub2013matrix];
* :func:`hessian_trace`: Hutchinson's estimator [hutchinson1989stochastic] and Hutch++
  [meyer2021hutch];
* :func:`hessian_density`: the spectral density by stochastic Lanczos quadrature
  [ghorbani2019investigation];
* :func:`sharpness` and :func:`m_sharpness`: the worst loss increase in a ball around the weights
  [keskar2017large] [foret2021sharpness], optionally in the adaptive geometry of ASAM
  [kwon2021asam], and the optimizer :class:`SAM`;
* regularizers (differentiable scalars to add to a training loss):
  :func:`gradient_norm_penalty`, :func:`input_curvature_penalty` (CURE,
  [moosavi2019robustness]) and :func:`hessian_trace_penalty`;
* :func:`loss_landscape` along :func:`filter_normalized_direction` or :func:`eigen_directions`
  [li2018visualizing];
* :func:`random_perturbation_loss`: the loss under random weight perturbations (average-case
  sharpness).

Conventions. A *loss closure* ``loss_fn`` is a zero-argument callable returning the scalar loss
(it closes over the model and the data); ``params`` is a sequence of the tensors (requiring grad)
the curvature is taken with respect to; a vector "shaped like params" is a tuple of tensors with
their shapes. Random numbers are drawn on the CPU from ``generator`` and moved to the parameters'
device, so that results do not depend on the device. Krylov work (Lanczos bases, tridiagonal
matrices, Hutch++ sketches) is done in float64 whatever the parameters' dtype; Hessian-vector
products are computed in the parameters' dtype.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from tqdm import tqdm

from stabilitylab._checks import check_int as _check_int

__all__ = [
    "HessianOperator",
    "hvp",
    "input_hvp",
    "hessian_eigenvalues",
    "hessian_trace",
    "SpectralDensity",
    "hessian_density",
    "sharpness",
    "m_sharpness",
    "sharpness_during_training",
    "SAM",
    "gradient_norm_penalty",
    "input_curvature_penalty",
    "hessian_trace_penalty",
    "filter_normalized_direction",
    "eigen_directions",
    "loss_landscape",
    "random_perturbation_loss",
]

LossClosure = Callable[[], Tensor]

# ----------------------------------------------------------------------------- argument checks


def _check_params(params, name: str = "params") -> tuple[Tensor, ...]:
    if isinstance(params, Tensor):
        params = (params,)
    if not isinstance(params, Iterable):
        raise TypeError(f"{name} must be a sequence of tensors, got {type(params).__name__}")
    params = tuple(params)
    if not params:
        raise ValueError(f"{name} must hold at least one tensor, got an empty sequence")
    for i, p in enumerate(params):
        if not isinstance(p, Tensor):
            raise TypeError(f"{name}[{i}] must be a torch.Tensor, got {type(p).__name__}")
        if not p.is_floating_point():
            raise ValueError(f"{name}[{i}] must have a floating dtype, got {p.dtype}")
        if not p.requires_grad:
            raise ValueError(f"{name}[{i}] (shape {tuple(p.shape)}) does not require grad, got requires_grad=False")
    return params


def _check_vector(v, params: Sequence[Tensor], name: str = "v") -> tuple[Tensor, ...]:
    if isinstance(v, Tensor):
        v = (v,)
    if not isinstance(v, (tuple, list)) or not all(isinstance(t, Tensor) for t in v):
        raise TypeError(f"{name} must be a tuple of tensors shaped like params, got {type(v).__name__}")
    if len(v) != len(params):
        raise ValueError(f"{name} must hold {len(params)} tensors (one per parameter), got {len(v)}")
    for i, (t, p) in enumerate(zip(v, params)):
        if t.shape != p.shape:
            raise ValueError(f"{name}[{i}] must have the shape {tuple(p.shape)} of params[{i}], got {tuple(t.shape)}")
    return tuple(t.to(dtype=p.dtype, device=p.device) for t, p in zip(v, params))


def _check_positive(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


def _check_tol(tol) -> float:
    if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
        raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
    return float(tol)


def _check_choice(value, name: str, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def _scalar_loss(loss_fn, name: str = "loss_fn") -> Tensor:
    if not callable(loss_fn):
        raise TypeError(f"{name} must be a zero-argument callable returning the loss, got {type(loss_fn).__name__}")
    loss = loss_fn()
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = tuple(loss.shape) if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"{name} must return a scalar tensor, got {shape}")
    return loss.reshape(())


def _randn(shape, generator, like: Tensor) -> Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype=like.dtype, device=like.device)


def _rademacher(shape, generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8)
    return (2 * bits - 1).to(dtype=dtype, device=device)


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _norm(a: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(sum(x.pow(2).sum() for x in a))


# ----------------------------------------------------------------------------- Hessian-vector products


def _grads(loss: Tensor, params: Sequence[Tensor], create_graph: bool) -> tuple[Tensor, ...]:
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, params))


def _grad_of(outputs: Sequence[Tensor], params: Sequence[Tensor], grad_outputs: Sequence[Tensor], *,
             create_graph: bool = False, retain_graph: bool = True, batched: bool = False) -> tuple[Tensor, ...]:
    """Sum_i grad(outputs_i . grad_outputs_i) w.r.t. params; outputs without a graph contribute 0."""
    pairs = [(o, w) for o, w in zip(outputs, grad_outputs) if o.requires_grad]
    if not pairs:
        lead = (grad_outputs[0].shape[0],) if batched else ()
        return tuple(torch.zeros(lead + p.shape, dtype=p.dtype, device=p.device) for p in params)
    out = torch.autograd.grad(
        [o for o, _ in pairs], params, grad_outputs=[w for _, w in pairs], retain_graph=retain_graph,
        create_graph=create_graph, allow_unused=True, is_grads_batched=batched,
    )
    lead = (grad_outputs[0].shape[0],) if batched else ()
    return tuple(torch.zeros(lead + p.shape, dtype=p.dtype, device=p.device) if h is None else h
                 for h, p in zip(out, params))


class HessianOperator:
    r"""The Hessian of a loss with respect to parameters, as a linear operator.

    The loss and its gradient :math:`g = \nabla_\theta L` (with ``create_graph=True``) are
    computed once, at construction; each product :math:`Hv = \nabla_\theta(g^\top v)` is then one
    backward pass through that graph, without re-running the forward pass. Products are counted
    in :attr:`n_products` (a batch of :math:`b` vectors counts :math:`b`).

    Args:
        loss_fn: zero-argument callable returning the scalar loss.
        params: the tensors (requiring grad, one dtype and device) the Hessian is taken in.

    Attributes:
        params: the parameters, a tuple.
        loss: the loss value (detached).
        grad: the gradient, a tuple shaped like params (detached).
        numel: the number of parameters :math:`P` (the Hessian is :math:`P \times P`).
        n_products: Hessian-vector products computed so far.

    Raises:
        TypeError or ValueError: params that are not tensors requiring grad, of mixed dtypes or
            devices; a ``loss_fn`` that does not return a scalar.
    """

    def __init__(self, loss_fn: LossClosure, params: Sequence[Tensor]):
        self.params = _check_params(params)
        first = self.params[0]
        if any(p.dtype != first.dtype or p.device != first.device for p in self.params):
            raise ValueError("params must share one dtype and device, got "
                             f"{sorted({(str(p.dtype), str(p.device)) for p in self.params})}")
        self.dtype, self.device = first.dtype, first.device
        loss = _scalar_loss(loss_fn)
        self._graph_grads = _grads(loss, self.params, create_graph=True)
        self.loss = loss.detach()
        self.grad = tuple(g.detach() for g in self._graph_grads)
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.numel = sum(self.sizes)
        self.n_products = 0
        self._batched_ok = True

    def __repr__(self) -> str:
        return f"HessianOperator(numel={self.numel}, dtype={self.dtype}, n_products={self.n_products})"

    # vectors shaped like params <-> flat vectors
    def flatten(self, v: Sequence[Tensor]) -> Tensor:
        """A vector shaped like params as one flat ``(P,)`` tensor."""
        return torch.cat([t.reshape(-1) for t in v])

    def unflatten(self, flat: Tensor) -> tuple[Tensor, ...]:
        """A flat ``(P,)`` (or ``(b, P)``) tensor as tensors shaped like params (``(b, *shape)``)."""
        lead = flat.shape[:-1]
        return tuple(c.reshape(*lead, *s) for c, s in zip(flat.split(self.sizes, dim=-1), self.shapes))

    def matvec(self, v: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """:math:`Hv` for ``v`` shaped like params; returns a tuple shaped like params."""
        v = _check_vector(v, self.params)
        self.n_products += 1
        return tuple(h.detach() for h in _grad_of(self._graph_grads, self.params, v))

    def matvec_flat(self, v: Tensor) -> Tensor:
        """:math:`Hv` for a flat ``(P,)`` vector (any dtype: cast to the parameters' and back)."""
        out = self.matvec(self.unflatten(v.to(dtype=self.dtype, device=self.device)))
        return self.flatten(out).to(v.dtype)

    def matmat(self, V: Tensor) -> Tensor:
        r""":math:`HV` for a flat ``(P, b)`` matrix, through one batched backward pass
        (``is_grads_batched``, vmap over the backward) when the model's operations support it,
        else column by column. Returns ``(P, b)`` in ``V``'s dtype."""
        if V.ndim != 2 or V.shape[0] != self.numel:
            raise ValueError(f"V must have shape ({self.numel}, b), got {tuple(V.shape)}")
        b = V.shape[1]
        rows = V.T.to(dtype=self.dtype, device=self.device).contiguous()
        if b > 1 and self._batched_ok:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = _grad_of(self._graph_grads, self.params, self.unflatten(rows), batched=True)
                self.n_products += b
                return torch.cat([h.reshape(b, -1) for h in out], dim=1).T.to(V.dtype)
            except RuntimeError:  # an operation without a batching rule for its double backward
                self._batched_ok = False
        return torch.stack([self.matvec_flat(rows[i]) for i in range(b)], dim=1).to(V.dtype)

    __call__ = matvec


def _operator(loss_fn, params) -> HessianOperator:
    if isinstance(loss_fn, HessianOperator):
        if params is not None and [id(p) for p in params] != [id(p) for p in loss_fn.params]:
            raise ValueError("params must be None (or the operator's own) when loss_fn is a HessianOperator")
        return loss_fn
    if params is None:
        raise ValueError("params must be given (a sequence of tensors requiring grad), got None")
    return HessianOperator(loss_fn, params)


def hvp(loss_fn: LossClosure, params: Sequence[Tensor], v: Sequence[Tensor]) -> tuple[Tensor, ...]:
    r"""Hessian-vector product :math:`\nabla^2_\theta L(\theta)\, v` by double backpropagation.

    With :math:`g(\theta) = \nabla_\theta L` computed with ``create_graph=True``,
    :math:`Hv = \nabla_\theta\,(g(\theta)^\top v)`: one forward, two backward passes, and no
    :math:`P \times P` matrix. For many products at the same point, build a
    :class:`HessianOperator` once instead.

    Args:
        loss_fn: zero-argument callable returning the scalar loss.
        params: the tensors :math:`\theta` (requiring grad).
        v: a tuple of tensors shaped like ``params``.

    Returns:
        :math:`Hv`, a tuple of tensors shaped like ``params`` (detached).

    Raises:
        TypeError or ValueError: params that do not require grad; ``v`` of the wrong length or shapes;
            a ``loss_fn`` that does not return a scalar.

    References:
        [pearlmutter1994fast].
    """
    params = _check_params(params)
    v = _check_vector(v, params)
    grads = _grads(_scalar_loss(loss_fn), params, create_graph=True)
    return tuple(h.detach() for h in _grad_of(grads, params, v, retain_graph=False))


def input_hvp(loss_fn: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, *, batched: bool = False,
              create_graph: bool = False) -> Tensor:
    r"""Product of the Hessian with respect to the *input*, :math:`\nabla^2_x \ell(x)\, v`.

    The input-space curvature that CURE regularizes [moosavi2019robustness]: for a loss summed
    over a batch of independent examples, the Hessian is block-diagonal across examples, so one
    product with a ``v`` of the batch's shape gives every example's product at once.

    Args:
        loss_fn: callable ``x -> scalar loss``.
        x: the input, any shape.
        v: a tensor of ``x``'s shape, or with ``batched``, ``(b, *x.shape)``: ``b`` products in one
            batched backward pass.
        batched: ``v`` holds a leading batch of vectors.
        create_graph: keep the graph of the result (to differentiate it further, e.g. with respect
            to the model's parameters).

    Returns:
        :math:`Hv`, of ``v``'s shape.

    Raises:
        TypeError or ValueError: ``x`` not a floating tensor, ``v`` of the wrong shape, a ``loss_fn``
            that does not return a scalar.
    """
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating torch.Tensor, got {type(x).__name__ if not isinstance(x, Tensor) else x.dtype}")
    if not isinstance(v, Tensor):
        raise TypeError(f"v must be a torch.Tensor, got {type(v).__name__}")
    expected = (v.shape[0], *x.shape) if batched and v.ndim == x.ndim + 1 else tuple(x.shape)
    if tuple(v.shape) != tuple(expected) or (batched and v.ndim != x.ndim + 1):
        raise ValueError(f"v must have shape {'(b, ' if batched else ''}{tuple(x.shape)}{')' if batched else ''}, "
                         f"got {tuple(v.shape)}")
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = _scalar_loss(lambda: loss_fn(leaf))
        (g,) = _grads(loss, (leaf,), create_graph=True)
        (h,) = _grad_of((g,), (leaf,), (v.to(dtype=x.dtype, device=x.device),), create_graph=create_graph,
                        retain_graph=create_graph, batched=batched)
    return h if create_graph else h.detach()


# ----------------------------------------------------------------------------- eigenvalues


def _top(theta: Tensor, k: int, which: str) -> Tensor:
    key = theta if which == "LA" else theta.abs()
    return torch.argsort(key, descending=True)[:k]


def _unit_start(op: HessianOperator, generator, exclude: Tensor | None = None) -> Tensor:
    q = torch.randn(op.numel, generator=generator, dtype=torch.float64).to(op.device)
    if exclude is not None and len(exclude):
        for _ in range(2):
            q = q - exclude.T @ (exclude @ q)
    return q / torch.linalg.vector_norm(q)


_SEPARATED = 0.02  # a neighbouring Ritz value counts as resolved when its residual is below this fraction of its distance


def _eigenvalue_errors(theta: Tensor, residual: Tensor) -> Tensor:
    """Error estimates min(r_i, r_i^2 / gap_i) of the Ritz values `theta` (ascending) with residual
    norms `residual`. gap_i is the distance from theta_i to its neighbouring Ritz values theta_j,
    each moved towards theta_i by its residual r_j, and counted only when that neighbour is
    resolved (r_j <= _SEPARATED |theta_j - theta_i|; otherwise the gap on that side is taken as 0).
    Where the gap is not larger than r_i, or theta_i has no neighbour, the estimate is r_i."""
    m = len(theta)
    if m == 1:
        return residual.clone()
    inf = torch.full((1,), math.inf, dtype=theta.dtype)
    zero = torch.zeros((), dtype=theta.dtype)
    d = theta[1:] - theta[:-1]  # distance between consecutive Ritz values
    above = torch.where(residual[1:] <= _SEPARATED * d, d - residual[1:], zero)  # to the next one up
    below = torch.where(residual[:-1] <= _SEPARATED * d, d - residual[:-1], zero)  # to the next one down
    gap = torch.minimum(torch.cat([above, inf]), torch.cat([inf, below]))
    return torch.where(gap > residual, residual.pow(2) / gap, residual)


def _lanczos_step(op: HessianOperator, Q: Tensor, j: int, q: Tensor) -> tuple[Tensor, Tensor]:
    """Store the unit vector q as the j-th Lanczos vector; return alpha_j = q^T H q and H q
    orthogonalized against the j + 1 vectors so far (classical Gram-Schmidt, twice)."""
    Q[j] = q
    w = op.matvec_flat(q)
    alpha = torch.dot(w, q).cpu()
    basis = Q[: j + 1]
    for _ in range(2):
        w = w - basis.T @ (basis @ w)
    return alpha, w


def _tridiagonal(alphas: Tensor, betas: Tensor, m: int) -> Tensor:
    """The m x m Lanczos matrix T_m from its diagonal and off-diagonal."""
    return torch.diag(alphas[:m]) + torch.diag(betas[: m - 1], 1) + torch.diag(betas[: m - 1], -1)


def _lanczos(op: HessianOperator, k: int, tol: float, max_iter: int, which: str, criterion: str, generator,
             progress: bool) -> tuple[Tensor, Tensor, bool]:
    """Lanczos with full reorthogonalization (classical Gram-Schmidt, twice) in float64.
    Returns the top-k Ritz values (descending by `which`), their Ritz vectors (k, P) and whether
    the stopping rule held for each of them: with criterion "eigenvalue", the error estimate
    min(r_i, r_i^2 / gap_i) <= tol |theta_i|; with "residual", r_i <= tol * max |theta|, where
    r_i = ||H y_i - theta_i y_i|| = beta_m |s_{m,i}|. A Krylov space of dimension P is exact."""
    n = op.numel
    m_max = min(max_iter, n)
    Q = torch.empty(m_max, n, dtype=torch.float64, device=op.device)
    alphas = torch.zeros(m_max, dtype=torch.float64)
    betas = torch.zeros(m_max, dtype=torch.float64)
    q = _unit_start(op, generator)
    tiny = torch.finfo(torch.float64).tiny
    converged, theta, S, idx, m = False, None, None, None, 0
    bar = tqdm(total=m_max, desc="lanczos", disable=not progress, leave=False)
    for j in range(m_max):
        alphas[j], w = _lanczos_step(op, Q, j, q)
        beta = torch.linalg.vector_norm(w).cpu()
        m = j + 1
        theta, S = torch.linalg.eigh(_tridiagonal(alphas, betas, m))
        scale = theta.abs().max().clamp_min(tiny)
        bar.update(1)
        if m >= k:
            idx = _top(theta, k, which)
            residual = beta * S[m - 1].abs()
            if criterion == "residual":
                done = residual[idx] <= tol * scale
            else:
                done = _eigenvalue_errors(theta, residual)[idx] <= tol * theta[idx].abs().clamp_min(tiny)
            if bool(done.all()) or m == n:
                converged = True
                break
        if m == m_max:
            break
        if beta <= 1e-12 * scale:  # an invariant subspace: restart orthogonally to it
            q = _unit_start(op, generator, exclude=Q[:m])
            betas[j] = 0.0
        else:
            q = w / beta.to(w.device)
            betas[j] = beta
    bar.close()
    if idx is None:  # fewer Lanczos steps than k: cannot happen since k <= P = m_max
        idx = _top(theta, k, which)
    vectors = (S[:, idx].T.to(Q.device) @ Q[:m])
    vectors = vectors / torch.linalg.vector_norm(vectors, dim=1, keepdim=True)
    return theta[idx], vectors, converged


def _power(op: HessianOperator, k: int, tol: float, max_iter: int, which: str, generator,
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
        for _ in range(max_iter):
            hv = op.matvec_flat(v)
            if len(found):
                hv = hv - found.T @ (found @ hv)
            theta = float(torch.dot(v, hv))
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
    order = _top(values, k, which)
    return values[order], found[order.to(found.device)], all_converged


def hessian_eigenvalues(
    loss_fn: LossClosure | HessianOperator,
    params: Sequence[Tensor] | None = None,
    *,
    k: int = 1,
    method: str = "lanczos",
    which: str = "LA",
    tol: float = 1e-5,
    criterion: str | None = None,
    max_iter: int | None = None,
    return_eigenvectors: bool = False,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor | tuple[Tensor, list[tuple[Tensor, ...]]]:
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
        loss_fn: zero-argument callable returning the scalar loss, or a :class:`HessianOperator`
            (then ``params`` may be omitted; its product count grows).
        params: tensors (requiring grad) the Hessian is taken in.
        k: number of eigenvalues, at most the number of parameters :math:`P`.
        method: ``"lanczos"`` or ``"power"``.
        which: ``"LA"`` (largest algebraic) or ``"LM"`` (largest magnitude).
        tol: the tolerance of ``criterion``, in (0, 1). Products are computed in the parameters'
            dtype: in float32, tolerances much below ~1e-6 may not be reachable.
        criterion: ``"eigenvalue"`` (estimated relative eigenvalue error) or ``"residual"``
            (relative residual); default (``None``): ``"residual"`` with ``return_eigenvectors``,
            else ``"eigenvalue"``.
        max_iter: Lanczos steps (default ``min(P, max(100, 4k))``) or power iterations per
            eigenvalue (default 1000). A warning is issued when ``tol`` was not reached.
        return_eigenvectors: also return the unit eigenvectors.
        generator: seeds the start vectors.
        progress: a progress bar.

    Returns:
        Eigenvalues ``(k,)`` in decreasing order (of value for ``"LA"``, of magnitude for
        ``"LM"``), in the parameters' dtype; with ``return_eigenvectors``, also a list of ``k``
        tuples shaped like ``params``.

    Raises:
        ValueError: params that do not require grad; ``k`` < 1 or larger than :math:`P`; unknown
            ``method``, ``which`` or ``criterion``; ``tol`` outside (0, 1); ``max_iter`` < 1.
    """
    method = _check_choice(method, "method", ("lanczos", "power"))
    which = _check_choice(which, "which", ("LA", "LM"))
    if criterion is None:
        criterion = "residual" if return_eigenvectors else "eigenvalue"
    criterion = _check_choice(criterion, "criterion", ("eigenvalue", "residual"))
    tol = _check_tol(tol)
    _check_int(k, "k", 1)
    if max_iter is not None:
        _check_int(max_iter, "max_iter", 1)
    op = _operator(loss_fn, params)
    if k > op.numel:
        raise ValueError(f"k must be at most the number of parameters ({op.numel}), got {k!r}")
    if method == "lanczos":
        steps = max_iter if max_iter is not None else max(100, 4 * k)
        if steps < k:
            raise ValueError(f"max_iter must be at least k={k} for Lanczos, got {max_iter!r}")
        values, vectors, converged = _lanczos(op, k, tol, steps, which, criterion, generator, progress)
    else:
        steps = max_iter or 1000
        values, vectors, converged = _power(op, k, tol, steps, which, generator, progress)
    if not converged:
        warnings.warn(f"hessian_eigenvalues ({method}) stopped before reaching tol={tol:g} "
                      f"(criterion={criterion!r}, max_iter={steps}); the values are estimates",
                      RuntimeWarning, stacklevel=2)
    values = values.to(dtype=op.dtype, device=op.device)
    if not return_eigenvectors:
        return values
    return values, [op.unflatten(v.to(op.dtype)) for v in vectors]


# ----------------------------------------------------------------------------- trace


def _probes(op: HessianOperator, count: int, generator) -> Tensor:
    return _rademacher((op.numel, count), generator, torch.float64, op.device)


def _apply(op: HessianOperator, V: Tensor, batch_size: int) -> Tensor:
    return torch.cat([op.matmat(V[:, i : i + batch_size]) for i in range(0, V.shape[1], batch_size)], dim=1)


def hessian_trace(
    loss_fn: LossClosure | HessianOperator,
    params: Sequence[Tensor] | None = None,
    *,
    n_samples: int = 100,
    method: str = "hutchinson",
    return_stderr: bool = False,
    batch_size: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor | tuple[Tensor, Tensor]:
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
        loss_fn: zero-argument callable returning the scalar loss, or a :class:`HessianOperator`.
        params: tensors (requiring grad) the Hessian is taken in.
        n_samples: Hessian-vector products to spend (at least 2 for Hutchinson, 3 for Hutch++).
        method: ``"hutchinson"`` or ``"hutch++"``.
        return_stderr: also return the estimated standard error.
        batch_size: products per batched backward pass (see :meth:`HessianOperator.matmat`).
        generator: seeds the probes.

    Returns:
        The estimate (0-dim, the parameters' dtype), and its standard error with ``return_stderr``.

    Raises:
        ValueError: params that do not require grad, ``n_samples`` too small, unknown ``method``,
            ``batch_size`` < 1.
    """
    method = _check_choice(method, "method", ("hutchinson", "hutch++"))
    _check_int(n_samples, "n_samples", 2 if method == "hutchinson" else 3)
    _check_int(batch_size, "batch_size", 1)
    op = _operator(loss_fn, params)
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
    estimate = estimate.to(dtype=op.dtype)
    return (estimate, stderr.to(dtype=op.dtype)) if return_stderr else estimate


# ----------------------------------------------------------------------------- spectral density


class SpectralDensity(NamedTuple):
    """The output of :func:`hessian_density`."""

    grid: Tensor  #: ``(G,)`` points where the density is evaluated
    density: Tensor  #: ``(G,)`` Gaussian-broadened density, integrating to ~1 over the grid
    nodes: Tensor  #: ``(n_vectors, n_lanczos)`` Ritz values (quadrature nodes) of each run
    weights: Tensor  #: ``(n_vectors, n_lanczos)`` quadrature weights, each row summing to 1


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


def hessian_density(
    loss_fn: LossClosure | HessianOperator,
    params: Sequence[Tensor] | None = None,
    *,
    n_lanczos: int = 80,
    n_vectors: int = 1,
    grid: Tensor | int = 1000,
    sigma: float | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
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
        loss_fn: zero-argument callable returning the scalar loss, or a :class:`HessianOperator`.
        params: tensors (requiring grad) the Hessian is taken in.
        n_lanczos: Lanczos steps per vector (capped at :math:`P`; ``n_lanczos * n_vectors``
            Hessian-vector products).
        n_vectors: random start vectors averaged.
        grid: the points ``(G,)`` where the density is evaluated, or their number: then an even
            grid from the smallest node minus :math:`5\sigma` to the largest plus :math:`5\sigma`
            (so that the density integrates to 1 up to ~1e-6 and the grid resolution).
        sigma: the broadening; default 1% of the node range (or of its largest magnitude when all
            nodes are equal, or 1e-3 when they are all 0).
        generator: seeds the start vectors.
        progress: a progress bar over the vectors.

    Returns:
        A :class:`SpectralDensity` ``(grid, density, nodes, weights)``; ``grid`` and ``density``
        in float64 on the CPU, ``nodes`` and ``weights`` ``(n_vectors, m)``.

    Raises:
        ValueError: params that do not require grad, ``n_lanczos`` or ``n_vectors`` < 1,
            ``sigma`` <= 0, a grid with fewer than 2 points.
    """
    _check_int(n_lanczos, "n_lanczos", 1)
    _check_int(n_vectors, "n_vectors", 1)
    if sigma is not None:
        sigma = _check_positive(sigma, "sigma")
    if isinstance(grid, int) and not isinstance(grid, bool):
        _check_int(grid, "grid", 2)
    elif not isinstance(grid, Tensor) or grid.ndim != 1 or grid.numel() < 2:
        raise ValueError(f"grid must be an int >= 2 or a 1-D tensor of >= 2 points, got {grid!r}")
    op = _operator(loss_fn, params)
    m = min(n_lanczos, op.numel)
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


# ----------------------------------------------------------------------------- sharpness


def _scaling(params: Sequence[Tensor], adaptive: bool, eta: float) -> list[Tensor] | None:
    return [p.detach().abs() + eta for p in params] if adaptive else None


def sharpness_during_training(
    loss_fn: LossClosure,
    params: Sequence[Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    steps: int,
    every: int = 10,
    tol: float = 1e-3,
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Tensor]:
    r"""Train with full-batch steps and record the loss and the sharpness every few steps.

    Takes ``steps`` optimizer steps on the zero-argument ``loss_fn`` (the whole training set:
    full-batch gradient descent when ``optimizer`` is plain SGD) and, at step 0 and every
    ``every`` steps, records the loss and :math:`\lambda_{\max}(\nabla^2 L)`
    (:func:`hessian_eigenvalues`, Lanczos to relative accuracy ``tol``, start vector seeded by
    ``seed + t`` at step ``t``). Gradient descent with step size :math:`\eta` is stable on a
    quadratic only while :math:`\lambda_{\max} < 2/\eta`; on neural networks the sharpness rises
    to that value and hovers there, the edge of stability [cohen2021gradient].

    Returns:
        ``{"step", "loss", "sharpness"}``: float64 tensors of the recorded steps' values.

    Raises:
        ValueError: ``steps`` < 0 or ``every`` < 1; the errors of :func:`hessian_eigenvalues`.
    """
    params = _check_params(params)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps must be an int >= 0, got {steps!r}")
    if isinstance(every, bool) or not isinstance(every, int) or every < 1:
        raise ValueError(f"every must be an int >= 1, got {every!r}")
    record = []
    for t in tqdm(range(steps + 1), desc="training", disable=not progress, leave=False):
        if t % every == 0:
            top = hessian_eigenvalues(loss_fn, params, tol=tol, generator=torch.Generator().manual_seed(seed + t))
            with torch.no_grad():
                record.append((t, float(loss_fn()), float(top)))
        if t < steps:
            optimizer.zero_grad()
            loss_fn().backward()
            optimizer.step()
    step, loss, top = torch.tensor(record, dtype=torch.float64).T
    return {"step": step, "loss": loss, "sharpness": top}


def sharpness(
    loss_fn: LossClosure,
    params: Sequence[Tensor],
    *,
    rho: float,
    n_steps: int = 5,
    step_size: float | None = None,
    adaptive: bool = False,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    return_perturbation: bool = False,
) -> Tensor | tuple[Tensor, tuple[Tensor, ...]]:
    r"""Worst-case loss increase in a ball around the parameters, by projected gradient ascent.

    .. math::
        S_\rho(\theta) = \max_{\|T^{-1}\epsilon\|_2 \le \rho} L(\theta + \epsilon) - L(\theta),

    with :math:`T = I` (the :math:`\ell_2` ball of SAM [foret2021sharpness], the
    :math:`\epsilon`-sharpness of [keskar2017large] in that ball) or, with ``adaptive``,
    :math:`T = \operatorname{diag}(|\theta| + \eta)` (ASAM's scale-invariant ball [kwon2021asam]).
    In the variable :math:`\delta = T^{-1}\epsilon`, the gradient is :math:`T\nabla L`; the first
    step goes to the SAM point :math:`\delta_1 = \rho\, T g / \|T g\|` (the maximizer of the
    first-order expansion), then ``n_steps - 1`` normalized steps
    :math:`\delta \leftarrow \Pi_\rho(\delta + \alpha\, T\nabla L / \|T \nabla L\|)` follow. The
    result is the largest increase seen, a lower bound of :math:`S_\rho` (an attack, not a
    certificate). For a quadratic :math:`L = g^\top\epsilon + \frac12\epsilon^\top A\epsilon`,
    :math:`\rho\|g\| + \frac{\rho^2}{2}\hat g^\top A \hat g \le S_\rho \le \rho\|g\| +
    \frac{\rho^2}{2}\lambda_{\max}(A)` (:math:`T = I`). The parameters are perturbed in place and
    restored (bit for bit) before returning, also on error.

    Args:
        loss_fn: zero-argument callable returning the scalar loss at the current parameters.
        params: the tensors (requiring grad) perturbed.
        rho: radius of the ball, > 0.
        n_steps: ascent steps (1: the SAM point only).
        step_size: :math:`\alpha` of the later steps, default ``rho``.
        adaptive: use ASAM's ball.
        eta: :math:`\eta` of ASAM's scaling (0 leaves zero parameters unperturbed).
        generator: a random first direction when the gradient is zero.
        return_perturbation: also return the maximizing :math:`\epsilon` (shaped like params).

    Returns:
        The increase (0-dim tensor, detached), and :math:`\epsilon` with ``return_perturbation``.

    Raises:
        ValueError: params that do not require grad; ``rho`` <= 0; ``n_steps`` < 1; ``eta`` < 0;
            ``step_size`` <= 0.
    """
    params = _check_params(params)
    rho = _check_positive(rho, "rho")
    _check_int(n_steps, "n_steps", 1)
    alpha = rho if step_size is None else _check_positive(step_size, "step_size")
    if isinstance(eta, bool) or not isinstance(eta, (int, float)) or not eta >= 0:
        raise ValueError(f"eta must be a number >= 0, got {eta!r}")
    T = _scaling(params, adaptive, eta)
    originals = [p.detach().clone() for p in params]
    delta = [torch.zeros_like(p) for p in params]
    best, best_eps = None, None
    try:
        with torch.enable_grad():
            for step in range(n_steps + 1):
                with torch.no_grad():
                    eps = delta if T is None else [t * d for t, d in zip(T, delta)]
                    for p, p0, e in zip(params, originals, eps):
                        p.copy_(p0 + e)
                loss = _scalar_loss(loss_fn)
                if step == 0:
                    base = loss.detach()
                elif best is None or loss.detach() > best:
                    best, best_eps = loss.detach(), [e.clone() for e in eps]
                if step == n_steps:
                    break
                grads = _grads(loss, params, create_graph=False)
                with torch.no_grad():
                    ascent = grads if T is None else [t * g for t, g in zip(T, grads)]
                    norm = _norm(ascent)
                    if not torch.isfinite(norm):
                        break
                    if norm == 0:
                        ascent = [_randn(p.shape, generator, p) for p in params]
                        norm = _norm(ascent)
                    size = rho if step == 0 else alpha
                    delta = [d + size * a / norm for d, a in zip(delta, ascent)]
                    dnorm = _norm(delta)
                    if dnorm > rho:
                        delta = [d * (rho / dnorm) for d in delta]
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, originals):
                p.copy_(p0)
    increase = (best - base) if best is not None else torch.zeros_like(base)
    if return_perturbation:
        return increase, tuple(best_eps) if best_eps is not None else tuple(torch.zeros_like(p) for p in originals)
    return increase


def _batches_within(data, batch_size: int, max_examples: int | None, device, *, full_only: bool = False):
    from stabilitylab.train import batches

    out, count = [], 0
    for xb, yb in batches(data, batch_size=batch_size):
        if max_examples is not None:
            if count >= max_examples:
                break
            xb, yb = xb[: max_examples - count], yb[: max_examples - count]
        if full_only and len(xb) < batch_size:
            break
        count += len(xb)
        out.append((xb.to(device), yb.to(device)))
    return out, count


def _model_params(model) -> tuple[list[str], list[Tensor]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no parameters requiring grad")
    return [n for n, _ in named], [p for _, p in named]


def m_sharpness(
    model: nn.Module,
    data,
    *,
    m: int,
    rho: float,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    n_steps: int = 1,
    adaptive: bool = False,
    eta: float = 0.0,
    max_examples: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> Tensor:
    r""":math:`m`-sharpness: the per-batch worst-case increase averaged over batches of size :math:`m`.

    .. math::
        S^m_\rho = \frac1{n/m}\sum_{B} \max_{\|\epsilon\| \le \rho} L_B(\theta + \epsilon) - L_B(\theta),

    over the disjoint batches :math:`B` of :math:`m` consecutive examples (a last, incomplete batch
    is left out) [foret2021sharpness]: the quantity SAM with per-device batches of size :math:`m`
    minimizes, which correlates with generalization better for small :math:`m`. Each maximum is
    :func:`sharpness` with ``n_steps`` steps (one: SAM's own approximation). The model is
    evaluated in eval mode, its parameters restored afterwards.

    Args:
        model: the network; its parameters requiring grad are perturbed.
        data: ``(inputs, labels)`` tensors, a data set or a data loader (taken in order).
        m: batch size, >= 1.
        rho: radius, > 0.
        loss_fn: ``(outputs, labels) -> mean loss``; default cross-entropy.
        n_steps, adaptive, eta, generator: passed to :func:`sharpness`.
        max_examples: the data budget (examples used at most).
        progress: a progress bar over batches.

    Returns:
        The mean increase (0-dim tensor).

    Raises:
        ValueError: ``m`` < 1, ``rho`` <= 0, fewer than ``m`` examples.
    """
    _check_int(m, "m", 1)
    rho = _check_positive(rho, "rho")
    if max_examples is not None:
        _check_int(max_examples, "max_examples", 1)
    names, params = _model_params(model)
    loss_fn = loss_fn or F.cross_entropy
    chunks, _ = _batches_within(data, m, max_examples, params[0].device, full_only=True)
    if not chunks:
        raise ValueError(f"m must be at most the number of examples, got m={m!r}")
    was_training = model.training
    model.eval()
    try:
        values = [
            sharpness(lambda xb=xb, yb=yb: loss_fn(model(xb), yb), params, rho=rho, n_steps=n_steps,
                      adaptive=adaptive, eta=eta, generator=generator)
            for xb, yb in tqdm(chunks, desc="m-sharpness", disable=not progress, leave=False)
        ]
    finally:
        model.train(was_training)
    return torch.stack(values).mean()


# ----------------------------------------------------------------------------- SAM


class SAM(torch.optim.Optimizer):
    r"""Sharpness-Aware Minimization [foret2021sharpness] (and ASAM [kwon2021asam]) around any optimizer.

    Each step moves to the approximate worst point of the :math:`\rho`-ball,
    :math:`\hat\epsilon = \rho\, T^2 g / \|T g\|` with :math:`T = I`, or :math:`T = |\theta|`
    elementwise with ``adaptive`` (ASAM with :math:`\eta = 0`), takes the gradient there and
    applies the base optimizer's update with that gradient *at the original point*:
    :math:`\theta \leftarrow \mathrm{base}(\theta, \nabla L(\theta + \hat\epsilon))`. The norm
    :math:`\|Tg\|` is taken over all parameter groups; each group may set its own ``rho`` and
    ``adaptive``.

    ``base_optimizer`` is either an optimizer *class* (built here on the same parameter groups with
    ``base_kwargs``, like the popular implementation) or an optimizer *instance* already built on
    exactly these parameters (then ``base_kwargs`` must be empty). The two share their
    ``param_groups``, so a learning-rate scheduler may be attached to either.

    Usage (two passes per step)::

        loss_fn(model(x), y).backward()          # gradient at theta (may be accumulated)
        opt.first_step(zero_grad=True)           # theta + eps
        loss_fn(model(x), y).backward()          # gradient at theta + eps (may be accumulated)
        opt.second_step(zero_grad=True)          # back to theta, base step

    or ``opt.step(closure)`` with a closure that runs the forward and backward passes (and returns
    the loss). Gradient accumulation works as it does for any optimizer: the perturbation uses
    whatever gradient is accumulated in ``.grad`` at ``first_step``, the base step whatever is
    accumulated at the perturbed point.

    Mixed precision with ``torch.amp.GradScaler``: pass ``scaler=`` to both steps, and call
    ``scaler.update()`` after ``second_step``. ``first_step`` divides the (scaled) gradients by
    ``scaler.get_scale()`` to compute the perturbation from the true gradients, without touching
    ``.grad``; when they hold an inf or NaN the perturbation is skipped (``skipped``).
    ``second_step`` restores the parameters and calls ``scaler.step(base_optimizer)``, which
    unscales the new gradients and skips the update on inf/NaN (and the scaler then lowers its
    scale at ``update()``). Do not call ``scaler.unscale_`` on the SAM optimizer yourself.

    Args:
        params: parameters or parameter groups.
        base_optimizer: an optimizer class or instance (see above).
        rho: radius, > 0.
        adaptive: ASAM's elementwise scaling.
        base_kwargs: arguments of the base optimizer's class (``lr``, ``momentum``...).

    Raises:
        ValueError: ``rho`` <= 0; an instance built on other parameters, or given ``base_kwargs``.
        TypeError: a ``base_optimizer`` that is neither an optimizer class nor an instance.
    """

    def __init__(self, params, base_optimizer, rho: float = 0.05, adaptive: bool = False, **base_kwargs):
        rho = _check_positive(rho, "rho")
        if isinstance(base_optimizer, torch.optim.Optimizer):
            if base_kwargs:
                raise ValueError(f"base_kwargs must be empty when base_optimizer is an instance, got {sorted(base_kwargs)}")
            super().__init__(params, dict(rho=rho, adaptive=adaptive))
            ours = {id(p) for g in self.param_groups for p in g["params"]}
            theirs = {id(p) for g in base_optimizer.param_groups for p in g["params"]}
            if ours != theirs:
                raise ValueError("base_optimizer must be built on the same parameters as SAM, "
                                 f"got {len(theirs)} parameters for SAM's {len(ours)}")
            for group in base_optimizer.param_groups:
                group.setdefault("rho", rho)
                group.setdefault("adaptive", adaptive)
            self.base_optimizer = base_optimizer
        elif isinstance(base_optimizer, type) and issubclass(base_optimizer, torch.optim.Optimizer):
            super().__init__(params, dict(rho=rho, adaptive=adaptive, **base_kwargs))
            self.base_optimizer = base_optimizer(self.param_groups, **base_kwargs)
        else:
            raise TypeError(f"base_optimizer must be a torch.optim.Optimizer class or instance, got {base_optimizer!r}")
        self.param_groups = self.base_optimizer.param_groups
        self.defaults.update(self.base_optimizer.defaults)
        self.skipped = False

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False, *, scaler=None) -> None:
        """Move every parameter to :math:`\\theta + \\hat\\epsilon` (the old values are kept)."""
        inv_scale = 1.0
        if scaler is not None and scaler.is_enabled():
            inv_scale = 1.0 / float(scaler.get_scale())
        terms = []
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    g = p.grad * inv_scale
                    terms.append((g * p.abs() if group["adaptive"] else g).pow(2).sum().to(torch.float64).cpu())
        norm = torch.stack(terms).sum().sqrt() if terms else torch.zeros((), dtype=torch.float64)
        self.skipped = not bool(torch.isfinite(norm))
        for group in self.param_groups:
            scale = group["rho"] / (float(norm) + 1e-12)
            for p in group["params"]:
                self.state[p].pop("old_p", None)
                if p.grad is None or self.skipped:
                    continue
                self.state[p]["old_p"] = p.detach().clone()
                e = p.grad * (inv_scale * scale)
                if group["adaptive"]:
                    e = e * p.pow(2)
                p.add_(e.to(p.dtype))
        if zero_grad:
            self.zero_grad()

    @torch.no_grad()
    def second_step(self, zero_grad: bool = False, *, scaler=None) -> None:
        """Restore :math:`\\theta` and apply the base optimizer with the current gradients."""
        for group in self.param_groups:
            for p in group["params"]:
                old = self.state[p].pop("old_p", None)
                if old is not None:
                    p.copy_(old)
        if scaler is not None:
            scaler.step(self.base_optimizer)
        else:
            self.base_optimizer.step()
        if zero_grad:
            self.zero_grad()

    def step(self, closure=None):
        """One SAM step. ``closure`` runs forward and backward and returns the loss. When no
        parameter holds a gradient yet, it is called first at :math:`\\theta`; otherwise the
        gradient already in ``.grad`` is used. Returns the loss at the perturbed point."""
        if closure is None:
            raise ValueError("closure must be given: SAM needs a second forward-backward pass, got None")
        closure = torch.enable_grad()(closure)
        if all(p.grad is None for group in self.param_groups for p in group["params"]):
            closure()
        self.first_step(zero_grad=True)
        loss = closure()
        self.second_step()
        return loss

    def state_dict(self):
        return {"sam": super().state_dict(), "base": self.base_optimizer.state_dict()}

    def load_state_dict(self, state_dict):
        self.base_optimizer.load_state_dict(state_dict["base"])
        self.param_groups = self.base_optimizer.param_groups


# ----------------------------------------------------------------------------- regularizers


def _loss_of(loss_fn) -> Tensor:
    if isinstance(loss_fn, Tensor):
        if loss_fn.numel() != 1:
            raise ValueError(f"loss_fn must be a scalar tensor or a closure, got shape {tuple(loss_fn.shape)}")
        return loss_fn.reshape(())
    return _scalar_loss(loss_fn)


def gradient_norm_penalty(
    loss_fn: LossClosure | Tensor,
    params: Sequence[Tensor],
    *,
    method: str = "exact",
    h: float = 1e-2,
) -> Tensor:
    r"""The squared gradient norm :math:`R(\theta) = \|\nabla_\theta L(\theta)\|_2^2`, to add to a loss.

    Its gradient is :math:`\nabla R = 2 H g` (:math:`g = \nabla L`, :math:`H = \nabla^2 L`):
    penalizing it flattens the loss along the gradient, a first-order relative of SAM
    [foret2021sharpness] [barrett2021implicit].

    * ``"exact"``: :math:`g` with ``create_graph=True``; :math:`R` is differentiable to any order
      (one double-backward pass per training step).
    * ``"finite_difference"``: :math:`2Hg \approx \frac{2\|g\|}{h}\,(\nabla L(\theta + h\hat g)
      - \nabla L(\theta))`, :math:`\hat g = g/\|g\|`, two first-order gradients and no double
      backward [karakida2023understanding]. The returned scalar has the value :math:`\|g\|^2` and
      that gradient with respect to ``params`` (a linear surrogate: it cannot be differentiated
      twice, nor with respect to anything else). The parameters are perturbed in place and
      restored.

    Args:
        loss_fn: zero-argument callable returning the loss (or, for ``"exact"``, the loss tensor
            itself, its graph reaching ``params``).
        params: the tensors (requiring grad) the gradient is taken in.
        method: ``"exact"`` or ``"finite_difference"``.
        h: the finite-difference step (in parameter units), > 0.

    Returns:
        A 0-dim tensor.

    Raises:
        ValueError: params that do not require grad, unknown ``method``, ``h`` <= 0, a loss tensor
            with ``"finite_difference"``.
    """
    params = _check_params(params)
    method = _check_choice(method, "method", ("exact", "finite_difference"))
    h = _check_positive(h, "h")
    if method == "exact":
        grads = _grads(_loss_of(loss_fn), params, create_graph=True)
        return sum(g.pow(2).sum() for g in grads)
    if isinstance(loss_fn, Tensor):
        raise ValueError("loss_fn must be a closure for method='finite_difference' (it is evaluated twice), got a tensor")
    g1 = _grads(_scalar_loss(loss_fn), params, create_graph=False)
    gnorm = _norm(g1)
    value = gnorm.pow(2)
    if gnorm == 0:
        return value + sum((p * 0).sum() for p in params)
    originals = [p.detach().clone() for p in params]
    try:
        with torch.no_grad():
            for p, g in zip(params, g1):
                p.add_(g, alpha=h / float(gnorm))
        g2 = _grads(_scalar_loss(loss_fn), params, create_graph=False)
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, originals):
                p.copy_(p0)
    coef = 2 * gnorm / h
    surrogate = sum(((coef * (b - a)).detach() * p).sum() for a, b, p in zip(g1, g2, params))
    return value.detach() + surrogate - surrogate.detach()


def input_curvature_penalty(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    h: float = 0.1,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    r"""CURE's input-curvature penalty [moosavi2019robustness], differentiable in the model's parameters.

    For each example, with :math:`\ell` its loss and :math:`z = \operatorname{sign}(\nabla_x \ell)
    / \|\operatorname{sign}(\nabla_x \ell)\|_2` (a unit direction of high curvature, held
    constant),

    .. math::
        r(x) = \|\nabla_x \ell(x + h z) - \nabla_x \ell(x)\|_2^2 \approx h^2 \|\nabla_x^2\ell(x)\, z\|_2^2,

    averaged over the batch. Small values mean a locally linear loss in the input, hence
    adversarial robustness similar to adversarial training's. Both gradients are built with
    ``create_graph=True``.

    Args:
        model: maps a batch of inputs to outputs.
        x: inputs ``(n, ...)``.
        y: labels ``(n, ...)``.
        h: the finite-difference step in input units, > 0.
        loss_fn: ``(outputs, labels) -> mean loss over the batch``; default cross-entropy. The
            per-example gradients are those of ``n * loss_fn``, so examples must be independent
            (no batch-norm in training mode).

    Returns:
        A 0-dim tensor.

    Raises:
        ValueError: ``h`` <= 0, an empty batch, inputs and labels of different lengths.
    """
    h = _check_positive(h, "h")
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"x and y must be non-empty and of equal lengths, got {len(x)} and {len(y)}")
    loss_fn = loss_fn or F.cross_entropy
    n = len(x)

    def input_grad(inputs: Tensor) -> Tensor:
        leaf = inputs.detach().requires_grad_(True)
        loss = loss_fn(model(leaf), y) * n
        (g,) = torch.autograd.grad(loss, leaf, create_graph=True)
        return g

    with torch.enable_grad():
        g = input_grad(x)
        signs = torch.sign(g.detach())
        norms = signs.flatten(1).norm(dim=1).clamp_min(1.0).view(-1, *([1] * (x.ndim - 1)))
        z = signs / norms
        g2 = input_grad(x + h * z)
        return (g2 - g).flatten(1).pow(2).sum(dim=1).mean()


def hessian_trace_penalty(
    loss_fn: LossClosure | Tensor,
    params: Sequence[Tensor],
    *,
    n_samples: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Hutchinson's estimate of :math:`\operatorname{tr}\nabla^2_\theta L`, differentiable in the parameters.

    :math:`\frac1m\sum_i z_i^\top H z_i` with Rademacher :math:`z_i` [hutchinson1989stochastic],
    each product :math:`Hz_i` built with ``create_graph=True`` so that the penalty can be
    backpropagated (a third-order pass); an unbiased estimate of the trace, a measure of flatness
    to minimize.

    Args:
        loss_fn: zero-argument callable returning the loss, or the loss tensor itself.
        params: the tensors (requiring grad) the Hessian is taken in.
        n_samples: probes, >= 1.
        generator: seeds the probes.

    Returns:
        A 0-dim tensor.

    Raises:
        ValueError: params that do not require grad, ``n_samples`` < 1.
    """
    params = _check_params(params)
    _check_int(n_samples, "n_samples", 1)
    grads = _grads(_loss_of(loss_fn), params, create_graph=True)
    total = 0.0
    for _ in range(n_samples):
        z = [_rademacher(p.shape, generator, p.dtype, p.device) for p in params]
        hz = _grad_of(grads, params, z, create_graph=True, retain_graph=True)
        total = total + _dot(z, hz)
    if not isinstance(total, Tensor):  # no parameter reaches the gradient's graph: the Hessian is 0
        total = sum((p * 0).sum() for p in params)
    return total / n_samples


# ----------------------------------------------------------------------------- landscapes


def filter_normalized_direction(
    model: nn.Module,
    *,
    ignore_1d: bool = True,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    r"""A random direction in weight space, normalized filter by filter (Li et al. 2018).

    For each parameter of two or more dimensions (a linear layer's weight, a convolution's kernel)
    a Gaussian direction :math:`d` is rescaled so that each filter (each slice along the first,
    output dimension) has the norm of the corresponding filter of the weights,
    :math:`d_i \leftarrow d_i \|\theta_i\| / \|d_i\|` [li2018visualizing]; this removes the
    scale invariance of ReLU networks from the plots. Parameters of one dimension or less
    (biases, normalization layers' scales and shifts) get a zero direction when ``ignore_1d``, as
    in the paper ("biasbn"), and are otherwise scaled as one filter. Buffers (batch-norm running
    statistics) are never moved.

    Args:
        model: the network.
        ignore_1d: zero direction for biases and normalization parameters.
        generator: seeds the direction (drawn on the CPU).

    Returns:
        ``{name: direction}`` for the parameters requiring grad (detached, their dtype and device).
    """
    names, params = _model_params(model)
    out = {}
    for name, p in zip(names, params):
        d = _randn(p.shape, generator, p)
        w = p.detach()
        tiny = torch.finfo(d.dtype).tiny
        if p.ndim <= 1:
            d = torch.zeros_like(w) if ignore_1d else d * (w.norm() / d.norm().clamp_min(tiny))
        else:
            # one norm per output filter: a Linear weight's row, a convolution kernel's
            # (in_channels, kh, kw) slice; vector_norm takes any number of dims (matrix_norm,
            # which Tensor.norm picks for some tuples, would take exactly two)
            dims = tuple(range(1, p.ndim))
            w_norm = torch.linalg.vector_norm(w, dim=dims, keepdim=True)
            d_norm = torch.linalg.vector_norm(d, dim=dims, keepdim=True).clamp_min(tiny)
            d = d * (w_norm / d_norm)
        out[name] = d
    return out


def _mean_loss_closure(model, chunks, loss_fn, total):
    def closure():
        return sum(loss_fn(model(xb), yb) * (len(xb) / total) for xb, yb in chunks)

    return closure


def eigen_directions(
    model: nn.Module,
    data,
    *,
    k: int = 2,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    max_examples: int | None = None,
    batch_size: int = 1024,
    **eigen_kwargs,
) -> tuple[Tensor, list[dict[str, Tensor]]]:
    r"""The top-:math:`k` Hessian eigenvectors of a model's mean loss, as landscape directions.

    Calls :func:`hessian_eigenvalues` (``eigen_kwargs``: ``method``, ``tol``, ``which``,
    ``generator``...) on the mean loss over at most ``max_examples`` examples, with the model in
    eval mode, and returns the unit eigenvectors keyed by parameter name.

    Returns:
        ``(eigenvalues (k,), [{name: direction}, ...])``.

    Raises:
        ValueError: as :func:`hessian_eigenvalues`; ``max_examples`` < 1.
    """
    if max_examples is not None:
        _check_int(max_examples, "max_examples", 1)
    names, params = _model_params(model)
    loss_fn = loss_fn or F.cross_entropy
    chunks, total = _batches_within(data, batch_size, max_examples, params[0].device)
    was_training = model.training
    model.eval()
    try:
        values, vectors = hessian_eigenvalues(_mean_loss_closure(model, chunks, loss_fn, total), params, k=k,
                                              return_eigenvectors=True, **eigen_kwargs)
    finally:
        model.train(was_training)
    return values, [dict(zip(names, v)) for v in vectors]


def _check_direction(direction, names, params, index: int) -> dict[str, Tensor]:
    if isinstance(direction, Mapping):
        unknown = set(direction) - set(names)
        if unknown:
            raise ValueError(f"directions[{index}] names parameters the model does not have, got {sorted(unknown)}")
        out = {}
        for n, p in zip(names, params):
            d = direction.get(n)
            if d is None:
                d = torch.zeros_like(p)
            if tuple(d.shape) != tuple(p.shape):
                raise ValueError(f"directions[{index}][{n!r}] must have shape {tuple(p.shape)}, got {tuple(d.shape)}")
            out[n] = d.detach().to(dtype=p.dtype, device=p.device)
        return out
    vec = _check_vector(direction, params, name=f"directions[{index}]")
    return {n: d.detach() for n, d in zip(names, vec)}


def loss_landscape(
    model: nn.Module,
    data,
    directions,
    coordinates,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    max_examples: int | None = None,
    batch_size: int = 1024,
    progress: bool = False,
) -> dict[str, object]:
    r"""The loss (and accuracy) on a 1-D or 2-D slice of weight space.

    :math:`L(\theta + \alpha\, d_1)` for each :math:`\alpha` in ``coordinates``, or
    :math:`L(\theta + \alpha\, d_1 + \beta\, d_2)` on a grid, with directions from
    :func:`filter_normalized_direction` (random, filter-normalized [li2018visualizing]) or
    :func:`eigen_directions` (top Hessian eigenvectors: along a unit eigenvector :math:`u` of a
    quadratic loss, :math:`L(\theta + t u) = L(\theta) + t\,g^\top u + \frac12\lambda t^2`).
    Evaluated in eval mode through ``torch.func.functional_call``: the model's parameters are never
    modified, and its training flag is restored.

    Args:
        model: the network.
        data: ``(inputs, labels)`` tensors, a data set or a loader; the first ``max_examples``
            examples are used (kept on the model's device for the whole slice).
        directions: one direction (1-D slice) or a sequence of one or two (2-D), each a
            ``{name: tensor}`` mapping (missing names: zero) or a tuple shaped like the parameters
            requiring grad.
        coordinates: ``(A,)`` values of :math:`\alpha`; for two directions, a pair
            ``(alphas, betas)`` (or one sequence used for both).
        loss_fn: ``(outputs, labels) -> mean loss``; default cross-entropy.
        max_examples: the data budget.
        batch_size: examples per forward pass.
        progress: a progress bar over the grid points.

    Returns:
        a dict of float64 CPU tensors, ``"coordinates"`` (``(alphas,)`` or ``(alphas, betas)``),
        ``"loss"`` (``(A,)`` or ``(A, B)``) and ``"accuracy"`` (the same shape, or None unless the
        outputs are ``(n, C)`` logits with ``C`` >= 2 and the labels class indices).

    Raises:
        ValueError: directions of the wrong names or shapes, more than two directions, empty
            coordinates, ``max_examples`` < 1.
    """
    names, params = _model_params(model)
    if isinstance(directions, Mapping) or (isinstance(directions, (tuple, list)) and directions
                                           and isinstance(directions[0], Tensor)):
        directions = [directions]
    if not isinstance(directions, (tuple, list)) or not 1 <= len(directions) <= 2:
        raise ValueError(f"directions must be one direction or a sequence of one or two, got {type(directions).__name__}"
                         f" of length {len(directions) if isinstance(directions, (tuple, list)) else '?'}")
    dirs = [_check_direction(d, names, params, i) for i, d in enumerate(directions)]
    if len(dirs) == 2 and isinstance(coordinates, (tuple, list)) and len(coordinates) == 2 and \
            not isinstance(coordinates[0], (int, float)):
        axes = [torch.as_tensor(c, dtype=torch.float64).flatten() for c in coordinates]
    else:
        axes = [torch.as_tensor(coordinates, dtype=torch.float64).flatten()] * len(dirs)
    if any(a.numel() == 0 or not torch.isfinite(a).all() for a in axes):
        raise ValueError(f"coordinates must be non-empty and finite, got {coordinates!r}")
    if max_examples is not None:
        _check_int(max_examples, "max_examples", 1)
    _check_int(batch_size, "batch_size", 1)
    loss_fn = loss_fn or F.cross_entropy
    chunks, total = _batches_within(data, batch_size, max_examples, params[0].device)
    if total == 0:
        raise ValueError("data is empty")
    base = {n: p.detach() for n, p in zip(names, params)}
    buffers = dict(model.named_buffers())
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    shape = tuple(len(a) for a in axes)
    losses = torch.empty(shape, dtype=torch.float64)
    accuracy = torch.empty(shape, dtype=torch.float64)
    with_accuracy = True
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            points = list(torch.cartesian_prod(*axes).reshape(-1, len(axes)))
            for flat, point in enumerate(tqdm(points, desc="landscape", disable=not progress, leave=False)):
                state = {n: base[n] + sum(float(c) * d[n] for c, d in zip(point, dirs)) for n in names}
                state.update(frozen)
                loss_sum, correct = 0.0, 0.0
                for xb, yb in chunks:
                    out = functional_call(model, (state, buffers), (xb,))
                    loss_sum += float(loss_fn(out, yb)) * len(xb)
                    if with_accuracy and out.ndim == 2 and out.shape[1] >= 2 and yb.ndim == 1 and \
                            not yb.is_floating_point():
                        correct += float((out.argmax(dim=1) == yb).sum())
                    else:
                        with_accuracy = False
                index = torch.unravel_index(torch.tensor(flat), shape)
                losses[index] = loss_sum / total
                accuracy[index] = correct / total
    finally:
        model.train(was_training)
    return {"coordinates": tuple(axes), "loss": losses, "accuracy": accuracy if with_accuracy else None}


# ----------------------------------------------------------------------------- random perturbations


def _check_data(data) -> tuple[Tensor, Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)):
        raise TypeError("data must be an (inputs, labels) pair of tensors")
    x, y = data
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"data must hold as many labels as inputs (> 0), got {len(x)} and {len(y)}")
    return x, y


@torch.no_grad()
def random_perturbation_loss(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    radii: Sequence[float] | Tensor,
    *,
    n_directions: int = 8,
    relative: bool = True,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
    progress: bool = False,
) -> Tensor:
    r"""Loss of the model with its weights moved by random directions of given sizes.

    For each radius :math:`r` and each of ``n_directions`` Gaussian directions :math:`u`, the
    loss :math:`L(\theta + r\,d(u))` is computed, where :math:`d(u)` rescales each parameter
    tensor's part of :math:`u` to the norm of that tensor when ``relative`` (a layer-wise relative
    perturbation, insensitive to the rescalings a ReLU network allows; Li et al. 2018
    [li2018visualizing]) and, otherwise, scales the whole direction to unit norm. The same
    directions are reused at every radius, so each row of the result traces one slice of the loss.

    Around a minimum with Hessian :math:`H`, in the absolute mode,
    :math:`\mathbb{E}_u L(\theta + r u) - L(\theta) \approx r^2 \operatorname{tr}(H) / (2P)`
    with :math:`P` parameters: an average-case sharpness [keskar2017large].

    Args:
        model: evaluated in eval mode through ``torch.func.functional_call``; left unchanged.
        data: ``(inputs, labels)`` tensors on which the mean loss is taken.
        radii: perturbation sizes, ``(R,)``, each >= 0.
        n_directions: number of random directions.
        relative: layer-wise relative sizes (True) or absolute sizes (False).
        loss_fn: ``(outputs, labels) -> mean loss``; default cross-entropy.
        generator: for the directions (reproducibility); sampled on the CPU then moved.
        batch_size: inputs per forward pass.
        progress: a progress bar over directions.

    Returns:
        ``(R, n_directions)`` tensor of losses (on the CPU, the model's dtype).

    Raises:
        ValueError: negative or non-finite radii, ``n_directions`` < 1, empty data.
        TypeError: data that is not a tensor pair.
    """
    x, y = _check_data(data)
    radii = torch.as_tensor(radii, dtype=torch.float64).flatten()
    if radii.numel() == 0 or not torch.isfinite(radii).all() or (radii < 0).any():
        raise ValueError(f"radii must be a non-empty sequence of finite values >= 0, got {radii.tolist()}")
    if not isinstance(n_directions, int) or n_directions < 1:
        raise ValueError(f"n_directions must be a positive int, got {n_directions!r}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b for name, b in model.named_buffers()}
    if not params:
        raise ValueError("model has no parameters to perturb")

    def loss_at(state: dict[str, Tensor]) -> float:
        total = 0.0
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            yb = y[start : start + batch_size]
            out = functional_call(model, (state, buffers), (xb,))
            total += loss_fn(out, yb).item() * len(yb)
        return total / len(x)

    was_training = model.training
    model.eval()
    losses = torch.empty(len(radii), n_directions, dtype=torch.float64)
    try:
        for j in tqdm(range(n_directions), desc="directions", disable=not progress, leave=False):
            direction = {
                name: torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for name, p in params.items()
            }
            if relative:
                for name, d in direction.items():
                    d.mul_(params[name].norm() / d.norm().clamp_min(torch.finfo(d.dtype).tiny))
            else:
                norm = torch.sqrt(sum(d.pow(2).sum() for d in direction.values()))
                for d in direction.values():
                    d.div_(norm)
            for i, r in enumerate(radii.tolist()):
                state = {name: p + r * direction[name] for name, p in params.items()}
                losses[i, j] = loss_at(state)
    finally:
        model.train(was_training)
    return losses.to(next(iter(params.values())).dtype)
