r"""Spectral norms of dense and convolutional layers: estimates, certified bounds, exact values.

The spectral norm :math:`\|W\|_2 = \sigma_1(W) = \max_{\|x\|_2 = 1} \|Wx\|_2` of a layer is its
Lipschitz constant in :math:`\ell_2`. Three kinds of answers are computed here:

* :func:`power_iteration`: an *estimate* from below, :math:`\|W v\|_2 \le \sigma_1` for the unit
  vector :math:`v` it ends with; it works on any linear operator given as a callable;
* :func:`gram_iteration`: a *certified upper bound* that converges quadratically
  [delattre2023efficient]: with :math:`G_0 = W` and :math:`G_{t+1} = G_t^* G_t`,
  :math:`\sigma_1(W) = \sigma_1(G_t)^{1/2^t} \le \|G_t\|_F^{1/2^t}`;
* :func:`conv_spectral_norm`: the norm of a convolution as the linear map it is on images of a
  given size: exact for circular padding (the DFT block-diagonalizes it [sedghi2019singular]),
  certified bounds for circular and zero padding, any stride.

:func:`conv_operator_matrix` unrolls a convolution into its dense matrix: the oracle the tests
compare everything against. Certified means: an upper bound in exact arithmetic; in floating
point it holds up to a relative error of a few units of the dtype's precision.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stabilitylab._checks import check_choice, check_generator, check_int, check_number, check_pair, check_shape, check_tensor, check_tol

__all__ = [
    "power_iteration",
    "gram_iteration",
    "conv_spectral_norm",
    "conv_operator_matrix",
    "conv_transfer_matrices",
    "conv2d_norm",
    "conv2d_module_norm",
    "kernel_autocorrelation",
    "kernel_gram_bound",
    "PowerIteration",
    "GramBounds",
    "ConvNorm",
]

_PADDINGS = ("circular", "zeros")
_METHODS = ("gram", "exact", "power")
_DENSE_LIMIT = 8192  # largest side of a dense operator that method="exact" builds for zero padding


# ----------------------------------------------------------------------------- argument checks


def _check_finite_tensor(x, name: str, *, min_dim: int) -> Tensor:
    """A finite, non-empty real or complex floating tensor with at least ``min_dim`` dimensions."""
    check_tensor(x, name, floating=False, min_dims=min_dim, finite=False)
    if not (x.is_floating_point() or x.is_complex()):
        raise TypeError(f"{name} must have a floating or complex dtype, got {x.dtype}")
    if x.device.type != "meta" and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf entries")
    return x


# ----------------------------------------------------------------------------- results


class PowerIteration(NamedTuple):
    r"""What :func:`power_iteration` returns with ``return_vector=True``."""

    #: :math:`\|W v\|_2` for the final unit vector (a lower bound of the norm), shape ``(...)``.
    estimate: Tensor
    #: that unit vector ``v``, the estimated top right singular vector, shape ``(..., n)`` (or
    #: ``input_shape`` for a callable operator).
    vector: Tensor


class GramBounds(NamedTuple):
    r"""What :func:`gram_iteration` returns with ``return_lower=True``: ``lower <= ||W||_2 <= upper``."""

    #: the certified upper bound, shape ``(...)``.
    upper: Tensor
    #: a lower bound :math:`\|W v\| / \|v\|` (attained), shape ``(...)``.
    lower: Tensor


class ConvNorm(NamedTuple):
    """A certified bound of a convolution's operator norm (:func:`conv2d_norm`,
    :func:`conv2d_module_norm`)."""

    #: the certified upper bound, a 0-dim tensor.
    upper: Tensor
    #: how it was obtained, e.g. ``"gram (certified)"``.
    method: str


# ----------------------------------------------------------------------------- dense operators


def power_iteration(
    W: Tensor | Callable[[Tensor], Tensor],
    *,
    n_iter: int = 100,
    adjoint: Callable[[Tensor], Tensor] | None = None,
    input_shape: Sequence[int] | None = None,
    dtype: torch.dtype | None = None,
    device: str | torch.device | None = None,
    tol: float | None = None,
    generator: torch.Generator | None = None,
    return_vector: bool = False,
) -> Tensor | PowerIteration:
    r"""Estimate the spectral norm by power iteration on :math:`W^* W`.

    From a random unit vector :math:`v_0`, iterates :math:`v_{t+1} = W^* W v_t / \|W^* W v_t\|`
    and returns :math:`\|W v_T\|_2`. For every unit :math:`v`, :math:`\|W v\| \le \sigma_1(W)`,
    so the result is a lower bound (an estimate, never a certificate). The vector approaches
    the top right singular vector at the rate :math:`(\sigma_2 / \sigma_1)^{2t}`, and the
    estimate, a Rayleigh quotient, approaches :math:`\sigma_1` with a relative error of order
    :math:`(\sigma_2 / \sigma_1)^{4t}`.

    Args:
        W: a matrix ``(..., m, n)`` (batched over leading dimensions, real or complex), or a
            callable computing :math:`x \mapsto W x` for a linear operator.
        n_iter: maximum number of iterations.
        adjoint: with a callable ``W``, the callable :math:`y \mapsto W^* y` (required).
        input_shape: with a callable ``W``, the shape of its input ``x`` (required).
        dtype, device: with a callable ``W``, those of the start vector (default float32, CPU).
        tol: stop early when the estimate changes by less than ``tol`` (relative).
        generator: seeds the random start vector.
        return_vector: also return the final unit vector ``v`` (the estimated top right
            singular vector).

    Returns:
        The estimate, shape ``(...)`` (a scalar for a callable); with ``return_vector``, a
        :class:`PowerIteration` ``(estimate, vector)`` (a NamedTuple: it unpacks as a pair).

    Raises:
        TypeError or ValueError: a ``W`` that is not a finite tensor with at least two dimensions
            or a callable; a callable without ``adjoint`` or ``input_shape``; an ``input_shape``
            that is not a shape (ints >= 1; an int is a one-dimensional shape); ``n_iter`` < 1;
            ``tol`` outside (0, 1); a ``generator`` that is not a ``torch.Generator``.

    References:
        [golub2013matrix], [virmaux2018lipschitz].
    """
    check_int(n_iter, "n_iter", 1)
    tol = check_tol(tol, allow_none=True)
    check_generator(generator)
    if not isinstance(return_vector, bool):
        raise TypeError(f"return_vector must be a bool, got {return_vector!r}")
    if input_shape is not None:
        input_shape = check_shape(input_shape, "input_shape")
    if callable(W) and not isinstance(W, Tensor):
        if adjoint is None or not callable(adjoint):
            raise ValueError("adjoint must be given (a callable y -> W^* y) when W is a callable")
        if input_shape is None:
            raise ValueError("input_shape must be given when W is a callable")
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"dtype must be a torch.dtype or None, got {dtype!r}")
        forward, backward = W, adjoint
        v = torch.randn(input_shape, generator=generator, dtype=dtype or torch.float32)
        v = v.to(device) if device is not None else v

        def norm(x: Tensor) -> Tensor:
            return torch.linalg.vector_norm(x)

    else:
        W = _check_finite_tensor(W, "W", min_dim=2)
        forward = lambda x: (W @ x.unsqueeze(-1)).squeeze(-1)  # noqa: E731
        backward = lambda y: (W.mH @ y.unsqueeze(-1)).squeeze(-1)  # noqa: E731
        real = torch.empty((), dtype=W.dtype).real.dtype
        v = torch.randn((*W.shape[:-2], W.shape[-1]), generator=generator, dtype=real).to(W.device)
        v = v.to(W.dtype)

        def norm(x: Tensor) -> Tensor:
            return torch.linalg.vector_norm(x, dim=-1, keepdim=True)

    tiny = torch.finfo(v.real.dtype).tiny
    v = v / norm(v).clamp_min(tiny)
    previous = None
    for _ in range(n_iter):
        u = forward(v)
        v = backward(u)
        v = v / norm(v).clamp_min(tiny)
        if tol is not None:
            estimate = norm(u)
            if previous is not None and torch.all((estimate - previous).abs() <= tol * estimate):
                break
            previous = estimate
    estimate = norm(forward(v))
    estimate = estimate.squeeze(-1) if estimate.ndim else estimate
    return PowerIteration(estimate, v) if return_vector else estimate


def _squared_sum(x: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Sum of |x|^2 over ``dims`` (negative), through a real view: much faster than the complex
    norms of torch.linalg on the CPU."""
    if x.is_complex():
        return torch.view_as_real(x).square().sum(dim=(-1, *(d - 1 for d in dims)))
    return x.square().sum(dim=dims)


def _frobenius(G: Tensor) -> Tensor:
    flat = torch.view_as_real(G) if G.is_complex() else G
    return torch.linalg.vector_norm(flat.reshape(*G.shape[:-2], -1), dim=-1)


def _real_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.empty((), dtype=dtype).real.dtype


def _safety(dtype: torch.dtype, inner: int) -> float:
    r"""The relative safety margin of the certified bounds computed in ``dtype``:
    :math:`1 + (8 + 2\sqrt{n})\,\epsilon` with :math:`\epsilon` the unit roundoff of ``dtype``
    and :math:`n` the length of the longest sum of products the bound is made of. Rounding
    errors of sums of :math:`n` products are of order :math:`\sqrt{n}\,\epsilon` in relative
    terms (each Gram step squares the iterate, then the :math:`2^t`-th root divides the relative
    error of step :math:`t` by :math:`2^t`, so the first products dominate), and the 8 covers the
    normalizations, the logarithms (float64) and the final rounding into ``dtype``. A
    worst-case bound would be :math:`n\,\epsilon` times the stable rank: the margin is a few
    ulp, not an interval-arithmetic guarantee."""
    return 1.0 + (8.0 + 2.0 * math.sqrt(inner)) * torch.finfo(dtype).eps


def _round(x: Tensor, dtype: torch.dtype, *, up: bool) -> Tensor:
    """``x`` (float64) in ``dtype``, rounded towards +inf (``up``) or -inf, differentiable (the
    one-ulp correction is constant)."""
    y = x.to(dtype)
    if dtype == torch.float64:
        return y
    y0, x0 = y.detach(), x.detach()
    off = (y0.to(torch.float64) < x0) if up else (y0.to(torch.float64) > x0)
    target = torch.full_like(y0, math.inf if up else -math.inf)
    return y + torch.where(off, torch.nextafter(y0, target) - y0, torch.zeros_like(y0))


def _unit_peak(A: Tensor) -> tuple[Tensor, Tensor]:
    """(A / max|A| per matrix, max|A| in float64: 0 for a zero matrix, which stays zero).
    Dividing a denormal or huge matrix by its largest entry is exact up to one rounding and
    brings its entries into [-1, 1], so no product or norm that follows can overflow or
    underflow; the gradient stays finite at zero. The peak is kept as a float64 factor, not a
    logarithm: exp(log(p)) would lose |log p| ulp (a 1e-45 float64 weight: 100 ulp)."""
    peak = A.abs().amax(dim=(-2, -1))
    safe = torch.where(peak > 0, peak, torch.ones_like(peak))
    return A / safe[..., None, None], peak.to(torch.float64)


def _rayleigh_lower(A: Tensor, G: Tensor) -> Tensor:
    """A lower bound of sigma_1(A), in float64: ||A v|| / ||v|| for v the largest column of G
    (which, after a few Gram steps, points along the top right singular vector of A). A and G
    should have entries of order 1 (see _unit_peak): the products are made in their dtype."""
    columns = _squared_sum(G, (-2,))
    index = columns.argmax(dim=-1)
    v = torch.gather(G, -1, index[..., None, None].expand(*G.shape[:-1], 1))
    Av = A @ v
    ratio = _squared_sum(Av, (-2, -1)).to(torch.float64) / _squared_sum(v, (-2, -1)).to(torch.float64)
    return torch.nan_to_num(ratio, nan=0.0).sqrt()


def _gram_state(A: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """First Gram step on the smaller side, from A rescaled to unit Frobenius norm so that the
    product cannot overflow: (A / max|A|, normalized G = A_n^*A_n or A_n A_n^*, float64 log of
    ||G||_F, the float64 factor s = ||A||_F with A = s A_n, the float64 max|A|). Then
    sigma_1(A) <= s ||G||_F^(1/2)."""
    A_unit, peak = _unit_peak(A)
    frob = _frobenius(A_unit)
    safe = torch.where(frob > 0, frob, torch.ones_like(frob))
    G, log_g = _normalized(_gram(A_unit / safe[..., None, None]))
    return A_unit, G, log_g, peak * frob.to(torch.float64), peak


def _gram(A: Tensor) -> Tensor:
    """A^*A or AA^*, whichever is smaller; the transposed factor is made contiguous first, which
    makes batched complex products several times faster on the CPU."""
    if A.shape[-1] <= A.shape[-2]:
        return A.mH.contiguous() @ A
    return A @ A.mH.contiguous()


def _normalized(G: Tensor) -> tuple[Tensor, Tensor]:
    """(G / ||G||_F, log ||G||_F in float64; -inf for a zero G, which stays zero). The norm is
    taken of G divided by its largest entry, so it neither overflows nor underflows."""
    G_unit, peak = _unit_peak(G)
    r = _frobenius(G_unit)
    safe = torch.where(r > 0, r, torch.ones_like(r))
    norm = peak * r.to(torch.float64)
    positive = norm > 0
    log_norm = torch.log(torch.where(positive, norm, torch.ones_like(norm)))  # no inf gradient at 0
    return G_unit / safe[..., None, None], torch.where(positive, log_norm, torch.full_like(log_norm, -math.inf))


def _gram_bound64(W: Tensor, n_iter: int, tol: float | None) -> tuple[Tensor, Tensor]:
    """(upper, lower) bounds of sigma_1 for each matrix of W, in float64, before the safety
    margin: the body of gram_iteration (W checked)."""
    A = W if W.shape[-1] <= W.shape[-2] else W.mH
    if n_iter == 0:
        A_unit, peak = _unit_peak(A)
        return peak * _frobenius(A_unit).to(torch.float64), peak * _rayleigh_lower(A_unit, _gram(A_unit))
    A_unit, G, log_scale, factor, peak = _gram_state(A)
    power = 2.0  # log_scale bounds log sigma_1(A_n)^power
    for _ in range(n_iter - 1):
        if tol is not None:
            upper = factor * torch.exp(log_scale / power)
            lower = peak * _rayleigh_lower(A_unit, G)
            if torch.all(upper <= (1 + tol) * lower):
                break
        G, log_r = _normalized(G @ G)
        log_scale = 2 * log_scale + log_r
        power *= 2
    return factor * torch.exp(log_scale / power), peak * _rayleigh_lower(A_unit, G)


def gram_iteration(
    W: Tensor,
    *,
    n_iter: int | None = None,
    tol: float | None = None,
    return_lower: bool = False,
) -> Tensor | GramBounds:
    r"""Certified upper bound on the spectral norm by Gram iteration.

    With :math:`G_1 = W^* W` (or :math:`W W^*`, whichever is smaller) and
    :math:`G_{t+1} = G_t^2`, the singular values of :math:`G_t` are those of :math:`W` raised
    to the power :math:`2^t`, and the Frobenius norm bounds the largest, so

    .. math:: \sigma_1(W) \le \|G_t\|_F^{1/2^t}
        = \sigma_1(W) \Bigl(\sum_i (\sigma_i / \sigma_1)^{2^{t+1}}\Bigr)^{1/2^{t+1}},

    which converges to :math:`\sigma_1(W)` quadratically once the spectral gap is resolved
    [delattre2023efficient]. ``W`` is first divided by its largest entry, each iterate is
    rescaled to unit Frobenius norm (after division by its largest entry) and the scales are
    accumulated in float64 logarithms, so nothing overflows or underflows for any finite ``W``
    of any dtype (denormal entries included); the result is differentiable.

    Floating point: the bound is multiplied by the safety margin
    :math:`1 + (8 + 2\sqrt{m})\,\epsilon` (:math:`\epsilon` the unit roundoff of ``W``'s dtype,
    :math:`m` the longer side of ``W``, the length of the sums of the first Gram product) and
    rounded up into ``W``'s real dtype, so that the rounding of the products and norms made in
    that dtype (of order :math:`\sqrt{m}\,\epsilon`) cannot bring it below the norm; the lower
    bound is divided by the same margin and rounded down. In float32 the margin is about
    :math:`10^{-6}` for small matrices (:math:`5 \cdot 10^{-6}` for ``m = 256``).

    Args:
        W: ``(..., m, n)``, real or complex; batched over leading dimensions.
        n_iter: number of Gram steps :math:`t` (0 gives the Frobenius norm of ``W``). Default 6,
            or at most 40 when ``tol`` is given.
        tol: iterate until the certified relative gap ``upper / lower - 1`` is at most ``tol``
            for every matrix of the batch, where ``lower`` is :math:`\|W v\| / \|v\|` for the
            largest column :math:`v` of the current iterate (or ``n_iter`` steps were made).
        return_lower: also return that lower bound.

    Returns:
        Upper bounds, shape ``(...)``, real; with ``return_lower``, a :class:`GramBounds`
        ``(upper, lower)`` (a NamedTuple: it unpacks as a pair).

    Raises:
        TypeError or ValueError: ``W`` not a finite tensor with at least two dimensions,
            ``n_iter`` < 0, ``tol`` outside (0, 1).

    References:
        [delattre2023efficient].
    """
    W = _check_finite_tensor(W, "W", min_dim=2)
    tol = check_tol(tol, allow_none=True)
    if not isinstance(return_lower, bool):
        raise TypeError(f"return_lower must be a bool, got {return_lower!r}")
    n_iter = (6 if tol is None else 40) if n_iter is None else check_int(n_iter, "n_iter", 0)
    upper, lower = _gram_bound64(W, n_iter, tol)
    real = _real_dtype(W.dtype)
    margin = _safety(real, max(W.shape[-2:]))
    upper = _round(upper * margin, real, up=True)
    if return_lower:
        return GramBounds(upper, _round(lower / margin, real, up=False))
    return upper


# ----------------------------------------------------------------------------- convolutions


def _check_kernel(kernel) -> Tensor:
    kernel = _check_finite_tensor(kernel, "kernel", min_dim=4)
    if kernel.ndim != 4:
        raise ValueError(
            f"kernel must be 4-D (out_channels, in_channels, kh, kw), got shape {tuple(kernel.shape)}"
        )
    if kernel.is_complex():
        raise TypeError(f"kernel must be real, got {kernel.dtype}")
    return kernel


def _check_padding(padding, kernel_size: tuple[int, int]) -> tuple[str, tuple[int, int]]:
    """('circular', (0, 0)) or ('zeros', (ph, pw)); 'zeros' means same padding k // 2."""
    if isinstance(padding, str):
        if padding not in _PADDINGS:
            raise ValueError(f"padding must be one of {_PADDINGS} or an int (zeros), got {padding!r}")
        if padding == "circular":
            return "circular", (0, 0)
        return "zeros", (kernel_size[0] // 2, kernel_size[1] // 2)
    pad = check_pair(padding, "padding", 0)
    if pad[0] >= kernel_size[0] or pad[1] >= kernel_size[1]:
        raise ValueError(f"padding {pad} must be smaller than the kernel size {kernel_size}")
    return "zeros", pad


def _polyphase(kernel: Tensor, stride: tuple[int, int]) -> Tensor:
    """The stride-1 kernel of a strided convolution seen on the space-to-depth input:
    K'[o, (i, a, b), p, q] = K[o, i, s_h p + a, s_w q + b]. Space-to-depth permutes the input's
    coordinates, so both convolutions have the same singular values."""
    sh, sw = stride
    if (sh, sw) == (1, 1):
        return kernel
    c_out, c_in, kh, kw = kernel.shape
    ph, pw = -(-kh // sh), -(-kw // sw)
    padded = F.pad(kernel, (0, pw * sw - kw, 0, ph * sh - kh))
    poly = padded.reshape(c_out, c_in, ph, sh, pw, sw).permute(0, 1, 3, 5, 2, 4)
    return poly.reshape(c_out, c_in * sh * sw, ph, pw)


def conv_transfer_matrices(kernel: Tensor, input_size: int | tuple[int, int], *, stride: int | tuple[int, int] = 1) -> Tensor:
    r"""The matrices that block-diagonalize a circular convolution.

    A circular convolution of a ``(c_out, c_in, kh, kw)`` kernel on ``h x w`` images is
    unitarily equivalent (by 2-D DFTs of input and output) to the block-diagonal matrix of
    :math:`\hat K(u, v) = \sum_{p,q} K_{:,:,p,q}\, e^{-2\pi i (pu/h + qv/w)}`, so its singular
    values are those of the :math:`hw` matrices :math:`\hat K(u, v)` [sedghi2019singular].
    For a real kernel :math:`\hat K(-u, -v) = \overline{\hat K(u, v)}`: only the half spectrum
    :math:`0 \le v \le w/2` is returned. A stride :math:`s` is handled on the space-to-depth
    input, a stride-1 convolution with :math:`c_{in} s^2` channels on ``h/s x w/s`` images.

    Returns:
        Complex tensor ``(h' * (w' // 2 + 1), c_out, c_in * s_h * s_w)`` with ``h' = h / s_h``.

    Raises:
        ValueError: a bad kernel, an image smaller than the kernel (which would wrap around
            itself), or an image size that the stride does not divide.
    """
    kernel = _check_kernel(kernel)
    h, w = check_pair(input_size, "input_size", 1)
    stride = check_pair(stride, "stride", 1)
    if h % stride[0] or w % stride[1]:
        raise ValueError(f"input_size {(h, w)} must be divisible by the stride {stride} for circular padding")
    poly = _polyphase(kernel, stride)
    h, w = h // stride[0], w // stride[1]
    if poly.shape[-2] > h or poly.shape[-1] > w:
        raise ValueError(
            f"input_size {(h * stride[0], w * stride[1])} is smaller than the kernel {tuple(kernel.shape[-2:])} "
            "(with this stride): a circular convolution would wrap the kernel around itself"
        )
    return _periodized_spectrum(poly, (h, w))


def kernel_autocorrelation(kernel: Tensor) -> Tensor:
    r"""The autocorrelation of a convolution kernel: the kernel of :math:`K^* K`.

    .. math:: A_{a,b}[d] = \sum_{o} \sum_{p} K_{o,a}[p]\, K_{o,b}[p + d],
        \qquad |d_h| < k_h,\ |d_w| < k_w,

    the spatial kernel whose transfer matrices are :math:`\hat K(f)^* \hat K(f)` at every
    frequency :math:`f` (the first Gram step of every frequency at once
    [delattre2024spectral]); its entries are the inner products of the input channels' filters
    at every shift, so :math:`\sum_{b, d} |A_{a,b}[d]|` is the AOL rescaling of channel
    :math:`a` [prach2022almost]. Differentiable.

    Args:
        kernel: ``(c_out, c_in, kh, kw)``, real.

    Returns:
        ``(c_in, c_in, 2 kh - 1, 2 kw - 1)`` in the kernel's dtype, offset 0 at the centre.

    Raises:
        TypeError, ValueError: a kernel that is not a finite 4-D real tensor.
    """
    return _autocorrelation(_check_kernel(kernel))


def kernel_gram_bound(kernel: Tensor, *, n_iter: int = 3, stride: int | tuple[int, int] = 1) -> Tensor:
    r"""Certified bound of a convolution's norm from its kernel alone, valid for every image size
    and every zero padding (and circular padding) [delattre2024spectral].

    Let :math:`T_K` be the convolution by ``kernel`` on the infinite grid,
    :math:`\ell^2(\mathbb{Z}^2)^{c_{in}} \to \ell^2(\mathbb{Z}^2)^{c_{out}}`, with symbol
    :math:`\hat K(\theta) = \sum_p K[p]\, e^{-i\langle p, \theta\rangle}`. Define the Gram kernels
    :math:`G_1 = ` the autocorrelation of :math:`K` (:func:`kernel_autocorrelation`, the kernel of
    :math:`T_K^* T_K`) and :math:`G_{s+1} = G_s * G_s` (matrix-valued self-convolution, the
    kernel of :math:`T_{G_s}^2`); the side of :math:`G_t` is :math:`2^t (k - 1) + 1`.

    **Theorem.** For every ``t >= 1``,
    :math:`\|T_K\|_2 \le \bigl(\max_a \sum_{b, d} |G_t[a, b, d]|\bigr)^{1/2^t}`, and every
    zero-padded convolution by ``K`` on ``h x w`` images (any padding, stride ``s``), as
    every circular one, has a norm at most :math:`\|T_K\|_2`.

    **Proof.** :math:`T_K^* T_K = T_{G_1}` and :math:`T_{G_s}^2 = T_{G_{s+1}}` (products of convolutions
    are convolutions by the convolved kernels), so :math:`\|T_K\|^{2^t} = \|T_{G_t}\|`, as
    :math:`T_{G_s}` is self-adjoint and positive. The Fourier series conjugates
    :math:`T_{G_t}` to multiplication by the Hermitian symbol :math:`M(\theta) = \sum_d G_t[d]
    e^{-i\langle d, \theta\rangle}`, so :math:`\|T_{G_t}\| = \sup_\theta \lambda_{\max}
    (M(\theta)) \le \sup_\theta \max_a \sum_b |M_{ab}(\theta)|` (the spectral radius is at
    most any induced norm) :math:`\le \max_a \sum_{b, d} |G_t[a, b, d]|`. A zero-padded
    convolution is :math:`P\, T_K E` with :math:`E` the isometric embedding of the image in
    the grid by zeros and :math:`P` the restriction to the outputs (norm 1); a stride keeps
    one output in :math:`s` along each axis (a further restriction). A circular convolution
    on an :math:`N`-grid has the transfer matrices :math:`\hat K(2\pi u / N)` (the kernel
    folded on the grid has the same values there), whose norms are at most
    :math:`\sup_\theta \sigma_1(\hat K(\theta)) = \|T_K\|`.

    The bound converges to :math:`\|T_K\|` as ``t`` grows (the row sums of :math:`G_t`
    concentrate on the top of the spectrum); :math:`\|T_K\|` itself is the limit of the zero-
    padded norms as the image grows, so on small images the embedding bound of
    :func:`conv_spectral_norm` is tighter, at a cost growing with the image. Here the cost does
    not depend on the image: :math:`G_t` is computed exactly by ``t - 1`` squarings of the
    transfer matrices of :math:`G_1` on a grid of side :math:`2^t (k - 1) + 1` (large enough
    that the circular self-convolutions do not wrap around), in float64, then an inverse DFT.
    The result carries the safety margin of :func:`gram_iteration` for the kernel's dtype with
    the sums' length :math:`c\, L^2` (:math:`L` the grid's side), rounded up into that dtype.

    Args:
        kernel: ``(c_out, c_in, kh, kw)``, real, finite.
        n_iter: Gram steps ``t`` (>= 1); the grid's side doubles with each.
        stride: int or pair (the polyphase kernel of the strided convolution is bounded).

    Returns:
        A 0-dim tensor in the kernel's dtype, differentiable with respect to ``kernel``.

    Raises:
        TypeError, ValueError: a kernel that is not a finite real 4-D tensor; ``n_iter`` < 1 or
            a ``stride`` that is not a positive int or pair.

    References:
        [delattre2024spectral].
    """
    kernel = _check_kernel(kernel)
    n_iter = check_int(n_iter, "n_iter", 1)
    stride = check_pair(stride, "stride", 1)
    poly = _polyphase(kernel, stride)
    if poly.shape[1] > poly.shape[0]:
        poly = poly.flip(-2, -1).transpose(0, 1)  # the adjoint: the same norm, a smaller Gram
    work = poly.to(torch.float64)
    unit, peak = _unit_peak(work.flatten(1))
    norm = _frobenius(unit)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    unit = (unit / safe).reshape(work.shape)
    log_scale = 2 * torch.log(peak * norm)  # ||K||^2 = exp(log_scale) ||unit||^2
    kh, kw = unit.shape[-2:]
    gram = _autocorrelation(unit)  # (c, c, 2 kh - 1, 2 kw - 1), offset 0 at (kh - 1, kw - 1)
    side_h, side_w = 2**n_iter * (kh - 1) + 1, 2**n_iter * (kw - 1) + 1
    embedded = F.pad(gram, (0, side_w - gram.shape[-1], 0, side_h - gram.shape[-2]))
    embedded = embedded.roll((-(kh - 1), -(kw - 1)), dims=(-2, -1))  # offset 0 at index 0
    H = torch.fft.rfft2(embedded).permute(2, 3, 0, 1)  # (side_h, side_w // 2 + 1, c, c), Hermitian
    power = 2.0
    for _ in range(n_iter - 1):
        H = H @ H  # entries at most ||H||_F^2 = 1: no overflow
        r = _frobenius(H.reshape(1, -1, H.shape[-1]))[0]  # one scale for all frequencies
        H = H / torch.where(r > 0, r, torch.ones_like(r))
        log_scale = 2 * log_scale + torch.log(torch.where(r > 0, r, torch.ones_like(r)))
        power *= 2
    G = torch.fft.irfft2(H.permute(2, 3, 0, 1), s=(side_h, side_w))
    rows = G.abs().sum(dim=(1, 2, 3)).max()
    positive = rows > 0
    log_rows = torch.log(torch.where(positive, rows, torch.ones_like(rows)))
    bound = torch.where(positive & (peak > 0), torch.exp((log_scale + log_rows) / power), torch.zeros_like(rows))
    margin = _safety(kernel.dtype, max(poly.shape[0], poly.shape[1]) * side_h * side_w)
    return _round(bound * margin, kernel.dtype, up=True)


def _autocorrelation(kernel: Tensor) -> Tensor:
    """kernel_autocorrelation without the checks."""
    kh, kw = kernel.shape[-2:]
    channels_first = kernel.transpose(0, 1).contiguous()
    return F.conv2d(channels_first, channels_first, padding=(kh - 1, kw - 1)).transpose(0, 1)


def _self_convolution(G: Tensor) -> Tensor:
    """M[d] = sum_{d1 + d2 = d} G[d1] @ G[d2] (a matrix-valued convolution): the spatial kernel of
    the squared transfer matrices. Shape (c, c, 2 sh - 1, 2 sw - 1)."""
    sh, sw = G.shape[-2:]
    inputs = G.transpose(0, 1).contiguous()  # batch: the right factor's column, channels: the sum index
    weight = G.flip(-2, -1).contiguous()
    return F.conv2d(inputs, weight, padding=(sh - 1, sw - 1)).transpose(0, 1)


def _phases(frequencies: Tensor, taps: int, n: int) -> Tensor:
    """exp(-2 pi i f p / n) for the given frequencies f and taps p = 0..taps-1, in complex128
    (the product f p is reduced modulo n first, so the angle stays exact)."""
    products = torch.outer(frequencies, torch.arange(taps, device=frequencies.device)) % n
    angle = products.to(torch.float64) * (-2 * math.pi / n)
    return torch.polar(torch.ones_like(angle), angle)


def _periodized_spectrum(G: Tensor, size: tuple[int, int], rows: Tensor | None = None) -> Tensor:
    """The DFT on an h x w grid of a spatial kernel ``(c, d, sh, sw)``, folded modulo the grid when
    it is larger, on the half spectrum ``0 <= v <= w // 2``: ``(h * (w // 2 + 1), c, d)`` matrices
    (or only the frequencies listed in ``rows``, flat indices). Computed as two small matrix
    products with the Fourier phases, which for kernels much smaller than the grid is several
    times faster than a padded FFT. An offset of G's origin multiplies every matrix by a phase,
    which changes neither norms nor the norms of products."""
    h, w = size
    sh, sw = G.shape[-2:]
    if sh > h or sw > w:
        G = F.pad(G, (0, -sw % w, 0, -sh % h))
        G = G.reshape(*G.shape[:2], G.shape[-2] // h, h, G.shape[-1] // w, w).sum(dim=(2, 4))
        sh, sw = h, w
    complex_dtype = torch.complex128 if G.dtype == torch.float64 else torch.complex64
    u = torch.arange(h, device=G.device)
    v = torch.arange(w // 2 + 1, device=G.device)
    if rows is not None:
        u, v = u[rows // len(v)], v[rows % len(v)]
    phase_h = _phases(u, sh, h).to(complex_dtype)
    phase_w = _phases(v, sw, w).to(complex_dtype)
    G = G.to(complex_dtype)
    if rows is not None:
        return torch.einsum("fp,fq,abpq->fab", phase_h, phase_w, G).contiguous()
    half = torch.einsum("abpq,vq->vpab", G, phase_w)  # (w', sh, c, d)
    return torch.einsum("up,vpab->uvab", phase_h, half).reshape(-1, *G.shape[:2]).contiguous()


def _spatial_gram(kernel: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """What the certified circular bound needs of a (polyphase) kernel, whatever the grid: the
    kernel on its smaller side (the adjoint has the same norm) scaled to unit Frobenius norm, the
    spatial kernel of its second Gram step (the self-convolution of its autocorrelation), and
    the scale."""
    if kernel.shape[1] > kernel.shape[0]:
        kernel = kernel.flip(-2, -1).transpose(0, 1)
    unit, peak = _unit_peak(kernel.flatten(1))  # entries in [-1, 1]: the norm cannot overflow
    norm = _frobenius(unit)
    safe = torch.where(norm > 0, norm, torch.ones_like(norm))
    kernel = (unit / safe).reshape(kernel.shape)
    scale = peak * norm.to(torch.float64)  # float64, 0 for a zero kernel
    return kernel, _self_convolution(_autocorrelation(kernel)), scale


def _circular_gram_bound(
    kernel: Tensor, size: tuple[int, int], n_iter: int | None, tol: float | None, spatial=None
) -> Tensor:
    """Certified bound of the circular convolution of a (polyphase) kernel on an h x w grid.

    Without tol (or with n_iter < 2): n_iter Gram steps on every frequency (the original
    algorithm). With tol: the first two Gram steps of all frequencies come from spatial kernels
    (the autocorrelation and its self-convolution: far cheaper than products of complex matrices
    at every frequency; ``spatial`` passes them in when several grids share them); lower bounds
    come from the few frequencies with the largest upper bounds; frequencies whose upper bound
    falls below the best lower bound are dropped (they cannot hold the maximum), and the others
    are squared until the certified gap is below tol or n_iter Gram steps in all were made."""
    if tol is None or (n_iter is not None and n_iter < 2):
        unit, peak = _unit_peak(kernel.flatten(1))  # a denormal kernel's spectrum would underflow
        blocks = _periodized_spectrum(unit.reshape(kernel.shape), size)
        steps = 6 if n_iter is None else n_iter
        return _gram_bound64(blocks, steps, None)[0].max() * peak
    kernel, second_step, scale = spatial if spatial is not None else _spatial_gram(kernel)
    G, log_scale = _normalized(_periodized_spectrum(second_step, size))
    rows = torch.arange(len(G), device=G.device)
    power = 4.0  # G holds (A^*A)^2 at every frequency, up to a phase: two Gram steps made
    lower = torch.zeros((), dtype=torch.float64, device=log_scale.device)
    evaluations = 39 if n_iter is None else n_iter - 1  # bounds after 2, 3, ..., n_iter steps
    for step in range(evaluations):
        upper = torch.exp(log_scale / power)
        top = torch.topk(upper, min(8, len(upper))).indices
        lower = torch.maximum(lower, _rayleigh_lower(_periodized_spectrum(kernel, size, rows[top]), G[top]).max())
        if upper.max() <= (1 + tol) * lower or step == evaluations - 1:
            break
        keep = upper >= lower
        rows, G, log_scale = rows[keep], G[keep], log_scale[keep]
        G, log_r = _normalized(G @ G)
        log_scale = 2 * log_scale + log_r
        power *= 2
    return upper.max() * scale


def _zero_padding_grids(size: int, pad: int, stride: int, kernel_size: int, extra: int) -> list[int]:
    """Circular grid sizes N that contain the zero-padded convolution without wrap-around:
    N >= size + pad (see conv_spectral_norm), N divisible by the stride, N >= the kernel."""
    first = max(size + pad, kernel_size)
    first = -(-first // stride) * stride
    return [first + stride * j for j in range(extra + 1)]


def conv_operator_matrix(
    kernel: Tensor,
    input_size: int | tuple[int, int],
    *,
    padding: str | int | tuple[int, int] = "circular",
    stride: int | tuple[int, int] = 1,
) -> Tensor:
    r"""The dense matrix of a 2-D convolution (cross-correlation, as ``torch.nn.Conv2d``) acting
    on ``c_in x h x w`` images: the oracle for every other function of this module.

    Circular padding pads ``(k - 1) // 2`` before and ``k // 2`` after each side (the output
    has the input's size divided by the stride); ``"zeros"`` pads ``k // 2`` zeros on each side
    (``Conv2d(padding=k // 2)``); an int or pair pads that many zeros.

    Returns:
        ``(c_out * h_out * w_out, c_in * h * w)``, in the kernel's dtype, such that
        ``M @ x.flatten() == conv(x).flatten()``.

    Raises:
        ValueError: bad arguments, or an operator with a side longer than 8192 (too big to
            build densely; the message gives its size).
    """
    kernel = _check_kernel(kernel)
    h, w = check_pair(input_size, "input_size", 1)
    stride = check_pair(stride, "stride", 1)
    c_out, c_in, kh, kw = kernel.shape
    mode, pad = _check_padding(padding, (kh, kw))
    if mode == "circular" and (kh > h or kw > w):
        raise ValueError(f"input_size {(h, w)} is smaller than the kernel {(kh, kw)} for circular padding")
    n_in = c_in * h * w
    if mode == "circular":
        out_h, out_w = (h - 1) // stride[0] + 1, (w - 1) // stride[1] + 1
    else:
        out_h = (h + 2 * pad[0] - kh) // stride[0] + 1
        out_w = (w + 2 * pad[1] - kw) // stride[1] + 1
        if out_h < 1 or out_w < 1:
            raise ValueError(f"input_size {(h, w)} gives an empty output with kernel {(kh, kw)} and padding {pad}")
    if max(n_in, c_out * out_h * out_w) > _DENSE_LIMIT:
        raise ValueError(
            f"the dense operator would be {c_out * out_h * out_w} x {n_in} for input_size {(h, w)}, larger "
            f"than {_DENSE_LIMIT} on a side; use method='gram' for a certified bound"
        )
    basis = torch.eye(n_in, dtype=kernel.dtype, device=kernel.device).reshape(n_in, c_in, h, w)
    if mode == "circular":
        basis = F.pad(basis, ((kw - 1) // 2, kw // 2, (kh - 1) // 2, kh // 2), mode="circular")
        out = F.conv2d(basis, kernel, stride=stride)
    else:
        out = F.conv2d(basis, kernel, stride=stride, padding=pad)
    return out.reshape(n_in, -1).T


def conv_spectral_norm(
    kernel: Tensor,
    input_size: int | tuple[int, int],
    *,
    padding: str | int | tuple[int, int] = "circular",
    stride: int | tuple[int, int] = 1,
    method: str = "gram",
    n_iter: int | None = None,
    tol: float | None = 1e-3,
    generator: torch.Generator | None = None,
    dense: bool = True,
) -> Tensor:
    r"""Spectral norm of a 2-D convolution as a linear map on ``c_in x h x w`` images.

    Circular padding: the DFT block-diagonalizes the operator (see
    :func:`conv_transfer_matrices`), so :math:`\|K\|_2 = \max_{u,v} \sigma_1(\hat K(u, v))`
    [sedghi2019singular]. ``"exact"`` takes the SVD of every block; ``"gram"`` bounds every
    block by Gram iteration [delattre2023efficient] and, with ``tol``, iterates only on the
    frequencies whose bound still exceeds the best lower bound, until the certified relative
    gap is below ``tol``; ``"power"`` runs power iteration on every block (a lower bound).

    Zero padding (``"zeros"`` = ``k // 2`` zeros on each side, or an explicit int / pair of
    ints): the operator is a restriction of a circular convolution on a larger grid. With
    :math:`x` embedded in an :math:`N \times N` grid of zeros, :math:`N \ge n + p`, no tap of
    the zero-padded convolution reaches around the circle, so it equals
    :math:`P\, C_N\, E` with :math:`E` an isometric embedding and :math:`P` a coordinate
    projection; hence :math:`\|Z_n\|_2 \le \|C_N\|_2` for every such :math:`N`
    [delattre2024spectral]. That bound can lie 15% above the norm for large kernels on small
    images, so ``"gram"`` with ``tol``, no ``n_iter`` and ``dense`` first tries a tight certificate when
    the Gram matrix :math:`G = Z_n^\top Z_n` (or :math:`Z_n Z_n^\top`) has at most 2048 rows:
    :math:`G` is formed from the kernel alone (each entry sums products of the taps that meet),
    Lanczos estimates its top eigenvalue :math:`\theta`, and a Cholesky factorization that runs
    to completion on :math:`s I - G`, with :math:`s \approx (1 + \text{tol}/4)^2 \theta`,
    proves :math:`\|Z_n\|_2^2 \le s` up to rounding margins that are bounded explicitly
    [demmel1989floating], [rump2006verification]. The result is within about ``tol / 4`` of
    the norm itself. Otherwise (larger operators, or a shift that does not pass four times),
    ``"gram"`` returns the smallest of the embedding bounds over a few grid sizes. ``"exact"``
    builds the dense operator (up to 8192 on a side) and returns its largest singular value;
    ``"power"`` runs power iteration on the operator itself.

    Strides are exact for circular padding (space-to-depth turns them into a stride-1
    convolution with more input channels); for zero padding the bound applies to the strided
    circular convolution on the grid :math:`N`, a multiple of the stride.

    Floating point (``"gram"``): the kernel is divided by its largest entry and the scales are
    kept in float64, so any finite kernel (denormal to 1e38 in float32, an all-zero one giving 0)
    gets a finite bound; the bound is multiplied by the safety margin
    :math:`1 + (8 + 2\sqrt{n})\,\epsilon` with :math:`n = \max(c_{out}, c_{in})\, k_h k_w`
    and :math:`\epsilon` the kernel dtype's unit roundoff (see :func:`gram_iteration`), then
    rounded up into the kernel's dtype. ``"exact"`` and ``"power"`` are estimates, without margin.

    Args:
        kernel: ``(c_out, c_in, kh, kw)``, real, float32 or float64; rectangular kernels are fine.
        input_size: ``n`` or ``(h, w)``, the size of the input images.
        padding: ``"circular"``, ``"zeros"``, or the number of zeros padded (int or pair).
        stride: int or pair.
        method: ``"gram"`` (certified upper bound), ``"exact"``, or ``"power"`` (estimate).
        n_iter: Gram steps (``"gram"``, default: until ``tol``) or power iterations
            (``"power"``, default 100).
        tol: certified relative gap at which ``"gram"`` stops (None: exactly ``n_iter`` steps,
            default 6, on every frequency, as in the original algorithm). With zero padding the
            gap is to the zero-padded norm itself when the Cholesky certificate applies, and
            otherwise to the circular bound on the larger grid, which can lie a few percent
            above the norm (more for large kernels on small images).
        generator: seeds ``"power"``.
        dense: with zero padding and ``"gram"``, try the Cholesky certificate of the Gram
            matrix first (False: the circular-embedding bound only).

    Returns:
        A 0-dim tensor in the kernel's dtype; differentiable with respect to ``kernel``.

    Raises:
        ValueError: a kernel that is not 4-D or holds NaN/Inf, ``input_size`` < 1 or (circular)
            smaller than the kernel, a circular ``input_size`` the stride does not divide, an
            unknown padding or method, or ``"exact"`` on a zero-padded operator too large to
            build.
    """
    kernel = _check_kernel(kernel)
    h, w = check_pair(input_size, "input_size", 1)
    stride_hw = check_pair(stride, "stride", 1)
    method = check_choice(method, "method", _METHODS)
    tol = check_tol(tol, allow_none=True)
    check_generator(generator)
    if n_iter is not None:
        check_int(n_iter, "n_iter", 0 if method == "gram" else 1)
    if not isinstance(dense, bool):
        raise TypeError(f"dense must be a bool, got {dense!r}")
    kh, kw = kernel.shape[-2:]
    mode, pad = _check_padding(padding, (kh, kw))

    if mode == "circular":
        if method == "gram":
            conv_transfer_matrices(kernel[:1, :1], (h, w), stride=stride_hw)  # checks sizes only
            grid = (h // stride_hw[0], w // stride_hw[1])
            return _certified_conv(_circular_gram_bound(_polyphase(kernel, stride_hw), grid, n_iter, tol), kernel)
        blocks = conv_transfer_matrices(kernel, (h, w), stride=stride_hw)
        if method == "exact":
            return torch.linalg.matrix_norm(blocks, ord=2).max().to(kernel.dtype)
        return power_iteration(blocks, n_iter=n_iter or 100, generator=generator).max().to(kernel.dtype)

    if (h + 2 * pad[0] - kh) // stride_hw[0] + 1 < 1 or (w + 2 * pad[1] - kw) // stride_hw[1] + 1 < 1:
        raise ValueError(f"input_size {(h, w)} gives an empty output with kernel {(kh, kw)} and padding {pad}")
    if method == "exact":
        matrix = conv_operator_matrix(kernel, (h, w), padding=pad, stride=stride_hw)
        return torch.linalg.matrix_norm(matrix, ord=2)
    if method == "power":
        x0 = torch.zeros(1, kernel.shape[1], h, w, dtype=kernel.dtype, device=kernel.device)
        conv = lambda x: F.conv2d(x, kernel, stride=stride_hw, padding=pad)  # noqa: E731
        _, vjp = torch.func.vjp(conv, x0)
        return power_iteration(
            conv,
            adjoint=lambda y: vjp(y)[0],
            input_shape=x0.shape,
            dtype=kernel.dtype,
            device=kernel.device,
            n_iter=n_iter or 100,
            generator=generator,
        )
    if dense and n_iter is None and tol is not None:
        certified = _cholesky_conv_norm(kernel, (h, w), ((pad[0], pad[0]), (pad[1], pad[1])), stride_hw, tol)
        if certified is not None:
            return _certified_conv(certified, kernel)
    return _certified_conv(_embedding_bound(kernel, (h, w), pad, stride_hw, n_iter, tol), kernel)


def _embedding_bound(
    kernel: Tensor, size: tuple[int, int], pad: tuple[int, int], stride: tuple[int, int], n_iter: int | None,
    tol: float | None,
) -> Tensor:
    """The smallest circular-embedding bound (float64, before the safety margin) of a zero-padded
    convolution over a few grid sizes (see conv_spectral_norm)."""
    kh, kw = kernel.shape[-2:]
    poly = _polyphase(kernel, stride)
    spatial = _spatial_gram(poly) if tol is not None and (n_iter is None or n_iter >= 2) else None
    bounds = []
    for n_h, n_w in zip(
        _zero_padding_grids(size[0], pad[0], stride[0], kh, extra=2),
        _zero_padding_grids(size[1], pad[1], stride[1], kw, extra=2),
    ):
        grid = (n_h // stride[0], n_w // stride[1])
        bounds.append(_circular_gram_bound(poly, grid, n_iter, tol, spatial))
    return torch.stack(bounds).min()


def _certified_conv(bound: Tensor, kernel: Tensor) -> Tensor:
    """A float64 Gram bound of a convolution times the safety margin (:func:`_safety`, with the
    longest sums those of the autocorrelation and the Fourier transform: ``max(c_out, c_in) kh
    kw`` terms), rounded up into the kernel's dtype."""
    c_out, c_in, kh, kw = kernel.shape
    return _round(bound.to(torch.float64) * _safety(kernel.dtype, max(c_out, c_in) * kh * kw), kernel.dtype, up=True)


# ----------------------------------------------------------------------------- Cholesky certificate
#
# For a zero-padded convolution T on images small enough, the Gram matrix G = T^T T (or T T^T) is
# formed from the kernel alone (each entry is a sum of products of kernel entries over the taps
# that meet), its top eigenvalue is located by Lanczos, and s I - G is shown positive definite by
# a successful Cholesky factorization, with every rounding error bounded: ||T||_2^2 <= s + margins.

_CHOLESKY_SIDE = 2048  # largest Gram matrix certified by Cholesky (about 0.2 s of one CPU core)
_UNIT = 2.0**-53  # unit roundoff of float64
_TINY = 2.0**-1022  # smallest normal float64


def _gamma(n: int) -> float:
    """gamma_n = n u / (1 - n u): the relative error bound of a sum of n products in float64."""
    return n * _UNIT / (1 - n * _UNIT)


def _axis_incidence(n_in: int, n_out: int, k: int, stride: int, before: int, rows: bool, device) -> Tensor:
    """The 0/1 tensor ``S[a, a', i, j]`` (float64) through which one spatial axis enters the Gram
    matrix of a zero-padded convolution whose output ``q`` reads input ``q * stride - before + a``
    with tap ``a`` (inputs outside ``[0, n_in)`` are padding zeros). Columns (``rows`` False,
    ``i, j`` input positions): 1 when some output reads ``i`` with tap ``a`` and ``j`` with tap
    ``a'``. Rows (``i, j`` output positions): 1 when outputs ``i`` and ``j`` read one input
    position with taps ``a`` and ``a'``."""
    positions = torch.arange(n_out, device=device)[:, None] * stride - before + torch.arange(k, device=device)
    inside = (positions >= 0) & (positions < n_in)
    reads = F.one_hot(positions.clamp(0, n_in - 1), n_in).to(torch.float64) * inside[..., None]  # (q, a, p)
    if rows:
        return torch.einsum("qap,rbp->abqr", reads, reads)
    return torch.einsum("qap,qbr->abpr", reads, reads)


def _zero_padded_gram(
    kernel: Tensor, size: tuple[int, int], pads: tuple[tuple[int, int], tuple[int, int]], stride: tuple[int, int],
    rows: bool | None = None,
) -> tuple[Tensor, bool]:
    r"""(G, rows): the Gram matrix of the smaller side of the zero-padded convolution of a float64
    ``kernel`` on ``size`` images, padded ``pads = ((top, bottom), (left, right))``: with ``rows``,
    :math:`G = T T^\top` indexed by outputs (channel, row, column), else :math:`G = T^\top T`
    indexed by inputs. :math:`G = \sum M_{ab, a'b'} \otimes S^h_{a a'} \otimes S^w_{b b'}` with
    :math:`M` the Gram matrix of the reshaped kernel over the summed channels and :math:`S` the
    incidences of :func:`_axis_incidence`; each entry is a sum of at most ``c kh kw`` products
    of kernel entries (``c`` the summed channels). ``rows`` forces a side (default: the smaller)."""
    c_out, c_in, kh, kw = kernel.shape
    (top, bottom), (left, right) = pads
    h, w = size
    out_h = (h + top + bottom - kh) // stride[0] + 1
    out_w = (w + left + right - kw) // stride[1] + 1
    if rows is None:
        rows = c_out * out_h * out_w < c_in * h * w
    factor = kernel.transpose(0, 1) if rows else kernel  # the channel summed over comes first
    gram = torch.einsum("ocab,odef->cabdef", factor, factor)
    s_h = _axis_incidence(h, out_h, kh, stride[0], top, rows, kernel.device)
    s_w = _axis_incidence(w, out_w, kw, stride[1], left, rows, kernel.device)
    half = torch.einsum("cabdef,aeij->cbdfij", gram, s_h)
    G = torch.einsum("cbdfij,bfkl->cikdjl", half, s_w)
    side = G.shape[0] * G.shape[1] * G.shape[2]
    return G.reshape(side, side), rows


def _top_eigenpair(G: Tensor, tol: float, max_steps: int = 96) -> tuple[float, float, Tensor]:
    """(theta, residual, y): the largest Ritz value of the symmetric ``G`` from Lanczos with full
    reorthogonalization (started from a fixed random vector), the residual ``||G y - theta y||``
    of its unit Ritz vector ``y``, and ``y``. Some eigenvalue of G lies within ``residual`` of
    ``theta``; Lanczos stops once the residual is below ``tol / 8`` of ``theta``. These only
    guide the choice of the shift: the certificate does not rely on them."""
    n = G.shape[0]
    steps = min(n, max_steps)
    if tol >= 1e-5:  # a guide only: single precision halves the memory traffic of the products
        G = G.to(torch.float32)
    generator = torch.Generator(device=G.device).manual_seed(0)
    q = torch.randn(n, dtype=G.dtype, device=G.device, generator=generator)
    q = q / torch.linalg.vector_norm(q)
    Q = G.new_empty(steps, n)
    alphas, betas = G.new_zeros(steps), G.new_zeros(steps)
    for j in range(steps):
        Q[j] = q
        w = G @ q
        alphas[j] = torch.dot(w, q)
        basis = Q[: j + 1]
        for _ in range(2):
            w = w - basis.T @ (basis @ w)
        beta = torch.linalg.vector_norm(w)
        m = j + 1
        tri = torch.diag(alphas[:m]) + torch.diag(betas[: m - 1], 1) + torch.diag(betas[: m - 1], -1)
        theta, S = torch.linalg.eigh(tri)
        residual = float(beta * S[-1, -1].abs())
        top = float(theta[-1])
        if m == steps or residual <= tol / 8 * abs(top) or float(beta) <= 1e-13 * abs(top):
            break
        betas[j] = beta
        q = w / beta
    y = (S[:, -1] @ Q[:m]).to(torch.float64)
    return top, residual, y / torch.linalg.vector_norm(y)


def _cholesky_certified_max(
    G: Tensor, terms: int, tol: float, abs_trace: float | None = None
) -> tuple[float, Tensor] | None:
    r"""A certified upper bound of the largest eigenvalue of the exact Gram matrix of which the
    float64 ``G`` is the computed version, and a unit vector close to its eigenvector; None when
    no shift :math:`s` up to :math:`(1 + \text{tol})^4` times the Lanczos estimate passes.

    Bound. Let :math:`G_\star` be the exact Gram matrix, whose computed entries are sums of at
    most ``terms`` products: :math:`|G - G_\star| \le \gamma_{\text{terms}} |T|^\top |T|`
    entrywise, and by Cauchy-Schwarz on the columns of :math:`|T|`,
    :math:`\|G - G_\star\|_2 \le \gamma_{\text{terms}} \operatorname{tr} (|T|^\top |T|)`, which is
    :math:`\operatorname{tr} G_\star` when every entry of :math:`T` is a single kernel entry
    (zero padding; other paddings add entries up and pass ``abs_trace``, a computed value of
    :math:`\operatorname{tr} (|T|^\top |T|)` from sums of nonnegative terms). The shifted
    :math:`B = \mathrm{fl}(sI - G)` differs from :math:`sI - G` on the diagonal only, by at most
    :math:`u\,|s - G_{ii}|`. If Cholesky runs to completion on :math:`B` in floating point, then
    :math:`B + \Delta = R^\top R \succeq 0` with :math:`|\Delta_{ij}| \le \gamma_{n+1}
    |R|^\top|R|` and, again by Cauchy-Schwarz, :math:`\|\Delta\|_2 \le \alpha \operatorname{tr}
    B` with :math:`\alpha = \gamma_{n+1} / (1 - \gamma_{n+1})` [demmel1989floating], [rump2006verification]; hence
    :math:`\lambda_{\max}(G_\star) \le s + \alpha \operatorname{tr} B + u \max_i |s - G_{ii}| +
    \gamma_{\text{terms}} \operatorname{tr} (|T|^\top |T|)`, plus an underflow term. Every piece is
    rounded generously; the entries of G should be of order one (the caller scales the kernel by a
    power of two)."""
    n = G.shape[0]
    theta, residual, y = _top_eigenpair(G, tol)
    if not theta > 0:
        return None
    trace = float(torch.diagonal(G).sum()) if abs_trace is None else abs_trace
    trace_exact = trace * (1 + _gamma(n)) / (1 - _gamma(terms + 1))  # >= tr |T|^T |T|
    estimate = theta + residual
    alpha = _gamma(n + 1) / (1 - _gamma(n + 1))
    for factor in (1 + tol / 4, 1 + tol, (1 + tol) ** 2, (1 + tol) ** 4):
        s = estimate * factor * factor  # factor applies to the norm, its square to the eigenvalue
        B = -G
        B.diagonal().add_(s)
        _, info = torch.linalg.cholesky_ex(B)
        if int(info) != 0:
            continue
        diagonal = torch.diagonal(B)
        trace_b = float(diagonal.sum()) * (1 + _gamma(n))
        shift_error = _UNIT * float((s - torch.diagonal(G)).abs().max())
        margin = alpha * trace_b + shift_error + _gamma(terms + 1) * trace_exact + 4 * n * (n + 2) * _TINY
        return (s + margin) * (1 + 4 * _UNIT), y
    return None


def _cholesky_conv_norm(
    kernel: Tensor,
    size: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    stride: tuple[int, int],
    tol: float,
) -> Tensor | None:
    r"""Certified bound of the zero-padded convolution within about ``tol`` of its norm, from the
    Cholesky certificate of its Gram matrix (:func:`_cholesky_certified_max`); None when the
    Gram matrix has a side over ``_CHOLESKY_SIDE`` or no shift passes. Float64, differentiable:
    the value times :math:`\rho / \mathrm{sg}(\rho)`, with :math:`\rho = \|T x\| / \|x\|` at the
    Lanczos vector :math:`x` (held constant), whose gradient is that of :math:`\sigma_1(T)` when
    :math:`x` is its top right singular vector."""
    c_out, c_in, kh, kw = kernel.shape
    (top, bottom), (left, right) = pads
    h, w = size
    out_h = (h + top + bottom - kh) // stride[0] + 1
    out_w = (w + left + right - kw) // stride[1] + 1
    if min(c_out * out_h * out_w, c_in * h * w) > _CHOLESKY_SIDE:
        return None
    exact = kernel.detach().to(torch.float64)
    peak = float(exact.abs().max())
    if peak == 0:
        return (kernel.sum() * 0.0).to(torch.float64)  # zero, with a zero gradient
    with torch.no_grad():
        scale = 2.0 ** math.floor(math.log2(peak))  # a power of two: the scaled kernel is exact
        G, rows = _zero_padded_gram(exact / scale, size, pads, stride)
        summed = c_out if not rows else c_in
        found = _cholesky_certified_max(G, summed * kh * kw, tol)
        if found is None:
            return None
        eigenvalue, vector = found
        bound = math.sqrt(eigenvalue) * (1 + 2 * _UNIT) * scale
        if rows:  # the right singular vector is T^T y: the transposed convolution, then the crop
            z = F.conv_transpose2d(vector.reshape(1, c_out, out_h, out_w), exact, stride=stride)
            z = F.pad(z, (0, w + left + right - z.shape[-1], 0, h + top + bottom - z.shape[-2]))
            vector = z[..., top : top + h, left : left + w]
        x = vector.reshape(1, c_in, h, w)
        x = x / torch.linalg.vector_norm(x)
    rho = torch.linalg.vector_norm(F.conv2d(F.pad(x, (left, right, top, bottom)), kernel.to(torch.float64), stride=stride))
    return _carrying_gradient(bound, rho)


def _carrying_gradient(bound: float, rho: Tensor) -> Tensor:
    """``bound`` as a float64 tensor on ``rho``'s device with the gradient of ``bound * rho /
    sg(rho)`` (``rho`` a Rayleigh quotient, positive): exactly the value, since x / x rounds to 1."""
    value = torch.as_tensor(bound, dtype=torch.float64, device=rho.device)
    if not rho.requires_grad or not float(rho.detach()) > 0:
        return value
    return value * (rho / rho.detach())


def _padded_cholesky_norm(
    kernel: Tensor, size: tuple[int, int], pads: tuple[int, int, int, int], mode: str, stride: tuple[int, int],
    tol: float,
) -> Tensor | None:
    r"""Certified bound, within about ``tol`` of the norm, of the convolution of ``c_in x h x w``
    images padded ``pads = (left, right, top, bottom)`` in ``mode`` (``"circular"``,
    ``"reflect"``, ``"replicate"``): :math:`T = V P` with :math:`V` the valid convolution of the
    padded image and :math:`P` the padding, a 0/1 matrix that copies each padded pixel from its
    source, so :math:`T^\top T = P^\top (V^\top V) P`: the Gram matrix of :math:`V` (from the
    kernel, :func:`_zero_padded_gram`) with the rows and columns of the copies of a pixel added
    up. Then :func:`_cholesky_certified_max`, each entry a sum of at most ``copies^2 c kh kw``
    products, with the trace of :math:`|T|^\top |T|` from the kernel's absolute values. None
    when the Gram matrix has over ``_CHOLESKY_SIDE`` rows or no shift passes. Float64,
    differentiable as :func:`_cholesky_conv_norm`."""
    c_out, c_in, kh, kw = kernel.shape
    h, w = size
    left, right, top, bottom = pads
    if c_in * h * w > _CHOLESKY_SIDE:
        return None
    padded = (h + top + bottom, w + left + right)
    exact = kernel.detach().to(torch.float64)
    peak = float(exact.abs().max())
    if peak == 0:
        return (kernel.sum() * 0.0).to(torch.float64)
    index = torch.arange(h * w, dtype=torch.float64, device=kernel.device).reshape(1, 1, h, w)
    source = F.pad(index, pads, mode=mode).flatten().long()  # padded pixel -> its source pixel
    copies = int(torch.bincount(source, minlength=h * w).max())
    channel = torch.arange(c_in, device=kernel.device)[:, None] * (h * w)
    source = (source[None, :] + channel).flatten()
    with torch.no_grad():
        scale = 2.0 ** math.floor(math.log2(peak))
        grams = []
        for values in (exact / scale, exact.abs() / scale):
            valid, _ = _zero_padded_gram(values, padded, ((0, 0), (0, 0)), stride, rows=False)
            folded = valid.new_zeros(c_in * h * w, valid.shape[1]).index_add_(0, source, valid)
            grams.append(folded.new_zeros(c_in * h * w, c_in * h * w).index_add_(1, source, folded))
        G, G_abs = grams
        terms = copies * copies * c_out * kh * kw
        abs_trace = float(torch.diagonal(G_abs).sum()) * (1 + _gamma(c_in * h * w))
        found = _cholesky_certified_max(G, terms, tol, abs_trace=abs_trace)
        if found is None:
            return None
        eigenvalue, vector = found
        bound = math.sqrt(eigenvalue) * (1 + 2 * _UNIT) * scale
        x = vector.reshape(1, c_in, h, w)
    rho = torch.linalg.vector_norm(F.conv2d(F.pad(x, pads, mode=mode), kernel.to(torch.float64), stride=stride))
    return _carrying_gradient(bound, rho)


# ----------------------------------------------------------------------------- torch's convolutions
#
# nn.Conv2d pads (left, right) per dimension, in one of four modes, then applies a strided,
# dilated, grouped valid convolution. The helpers below rewrite each case as one of the
# operators conv_spectral_norm bounds (or a row selection / column sum of one).

# Largest dense convolution operator (rows * cols * min(rows, cols)) with circular, reflect or
# replicate padding for which Gram iteration on the unrolled matrix is run (about 0.3 s of CPU
# at the limit). Zero-padded convolutions use the Cholesky certificate instead.
_DENSE_CONV_FLOPS = 2**30

_PADDING_MODES = ("zeros", "circular", "reflect", "replicate")


def _dilate(kernel: Tensor, dilation: tuple[int, int]) -> Tensor:
    """The kernel of a dilated convolution as an ordinary kernel with zeros between the taps."""
    dh, dw = dilation
    if (dh, dw) == (1, 1):
        return kernel
    c_out, c_in, kh, kw = kernel.shape
    out = kernel.new_zeros(c_out, c_in, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
    out[:, :, ::dh, ::dw] = kernel
    return out


def _symmetric(k: int, left: int, right: int) -> tuple[int, int, int]:
    """Zeros to add (before, after) to a kernel of length k, and a symmetric padding p, such that
    the convolution padded (left, right) equals the one padded (p, p) with the longer kernel, up
    to outputs that are identically zero, and p < the new kernel length.

    Padded (left, right), output i reads x[i s + a - left], a < k. Prepending d = right - left
    zeros and padding p = right on both sides reads x[i s + a + d - p] = x[i s + a - left] with
    the same number of outputs; appending d = left - right zeros with p = left does too. If then
    p >= k', appending zeros up to k'' = p + 1 drops only outputs with i s - p >= n, whose
    windows lie entirely in the right padding."""
    before, after = max(right - left, 0), max(left - right, 0)
    p = max(left, right)
    if p >= k + before + after:
        after += p + 1 - (k + before + after)
    return before, after, p


def _dense_fits(rows: int, cols: int) -> bool:
    return rows * cols * min(rows, cols) <= _DENSE_CONV_FLOPS


def _zero_padded_conv_norm(
    kernel: Tensor,
    size: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    stride: tuple[int, int],
    tol: float,
    *,
    dense: bool = True,
) -> tuple[Tensor, str]:
    """Certified bound of a zero-padded convolution: for operators small enough (and ``dense``),
    the Cholesky certificate of its Gram matrix, within about ``tol`` of the norm itself;
    otherwise the circular-embedding bound of conv_spectral_norm."""
    if dense:
        certified = _cholesky_conv_norm(kernel, size, pads, stride, tol)
        if certified is not None:
            return _certified_conv(certified, kernel), "Cholesky certificate of the Gram matrix (certified)"
    (lh, rh), (lw, rw) = pads
    bh, ah, ph = _symmetric(kernel.shape[-2], lh, rh)
    bw, aw, pw = _symmetric(kernel.shape[-1], lw, rw)
    kernel = F.pad(kernel, (bw, aw, bh, ah))
    return _certified_conv(_embedding_bound(kernel, size, (ph, pw), stride, None, tol), kernel), "gram (certified)"


def _padded_dense_norm(
    kernel: Tensor,
    size: tuple[int, int],
    pads: tuple[int, int, int, int],
    mode: str,
    stride: tuple[int, int],
    tol: float,
) -> Tensor | None:
    """Gram bound of the unrolled operator of a circular/reflect/replicate-padded convolution,
    or None when it is too large: the valid convolution's matrix on the padded image, with the
    columns of the copies of a pixel added up (the matrix times the padding's selection matrix)."""
    h, w = size
    c_out, c_in, kh, kw = kernel.shape
    H, W = h + pads[2] + pads[3], w + pads[0] + pads[1]
    out_h, out_w = (H - kh) // stride[0] + 1, (W - kw) // stride[1] + 1
    if not _dense_fits(c_out * out_h * out_w, c_in * H * W):
        return None
    valid = conv_operator_matrix(kernel, (H, W), padding=0, stride=stride)
    index = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
    source = F.pad(index, pads, mode=mode).flatten().long().to(valid.device)  # padded pixel -> pixel
    columns = (source[None, :] + h * w * torch.arange(c_in, device=valid.device)[:, None]).flatten()
    matrix = valid.new_zeros(valid.shape[0], c_in * h * w).index_add(1, columns, valid)
    return gram_iteration(matrix, tol=tol)


def _fold(kernel: Tensor, n: int, dim: int) -> Tensor:
    """Wrap a kernel longer than a circular image: taps a and a + n act on the same pixel."""
    k = kernel.shape[dim]
    if k <= n:
        return kernel
    pad = [0, 0, 0, 0]
    pad[1 if dim == -1 else 3] = -k % n
    kernel = F.pad(kernel, pad)
    if dim == -1:
        return kernel.reshape(*kernel.shape[:-1], -1, n).sum(-2)
    c_out, c_in, _, kw = kernel.shape
    return kernel.reshape(c_out, c_in, -1, n, kw).sum(2)


def _circular_positions(n: int, out: int, stride: int, left: int) -> tuple[int, int]:
    """(stride to use, multiplicity): output i of the circularly padded convolution is output
    (i s - left) mod n of the stride-1 circular convolution. When the stride divides n and these
    positions are distinct and in one coset of sZ_n, the layer is (a restriction of) the strided
    circular convolution, up to a shift; otherwise it is a row selection of the stride-1 one in
    which a row appears at most `multiplicity` times."""
    positions = [(i * stride - left) % n for i in range(out)]
    counts = Counter(positions)
    if n % stride == 0 and max(counts.values()) == 1 and len({p % stride for p in positions}) == 1:
        return stride, 1
    return 1, max(counts.values())


def _check_conv_padding(padding, kernel_size: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """(left, right) padding per spatial dimension, as nn.Conv2d applies it, from an int, a pair,
    ``"same"``, ``"valid"`` or ``((top, bottom), (left, right))``; ``kernel_size`` is the
    dilated one."""
    if isinstance(padding, str):
        check_choice(padding, "padding", ("same", "valid"))
        if padding == "valid":
            return (0, 0), (0, 0)
        totals = [k - 1 for k in kernel_size]  # "same": dilation * (k - 1), k the dilated size
        return tuple((t // 2, t - t // 2) for t in totals)  # type: ignore[return-value]
    if isinstance(padding, (tuple, list)) and len(padding) == 2 and all(isinstance(p, (tuple, list)) for p in padding):
        try:
            return check_pair(padding[0], "padding", 0), check_pair(padding[1], "padding", 0)
        except ValueError:
            raise ValueError(
                f"padding must be an int >= 0, a pair of them, 'same', 'valid' or ((top, bottom), "
                f"(left, right)), got {padding!r}"
            ) from None
    ph, pw = check_pair(padding, "padding", 0)
    return (ph, ph), (pw, pw)


def _conv2d_bound(
    kernel: Tensor,
    size: tuple[int, int],
    pads: tuple[tuple[int, int], tuple[int, int]],
    mode: str,
    stride: tuple[int, int],
    groups: int,
    tol: float,
    dense: bool,
) -> ConvNorm:
    """The body of conv2d_norm (arguments checked, the kernel dilated already)."""
    h, w = size
    kh, kw = kernel.shape[-2:]
    (lh, rh), (lw, rw) = pads
    sh, sw = stride
    out_h = (h + lh + rh - kh) // sh + 1
    out_w = (w + lw + rw - kw) // sw + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"input_size {(h, w)} gives an empty output with the (dilated) kernel {(kh, kw)} and padding {pads}"
        )
    if mode == "reflect" and (max(lh, rh) >= h or max(lw, rw) >= w):
        raise ValueError(f"padding {pads} must be smaller than input_size {(h, w)} for padding_mode={mode!r}")
    if mode == "circular" and (max(lh, rh) > h or max(lw, rw) > w):
        raise ValueError(f"padding {pads} must be at most input_size {(h, w)} for padding_mode='circular'")
    mode = "zeros" if lh == rh == lw == rw == 0 else mode  # no padding: all modes agree
    per_group = kernel.shape[0] // groups
    results = []
    for g in range(groups):
        k = kernel[g * per_group : (g + 1) * per_group]
        if mode == "zeros":
            results.append(_zero_padded_conv_norm(k, (h, w), pads, stride, tol, dense=dense))
            continue
        if mode == "circular":
            stride_h, mult_h = _circular_positions(h, out_h, sh, lh)
            stride_w, mult_w = _circular_positions(w, out_w, sw, lw)
            value = conv_spectral_norm(
                _fold(_fold(k, h, -2), w, -1), (h, w), padding="circular", stride=(stride_h, stride_w),
                method="gram", tol=tol,
            )  # fmt: skip
            method = "gram (certified)"
            tight = mult_h * mult_w == 1  # the DFT bound is within tol of the norm
            if mult_h * mult_w > 1:
                value = value * math.sqrt(mult_h * mult_w)
                method = f"gram (certified) x sqrt({mult_h * mult_w}) repeated outputs"
        else:  # reflect / replicate: a row selection P (one 1 per row) then a valid convolution
            index = torch.arange(h * w, dtype=torch.float64).reshape(1, 1, h, w)
            padded = F.pad(index, (lw, rw, lh, rh), mode=mode)
            copies = int(torch.bincount(padded.flatten().long(), minlength=h * w).max())
            value, _ = _zero_padded_conv_norm(
                k, (h + lh + rh, w + lw + rw), ((0, 0), (0, 0)), stride, tol, dense=False
            )
            value = value * math.sqrt(copies)  # ||P||_2 = sqrt(largest number of copies of a pixel)
            method = f"gram (certified) x sqrt({copies}) {mode} padding"
            tight = False
        certified = None if tight or not dense else _padded_cholesky_norm(k, (h, w), (lw, rw, lh, rh), mode, stride, tol)
        if certified is not None:
            certified = _certified_conv(certified, k)
            if certified < value:
                value, method = certified, "Cholesky certificate of the Gram matrix (certified)"
        elif dense:  # the certificate failed or was skipped (the DFT bound is within tol): the old check
            unrolled = _padded_dense_norm(k, (h, w), (lw, rw, lh, rh), mode, stride, tol)
            if unrolled is not None and unrolled < value:
                value, method = unrolled, "gram on the unrolled operator (certified)"
        results.append((value, method))
    value, method = max(results, key=lambda result: float(result[0].detach()))
    if groups > 1:
        method = f"{method}, max over {groups} groups"
    return ConvNorm(value, method)


def conv2d_norm(
    kernel: Tensor,
    input_size: int | tuple[int, int],
    *,
    padding: str | int | tuple = 0,
    padding_mode: str = "zeros",
    stride: int | tuple[int, int] = 1,
    dilation: int | tuple[int, int] = 1,
    groups: int = 1,
    tol: float = 1e-3,
    dense: bool = True,
) -> ConvNorm:
    r"""Certified bound of the norm of a 2-D convolution with ``torch.nn.Conv2d``'s semantics.

    The linear map is :math:`x \mapsto` ``F.conv2d(F.pad(x, pads, mode), kernel, stride=stride,
    dilation=dilation, groups=groups)`` on ``c_in x h x w`` images (bias ignored: it does not
    change the Lipschitz constant), with ``padding`` as in ``nn.Conv2d`` (an int, a pair,
    ``"same"`` with torch's asymmetric split, ``"valid"``) or explicit ``((top, bottom), (left,
    right))``. Dilation inserts zeros between the taps; ``groups`` make the operator
    block-diagonal, so its norm is the largest over groups.

    * Zero padding: rewritten as a symmetric padding of a zero-extended kernel (the same map up
      to outputs that are identically zero) and bounded by :func:`conv_spectral_norm`
      (``method="gram"``: the circular embedding of [delattre2024spectral]).
    * Circular padding: output :math:`i` is output :math:`(i s - p) \bmod n` of the circular
      convolution (a kernel longer than the image is folded), so the map is the strided circular
      convolution up to a shift when the stride divides the size and the outputs cover
      distinct positions of one coset (the bound is then within ``tol`` of the norm
      [sedghi2019singular]), and otherwise a row selection of the stride-1 circular convolution,
      bounded by it times :math:`\sqrt{\text{largest repetition}}`.
    * Reflect and replicate padding: the valid convolution of the padded image times
      :math:`\sqrt{\text{largest number of copies of a pixel}}`, the norm of the padding map.

    With ``dense`` (default), a convolution whose Gram matrix has at most 2048 rows gets the
    Cholesky certificate of :func:`conv_spectral_norm`, within about ``tol / 4`` of the norm
    itself (the embedding bound can be 15% above the norm on 4x4 images, the reflect and
    replicate bounds twice the norm). For reflect, replicate and circular padding the layer is
    :math:`T = V P`, the valid convolution of the padded image after the padding :math:`P`
    (which copies pixels), so :math:`T^\top T = P^\top V^\top V P` is formed from the kernel too;
    the circular case uses it only where the DFT bound is not already within ``tol``. Should
    the certificate fail, operators up to about a thousand on a side are unrolled
    (:func:`conv_operator_matrix`, times the padding's selection matrix) and bounded by
    :func:`gram_iteration`. The smallest certified bound is kept.

    Floating point: every bound carries the safety margin of :func:`gram_iteration` /
    :func:`conv_spectral_norm` for the kernel's dtype (pass a float64 kernel for a bound of the
    float32 weights read exactly). Differentiable with respect to ``kernel``.

    Args:
        kernel: ``(c_out, c_in / groups, kh, kw)``, real, finite.
        input_size: ``n`` or ``(h, w)``, the spatial size of the input images.
        padding: see above.
        padding_mode: ``"zeros"``, ``"circular"``, ``"reflect"`` or ``"replicate"``.
        stride, dilation: int or pair, >= 1.
        groups: >= 1, dividing ``c_out``.
        tol: relative gap at which the Gram iterations stop, in (0, 1).
        dense: also bound the unrolled operator when it is small.

    Returns:
        :class:`ConvNorm` ``(upper, method)``: ``upper`` a 0-dim tensor in the kernel's dtype.

    Raises:
        TypeError, ValueError: bad arguments (named), or sizes that give an empty output.

    References:
        [delattre2024spectral], [sedghi2019singular], [delattre2023efficient], [demmel1989floating],
        [rump2006verification].
    """
    kernel = _check_kernel(kernel)
    h, w = check_pair(input_size, "input_size", 1)
    padding_mode = check_choice(padding_mode, "padding_mode", _PADDING_MODES)
    stride = check_pair(stride, "stride", 1)
    dilation = check_pair(dilation, "dilation", 1)
    groups = check_int(groups, "groups", 1)
    if kernel.shape[0] % groups:
        raise ValueError(f"groups={groups} must divide the kernel's output channels {kernel.shape[0]}")
    tol = check_tol(tol)
    if not isinstance(dense, bool):
        raise TypeError(f"dense must be a bool, got {dense!r}")
    kernel = _dilate(kernel, dilation)
    pads = _check_conv_padding(padding, tuple(kernel.shape[-2:]))
    return _conv2d_bound(kernel, (h, w), pads, padding_mode, stride, groups, tol, dense)


def conv2d_module_norm(
    conv: nn.Conv2d,
    input_size: int | tuple[int, int],
    *,
    tol: float = 1e-3,
    dense: bool = True,
    dtype: torch.dtype = torch.float64,
) -> ConvNorm:
    r"""Certified bound of the norm of an ``nn.Conv2d`` module's linear part on ``h x w`` images.

    Reads the module's weight, ``padding`` (int, pair, ``"same"``, ``"valid"``),
    ``padding_mode`` (zeros, circular, reflect, replicate), ``stride``, ``dilation`` and
    ``groups``, and returns :func:`conv2d_norm` of the weight converted to ``dtype`` (default
    float64: a bound of the module's weights read exactly; on an MPS device, which has no
    float64, the computation runs on the CPU). For every pair of inputs,
    :math:`\|\mathrm{conv}(x) - \mathrm{conv}(x')\|_2 \le` ``upper`` :math:`\|x - x'\|_2`.
    Differentiable with respect to the weight when autograd is on.

    Args:
        conv: an ``nn.Conv2d`` (its subclasses are read the same way: a subclass whose forward
            applies another weight needs its own bound).
        input_size: ``n`` or ``(h, w)``, the spatial size of the module's input.
        tol, dense: see :func:`conv2d_norm`.
        dtype: the floating dtype of the computation.

    Returns:
        :class:`ConvNorm` ``(upper, method)`` with ``upper`` a 0-dim tensor in ``dtype``.

    Raises:
        TypeError: ``conv`` not an ``nn.Conv2d``; ``dtype`` not a floating dtype.
        ValueError: the errors of :func:`conv2d_norm` (an ``input_size`` that gives no output).

    References:
        [delattre2024spectral], [sedghi2019singular].
    """
    if not isinstance(conv, nn.Conv2d):
        raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    weight = conv.weight
    if weight.device.type == "mps" and dtype == torch.float64:
        weight = weight.cpu()
    return conv2d_norm(
        weight.to(dtype), input_size, padding=conv.padding, padding_mode=conv.padding_mode,
        stride=conv.stride, dilation=conv.dilation, groups=conv.groups, tol=tol, dense=dense,
    )  # fmt: skip
