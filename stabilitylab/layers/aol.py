r"""Almost-orthogonal layers (AOL) [prach2022almost]: a diagonal rescaling that certifies 1-Lipschitz.

**Theorem** (Prach & Lampert, Theorem 1). For :math:`W \in \mathbb{R}^{m \times n}` and
:math:`D = \operatorname{diag}(d)` with :math:`d_i = (\sum_j |W^\top W|_{ij})^{-1/2}`,
:math:`\|W D\|_2 \le 1`.

*Proof idea.* :math:`\|WD\|_2^2 = \lambda_{\max}(D W^\top W D)`, and
:math:`I - D W^\top W D = D (D^{-2} - W^\top W) D` where :math:`D^{-2} - W^\top W` is
diagonally dominant with a nonnegative diagonal (its diagonal is :math:`\sum_j |W^\top W|_{ij}
- (W^\top W)_{ii} \ge \sum_{j \ne i} |W^\top W|_{ij}`), hence positive semidefinite
(Gershgorin). The rescaling costs one Gram matrix, no iteration, and leaves an orthogonal
:math:`W` unchanged (then :math:`D = I`), which is why AOL layers start almost orthogonal.

For a convolution the same argument runs on the operator: its Gram operator is the
convolution by the autocorrelation :math:`K^\top \star K`,
:math:`(K^\top \star K)_{ij}[\delta] = \sum_{o, p} K_{oi}[p] K_{oj}[p + \delta]`
(shape ``(c_in, c_in, 2 kh - 1, 2 kw - 1)``), so the row sums of its absolute entries are
:math:`\sum_{j, \delta} |K^\top \star K|_{ij}[\delta]` (Theorem 2 of the paper). For circular
padding this is exact (aliased offsets only lower the sums); a zero-padded or strided
convolution is a restriction :math:`P C E` of a circular one on a larger grid, with
:math:`\|P C E D\| \le \|C D\|` because the channel scaling commutes with the embedding
:math:`E`. So the rescaled kernel is 1-Lipschitz for zero and circular padding and any stride.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stabilitylab import spectral
from stabilitylab._checks import check_int, check_pair
from stabilitylab.layers._common import (
    _check_bool,
    _check_features,
    _check_image,
    _check_padding_mode,
    _conv_with,
    _linear_with,
    _pad_input,
    _Validated,
)
from stabilitylab.spectral import _autocorrelation

__all__ = ["AOLLinear", "AOLConv2d", "aol_scaling", "kernel_autocorrelation"]


def aol_scaling(gram: Tensor) -> Tensor:
    r"""The AOL rescaling :math:`d_i = (\sum_j |G_{ij}|)^{-1/2}` of a Gram matrix ``(n, n)``
    (``gram`` may also be a stack ``(n, n, *)`` whose trailing dimensions are summed too, as
    for the autocorrelation of a kernel). A zero row (a zero column of :math:`W`) gets a
    finite scale (1), which multiplies zeros.

    Floating point: the sums are accumulated in float64 and the scales are multiplied by
    :math:`1 - 8\,\epsilon` (:math:`\epsilon` the unit roundoff of ``gram``'s dtype), a safety
    margin for the rounding of the Gram matrix and of the product :math:`WD` in the working
    dtype, so that an (almost) orthogonal :math:`W`, whose scales are 1 up to rounding, does not
    come out a few ulp above norm 1. Callers should rescale :math:`W` first (the layers divide it
    by its largest entry: :math:`WD` is invariant under :math:`W \to cW`) so that the Gram
    matrix neither overflows nor underflows."""
    sums = gram.abs().flatten(1).to(torch.float64).sum(dim=1)
    eps = torch.finfo(gram.dtype).eps
    # a zero sum (a zero column, or one whose Gram entries underflowed) gets the scale 1: any
    # scale at most the theorem's keeps ||WD|| <= 1, and 1 keeps the gradient finite
    scale = torch.where(sums > 0, sums, torch.ones_like(sums)).rsqrt() * (1 - 8 * eps)
    return scale.to(gram.dtype)


#: The kernel of the Gram operator of a convolution (``(c_out, c_in, kh, kw)`` ->
#: ``(c_in, c_in, 2 kh - 1, 2 kw - 1)``): :func:`stabilitylab.spectral.kernel_autocorrelation`,
#: re-exported here; the layers' forward calls its unchecked form (no value check: traceable).
kernel_autocorrelation = spectral.kernel_autocorrelation


def _unit_peak(weight: Tensor) -> Tensor:
    """``weight`` divided by its largest absolute entry (an all-zero weight stays zero): the AOL
    rescaling is invariant under scaling the weight, and this keeps its Gram matrix finite and
    normal for weights from 1e-38 to 1e38 (float32 products of 1e20 entries overflow)."""
    peak = weight.detach().abs().amax()
    return weight / torch.where(peak > 0, peak, torch.ones_like(peak))


class AOLLinear(_Validated, nn.Linear):
    r"""Almost-orthogonal linear layer [prach2022almost]: :math:`x \mapsto W D x + b`.

    :math:`W` is the trainable weight and :math:`D = \operatorname{diag}
    ((\sum_j |W^\top W|_{ij})^{-1/2})`, which makes :math:`\|WD\|_2 \le 1` for every :math:`W`
    (see the module docstring for the proof), so the layer is 1-Lipschitz; :math:`D = I` when
    :math:`W` has orthonormal columns (the orthogonal initialization when
    ``out_features >= in_features``), so such a layer starts as an isometry.

    Shapes: ``(*, in_features) -> (*, out_features)``.

    Args:
        in_features, out_features: sizes (ints >= 1).
        bias: learn an additive bias (a bool).
        device, dtype: as :class:`torch.nn.Linear`.

    Raises:
        TypeError or ValueError: a bad size or ``bias``; at call time an input whose last
            dimension is not ``in_features``; in evaluation mode (untraced), non-finite
            parameters.
    """

    lipschitz_constant = 1.0

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, device=None, dtype=None) -> None:
        check_int(in_features, "in_features", 1)
        check_int(out_features, "out_features", 1)
        _check_bool(bias, "bias")
        super().__init__(in_features, out_features, bias=bias, device=device, dtype=dtype)
        nn.init.orthogonal_(self.weight)
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def normalized_weight(self) -> Tensor:
        """The weight applied, :math:`W D`, shape ``(out_features, in_features)``."""
        W = _unit_peak(self.weight)
        return W * aol_scaling(W.mT @ W)

    def forward(self, x: Tensor) -> Tensor:
        _check_features(x, self.in_features, type(self).__name__)
        self._validate_eval(x)
        return F.linear(x, self.normalized_weight(), self.bias)

    @torch.no_grad()
    def export_module(self) -> nn.Linear:
        """A plain ``nn.Linear`` with frozen copies of :math:`WD` and the bias.

        Raises:
            ValueError: non-finite parameters."""
        self.check_parameters()
        return _linear_with(self.normalized_weight(), self.bias)


class AOLConv2d(_Validated, nn.Conv2d):
    r"""Almost-orthogonal convolution [prach2022almost]: the kernel rescaled per input channel.

    The kernel applied is :math:`K_{:, i} d_i` with
    :math:`d_i = (\sum_{j, \delta} |K^\top \star K|_{ij}[\delta])^{-1/2}` (see
    :func:`stabilitylab.spectral.kernel_autocorrelation`), which bounds the norm of the
    convolution operator by 1 for zero and circular padding, any stride and any image size
    (module docstring), so the layer is 1-Lipschitz and its exported ``nn.Conv2d`` is valid on
    every size.

    Shapes: ``(N, in_channels, H, W) -> (N, out_channels, H', W')`` as ``nn.Conv2d``.

    Args:
        in_channels, out_channels: channel counts (ints >= 1).
        kernel_size, stride: int or pair of ints >= 1.
        padding: int or pair; None (the default): ``kernel_size // 2``. With circular padding
            at most ``(kernel_size - 1) // 2`` (more would repeat output rows).
        bias: learn an additive bias (a bool).
        padding_mode: ``"zeros"`` or ``"circular"``.
        device, dtype: as :class:`torch.nn.Conv2d`.

    Raises:
        TypeError or ValueError: bad sizes, padding, padding mode or ``bias``, naming the
            argument; at call time an input of the wrong shape or an image smaller than the
            kernel; in evaluation mode (untraced), non-finite parameters.
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
        device=None,
        dtype=None,
    ) -> None:
        check_int(in_channels, "in_channels", 1)
        check_int(out_channels, "out_channels", 1)
        kernel_size = check_pair(kernel_size, "kernel_size", 1)
        stride = check_pair(stride, "stride", 1)
        _check_bool(bias, "bias")
        padding_mode = _check_padding_mode(padding_mode)
        pad = (kernel_size[0] // 2, kernel_size[1] // 2) if padding is None else check_pair(padding, "padding", 0)
        if padding_mode == "circular" and (2 * pad[0] > kernel_size[0] - 1 or 2 * pad[1] > kernel_size[1] - 1):
            raise ValueError(
                f"circular padding must be at most (kernel_size - 1) // 2 = "
                f"{((kernel_size[0] - 1) // 2, (kernel_size[1] - 1) // 2)}, got {padding!r}"
            )
        super().__init__(
            in_channels, out_channels, kernel_size, stride=stride, padding=pad, bias=bias,
            padding_mode=padding_mode, device=device, dtype=dtype,
        )
        with torch.no_grad():  # a Dirac kernel (orthogonal channel mixing at the centre tap)
            self.weight.zero_()
            centre = torch.empty(out_channels, in_channels, device=self.weight.device, dtype=self.weight.dtype)
            nn.init.orthogonal_(centre)
            self.weight[:, :, kernel_size[0] // 2, kernel_size[1] // 2] = centre
            self.weight.add_(1e-2 * torch.randn_like(self.weight))
            if self.bias is not None:
                self.bias.zero_()

    def normalized_weight(self) -> Tensor:
        """The kernel applied, ``(out_channels, in_channels, kh, kw)``."""
        kernel = _unit_peak(self.weight)
        scale = aol_scaling(_autocorrelation(kernel))
        return kernel * scale[None, :, None, None]

    def forward(self, x: Tensor) -> Tensor:
        h, w = _check_image(x, self.in_channels, type(self).__name__)
        (kh, kw), (ph, pw) = self.kernel_size, self.padding
        if h + 2 * ph < kh or w + 2 * pw < kw:
            raise ValueError(
                f"{type(self).__name__}: x of image size {(h, w)} is smaller than the kernel {self.kernel_size} "
                f"with padding {self.padding}"
            )
        self._validate_eval(x)
        x, pad = _pad_input(x, self.padding, self.padding_mode)
        return F.conv2d(x, self.normalized_weight(), self.bias, self.stride, pad)

    @torch.no_grad()
    def export_module(self) -> nn.Conv2d:
        """A plain ``nn.Conv2d`` (same geometry) with frozen copies of the rescaled kernel.

        Raises:
            ValueError: non-finite parameters."""
        self.check_parameters()
        return _conv_with(self, self.normalized_weight())
