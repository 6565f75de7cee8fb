"""The training loop, the model builders and the plot helpers."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab import data, models, plot, train


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
    moons = data.load_dataset("moons", n_samples=200)

    def run():
        train.seed_everything(3)
        model = models.mlp(2, 2, hidden=(16,))
        train.fit(model, moons, epochs=3, seed=5, progress=False, device="cpu")
        return torch.cat([p.flatten() for p in model.parameters()])

    assert torch.equal(run(), run())


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
    model = models.cnn(in_channels, 4, image_size=size, channels=channels, hidden=8, pool=pool)
    h, w = (size, size) if isinstance(size, int) else size
    assert model(torch.randn(2, in_channels, h, w)).shape == (2, 4)


def test_model_builders_reject_bad_arguments():
    with pytest.raises(ValueError, match="activation"):
        models.mlp(2, 2, activation="swishy")
    with pytest.raises(ValueError, match="hidden"):
        models.mlp(2, 2, hidden=(0,))
    with pytest.raises(ValueError, match="kernel_size"):
        models.cnn(1, 2, image_size=8, kernel_size=2)
    with pytest.raises(ValueError, match="image_size"):
        models.cnn(1, 2, image_size=2, channels=(4, 4))
    with pytest.raises(ValueError, match="pool"):
        models.cnn(1, 2, image_size=8, pool="median")


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
