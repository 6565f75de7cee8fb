"""Bad arguments and bad inputs: a ValueError or TypeError naming the argument (issue 12, item 15).

Every constructor of :mod:`stabilitylab.layers` is called with invalid values of each of its
arguments, and every layer with inputs of the wrong shape (dimensions, channel or feature
count, image sizes its geometry does not allow); the error must be a ValueError/TypeError whose
message names the argument (``x`` for inputs) and, for inputs, the expected size.
"""

import re
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from stabilitylab import layers

BAD_COUNTS = [0, -1, 2.5, "3", True, None, torch.tensor(3)]
BAD_PAIRS = [0, -1, (3,), (3, 0), (3, 3, 3), "3", 1.5, (2.0, 2), None]
BAD_FLAGS = [None, 1, "yes"]

# class -> (valid keyword arguments, {argument: bad values})
CONSTRUCTORS = {
    layers.GroupSort: ({"group_size": 2}, {"group_size": [1, 0, -2, 2.0, "2", True, None]}),
    layers.Householder: ({"channels": 4, "group_size": 2}, {
        "channels": BAD_COUNTS + [5], "group_size": [1, 0, 2.5, None, True]}),
    layers.SpectralLinear: ({"in_features": 3, "out_features": 2}, {
        "in_features": BAD_COUNTS, "out_features": BAD_COUNTS, "bias": BAD_FLAGS,
        "n_iter": [0, -1, 1.5, None, "6", True]}),
    layers.BjorckLinear: ({"in_features": 3, "out_features": 2}, {
        "in_features": BAD_COUNTS, "out_features": BAD_COUNTS, "bias": BAD_FLAGS,
        "n_iter": [-1, 1.5, None], "order": [0, -1, 1.5, None], "gram_iter": [0, -1, 2.5, None]}),
    layers.SpectralConv2d: ({"in_channels": 2, "out_channels": 3, "kernel_size": 3}, {
        "in_channels": BAD_COUNTS, "out_channels": BAD_COUNTS, "kernel_size": BAD_PAIRS,
        "stride": BAD_PAIRS, "padding": [-1, 3, (1, 5), "same", 1.5], "bias": BAD_FLAGS,
        "padding_mode": ["reflect", None, 0], "input_size": BAD_PAIRS[:-1], "n_iter": [0, -1, 1.5, None],
        "tol": [0, 1, 2, -0.1, float("nan"), "0.1"]}),
    layers.AOLLinear: ({"in_features": 3, "out_features": 2}, {
        "in_features": BAD_COUNTS, "out_features": BAD_COUNTS, "bias": BAD_FLAGS}),
    layers.AOLConv2d: ({"in_channels": 2, "out_channels": 3, "kernel_size": 3}, {
        "in_channels": BAD_COUNTS, "out_channels": BAD_COUNTS, "kernel_size": BAD_PAIRS,
        "stride": BAD_PAIRS, "padding": [-1, (1, -1), "same", 1.5], "bias": BAD_FLAGS,
        "padding_mode": ["reflect", None]}),
    layers.SLLLinear: ({"in_features": 3}, {
        "in_features": BAD_COUNTS, "out_features": [4, 0, 2.5, True], "inner_features": BAD_COUNTS[:-2],
        "bias": BAD_FLAGS}),
    layers.CPLLinear: ({"in_features": 3}, {
        "in_features": BAD_COUNTS, "out_features": [4, 0, 2.5, True], "inner_features": BAD_COUNTS[:-2],
        "bias": BAD_FLAGS, "n_iter": [0, -1, 1.5, None]}),
    layers.SLLConv2d: ({"in_channels": 2}, {
        "in_channels": BAD_COUNTS, "out_channels": [3, 0, 2.5], "kernel_size": BAD_PAIRS + [2, (3, 4)],
        "stride": BAD_PAIRS + [2], "padding": [0, 2, -1, "same"], "inner_channels": BAD_COUNTS[:-2],
        "bias": BAD_FLAGS, "padding_mode": ["reflect", None]}),
    layers.CPLConv2d: ({"in_channels": 2}, {
        "in_channels": BAD_COUNTS, "out_channels": [3, 0, 2.5], "kernel_size": BAD_PAIRS + [2],
        "stride": BAD_PAIRS + [2], "padding": [0, 2, -1], "inner_channels": BAD_COUNTS[:-2],
        "bias": BAD_FLAGS, "padding_mode": ["reflect", None], "input_size": BAD_PAIRS[:-1],
        "n_iter": [0, -1, 1.5, None], "tol": [0, 2, float("nan")]}),
    layers.CayleyLinear: ({"in_features": 3, "out_features": 2}, {
        "in_features": BAD_COUNTS, "out_features": BAD_COUNTS, "bias": BAD_FLAGS}),
    layers.BROLinear: ({"in_features": 3, "out_features": 2}, {
        "in_features": BAD_COUNTS, "out_features": BAD_COUNTS, "bias": BAD_FLAGS,
        "rank": [0, -1, 4, 1.5, "1", True], "eps": [0, -1.0, float("nan"), float("inf"), "1e-6", True]}),
    layers.CayleyConv2d: ({"in_channels": 2, "out_channels": 2, "kernel_size": 3}, {
        "in_channels": BAD_COUNTS, "out_channels": BAD_COUNTS, "kernel_size": BAD_PAIRS,
        "stride": BAD_COUNTS, "padding": ["zeros", 1, None], "bias": BAD_FLAGS}),
    layers.BROConv2d: ({"in_channels": 2, "out_channels": 2, "kernel_size": 3}, {
        "in_channels": BAD_COUNTS, "out_channels": BAD_COUNTS, "kernel_size": BAD_PAIRS,
        "stride": BAD_COUNTS, "padding": ["zeros", 1, None], "bias": BAD_FLAGS,
        "rank": [0, 3, 1.5], "eps": [0, -1.0, float("nan")]}),
    layers.SOCConv2d: ({"in_channels": 2, "out_channels": 2, "kernel_size": 3}, {
        "in_channels": BAD_COUNTS, "out_channels": BAD_COUNTS, "kernel_size": BAD_PAIRS + [2, (3, 2)],
        "stride": BAD_COUNTS, "padding": ["reflect", 0, 2, None, True], "bias": BAD_FLAGS,
        "n_terms": [0, -1, 2.5, None], "max_norm": [0, -1.0, 8.5, float("nan"), float("inf"), "1", True, None],
        "n_iter": [0, -1, 1.5, None]}),
    layers.ScaledAvgPool2d: ({"kernel_size": 2}, {
        "kernel_size": BAD_PAIRS, "stride": BAD_PAIRS[:-1], "padding": [-1, 2, (0, 5), "same", 0.5]}),
    layers.L2NormPool2d: ({"kernel_size": 3}, {
        "kernel_size": BAD_PAIRS, "stride": BAD_PAIRS[:-1], "padding": [-1, 2, (0, 5), "same", 0.5]}),
    layers.GlobalL2NormPool2d: ({}, {"keepdim": BAD_FLAGS}),
    layers.InvertibleDownsampling: ({"factor": 2}, {"factor": BAD_COUNTS}),
}

ARGUMENT_CASES = [
    pytest.param(cls, argument, value, id=f"{cls.__name__}-{argument}-{value!r}")
    for cls, (_, arguments) in CONSTRUCTORS.items()
    for argument, values in arguments.items()
    for value in values
]


def test_every_layer_class_has_its_arguments_tried():
    import inspect

    classes = {getattr(layers, name) for name in layers.__all__ if inspect.isclass(getattr(layers, name))}
    # the exported modules are built by export_module() from checked layers, LLNLinear elsewhere
    untried = classes - set(CONSTRUCTORS) - {layers.MaxMin, layers.ExportedResidual, layers.TruncatedExpConv2d,
                                             layers.LLNLinear}
    assert not untried, untried
    for cls, (valid, arguments) in CONSTRUCTORS.items():
        cls(**valid)  # the base arguments are valid
        parameters = inspect.signature(cls.__init__).parameters
        tried = set(arguments)
        sizes = {name for name in parameters if name not in ("self", "device", "dtype")}
        assert sizes <= tried, (cls.__name__, sizes - tried)


@pytest.mark.parametrize("cls, argument, value", ARGUMENT_CASES)
def test_invalid_constructor_argument_names_the_argument(cls, argument, value):
    valid, _ = CONSTRUCTORS[cls]
    kwargs = {**valid, argument: value}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        with pytest.raises((ValueError, TypeError)) as info:
            cls(**kwargs)
    message = str(info.value)
    words = {argument} | ({"circular", "kernel_size"} if argument in ("padding", "kernel_size") else set())
    assert any(word in message for word in words), (argument, message)


def test_the_issue_examples():
    for bad in (-1, 0):
        with pytest.raises(ValueError, match="in_features"):
            layers.SpectralLinear(bad, 3)
    with pytest.raises(TypeError, match="in_features"):
        layers.SpectralLinear(2.0, 3)


# ----------------------------------------------------------------------------- inputs


def _exported_residual():
    return layers.CPLConv2d(2, input_size=5).export_module()


def _exported_soc():
    return layers.SOCConv2d(2, 3, 3).export_module((6, 6))


# factory -> (a valid input shape, wrong shapes, a word of the expected shape); a wrong shape may
# come as (shape, word) with its own word (an image too small for the kernel, window, padding)
INPUT_CASES = {
    "GroupSort": (lambda: layers.GroupSort(3), (2, 6), [(6,), (2, 5), (2, 4, 3)], "divisible by 3"),
    "MaxMin": (lambda: layers.MaxMin(), (2, 4), [(4,), (2, 3)], "divisible by 2"),
    "Householder": (lambda: layers.Householder(4), (2, 4, 3, 3), [(4,), (2, 6), (2, 3, 3, 3)], "(N, 4, *)"),
    "SpectralLinear": (lambda: layers.SpectralLinear(5, 4), (2, 5), [(), (2, 4), (5, 2)], "(..., 5)"),
    "BjorckLinear": (lambda: layers.BjorckLinear(5, 4), (2, 5), [(), (2, 6)], "(..., 5)"),
    "AOLLinear": (lambda: layers.AOLLinear(5, 4), (2, 5), [(), (2, 4)], "(..., 5)"),
    "SLLLinear": (lambda: layers.SLLLinear(5), (2, 5), [(), (2, 4)], "(..., 5)"),
    "CPLLinear": (lambda: layers.CPLLinear(5), (2, 5), [(), (2, 4)], "(..., 5)"),
    "CayleyLinear": (lambda: layers.CayleyLinear(5, 4), (2, 5), [(), (2, 4)], "(..., 5)"),
    "BROLinear": (lambda: layers.BROLinear(5, 4), (2, 5), [(), (2, 4)], "(..., 5)"),
    "SpectralConv2d": (lambda: layers.SpectralConv2d(2, 3, 3), (1, 2, 5, 5),
                       [(2, 5), (1, 3, 5, 5), (1, 1, 2, 5, 5), (5,)], "(N, 2, H, W)"),
    "SpectralConv2d-circular": (lambda: layers.SpectralConv2d(2, 3, 3, stride=2, padding_mode="circular"),
                                (1, 2, 6, 6), [(1, 2, 5, 6), (1, 2, 2, 2), (1, 3, 6, 6)], "2"),
    "SpectralConv2d-input_size": (lambda: layers.SpectralConv2d(2, 3, 3, input_size=5), (1, 2, 5, 5),
                                  [(1, 2, 6, 6)], "(N, 2, 5, 5)"),
    "AOLConv2d": (lambda: layers.AOLConv2d(2, 3, 3, padding=0), (1, 2, 5, 5),
                  [(2, 5), (1, 3, 5, 5), ((1, 2, 2, 5), "kernel")], "(N, 2, H, W)"),
    "SLLConv2d": (lambda: layers.SLLConv2d(2), (1, 2, 5, 5), [(2, 5), (1, 3, 5, 5), (1, 1, 2, 5, 5)], "(N, 2, H, W)"),
    "CPLConv2d": (lambda: layers.CPLConv2d(2), (1, 2, 5, 5), [(2, 5), (1, 3, 5, 5)], "(N, 2, H, W)"),
    "CPLConv2d-circular": (lambda: layers.CPLConv2d(2, kernel_size=5, padding_mode="circular"), (1, 2, 5, 5),
                           [(1, 2, 4, 4), ((1, 2, 1, 1), "padding")], "kernel"),
    "ExportedResidual": (_exported_residual, (1, 2, 5, 5), [(1, 2, 6, 6), (2, 5), (1, 3, 5, 5)], "5"),
    "CayleyConv2d": (lambda: layers.CayleyConv2d(2, 3, 3), (1, 2, 4, 4),
                     [(2, 4), (1, 3, 4, 4), (1, 2, 2, 2)], "2"),
    "BROConv2d": (lambda: layers.BROConv2d(2, 3, 3, stride=2), (1, 2, 6, 6),
                  [(2, 6), (1, 3, 6, 6), (1, 2, 5, 6), (1, 2, 4, 4)], "2"),
    "SOCConv2d": (lambda: layers.SOCConv2d(2, 3, 3), (1, 2, 5, 5), [(2, 5), (1, 3, 5, 5)], "(N, 2, H, W)"),
    "SOCConv2d-circular": (lambda: layers.SOCConv2d(2, 3, 3, padding="circular"), (1, 2, 5, 5),
                           [(1, 2, 2, 5)], "kernel"),
    "TruncatedExpConv2d": (_exported_soc, (1, 2, 6, 6), [(1, 2, 5, 5), (1, 3, 6, 6), (2, 6)], "(N, 2, 6, 6)"),
    "ScaledAvgPool2d": (lambda: layers.ScaledAvgPool2d(3), (1, 2, 4, 4), [(2, 4), ((1, 2, 2, 4), "window"), (1, 1, 2, 4, 4)],
                        "H, W"),
    "L2NormPool2d": (lambda: layers.L2NormPool2d(2), (1, 2, 4, 4), [(2, 4), ((1, 2, 1, 4), "window")], "H, W"),
    "GlobalL2NormPool2d": (lambda: layers.GlobalL2NormPool2d(), (1, 2, 4, 4), [(2, 4), (4,)], "H, W"),
    "InvertibleDownsampling": (lambda: layers.InvertibleDownsampling(2), (1, 2, 4, 4), [(2, 4), (1, 2, 3, 4)], "2"),
}


@pytest.mark.parametrize("name", list(INPUT_CASES))
def test_wrong_input_shapes_raise_a_value_error_naming_x_and_the_expected_shape(name):
    factory, good, bad_shapes, expected = INPUT_CASES[name]
    layer = factory()
    layer(torch.randn(good))  # the valid shape works
    for case in bad_shapes:
        shape, word = case if case and isinstance(case[0], tuple) else (case, expected)
        with pytest.raises(ValueError) as info:
            layer(torch.randn(shape))
        message = str(info.value)
        assert re.search(r"\bx\b", message), (shape, message)
        assert word in message, (shape, message)
    with pytest.raises(TypeError, match=r"\bx\b"):
        layer([[1.0, 2.0]])


@settings(max_examples=20, deadline=None)
@given(c=st.integers(1, 4), wrong=st.integers(1, 6), h=st.integers(1, 6), w=st.integers(1, 6), batch=st.booleans())
def test_conv_layers_reject_every_wrong_channel_count(c, wrong, h, w, batch):
    if wrong == c:
        wrong += 1
    shape = ((2,) if batch else ()) + (wrong, h, w)
    for layer in (layers.SpectralConv2d(c, 2, 1), layers.AOLConv2d(c, 2, 1), layers.SLLConv2d(c, kernel_size=1),
                  layers.CPLConv2d(c, kernel_size=1), layers.CayleyConv2d(c, 2, 1), layers.BROConv2d(c, 2, 1),
                  layers.SOCConv2d(c, 2, 1)):
        with pytest.raises(ValueError, match=rf"x must have shape \(N, {c}, H, W\)"):
            layer(torch.randn(shape))


# ----------------------------------------------------------------------------- deprecated arguments


@pytest.mark.parametrize("build", [
    lambda **kw: layers.SpectralConv2d(2, 2, 3, **kw),
    lambda **kw: layers.CPLConv2d(2, **kw),
], ids=["SpectralConv2d", "CPLConv2d"])
def test_tol_is_deprecated_and_changes_nothing(build):
    torch.manual_seed(0)
    plain = build()
    with pytest.warns(DeprecationWarning, match="n_iter"):
        old = build(tol=1e-3)
    old.load_state_dict(plain.state_dict())
    x = torch.randn(2, 2, 5, 5)
    assert torch.equal(old(x), plain(x))


def test_bjorck_orthonormalize_checks_its_arguments():
    W = torch.eye(3)
    for name, kwargs in (("n_iter", {"n_iter": -1}), ("n_iter", {"n_iter": 1.5}), ("order", {"order": 0})):
        with pytest.raises((ValueError, TypeError), match=name):
            layers.bjorck_orthonormalize(W, **kwargs)
    with pytest.raises(ValueError, match="W"):
        layers.bjorck_orthonormalize(torch.ones(3))
    with pytest.raises(TypeError, match="W"):
        layers.bjorck_orthonormalize([[1.0]])
