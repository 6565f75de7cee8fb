r"""Frequency bands of images: how a Lipschitz network propagates each band of its input.

The Lipschitz constant bounds a network's response to the *worst* perturbation of a given norm.
Perturbations of the same norm but of different frequency content are treated very differently
by a trained network [yin2019fourier], [rahaman2019spectral]; the external view of Lipschitz
continuity in [luo2026principles] asks how the constraint shapes this response band by band. This
module measures it.

Frequency convention
--------------------
An image channel :math:`x \in \mathbb{R}^{H \times W}` has the orthonormal 2-D DFT
(``torch.fft.fft2(x, norm="ortho")``)

.. math::

    \hat x[k, l] = \frac{1}{\sqrt{HW}} \sum_{m, n} x[m, n]\, e^{-2\pi i (km/H + ln/W)},

and index :math:`(k, l)` has the frequency :math:`(\nu_k, \nu_l)` = ``(torch.fft.fftfreq(H)[k],
torch.fft.fftfreq(W)[l])``, in cycles per pixel, in :math:`[-\tfrac12, \tfrac12)`. Its radius is
:math:`\rho = \sqrt{\nu_k^2 + \nu_l^2}` (``kind="radial"``) or :math:`\max(|\nu_k|, |\nu_l|)`
(``kind="square"``), divided by the largest radius on the grid, so that :math:`\rho \in [0, 1]`.
With :math:`K` bands, band :math:`b` is :math:`B_b = \{(k, l) : b/K \le \rho < (b+1)/K\}` (the last
band also holds :math:`\rho = 1`): the bands partition the grid, band 0 holds the mean (DC), and
frequencies increase with :math:`b`. A radius depends on :math:`|\nu_k|, |\nu_l|` only, so every
band is symmetric under :math:`(k, l) \mapsto (-k \bmod H, -l \bmod W)`.

Projections
-----------
For a symmetric band, :math:`P_b x = \mathcal F^{-1}(\mathbb 1_{B_b} \hat x)` is real for real
:math:`x`, and :math:`P_b` is an orthogonal projection of :math:`\mathbb{R}^{H\times W}` of rank
:math:`|B_b|` (the number of grid points in the band). Images ``(N, C, H, W)`` are projected
channel by channel, so on :math:`\mathbb{R}^{C\times H\times W}` the rank is
:math:`m_b = C\,|B_b|`. The projections sum to the identity and, by Parseval,
:math:`\|x\|^2 = \sum_b \|P_b x\|^2`.

Band-limited noise and sensitivity
----------------------------------
:math:`d_b = P_b g / \|P_b g\|` with :math:`g \sim \mathcal N(0, I)` is uniform on the unit sphere
of :math:`\operatorname{range}(P_b)`, so :math:`\mathbb E[d_b d_b^\top] = P_b / m_b`. The per-band
sensitivity of a map :math:`f` at :math:`x` with step :math:`\varepsilon > 0` is

.. math::

    S_b = \mathbb E_{d_b}\, \frac{\|f(x + \varepsilon d_b) - f(x)\|_2}{\varepsilon}
    \;\le\; \operatorname{Lip}(f) \quad\text{for every band.}

For a linear :math:`f = W`, :math:`\mathbb E\|W d_b\|^2 = \operatorname{tr}(W P_b W^\top)/m_b`: the
mean square of :math:`W`'s gain over the band, against :math:`\|W\|_2` (the largest gain over all
directions) for the Lipschitz constant. For a circular convolution with transfer function
:math:`h`, it is the mean of :math:`|h(\nu)|^2` over the band. A Lipschitz bound caps every band;
how a network spends its budget across bands is what :func:`band_sensitivity` shows.

Data
----
:func:`band_energy` gives the fraction of each image's energy per band, :func:`spectral_snr` the
ratio :math:`\mathbb E\|P_b x\|^2 / \mathbb E\|P_b n\|^2` of a data set's energy to a noise's
(for white noise of variance :math:`\sigma^2` per pixel, :math:`\mathbb E\|P_b n\|^2 = \sigma^2 m_b`),
and :func:`bandlimited_accuracy` the accuracy under band-limited noise of a given norm.

Devices and modes: model-based functions run on the model's device (inputs are moved there and
cast to the model's floating dtype), put the model in eval mode and restore every submodule's
mode afterwards; their summaries come back on the CPU in float64. The other functions return
tensors on their input's device.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from stabilitylab._checks import (
    check_choice,
    check_generator,
    check_int,
    check_number,
    check_pair,
    check_positive,
    check_progress,
    check_shape,
    check_tensor,
)
from stabilitylab._devices import model_device, model_dtype, resolve_device
from stabilitylab._modes import eval_mode

__all__ = [
    "KINDS",
    "band_masks",
    "band_decompose",
    "bandlimited_noise",
    "band_sensitivity",
    "bandlimited_accuracy",
    "band_energy",
    "spectral_snr",
    "BandSensitivity",
    "BandAccuracy",
]

#: The band shapes of :func:`band_masks`: discs (``"radial"``) or squares (``"square"``).
KINDS = ("radial", "square")

_BOUNDARY_TOL = 1e-9  # a radius within this (relative) of a band edge belongs to the band above


# ----------------------------------------------------------------------------- results


class BandSensitivity(NamedTuple):
    r"""What :func:`band_sensitivity` returns (float64 tensors on the CPU)."""

    #: :math:`S_b`, the mean of :math:`\|f(x+\varepsilon d_b) - f(x)\| / \varepsilon` over the
    #: points and noise draws, shape ``(n_bands,)``.
    mean: Tensor
    #: its standard error, shape ``(n_bands,)`` (see :func:`band_sensitivity`).
    stderr: Tensor
    #: the mean of the squared ratios, shape ``(n_bands,)``; for a linear map, an unbiased
    #: estimate of :math:`\operatorname{tr}(W P_b W^\top) / m_b`.
    mean_square: Tensor
    #: every ratio, shape ``(n_bands, N, n_samples)``.
    samples: Tensor


class BandAccuracy(NamedTuple):
    r"""What :func:`bandlimited_accuracy` returns."""

    #: accuracy under noise :math:`\varepsilon d_b`, per band, shape ``(n_bands,)`` (float64, CPU).
    accuracy: Tensor
    #: its standard error, shape ``(n_bands,)`` (float64, CPU).
    stderr: Tensor
    #: the accuracy without noise.
    clean: float


# ----------------------------------------------------------------------------- checks


def _check_images(x, name: str = "x") -> Tensor:
    """A finite floating batch of images ``(N, C, H, W)`` with ``N >= 1``."""
    check_tensor(x, name, min_dims=4, max_dims=4)
    return x


def _check_kind(kind) -> str:
    return check_choice(kind, "kind", KINDS)


def _check_dtype(dtype) -> torch.dtype:
    if dtype is None:
        return torch.get_default_dtype()
    if not isinstance(dtype, torch.dtype):
        raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a real floating dtype, got {dtype}")
    return dtype


def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    return model


# ----------------------------------------------------------------------------- masks


def _band_index(h: int, w: int, n_bands: int, kind: str) -> Tensor:
    """``(H, W)`` int64 on the CPU: the band of each DFT index (see the module docstring)."""
    def absolute_frequency(n: int) -> Tensor:  # |torch.fft.fftfreq(n)|, from integers: exactly symmetric
        k = torch.arange(n, dtype=torch.int64)
        return torch.minimum(k, n - k).to(torch.float64) / n

    fh, fw = absolute_frequency(h)[:, None], absolute_frequency(w)[None, :]
    radius = (fh.square() + fw.square()).sqrt() if kind == "radial" else torch.maximum(fh, fw)
    top = float(radius.max())
    if top == 0.0:  # a 1 x 1 grid: only the mean
        return torch.zeros(h, w, dtype=torch.int64)
    scaled = radius / top * n_bands
    return torch.floor(scaled + _BOUNDARY_TOL * n_bands).clamp(max=n_bands - 1).to(torch.int64)


def _masks(h: int, w: int, n_bands: int, kind: str, device=None) -> Tensor:
    index = _band_index(h, w, n_bands, kind)
    sizes = torch.bincount(index.flatten(), minlength=n_bands)
    empty = [b for b in range(n_bands) if sizes[b] == 0]
    if empty:
        raise ValueError(
            f"n_bands={n_bands} leaves the bands {empty} empty on a {h}x{w} grid (kind={kind!r}): use fewer bands")
    masks = index[None] == torch.arange(n_bands)[:, None, None]
    return masks if device is None else masks.to(device)


def band_masks(
    size: int | Sequence[int],
    n_bands: int,
    *,
    kind: str = "radial",
    device: str | torch.device | None = None,
) -> Tensor:
    r"""Masks on the 2-D DFT grid that partition it into bands of increasing frequency.

    Index :math:`(k, l)` of an :math:`H \times W` grid has the frequency ``(fftfreq(H)[k],
    fftfreq(W)[l])`` (cycles per pixel, ``torch.fft.fftfreq``); its radius :math:`\rho \in [0, 1]`
    is the Euclidean (``"radial"``) or max (``"square"``) norm of that frequency divided by the
    largest on the grid, and band :math:`b` holds :math:`b/K \le \rho < (b+1)/K` (the last band
    also :math:`\rho = 1`). Every band is symmetric under :math:`(k, l) \mapsto (-k \bmod H,
    -l \bmod W)`, so a signal whose spectrum lies in a band is real.

    Args:
        size: the image size ``(H, W)``, or ``n`` for ``n x n``.
        n_bands: the number of bands :math:`K \ge 1`.
        kind: ``"radial"`` (annuli) or ``"square"`` (square rings).
        device: where the masks are made (default: the CPU).

    Returns:
        A bool tensor ``(n_bands, H, W)``; exactly one mask is True at each index. Its entries
        summed over ``(H, W)`` are the band sizes :math:`|B_b|`.

    Raises:
        ValueError: a bad ``size``, ``n_bands < 1``, or so many bands that one is empty (a
            small grid has few distinct radii), an unknown ``kind``.
        TypeError: a ``device`` that is not a device.

    References:
        [yin2019fourier], [luo2026principles].
    """
    h, w = check_pair(size, "size")
    n_bands = check_int(n_bands, "n_bands")
    kind = _check_kind(kind)
    device = resolve_device(device)
    return _masks(h, w, n_bands, kind, device)


def _project(x: Tensor, masks: Tensor) -> Tensor:
    """``(K, *x.shape)``: the real band components of ``x`` (last two dims spatial) for ``(K, H, W)`` masks."""
    spectrum = torch.fft.fft2(x, norm="ortho")
    shape = (masks.shape[0],) + (1,) * (x.ndim - 2) + tuple(masks.shape[1:])
    parts = spectrum.unsqueeze(0) * masks.reshape(shape).to(spectrum.real.dtype)
    return torch.fft.ifft2(parts, norm="ortho").real


def band_decompose(x: Tensor, n_bands: int, *, kind: str = "radial") -> Tensor:
    r"""The band components :math:`P_b x` of a batch of images, channel by channel.

    :math:`P_b x = \mathcal F^{-1}(\mathbb 1_{B_b} \mathcal F x)` with the orthonormal DFT and the
    masks of :func:`band_masks`: real, pairwise orthogonal, summing to :math:`x`, with
    :math:`\sum_b \|P_b x\|^2 = \|x\|^2` (Parseval).

    Args:
        x: images ``(N, C, H, W)``, finite, floating.
        n_bands, kind: see :func:`band_masks`.

    Returns:
        ``(n_bands, N, C, H, W)`` in ``x``'s dtype, on ``x``'s device.

    Raises:
        TypeError, ValueError: a bad ``x`` (not 4-D, empty, NaN/Inf, integer), or the errors of
            :func:`band_masks`.

    References:
        [yin2019fourier].
    """
    _check_images(x)
    n_bands = check_int(n_bands, "n_bands")
    kind = _check_kind(kind)
    masks = _masks(x.shape[-2], x.shape[-1], n_bands, kind, x.device)
    return _project(x, masks).to(x.dtype)


def _band_energies(x: Tensor, masks: Tensor) -> Tensor:
    """``(N, K)`` float64: :math:`\\|P_b x_i\\|^2` from the spectrum (Parseval), summed over channels."""
    power = torch.fft.fft2(x.to(torch.float64), norm="ortho").abs().square()
    power = power.sum(dim=1)  # over the channels
    return torch.einsum("nhw,khw->nk", power, masks.to(torch.float64))


# ----------------------------------------------------------------------------- noise


def _unit_noise(shape: tuple[int, ...], mask: Tensor, dtype: torch.dtype, device: torch.device,
                generator: torch.Generator | None) -> Tensor:
    """Unit-norm (per sample) real noise with its spectrum in ``mask`` ``(H, W)``, on ``device``."""
    where = generator.device if generator is not None else device
    g = torch.randn(shape, generator=generator, dtype=dtype, device=where).to(device)
    d = _project(g, mask[None])[0].to(dtype)
    norms = d.flatten(1).norm(dim=1)
    return d / norms.reshape((-1,) + (1,) * (d.ndim - 1))


def bandlimited_noise(
    shape: Sequence[int],
    band: int,
    n_bands: int,
    *,
    kind: str = "radial",
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""Real perturbations of unit :math:`\ell_2` norm per sample whose spectrum lies in one band.

    :math:`d = P_b g / \|P_b g\|_2` for :math:`g \sim \mathcal N(0, I)` of shape ``shape``: the
    Gaussian noise projected on band :math:`b` through the orthonormal 2-D FFT (channel by
    channel) and normalized per sample. It is uniform on the unit sphere of the band's subspace
    (dimension :math:`m_b = C|B_b|`), so :math:`\mathbb E[d d^\top] = P_b / m_b`.

    Args:
        shape: ``(N, C, H, W)``.
        band: the band :math:`0 \le b <` ``n_bands``.
        n_bands, kind: see :func:`band_masks`.
        dtype: a real floating dtype (default: torch's default dtype).
        device: where the noise is returned (default: the CPU).
        generator: a ``torch.Generator``; the Gaussian draw is made on its device, then moved.
            None draws from torch's global generator.

    Returns:
        ``(N, C, H, W)`` real noise of norm 1 per sample.

    Raises:
        ValueError: ``shape`` not four ints >= 1, ``band`` out of range, the errors of
            :func:`band_masks`.
        TypeError: a bad ``dtype``, ``device`` or ``generator``.

    References:
        [yin2019fourier].
    """
    shape = check_shape(shape, "shape", min_dims=4)
    if len(shape) != 4:
        raise ValueError(f"shape must be (N, C, H, W), got {shape!r}")
    n_bands = check_int(n_bands, "n_bands")
    band = check_int(band, "band", minimum=0)
    if band >= n_bands:
        raise ValueError(f"band must be in [0, n_bands - 1] = [0, {n_bands - 1}], got {band!r}")
    kind = _check_kind(kind)
    dtype = _check_dtype(dtype)
    device = resolve_device(device) or torch.device("cpu")
    generator = check_generator(generator)
    masks = _masks(shape[2], shape[3], n_bands, kind, device)
    return _unit_noise(shape, masks[band], dtype, device, generator)


# ----------------------------------------------------------------------------- models


def _prepared(model, x, n_bands, kind, generator, progress):
    """Checks shared by the model-based functions; ``(x on the model's device and dtype, masks, show)``."""
    _check_model(model)
    _check_images(x)
    n_bands = check_int(n_bands, "n_bands")
    kind = _check_kind(kind)
    check_generator(generator)
    show = check_progress(progress)
    device = model_device(model, x.device)
    x = x.detach().to(device=device, dtype=model_dtype(model, x.dtype))
    masks = _masks(x.shape[-2], x.shape[-1], n_bands, kind, device)
    return x, masks, show


def _summary(values: Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard error of ``(K, N, S)`` values: over the points' means (``N >= 2``), else the draws."""
    k, n, s = values.shape
    means = values.mean(dim=2)
    mean = means.mean(dim=1)
    if n >= 2:
        stderr = means.std(dim=1) / math.sqrt(n)
    elif s >= 2:
        stderr = values[:, 0].std(dim=1) / math.sqrt(s)
    else:
        stderr = torch.full((k,), math.nan, dtype=values.dtype)
    return mean, stderr


def band_sensitivity(
    model: nn.Module,
    x: Tensor,
    n_bands: int,
    *,
    eps: float = 1.0,
    n_samples: int = 8,
    kind: str = "radial",
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> BandSensitivity:
    r"""Per-band sensitivity :math:`S_b = \mathbb E\|f(x + \varepsilon d_b) - f(x)\|_2 / \varepsilon`.

    For each band :math:`b` and each of ``n_samples`` draws, every point :math:`x_i` gets its own
    unit band-limited perturbation :math:`d_b` (:func:`bandlimited_noise`) and the ratio
    :math:`\|f(x_i + \varepsilon d_b) - f(x_i)\|_2 / \varepsilon` (the norm over all output
    entries) is recorded. Every ratio is at most :math:`\operatorname{Lip}(f)`, so
    :math:`S_b \le \operatorname{Lip}(f)` for every band; for a linear :math:`f = W` the mean
    square is :math:`\operatorname{tr}(W P_b W^\top) / m_b` in expectation (:math:`m_b = C|B_b|`).
    Dividing by a certified constant (:func:`stabilitylab.lipschitz.upper_bound`) gives the
    fraction of the worst case that each band uses.

    The standard error treats the points as a sample of the data: the standard deviation of the
    per-point means over :math:`\sqrt N`; for a single point, that of its draws over
    :math:`\sqrt{n_\text{samples}}` (NaN for one point and one draw).

    Args:
        model: maps ``(N, C, H, W)`` to any ``(N, ...)``; evaluated in eval mode, without
            gradients, on its device (``x`` is moved there and cast to its floating dtype).
        x: images ``(N, C, H, W)``.
        n_bands, kind: see :func:`band_masks`.
        eps: the perturbation norm :math:`\varepsilon > 0` (small: a local, Jacobian-like
            sensitivity; large: a finite-difference one).
        n_samples: noise draws per point and band.
        generator: a ``torch.Generator`` for the noise (drawn on its device); None: the global one.
        progress: a progress bar over the bands; None shows it unless ``TQDM_DISABLE`` is set.

    Returns:
        A :class:`BandSensitivity` (float64 on the CPU).

    Raises:
        TypeError: ``model`` not an ``nn.Module``; a bad ``x``, ``generator`` or ``progress``.
        ValueError: a bad ``x`` (shape, NaN/Inf), ``eps <= 0``, ``n_samples < 1``, the errors of
            :func:`band_masks`.

    References:
        [luo2026principles], [yin2019fourier].
    """
    eps = check_positive(eps, "eps")
    n_samples = check_int(n_samples, "n_samples")
    x, masks, show = _prepared(model, x, n_bands, kind, generator, progress)
    n_bands = masks.shape[0]
    values = torch.empty(n_bands, x.shape[0], n_samples, dtype=torch.float64)
    with eval_mode(model), torch.no_grad():
        reference = model(x).to(torch.float64)
        for b in tqdm(range(n_bands), desc="band sensitivity", disable=not show, leave=False):
            for j in range(n_samples):
                d = _unit_noise(tuple(x.shape), masks[b], x.dtype, x.device, generator)
                change = model(x + eps * d).to(torch.float64) - reference
                values[b, :, j] = (change.flatten(1).norm(dim=1) / eps).cpu()
    mean, stderr = _summary(values)
    return BandSensitivity(mean=mean, stderr=stderr, mean_square=values.square().mean(dim=(1, 2)), samples=values)


def bandlimited_accuracy(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    n_bands: int,
    *,
    eps: float = 1.0,
    n_samples: int = 1,
    kind: str = "radial",
    generator: torch.Generator | None = None,
    progress: bool | None = None,
) -> BandAccuracy:
    r"""Accuracy under band-limited noise of norm :math:`\varepsilon`, per band.

    .. math:: A_b = \frac{1}{N\,n_\text{samples}} \sum_{i, j}
        \mathbb 1\big[\arg\max f(x_i + \varepsilon d_{b,ij}) = y_i\big],

    with :math:`d_{b,ij}` independent unit band-limited perturbations (:func:`bandlimited_noise`).
    The noisy images are not clipped to the data's range (clipping would change their spectrum).
    A classifier whose margin at :math:`x_i` exceeds :math:`\varepsilon` times the Lipschitz
    constant of its logit differences keeps its prediction in every band.

    Args:
        model: maps ``(N, C, H, W)`` to logits ``(N, num_classes)``; run as in
            :func:`band_sensitivity`.
        x: images ``(N, C, H, W)``.
        y: integer labels ``(N,)``.
        n_bands, kind: see :func:`band_masks`.
        eps: the noise norm :math:`\varepsilon \ge 0` (0 gives the clean accuracy in every band).
        n_samples: noise draws per point and band.
        generator, progress: see :func:`band_sensitivity`.

    Returns:
        A :class:`BandAccuracy`; the standard error is computed as in :func:`band_sensitivity`.

    Raises:
        TypeError: ``model`` not an ``nn.Module``; ``y`` not an integer tensor; a bad ``x``.
        ValueError: ``y`` not of shape ``(N,)`` or out of the logits' range, ``eps < 0``,
            ``n_samples < 1``, the errors of :func:`band_masks`.

    References:
        [yin2019fourier], [luo2026principles].
    """
    eps = check_number(eps, "eps", minimum=0.0)
    n_samples = check_int(n_samples, "n_samples")
    if not isinstance(y, Tensor):
        raise TypeError(f"y must be a torch.Tensor of integer labels, got {type(y).__name__}")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        raise TypeError(f"y must hold integer labels, got dtype {y.dtype}")
    x, masks, show = _prepared(model, x, n_bands, kind, generator, progress)
    if tuple(y.shape) != (x.shape[0],):
        raise ValueError(f"y must have shape ({x.shape[0]},) to match x, got {tuple(y.shape)}")
    y = y.to(x.device)
    n_bands = masks.shape[0]
    values = torch.empty(n_bands, x.shape[0], n_samples, dtype=torch.float64)
    with eval_mode(model), torch.no_grad():
        logits = model(x)
        if logits.ndim != 2:
            raise ValueError(f"model must return logits (N, num_classes), got shape {tuple(logits.shape)}")
        if bool((y < 0).any()) or bool((y >= logits.shape[1]).any()):
            raise ValueError(f"y must hold labels in [0, {logits.shape[1] - 1}]")
        clean = float((logits.argmax(dim=1) == y).to(torch.float64).mean())
        for b in tqdm(range(n_bands), desc="band accuracy", disable=not show, leave=False):
            for j in range(n_samples):
                d = _unit_noise(tuple(x.shape), masks[b], x.dtype, x.device, generator)
                values[b, :, j] = (model(x + eps * d).argmax(dim=1) == y).to(torch.float64).cpu()
    accuracy, stderr = _summary(values)
    return BandAccuracy(accuracy=accuracy, stderr=stderr, clean=clean)


# ----------------------------------------------------------------------------- data


def band_energy(x: Tensor, n_bands: int, *, kind: str = "radial") -> Tensor:
    r"""The fraction of each image's energy in each band: :math:`\|P_b x_i\|^2 / \|x_i\|^2`.

    Computed from the orthonormal spectrum (Parseval) and summed over the channels; each row sums
    to 1. Subtract the data's mean image first for the fraction of its *variation* per band.

    Args:
        x: images ``(N, C, H, W)``, none of them zero.
        n_bands, kind: see :func:`band_masks`.

    Returns:
        ``(N, n_bands)`` float64 on ``x``'s device.

    Raises:
        TypeError, ValueError: a bad ``x`` (shape, NaN/Inf, integer, an all-zero image), the
            errors of :func:`band_masks`.

    References:
        [yin2019fourier].
    """
    _check_images(x)
    n_bands = check_int(n_bands, "n_bands")
    kind = _check_kind(kind)
    masks = _masks(x.shape[-2], x.shape[-1], n_bands, kind, x.device)
    energies = _band_energies(x, masks)
    total = energies.sum(dim=1, keepdim=True)
    if bool((total == 0).any()):
        raise ValueError("x holds an image of zero energy: its band fractions are undefined")
    return energies / total


def spectral_snr(x: Tensor, noise: Tensor | float, n_bands: int, *, kind: str = "radial") -> Tensor:
    r"""Per-band signal-to-noise ratio :math:`\mathbb E\|P_b x\|^2 / \mathbb E\|P_b n\|^2`.

    The expectations are means over the batches. ``noise`` is either a batch of noise images or a
    standard deviation :math:`\sigma`, for white Gaussian noise of variance :math:`\sigma^2` per
    pixel, for which :math:`\mathbb E\|P_b n\|^2 = \sigma^2 \operatorname{tr}(P_b) = \sigma^2 C
    |B_b|` exactly. Natural images put most of their energy in the low bands, white noise spreads
    evenly over the grid: their SNR falls with frequency. The signal's energy is its raw second
    moment (pass ``x - x.mean(0)`` for its variance).

    Args:
        x: images ``(N, C, H, W)``.
        noise: noise images ``(M, C, H, W)`` (the same ``C, H, W``), or :math:`\sigma > 0`.
        n_bands, kind: see :func:`band_masks`.

    Returns:
        ``(n_bands,)`` float64 on ``x``'s device (the ratio, not in decibels: ``10 * log10`` of it
        for dB); ``inf`` in a band where the noise has no energy.

    Raises:
        TypeError, ValueError: a bad ``x`` or ``noise`` (shape, NaN/Inf, ``sigma <= 0``), the
            errors of :func:`band_masks`.

    References:
        [yin2019fourier], [luo2026principles].
    """
    _check_images(x)
    if isinstance(noise, Tensor):
        _check_images(noise, "noise")
        if tuple(noise.shape[1:]) != tuple(x.shape[1:]):
            raise ValueError(
                f"noise must have the images' shape (M, {', '.join(map(str, x.shape[1:]))}), got {tuple(noise.shape)}")
    elif isinstance(noise, numbers.Real) and not isinstance(noise, bool):
        noise = check_positive(noise, "noise")
    else:
        raise TypeError(f"noise must be a tensor of noise images or a standard deviation, got {type(noise).__name__}")
    n_bands = check_int(n_bands, "n_bands")
    kind = _check_kind(kind)
    masks = _masks(x.shape[-2], x.shape[-1], n_bands, kind, x.device)
    signal = _band_energies(x, masks).mean(dim=0)
    if isinstance(noise, Tensor):
        floor = _band_energies(noise.to(x.device), masks).mean(dim=0)
    else:
        sizes = masks.sum(dim=(1, 2)).to(torch.float64)
        floor = noise**2 * x.shape[1] * sizes
    return signal / floor
