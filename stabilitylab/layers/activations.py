"""Gradient-norm-preserving activations: GroupSort and MaxMin [anil2019sorting]."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stabilitylab._checks import check_int

__all__ = ["GroupSort", "MaxMin"]


class GroupSort(nn.Module):
    r"""Sort the channels within consecutive groups, in descending order.

    For an input ``(N, C, *)`` with ``C`` divisible by ``group_size``, channels
    ``[g * group_size, (g + 1) * group_size)`` are sorted from largest to smallest, independently
    at every position. On each region where the order does not change the map is a permutation,
    so it is 1-Lipschitz in L2 and its Jacobian is orthogonal: gradients keep their norm, which
    ReLU (which zeroes half of them) does not [anil2019sorting]. ``group_size=2`` is
    :class:`MaxMin`; ``group_size=C`` sorts all channels ("FullSort").

    Args:
        group_size: channels per group (>= 2).

    Raises:
        TypeError or ValueError: ``group_size`` not an int >= 2, or (at call time) an input
            without a channel dimension or with a channel count it does not divide.
    """

    lipschitz_constant = 1.0

    def __init__(self, group_size: int = 2) -> None:
        super().__init__()
        self.group_size = check_int(group_size, "group_size", 2)

    def forward(self, x: Tensor) -> Tensor:
        if not isinstance(x, Tensor):
            raise TypeError(f"GroupSort: x must be a torch.Tensor, got {type(x).__name__}")
        if x.ndim < 2 or x.shape[1] % self.group_size:
            raise ValueError(
                f"GroupSort({self.group_size}): x must have shape (N, C, ...) with C divisible by "
                f"{self.group_size}, got {tuple(x.shape)}"
            )
        n, c = x.shape[:2]
        grouped = x.reshape(n, c // self.group_size, self.group_size, *x.shape[2:])
        return torch.sort(grouped, dim=2, descending=True).values.reshape(x.shape)

    def extra_repr(self) -> str:
        return f"group_size={self.group_size}"


class MaxMin(GroupSort):
    r"""``GroupSort(2)``: channels ``(2i, 2i+1)`` become ``(max, min)`` of the pair.

    The same function as ``GroupSort(group_size=2)``, with the same channel order (maximum
    first), so that the two names never disagree.
    """

    def __init__(self) -> None:
        super().__init__(group_size=2)

    def extra_repr(self) -> str:
        return ""
