"""train.fit(callbacks=...) and dynamics.SpectralMonitor against direct SVDs during short fits."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch import nn

import stabilitylab.dynamics as dynamics
from stabilitylab import models, spectral, train

F64 = torch.float64


def _data(n=48, d=6, c=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g), torch.randint(0, c, (n,), generator=g)


def _mlp(d=6, c=3, seed=0):
    return models.mlp(d, c, hidden=(10, 8), generator=torch.Generator().manual_seed(seed))


class _Snapshot:
    """An independent callback: the singular values of every Linear/Conv weight after each step."""

    def __init__(self):
        self.steps, self.svals = [], []

    def __call__(self, state):
        self.steps.append(state.step)
        self.svals.append([torch.linalg.svdvals(m.weight.detach().reshape(m.weight.shape[0], -1).double())
                           for m in state.model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))])


# ----------------------------------------------------------------------------- fit's hook


def test_fit_calls_every_callback_once_per_step_with_the_step_count():
    x, y = _data(n=50)
    calls = []

    def record(state):
        assert isinstance(state, train.TrainStep)
        assert state.model.training and state.x.shape[1:] == (6,) and len(state.x) == len(state.y)
        assert state.loss.ndim == 0 and not state.loss.requires_grad
        assert isinstance(state.optimizer, torch.optim.SGD)
        calls.append((state.step, state.epoch, len(state.y)))

    second = []
    train.fit(_mlp(), (x, y), epochs=3, batch_size=16, optimizer="sgd", lr=0.1, progress=False,
              callbacks=[record, lambda s: second.append(s.step)])
    per_epoch = math.ceil(50 / 16)
    assert [c[0] for c in calls] == list(range(1, 3 * per_epoch + 1)) == second
    assert [c[1] for c in calls] == [e for e in range(3) for _ in range(per_epoch)]
    assert [c[2] for c in calls[:per_epoch]] == [16, 16, 16, 2]
    single = []
    train.fit(_mlp(), (x, y), epochs=1, batch_size=25, progress=False, callbacks=lambda s: single.append(s.step))
    assert single == [1, 2]


def test_the_callback_sees_the_parameters_after_the_step():
    x, y = _data()
    model = _mlp()
    seen = []
    train.fit(model, (x, y), epochs=1, batch_size=48, optimizer="sgd", lr=0.1, momentum=0.0, progress=False,
              callbacks=[lambda s: seen.append(s.model[-1].weight.detach().clone())])
    assert len(seen) == 1 and torch.equal(seen[0], model[-1].weight.detach())


@pytest.mark.parametrize("bad", [object(), [3], "f", [print, None]])
def test_bad_callbacks_are_refused_by_name(bad):
    x, y = _data()
    with pytest.raises(TypeError, match="callbacks"):
        train.fit(_mlp(), (x, y), epochs=1, progress=False, callbacks=bad)


# ----------------------------------------------------------------------------- the monitor


def test_monitor_records_match_direct_svds_during_fit():
    x, y = _data(n=64)
    model = _mlp()
    snap = _Snapshot()
    monitor = dynamics.SpectralMonitor(every=1, n_iter=4, exact_every=5, exact_steps=[2],
                                       lower_points=x[:8], generator=torch.Generator().manual_seed(0))
    monitor.observe(model, step=0)
    train.fit(model, (x, y), epochs=2, batch_size=8, optimizer="sgd", lr=0.2, momentum=0.0, progress=False,
              callbacks=[monitor, snap])
    assert monitor.layer_names == ["1", "3", "5"] and len(monitor) == 1 + 16
    steps, s1, exact = monitor.steps[1:], monitor.s1[1:], monitor.exact[1:]
    assert steps.tolist() == snap.steps == list(range(1, 17))
    assert exact.tolist() == [s in (2, 5, 10, 15) for s in range(1, 17)]
    direct = torch.tensor([[float(s[0]) for s in row] for row in snap.svals], dtype=F64)
    assert torch.allclose(s1[exact], direct[exact], rtol=1e-12)
    # warm-started power iteration: never above s1, and within 1e-4 of it after the first records
    assert bool((s1 <= direct * (1 + 1e-12)).all())
    assert bool(((direct - s1) / direct)[4:].max() < 1e-4), ((direct - s1) / direct).max(0)
    gap = torch.tensor([[float((s[0] - s[1]) / s[0]) for s in row] for row in snap.svals], dtype=F64)
    assert torch.allclose(monitor.gap[1:][exact], gap[exact], rtol=1e-10)
    assert bool(monitor.gap[1:][~exact].isnan().all())
    assert torch.allclose(monitor.product, monitor.s1.prod(1), rtol=1e-12)
    lower = monitor.lower
    assert bool(lower[~monitor.exact].isnan().all())
    assert bool((lower[monitor.exact] <= monitor.product[monitor.exact] * (1 + 1e-9)).all())
    assert bool((lower[monitor.exact] > 0).all())
    record = monitor.to_dict()
    assert record["step"][:3] == [0, 1, 2] and set(record["s1"]) == {"1", "3", "5"}
    json.dumps(record)  # plain lists


def test_monitor_on_a_cnn_records_the_reshaped_kernel_and_the_operator_norm():
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 6, 6, generator=g), torch.randint(0, 2, (16,), generator=g)
    model = models.cnn(1, 2, input_size=6, channels=(3,), hidden=4, generator=torch.Generator().manual_seed(0))
    monitor = dynamics.SpectralMonitor(every=2, exact_every=2, generator=torch.Generator().manual_seed(1))
    snap = _Snapshot()
    train.fit(model, (x, y), epochs=1, batch_size=4, optimizer="sgd", lr=0.1, momentum=0.0, progress=False,
              callbacks=[monitor, snap])
    convs = [i for i, name in enumerate(monitor.layer_names)
             if isinstance(dict(model.named_modules())[name], nn.Conv2d)]
    assert convs and monitor.steps.tolist() == [2, 4]
    direct = torch.tensor([[float(s[0]) for s in snap.svals[i]] for i in (1, 3)], dtype=F64)
    assert torch.allclose(monitor.s1, direct, rtol=1e-12)
    conv = dict(model.named_modules())[monitor.layer_names[convs[0]]]
    operator = spectral.conv_operator_matrix(conv.weight.detach().double(), 6, padding=conv.padding[0])
    exact = float(torch.linalg.matrix_norm(operator, 2))
    bound = float(monitor.conv_norm[-1, convs[0]])
    assert exact * (1 - 1e-9) <= bound <= exact * 1.1
    assert bool(monitor.conv_norm[:, [i for i in range(len(monitor.layer_names)) if i not in convs]].isnan().all())
    norms = monitor.s1.clone()
    norms[:, convs] = monitor.conv_norm[:, convs]
    assert torch.allclose(monitor.product, norms.prod(1), rtol=1e-12)


def test_monitor_does_not_change_the_training_run():
    x, y = _data()
    runs = []
    for with_monitor in (False, True):
        model = _mlp()
        callbacks = [dynamics.SpectralMonitor(drift_every=3, drift_samples=16, lr=0.1, lower_points=x[:4],
                                              generator=torch.Generator().manual_seed(0))] if with_monitor else []
        train.fit(model, (x, y), epochs=2, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.0, progress=False,
                  generator=torch.Generator().manual_seed(3), callbacks=callbacks)
        runs.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    assert torch.equal(runs[0], runs[1])


def test_monitor_drift_terms_equal_the_function_on_the_same_samples():
    x, y = _data(n=20)
    model = _mlp()
    monitor = dynamics.SpectralMonitor(drift_every=1, drift_data=(x, y), drift_samples=20, lr=0.05, batch_size=4,
                                       dataset_size=20)
    monitor.observe(model, step=0)
    grads = dynamics.per_sample_gradients(model, x, y)
    for i, name in enumerate(monitor.layer_names):
        W = dict(model.named_modules())[name].weight.detach()
        G = grads[f"{name}.weight"]
        terms = dynamics.lipschitz_drift_terms(W, G.mean(0), G, 0.05, 4, dataset_size=20)
        for field, value in terms._asdict().items():
            assert math.isclose(float(getattr(monitor, field)[0, i]), float(value), rel_tol=1e-9, abs_tol=1e-15)
        assert float(monitor.curvature_drift[0, i]) >= 0


def _noisy_run(loader_or_pair, seed=3, epochs=8, dataset_size=None):
    x, y = _data(n=64, seed=seed)
    y = dynamics.corrupt_labels(y, 0.3, num_classes=3, generator=torch.Generator().manual_seed(0))
    model = _mlp(seed=seed)
    monitor = dynamics.SpectralMonitor(every=2, drift_every=2, drift_data=(x, y), drift_samples=64, batch_size=8,
                                       dataset_size=dataset_size, generator=torch.Generator().manual_seed(0))
    monitor.observe(model, step=0, optimizer=torch.optim.SGD(model.parameters(), lr=0.05))
    data = loader_or_pair(x, y)
    train.fit(model, data, epochs=epochs, batch_size=8, optimizer="sgd", lr=0.05, momentum=0.0, progress=False,
              generator=torch.Generator().manual_seed(4), callbacks=[monitor])
    return monitor


def test_the_diffusion_is_the_spread_of_the_observed_change_with_independent_batches():
    """Batches drawn with replacement (the Itô model's assumption): over windows of 4 steps,
    z = (observed - predicted) / diffusion has mean square near 1 (measured 0.84-1.16 over four
    seeds; asserted in [0.5, 1.6], about 2.5 standard deviations of a mean of 48 squares) and
    no |z| above 4."""
    from torch.utils.data import DataLoader, RandomSampler, TensorDataset

    def loader(x, y):
        ds = TensorDataset(x, y)
        sampler = RandomSampler(ds, replacement=True, num_samples=64, generator=torch.Generator().manual_seed(3))
        return DataLoader(ds, batch_size=8, sampler=sampler)

    changes = _noisy_run(loader).window_changes(4)
    assert changes.start.tolist() == list(range(0, 64, 4))
    assert changes.observed.shape == changes.predicted.shape == (16, 3)
    z = (changes.observed - changes.predicted) / changes.diffusion
    assert 0.5 <= float(z.square().mean()) <= 1.6 and float(z.abs().max()) <= 4
    assert bool((changes.curvature > 0).all())


def test_random_reshuffling_cancels_the_noise_over_an_epoch():
    """fit draws each epoch's batches without replacement: over a window of one epoch (8 steps of
    8 of 64 examples) the summed noise vanishes, the reshuffled prediction has no noise terms and
    explains the observed change (R^2 > 0.9), while the independent-batch diffusion overstates
    the spread (mean square z < 0.2)."""
    monitor = _noisy_run(lambda x, y: (x, y), epochs=6, dataset_size=64)
    plain, shuffled = monitor.window_changes(8), monitor.window_changes(8, reshuffled=True)
    assert bool((shuffled.diffusion == 0).all()) and bool((shuffled.curvature == 0).all())
    assert bool((shuffled.r2 > 0.9).all()), shuffled.r2
    assert float(((plain.observed - plain.predicted) / plain.diffusion).square().mean()) < 0.2
    with pytest.raises(ValueError, match="window"):
        monitor.window_changes(3)
    with pytest.raises(ValueError, match="dataset_size"):
        _noisy_run(lambda x, y: (x, y), epochs=1).window_changes(2, reshuffled=True)


def test_monitor_warns_for_momentum_and_needs_a_learning_rate_outside_fit():
    x, y = _data()
    monitor = dynamics.SpectralMonitor(drift_every=1, drift_samples=8)
    with pytest.raises(ValueError, match="lr"):
        monitor.observe(_mlp(), step=0, x=x[:8], y=y[:8])
    monitor = dynamics.SpectralMonitor(drift_every=4, drift_samples=8)
    with pytest.warns(UserWarning, match="plain SGD"):
        train.fit(_mlp(), (x, y), epochs=1, batch_size=8, optimizer="sgd", lr=0.1, momentum=0.9, progress=False,
                  callbacks=[monitor])
    with pytest.raises(ValueError, match="model"):
        monitor.observe(_mlp(), step=99)
    with pytest.raises(TypeError, match="state"):
        monitor(object())
