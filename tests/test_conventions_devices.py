"""One device convention: work runs on the model's device and the data is moved there.

The README's quick start ("Using the package alone") is run, at tiny sizes, on a CPU-only machine
that pretends to have CUDA (``torch.cuda.is_available`` returns True): any code path that picks
CUDA by itself then fails, because nothing can be allocated there. The inputs are, in addition,
tensors that *say* they live on ``cuda:0`` (:class:`OnOtherDevice`) while the model is on the CPU:
code that allocates on ``x.device`` fails, code that computes with ``x`` without moving it returns
results that still claim ``cuda:0``, and only code that moves the data to the model's device gets
plain CPU tensors back. This emulates "inputs on one device, the model on another" without a GPU.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stabilitylab import attacks, data, models, smoothing, train

OTHER = torch.device("cuda", 0)


def _target(func, args, kwargs) -> torch.device | None:
    """The device a ``Tensor.to``/``cpu``/``cuda`` call moves to (None: only a dtype change)."""
    if func is torch.Tensor.cpu:
        return torch.device("cpu")
    if func is torch.Tensor.cuda:
        return OTHER
    if "device" in kwargs and kwargs["device"] is not None:
        return torch.device(kwargs["device"])
    for arg in args[1:]:
        if isinstance(arg, (str, torch.device)):
            return torch.device(arg)
        if isinstance(arg, torch.Tensor):
            return arg.device
    return None


class OnOtherDevice(torch.Tensor):
    """A CPU tensor that reports ``device == cuda:0``; moving it to the CPU gives a plain tensor."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        return torch.Tensor._make_subclass(cls, data.detach(), data.requires_grad)

    @property
    def device(self) -> torch.device:  # what Python code sees; torch's kernels still see the CPU
        return OTHER

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.Tensor.to, torch.Tensor.cpu, torch.Tensor.cuda):
            target = _target(func, args, kwargs)
            if target is not None:
                if target.type != "cpu":
                    raise RuntimeError(f"OnOtherDevice: cannot move to {target} in this test")
                with torch._C.DisableTorchFunctionSubclass():
                    moved = func(*args, **kwargs)
                return moved.as_subclass(torch.Tensor)
        return super().__torch_function__(func, types, args, kwargs)


def _plain_cpu(t) -> bool:
    return type(t) is torch.Tensor and t.device.type == "cpu"


@pytest.fixture
def pretend_cuda(monkeypatch):
    """CUDA "is available", but nothing can be put there: code that picks CUDA by itself fails."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    # torch's optimizers then ask the (absent) CUDA stream whether a graph is being captured:
    # a check of torch's own, not a choice of device, so it is switched off here
    monkeypatch.setattr(torch.optim.Optimizer, "_accelerator_graph_capture_health_check",
                        lambda self: None, raising=False)
    assert train.default_device().type == "cuda"  # the explicit helper still sees it


def test_the_fake_device_tensor_behaves_as_intended():
    x = OnOtherDevice(torch.ones(3))
    assert x.device == OTHER and type(x + 1) is OnOtherDevice
    assert _plain_cpu(x.to("cpu")) and _plain_cpu(x.cpu()) and _plain_cpu(x.to(device=torch.device("cpu")))
    assert type(x.to(torch.float64)) is OnOtherDevice
    with pytest.raises((RuntimeError, AssertionError)):
        torch.zeros(2, device=x.device)  # no CUDA on this machine


@pytest.fixture(scope="module")
def quick_start_data():
    train_set = data.load_dataset("digits", n_samples=240)
    test_set = data.load_dataset("digits", split="test", n_samples=60)
    return train_set, test_set


def _on_other_device(dataset):
    dataset.tensors = tuple(OnOtherDevice(t) for t in dataset.tensors)
    return dataset


def test_readme_quick_start_runs_where_the_model_is(pretend_cuda, quick_start_data):
    """The README's first block, with the data sets' tensors on the "other" device."""
    train_set, test_set = (_on_other_device(data.load_dataset("digits", n_samples=240)),
                           _on_other_device(data.load_dataset("digits", split="test", n_samples=60)))
    model = models.mlp(train_set.input_shape, train_set.num_classes, hidden=(32, 32),
                       generator=torch.Generator().manual_seed(0))
    history = train.fit(model, train_set, epochs=3, lr=3e-3, test_data=test_set, progress=False)
    assert all(p.device.type == "cpu" for p in model.parameters())  # fit(device=None) kept it there
    assert len(history) == 3 and history.loss[-1] < history.loss[0]
    assert all(0 <= a <= 1 for a in history.test_accuracy)

    x, y = test_set.tensors
    assert x.device == OTHER
    x_adv = attacks.pgd(model, x, y, 0.3, norm="linf", bounds=test_set.input_range, n_iter=5)
    assert _plain_cpu(x_adv) and x_adv.shape == x.shape  # computed on (and returned on) the model's device
    x_plain = x.as_subclass(torch.Tensor)
    assert (x_adv - x_plain).abs().max() <= 0.3
    low, high = test_set.input_range
    assert x_adv.min() >= low and x_adv.max() <= high
    accuracy = attacks.robust_accuracy(model, x, y, 0.3, norm="linf", bounds=test_set.input_range, n_iter=5)
    clean = train.evaluate(model, test_set)["accuracy"]
    assert 0.0 <= accuracy <= clean

    x_fgsm = attacks.fgsm(model, x, y, 0.1, bounds=test_set.input_range)
    assert _plain_cpu(x_fgsm)
    distance = attacks.minimal_adversarial_distance(model, x[:4], y[:4], bounds=test_set.input_range,
                                                    n_search=3, n_iter=3)
    assert _plain_cpu(distance) and distance.shape == (4,)
    logits = train.predict(model, x)
    assert _plain_cpu(logits) and logits.shape == (len(x), 10)
    assert math.isclose(float((logits.argmax(1) == y.as_subclass(torch.Tensor)).double().mean()), clean)


def test_readme_smoothing_runs_where_the_model_is(pretend_cuda, quick_start_data):
    train_set, test_set = quick_start_data
    model = models.mlp(train_set.input_shape, train_set.num_classes, hidden=(16,),
                       generator=torch.Generator().manual_seed(1))
    x = OnOtherDevice(test_set.inputs[:3])
    smooth = smoothing.Smooth(model, num_classes=10, sigma=0.5)
    c, r = smooth.certify(x[0], n0=10, n=100, alpha=0.001, batch_size=50,
                          generator=torch.Generator().manual_seed(0))
    assert c in range(-1, 10) and r >= 0
    assert smooth.predict(x[1], 50, 0.01, 25) in range(-1, 10)
    frequencies = smooth.vote_frequencies(x, 8, 64, generator=torch.Generator().manual_seed(0))
    assert _plain_cpu(frequencies) and torch.allclose(frequencies.sum(1), torch.ones(3, dtype=torch.float64))
    result = smoothing.certify_dataset(smooth, (x, OnOtherDevice(test_set.labels[:3])), n0=5, n=30, alpha=0.01,
                                       batch_size=30, progress=False)
    assert result.radii.shape == (3,)


def test_fit_moves_the_model_only_when_told(pretend_cuda):
    x, y = torch.randn(16, 3), torch.randint(0, 2, (16,))
    model = models.mlp(3, 2, hidden=(4,))
    train.fit(model, (x, y), epochs=1, progress=False)  # would fail if it picked CUDA by itself
    assert next(model.parameters()).device.type == "cpu"
    train.fit(model, (x, y), epochs=1, progress=False, device="cpu")  # explicit: fine
    with pytest.raises((RuntimeError, AssertionError)):
        train.fit(model, (x, y), epochs=1, progress=False, device="cuda")  # explicit: tries, and fails here


def test_a_model_on_the_meta_device_receives_meta_batches():
    """The shape-only part of the rule on a second real device: batches go to the model's device."""
    seen = []

    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(3, 2, device="meta")

        def forward(self, x):
            seen.append(x.device)
            return self.linear(x)

    x, y = torch.randn(8, 3), torch.randint(0, 2, (8,))
    with pytest.raises((RuntimeError, NotImplementedError)):  # a meta loss has no value to record
        train.fit(Probe(), (x, y), epochs=1, progress=False)
    assert seen and all(d.type == "meta" for d in seen)
    for call in (train.predict, train.evaluate):
        seen.clear()
        with pytest.raises((RuntimeError, NotImplementedError)):  # meta logits cannot come back to the CPU
            call(Probe(), (x, y))
        assert seen and all(d.type == "meta" for d in seen)


# ----------------------------------------------------------------------------- the second block

def _readme_second_block_setup(quick_start_data):
    train_set, test_set = quick_start_data
    model = models.mlp(train_set.input_shape, train_set.num_classes, hidden=(16,),
                       generator=torch.Generator().manual_seed(2))
    train.fit(model, train_set, epochs=1, progress=False)
    x, y = test_set.tensors
    return train_set, test_set, model, OnOtherDevice(x), OnOtherDevice(y)


def test_readme_lipschitz_report(pretend_cuda, quick_start_data):
    from stabilitylab import lipschitz

    train_set, _, model, x, _ = _readme_second_block_setup(quick_start_data)
    report = lipschitz.report(model, x[:20])
    assert 0 < report.lower <= report.upper * (1 + 1e-6)


def test_readme_certify(pretend_cuda, quick_start_data):
    from stabilitylab import certify, losses

    train_set, test_set, _, x, y = _readme_second_block_setup(quick_start_data)
    net = models.lipschitz_mlp(train_set.input_shape, 10, hidden=(16, 16), layer="cayley",
                               generator=torch.Generator().manual_seed(3))
    train.fit(net, train_set, epochs=1, loss_fn=losses.OffsetCrossEntropyLoss(), progress=False)
    accuracy = certify.certified_accuracy_curve(net, test_set, [0.0, 0.5, 1.0], lipschitz=1.0)
    assert accuracy.shape == (3,) and bool((accuracy[1:] <= accuracy[:-1]).all())
    assert certify.check_soundness(net, x[:10], y[:10], lipschitz=1.0).sound


def test_readme_curvature(pretend_cuda, quick_start_data):
    from stabilitylab import curvature

    _, _, model, x, y = _readme_second_block_setup(quick_start_data)
    x, y = x.as_subclass(torch.Tensor)[:50], y.as_subclass(torch.Tensor)[:50]
    loss = lambda: torch.nn.functional.cross_entropy(model(x), y)  # noqa: E731
    values = curvature.hessian_eigenvalues(loss, list(model.parameters()), k=3)
    assert values.shape == (3,)
