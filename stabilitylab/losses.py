r"""Training losses for Lipschitz classifiers: margins, optimal transport, offset cross-entropy.

A network that is :math:`L`-Lipschitz in :math:`\ell_2` keeps its prediction on the ball of
radius :math:`(z_y - \max_{j \ne y} z_j) / (\sqrt2 L)` around a point with logits :math:`z` and
label :math:`y` [tsuzuku2018lipschitz] (see :mod:`stabilitylab.certify`). With :math:`L` fixed
by the architecture, robustness is bought by the loss, which decides how far the logit margins
are pushed. Every loss here has a knob that moves the *accuracy-robustness trade-off*
[bethune2022pay]: asking for larger margins on every point certifies larger radii on the points
that reach them, and leaves less capacity to classify the hard points at all.

* :func:`hkr_loss`: hinge + Kantorovich-Rubinstein [serrurier2021achieving] [bethune2022pay],
  binary or one-vs-rest multiclass; the KR term estimates a Wasserstein-1 distance between the
  classes and pushes every logit, the hinge term asks for a margin ``margin``;
* :func:`multiclass_hinge_loss`: :math:`\max(0, m - (z_y - \max_{j\ne y} z_j))`
  [crammer2001algorithmic]: zero exactly when the margin reaches ``margin``;
* :func:`offset_cross_entropy`: the cross-entropy with an offset on the true logit and a
  temperature [prach2022almost], the standard loss of 1-Lipschitz networks (AOL, SLL
  [araujo2023unified], BRONet);
* :func:`logit_annealing_loss`: the offset cross-entropy damped by :math:`(1 - p_y)^\gamma` on
  points whose margin is already large [lai2025enhancing].

:func:`lipschitz_penalty` is of another kind: a regularizer of the weights, not of the logits.
It pushes every layer's certified norm below a threshold (the Gram-iteration penalty of
[delattre2023efficient]), for networks that are not 1-Lipschitz by construction; pass it to
:func:`stabilitylab.train.fit` as ``penalty``.

Conventions shared by every function: ``logits`` is a floating tensor ``(N, C)`` (binary HKR
also ``(N,)`` or ``(N, 1)``), ``labels`` an integer tensor ``(N,)`` of class indices in
``[0, C)`` (binary HKR: values in ``{0, 1}``); ``reduction`` is ``"mean"`` (default), ``"sum"``
or ``"none"`` (a ``(N,)`` tensor of per-example losses). Every loss is differentiable in the
logits, runs on the logits' device and returns the logits' dtype. Each function has a thin
``nn.Module`` wrapper (:class:`HKRLoss`, :class:`MulticlassHingeLoss`,
:class:`OffsetCrossEntropyLoss`, :class:`LogitAnnealingLoss`) usable as ``loss_fn`` of
:func:`stabilitylab.train.fit`. Shapes, dtypes and labels are checked; NaN logits are not (a
check would wait for the device at every training step): like torch's own losses, they give a
NaN loss, which shows in the history of :func:`stabilitylab.train.fit`.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "hkr_loss",
    "multiclass_hinge_loss",
    "offset_cross_entropy",
    "logit_annealing_loss",
    "HKRLoss",
    "MulticlassHingeLoss",
    "OffsetCrossEntropyLoss",
    "LogitAnnealingLoss",
    "lipschitz_penalty",
]

_REDUCTIONS = ("mean", "sum", "none")


# ----------------------------------------------------------------------------- argument checks


def _check_reduction(reduction) -> str:
    if not isinstance(reduction, str) or reduction not in _REDUCTIONS:
        raise ValueError(f"reduction must be one of {_REDUCTIONS}, got reduction={reduction!r}")
    return reduction


def _check_real(value, name: str, *, low: float = -math.inf, high: float = math.inf,
                low_open: bool = False) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {name}={value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {name}={value!r}")
    if value < low or (low_open and value == low) or value > high:
        left = "(" if low_open else "["
        raise ValueError(f"{name} must lie in {left}{low}, {high}], got {name}={value!r}")
    return value


def _check_logits(logits, *, name: str = "logits") -> Tensor:
    if not isinstance(logits, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    return logits


def _check_multiclass(logits, labels) -> tuple[Tensor, Tensor]:
    logits = _check_logits(logits)
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, C) with C >= 2, got shape {tuple(logits.shape)}")
    return logits, _check_labels(labels, logits.shape[0], logits.shape[1])


def _check_labels(labels, n: int, num_classes: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape (N,) = ({n},) to match logits, got shape {tuple(labels.shape)}")
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(
            f"labels must be class indices in [0, {num_classes}), got values in "
            f"[{int(labels.min())}, {int(labels.max())}]"
        )
    return labels.long()


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "mean":
        return loss.mean()
    if reduction == "sum":
        return loss.sum()
    return loss


def _true_and_runner_up(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """(z_y, max_{j != y} z_j), each (N,)."""
    true = logits.gather(1, labels[:, None]).squeeze(1)
    others = logits.masked_fill(F.one_hot(labels, logits.shape[1]).bool(), -math.inf)
    return true, others.amax(dim=1)


# ----------------------------------------------------------------------------- HKR


def _kr_weights(positive: Tensor, dtype: torch.dtype) -> Tensor:
    r"""Per-example weights :math:`s_i / p_{s_i}` whose mean over the batch is the difference of
    class means: :math:`\frac1N \sum_i \frac{s_i f_i}{p_{s_i}} = \bar f_+ - \bar f_-`.

    ``positive`` is a boolean tensor (any shape, the batch first); a class absent from the
    batch gets weight 0 (its mean is undefined).
    """
    n = positive.shape[0]
    n_pos = positive.sum(dim=0, keepdim=True).to(dtype)
    n_neg = n - n_pos
    w_pos = torch.where(n_pos > 0, n / n_pos.clamp_min(1), torch.zeros_like(n_pos))
    w_neg = torch.where(n_neg > 0, n / n_neg.clamp_min(1), torch.zeros_like(n_neg))
    return torch.where(positive, w_pos, -w_neg)


def hkr_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    alpha: float = 0.9,
    margin: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Hinge-Kantorovich-Rubinstein loss (HKR), binary or multiclass one-vs-rest.

    **Binary** (``logits`` of shape ``(N,)`` or ``(N, 1)``, a score :math:`f_i`; ``labels`` in
    ``{0, 1}``, signs :math:`s_i = 2y_i - 1`):

    .. math::

        \mathcal L = \alpha\, \frac1N \sum_i \max(0, m - s_i f_i)
                     \;-\; (1 - \alpha)\, \bigl(\bar f_{+} - \bar f_{-}\bigr),

    with :math:`\bar f_\pm` the mean score of the batch's positive and negative examples. For a
    1-Lipschitz :math:`f` the KR term :math:`\bar f_+ - \bar f_-` is at most the Wasserstein-1
    distance between the two classes (Kantorovich-Rubinstein duality), reached by the optimal
    transport potential; the hinge term asks every point to be on its side of the decision
    boundary :math:`f = 0` with a score of at least ``margin``, hence, for a 1-Lipschitz
    :math:`f`, at distance at least ``margin`` from the boundary [serrurier2021achieving].

    **Multiclass** (``logits`` ``(N, C)``, ``C >= 2``; ``labels`` in ``[0, C)``): the hinge is
    :func:`multiclass_hinge_loss` and the KR term is averaged over the one-vs-rest problems,
    :math:`\frac1C \sum_k (\bar z_{k \mid y = k} - \bar z_{k \mid y \ne k})` (the mean of logit
    :math:`k` on class :math:`k` minus its mean on the other classes) [bethune2022pay].

    A class absent from the batch contributes 0 to the KR term (its mean is undefined). With
    ``reduction="none"`` the KR term is split into per-example parts
    :math:`s_i f_i / p_{s_i}` (:math:`p_\pm` the fraction of the batch in each class), whose
    mean is the KR term: they depend on the batch's class proportions. ``"sum"`` is ``N`` times
    ``"mean"``.

    Trade-off: ``alpha = 1`` is the pure hinge (accuracy with margin ``m``), ``alpha = 0`` the
    pure KR loss (the Wasserstein potential: robust but not trained to classify; it is unbounded
    below for a network that is not Lipschitz-constrained). Larger ``margin`` or smaller
    ``alpha`` give larger certified radii and lower clean accuracy [bethune2022pay].

    Args:
        logits: ``(N,)`` or ``(N, 1)`` (binary) or ``(N, C)`` with ``C >= 2`` (multiclass).
        labels: ``(N,)``: ``{0, 1}`` (binary; integer, boolean or 0./1. floats) or class
            indices (multiclass, integer).
        alpha: weight of the hinge in ``[0, 1]``.
        margin: :math:`m \ge 0`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A 0-dim tensor, or ``(N,)`` for ``reduction="none"``, in the logits' dtype.

    Raises:
        TypeError: non-tensor or non-floating logits; labels of the wrong dtype.
        ValueError: shape mismatch, labels out of range, ``alpha`` outside ``[0, 1]``,
            ``margin < 0``, an unknown ``reduction``.

    References:
        [serrurier2021achieving], [bethune2022pay].
    """
    alpha = _check_real(alpha, "alpha", low=0.0, high=1.0)
    margin = _check_real(margin, "margin", low=0.0)
    reduction = _check_reduction(reduction)
    logits = _check_logits(logits)
    binary = logits.ndim == 1 or (logits.ndim == 2 and logits.shape[1] == 1)
    if binary:
        f = logits.reshape(-1)
        y = _binary_labels(labels, f.shape[0])
        positive = y.to(f.device)
        sign = positive.to(f.dtype) * 2 - 1
        hinge = F.relu(margin - sign * f)
        kr = _kr_weights(positive, f.dtype) * f
    else:
        logits, y = _check_multiclass(logits, labels)
        hinge = _multiclass_hinge(logits, y, margin)
        positive = F.one_hot(y, logits.shape[1]).bool()
        kr = (_kr_weights(positive, logits.dtype) * logits).mean(dim=1)
    return _reduce(alpha * hinge - (1.0 - alpha) * kr, reduction)


def _binary_labels(labels, n: int) -> Tensor:
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.is_complex():
        raise TypeError(f"labels must be real, got dtype {labels.dtype}")
    if labels.ndim == 2 and labels.shape[1] == 1:
        labels = labels.reshape(-1)
    if labels.ndim != 1 or labels.shape[0] != n:
        raise ValueError(f"labels must have shape (N,) = ({n},) to match logits, got shape {tuple(labels.shape)}")
    if labels.numel() and not bool(((labels == 0) | (labels == 1)).all()):
        bad = labels[(labels != 0) & (labels != 1)][0].item()
        raise ValueError(f"binary labels must be 0 or 1, got a label {bad!r}")
    return labels == 1


# ----------------------------------------------------------------------------- multiclass hinge


def _multiclass_hinge(logits: Tensor, labels: Tensor, margin: float) -> Tensor:
    true, runner_up = _true_and_runner_up(logits, labels)
    return F.relu(margin - (true - runner_up))


def multiclass_hinge_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    margin: float = 1.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Multiclass hinge loss on the margin to the runner-up class [crammer2001algorithmic].

    .. math:: \ell(z, y) = \max\bigl(0,\; m - (z_y - \max_{j \ne y} z_j)\bigr).

    It is zero exactly when the true logit beats every other one by at least :math:`m`; for a
    network whose logits are :math:`L`-Lipschitz in :math:`\ell_2` such a point is certified
    on the ball of radius :math:`m / (\sqrt2 L)` [tsuzuku2018lipschitz]. Only the runner-up
    receives a gradient (a subgradient at ties). Larger ``margin``: larger radii where it is
    reached, lower clean accuracy; ``margin = 0`` is the perceptron loss.

    Args:
        logits: ``(N, C)``, ``C >= 2``.
        labels: ``(N,)`` integer class indices in ``[0, C)``.
        margin: :math:`m \ge 0`.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A 0-dim tensor, or ``(N,)`` for ``reduction="none"``, in the logits' dtype.

    Raises:
        TypeError: non-tensor or non-floating logits, non-integer labels.
        ValueError: shape mismatch, labels out of range, ``margin < 0``, unknown ``reduction``.

    References:
        [crammer2001algorithmic], [tsuzuku2018lipschitz].
    """
    margin = _check_real(margin, "margin", low=0.0)
    reduction = _check_reduction(reduction)
    logits, labels = _check_multiclass(logits, labels)
    return _reduce(_multiclass_hinge(logits, labels, margin), reduction)


# ----------------------------------------------------------------------------- offset CE / LA


def _offset_log_prob(logits: Tensor, labels: Tensor, offset: float, temperature: float) -> Tensor:
    r""":math:`\log \operatorname{softmax}((z - u e_y)/\tau)_y`, shape (N,)."""
    shifted = (logits - offset * F.one_hot(labels, logits.shape[1]).to(logits.dtype)) / temperature
    return shifted.log_softmax(dim=1).gather(1, labels[:, None]).squeeze(1)


def offset_cross_entropy(
    logits: Tensor,
    labels: Tensor,
    *,
    offset: float = math.sqrt(2.0),
    temperature: float = 0.25,
    reduction: str = "mean",
) -> Tensor:
    r"""Cross-entropy with an offset on the true logit and a temperature [prach2022almost].

    .. math::

        \ell(z, y) = \tau\, \mathrm{CE}\!\left(\frac{z - u\, e_y}{\tau},\, y\right)
                   = \tau \log\Bigl(1 + \sum_{j \ne y} e^{(z_j - z_y + u)/\tau}\Bigr),

    with offset :math:`u \ge 0` and temperature :math:`\tau > 0` (the form of Prach & Lampert,
    also used by SLL [araujo2023unified] and BRONet [lai2025enhancing]). The factor
    :math:`\tau` keeps the gradient in the logits of size at most :math:`\sqrt2`, whatever
    :math:`\tau`. ``offset=0, temperature=1`` is :func:`torch.nn.functional.cross_entropy`.

    Trade-off. The offset asks for a margin :math:`z_y - z_j \ge u`: for an :math:`L`-Lipschitz
    network that is a certified radius :math:`u / (\sqrt2 L)`, so choose
    :math:`u = \sqrt2 L \varepsilon` to aim at radius :math:`\varepsilon`; larger offset, more
    robust and less accurate. The temperature sets how hard the loss keeps pushing margins
    beyond :math:`u`: as :math:`\tau \to 0` the loss tends to the hinge
    :math:`\max(0, u - (z_y - \max_{j\ne y} z_j))` (no gradient once the margin exceeds
    :math:`u`: most accurate), while a larger :math:`\tau` keeps a gradient of order
    :math:`e^{-(z_y - z_j - u)/\tau}` on points already past the offset and spends capacity on
    enlarging their margins: more robust, less accurate [prach2022almost] [bethune2022pay].
    (In the convention ``CE(T * z)`` of [bethune2022pay], :math:`T = 1/\tau`: a smaller
    :math:`T` is more robust.)

    Args:
        logits: ``(N, C)``, ``C >= 2``.
        labels: ``(N,)`` integer class indices in ``[0, C)``.
        offset: :math:`u \ge 0`; default :math:`\sqrt2` (radius 1 for a 1-Lipschitz network).
        temperature: :math:`\tau > 0`; default 1/4.
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A 0-dim tensor, or ``(N,)`` for ``reduction="none"``, in the logits' dtype.

    Raises:
        TypeError: non-tensor or non-floating logits, non-integer labels.
        ValueError: shape mismatch, labels out of range, ``offset < 0``, ``temperature <= 0``,
            unknown ``reduction``.

    References:
        [prach2022almost], [araujo2023unified].
    """
    offset = _check_real(offset, "offset", low=0.0)
    temperature = _check_real(temperature, "temperature", low=0.0, low_open=True)
    reduction = _check_reduction(reduction)
    logits, labels = _check_multiclass(logits, labels)
    return _reduce(-temperature * _offset_log_prob(logits, labels, offset, temperature), reduction)


def logit_annealing_loss(
    logits: Tensor,
    labels: Tensor,
    *,
    offset: float = 2.0,
    temperature: float = 0.75,
    gamma: float = 5.0,
    reduction: str = "mean",
) -> Tensor:
    r"""Logit annealing (LA) loss of BRONet [lai2025enhancing].

    With :math:`p = \operatorname{softmax}\bigl((z - u\, e_y)/\tau\bigr)_y` the probability of
    the true class under the offset logits of :func:`offset_cross_entropy`,

    .. math:: \ell(z, y) = -\tau\, (1 - p)^{\gamma} \log p .

    The annealing factor :math:`(1 - p)^\gamma` (a focal-loss weight on the offset
    cross-entropy) vanishes as the margin grows: a point already classified with a large margin
    stops receiving gradient, so the network's limited Lipschitz budget is spent on the points
    whose margins are still small instead of enlarging the largest ones [lai2025enhancing].
    ``gamma = 0`` is :func:`offset_cross_entropy`. Lai et al. apply it to logits whose
    non-true entries are raised by a per-example Lipschitz margin term (as in EMMA); that term
    belongs to the model's logits and is not part of this function.

    Trade-off: ``offset`` and ``temperature`` act as in :func:`offset_cross_entropy` (larger
    offset or temperature: more robust, less accurate); a larger ``gamma`` stops pushing the
    margins of easy points earlier, favouring clean and small-radius certified accuracy over
    the largest radii.

    Computed stably from :math:`\log p` (log-softmax) with
    :math:`1 - p = -\operatorname{expm1}(\log p)`.

    Args:
        logits: ``(N, C)``, ``C >= 2``.
        labels: ``(N,)`` integer class indices in ``[0, C)``.
        offset: :math:`u \ge 0` (default 2, as in the reference implementation).
        temperature: :math:`\tau > 0` (default 0.75).
        gamma: annealing exponent :math:`\gamma \ge 0` (default 5).
        reduction: ``"mean"``, ``"sum"`` or ``"none"``.

    Returns:
        A 0-dim tensor, or ``(N,)`` for ``reduction="none"``, in the logits' dtype.

    Raises:
        TypeError: non-tensor or non-floating logits, non-integer labels.
        ValueError: shape mismatch, labels out of range, ``offset < 0``, ``temperature <= 0``,
            ``gamma < 0``, unknown ``reduction``.

    References:
        [lai2025enhancing], [prach2022almost].
    """
    offset = _check_real(offset, "offset", low=0.0)
    temperature = _check_real(temperature, "temperature", low=0.0, low_open=True)
    gamma = _check_real(gamma, "gamma", low=0.0)
    reduction = _check_reduction(reduction)
    logits, labels = _check_multiclass(logits, labels)
    log_p = _offset_log_prob(logits, labels, offset, temperature)
    weight = (-torch.expm1(log_p)).clamp_min(0.0) ** gamma if gamma != 0 else torch.ones_like(log_p)
    return _reduce(-temperature * weight * log_p, reduction)


# ----------------------------------------------------------------------------- modules


class HKRLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`hkr_loss` (options checked at construction)."""

    def __init__(self, *, alpha: float = 0.9, margin: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.alpha = _check_real(alpha, "alpha", low=0.0, high=1.0)
        self.margin = _check_real(margin, "margin", low=0.0)
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return hkr_loss(logits, labels, alpha=self.alpha, margin=self.margin, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}, margin={self.margin}, reduction={self.reduction!r}"


class MulticlassHingeLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`multiclass_hinge_loss`."""

    def __init__(self, *, margin: float = 1.0, reduction: str = "mean") -> None:
        super().__init__()
        self.margin = _check_real(margin, "margin", low=0.0)
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return multiclass_hinge_loss(logits, labels, margin=self.margin, reduction=self.reduction)

    def extra_repr(self) -> str:
        return f"margin={self.margin}, reduction={self.reduction!r}"


class OffsetCrossEntropyLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`offset_cross_entropy`."""

    def __init__(self, *, offset: float = math.sqrt(2.0), temperature: float = 0.25,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.offset = _check_real(offset, "offset", low=0.0)
        self.temperature = _check_real(temperature, "temperature", low=0.0, low_open=True)
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return offset_cross_entropy(
            logits, labels, offset=self.offset, temperature=self.temperature, reduction=self.reduction
        )

    def extra_repr(self) -> str:
        return f"offset={self.offset:.4g}, temperature={self.temperature:.4g}, reduction={self.reduction!r}"


class LogitAnnealingLoss(nn.Module):
    """``nn.Module`` wrapper of :func:`logit_annealing_loss`."""

    def __init__(self, *, offset: float = 2.0, temperature: float = 0.75, gamma: float = 5.0,
                 reduction: str = "mean") -> None:
        super().__init__()
        self.offset = _check_real(offset, "offset", low=0.0)
        self.temperature = _check_real(temperature, "temperature", low=0.0, low_open=True)
        self.gamma = _check_real(gamma, "gamma", low=0.0)
        self.reduction = _check_reduction(reduction)

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        return logit_annealing_loss(
            logits, labels, offset=self.offset, temperature=self.temperature, gamma=self.gamma,
            reduction=self.reduction,
        )

    def extra_repr(self) -> str:
        return (
            f"offset={self.offset:.4g}, temperature={self.temperature:.4g}, gamma={self.gamma:.4g}, "
            f"reduction={self.reduction!r}"
        )


# ----------------------------------------------------------------------------- Lipschitz penalty


def _is_layer(module: nn.Module) -> bool:
    return isinstance(module, (nn.Linear, nn.Conv2d))


def _penalized_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The plain ``nn.Linear``/``nn.Conv2d`` modules of ``model``, in ``named_modules`` order;
    modules declaring a ``lipschitz_constant`` (1-Lipschitz layers) are skipped with their
    children, subclasses that override ``forward`` are refused."""
    out: list[tuple[str, nn.Module]] = []

    def walk(module: nn.Module, prefix: str) -> None:
        if hasattr(module, "lipschitz_constant"):
            return  # constrained by construction: its weight is not the map it applies
        if _is_layer(module):
            base = nn.Linear if isinstance(module, nn.Linear) else nn.Conv2d
            if type(module).forward is not base.forward:
                raise TypeError(
                    f"model: module {prefix or '(model)'!r} of type {type(module).__name__} subclasses "
                    f"{base.__name__} but overrides forward, so its weight is not the map it applies: "
                    "give it a lipschitz_constant attribute (then it is skipped) or use a plain layer")
            out.append((prefix, module))
        for name, child in module.named_children():
            walk(child, f"{prefix}.{name}" if prefix else name)

    walk(model, "")
    return out


def _conv_input_sizes(model: nn.Module, convs: list[tuple[str, nn.Conv2d]], input_shape: tuple[int, ...],
                      ) -> dict[int, set[tuple[int, int]]]:
    """The spatial input sizes each convolution sees in one forward pass of ``zeros(1, *input_shape)``
    (eval mode, no gradient, every submodule's mode restored): ``{id(conv): {(h, w), ...}}``."""
    from stabilitylab._devices import model_device, model_dtype
    from stabilitylab._modes import eval_mode

    sizes: dict[int, set[tuple[int, int]]] = {id(conv): set() for _, conv in convs}
    handles = [conv.register_forward_pre_hook(
        lambda module, inputs: sizes[id(module)].add(tuple(inputs[0].shape[-2:]))) for _, conv in convs]
    x = torch.zeros((1, *input_shape), dtype=model_dtype(model, torch.get_default_dtype()),
                    device=model_device(model, torch.device("cpu")))
    try:
        with torch.no_grad(), eval_mode(model):
            model(x)
    except Exception as error:  # noqa: BLE001 - any failure means the shape does not fit
        raise ValueError(
            f"input_shape {input_shape} does not fit the model: a forward pass of an input of shape "
            f"{tuple(x.shape)} failed: {type(error).__name__}: {error}") from error
    finally:
        for handle in handles:
            handle.remove()
    for name, conv in convs:
        if not sizes[id(conv)]:
            raise ValueError(
                f"input_shape {input_shape}: module {name!r} (Conv2d) is not applied by the model's "
                "forward, so its input size (and its norm) is unknown")
    return sizes


def lipschitz_penalty(
    model: nn.Module,
    input_shape,
    *,
    tau: float = 1.0,
    n_iter: int = 6,
    tol: float = 1e-3,
) -> Tensor:
    r"""Differentiable Lipschitz penalty :math:`\sum_l \max(0, s_l - \tau)` over a model's layers.

    For every ``nn.Linear`` and ``nn.Conv2d`` of ``model``, :math:`s_l` is a certified,
    differentiable upper bound of the layer's operator norm (the Lipschitz constant of its
    linear part in :math:`\ell_2`, bias excluded):

    * ``nn.Linear``: :func:`stabilitylab.spectral.gram_iteration` of the weight, ``n_iter`` Gram
      steps [delattre2023efficient];
    * ``nn.Conv2d``: :func:`stabilitylab.spectral.conv2d_module_norm` on the layer's own input
      size (its padding, stride, dilation and groups read off the module), stopped at the
      certified relative gap ``tol`` [delattre2024spectral]. Input sizes are read from one
      forward pass of ``zeros(1, *input_shape)`` in eval mode (every submodule's mode restored);
      a convolution applied at several sizes counts with its largest bound.

    The hinge :math:`\max(0, s_l - \tau)` leaves layers already below :math:`\tau` alone and
    pulls the others down along :math:`\nabla s_l`, which, once the Gram iteration has
    converged, is :math:`u_1 v_1^\top`, the gradient of the top singular value (see
    :mod:`stabilitylab.dynamics`). With ReLU-like activations of constant 1, the network's
    constant is at most :math:`\prod_l s_l`, so driving every :math:`s_l` to :math:`\tau` caps it
    at :math:`\tau^{\#\text{layers}}`; the penalty does not enforce a bound, it trades it
    against the loss. This is the loss :math:`\mathrm{CE} + r \sum_l \max(0, s_l - \tau)` of
    [delattre2023efficient], used as::

        fit(model, data, penalty=lambda model, x, y, loss: r * lipschitz_penalty(model, shape))

    Modules that declare a ``lipschitz_constant`` (the 1-Lipschitz layers of
    :mod:`stabilitylab.layers`) are skipped with their submodules: they are bounded by
    construction. Each bound is computed in its weight's dtype (with the safety margin of
    :func:`~stabilitylab.spectral.gram_iteration` for that dtype) on its device.

    Args:
        model: the network (any ``nn.Module``; its convolutions must be applied by its forward on
            inputs of shape ``input_shape``).
        input_shape: the shape of one input without the batch dimension, e.g. ``(1, 8, 8)``.
        tau: the threshold :math:`\tau \ge 0` below which a layer is not penalized.
        n_iter: Gram steps for the dense weights (>= 1). The bound exceeds the norm by at most
            the factor :math:`\operatorname{rank}^{1/2^{n+1}}` after :math:`n` steps (1.044 for
            rank 256 at six steps), and by much less when the top singular value is separated.
        tol: the certified relative gap at which the convolution bounds stop, in (0, 1).

    Returns:
        A 0-dim tensor in the model's floating dtype, on its device, differentiable with respect
        to the weights (0 for a model without such layers).

    Raises:
        TypeError: ``model`` not an ``nn.Module``, or a Linear/Conv2d subclass that overrides
            ``forward`` without declaring a ``lipschitz_constant``.
        ValueError: a bad ``input_shape`` (or one the model cannot run on), ``tau`` negative or
            not finite, ``n_iter < 1``, ``tol`` outside (0, 1), weights with NaN/Inf entries.

    References:
        [delattre2023efficient], [delattre2024spectral].
    """
    from stabilitylab._checks import check_int, check_number, check_shape, check_tol
    from stabilitylab._devices import model_device, model_dtype
    from stabilitylab.spectral import conv2d_module_norm, gram_iteration

    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    input_shape = check_shape(input_shape, "input_shape")
    tau = check_number(tau, "tau", minimum=0.0)
    n_iter = check_int(n_iter, "n_iter", 1)
    tol = check_tol(tol, "tol")
    layers = _penalized_layers(model)
    for name, module in layers:
        if not bool(torch.isfinite(module.weight.detach()).all()):
            raise ValueError(f"model: module {name!r} has NaN or Inf entries in its weight")
    convs = [(name, m) for name, m in layers if isinstance(m, nn.Conv2d)]
    sizes = _conv_input_sizes(model, convs, input_shape) if convs else {}
    dtype = model_dtype(model, torch.get_default_dtype())
    total = torch.zeros((), dtype=dtype, device=model_device(model, torch.device("cpu")))
    for _, module in layers:
        W = module.weight
        if isinstance(module, nn.Conv2d):
            bounds = [conv2d_module_norm(module, size, tol=tol, dtype=W.dtype).upper
                      for size in sorted(sizes[id(module)])]
            s = bounds[0] if len(bounds) == 1 else torch.stack(bounds).max()
        else:
            s = gram_iteration(W, n_iter=n_iter)
        total = total + F.relu(s - tau).to(device=total.device, dtype=dtype)
    return total
