r"""Curvature regularizers: differentiable scalars to add to a training loss."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from stabilitylab._checks import check_batch, check_choice, check_generator, check_int, check_positive
from stabilitylab._deprecation import renamed_kwargs
from stabilitylab._devices import to_model_device
from stabilitylab.curvature._common import (
    LossClosure,
    _check_callable,
    _check_loss_fn,
    _check_params,
    _dot,
    _grad_of,
    _grads,
    _norm,
    _rademacher,
    _scalar_loss,
)

__all__ = ["gradient_norm_penalty", "input_curvature_penalty", "hessian_trace_penalty"]


def _loss_of(closure) -> Tensor:
    """The loss tensor itself, or the closure's value (not checked for NaN: a penalty is added to a
    training loss every step, where a host synchronization would cost, and NaN propagates)."""
    if isinstance(closure, Tensor):
        if closure.numel() != 1 or not closure.is_floating_point():
            raise ValueError(f"closure must be a floating scalar tensor or a zero-argument callable, got a tensor "
                             f"of shape {tuple(closure.shape)} and dtype {closure.dtype}")
        return closure.reshape(())
    _check_callable(closure, "closure", "a zero-argument callable returning the loss, or the loss tensor")
    return _scalar_loss(closure, finite=False)


@renamed_kwargs(loss_fn="closure")
def gradient_norm_penalty(
    closure: LossClosure | Tensor,
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
        closure: zero-argument callable returning the loss (or, for ``"exact"``, the loss tensor
            itself, its graph reaching ``params``); formerly ``loss_fn``.
        params: the tensors (requiring grad) the gradient is taken in.
        method: ``"exact"`` or ``"finite_difference"``.
        h: the finite-difference step (in parameter units), > 0.

    Returns:
        A 0-dim tensor.

    Raises:
        TypeError or ValueError: each naming the argument, for params that do not require grad, unknown
            ``method``, ``h`` <= 0, a loss tensor with ``"finite_difference"``.
    """
    params = _check_params(params)
    method = check_choice(method, "method", ("exact", "finite_difference"))
    h = check_positive(h, "h")
    if method == "exact":
        grads = _grads(_loss_of(closure), params, create_graph=True)
        return sum(g.pow(2).sum() for g in grads)
    if isinstance(closure, Tensor):
        raise ValueError("closure must be a callable for method='finite_difference' (it is evaluated twice), "
                         "got a tensor")
    g1 = _grads(_loss_of(closure), params, create_graph=False)
    gnorm = _norm(g1)
    value = gnorm.pow(2)
    if gnorm == 0:
        return value + sum((p * 0).sum() for p in params)
    originals = [p.detach().clone() for p in params]
    # The step and its exact undo go through ``.data`` so that the parameters' version counters do
    # not move: a loss graph built before this call (``fit(penalty=...)`` builds one) saved these
    # tensors, and it finds them bit for bit as it left them.
    try:
        for p, g in zip(params, g1):
            p.data.add_(g, alpha=h / float(gnorm))
        g2 = _grads(_loss_of(closure), params, create_graph=False)
    finally:
        for p, p0 in zip(params, originals):
            p.data.copy_(p0)
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
    ``create_graph=True``. The inputs and labels are moved to the model's device; the model's
    mode is left as it is.

    Args:
        model: maps a batch of inputs to outputs (an ``nn.Module`` or any callable).
        x: inputs ``(n, ...)``, finite floating.
        y: labels ``(n, ...)``.
        h: the finite-difference step in input units, > 0.
        loss_fn: ``(outputs, labels) -> mean loss over the batch``; default cross-entropy. The
            per-example gradients are those of ``n * loss_fn``, so examples must be independent
            (no batch-norm in training mode).

    Returns:
        A 0-dim tensor.

    Raises:
        TypeError or ValueError: each naming the argument, for ``h`` <= 0, an empty or non-finite batch
            ``x``, labels ``y`` that are not a tensor of ``x``'s length, a ``model`` or
            ``loss_fn`` that is not callable.
    """
    _check_callable(model, "model", "a callable (an nn.Module) mapping inputs to outputs")
    h = check_positive(h, "h")
    check_batch(x, "x")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim == 0 or len(y) != len(x):
        raise ValueError(f"y must hold one label per input ({len(x)}), got shape {tuple(y.shape)}")
    loss_fn = _check_loss_fn(loss_fn)
    x, y = to_model_device(model, x, y)
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


@renamed_kwargs(loss_fn="closure")
def hessian_trace_penalty(
    closure: LossClosure | Tensor,
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
        closure: zero-argument callable returning the loss, or the loss tensor itself (formerly
            ``loss_fn``).
        params: the tensors (requiring grad) the Hessian is taken in.
        n_samples: probes, >= 1.
        generator: seeds the probes.

    Returns:
        A 0-dim tensor.

    Raises:
        TypeError or ValueError: each naming the argument, for params that do not require grad,
            ``n_samples`` < 1, a ``closure`` that is neither callable nor a scalar tensor.
    """
    params = _check_params(params)
    check_int(n_samples, "n_samples", 1)
    generator = check_generator(generator)
    grads = _grads(_loss_of(closure), params, create_graph=True)
    total = 0.0
    for _ in range(n_samples):
        z = [_rademacher(p.shape, generator, p.dtype, p.device) for p in params]
        hz = _grad_of(grads, params, z, create_graph=True, retain_graph=True)
        total = total + _dot(z, hz)
    if not isinstance(total, Tensor):  # no parameter reaches the gradient's graph: the Hessian is 0
        total = sum((p * 0).sum() for p in params)
    return total / n_samples

