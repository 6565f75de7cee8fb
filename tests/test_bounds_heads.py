"""Last-layer certificates for every Lipschitz head, and float64 margins (issue 12, items 6, 17).

* every head of ``models.LIPSCHITZ_HEADS`` is accepted by ``pairwise_logit_bound`` and by
  ``certify(..., last_layer=True)``; its pairwise constants dominate the exact Lipschitz
  constants of the logit differences (float64 Jacobians), the last-layer radii are at least the
  global-bound radii, and no float64 attack beats them;
* ``pairwise_row_distances`` is the one implementation (lipschitz, certify, LLNLinear);
* ``certified_radii`` reads float64 margins: float32 points with tiny relative margins are never
  flipped by a float64 attack inside their certified radius.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab import certify, layers, lipschitz, models
from stabilitylab.testing import scramble_parameters

D = torch.float64


def _head_model(head: str, seed: int, *, classes: int = 5, features: int = 4) -> nn.Sequential:
    torch.manual_seed(seed)
    model = models.lipschitz_mlp(features, classes, hidden=(8,), head=head)
    scramble_parameters(model, scale=1.0, noise=0.5, generator=torch.Generator().manual_seed(seed))
    return model.eval()


def _float64_logits(model: nn.Module, x: Tensor) -> Tensor:  # noqa: F821 - torch.Tensor
    state = {k: v.detach().double() for k, v in (*model.named_parameters(), *model.named_buffers())}
    with torch.no_grad():
        return torch.func.functional_call(model, state, (x.double(),))


def _difference_jacobian_norms(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """max over the points of ||grad (z_i - z_j)(x)|| for every pair (i, j): (C, C), float64."""
    state = {k: v.detach().double() for k, v in (*model.named_parameters(), *model.named_buffers())}

    def f(v):
        return torch.func.functional_call(model, state, (v[None],))[0]

    best = None
    for point in x.double():
        J = torch.autograd.functional.jacobian(f, point)  # (C, n)
        norms = torch.linalg.vector_norm(J[:, None, :] - J[None, :, :], dim=-1)
        best = norms if best is None else torch.maximum(best, norms)
    return best


@settings(max_examples=12, deadline=None, derandomize=True)
@given(head=st.sampled_from(models.LIPSCHITZ_HEADS), seed=st.integers(0, 2**16))
def test_pairwise_logit_bound_accepts_every_head_and_bounds_the_logit_differences(head, seed):
    model = _head_model(head, seed)
    P = lipschitz.pairwise_logit_bound(model, (4,))
    assert P.shape == (5, 5) and P.dtype == D
    assert torch.equal(P, P.T) and bool((P.diagonal() == 0).all())
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(seed)) * 2
    exact = _difference_jacobian_norms(model, x)
    assert bool((exact <= P * (1 + 1e-6) + 1e-12).all())  # float32 heads: a few ulp of slack
    # never above sqrt(2) times the global bound, so last-layer radii are never smaller
    assert bool((P <= math.sqrt(2.0) * lipschitz.upper_bound(model, (4,)) * (1 + 1e-15)).all())


@pytest.mark.parametrize("head", models.LIPSCHITZ_HEADS)
def test_last_layer_radii_dominate_the_global_radii_and_survive_attacks(head):
    model = _head_model(head, 3)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(60, 4, generator=generator)
    with torch.no_grad():
        y = model(x).argmax(1)  # every point correctly classified: all are certified
    y[::7] = (y[::7] + 1) % 5  # and a few wrong ones
    pairwise = certify.certified_radii(model, (x, y), last_layer=True, progress=False)
    plain = certify.certified_radii(model, (x, y), progress=False)
    assert bool((pairwise >= plain).all())
    assert bool((pairwise[::7] == 0).all())
    assert bool((pairwise > 0).sum() > 30)
    # the radius equals min_j m_j / L_yj with the pairwise constants, from float64 logits
    P = lipschitz.pairwise_logit_bound(model, (4,))
    expected = certify.certified_radius(_float64_logits(model, x), y, lipschitz=P)
    assert bool((pairwise.double() <= expected).all())
    torch.testing.assert_close(pairwise.double(), expected, rtol=1e-6, atol=0)
    report = certify.check_soundness(
        model, x, y, last_layer=True, n_iter=30, restarts=1, rtol=1e-4, generator=torch.Generator().manual_seed(1),
        progress=False,
    )  # fmt: skip
    assert report.sound and report.n_attacked > 0
    assert report.max_margin_ratio <= 1 + 1e-6
    torch.testing.assert_close(report.radii, pairwise)
    # with a given constant below the head, the rows of the head's applied matrix are used
    head_weight = lipschitz.linear_head(model).weight
    given = certify.certified_radii(model, (x, y), last_layer=True, lipschitz=1.0, progress=False)
    rows = certify.certified_radius(_float64_logits(model, x), y, lipschitz=1.0, last_layer_weight=head_weight)
    assert bool((given.double() <= rows).all())


@pytest.mark.parametrize("cls", [layers.CayleyLinear, layers.BROLinear])
def test_orthogonal_heads_are_read_through_their_applied_matrix(cls):
    torch.manual_seed(0)
    body = nn.Sequential(nn.Linear(3, 6), nn.ReLU())
    head = cls(6, 4)
    scramble_parameters(head, generator=torch.Generator().manual_seed(2))
    model = nn.Sequential(body, head).double().eval()  # nested: the walk flattens it
    found = lipschitz.linear_head(model)
    assert found.module is head and found.name == "1"
    torch.testing.assert_close(found.weight, head.orthogonal_weight().detach())
    x = torch.randn(5, 3, dtype=D)
    torch.testing.assert_close(model(x), nn.Sequential(*found.body, head)(x))
    P = lipschitz.pairwise_logit_bound(model, (3,))
    Lg = lipschitz.upper_bound(body, (3,))
    torch.testing.assert_close(P, torch.clamp(lipschitz.pairwise_row_distances(found.weight), max=math.sqrt(2)) * Lg)


def test_pairwise_row_distances_is_exact_symmetric_and_differentiable():
    generator = torch.Generator().manual_seed(0)
    W = torch.randn(40, 7, dtype=D, generator=generator)
    W[3] = W[5]  # two equal rows: distance exactly 0
    W[7] = W[8] + 1e-9  # close rows: no cancellation (torch.cdist's matmul path loses them)
    Dm = lipschitz.pairwise_row_distances(W)
    for i in range(40):
        for j in range(40):
            assert Dm[i, j].item() == pytest.approx((W[i] - W[j]).norm().item(), rel=1e-14, abs=0)
    assert Dm[3, 5] == 0 and torch.equal(Dm, Dm.T) and bool((Dm.diagonal() == 0).all())
    assert Dm[7, 8].item() == pytest.approx(1e-9 * math.sqrt(7), rel=1e-6)
    V = W.clone().requires_grad_(True)
    lipschitz.pairwise_row_distances(V).sum().backward()
    assert bool(torch.isfinite(V.grad).all())  # no NaN from the zero distances
    lln = layers.LLNLinear(7, 4).double()
    torch.testing.assert_close(lln.pairwise_lipschitz(), lipschitz.pairwise_row_distances(lln.normalized_weight()))


def test_certify_last_layer_refuses_a_model_without_a_dense_head():
    x, y = torch.randn(4, 2), torch.tensor([0, 1, 0, 1])
    with pytest.raises(ValueError, match="last_layer"):
        certify.certified_radii(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), (x, y), last_layer=True)
    with pytest.raises(ValueError, match="linear layer"):
        lipschitz.pairwise_logit_bound(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), (2,))


# ----------------------------------------------------------------------------- float64 margins


def _tiny_margin_points(W, b, n, generator):
    """float32 points whose float32 logits have relative margins near 1e-6 .. 1e-4."""
    w = (W[1] - W[0]).double()
    beta = float(b[1] - b[0])
    centre = torch.randn(W.shape[1], generator=generator, dtype=D)
    centre = centre - ((centre @ w + beta) / (w @ w)) * w
    spread = torch.randn(n, W.shape[1], generator=generator, dtype=D)
    spread = spread - ((spread @ w) / (w @ w))[:, None] * w
    t = torch.logspace(-6, -4, n, dtype=D) * float(b.abs().max()) / float(w.norm())
    signs = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).double()
    return (centre + spread + (signs * t)[:, None] * w / w.norm()).float()


@settings(max_examples=10, deadline=None, derandomize=True)
@given(seed=st.integers(0, 2**16), d=st.integers(2, 16))
def test_float32_points_of_tiny_relative_margin_are_not_beaten_by_a_float64_attack(seed, d):
    """A float32 linear classifier with large logits: the certified radii must be below the
    float64 distance to the decision boundary (the exact attack on a linear model), for the
    float64 logits (default) and for the float32 ones (the rounding allowance)."""
    g = torch.Generator().manual_seed(seed)
    model = nn.Linear(d, 2)
    with torch.no_grad():
        model.weight.copy_(torch.randn(2, d, generator=g))
        model.bias.copy_(torch.tensor([1000.0, 1000.0 + float(torch.rand((), generator=g))]))
    x = _tiny_margin_points(model.weight.detach(), model.bias.detach(), 300, g)
    z64 = _float64_logits(model, x)
    y = z64.argmax(1)
    W64, b64 = model.weight.detach().double(), model.bias.detach().double()
    w, beta = W64[1] - W64[0], float(b64[1] - b64[0])
    distance = (x.double() @ w + beta).abs() / w.norm()  # float64: the exact attack's distance
    for float64 in (True, False):
        r = certify.certified_radii(model, (x, y), last_layer=True, float64=float64, progress=False).double()
        certified = r > 0
        assert bool((r[certified] <= distance[certified] * (1 + 1e-12)).all())
        assert certified.any()
    # a PGD attack in float64 at the radius never crosses either
    r = certify.certified_radii(model, (x, y), last_layer=True, progress=False)
    model64 = nn.Linear(d, 2).double()
    model64.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    idx = (r > 0).nonzero().flatten()[:50]
    direction = torch.where(y[idx, None] == 1, -w, w)  # towards the other class
    x_adv = x[idx].double() + r[idx, None].double() * direction / w.norm()
    with torch.no_grad():
        assert bool((model64(x_adv).argmax(1) == y[idx]).all() | (r[idx] == 0).all())
