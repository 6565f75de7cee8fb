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
* :func:`certified_radii` / :func:`certified_accuracy` / :func:`certified_accuracy_curve`: the
  same for a model over a data set, with the constant from
  :func:`stabilitylab.lipschitz.upper_bound` by default (or, with ``last_layer=True``, the
  pairwise constants of :func:`stabilitylab.lipschitz.pairwise_logit_bound`), and the margins
  computed in float64;
* :func:`accuracy_curve`: certified accuracy as a function of the radius (the chapter's plots);
* :func:`check_soundness`: attacks every certified point with PGD inside its radius
  (:func:`stabilitylab.attacks.pgd`); a correct certificate is never broken.

A point counts as certified at radius :math:`\varepsilon` when its radius is *strictly* larger
than :math:`\varepsilon`: then every point of the closed ball keeps a strictly positive margin,
and at :math:`\varepsilon = 0` the certified accuracy is the clean accuracy.
"""

from __future__ import annotations

import inspect
import math
import numbers
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from tqdm import tqdm

from stabilitylab import attacks, lipschitz as lip
from stabilitylab._checks import (
    check_batch,
    check_choice,
    check_generator,
    check_int,
    check_number,
    check_progress,
    check_radii,
    check_shape,
)
from stabilitylab._numerics import round_down as _round_down
from stabilitylab._deprecation import renamed_kwargs
from stabilitylab._devices import model_device, model_dtype, resolve_device
from stabilitylab._modes import eval_mode
from stabilitylab.train import DataLike, batches

__all__ = [
    "certified_radius",
    "certified_radii",
    "certified_accuracy",
    "certified_accuracy_curve",
    "accuracy_curve",
    "check_soundness",
    "SoundnessReport",
]

_NORMS = ("l2", "linf")


# ----------------------------------------------------------------------------- argument checks


def _check_norm(norm) -> str:
    return check_choice(norm, "norm", _NORMS)


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


def _check_input_shape(input_shape) -> int:
    """n, the number of input features, from a count or a shape (n is its product)."""
    return math.prod(check_shape(input_shape, "input_shape"))


def _eps_list(eps, name: str = "eps") -> tuple[list[float], bool]:
    """(values, scalar?) from a number, a 0-dim tensor, a 1-D tensor or array, or a sequence."""
    return check_radii(eps, name)


# ----------------------------------------------------------------------------- radii from logits


def _pairwise_from_rows(lipschitz: float, weight: Tensor, C: int) -> Tensor:
    if not isinstance(weight, Tensor) or weight.ndim != 2 or weight.shape[0] != C:
        shape = tuple(weight.shape) if isinstance(weight, Tensor) else type(weight).__name__
        raise ValueError(f"last_layer_weight must have shape (C, d) with C={C} rows, got {shape}")
    if not weight.is_floating_point():
        raise TypeError(f"last_layer_weight must be a floating tensor, got {weight.dtype}")
    W = weight.detach()
    W = (W.cpu() if W.device.type == "mps" else W).to(dtype=torch.float64)
    if not bool(torch.isfinite(W).all()):
        raise ValueError("last_layer_weight must be finite, got NaN or infinite entries")
    return lipschitz * lip.pairwise_row_distances(W)


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


@renamed_kwargs(input_dim="input_shape")
def certified_radius(
    logits: Tensor,
    labels: Tensor,
    *,
    lipschitz: float | Tensor = 1.0,
    norm: str = "l2",
    input_shape: int | Sequence[int] | None = None,
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
    :math:`r_\infty = r_2 / \sqrt{n}` with :math:`n` the number of input features (the
    product of ``input_shape``), since
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
        input_shape: the shape of one input without the batch dimension, or the number
            :math:`n` of input features (an int); required for ``"linf"``. ``input_dim`` is its
            deprecated name.
        last_layer_weight: ``(C, d)`` weight of the last linear layer (optional).

    Returns:
        ``(N,)`` radii in the logits' dtype and on their device.

    Raises:
        TypeError: non-tensor logits/labels, non-floating logits, non-integer labels.
        ValueError: shape mismatch, labels out of range, non-finite logits, a ``lipschitz``
            that is not finite and > 0 (or a pairwise matrix of the wrong shape or with
            negative / non-finite entries), an unknown ``norm``, a missing or malformed
            ``input_shape`` for ``"linf"``, a ``last_layer_weight`` without ``C`` rows.

    References:
        [tsuzuku2018lipschitz].
    """
    norm = _check_norm(norm)
    logits, labels = _check_logits_labels(logits, labels)
    scalar, P = _constants(lipschitz, last_layer_weight, logits.shape[1])
    n = None
    if norm == "linf":
        if input_shape is None:
            raise ValueError(
                "input_shape is required for norm='linf' (the radius is r_2 / sqrt(n), n the number of input features)"
            )
        n = _check_input_shape(input_shape)
    elif input_shape is not None:
        _check_input_shape(input_shape)
    radius = _l2_radius(logits, labels, scalar, P)
    if n is not None:
        radius = radius / math.sqrt(n)
    return _round_down(radius, logits.dtype)


# ----------------------------------------------------------------------------- models


def _model_constants(model: nn.Module, input_shape: tuple[int, ...], lipschitz, last_layer: bool):
    """(lipschitz, last_layer_weight) arguments of certified_radius for a model."""
    if not isinstance(last_layer, bool):
        raise TypeError(f"last_layer must be a bool, got {last_layer!r}")
    if not last_layer:
        return (lip.upper_bound(model, input_shape) if lipschitz is None else lipschitz), None
    try:
        if lipschitz is None:
            return lip.pairwise_logit_bound(model, input_shape), None
        return lipschitz, lip.linear_head(model).weight
    except ValueError as error:
        raise ValueError(f"last_layer=True needs a model ending with a linear layer: {error}") from error


class _Logits:
    """The logits a certificate reads: the model evaluated on float64 copies of its parameters and
    buffers and on float64 inputs (``torch.func.functional_call``), so that the margins carry
    float64 rounding only; the model's own forward, in its dtype, where float64 is not available
    (MPS), not wanted, or does not run (then the certificate's rounding allowance covers it)."""

    def __init__(self, model: nn.Module, device: torch.device, float64: bool) -> None:
        self.model = model
        self.state = None
        if float64 and device.type != "mps" and model_dtype(model) != torch.float64:
            self.state = {
                name: (t.detach().to(device=device, dtype=torch.float64) if t.is_floating_point() else t)
                for name, t in (*model.named_parameters(), *model.named_buffers())
            }

    def __call__(self, x: Tensor) -> Tensor:
        with torch.no_grad():
            if self.state is not None and x.is_floating_point():
                try:
                    z = torch.func.functional_call(self.model, self.state, (x.to(torch.float64),))
                except (RuntimeError, TypeError, ValueError, NotImplementedError):
                    z = None
                if isinstance(z, Tensor) and z.dtype == torch.float64:
                    return z
                self.state = None  # the model does not run in float64: its own dtype from now on
            z = self.model(x)
        if not isinstance(z, Tensor):
            raise TypeError(f"model must return a tensor of logits, got {type(z).__name__}")
        return z


def _output_dtype(model: nn.Module, logits: Tensor) -> torch.dtype:
    """The dtype radii are returned in: the model's (float32 radii for a float32 model, even when
    the margins were computed in float64)."""
    dtype = model_dtype(model, logits.dtype)
    return dtype if dtype.is_floating_point else logits.dtype


def _check_float64(float64) -> bool:
    if not isinstance(float64, bool):
        raise TypeError(f"float64 must be a bool, got {float64!r}")
    return float64


def certified_radii(
    model: nn.Module,
    data: DataLike,
    *,
    lipschitz: float | Tensor | None = None,
    norm: str = "l2",
    last_layer: bool = False,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    float64: bool = True,
    progress: bool | None = None,
) -> Tensor:
    r"""Certified radius of every example of a data set (see :func:`certified_radius`).

    The model runs in evaluation mode (every module's mode is restored afterwards), without
    gradients, batch by batch, on its own device (the batches are moved there). When
    ``lipschitz`` is None the constant is the certified bound
    :func:`stabilitylab.lipschitz.upper_bound` ``(model, input_shape)`` (``input_shape``
    read from the first batch), so the model must be one it can bound (a Sequential of known or
    declared layers, or any model ``torch.fx`` can trace: residual, concatenating, up-sampling). With ``last_layer=True``, the last layer's rows give the pairwise radii:
    the model must end with a dense head, a plain ``nn.Linear`` or any layer of
    :data:`stabilitylab.models.LIPSCHITZ_HEADS` (Spectral, Björck, AOL, Cayley, BRO, LLN; see
    :func:`stabilitylab.lipschitz.linear_head`); ``lipschitz=None`` then takes the constants of
    :func:`stabilitylab.lipschitz.pairwise_logit_bound` (never smaller radii than the global
    bound), and a given ``lipschitz`` is the constant of the layers below the head. For
    ``"linf"``, ``n`` is the number of features of one input.

    Rounding: with ``float64`` (default) the logits are computed from float64 copies of the
    parameters and float64 inputs, so the margins, and the predictions the radii certify, are
    those of the network's exact function up to float64 rounding (the allowance of
    :func:`certified_radius` is then :math:`1.4 \cdot 10^{-14}` of the largest logit). Where
    that is not possible (an MPS device, a model that fails in float64) or with
    ``float64=False``, the model's own logits are used with the float32 allowance of
    :func:`certified_radius`. The radii are returned in the model's dtype, rounded down.

    Args:
        model: maps ``(B, *input_shape)`` to logits ``(B, C)``.
        data: a Dataset of ``(input, label)``, a DataLoader, or an ``(inputs, labels)`` pair
            (as :func:`stabilitylab.train.fit`).
        lipschitz: see :func:`certified_radius`; None: computed as above.
        norm: ``"l2"`` or ``"linf"``.
        last_layer: use the last layer's rows (pairwise radii).
        batch_size: batch size for tensor pairs and Datasets.
        device: where the inputs are sent; default the model's device (the model is not moved).
        float64: compute the logits in float64 (see above).
        progress: show a progress bar over batches; None: unless ``TQDM_DISABLE`` is set.

    Returns:
        ``(N,)`` radii on the CPU in the model's dtype (0 for misclassified examples).

    Raises:
        TypeError: ``model`` not an ``nn.Module``, ``data`` of another kind, integer inputs.
        ValueError: the errors of :func:`certified_radius`; an empty data set or batch; inputs
            with NaN/Inf; a model that :func:`~stabilitylab.lipschitz.upper_bound` cannot walk
            when ``lipschitz`` is None (TypeError for unknown layers); ``last_layer=True`` on a
            model without a dense head.

    References:
        [tsuzuku2018lipschitz].
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    norm = _check_norm(norm)
    batch_size = check_int(batch_size, "batch_size")
    if lipschitz is not None and not (isinstance(lipschitz, Tensor) and lipschitz.ndim == 2):
        _check_scalar_lipschitz(lipschitz)
    if not isinstance(last_layer, bool):
        raise TypeError(f"last_layer must be a bool, got {last_layer!r}")
    float64 = _check_float64(float64)
    show = check_progress(progress)
    device = resolve_device(device) or model_device(model)
    logits_of = _Logits(model, device, float64)
    radii: list[Tensor] = []
    constants = None
    with eval_mode(model), torch.no_grad():
        for x, y in tqdm(batches(data, batch_size=batch_size), desc="certifying", disable=not show, leave=False):
            x = check_batch(x, "data inputs").to(device)
            if constants is None:
                constants = _model_constants(model, tuple(x.shape[1:]), lipschitz, last_layer)
            L, weight = constants
            logits = logits_of(x)
            radius = certified_radius(
                logits, y.to(logits.device) if isinstance(y, Tensor) else y, lipschitz=L, norm=norm,
                input_shape=tuple(x.shape[1:]), last_layer_weight=weight,
            )  # fmt: skip
            radii.append(_round_down(radius.to(torch.float64), _output_dtype(model, logits)).cpu())
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
    values, _ = _eps_list(eps_grid, "eps_grid")
    grid = torch.tensor(values, dtype=torch.float64)
    return (r[None, :] > grid[:, None]).to(torch.float64).mean(dim=1)


def certified_accuracy(
    model: nn.Module,
    data: DataLike,
    eps: float | Tensor,
    *,
    lipschitz: float | Tensor | None = None,
    norm: str = "l2",
    last_layer: bool = False,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    float64: bool = True,
    progress: bool | None = None,
) -> float:
    r"""Fraction of the data certified at radius ``eps``: correctly classified with a radius
    strictly larger than ``eps`` (:func:`certified_radii`, then :func:`accuracy_curve`).

    With ``lipschitz=None`` the constant is :func:`stabilitylab.lipschitz.upper_bound` of the
    model (see :func:`certified_radii`). At ``eps=0`` this is the clean accuracy. For several
    radii, use :func:`certified_accuracy_curve` (one pass over the data).

    Args:
        model, data, lipschitz, norm, last_layer, batch_size, device, float64, progress: see
            :func:`certified_radii`.
        eps: a radius :math:`\ge 0` (a float or a 0-dim tensor). A sequence still works for
            one release, with a ``DeprecationWarning``, and returns the tensor of
            :func:`certified_accuracy_curve`.

    Returns:
        A float in ``[0, 1]``.

    Raises:
        ValueError: ``eps < 0`` or NaN; the errors of :func:`certified_radii`.

    References:
        [tsuzuku2018lipschitz].
    """
    values, scalar = _eps_list(eps)
    if not scalar:
        warnings.warn(
            "certified_accuracy() with a sequence of radii is deprecated: it returns a tensor; use "
            "certify.certified_accuracy_curve(model, data, eps_values) instead",
            DeprecationWarning,
            stacklevel=2,
        )
    radii = certified_radii(
        model, data, lipschitz=lipschitz, norm=norm, last_layer=last_layer, batch_size=batch_size,
        device=device, float64=float64, progress=progress,
    )  # fmt: skip
    curve = accuracy_curve(radii, values)
    return curve.item() if scalar else curve


def certified_accuracy_curve(
    model: nn.Module,
    data: DataLike,
    eps_values: Sequence[float] | Tensor,
    *,
    lipschitz: float | Tensor | None = None,
    norm: str = "l2",
    last_layer: bool = False,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
    float64: bool = True,
    progress: bool | None = None,
) -> Tensor:
    r"""Certified accuracy at every radius of ``eps_values``:
    :math:`\frac1N \#\{i : r_i > \varepsilon\}` (:func:`certified_radii` once, then
    :func:`accuracy_curve`). Non-increasing in :math:`\varepsilon`; the clean accuracy at 0.

    Args:
        model, data, lipschitz, norm, last_layer, batch_size, device, float64, progress: see
            :func:`certified_radii`.
        eps_values: a sequence or 1-D tensor (or array) of radii :math:`\varepsilon \ge 0`.

    Returns:
        ``(len(eps_values),)`` float64 tensor on the CPU.

    Raises:
        TypeError: ``eps_values`` not a sequence of numbers.
        ValueError: a negative or NaN radius, a 0-dim or 2-D tensor; the errors of
            :func:`certified_radii`.

    References:
        [tsuzuku2018lipschitz].
    """
    if isinstance(eps_values, numbers.Real) or (isinstance(eps_values, Tensor) and eps_values.ndim == 0):
        raise TypeError(
            f"eps_values must be a sequence or 1-D tensor of radii, got the number {eps_values!r}; "
            "use certified_accuracy for one radius"
        )
    try:
        values, _ = _eps_list(eps_values, "eps_values")
    except (TypeError, ValueError) as error:
        raise type(error)(f"eps_values: {error}") from None
    radii = certified_radii(
        model, data, lipschitz=lipschitz, norm=norm, last_layer=last_layer, batch_size=batch_size,
        device=device, float64=float64, progress=progress,
    )  # fmt: skip
    return accuracy_curve(radii, values)


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


def _pgd_iterations_keyword() -> str:
    """The name of attacks.pgd's iteration-count argument (``n_iter``, or ``n_steps`` before the
    rename)."""
    return "n_iter" if "n_iter" in inspect.signature(attacks.pgd).parameters else "n_steps"


@renamed_kwargs(n_steps="n_iter")
def check_soundness(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    lipschitz: float | Tensor | None = None,
    norm: str = "l2",
    last_layer: bool = False,
    n_iter: int = 50,
    restarts: int = 2,
    bounds=None,
    rtol: float = 1e-3,
    generator: torch.Generator | None = None,
    float64: bool = True,
    progress: bool | None = None,
) -> SoundnessReport:
    r"""Attack every certified point inside its certified radius; a sound certificate survives.

    1. The radii :math:`r_i` of :func:`certified_radii` (constant as there: ``lipschitz``,
       :func:`stabilitylab.lipschitz.upper_bound`, or with ``last_layer`` the pairwise
       constants; logits in float64 with ``float64``).
    2. Every certified point with a finite radius is attacked with PGD
       (:func:`stabilitylab.attacks.pgd`, ``norm``, ``n_iter`` steps) on the margin loss
       :math:`\max_{j\ne y} z_j - z_y`, inside the ball of radius :math:`r_i (1 - \text{rtol})`:
       once from :math:`x_i` and ``restarts`` times from a uniform random point of the ball.
       The per-example radius is obtained by attacking
       :math:`u \mapsto f(x + r \odot u)` on the unit ball (``bounds`` are mapped likewise).
       ``rtol`` keeps a *tight* certificate (e.g. a linear classifier) from being reported
       broken by rounding exactly on the decision boundary.
    3. A flip is an attack point :math:`x'` with :math:`\|x' - x\| < r` (checked in float64)
       whose prediction, evaluated as the certificate's (float64 logits with ``float64``),
       differs from :math:`y`: it contradicts the certificate, so a sound certificate gives
       ``n_flipped == 0`` whatever the attack. The report also gives the largest
       margin-decrease ratio :math:`(m_j(x) - m_j(x'))/(L_{yj}\|x'-x\|_2)` met, at most 1 for a
       correct Lipschitz constant (:math:`L_{yj} = \sqrt2 L` for a global constant).

    An attack that fails proves nothing: the check can only refute a certificate (a too-small
    Lipschitz constant, a wrong radius formula), never prove it. The model runs in evaluation
    mode (every module's mode restored afterwards), on its own device (``x`` and ``y`` are moved
    there).

    Args:
        model: maps ``(N, *shape)`` to logits ``(N, C)``.
        x: ``(N, *shape)`` finite floating inputs; ``y``: ``(N,)`` integer labels.
        lipschitz, last_layer, float64: see :func:`certified_radii`.
        norm: ``"l2"`` or ``"linf"`` (for ``"linf"`` the radii are :math:`r_2/\sqrt n`).
        n_iter: PGD steps per run (>= 1); ``n_steps`` is its deprecated name.
        restarts: random restarts after the run from ``x`` (>= 0).
        bounds: ``None`` or ``(lo, hi)`` restricting the attack to an input box (``x`` must lie
            in it).
        rtol: relative shrinkage of the attack radius, in ``[0, 1)``.
        generator: seeds PGD's random starts.
        progress: show a progress bar over the runs; None: unless ``TQDM_DISABLE`` is set.

    Returns:
        A :class:`SoundnessReport` (``.sound`` is True when nothing flipped).

    Raises:
        TypeError: ``x``/``y`` of the wrong type.
        ValueError: shape mismatch, unknown ``norm``, a non-positive or non-finite
            ``lipschitz``, ``n_iter < 1``, ``restarts < 0``, ``rtol`` outside ``[0, 1)``,
            and the errors of :func:`stabilitylab.attacks.pgd`.

    References:
        [tsuzuku2018lipschitz], [madry2018towards].
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    norm = _check_norm(norm)
    x = check_batch(x, "x")
    if not isinstance(y, Tensor):
        raise TypeError(f"y (the labels) must be a torch.Tensor, got {type(y).__name__}")
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y (the labels) must have shape (N,) = ({x.shape[0]},) to match x, got shape {tuple(y.shape)}")
    n_iter = check_int(n_iter, "n_iter", 1)
    restarts = check_int(restarts, "restarts", 0)
    rtol = check_number(rtol, "rtol", minimum=0.0)
    if rtol >= 1:
        raise ValueError(f"rtol must be a number in [0, 1), got rtol={rtol!r}")
    check_generator(generator)
    if not isinstance(last_layer, bool):
        raise TypeError(f"last_layer must be a bool, got {last_layer!r}")
    float64 = _check_float64(float64)
    show = check_progress(progress)
    if lipschitz is not None and not (isinstance(lipschitz, Tensor) and lipschitz.ndim == 2):
        _check_scalar_lipschitz(lipschitz)
    device = model_device(model, x.device)
    x, y = x.detach().to(device), y.to(device)
    with eval_mode(model):
        return _check_soundness(
            model, x, y, lipschitz, norm, last_layer, n_iter, restarts, bounds, rtol, generator, float64, show
        )


def _check_soundness(model, x, y, lipschitz, norm, last_layer, n_iter, restarts, bounds, rtol, generator, float64, progress):
    logits_of = _Logits(model, x.device, float64)
    logits = logits_of(x)
    try:
        logits, y = _check_logits_labels(logits, y)
    except (TypeError, ValueError) as error:
        raise type(error)(f"y (labels) or the model's logits: {error}") from None
    C = logits.shape[1]
    L, weight = _model_constants(model, tuple(x.shape[1:]), lipschitz, last_layer)
    radii = certified_radius(logits, y, lipschitz=L, norm=norm, input_shape=tuple(x.shape[1:]), last_layer_weight=weight)
    radii = _round_down(radii.to(torch.float64), _output_dtype(model, logits))
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

    x0, y0 = x[idx.to(x.device)], y[idx.to(y.device)].to(x.device)
    r64 = radii[idx].to(torch.float64)
    r_attack = _round_down(r64 * (1.0 - rtol), x.dtype).to(x.device)
    scaled = _Scaled(model, x0, r_attack)
    bounds_u = _scaled_bounds(bounds, x0, idx, r_attack)
    z0 = logits[idx.to(logits.device)].detach().to(torch.float64)
    m0 = z0.gather(1, y0[:, None].to(z0.device)) - z0
    own = torch.nn.functional.one_hot(y0.to(z0.device), C).bool()
    L_rows = P[y0.to(P.device)].to(z0.device)

    flipped = torch.zeros(len(idx), dtype=torch.bool, device=x.device)
    best_ratio = -math.inf
    runs = [False] + [True] * restarts
    steps = {_pgd_iterations_keyword(): n_iter}
    for random_start in tqdm(runs, desc="attacking", disable=not progress, leave=False):
        u = attacks.pgd(
            scaled, torch.zeros_like(x0), y0, 1.0, norm=norm, bounds=bounds_u,
            random_start=random_start, generator=generator, loss_fn=_margin_loss, **steps,
        )  # fmt: skip
        with torch.no_grad():
            x_adv = x0 + scaled.r * u
        z = logits_of(x_adv).detach()
        delta = (x_adv - x0).to(torch.float64).reshape(len(idx), -1)
        d2 = torch.linalg.vector_norm(delta, dim=1)
        dist = delta.abs().amax(dim=1) if norm == "linf" else d2
        flip = (z.argmax(dim=1).to(x.device) != y0) & (dist.to(x.device) < r64.to(x.device))
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
