"""Export a model of constrained layers to plain torch modules for fast inference.

Training a 1-Lipschitz layer recomputes its constrained weight (a Gram bound, Björck steps, a
rescaling) at every call; after training that weight is fixed, and inference only needs it
once. :func:`export` computes it and swaps every constrained layer for the plain module it
amounts to (``nn.Linear``, ``nn.Conv2d``, or a tiny residual of two of them), with identical
outputs.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["export"]


def _exported(module: nn.Module, name: str) -> nn.Module:
    try:
        result = module.export_module()
    except ValueError as error:
        raise ValueError(f"cannot export {name or '(model)'!r} ({type(module).__name__}): {error}") from error
    if not isinstance(result, nn.Module):
        raise TypeError(f"{type(module).__name__}.export_module returned a {type(result).__name__}, not an nn.Module")
    return result.train(module.training)


def _replace(module: nn.Module, prefix: str) -> None:
    for name, child in list(module.named_children()):
        path = f"{prefix}.{name}" if prefix else name
        if callable(getattr(child, "export_module", None)):
            setattr(module, name, _exported(child, path))
        else:
            _replace(child, path)


@torch.no_grad()
def export(model: nn.Module) -> nn.Module:
    """A copy of ``model`` where every submodule with an ``export_module()`` method (the layers
    of :mod:`stabilitylab.layers`) is replaced by what that method returns.

    The input model is left untouched (the replacement happens on a deep copy). Exported layers
    hold frozen (``requires_grad=False``) copies of their computed weights and give the same
    outputs as the layers they replace (up to rounding); they keep the training flag of the
    original, so call ``.eval()`` as usual. Parameter-free layers (pooling, GroupSort) have no
    ``export_module`` and are kept as they are; a layer whose certified bound depends on the
    image size (:class:`~stabilitylab.layers.SpectralConv2d`,
    :class:`~stabilitylab.layers.CPLConv2d`) is exported for the size it was built for or last
    called on, and the exported module is valid for that size only: a CPLConv2d's
    :class:`~stabilitylab.layers.ExportedResidual` and an SOC layer's
    :class:`~stabilitylab.layers.TruncatedExpConv2d` reject other sizes (``ValueError``), while
    the plain ``nn.Conv2d`` of a SpectralConv2d or a Cayley/BRO convolution is bounded on any
    size by :func:`stabilitylab.lipschitz.upper_bound` from its actual weights. Declared
    ``lipschitz_constant`` attributes survive where the exported module is not a plain layer,
    so :func:`stabilitylab.lipschitz.upper_bound` still applies to the result.

    Args:
        model: any ``nn.Module``.

    Returns:
        The exported copy (or, when ``model`` itself has ``export_module``, its result).

    Raises:
        TypeError: ``model`` is not an ``nn.Module``.
        ValueError: a layer cannot be exported (a size-dependent layer never called, NaN or Inf
            parameters: each layer's ``check_parameters()`` runs first), naming it.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if callable(getattr(model, "export_module", None)):
        return _exported(model, "")
    clone = copy.deepcopy(model)
    _replace(clone, "")
    return clone
