"""Tests for stabilitylab.losses.lipschitz_penalty: the Gram-iteration Lipschitz penalty
sum_l relu(s_l - tau) against dense float64 operator norms, its gradients, the layers it skips
or refuses, its use as a penalty of train.fit, and argument checks."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from stabilitylab import layers, losses, models, spectral, train
from stabilitylab.losses import lipschitz_penalty

D = torch.float64
SHAPE = (1, 8, 8)


def _cnn(seed: int = 0) -> nn.Sequential:
    return models.cnn(1, 10, input_size=8, channels=(4, 6), hidden=12,
                      generator=torch.Generator().manual_seed(seed)).to(D)


def _dense_norms(model: nn.Module, input_shape) -> list[float]:
    """Every Linear/Conv2d's operator norm from an SVD of its unrolled matrix, in float64, with the
    convolutions' input sizes read off a forward pass."""
    sizes = {}
    hooks = [m.register_forward_pre_hook(lambda m, i: sizes.__setitem__(m, tuple(i[0].shape[-2:])))
             for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.zeros(1, *input_shape, dtype=D))
    for h in hooks:
        h.remove()
    norms = []
    for m in model.modules():
        if isinstance(m, nn.Linear):
            norms.append(float(torch.linalg.matrix_norm(m.weight.detach().to(D), 2)))
        elif isinstance(m, nn.Conv2d):
            M = spectral.conv_operator_matrix(m.weight.detach().to(D), sizes[m], padding=m.padding)
            norms.append(float(torch.linalg.matrix_norm(M, 2)))
    return norms


def test_zero_when_every_layer_is_below_tau():
    model = _cnn()
    norms = _dense_norms(model, SHAPE)
    p = lipschitz_penalty(model, SHAPE, tau=1.01 * max(norms) + 0.01)
    assert p.item() == 0.0
    p.backward()  # differentiable even when zero: every gradient is zero
    assert all(q.grad is None or not q.grad.any() for q in model.parameters())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_the_hinge_of_the_dense_norms_within_the_certified_gap(seed):
    model = _cnn(seed)
    norms = torch.tensor(_dense_norms(model, SHAPE), dtype=D)
    tol = 1e-3
    for tau in (0.0, float(norms.median())):
        p = lipschitz_penalty(model, SHAPE, tau=tau, n_iter=8, tol=tol).item()
        exact = torch.relu(norms - tau).sum().item()
        # certified: never below; within the gap of the bounds above (tol for the convolutions,
        # the converged Gram iteration for the dense layers)
        assert p >= exact - 1e-12
        assert p <= exact + 2 * tol * norms.sum().item() + 1e-9


def test_a_linear_model_gets_the_gram_bound_of_each_weight():
    model = models.mlp(SHAPE, 10, hidden=(32, 16), generator=torch.Generator().manual_seed(3)).to(D)
    weights = [m.weight for m in model.modules() if isinstance(m, nn.Linear)]
    expected = sum(torch.relu(spectral.gram_iteration(W, n_iter=6) - 0.5) for W in weights)
    torch.testing.assert_close(lipschitz_penalty(model, SHAPE, tau=0.5), expected)
    for W in weights:  # and the Gram bound is the norm to a fraction of a percent
        s, exact = spectral.gram_iteration(W, n_iter=6).item(), torch.linalg.matrix_norm(W.detach(), 2).item()
        assert exact <= s <= exact * 1.01


def test_gradient_steps_lower_the_norms_above_tau_and_leave_the_others():
    model = _cnn(4)
    before = _dense_norms(model, SHAPE)
    tau = sorted(before)[1]  # two layers at or below tau, the others above
    for _ in range(5):
        model.zero_grad()
        lipschitz_penalty(model, SHAPE, tau=tau).backward()
        with torch.no_grad():
            for q in model.parameters():
                if q.grad is not None:
                    q -= 0.05 * q.grad
    after = _dense_norms(model, SHAPE)
    for b, a in zip(before, after):
        if b > tau * 1.01:
            assert a < b - 1e-3
        else:
            assert a <= b + 1e-9


def test_the_gradient_of_a_dense_layer_is_the_top_singular_direction():
    W = torch.randn(20, 12, generator=torch.Generator().manual_seed(5), dtype=D)
    model = nn.Sequential(nn.Linear(12, 20).to(D))
    with torch.no_grad():
        model[0].weight.copy_(W)
    lipschitz_penalty(model, 12, tau=0.0, n_iter=8).backward()
    U, S, Vh = torch.linalg.svd(W)
    torch.testing.assert_close(model[0].weight.grad, torch.outer(U[:, 0], Vh[0]), atol=1e-6, rtol=0)


def test_a_convolution_applied_at_two_sizes_counts_with_its_larger_bound():
    conv = nn.Conv2d(2, 2, 3, padding=1).to(D)

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = conv

        def forward(self, x):
            return torch.cat([self.conv(x).flatten(1), self.conv(x[..., :2, :2]).flatten(1)], 1)

    p = lipschitz_penalty(Twice(), (2, 6, 6), tau=0.0).item()
    bounds = [spectral.conv2d_module_norm(conv, n).upper.item() for n in (6, 2)]
    assert p == pytest.approx(max(bounds))


def test_one_lipschitz_layers_are_skipped_and_overridden_forwards_refused():
    model = models.lipschitz_cnn(1, 10, input_size=8, channels=(4,), layer="aol",
                                 generator=torch.Generator().manual_seed(0))
    assert not [m for m in model.modules() if type(m) in (nn.Linear, nn.Conv2d)]
    assert lipschitz_penalty(model, SHAPE, tau=0.0).item() == 0.0  # AOL convs, spectral head

    class Doubled(nn.Linear):
        def forward(self, x):
            return 2 * super().forward(x)

    with pytest.raises(TypeError, match="model"):
        lipschitz_penalty(nn.Sequential(Doubled(4, 4)), 4)
    aol = nn.Sequential(layers.AOLLinear(4, 4))
    assert lipschitz_penalty(aol, 4, tau=0.0).item() == 0.0


def test_modes_are_restored_and_the_result_is_in_the_models_dtype():
    model = _cnn().float().train()
    model[1].eval()
    p = lipschitz_penalty(model, SHAPE)
    assert p.dtype == torch.float32 and p.ndim == 0
    assert model.training and not model[1].training and model[0].training


def test_as_a_penalty_of_fit_it_lowers_the_product_of_norms():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, *SHAPE, generator=g), torch.randint(0, 10, (64,), generator=g)

    def trained(r):
        model = models.cnn(1, 10, input_size=8, channels=(4, 6), hidden=12,
                           generator=torch.Generator().manual_seed(1))
        train.fit(model, (x, y), epochs=3, batch_size=16, lr=1e-2, progress=False,
                  penalty=lambda m, xb, yb, loss: r * lipschitz_penalty(m, SHAPE, tau=0.5),
                  generator=torch.Generator().manual_seed(2))
        return torch.tensor(_dense_norms(model.double(), SHAPE)).prod().item()

    assert trained(1.0) < trained(0.0)


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(model="net"), TypeError, "model"),
    (dict(input_shape=(0, 8, 8)), ValueError, "input_shape"),
    (dict(input_shape="1x8x8"), ValueError, "input_shape"),
    (dict(input_shape=(3, 8, 8)), ValueError, "input_shape"),  # the model cannot run on it
    (dict(tau=-0.1), ValueError, "tau"),
    (dict(tau=float("nan")), ValueError, "tau"),
    (dict(tau="1"), TypeError, "tau"),
    (dict(n_iter=0), ValueError, "n_iter"),
    (dict(n_iter=2.5), TypeError, "n_iter"),
    (dict(tol=0.0), ValueError, "tol"),
    (dict(tol=1.5), ValueError, "tol"),
])
def test_bad_arguments_are_named(kwargs, error, name):
    call = dict(model=_cnn(), input_shape=SHAPE, tau=1.0, n_iter=6, tol=1e-3)
    call.update(kwargs)
    with pytest.raises(error, match=name):
        lipschitz_penalty(call.pop("model"), call.pop("input_shape"), **call)


def test_non_finite_weights_are_refused():
    model = _cnn()
    with torch.no_grad():
        model[0].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        lipschitz_penalty(model, SHAPE)


def test_an_unused_convolution_is_refused():
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 2, 3)
            self.head = nn.Linear(64, 3)

        def forward(self, x):
            return self.head(x.flatten(1))

    with pytest.raises(ValueError, match="not applied"):
        lipschitz_penalty(Unused(), SHAPE)
    assert losses.lipschitz_penalty(nn.Sequential(nn.ReLU()), 4).item() == 0.0
