"""One mode convention: whatever a function switches, it puts back, submodule by submodule.

A model with a deliberately frozen BatchNorm (eval mode inside a model in train mode) goes
through every function of train, smoothing and plot that evaluates it; afterwards the
``training`` flag of every submodule must be exactly what it was, also when the model raises an
error half-way through.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab import smoothing, train


class Recorder(nn.Module):
    """Identity that records its own ``training`` flag at each call, and can raise on call ``fail_at``."""

    def __init__(self, fail_at: int | None = None):
        super().__init__()
        self.flags: list[bool] = []
        self.fail_at = fail_at

    def forward(self, x):
        self.flags.append(self.training)
        if self.fail_at is not None and len(self.flags) >= self.fail_at:
            raise RuntimeError("Recorder: planned failure")
        return x


def make_model(fail_at: int | None = None) -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(2, 8),
        nn.BatchNorm1d(8),
        Recorder(fail_at),
        nn.Dropout(0.1),
        nn.Sequential(nn.Linear(8, 8), nn.BatchNorm1d(8), nn.ReLU()),
        nn.Linear(8, 3),
    )


def flags(model: nn.Module) -> list[bool]:
    return [m.training for m in model.modules()]


def freeze(model: nn.Module, pattern: list[bool]) -> list[bool]:
    """Set every submodule's flag from ``pattern`` (cycled); return the flags as set."""
    for i, module in enumerate(model.modules()):
        module.training = pattern[i % len(pattern)]
    return flags(model)


X = torch.randn(12, 2, generator=torch.Generator().manual_seed(1))
Y = torch.randint(0, 3, (12,), generator=torch.Generator().manual_seed(2))


def calls():
    gen = lambda: torch.Generator().manual_seed(0)  # noqa: E731

    def plot_boundary(m):
        plot = pytest.importorskip("stabilitylab.plot")
        import matplotlib.pyplot as plt

        ax = plot.decision_boundary(m, X, Y, resolution=4)
        plt.close(ax.figure)

    smooth = lambda m: smoothing.Smooth(m, 3, 0.5)  # noqa: E731
    return {
        "train.predict": lambda m: train.predict(m, X),
        "train.evaluate": lambda m: train.evaluate(m, (X, Y)),
        "train.fit": lambda m: train.fit(m, (X, Y), epochs=2, batch_size=4, progress=False),
        "train.fit+test": lambda m: train.fit(m, (X, Y), epochs=1, batch_size=4, test_data=(X, Y), progress=False),
        "Smooth.predict": lambda m: smooth(m).predict(X[0], 20, 0.1, 8, generator=gen()),
        "Smooth.certify": lambda m: smooth(m).certify(X[0], 8, 20, 0.1, 8, generator=gen()),
        "Smooth.certify_lvm": lambda m: smooth(m).certify_lvm(X[0], 8, 20, 0.1, 8, generator=gen()),
        "Smooth.sample_counts": lambda m: smooth(m).sample_counts(X[0], 20, 8, generator=gen()),
        "Smooth.vote_frequencies": lambda m: smooth(m).vote_frequencies(X[:3], 4, 16, generator=gen()),
        "SmoothedFrequencies": lambda m: smoothing.SmoothedFrequencies(smooth(m), 4, batch_size=16)(X[:3]),
        "certify_dataset": lambda m: smoothing.certify_dataset(smooth(m), (X[:2], Y[:2]), n0=4, n=8, alpha=0.1,
                                                               batch_size=8, progress=False),
        "plot.decision_boundary": plot_boundary,
    }


CALLS = sorted(calls())


@pytest.mark.parametrize("name", CALLS)
@pytest.mark.parametrize("pattern", [[True], [False], [True, False], [True, True, False], [False, True]],
                         ids=["train", "eval", "alternating", "frozen-third", "eval-top"])
def test_every_submodule_mode_is_restored(name, pattern):
    model = make_model()
    before = freeze(model, pattern)
    calls()[name](model)
    assert flags(model) == before


@pytest.mark.parametrize("name", CALLS)
def test_modes_are_restored_when_the_model_raises_half_way(name):
    model = make_model(fail_at=2)  # the first forward pass works, the second raises
    before = freeze(model, [True, False, True])
    with pytest.raises((RuntimeError, ValueError)):
        # some functions make only one forward pass: make them fail on the first
        model[2].fail_at = 2 if name.startswith("train.fit") or name in ("Smooth.certify", "Smooth.certify_lvm",
                                                                          "certify_dataset") else 1
        calls()[name](model)
    assert flags(model) == before


@settings(max_examples=15, deadline=None)
@given(pattern=st.lists(st.booleans(), min_size=1, max_size=11))
def test_predict_and_evaluate_restore_any_pattern(pattern):
    model = make_model()
    before = freeze(model, pattern)
    train.predict(model, X)
    train.evaluate(model, (X, Y))
    assert flags(model) == before


def test_fit_trains_in_train_mode_evaluates_in_eval_mode_and_keeps_a_frozen_batchnorm_frozen():
    model = make_model()
    model.train()
    frozen = model[1]
    frozen.eval()  # the caller froze this BatchNorm
    running_mean = frozen.running_mean.clone()
    before = flags(model)
    recorder = model[2]
    train.fit(model, (X, Y), epochs=2, batch_size=6, test_data=(X[:4], Y[:4]), progress=False)
    # per epoch: 2 training batches in train mode, then one evaluation batch in eval mode
    assert recorder.flags == [True, True, False, True, True, False]
    assert torch.equal(frozen.running_mean, running_mean)  # frozen statistics were never updated
    assert not torch.equal(model[4][1].running_mean, torch.zeros(8))  # the other BatchNorm trained
    assert flags(model) == before


def test_fit_trains_a_model_handed_over_in_eval_mode_and_gives_it_back_in_eval_mode():
    model = make_model()
    model.eval()
    running_mean = model[1].running_mean.clone()
    train.fit(model, (X, Y), epochs=1, batch_size=12, progress=False)
    assert model[2].flags == [True]  # trained in train mode, as a whole
    assert not torch.equal(model[1].running_mean, running_mean)
    assert not any(flags(model))  # and returned in eval mode, as it came
