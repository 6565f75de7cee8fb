"""1-Lipschitz layers: every layer here is 1-Lipschitz in L2 whatever its parameter values.

Each layer carries ``lipschitz_constant``, its certified Lipschitz constant, which
:mod:`stabilitylab.lipschitz` reads when it bounds a network.
"""

from stabilitylab.layers.activations import GroupSort, MaxMin
from stabilitylab.layers.dense import SpectralLinear

__all__ = ["GroupSort", "MaxMin", "SpectralLinear"]
