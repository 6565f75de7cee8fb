"""Tests for stabilitylab.losses: every loss against numbers computed by hand, its documented
limits (pure hinge / pure KR, plain cross-entropy, the hinge limit of a small temperature),
finite-difference gradients, and argument checks."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab import losses
from stabilitylab.losses import (
    HKRLoss,
    LogitAnnealingLoss,
    MulticlassHingeLoss,
    OffsetCrossEntropyLoss,
    hkr_loss,
    logit_annealing_loss,
    multiclass_hinge_loss,
    offset_cross_entropy,
)

SETTINGS = settings(max_examples=20, deadline=None, derandomize=True)
D = torch.float64


def _random(seed: int, n: int, c: int, scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    z = scale * torch.randn(n, c, generator=g, dtype=D)
    y = torch.randint(0, c, (n,), generator=g)
    return z, y


# ----------------------------------------------------------------------------- hand-computed values


def test_multiclass_hinge_by_hand():
    z = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 3.0]], dtype=D)
    y = torch.tensor([0, 1])
    # sample 0: margin 2 - 1 = 1 -> 1.5 - 1 = 0.5; sample 1: margin 1 - 3 = -2 -> 1.5 + 2 = 3.5
    expected = torch.tensor([0.5, 3.5], dtype=D)
    torch.testing.assert_close(multiclass_hinge_loss(z, y, margin=1.5, reduction="none"), expected)
    assert multiclass_hinge_loss(z, y, margin=1.5).item() == pytest.approx(2.0)
    assert multiclass_hinge_loss(z, y, margin=1.5, reduction="sum").item() == pytest.approx(4.0)
    assert multiclass_hinge_loss(z, y, margin=0.5, reduction="none")[0].item() == 0.0


def test_offset_cross_entropy_by_hand():
    z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]], dtype=D)
    y = torch.tensor([0, 2])
    # offset 1, temperature 1/2: sample 0 -> (0, 0, 0)/0.5, CE = log 3;
    # sample 1 -> (0, 2, 0)/0.5 = (0, 4, 0), CE = log(2 + e^4) - 0
    expected = 0.5 * torch.tensor([math.log(3.0), math.log(2.0 + math.exp(4.0))], dtype=D)
    out = offset_cross_entropy(z, y, offset=1.0, temperature=0.5, reduction="none")
    torch.testing.assert_close(out, expected)
    assert offset_cross_entropy(z, y, offset=1.0, temperature=0.5).item() == pytest.approx(expected.mean().item())


def test_logit_annealing_by_hand():
    z = torch.tensor([[1.0, 0.0, 0.0], [0.0, 2.0, 1.0]], dtype=D)
    y = torch.tensor([0, 2])
    p0 = 1.0 / 3.0
    p1 = 1.0 / (2.0 + math.exp(4.0))
    expected = torch.tensor(
        [-0.5 * (1 - p0) ** 2 * math.log(p0), -0.5 * (1 - p1) ** 2 * math.log(p1)], dtype=D
    )
    out = logit_annealing_loss(z, y, offset=1.0, temperature=0.5, gamma=2.0, reduction="none")
    torch.testing.assert_close(out, expected)
    assert logit_annealing_loss(z, y, offset=1.0, temperature=0.5, gamma=2.0, reduction="sum").item() == (
        pytest.approx(expected.sum().item())
    )


def test_binary_hkr_by_hand():
    f = torch.tensor([2.0, -0.5, 0.3, -1.0], dtype=D)
    y = torch.tensor([1, 0, 0, 1])
    # signs (1, -1, -1, 1); hinge max(0, 1 - s f) = (0, 0.5, 1.3, 2), mean 0.95
    # KR = mean(2, -1) - mean(-0.5, 0.3) = 0.5 + 0.1 = 0.6
    assert hkr_loss(f, y, alpha=0.75, margin=1.0).item() == pytest.approx(0.75 * 0.95 - 0.25 * 0.6)
    assert hkr_loss(f[:, None], y, alpha=0.75).item() == pytest.approx(0.75 * 0.95 - 0.25 * 0.6)
    assert hkr_loss(f, y.double(), alpha=0.75).item() == pytest.approx(0.5625)
    assert hkr_loss(f, y.bool(), alpha=0.75, reduction="sum").item() == pytest.approx(4 * 0.5625)
    # the limits: pure hinge, pure (negative) KR
    assert hkr_loss(f, y, alpha=1.0).item() == pytest.approx(0.95)
    assert hkr_loss(f, y, alpha=0.0).item() == pytest.approx(-0.6)
    none = hkr_loss(f, y, alpha=0.75, reduction="none")
    assert none.shape == (4,)
    assert none.mean().item() == pytest.approx(0.5625)


def test_multiclass_hkr_by_hand():
    z = torch.tensor([[2.0, 0.0, 1.0], [1.0, 3.0, 0.0], [0.0, 1.0, 1.0]], dtype=D)
    y = torch.tensor([0, 1, 2])
    # one-vs-rest KR: class 0: 2 - mean(1, 0) = 1.5; class 1: 3 - mean(0, 1) = 2.5;
    # class 2: 1 - mean(1, 0) = 0.5; averaged over classes: 1.5
    # hinge (margin 1): margins 1, 2, 0 -> (0, 0, 1), mean 1/3
    assert hkr_loss(z, y, alpha=0.5, margin=1.0).item() == pytest.approx(0.5 / 3 - 0.5 * 1.5)
    assert hkr_loss(z, y, alpha=0.0).item() == pytest.approx(-1.5)
    torch.testing.assert_close(
        hkr_loss(z, y, alpha=1.0, margin=1.0, reduction="none"),
        multiclass_hinge_loss(z, y, margin=1.0, reduction="none"),
    )


# ----------------------------------------------------------------------------- limits


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), c=st.integers(2, 7))
def test_offset_zero_temperature_one_is_cross_entropy(seed, n, c):
    z, y = _random(seed, n, c)
    for reduction in ("mean", "sum", "none"):
        torch.testing.assert_close(
            offset_cross_entropy(z, y, offset=0.0, temperature=1.0, reduction=reduction),
            F.cross_entropy(z, y, reduction=reduction),
        )


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), c=st.integers(2, 7),
       offset=st.floats(0.0, 3.0), tau=st.floats(0.05, 4.0))
def test_offset_ce_closed_form_and_hinge_limit(seed, n, c, offset, tau):
    z, y = _random(seed, n, c)
    # tau * log(1 + sum_{j != y} exp((z_j - z_y + u) / tau)), written out with a loop
    expected = []
    for i in range(n):
        terms = [math.exp((z[i, j].item() - z[i, y[i]].item() + offset) / tau) for j in range(c) if j != y[i]]
        expected.append(tau * math.log1p(sum(terms)))
    out = offset_cross_entropy(z, y, offset=offset, temperature=tau, reduction="none")
    torch.testing.assert_close(out, torch.tensor(expected, dtype=D), rtol=1e-9, atol=1e-9)
    # small temperature: the hinge max(0, u - margin), within tau * log(C)
    small = 1e-3
    hinge = multiclass_hinge_loss(z, y, margin=offset, reduction="none")
    cold = offset_cross_entropy(z, y, offset=offset, temperature=small, reduction="none")
    assert bool((cold >= hinge - 1e-12).all())
    assert bool((cold <= hinge + small * math.log(c) + 1e-12).all())


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(1, 12), c=st.integers(2, 7),
       gamma=st.floats(0.1, 6.0))
def test_logit_annealing_limits(seed, n, c, gamma):
    z, y = _random(seed, n, c)
    ce = offset_cross_entropy(z, y, offset=2.0, temperature=0.75, reduction="none")
    torch.testing.assert_close(
        logit_annealing_loss(z, y, offset=2.0, temperature=0.75, gamma=0.0, reduction="none"), ce
    )
    la = logit_annealing_loss(z, y, offset=2.0, temperature=0.75, gamma=gamma, reduction="none")
    p = torch.softmax((z - 2.0 * F.one_hot(y, c).double()) / 0.75, dim=1).gather(1, y[:, None]).squeeze(1)
    torch.testing.assert_close(la, (1 - p) ** gamma * ce, rtol=1e-9, atol=1e-12)
    assert bool((la <= ce + 1e-12).all())


@SETTINGS
@given(seed=st.integers(0, 10_000), n=st.integers(2, 16), alpha=st.floats(0.0, 1.0),
       margin=st.floats(0.0, 2.0))
def test_binary_hkr_matches_definition(seed, n, alpha, margin):
    g = torch.Generator().manual_seed(seed)
    f = torch.randn(n, generator=g, dtype=D)
    y = torch.randint(0, 2, (n,), generator=g)
    s = 2.0 * y.double() - 1.0
    hinge = torch.clamp(margin - s * f, min=0).mean()
    pos, neg = f[y == 1], f[y == 0]
    kr = (pos.mean() if len(pos) else 0.0) - (neg.mean() if len(neg) else 0.0)
    expected = alpha * hinge - (1 - alpha) * kr
    assert hkr_loss(f, y, alpha=alpha, margin=margin).item() == pytest.approx(float(expected), abs=1e-12)


# ----------------------------------------------------------------------------- gradients


def test_gradients_finite_and_match_finite_differences():
    z, y = _random(3, 4, 5)
    fns = [
        lambda t: multiclass_hinge_loss(t, y, margin=0.7),
        lambda t: offset_cross_entropy(t, y, offset=1.0, temperature=0.3),
        lambda t: logit_annealing_loss(t, y, offset=1.0, temperature=0.5, gamma=3.0),
        lambda t: hkr_loss(t, y, alpha=0.6, margin=0.4),
        lambda t: hkr_loss(t[:, 0], (y > 2).long(), alpha=0.6, margin=0.4),
    ]
    for fn in fns:
        t = z.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(fn(t), t)
        assert bool(torch.isfinite(grad).all())
    # smooth losses: autograd against central finite differences
    for fn in fns[1:3]:
        assert torch.autograd.gradcheck(fn, (z.clone().requires_grad_(True),), eps=1e-6, atol=1e-6)
    # huge logits: still finite
    big = (1e4 * z).requires_grad_(True)
    for fn in fns:
        (grad,) = torch.autograd.grad(fn(big), big)
        assert bool(torch.isfinite(grad).all())


def test_float32_and_modules_match_functions():
    z, y = _random(5, 6, 4)
    z32 = z.float()
    pairs = [
        (HKRLoss(alpha=0.3, margin=0.5), lambda t: hkr_loss(t, y, alpha=0.3, margin=0.5)),
        (MulticlassHingeLoss(margin=0.5, reduction="sum"), lambda t: multiclass_hinge_loss(t, y, margin=0.5, reduction="sum")),
        (OffsetCrossEntropyLoss(offset=0.4, temperature=2.0), lambda t: offset_cross_entropy(t, y, offset=0.4, temperature=2.0)),
        (LogitAnnealingLoss(reduction="none"), lambda t: logit_annealing_loss(t, y, reduction="none")),
    ]
    for module, fn in pairs:
        out = module(z32, y)
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, fn(z32))
        torch.testing.assert_close(out.double(), fn(z), rtol=1e-5, atol=1e-5)
        assert repr(module)


def test_public_names():
    assert set(losses.__all__) >= {"hkr_loss", "multiclass_hinge_loss", "offset_cross_entropy", "logit_annealing_loss"}


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda z, y: multiclass_hinge_loss(z, y, margin=-0.1), "margin"),
        (lambda z, y: hkr_loss(z, y, margin=-1.0), "margin"),
        (lambda z, y: hkr_loss(z, y, alpha=1.5), "alpha"),
        (lambda z, y: hkr_loss(z, y, alpha=-0.1), "alpha"),
        (lambda z, y: offset_cross_entropy(z, y, temperature=0.0), "temperature"),
        (lambda z, y: offset_cross_entropy(z, y, temperature=-1.0), "temperature"),
        (lambda z, y: offset_cross_entropy(z, y, offset=-1.0), "offset"),
        (lambda z, y: logit_annealing_loss(z, y, gamma=-1.0), "gamma"),
        (lambda z, y: logit_annealing_loss(z, y, temperature=float("nan")), "temperature"),
        (lambda z, y: offset_cross_entropy(z, y, reduction="avg"), "reduction"),
        (lambda z, y: offset_cross_entropy(z, y[:2]), "labels"),
        (lambda z, y: offset_cross_entropy(z, y + 10), "labels"),
        (lambda z, y: multiclass_hinge_loss(z, y - 5), "labels"),
        (lambda z, y: offset_cross_entropy(z[:, :1], y), "logits"),
        (lambda z, y: logit_annealing_loss(z[None], y), "logits"),
        (lambda z, y: hkr_loss(z[:, 0], torch.tensor([0, 1, 2])), "labels"),
        (lambda z, y: hkr_loss(z[:, 0], torch.tensor([0, 1])), "labels"),
        (lambda z, y: HKRLoss(alpha=2.0), "alpha"),
        (lambda z, y: OffsetCrossEntropyLoss(temperature=0), "temperature"),
        (lambda z, y: LogitAnnealingLoss(gamma=-2), "gamma"),
        (lambda z, y: MulticlassHingeLoss(margin=-1), "margin"),
    ],
)
def test_bad_input_raises_value_error(call, match):
    z = torch.randn(3, 4)
    y = torch.tensor([0, 1, 3])
    with pytest.raises(ValueError, match=match):
        call(z, y)


def test_bad_types_raise_type_error():
    z = torch.randn(3, 4)
    y = torch.tensor([0, 1, 3])
    with pytest.raises(TypeError, match="labels"):
        offset_cross_entropy(z, y.double())
    with pytest.raises(TypeError, match="logits"):
        multiclass_hinge_loss(z.long(), y)
    with pytest.raises(TypeError, match="logits"):
        hkr_loss([1.0, 2.0], y)
    with pytest.raises(TypeError, match="margin"):
        multiclass_hinge_loss(z, y, margin="1")
