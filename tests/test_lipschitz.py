"""Lipschitz bounds: upper bounds hold against exact Jacobian norms, lower bounds are attained."""

import json
import math

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

from stabilitylab import lipschitz, models, spectral
from stabilitylab._checks import check_pair
from stabilitylab.layers import GroupSort

SLACK = 1e-9  # float64 rounding of a certified bound

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")



def jacobian_norms(model, x):
    """Exact ||J_f(x_b)||_2 (float64 Jacobian, SVD) at every point of the batch."""
    norms = []
    for point in x:
        J = torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0)).reshape(-1), point)
        norms.append(torch.linalg.matrix_norm(J.reshape(J.shape[0], -1), ord=2).item())
    return torch.tensor(norms, dtype=torch.float64)


def module_operator_norm(module, input_shape):
    """The exact norm of a linear (affine) module: SVD of its Jacobian at 0."""
    x = torch.zeros(1, *input_shape, dtype=torch.float64)
    J = torch.autograd.functional.jacobian(lambda z: module(z).reshape(-1), x)
    return torch.linalg.matrix_norm(J.reshape(J.shape[0], -1), ord=2).item()


def randomize_batchnorm(bn, generator):
    with torch.no_grad():
        bn.weight.copy_(torch.randn(bn.weight.shape, generator=generator, dtype=torch.float64) * 2)
        bn.bias.copy_(torch.randn(bn.bias.shape, generator=generator, dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(bn.running_mean.shape, generator=generator, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(bn.running_var.shape, generator=generator, dtype=torch.float64) * 3 + 0.05)


ACTIVATIONS = {
    "relu": nn.ReLU,
    "leaky": lambda: nn.LeakyReLU(0.3),
    "leaky_steep": lambda: nn.LeakyReLU(-1.7),
    "tanh": nn.Tanh,
    "gelu": nn.GELU,
    "gelu_tanh": lambda: nn.GELU(approximate="tanh"),
    "sigmoid": nn.Sigmoid,
    "elu": lambda: nn.ELU(alpha=1.8),
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
}


# ----------------------------------------------------------------------------- upper >= Jacobian


@settings(max_examples=25, deadline=None)
@given(
    widths=st.lists(st.integers(1, 7), min_size=1, max_size=4),
    activation=st.sampled_from(sorted(ACTIVATIONS)),
    scale=st.sampled_from([0.5, 1.0, 3.0]),
    seed=st.integers(0, 2**31 - 1),
)
def test_mlp_upper_bound_dominates_the_jacobian_and_the_lower_bound(widths, activation, scale, seed):
    torch.manual_seed(seed)
    layers = []
    for a, b in zip(widths[:-1], widths[1:]):
        layers += [nn.Linear(a, b), ACTIVATIONS[activation]()]
    model = nn.Sequential(*layers, nn.Linear(widths[-1], 3)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(scale)
    x = torch.randn(24, widths[0], dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2
    upper = lipschitz.upper_bound(model, (widths[0],))
    assert upper.dtype == torch.float64 and upper.ndim == 0
    assert jacobian_norms(model, x).max() <= upper * (1 + SLACK)
    lower = lipschitz.lower_bound(model, x, n_iter=10, generator=torch.Generator().manual_seed(seed))
    assert lower <= upper * (1 + SLACK)
    assert lower >= jacobian_norms(model, x).max() * (1 - 1e-9)  # it starts from the Jacobians


def conv_layer(c_in, c_out, kernel, padding, mode, stride, dilation, groups, generator):
    conv = nn.Conv2d(
        c_in * groups, c_out * groups, kernel, padding=padding, padding_mode=mode,
        stride=1 if padding == "same" else stride, dilation=dilation, groups=groups,
    ).double()  # fmt: skip
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator, dtype=torch.float64))
    return conv


conv_options = dict(
    c_in=st.integers(1, 2),
    c_out=st.integers(1, 3),
    kernel=st.sampled_from([1, 2, 3, (3, 2), (2, 4)]),
    padding=st.sampled_from([0, 1, 2, (1, 0), "same", "valid"]),
    mode=st.sampled_from(["zeros", "zeros", "circular", "reflect", "replicate"]),
    stride=st.sampled_from([1, 2, (2, 1)]),
    dilation=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2]),
    size=st.integers(3, 7),
    seed=st.integers(0, 2**31 - 1),
)


def build_conv(c_in, c_out, kernel, padding, mode, stride, dilation, groups, size, seed):
    generator = torch.Generator().manual_seed(seed)
    try:
        conv = conv_layer(c_in, c_out, kernel, padding, mode, stride, dilation, groups, generator)
        conv(torch.zeros(1, c_in * groups, size, size, dtype=torch.float64))
    except (RuntimeError, ValueError, NotImplementedError):  # an invalid combination for torch
        return None
    return conv


@settings(max_examples=80, deadline=None)
@given(**conv_options, unrolled=st.booleans())
def test_conv2d_layer_bound_dominates_its_exact_norm(
    c_in, c_out, kernel, padding, mode, stride, dilation, groups, size, seed, unrolled
):
    """Every padding, mode, stride, dilation and groups; with and without the unrolled operator."""
    conv = build_conv(c_in, c_out, kernel, padding, mode, stride, dilation, groups, size, seed)
    assume(conv is not None)
    shape = (c_in * groups, size, size)
    limit = spectral._DENSE_CONV_FLOPS
    spectral._DENSE_CONV_FLOPS = limit if unrolled else 0
    try:
        (row,) = lipschitz.layer_bounds(conv, shape)
    finally:
        spectral._DENSE_CONV_FLOPS = limit
    truth = module_operator_norm(conv, shape)
    assert row.upper >= truth * (1 - SLACK)
    assert row.input_shape == shape and row.kind == "Conv2d"
    if unrolled:  # small enough for Gram on the unrolled operator: within tol of the norm
        assert row.upper <= truth * (1 + 1e-3) + SLACK


@settings(max_examples=30, deadline=None)
@given(
    c_in=st.integers(1, 3),
    c_out=st.integers(1, 3),
    k=st.sampled_from([1, 3, 5]),
    size=st.integers(5, 8),
    stride=st.sampled_from([1, 2]),
    pad=st.sampled_from(["zeros", 0, 1, 2]),
    seed=st.integers(0, 2**31 - 1),
)
def test_conv2d_layer_bound_meets_the_dense_oracle(c_in, c_out, k, size, stride, pad, seed):
    """Zero padding p and circular 'same' padding against spectral.conv_operator_matrix."""
    generator = torch.Generator().manual_seed(seed)
    kernel = torch.randn(c_out, c_in, k, k, generator=generator, dtype=torch.float64)
    p = k // 2 if pad == "zeros" else pad
    assume(p < k and size - size % stride >= k)  # the circular oracle needs the kernel to fit
    zero = nn.Conv2d(c_in, c_out, k, padding=p, stride=stride).double()
    zero.weight.data.copy_(kernel)
    truth = torch.linalg.matrix_norm(spectral.conv_operator_matrix(kernel, size, padding=p, stride=stride), 2).item()
    (row,) = lipschitz.layer_bounds(zero, (c_in, size, size))
    assert truth * (1 - SLACK) <= row.upper <= truth * (1 + 1e-3) + SLACK

    size = size - size % stride
    circular = nn.Conv2d(c_in, c_out, k, padding=k // 2, stride=stride, padding_mode="circular").double()
    circular.weight.data.copy_(kernel)
    matrix = spectral.conv_operator_matrix(kernel, size, padding="circular", stride=stride)
    truth = torch.linalg.matrix_norm(matrix, 2).item()
    assert truth == pytest.approx(module_operator_norm(circular, (c_in, size, size)), rel=1e-10)
    (row,) = lipschitz.layer_bounds(circular, (c_in, size, size))
    assert truth * (1 - SLACK) <= row.upper <= truth * (1 + 1e-3) + SLACK


@settings(max_examples=30, deadline=None)
@given(
    conv=st.fixed_dictionaries(conv_options),
    batchnorm=st.booleans(),
    pool=st.sampled_from(["none", "max", "max_overlap", "avg", "avg_overlap", "avg_nopad", "adaptive"]),
    activation=st.sampled_from(["relu", "leaky_steep", "tanh", "gelu"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_cnn_upper_bound_dominates_the_jacobian(conv, batchnorm, pool, activation, seed):
    first = build_conv(**conv)
    assume(first is not None)
    generator = torch.Generator().manual_seed(seed)
    shape = (first.in_channels, conv["size"], conv["size"])
    layers = [first]
    if batchnorm:
        bn = nn.BatchNorm2d(first.out_channels).double()
        randomize_batchnorm(bn, generator)
        layers.append(bn)
    layers.append(ACTIVATIONS[activation]())
    layers.append(
        {
            "none": nn.Identity(),
            "max": nn.MaxPool2d(2, ceil_mode=True),
            "max_overlap": nn.MaxPool2d(3, stride=1, padding=1),
            "avg": nn.AvgPool2d(2, ceil_mode=True),
            "avg_overlap": nn.AvgPool2d(3, stride=1, padding=1),
            "avg_nopad": nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
            "adaptive": nn.AdaptiveAvgPool2d(2),
        }[pool]
    )
    body = nn.Sequential(*layers).eval()
    with torch.no_grad():
        features = body(torch.zeros(1, *shape, dtype=torch.float64)).numel()
    head = nn.Sequential(nn.Flatten(), nn.Linear(features, 3)).double()
    model = nn.Sequential(body, head).eval()  # nested Sequentials are walked
    x = torch.randn(12, *shape, generator=generator, dtype=torch.float64)
    upper = lipschitz.upper_bound(model, shape)
    assert jacobian_norms(model, x).max() <= upper * (1 + SLACK)
    lower = lipschitz.lower_bound(model, x, n_iter=5, generator=generator)
    assert lower <= upper * (1 + SLACK)
    rows = lipschitz.layer_bounds(model, shape)
    assert [r.name for r in rows][-2:] == ["1.0", "1.1"]
    assert sum(math.log(r.upper) for r in rows) == pytest.approx(math.log(upper.item()), rel=1e-12, abs=1e-12)


# ----------------------------------------------------------------------------- single layers


@pytest.mark.parametrize(
    "pool",
    [
        nn.MaxPool2d(2),
        nn.MaxPool2d(3, stride=1, padding=1),
        nn.MaxPool2d(3, stride=2),
        nn.MaxPool2d(3, stride=2, ceil_mode=True, padding=1),
        nn.MaxPool2d((3, 2), stride=(2, 1), dilation=(2, 1)),
        nn.MaxPool2d(5, stride=2, padding=2),
    ],
)
def test_maxpool_bound_is_the_window_count_and_is_attained(pool):
    shape = (2, 7, 8)
    (row,) = lipschitz.layer_bounds(pool, shape)
    (kh, kw), (sh, sw) = check_pair(pool.kernel_size, "kernel_size"), check_pair(pool.stride, "stride")
    if pool.dilation == 1:
        assert row.upper <= math.sqrt(math.ceil(kh / sh) * math.ceil(kw / sw)) + SLACK
    reports = lipschitz.report(nn.Sequential(pool), torch.randn(4, *shape), shape, n_iter=20)
    assert reports.layers[0].lower == pytest.approx(row.upper, rel=1e-12)  # a one-pixel bump attains it
    assert reports.lower <= row.upper * (1 + 1e-9)
    torch.manual_seed(0)
    x = torch.randn(64, *shape, dtype=torch.float64)
    assert jacobian_norms(pool, x[:8]).max() <= row.upper * (1 + SLACK)


@pytest.mark.parametrize(
    "pool, tight",
    [
        (nn.AvgPool2d(2), True),
        (nn.AvgPool2d(3, stride=1, padding=1), True),
        (nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False), False),
        (nn.AvgPool2d(2, ceil_mode=True), False),
        (nn.AvgPool2d(3, stride=2, padding=1, ceil_mode=True, count_include_pad=True), False),
        (nn.AvgPool2d(2, divisor_override=3), True),
        (nn.AdaptiveAvgPool2d((1, 4)), True),
        (nn.AdaptiveAvgPool2d(3), False),
    ],
)
def test_avgpool_bound_against_its_exact_norm(pool, tight):
    shape = (3, 7, 8)
    (row,) = lipschitz.layer_bounds(pool, shape)
    truth = module_operator_norm(pool, shape)
    assert row.upper >= truth * (1 - SLACK)
    if tight:
        assert row.upper <= truth * (1 + 1e-3)
    else:
        assert row.upper <= 1.5 * truth  # the Schur test is close for averaging matrices


def test_batchnorm_in_eval_is_its_largest_channel_slope():
    generator = torch.Generator().manual_seed(0)
    cases = [(nn.BatchNorm1d(5), (5,)), (nn.BatchNorm2d(4), (4, 3, 3)), (nn.BatchNorm1d(3, affine=False), (3, 6))]
    for bn, shape in cases:
        bn = bn.double()
        if bn.affine:
            randomize_batchnorm(bn, generator)
        else:
            bn.running_var.copy_(torch.tensor([0.5, 2.0, 0.01], dtype=torch.float64))
        bn.eval()
        (row,) = lipschitz.layer_bounds(bn, shape)
        slope = (bn.weight if bn.affine else 1) / torch.sqrt(bn.running_var + bn.eps)
        assert row.upper == pytest.approx(slope.abs().max().item(), rel=1e-14)
        assert row.upper == pytest.approx(module_operator_norm(bn, shape), rel=1e-10)


def test_single_linear_lower_and_upper_meet():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(12, 7))
    x = torch.randn(5, 12)
    upper = lipschitz.upper_bound(model, (12,)).item()
    lower = lipschitz.lower_bound(model, x, generator=torch.Generator().manual_seed(0)).item()
    truth = torch.linalg.matrix_norm(model[0].weight.double(), 2).item()
    assert truth * (1 - 1e-6) <= upper <= truth * (1 + 1e-3)
    assert lower <= upper * (1 + SLACK)
    assert lower == pytest.approx(truth, rel=1e-6)
    assert upper / lower <= 1 + 1e-3


def test_single_circular_conv_lower_and_upper_meet():
    torch.manual_seed(2)
    conv = nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular")
    shape = (2, 6, 6)
    exact = spectral.conv_spectral_norm(conv.weight.detach().double(), 6, padding="circular", method="exact").item()
    upper = lipschitz.upper_bound(conv, shape).item()
    lower = lipschitz.lower_bound(conv, torch.randn(3, *shape), generator=torch.Generator().manual_seed(0)).item()
    assert exact * (1 - 1e-6) <= upper <= exact * (1 + 1e-3)
    assert lower == pytest.approx(exact, rel=1e-5)
    assert lower <= upper * (1 + SLACK)


def test_activation_constants_are_the_sup_of_the_derivative():
    t = torch.linspace(-12, 12, 480_001, dtype=torch.float64, requires_grad=True)
    modules = [
        nn.ReLU(), nn.ReLU6(), nn.Hardtanh(), nn.LeakyReLU(0.1), nn.LeakyReLU(-2.5), nn.ELU(), nn.ELU(alpha=2.0),
        nn.CELU(alpha=0.5), nn.SELU(), nn.Tanh(), nn.Sigmoid(), nn.Hardsigmoid(), nn.Softplus(beta=2.0),
        nn.Softsign(), nn.GELU(), nn.GELU(approximate="tanh"), nn.SiLU(), nn.Mish(), nn.Hardswish(),
    ]  # fmt: skip
    for module in modules:  # difference quotients of the forward (Hardsigmoid's backward rounds 1/6 to float32)
        constant, _ = lipschitz.activation_constant(module)
        with torch.no_grad():
            y = module(t)
        observed = ((y[1:] - y[:-1]) / (t[1:] - t[:-1])).abs().max().item()
        assert observed <= constant * (1 + 1e-9), type(module).__name__
        assert observed >= constant * (1 - 2e-3), type(module).__name__  # the sup is (nearly) attained
    (grad,) = torch.autograd.grad(nn.GELU()(t).sum(), t)
    assert grad.abs().max().item() == pytest.approx(lipschitz.GELU_LIPSCHITZ, rel=1e-9)
    assert lipschitz.GELU_LIPSCHITZ == pytest.approx(1.1289041451851548, rel=1e-15)
    assert lipschitz.activation_constant(nn.PReLU(3, init=-1.5))[0] == pytest.approx(1.5)


# ----------------------------------------------------------------------------- report, pairwise


def test_report_rows_and_log_sum():
    torch.manual_seed(3)
    model = models.cnn(1, 4, input_size=8, channels=(4, 6), hidden=10).eval()
    x = torch.randn(6, 1, 8, 8)
    rows = lipschitz.layer_bounds(model, (1, 8, 8))
    upper = lipschitz.upper_bound(model, (1, 8, 8))
    assert [r.name for r in rows] == [name for name, m in model.named_modules() if name]
    assert [r.kind for r in rows][:3] == ["Conv2d", "ReLU", "MaxPool2d"]
    assert sum(math.log(r.upper) for r in rows) == pytest.approx(math.log(upper.item()), rel=1e-12)
    result = lipschitz.report(model, x, (1, 8, 8), n_iter=20, generator=torch.Generator().manual_seed(0))
    assert result.upper == pytest.approx(upper.item(), rel=1e-12)
    assert 0 < result.lower <= result.upper and result.ratio == pytest.approx(result.upper / result.lower)
    for row in result.layers:
        assert 0 <= row.lower <= row.upper * (1 + SLACK), row
    assert result.layers[-1].lower == pytest.approx(result.layers[-1].upper, rel=1e-3)  # Linear: exact vs gram
    text = str(result)
    assert "Conv2d" in text and "MaxPool2d" in text and "upper/lower" in text
    lines = text.splitlines()
    assert len({line.index("Conv2d") for line in lines if "Conv2d" in line}) == 1  # aligned columns
    json.dumps(result.to_dict())
    assert result.to_dict()["layers"][0]["input_shape"] == [1, 8, 8]


@settings(max_examples=12, deadline=None)
@given(classes=st.integers(2, 7), hidden=st.integers(1, 6), seed=st.integers(0, 2**31 - 1))
def test_pairwise_logit_bound(classes, hidden, seed):
    torch.manual_seed(seed)
    model = models.mlp(4, classes, hidden=(hidden, 5), activation="tanh").double()
    L = lipschitz.pairwise_logit_bound(model, (4,))
    upper = lipschitz.upper_bound(model, (4,))
    assert L.shape == (classes, classes) and L.dtype == torch.float64
    assert torch.all(L.diagonal() == 0) and torch.allclose(L, L.T)
    assert torch.all(L <= math.sqrt(2) * upper * (1 + SLACK))
    x = torch.randn(64, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)) * 2
    J = torch.stack([torch.autograd.functional.jacobian(lambda z: model(z.unsqueeze(0))[0], p) for p in x])  # (N, C, 4)
    for i in range(classes):
        for j in range(classes):
            gradient = torch.linalg.vector_norm(J[:, i] - J[:, j], dim=-1).max()
            assert gradient <= L[i, j] * (1 + SLACK) + 1e-15


def test_pairwise_logit_bound_needs_a_final_linear():
    with pytest.raises(ValueError, match="nn.Linear"):
        lipschitz.pairwise_logit_bound(nn.Sequential(nn.Linear(3, 3), nn.ReLU()), (3,))


# ----------------------------------------------------------------------------- protocol, errors


class Doubler(nn.Module):
    lipschitz_constant = 2.0

    def forward(self, x):
        return 2 * x


class Unknown(nn.Module):
    def forward(self, x):
        return x


def test_declared_lipschitz_constant_protocol():
    model = nn.Sequential(nn.Linear(4, 4), GroupSort(2), Doubler())
    rows = lipschitz.layer_bounds(model, (4,))
    assert [r.upper for r in rows[1:]] == [1.0, 2.0] and rows[2].method.startswith("declared")
    result = lipschitz.report(model, torch.randn(3, 4), (4,), n_iter=0)
    assert result.layers[1].lower == pytest.approx(1.0) and result.layers[2].lower == pytest.approx(2.0)
    tensor_constant = Unknown()
    tensor_constant.lipschitz_constant = torch.tensor(0.5)
    assert lipschitz.upper_bound(tensor_constant, (4,)).item() == 0.5
    bad = Unknown()
    bad.lipschitz_constant = -1.0
    with pytest.raises(ValueError, match="lipschitz_constant"):
        lipschitz.upper_bound(bad, (4,))


class MySequential(nn.Sequential):
    def forward(self, x):
        return super().forward(x) + x


@pytest.mark.parametrize(
    "model, match",
    [
        (nn.Sequential(nn.Linear(4, 4), nn.LSTM(4, 4)), "LSTM"),
        (nn.Sequential(nn.Linear(4, 4), Unknown()), "Unknown"),
        (MySequential(nn.Linear(4, 4)), "MySequential"),
        (nn.Sequential(nn.Softmax(dim=1)), "Softmax"),
    ],
)
def test_unknown_modules_raise_type_error(model, match):
    with pytest.raises(TypeError, match=match):
        lipschitz.upper_bound(model, (4,))


def test_bad_input_raises():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU())
    with pytest.raises(ValueError, match="eval"):
        lipschitz.upper_bound(model, (4,))
    model.eval()
    with pytest.raises(ValueError, match=r"input_shape \(5,\).*\(1, 5\)"):
        lipschitz.upper_bound(model, (5,))
    with pytest.raises(ValueError, match="input_shape"):
        lipschitz.upper_bound(model, (0,))
    with pytest.raises(ValueError, match="eval"):
        lipschitz.upper_bound(nn.Sequential(nn.Dropout(0.5)), (4,))
    with pytest.raises(TypeError, match="model"):
        lipschitz.upper_bound(lambda x: x, (4,))
    with pytest.raises(TypeError, match="model"):
        lipschitz.lower_bound("not a model", torch.randn(2, 4))
    with pytest.raises(ValueError, match="NaN"):
        lipschitz.lower_bound(model, torch.tensor([[0.0, math.nan, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="NaN"):
        lipschitz.lower_bound(model, torch.tensor([[0.0, math.inf, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="empty|non-empty"):
        lipschitz.lower_bound(model, torch.zeros(0, 4))
    with pytest.raises(ValueError, match="does not fit"):
        lipschitz.lower_bound(model, torch.zeros(2, 5))
    with pytest.raises(ValueError, match="tol"):
        lipschitz.upper_bound(model, (4,), tol=0)
    with pytest.raises(ValueError, match="input_shape"):
        lipschitz.report(model, torch.zeros(2, 4), (5,))


def test_lower_bound_restores_modes_and_is_seeded():
    model = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.Dropout(0.3), nn.Tanh(), nn.Linear(8, 2))
    model.train()
    model[1].eval()
    modes = [m.training for m in model.modules()]
    x = torch.randn(10, 5, generator=torch.Generator().manual_seed(0))
    a = lipschitz.lower_bound(model, x, n_iter=15, generator=torch.Generator().manual_seed(4))
    b = lipschitz.lower_bound(model, x, n_iter=15, generator=torch.Generator().manual_seed(4))
    assert [m.training for m in model.modules()] == modes
    assert a.item() == b.item() and a.dtype == torch.float64 and a.ndim == 0
    model.eval()
    assert a <= lipschitz.upper_bound(model, (5,)) * (1 + SLACK)


def test_gradient_ascent_improves_on_the_jacobian_at_the_data():
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(2, 16), nn.Tanh(), nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 1)).double()
    with torch.no_grad():
        model[0].bias.add_(3.0)  # the data sit where tanh saturates
    x = torch.full((4, 2), 3.0, dtype=torch.float64) + 0.1 * torch.randn(4, 2, dtype=torch.float64)
    jac = lipschitz.lower_bound(model, x, n_iter=0)
    ascent = lipschitz.lower_bound(model, x, n_iter=100, step_size=0.1, generator=torch.Generator().manual_seed(0))
    assert ascent > jac
    assert ascent <= lipschitz.upper_bound(model, (2,)) * (1 + SLACK)


def test_float32_model_and_package_builders():
    torch.manual_seed(6)
    for model, shape in [(models.mlp((1, 4, 4), 3, hidden=(8,), activation="gelu"), (1, 4, 4)),
                         (models.cnn(2, 3, input_size=6, channels=(3,), hidden=5, pool="avg"), (2, 6, 6))]:  # fmt: skip
        model.eval()
        x = torch.randn(8, *shape)
        upper = lipschitz.upper_bound(model, shape)
        lower = lipschitz.lower_bound(model, x, n_iter=10, generator=torch.Generator().manual_seed(0))
        assert 0 < lower <= upper * (1 + 1e-6)
        assert jacobian_norms(model.double(), x.double()).max() <= upper * (1 + SLACK)


def test_power_iteration_path_matches_the_exact_jacobians(monkeypatch):
    torch.manual_seed(7)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.GELU(), nn.Flatten(), nn.Linear(48, 4)).double()
    x = torch.randn(5, 2, 4, 4, dtype=torch.float64)
    exact = lipschitz.lower_bound(model, x, n_iter=0)
    monkeypatch.setattr(lipschitz, "_JACOBIAN_ENTRIES", 0)
    power = lipschitz.lower_bound(model, x, n_iter=0, generator=torch.Generator().manual_seed(0))
    assert exact == pytest.approx(jacobian_norms(model, x).max().item(), rel=1e-10)
    assert power <= exact * (1 + 1e-10) and power >= exact * (1 - 1e-3)


@settings(max_examples=15, deadline=None)
@given(m=st.integers(1, 8), n=st.integers(1, 8), seed=st.integers(0, 1000))
def test_jacobian_singular_values_of_a_linear_map_are_those_of_its_weight(m, n, seed):
    torch.manual_seed(seed)
    layer = nn.Linear(n, m).double()
    sv = lipschitz.jacobian_singular_values(layer, torch.randn(n, dtype=torch.float64))
    assert torch.allclose(sv, torch.linalg.svdvals(layer.weight), atol=1e-12)
    relu_net = nn.Sequential(nn.Linear(n, m), nn.ReLU()).double()
    x = torch.randn(n, dtype=torch.float64)
    active = (relu_net[0](x) > 0).double()
    expected = torch.linalg.svdvals(active[:, None] * relu_net[0].weight)
    assert torch.allclose(lipschitz.jacobian_singular_values(relu_net, x), expected, atol=1e-12)


def test_backward_gradient_norms_through_orthogonal_and_scaled_blocks():
    torch.manual_seed(0)
    orthogonal = nn.Sequential(*[nn.Linear(6, 6, bias=False) for _ in range(4)]).double()
    for layer in orthogonal:
        nn.init.orthogonal_(layer.weight)
    x = torch.randn(8, 6, dtype=torch.float64)
    assert torch.allclose(lipschitz.backward_gradient_norms(orthogonal, x), torch.ones(4, dtype=torch.float64))
    scaled = nn.Sequential(*[nn.Linear(6, 6, bias=False) for _ in range(4)]).double()
    for layer in scaled:
        with torch.no_grad():
            layer.weight.copy_(0.5 * torch.eye(6))
    expected = 0.5 ** torch.arange(1, 5, dtype=torch.float64)
    assert torch.allclose(lipschitz.backward_gradient_norms(scaled, x), expected)
