r"""Dense and convolutional layers normalized by certified bounds of their spectral norms.

* :class:`SpectralLinear`: :math:`V / \hat\sigma(V)` with :math:`\hat\sigma` the Gram-iteration
  bound [delattre2023efficient];
* :class:`BjorckLinear`: the same start, then Björck orthonormalization steps
  [bjorck1971iterative] [anil2019sorting], ending divided by a certified bound of its norm;
* :class:`SpectralConv2d`: a convolution divided by a certified bound of its operator norm
  (the Gram bound of :func:`stabilitylab.spectral.conv_spectral_norm`) for the padding it uses
  and the size of the images it is given.

An all-zero weight is a valid parameter: its bound is 0, the division is guarded, and the layer
outputs its bias (still 1-Lipschitz). None keeps state between calls (no power-iteration
vectors), so the outputs are the same in training and evaluation mode. Each has
``export_module()``, returning a plain ``nn.Linear`` / ``nn.Conv2d`` with the normalized weight
(see :func:`stabilitylab.layers.export`).

Tracing: the bounds take a fixed number of Gram steps (``n_iter``) and the forward reads no
tensor value on the host, so the layers work under ``torch.compile(fullgraph=True)``,
``torch.export.export`` and on ``meta`` tensors, without a device-to-host sync in training.
Parameters are checked for NaN/Inf by ``check_parameters()``, which ``export_module()`` and an
(untraced) evaluation-mode forward call.
"""

from __future__ import annotations

import math
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stabilitylab._checks import check_int, check_pair, check_tol
from stabilitylab.layers._bounds import cached_conv_bound, gram_bound
from stabilitylab.layers._common import (  # noqa: F401  (_check_int: imported from here by other modules)
    _check_bool,
    _check_features,
    _check_int,
    _check_padding_mode,
    _conv_with,
    _linear_with,
    _pad_input,
    _positive,
    _same_padding,
    _SizeDependentBound,
    _Validated,
)
from stabilitylab.spectral import _round, _safety

__all__ = ["SpectralLinear", "BjorckLinear", "SpectralConv2d"]


# ----------------------------------------------------------------------------- dense layers


class SpectralLinear(_Validated, nn.Linear):
    r"""A linear layer whose weight is divided by a certified upper bound of its spectral norm.

    The layer computes :math:`x \mapsto \frac{V}{\hat\sigma(V)} x + b` where :math:`V` is the
    trainable weight and :math:`\hat\sigma(V) \ge \|V\|_2` is the Gram-iteration bound
    [delattre2023efficient], so :math:`\|W\|_2 \le 1` for any :math:`V`: the layer is
    1-Lipschitz by construction, not only after enough power iterations as with spectral
    normalization [miyato2018spectral]. It keeps no state between calls, so it behaves the same
    whether the model starts in training or evaluation mode. Differentiable through the bound.

    Shapes: ``(*, in_features) -> (*, out_features)``.

    Args:
        in_features, out_features: sizes (ints >= 1).
        bias: learn an additive bias (a bool).
        n_iter: Gram steps (>= 1, fixed: no stopping rule); the bound exceeds the norm by at most
            a factor ``rank ** (1 / 2 ** (n_iter + 1))`` (6 steps: under 3.3% for rank 64, less
            in practice).
        device, dtype: as :class:`torch.nn.Linear`.

    Raises:
        TypeError or ValueError: a bad size, ``bias`` or ``n_iter`` (naming it); at call time an
            input whose last dimension is not ``in_features``; in evaluation mode (untraced),
            non-finite parameters.
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
        check_int(in_features, "in_features", 1)
        check_int(out_features, "out_features", 1)
        _check_bool(bias, "bias")
        n_iter = check_int(n_iter, "n_iter", 1)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.n_iter = n_iter
        nn.init.orthogonal_(self.weight)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(in_features), 1 / math.sqrt(in_features))

    def normalized_weight(self) -> Tensor:
        """The weight actually applied, ``V / bound(V)``, shape ``(out_features, in_features)``."""
        return self.weight / _positive(gram_bound(self.weight, self.n_iter))

    def forward(self, x: Tensor) -> Tensor:
        _check_features(x, self.in_features, type(self).__name__)
        self._validate_eval(x)
        return F.linear(x, self.normalized_weight(), self.bias)

    @torch.no_grad()
    def export_module(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding (detached copies of) the normalized weight and the bias.

        Raises:
            ValueError: non-finite parameters."""
        self.check_parameters()
        return _linear_with(self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_iter={self.n_iter}"


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
        W: ``(..., m, n)`` with spectral norm at most 1.
        n_iter: number of steps (>= 0, fixed: traceable).
        order: the order :math:`p` (>= 1).

    Returns:
        ``(..., m, n)``, differentiable.

    Raises:
        TypeError or ValueError: ``W`` not a finite floating tensor with at least 2 dimensions,
            a bad ``n_iter`` or ``order``.
    """
    if not isinstance(W, Tensor) or not W.is_floating_point():
        raise TypeError(f"W must be a floating torch.Tensor, got {type(W).__name__}")
    if W.ndim < 2:
        raise ValueError(f"W must have at least 2 dimensions (..., m, n), got shape {tuple(W.shape)}")
    if W.device.type != "meta" and not torch.compiler.is_compiling() and not bool(torch.isfinite(W).all()):
        raise ValueError("W contains NaN or Inf entries")
    return _bjorck(W, check_int(n_iter, "n_iter", 0), check_int(order, "order", 1))


def _bjorck(W: Tensor, n_iter: int, order: int) -> Tensor:
    """:func:`bjorck_orthonormalize` without the checks (traceable: no host reads)."""
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


class BjorckLinear(_Validated, nn.Linear):
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
    Every count is fixed (no stopping rule), so the layer traces.

    Shapes: ``(*, in_features) -> (*, out_features)``; ``out > in`` gives orthonormal columns
    (an isometry), ``out < in`` orthonormal rows.

    Args:
        in_features, out_features: sizes (ints >= 1).
        bias: learn an additive bias (a bool).
        n_iter: Björck steps (>= 0).
        order: order of each step (>= 1; 1 is :math:`W(3I - W^\top W)/2`).
        gram_iter: Gram steps of the bounds :math:`\hat\sigma` (>= 1); a second iteration count,
            hence its own name.
        device, dtype: as :class:`torch.nn.Linear`.

    Raises:
        TypeError or ValueError: a bad size, ``bias``, ``n_iter``, ``order`` or ``gram_iter``; at
            call time an input whose last dimension is not ``in_features``; in evaluation mode
            (untraced), non-finite parameters.
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
        check_int(in_features, "in_features", 1)
        check_int(out_features, "out_features", 1)
        _check_bool(bias, "bias")
        n_iter = check_int(n_iter, "n_iter", 0)
        order = check_int(order, "order", 1)
        gram_iter = check_int(gram_iter, "gram_iter", 1)
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.n_iter, self.order, self.gram_iter = n_iter, order, gram_iter
        nn.init.orthogonal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def normalized_weight(self) -> Tensor:
        """The weight actually applied, shape ``(out_features, in_features)``, norm <= 1."""
        W = self.weight / _positive(gram_bound(self.weight, self.gram_iter))
        W = _bjorck(W, self.n_iter, self.order)
        return W / _positive(_orthonormal_bound(W, self.gram_iter))

    def forward(self, x: Tensor) -> Tensor:
        _check_features(x, self.in_features, type(self).__name__)
        self._validate_eval(x)
        return F.linear(x, self.normalized_weight(), self.bias)

    @torch.no_grad()
    def export_module(self) -> nn.Linear:
        """A plain ``nn.Linear`` holding (detached copies of) the normalized weight and the bias.

        Raises:
            ValueError: non-finite parameters."""
        self.check_parameters()
        return _linear_with(self.normalized_weight(), self.bias)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", n_iter={self.n_iter}, order={self.order}, gram_iter={self.gram_iter}"


def _orthonormal_bound(W: Tensor, gram_iter: int) -> Tensor:
    r"""Certified :math:`\min(\hat\sigma(W), \sqrt{1 + \|W^\top W - I\|_F}) \ge \|W\|_2`.

    The second bound is computed in float64 (the products of the entries are exact there), times
    the safety margin of :func:`stabilitylab.spectral.gram_iteration` (which also covers the
    rounding of the division of ``W`` by the bound), and rounded up into ``W``'s dtype."""
    W64 = W.to(torch.float64)
    A = W64.mT @ W64 if W.shape[-2] >= W.shape[-1] else W64 @ W64.mT
    eye = torch.eye(A.shape[-1], dtype=torch.float64, device=W.device)
    near = torch.sqrt(1 + torch.linalg.matrix_norm(A - eye)) * _safety(W.dtype, max(W.shape[-2:]))
    return torch.minimum(gram_bound(W, gram_iter), _round(near, W.dtype, up=True))


# ----------------------------------------------------------------------------- convolutions


def _deprecated_tol(tol, layer: str) -> None:
    """``tol=`` of the size-dependent convolutions: the bound now takes ``n_iter`` fixed Gram
    steps (a stopping rule on tensor values cannot be traced); still validated, then ignored."""
    if tol is None:
        return
    check_tol(tol, "tol")
    warnings.warn(
        f"{layer}(): the argument 'tol' is deprecated and ignored: the certified bound takes n_iter "
        "fixed Gram steps (traceable); pass n_iter instead",
        DeprecationWarning,
        stacklevel=3,
    )


class SpectralConv2d(_Validated, _SizeDependentBound, nn.Conv2d):
    r"""A convolution whose kernel is divided by a certified bound of its operator norm.

    The layer computes :math:`x \mapsto \frac{1}{\hat\sigma} K \star x + b` where
    :math:`\hat\sigma \ge \|K\|_2` is a certified Gram-iteration bound
    [delattre2023efficient] of the convolution the layer actually applies: its padding (zeros
    or circular), its stride and the size of the images it receives. The norm of a convolution
    depends on the image size (it grows with it for zero padding) and on the padding, so the
    bound is taken on the operator itself and not on the reshaped kernel matrix
    :math:`K \in \mathbb{R}^{c_{out} \times c_{in} k^2}`, whose norm is neither an upper nor a
    lower bound of it in general [delattre2024spectral] [sedghi2019singular]:

    * circular padding: ``n_iter`` Gram steps on every frequency of the block-diagonalized
      operator (strides through the polyphase kernel), the bound of
      ``spectral.conv_spectral_norm(K, size, padding="circular", stride=s, tol=None,
      n_iter=n_iter)``;
    * zero padding: the same bound of the circular convolution on the smallest grid
      :math:`N \ge n + p` that contains the zero-padded operator as a restriction
      [delattre2024spectral].

    Hence :math:`\|x \mapsto \hat\sigma^{-1} K \star x\|_2 \le 1` for any kernel: the layer is
    1-Lipschitz, in training and in evaluation alike (the same bound). The Gram steps square
    Hermitian transfer matrices in real arithmetic and drop the frequencies that cannot hold the
    maximum; the bound is kept while the kernel is unchanged (compared entry for entry, so an
    optimizer step, ``load_state_dict`` or a change through ``.data`` all trigger a new one) and
    for the same image size, so evaluation costs a plain convolution. The gradient that flows
    through the bound is that of the convolution's norm (the Rayleigh quotient of the leading
    vector at the frequency that attains the bound, held constant), which needs no backward
    pass through the Gram steps. The number of steps is fixed, so the layer traces
    (``torch.compile``, ``torch.export``, ``meta`` tensors: no cache, no pruning there).

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, H', W')`` as ``nn.Conv2d``.

    Args:
        in_channels, out_channels: channel counts (ints >= 1).
        kernel_size, stride: int or pair of ints >= 1.
        padding: zeros padded on each side (int or pair, smaller than the kernel); None (the
            default): ``kernel_size // 2``. With circular padding it must be ``kernel_size // 2``
            (odd kernels).
        bias: learn an additive bias (a bool).
        padding_mode: ``"zeros"`` or ``"circular"`` (circular: the image size must be divisible
            by the stride).
        input_size: optional ``(H, W)`` (or ``n``); when given, other sizes are rejected.
        n_iter: Gram steps of the bound (>= 1); the bound exceeds the norm by at most a factor
            ``c ** (1 / 2 ** (n_iter + 1))`` with ``c`` the smaller channel count (times the
            stride's area).
        tol: deprecated and ignored (the bound used to stop at this certified gap); use
            ``n_iter``.
        device, dtype: as :class:`torch.nn.Conv2d`.

    Raises:
        TypeError or ValueError: bad sizes, padding, padding mode, ``n_iter`` or ``tol``, naming
            the argument; at call time an input of the wrong shape, or an image size the
            geometry does not allow; in evaluation mode (untraced), non-finite parameters.
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
        n_iter: int = 6,
        tol: float | None = None,
        device=None,
        dtype=None,
    ) -> None:
        check_int(in_channels, "in_channels", 1)
        check_int(out_channels, "out_channels", 1)
        kernel_size = check_pair(kernel_size, "kernel_size", 1)
        stride = check_pair(stride, "stride", 1)
        _check_bool(bias, "bias")
        padding_mode = _check_padding_mode(padding_mode)
        pad = _same_padding(kernel_size, padding, padding_mode)
        if padding_mode == "zeros" and (pad[0] >= kernel_size[0] or pad[1] >= kernel_size[1]):
            raise ValueError(f"padding must be smaller than kernel_size {kernel_size}, got {padding!r}")
        n_iter = check_int(n_iter, "n_iter", 1)
        _deprecated_tol(tol, type(self).__name__)
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=bias,
            padding_mode=padding_mode, device=device, dtype=dtype,
        )
        self.n_iter = n_iter
        self._init_size(input_size)

    def _check_size(self, size: tuple[int, int]) -> None:
        (h, w), (kh, kw), (sh, sw) = size, self.kernel_size, self.stride
        if self.padding_mode == "circular":
            if h % sh or w % sw:
                raise ValueError(
                    f"{type(self).__name__}: with circular padding, x must have H and W divisible by the "
                    f"stride {self.stride}, got an image of size {size}"
                )
            if -(-kh // sh) > h // sh or -(-kw // sw) > w // sw:
                raise ValueError(
                    f"{type(self).__name__}: x (image size {size}) is smaller than the kernel {self.kernel_size} "
                    "(with this stride): a circular convolution would wrap the kernel around itself"
                )
        elif h + 2 * self.padding[0] < kh or w + 2 * self.padding[1] < kw:
            raise ValueError(
                f"{type(self).__name__}: x of image size {size} gives an empty output with kernel "
                f"{self.kernel_size} and padding {self.padding}"
            )

    def bound(self, input_size: int | tuple[int, int]) -> Tensor:
        """The certified bound of the kernel's convolution on ``input_size`` images (0-dim): the
        one the forward divides by."""
        size = check_pair(input_size, "input_size", 1)
        self._check_size(size)
        return cached_conv_bound(self, self.weight, size, padding_mode=self.padding_mode, padding=self.padding,
                                 stride=self.stride, n_iter=self.n_iter)

    def normalized_weight(self, input_size: int | tuple[int, int]) -> Tensor:
        """The kernel applied to ``input_size`` images, ``K / bound``."""
        return self.weight / _positive(self.bound(input_size))

    def forward(self, x: Tensor) -> Tensor:
        size = self._size_for(x)
        self._validate_eval(x)
        weight = self.normalized_weight(size)
        x, pad = _pad_input(x, self.padding, self.padding_mode)
        return F.conv2d(x, weight, self.bias, self.stride, pad)

    @torch.no_grad()
    def export_module(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` with the kernel normalized for ``input_size`` (or, when none was
        given, the last image size the layer saw): on other sizes it computes the same
        convolution, but the certificate is for that size only.

        Raises:
            ValueError: no size known, or non-finite parameters."""
        self.check_parameters()
        return _conv_with(self, self.normalized_weight(self._export_size()))

    def extra_repr(self) -> str:
        size = f", input_size={self.input_size}" if self.input_size is not None else ""
        return super().extra_repr() + f", n_iter={self.n_iter}{size}"
