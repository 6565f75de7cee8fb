"""Rounding helpers for certified numbers."""

from __future__ import annotations

import torch
from torch import Tensor


def round_down(value: Tensor, dtype: torch.dtype) -> Tensor:
    """``value`` (float64, >= 0) cast to ``dtype`` rounding towards zero: never above ``value``.

    A certified radius computed in float64 and returned in float32 must not grow in the cast.
    """
    out = value.to(dtype)
    too_big = out.to(value.dtype) > value
    if bool(too_big.any()):
        out = torch.where(too_big, torch.nextafter(out, torch.zeros_like(out)), out)
    return out
