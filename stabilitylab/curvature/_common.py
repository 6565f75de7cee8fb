"""Private helpers shared by the curvature submodules: argument checks, vectors shaped like
parameters, gradients, random probes and data batches."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stabilitylab._checks import check_int
from stabilitylab._devices import to_model_device

LossClosure = Callable[[], Tensor]



def _document_fields(cls):
    """Give each NamedTuple field of ``cls`` its text in ``cls.__field_docs__`` as its docstring.

    The API reference would read ``#:`` comments from the module named by ``__module__``, which
    for the re-exported result types is ``stabilitylab.curvature``, not the module defining
    them: a docstring on the field itself survives the re-export.
    """
    for field, text in cls.__field_docs__.items():
        getattr(cls, field).__doc__ = text
    return cls


# ----------------------------------------------------------------------------- argument checks


def _check_params(params, name: str = "params") -> tuple[Tensor, ...]:
    if isinstance(params, Tensor):
        params = (params,)
    if not isinstance(params, Iterable) or isinstance(params, (str, bytes)):
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


def _finite(t: Tensor) -> bool:
    """True when ``t`` has no NaN/Inf entries (always True on the ``meta`` device: no values there)."""
    return t.device.type == "meta" or bool(torch.isfinite(t).all())


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
        if t.is_complex():
            raise TypeError(f"{name}[{i}] must be a real tensor, got {t.dtype}")
        if not _finite(t):
            raise ValueError(f"{name}[{i}] contains NaN or Inf entries")
    return tuple(t.to(dtype=p.dtype, device=p.device) for t, p in zip(v, params))


NOT_FINITE = ("closure: a Hessian-vector product is not finite (NaN or Inf): the loss or its derivatives are "
              "not finite near these parameters")


def _check_product(out: Sequence[Tensor]) -> tuple[Tensor, ...]:
    """``out`` (Hessian-vector products) when every entry is finite, else the ValueError naming ``closure``."""
    if not all(_finite(t) for t in out):
        raise ValueError(NOT_FINITE)
    return tuple(out)


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return value


def _check_callable(fn, name: str, what: str) -> Callable:
    if not callable(fn):
        raise TypeError(f"{name} must be {what}, got {type(fn).__name__}")
    return fn


def _check_loss_fn(loss_fn, name: str = "loss_fn") -> Callable[[Tensor, Tensor], Tensor]:
    """``loss_fn(outputs, labels)``; None means cross-entropy."""
    if loss_fn is None:
        return F.cross_entropy
    return _check_callable(loss_fn, name, "a callable (outputs, labels) -> scalar loss, or None")


def _scalar_loss(closure, name: str = "closure", *, finite: bool = True) -> Tensor:
    """Call the zero-argument ``closure`` and check that it returned a (finite) scalar tensor."""
    _check_callable(closure, name, "a zero-argument callable returning the loss")
    loss = closure()
    if not isinstance(loss, Tensor) or loss.numel() != 1:
        shape = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise ValueError(f"{name} must return a scalar tensor, got {shape}")
    if not loss.is_floating_point():
        raise ValueError(f"{name} must return a floating scalar tensor, got {loss.dtype}")
    if finite and not _finite(loss):
        raise ValueError(f"{name} returned a non-finite loss ({float(loss.detach())}): the curvature of NaN or Inf "
                         "is undefined")
    return loss.reshape(())


def _model_params(model) -> tuple[list[str], list[Tensor]]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if not named:
        raise ValueError("model has no parameters requiring grad")
    return [n for n, _ in named], [p for _, p in named]


# ----------------------------------------------------------------------------- vectors and gradients


def _randn(shape, generator, like: Tensor) -> Tensor:
    """Gaussian entries drawn on the CPU (in float64) from ``generator``, then put in ``like``'s dtype and device."""
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype=like.dtype, device=like.device)


def _rademacher(shape, generator, dtype: torch.dtype, device: torch.device) -> Tensor:
    bits = torch.randint(0, 2, shape, generator=generator, dtype=torch.int8)
    return (2 * bits - 1).to(dtype=dtype, device=device)


def _dot(a: Sequence[Tensor], b: Sequence[Tensor]) -> Tensor:
    return sum((x * y).sum() for x, y in zip(a, b))


def _norm(a: Sequence[Tensor]) -> Tensor:
    return torch.sqrt(sum(x.pow(2).sum() for x in a))


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


# ----------------------------------------------------------------------------- data


def _iter_batches(data, batch_size: int):
    """``(inputs, labels)`` batches of ``data`` in order: an ``(inputs, labels)`` pair of tensors (or
    a ``TensorDataset`` of two), a map-style ``Dataset`` of pairs, or a ``DataLoader`` (its own
    batches). Labels may have any shape ``(N, ...)``: class indices or regression targets."""
    from torch.utils.data import DataLoader, Dataset, TensorDataset

    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        data = data.tensors
    if isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        x, y = data
        if x.ndim == 0 or y.ndim == 0 or len(x) != len(y) or len(x) == 0:
            raise ValueError("data must hold inputs (N, ...) and as many labels (N, ...), N >= 1, got shapes "
                             f"{tuple(x.shape)} and {tuple(y.shape)}")
        for start in range(0, len(x), batch_size):
            yield x[start : start + batch_size], y[start : start + batch_size]
        return
    if isinstance(data, Dataset) and not isinstance(data, DataLoader):
        data = DataLoader(data, batch_size=batch_size, shuffle=False)
    if not isinstance(data, DataLoader):
        raise TypeError("data must be an (inputs, labels) pair of tensors, a Dataset or a DataLoader, got "
                        f"{type(data).__name__}")
    for batch in data:
        if not (isinstance(batch, (tuple, list)) and len(batch) == 2 and all(isinstance(t, Tensor) for t in batch)):
            raise TypeError(f"data must yield (inputs, labels) pairs of tensors, got a {type(batch).__name__}")
        yield batch[0], batch[1]


def _batches_within(model: nn.Module, data, batch_size: int, max_examples: int | None, *,
                    full_only: bool = False) -> tuple[list[tuple[Tensor, Tensor]], int]:
    """The first ``max_examples`` examples of ``data`` in batches, moved to the model's device."""
    out, count, seen = [], 0, False
    for xb, yb in _iter_batches(data, batch_size):
        seen = seen or len(xb) > 0
        if max_examples is not None:
            if count >= max_examples:
                break
            xb, yb = xb[: max_examples - count], yb[: max_examples - count]
        if full_only and len(xb) < batch_size:
            break
        if xb.is_floating_point() and not _finite(xb):
            raise ValueError("data contains NaN or Inf inputs")
        count += len(xb)
        out.append(to_model_device(model, xb, yb))
    if not seen:
        raise ValueError("data is empty")
    return out, count


def _check_data(model: nn.Module, data) -> tuple[Tensor, Tensor]:
    """An ``(inputs, labels)`` pair of tensors of equal, non-zero lengths, moved to the model's device."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)):
        raise TypeError(f"data must be an (inputs, labels) pair of tensors, got {type(data).__name__}")
    x, y = data
    if x.ndim == 0 or y.ndim == 0 or len(x) == 0 or len(x) != len(y):
        raise ValueError(f"data must hold as many labels as inputs (> 0), got shapes {tuple(x.shape)} and "
                         f"{tuple(y.shape)}")
    if x.is_floating_point() and not _finite(x):
        raise ValueError("data contains NaN or Inf inputs")
    return to_model_device(model, x, y)


def _check_batch_size(batch_size) -> int:
    return check_int(batch_size, "batch_size", 1)
