"""What the layer modules share: argument and input checks, parameter validation outside traced
code, the image-size bookkeeping of size-dependent bounds, and the plain modules they export to.

Checks on *shapes* and Python values are cheap and trace (``torch.compile``, ``torch.export``,
``meta`` tensors); checks on tensor *values* (NaN/Inf parameters) need a device-to-host sync and
cannot be traced, so they never run inside a traced or training-mode forward: see
:func:`check_parameters`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stabilitylab._checks import check_choice, check_int, check_pair

__all__: list[str] = []

_PADDING_MODES = ("zeros", "circular")


# ----------------------------------------------------------------------------- arguments


def _check_int(value, name: str, minimum: int = 1) -> int:
    """``check_int`` (kept under this name: other layer modules import it from ``dense``)."""
    return check_int(value, name, minimum)


def _check_bool(value, name: str) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def _check_padding_mode(padding_mode) -> str:
    return check_choice(padding_mode, "padding_mode", _PADDING_MODES)


def _check_input_size(input_size) -> tuple[int, int] | None:
    return None if input_size is None else check_pair(input_size, "input_size", 1)


def _same_padding(kernel_size: tuple[int, int], padding, padding_mode: str) -> tuple[int, int]:
    """``padding=None`` means ``k // 2`` (the output keeps the input's size for odd kernels).
    Circular padding must be ``k // 2`` with odd kernels: then the layer is the circular
    convolution of :mod:`stabilitylab.spectral` (each output pixel exactly once)."""
    pad = (kernel_size[0] // 2, kernel_size[1] // 2) if padding is None else check_pair(padding, "padding", 0)
    if padding_mode == "circular":
        if kernel_size[0] % 2 == 0 or kernel_size[1] % 2 == 0 or pad != (kernel_size[0] // 2, kernel_size[1] // 2):
            raise ValueError(
                f"circular padding needs an odd kernel_size and padding = kernel_size // 2, got "
                f"kernel_size={kernel_size}, padding={padding!r}"
            )
    return pad


# ----------------------------------------------------------------------------- inputs (shapes only: they trace)


def _check_features(x, features: int, layer: str) -> Tensor:
    """``x`` of shape ``(*, features)``, else a ValueError naming ``x`` and that shape."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer}: x must be a torch.Tensor, got {type(x).__name__}")
    if x.ndim < 1 or x.shape[-1] != features:
        raise ValueError(f"{layer}: x must have shape (..., {features}), got {tuple(x.shape)}")
    return x


def _check_image(x, channels: int | None, layer: str) -> tuple[int, int]:
    """``x`` of shape ``(N, channels, H, W)`` or ``(channels, H, W)`` (any channel count when
    ``channels`` is None); returns ``(H, W)``."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{layer}: x must be a torch.Tensor, got {type(x).__name__}")
    c = "C" if channels is None else channels
    if x.ndim not in (3, 4) or (channels is not None and x.shape[-3] != channels):
        raise ValueError(f"{layer}: x must have shape (N, {c}, H, W) or ({c}, H, W), got {tuple(x.shape)}")
    return int(x.shape[-2]), int(x.shape[-1])


# ----------------------------------------------------------------------------- parameters (values: never traced)


def _tracing(t: Tensor | None = None) -> bool:
    """True while ``torch.compile`` or ``torch.export`` traces, or for ``meta`` tensors: code
    that reads tensor values (``bool(...)``, ``.item()``) must not run then."""
    return torch.compiler.is_compiling() or (t is not None and t.device.type == "meta")


def check_parameters(module: nn.Module) -> nn.Module:
    """Raise ``ValueError`` naming the first parameter (or buffer) of ``module`` that holds NaN or
    Inf entries; return ``module`` otherwise.

    The layers of :mod:`stabilitylab.layers` are 1-Lipschitz for every *finite* parameter; a
    non-finite one gives NaN outputs. Reading the values needs a device-to-host sync and cannot
    be traced, so the layers run this check (their ``check_parameters()`` method) in
    ``export_module()`` (hence :func:`stabilitylab.layers.export`) and at every call in
    evaluation mode when not traced, never in a training-mode forward nor inside
    ``torch.compile``/``torch.export`` graphs; ``meta`` tensors are skipped.
    """
    for kind, items in (("parameter", module.named_parameters()), ("buffer", module.named_buffers())):
        for name, value in items:
            if value is None or value.device.type == "meta" or not value.is_floating_point():
                continue
            if not bool(torch.isfinite(value.detach()).all()):
                raise ValueError(f"{type(module).__name__}: {kind} {name!r} contains NaN or Inf entries")
    return module


class _Validated:
    """Mixin: ``check_parameters()`` and the evaluation-mode check of the forward."""

    def check_parameters(self):
        """Raise ``ValueError`` naming a parameter that holds NaN or Inf (see
        :func:`stabilitylab.layers._common.check_parameters`); return the layer."""
        return check_parameters(self)

    def _validate_eval(self, x: Tensor) -> None:
        if not self.training and not _tracing(x):
            check_parameters(self)


# ----------------------------------------------------------------------------- image sizes


class _SizeDependentBound:
    """Mixin for layers whose certified bound depends on the image size (a convolution's norm
    does): the size is read from every input; ``input_size`` (optional) pins it, and the last
    size seen is what ``export_module()`` normalizes for when none was pinned."""

    def _init_size(self, input_size) -> None:
        self.input_size = _check_input_size(input_size)
        self.last_input_size: tuple[int, int] | None = None

    def _size_for(self, x: Tensor) -> tuple[int, int]:
        size = _check_image(x, self.in_channels, type(self).__name__)
        if self.input_size is not None and size != self.input_size:
            raise ValueError(
                f"{type(self).__name__} was built for input_size={self.input_size}: x must have shape "
                f"(N, {self.in_channels}, {self.input_size[0]}, {self.input_size[1]}), got {tuple(x.shape)}"
            )
        self._check_size(size)
        self.last_input_size = size
        return size

    def _check_size(self, size: tuple[int, int]) -> None:
        """Further conditions on the image size (the layer's geometry); none by default."""

    def _export_size(self) -> tuple[int, int]:
        size = self.input_size or self.last_input_size
        if size is None:
            raise ValueError(
                f"{type(self).__name__}.export_module needs the image size its bound is computed "
                "for: pass input_size= to the constructor or call the layer once on an input"
            )
        return size


# ----------------------------------------------------------------------------- plain modules


def _pad_input(x: Tensor, pad: tuple[int, int], padding_mode: str) -> tuple[Tensor, tuple[int, int]]:
    """The input padded for ``F.conv2d`` and the padding left for ``F.conv2d`` to apply."""
    if padding_mode == "circular":
        return F.pad(x, (pad[1], pad[1], pad[0], pad[0]), mode="circular"), (0, 0)
    return x, pad


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
