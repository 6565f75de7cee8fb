"""Bad arguments of every public function of train, models, data, attacks, smoothing, plot and timing
raise a ValueError or TypeError whose message names the argument.

Each entry is a call that works, and, per argument, values that must be refused. The working call is
checked too, so that a refusal is never an accident of the other arguments.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
from torch import nn

from stabilitylab import attacks, data, models, smoothing, timing, train

NAN = float("nan")
INF = float("inf")

torch.manual_seed(0)
_MLP = models.mlp(2, 3, hidden=(4,), generator=torch.Generator().manual_seed(0))
_X = torch.rand(6, 2, generator=torch.Generator().manual_seed(1))
_Y = torch.tensor([0, 1, 2, 0, 1, 2])
_SMOOTH = smoothing.Smooth(_MLP, 3, 0.5)
_SMOOTH_SHAPED = smoothing.Smooth(_MLP, 3, 0.5, input_shape=(2,))

COUNT = [0, -1, 1.5, "3", True]  # an int >= 1
POSITIVE = [0, -1.0, NAN, INF, "1", None]  # a finite number > 0
TENSOR = [[[0.1, 0.2]] * 6, torch.zeros(6, 2, dtype=torch.long), torch.full((6, 2), NAN)]
GENERATOR = [0, "seed", torch.zeros(1)]
PROGRESS = ["yes", 2]
CALLABLE = [3, "f"]


def _plot():
    return pytest.importorskip("stabilitylab.plot")


def _figure():
    import matplotlib.pyplot as plt

    fig = plt.figure()
    return fig


# (label, function, the arguments of a call that works, {argument: [bad values]})
SPECS = [
    # ------------------------------------------------------------------ train
    ("train.fit", train.fit, dict(model=_MLP, train_data=(_X, _Y), epochs=1, progress=False), {
        "model": [lambda x: x, "net"],
        "train_data": [[1, 2, 3], (_X, _Y[:3]), (_X[:0], _Y[:0]), (torch.full((6, 2), NAN), _Y)],
        "test_data": [[1, 2], (_X, _Y[:2])],
        "epochs": COUNT, "batch_size": COUNT, "lr": POSITIVE,
        "weight_decay": [-1.0, NAN, "0"], "momentum": [-0.5, INF],
        "optimizer": ["lbfgs", 3], "loss_fn": CALLABLE, "penalty": CALLABLE,
        "device": [3, "warp-drive"], "generator": GENERATOR, "progress": PROGRESS, "desc": [3],
    }),
    ("train.predict", train.predict, dict(model=_MLP, data=_X), {
        "model": ["net"], "data": [[1, 2], _X[:0], torch.full((3, 2), NAN)], "batch_size": COUNT,
        "device": [3, "warp-drive"],
    }),
    ("train.evaluate", train.evaluate, dict(model=_MLP, data=(_X, _Y)), {
        "model": ["net"], "data": [[1, 2], (_X, _Y[:1]), (torch.full((6, 2), INF), _Y)], "batch_size": COUNT,
        "loss_fn": CALLABLE,
        "device": [3, "warp-drive"],
    }),
    ("train.batches", lambda **kw: list(train.batches(**kw)), dict(data=(_X, _Y), batch_size=2), {
        "data": [[1, 2], (_X, _Y[:1])], "batch_size": COUNT, "generator": GENERATOR,
    }),
    ("train.seed_everything", train.seed_everything, dict(seed=0), {"seed": [1.5, "0", True]}),
    # ------------------------------------------------------------------ models
    ("models.mlp", models.mlp, dict(in_features=2, num_classes=3), {
        "in_features": [0, -2, (2, 0), "2", ()], "num_classes": COUNT, "hidden": [(0,), (4, -1), 4, "44"],
        "activation": ["swishy", 3], "bias": ["yes"], "generator": GENERATOR,
    }),
    ("models.cnn", models.cnn, dict(in_channels=1, num_classes=3, input_size=8, channels=(2,), hidden=4), {
        "in_channels": COUNT, "num_classes": COUNT, "input_size": [0, (8,), (8, 8, 8), "8", (8, 0), 1],
        "channels": [(0,), 2], "hidden": COUNT, "kernel_size": [2, 0, 1.0],
        "activation": ["swishy"], "pool": ["median", 2], "generator": GENERATOR,
    }),
    ("models.lipschitz_mlp", models.lipschitz_mlp, dict(in_features=4, num_classes=2, hidden=(4,)), {
        "in_features": [0, "4"], "num_classes": COUNT, "hidden": [(3,), (0,)], "group_size": [1, 1.5],
        "n_iter": COUNT, "layer": ["orthogonal", 3], "head": ["softmax"], "generator": GENERATOR,
    }),
    ("models.lipschitz_cnn", models.lipschitz_cnn, dict(in_channels=1, num_classes=2, input_size=4, channels=(2,)), {
        "in_channels": COUNT, "num_classes": COUNT, "input_size": [5, 0, (4, 4, 4)], "channels": [(3,), ()],
        "layer": ["lstm"], "depth": [0, 1.5], "kernel_size": [2, 0], "pool": ["max"], "head": ["sll"],
        "generator": GENERATOR,
    }),
    ("models.make_activation", models.make_activation, dict(spec="relu"), {"spec": ["swishy", 3, int]}),
    # ------------------------------------------------------------------ data
    ("data.load_dataset", data.load_dataset, dict(name="moons", n_samples=10), {
        "name": ["nope", 3], "split": ["valid", None], "n_samples": [0, -1, 1.5, "10"], "seed": [-1, 1.5, "0"],
        "root": [3], "download": ["yes"],
    }),
    ("data.ArrayDataset", data.ArrayDataset,
     dict(inputs=torch.zeros(4, 2), labels=torch.tensor([0, 1, 0, 1]), name="toy", classes=["a", "b"],
          input_range=(0.0, 1.0)), {
        "inputs": [torch.zeros(4)], "labels": [torch.tensor([0, 1, 0]), torch.tensor([0, 1, 0, 5])],
        "name": [3], "classes": ["ab", []], "input_range": [(1.0, 0.0), (0.0,), (0.0, NAN), "01"],
    }),
    # ------------------------------------------------------------------ attacks
    *[(f"attacks.{fn.__name__}", fn, dict(model=_MLP, x=_X, y=_Y, **extra), {
        "model": ["net"], "x": [*TENSOR, torch.tensor(0.5)], "y": [[0, 1], _Y[:2], _Y.float(), _Y[None]],
        "norm": ["l1", 2], "bounds": [(0.0,), (1.0, 0.0), ("a", 1.0), (0.0, torch.ones(5))],
        **bad,
    }) for fn, extra, bad in [
        (attacks.fgsm, dict(eps=0.1), {"eps": [-0.1, NAN, "0.1"], "loss_fn": CALLABLE}),
        (attacks.pgd, dict(eps=0.1, n_iter=2), {
            "eps": [-0.1, NAN], "n_iter": COUNT, "step_size": [0.0, -1.0, NAN], "generator": GENERATOR,
            "loss_fn": CALLABLE, "random_start": ["yes", 1], "targeted": ["no"]}),
        (attacks.minimal_adversarial_distance, dict(eps_max=1.0, n_search=2, n_iter=2), {
            "eps_max": [0.0, -1.0, INF], "n_search": [-1, 1.5], "n_iter": COUNT, "generator": GENERATOR,
            "random_start": ["yes"], "return_examples": ["yes"]}),
        (attacks.robust_accuracy, dict(eps=0.1, n_iter=2), {
            "eps": [-0.1, NAN], "attack": ["cw", 3], "batch_size": COUNT, "generator": GENERATOR,
            "progress": PROGRESS}),
    ]],
    # ------------------------------------------------------------------ smoothing
    ("smoothing.Smooth", smoothing.Smooth, dict(base=_MLP, num_classes=3, sigma=0.5), {
        "base": [lambda x: x], "num_classes": [1, 2.5], "sigma": [0.0, -1.0, NAN, INF, "1"],
        "input_shape": [(0,), "2", (-1, 2)],
    }),
    ("Smooth.certify", _SMOOTH.certify, dict(x=_X[0], n0=4, n=8, alpha=0.1, batch_size=4), {
        "x": [[0.1, 0.2], torch.tensor(0.5), _X, torch.tensor([NAN, 0.0])],
        "n0": COUNT, "n": COUNT, "alpha": [0.0, 1.0, NAN, "0.1"], "batch_size": COUNT,
        "generator": GENERATOR, "progress": PROGRESS,
    }),
    ("Smooth(input_shape).certify", _SMOOTH_SHAPED.certify, dict(x=_X[0], n0=4, n=8, alpha=0.1, batch_size=4), {
        "x": [_X[:1], torch.zeros(3), torch.zeros(2, 1)],
    }),
    ("Smooth.predict", _SMOOTH.predict, dict(x=_X[0], n=8, alpha=0.1, batch_size=4), {
        "x": [[0.1], torch.tensor(0.5), _X], "n": COUNT, "alpha": [0.0, 1.5], "batch_size": COUNT,
        "generator": GENERATOR,
    }),
    ("Smooth.certify_lvm", _SMOOTH.certify_lvm, dict(x=_X[0], n0=4, n=8, alpha=0.1, batch_size=4), {
        "x": [torch.tensor(0.5), _X], "n0": COUNT, "n": [1, 0, 2.5], "alpha": [0.0], "batch_size": COUNT,
        "maps": [[("relu", 1.0)], [], "softmax"], "bound": ["huge"], "choose_map": ["best"],
        "generator": GENERATOR, "progress": PROGRESS,
    }),
    ("Smooth.sample_counts", _SMOOTH.sample_counts, dict(x=_X[0], num=8, batch_size=4), {
        "x": [torch.tensor(0.5), _X], "num": COUNT, "batch_size": COUNT, "generator": GENERATOR,
        "progress": PROGRESS,
    }),
    ("Smooth.vote_frequencies", _SMOOTH.vote_frequencies, dict(x=_X, n=4, batch_size=8), {
        "x": [[0.1], torch.tensor(0.5), _X[:0]], "n": COUNT, "batch_size": COUNT, "generator": GENERATOR,
        "progress": PROGRESS,
    }),
    ("smoothing.SmoothedFrequencies", smoothing.SmoothedFrequencies, dict(smooth=_SMOOTH, n=4), {
        "smooth": [_MLP], "n": COUNT, "batch_size": COUNT, "generator": GENERATOR,
    }),
    ("smoothing.certify_dataset", smoothing.certify_dataset,
     dict(smooth=_SMOOTH, data=(_X[:2], _Y[:2]), n0=4, n=8, alpha=0.1, batch_size=4, progress=False), {
        "smooth": [_MLP], "data": [[1, 2], (_X, _Y[:2])], "n0": COUNT, "n": COUNT, "alpha": [0.0, 2.0],
        "batch_size": COUNT, "method": ["vote", 3], "max_points": [0, 1.5], "generator": GENERATOR,
        "progress": PROGRESS,
    }),
    ("smoothing.clopper_pearson_lower", smoothing.clopper_pearson_lower, dict(successes=3, trials=10, alpha=0.1), {
        "successes": [11, -1, 1.5], "trials": COUNT, "alpha": [0.0, 1.0, NAN],
    }),
    ("smoothing.empirical_bernstein_radius", smoothing.empirical_bernstein_radius,
     dict(variance=torch.tensor([0.1, 0.0]), n=10, alpha=0.1), {
        "variance": [0.1, [0.1], torch.tensor([NAN]), torch.tensor([-0.5]), torch.tensor([1])],
        "n": [1, 2.5], "alpha": [0.0, 1.0], "value_range": [-1, 0, NAN, "1"],
    }),
    ("smoothing.max_certifiable_radius", smoothing.max_certifiable_radius, dict(sigma=0.5, n=100, alpha=0.1), {
        "sigma": [0.0, NAN], "n": COUNT, "alpha": [0.0, 2.0],
    }),
    ("smoothing.sparsemax", smoothing.sparsemax, dict(z=torch.randn(3, 4)), {
        "z": [[1.0, 2.0], torch.tensor(1.0), torch.tensor([NAN, 1.0]), torch.tensor([1, 2])], "dim": [2, -3, 0.5],
    }),
    ("smoothing.simplex_map", smoothing.simplex_map, dict(logits=torch.randn(3, 4)), {
        "logits": [[1.0, 2.0], torch.tensor(1.0), torch.tensor([INF, 1.0])], "kind": ["relu"],
        "temperature": [0.0, -1.0, NAN],
    }),
    ("smoothing.GaussianNoise", smoothing.GaussianNoise, dict(sigma=0.5), {
        "sigma": [0.0, NAN, "1"], "generator": GENERATOR,
    }),
    # ------------------------------------------------------------------ timing
    ("timing.median_time", timing.median_time, dict(fn=lambda: None, repeats=1, warmup=0), {
        "fn": [3], "repeats": COUNT, "warmup": [-1, 1.5, "1"],
    }),
    ("timing.peak_memory", timing.peak_memory, dict(fn=lambda: None), {"fn": [3], "device": [3, "warp-drive"]}),
]

PLOT_SPECS = [
    ("plot.set_style", "set_style", lambda: dict(), {"context": ["huge", 3], "font_scale": [0, -1.0, NAN]}),
    ("plot.figure", "figure", lambda: dict(), {"nrows": COUNT, "ncols": COUNT, "width": [0, NAN], "height": [-1.0]}),
    ("plot.save", "save", lambda: dict(fig=_figure(), name="x"), {
        "fig": ["figure"], "name": ["a/b", "", 3], "directory": [3], "formats": ["png", [3]]}),
    ("plot.image_grid", "image_grid", lambda: dict(images=torch.rand(2, 1, 4, 4)), {
        "images": [[], 3], "ncols": [0, 1.5], "value_range": [(1.0, 0.0), (0.0,), (0.0, NAN)], "titles": [3]}),
    ("plot.decision_boundary", "decision_boundary", lambda: dict(model=_MLP, x=_X, y=_Y, resolution=3), {
        "model": [lambda x: x], "x": [torch.zeros(6, 3), [[0.0, 0.0]], torch.full((6, 2), NAN)],
        "y": [[0, 1], _Y[:2], _Y.float()], "resolution": [1, 2.5], "margin": [-1.0, NAN], "device": [3]}),
]


def _cases():
    for label, fn, good, bad in SPECS:
        for name, values in bad.items():
            for i, value in enumerate(values):
                yield pytest.param(fn, good, name, value, id=f"{label}-{name}-{i}")


def _plot_cases():
    for label, fn_name, good, bad in PLOT_SPECS:
        for name, values in bad.items():
            for i, value in enumerate(values):
                yield pytest.param(fn_name, good, name, value, id=f"{label}-{name}-{i}")


@pytest.mark.parametrize("label, fn, good", [pytest.param(s[0], s[1], s[2], id=s[0]) for s in SPECS])
def test_the_reference_calls_work(label, fn, good):
    fn(**good)


@pytest.mark.parametrize("fn, good, name, value", list(_cases()))
def test_a_bad_argument_is_refused_by_name(fn, good, name, value):
    with pytest.raises((ValueError, TypeError), match=re.escape(name)):
        fn(**{**good, name: value})


@pytest.mark.parametrize("fn_name, good, name, value", list(_plot_cases()))
def test_a_bad_plot_argument_is_refused_by_name(fn_name, good, name, value):
    plot = _plot()
    import matplotlib.pyplot as plt

    try:
        with pytest.raises((ValueError, TypeError), match=re.escape(name)):
            getattr(plot, fn_name)(**{**good(), name: value})
    finally:
        plt.close("all")


def test_smooth_certify_on_a_batch_names_x_even_without_an_input_shape():
    """A batch given where one input is expected: the base sees (b, N, d) and the error names x."""
    for base in (nn.Linear(2, 3), nn.Sequential(nn.Flatten(), nn.Linear(2, 3))):
        smooth = smoothing.Smooth(base, 3, 0.5)
        with pytest.raises(ValueError, match=r"\bx\b"):
            smooth.certify(_X, 4, 8, 0.1, 4)


def test_empirical_bernstein_radius_value_range_scales_the_second_term():
    """The refusals above guard a formula: the radius is sqrt(2 V ln(2/a) / n) + 7 b ln(2/a) / (3 (n - 1))."""
    v = torch.tensor([0.0, 0.25], dtype=torch.float64)
    n, alpha = 50, 0.01
    log_term = math.log(2 / alpha)
    for b in (0.5, 1.0, 3.0):
        expected = torch.sqrt(2 * v * log_term / n) + 7 * b * log_term / (3 * (n - 1))
        assert torch.allclose(smoothing.empirical_bernstein_radius(v, n, alpha, value_range=b), expected)
        assert (smoothing.empirical_bernstein_radius(v, n, alpha, value_range=b) > 0).all()
