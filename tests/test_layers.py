"""1-Lipschitz layers: their Jacobians' singular values never exceed 1, whatever the parameters."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab import layers


@settings(max_examples=30, deadline=None)
@given(groups=st.integers(1, 4), group_size=st.integers(2, 4), seed=st.integers(0, 10_000))
def test_groupsort_is_a_permutation_with_orthogonal_jacobian(groups, group_size, seed):
    x = torch.randn(1, groups * group_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    layer = layers.GroupSort(group_size)
    y = layer(x)
    assert torch.equal(y.sort().values, x.sort().values)  # a permutation of the inputs
    blocks = y.reshape(groups, group_size)
    assert torch.all(blocks[:, :-1] >= blocks[:, 1:])  # descending within every group
    J = torch.autograd.functional.jacobian(lambda v: layer(v.reshape(1, -1)).flatten(), x.flatten())
    assert torch.allclose(torch.linalg.svdvals(J), torch.ones(x.numel(), dtype=torch.float64))


def test_maxmin_equals_groupsort_of_two_and_works_on_feature_maps():
    x = torch.randn(3, 6, 4, 5)
    assert torch.equal(layers.MaxMin()(x), layers.GroupSort(2)(x))
    y = layers.MaxMin()(x)
    assert torch.equal(y[:, 0], torch.maximum(x[:, 0], x[:, 1]))
    assert torch.equal(y[:, 1], torch.minimum(x[:, 0], x[:, 1]))


def test_groupsort_rejects_bad_sizes():
    with pytest.raises(ValueError, match="group_size"):
        layers.GroupSort(1)
    with pytest.raises(ValueError, match="divisible"):
        layers.GroupSort(4)(torch.randn(2, 6))


@settings(max_examples=25, deadline=None)
@given(m=st.integers(1, 12), n=st.integers(1, 12), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 10_000))
def test_spectral_linear_is_1_lipschitz_for_any_weights(m, n, scale, seed):
    torch.manual_seed(seed)
    layer = layers.SpectralLinear(n, m).double()
    with torch.no_grad():
        layer.weight.mul_(scale).add_(torch.randn_like(layer.weight))
    top = torch.linalg.matrix_norm(layer.normalized_weight(), ord=2).item()
    assert top <= 1 + 1e-12
    assert top >= 0.6  # the bound is tight enough that the layer is not needlessly contracting
    layer.eval()
    assert torch.allclose(layer.normalized_weight(), layer.train().normalized_weight())


def test_spectral_linear_trains():
    torch.manual_seed(0)
    layer = layers.SpectralLinear(4, 3)
    opt = torch.optim.SGD(layer.parameters(), lr=0.1)
    x, target = torch.randn(32, 4), torch.randn(32, 3) * 0.1
    before = torch.nn.functional.mse_loss(layer(x), target).item()
    for _ in range(50):
        opt.zero_grad()
        torch.nn.functional.mse_loss(layer(x), target).backward()
        opt.step()
    assert torch.nn.functional.mse_loss(layer(x), target).item() < before


def test_lipschitz_mlp_is_1_lipschitz_at_every_point():
    from stabilitylab import models

    torch.manual_seed(0)
    net = models.lipschitz_mlp(5, 3, hidden=(8, 6)).double()
    with torch.no_grad():
        for p in net.parameters():
            p.mul_(10)  # whatever the weights
    for _ in range(20):
        x = torch.randn(5, dtype=torch.float64)
        J = torch.autograd.functional.jacobian(lambda v: net(v[None])[0], x)
        assert torch.linalg.matrix_norm(J, ord=2) <= 1 + 1e-12
    with pytest.raises(ValueError, match="group_size"):
        models.lipschitz_mlp(5, 3, hidden=(7,))
