r"""How Lipschitz constants evolve in training: singular-value derivatives, SGD drift and diffusion.

The internal view of [luo2026principles] and [luo2025optimization]: a layer's Lipschitz
constant in :math:`\ell_2` is the top singular value :math:`s_1(W)` of its weight, and SGD moves
:math:`W`, so :math:`s_1` performs a random walk whose drift and diffusion follow from a Taylor
(Itô) expansion of :math:`s_1` along the SGD step. Everything below is derived from first
principles (the papers state the model; the formulas here are checked against autograd, second
differences and Monte Carlo in the tests).

**Derivatives of a simple top singular value.** Let :math:`W = \sum_i s_i u_i v_i^\top`
(:math:`m \times n`, full orthonormal bases :math:`u_1..u_m`, :math:`v_1..v_n`, :math:`s_i = 0`
beyond the rank) with :math:`s_1 > s_2`. The symmetric matrix
:math:`A = \begin{pmatrix} 0 & W \\ W^\top & 0 \end{pmatrix}` has the simple eigenvalue
:math:`s_1` with eigenvector :math:`(u_1, v_1)/\sqrt 2`, its other eigenpairs are
:math:`\pm s_i` with :math:`(u_i, \pm v_i)/\sqrt 2` and :math:`0` with :math:`(u_i, 0)`,
:math:`(0, v_j)` beyond the rank. First- and second-order eigenvalue perturbation of :math:`A`
along :math:`\begin{pmatrix} 0 & E \\ E^\top & 0 \end{pmatrix}` give, with
:math:`a_i = u_i^\top E v_1` and :math:`b_j = u_1^\top E v_j`,

.. math::

    \nabla s_1(W) = u_1 v_1^\top, \qquad
    E^\top H E = \frac{d^2}{dt^2} s_1(W + tE)\Big|_{t=0}
    = \sum_{i \ne 1} \frac{s_1 a_i^2}{s_1^2 - s_i^2} + \sum_{j \ne 1} \frac{s_1 b_j^2}{s_1^2 - s_j^2}
    + 2 \sum_{l \ne 1} \frac{s_l a_l b_l}{s_1^2 - s_l^2}

(each pair :math:`\pm s_l` contributes :math:`\tfrac12[(a_l+b_l)^2/(s_1-s_l) + (a_l-b_l)^2/(s_1+s_l)]`).
Every term pair is :math:`\ge (a_l^2 + b_l^2)(s_1 - s_l)/(s_1^2 - s_l^2) \ge 0`: :math:`s_1` is
convex. The sums beyond the rank are computed as :math:`\|r\|^2 / s_1` with :math:`r` the part
of :math:`E v_1` (or :math:`E^\top u_1`) outside the span of the reduced SVD, which equals the
full-basis sum without building the full bases. The Hessian :math:`H` is never built.

**SGD as a drift and a diffusion.** One SGD step :math:`W' = W - \eta(\bar g + \xi)`, with
:math:`\bar g` the mean gradient and :math:`\xi` the mini-batch noise (mean 0, covariance
:math:`\Sigma_B = \Sigma / B`, :math:`\Sigma` the per-example gradient covariance), changes
:math:`s_1` by, to second order,

.. math::

    \mathbb E[s_1(W') - s_1(W)] \approx
    \underbrace{-\eta \langle u_1 v_1^\top, \bar g\rangle}_{\text{(i) gradient drift}}
    + \underbrace{\tfrac{\eta^2}{2} \operatorname{tr}(H \Sigma_B)}_{\text{(iii) curvature drift}}
    + \tfrac{\eta^2}{2} \bar g^\top H \bar g,
    \qquad
    \operatorname{sd}[s_1(W') - s_1(W)] \approx
    \underbrace{\eta \sqrt{g^\top \Sigma_B g}}_{\text{(ii) diffusion}}, \quad g = \operatorname{vec}(u_1 v_1^\top).

In the time :math:`t = \eta \times` steps this is the Itô SDE
:math:`ds_1 = [-\langle u_1 v_1^\top, \nabla L\rangle + \tfrac{\eta}{2}\operatorname{tr}(H\Sigma_B)]\,dt
+ \sqrt{\eta\, g^\top \Sigma_B g}\; dW_t` [luo2025optimization]; the last drift term (the
curvature met by the mean step itself) is of the same order in :math:`\eta` and is returned
separately (``gradient_curvature``). The curvature drift is never negative: gradient noise alone
pushes the norm up, more for small batches and noisy labels, and it dominates near convergence
where :math:`\bar g \to 0`. :math:`\Sigma` is estimated from :math:`K` per-example gradients
:math:`g_k` (:func:`per_sample_gradients`, ``torch.func.vmap(grad)``):
:math:`g^\top\Sigma g \approx (K-1)^{-1}\sum_k \langle u_1 v_1^\top, g_k - \bar g\rangle^2` and
:math:`\operatorname{tr}(H\Sigma) \approx (K-1)^{-1}\sum_k (g_k-\bar g)^\top H (g_k-\bar g)`.

:class:`SpectralMonitor` is a callback for :func:`stabilitylab.train.fit` that records, per
layer, :math:`s_1` (warm-started power iteration, exact SVD at chosen steps), the product of the
layer norms, an attained lower bound, and the three terms, and compares predicted with observed
changes of :math:`s_1` over windows (:meth:`SpectralMonitor.window_changes`).
"""

from __future__ import annotations

import math
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from stabilitylab._checks import (
    as_tensor_pair,
    check_batch,
    check_data,
    check_generator,
    check_int,
    check_number,
    check_positive,
    check_tensor,
    check_tol,
)
from stabilitylab._devices import model_device
from stabilitylab._modes import eval_mode

__all__ = [
    "SingularPair",
    "DriftTerms",
    "WindowChanges",
    "top_singular_pair",
    "singular_value_gradient",
    "singular_value_hessian_quadform",
    "lipschitz_drift_terms",
    "per_sample_gradients",
    "corrupt_labels",
    "SpectralMonitor",
]


# ----------------------------------------------------------------------------- results


class SingularPair(NamedTuple):
    r"""The top singular triple of a matrix: :math:`W v_1 = s_1 u_1`, :math:`W^\top u_1 = s_1 v_1`."""

    #: the left singular vector :math:`u_1`, shape ``(m,)``.
    u: Tensor
    #: the top singular value :math:`s_1 = \|W\|_2`, a 0-dim tensor.
    s: Tensor
    #: the right singular vector :math:`v_1`, shape ``(n,)``.
    v: Tensor


class DriftTerms(NamedTuple):
    r"""The expected change of :math:`s_1` in one SGD step and its noise (:func:`lipschitz_drift_terms`).

    All four are 0-dim float64 tensors in units of :math:`s_1` per step.
    """

    #: (i) :math:`-\eta \langle u_1 v_1^\top, \bar g\rangle`: the mean gradient's pull.
    gradient_drift: Tensor
    #: (ii) :math:`\eta \sqrt{g^\top \Sigma_B g}`: the standard deviation of the step's change
    #: due to mini-batch noise (variances add over steps).
    diffusion: Tensor
    #: (iii) :math:`\tfrac{\eta^2}{2} \operatorname{tr}(H \Sigma_B) \ge 0`: the Itô (noise) curvature drift.
    curvature_drift: Tensor
    #: :math:`\tfrac{\eta^2}{2} \bar g^\top H \bar g \ge 0`: the curvature met by the mean step.
    gradient_curvature: Tensor

    @property
    def drift(self) -> Tensor:
        """The expected change per step, to second order, is ``gradient_drift + curvature_drift +
        gradient_curvature``."""
        return self.gradient_drift + self.curvature_drift + self.gradient_curvature


class WindowChanges(NamedTuple):
    r"""Observed and predicted changes of :math:`s_1` over windows (:meth:`SpectralMonitor.window_changes`).

    Arrays of shape ``(n_windows, n_layers)`` unless said otherwise (float64).
    """

    #: the step at which each window starts, shape ``(n_windows,)``.
    start: Tensor
    #: :math:`s_1(t + w) - s_1(t)` from exact SVDs.
    observed: Tensor
    #: the expected change, the sum of the three drift terms over the window.
    predicted: Tensor
    #: the part of ``predicted`` due to the gradient drift (i).
    gradient: Tensor
    #: the part due to the curvature drift (iii) (the noise; ``predicted - gradient - curvature`` is
    #: the mean step's curvature).
    curvature: Tensor
    #: the standard deviation of the noise part of the change over the window (ii).
    diffusion: Tensor
    #: per layer, :math:`R^2 = 1 - \sum(\text{obs} - \text{pred})^2 / \sum(\text{obs} - \overline{\text{obs}})^2`,
    #: shape ``(n_layers,)`` (NaN with fewer than two windows or constant observations).
    r2: Tensor


# ----------------------------------------------------------------------------- singular values


def _check_matrix(W, name: str = "W") -> Tensor:
    return check_tensor(W, name, min_dims=2, max_dims=2)


def _svd64(W: Tensor, gap_tol: float, name: str = "W") -> tuple[Tensor, Tensor, Tensor]:
    """Reduced SVD of ``W`` in float64, ``(U (m, r), S (r,), V (n, r))``, with a simple top value."""
    U, S, Vh = torch.linalg.svd(W.detach().to(torch.float64), full_matrices=False)
    s1 = S[0]
    s2 = S[1] if len(S) > 1 else torch.zeros((), dtype=S.dtype, device=S.device)
    if not bool(s1 - s2 > gap_tol * s1):
        raise ValueError(
            f"{name} has no simple top singular value: s1 = {float(s1):.6g}, s2 = {float(s2):.6g} "
            f"(relative gap {float((s1 - s2) / s1) if s1 > 0 else 0.0:.2e} <= gap_tol = {gap_tol:g}); "
            "s1 is not differentiable there")
    # a sign convention: the entry of v1 of largest magnitude is positive (u1 v1^T does not depend on it)
    U, V = U.clone(), Vh.mT.clone()
    sign = 1.0 if float(V[V[:, 0].abs().argmax(), 0]) >= 0 else -1.0
    U[:, 0] *= sign
    V[:, 0] *= sign
    return U, S, V


def top_singular_pair(W: Tensor, *, gap_tol: float = 1e-6) -> SingularPair:
    r"""The top singular triple :math:`(u_1, s_1, v_1)` of a matrix, from an SVD in float64.

    :math:`W v_1 = s_1 u_1`, :math:`W^\top u_1 = s_1 v_1`, :math:`\|u_1\| = \|v_1\| = 1`; the
    sign is fixed so that the entry of :math:`v_1` of largest magnitude is positive.

    Args:
        W: a finite matrix ``(m, n)`` (a convolution kernel reshaped to ``(c_out, c_in kh kw)``).
        gap_tol: the smallest relative gap :math:`(s_1 - s_2)/s_1` accepted, in (0, 1).

    Returns:
        :class:`SingularPair` ``(u (m,), s (), v (n,))`` in ``W``'s dtype and device.

    Raises:
        TypeError: ``W`` not a floating tensor.
        ValueError: ``W`` not 2-D, empty, with NaN/Inf entries, or without a simple top singular
            value (:math:`s_1 - s_2 \le` ``gap_tol`` :math:`s_1`, a zero matrix included).

    References:
        [golub2013matrix], [luo2025optimization].
    """
    W = _check_matrix(W)
    gap_tol = check_tol(gap_tol, "gap_tol")
    U, S, V = _svd64(W, gap_tol)
    return SingularPair(U[:, 0].to(W.dtype), S[0].to(W.dtype), V[:, 0].to(W.dtype))


def singular_value_gradient(W: Tensor, *, gap_tol: float = 1e-6) -> Tensor:
    r"""The gradient of the top singular value: :math:`\nabla_W s_1(W) = u_1 v_1^\top`.

    From :math:`s_1 = u_1^\top W v_1` and the first-order perturbation of a simple eigenvalue of
    :math:`\begin{pmatrix} 0 & W \\ W^\top & 0 \end{pmatrix}`:
    :math:`\frac{d}{dt} s_1(W + tE)|_{0} = u_1^\top E v_1 = \langle u_1 v_1^\top, E\rangle`.

    Args:
        W: a finite matrix ``(m, n)``.
        gap_tol: see :func:`top_singular_pair`.

    Returns:
        ``(m, n)``, a rank-one matrix of unit Frobenius norm, in ``W``'s dtype.

    Raises:
        TypeError, ValueError: as :func:`top_singular_pair`.

    References:
        [luo2025optimization].
    """
    W = _check_matrix(W)
    gap_tol = check_tol(gap_tol, "gap_tol")
    U, _, V = _svd64(W, gap_tol)
    return torch.outer(U[:, 0], V[:, 0]).to(W.dtype)


def _quadform(U: Tensor, S: Tensor, V: Tensor, E: Tensor) -> Tensor:
    """:math:`E^T H E` for a batch ``E (..., m, n)`` in float64, from the reduced SVD of ``W``."""
    u1, v1, s1 = U[:, 0], V[:, 0], S[0]
    Ev = E @ v1  # (..., m)
    Etu = E.mT @ u1  # (..., n)
    a = Ev @ U  # (..., r): a_i = u_i^T E v1
    b = Etu @ V  # (..., r): b_j = u1^T E v_j
    tail_a = (Ev - a @ U.mT).square().sum(-1)  # sum over the left basis beyond the rank
    tail_b = (Etu - b @ V.mT).square().sum(-1)
    a, b, s = a[..., 1:], b[..., 1:], S[1:]
    denominator = (s1 - s) * (s1 + s)
    inner = ((a.square() + b.square()) * s1 + 2 * s * a * b) / denominator
    return inner.sum(-1) + (tail_a + tail_b) / s1


def singular_value_hessian_quadform(W: Tensor, E: Tensor, *, gap_tol: float = 1e-6) -> Tensor:
    r"""The second derivative of the top singular value along ``E``: :math:`E^\top H E`.

    .. math::

        \frac{d^2}{dt^2} s_1(W + tE)\Big|_{t=0}
        = \sum_{i \ne 1} \frac{s_1 (u_i^\top E v_1)^2}{s_1^2 - s_i^2}
        + \sum_{j \ne 1} \frac{s_1 (u_1^\top E v_j)^2}{s_1^2 - s_j^2}
        + 2 \sum_{l \ne 1} \frac{s_l (u_l^\top E v_1)(u_1^\top E v_l)}{s_1^2 - s_l^2},

    the sums running over full left/right orthonormal bases with :math:`s_i = 0` beyond the rank
    (derivation in the module docstring). The result is :math:`\ge 0` (:math:`s_1` is convex) and
    grows like :math:`1/(s_1 - s_2)`: refused when the relative gap is below ``gap_tol``. One
    float64 SVD of ``W``, then :math:`O(mn + m r + n r)` per direction (the Hessian is not built).

    Args:
        W: a finite matrix ``(m, n)``.
        E: directions ``(..., m, n)`` (a batch of them is evaluated at once).
        gap_tol: see :func:`top_singular_pair`.

    Returns:
        ``(...)``, float64, on ``W``'s device.

    Raises:
        TypeError: ``W`` or ``E`` not floating tensors.
        ValueError: ``W`` not 2-D or not finite or without a simple top singular value; ``E`` not
            finite or not of shape ``(..., m, n)``.

    References:
        [luo2025optimization], [golub2013matrix].
    """
    W = _check_matrix(W)
    E = check_tensor(E, "E", min_dims=2)
    if tuple(E.shape[-2:]) != tuple(W.shape):
        raise ValueError(f"E must have shape (..., {W.shape[0]}, {W.shape[1]}), got {tuple(E.shape)}")
    gap_tol = check_tol(gap_tol, "gap_tol")
    U, S, V = _svd64(W, gap_tol)
    return _quadform(U, S, V, E.detach().to(device=U.device, dtype=torch.float64))


def lipschitz_drift_terms(
    W: Tensor,
    grad: Tensor,
    per_sample_grads: Tensor,
    lr: float,
    batch_size: int,
    *,
    dataset_size: int | None = None,
    weight_decay: float = 0.0,
    gap_tol: float = 1e-6,
) -> DriftTerms:
    r"""The drift and diffusion of :math:`s_1(W)` in one SGD step (see the module docstring).

    With :math:`G = u_1 v_1^\top`, :math:`\bar g` = ``grad`` (+ ``weight_decay`` :math:`W`),
    :math:`d_k = g_k - \frac1K\sum_j g_j` the centred per-example gradients and
    :math:`c = 1/B` (times :math:`1 - B/N` with ``dataset_size`` :math:`N`: batches drawn without
    replacement):

    * ``gradient_drift`` :math:`= -\eta \langle G, \bar g\rangle`;
    * ``diffusion`` :math:`= \eta \sqrt{c\,(K-1)^{-1} \sum_k \langle G, d_k\rangle^2}`;
    * ``curvature_drift`` :math:`= \frac{\eta^2}{2}\, c\,(K-1)^{-1} \sum_k d_k^\top H d_k`;
    * ``gradient_curvature`` :math:`= \frac{\eta^2}{2}\, \bar g^\top H \bar g`,

    the quadratic forms by :func:`singular_value_hessian_quadform`. Computed in float64. Valid
    for plain SGD (no momentum; with momentum :math:`\mu` the step is roughly
    :math:`\eta/(1-\mu)`); a second-order expansion, accurate while
    :math:`\eta \|\bar g + \xi\| \ll s_1 - s_2`.

    Args:
        W: the weight ``(m, n)`` (a kernel reshaped to ``(c_out, c_in kh kw)``).
        grad: the mean gradient of the loss with respect to ``W``, ``(m, n)``.
        per_sample_grads: ``(K, m, n)`` gradients of single examples' losses, ``K >= 2``
            (:func:`per_sample_gradients`), from which :math:`\Sigma` is estimated.
        lr: the SGD step :math:`\eta > 0`.
        batch_size: :math:`B \ge 1`, the examples per step.
        dataset_size: :math:`N \ge B` for the finite-population factor :math:`1 - B/N`
            (None: :math:`N = \infty`, i.e. sampling with replacement).
        weight_decay: :math:`\lambda \ge 0`, added to the mean gradient as :math:`\lambda W`.
        gap_tol: see :func:`top_singular_pair`.

    Returns:
        :class:`DriftTerms` ``(gradient_drift, diffusion, curvature_drift, gradient_curvature)``,
        0-dim float64 tensors, per step; ``.drift`` is the expected change.

    Raises:
        TypeError, ValueError: a bad argument (named), shapes that do not match ``W``, ``K < 2``,
            ``dataset_size < batch_size``, or no simple top singular value.

    References:
        [luo2025optimization], [luo2026principles].
    """
    W = _check_matrix(W)
    grad = check_tensor(grad, "grad", min_dims=2, max_dims=2)
    per_sample_grads = check_tensor(per_sample_grads, "per_sample_grads", min_dims=3, max_dims=3)
    if tuple(grad.shape) != tuple(W.shape):
        raise ValueError(f"grad must have W's shape {tuple(W.shape)}, got {tuple(grad.shape)}")
    if tuple(per_sample_grads.shape[1:]) != tuple(W.shape) or per_sample_grads.shape[0] < 2:
        raise ValueError(
            f"per_sample_grads must have shape (K, {W.shape[0]}, {W.shape[1]}) with K >= 2, got "
            f"{tuple(per_sample_grads.shape)}")
    lr = check_positive(lr, "lr")
    batch_size = check_int(batch_size, "batch_size")
    if dataset_size is not None:
        dataset_size = check_int(dataset_size, "dataset_size")
        if dataset_size < batch_size:
            raise ValueError(f"dataset_size must be >= batch_size = {batch_size}, got {dataset_size}")
    weight_decay = check_number(weight_decay, "weight_decay", minimum=0.0)
    gap_tol = check_tol(gap_tol, "gap_tol")
    U, S, V = _svd64(W, gap_tol)
    return _drift(U, S, V, W, grad, per_sample_grads, lr, batch_size, dataset_size, weight_decay)


def _drift(U, S, V, W, grad, per_sample_grads, lr, batch_size, dataset_size, weight_decay) -> DriftTerms:
    f64 = dict(device=U.device, dtype=torch.float64)
    mean = grad.detach().to(**f64) + weight_decay * W.detach().to(**f64)
    samples = per_sample_grads.detach().to(**f64)
    K = samples.shape[0]
    d = samples - samples.mean(0)
    scale = 1.0 / batch_size * (1.0 - batch_size / dataset_size if dataset_size is not None else 1.0)
    u1, v1 = U[:, 0], V[:, 0]
    projections = (d @ v1) @ u1  # <G, d_k>, (K,)
    gsg = projections.square().sum() / (K - 1) * scale
    trace = _quadform(U, S, V, d).sum() / (K - 1) * scale
    return DriftTerms(
        gradient_drift=-lr * (u1 @ mean @ v1),
        diffusion=lr * gsg.sqrt(),
        curvature_drift=0.5 * lr**2 * trace,
        gradient_curvature=0.5 * lr**2 * _quadform(U, S, V, mean),
    )


# ----------------------------------------------------------------------------- per-sample gradients


def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return model


def _check_labels(y, x: Tensor, name: str = "y") -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim < 1 or len(y) != len(x):
        raise ValueError(f"{name} must have {len(x)} entries along its first dimension, got shape {tuple(y.shape)}")
    if y.is_floating_point() and not bool(torch.isfinite(y).all()):
        raise ValueError(f"{name} contains NaN or Inf entries")
    return y


def _parameter_names(model: nn.Module, names) -> list[str]:
    available = dict(model.named_parameters())
    if names is None:
        return [name for name, p in available.items() if p.requires_grad]
    if isinstance(names, str) or not isinstance(names, Sequence) or not names:
        raise TypeError(f"names must be a non-empty sequence of parameter names or None, got {names!r}")
    for name in names:
        if not isinstance(name, str) or name not in available:
            raise ValueError(f"names must name parameters of the model, got {name!r}")
    return list(names)


def _per_sample(model, x, y, loss_fn, names, chunk_size) -> dict[str, Tensor]:
    from torch.func import functional_call, grad, vmap

    state = {name: t.detach() for name, t in (*model.named_parameters(), *model.named_buffers())}
    wanted = {name: state.pop(name) for name in names}

    def loss_one(weights, xk, yk):
        out = functional_call(model, {**state, **weights}, (xk.unsqueeze(0),))
        return loss_fn(out, yk.unsqueeze(0))

    with eval_mode(model):
        return vmap(grad(loss_one), in_dims=(None, 0, 0), chunk_size=chunk_size)(wanted, x, y)


def per_sample_gradients(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    names: Sequence[str] | None = None,
    chunk_size: int | None = None,
) -> dict[str, Tensor]:
    r"""The gradient of each example's loss with respect to the model's parameters.

    :math:`g_k = \nabla_\theta\, \ell(f_\theta(x_k), y_k)` for every example, by
    ``torch.func.vmap(torch.func.grad(...))`` over a ``functional_call`` of the model: one
    vectorized pass, no Python loop. The model runs in eval mode (no batch statistics or dropout,
    so that examples do not interact; every submodule's mode is restored) on its device; ``x``
    and ``y`` are moved there. Their mean is the gradient of the batch's mean loss.

    Args:
        model: maps ``(N, *input_shape)`` to outputs; must be ``torch.func``-compatible (no
            in-place updates of buffers in eval mode, no ``.item()``).
        x: ``(K, *input_shape)``, finite.
        y: ``(K, ...)`` labels or targets.
        loss_fn: ``(outputs, labels) -> scalar`` on one example (a batch of one); default
            cross-entropy.
        names: the parameters to differentiate (names of ``model.named_parameters()``, e.g.
            ``["0.weight"]``); None: every parameter that requires a gradient.
        chunk_size: examples per vectorized chunk (None: all at once; smaller saves memory).

    Returns:
        ``{name: (K, *param.shape)}`` on the model's device, detached.

    Raises:
        TypeError: ``model`` not a module, ``x``/``y`` not tensors, ``loss_fn`` not callable,
            ``names`` not a sequence of names.
        ValueError: empty or non-finite ``x``, ``y`` of another length, unknown ``names``,
            ``chunk_size`` < 1.

    References:
        [luo2025optimization].
    """
    model = _check_model(model)
    x = check_batch(x, "x")
    y = _check_labels(y, x)
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")
    names = _parameter_names(model, names)
    if chunk_size is not None:
        chunk_size = check_int(chunk_size, "chunk_size")
    device = model_device(model, x.device)
    return _per_sample(model, x.to(device), y.to(device), loss_fn or nn.functional.cross_entropy, names,
                       chunk_size)


# ----------------------------------------------------------------------------- label noise


def corrupt_labels(
    labels: Tensor,
    rate: float,
    *,
    num_classes: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""A copy of ``labels`` in which ``round(rate * N)`` randomly chosen labels are wrong.

    The chosen examples (a uniformly random subset) get a class drawn uniformly among the
    ``num_classes - 1`` other classes, so exactly that fraction of the labels is wrong (symmetric
    label noise, the noisy supervision of the experiments of [luo2025optimization]).

    Args:
        labels: ``(N,)`` integer class indices in ``[0, num_classes)``.
        rate: the fraction of wrong labels, in ``[0, 1]``.
        num_classes: the number of classes (>= 2); default ``labels.max() + 1``.
        generator: a CPU ``torch.Generator`` for the choice; None: torch's global generator.

    Returns:
        ``(N,)`` int64 on ``labels``' device.

    Raises:
        TypeError: ``labels`` not an integer tensor; a bad ``generator``.
        ValueError: ``labels`` not 1-D or empty or outside ``[0, num_classes)``, ``rate`` outside
            ``[0, 1]`` or NaN, ``num_classes`` < 2.
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise TypeError(f"labels must hold integer class indices, got {labels.dtype}")
    if labels.ndim != 1 or len(labels) == 0:
        raise ValueError(f"labels must have shape (N,) with N >= 1, got {tuple(labels.shape)}")
    rate = check_number(rate, "rate", minimum=0.0, maximum=1.0)
    if num_classes is None:
        num_classes = max(int(labels.max()) + 1, 2)
    num_classes = check_int(num_classes, "num_classes", 2)
    if int(labels.min()) < 0 or int(labels.max()) >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got values in "
                         f"[{int(labels.min())}, {int(labels.max())}]")
    check_generator(generator)
    out = labels.detach().cpu().to(torch.int64).clone()
    n_wrong = int(round(rate * len(out)))
    chosen = torch.randperm(len(out), generator=generator)[:n_wrong]
    shift = torch.randint(1, num_classes, (n_wrong,), generator=generator)
    out[chosen] = (out[chosen] + shift) % num_classes
    return out.to(labels.device)


# ----------------------------------------------------------------------------- the monitor


def _optional_int(value, name: str, minimum: int = 1) -> int | None:
    return None if value is None else check_int(value, name, minimum)


class _Layer(NamedTuple):
    name: str
    module: nn.Module
    weight_name: str | None  # the parameter's name in model.named_parameters(), None when absent


class SpectralMonitor:
    r"""A :func:`stabilitylab.train.fit` callback recording how each layer's norm evolves.

    For every ``nn.Linear`` and ``nn.Conv2d`` of the model (or the modules named in ``layers``),
    with :math:`W` the weight (a kernel reshaped to ``(c_out, c_in kh kw)``), it records at each
    step that is a multiple of ``every``:

    * ``s1``: :math:`s_1(W)` by ``n_iter`` steps of power iteration warm-started from the previous
      record's vector (a lower bound, close once the vector has converged), or by an exact float64
      SVD at the steps in ``exact_steps``, at multiples of ``exact_every`` and wherever drift
      terms are computed (``exact`` says which);
    * ``conv_norm`` (convolutions only, NaN for linear layers): the certified operator norm
      :func:`stabilitylab.spectral.conv2d_module_norm` on the layer's input size (seen at the
      first record), which is not :math:`s_1` of the reshaped kernel;
    * ``product``: the product over layers of ``s1`` (``conv_norm`` for convolutions), the
      Lipschitz bound of the network when every other layer is 1-Lipschitz (ReLU; not BatchNorm);
    * ``lower`` (with ``lower_points``, at exact steps): an attained lower bound of the network's
      constant, :func:`stabilitylab.lipschitz.lower_bound` (Jacobian norms with ``lower_n_iter=0``);
    * ``gap``: :math:`(s_1 - s_2)/s_1` at exact steps;
    * at multiples of ``drift_every``: the terms of :func:`lipschitz_drift_terms` per layer
      (``gradient_drift``, ``diffusion``, ``curvature_drift``, ``gradient_curvature``), from
      per-example gradients (:func:`per_sample_gradients`) of ``drift_samples`` examples drawn
      from ``drift_data`` (all of it when it is no larger), or of the step's own batch without
      ``drift_data``. NaN where the top singular value is not simple (``gap_tol``).

    Entries not computed at a record are NaN. The learning rate and weight decay are read from
    the optimizer's first parameter group unless given; the batch size is the step's batch size
    unless given. The theory assumes plain SGD: with another optimizer or momentum, a warning is
    issued once. The monitor shows no progress bar and draws randomness only from
    ``generator`` (with one, a training run is identical with and without the monitor).

    Use ``fit(model, data, optimizer="sgd", momentum=0.0, callbacks=[monitor])``; call
    :meth:`observe` with ``step=0`` before ``fit`` to record the initialization.

    Args:
        every: record at steps that are multiples of ``every``.
        n_iter: power iterations per record (warm-started).
        exact_every: also record an exact SVD at multiples of it (None: never by this rule).
        exact_steps: steps at which to record an exact SVD.
        drift_every: compute the drift terms at multiples of it (None: never).
        drift_data: ``(inputs, labels)`` tensors or an ``ArrayDataset`` for the drift terms.
        drift_samples: examples per drift estimate (>= 2).
        lr, batch_size, weight_decay, dataset_size: see :func:`lipschitz_drift_terms` (None: read
            from the step; ``dataset_size`` None: no finite-population factor).
        loss_fn: the per-example loss ``(outputs, labels) -> scalar``; default cross-entropy.
        lower_points: points ``(N, *input_shape)`` at which the lower bound is evaluated.
        lower_n_iter: gradient-ascent steps of the lower bound (0: Jacobian norms only).
        layers: names of modules (``model.named_modules()``) to monitor; None: every
            ``nn.Linear`` and ``nn.Conv2d``.
        gap_tol: see :func:`top_singular_pair`.
        conv_tol: the certified relative gap of the convolution norms.
        chunk_size: see :func:`per_sample_gradients`.
        generator: a CPU ``torch.Generator`` for the start vectors, the drift subsamples and the
            lower bound; None: torch's global generator.

    Raises:
        TypeError, ValueError: a bad argument, named.

    References:
        [luo2025optimization], [luo2026principles], [virmaux2018lipschitz].
    """

    FIELDS = ("s1", "conv_norm", "gap", "gradient_drift", "diffusion", "curvature_drift", "gradient_curvature")

    def __init__(
        self,
        *,
        every: int = 1,
        n_iter: int = 4,
        exact_every: int | None = None,
        exact_steps: Sequence[int] = (),
        drift_every: int | None = None,
        drift_data=None,
        drift_samples: int = 256,
        lr: float | None = None,
        batch_size: int | None = None,
        weight_decay: float | None = None,
        dataset_size: int | None = None,
        loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
        lower_points: Tensor | None = None,
        lower_n_iter: int = 0,
        layers: Sequence[str] | None = None,
        gap_tol: float = 1e-6,
        conv_tol: float = 1e-3,
        chunk_size: int | None = None,
        generator: torch.Generator | None = None,
    ) -> None:
        self.every = check_int(every, "every")
        self.n_iter = check_int(n_iter, "n_iter")
        self.exact_every = _optional_int(exact_every, "exact_every")
        if isinstance(exact_steps, (str, bytes)) or not isinstance(exact_steps, Sequence):
            raise TypeError(f"exact_steps must be a sequence of ints >= 0, got {exact_steps!r}")
        self.exact_steps = frozenset(check_int(s, "exact_steps", 0) for s in exact_steps)
        self.drift_every = _optional_int(drift_every, "drift_every")
        if drift_data is not None:
            check_data(drift_data, "drift_data")
            pair = as_tensor_pair(drift_data)
            if pair is None:
                raise TypeError("drift_data must be an (inputs, labels) pair of tensors or a TensorDataset")
            check_batch(pair[0], "drift_data")
            drift_data = pair
        self.drift_data = drift_data
        self.drift_samples = check_int(drift_samples, "drift_samples", 2)
        self.lr = None if lr is None else check_positive(lr, "lr")
        self.batch_size = _optional_int(batch_size, "batch_size")
        self.weight_decay = None if weight_decay is None else check_number(weight_decay, "weight_decay", minimum=0.0)
        self.dataset_size = _optional_int(dataset_size, "dataset_size")
        if loss_fn is not None and not callable(loss_fn):
            raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")
        self.loss_fn = loss_fn or nn.functional.cross_entropy
        self.lower_points = None if lower_points is None else check_batch(lower_points, "lower_points")
        self.lower_n_iter = check_int(lower_n_iter, "lower_n_iter", 0)
        if layers is not None and (isinstance(layers, str) or not isinstance(layers, Sequence)
                                   or not all(isinstance(name, str) for name in layers)):
            raise TypeError(f"layers must be a sequence of module names or None, got {layers!r}")
        self.layer_filter = None if layers is None else list(layers)
        self.gap_tol = check_tol(gap_tol, "gap_tol")
        self.conv_tol = check_tol(conv_tol, "conv_tol")
        self.chunk_size = _optional_int(chunk_size, "chunk_size")
        self.generator = check_generator(generator)
        self.layer_names: list[str] = []
        self._layers: list[_Layer] | None = None
        self._model_id: int | None = None
        self._vectors: dict[str, Tensor] = {}
        self._input_sizes: dict[str, tuple[int, int]] = {}
        self._rows: list[dict] = []
        self._warned = False

    # ------------------------------------------------------------------ set-up

    def _setup(self, model: nn.Module, x: Tensor | None) -> None:
        if self._layers is not None:
            if id(model) != self._model_id:
                raise ValueError("model must be the model this monitor has been recording")
            return
        modules = dict(model.named_modules())
        if self.layer_filter is None:
            chosen = [(n, m) for n, m in modules.items() if isinstance(m, (nn.Linear, nn.Conv2d))]
        else:
            chosen = []
            for name in self.layer_filter:
                if name not in modules or not isinstance(modules[name], (nn.Linear, nn.Conv2d)):
                    raise ValueError(f"layers must name nn.Linear or nn.Conv2d modules of the model, got {name!r}")
                chosen.append((name, modules[name]))
        if not chosen:
            raise ValueError("model must contain an nn.Linear or nn.Conv2d layer to monitor")
        parameters = dict(model.named_parameters())
        layers = []
        for name, module in chosen:
            key = f"{name}.weight" if name else "weight"
            layers.append(_Layer(name, module, key if parameters.get(key) is module.weight else None))
        if any(isinstance(layer.module, nn.Conv2d) for layer in layers):
            if x is None:
                raise ValueError("x must be given at the first record of a model with convolutions "
                                 "(their input sizes are read from one forward pass)")
            self._read_input_sizes(model, x, layers)
        self._layers, self._model_id = layers, id(model)
        self.layer_names = [layer.name for layer in layers]

    def _read_input_sizes(self, model: nn.Module, x: Tensor, layers: list[_Layer]) -> None:
        handles = []
        for layer in layers:
            if isinstance(layer.module, nn.Conv2d):
                def hook(module, inputs, output, name=layer.name):
                    self._input_sizes[name] = tuple(inputs[0].shape[-2:])
                handles.append(layer.module.register_forward_hook(hook))
        try:
            with torch.no_grad(), eval_mode(model):
                model(x[:1].to(model_device(model, x.device)))
        finally:
            for handle in handles:
                handle.remove()

    # ------------------------------------------------------------------ recording

    def __call__(self, state) -> None:
        """Record at ``state.step`` when it is due (``state``: a :class:`stabilitylab.train.TrainStep`)."""
        step = getattr(state, "step", None)
        if isinstance(step, bool) or not isinstance(step, numbers.Integral):
            raise TypeError(f"state must be a stabilitylab.train.TrainStep, got {type(state).__name__}")
        if self._due(step):
            self.observe(state.model, step=step, x=state.x, y=state.y, loss=state.loss, optimizer=state.optimizer)

    def _due(self, step: int) -> bool:
        return (step % self.every == 0 or step in self.exact_steps
                or (self.exact_every is not None and step % self.exact_every == 0)
                or (self.drift_every is not None and step % self.drift_every == 0))

    def observe(
        self,
        model: nn.Module,
        *,
        step: int,
        x: Tensor | None = None,
        y: Tensor | None = None,
        loss: Tensor | float | None = None,
        optimizer: torch.optim.Optimizer | None = None,
    ) -> None:
        """Record now (at ``step``), whatever ``every`` says: e.g. ``step=0`` before training.

        Args:
            model: the model (the same one at every record).
            step: the step count to file the record under (>= 0).
            x, y: the current batch (needed for the drift terms without ``drift_data``, and ``x``
                at the first record of a model with convolutions).
            loss: the batch loss to file with the record (NaN when None).
            optimizer: where the learning rate and weight decay are read when not given.
        """
        model = _check_model(model)
        step = check_int(step, "step", 0)
        if x is not None:
            x = check_batch(x, "x")
        if y is not None:
            y = _check_labels(y, x if x is not None else y)
        loss = math.nan if loss is None else check_number(loss, "loss")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        self._setup(model, x)
        drift = self.drift_every is not None and step % self.drift_every == 0
        exact = drift or step in self.exact_steps or (self.exact_every is not None and step % self.exact_every == 0)
        row = {"step": step, "exact": exact, "loss": loss, "product": math.nan, "lower": math.nan,
               "batch_size": None}
        row.update({name: [math.nan] * len(self._layers) for name in self.FIELDS})
        grads = self._drift_gradients(model, x, y) if drift else None
        settings = self._drift_settings(optimizer, y) if drift else None
        if settings is not None:
            row["batch_size"] = settings[1]
        norms = []
        with torch.no_grad():
            for i, layer in enumerate(self._layers):
                W = layer.module.weight.detach()
                W = W.reshape(W.shape[0], -1)
                if exact:
                    self._exact(row, i, layer, W, grads, settings)
                else:
                    row["s1"][i] = self._power(layer.name, W)
                if isinstance(layer.module, nn.Conv2d):
                    from stabilitylab.spectral import conv2d_module_norm

                    row["conv_norm"][i] = float(
                        conv2d_module_norm(layer.module, self._input_sizes[layer.name], tol=self.conv_tol).upper)
                    norms.append(row["conv_norm"][i])
                else:
                    norms.append(row["s1"][i])
        row["product"] = math.prod(norms)
        if exact and self.lower_points is not None:
            from stabilitylab.lipschitz import lower_bound

            row["lower"] = float(lower_bound(model, self.lower_points, n_iter=self.lower_n_iter,
                                             generator=self.generator))
        self._rows.append(row)

    def _power(self, name: str, W: Tensor) -> float:
        v = self._vectors.get(name)
        if v is None or v.shape[0] != W.shape[1]:
            v = torch.randn(W.shape[1], generator=self.generator, dtype=torch.float64).to(W.device)
        W64 = W.to(torch.float64)
        for _ in range(self.n_iter):
            v = W64.mT @ (W64 @ v)
            v = v / torch.linalg.vector_norm(v).clamp_min(torch.finfo(torch.float64).tiny)
        self._vectors[name] = v
        return float(torch.linalg.vector_norm(W64 @ v))

    def _exact(self, row: dict, i: int, layer: _Layer, W: Tensor, grads, settings) -> None:
        S = torch.linalg.svdvals(W.to(torch.float64))
        row["s1"][i] = float(S[0])
        row["gap"][i] = float((S[0] - S[1]) / S[0]) if len(S) > 1 and S[0] > 0 else (1.0 if S[0] > 0 else 0.0)
        try:
            U, S, V = _svd64(W, self.gap_tol, name=layer.name)
        except ValueError:
            return  # no simple top singular value: the drift terms stay NaN
        self._vectors[layer.name] = V[:, 0]
        if grads is None or layer.weight_name is None:
            return
        samples = grads[layer.weight_name].reshape(-1, *W.shape)
        lr, batch_size, weight_decay = settings
        terms = _drift(U, S, V, W, samples.mean(0), samples, lr, batch_size,
                       None if self.dataset_size is None or self.dataset_size < batch_size else self.dataset_size,
                       weight_decay)
        for name, value in terms._asdict().items():
            row[name][i] = float(value)

    def _drift_gradients(self, model: nn.Module, x: Tensor | None, y: Tensor | None) -> dict[str, Tensor]:
        if self.drift_data is not None:
            inputs, labels = self.drift_data
            if len(inputs) > self.drift_samples:
                index = torch.randperm(len(inputs), generator=self.generator)[: self.drift_samples]
                inputs, labels = inputs[index.to(inputs.device)], labels[index.to(labels.device)]
        elif x is None or y is None:
            raise ValueError("x and y must be given for the drift terms when the monitor has no drift_data")
        else:
            inputs, labels = x[: self.drift_samples], y[: self.drift_samples]
        if len(inputs) < 2:
            raise ValueError("the drift terms need at least two examples (drift_data or the batch)")
        names = [layer.weight_name for layer in self._layers if layer.weight_name is not None]
        device = model_device(model, inputs.device)
        return _per_sample(model, inputs.to(device), labels.to(device), self.loss_fn, names, self.chunk_size)

    def _drift_settings(self, optimizer, y) -> tuple[float, int, float]:
        group = optimizer.param_groups[0] if optimizer is not None else {}
        lr = self.lr if self.lr is not None else group.get("lr")
        if lr is None:
            raise ValueError("lr must be given to the monitor for drift terms outside fit (no optimizer)")
        batch_size = self.batch_size if self.batch_size is not None else (len(y) if y is not None else None)
        if batch_size is None:
            raise ValueError("batch_size must be given to the monitor for drift terms without a batch")
        weight_decay = self.weight_decay if self.weight_decay is not None else float(group.get("weight_decay", 0.0))
        plain = optimizer is None or (isinstance(optimizer, torch.optim.SGD) and not group.get("momentum", 0.0))
        if not plain and not self._warned:
            warnings.warn("SpectralMonitor: the drift terms assume plain SGD (no momentum, no adaptive steps); "
                          f"the optimizer is {type(optimizer).__name__}", stacklevel=3)
            self._warned = True
        return float(lr), int(batch_size), float(weight_decay)

    # ------------------------------------------------------------------ results

    def __len__(self) -> int:
        return len(self._rows)

    def _column(self, key: str, dtype=torch.float64) -> Tensor:
        return torch.tensor([row[key] for row in self._rows], dtype=dtype)

    def _table(self, key: str) -> Tensor:
        return torch.tensor([row[key] for row in self._rows], dtype=torch.float64).reshape(
            len(self._rows), len(self.layer_names))

    @property
    def steps(self) -> Tensor:
        """The steps of the records, ``(R,)`` int64."""
        return self._column("step", torch.int64)

    @property
    def exact(self) -> Tensor:
        """Whether ``s1`` came from an exact SVD, ``(R,)`` bool."""
        return self._column("exact", torch.bool)

    @property
    def loss(self) -> Tensor:
        """The batch loss at each record, ``(R,)`` (NaN when not known)."""
        return self._column("loss")

    @property
    def product(self) -> Tensor:
        """The product of the layer norms, ``(R,)``."""
        return self._column("product")

    @property
    def lower(self) -> Tensor:
        """The attained lower bound of the network's constant, ``(R,)`` (NaN where not computed)."""
        return self._column("lower")

    def __getattr__(self, name: str) -> Tensor:
        if name in SpectralMonitor.FIELDS:
            return self._table(name)  # (R, L)
        raise AttributeError(f"'SpectralMonitor' object has no attribute {name!r}")

    def to_dict(self) -> dict:
        """The records as plain lists: ``{"layers", "step", "exact", "loss", "product", "lower",
        field: {layer: [...]}}`` for the per-layer fields (JSON-serializable; NaN where not
        computed)."""
        out = {"layers": list(self.layer_names)}
        for key in ("step", "exact", "loss", "product", "lower"):
            out[key] = [row[key] for row in self._rows]
        for key in self.FIELDS:
            out[key] = {name: [row[key][i] for row in self._rows] for i, name in enumerate(self.layer_names)}
        return out

    def window_changes(self, window: int, *, reshuffled: bool = False) -> WindowChanges:
        r"""Observed against predicted changes of :math:`s_1` over consecutive windows of ``window`` steps.

        Uses the records with drift terms (steps :math:`t_j`, ``drift_every`` apart, exact
        :math:`s_1` there). A window starts at a drift step :math:`t` and ends at :math:`t + w`,
        also a drift step; windows do not overlap. Each drift record stands for the
        ``drift_every`` steps that follow it:

        * observed :math:`= s_1(t + w) - s_1(t)`;
        * predicted :math:`= \text{drift\_every} \sum_{t \le t_j < t + w} (\text{i} + \text{iii} + c)_j`
          with :math:`c` the mean step's curvature (``gradient_curvature``);
        * diffusion :math:`= (\text{drift\_every} \sum_j \text{ii}_j^2)^{1/2}`;
        * :math:`R^2 = 1 - \sum (\text{obs} - \text{pred})^2 / \sum (\text{obs} - \overline{\text{obs}})^2` per layer.

        The Itô model takes the batches of successive steps to be independent. ``fit`` visits
        the data in a new random order every epoch (random reshuffling): the :math:`k` steps of
        a window that fall in one epoch draw :math:`kB` distinct examples, so the variance of
        their summed noise is :math:`k\,\Sigma/B\,(1 - kB/N)` rather than
        :math:`k\,\Sigma/B\,(1 - B/N)`, and it vanishes over a whole epoch. With
        ``reshuffled=True`` the noise terms (iii) and (ii)\ :sup:`2` of each such piece are
        multiplied by :math:`(1 - kB/N)_+/(1 - B/N)` (epochs of :math:`\lceil N/B\rceil` steps
        counted from step 0; needs ``dataset_size``).

        Args:
            window: the window length in steps, a multiple of ``drift_every``.
            reshuffled: correct the noise terms for batches drawn without replacement within
                each epoch, as ``fit`` does.

        Returns:
            :class:`WindowChanges`.

        Raises:
            ValueError: no drift terms recorded, ``window`` not a positive multiple of
                ``drift_every``, or ``reshuffled`` without ``dataset_size``.
        """
        window = check_int(window, "window")
        if not isinstance(reshuffled, bool):
            raise TypeError(f"reshuffled must be a bool, got {reshuffled!r}")
        if self.drift_every is None:
            raise ValueError("window_changes needs drift terms: build the monitor with drift_every")
        if window % self.drift_every:
            raise ValueError(f"window must be a multiple of drift_every = {self.drift_every}, got {window}")
        if reshuffled and self.dataset_size is None:
            raise ValueError("reshuffled needs the monitor's dataset_size")
        rows = {}
        for row in self._rows:
            if row["step"] % self.drift_every == 0 and row["exact"]:
                rows[row["step"]] = row  # the last record of a step wins
        per = window // self.drift_every
        starts, observed, gradient, curvature, second, variance = [], [], [], [], [], []
        steps = sorted(rows)
        t = steps[0] if steps else 0
        while steps and t + window <= steps[-1]:
            inside = [t + j * self.drift_every for j in range(per)]
            if all(s in rows for s in [*inside, t + window]):
                factor = torch.tensor(self._noise_factors(inside, rows) if reshuffled else [1.0] * len(inside),
                                      dtype=torch.float64)[:, None]
                table = lambda key: torch.tensor([rows[s][key] for s in inside], dtype=torch.float64)  # noqa: E731
                starts.append(t)
                observed.append(torch.tensor(rows[t + window]["s1"], dtype=torch.float64)
                                - torch.tensor(rows[t]["s1"], dtype=torch.float64))
                gradient.append(self.drift_every * table("gradient_drift").sum(0))
                curvature.append(self.drift_every * (factor * table("curvature_drift")).sum(0))
                second.append(self.drift_every * table("gradient_curvature").sum(0))
                variance.append(self.drift_every * (factor * table("diffusion").square()).sum(0))
            t += window
        n_layers = len(self.layer_names)
        if not starts:
            empty = torch.zeros(0, n_layers, dtype=torch.float64)
            return WindowChanges(torch.zeros(0, dtype=torch.int64), empty, empty, empty, empty, empty,
                                 torch.full((n_layers,), math.nan, dtype=torch.float64))
        observed_t = torch.stack(observed)
        gradient_t, curvature_t = torch.stack(gradient), torch.stack(curvature)
        predicted = gradient_t + curvature_t + torch.stack(second)
        residual = (observed_t - predicted).square().sum(0)
        total = (observed_t - observed_t.mean(0)).square().sum(0)
        r2 = torch.where(total > 0, 1 - residual / total.clamp_min(torch.finfo(torch.float64).tiny),
                         torch.full_like(total, math.nan))
        if len(starts) < 2:
            r2 = torch.full_like(total, math.nan)
        return WindowChanges(torch.tensor(starts, dtype=torch.int64), observed_t, predicted, gradient_t,
                             curvature_t, torch.stack(variance).sqrt(), r2)

    def _noise_factors(self, inside: list[int], rows: dict) -> list[float]:
        """Per drift record of a window: (1 - kB/N)_+ / (1 - B/N) for the k window steps of its epoch."""
        N = self.dataset_size
        factors = []
        epochs = []
        for s in inside:
            B = rows[s]["batch_size"] or 1
            epochs.append(s // math.ceil(N / B))
        for s, epoch in zip(inside, epochs):
            B = rows[s]["batch_size"] or 1
            if B >= N:
                factors.append(0.0)
                continue
            k = self.drift_every * epochs.count(epoch)
            factors.append(max(0.0, 1.0 - k * B / N) / (1.0 - B / N))
        return factors

    def __repr__(self) -> str:
        return f"SpectralMonitor(layers={self.layer_names}, records={len(self._rows)})"
