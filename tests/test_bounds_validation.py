"""Invalid arguments of every public function of lipschitz, spectral and certify (issue 12, item 15).

Each case calls a function with valid arguments except one, and asserts a ValueError or
TypeError whose message names that argument (never an IndexError, a RuntimeError from torch, or
a number).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from stabilitylab import certify, lipschitz, spectral

NAN = math.nan


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def _x():
    return torch.randn(5, 3, generator=torch.Generator().manual_seed(0))


def _y():
    return torch.tensor([0, 1, 0, 1, 1])


def _kernel():
    return torch.randn(2, 2, 3, 3, generator=torch.Generator().manual_seed(0))


def _operator():
    W = torch.randn(4, 3, generator=torch.Generator().manual_seed(0))
    return {"W": lambda v: W @ v, "adjoint": lambda u: W.T @ u, "input_shape": (3,)}


BAD_INTS = [-1, 1.5, "3", True, None]
BAD_TOLS = [0.0, 1.0, -0.1, NAN, "0.1", True]
BAD_SHAPES = [(-1, 3), (0,), "abc", (2.5,), 0, -3, (), [3, None]]
BAD_POINTS = [torch.arange(6).reshape(2, 3), (0, 3), 3, torch.full((2, 3), NAN), torch.zeros(0, 3), "x"]
BAD_GENERATORS = [0, "seed", torch.randn(2)]
BAD_SIZES = [0, -2, (3,), (3, 0), "8", 2.5, (4, 4, 4)]
BAD_NORMS = ["l1", 2, None]

# (function, valid keyword arguments (a zero-argument builder), argument, bad values)
CASES = [
    # ------------------------------------------------------------------ lipschitz
    (lipschitz.activation_constant, lambda: {"module": nn.ReLU()}, "module", [3, nn.Linear(2, 2), nn.ELU(alpha=NAN)]),
    (lipschitz.layer_bounds, lambda: {"model": _model(), "input_shape": (3,)}, "model", [3, "net", None]),
    (lipschitz.layer_bounds, lambda: {"model": _model(), "input_shape": (3,)}, "input_shape", BAD_SHAPES + [(4,)]),
    (lipschitz.layer_bounds, lambda: {"model": _model(), "input_shape": (3,)}, "tol", BAD_TOLS),
    (lipschitz.upper_bound, lambda: {"model": _model(), "input_shape": (3,)}, "model", [3, None]),
    (lipschitz.upper_bound, lambda: {"model": _model(), "input_shape": (3,)}, "input_shape", BAD_SHAPES),
    (lipschitz.upper_bound, lambda: {"model": _model(), "input_shape": (3,)}, "tol", BAD_TOLS),
    (lipschitz.pairwise_logit_bound, lambda: {"model": _model(), "input_shape": (3,)}, "model",
     [3, nn.Sequential(nn.Linear(3, 2), nn.ReLU()), nn.Sequential()]),
    (lipschitz.pairwise_logit_bound, lambda: {"model": _model(), "input_shape": (3,)}, "input_shape", BAD_SHAPES),
    (lipschitz.pairwise_logit_bound, lambda: {"model": _model(), "input_shape": (3,)}, "tol", BAD_TOLS),
    (lipschitz.pairwise_row_distances, lambda: {"weight": torch.randn(3, 2)}, "weight",
     [torch.ones(3, dtype=torch.long), torch.randn(3), torch.randn(2, 2, 2), torch.full((2, 2), NAN), [[1.0]], 3]),
    (lipschitz.linear_head, lambda: {"model": _model()}, "model", [3, nn.Sequential(nn.ReLU()), nn.Sequential()]),
    (lipschitz.lower_bound, lambda: {"model": _model(), "x": _x()}, "model", [3, None]),
    (lipschitz.lower_bound, lambda: {"model": _model(), "x": _x()}, "x", BAD_POINTS + [torch.randn(2, 4)]),
    (lipschitz.lower_bound, lambda: {"model": _model(), "x": _x()}, "n_iter", [-1, 1.5, "3", True, None]),
    (lipschitz.lower_bound, lambda: {"model": _model(), "x": _x()}, "n_starts", [0, 1.5, "3", True]),
    (lipschitz.lower_bound, lambda: {"model": _model(), "x": _x()}, "step_size", [0.0, -1.0, NAN, "1", True]),
    (lipschitz.lower_bound, lambda: {"model": _model(), "x": _x()}, "generator", BAD_GENERATORS),
    (lipschitz.jacobian_singular_values, lambda: {"fn": _model(), "x": _x()[0]}, "fn", [3, None]),
    (lipschitz.jacobian_singular_values, lambda: {"fn": _model(), "x": _x()[0]}, "x",
     [torch.arange(3), (0, 3), 3, torch.tensor(1.0), torch.full((3,), NAN), torch.zeros(0), torch.randn(4),
      torch.randn(2, 2)]),
    (lipschitz.backward_gradient_norms, lambda: {"blocks": _model(), "x": _x()}, "blocks", [3, nn.Sequential(), nn.Linear(3, 3)]),
    (lipschitz.backward_gradient_norms, lambda: {"blocks": _model(), "x": _x()}, "x",
     BAD_POINTS + [torch.randn(3), torch.randn(2, 3, 1), torch.randn(2, 4)]),
    (lipschitz.backward_gradient_norms, lambda: {"blocks": _model(), "x": _x()}, "generator", BAD_GENERATORS),
    (lipschitz.report, lambda: {"model": _model(), "x": _x()}, "model", [3, None]),
    (lipschitz.report, lambda: {"model": _model(), "x": _x()}, "x", BAD_POINTS + [torch.randn(3)]),
    (lipschitz.report, lambda: {"model": _model(), "x": _x()}, "input_shape", BAD_SHAPES + [(4,), (3, 1)]),
    (lipschitz.report, lambda: {"model": _model(), "x": _x()}, "n_iter", BAD_INTS),
    (lipschitz.report, lambda: {"model": _model(), "x": _x()}, "tol", BAD_TOLS),
    (lipschitz.report, lambda: {"model": _model(), "x": _x()}, "generator", BAD_GENERATORS),
    # ------------------------------------------------------------------ spectral
    (spectral.power_iteration, lambda: {"W": torch.randn(4, 3)}, "W",
     [torch.ones(3, 3, dtype=torch.long), torch.randn(3), torch.full((2, 2), NAN), torch.zeros(0, 3), 3]),
    (spectral.power_iteration, lambda: {"W": torch.randn(4, 3)}, "n_iter", [0, -1, 1.5, "3", True, None]),
    (spectral.power_iteration, lambda: {"W": torch.randn(4, 3)}, "tol", BAD_TOLS[:-2] + [True]),
    (spectral.power_iteration, lambda: {"W": torch.randn(4, 3)}, "generator", BAD_GENERATORS),
    (spectral.power_iteration, lambda: {"W": torch.randn(4, 3)}, "return_vector", [1, "yes", None]),
    (spectral.power_iteration, _operator, "input_shape", [(-1, 3), (0,), "abc", (2.5,), None, -3]),
    (spectral.power_iteration, _operator, "adjoint", [None, 3]),
    (spectral.power_iteration, _operator, "dtype", ["float32", 3]),
    (spectral.gram_iteration, lambda: {"W": torch.randn(4, 3)}, "W",
     [torch.ones(3, 3, dtype=torch.long), torch.randn(3), torch.full((2, 2), NAN), 3]),
    (spectral.gram_iteration, lambda: {"W": torch.randn(4, 3)}, "n_iter", [-1, 1.5, "3", True]),
    (spectral.gram_iteration, lambda: {"W": torch.randn(4, 3)}, "tol", [0.0, 1.0, -0.1, NAN, "0.1", True]),
    (spectral.gram_iteration, lambda: {"W": torch.randn(4, 3)}, "return_lower", [1, "yes", None]),
    (spectral.conv_spectral_norm, lambda: {"kernel": _kernel(), "input_size": 8}, "kernel",
     [torch.randn(2, 3, 3), torch.ones(1, 1, 3, 3, dtype=torch.long), torch.full((1, 1, 3, 3), NAN), 3]),
    (spectral.conv_spectral_norm, lambda: {"kernel": _kernel(), "input_size": 8}, "input_size", BAD_SIZES + [2]),
    (spectral.conv_spectral_norm, lambda: {"kernel": _kernel(), "input_size": 8}, "padding", ["same", -1, (1, 2, 3), 5]),
    (spectral.conv_spectral_norm, lambda: {"kernel": _kernel(), "input_size": 8}, "stride", [0, -1, 1.5, (1, 0), "2", 3]),
    (spectral.conv_spectral_norm, lambda: {"kernel": _kernel(), "input_size": 8}, "method", ["svd", 3, None]),
    (spectral.conv_spectral_norm, lambda: {"kernel": _kernel(), "input_size": 8}, "n_iter", [-1, 1.5, "3", True]),
    (spectral.conv_spectral_norm, lambda: {"kernel": _kernel(), "input_size": 8}, "tol", [0.0, 1.0, NAN, "0.1"]),
    (spectral.conv_spectral_norm, lambda: {"kernel": _kernel(), "input_size": 8, "method": "power"}, "generator",
     BAD_GENERATORS),
    (spectral.conv_operator_matrix, lambda: {"kernel": _kernel(), "input_size": 5}, "kernel", [torch.randn(2, 3, 3), 3]),
    (spectral.conv_operator_matrix, lambda: {"kernel": _kernel(), "input_size": 5}, "input_size", BAD_SIZES + [200]),
    (spectral.conv_operator_matrix, lambda: {"kernel": _kernel(), "input_size": 5}, "padding", ["same", -1, 5]),
    (spectral.conv_operator_matrix, lambda: {"kernel": _kernel(), "input_size": 5}, "stride", [0, 1.5, "2"]),
    (spectral.conv_transfer_matrices, lambda: {"kernel": _kernel(), "input_size": 8}, "kernel", [torch.randn(2, 3, 3), 3]),
    (spectral.conv_transfer_matrices, lambda: {"kernel": _kernel(), "input_size": 8}, "input_size", BAD_SIZES + [2]),
    (spectral.conv_transfer_matrices, lambda: {"kernel": _kernel(), "input_size": 8}, "stride", [0, 1.5, "2", 3]),
    (spectral.conv2d_norm, lambda: {"kernel": _kernel(), "input_size": 6}, "kernel", [torch.randn(2, 3, 3), 3]),
    (spectral.conv2d_norm, lambda: {"kernel": _kernel(), "input_size": 6}, "input_size", BAD_SIZES + [1]),
    (spectral.conv2d_norm, lambda: {"kernel": _kernel(), "input_size": 6}, "padding",
     ["full", -1, (1, 2, 3), ((1, -1), (0, 0)), 1.5]),
    (spectral.conv2d_norm, lambda: {"kernel": _kernel(), "input_size": 6, "padding": 1}, "padding_mode",
     ["mirror", 3, None]),
    (spectral.conv2d_norm, lambda: {"kernel": _kernel(), "input_size": 6}, "stride", [0, 1.5, "2"]),
    (spectral.conv2d_norm, lambda: {"kernel": _kernel(), "input_size": 6}, "dilation", [0, 1.5, "2"]),
    (spectral.conv2d_norm, lambda: {"kernel": _kernel(), "input_size": 6}, "groups", [0, 1.5, 3, "2", True]),
    (spectral.conv2d_norm, lambda: {"kernel": _kernel(), "input_size": 6}, "tol", BAD_TOLS),
    (spectral.conv2d_norm, lambda: {"kernel": _kernel(), "input_size": 6}, "dense", [1, "yes", None]),
    (spectral.conv2d_module_norm, lambda: {"conv": nn.Conv2d(2, 2, 3), "input_size": 6}, "conv",
     [nn.Linear(2, 2), _kernel(), 3]),
    (spectral.conv2d_module_norm, lambda: {"conv": nn.Conv2d(2, 2, 3), "input_size": 6}, "input_size", BAD_SIZES + [2]),
    (spectral.conv2d_module_norm, lambda: {"conv": nn.Conv2d(2, 2, 3), "input_size": 6}, "tol", BAD_TOLS),
    (spectral.conv2d_module_norm, lambda: {"conv": nn.Conv2d(2, 2, 3), "input_size": 6}, "dtype",
     [torch.long, "float64", 3]),
    (spectral.kernel_autocorrelation, lambda: {"kernel": _kernel()}, "kernel",
     [torch.randn(2, 3, 3), torch.ones(1, 1, 2, 2, dtype=torch.long), torch.full((1, 1, 2, 2), NAN), 3]),
    (spectral.kernel_gram_bound, lambda: {"kernel": _kernel()}, "kernel",
     [torch.randn(2, 3, 3), torch.ones(1, 1, 2, 2, dtype=torch.long), torch.full((1, 1, 2, 2), NAN), 3]),
    (spectral.kernel_gram_bound, lambda: {"kernel": _kernel()}, "n_iter", [0, -1, 1.5, "2", None]),
    (spectral.kernel_gram_bound, lambda: {"kernel": _kernel()}, "stride", [0, (1, 0), 1.5, "1"]),
    # ------------------------------------------------------------------ certify
    (certify.certified_radius, lambda: {"logits": torch.randn(5, 2), "labels": _y()}, "logits",
     [torch.ones(5, 2, dtype=torch.long), torch.randn(5), torch.randn(5, 1), torch.full((5, 2), NAN), 3]),
    (certify.certified_radius, lambda: {"logits": torch.randn(5, 2), "labels": _y()}, "labels",
     [_y().float(), _y()[:3], _y() + 5, _y() - 2, [0, 1, 0, 1, 1], _y()[:, None]]),
    (certify.certified_radius, lambda: {"logits": torch.randn(5, 2), "labels": _y()}, "lipschitz",
     [0.0, -1.0, NAN, math.inf, "1", torch.ones(2), torch.ones(3, 3), -torch.ones(2, 2)]),
    (certify.certified_radius, lambda: {"logits": torch.randn(5, 2), "labels": _y()}, "norm", BAD_NORMS),
    (certify.certified_radius, lambda: {"logits": torch.randn(5, 2), "labels": _y(), "norm": "linf"},
     "input_shape", BAD_SHAPES + [None]),
    (certify.certified_radius, lambda: {"logits": torch.randn(5, 2), "labels": _y()}, "last_layer_weight",
     [torch.randn(3, 4), torch.randn(2), torch.full((2, 3), NAN), torch.ones(2, 3, dtype=torch.long), 3]),
    (certify.certified_radii, lambda: {"model": _model(), "data": (_x(), _y())}, "model", [3, None]),
    (certify.certified_radii, lambda: {"model": _model(), "data": (_x(), _y())}, "data",
     [3, "data", (_x(), _y()[:2]), (_x().long(), _y()), (torch.full((5, 3), NAN), _y())]),
    (certify.certified_radii, lambda: {"model": _model(), "data": (_x(), _y())}, "lipschitz", [0.0, NAN, "1"]),
    (certify.certified_radii, lambda: {"model": _model(), "data": (_x(), _y())}, "norm", BAD_NORMS),
    (certify.certified_radii, lambda: {"model": _model(), "data": (_x(), _y())}, "last_layer",
     [1, "yes", None]),
    (certify.certified_radii, lambda: {"model": nn.Sequential(nn.Linear(3, 2), nn.ReLU()), "data": (_x(), _y()),
                                       "last_layer": True}, "last_layer", [True]),
    (certify.certified_radii, lambda: {"model": _model(), "data": (_x(), _y())}, "batch_size", [0, -1, 1.5, "8", True]),
    (certify.certified_radii, lambda: {"model": _model(), "data": (_x(), _y())}, "device", [3, "nodevice"]),
    (certify.certified_radii, lambda: {"model": _model(), "data": (_x(), _y())}, "float64", [1, "yes", None]),
    (certify.certified_radii, lambda: {"model": _model(), "data": (_x(), _y())}, "progress", [1, "yes"]),
    (certify.certified_accuracy, lambda: {"model": _model(), "data": (_x(), _y()), "eps": 0.1}, "eps",
     [-0.1, NAN, "0.1", torch.ones(2, 2), [0.1, -1.0]]),
    (certify.certified_accuracy_curve, lambda: {"model": _model(), "data": (_x(), _y()), "eps_values": [0.1]},
     "eps_values", [0.1, torch.tensor(0.1), [0.1, -1.0], [NAN], torch.ones(2, 2), "abc"]),
    (certify.accuracy_curve, lambda: {"radii": torch.ones(3), "eps_grid": [0.1]}, "radii",
     [torch.tensor([-1.0]), torch.ones(0), torch.ones(2, 2), torch.tensor([NAN]), [1.0]]),
    (certify.accuracy_curve, lambda: {"radii": torch.ones(3), "eps_grid": [0.1]}, "eps", [[-1.0], [NAN], "abc"]),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "model", [3, None]),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "x",
     BAD_POINTS + [torch.tensor(1.0)]),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "y",
     [[0, 1], _y()[:3], _y().float(), _y() + 5, 3]),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "lipschitz", [0.0, -1.0, NAN]),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "norm", BAD_NORMS),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "n_iter", [0, 1.5, "3", True]),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "restarts", [-1, 1.5, "3", True]),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "rtol", [1.0, -0.1, NAN, "0.1"]),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "bounds", [3, (0.0,), "box"]),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "generator", BAD_GENERATORS),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "last_layer", [1, "yes"]),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "float64", [1, "yes"]),
    (certify.check_soundness, lambda: {"model": _model(), "x": _x(), "y": _y()}, "progress", [1, "yes"]),
]

PARAMS = [
    pytest.param(fn, build, name, bad, id=f"{fn.__module__.split('.')[-1]}.{fn.__name__}-{name}-{i}")
    for fn, build, name, bads in CASES
    for i, bad in enumerate(bads)
]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("fn, build, name, bad", PARAMS)
def test_invalid_argument_raises_an_error_naming_it(fn, build, name, bad):
    kwargs = build()
    kwargs[name] = bad
    with pytest.raises((ValueError, TypeError)) as info:
        fn(**kwargs)
    assert name in str(info.value), f"{type(info.value).__name__}: {info.value}"


def test_every_public_function_has_cases():
    """The fuzz table covers every public function of the three modules."""
    covered = {(fn.__module__, fn.__name__) for fn, *_ in CASES}
    for module in (lipschitz, spectral, certify):
        for public in module.__all__:
            obj = getattr(module, public)
            if callable(obj) and not isinstance(obj, type) and public.islower():
                assert (module.__name__, obj.__name__) in covered, f"{module.__name__}.{public}"


@pytest.mark.parametrize("bad", [(0, 3), [[0.0, 1.0, 2.0]], 3])
def test_check_soundness_with_a_tuple_x_is_a_type_error_naming_x(bad):
    """Issue 12, item 15: it was an IndexError."""
    with pytest.raises(TypeError, match="x"):
        certify.check_soundness(_model(), bad, _y())
