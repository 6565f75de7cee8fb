"""One seed convention: equal generators give bit-identical models and training runs, and the
caller's global random state is never touched by a seeded call."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab import models, smoothing, train

BUILDERS = {
    "mlp": lambda g: models.mlp((1, 4, 4), 3, hidden=(8, 6), generator=g),
    "cnn": lambda g: models.cnn(1, 3, input_size=8, channels=(2, 4), hidden=8, generator=g),
    **{f"lipschitz_mlp-{layer}": (lambda g, layer=layer: models.lipschitz_mlp(
        (1, 4, 4), 3, hidden=(4, 4), layer=layer, generator=g)) for layer in models.LIPSCHITZ_DENSE},
    **{f"lipschitz_cnn-{layer}": (lambda g, layer=layer: models.lipschitz_cnn(
        1, 3, input_size=8, channels=(2, 4), layer=layer, generator=g)) for layer in models.LIPSCHITZ_CONV},
}


def state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_equal_generators_build_identical_models_without_touching_the_global_rng(name):
    build = BUILDERS[name]
    torch.manual_seed(123)
    before = torch.get_rng_state()
    a = build(torch.Generator().manual_seed(7))
    b = build(torch.Generator().manual_seed(7))
    assert torch.equal(torch.get_rng_state(), before)  # the caller's global state is unchanged
    assert identical(state(a), state(b))
    c = build(torch.Generator().manual_seed(8))
    assert not identical(state(a), state(c))  # and the generator does matter
    # the same model whatever the global state was
    torch.manual_seed(999)
    assert identical(state(build(torch.Generator().manual_seed(7))), state(a))


def test_without_a_generator_builders_draw_from_the_global_rng():
    torch.manual_seed(5)
    a = models.mlp(3, 2, hidden=(4,))
    torch.manual_seed(5)
    b = models.mlp(3, 2, hidden=(4,))
    assert identical(state(a), state(b))
    assert not identical(state(a), state(models.mlp(3, 2, hidden=(4,))))


def test_builders_reject_a_generator_of_the_wrong_type():
    with pytest.raises(TypeError, match="generator"):
        models.mlp(3, 2, generator=0)


def _fit_run(seed: int, global_seed: int):
    """Build and train a model with dropout and Gaussian-noise augmentation from one generator."""
    torch.manual_seed(global_seed)
    before = torch.get_rng_state()
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(40, 4, generator=torch.Generator().manual_seed(0))
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(smoothing.GaussianNoise(0.3),
                          models.mlp(4, 2, hidden=(16,), generator=generator),
                          nn.Dropout(0.3))
    history = train.fit(model, (x, y), epochs=3, batch_size=8, test_data=(x, y), generator=generator,
                        progress=False)
    assert torch.equal(torch.get_rng_state(), before), "fit changed the caller's global RNG"
    return history.to_dict(), state(model)


@settings(max_examples=4, deadline=None)
@given(seed=st.integers(0, 2**31), global_a=st.integers(0, 2**31), global_b=st.integers(0, 2**31))
def test_equal_generators_give_identical_fits_whatever_the_global_state(seed, global_a, global_b):
    history_a, params_a = _fit_run(seed, global_a)
    history_b, params_b = _fit_run(seed, global_b)
    assert history_a == history_b
    assert identical(params_a, params_b)


def test_different_generators_give_different_fits():
    history_a, params_a = _fit_run(1, 0)
    history_b, params_b = _fit_run(2, 0)
    assert history_a != history_b and not identical(params_a, params_b)


def test_fit_without_a_generator_uses_and_advances_the_global_rng():
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    torch.manual_seed(4)
    model = models.mlp(3, 2, hidden=(4,), generator=torch.Generator().manual_seed(0))
    before = torch.get_rng_state()
    first = train.fit(model, (x, y), epochs=2, batch_size=4, progress=False).loss
    assert not torch.equal(torch.get_rng_state(), before)  # the shuffling drew from it
    torch.set_rng_state(before)
    model = models.mlp(3, 2, hidden=(4,), generator=torch.Generator().manual_seed(0))
    assert train.fit(model, (x, y), epochs=2, batch_size=4, progress=False).loss == first
