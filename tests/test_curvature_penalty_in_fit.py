"""The finite-difference gradient-norm penalty inside a training step whose loss graph is alive."""

import torch
from torch import nn

from stabilitylab import curvature, train


def _setup():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    x = torch.randn(16, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (16,))
    return model, x, y


def test_penalty_after_the_loss_gives_the_gradient_of_loss_plus_penalty():
    model, x, y = _setup()
    params = list(model.parameters())
    closure = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    before = [p.detach().clone() for p in params]

    loss = closure()  # its graph holds the parameters, as in fit
    penalty = curvature.gradient_norm_penalty(closure, params, method="finite_difference", h=1e-4)
    (loss + 0.5 * penalty).backward()
    together = [p.grad.clone() for p in params]

    model.zero_grad()
    closure().backward()
    alone = [p.grad.clone() for p in params]
    model.zero_grad()
    curvature.gradient_norm_penalty(closure, params, method="finite_difference", h=1e-4).backward()
    penalty_grad = [p.grad.clone() for p in params]

    assert all(torch.equal(p.detach(), b) for p, b in zip(params, before))  # restored bit for bit
    for t, a, q in zip(together, alone, penalty_grad):
        assert torch.allclose(t, a + 0.5 * q, rtol=1e-10, atol=1e-12)
    # and the finite difference approximates 2 H g, the gradient of ||g||^2
    model.zero_grad()
    curvature.gradient_norm_penalty(closure, params, method="exact").backward()
    exact = torch.cat([p.grad.flatten() for p in params])
    fd = torch.cat([q.flatten() for q in penalty_grad])
    assert torch.linalg.vector_norm(fd - exact) <= 1e-3 * torch.linalg.vector_norm(exact)


def test_fit_trains_with_the_finite_difference_penalty():
    model, x, y = _setup()
    params = list(model.parameters())

    def penalty(m, xb, yb, loss):
        closure = lambda: nn.functional.cross_entropy(m(xb), yb)  # noqa: E731
        return 0.1 * curvature.gradient_norm_penalty(closure, params, method="finite_difference")

    history = train.fit(model, (x, y), epochs=3, batch_size=8, lr=1e-2, penalty=penalty, progress=False,
                        generator=torch.Generator().manual_seed(0))
    assert len(history.loss) == 3 and all(torch.isfinite(torch.tensor(history.loss)))
