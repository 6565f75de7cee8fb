r"""Gradient-based adversarial attacks and empirical robustness measures.

This module implements the two classical first-order attacks, the fast
gradient sign method (FGSM) [goodfellow2015explaining] and projected gradient
descent (PGD) [madry2018towards], for the :math:`\ell_\infty` and
:math:`\ell_2` threat models, together with two quantities built on them:

* :func:`minimal_adversarial_distance` -- a per-example bisection on the
  radius of the threat ball, giving an *upper bound* on the distance from an
  input to the closest adversarial example (the quantity that the
  minimal-distortion attacks of [carlini2017towards] also bound from above);
* :func:`robust_accuracy` -- the fraction of examples that stay correctly
  classified under attack, an *upper bound* on the true robust accuracy
  (certified methods give lower bounds).

Conventions shared by every function
------------------------------------
``model``
    An :class:`torch.nn.Module` (or any callable) mapping a batch
    ``(N, *shape)`` to logits ``(N, C)``.  The attacks never change the
    model's mode (nor any submodule's): call ``model.eval()`` first if the
    model has dropout or batch normalisation.  Gradients are taken with :func:`torch.autograd.grad`
    with respect to the input only, so the parameters' ``.grad`` fields are
    left untouched.
``x``
    Floating-point tensor ``(N, *shape)``.  The attacks run on the model's
    device (the device of its first parameter or buffer; ``x.device`` for a
    callable without parameters) and in ``x.dtype``: ``x``, ``y`` and tensor
    ``bounds`` are moved there, and the returned tensors live there too.
    The model is never moved.
``y``
    Integer tensor ``(N,)`` of labels (target labels for a targeted PGD).
``eps``
    Radius of the threat ball :math:`\{x' : \|x' - x\|_p \le \varepsilon\}`.
``norm``
    ``"linf"`` or ``"l2"``.  For ``"l2"`` every example is flattened, i.e.
    :math:`\|\delta\|_2 = (\sum_j \delta_j^2)^{1/2}` over all of ``shape``.
``bounds``
    ``None`` (unbounded inputs) or ``(lo, hi)`` with ``lo < hi``, each a
    float or a tensor broadcastable to ``x`` (per-feature bounds).

Exactness guarantee
-------------------
Every returned adversarial example satisfies ``lo <= x_adv <= hi`` exactly
and ``||x_adv - x|| <= eps`` when the difference is evaluated in float64
(the final projection checks the constraint in float64 and pulls offending
coordinates back towards ``x``; on devices without float64 the check runs in
the input's dtype).
"""

from __future__ import annotations

import math
import numbers
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from stabilitylab._checks import check_generator as _check_generator
from stabilitylab._checks import check_progress as _check_progress
from stabilitylab._checks import check_int as _check_int
from stabilitylab._numerics import round_down as _round_down
from stabilitylab._deprecation import renamed_kwargs
from stabilitylab._devices import to_model_device

__all__ = ["fgsm", "pgd", "minimal_adversarial_distance", "robust_accuracy", "AdversarialDistance"]


class AdversarialDistance(NamedTuple):
    """What :func:`minimal_adversarial_distance` returns with ``return_examples=True``."""

    #: ``(N,)``, the distance to the closest adversarial example found (an upper bound of the true
    #: distance; 0 where already misclassified, inf where none was found).
    distance: Tensor
    #: ``(N, *shape)``, those adversarial examples (``x[i]`` where the distance is 0 or inf).
    examples: Tensor

_NORMS = ("linf", "l2")
# Relative tolerance with which an ``x`` slightly outside ``bounds`` is accepted
# (and clipped into the box) instead of rejected.
_BOUNDS_RTOL = 1e-6


# ---------------------------------------------------------------------------
# validation helpers
# ---------------------------------------------------------------------------


def _check_model(model) -> None:
    if not callable(model):
        raise TypeError(f"model must be a callable (an nn.Module) mapping inputs to logits, got {type(model).__name__}")


def _check_flag(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _check_loss_fn(loss_fn) -> None:
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable(logits, y) or None, got {type(loss_fn).__name__}")


def _check_x(x, model=None) -> Tensor:
    """Validate ``x`` and move it to the model's device (see the module docstring)."""
    x = _check_x_values(x)
    if model is not None:
        (x,) = to_model_device(model, x)
    return x


def _check_x_values(x) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
    if x.ndim < 1:
        raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    if x.numel() and not bool(torch.isfinite(x).all()):
        n_nan = int(torch.isnan(x).sum())
        n_inf = int(torch.isinf(x).sum())
        raise ValueError(
            f"x must be finite, got {n_nan} NaN and {n_inf} infinite entries"
        )
    return x.detach()


def _check_y(y, x: Tensor) -> Tensor:
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype == torch.bool or y.is_floating_point() or y.is_complex():
        raise TypeError(f"y must be an integer tensor of class indices, got dtype {y.dtype}")
    if y.ndim != 1:
        raise ValueError(f"y must have shape (N,), got shape {tuple(y.shape)}")
    if y.shape[0] != x.shape[0]:
        raise ValueError(
            f"x and y must have the same batch size, got x.shape[0]={x.shape[0]} "
            f"and y.shape[0]={y.shape[0]}"
        )
    return y.detach().to(device=x.device, dtype=torch.long)


def _check_real(value, name: str, *, positive: bool = False, allow_inf: bool = False) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if math.isnan(value) or (math.isinf(value) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {name}={value}")
    if positive and not value > 0:
        raise ValueError(f"{name} must be > 0, got {name}={value}")
    if not positive and value < 0:
        raise ValueError(f"{name} must be >= 0, got {name}={value}")
    return value


def _check_norm(norm) -> str:
    if not isinstance(norm, str) or norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got norm={norm!r}")
    return norm


def _as_bound(b, name: str, x: Tensor) -> Tensor:
    if isinstance(b, Tensor):
        t = b.detach().to(device=x.device, dtype=x.dtype)
    elif isinstance(b, numbers.Real) and not isinstance(b, bool):
        t = torch.tensor(float(b), device=x.device, dtype=x.dtype)
    else:
        raise TypeError(f"bounds: {name} must be a float or a tensor, got {type(b).__name__}")
    try:
        shape = torch.broadcast_shapes(t.shape, x.shape)
    except RuntimeError:
        shape = None
    if shape != x.shape:
        raise ValueError(
            f"bounds: {name} of shape {tuple(t.shape)} is not broadcastable to "
            f"x of shape {tuple(x.shape)}"
        )
    if bool(torch.isnan(t).any()):
        raise ValueError(f"bounds: {name} contains NaN")
    return t


def _check_bounds(bounds, x: Tensor) -> tuple[Tensor | None, Tensor | None, Tensor]:
    """Validate ``bounds``; return ``(lo, hi, x_clipped)``.

    ``x`` may lie outside the box by a relative tolerance of ``1e-6``; it is
    then clipped into the box (and the clipped point is the centre of the
    threat ball).  Farther out, ``ValueError``.
    """
    if bounds is None:
        return None, None, x
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"bounds must be None or a pair (lo, hi), got bounds={bounds!r}")
    lo = _as_bound(bounds[0], "lo", x)
    hi = _as_bound(bounds[1], "hi", x)
    if not bool((lo < hi).all()):
        bad = torch.broadcast_tensors(lo, hi)
        idx = (bad[0] >= bad[1]).nonzero()[0].tolist()
        raise ValueError(
            "bounds must satisfy lo < hi everywhere, got "
            f"lo={bad[0][tuple(idx)].item()} >= hi={bad[1][tuple(idx)].item()}"
            + (f" at index {tuple(idx)}" if idx else "")
        )
    if x.numel():
        tol_lo = _BOUNDS_RTOL * (1.0 + lo.abs().nan_to_num(posinf=0.0))
        tol_hi = _BOUNDS_RTOL * (1.0 + hi.abs().nan_to_num(posinf=0.0))
        below = x < lo - tol_lo
        above = x > hi + tol_hi
        if bool(below.any()) or bool(above.any()):
            raise ValueError(
                "x must lie inside bounds=(lo, hi), got min(x - lo)="
                f"{(x - lo).min().item():.6g} and max(x - hi)={(x - hi).max().item():.6g}"
            )
        x = torch.minimum(torch.maximum(x, lo), hi)
    return lo, hi, x


def _slice_bound(b: Tensor | None, x: Tensor, idx) -> Tensor | None:
    """Select examples ``idx`` of a bound that may carry a batch dimension."""
    if b is None or b.ndim < x.ndim or b.shape[0] == 1:
        return b
    return b[idx]


def _check_model_output(logits, x: Tensor, y: Tensor, check_labels: bool = True) -> Tensor:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape[0] != x.shape[0]:
        shape = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
        raise ValueError(
            f"model must map x of shape {tuple(x.shape)} to logits of shape (N, C), got {shape}"
        )
    if check_labels and y.numel() and (int(y.min()) < 0 or int(y.max()) >= logits.shape[1]):
        raise ValueError(
            f"y must contain class indices in [0, {logits.shape[1]}), got values in "
            f"[{int(y.min())}, {int(y.max())}]"
        )
    return logits


# ---------------------------------------------------------------------------
# numerical helpers
# ---------------------------------------------------------------------------


def _check_dtype(x: Tensor) -> torch.dtype:
    """Dtype in which the constraints are verified (float64 where supported)."""
    return torch.float32 if x.device.type == "mps" else torch.float64


def _col(v: Tensor, x: Tensor) -> Tensor:
    """Reshape a per-example vector ``(N,)`` to broadcast against ``x``."""
    return v.reshape((-1,) + (1,) * (x.ndim - 1))


def _flat_norm(d: Tensor, norm: str) -> Tensor:
    d = d.reshape(d.shape[0], -1)
    if norm == "linf":
        return d.abs().amax(dim=1) if d.shape[1] else d.new_zeros(d.shape[0])
    return torch.linalg.vector_norm(d, ord=2, dim=1)


def _clip_box(z: Tensor, lo: Tensor | None, hi: Tensor | None) -> Tensor:
    if lo is None:
        return z
    return torch.minimum(torch.maximum(z, lo), hi)


def _project(
    x_adv: Tensor,
    x: Tensor,
    eps64: Tensor,
    eps_x: Tensor,
    norm: str,
    lo: Tensor | None,
    hi: Tensor | None,
) -> Tensor:
    r"""Project ``x_adv`` onto :math:`B_p(x, \varepsilon) \cap [lo, hi]`.

    ``x`` must lie in the box.  linf: clamp coordinatewise to
    :math:`[\max(x-\varepsilon, lo), \min(x+\varepsilon, hi)]` (the exact
    Euclidean projection onto the intersection of the two boxes).  l2: rescale
    :math:`\delta \leftarrow \delta \min(1, \varepsilon/\|\delta\|_2)`, then
    clamp to the box; since ``x`` is in the box, the clamp moves every
    coordinate towards ``x`` and cannot leave the ball.  The constraint is then
    verified in float64 and any rounding excess is removed (by stepping single
    coordinates one ulp towards ``x`` for linf, by an extra shrink for l2, and
    as a last resort by returning ``x``).
    """
    cd = _check_dtype(x)
    eps_c = _col(eps64.to(cd), x)
    if norm == "linf":
        e = _col(eps_x, x)
        lower, upper = x - e, x + e
        if lo is not None:
            lower, upper = torch.maximum(lower, lo), torch.minimum(upper, hi)
        x_adv = torch.minimum(torch.maximum(x_adv, lower), upper)
        for _ in range(4):
            over = (x_adv.to(cd) - x.to(cd)).abs() > eps_c
            if not bool(over.any()):
                return x_adv
            x_adv = torch.where(over, torch.nextafter(x_adv, x), x_adv)
        over = (x_adv.to(cd) - x.to(cd)).abs() > eps_c
        return torch.where(over, x, x_adv)

    # l2
    eps_v = eps64.to(cd)
    delta = x_adv - x
    n = _flat_norm(delta.to(cd), "l2")
    factor = torch.where(n > eps_v, eps_v / n, torch.ones_like(n)).to(x.dtype)
    x_adv = _clip_box(x + delta * _col(factor, x), lo, hi)
    tiny = torch.finfo(x.dtype).eps
    for k in range(6):
        n = _flat_norm(x_adv.to(cd) - x.to(cd), "l2")
        over = n > eps_v
        if not bool(over.any()):
            return x_adv
        shrink = (eps_v / n * (1.0 - (2.0**k) * tiny)).clamp(max=1.0).to(x.dtype)
        shrunk = _clip_box(x + (x_adv - x) * _col(shrink, x), lo, hi)
        x_adv = torch.where(_col(over, x), shrunk, x_adv)
    over = _flat_norm(x_adv.to(cd) - x.to(cd), "l2") > eps_v
    return torch.where(_col(over, x), x, x_adv)


def _sample_uniform(shape, x: Tensor, generator: torch.Generator | None) -> Tensor:
    dev = generator.device if generator is not None else x.device
    dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    u = torch.rand(shape, generator=generator, device=dev, dtype=dt)
    return u.to(device=x.device, dtype=x.dtype)


def _sample_normal(shape, x: Tensor, generator: torch.Generator | None) -> Tensor:
    dev = generator.device if generator is not None else x.device
    dt = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    g = torch.randn(shape, generator=generator, device=dev, dtype=dt)
    return g.to(device=x.device, dtype=x.dtype)


def _random_start(x: Tensor, eps_x: Tensor, norm: str, generator) -> Tensor:
    r"""Draw :math:`\delta` uniformly from the threat ball of radius ``eps_x``.

    linf: :math:`\delta_j = \varepsilon(2U_j - 1)`.  l2: :math:`\delta =
    \varepsilon\, U^{1/d}\, g/\|g\|_2` with :math:`g \sim \mathcal N(0, I_d)`
    and :math:`U \sim \mathcal U(0, 1)`, which is uniform in the ball since the
    volume of the radius-:math:`r` ball scales as :math:`r^d`.
    """
    if norm == "linf":
        u = _sample_uniform(x.shape, x, generator)
        return (2.0 * u - 1.0) * _col(eps_x, x)
    n = x.shape[0]
    d = max(1, x[0].numel())
    g = _sample_normal(x.shape, x, generator)
    gn = _flat_norm(g, "l2")
    direction = g / _col(torch.where(gn > 0, gn, torch.ones_like(gn)), x)
    r = _sample_uniform((n,), x, generator) ** (1.0 / d)
    return direction * _col(r * eps_x, x)


def _default_loss(logits: Tensor, y: Tensor) -> Tensor:
    return F.cross_entropy(logits, y, reduction="sum")


def _input_grad(
    model, x_adv: Tensor, y: Tensor, loss_fn, check_labels: bool = True
) -> tuple[Tensor, Tensor]:
    """Return ``(logits, d loss / d x_adv)`` without touching parameter grads."""
    x_adv = x_adv.detach().requires_grad_(True)
    with torch.enable_grad():
        logits = model(x_adv)
        _check_model_output(logits, x_adv, y, check_labels)
        loss = loss_fn(logits, y)
        if not isinstance(loss, Tensor):
            raise TypeError(f"loss_fn must return a tensor, got {type(loss).__name__}")
        if loss.ndim > 0:
            loss = loss.sum()
        if loss.requires_grad:
            (grad,) = torch.autograd.grad(loss, x_adv, allow_unused=True)
        else:
            grad = None
    if grad is None:
        grad = torch.zeros_like(x_adv)
    return logits.detach(), grad.detach()


def _is_adversarial(logits: Tensor, y: Tensor, targeted: bool) -> Tensor:
    pred = logits.argmax(dim=1)
    return pred == y if targeted else pred != y


def _steepest_direction(grad: Tensor, norm: str) -> Tensor:
    r"""Steepest-ascent direction of unit dual norm: sign(g) or g/||g||_2."""
    if norm == "linf":
        return grad.sign()
    gn = _flat_norm(grad, "l2")
    safe = torch.where(gn > 0, gn, torch.ones_like(gn))
    return grad / _col(safe, grad)


def _pgd_core(
    model,
    x: Tensor,
    y: Tensor,
    eps64: Tensor,
    norm: str,
    n_iter: int,
    step_size: float | None,
    lo: Tensor | None,
    hi: Tensor | None,
    random_start: bool,
    generator,
    loss_fn,
    targeted: bool,
) -> tuple[Tensor, Tensor]:
    """PGD with a per-example radius ``eps64`` (float64, shape (N,)).

    Returns ``(x_adv, found)`` where ``found[i]`` says whether ``x_adv[i]`` is
    adversarial (misclassified, or classified as the target if ``targeted``).
    ``x`` must already be validated and inside the box.
    """
    eps_x = _round_down(eps64, x.dtype)
    if step_size is None:
        alpha = _col(eps_x * (2.5 / n_iter), x)
    else:
        alpha = torch.as_tensor(step_size, dtype=x.dtype, device=x.device)
    sign = -1.0 if targeted else 1.0

    if random_start:
        x_adv = _project(x + _random_start(x, eps_x, norm, generator), x, eps64, eps_x, norm, lo, hi)
    else:
        x_adv = x.clone()

    found = torch.zeros(x.shape[0], dtype=torch.bool, device=x.device)
    x_best = x_adv.clone()
    for t in range(n_iter):
        logits, grad = _input_grad(model, x_adv, y, loss_fn, check_labels=t == 0)
        adv = _is_adversarial(logits, y, targeted)
        new = adv & ~found
        x_best = torch.where(_col(new, x), x_adv, x_best)
        found = found | adv
        if bool(found.all()):
            return x_best, found
        step = sign * alpha * _steepest_direction(grad, norm)
        x_adv = _project(x_adv + step, x, eps64, eps_x, norm, lo, hi)

    with torch.no_grad():
        logits = model(x_adv)
    _check_model_output(logits, x_adv, y, check_labels=False)
    adv = _is_adversarial(logits.detach(), y, targeted)
    new = adv & ~found
    x_best = torch.where(_col(new, x), x_adv, x_best)
    found = found | adv
    return torch.where(_col(found, x), x_best, x_adv), found


def _eps_vector(eps: float, x: Tensor) -> Tensor:
    return torch.full((x.shape[0],), eps, dtype=_check_dtype(x), device=x.device)


# ---------------------------------------------------------------------------
# public API
# ---------------------------------------------------------------------------


def fgsm(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: str = "linf",
    bounds=None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    r"""Fast gradient (sign) method [goodfellow2015explaining].

    One step of steepest ascent of the loss :math:`L` from :math:`x`, with
    :math:`g = \nabla_x L(f(x), y)`:

    .. math::

        x_{\mathrm{adv}} = \Pi_{[lo, hi]}\bigl(x + \varepsilon\,
        \operatorname{sign}(g)\bigr) \quad (\ell_\infty), \qquad
        x_{\mathrm{adv}} = \Pi_{[lo, hi]}\Bigl(x + \varepsilon\,
        \frac{g}{\|g\|_2}\Bigr) \quad (\ell_2,\ \text{per example}),

    the latter being the "fast gradient method".  A zero gradient gives a zero
    step (no NaN).  The box projection is a coordinatewise clamp; because
    :math:`x` lies in the box it can only shrink the perturbation, so
    :math:`\|x_{\mathrm{adv}} - x\| \le \varepsilon` still holds.

    The model's mode is not changed (call ``model.eval()`` first) and no
    parameter ``.grad`` is written.

    Args:
        model: callable mapping ``(N, *shape)`` to logits ``(N, C)``.
        x: inputs, floating tensor ``(N, *shape)``.
        y: labels, integer tensor ``(N,)``.
        eps: radius :math:`\varepsilon \ge 0` (``0`` returns a copy of ``x``).
        norm: ``"linf"`` or ``"l2"``.
        bounds: ``None`` or ``(lo, hi)``; floats or tensors broadcastable to ``x``.
        loss_fn: ``loss_fn(logits, y)`` returning a scalar (a non-scalar is
            summed); default cross-entropy summed over the batch, so
            per-example gradients do not depend on the batch size.

    Returns:
        Tensor ``(N, *shape)``, in ``x.dtype`` on the model's device, detached.

    Raises:
        TypeError: ``x`` or ``y`` is not a tensor (or has a wrong dtype).
        ValueError: bad ``eps``, ``norm`` or ``bounds``, mismatched batch
            sizes, non-finite ``x``, ``x`` outside ``bounds``, or model output
            not of shape ``(N, C)``.
    """
    _check_model(model)
    x = _check_x(x, model)
    y = _check_y(y, x)
    eps = _check_real(eps, "eps")
    norm = _check_norm(norm)
    _check_loss_fn(loss_fn)
    lo, hi, x = _check_bounds(bounds, x)
    if eps == 0.0 or x.shape[0] == 0:
        return x.clone()
    loss_fn = _default_loss if loss_fn is None else loss_fn
    eps64 = _eps_vector(eps, x)
    eps_x = _round_down(eps64, x.dtype)
    _, grad = _input_grad(model, x, y, loss_fn)
    x_adv = x + _col(eps_x, x) * _steepest_direction(grad, norm)
    return _project(x_adv, x, eps64, eps_x, norm, lo, hi)


@renamed_kwargs(n_steps="n_iter")
def pgd(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: str = "linf",
    n_iter: int = 20,
    step_size: float | None = None,
    bounds=None,
    random_start: bool = True,
    generator: torch.Generator | None = None,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    targeted: bool = False,
) -> Tensor:
    r"""Projected gradient descent attack [madry2018towards].

    Iterates, for :math:`t = 0, \dots, T-1` (:math:`T` = ``n_iter``),

    .. math::

        x^{t+1} = \Pi_{S}\bigl(x^t + s\,\alpha\, d(\nabla_x L(f(x^t), y))\bigr),
        \qquad S = B_p(x, \varepsilon) \cap [lo, hi],

    with steepest-ascent direction :math:`d(g) = \operatorname{sign}(g)` for
    :math:`\ell_\infty` and :math:`d(g) = g/\|g\|_2` (per example, ``0`` for a
    zero gradient) for :math:`\ell_2`; :math:`s = +1` (ascent on the loss of
    the true label) or :math:`s = -1` when ``targeted`` (descent on the loss of
    the target label ``y``).  The projection :math:`\Pi_S` first projects onto
    the ball (linf: clamp to :math:`[x-\varepsilon, x+\varepsilon]`; l2:
    :math:`\delta \leftarrow \delta\min(1, \varepsilon/\|\delta\|_2)`), then
    clamps to the box (which, since :math:`x` is in the box, keeps the point in
    the ball).

    The start :math:`x^0` is :math:`x` or, with ``random_start``, a uniform
    sample from the ball (linf: :math:`\varepsilon(2U-1)` per coordinate; l2:
    direction :math:`g/\|g\|_2`, :math:`g\sim\mathcal N(0, I_d)`, radius
    :math:`\varepsilon U^{1/d}`), drawn with ``generator`` and projected onto
    :math:`S`.  Per example the first iterate that is adversarial
    (misclassified, or classified as the target when ``targeted``) is kept;
    examples never broken return the last iterate :math:`x^T`.  The loop stops
    early once every example is broken.

    The model's mode is not changed (call ``model.eval()`` first), no
    parameter ``.grad`` is written, and gradients are enabled internally even
    under :func:`torch.no_grad`.

    PGD is a local search on a non-concave objective: a single random start
    can end at an interior local maximum of the loss (e.g. in a valley of a
    ReLU network) and, at large radii, be weaker than FGSM.  For evaluation,
    run it from ``x`` (``random_start=False``) and from a few random starts,
    and count an example as robust only if it survives all of them.

    Args:
        model: callable mapping ``(N, *shape)`` to logits ``(N, C)``.
        x: inputs, floating tensor ``(N, *shape)``.
        y: integer tensor ``(N,)``: true labels, or target labels if ``targeted``.
        eps: radius :math:`\varepsilon \ge 0` (``0`` returns a copy of ``x``).
        norm: ``"linf"`` or ``"l2"``.
        n_iter: number of gradient steps :math:`T \ge 1` (``n_steps`` is a deprecated alias).
        step_size: :math:`\alpha > 0`; default :math:`2.5\,\varepsilon/T`.
        bounds: ``None`` or ``(lo, hi)``; floats or tensors broadcastable to ``x``.
        random_start: start from a uniform sample of the ball instead of ``x``.
        generator: :class:`torch.Generator` for the random start (on any
            device; samples are moved to ``x.device``); ``None`` uses the
            global RNG of ``x.device``.
        loss_fn: ``loss_fn(logits, y)`` returning a scalar (a non-scalar is
            summed); default cross-entropy summed over the batch.
        targeted: minimise the loss towards target labels ``y`` instead.

    Returns:
        Tensor ``(N, *shape)``, in ``x.dtype`` on the model's device, detached, with
        ``lo <= x_adv <= hi`` and ``||x_adv - x|| <= eps`` exactly (see the
        module docstring).

    Raises:
        TypeError: ``x``/``y``/``generator`` of the wrong type.
        ValueError: bad ``eps``, ``norm``, ``n_iter``, ``step_size`` or
            ``bounds``, mismatched batch sizes, non-finite ``x``, ``x``
            outside ``bounds``, or model output not of shape ``(N, C)``.
    """
    _check_model(model)
    x = _check_x(x, model)
    y = _check_y(y, x)
    eps = _check_real(eps, "eps")
    norm = _check_norm(norm)
    n_iter = _check_int(n_iter, "n_iter", 1)
    if step_size is not None:
        step_size = _check_real(step_size, "step_size", positive=True)
    generator = _check_generator(generator)
    _check_loss_fn(loss_fn)
    random_start = _check_flag(random_start, "random_start")
    targeted = _check_flag(targeted, "targeted")
    lo, hi, x = _check_bounds(bounds, x)
    if eps == 0.0 or x.shape[0] == 0:
        return x.clone()
    loss_fn = _default_loss if loss_fn is None else loss_fn
    x_adv, _ = _pgd_core(
        model, x, y, _eps_vector(eps, x), norm, n_iter, step_size, lo, hi,
        bool(random_start), generator, loss_fn, bool(targeted),
    )
    return x_adv


def _box_diameter(lo: Tensor, hi: Tensor, x: Tensor, norm: str) -> float:
    width = (hi - lo).expand(x.shape)
    if x.shape[0] == 0:
        return float("nan")
    per_example = _flat_norm(width.to(_check_dtype(x)), norm)
    return float(per_example.max())


@renamed_kwargs(n_steps="n_iter")
def minimal_adversarial_distance(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    *,
    norm: str = "l2",
    bounds=None,
    eps_max: float | None = None,
    n_search: int = 12,
    n_iter: int = 20,
    generator: torch.Generator | None = None,
    random_start: bool = True,
    return_examples: bool = False,
) -> Tensor | AdversarialDistance:
    r"""Upper bound on the distance to the closest adversarial example.

    Estimates, per example,

    .. math::

        \rho_p(x) = \min\{\|x' - x\|_p : \arg\max f(x') \ne y,\ lo \le x' \le hi\}

    by bisection on the radius: start with the interval
    :math:`[0, \varepsilon_{\max}]`, attack with PGD [madry2018towards] at
    :math:`\varepsilon_{\max}`, then ``n_search`` times run PGD at the
    midpoint :math:`m = (a+b)/2` with a per-example radius and set
    :math:`b \leftarrow m` if an adversarial example was found, else
    :math:`a \leftarrow m`.  This is the minimal-distortion viewpoint of
    [carlini2017towards], with PGD as the inner attack.  At every radius PGD
    first starts at :math:`x` (exact for a linear model); with
    ``random_start`` the examples it did not break get one more PGD run from a
    uniform random point of the ball (a random restart).

    The returned value is the distance :math:`\|x_{\mathrm{adv}} - x\|_p` of
    the closest adversarial example actually found (always :math:`\le b`, the
    upper end of the final bisection interval).  It is therefore an *upper
    bound* on :math:`\rho_p(x)`; PGD failing at a radius does not prove
    robustness there, so it is not a lower bound.  Special values: ``0`` for
    examples already misclassified, ``inf`` where no adversarial example was
    found up to :math:`\varepsilon_{\max}`.  The bracket has width
    :math:`\varepsilon_{\max} 2^{-n_{\mathrm{search}}}`.

    The model's mode is not changed (call ``model.eval()`` first) and no
    parameter ``.grad`` is written.

    Args:
        model: callable mapping ``(N, *shape)`` to logits ``(N, C)``.
        x: inputs, floating tensor ``(N, *shape)``.
        y: labels, integer tensor ``(N,)``.
        norm: ``"l2"`` or ``"linf"``.
        bounds: ``None`` or ``(lo, hi)``; floats or tensors broadcastable to ``x``.
        eps_max: upper end of the search; default: the diameter of the box
            ``bounds`` in ``norm`` (``max(hi - lo)`` for linf,
            ``||hi - lo||_2`` for l2).  Required when ``bounds`` is ``None``
            or unbounded.
        n_search: number of bisection steps (``>= 0``).
        n_iter: PGD steps per radius (``>= 1``); step size ``2.5 eps / n_iter``
            (``n_steps`` is a deprecated alias).
        generator: :class:`torch.Generator` for PGD's random starts.
        random_start: add one randomly started PGD run (drawn with
            ``generator``) for the examples not broken from :math:`x`.
        return_examples: also return the adversarial examples (an
            :class:`AdversarialDistance`).

    Returns:
        ``dist``: tensor ``(N,)`` in ``x.dtype`` on the model's device
        (rounded upwards from the float64 distance); with ``return_examples``,
        the named pair :class:`AdversarialDistance` ``(distance, examples)``
        where ``examples[i]`` is the closest adversarial example found
        (``x[i]`` itself where ``distance[i]`` is ``0`` or ``inf``).

    Raises:
        TypeError: ``x``/``y``/``generator`` of the wrong type.
        ValueError: bad ``norm``, ``bounds``, ``eps_max`` (or missing when it
            has no default), ``n_search`` or ``n_iter``; mismatched batch
            sizes, non-finite ``x`` or ``x`` outside ``bounds``.
    """
    _check_model(model)
    x = _check_x(x, model)
    y = _check_y(y, x)
    norm = _check_norm(norm)
    n_search = _check_int(n_search, "n_search", 0)
    n_iter = _check_int(n_iter, "n_iter", 1)
    generator = _check_generator(generator)
    random_start = _check_flag(random_start, "random_start")
    return_examples = _check_flag(return_examples, "return_examples")
    lo, hi, x = _check_bounds(bounds, x)
    if eps_max is None:
        diam = _box_diameter(lo, hi, x, norm) if lo is not None else math.inf
        if lo is not None and x.shape[0] == 0:
            diam = 1.0
        if not math.isfinite(diam):
            raise ValueError(
                "eps_max must be given when bounds do not define a finite box "
                f"(bounds={bounds!r}, eps_max=None)"
            )
        eps_max = diam
    else:
        eps_max = _check_real(eps_max, "eps_max", positive=True)

    n = x.shape[0]
    cd = _check_dtype(x)
    dist64 = torch.full((n,), math.inf, dtype=cd, device=x.device)
    best = x.clone()
    if n == 0:
        out = dist64.to(x.dtype)
        return AdversarialDistance(out, best) if return_examples else out

    with torch.no_grad():
        logits = model(x)
    _check_model_output(logits, x, y)
    mis = logits.detach().argmax(dim=1) != y
    dist64[mis] = 0.0

    def attack(idx: Tensor, eps_vec: Tensor) -> tuple[Tensor, Tensor]:
        lo_i, hi_i = _slice_bound(lo, x, idx), _slice_bound(hi, x, idx)
        xa, ok = _pgd_core(
            model, x[idx], y[idx], eps_vec, norm, n_iter, None, lo_i, hi_i,
            False, None, _default_loss, False,
        )
        if random_start and not bool(ok.all()):
            # one random restart for the examples the start at x did not break
            r = (~ok).nonzero().flatten()
            xr, okr = _pgd_core(
                model, x[idx[r]], y[idx[r]], eps_vec[r], norm, n_iter, None,
                _slice_bound(lo_i, x[idx], r), _slice_bound(hi_i, x[idx], r),
                True, generator, _default_loss, False,
            )
            xa[r] = torch.where(_col(okr, xr), xr, xa[r])
            ok[r] = okr
        return xa, ok

    def record(idx: Tensor, xa: Tensor, ok: Tensor) -> None:
        d = _flat_norm(xa.to(cd) - x[idx].to(cd), norm)
        better = ok & (d < dist64[idx])
        sel = idx[better]
        dist64[sel] = d[better]
        best[sel] = xa[better]

    idx = (~mis).nonzero().flatten()
    a = torch.zeros(n, dtype=cd, device=x.device)
    b = torch.full((n,), eps_max, dtype=cd, device=x.device)
    if idx.numel():
        xa, ok = attack(idx, b[idx])
        record(idx, xa, ok)
        idx = idx[ok]
    for _ in range(n_search):
        if idx.numel() == 0:
            break
        mid = 0.5 * (a[idx] + b[idx])
        xa, ok = attack(idx, mid)
        record(idx, xa, ok)
        b[idx] = torch.where(ok, mid, b[idx])
        a[idx] = torch.where(ok, a[idx], mid)

    dist = dist64.to(x.dtype)
    if cd != x.dtype:
        low = dist.to(cd) < dist64
        dist = torch.where(low, torch.nextafter(dist, torch.full_like(dist, math.inf)), dist)
    return AdversarialDistance(dist, best) if return_examples else dist


def robust_accuracy(
    model: Callable[[Tensor], Tensor],
    x: Tensor,
    y: Tensor,
    eps: float,
    *,
    norm: str = "linf",
    attack: str | Callable[..., Tensor] = "pgd",
    bounds=None,
    batch_size: int = 256,
    generator: torch.Generator | None = None,
    progress: bool | None = False,
    **attack_kwargs,
) -> float:
    r"""Empirical robust accuracy under an attack.

    .. math::

        \widehat{\mathrm{acc}}_\varepsilon = \frac1N \sum_{i=1}^N
        \mathbf 1\bigl[\arg\max f(x_i) = y_i\bigr]\,
        \mathbf 1\bigl[\arg\max f(A(x_i)) = y_i\bigr],

    where :math:`A` is the attack (PGD [madry2018towards] or FGSM
    [goodfellow2015explaining]) with radius :math:`\varepsilon`.  An example
    misclassified on the clean input counts as not robust, so at
    :math:`\varepsilon = 0` this equals the clean accuracy.  Because the
    attack is heuristic this is an *upper bound* on the true robust accuracy.

    Args:
        model: callable mapping ``(N, *shape)`` to logits ``(N, C)``; call
            ``model.eval()`` first (the mode is not changed here). The
            attacks run on its device (see the module docstring).
        x: inputs, floating tensor ``(N, *shape)``, ``N >= 1``.
        y: labels, integer tensor ``(N,)``.
        eps: radius :math:`\varepsilon \ge 0`.
        norm: ``"linf"`` or ``"l2"``.
        attack: ``"pgd"``, ``"fgsm"`` or a callable
            ``attack(model, x, y, eps, norm=..., bounds=..., **attack_kwargs)``
            returning the attacked batch (``generator=`` is also passed when
            not ``None``).
        bounds: ``None`` or ``(lo, hi)``; floats or tensors broadcastable to
            ``x`` (a leading batch dimension is sliced with the batches).
        batch_size: examples per attack call (``>= 1``).
        generator: :class:`torch.Generator` for PGD's random start.
        progress: show a tqdm progress bar over the batches (None: unless the
            environment variable ``TQDM_DISABLE`` is set).
        **attack_kwargs: forwarded to the attack (e.g. ``n_iter``,
            ``step_size``, ``random_start``, ``loss_fn``).

    Returns:
        The robust accuracy, a float in ``[0, 1]``.

    Raises:
        TypeError: ``x``/``y``/``generator`` of the wrong type.
        ValueError: bad ``eps``, ``norm``, ``attack``, ``batch_size`` or
            ``bounds``, empty or mismatched ``x``/``y``, non-finite ``x``,
            ``x`` outside ``bounds``, or ``targeted=True`` in ``attack_kwargs``.
    """
    _check_model(model)
    x = _check_x(x, model)
    y = _check_y(y, x)
    eps = _check_real(eps, "eps")
    norm = _check_norm(norm)
    batch_size = _check_int(batch_size, "batch_size", 1)
    generator = _check_generator(generator)
    progress = _check_progress(progress)
    lo, hi, x = _check_bounds(bounds, x)
    if x.shape[0] == 0:
        raise ValueError("x must contain at least one example, got x.shape[0]=0")
    if attack_kwargs.get("targeted", False):
        raise ValueError("robust_accuracy measures untargeted robustness, got targeted=True")
    if isinstance(attack, str):
        if attack not in ("pgd", "fgsm"):
            raise ValueError(f"attack must be 'pgd', 'fgsm' or a callable, got attack={attack!r}")
    elif not callable(attack):
        raise ValueError(f"attack must be 'pgd', 'fgsm' or a callable, got attack={attack!r}")

    n = x.shape[0]
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=math.ceil(n / batch_size), desc=f"robust accuracy ({norm}, eps={eps:g})")

    robust = 0
    for s in starts:
        sl = slice(s, min(s + batch_size, n))
        xb, yb = x[sl], y[sl]
        bb = None if lo is None else (_slice_bound(lo, x, sl), _slice_bound(hi, x, sl))
        if attack == "pgd":
            xa = pgd(model, xb, yb, eps, norm=norm, bounds=bb, generator=generator, **attack_kwargs)
        elif attack == "fgsm":
            xa = fgsm(model, xb, yb, eps, norm=norm, bounds=bb, **attack_kwargs)
        else:
            extra = {} if generator is None else {"generator": generator}
            xa = attack(model, xb, yb, eps, norm=norm, bounds=bb, **extra, **attack_kwargs)
        with torch.no_grad():
            clean = _check_model_output(model(xb), xb, yb).argmax(dim=1) == yb
            adv = _check_model_output(model(xa), xb, yb).argmax(dim=1) == yb
        robust += int((clean & adv).sum())
    return robust / n
