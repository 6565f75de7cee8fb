"""Randomized smoothing: certificates against the closed form of a linear base classifier."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats
from torch import nn

from stabilitylab import smoothing
from stabilitylab.smoothing import ABSTAIN, Smooth


def linear_classifier(w: torch.Tensor, b: float, scale: float = 1.0) -> nn.Module:
    """Two logits (0, scale * (w.x + b)): class 1 on the positive side of the hyperplane."""
    layer = nn.Linear(len(w), 2).double()
    with torch.no_grad():
        layer.weight.copy_(torch.stack([torch.zeros_like(w), w]) * scale)
        layer.bias.copy_(torch.tensor([0.0, b * scale]))
    return layer


def points_at_distances(w, b, distances, generator):
    """Points whose signed distance to {w.x + b = 0} is given, in random places along the plane."""
    u = w / w.norm()
    base = -b * u / w.norm()
    tangent = torch.randn(len(distances), len(w), generator=generator, dtype=torch.float64)
    tangent -= (tangent @ u)[:, None] * u
    return base + tangent + distances[:, None] * u


# ------------------------------------------------------------------ statistics


@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 5000), frac=st.floats(0, 1), alpha=st.floats(1e-4, 0.4))
def test_clopper_pearson_is_the_exact_one_sided_bound(n, frac, alpha):
    k = round(frac * n)
    lower = smoothing.clopper_pearson_lower(k, n, alpha)
    if k == 0:
        assert lower == 0.0
        return
    # the defining equation: at p = lower, observing k or more successes has probability alpha
    assert stats.binom.sf(k - 1, n, lower) == pytest.approx(alpha, rel=1e-6, abs=1e-12)
    # and scipy's exact two-sided interval at level 1 - 2 alpha has the same lower end
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=1 - 2 * alpha, method="exact")
    assert lower == pytest.approx(ci.low, rel=1e-9, abs=1e-12)


def test_all_votes_give_the_maximum_certifiable_radius():
    sigma, n, alpha = 0.5, 1000, 0.001
    assert smoothing.clopper_pearson_lower(n, n, alpha) == pytest.approx(alpha ** (1 / n))
    expected = sigma * stats.norm.ppf(alpha ** (1 / n))
    assert smoothing.max_certifiable_radius(sigma, n, alpha) == pytest.approx(expected)
    assert 1.9 < smoothing.max_certifiable_radius(1.0, 100_000, 0.001) < 4.0


def test_empirical_bernstein_bound_covers_the_mean():
    gen = torch.Generator().manual_seed(0)
    alpha, n, trials = 0.1, 200, 2000
    # Beta(2, 5) variables in [0, 1]; mean 2/7
    samples = torch.distributions.Beta(2.0, 5.0).sample((trials, n)).double()
    samples = samples[torch.randperm(trials, generator=gen)]
    half = smoothing.empirical_bernstein_radius(samples.var(1), n, alpha)
    misses = (samples.mean(1) - half > 2 / 7).double().mean().item()
    assert misses <= alpha
    # it shrinks with the variance: constant variables get only the 7 b log / 3(n - 1) term
    zero = smoothing.empirical_bernstein_radius(torch.zeros(1), n, alpha)
    assert zero.item() == pytest.approx(7 * math.log(2 / alpha) / (3 * (n - 1)))


def sparsemax_by_bisection(z: torch.Tensor) -> torch.Tensor:
    lo, hi = z.min() - 1, z.max()
    for _ in range(200):
        tau = (lo + hi) / 2
        if (z - tau).clamp_min(0).sum() > 1:
            lo = tau
        else:
            hi = tau
    return (z - (lo + hi) / 2).clamp_min(0)


@settings(max_examples=30, deadline=None)
@given(c=st.integers(2, 12), scale=st.floats(0.01, 20), seed=st.integers(0, 10_000))
def test_sparsemax_is_the_euclidean_projection_onto_the_simplex(c, scale, seed):
    z = torch.randn(3, c, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale
    p = smoothing.sparsemax(z)
    assert torch.all(p >= 0) and torch.allclose(p.sum(-1), torch.ones(3, dtype=torch.float64))
    for row, out in zip(z, p):
        assert torch.allclose(out, sparsemax_by_bisection(row), atol=1e-9)
    assert torch.allclose(smoothing.sparsemax(z.T, dim=0), p.T)


def test_simplex_maps():
    z = torch.tensor([[2.0, 1.0, -1.0]])
    assert torch.allclose(smoothing.simplex_map(z, "softmax", 2.0), torch.softmax(z / 2, -1))
    assert torch.equal(smoothing.simplex_map(z, "hardmax"), torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.allclose(smoothing.simplex_map(z, "sparsemax", 1.0), torch.tensor([[1.0, 0.0, 0.0]]))
    assert torch.allclose(smoothing.simplex_map(z, "sparsemax", 4.0), torch.tensor([[0.625, 0.375, 0.0]]))


# ------------------------------------------------------------------ Cohen et al. on a linear classifier


def test_certified_radius_of_a_linear_classifier_is_its_distance_to_the_boundary():
    """For f(x) = [w.x + b > 0], P(f(x + delta) = 1) = Phi(d / sigma) with d the signed distance, so the
    exact smoothed radius is |d|; certificates must stay below it but for an alpha fraction, and come close."""
    gen = torch.Generator().manual_seed(1)
    w, b, sigma, alpha = torch.tensor([3.0, -1.0, 2.0], dtype=torch.float64), 0.5, 0.5, 0.01
    smooth = Smooth(linear_classifier(w, b), num_classes=2, sigma=sigma)
    distances = torch.linspace(-0.75, 0.75, 120, dtype=torch.float64)
    xs = points_at_distances(w, b, distances, gen)
    too_large, gaps = 0, []
    for x, d in zip(xs, distances):
        c, r = smooth.certify(x, n0=100, n=5000, alpha=alpha, batch_size=1000, generator=gen)
        if c != ABSTAIN:
            assert c == int(d > 0) or r <= 1e-12  # a wrong class can only come with a failed selection
            too_large += r > abs(d.item())
        if abs(d) > 0.1:
            gaps.append(abs(d.item()) - r)
    assert too_large <= 4  # expected alpha * 120 = 1.2
    # 5000 samples pin p_A within about 0.02: the certified radius is within 0.1 sigma of the truth
    assert max(gaps) < 0.1 * sigma * 1.5 and sum(gaps) / len(gaps) < 0.08 * sigma


def test_predict_abstains_at_the_boundary_and_answers_away_from_it():
    gen = torch.Generator().manual_seed(2)
    w, b = torch.tensor([1.0, 1.0], dtype=torch.float64), 0.0
    smooth = Smooth(linear_classifier(w, b), num_classes=2, sigma=1.0)
    on_plane = points_at_distances(w, b, torch.zeros(40, dtype=torch.float64), gen)
    answers = [smooth.predict(x, n=500, alpha=0.05, batch_size=250, generator=gen) for x in on_plane]
    assert sum(a == ABSTAIN for a in answers) >= 34  # abstains with probability >= 0.95 at p = 1/2
    far = points_at_distances(w, b, torch.tensor([-2.0, 2.0], dtype=torch.float64), gen)
    assert [smooth.predict(x, n=500, alpha=0.05, batch_size=250, generator=gen) for x in far] == [0, 1]


def test_certify_abstains_when_the_top_class_is_not_a_majority():
    torch.manual_seed(0)
    three_way = nn.Linear(2, 3)
    with torch.no_grad():
        three_way.weight.zero_()
        three_way.bias.zero_()  # every logit ties: argmax is class 0 always, p_A = 1, certified far
    c, r = Smooth(three_way, 3, 0.25).certify(torch.zeros(2), 10, 200, 0.001, 50)
    assert c == 0 and r == pytest.approx(smoothing.max_certifiable_radius(0.25, 200, 0.001))
    gen = torch.Generator().manual_seed(0)
    coin = Smooth(linear_classifier(torch.tensor([1.0], dtype=torch.float64), 0.0), 2, 1.0)
    c, r = coin.certify(torch.zeros(1, dtype=torch.float64), 10, 1000, 0.001, 500, generator=gen)
    assert (c, r) == (ABSTAIN, 0.0)


def test_the_same_generator_seed_gives_the_same_certificate_and_batching_does_not_matter():
    w, b = torch.tensor([1.0, -2.0], dtype=torch.float64), 0.3
    smooth = Smooth(linear_classifier(w, b), 2, 0.5)
    x = torch.tensor([0.4, -0.1], dtype=torch.float64)
    first = smooth.certify(x, 50, 2000, 0.001, 128, generator=torch.Generator().manual_seed(5))
    again = smooth.certify(x, 50, 2000, 0.001, 128, generator=torch.Generator().manual_seed(5))
    assert first == again
    counts_a = smooth.sample_counts(x, 3000, 3000, generator=torch.Generator().manual_seed(7))
    counts_b = smooth.sample_counts(x, 3000, 7, generator=torch.Generator().manual_seed(7))
    assert int(counts_a.sum()) == int(counts_b.sum()) == 3000
    # the votes for class 1 follow Binomial(3000, Phi(d / sigma)) in both cases
    p = stats.norm.cdf((w @ x + b).item() / w.norm().item() / 0.5)
    for counts in (counts_a, counts_b):
        assert abs(counts[1].item() - 3000 * p) < 5 * math.sqrt(3000 * p * (1 - p))


@pytest.mark.parametrize("n, batch_size", [(400, 4000), (400, 100)])
def test_vote_frequencies_estimate_the_gaussian_probability(n, batch_size):
    gen = torch.Generator().manual_seed(8)
    w, b, sigma = torch.tensor([2.0, -1.0], dtype=torch.float64), 0.1, 0.4
    smooth = Smooth(linear_classifier(w, b), 2, sigma)
    distances = torch.linspace(-0.6, 0.6, 25, dtype=torch.float64)
    freq = smooth.vote_frequencies(points_at_distances(w, b, distances, gen), n, batch_size, generator=gen)
    p = torch.from_numpy(stats.norm.cdf(distances.numpy() / sigma))
    assert freq.shape == (25, 2) and torch.allclose(freq.sum(1), torch.ones(25, dtype=torch.float64))
    z = (freq[:, 1] - p) / torch.sqrt(p * (1 - p) / n).clamp_min(1e-3)
    assert z.abs().max() < 4.5


def test_base_model_is_left_in_its_mode_and_float32_works():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    smooth = Smooth(model, 3, 0.1)
    c, r = smooth.certify(torch.randn(4), 20, 200, 0.01, 64, generator=torch.Generator().manual_seed(0))
    assert model.training and c in (-1, 0, 1, 2) and r >= 0


# ------------------------------------------------------------------ Lipschitz-variance-margin


@pytest.mark.parametrize("maps", [[("softmax", 1.0)], [("sparsemax", 0.5)], [("hardmax", 1.0)],
                                  [("softmax", 0.5), ("softmax", 2.0), ("sparsemax", 1.0)]])
@pytest.mark.parametrize("choose_map", ["union", "selection"])
def test_lvm_certificates_stay_below_the_distance_to_the_boundary(maps, choose_map):
    """With logits (0, s (w.x + b)) every simplex map's smoothed version decides by the sign of w.x + b
    (symmetry of the noise), so the smoothed classifier's boundary is the hyperplane again."""
    gen = torch.Generator().manual_seed(3)
    w, b, sigma = torch.tensor([2.0, 1.0, -2.0], dtype=torch.float64), -0.2, 0.5
    smooth = Smooth(linear_classifier(w, b, scale=4.0), 2, sigma)
    distances = torch.linspace(0.05, 0.8, 30, dtype=torch.float64) * torch.tensor([-1.0, 1.0]).repeat(15)
    xs = points_at_distances(w, b, distances, gen)
    certified = 0
    for x, d in zip(xs, distances):
        c, r = smooth.certify_lvm(x, 50, 2000, 0.01, 1000, maps=maps, choose_map=choose_map, generator=gen)
        assert r <= abs(d.item()) + 1e-9 or c == ABSTAIN
        if c != ABSTAIN:
            certified += 1
            assert c == int(d > 0)
    assert certified >= 20


def test_lipschitz_bound_is_never_larger_than_the_gaussian_bound():
    w, b = torch.tensor([1.0, 2.0], dtype=torch.float64), 0.0
    smooth = Smooth(linear_classifier(w, b, scale=3.0), 2, 0.5)
    for d in (0.1, 0.3, 0.6):
        x = points_at_distances(w, b, torch.tensor([d], dtype=torch.float64), torch.Generator().manual_seed(0))[0]
        runs = {
            bound: smooth.certify_lvm(x, 20, 1000, 0.01, 500, bound=bound, generator=torch.Generator().manual_seed(9))
            for bound in ("gaussian", "lipschitz")
        }
        assert runs["lipschitz"][1] <= runs["gaussian"][1] + 1e-12


def test_lvm_on_votes_comes_close_to_the_exact_radius():
    """With the hard vote as the map, F_A(x) = Phi(d / sigma) exactly, so the gaussian bound converges to d:
    the Bernstein bounds cost a little more than Clopper-Pearson's, not a different answer."""
    gen = torch.Generator().manual_seed(6)
    w, b, sigma = torch.tensor([1.0, 1.0], dtype=torch.float64), 0.0, 0.5
    smooth = Smooth(linear_classifier(w, b), 2, sigma)
    distances = torch.tensor([0.2, 0.4, 0.6], dtype=torch.float64)
    for x, d in zip(points_at_distances(w, b, distances, gen), distances):
        _, cohen = smooth.certify(x, 50, 20_000, 0.001, 5000, generator=gen)
        _, lvm = smooth.certify_lvm(x, 50, 20_000, 0.001, 5000, maps=[("hardmax", 1.0)], generator=gen)
        assert d - 0.12 * sigma < lvm <= d
        assert lvm <= cohen + 0.02 * sigma  # Clopper-Pearson is the exact bound for votes


# ------------------------------------------------------------------ data sets and training


def test_certify_dataset_and_its_curves():
    gen = torch.Generator().manual_seed(4)
    w, b, sigma = torch.tensor([1.0, -1.0], dtype=torch.float64), 0.0, 0.5
    distances = torch.linspace(-1.0, 1.0, 21, dtype=torch.float64)
    xs = points_at_distances(w, b, distances, gen)
    labels = (distances > 0).long()
    labels[0] = 1  # one wrong label
    smooth = Smooth(linear_classifier(w, b), 2, sigma)
    result = smoothing.certify_dataset(smooth, (xs, labels), n0=20, n=1000, alpha=0.001, batch_size=500,
                                       generator=gen, progress=False)
    assert result.predictions.shape == result.radii.shape == (21,)
    clean = (result.correct).double().mean().item()
    assert result.certified_accuracy(0.0) == pytest.approx(clean)
    curve = result.certified_accuracy([0.0, 0.2, 0.5, 5.0])
    assert torch.all(curve[1:] <= curve[:-1]) and curve[-1] == 0.0
    assert result.average_certified_radius() == pytest.approx(
        sum(r for r, ok in zip(result.radii.tolist(), result.correct.tolist()) if ok) / 21)
    limited = smoothing.certify_dataset(smooth, (xs, labels), n0=20, n=100, alpha=0.001, batch_size=100,
                                        max_points=5, progress=False)
    assert len(limited.labels) == 5
    with pytest.raises(ValueError, match="eps"):
        result.certified_accuracy(-0.1)


def test_gaussian_noise_augments_only_in_training():
    layer = smoothing.GaussianNoise(0.3, generator=torch.Generator().manual_seed(0))
    x = torch.zeros(20_000, 3)
    noisy = layer(x)
    assert noisy.std().item() == pytest.approx(0.3, rel=0.02) and abs(noisy.mean().item()) < 0.01
    assert torch.equal(layer.eval()(x), x)


# ------------------------------------------------------------------ bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda s, x: Smooth(s.base, 2, 0.0), "sigma"),
        (lambda s, x: Smooth(s.base, 2, -1.0), "sigma"),
        (lambda s, x: Smooth(s.base, 1, 1.0), "num_classes"),
        (lambda s, x: s.certify(x, 0, 10, 0.1, 5), "n0"),
        (lambda s, x: s.certify(x, 5, 0, 0.1, 5), "n"),
        (lambda s, x: s.certify(x, 5, 10, 0.0, 5), "alpha"),
        (lambda s, x: s.certify(x, 5, 10, 1.0, 5), "alpha"),
        (lambda s, x: s.certify(x, 5, 10, 0.1, 0), "batch_size"),
        (lambda s, x: s.predict(x, 0, 0.1, 5), "n"),
        (lambda s, x: s.predict(x, 10, 1.5, 5), "alpha"),
        (lambda s, x: Smooth(s.base, 3, 1.0).certify(x, 5, 10, 0.1, 5), "num_classes=3"),
        (lambda s, x: s.certify_lvm(x, 5, 10, 0.1, 5, bound="huge"), "bound"),
        (lambda s, x: s.certify_lvm(x, 5, 10, 0.1, 5, maps=[("relu", 1.0)]), "map"),
        (lambda s, x: s.certify_lvm(x, 5, 10, 0.1, 5, maps=[("softmax", 0.0)]), "temperature"),
        (lambda s, x: s.certify_lvm(x, 5, 1, 0.1, 5), "n"),
        (lambda s, x: s.certify_lvm(x, 5, 10, 0.1, 5, choose_map="best"), "choose_map"),
        (lambda s, x: s.certify_lvm(x, 1, 10, 0.1, 5, choose_map="selection"), "n0"),
        (lambda s, x: smoothing.clopper_pearson_lower(11, 10, 0.1), "successes"),
        (lambda s, x: smoothing.max_certifiable_radius(1.0, 10, 2.0), "alpha"),
    ],
)
def test_bad_input_raises_value_error_naming_the_argument(call, match):
    smooth = Smooth(linear_classifier(torch.tensor([1.0, 1.0], dtype=torch.float64), 0.0), 2, 1.0)
    with pytest.raises(ValueError, match=match):
        call(smooth, torch.zeros(2, dtype=torch.float64))


def test_bad_types_raise_type_error():
    with pytest.raises(TypeError, match="base"):
        Smooth(lambda x: x, 2, 1.0)
    smooth = Smooth(nn.Linear(2, 2), 2, 1.0)
    with pytest.raises(TypeError, match="generator"):
        smooth.certify(torch.zeros(2), 5, 10, 0.1, 5, generator=0)
    with pytest.raises(TypeError, match="x must be a tensor"):
        smooth.certify([0.0, 0.0], 5, 10, 0.1, 5)


def test_choosing_the_map_on_the_selection_samples_skips_the_union_bound():
    """Choosing the map on the n0 samples ("selection", the chosen map certified at level alpha) and the
    union bound over the candidates ("union", each at alpha / m) both certify the right class and stay
    below the exact distance 0.4 (the smoothed boundary of a linear base is the hyperplane)."""
    w, b = torch.tensor([1.0, 1.0], dtype=torch.float64), 0.0
    smooth = Smooth(linear_classifier(w, b, scale=3.0), 2, 0.5)
    x = points_at_distances(w, b, torch.tensor([0.4], dtype=torch.float64), torch.Generator().manual_seed(0))[0]
    one = [("softmax", 1.0)]
    union = smooth.certify_lvm(x, 50, 2000, 0.001, 1000, maps=one, generator=torch.Generator().manual_seed(3))
    chosen = smooth.certify_lvm(x, 50, 2000, 0.001, 1000, maps=one, choose_map="selection",
                                generator=torch.Generator().manual_seed(3))
    assert union[0] == chosen[0] == 1 and 0 < chosen[1] <= 0.4 and 0 < union[1] <= 0.4
    many = [("softmax", t) for t in (0.25, 0.5, 1.0, 2.0, 4.0)]
    best_union = smooth.certify_lvm(x, 50, 20_000, 0.001, 5000, maps=many, generator=torch.Generator().manual_seed(4))
    best_chosen = smooth.certify_lvm(x, 200, 20_000, 0.001, 5000, maps=many, choose_map="selection",
                                     generator=torch.Generator().manual_seed(4))
    assert best_union[0] == best_chosen[0] == 1 and 0 < best_union[1] <= 0.4 and 0 < best_chosen[1] <= 0.4
