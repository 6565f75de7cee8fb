"""One convention for a model's train/eval mode: whatever a function switches, it restores.

``torch.nn.Module.eval()`` sets ``training = False`` on every submodule, and restoring only the top
module's flag afterwards would bring a deliberately frozen BatchNorm back in train mode. These
context managers record every submodule's flag and put each back in a ``finally``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn


@contextmanager
def preserved_modes(model: nn.Module) -> Iterator[nn.Module]:
    """Restore the ``training`` flag of ``model`` and of every submodule on exit, whatever happens inside."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    modes = [(module, module.training) for module in model.modules()]
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block, then restore every submodule's own mode."""
    with preserved_modes(model):
        model.eval()
        yield model


@contextmanager
def train_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in train mode for the block, then restore every submodule's own mode."""
    with preserved_modes(model):
        model.train()
        yield model
