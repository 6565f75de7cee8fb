"""Lipschitz bases under Gaussian smoothing: the smoothed constant, Lipschitz-aware certificates,
class-partition bounds and the Poincare variance bound, against quadrature, closed forms and
simulation."""

import math

import numpy as np
import pytest
import torch
from scipy import integrate, special, stats
from torch import nn

import stabilitylab.smoothing as smoothing
from stabilitylab.smoothing import ABSTAIN, Smooth

# ------------------------------------------------------------------ oracles

_W, _DW = np.linspace(-10.0, 10.0, 2001, retstep=True)
_PHI = stats.norm.pdf(_W) * _DW


def gauss_smooth(g, x, sigma):
    """E g(x + sigma W) for g analytic in a strip, by the trapezoid rule with step 0.01 on [-10, 10]:
    its error decays like exp(-2 pi width / step), far below 1e-12 for the functions used here."""
    return (g(np.asarray(x, dtype=float)[..., None] + sigma * _W) * _PHI).sum(-1)


def smoothed_ramp(x, sigma, L):
    """E clip(L (x + sigma W) + 1/2, 0, 1), by adaptive quadrature split at the two kinks."""
    kinks = sorted(((-0.5 / L - x) / sigma, (0.5 / L - x) / sigma))
    f = lambda w: min(max(L * (x + sigma * w) + 0.5, 0.0), 1.0) * stats.norm.pdf(w)  # noqa: E731
    edges = [-40.0, *[min(max(k, -40.0), 40.0) for k in kinks], 40.0]
    return sum(integrate.quad(f, lo, hi, epsabs=1e-15, epsrel=1e-13)[0] for lo, hi in zip(edges, edges[1:]))


def stein_derivative(f, x, sigma, kinks=()):
    """d/dx E f(x + sigma W) = E[f(x + sigma W) W] / sigma, by adaptive quadrature split at the kinks of f."""
    edges = [-14.0, *sorted(min(max((k - x) / sigma, -14.0), 14.0) for k in kinks), 14.0]
    g = lambda w: f(x + sigma * w) * w * stats.norm.pdf(w)  # noqa: E731
    return sum(integrate.quad(g, lo, hi, epsabs=1e-14, epsrel=1e-12)[0] for lo, hi in zip(edges, edges[1:])) / sigma


def ramp_cdf_oracle(t, sigma, L):
    """P(sigma W + U <= t), U uniform on [-1/(2L), 1/(2L)], by adaptive quadrature over U."""
    h = 0.5 / L
    value, _ = integrate.quad(lambda u: special.ndtr((t - u) / sigma), -h, h, epsabs=0, epsrel=1e-12, limit=400)
    return value / (2 * h)


def random_smooth_function(rng, terms=4):
    """g(s) = sum a_k tanh(b_k s + c_k) with its derivative, its Lipschitz constant and its range
    (sup and inf over a fine grid: g is monotone outside [-20, 20] here)."""
    a, b, c = rng.normal(size=terms), rng.normal(scale=1.5, size=terms), rng.normal(size=terms)
    g = lambda s: (a * np.tanh(b * s[..., None] + c)).sum(-1)  # noqa: E731
    dg = lambda s: (a * b / np.cosh(b * s[..., None] + c) ** 2).sum(-1)  # noqa: E731
    grid = np.linspace(-60, 60, 240_001)
    values = np.concatenate([g(grid), [np.sum(a * np.sign(b)), -np.sum(a * np.sign(b))]])
    return g, dg, float(np.abs(dg(grid)).max()), float(values.min()), float(values.max())


# ------------------------------------------------------------------ the smoothed Lipschitz constant


@pytest.mark.parametrize("L, sigma, r", [(1.0, 0.5, 1.0), (3.0, 0.25, 2.0), (0.2, 1.0, 1.0), (10.0, 0.3, 0.5)])
def test_smoothed_constant_is_the_slope_of_the_smoothed_ramp_at_its_centre(L, sigma, r):
    """The clipped ramp clip(L s, -r/2, r/2): the derivative of its smoothing, by quadrature, peaks at
    s = 0 and equals L erf(r / (2 sqrt2 L sigma)) there."""
    ramp = lambda s: np.clip(L * s, -r / 2, r / 2)  # noqa: E731
    constant = smoothing.smoothed_lipschitz_constant(L, sigma, value_range=r)
    kinks = (-r / (2 * L), r / (2 * L))
    assert stein_derivative(ramp, 0.0, sigma, kinks) == pytest.approx(constant, rel=1e-8)
    grid = np.linspace(-2, 2, 17)
    assert max(stein_derivative(ramp, x, sigma, kinks) for x in grid) <= constant * (1 + 1e-8)
    # the thesis code's L erf(r / (sqrt2 L sigma)) is valid but looser
    assert L * math.erf(r / (math.sqrt(2) * L * sigma)) >= constant


def test_smoothed_constant_bounds_random_lipschitz_functions():
    """Sums of tanh: the derivative of the smoothing, E g'(x + sigma W) by the trapezoid rule, stays below
    the constant computed from the exact Lipschitz constant and range of g."""
    rng = np.random.default_rng(0)
    xs = np.linspace(-6, 6, 241)
    for _ in range(10):
        g, dg, L, low, high = random_smooth_function(rng)
        for sigma in (0.1, 0.5, 2.0):
            constant = smoothing.smoothed_lipschitz_constant(L, sigma, value_range=high - low)
            assert np.abs(gauss_smooth(dg, xs, sigma)).max() <= constant * (1 + 1e-9)


def test_smoothed_constant_by_monte_carlo_in_several_dimensions():
    """f(x) = clip(L u.x, -r/2, r/2) in R^8: the Stein estimator E[f(sigma Z) Z] / sigma of the gradient
    at 0 has norm L erf(...) up to Monte Carlo error (4 standard deviations)."""
    gen = torch.Generator().manual_seed(0)
    d, L, sigma, r, n = 8, 2.0, 0.4, 1.0, 400_000
    u = torch.randn(d, generator=gen, dtype=torch.float64)
    u /= u.norm()
    z = torch.randn(n, d, generator=gen, dtype=torch.float64)
    values = (L * sigma * (z @ u)).clamp(-r / 2, r / 2)
    grad_along_u = values * (z @ u) / sigma
    estimate, sd = float(grad_along_u.mean()), float(grad_along_u.std()) / math.sqrt(n)
    constant = smoothing.smoothed_lipschitz_constant(L, sigma, value_range=r)
    assert abs(estimate - constant) < 4 * sd


def test_smoothed_constant_limits():
    sigma, r = 0.5, 1.0
    small = smoothing.smoothed_lipschitz_constant(1e-4, sigma, value_range=r)
    assert small / 1e-4 == pytest.approx(1.0, abs=1e-12)  # L -> 0: smoothing keeps L
    large = smoothing.smoothed_lipschitz_constant(1e7, sigma, value_range=r)
    assert large == pytest.approx(r / (sigma * math.sqrt(2 * math.pi)), rel=1e-9)  # any function of range r
    for L in (0.1, 1.0, 10.0, 100.0):
        value = smoothing.smoothed_lipschitz_constant(L, sigma, value_range=r)
        assert value <= min(L, r / (sigma * math.sqrt(2 * math.pi))) + 1e-15
    ratio = 1e6 * math.erf(r / (math.sqrt(2) * 1e6 * sigma)) / large
    assert ratio == pytest.approx(2.0, rel=1e-6)  # the [0, r] formula is twice too large in the limit


# ------------------------------------------------------------------ simplex maps of Lipschitz logits


@pytest.mark.parametrize("kind", ["softmax", "sparsemax"])
def test_simplex_map_coordinate_constant_bounds_the_jacobian_rows_and_is_attained(kind):
    c, t = 4, 0.5
    bound = smoothing.simplex_map_lipschitz(kind, t, c, logit_lipschitz=2.0)
    gen = torch.Generator().manual_seed(0)
    z = (torch.randn(300, c, generator=gen, dtype=torch.float64) * 3).requires_grad_()
    worst = 0.0
    for k in range(c):
        (grad,) = torch.autograd.grad(smoothing.simplex_map(z, kind, t)[:, k].sum(), z)
        worst = max(worst, float(grad.norm(dim=1).max()) * 2.0)  # logits 2-Lipschitz: a factor 2
    assert worst <= bound * (1 + 1e-12)
    # attained: softmax at p = (1/2, 1/2, 0, 0); sparsemax on the full support
    z0 = torch.tensor([[0.0, 0.0, -60.0, -60.0]] if kind == "softmax" else [[0.0, 0.01, 0.02, 0.03]],
                      dtype=torch.float64, requires_grad=True)
    (grad,) = torch.autograd.grad(smoothing.simplex_map(z0, kind, t)[0, 0], z0)
    assert float(grad.norm()) * 2.0 == pytest.approx(bound, rel=1e-9)
    with pytest.raises(ValueError, match="hardmax"):
        smoothing.simplex_map_lipschitz("hardmax", 1.0, c)


# ------------------------------------------------------------------ the Lipschitz-aware map Q


@pytest.mark.parametrize("L", [0.05, 0.5, 2.0, 40.0, 3000.0])
def test_q_inverts_the_smoothed_ramp_and_dominates_cohen(L):
    sigma = 0.7
    ps = [1e-6, 0.01, 0.2, 0.4, 0.5, 0.6, 0.9, 0.999, 1 - 1e-7]
    for p in ps:
        q = smoothing.lipschitz_probit(p, sigma, base_lipschitz=L)
        assert ramp_cdf_oracle(q, sigma, L) == pytest.approx(p, rel=1e-8, abs=1e-13)
        cohen = sigma * stats.norm.ppf(p)
        # the theorem: the tail of sigma W + U beyond t >= 0 is heavier than that of sigma W
        if p >= 0.5:
            assert ramp_cdf_oracle(cohen, sigma, L) <= p * (1 + 1e-12)
            assert q >= cohen
        else:
            assert q <= cohen
    assert smoothing.lipschitz_probit(1.0, sigma, base_lipschitz=L) == math.inf
    assert smoothing.lipschitz_probit(0.0, sigma, base_lipschitz=L) == -math.inf


def test_q_of_the_smoothed_function_is_1_lipschitz_and_tight_for_the_ramp():
    """For random L-Lipschitz h with values in [0, 1] (1-D, smoothed by the trapezoid rule), Q(F) changes by
    at most |x - y|; for the ramp clip(L s + 1/2, 0, 1), Q(F(x)) = x exactly, while Cohen's
    sigma Phi^-1(F(x)) falls short of |x|."""
    rng = np.random.default_rng(1)
    xs = np.linspace(-3, 3, 241)
    for _ in range(8):
        g, _, slope, low, high = random_smooth_function(rng)
        h = lambda s: (g(s) - low) / (high - low)  # noqa: E731,B023
        L = slope / (high - low)
        for sigma in (0.2, 1.0):
            q = smoothing.lipschitz_probit(torch.from_numpy(gauss_smooth(h, xs, sigma).clip(0, 1)), sigma,
                                           base_lipschitz=L).numpy()
            assert (np.abs(np.diff(q)) <= (xs[1] - xs[0]) * (1 + 1e-7)).all()
    for L, sigma in ((0.3, 0.5), (2.0, 0.25), (1.0, 1.0)):
        points = np.linspace(-1, 1, 21)  # away from F = 1 - 1e-12, where 1 - F has no digits left
        smoothed = torch.tensor([smoothed_ramp(x, sigma, L) for x in points], dtype=torch.float64)
        exact = smoothing.lipschitz_probit(smoothed, sigma, base_lipschitz=L).numpy()
        assert np.allclose(exact, points, atol=1e-9)
        cohen = sigma * special.ndtri(smoothed.numpy())
        assert (np.abs(cohen) <= np.abs(points) + 1e-12).all()
        assert cohen[-1] < points[-1] - 1e-3


def test_lipschitz_aware_radius_recovers_cohen_in_the_limit_and_is_never_smaller():
    sigma = 0.5
    p_a = torch.tensor([0.3, 0.5, 0.51, 0.6, 0.8, 0.95, 0.999, 0.99999])
    p_b = torch.tensor([0.2, 0.4, 0.3, 0.3, 0.15, 0.04, 1e-4, 1e-6])
    cohen = torch.from_numpy(sigma / 2 * (stats.norm.ppf(p_a.double()) - stats.norm.ppf(p_b.double()))).clamp_min(0)
    assert torch.allclose(smoothing.lipschitz_aware_radius(p_a, sigma, p_b=p_b), cohen, atol=1e-12)
    previous = None
    for L in (1e9, 1e4, 100.0, 10.0, 3.0, 1.0, 0.3, 0.1):
        radius = smoothing.lipschitz_aware_radius(p_a, sigma, base_lipschitz=L, p_b=p_b)
        assert (radius >= cohen).all()
        if previous is not None:
            assert (radius >= previous - 1e-12).all()  # larger L, smaller radius
        previous = radius
    limit = smoothing.lipschitz_aware_radius(p_a, sigma, base_lipschitz=1e9, p_b=p_b)
    assert torch.allclose(limit, cohen, atol=1e-8)
    # the default p_b = 1 - p_a gives Q(p_a); a large gain when the ramp is wide (1/L >> sigma)
    assert smoothing.lipschitz_aware_radius(0.9, sigma, base_lipschitz=0.2) == pytest.approx(
        smoothing.lipschitz_probit(0.9, sigma, base_lipschitz=0.2), rel=1e-12)
    assert smoothing.lipschitz_aware_radius(0.9, sigma, base_lipschitz=0.2) > 2 * sigma * stats.norm.ppf(0.9)
    assert smoothing.lipschitz_aware_radius(0.4, sigma, base_lipschitz=1.0) == 0.0


# ------------------------------------------------------------------ certificates of a ramp base


class RampLogits(nn.Module):
    """Logits (s, -s) with s = L (u.x - b): through sparsemax at T = 1, class 0 has probability
    clip(L (u.x - b) + 1/2, 0, 1), exactly L-Lipschitz, the worst case of the theorem."""

    def __init__(self, u: torch.Tensor, b: float, L: float):
        super().__init__()
        self.register_buffer("u", u / u.norm())
        self.b, self.L = b, L
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))  # places the noise in float64

    def forward(self, x):
        s = self.L * (x @ self.u - self.b)
        return torch.stack([s, -s], 1)


def test_lipschitz_aware_certificates_of_a_ramp_base_stay_below_the_true_distance():
    """Smoothed, class 0 has probability G_L(d) with d = u.x - b, so the smoothed classifier is class 0
    exactly when d > 0 and the distance to its boundary is |d|. Over 150 points the certificates may
    exceed |d| only with probability alpha each; they are tight, and never below Cohen's radius
    from the same votes."""
    gen = torch.Generator().manual_seed(0)
    d, L, sigma, alpha, n_points = 5, 0.8, 0.5, 0.05, 150
    u = torch.randn(d, generator=gen, dtype=torch.float64)
    b = 0.3
    smooth = Smooth(RampLogits(u, b, L), num_classes=2, sigma=sigma)
    unit = u / u.norm()
    distances = torch.linspace(-1.5, 1.5, n_points, dtype=torch.float64)
    tangent = torch.randn(n_points, d, generator=gen, dtype=torch.float64)
    tangent -= (tangent @ unit)[:, None] * unit
    xs = tangent + (b + distances)[:, None] * unit
    over, gains, gaps = 0, [], []
    kw = dict(n0=64, n=2000, alpha=alpha, batch_size=2000, soft_map=("sparsemax", 1.0))
    for i, (x, dist) in enumerate(zip(xs, distances)):
        c, r = smooth.certify(x, base_lipschitz=L, generator=torch.Generator().manual_seed(i), **kw)
        c0, r0 = smooth.certify(x, generator=torch.Generator().manual_seed(i), **kw)
        assert c == c0 and r >= r0  # same votes: the Lipschitz-aware radius is never smaller
        if c != ABSTAIN:
            assert c == int(dist < 0) or r < 0.05  # a wrong class only with a failed selection
            over += r > abs(float(dist))
            gains.append(r - r0)
            if abs(dist) > 0.3:
                gaps.append(abs(float(dist)) - r)
    assert over <= alpha * n_points + 3 * math.sqrt(alpha * (1 - alpha) * n_points)
    assert sum(gains) / len(gains) > 0.1  # 1/L = 1.25 > sigma: a clear gain over Cohen's radius
    assert max(gaps) < 0.25 and sum(gaps) / len(gaps) < 0.15  # 2000 samples: close to the truth


def test_base_lipschitz_needs_a_lipschitz_soft_map():
    smooth = Smooth(RampLogits(torch.ones(2, dtype=torch.float64), 0.0, 1.0), 2, 0.5)
    x = torch.zeros(2, dtype=torch.float64)
    with pytest.raises(ValueError, match="soft_map"):
        smooth.certify(x, 8, 16, 0.1, 16, base_lipschitz=1.0)
    with pytest.raises(ValueError, match="hardmax"):
        smooth.certify(x, 8, 16, 0.1, 16, base_lipschitz=1.0, soft_map=("hardmax", 1.0))
    with pytest.raises(ValueError, match="base_lipschitz"):
        smooth.certify(x, 8, 16, 0.1, 16, base_lipschitz=math.inf, soft_map=("softmax", 1.0))
    with pytest.raises(ValueError, match="multiclass"):
        smooth.certify(x, 8, 16, 0.1, 16, multiclass="bonferroni")
    with pytest.raises(ValueError, match="method='cohen'"):
        smoothing.certify_dataset(smooth, (x[None], torch.zeros(1, dtype=torch.long)), n0=4, n=8, alpha=0.1,
                                  batch_size=8, method="lvm", base_lipschitz=1.0, soft_map=("softmax", 1.0))


def test_soft_votes_follow_the_soft_output():
    """With negligible noise, the votes drawn from sparsemax of the ramp's logits at u.x = 0.125, L = 2
    pick class 0 with probability clip(L u.x + 1/2, 0, 1) = 0.75 (4 standard deviations)."""
    L = 2.0
    smooth = Smooth(RampLogits(torch.tensor([1.0, 0.0], dtype=torch.float64), 0.0, L), 2, 1e-9)
    counts = smooth._soft_counts(torch.tensor([0.125, 0.0], dtype=torch.float64), 20000, 5000, ("sparsemax", 1.0),
                                 torch.Generator().manual_seed(0), False)
    assert int(counts.sum()) == 20000
    assert abs(int(counts[0]) / 20000 - 0.75) < 4 * math.sqrt(0.75 * 0.25 / 20000)


def test_certify_dataset_passes_the_lipschitz_options():
    smooth = Smooth(RampLogits(torch.tensor([1.0, 0.0], dtype=torch.float64), 0.0, 0.5), 2, 0.5)
    x = torch.tensor([[1.0, 0.0], [-1.0, 0.3], [2.0, 1.0]], dtype=torch.float64)
    y = torch.tensor([0, 1, 0])
    kw = dict(n0=32, n=500, alpha=0.01, batch_size=500, soft_map=("sparsemax", 1.0), progress=False)
    aware = smoothing.certify_dataset(smooth, (x, y), base_lipschitz=0.5, generator=torch.Generator().manual_seed(1),
                                      **kw)
    plain = smoothing.certify_dataset(smooth, (x, y), generator=torch.Generator().manual_seed(1), **kw)
    assert torch.equal(aware.predictions, plain.predictions) and (aware.radii >= plain.radii).all()
    assert (aware.radii > plain.radii).all()  # 1/L = 2 > sigma: every radius grows
    assert (aware.radii <= x[:, 0].abs()).all()  # the distance to the smoothed boundary x_0 = 0


# ------------------------------------------------------------------ class partitions


def test_class_partition_buckets():
    # the rest (10 + 5 + 5 = 20) got fewer selection votes than the runner-up (30): one bucket
    assert smoothing.partition_bounds([50, 30, 10, 5, 5], [5, 3, 1, 1, 0], 0.1).buckets == [[0], [1], [2, 3, 4]]
    # 15 + 15 + 10 = 40 > 20: split off class 2; 15 + 10 = 25 > 20: split off class 3; 10 <= 20: done
    assert smoothing.partition_bounds([40, 20, 15, 15, 10], [1] * 5, 0.1).buckets == [[0], [1], [2], [3], [4]]
    assert smoothing.partition_bounds([3, 9], [4, 6], 0.1).buckets == [[1], [0]]


@pytest.mark.parametrize(
    "p, n",
    [([0.40, 0.30, 0.12, 0.10, 0.08], 200), ([0.5, 0.2] + [0.3 / 8] * 8, 300), ([0.35, 0.35, 0.1, 0.1, 0.1], 100)],
)
def test_class_partition_bounds_cover_with_probability_1_minus_alpha(p, n):
    """Simulated multinomial votes with known probabilities: both bounds hold in at least 1 - alpha of
    1000 runs (3 standard deviations of slack); the same buckets without dividing alpha by their
    number fail more often, so the simulation sees the correction."""
    rng = np.random.default_rng(0)
    p, alpha, runs = np.array(p), 0.1, 1000
    fail = naive_fail = 0
    for _ in range(runs):
        selection, counts = rng.multinomial(50, p).tolist(), rng.multinomial(n, p).tolist()
        top, p_a, p_b, buckets = smoothing.partition_bounds(selection, counts, alpha)
        runner_up = max(p[c] for c in range(len(p)) if c != top)
        fail += not (p_a <= p[top] and p_b >= runner_up)
        totals = [sum(counts[c] for c in bucket) for bucket in buckets]
        naive_a = stats.beta.ppf(alpha, totals[0], n - totals[0] + 1) if totals[0] else 0.0
        naive_b = max(stats.beta.ppf(1 - alpha, k + 1, n - k) if k < n else 1.0 for k in totals[1:])
        naive_fail += not (naive_a <= p[top] and naive_b >= runner_up)
    assert fail / runs <= alpha + 3 * math.sqrt(alpha * (1 - alpha) / runs)
    assert naive_fail > fail


class IntervalClasses(nn.Module):
    """Class 0 for x_0 < 0, class 1 for 0 <= x_0 < a, class 2 beyond (as large logits)."""

    def __init__(self, a: float):
        super().__init__()
        self.a = a
        self.dummy = nn.Parameter(torch.zeros((), dtype=torch.float64))

    def forward(self, x):
        s = x[:, 0]
        return 50.0 * torch.stack([(s < 0).double(), ((s >= 0) & (s < self.a)).double(), (s >= self.a).double()], 1)


def test_partition_certifies_a_minority_top_class_soundly():
    """Smoothed probabilities (Phi(-s/sigma), Phi((a - s)/sigma) - Phi(-s/sigma), 1 - Phi((a - s)/sigma)):
    at s = 0.6, a = 1.2, sigma = 1 the top class 1 has 2 Phi(0.6) - 1 = 0.45 < 1/2, so the complement bound
    abstains, while the partition certifies a radius within which (checked on a fine grid of s, the
    only direction that matters) the smoothed classifier keeps its class."""
    a, sigma, s = 1.2, 1.0, 0.6
    smooth = Smooth(IntervalClasses(a), 3, sigma)
    x = torch.tensor([s, 0.0], dtype=torch.float64)
    kw = dict(n0=200, n=20_000, alpha=0.01, batch_size=5000)
    assert smooth.certify(x, generator=torch.Generator().manual_seed(0), **kw) == (ABSTAIN, 0.0)
    c, r = smooth.certify(x, multiclass="partition", generator=torch.Generator().manual_seed(0), **kw)
    assert c == 1 and r > 0.1

    def smoothed(t):
        lo, hi = stats.norm.cdf(-t / sigma), stats.norm.cdf((a - t) / sigma)
        return np.stack([lo, hi - lo, 1 - hi], -1)

    probabilities = smoothed(np.array(s))
    assert 0.4 < probabilities[1] < 0.5
    grid = np.linspace(s - r, s + r, 2001)
    assert (smoothed(grid).argmax(-1) == 1).all()


# ------------------------------------------------------------------ variance under noise


def test_variance_of_a_linear_function_equals_the_poincare_bound():
    gen = torch.Generator().manual_seed(0)
    d, L, sigma, n = 6, 1.7, 0.4, 20_000
    w = torch.randn(2, d, generator=gen, dtype=torch.float64)
    w = w / w.norm(dim=1, keepdim=True) * L
    x = torch.randn(3, d, generator=gen, dtype=torch.float64)
    result = smoothing.smoothed_variance(lambda z: z @ w.T, x, sigma, n, lipschitz=L, batch_size=3000,
                                         generator=gen)
    assert result.bound == pytest.approx(sigma**2 * L**2)
    assert result.variance.shape == (3, 2) and result.mean.shape == (3, 2)
    assert torch.allclose(result.mean, x @ w.T, atol=5 * sigma * L / math.sqrt(n))
    # the sample variance of n Gaussians: relative sd sqrt(2 / (n - 1))
    ones = torch.ones(3, 2, dtype=torch.float64)
    assert torch.allclose(result.variance / result.bound, ones, atol=5 * math.sqrt(2 / (n - 1)))


def test_variance_of_a_sine_matches_its_closed_form_below_the_bound():
    """f(x) = L sin(u.x): Var f(x + delta) = L^2 [(1 - e^{-2 s^2} cos 2a) / 2 - e^{-s^2} sin^2 a], a = u.x."""
    gen = torch.Generator().manual_seed(1)
    d, L, n = 4, 2.0, 40_000
    u = torch.randn(d, generator=gen, dtype=torch.float64)
    u /= u.norm()
    x = torch.randn(5, d, generator=gen, dtype=torch.float64)
    a = (x @ u).numpy()
    for sigma in (0.1, 0.5, 2.0):
        exact = L**2 * ((1 - np.exp(-2 * sigma**2) * np.cos(2 * a)) / 2 - np.exp(-(sigma**2)) * np.sin(a) ** 2)
        result = smoothing.smoothed_variance(lambda z: L * torch.sin(z @ u), x, sigma, n, lipschitz=L,
                                             generator=gen)
        assert (exact <= result.bound * (1 + 1e-12)).all()
        estimate = result.variance[:, 0].numpy()
        # the fourth moment of L sin is at most L^4: sd of the sample variance <= L^2 / sqrt(n)
        assert np.allclose(estimate, exact, atol=5 * L**2 / math.sqrt(n))


def test_variance_of_random_lipschitz_networks_stays_below_the_bound():
    gen = torch.Generator().manual_seed(2)
    for trial in range(5):
        net = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3)).double()
        with torch.no_grad():
            for layer in (net[0], net[2]):
                layer.weight.normal_(generator=gen)
                layer.bias.normal_(generator=gen)
        norms = [torch.linalg.matrix_norm(layer.weight.detach(), 2) for layer in (net[0], net[2])]
        L = float(norms[0] * norms[1])
        net.train()
        x = torch.randn(4, 8, generator=gen, dtype=torch.float64)
        sigma = [0.05, 0.2, 1.0, 3.0, 0.5][trial]
        result = smoothing.smoothed_variance(net, x, sigma, 4000, lipschitz=L, generator=gen)
        assert net.training  # the mode is given back
        assert (result.variance <= result.bound * (1 + 5 * math.sqrt(2 / 3999))).all()


def test_smoothed_variance_rejects_bad_input():
    x = torch.zeros(2, 3)
    f = lambda z: z.sum(1)  # noqa: E731
    with pytest.raises(TypeError, match="fn"):
        smoothing.smoothed_variance(3, x, 1.0, 10, lipschitz=1.0)
    with pytest.raises(ValueError, match="lipschitz"):
        smoothing.smoothed_variance(f, x, 1.0, 10, lipschitz=math.nan)
    with pytest.raises(ValueError, match="n must"):
        smoothing.smoothed_variance(f, x, 1.0, 1, lipschitz=1.0)
    with pytest.raises(ValueError, match="x contains"):
        smoothing.smoothed_variance(f, torch.full((2, 3), math.nan), 1.0, 10, lipschitz=1.0)
    with pytest.raises(ValueError, match="fn must return"):
        smoothing.smoothed_variance(lambda z: z.sum(), x, 1.0, 10, lipschitz=1.0)
