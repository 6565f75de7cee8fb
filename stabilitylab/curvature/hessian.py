r"""The Hessian as an operator: Hessian-vector products in the parameters and in the inputs."""

from __future__ import annotations

import functools
import time
import types
import warnings
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from stabilitylab._checks import check_choice, check_tensor
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

PRODUCT_METHODS = ("auto", "double_backward", "forward_over_reverse")


# ----------------------------------------------------------------------------- the closure as a function of params


def _modules_reachable(closure, depth: int = 4) -> list[nn.Module]:
    """The ``nn.Module`` objects a closure can reach: its free variables, defaults, the globals its
    code (and nested code) names, ``functools.partial`` arguments, a bound method's ``self``, the
    attributes of objects, and tuples, lists and dicts of these, up to ``depth`` levels.
    Outermost modules only (a module inside another one found is dropped)."""
    found, seen = [], set()

    def names_of(code):
        yield from code.co_names
        for const in code.co_consts:
            if isinstance(const, types.CodeType):
                yield from names_of(const)

    def visit(obj, d):
        if id(obj) in seen or isinstance(obj, (str, bytes, int, float, bool, Tensor, types.ModuleType, type)):
            return
        seen.add(id(obj))
        if isinstance(obj, nn.Module):
            found.append(obj)
            return
        if d <= 0 or obj is None:
            return
        if isinstance(obj, functools.partial):
            for item in (obj.func, *obj.args, *obj.keywords.values()):
                visit(item, d - 1)
        elif isinstance(obj, types.MethodType):
            visit(obj.__self__, d - 1)
            visit(obj.__func__, d - 1)
        elif isinstance(obj, types.FunctionType):
            for cell in obj.__closure__ or ():
                try:
                    visit(cell.cell_contents, d - 1)
                except ValueError:  # an empty cell
                    pass
            for item in (*(obj.__defaults__ or ()), *(obj.__kwdefaults__ or {}).values()):
                visit(item, d - 1)
            for name in set(names_of(obj.__code__)):
                if name in obj.__globals__:
                    visit(obj.__globals__[name], d - 1)
        elif isinstance(obj, (tuple, list)):
            for item in obj[:64]:
                visit(item, d - 1)
        elif isinstance(obj, dict):
            for item in list(obj.values())[:64]:
                visit(item, d - 1)
        elif isinstance(getattr(obj, "__dict__", None), dict):  # an object's attributes (a bound method's self)
            for item in list(vars(obj).values())[:64]:
                visit(item, d - 1)

    visit(closure, depth)
    inner = {id(sub) for m in found for sub in m.modules() if sub is not m}
    return [m for m in found if id(m) not in inner]


def _has_hooks(modules: Sequence[nn.Module]) -> bool:
    """Any forward/backward (pre-)hook on these modules or their submodules, or a global module hook."""
    from torch.nn.modules import module as _module

    globals_ = ("_global_forward_hooks", "_global_forward_pre_hooks", "_global_backward_hooks",
                "_global_backward_pre_hooks")
    if any(getattr(_module, name, None) for name in globals_):
        return True
    local = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(getattr(sub, name, None) for m in modules for sub in m.modules() for name in local)


class _ClosureModule(nn.Module):
    """The closure as the forward of a module that holds the models it calls, so that
    ``torch.func.functional_call`` can swap their parameters for the duration of one call."""

    def __init__(self, closure: LossClosure, owners: Sequence[nn.Module]):
        super().__init__()
        self.owners = nn.ModuleList(owners)
        self._closure = closure

    def forward(self) -> Tensor:
        return self._closure()


def _state(modules: Sequence[nn.Module], device: torch.device):
    """What a pure closure leaves alone: the global random state(s) and the version counters of
    every parameter and buffer of ``modules``."""
    rng = [torch.random.get_rng_state()]
    if device.type == "cuda":
        rng.append(torch.cuda.get_rng_state(device))
    versions = [t._version for m in modules for t in (*m.parameters(), *m.buffers())]
    return rng, versions


def _same_state(a, b) -> bool:
    return len(a[0]) == len(b[0]) and all(torch.equal(x, y) for x, y in zip(a[0], b[0])) and a[1] == b[1]


class HessianOperator:
    r"""The Hessian of a loss with respect to parameters, as a linear operator.

    Products are counted in :attr:`n_products` (a batch of :math:`b` vectors counts :math:`b`),
    and run on the parameters' device, in their dtype. Two ways to compute them (``method``):

    * ``"double_backward"`` (Pearlmutter's trick): the loss and its gradient
      :math:`g = \nabla_\theta L` (with ``create_graph=True``) are computed once, at construction;
      each product :math:`Hv = \nabla_\theta(g^\top v)` is then one backward pass through that
      graph, without re-running the forward pass. Several vectors at once
      (:meth:`matmat`) go through one batched backward pass (``is_grads_batched``: ``vmap``
      over the backward) when the model's operations support it, else column by column.
    * ``"forward_over_reverse"``: :math:`Hv = \partial_t\, \nabla_\theta L(\theta + t v)|_{t=0}`,
      the forward-mode derivative (``torch.func.jvp``) of the reverse-mode gradient
      (``torch.func.grad``) of the loss as a function of the parameters; several vectors at
      once by ``torch.func.vmap`` over the ``jvp``. Each product re-runs the forward and
      backward passes (with tangents), so no graph is kept between products. The loss is made a
      function of the parameters with ``torch.func.functional_call`` over the ``nn.Module``
      objects the closure reaches (its free variables, defaults, the globals it names,
      ``functools.partial`` arguments, a bound method's ``self``): the closure is called once
      per product. It is used only when that is safe: every tensor of ``params`` belongs to
      such a module, no module has hooks, the closure's first call (at construction) draws no
      random numbers and changes no parameter or buffer in place (BatchNorm in training mode,
      dropout), the first product runs and reproduces the stored loss (the gradient's graph is
      kept until then, and freed after). Otherwise, and on any
      error of ``torch.func`` (an operation without a forward-mode or batching rule, in-place
      updates of captured tensors), the operator falls back to ``"double_backward"`` for good,
      silently; :attr:`product_method` says which one is in use.
    * ``"auto"`` (the default): double backward for single products (:meth:`matvec`, Lanczos,
      power iteration), the faster of one batched backward pass and column-by-column
      backward passes for :meth:`matmat`, chosen by timing both once, on the first call with
      at least 4 columns (half the columns each way; both results are used). Measured on one CPU
      thread (``benchmarks/curvature.py``: MLPs of 2.4k, 85k and 300k parameters and a CNN
      of 11k on 512 examples), forward-over-reverse was 1.5x-6x slower than double backward for
      one vector, and 0.8x-1.8x (batched, 4 to 8 vectors) slower or only marginally faster
      than batched double backward, never faster than column-by-column double backward, so
      ``"auto"`` does not choose it; batched double backward paid only on the 2.4k-parameter
      MLP (1.6x per vector with 8 vectors) and cost up to 1.5x per vector on the larger ones.

    Args:
        closure: zero-argument callable returning the scalar loss (``loss_fn=``, its former name,
            still works with a ``DeprecationWarning``).
        params: the tensors (requiring grad, one dtype and device) the Hessian is taken in.
        method: ``"auto"``, ``"double_backward"`` or ``"forward_over_reverse"`` (see above).
            Every method gives the same products up to rounding.

    Attributes:
        params: the parameters, a tuple.
        loss: the loss value (detached).
        grad: the gradient, a tuple shaped like params (detached).
        numel: the number of parameters :math:`P` (the Hessian is :math:`P \times P`).
        n_products: Hessian-vector products computed so far.
        method: the ``method`` asked for.
        product_method: the way products are computed now, ``"double_backward"`` or
            ``"forward_over_reverse"`` (after a fallback, the former).
        batched: for :meth:`matmat` in double backward, whether one batched backward pass is
            used (``True``), column-by-column passes (``False``), or not decided yet (``None``).

    Raises:
        TypeError or ValueError: params that are not tensors requiring grad, of mixed dtypes or
            devices; a ``closure`` that is not callable, or does not return a finite scalar;
            an unknown ``method``.

    References:
        [pearlmutter1994fast].
    """

    @renamed_kwargs(loss_fn="closure")
    def __init__(self, closure: LossClosure, params: Sequence[Tensor], *, method: str = "auto"):
        _check_callable(closure, "closure", "a zero-argument callable returning the loss")
        self.method = check_choice(method, "method", PRODUCT_METHODS)
        self.params = _check_params(params)
        first = self.params[0]
        if any(p.dtype != first.dtype or p.device != first.device for p in self.params):
            raise ValueError("params must share one dtype and device, got "
                             f"{sorted({(str(p.dtype), str(p.device)) for p in self.params})}")
        self.dtype, self.device = first.dtype, first.device
        self._closure = closure
        self.shapes = [p.shape for p in self.params]
        self.sizes = [p.numel() for p in self.params]
        self.numel = sum(self.sizes)
        self.n_products = 0
        self.batched = None if self.method == "auto" else True
        self._batched_ok = True
        self._functional = None  # (module, names) when the closure can be called as a function of params
        self._fwr_checked = False
        self._live_cache = None
        owners = _modules_reachable(closure) if self.method == "forward_over_reverse" else []
        names = self._names_in(owners)
        before = _state(owners, self.device) if names is not None else None
        with torch.enable_grad():
            loss = _scalar_loss(closure)
            if names is not None and _same_state(before, _state(owners, self.device)):
                self._functional = (_ClosureModule(closure, owners), names)
            # kept for a fallback until the first forward-over-reverse product has been checked
            grads = self._graph_grads = _grads(loss, self.params, create_graph=True)
        self.product_method = "forward_over_reverse" if self._functional is not None else "double_backward"
        self.loss = loss.detach()
        self.grad = tuple(g.detach() for g in grads)

    def _names_in(self, owners: Sequence[nn.Module]) -> list[str] | None:
        """The name, in a module holding ``owners``, of every tensor of params; None when one is
        missing or the modules have hooks."""
        if not owners or _has_hooks(owners):
            return None
        where = {}
        for i, m in enumerate(owners):
            for name, p in m.named_parameters(remove_duplicate=False):
                where.setdefault(id(p), f"owners.{i}.{name}")
        names = [where.get(id(p)) for p in self.params]
        return None if any(n is None for n in names) else names

    def __repr__(self) -> str:
        return (f"HessianOperator(numel={self.numel}, dtype={self.dtype}, method={self.product_method!r}, "
                f"n_products={self.n_products})")

    # vectors shaped like params <-> flat vectors
    def flatten(self, v: Sequence[Tensor]) -> Tensor:
        """A vector shaped like params as one flat ``(P,)`` tensor."""
        return torch.cat([t.reshape(-1) for t in v])

    def unflatten(self, flat: Tensor) -> tuple[Tensor, ...]:
        """A flat ``(P,)`` (or ``(b, P)``) tensor as tensors shaped like params (``(b, *shape)``)."""
        lead = flat.shape[:-1]
        return tuple(c.reshape(*lead, *s) for c, s in zip(flat.split(self.sizes, dim=-1), self.shapes))

    # ------------------------------------------------------------------------- the two ways

    def _fall_back(self) -> None:
        """Switch to double backward for good, with the gradient's graph built at construction, or,
        once it was freed (after a checked forward-over-reverse product), built again (the closure
        is then known to be pure: calling it again gives the same loss)."""
        self._functional, self.product_method = None, "double_backward"
        if self._graph_grads is None:
            with torch.enable_grad():
                self._graph_grads = _grads(_scalar_loss(self._closure), self.params, create_graph=True)

    def _double_backward(self, v: Sequence[Tensor], batched: bool = False) -> tuple[Tensor, ...]:
        return tuple(h.detach() for h in _grad_of(self._graph_grads, self.params, v, batched=batched))

    def _fwr_functions(self):
        module, names = self._functional
        from torch.func import functional_call, grad

        def loss_of(*tensors):
            loss = functional_call(module, dict(zip(names, tensors)), ())
            return loss.reshape(()), loss.detach()

        return grad(loss_of, argnums=tuple(range(len(names))), has_aux=True)

    def _forward_over_reverse(self, v: Sequence[Tensor], batched: bool = False) -> tuple[Tensor, ...] | None:
        """:math:`Hv` by ``jvp`` of ``grad`` (``vmap`` over the first dimension of ``v`` when
        batched); None (after falling back) when torch.func cannot run this closure."""
        from torch.func import jvp, vmap

        gradient = self._fwr_functions()
        primals = tuple(p.detach() for p in self.params)
        try:
            with torch.enable_grad(), warnings.catch_warnings():
                warnings.simplefilter("ignore")
                if batched:
                    out = vmap(lambda *t: jvp(gradient, primals, t, has_aux=True)[1])(*v)
                    loss = None
                else:
                    _, out, loss = jvp(gradient, primals, tuple(v), has_aux=True)
        except Exception:  # no forward-mode or batching rule, a captured tensor updated in place, ...
            if batched:
                return None  # the caller goes column by column
            self._fall_back()
            return None
        if not self._fwr_checked and not batched:
            # the closure must compute the same loss as at construction (the same data, no randomness)
            if loss.device.type != "meta" and not torch.allclose(loss, self.loss, rtol=1e-5, atol=0):
                self._fall_back()
                return None
            self._fwr_checked, self._graph_grads, self._live_cache = True, None, None  # free the graph
        return tuple(h.detach() for h in out)

    def _product(self, v: Sequence[Tensor]) -> tuple[Tensor, ...]:
        out = self._forward_over_reverse(v) if self._functional is not None else None
        if out is None:
            out = self._double_backward(v)
        self.n_products += 1
        return out

    def _product_flat(self, v: Tensor) -> Tensor:
        """:math:`Hv` for a flat vector known to be finite and of the right size (the Krylov methods' path)."""
        flat = v.to(dtype=self.dtype, device=self.device)
        if self._functional is None:  # the fast path: one backward call, no per-tensor bookkeeping
            live = self._live()
            if live is not None:
                outputs, positions = live
                chunks = flat.split(self.sizes)
                out = torch.autograd.grad(outputs, self.params, retain_graph=True, allow_unused=True,
                                          grad_outputs=[chunks[i].view(self.shapes[i]) for i in positions])
                self.n_products += 1
                if any(h is None for h in out):
                    out = [torch.zeros_like(p) if h is None else h for h, p in zip(out, self.params)]
                return torch.cat([h.reshape(-1) for h in out]).to(v.dtype)
        return self.flatten(self._product(self.unflatten(flat))).to(v.dtype)

    def _live(self):
        """The gradients that carry a graph and their positions in params (None when none does)."""
        if self._live_cache is None:
            positions = [i for i, g in enumerate(self._graph_grads) if g.requires_grad]
            self._live_cache = ([self._graph_grads[i] for i in positions], positions) if positions else False
        return self._live_cache or None

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
        r""":math:`HV` for a flat ``(P, b)`` matrix: ``b`` products through one batched pass
        (``vmap``) when the model's operations support it and it is the faster way (see the
        class: ``method``), else column by column. Returns ``(P, b)`` in ``V``'s dtype."""
        check_tensor(V, "V", min_dims=2, max_dims=2)
        if V.shape[0] != self.numel:
            raise ValueError(f"V must have shape ({self.numel}, b), got {tuple(V.shape)}")
        return _check_product((self._matmat(V),))[0]

    def _batched(self, rows: Tensor) -> Tensor | None:
        """The products of the rows ``(b, P)`` in one batched pass, or None when that is not possible."""
        b = rows.shape[0]
        if self._functional is not None:
            out = self._forward_over_reverse(self.unflatten(rows), batched=True)
        elif self._batched_ok:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    out = self._double_backward(self.unflatten(rows), batched=True)
            except RuntimeError:  # an operation without a batching rule for its double backward
                self._batched_ok, out = False, None
        else:
            out = None
        if out is None:
            return None
        self.n_products += b
        return torch.cat([h.reshape(b, -1) for h in out], dim=1)

    def _columns(self, rows: Tensor) -> Tensor:
        return torch.stack([self.flatten(self._product(self.unflatten(r))) for r in rows])

    def _matmat(self, V: Tensor) -> Tensor:
        rows = V.T.to(dtype=self.dtype, device=self.device).contiguous()
        return self._rows(rows).T.to(V.dtype)

    def _rows(self, rows: Tensor) -> Tensor:
        """The products ``(b, P)`` of the rows ``(b, P)``."""
        b = rows.shape[0]
        if self._functional is not None and not self._fwr_checked and b > 1:
            # the first forward-over-reverse product is a single one: it checks the closure
            head = self._columns(rows[:1])
            return torch.cat([head, self._rows(rows[1:])])
        if b > 1 and self.batched is None and b >= 4 and self._functional is None and self._batched_ok:
            # "auto": time one batched pass on half the rows against the other half one by one
            half = b // 2
            start = time.perf_counter()
            first = self._batched(rows[:half])
            if first is None:
                self.batched = False
                return self._columns(rows)
            middle = time.perf_counter()
            rest = self._columns(rows[half:])
            end = time.perf_counter()
            self.batched = (middle - start) / half < (end - middle) / (b - half)
            return torch.cat([first, rest])
        if b > 1 and self.batched is not False:
            out = self._batched(rows)
            if out is not None:
                return out
        return self._columns(rows)

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

