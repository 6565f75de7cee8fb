"""Tests for stabilitylab.attacks: FGSM, PGD, minimal adversarial distance, robust accuracy.

The assertions are mathematical: exact feasibility of every returned point
(threat ball and input box), closed forms on linear classifiers, and the
ordering of attacks on a small trained network.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab.attacks import fgsm, minimal_adversarial_distance, pgd, robust_accuracy

SETTINGS = settings(max_examples=25, deadline=None, derandomize=True)



# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------


class RandomMLP(nn.Module):
    """Flatten -> Linear -> tanh -> Linear, weights drawn from a torch.Generator."""

    def __init__(self, d: int, n_classes: int, seed: int, dtype=torch.float32, hidden: int = 8):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w1 = nn.Parameter(torch.randn(hidden, d, generator=g, dtype=dtype) / math.sqrt(d))
        self.b1 = nn.Parameter(torch.randn(hidden, generator=g, dtype=dtype) * 0.1)
        self.w2 = nn.Parameter(torch.randn(n_classes, hidden, generator=g, dtype=dtype))
        self.b2 = nn.Parameter(torch.zeros(n_classes, dtype=dtype))

    def forward(self, x):
        h = torch.tanh(x.reshape(x.shape[0], -1) @ self.w1.T + self.b1)
        return h @ self.w2.T + self.b2


class Linear(nn.Module):
    """logits = x W^T + b on flattened inputs."""

    def __init__(self, W: torch.Tensor, b: torch.Tensor):
        super().__init__()
        self.W = nn.Parameter(W.clone())
        self.b = nn.Parameter(b.clone())

    def forward(self, x):
        return x.reshape(x.shape[0], -1) @ self.W.T + self.b


class Constant(nn.Module):
    """Logits independent of x (zero input gradient)."""

    def __init__(self, n_classes: int = 2):
        super().__init__()
        self.b = nn.Parameter(torch.arange(n_classes, 0, -1, dtype=torch.float32))

    def forward(self, x):
        return 0.0 * x.reshape(x.shape[0], -1).sum(dim=1, keepdim=True) + self.b


def linear_problem(seed: int, d: int, n: int, min_margin: float = 0.05):
    """A random 2-class linear model and inputs labelled by it (all correct)."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(2, d, generator=g)
    b = torch.randn(2, generator=g)
    x = torch.randn(4 * n, d, generator=g)
    model = Linear(W, b)
    with torch.no_grad():
        logits = model(x)
    margin = (logits[:, 0] - logits[:, 1]).abs()
    keep = margin > min_margin * (W[0] - W[1]).norm()
    x, logits, margin = x[keep][:n], logits[keep][:n], margin[keep][:n]
    y = logits.argmax(dim=1)
    w = W[0] - W[1]
    return model, x, y, margin / w.norm(), margin / w.abs().sum()


def sample_bounds(kind: str, shape: tuple[int, ...], g: torch.Generator, dtype):
    n = shape[0]
    feat = shape[1:]
    if kind == "none":
        return None
    if kind == "unit":
        return (0.0, 1.0)
    if kind == "odd":
        return (-2.5, 0.7)
    if kind == "feature":
        lo = torch.randn(feat, generator=g, dtype=dtype)
        hi = lo + 0.05 + torch.rand(feat, generator=g, dtype=dtype)
        return (lo, hi)
    if kind == "batch":  # per-example and per-feature, tensor lo with float hi
        lo = -torch.rand((n, *feat), generator=g, dtype=dtype) - 0.01
        return (lo, 0.3)
    raise AssertionError(kind)


def sample_inside(bounds, shape, g, dtype):
    if bounds is None:
        return 2.0 * torch.randn(shape, generator=g, dtype=dtype)
    lo, hi = (torch.as_tensor(b, dtype=dtype) for b in bounds)
    lo, hi = torch.broadcast_tensors(lo.expand(shape), hi.expand(shape))
    u = torch.rand(shape, generator=g, dtype=dtype)
    x = lo + (hi - lo) * u
    # put some coordinates exactly on the faces of the box
    face = torch.rand(shape, generator=g, dtype=dtype)
    x = torch.where(face < 0.15, lo, x)
    x = torch.where(face > 0.85, hi, x)
    return x


def dist64(x_adv, x, norm):
    d = (x_adv.double() - x.double()).reshape(x.shape[0], -1)
    if norm == "linf":
        return d.abs().amax(dim=1)
    return torch.linalg.vector_norm(d, dim=1)


def assert_feasible(x_adv, x, eps, norm, bounds):
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert torch.isfinite(x_adv).all()
    # exact in float64 (the documented guarantee) ...
    assert (dist64(x_adv, x, norm) <= eps).all(), dist64(x_adv, x, norm).max().item() - eps
    # ... and within 1e-6 relative when measured naively in the input dtype
    d = (x_adv - x).reshape(x.shape[0], -1)
    naive = d.abs().amax(dim=1) if norm == "linf" else d.norm(dim=1)
    assert (naive <= eps * (1 + 1e-6) + 1e-12).all()
    if bounds is not None:
        lo, hi = (torch.as_tensor(b, dtype=x.dtype) for b in bounds)
        assert (x_adv >= lo).all() and (x_adv <= hi).all()


# ---------------------------------------------------------------------------
# feasibility: eps-ball and input box, exactly
# ---------------------------------------------------------------------------


@SETTINGS
@given(
    attack=st.sampled_from(["fgsm", "pgd"]),
    norm=st.sampled_from(["linf", "l2"]),
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=4).map(tuple),
    eps=st.floats(1e-4, 3.0),
    bound_kind=st.sampled_from(["none", "unit", "odd", "feature", "batch"]),
    dtype=st.sampled_from([torch.float32, torch.float64]),
    seed=st.integers(0, 2**16),
)
def test_attacks_respect_ball_and_box_exactly(attack, norm, shape, eps, bound_kind, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    bounds = sample_bounds(bound_kind, shape, g, dtype)
    x = sample_inside(bounds, shape, g, dtype)
    d = int(np.prod(shape[1:]))
    model = RandomMLP(d, 3, seed, dtype=dtype)
    y = torch.randint(0, 3, (shape[0],), generator=g)
    if attack == "fgsm":
        x_adv = fgsm(model, x, y, eps, norm=norm, bounds=bounds)
    else:
        x_adv = pgd(model, x, y, eps, norm=norm, bounds=bounds, n_iter=5,
                    step_size=eps, generator=torch.Generator().manual_seed(seed))
    assert_feasible(x_adv, x, eps, norm, bounds)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_large_steps_land_on_the_ball_and_box(norm):
    # steps far larger than eps: every iterate is projected; the constraints must be active
    g = torch.Generator().manual_seed(0)
    x = torch.rand(16, 10, generator=g) * 3.2 - 2.5
    bounds = (-2.5, 0.7)
    model = RandomMLP(10, 2, 0)
    y = torch.zeros(16, dtype=torch.long)
    for eps in (1e-3, 0.1, 1.0, 10.0):
        x_adv = pgd(model, x, y, eps, norm=norm, bounds=bounds, step_size=100.0, n_iter=3,
                    generator=g)
        assert_feasible(x_adv, x, eps, norm, bounds)


@pytest.mark.parametrize("attack", [fgsm, pgd])
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_eps_zero_returns_x(attack, norm):
    model = RandomMLP(4, 3, 1)
    x = torch.rand(5, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    x_adv = attack(model, x, y, 0.0, norm=norm, bounds=(0.0, 1.0))
    assert torch.equal(x_adv, x)
    assert x_adv.data_ptr() != x.data_ptr()


# ---------------------------------------------------------------------------
# FGSM closed form on a linear model
# ---------------------------------------------------------------------------


def test_fgsm_on_linear_model_is_the_closed_form_step():
    # For 2-class cross-entropy, grad_x L = p_other (w_other - w_y) with p_other > 0:
    # linf FGSM = x + eps sign(w_other - w_y), l2 FGM = x + eps (w_other - w_y)/||.||_2
    model, x, y, _, _ = linear_problem(0, 6, 10)
    W = model.W.detach()
    v = W[1 - y] - W[y]
    eps = 0.3
    torch.testing.assert_close(fgsm(model, x, y, eps, norm="linf"), x + eps * v.sign())
    torch.testing.assert_close(fgsm(model, x, y, eps, norm="l2"),
                               x + eps * v / v.norm(dim=1, keepdim=True))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_zero_gradient_gives_no_nan(norm):
    model = Constant()
    x = torch.rand(6, 3)
    y = torch.zeros(6, dtype=torch.long)
    out = fgsm(model, x, y, 0.5, norm=norm)
    assert torch.equal(out, x)
    out = pgd(model, x, y, 0.5, norm=norm, random_start=False)
    assert torch.equal(out, x)
    out = pgd(model, x, y, 0.5, norm=norm, generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out).all()


# ---------------------------------------------------------------------------
# random start: uniform in the ball
# ---------------------------------------------------------------------------


def test_random_start_is_uniform_in_the_ball():
    # Constant model: gradient 0, never adversarial, so PGD returns its random start.
    model = Constant()
    n, d, eps = 4000, 3, 0.5
    x = torch.zeros(n, d)
    y = torch.zeros(n, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    # l2: P(||delta|| <= r) = (r/eps)^d, so (||delta||/eps)^d ~ U(0, 1); direction isotropic
    delta = pgd(model, x, y, eps, norm="l2", n_iter=1, generator=g)
    r = delta.norm(dim=1) / eps
    u = r.double() ** d
    assert abs(u.mean().item() - 0.5) < 0.02 and abs(u.var().item() - 1 / 12) < 0.01
    assert delta.mean(dim=0).abs().max() < 0.02
    # linf: each coordinate ~ U(-eps, eps): mean 0, variance eps^2 / 3
    delta = pgd(model, x, y, eps, norm="linf", n_iter=1, generator=g)
    assert delta.abs().max() <= eps
    assert delta.mean().abs() < 0.01
    assert abs(delta.var().item() - eps**2 / 3) < 0.005


# ---------------------------------------------------------------------------
# minimal adversarial distance: closed forms on a linear classifier
# ---------------------------------------------------------------------------


@settings(max_examples=6, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), d=st.integers(1, 12), norm=st.sampled_from(["l2", "linf"]),
       random_start=st.booleans())
def test_minimal_distance_on_linear_model_matches_closed_form(seed, d, norm, random_start):
    # distance to {x: (w1 - w2).x + b1 - b2 = 0} is |margin| / ||w1 - w2||_q, with q the
    # dual norm (q = 2 for l2, q = 1 for linf).
    model, x, y, cf_l2, cf_linf = linear_problem(seed, d, 24)
    cf = (cf_l2 if norm == "l2" else cf_linf).double()
    eps_max = 2.0 * cf.max().item()
    n_search = 12
    dist, x_adv = minimal_adversarial_distance(
        model, x, y, norm=norm, eps_max=eps_max, n_search=n_search,
        generator=torch.Generator().manual_seed(seed), random_start=random_start,
        return_examples=True)
    assert dist.shape == (x.shape[0],) and dist.dtype == x.dtype
    dist = dist.double()
    # upper bound: an adversarial example is realised at that distance
    assert (dist >= cf * (1 - 1e-5) - 1e-6).all()
    # and tight: bisection bracket plus a few percent
    width = eps_max * 2.0**-n_search
    assert (dist <= cf * 1.03 + width).all(), (dist / cf).max()
    with torch.no_grad():
        assert (model(x_adv).argmax(dim=1) != y).all()
    assert (dist64(x_adv, x, norm) <= dist).all()


def test_minimal_distance_special_values_and_examples():
    model, x, y, cf, _ = linear_problem(3, 4, 12)
    y = y.clone()
    y[:3] = 1 - y[:3]  # misclassified on purpose -> distance 0
    dist, x_adv = minimal_adversarial_distance(model, x, y, eps_max=10.0, return_examples=True,
                                               generator=torch.Generator().manual_seed(0))
    assert (dist[:3] == 0).all() and torch.equal(x_adv[:3], x[:3])
    assert torch.isfinite(dist[3:]).all() and (dist[3:] > 0).all()
    # eps_max below every true distance: nothing can be found -> inf, examples = x
    small = 0.5 * cf[3:].min().item()
    dist, x_adv = minimal_adversarial_distance(model, x[3:], y[3:], eps_max=small,
                                               return_examples=True)
    assert torch.isinf(dist).all() and torch.equal(x_adv, x[3:])


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_minimal_distance_default_eps_max_is_box_diameter(norm):
    # boundary x_0 = 0.1 through the box [-2.5, 0.7]^3; points inside at x_0 < 0.1
    d = 3
    W = torch.zeros(2, d)
    W[0, 0], W[1, 0] = -1.0, 1.0
    b = torch.tensor([0.1, -0.1])
    model = Linear(W, b)  # logit0 - logit1 = 2 (0.1 - x_0)
    x = torch.tensor([[-1.0, 0.0, 0.3], [0.0, -2.0, 0.7], [-2.5, -2.5, -2.5]])
    y = torch.zeros(3, dtype=torch.long)
    dist = minimal_adversarial_distance(model, x, y, norm=norm, bounds=(-2.5, 0.7),
                                        generator=torch.Generator().manual_seed(0))
    true = 0.1 - x[:, 0]
    diam = 3.2 * (math.sqrt(d) if norm == "l2" else 1.0)
    assert (dist >= true * (1 - 1e-5)).all()
    assert (dist <= true * 1.03 + diam * 2.0**-12).all()
    # the same box given as per-example, per-feature tensors gives the same search
    lo = torch.full((3, d), -2.5)
    dist_t = minimal_adversarial_distance(model, x, y, norm=norm, bounds=(lo, 0.7),
                                          generator=torch.Generator().manual_seed(0))
    assert torch.equal(dist, dist_t)
    with pytest.raises(ValueError, match="eps_max"):
        minimal_adversarial_distance(model, x, y, norm=norm)
    with pytest.raises(ValueError, match="eps_max"):
        minimal_adversarial_distance(model, x, y, norm=norm, bounds=(-math.inf, 0.7))


# ---------------------------------------------------------------------------
# a trained, undefended MLP on two moons
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def moons():
    from sklearn.datasets import make_moons

    X, Y = make_moons(n_samples=400, noise=0.1, random_state=0)
    x = torch.tensor(X, dtype=torch.float32)
    y = torch.tensor(Y, dtype=torch.long)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(2, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(),
                              nn.Linear(32, 2))
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(300):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    model.eval()
    model.zero_grad(set_to_none=True)
    with torch.no_grad():
        clean = (model(x).argmax(dim=1) == y).double().mean().item()
    return model, x, y, clean


def test_pgd_breaks_an_undefended_model(moons):
    model, x, y, clean = moons
    assert clean > 0.95
    g = torch.Generator().manual_seed(0)
    assert robust_accuracy(model, x, y, 0.0, generator=g) == clean
    assert robust_accuracy(model, x, y, 0.0, norm="l2", attack="fgsm") == clean
    for norm in ("linf", "l2"):
        # every training point lies within distance 0.75 of the decision boundary
        acc = robust_accuracy(model, x, y, 1.0, norm=norm, generator=g)
        assert acc < 0.2 < clean - 0.75, (norm, acc)
        assert robust_accuracy(model, x, y, 1.0, norm=norm, random_start=False) < 0.01
        mid = robust_accuracy(model, x, y, 0.15, norm=norm, generator=g)
        assert acc <= mid < clean


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("eps", [0.1, 0.3, 0.5, 1.0])
def test_pgd_is_at_least_as_strong_as_fgsm(moons, norm, eps):
    # PGD from x takes many projected steps where FGSM takes one.  (A single *random*
    # start can end in an interior local maximum of the loss of this ReLU network and
    # be weaker than FGSM at large radii, so the comparison uses random_start=False.)
    model, x, y, _ = moons
    acc_fgsm = robust_accuracy(model, x, y, eps, norm=norm, attack="fgsm")
    acc_pgd = robust_accuracy(model, x, y, eps, norm=norm, attack="pgd", random_start=False)
    assert acc_pgd <= acc_fgsm


def test_minimal_distance_agrees_with_robust_accuracy(moons):
    # acc(eps) under the same attack <= fraction of points whose distance bound exceeds eps
    model, x, y, clean = moons
    for norm in ("l2", "linf"):
        dist = minimal_adversarial_distance(model, x, y, norm=norm, eps_max=2.0,
                                            random_start=False)
        assert torch.isfinite(dist).all() and (dist > 0).sum() == round(clean * len(y))
        for eps in (0.2, 0.4):
            acc = robust_accuracy(model, x, y, eps, norm=norm, random_start=False)
            frac = (dist.double() > eps).double().mean().item()
            assert abs(acc - frac) <= 0.03, (norm, eps, acc, frac)


def test_pgd_examples_are_adversarial_where_reported(moons):
    model, x, y, _ = moons
    x_adv = pgd(model, x, y, 0.3, generator=torch.Generator().manual_seed(0))
    assert_feasible(x_adv, x, 0.3, "linf", None)
    with torch.no_grad():
        wrong = model(x_adv).argmax(dim=1) != y
    acc = robust_accuracy(model, x, y, 0.3, generator=torch.Generator().manual_seed(0))
    assert acc == pytest.approx(1 - wrong.double().mean().item())


def test_robust_accuracy_batching_and_progress(moons):
    model, x, y, _ = moons
    a = robust_accuracy(model, x, y, 0.2, attack="fgsm", batch_size=400)
    b = robust_accuracy(model, x, y, 0.2, attack="fgsm", batch_size=37, progress=True)
    assert a == b
    # a user-supplied attack with the same calling convention
    c = robust_accuracy(model, x, y, 0.2, attack=fgsm, batch_size=64)
    assert c == a
    # per-example tensor bounds are sliced together with the batches
    lo = x - 1.0
    d = robust_accuracy(model, x, y, 0.2, attack="fgsm", bounds=(lo, x + 1.0), batch_size=37)
    assert d == a


def test_robust_accuracy_counts_clean_errors_as_not_robust():
    model = Constant()  # always predicts class 0
    x = torch.rand(10, 3)
    y = torch.tensor([0] * 4 + [1] * 6)
    assert robust_accuracy(model, x, y, 0.1, attack="fgsm") == 0.4
    assert robust_accuracy(model, x, y, 0.1) == 0.4


# ---------------------------------------------------------------------------
# targeted attack, custom loss, determinism, side effects
# ---------------------------------------------------------------------------


def test_targeted_pgd_reaches_the_target():
    g = torch.Generator().manual_seed(5)
    model = Linear(torch.randn(3, 4, generator=g), torch.zeros(3))
    x = torch.randn(20, 4, generator=g)
    with torch.no_grad():
        pred = model(x).argmax(dim=1)
    target = (pred + 1) % 3
    x_adv = pgd(model, x, target, 20.0, norm="l2", targeted=True, n_iter=50,
                generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model(x_adv).argmax(dim=1) == target).all()


def test_custom_loss_fn_per_example_is_summed():
    model, x, y, _, _ = linear_problem(1, 5, 8)
    ref = fgsm(model, x, y, 0.2)
    out = fgsm(model, x, y, 0.2,
               loss_fn=lambda z, t: nn.functional.cross_entropy(z, t, reduction="none"))
    assert torch.equal(ref, out)
    # mean reduction only rescales the gradient: the sign step is unchanged
    out = fgsm(model, x, y, 0.2, loss_fn=nn.functional.cross_entropy)
    assert torch.equal(ref, out)


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_pgd_is_deterministic_with_a_seeded_generator(norm):
    model = RandomMLP(6, 3, 2)
    x = torch.rand(10, 6)
    y = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(0))
    runs = [pgd(model, x, y, 0.1, norm=norm, generator=torch.Generator().manual_seed(s))
            for s in (7, 7, 8)]
    assert torch.equal(runs[0], runs[1])
    starts = [pgd(model, x, y, 0.1, norm=norm, n_iter=1, step_size=1e-6,
                  generator=torch.Generator().manual_seed(s)) for s in (7, 8)]
    assert not torch.equal(starts[0], starts[1])
    d1 = minimal_adversarial_distance(model, x, y, norm=norm, bounds=(0.0, 1.0),
                                      generator=torch.Generator().manual_seed(3))
    d2 = minimal_adversarial_distance(model, x, y, norm=norm, bounds=(0.0, 1.0),
                                      generator=torch.Generator().manual_seed(3))
    assert torch.equal(d1, d2)


@pytest.mark.parametrize("training", [True, False])
def test_no_parameter_grads_and_mode_unchanged(training):
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.0), nn.Tanh(), nn.Linear(8, 3))
    model.train(training)
    x = torch.rand(6, 4, requires_grad=True)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    g = torch.Generator().manual_seed(0)
    fgsm(model, x, y, 0.1)
    pgd(model, x, y, 0.1, norm="l2", generator=g)
    minimal_adversarial_distance(model, x, y, bounds=(0.0, 1.0), n_search=2, generator=g)
    robust_accuracy(model, x, y, 0.1, generator=g)
    assert all(p.grad is None for p in model.parameters())
    assert x.grad is None
    assert all(m.training == training for m in model.modules())


def test_works_under_no_grad_and_returns_detached():
    model = RandomMLP(3, 2, 0)
    x = torch.rand(4, 3)
    y = torch.tensor([0, 1, 0, 1])
    with torch.no_grad():
        a = pgd(model, x, y, 0.2, random_start=False)
    b = pgd(model, x, y, 0.2, random_start=False)
    assert torch.equal(a, b) and not b.requires_grad
    assert not torch.equal(a, x)


def test_x_marginally_outside_bounds_is_accepted_and_clipped():
    model = RandomMLP(3, 2, 0)
    x = torch.tensor([[1.0 + 1e-7, 0.5, 0.0 - 1e-7]])
    y = torch.tensor([0])
    out = pgd(model, x, y, 0.1, bounds=(0.0, 1.0), generator=torch.Generator().manual_seed(0))
    assert (out >= 0).all() and (out <= 1).all()


# ---------------------------------------------------------------------------
# bad inputs
# ---------------------------------------------------------------------------

_M = RandomMLP(3, 2, 0)
_X = torch.rand(4, 3, generator=torch.Generator().manual_seed(0))
_X[0, :2] = torch.tensor([0.05, 0.95])  # below 0.2 and above 0.5: the box checks below must fire
_Y = torch.tensor([0, 1, 0, 1])

BAD = [
    # (function, kwargs overriding (model, x, y, eps) / keywords, exception, text in message)
    ("all", dict(eps=-0.1), ValueError, "eps"),
    ("all", dict(eps=math.nan), ValueError, "eps"),
    ("all", dict(eps=math.inf), ValueError, "eps"),
    ("all", dict(norm="l1"), ValueError, "norm"),
    ("all", dict(norm="inf"), ValueError, "norm"),
    ("all", dict(norm=2), ValueError, "norm"),
    ("all", dict(bounds=(1.0, 0.0)), ValueError, "lo"),
    ("all", dict(bounds=(0.5, 0.5)), ValueError, "bounds"),
    ("all", dict(bounds=(torch.zeros(3), torch.tensor([1.0, 0.0, 1.0]))), ValueError, "bounds"),
    ("all", dict(bounds=(0.0, torch.ones(5))), ValueError, "bounds"),
    ("all", dict(bounds=(0.0,)), ValueError, "bounds"),
    ("all", dict(bounds=(0.0, 0.5)), ValueError, "bounds"),  # x outside the box
    ("all", dict(bounds=(0.2, 1.0)), ValueError, "x must lie inside"),
    ("all", dict(y=torch.tensor([0, 1, 0])), ValueError, "batch size"),
    ("all", dict(y=torch.tensor([[0, 1, 0, 1]])), ValueError, "y"),
    ("all", dict(y=[0, 1, 0, 1]), TypeError, "y"),
    ("all", dict(y=torch.tensor([0.0, 1.0, 0.0, 1.0])), TypeError, "y"),
    ("all", dict(x=torch.tensor([[0.1, math.nan, 0.3]] * 4)), ValueError, "NaN"),
    ("all", dict(x=np.zeros((4, 3), dtype=np.float32)), TypeError, "x must be a torch.Tensor"),
    ("all", dict(x=[[0.0] * 3] * 4), TypeError, "x"),
    ("all", dict(x=torch.zeros(4, 3, dtype=torch.long)), TypeError, "x"),
    ("pgd", dict(n_iter=0), ValueError, "n_iter"),
    ("pgd", dict(step_size=0.0), ValueError, "step_size"),
    ("pgd", dict(step_size=-1.0), ValueError, "step_size"),
    ("pgd", dict(generator=0), TypeError, "generator"),
    ("mad", dict(n_iter=0), ValueError, "n_iter"),
    ("mad", dict(n_search=-1), ValueError, "n_search"),
    ("mad", dict(eps_max=0.0), ValueError, "eps_max"),
    ("mad", dict(eps_max=-1.0), ValueError, "eps_max"),
    ("mad", dict(eps_max=math.inf), ValueError, "eps_max"),
    ("ra", dict(batch_size=0), ValueError, "batch_size"),
    ("ra", dict(attack="cw"), ValueError, "attack"),
    ("ra", dict(x=torch.zeros(0, 3), y=torch.zeros(0, dtype=torch.long)), ValueError, "x"),
    ("ra", dict(n_iter=0), ValueError, "n_iter"),
    ("ra", dict(targeted=True), ValueError, "targeted"),
]


def _call(which, overrides):
    kw = dict(overrides)
    model, x, y = kw.pop("model", _M), kw.pop("x", _X), kw.pop("y", _Y)
    eps = kw.pop("eps", 0.1)
    if which == "fgsm":
        return fgsm(model, x, y, eps, **kw)
    if which == "pgd":
        return pgd(model, x, y, eps, **kw)
    if which == "ra":
        return robust_accuracy(model, x, y, eps, **kw)
    if which == "mad":
        kw.setdefault("eps_max", 1.0)
        return minimal_adversarial_distance(model, x, y, **kw)
    raise AssertionError(which)


def _expand_bad():
    cases = []
    for which, kw, exc, text in BAD:
        targets = ["fgsm", "pgd", "ra", "mad"] if which == "all" else [which]
        for t in targets:
            if t == "mad" and "eps" in kw:
                continue  # minimal_adversarial_distance has no eps
            cases.append(pytest.param(t, kw, exc, text, id=f"{t}-{text}-{kw!r}"[:80]))
    return cases


@pytest.mark.parametrize("which, overrides, exc, text", _expand_bad())
def test_bad_inputs_raise_with_the_argument_name(which, overrides, exc, text):
    with pytest.raises(exc, match=text):
        _call(which, overrides)


def test_bad_model_output_raises():
    with pytest.raises(ValueError, match="logits"):
        pgd(lambda z: z.sum(dim=1), _X, _Y, 0.1)
    with pytest.raises(ValueError, match="y must contain class indices"):
        fgsm(_M, _X, torch.tensor([0, 1, 2, 1]), 0.1)


# ---------------------------------------------------------------------------
# renamed arguments and the named result
# ---------------------------------------------------------------------------


def test_n_steps_is_a_deprecated_alias_of_n_iter():
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    new = pgd(_M, _X, _Y, 0.3, n_iter=3, generator=g())
    with pytest.warns(DeprecationWarning, match="n_iter"):
        old = pgd(_M, _X, _Y, 0.3, n_steps=3, generator=g())
    assert torch.equal(new, old)
    with pytest.warns(DeprecationWarning, match="n_iter"):
        old = minimal_adversarial_distance(_M, _X, _Y, eps_max=1.0, n_steps=3, generator=g())
    assert torch.equal(old, minimal_adversarial_distance(_M, _X, _Y, eps_max=1.0, n_iter=3, generator=g()))
    with pytest.raises(TypeError, match="n_iter"):
        pgd(_M, _X, _Y, 0.3, n_steps=3, n_iter=3)


def test_minimal_distance_returns_named_fields():
    from stabilitylab.attacks import AdversarialDistance

    model, x, y, cf, _ = linear_problem(5, 3, 8)
    result = minimal_adversarial_distance(model, x, y, norm="l2", eps_max=4 * cf.max().item(),
                                          return_examples=True)
    assert isinstance(result, AdversarialDistance)
    assert result.distance.shape == (8,) and result.examples.shape == x.shape
    dist, examples = result  # still unpacks as a pair
    assert torch.equal(dist, result.distance) and torch.equal(examples, result.examples)
    found = torch.isfinite(result.distance) & (result.distance > 0)
    assert torch.equal(dist64(result.examples, x, "l2")[found] <= result.distance.double()[found],
                       torch.ones(int(found.sum()), dtype=torch.bool))
