"""Small architectures for the chapters: multilayer perceptrons and convolutional networks.

Every builder returns a plain :class:`torch.nn.Sequential`, so that the Lipschitz tools of the
package can walk it layer by layer.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from torch import nn

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}

__all__ = ["mlp", "cnn", "lipschitz_mlp", "make_activation"]


def make_activation(spec: str | type[nn.Module] | Callable[[], nn.Module]) -> nn.Module:
    """A new activation module from a name ("relu", "tanh", "gelu", "leaky_relu", "sigmoid",
    "identity") or from a module class / zero-argument factory.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
        TypeError: a spec that builds something other than an ``nn.Module``.
    """
    if isinstance(spec, str):
        key = spec.lower().replace("-", "_")
        if key not in _ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got {spec!r}")
        return _ACTIVATIONS[key]()
    if callable(spec):
        module = spec()
        if isinstance(module, nn.Module):
            return module
    raise TypeError(f"activation must be a name or an nn.Module factory, got {spec!r}")


def _positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    values = tuple(values)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"{name} must be positive integers, got {values!r}")
    return values


def mlp(
    in_features: int | Sequence[int],
    num_classes: int,
    *,
    hidden: Sequence[int] = (64, 64),
    activation: str | Callable[[], nn.Module] = "relu",
    bias: bool = True,
) -> nn.Sequential:
    """A multilayer perceptron ``Flatten -> [Linear -> act] * len(hidden) -> Linear``.

    Args:
        in_features: the number of input features, or the input shape without the batch
            dimension (e.g. ``(1, 8, 8)``), which is flattened.
        num_classes: the number of logits.
        hidden: widths of the hidden layers (may be empty: a linear model).
        activation: see :func:`make_activation`.
        bias: whether the linear layers have biases.

    Returns:
        ``nn.Sequential`` mapping ``(N, *input_shape)`` to ``(N, num_classes)``.
    """
    if isinstance(in_features, int):
        shape: tuple[int, ...] = (in_features,)
    else:
        shape = tuple(in_features)
    _positive_ints("in_features", shape)
    _positive_ints("num_classes", (num_classes,))
    widths = _positive_ints("hidden", hidden)
    layers: list[nn.Module] = [nn.Flatten()]
    previous = math.prod(shape)
    for width in widths:
        layers += [nn.Linear(previous, width, bias=bias), make_activation(activation)]
        previous = width
    layers.append(nn.Linear(previous, num_classes, bias=bias))
    return nn.Sequential(*layers)


def cnn(
    in_channels: int,
    num_classes: int,
    *,
    image_size: int | Sequence[int],
    channels: Sequence[int] = (16, 32),
    hidden: int = 64,
    kernel_size: int = 3,
    activation: str | Callable[[], nn.Module] = "relu",
    pool: str = "max",
) -> nn.Sequential:
    """A small convolutional network: per entry of ``channels``, a ``kernel_size`` convolution
    (same padding), the activation and a 2x2 pooling; then ``Flatten -> Linear(hidden) -> act ->
    Linear(num_classes)``.

    Args:
        in_channels: input channels (1 for digits/MNIST, 3 for CIFAR and ``shapes``).
        num_classes: the number of logits.
        image_size: input height and width (an int for square images).
        channels: output channels of each convolution block.
        hidden: width of the dense hidden layer.
        kernel_size: odd kernel size of the convolutions.
        activation: see :func:`make_activation`.
        pool: "max" or "avg" (2x2, stride 2); "none" keeps the resolution.

    Returns:
        ``nn.Sequential`` mapping ``(N, in_channels, H, W)`` to ``(N, num_classes)``.
    """
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    if len(size) != 2:
        raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}")
    _positive_ints("image_size", size)
    _positive_ints("in_channels", (in_channels,))
    _positive_ints("num_classes", (num_classes,))
    _positive_ints("hidden", (hidden,))
    widths = _positive_ints("channels", channels)
    if not isinstance(kernel_size, int) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    pools = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d, "none": None}
    if pool not in pools:
        raise ValueError(f"pool must be one of {sorted(pools)}, got {pool!r}")
    layers: list[nn.Module] = []
    previous, (h, w) = in_channels, size
    for width in widths:
        layers += [nn.Conv2d(previous, width, kernel_size, padding=kernel_size // 2)]
        layers += [make_activation(activation)]
        if pools[pool] is not None:
            if h < 2 or w < 2:
                raise ValueError(f"image_size {size} is too small for {len(widths)} pooling blocks")
            layers.append(pools[pool](2))
            h, w = h // 2, w // 2
        previous = width
    layers += [nn.Flatten(), nn.Linear(previous * h * w, hidden), make_activation(activation)]
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)


def lipschitz_mlp(
    in_features: int | Sequence[int],
    num_classes: int,
    *,
    hidden: Sequence[int] = (64, 64),
    group_size: int = 2,
    n_iter: int = 6,
) -> nn.Sequential:
    """A 1-Lipschitz (in L2) perceptron ``Flatten -> [SpectralLinear -> GroupSort] * k ->
    SpectralLinear``: every linear layer is divided by a certified bound of its spectral norm and
    GroupSort is 1-Lipschitz, so the network is 1-Lipschitz for any weights [anil2019sorting].

    Args:
        in_features: the number of input features, or the input shape (flattened).
        num_classes: the number of outputs.
        hidden: widths of the hidden layers, each divisible by ``group_size``.
        group_size: GroupSort's group size (2 is MaxMin).
        n_iter: Gram steps of each layer's bound (see :class:`~stabilitylab.layers.SpectralLinear`).
    """
    from stabilitylab.layers import GroupSort, SpectralLinear

    shape = (in_features,) if isinstance(in_features, int) else tuple(in_features)
    _positive_ints("in_features", shape)
    _positive_ints("num_classes", (num_classes,))
    widths = _positive_ints("hidden", hidden)
    if any(width % group_size for width in widths):
        raise ValueError(f"every hidden width must be divisible by group_size={group_size}, got {widths}")
    layers: list[nn.Module] = [nn.Flatten()]
    previous = math.prod(shape)
    for width in widths:
        layers += [SpectralLinear(previous, width, n_iter=n_iter), GroupSort(group_size)]
        previous = width
    layers.append(SpectralLinear(previous, num_classes, n_iter=n_iter))
    return nn.Sequential(*layers)
