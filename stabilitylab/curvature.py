"""Sensitivity to parameters: how the loss moves when the weights move.

For now this holds the first, model-free probe of the book's third view: the loss under random
weight perturbations of growing size (average-case sharpness). Hessian spectra, SAM and
landscapes build on it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call
from tqdm import tqdm

__all__ = ["random_perturbation_loss"]


def _check_data(data) -> tuple[Tensor, Tensor]:
    if not (isinstance(data, (tuple, list)) and len(data) == 2 and all(isinstance(t, Tensor) for t in data)):
        raise TypeError("data must be an (inputs, labels) pair of tensors")
    x, y = data
    if len(x) == 0 or len(x) != len(y):
        raise ValueError(f"data must hold as many labels as inputs (> 0), got {len(x)} and {len(y)}")
    return x, y


@torch.no_grad()
def random_perturbation_loss(
    model: nn.Module,
    data: tuple[Tensor, Tensor],
    radii: Sequence[float] | Tensor,
    *,
    n_directions: int = 8,
    relative: bool = True,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    generator: torch.Generator | None = None,
    batch_size: int = 4096,
    progress: bool = False,
) -> Tensor:
    r"""Loss of the model with its weights moved by random directions of given sizes.

    For each radius :math:`r` and each of ``n_directions`` Gaussian directions :math:`u`, the
    loss :math:`L(\theta + r\,d(u))` is computed, where :math:`d(u)` rescales each parameter
    tensor's part of :math:`u` to the norm of that tensor when ``relative`` (a layer-wise relative
    perturbation, insensitive to the rescalings a ReLU network allows; Li et al. 2018
    [li2018visualizing]) and, otherwise, scales the whole direction to unit norm. The same
    directions are reused at every radius, so each row of the result traces one slice of the loss.

    Around a minimum with Hessian :math:`H`, in the absolute mode,
    :math:`\mathbb{E}_u L(\theta + r u) - L(\theta) \approx r^2 \operatorname{tr}(H) / (2P)`
    with :math:`P` parameters: an average-case sharpness [keskar2017large].

    Args:
        model: evaluated in eval mode through ``torch.func.functional_call``; left unchanged.
        data: ``(inputs, labels)`` tensors on which the mean loss is taken.
        radii: perturbation sizes, ``(R,)``, each >= 0.
        n_directions: number of random directions.
        relative: layer-wise relative sizes (True) or absolute sizes (False).
        loss_fn: ``(outputs, labels) -> mean loss``; default cross-entropy.
        generator: for the directions (reproducibility); sampled on the CPU then moved.
        batch_size: inputs per forward pass.
        progress: a progress bar over directions.

    Returns:
        ``(R, n_directions)`` tensor of losses (on the CPU, the model's dtype).

    Raises:
        ValueError: negative or non-finite radii, ``n_directions`` < 1, empty data.
        TypeError: data that is not a tensor pair.
    """
    x, y = _check_data(data)
    radii = torch.as_tensor(radii, dtype=torch.float64).flatten()
    if radii.numel() == 0 or not torch.isfinite(radii).all() or (radii < 0).any():
        raise ValueError(f"radii must be a non-empty sequence of finite values >= 0, got {radii.tolist()}")
    if not isinstance(n_directions, int) or n_directions < 1:
        raise ValueError(f"n_directions must be a positive int, got {n_directions!r}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    params = {name: p.detach() for name, p in model.named_parameters()}
    buffers = {name: b for name, b in model.named_buffers()}
    if not params:
        raise ValueError("model has no parameters to perturb")

    def loss_at(state: dict[str, Tensor]) -> float:
        total = 0.0
        for start in range(0, len(x), batch_size):
            xb = x[start : start + batch_size]
            yb = y[start : start + batch_size]
            out = functional_call(model, (state, buffers), (xb,))
            total += loss_fn(out, yb).item() * len(yb)
        return total / len(x)

    was_training = model.training
    model.eval()
    losses = torch.empty(len(radii), n_directions, dtype=torch.float64)
    try:
        for j in tqdm(range(n_directions), desc="directions", disable=not progress, leave=False):
            direction = {
                name: torch.randn(p.shape, generator=generator, dtype=p.dtype).to(p.device) for name, p in params.items()
            }
            if relative:
                for name, d in direction.items():
                    d.mul_(params[name].norm() / d.norm().clamp_min(torch.finfo(d.dtype).tiny))
            else:
                norm = torch.sqrt(sum(d.pow(2).sum() for d in direction.values()))
                for d in direction.values():
                    d.div_(norm)
            for i, r in enumerate(radii.tolist()):
                state = {name: p + r * direction[name] for name, p in params.items()}
                losses[i, j] = loss_at(state)
    finally:
        model.train(was_training)
    return losses.to(next(iter(params.values())).dtype)
