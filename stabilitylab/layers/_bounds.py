r"""Certified spectral-norm bounds with a fixed number of Gram steps, for the layers' forward.

The functions of :mod:`stabilitylab.spectral` check their inputs' values (NaN/Inf) and, with a
tolerance, stop on a data-dependent rule: both need the values on the host, which
``torch.compile(fullgraph=True)``, ``torch.export`` and ``meta`` tensors cannot provide, and
which costs a device-to-host sync per layer per step. The bounds here run the same certified
algorithms [delattre2023efficient] [delattre2024spectral] on the same building blocks, with a
fixed number of steps and no value check (the layers validate their parameters outside the
traced forward), so every operation is a tensor operation whose shapes depend only on the
shapes of the inputs:

* :func:`gram_bound` is :func:`stabilitylab.spectral.gram_iteration` with ``n_iter`` steps (the
  same float64 scales, safety margin and upward rounding; equal to it bit for bit);
* :func:`conv_bound` bounds a convolution on ``h x w`` images: circular padding by ``n_iter``
  Gram steps on every frequency of the (polyphase, for strides) kernel, the bound of
  ``conv_spectral_norm(kernel, size, padding="circular", stride=s, tol=None, n_iter=n_iter)``
  (to rounding), with its first two steps taken on spatial kernels (the autocorrelation and its
  self-convolution, real convolutions) instead of complex products at every frequency, as the
  tolerance path of :mod:`stabilitylab.spectral` does; zero padding by the circular bound on
  the smallest grid that contains the zero-padded operator (:math:`N \ge n + p`, a multiple of
  the stride, at least the kernel), a restriction of it [delattre2024spectral], hence a
  certified bound too.

With :math:`t` steps the bound exceeds the norm by at most a factor :math:`r^{1/2^{t+1}}`
(:math:`r` the rank of the matrices, for a convolution the channel count): 6 steps give under
3.3% for 64 channels, much less when the top singular value is separated from the others.
"""

from __future__ import annotations

import math

from torch import Tensor

import torch
import torch.nn.functional as F

from stabilitylab.spectral import (
    _autocorrelation,
    _certified_conv,
    _gram_bound64,
    _periodized_spectrum,
    _phases,
    _polyphase,
    _real_dtype,
    _round,
    _safety,
    _zero_padding_grids,
)

__all__: list[str] = []


def gram_bound(W: Tensor, n_iter: int) -> Tensor:
    """Certified upper bound of :math:`\\|W\\|_2` (``(..., m, n)`` -> ``(...)``) after ``n_iter``
    Gram steps, as :func:`stabilitylab.spectral.gram_iteration` (no value checks, no stopping
    rule: traceable); 0 for a zero matrix; differentiable."""
    upper, _ = _gram_bound64(W, n_iter, None)
    real = _real_dtype(W.dtype)
    return _round(upper * _safety(real, max(W.shape[-2:])), real, up=True)


def conv_grid(input_size: tuple[int, int], kernel_size: tuple[int, int], padding_mode: str,
              padding: tuple[int, int], stride: tuple[int, int]) -> tuple[int, int]:
    """The circular grid (after the polyphase downsampling) whose bound :func:`conv_bound` takes:
    the image itself for circular padding (``h / s``), the smallest grid containing the
    zero-padded operator otherwise."""
    (h, w), (sh, sw) = input_size, stride
    if padding_mode == "circular":
        return h // sh, w // sw
    n_h = _zero_padding_grids(h, padding[0], sh, kernel_size[0], extra=0)[0]
    n_w = _zero_padding_grids(w, padding[1], sw, kernel_size[1], extra=0)[0]
    return n_h // sh, n_w // sw


def conv_bound(kernel: Tensor, input_size: tuple[int, int], *, padding_mode: str, padding: tuple[int, int],
               stride: tuple[int, int], n_iter: int) -> Tensor:
    """Certified upper bound (0-dim, the kernel's dtype) of the norm of the convolution by
    ``kernel`` ``(c_out, c_in, kh, kw)`` on ``input_size`` images: ``padding_mode`` ``"circular"``
    (padding ``k // 2``, the image size divisible by the stride and at least the kernel) or
    ``"zeros"`` (``padding`` zeros on each side). ``n_iter`` Gram steps on every frequency;
    no value checks, no stopping rule: traceable. Differentiable."""
    grid = conv_grid(input_size, tuple(kernel.shape[-2:]), padding_mode, padding, stride)
    return _certified_conv(_grid_gram_bound(_polyphase(kernel, stride), grid, n_iter), kernel)


def _hermitian_spectrum(gram_kernel: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The transfer matrices ``M(f) = A(f) + i B(f)``, on the half spectrum of an ``h x w`` grid,
    of a centred Gram kernel ``(c, c, 2 kh - 1, 2 kw - 1)`` (offset 0 at the centre,
    ``G[-d] = G[d]^T``): Hermitian, so ``A`` is symmetric and ``B`` antisymmetric; both real,
    ``(h (w // 2 + 1), c, c)``."""
    h, w = grid
    sh, sw = gram_kernel.shape[-2:]
    spectrum = _periodized_spectrum(gram_kernel, grid)  # origin at index 0: a phase per frequency
    u = torch.arange(h, device=spectrum.device)
    v = torch.arange(w // 2 + 1, device=spectrum.device)
    centre = _phases(u, sh, h)[:, sh // 2].conj()[:, None] * _phases(v, sw, w)[:, sw // 2].conj()[None, :]
    spectrum = spectrum * centre.reshape(-1, 1, 1).to(spectrum.dtype)
    return spectrum.real.contiguous(), spectrum.imag.contiguous()


def _detached_scale(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(A / s, B / s, log s)`` (``log s`` in float64) with ``s = ||(A, B)||_F`` taken as a
    constant of the graph (1 for zeros): the values are exact, and a bound ``s^a f(A / s)^b`` has
    the gradient of ``f(A)^b`` when ``a = b``, as here, so no derivative flows through the norms."""
    s = torch.linalg.vector_norm(torch.stack((torch.linalg.vector_norm(A.detach()), torch.linalg.vector_norm(B.detach()))))
    s = torch.where(s > 0, s, torch.ones_like(s))
    return _flushed(A * (1 / s)), _flushed(B * (1 / s)), torch.log(s.to(torch.float64))


def _flushed(A: Tensor) -> Tensor:
    """``A`` (of unit norm) with the entries below the square root of the smallest normal number
    set to zero. The Gram iterates converge to rank one and their other entries decay towards
    the subnormal range, where CPU arithmetic is tens of times slower; their products could
    only form subnormals. The change, at most ``c * sqrt(tiny)`` in norm (1e-17 in float32), is
    ten orders of magnitude below the rounding the safety margin covers."""
    return F.hardshrink(A, math.sqrt(torch.finfo(A.dtype).tiny))


def _square_hermitian(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor]:
    """``(A + iB)^2`` of Hermitian matrices in three real products: ``A^2 - B^2`` and
    ``AB + BA = AB - (AB)^T`` (``A^T = A``, ``B^T = -B``); about twice as fast as complex products
    on the CPU."""
    AB = A @ B
    return torch.baddbmm(A @ A, B, B, alpha=-1), AB - AB.transpose(-2, -1)


def _grid_gram_bound(kernel: Tensor, grid: tuple[int, int], n_iter: int, *, return_iterate: bool = False,
                     prune: bool = False):
    r"""float64 bound (before the safety margin) of the circular convolution of a (polyphase) kernel
    on an ``h x w`` grid after ``n_iter`` Gram steps on every frequency [delattre2023efficient]:
    :math:`\sigma_1(K) \le \max_f \|M_f^{2^{t-1}}\|_F^{1/2^t}` with :math:`M_f = \hat K(f)^*
    \hat K(f)`. The first step is the kernel's autocorrelation (a real convolution whose transfer
    matrices are the :math:`M_f` [delattre2024spectral]), the others square the Hermitian
    :math:`M_f` in real arithmetic on the half spectrum (the other half holds their conjugates);
    the rescalings that keep every iterate of unit norm are constants of the graph.

    With ``prune`` (not traceable: the shapes depend on the values), a frequency whose upper
    bound falls below a lower bound of the norm (the Rayleigh quotient of the leading vector) is
    dropped: it cannot hold the maximum, and the bound is the same. With ``return_iterate``,
    also returns ``(A, B, rows)``: the last iterate and the flat frequencies it holds."""
    if kernel.shape[1] > kernel.shape[0]:
        kernel = kernel.flip(-2, -1).transpose(0, 1)  # the adjoint: the same norm, a smaller Gram
    peak = kernel.detach().abs().amax()
    peak = torch.where(peak > 0, peak, torch.ones_like(peak))  # entries in [-1, 1]: no overflow
    unit = kernel * (1 / peak)
    norm = torch.linalg.vector_norm(unit.detach())
    norm = torch.where(norm > 0, norm, torch.ones_like(norm))
    unit = unit * (1 / norm)
    log_scale = 2 * torch.log(peak.to(torch.float64) * norm.to(torch.float64))  # ||K||^2 / ||unit||^2
    A, B = _hermitian_spectrum(_autocorrelation(unit), grid)
    A, B = _flushed(A), _flushed(B)
    rows = torch.arange(A.shape[0], device=A.device)
    power = 2.0  # log_scale + log max_f ||M_f||_F bounds power * log sigma_1
    for step in range(n_iter - 1):
        A, B, log_r = _detached_scale(*_square_hermitian(A, B))
        log_scale = 2 * log_scale + log_r
        power *= 2
        if prune and step < n_iter - 2 and A.shape[0] > 1:
            fro = A.square().sum(dim=(-2, -1)) + B.square().sum(dim=(-2, -1))
            upper = torch.exp((log_scale + 0.5 * torch.log(fro.to(torch.float64))) / power)
            f, a, b = _leading_vector(A, B)
            vv = (a.square().sum() + b.square().sum()).to(torch.float64)
            lower = torch.sqrt(_transfer_times(unit.detach(), grid, rows[int(f)], a, b).to(torch.float64) / vv)
            lower = lower * (peak.to(torch.float64) * norm.to(torch.float64))  # unit = K / (peak norm)
            keep = upper * (1 + 1e-3) >= lower  # the rounding of either side cannot drop the maximum
            keep[int(f)] = True
            A, B, rows = A[keep], B[keep], rows[keep]
    top = (A.square().sum(dim=(-2, -1)) + B.square().sum(dim=(-2, -1))).max()  # max_f ||M_f||_F^2
    positive = top > 0
    log_top = torch.log(torch.where(positive, top, torch.ones_like(top)).to(torch.float64))
    bound = torch.exp((log_scale + 0.5 * log_top) / power)
    bound = torch.where(positive, bound, torch.zeros_like(bound))
    return (bound, (A, B, rows)) if return_iterate else bound


def _leading_vector(A: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(frequency index, real and imaginary parts of the largest column) of the Gram iterate
    ``A + iB`` with the largest Frobenius norm: after a few steps that column points along the top
    right singular vector of the transfer matrix at the frequency that attains the norm."""
    columns = A.square().sum(dim=-2) + B.square().sum(dim=-2)  # (F, c)
    flat = columns.flatten().argmax().reshape(1)  # index_select: static shapes when traced
    f, j = flat // columns.shape[-1], flat % columns.shape[-1]
    pick = lambda M: M.index_select(0, f).squeeze(0).index_select(-1, j).squeeze(-1)  # noqa: E731
    return f.squeeze(0), pick(A), pick(B)


def _transfer_times(kernel: Tensor, grid: tuple[int, int], f: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``||K^(f) (a + ib)||^2`` for the (polyphase) kernel's transfer matrix at flat half-spectrum
    frequency ``f`` of an ``h x w`` grid, in real arithmetic (traceable: ``f`` is a tensor)."""
    h, w = grid
    kh, kw = kernel.shape[-2:]
    u, v = f // (w // 2 + 1), f % (w // 2 + 1)
    p = torch.arange(kh, device=kernel.device, dtype=torch.float64)
    q = torch.arange(kw, device=kernel.device, dtype=torch.float64)
    angle = 2 * math.pi * ((u.to(torch.float64) * p[:, None] / h) + (v.to(torch.float64) * q[None, :] / w))
    cos, sin = torch.cos(angle).to(kernel.dtype), torch.sin(angle).to(kernel.dtype)  # K^ = sum K_pq e^{-i angle}
    real = torch.einsum("oipq,pq,i->o", kernel, cos, a) + torch.einsum("oipq,pq,i->o", kernel, sin, b)
    imag = torch.einsum("oipq,pq,i->o", kernel, cos, b) - torch.einsum("oipq,pq,i->o", kernel, sin, a)
    return real.square().sum() + imag.square().sum()


class ConvBoundCache:
    """The certified bound of a layer's convolution, kept while the kernel is unchanged.

    The bound costs several Gram steps on every frequency; a layer called again with
    the same kernel (evaluation, several forwards per optimizer step) reuses the bound and the
    leading vector, and only recomputes the cheap Rayleigh quotient that carries the gradient.
    A hit needs the same geometry and a kernel equal, entry for entry, to the one the bound was
    computed from (``torch.equal`` on a stored copy): a change through ``.data``, which leaves
    the version counter alone, is seen too. Not used while tracing, under ``torch.func``
    transforms or on ``meta`` tensors (the values are not available there)."""

    def __init__(self) -> None:
        self.key: tuple | None = None
        self.kernel: Tensor | None = None
        self.state: tuple | None = None

    def __call__(self, kernel: Tensor, input_size: tuple[int, int], *, padding_mode: str,
                 padding: tuple[int, int], stride: tuple[int, int], n_iter: int) -> Tensor:
        geometry = dict(padding_mode=padding_mode, padding=tuple(padding), stride=tuple(stride), n_iter=n_iter)
        cacheable = not (torch.compiler.is_compiling() or kernel.device.type == "meta"
                         or torch._C._are_functorch_transforms_active())
        key = (tuple(input_size), tuple(sorted(geometry.items())), kernel.shape, kernel.dtype, kernel.device)
        if cacheable and self.key == key and torch.equal(self.kernel, kernel.detach()):
            state = self.state
        else:
            state = _bound_state(kernel, tuple(input_size), **geometry)
            if cacheable:
                self.key, self.kernel, self.state = key, kernel.detach().clone(), state
            else:
                self.key = self.kernel = self.state = None
        return _with_gradient(kernel, state, stride)


def _bound_state(kernel: Tensor, input_size: tuple[int, int], *, padding_mode: str, padding: tuple[int, int],
                 stride: tuple[int, int], n_iter: int) -> tuple:
    """(certified bound in the kernel's dtype, grid, leading frequency, vector (a, b), ||v||^2),
    computed without autograd."""
    grid = conv_grid(input_size, tuple(kernel.shape[-2:]), padding_mode, padding, stride)
    with torch.no_grad():
        poly = _polyphase(kernel.detach(), stride)
        prune = not (torch.compiler.is_compiling() or kernel.device.type == "meta"
                     or torch._C._are_functorch_transforms_active())
        bound, (A, B, rows) = _grid_gram_bound(poly, grid, n_iter, return_iterate=True, prune=prune)
        f, a, b = _leading_vector(A, B)
        f = rows.index_select(0, f.reshape(1)).squeeze(0)
        return _certified_conv(bound, kernel), grid, f, a, b, a.square().sum() + b.square().sum()


def _with_gradient(kernel: Tensor, state: tuple, stride: tuple[int, int]) -> Tensor:
    r"""The bound of ``state`` (computed without autograd), carrying, when autograd needs the
    kernel's gradient, that of the Rayleigh quotient :math:`\rho(K) = \|\hat K(f^*) v\| / \|v\|` at
    the frequency :math:`f^*` that attains the bound, with :math:`v` the leading column of the
    last Gram iterate there (held constant): the output is ``bound * rho / rho.detach()``, equal
    to ``bound``. By the envelope theorem :math:`\nabla \rho` is the gradient of the
    convolution's norm :math:`\sigma_1` wherever the top singular value is simple (up to
    :math:`O(\|v - v_1\|)`, and after ``n_iter`` steps :math:`v` is within
    :math:`(\sigma_2 / \sigma_1)^{2^{n_{iter}}}` of :math:`v_1`), the gradient that
    power-iteration spectral normalization uses [miyato2018spectral]; the bound's own gradient
    differs from it by the bound's slack. No backward pass runs through the Gram steps (three
    times the forward's cost); second derivatives are those of :math:`\rho` with :math:`v` fixed."""
    bound, grid, f, a, b, vv = state
    if not torch.is_grad_enabled() or not kernel.requires_grad:
        return bound
    poly = _polyphase(kernel, stride)
    side = poly if poly.shape[1] <= poly.shape[0] else poly.flip(-2, -1).transpose(0, 1)
    peak = side.detach().abs().amax()
    side = side / torch.where(peak > 0, peak, torch.ones_like(peak))  # rho / rho is scale-free: no overflow
    squared = _transfer_times(side, grid, f, a, b) / torch.where(vv > 0, vv, torch.ones_like(vv))
    positive = squared.detach() > 0
    rho = torch.sqrt(torch.where(positive, squared, torch.ones_like(squared)))  # no infinite derivative at 0
    ratio = torch.where(positive, rho / rho.detach(), torch.ones_like(rho))
    return bound * ratio.to(bound.dtype)


def cached_conv_bound(layer, kernel: Tensor, input_size: tuple[int, int], **geometry) -> Tensor:
    """The certified bound of ``kernel``'s convolution through ``layer``'s :class:`ConvBoundCache`
    (made on first use, so that layers pickled before it existed load too): the value of
    :func:`conv_bound` (to rounding) with the gradient of :func:`_with_gradient`."""
    cache = layer.__dict__.get("_bound_cache")
    if cache is None:
        cache = layer.__dict__["_bound_cache"] = ConvBoundCache()
    return cache(kernel, input_size, **geometry)
