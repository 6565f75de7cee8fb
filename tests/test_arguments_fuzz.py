"""Every public function answers invalid arguments with a ValueError/TypeError that names them.

One valid call per public function lives in ``benchmarks/entry_points.py`` (the GPU check runs the
same calls). Here each argument of each call is replaced, one at a time, by values no function
should accept: an arbitrary object (a wrong type), NaN where a number is expected, and a copy of
a tensor argument holding a NaN. The error must be a ValueError or TypeError whose message names
the argument, never a silent number or an error from deep inside torch.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import entry_points  # noqa: E402

# the layer classes' constructors and inputs are tried in tests/test_layers_errors.py
CALLS = {call.name: call for call in entry_points.calls("cpu", "tiny") if "make" not in call.kwargs}


class _Opaque:
    """An object of no expected type."""

    def __repr__(self) -> str:
        return "<opaque>"


def _invalid_values(value):
    yield "object", _Opaque()
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        yield "nan", math.nan
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() > 0:
        poisoned = value.detach().clone()
        poisoned.view(-1)[0] = math.nan
        yield "nan-tensor", poisoned


def _cases():
    for name, call in CALLS.items():
        for arg, value in call.kwargs.items():
            if arg in call.no_fuzz:
                continue
            for kind, _ in _invalid_values(value):
                if kind == "nan-tensor" and arg in call.nan_passes:
                    continue
                yield pytest.param(name, arg, kind, id=f"{name}-{arg}-{kind}")


@pytest.mark.parametrize("name, arg, kind", list(_cases()))
def test_invalid_argument_raises_an_error_naming_it(name, arg, kind):
    call = CALLS[name]
    bad = dict(_invalid_values(call.kwargs[arg]))[kind]
    kwargs = dict(call.kwargs, **{arg: bad})
    with pytest.raises((ValueError, TypeError)) as info:
        call.fn(**kwargs)
    assert arg in str(info.value), f"{name}({arg}=<{kind}>) raised {info.type.__name__}: {info.value}"


def test_every_public_function_has_a_call():
    import inspect

    import stabilitylab

    missing = [
        f"{module}.{name}"
        for module in stabilitylab.__all__
        if module not in ("book", "plot") and hasattr(getattr(stabilitylab, module), "__all__")
        for name in getattr(stabilitylab, module).__all__
        if inspect.isfunction(getattr(getattr(stabilitylab, module), name)) and f"{module}.{name}" not in {call.split("[")[0] for call in CALLS}
    ]
    assert not missing, f"add a valid call to benchmarks/entry_points.py for {missing}"


@pytest.mark.parametrize("name", list(CALLS))
def test_the_valid_call_runs(name):
    call = CALLS[name]
    call.run()
