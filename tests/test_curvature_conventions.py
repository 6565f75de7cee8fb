"""stabilitylab.curvature keeps the package's conventions (issue 12): one package with one
documented home for its names (item 18), one vocabulary with deprecated aliases and NamedTuple
results (item 16), every submodule's mode restored even on error (item 12), work on the model's
device with the data moved there (item 11), NaN losses and products refused (item 15), and
progress bars that honour TQDM_DISABLE."""

from __future__ import annotations

import importlib
import math
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import stabilitylab
from stabilitylab import curvature
from stabilitylab.curvature import _common

OLD_NAMES = {
    "HessianOperator", "hvp", "input_hvp", "hessian_eigenvalues", "hessian_trace", "SpectralDensity",
    "hessian_density", "sharpness", "m_sharpness", "sharpness_during_training", "SAM", "gradient_norm_penalty",
    "input_curvature_penalty", "hessian_trace_penalty", "filter_normalized_direction", "eigen_directions",
    "loss_landscape", "random_perturbation_loss",
}
NEW_NAMES = {"Eigenpairs", "TraceEstimate", "SharpnessEstimate"}


def _mlp(seed: int = 0, n: int = 16):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(3, 5), nn.Tanh(), nn.Linear(5, 2)).double()
    g = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(n, 3, generator=g, dtype=torch.float64)
    y = torch.randint(0, 2, (n,), generator=g)
    return model, x, y


def _closure(model, x, y):
    return lambda: nn.functional.cross_entropy(model(x), y)


def _seeded(seed=0):
    return torch.Generator().manual_seed(seed)


# ----------------------------------------------------------------------------- item 18: one package


def test_curvature_is_a_package_with_one_home_for_every_public_name():
    root = Path(stabilitylab.__file__).resolve().parent
    assert (root / "curvature" / "__init__.py").is_file() and not (root / "curvature.py").exists()
    assert set(curvature.__all__) == OLD_NAMES | NEW_NAMES and len(curvature.__all__) == len(set(curvature.__all__))
    for sub in ("hessian", "spectrum", "sam", "regularizers", "landscape"):
        importlib.import_module(f"stabilitylab.curvature.{sub}")
    for name in curvature.__all__:
        obj = getattr(curvature, name)
        assert obj.__module__ == "stabilitylab.curvature", name
        assert obj.__doc__, name
        exec_ns: dict = {}
        exec(f"from stabilitylab.curvature import {name} as imported", exec_ns)
        assert exec_ns["imported"] is obj
    assert "Hessian" in curvature.__doc__ and "closure" in curvature.__doc__


def test_namedtuple_results_pickle_through_their_documented_path():
    pair = curvature.Eigenpairs(torch.ones(1), [(torch.zeros(2),)])
    again = pickle.loads(pickle.dumps(pair))
    assert type(again) is curvature.Eigenpairs and torch.equal(again.eigenvalues, pair.eigenvalues)
    assert repr(curvature.TraceEstimate).startswith("<class 'stabilitylab.curvature.TraceEstimate'")


# ----------------------------------------------------------------------------- item 16: NamedTuples


def test_eigenpairs_are_named_and_unpack_like_the_old_tuple():
    model, x, y = _mlp()
    params = list(model.parameters())
    dense = torch.autograd.functional.hessian(
        lambda flat: nn.functional.cross_entropy(
            torch.func.functional_call(model, _unflat(model, flat), (x,)), y),
        torch.cat([p.detach().reshape(-1) for p in params]))
    result = curvature.hessian_eigenvalues(_closure(model, x, y), params, k=2, tol=1e-10, return_eigenvectors=True,
                                           generator=_seeded())
    assert isinstance(result, curvature.Eigenpairs) and result._fields == ("eigenvalues", "eigenvectors")
    values, vectors = result
    assert values is result.eigenvalues and vectors is result.eigenvectors
    plain = curvature.hessian_eigenvalues(_closure(model, x, y), params, k=2, tol=1e-10, criterion="residual",
                                          generator=_seeded())
    assert torch.equal(plain, values)
    for lam, vec in zip(values, vectors):
        u = torch.cat([t.reshape(-1) for t in vec])
        assert torch.allclose(dense @ u, lam * u, atol=1e-7)


def _unflat(model, flat):
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = flat[start:start + p.numel()].reshape(p.shape)
        start += p.numel()
    return out


def test_trace_estimate_is_named_and_equals_the_plain_estimate():
    model, x, y = _mlp(1)
    params = list(model.parameters())
    result = curvature.hessian_trace(_closure(model, x, y), params, n_samples=30, return_stderr=True,
                                     generator=_seeded(3))
    assert isinstance(result, curvature.TraceEstimate) and result._fields == ("trace", "stderr")
    trace, stderr = result
    assert torch.equal(trace, curvature.hessian_trace(_closure(model, x, y), params, n_samples=30,
                                                      generator=_seeded(3)))
    assert stderr > 0 and torch.equal(stderr, result.stderr)


def test_sharpness_estimate_is_the_loss_increase_at_its_perturbation():
    model, x, y = _mlp(2)
    params = list(model.parameters())
    closure = _closure(model, x, y)
    result = curvature.sharpness(closure, params, rho=0.1, n_iter=4, return_perturbation=True)
    assert isinstance(result, curvature.SharpnessEstimate) and result._fields == ("sharpness", "perturbation")
    value, eps = result
    assert torch.equal(value, curvature.sharpness(closure, params, rho=0.1, n_iter=4))
    assert math.sqrt(sum(float(e.pow(2).sum()) for e in eps)) <= 0.1 * (1 + 1e-12)
    with torch.no_grad():
        base = closure()
        moved = {n: p + e for (n, p), e in zip(model.named_parameters(), eps)}
        at_eps = nn.functional.cross_entropy(torch.func.functional_call(model, moved, (x,)), y)
    assert torch.allclose(value, at_eps - base, rtol=1e-12, atol=1e-15)


def test_eigen_directions_return_named_eigenpairs_of_parameter_dicts():
    model, x, y = _mlp(3)
    result = curvature.eigen_directions(model, (x, y), k=2, tol=1e-8, generator=_seeded(), progress=False)
    assert isinstance(result, curvature.Eigenpairs)
    values, directions = result
    assert values.shape == (2,) and values[0] >= values[1]
    names = [n for n, _ in model.named_parameters()]
    for d in directions:
        assert list(d) == names
        assert abs(math.sqrt(sum(float(t.pow(2).sum()) for t in d.values())) - 1) < 1e-9


# ----------------------------------------------------------------------------- item 16: deprecated aliases


def _calls():
    """(function, arguments with the new names, the same with the old names): each pair must give the
    same result, the old one with a DeprecationWarning."""
    model, x, y = _mlp(4)
    params = list(model.parameters())
    closure = _closure(model, x, y)
    v = tuple(torch.ones_like(p) for p in params)
    w = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    A = torch.diag(torch.tensor([3.0, 2.0, 1.0, 0.5], dtype=torch.float64))
    quad = lambda: 0.5 * w @ A @ w  # noqa: E731
    inp = lambda t: nn.functional.cross_entropy(model(t), y)  # noqa: E731
    return [
        (curvature.hvp, dict(closure=closure, params=params, v=v), dict(loss_fn=closure, params=params, v=v)),
        (lambda **kw: curvature.HessianOperator(**kw).grad, dict(closure=closure, params=params),
         dict(loss_fn=closure, params=params)),
        (curvature.input_hvp, dict(input_loss=inp, x=x, v=torch.ones_like(x)),
         dict(loss_fn=inp, x=x, v=torch.ones_like(x))),
        (curvature.hessian_eigenvalues, dict(closure=closure, params=params, n_iter=40, generator=_seeded()),
         dict(loss_fn=closure, params=params, max_iter=40, generator=_seeded())),
        (curvature.hessian_trace, dict(closure=closure, params=params, n_samples=5, generator=_seeded()),
         dict(loss_fn=closure, params=params, n_samples=5, generator=_seeded())),
        (lambda **kw: curvature.hessian_density(**kw).density,
         dict(closure=closure, params=params, n_iter=6, generator=_seeded(), grid=50),
         dict(loss_fn=closure, params=params, n_lanczos=6, generator=_seeded(), grid=50)),
        (curvature.sharpness, dict(closure=closure, params=params, rho=0.05, n_iter=3),
         dict(loss_fn=closure, params=params, rho=0.05, n_steps=3)),
        (curvature.m_sharpness, dict(model=model, data=(x, y), m=8, rho=0.05, n_iter=2),
         dict(model=model, data=(x, y), m=8, rho=0.05, n_steps=2)),
        (curvature.gradient_norm_penalty, dict(closure=closure, params=params),
         dict(loss_fn=closure, params=params)),
        (curvature.hessian_trace_penalty, dict(closure=closure, params=params, generator=_seeded()),
         dict(loss_fn=closure, params=params, generator=_seeded())),
        (lambda **kw: curvature.sharpness_during_training(optimizer=torch.optim.SGD([w], lr=0.0), **kw)["sharpness"],
         dict(closure=quad, params=[w], n_iter=2, every=1), dict(loss_fn=quad, params=[w], steps=2, every=1)),
    ]


def _same(a, b):
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(s, t) for s, t in zip(a, b))
    return torch.allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("index", range(11))
def test_old_argument_names_still_work_with_a_deprecation_warning(index):
    fn, new, old = _calls()[index]
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)
        expected = fn(**new, progress=False) if "progress" in _progress_args(fn) else fn(**new)
    with pytest.warns(DeprecationWarning, match="deprecated"):
        got = fn(**old, progress=False) if "progress" in _progress_args(fn) else fn(**old)
    assert _same(expected, got)
    both = {**old, **new}
    with pytest.raises(TypeError, match="both"):
        fn(**both)


def _progress_args(fn):
    import inspect

    try:
        return inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return {}


def test_deprecated_seed_reproduces_the_former_start_vectors():
    """seed=s seeds step t's start vector with s + t, as before the rename to generator."""
    g = torch.Generator().manual_seed(5)
    B = torch.randn(6, 6, generator=g, dtype=torch.float64)
    A = B @ B.T
    w = torch.randn(6, generator=g, dtype=torch.float64, requires_grad=True)
    quad = lambda: 0.5 * w @ A @ w  # noqa: E731
    with pytest.warns(DeprecationWarning, match="seed"):
        record = curvature.sharpness_during_training(quad, [w], torch.optim.SGD([w], lr=0.0), n_iter=3, every=3,
                                                     seed=2, progress=False)
    for t, value in zip(record["step"].tolist(), record["sharpness"]):
        expected = curvature.hessian_eigenvalues(quad, [w], tol=1e-3, generator=_seeded(2 + int(t)), progress=False)
        assert value == float(expected)
    assert torch.allclose(record["sharpness"], torch.linalg.eigvalsh(A)[-1].expand(2), rtol=1e-3)


# ----------------------------------------------------------------------------- item 12: modes


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(3, 6), nn.BatchNorm1d(6), nn.Tanh(), nn.Dropout(0.5))
        self.head = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))

    def forward(self, x):
        return self.head(self.body(x))


def _modes(model):
    return [m.training for m in model.modules()]


class _Boom(RuntimeError):
    pass


def _recording_loss(model, seen, raise_at=None):
    calls = [0]

    def loss_fn(out, target):
        calls[0] += 1
        seen.append(_modes(model))
        if raise_at is not None and calls[0] >= raise_at:
            raise _Boom("the loss raised mid-way")
        return nn.functional.cross_entropy(out, target)

    return loss_fn


MODE_FUNCTIONS = {
    "m_sharpness": lambda model, data, loss_fn: curvature.m_sharpness(model, data, m=4, rho=0.05, loss_fn=loss_fn,
                                                                      progress=False),
    "eigen_directions": lambda model, data, loss_fn: curvature.eigen_directions(
        model, data, k=1, loss_fn=loss_fn, batch_size=4, tol=1e-3, generator=_seeded(), progress=False),
    "loss_landscape": lambda model, data, loss_fn: curvature.loss_landscape(
        model, data, curvature.filter_normalized_direction(model, generator=_seeded()), [-0.5, 0.0, 0.5],
        loss_fn=loss_fn, batch_size=4, progress=False),
    "random_perturbation_loss": lambda model, data, loss_fn: curvature.random_perturbation_loss(
        model, data, [0.0, 0.1], n_directions=2, loss_fn=loss_fn, generator=_seeded(), batch_size=4, progress=False),
}


def _frozen_model(frozen: list[bool]):
    torch.manual_seed(0)
    model = _Net().double().train()
    for module, freeze in zip(model.modules(), frozen):
        if freeze:
            module.training = False
    return model


def _data(n=12):
    g = _seeded(9)
    return torch.randn(n, 3, generator=g, dtype=torch.float64), torch.randint(0, 2, (n,), generator=g)


@pytest.mark.parametrize("name", list(MODE_FUNCTIONS))
def test_a_frozen_batchnorm_comes_back_frozen(name):
    """A model in train mode whose first BatchNorm is deliberately in eval mode: every module's
    flag is the same afterwards, the work ran in eval mode throughout (the running statistics did
    not move), and the same holds when the loss raises mid-way."""
    for raise_at in (None, 1, 2):
        model = _Net().double().train()
        model.body[1].eval()
        before = _modes(model)
        buffers = {k: v.clone() for k, v in model.state_dict().items()}
        seen = []
        loss_fn = _recording_loss(model, seen, raise_at)
        if raise_at is None:
            MODE_FUNCTIONS[name](model, _data(), loss_fn)
        else:
            with pytest.raises(_Boom):
                MODE_FUNCTIONS[name](model, _data(), loss_fn)
        assert _modes(model) == before, (name, raise_at)
        assert seen and all(not any(flags) for flags in seen), "the work must run in eval mode"
        for k, v in model.state_dict().items():
            assert torch.equal(v, buffers[k]), (name, raise_at, k)


@settings(max_examples=6, deadline=None)
@given(frozen=st.lists(st.booleans(), min_size=9, max_size=9), name=st.sampled_from(sorted(MODE_FUNCTIONS)),
       raises=st.booleans())
def test_every_submodule_mode_is_restored(frozen, name, raises):
    model = _frozen_model(frozen)
    before = _modes(model)
    loss_fn = _recording_loss(model, [], 2 if raises else None)
    try:
        MODE_FUNCTIONS[name](model, _data(), loss_fn)
    except _Boom:
        assert raises
    assert _modes(model) == before


# ----------------------------------------------------------------------------- item 11: devices


def _meta_cnn():
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 3)).to("meta")


def test_filter_normalized_direction_on_the_meta_device():
    """Shape-only work on a model on the meta device: the directions are drawn on the CPU and
    put on the model's device, each parameter's shape, and the model is not moved."""
    model = _meta_cnn()
    directions = curvature.filter_normalized_direction(model, generator=_seeded(), ignore_1d=False)
    for name, p in model.named_parameters():
        assert directions[name].device.type == "meta" and directions[name].shape == p.shape
    assert all(p.device.type == "meta" for p in model.parameters())


def test_hessian_products_run_on_the_parameters_device_and_move_v():
    model = _meta_cnn()
    x, y = torch.randn(5, 1, 6, 6).to("meta"), torch.randint(0, 3, (5,)).to("meta")
    params = list(model.parameters())
    closure = lambda: nn.functional.cross_entropy(model(x), y)  # noqa: E731
    v_cpu = tuple(torch.ones(p.shape) for p in params)  # on the CPU: moved to the parameters' device
    out = curvature.hvp(closure, params, v_cpu)
    assert [o.device.type for o in out] == ["meta"] * len(params)
    assert [o.shape for o in out] == [p.shape for p in params]
    op = curvature.HessianOperator(closure, params)
    assert op.numel == sum(p.numel() for p in params) and op.device.type == "meta"
    assert op.matvec_flat(torch.ones(op.numel)).shape == (op.numel,)


def test_input_curvature_penalty_on_the_meta_device():
    """Inputs and labels on the CPU, the model on the meta device: the shape-only computation
    runs where the model is (a meta scalar), and the model stays there."""
    model = _meta_cnn()
    x, y = torch.randn(5, 1, 6, 6), torch.randint(0, 3, (5,))
    value = curvature.input_curvature_penalty(model, x, y, h=0.1)
    assert value.device.type == "meta" and value.shape == ()
    assert all(p.device.type == "meta" for p in model.parameters())


class _ClaimsCuda(torch.Tensor):
    """A CPU tensor that says it lives on ``cuda:0`` (no GPU needed): code that computes with it
    where it is keeps getting this type back, code that moves it to the model's device (the CPU)
    gets a plain tensor. "Data on one device, the model on another", emulated."""

    @staticmethod
    def __new__(cls, data):
        return torch.Tensor._make_subclass(cls, data.detach(), False)

    @property
    def device(self):
        return torch.device("cuda", 0)

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.to:
            target = kwargs.get("device", next((a for a in args[1:] if isinstance(a, (str, torch.device))), None))
            if target is not None and torch.device(target).type == "cpu":
                with torch._C.DisableTorchFunctionSubclass():
                    return func(*args, **kwargs).as_subclass(torch.Tensor)
        return super().__torch_function__(func, types, args, kwargs)


def test_the_fake_device_tensor_behaves_as_intended():
    x = _ClaimsCuda(torch.ones(3))
    assert x.device.type == "cuda" and type(x[:2] + 1) is _ClaimsCuda
    assert type(x.to(torch.device("cpu"))) is torch.Tensor and type(x.to(torch.float64)) is _ClaimsCuda


@pytest.mark.parametrize("name", list(MODE_FUNCTIONS))
def test_the_data_is_moved_to_the_models_device(name, monkeypatch):
    """Data that claims to be on cuda:0, a model on the CPU: every forward pass gets plain CPU
    inputs (the data was moved to the model, through ``_devices.to_model_device``), the model
    stays on the CPU, and the results are plain CPU tensors."""
    real, calls = _common.to_model_device, []

    def spy(model, *tensors):
        calls.append(model)
        return real(model, *tensors)

    monkeypatch.setattr(_common, "to_model_device", spy)
    torch.manual_seed(0)
    model = _Net().double()
    inputs = []
    model.register_forward_pre_hook(lambda module, args: inputs.append((type(args[0]), args[0].device.type)))
    x, y = _data()
    result = MODE_FUNCTIONS[name](model, (_ClaimsCuda(x), _ClaimsCuda(y)), None)
    assert calls and all(m is model for m in calls)
    assert inputs and set(inputs) == {(torch.Tensor, "cpu")}
    assert all(p.device.type == "cpu" for p in model.parameters())
    first = result[0] if isinstance(result, tuple) else result["loss"] if isinstance(result, dict) else result
    assert type(first) is torch.Tensor and first.device.type == "cpu"


def test_input_curvature_penalty_moves_data_claiming_another_device():
    torch.manual_seed(0)
    model = _Net().double().eval()
    x, y = _data()
    expected = curvature.input_curvature_penalty(model, x, y, h=0.1)
    value = curvature.input_curvature_penalty(model, _ClaimsCuda(x), _ClaimsCuda(y), h=0.1)
    assert type(value) is torch.Tensor and torch.equal(value, expected)


# ----------------------------------------------------------------------------- item 15: NaN


def _kinked():
    """L(w) = sum |w - 1|^1.5 at w = 1: a finite loss (0) and gradient (0) whose Hessian is not
    finite there (autograd gives NaN)."""
    w = torch.ones(3, dtype=torch.float64, requires_grad=True)
    return w, (lambda: (w - 1).abs().pow(1.5).sum())


def test_nan_losses_are_value_errors_not_linalg_errors():
    model, x, y = _mlp(5)
    params = list(model.parameters())
    nan_loss = lambda: nn.functional.cross_entropy(model(x), y) * float("nan")  # noqa: E731
    for fn in (lambda c: curvature.hessian_eigenvalues(c, params, progress=False),
               lambda c: curvature.hessian_eigenvalues(c, params, method="power", progress=False),
               lambda c: curvature.hessian_trace(c, params, n_samples=4),
               lambda c: curvature.hessian_trace(c, params, n_samples=6, method="hutch++"),
               lambda c: curvature.hessian_density(c, params, n_iter=4, progress=False)):
        with pytest.raises(ValueError, match="closure"):
            fn(nan_loss)


def test_non_finite_hessian_products_are_value_errors():
    w, closure = _kinked()
    for fn in (lambda: curvature.hessian_eigenvalues(closure, [w], progress=False),
               lambda: curvature.hessian_eigenvalues(closure, [w], method="power", progress=False),
               lambda: curvature.hessian_trace(closure, [w], n_samples=4),
               lambda: curvature.hessian_density(closure, [w], n_iter=2, progress=False),
               lambda: curvature.hvp(closure, [w], [torch.ones(3, dtype=torch.float64)]),
               lambda: curvature.HessianOperator(closure, [w]).matvec([torch.ones(3, dtype=torch.float64)])):
        with pytest.raises(ValueError, match="closure"):
            fn()
    with pytest.raises(ValueError, match="input_loss"):
        curvature.input_hvp(lambda t: (t - 1).abs().pow(1.5).sum(), torch.ones(3, dtype=torch.float64),
                            torch.ones(3, dtype=torch.float64))


def test_hvp_with_a_nan_vector_names_v():
    model, x, y = _mlp(6)
    params = list(model.parameters())
    v = [torch.ones_like(p) for p in params]
    v[1] = v[1].clone()
    v[1][0] = float("nan")
    with pytest.raises(ValueError, match=r"v\[1\]"):
        curvature.hvp(_closure(model, x, y), params, v)


# ----------------------------------------------------------------------------- progress


@pytest.mark.parametrize("env,shown", [(None, True), ("1", False), ("0", True)])
def test_progress_none_honours_tqdm_disable(env, shown, monkeypatch, capsys):
    if env is None:
        monkeypatch.delenv("TQDM_DISABLE", raising=False)
    else:
        monkeypatch.setenv("TQDM_DISABLE", env)
    w = torch.zeros(5, dtype=torch.float64, requires_grad=True)
    A = torch.diag(torch.arange(1.0, 6.0, dtype=torch.float64))
    curvature.hessian_eigenvalues(lambda: 0.5 * w @ A @ w, [w], tol=1e-6)
    assert ("lanczos" in capsys.readouterr().err) == shown
    curvature.hessian_eigenvalues(lambda: 0.5 * w @ A @ w, [w], tol=1e-6, progress=False)
    assert "lanczos" not in capsys.readouterr().err


# ----------------------------------------------------------------------------- data kinds


def test_data_as_a_pair_a_dataset_or_a_loader_gives_the_same_slice():
    """Regression targets (N, 1) and class labels alike; a tensor pair, a TensorDataset and a
    DataLoader are taken in order, so the slices agree to rounding."""
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    model = nn.Linear(3, 1).double()
    g = _seeded(4)
    x = torch.randn(10, 3, generator=g, dtype=torch.float64)
    y = torch.randn(10, 1, generator=g, dtype=torch.float64)
    direction = curvature.filter_normalized_direction(model, generator=_seeded(), ignore_1d=False)
    mse = nn.functional.mse_loss
    slices = [curvature.loss_landscape(model, data, direction, [-1.0, 0.0, 1.0], loss_fn=mse, batch_size=4,
                                       progress=False)["loss"]
              for data in ((x, y), TensorDataset(x, y), DataLoader(TensorDataset(x, y), batch_size=4))]
    for other in slices[1:]:
        assert torch.allclose(slices[0], other, rtol=1e-12)
    assert torch.allclose(slices[0][1], mse(model(x), y).detach().double())
    with pytest.raises(ValueError, match="data"):
        curvature.loss_landscape(model, (x[:0], y[:0]), direction, [0.0], loss_fn=mse)
