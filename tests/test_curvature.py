"""Loss under random weight perturbations, against the closed form of a quadratic loss."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab import curvature


def _least_squares_model(d: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(200, d, generator=g, dtype=torch.float64)
    y = torch.randn(200, 1, generator=g, dtype=torch.float64)
    model = nn.Linear(d, 1, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(torch.linalg.lstsq(x, y).solution.T)  # a minimum: the gradient is 0
    hessian = 2 * x.T @ x / len(x)  # of the mean squared error
    return model, (x, y), hessian


@settings(max_examples=5, deadline=None)
@given(d=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_mean_loss_increase_matches_the_hessian_trace(d, seed):
    """At a minimum of a quadratic, L(w + r u) - L(w) = r^2 u^T H u / 2 exactly, and over
    directions uniform on the sphere its mean is r^2 tr(H) / (2d)."""
    model, data, hessian = _least_squares_model(d, seed)
    mse = nn.functional.mse_loss
    radii = [0.0, 0.1, 0.3]
    losses = curvature.random_perturbation_loss(
        model, data, radii, n_directions=3000, relative=False, loss_fn=mse, generator=torch.Generator().manual_seed(seed)
    )
    base = mse(model(data[0]), data[1]).item()
    assert torch.allclose(losses[0], torch.full_like(losses[0], base))
    for i, r in enumerate(radii[1:], 1):
        increase = losses[i] - base
        expected = r**2 * torch.trace(hessian).item() / (2 * d)
        # the quadratic form is bounded by the extreme eigenvalues, for every direction
        eig = torch.linalg.eigvalsh(hessian)
        assert (increase >= r**2 * eig[0] / 2 - 1e-9).all() and (increase <= r**2 * eig[-1] / 2 + 1e-9).all()
        stderr = increase.std().item() / len(increase) ** 0.5
        assert abs(increase.mean().item() - expected) < 5 * stderr + 1e-12


def test_relative_perturbations_scale_with_each_tensor():
    model, data, _ = _least_squares_model(4, 0)
    mse = nn.functional.mse_loss
    scaled = nn.Linear(4, 1, bias=False).double()
    with torch.no_grad():
        scaled.weight.copy_(10 * model.weight)
    x, y = data
    # a relative perturbation of the 10x model is a 10x perturbation in absolute terms
    a = curvature.random_perturbation_loss(model, data, [0.5], n_directions=4, loss_fn=mse, generator=torch.Generator().manual_seed(1))
    b = curvature.random_perturbation_loss(scaled, (x, 10 * y), [0.5], n_directions=4, loss_fn=mse, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(100 * a, b)
    assert model.weight.grad is None


def test_bad_arguments():
    model, data, _ = _least_squares_model(3, 0)
    with pytest.raises(ValueError, match="radii"):
        curvature.random_perturbation_loss(model, data, [-1.0])
    with pytest.raises(ValueError, match="n_directions"):
        curvature.random_perturbation_loss(model, data, [1.0], n_directions=0)
    with pytest.raises(TypeError, match="data"):
        curvature.random_perturbation_loss(model, [1, 2, 3], [1.0])
