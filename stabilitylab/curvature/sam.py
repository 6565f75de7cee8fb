r"""Sharpness: the worst loss increase in a ball around the weights (SAM, ASAM, m-sharpness),
its evolution in training (the edge of stability), and the SAM optimizer."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm import tqdm

from stabilitylab._checks import (
    check_generator,
    check_int,
    check_number,
    check_positive,
    check_progress,
    check_tol,
)
from stabilitylab._deprecation import renamed_kwargs
from stabilitylab._modes import eval_mode
from stabilitylab.curvature._common import (
    LossClosure,
    _batches_within,
    _check_bool,
    _check_callable,
    _check_loss_fn,
    _check_params,
    _document_fields,
    _grads,
    _model_params,
    _norm,
    _randn,
    _scalar_loss,
)
from stabilitylab.curvature.spectrum import hessian_eigenvalues

__all__ = ["SharpnessEstimate", "sharpness", "m_sharpness", "sharpness_during_training", "SAM"]


@_document_fields
class SharpnessEstimate(NamedTuple):
    """The output of :func:`sharpness` with ``return_perturbation``; unpacks as ``sharpness, perturbation``."""

    sharpness: Tensor
    perturbation: tuple

    __field_docs__ = {
        'sharpness': '0-dim largest loss increase found in the ball',
        'perturbation': r'the maximizing :math:`\epsilon`, a tuple of tensors shaped like params',
    }


def _scaling(params: Sequence[Tensor], adaptive: bool, eta: float) -> list[Tensor] | None:
    return [p.detach().abs() + eta for p in params] if adaptive else None


@renamed_kwargs(loss_fn="closure", steps="n_iter")
def sharpness_during_training(
    closure: LossClosure,
    params: Sequence[Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    n_iter: int,
    every: int = 10,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    seed: int | None = None,
) -> dict[str, Tensor]:
    r"""Train with full-batch steps and record the loss and the sharpness every few steps.

    Takes ``n_iter`` optimizer steps on the zero-argument ``closure`` (the whole training set:
    full-batch gradient descent when ``optimizer`` is plain SGD) and, at step 0 and every
    ``every`` steps, records the loss and :math:`\lambda_{\max}(\nabla^2 L)`
    (:func:`hessian_eigenvalues`, Lanczos to relative accuracy ``tol``, its start vectors drawn
    from ``generator``). Gradient descent with step size :math:`\eta` is stable on a
    quadratic only while :math:`\lambda_{\max} < 2/\eta`; on neural networks the sharpness rises
    to that value and hovers there, the edge of stability [cohen2021gradient].

    Args:
        closure: zero-argument callable returning the full-batch loss (formerly ``loss_fn``).
        params: the tensors (requiring grad) the Hessian is taken in, those ``optimizer`` updates.
        optimizer: a ``torch.optim.Optimizer`` over ``params``.
        n_iter: optimizer steps, >= 0 (formerly ``steps``).
        every: record every ``every`` steps, >= 1.
        tol: relative accuracy of each :math:`\lambda_{\max}`, in (0, 1).
        generator: the source of the Lanczos start vectors (None: torch's global generator).
        progress: a progress bar over steps (``None``: unless ``TQDM_DISABLE`` is set).
        seed: deprecated; ``seed=s`` reproduces the former behaviour (the start vector of step
            ``t`` seeded by ``s + t``).

    Returns:
        ``{"step", "loss", "sharpness"}``: float64 tensors of the recorded steps' values.

    Raises:
        TypeError or ValueError: each naming the argument, for ``n_iter`` < 0, ``every`` < 1, an
            ``optimizer`` that is not one; the errors of :func:`hessian_eigenvalues`.
    """
    _check_callable(closure, "closure", "a zero-argument callable returning the loss")
    params = _check_params(params)
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, got {type(optimizer).__name__}")
    n_iter = check_int(n_iter, "n_iter", 0)
    every = check_int(every, "every", 1)
    tol = check_tol(tol)
    generator = check_generator(generator)
    progress = check_progress(progress)
    if seed is not None:
        seed = check_int(seed, "seed", 0)
        warnings.warn("sharpness_during_training(): the argument 'seed' is deprecated, use 'generator'",
                      DeprecationWarning, stacklevel=3)
    record = []
    for t in tqdm(range(n_iter + 1), desc="training", disable=not progress, leave=False):
        if t % every == 0:
            start = torch.Generator().manual_seed(seed + t) if seed is not None else generator
            top = hessian_eigenvalues(closure, params, tol=tol, generator=start, progress=False)
            with torch.no_grad():
                record.append((t, float(closure()), float(top)))
        if t < n_iter:
            optimizer.zero_grad()
            closure().backward()
            optimizer.step()
    step, loss, top = torch.tensor(record, dtype=torch.float64).T
    return {"step": step, "loss": loss, "sharpness": top}


@renamed_kwargs(loss_fn="closure", n_steps="n_iter")
def sharpness(
    closure: LossClosure,
    params: Sequence[Tensor],
    *,
    rho: float,
    n_iter: int = 5,
    step_size: float | None = None,
    adaptive: bool = False,
    eta: float = 0.0,
    generator: torch.Generator | None = None,
    return_perturbation: bool = False,
) -> Tensor | SharpnessEstimate:
    r"""Worst-case loss increase in a ball around the parameters, by projected gradient ascent.

    .. math::
        S_\rho(\theta) = \max_{\|T^{-1}\epsilon\|_2 \le \rho} L(\theta + \epsilon) - L(\theta),

    with :math:`T = I` (the :math:`\ell_2` ball of SAM [foret2021sharpness], the
    :math:`\epsilon`-sharpness of [keskar2017large] in that ball) or, with ``adaptive``,
    :math:`T = \operatorname{diag}(|\theta| + \eta)` (ASAM's scale-invariant ball [kwon2021asam]).
    In the variable :math:`\delta = T^{-1}\epsilon`, the gradient is :math:`T\nabla L`; the first
    step goes to the SAM point :math:`\delta_1 = \rho\, T g / \|T g\|` (the maximizer of the
    first-order expansion), then ``n_iter - 1`` normalized steps
    :math:`\delta \leftarrow \Pi_\rho(\delta + \alpha\, T\nabla L / \|T \nabla L\|)` follow. The
    result is the largest increase seen, a lower bound of :math:`S_\rho` (an attack, not a
    certificate). For a quadratic :math:`L = g^\top\epsilon + \frac12\epsilon^\top A\epsilon`,
    :math:`\rho\|g\| + \frac{\rho^2}{2}\hat g^\top A \hat g \le S_\rho \le \rho\|g\| +
    \frac{\rho^2}{2}\lambda_{\max}(A)` (:math:`T = I`). The parameters are perturbed in place and
    restored (bit for bit) before returning, also on error.

    Args:
        closure: zero-argument callable returning the scalar loss at the current parameters
            (formerly ``loss_fn``).
        params: the tensors (requiring grad) perturbed.
        rho: radius of the ball, > 0.
        n_iter: ascent steps (1: the SAM point only; formerly ``n_steps``).
        step_size: :math:`\alpha` of the later steps, default ``rho``.
        adaptive: use ASAM's ball.
        eta: :math:`\eta` of ASAM's scaling, >= 0 (0 leaves zero parameters unperturbed).
        generator: a random first direction when the gradient is zero.
        return_perturbation: also return the maximizing :math:`\epsilon` (shaped like params).

    Returns:
        The increase (0-dim tensor, detached); with ``return_perturbation``, a
        :class:`SharpnessEstimate` ``(sharpness, perturbation)`` (it unpacks like the former
        tuple).

    Raises:
        TypeError or ValueError: each naming the argument, for params that do not require grad;
            ``rho`` <= 0; ``n_iter`` < 1; ``eta`` < 0; ``step_size`` <= 0; a closure that does
            not return a scalar, or a non-finite one at the unperturbed parameters.
    """
    _check_callable(closure, "closure", "a zero-argument callable returning the loss")
    params = _check_params(params)
    rho = check_positive(rho, "rho")
    check_int(n_iter, "n_iter", 1)
    alpha = rho if step_size is None else check_positive(step_size, "step_size")
    adaptive = _check_bool(adaptive, "adaptive")
    eta = check_number(eta, "eta", minimum=0.0)
    generator = check_generator(generator)
    return_perturbation = _check_bool(return_perturbation, "return_perturbation")
    T = _scaling(params, adaptive, eta)
    originals = [p.detach().clone() for p in params]
    delta = [torch.zeros_like(p) for p in params]
    best, best_eps = None, None
    try:
        with torch.enable_grad():
            for step in range(n_iter + 1):
                with torch.no_grad():
                    eps = delta if T is None else [t * d for t, d in zip(T, delta)]
                    for p, p0, e in zip(params, originals, eps):
                        p.copy_(p0 + e)
                loss = _scalar_loss(closure, finite=step == 0)
                if step == 0:
                    base = loss.detach()
                elif best is None or loss.detach() > best:
                    best, best_eps = loss.detach(), [e.clone() for e in eps]
                if step == n_iter:
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
        eps = tuple(best_eps) if best_eps is not None else tuple(torch.zeros_like(p) for p in originals)
        return SharpnessEstimate(increase, eps)
    return increase



@renamed_kwargs(n_steps="n_iter")
def m_sharpness(
    model: nn.Module,
    data,
    *,
    m: int,
    rho: float,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    n_iter: int = 1,
    adaptive: bool = False,
    eta: float = 0.0,
    max_examples: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> Tensor:
    r""":math:`m`-sharpness: the per-batch worst-case increase averaged over batches of size :math:`m`.

    .. math::
        S^m_\rho = \frac1{n/m}\sum_{B} \max_{\|\epsilon\| \le \rho} L_B(\theta + \epsilon) - L_B(\theta),

    over the disjoint batches :math:`B` of :math:`m` consecutive examples (a last, incomplete batch
    is left out) [foret2021sharpness]: the quantity SAM with per-device batches of size :math:`m`
    minimizes, which correlates with generalization better for small :math:`m`. Each maximum is
    :func:`sharpness` with ``n_iter`` steps (one: SAM's own approximation). The model is
    evaluated in eval mode (every submodule's own mode is restored afterwards, also on error),
    on its device (the data is moved there), its parameters restored afterwards.

    Args:
        model: the network; its parameters requiring grad are perturbed.
        data: ``(inputs, labels)`` tensors, a data set or a data loader (taken in order).
        m: batch size, >= 1.
        rho: radius, > 0.
        loss_fn: ``(outputs, labels) -> mean loss``; default cross-entropy.
        n_iter, adaptive, eta, generator: passed to :func:`sharpness` (``n_iter`` formerly
            ``n_steps``).
        max_examples: the data budget (examples used at most).
        progress: a progress bar over batches (``None``: unless ``TQDM_DISABLE`` is set).

    Returns:
        The mean increase (0-dim tensor).

    Raises:
        TypeError or ValueError: each naming the argument, for a ``model`` that is not an ``nn.Module``,
            ``m`` < 1, ``rho`` <= 0, fewer than ``m`` examples, ``data`` of another kind or with
            NaN/Inf inputs; the errors of :func:`sharpness`.
    """
    names, params = _model_params(model)
    check_int(m, "m", 1)
    rho = check_positive(rho, "rho")
    check_int(n_iter, "n_iter", 1)
    adaptive = _check_bool(adaptive, "adaptive")
    eta = check_number(eta, "eta", minimum=0.0)
    generator = check_generator(generator)
    progress = check_progress(progress)
    if max_examples is not None:
        check_int(max_examples, "max_examples", 1)
    loss_fn = _check_loss_fn(loss_fn)
    chunks, _ = _batches_within(model, data, m, max_examples, full_only=True)
    if not chunks:
        raise ValueError(f"m must be at most the number of examples, got m={m!r}")
    with eval_mode(model):
        values = [
            sharpness(lambda xb=xb, yb=yb: loss_fn(model(xb), yb), params, rho=rho, n_iter=n_iter,
                      adaptive=adaptive, eta=eta, generator=generator)
            for xb, yb in tqdm(chunks, desc="m-sharpness", disable=not progress, leave=False)
        ]
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
        rho = check_positive(rho, "rho")
        adaptive = _check_bool(adaptive, "adaptive")
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

