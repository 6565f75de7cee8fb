r"""Loss landscapes: filter-normalized and eigenvector directions, 1-D and 2-D slices of the
loss in weight space, and the loss under random weight perturbations."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm import tqdm

from stabilitylab._checks import check_generator, check_int, check_progress
from stabilitylab._modes import eval_mode
from stabilitylab.curvature._common import (
    _batches_within,
    _check_bool,
    _check_data,
    _check_loss_fn,
    _check_vector,
    _model_params,
    _randn,
)
from stabilitylab.curvature.spectrum import Eigenpairs, hessian_eigenvalues

__all__ = ["filter_normalized_direction", "eigen_directions", "loss_landscape", "random_perturbation_loss"]


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
        generator: seeds the direction (drawn on the CPU, then moved to each parameter's device).

    Returns:
        ``{name: direction}`` for the parameters requiring grad (detached, their dtype and device).

    Raises:
        TypeError or ValueError: each naming the argument, for a ``model`` that is not an ``nn.Module`` or
            has no parameter requiring grad, a non-bool ``ignore_1d``, a ``generator`` that is
            not a ``torch.Generator``.
    """
    names, params = _model_params(model)
    ignore_1d = _check_bool(ignore_1d, "ignore_1d")
    generator = check_generator(generator)
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
) -> Eigenpairs:
    r"""The top-:math:`k` Hessian eigenvectors of a model's mean loss, as landscape directions.

    Calls :func:`hessian_eigenvalues` (``eigen_kwargs``: ``method``, ``tol``, ``which``,
    ``n_iter``, ``generator``...) on the mean loss over at most ``max_examples`` examples, with
    the model in eval mode (every submodule's own mode restored afterwards, also on error) on its
    device (the data is moved there), and returns the unit eigenvectors keyed by parameter name.

    Args:
        model: the network; the Hessian is taken in its parameters requiring grad.
        data: ``(inputs, labels)`` tensors, a data set or a loader (taken in order).
        k: number of eigenpairs.
        loss_fn: ``(outputs, labels) -> mean loss``; default cross-entropy.
        max_examples: the data budget (examples used at most).
        batch_size: examples per forward pass.
        eigen_kwargs: passed to :func:`hessian_eigenvalues`.

    Returns:
        An :class:`Eigenpairs` ``(eigenvalues (k,), [{name: direction}, ...])``.

    Raises:
        TypeError or ValueError: each naming the argument, for as :func:`hessian_eigenvalues`;
            ``max_examples`` or ``batch_size`` < 1; ``model`` not an ``nn.Module``; ``data`` of
            another kind or with NaN/Inf inputs.
    """
    names, params = _model_params(model)
    if max_examples is not None:
        check_int(max_examples, "max_examples", 1)
    check_int(batch_size, "batch_size", 1)
    check_int(k, "k", 1)
    loss_fn = _check_loss_fn(loss_fn)
    chunks, total = _batches_within(model, data, batch_size, max_examples)
    with eval_mode(model):
        values, vectors = hessian_eigenvalues(_mean_loss_closure(model, chunks, loss_fn, total), params, k=k,
                                              return_eigenvectors=True, **eigen_kwargs)
    return Eigenpairs(values, [dict(zip(names, v)) for v in vectors])


def _check_direction(direction, names, params, index: int) -> dict[str, Tensor]:
    if isinstance(direction, Mapping):
        if not all(isinstance(d, Tensor) for d in direction.values()):
            raise TypeError(f"directions[{index}] must map parameter names to tensors")
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
            if d.is_floating_point() and d.device.type != "meta" and not bool(torch.isfinite(d).all()):
                raise ValueError(f"directions[{index}][{n!r}] contains NaN or Inf entries")
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
    progress: bool | None = None,
) -> dict[str, object]:
    r"""The loss (and accuracy) on a 1-D or 2-D slice of weight space.

    :math:`L(\theta + \alpha\, d_1)` for each :math:`\alpha` in ``coordinates``, or
    :math:`L(\theta + \alpha\, d_1 + \beta\, d_2)` on a grid, with directions from
    :func:`filter_normalized_direction` (random, filter-normalized [li2018visualizing]) or
    :func:`eigen_directions` (top Hessian eigenvectors: along a unit eigenvector :math:`u` of a
    quadratic loss, :math:`L(\theta + t u) = L(\theta) + t\,g^\top u + \frac12\lambda t^2`).
    Evaluated in eval mode through ``torch.func.functional_call``, on the model's device (the
    data is moved there): the model's parameters are never modified, and every submodule's own
    mode is restored afterwards, also on error.

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
        progress: a progress bar over the grid points (``None``: unless ``TQDM_DISABLE`` is set).

    Returns:
        a dict of float64 CPU tensors, ``"coordinates"`` (``(alphas,)`` or ``(alphas, betas)``),
        ``"loss"`` (``(A,)`` or ``(A, B)``) and ``"accuracy"`` (the same shape, or None unless the
        outputs are ``(n, C)`` logits with ``C`` >= 2 and the labels class indices).

    Raises:
        TypeError or ValueError: each naming the argument, for directions of the wrong names or shapes,
            more than two directions, empty or non-finite coordinates, ``max_examples`` or
            ``batch_size`` < 1, ``model`` not an ``nn.Module``, ``data`` of another kind or with
            NaN/Inf inputs.
    """
    names, params = _model_params(model)
    if isinstance(directions, Mapping) or (isinstance(directions, (tuple, list)) and directions
                                           and isinstance(directions[0], Tensor)):
        directions = [directions]
    if not isinstance(directions, (tuple, list)) or not 1 <= len(directions) <= 2 or \
            not all(isinstance(d, (Mapping, tuple, list)) for d in directions):
        what = f"a {type(directions).__name__}" if not isinstance(directions, (tuple, list)) else \
            f"a sequence of {len(directions)} ({', '.join(type(d).__name__ for d in directions)})"
        raise ValueError("directions must be one direction ({name: tensor} mapping, or a tuple of tensors shaped "
                         f"like the parameters) or a sequence of one or two, got {what}")
    dirs = [_check_direction(d, names, params, i) for i, d in enumerate(directions)]
    try:
        if len(dirs) == 2 and isinstance(coordinates, (tuple, list)) and len(coordinates) == 2 and \
                not isinstance(coordinates[0], (int, float)):
            axes = [torch.as_tensor(c, dtype=torch.float64).flatten() for c in coordinates]
        else:
            axes = [torch.as_tensor(coordinates, dtype=torch.float64).flatten()] * len(dirs)
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"coordinates must be a sequence of numbers (or a pair of them), got {coordinates!r}") \
            from error
    if any(a.numel() == 0 or not torch.isfinite(a).all() for a in axes):
        raise ValueError(f"coordinates must be non-empty and finite, got {coordinates!r}")
    if max_examples is not None:
        check_int(max_examples, "max_examples", 1)
    check_int(batch_size, "batch_size", 1)
    progress = check_progress(progress)
    loss_fn = _check_loss_fn(loss_fn)
    chunks, total = _batches_within(model, data, batch_size, max_examples)
    if total == 0:
        raise ValueError("data is empty")
    base = {n: p.detach() for n, p in zip(names, params)}
    buffers = dict(model.named_buffers())
    frozen = {n: p.detach() for n, p in model.named_parameters() if not p.requires_grad}
    shape = tuple(len(a) for a in axes)
    losses = torch.empty(shape, dtype=torch.float64)
    accuracy = torch.empty(shape, dtype=torch.float64)
    with_accuracy = True
    with eval_mode(model):
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
    return {"coordinates": tuple(axes), "loss": losses, "accuracy": accuracy if with_accuracy else None}


# ----------------------------------------------------------------------------- random perturbations


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
    progress: bool | None = None,
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
        model: evaluated in eval mode through ``torch.func.functional_call``, on its device; left
            unchanged (every submodule's own mode restored, also on error).
        data: ``(inputs, labels)`` tensors on which the mean loss is taken (moved to the model's
            device).
        radii: perturbation sizes, ``(R,)``, each >= 0.
        n_directions: number of random directions.
        relative: layer-wise relative sizes (True) or absolute sizes (False).
        loss_fn: ``(outputs, labels) -> mean loss``; default cross-entropy.
        generator: for the directions (reproducibility); sampled on the CPU then moved.
        batch_size: inputs per forward pass.
        progress: a progress bar over directions (``None``: unless ``TQDM_DISABLE`` is set).

    Returns:
        ``(R, n_directions)`` tensor of losses (on the CPU, the model's dtype).

    Raises:
        TypeError or ValueError: each naming the argument, for negative or non-finite ``radii``,
            ``n_directions`` or ``batch_size`` < 1, ``data`` that is not a tensor pair of equal
            lengths or has NaN/Inf inputs, ``model`` not an ``nn.Module`` or without parameters.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    params = {name: p.detach() for name, p in model.named_parameters()}
    if not params:
        raise ValueError("model has no parameters to perturb")
    x, y = _check_data(model, data)
    try:
        radii = torch.as_tensor(radii, dtype=torch.float64).flatten()
    except (TypeError, ValueError, RuntimeError) as error:
        raise TypeError(f"radii must be a sequence of numbers, got {radii!r}") from error
    if radii.numel() == 0 or not torch.isfinite(radii).all() or (radii < 0).any():
        raise ValueError(f"radii must be a non-empty sequence of finite values >= 0, got {radii.tolist()}")
    check_int(n_directions, "n_directions", 1)
    check_int(batch_size, "batch_size", 1)
    relative = _check_bool(relative, "relative")
    generator = check_generator(generator)
    progress = check_progress(progress)
    loss_fn = _check_loss_fn(loss_fn)
    buffers = {name: b for name, b in model.named_buffers()}

    def loss_at(state: dict[str, Tensor]) -> float:
        total = 0.0
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            yb = y[start : start + batch_size]
            out = functional_call(model, (state, buffers), (xb,))
            total += loss_fn(out, yb).item() * len(yb)
        return total / len(x)

    losses = torch.empty(len(radii), n_directions, dtype=torch.float64)
    with eval_mode(model):
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
    return losses.to(next(iter(params.values())).dtype)

