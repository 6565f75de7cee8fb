r"""Randomized smoothing: certified L2 robustness for any classifier, by adding Gaussian noise.

Given a base classifier :math:`f : \mathbb{R}^d \to \{1, \dots, C\}`, the smoothed classifier

.. math::

    g(x) = \arg\max_c \; \mathbb{P}_{\delta \sim \mathcal{N}(0, \sigma^2 I)}\big(f(x + \delta) = c\big)

is robust in L2: if the top class has probability at least :math:`\underline{p_A} > 1/2`, then
:math:`g` is constant on the ball of radius :math:`\sigma\,\Phi^{-1}(\underline{p_A})` around
:math:`x` (Cohen et al. 2019 [cohen2019certified]). The probabilities are estimated by Monte
Carlo, so every answer holds with probability at least :math:`1 - \alpha` over the sampling.

This module holds

* :class:`Smooth`: ``predict`` (with abstention) and ``certify`` as in Cohen et al., batched over
  noise samples on the base model's device, plus ``certify_lvm``, the Lipschitz-variance-margin
  certificate of Delattre et al. 2024 [delattre2024lipschitz] that averages a simplex-valued map
  of the logits (softmax or sparsemax with a temperature) instead of counting votes and bounds the
  averages with empirical Bernstein inequalities [maurer2009empirical];
* Lipschitz bases (Delattre et al. 2025 [delattre2025bridging], Delattre's thesis
  [delattre2025stability]): the tight constant of a smoothed bounded Lipschitz function,
  :math:`L\operatorname{erf}(r / (2\sqrt{2} L\sigma))` (:func:`smoothed_lipschitz_constant`);
  Lipschitz-aware certificates, where :math:`\sigma\Phi^{-1}` becomes the quantile
  :math:`Q_{\sigma, L}` of :math:`\sigma W + \mathrm{Unif}[-\frac{1}{2L}, \frac{1}{2L}]`
  (:func:`lipschitz_probit`, :func:`lipschitz_aware_radius`, and ``Smooth.certify(...,
  soft_map=..., base_lipschitz=L)``: the function that must be :math:`L`-Lipschitz is each
  coordinate of the soft output :func:`simplex_map` of the logits, never the hard vote; votes are
  drawn from that soft output so that Clopper-Pearson stays exact;
  :func:`simplex_map_lipschitz` turns a network's constant into it); the class-partition bounds
  (:func:`partition_bounds`, ``multiclass="partition"``); the Monte Carlo variance of smoothed
  outputs next to its Gaussian Poincare bound :math:`\sigma^2 L^2` (:func:`smoothed_variance`);
* the statistics: :func:`clopper_pearson_lower`, :func:`empirical_bernstein_radius`,
  :func:`max_certifiable_radius`;
* the maps: :func:`sparsemax`, :func:`simplex_map`;
* data-set level results (:func:`certify_dataset`, :class:`SmoothingResult` with certified
  accuracy curves and the average certified radius);
* Gaussian data augmentation for training base classifiers (:class:`GaussianNoise`).

Devices and modes: the noise is drawn and the base model evaluated on the base model's device
(the input's for a base without parameters); inputs are moved there, the base is never moved.
Counts, frequencies and certificates come back on the CPU (Python numbers for a single input).
While sampling, the base is in eval mode; afterwards every submodule has its own mode back, also
when an error is raised.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from stabilitylab._checks import check_generator as _check_generator
from stabilitylab._checks import check_int as _check_int
from stabilitylab._checks import check_positive as _check_positive
from stabilitylab._checks import check_progress as _check_progress
from stabilitylab._checks import check_shape as _check_shape
from stabilitylab._checks import check_tensor as _check_tensor
from stabilitylab._modes import eval_mode
from stabilitylab._checks import check_radii
from stabilitylab.certify import accuracy_curve
from stabilitylab._checks import check_data as _check_data
from stabilitylab.train import batches



def _stats():
    """``scipy.stats``, imported on first use (it takes longer to import than the rest of the package)."""
    from scipy import stats

    return stats

__all__ = [
    "ABSTAIN",
    "Smooth",
    "SmoothingResult",
    "GaussianNoise",
    "SmoothedFrequencies",
    "certify_dataset",
    "clopper_pearson_lower",
    "empirical_bernstein_radius",
    "max_certifiable_radius",
    "simplex_map",
    "sparsemax",
    "PartitionBounds",
    "SmoothedVariance",
    "lipschitz_aware_radius",
    "lipschitz_probit",
    "partition_bounds",
    "simplex_map_lipschitz",
    "smoothed_lipschitz_constant",
    "smoothed_variance",
]

ABSTAIN = -1
"""The class :meth:`Smooth.predict` and :meth:`Smooth.certify` return when they abstain."""

_BOUNDS = ("gaussian", "lipschitz")
_SIGMA_HEADROOM = 64.0  # Gaussian samples beyond 64 sigma have probability below 1e-890: never drawn
_MAPS = ("softmax", "sparsemax", "hardmax")


# --------------------------------------------------------------------------- argument checks


def _check_alpha(alpha) -> float:
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 < alpha < 1:  # NaN fails too
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")
    return float(alpha)


def _check_sigma(sigma) -> float:
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma) or sigma <= 0:
        raise ValueError(f"sigma must be a finite number > 0, got {sigma!r}")
    return float(sigma)


def _check_map(kind, temperature, where: str = "") -> tuple[str, float]:
    if not isinstance(kind, str) or kind not in _MAPS:
        raise ValueError(f"{where}kind (the map) must be one of {_MAPS}, got {kind!r}")
    if (
        isinstance(temperature, bool)
        or not isinstance(temperature, (int, float))
        or not math.isfinite(temperature)
        or temperature <= 0
    ):
        raise ValueError(f"{where}temperature must be a finite number > 0, got {temperature!r}")
    return kind, float(temperature)


# --------------------------------------------------------------------------- statistics


def clopper_pearson_lower(successes: int, trials: int, alpha: float) -> float:
    r"""One-sided Clopper-Pearson lower confidence bound of a binomial proportion.

    With probability at least :math:`1 - \alpha` over :math:`k \sim \mathrm{Bin}(n, p)`,
    :math:`p \ge \underline{p} = B^{-1}(\alpha;\, k,\, n - k + 1)`, the :math:`\alpha` quantile of
    the Beta distribution (0 when :math:`k = 0`) [clopper1934use]. This is the bound
    :meth:`Smooth.certify` puts on the top class's probability; with :math:`k = n` it equals
    :math:`\alpha^{1/n}`.

    Args:
        successes: :math:`k`, an int in ``[0, trials]``.
        trials: :math:`n >= 1`.
        alpha: the failure probability, in (0, 1).

    Returns:
        The lower bound, a float in [0, 1].
    """
    trials = _check_int(trials, "trials")
    if isinstance(successes, bool) or not isinstance(successes, int) or not 0 <= successes <= trials:
        raise ValueError(f"successes must be an int in [0, trials={trials}], got {successes!r}")
    alpha = _check_alpha(alpha)
    if successes == 0:
        return 0.0
    return float(_stats().beta.ppf(alpha, successes, trials - successes + 1))


def empirical_bernstein_radius(variance: Tensor, n: int, alpha: float, *, value_range: float = 1.0) -> Tensor:
    r"""Half-width of the one-sided empirical Bernstein confidence bound.

    For :math:`n \ge 2` i.i.d. variables in an interval of length :math:`b` with sample variance
    :math:`V_n` (unbiased), with probability at least :math:`1 - \alpha`

    .. math::

        \mathbb{E}X \ge \bar X - \sqrt{\frac{2 V_n \ln(2/\alpha)}{n}} - \frac{7 b \ln(2/\alpha)}{3(n - 1)}

    (Maurer and Pontil 2009, Theorem 4 [maurer2009empirical]; the same for the upper bound).
    Unlike Hoeffding's bound it shrinks with the variance, which is what a base classifier with a
    small Lipschitz constant and a large margin buys under noise [delattre2024lipschitz].

    Args:
        variance: sample variances, a floating tensor of any shape, each finite and >= 0.
        n: number of samples, >= 2.
        alpha: failure probability of each bound, in (0, 1).
        value_range: :math:`b > 0`, the length of the interval holding the variables.

    Returns:
        The half-widths, the shape, dtype and device of ``variance``.

    Raises:
        TypeError: ``variance`` not a floating tensor (wrap a number: ``torch.tensor(v)``).
        ValueError: NaN, infinite or negative variances, ``n < 2``, ``alpha`` outside (0, 1),
            ``value_range <= 0``.
    """
    _check_tensor(variance, "variance", nonempty=False)
    if variance.numel() and bool((variance < 0).any()):
        raise ValueError(f"variance must be >= 0 everywhere, got a minimum of {float(variance.min())}")
    n = _check_int(n, "n", 2)
    alpha = _check_alpha(alpha)
    value_range = _check_positive(value_range, "value_range")
    log_term = math.log(2 / alpha)
    return torch.sqrt(2 * variance * log_term / n) + 7 * value_range * log_term / (3 * (n - 1))


def max_certifiable_radius(sigma: float, n: int, alpha: float) -> float:
    r"""The largest radius :meth:`Smooth.certify` can return with ``n`` samples at level ``alpha``.

    Even when every noisy sample votes for the top class, the Clopper-Pearson bound is
    :math:`\alpha^{1/n}`, so the radius never exceeds :math:`\sigma\,\Phi^{-1}(\alpha^{1/n})`
    [cohen2019certified]: to certify twice as far one needs far more than twice the samples.
    """
    sigma, n, alpha = _check_sigma(sigma), _check_int(n, "n"), _check_alpha(alpha)
    return sigma * float(_stats().norm.ppf(alpha ** (1 / n)))


# --------------------------------------------------------------------------- maps to the simplex


def sparsemax(z: Tensor, dim: int = -1) -> Tensor:
    r"""Euclidean projection of ``z`` onto the probability simplex along ``dim``.

    :math:`\operatorname{sparsemax}(z) = \arg\min_{p \in \Delta} \|p - z\|_2`
    [martins2016softmax]: :math:`p_i = \max(z_i - \tau, 0)` with the threshold :math:`\tau`
    chosen so that the entries sum to 1. Unlike softmax it returns exact zeros, so a confident
    base classifier gives the same vector under most noise draws: a small variance.

    Args:
        z: a floating tensor with at least one dimension, finite.
        dim: the dimension to project along.

    Returns:
        A tensor of the shape of ``z`` whose slices along ``dim`` lie in the simplex.
    """
    _check_tensor(z, "z", min_dims=1)
    _check_dim(dim, z)
    return _sparsemax(z, dim)


def _check_dim(dim, z: Tensor) -> int:
    if isinstance(dim, bool) or not isinstance(dim, int):
        raise TypeError(f"dim must be an int, got {dim!r}")
    if not -z.ndim <= dim < z.ndim:
        raise ValueError(f"dim must be in [{-z.ndim}, {z.ndim}) for a tensor of shape {tuple(z.shape)}, got {dim}")
    return dim


def _sparsemax(z: Tensor, dim: int = -1) -> Tensor:
    z = z.transpose(dim, -1)
    sorted_z = z.sort(dim=-1, descending=True).values
    k = torch.arange(1, z.shape[-1] + 1, device=z.device, dtype=z.dtype)
    cumulative = sorted_z.cumsum(-1)
    support = (1 + k * sorted_z) > cumulative
    support_size = support.sum(-1, keepdim=True)
    tau = (cumulative.gather(-1, support_size - 1) - 1) / support_size.to(z.dtype)
    return (z - tau).clamp_min(0).transpose(dim, -1)


def simplex_map(logits: Tensor, kind: str = "softmax", temperature: float = 1.0) -> Tensor:
    r"""Map logits ``(N, C)`` to points of the probability simplex ``(N, C)``.

    ``"softmax"``: :math:`\operatorname{softmax}(z / T)`; ``"sparsemax"``:
    :math:`\operatorname{sparsemax}(z / T)`; ``"hardmax"``: the one-hot vector of the arg max
    (what Cohen et al.'s vote counting averages). A lower temperature pushes every map towards
    the one-hot vote; a higher one lowers the variance under noise but also the margin: the
    variance-margin trade-off of [delattre2024lipschitz].

    Args:
        logits: a finite floating tensor ``(..., C)``.
        kind: ``"softmax"``, ``"sparsemax"`` or ``"hardmax"``.
        temperature: :math:`T > 0`.

    Returns:
        A tensor of the shape of ``logits`` whose last dimension lies in the simplex.
    """
    _check_tensor(logits, "logits", min_dims=1)
    kind, temperature = _check_map(kind, temperature)
    return _simplex_map(logits, kind, temperature)


def _simplex_map(logits: Tensor, kind: str, temperature: float) -> Tensor:
    if kind == "hardmax":
        return nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    scaled = logits / temperature
    return scaled.softmax(-1) if kind == "softmax" else _sparsemax(scaled)


# --------------------------------------------------------------------------- Lipschitz bases


def _check_lipschitz(value, name: str, *, allow_none: bool = False) -> float | None:
    """A finite Lipschitz constant > 0 (None when ``allow_none``: no constant is known)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        extra = " or None" if allow_none else ""
        raise ValueError(f"{name} must be a finite number > 0{extra}, got {value!r}")
    return float(value)


def smoothed_lipschitz_constant(L: float, sigma: float, *, value_range: float) -> float:
    r"""The tight L2 Lipschitz constant of the Gaussian smoothing of a bounded Lipschitz function.

    If :math:`f : \mathbb{R}^d \to \mathbb{R}` is :math:`L`-Lipschitz in L2 and takes its values
    in an interval of length :math:`r`, then :math:`F(x) = \mathbb{E}\, f(x + \sigma Z)`,
    :math:`Z \sim \mathcal{N}(0, I)`, is Lipschitz with constant

    .. math::

        L_F = L\,\operatorname{erf}\!\Big(\frac{r}{2\sqrt{2}\,L\sigma}\Big),

    and no smaller constant holds for every such :math:`f` (the centred ramp attains it).

    Derivation. For a unit vector :math:`u`, Stein's identity gives :math:`u^\top \nabla F(x) =
    \mathbb{E}[f(x + \sigma Z)\, u^\top Z] / \sigma`. Averaging :math:`f` over the directions
    orthogonal to :math:`u` reduces this to one dimension: with :math:`W = u^\top Z \sim
    \mathcal{N}(0, 1)` and :math:`g(s) = \mathbb{E}[f(x + s u + \sigma Z_\perp)]`, which is again
    :math:`L`-Lipschitz with values in an interval of length :math:`r`,
    :math:`u^\top \nabla F(x) = \mathbb{E}[g(\sigma W) W] / \sigma = \mathbb{E}[(g(\sigma W) -
    g(-\sigma W))\, W\, \mathbb{1}_{W > 0}] / \sigma`, by the symmetry of :math:`W`. Since
    :math:`g(s) - g(-s) \le \min(2 L s, r)` for :math:`s > 0`,

    .. math::

        u^\top \nabla F(x) \le \frac{1}{\sigma}\,\mathbb{E}\big[\min(2 L \sigma W, r)\, W\, \mathbb{1}_{W > 0}\big]
        = 2L\big(\Phi(a) - \tfrac12\big) = L\,\operatorname{erf}(a / \sqrt{2}),
        \qquad a = \frac{r}{2 L \sigma}

    (integrate by parts: :math:`\int_0^a w^2 \varphi = \Phi(a) - \frac12 - a\varphi(a)` and
    :math:`\int_a^\infty w\varphi = \varphi(a)`). Equality holds for the ramp
    :math:`f(x) = \operatorname{clip}(L u^\top x, -r/2, r/2)` at :math:`x = 0`: its slope :math:`L`
    covers the window :math:`|s| < r / (2L)` of length :math:`r / L` *centred* where the Gaussian
    density is largest. That centring is where the :math:`2\sqrt{2}` comes from: the factor 2
    splits the window into two halves of length :math:`r / (2L)`, and :math:`\sqrt{2}` converts
    :math:`\mathbb{P}(|W| < a) = \operatorname{erf}(a / \sqrt{2})`. The constant
    :math:`L\operatorname{erf}(r / (\sqrt{2} L \sigma))` used with values in :math:`[0, r]` in the
    thesis code [delattre2025stability] is :math:`L\,\mathbb{P}(|W| < r / (L\sigma))`, a window of
    length :math:`2r/L` that no :math:`L`-Lipschitz function of range :math:`r` can fill: valid,
    and up to twice the tight value (the ratio tends to 2 as :math:`L \to \infty`).

    Limits: :math:`L_F \to L` as :math:`L \to 0` (or :math:`r \to \infty`: smoothing never
    increases a Lipschitz constant), and :math:`L_F \to r / (\sigma\sqrt{2\pi})` as :math:`L \to
    \infty`, the constant of any smoothed function of range :math:`r`, Lipschitz or not (for
    :math:`r = 1`, :math:`\sqrt{2/\pi}/(2\sigma)`: the constant behind Cohen et al.'s margin
    certificates [salman2019provably]). With :math:`r = 1` and the coordinate constant of
    :func:`simplex_map_lipschitz`, this is the constant of each smoothed class probability of a
    Lipschitz network [delattre2024lipschitz].

    Args:
        L: the L2 Lipschitz constant of :math:`f`, finite and > 0.
        sigma: the noise level :math:`\sigma > 0`.
        value_range: :math:`r > 0`, the length of an interval holding every value of :math:`f`.

    Returns:
        :math:`L_F`, a float, at most :math:`\min(L, r / (\sigma\sqrt{2\pi}))`.
    """
    L = _check_lipschitz(L, "L")
    sigma = _check_sigma(sigma)
    value_range = _check_positive(value_range, "value_range")
    return L * math.erf(value_range / (2 * math.sqrt(2) * L * sigma))


def simplex_map_lipschitz(kind: str, temperature: float, num_classes: int, *, logit_lipschitz: float = 1.0) -> float:
    r"""An L2 Lipschitz constant of each coordinate of :func:`simplex_map` applied to Lipschitz logits.

    When the logits :math:`z(x)` are :math:`L_z`-Lipschitz in L2, each class probability
    :math:`h_c(x) = \phi(z(x) / T)_c` is Lipschitz with constant :math:`L_z\,\ell_\phi / T`, where
    :math:`\ell_\phi` is the largest norm of a row of the map's Jacobian:

    * softmax: row :math:`c` is :math:`p_c(e_c - p)`, of squared norm
      :math:`p_c^2((1 - p_c)^2 + \sum_{j \ne c} p_j^2) \le 2p_c^2(1 - p_c)^2 \le 1/8`, so
      :math:`\ell = \sqrt{2}/4`, attained with :math:`p_c = 1/2` and the rest on one class;
    * sparsemax: on a support of :math:`k` classes the Jacobian is the projection
      :math:`I - \mathbf{1}\mathbf{1}^\top / k` (zero outside), whose rows have norm
      :math:`\sqrt{1 - 1/k}`, so :math:`\ell = \sqrt{1 - 1/C}`;
    * hardmax (the vote): not Lipschitz; a ValueError.

    This is the constant ``base_lipschitz`` of :meth:`Smooth.certify` asks for: the function
    that must be Lipschitz is each coordinate :math:`h_c`, not the logits and not the vote.

    Args:
        kind: ``"softmax"`` or ``"sparsemax"``.
        temperature: :math:`T > 0`.
        num_classes: :math:`C >= 2`.
        logit_lipschitz: :math:`L_z > 0`, an L2 Lipschitz constant of the logits (1 for the
            1-Lipschitz networks of :mod:`stabilitylab.layers`).

    Returns:
        The constant, a float.
    """
    kind, temperature = _check_map(kind, temperature)
    num_classes = _check_int(num_classes, "num_classes", 2)
    logit_lipschitz = _check_lipschitz(logit_lipschitz, "logit_lipschitz")
    if kind == "hardmax":
        raise ValueError("kind='hardmax' (the vote) is not Lipschitz: use 'softmax' or 'sparsemax'")
    ell = math.sqrt(2) / 4 if kind == "softmax" else math.sqrt(1 - 1 / num_classes)
    return logit_lipschitz * ell / temperature


_GL_NODES, _GL_WEIGHTS = None, None


def _gauss_legendre():
    global _GL_NODES, _GL_WEIGHTS
    if _GL_NODES is None:
        import numpy as np

        _GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)
    return _GL_NODES, _GL_WEIGHTS


def _integrated_cdf(z):
    r""":math:`M(z) = \int_{-\infty}^z \Phi = \varphi(z) + z\Phi(z)`, accurate in the lower tail
    (there :math:`\varphi(a)(1 - a\,\bar\Phi(a)/\varphi(a))` with the Mills ratio from ``erfcx``)."""
    import numpy as np
    from scipy import special

    z = np.asarray(z, dtype=np.float64)
    out = np.empty_like(z)
    upper = z >= 0
    zu = z[upper]
    out[upper] = np.exp(-zu * zu / 2) / math.sqrt(2 * math.pi) + zu * special.ndtr(zu)
    a = -z[~upper]
    mills = math.sqrt(math.pi / 2) * special.erfcx(a / math.sqrt(2))
    out[~upper] = np.exp(-a * a / 2) / math.sqrt(2 * math.pi) * (1 - a * mills)
    return out


def _ramp_cdf(t, sigma: float, L: float):
    r"""CDF at ``t`` of :math:`\sigma W + U`, :math:`U` uniform on :math:`[-h, h]`, :math:`h = 1/(2L)`.

    Equals :math:`\mathbb{E}\operatorname{clip}(L(t + \sigma W) + \frac12, 0, 1)`, the smoothing of
    the ramp of slope :math:`L`. Computed as :math:`\frac{\sigma}{2h}(M((t + h)/\sigma) -
    M((t - h)/\sigma))`, or by 8-point Gauss-Legendre over :math:`U` when :math:`h < 10^{-3}\sigma`
    (where that difference would cancel); relative error about 1e-13 for ``t <= 0``."""
    import numpy as np
    from scipy import special

    t = np.asarray(t, dtype=np.float64)
    h = 0.5 / L
    if h < 1e-3 * sigma:
        nodes, weights = _gauss_legendre()
        return (special.ndtr((t[..., None] - h * nodes) / sigma) * weights).sum(-1) / 2
    return sigma / (2 * h) * (_integrated_cdf((t + h) / sigma) - _integrated_cdf((t - h) / sigma))


def _lipschitz_probit(p, sigma: float, L: float | None, round_up: bool):
    r""":math:`Q_{\sigma, L}(p)` for an array ``p`` in [0, 1] (float64 numpy), by bisection, rounded
    down (or up): the bracket end on the safe side of the root."""
    import numpy as np
    from scipy import special

    p = np.asarray(p, dtype=np.float64)
    if L is None:
        return sigma * special.ndtri(p)
    q = np.minimum(p, 1 - p)  # exact for p in [1/2, 1] (Sterbenz); Q(1 - q) = -Q(q)
    c = sigma * special.ndtri(q)  # Cohen's value, <= 0, -inf at q = 0
    h = 0.5 / L
    finite = q > 0
    # Q(q) in [c - h, c] for q <= 1/2: G(c) >= Phi(c / sigma) = q (U spreads the tail, see
    # lipschitz_probit) and G(c - h) <= Phi(c / sigma) (G(t) <= Phi((t + h) / sigma)).
    lo, hi = np.where(finite, c - h, 0.0), np.where(finite, c, 0.0)
    target = np.where(finite, q, 0.5)
    for _ in range(110):
        mid = (lo + hi) / 2
        below = _ramp_cdf(mid, sigma, L) < target
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    lo, hi = np.where(finite, lo, -np.inf), np.where(finite, hi, -np.inf)
    flipped = p > 0.5
    # for q = p the root is in [lo, hi]; for q = 1 - p it is in [-hi, -lo]
    half = q == 0.5  # Q(1/2) = 0 exactly (G is symmetric)
    down = np.where(half, 0.0, np.where(flipped, -hi, lo))
    up = np.where(half, 0.0, np.where(flipped, -lo, hi))
    return up if round_up else down


def _probabilities(p, name: str):
    """``p`` as a float64 numpy array in [0, 1] and whether it was a number (a float is returned)."""
    import numpy as np

    if isinstance(p, Tensor):
        _check_tensor(p, name, nonempty=False)
        values, scalar = p.detach().double().cpu().numpy(), False
    elif isinstance(p, (int, float)) and not isinstance(p, bool):
        if not math.isfinite(p):
            raise ValueError(f"{name} must be a probability in [0, 1], got {p!r}")
        values, scalar = np.asarray(float(p)), True
    else:
        raise TypeError(f"{name} must be a number or a floating tensor of probabilities, got {type(p).__name__}")
    if values.size and ((values < 0).any() or (values > 1).any()):
        raise ValueError(f"{name} must lie in [0, 1], got values in [{values.min()}, {values.max()}]")
    return values, scalar


def lipschitz_probit(p: float | Tensor, sigma: float, *, base_lipschitz: float | None = None) -> float | Tensor:
    r"""The map :math:`Q_{\sigma, L}` that makes a smoothed :math:`L`-Lipschitz probability 1-Lipschitz.

    :math:`Q_{\sigma, L}` is the quantile function of :math:`\sigma W + U` with :math:`W \sim
    \mathcal{N}(0, 1)` and :math:`U` uniform on :math:`[-\frac{1}{2L}, \frac{1}{2L}]`
    independent; its distribution function is

    .. math::

        G_{\sigma, L}(t) = \mathbb{E}\,\operatorname{clip}\big(L(t + \sigma W) + \tfrac12, 0, 1\big)
        = L\!\int_{t - 1/(2L)}^{t + 1/(2L)} \Phi(s / \sigma)\, ds,

    the Gaussian smoothing of the ramp of slope :math:`L`. Theorem (the Lipschitz-aware
    certificate of Delattre et al. 2025 [delattre2025bridging], in closed form): if
    :math:`h : \mathbb{R}^d \to [0, 1]` is :math:`L`-Lipschitz in L2 and :math:`F(x) =
    \mathbb{E}\, h(x + \sigma Z)`, then :math:`Q_{\sigma, L} \circ F` is 1-Lipschitz, and the
    ramp :math:`h(x) = \operatorname{clip}(L u^\top x + \frac12, 0, 1)` makes it an isometry
    along :math:`u`, so nothing better holds for every such :math:`h`.

    Proof sketch. (i) Gradient bound: by Stein's identity and the reduction to one dimension of
    :func:`smoothed_lipschitz_constant`, :math:`u^\top\nabla F(x) = \mathbb{E}[g(\sigma W)W] /
    \sigma` for some :math:`L`-Lipschitz :math:`g` with values in [0, 1] and
    :math:`\mathbb{E}\, g(\sigma W) = F(x) = p`. Let :math:`g^*` be the increasing ramp of slope
    :math:`L` from 0 to 1 with the same mean. Then :math:`D = g - g^*` is :math:`\ge 0` left of the
    ramp, :math:`\le 0` right of it, and non-increasing on it (:math:`g' \le L = g^{*\prime}`),
    so it changes sign once, at some :math:`s_0`; since :math:`\mathbb{E}\, D(\sigma W) = 0`,
    :math:`\mathbb{E}[D(\sigma W)\, W] = \mathbb{E}[D(\sigma W)(W - s_0/\sigma)] \le 0`. Hence
    :math:`\|\nabla F(x)\| \le \psi(p) = L(\Phi(b/\sigma) - \Phi(a/\sigma))`, :math:`[a, b]`
    the support of the slope of :math:`g^*`, and :math:`\psi = G' \circ G^{-1}` (the density of
    :math:`\sigma W + U` at its :math:`p` quantile). (ii) Along any segment,
    :math:`|\frac{d}{dt} Q(F)| = |\nabla F \cdot u| / \psi(F) \le 1` (apply (i) to :math:`1 - h`
    for the other sign).

    As :math:`L \to \infty` the uniform part vanishes and :math:`Q \to \sigma\Phi^{-1}`: Salman et
    al.'s lemma behind Cohen et al.'s radius [salman2019provably], [cohen2019certified]. For every
    finite :math:`L`, :math:`Q_{\sigma, L}(p) \ge \sigma\Phi^{-1}(p)` when :math:`p \ge 1/2` (and
    :math:`\le` below): for :math:`t \ge 0`, :math:`\mathbb{P}(\sigma W + U > t) \ge
    \mathbb{P}(\sigma W > t)` because :math:`u \mapsto \bar\Phi((t - u)/\sigma) + \bar\Phi((t +
    u)/\sigma)` increases on :math:`u \ge 0`. The gain is largest when the ramp is wide compared
    with the noise, :math:`1/L \gtrsim \sigma`. The paper's code evaluates the local constant
    :math:`\psi(p) / \varphi(\Phi^{-1}(p))` of :math:`\Phi^{-1} \circ F` at the centre only
    (its :math:`\rho = 0`); integrating :math:`1/\psi` exactly, as here, gives the tight radius,
    which is at least that value.

    Args:
        p: probabilities in [0, 1], a number or a floating tensor of any shape.
        sigma: the noise level :math:`\sigma > 0`.
        base_lipschitz: :math:`L > 0`, or None for :math:`L = \infty`
            (:math:`\sigma\Phi^{-1}(p)`).

    Returns:
        :math:`Q_{\sigma, L}(p)`: a float for a number, else a float64 CPU tensor of the shape of
        ``p``; :math:`\pm\infty` at 1 and 0. Computed by bisection to float64 resolution, with
        :math:`G` accurate to about 1e-13 relative, and rounded down.
    """
    values, scalar = _probabilities(p, "p")
    sigma = _check_sigma(sigma)
    L = _check_lipschitz(base_lipschitz, "base_lipschitz", allow_none=True)
    out = _lipschitz_probit(values, sigma, L, round_up=False)
    return float(out) if scalar else torch.from_numpy(out.astype("float64")).reshape(p.shape)


def lipschitz_aware_radius(
    p_a: float | Tensor, sigma: float, *, base_lipschitz: float | None = None, p_b: float | Tensor | None = None
) -> float | Tensor:
    r"""The certified L2 radius from bounds on the smoothed probabilities of an :math:`L`-Lipschitz soft base.

    If every class probability :math:`h_c` of the base is :math:`L`-Lipschitz with values in
    [0, 1] and :math:`F_c = \mathbb{E}\, h_c(\cdot + \sigma Z)` satisfies :math:`F_A(x) \ge
    \underline{p_A}` and :math:`F_c(x) \le \overline{p_B}` for every :math:`c \ne A`, then, since
    each :math:`Q_{\sigma, L} \circ F_c` is 1-Lipschitz (:func:`lipschitz_probit`),
    :math:`\arg\max_c F_c` is :math:`A` on the L2 ball of radius

    .. math::

        R = \tfrac12\big(Q_{\sigma, L}(\underline{p_A}) - Q_{\sigma, L}(\overline{p_B})\big),

    which is :math:`Q_{\sigma, L}(\underline{p_A})` for :math:`\overline{p_B} = 1 -
    \underline{p_A}` (the default) [delattre2025bridging]. With ``base_lipschitz=None``
    (:math:`L = \infty`) this is Cohen et al.'s :math:`\frac{\sigma}{2}(\Phi^{-1}(\underline{p_A})
    - \Phi^{-1}(\overline{p_B}))` [cohen2019certified]; for every finite :math:`L` it is at least
    as large, and it decreases with :math:`L`.

    Args:
        p_a: :math:`\underline{p_A}`, a number or a floating tensor in [0, 1].
        sigma: the noise level :math:`\sigma > 0`.
        base_lipschitz: :math:`L > 0` (each class probability's L2 constant; see
            :func:`simplex_map_lipschitz`), or None for :math:`L = \infty`.
        p_b: :math:`\overline{p_B}` (broadcast with ``p_a``); None for :math:`1 - \underline{p_A}`.

    Returns:
        :math:`\max(R, 0)` (0: nothing is certified), a float for numbers, else a float64 CPU
        tensor; rounded down.
    """
    import numpy as np

    a_values, a_scalar = _probabilities(p_a, "p_a")
    sigma = _check_sigma(sigma)
    L = _check_lipschitz(base_lipschitz, "base_lipschitz", allow_none=True)
    if p_b is None:
        b_values, b_scalar = 1 - a_values, a_scalar
    else:
        b_values, b_scalar = _probabilities(p_b, "p_b")
    try:
        a_values, b_values = np.broadcast_arrays(a_values, b_values)
    except ValueError:
        raise ValueError(
            f"p_b of shape {b_values.shape} does not broadcast with p_a of shape {a_values.shape}") from None
    with np.errstate(invalid="ignore"):
        radius = (_lipschitz_probit(a_values, sigma, L, False) - _lipschitz_probit(b_values, sigma, L, True)) / 2
    radius = np.where(radius > 0, radius, 0.0)  # also NaN (inf - inf) -> 0
    if a_scalar and b_scalar:
        return float(radius)
    return torch.from_numpy(np.ascontiguousarray(radius, dtype=np.float64))


# --------------------------------------------------------------------------- class partitions


class PartitionBounds(NamedTuple):
    """The bounds of :func:`partition_bounds`."""

    #: the class chosen on the selection counts.
    top: int
    #: a lower bound of its probability.
    p_a_lower: float
    #: an upper bound of every other class's probability.
    p_b_upper: float
    #: the partition of the classes, ``buckets[0] == [top]``.
    buckets: list


def _class_partition(selection: list[int]) -> list[list[int]]:
    """Buckets: the top class, the runner-up, then the next classes one at a time while the rest
    together got more selection votes than the runner-up, then the rest as one bucket."""
    order = sorted(range(len(selection)), key=lambda c: (-selection[c], c))
    buckets = [[order[0]], [order[1]]]
    rest = order[2:]
    runner_up = selection[order[1]]
    while rest and sum(selection[c] for c in rest) > runner_up:
        buckets.append([rest.pop(0)])
    if rest:
        buckets.append(sorted(rest))
    return buckets


def _check_counts(counts, name: str, num_classes: int | None = None) -> list[int]:
    if isinstance(counts, Tensor):
        if counts.is_floating_point() or counts.is_complex() or counts.dtype == torch.bool or counts.ndim != 1:
            raise ValueError(f"{name} must be a 1-d integer tensor of counts, got {counts.dtype} {tuple(counts.shape)}")
        counts = counts.tolist()
    if isinstance(counts, (str, bytes)) or not isinstance(counts, Sequence):
        raise TypeError(f"{name} must be a sequence or 1-d integer tensor of counts, got {type(counts).__name__}")
    counts = list(counts)
    if not all(isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in counts):
        raise ValueError(f"{name} must hold ints >= 0, got {counts!r}")
    if len(counts) < 2 or (num_classes is not None and len(counts) != num_classes):
        want = ">= 2" if num_classes is None else str(num_classes)
        raise ValueError(f"{name} must have {want} entries (one per class), got {len(counts)}")
    if sum(counts) < 1:
        raise ValueError(f"{name} must count at least one sample, got {counts!r}")
    return counts


def _clopper_pearson_upper(successes: int, trials: int, alpha: float) -> float:
    """The one-sided Clopper-Pearson upper bound, ``1 - clopper_pearson_lower(trials - successes, ...)``."""
    return 1.0 - clopper_pearson_lower(trials - successes, trials, alpha)


def partition_bounds(selection_counts, counts, alpha: float) -> PartitionBounds:
    r"""Bounds on the top class's probability and on every other one, by partitioning the classes.

    The class-partition method of Delattre et al. 2025 [delattre2025bridging]. The selection
    counts (``n0`` samples, independent of ``counts``) order the classes and group them into
    :math:`k` buckets: the top class :math:`\hat c_A`, the runner-up, then the next classes one
    at a time while the remaining ones together received more selection votes than the
    runner-up, then all remaining classes as one bucket. Each bucket's probability (the sum of its
    classes') gets a one-sided Clopper-Pearson bound at level :math:`\alpha / k` from ``counts``:
    a lower bound for the top bucket, upper bounds for the others. By the union bound, with
    probability at least :math:`1 - \alpha` all :math:`k` hold, and then :math:`p_A \ge
    \underline{p_A}` and every other class, being inside a bucket, has :math:`p_c \le
    \overline{p_B} = \min(\max_{j \ge 2} \overline{p}_{j}, 1 - \underline{p_A})`. Bounding each
    of the :math:`C - 1` other classes separately would cost :math:`\alpha / C`; lumping the
    classes that got few selection votes keeps :math:`k` small, since their total is then
    below the runner-up's. The partition is valid because it depends only on the selection
    counts.

    Args:
        selection_counts: votes per class from the selection samples (a sequence of ints or a
            1-d integer tensor of length :math:`C >= 2`).
        counts: votes per class from the estimation samples, same length; :math:`n` is their sum.
        alpha: the failure probability, in (0, 1).

    Returns:
        A :class:`PartitionBounds` ``(top, p_a_lower, p_b_upper, buckets)``.
    """
    selection = _check_counts(selection_counts, "selection_counts")
    estimation = _check_counts(counts, "counts", len(selection))
    alpha = _check_alpha(alpha)
    n = sum(estimation)
    buckets = _class_partition(selection)
    level = alpha / len(buckets)
    totals = [sum(estimation[c] for c in bucket) for bucket in buckets]
    p_a = clopper_pearson_lower(totals[0], n, level)
    p_b = min(max(_clopper_pearson_upper(k, n, level) for k in totals[1:]), 1.0 - p_a)
    return PartitionBounds(buckets[0][0], p_a, p_b, buckets)


# --------------------------------------------------------------------------- variance under noise


class SmoothedVariance(NamedTuple):
    """The Monte Carlo moments of :func:`smoothed_variance`."""

    #: ``(N, K)`` float64, the estimate of the smoothed output :math:`F(x_i)`.
    mean: Tensor
    #: ``(N, K)`` float64, the unbiased sample variance of :math:`f(x_i + \delta)`.
    variance: Tensor
    #: :math:`\sigma^2 L^2`, the Gaussian Poincare bound of every entry of ``variance``'s expectation.
    bound: float


def smoothed_variance(
    fn,
    x: Tensor,
    sigma: float,
    n: int,
    *,
    lipschitz: float,
    batch_size: int = 4096,
    generator: torch.Generator | None = None,
    progress: bool | None = False,
) -> SmoothedVariance:
    r"""The Monte Carlo variance of each output of :math:`f(x + \delta)`, next to its bound :math:`\sigma^2 L^2`.

    Gaussian Poincare inequality (Chernoff 1981 in one dimension [chernoff1981note]): for
    :math:`\delta \sim \mathcal{N}(0, \sigma^2 I)` and :math:`f_k` differentiable almost
    everywhere, :math:`\operatorname{Var} f_k(x + \delta) \le \sigma^2\, \mathbb{E}\|\nabla f_k(x
    + \delta)\|^2 \le \sigma^2 L^2` when :math:`f` (hence each of its coordinates) is
    :math:`L`-Lipschitz in L2, with equality for linear :math:`f_k`. This variance is what sets
    the width of the empirical Bernstein intervals of :meth:`Smooth.certify_lvm`
    [delattre2024lipschitz]: a base with a small Lipschitz constant has low-variance smoothed
    outputs, so few samples pin them down. The bound is per coordinate; the sum over coordinates
    can reach :math:`\sigma^2 \mathbb{E}\|J_f\|_F^2`, more than :math:`\sigma^2 L^2`.

    Args:
        fn: a module or callable mapping a batch ``(B, *input_shape)`` to outputs ``(B, K)`` or
            ``(B,)`` (e.g. ``lambda z: simplex_map(model(z), "softmax", 1.0)``). A module is
            evaluated in eval mode on its parameters' device; modes are restored afterwards.
        x: the points, a finite floating batch ``(N, *input_shape)``.
        sigma: the noise level :math:`\sigma > 0`.
        n: noise samples per point, >= 2.
        lipschitz: :math:`L > 0`, an L2 Lipschitz constant of ``fn`` (each coordinate's suffices).
        batch_size: noisy inputs per call of ``fn``, >= 1.
        generator: the source of the noise (on its device). progress: a bar over the points.

    Returns:
        A :class:`SmoothedVariance` ``(mean, variance, bound)``, tensors ``(N, K)`` (``K = 1`` for
        scalar outputs) on the CPU.

    Raises:
        ValueError: NaN or infinite inputs or outputs, ``n < 2``, a bad ``sigma`` or ``lipschitz``.
    """
    if not callable(fn):
        raise TypeError(f"fn must be a module or a callable, got {type(fn).__name__}")
    _check_tensor(x, "x", min_dims=1)
    if len(x) == 0:
        raise ValueError("x must be a non-empty batch (N, *input_shape)")
    sigma = _check_sigma(sigma)
    n = _check_int(n, "n", 2)
    lipschitz = _check_lipschitz(lipschitz, "lipschitz")
    batch_size = _check_int(batch_size, "batch_size")
    _check_generator(generator)
    progress = _check_progress(progress)
    device, dtype = x.device, x.dtype
    if isinstance(fn, nn.Module):
        for p in fn.parameters():
            device, dtype = p.device, (p.dtype if p.is_floating_point() else x.dtype)
            break
    x = x.to(device=device, dtype=dtype)
    noise_device = generator.device if generator is not None else device
    means, variances = [], []
    context = eval_mode(fn) if isinstance(fn, nn.Module) else contextlib.nullcontext()
    with context, torch.inference_mode():
        for point in tqdm(x, disable=not progress, desc="points", leave=False):
            count, mean, m2 = 0, None, None
            remaining = n
            while remaining > 0:
                b = min(batch_size, remaining)
                noise = torch.empty((b, *point.shape), device=noise_device, dtype=dtype)
                noise.normal_(0.0, sigma, generator=generator)
                out = fn(noise.to(device) + point)
                if not isinstance(out, Tensor) or out.ndim not in (1, 2) or len(out) != b:
                    got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
                    raise ValueError(f"fn must return outputs (B, K) or (B,) for a batch of {b} inputs, got {got}")
                out = out.reshape(b, -1).double().cpu()
                if not bool(torch.isfinite(out).all()):
                    raise ValueError("fn returned NaN or infinite outputs on noisy copies of x")
                batch_mean = out.mean(0)
                batch_m2 = (out - batch_mean).square().sum(0)
                if mean is None:
                    mean, m2 = batch_mean, batch_m2
                else:  # Chan et al.'s pairwise update: no cancellation
                    delta = batch_mean - mean
                    total = count + b
                    mean = mean + delta * (b / total)
                    m2 = m2 + batch_m2 + delta.square() * (count * b / total)
                count += b
                remaining -= b
            means.append(mean)
            variances.append(m2 / (count - 1))
    return SmoothedVariance(torch.stack(means), torch.stack(variances), sigma**2 * lipschitz**2)


# --------------------------------------------------------------------------- the smoothed classifier


class Smooth:
    r"""A base classifier smoothed by Gaussian noise: :math:`g(x) = \arg\max_c \mathbb{P}(f(x + \delta) = c)`.

    Cohen et al.'s theorem [cohen2019certified]: if :math:`\mathbb{P}(f(x + \delta) = c_A) \ge
    \underline{p_A} \ge \overline{p_B} \ge \max_{c \ne c_A} \mathbb{P}(f(x + \delta) = c)` then
    :math:`g(x + \varepsilon) = c_A` for every :math:`\|\varepsilon\|_2 < \frac{\sigma}{2}
    (\Phi^{-1}(\underline{p_A}) - \Phi^{-1}(\overline{p_B}))`; with :math:`\overline{p_B} = 1 -
    \underline{p_A}` this is :math:`\sigma\,\Phi^{-1}(\underline{p_A})`. The proof rests on the
    fact that :math:`x \mapsto \Phi^{-1}(\mathbb{E} h(x + \delta))` is :math:`1/\sigma`-Lipschitz
    for any :math:`h` with values in [0, 1] [salman2019provably].

    Noise is drawn in batches of ``batch_size`` copies of one input; only the counts (or sums)
    leave the device, so certifying costs the forward passes and little else. The noise lives on
    the device and in the dtype of the base model's parameters (the input's when it has none).

    Nothing non-finite is ever counted as a vote: an input ``x`` with NaN or infinite entries
    (or one that overflows the base model's dtype), a ``sigma`` whose noise overflows that dtype
    (above its largest value / 64), noisy inputs that overflow, or NaN / infinite logits
    returned by the base model on any batch raise a ValueError in ``predict``, ``certify``,
    ``certify_lvm``, ``sample_counts`` and ``vote_frequencies`` (the arg max of NaN logits is
    an arbitrary class, which would otherwise be certified).

    Args:
        base: a module mapping ``(B, *input_shape)`` to logits ``(B, num_classes)``; it is put in
            eval mode when sampling.
        num_classes: :math:`C >= 2`.
        sigma: the noise level :math:`\sigma > 0`, in input units.
        input_shape: the shape of one input (no batch dimension); when given, every single input
            ``x`` of ``predict``, ``certify``, ``certify_lvm`` and ``sample_counts`` must have
            exactly this shape. Without it, an ``x`` with a batch dimension is caught when the
            base model fails on, or returns the wrong shape for, its noisy copies.
    """

    def __init__(self, base: nn.Module, num_classes: int, sigma: float, *,
                 input_shape: tuple[int, ...] | None = None) -> None:
        if not isinstance(base, nn.Module):
            raise TypeError(f"base must be a torch.nn.Module, got {type(base).__name__}")
        self.base = base
        self.num_classes = _check_int(num_classes, "num_classes", 2)
        self.sigma = _check_sigma(sigma)
        self.input_shape = None if input_shape is None else _check_shape(input_shape, "input_shape")

    def __repr__(self) -> str:
        return f"Smooth(base={type(self.base).__name__}, num_classes={self.num_classes}, sigma={self.sigma})"

    # ----------------------------------------------------------------- sampling

    def _placement(self, x: Tensor) -> tuple[torch.device, torch.dtype]:
        for p in self.base.parameters():
            return p.device, (p.dtype if p.is_floating_point() else x.dtype)
        return x.device, x.dtype

    def _check_input(self, x, batched: bool) -> Tensor:
        """``x`` as one finite input (a batch ``(N, *input_shape)`` when ``batched``)."""
        if not isinstance(x, Tensor):
            what = "a batch of inputs (N, *input_shape)" if batched else "one input, without a batch dimension"
            raise TypeError(f"x must be a tensor ({what}), got {type(x).__name__}")
        if x.ndim == 0:
            raise ValueError(
                "x must have at least one dimension (one input of shape input_shape, without a batch "
                "dimension), got a 0-d tensor")
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError("x contains NaN or infinite entries: a smoothed classifier cannot certify them")
        if self.input_shape is not None:
            shape = tuple(x.shape[1:]) if batched else tuple(x.shape)
            if shape != self.input_shape:
                want = f"(N, {', '.join(map(str, self.input_shape))})" if batched else str(self.input_shape)
                raise ValueError(
                    f"x must have shape {want} (input_shape={self.input_shape}"
                    f"{'' if batched else ', no batch dimension'}), got {tuple(x.shape)}")
        return x

    def _noisy_logits(self, x: Tensor, num: int, batch_size: int, generator, progress: bool = False,
                      batched: bool = False):
        """Yield the base logits ``(b, C)`` of ``num`` noisy copies of ``x``, ``b <= batch_size``
        (with ``batched``, ``x`` is already a batch: one pass over ``x + noise``)."""
        x = self._check_input(x, batched)
        device, dtype = self._placement(x)
        if not dtype.is_floating_point:
            raise TypeError(f"the base model's parameters must be floating point to add noise, got {dtype}")
        x = x.to(device=device, dtype=dtype)
        if x.numel() and not bool(torch.isfinite(x).all()):
            raise ValueError(f"x overflows the base model's dtype {dtype} (largest entry {float(x.abs().max())})")
        if self.sigma * _SIGMA_HEADROOM > torch.finfo(dtype).max:
            raise ValueError(
                f"sigma={self.sigma} is too large for the base model's dtype {dtype}: Gaussian noise of that "
                f"scale overflows (largest finite value {torch.finfo(dtype).max:.3g})"
            )
        noise_device = generator.device if generator is not None else device
        shape = tuple(x.shape) if batched else (min(batch_size, num), *x.shape)
        buffer = torch.empty(shape, device=noise_device, dtype=dtype)
        what = "the batch x" if batched else "x (one input, without a batch dimension)"
        with eval_mode(self.base), tqdm(total=num, disable=not progress, desc="noise samples", leave=False) as bar:
            with torch.inference_mode():
                remaining, first = num, True
                while remaining > 0:
                    b = min(batch_size, remaining)
                    noise = (buffer if batched else buffer[:b]).normal_(0.0, self.sigma, generator=generator)
                    noise = noise.to(device)
                    noisy = noise.add_(x) if noise_device == device else noise + x
                    if not bool(torch.isfinite(noisy).all()):
                        raise ValueError(
                            f"x + noise is not finite in {dtype} (sigma={self.sigma}, largest |x| "
                            f"{float(x.abs().max())}): the noisy inputs overflow"
                        )
                    try:
                        logits = self.base(noisy)
                    except RuntimeError as error:
                        if not first:
                            raise
                        raise ValueError(
                            f"the base model failed on noisy copies of {what} of shape {tuple(x.shape)}, "
                            f"stacked to {tuple(noisy.shape)}: does x have the base's input shape? ({error})"
                        ) from error
                    rows = len(noise)
                    if not isinstance(logits, Tensor) or logits.ndim != 2 or logits.shape != (rows, self.num_classes):
                        got = tuple(logits.shape) if isinstance(logits, Tensor) else type(logits).__name__
                        raise ValueError(
                            f"base must return logits of shape (batch, num_classes={self.num_classes}) for inputs "
                            f"of shape {tuple(noise.shape)}, got {got}; {what} has shape {tuple(x.shape)}"
                        )
                    if not bool(torch.isfinite(logits).all()):
                        raise ValueError(
                            "base returned NaN or infinite logits on noisy copies of x: no class can be "
                            "certified from them (the arg max of NaN logits is arbitrary)"
                        )
                    first = False
                    yield logits
                    remaining -= b
                    bar.update(b)

    def sample_counts(
        self, x: Tensor, num: int, batch_size: int, *, generator: torch.Generator | None = None, progress: bool = False
    ) -> Tensor:
        """Votes of the base classifier over ``num`` noisy copies of ``x``: an int64 tensor ``(C,)``."""
        num, batch_size = _check_int(num, "num"), _check_int(batch_size, "batch_size")
        _check_generator(generator)
        progress = _check_progress(progress)
        counts = None
        for logits in self._noisy_logits(x, num, batch_size, generator, progress):
            votes = torch.bincount(logits.argmax(1), minlength=self.num_classes)
            counts = votes if counts is None else counts + votes
        return counts.cpu()

    def vote_frequencies(
        self, x: Tensor, n: int, batch_size: int, *, generator: torch.Generator | None = None, progress: bool = False
    ) -> Tensor:
        r"""Monte Carlo estimates of :math:`\mathbb{P}(f(x_i + \delta) = c)` for a batch of inputs.

        The smoothed classifier's soft output at many points at once (decision-region plots,
        the Weierstrass transform of the base classifier's indicator functions): ``n`` noisy
        copies of each point, several points per forward pass when ``n < batch_size``.

        Args:
            x: inputs ``(N, *input_shape)``.
            n: noise samples per point, >= 1. batch_size: noisy inputs per forward pass, >= 1.

        Returns:
            Frequencies ``(N, num_classes)``, float64, each row summing to 1.
        """
        n, batch_size = _check_int(n, "n"), _check_int(batch_size, "batch_size")
        _check_generator(generator)
        progress = _check_progress(progress)
        if not isinstance(x, Tensor) or x.ndim < 1 or len(x) == 0:
            raise ValueError("x must be a non-empty tensor of inputs (N, *input_shape)")
        if n > batch_size:
            rows = [self.sample_counts(p, n, batch_size, generator=generator) for p in tqdm(x, disable=not progress)]
            return torch.stack(rows).double() / n
        per_pass = batch_size // n
        rows = []
        for start in tqdm(range(0, len(x), per_pass), disable=not progress, desc="points", leave=False):
            chunk = x[start : start + per_pass]
            k = len(chunk)
            repeated = chunk.repeat_interleave(n, dim=0)
            (logits,) = list(self._noisy_logits(repeated, 1, 1, generator, batched=True))
            index = logits.argmax(1) + self.num_classes * torch.arange(k, device=logits.device).repeat_interleave(n)
            rows.append(torch.bincount(index, minlength=k * self.num_classes).reshape(k, self.num_classes).cpu())
        return torch.cat(rows).double() / n

    # ----------------------------------------------------------------- Cohen et al.

    def predict(
        self,
        x: Tensor,
        n: int,
        alpha: float,
        batch_size: int,
        *,
        generator: torch.Generator | None = None,
    ) -> int:
        r"""The smoothed prediction at ``x``, or :data:`ABSTAIN` (-1) when it is not significant.

        Draws ``n`` noisy samples and returns the top class :math:`c_A` when a two-sided binomial
        test of :math:`n_A` against :math:`n_A + n_B` at level 1/2 rejects equality at level
        ``alpha`` (``scipy.stats.binomtest``); then :math:`c_A = g(x)` with probability at least
        :math:`1 - \alpha` (Cohen et al., Theorem 2). Near a decision boundary it abstains.

        Args:
            x: one input, shape ``input_shape`` (no batch dimension).
            n: number of noise samples, >= 1.
            alpha: the probability of returning a wrong class, in (0, 1).
            batch_size: noisy copies per forward pass, >= 1.
            generator: the source of the noise (its device is where noise is drawn).
        """
        n, alpha, batch_size = _check_int(n, "n"), _check_alpha(alpha), _check_int(batch_size, "batch_size")
        counts = self.sample_counts(x, n, batch_size, generator=generator)
        top2 = counts.topk(2)
        n_a, n_b = int(top2.values[0]), int(top2.values[1])
        if _stats().binomtest(n_a, n_a + n_b, 0.5).pvalue > alpha:
            return ABSTAIN
        return int(top2.indices[0])

    def certify(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        *,
        base_lipschitz: float | None = None,
        soft_map: tuple[str, float] | None = None,
        multiclass: str = "complement",
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> tuple[int, float]:
        r"""Certify the smoothed prediction at ``x``: ``(class, radius)`` or ``(ABSTAIN, 0.0)``.

        ``n0`` samples choose the top class :math:`\hat c_A`; ``n`` fresh samples count its votes
        :math:`n_A`; :math:`\underline{p_A}` is the one-sided Clopper-Pearson bound at level
        ``alpha`` (:func:`clopper_pearson_lower`). If :math:`\underline{p_A} > 1/2` the result is
        :math:`(\hat c_A, \sigma\,\Phi^{-1}(\underline{p_A}))`, and with probability at least
        :math:`1 - \alpha` the smoothed classifier is :math:`\hat c_A` on the whole L2 ball of that
        radius [cohen2019certified]. The radius is at most :func:`max_certifiable_radius`.

        Soft votes and Lipschitz bases. The hard vote :math:`\mathbb{1}[\arg\max f(x) = c]` is
        not Lipschitz, so a Lipschitz network gains nothing from it. With ``soft_map=(kind, T)``
        each noisy sample instead votes for a class *drawn* from the probability vector
        :math:`h(x + \delta) = ` :func:`simplex_map` ``(f(x + delta), kind, T)``: the votes are
        exactly multinomial with probabilities :math:`F_c(x) = \mathbb{E}\, h_c(x + \delta)`, so
        Clopper-Pearson stays exact, and the certified classifier is :math:`\arg\max_c F_c`.
        With ``base_lipschitz=L`` (which needs ``soft_map``) the radius uses that every
        coordinate :math:`x \mapsto h_c(x)` is :math:`L`-Lipschitz in L2: it is
        :func:`lipschitz_aware_radius`, :math:`Q_{\sigma, L}(\underline{p_A})` instead of
        :math:`\sigma\Phi^{-1}(\underline{p_A})` [delattre2025bridging], never smaller, equal
        in the limit :math:`L \to \infty`. For a network whose logits are :math:`L_z`-Lipschitz,
        :func:`simplex_map_lipschitz` gives :math:`L` (softmax at temperature :math:`T`:
        :math:`\sqrt{2} L_z / (4T)`). A wrong ``base_lipschitz`` voids the guarantee.

        Several classes (``multiclass``): ``"complement"`` bounds the runner-up by
        :math:`1 - \underline{p_A}` (Cohen et al.); ``"partition"`` uses
        :func:`partition_bounds` on the selection and estimation counts (each bound at
        :math:`\alpha / k` for :math:`k` buckets) and returns :math:`\frac12(Q(\underline{p_A})
        - Q(\overline{p_B}))`, which certifies points whose top class has less than half the
        votes (e.g. for :math:`p = (0.45, 0.2, \dots)`).

        Args:
            x: one input, shape ``input_shape`` (no batch dimension).
            n0: selection samples, >= 1. n: estimation samples, >= 1.
            alpha: failure probability, in (0, 1).
            batch_size: noisy copies per forward pass, >= 1.
            base_lipschitz: an L2 Lipschitz constant of each coordinate of the soft output
                ``simplex_map(base(x), *soft_map)``, finite and > 0; None: Cohen et al.'s radius.
            soft_map: ``(kind, temperature)`` with ``kind`` ``"softmax"`` or ``"sparsemax"``
                (``"hardmax"`` is the vote) to vote from the soft output; None: hard votes.
            multiclass: ``"complement"`` or ``"partition"`` (``n0`` must then give at least a
                runner-up: any ``n0 >= 1`` works, ties broken by class index).
            generator: the source of the noise (and of the soft votes). progress: a bar over the
                ``n`` samples.
        """
        n0, n = _check_int(n0, "n0"), _check_int(n, "n")
        alpha, batch_size = _check_alpha(alpha), _check_int(batch_size, "batch_size")
        L = _check_lipschitz(base_lipschitz, "base_lipschitz", allow_none=True)
        soft = self._check_soft_map(soft_map, L)
        if not isinstance(multiclass, str) or multiclass not in ("complement", "partition"):
            raise ValueError(f"multiclass must be 'complement' or 'partition', got {multiclass!r}")
        _check_generator(generator)
        progress = _check_progress(progress)
        if soft is None:
            selection = self.sample_counts(x, n0, batch_size, generator=generator)
            counts = self.sample_counts(x, n, batch_size, generator=generator, progress=progress)
        else:
            selection = self._soft_counts(x, n0, batch_size, soft, generator, False)
            counts = self._soft_counts(x, n, batch_size, soft, generator, progress)
        if multiclass == "partition":
            top, p_a, p_b, _ = partition_bounds(selection, counts, alpha)
            radius = lipschitz_aware_radius(p_a, self.sigma, base_lipschitz=L, p_b=p_b)
            return (top, radius) if radius > 0 else (ABSTAIN, 0.0)
        c_hat = int(selection.argmax())
        p_lower = clopper_pearson_lower(int(counts[c_hat]), n, alpha)
        if p_lower <= 0.5:
            return ABSTAIN, 0.0
        if L is None:
            return c_hat, self.sigma * float(_stats().norm.ppf(p_lower))
        return c_hat, lipschitz_aware_radius(p_lower, self.sigma, base_lipschitz=L)

    def _check_soft_map(self, soft_map, L: float | None) -> tuple[str, float] | None:
        if soft_map is None:
            if L is not None:
                raise ValueError(
                    "base_lipschitz needs soft_map=(kind, temperature): the hard vote is not Lipschitz, the "
                    "constant must be that of each coordinate of simplex_map(base(x), kind, temperature)")
            return None
        if not isinstance(soft_map, (tuple, list)) or len(soft_map) != 2:
            raise ValueError(f"soft_map must be a (kind, temperature) pair or None, got {soft_map!r}")
        kind, temperature = _check_map(*soft_map, where="soft_map: ")
        if kind == "hardmax" and L is not None:
            raise ValueError("soft_map kind 'hardmax' (the vote) is not Lipschitz: base_lipschitz needs "
                             "'softmax' or 'sparsemax'")
        return kind, temperature

    def _soft_counts(self, x, num, batch_size, soft, generator, progress) -> Tensor:
        """Votes drawn from the soft outputs: one class per noisy copy, with probabilities
        ``simplex_map(logits, *soft)`` (computed in float64), by inverse transform sampling."""
        kind, temperature = soft
        counts = torch.zeros(self.num_classes, dtype=torch.int64)
        for logits in self._noisy_logits(x, num, batch_size, generator, progress):
            cdf = _simplex_map(logits.double(), kind, temperature).cumsum(1)
            u = torch.rand(len(logits), device=generator.device if generator is not None else logits.device,
                           dtype=torch.float64, generator=generator).to(logits.device)
            drawn = (cdf < u[:, None]).sum(1).clamp_max(self.num_classes - 1)
            counts += torch.bincount(drawn, minlength=self.num_classes).cpu()
        return counts

    # ----------------------------------------------------------------- Lipschitz-variance-margin

    def certify_lvm(
        self,
        x: Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        *,
        maps: Sequence[tuple[str, float]] = (("softmax", 1.0),),
        bound: str = "gaussian",
        choose_map: str = "union",
        generator: torch.Generator | None = None,
        progress: bool = False,
    ) -> tuple[int, float]:
        r"""Certify by averaging simplex-valued outputs with empirical Bernstein bounds.

        The smoothed map :math:`F(x) = \mathbb{E}\,\phi(f(x + \delta))`, with :math:`\phi` a map
        of the logits to the simplex (:func:`simplex_map`: softmax or sparsemax at temperature
        :math:`T`, or the hard vote), is estimated from ``n`` samples. For the class
        :math:`\hat c_A` chosen on ``n0`` separate samples, a lower bound :math:`\underline{p_A}`
        of :math:`F_{A}` and upper bounds of every other :math:`F_j` come from the empirical
        Bernstein inequality (:func:`empirical_bernstein_radius`; a union bound over the
        :math:`C` classes, so each has level :math:`\alpha / C`); :math:`\overline{p_B}` is the
        smaller of the largest upper bound and :math:`1 - \underline{p_A}`.

        Even with zero variance the Bernstein bound keeps a term :math:`7 \ln(2 m C/\alpha) /
        (3(n - 1))`, so :math:`\underline{p_A}` stays below :math:`1 - 7\ln(2mC/\alpha)/(3(n-1))`
        and the radius below :math:`\sigma\,\Phi^{-1}` of that, a cap lower than vote counting's
        :func:`max_certifiable_radius`: the gains are where the votes are split, not where
        they are unanimous.
        Delattre et al. [delattre2024lipschitz] show that the variance of :math:`\phi(f(x +
        \delta))` shrinks with the base classifier's Lipschitz constant and margin, and a small
        variance makes these bounds tight.

        The radius (``bound``):

        * ``"gaussian"``: :math:`\frac{\sigma}{2}(\Phi^{-1}(\underline{p_A}) -
          \Phi^{-1}(\overline{p_B}))`, valid because :math:`\Phi^{-1} \circ F_j` is
          :math:`1/\sigma`-Lipschitz for maps into [0, 1] [salman2019provably];
        * ``"lipschitz"``: the margin certificate of a Lipschitz map,
          :math:`(\underline{p_A} - \overline{p_B}) / (\sqrt{2} L)` with
          :math:`L = 1 / (\sigma\sqrt{\pi})`, the L2 Lipschitz constant of any Gaussian-smoothed
          map into the simplex; it equals the first one to first order near
          :math:`p = 1/2` and is never larger.

        Choosing among several ``maps`` (kinds and temperatures) after seeing the samples is a
        multiple test. With ``choose_map="union"`` each candidate is certified at level
        :math:`\alpha / m` for :math:`m` candidates on the ``n`` samples and the largest radius
        is returned, so the guarantee (probability at least :math:`1 - \alpha` that the returned
        radius is valid) survives the selection: ten maps cost a factor 10 in :math:`\alpha`.
        With ``choose_map="selection"`` the ``n0`` selection samples choose the map too (the one
        with the largest radius computed on them), and only that map is certified on the ``n``
        fresh samples, at the full level :math:`\alpha`: no union bound, since the choice does not
        depend on the estimation samples, but a choice made on fewer samples.

        Args:
            x, n0, n, alpha, batch_size, generator, progress: as :meth:`certify` (``n >= 2``).
            maps: ``(kind, temperature)`` pairs, ``kind`` in ``"softmax"``, ``"sparsemax"``,
                ``"hardmax"``.
            bound: ``"gaussian"`` or ``"lipschitz"``.
            choose_map: ``"union"`` or ``"selection"`` (``n0 >= 2``), as above.

        Returns:
            ``(class, radius)``, or ``(ABSTAIN, 0.0)`` when no candidate certifies a positive radius.
        """
        n0, n = _check_int(n0, "n0"), _check_int(n, "n", 2)
        alpha, batch_size = _check_alpha(alpha), _check_int(batch_size, "batch_size")
        progress = _check_progress(progress)
        if bound not in _BOUNDS:
            raise ValueError(f"bound must be one of {_BOUNDS}, got {bound!r}")
        if isinstance(maps, (str, tuple)) and len(maps) == 2 and isinstance(maps[0], str):
            maps = (maps,)
        if isinstance(maps, str) or not isinstance(maps, Sequence):
            raise ValueError(f"maps must be a non-empty sequence of (kind, temperature) pairs, got {maps!r}")
        maps = [_check_map(*m, where="maps: ") if isinstance(m, (tuple, list)) and len(m) == 2 else None
                for m in maps]
        if not maps or any(m is None for m in maps):
            raise ValueError("maps must be a non-empty sequence of (kind, temperature) pairs")
        _check_generator(generator)
        if choose_map not in ("union", "selection"):
            raise ValueError(f"choose_map must be 'union' or 'selection', got {choose_map!r}")
        if choose_map == "selection":
            if n0 < 2:
                raise ValueError(f"n0 must be >= 2 to choose a map on the selection samples, got {n0!r}")
            means, variances = self._map_moments(x, n0, batch_size, generator, [*maps, ("hardmax", 1.0)], False)
            c_hat = int(means[-1].argmax())  # the votes
            radii = self._lvm_radii(means[:-1], variances[:-1], n0, c_hat, alpha / self.num_classes, bound)
            maps = [maps[int(radii.argmax())]]
            level = alpha / self.num_classes
        else:
            c_hat = int(self.sample_counts(x, n0, batch_size, generator=generator).argmax())
            level = alpha / (len(maps) * self.num_classes)
        means, variances = self._map_moments(x, n, batch_size, generator, maps, progress)
        best = float(self._lvm_radii(means, variances, n, c_hat, level, bound).max())
        if not best > 0:
            return ABSTAIN, 0.0
        return c_hat, best

    def _map_moments(self, x, num, batch_size, generator, maps, progress) -> tuple[Tensor, Tensor]:
        """Sample means and unbiased variances ``(len(maps), C)`` of each map over ``num`` noisy copies."""
        sums = torch.zeros(len(maps), self.num_classes, dtype=torch.float64)
        squares = torch.zeros_like(sums)
        for logits in self._noisy_logits(x, num, batch_size, generator, progress):
            outputs = torch.stack([_simplex_map(logits, kind, t) for kind, t in maps]).double()
            sums += outputs.sum(1).cpu()
            squares += outputs.square().sum(1).cpu()
        means = sums / num
        return means, ((squares - num * means.square()) / (num - 1)).clamp_min(0)

    def _lvm_radii(self, means: Tensor, variances: Tensor, n: int, c_hat: int, level: float, bound: str) -> Tensor:
        """The certified radius of each map, every Bernstein bound at ``level``."""
        half = empirical_bernstein_radius(variances, n, level)
        p_a = (means[:, c_hat] - half[:, c_hat]).clamp(0, 1)
        upper = (means + half).clamp(0, 1)
        upper[:, c_hat] = -1.0
        p_b = torch.minimum(upper.max(1).values, 1 - p_a)
        if bound == "gaussian":
            return self.sigma / 2 * (_probit(p_a) - _probit(p_b))
        return (p_a - p_b) * self.sigma * math.sqrt(math.pi / 2)


def _probit(p: Tensor) -> Tensor:
    """Phi^{-1}, in float64, with Phi^{-1}(0) = -inf and Phi^{-1}(1) = inf."""
    return torch.special.ndtri(p.double())


class SmoothedFrequencies(nn.Module):
    """The smoothed classifier's estimated class probabilities as a module, ``(N, *input_shape)
    -> (N, C)`` (:meth:`Smooth.vote_frequencies`), so that plots made for logits (e.g.
    :func:`stabilitylab.plot.decision_boundary`) draw the smoothed classifier's regions.

    Args:
        smooth: the smoothed classifier. n: noise samples per input.
        batch_size: noisy inputs per forward pass. generator: the source of the noise.
    """

    def __init__(self, smooth: Smooth, n: int, *, batch_size: int = 65536,
                 generator: torch.Generator | None = None) -> None:
        super().__init__()
        if not isinstance(smooth, Smooth):
            raise TypeError(f"smooth must be a Smooth, got {type(smooth).__name__}")
        self.smooth = smooth
        self.n, self.batch_size = _check_int(n, "n"), _check_int(batch_size, "batch_size")
        self.generator = _check_generator(generator)

    def forward(self, x: Tensor) -> Tensor:
        return self.smooth.vote_frequencies(x, self.n, self.batch_size, generator=self.generator).to(x.dtype)


# --------------------------------------------------------------------------- data sets


@dataclass
class SmoothingResult:
    """Certificates of a smoothed classifier on a data set.

    Attributes:
        predictions: ``(N,)`` int64, the certified class or -1 (abstain).
        labels: ``(N,)`` int64.
        radii: ``(N,)`` float64, the certified L2 radius (0 on abstention).
        sigma, n, alpha: the settings the certificates hold for.
    """

    predictions: Tensor
    labels: Tensor
    radii: Tensor
    sigma: float
    n: int
    alpha: float

    @property
    def correct(self) -> Tensor:
        """Boolean ``(N,)``: certified and equal to the label."""
        return self.predictions == self.labels

    def certified_accuracy(self, eps: float | Sequence[float] | Tensor) -> float | Tensor:
        r"""Fraction of points predicted correctly with a radius larger than ``eps``.

        A float for a number ``eps``, a float64 tensor for a sequence or array (a certified
        accuracy curve), with the convention of :func:`stabilitylab.certify.accuracy_curve`
        (strict inequality; at ``eps = 0`` the accuracy of the smoothed classifier, abstentions
        counting as errors).
        """
        values, scalar = check_radii(eps)
        curve = accuracy_curve(torch.where(self.correct, self.radii, 0.0), values)
        return float(curve[0]) if scalar else curve

    def average_certified_radius(self) -> float:
        """ACR: the mean over all points of the radius when correct and 0 otherwise."""
        return float(torch.where(self.correct, self.radii, 0.0).mean())

    def abstention_rate(self) -> float:
        return float((self.predictions == ABSTAIN).double().mean())


def certify_dataset(
    smooth: Smooth,
    data,
    *,
    n0: int,
    n: int,
    alpha: float,
    batch_size: int,
    method: str = "cohen",
    base_lipschitz: float | None = None,
    soft_map: tuple[str, float] | None = None,
    multiclass: str = "complement",
    max_points: int | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    **lvm_options,
) -> SmoothingResult:
    """Certify every point of a data set with :meth:`Smooth.certify` (``method="cohen"``) or
    :meth:`Smooth.certify_lvm` (``method="lvm"``; ``lvm_options`` go to it).

    Args:
        smooth: the smoothed classifier.
        data: a Dataset, a DataLoader or an ``(inputs, labels)`` pair of tensors.
        n0, n, alpha, batch_size: as :meth:`Smooth.certify`.
        base_lipschitz, soft_map, multiclass: as :meth:`Smooth.certify` (``method="cohen"``
            only): Lipschitz-aware radii [delattre2025bridging] from votes drawn from the soft
            output, and the class-partition bounds.
        max_points: certify only the first ``max_points`` points.
        generator: the source of the noise.
        progress: a bar over the points; None shows it unless the environment variable
            ``TQDM_DISABLE`` is set.

    Returns:
        A :class:`SmoothingResult` (tensors on the CPU). Each point is moved to the base model's
        device when it is certified.
    """
    if not isinstance(smooth, Smooth):
        raise TypeError(f"smooth must be a Smooth, got {type(smooth).__name__}")
    if not isinstance(method, str) or method not in ("cohen", "lvm"):
        raise ValueError(f"method must be 'cohen' or 'lvm', got {method!r}")
    if lvm_options and method != "lvm":
        raise ValueError(f"options {sorted(lvm_options)} apply only to method='lvm'")
    L = _check_lipschitz(base_lipschitz, "base_lipschitz", allow_none=True)
    smooth._check_soft_map(soft_map, L)
    if not isinstance(multiclass, str) or multiclass not in ("complement", "partition"):
        raise ValueError(f"multiclass must be 'complement' or 'partition', got {multiclass!r}")
    cohen_options = dict(base_lipschitz=L, soft_map=soft_map, multiclass=multiclass)
    if method == "lvm" and (L is not None or soft_map is not None or multiclass != "complement"):
        raise ValueError("base_lipschitz, soft_map and multiclass apply only to method='cohen'")
    _check_int(n0, "n0")
    _check_int(n, "n", 2 if method == "lvm" else 1)
    _check_alpha(alpha)
    _check_int(batch_size, "batch_size")
    _check_generator(generator)
    progress = _check_progress(progress)
    if max_points is not None:
        _check_int(max_points, "max_points")
    _check_data(data, "data")
    predictions, labels, radii = [], [], []
    total = max_points if max_points is not None else (len(data[0]) if isinstance(data, tuple) else None)
    with tqdm(total=total, disable=not progress, desc=f"certify ({method})") as bar:
        for xb, yb in batches(data, batch_size=64):
            for x, y in zip(xb, yb):
                if max_points is not None and len(labels) >= max_points:
                    break
                if method == "cohen":
                    c, r = smooth.certify(x, n0, n, alpha, batch_size, generator=generator, **cohen_options)
                else:
                    c, r = smooth.certify_lvm(x, n0, n, alpha, batch_size, generator=generator, **lvm_options)
                predictions.append(c)
                labels.append(int(y))
                radii.append(r)
                bar.update(1)
            if max_points is not None and len(labels) >= max_points:
                break
    return SmoothingResult(
        predictions=torch.tensor(predictions, dtype=torch.int64),
        labels=torch.tensor(labels, dtype=torch.int64),
        radii=torch.tensor(radii, dtype=torch.float64),
        sigma=smooth.sigma,
        n=n,
        alpha=alpha,
    )


# --------------------------------------------------------------------------- training


class GaussianNoise(nn.Module):
    r"""Adds :math:`\mathcal{N}(0, \sigma^2 I)` noise to its input in training mode; the identity in eval mode.

    Put it in front of a base classifier (``nn.Sequential(GaussianNoise(sigma), model)``) to train
    with Gaussian data augmentation, which Cohen et al. [cohen2019certified] found necessary for
    the smoothed classifier to be accurate: the base model must classify noisy inputs well.
    Train with the same ``sigma`` that certification will use.

    Args:
        sigma: the noise level, > 0.
        generator: an optional source of the noise (on the inputs' device).
    """

    def __init__(self, sigma: float, *, generator: torch.Generator | None = None) -> None:
        super().__init__()
        self.sigma = _check_sigma(sigma)
        self.generator = _check_generator(generator)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training:
            return x
        noise = torch.empty_like(x).normal_(0.0, self.sigma, generator=self.generator)
        return x + noise

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"
