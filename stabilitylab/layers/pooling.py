r"""1-Lipschitz pooling and downsampling.

Plain average pooling over :math:`m` pixels contracts by :math:`1/\sqrt m` (for non-overlapping
windows, its norm is exactly that), which a 1-Lipschitz network cannot recover later: every
layer can only contract. The layers here keep the constant at 1 and are tight:

* :class:`ScaledAvgPool2d`: the window sums divided by :math:`\sqrt{m M}` (:math:`M` the largest
  number of windows a pixel belongs to): norm exactly 1 for non-overlapping windows;
* :class:`L2NormPool2d`: the L2 norm of every window (divided by :math:`\sqrt M`);
* :class:`GlobalL2NormPool2d`: the L2 norm of every channel;
* :class:`InvertibleDownsampling`: space-to-depth, a permutation of the coordinates
  (orthogonal) [jacobsen2018irevnet].

None has parameters; :func:`stabilitylab.layers.export` keeps them as they are.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stabilitylab._checks import check_int, check_pair
from stabilitylab.layers._common import _check_bool, _check_image

__all__ = ["ScaledAvgPool2d", "L2NormPool2d", "GlobalL2NormPool2d", "InvertibleDownsampling"]


def _check_feature_map(x, name: str) -> Tensor:
    _check_image(x, None, name)
    return x


class _WindowPool(nn.Module):
    """Geometry shared by the windowed pools: ``kernel_size``, ``stride`` (default: the kernel
    size, non-overlapping) and zero ``padding``, and the overlap count ``M``."""

    lipschitz_constant = 1.0

    def __init__(self, kernel_size, stride=None, padding=0) -> None:
        super().__init__()
        self.kernel_size = check_pair(kernel_size, "kernel_size", 1)
        self.stride = self.kernel_size if stride is None else check_pair(stride, "stride", 1)
        self.padding = check_pair(padding, "padding", 0)
        if self.padding[0] > self.kernel_size[0] // 2 or self.padding[1] > self.kernel_size[1] // 2:
            raise ValueError(f"padding must be at most kernel_size // 2, got {padding!r}")
        #: The largest number of windows that contain one pixel: 1 without overlap.
        self.overlap = math.ceil(self.kernel_size[0] / self.stride[0]) * math.ceil(self.kernel_size[1] / self.stride[1])

    def _check(self, x: Tensor) -> None:
        h, w = _check_image(x, None, type(self).__name__)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"{type(self).__name__}: x of image size {(h, w)} is smaller than the window {self.kernel_size} "
                f"with padding {self.padding}"
            )

    def _windows(self, x: Tensor) -> Tensor:
        """``(N, C, kh * kw, H', W')``: the zero-padded windows of ``x``."""
        squeeze = x.ndim == 3
        x = x[None] if squeeze else x
        n, c, h, w = x.shape
        cols = F.unfold(x, self.kernel_size, padding=self.padding, stride=self.stride)
        h_out = (h + 2 * self.padding[0] - self.kernel_size[0]) // self.stride[0] + 1
        w_out = (w + 2 * self.padding[1] - self.kernel_size[1]) // self.stride[1] + 1
        cols = cols.reshape(n, c, self.kernel_size[0] * self.kernel_size[1], h_out, w_out)
        return cols[0] if squeeze else cols

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class ScaledAvgPool2d(_WindowPool):
    r"""Average pooling rescaled to be 1-Lipschitz and tight: :math:`y_w = \frac{1}{\sqrt{m M}}
    \sum_{p \in w} x_p` for every window :math:`w` of :math:`m = k_h k_w` pixels (zeros padded),
    with :math:`M = \lceil k_h/s_h \rceil \lceil k_w/s_w \rceil` the largest number of windows
    containing one pixel, i.e. ``AvgPool2d`` times :math:`\sqrt{m / M}`.

    *Guarantee.* The window-sum operator :math:`S` has rows of :math:`m` ones and columns of at
    most :math:`M` ones, so :math:`\|S\|_2 \le \sqrt{mM}` (Schur test): the layer is
    1-Lipschitz for any geometry. Without overlap (stride >= kernel, the default) :math:`M = 1`
    and the norm is exactly 1, attained by constant images on full windows; with overlap the
    constant is asymptotically tight for large images and kernels that the stride divides.

    Shapes: ``(N, C, H, W) -> (N, C, H', W')`` as ``nn.AvgPool2d`` (floor mode).

    Args:
        kernel_size: int or pair.
        stride: int or pair (default: ``kernel_size``).
        padding: zeros on each side, at most ``kernel_size // 2``.

    Raises:
        ValueError: bad sizes.
    """

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        m = self.kernel_size[0] * self.kernel_size[1]
        mean = F.avg_pool2d(x, self.kernel_size, self.stride, self.padding, count_include_pad=True)
        return mean * math.sqrt(m / self.overlap)


class L2NormPool2d(_WindowPool):
    r"""L2-norm pooling: :math:`y_w = \|x_w\|_2 / \sqrt M` for every window :math:`w` (zeros
    padded), :math:`M` the largest number of windows containing one pixel (1 without overlap,
    the default stride).

    *Guarantee.* :math:`|\,\|a\| - \|b\|\,| \le \|a - b\|` for every window, and summing the
    squares over windows counts each pixel at most :math:`M` times:
    :math:`\|y(x) - y(x')\|^2 \le \frac1M \sum_w \|x_w - x'_w\|^2 \le \|x - x'\|^2`. Tight
    without overlap: :math:`\|y(x) - y(0)\| = \|x\|` for every image. The gradient at a zero
    window is taken as 0.

    Shapes: ``(N, C, H, W) -> (N, C, H', W')``.

    Args:
        kernel_size, stride, padding: as :class:`ScaledAvgPool2d`.
    """

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        return torch.linalg.vector_norm(self._windows(x), dim=-3) / math.sqrt(self.overlap)


class GlobalL2NormPool2d(nn.Module):
    r"""The L2 norm of every channel: :math:`y_c = \|x_{c,:,:}\|_2`; 1-Lipschitz by the reverse
    triangle inequality, channel by channel, and tight (the norm is preserved on an image with one
    nonzero channel).

    Shapes: ``(N, C, H, W) -> (N, C)`` (``(N, C, 1, 1)`` with ``keepdim=True``).
    """

    lipschitz_constant = 1.0

    def __init__(self, *, keepdim: bool = False) -> None:
        super().__init__()
        self.keepdim = _check_bool(keepdim, "keepdim")

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map(x, "GlobalL2NormPool2d")
        return torch.linalg.vector_norm(x, dim=(-2, -1), keepdim=self.keepdim)

    def extra_repr(self) -> str:
        return f"keepdim={self.keepdim}"


class InvertibleDownsampling(nn.Module):
    r"""Space-to-depth ("invertible downsampling") [jacobsen2018irevnet]: every
    :math:`f \times f` block of pixels becomes :math:`f^2` channels, as ``nn.PixelUnshuffle``.

    The map only permutes coordinates, so it is orthogonal: it preserves norms and distances
    exactly (all Jacobian singular values are 1), halving the resolution without losing
    information, unlike a pooling. Shapes: ``(N, C, H, W) -> (N, C f^2, H/f, W/f)``; ``H`` and
    ``W`` must be divisible by ``f``.

    Args:
        factor: the block size :math:`f` (>= 1).

    Raises:
        ValueError: ``factor`` < 1; an image size it does not divide.
    """

    lipschitz_constant = 1.0

    def __init__(self, factor: int = 2) -> None:
        super().__init__()
        self.factor = check_int(factor, "factor", 1)

    def forward(self, x: Tensor) -> Tensor:
        _check_feature_map(x, "InvertibleDownsampling")
        if x.shape[-1] % self.factor or x.shape[-2] % self.factor:
            raise ValueError(
                f"InvertibleDownsampling({self.factor}): x must have H and W divisible by {self.factor}, "
                f"got shape {tuple(x.shape)}"
            )
        return F.pixel_unshuffle(x, self.factor)

    def inverse(self, y: Tensor) -> Tensor:
        """Depth-to-space, the inverse (and adjoint) map: ``(N, C f^2, H, W) -> (N, C, H f, W f)``."""
        _check_image(y, None, "InvertibleDownsampling.inverse")
        if y.shape[-3] % self.factor**2:
            raise ValueError(
                f"InvertibleDownsampling({self.factor}).inverse: y must have a channel count divisible by "
                f"{self.factor ** 2}, got shape {tuple(y.shape)}"
            )
        return F.pixel_shuffle(y, self.factor)

    def extra_repr(self) -> str:
        return f"factor={self.factor}"
