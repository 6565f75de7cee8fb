r"""Dense and convolutional layers normalized by certified bounds of their spectral norms.

* :class:`SpectralLinear`: :math:`V / \hat\sigma(V)` with :math:`\hat\sigma` the Gram-iteration
  bound [delattre2023efficient];
* :class:`BjorckLinear`: the same start, then Björck orthonormalization steps
  [bjorck1971iterative] [anil2019sorting], ending divided by a certified bound of its norm;
* :class:`SpectralConv2d`: a convolution divided by the certified bound of
  :func:`stabilitylab.spectral.conv_spectral_norm` for the padding it uses and the size of the
  images it is given.

An all-zero weight is a valid parameter: its bound is 0, the division is guarded, and the layer
outputs its bias (still 1-Lipschitz). None keeps state between calls (no power-iteration vectors), so the outputs are the same in
training and evaluation mode. Each has ``export_module()``, returning a plain ``nn.Linear`` /
``nn.Conv2d`` with the normalized weight (see :func:`stabilitylab.layers.export`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stabilitylab._checks import check_int as _check_int
from stabilitylab.spectral import _round, _safety, conv_spectral_norm, gram_iteration

__all__ = ["SpectralLinear", "BjorckLinear", "SpectralConv2d"]


# ----------------------------------------------------------------------------- shared checks
# (used by the other layer modules of this package as well)


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, Sequence)
        or isinstance(pair, str)
        or len(pair) != 2
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= minimum for v in pair)
    ):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def _check_padding_mode(padding_mode) -> str:
    if padding_mode not in ("zeros", "circular"):
        raise ValueError(f"padding_mode must be 'zeros' or 'circular', got {padding_mode!r}")
    return padding_mode


def _same_padding(kernel_size: tuple[int, int], padding, padding_mode: str) -> tuple[int, int]:
    """``padding=None`` means ``k // 2`` (the output keeps the input's size for odd kernels).
    Circular padding must be ``k // 2`` with odd kernels: then the layer is the circular
    convolution of :mod:`stabilitylab.spectral` (each output pixel exactly once)."""
    pad = (kernel_size[0] // 2, kernel_size[1] // 2) if padding is None else _pair(padding, "padding", 0)
    if padding_mode == "circular":
        if kernel_size[0] % 2 == 0 or kernel_size[1] % 2 == 0 or pad != (kernel_size[0] // 2, kernel_size[1] // 2):
            raise ValueError(
                f"circular padding needs an odd kernel_size and padding = kernel_size // 2, got "
                f"kernel_size={kernel_size}, padding={padding!r}"
            )
    return pad


def _pad_input(x: Tensor, pad: tuple[int, int], padding_mode: str) -> tuple[Tensor, tuple[int, int]]:
    """The input padded for ``F.conv2d`` and the padding left for ``F.conv2d`` to apply."""
    if padding_mode == "circular":
        return F.pad(x, (pad[1], pad[1], pad[0], pad[0]), mode="circular"), (0, 0)
    return x, pad


def _check_image(x: Tensor, channels: int, name: str) -> tuple[int, int]:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} expects a torch.Tensor, got {type(x).__name__}")
    if x.ndim not in (3, 4) or x.shape[-3] != channels:
        raise ValueError(f"{name} expects inputs (N, {channels}, H, W), got shape {tuple(x.shape)}")
    return int(x.shape[-2]), int(x.shape[-1])


def _frozen_copy(tensor: Tensor | None) -> Tensor | None:
    return None if tensor is None else tensor.detach().clone()


class _SizeDependentBound:
    """Mixin for layers whose certified bound depends on the image size (a convolution's norm
    does): the size is read from every input; ``input_size`` (optional) pins it, and the last
    size seen is what ``export_module()`` normalizes for when none was pinned."""

    def _init_size(self, input_size) -> None:
        self.input_size = None if input_size is None else _pair(input_size, "input_size", 1)
        self.last_input_size: tuple[int, int] | None = None

    def _size_for(self, x: Tensor) -> tuple[int, int]:
        size = _check_image(x, self.in_channels, type(self).__name__)
        if self.input_size is not None and size != self.input_size:
            raise ValueError(
                f"{type(self).__name__} was built for input_size={self.input_size}, got an input of "
                f"shape {tuple(x.shape)}"
            )
        self.last_input_size = size
        return size

    def _export_size(self) -> tuple[int, int]:
        size = self.input_size or self.last_input_size
        if size is None:
            raise ValueError(
                f"{type(self).__name__}.export_module needs the image size its bound is computed "
                "for: pass input_size= to the constructor or call the layer once on an input"
            )
        return size


# ----------------------------------------------------------------------------- dense layers


class SpectralLinear(nn.Linear):
    r"""A linear layer whose weight is divided by a certified upper bound of its spectral norm.

    The layer computes :math:`x \mapsto \frac{V}{\hat\sigma(V)} x + b` where :math:`V` is the
    trainable weight and :math:`\hat\sigma(V) \ge \|V\|_2` is the Gram-iteration bound
    [delattre2023efficient], so :math:`\|W\|_2 \le 1` for any :math:`V`: the layer is
    1-Lipschitz by construction, not only after enough power iterations as with spectral
    normalization [miyato2018spectral]. It keeps no state between calls, so it behaves the same
    whether the model starts in training or evaluation mode. Differentiable through the bound.

    Shapes: ``(*, in_features) -> (*, out_features)``.

    Args:
        in_features, out_features, bias: as :class:`torch.nn.Linear`.
        n_iter: Gram steps; the bound exceeds the norm by at most a factor
            ``rank ** (1 / 2 ** (n_iter + 1))`` (6 steps: under 7% for rank 64, less in practice).
        device, dtype: as :class:`torch.nn.Linear`.
    """

    lipschitz_constant = 1.0

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        n_iter: int = 6,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 1:
            raise ValueError(f"n_iter must be an int >= 1, got {n_iter!r}")
        self.n_iter = n_iter
        nn.init.orthogonal_(self.weight)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(in_features), 1 / math.sqrt(in_features))

    def normalized_weight(self) -> Tensor:
        """The weight actually applied, ``V / bound(V)``, shape ``(out_features, in_features)``."""
        return self.weight / _positive(gram_iteration(self.weight, n_iter=self.n_iter))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.linear(x, self.normalized_weight(), self.bias)

    @torch.no_grad()
    def export_module(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding (detached copies of) the normalized weight and the bias."""
        return _linear_with(self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_iter={self.n_iter}"


def _positive(bound: Tensor) -> Tensor:
    """The divisor of a weight by its certified bound: the bound itself, or 1 where it is 0. A
    certified bound is 0 only for an all-zero weight (it is at least the norm, rounded up), which
    is then divided into zeros (the layer outputs its bias, 1-Lipschitz) instead of 0/0 = NaN, and
    gets a finite gradient (W / ||W|| has none at 0)."""
    return torch.where(bound > 0, bound, torch.ones_like(bound))


def _linear_with(weight: Tensor, bias: Tensor | None) -> nn.Linear:
    out_features, in_features = weight.shape
    layer = nn.Linear(in_features, out_features, bias=bias is not None, device=weight.device, dtype=weight.dtype)
    layer.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    if bias is not None:
        layer.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return layer


def _bjorck_coefficients(order: int) -> list[float]:
    r"""Taylor coefficients of :math:`(1 - q)^{-1/2} = \sum_i \binom{2i}{i} 4^{-i} q^i`."""
    return [math.comb(2 * i, i) / 4**i for i in range(order + 1)]


def bjorck_orthonormalize(W: Tensor, *, n_iter: int = 15, order: int = 1) -> Tensor:
    r"""Björck steps towards the nearest (semi-)orthogonal matrix, from a ``W`` with
    :math:`\|W\|_2 \le 1`.

    With :math:`A = W^\top W` (or :math:`W W^\top`, whichever is smaller) and
    :math:`Q = I - A`, one step of order :math:`p` is
    :math:`W \leftarrow W \sum_{i=0}^{p} \binom{2i}{i} 4^{-i} Q^i`, the truncated Taylor series
    of :math:`W (W^\top W)^{-1/2}` [bjorck1971iterative]; order 1 is
    :math:`W (3I - W^\top W)/2`. On each singular value it acts as
    :math:`\sigma \mapsto \sigma \sum_{i \le p} c_i (1 - \sigma^2)^i`, a partial sum of the
    series of :math:`\sigma (\sigma^2)^{-1/2} = 1` with nonnegative terms: it maps
    :math:`[0, 1]` into :math:`[0, 1]`, is increasing, fixes 1 and converges to it (with
    order :math:`p + 1` near 1, by a factor :math:`\sum_i c_i` per step for small
    :math:`\sigma`). So the iterates keep :math:`\|W\|_2 \le 1` in exact arithmetic.

    Args:
        W: ``(m, n)`` with spectral norm at most 1.
        n_iter: number of steps (>= 0).
        order: the order :math:`p` (>= 1).

    Returns:
        ``(m, n)``, differentiable.
    """
    coefficients = _bjorck_coefficients(order)
    tall = W.shape[-2] >= W.shape[-1]
    eye = torch.eye(min(W.shape[-2:]), dtype=W.dtype, device=W.device)
    for _ in range(n_iter):
        A = W.mT @ W if tall else W @ W.mT
        Q = eye - A
        S = coefficients[-1] * eye
        for c in reversed(coefficients[:-1]):
            S = c * eye + Q @ S
        W = W @ S if tall else S @ W
    return W


class BjorckLinear(nn.Linear):
    r"""A linear layer whose weight is (close to) the nearest orthonormal matrix of its parameter.

    From the trainable :math:`V`, :math:`W_0 = V / \hat\sigma(V)` (Gram-iteration bound
    [delattre2023efficient], so :math:`\|W_0\|_2 \le 1`), then ``n_iter`` Björck steps of order
    ``order`` (see :func:`bjorck_orthonormalize`) [bjorck1971iterative] [anil2019sorting]: the
    singular values rise towards 1 while staying at most 1. The result :math:`W_T` is only
    approximately orthonormal, and floating point may push it slightly above 1, so the weight
    applied is :math:`W_T / \beta` with the certified bound

    .. math:: \beta = \min\Bigl(\hat\sigma(W_T),\ \sqrt{1 + \|W_T^\top W_T - I\|_F}\Bigr)
        \ \ge\ \|W_T\|_2,

    (the second from :math:`\|W\|_2^2 = \|W^\top W\|_2 \le 1 + \|W^\top W - I\|_2`, with the
    smaller Gram matrix), so the layer is 1-Lipschitz for any :math:`V` and any number of
    steps, and ``lipschitz_constant`` stays 1. After enough steps every singular value is
    within rounding of 1 (orthonormal rows or columns: gradient-norm preserving); with too few
    steps on an ill-conditioned :math:`V` the layer is merely contracting. Convergence takes
    about :math:`\log(\sigma_1/\sigma_{\min}) / \log 1.5` steps (order 1) before the quadratic
    phase: 15 steps suffice from the orthogonal initialization, ill-conditioned weights need more.

    Shapes: ``(*, in_features) -> (*, out_features)``; ``out > in`` gives orthonormal columns
    (an isometry), ``out < in`` orthonormal rows.

    Args:
        in_features, out_features, bias: as :class:`torch.nn.Linear`.
        n_iter: Björck steps (>= 0).
        order: order of each step (>= 1; 1 is :math:`W(3I - W^\top W)/2`).
        gram_iter: Gram steps of the bounds :math:`\hat\sigma` (>= 1).
        device, dtype: as :class:`torch.nn.Linear`.

    Raises:
        ValueError: a bad ``n_iter``, ``order`` or ``gram_iter``.
    """

    lipschitz_constant = 1.0

    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        *,
        n_iter: int = 15,
        order: int = 1,
        gram_iter: int = 6,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.n_iter = _check_int(n_iter, "n_iter", 0)
        self.order = _check_int(order, "order", 1)
        self.gram_iter = _check_int(gram_iter, "gram_iter", 1)
        nn.init.orthogonal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def normalized_weight(self) -> Tensor:
        """The weight actually applied, shape ``(out_features, in_features)``, norm <= 1."""
        W = self.weight / _positive(gram_iteration(self.weight, n_iter=self.gram_iter))
        W = bjorck_orthonormalize(W, n_iter=self.n_iter, order=self.order)
        return W / _positive(_orthonormal_bound(W, self.gram_iter))

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.normalized_weight(), self.bias)

    @torch.no_grad()
    def export_module(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding (detached copies of) the normalized weight and the bias."""
        return _linear_with(self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_iter={self.n_iter}, order={self.order}"


def _orthonormal_bound(W: Tensor, gram_iter: int) -> Tensor:
    r"""Certified :math:`\min(\hat\sigma(W), \sqrt{1 + \|W^\top W - I\|_F}) \ge \|W\|_2`.

    The second bound is computed in float64 (the products of the entries are exact there), times
    the safety margin of :func:`stabilitylab.spectral.gram_iteration` (which also covers the
    rounding of the division of ``W`` by the bound), and rounded up into ``W``'s dtype."""
    W64 = W.to(torch.float64)
    A = W64.mT @ W64 if W.shape[-2] >= W.shape[-1] else W64 @ W64.mT
    eye = torch.eye(A.shape[-1], dtype=torch.float64, device=W.device)
    near = torch.sqrt(1 + torch.linalg.matrix_norm(A - eye)) * _safety(W.dtype, max(W.shape[-2:]))
    return torch.minimum(gram_iteration(W, n_iter=gram_iter), _round(near, W.dtype, up=True))


# ----------------------------------------------------------------------------- convolutions


class SpectralConv2d(_SizeDependentBound, nn.Conv2d):
    r"""A convolution whose kernel is divided by a certified bound of its operator norm.

    The layer computes :math:`x \mapsto \frac{1}{\hat\sigma} K \star x + b` where
    :math:`\hat\sigma \ge \|K\|_2` is the certified bound of
    :func:`stabilitylab.spectral.conv_spectral_norm` (``method="gram"``) for the convolution
    the layer actually applies: its padding (zeros or circular), its stride and the size of the
    images it receives. The norm of a convolution depends on the image size (it grows with it
    for zero padding) and on the padding, so the bound is taken on the operator itself and not on
    the reshaped kernel matrix :math:`K \in \mathbb{R}^{c_{out} \times c_{in} k^2}`, whose norm
    is neither an upper nor a lower bound of it in general [delattre2024spectral]
    [sedghi2019singular]. Hence :math:`\|x \mapsto \hat\sigma^{-1} K \star x\|_2 \le 1` for
    any kernel: the layer is 1-Lipschitz. Differentiable through the bound; no state is kept
    between calls (the bound is recomputed at every call, from the input's size).

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, H', W')`` as ``nn.Conv2d``.

    Args:
        in_channels, out_channels, kernel_size, stride, bias: as :class:`torch.nn.Conv2d`.
        padding: zeros padded on each side (int or pair, smaller than the kernel); None (the
            default): ``kernel_size // 2``. With circular padding it must be ``kernel_size // 2``
            (odd kernels).
        padding_mode: ``"zeros"`` or ``"circular"`` (circular: the image size must be divisible
            by the stride).
        input_size: optional ``(H, W)``; when given, other sizes are rejected.
        tol: relative certified gap at which the Gram iteration of the bound stops (see
            :func:`~stabilitylab.spectral.conv_spectral_norm`); smaller is tighter and slower.
        device, dtype: as :class:`torch.nn.Conv2d`.

    Raises:
        ValueError: bad sizes, padding, padding mode or tol; an input of the wrong shape.
    """

    lipschitz_constant = 1.0

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int],
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        bias: bool = True,
        *,
        padding_mode: str = "zeros",
        input_size: int | tuple[int, int] | None = None,
        tol: float = 1e-3,
        device=None,
        dtype=None,
    ) -> None:
        _check_int(in_channels, "in_channels", 1)
        _check_int(out_channels, "out_channels", 1)
        kernel_size = _pair(kernel_size, "kernel_size", 1)
        stride = _pair(stride, "stride", 1)
        padding_mode = _check_padding_mode(padding_mode)
        pad = _same_padding(kernel_size, padding, padding_mode)
        if padding_mode == "zeros" and (pad[0] >= kernel_size[0] or pad[1] >= kernel_size[1]):
            raise ValueError(f"padding must be smaller than kernel_size {kernel_size}, got {padding!r}")
        if isinstance(tol, bool) or not isinstance(tol, (int, float)) or not 0 < tol < 1:
            raise ValueError(f"tol must be a number in (0, 1), got {tol!r}")
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=bias,
            padding_mode=padding_mode, device=device, dtype=dtype,
        )
        self.tol = float(tol)
        self._init_size(input_size)

    def bound(self, input_size: int | tuple[int, int]) -> Tensor:
        """The certified bound of the kernel's convolution on ``input_size`` images (0-dim)."""
        padding = "circular" if self.padding_mode == "circular" else self.padding
        return conv_spectral_norm(
            self.weight, input_size, padding=padding, stride=self.stride, method="gram", tol=self.tol
        )

    def normalized_weight(self, input_size: int | tuple[int, int]) -> Tensor:
        """The kernel applied to ``input_size`` images, ``K / bound``."""
        return self.weight / _positive(self.bound(input_size))

    def forward(self, x: Tensor) -> Tensor:
        weight = self.normalized_weight(self._size_for(x))
        x, pad = _pad_input(x, self.padding, self.padding_mode)
        return F.conv2d(x, weight, self.bias, self.stride, pad)

    @torch.no_grad()
    def export_module(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the kernel normalized for ``input_size`` (or, when none was
        given, the last image size the layer saw): on other sizes it computes the same
        convolution, but the certificate is for that size only."""
        return _conv_with(self, self.normalized_weight(self._export_size()))

    def extra_repr(self) -> str:
        size = f", input_size={self.input_size}" if self.input_size is not None else ""
        return super().extra_repr() + f", tol={self.tol}{size}"


def _conv_with(layer: nn.Conv2d, weight: Tensor, bias: Tensor | None = ..., **overrides) -> nn.Conv2d:
    """A plain ``nn.Conv2d`` with ``layer``'s geometry and frozen copies of ``weight``/bias."""
    bias = layer.bias if bias is ... else bias
    settings = dict(
        stride=layer.stride, padding=layer.padding, padding_mode=layer.padding_mode,
        dilation=layer.dilation, groups=layer.groups,
    )
    settings.update(overrides)
    out_channels, in_channels_per_group = weight.shape[:2]
    conv = nn.Conv2d(
        in_channels_per_group * settings["groups"], out_channels, tuple(weight.shape[-2:]),
        bias=bias is not None, device=weight.device, dtype=weight.dtype, **settings,
    )
    conv.weight = nn.Parameter(weight.detach().clone(), requires_grad=False)
    if bias is not None:
        conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
    return conv
