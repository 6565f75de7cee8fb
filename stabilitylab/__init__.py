"""stabilitylab: the stability of neural networks, computed and checked.

The package behind the StabilityLab book: Lipschitz bounds and spectral norms, 1-Lipschitz
layers and certificates, randomized smoothing, and curvature analysis, for PyTorch.

Modules (one per technique): ``data``, ``models``, ``train``, ``attacks``, ``curvature``,
``spectral``, ``lipschitz``, ``layers``, ``losses``, ``certify``, ``smoothing``, ``plot``, ``timing`` and ``book`` (the chapter runner).
"""

__version__ = "0.1.0"

from stabilitylab import (
    attacks,
    book,
    certify,
    curvature,
    data,
    layers,
    lipschitz,
    losses,
    models,
    plot,
    smoothing,
    spectral,
    timing,
    train,
)
from stabilitylab.data import load_dataset
from stabilitylab.train import evaluate, fit, seed_everything

__all__ = [
    "__version__",
    "attacks",
    "book",
    "certify",
    "curvature",
    "data",
    "layers",
    "lipschitz",
    "losses",
    "models",
    "plot",
    "smoothing",
    "spectral",
    "timing",
    "train",
    "load_dataset",
    "fit",
    "evaluate",
    "seed_everything",
]
