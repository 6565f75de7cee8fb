r"""Lipschitz constants of networks in :math:`\ell_2`: certified upper bounds, empirical lower bounds.

A network :math:`f = f_L \circ \dots \circ f_1` is Lipschitz with constant at most the product
of the constants of its layers, :math:`\operatorname{Lip}(f) \le \prod_l \operatorname{Lip}(f_l)`
[virmaux2018lipschitz]. This module computes that product for an ``nn.Sequential`` (nested
Sequentials are walked), layer by layer, each factor a *certified* upper bound:

* ``nn.Linear``: :math:`\|W\|_2`, bounded by Gram iteration [delattre2023efficient];
* ``nn.Conv2d``: the norm of the convolution as the linear map it is on images of the size the
  layer sees (any padding, padding mode, stride, dilation, groups), through
  :func:`stabilitylab.spectral.conv2d_module_norm` (see :func:`layer_bounds`);
* ``nn.BatchNorm1d/2d/3d`` in evaluation mode: a per-channel affine map,
  :math:`\max_c |\gamma_c| / \sqrt{v_c + \varepsilon}` (exact);
* ``nn.MaxPool2d``: :math:`\sqrt{M}`, with :math:`M` the largest number of pooling windows an
  input pixel belongs to (exact); ``nn.AvgPool2d`` and ``nn.AdaptiveAvgPool2d``: linear maps,
  bounded by their convolution norm and by the Schur test;
* element-wise activations: :math:`\sup_t |\sigma'(t)|` in closed form (or computed once in
  float64), e.g. 1 for ReLU and tanh, 1/4 for the sigmoid,
  :math:`\Phi(\sqrt2) + \sqrt2\,\varphi(\sqrt2) \approx 1.1289` for GELU;
* reshapes (``Flatten``, ``Unflatten``, ``Identity``) and dropout in evaluation mode: 1;
* any module that *declares* its constant (the protocol below).

**The ``lipschitz_constant`` protocol.** A module with an attribute ``lipschitz_constant`` (a
float, a 0-dim tensor, or a zero-argument callable returning one) is taken as a single layer of
that Lipschitz constant in :math:`\ell_2`, from its whole input to its whole output; the walk
does not look inside it and the attribute takes precedence over the module's type. This is
how the package's 1-Lipschitz layers (:mod:`stabilitylab.layers`: GroupSort, MaxMin, spectral,
orthogonal and other constrained layers) plug in. Declaring a constant is a promise the module
makes: it is not checked here (the layer's own tests check it).

Anything else (an LSTM, attention, a custom module, a Sequential subclass that overrides
``forward``, a known module whose subclass overrides ``forward``) raises ``TypeError`` naming it:
never a silent bound. So does any module whose call is not its class's ``forward``: a module
with forward hooks or pre-hooks (the model itself or any submodule, declared layers included),
an instance-level ``forward``, or global module forward hooks
(``torch.nn.modules.module.register_module_forward_hook`` / ``_pre_hook``). Parameters, buffers
and activation parameters must be finite and valid (BatchNorm ``running_var + eps > 0``; see
:func:`activation_constant`), otherwise ``ValueError`` naming the layer.

The bounds and lower bounds work under the caller's ``torch.no_grad()`` or
``torch.inference_mode()`` (gradients are switched on inside where they are needed) and leave
the model as they found it: modes, plain attributes a forward records (e.g. the last image size
of a size-dependent layer) and buffers are restored.

**Any other model** (residual, concatenating, up-sampling networks: a ResNet, a DenseNet, a
U-Net) is traced with ``torch.fx`` and certified constants are propagated through its graph in
float64 (see :func:`upper_bound`): composition multiplies, sums add, channel concatenations take
the square root of the sum of squares, a mean over :math:`m` entries scales by
:math:`1/\sqrt m`, ``F.*`` calls are read as their module twins, ``ConvTranspose2d`` is bounded as
the adjoint of a convolution, ``nn.Upsample`` exactly (nearest) or by its separable factors
(bilinear), and an eval-mode BatchNorm right after a convolution or linear layer is folded into
it. Any node without a known bound raises ``TypeError`` naming it (declare its constant on a
module to make it a leaf); ``LayerNorm`` and ``GroupNorm`` are refused (not globally
Lipschitz). :func:`report` then gives one row per node and, per residual or concatenating
block, the block's certified bound next to the Jacobian norm it attains.

Lower bounds (:func:`lower_bound`) are values the network attains: Jacobian spectral norms at
given points and difference quotients :math:`\|f(a) - f(b)\| / \|a - b\|` found by gradient
ascent. :func:`report` sets both sides next to each other, layer by layer; the gap between the
product bound and the attained constant is the looseness of the layer-wise product
[virmaux2018lipschitz]. :func:`pairwise_logit_bound` gives the tighter constants of the logit
differences that margin certificates need [tsuzuku2018lipschitz], for a last layer found by
:func:`linear_head` (a plain ``nn.Linear`` or any 1-Lipschitz dense head of the package), from
:func:`pairwise_row_distances`.

Certified means: an upper bound in exact arithmetic of the network's function, computed in
float64 (the bound of a float32 model is that of its weights read exactly); in floating point
it holds up to a relative error of a few units of float64's precision.
"""

from __future__ import annotations

import contextlib
import functools
import math
import operator
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import NamedTuple

import torch
import torch.fx
import torch.nn.functional as F
from torch import Tensor, nn

from stabilitylab import spectral
from stabilitylab._checks import (
    check_batch,
    check_generator,
    check_int,
    check_number,
    check_pair,
    check_shape,
    check_tensor,
    check_tol,
)
from stabilitylab._deprecation import renamed_kwargs
from stabilitylab._devices import model_device, to_model_device
from stabilitylab._modes import eval_mode

__all__ = [
    "GELU_LIPSCHITZ",
    "LayerBound",
    "LayerReport",
    "LipschitzReport",
    "GraphReport",
    "NodeReport",
    "BlockReport",
    "activation_constant",
    "layer_bounds",
    "upper_bound",
    "pairwise_logit_bound",
    "pairwise_row_distances",
    "linear_head",
    "LinearHead",
    "lower_bound",
    "jacobian_singular_values",
    "backward_gradient_norms",
    "report",
]

#: :math:`\sup_t |\mathrm{GELU}'(t)|`. With :math:`\mathrm{GELU}(t) = t\,\Phi(t)`,
#: :math:`\mathrm{GELU}'(t) = \Phi(t) + t\varphi(t)` and :math:`\mathrm{GELU}''(t) = \varphi(t)(2 - t^2)`,
#: so the derivative is largest at :math:`t = \sqrt2` (and smallest, :math:`\approx -0.1289`, at
#: :math:`-\sqrt2`): :math:`\Phi(\sqrt2) + \sqrt2\,\varphi(\sqrt2) = (1 + \operatorname{erf} 1)/2
#: + 1/(e\sqrt\pi) = 1.12890414518515...` (checked numerically in the tests).
GELU_LIPSCHITZ = 0.5 * (1.0 + math.erf(1.0)) + 1.0 / (math.e * math.sqrt(math.pi))

_SELU_SCALE = 1.0507009873554804934193349852946
_SELU_ALPHA = 1.6732632423543772848170429916717

# Largest batch * outputs * inputs for which lower_bound forms full Jacobians (exact SVD).
_JACOBIAN_ENTRIES = 2**22


# ----------------------------------------------------------------------------- report rows


@dataclass
class LayerBound:
    """One layer of the product bound.

    Attributes:
        name: the layer's name as in ``model.named_modules()`` (``""`` for a model that is a
            single layer).
        kind: the class name of the module.
        input_shape: the shape of the layer's input, without the batch dimension.
        upper: a certified upper bound of the layer's Lipschitz constant (L2).
        method: how it was obtained, e.g. ``"gram (certified)"``, ``"closed form (exact)"``.

    ``bound`` is the deprecated name of ``upper`` (one release, with a ``DeprecationWarning``).
    """

    name: str
    kind: str
    input_shape: tuple
    upper: float
    method: str

    @property
    def bound(self) -> float:
        """The certified upper bound under its old name, deprecated in favour of ``upper``."""
        warnings.warn("LayerBound.bound is deprecated, use LayerBound.upper", DeprecationWarning, stacklevel=2)
        return self.upper


@dataclass
class LayerReport:
    """One row of :class:`LipschitzReport`: the layer's certified ``upper`` bound and a
    ``lower`` value its Lipschitz constant attains (see :func:`report`)."""

    name: str
    kind: str
    input_shape: tuple
    upper: float
    lower: float
    method: str
    lower_method: str


@dataclass
class LipschitzReport:
    """Two-sided Lipschitz report of a network (see :func:`report`).

    Attributes:
        layers: one :class:`LayerReport` per layer.
        upper: the product of the layer upper bounds (certified upper bound of the network).
        lower: the empirical lower bound of the network (:func:`lower_bound`).
        ratio: ``upper / lower`` (>= 1; ``inf`` when ``lower`` is 0): how loose the product is
            at most.
    """

    layers: list[LayerReport] = field(default_factory=list)
    upper: float = 1.0
    lower: float = 0.0
    ratio: float = math.inf

    def to_dict(self) -> dict:
        """Plain Python types only (JSON-serializable, shapes as lists)."""
        rows = []
        for row in self.layers:
            item = asdict(row)
            item["input_shape"] = list(row.input_shape)
            rows.append(item)
        return {"layers": rows, "upper": self.upper, "lower": self.lower, "ratio": self.ratio}

    def __str__(self) -> str:
        header = ("layer", "kind", "input shape", "upper", "lower", "up/low", "upper bound by")
        lines = [header]
        for row in self.layers:
            ratio = row.upper / row.lower if row.lower > 0 else math.inf
            lines.append(
                (
                    row.name or "(model)",
                    row.kind,
                    str(tuple(row.input_shape)),
                    f"{row.upper:.5g}",
                    f"{row.lower:.5g}",
                    f"{ratio:.4g}",
                    row.method,
                )
            )
        widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
        numeric = {3, 4, 5}
        text = []
        for j, line in enumerate(lines):
            cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
            text.append("  ".join(cells).rstrip())
            if j == 0:
                text.append("  ".join("-" * w for w in widths))
        text.append(
            f"network: upper {self.upper:.5g} (product of the layers, certified), "
            f"lower {self.lower:.5g} (attained), upper/lower {self.ratio:.4g}"
        )
        return "\n".join(text)


# ----------------------------------------------------------------------------- argument checks


def _check_model(model) -> nn.Module:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    return model


def _check_input_shape(input_shape) -> tuple[int, ...]:
    return check_shape(input_shape, "input_shape")


def _check_points(x, name: str = "x") -> Tensor:
    return check_batch(x, name)


def _model_dtype_device(model: nn.Module) -> tuple[torch.dtype, torch.device]:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype, tensor.device
    return torch.get_default_dtype(), torch.device("cpu")


def _compute_device(device: torch.device) -> torch.device:
    """float64 where the tensors live, except on MPS (no float64 there): the CPU."""
    return torch.device("cpu") if device.type == "mps" else device


def _f64(t: Tensor) -> Tensor:
    return t.detach().to(device=_compute_device(t.device), dtype=torch.float64)


def _with_autograd(fn):
    """Run ``fn`` with autograd available whatever the caller's mode: out of
    ``torch.inference_mode()`` and under ``torch.enable_grad()`` (the bounds and lower bounds
    differentiate internally; the caller's ``no_grad``/``inference_mode`` must not break them)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with torch.inference_mode(False), torch.enable_grad():
            return fn(*args, **kwargs)

    return wrapper


_MODULE_DICTS = ("_parameters", "_buffers", "_modules")


@contextlib.contextmanager
def _preserved_state(model: nn.Module):
    """Leave every module of ``model`` as it was, whatever its forward records: plain attributes
    (e.g. the last image size a size-dependent layer saw, a cache) are put back and new ones
    removed, buffers changed in place are copied back. Parameters are not touched by the
    computations here (they read them, or use float64 copies)."""
    saved = []
    for module in model.modules():
        attributes = {key: value for key, value in vars(module).items() if key not in _MODULE_DICTS}
        buffers = dict(module._buffers)
        values = {key: b.detach().clone() for key, b in buffers.items() if isinstance(b, Tensor)}
        saved.append((module, attributes, buffers, values))
    try:
        yield
    finally:
        for module, attributes, buffers, values in saved:
            state = vars(module)
            for key in [key for key in state if key not in _MODULE_DICTS and key not in attributes]:
                del state[key]
            state.update(attributes)
            module._buffers.clear()
            module._buffers.update(buffers)
            for key, value in values.items():
                buffer = buffers[key]
                if buffer.shape != value.shape or not torch.equal(buffer.detach(), value):
                    with torch.no_grad():
                        buffer.copy_(value)


def _normal_tensor(t: Tensor) -> Tensor:
    """``t`` detached, cloned when it was created in inference mode (autograd cannot save those)."""
    t = t.detach()
    return t.clone() if t.is_inference() else t


# ----------------------------------------------------------------------------- walking the model

_RESHAPES = (nn.Flatten, nn.Unflatten, nn.Identity)
_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
_ACTIVATIONS = (
    nn.ReLU, nn.Hardtanh, nn.LeakyReLU, nn.PReLU, nn.ELU, nn.CELU, nn.SELU, nn.Tanh, nn.Sigmoid,
    nn.Hardsigmoid, nn.Softplus, nn.Softsign, nn.GELU, nn.SiLU, nn.Mish, nn.Hardswish,
)  # fmt: skip
_BATCHNORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_CONSTANT_PADS = (nn.ConstantPad1d, nn.ConstantPad2d, nn.ConstantPad3d, nn.ZeroPad1d, nn.ZeroPad2d, nn.ZeroPad3d)
# normalizations by the input's own statistics: not Lipschitz on the whole space (refused, with why)
_REFUSED_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.modules.instancenorm._InstanceNorm)
_NORM_REFUSAL = (
    "divides by the standard deviation of its own input, which can be arbitrarily small (near-"
    "constant inputs), so it has no global Lipschitz constant and no certified bound; use "
    "BatchNorm (eval), a 1-Lipschitz layer of stabilitylab.layers, or give the enclosing module a "
    "lipschitz_constant it can justify on the inputs it is meant for"
)
# (class, kind, class whose forward the module must use)
_KNOWN: tuple[tuple[type, str, type], ...] = (
    (nn.Linear, "linear", nn.Linear),
    (nn.Conv2d, "conv2d", nn.Conv2d),
    (nn.ConvTranspose2d, "convtranspose2d", nn.ConvTranspose2d),
    (nn.Upsample, "upsample", nn.Upsample),
    *((cls, "pad", nn.modules.padding._ConstantPadNd) for cls in _CONSTANT_PADS),
    *((cls, "batchnorm", nn.modules.batchnorm._BatchNorm) for cls in _BATCHNORMS),
    (nn.MaxPool2d, "maxpool", nn.MaxPool2d),
    (nn.AvgPool2d, "avgpool", nn.AvgPool2d),
    (nn.AdaptiveAvgPool2d, "avgpool", nn.AdaptiveAvgPool2d),
    *((cls, "reshape", cls) for cls in _RESHAPES),
    *((cls, "dropout", cls) for cls in _DROPOUTS),
    *((cls, "activation", cls) for cls in _ACTIVATIONS),
)


def _declared_constant(module: nn.Module) -> float | None:
    """The module's ``lipschitz_constant`` as a float, None when it declares none."""
    if not hasattr(module, "lipschitz_constant"):
        return None
    value = module.lipschitz_constant
    if callable(value) and not isinstance(value, Tensor):
        value = value()
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(
                f"{type(module).__name__}.lipschitz_constant must be a scalar, got a tensor of "
                f"shape {tuple(value.shape)}"
            )
        value = value.detach().double().item()
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(
            f"{type(module).__name__}.lipschitz_constant must be a finite number >= 0, got {value!r}"
        )
    return float(value)


def _global_hooks() -> list[str]:
    """Names of the global forward hooks PyTorch runs around every module call
    (``torch.nn.modules.module.register_module_forward_hook`` / ``..._pre_hook``)."""
    from torch.nn.modules import module as module_lib

    found = []
    for attr in ("_global_forward_hooks", "_global_forward_pre_hooks"):
        if getattr(module_lib, attr, None):
            found.append(attr.lstrip("_").replace("_", " "))
    return found


def _check_plain_calls(model: nn.Module) -> None:
    r"""Refuse (``TypeError`` naming the module) anything that makes a module's call differ from
    its class's ``forward``: forward hooks and pre-hooks (on any submodule, the model itself
    included), global module forward hooks, an instance-level ``forward`` (or call method), or a
    class that overrides ``__call__``. The bounds are read off the class and its parameters, so
    such a module would get the bound of a different function."""
    hooks = _global_hooks()
    if hooks:
        raise TypeError(
            f"model: {' and '.join(hooks)} are registered (torch.nn.modules.module."
            "register_module_forward_hook / _pre_hook); they change every module's output, so no "
            "bound read off the layers holds; remove them first"
        )
    for name, module in model.named_modules():
        label = f"module {name or '(model)'!r} of type {type(module).__name__}"
        if module._forward_hooks or module._forward_pre_hooks:
            raise TypeError(
                f"{label} has forward hooks or pre-hooks, which can change its output: no bound "
                "read off its class holds; remove the hooks (handle.remove()) first"
            )
        overridden = [attr for attr in ("forward", "_call_impl", "_wrapped_call_impl") if attr in vars(module)]
        if overridden or type(module).__call__ is not nn.Module.__call__:
            raise TypeError(
                f"{label} replaces its forward/call on the instance or overrides __call__: the "
                "function it computes is not its class's, so no bound read off the class holds"
            )


def _leaves(module: nn.Module, prefix: str) -> list[tuple[str, nn.Module]]:
    """The layers of a (nested) Sequential in the order its forward applies them."""
    if _declared_constant(module) is None and isinstance(module, nn.Sequential):
        if type(module).forward is not nn.Sequential.forward or type(module).__iter__ is not nn.Sequential.__iter__:
            raise TypeError(
                f"module {prefix or '(model)'!r} of type {type(module).__name__} is a Sequential "
                "that overrides forward (or __iter__): its layers cannot be chained; give it a "
                "lipschitz_constant attribute or use a plain nn.Sequential"
            )
        out = []
        for name, child in module._modules.items():
            if child is not None:
                out += _leaves(child, f"{prefix}.{name}" if prefix else name)
        return out
    return [(prefix, module)]


def _kind(name: str, module: nn.Module) -> str:
    """Classify a layer (raising for what has no certified bound here)."""
    label = f"module {name or '(model)'!r} of type {type(module).__name__}"
    for tensor_name, tensor in (*module.named_parameters(), *module.named_buffers()):
        if tensor.is_floating_point() and not torch.isfinite(tensor.detach()).all():
            raise ValueError(f"{label} has NaN or Inf entries in {tensor_name!r}: no bound holds for it")
    if _declared_constant(module) is not None:
        return "declared"
    for cls, kind, reference in _KNOWN:
        if isinstance(module, cls):
            if type(module).forward is not reference.forward:
                raise TypeError(
                    f"{label} subclasses {cls.__name__} but overrides forward, so no bound is "
                    "known for it; give it a lipschitz_constant attribute"
                )
            break
    else:
        if isinstance(module, _REFUSED_NORMS):
            raise TypeError(f"{label} {_NORM_REFUSAL}")
        raise TypeError(
            f"{label} has no known Lipschitz bound (supported: Linear, Conv2d, ConvTranspose2d, "
            "BatchNorm in eval mode, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, Upsample (nearest, "
            "linear modes), constant padding, Flatten, Unflatten, Identity, Dropout, element-wise "
            "activations, nested nn.Sequential, and modules declaring a lipschitz_constant "
            "attribute or zero-argument method)"
        )
    if kind == "batchnorm":
        if module.training:
            raise ValueError(
                f"{label} is in training mode, where it normalizes by batch statistics (not a "
                "fixed map); call model.eval() first"
            )
        if module.running_var is None:
            raise ValueError(
                f"{label} has track_running_stats=False: it normalizes by batch statistics even "
                "in eval mode, which is not a fixed map"
            )
        eps = module.eps
        if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not math.isfinite(eps):
            raise ValueError(f"{label} has eps={eps!r}, not a finite number")
        if not bool((module.running_var.detach().double() + eps > 0).all()):
            raise ValueError(
                f"{label} has running_var + eps <= 0 in some channel: it divides by the square "
                "root of a nonpositive number (a variance is >= 0)"
            )
    if kind == "dropout" and module.training and module.p > 0:
        raise ValueError(f"{label} is in training mode (random and rescaled); call model.eval() first")
    if kind == "activation":
        try:
            _activation_constant(module)
        except ValueError as error:
            raise ValueError(f"{label}: {error}") from error
    if kind == "maxpool" and module.return_indices:
        raise ValueError(f"{label} has return_indices=True: its output is not a tensor")
    if kind == "upsample" and module.mode not in _UPSAMPLE_MODES:
        raise TypeError(
            f"{label} has mode={module.mode!r}: no certified bound is known for it (supported: "
            f"{', '.join(_UPSAMPLE_MODES)})"
        )
    if kind == "convtranspose2d" and module.padding_mode != "zeros":
        raise TypeError(f"{label} has padding_mode={module.padding_mode!r}: only 'zeros' is supported")
    return kind


@dataclass
class _Layer:
    name: str
    module: nn.Module
    kind: str
    input_shape: tuple  # with the batch dimension 1
    output_shape: tuple


def _layers(model: nn.Module, input_shape: tuple[int, ...]) -> list[_Layer]:
    """Walk the model, classify every layer, then chain the layers on ``zeros(1, *input_shape)``
    (the model's forward, one layer at a time) to record every layer's input shape."""
    _check_plain_calls(model)
    leaves = _leaves(model, "")
    kinds = [_kind(name, module) for name, module in leaves]
    dtype, device = _model_dtype_device(model)
    tried = (1, *input_shape)
    x = torch.zeros(tried, dtype=dtype, device=device)
    layers = []
    with torch.no_grad(), _preserved_state(model):
        for (name, module), kind in zip(leaves, kinds):
            try:
                y = module(x)
            except Exception as error:  # noqa: BLE001 - any failure means the shape does not fit
                raise ValueError(
                    f"input_shape {input_shape} does not fit the model: layer {name or '(model)'!r} "
                    f"({type(module).__name__}) failed on an input of shape {tuple(x.shape)} "
                    f"(the model was given a tensor of shape {tried}): {type(error).__name__}: {error}"
                ) from error
            if not isinstance(y, Tensor):
                raise TypeError(f"layer {name!r} ({type(module).__name__}) returned a {type(y).__name__}, not a tensor")
            layers.append(_Layer(name, module, kind, tuple(x.shape), tuple(y.shape)))
            x = y
    return layers


# ----------------------------------------------------------------------------- activations


@_with_autograd
def _sup_abs_derivative(fn: Callable[[Tensor], Tensor]) -> float:
    r""":math:`\sup_t |\sigma'(t)|` for a smooth activation whose derivative tends to constants in
    :math:`[-1, 1]` at :math:`\pm\infty` (so the sup is at most max(1, the sup on a bounded
    interval)): the maximum of :math:`|\sigma'|` on a grid of step
    1e-4 over [-40, 40] (float64 autograd), refined by golden-section search around the best grid
    point to machine precision, then raised by a relative 1e-12 to cover the refinement."""

    def derivative(t: Tensor) -> Tensor:
        t = t.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(t).sum(), t)
        return grad.abs()

    grid = torch.linspace(-40.0, 40.0, 800_001, dtype=torch.float64)
    values = derivative(grid)
    i = int(values.argmax())
    lo, hi = grid[max(i - 1, 0)].item(), grid[min(i + 1, len(grid) - 1)].item()
    golden = (math.sqrt(5) - 1) / 2
    best = values[i].item()
    for _ in range(80):
        a, b = hi - golden * (hi - lo), lo + golden * (hi - lo)
        fa, fb = derivative(torch.tensor([a, b], dtype=torch.float64)).tolist()
        best = max(best, fa, fb)
        if fa >= fb:
            hi = b
        else:
            lo = a
    return max(best, 1.0) * (1 + 1e-12)  # the limits at +-infinity are at most 1 in absolute value


@functools.lru_cache(maxsize=None)
def _numeric_constant(name: str) -> float:
    fns = {
        "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
        "silu": F.silu,
        "mish": F.mish,
    }
    return _sup_abs_derivative(fns[name])


def _finite_number(module: nn.Module, attribute: str) -> float:
    """``module.<attribute>`` as a finite float, or a ValueError naming the module."""
    value = getattr(module, attribute)
    if isinstance(value, Tensor):
        value = value.detach().double().item() if value.numel() == 1 else math.nan
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{type(module).__name__}.{attribute} must be a finite number, got {value!r}")
    return float(value)


# Largest jump of Softplus at its switch to the identity, relative to the switch point, that is
# accepted as rounding: the spacing of float32 numbers there (see activation_constant).
_SOFTPLUS_JUMP = torch.finfo(torch.float32).eps


def _softplus_constant(module: nn.Softplus) -> tuple[float, str]:
    beta, threshold = _finite_number(module, "beta"), _finite_number(module, "threshold")
    if beta == 0:
        raise ValueError("Softplus.beta must be nonzero (the function is log(1 + exp(beta x)) / beta)")
    switch = threshold / beta
    jump = math.log1p(math.exp(-threshold)) / abs(beta) if threshold > -700 else math.inf
    if threshold <= 0 or jump > _SOFTPLUS_JUMP * abs(switch):
        raise ValueError(
            f"Softplus(beta={beta}, threshold={threshold}) is not continuous: it switches to the "
            f"identity at x = {switch:.6g} with a jump of {jump:.3g} (log(1 + exp(-threshold)) / |beta|), "
            "so it has no Lipschitz constant; use a larger threshold (the default 20 is accepted)"
        )
    return 1.0, "closed form (exact)"


def _celu_constant(module: nn.CELU) -> tuple[float, str]:
    alpha = _finite_number(module, "alpha")
    if alpha <= 0:
        raise ValueError(
            f"CELU.alpha must be > 0, got {alpha}: for x < 0 the slope is exp(x / alpha), "
            "unbounded when alpha < 0 (and undefined at 0)"
        )
    return 1.0, "closed form (exact)"


def _hardtanh_constant(module: nn.Hardtanh) -> tuple[float, str]:
    _finite_number(module, "min_val")
    _finite_number(module, "max_val")
    return 1.0, "closed form (exact)"


def _prelu_constant(module: nn.PReLU) -> tuple[float, str]:
    weight = module.weight.detach()
    if weight.numel() == 0 or not torch.isfinite(weight).all():
        raise ValueError("PReLU.weight must be non-empty and finite (it holds the negative slopes)")
    return max(1.0, weight.double().abs().max().item()), "closed form (exact)"


def _gelu_constant(module: nn.GELU) -> tuple[float, str]:
    if module.approximate == "none":
        return GELU_LIPSCHITZ, "closed form (exact)"
    if module.approximate == "tanh":
        return _numeric_constant("gelu_tanh"), "numerical sup |f'| (float64)"
    raise ValueError(f"GELU.approximate must be 'none' or 'tanh', got {module.approximate!r}")


_CONSTANT = "closed form (exact)"
_NUMERIC = "numerical sup |f'| (float64)"
# (class, constant from the module). Order matters only for subclasses (ReLU6 is a Hardtanh).
_ACTIVATION_CONSTANTS: tuple[tuple[type, Callable[[nn.Module], tuple[float, str]]], ...] = (
    (nn.ReLU, lambda m: (1.0, _CONSTANT)),
    (nn.Hardtanh, _hardtanh_constant),
    (nn.Softsign, lambda m: (1.0, _CONSTANT)),
    (nn.Tanh, lambda m: (1.0, _CONSTANT)),
    (nn.Softplus, _softplus_constant),
    (nn.CELU, _celu_constant),
    (nn.LeakyReLU, lambda m: (max(1.0, abs(_finite_number(m, "negative_slope"))), _CONSTANT)),
    (nn.PReLU, _prelu_constant),
    (nn.ELU, lambda m: (max(1.0, abs(_finite_number(m, "alpha"))), _CONSTANT)),
    (nn.SELU, lambda m: (_SELU_SCALE * max(1.0, _SELU_ALPHA), _CONSTANT)),
    (nn.Sigmoid, lambda m: (0.25, _CONSTANT)),
    (nn.Hardsigmoid, lambda m: (1.0 / 6.0, _CONSTANT)),
    (nn.Hardswish, lambda m: (1.5, _CONSTANT)),
    (nn.GELU, _gelu_constant),
    (nn.SiLU, lambda m: (_numeric_constant("silu"), _NUMERIC)),
    (nn.Mish, lambda m: (_numeric_constant("mish"), _NUMERIC)),
)


def activation_constant(module: nn.Module) -> tuple[float, str]:
    r"""The Lipschitz constant :math:`\sup_t |\sigma'(t)|` of an element-wise activation, computed
    from the module's own parameters.

    An element-wise map :math:`x \mapsto (\sigma(x_i))_i` of a continuous, piecewise
    differentiable :math:`\sigma` has :math:`\ell_2` Lipschitz constant exactly
    :math:`\sup_t |\sigma'(t)|` (perturb one coordinate where the sup is approached).
    Values: 1 for ReLU, ReLU6/Hardtanh (finite bounds), Softsign, tanh, CELU (:math:`\alpha > 0`:
    the slope :math:`e^{t/\alpha}` for :math:`t < 0` is at most 1), Softplus (see below);
    :math:`\max(1, |a|)` for LeakyReLU (slope :math:`a`), PReLU (all its slopes) and ELU
    (:math:`\alpha`); :math:`\lambda \max(1, \alpha) \approx 1.7581` for SELU; 1/4 for the
    sigmoid; 1/6 for Hardsigmoid; 3/2 for Hardswish (:math:`(2t + 3)/6` at :math:`t \to 3`);
    :data:`GELU_LIPSCHITZ` for exact GELU; computed once in float64 (see
    :func:`_sup_abs_derivative`) for the tanh-approximated GELU (~1.12899), SiLU (~1.09984) and
    Mish (~1.08850).

    Softplus switches to the identity where :math:`\beta t > \mathrm{threshold}`, which leaves a
    jump of :math:`\log(1 + e^{-\mathrm{threshold}})/|\beta|` at :math:`t = \mathrm{threshold}/\beta`
    (2e-9 with the defaults): a discontinuous map has no Lipschitz constant. The jump is accepted
    as rounding (constant 1) when it is at most float32's machine epsilon times
    :math:`|\mathrm{threshold}/\beta|` (the spacing of float32 numbers at the switch), with
    :math:`\mathrm{threshold} > 0`; larger jumps (``threshold=1``: 0.31) are refused.

    Returns:
        ``(constant, method)``.

    Raises:
        TypeError: a module that is not one of these activations, or a subclass of one that
            overrides ``forward``.
        ValueError: a parameter that is NaN or infinite (LeakyReLU ``negative_slope``, PReLU
            ``weight``, ELU/CELU ``alpha``, Softplus ``beta``/``threshold``, Hardtanh bounds), a
            CELU with :math:`\alpha \le 0` (slope unbounded), a Softplus whose jump is above the
            tolerance or with :math:`\beta = 0`, a GELU with an unknown ``approximate``; the
            message names the module's class.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    try:
        return _activation_constant(module)
    except ValueError as error:
        raise ValueError(f"module: {error}") from None


def _activation_constant(module: nn.Module) -> tuple[float, str]:
    """activation_constant without the argument's name in the errors (the walk names the layer)."""
    for cls, constant in _ACTIVATION_CONSTANTS:
        if isinstance(module, cls):
            if type(module).forward is not cls.forward:
                raise TypeError(
                    f"{type(module).__name__} subclasses {cls.__name__} but overrides forward: no "
                    "constant is known for it"
                )
            return constant(module)
    raise TypeError(f"module: {type(module).__name__} is not a supported element-wise activation")


# ----------------------------------------------------------------------------- convolutions


def _conv2d_bound(conv: nn.Conv2d, input_shape: tuple, tol: float) -> tuple[float, str]:
    r"""Certified bound of a Conv2d layer on its input size: :func:`stabilitylab.spectral.conv2d_module_norm`
    of the float64 weights (see :func:`layer_bounds`)."""
    with torch.no_grad():
        result = spectral.conv2d_module_norm(conv, tuple(input_shape[-2:]), tol=tol, dtype=torch.float64)
    return result.upper.item(), result.method


# ----------------------------------------------------------------------------- pooling


def _window_count(n: int, out: int, kernel: int, stride: int, pad: int, dilation: int) -> list[int]:
    """How many of the ``out`` pooling windows contain each of the n input positions."""
    counts = [0] * n
    for o in range(out):
        for j in range(kernel):
            position = o * stride - pad + dilation * j
            if 0 <= position < n:
                counts[position] += 1
    return counts


def _maxpool_counts(pool: nn.MaxPool2d, input_shape: tuple, output_shape: tuple) -> tuple[list[int], list[int]]:
    (kh, kw), (sh, sw) = check_pair(pool.kernel_size, "kernel_size"), check_pair(pool.stride, "stride")
    (ph, pw), (dh, dw) = check_pair(pool.padding, "padding", 0), check_pair(pool.dilation, "dilation")
    h, w = input_shape[-2:]
    out_h, out_w = output_shape[-2:]
    return _window_count(h, out_h, kh, sh, ph, dh), _window_count(w, out_w, kw, sw, pw, dw)


def _maxpool_bound(pool: nn.MaxPool2d, input_shape: tuple, output_shape: tuple) -> tuple[float, str]:
    r""":math:`\sqrt{M}` with :math:`M` the largest number of windows holding one input pixel.

    Each output is :math:`y_o = \max_{i \in W_o} x_i` and
    :math:`|\max_{W_o} x - \max_{W_o} x'| \le \max_{i \in W_o} |x_i - x'_i|`, so
    :math:`\|y - y'\|^2 \le \sum_o \sum_{i \in W_o} (x_i - x'_i)^2 = \sum_i m_i (x_i - x'_i)^2
    \le M \|x - x'\|^2`, :math:`m_i` the number of windows containing pixel :math:`i`. The bound is
    attained: raising one pixel of maximal :math:`m_i` from 0 to 1 on a zero image changes those
    :math:`M` outputs by 1. Windows are products of a row and a column range, so
    :math:`M = \max m^{(h)} \cdot \max m^{(w)}`, counted on the layer's input size and output
    (padding, dilation, ceil mode included); without dilation
    :math:`m^{(\cdot)} \le \lceil k / s \rceil`, so :math:`M \le \lceil k_h/s_h \rceil \lceil k_w/s_w \rceil`.
    """
    counts_h, counts_w = _maxpool_counts(pool, input_shape, output_shape)
    m = max(counts_h) * max(counts_w)
    return math.sqrt(m), f"sqrt({m} windows on one pixel) (exact)"


def _avgpool_conv(pool: nn.Module, h: int, w: int, out_h: int, out_w: int):
    """The average pooling as a zero-padded depthwise convolution when it is one:
    (kernel (1, 1, kh, kw), paddings, stride) or None."""
    if isinstance(pool, nn.AdaptiveAvgPool2d):
        if h % out_h or w % out_w:
            return None
        kh, kw = h // out_h, w // out_w
        kernel = torch.full((1, 1, kh, kw), 1.0 / (kh * kw), dtype=torch.float64)
        return kernel, ((0, 0), (0, 0)), (kh, kw)
    (kh, kw) = check_pair(pool.kernel_size, "kernel_size")
    (sh, sw) = check_pair(pool.stride if pool.stride is not None else pool.kernel_size, "stride")
    (ph, pw) = check_pair(pool.padding, "padding", 0)
    # a ceil-mode window reaching past the right padding: pad the right side further with zeros
    right_h = max(ph, (out_h - 1) * sh + kh - h - ph)
    right_w = max(pw, (out_w - 1) * sw + kw - w - pw)
    if pool.divisor_override:
        divisor = float(pool.divisor_override)
    elif right_h == ph and right_w == pw and (pool.count_include_pad or (ph == 0 and pw == 0)):
        divisor = float(kh * kw)
    else:  # the divisor changes at the borders: not a convolution
        return None
    kernel = torch.full((1, 1, kh, kw), 1.0 / divisor, dtype=torch.float64)
    return kernel, ((ph, right_h), (pw, right_w)), (sh, sw)


def _avgpool_bound(pool: nn.Module, input_shape: tuple, output_shape: tuple, tol: float) -> tuple[float, str]:
    r"""Average pooling is linear, the same map on every channel. Two certified bounds, the
    smaller is returned: (1) when the divisor is the same for every window, it is the depthwise
    convolution with the kernel :math:`\mathbf 1/d`, whose norm is bounded by
    :func:`stabilitylab.spectral.conv_spectral_norm` (Gram, within ``tol`` of the exact norm);
    (2) for any options (``count_include_pad=False``, ceil mode, adaptive windows of unequal
    sizes), the Schur test :math:`\|A\|_2 \le \sqrt{\|A\|_1 \|A\|_\infty}` on the nonnegative
    matrix :math:`A`, whose row sums are the pooling of an all-ones image and whose column sums
    are :math:`A^\top \mathbf 1` (one backward pass); both are read off the module itself."""
    h, w = input_shape[-2:]
    out_h, out_w = output_shape[-2:]
    ones = torch.ones(1, 1, h, w, dtype=torch.float64, requires_grad=True)
    pooled = pool(ones)
    (columns,) = torch.autograd.grad(pooled.sum(), ones)
    bound = math.sqrt(pooled.detach().abs().max().item() * columns.abs().max().item())
    method = "Schur test (certified)"
    conv = _avgpool_conv(pool, h, w, out_h, out_w)
    if conv is not None:
        kernel, pads, stride = conv
        with torch.no_grad():
            value, conv_method = spectral.conv2d_norm(kernel, (h, w), padding=pads, stride=stride, tol=tol)
        if value.item() < bound:
            bound, method = value.item(), conv_method
    return bound, method


# ----------------------------------------------------------------------------- transposed convolutions, up-sampling


def _conv_transpose2d_bound(weight: Tensor, input_shape: tuple, output_shape: tuple, stride, padding, dilation,
                            groups: int, tol: float) -> tuple[float, str]:
    r"""Certified bound of a transposed convolution (``nn.ConvTranspose2d`` / ``F.conv_transpose2d``,
    zero padding) from ``h x w`` to ``H x W`` images.

    ``conv_transpose2d(y, W, stride=s, padding=p, output_padding=o, groups=g, dilation=d)`` is
    the adjoint of :math:`A: x \mapsto` ``conv2d(x, W, stride=s, padding=p, dilation=d,
    groups=g)`` on ``H x W`` images (the weight ``(c_in, c_out / g, kh, kw)`` of the transposed
    layer is the weight of that convolution): with
    :math:`H = (h - 1)s - 2p + d(k - 1) + o + 1` and :math:`0 \le o < \max(s, d)`,
    :math:`\lfloor (H + 2p - d(k-1) - 1)/s \rfloor + 1 = h`, so :math:`A` maps ``H x W`` images to
    exactly ``h x w`` outputs, and :math:`\|A^\top\|_2 = \|A\|_2`, bounded by
    :func:`stabilitylab.spectral.conv2d_norm` (within ``tol`` of the norm for operators small
    enough to unroll, the circular-embedding bound otherwise). The output padding only appends
    rows and columns that :math:`A` reads (with zero weight where they fall outside the kernel's
    reach): it is part of the same adjoint."""
    h, w = input_shape[-2:]
    H, W = output_shape[-2:]
    (sh, sw), (ph, pw), (dh, dw) = (check_pair(v, name, m) for v, name, m in ((stride, "stride", 1), (padding, "padding", 0), (dilation, "dilation", 1)))
    kh, kw = weight.shape[-2:]
    if (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1 != h or (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1 != w:
        raise ValueError(
            f"a transposed convolution from {(h, w)} to {(H, W)} images is not the adjoint of a convolution "
            f"(stride {(sh, sw)}, padding {(ph, pw)}, dilation {(dh, dw)}, kernel {(kh, kw)})"
        )
    with torch.no_grad():
        result = spectral.conv2d_norm(
            weight, (H, W), padding=(ph, pw), stride=(sh, sw), dilation=(dh, dw), groups=groups, tol=tol
        )
    return result.upper.item(), f"adjoint convolution: {result.method}"


_UPSAMPLE_MODES = ("nearest", "nearest-exact", "linear", "bilinear", "trilinear", "area")


def _upsample_bound(apply: Callable[[Tensor], Tensor], mode: str, spatial: tuple[int, ...]) -> tuple[float, str]:
    r"""Certified bound of an interpolation (``nn.Upsample`` / ``F.interpolate``) on images of
    spatial size ``spatial``, the same linear map on every channel, read off ``apply`` itself.

    * ``nearest``, ``nearest-exact``: every output copies one input pixel, so the map is a row
      selection :math:`P` and :math:`\|P\|_2 = \sqrt{M}`, :math:`M` the largest number of copies
      of one pixel (:math:`P^\top P` is diagonal with the copy counts), counted by interpolating
      an image of pixel indices (exact: the bound is the norm).
    * ``linear``, ``bilinear``, ``trilinear``, ``area``: the weights are nonnegative, so the
      Schur test :math:`\|A\|_2 \le \sqrt{\|A\|_\infty \|A\|_1}` applies, with the row sums
      :math:`A\mathbf 1` (the interpolation of an all-ones image: 1 for the linear modes) and the
      column sums :math:`A^\top \mathbf 1` (one backward pass). For an up-sampling by an integer
      factor :math:`r` per axis the bound is :math:`\sqrt{\prod r}`, which constant images attain
      (so it is exact there).

    Other modes (``bicubic``, with negative weights) are refused."""
    n = math.prod(spatial)
    if mode in ("nearest", "nearest-exact"):
        index = torch.arange(n, dtype=torch.float64).reshape(1, 1, *spatial)
        with torch.no_grad():
            copies = apply(index).round().long().flatten()
        m = int(torch.bincount(copies, minlength=n).max())
        return math.sqrt(m), f"sqrt({m} copies of one pixel) (exact)"
    if mode not in _UPSAMPLE_MODES:
        raise TypeError(f"interpolation mode {mode!r} has no certified bound here (supported: {', '.join(_UPSAMPLE_MODES)})")
    with torch.inference_mode(False), torch.enable_grad():
        ones = torch.ones(1, 1, *spatial, dtype=torch.float64, requires_grad=True)
        out = apply(ones)
        (columns,) = torch.autograd.grad(out.sum(), ones)
    rows = out.detach().abs().max().item()
    bound = math.sqrt(rows * columns.abs().max().item()) * (1 + 1e-12)
    method = "Schur test (certified)"
    if mode in ("linear", "bilinear"):
        separable = _separable_norm(apply, spatial)
        if separable is not None and separable < bound:
            bound, method = separable, "product of the per-axis interpolation norms (separable, certified)"
    return bound, method


def _separable_norm(apply: Callable[[Tensor], Tensor], spatial: tuple[int, ...]) -> float | None:
    r"""Norm of a (bi)linear interpolation as the Kronecker product :math:`A_h \otimes A_w` of its
    per-axis matrices, :math:`\|A_h \otimes A_w\|_2 = \|A_h\|_2 \|A_w\|_2`. Column :math:`i`
    of :math:`A_h` is read off the interpolation of :math:`e_i \otimes \mathbf 1` (the weights of
    every output along the other axis sum to 1); the factorization is then checked on a random
    image (relative error below 1e-10), otherwise None (the Schur bound is used)."""
    with torch.no_grad():
        factors = []
        for axis, n in enumerate(spatial):
            shape = [1] * len(spatial)
            shape[axis] = n
            probe = torch.eye(n, dtype=torch.float64).reshape(n, 1, *shape)
            out = apply(probe)  # (n, 1, ...), constant along the other axes
            index = [slice(None), 0] + [slice(None) if a == axis else 0 for a in range(len(spatial))]
            factors.append(out[tuple(index)].T.contiguous())  # (n_out, n)
        x = torch.randn(1, 1, *spatial, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        y = x[0, 0]
        for axis, A in enumerate(factors):
            y = torch.movedim(torch.tensordot(A, y, dims=([1], [axis])), 0, axis)
        reference = apply(x)[0, 0]
        if y.shape != reference.shape or (y - reference).abs().max() > 1e-10 * reference.abs().max().clamp_min(1e-300):
            return None
    return math.prod(_certified_norm(A) for A in factors) * (1 + 1e-12)


# ----------------------------------------------------------------------------- per-layer bounds


def _layer_bound(layer: _Layer, tol: float) -> tuple[float, str]:
    module, kind = layer.module, layer.kind
    if kind == "declared":
        return _declared_constant(module), "declared lipschitz_constant"
    if kind == "linear":
        return spectral.gram_iteration(_f64(module.weight), tol=tol).item(), "gram (certified)"
    if kind == "conv2d":
        return _conv2d_bound(module, layer.input_shape, tol)
    if kind == "convtranspose2d":
        return _conv_transpose2d_bound(
            _f64(module.weight), layer.input_shape, layer.output_shape, module.stride, module.padding,
            module.dilation, module.groups, tol,
        )  # fmt: skip
    if kind == "upsample":
        return _upsample_bound(module, module.mode, tuple(layer.input_shape[2:]))
    if kind == "pad":
        return 1.0, "1-Lipschitz (zero-padding embedding plus a constant)"
    if kind == "batchnorm":
        return _batchnorm_scales(module).abs().max().item(), "closed form (exact)"
    if kind == "maxpool":
        return _maxpool_bound(module, layer.input_shape, layer.output_shape)
    if kind == "avgpool":
        return _avgpool_bound(module, layer.input_shape, layer.output_shape, tol)
    if kind in ("reshape", "dropout"):
        return 1.0, "1-Lipschitz (isometry)" if kind == "reshape" else "1-Lipschitz (identity in eval)"
    return _activation_constant(module)


def _batchnorm_scales(bn: nn.Module) -> Tensor:
    r"""Per-channel slopes :math:`\gamma_c / \sqrt{v_c + \varepsilon}` of a BatchNorm in eval."""
    scale = 1.0 / torch.sqrt(_f64(bn.running_var) + bn.eps)
    return scale * _f64(bn.weight) if bn.weight is not None else scale


@_with_autograd
def _rows(model, input_shape, tol) -> tuple[list[_Layer], list[LayerBound]]:
    model = _check_model(model)
    input_shape = _check_input_shape(input_shape)
    tol = check_tol(tol)
    layers = _layers(model, input_shape)
    rows = []
    for layer in layers:
        bound, method = _layer_bound(layer, tol)
        rows.append(LayerBound(layer.name, type(layer.module).__name__, layer.input_shape[1:], float(bound), method))
    return layers, rows


def layer_bounds(model: nn.Module, input_shape: Sequence[int] | int, *, tol: float = 1e-3) -> list[LayerBound]:
    r"""Certified Lipschitz upper bounds (L2) of every layer of a sequential network.

    The model is walked recursively (``nn.Sequential``, nested or not; any other module is one
    layer), every layer is classified (see the module docstring; unknown ones raise), then the
    layers are chained on ``torch.zeros(1, *input_shape)`` (the model's dtype and device) to
    record the input size every layer sees. Per layer:

    * ``Linear``: :math:`\|W\|_2 \le` the Gram-iteration bound, iterated until its certified
      relative gap is at most ``tol`` [delattre2023efficient].
    * ``Conv2d`` (bias ignored): the norm of the linear map on the recorded image size. Dilation
      inserts zeros between the taps; ``groups`` make the operator block-diagonal, so its norm
      is the largest over groups. Zero padding (int, pair, ``"same"`` with its asymmetric split,
      ``"valid"``) is rewritten as a symmetric padding of a zero-extended kernel (same map, see
      :func:`stabilitylab.spectral.conv2d_norm`): when its Gram matrix has at most 2048 rows, by
      the Cholesky certificate of :func:`stabilitylab.spectral.conv_spectral_norm` (within
      about ``tol / 4`` of the norm itself), otherwise by the circular embedding of
      [delattre2024spectral] (which can be 15% above the norm on 4x4 images). Circular padding: output :math:`i` of the layer is output
      :math:`(i s - p) \bmod n` of the circular convolution (a kernel longer than the image is
      folded), so the layer is the strided circular convolution up to a shift when the stride
      divides the size and the outputs cover distinct positions of one coset (then the bound is
      within ``tol`` of the norm), and otherwise a row selection of the stride-1 circular
      convolution, bounded by it times :math:`\sqrt{\text{largest repetition}}`. Reflect and
      replicate padding: the valid convolution of the padded image times
      :math:`\sqrt{\text{largest number of copies of a pixel}}` (the norm of the padding map).
      For these three modes too, when the operator is small, Gram iteration on its unrolled
      matrix (the valid convolution's matrix times the padding's selection matrix) is run and
      the smaller certified bound kept, so small layers get their norm within ``tol``.
    * ``BatchNorm`` (eval): :math:`\max_c |\gamma_c| / \sqrt{v_c + \varepsilon}` (exact).
    * ``MaxPool2d``: :math:`\sqrt M` (exact), see :func:`_maxpool_bound`; ``AvgPool2d`` and
      ``AdaptiveAvgPool2d``: see :func:`_avgpool_bound`.
    * activations: :func:`activation_constant`; ``Flatten``/``Unflatten``/``Identity``/dropout
      (eval): 1; modules with ``lipschitz_constant``: the declared value.

    Args:
        model: an ``nn.Module`` (normally an ``nn.Sequential``).
        input_shape: the shape of one input, without the batch dimension, e.g. ``(1, 8, 8)``.
        tol: relative gap at which Gram iterations stop (certified: each bound is at most
            ``1 + tol`` times the value it bounds, for Linear and for circular or small
            zero-padded convolutions).

    Returns:
        One :class:`LayerBound` per layer, in the order of the forward pass; the product of the
        bounds is :func:`upper_bound`.

    Raises:
        TypeError: ``model`` not an ``nn.Module``; a layer with no known bound (named, with its
            type); a module with forward hooks or pre-hooks, an instance-level ``forward``, or
            global module forward hooks registered (named).
        ValueError: ``input_shape`` malformed or not fitting the model (the message gives the
            shape tried and the failing layer; exported size-dependent layers reject other
            sizes); a BatchNorm or dropout layer in training mode (call ``model.eval()``); a
            BatchNorm without running statistics or with ``running_var + eps <= 0``; NaN or Inf
            in a layer's parameters or buffers; an activation whose parameters give no
            constant (see :func:`activation_constant`); ``tol`` outside (0, 1); an invalid
            declared ``lipschitz_constant``.

    References:
        [virmaux2018lipschitz], [delattre2023efficient], [delattre2024spectral],
        [sedghi2019singular].
    """
    return _rows(model, input_shape, tol)[1]


def upper_bound(
    model: nn.Module,
    input_shape: Sequence[int] | int,
    *,
    tol: float = 1e-3,
    graph: bool | None = None,
    fold_batchnorm: bool = True,
) -> Tensor:
    r"""A certified upper bound of the Lipschitz constant (L2) of a network.

    **Sequential networks** (``nn.Sequential``, nested or not, or a single layer):

    .. math:: \operatorname{Lip}(f_L \circ \dots \circ f_1) \le \prod_{l=1}^L \operatorname{Lip}(f_l),

    with each factor from :func:`layer_bounds` [virmaux2018lipschitz].

    **Any other model** (residual, concatenating, up-sampling networks, ...) is traced with
    ``torch.fx`` (:func:`torch.fx.symbolic_trace`, with the layers bounded here and modules that
    declare a ``lipschitz_constant`` as leaves) and certified constants are propagated through
    its graph in float64, from :math:`L(\text{input}) = 1`:

    * a layer or function :math:`g` applied to a node: :math:`L \le \operatorname{Lip}(g)\, L(\text{arg})`
      (the layers of :func:`layer_bounds`, plus ``ConvTranspose2d``, ``nn.Upsample`` and
      ``F.*`` calls read as their module twins: ``F.relu``, ``F.conv2d``, ``F.linear``,
      ``F.max_pool2d``, ``F.interpolate``, ``F.pad``, ...);
    * a sum :math:`a + b` (also ``x += g(x)``, ``torch.add(a, b, alpha=)``, a subtraction):
      :math:`L \le L(a) + |\alpha| L(b)`, so :math:`1 + \operatorname{Lip}(g)` for an identity
      skip (a term broadcast to more entries counts :math:`\sqrt{\text{copies}}` times);
    * ``torch.cat`` / ``torch.stack`` along a non-batch dimension:
      :math:`L \le \sqrt{\sum_i L(a_i)^2}` (the pieces occupy disjoint coordinates);
    * multiplication or division by a constant :math:`c`: :math:`\max |c|` (over broadcast
      copies); ``reshape``/``view``/``flatten``/``permute``/``transpose``/slicing/``split``: 1;
      ``mean`` over dimensions holding :math:`m` entries: :math:`1/\sqrt m` (exact); ``sum``:
      :math:`\sqrt m`;
    * a BatchNorm in eval mode that directly follows a ``Conv2d``/``Linear`` read by nothing
      else is folded into it (``fold_batchnorm``): :math:`\|\operatorname{diag}(s) W\|` instead of
      :math:`\max_c |s_c| \cdot \|W\|`, keeping the smaller of the two certified bounds (never
      looser).

    Anything else raises ``TypeError`` naming the node and how to declare its constant; so do a
    model ``torch.fx`` cannot trace (naming the innermost module whose tracing failed), an
    operation that mixes the samples of a batch (the walk runs on two samples to see it), a
    product of two input-dependent tensors, and ``LayerNorm``/``GroupNorm``/instance norms (not
    globally Lipschitz). The sum rule is loose where two paths share a prefix (it adds constants
    that a joint analysis could partly cancel); :func:`report` shows the per-block gap.

    For all inputs :math:`x, x'` of shape ``input_shape``, :math:`\|f(x) - f(x')\|_2 \le` the
    result times :math:`\|x - x'\|_2`. Not differentiable (use :mod:`stabilitylab.spectral` for
    training-time penalties).

    Args:
        model, input_shape, tol: see :func:`layer_bounds`.
        graph: ``None`` (default): the layer product for Sequentials, single layers and declared
            modules (their result is unchanged), the graph walk for every other model; ``True``:
            always trace (e.g. a Sequential of residual blocks, or to fold its BatchNorms);
            ``False``: always the layer product.
        fold_batchnorm: fold eval BatchNorms into the preceding convolution or linear layer in
            the graph walk.

    Returns:
        A 0-dim float64 tensor on the CPU (1 for a model with no layers).

    Raises:
        TypeError, ValueError: see :func:`layer_bounds` and above; ``graph`` not None or a
            bool, ``fold_batchnorm`` not a bool.

    References:
        [virmaux2018lipschitz], [delattre2023efficient].
    """
    _check_graph_options(graph, fold_batchnorm)
    if _use_graph(_check_model(model), graph):
        shape, tol = _check_input_shape(input_shape), check_tol(tol)
        return torch.tensor(_graph_walk(model, shape, tol, fold_batchnorm).upper, dtype=torch.float64)
    rows = layer_bounds(model, input_shape, tol=tol)
    return torch.tensor(math.prod(row.upper for row in rows), dtype=torch.float64)


def pairwise_row_distances(weight: Tensor) -> Tensor:
    r"""The distances between the rows of a matrix: :math:`D_{ij} = \|w_i - w_j\|_2`.

    For a last linear layer :math:`z = W g + b` with rows :math:`w_i`, the logit difference
    :math:`z_i - z_j = (w_i - w_j)^\top g + (b_i - b_j)` is :math:`D_{ij}`-Lipschitz in
    :math:`g` (exactly: it is linear), so :math:`D_{ij} L_g` bounds the Lipschitz constant of
    :math:`z_i - z_j` for a :math:`L_g`-Lipschitz :math:`g` [tsuzuku2018lipschitz]. Computed
    from the differences themselves (not from :math:`\|w_i\|^2 + \|w_j\|^2 - 2 w_i^\top w_j`,
    which cancels catastrophically for close rows), in chunks of about 4M entries, in the
    weight's dtype and on its device; differentiable (the gradient at :math:`D_{ij} = 0` is 0).
    Pass a float64 copy for a certificate of the weights read exactly.

    Args:
        weight: ``(C, d)``, real, finite.

    Returns:
        ``(C, C)``, symmetric, exactly 0 on the diagonal, in ``weight``'s dtype.

    Raises:
        TypeError: ``weight`` not a floating tensor.
        ValueError: ``weight`` not 2-D, empty, or with NaN/Inf entries.

    References:
        [tsuzuku2018lipschitz], [singla2022improved].
    """
    check_tensor(weight, "weight", min_dims=2, max_dims=2)
    C, d = weight.shape
    chunk = max(1, 2**22 // max(1, C * d))
    rows = [
        torch.linalg.vector_norm(weight[i : i + chunk, None, :] - weight[None, :, :], dim=-1)
        for i in range(0, C, chunk)
    ]
    distances = torch.cat(rows)
    eye = torch.eye(C, dtype=torch.bool, device=weight.device)
    return distances.masked_fill(eye, 0.0)


class LinearHead(NamedTuple):
    """The last layer of a classifier, as :func:`linear_head` finds it."""

    #: the layer's name in ``model.named_modules()``.
    name: str
    #: the layer.
    module: nn.Module
    #: ``(C, d)`` the matrix it applies (detached; for the package's constrained layers the normalized /
    #: orthogonal weight, not the trainable parameter).
    weight: Tensor
    #: an ``nn.Sequential`` of the layers before it (the features :math:`g`).
    body: nn.Sequential


def _head_weight(module: nn.Module) -> Tensor | None:
    """The matrix a dense head applies, or None: a plain ``nn.Linear``'s weight, or the weight of
    the plain ``nn.Linear`` its ``export_module()`` returns (the package's 1-Lipschitz dense
    layers, Cayley, BRO and LLN included, export the same function as a plain Linear)."""
    if type(module).forward is nn.Linear.forward and isinstance(module, nn.Linear):
        return module.weight.detach()
    export = getattr(module, "export_module", None)
    if not callable(export):
        return None
    try:
        with torch.no_grad():
            exported = export()
    except TypeError:  # an export that needs arguments (an image size): not a dense head
        return None
    if type(exported) is not nn.Linear:
        return None
    return exported.weight.detach()


def linear_head(model: nn.Module) -> LinearHead:
    r"""The last dense layer of a sequential classifier and the layers below it.

    The model is walked as in :func:`layer_bounds` (nested ``nn.Sequential`` flattened); its
    last layer must apply a fixed matrix to ``(N, d)`` features: a plain ``nn.Linear``, or a
    layer whose ``export_module()`` returns one, i.e. every head of
    :data:`stabilitylab.models.LIPSCHITZ_HEADS` (``SpectralLinear``, ``BjorckLinear``,
    ``AOLLinear``, ``CayleyLinear``, ``BROLinear``, ``LLNLinear``). Its matrix's rows give the
    pairwise constants of the logit differences (:func:`pairwise_row_distances`).

    Args:
        model: an ``nn.Sequential`` classifier (or a single dense layer: then ``body`` is empty).

    Returns:
        A :class:`LinearHead` ``(name, module, weight, body)``.

    Raises:
        TypeError: ``model`` not an ``nn.Module``; a Sequential subclass that overrides
            ``forward``.
        ValueError: an empty model, or a last layer that is not a dense head as above.
    """
    model = _check_model(model)
    leaves = _leaves(model, "")
    if not leaves:
        raise ValueError("model has no layers: its last module must be a linear layer")
    name, last = leaves[-1]
    weight = _head_weight(last)
    if weight is None or weight.ndim != 2:
        raise ValueError(
            f"the last layer of model must be a linear layer: a plain nn.Linear or a layer whose "
            f"export_module() returns one (every head of models.LIPSCHITZ_HEADS), got "
            f"{name or '(model)'!r} of type {type(last).__name__}"
        )
    return LinearHead(name, last, weight, nn.Sequential(*(module for _, module in leaves[:-1])))


def pairwise_logit_bound(
    model: nn.Module,
    input_shape: Sequence[int] | int,
    *,
    tol: float = 1e-3,
    graph: bool | None = None,
    fold_batchnorm: bool = True,
) -> Tensor:
    r"""Lipschitz bounds of every logit difference :math:`f_i - f_j` of a classifier.

    For a network :math:`f(x) = W g(x) + b` ending in a linear layer with rows :math:`w_i`,
    :math:`f_i - f_j = (w_i - w_j)^\top g + (b_i - b_j)`, so

    .. math:: \operatorname{Lip}(f_i - f_j) \le L_{ij}
        = \min\bigl(\|w_i - w_j\|_2,\ \sqrt2\, \hat L_W\bigr)\, L_g,

    with :math:`L_g` the product bound of the layers before the last one and :math:`\hat L_W`
    the last layer's own bound from :func:`layer_bounds` (its Gram bound, or the constant it
    declares, e.g. 1 for an orthogonal head). Since
    :math:`\|w_i - w_j\| = \|(e_i - e_j)^\top W\| \le \sqrt2 \|W\|_2`, the minimum is the row
    distance in exact arithmetic; taking it makes :math:`L_{ij} \le \sqrt2\,`
    :func:`upper_bound` hold in floating point too, so a pairwise certificate is never below the
    global one. Margin certificates use it [tsuzuku2018lipschitz]: if class :math:`y` wins at
    :math:`x` by margins :math:`m_j = f_y(x) - f_j(x) > 0`, no perturbation with
    :math:`\|\delta\|_2 < \min_{j \ne y} m_j / L_{yj}` changes the prediction, against
    :math:`\min_j m_j / (\sqrt2 L)` from the global constant. It helps when the row differences
    do not line up with the top singular direction of :math:`W` (many classes, last-layer
    normalization [singla2022improved]), and never hurts.

    Args:
        model: an ``nn.Sequential`` whose last layer (after flattening nested Sequentials) is a
            dense head applied to ``(N, features)``: a plain ``nn.Linear`` or any head of
            :data:`stabilitylab.models.LIPSCHITZ_HEADS` (see :func:`linear_head`).
        input_shape, tol: see :func:`layer_bounds`.
        graph, fold_batchnorm: see :func:`upper_bound`. In the graph walk the model's output must
            be a dense head (a plain ``nn.Linear``, a head of ``LIPSCHITZ_HEADS``, or ``F.linear``)
            applied to ``(N, features)``, and :math:`L_g` is the walk's bound at the head's input.

    Returns:
        ``(C, C)`` float64 tensor on the CPU, symmetric, zero on the diagonal, ``C`` the number of
        logits.

    Raises:
        ValueError: the last layer is not a dense head on ``(N, features)`` inputs; the errors
            of :func:`layer_bounds`.
        TypeError: see :func:`layer_bounds`.

    References:
        [tsuzuku2018lipschitz], [virmaux2018lipschitz].
    """
    _check_graph_options(graph, fold_batchnorm)
    if _use_graph(_check_model(model), graph):
        return _graph_pairwise(model, _check_input_shape(input_shape), check_tol(tol), fold_batchnorm)
    head = linear_head(model)
    layers, rows = _rows(model, input_shape, tol)
    if len(layers[-1].input_shape) != 2:
        raise ValueError(
            f"the last linear layer must act on (N, features) inputs, got an input of shape {layers[-1].input_shape}"
        )
    features = math.prod(row.upper for row in rows[:-1])
    distances = pairwise_row_distances(_f64(head.weight))
    distances = torch.clamp(distances, max=math.sqrt(2.0) * rows[-1].upper)
    return (distances * features).cpu()


# ----------------------------------------------------------------------------- graph walk (torch.fx)


def _check_graph_options(graph, fold_batchnorm) -> None:
    if graph is not None and not isinstance(graph, bool):
        raise TypeError(f"graph must be None, True or False, got {graph!r}")
    if not isinstance(fold_batchnorm, bool):
        raise TypeError(f"fold_batchnorm must be a bool, got {fold_batchnorm!r}")


def _is_chain(model: nn.Module) -> bool:
    """Whether the model takes the layer-by-layer path: a Sequential (plain or not: a subclass
    overriding forward is refused there, as before), a module declaring its constant, or one
    module of torch.nn (a known layer, or an unknown one refused by name)."""
    return (
        isinstance(model, nn.Sequential)
        or hasattr(model, "lipschitz_constant")
        or type(model).__module__.startswith("torch.nn")
    )


def _use_graph(model: nn.Module, graph: bool | None) -> bool:
    return (not _is_chain(model)) if graph is None else graph


class _Tracer(torch.fx.Tracer):
    """Symbolic tracer whose leaves are the layers bounded here (known layers, declared modules,
    every other torch.nn module, which is then refused by name); Sequentials and user modules are
    traced through. Records the innermost module whose tracing failed."""

    def __init__(self) -> None:
        super().__init__()
        self.failed: tuple[str, str] | None = None

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if hasattr(m, "lipschitz_constant"):
            return True
        if isinstance(m, nn.Sequential):
            return False
        if any(isinstance(m, cls) for cls, _, _ in _KNOWN) or isinstance(m, _REFUSED_NORMS):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m, forward, args, kwargs):
        try:
            return super().call_module(m, forward, args, kwargs)
        except Exception:
            if self.failed is None:
                try:
                    path = self.path_of_module(m)
                except Exception:  # noqa: BLE001 - a module outside the hierarchy
                    path = "?"
                self.failed = (path, type(m).__name__)
            raise


def _trace(model: nn.Module) -> torch.fx.GraphModule:
    tracer = _Tracer()
    try:
        graph = tracer.trace(model)
    except Exception as error:  # noqa: BLE001 - any failure: name the module
        path, kind = tracer.failed or ("", type(model).__name__)
        raise TypeError(
            f"model cannot be traced by torch.fx: module {path or '(model)'!r} of type {kind} failed "
            f"({type(error).__name__}: {error}). Make its forward traceable (no Python control flow "
            "on tensor values), or declare its constant: give the module a lipschitz_constant "
            "attribute or zero-argument method returning a certified L2 bound (the walk then takes it "
            "as one node)"
        ) from error
    return torch.fx.GraphModule(model, graph, class_name=type(model).__name__)


def _target_name(node: torch.fx.Node) -> str:
    if node.op == "call_module":
        return str(node.target)
    if node.op == "call_method":
        return f"Tensor.{node.target}"
    target = node.target
    module = getattr(target, "__module__", None) or ""
    name = getattr(target, "__name__", repr(target))
    if module.startswith("torch.nn.functional") or target in _FUNCTIONAL_ALIASES:
        return f"F.{name}"
    if module.startswith("_operator") or module == "operator":
        return f"operator.{name}"
    return f"torch.{name}" if module.startswith("torch") or module == "" else f"{module}.{name}"


def _node_label(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str:
    if node.op == "call_module":
        return f"node {node.name!r} (module {node.target!r} of type {type(gm.get_submodule(node.target)).__name__})"
    stack = node.meta.get("nn_module_stack") or {}
    where = ""
    if stack:
        path, (_, cls) = list(stack.items())[-1]
        where = f" in module {path!r} of type {getattr(cls, '__name__', cls)}"
    return f"node {node.name!r} ({_target_name(node)}){where}"


def _arg(args, kwargs, index: int, name: str, default=None):
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def _dims(dim, ndim: int) -> tuple[int, ...]:
    dims = (dim,) if isinstance(dim, int) else tuple(dim)
    return tuple(d % ndim for d in dims)


def _rep(out: Tensor, operand: Tensor) -> float:
    """sqrt of how many times broadcasting copies each entry of ``operand`` into ``out``."""
    return math.sqrt(out.numel() / operand.numel())


def _constant_scale(out: Tensor, x: Tensor, c) -> float:
    r"""Norm of :math:`x \mapsto c \odot x` (broadcast to ``out``'s shape): each entry
    :math:`x_i` lands on the outputs it is broadcast to, with weights :math:`c_j`, so the norm is
    :math:`\max_i \sqrt{\sum_{j \leftarrow i} c_j^2}` (the map is a sum of orthogonal rank-one
    pieces, one per input entry)."""
    if not isinstance(c, Tensor):
        return abs(float(c)) * _rep(out, x)
    c2 = c.detach().to(torch.float64).abs().square().expand(out.shape)
    shape = (1,) * (out.ndim - x.ndim) + tuple(x.shape)
    dims = [d for d, (a, b) in enumerate(zip(shape, out.shape)) if a == 1 and b != 1]
    if dims:
        c2 = c2.sum(dim=dims)
    return math.sqrt(c2.max().item())


class _Step(NamedTuple):
    rule: str  # "input" | "scale" | "sum" | "cat"
    sources: tuple  # ((coefficient, node), ...) for "scale"/"sum"; (node, ...) for "cat"


@dataclass
class _NodeBound:
    """One node of the traced graph of a model (see :func:`upper_bound`; rows of :class:`NodeReport`).

    Attributes:
        name: the node's name in the ``torch.fx`` graph.
        target: the module's path (``"layer1.0.conv1"``) or the function (``"operator.add"``).
        kind: what the walk took it for (``"conv2d"``, ``"sum"``, ``"concat"``, ``"mean"``, ...).
        input_shape: the shape of its (first) input-dependent argument, without the batch dimension.
        factor: a certified Lipschitz bound of the node's own map (for a sum: the sum of the
            coefficients of its operands; for a concatenation: the square root of their number).
        upper: a certified bound of the Lipschitz constant from the model's input to this node.
        method: how ``factor`` was obtained.
        inputs: the input-dependent nodes it reads.
    """

    name: str
    target: str
    kind: str
    input_shape: tuple
    factor: float
    upper: float
    method: str
    inputs: tuple


_IDENTITY_METHODS = {"contiguous", "clone", "detach"}
_RESHAPE_METHODS = {"reshape", "view", "flatten", "squeeze", "unsqueeze", "permute", "transpose", "view_as", "reshape_as"}
_SUM_FUNCTIONS = {operator.add, operator.iadd, operator.sub, operator.isub, torch.add, torch.sub, torch.subtract}
_SUM_METHODS = {"add", "add_", "sub", "sub_", "subtract"}
_MUL_FUNCTIONS = {operator.mul, operator.imul, torch.mul, torch.multiply}
_MUL_METHODS = {"mul", "mul_", "multiply"}
_DIV_FUNCTIONS = {operator.truediv, operator.itruediv, torch.div, torch.true_divide, torch.divide}
_DIV_METHODS = {"div", "div_", "true_divide", "divide"}
_NEG = {operator.neg, torch.neg, torch.negative, "neg", "negative"}
_FUNCTIONAL_ALIASES = {torch.conv2d, torch.conv_transpose2d, F.avg_pool2d, torch.max_pool2d}
_REFUSED_FUNCTIONS = {F.layer_norm, F.group_norm, F.instance_norm, F.local_response_norm, F.normalize}


def _activation_twin(target, args, kwargs) -> nn.Module | None:
    """The activation module equal to a functional call, or None."""
    a = lambda i, name, default: _arg(args, kwargs, i, name, default)  # noqa: E731
    twins = {
        F.relu: lambda: nn.ReLU(), torch.relu: lambda: nn.ReLU(), torch.relu_: lambda: nn.ReLU(),
        "relu": lambda: nn.ReLU(), "relu_": lambda: nn.ReLU(), F.relu6: lambda: nn.ReLU6(),
        F.leaky_relu: lambda: nn.LeakyReLU(a(1, "negative_slope", 0.01)),
        F.elu: lambda: nn.ELU(a(1, "alpha", 1.0)), F.celu: lambda: nn.CELU(a(1, "alpha", 1.0)),
        F.selu: lambda: nn.SELU(), torch.selu: lambda: nn.SELU(),
        F.gelu: lambda: nn.GELU(approximate=a(1, "approximate", "none")),
        F.silu: lambda: nn.SiLU(), F.mish: lambda: nn.Mish(), F.hardswish: lambda: nn.Hardswish(),
        F.hardsigmoid: lambda: nn.Hardsigmoid(), F.softsign: lambda: nn.Softsign(),
        F.hardtanh: lambda: nn.Hardtanh(a(1, "min_val", -1.0), a(2, "max_val", 1.0)),
        F.softplus: lambda: nn.Softplus(a(1, "beta", 1.0), a(2, "threshold", 20.0)),
        torch.sigmoid: lambda: nn.Sigmoid(), F.sigmoid: lambda: nn.Sigmoid(), "sigmoid": lambda: nn.Sigmoid(),
        torch.tanh: lambda: nn.Tanh(), F.tanh: lambda: nn.Tanh(), "tanh": lambda: nn.Tanh(),
    }  # fmt: skip
    make = twins.get(target)
    return make() if make is not None else None


class _GraphWalk(torch.fx.Interpreter):
    """Runs the traced model on ``zeros(2, *input_shape)`` (two samples: any op that mixes them
    is seen) and records, for every node that depends on the input, a certified rule giving its
    Lipschitz constant from those of its arguments."""

    def __init__(self, gm: torch.fx.GraphModule, tol: float, fold: bool) -> None:
        super().__init__(gm)
        self.extra_traceback = False  # our messages name the node already
        self.tol = tol
        self.dep: dict[torch.fx.Node, bool] = {}
        self.steps: dict[torch.fx.Node, _Step] = {}
        self.rows: dict[torch.fx.Node, _NodeBound] = {}
        self.layers: dict[torch.fx.Node, _Layer] = {}
        self.input: torch.fx.Node | None = None
        self.out: torch.fx.Node | None = None
        self.folds = _fold_pairs(gm) if fold else {}

    # -- running
    def run_node(self, n: torch.fx.Node):
        try:
            with torch.no_grad():
                value = super().run_node(n)
        except (TypeError, ValueError) as error:
            if n.op in ("call_module", "call_function", "call_method"):
                raise ValueError(f"the input shape does not fit the model: {_node_label(n, self.module)} failed: {error}") from error
            raise
        except Exception as error:  # noqa: BLE001 - a shape that does not fit
            raise ValueError(f"the input shape does not fit the model: {_node_label(n, self.module)} failed: {type(error).__name__}: {error}") from error
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        self._record(n, args, kwargs, value)
        return value

    def _record(self, n, args, kwargs, value) -> None:
        if n.op == "placeholder":
            self.dep[n] = self.input is None
            if self.input is None:
                self.input = n
                self.steps[n] = _Step("input", ())
                self.rows[n] = _NodeBound(n.name, "input", "input", tuple(value.shape[1:]), 1.0, 1.0, "identity", ())
            return
        if n.op == "output":
            out = args[0]
            source = n.args[0]
            if not isinstance(out, Tensor) or not isinstance(source, torch.fx.Node):
                raise TypeError(f"model must return a tensor, got {type(out).__name__}")
            if not self.dep.get(source, False):
                raise ValueError("model output does not depend on its input (a constant): its constant is 0")
            self.out = source
            return
        deps = [a for a in n.all_input_nodes if self.dep.get(a, False)]
        self.dep[n] = bool(deps)
        if not deps or _is_metadata(n):
            self.dep[n] = False
            return
        label = _node_label(n, self.module)
        if isinstance(value, Tensor) and (value.ndim == 0 or value.shape[0] != 2):
            raise TypeError(f"{label} mixes the samples of a batch (its output has shape {tuple(value.shape)} from a batch of 2): no per-sample bound")
        first = next((v for v in _flat_tensors(args, kwargs, n, self.dep)), None)
        in_shape = tuple(first.shape[1:]) if isinstance(first, Tensor) else ()
        if n.op == "call_module":
            kind, factor, method, step = self._module(n, args, kwargs, value, deps, label)
        else:
            kind, factor, method, step = self._function(n, args, kwargs, value, deps, label)
        self.steps[n] = step
        self.rows[n] = _NodeBound(n.name, _target_name(n), kind, in_shape, float(factor), math.nan, method, tuple(d.name for d in deps))

    # -- modules
    def _module(self, n, args, kwargs, value, deps, label):
        module = self.module.get_submodule(n.target)
        kind = _kind(str(n.target), module)
        if len(deps) != 1 or not (n.args and n.args[0] is deps[0]) or len(n.args) + len(n.kwargs) != 1:
            raise TypeError(f"{label} takes several arguments; only single-input modules are bounded")
        if not isinstance(value, Tensor):
            raise TypeError(f"{label} returns a {type(value).__name__}, not a tensor")
        x = args[0]
        layer = _Layer(str(n.target), module, kind, (1, *x.shape[1:]), (1, *value.shape[1:]))
        self.layers[n] = layer
        bound = None
        if kind == "conv2d":
            bound = _conv2d_graph_bound(module, _f64(module.weight), layer.input_shape, self.tol)
        elif kind == "convtranspose2d":
            bound = _conv_transpose2d_graph_bound(
                _f64(module.weight), layer.input_shape, layer.output_shape, module.stride, module.padding,
                module.dilation, module.groups,
            )  # fmt: skip
        factor, method = bound if bound is not None else _layer_bound(layer, self.tol)
        step = _Step("scale", ((factor, deps[0]),))
        conv_node = self.folds.get(n)
        if conv_node is not None:
            conv_step = self.steps[conv_node]
            product = factor * self.rows[conv_node].factor
            folded, folded_method = _folded_bound(self.layers[conv_node], module, self.tol)
            if folded <= product:
                factor, method = folded, f"folded into {conv_node.target!r}: {folded_method}"
            else:
                factor, method = product, f"product with {conv_node.target!r} (folding was not tighter)"
            step = _Step("scale", ((factor, conv_step.sources[0][1]),))
            kind = "batchnorm (folded)"
        return kind, factor, method, step

    # -- functions and methods
    def _function(self, n, args, kwargs, value, deps, label):
        target = n.target
        x = args[0] if args else None
        one = deps[0]

        def scale(kind, factor, method):
            if len(deps) != 1:
                raise TypeError(f"{label} combines several input-dependent tensors in a way the walk does not bound")
            return kind, factor, method, _Step("scale", ((factor, one),))

        if target in _REFUSED_FUNCTIONS:
            raise TypeError(f"{label} {_NORM_REFUSAL}")
        if target is operator.getitem:
            if isinstance(x, (tuple, list)):
                return scale("select", 1.0, "one piece of a split (a projection)")
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            if not index or not (index[0] is Ellipsis or index[0] == slice(None)) or any(
                isinstance(i, (Tensor, list, bool, torch.fx.Node)) for i in index
            ):
                raise TypeError(f"{label} indexes the batch dimension or with tensors/lists (only slices after a full first slice are bounded)")
            return scale("slice", 1.0, "coordinate projection (1)")
        if target in _SUM_FUNCTIONS or target in _SUM_METHODS:
            alpha = abs(float(kwargs.get("alpha", 1.0)))
            sources = []
            operands = ((n.args[0], args[0]), (n.args[1], args[1]) if len(n.args) > 1 else (n.kwargs.get("other"), kwargs.get("other")))
            for position, (operand, operand_value) in enumerate(operands):
                if isinstance(operand, torch.fx.Node) and self.dep.get(operand, False):
                    coefficient = (alpha if position == 1 else 1.0) * _rep(value, operand_value)
                    sources.append((coefficient, operand))
            total = sum(c for c, _ in sources)
            terms = " + ".join(f"{c:.4g} L({s.name})" if c != 1 else f"L({s.name})" for c, s in sources)
            kind = "sum" if len(sources) > 1 else "shift"
            return kind, total, f"sum rule: L <= {terms}", _Step("sum", tuple(sources))
        if target in _NEG:
            return scale("neg", 1.0, "negation (isometry)")
        if target in _MUL_FUNCTIONS or target in _MUL_METHODS or target in _DIV_FUNCTIONS or target in _DIV_METHODS:
            divide = target in _DIV_FUNCTIONS or target in _DIV_METHODS
            operands = [a for a in (*n.args[:2], *n.kwargs.values()) if isinstance(a, torch.fx.Node) and self.dep.get(a, False)]
            if len(operands) != 1 or (divide and n.args[0] is not one):
                raise TypeError(f"{label} multiplies or divides input-dependent tensors: not globally Lipschitz")
            if divide and kwargs.get("rounding_mode") is not None:
                raise TypeError(f"{label} divides with rounding: not continuous")
            position = 0 if n.args[0] is one else 1
            other = args[1 - position]
            if isinstance(other, Tensor):
                c = other.detach().to(torch.float64)
                c = 1.0 / c if divide else c
            else:
                c = 1.0 / float(other) if divide else float(other)
            factor = _constant_scale(value, args[position], c)
            if not math.isfinite(factor):
                raise ValueError(f"{label} divides by zero or scales by an infinite constant")
            return scale("scale", factor, "scaling by a constant (max |c| over broadcast copies)")
        if target in (torch.cat, torch.concat, torch.concatenate, torch.stack):
            tensors = list(args[0])
            dim = _arg(args, kwargs, 1, "dim", 0)
            ndim = tensors[0].ndim + (1 if target is torch.stack else 0)
            if dim % ndim == 0:
                raise TypeError(f"{label} concatenates along the batch dimension")
            sources = tuple(t for t in n.args[0] if isinstance(t, torch.fx.Node) and self.dep.get(t, False))
            factor = math.sqrt(len(sources))
            names = ", ".join(s.name for s in sources)
            return "concat", factor, f"concatenation: L <= sqrt(sum of L^2 over {names})", _Step("cat", sources)
        if target in _IDENTITY_METHODS or target in (torch.clone, torch.detach) or target in _RESHAPE_METHODS or target in (
            torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.permute, torch.transpose, torch.swapaxes
        ):
            name = target if isinstance(target, str) else target.__name__
            if name == "permute":
                order = args[1:] if len(args) > 2 or isinstance(_arg(args, kwargs, 1, "dims", None), int) else _arg(args, kwargs, 1, "dims")
                if _dims(order, x.ndim)[0] != 0:
                    raise TypeError(f"{label} moves the batch dimension")
            if name in ("transpose", "swapaxes") and 0 in _dims((_arg(args, kwargs, 1, "dim0"), _arg(args, kwargs, 2, "dim1")), x.ndim):
                raise TypeError(f"{label} moves the batch dimension")
            if value.numel() != x.numel():
                raise TypeError(f"{label} changes the number of entries")
            return scale("reshape", 1.0, "reshape (isometry)")
        if target in ("expand", "expand_as", "repeat"):
            return scale("expand", _rep(value, x), "replication: sqrt(copies of one entry)")
        if target in (torch.mean, "mean", torch.sum, "sum"):
            dim = _arg(args, kwargs, 1, "dim", None)
            if dim is None or (isinstance(dim, (tuple, list)) and not dim):
                raise TypeError(f"{label} reduces over all dimensions, the batch one included (give dim)")
            dims = _dims(dim, x.ndim)
            if 0 in dims:
                raise TypeError(f"{label} reduces over the batch dimension")
            count = math.prod(x.shape[d] for d in dims)
            if target in (torch.mean, "mean"):
                return scale("mean", 1.0 / math.sqrt(count), f"mean over {count} entries: 1/sqrt({count}) (exact)")
            return scale("sum", math.sqrt(count), f"sum over {count} entries: sqrt({count}) (exact)")
        if target in (torch.split, "split", torch.chunk, "chunk", torch.tensor_split, "tensor_split"):
            if _dims(_arg(args, kwargs, 2, "dim", 0), x.ndim)[0] == 0:
                raise TypeError(f"{label} splits the batch dimension")
            return scale("split", 1.0, "split (each piece a projection)")
        twin = _activation_twin(target, args, kwargs)
        if twin is not None:
            try:
                factor, method = _activation_constant(twin)
            except ValueError as error:
                raise ValueError(f"{label}: {error}") from error
            return scale("activation", factor, method)
        if target in (F.dropout, F.dropout1d, F.dropout2d, F.dropout3d, F.alpha_dropout):
            if _arg(args, kwargs, 2, "training", True) and _arg(args, kwargs, 1, "p", 0.5) > 0:
                raise ValueError(f"{label} is a dropout in training mode (random); call model.eval() first")
            return scale("dropout", 1.0, "1-Lipschitz (identity in eval)")
        if target is F.pad:
            mode = _arg(args, kwargs, 2, "mode", "constant")
            if mode == "constant":
                return scale("pad", 1.0, "1-Lipschitz (zero-padding embedding plus a constant)")
            pad = _arg(args, kwargs, 1, "pad")
            index = torch.arange(x[0, 0].numel(), dtype=torch.float64).reshape(1, 1, *x.shape[2:])
            copies = int(torch.bincount(F.pad(index, pad, mode=mode).round().long().flatten()).max())
            return scale("pad", math.sqrt(copies), f"{mode} padding: sqrt({copies} copies of one pixel) (exact)")
        if target is F.linear:
            weight = self._constant(n, 1, label)
            return scale("linear", spectral.gram_iteration(_f64(weight), tol=self.tol).item(), "gram (certified)")
        if target in (F.conv2d, torch.conv2d):
            weight = self._constant(n, 1, label)
            padding, stride = _arg(args, kwargs, 4, "padding", 0), _arg(args, kwargs, 3, "stride", 1)
            dilation, groups = _arg(args, kwargs, 5, "dilation", 1), _arg(args, kwargs, 6, "groups", 1)
            if isinstance(padding, str):
                result = spectral.conv2d_norm(
                    _f64(weight), tuple(x.shape[-2:]), padding=padding, stride=stride, dilation=dilation,
                    groups=groups, tol=self.tol,
                )  # fmt: skip
                return scale("conv2d", result.upper.item(), result.method)
            return scale("conv2d", *_zero_conv_bound(_f64(weight), tuple(x.shape[-2:]), padding, stride, dilation, groups))
        if target in (F.conv_transpose2d, torch.conv_transpose2d):
            weight = self._constant(n, 1, label)
            factor, method = _conv_transpose2d_graph_bound(
                _f64(weight), x.shape, value.shape, _arg(args, kwargs, 3, "stride", 1),
                _arg(args, kwargs, 4, "padding", 0), _arg(args, kwargs, 7, "dilation", 1),
                _arg(args, kwargs, 6, "groups", 1),
            )  # fmt: skip
            return scale("convtranspose2d", factor, method)
        if target in (F.max_pool2d, torch.max_pool2d):
            pool = nn.MaxPool2d(
                _arg(args, kwargs, 1, "kernel_size"), _arg(args, kwargs, 2, "stride", None) or None,
                _arg(args, kwargs, 3, "padding", 0), _arg(args, kwargs, 4, "dilation", 1),
                ceil_mode=_arg(args, kwargs, 5, "ceil_mode", False),
            )  # fmt: skip
            if _arg(args, kwargs, 6, "return_indices", False):
                raise TypeError(f"{label} returns indices")
            return scale("maxpool", *_maxpool_bound(pool, x.shape, value.shape))
        if target in (F.avg_pool2d, F.adaptive_avg_pool2d):
            if target is F.adaptive_avg_pool2d:
                pool = nn.AdaptiveAvgPool2d(_arg(args, kwargs, 1, "output_size"))
            else:
                pool = nn.AvgPool2d(
                    _arg(args, kwargs, 1, "kernel_size"), _arg(args, kwargs, 2, "stride", None) or None,
                    _arg(args, kwargs, 3, "padding", 0), _arg(args, kwargs, 4, "ceil_mode", False),
                    _arg(args, kwargs, 5, "count_include_pad", True), _arg(args, kwargs, 6, "divisor_override", None),
                )  # fmt: skip
            return scale("avgpool", *_avgpool_bound(pool, x.shape, value.shape, self.tol))
        if target is F.interpolate:
            options = {key: _arg(args, kwargs, i, key, default) for i, (key, default) in enumerate(
                (("size", None), ("scale_factor", None), ("mode", "nearest"), ("align_corners", None),
                 ("recompute_scale_factor", None), ("antialias", False)), start=1)}  # fmt: skip
            mode = options["mode"]
            if mode not in _UPSAMPLE_MODES:
                raise TypeError(f"{label} interpolates with mode={mode!r}: no certified bound (supported: {', '.join(_UPSAMPLE_MODES)})")
            factor, method = _upsample_bound(lambda t: F.interpolate(t, **options), mode, tuple(x.shape[2:]))
            return scale("upsample", factor, method)
        raise TypeError(
            f"{label} has no known Lipschitz bound. Declare one: move it into a module with a "
            "lipschitz_constant attribute or zero-argument method returning a certified L2 bound "
            "(the walk then takes that module as one node)"
        )

    def _constant(self, n, index: int, label: str) -> Tensor:
        node = n.args[index] if len(n.args) > index else n.kwargs.get("weight")
        if isinstance(node, torch.fx.Node) and self.dep.get(node, False):
            raise TypeError(f"{label} has a weight that depends on the input: not a fixed linear map")
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        weight = _arg(args, kwargs, index, "weight")
        if not isinstance(weight, Tensor) or not bool(torch.isfinite(weight).all()):
            raise ValueError(f"{label} has a weight with NaN or Inf entries (or none)")
        return weight


_EPS64 = 2.0**-53
# Largest number of entries of an operator the graph walk unrolls into a dense matrix.
_DENSE_LIMIT = 2**21


def _certified_norm(T: Tensor) -> float:
    r"""Certified bound of :math:`\max_b \|T_b\|_2` for a batch ``(..., m, n)`` of float64 or
    complex128 matrices, from the largest eigenvalue of the smaller Gram matrix
    :math:`G = T^* T` (or :math:`T T^*`) by ``torch.linalg.eigvalsh``, with margins for rounding:
    forming :math:`G` errs by at most :math:`\gamma_k \||T|^* |T|\|_2 \le \gamma_k \|T\|_F^2`
    (inner length :math:`k`), and a backward-stable symmetric eigensolver returns the eigenvalues
    of a matrix within :math:`p(n)\,\epsilon \|G\|_2` of :math:`G`; both are taken generously
    (:math:`(2k + 4)\epsilon\|T\|_F^2` and :math:`20 n \epsilon \|G\|_F`), then the square root
    is raised by :math:`4\epsilon`. Much faster than Gram iteration on large matrices: one
    eigendecomposition of the smaller side."""
    wide = T.shape[-2] < T.shape[-1]
    G = T @ T.mH if wide else T.mH @ T
    inner, side = T.shape[-1] if wide else T.shape[-2], G.shape[-1]
    lam = torch.linalg.eigvalsh(G)[..., -1]
    fro_T = T.abs().square().sum(dim=(-2, -1))
    fro_G = torch.linalg.matrix_norm(G)
    bound = lam + (2 * inner + 4) * _EPS64 * fro_T + 20 * side * _EPS64 * fro_G
    return math.sqrt(max(bound.max().item(), 0.0)) * (1 + 4 * _EPS64)


def _dense_bound(apply: Callable[[Tensor], Tensor], in_shape: tuple, tol: float = 0.0,
                 limit: int | None = None) -> tuple[float, str] | None:
    r"""Certified bound of a linear map given as ``apply`` (batched, float64) on inputs of shape
    ``in_shape`` (no batch) from its unrolled matrix (:math:`M e_i` for every basis vector: for a
    convolution the entries are the kernel's weights, exactly), when it has at most ``limit``
    entries: :func:`_certified_norm` (the norm itself, up to rounding). None when larger."""
    n, limit = math.prod(in_shape), _DENSE_LIMIT if limit is None else limit
    with torch.no_grad():
        m = apply(torch.zeros((1, *in_shape), dtype=torch.float64)).numel()
        if n * m > limit:
            return None
        matrix = apply(torch.eye(n, dtype=torch.float64).reshape(n, *in_shape)).reshape(n, m)
    return _certified_norm(matrix), "norm of the unrolled operator (eigvalsh, certified)"


def _conv_matrix(weight: Tensor, size: tuple[int, int], padding: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int], groups: int) -> Tensor:
    r"""The dense matrix ``(c_out * H' * W', c_in * h * w)`` of a zero-padded convolution
    (``F.conv2d`` semantics), gathered from the kernel (entry ``((o, i', j'), (c, i, j))`` is
    ``weight[o, c, a, b]`` where :math:`i = i' s_h - p_h + a d_h`, :math:`j = j' s_w - p_w + b d_w`,
    0 elsewhere): exact, without any arithmetic."""
    c_out, c_in_g, kh, kw = weight.shape
    (h, w), (ph, pw), (sh, sw), (dh, dw) = size, padding, stride, dilation
    out_h = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    out_w = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1

    def taps(n_out, n_in, s, p, d, k):  # (n_out, n_in) tap index or k (no tap)
        rows = torch.arange(n_out)[:, None] * s - p
        offset = torch.arange(n_in)[None, :] - rows
        tap = torch.div(offset, d, rounding_mode="floor")
        valid = (offset >= 0) & (offset % d == 0) & (tap < k)
        return torch.where(valid, tap, torch.full_like(tap, k))

    th, tw = taps(out_h, h, sh, ph, dh, kh), taps(out_w, w, sw, pw, dw, kw)
    padded = F.pad(weight, (0, 1, 0, 1))  # tap k = zero
    # (c_out, c_in_g, out_h, h, out_w, w)
    blocks = padded[:, :, th[:, :, None, None], tw[None, None, :, :]]
    blocks = blocks.permute(0, 2, 4, 1, 3, 5)  # (c_out, out_h, out_w, c_in_g, h, w)
    per_out = c_out // groups
    c_in = c_in_g * groups
    matrix = weight.new_zeros(c_out, out_h, out_w, c_in, h, w)
    for g in range(groups):
        o, i = slice(g * per_out, (g + 1) * per_out), slice(g * c_in_g, (g + 1) * c_in_g)
        matrix[o, :, :, i] = blocks[o]
    return matrix.reshape(c_out * out_h * out_w, c_in * h * w)


def _embedded_conv_bound(weight: Tensor, size: tuple[int, int], padding: tuple[int, int], stride: tuple[int, int],
                         dilation: tuple[int, int], groups: int) -> tuple[float, str]:
    r"""Certified bound of a zero-padded strided convolution on ``h x w`` images by the circular
    convolution it is a restriction of.

    Output :math:`i` reads input :math:`t = i s + j - p`, with :math:`-p \le t \le h + p - 1`.
    Extend the image by zeros to a period :math:`N \ge h + p` (also :math:`\ge k` and a multiple
    of :math:`s`): no out-of-range :math:`t` wraps onto the image, so the layer is
    :math:`R\,C\,E` with :math:`E` the zero extension (an isometry), :math:`C` the strided
    circular convolution on :math:`N \times N` (shifted by :math:`p`: a unitary change) and
    :math:`R` a selection of outputs, and :math:`\|R C E\| \le \|C\|` [delattre2024spectral]. The
    norm of :math:`C` is the largest norm of its transfer matrices
    (:func:`stabilitylab.spectral.conv_transfer_matrices`, space-to-depth for the stride
    [sedghi2019singular]), bounded by :func:`_certified_norm`, plus the rounding of the DFT
    (:math:`8\, t^{3/2} \epsilon \|K\|_F` for :math:`t` taps). Groups: the largest over groups."""
    kernel = weight
    dh, dw = dilation
    if (dh, dw) != (1, 1):
        c_out, c_in, kh, kw = kernel.shape
        dilated = kernel.new_zeros(c_out, c_in, dh * (kh - 1) + 1, dw * (kw - 1) + 1)
        dilated[:, :, ::dh, ::dw] = kernel
        kernel = dilated
    kh, kw = kernel.shape[-2:]
    (h, w), (ph, pw), (sh, sw) = size, padding, stride
    nh = -(-max(h + ph, kh) // sh) * sh
    nw = -(-max(w + pw, kw) // sw) * sw
    per_group = kernel.shape[0] // groups
    best = 0.0
    for g in range(groups):
        k = kernel[g * per_group : (g + 1) * per_group]
        T = spectral.conv_transfer_matrices(k, (nh, nw), stride=(sh, sw))
        taps = kh * kw
        delta = 8 * taps**1.5 * _EPS64 * torch.linalg.vector_norm(k).item()
        best = max(best, _certified_norm(T) + delta)
    return best, f"circular embedding on {nh}x{nw} (certified)"


def _zero_conv_bound(weight: Tensor, size: tuple[int, int], padding, stride, dilation, groups: int) -> tuple[float, str]:
    """Certified bound of a zero-padded ``F.conv2d`` (numeric padding) on ``size`` images: the
    norm of the unrolled operator (:func:`_conv_matrix`, :func:`_certified_norm`) when it has at
    most ``_DENSE_LIMIT`` entries, else the circular embedding (:func:`_embedded_conv_bound`)."""
    padding, stride, dilation = check_pair(padding, "padding", 0), check_pair(stride, "stride"), check_pair(dilation, "dilation")
    c_out, c_in = weight.shape[0], weight.shape[1] * groups
    out = [(n + 2 * p - d * (k - 1) - 1) // s + 1 for n, p, d, k, s in zip(size, padding, dilation, weight.shape[-2:], stride)]
    if c_out * out[0] * out[1] * c_in * size[0] * size[1] <= _DENSE_LIMIT:
        matrix = _conv_matrix(weight, size, padding, stride, dilation, groups)
        return _certified_norm(matrix), "norm of the unrolled operator (eigvalsh, certified)"
    return _embedded_conv_bound(weight, size, padding, stride, dilation, groups)


def _conv2d_graph_bound(conv: nn.Conv2d, weight: Tensor, input_shape: tuple, tol: float) -> tuple[float, str]:
    """A Conv2d module's linear part with ``weight`` (float64) on its input size: see
    :func:`_zero_conv_bound` for zero padding given as numbers; other paddings: the unrolled
    operator when small, else :func:`stabilitylab.spectral.conv2d_norm`."""
    size = tuple(input_shape[-2:])
    if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        return _zero_conv_bound(weight, size, conv.padding, conv.stride, conv.dilation, conv.groups)
    dense = _dense_bound(lambda t: conv._conv_forward(t, weight, None), tuple(input_shape[1:]))
    if dense is not None:
        return dense
    with torch.no_grad():
        result = spectral.conv2d_norm(
            weight, size, padding=conv.padding, padding_mode=conv.padding_mode,
            stride=conv.stride, dilation=conv.dilation, groups=conv.groups, tol=tol,
        )  # fmt: skip
    return result.upper.item(), result.method


def _conv_transpose2d_graph_bound(weight: Tensor, input_shape: tuple, output_shape: tuple, stride, padding, dilation,
                                  groups: int) -> tuple[float, str]:
    """A transposed convolution as the adjoint of the convolution on its output size (see
    :func:`_conv_transpose2d_bound`), bounded by :func:`_zero_conv_bound`."""
    h, w = input_shape[-2:]
    H, W = output_shape[-2:]
    (sh, sw), (ph, pw), (dh, dw) = check_pair(stride, "stride"), check_pair(padding, "padding", 0), check_pair(dilation, "dilation")
    kh, kw = weight.shape[-2:]
    if (H + 2 * ph - dh * (kh - 1) - 1) // sh + 1 != h or (W + 2 * pw - dw * (kw - 1) - 1) // sw + 1 != w:
        raise ValueError(f"a transposed convolution from {(h, w)} to {(H, W)} images is not the adjoint of a convolution")
    value, method = _zero_conv_bound(weight, (H, W), (ph, pw), (sh, sw), (dh, dw), groups)
    return value, f"adjoint convolution: {method}"

def _is_metadata(n: torch.fx.Node) -> bool:
    """Nodes that read shapes or types, not values (constants for the bound)."""
    if n.op == "call_method" and n.target in ("size", "dim", "numel", "ndimension", "type", "get_device"):
        return True
    return n.op == "call_function" and n.target is getattr and n.args[1] in ("shape", "dtype", "device", "ndim", "is_cuda")


def _flat_tensors(args, kwargs, n: torch.fx.Node, dep: dict) -> list:
    """The values of the input-dependent arguments of ``n``, in order (the first tensor of a
    tuple value)."""

    values: list = []

    def walk(node, value) -> None:  # the argument structure of the graph, the values alongside
        if isinstance(node, torch.fx.Node):
            if dep.get(node, False):
                values.append(value[0] if isinstance(value, (tuple, list)) else value)
        elif isinstance(node, (tuple, list)):
            for item, item_value in zip(node, value):
                walk(item, item_value)
        elif isinstance(node, dict):
            for key in node:
                walk(node[key], value[key])

    walk((n.args, n.kwargs), (args, kwargs))
    return values

def _fold_pairs(gm: torch.fx.GraphModule) -> dict:
    """BatchNorm nodes (eval, running statistics) whose input is a plain Conv2d / Linear node
    read by nothing else: ``{batchnorm node: conv node}``."""
    pairs = {}
    for n in gm.graph.nodes:
        if n.op != "call_module" or len(n.args) != 1 or n.kwargs:
            continue
        bn = gm.get_submodule(n.target)
        prev = n.args[0]
        if (
            not isinstance(bn, _BATCHNORMS) or hasattr(bn, "lipschitz_constant")
            or type(bn).forward is not nn.modules.batchnorm._BatchNorm.forward
            or not isinstance(prev, torch.fx.Node) or prev.op != "call_module" or len(prev.users) != 1
        ):  # fmt: skip
            continue
        conv = gm.get_submodule(prev.target)
        if hasattr(conv, "lipschitz_constant"):
            continue
        if (isinstance(conv, nn.Conv2d) and type(conv).forward is nn.Conv2d.forward and conv.out_channels == bn.num_features) or (
            isinstance(conv, nn.Linear) and type(conv).forward is nn.Linear.forward and conv.out_features == bn.num_features
        ):
            pairs[n] = prev
    return pairs


def _folded_bound(conv_layer: _Layer, bn: nn.Module, tol: float) -> tuple[float, str]:
    r"""Certified bound of BatchNorm(eval) after a Conv2d / Linear as one linear map: the
    BatchNorm scales output channel :math:`c` by :math:`s_c = \gamma_c/\sqrt{v_c + \varepsilon}`
    and shifts it, so the pair is the layer with weight :math:`\operatorname{diag}(s) W` (plus a
    bias), and :math:`\|\operatorname{diag}(s) W\| \le \max_c |s_c|\, \|W\|` (the product bound)."""
    conv = conv_layer.module
    s = _batchnorm_scales(bn)
    if isinstance(conv, nn.Linear):
        if len(conv_layer.output_shape) != 2:
            return math.inf, "not folded (Linear on N-D inputs)"
        weight = s[:, None] * _f64(conv.weight)
        return spectral.gram_iteration(weight, tol=tol).item(), "gram (certified)"
    return _conv2d_graph_bound(conv, s[:, None, None, None] * _f64(conv.weight), conv_layer.input_shape, tol)


def _propagate(walk: _GraphWalk, source: torch.fx.Node | None = None) -> dict:
    """Certified constants from ``source`` (default: the model input) to every node after it."""
    source = walk.input if source is None else source
    L: dict = {source: 1.0}
    started = False
    for n, step in walk.steps.items():
        if n is source:
            started = True
            continue
        if not started:
            continue
        if step.rule == "scale" or step.rule == "sum":
            L[n] = math.fsum(c * L.get(s, 0.0) for c, s in step.sources)
        elif step.rule == "cat":
            L[n] = math.sqrt(math.fsum(L.get(s, 0.0) ** 2 for s in step.sources))
    return L


class _Graph(NamedTuple):
    gm: torch.fx.GraphModule
    walk: _GraphWalk
    upper: float
    rows: list


@_with_autograd
def _graph_walk(model: nn.Module, input_shape: tuple[int, ...], tol: float, fold: bool) -> _Graph:
    _check_plain_calls(model)
    for name, module in model.named_modules():  # NaN weights anywhere: refused (as the layer walk)
        for tensor_name, tensor in (*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)):
            if tensor.is_floating_point() and not torch.isfinite(tensor.detach()).all():
                raise ValueError(
                    f"module {name or '(model)'!r} of type {type(module).__name__} has NaN or Inf entries "
                    f"in {tensor_name!r}: no bound holds for it"
                )
    gm = _trace(model)
    walk = _GraphWalk(gm, tol, fold)
    dtype, device = _model_dtype_device(model)
    x = torch.zeros((2, *input_shape), dtype=dtype, device=device)
    with _preserved_state(model):
        try:
            walk.run(x)
        except ValueError as error:
            if "input shape" in str(error):
                raise ValueError(f"input_shape {input_shape} does not fit the model: {error}") from error
            raise
    L = _propagate(walk)
    rows = []
    for n, row in walk.rows.items():
        row.upper = L.get(n, 0.0)
        rows.append(row)
    return _Graph(gm, walk, L[walk.out], rows)


def _graph_pairwise(model, input_shape, tol, fold) -> Tensor:
    """pairwise_logit_bound through the graph walk (see there)."""
    result = _graph_walk(model, input_shape, tol, fold)
    walk, out = result.walk, result.walk.out
    row = walk.rows[out]
    weight = None
    if out.op == "call_module":
        weight = _head_weight(result.gm.get_submodule(out.target))
    elif out.op == "call_function" and out.target is F.linear:
        weight = walk.fetch_attr(out.args[1].target) if out.args[1].op == "get_attr" else None
    step = walk.steps[out]
    if weight is None or weight.ndim != 2 or len(row.input_shape) != 1 or step.rule != "scale":
        raise ValueError(
            f"the last layer of model must be a linear layer (a plain nn.Linear, a layer whose "
            f"export_module() returns one, or F.linear of a parameter) on (N, features) inputs, got "
            f"node {out.name!r} ({row.target})"
        )
    features = _propagate(walk)[step.sources[0][1]]
    distances = pairwise_row_distances(_f64(weight))
    distances = torch.clamp(distances, max=math.sqrt(2.0) * row.factor)
    return (distances * features).cpu()


# ----------------------------------------------------------------------------- graph report


@dataclass
class NodeReport:
    """One row of :class:`GraphReport`: a node of the traced graph.

    ``factor`` is the certified bound of the node's own map and ``lower`` a value that map
    attains (NaN where none is computed cheaply: sums, concatenations, folded pairs, functional
    convolutions); ``upper`` is the certified bound from the model's input to the node (see
    :func:`upper_bound`); ``note`` says where a residual sum or a concatenation enters."""

    name: str
    target: str
    kind: str
    input_shape: tuple
    factor: float
    upper: float
    lower: float
    method: str
    lower_method: str
    inputs: tuple
    note: str = ""


@dataclass
class BlockReport:
    """A block of the graph: the sub-network from ``start`` (the node every path to ``end``
    goes through, its immediate dominator) to ``end`` (a sum or concatenation node).
    ``upper`` is the certified bound of the block alone (the graph walk started at ``start``),
    ``lower`` the largest Jacobian spectral norm of the block found at the values ``start``
    takes on the report's points (attained), ``ratio`` their quotient."""

    start: str
    end: str
    upper: float
    lower: float
    ratio: float


@dataclass
class GraphReport:
    """Two-sided Lipschitz report of a traced model (see :func:`report`).

    Attributes:
        nodes: one :class:`NodeReport` per input-dependent node, in the order of the graph.
        blocks: one :class:`BlockReport` per sum or concatenation.
        upper: the certified bound of the network (the graph walk).
        lower: the empirical lower bound of the network (:func:`lower_bound`).
        ratio: ``upper / lower``.
    """

    nodes: list[NodeReport] = field(default_factory=list)
    blocks: list[BlockReport] = field(default_factory=list)
    upper: float = 1.0
    lower: float = 0.0
    ratio: float = math.inf

    def to_dict(self) -> dict:
        """Plain Python types only (JSON-serializable; NaN stays a float)."""
        nodes = []
        for row in self.nodes:
            item = asdict(row)
            item["input_shape"], item["inputs"] = list(row.input_shape), list(row.inputs)
            nodes.append(item)
        return {"nodes": nodes, "blocks": [asdict(b) for b in self.blocks], "upper": self.upper,
                "lower": self.lower, "ratio": self.ratio}  # fmt: skip

    def __str__(self) -> str:
        def table(header, lines, numeric):
            widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
            out = []
            for j, line in enumerate([header, *lines]):
                cells = [c.rjust(w) if i in numeric else c.ljust(w) for i, (c, w) in enumerate(zip(line, widths))]
                out.append("  ".join(cells).rstrip())
                if j == 0:
                    out.append("  ".join("-" * w for w in widths))
            return out

        number = lambda v: "-" if math.isnan(v) else f"{v:.5g}"  # noqa: E731
        lines = [
            (row.name, row.target, row.kind, str(tuple(row.input_shape)), number(row.factor), number(row.lower),
             number(row.upper), row.note or row.method)
            for row in self.nodes
        ]  # fmt: skip
        text = table(("node", "target", "kind", "input shape", "own upper", "own lower", "upper from input", "how / note"), lines, {4, 5, 6})
        if self.blocks:
            text.append("")
            blocks = [(f"{b.start} -> {b.end}", number(b.upper), number(b.lower), number(b.ratio)) for b in self.blocks]
            text += table(("block", "upper", "lower", "up/low"), blocks, {1, 2, 3})
        text.append(
            f"network: upper {self.upper:.5g} (graph walk, certified), lower {self.lower:.5g} (attained), "
            f"upper/lower {self.ratio:.4g}"
        )
        return "\n".join(text)


_ATTAINED_KINDS = {"reshape", "neg", "slice", "split", "select", "activation", "dropout", "expand", "mean", "sum", "input"}


def _dominators(walk: _GraphWalk) -> dict:
    """Immediate dominator (from the input) of every input-dependent node."""
    order = {n: i for i, n in enumerate(walk.steps)}
    dom: dict = {}
    for n, step in walk.steps.items():
        preds = [s for *_, s in step.sources] if step.rule != "cat" else list(step.sources)
        preds = [p for p in preds if p in dom]
        common = set.intersection(*(dom[p] for p in preds)) if preds else set()
        dom[n] = common | {n}
    return {n: max(d - {n}, key=order.__getitem__) for n, d in dom.items() if len(d) > 1}


def _block_module(gm: torch.fx.GraphModule, start, end, walk: _GraphWalk) -> torch.fx.GraphModule | None:
    """The sub-network from ``start`` to ``end`` as a GraphModule (None when it needs another
    placeholder)."""
    ancestors, stack = set(), [end]
    while stack:
        node = stack.pop()
        if node in ancestors or node is start:
            continue
        ancestors.add(node)
        stack.extend(node.all_input_nodes)
    graph = torch.fx.Graph()
    env = {start: graph.placeholder("x")}
    for node in gm.graph.nodes:
        if node not in ancestors:
            continue
        if node.op == "placeholder":
            return None
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(env[end])
    return torch.fx.GraphModule(gm, graph)


def _values_at(gm: torch.fx.GraphModule, nodes: list, x: Tensor, device) -> list[Tensor]:
    """The float64 values the given nodes take when the model runs on ``x``."""
    graph = torch.fx.Graph()
    env: dict = {}
    graph.graph_copy(gm.graph, env)
    graph.output(tuple(env[n] for n in nodes))
    probe = torch.fx.GraphModule(gm, graph)
    f = _float64_function_any(probe, device)
    with torch.no_grad():
        return [v.detach() for v in f(x.to(device=device, dtype=torch.float64))]


def _float64_function_any(module: nn.Module, device):
    state = {}
    for name, tensor in (*module.named_parameters(), *module.named_buffers()):
        dtype = torch.float64 if tensor.is_floating_point() else tensor.dtype
        state[name] = _normal_tensor(tensor.to(device=device, dtype=dtype))
    return lambda x: torch.func.functional_call(module, state, (x,))


def _jacobian_lower(f, points: list[Tensor], generator, n_iter: int = 30) -> float:
    """Largest power-iteration estimate of ||J_f(p)||_2 over the points (attained values)."""
    best = 0.0
    for point in points:
        _, vjp = torch.func.vjp(f, point)
        value = spectral.power_iteration(
            lambda v: _jvp(f, point, v), adjoint=lambda u: vjp(u)[0], input_shape=point.shape,
            dtype=torch.float64, device=point.device, n_iter=n_iter, tol=1e-6, generator=generator,
        )  # fmt: skip
        best = max(best, value.item())
    return best


@_with_autograd
def _graph_report(model, x, shape, tol, fold, n_iter, generator) -> GraphReport:
    result = _graph_walk(model, shape, tol, fold)
    walk, gm = result.walk, result.gm
    device = _compute_device(model_device(model, x.device))
    idom = _dominators(walk)
    joins = [n for n, step in walk.steps.items() if step.rule in ("sum", "cat") and len(step.sources) > 1]
    starts = list(dict.fromkeys(idom[n] for n in joins if n in idom))
    points = x[: min(len(x), 2)]
    with eval_mode(model), _preserved_state(model):
        values = dict(zip(starts, _values_at(gm, starts, points, device))) if starts else {}
        blocks = []
        for end in joins:
            if end not in idom:
                continue
            start = idom[end]
            upper = _propagate(walk, start)[end]
            sub = _block_module(gm, start, end, walk)
            lower = math.nan
            if sub is not None:
                f = _float64_function_any(sub, device)
                lower = _jacobian_lower(f, [v[None] for v in values[start]], generator)
            blocks.append(BlockReport(start.name, end.name, upper, lower, upper / lower if lower > 0 else math.inf))
        nodes = []
        for n, row in walk.rows.items():
            lower, lower_method, note = math.nan, "", ""
            layer = walk.layers.get(n)
            if layer is not None and n not in walk.folds:
                with _preserved_state(layer.module):
                    lower, lower_method = _layer_lower(layer, row.factor, generator)
            elif row.kind in _ATTAINED_KINDS and "exact" in row.method or row.kind in _ATTAINED_KINDS - {"mean", "sum"}:
                lower, lower_method = row.factor, "closed form (attained)"
            if n in joins:
                what = "residual sum" if walk.steps[n].rule == "sum" else "concatenation"
                start = idom.get(n)
                note = f"{what} of {', '.join(row.inputs)}" + (f" (block from {start.name})" if start is not None else "")
            nodes.append(NodeReport(row.name, row.target, row.kind, row.input_shape, row.factor, row.upper, lower,
                                    row.method, lower_method, row.inputs, note))  # fmt: skip
    low = lower_bound(model, x, n_iter=n_iter, generator=generator).item()
    return GraphReport(nodes, blocks, result.upper, low, result.upper / low if low > 0 else math.inf)


# ----------------------------------------------------------------------------- lower bounds


def _float64_function(model: nn.Module, device: torch.device) -> Callable[[Tensor], Tensor]:
    """The model's function with float64 copies of its parameters and buffers."""
    state = {}
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        dtype = torch.float64 if tensor.is_floating_point() else tensor.dtype
        state[name] = _normal_tensor(tensor.to(device=device, dtype=dtype))

    def f(x: Tensor) -> Tensor:
        out = torch.func.functional_call(model, state, (x,))
        if not isinstance(out, Tensor):
            raise TypeError(f"model must return a tensor, got {type(out).__name__}")
        return out

    return f


def _per_sample(f: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    """x -> f(x[None]).flatten(): one sample, no batch interaction."""
    return lambda xi: f(xi.unsqueeze(0)).reshape(-1)


def _jvp(f: Callable[[Tensor], Tensor], x: Tensor, v: Tensor) -> Tensor:
    """J_f(x) v as the vjp of the linear map u -> J_f(x)^T u (reverse mode twice: no forward-mode
    rules needed)."""
    y, pullback = torch.func.vjp(f, x)
    _, pushforward = torch.func.vjp(lambda u: pullback(u)[0], torch.zeros_like(y))
    return pushforward(v)[0]


def _jacobian_norms(f1: Callable[[Tensor], Tensor], X: Tensor, generator) -> tuple[Tensor, Tensor]:
    """(||J_f(x_b)||_2, top right singular vector) for every point: exact SVD of the Jacobian
    when it is small, else power iteration with jvp / vjp (whose estimate ||J v||, v unit, is
    attained)."""
    B, n = X.shape[0], X[0].numel()
    with torch.no_grad():
        m = f1(X[0]).numel()
    if B * m * n <= _JACOBIAN_ENTRIES:
        try:
            J = torch.func.vmap(torch.func.jacrev(f1))(X)
        except (RuntimeError, NotImplementedError):  # an op without batching rule: one by one
            J = torch.stack([torch.func.jacrev(f1)(x) for x in X])
        _, S, Vh = torch.linalg.svd(J.reshape(B, m, n).detach(), full_matrices=False)
        return S[:, 0], Vh[:, 0, :]
    V = torch.randn(X.shape, generator=generator, dtype=torch.float64).to(X.device).reshape(B, n)
    V = V / torch.linalg.vector_norm(V, dim=1, keepdim=True)

    def jv(x, v):
        return _jvp(f1, x, v.reshape(x.shape))

    def jtu(x, u):
        return torch.func.vjp(f1, x)[1](u)[0].reshape(-1)

    for _ in range(30):
        U = torch.func.vmap(jv)(X, V)
        V = torch.func.vmap(jtu)(X, U)
        V = V / torch.linalg.vector_norm(V, dim=1, keepdim=True).clamp_min(1e-300)
    norms = torch.linalg.vector_norm(torch.func.vmap(jv)(X, V), dim=1)
    return norms.detach(), V.detach()


def jacobian_singular_values(fn: Callable[[Tensor], Tensor] | nn.Module, x: Tensor) -> Tensor:
    r"""Singular values of the Jacobian of ``fn`` at one input: the local Lipschitz picture.

    For a module or function mapping a batch ``(B, *input_shape)`` to ``(B, *output_shape)``,
    returns the singular values, in descending order, of the Jacobian of
    :math:`v \mapsto fn(v[None])[0]` at ``x`` (shape ``input_shape``, no batch dimension), an
    ``(m, n)`` matrix with :math:`n` input and :math:`m` output entries. Its largest value is the
    local Lipschitz constant at ``x`` (a lower bound of the global one); all values equal to 1
    mean the map is locally orthogonal. Built densely with ``torch.autograd.functional.jacobian``:
    meant for inputs of a few thousand entries (use float64 to compare with 1 tightly). Works
    under the caller's ``torch.no_grad()`` and ``torch.inference_mode()`` (autograd is switched
    on inside); ``x`` is moved to the device of ``fn``'s parameters when it is a module.

    Args:
        fn: a module or a callable mapping ``(B, *input_shape)`` to ``(B, *output_shape)``.
        x: one input ``input_shape`` (no batch dimension): a finite floating tensor.

    Returns:
        ``(min(m, n),)`` tensor in the dtype of ``x``, detached.

    Raises:
        TypeError: ``fn`` not callable; ``x`` not a floating tensor; ``fn`` not returning a
            tensor.
        ValueError: an empty, 0-dim or non-finite ``x``, or an ``x`` that ``fn`` cannot take
            (the message names ``x`` and its shape).
    """
    if not callable(fn):
        raise TypeError(f"fn must be a module or a callable, got {type(fn).__name__}")
    check_tensor(x, "x", min_dims=1)
    (x,) = to_model_device(fn, x)
    return _with_autograd(_jacobian_singular_values)(fn, x)


def _jacobian_singular_values(fn, x: Tensor) -> Tensor:
    x = _normal_tensor(x)  # out of inference mode here: a normal tensor autograd can use
    def one(v: Tensor) -> Tensor:
        out = fn(v[None])
        if not isinstance(out, Tensor):
            raise TypeError(f"fn must return a tensor, got {type(out).__name__}")
        return out[0]

    try:
        J = torch.autograd.functional.jacobian(one, x, vectorize=True)
    except TypeError:
        raise
    except (RuntimeError, IndexError) as error:
        raise ValueError(
            f"x of shape {tuple(x.shape)} (one input, without the batch dimension) does not fit fn: "
            f"{type(error).__name__}: {error}"
        ) from error
    return torch.linalg.svdvals(J.reshape(-1, x.numel())).detach()


def backward_gradient_norms(blocks: nn.Sequential, x: Tensor, *, generator: torch.Generator | None = None) -> Tensor:
    r"""How the gradient's norm changes on its way back through a stack of blocks.

    For ``blocks`` :math:`f_1, \dots, f_D` and inputs ``x`` ``(N, d)``, back-propagates the
    projection :math:`\langle u_i, f(x_i) \rangle` of each output on a random unit vector
    :math:`u_i` and returns, for :math:`l = 1, \dots, D`, the mean over the batch of the norm of
    the gradient with respect to the input of the block :math:`l` blocks below the output. The
    first entry is the norm after one block, the last after all :math:`D`. Orthogonal blocks
    keep every entry at 1; contracting ones (or ReLU, which zeroes half the coordinates) make it
    decay geometrically: the gradient-norm-preservation argument for GroupSort networks
    [anil2019sorting]. Works under the caller's ``torch.no_grad()`` and
    ``torch.inference_mode()``; ``x`` is moved to the blocks' device.

    Args:
        blocks: a non-empty ``nn.Sequential`` of blocks mapping ``(N, d)`` to ``(N, d')``.
        x: ``(N, d)`` finite floating inputs, ``N >= 1``.
        generator: seeds the random unit vectors :math:`u_i` (a CPU generator).

    Returns:
        ``(D,)`` tensor on the CPU.

    Raises:
        TypeError: ``blocks`` not a non-empty ``nn.Sequential``; ``x`` not a floating tensor;
            a bad ``generator``.
        ValueError: ``x`` not ``(N, d)``, empty or non-finite; blocks that do not return
            ``(N, d')`` tensors from it.
    """
    if not isinstance(blocks, nn.Sequential) or len(blocks) == 0:
        raise TypeError(f"blocks must be a non-empty nn.Sequential, got {type(blocks).__name__}")
    check_tensor(x, "x", min_dims=2, max_dims=2)
    check_generator(generator)
    (x,) = to_model_device(blocks, x)
    return _with_autograd(_backward_gradient_norms)(blocks, x, generator)


def _backward_gradient_norms(blocks: nn.Sequential, x: Tensor, generator) -> Tensor:
    inputs, h = [], _normal_tensor(x).requires_grad_()
    try:
        for block in blocks:
            inputs.append(h)
            h = block(h)
    except (RuntimeError, IndexError) as error:
        raise ValueError(
            f"x of shape {tuple(x.shape)} does not fit blocks: {type(error).__name__}: {error}"
        ) from error
    if not isinstance(h, Tensor) or h.ndim != 2 or h.shape[0] != x.shape[0]:
        raise ValueError(f"blocks must map x (N, d) to outputs (N, d'), got {getattr(h, 'shape', type(h).__name__)}")
    u = torch.randn(h.shape, generator=generator, dtype=h.dtype).to(h.device)
    grads = torch.autograd.grad((h * u / u.norm(dim=1, keepdim=True)).sum(), inputs, allow_unused=True)
    norms = [torch.zeros((), dtype=h.dtype, device=h.device) if g is None else g.norm(dim=1).mean() for g in grads]
    return torch.stack(norms).flip(0).detach().cpu()


@renamed_kwargs(n_steps="n_iter")
def lower_bound(
    model: nn.Module,
    x: Tensor,
    *,
    n_iter: int = 50,
    step_size: float | None = None,
    n_starts: int = 8,
    generator: torch.Generator | None = None,
) -> Tensor:
    r"""An empirical lower bound of the Lipschitz constant (L2): a value the network attains.

    1. At every point :math:`x_b` of the batch, the Jacobian spectral norm
       :math:`\|J_f(x_b)\|_2` (exact SVD of the Jacobian from ``torch.func.jacrev`` when
       batch x outputs x inputs is at most :math:`2^{22}`, otherwise power iteration with
       jvp/vjp). Wherever :math:`f` is differentiable,
       :math:`\|J_f(x)v\| = \lim_{t\to0}\|f(x + tv) - f(x)\|/t \le \operatorname{Lip}(f)`.
    2. From the ``n_starts`` points of largest Jacobian norm, pairs
       :math:`(a, b) = (x_b, x_b + \delta)` with a small :math:`\delta` along the top singular
       vector plus a random direction are moved by Adam (``n_iter`` steps) to increase
       :math:`\log \|f(a) - f(b)\| - \log \|a - b\|`, with :math:`\|a - b\|` kept above a
       floor so that the quotient is not rounding noise [virmaux2018lipschitz].

    Every value considered is a Jacobian norm or a quotient :math:`\|f(a)-f(b)\|/\|a-b\|` computed
    at actual points, in float64 (on float64 copies of the parameters), so the maximum returned
    is a lower bound of the network's Lipschitz constant (for Jacobians, at points where the
    network is differentiable: almost every point for the layers supported here).

    The model is put in evaluation mode during the computation and every module's mode is
    restored afterwards. Batches are split into single samples (``torch.func``), so no layer
    sees two points at once.

    Args:
        model: any ``nn.Module`` mapping ``(N, *input_shape)`` to a tensor.
        x: ``(N, *input_shape)`` points, finite, N >= 1.
        n_iter: gradient-ascent steps (0: Jacobian norms only); ``n_steps`` is its deprecated
            name.
        step_size: Adam learning rate; default ``0.05 * rms(x)`` (0.05 when x is all zeros).
        n_starts: how many of the best points start an ascent.
        generator: seeds the random directions (CPU generator).

    Returns:
        A 0-dim float64 tensor on the CPU.

    Raises:
        TypeError: ``model`` not an ``nn.Module``; ``x`` not a floating tensor; a model that
            does not return a tensor.
        ValueError: empty ``x``, NaN/Inf in ``x``, ``n_iter`` < 0, ``n_starts`` < 1,
            ``step_size`` <= 0, or an ``x`` that does not fit the model.

    References:
        [virmaux2018lipschitz], [szegedy2014intriguing].
    """
    model = _check_model(model)
    x = _check_points(x)
    n_iter = check_int(n_iter, "n_iter", 0)
    n_starts = check_int(n_starts, "n_starts", 1)
    if step_size is not None:
        check_number(step_size, "step_size", minimum=0.0, strict=True)
    check_generator(generator)
    with eval_mode(model), _preserved_state(model):
        return _with_autograd(_lower_bound)(model, x, n_iter, step_size, n_starts, generator)


def _lower_bound(model, x, n_steps, step_size, n_starts, generator) -> Tensor:
    device = _compute_device(model_device(model, x.device))  # the model's device; x is moved there
    f = _float64_function(model, device)
    f1 = _per_sample(f)
    X = _normal_tensor(x.to(device=device, dtype=torch.float64))
    try:
        with torch.no_grad():
            f(X[:1])
    except TypeError:
        raise
    except Exception as error:  # noqa: BLE001 - any failure means x does not fit
        raise ValueError(
            f"x of shape {tuple(x.shape)} does not fit the model: {type(error).__name__}: {error}"
        ) from error
    norms, vectors = _jacobian_norms(f1, X, generator)
    best = norms.max().item()
    if n_steps == 0:
        return torch.tensor(best, dtype=torch.float64)

    B, n = X.shape[0], X[0].numel()
    rms = X.pow(2).mean().sqrt().item()
    scale = rms if rms > 0 else 1.0
    lr = float(step_size) if step_size is not None else 5e-2 * scale
    radius, floor = 1e-2 * scale * math.sqrt(n), 1e-6 * scale * math.sqrt(n)
    index = norms.argsort(descending=True)[: min(n_starts, B)]
    noise = torch.randn((len(index), n), generator=generator, dtype=torch.float64).to(device)
    noise = noise / torch.linalg.vector_norm(noise, dim=1, keepdim=True).clamp_min(1e-300)
    direction = vectors[index] + 0.5 * noise
    direction = direction / torch.linalg.vector_norm(direction, dim=1, keepdim=True).clamp_min(1e-300)
    a = X[index].reshape(len(index), n).clone().requires_grad_(True)
    d = (radius * direction).requires_grad_(True)
    vmapped = torch.func.vmap(f1)

    def batched(A: Tensor) -> Tensor:
        try:
            return vmapped(A)
        except (RuntimeError, NotImplementedError):  # an op without batching rule: one by one
            return torch.stack([f1(row) for row in A])

    shape = X.shape[1:]

    def ratios() -> tuple[Tensor, Tensor]:
        b = a + d
        outputs = batched(torch.cat([a, b]).reshape(-1, *shape))
        num = torch.linalg.vector_norm(outputs[: len(a)] - outputs[len(a) :], dim=1)
        den = torch.linalg.vector_norm(b - a, dim=1)
        return num, den

    optimizer = torch.optim.Adam([a, d], lr=lr)
    for step in range(n_steps + 1):
        num, den = ratios()
        valid = den > 0
        if valid.any():
            best = max(best, (num[valid] / den[valid]).max().item())
        if step == n_steps:
            break
        loss = -(torch.log(num.clamp_min(1e-300)) - torch.log(den.clamp_min(1e-300))).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            length = torch.linalg.vector_norm(d, dim=1, keepdim=True)
            d.mul_(torch.where(length < floor, floor / length.clamp_min(1e-300), torch.ones_like(length)))
            if not (torch.isfinite(a).all() and torch.isfinite(d).all()):
                break
    return torch.tensor(best, dtype=torch.float64)


# ----------------------------------------------------------------------------- report


def _layer_lower(layer: _Layer, upper: float, generator) -> tuple[float, str]:
    """A value the layer's Lipschitz constant attains (see :func:`report`)."""
    module, kind = layer.module, layer.kind
    if kind in ("activation", "batchnorm", "reshape", "dropout", "pad"):
        return upper, "closed form (attained)"
    if kind == "upsample" and module.mode in ("nearest", "nearest-exact"):
        return upper, "largest replication count (attained)"
    if kind == "maxpool":
        counts_h, counts_w = _maxpool_counts(module, layer.input_shape, layer.output_shape)
        bump = torch.zeros(layer.input_shape, dtype=torch.float64)
        bump[(0,) * (len(layer.input_shape) - 2) + (counts_h.index(max(counts_h)), counts_w.index(max(counts_w)))] = 1.0
        with torch.no_grad():
            value = torch.linalg.vector_norm(module(bump) - module(torch.zeros_like(bump))).item()
        return value, "one-pixel bump (attained)"
    if kind == "linear":
        W = _f64(module.weight)
        if max(W.shape) <= 1024:
            return torch.linalg.matrix_norm(W, ord=2).item(), "exact (SVD)"
    device = _compute_device(_model_dtype_device(module)[1])
    f = _float64_function(module, device)
    x0 = torch.zeros(layer.input_shape, dtype=torch.float64, device=device)
    if kind in ("linear", "conv2d", "avgpool", "convtranspose2d", "upsample"):  # affine: power iteration on f(v) - f(0)
        f0 = f(x0).detach()
        _, vjp = torch.func.vjp(f, x0)
        value = spectral.power_iteration(
            lambda v: f(v) - f0, adjoint=lambda u: vjp(u)[0], input_shape=x0.shape,
            dtype=torch.float64, device=device, n_iter=200, tol=1e-9, generator=generator,
        )  # fmt: skip
        return value.item(), "power iteration (attained)"
    # declared: Jacobian norms at a few random points, by power iteration
    best = 0.0
    for _ in range(4):
        point = torch.randn(layer.input_shape, generator=generator, dtype=torch.float64).to(device)
        _, vjp = torch.func.vjp(f, point)
        value = spectral.power_iteration(
            lambda v: _jvp(f, point, v), adjoint=lambda u: vjp(u)[0],
            input_shape=point.shape, dtype=torch.float64, device=device, n_iter=50, tol=1e-6,
            generator=generator,
        )  # fmt: skip
        best = max(best, value.item())
    return best, "Jacobian norm at random points (attained)"


@renamed_kwargs(n_steps="n_iter")
def report(
    model: nn.Module,
    x: Tensor,
    input_shape: Sequence[int] | int | None = None,
    *,
    n_iter: int = 50,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
    graph: bool | None = None,
    fold_batchnorm: bool = True,
) -> LipschitzReport | GraphReport:
    r"""Both sides of the Lipschitz constant, per layer and for the network.

    Per layer: ``upper`` from :func:`layer_bounds`, and ``lower``, a value the layer's own
    Lipschitz constant attains: for Linear, the exact norm (SVD, up to 1024 on a side) or power
    iteration; for Conv2d, AvgPool and AdaptiveAvgPool, power iteration on
    :math:`v \mapsto f(v) - f(0)` with the adjoint from a vjp, which ends with
    :math:`\|f(v) - f(0)\|` for a unit :math:`v` (attained); for MaxPool2d, the quotient of a
    one-pixel bump at the most shared pixel (equal to the bound: it is exact); for activations,
    BatchNorm (eval), reshapes and dropout, the closed form itself (their constant is attained,
    or approached, e.g. ELU's :math:`\alpha` as :math:`t \to 0^-`); for declared layers, the
    largest Jacobian norm at four random Gaussian points. For the network: ``upper`` the product,
    ``lower`` from :func:`lower_bound` at ``x``, and their ratio, an upper bound of how much the
    product overestimates the constant.

    **Traced models** (every model :func:`upper_bound` walks as a graph) get a
    :class:`GraphReport`: one :class:`NodeReport` per node that depends on the input (its own
    certified bound ``factor``, a value its own map attains ``lower`` where cheap: the layers
    above, closed forms; the bound from the model's input to it; where residual sums and
    concatenations enter), and one :class:`BlockReport` per sum or concatenation: the sub-network
    from the node every path to it goes through (its immediate dominator) to it, with the block's
    own certified bound (the walk started there) and the largest Jacobian norm of the block found
    by power iteration at the values that node takes on the first two points of ``x``
    (attained). The gap per block shows where the sum rule and the layer products are loose.

    Args:
        model, tol: see :func:`layer_bounds`.
        graph, fold_batchnorm: see :func:`upper_bound`.
        x: ``(N, *input_shape)`` points for :func:`lower_bound`.
        input_shape: the shape of one input without the batch dimension; default
            ``x.shape[1:]`` (given, it must equal it).
        n_iter: gradient-ascent steps of :func:`lower_bound` (``n_steps``: deprecated name).
        generator: seeds the power iterations and the ascent.

    Returns:
        A :class:`LipschitzReport` for Sequentials, a :class:`GraphReport` for traced models
        (``print`` either for an aligned table; ``to_dict()`` for JSON).

    Raises:
        The errors of :func:`layer_bounds` and :func:`lower_bound`; ValueError when
        ``x.shape[1:]`` is not ``input_shape``.

    References:
        [virmaux2018lipschitz], [delattre2023efficient].
    """
    model = _check_model(model)
    x = _check_points(x)
    if x.ndim < 2:
        raise ValueError(f"x must be a batch (N, *input_shape) with at least 2 dimensions, got shape {tuple(x.shape)}")
    shape = tuple(x.shape[1:]) if input_shape is None else _check_input_shape(input_shape)
    if tuple(x.shape[1:]) != shape:
        raise ValueError(
            f"x has shape {tuple(x.shape)}, which does not match input_shape {shape} (plus the batch "
            "dimension); omit input_shape to use x.shape[1:]"
        )
    n_iter = check_int(n_iter, "n_iter", 0)
    check_generator(generator)
    _check_graph_options(graph, fold_batchnorm)
    if _use_graph(model, graph):
        return _graph_report(model, x, shape, check_tol(tol), fold_batchnorm, n_iter, generator)
    layers, rows = _rows(model, shape, tol)
    table = []
    for layer, row in zip(layers, rows):
        with _preserved_state(layer.module):
            lower, lower_method = _with_autograd(_layer_lower)(layer, row.upper, generator)
        table.append(LayerReport(row.name, row.kind, row.input_shape, row.upper, lower, row.method, lower_method))
    upper = math.prod(row.upper for row in rows)
    lower = lower_bound(model, x, n_iter=n_iter, generator=generator).item()
    ratio = upper / lower if lower > 0 else math.inf
    return LipschitzReport(table, upper, lower, ratio)
