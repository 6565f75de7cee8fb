"""The training loop, the model builders and the plot helpers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

from stabilitylab import data, lipschitz, models, plot, train
from stabilitylab import layers as lip_layers


def test_training_reduces_loss_on_moons():
    moons = data.load_dataset("moons")
    test = data.load_dataset("moons", split="test")
    train.seed_everything(0)
    model = models.mlp(2, 2, hidden=(32, 32))
    before = train.evaluate(model, moons)
    history = train.fit(model, moons, epochs=30, lr=1e-2, test_data=test, device="cpu", progress=False)
    after = train.evaluate(model, moons)
    assert len(history) == 30 and len(history.test_accuracy) == 30
    assert after["loss"] < 0.5 * before["loss"]
    assert history.loss[-1] < history.loss[0]
    assert history.test_accuracy[-1] > 0.9  # moons with noise 0.2 is nearly separable
    assert math.isclose(history.test_accuracy[-1], train.evaluate(model, test)["accuracy"])


def test_fit_is_deterministic_for_a_seed():
    """``seed=`` is the deprecated alias of ``generator=torch.Generator().manual_seed(seed)``."""
    moons = data.load_dataset("moons", n_samples=200)

    def run(**seeding):
        train.seed_everything(3)
        model = models.mlp(2, 2, hidden=(16,))
        train.fit(model, moons, epochs=3, progress=False, device="cpu", **seeding)
        return torch.cat([p.flatten() for p in model.parameters()])

    with pytest.warns(DeprecationWarning, match="generator"):
        old = run(seed=5)
    assert torch.equal(old, run(generator=torch.Generator().manual_seed(5)))
    with pytest.warns(DeprecationWarning):
        assert torch.equal(old, run(seed=5))
    with pytest.raises(TypeError, match="generator"):
        run(seed=5, generator=torch.Generator())


def test_fit_accepts_tensor_pairs_loaders_and_sgd():
    x = torch.randn(64, 3)
    y = (x[:, 0] > 0).long()
    model = models.mlp(3, 2, hidden=(8,))
    history = train.fit(model, (x, y), epochs=2, optimizer="sgd", lr=0.1, progress=False, device="cpu")
    assert len(history.loss) == 2
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=16)
    assert len(train.fit(model, loader, epochs=1, progress=False, device="cpu")) == 1
    assert train.predict(model, x).shape == (64, 2)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"epochs": 0}, "epochs"),
        ({"batch_size": -1}, "batch_size"),
        ({"lr": 0}, "lr"),
        ({"optimizer": "lbfgs"}, "optimizer"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_fit_rejects_bad_arguments(kwargs, match):
    x, y = torch.randn(8, 2), torch.zeros(8, dtype=torch.long)
    with pytest.raises(ValueError, match=match):
        train.fit(models.mlp(2, 2), (x, y), progress=False, **kwargs)


def test_fit_rejects_bad_data():
    with pytest.raises(TypeError, match="data"):
        train.fit(models.mlp(2, 2), [1, 2, 3], progress=False)
    with pytest.raises(ValueError, match="labels"):
        train.fit(models.mlp(2, 2), (torch.randn(4, 2), torch.zeros(3, dtype=torch.long)), progress=False)


@settings(max_examples=15, deadline=None)
@given(
    shape=st.sampled_from([(2,), (1, 8, 8), (3, 4, 5)]),
    hidden=st.lists(st.integers(1, 16), max_size=3),
    classes=st.integers(2, 7),
    activation=st.sampled_from(["relu", "tanh", "gelu", "leaky_relu"]),
)
def test_mlp_shapes(shape, hidden, classes, activation):
    model = models.mlp(shape, classes, hidden=hidden, activation=activation)
    assert model(torch.randn(5, *shape)).shape == (5, classes)
    assert sum(isinstance(m, nn.Linear) for m in model) == len(hidden) + 1


@settings(max_examples=10, deadline=None)
@given(
    channels=st.lists(st.integers(1, 8), min_size=1, max_size=2),
    size=st.sampled_from([8, 12, (8, 16)]),
    in_channels=st.sampled_from([1, 3]),
    pool=st.sampled_from(["max", "avg", "none"]),
)
def test_cnn_shapes(channels, size, in_channels, pool):
    model = models.cnn(in_channels, 4, input_size=size, channels=channels, hidden=8, pool=pool)
    h, w = (size, size) if isinstance(size, int) else size
    assert model(torch.randn(2, in_channels, h, w)).shape == (2, 4)


def test_model_builders_reject_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        models.mlp(2, 2, activation="swishy")
    with pytest.raises(ValueError, match="hidden"):
        models.mlp(2, 2, hidden=(0,))
    with pytest.raises(ValueError, match="kernel_size"):
        models.cnn(1, 2, input_size=8, kernel_size=2)
    with pytest.raises(ValueError, match="input_size"):
        models.cnn(1, 2, input_size=2, channels=(4, 4))
    with pytest.raises(ValueError, match="pool"):
        models.cnn(1, 2, input_size=8, pool="median")


def test_plot_save_writes_where_asked(tmp_path, monkeypatch):
    plot.set_style()
    fig, ax = plot.figure(1, 2)
    assert len(ax) == 2
    monkeypatch.setenv("STABILITYLAB_FIGURES", str(tmp_path))
    assert plot.save(fig, "example") is fig
    assert (tmp_path / "example.png").stat().st_size > 0
    with pytest.raises(ValueError, match="name"):
        plot.save(fig, "a/b")


def test_plot_helpers_draw():
    moons = data.load_dataset("moons", n_samples=100)
    model = models.mlp(2, 2, hidden=(4,))
    x, y = moons.tensors
    ax = plot.decision_boundary(model, x, y, resolution=20)
    assert len(ax.collections) >= 2
    fig = plot.image_grid(torch.rand(5, 1, 8, 8), titles=list("abcde"), ncols=3)
    assert len(fig.axes) == 6


# ----------------------------------------------------------------------------- 1-Lipschitz builders

def _perturb(model: nn.Module, seed: int, scale: float = 0.5) -> nn.Module:
    """Move every parameter randomly: the builders promise 1-Lipschitz for *any* weights."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * p.abs().mean().clamp_min(0.1) * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model


def _jacobians(model: nn.Module, x: Tensor) -> Tensor:
    """(N, C, d): the float64 Jacobian of the logits at every input (autograd, one by one)."""
    model = model.double().eval()
    return torch.stack([
        torch.autograd.functional.jacobian(lambda v: model(v[None])[0], xi).reshape(-1, xi.numel())
        for xi in x.double()
    ])


def _largest_singular_value(model: nn.Module, x: Tensor) -> float:
    return torch.linalg.svdvals(_jacobians(model, x)).max().item()


@settings(max_examples=6, deadline=None)
@given(layer=st.sampled_from(models.LIPSCHITZ_DENSE), seed=st.integers(0, 2**16))
def test_lipschitz_mlp_families_are_1_lipschitz(layer, seed):
    torch.manual_seed(seed)
    model = _perturb(models.lipschitz_mlp((1, 4, 4), 5, hidden=(8, 8), layer=layer), seed)
    x = torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(seed))
    assert model(x).shape == (3, 5)
    assert lipschitz.upper_bound(model, (1, 4, 4)).item() <= 1.0
    assert _largest_singular_value(model, x) <= 1 + 1e-5


@pytest.mark.parametrize("layer", models.LIPSCHITZ_DENSE)
def test_every_dense_family_is_1_lipschitz(layer):
    model = _perturb(models.lipschitz_mlp(6, 3, hidden=(4, 4), layer=layer), 1)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(2))
    assert lipschitz.upper_bound(model, (6,)).item() <= 1.0
    assert _largest_singular_value(model, x) <= 1 + 1e-5


@pytest.mark.parametrize("layer", models.LIPSCHITZ_CONV)
@pytest.mark.parametrize("pool", ["invertible", "avg"])
def test_every_conv_family_is_1_lipschitz(layer, pool):
    torch.manual_seed(0)
    model = _perturb(models.lipschitz_cnn(1, 4, input_size=8, channels=(2, 4), layer=layer, pool=pool, depth=2), 3)
    x = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(4))
    assert model(x).shape == (2, 4)
    assert lipschitz.upper_bound(model, (1, 8, 8)).item() <= 1.0
    assert _largest_singular_value(model, x) <= 1 + 1e-5


@pytest.mark.parametrize("build", [
    lambda: models.lipschitz_mlp(6, 4, hidden=(4,), head="lln"),
    lambda: models.lipschitz_cnn(1, 4, input_size=4, channels=(2,), head="lln"),
])
def test_lln_head_bounds_the_logit_differences(build):
    torch.manual_seed(0)
    model = _perturb(build(), 5)
    assert isinstance(model[-1], lip_layers.LLNLinear)
    shape = (6,) if model[1].__class__.__name__.endswith("Linear") else (1, 4, 4)
    x = torch.randn(3, *shape, generator=torch.Generator().manual_seed(6), dtype=torch.float64)
    J = _jacobians(model, x)  # (N, C, d)
    W = model[-1].normalized_weight().detach()
    for i in range(4):
        for j in range(4):
            difference = torch.linalg.vector_norm(J[:, i] - J[:, j], dim=1).max().item()
            assert difference <= torch.linalg.vector_norm(W[i] - W[j]).item() * (1 + 1e-6) + 1e-9
            assert torch.linalg.vector_norm(W[i] - W[j]).item() <= 2 + 1e-9
    # as a whole the network is ||W||_2-Lipschitz, and upper_bound reads the declared constant
    bound = lipschitz.upper_bound(model, shape).item()
    assert bound >= torch.linalg.matrix_norm(W, ord=2).item() * (1 - 1e-9)
    assert torch.linalg.svdvals(J).max().item() <= bound * (1 + 1e-6)


def test_lipschitz_mlp_default_is_unchanged():
    torch.manual_seed(7)
    model = models.lipschitz_mlp((1, 4, 4), 3, hidden=(8, 6))
    torch.manual_seed(7)
    reference = nn.Sequential(
        nn.Flatten(), lip_layers.SpectralLinear(16, 8, n_iter=6), lip_layers.GroupSort(2),
        lip_layers.SpectralLinear(8, 6, n_iter=6), lip_layers.GroupSort(2), lip_layers.SpectralLinear(6, 3, n_iter=6),
    )
    assert [type(m) for m in model] == [type(m) for m in reference]
    x = torch.randn(5, 1, 4, 4)
    assert torch.equal(model(x), reference(x))


def test_sll_mlp_is_residual_blocks_of_one_width():
    model = models.lipschitz_mlp(10, 3, hidden=(8, 8, 8), layer="sll")
    kinds = [type(m).__name__ for m in model]
    assert kinds == ["Flatten", "AOLLinear", "SLLLinear", "SLLLinear", "SLLLinear", "AOLLinear"]


@settings(max_examples=8, deadline=None)
@given(
    layer=st.sampled_from(models.LIPSCHITZ_CONV),
    channels=st.lists(st.sampled_from([2, 4]), min_size=1, max_size=2),
    size=st.sampled_from([8, (8, 12)]),
    in_channels=st.sampled_from([1, 3]),
    pool=st.sampled_from(["invertible", "avg"]),
)
def test_lipschitz_cnn_shapes(layer, channels, size, in_channels, pool):
    model = models.lipschitz_cnn(in_channels, 5, input_size=size, channels=channels, layer=layer, pool=pool)
    h, w = (size, size) if isinstance(size, int) else size
    assert model(torch.randn(2, in_channels, h, w)).shape == (2, 5)


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda: models.lipschitz_mlp(4, 2, layer="orthogonal"), "layer"),
        (lambda: models.lipschitz_mlp(4, 2, head="softmax"), "head"),
        (lambda: models.lipschitz_mlp(4, 2, hidden=(8, 4), layer="sll"), "hidden"),
        (lambda: models.lipschitz_mlp(4, 2, hidden=(), layer="sll"), "hidden"),
        (lambda: models.lipschitz_mlp(4, 2, hidden=(3,)), "group_size"),
        (lambda: models.lipschitz_mlp(4, 2, group_size=1), "group_size"),
        (lambda: models.lipschitz_cnn(1, 2, input_size=8, layer="lstm"), "layer"),
        (lambda: models.lipschitz_cnn(1, 2, input_size=8, head="sll"), "head"),
        (lambda: models.lipschitz_cnn(1, 2, input_size=8, pool="max"), "pool"),
        (lambda: models.lipschitz_cnn(1, 2, input_size=8, channels=(3,)), "channels"),
        (lambda: models.lipschitz_cnn(1, 2, input_size=6, channels=(2, 2)), "input_size"),
        (lambda: models.lipschitz_cnn(1, 2, input_size=(8, 8, 8)), "input_size"),
        (lambda: models.lipschitz_cnn(1, 2, input_size=8, kernel_size=2), "kernel_size"),
        (lambda: models.lipschitz_cnn(1, 2, input_size=8, depth=0), "depth"),
        (lambda: models.lipschitz_cnn(1, 2, input_size=4, channels=(2, 2), layer="cayley", kernel_size=3), "input_size"),
        (lambda: models.lipschitz_cnn(0, 2, input_size=8), "in_channels"),
    ],
)
def test_lipschitz_builders_reject_bad_arguments(build, match):
    with pytest.raises(ValueError, match=match):
        build()


def test_fit_adds_the_penalty_to_the_gradient():
    """One plain SGD step on loss + c ||W||^2 moves the weights by lr (grad loss + 2 c W)."""
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, dtype=torch.float64), torch.randint(0, 2, (8,))
    model = nn.Linear(3, 2).double()
    start = [p.detach().clone() for p in model.parameters()]
    loss = nn.functional.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, list(model.parameters()))
    c, lr = 0.3, 0.1
    train.fit(model, (x, y), epochs=1, batch_size=8, lr=lr, optimizer="sgd", momentum=0.0, device="cpu",
              penalty=lambda m, xb, yb, loss: c * m.weight.square().sum(), progress=False)
    expected_w = start[0] - lr * (grads[0] + 2 * c * start[0])
    expected_b = start[1] - lr * grads[1]
    assert torch.allclose(model.weight, expected_w) and torch.allclose(model.bias, expected_b)


def test_fit_drives_sam_with_a_second_gradient_at_the_perturbed_weights():
    from stabilitylab import curvature

    torch.manual_seed(1)
    x, y = torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))
    model = nn.Linear(4, 3).double()
    w0 = [p.detach().clone() for p in model.parameters()]
    rho, lr = 0.05, 0.2
    loss = nn.functional.cross_entropy(model(x), y)
    g = torch.autograd.grad(loss, list(model.parameters()))
    norm = torch.sqrt(sum(t.square().sum() for t in g))
    perturbed = [(w + rho * t / norm).requires_grad_() for w, t in zip(w0, g)]
    loss_at = nn.functional.cross_entropy(x @ perturbed[0].T + perturbed[1], y)
    g_at = torch.autograd.grad(loss_at, perturbed)
    train.fit(model, (x, y), epochs=1, batch_size=16, device="cpu", progress=False,
              optimizer=lambda p: curvature.SAM(p, torch.optim.SGD, rho=rho, lr=lr))
    for p, w, ga in zip(model.parameters(), w0, g_at):
        assert torch.allclose(p, w - lr * ga, atol=1e-10)
