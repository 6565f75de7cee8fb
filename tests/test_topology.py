"""Tests for stabilitylab.topology: orbits, contours, stable ranks, vectorization, certificates.

Persistence (ripser) and bottleneck distances (persim) come from the optional extra
``topology``; the tests that need them are skipped without it.
"""

from __future__ import annotations

import copy
import itertools
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import stabilitylab.topology as topology
from stabilitylab.data import load_dataset

R_VALUES = (2.5, 3.5, 4.0, 4.1, 4.3)


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


needs_ripser = pytest.mark.skipif(not _has("ripser"), reason="the topology extra (ripser) is not installed")
needs_persim = pytest.mark.skipif(not _has("persim"), reason="the topology extra (persim) is not installed")


def _hand_orbit(r: float, x: float, y: float, n: int) -> list[tuple[float, float]]:
    points = []
    for _ in range(n):
        points.append((x, y))
        x = (x + r * y * (1 - y)) % 1.0
        y = (y + r * x * (1 - x)) % 1.0
    return points


def _random_diagram(rng: np.random.Generator, n: int, scale: float = 1.0) -> torch.Tensor:
    birth = rng.uniform(0, scale, n)
    death = birth + rng.exponential(scale / 3, n)
    return torch.tensor(np.stack([birth, death], 1), dtype=torch.float64).reshape(-1, 2)


def _random_contour(seed: int, n_components: int = 3) -> topology.Contour:
    contour = topology.Contour(n_components, x_max=1.0).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in contour.parameters():
            p.add_(0.7 * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return contour


# ----------------------------------------------------------------------------- orbits


def test_orbit_matches_a_hand_iteration():
    g = torch.Generator().manual_seed(3)
    points = topology.orbit(4.1, 60, generator=g)
    start = torch.rand(1, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)[0]
    hand = _hand_orbit(4.1, float(start[0]), float(start[1]), 60)
    assert points.shape == (60, 2) and points.dtype == torch.float64
    assert points.tolist() == [list(p) for p in hand]  # same float64 operations, bit for bit


def test_orbit_batch_seeding_and_prefix():
    a = topology.orbit(2.5, 40, n_orbits=3, generator=torch.Generator().manual_seed(0))
    b = topology.orbit(2.5, 40, n_orbits=3, generator=torch.Generator().manual_seed(0))
    c = topology.orbit(2.5, 40, n_orbits=3, generator=torch.Generator().manual_seed(1))
    short = topology.orbit(2.5, 10, n_orbits=3, generator=torch.Generator().manual_seed(0))
    assert a.shape == (3, 40, 2)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(short, a[:, :10])
    starts = torch.rand(3, 2, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    for i in range(3):
        hand = _hand_orbit(2.5, float(starts[i, 0]), float(starts[i, 1]), 40)
        assert a[i].tolist() == [list(p) for p in hand]
    assert bool(((a >= 0) & (a < 1)).all())
    torch.manual_seed(5)
    d = topology.orbit(3.5, 5)
    torch.manual_seed(5)
    assert torch.equal(d, topology.orbit(3.5, 5))  # generator=None: torch's global generator


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(r=0.0, n_points=5), ValueError, "r"), (dict(r=math.nan, n_points=5), ValueError, "r"),
    (dict(r="4", n_points=5), TypeError, "r"), (dict(r=4.0, n_points=0), ValueError, "n_points"),
    (dict(r=4.0, n_points=2.5), TypeError, "n_points"), (dict(r=4.0, n_points=5, n_orbits=0), ValueError, "n_orbits"),
    (dict(r=4.0, n_points=5, generator=1), TypeError, "generator"),
])
def test_orbit_bad_arguments(kwargs, error, name):
    with pytest.raises(error, match=name):
        topology.orbit(**kwargs)


def test_orbits_dataset():
    ds = load_dataset("orbits", n_samples=600, seed=2)
    again = load_dataset("orbits", n_samples=100, seed=2)
    other = load_dataset("orbits", n_samples=100, seed=3)
    test = load_dataset("orbits", split="test", n_samples=100, seed=2)
    assert ds.inputs.shape == (600, 1000, 2) and ds.inputs.dtype == torch.float32
    assert ds.classes == [f"r={r}" for r in R_VALUES] and ds.input_range == (0.0, 1.0)
    assert ds.labels[:500].bincount().tolist() == [100] * 5  # a block of 500 is balanced
    assert torch.equal(again.inputs, ds.inputs[:100]) and torch.equal(again.labels, ds.labels[:100])
    assert not torch.equal(other.inputs, again.inputs) and not torch.equal(test.inputs, again.inputs)
    # each cloud is an orbit of its class's r: one step of the map, up to float32 storage
    x = ds.inputs[:, :50].double()
    r = torch.tensor(R_VALUES, dtype=torch.float64)[ds.labels][:, None]
    x_next = torch.remainder(x[:, :-1, 0] + r * x[:, :-1, 1] * (1 - x[:, :-1, 1]), 1.0)
    gap = (x_next - x[:, 1:, 0]).abs()
    assert float(torch.minimum(gap, 1 - gap).max()) < 1e-5
    assert len(load_dataset("orbits", split="test")) == 1500


# ----------------------------------------------------------------------------- contours


def test_contour_derivative_zero_and_monotone():
    contour = _random_contour(0)
    x = torch.linspace(0, 2, 401, dtype=torch.float64, requires_grad=True)
    F = contour.F(x)
    (dF,) = torch.autograd.grad(F.sum(), x)
    torch.testing.assert_close(dF, contour.f(x.detach()), rtol=1e-12, atol=1e-12)
    assert float(contour.F(torch.zeros(1, dtype=torch.float64)).detach()) == 0.0
    assert bool((F[1:] > F[:-1]).all()) and bool((contour.f(x.detach()) > 0).all())
    grid = torch.linspace(-3, 5, 20001, dtype=torch.float64)
    with torch.no_grad():
        assert float(contour.f(grid).max()) <= float(contour.sup_f()) * (1 + 1e-12)


def test_contour_sup_bound_is_attained_for_shared_centres():
    contour = topology.Contour(3).double()
    with torch.no_grad():
        contour.mu.fill_(0.4)
    value = float(contour.f(torch.tensor([0.4], dtype=torch.float64)).detach())
    assert value == pytest.approx(float(contour.sup_f().detach()), rel=1e-12)
    linear = topology.Contour(0, slope=2.0).double()
    x = torch.tensor([0.0, 0.5, 3.0], dtype=torch.float64)
    torch.testing.assert_close(linear.F(x), 2.0 * x)
    assert float(linear.sup_f().detach()) == pytest.approx(2.0)


# ----------------------------------------------------------------------------- stable ranks


def test_stable_rank_of_the_issue_example():
    diagram = torch.tensor([[0.0, 1.0], [0.0, 3.0]])
    t = torch.tensor([0.0, 0.49, 0.5, 1.0, 1.49, 1.5, 4.0])
    assert topology.stable_rank(diagram, t).tolist() == [2, 2, 1, 1, 1, 0, 0]
    # q = 1: deleting a bar costs its full length; p = 1: the costs add up
    assert topology.stable_rank(diagram, t, q=1).tolist() == [2, 2, 2, 1, 1, 1, 0]
    assert topology.stable_rank(diagram, torch.tensor([0.5, 1.9, 2.0]), p=1).tolist() == [1, 1, 0]


def _brute_force_rank(lengths: list[float], t: float, p: float, q: float) -> int:
    c_q = 2.0 ** ((1 - q) / q) if math.isfinite(q) else 0.5
    n = len(lengths)
    best = n
    for k in range(n + 1):
        for subset in itertools.combinations(range(n), k):
            if not subset:
                cost = 0.0
            elif math.isinf(p):
                cost = c_q * max(lengths[i] for i in subset)
            else:
                cost = c_q * sum(lengths[i] ** p for i in subset) ** (1 / p)
            if cost <= t:
                best = min(best, n - k)
    return best


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 7), p=st.sampled_from([1.0, 1.5, 2.0, 3.0, math.inf]),
       q=st.sampled_from([1.0, 2.0, math.inf]), use_contour=st.booleans())
def test_stable_rank_against_brute_force(seed, n, p, q, use_contour):
    rng = np.random.default_rng(seed)
    diagram = _random_diagram(rng, n)
    contour = _random_contour(seed) if use_contour else None
    with torch.no_grad():
        lengths = (topology._lengths(diagram, contour)).tolist()
    t = torch.tensor(rng.uniform(0, 1.5, 6), dtype=torch.float64)
    c_q = 2.0 ** ((1 - q) / q) if math.isfinite(q) else 0.5
    # no t within rounding of a subset's cost (where summation order decides)
    costs = [c_q * sum(lengths[i] ** p for i in s) ** (1 / p) if math.isfinite(p) else c_q * max(lengths[i] for i in s)
             for k in range(1, n + 1) for s in itertools.combinations(range(n), k)]
    assume(all(abs(c - float(v)) > 1e-9 for c in costs for v in t))
    ranks = topology.stable_rank(diagram, t, p=p, q=q, contour=contour)
    assert ranks.tolist() == [_brute_force_rank(lengths, float(v), p, q) for v in t]


def test_stable_rank_is_the_inverse_of_the_sorted_half_lengths():
    rng = np.random.default_rng(0)
    contour = _random_contour(1)
    diagram = _random_diagram(rng, 9)
    v = topology.sorted_half_lengths(diagram, 12, contour).detach()
    t = torch.tensor(rng.uniform(0, float(v.max()) * 1.2, 50))
    expected = (v[None, :] > t[:, None]).sum(1)
    assert torch.equal(topology.stable_rank(diagram, t, contour=contour), expected)


def test_padding_bars_change_nothing():
    rng = np.random.default_rng(1)
    diagrams = [[_random_diagram(rng, k), _random_diagram(rng, 2 * k)] for k in (1, 4, 0)]
    padded = topology.pad_diagrams(diagrams)
    assert padded.shape == (3, 2, 8, 2)
    contour = _random_contour(2)
    for i, pair in enumerate(diagrams):
        for k, d in enumerate(pair):
            torch.testing.assert_close(topology.sorted_half_lengths(padded[i, k], 5, contour),
                                       topology.sorted_half_lengths(d, 5, contour))
            t = torch.tensor([0.0, 0.05, 0.2])
            assert torch.equal(topology.stable_rank(padded[i, k], t, p=2.0), topology.stable_rank(d, t, p=2.0))
    with pytest.raises(ValueError, match="n_bars"):
        topology.pad_diagrams(diagrams, n_bars=3)


def test_sorted_half_lengths_values_and_gradient():
    diagram = torch.tensor([[0.0, 1.0], [0.5, 3.5], [1.0, 1.5]], dtype=torch.float64)
    assert topology.sorted_half_lengths(diagram, 5).tolist() == [1.5, 0.5, 0.25, 0.0, 0.0]
    assert topology.sorted_half_lengths(diagram, 2).tolist() == [1.5, 0.5]
    vec = topology.StableRankVectorization(4, n_dims=2, n_components=2).double()
    x = torch.stack([diagram, diagram * 0.5])[None]
    out = vec(x)
    assert out.shape == (1, 8)
    grads = torch.autograd.grad(out.sum(), list(vec.parameters()))
    assert all(torch.isfinite(g).all() for g in grads) and any(g.abs().sum() > 0 for g in grads)


@needs_persim
@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(0, 8), n2=st.integers(0, 8), m=st.integers(1, 10))
def test_vectorization_is_sup_f_lipschitz_in_bottleneck(seed, n, n2, m):
    rng = np.random.default_rng(seed)
    a = _random_diagram(rng, n)
    # a nearby diagram (a perturbation of a) or an unrelated one
    b = (a + torch.tensor(rng.uniform(-0.05, 0.05, a.shape))).clamp_min(0) if seed % 2 else _random_diagram(rng, n2)
    b = torch.stack([b[:, 0], torch.maximum(b[:, 0], b[:, 1])], 1)
    contour = _random_contour(seed)
    with torch.no_grad():
        gap = (topology.sorted_half_lengths(a, m, contour) - topology.sorted_half_lengths(b, m, contour)).abs().max()
        bound = contour.sup_f() * topology.bottleneck_distance(a, b)
    assert float(gap) <= float(bound) * (1 + 1e-9) + 1e-12


@needs_persim
def test_vectorization_constant_is_attained():
    one = torch.tensor([[0.0, 0.4]], dtype=torch.float64)
    none = torch.zeros(0, 2, dtype=torch.float64)
    d_b = topology.bottleneck_distance(one, none)
    assert d_b == pytest.approx(0.2)
    gap = (topology.sorted_half_lengths(one, 3) - topology.sorted_half_lengths(none, 3)).abs().max()
    assert float(gap) == pytest.approx(d_b)  # sup f = 1


@needs_ripser
@needs_persim
@pytest.mark.parametrize("seed", range(4))
def test_bottleneck_moves_at_most_twice_eps(seed):
    g = torch.Generator().manual_seed(seed)
    clouds = torch.rand(3, 40, 2, generator=g, dtype=torch.float64)
    before = topology.persistence_diagrams(clouds, maxdim=1, progress=False)
    for eps in (1e-3, 1e-2, 5e-2):
        moved = topology.perturb_clouds(clouds, eps, generator=g)
        torch.testing.assert_close((moved - clouds).norm(dim=-1), torch.full((3, 40), eps, dtype=torch.float64))
        after = topology.persistence_diagrams(moved, maxdim=1, progress=False)
        for d0, d1 in zip(before, after):
            for k in range(2):
                # ripser rounds the distances to float32: 2^-24 times the diameter (<= 2) each
                assert topology.bottleneck_distance(d0[k], d1[k]) <= 2 * eps + 3e-7


@needs_ripser
def test_persistence_diagrams_shapes_and_finite_bars():
    cloud = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]], dtype=torch.float64)
    h0, h1 = topology.persistence_diagrams(cloud, progress=False)
    # a unit square: three components die at 1 (the infinite one dropped); one loop [1, sqrt2)
    torch.testing.assert_close(h0, torch.tensor([[0.0, 1.0]] * 3, dtype=torch.float64))
    torch.testing.assert_close(h1, torch.tensor([[1.0, math.sqrt(2)]], dtype=torch.float64), rtol=1e-6, atol=1e-6)
    batch = topology.persistence_diagrams(cloud[None].repeat(2, 1, 1), maxdim=0, progress=False)
    assert len(batch) == 2 and len(batch[0]) == 1


# ----------------------------------------------------------------------------- certificates


def test_certified_radius_formula():
    r = topology.certified_radius(torch.tensor([1.0, -0.5, 0.0]), 2.0, 4, 3.0)
    expected = 1.0 / (2 * math.sqrt(2) * 2.0 * math.sqrt(4) * 3.0)
    assert r.tolist() == pytest.approx([expected, 0.0, 0.0], rel=1e-15)
    two = topology.certified_radius(1.0, 1.0, [4, 9], [1.0, 2.0])
    assert float(two) == pytest.approx(1.0 / (2 * math.sqrt(2) * math.sqrt(4 * 1 + 9 * 4)), rel=1e-15)
    assert float(topology.certified_radius(1.0, 1.0, 4, [1.0, 2.0])) == pytest.approx(
        1.0 / (2 * math.sqrt(2) * math.sqrt(4 + 16)))
    for kwargs, name in [(dict(margin=math.nan), "margin"), (dict(lipschitz=0.0), "lipschitz"),
                         (dict(m=0), "m"), (dict(sup_f=-1.0), "sup_f"), (dict(m=[1, 2], sup_f=[1.0, 2.0, 3.0]), "m")]:
        args = {**dict(margin=1.0, lipschitz=1.0, m=4, sup_f=1.0), **kwargs}
        with pytest.raises((ValueError, TypeError), match=name):
            topology.certified_radius(**args)


@pytest.fixture(scope="module")
def tiny_model():
    if not _has("ripser"):
        pytest.skip("the topology extra (ripser) is not installed")
    from stabilitylab import losses, train

    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(60) % 2
    r = torch.tensor([2.5, 4.3], dtype=torch.float64)[labels]
    clouds = topology._orbits(r, 60, g)
    x = topology.pad_diagrams(topology.persistence_diagrams(clouds, progress=False), dtype=torch.float32)
    model = topology.TopologicalClassifier(2, m=6, hidden=(16,), x_max=0.3, generator=g)

    def loss_fn(z, y):
        return losses.offset_cross_entropy(z / (2 * model.vectorization.lipschitz().float()), y,
                                           offset=2e-3, temperature=5e-4)

    train.fit(model, (x[:40], labels[:40]), epochs=40, batch_size=20, lr=1e-2, loss_fn=loss_fn, generator=g,
              progress=False)
    model.eval()
    return model, clouds[40:], x[40:], labels[40:]


def test_certified_points_never_flip(tiny_model):
    model, clouds, x, labels = tiny_model
    radii = model.certified_radii(x, labels, persistence_error=1e-6)
    with torch.no_grad():
        correct = model(x).argmax(1) == labels
    assert bool((radii[~correct] == 0).all())
    certified = torch.nonzero(radii > 0)[:, 0]
    assert len(certified) >= 3, "the tiny model should certify a few points"
    g = torch.Generator().manual_seed(1)
    for i in certified[:8].tolist():
        eps = 0.999 * float(radii[i])
        moved = topology.perturb_clouds(clouds[i : i + 1].repeat(3, 1, 1), eps, generator=g)
        attacked = topology.attack_clouds(model, clouds[i : i + 1], labels[i : i + 1], eps, n_iter=4, generator=g,
                                          progress=False)
        assert float((attacked - clouds[i : i + 1]).norm(dim=-1).max()) <= eps * (1 + 1e-9)
        for cloud in (*moved, attacked[0]):
            diagrams = topology.pad_diagrams([topology.persistence_diagrams(cloud, progress=False)])
            with torch.no_grad():
                assert int(model(diagrams).argmax(1)) == int(labels[i])


def test_certified_radii_match_the_formula(tiny_model):
    model, _, x, labels = tiny_model
    radii = model.certified_radii(x, labels)
    with torch.no_grad():  # in float64, on a float64 copy, as the docstring says (sup f_k included)
        model64 = copy.deepcopy(model).double()
        z = model64(x.double())
        top2 = z.topk(2, dim=1).values
        margin = top2[:, 0] - top2[:, 1]
        sup_f = model64.vectorization.sup_f().tolist()
    expected = topology.certified_radius(margin, model.network_lipschitz(), model.vectorization.m, sup_f)
    correct = z.argmax(1) == labels
    torch.testing.assert_close(radii[correct], expected[correct], rtol=1e-9, atol=1e-15)


@needs_ripser
def test_attack_finds_flips_at_large_eps(tiny_model):
    model, clouds, x, labels = tiny_model
    g = torch.Generator().manual_seed(0)
    attacked = topology.attack_clouds(model, clouds[:6], labels[:6], 0.05, n_iter=6, generator=g, progress=False)
    with torch.no_grad():
        clean = model(x[:6]).argmax(1)
        after = model(topology.pad_diagrams(topology.persistence_diagrams(attacked, progress=False))).argmax(1)
        margin_clean = _margins(model(x[:6]), labels[:6])
        margin_after = _margins(model(topology.pad_diagrams(topology.persistence_diagrams(attacked, progress=False))),
                                labels[:6])
    assert float(margin_after.mean()) < float(margin_clean.mean())
    assert after.shape == clean.shape


def _margins(z, y):
    true = z.gather(1, y[:, None])[:, 0]
    return true - z.scatter(1, y[:, None], -math.inf).amax(1)


# ----------------------------------------------------------------------------- optional extra


def test_module_works_without_the_extra():
    code = (
        "import sys; sys.modules['ripser'] = None; sys.modules['persim'] = None\n"
        "import torch, stabilitylab.topology as T\n"
        "d = torch.tensor([[0.0, 1.0], [0.0, 3.0]])\n"
        "assert T.stable_rank(d, 0.5).item() == 1\n"
        "T.sorted_half_lengths(d, 3, T.Contour(2)); T.orbit(4.0, 5)\n"
        "T.certified_radius(1.0, 1.0, 4, 1.0)\n"
        "try:\n"
        "    T.persistence_diagrams(torch.rand(5, 2))\n"
        "except ImportError as e:\n"
        "    assert \"pip install 'stabilitylab[topology]'\" in str(e), e\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
        "try:\n"
        "    T.bottleneck_distance(d, d)\n"
        "except ImportError as e:\n"
        "    assert 'stabilitylab[topology]' in str(e)\n"
        "else:\n"
        "    raise AssertionError('no ImportError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("bad, error", [
    (torch.tensor([[1.0, 0.5]]), ValueError),  # death < birth
    (torch.tensor([[0.0, math.inf]]), ValueError),
    (torch.tensor([0.0, 1.0]), ValueError),  # not (K, 2)
    (torch.tensor([[0, 1]]), TypeError),
    ([[0.0, 1.0]], TypeError),
])
def test_bad_diagrams(bad, error):
    with pytest.raises(error, match="diagram"):
        topology.stable_rank(bad, 0.1)
    with pytest.raises(error, match="diagram"):
        topology.sorted_half_lengths(bad, 3)


def test_bad_options():
    d = torch.tensor([[0.0, 1.0]])
    with pytest.raises(ValueError, match="p"):
        topology.stable_rank(d, 0.1, p=0.5)
    with pytest.raises(ValueError, match="q"):
        topology.stable_rank(d, 0.1, q=math.nan)
    with pytest.raises(ValueError, match="t"):
        topology.stable_rank(d, -0.1)
    with pytest.raises(TypeError, match="contour"):
        topology.stable_rank(d, 0.1, contour=object())
    with pytest.raises(ValueError, match="m"):
        topology.sorted_half_lengths(d, 0)
    with pytest.raises(ValueError, match="eps"):
        topology.perturb_clouds(torch.rand(4, 2), -1.0)
    with pytest.raises(ValueError, match="clouds"):
        topology.perturb_clouds(torch.full((4, 2), math.nan), 0.1)
    with pytest.raises(ValueError, match="diagrams"):
        topology.StableRankVectorization(3)(torch.zeros(2, 3, 4, 2))
