"""One training loop for every chapter: seeded, device-agnostic, with a progress bar and a history.

``fit`` takes the data as a :class:`~torch.utils.data.Dataset`, a ``(inputs, labels)`` pair of
tensors or a :class:`~torch.utils.data.DataLoader`. In-memory tensor data sets (the package's
``ArrayDataset``) are batched by indexing, which is much faster than a ``DataLoader`` on small data.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, TensorDataset
from tqdm import tqdm

__all__ = ["History", "fit", "evaluate", "predict", "seed_everything", "default_device", "batches"]

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
    """CUDA when available, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _model_device(model: nn.Module) -> torch.device:
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


def _as_tensors(data: DataLike) -> tuple[Tensor, Tensor] | None:
    if isinstance(data, tuple) and len(data) == 2 and all(isinstance(t, Tensor) for t in data):
        return data
    if isinstance(data, TensorDataset) and len(data.tensors) == 2:
        return data.tensors[0], data.tensors[1]
    return None


def batches(
    data: DataLike,
    *,
    batch_size: int,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
) -> Iterator[tuple[Tensor, Tensor]]:
    """Iterate over ``(inputs, labels)`` batches of a data set, a tensor pair or a loader.

    Raises:
        TypeError: data of another kind.
        ValueError: inputs and labels of different lengths, or an empty data set.
    """
    if isinstance(data, DataLoader):
        yield from data
        return
    tensors = _as_tensors(data)
    if tensors is not None:
        x, y = tensors
        if len(x) != len(y):
            raise ValueError(f"data: {len(x)} inputs but {len(y)} labels")
        if len(x) == 0:
            raise ValueError("data is empty")
        order = torch.randperm(len(x), generator=generator) if shuffle else torch.arange(len(x))
        for start in range(0, len(x), batch_size):
            index = order[start : start + batch_size]
            yield x[index], y[index]
        return
    if isinstance(data, Dataset):
        if len(data) == 0:  # type: ignore[arg-type]
            raise ValueError("data is empty")
        yield from DataLoader(data, batch_size=batch_size, shuffle=shuffle, generator=generator)
        return
    raise TypeError(
        f"data must be a Dataset, a DataLoader or an (inputs, labels) pair of tensors, got {type(data).__name__}"
    )


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


def _check_positive(name: str, value, kind=int) -> None:
    if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
        raise ValueError(f"{name} must be a positive {kind.__name__}, got {value!r}")


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
    test_data: DataLike | None = None,
    device: str | torch.device | None = None,
    seed: int | None = 0,
    progress: bool = True,
    desc: str = "training",
) -> History:
    """Train ``model`` in place with minibatch gradient descent.

    Each epoch shuffles the data with a generator seeded from ``seed``, takes one optimizer
    step per batch on ``loss_fn(model(x), y)`` (mean cross-entropy by default), and records the
    mean training loss and accuracy over the epoch (and, with ``test_data``, the test loss and
    accuracy in eval mode at the end of the epoch).

    Args:
        model: maps ``(N, *input_shape)`` to logits ``(N, num_classes)``; moved to ``device``.
        train_data: a Dataset of ``(input, label)``, a DataLoader, or a tensor pair.
        epochs, batch_size, lr, weight_decay, momentum: the usual meaning (momentum is SGD's).
        optimizer: "adam", "adamw", "sgd", or a callable ``params -> Optimizer``. An optimizer
            with ``first_step`` and ``second_step`` (:class:`stabilitylab.curvature.SAM`) gets
            two gradients per batch: at the weights, then at the perturbed weights.
        loss_fn: ``(logits, labels) -> scalar``; default mean cross-entropy.
        penalty: ``(model, x, y, loss) -> scalar`` added to the loss of every batch (a curvature
            regularizer of :mod:`stabilitylab.curvature`, say); the history records the loss
            without it.
        test_data: evaluated after each epoch when given.
        device: default: CUDA when available, else the CPU.
        seed: seeds the global torch generator (dropout, augmentation) and the shuffling; None
            leaves both as they are.
        progress: show a progress bar over epochs with the current loss and accuracy.

    Returns:
        A :class:`History` of per-epoch losses and accuracies.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be an nn.Module, got {type(model).__name__}")
    _check_positive("epochs", epochs)
    _check_positive("batch_size", batch_size)
    if not (isinstance(lr, (int, float)) and lr > 0):
        raise ValueError(f"lr must be a positive number, got {lr!r}")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")
    device = torch.device(device) if device is not None else default_device()
    loss_fn = loss_fn or nn.functional.cross_entropy
    generator = None
    if seed is not None:
        torch.manual_seed(seed)
        generator = torch.Generator().manual_seed(seed)
    model.to(device)
    opt = _optimizer(optimizer, model.parameters(), lr, weight_decay, momentum)
    history = History()
    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False)
    for _ in bar:
        model.train()
        total_loss, correct, count = 0.0, 0, 0
        for x, y in batches(train_data, batch_size=batch_size, shuffle=True, generator=generator):
            x, y = x.to(device), y.to(device)
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
            total_loss += loss.item() * len(y)
            correct += (logits.argmax(1) == y).sum().item()
            count += len(y)
        history.loss.append(total_loss / count)
        history.accuracy.append(correct / count)
        postfix = {"loss": f"{history.loss[-1]:.3f}", "acc": f"{history.accuracy[-1]:.3f}"}
        if test_data is not None:
            metrics = evaluate(model, test_data, loss_fn=loss_fn, device=device)
            history.test_loss.append(metrics["loss"])
            history.test_accuracy.append(metrics["accuracy"])
            postfix["test_acc"] = f"{metrics['accuracy']:.3f}"
        bar.set_postfix(postfix)
    model.eval()
    return history


@torch.no_grad()
def predict(
    model: nn.Module,
    data: DataLike | Tensor,
    *,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> Tensor:
    """The model's logits on ``data`` (inputs tensor, tensor pair, Dataset or DataLoader), in
    eval mode, batched, on ``device`` (default: the model's); returned on the CPU, shape (N, C)."""
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    if isinstance(data, Tensor):
        data = (data, torch.zeros(len(data), dtype=torch.long))
    outputs = [model(x.to(device)).cpu() for x, _ in batches(data, batch_size=batch_size)]
    model.train(was_training)
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
    """Mean loss and accuracy of ``model`` on ``data`` in eval mode.

    Returns:
        ``{"loss": float, "accuracy": float}``; the loss is ``loss_fn`` (default mean
        cross-entropy) averaged over examples.
    """
    loss_fn = loss_fn or nn.functional.cross_entropy
    device = torch.device(device) if device is not None else _model_device(model)
    was_training = model.training
    model.eval()
    total_loss, correct, count = 0.0, 0, 0
    for x, y in batches(data, batch_size=batch_size):
        x, y = x.to(device), y.to(device)
        logits = model(x)
        total_loss += loss_fn(logits, y).item() * len(y)
        correct += (logits.argmax(1) == y).sum().item()
        count += len(y)
    model.train(was_training)
    return {"loss": total_loss / count, "accuracy": correct / count}
