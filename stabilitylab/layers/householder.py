r"""The Householder activation [singla2022improved]: a learnable, gradient-norm-preserving
piecewise-linear activation that generalizes MaxMin."""

from __future__ import annotations

import copy
import math

import torch
from torch import Tensor, nn

from stabilitylab._checks import check_int
from stabilitylab.layers._common import _Validated

__all__ = ["Householder"]


class Householder(_Validated, nn.Module):
    r"""Householder activation on channel groups [singla2022improved].

    The channels are split into groups :math:`z \in \mathbb{R}^g` of ``group_size`` consecutive
    channels; each group has a learnable unit vector :math:`v` (stored unnormalized, used as
    :math:`v / \|v\|`), and

    .. math:: \sigma_v(z) = \begin{cases} z & v^\top z > 0,\\
        (I - 2 v v^\top) z & v^\top z \le 0, \end{cases}
        \qquad\text{i.e.}\qquad \sigma_v(z) = z - 2 v \min(v^\top z, 0),

    at every position. The two pieces agree on the hyperplane :math:`v^\top z = 0` (there
    :math:`(I - 2vv^\top) z = z`), so :math:`\sigma_v` is continuous and piecewise linear with
    orthogonal pieces (the identity and a reflection). Hence its Jacobian is orthogonal wherever
    it exists (gradient-norm preserving), and along any segment, which crosses the hyperplane at
    most once, :math:`\|\sigma(x) - \sigma(y)\| \le \|x - y\|`: 1-Lipschitz for every :math:`v`.
    With :math:`v = (e_1 - e_2)/\sqrt2` and ``group_size=2`` it is MaxMin (the initialization).
    A zero :math:`v` gives the identity.

    Shapes: ``(N, channels, *) -> (N, channels, *)``; the parameter ``v`` is
    ``(channels // group_size, group_size)``.

    Args:
        channels: the number of channels (divisible by ``group_size``).
        group_size: size of the groups (>= 2; 2 in the paper).
        device, dtype: of the parameter.

    Raises:
        TypeError or ValueError: bad sizes; inputs whose channel dimension is not ``channels``;
            in evaluation mode (untraced), non-finite parameters.
    """

    lipschitz_constant = 1.0

    def __init__(self, channels: int, group_size: int = 2, *, device=None, dtype=None) -> None:
        super().__init__()
        check_int(channels, "channels", 1)
        check_int(group_size, "group_size", 2)
        if channels % group_size:
            raise ValueError(f"channels must be divisible by group_size={group_size}, got {channels!r}")
        self.channels, self.group_size = channels, group_size
        v = torch.zeros(channels // group_size, group_size, device=device, dtype=dtype)
        v[:, 0], v[:, 1] = 1 / math.sqrt(2), -1 / math.sqrt(2)
        self.v = nn.Parameter(v)

    def unit_vectors(self) -> Tensor:
        """:math:`v / \\|v\\|` per group, ``(channels // group_size, group_size)``."""
        norms = torch.linalg.vector_norm(self.v, dim=1, keepdim=True)
        return self.v / norms.clamp_min(torch.finfo(norms.dtype).tiny)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"Householder: x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 2 or x.shape[1] != self.channels:
            raise ValueError(f"Householder: x must have shape (N, {self.channels}, *), got {tuple(x.shape)}")
        self._validate_eval(x)
        groups = x.reshape(x.shape[0], -1, self.group_size, *x.shape[2:])
        v = self.unit_vectors().reshape(1, *self.v.shape, *(1,) * (x.ndim - 2))
        s = (groups * v).sum(dim=2, keepdim=True)
        return (groups - 2 * v * torch.clamp(s, max=0)).reshape(x.shape)

    @torch.no_grad()
    def export_module(self) -> Householder:
        """A frozen copy holding the unit vectors (the activation has no plain torch equivalent;
        it is already cheap).

        Raises:
            ValueError: non-finite parameters."""
        self.check_parameters()
        clone = copy.deepcopy(self)
        clone.v = nn.Parameter(self.unit_vectors().detach().clone(), requires_grad=False)
        return clone

    def extra_repr(self) -> str:
        return f"channels={self.channels}, group_size={self.group_size}"
