r"""Margin certificates of Lipschitz classifiers, certified accuracy curves, and a soundness check.

If every logit difference :math:`f_y - f_j` of a classifier is :math:`L_{yj}`-Lipschitz in
:math:`\ell_2`, then a point :math:`x` classified as :math:`y` with margins
:math:`m_j = f_y(x) - f_j(x) > 0` keeps its prediction on the open ball

.. math:: \|\delta\|_2 < r(x) = \min_{j \ne y} \frac{m_j}{L_{yj}},

because :math:`f_y(x+\delta) - f_j(x+\delta) \ge m_j - L_{yj}\|\delta\|_2 > 0`
[tsuzuku2018lipschitz]. With only the network's constant :math:`L`,
:math:`L_{yj} \le \sqrt2 L` (the row :math:`e_y - e_j` has norm :math:`\sqrt2`) and
:math:`r(x) = (f_y(x) - \max_{j\ne y} f_j(x)) / (\sqrt2 L)`; with the last layer's rows
:math:`w_i`, :math:`L_{yj} \le \|w_y - w_j\|_2\, L_g` (:math:`L_g` the constant of the layers
below), never worse (see :func:`stabilitylab.lipschitz.pairwise_logit_bound`). In
:math:`\ell_\infty`, :math:`\|\delta\|_2 \le \sqrt n \|\delta\|_\infty` for :math:`n` input
features, so :math:`r_\infty(x) = r(x)/\sqrt n`.

* :func:`certified_radius`: the radii from logits and labels (0 where the prediction is wrong);
* :func:`certified_radii` / :func:`certified_accuracy`: the same for a model over a data set,
  with the constant from :func:`stabilitylab.lipschitz.upper_bound` by default;
* :func:`accuracy_curve`: certified accuracy as a function of the radius (the chapter's plots);
* :func:`check_soundness`: attacks every certified point with PGD inside its radius
  (:func:`stabilitylab.attacks.pgd`); a correct certificate is never broken.

A point counts as certified at radius :math:`\varepsilon` when its radius is *strictly* larger
than :math:`\varepsilon`: then every point of the closed ball keeps a strictly positive margin,
and at :math:`\varepsilon = 0` the certified accuracy is the clean accuracy.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from stabilitylab import attacks, lipschitz as lip
from stabilitylab.attacks import _round_down
from stabilitylab.train import DataLike, batches

__all__ = [
    "certified_radius",
    "certified_radii",
    "certified_accuracy",
    "accuracy_curve",
    "check_soundness",
    "SoundnessReport",
]

_NORMS = ("l2", "linf")


# ----------------------------------------------------------------------------- argument checks


def _check_norm(norm) -> str:
    if not isinstance(norm, str) or norm not in _NORMS:
        raise ValueError(f"norm must be one of {_NORMS}, got norm={norm!r}")
    return norm


def _check_logits_labels(logits, labels) -> tuple[Tensor, Tensor]:
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"logits must have shape (N, C) with C >= 2, got shape {tuple(logits.shape)}")
    if logits.numel() and not bool(torch.isfinite(logits).all()):
        raise ValueError("logits must be finite, got NaN or infinite entries")
    if not isinstance(labels, Tensor):
        raise TypeError(f"labels must be a torch.Tensor, got {type(labels).__name__}")
    if labels.dtype == torch.bool or labels.is_floating_point() or labels.is_complex():
        raise TypeError(f"labels must be an integer tensor of class indices, got dtype {labels.dtype}")
    if labels.ndim != 1 or labels.shape[0] != logits.shape[0]:
        raise ValueError(
            f"labels must have shape (N,) = ({logits.shape[0]},) to match logits, got shape {tuple(labels.shape)}"
        )
    C = logits.shape[1]
    if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= C):
        raise ValueError(
            f"labels must be class indices in [0, {C}), got values in [{int(labels.min())}, {int(labels.max())}]"
        )
    return logits, labels.to(device=logits.device, dtype=torch.long)


def _check_scalar_lipschitz(value, name: str = "lipschitz") -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.detach().double().item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a positive number or a 0-dim tensor, got {value!r}")
    value = float(value)
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"{name} must be finite and > 0, got {name}={value!r}")
    return value


def _check_pairwise(value: Tensor, C: int) -> Tensor:
    if tuple(value.shape) != (C, C):
        raise ValueError(
            f"lipschitz must be a scalar or a (C, C) = ({C}, {C}) matrix of pairwise constants, "
            f"got shape {tuple(value.shape)}"
        )
    P = value.detach().to(dtype=torch.float64)
    off = ~torch.eye(C, dtype=torch.bool, device=P.device)
    bad = off & ~(torch.isfinite(P) & (P >= 0))
    if bool(bad.any()):
        i, j = bad.nonzero()[0].tolist()
        raise ValueError(
            f"lipschitz: pairwise constants must be finite and >= 0, got lipschitz[{i}, {j}]={P[i, j].item()!r}"
        )
    return P


def _check_input_dim(input_dim) -> int:
    if isinstance(input_dim, bool) or not isinstance(input_dim, numbers.Integral) or input_dim < 1:
        raise ValueError(f"input_dim must be a positive int, got input_dim={input_dim!r}")
    return int(input_dim)


def _check_eps(eps) -> float:
    if isinstance(eps, Tensor):
        if eps.numel() != 1:
            raise ValueError(f"eps must be a scalar here, got a tensor of shape {tuple(eps.shape)}")
        eps = eps.item()
    if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
        raise TypeError(f"eps must be a real number, got {eps!r}")
    eps = float(eps)
    if math.isnan(eps) or eps < 0:
        raise ValueError(f"eps must be >= 0, got eps={eps!r}")
    return eps


def _eps_list(eps) -> tuple[list[float], bool]:
    """(values, scalar?) from a number, a 0-dim tensor, a 1-D tensor or array, or a sequence."""
    if not isinstance(eps, (Tensor, numbers.Real, str)) and hasattr(eps, "__array__"):
        eps = torch.as_tensor(eps.__array__(), dtype=torch.float64)
    if isinstance(eps, Tensor) and eps.ndim == 0 or isinstance(eps, numbers.Real):
        return [_check_eps(eps)], True
    if isinstance(eps, Tensor):
        if eps.ndim != 1:
            raise ValueError(f"eps must be a number or a 1-D sequence, got a tensor of shape {tuple(eps.shape)}")
        return [_check_eps(v) for v in eps.tolist()], False
    if isinstance(eps, Sequence) and not isinstance(eps, str):
        return [_check_eps(v) for v in eps], False
    raise TypeError(f"eps must be a number or a sequence of numbers, got {type(eps).__name__}")


# ----------------------------------------------------------------------------- radii from logits


def _pairwise_from_rows(lipschitz: float, weight: Tensor, C: int) -> Tensor:
    if not isinstance(weight, Tensor) or weight.ndim != 2 or weight.shape[0] != C:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"last_layer_weight must have shape (C, d) with C={C} rows, got {shape}")
    W = weight.detach().to(dtype=torch.float64)
    if not bool(torch.isfinite(W).all()):
        raise ValueError("last_layer_weight must be finite, got NaN or infinite entries")
    return lipschitz * torch.cdist(W, W)


_LOGIT_ROUNDING_ULPS = 64
"""The rounding error of the logits that the margins are reduced by, in units of the logits'
dtype's unit roundoff times the largest absolute logit of the row (see :func:`certified_radius`)."""


def _l2_radius(logits: Tensor, labels: Tensor, scalar: float | None, P: Tensor | None) -> Tensor:
    """Float64 L2 radii (N,): 0 where the margin, less the rounding allowance of the logits, is <= 0."""
    z = logits.detach().to(torch.float64)
    true = z.gather(1, labels[:, None])
    # the logits were rounded (in the forward pass and into their dtype): a margin is only
    # trusted beyond the allowance 64 eps max_k |z_k| (float32: 7.6e-6 of the largest logit)
    allowance = _LOGIT_ROUNDING_ULPS * torch.finfo(logits.dtype).eps * z.abs().amax(dim=1, keepdim=True)
    margins = true - z - allowance  # (N, C), m_j = z_y - z_j less the allowance
    own = torch.nn.functional.one_hot(labels, z.shape[1]).bool()
    min_margin = margins.masked_fill(own, math.inf).amin(dim=1)
    if P is None:
        radius = min_margin / (math.sqrt(2.0) * scalar)
    else:
        L = P.to(z.device)[labels]  # (N, C): L_{y j}
        ratio = margins / L  # m_j / L_yj; m > 0 over L = 0 gives inf (a constant difference)
        radius = ratio.masked_fill(own, math.inf).amin(dim=1)
    return torch.where(min_margin > 0, radius, torch.zeros_like(radius))


def _constants(lipschitz, last_layer_weight, C: int) -> tuple[float | None, Tensor | None]:
    """(scalar, pairwise) where exactly one is set."""
    if isinstance(lipschitz, Tensor) and lipschitz.ndim == 2:
        if last_layer_weight is not None:
            raise ValueError("last_layer_weight cannot be combined with a (C, C) matrix of pairwise constants")
        return None, _check_pairwise(lipschitz, C)
    L = _check_scalar_lipschitz(lipschitz)
    if last_layer_weight is None:
        return L, None
    return None, _pairwise_from_rows(L, last_layer_weight, C)


def certified_radius(
    logits: Tensor,
    labels: Tensor,
    *,
    lipschitz: float | Tensor = 1.0,
    norm: str = "l2",
    input_dim: int | None = None,
    last_layer_weight: Tensor | None = None,
) -> Tensor:
    r"""Certified radii of the predictions of a Lipschitz classifier, from its logits.

    With margins :math:`m_j = z_y - z_j` (:math:`y` the label),

    .. math::

        r_2 = \frac{z_y - \max_{j \ne y} z_j}{\sqrt2\, L}
        \quad\text{(global constant [tsuzuku2018lipschitz])},\qquad
        r_2 = \min_{j \ne y} \frac{m_j}{L\, \|w_y - w_j\|_2}
        \quad\text{(last-layer rows)},

    and :math:`r_2 = \min_{j\ne y} m_j / L_{yj}` for a matrix of pairwise constants. In the
    second form, ``lipschitz`` is the constant :math:`L_g` of the network up to the input of its
    last linear layer :math:`z = W g(x) + b`, whose rows :math:`w_i` are ``last_layer_weight``:
    :math:`\operatorname{Lip}(z_y - z_j) \le \|w_y - w_j\|_2 L_g`; since
    :math:`\|w_y - w_j\|_2 \le \sqrt2 \|W\|_2` it is never smaller than the first form with
    :math:`L = \|W\|_2 L_g` [tsuzuku2018lipschitz] (see also
    :func:`stabilitylab.lipschitz.pairwise_logit_bound`). For ``norm="linf"``,
    :math:`r_\infty = r_2 / \sqrt{n}` with :math:`n` = ``input_dim``, since
    :math:`\|\delta\|_2 \le \sqrt n\, \|\delta\|_\infty`.

    No input at distance less than the radius changes the prediction. The radius is 0 where the
    prediction is wrong or tied (:math:`\min_j m_j \le 0`), and ``inf`` where every competing
    difference is constant (pairwise constant 0, e.g. two equal rows). It is computed in
    float64 and rounded towards 0 into the logits' dtype.

    Rounding of the logits: logits computed in float32 differ from the network's exact values
    (what a float64 evaluation gives) by the rounding of the forward pass, a few units of
    float32's precision times the size of the logits, so a certificate read off a tiny margin
    could be unsound. Every margin is therefore reduced by the allowance
    :math:`\tau = 64\,\epsilon\,\max_k |z_k|` (:math:`\epsilon` the unit roundoff of the
    logits' dtype: :math:`\tau \approx 7.6 \cdot 10^{-6} \max_k |z_k|` in float32,
    :math:`1.4 \cdot 10^{-14} \max_k |z_k|` in float64) before dividing:
    :math:`m_j \to m_j - \tau`. The allowance assumes the forward pass loses at most 64 ulp
    of the largest logit (measured: under 10 for plain and AOL networks, more only when the
    logits are much smaller than the hidden activations); compute the logits in float64 for
    a certificate that does not rest on it.

    Args:
        logits: ``(N, C)`` floating, finite, ``C >= 2``.
        labels: ``(N,)`` integer class indices in ``[0, C)``.
        lipschitz: the network's L2 Lipschitz constant (a float or a 0-dim tensor, finite and
            > 0), or, with ``last_layer_weight``, the constant of the layers below the last one;
            or a ``(C, C)`` tensor of pairwise constants :math:`L_{ij}` of :math:`z_i - z_j`
            (the diagonal is ignored), as returned by
            :func:`stabilitylab.lipschitz.pairwise_logit_bound`.
        norm: ``"l2"`` or ``"linf"``.
        input_dim: :math:`n`, the number of input features; required for ``"linf"``.
        last_layer_weight: ``(C, d)`` weight of the last linear layer (optional).

    Returns:
        ``(N,)`` radii in the logits' dtype and on their device.

    Raises:
        TypeError: non-tensor logits/labels, non-floating logits, non-integer labels.
        ValueError: shape mismatch, labels out of range, non-finite logits, a ``lipschitz``
            that is not finite and > 0 (or a pairwise matrix of the wrong shape or with
            negative / non-finite entries), an unknown ``norm``, a missing or non-positive
            ``input_dim`` for ``"linf"``, a ``last_layer_weight`` without ``C`` rows.

    References:
        [tsuzuku2018lipschitz].
    """
    norm = _check_norm(norm)
    logits, labels = _check_logits_labels(logits, labels)
    scalar, P = _constants(lipschitz, last_layer_weight, logits.shape[1])
    n = None
    if norm == "linf":
        if input_dim is None:
            raise ValueError("input_dim is required for norm='linf' (the radius is r_2 / sqrt(input_dim))")
        n = _check_input_dim(input_dim)
    elif input_dim is not None:
        _check_input_dim(input_dim)
    radius = _l2_radius(logits, labels, scalar, P)
    if n is not None:
        radius = radius / math.sqrt(n)
    return _round_down(radius, logits.dtype)


# ----------------------------------------------------------------------------- models


def _split_last_linear(model: nn.Module) -> tuple[nn.Module, Tensor]:
    """(the layers before the last one as a Sequential, the last layer's effective weight)."""
    if not isinstance(model, nn.Sequential) or len(model) == 0:
        raise ValueError(
            f"last_layer=True needs a non-empty nn.Sequential ending with a linear layer, got {type(model).__name__}"
        )
    last = model[-1]
    if isinstance(last, nn.Sequential) and type(last).forward is nn.Sequential.forward:
        inner_body, weight = _split_last_linear(last)
        return nn.Sequential(*list(model)[:-1], inner_body), weight
    if callable(getattr(last, "normalized_weight", None)):
        weight = last.normalized_weight()
    elif isinstance(last, nn.Linear) and type(last).forward is nn.Linear.forward:
        weight = last.weight
    else:
        raise ValueError(
            "last_layer=True needs a last layer that is a plain nn.Linear or exposes normalized_weight(), "
            f"got {type(last).__name__}"
        )
    return nn.Sequential(*list(model)[:-1]), weight.detach()


def _model_constants(model: nn.Module, input_shape: tuple[int, ...], lipschitz, last_layer: bool):
    """(lipschitz, last_layer_weight) arguments of certified_radius for a model."""
    weight = None
    if last_layer:
        body, weight = _split_last_linear(model)
        if lipschitz is None:
            lipschitz = lip.upper_bound(body, input_shape) if len(body) else 1.0
    elif lipschitz is None:
        lipschitz = lip.upper_bound(model, input_shape)
    return lipschitz, weight


def _model_device(model: nn.Module) -> torch.device:
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device("cpu")


def certified_radii(
    model: nn.Module,
    data: DataLike,
    *,
    lipschitz: float | Tensor | None = None,
    norm: str = "l2",
    last_layer: bool = False,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> Tensor:
    r"""Certified radius of every example of a data set (see :func:`certified_radius`).

    The model runs in evaluation mode (every module's mode is restored afterwards), without
    gradients, batch by batch. When ``lipschitz`` is None the constant is the certified product
    bound :func:`stabilitylab.lipschitz.upper_bound` ``(model, input_shape)`` (``input_shape``
    read from the first batch), so the model must be one it can walk (a Sequential of known or
    declared layers). With ``last_layer=True``, the last layer's rows give the pairwise radii:
    the model must be an ``nn.Sequential`` ending with a plain ``nn.Linear`` or a layer with a
    ``normalized_weight()`` method (e.g. :class:`~stabilitylab.layers.SpectralLinear`), and
    ``lipschitz`` (default: the product bound of the layers before it) is the constant below
    that layer. For ``"linf"``, ``input_dim`` is the number of features of one input.

    Args:
        model: maps ``(B, *input_shape)`` to logits ``(B, C)``.
        data: a Dataset of ``(input, label)``, a DataLoader, or an ``(inputs, labels)`` pair
            (as :func:`stabilitylab.train.fit`).
        lipschitz: see :func:`certified_radius`; None: computed as above.
        norm: ``"l2"`` or ``"linf"``.
        last_layer: use the last layer's rows (pairwise radii).
        batch_size: batch size for tensor pairs and Datasets.
        device: where the inputs are sent; default the model's device.
        progress: show a progress bar over batches.

    Returns:
        ``(N,)`` radii on the CPU in the logits' dtype (0 for misclassified examples).

    Raises:
        TypeError: ``model`` not an ``nn.Module``, ``data`` of another kind.
        ValueError: the errors of :func:`certified_radius`; an empty data set; a model that
            :func:`~stabilitylab.lipschitz.upper_bound` cannot walk when ``lipschitz`` is None
            (TypeError for unknown layers); ``last_layer=True`` on an unsuitable model.

    References:
        [tsuzuku2018lipschitz].
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    norm = _check_norm(norm)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got batch_size={batch_size!r}")
    if lipschitz is not None and not (isinstance(lipschitz, Tensor) and lipschitz.ndim == 2):
        _check_scalar_lipschitz(lipschitz)
    device = torch.device(device) if device is not None else _model_device(model)
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    radii: list[Tensor] = []
    constants = None
    try:
        with torch.no_grad():
            for x, y in tqdm(batches(data, batch_size=batch_size), desc="certifying", disable=not progress, leave=False):
                x = x.to(device)
                if constants is None:
                    constants = _model_constants(model, tuple(x.shape[1:]), lipschitz, last_layer)
                L, weight = constants
                logits = model(x)
                radii.append(
                    certified_radius(
                        logits, y.to(logits.device), lipschitz=L, norm=norm, input_dim=x[0].numel(),
                        last_layer_weight=weight,
                    ).cpu()
                )
    finally:
        for module, mode in modes:
            module.training = mode
    if not radii:
        raise ValueError("data is empty")
    return torch.cat(radii)


def accuracy_curve(radii: Tensor, eps_grid: Sequence[float] | Tensor) -> Tensor:
    r"""Certified accuracy at each radius of a grid: :math:`\frac1N \#\{i : r_i > \varepsilon\}`.

    The inequality is strict (the certificate then covers the closed ball, and at
    :math:`\varepsilon = 0` the value is the clean accuracy, misclassified points having radius
    0). The curve is non-increasing in :math:`\varepsilon`.

    Args:
        radii: ``(N,)`` radii, ``N >= 1``, non-negative (``inf`` allowed), as returned by
            :func:`certified_radii`.
        eps_grid: a sequence or 1-D tensor of radii :math:`\varepsilon \ge 0`.

    Returns:
        ``(len(eps_grid),)`` float64 tensor on the CPU.

    Raises:
        ValueError: empty, NaN or negative radii, or a negative / NaN ``eps``.
    """
    if not isinstance(radii, Tensor):
        raise TypeError(f"radii must be a torch.Tensor, got {type(radii).__name__}")
    if radii.ndim != 1 or radii.numel() == 0:
        raise ValueError(f"radii must be a non-empty (N,) tensor, got shape {tuple(radii.shape)}")
    r = radii.detach().to(device="cpu", dtype=torch.float64)
    if bool(torch.isnan(r).any()) or bool((r < 0).any()):
        raise ValueError(f"radii must be >= 0 and not NaN, got min(radii)={r.min().item()!r}")
    values, _ = _eps_list(eps_grid)
    grid = torch.tensor(values, dtype=torch.float64)
    return (r[None, :] > grid[:, None]).to(torch.float64).mean(dim=1)


def certified_accuracy(
    model: nn.Module,
    data: DataLike,
    eps: float | Sequence[float] | Tensor,
    *,
    lipschitz: float | Tensor | None = None,
    norm: str = "l2",
    last_layer: bool = False,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    progress: bool = False,
) -> float | Tensor:
    r"""Fraction of the data certified at radius ``eps``: correctly classified with a radius
    strictly larger than ``eps`` (:func:`certified_radii`, then :func:`accuracy_curve`).

    With ``lipschitz=None`` the constant is :func:`stabilitylab.lipschitz.upper_bound` of the
    model (see :func:`certified_radii`). At ``eps=0`` this is the clean accuracy.

    Args:
        model, data, lipschitz, norm, last_layer, batch_size, device, progress: see
            :func:`certified_radii`.
        eps: a radius :math:`\ge 0` (a float or a 0-dim tensor), or a sequence / 1-D tensor
            of radii.

    Returns:
        A float for a scalar ``eps``; a ``(len(eps),)`` float64 tensor for a sequence.

    Raises:
        ValueError: ``eps < 0`` or NaN; the errors of :func:`certified_radii`.

    References:
        [tsuzuku2018lipschitz].
    """
    values, scalar = _eps_list(eps)
    radii = certified_radii(
        model, data, lipschitz=lipschitz, norm=norm, last_layer=last_layer, batch_size=batch_size,
        device=device, progress=progress,
    )
    curve = accuracy_curve(radii, values)
    return curve.item() if scalar else curve


# ----------------------------------------------------------------------------- soundness


@dataclass
class SoundnessReport:
    """Outcome of :func:`check_soundness`.

    Attributes:
        n_points: examples checked.
        n_certified: examples with a positive radius (correctly classified).
        n_attacked: certified examples with a finite radius, each attacked inside its radius.
        n_flipped: attacked examples whose prediction an attack changed at a distance below the
            radius: each one disproves the certificate.
        violations: indices (into ``x``) of the flipped examples.
        max_margin_ratio: the largest
            :math:`\\max_j (m_j(x) - m_j(x')) / (L_{yj} \\|x' - x\\|_2)` over the attack points
            :math:`x'`: the certificate's premise says it is at most 1, so a value above 1
            (up to rounding) shows the Lipschitz constant is wrong even without a flip. NaN
            when nothing was attacked.
        radii: ``(N,)`` the certified radii (as :func:`certified_radius`).
    """

    n_points: int
    n_certified: int
    n_attacked: int
    n_flipped: int
    violations: list[int] = field(default_factory=list)
    max_margin_ratio: float = math.nan
    radii: Tensor | None = None

    @property
    def sound(self) -> bool:
        """True when no attack broke a certificate (``n_flipped == 0``)."""
        return self.n_flipped == 0

    def __str__(self) -> str:
        verdict = "sound" if self.sound else f"UNSOUND ({self.n_flipped} flipped: {self.violations[:10]})"
        return (
            f"{self.n_certified}/{self.n_points} certified, {self.n_attacked} attacked inside their radius, "
            f"max margin ratio {self.max_margin_ratio:.4g}: {verdict}"
        )


class _Scaled(nn.Module):
    """u -> model(x0 + r * u): a per-example radius r becomes the unit ball in u."""

    def __init__(self, model, x0: Tensor, r: Tensor) -> None:
        super().__init__()
        self.model = model
        self.x0 = x0
        self.r = r.reshape((-1,) + (1,) * (x0.ndim - 1))

    def forward(self, u: Tensor) -> Tensor:
        return self.model(self.x0 + self.r * u)


def _margin_loss(logits: Tensor, y: Tensor) -> Tensor:
    """sum over the batch of max_{j != y} z_j - z_y (ascent drives the margin below 0)."""
    true = logits.gather(1, y[:, None]).squeeze(1)
    own = torch.nn.functional.one_hot(y, logits.shape[1]).bool()
    return (logits.masked_fill(own, -math.inf).amax(dim=1) - true).sum()


def _scaled_bounds(bounds, x0: Tensor, idx: Tensor, r: Tensor):
    if bounds is None:
        return None
    if not isinstance(bounds, (tuple, list)) or len(bounds) != 2:
        raise ValueError(f"bounds must be None or a pair (lo, hi), got bounds={bounds!r}")
    out = []
    for b in bounds:
        t = torch.as_tensor(b, dtype=x0.dtype, device=x0.device)
        if t.ndim == x0.ndim and t.shape[0] not in (1,):
            t = t[idx.to(t.device)]
        out.append((t - x0) / r.reshape((-1,) + (1,) * (x0.ndim - 1)))
    return tuple(out)


def check_soundness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    lipschitz: float | Tensor | None = None,
    norm: str = "l2",
    last_layer: bool = False,
    n_steps: int = 50,
    restarts: int = 2,
    bounds=None,
    rtol: float = 1e-3,
    generator: torch.Generator | None = None,
    progress: bool = False,
) -> SoundnessReport:
    r"""Attack every certified point inside its certified radius; a sound certificate survives.

    1. The radii :math:`r_i` of :func:`certified_radius` (constant as in
       :func:`certified_radii`: ``lipschitz`` or :func:`stabilitylab.lipschitz.upper_bound`).
    2. Every certified point with a finite radius is attacked with PGD
       (:func:`stabilitylab.attacks.pgd`, ``norm``, ``n_steps`` steps) on the margin loss
       :math:`\max_{j\ne y} z_j - z_y`, inside the ball of radius :math:`r_i (1 - \text{rtol})`:
       once from :math:`x_i` and ``restarts`` times from a uniform random point of the ball.
       The per-example radius is obtained by attacking
       :math:`u \mapsto f(x + r \odot u)` on the unit ball (``bounds`` are mapped likewise).
       ``rtol`` keeps a *tight* certificate (e.g. a linear classifier) from being reported
       broken by rounding exactly on the decision boundary.
    3. A flip is an attack point :math:`x'` with :math:`\|x' - x\| < r` (checked in float64)
       whose prediction differs from :math:`y`: it contradicts the certificate, so a sound
       certificate gives ``n_flipped == 0`` whatever the attack. The report also gives the
       largest margin-decrease ratio :math:`(m_j(x) - m_j(x'))/(L_{yj}\|x'-x\|_2)` met, at
       most 1 for a correct Lipschitz constant (:math:`L_{yj} = \sqrt2 L` for a global
       constant).

    An attack that fails proves nothing: the check can only refute a certificate (a too-small
    Lipschitz constant, a wrong radius formula), never prove it. The model runs in evaluation
    mode (modes restored afterwards).

    Args:
        model: maps ``(N, *shape)`` to logits ``(N, C)``.
        x: ``(N, *shape)`` floating inputs; ``y``: ``(N,)`` integer labels.
        lipschitz, last_layer: see :func:`certified_radii`.
        norm: ``"l2"`` or ``"linf"`` (for ``"linf"`` the radii are :math:`r_2/\sqrt n`).
        n_steps: PGD steps per run (>= 1).
        restarts: random restarts after the run from ``x`` (>= 0).
        bounds: ``None`` or ``(lo, hi)`` restricting the attack to an input box (``x`` must lie
            in it).
        rtol: relative shrinkage of the attack radius, in ``[0, 1)``.
        generator: seeds PGD's random starts.
        progress: show a progress bar over the runs.

    Returns:
        A :class:`SoundnessReport` (``.sound`` is True when nothing flipped).

    Raises:
        TypeError: ``x``/``y`` of the wrong type.
        ValueError: shape mismatch, unknown ``norm``, a non-positive or non-finite
            ``lipschitz``, ``n_steps < 1``, ``restarts < 0``, ``rtol`` outside ``[0, 1)``,
            and the errors of :func:`stabilitylab.attacks.pgd`.

    References:
        [tsuzuku2018lipschitz], [madry2018towards].
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    norm = _check_norm(norm)
    if not isinstance(x, Tensor) or not x.is_floating_point():
        raise TypeError(f"x must be a floating-point torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1:
        raise ValueError(f"x must have a batch dimension, got shape {tuple(x.shape)}")
    if isinstance(n_steps, bool) or not isinstance(n_steps, int) or n_steps < 1:
        raise ValueError(f"n_steps must be an int >= 1, got n_steps={n_steps!r}")
    if isinstance(restarts, bool) or not isinstance(restarts, int) or restarts < 0:
        raise ValueError(f"restarts must be an int >= 0, got restarts={restarts!r}")
    if isinstance(rtol, bool) or not isinstance(rtol, numbers.Real) or not 0 <= rtol < 1:
        raise ValueError(f"rtol must be a number in [0, 1), got rtol={rtol!r}")
    if lipschitz is not None and not (isinstance(lipschitz, Tensor) and lipschitz.ndim == 2):
        _check_scalar_lipschitz(lipschitz)
    x = x.detach()
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        return _check_soundness(
            model, x, y, lipschitz, norm, last_layer, n_steps, restarts, bounds, float(rtol), generator, progress
        )
    finally:
        for module, mode in modes:
            module.training = mode


def _check_soundness(model, x, y, lipschitz, norm, last_layer, n_steps, restarts, bounds, rtol, generator, progress):
    with torch.no_grad():
        logits = model(x)
    logits, y = _check_logits_labels(logits, y)
    C = logits.shape[1]
    L, weight = _model_constants(model, tuple(x.shape[1:]), lipschitz, last_layer)
    radii = certified_radius(logits, y, lipschitz=L, norm=norm, input_dim=max(1, x[0].numel()), last_layer_weight=weight)
    scalar, P = _constants(L, weight, C)
    if P is None:
        P = torch.full((C, C), math.sqrt(2.0) * scalar, dtype=torch.float64)
    P = P.to(logits.device)

    certified = radii > 0
    idx = (certified & torch.isfinite(radii)).nonzero().flatten()
    report = SoundnessReport(
        n_points=x.shape[0], n_certified=int(certified.sum()), n_attacked=len(idx), n_flipped=0, radii=radii.detach().cpu()
    )
    if len(idx) == 0:
        return report

    x0, y0 = x[idx], y[idx].to(x.device)
    r64 = radii[idx].to(torch.float64)
    r_attack = _round_down(r64 * (1.0 - rtol), x.dtype).to(x.device)
    scaled = _Scaled(model, x0, r_attack)
    bounds_u = _scaled_bounds(bounds, x0, idx, r_attack)
    z0 = logits[idx].detach().to(torch.float64)
    m0 = z0.gather(1, y0[:, None].to(z0.device)) - z0
    own = torch.nn.functional.one_hot(y0.to(z0.device), C).bool()
    L_rows = P[y0.to(P.device)].to(z0.device)

    flipped = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
    best_ratio = -math.inf
    runs = [False] + [True] * restarts
    for random_start in tqdm(runs, desc="attacking", disable=not progress, leave=False):
        u = attacks.pgd(
            scaled, torch.zeros_like(x0), y0, 1.0, norm=norm, n_steps=n_steps, bounds=bounds_u,
            random_start=random_start, generator=generator, loss_fn=_margin_loss,
        )
        with torch.no_grad():
            x_adv = x0 + scaled.r * u
            z = model(x_adv).detach()
        delta = (x_adv - x0).to(torch.float64).reshape(len(idx), -1)
        d2 = torch.linalg.vector_norm(delta, dim=1)
        dist = delta.abs().amax(dim=1) if norm == "linf" else d2
        flip = (z.argmax(dim=1) != y0) & (dist.to(x.device) < r64.to(x.device))
        flipped |= flip
        z64 = z.to(torch.float64).to(z0.device)
        drop = m0 - (z64.gather(1, y0[:, None].to(z0.device)) - z64)  # m_j(x) - m_j(x')
        ratio = (drop / (L_rows * d2.to(z0.device)[:, None])).masked_fill(own, -math.inf)
        ratio = ratio.masked_fill(ratio.isnan(), -math.inf)
        moved = d2.to(z0.device) > 0
        if bool(moved.any()):
            best_ratio = max(best_ratio, ratio[moved].max().item())
    report.n_flipped = int(flipped.sum())
    report.violations = idx[flipped.to(idx.device)].tolist()
    report.max_margin_ratio = best_ratio if best_ratio > -math.inf else math.nan
    return report
