"""One training loop for every chapter: seeded, device-agnostic, with a progress bar and a history.

``fit`` takes the data as a :class:`~torch.utils.data.Dataset`, a ``(inputs, labels)`` pair of
tensors or a :class:`~torch.utils.data.DataLoader`. In-memory tensor data sets (the package's
``ArrayDataset``) are batched by indexing, which is much faster than a ``DataLoader`` on small data.

Devices
    Training and evaluation run on the model's device; every batch is moved there. ``fit`` moves
    the model only when ``device=`` names a device; ``device=None`` (the default) keeps it where
    it is, so a model on the CPU trains on the CPU even when CUDA is available.

Modes
    ``fit`` trains in train mode and evaluates ``test_data`` in eval mode, and returns the model
    with every submodule in the mode it had when ``fit`` was called (also when an error is
    raised). A submodule the caller froze in eval mode inside a model in train mode (a frozen
    BatchNorm, say) stays in eval mode during training; a model handed over entirely in eval
    mode is switched to train mode as a whole for training. :func:`predict` and :func:`evaluate`
    run in eval mode and restore every submodule's mode.

Callbacks
    ``fit(callbacks=[...])`` calls each callable after every optimizer step with one
    :class:`TrainStep` (the step count, the epoch, the model, the batch, its loss and the
    optimizer), in train mode; a callback that evaluates the model restores its modes itself
    (:class:`stabilitylab.dynamics.SpectralMonitor` does). A callback that draws random numbers
    from torch's global generator changes the rest of the run: give it its own generator.

Seeds (where randomness enters and what controls it)
    * The model's initialization happens when the model is built, not in ``fit``: pass
      ``generator=`` to the builders of :mod:`stabilitylab.models` (or seed torch's global
      generator before building your own model).
    * ``fit(generator=g)`` draws two seeds from ``g``: one for a private generator that shuffles
      the training data every epoch, one for torch's global generator (CPU, and the model's CUDA
      device), which dropout, noise layers such as :class:`stabilitylab.smoothing.GaussianNoise`
      without their own generator, and augmentation use. The global generators are forked for
      the duration of the call (:func:`torch.random.fork_rng`): the caller's random state is the
      same after ``fit`` as before it. Equal generators give identical histories and parameters.
    * ``fit(generator=None)`` shuffles and drops out with torch's global generator, which then
      advances as usual (:func:`seed_everything` seeds it).
    * A ``DataLoader`` passed as data shuffles with its own sampler: seed it yourself.
"""

from __future__ import annotations

import functools
import inspect
import random
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm import tqdm

from stabilitylab._checks import as_tensor_pair as _as_tensors
from stabilitylab._checks import check_data as _check_data
from stabilitylab._checks import check_generator, check_int, check_number, check_positive, check_progress
from stabilitylab._devices import model_device, resolve_device
from stabilitylab._modes import eval_mode, preserved_modes

__all__ = ["History", "TrainStep", "fit", "evaluate", "predict", "seed_everything", "default_device", "batches"]

DataLike = Dataset | DataLoader | tuple[Tensor, Tensor]


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python's, NumPy's and torch's global generators; return a torch generator seeded too."""
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def default_device() -> torch.device:
    """CUDA when available, else the CPU (for callers that want the fastest device explicitly:
    ``fit(model, data, device=default_device())``; nothing in the package picks it by itself)."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _finite(x: Tensor, name: str) -> Tensor:
    """``x`` unchanged when it has no NaN/Inf entries (floating inputs only), else a ValueError naming ``name``."""
    if isinstance(x, Tensor) and x.is_floating_point() and x.device.type != "meta" and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name} contains NaN or infinite inputs")
    return x


def batches(
    data: DataLike,
    *,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Iterate over ``(inputs, labels)`` batches of a data set, a tensor pair or a loader.

    Batches stay on the device the data is on (the callers move them to the model's device). A
    ``DataLoader`` is iterated as it is (its own batch size and sampler).

    Args:
        data: a Dataset of ``(input, label)``, a DataLoader or an ``(inputs, labels)`` pair.
        batch_size: examples per batch, >= 1.
        shuffle: visit the examples in a random order, drawn with ``generator``.
        generator: a CPU ``torch.Generator`` for the order; None: torch's global generator.

    Raises:
        TypeError: data of another kind.
        ValueError: inputs and labels of different lengths, or an empty data set.
    """
    _check_data(data, "data")
    batch_size = check_int(batch_size, "batch_size")
    check_generator(generator)
    if isinstance(data, DataLoader):
        yield from data
        return
    tensors = _as_tensors(data)
    if tensors is not None:
        x, y = tensors
        order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            yield x[index], y[index]
        return
    yield from DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)


@dataclass
class History:
    """Per-epoch training curves: mean training loss and accuracy, and the same on the test data
    when it was given (else empty lists)."""

    loss: list[float] = field(default_factory=list)
    accuracy: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)

    def __getitem__(self, key: str) -> list[float]:
        return getattr(self, key)

    def to_dict(self) -> dict[str, list[float]]:
        return {k: list(v) for k, v in self.__dict__.items()}

    def __len__(self) -> int:
        return len(self.loss)


class TrainStep(NamedTuple):
    """What :func:`fit` hands every callback after each optimizer step."""

    #: optimizer steps taken so far in this call of ``fit`` (1 after the first step).
    step: int
    #: the epoch of the step, counted from 0.
    epoch: int
    #: the model being trained (in train mode; the parameters are those after the step).
    model: nn.Module
    #: the batch's inputs ``(B, *input_shape)``, on the model's device.
    x: Tensor
    #: the batch's labels ``(B,)``, on the model's device.
    y: Tensor
    #: the batch's loss ``loss_fn(model(x), y)`` before the step (without ``penalty``), a
    #: detached 0-dim tensor.
    loss: Tensor
    #: the optimizer (its ``param_groups`` hold the learning rate, momentum, weight decay).
    optimizer: torch.optim.Optimizer


def _check_callbacks(callbacks) -> list[Callable[[TrainStep], object]]:
    """``callbacks`` as a list: None is empty, one callable is a list of one."""
    if callbacks is None:
        return []
    if callable(callbacks):
        return [callbacks]
    if isinstance(callbacks, (str, bytes)) or not isinstance(callbacks, Sequence):
        raise TypeError(f"callbacks must be a sequence of callables or None, got {type(callbacks).__name__}")
    for item in callbacks:
        if not callable(item):
            raise TypeError(f"callbacks must hold callables (step) -> None, got {type(item).__name__}")
    return list(callbacks)


def _is_sam(opt) -> bool:
    return callable(getattr(opt, "first_step", None)) and callable(getattr(opt, "second_step", None))


def _optimizer(name, params, lr: float, weight_decay: float, momentum: float) -> torch.optim.Optimizer:
    if isinstance(name, str):
        key = name.lower()
        if key == "sgd":
            return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        if key == "adam":
            return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        if key == "adamw":
            return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
        raise ValueError(f"optimizer must be 'sgd', 'adam', 'adamw' or a factory, got {name!r}")
    if callable(name):
        return name(params)
    raise TypeError(f"optimizer must be a name or a callable(params) -> Optimizer, got {name!r}")


def _draw_seed(generator: torch.Generator) -> int:
    """A 63-bit seed drawn from ``generator`` (on its own device)."""
    return int(torch.randint(0, 2**63 - 1, (), generator=generator, device=generator.device))


def _seeded_global_rng(stack: ExitStack, seed: int, device: torch.device) -> None:
    """Fork torch's global generators (the CPU's, and ``device``'s when it is a CUDA device) for the
    rest of ``stack`` and seed them with ``seed``: the caller's state is restored on exit."""
    cuda = device.type == "cuda"
    index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    stack.enter_context(torch.random.fork_rng(devices=[index] if cuda else [], device_type="cuda"))
    torch.random.default_generator.manual_seed(seed)
    if cuda:
        with torch.cuda.device(index):
            torch.cuda.manual_seed(seed)


def _seed_alias(fn):
    """``seed=`` (an int or None, deprecated) keeps working as ``generator=torch.Generator().manual_seed(seed)``."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if "seed" in kwargs:
            if "generator" in kwargs:
                raise TypeError(f"{fn.__name__}() got both 'seed' (deprecated) and 'generator'; pass only 'generator'")
            warnings.warn(
                f"{fn.__name__}(): the argument 'seed' is deprecated, use 'generator' "
                "(generator=torch.Generator().manual_seed(seed))",
                DeprecationWarning,
                stacklevel=2,
            )
            seed = kwargs.pop("seed")
            if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
                raise TypeError(f"seed must be an int or None, got {seed!r}")
            kwargs["generator"] = None if seed is None else torch.Generator().manual_seed(seed)
        return fn(*args, **kwargs)

    wrapper.__signature__ = inspect.signature(fn)
    wrapper._renamed_kwargs = {"seed": "generator"}
    return wrapper


@_seed_alias
def fit(
    model: nn.Module,
    train_data: DataLike,
    *,
    epochs: int = 10,
    batch_size: int = 64,
    lr: float = 1e-3,
    optimizer: str | Callable = "adam",
    weight_decay: float = 0.0,
    momentum: float = 0.9,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    penalty: Callable[[nn.Module, Tensor, Tensor, Tensor], Tensor] | None = None,
    callbacks: Sequence[Callable[[TrainStep], object]] | None = None,
    test_data: DataLike | None = None,
    device: str | torch.device | None = None,
    generator: torch.Generator | None = None,
    progress: bool | None = None,
    desc: str = "training",
) -> History:
    """Train ``model`` in place with minibatch gradient descent.

    Each epoch visits the training data in a random order, takes one optimizer step per batch on
    ``loss_fn(model(x), y)`` (mean cross-entropy by default), and records the mean training loss
    and accuracy over the epoch (and, with ``test_data``, the test loss and accuracy in eval mode
    at the end of the epoch). See the module docstring for where randomness enters, which device
    the work runs on and which modes the model is in.

    Args:
        model: maps ``(N, *input_shape)`` to logits ``(N, num_classes)``.
        train_data: a Dataset of ``(input, label)``, a DataLoader, or a tensor pair.
        epochs, batch_size, lr, weight_decay, momentum: the usual meaning (momentum is SGD's).
        optimizer: "adam", "adamw", "sgd", or a callable ``params -> Optimizer``. An optimizer
            with ``first_step`` and ``second_step`` (:class:`stabilitylab.curvature.SAM`) gets
            two gradients per batch: at the weights, then at the perturbed weights.
        loss_fn: ``(logits, labels) -> scalar``; default mean cross-entropy.
        penalty: ``(model, x, y, loss) -> scalar`` added to the loss of every batch (a curvature
            regularizer of :mod:`stabilitylab.curvature`, say); the history records the loss
            without it.
        callbacks: callables called after every optimizer step, in order, each with one
            :class:`TrainStep` ``(step, epoch, model, x, y, loss, optimizer)``; ``step`` counts
            the steps of this call from 1 (a :class:`stabilitylab.dynamics.SpectralMonitor`,
            say). A single callable is accepted too. Their return values are ignored.
        test_data: evaluated after each epoch when given.
        device: None (default) trains the model where it is; a device (``"cuda"``, ...) moves the
            model there first (and it stays there). Batches are moved to the model's device.
        generator: a ``torch.Generator`` (any device) from which the shuffling and torch's global
            generator are seeded for the call (the caller's global state is left unchanged);
            None uses torch's global generator. ``seed=`` (an int) is a deprecated alias for
            ``generator=torch.Generator().manual_seed(seed)``.
        progress: a progress bar over epochs with the current loss and accuracy; None shows it
            unless the environment variable ``TQDM_DISABLE`` is set.
        desc: the progress bar's label.

    Returns:
        A :class:`History` of per-epoch losses and accuracies. The model is returned (in place)
        in the train/eval mode every submodule had when ``fit`` was called.

    Raises:
        TypeError: a model that is not an ``nn.Module``, data of another kind, a generator that
            is not a ``torch.Generator``, non-callable ``loss_fn``/``penalty``, ``callbacks``
            that are not callables.
        ValueError: non-positive ``epochs``, ``batch_size`` or ``lr``, negative ``weight_decay``
            or ``momentum``, an unknown optimizer name, empty or mismatched data, NaN or infinite
            inputs in a batch.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_data(train_data, "train_data")
    if test_data is not None:
        _check_data(test_data, "test_data")
    epochs = check_int(epochs, "epochs")
    batch_size = check_int(batch_size, "batch_size")
    lr = check_positive(lr, "lr")
    weight_decay = check_number(weight_decay, "weight_decay", minimum=0.0)
    momentum = check_number(momentum, "momentum", minimum=0.0)
    for name, value in (("loss_fn", loss_fn), ("penalty", penalty)):
        if value is not None and not callable(value):
            raise TypeError(f"{name} must be callable or None, got {type(value).__name__}")
    hooks = _check_callbacks(callbacks)
    if not isinstance(optimizer, str) and not callable(optimizer):
        raise TypeError(f"optimizer must be a name or a callable(params) -> Optimizer, got {optimizer!r}")
    if not isinstance(desc, str):
        raise TypeError(f"desc must be a str, got {type(desc).__name__}")
    device = resolve_device(device)
    generator = check_generator(generator)
    show = check_progress(progress)
    loss_fn = loss_fn or nn.functional.cross_entropy

    with ExitStack() as stack:
        stack.enter_context(preserved_modes(model))
        if device is not None:
            model.to(device)
        where = model_device(model)
        shuffle_generator = None
        if generator is not None:
            shuffle_generator = torch.Generator().manual_seed(_draw_seed(generator))
            _seeded_global_rng(stack, _draw_seed(generator), where)
        if not model.training:
            model.train()  # a model handed over in eval mode trains as a whole
        opt = _optimizer(optimizer, model.parameters(), lr, weight_decay, momentum)
        history = History()
        step = 0
        bar = stack.enter_context(tqdm(range(epochs), desc=desc, disable=not show, leave=False))
        for epoch in bar:
            total_loss, correct, count = 0.0, 0, 0
            for x, y in batches(train_data, batch_size=batch_size, shuffle=True, generator=shuffle_generator):
                x, y = _finite(x.to(where), "train_data"), y.to(where)
                logits = model(x)
                loss = loss_fn(logits, y)
                opt.zero_grad(set_to_none=True)
                (loss if penalty is None else loss + penalty(model, x, y, loss)).backward()
                if _is_sam(opt):  # a second gradient, at the perturbed weights
                    opt.first_step(zero_grad=True)
                    again = loss_fn(model(x), y)
                    (again if penalty is None else again + penalty(model, x, y, again)).backward()
                    opt.second_step(zero_grad=True)
                else:
                    opt.step()
                step += 1
                if hooks:
                    state = TrainStep(step, epoch, model, x, y, loss.detach(), opt)
                    for hook in hooks:
                        hook(state)
                total_loss += loss.item() * len(y)
                correct += (logits.argmax(1) == y).sum().item()
                count += len(y)
            history.loss.append(total_loss / count)
            history.accuracy.append(correct / count)
            postfix = {"loss": f"{history.loss[-1]:.3f}", "acc": f"{history.accuracy[-1]:.3f}"}
            if test_data is not None:
                metrics = evaluate(model, test_data, loss_fn=loss_fn)  # eval mode, then back
                history.test_loss.append(metrics["loss"])
                history.test_accuracy.append(metrics["accuracy"])
                postfix["test_acc"] = f"{metrics['accuracy']:.3f}"
            bar.set_postfix(postfix)
    return history


def _target_device(model: nn.Module, device) -> torch.device | None:
    """``device`` when given, else the model's (None for a model without parameters or buffers)."""
    device = resolve_device(device)
    if device is not None:
        return device
    if any(True for _ in (*model.parameters(), *model.buffers())):
        return model_device(model)
    return None


@torch.no_grad()
def predict(
    model: nn.Module,
    data: DataLike | Tensor,
    *,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> Tensor:
    """The model's logits on ``data``, in eval mode (every submodule's mode restored afterwards).

    Args:
        model: maps ``(N, *input_shape)`` to ``(N, C)``.
        data: an inputs tensor ``(N, *input_shape)``, a tensor pair, a Dataset or a DataLoader.
        batch_size: inputs per forward pass, >= 1.
        device: where the batches are sent; default the model's device (the model is not moved).

    Returns:
        The logits ``(N, C)``, on the CPU.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    batch_size = check_int(batch_size, "batch_size")
    where = _target_device(model, device)
    if isinstance(data, Tensor):
        if data.ndim < 1 or len(data) == 0:
            raise ValueError(f"data must be a non-empty batch (N, *input_shape), got shape {tuple(data.shape)}")
        data = (data, torch.zeros(len(data), dtype=torch.long))
    _check_data(data, "data")
    with eval_mode(model):
        outputs = [model(_finite(x if where is None else x.to(where), "data")).cpu()
                   for x, _ in batches(data, batch_size=batch_size)]
    return torch.cat(outputs)


@torch.no_grad()
def evaluate(
    model: nn.Module,
    data: DataLike,
    *,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` on ``data`` in eval mode (every submodule's mode restored).

    Args:
        model: maps ``(N, *input_shape)`` to ``(N, C)``.
        data: a Dataset of ``(input, label)``, a DataLoader or a tensor pair.
        loss_fn: ``(logits, labels) -> scalar`` (a mean over the batch); default cross-entropy.
        batch_size: examples per forward pass, >= 1.
        device: where the batches are sent; default the model's device (the model is not moved).

    Returns:
        ``{"loss": float, "accuracy": float}``; the loss is ``loss_fn`` averaged over examples.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_data(data, "data")
    batch_size = check_int(batch_size, "batch_size")
    if loss_fn is not None and not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable or None, got {type(loss_fn).__name__}")
    loss_fn = loss_fn or nn.functional.cross_entropy
    where = _target_device(model, device)
    total_loss, correct, count = 0.0, 0, 0
    with eval_mode(model):
        for x, y in batches(data, batch_size=batch_size):
            if where is not None:
                x, y = x.to(where), y.to(where)
            logits = model(_finite(x, "data"))
            total_loss += loss_fn(logits, y).item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
    return {"loss": total_loss / count, "accuracy": correct / count}
