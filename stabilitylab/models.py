"""Small architectures for the chapters: multilayer perceptrons and convolutional networks.

Every builder returns a plain :class:`torch.nn.Sequential`, so that the Lipschitz tools of the
package can walk it layer by layer. The models are built on the CPU, in train mode.

Seeds: every builder takes ``generator=`` (a ``torch.Generator``). With a generator, one seed is
drawn from it and the layers are initialized under a fork of torch's global CPU generator seeded
with it (:func:`torch.random.fork_rng`), so equal generators give bit-identical parameters and
the caller's global random state is left as it was. Without one (``None``), the layers draw
from torch's global generator as usual.
"""

from __future__ import annotations

import functools
import inspect
import math
import numbers
from collections.abc import Callable, Sequence

import torch
from torch import nn

from stabilitylab._checks import check_generator, check_int
from stabilitylab._deprecation import renamed_kwargs

_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "leaky_relu": nn.LeakyReLU,
    "sigmoid": nn.Sigmoid,
    "identity": nn.Identity,
}

__all__ = [
    "mlp",
    "cnn",
    "lipschitz_mlp",
    "lipschitz_cnn",
    "make_activation",
    "LIPSCHITZ_DENSE",
    "LIPSCHITZ_CONV",
    "LIPSCHITZ_HEADS",
]


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
            raise ValueError(f"activation must be one of {sorted(_ACTIVATIONS)}, got spec={spec!r}")
        return _ACTIVATIONS[key]()
    if callable(spec):
        module = spec()
        if isinstance(module, nn.Module):
            return module
    raise TypeError(f"activation must be a name or an nn.Module factory, got spec={spec!r}")


def _positive_ints(name: str, values: Sequence[int]) -> tuple[int, ...]:
    if isinstance(values, (str, bytes)) or not isinstance(values, (Sequence, torch.Size)):
        raise TypeError(f"{name} must be a sequence of positive ints, got {values!r}")
    values = tuple(values)
    if not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in values):
        raise ValueError(f"{name} must be positive integers, got {values!r}")
    return tuple(int(v) for v in values)


def _shape(name: str, value) -> tuple[int, ...]:
    """An int (a number of features) or a non-empty sequence of positive ints."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        value = (value,)
    shape = _positive_ints(name, value)
    if not shape:
        raise ValueError(f"{name} must be an int or a non-empty shape, got {value!r}")
    return shape


def _size(name: str, value) -> tuple[int, int]:
    """``(height, width)`` from an int or a pair of positive ints."""
    size = (value, value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if isinstance(size, (str, bytes)) or not isinstance(size, (Sequence, torch.Size)) or len(size) != 2:
        raise ValueError(f"{name} must be an int or (height, width), got {value!r}")
    return _positive_ints(name, size)  # type: ignore[return-value]


def _draw_seed(generator: torch.Generator) -> int:
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=generator.device))


def _seeded_builder(fn):
    """Run the builder under a fork of the global CPU generator seeded from ``generator=``."""

    @functools.wraps(fn)
    def wrapper(*args, generator: torch.Generator | None = None, **kwargs):
        check_generator(generator)
        if generator is None:
            return fn(*args, **kwargs)
        seed = _draw_seed(generator)
        with torch.random.fork_rng(devices=[]):
            torch.random.default_generator.manual_seed(seed)
            return fn(*args, **kwargs)

    signature = inspect.signature(fn)
    parameters = list(signature.parameters.values())
    parameters.append(inspect.Parameter("generator", inspect.Parameter.KEYWORD_ONLY, default=None,
                                        annotation="torch.Generator | None"))
    wrapper.__signature__ = signature.replace(parameters=parameters)
    return wrapper


def _check_activation(activation) -> None:
    make_activation(activation)  # raises ValueError/TypeError naming "activation"


@_seeded_builder
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
        generator: a ``torch.Generator`` seeding the initialization (see the module docstring);
            None draws from torch's global generator.

    Returns:
        ``nn.Sequential`` mapping ``(N, *input_shape)`` to ``(N, num_classes)``.
    """
    shape = _shape("in_features", in_features)
    num_classes = check_int(num_classes, "num_classes")
    widths = _positive_ints("hidden", hidden)
    _check_activation(activation)
    if not isinstance(bias, bool):
        raise TypeError(f"bias must be a bool, got {bias!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    previous = math.prod(shape)
    for width in widths:
        layers += [nn.Linear(previous, width, bias=bias), make_activation(activation)]
        previous = width
    layers.append(nn.Linear(previous, num_classes, bias=bias))
    return nn.Sequential(*layers)


@renamed_kwargs(image_size="input_size")
@_seeded_builder
def cnn(
    in_channels: int,
    num_classes: int,
    *,
    input_size: int | Sequence[int],
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
        input_size: input height and width (an int for square images); ``image_size`` is a
            deprecated alias.
        channels: output channels of each convolution block.
        hidden: width of the dense hidden layer.
        kernel_size: odd kernel size of the convolutions.
        activation: see :func:`make_activation`.
        pool: "max" or "avg" (2x2, stride 2); "none" keeps the resolution.
        generator: a ``torch.Generator`` seeding the initialization (see the module docstring);
            None draws from torch's global generator.

    Returns:
        ``nn.Sequential`` mapping ``(N, in_channels, H, W)`` to ``(N, num_classes)``.
    """
    size = _size("input_size", input_size)
    in_channels = check_int(in_channels, "in_channels")
    num_classes = check_int(num_classes, "num_classes")
    hidden = check_int(hidden, "hidden")
    widths = _positive_ints("channels", channels)
    kernel_size = check_int(kernel_size, "kernel_size")
    if kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    _check_activation(activation)
    pools = {"max": nn.MaxPool2d, "avg": nn.AvgPool2d, "none": None}
    if not isinstance(pool, str) or pool not in pools:
        raise ValueError(f"pool must be one of {sorted(pools)}, got {pool!r}")
    layers: list[nn.Module] = []
    previous, (h, w) = in_channels, size
    for width in widths:
        layers += [nn.Conv2d(previous, width, kernel_size, padding=kernel_size // 2)]
        layers += [make_activation(activation)]
        if pools[pool] is not None:
            if h < 2 or w < 2:
                raise ValueError(f"input_size {size} is too small for {len(widths)} pooling blocks")
            layers.append(pools[pool](2))
            h, w = h // 2, w // 2
        previous = width
    layers += [nn.Flatten(), nn.Linear(previous * h * w, hidden), make_activation(activation)]
    layers.append(nn.Linear(hidden, num_classes))
    return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- 1-Lipschitz networks

#: Dense layer families of :func:`lipschitz_mlp` (``"sll"`` builds residual blocks, see there).
LIPSCHITZ_DENSE = ("spectral", "bjorck", "aol", "cayley", "bro", "sll")
#: Convolution families of :func:`lipschitz_cnn`.
LIPSCHITZ_CONV = ("aol", "soc", "sll", "cayley", "bro", "spectral")
#: Heads (last dense layer) of the 1-Lipschitz builders; ``"lln"`` is last-layer normalization.
LIPSCHITZ_HEADS = ("spectral", "bjorck", "aol", "cayley", "bro", "lln")


def _check_choice(name: str, value, choices: Sequence[str]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def _dense(family: str, in_features: int, out_features: int, *, n_iter: int = 6) -> nn.Module:
    """A 1-Lipschitz dense layer of a family (``"lln"``: unit rows, not 1-Lipschitz as a whole)."""
    from stabilitylab import layers

    if family == "spectral":
        return layers.SpectralLinear(in_features, out_features, n_iter=n_iter)
    if family == "bjorck":
        return layers.BjorckLinear(in_features, out_features)
    if family == "aol":
        return layers.AOLLinear(in_features, out_features)
    if family == "cayley":
        return layers.CayleyLinear(in_features, out_features)
    if family == "bro":
        return layers.BROLinear(in_features, out_features)
    if family == "lln":
        return layers.LLNLinear(in_features, out_features)
    raise ValueError(f"no dense layer for family {family!r}")  # unreachable after the checks


@_seeded_builder
def lipschitz_mlp(
    in_features: int | Sequence[int],
    num_classes: int,
    *,
    hidden: Sequence[int] = (64, 64),
    group_size: int = 2,
    n_iter: int = 6,
    layer: str = "spectral",
    head: str | None = None,
) -> nn.Sequential:
    r"""A perceptron that is 1-Lipschitz in L2 for any weights [anil2019sorting].

    Default (``layer="spectral"``): ``Flatten -> [SpectralLinear -> GroupSort] * k ->
    SpectralLinear``, every linear layer divided by a certified bound of its spectral norm
    [delattre2023efficient]. ``layer`` swaps the family of every dense layer:

    * ``"spectral"`` (:class:`~stabilitylab.layers.SpectralLinear`), ``"bjorck"``
      (:class:`~stabilitylab.layers.BjorckLinear` [anil2019sorting]), ``"aol"``
      (:class:`~stabilitylab.layers.AOLLinear` [prach2022almost]), ``"cayley"``
      (:class:`~stabilitylab.layers.CayleyLinear` [trockman2021orthogonalizing]), ``"bro"``
      (:class:`~stabilitylab.layers.BROLinear` [lai2025enhancing]): ``Flatten -> [layer ->
      GroupSort] * k -> head``;
    * ``"sll"`` [araujo2023unified]: SLL layers are residual, :math:`x - 2WT^{-1}
      \mathrm{ReLU}(W^\top x + b)`, so they keep the width and carry their own nonlinearity:
      ``Flatten -> AOLLinear(in, w) -> SLLLinear(w) * k -> head`` with ``k = len(hidden)``
      blocks of the common width ``w`` (all entries of ``hidden`` must be equal) and the head
      an ``AOLLinear`` by default (AOL is the 1-Lipschitz rescaling that SLL generalizes).

    Every layer is 1-Lipschitz, so the composition is, and
    :func:`stabilitylab.lipschitz.upper_bound` returns 1 (or, with ``head="lln"``, the
    certified norm of the last layer).

    Args:
        in_features: the number of input features, or the input shape (flattened).
        num_classes: the number of outputs.
        hidden: widths of the hidden layers, each divisible by ``group_size`` (for ``"sll"``:
            ``len(hidden)`` residual blocks of one common width; may not be empty).
        group_size: GroupSort's group size (2 is MaxMin).
        n_iter: Gram steps of the ``"spectral"`` layers' bound (see
            :class:`~stabilitylab.layers.SpectralLinear`).
        layer: the dense family, one of :data:`LIPSCHITZ_DENSE`.
        head: the last layer, one of :data:`LIPSCHITZ_HEADS`; default: the family of the
            hidden layers (``"aol"`` for ``"sll"``). ``"lln"`` is last-layer normalization
            (:class:`~stabilitylab.layers.LLNLinear`, unit rows [singla2022improved]): the
            logit differences are then :math:`\|w_i - w_j\|_2 \le 2`-Lipschitz, and the
            network as a whole :math:`\|W\|_2`-Lipschitz (certify with ``last_layer=True``).
        generator: a ``torch.Generator`` seeding the initialization (see the module docstring);
            None draws from torch's global generator.

    Returns:
        ``nn.Sequential`` mapping ``(N, *input_shape)`` to ``(N, num_classes)``.

    Raises:
        ValueError: bad sizes, an unknown ``layer`` or ``head``, widths not divisible by
            ``group_size``, unequal or no widths for ``"sll"``.
    """
    from stabilitylab.layers import GroupSort, SLLLinear

    shape = _shape("in_features", in_features)
    num_classes = check_int(num_classes, "num_classes")
    widths = _positive_ints("hidden", hidden)
    n_iter = check_int(n_iter, "n_iter")
    layer = _check_choice("layer", layer, LIPSCHITZ_DENSE)
    if head is None:
        head = "aol" if layer == "sll" else layer
    head = _check_choice("head", head, LIPSCHITZ_HEADS)
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 2:
        raise ValueError(f"group_size must be an int >= 2, got {group_size!r}")
    layers: list[nn.Module] = [nn.Flatten()]
    previous = math.prod(shape)
    if layer == "sll":
        if not widths or len(set(widths)) != 1:
            raise ValueError(f"hidden must be one or more equal widths for layer='sll' (residual blocks), got {widths}")
        layers.append(_dense("aol", previous, widths[0]))
        layers += [SLLLinear(widths[0]) for _ in widths]
        previous = widths[0]
    else:
        if any(width % group_size for width in widths):
            raise ValueError(f"every hidden width must be divisible by group_size={group_size}, got {widths}")
        for width in widths:
            layers += [_dense(layer, previous, width, n_iter=n_iter), GroupSort(group_size)]
            previous = width
    layers.append(_dense(head, previous, num_classes, n_iter=n_iter))
    return nn.Sequential(*layers)


def _conv(family: str, in_channels: int, out_channels: int, kernel_size: int) -> nn.Module:
    """A 1-Lipschitz same-size convolution of a family (``"sll"`` only for equal channels)."""
    from stabilitylab import layers

    if family == "aol":
        return layers.AOLConv2d(in_channels, out_channels, kernel_size)
    if family == "soc":
        return layers.SOCConv2d(in_channels, out_channels, kernel_size, padding="same")
    if family == "cayley":
        return layers.CayleyConv2d(in_channels, out_channels, kernel_size)
    if family == "bro":
        return layers.BROConv2d(in_channels, out_channels, kernel_size)
    if family == "spectral":
        return layers.SpectralConv2d(in_channels, out_channels, kernel_size)
    if family == "sll":
        return layers.SLLConv2d(in_channels, kernel_size=kernel_size)
    raise ValueError(f"no convolution for family {family!r}")  # unreachable after the checks


@renamed_kwargs(image_size="input_size")
@_seeded_builder
def lipschitz_cnn(
    in_channels: int,
    num_classes: int,
    *,
    input_size: int | Sequence[int],
    channels: Sequence[int] = (16, 32),
    layer: str = "aol",
    depth: int = 1,
    kernel_size: int = 3,
    pool: str = "invertible",
    head: str = "spectral",
) -> nn.Sequential:
    r"""A convolutional network that is 1-Lipschitz in L2 for any weights.

    One stage per entry ``c`` of ``channels``, then ``Flatten -> head``:

    * ``depth`` times ``conv -> MaxMin`` (the first conv maps the previous channels to ``c``,
      the others ``c -> c``), with ``conv`` of the family ``layer``: ``"aol"``
      (:class:`~stabilitylab.layers.AOLConv2d` [prach2022almost]), ``"soc"``
      (:class:`~stabilitylab.layers.SOCConv2d` [singla2021skew]), ``"cayley"``
      (:class:`~stabilitylab.layers.CayleyConv2d` [trockman2021orthogonalizing], circular
      padding), ``"bro"`` (:class:`~stabilitylab.layers.BROConv2d` [lai2025enhancing],
      circular padding), ``"spectral"`` (:class:`~stabilitylab.layers.SpectralConv2d`,
      divided by a certified bound of its operator norm [delattre2024spectral]); for
      ``"sll"`` [araujo2023unified] the stage is ``AOLConv2d(previous, c) -> SLLConv2d(c) *
      depth`` (SLL blocks are residual, keep the channels and contain their own ReLU);
    * a 2x downsampling: ``pool="invertible"``
      (:class:`~stabilitylab.layers.InvertibleDownsampling`, space-to-depth, orthogonal: the
      channels are multiplied by 4 [jacobsen2018irevnet]) or ``"avg"``
      (:class:`~stabilitylab.layers.ScaledAvgPool2d`, 2x2 windows summed and halved: norm 1).

    MaxMin is 1-Lipschitz [anil2019sorting] and every other layer is, so the network is
    1-Lipschitz (or, with ``head="lln"``, its logit differences are :math:`\|w_i -
    w_j\|`-Lipschitz, at most 2 [singla2022improved]). The head is one dense layer from the
    flattened features, ``"spectral"`` by default: the orthogonal parametrizations
    (``"cayley"``, ``"bro"``) work with square matrices of the flattened size and are only
    practical for small feature maps.

    Args:
        in_channels: input channels (1 for digits/MNIST, 3 for CIFAR).
        num_classes: the number of logits.
        input_size: input height and width (an int for square images), divisible by
            ``2 ** len(channels)``; ``image_size`` is a deprecated alias.
        channels: output channels of the stages (even: MaxMin pairs them).
        layer: the convolution family, one of :data:`LIPSCHITZ_CONV`.
        depth: convolutions per stage (>= 1).
        kernel_size: odd kernel size.
        pool: ``"invertible"`` or ``"avg"``.
        head: one of :data:`LIPSCHITZ_HEADS`.
        generator: a ``torch.Generator`` seeding the initialization (see the module docstring);
            None draws from torch's global generator.

    Returns:
        ``nn.Sequential`` mapping ``(N, in_channels, H, W)`` to ``(N, num_classes)``.

    Raises:
        ValueError: bad sizes, odd channels, an even kernel, an image size that the
            downsamplings do not divide, an unknown ``layer``, ``pool`` or ``head``.
    """
    from stabilitylab.layers import InvertibleDownsampling, MaxMin, ScaledAvgPool2d

    size = _size("input_size", input_size)
    in_channels = check_int(in_channels, "in_channels")
    num_classes = check_int(num_classes, "num_classes")
    widths = _positive_ints("channels", channels)
    if not widths or any(width % 2 for width in widths):
        raise ValueError(f"channels must be one or more even ints (MaxMin pairs channels), got {widths}")
    layer = _check_choice("layer", layer, LIPSCHITZ_CONV)
    head = _check_choice("head", head, LIPSCHITZ_HEADS)
    pool = _check_choice("pool", pool, ("invertible", "avg"))
    if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
        raise ValueError(f"depth must be an int >= 1, got {depth!r}")
    if not isinstance(kernel_size, int) or isinstance(kernel_size, bool) or kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd int, got {kernel_size!r}")
    factor = 2 ** len(widths)
    if size[0] % factor or size[1] % factor:
        raise ValueError(f"input_size must be divisible by 2 ** len(channels) = {factor}, got {input_size!r}")
    h, w = size
    if layer in ("cayley", "bro") and (h // 2 ** (len(widths) - 1) < kernel_size or w // 2 ** (len(widths) - 1) < kernel_size):
        raise ValueError(
            f"input_size {size} is too small for {len(widths)} stages of circular {kernel_size}x{kernel_size} "
            f"convolutions (layer={layer!r})"
        )
    layers: list[nn.Module] = []
    previous = in_channels
    for width in widths:
        if layer == "sll":
            layers.append(_conv("aol", previous, width, kernel_size))
            layers += [_conv("sll", width, width, kernel_size) for _ in range(depth)]
        else:
            for i in range(depth):
                layers += [_conv(layer, previous if i == 0 else width, width, kernel_size), MaxMin()]
        if pool == "invertible":
            layers.append(InvertibleDownsampling(2))
            previous = 4 * width
        else:
            layers.append(ScaledAvgPool2d(2))
            previous = width
        h, w = h // 2, w // 2
    layers += [nn.Flatten(), _dense(head, previous * h * w, num_classes)]
    return nn.Sequential(*layers)
