"""Certified Lipschitz bounds of traced models (issue 16): residual, concatenating, up-sampling.

Every soundness test compares the certified bound with values the network attains, in float64:
the largest Jacobian spectral norm at 32 random points (dense Jacobians, exact SVD) and the
gradient ascent of ``lipschitz.lower_bound``. Single layers are compared with the norm of their
dense operator (the Jacobian of the linear map, exact SVD). Unsupported nodes must raise a
TypeError naming them.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import stabilitylab.certify as certify
import stabilitylab.lipschitz as lipschitz

F64 = torch.float64
SLACK = 1e-9


# ----------------------------------------------------------------------------- oracles


def attained(model: nn.Module, input_shape, *, n_points: int = 32, seed: int = 0, n_iter: int = 30) -> float:
    """max(largest Jacobian norm at n_points Gaussian points, gradient ascent): attained values."""
    f = copy.deepcopy(model).to(F64).eval()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n_points, *input_shape), generator=g, dtype=F64)

    def one(v):
        return f(v[None]).reshape(-1)

    J = torch.func.vmap(torch.func.jacrev(one))(x).reshape(n_points, -1, x[0].numel())
    best = torch.linalg.matrix_norm(J, ord=2).max().item()
    ascent = lipschitz.lower_bound(f, x[:8], n_iter=n_iter, generator=torch.Generator().manual_seed(seed)).item()
    return max(best, ascent)


def operator_norm(layer: nn.Module, input_shape) -> float:
    """Exact norm of a linear (affine) layer: SVD of its dense float64 Jacobian."""
    f = copy.deepcopy(layer).to(F64).eval()
    x = torch.zeros(input_shape, dtype=F64)
    J = torch.autograd.functional.jacobian(lambda v: f(v[None]).reshape(-1), x)
    return torch.linalg.matrix_norm(J.reshape(-1, x.numel()), ord=2).item()


def randomize_batchnorm(model: nn.Module, generator: torch.Generator) -> nn.Module:
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.randn(c, generator=generator))
            m.running_var.copy_(0.2 + 2 * torch.rand(c, generator=generator))
            m.weight.data.copy_(0.3 + 1.5 * torch.rand(c, generator=generator))
            m.bias.data.copy_(torch.randn(c, generator=generator))
    return model.eval()


# ----------------------------------------------------------------------------- networks of each shape


class Block(nn.Module):
    """torchvision's BasicBlock: identity or projection shortcut, in-place add."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x):
        identity = x
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        if self.downsample is not None:
            identity = self.downsample(x)
        out += identity
        return self.relu(out)


class ResNetLike(nn.Module):
    def __init__(self, width: int = 3, classes: int = 3) -> None:
        super().__init__()
        self.stem = nn.Conv2d(2, width, 3, padding=1)
        self.layer1 = nn.Sequential(Block(width, width), Block(width, width))
        self.layer2 = Block(width, 2 * width, stride=2)
        self.pool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(2 * width, classes)

    def forward(self, x):
        x = self.layer2(self.layer1(F.relu(self.stem(x))))
        return self.fc(torch.flatten(self.pool(x), 1))


class DenseLike(nn.Module):
    """DenseNet-style growth by channel concatenation, a functional transition and a mean head."""

    def __init__(self, growth: int = 2) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(2 + i * growth, growth, 3, padding=1) for i in range(3))
        self.bn = nn.BatchNorm2d(2 + 3 * growth)
        self.head = nn.Linear(2 + 3 * growth, 3)

    def forward(self, x):
        for conv in self.convs:
            x = torch.cat([x, torch.tanh(conv(x))], dim=1)
        x = F.avg_pool2d(F.relu(self.bn(x)), 2)
        return self.head(x.mean(dim=(2, 3)))


class UNetLike(nn.Module):
    """Down by max-pooling, up by ConvTranspose2d and by Upsample, skip concatenations."""

    def __init__(self, c: int = 2) -> None:
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(c, 2 * c, 3, padding=1), nn.ReLU())
        self.bottom = nn.Conv2d(2 * c, 2 * c, 3, padding=1)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.up2 = nn.Upsample(scale_factor=2, mode="nearest")
        self.dec = nn.Conv2d(3 * c + 2 * c, c, 3, padding=1)
        self.out = nn.Conv2d(c, 1, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = F.leaky_relu(self.bottom(F.max_pool2d(e2, 2)), 0.1)
        u = F.interpolate(b, scale_factor=2, mode="bilinear", align_corners=False)  # to e2's size
        u = torch.cat([self.up1(u), self.up2(e2 + u)], dim=1)  # to e1's size
        return self.out(F.relu(self.dec(torch.cat([u, e1, e1], dim=1))))


class Functional(nn.Module):
    """Scalar multiples, alpha, subtraction, slicing, chunks, permutes, Linear on 3-D inputs."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 5)
        self.w = nn.Parameter(torch.randn(3, 5))
        self.scale = nn.Parameter(torch.randn(1, 5, 1))

    def forward(self, x):  # x: (N, 2, 4)
        h = self.lin(x)  # Linear on (N, 2, 4)
        a, b = h.chunk(2, dim=1)
        h = torch.add(a, b, alpha=-0.5) - 0.25 * a + h[:, :1] / 3.0
        h = F.gelu(h.permute(0, 2, 1) * self.scale)  # (N, 5, 1)
        return F.linear(h.flatten(1), self.w) + x.view(x.size(0), -1)[:, :3]


def _init(model: nn.Module, seed: int) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.6)
    return randomize_batchnorm(model, g).to(F64)


NETWORKS = {
    "resnet": (ResNetLike, (2, 6, 6)),
    "densenet": (DenseLike, (2, 4, 4)),
    "unet": (UNetLike, (1, 8, 8)),
    "functional": (Functional, (2, 4)),
}


@settings(max_examples=8, deadline=None)
@given(name=st.sampled_from(sorted(NETWORKS)), seed=st.integers(0, 2**16))
def test_graph_bound_is_at_least_every_attained_constant(name, seed):
    build, shape = NETWORKS[name]
    model = _init(build(), seed)
    bound = lipschitz.upper_bound(model, shape).item()
    assert math.isfinite(bound)
    assert bound >= attained(model, shape, seed=seed) * (1 - SLACK)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_float32_models_are_bounded_from_their_weights_read_exactly(name):
    build, shape = NETWORKS[name]
    model = _init(build(), 1).float()
    assert lipschitz.upper_bound(model, shape).item() >= attained(model, shape, n_points=8, n_iter=10) * (1 - SLACK)


def test_residual_sum_rule_and_mean_and_scalar_rules_are_the_documented_numbers():
    class Skip(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(3, 3, bias=False)

        def forward(self, x):
            return (x + self.lin(x)).mean(dim=1, keepdim=True) * -4.0

    model = Skip().to(F64)
    norm = torch.linalg.matrix_norm(model.lin.weight.detach(), 2).item()
    bound = lipschitz.upper_bound(model, (3,)).item()
    assert bound == pytest.approx(4 * (1 + norm) / math.sqrt(3), rel=1e-3)
    assert bound >= 4 * (1 + norm) / math.sqrt(3) * (1 - 1e-12)

    class Cat(nn.Module):
        def forward(self, x):
            return torch.cat([2 * x, x, -x], dim=1)

    assert lipschitz.upper_bound(Cat(), (4,)).item() == pytest.approx(math.sqrt(6), rel=1e-12)  # exact here


# ----------------------------------------------------------------------------- single layers


class Wrap(nn.Module):
    """A user module around one layer: the graph walk, not the Sequential product."""

    def __init__(self, layer: nn.Module) -> None:
        super().__init__()
        self.layer = layer

    def forward(self, x):
        return self.layer(x)


def test_a_single_linear_layer_is_bounded_by_its_norm():
    torch.manual_seed(0)
    lin = nn.Linear(7, 5).to(F64)
    norm = torch.linalg.matrix_norm(lin.weight.detach(), 2).item()
    assert lipschitz.upper_bound(lin, (7,)).item() == pytest.approx(norm, rel=1e-3)  # Sequential path, unchanged
    graph = lipschitz.upper_bound(Wrap(lin), (7,)).item()
    assert norm * (1 - 1e-15) <= graph <= norm * (1 + 1e-3)
    three_d = lipschitz.upper_bound(Wrap(lin), (4, 7)).item()  # Linear on (N, 4, 7): still ||W||
    assert norm * (1 - 1e-15) <= three_d <= norm * (1 + 1e-3)


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    c_in=st.integers(1, 3),
    c_out=st.integers(1, 3),
    k=st.sampled_from([1, 2, 3]),
    stride=st.sampled_from([1, 2]),
    padding=st.integers(0, 1),
    size=st.integers(3, 6),
    dense=st.booleans(),
)
def test_conv_transpose_bound_is_the_adjoint_norm(seed, c_in, c_out, k, stride, padding, size, dense):
    torch.manual_seed(seed)
    layer = nn.ConvTranspose2d(c_in, c_out, k, stride=stride, padding=padding, output_padding=stride - 1 if k > 1 else 0)
    layer = layer.to(F64)
    shape = (c_in, size, size)
    norm = operator_norm(layer, shape)
    with pytest.MonkeyPatch.context() as patch:
        if not dense:  # the circular embedding of the adjoint convolution
            patch.setattr(lipschitz, "_DENSE_LIMIT", 0)
        bound = lipschitz.upper_bound(Wrap(layer), shape).item()
    assert bound >= norm * (1 - SLACK)
    if dense:
        assert bound == pytest.approx(norm, rel=1e-9)
    chain = lipschitz.upper_bound(nn.Sequential(layer), shape).item()  # the layer product path
    assert chain >= norm * (1 - SLACK) and chain <= norm * 1.6


@settings(max_examples=20, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    k=st.sampled_from([1, 3, 5]),
    stride=st.sampled_from([1, 2]),
    padding=st.integers(0, 2),
    dilation=st.sampled_from([1, 2]),
    groups=st.sampled_from([1, 2]),
    size=st.integers(5, 7),
    dense=st.booleans(),
)
def test_conv_bound_is_certified_and_exact_when_unrolled(seed, k, stride, padding, dilation, groups, size, dense):
    torch.manual_seed(seed)
    layer = nn.Conv2d(2, 4, k, stride=stride, padding=padding, dilation=dilation, groups=groups).to(F64)
    shape = (2, size, size)
    if (size + 2 * padding - dilation * (k - 1)) < 1:
        return
    norm = operator_norm(layer, shape)
    with pytest.MonkeyPatch.context() as patch:
        if not dense:
            patch.setattr(lipschitz, "_DENSE_LIMIT", 0)
        bound = lipschitz.upper_bound(Wrap(layer), shape).item()
    assert bound >= norm * (1 - SLACK)
    if dense:
        assert bound == pytest.approx(norm, rel=1e-9)


@pytest.mark.parametrize(
    "make, exact",
    [
        (lambda: nn.Upsample(scale_factor=2, mode="nearest"), True),
        (lambda: nn.Upsample(size=(7, 5), mode="nearest"), True),  # uneven replication counts
        (lambda: nn.Upsample(scale_factor=3, mode="nearest-exact"), True),
        (lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), True),
        (lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=True), True),
        (lambda: nn.Upsample(size=(9, 7), mode="bilinear"), True),
        (lambda: nn.AdaptiveAvgPool2d((3, 2)), False),  # windows of unequal sizes
        (lambda: nn.AdaptiveAvgPool2d(1), True),
    ],
)
def test_upsampling_and_adaptive_pooling_bounds(make, exact):
    layer = make()
    shape = (2, 5, 4)
    norm = operator_norm(layer, shape)
    for model in (layer, Wrap(layer)):  # the Sequential path and the graph walk
        bound = lipschitz.upper_bound(model, shape).item()
        assert bound >= norm * (1 - SLACK)
        if exact:
            assert bound == pytest.approx(norm, rel=1e-6)


def test_nearest_upsampling_is_the_square_root_of_the_largest_replication_count():
    assert lipschitz.upper_bound(nn.Upsample(scale_factor=(2, 3)), (1, 4, 4)).item() == math.sqrt(6)
    assert lipschitz.upper_bound(Wrap(nn.Upsample(size=(7, 4))), (1, 4, 4)).item() == math.sqrt(2)


def test_functional_calls_are_bounded_as_their_module_twins():
    torch.manual_seed(3)
    conv = nn.Conv2d(2, 3, 3, padding=1).to(F64)

    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.weight = conv.weight

        def forward(self, x):
            y = F.conv2d(x, self.weight, None, 1, 1)
            return F.max_pool2d(F.leaky_relu(y, 0.3), 3, stride=1, padding=1)

    class Modules(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.act, self.pool = conv, nn.LeakyReLU(0.3), nn.MaxPool2d(3, stride=1, padding=1)

        def forward(self, x):
            return self.pool(self.act(self.conv(x)))

    a = lipschitz.upper_bound(Functional(), (2, 5, 5)).item()
    b = lipschitz.upper_bound(Modules(), (2, 5, 5)).item()
    assert a == pytest.approx(b, rel=1e-12)
    assert a >= attained(Functional(), (2, 5, 5), n_points=8) * (1 - SLACK)


# ----------------------------------------------------------------------------- BatchNorm folding


class ConvBN(nn.Module):
    def __init__(self, linear: bool = False) -> None:
        super().__init__()
        if linear:
            self.a, self.bn, self.b = nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 2)
        else:
            self.a, self.bn, self.b = nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 3, stride=2)

    def forward(self, x):
        return self.b(torch.relu(self.bn(self.a(x))))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), linear=st.booleans(), dense=st.booleans())
def test_folding_batchnorm_never_loosens_and_stays_certified(seed, linear, dense):
    model = _init(ConvBN(linear), seed)
    shape = (6,) if linear else (2, 6, 6)
    with pytest.MonkeyPatch.context() as patch:
        if not dense:
            patch.setattr(lipschitz, "_DENSE_LIMIT", 0)
        folded = lipschitz.upper_bound(model, shape).item()
        plain = lipschitz.upper_bound(model, shape, fold_batchnorm=False).item()
    assert folded <= plain
    assert folded >= attained(model, shape, n_points=16) * (1 - SLACK)
    # the folded pair alone: at least the norm of the dense operator of bn(a(.))
    pair = nn.Sequential(model.a, model.bn)
    assert folded / lipschitz.upper_bound(Wrap(model.b), pair(torch.zeros(1, *shape, dtype=F64)).shape[1:]).item() >= (
        operator_norm(pair, shape) * (1 - SLACK)
    )


def test_folding_is_strictly_tighter_when_the_channel_scales_differ():
    model = ConvBN().to(F64).eval()
    with torch.no_grad():
        model.bn.running_var.copy_(torch.tensor([0.01, 1.0, 4.0, 100.0], dtype=F64))
        model.a.weight.copy_(torch.randn(model.a.weight.shape, generator=torch.Generator().manual_seed(0), dtype=F64))
    folded = lipschitz.upper_bound(model, (2, 6, 6)).item()
    plain = lipschitz.upper_bound(model, (2, 6, 6), fold_batchnorm=False).item()
    assert folded < 0.8 * plain
    sequential = nn.Sequential(model.a, model.bn, nn.ReLU(), model.b)
    assert lipschitz.upper_bound(sequential, (2, 6, 6), graph=True).item() == pytest.approx(folded, rel=1e-12)


# ----------------------------------------------------------------------------- the Sequential path is unchanged


def test_sequential_models_keep_the_layer_product():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 3, 3), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(), nn.Linear(48, 2)).eval()
    rows = lipschitz.layer_bounds(model, (1, 6, 6))
    assert lipschitz.upper_bound(model, (1, 6, 6)).item() == math.prod(r.upper for r in rows)
    assert lipschitz.upper_bound(model, (1, 6, 6), graph=False).item() == math.prod(r.upper for r in rows)
    report = lipschitz.report(model, torch.randn(4, 1, 6, 6), n_iter=0)
    assert isinstance(report, lipschitz.LipschitzReport)
    graph = lipschitz.upper_bound(model, (1, 6, 6), graph=True).item()
    assert graph >= attained(model, (1, 6, 6), n_points=8) * (1 - SLACK)


# ----------------------------------------------------------------------------- refusals


class Sin(nn.Module):
    def forward(self, x):
        return torch.sin(x)


class Product(nn.Module):
    def forward(self, x):
        return x * x


class Branchy(nn.Module):
    def forward(self, x):
        if x.sum() > 0:
            return x
        return -x


class Outer(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Sequential(nn.Linear(4, 4), Branchy())

    def forward(self, x):
        return self.inner(x) + x


def _wrap(fn):
    class Fn(nn.Module):
        def forward(self, x):
            return fn(x)

    return Fn()


class Declared(nn.Module):
    """Untraceable, but declares its constant: a leaf of the graph."""

    def lipschitz_constant(self):
        return 2.0

    def forward(self, x):
        if x.sum() > 0:
            return 2 * x
        return x


@pytest.mark.parametrize(
    "model, shape, match",
    [
        (Wrap(Sin()), (4,), r"sin.*'layer' of type Sin"),
        (Wrap(Product()), (4,), "mul"),
        (Wrap(nn.LayerNorm(4)), (4,), "LayerNorm.*standard deviation"),
        (Wrap(nn.GroupNorm(2, 4)), (4, 3, 3), "GroupNorm.*standard deviation"),
        (_wrap(lambda x: F.layer_norm(x, (4,))), (4,), "layer_norm.*standard deviation"),
        (_wrap(lambda x: torch.cat([x, x], dim=0)), (4,), "cat"),
        (_wrap(lambda x: x.mean()), (4,), "mean"),
        (_wrap(lambda x: torch.softmax(x, dim=1)), (4,), "softmax"),
        (Wrap(nn.Softmax(dim=1)), (4,), "Softmax"),
        (Wrap(nn.LSTM(4, 4)), (2, 4), "LSTM"),
        (_wrap(lambda x: F.interpolate(x, scale_factor=2, mode="bicubic")), (1, 3, 3), "bicubic"),
        (Wrap(nn.Upsample(scale_factor=2, mode="bicubic")), (1, 3, 3), "bicubic"),
        (_wrap(lambda x: x[0]), (4,), "getitem"),
        (_wrap(lambda x: x.flip(1)), (4,), "flip"),
        (Wrap(Branchy()), (4,), r"traced.*'layer' of type Branchy.*lipschitz_constant"),
        (Outer(), (4,), r"traced.*'inner.1' of type Branchy"),
    ],
)
def test_every_unsupported_node_raises_a_type_error_naming_it(model, shape, match):
    with pytest.raises(TypeError, match=match):
        lipschitz.upper_bound(model.to(F64), shape)


def test_a_declared_constant_makes_an_untraceable_module_a_leaf():
    model = Outer()
    model.inner[1] = Declared()
    torch.manual_seed(0)
    norm = torch.linalg.matrix_norm(model.inner[0].weight.detach().double(), 2).item()
    bound = lipschitz.upper_bound(model, (4,)).item()
    assert bound == pytest.approx(2 * norm + 1, rel=1e-3) and bound >= 2 * norm + 1


def test_hooks_are_refused_in_the_graph_walk():
    model = ResNetLike().eval()
    handle = model.layer1[0].conv2.register_forward_hook(lambda m, a, out: 100 * out)
    with pytest.raises(TypeError, match="layer1.0.conv2"):
        lipschitz.upper_bound(model, (2, 6, 6))
    handle.remove()
    assert lipschitz.upper_bound(model, (2, 6, 6)).item() > 0


def test_bad_options_and_shapes_are_named():
    model = ResNetLike().eval()
    with pytest.raises(TypeError, match="graph"):
        lipschitz.upper_bound(model, (2, 6, 6), graph="yes")
    with pytest.raises(TypeError, match="fold_batchnorm"):
        lipschitz.upper_bound(model, (2, 6, 6), fold_batchnorm=None)
    with pytest.raises(ValueError, match="input_shape"):
        lipschitz.upper_bound(model, (3, 6, 6))
    with pytest.raises(ValueError, match="eval"):
        lipschitz.upper_bound(ResNetLike().train(), (2, 6, 6))


def test_the_walk_leaves_the_model_as_it_was():
    model = ResNetLike().eval()
    model.layer1.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="eval"):
        lipschitz.upper_bound(model, (2, 6, 6))
    model.eval()
    with torch.inference_mode():
        lipschitz.upper_bound(model, (2, 6, 6))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())
    assert not any(m.training for m in model.modules())


# ----------------------------------------------------------------------------- report, certificates


def test_graph_report_shows_nodes_blocks_and_both_sides():
    model = _init(ResNetLike(), 5)
    x = torch.randn(4, 2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    report = lipschitz.report(model, x, n_iter=10, generator=torch.Generator().manual_seed(0))
    assert isinstance(report, lipschitz.GraphReport)
    assert report.upper == pytest.approx(lipschitz.upper_bound(model, (2, 6, 6)).item(), rel=1e-12)
    assert report.upper >= report.lower > 0
    sums = [row for row in report.nodes if row.kind == "sum"]
    assert len(sums) == 3 and all("residual sum" in row.note for row in sums)
    assert len(report.blocks) == 3
    for block in report.blocks:
        assert block.upper >= block.lower * (1 - SLACK) > 0
    for row in report.nodes:
        if not math.isnan(row.lower):
            assert row.factor >= row.lower * (1 - 1e-9), row
    text = str(report)
    assert "residual sum" in text and "block" in text
    assert report.to_dict()["blocks"][0]["start"] == report.blocks[0].start


def test_certified_radii_work_on_traced_models():
    model = _init(ResNetLike(), 7)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 2, 6, 6, generator=g, dtype=F64), torch.randint(0, 3, (16,), generator=g)
    radii = certify.certified_radii(model, (x, y))
    L = lipschitz.upper_bound(model, (2, 6, 6))
    with torch.no_grad():
        expected = certify.certified_radius(model(x), y, lipschitz=L)
    assert torch.allclose(radii, expected.to(radii.dtype), rtol=1e-12, atol=0)


def test_pairwise_logit_bound_through_the_graph():
    model = _init(ResNetLike(classes=4), 11)
    L = lipschitz.pairwise_logit_bound(model, (2, 6, 6))
    assert (L <= math.sqrt(2) * lipschitz.upper_bound(model, (2, 6, 6)) * (1 + 1e-12)).all()
    x = torch.randn(16, 2, 6, 6, dtype=F64, generator=torch.Generator().manual_seed(2))
    J = torch.func.vmap(torch.func.jacrev(lambda v: model(v[None])[0]))(x).reshape(16, 4, -1)
    for i in range(4):
        for j in range(4):
            assert torch.linalg.vector_norm(J[:, i] - J[:, j], dim=-1).max() <= L[i, j] * (1 + SLACK) + 1e-15
    with pytest.raises(ValueError, match="linear"):
        lipschitz.pairwise_logit_bound(UNetLike().eval(), (1, 8, 8))


# ----------------------------------------------------------------------------- ResNet-18


def resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 layout (BasicBlock, [2, 2, 2, 2], 7x7 stem, max-pool)."""

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
            self.bn1 = nn.BatchNorm2d(64)
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
            self.layer1 = nn.Sequential(Block(64, 64), Block(64, 64))
            self.layer2 = nn.Sequential(Block(64, 128, 2), Block(128, 128))
            self.layer3 = nn.Sequential(Block(128, 256, 2), Block(256, 256))
            self.layer4 = nn.Sequential(Block(256, 512, 2), Block(512, 512))
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            return self.fc(torch.flatten(self.avgpool(x), 1))

    return ResNet18()


@pytest.mark.slow
def test_resnet18_at_32x32_is_bounded_on_the_cpu():
    torch.manual_seed(0)
    model = resnet18().eval()
    assert sum(p.numel() for p in model.parameters()) == 11_181_642  # torchvision's count for 10 classes
    bound = lipschitz.upper_bound(model, (3, 32, 32)).item()
    assert math.isfinite(bound) and bound > 0
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    lower = lipschitz.lower_bound(model, x, n_iter=5, generator=torch.Generator().manual_seed(0)).item()
    assert bound >= lower > 0
