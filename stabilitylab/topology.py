r"""Certified robustness of topological representations: persistence, stable ranks, certificates.

A classifier of point clouds that reads the cloud only through its persistent homology inherits
the stability of persistence; composed with a Lipschitz vectorization and a 1-Lipschitz network
it is certifiably robust to moving the points [agerberg2025certifying].

The pipeline and its constants (each derived in the docstring that uses it):

1. Vietoris-Rips persistence (:func:`persistence_diagrams`, computed by ``ripser``). If every
   point of a cloud moves by at most :math:`\varepsilon` (Euclidean norm, per point), every
   pairwise distance moves by at most :math:`2\varepsilon` (triangle inequality), so every
   simplex's filtration value (its longest edge) moves by at most :math:`2\varepsilon`, and the
   bottleneck distance between the diagrams is at most :math:`2\varepsilon`
   [cohensteiner2007stability]; equivalently :math:`d_B \le 2 d_{GH} \le 2\varepsilon`
   [chazal2009gromov].
2. A contour (:class:`Contour`): a density :math:`f \ge 0` with :math:`F(x) = \int_0^x f`; a
   bar :math:`[b, d)` has length :math:`F(d) - F(b)`. Its stable rank (:func:`stable_rank`) is
   the smallest number of bars of a barcode within distance :math:`t`
   [chacholski2020metrics].
3. The vectorization :math:`v_m(D)` (:func:`sorted_half_lengths`): the :math:`m` largest
   half-lengths :math:`(F(d) - F(b))/2`, sorted and zero-padded (the jump points of the stable
   rank at :math:`p = q = \infty`); :math:`\|v_m(D) - v_m(D')\|_\infty \le \sup f \cdot
   d_B(D, D')`.
4. A network :math:`g` that is :math:`L`-Lipschitz in :math:`\ell_2`: each logit difference is
   :math:`\sqrt2 L`-Lipschitz, so the prediction is kept while
   :math:`\text{margin} > \sqrt2 L \|v(D) - v(D')\|_2`, and
   :math:`\|v(D) - v(D')\|_2 \le \sqrt m\, \sup f\, d_B \le \sqrt m\, \sup f \cdot 2\varepsilon`:
   the certified radius :func:`certified_radius`
   :math:`\varepsilon^* = \text{margin} / (2\sqrt2\, L \sqrt m \sup f)`, in units of point
   displacement.

:class:`TopologicalClassifier` puts 3 and 4 together (a :class:`StableRankVectorization`, one
learnable contour per homology dimension, and :func:`stabilitylab.models.lipschitz_mlp`) and
gives certified radii in float64. :func:`orbit` draws the linked twist map, whose orbits make
the ``orbits`` data set of :func:`stabilitylab.data.load_dataset` (ORBIT5K
[adams2017persistence]). :func:`perturb_clouds` and :func:`attack_clouds` move every point by at
most :math:`\varepsilon` (at random, or against the classifier, with the diagrams recomputed).

Persistence needs the optional extra ``topology`` (``ripser`` and ``persim``, MIT):
``pip install 'stabilitylab[topology]'``. Everything else (the orbits, contours, stable ranks,
vectorizations, certificates on given diagrams) works without it.

A diagram is a floating tensor of shape ``(K, 2)`` (rows ``(birth, death)``, finite,
``birth <= death``, ``K >= 0``); a batch of them, padded, has shape ``(..., K, 2)`` where rows
on the diagonal (``(0, 0)`` by :func:`pad_diagrams`) are padding: a bar of length 0 changes no
stable rank and no vectorization here.
"""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from tqdm import tqdm

from stabilitylab._checks import (
    check_generator,
    check_int,
    check_number,
    check_progress,
    check_tensor,
)
from stabilitylab._devices import model_device, model_dtype
from stabilitylab._modes import eval_mode

__all__ = [
    "orbit",
    "persistence_diagrams",
    "pad_diagrams",
    "bottleneck_distance",
    "Contour",
    "stable_rank",
    "sorted_half_lengths",
    "StableRankVectorization",
    "certified_radius",
    "TopologicalClassifier",
    "perturb_clouds",
    "attack_clouds",
]

_EXTRA_HINT = "pip install 'stabilitylab[topology]'"
_ROUNDING_ULPS = 64  # the margin allowance of stabilitylab.certify, in ulps of the largest logit
_RIPSER_UNIT = 2.0 ** -24  # ripser rounds every distance to float32


# ----------------------------------------------------------------------------- optional imports


def _ripser():
    try:
        from ripser import ripser
    except ImportError as exc:  # pragma: no cover - exercised by monkeypatching in the tests
        raise ImportError(
            f"computing persistence needs the optional package 'ripser': {_EXTRA_HINT}"
        ) from exc
    return ripser


def _persim_bottleneck():
    try:
        from persim import bottleneck
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            f"the bottleneck distance needs the optional package 'persim': {_EXTRA_HINT}"
        ) from exc
    return bottleneck


# ----------------------------------------------------------------------------- argument checks


def _check_diagram(diagram, name: str = "diagram", *, min_dims: int = 2) -> Tensor:
    """A finite floating ``(..., K, 2)`` tensor with ``birth <= death`` in every row (K may be 0)."""
    check_tensor(diagram, name, min_dims=min_dims, nonempty=False)
    if diagram.shape[-1] != 2:
        raise ValueError(f"{name} must have shape (..., K, 2) (rows (birth, death)), got {tuple(diagram.shape)}")
    if diagram.numel() and bool((diagram[..., 1] < diagram[..., 0]).any()):
        raise ValueError(f"{name} has a bar with death < birth")
    return diagram


def _check_exponent(value, name: str) -> float:
    """A number in ``[1, inf]`` (``math.inf`` allowed; NaN is not)."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [1, inf], got {value!r}")
    value = float(value)
    if math.isnan(value) or value < 1:
        raise ValueError(f"{name} must be a number in [1, inf], got {value!r}")
    return value


def _check_contour(contour, name: str = "contour"):
    if contour is not None and not isinstance(contour, Contour):
        raise TypeError(f"{name} must be a Contour or None, got {type(contour).__name__}")
    return contour


def _check_clouds(clouds, name: str = "clouds") -> Tensor:
    check_tensor(clouds, name, min_dims=2, max_dims=3)
    if clouds.shape[-2] < 1 or clouds.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one point of dimension >= 1, got shape {tuple(clouds.shape)}")
    return clouds


# ----------------------------------------------------------------------------- the orbits


def _orbits(r: Tensor, n_points: int, generator: torch.Generator | None) -> Tensor:
    """``(len(r), n_points, 2)`` float64 orbits, one per entry of ``r``, started uniformly."""
    device = r.device if generator is None else generator.device
    r = r.to(device=device, dtype=torch.float64)
    start = torch.rand(r.shape[0], 2, generator=generator, dtype=torch.float64, device=device)
    out = torch.empty(r.shape[0], n_points, 2, dtype=torch.float64, device=device)
    x, y = start[:, 0], start[:, 1]
    for k in range(n_points):
        out[:, k, 0], out[:, k, 1] = x, y
        x = torch.remainder(x + r * y * (1 - y), 1.0)
        y = torch.remainder(y + r * x * (1 - x), 1.0)
    return out


def orbit(
    r: float,
    n_points: int,
    *,
    n_orbits: int | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Orbits of the linked twist map, the ORBIT5K point clouds [adams2017persistence].

    .. math::

        x_{k+1} = x_k + r\, y_k (1 - y_k) \bmod 1, \qquad
        y_{k+1} = y_k + r\, x_{k+1} (1 - x_{k+1}) \bmod 1,

    started at :math:`(x_0, y_0)` uniform on the unit square: ``start = torch.rand(n, 2,
    generator=generator, dtype=torch.float64)`` (row ``i`` for orbit ``i``, on the generator's
    device), then iterated in float64. The orbit is the ``n_points`` points
    :math:`(x_0, y_0), \dots, (x_{n-1}, y_{n-1})` (the start included), so a shorter orbit is a
    prefix of a longer one from the same seed. For some :math:`r` the orbits fill the square
    chaotically, for others they stay on invariant circles around islands: persistent homology
    tells the values of :math:`r` apart (the data set uses :math:`r \in \{2.5, 3.5, 4, 4.1, 4.3\}`).

    Args:
        r: the twist parameter, a finite number > 0.
        n_points: the number of points of each orbit, ``>= 1``.
        n_orbits: None for one orbit ``(n_points, 2)``; an int ``>= 1`` for a batch
            ``(n_orbits, n_points, 2)`` of independent starts.
        generator: the ``torch.Generator`` of the starts (None: torch's global generator).

    Returns:
        float64 points in ``[0, 1)^2``, shape ``(n_points, 2)`` or ``(n_orbits, n_points, 2)``.

    Raises:
        TypeError: a non-number ``r``, non-int ``n_points``/``n_orbits``, a ``generator`` that
            is not a ``torch.Generator``.
        ValueError: ``r`` not finite and > 0, ``n_points < 1`` or ``n_orbits < 1``.

    References:
        [adams2017persistence], [agerberg2025certifying].
    """
    r = check_number(r, "r", minimum=0.0, strict=True)
    n_points = check_int(n_points, "n_points")
    count = 1 if n_orbits is None else check_int(n_orbits, "n_orbits")
    generator = check_generator(generator)
    out = _orbits(torch.full((count,), r, dtype=torch.float64), n_points, generator)
    return out[0] if n_orbits is None else out


# ----------------------------------------------------------------------------- persistence


def persistence_diagrams(
    clouds: Tensor,
    *,
    maxdim: int = 1,
    progress: bool | None = None,
) -> list[list[Tensor]] | list[Tensor]:
    r"""Vietoris-Rips persistence diagrams of point clouds (``ripser``, Euclidean distances).

    The filtration value of a simplex is its longest edge; homology with coefficients in
    :math:`\mathbb{Z}/2`. Only finite bars are returned: the one infinite bar of :math:`H_0`
    (the component that never dies) is dropped; every bar of :math:`H_k`, :math:`k \ge 1`, is
    finite for a finite cloud. Dropping it loses nothing that a perturbation could change: both
    clouds have exactly one infinite :math:`H_0` bar, born at 0, an optimal matching pairs the
    two at cost 0, so the bottleneck distance of the finite parts is at most that of the full
    diagrams, and the bound :math:`d_B \le 2\varepsilon` [cohensteiner2007stability]
    [chazal2009gromov] holds for what is returned.

    Rounding: ``ripser`` rounds the distances to float32, so a computed endpoint differs from
    the exact one by at most :math:`2^{-24}` times the cloud's diameter (about
    :math:`10^{-7}` for clouds in the unit square), and so does the computed diagram in
    bottleneck distance.

    Args:
        clouds: ``(n_points, dim)`` (one cloud) or ``(N, n_points, dim)`` (a batch), floating,
            finite; moved to the CPU for ``ripser``.
        maxdim: the largest homology dimension, an int ``>= 0``.
        progress: a progress bar over the clouds (None: unless ``TQDM_DISABLE`` is set).

    Returns:
        For one cloud, a list of ``maxdim + 1`` float64 tensors ``(K_k, 2)`` (``(birth, death)``
        rows of :math:`H_0, \dots, H_{maxdim}`); for a batch, a list of ``N`` such lists. On the
        clouds' device.

    Raises:
        ImportError: ``ripser`` is missing (install the extra: ``pip install
            'stabilitylab[topology]'``).
        TypeError, ValueError: bad ``clouds`` (not a floating 2-D/3-D tensor, NaN/Inf),
            ``maxdim`` not an int ``>= 0``, bad ``progress``.

    References:
        [cohensteiner2007stability], [chazal2009gromov].
    """
    _check_clouds(clouds)
    maxdim = check_int(maxdim, "maxdim", minimum=0)
    show = check_progress(progress)
    ripser = _ripser()
    single = clouds.ndim == 2
    batch = clouds[None] if single else clouds
    points = batch.detach().to("cpu", torch.float64).numpy()
    out = []
    for cloud in tqdm(points, desc="persistence", disable=not show, leave=False):
        dgms = ripser(cloud, maxdim=maxdim)["dgms"]
        diagrams = []
        for dgm in dgms:
            t = torch.as_tensor(dgm, dtype=torch.float64).reshape(-1, 2)
            diagrams.append(t[torch.isfinite(t[:, 1])].to(clouds.device))
        out.append(diagrams)
    return out[0] if single else out


def pad_diagrams(diagrams, *, n_bars: int | None = None, dtype: torch.dtype = torch.float64) -> Tensor:
    r"""Stack diagrams into one tensor, padded with bars ``(0, 0)`` of length 0.

    A padding bar lies on the diagonal, so it changes no stable rank, no vectorization
    (:math:`F(0) - F(0) = 0`) and no bottleneck distance: the padded tensor is the same
    diagram.

    Args:
        diagrams: a list of ``N`` lists of ``n_dims`` diagrams ``(K, 2)`` (what
            :func:`persistence_diagrams` returns for a batch), or a list of diagrams (one
            homology dimension).
        n_bars: the padded length ``K`` (default: the largest number of bars); must be at
            least the largest number of bars.
        dtype: a floating dtype of the result.

    Returns:
        ``(N, n_dims, K, 2)`` (or ``(N, K, 2)`` for a list of diagrams), on the first
        diagram's device.

    Raises:
        TypeError: not a (nested) list of tensors, a non-floating ``dtype``.
        ValueError: an empty list, ragged ``n_dims``, a bad diagram, ``n_bars`` too small.
    """
    if not isinstance(diagrams, Sequence) or isinstance(diagrams, (str, Tensor)) or len(diagrams) == 0:
        raise TypeError(f"diagrams must be a non-empty list of diagrams or of lists of diagrams, got {type(diagrams).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    nested = not isinstance(diagrams[0], Tensor)
    rows = [list(d) if nested else [d] for d in diagrams]
    if nested and any(not isinstance(d, Sequence) or isinstance(d, (str, Tensor)) for d in diagrams):
        raise TypeError("diagrams must be a list of diagrams or a list of lists of diagrams, not a mix")
    n_dims = len(rows[0])
    if n_dims == 0 or any(len(row) != n_dims for row in rows):
        raise ValueError("diagrams must hold the same (>= 1) number of homology dimensions for every cloud")
    for row in rows:
        for d in row:
            _check_diagram(d, "diagrams")
            if d.ndim != 2:
                raise ValueError(f"diagrams must hold (K, 2) tensors, got shape {tuple(d.shape)}")
    largest = max(d.shape[0] for row in rows for d in row)
    if n_bars is None:
        n_bars = largest
    else:
        n_bars = check_int(n_bars, "n_bars", minimum=0)
        if n_bars < largest:
            raise ValueError(f"n_bars must be at least the largest number of bars ({largest}), got {n_bars}")
    device = rows[0][0].device
    out = torch.zeros(len(rows), n_dims, n_bars, 2, dtype=dtype, device=device)
    for i, row in enumerate(rows):
        for k, d in enumerate(row):
            out[i, k, : d.shape[0]] = d.to(device=device, dtype=dtype)
    return out if nested else out[:, 0]


def bottleneck_distance(diagram_a: Tensor, diagram_b: Tensor) -> float:
    r"""The bottleneck distance of two diagrams (``persim.bottleneck``, :math:`\ell_\infty` ground metric).

    .. math:: d_B(D, D') = \inf_\gamma \sup_{x \in D} \|x - \gamma(x)\|_\infty

    over bijections :math:`\gamma` between :math:`D` and :math:`D'`, each augmented with the
    diagonal (a bar matched to the diagonal costs half its length). Padding bars on the
    diagonal do not change it.

    Args:
        diagram_a, diagram_b: ``(K, 2)`` diagrams (finite, ``birth <= death``; may be empty).

    Returns:
        The distance, a float.

    Raises:
        ImportError: ``persim`` is missing (``pip install 'stabilitylab[topology]'``).
        TypeError, ValueError: a bad diagram.

    References:
        [cohensteiner2007stability].
    """
    a = _check_diagram(diagram_a, "diagram_a")
    b = _check_diagram(diagram_b, "diagram_b")
    if a.ndim != 2:
        raise ValueError(f"diagram_a must have shape (K, 2), got {tuple(a.shape)}")
    if b.ndim != 2:
        raise ValueError(f"diagram_b must have shape (K, 2), got {tuple(b.shape)}")
    bottleneck = _persim_bottleneck()
    a = a[a[:, 1] > a[:, 0]].detach().to("cpu", torch.float64).numpy()
    b = b[b[:, 1] > b[:, 0]].detach().to("cpu", torch.float64).numpy()
    if len(a) == 0 and len(b) == 0:
        return 0.0
    if len(a) == 0 or len(b) == 0:  # everything matched to the diagonal
        rest = a if len(a) else b
        return float((rest[:, 1] - rest[:, 0]).max() / 2)
    return float(bottleneck(a, b))


# ----------------------------------------------------------------------------- contours


_SQRT_2PI = math.sqrt(2 * math.pi)


class Contour(nn.Module):
    r"""A learnable contour: a density :math:`f \ge 0` and its integral :math:`F`, :math:`F(0) = 0`.

    .. math::

        F(x) = c_0 x + \sum_{k=1}^K w_k \Bigl[\Phi\Bigl(\frac{x - \mu_k}{s_k}\Bigr)
               - \Phi\Bigl(-\frac{\mu_k}{s_k}\Bigr)\Bigr], \qquad
        f(x) = F'(x) = c_0 + \sum_k \frac{w_k}{s_k}\, \varphi\Bigl(\frac{x - \mu_k}{s_k}\Bigr),

    with :math:`\Phi, \varphi` the standard normal distribution function and density,
    :math:`c_0 = \operatorname{softplus}(\cdot) > 0`, :math:`w_k = \operatorname{softplus}(\cdot)
    \ge 0`, :math:`s_k = \operatorname{softplus}(\cdot) > 0` and free centres :math:`\mu_k`. So
    :math:`f > 0`, :math:`F` is strictly increasing, :math:`F(0) = 0` exactly, and since
    :math:`\varphi \le 1/\sqrt{2\pi}`,

    .. math:: \operatorname{Lip}(F) = \sup f \le c_0 + \sum_k \frac{w_k}{s_k \sqrt{2\pi}}
              \quad (:meth:`sup_f`),

    attained when the Gaussians share their centre. A bar :math:`[b, d)` has length
    :math:`F(d) - F(b)` [chacholski2020metrics] [agerberg2025certifying]; with ``n_components=0``
    it is :math:`c_0 (d - b)`.

    Args:
        n_components: the number :math:`K \ge 0` of Gaussian bumps.
        x_max: the scale of the filtration values (the largest death one expects): the centres
            start evenly spaced in :math:`(0, x_{max})` with widths :math:`x_{max}/(K+1)`.
        slope: the initial :math:`c_0 > 0`.
        weight: the initial :math:`w_k \ge 0`, as a fraction of ``slope * x_max`` (the total
            length the bumps add).

    Raises:
        TypeError, ValueError: a bad size or scale.
    """

    def __init__(self, n_components: int = 4, *, x_max: float = 1.0, slope: float = 1.0,
                 weight: float = 0.25) -> None:
        super().__init__()
        n = check_int(n_components, "n_components", minimum=0)
        x_max = check_number(x_max, "x_max", minimum=0.0, strict=True)
        slope = check_number(slope, "slope", minimum=0.0, strict=True)
        weight = check_number(weight, "weight", minimum=0.0, strict=True)
        self.n_components = n
        self.raw_slope = nn.Parameter(torch.tensor(_softplus_inverse(slope)))
        mu = (torch.arange(n, dtype=torch.float32) + 1) * x_max / (n + 1)
        self.mu = nn.Parameter(mu)
        self.raw_width = nn.Parameter(torch.full((n,), _softplus_inverse(x_max / (n + 1))))
        self.raw_weight = nn.Parameter(torch.full((n,), _softplus_inverse(weight * slope * x_max / max(n, 1))))

    def _values(self, dtype: torch.dtype, device: torch.device):
        """``(c0, w, mu, s)`` in ``dtype`` on ``device`` (differentiable)."""
        softplus = nn.functional.softplus
        cast = dict(dtype=dtype, device=device)
        return (softplus(self.raw_slope).to(**cast), softplus(self.raw_weight).to(**cast), self.mu.to(**cast),
                softplus(self.raw_width).to(**cast))

    def F(self, x: Tensor) -> Tensor:
        """:math:`F(x)` elementwise, in ``x``'s dtype (differentiable in ``x`` and the parameters)."""
        check_tensor(x, "x", nonempty=False)
        c0, w, mu, s = self._values(x.dtype, x.device)
        out = c0 * x
        if self.n_components:
            z = (x[..., None] - mu) / s
            out = out + (w * (torch.special.ndtr(z) - torch.special.ndtr(-mu / s))).sum(-1)
        return out

    def f(self, x: Tensor) -> Tensor:
        """The density :math:`f(x) = F'(x) > 0` elementwise."""
        check_tensor(x, "x", nonempty=False)
        c0, w, mu, s = self._values(x.dtype, x.device)
        out = c0 * torch.ones_like(x)
        if self.n_components:
            z = (x[..., None] - mu) / s
            out = out + (w / s * torch.exp(-0.5 * z * z) / _SQRT_2PI).sum(-1)
        return out

    def sup_f(self) -> Tensor:
        r"""The bound :math:`c_0 + \sum_k w_k / (s_k \sqrt{2\pi}) \ge \sup f = \operatorname{Lip}(F)`
        (0-dim, float64, differentiable in the parameters)."""
        c0, w, _, s = self._values(torch.float64, self.mu.device)
        return c0 + (w / (s * _SQRT_2PI)).sum()

    def forward(self, x: Tensor) -> Tensor:
        return self.F(x)

    def extra_repr(self) -> str:
        return f"n_components={self.n_components}"


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))


def _lengths(diagram: Tensor, contour: Contour | None) -> Tensor:
    if contour is None:
        return diagram[..., 1] - diagram[..., 0]
    return (contour.F(diagram[..., 1]) - contour.F(diagram[..., 0])).clamp_min(0)


# ----------------------------------------------------------------------------- stable ranks


def stable_rank(
    diagram: Tensor,
    t,
    *,
    p: float = math.inf,
    q: float = math.inf,
    contour: Contour | None = None,
) -> Tensor:
    r"""The stable rank of a barcode: the fewest bars of a barcode within distance ``t``.

    With contour lengths :math:`\ell_i = F(d_i) - F(b_i)` and the cost
    :math:`c_q \ell` of matching a bar to the diagonal in the :math:`\ell_q` ground metric,
    :math:`c_q = 2^{(1-q)/q}` (the :math:`\ell_q` distance from :math:`(0, \ell)` to the diagonal
    point :math:`(\ell/2, \ell/2)`; :math:`c_\infty = 1/2`), and the :math:`p`-Wasserstein
    distance,

    .. math::

        \widehat{\mathrm{rank}}(t) = \min\{\mathrm{rank}(D') : W_p(D, D') \le t\}
        = n - \max\{k : c_q\, (\ell_{(1)}^p + \dots + \ell_{(k)}^p)^{1/p} \le t\},

    :math:`\ell_{(1)} \le \ell_{(2)} \le \dots` sorted, and for :math:`p = \infty`,
    :math:`\widehat{\mathrm{rank}}(t) = \#\{i : c_q \ell_i > t\}` [chacholski2020metrics].
    Proof: a matching of :math:`D` with :math:`D'` leaves unmatched (sends to the diagonal) a
    set :math:`S` of bars, at cost at least :math:`c_q (\sum_{S} \ell^p)^{1/p}`, and
    :math:`D'` has at least :math:`n - |S|` bars; deleting :math:`S` attains both, and the
    largest set within a budget is made of the shortest bars. A non-increasing step function
    of :math:`t`.

    Args:
        diagram: ``(K, 2)`` (or ``(..., K, 2)``: a stable rank per diagram), finite,
            ``birth <= death``; bars of length 0 count as absent.
        t: a number or a tensor of values ``>= 0``.
        p: the Wasserstein exponent in ``[1, inf]``.
        q: the ground metric's exponent in ``[1, inf]``.
        contour: a :class:`Contour` (None: :math:`F(x) = x`).

    Returns:
        int64 ranks of shape ``diagram.shape[:-2] + t.shape``.

    Raises:
        TypeError, ValueError: a bad diagram, ``t`` (NaN, negative, not a number or tensor),
            ``p`` or ``q`` outside ``[1, inf]``, a ``contour`` that is not a :class:`Contour`.

    References:
        [chacholski2020metrics].
    """
    _check_diagram(diagram)
    p = _check_exponent(p, "p")
    q = _check_exponent(q, "q")
    _check_contour(contour)
    if isinstance(t, Tensor):
        check_tensor(t, "t", nonempty=False)
        t = t.detach().to(device=diagram.device, dtype=torch.float64)
    else:
        t = torch.tensor(check_number(t, "t", minimum=0.0), dtype=torch.float64, device=diagram.device)
    if t.numel() and bool((t < 0).any()):
        raise ValueError("t must hold values >= 0")
    with torch.no_grad():
        if diagram.shape[-2] == 0:
            return torch.zeros(*diagram.shape[:-2], *t.shape, dtype=torch.int64, device=diagram.device)
        ell = _lengths(diagram.to(torch.float64), contour)  # (..., K)
        ell = torch.where(ell > 0, ell, torch.zeros_like(ell))
        n = (ell > 0).sum(-1)  # (...,)
        c_q = 0.5 if math.isinf(q) else 2.0 ** ((1 - q) / q)
        if math.isinf(p):
            costs = c_q * ell  # deleting every bar of cost <= t is free of the others
            deletable = (costs[..., None] <= t.reshape(1, -1)) & (ell[..., None] > 0)
            kept = n[..., None] - deletable.sum(-2)
        else:
            srt = torch.sort(ell, dim=-1).values
            top = srt.amax(-1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
            cum = torch.cumsum((srt / top) ** p, dim=-1)  # scaled by the largest length: no overflow
            costs = c_q * top * cum ** (1.0 / p)  # (..., K): cost of deleting the k + 1 shortest
            costs = torch.where(srt > 0, costs, torch.zeros_like(costs))
            deletable = (costs[..., None] <= t.reshape(1, -1)) & (srt[..., None] > 0)
            kept = n[..., None] - deletable.sum(-2)  # costs increase with k: a prefix is deletable
        return kept.reshape(tuple(diagram.shape[:-2]) + tuple(t.shape)).to(torch.int64)


def sorted_half_lengths(diagram: Tensor, m: int, contour: Contour | None = None) -> Tensor:
    r"""The vectorization :math:`v_m(D)`: the ``m`` largest half-lengths, sorted, zero-padded.

    .. math:: v_m(D) = \bigl(h_{(1)}, \dots, h_{(m)}\bigr), \qquad
              h_i = \tfrac12 (F(d_i) - F(b_i)), \quad h_{(1)} \ge h_{(2)} \ge \dots \ge 0,

    with :math:`h_{(k)} = 0` beyond the number of bars. These are the jump points of the stable
    rank at :math:`p = q = \infty`: :math:`\widehat{\mathrm{rank}}(t) = \#\{k : h_{(k)} > t\}`.

    Lipschitz bound: :math:`\|v_m(D) - v_m(D')\|_\infty \le \sup f \cdot d_B(D, D')`.
    Proof: take a matching of cost :math:`\delta = d_B`. A matched pair has
    :math:`|b - b'|, |d - d'| \le \delta`, so its half-lengths differ by at most
    :math:`\frac12(|F(d) - F(d')| + |F(b) - F(b')|) \le \sup f\, \delta`; a bar matched to the
    diagonal has :math:`(d - b)/2 \le \delta`, so :math:`h \le \sup f\, \delta`, within
    :math:`\sup f\, \delta` of a padding zero. Padded with zeros to a common size, the two
    multisets are in a bijection moving each entry by at most :math:`\sup f\,\delta`, and then
    so does sorting (the :math:`k`-th largest of each is within that of the other's), and
    keeping the first :math:`m`. The constant is attained (one bar :math:`[0, 2\delta)` against
    none, :math:`f = 1`). In :math:`\ell_2` it costs :math:`\sqrt m`.

    Args:
        diagram: ``(..., K, 2)`` diagrams (padding rows on the diagonal are ignored).
        m: the length of the vector, ``>= 1``.
        contour: a :class:`Contour` (None: :math:`F(x) = x`); differentiable in its parameters.

    Returns:
        ``(..., m)`` in the diagram's dtype.

    Raises:
        TypeError, ValueError: a bad diagram, ``m``, or ``contour``.

    References:
        [chacholski2020metrics], [agerberg2025certifying].
    """
    _check_diagram(diagram)
    m = check_int(m, "m")
    _check_contour(contour)
    h = 0.5 * _lengths(diagram, contour)  # (..., K)
    k = min(m, h.shape[-1])
    top = torch.topk(h, k, dim=-1).values if k else h[..., :0]
    if k < m:
        top = torch.cat([top, top.new_zeros(*top.shape[:-1], m - k)], dim=-1)
    return top


class StableRankVectorization(nn.Module):
    r"""Learnable vectorization of diagrams: :math:`v_m` of each homology dimension, concatenated.

    Input ``(N, n_dims, K, 2)`` (padded diagrams, :func:`pad_diagrams`), output
    ``(N, n_dims * m)``: for each dimension :math:`k`, :func:`sorted_half_lengths` with its own
    :class:`Contour` :math:`F_k`. Differentiable in the contours' parameters.

    Lipschitz constant: if every dimension's diagram moves by at most :math:`\delta` in
    bottleneck distance, :math:`\|\Delta v\|_\infty \le \max_k \sup f_k\, \delta` and

    .. math:: \|\Delta v\|_2 \le \Bigl(\sum_k m\, (\sup f_k)^2\Bigr)^{1/2} \delta
              \quad (:meth:`lipschitz`, the :math:`\sqrt m \sup f` of one dimension).

    Args:
        m: the entries per homology dimension.
        n_dims: the number of homology dimensions (2 for :math:`H_0, H_1`).
        n_components, x_max: of each :class:`Contour`.
    """

    def __init__(self, m: int = 16, *, n_dims: int = 2, n_components: int = 4, x_max: float = 1.0) -> None:
        super().__init__()
        self.m = check_int(m, "m")
        self.n_dims = check_int(n_dims, "n_dims")
        self.contours = nn.ModuleList(Contour(n_components, x_max=x_max) for _ in range(self.n_dims))

    @property
    def out_features(self) -> int:
        return self.m * self.n_dims

    def forward(self, diagrams: Tensor) -> Tensor:
        _check_diagram(diagrams, "diagrams", min_dims=3)
        if diagrams.ndim != 4 or diagrams.shape[1] != self.n_dims:
            raise ValueError(
                f"diagrams must have shape (N, {self.n_dims}, K, 2) (padded diagrams per homology dimension), "
                f"got {tuple(diagrams.shape)}")
        parts = [sorted_half_lengths(diagrams[:, k], self.m, c) for k, c in enumerate(self.contours)]
        return torch.cat(parts, dim=-1)

    def sup_f(self) -> Tensor:
        """``(n_dims,)`` float64 bounds of :math:`\\sup f_k` (:meth:`Contour.sup_f`)."""
        return torch.stack([c.sup_f() for c in self.contours])

    def lipschitz(self) -> Tensor:
        r""":math:`(\sum_k m (\sup f_k)^2)^{1/2}`: a bound of :math:`\|\Delta v\|_2 / \max_k d_B` (float64)."""
        return torch.sqrt(self.m * (self.sup_f() ** 2).sum())


# ----------------------------------------------------------------------------- certificates


def _as_vector(value, name: str, *, integer: bool) -> list[float]:
    values = value.tolist() if isinstance(value, Tensor) and value.ndim == 1 else value
    if isinstance(values, Sequence) and not isinstance(values, str):
        if len(values) == 0:
            raise ValueError(f"{name} must not be empty")
        items = list(values)
    else:
        items = [value]
    if integer:
        return [float(check_int(v, name)) for v in items]
    return [check_number(v, name, minimum=0.0, strict=True) for v in items]


def certified_radius(margin, lipschitz, m, sup_f) -> Tensor:
    r"""Certified radius, in point displacement, of a classifier of Vietoris-Rips diagrams.

    .. math::

        \varepsilon^* = \frac{\text{margin}}{2\sqrt2\, L \sqrt{\sum_k m_k (\sup f_k)^2}}
        \;\Bigl(= \frac{\text{margin}}{2\sqrt2\, L \sqrt m \sup f} \text{ for one dimension}\Bigr),

    where the margin is :math:`z_y - \max_{j \ne y} z_j` of a network that is :math:`L`-Lipschitz
    in :math:`\ell_2` on the vectorization. If every point moves by at most
    :math:`\varepsilon < \varepsilon^*`, every diagram moves by :math:`d_B \le 2\varepsilon`
    [chazal2009gromov], the vectorization by
    :math:`\|\Delta v\|_2 \le \sqrt{\sum_k m_k \|\Delta v_k\|_\infty^2} \le
    \sqrt{\sum_k m_k (\sup f_k)^2}\, 2\varepsilon` (:func:`sorted_half_lengths`), and each logit
    difference :math:`z_y - z_j` by at most :math:`\|e_y - e_j\|_2 L \|\Delta v\|_2 =
    \sqrt2 L \|\Delta v\|_2` < margin [tsuzuku2018lipschitz]: the prediction stays.

    Args:
        margin: a number or tensor of margins (values ``<= 0`` give radius 0).
        lipschitz: :math:`L > 0`, the network's :math:`\ell_2` constant.
        m: the vector length per homology dimension: an int, or one per dimension.
        sup_f: :math:`\sup f > 0` of the contour: a number, or one per dimension (as many as ``m``;
            an int ``m`` with several ``sup_f`` uses it for every dimension).

    Returns:
        float64 radii ``>= 0`` of ``margin``'s shape.

    Raises:
        TypeError, ValueError: NaN/Inf margins, a non-positive ``lipschitz`` or ``sup_f``,
            ``m < 1``, mismatched lengths.

    References:
        [agerberg2025certifying], [chazal2009gromov], [tsuzuku2018lipschitz].
    """
    if isinstance(margin, Tensor):
        check_tensor(margin, "margin", nonempty=False)
        margin = margin.detach().to(torch.float64)
    else:
        margin = torch.tensor(check_number(margin, "margin"), dtype=torch.float64)
    L = check_number(lipschitz, "lipschitz", minimum=0.0, strict=True)
    ms = _as_vector(m, "m", integer=True)
    sups = _as_vector(sup_f, "sup_f", integer=False)
    if len(ms) == 1 and len(sups) > 1:
        ms = ms * len(sups)
    if len(ms) != len(sups):
        raise ValueError(f"m and sup_f must have the same length (one per homology dimension), got {len(ms)} and {len(sups)}")
    K = math.sqrt(sum(mk * sk * sk for mk, sk in zip(ms, sups)))
    radius = margin / (2.0 * math.sqrt(2.0) * L * K)
    return radius.clamp_min(0.0)


class TopologicalClassifier(nn.Module):
    r"""A certifiable classifier of point clouds' diagrams: a :class:`StableRankVectorization`
    followed by a 1-Lipschitz perceptron (:func:`stabilitylab.models.lipschitz_mlp`)
    [agerberg2025certifying].

    Input: padded diagrams ``(N, n_dims, K, 2)`` (:func:`pad_diagrams` of
    :func:`persistence_diagrams` with ``maxdim = n_dims - 1``); output: logits
    ``(N, num_classes)``. Trains with :func:`stabilitylab.train.fit` on ``(diagrams, labels)``;
    the contours learn with the network. :meth:`certified_radii` gives the radii of
    :func:`certified_radius` computed in float64.

    Args:
        num_classes: the number of classes.
        m: entries of the vectorization per homology dimension.
        n_dims: homology dimensions used (2: :math:`H_0` and :math:`H_1`).
        hidden, layer, group_size: of :func:`stabilitylab.models.lipschitz_mlp`.
        n_components, x_max: of each :class:`Contour`.
        generator: seeds the network's initialization.
    """

    def __init__(self, num_classes: int, *, m: int = 16, n_dims: int = 2, hidden: Sequence[int] = (64, 64),
                 layer: str = "spectral", group_size: int = 2, n_components: int = 4, x_max: float = 1.0,
                 generator: torch.Generator | None = None) -> None:
        from stabilitylab import models

        super().__init__()
        self.vectorization = StableRankVectorization(m, n_dims=n_dims, n_components=n_components, x_max=x_max)
        self.network = models.lipschitz_mlp(self.vectorization.out_features, num_classes, hidden=hidden,
                                            layer=layer, group_size=group_size, generator=generator)
        self.num_classes = check_int(num_classes, "num_classes", minimum=2)

    def forward(self, diagrams: Tensor) -> Tensor:
        dtype = model_dtype(self.network)
        return self.network(self.vectorization(diagrams.to(dtype)))

    def network_lipschitz(self) -> float:
        """A certified :math:`\\ell_2` bound of the network's constant (:func:`stabilitylab.lipschitz.upper_bound`)."""
        from stabilitylab import lipschitz

        with eval_mode(self):
            return float(lipschitz.upper_bound(self.network, (self.vectorization.out_features,)))

    def certified_radii(self, diagrams: Tensor, labels: Tensor, *, persistence_error: float = 0.0) -> Tensor:
        r"""Certified radii (point displacement) of the predictions, 0 where wrong.

        Computed in float64 on a float64 copy of the model: the margin
        :math:`z_y - \max_{j\ne y} z_j` less the rounding allowance of
        :func:`stabilitylab.certify.certified_radius` (:math:`64\,\epsilon_{64} \max|z|`), then
        :func:`certified_radius` with :math:`L` from :meth:`network_lipschitz` and the
        contours' :math:`\sup f_k`, less ``persistence_error``.

        ``persistence_error`` :math:`e` bounds the bottleneck error of every computed diagram
        (for ``ripser``: :math:`2^{-24}` times the cloud's diameter plus :math:`2\varepsilon`,
        see :func:`persistence_diagrams`). The certificate then covers computed diagrams:
        :math:`d_B(\tilde D, \tilde D') \le 2\varepsilon + 2e`, so the radius is
        :math:`\varepsilon^* - e`.

        Args:
            diagrams: ``(N, n_dims, K, 2)`` padded diagrams.
            labels: ``(N,)`` int64 class indices.
            persistence_error: :math:`e \ge 0`.

        Returns:
            ``(N,)`` float64 radii on the model's device.
        """
        _check_diagram(diagrams, "diagrams", min_dims=4)
        if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32):
            raise TypeError("labels must be an int64 tensor of class indices")
        if labels.shape != diagrams.shape[:1]:
            raise ValueError(f"labels must have shape ({diagrams.shape[0]},), got {tuple(labels.shape)}")
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes})")
        e = check_number(persistence_error, "persistence_error", minimum=0.0)
        device = model_device(self)
        model64 = copy.deepcopy(self).to(torch.float64)
        with eval_mode(model64), torch.no_grad():
            z = model64(diagrams.to(device=device, dtype=torch.float64))
            sup_f = model64.vectorization.sup_f()
        labels = labels.to(device)
        true = z.gather(1, labels[:, None])[:, 0]
        others = z.scatter(1, labels[:, None], -math.inf).amax(1)
        allowance = _ROUNDING_ULPS * torch.finfo(torch.float64).eps * z.abs().amax(1)
        margin = true - others - allowance
        radius = certified_radius(margin, self.network_lipschitz(), self.vectorization.m, sup_f.tolist())
        radius = (radius.to(device) - e).clamp_min(0.0)
        return torch.where(margin > 0, radius, torch.zeros_like(radius))


# ----------------------------------------------------------------------------- perturbations


def _per_point_project(delta: Tensor, eps: float) -> Tensor:
    norms = delta.norm(dim=-1, keepdim=True)
    return delta * torch.clamp(eps / norms.clamp_min(1e-300), max=1.0)


def perturb_clouds(clouds: Tensor, eps: float, *, generator: torch.Generator | None = None) -> Tensor:
    r"""Move every point by exactly ``eps`` (Euclidean) in an independent uniform direction.

    The boundary of the threat model :math:`\max_i \|x_i' - x_i\|_2 \le \varepsilon`: pairwise
    distances move by at most :math:`2\varepsilon`, and so do the diagrams in bottleneck
    distance.

    Args:
        clouds: ``(n_points, dim)`` or ``(N, n_points, dim)``, floating, finite.
        eps: the displacement, ``>= 0``.
        generator: of the directions (on the clouds' device; None: the global generator).

    Returns:
        The perturbed clouds, same shape, dtype and device.

    Raises:
        TypeError, ValueError: bad ``clouds``, ``eps``, ``generator``.
    """
    _check_clouds(clouds)
    eps = check_number(eps, "eps", minimum=0.0)
    generator = check_generator(generator)
    direction = torch.randn(clouds.shape, generator=generator, dtype=torch.float64,
                            device=clouds.device if generator is None else generator.device).to(clouds.device)
    direction = direction / direction.norm(dim=-1, keepdim=True).clamp_min(1e-300)
    return (clouds.to(torch.float64) + eps * direction).to(clouds.dtype)


def _edge_lookup(points, values):
    """For each filtration value, the pair (i, j) whose float32-rounded distance is nearest."""
    import numpy as np
    from scipy.spatial.distance import pdist

    n = points.shape[0]
    d32 = pdist(points).astype(np.float32).astype(np.float64)
    order = np.argsort(d32, kind="stable")
    srt = d32[order]
    pos = np.clip(np.searchsorted(srt, values), 1, len(srt) - 1) if len(srt) > 1 else np.zeros(len(values), int)
    left = srt[pos - 1] if len(srt) > 1 else srt[pos]
    pick = np.where(np.abs(values - left) <= np.abs(srt[pos] - values), pos - 1, pos) if len(srt) > 1 else pos
    flat = order[pick]
    i, j = np.triu_indices(n, k=1)
    return i[flat], j[flat]


def _differentiable_diagrams(cloud: Tensor, maxdim: int, ripser) -> list[Tensor]:
    """The cloud's diagrams as functions of its points: each nonzero endpoint is the length of
    the edge that creates or kills the class (a Vietoris-Rips filtration value is an edge length),
    found by value; locally (away from ties) the diagram is this function of the points."""
    import numpy as np

    pts = cloud.detach().to("cpu", torch.float64).numpy()
    out = []
    for dgm in ripser(pts, maxdim=maxdim)["dgms"]:
        dgm = np.asarray(dgm, dtype=np.float64).reshape(-1, 2)
        dgm = dgm[np.isfinite(dgm[:, 1])]
        values = dgm.reshape(-1)
        nonzero = values > 0
        endpoints = torch.zeros(values.shape[0], dtype=cloud.dtype, device=cloud.device)
        if nonzero.any():
            i, j = _edge_lookup(pts, values[nonzero])
            idx = torch.as_tensor(np.flatnonzero(nonzero), device=cloud.device)
            ii = torch.as_tensor(i, device=cloud.device)
            jj = torch.as_tensor(j, device=cloud.device)
            endpoints = endpoints.index_put((idx,), (cloud[ii] - cloud[jj]).norm(dim=-1))
        out.append(endpoints.reshape(-1, 2))
    return out


def attack_clouds(
    model: nn.Module,
    clouds: Tensor,
    labels: Tensor,
    eps: float,
    *,
    n_iter: int = 10,
    step_size: float | None = None,
    maxdim: int = 1,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> Tensor:
    r"""Adversarial point perturbations of at most ``eps`` per point, through recomputed diagrams.

    Projected gradient descent on the margin :math:`z_y - \max_{j\ne y} z_j` of
    ``model(pad_diagrams(persistence_diagrams(cloud)))``. The gradient of a diagram with respect
    to the points: every finite endpoint of a Vietoris-Rips bar is the length of one edge
    :math:`\|x_i - x_j\|` (the edge that creates or kills the class), found by value among the
    pairwise distances; away from ties the diagram is locally this function of the points. Each
    step recomputes the diagrams (``ripser``), moves every point along its own normalized
    gradient by ``step_size`` and projects it back into its ball of radius ``eps``. Starts at a
    random point of the balls; keeps, per cloud, the iterate with the smallest margin (the
    margins recomputed from the diagrams of the perturbed cloud).

    An attack, not a certificate: a certified radius above ``eps`` means no perturbation, this
    one included, changes the prediction.

    Args:
        model: maps padded diagrams ``(N, maxdim + 1, K, 2)`` to logits (a
            :class:`TopologicalClassifier`, say); evaluated in eval mode (modes restored).
        clouds: ``(N, n_points, dim)``, floating, finite.
        labels: ``(N,)`` int64 labels.
        eps: the largest displacement of a point, ``>= 0``.
        n_iter: gradient steps, ``>= 1``.
        step_size: default ``eps / 4``.
        maxdim: the homology dimensions the model reads (``0..maxdim``).
        generator: of the random start.
        progress: a progress bar over the clouds.

    Returns:
        The perturbed clouds, same shape/dtype/device, every point within ``eps`` of its origin.

    Raises:
        ImportError: ``ripser`` is missing.
        TypeError, ValueError: bad arguments.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    check_tensor(clouds, "clouds", min_dims=3, max_dims=3)
    if not isinstance(labels, Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError("labels must be an int64 tensor of class indices")
    if labels.shape != clouds.shape[:1]:
        raise ValueError(f"labels must have shape ({clouds.shape[0]},), got {tuple(labels.shape)}")
    eps = check_number(eps, "eps", minimum=0.0)
    n_iter = check_int(n_iter, "n_iter")
    step = eps / 4 if step_size is None else check_number(step_size, "step_size", minimum=0.0, strict=True)
    maxdim = check_int(maxdim, "maxdim", minimum=0)
    generator = check_generator(generator)
    show = check_progress(progress)
    ripser = _ripser()
    device = model_device(model)
    out = clouds.detach().clone()
    if eps == 0:
        return out

    def margin_of(cloud64: Tensor, y: Tensor) -> Tensor:
        diagrams = _differentiable_diagrams(cloud64, maxdim, ripser)
        x = pad_diagrams([diagrams]).to(device)
        z = model(x)[0]
        others = z.masked_fill(torch.arange(z.shape[0], device=z.device) == y, -math.inf).amax()
        return z[y] - others

    with eval_mode(model):
        for n in tqdm(range(clouds.shape[0]), desc="attack", disable=not show, leave=False):
            x0 = clouds[n].detach().to(torch.float64)
            y = labels[n].to(device)
            start = torch.randn(x0.shape, generator=generator, dtype=torch.float64,
                                device="cpu" if generator is None else generator.device).to(x0.device)
            delta = _per_point_project(start * eps, eps) * torch.rand(
                x0.shape[0], 1, generator=generator, dtype=torch.float64,
                device="cpu" if generator is None else generator.device).to(x0.device)
            best, best_margin = delta.clone(), math.inf
            for _ in range(n_iter + 1):
                delta.requires_grad_(True)
                margin = margin_of(x0 + delta, y)
                value = float(margin.detach())
                if value < best_margin:
                    best, best_margin = delta.detach().clone(), value
                if value < 0:
                    break
                (grad,) = torch.autograd.grad(margin, delta)
                g = grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-300)
                delta = _per_point_project(delta.detach() - step * g, eps)
            out[n] = (x0 + _per_point_project(best, eps)).to(clouds.dtype)
    return out
