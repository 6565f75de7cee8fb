"""stabilitylab: the stability of neural networks, computed and checked.

The package behind the StabilityLab book: Lipschitz bounds and spectral norms, 1-Lipschitz
layers and certificates, randomized smoothing, and curvature analysis, for PyTorch.

Modules (one per technique): ``spectral``, ``lipschitz``, ``layers``, ``losses``, ``certify``,
``attacks``, ``smoothing``, ``curvature``, ``dynamics``, ``frequency``, ``data``, ``models``, ``train``, ``timing``, ``topology`` and
``testing`` (helpers for tests of Lipschitz guarantees). ``plot`` (the book's figures; the
``plot`` extra) and ``book`` (the chapter runner; the ``book`` extra) are imported on first use,
so ``import stabilitylab`` loads neither matplotlib, seaborn nor pandas.

Conventions
-----------
Devices
    Work runs on the model's device and the data is moved there; nothing moves a model unless a
    ``device=`` argument says so (``train.fit(device=None)`` keeps the model where it is).
Modes
    A function that switches a model to eval (or train) mode restores every submodule's own mode
    afterwards, even on error.
Seeds
    Every random entry point takes ``generator=`` (a ``torch.Generator``); model builders too.
Bad input
    NaN or Inf in an input, or a wrong type or shape, is a ``ValueError``/``TypeError`` naming the
    argument, never a number.
Certified numbers
    Computed in float64 where rounding matters, with a documented relative safety margin.

Vocabulary (one name per concept; the old names still work for one release, with a
``DeprecationWarning``):

=================  ==========================================================  ===========================
name               meaning                                                     replaces
=================  ==========================================================  ===========================
``n_iter``         an iteration count (power, Gram, PGD, ascent, Lanczos ...)   ``n_steps``, ``max_iter``,
                                                                               ``steps``
``input_shape``    one input's shape, without the batch dimension              ``input_dim``
``input_size``     the spatial size ``(H, W)`` (or ``n`` for ``n x n``) of     ``image_size``
                   an image input
``generator``      the source of randomness: a ``torch.Generator``             ``seed``
``loss_fn``        a loss ``loss_fn(outputs, labels) -> scalar``
``closure``        a zero-argument function returning a scalar loss            ``loss_fn`` (curvature)
``upper``          a certified upper bound in a record                         ``bound``
``progress``       show a progress bar (``None``: unless ``TQDM_DISABLE`` is
                   set in the environment)
=================  ==========================================================  ===========================

Functions that can return more than one thing return a ``NamedTuple`` with named fields.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

from stabilitylab import (
    attacks,
    certify,
    curvature,
    data,
    dynamics,
    frequency,
    layers,
    lipschitz,
    losses,
    models,
    smoothing,
    spectral,
    timing,
    topology,
    train,
)
from stabilitylab.data import load_dataset
from stabilitylab.train import evaluate, fit, seed_everything

_LAZY = ("plot", "book", "testing")


def __getattr__(name: str):
    if name in _LAZY:
        module = importlib.import_module(f"stabilitylab.{name}")
        globals()[name] = module
        return module
    raise AttributeError(f"module 'stabilitylab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = [
    "__version__",
    "attacks",
    "book",
    "certify",
    "curvature",
    "data",
    "dynamics",
    "frequency",
    "layers",
    "lipschitz",
    "losses",
    "models",
    "plot",
    "smoothing",
    "spectral",
    "testing",
    "timing",
    "topology",
    "train",
    "load_dataset",
    "fit",
    "evaluate",
    "seed_everything",
]
