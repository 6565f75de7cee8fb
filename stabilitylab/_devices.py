"""One convention for devices: work runs where the model is, and the data is moved there.

Nothing in the package moves a model unless a ``device=`` argument says so.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def model_device(model: nn.Module, default: torch.device | str | None = None) -> torch.device:
    """The device of the model's first parameter or buffer (``default``, else the CPU, when it has none)."""
    if not isinstance(model, nn.Module):
        return torch.device(default) if default is not None else torch.device("cpu")
    for tensor in (*model.parameters(), *model.buffers()):
        return tensor.device
    return torch.device(default) if default is not None else torch.device("cpu")


def model_dtype(model: nn.Module, default: torch.dtype | None = None) -> torch.dtype:
    """The dtype of the model's first floating parameter or buffer (``default`` or torch's default otherwise)."""
    if isinstance(model, nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return default if default is not None else torch.get_default_dtype()


def to_model_device(model: nn.Module, *tensors: Tensor | None) -> tuple[Tensor | None, ...]:
    """``tensors`` moved to the model's device (None stays None); a model without parameters keeps them."""
    has_state = isinstance(model, nn.Module) and any(True for _ in (*model.parameters(), *model.buffers()))
    if not has_state:
        return tensors
    device = model_device(model)
    return tuple(t.to(device) if isinstance(t, Tensor) else t for t in tensors)


def resolve_device(device) -> torch.device | None:
    """``device`` as a ``torch.device`` (None stays None), or a TypeError/ValueError naming ``device``."""
    if device is None or isinstance(device, torch.device):
        return device
    if not isinstance(device, str):
        raise TypeError(f"device must be a str, a torch.device or None, got {type(device).__name__}")
    try:
        return torch.device(device)
    except RuntimeError as error:
        raise ValueError(f"device must name a torch device, got {device!r}") from error
