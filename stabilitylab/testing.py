"""Helpers for testing Lipschitz guarantees: parameters an adversary would pick.

A layer that claims to be 1-Lipschitz "whatever its parameters" should be tested far from its
initialization; :func:`scramble_parameters` puts it there, reproducibly.
"""

from __future__ import annotations

import torch
from torch import nn

from stabilitylab._checks import check_generator, check_number

__all__ = ["scramble_parameters"]


def scramble_parameters(
    module: nn.Module,
    *,
    scale: float = 1.0,
    noise: float = 1.0,
    weights_only: bool = False,
    generator: torch.Generator | None = None,
) -> nn.Module:
    r"""Move every parameter far from its initialization, in place: :math:`p \leftarrow s\,p + \nu\,\xi`.

    Each parameter is multiplied by ``scale`` and i.i.d. :math:`\mathcal N(0, \nu^2)` noise is added
    (drawn in the parameter's dtype on the CPU, then moved to its device, so that a seed gives the
    same parameters on every device). ``scale=0`` replaces the parameters by pure noise.

    Args:
        module: the module whose parameters are changed (and returned).
        scale: the factor :math:`s` applied first (finite).
        noise: the standard deviation :math:`\nu \ge 0` of the added noise.
        weights_only: leave parameters whose name ends in ``bias`` unchanged.
        generator: a CPU ``torch.Generator`` for the noise; None uses the global generator.

    Returns:
        ``module``, for chaining.
    """
    if not isinstance(module, nn.Module):
        raise TypeError(f"module must be an nn.Module, got {type(module).__name__}")
    scale = check_number(scale, "scale")
    noise = check_number(noise, "noise", minimum=0.0)
    check_generator(generator)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if weights_only and name.endswith("bias"):
                continue
            xi = torch.randn(p.shape, generator=generator, dtype=p.dtype)
            p.mul_(scale).add_(noise * xi.to(p.device))
    return module
