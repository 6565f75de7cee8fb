"""Argument checks shared by the modules: each raises an error naming the argument and showing the value."""

from __future__ import annotations

import torch


def check_int(value, name: str, minimum: int = 1) -> int:
    """``value`` when it is an int (not a bool) >= ``minimum``, else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def check_generator(generator) -> torch.Generator | None:
    """``generator`` when it is None or a ``torch.Generator``, else a TypeError."""
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"generator must be a torch.Generator or None, got {type(generator).__name__}")
    return generator
