r"""The Hessian as an operator: Hessian-vector products in the parameters and in the inputs."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from stabilitylab._checks import check_tensor
from stabilitylab._deprecation import renamed_kwargs
from stabilitylab.curvature._common import (
    LossClosure,
    _check_bool,
    _check_callable,
    _check_params,
    _check_product,
    _check_vector,
    _finite,
    _grad_of,
    _grads,
    _scalar_loss,
)

__all__ = ["HessianOperator", "hvp", "input_hvp"]


class HessianOperator:
    r"""The Hessian of a loss with respect to parameters, as a linear operator.

    The loss and its gradient :math:`g = \nabla_\theta L` (with ``create_graph=True``) are
    computed once, at construction; each product :math:`Hv = \nabla_\theta(g^\top v)` is then one
    backward pass through that graph, without re-running the forward pass. Products are counted
    in :attr:`n_products` (a batch of :math:`b` vectors counts :math:`b`). Products run on the
    parameters' device, in their dtype.

    Args:
        closure: zero-argument callable returning the scalar loss (``loss_fn=``, its former name,
            still works with a ``DeprecationWarning``).
        params: the tensors (requiring grad, one dtype and device) the Hessian is taken in.

    Attributes:
        params: the parameters, a tuple.
        loss: the loss value (detached).
        grad: the gradient, a tuple shaped like params (detached).
        numel: the number of parameters :math:`P` (the Hessian is :math:`P \times P`).
        n_products: Hessian-vector products computed so far.

    Raises:
        TypeError or ValueError: params that are not tensors requiring grad, of mixed dtypes or
            devices; a ``closure`` that is not callable, or does not return a finite scalar.
    """

    @renamed_kwargs(loss_fn="closure")
    def __init__(self, closure: LossClosure, params: Sequence[Tensor]):
        _check_callable(closure, "closure", "a zero-argument callable returning the loss")
        self.params = _check_params(params)
        first = self.params[0]
        if any(p.dtype != first.dtype or p.device != first.device for p in self.params):
            raise ValueError("params must share one dtype and device, got "
                             f"{sorted({(str(p.dtype), str(p.device)) for p in self.params})}")
        self.dtype, self.device = first.dtype, first.device
        with torch.enable_grad():
            loss = _scalar_loss(closure)
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

    def _product(self, v: Sequence[Tensor]) -> tuple[Tensor, ...]:
        self.n_products += 1
        return tuple(h.detach() for h in _grad_of(self._graph_grads, self.params, v))

    def _product_flat(self, v: Tensor) -> Tensor:
        """:math:`Hv` for a flat vector known to be finite and of the right size (the Krylov methods' path)."""
        out = self._product(self.unflatten(v.to(dtype=self.dtype, device=self.device)))
        return self.flatten(out).to(v.dtype)

    def matvec(self, v: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """:math:`Hv` for ``v`` shaped like params; returns a tuple shaped like params.

        Raises:
            TypeError or ValueError: ``v`` of the wrong length, shapes or dtype, or with NaN/Inf
                entries; a product that is not finite (the error names ``closure``).
        """
        return _check_product(self._product(_check_vector(v, self.params)))

    def matvec_flat(self, v: Tensor) -> Tensor:
        """:math:`Hv` for a flat ``(P,)`` vector (any dtype: cast to the parameters' and back)."""
        check_tensor(v, "v", min_dims=1, max_dims=1)
        if v.shape[0] != self.numel:
            raise ValueError(f"v must have shape ({self.numel},), got {tuple(v.shape)}")
        return _check_product((self._product_flat(v),))[0]

    def matmat(self, V: Tensor) -> Tensor:
        r""":math:`HV` for a flat ``(P, b)`` matrix, through one batched backward pass
        (``is_grads_batched``, vmap over the backward) when the model's operations support it,
        else column by column. Returns ``(P, b)`` in ``V``'s dtype."""
        check_tensor(V, "V", min_dims=2, max_dims=2)
        if V.shape[0] != self.numel:
            raise ValueError(f"V must have shape ({self.numel}, b), got {tuple(V.shape)}")
        return _check_product((self._matmat(V),))[0]

    def _matmat(self, V: Tensor) -> Tensor:
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
        return torch.stack([self._product_flat(rows[i]) for i in range(b)], dim=1).to(V.dtype)

    __call__ = matvec


def _operator(closure, params) -> HessianOperator:
    if isinstance(closure, HessianOperator):
        if params is not None and [id(p) for p in params] != [id(p) for p in closure.params]:
            raise ValueError("params must be None (or the operator's own) when closure is a HessianOperator")
        return closure
    _check_callable(closure, "closure", "a zero-argument callable returning the loss, or a HessianOperator")
    if params is None:
        raise ValueError("params must be given (a sequence of tensors requiring grad), got None")
    return HessianOperator(closure, params)


@renamed_kwargs(loss_fn="closure")
def hvp(closure: LossClosure, params: Sequence[Tensor], v: Sequence[Tensor]) -> tuple[Tensor, ...]:
    r"""Hessian-vector product :math:`\nabla^2_\theta L(\theta)\, v` by double backpropagation.

    With :math:`g(\theta) = \nabla_\theta L` computed with ``create_graph=True``,
    :math:`Hv = \nabla_\theta\,(g(\theta)^\top v)`: one forward, two backward passes, and no
    :math:`P \times P` matrix. For many products at the same point, build a
    :class:`HessianOperator` once instead. The product runs on the parameters' device; ``v`` is
    moved there.

    Args:
        closure: zero-argument callable returning the scalar loss (formerly ``loss_fn``).
        params: the tensors :math:`\theta` (requiring grad).
        v: a tuple of tensors shaped like ``params``, finite.

    Returns:
        :math:`Hv`, a tuple of tensors shaped like ``params`` (detached).

    Raises:
        TypeError or ValueError: params that do not require grad; ``v`` of the wrong length or
            shapes, or with NaN/Inf entries; a ``closure`` that does not return a finite scalar,
            or a product that is not finite (a loss not twice differentiable there).

    References:
        [pearlmutter1994fast].
    """
    _check_callable(closure, "closure", "a zero-argument callable returning the loss")
    params = _check_params(params)
    v = _check_vector(v, params)
    with torch.enable_grad():
        grads = _grads(_scalar_loss(closure), params, create_graph=True)
        return _check_product([h.detach() for h in _grad_of(grads, params, v, retain_graph=False)])


@renamed_kwargs(loss_fn="input_loss")
def input_hvp(input_loss: Callable[[Tensor], Tensor], x: Tensor, v: Tensor, *, batched: bool = False,
              create_graph: bool = False) -> Tensor:
    r"""Product of the Hessian with respect to the *input*, :math:`\nabla^2_x \ell(x)\, v`.

    The input-space curvature that CURE regularizes [moosavi2019robustness]: for a loss summed
    over a batch of independent examples, the Hessian is block-diagonal across examples, so one
    product with a ``v`` of the batch's shape gives every example's product at once. The product
    runs on ``x``'s device (``v`` is moved there).

    Args:
        input_loss: callable ``x -> scalar loss`` (formerly ``loss_fn``; not a zero-argument
            closure: it takes the input).
        x: the input, any shape, finite.
        v: a tensor of ``x``'s shape, or with ``batched``, ``(b, *x.shape)``: ``b`` products in one
            batched backward pass.
        batched: ``v`` holds a leading batch of vectors.
        create_graph: keep the graph of the result (to differentiate it further, e.g. with respect
            to the model's parameters).

    Returns:
        :math:`Hv`, of ``v``'s shape.

    Raises:
        TypeError or ValueError: ``x`` not a finite floating tensor, ``v`` of the wrong shape or
            with NaN/Inf entries, an ``input_loss`` that does not return a finite scalar.
    """
    _check_callable(input_loss, "input_loss", "a callable x -> scalar loss")
    check_tensor(x, "x")
    check_tensor(v, "v")
    batched = _check_bool(batched, "batched")
    create_graph = _check_bool(create_graph, "create_graph")
    expected = (v.shape[0], *x.shape) if batched and v.ndim == x.ndim + 1 else tuple(x.shape)
    if tuple(v.shape) != tuple(expected) or (batched and v.ndim != x.ndim + 1):
        raise ValueError(f"v must have shape {'(b, ' if batched else ''}{tuple(x.shape)}{')' if batched else ''}, "
                         f"got {tuple(v.shape)}")
    leaf = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = _scalar_loss(lambda: input_loss(leaf), "input_loss")
        (g,) = _grads(loss, (leaf,), create_graph=True)
        (h,) = _grad_of((g,), (leaf,), (v.to(dtype=x.dtype, device=x.device),), create_graph=create_graph,
                        retain_graph=create_graph, batched=batched)
    if not _finite(h):
        raise ValueError("input_loss: the Hessian-vector product is not finite (NaN or Inf): the loss or its "
                         "derivatives are not finite at x")
    return h if create_graph else h.detach()

