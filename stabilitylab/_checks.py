"""Argument checks shared by the modules.

Each check returns the normalized value or raises a ``ValueError``/``TypeError`` whose message names
the argument and shows the bad value. Modules import these instead of writing their own.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset


def check_int(value, name: str, minimum: int = 1) -> int:
    """``value`` as an int when it is an integer (not a bool) ``>= minimum``.

    Raises:
        TypeError: ``value`` is not an integer (floats, bools, strings, tensors).
        ValueError: ``value < minimum``.
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_pair(value, name: str, minimum: int = 1) -> tuple[int, int]:
    """``(a, b)`` from an int or a pair of ints, each ``>= minimum`` (kernel sizes, strides, image sizes)."""
    pair = (value, value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if (
        not isinstance(pair, (Sequence, torch.Size))
        or isinstance(pair, str)
        or len(pair) != 2
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= minimum for v in pair)
    ):
        raise ValueError(f"{name} must be an int >= {minimum} or a pair of them, got {value!r}")
    return int(pair[0]), int(pair[1])


def check_shape(value, name: str = "input_shape", *, min_dims: int = 1) -> tuple[int, ...]:
    """A shape without the batch dimension: an int (one dimension) or a sequence of ints ``>= 1``."""
    shape = (value,) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value
    if (
        not isinstance(shape, (Sequence, torch.Size))
        or isinstance(shape, str)
        or len(shape) < min_dims
        or not all(isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= 1 for v in shape)
    ):
        raise ValueError(
            f"{name} must be a sequence of at least {min_dims} ints >= 1 (the shape without the batch "
            f"dimension), got {value!r}"
        )
    return tuple(int(v) for v in shape)


def check_number(value, name: str, *, minimum: float | None = None, maximum: float | None = None,
                 strict: bool = False) -> float:
    """A finite real number (not a bool) within ``[minimum, maximum]`` (open ends when ``strict``)."""
    if isinstance(value, Tensor) and value.numel() == 1 and not value.requires_grad:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    low_bad = minimum is not None and (value <= minimum if strict else value < minimum)
    high_bad = maximum is not None and (value >= maximum if strict else value > maximum)
    if low_bad or high_bad:
        lo = "(" if strict else "["
        hi = ")" if strict else "]"
        span = f"{lo}{'-inf' if minimum is None else minimum}, {'inf' if maximum is None else maximum}{hi}"
        raise ValueError(f"{name} must be a number in {span}, got {value!r}")
    return value


def check_positive(value, name: str) -> float:
    """A finite real number ``> 0``."""
    return check_number(value, name, minimum=0.0, strict=True)


def check_tol(tol, name: str = "tol", *, allow_none: bool = False) -> float | None:
    """A relative tolerance in ``(0, 1)`` (or None when ``allow_none``)."""
    if tol is None and allow_none:
        return None
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not 0 < tol < 1:
        raise ValueError(f"{name} must be a number in (0, 1), got {tol!r}")
    return float(tol)


def check_choice(value, name: str, choices: Sequence[str]) -> str:
    """``value`` when it is one of ``choices``."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


def check_generator(generator) -> torch.Generator | None:
    """``generator`` when it is None or a ``torch.Generator``, else a TypeError."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator


def check_tensor(x, name: str = "x", *, floating: bool = True, min_dims: int = 0, max_dims: int | None = None,
                 finite: bool = True, nonempty: bool = True) -> Tensor:
    """A tensor with a floating dtype (when ``floating``), a number of dimensions in range, and no NaN/Inf.

    Raises:
        TypeError: not a tensor, or an integer/bool/complex tensor where a floating one is needed.
        ValueError: the wrong number of dimensions, no entries, or NaN/Inf entries.
    """
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if floating and not x.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {x.dtype}")
    if x.ndim < min_dims or (max_dims is not None and x.ndim > max_dims):
        want = f">= {min_dims}" if max_dims is None else (
            f"{min_dims}" if max_dims == min_dims else f"{min_dims} to {max_dims}")
        raise ValueError(f"{name} must have {want} dimensions, got shape {tuple(x.shape)}")
    if nonempty and x.numel() == 0:
        raise ValueError(f"{name} must not be empty, got shape {tuple(x.shape)}")
    if finite and x.device.type != "meta" and x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or Inf entries")
    return x


def check_batch(x, name: str = "x", *, input_shape: Sequence[int] | None = None) -> Tensor:
    """A finite floating batch ``(N, *input_shape)`` with ``N >= 1`` (and the given trailing shape)."""
    check_tensor(x, name, min_dims=1)
    if x.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty batch (N, *input_shape), got shape {tuple(x.shape)}")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(
            f"{name} must have shape (N, {', '.join(map(str, input_shape))}), got {tuple(x.shape)}")
    return x


def check_progress(progress) -> bool:
    """``progress`` as a bool; ``None`` shows bars unless the environment sets ``TQDM_DISABLE``."""
    import os

    if progress is None:
        flag = os.environ.get("TQDM_DISABLE", "").strip().lower()
        return flag in ("", "0", "false", "no", "off")
    if not isinstance(progress, bool):
        raise TypeError(f"progress must be a bool or None, got {progress!r}")
    return progress


def check_radii(eps, name: str = "eps") -> tuple[list[float], bool]:
    """``(values, scalar)`` from one radius ``>= 0`` (a number or 0-d tensor) or a 1-D sequence of them.

    ``scalar`` says whether a single number was given (functions return a float for it).
    """
    if not isinstance(eps, (Tensor, numbers.Real, str)) and hasattr(eps, "__array__"):
        eps = torch.as_tensor(eps.__array__(), dtype=torch.float64)
    if isinstance(eps, Tensor) and eps.ndim == 0 or isinstance(eps, numbers.Real) and not isinstance(eps, bool):
        return [_radius(eps, name)], True
    if isinstance(eps, Tensor):
        if eps.ndim != 1:
            raise ValueError(f"{name} must be a number or a 1-D sequence, got a tensor of shape {tuple(eps.shape)}")
        return [_radius(v, name) for v in eps.tolist()], False
    if isinstance(eps, Sequence) and not isinstance(eps, str):
        return [_radius(v, name) for v in eps], False
    raise TypeError(f"{name} must be a number or a sequence of numbers, got {type(eps).__name__}")


def _radius(value, name: str) -> float:
    if isinstance(value, Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must hold scalars, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must hold real numbers, got {value!r}")
    value = float(value)
    if math.isnan(value) or value < 0:
        raise ValueError(f"{name} must hold radii >= 0, got {value!r}")
    return value


def as_tensor_pair(data) -> tuple[Tensor, Tensor] | None:
    """``(inputs, labels)`` from a pair of tensors or a two-tensor ``TensorDataset``, else None."""
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    return None


def check_data(data, name: str = "data") -> None:
    """TypeError/ValueError naming ``name`` for data that :func:`stabilitylab.train.batches` cannot iterate."""
    if isinstance(data, DataLoader):
        return
    tensors = as_tensor_pair(data)
    if tensors is not None:
        x, y = tensors
        if x.ndim < 1 or y.ndim < 1:  # labels (N,) for classes, (N, *target_shape) for regression
            raise ValueError(
                f"{name} must hold inputs (N, *input_shape) and labels or targets (N, ...), got shapes "
                f"{tuple(x.shape)} and {tuple(y.shape)}")
        if len(x) != len(y):
            raise ValueError(f"{name}: {len(x)} inputs but {len(y)} labels")
        if len(x) == 0:
            raise ValueError(f"{name} is empty")
        return
    if isinstance(data, Dataset):
        try:
            size = len(data)  # type: ignore[arg-type]
        except TypeError:
            return  # an iterable-style data set: its length is unknown
        if size == 0:
            raise ValueError(f"{name} is empty")
        return
    raise TypeError(
        f"{name} must be a Dataset, a DataLoader or an (inputs, labels) pair of tensors, got {type(data).__name__}"
    )
