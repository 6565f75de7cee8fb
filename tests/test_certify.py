"""Tests for stabilitylab.certify: radii against hand-computed logits and against the exact
distance to the decision boundary of linear classifiers (closed form), the pairwise and Linf
variants, certificates that survive attacks on a trained 1-Lipschitz network while an inflated
radius is caught, certified accuracy curves, and argument checks."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader

from stabilitylab import certify, data, evaluate, fit, lipschitz, models
from stabilitylab.attacks import minimal_adversarial_distance
from stabilitylab.certify import accuracy_curve, certified_accuracy, certified_radii, certified_radius, check_soundness
from stabilitylab.losses import OffsetCrossEntropyLoss

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)
D = torch.float64
SQRT2 = math.sqrt(2.0)


# ----------------------------------------------------------------------------- radius formula


def test_radius_by_hand():
    z = torch.tensor([[3.0, 1.0, 0.0], [0.0, 2.0, 1.5], [1.0, 1.0, 0.0], [0.0, 5.0, 1.0]], dtype=D)
    y = torch.tensor([0, 1, 0, 0])
    expected = torch.tensor([2.0 / (SQRT2 * 2.0), 0.5 / (SQRT2 * 2.0), 0.0, 0.0], dtype=D)
    torch.testing.assert_close(certified_radius(z, y, lipschitz=2.0), expected)
    torch.testing.assert_close(certified_radius(z, y, lipschitz=torch.tensor(2.0)), expected)
    # linf: divided by sqrt(n)
    torch.testing.assert_close(certified_radius(z, y, lipschitz=2.0, norm="linf", input_shape=9), expected / 3.0)
    torch.testing.assert_close(certified_radius(z, y, lipschitz=2.0, norm="linf", input_shape=(1, 3, 3)), expected / 3.0)
    with pytest.warns(DeprecationWarning, match="input_dim"):  # the old keyword, for one release
        torch.testing.assert_close(certified_radius(z, y, lipschitz=2.0, norm="linf", input_dim=9), expected / 3.0)
    # float32 logits: float32 radii, never above the exact value; the margins are reduced by the
    # rounding allowance of float32 logits, 64 eps max_k |z_k| (issue 12, item 6)
    r32 = certified_radius(z.float(), y, lipschitz=2.0)
    assert r32.dtype == torch.float32
    assert bool((r32.double() <= expected).all())
    allowance = 64 * torch.finfo(torch.float32).eps * z.abs().amax(dim=1)
    reduced = torch.where(expected > 0, expected - allowance / (SQRT2 * 2.0), expected)
    torch.testing.assert_close(r32.double(), reduced, rtol=1e-6, atol=0)


def test_pairwise_radius_by_hand():
    z = torch.tensor([[3.0, 1.0, 0.0]], dtype=D)
    y = torch.tensor([0])
    W = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=D)
    # ||w0 - w1|| = sqrt(2), ||w0 - w2|| = 2: min(2 / (0.5 sqrt 2), 3 / (0.5 * 2)) = min(2.828, 3)
    r = certified_radius(z, y, lipschitz=0.5, last_layer_weight=W)
    assert r.item() == pytest.approx(2.0 / (0.5 * SQRT2))
    # the same through a (C, C) matrix of pairwise constants
    P = 0.5 * torch.cdist(W, W)
    assert certified_radius(z, y, lipschitz=P).item() == pytest.approx(r.item())
    # a constant difference (equal rows) cannot flip: infinite radius
    W2 = torch.tensor([[1.0, 0.0], [1.0, 0.0]], dtype=D)
    assert certified_radius(z[:, :2], y, last_layer_weight=W2).item() == math.inf


def _unit_rows(seed: int, c: int, d: int):
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(c, d, generator=g, dtype=D)
    W = W / torch.linalg.vector_norm(W, dim=1, keepdim=True)
    b = torch.randn(c, generator=g, dtype=D)
    x = torch.randn(16, d, generator=g, dtype=D)
    return W, b, x


def _true_distance(W, b, x, norm="l2"):
    """Closed form: distance from x to {x' : z_j(x') >= z_y(x') for some j}, y = argmax, which
    is min_j (z_y - z_j) / ||w_y - w_j||_* (dual norm: l2 for l2, l1 for linf)."""
    z = x @ W.T + b
    y = z.argmax(1)
    out = []
    for i in range(len(x)):
        best = math.inf
        for j in range(W.shape[0]):
            if j == y[i]:
                continue
            diff = W[y[i]] - W[j]
            dual = diff.norm(p=2) if norm == "l2" else diff.abs().sum()
            best = min(best, ((z[i, y[i]] - z[i, j]) / dual).item())
        out.append(best)
    return torch.tensor(out, dtype=D), z, y


@SETTINGS
@given(seed=st.integers(0, 10_000), c=st.integers(2, 6), d=st.integers(2, 8))
def test_linear_classifier_certificate_vs_true_distance(seed, c, d):
    W, b, x = _unit_rows(seed, c, d)
    dist, z, y = _true_distance(W, b, x)
    spectral = torch.linalg.svdvals(W)[0].item()
    plain = certified_radius(z, y, lipschitz=spectral)
    pairwise = certified_radius(z, y, lipschitz=1.0, last_layer_weight=W)
    assert bool((plain <= dist * (1 + 1e-12)).all())  # sound
    assert bool((pairwise >= plain * (1 - 1e-12)).all())  # never worse
    torch.testing.assert_close(pairwise, dist)  # exact for a linear model
    # the distance is attained: just beyond it along the worst direction the prediction flips
    for i in range(len(x)):
        margins = (z[i, y[i]] - z[i]) / torch.linalg.vector_norm(W[y[i]] - W, dim=1)
        margins[y[i]] = math.inf
        j = int(margins.argmin())
        u = (W[j] - W[y[i]]) / torch.linalg.vector_norm(W[j] - W[y[i]])
        inside = x[i] + (1 - 1e-6) * dist[i] * u
        beyond = x[i] + (1 + 1e-6) * dist[i] * u
        assert int((inside @ W.T + b).argmax()) == int(y[i])
        assert int((beyond @ W.T + b).argmax()) != int(y[i])


@SETTINGS
@given(seed=st.integers(0, 10_000), d=st.integers(2, 8))
def test_two_orthonormal_rows_plain_certificate_is_exact(seed, d):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(d, 2, generator=g, dtype=D))
    W = Q.T  # two orthonormal rows: ||W||_2 = 1, ||w0 - w1|| = sqrt 2
    b = torch.randn(2, generator=g, dtype=D)
    x = torch.randn(16, d, generator=g, dtype=D)
    dist, z, y = _true_distance(W, b, x)
    torch.testing.assert_close(certified_radius(z, y, lipschitz=1.0), dist)


@SETTINGS
@given(seed=st.integers(0, 10_000), c=st.integers(2, 5), d=st.integers(2, 8))
def test_linf_certificate_below_true_linf_distance(seed, c, d):
    W, b, x = _unit_rows(seed, c, d)
    dist_inf, z, y = _true_distance(W, b, x, norm="linf")
    r2 = certified_radius(z, y, lipschitz=1.0, last_layer_weight=W)
    rinf = certified_radius(z, y, lipschitz=1.0, last_layer_weight=W, norm="linf", input_shape=d)
    torch.testing.assert_close(rinf, r2 / math.sqrt(d))
    assert bool((rinf <= dist_inf * (1 + 1e-12)).all())


def test_pairwise_matrix_from_lipschitz_module_matches_rows():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5)).double()
    x = torch.randn(32, 4, dtype=D)
    y = torch.randint(0, 5, (32,))
    with torch.no_grad():
        z = model(x)
    P = lipschitz.pairwise_logit_bound(model, (4,))
    Lg = lipschitz.upper_bound(model[:2], (4,))
    torch.testing.assert_close(
        certified_radius(z, y, lipschitz=P), certified_radius(z, y, lipschitz=Lg, last_layer_weight=model[2].weight)
    )
    torch.testing.assert_close(
        certified_radii(model, (x, y), last_layer=True), certified_radius(z, y, lipschitz=P)
    )
    torch.testing.assert_close(
        certified_radii(model, (x, y)), certified_radius(z, y, lipschitz=lipschitz.upper_bound(model, (4,)))
    )


# ----------------------------------------------------------------------------- trained network


@pytest.fixture(scope="module")
def trained():
    ds = data.load_dataset("moons", n_samples=400)
    x, y = ds.tensors
    torch.manual_seed(0)
    model = models.lipschitz_mlp(2, 2, hidden=(32, 32))
    fit(model, (x, y), epochs=15, batch_size=64, lr=1e-2, progress=False, device="cpu",
        loss_fn=OffsetCrossEntropyLoss(offset=0.5, temperature=0.25))
    model.eval()
    return model, x, y


def test_certificates_survive_attacks(trained):
    model, x, y = trained
    gen = torch.Generator().manual_seed(0)
    report = check_soundness(model, x[:200], y[:200], n_iter=30, restarts=1, generator=gen)
    assert report.n_points == 200
    assert report.n_certified > 150  # the model is accurate
    assert report.n_attacked == report.n_certified
    assert report.sound and report.n_flipped == 0 and report.violations == []
    assert 0.0 < report.max_margin_ratio <= 1.0 + 1e-4  # the constant 1 is a true bound
    # pairwise and linf certificates are sound too
    lo, hi = data.load_dataset("moons", n_samples=400).input_range
    box = (float(x.min()) - 0.1, float(x.max()) + 0.1)
    for kwargs in ({"last_layer": True}, {"norm": "linf"}, {"bounds": box}, {"bounds": (lo, hi), "norm": "linf"}):
        assert check_soundness(model, x[:100], y[:100], n_iter=20, restarts=1, generator=gen, **kwargs).sound
    assert "sound" in str(report)


def test_inflated_radius_is_caught(trained):
    model, x, y = trained
    gen = torch.Generator().manual_seed(1)
    report = check_soundness(model, x[:100], y[:100], lipschitz=0.01, n_iter=30, restarts=1, generator=gen)
    assert not report.sound
    assert report.n_flipped > 0
    assert report.max_margin_ratio > 1.0
    assert all(0 <= i < 100 for i in report.violations)
    assert len(report.violations) == report.n_flipped
    assert "UNSOUND" in str(report)


def test_radius_below_attack_distance_and_random_points_keep_prediction(trained):
    model, x, y = trained
    xs, ys = x[:64], y[:64]
    radii = certified_radii(model, (xs, ys))
    found = minimal_adversarial_distance(model, xs, ys, norm="l2", eps_max=4.0, n_search=10,
                                         generator=torch.Generator().manual_seed(0))
    ok = radii > 0
    # the distance of an adversarial example found is an upper bound of the true distance
    assert bool((radii[ok] <= found[ok] + 1e-5).all())
    # random points strictly inside the radius keep the prediction
    g = torch.Generator().manual_seed(2)
    directions = torch.randn(64, 50, 2, generator=g)
    directions = directions / directions.norm(dim=-1, keepdim=True)
    scale = torch.rand(64, 50, 1, generator=g) * 0.999 * radii[:, None, None]
    points = (xs[:, None, :] + scale * directions)[ok].reshape(-1, 2)
    with torch.no_grad():
        pred = model(points).argmax(1).reshape(-1, 50)
    assert bool((pred == ys[ok][:, None]).all())


def test_certified_accuracy_at_zero_is_clean_accuracy(trained):
    model, x, y = trained
    clean = evaluate(model, (x, y))["accuracy"]
    assert certified_accuracy(model, (x, y), 0.0) == pytest.approx(clean)
    curve = certify.certified_accuracy_curve(model, (x, y), [0.0, 0.1, 0.3, 1.0])
    assert isinstance(curve, torch.Tensor) and curve.shape == (4,)
    assert curve[0].item() == pytest.approx(clean)
    assert bool((curve[1:] <= curve[:-1]).all())
    # every data form gives the same radii; lipschitz=None uses upper_bound (1 here)
    dataset = data.load_dataset("moons", n_samples=400)
    r_pair = certified_radii(model, (x, y), batch_size=128)
    torch.testing.assert_close(certified_radii(model, dataset), r_pair)
    torch.testing.assert_close(certified_radii(model, DataLoader(dataset, batch_size=50)), r_pair)
    torch.testing.assert_close(certified_radii(model, (x, y), lipschitz=1.0), r_pair)
    L = lipschitz.upper_bound(model, (2,))
    with torch.no_grad():
        z = model(x)
        state = {k: v.double() for k, v in (*model.named_parameters(), *model.named_buffers())}
        z64 = torch.func.functional_call(model, state, (x.double(),))
    # the margins are computed from float64 logits (the float32 parameters read exactly), the
    # radii rounded down into float32; float64=False reads the float32 logits
    expected = certified_radius(z64, y, lipschitz=L)
    torch.testing.assert_close(r_pair, expected.float(), rtol=1e-6, atol=0)
    assert bool((r_pair.double() <= expected).all())
    torch.testing.assert_close(certified_radii(model, (x, y), float64=False), certified_radius(z, y, lipschitz=L))
    # linf from the model: n is the number of features
    torch.testing.assert_close(certified_radii(model, (x, y), norm="linf"), r_pair / SQRT2, rtol=1e-6, atol=0)
    assert model.training is False


def test_accuracy_curve_by_hand():
    radii = torch.tensor([0.0, 0.5, 1.0, math.inf])
    torch.testing.assert_close(
        accuracy_curve(radii, [0.0, 0.5, 0.99, 2.0]), torch.tensor([0.75, 0.5, 0.5, 0.25], dtype=D)
    )
    torch.testing.assert_close(accuracy_curve(radii, torch.tensor([0.25])), torch.tensor([0.75], dtype=D))


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"lipschitz": 0.0}, "lipschitz"),
        ({"lipschitz": -1.0}, "lipschitz"),
        ({"lipschitz": float("nan")}, "lipschitz"),
        ({"lipschitz": float("inf")}, "lipschitz"),
        ({"lipschitz": torch.tensor([1.0, 2.0])}, "lipschitz"),
        ({"lipschitz": torch.ones(2, 2)}, "lipschitz"),
        ({"lipschitz": -torch.ones(3, 3)}, "lipschitz"),
        ({"norm": "l1"}, "norm"),
        ({"norm": "linf"}, "input_shape"),
        ({"norm": "linf", "input_shape": 0}, "input_shape"),
        ({"norm": "linf", "input_shape": (3, -1)}, "input_shape"),
        ({"last_layer_weight": torch.randn(2, 4)}, "last_layer_weight"),
        ({"lipschitz": torch.ones(3, 3), "last_layer_weight": torch.randn(3, 4)}, "last_layer_weight"),
    ],
)
def test_certified_radius_bad_options(kwargs, match):
    z = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match=match):
        certified_radius(z, y, **kwargs)


def test_certified_radius_bad_shapes():
    z = torch.randn(4, 3)
    y = torch.tensor([0, 1, 2, 0])
    with pytest.raises(ValueError, match="labels"):
        certified_radius(z, y[:3])
    with pytest.raises(ValueError, match="labels"):
        certified_radius(z, y + 3)
    with pytest.raises(ValueError, match="logits"):
        certified_radius(z[:, :1], y)
    with pytest.raises(ValueError, match="logits"):
        certified_radius(torch.full((4, 3), float("nan")), y)
    with pytest.raises(TypeError, match="labels"):
        certified_radius(z, y.float())
    with pytest.raises(TypeError, match="lipschitz"):
        certified_radius(z, y, lipschitz="1")


def test_model_level_bad_inputs(trained):
    model, x, y = trained
    with pytest.raises(ValueError, match="eps"):
        certified_accuracy(model, (x, y), -0.1)
    with pytest.raises(ValueError, match="eps"):
        certified_accuracy(model, (x, y), [0.1, -1.0])
    with pytest.raises(ValueError, match="eps"):
        accuracy_curve(torch.ones(3), [float("nan")])
    with pytest.raises(ValueError, match="radii"):
        accuracy_curve(torch.tensor([-1.0]), [0.0])
    with pytest.raises(ValueError, match="lipschitz"):
        certified_radii(model, (x, y), lipschitz=0.0)
    with pytest.raises(ValueError, match="norm"):
        certified_accuracy(model, (x, y), 0.1, norm="l3")
    with pytest.raises(ValueError, match="lipschitz"):
        check_soundness(model, x, y, lipschitz=-2.0)
    with pytest.raises(ValueError, match="labels"):
        check_soundness(model, x, y[:5])
    with pytest.raises(ValueError, match="norm"):
        check_soundness(model, x, y, norm="l1")
    with pytest.raises(ValueError, match="n_iter"):
        check_soundness(model, x, y, n_iter=0)
    with pytest.raises(ValueError, match="rtol"):
        check_soundness(model, x, y, rtol=1.0)
    with pytest.raises(ValueError, match="last_layer"):
        certified_radii(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), (x, y), last_layer=True)
    with pytest.raises(TypeError, match="data"):
        certified_radii(model, [x, y])
