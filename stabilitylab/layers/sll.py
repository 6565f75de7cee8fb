r"""Residual 1-Lipschitz layers: SDP-based Lipschitz layers (SLL) [araujo2023unified] and
convex potential layers (CPL) [meunier2022dynamical].

Both compute :math:`h(x) = x - 2\, W T^{-1} \sigma(W^\top x + b)` with :math:`W \in
\mathbb{R}^{n \times k}` (:math:`n` features, :math:`k` inner features), :math:`\sigma` = ReLU
and a positive diagonal :math:`T`; they differ by :math:`T`:

* CPL: :math:`T = \hat\sigma^2 I` with :math:`\hat\sigma \ge \|W\|_2` a certified bound (Gram
  iteration [delattre2023efficient] for dense layers, the certified convolution bound of
  :func:`stabilitylab.spectral.conv_spectral_norm` for convolutions), not power iteration;
* SLL: :math:`T = \operatorname{diag}(\sum_j |W^\top W|_{ij}\, q_j / q_i)` with :math:`q > 0`
  learnable (:math:`q = e^{\theta}`).

**Theorem** [araujo2023unified]. If :math:`T \succeq W^\top W` and :math:`\sigma` is
slope-restricted in :math:`[0, 1]` (ReLU is), :math:`h` is 1-Lipschitz in :math:`\ell_2`.

*Proof.* Coordinate-wise, :math:`\sigma(a_i) - \sigma(b_i) = \lambda_i (a_i - b_i)` with
:math:`\lambda_i \in [0, 1]`, so :math:`h(x) - h(y) = (I - 2 W \Delta W^\top)(x - y)` with
:math:`\Delta = T^{-1}\Lambda` diagonal, :math:`0 \preceq \Lambda \preceq I`. The matrix
:math:`J = I - 2 W \Delta W^\top` is symmetric and
:math:`I - J^2 = 4 W \Delta^{1/2} (I - \Delta^{1/2} W^\top W \Delta^{1/2}) \Delta^{1/2} W^\top
\succeq 0` since :math:`\Delta^{1/2} W^\top W \Delta^{1/2} \preceq \Lambda^{1/2}
T^{-1/2} T T^{-1/2} \Lambda^{1/2} \preceq I`; so :math:`\|J\|_2 \le 1`. CPL satisfies the
hypothesis by definition of :math:`\hat\sigma`; SLL by the weighted Gershgorin inequality
:math:`x^\top G x \le \sum_{ij} |G_{ij}| |x_i||x_j| \le \sum_{ij} |G_{ij}| \tfrac{q_j}{q_i}
x_i^2` (AM-GM on :math:`|x_i||x_j|`) applied to :math:`G = W^\top W`.

Convolutions: :math:`W^\top` is a convolution :math:`x \mapsto K \star x` (``k`` inner
channels, "same" padding, stride 1) and :math:`W` its adjoint, the convolution by the
transposed, flipped kernel. For SLL, :math:`W^\top W` is the convolution by the
autocorrelation of that adjoint kernel, whose absolute row sums bound the operator's (zero
padding: the operator is a restriction of a circular convolution on a larger grid, which only
lowers :math:`W^\top W` in the semidefinite order), so :math:`T` is one scale per inner
channel. The residual needs equal input and output sizes: ``out_features == in_features``,
``out_channels == in_channels``, stride 1, odd kernels with padding ``kernel_size // 2``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stabilitylab._checks import check_int, check_pair
from stabilitylab.layers._bounds import cached_conv_bound, gram_bound
from stabilitylab.layers._common import (
    _check_bool,
    _check_features,
    _check_image,
    _check_padding_mode,
    _conv_with,
    _linear_with,
    _pad_input,
    _SizeDependentBound,
    _Validated,
)
from stabilitylab.layers.dense import _deprecated_tol
from stabilitylab.spectral import _autocorrelation

__all__ = ["SLLLinear", "SLLConv2d", "CPLLinear", "CPLConv2d", "ExportedResidual"]


class ExportedResidual(nn.Module):
    r"""What the residual layers export to: :math:`x \mapsto x - \mathrm{outer}(\mathrm{relu}
    (\mathrm{inner}(x)))` with two plain, frozen ``nn.Linear`` or ``nn.Conv2d`` modules (the
    factor :math:`2 T^{-1}` folded into ``outer``). It declares the constant of the layer it was
    exported from (1).

    That constant holds on every input the module accepts. When the factor :math:`T^{-1}`
    depends on the image size (:class:`CPLConv2d`: :math:`1/\hat\sigma^2` with
    :math:`\hat\sigma` the convolution's norm on images of that size, which grows with the size
    for zero padding and changes with it for circular padding), ``input_size`` records the
    ``(H, W)`` it was computed for and any other size raises ``ValueError``; ``None`` (SLL, dense
    layers) accepts every size, for which the exported map is 1-Lipschitz.

    Args:
        inner, outer: the two frozen modules.
        input_size: ``(H, W)`` the exported weights are valid for, or None for every size.

    Raises:
        ValueError: (at call time) an input whose last two dimensions differ from ``input_size``.
    """

    lipschitz_constant = 1.0

    def __init__(self, inner: nn.Module, outer: nn.Module, input_size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.inner = inner
        self.outer = outer
        self.input_size = None if input_size is None else (int(input_size[0]), int(input_size[1]))

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"ExportedResidual: x must be a torch.Tensor, got {type(x).__name__}")
        if self.input_size is not None and (x.ndim not in (3, 4) or tuple(x.shape[-2:]) != self.input_size):
            raise ValueError(
                f"this ExportedResidual was exported for images of size {self.input_size} (its "
                f"1-Lipschitz scaling depends on the size): x must have shape (N, C, {self.input_size[0]}, "
                f"{self.input_size[1]}), got {tuple(x.shape)}"
            )
        if isinstance(self.inner, nn.Linear):
            _check_features(x, self.inner.in_features, "ExportedResidual")
        elif isinstance(self.inner, nn.Conv2d):
            _check_image(x, self.inner.in_channels, "ExportedResidual")
        return x - self.outer(F.relu(self.inner(x)))

    def extra_repr(self) -> str:
        return "" if self.input_size is None else f"input_size={self.input_size}"


def _check_residual_sizes(size: int, out, name: str, inner, inner_name: str) -> int:
    check_int(size, f"in_{name}", 1)
    if out is not None and (isinstance(out, bool) or out != size):
        raise ValueError(
            f"out_{name} must equal in_{name} ({size}) for a residual layer x - g(x), got {out!r}"
        )
    return size if inner is None else check_int(inner, inner_name, 1)


def _safe_inverse(t: Tensor) -> Tensor:
    """1 / t with t >= 0; a zero (an inner unit whose weights are all zero, which then
    contributes nothing) gets a finite value."""
    return t.clamp_min(torch.finfo(t.dtype).tiny).reciprocal()


def _sll_inverse_t(gram_abs: Tensor, log_q: Tensor) -> Tensor:
    r""":math:`T^{-1}` with :math:`T_i = \sum_j |G|_{ij} e^{\theta_j - \theta_i}` (``gram_abs``:
    ``(k, k)``, the absolute row sums already taken over any other dimension), computed in the
    log domain so that no :math:`\theta` overflows. Entries of :math:`|G|` below the smallest
    normal number are raised to it, which only increases :math:`T` (still
    :math:`T \succeq W^\top W`) and keeps :math:`T^{-1} \le 1/\mathrm{tiny}` finite (since
    :math:`T_i \ge G_{ii}`, a zero unit then contributes zero)."""
    tiny = torch.finfo(gram_abs.dtype).tiny
    log_t = torch.logsumexp(torch.log(gram_abs.clamp_min(tiny)) + log_q[None, :], dim=1) - log_q
    return torch.exp(-log_t).clamp_max(1 / tiny)


# ----------------------------------------------------------------------------- dense


class _ResidualLinear(_Validated, nn.Module):
    """Shared parameters and forward of SLLLinear and CPLLinear: ``weight`` ``(k, n)`` is
    :math:`W^\\top`, ``bias`` ``(k,)``."""

    lipschitz_constant = 1.0

    def __init__(self, in_features, out_features, bias, inner_features, device, dtype) -> None:
        super().__init__()
        inner = _check_residual_sizes(in_features, out_features, "features", inner_features, "inner_features")
        _check_bool(bias, "bias")
        self.in_features = self.out_features = in_features
        self.inner_features = inner
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(inner, in_features, **factory))
        self.bias = nn.Parameter(torch.empty(inner, **factory)) if bias else None
        nn.init.xavier_normal_(self.weight)
        if self.bias is not None:
            nn.init.uniform_(self.bias, -1 / math.sqrt(in_features), 1 / math.sqrt(in_features))

    def inverse_t(self) -> Tensor:
        raise NotImplementedError

    def forward(self, x: Tensor) -> Tensor:
        _check_features(x, self.in_features, type(self).__name__)
        self._validate_eval(x)
        z = F.relu(F.linear(x, self.weight, self.bias)) * self.inverse_t()
        return x - 2 * z @ self.weight

    @torch.no_grad()
    def export_module(self) -> ExportedResidual:
        """:class:`ExportedResidual` of two frozen ``nn.Linear``: ``(n -> k)`` with the bias and
        ``(k -> n)`` holding :math:`2 W T^{-1}`.

        Raises:
            ValueError: non-finite parameters."""
        self.check_parameters()
        outer = (2 * self.weight * self.inverse_t()[:, None]).mT
        return ExportedResidual(_linear_with(self.weight, self.bias), _linear_with(outer, None))

    def extra_repr(self) -> str:
        return f"features={self.in_features}, inner_features={self.inner_features}, bias={self.bias is not None}"


class SLLLinear(_ResidualLinear):
    r"""SDP-based Lipschitz layer (SLL), dense [araujo2023unified]:
    :math:`h(x) = x - 2\, W T^{-1} \mathrm{ReLU}(W^\top x + b)` with
    :math:`T = \operatorname{diag}(\sum_j |W^\top W|_{ij}\, q_j / q_i)`, :math:`q = e^\theta`
    learnable; 1-Lipschitz for every :math:`W, b, \theta` (proof in the module docstring).
    The layer is residual, so input and output have the same size.

    Shapes: ``(*, in_features) -> (*, in_features)``; :math:`W` is ``(in_features,
    inner_features)``, stored transposed as ``weight`` ``(inner_features, in_features)``.

    Args:
        in_features: the size of inputs and outputs.
        out_features: None or ``in_features`` (anything else raises: the layer is residual).
        bias: learn :math:`b` (``inner_features``).
        inner_features: the width :math:`k` of the hidden ReLU layer (default ``in_features``).
        device, dtype: of the parameters.

    Raises:
        ValueError: sizes < 1 or ``out_features != in_features``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int | None = None,
        bias: bool = True,
        *,
        inner_features: int | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias, inner_features, device, dtype)
        self.log_q = nn.Parameter(torch.zeros(self.inner_features, device=device, dtype=dtype))

    def inverse_t(self) -> Tensor:
        """:math:`T^{-1}`, shape ``(inner_features,)``."""
        gram = self.weight @ self.weight.mT  # W^T W, (k, k)
        return _sll_inverse_t(gram.abs(), self.log_q)


class CPLLinear(_ResidualLinear):
    r"""Convex potential layer (CPL), dense [meunier2022dynamical]:
    :math:`h(x) = x - \frac{2}{\hat\sigma^2} W \mathrm{ReLU}(W^\top x + b)`, the gradient step
    :math:`x - \frac{2}{\hat\sigma^2}\nabla \psi(x)` on a convex potential, with
    :math:`\hat\sigma \ge \|W\|_2` the certified Gram-iteration bound [delattre2023efficient]
    (no power iteration, no state: the same in training and evaluation mode). 1-Lipschitz for
    every :math:`W, b` (module docstring, :math:`T = \hat\sigma^2 I \succeq W^\top W`).

    Shapes: ``(*, in_features) -> (*, in_features)``.

    Args:
        in_features, out_features, bias, inner_features, device, dtype: as :class:`SLLLinear`.
        n_iter: Gram steps of the bound (>= 1, fixed: traceable).

    Raises:
        TypeError or ValueError: sizes < 1, ``out_features != in_features``, ``n_iter`` < 1,
            naming the argument.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int | None = None,
        bias: bool = True,
        *,
        inner_features: int | None = None,
        n_iter: int = 6,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_features, out_features, bias, inner_features, device, dtype)
        self.n_iter = check_int(n_iter, "n_iter", 1)

    def inverse_t(self) -> Tensor:
        r""":math:`1 / \hat\sigma^2`, repeated ``(inner_features,)``."""
        bound = gram_bound(self.weight, self.n_iter)
        return _safe_inverse(bound.square()).expand(self.inner_features)


# ----------------------------------------------------------------------------- convolutions


class _ResidualConv2d(_Validated, nn.Module):
    """Shared parameters and forward of SLLConv2d and CPLConv2d: ``weight`` ``(k, n, kh, kw)``
    is the kernel of :math:`W^\\top` (n channels to k inner channels)."""

    lipschitz_constant = 1.0

    def __init__(self, in_channels, out_channels, kernel_size, stride, padding, bias, inner_channels,
                 padding_mode, device, dtype) -> None:
        super().__init__()
        inner = _check_residual_sizes(in_channels, out_channels, "channels", inner_channels, "inner_channels")
        kernel_size = check_pair(kernel_size, "kernel_size", 1)
        if kernel_size[0] % 2 == 0 or kernel_size[1] % 2 == 0:
            raise ValueError(f"kernel_size must be odd (same-size residual), got {kernel_size}")
        if check_pair(stride, "stride", 1) != (1, 1):
            raise ValueError(f"stride must be 1 for a residual layer x - g(x), got {stride!r}")
        _check_bool(bias, "bias")
        same = (kernel_size[0] // 2, kernel_size[1] // 2)
        if padding is not None and check_pair(padding, "padding", 0) != same:
            raise ValueError(f"padding must be kernel_size // 2 = {same} (or None), got {padding!r}")
        self.padding_mode = _check_padding_mode(padding_mode)
        self.in_channels = self.out_channels = in_channels
        self.inner_channels = inner
        self.kernel_size, self.padding = kernel_size, same
        factory = dict(device=device, dtype=dtype)
        self.weight = nn.Parameter(torch.empty(inner, in_channels, *kernel_size, **factory))
        self.bias = nn.Parameter(torch.empty(inner, **factory)) if bias else None
        nn.init.kaiming_normal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def adjoint_kernel(self) -> Tensor:
        """The kernel of :math:`W` (the adjoint of :math:`x \\mapsto K \\star x` with this padding,
        stride 1): transposed and flipped, ``(n, k, kh, kw)``."""
        return self.weight.transpose(0, 1).flip(-2, -1)

    def inverse_t(self, x: Tensor) -> Tensor:
        raise NotImplementedError

    def _conv(self, x: Tensor, kernel: Tensor, bias: Tensor | None) -> Tensor:
        x, pad = _pad_input(x, self.padding, self.padding_mode)
        return F.conv2d(x, kernel, bias, 1, pad)

    def _check_input(self, x: Tensor) -> tuple[int, int]:
        size = _check_image(x, self.in_channels, type(self).__name__)
        if self.padding_mode == "circular" and (size[0] < self.padding[0] or size[1] < self.padding[1]):
            raise ValueError(
                f"{type(self).__name__}: x of image size {size} is too small for circular padding {self.padding}"
            )
        return size

    def forward(self, x: Tensor) -> Tensor:
        self._check_input(x)
        self._validate_eval(x)
        t_inv = self.inverse_t(x)
        z = F.relu(self._conv(x, self.weight, self.bias)) * t_inv[:, None, None]
        return x - 2 * self._conv(z, self.adjoint_kernel(), None)

    def _export(self, t_inv: Tensor, input_size: tuple[int, int] | None = None) -> ExportedResidual:
        geometry = nn.Conv2d(1, 1, self.kernel_size, padding=self.padding, padding_mode=self.padding_mode)
        inner = _conv_with(geometry, self.weight, self.bias)
        outer = _conv_with(geometry, 2 * self.adjoint_kernel() * t_inv[None, :, None, None], None)
        return ExportedResidual(inner, outer, input_size)

    def extra_repr(self) -> str:
        return (
            f"channels={self.in_channels}, inner_channels={self.inner_channels}, "
            f"kernel_size={self.kernel_size}, padding_mode={self.padding_mode!r}, bias={self.bias is not None}"
        )


class SLLConv2d(_ResidualConv2d):
    r"""SDP-based Lipschitz layer (SLL), convolutional [araujo2023unified]:
    :math:`h(x) = x - 2\, K^\top \star (T^{-1} \mathrm{ReLU}(K \star x + b))`, where
    :math:`K^\top \star` is the adjoint convolution (transposed, flipped kernel) and
    :math:`T_a = \sum_{b, \delta} |A_{ab}[\delta]|\, q_b / q_a` per inner channel, with
    :math:`A` the autocorrelation of the adjoint kernel (the kernel of :math:`K K^\top`) and
    :math:`q = e^\theta` learnable. 1-Lipschitz for every kernel, bias and :math:`\theta`, for
    zero and circular padding and every image size (module docstring).

    Shapes: ``(N, in_channels, H, W) -> (N, in_channels, H, W)``; ``weight`` is
    ``(inner_channels, in_channels, kh, kw)``.

    Args:
        in_channels: channels of inputs and outputs.
        out_channels: None or ``in_channels`` (the layer is residual).
        kernel_size: odd int or pair.
        stride: must be 1; padding: None or ``kernel_size // 2`` (same size, for the residual).
        bias: learn :math:`b` (``inner_channels``).
        inner_channels: channels of the hidden ReLU layer (default ``in_channels``).
        padding_mode: ``"zeros"`` or ``"circular"``.
        device, dtype: of the parameters.

    Raises:
        ValueError: sizes < 1, ``out_channels != in_channels``, an even kernel, a stride other
            than 1, another padding, an unknown padding mode.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        bias: bool = True,
        *,
        inner_channels: int | None = None,
        padding_mode: str = "zeros",
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias, inner_channels,
                         padding_mode, device, dtype)
        self.log_q = nn.Parameter(torch.zeros(self.inner_channels, device=device, dtype=dtype))

    def inverse_t(self, x: Tensor | None = None) -> Tensor:
        """:math:`T^{-1}`, shape ``(inner_channels,)`` (independent of the image size)."""
        gram_abs = _autocorrelation(self.adjoint_kernel()).abs().sum(dim=(-2, -1))
        return _sll_inverse_t(gram_abs, self.log_q)

    @torch.no_grad()
    def export_module(self) -> ExportedResidual:
        """:class:`ExportedResidual` of two frozen ``nn.Conv2d`` (valid on every image size).

        Raises:
            ValueError: non-finite parameters."""
        self.check_parameters()
        return self._export(self.inverse_t())


class CPLConv2d(_SizeDependentBound, _ResidualConv2d):
    r"""Convex potential layer (CPL), convolutional [meunier2022dynamical]:
    :math:`h(x) = x - \frac{2}{\hat\sigma^2} K^\top \star \mathrm{ReLU}(K \star x + b)` with
    :math:`\hat\sigma` a certified Gram bound of the convolution for this padding and the size
    of the images given (the norm of a convolution depends on both; the bound of
    :class:`~stabilitylab.layers.SpectralConv2d`, ``n_iter`` fixed Gram steps, so the layer
    traces), kept while the kernel and the image size are unchanged and recomputed otherwise
    (no power-iteration state: see :class:`~stabilitylab.layers.SpectralConv2d`). 1-Lipschitz
    for every kernel and bias (module docstring).

    Shapes: ``(N, in_channels, H, W) -> (N, in_channels, H, W)``.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, bias: as :class:`SLLConv2d`.
        inner_channels, padding_mode, device, dtype: as :class:`SLLConv2d`.
        input_size: optional ``(H, W)``; when given, other sizes are rejected.
        n_iter: Gram steps of the bound (>= 1).
        tol: deprecated and ignored; use ``n_iter``.

    Raises:
        TypeError or ValueError: as :class:`SLLConv2d`; a bad ``n_iter`` or ``tol``; an input
            of the wrong shape or of another size than ``input_size``.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int | None = None,
        kernel_size: int | tuple[int, int] = 3,
        stride: int | tuple[int, int] = 1,
        padding: int | tuple[int, int] | None = None,
        bias: bool = True,
        *,
        inner_channels: int | None = None,
        padding_mode: str = "zeros",
        input_size: int | tuple[int, int] | None = None,
        n_iter: int = 6,
        tol: float | None = None,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias, inner_channels,
                         padding_mode, device, dtype)
        self.n_iter = check_int(n_iter, "n_iter", 1)
        _deprecated_tol(tol, type(self).__name__)
        self._init_size(input_size)

    def _check_size(self, size: tuple[int, int]) -> None:
        (h, w), (kh, kw) = size, self.kernel_size
        if self.padding_mode == "circular" and (kh > h or kw > w):
            raise ValueError(
                f"{type(self).__name__}: x (image size {size}) is smaller than the kernel {self.kernel_size}: "
                "a circular convolution would wrap the kernel around itself"
            )

    def bound(self, input_size: int | tuple[int, int]) -> Tensor:
        """Certified bound of :math:`\\|K \\star\\|_2` on ``input_size`` images (0-dim): the one the
        forward uses."""
        size = check_pair(input_size, "input_size", 1)
        self._check_size(size)
        return cached_conv_bound(self, self.weight, size, padding_mode=self.padding_mode, padding=self.padding,
                                 stride=(1, 1), n_iter=self.n_iter)

    def inverse_t(self, x: Tensor) -> Tensor:
        """:math:`1/\\hat\\sigma^2` for the size of ``x``, repeated ``(inner_channels,)``."""
        bound = self.bound(self._size_for(x))
        return _safe_inverse(bound.square()).expand(self.inner_channels)

    @torch.no_grad()
    def export_module(self) -> ExportedResidual:
        """:class:`ExportedResidual` of two frozen ``nn.Conv2d``, scaled for ``input_size`` (or the
        last image size seen): certified for that size only, so the exported module records it
        and rejects inputs of any other size (``ValueError``).

        Raises:
            ValueError: no ``input_size`` was given and the layer was never called; non-finite
                parameters.
        """
        self.check_parameters()
        size = self._export_size()
        bound = self.bound(size)
        return self._export(_safe_inverse(bound.square()).expand(self.inner_channels), size)
